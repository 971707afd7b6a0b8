"""Reference optimizers against independent oracles (numpy recurrences, scipy CG, numpy lstsq/inv)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg
import torch

import reference_optimizers as ro


def make_problem(B=6, n=12, d=5, *, seed=0, aniso=False, dtype=torch.float64):
    """Noiseless prompts x ~ N(0, Σ) (Σ = I, or U diag(1..κ) Uᵀ with U Haar from QR), w* ~ N(0, I)."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=gen, dtype=dtype)
    if aniso:
        U, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=dtype))
        scales = torch.linspace(1.0, 3.0, d, dtype=dtype)  # κ(Σ) = 9
        X = X @ (U * scales) @ U.T
    w = torch.randn(B, d, generator=gen, dtype=dtype)
    y = torch.einsum("bnd,bd->bn", X, w)
    xq = torch.randn(B, d, generator=gen, dtype=dtype)
    return X, y, w, xq


def np_moments(Xb, yb):
    n = Xb.shape[0]
    return Xb.T @ Xb / n, Xb.T @ yb / n


# --- the methods, in one table: name -> (callable, hyperparameters) -------------------------------------
METHODS = {
    "gradient_descent": (ro.gradient_descent, {"eta": 0.3}),
    "gradient_descent_schedule": (ro.gradient_descent, {"eta": [0.1, 0.2, 0.3, 0.4]}),
    "preconditioned_gd_shared": (ro.preconditioned_gd, {"P": "shared", "eta": 0.5}),
    "preconditioned_gd_per_prompt": (ro.preconditioned_gd, {"P": "per_prompt", "eta": 0.5}),
    "gd_plus_plus": (ro.gd_plus_plus, {"eta": 0.3, "gamma": 0.05}),
    "heavy_ball": (ro.heavy_ball, {"eta": 0.3, "beta": [0.1, 0.5, 0.7, 0.2]}),
    "nesterov": (ro.nesterov, {"eta": [0.2, 0.3, 0.3, 0.1], "beta": 0.6}),
    "conjugate_gradient": (ro.conjugate_gradient, {}),
    "conjugate_gradient_pr": (ro.conjugate_gradient, {"variant": "polak_ribiere"}),
    "newton": (ro.newton, {}),
    "iterative_newton": (ro.iterative_newton, {}),
    "iterative_newton_order3": (ro.iterative_newton, {"order": 3, "scaling": "giannou"}),
}
STEPS = 4


def run(name, X, y, steps=STEPS):
    fn, hp = METHODS[name]
    hp = {k: (v * steps)[:steps] if isinstance(v, list) else v for k, v in hp.items()}  # cycle schedules
    if hp.get("P") == "shared":
        hp["P"] = torch.eye(X.shape[2], dtype=X.dtype) * 0.7
    elif hp.get("P") == "per_prompt":
        H, _ = ro.moments(X, y)
        hp["P"] = torch.linalg.inv(H + torch.eye(X.shape[2], dtype=X.dtype))
    return fn(X, y, steps, **hp)


