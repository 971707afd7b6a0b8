"""Experiment trackers: training curves visible while a run goes on (TensorBoard, wandb), both opt-in.

A tracker receives plain dicts through four hooks, the protocol the training engine calls:

    tracker.on_start(config)        # the resolved config of the run (nested dict)
    tracker.on_step(metrics)        # {"step": t, "loss": ..., "lr": ..., "grad_norm": ...}
    tracker.on_eval(metrics)        # {"step": t, "loss": ... held-out, read-outs such as "steps_sigma": ...}
    tracker.on_end(summary)         # final numbers (may be empty); flushes and closes

``metrics`` may name the series with ``model`` (e.g. ``"lsa_L3"``) and ``seed``: every (model, seed) pair is
its own TensorBoard *run* (a sub-directory ``{model}-s{seed}`` of the log directory), so TensorBoard overlays
the curves of all models and seeds in one chart per quantity. Training values are logged under ``train/``,
held-out values and read-outs under ``eval/`` (``train/loss``, ``train/lr``, ``train/grad_norm``,
``eval/loss``, ``eval/steps_sigma``...). ``None`` values are skipped; anything else that is not a number (or a
one-element tensor) is a ``TypeError``, so a mistake is seen at once rather than as a missing curve.

TensorBoard uses torch's own ``torch.utils.tensorboard.SummaryWriter`` and needs the ``tensorboard`` package
(``pip install tensorboard`` or the ``track`` extra); wandb needs ``wandb`` (the ``wandb`` extra) and runs in
offline mode unless told otherwise (``wandb sync`` uploads later). Both are imported only when a tracker is
made, so the framework runs without them.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TRACKERS = ("none", "tensorboard", "wandb")
SERIES_KEYS = ("step", "model", "seed")


class TrackerUnavailable(ImportError):
    """The tracker's package is not installed (the message says how to install it)."""


class Tracker:
    """The tracker protocol; this base class does nothing (``track=none``)."""

    name = "none"

    def on_start(self, config: Mapping[str, Any]) -> None:
        """The run starts; ``config`` is its resolved config (a nested dict)."""

    def on_step(self, metrics: Mapping[str, Any]) -> None:
        """A training step's numbers (``step`` required; ``model``/``seed`` name the series)."""

    def on_eval(self, metrics: Mapping[str, Any]) -> None:
        """Held-out numbers and read-outs at a step (``step`` required; ``model``/``seed`` name the series)."""

    def on_end(self, summary: Mapping[str, Any] | None = None) -> None:
        """The run ended: log ``summary`` (numbers) and flush everything to disk."""


def series_name(metrics: Mapping[str, Any]) -> str:
    """The series a metrics dict belongs to: ``"{model}-s{seed}"``, ``"{model}"``, ``"s{seed}"`` or ``""``."""
    model, seed = metrics.get("model"), metrics.get("seed")
    parts = []
    if model is not None:
        parts.append(re.sub(r"[^A-Za-z0-9._+=-]", "_", str(model)))
    if seed is not None:
        parts.append(f"s{int(seed)}")
    return "-".join(parts)


