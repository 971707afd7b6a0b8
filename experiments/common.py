"""What every study shares: the run context (and the checkpoint store it hands to training) and config.json."""

from __future__ import annotations

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
from icl.runio import write_json
from icl.seeding import Streams
from icl.training import RunStore, SeedRun, TrainConfig, fit


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
            :class:`~icl.training.TrainingInterrupted` (None: train to the end).
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

    def store(self, cfg: Config, checkpoint_every: int | None = None, file: Path | None = None) -> RunStore:
        """Where :func:`icl.training.fit` keeps this run's checkpoints (``checkpoints/``) and training logs
        (``train_logs/``), with the run's resume flag and ``stop_after``."""
        every = checkpoint_every if checkpoint_every is not None else getattr(cfg, "checkpoint_every", 1000)
        return RunStore(dir=self.out_dir / "checkpoints", experiment=self.name, config=cfg, resume=self.resume,
                        stop_after=self.stop_after, checkpoint_every=every, train_logs=self.out_dir / "train_logs",
                        log=self.print, file=file)  # fmt: skip


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


def make_distribution(prompt_cfg: Any, streams: Streams) -> PromptDistribution:
    """The run's prompt law, its rotation drawn from the ``rotation`` stream."""
    return PromptDistribution(prompt_cfg, generator=streams.generator("rotation"))


def train_model(
    ctx: RunContext,
    cfg: Config,
    model: nn.Module,
    dist: PromptDistribution,
    train_cfg: TrainConfig,
    streams: Streams,
    *,
    checkpoint_every: int,
) -> SeedRun:
    """Train one model on ``ctx.checkpoint_path`` (resuming from it when asked): :func:`icl.training.fit`
    with one seed, for the single-model experiments.

    Raises:
        TrainingDiverged: the checkpoint on disk is the last healthy one.
        TrainingInterrupted: stopped by a signal or by ``ctx.stop_after``, after checkpointing.
    """
    store = ctx.store(cfg, checkpoint_every=checkpoint_every, file=ctx.checkpoint_path)
    return fit([model], [dist], train_cfg, [streams], store=store, device=ctx.device, quiet=ctx.quiet).runs[0]


def environment_line() -> str:
    return f"python {platform.python_version()}, torch {torch.__version__}, {sys.platform}"
