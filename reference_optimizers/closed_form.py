"""Closed-form oracles: the minimum-norm least-squares solution and ridge regression, batched over prompts.

Unlike the iterative methods these return one solution per prompt, shape (B, d), not a trajectory; use
``reference_optimizers.losses.query_loss`` on them directly (it accepts (B, d) as well as (B, steps+1, d)).
"""

from __future__ import annotations

import torch
from einops import einsum

from icl.validation import check_regression
from reference_optimizers._checks import check_scalar, linalg_dtype
from reference_optimizers.gradient_descent import moments


def least_squares(X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The minimum-norm minimiser of R(w) = (1/2n)‖Xw − y‖²: w = X⁺ y = (XᵀX)⁺ Xᵀ y.

    The ordinary-least-squares baseline of Garg et al. (2022) and Fu et al. (2024). Computed with the batched,
    SVD-based ``torch.linalg.pinv`` (singular values below max(n, d)·ε·σ_max are treated as zero), so it is
    defined for n < d and for rank-deficient X, where it is the solution of smallest ‖w‖.

    Args:
        X: context inputs, (B, n, d).
        y: context targets, (B, n).

    Returns:
        The solutions, (B, d) (not a trajectory).
    """
    X, y = check_regression(X, y)
    dt = linalg_dtype(X.dtype)
    return einsum(torch.linalg.pinv(X.to(dt)), y.to(dt), "b d n, b n -> b d").to(X.dtype)


def ridge(X: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """The minimiser of the ridge risk (1/2n)‖Xw − y‖² + (λ/2)‖w‖²: w = (H + λI)⁻¹ g.

    With H = XᵀX/n and g = Xᵀy/n; for Gaussian w* ~ N(0, τ²I) and label noise σ², λ = σ²/(n τ²) gives the
    posterior mean, the Bayes-optimal predictor (Garg et al. 2022, noisy linear regression).
    λ = 0 falls back to :func:`least_squares` (minimum norm).

    Args:
        X: context inputs, (B, n, d).
        y: context targets, (B, n).
        lam: the ridge coefficient λ >= 0, in the (1/n)-normalised units above.

    Returns:
        The solutions, (B, d) (not a trajectory).
    """
    X, y = check_regression(X, y)
    lam = check_scalar("lam", lam, minimum=0.0)
    if lam == 0.0:
        return least_squares(X, y)
    dt = linalg_dtype(X.dtype)
    H, g = moments(X.to(dt), y.to(dt))
    eye = torch.eye(X.shape[2], dtype=dt, device=X.device)
    return torch.linalg.solve(H + lam * eye, g).to(X.dtype)
