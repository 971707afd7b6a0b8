"""ManifoldAdam / ManifoldSGD / ProjectedRiemannianAdam: torch conventions, state, validation (float64)."""

from __future__ import annotations

import io

import pytest
import torch

from icl.optim import ManifoldAdam, ManifoldSGD, ProjectedRiemannianAdam, manifold_point
from icl.optim.manifolds import Stiefel, get_manifold

DT = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _mixed_model(dtype=DT, seed=0, N=8, p=3):
    g = _gen(seed)
    W = torch.nn.Parameter(torch.randn(4, N, generator=g, dtype=dtype))
    b = torch.nn.Parameter(torch.randn(4, generator=g, dtype=dtype))
    Y = torch.nn.Parameter(manifold_point("stiefel", (N, p), generator=g, dtype=dtype))
    X = torch.randn(16, p, generator=g, dtype=dtype)
    T = torch.randn(16, 4, generator=g, dtype=dtype)

    def loss():
        return (((X @ Y.T) @ W.T + b - T) ** 2).mean()

    return [W, b], Y, loss


def _run(opt, loss, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()


# --------------------------------------------------------------------------------------------------------
# Euclidean parameters are torch's optimizers
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_euclidean_equals_torch_adam(wd):
    (W, b), _, _ = _mixed_model()
    ref = [t.detach().clone().requires_grad_() for t in (W, b)]
    kw = dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd)
    ours = ManifoldAdam([W, b], **kw, seed=0)
    theirs = (torch.optim.AdamW if wd else torch.optim.Adam)(ref, **kw)
    g = _gen(1)
    A = torch.randn(4, 4, generator=g, dtype=DT)
    for _ in range(100):
        for params, opt in (([W, b], ours), (ref, theirs)):
            opt.zero_grad()
            (torch.sin(A @ params[0]).sum() + (params[1] ** 2).sum()).backward()
            opt.step()
    for x, y in zip((W, b), ref):
        assert torch.allclose(x, y, atol=1e-12, rtol=0)


