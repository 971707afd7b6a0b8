"""Momentum methods on the in-context least-squares risk: Polyak's heavy ball and Nesterov's acceleration.

Both minimise R(w) = (1/2n)‖Xw − y‖² from w_0 = 0 with the (1/n)-normalised gradient ∇R(w) = H w − g (H =
XᵀX/n, g = Xᵀy/n) and return every iterate, (B, steps+1, d). They are the "Momentum GD" and "Nesterov AGM"
baselines of Dutta & Sra (2024, arXiv 2410.07263, §4 and appendix), which the linear first-order-method
Memformer is compared against; unlike their notebooks (fixed η = 0.005 or 0.03, β = 0.9 on the unnormalised
gradient, n − 1 points) the step sizes here are in the normalised units and are meant to be tuned (see
:func:`reference_optimizers.tuning.tune`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import einsum

from icl.validation import check_regression, check_steps
from reference_optimizers._checks import check_iterates
from reference_optimizers.gradient_descent import moments, step_schedule

Schedule = float | Sequence[float] | torch.Tensor


def heavy_ball(X: torch.Tensor, y: torch.Tensor, steps: int, eta: Schedule = 1.0, beta: Schedule = 0.5) -> torch.Tensor:
    """Polyak's heavy-ball method from w_0 = 0 (Polyak 1964), with constant or per-step η and β.

    Update rule: v_{t+1} = β_t v_t − η_t ∇R(w_t), w_{t+1} = w_t + v_{t+1}, v_0 = 0; equivalently
    w_{t+1} = w_t − η_t ∇R(w_t) + β_t (w_t − w_{t−1}) with w_{−1} = w_0
    (Dutta & Sra 2024's momentum reference).

    Args:
        X: context inputs, (B, n, d).
        y: context targets, (B, n).
        steps: number of iterations (>= 0).
        eta: a step size >= 0, or one per step.
        beta: a momentum coefficient in [0, 1), or one per step (a schedule may hold any finite values).

    Returns:
        Every iterate, (B, steps+1, d).
    """
    X, y = check_regression(X, y)
    steps = check_steps(steps)
    etas = step_schedule(eta, steps, "eta", low=0.0)
    betas = step_schedule(beta, steps, "beta", low=0.0, high=1.0)
    H, g = moments(X, y)
    w = X.new_zeros(X.shape[0], X.shape[2])
    v = torch.zeros_like(w)
    out = [w]
    for e, b in zip(etas, betas):
        v = b * v - e * (einsum(w, H, "b j, b j i -> b i") - g)
        w = w + v
        out.append(w)
    hint = "heavy ball is stable only for 0 <= β < 1 and η < 2(1 + β)/λ_max(XᵀX/n): lower eta"
    return check_iterates("heavy_ball", torch.stack(out, dim=1), hint)


def nesterov(X: torch.Tensor, y: torch.Tensor, steps: int, eta: Schedule = 1.0, beta: Schedule = 0.5) -> torch.Tensor:
    """Nesterov's accelerated gradient from w_0 = 0 (Nesterov 1983), with constant or per-step η and β.

    Update rule: u_t = w_t + β_t (w_t − w_{t−1}), w_{t+1} = u_t − η_t ∇R(u_t), with w_{−1} = w_0 = 0, i.e. the
    gradient is taken at the look-ahead point u_t (Sutskever et al. 2013 write the same iteration in velocity
    form). The classical choice for an L-smooth, μ-strongly convex R is η = 1/L, β = (√κ − 1)/(√κ + 1).

    Args:
        X: context inputs, (B, n, d).
        y: context targets, (B, n).
        steps: number of iterations (>= 0).
        eta: a step size >= 0, or one per step.
        beta: a momentum coefficient in [0, 1), or one per step (a schedule may hold any finite values).

    Returns:
        Every iterate, (B, steps+1, d).
    """
    X, y = check_regression(X, y)
    steps = check_steps(steps)
    etas = step_schedule(eta, steps, "eta", low=0.0)
    betas = step_schedule(beta, steps, "beta", low=0.0, high=1.0)
    H, g = moments(X, y)
    w = X.new_zeros(X.shape[0], X.shape[2])
    w_prev = w
    out = [w]
    for e, b in zip(etas, betas):
        u = w + b * (w - w_prev)
        w_prev, w = w, u - e * (einsum(u, H, "b j, b j i -> b i") - g)
        out.append(w)
    hint = "Nesterov's method needs η <= 1/λ_max(XᵀX/n) for its guarantees: lower eta"
    return check_iterates("nesterov", torch.stack(out, dim=1), hint)
