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
from icl.train import Trainer
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
    """

    name: str
    out_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    quiet: bool = False
    resume: bool = False
    argv: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

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


def restore_trainer(ctx: RunContext, cfg: Config, trainer: Trainer, path: Path | None = None) -> None:
    """Load the checkpoint into ``trainer``, refusing one written for another config."""
    ckpt = load_checkpoint(path or ctx.checkpoint_path, map_location=ctx.device)
    if json.loads(ckpt["config"]) != cfg.to_dict():
        raise CheckpointError("the checkpoint was written with a different config; resume with the same settings")
    trainer.load_state_dict({**ckpt["trainer"], "model": ckpt["model"]})


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
    """
    path = checkpoint_path or ctx.checkpoint_path
    trainer = Trainer(model, dist, train_cfg, streams, optimizer=optimizer, device=ctx.device, quiet=ctx.quiet)
    if ctx.resume and path.exists():
        restore_trainer(ctx, cfg, trainer, path)
        if trainer.step < train_cfg.steps:
            ctx.print(f"resumed {path.name} at step {trainer.step}")
    trainer.run(on_checkpoint=lambda t: save_trainer(ctx, cfg, t, path), checkpoint_every=checkpoint_every)
    if trainer.cfg.steps == 0 or not path.exists():
        save_trainer(ctx, cfg, trainer, path)
    return trainer


def environment_line() -> str:
    return f"python {platform.python_version()}, torch {torch.__version__}, {sys.platform}"
