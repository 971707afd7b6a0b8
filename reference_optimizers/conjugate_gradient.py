"""Linear conjugate gradient on the in-context least-squares risk, batched over prompts.

R(w) = (1/2n)‖Xw − y‖² is the quadratic ½wᵀHw − gᵀw + const with H = XᵀX/n and g = Xᵀy/n, so CG with exact
line search is the Hestenes–Stiefel (1952) iteration for the normal equations H w = g: the same Krylov
iteration as ``scipy.sparse.linalg.cg`` applied to (H, g). Every prompt has its own α_t and β_t (these
coefficients are data-dependent, which is what the shared scalars of Dutta & Sra's CGD-like Memformer cannot
express).
"""

from __future__ import annotations

import torch
from einops import einsum

from icl.validation import check_steps
from reference_optimizers._checks import check_regression
from reference_optimizers.gradient_descent import moments


def conjugate_gradient(X: torch.Tensor, y: torch.Tensor, steps: int, variant: str = "fletcher_reeves") -> torch.Tensor:
    """Conjugate gradient with exact line search from w_0 = 0 (Hestenes & Stiefel 1952).

    Update rule, with r_t = −∇R(w_t) = g − H w_t, r_0 = s_0 = g:

        α_t = r_tᵀ r_t / s_tᵀ H s_t                     (exact line search argmin_α R(w_t + α s_t)),
        w_{t+1} = w_t + α_t s_t,   r_{t+1} = r_t − α_t H s_t,
        β_t = r_{t+1}ᵀ r_{t+1} / r_tᵀ r_t               (Fletcher–Reeves), or
        β_t = r_{t+1}ᵀ (r_{t+1} − r_t) / r_tᵀ r_t       (Polak–Ribière),
        s_{t+1} = r_{t+1} + β_t s_t.

    This is the CGD reference of Dutta & Sra (2024, §3, Fletcher–Reeves with exact line search) in the
    (1/n)-normalised units (the iterates do not depend on the normalisation). On a quadratic both variants
    agree in exact arithmetic, and the iterate after min(d, rank H) steps is the minimum-norm least-squares
    solution.
    Per prompt, a prompt whose residual has reached zero (‖r_t‖ ≤ ε‖g‖ with ε the dtype's machine epsilon, or
    s_tᵀ H s_t ≤ 0) stops changing: every division is guarded with ``torch.where``, so no NaN appears for
    rank-deficient X, n < d or y = 0.

    Args:
        X: context inputs, (B, n, d).
        y: context targets, (B, n).
        steps: number of iterations (>= 0).
        variant: ``"fletcher_reeves"`` (default) or ``"polak_ribiere"``.

    Returns:
        Every iterate, (B, steps+1, d).
    """
    X, y = check_regression(X, y)
    steps = check_steps(steps)
    if variant not in ("fletcher_reeves", "polak_ribiere"):
        raise ValueError(f"variant must be 'fletcher_reeves' or 'polak_ribiere', got {variant!r}")
    H, g = moments(X, y)
    B, _, d = X.shape
    out = X.new_empty(B, steps + 1, d)
    out[:, 0] = 0
    # The loop is memory-bound (one pass over H per step), so the (B, d) state is updated in place.
    w = X.new_zeros(B, d)
    r = g  # g is not needed again
    s = g.clone()
    rr = einsum(r, r, "b i, b i -> b")
    tol = torch.finfo(X.dtype).eps ** 2 * rr  # ‖r‖ <= eps·‖g‖ counts as a zero residual
    one = torch.ones_like(rr)
    for t in range(steps):
        Hs = einsum(s, H, "b j, b j i -> b i")
        sHs = einsum(s, Hs, "b i, b i -> b")
        active = (rr > tol) & (sHs > 0)
        alpha = torch.where(active, rr / torch.where(active, sHs, one), 0.0).unsqueeze(-1)
        w.addcmul_(alpha, s)
        if variant == "fletcher_reeves":
            r.addcmul_(alpha, Hs, value=-1.0)
            num = rr_new = einsum(r, r, "b i, b i -> b")
        else:
            r_old = r
            r = r - alpha * Hs
            rr_new = einsum(r, r, "b i, b i -> b")
            num = rr_new - einsum(r, r_old, "b i, b i -> b")
        beta = torch.where(active, num / torch.where(active, rr, one), 0.0).unsqueeze(-1)
        s.mul_(beta).add_(r)
        rr = rr_new
        out[:, t + 1] = w
    return out
