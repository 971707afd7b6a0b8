"""What every study shares: the run context, config.json, checkpoints and the trained-model helper."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from icl.config import Config
from icl.prompts import PromptDistribution
from icl.runio import CheckpointError, load_checkpoint, save_checkpoint, write_json
from icl.seeding import Streams
from icl.train import Trainer, TrainingInterrupted
from learned_optimizers.registry import model_name

CHECKPOINT_FORMAT = "icl-optimizers/1"


@dataclass
class RunContext:
    """Where and how a study runs.

    Attributes:
        name: the experiment's name.
        out_dir: the run directory (created, empty or being resumed).
        device: the torch device.
        quiet: no progress bars.
        resume: continue from ``out_dir/checkpoint.pt``.
        argv: the command line, for the record.
        stop_after: simulate an interruption: :func:`train_model` checkpoints at this step and raises
            :class:`~icl.train.TrainingInterrupted` (None: train to the end).
    """

    name: str
    out_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    quiet: bool = False
    resume: bool = False
    argv: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    stop_after: int | None = None

    def print(self, *args: Any) -> None:
        print(*args, flush=True)

    @property
    def figures(self) -> Path:
        return self.out_dir / "figures"

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"


def write_config(ctx: RunContext, cfg: Config, streams: Streams) -> Path:
    """Write ``config.json``: the fully resolved config, the derived stream seeds and the environment."""
    return write_json(
        ctx.out_dir / "config.json",
        {
            "experiment": ctx.name,
            "config": cfg.to_dict(),
            "seed": streams.seed,
            "stream_seeds": streams.seeds(),
            "device": str(ctx.device),
            "argv": ctx.argv,
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
        },
    )


def checkpoint_payload(ctx: RunContext, cfg: Config, trainer: Trainer, **extra: Any) -> dict[str, Any]:
    """A self-contained checkpoint: the config, how to rebuild the model, and the trainer's exact state."""
    state = trainer.state_dict()
    model = trainer.model
    return {
        "format": CHECKPOINT_FORMAT,
        "experiment": ctx.name,
        "config": json.dumps(cfg.to_dict()),
        "model_name": model_name(model),
        "model_d": int(model.d),
        "model_config": model.cfg.to_dict(),
        "model": state.pop("model"),
        "trainer": state,
        **extra,
    }


def save_trainer(ctx: RunContext, cfg: Config, trainer: Trainer, path: Path | None = None) -> Path:
    """Atomically write the checkpoint of ``trainer``."""
    return save_checkpoint(path or ctx.checkpoint_path, checkpoint_payload(ctx, cfg, trainer))


CHECKPOINT_KEYS = ("format", "config", "model", "trainer")


def restore_trainer(ctx: RunContext, cfg: Config, trainer: Trainer, path: Path | None = None) -> None:
    """Load the checkpoint into ``trainer``, refusing one that is not ours or was written for another config.

    Raises:
        CheckpointError: missing, truncated, corrupt, of another format or config, or not matching the model.
    """
    path = path or ctx.checkpoint_path
    ckpt = load_checkpoint(path, map_location=ctx.device, required=CHECKPOINT_KEYS)
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {ckpt['format']!r}; this version reads {CHECKPOINT_FORMAT!r}"
        )
    try:
        saved = json.loads(ckpt["config"])
        saved = type(cfg).from_dict(saved).to_dict()  # defaults of fields added since are filled in
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} holds an unreadable config ({e})") from None
    current = cfg.to_dict()
    if saved != current:
        diff = _diff_keys(saved, current)
        raise CheckpointError(
            f"the checkpoint {path} was written with a different config (differs in: {', '.join(diff)}); "
            "resume with the same settings"
        )
    if not isinstance(ckpt["trainer"], dict):
        raise CheckpointError(f"checkpoint {path}: 'trainer' must be a dict, got {type(ckpt['trainer']).__name__}")
    try:
        trainer.load_state_dict({**ckpt["trainer"], "model": ckpt["model"]})
    except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this run ({type(e).__name__}: {e})") from None


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two nested dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out.extend(_diff_keys(a.get(k), b.get(k), f"{prefix}{k}."))
        return out
    return [] if a == b else [prefix.rstrip(".")]


def make_distribution(prompt_cfg: Any, streams: Streams) -> PromptDistribution:
    """The run's prompt law, its rotation drawn from the ``rotation`` stream."""
    return PromptDistribution(prompt_cfg, generator=streams.generator("rotation"))


def train_model(
    ctx: RunContext,
    cfg: Config,
    model: nn.Module,
    dist: PromptDistribution,
    train_cfg: Any,
    streams: Streams,
    *,
    checkpoint_every: int,
    checkpoint_path: Path | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Trainer:
    """Train ``model`` (resuming from its checkpoint when asked), checkpointing on the way.

    Studies that train several models give each its own ``checkpoint_path``; a model whose checkpoint is
    complete is loaded, not retrained, on ``--resume``.

    SIGINT and SIGTERM stop the run cleanly: the state at the current step is checkpointed and
    :class:`~icl.train.TrainingInterrupted` is raised (the CLI turns it into a message and exit status
    128 + signal number). ``ctx.stop_after`` does the same at a given step, deterministically.

    Raises:
        TrainingDiverged: see :meth:`Trainer.run`; the checkpoint on disk is the last finite one.
        TrainingInterrupted: stopped by a signal or by ``ctx.stop_after``, after checkpointing.
    """
    path = checkpoint_path or ctx.checkpoint_path
    trainer = Trainer(model, dist, train_cfg, streams, optimizer=optimizer, device=ctx.device, quiet=ctx.quiet)
    if ctx.resume and path.exists():
        restore_trainer(ctx, cfg, trainer, path)
        if trainer.step < train_cfg.steps:
            ctx.print(f"resumed {path.name} at step {trainer.step}")
    save = lambda t: save_trainer(ctx, cfg, t, path)
    trainer.run(until=ctx.stop_after, on_checkpoint=save, checkpoint_every=checkpoint_every)
    if ctx.stop_after is not None and trainer.step < trainer.cfg.steps:
        save(trainer)
        raise TrainingInterrupted(
            f"stopped at step {trainer.step} as asked by stop_after = {ctx.stop_after}", step=trainer.step
        )
    if trainer.cfg.steps == 0 or not path.exists():
        save(trainer)
    return trainer


def environment_line() -> str:
    return f"python {platform.python_version()}, torch {torch.__version__}, {sys.platform}"
