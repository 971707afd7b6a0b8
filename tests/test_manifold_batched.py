"""ManifoldAdam's batched, closed-form step (issue 16): exactness against the pre-rewrite implementation,
batches against one-at-a-time, no host reads in a step, checkpoints, and refusing foreign state (float64)."""

from __future__ import annotations

import io

import pytest
import torch
from frozen_manifold_adam import frozen_adam_trajectory

from icl.optim import FAdam, ManifoldAdam, ManifoldSGD, ProjectedRiemannianAdam, manifold_point
from icl.optim.manifolds import get_manifold

DT = torch.float64
SHAPES = {"stiefel": (12, 4), "grassmann": (10, 3), "symplectic_stiefel": (8, 4)}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _problem(shape, seed):
    """A gradient that depends on the iterate: ∇L(Y) = A·Y·S + noise_t, A and S positive definite (the
    gradient of ½tr(YᵀAYS), bounded below on every manifold here, so iterates stay bounded)."""
    g = _gen(seed)
    N, p = shape
    A = torch.randn(N, N, generator=g, dtype=DT)
    S = torch.randn(p, p, generator=g, dtype=DT)
    A, S = A @ A.T / N + torch.eye(N, dtype=DT), S @ S.T / p + torch.eye(p, dtype=DT)
    noise = 0.3 * torch.randn(50, N, p, generator=g, dtype=DT)
    return lambda Y, t: A @ Y @ S + noise[t % 50]


@pytest.mark.parametrize("name", list(SHAPES))
def test_iterates_equal_the_pre_rewrite_implementation_over_500_steps(name):
    """Three parameters stepped as one batch make, each, the iterates of the frozen per-parameter step of the
    previous implementation (2p×2p Cayley kernel, flat coordinates) to 1e-12 over 500 float64 steps."""
    shape = SHAPES[name]
    Ys = [torch.nn.Parameter(manifold_point(name, shape, generator=_gen(i), dtype=DT)) for i in range(3)]
    fns = [_problem(shape, 10 + i) for i in range(3)]
    opt = ManifoldAdam([{"params": Ys, "manifold": name}], lr=1e-2, seed=0)
    L0 = [opt.state[Y]["section"].clone() for Y in Ys]
    ours = [[] for _ in Ys]
    for t in range(500):
        for Y, fn in zip(Ys, fns):
            Y.grad = fn(Y.detach(), t)
        opt.step()
        for traj, Y in zip(ours, Ys):
            traj.append(Y.detach().clone())
    for i in range(3):
        ref = frozen_adam_trajectory(name, L0[i], shape[1], fns[i], 500, lr=1e-2)
        err = max(float((a - b).abs().max()) for a, b in zip(ours[i], ref))
        assert err <= 1e-12, (name, i, err)
        assert float((ours[i][-1] - ours[i][0]).abs().max()) > 0.1  # the iterates did move


def _twin_optimizers(name, shape, k=3, **kw):
    """The same k parameters and sections twice: one group (one batch) and k groups (k batches of one)."""
    Ys = [torch.nn.Parameter(manifold_point(name, shape, generator=_gen(i), dtype=DT)) for i in range(k)]
    Zs = [torch.nn.Parameter(Y.detach().clone()) for Y in Ys]
    batched = ManifoldAdam([{"params": Ys, "manifold": name, **kw}], lr=1e-2, seed=5)
    single = ManifoldAdam([{"params": [Z], "manifold": name, **kw} for Z in Zs], lr=1e-2, seed=5)
    for Y, Z in zip(Ys, Zs):
        assert torch.equal(batched.state[Y]["section"], single.state[Z]["section"])
    return Ys, Zs, batched, single