def test_euclidean_equals_torch_sgd_momentum():
    (W, b), _, _ = _mixed_model()
    ref = [t.detach().clone().requires_grad_() for t in (W, b)]
    ours = ManifoldSGD([W, b], lr=1e-2, momentum=0.9, seed=0)
    theirs = torch.optim.SGD(ref, lr=1e-2, momentum=0.9)
    for _ in range(50):
        for params, opt in (([W, b], ours), (ref, theirs)):
            opt.zero_grad()
            (torch.cos(params[0]).sum() + (params[1] ** 3).sum()).backward()
            opt.step()
    for x, y in zip((W, b), ref):
        assert torch.allclose(x, y, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_euclidean_low_precision_matches_torch(dtype):
    g = _gen(2)
    x = torch.nn.Parameter(torch.randn(5, 3, generator=g).to(dtype))
    y = x.detach().clone().requires_grad_()
    o1, o2 = ManifoldAdam([x], lr=1e-2, seed=0), torch.optim.Adam([y], lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    for _ in range(20):
        for t, o in ((x, o1), (y, o2)):
            o.zero_grad()
            (t.float() ** 2).sum().backward()
            o.step()
    assert x.dtype == dtype and torch.equal(x, y)
    assert o1.state[x]["exp_avg"].dtype == dtype


# --------------------------------------------------------------------------------------------------------
# Manifold steps
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,shape", [("stiefel", (7, 3)), ("grassmann", (7, 2)), ("symplectic_stiefel", (8, 4))])
def test_first_adam_step_is_minus_lr_sign(name, shape):
    m = get_manifold(name)
    Y = torch.nn.Parameter(manifold_point(name, shape, generator=_gen(3), dtype=DT))
    G = torch.randn(shape, generator=_gen(4), dtype=DT)
    lr, eps = 1e-3, 0.0  # with ε > 0 the step is −η·c/(|c| + ε): sign(c) up to ε/|c|
    opt = ManifoldAdam([{"params": [Y], "manifold": name}], lr=lr, eps=eps, seed=0)
    L0 = opt.state[Y]["section"].clone()
    c = m.grad_rep(L0, G)
    Y.grad = G.clone()
    opt.step()
    W = -lr * torch.sign(c)
    expected = L0.clone()
    m.retract_(expected, W, shape[1], "cayley")
    assert torch.allclose(opt.state[Y]["section"], expected, atol=1e-13, rtol=0)
    # the moments after one step are (1-β₁)c and (1-β₂)c² (kept in the layout m.coord_shape)
    assert opt.state[Y]["exp_avg"].shape == m.coord_shape(shape)
    assert torch.allclose(m.to_flat(opt.state[Y]["exp_avg"], shape), 0.1 * c, atol=1e-15)
    assert torch.allclose(m.to_flat(opt.state[Y]["exp_avg_sq"], shape), 0.01 * c * c, atol=1e-15)


def test_weight_decay_is_noop_on_stiefel_and_seed_determinism():
    _, Y, loss = _mixed_model()
    Y2 = Y.detach().clone().requires_grad_()
    Y3 = Y.detach().clone().requires_grad_()
    o1 = ManifoldAdam([{"params": [Y], "manifold": "stiefel"}], lr=1e-2, weight_decay=0.5, seed=7)
    o2 = ManifoldAdam([{"params": [Y2], "manifold": "stiefel"}], lr=1e-2, seed=7)
    o3 = ManifoldAdam([{"params": [Y3], "manifold": "stiefel"}], lr=1e-2, seed=8)
    G = torch.randn(8, 3, generator=_gen(5), dtype=DT)
    for _ in range(20):
        for t, o in ((Y, o1), (Y2, o2), (Y3, o3)):
            t.grad = G.clone()
            o.step()
    assert torch.equal(Y, Y2)  # same seed (and decay ignored) → same trajectory
    assert not torch.equal(Y, Y3)  # the section's seed matters (B-block coordinates)


def test_none_and_zero_grads():
    (W, b), Y, loss = _mixed_model()
    opt = ManifoldAdam([{"params": [W, b]}, {"params": [Y], "manifold": "stiefel"}], lr=1e-2, seed=0)
    before = [t.detach().clone() for t in (W, b, Y)]
    opt.step()  # all grads None: no-op
    for t, s in zip((W, b, Y), before):
        assert torch.equal(t, s)
    assert int(opt.state[Y]["step"]) == 0 and "exp_avg" not in opt.state[W]
    for t in (W, b, Y):
        t.grad = torch.zeros_like(t)
    opt.step()  # zero grads with weight_decay 0: no change
    for t, s in zip((W, b, Y), before):
        assert torch.equal(t, s)
    assert int(opt.state[Y]["step"]) == 1


def test_closure_and_param_groups_with_different_hyperparameters():
    (W, b), Y, loss = _mixed_model()
    Yg = torch.nn.Parameter(manifold_point("grassmann", (6, 2), generator=_gen(6), dtype=DT))
    opt = ManifoldAdam(
        [
            {"params": [W, b], "lr": 1e-2},
            {"params": [Y], "manifold": "stiefel", "lr": 0.0},
            {"params": [Yg], "manifold": "grassmann", "retraction": "exp", "betas": (0.5, 0.9)},
        ],
        lr=1e-3,
        seed=0,
    )
    Y0, Yg0 = Y.detach().clone(), Yg.detach().clone()

    def closure():
        opt.zero_grad()
        out = loss() + (Yg.sum(0) ** 2).sum()
        out.backward()
        return out

    l0 = float(closure().detach())
    for _ in range(30):
        ret = opt.step(closure)
    assert isinstance(ret, torch.Tensor) and float(ret.detach()) < l0
    assert torch.equal(Y, Y0)  # lr = 0 in its group
    assert not torch.equal(Yg, Yg0)
    assert opt.param_groups[2]["retraction"] == "exp" and opt.param_groups[0]["manifold"] == "euclidean"
    assert get_manifold("grassmann").check(Yg) < 1e-13


@pytest.mark.parametrize("cls", [ManifoldAdam, ManifoldSGD])
@pytest.mark.parametrize("geometry_dtype", [None, torch.float64])
def test_state_dict_round_trip_resumes_exactly(tmp_path, cls, geometry_dtype):
    dtype = torch.float32 if geometry_dtype is not None else DT
    kw = dict(lr=1e-2) if cls is ManifoldAdam else dict(lr=1e-2, momentum=0.9)
    groups = lambda P, Y: [
        {"params": P},
        {"params": [Y], "manifold": "stiefel", "geometry_dtype": geometry_dtype, "reorthonormalize_every": 7},
    ]
    P, Y, loss = _mixed_model(dtype)
    opt = cls(groups(P, Y), **kw, seed=3)
    _run(opt, loss, 10)
    path = tmp_path / "ckpt.pt"
    torch.save({"opt": opt.state_dict(), "params": [t.detach().clone() for t in (*P, Y)]}, path)
    _run(opt, loss, 10)  # uninterrupted
    final = [t.detach().clone() for t in (*P, Y)]

    ck = torch.load(path, weights_only=True)
    P2, Y2, loss2 = _mixed_model(dtype)
    with torch.no_grad():
        for t, s in zip((*P2, Y2), ck["params"]):
            t.copy_(s)
    opt2 = cls(groups(P2, Y2), **kw, seed=99)  # a different seed: the loaded section must win
    opt2.load_state_dict(ck["opt"])
    if geometry_dtype is not None:
        assert opt2.state[Y2]["section"].dtype == torch.float64
    _run(opt2, loss2, 10)
    for a, b_ in zip(final, (*P2, Y2)):
        assert torch.equal(a, b_)


def test_float64_geometry_keeps_float32_parameter():
    P, Y, loss = _mixed_model(torch.float32)
    opt = ManifoldAdam([{"params": P}, {"params": [Y], "manifold": "stiefel", "geometry_dtype": "float64"}], seed=0)
    _run(opt, loss, 5)
    assert Y.dtype == torch.float32
    st = opt.state[Y]
    assert st["section"].dtype == st["exp_avg"].dtype == torch.float64
    assert torch.equal(Y, st["section"][:, :3].float())


def test_parameter_changed_outside_the_optimizer_reanchors_section():
    _, Y, loss = _mixed_model()
    opt = ManifoldAdam([{"params": [Y], "manifold": "stiefel"}], lr=1e-2, seed=0)
    _run(opt, loss, 3)
    new = manifold_point("stiefel", (8, 3), generator=_gen(9), dtype=DT)
    with torch.no_grad():
        Y.copy_(new)
    _run(opt, loss, 1)
    L = opt.state[Y]["section"]
    assert torch.allclose(L[:, :3], Y) and Stiefel().check(Y) < 1e-13
    assert torch.linalg.matrix_norm(L.T @ L - torch.eye(8, dtype=DT)) < 1e-13


def test_manifold_sgd_on_stiefel_decreases_and_stays_on_manifold():
    g = _gen(12)
    C = torch.randn(8, 8, generator=g, dtype=DT)
    C = C @ C.T / 8
    for mom in (0.0, 0.5):
        Y = torch.nn.Parameter(manifold_point("stiefel", (8, 3), generator=_gen(13), dtype=DT))
        opt = ManifoldSGD([{"params": [Y], "manifold": "stiefel"}], lr=0.05, momentum=mom, seed=0)
        loss = lambda Y=Y: -torch.trace(Y.T @ C @ Y)
        l0 = float(loss().detach())
        _run(opt, loss, 50)
        assert float(loss().detach()) < l0 - 0.1
        assert Stiefel().check(Y) < 1e-13


def test_projected_riemannian_adam_baseline():
    g = _gen(10)
    C = torch.randn(9, 9, generator=g, dtype=DT)
    C = C @ C.T
    for manifold in ("stiefel", "grassmann"):
        for sm in ("elementwise", "scalar"):
            Y = torch.nn.Parameter(manifold_point(manifold, (9, 2), generator=_gen(11), dtype=DT))
            opt = ProjectedRiemannianAdam([{"params": [Y], "manifold": manifold}], lr=5e-2, second_moment=sm)
            l0 = float(-torch.trace(Y.T @ C @ Y).detach())
            for _ in range(100):
                opt.zero_grad()
                (-torch.trace(Y.T @ C @ Y)).backward()
                opt.step()
            assert float(-torch.trace(Y.T @ C @ Y).detach()) < l0
            assert Stiefel().check(Y) < 1e-13
    with pytest.raises(ValueError, match="manifold"):
        ProjectedRiemannianAdam([{"params": [Y], "manifold": "symplectic_stiefel"}])


# --------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------


def test_argument_validation():
    x = torch.nn.Parameter(torch.zeros(3))
    Y = torch.nn.Parameter(manifold_point("stiefel", (5, 2), generator=_gen(), dtype=DT))
    cases = [
        (dict(params=[x], lr=-1.0), "lr"),
        (dict(params=[x], betas=(0.9, 1.0)), r"betas\[1\]"),
        (dict(params=[x], betas=(-0.1, 0.9)), r"betas\[0\]"),
        (dict(params=[x], betas=0.9), "betas"),
        (dict(params=[x], eps=-1e-8), "eps"),
        (dict(params=[x], weight_decay=-0.1), "weight_decay"),
        (dict(params=[{"params": [x], "manifold": "sphere"}]), "manifold"),
        (dict(params=[{"params": [Y], "manifold": "stiefel", "retraction": "qr"}]), "retraction"),
        (
            dict(params=[{"params": [Y], "manifold": "stiefel", "geometry_dtype": torch.float16}]),
            "geometry_dtype",
        ),
        (
            dict(params=[{"params": [Y], "manifold": "stiefel", "reorthonormalize_every": -1}]),
            "reorthonormalize",
        ),
        (dict(params=[Y], seed="a"), "seed"),
        (dict(params=[Y], generator=3), "generator"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            ManifoldAdam(**kwargs)
    wide = torch.nn.Parameter(torch.eye(2, 5, dtype=DT))
    with pytest.raises(ValueError, match="tall"):
        ManifoldAdam([{"params": [wide], "manifold": "stiefel"}])
    off = torch.nn.Parameter(2 * Y.detach())
    with pytest.raises(ValueError, match="not on the stiefel manifold"):
        ManifoldAdam([{"params": [off], "manifold": "stiefel"}])
    odd = torch.nn.Parameter(torch.zeros(5, 2, dtype=DT))
    with pytest.raises(ValueError, match="even shape"):
        ManifoldAdam([{"params": [odd], "manifold": "symplectic_stiefel"}])
    with pytest.raises(ValueError, match="momentum"):
        ManifoldSGD([x], lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="generator"):
        manifold_point("stiefel", (4, 2), generator=None)


def test_state_dict_loads_into_fresh_optimizer_and_is_weights_only_safe():
    P, Y, loss = _mixed_model()
    opt = ManifoldAdam([{"params": P}, {"params": [Y], "manifold": "stiefel"}], seed=0)
    _run(opt, loss, 2)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert set(sd["state"][2]) == {"step", "section", "exp_avg", "exp_avg_sq"}
    assert sd["state"][2]["exp_avg"].shape == (3, 8)  # [A | Bᵀ]: A ∈ 𝔰𝔬(3), B ∈ ℝ^{5×3}
    assert sd["param_groups"][1]["manifold"] == "stiefel"


@pytest.mark.parametrize("cls", [ManifoldAdam, ManifoldSGD])
def test_step_hooks_profiler_and_schedulers_still_run(cls, monkeypatch):
    """The step skips torch's step wrapper only when it has nothing to do: per-optimizer and global pre/post
    hooks run (a pre hook's returned arguments are used), the profiler records ``Optimizer.step#…``, an LR
    scheduler sees the step, and every path makes the same iterates as the plain step."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    def run(with_hooks: bool):
        Y = torch.nn.Parameter(manifold_point("stiefel", (8, 3), generator=torch.Generator().manual_seed(3)))
        opt = cls([{"params": [Y], "manifold": "stiefel"}], lr=1e-2, seed=0)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        seen, handles = [], []
        if with_hooks:
            handles += [opt.register_step_pre_hook(lambda o, a, k: seen.append("pre")),
                        opt.register_step_post_hook(lambda o, a, k: seen.append("post")),
                        register_optimizer_step_pre_hook(lambda o, a, k: seen.append("global pre")),
                        register_optimizer_step_post_hook(lambda o, a, k: seen.append("global post"))]  # fmt: skip
        losses = []
        try:
            for t in range(4):
                Y.grad = torch.cos(torch.arange(24.0).view(8, 3) + t)
                if with_hooks and t == 3:
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                        losses.append(opt.step(lambda: 1.0))
                    assert any(e.name == f"Optimizer.step#{cls.__name__}.step" for e in prof.events())
                else:
                    losses.append(opt.step(lambda: 1.0))
                sched.step()
        finally:
            for h in handles:
                h.remove()
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)  # (the scheduler ran: no warning path)
        return Y.detach().clone(), seen, losses

    Y_plain, seen_plain, losses = run(False)
    Y_hooked, seen, losses_hooked = run(True)
    assert seen_plain == [] and seen == ["global pre", "pre", "post", "global post"] * 4
    assert losses == losses_hooked == [1.0] * 4
    assert torch.equal(Y_plain, Y_hooked)
    # torch's wrapper (its record_function) runs with a hook and is skipped without one
    entered = []
    record = torch.autograd.profiler.record_function
    monkeypatch.setattr(torch.autograd.profiler, "record_function", lambda name: entered.append(name) or record(name))
    Y = torch.nn.Parameter(manifold_point("stiefel", (8, 3), generator=torch.Generator().manual_seed(3)))
    opt = cls([{"params": [Y], "manifold": "stiefel"}], lr=1e-2, seed=0)
    Y.grad = torch.ones(8, 3)
    opt.step()
    assert entered == []
    handle = opt.register_step_post_hook(lambda o, a, k: None)
    opt.step()
    handle.remove()
    assert entered == [f"Optimizer.step#{cls.__name__}.step"]
