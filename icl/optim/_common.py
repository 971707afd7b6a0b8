"""Plumbing shared by the optimizers of :mod:`icl.optim`: argument checks and dtype-preserving reloads."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim import Optimizer

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def state_dtype(p: torch.Tensor) -> torch.dtype:
    """The dtype used for precision-sensitive state of parameter ``p``: float32 for 16-bit parameters."""
    return torch.float32 if p.dtype in _LOW_PRECISION else p.dtype


def check_number(
    name: str,
    value: Any,
    *,
    low: float = 0.0,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = True,
) -> float:
    """Require a finite real number in an interval and return it; the ``ValueError`` names the argument.

    ``low`` is inclusive unless ``low_open``; ``high`` is exclusive unless ``high_open=False``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {value!r}")
    return float(value)


def check_betas(name: str, betas: Any) -> tuple[float, float]:
    """Require a pair of numbers in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2), got {betas!r}")
    return (
        check_number(f"{name}[0]", betas[0], low=0.0, high=1.0),
        check_number(f"{name}[1]", betas[1], low=0.0, high=1.0),
    )


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class DtypePreservingOptimizer(Optimizer):
    """``torch.optim.Optimizer`` whose ``load_state_dict`` keeps the saved dtype of floating state.

    torch's loader casts every floating state tensor (``step`` excepted) to its parameter's dtype, so the
    float32 moments kept for a bfloat16 parameter would silently come back as bfloat16 — and lose their
    precision for good. The cast cannot be switched off (torch calls its cast helper through the class
    name), so after the standard load this restores each floating state tensor from the saved one, moved
    to the parameter's device but with its saved dtype.
    """

    @staticmethod
    def _validate(group: dict[str, Any]) -> None:
        """Check one parameter group's hyper-parameters (raise ``ValueError`` naming the argument)."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._validate(self.param_groups[-1])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_state = state_dict["state"]
        saved_groups = state_dict["param_groups"]
        super().load_state_dict(state_dict)
        id_to_param = {
            pid: p
            for saved, group in zip(saved_groups, self.param_groups)
            for pid, p in zip(saved["params"], group["params"])
        }
        for pid, saved in saved_state.items():
            p = id_to_param.get(pid)
            if p is None:
                continue
            for key, value in saved.items():
                if key != "step" and torch.is_tensor(value) and value.is_floating_point():
                    self.state[p][key] = value.to(device=p.device, copy=True)
