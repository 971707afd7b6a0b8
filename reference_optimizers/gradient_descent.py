"""Gradient descent on the in-context least-squares risk.

All reference optimizers minimise R(w) = (1/2n)‖Xw − y‖² over the n context points of each prompt and return
every iterate w_0 = 0, w_1, …, w_steps with shape (B, steps+1, d). The gradient is the (1/n)-normalised one,
∇R(w) = (1/n)Xᵀ(Xw − y) = H w − g with H = XᵀX/n and g = Xᵀy/n, so a step η here is the step the linear
self-attention layer performs with A = η·I (Ahn et al. 2023, Lemma 1; von Oswald et al. 2023, Prop. 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from einops import einsum

from icl.validation import check_regression, check_steps
from reference_optimizers._checks import OutOfRangeError, check_iterates, check_preconditioner


def moments(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sufficient statistics of R: H = XᵀX/n (B, d, d) and g = Xᵀy/n (B, d).

    H is symmetric, so the iterations compute H v as vᵀH (``einsum(v, H, "b j, b j i -> b i")``): the batched
    row-vector product reads H row-contiguously and is ~3-4× faster on CPU than the column form.
    """
    n = X.shape[1]
    H = einsum(X, X, "b n i, b n j -> b i j").div_(n)  # in place: no second (B, d, d) buffer
    g = einsum(X, y, "b n i, b n -> b i").div_(n)
    return H, g


def step_schedule(
    eta: float | Sequence[float] | torch.Tensor,
    steps: int,
    name: str = "eta",
    low: float | None = None,
    high: float | None = None,
) -> list[float]:
    """Expand a constant or per-step hyperparameter into a list of ``steps`` finite floats.

    Args:
        low: if given, a constant must be >= low.
        high: if given, a constant must be < high.

    The bounds apply to a constant, the classical method (a constant η < 0 ascends, a constant momentum β >= 1
    never converges). A per-step schedule is the general recurrence, taken as given: the learned models'
    per-layer coefficients map to schedules with any finite values (e.g. a Memformer's β_ℓ).

    Raises:
        ValueError: naming ``name`` if an entry is not a finite real number, a constant lies outside
            [low, high), or the length is not ``steps``.
    """
    if isinstance(eta, torch.Tensor):
        eta = eta.detach().cpu().reshape(-1).tolist() if eta.ndim else eta.item()
    if isinstance(eta, np.generic):
        eta = eta.item()
    if isinstance(eta, bool):
        raise ValueError(f"{name} must be a number or a sequence of numbers, got {eta!r}")
    constant = isinstance(eta, (int, float))
    if constant:
        eta = [eta] * steps
    try:
        eta = [float(e) for e in eta]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a sequence of numbers, got {eta!r}") from None
    if len(eta) != steps:
        raise ValueError(f"{name} has {len(eta)} entries but steps = {steps}")
    if not all(math.isfinite(e) for e in eta):
        raise ValueError(f"{name} contains NaN or infinite values: {eta}")
    bad = [e for e in eta if (low is not None and e < low) or (high is not None and e >= high)] if constant else []
    if bad:
        lo = f"[{low}" if low is not None else "(-inf"
        hi = f"{high})" if high is not None else "inf)"
        raise OutOfRangeError(f"{name} must lie in {lo}, {hi}, got {bad[0]!r}")
    return eta


def gradient_descent(
    X: torch.Tensor, y: torch.Tensor, steps: int, eta: float | Sequence[float] | torch.Tensor = 1.0
) -> torch.Tensor:
    """Gradient descent from w_0 = 0 with a constant or per-step step size.

    Update rule: w_{t+1} = w_t − η_t ∇R(w_t), ∇R(w) = (1/n)Xᵀ(Xw − y).

    Args:
        X: context inputs, (B, n, d).
        y: context targets, (B, n).
        steps: number of iterations (>= 0).
        eta: a step size >= 0, or one per step.

    Returns:
        Every iterate, (B, steps+1, d).
    """
    X, y = check_regression(X, y)
    steps = check_steps(steps)
    etas = step_schedule(eta, steps, "eta", low=0.0)
    H, g = moments(X, y)
    w = X.new_zeros(X.shape[0], X.shape[2])
    out = [w]
    for e in etas:
        w = w - e * (einsum(w, H, "b j, b j i -> b i") - g)
        out.append(w)
    hint = "gradient descent is stable only for η < 2/λ_max(XᵀX/n): lower eta"
    return check_iterates("gradient_descent", torch.stack(out, dim=1), hint)


def preconditioned_gd(
    X: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    P: torch.Tensor,
    eta: float | Sequence[float] | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Preconditioned gradient descent from w_0 = 0 with a fixed preconditioner.

    Update rule: w_{t+1} = w_t − η_t P ∇R(w_t) = w_t − η_t P (H w_t − g), H = XᵀX/n, g = Xᵀy/n.

    This is what one linear self-attention layer computes with A = η_t P (Ahn et al. 2023, Lemma 1 and
    Theorem 1: the trained one-layer model is P = Γ⁻¹, Γ = (1 + 1/n)Σ + (tr Σ / n) I for w* ~ N(0, I)). With
    P = H⁻¹ and η = 1 one step reaches the least-squares solution (Newton's method).

    Args:
        X: context inputs, (B, n, d).
        y: context targets, (B, n).
        steps: number of iterations (>= 0).
        P: the preconditioner, one (d, d) matrix for all prompts or one per prompt, (B, d, d).
        eta: a step size >= 0, or one per step.

    Returns:
        Every iterate, (B, steps+1, d).
    """
    X, y = check_regression(X, y)
    steps = check_steps(steps)
    P = check_preconditioner(P, X)
    etas = step_schedule(eta, steps, "eta", low=0.0)
    H, g = moments(X, y)
    pattern = "i j, b j -> b i" if P.ndim == 2 else "b i j, b j -> b i"
    w = X.new_zeros(X.shape[0], X.shape[2])
    out = [w]
    for e in etas:
        w = w - e * einsum(P, einsum(w, H, "b j, b j i -> b i") - g, pattern)
        out.append(w)
    hint = "it is stable only while the eigenvalues of η·P·XᵀX/n stay below 2: lower eta or rescale P"
    return check_iterates("preconditioned_gd", torch.stack(out, dim=1), hint)
