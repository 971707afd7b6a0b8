"""Checks of a resolved study config that need more than one field, run before the run directory is touched.

A config that passes its own validation (types, ranges, cross-field rules) can still describe a run that cannot
finish: a budget no machine will get through, magnitudes that overflow float32 prompts, sizes whose tensors do
not fit in memory, or a training loss the model cannot compute. :func:`preflight` finds those from the field
names alone (``steps``, ``*_prompts``, ``batch_size``, ``layers``, ``depths``, ``eigenvalues``, ``sigma*``, a
``train``/``X_train`` section next to its ``model``/``X``), so every study is covered without code of its own,
and raises :class:`~icl.config.ConfigError` naming the field before ``config.json`` is written. It imports no
torch (``--show-config`` does without), except to ask a CUDA device its memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from icl.config import Config, ConfigError
from icl.training.config import TrainConfig
from learned_optimizers.configs import GPTConfig

if TYPE_CHECKING:
    import torch

#: the model configs whose models predict at every prefix (``prefix_predictions``, what ``loss = "prefix"``
#: needs), named here so that the check imports no model (tests/test_reliability_preflight.py checks it against
#: :data:`learned_optimizers.registry.MODELS`)
PREFIX_MODEL_CONFIGS: tuple[type[Config], ...] = (GPTConfig,)
#: the largest budgets accepted (far beyond every profile; a larger one is a typo, not a plan)
MAX_STEPS = 10**7
MAX_PROMPTS = 10**7
MAX_DEPTH = 256
MAX_DIM = 100_000
#: prompts are drawn in float32 by default: x = U·sqrt(λ)·g and y = ⟨w*, x⟩ + σ·ε, and a model's prediction is
#: of order λ²·|y|, so λ and σ are bounded to keep every square far from float32's 3.4e38
EIGENVALUE_RANGE = (1e-8, 1e8)
MAX_SIGMA = 1e4


def _leaves(cfg: Config, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name in type(cfg).__dataclass_fields__:
        v = getattr(cfg, name)
        if isinstance(v, Config):
            yield from _leaves(v, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", v


def _sections(cfg: Config) -> Iterator[Config]:
    yield cfg
    for name in type(cfg).__dataclass_fields__:
        v = getattr(cfg, name)
        if isinstance(v, Config):
            yield from _sections(v)


def _numbers(v: Any) -> list[float]:
    if isinstance(v, bool) or v is None:
        return []
    if isinstance(v, (int, float)):
        return [v]
    if isinstance(v, tuple):
        return [x for x in v if isinstance(x, (int, float)) and not isinstance(x, bool)]
    return []


def check_budgets(cfg: Config) -> None:
    """Upper bounds on step counts, prompt counts, depths and dimensions; magnitude bounds on λ and σ."""
    for path, v in _leaves(cfg):
        name = path.rsplit(".", 1)[-1]
        xs = _numbers(v)
        if not xs:
            continue
        limit, what = None, ""
        if name.endswith("steps"):
            limit, what = MAX_STEPS, "steps"
        elif name.endswith("prompts") or name in ("batch_size", "eval_batch"):
            limit, what = MAX_PROMPTS, "prompts"
        elif name in ("layers", "depths", "heads"):
            limit, what = MAX_DEPTH, "layers"
        elif name in ("d", "n", "width", "max_points", "key_size"):
            limit, what = MAX_DIM, "dimensions"
        elif name.startswith("sigma") or name == "uniform_a":
            limit, what = MAX_SIGMA, "a noise or input scale"
        if limit is not None and max(xs) > limit:
            raise ConfigError(f"{path} = {_show(v)} is too large: at most {limit:g} {what} (a typo?)")
        if name == "eigenvalues":
            lo, hi = EIGENVALUE_RANGE
            bad = [x for x in xs if not lo <= x <= hi]
            if bad:
                raise ConfigError(
                    f"{path} has {bad[0]!r}: eigenvalues must lie in [{lo:g}, {hi:g}] (float32 prompts overflow or "
                    "underflow beyond)"
                )


def _show(v: Any) -> str:
    return ",".join(str(x) for x in v) if isinstance(v, tuple) else repr(v)


def check_losses(cfg: Config) -> None:
    """A ``loss = "prefix"`` training section needs a model that predicts at every prefix (the GPT)."""
    for name in type(cfg).__dataclass_fields__:
        train = getattr(cfg, name)
        if not isinstance(train, TrainConfig) or train.loss != "prefix":
            continue
        model_field = name[: -len("_train")] if name.endswith("_train") else "model"
        model_cfg = getattr(cfg, model_field, None)
        if not isinstance(model_cfg, PREFIX_MODEL_CONFIGS):
            what = f"{model_field} is a {type(model_cfg).__name__}" if isinstance(model_cfg, Config) else "its models"
            raise ConfigError(
                f"{name}.loss = 'prefix' needs a model that predicts at every prefix (the GPT), but {what} "
                "predicts only at the query; use loss = 'query'"
            )


def memory_estimate(cfg: Config) -> int:
    """A rough estimate in bytes of the largest working set of a run, in float64: the largest of

    * a training batch through the deepest, widest model, activations kept for the backward pass:
      batch_size · (layers + 2) · [(n+1)·max(d+1, mlp_ratio·width) + heads·(n+1)²] · 2;
    * an evaluation chunk (at most 25,000 prompts, no activations kept): 3 layers' worth of the same;
    * a held-out prompt set drawn whole: prompts · (n+1) · (d+1) · 2.
    """
    vals: dict[str, int] = {}
    for path, v in _leaves(cfg):
        name = path.rsplit(".", 1)[-1]
        key = "prompts" if name.endswith("prompts") or name == "eval_batch" else name
        for x in _numbers(v):
            if isinstance(x, int) or key in ("d", "n"):
                vals[key] = max(vals.get(key, 0), int(x))
    gpts = [s for s in _sections(cfg) if isinstance(s, GPTConfig)]  # the only softmax (n+1)² attention
    d, n = vals.get("d", 1), max([vals.get("n", 1), *(g.max_points for g in gpts)])
    width = max([d + 1, *(g.mlp_ratio * g.width for g in gpts)])
    layers = max(vals.get("layers", 1), vals.get("depths", 1))
    per_prompt_layer = (n + 1) * width + max([0, *(g.heads for g in gpts)]) * (n + 1) ** 2
    prompts = max(vals.get("prompts", 1), vals.get("batch_size", 1))
    train = vals.get("batch_size", 1) * (layers + 2) * per_prompt_layer * 2
    evaluation = min(prompts, 25_000) * 3 * per_prompt_layer
    data = prompts * (n + 1) * (d + 1) * 2
    return 8 * max(train, evaluation, data)


def available_memory(device: torch.device | str) -> int | None:
    """The device's total memory in bytes (None when unknown)."""
    if _device_type(device) == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(torch.device(device).index or 0).total_memory)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _device_type(device: torch.device | str) -> str:
    """``cpu``, ``cuda`` or ``mps`` of a torch device or its name (``cuda:1``)."""
    return str(device).partition(":")[0]


def check_memory(cfg: Config, device: torch.device | str) -> None:
    need, have, kind = memory_estimate(cfg), available_memory(device), _device_type(device)
    if have is not None and need > have:
        raise ConfigError(
            f"this config needs about {need / 2**30:,.1f} GiB (largest batch × prompt length × model width × "
            f"depth, see experiments/preflight.py), more than the {have / 2**30:,.1f} GiB of {kind} memory "
            "here; lower the batch size, prompt counts, n or the model size"
        )


def preflight(cfg: Config, device: torch.device | str = "cpu") -> None:
    """Every check above; raises :class:`ConfigError` naming the field."""
    check_budgets(cfg)
    check_losses(cfg)
    check_memory(cfg, device)