@pytest.mark.parametrize("name", ["stiefel", "grassmann"])
@pytest.mark.parametrize("retraction", ["cayley", "exp"])
def test_batch_with_missing_gradients_equals_one_at_a_time(name, retraction):
    """Members without a gradient do not move and later members have different step counts (bias
    corrections per member); the batch still equals k separate one-parameter batches."""
    shape = SHAPES[name]
    Ys, Zs, batched, single = _twin_optimizers(name, shape, retraction=retraction, reorthonormalize_every=4)
    fns = [_problem(shape, 20 + i) for i in range(3)]
    for t in range(30):
        active = [i for i in range(3) if (t + i) % 4 != 0]  # each member skips every fourth step
        for i in range(3):
            for X in (Ys[i], Zs[i]):
                X.grad = fns[i](X.detach(), t) if i in active else None
        before = [Y.detach().clone() for Y in Ys]
        batched.step()
        single.step()
        for i in range(3):
            if i not in active:
                assert torch.equal(Ys[i], before[i])
    for Y, Z in zip(Ys, Zs):
        assert torch.allclose(Y, Z, atol=1e-13, rtol=0)
        assert torch.allclose(batched.state[Y]["exp_avg"], single.state[Z]["exp_avg"], atol=1e-13, rtol=0)
    assert [int(batched.state[Y]["step"]) for Y in Ys] == [22, 23, 23]


def test_step_reads_nothing_back_to_the_host(monkeypatch):
    """A Cayley step of a Stiefel and a Grassmann batch (float32, Λ re-orthonormalised every fourth step, Y at
    the others) makes no host read: no .item()/float()/bool() of a tensor, no torch.equal."""
    Ys = [torch.nn.Parameter(manifold_point("stiefel", (9, 3), generator=_gen(i))) for i in range(3)]
    Gs = [torch.nn.Parameter(manifold_point("grassmann", (7, 2), generator=_gen(5 + i))) for i in range(2)]
    opt = ManifoldAdam(
        [
            {"params": Ys, "manifold": "stiefel", "reorthonormalize_every": 4, "reorthonormalize_point_every": 1},
            {"params": Gs, "manifold": "grassmann", "geometry_dtype": torch.float64},
        ],
        lr=1e-2,
        seed=0,
    )
    seen = []
    for attr in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        original = getattr(torch.Tensor, attr)

        def record(self, *a, _o=original, _n=attr, **k):
            seen.append(_n)
            return _o(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, attr, record)
    original_equal = torch.equal
    monkeypatch.setattr(torch, "equal", lambda *a: seen.append("equal") or original_equal(*a))
    g = _gen(9)
    for _ in range(4):
        for X in (*Ys, *Gs):
            X.grad = torch.randn(X.shape, generator=g).to(X.dtype)
        opt.step()
    assert seen == []
    monkeypatch.undo()
    assert opt.constraint_violation() < 1e-6


def test_resumed_batch_makes_exactly_the_uninterrupted_steps(tmp_path):
    """A batch of float32 parameters with float64 geometry, some steps without gradients, saved and loaded
    (weights_only) into a fresh optimizer built with another seed; the model's weights are loaded *after*
    the optimizer's state (the version counter flags the write, and the parameter equals ΛE)."""
    shape = (10, 3)

    def build(seed):
        Ys = [torch.nn.Parameter(manifold_point("stiefel", shape, generator=_gen(i))) for i in range(3)]
        opt = ManifoldAdam([{"params": Ys, "manifold": "stiefel", "geometry_dtype": DT}], lr=1e-2, seed=seed)
        return Ys, opt

    fns = [_problem(shape, 30 + i) for i in range(3)]

    def run(Ys, opt, t0, t1):
        for t in range(t0, t1):
            for i, Y in enumerate(Ys):
                Y.grad = None if (t + i) % 5 == 0 else fns[i](Y.detach().double(), t).float()
            opt.step()

    Ys, opt = build(1)
    run(Ys, opt, 0, 12)
    torch.save({"opt": opt.state_dict(), "Y": [Y.detach().clone() for Y in Ys]}, tmp_path / "ck.pt")
    run(Ys, opt, 12, 24)
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    Y2, opt2 = build(2)
    opt2.load_state_dict(ck["opt"])
    with torch.no_grad():
        for Y, saved in zip(Y2, ck["Y"]):
            Y.copy_(saved)
    run(Y2, opt2, 12, 24)
    for a, b in zip(Ys, Y2):
        assert torch.equal(a, b)
    assert opt2.state[Y2[0]]["section"].dtype == DT


