"""Validation helpers specific to the reference optimizers (the shared ones live in icl.validation).

Each helper raises a ``ValueError`` that names the argument, before any compute.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from icl.validation import check_regression, check_same, check_tensor


class DivergedError(ValueError):
    """An iteration left the floating-point range (its hyperparameters are unstable for these prompts)."""


class OutOfRangeError(ValueError):
    """A hyperparameter lies outside the range where the method is defined (η < 0, β outside [0, 1), …)."""


def check_iterates(method: str, W: torch.Tensor, hint: str) -> torch.Tensor:
    """Return the iterates W (B, steps+1, d), or raise :class:`DivergedError` naming the method, the first
    non-finite step and ``hint`` (what to change) instead of returning a silent NaN."""
    if W.numel() and not bool(torch.isfinite(W.sum())):
        bad = ~torch.isfinite(W)
        if bool(bad.any()):
            per_step = bad.any(dim=-1).any(dim=0)
            step = int(per_step.nonzero()[0, 0])
            prompts = int(bad.any(dim=-1).any(dim=-1).sum())
            raise DivergedError(
                f"{method} diverged: iterate {step} is not finite on {prompts} of {W.shape[0]} prompts; {hint}"
            )
    return W


#: torch's linear algebra (pinv, solve, eigh, matrix norms) has no 16-bit kernels: such inputs are computed in
#: float32 and the result is returned in the input's dtype
LOW_PRECISION = (torch.float16, torch.bfloat16)


def linalg_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to run linear algebra in for inputs of ``dtype`` (float32 for 16-bit floats)."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def check_scalar(name: str, value: object, *, minimum: float | None = None, strict: bool = False) -> float:
    """Validate a finite real scalar hyperparameter (optionally bounded below) and return it as a float."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
    return value


def check_preconditioner(P: object, X: torch.Tensor, name: str = "P") -> torch.Tensor:
    """Validate a preconditioner: one (d, d) matrix shared by all prompts or one per prompt, (B, d, d)."""
    B, _, d = X.shape
    if not isinstance(P, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (d, d) or (B, d, d), got {type(P).__name__}")
    if P.ndim == 2:
        check_tensor(name, P, shape=(d, d))
    else:
        check_tensor(name, P, shape=(B, d, d))
    check_same(["X", name], [X, P])
    return P


def check_prompts(prompts: Any, name: str = "prompts") -> tuple[torch.Tensor, ...]:
    """Duck-type a prompt batch: attributes X (B, n, d), y (B, n), x_query (B, d), y_query (B,).

    Returns:
        (X, y, x_query, y_query), validated.
    """
    for attr in ("X", "y", "x_query", "y_query"):
        if not hasattr(prompts, attr):
            raise ValueError(f"{name} must have attributes X, y, x_query, y_query; missing {attr!r}")
    X, y = check_regression(prompts.X, prompts.y)
    B, _, d = X.shape
    xq = check_tensor(f"{name}.x_query", prompts.x_query, shape=(B, d))
    yq = check_tensor(f"{name}.y_query", prompts.y_query, shape=(B,))
    check_same(["X", "x_query", "y_query"], [X, xq, yq])
    return X, y, xq, yq


def prompt_weights(prompts: Any, name: str = "prompts") -> torch.Tensor | None:
    """The importance weights (B,) float64 of a prompt batch that has a ``weights`` attribute (e.g.
    :func:`reference_optimizers.tail_weighted`), validated; None for a plain batch."""
    w = getattr(prompts, "weights", None)
    if w is None:
        return None
    B = prompts.X.shape[0]
    if not isinstance(w, torch.Tensor) or w.shape != (B,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{name}.weights must be a finite non-negative tensor of shape ({B},)")
    return w.detach().to(torch.float64)