def scalars(metrics: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """The step and the numeric values of a metrics dict (``None`` skipped).

    Raises:
        KeyError: no ``step``.
        TypeError: a value that is not a number.
    """
    if "step" not in metrics:
        raise KeyError(f"tracker metrics need a 'step', got keys {sorted(metrics)}")
    step = int(metrics["step"])
    out = {}
    for key, value in metrics.items():
        if key in SERIES_KEYS or value is None:
            continue
        if hasattr(value, "numel") and value.numel() == 1:  # a one-element tensor
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"tracker metric {key!r} must be a number, got {type(value).__name__} {value!r}")
        out[key] = float(value)
    return step, out


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as one level of dotted keys: {"train": {"lr": 1}} -> {"train.lr": 1}."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class TensorBoardTracker(Tracker):
    """Writes TensorBoard event files under ``log_dir``, one sub-directory (a TensorBoard run) per series.

    Args:
        log_dir: the folder ``tensorboard --logdir`` is pointed at (e.g. ``RUN_DIR/tensorboard``).
        flush_secs: how often the writers flush while a run goes on.

    Raises:
        TrackerUnavailable: tensorboard is not installed.
    """

    name = "tensorboard"

    def __init__(self, log_dir: str | Path, flush_secs: int = 10) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise TrackerUnavailable(
                f"track=tensorboard needs the tensorboard package ({e}); install it with "
                "`pip install tensorboard` (or `pip install icl-optimizers[track]`), or set track=none"
            ) from None
        self._writer_cls = SummaryWriter
        self.log_dir = Path(log_dir)
        self.flush_secs = flush_secs
        self._writers: dict[str, Any] = {}

    def writer(self, series: str = "") -> Any:
        """The SummaryWriter of one series (made on first use)."""
        if series not in self._writers:
            path = self.log_dir / series if series else self.log_dir
            self._writers[series] = self._writer_cls(log_dir=str(path), flush_secs=self.flush_secs)
        return self._writers[series]

    def on_start(self, config: Mapping[str, Any]) -> None:
        flat = flatten(config)
        table = "\n".join(["| key | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in flat.items()])
        self.writer().add_text("config", table, 0)

    def _log(self, group: str, metrics: Mapping[str, Any]) -> None:
        step, values = scalars(metrics)
        w = self.writer(series_name(metrics))
        for key, value in values.items():
            w.add_scalar(f"{group}/{key}", value, step)

    def on_step(self, metrics: Mapping[str, Any]) -> None:
        self._log("train", metrics)

    def on_eval(self, metrics: Mapping[str, Any]) -> None:
        self._log("eval", metrics)

    def on_end(self, summary: Mapping[str, Any] | None = None) -> None:
        if summary:
            values = {k: v for k, v in flatten(summary).items() if isinstance(v, numbers.Real)}
            w = self.writer()
            for key, value in values.items():
                w.add_scalar(f"summary/{key}", float(value), 0)
        for w in self._writers.values():
            w.flush()
            w.close()
        self._writers.clear()


class WandbTracker(Tracker):
    """Logs to Weights & Biases, offline by default (``wandb sync LOG_DIR/wandb/offline-run-*`` uploads later).

    One wandb run per training run; each series gets its own step axis (``{series}/step``, declared with
    ``wandb.define_metric``), because the models of a study are trained one after another and wandb's global
    step must not go backwards.

    Args:
        log_dir: where wandb writes its files.
        project: the wandb project.
        mode: ``"offline"`` (default), ``"online"`` or ``"disabled"``.
        name: the wandb run name (default: the log directory's parent name).

    Raises:
        TrackerUnavailable: wandb is not installed.
    """

    name = "wandb"

    def __init__(self, log_dir: str | Path, project: str = "icl-optimizers", mode: str = "offline",
                 name: str | None = None) -> None:  # fmt: skip
        try:
            import wandb
        except ImportError as e:
            raise TrackerUnavailable(
                f"track=wandb needs the wandb package ({e}); install it with `pip install wandb` "
                "(or `pip install icl-optimizers[wandb]`), or set track=none"
            ) from None
        self._wandb = wandb
        self.log_dir = Path(log_dir)
        self.project, self.mode = project, mode
        self.run_name = name or self.log_dir.resolve().parent.name
        self._run: Any = None
        self._series: set[str] = set()

    def on_start(self, config: Mapping[str, Any]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._run = self._wandb.init(project=self.project, dir=str(self.log_dir), mode=self.mode,
                                     name=self.run_name, config=dict(config))  # fmt: skip

    def _log(self, group: str, metrics: Mapping[str, Any]) -> None:
        if self._run is None:
            self.on_start({})
        step, values = scalars(metrics)
        series = series_name(metrics)
        prefix = f"{series}/" if series else ""
        if series not in self._series:
            self._run.define_metric(f"{prefix}step")
            self._run.define_metric(f"{prefix}*", step_metric=f"{prefix}step")
            self._series.add(series)
        self._run.log({f"{prefix}step": step, **{f"{prefix}{group}/{k}": v for k, v in values.items()}})

    def on_step(self, metrics: Mapping[str, Any]) -> None:
        self._log("train", metrics)

    def on_eval(self, metrics: Mapping[str, Any]) -> None:
        self._log("eval", metrics)

    def on_end(self, summary: Mapping[str, Any] | None = None) -> None:
        if self._run is None:
            return
        for key, value in flatten(summary or {}).items():
            if isinstance(value, (numbers.Real, str)) and not (isinstance(value, float) and math.isnan(value)):
                self._run.summary[key] = value
        self._run.finish()
        self._run = None


def make_tracker(name: str | None, log_dir: str | Path, **kwargs: Any) -> Tracker:
    """The tracker called ``name`` (``none``, ``tensorboard`` or ``wandb``) writing under ``log_dir``.

    Raises:
        ValueError: an unknown name.
        TrackerUnavailable: its package is not installed.
    """
    name = (name or "none").strip().lower()
    if name == "none":
        return Tracker()
    if name == "tensorboard":
        return TensorBoardTracker(log_dir, **kwargs)
    if name == "wandb":
        return WandbTracker(log_dir, **kwargs)
    raise ValueError(f"track = {name!r} is not one of: {', '.join(TRACKERS)}")