def test_state_in_the_earlier_flat_layout_loads_and_resumes():
    """Moments saved in the flat layout of earlier versions ([strict lower(A) | B]) are converted on load."""
    shape = SHAPES["stiefel"]
    m = get_manifold("stiefel")
    fn = _problem(shape, 40)
    Y = torch.nn.Parameter(manifold_point("stiefel", shape, generator=_gen(0), dtype=DT))
    opt = ManifoldAdam([{"params": [Y], "manifold": "stiefel"}], lr=1e-2, seed=0)
    for t in range(5):
        Y.grad = fn(Y.detach(), t)
        opt.step()
    sd = opt.state_dict()
    flat = {
        **sd,
        "state": {0: {k: (m.to_flat(v, shape) if k.startswith("exp_avg") else v) for k, v in sd["state"][0].items()}},
    }
    assert flat["state"][0]["exp_avg"].shape == (m.dim(shape),)
    Z = torch.nn.Parameter(Y.detach().clone())
    opt2 = ManifoldAdam([{"params": [Z], "manifold": "stiefel"}], lr=1e-2, seed=3)
    opt2.load_state_dict(flat)
    for t in range(5, 10):
        for X, o in ((Y, opt), (Z, opt2)):
            X.grad = fn(X.detach(), t)
            o.step()
    assert torch.equal(Y, Z)


def test_manifold_adam_refuses_foreign_state_dict():
    """Loading another optimizer's state_dict is refused before anything changes (issue 18, item 8): torch's
    Adam (its groups have no manifold: the Stiefel group used to turn Euclidean silently), FAdam (its weight
    decay used to be adopted), ManifoldSGD (no betas), and a ManifoldAdam state on another manifold."""
    Y = torch.nn.Parameter(manifold_point("stiefel", (6, 2), generator=_gen(0), dtype=DT))
    opt = ManifoldAdam([{"params": [Y], "manifold": "stiefel"}], lr=1e-2, seed=0)
    X = torch.nn.Parameter(Y.detach().clone())
    X.grad = torch.ones_like(X)
    foreign = {
        "torch.optim.Adam": torch.optim.Adam([X], lr=1e-3),
        "FAdam": FAdam([X], lr=1e-3, weight_decay=0.1),
        "ManifoldSGD": ManifoldSGD([{"params": [X], "manifold": "stiefel"}], lr=1e-3, seed=0),
    }
    for name, other in foreign.items():
        other.step()
        with pytest.raises(ValueError, match="not (a|written by) ManifoldAdam"):
            opt.load_state_dict(other.state_dict())
        assert opt.param_groups[0]["manifold"] == "stiefel" and "weight_decay" in opt.param_groups[0], name
    grass = ManifoldAdam([{"params": [X], "manifold": "grassmann"}], lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="manifold = 'grassmann'"):
        opt.load_state_dict(grass.state_dict())
    sd = opt.state_dict()
    bad = {**sd, "state": {0: {**sd["state"][0], "section": torch.eye(5, dtype=DT)}}}
    with pytest.raises(ValueError, match="section of shape"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="param_groups"):
        opt.load_state_dict({"state": {}})
    # the same guard in ManifoldSGD and ProjectedRiemannianAdam
    sgd = ManifoldSGD([{"params": [Y], "manifold": "stiefel"}], lr=1e-2, seed=0)
    with pytest.raises(ValueError, match="not (a|written by) ManifoldSGD"):
        sgd.load_state_dict(foreign["torch.optim.Adam"].state_dict())
    proj = ProjectedRiemannianAdam([{"params": [Y], "manifold": "stiefel"}], lr=1e-2)
    for other in (foreign["torch.optim.Adam"], foreign["FAdam"], opt):
        with pytest.raises(ValueError, match="not (a|written by) ProjectedRiemannianAdam"):
            proj.load_state_dict(other.state_dict())
    # and its own state still loads
    proj.load_state_dict(proj.state_dict())
    opt.load_state_dict(opt.state_dict())


