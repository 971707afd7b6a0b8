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


#: group entries that are not hyper-parameters: the parameters, and what torch's LR schedulers add
_BOOKKEEPING = {"params", "initial_lr"}


def check_loaded_groups(
    opt: Optimizer,
    state_dict: Any,
    validate: Any,
    keep: tuple[str, ...] = (),
    later: dict[str, Any] | None = None,
) -> None:
    """Refuse, at load time, a ``state_dict`` that is not one of ``opt``'s kind (``ValueError`` naming it).

    torch's ``Optimizer.load_state_dict`` copies whatever hyper-parameters the saved groups hold over the
    current groups, so another optimizer's state_dict (torch's Adam into FAdam, FAdam's into RF-AdamW, …) loads
    silently and fails at the first step with a bare ``KeyError``, or worse, runs with hyper-parameters the
    optimizer never had. Each saved group must hold exactly the hyper-parameter names of ``opt``'s groups, pass
    ``validate`` (the optimizer's own per-group checks), and agree with the current group on the ``keep`` keys
    (what must not change on a reload, e.g. the manifold a group is constrained to). A saved group may lack the
    options in ``later`` (added after it was written; the optimizer fills in their old behaviour on load).
    """
    later = later or {}
    name = type(opt).__name__
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError(f"{name}.load_state_dict: not an optimizer state_dict (needs 'state' and 'param_groups')")
    saved_groups = state_dict["param_groups"]
    if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(opt.param_groups):
        raise ValueError(
            f"{name}.load_state_dict: the state_dict has {len(saved_groups) if isinstance(saved_groups, list) else '?'}"
            f" parameter groups, this optimizer {len(opt.param_groups)}"
        )
    for i, (saved, group) in enumerate(zip(saved_groups, opt.param_groups)):
        if not isinstance(saved, dict):
            raise ValueError(f"{name}.load_state_dict: parameter group {i} is not a dict")
        want, have = set(group) - _BOOKKEEPING, set(saved) - _BOOKKEEPING
        if not (want - have <= set(later) and have <= want):
            missing, unknown = sorted(want - have), sorted(have - want)
            raise ValueError(
                f"{name}.load_state_dict: parameter group {i} is not a {name} group (missing {missing}, unknown "
                f"{unknown}): a state_dict of another optimizer? Build that optimizer to load it"
            )
        for key in keep:
            if saved[key] != group[key]:
                raise ValueError(
                    f"{name}.load_state_dict: parameter group {i} has {key} = {saved[key]!r} but this optimizer's "
                    f"group has {group[key]!r}; a reload must not change it"
                )
        try:
            validate({**later, **saved, "params": group["params"]})
        except ValueError as e:
            raise ValueError(f"{name}.load_state_dict: parameter group {i}: {e}") from None


class DtypePreservingOptimizer(Optimizer):
    """``torch.optim.Optimizer`` whose ``load_state_dict`` keeps the saved dtype of floating state.

    torch's loader casts every floating state tensor (``step`` excepted) to its parameter's dtype, so the
    float32 moments kept for a bfloat16 parameter would silently come back as bfloat16 — and lose their
    precision for good. The cast cannot be switched off (torch calls its cast helper through the class
    name), so after the standard load this restores each floating state tensor from the saved one, moved
    to the parameter's device but with its saved dtype. Every loaded tensor is a copy, so an optimizer
    loaded from another live one's state_dict shares no state with it.
    """

    #: options added after the optimizer was first released, with the value a state_dict written before them
    #: means; filled into such a state_dict's groups on load
    _LATER_OPTIONS: dict[str, Any] = {}

    @staticmethod
    def _validate(group: dict[str, Any]) -> None:
        """Check one parameter group's hyper-parameters (raise ``ValueError`` naming the argument)."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self._LATER_OPTIONS.items():
                group.setdefault(key, value)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._validate(self.param_groups[-1])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of this optimizer; another optimizer's is refused (:func:`check_loaded_groups`)."""
        check_loaded_groups(self, state_dict, self._validate, later=self._LATER_OPTIONS)
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
                elif torch.is_tensor(self.state[p].get(key)) and self.state[p][key] is value:
                    # torch keeps the saved tensor itself (the step counter): updated in place, it would be
                    # shared with the optimizer the state_dict came from
                    self.state[p][key] = value.clone()
