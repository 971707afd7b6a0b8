"""Issue 18, items 8 (the optimizers other than ManifoldAdam) and 15: the optimizer and reference-optimizer APIs
refuse bad input at the call, with a message naming it, instead of failing later inside torch.

* another optimizer's state_dict is refused at ``load_state_dict`` (not a bare KeyError at the first step, and
  never silently adopting foreign hyper-parameters or dropping a manifold constraint);
* ProjectedRiemannianAdam names a sparse gradient;
* float16/bfloat16 inputs work in the linear-algebra-based reference optimizers (computed in float32);
* η < 0, β outside [0, 1), γ < 0 are refused.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import reference_optimizers as ro
from icl.optim import OPTIMIZERS, ProjectedRiemannianAdam

#: the optimizers of icl.optim whose load_state_dict this file covers (ManifoldAdam/ManifoldSGD: see
#: tests/test_manifold_adam.py)
OURS = ("fadam", "rf_rmsprop", "rf_adamw", "sirfshampoo", "riemannian_adam")
SOURCES = (*OURS, "adam", "adamw", "sgd")


def stepped(name: str, seed: int = 0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(4, 3, generator=g, dtype=torch.float64))
    opt = OPTIMIZERS[name]([p], lr=1e-2, **kwargs)
    p.grad = torch.randn(4, 3, generator=g, dtype=torch.float64)
    opt.step()
    return p, opt


@pytest.mark.parametrize("target, source", [(t, s) for t, s in itertools.product(OURS, SOURCES) if t != s])
def test_foreign_state_dict_is_refused_at_load(target, source):
    p, opt = stepped(target)
    groups_before = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    state_before = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
    _, other = stepped(source, seed=1)
    with pytest.raises(ValueError, match=f"{type(opt).__name__}.load_state_dict: parameter group 0 is not a "
                                         f"{type(opt).__name__} group .*another optimizer"):  # fmt: skip
        opt.load_state_dict(other.state_dict())
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups_before
    for k, v in state_before.items():  # nothing changed: the optimizer steps on as before
        assert torch.equal(opt.state[p][k], v) if torch.is_tensor(v) else opt.state[p][k] == v
    p.grad = torch.ones_like(p)
    opt.step()


@pytest.mark.parametrize("name", OURS)
def test_own_state_dict_still_loads_and_continues_exactly(name):
    p, opt = stepped(name)
    q, other = stepped(name)
    other.load_state_dict(opt.state_dict())
    for t in (p, q):
        t.grad = torch.full_like(t, 0.3)
    opt.step()
    other.step()
    assert torch.equal(p, q)


def test_state_dict_of_an_older_version_without_later_options_loads():
    """FAdam state_dicts written before eps2/eps_mode/… existed load with the old behaviour filled in."""
    p, opt = stepped("fadam")
    sd = opt.state_dict()
    for group in sd["param_groups"]:
        for key in ("eps2", "eps_mode", "eps_pow_2p", "clip_mode", "maximize"):
            del group[key]
    _, fresh = stepped("fadam", eps2=0.5)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["eps2"] == 0.01 and fresh.param_groups[0]["maximize"] is False


BAD_GROUPS = [("fadam", "lr", -1.0), ("rf_adamw", "betas", (0.9, 1.5)), ("sirfshampoo", "lr", float("nan")),
              ("riemannian_adam", "eps", -1.0)]


@pytest.mark.parametrize("name, key, bad", BAD_GROUPS)
def test_state_dict_with_an_invalid_hyperparameter_is_refused(name, key, bad):
    _, opt = stepped(name)
    sd = opt.state_dict()
    sd["param_groups"][0][key] = bad
    _, fresh = stepped(name)
    with pytest.raises(ValueError, match="parameter group 0: "):
        fresh.load_state_dict(sd)


def test_riemannian_adam_refuses_a_state_dict_that_would_drop_its_constraint():
    """A Stiefel group must not be reloaded from a euclidean one (item 8's silent fallback)."""
    Y, _ = torch.linalg.qr(torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    Y = torch.nn.Parameter(Y)
    opt = ProjectedRiemannianAdam([{"params": [Y], "manifold": "stiefel"}], lr=1e-2)
    Z = torch.nn.Parameter(torch.randn(6, 3, dtype=torch.float64))
    euclid = ProjectedRiemannianAdam([Z], lr=1e-2)
    Z.grad = torch.ones_like(Z)
    euclid.step()
    with pytest.raises(ValueError, match="has manifold = 'euclidean' but this optimizer's group has 'stiefel'"):
        opt.load_state_dict(euclid.state_dict())
    assert opt.param_groups[0]["manifold"] == "stiefel"


def test_riemannian_adam_names_a_sparse_gradient():
    p = torch.nn.Parameter(torch.zeros(5, 3))
    opt = ProjectedRiemannianAdam([p], lr=1e-2)
    p.grad = torch.zeros(5, 3).to_sparse()
    with pytest.raises(RuntimeError, match="ProjectedRiemannianAdam does not support sparse gradients"):
        opt.step()


# -- reference optimizers ----------------------------------------------------------------------------------------
@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 12, 4, generator=g, dtype=torch.float64)
    y = torch.randn(3, 12, generator=g, dtype=torch.float64)
    return X, y


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "name, call",
    [
        ("least_squares", lambda X, y: ro.least_squares(X, y)),
        ("ridge", lambda X, y: ro.ridge(X, y, 0.1)),
        ("newton", lambda X, y: ro.newton(X, y, 2)),
        ("gd_plus_plus", lambda X, y: ro.gd_plus_plus(X, y, 3, eta=0.5, gamma=0.1)),
    ],
)
def test_low_precision_inputs_work_and_match_float64(problem, dtype, name, call):
    X, y = problem
    Xl, yl = X.to(dtype), y.to(dtype)
    got = call(Xl, yl)
    assert got.dtype == dtype
    # oracle: the same method in float64 on the rounded inputs (numpy's lstsq for least squares)
    want = call(Xl.double(), yl.double())
    if name == "least_squares":
        want = torch.stack([torch.from_numpy(np.linalg.lstsq(a.numpy(), b.numpy(), rcond=None)[0])
                            for a, b in zip(Xl.double(), yl.double())])  # fmt: skip
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    assert torch.allclose(got.double(), want, rtol=tol, atol=tol * float(want.abs().max())), name


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda X, y: ro.gradient_descent(X, y, 3, eta=-1), "eta must lie in \\[0.0, inf\\), got -1.0"),
        (lambda X, y: ro.preconditioned_gd(X, y, 3, torch.eye(4, dtype=X.dtype), eta=-0.5), "eta must lie in"),
        (lambda X, y: ro.heavy_ball(X, y, 3, beta=1.5), "beta must lie in \\[0.0, 1.0\\), got 1.5"),
        (lambda X, y: ro.heavy_ball(X, y, 3, beta=1.0), "beta must lie in"),
        (lambda X, y: ro.nesterov(X, y, 3, beta=-0.1), "beta must lie in"),
        (lambda X, y: ro.heavy_ball(X, y, 3, eta=-1), "eta must lie in"),
        (lambda X, y: ro.gd_plus_plus(X, y, 3, gamma=-0.1), "gamma must lie in"),
    ],
)
def test_out_of_range_hyperparameters_are_refused(problem, call, message):
    with pytest.raises(ValueError, match=message):
        call(*problem)