def test_state_dict_is_per_parameter_and_compact_on_disk():
    """state_dict holds one entry per parameter (views of the batch), and saving it stores each number once."""
    Ys = [torch.nn.Parameter(manifold_point("stiefel", (20, 4), generator=_gen(i), dtype=DT)) for i in range(4)]
    opt = ManifoldAdam([{"params": Ys, "manifold": "stiefel"}], lr=1e-2, seed=0)
    for Y in Ys:
        Y.grad = torch.ones_like(Y)
    opt.step()
    sd = opt.state_dict()
    assert sorted(sd["state"]) == [0, 1, 2, 3]
    assert all(sd["state"][i]["section"].shape == (20, 20) for i in range(4))
    buf = io.BytesIO()
    torch.save(sd, buf)
    numbers = 4 * (20 * 20 + 2 * 4 * 20 + 1)
    assert buf.tell() < 8 * numbers * 1.2 + 20_000


@pytest.mark.parametrize("p", [9, 16, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_cayley_solve_equals_lapack(dtype, p):
    """The C kernel's X = (I − ½S)⁻¹S (Gaussian elimination with partial pivoting, rows padded to whole vectors of
    16) equals LAPACK's solve on a batch of Cayley systems S = A − ½BᵀB from small to large steps (the large ones
    pivot), written into a strided view, to rounding; p below, at and across multiples of 16."""
    from icl.optim import manifold_kernels

    g = _gen(3)
    S = []
    for scale in (1e-4, 1e-2, 1.0, 5.0):
        A = scale * torch.randn(p, p, generator=g, dtype=DT)
        B = scale * torch.randn(p, 20, generator=g, dtype=DT)
        S.append(A - A.T - 0.5 * B @ B.T)
    S = torch.stack(S).to(dtype)
    if not manifold_kernels.usable(S):
        pytest.skip("no C compiler: the step uses torch.linalg.solve_ex")
    K = torch.full((4, p + 6, p), 7.0, dtype=dtype)
    scratch = torch.full((manifold_kernels.solve_scratch_size(p),), float("nan"), dtype=dtype)  # (not read)
    manifold_kernels.cayley_solve_(S, K[:, 3 : p + 3], scratch)
    ref = torch.linalg.solve(torch.eye(p, dtype=DT) - 0.5 * S.double(), S.double())
    tol = 1e-14 if dtype == DT else 1e-5
    for i in range(4):  # relative to each system's solution
        assert float((K[i, 3 : p + 3].double() - ref[i]).abs().max()) <= tol * float(ref[i].abs().max())
    assert torch.equal(K[:, :3], torch.full_like(K[:, :3], 7.0)) and torch.equal(K[:, p + 3 :], K[:, :3])
    with pytest.raises(ValueError, match="scratch"):
        manifold_kernels.cayley_solve_(S, K[:, 3 : p + 3], scratch[:-1])


@pytest.mark.parametrize("name", ["stiefel", "grassmann"])
def test_step_without_the_fused_kernel_equals_the_step_with_it(name):
    """With the fused kernels switched off (learned_optimizers.fused.disabled) the step solves through
    torch.linalg; both make the same iterates to 1e-12 over 200 float64 steps."""
    from learned_optimizers.fused import disabled

    shape = SHAPES[name]
    fn = _problem(shape, 50)
    runs = []
    for off in (False, True):
        Y = torch.nn.Parameter(manifold_point(name, shape, generator=_gen(0), dtype=DT))
        opt = ManifoldAdam([{"params": [Y], "manifold": name}], lr=1e-2, seed=0)
        traj = []
        for t in range(200):
            Y.grad = fn(Y.detach(), t)
            if off:
                with disabled():
                    opt.step()
            else:
                opt.step()
            traj.append(Y.detach().clone())
        runs.append(traj)
    assert max(float((a - b).abs().max()) for a, b in zip(*runs)) <= 1e-12
    assert float((runs[0][-1] - runs[0][0]).abs().max()) > 0.05


@pytest.mark.parametrize("k", [1, 2])
def test_kernel_follows_changing_hyperparameters_and_gradient_layouts(k):
    """The whole-step kernel keeps its arguments between calls (manifold_kernels.AdamStep): lr, betas, eps and
    maximize changed between steps, a gradient that turns column-major and back, and a new gradient tensor every
    step all reach it; the iterates equal the torch step's (fused kernels off) to 1e-12 over 40 float64 steps."""
    from learned_optimizers.fused import disabled

    fn = _problem((9, 3), 50)
    runs = []
    for off in (False, True):
        Ys = [torch.nn.Parameter(manifold_point("stiefel", (9, 3), generator=_gen(i), dtype=DT)) for i in range(k)]
        opt = ManifoldAdam([{"params": Ys, "manifold": "stiefel"}], lr=1e-2, seed=0)
        traj = []
        for t in range(40):
            group = opt.param_groups[0]
            group["lr"] = 1e-2 * (1 + t % 3)
            group["betas"] = (0.9, 0.999) if t < 20 else (0.5, 0.9)
            group["eps"] = 1e-8 if t % 2 else 1e-3
            group["maximize"] = 10 <= t < 15
            for Y in Ys:
                G = fn(Y.detach(), t)
                Y.grad = G.T.contiguous().T if t % 7 in (3, 4) else G.clone()  # (column-major on some steps)
            if off:
                with disabled():
                    opt.step()
            else:
                opt.step()
            traj.append(torch.stack([Y.detach().clone() for Y in Ys]))
        runs.append(traj)
    assert max(float((a - b).abs().max()) for a, b in zip(*runs)) <= 1e-12
    assert float((runs[0][-1] - runs[0][0]).abs().max()) > 0.05


def test_cayley_kernel_that_can_not_be_built_falls_back_with_a_warning(monkeypatch, tmp_path):
    """The one build routine (learned_optimizers.fused.build_library) reports a failing compiler: a warning that
    names the fallback, no library, nothing left in the cache."""
    from icl.optim import manifold_kernels

    monkeypatch.setenv("ICL_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    with pytest.warns(UserWarning, match="solve_ex is used"):
        assert manifold_kernels._library.__wrapped__() is None
    assert not list(tmp_path.rglob("*.so"))


def _trajectories(name, shape, dtype, steps, maximize, mode, monkeypatch, k=3):
    """Iterates, moments and step counts of k parameters in one batch, stepped by the whole-step kernel
    ("whole"), by torch with the kernel solve ("solve") or by torch alone ("torch")."""
    from icl.optim import manifold_kernels
    from learned_optimizers.fused import disabled

    calls = []  # (the kernel steps made, by the full step's call or the fast step's)
    run = manifold_kernels.AdamStep.run
    monkeypatch.setattr(manifold_kernels.AdamStep, "run", lambda self: calls.append(1) or run(self))
    if mode == "solve":
        monkeypatch.setattr(manifold_kernels, "step_usable", lambda L: False)
    Ys = [torch.nn.Parameter(manifold_point(name, shape, generator=_gen(i), dtype=dtype)) for i in range(k)]
    fns = [_problem(shape, 60 + i) for i in range(k)]
    opt = ManifoldAdam([{"params": Ys, "manifold": name}], lr=1e-2, maximize=maximize, seed=0)
    traj = []
    for t in range(steps):
        for Y, fn in zip(Ys, fns):
            Y.grad = fn(Y.detach().double(), t).to(dtype)
        if mode == "torch":
            with disabled():
                opt.step()
        else:
            opt.step()
        traj.append(torch.stack([Y.detach().clone() for Y in Ys]))
    monkeypatch.undo()
    st = [opt.state[Y] for Y in Ys]
    return traj, [torch.stack([s[key] for s in st]) for key in ("exp_avg", "exp_avg_sq", "step")], len(calls)


@pytest.mark.parametrize("name", ["stiefel", "grassmann"])
@pytest.mark.parametrize(("maximize", "wide"), [(False, False), (True, False), (False, True)])
def test_whole_step_kernel_equals_the_torch_step(name, maximize, wide, monkeypatch):
    """The one-call step (manifold_kernels.AdamStep: coordinates, their skew part and Adam's update fused, the
    p×p solve, the products through torch's BLAS, Y + D written into section and parameter) makes the iterates,
    moments and step counts of the torch step — with the kernel solve and with every kernel off — to 1e-12 over
    200 float64 steps of a batch of three (maximize too), and to float32 rounding over 20 float32 steps.  ``wide``:
    a 48×33 parameter, so that every product of the kernel has sizes above BLAS's small-matrix paths and an odd
    p (the shapes above have p ≤ 4)."""
    from icl.optim import manifold_kernels

    shape = (48, 33) if wide else SHAPES[name]
    probe = torch.zeros(1, shape[0], shape[0], dtype=DT)
    if not manifold_kernels.step_usable(probe):
        pytest.skip("no C compiler or no BLAS entry in libtorch_cpu: the step runs its torch code")
    for dtype, steps, tol in ((DT, 200, 1e-12), (torch.float32, 20, 2e-5)):
        runs = {mode: _trajectories(name, shape, dtype, steps, maximize, mode, monkeypatch)
                for mode in ("whole", "solve", "torch")}  # fmt: skip
        assert runs["whole"][2] == steps and runs["solve"][2] == runs["torch"][2] == 0
        for mode in ("solve", "torch"):
            err = max(float((a - b).abs().max()) for a, b in zip(runs["whole"][0], runs[mode][0]))
            assert err <= tol, (mode, dtype, err)
            for a, b in zip(runs["whole"][1], runs[mode][1]):
                assert float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))
        assert float((runs["whole"][0][-1] - runs["whole"][0][0]).abs().max()) > 0.05  # the iterates moved


def test_whole_step_kernel_is_skipped_where_it_can_not_run(monkeypatch):
    """float32 parameters with float64 geometry, a gradient that is neither row- nor column-major, the exp
    retraction and a square parameter take the torch step (the kernel would read the wrong numbers); the float64
    Stiefel/Grassmann Cayley step takes the kernel, for a row-major parameter with a column-major gradient and the
    reverse."""
    from icl.optim import manifold_kernels
    from learned_optimizers.fused import disabled

    if not manifold_kernels.step_usable(torch.zeros(1, 4, 4, dtype=DT)):
        pytest.skip("no C compiler or no BLAS entry in libtorch_cpu: the step runs its torch code")
    calls = []  # (the kernel steps made, by the full step's call or the fast step's)
    run = manifold_kernels.AdamStep.run
    monkeypatch.setattr(manifold_kernels.AdamStep, "run", lambda self: calls.append(1) or run(self))
    g = _gen(4)
    Y32 = torch.nn.Parameter(manifold_point("stiefel", (9, 3), generator=g))
    Yt = torch.nn.Parameter(manifold_point("stiefel", (9, 3), generator=g, dtype=DT))
    Ye = torch.nn.Parameter(manifold_point("grassmann", (9, 3), generator=g, dtype=DT))
    Yk = torch.nn.Parameter(manifold_point("grassmann", (9, 3), generator=g, dtype=DT).contiguous())
    Yc = torch.nn.Parameter(manifold_point("stiefel", (9, 3), generator=g, dtype=DT))
    assert Yc.stride() == (1, 9)  # (a QR factor: column-major)
    Ysq = torch.nn.Parameter(manifold_point("stiefel", (3, 3), generator=g, dtype=DT))  # square: no Y_⊥
    opt = ManifoldAdam(
        [
            {"params": [Y32], "manifold": "stiefel", "geometry_dtype": DT},
            {"params": [Yt], "manifold": "stiefel"},
            {"params": [Ye], "manifold": "grassmann", "retraction": "exp"},
            {"params": [Yk], "manifold": "grassmann"},
            {"params": [Yc], "manifold": "stiefel"},
            {"params": [Ysq], "manifold": "stiefel"},
        ],
        lr=1e-2,
        seed=0,
    )
    Y32.grad = torch.randn(9, 3, generator=g)
    Yt.grad = torch.randn(9, 6, generator=g, dtype=DT)[:, ::2]  # strides (6, 2)
    Ye.grad = torch.randn(9, 3, generator=g, dtype=DT)
    Yk.grad = torch.randn(3, 9, generator=g, dtype=DT).T  # column-major
    Yc.grad = torch.randn(9, 3, generator=g, dtype=DT)
    Ysq.grad = torch.randn(3, 3, generator=g, dtype=DT)
    ref = ManifoldAdam([{"params": [Yr := torch.nn.Parameter(Yk.detach().clone())], "manifold": "grassmann"}],
                       lr=1e-2, seed=0)  # fmt: skip
    ref.state[Yr]["section"].copy_(opt.state[Yk]["section"])
    Yr.grad = Yk.grad.contiguous()
    with disabled():
        ref.step()
    before = [Y.detach().clone() for Y in (Y32, Yt, Ye, Yk, Yc, Ysq)]
    opt.step()
    assert len(calls) == 2  # Yk's and Yc's buckets
    assert float((Yk.detach() - Yr.detach()).abs().max()) <= 1e-15
    for Y, Y0 in zip((Y32, Yt, Ye, Yk, Yc, Ysq), before):
        assert not torch.equal(Y, Y0)
        assert torch.equal(Y, opt.state[Y]["section"][:, :3].to(Y.dtype))  # the parameter is ΛE


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_polar_step_kernel_equals_the_torch_polar_step(dtype):
    """Stiefel.reorthonormalize_point_ by the C kernel (Y + YE: YᵀY in float64, YE in the dtype) equals its torch
    code to one rounding of the dtype, touches only the Y blocks, and shrinks ‖YᵀY − I‖ of a drifted batch
    quadratically."""
    from icl.optim import manifold_kernels
    from learned_optimizers.fused import disabled

    m = get_manifold("stiefel")
    g = _gen(8)
    L = torch.linalg.qr(torch.randn(3, 11, 11, generator=g, dtype=DT))[0]
    L[..., :4] += 1e-4 * torch.randn(3, 11, 4, generator=g, dtype=DT)  # drift Y off the manifold
    L = L.to(dtype).contiguous()
    if not manifold_kernels.step_usable(L):
        pytest.skip("no C compiler or no BLAS entry in libtorch_cpu: the torch code runs")
    ours, ref = L.clone(), L.clone()
    m.reorthonormalize_point_(ours, 4)
    with disabled():
        m.reorthonormalize_point_(ref, 4)
    tol = 1e-15 if dtype == DT else 1e-7
    assert float((ours - ref).abs().max()) <= tol
    assert torch.equal(ours[..., 4:], L[..., 4:])
    def drift(X):
        Y = X[..., :4].double()
        return float(torch.linalg.matrix_norm(Y.mT @ Y - torch.eye(4, dtype=DT)).max())

    before, after = drift(L), drift(ours)
    assert before > 1e-4 and after <= max(10 * before**2, 1e-14 if dtype == DT else 1e-6)  # (quadratic)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_step_equals_the_full_step(dtype, monkeypatch):
    """GlobalSectionOptimizer._fast_step (the usual step without the full path's Python) makes the full step's
    iterates bit for bit — a Euclidean group, two Stiefel buckets and a Grassmann one, float32 re-orthonormalisation
    steps (polar every 10th) — and hands over to the full step where it must: a gradient set to None, a parameter
    written outside the optimizer, a step hook, a state entry replaced, a new parameter group; it ran on most steps.
    """
    from icl.optim.manifold_optimizer import GlobalSectionOptimizer

    def make():
        g = _gen(5)
        W = torch.nn.Parameter(torch.randn(4, 6, generator=g, dtype=dtype))
        S = [torch.nn.Parameter(manifold_point("stiefel", (9, 3), generator=g, dtype=dtype)) for _ in range(2)]
        T = torch.nn.Parameter(manifold_point("stiefel", (12, 4), generator=g, dtype=dtype))
        R = torch.nn.Parameter(manifold_point("grassmann", (9, 2), generator=g, dtype=dtype))
        groups = [{"params": [W]}, {"params": [*S, T], "manifold": "stiefel"}, {"params": [R], "manifold": "grassmann"}]
        extra = torch.nn.Parameter(manifold_point("stiefel", (7, 2), generator=g, dtype=dtype))
        return ManifoldAdam(groups, lr=1e-2, seed=0), [W, *S, T, R], extra

    fast_steps, hooked = [], []
    real = GlobalSectionOptimizer._fast_step
    runs = []
    for fast in (True, False):
        opt, params, extra = make()
        if fast:
            monkeypatch.setattr(GlobalSectionOptimizer, "_fast_step", lambda o: real(o) and not fast_steps.append(1))
        else:
            monkeypatch.setattr(GlobalSectionOptimizer, "_fast_step", lambda o: False)
        traj, g = [], _gen(6)
        for t in range(45):
            for p in params + ([extra] if t >= 30 else []):
                p.grad = torch.randn(p.shape, generator=g, dtype=dtype)
            if t == 12:
                params[1].grad = None
            if t == 17:
                with torch.no_grad():
                    params[2].copy_(manifold_point("stiefel", (9, 3), generator=_gen(9), dtype=dtype))
            hook = opt.register_step_post_hook(lambda *a, t=t: hooked.append(t)) if t == 21 else None
            if t == 25:
                opt.state[params[3]]["exp_avg"] = opt.state[params[3]]["exp_avg"].clone()
            if t == 30:
                opt.add_param_group({"params": [extra], "manifold": "stiefel"})
            opt.step()
            if hook is not None:
                hook.remove()
            traj.append([p.detach().clone() for p in params + [extra]])
        runs.append(traj)
        monkeypatch.undo()
    for a, b in zip(*runs):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    # the full step ran at the 7 events (the first step, None, outside write, hook, state, group, and the step
    # after None: its partial step was no kernel step) and, in float32, at every member's 10th step
    assert len(fast_steps) == 38 if dtype == DT else 30 <= len(fast_steps) <= 34
    assert hooked == [21, 21]


def test_a_sparse_gradient_is_named_after_fast_steps():
    """A sparse gradient of a bucket's second member, after steps the fast path made, gets the full step's error."""
    Ys = [torch.nn.Parameter(manifold_point("stiefel", (9, 3), generator=_gen(i), dtype=DT)) for i in range(2)]
    opt = ManifoldAdam([{"params": Ys, "manifold": "stiefel"}], lr=1e-2, seed=0)
    for _ in range(3):
        for Y in Ys:
            Y.grad = torch.randn(9, 3, generator=_gen(7), dtype=DT)
        opt.step()
    Ys[1].grad = Ys[1].grad.to_sparse()
    with pytest.raises(RuntimeError, match="ManifoldAdam does not support sparse gradients"):
        opt.step()