@pytest.mark.parametrize("name", list(METHODS))
def test_shape_start_and_batch_equals_loop(name):
    X, y, _, _ = make_problem(B=5, n=9, d=4, aniso=True)
    it = run(name, X, y)
    assert it.shape == (5, STEPS + 1, 4) and it.dtype == torch.float64
    assert torch.all(it[:, 0] == 0)
    if name == "preconditioned_gd_per_prompt":  # P must be sliced with the prompt
        H, _ = ro.moments(X, y)
        P = torch.linalg.inv(H + torch.eye(4, dtype=X.dtype))
        loop = [
            ro.preconditioned_gd(X[b : b + 1], y[b : b + 1], STEPS, P[b : b + 1], eta=0.5) for b in range(5)
        ]
    else:
        loop = [run(name, X[b : b + 1], y[b : b + 1]) for b in range(5)]
    torch.testing.assert_close(it, torch.cat(loop), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved(name, dtype):
    X, y, _, _ = make_problem(B=3, n=8, d=4, dtype=dtype)
    assert run(name, X, y).dtype == dtype


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("case", ["n_less_than_d", "rank_deficient", "zero_targets"])
def test_never_nan(name, case):
    X, y, _, _ = make_problem(B=4, n=10, d=6, seed=3)
    if case == "n_less_than_d":
        X, y = X[:, :3], y[:, :3]
    elif case == "rank_deficient":
        X = X.clone()
        X[..., 3:] = X[..., :3]  # rank 3 < d = 6
    else:
        y = torch.zeros_like(y)
    for dtype in (torch.float64, torch.float32):
        it = run(name, X.to(dtype), y.to(dtype), steps=12)
        assert torch.isfinite(it).all(), (name, case, dtype)


# --- first-order methods against hand-unrolled numpy recurrences ----------------------------------------
def np_gd(Xb, yb, etas):
    H, g = np_moments(Xb, yb)
    w = np.zeros(Xb.shape[1])
    out = [w]
    for e in etas:
        w = w - e * (H @ w - g)
        out.append(w)
    return np.stack(out)


def np_heavy_ball(Xb, yb, etas, betas):
    H, g = np_moments(Xb, yb)
    w_prev = w = np.zeros(Xb.shape[1])
    out = [w]
    for e, b in zip(etas, betas):
        w, w_prev = w - e * (H @ w - g) + b * (w - w_prev), w
        out.append(w)
    return np.stack(out)


def np_nesterov(Xb, yb, etas, betas):
    H, g = np_moments(Xb, yb)
    w_prev = w = np.zeros(Xb.shape[1])
    out = [w]
    for e, b in zip(etas, betas):
        u = w + b * (w - w_prev)
        w, w_prev = u - e * (H @ u - g), w
        out.append(w)
    return np.stack(out)


ETAS = [0.1, 0.35, 0.2, 0.4, 0.3]
BETAS = [0.0, 0.5, 0.8, 0.3, 0.6]


@pytest.mark.parametrize(
    "method, oracle, kwargs, np_args",
    [
        (ro.gradient_descent, np_gd, {"eta": ETAS}, (ETAS,)),
        (ro.gradient_descent, np_gd, {"eta": 0.25}, ([0.25] * 5,)),
        (ro.heavy_ball, np_heavy_ball, {"eta": ETAS, "beta": BETAS}, (ETAS, BETAS)),
        (ro.nesterov, np_nesterov, {"eta": ETAS, "beta": BETAS}, (ETAS, BETAS)),
        (
            ro.nesterov,
            np_nesterov,
            {"eta": torch.tensor(ETAS, dtype=torch.float64), "beta": 0.4},
            (ETAS, [0.4] * 5),
        ),
    ],
)
def test_first_order_matches_numpy_recurrence(method, oracle, kwargs, np_args):
    X, y, _, _ = make_problem(aniso=True)
    it = method(X, y, 5, **kwargs).numpy()
    for b in range(X.shape[0]):
        np.testing.assert_allclose(it[b], oracle(X[b].numpy(), y[b].numpy(), *np_args), rtol=0, atol=1e-12)


def test_preconditioned_gd_with_inverse_hessian_converges_in_one_step():
    X, y, w, _ = make_problem(aniso=True)
    H, _ = ro.moments(X, y)
    it = ro.preconditioned_gd(X, y, 3, torch.linalg.inv(H), eta=1.0)
    for t in (1, 2, 3):
        torch.testing.assert_close(it[:, t], w, rtol=0, atol=1e-10)


def test_preconditioned_gd_identity_is_gd():
    X, y, _, _ = make_problem()
    torch.testing.assert_close(
        ro.preconditioned_gd(X, y, 5, torch.eye(5, dtype=X.dtype), eta=ETAS),
        ro.gradient_descent(X, y, 5, ETAS),
    )


# --- GD++: the implied linear model against the literal token recurrence ---------------------------------
def np_gd_plus_plus_tokens(Xb, yb, Xq, etas, gammas):
    """Von Oswald et al.'s GD++ layer on explicit tokens: returns the query predictions after each layer.

    Every layer computes Δ = (η/n) Σ_j r_j x_j and H_s = (1/n) Σ_j x_j x_jᵀ from the current context tokens,
    then r_j -= Δᵀx_j, q -= Δᵀx_q for every query, and x <- (I − γ H_s) x for context and queries alike.
    """
    n, d = Xb.shape
    xs, r = Xb.copy(), yb.copy()
    xq, q = Xq.copy(), np.zeros(Xq.shape[0])
    preds = [-q.copy()]
    for eta, gamma in zip(etas, gammas):
        delta = eta / n * (r @ xs)
        Hs = xs.T @ xs / n
        r = r - xs @ delta
        q = q - xq @ delta
        xs = xs @ (np.eye(d) - gamma * Hs).T
        xq = xq @ (np.eye(d) - gamma * Hs).T
        preds.append(-q.copy())
    return np.stack(preds)  # (steps+1, n_queries)


@pytest.mark.parametrize(
    "etas, gammas", [([0.1] * 5, [0.02] * 5), ([0.05, 0.1, 0.08, 0.12, 0.02], [0.0, 0.03, 0.01, 0.02, 0.04])]
)
def test_gd_plus_plus_matches_token_recurrence(etas, gammas):
    X, y, _, _ = make_problem(aniso=True)
    gen = np.random.default_rng(1)
    it = ro.gd_plus_plus(X, y, 5, eta=etas, gamma=gammas).numpy()
    for b in range(X.shape[0]):
        Xq = gen.standard_normal((7, X.shape[2]))  # several queries: the model must be linear in x_q
        preds = np_gd_plus_plus_tokens(X[b].numpy(), y[b].numpy(), Xq, etas, gammas)
        np.testing.assert_allclose(it[b] @ Xq.T, preds, rtol=1e-12, atol=1e-12)
    assert np.abs(it).max() < 10  # a converging run, so the 1e-12 is a real test


def test_gd_plus_plus_with_zero_gamma_is_gd():
    X, y, _, _ = make_problem()
    torch.testing.assert_close(
        ro.gd_plus_plus(X, y, 5, eta=ETAS, gamma=0.0), ro.gradient_descent(X, y, 5, ETAS)
    )


# --- conjugate gradient -----------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["fletcher_reeves", "polak_ribiere"])
@pytest.mark.parametrize("aniso", [False, True])
def test_conjugate_gradient_matches_scipy_cg(variant, aniso):
    X, y, _, _ = make_problem(B=4, n=15, d=6, aniso=aniso, seed=7)
    it = ro.conjugate_gradient(X, y, 6, variant=variant).numpy()
    for b in range(X.shape[0]):
        H, g = np_moments(X[b].numpy(), y[b].numpy())
        for k in range(1, 6):
            ref, _ = scipy.sparse.linalg.cg(H, g, x0=np.zeros(6), rtol=1e-300, atol=0.0, maxiter=k)
            np.testing.assert_allclose(it[b, k], ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("variant", ["fletcher_reeves", "polak_ribiere"])
def test_conjugate_gradient_reaches_lstsq_in_d_steps_and_stays(variant):
    X, y, _, _ = make_problem(B=8, n=20, d=7, aniso=True, seed=2)
    y = y + 0.3 * torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=y.dtype)  # noisy
    it = ro.conjugate_gradient(X, y, 12, variant=variant).numpy()
    for b in range(X.shape[0]):
        ref = np.linalg.lstsq(X[b].numpy(), y[b].numpy(), rcond=None)[0]
        for k in range(7, 13):
            np.testing.assert_allclose(it[b, k], ref, rtol=0, atol=1e-10)


# --- Newton and Newton–Schulz -------------------------------------------------------------------------------
def test_newton_is_one_step_least_squares():
    X, y, _, _ = make_problem(aniso=True)
    it = ro.newton(X, y, 3)
    for t in (1, 2, 3):
        torch.testing.assert_close(it[:, t], ro.least_squares(X, y))
    assert ro.newton(X, y, 0).shape == (X.shape[0], 1, X.shape[2])


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("scaling", ["code", "giannou"])
def test_newton_schulz_converges_quadratically_to_inverse(order, scaling):
    """err_k = ‖M_k − S⁻¹‖₂. For order 2, M_{k+1} − S⁻¹ = −(M_k − S⁻¹) S (M_k − S⁻¹) exactly, so
    err_{k+1} <= C·err_k² with C = ‖S‖₂; for order p, I − S M_{k+1} = (I − S M_k)^p gives
    err_{k+1} <= ‖S‖₂^{p−1} err_k^p (asserted here with p = order, up to a rounding floor)."""
    X, _, _, _ = make_problem(B=3, n=30, d=6, aniso=True, seed=4)
    S = torch.einsum("bni,bnj->bij", X, X)
    M = ro.newton_schulz(S, 40, scaling=scaling, order=order).numpy()
    for b in range(3):
        Sinv = np.linalg.inv(S[b].numpy())
        err = np.array([np.linalg.norm(Mk - Sinv, 2) for Mk in M[b]])
        floor = 1e-12 * np.linalg.norm(Sinv, 2)
        assert err[-1] <= floor
        C = np.linalg.norm(S[b].numpy(), 2) ** (order - 1)
        for k in range(len(err) - 1):
            assert err[k + 1] <= C * err[k] ** order * (1 + 1e-6) + floor
        quadratic = err * C ** (1 / (order - 1)) < 0.5  # in the quadratic regime: the error drops fast
        assert quadratic.any()


def test_iterative_newton_converges_to_least_squares_and_indexing():
    X, y, _, _ = make_problem(B=3, n=30, d=6, aniso=True, seed=4)
    it = ro.iterative_newton(X, y, 30)
    torch.testing.assert_close(it[:, -1], ro.least_squares(X, y), rtol=0, atol=1e-10)
    S = torch.einsum("bni,bnj->bij", X, X)
    M = ro.newton_schulz(S, 3)
    torch.testing.assert_close(it[:, 2], torch.einsum("bij,bnj,bn->bi", M[:, 2], X, y))  # ŵ_t = M_t Xᵀy


def test_newton_schulz_paper_scaling_misses_the_top_eigendirection():
    """α = 2/‖SSᵀ‖₂ puts the top eigenvalue of I − M_0 S at −1: the iteration never recovers it."""
    X, _, _, _ = make_problem(B=2, n=30, d=6, aniso=True, seed=4)
    S = torch.einsum("bni,bnj->bij", X, X)
    M = ro.newton_schulz(S, 40, scaling="paper")[:, -1]
    lam, V = torch.linalg.eigh(S)
    top = V[..., -1]
    # the true value is top ᵀ S⁻¹ top = 1/λ_max; Newton–Schulz with this start keeps < 0.1% of it
    assert (torch.einsum("bi,bij,bj->b", top, M, top) * lam[:, -1]).abs().max() < 1e-3


# --- closed forms -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, d", [(12, 5), (5, 5), (3, 7), (1, 4)])
def test_least_squares_matches_numpy_lstsq_min_norm(n, d):
    X, y, _, _ = make_problem(B=4, n=n, d=d, seed=5)
    y = y + torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    w = ro.least_squares(X, y).numpy()
    for b in range(4):
        np.testing.assert_allclose(
            w[b], np.linalg.lstsq(X[b].numpy(), y[b].numpy(), rcond=None)[0], atol=1e-10
        )


def test_least_squares_rank_deficient_is_min_norm():
    X, y, _, _ = make_problem(B=3, n=10, d=6, seed=5)
    X = X.clone()
    X[..., 4:] = X[..., :2]
    w = ro.least_squares(X, y).numpy()
    for b in range(3):
        np.testing.assert_allclose(
            w[b], np.linalg.lstsq(X[b].numpy(), y[b].numpy(), rcond=None)[0], atol=1e-10
        )


def test_ridge_matches_normal_equations():
    X, y, _, _ = make_problem(seed=6)
    lam = 0.3
    w = ro.ridge(X, y, lam).numpy()
    for b in range(X.shape[0]):
        Xb, yb = X[b].numpy(), y[b].numpy()
        n, d = Xb.shape
        np.testing.assert_allclose(
            w[b], np.linalg.solve(Xb.T @ Xb / n + lam * np.eye(d), Xb.T @ yb / n), atol=1e-12
        )
    torch.testing.assert_close(ro.ridge(X, y, 0.0), ro.least_squares(X, y))


# --- query loss --------------------------------------------------------------------------------------------
def test_query_loss_shapes_and_values():
    X, y, w, xq = make_problem()
    yq = torch.einsum("bd,bd->b", xq, w)
    it = ro.conjugate_gradient(X, y, 6)
    loss = ro.query_loss(it, xq, yq)
    assert loss.shape == (X.shape[0], 7)
    torch.testing.assert_close(loss[:, 0], yq**2)
    assert loss[:, -1].max() < 1e-18
    assert ro.mean_query_loss(it, xq, yq).shape == (7,)
    assert ro.query_loss(ro.least_squares(X, y), xq, yq).shape == (X.shape[0],)


# --- bad input ---------------------------------------------------------------------------------------------
def _nan(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


X0, Y0, _, XQ0 = make_problem(B=2, n=4, d=3)
BAD_CALLS = [
    ("X", lambda: ro.gradient_descent(X0[0], Y0, 2)),
    ("y", lambda: ro.heavy_ball(X0, Y0[:, :3], 2)),
    ("X", lambda: ro.nesterov(_nan(X0), Y0, 2)),
    ("y", lambda: ro.conjugate_gradient(X0, _nan(Y0), 2)),
    ("steps", lambda: ro.conjugate_gradient(X0, Y0, -1)),
    ("steps", lambda: ro.newton(X0, Y0, 1.5)),
    ("steps", lambda: ro.iterative_newton(X0, Y0, -2)),
    ("eta", lambda: ro.gradient_descent(X0, Y0, 3, eta=[0.1, 0.2])),
    ("beta", lambda: ro.heavy_ball(X0, Y0, 2, beta=float("nan"))),
    ("gamma", lambda: ro.gd_plus_plus(X0, Y0, 2, gamma=[0.1])),
    ("P", lambda: ro.preconditioned_gd(X0, Y0, 2, torch.eye(4, dtype=X0.dtype))),
    ("P", lambda: ro.preconditioned_gd(X0, Y0, 2, _nan(torch.eye(3, dtype=X0.dtype)))),
    ("P", lambda: ro.preconditioned_gd(X0, Y0, 2, torch.eye(3))),  # float32 vs float64
    ("variant", lambda: ro.conjugate_gradient(X0, Y0, 2, variant="hestenes")),
    ("scaling", lambda: ro.iterative_newton(X0, Y0, 2, scaling="spectral")),
    ("order", lambda: ro.iterative_newton(X0, Y0, 2, order=1)),
    ("lam", lambda: ro.ridge(X0, Y0, -1.0)),
    ("X", lambda: ro.least_squares(X0.to(torch.int64), Y0)),
    ("y", lambda: ro.ridge(X0, Y0.float(), 0.1)),
    ("x_query", lambda: ro.query_loss(torch.zeros(2, 3, 3, dtype=X0.dtype), XQ0[:, :2], Y0[:, 0])),
    ("y_query", lambda: ro.query_loss(torch.zeros(2, 3, 3, dtype=X0.dtype), XQ0, _nan(Y0[:, 0]))),
]


@pytest.mark.parametrize("name, call", BAD_CALLS, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD_CALLS)])
def test_bad_input_raises_value_error_naming_the_argument(name, call):
    with pytest.raises(ValueError, match=name):
        call()