def test_per_step_schedules_are_the_general_recurrence(problem):
    """A schedule may leave the constant's range (a Memformer's β_ℓ maps to any finite values); oracle: the
    recurrence unrolled by hand."""
    X, y = problem
    etas, betas = [0.2, -0.1, 0.3], [0.0, 1.5, -0.2]
    W = ro.heavy_ball(X, y, 3, etas, betas)
    n = X.shape[1]
    H, g = X.transpose(1, 2) @ X / n, (X.transpose(1, 2) @ y[..., None])[..., 0] / n
    w, v = torch.zeros_like(g), torch.zeros_like(g)
    for t, (e, b) in enumerate(zip(etas, betas)):
        v = b * v - e * ((H @ w[..., None])[..., 0] - g)
        w = w + v
        assert torch.allclose(W[:, t + 1], w, rtol=1e-12, atol=1e-12)


def test_tuning_treats_out_of_range_refinement_steps_as_diverged(problem):
    """A β grid with 0 is refined on the raw scale, so Nelder–Mead tries β < 0: scored 1e30, not a crash."""
    X, y = problem
    g = torch.Generator().manual_seed(1)
    batch = type("B", (), {"X": X, "y": y, "x_query": torch.randn(3, 4, generator=g, dtype=torch.float64),
                           "y_query": torch.randn(3, generator=g, dtype=torch.float64)})()  # fmt: skip
    res = ro.tune(ro.heavy_ball, batch, 4, {"eta": [0.1, 0.5], "beta": [0.0, 0.5]}, maxfev=60)
    assert 0.0 <= res.hyperparameters["beta"] < 1.0 and res.hyperparameters["eta"] >= 0.0
    assert np.isfinite(res.objective) and res.objective <= res.grid_objective
