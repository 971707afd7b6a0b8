"""What every study shares: the run context, config.json, checkpoints and the trained-model helper."""

from __future__ import annotations

import json
import platform
import subprocess
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
from icl.vectorised import SeedBatchTrainer
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
            "git": git_state(),
        },
    )


def git_state(path: str | Path | None = None) -> dict[str, Any]:
    """The git commit of the code at ``path`` (default: this package's checkout) and whether tracked files
    differ from it (``dirty``; untracked files do not count). Both None outside a git checkout."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _payload(ctx: RunContext, cfg: Config, model: nn.Module, weights: Any, state: dict, **extra: Any) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "experiment": ctx.name,
        "config": json.dumps(cfg.to_dict()),
        "model_name": model_name(model),
        "model_d": int(model.d),
        "model_config": model.cfg.to_dict(),
        "model": weights,
        "trainer": state,
        **extra,
    }


def checkpoint_payload(ctx: RunContext, cfg: Config, trainer: Trainer, **extra: Any) -> dict[str, Any]:
    """A self-contained checkpoint: the config, how to rebuild the model, and the trainer's exact state."""
    state = trainer.state_dict()
    return _payload(ctx, cfg, trainer.model, state.pop("model"), state, **extra)


def save_trainer(ctx: RunContext, cfg: Config, trainer: Trainer, path: Path | None = None) -> Path:
    """Atomically write the checkpoint of ``trainer``."""
    return save_checkpoint(path or ctx.checkpoint_path, checkpoint_payload(ctx, cfg, trainer))


CHECKPOINT_KEYS = ("format", "config", "model", "trainer")

#: config fields (by their last name) that choose how a run is computed, not what: a checkpoint written with
#: another value of them resumes (the numbers then differ from an uninterrupted run only by float rounding)
RESUME_INDIFFERENT = ("vectorise_seeds", "compile")


def load_run_checkpoint(ctx: RunContext, cfg: Config, path: Path) -> dict[str, Any]:
    """Load a checkpoint of this run, refusing one that is not ours or was written for another config.

    Raises:
        CheckpointError: missing, truncated, corrupt, of another format or of another config.
    """
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
    diff = [k for k in _diff_keys(saved, cfg.to_dict()) if k.rsplit(".", 1)[-1] not in RESUME_INDIFFERENT]
    if diff:
        raise CheckpointError(
            f"the checkpoint {path} was written with a different config (differs in: {', '.join(diff)}); "
            "resume with the same settings"
        )
    if not isinstance(ckpt["trainer"], dict):
        raise CheckpointError(f"checkpoint {path}: 'trainer' must be a dict, got {type(ckpt['trainer']).__name__}")
    return ckpt


def restore_trainer(ctx: RunContext, cfg: Config, trainer: Trainer, path: Path | None = None) -> dict[str, Any]:
    """Load the checkpoint into ``trainer`` (see :func:`load_run_checkpoint`); returns the checkpoint dict,
    whose extra entries (e.g. a study's read-outs) travel with it.

    Raises:
        CheckpointError: missing, truncated, corrupt, of another format or config, or not matching the model.
    """
    path = path or ctx.checkpoint_path
    return _restore(ctx, cfg, path, lambda ckpt: trainer.load_state_dict({**ckpt["trainer"], "model": ckpt["model"]}))


def _restore(ctx: RunContext, cfg: Config, path: Path, load: Any) -> dict[str, Any]:
    """Read the checkpoint at ``path`` and hand it to ``load``; a state that does not fit is a CheckpointError."""
    ckpt = load_run_checkpoint(ctx, cfg, path)
    try:
        load(ckpt)
    except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this run ({type(e).__name__}: {e})") from None
    return ckpt


def seed_batch_payload(ctx: RunContext, cfg: Config, batch: SeedBatchTrainer, **extra: Any) -> dict[str, Any]:
    """The checkpoint of a seed batch: as :func:`checkpoint_payload`, with ``model`` the stacked parameters
    (name -> (S, ...)) and ``seeds`` the batch's seeds."""
    state = batch.state_dict()
    seeds = list(state["seeds"])
    return _payload(ctx, cfg, batch.skeleton, state.pop("params"), state, seeds=seeds, **extra)


def restore_seed_batch(ctx: RunContext, cfg: Config, batch: SeedBatchTrainer, path: Path) -> dict[str, Any]:
    """Load a :func:`seed_batch_payload` checkpoint into ``batch``; returns the checkpoint dict.

    Raises:
        CheckpointError: as :func:`restore_trainer`, or the checkpoint is of other seeds.
    """
    return _restore(ctx, cfg, path, lambda ckpt: batch.load_state_dict({**ckpt["trainer"], "params": ckpt["model"]}))


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
