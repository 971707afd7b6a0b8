"""Tuned baselines and the Krylov bound, against scipy scalar minimisation and Ahn et al.'s closed form."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import scipy.optimize
import torch

import reference_optimizers as ro
from reference_optimizers.theory import one_layer_optimum


@dataclass
class Prompts:  # duck-types icl.prompts.PromptBatch
    X: torch.Tensor
    y: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor


def make_prompts(B, n, d, *, seed, Sigma_sqrt=None, noise=0.0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n + 1, d, generator=gen, dtype=torch.float64)
    if Sigma_sqrt is not None:
        X = X @ Sigma_sqrt
    w = torch.randn(B, d, generator=gen, dtype=torch.float64)
    y = torch.einsum("bnd,bd->bn", X, w) + noise * torch.randn(B, n + 1, generator=gen, dtype=torch.float64)
    return Prompts(X[:, :n], y[:, :n], X[:, n], y[:, n])


def one_step_loss(p, eta, P=None):
    it = ro.gradient_descent(p.X, p.y, 1, eta) if P is None else ro.preconditioned_gd(p.X, p.y, 1, P, eta)
    return float(ro.mean_query_loss(it, p.x_query, p.y_query)[1])


def aniso_sqrt(d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return (U * torch.linspace(0.5, 2.0, d, dtype=torch.float64)) @ U.T  # Σ = (U D Uᵀ)², κ = 16


@pytest.mark.parametrize("aniso", [False, True])
def test_krylov_depth_one_is_best_constant_step_gd(aniso):
    S = aniso_sqrt(4) if aniso else None
    p = make_prompts(3000, 10, 4, seed=1, Sigma_sqrt=S)
    bound = ro.krylov_bound(p, p, 1)
    best = scipy.optimize.minimize_scalar(lambda e: one_step_loss(p, e), bounds=(0.0, 3.0), method="bounded")
    assert bound.train_loss[1] == pytest.approx(best.fun, rel=1e-8)
    assert bound.coefficients[0] == pytest.approx(best.x, rel=1e-4)
    assert bound.train_loss[0] == pytest.approx(float((p.y_query**2).mean()))


def test_krylov_depth_one_with_preconditioner_is_best_preconditioned_step():
    S = aniso_sqrt(4)
    P = torch.linalg.inv(S @ S)  # Σ⁻¹
    p = make_prompts(3000, 10, 4, seed=2, Sigma_sqrt=S)
    bound = ro.krylov_bound(p, p, 1, preconditioner=P)
    best = scipy.optimize.minimize_scalar(lambda e: one_step_loss(p, e, P), bounds=(0.0, 3.0), method="bounded")
    assert bound.train_loss[1] == pytest.approx(best.fun, rel=1e-8)


def test_krylov_depth_one_matches_ahn_one_layer_optimum():
    """Isotropic x, w* ~ N(0, I), noiseless: the best scalar step is Ahn et al.'s Γ⁻¹ = c·I, so the fitted
    test loss must equal one_layer_optimum(I, n).loss up to Monte-Carlo error. With N = 150k test prompts the
    standard error of the mean squared error is std/√N (≈ 0.4% here); we allow 4 standard errors, plus the
    O(1/N) bias of fitting one coefficient on 150k training prompts."""
    d, n, N = 5, 10, 150_000
    train = make_prompts(N, n, d, seed=3)
    test = make_prompts(N, n, d, seed=4)
    bound = ro.krylov_bound(train, test, 1)
    c = bound.coefficients[0]
    err = (c * torch.einsum("bd,bnd,bn->b", test.x_query, test.X, test.y) / n - test.y_query) ** 2
    torch.testing.assert_close(err.mean(), bound.test_loss[1])
    se = float(err.std() / np.sqrt(N))
    opt = one_layer_optimum(torch.eye(d, dtype=torch.float64), n)
    assert abs(float(bound.test_loss[1]) - opt.loss) < 4 * se
    assert float(opt.A[0, 0]) == pytest.approx(float(c), rel=0.02)


def test_krylov_monomial_coefficients_reproduce_the_fit_and_bound_tuned_gd():
    d, n, depth = 4, 12, 3
    S = aniso_sqrt(d, seed=5)
    p = make_prompts(4000, n, d, seed=6, Sigma_sqrt=S)
    bound = ro.krylov_bound(p, p, depth)
    assert bound.train_loss.shape == (depth + 1,) and len(bound.coefficients_by_depth) == depth
    assert torch.all(bound.train_loss[1:] <= bound.train_loss[:-1] + 1e-12)
    # the monomial coefficients, applied literally, give the reported loss
    H, g = ro.moments(p.X, p.y)
    v, pred = g, torch.zeros_like(p.y_query)
    for c in bound.coefficients:
        pred = pred + c * torch.einsum("bd,bd->b", p.x_query, v)
        v = torch.einsum("bij,bj->bi", H, v)
    assert float(((pred - p.y_query) ** 2).mean()) == pytest.approx(float(bound.train_loss[-1]), rel=1e-8)
    # a GD step-size schedule is one such method: it cannot beat the bound on the prompts it was fit on
    tuned = ro.tune(ro.gradient_descent, p, depth, {"eta": [0.1, 0.3, 0.5]}, per_step=("eta",), maxfev=300)
    assert float(tuned.train_loss[-1]) >= float(bound.train_loss[-1]) - 1e-12
    # and GD with a tuned 3-step schedule is the whole depth-3 Krylov class (ŷ = x_qᵀ p(H) g with deg p <= 2,
    # 3 free coefficients <-> 3 step sizes, over the reals), so a good optimiser gets close to the bound
    assert float(tuned.train_loss[-1]) <= 1.05 * float(bound.train_loss[-1])


def test_krylov_deep_is_stable_and_reaches_least_squares_level_on_train():
    """Depth 30 with κ(Σ) = 16: the monomial Krylov features span many orders of magnitude, yet the train
    loss keeps decreasing to the least-squares level (a degree-29 polynomial in H is nearly H⁻¹ on the train
    spectra). The test loss is only checked to be finite: a high-degree fit may extrapolate badly."""
    d, n = 5, 20
    train = make_prompts(4000, n, d, seed=7, Sigma_sqrt=aniso_sqrt(d, 7), noise=0.1)
    test = make_prompts(4000, n, d, seed=8, Sigma_sqrt=aniso_sqrt(d, 7), noise=0.1)
    bound = ro.krylov_bound(train, test, 30)
    assert torch.isfinite(bound.train_loss).all() and torch.isfinite(bound.test_loss).all()
    assert torch.all(bound.train_loss[1:] <= bound.train_loss[:-1] * (1 + 1e-9))
    ols = float(ro.query_loss(ro.least_squares(train.X, train.y), train.x_query, train.y_query).mean())
    assert float(bound.train_loss[-1]) < 1.1 * ols  # (it may beat OLS: with noise a shrunk fit is better)


# --- tune ---------------------------------------------------------------------------------------------
def test_tune_one_step_gd_finds_the_scalar_optimum():
    train = make_prompts(2000, 10, 4, seed=10)
    test = make_prompts(2000, 10, 4, seed=11)
    res = ro.tune(ro.gradient_descent, train, 1, {"eta": [0.1, 0.3, 1.0, 3.0]}, test_prompts=test)
    best = scipy.optimize.minimize_scalar(lambda e: one_step_loss(train, e), bounds=(0.0, 3.0), method="bounded")
    assert res.hyperparameters["eta"] == pytest.approx(best.x, rel=1e-3)
    assert float(res.train_loss[1]) == pytest.approx(best.fun, rel=1e-7)
    assert res.test_loss.shape == (2,) and float(res.test_loss[1]) == pytest.approx(
        one_step_loss(test, res.hyperparameters["eta"])
    )
    assert res.method == "gradient_descent" and res.objective <= res.grid_objective


def test_tune_momentum_with_schedules_and_fixed_arguments():
    train = make_prompts(1000, 10, 4, seed=12, Sigma_sqrt=aniso_sqrt(4, 1))
    res = ro.tune(
        ro.heavy_ball,
        train,
        3,
        {"eta": [0.05, 0.2], "beta": [0.1, 0.5]},
        per_step=("eta", "beta"),
        maxfev=200,
    )
    assert len(res.hyperparameters["eta"]) == 3 and len(res.hyperparameters["beta"]) == 3
    assert res.objective <= res.grid_objective and res.test_loss is None
    P = torch.eye(4, dtype=torch.float64)
    res = ro.tune(ro.preconditioned_gd, train, 2, {"eta": [0.1, 0.3]}, fixed={"P": P}, refine=False)
    assert res.hyperparameters["P"] is P and res.evaluations == 2
    cg = ro.tune(ro.conjugate_gradient, train, 3, {}, test_prompts=train)
    torch.testing.assert_close(cg.train_loss, cg.test_loss)


def test_tune_diverging_grid_points_are_not_chosen():
    train = make_prompts(500, 10, 4, seed=13)
    res = ro.tune(ro.gradient_descent, train, 20, {"eta": [0.3, 1e6]}, refine=False)
    assert res.hyperparameters["eta"] == 0.3 and np.isfinite(res.objective)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda p: ro.krylov_bound(p, p, 0), "depth"),
        (lambda p: ro.krylov_bound(object(), p, 1), "train_prompts"),
        (lambda p: ro.krylov_bound(p, Prompts(p.X, p.y, p.x_query[:, :2], p.y_query), 1), "x_query"),
        (lambda p: ro.krylov_bound(p, p, 1, preconditioner=torch.eye(3)), "preconditioner"),
        (lambda p: ro.tune(ro.gradient_descent, p, 2, {"eta": []}), "grid"),
        (lambda p: ro.tune(ro.gradient_descent, p, 2, {"eta": [0.1]}, per_step=("beta",)), "per_step"),
        (lambda p: ro.tune(ro.gradient_descent, p, 0, {"eta": [0.1]}), "steps"),
        (lambda p: ro.tune(ro.gradient_descent, p, 2, {"eta": [0.1]}, objective="max"), "objective"),
        (lambda p: ro.tune(ro.gradient_descent, p, 2, {"eta": [0.1]}, test_prompts=object()), "test_prompts"),
    ],
)
def test_bounds_and_tune_reject_bad_input(call, name):
    p = make_prompts(20, 6, 4, seed=0)
    with pytest.raises(ValueError, match=name):
        call(p)


# --- Krylov-attaining steps and tuning over depths ---------------------------------------------------------
def test_krylov_steps_make_gd_attain_the_bound():
    """GD with the reciprocal roots of 1 − λq(λ) as step sizes reproduces the fitted bound's training loss at
    every depth (the oracle: the bound's own least-squares fit); complex roots give None."""
    d, n = 5, 20
    train = make_prompts(2000, n, d, seed=1, Sigma_sqrt=aniso_sqrt(d, 1))
    bound = ro.krylov_bound(train, train, 6)
    for T in range(1, 7):
        eta = ro.krylov_steps(bound.coefficients_by_depth[T - 1])
        assert eta is not None and eta.shape == (T,) and np.all(eta > 0)
        it = ro.gradient_descent(train.X, train.y, T, list(eta))
        loss = float(ro.mean_query_loss(it, train.x_query, train.y_query)[-1])
        assert loss == pytest.approx(float(bound.train_loss[T]), rel=1e-9)
    assert ro.krylov_steps(torch.tensor([0.0, -1.0])) is None  # r(λ) = 1 + λ²: roots ±i
    np.testing.assert_allclose(ro.krylov_steps(np.array([3.0, -2.0])), [1.0, 2.0])  # r = (1 − λ)(1 − 2λ): η = 1, 2
    with pytest.raises(ValueError, match="coefficients"):
        ro.krylov_steps(np.array([np.nan]))


def test_tune_depths_never_gets_worse_with_depth_and_reaches_the_bound_from_its_steps():
    d, n = 5, 20
    train = make_prompts(1000, n, d, seed=3, Sigma_sqrt=aniso_sqrt(d, 1))
    bound = ro.krylov_bound(train, train, 5)
    grid = {"eta": [0.1, 0.3, 1.0]}
    plain = ro.tune_depths(ro.gradient_descent, train, 5, grid, per_step=("eta",), maxfev=60)
    objectives = [r.objective for r in plain]
    assert all(b <= a for a, b in zip(objectives, objectives[1:]))
    assert [len(r.hyperparameters["eta"]) for r in plain] == [1, 2, 3, 4, 5]
    starts = {T: [{"eta": list(ro.krylov_steps(bound.coefficients_by_depth[T - 1]))}] for T in range(1, 6)}
    attained = ro.tune_depths(ro.gradient_descent, train, 5, grid, per_step=("eta",), starts=starts, maxfev=60)
    for T, r in enumerate(attained, start=1):
        assert r.objective == pytest.approx(float(bound.train_loss[T]), rel=1e-7)  # the bound is the class optimum
        assert r.objective <= plain[T - 1].objective * (1 + 1e-12)
    with pytest.raises(ValueError, match="per_step"):
        ro.tune_depths(ro.gradient_descent, train, 2, grid, per_step=())
    with pytest.raises(ValueError, match="starts"):
        ro.tune_depths(ro.gradient_descent, train, 2, grid, per_step=("eta",), starts={3: []})
    with pytest.raises(ValueError, match="starts"):
        ro.tune(ro.gradient_descent, train, 2, grid, per_step=("eta",), starts=[{"eta": [0.1]}])
