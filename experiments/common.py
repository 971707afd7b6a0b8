"""What every study shares: the run context (and the checkpoint store it hands to training) and config.json."""

from __future__ import annotations

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
from icl.progress import Progress
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
        tracker: the run's experiment tracker (:func:`icl.tracking.make_tracker` of the config's ``track``),
            handed to training through :meth:`store`; None: no tracking.
        progress: the per-model lines (:meth:`expect_models`, :meth:`model_done`).
    """

    name: str
    out_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    quiet: bool = False
    resume: bool = False
    argv: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    stop_after: int | None = None
    tracker: Any = None
    progress: Progress | None = None

    def print(self, *args: Any) -> None:
        print(*args, flush=True)

    def expect_models(self, count: int) -> None:
        """Tell how many models the run trains, for the per-model lines' ``k/N`` and the run's ETA."""
        self.progress = Progress(count, "model", quiet=self.quiet, printer=self.print)

    def model_done(self, tag: str, seconds: float) -> None:
        """A model is trained: its line, ``model k/N tag done in 41s; run ETA 3m25s (at 12:41:07)``."""
        if self.progress is None:
            self.progress = Progress(None, "model", quiet=self.quiet, printer=self.print)
        self.progress.finished(tag, seconds)

    @property
    def figures(self) -> Path:
        return self.out_dir / "figures"

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def store(self, cfg: Config, checkpoint_every: int | None = None, file: Path | None = None) -> RunStore:
        """Where :func:`icl.training.fit` keeps this run's checkpoints (``checkpoints/``), training logs
        (``train_logs/``) and trained models' files (``models/``), with the run's resume flag and
        ``stop_after``."""
        every = checkpoint_every if checkpoint_every is not None else getattr(cfg, "checkpoint_every", 1000)
        return RunStore(dir=self.out_dir / "checkpoints", experiment=self.name, config=cfg, resume=self.resume,
                        stop_after=self.stop_after, checkpoint_every=every, train_logs=self.out_dir / "train_logs",
                        models=self.out_dir / "models", log=self.print, file=file, tracker=self.tracker,
                        on_trained=self.model_done)  # fmt: skip


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
