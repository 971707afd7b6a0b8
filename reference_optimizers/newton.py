"""Newton's method and the Newton–Schulz ("iterative Newton") iteration on the in-context least-squares risk.

R(w) = (1/2n)‖Xw − y‖² is quadratic, so one exact Newton step from w_0 = 0 lands on the least-squares
solution. Fu, Chen, Jia & Sharan (NeurIPS 2024, arXiv 2310.17086) compare transformer layers with *iterative*
Newton: the Newton–Schulz iteration for S⁻¹ (S = XᵀX), whose k-th iterate M_k gives ŵ_k = M_k Xᵀ y; they find
about three Newton–Schulz iterations per layer. Giannou et al. (AISTATS 2025, arXiv 2403.03183) use the
order-p variant (code: ``NewtonOrderModel`` in github.com/Leiay/icl_newton).
"""

from __future__ import annotations

from math import comb

import torch
from einops import einsum

from icl.validation import check_steps, check_tensor
from reference_optimizers._checks import check_regression, check_scalar
from reference_optimizers.closed_form import least_squares

SCALINGS = ("paper", "code", "giannou")


def newton(X: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    """Exact Newton's method from w_0 = 0.

    Update rule: w_{t+1} = w_t − H⁺ ∇R(w_t) with H = XᵀX/n and the pseudo-inverse H⁺. On the quadratic R the
    first step gives the minimum-norm least-squares solution w_1 = X⁺y (also for n < d or rank-deficient
    X) and every later iterate stays there.

    Args:
        X: context inputs, (B, n, d).
        y: context targets, (B, n).
        steps: number of iterations (>= 0).

    Returns:
        Every iterate, (B, steps+1, d): zeros, then ``steps`` copies of the least-squares solution.
    """
    X, y = check_regression(X, y)
    steps = check_steps(steps)
    w0 = X.new_zeros(X.shape[0], 1, X.shape[2])
    if steps == 0:
        return w0
    w = least_squares(X, y).unsqueeze(1)
    return torch.cat([w0, w.expand(-1, steps, -1)], dim=1)


def newton_schulz(S: torch.Tensor, steps: int, scaling: str | float = "code", order: int = 2) -> torch.Tensor:
    """The Newton–Schulz iteration for S⁻¹ (S⁺ when S is singular), batched over S of shape (B, d, d).

    Update rule (order p): M_{k+1} = M_k Σ_{m=0}^{p−1} (−1)^m C(p, m+1) (S M_k)^m, so that
    I − S M_{k+1} = (I − S M_k)^p; p = 2 is M_{k+1} = 2M_k − M_k S M_k (Fu et al. 2024, Schulz 1933), p > 2
    is Giannou et al.'s higher-order variant. Start M_0 = α S (Fu et al.; for symmetric S their code's αSᵀ is
    the same), with α chosen per matrix by ``scaling``:

    - ``"paper"``: α = 2/‖SSᵀ‖₂ (Fu et al.'s text). Caution: then the top eigenvalue of I − M_0 S is exactly
      −1, which squares to +1 and never decays, so in exact arithmetic the component along S's top
      eigenvector is lost and M_k does not converge to S⁻¹ (in floating point it stays stuck to rounding).
    - ``"code"``: α = 1/‖SSᵀ‖_F (Fu et al.'s code as described in our notes; ‖·‖_F ≥ ‖·‖₂, so it converges).
    - ``"giannou"``: α = 1/(λ_max(SSᵀ) + λ_min(SSᵀ)) (Giannou et al.'s code).
    - a float: that α for every matrix.

    For symmetric S the error obeys M_{k+1} − S⁻¹ = −(M_k − S⁻¹) S (M_k − S⁻¹) (order 2), so
    ‖M_{k+1} − S⁻¹‖₂ ≤ ‖S‖₂ ‖M_k − S⁻¹‖₂²: quadratic convergence once ‖I − M_k S‖ < 1 is small, after about
    log₂(κ(S)²) iterations of the linear phase from M_0 = αS.

    Args:
        S: symmetric positive semi-definite matrices, (B, d, d).
        steps: number of iterations (>= 0).
        scaling: ``"paper"``, ``"code"``, ``"giannou"`` or a positive float α.
        order: the order p >= 2.

    Returns:
        M_0, …, M_steps, (B, steps+1, d, d). A zero S gives M_k = 0.
    """
    S = check_tensor("S", S, shape=(None, None, None))
    if S.shape[1] != S.shape[2]:
        raise ValueError(f"S must have shape (B, d, d), got {tuple(S.shape)}")
    steps = check_steps(steps)
    if isinstance(order, bool) or not isinstance(order, int) or order < 2:
        raise ValueError(f"order must be an integer >= 2, got {order!r}")
    return torch.stack(list(_newton_schulz_iterates(S, steps, scaling, order)), dim=1)


def _newton_schulz_iterates(S: torch.Tensor, steps: int, scaling: str | float, order: int):
    """Yield M_0, …, M_steps one at a time (iterative_newton never holds all of them: (B, steps+1, d, d))."""
    alpha = _initial_scale(S, scaling)
    d = S.shape[1]
    eye = torch.eye(d, dtype=S.dtype, device=S.device)
    coeffs = [(-1) ** m * comb(order, m + 1) for m in range(order)]
    M = alpha[:, None, None] * S.transpose(1, 2)
    yield M
    for _ in range(steps):
        SM = einsum(S, M, "b i k, b k j -> b i j")
        R = coeffs[-1] * SM + coeffs[-2] * eye  # Horner for Σ_m c_m (SM)^m; order 2: R = 2I − SM
        for c in reversed(coeffs[:-2]):
            R = einsum(R, SM, "b i k, b k j -> b i j") + c * eye
        M = einsum(M, R, "b i k, b k j -> b i j")
        yield M


def iterative_newton(
    X: torch.Tensor, y: torch.Tensor, steps: int, scaling: str | float = "code", order: int = 2
) -> torch.Tensor:
    """Iterative Newton (Newton–Schulz) for least squares, as Fu et al. (2024, §4) use it; Giannou et al.'s
    higher-order variant with ``order`` > 2.

    Update rule: M_{k+1} = 2M_k − M_k S M_k (order 2, see :func:`newton_schulz` for order p), S = XᵀX,
    M_0 = αS, and ŵ_k = M_k Xᵀ y.

    Indexing: to keep the common convention w_0 = 0, iterate t >= 1 is ŵ_t = M_t Xᵀy, i.e. the model after t
    Newton–Schulz iterations ("n_newton_steps = t" in Fu et al.'s code), and the scaled-gradient model
    M_0 Xᵀy = α S Xᵀy is not part of the trajectory.

    Args:
        X: context inputs, (B, n, d).
        y: context targets, (B, n).
        steps: number of iterations (>= 0).
        scaling: the start M_0 = αS: ``"paper"`` (2/‖SSᵀ‖₂, which does not converge along the top eigenvector,
            see :func:`newton_schulz`), ``"code"`` (1/‖SSᵀ‖_F, default), ``"giannou"`` or a float α.
        order: the order p >= 2 of the iteration.

    Returns:
        Every iterate, (B, steps+1, d).
    """
    X, y = check_regression(X, y)
    steps = check_steps(steps)
    S = einsum(X, X, "b n i, b n j -> b i j")
    b = einsum(X, y, "b n i, b n -> b i")
    if isinstance(order, bool) or not isinstance(order, int) or order < 2:
        raise ValueError(f"order must be an integer >= 2, got {order!r}")
    out = X.new_zeros(X.shape[0], steps + 1, X.shape[2])
    for t, M in enumerate(_newton_schulz_iterates(S, steps, scaling, order)):
        if t:
            out[:, t] = einsum(M, b, "b i j, b j -> b i")
    return out


def _initial_scale(S: torch.Tensor, scaling: str | float) -> torch.Tensor:
    """α per matrix for M_0 = αS; 0 where S = 0 (so that M stays 0 instead of NaN)."""
    if isinstance(scaling, str):
        SS = einsum(S, S, "b i k, b j k -> b i j")
        if scaling == "paper":
            denom = torch.linalg.matrix_norm(SS, ord=2) / 2
        elif scaling == "code":
            denom = torch.linalg.matrix_norm(SS, ord="fro")
        elif scaling == "giannou":
            ev = torch.linalg.eigvalsh(SS)
            denom = ev[:, -1] + ev[:, 0].clamp_min(0)
        else:
            raise ValueError(f"scaling must be one of {SCALINGS} or a positive float, got {scaling!r}")
        ok = denom > 0
        return torch.where(ok, 1 / torch.where(ok, denom, torch.ones_like(denom)), 0.0)
    alpha = check_scalar("scaling", scaling, minimum=0.0, strict=True)
    return S.new_full((S.shape[0],), alpha)
