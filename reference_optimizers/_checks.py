"""Validation helpers specific to the reference optimizers (the shared ones live in icl.validation).

Each helper raises a ``ValueError`` that names the argument, before any compute.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from icl.validation import check_same, check_tensor


def check_finite(name: str, t: torch.Tensor) -> None:
    """Reject NaN and ±inf with the message of ``icl.validation.check_tensor``, at the cost of one reduction.

    A finite sum proves that every entry is finite (a NaN or an inf makes the sum NaN or inf), so the
    elementwise ``isfinite`` pass, which allocates a bool tensor as large as ``t`` and costs more than a whole
    CG run on 10⁵ prompts, is only needed when the sum is not finite (a NaN/inf, or an overflow).
    """
    if t.numel() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_regression(X: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``icl.validation.check_regression`` (same checks and messages) with the fast finiteness test above."""
    X = check_tensor("X", X, shape=(None, None, None), finite=False)
    B, n, d = X.shape
    if B < 1 or n < 1 or d < 1:
        raise ValueError(f"X must have shape (B, n, d) with B, n, d >= 1, got {tuple(X.shape)}")
    y = check_tensor("y", y, shape=(B, n), finite=False)
    check_same(["X", "y"], [X, y])
    check_finite("X", X)
    check_finite("y", y)
    return X, y


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
