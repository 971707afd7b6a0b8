"""The frame every multi-seed study uses: profiles, seeds, per-model checkpoints, rows and evaluation.

A study config derives from :class:`StudyConfig` (fields ``profile`` and ``seeds``); its definition module
declares ``STUDY = Study(config, run, PROFILES)`` (:mod:`experiments.registry`). A model is trained for all the
seeds by :func:`train_all_seeds` (:func:`icl.training.fit` with the run's checkpoint store: one checkpoint per
model under ``checkpoints/``, so that ``--resume`` continues an interrupted study and skips what is finished).
Each seed has its own :class:`~icl.seeding.Streams`, so seeds differ in the rotation U, the initialisation and
the data, and test prompts come from the ``test`` stream that training never reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from experiments.common import RunContext
from experiments.configs.base import PROFILES, StudyConfig  # noqa: F401  (the studies import them from here)
from experiments.results import Rows  # noqa: F401  (the studies import it from here)
from icl.config import Config
from icl.metrics import LossEstimate, test_loss
from icl.prompts import PromptBatch, PromptDistribution
from icl.seeding import Streams
from icl.training import Callback, Fitted, ModelSpec, OptimizerSpec, SeedRun, TrainConfig, fit


def train_one(
    ctx: RunContext,
    cfg: Config,
    tag: str,
    seed: int,
    model: nn.Module,
    dist: PromptDistribution,
    train_cfg: TrainConfig,
    streams: Streams,
    optimizer: OptimizerSpec | None = None,
    callbacks: Sequence[Callback] = (),
) -> SeedRun:
    """Train one model of one seed with its own checkpoint ``checkpoints/{tag}-s{seed}.pt``."""
    return train_all_seeds(ctx, cfg, tag, [model], [dist], train_cfg, [streams], optimizer=optimizer,
                           callbacks=callbacks).runs[0]  # fmt: skip


def train_all_seeds(
    ctx: RunContext,
    cfg: Config,
    tag: str,
    models: Sequence[nn.Module] | ModelSpec,
    dists: Sequence[PromptDistribution],
    train_cfg: TrainConfig,
    streams: Sequence[Streams],
    *,
    optimizer: OptimizerSpec | None = None,
    read_every: int | None = None,
    read_out: Callable[[int, nn.Module], dict[str, float]] | None = None,
    callbacks: Sequence[Callback] = (),
) -> Fitted:
    """Train model ``tag`` for every seed with :func:`icl.training.fit`, together in one stacked run unless
    ``cfg.vectorise_seeds`` is off, checkpointed under the run directory (``ctx.store``).

    ``models``, ``dists`` and ``streams`` hold one entry per seed (the seed is ``streams[i].seed``). With
    ``read_out``, ``read_out(i, model_i)`` is recorded per seed at step 0, every ``read_every`` steps and at
    the end (``Fitted.runs[i].readouts``).

    Raises:
        TrainingDiverged: see :meth:`icl.training.Trainer.run`.
        TrainingInterrupted: stopped by a signal or by ``ctx.stop_after``, after checkpointing.
    """
    return fit(models, dists, train_cfg, streams, optimizer=optimizer, store=ctx.store(cfg), tag=tag,
               callbacks=callbacks, read_out=read_out, read_every=read_every,
               vectorise=getattr(cfg, "vectorise_seeds", True), device=ctx.device, quiet=ctx.quiet)  # fmt: skip


def grow(model: nn.Module, previous: nn.Module) -> nn.Module:
    """Start a freshly built depth-L model from a trained depth-(L−1) one of the same architecture: every
    parameter's first L−1 layers (its leading axis) are ``previous``'s and its last layer repeats ``previous``'s
    last (training depth by depth, each depth starting where the shallower model ended). Returns ``model``.

    Raises:
        ValueError: a parameter is missing, has no layer axis one longer than ``previous``'s, or differs in its
            other axes (a tied model, another mode or width).
    """
    new = dict(model.named_parameters())
    old = dict(previous.named_parameters())
    if new.keys() != old.keys():
        raise ValueError(f"grow: parameters {sorted(new)} of the model differ from {sorted(old)} of the previous one")
    for name, p in old.items():
        q = new[name]
        if q.ndim == 0 or q.shape[0] != p.shape[0] + 1 or q.shape[1:] != p.shape[1:]:
            raise ValueError(f"grow: parameter {name} has shape {tuple(q.shape)}, needs one more layer than the "
                             f"previous model's {tuple(p.shape)} on its first axis")  # fmt: skip
    with torch.no_grad():
        for name, p in old.items():
            new[name][:-1] = p.to(new[name])
            new[name][-1] = p[-1].to(new[name])
    return model


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
