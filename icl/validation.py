"""Input validation shared by models, reference optimizers, probes and configs.

Every public entry point checks its tensors here *before* any compute, so that a wrong shape, a dtype
mismatch or a NaN in the data is reported as a ``ValueError`` that names the tensor and what was
expected, rather than as a broadcasting error (or a silent NaN) deep inside a contraction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(
    name: str,
    t: object,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    finite: bool = True,
    floating: bool = True,
) -> torch.Tensor:
    """Check one tensor and return it unchanged.

    Args:
        name: the name used in the error message (e.g. ``"X"``).
        t: the object to check.
        ndim: required number of dimensions.
        shape: required shape; ``None`` entries are free.
        finite: reject NaN and ±inf.
        floating: require a floating dtype.

    Raises:
        ValueError: naming ``name``, the expected shape and what was received.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is None and shape is not None:
        ndim = len(shape)
    if ndim is not None and t.ndim != ndim:
        want = _fmt_shape(shape) if shape is not None else f"{ndim} dimensions"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if shape is not None:
        for i, (got, want) in enumerate(zip(t.shape, shape)):
            if want is not None and got != want:
                raise ValueError(f"{name} must have shape {_fmt_shape(shape)}, got {tuple(t.shape)} (dimension {i})")
    if floating and t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    if finite:
        check_finite(name, t)
    return t


def check_finite(name: str, t: torch.Tensor) -> None:
    """Reject NaN and ±inf at the cost of one reduction.

    A finite sum proves that every entry is finite (a NaN or an inf makes the sum NaN or inf), so the
    elementwise ``isfinite`` pass, which allocates a bool tensor as large as ``t``, only runs when the sum is
    not finite (a NaN/inf, or an overflow of the sum itself).
    """
    if t.numel() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_same(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    """Require equal dtype and device across tensors, naming the first that differs."""
    ref = tensors[0]
    for name, t in zip(names[1:], tensors[1:]):
        if t.dtype != ref.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but {names[0]} has {ref.dtype}")
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {names[0]} is on {ref.device}")


def check_regression(X: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a batch of regression problems: X (B, n, d) and y (B, n), same dtype/device, finite."""
    X = check_tensor("X", X, shape=(None, None, None))
    B, n, d = X.shape
    if B < 1 or n < 1 or d < 1:
        raise ValueError(f"X must have shape (B, n, d) with B, n, d >= 1, got {tuple(X.shape)}")
    y = check_tensor("y", y, shape=(B, n))
    check_same(["X", "y"], [X, y])
    return X, y


def check_steps(steps: object) -> int:
    """Validate a number of iterations (an int >= 0)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    return steps


def check_generator(name: str, g: object) -> torch.Generator:
    """Require an explicit ``torch.Generator`` (every random draw comes from one; docs/conventions.md)."""
    if not isinstance(g, torch.Generator):
        raise ValueError(f"{name} must be a torch.Generator (a named stream from icl.seeding), got {type(g).__name__}")
    return g


def check_float_dtype(name: str, dtype: object) -> torch.dtype:
    """Require a floating torch dtype."""
    if not isinstance(dtype, torch.dtype) or dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating torch dtype ({', '.join(map(str, FLOAT_DTYPES))}), got {dtype!r}")
    return dtype


def _fmt_shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
