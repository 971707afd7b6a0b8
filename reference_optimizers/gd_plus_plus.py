"""GD++ (von Oswald et al., ICML 2023, Appendix A.10): gradient descent whose layers also transform every x.

The token-level recurrence. Every layer s reads the current tokens (x_j^s, r_j^s) of the n context points
(r_j^0 = y_j) and the query token (x_q^s, q^s) with q^0 = 0, and from them computes the step
Δ_s = (η_s/n) Σ_j r_j^s x_j^s and the curvature H_s = (1/n) Σ_j x_j^s x_j^sᵀ. It then updates all tokens at
once, the query included:

    r_j^{s+1} = r_j^s − Δ_sᵀ x_j^s,   q^{s+1} = q^s − Δ_sᵀ x_q^s,   x^{s+1} = (I − γ_s H_s) x^s.

The prediction after t layers is ŷ_t = −q^t. (Von Oswald et al. write γ against the unnormalised XXᵀ; here, as
for η, it multiplies the (1/n)-normalised H_s.)

The implied linear model in the original coordinates. Write x^s = T_s x, with T_0 = I and
T_{s+1} = (I − γ_s H_s) T_s, so that H_s = T_s H T_sᵀ with H = XᵀX/n and g = Xᵀy/n. By induction
r_j^s = y_j − ⟨w_s, x_j⟩ and ŷ_s = ⟨w_s, x_q⟩ for

    w_{s+1} = w_s + T_sᵀ Δ_s = w_s − η_s P_s (H w_s − g),   P_s = T_sᵀ T_s,

since Δ_s = η_s T_s (g − H w_s). This is the model of the issue's "T_tᵀ w̃_t" form: the weights w̃ that act on
the transformed query, pulled back by T_tᵀ. GD++ is therefore preconditioned GD with a data-dependent
preconditioner that obeys P_{s+1} = (I − γ_s P_s H) P_s (I − γ_s H P_s); for one transform, the curvature seen
by the next step is H(I − γH)² = H − 2γH² + γ²H³, von Oswald et al.'s "truncated Neumann series" of H⁻¹.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import einsum

from icl.validation import check_regression, check_steps
from reference_optimizers._checks import check_iterates, linalg_dtype
from reference_optimizers.gradient_descent import gradient_descent, moments, step_schedule

Schedule = float | Sequence[float] | torch.Tensor


def gd_plus_plus(
    X: torch.Tensor, y: torch.Tensor, steps: int, eta: Schedule = 1.0, gamma: Schedule = 0.0
) -> torch.Tensor:
    """GD++ of von Oswald et al. (2023, Appendix A.10), returned as linear models in the original coordinates.

    Update rule: w_{s+1} = w_s − η_s P_s ∇R(w_s), ∇R(w) = H w − g, with P_0 = I and
    P_{s+1} = (I − γ_s P_s H) P_s (I − γ_s H P_s), which is P_s = T_sᵀ T_s for the token transform
    x ← (I − γ_s H_s) x applied to every context and query input at every layer (see the module docstring).
    Computed in the eigenbasis of H, where P_s is diagonal.
    The prediction of the token recurrence after t layers is ⟨w_t, x_query⟩. γ = 0 gives plain GD.

    Args:
        X: context inputs, (B, n, d).
        y: context targets, (B, n).
        steps: number of iterations (>= 0).
        eta: the step size on the targets (>= 0), or one per step.
        gamma: the step of the input transform (in units of H = XᵀX/n, >= 0), or one per step.

    Returns:
        Every iterate, (B, steps+1, d).
    """
    X, y = check_regression(X, y)
    steps = check_steps(steps)
    etas = step_schedule(eta, steps, "eta", low=0.0)
    gammas = step_schedule(gamma, steps, "gamma", low=0.0)
    if all(c == 0.0 for c in gammas):  # plain GD: no eigendecomposition needed
        return gradient_descent(X, y, steps, etas)
    dtype = X.dtype
    H, g = moments(X.to(linalg_dtype(dtype)), y.to(linalg_dtype(dtype)))
    # P_s is a polynomial in H (P_0 = I and the recurrence only multiplies by H and P), so in the eigenbasis
    # H = Q diag(λ) Qᵀ every P_s is diagonal with p_{s+1} = p_s (1 − γ_s λ p_s)²: one batched eigh instead of
    # three batched d×d matmuls per step.
    lam, Q = torch.linalg.eigh(H)
    g_rot = einsum(Q, g, "b i k, b i -> b k")
    p = torch.ones_like(lam)
    w_rot = torch.zeros_like(lam)
    out = [w_rot]
    for e, c in zip(etas, gammas):
        w_rot = w_rot - e * p * (lam * w_rot - g_rot)
        out.append(w_rot)
        p = p * (1 - c * lam * p) ** 2
    W = einsum(Q, torch.stack(out, dim=1), "b i k, b t k -> b t i").to(dtype)
    return check_iterates("gd_plus_plus", W, "lower eta or gamma (each step needs η·p_s·λ < 2 for the eigenvalues λ)")
