"""Property tests of every reference optimizer on random regression problems: shapes with n < d, d = 1 and
n = 1, rank-deficient and all-zero X, inputs scaled from 1e-6 to 1e6, float32 and float64. With a step size the
method's theory says is stable (η = 1/L, L the largest eigenvalue of H = XᵀX/n), every output is finite and
has the documented shape, or the call raises a ValueError; never a silent NaN."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_optimizers as ro
from reference_optimizers._checks import DivergedError

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
STEPS = 6


@st.composite
def problems(draw):
    B = draw(st.integers(1, 3))
    n = draw(st.integers(1, 6))
    d = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    kind = draw(st.sampled_from(["full", "low_rank", "zero_column", "duplicate", "zero"]))
    X = torch.randn(B, n, d, generator=g, dtype=torch.float64)
    if kind == "low_rank":  # rank r < min(n, d) when possible
        r = max(1, min(n, d) - 1)
        X = torch.randn(B, n, r, generator=g, dtype=torch.float64) @ torch.randn(B, r, d, generator=g).double()
    elif kind == "zero_column":
        X[:, :, 0] = 0
    elif kind == "duplicate" and d > 1:
        X[:, :, 1] = X[:, :, 0]
    elif kind == "zero":
        X.zero_()
    x_scale = 10.0 ** draw(st.floats(-6, 6))
    w_scale = 10.0 ** draw(st.floats(-3, 3))
    w = torch.randn(B, d, generator=g, dtype=torch.float64) * w_scale
    y = torch.einsum("bnd,bd->bn", X, w) * x_scale
    y = y + draw(st.sampled_from([0.0, 1.0])) * torch.randn(B, n, generator=g, dtype=torch.float64) * x_scale
    X = X * x_scale
    # the largest curvature over the batch (in float64); 1 where X = 0
    H = torch.einsum("bni,bnj->bij", X, X) / n
    L = float(torch.linalg.eigvalsh(H).max())
    L = L if L > 0 else 1.0
    return X.to(dtype), y.to(dtype), L


def run_method(name: str, X, y, L):
    d = X.shape[2]
    eta = 1.0 / L
    if name == "gradient_descent":
        return ro.gradient_descent(X, y, STEPS, eta=eta)
    if name == "preconditioned_gd":
        P = torch.eye(d, dtype=X.dtype) * 0.5
        return ro.preconditioned_gd(X, y, STEPS, P, eta=eta)
    if name == "gd_plus_plus":
        return ro.gd_plus_plus(X, y, STEPS, eta=eta, gamma=0.5 / L)
    if name == "heavy_ball":
        return ro.heavy_ball(X, y, STEPS, eta=eta, beta=0.5)
    if name == "nesterov":
        return ro.nesterov(X, y, STEPS, eta=eta, beta=0.5)
    if name == "conjugate_gradient":
        return ro.conjugate_gradient(X, y, STEPS)
    if name == "conjugate_gradient_pr":
        return ro.conjugate_gradient(X, y, STEPS, variant="polak_ribiere")
    if name == "newton":
        return ro.newton(X, y, STEPS)
    if name == "iterative_newton":
        return ro.iterative_newton(X, y, STEPS)
    if name == "iterative_newton_giannou":
        return ro.iterative_newton(X, y, STEPS, scaling="giannou", order=3)
    if name == "least_squares":
        return ro.least_squares(X, y)
    if name == "ridge":
        return ro.ridge(X, y, lam=1e-2 * L)
    raise AssertionError(name)


ITERATIVE = [
    "gradient_descent",
    "preconditioned_gd",
    "gd_plus_plus",
    "heavy_ball",
    "nesterov",
    "conjugate_gradient",
    "conjugate_gradient_pr",
    "newton",
    "iterative_newton",
    "iterative_newton_giannou",
]
CLOSED_FORM = ["least_squares", "ridge"]


@pytest.mark.parametrize("name", ITERATIVE + CLOSED_FORM)
@SETTINGS
@given(problem=problems())
def test_finite_output_or_clear_error(name, problem):
    X, y, L = problem
    B, _, d = X.shape
    try:
        out = run_method(name, X, y, L)
    except ValueError as e:  # a clear, named refusal is allowed; a NaN is not
        assert str(e), name
        return
    expected = (B, d) if name in CLOSED_FORM else (B, STEPS + 1, d)
    assert tuple(out.shape) == expected
    assert out.dtype == X.dtype
    bad = ~torch.isfinite(out)
    assert not bool(bad.any()), f"{name} returned non-finite values at {bad.nonzero()[:3].tolist()}"


@pytest.mark.parametrize("name", ITERATIVE + CLOSED_FORM)
def test_bad_inputs_raise_named_errors(name):
    X, y = torch.randn(2, 4, 3), torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"y must have shape \(2, 4\)"):
        run_method(name, X, y[:, :3], 1.0)
    with pytest.raises(ValueError, match="X contains NaN"):
        run_method(name, X.clone().fill_(float("nan")), y, 1.0)
    with pytest.raises(ValueError, match="y has dtype torch.float64"):
        run_method(name, X, y.double(), 1.0)


@pytest.mark.parametrize("name", ["gradient_descent", "heavy_ball", "nesterov", "gd_plus_plus", "preconditioned_gd"])
def test_default_step_on_large_inputs_is_finite_or_an_error(name):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1, 4, 2, generator=g) * 1e6
    y = torch.randn(1, 4, generator=g) * 1e6
    calls = {
        "gradient_descent": lambda: ro.gradient_descent(X, y, 8),
        "heavy_ball": lambda: ro.heavy_ball(X, y, 8),
        "nesterov": lambda: ro.nesterov(X, y, 8),
        "gd_plus_plus": lambda: ro.gd_plus_plus(X, y, 8, gamma=1.0),
        "preconditioned_gd": lambda: ro.preconditioned_gd(X, y, 8, torch.eye(2)),
    }
    with pytest.raises(DivergedError, match=rf"{name} diverged: iterate \d+ is not finite on 1 of 1 prompts; .*lower"):
        calls[name]()
