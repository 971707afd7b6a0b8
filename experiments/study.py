"""The frame every multi-seed study uses: profiles, seeds, per-model checkpoints, rows and evaluation.

A study config derives from :class:`StudyConfig` (fields ``profile`` and ``seeds``) and registers its profiles
with :func:`experiments.registry.register`. Each (model, seed) pair is trained with :func:`train_one`, which
keeps a checkpoint per pair under ``checkpoints/`` so that ``--resume`` continues an interrupted study and
skips what is finished. Each seed has its own :class:`~icl.seeding.Streams`, so seeds differ in the rotation
U, the initialisation and the data, and test prompts come from the ``test`` stream that training never reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from experiments.common import RunContext, train_model
from icl.config import Config, spec
from icl.metrics import LossEstimate, test_loss
from icl.prompts import PromptBatch, PromptDistribution
from icl.runio import write_results
from icl.seeding import Streams
from icl.train import Trainer

PROFILES = ("quick", "standard", "paper")


@dataclass(frozen=True)
class StudyConfig(Config):
    """Fields every study has.

    Attributes:
        profile: ``quick`` (minutes; run by the tests), ``standard`` (under 30 minutes on 2 cores) or
            ``paper`` (the paper's budget).
        seeds: the root seeds; each gives its own rotation, initialisation and data streams.
        checkpoint_every: steps between checkpoints of each trained model.
    """

    profile: str = spec("standard", choices=PROFILES)
    seeds: tuple[int, ...] = spec((0, 1, 2), ge=0)
    checkpoint_every: int = spec(1000, ge=1)

    def check(self) -> None:
        super().check()
        if not self.seeds:
            from icl.config import ConfigError

            raise ConfigError("seeds must hold at least one seed")


class Rows:
    """Collects the tidy long-form rows (experiment, method, depth, seed, metric, value) of a study."""

    def __init__(self, experiment: str) -> None:
        self.experiment = experiment
        self.rows: list[dict[str, Any]] = []

    def add(self, method: str, depth: int, seed: int, metric: str, value: float) -> None:
        self.rows.append(
            dict(experiment=self.experiment, method=method, depth=int(depth), seed=int(seed), metric=metric,
                 value=float(value))
        )  # fmt: skip

    def add_loss(self, method: str, depth: int, seed: int, est: LossEstimate, prefix: str = "test_loss") -> None:
        """A loss estimate as two rows: ``test_loss`` and ``test_loss_stderr``."""
        self.add(method, depth, seed, prefix, est.mean)
        self.add(method, depth, seed, f"{prefix}_stderr", est.stderr)

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        self.rows.extend(rows)

    def write(self, ctx: RunContext) -> None:
        """Write ``results.csv`` atomically (called after every seed, so partial studies keep their rows)."""
        write_results(ctx.out_dir / "results.csv", self.rows)


def train_one(
    ctx: RunContext,
    cfg: Config,
    tag: str,
    seed: int,
    model: nn.Module,
    dist: PromptDistribution,
    train_cfg: Any,
    streams: Streams,
    optimizer: torch.optim.Optimizer | None = None,
) -> Trainer:
    """Train one model of one seed with its own checkpoint ``checkpoints/{tag}-s{seed}.pt``."""
    path = ctx.out_dir / "checkpoints" / f"{tag}-s{seed}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    trainer = train_model(
        ctx, cfg, model, dist, train_cfg, streams,
        checkpoint_every=getattr(cfg, "checkpoint_every", 1000), checkpoint_path=path, optimizer=optimizer,
    )  # fmt: skip
    trainer.wall_time = time.time() - t0  # type: ignore[attr-defined]
    return trainer


def held_out_prompts(dist: PromptDistribution, streams: Streams, count: int, dtype: torch.dtype) -> PromptBatch:
    """``count`` held-out test prompts from the seed's ``test`` stream (never used in training)."""
    old = dist.dtype
    dist.dtype = dtype
    try:
        return dist.sample(count, streams.generator("test", "cpu"))
    finally:
        dist.dtype = old


def evaluate_model(model: nn.Module, dist: PromptDistribution, streams: Streams, count: int) -> LossEstimate:
    """The model's query MSE on ``count`` prompts of the ``test`` stream."""
    device = next(model.parameters()).device
    return test_loss(model, dist, count, streams.generator("test", device))


def query_losses(pred: torch.Tensor, batch: PromptBatch) -> LossEstimate:
    """Mean and standard error of (ŷ − y_q)² for predictions (B,) on ``batch``."""
    err = (pred.detach().double().cpu() - batch.y_query.double().cpu()).square()
    n = err.numel()
    return LossEstimate(mean=float(err.mean()), stderr=float(err.std() / n**0.5) if n > 1 else 0.0, count=n)
