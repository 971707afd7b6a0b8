"""The frame every multi-seed study uses: profiles, seeds, per-model checkpoints, rows and evaluation.

A study config derives from :class:`StudyConfig` (fields ``profile`` and ``seeds``); its definition module
declares ``STUDY = Study(config, run, PROFILES)`` (:mod:`experiments.registry`). Each (model, seed) pair is
trained with :func:`train_one`, which keeps a checkpoint per pair under ``checkpoints/`` so that ``--resume``
continues an interrupted study and skips what is finished. Each seed has its own :class:`~icl.seeding.Streams`,
so seeds differ in the rotation U, the initialisation and the data, and test prompts come from the ``test``
stream that training never reads.

:func:`train_all_seeds` trains one model (one tag) for all the seeds: in one
:class:`~icl.vectorised.SeedBatchTrainer` when ``vectorise_seeds`` is on and the model and optimizer allow it
(one batch checkpoint ``checkpoints/{tag}-s{seeds}-batch.pt`` while it trains; when it is done, the ordinary
per-seed checkpoints ``{tag}-s{seed}.pt``), otherwise with :func:`train_one` per seed. Either way the study gets
one :class:`~icl.train.Trainer` per seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments.common import (
    RunContext,
    checkpoint_payload,
    restore_seed_batch,
    restore_trainer,
    seed_batch_payload,
    train_model,
)
from experiments.results import Rows  # noqa: F401  (the studies import it from here)
from icl.config import Config, spec
from icl.metrics import LossEstimate, test_loss
from icl.prompts import PromptBatch, PromptDistribution
from icl.runio import save_checkpoint
from icl.seeding import Streams
from icl.train import TrainConfig, Trainer, TrainingInterrupted
from icl.vectorised import SeedBatchTrainer, seed_batch_problem

PROFILES = ("quick", "standard", "paper")


@dataclass(frozen=True)
class StudyConfig(Config):
    """Fields every study has.

    Attributes:
        profile: ``quick`` (minutes; run by the tests), ``standard`` (under 30 minutes on 2 cores) or
            ``paper`` (the paper's budget).
        seeds: the root seeds; each gives its own rotation, initialisation and data streams.
        checkpoint_every: steps between checkpoints of each trained model.
        vectorise_seeds: studies that train through :func:`train_all_seeds` train each model for all seeds at
            once in one :class:`~icl.vectorised.SeedBatchTrainer` (S models stacked, one vmapped step) when
            there is more than one seed, the outer optimizer is elementwise (adam, adamw, sgd),
            ``on_divergence`` is ``stop`` and the model has no hooks the batch can not carry; otherwise, or
            when off, the seeds are trained one by one (the reason is printed). Each seed's numbers equal the
            one-by-one run's up to float rounding (tests/test_study_vectorised.py: 1e-5 relative on every
            result); a resumed run may switch it. Wall time of the quick pgd_depth profile with 3 seeds:
            see docs/performance.md.
    """

    profile: str = spec("standard", choices=PROFILES)
    seeds: tuple[int, ...] = spec((0, 1, 2), ge=0)
    checkpoint_every: int = spec(1000, ge=1)
    vectorise_seeds: bool = True

    def check(self) -> None:
        super().check()
        if not self.seeds:
            from icl.config import ConfigError

            raise ConfigError("seeds must hold at least one seed")


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


#: a read-out during training: (index of the seed, its model at the current step) -> named numbers
ReadOut = Callable[[int, nn.Module], dict[str, float]]


@dataclass
class SeedRuns:
    """One model trained for every seed by :func:`train_all_seeds`.

    Attributes:
        trainers: one Trainer per seed, in the order of the seeds, holding the trained model and its history;
            ``wall_time`` is its training time (for a seed batch: the batch's time divided by the seeds).
        dynamics: per seed, the read-outs ``{"step": t, **read_out(...)}`` at step 0 and every ``read_every``
            steps (and at the end); empty lists without ``read_out``.
        vectorised: the seeds were trained together in one seed batch.
        reason: why they were trained one by one (None when vectorised).
    """

    trainers: list[Trainer]
    dynamics: list[list[dict[str, float]]] = field(default_factory=list)
    vectorised: bool = False
    reason: str | None = None


def vectorise_problem(
    cfg: Config, models: Sequence[nn.Module], train_cfg: TrainConfig, optimizers: Any = None
) -> str | None:
    """Why :func:`train_all_seeds` trains these seeds one by one (None: it batches them)."""
    if not getattr(cfg, "vectorise_seeds", False):
        return "vectorise_seeds is off"
    if len(models) < 2:
        return "a single seed"
    if optimizers is not None:
        return "ready-made optimizer instances were passed"
    return seed_batch_problem(models, train_cfg)


def _run_in_chunks(
    trainer: Trainer | SeedBatchTrainer,
    steps: int,
    stop_after: int | None,
    save: Callable[[Any], Any],
    checkpoint_every: int,
    read_every: int | None = None,
    read: Callable[[], None] | None = None,
) -> None:
    """Train to ``steps`` (or to ``stop_after``), in chunks of ``read_every`` steps with ``read()`` after each
    chunk and ``save`` after each read, checkpointing as :func:`experiments.common.train_model` does.

    Raises:
        TrainingInterrupted: stopped by a signal (after ``save``) or at ``stop_after`` (after ``save``).
    """
    target = steps if stop_after is None else min(steps, stop_after)
    while trainer.step < target:
        until = target if read is None else min(target, (trainer.step // read_every + 1) * read_every)
        trainer.run(until=until, on_checkpoint=save, checkpoint_every=checkpoint_every)
        if read is not None and (trainer.step % read_every == 0 or trainer.step == steps):
            read()
            save(trainer)
    if stop_after is not None and trainer.step < steps:
        save(trainer)
        raise TrainingInterrupted(f"stopped at step {trainer.step} as asked by stop_after = {stop_after}",
                                  step=trainer.step)  # fmt: skip


def _train_one_with_readouts(
    ctx: RunContext, cfg: Config, path: Path, model: nn.Module, dist: PromptDistribution, train_cfg: TrainConfig,
    streams: Streams, optimizer: torch.optim.Optimizer | None, read_every: int, read_out: Callable[[nn.Module], dict],
) -> tuple[Trainer, list[dict[str, float]]]:  # fmt: skip
    """One seed in chunks of ``read_every`` steps with read-outs between them; the read-outs travel in the
    checkpoint (``dynamics``), so ``--resume`` keeps them."""
    trainer = Trainer(model, dist, train_cfg, streams, optimizer=optimizer, device=ctx.device, quiet=ctx.quiet)
    dynamics: list[dict[str, float]] = []
    if ctx.resume and path.exists():
        ckpt = restore_trainer(ctx, cfg, trainer, path)
        dynamics = [dict(r) for r in ckpt.get("dynamics", [])]
        if trainer.step < train_cfg.steps:
            ctx.print(f"resumed {path.name} at step {trainer.step}")
    t0 = time.time()
    if not dynamics:
        dynamics.append({"step": 0.0, **read_out(trainer.model)})

    def read() -> None:
        dynamics.append({"step": float(trainer.step), **read_out(trainer.model)})

    def save(t: Trainer) -> None:
        save_checkpoint(path, checkpoint_payload(ctx, cfg, t, dynamics=dynamics))

    _run_in_chunks(trainer, train_cfg.steps, ctx.stop_after, save, getattr(cfg, "checkpoint_every", 1000),
                   read_every, read)  # fmt: skip
    if not path.exists():
        save(trainer)
    trainer.wall_time = time.time() - t0  # type: ignore[attr-defined]
    return trainer, dynamics


def train_all_seeds(
    ctx: RunContext,
    cfg: Config,
    tag: str,
    models: Sequence[nn.Module],
    dists: Sequence[PromptDistribution],
    train_cfg: TrainConfig,
    streams: Sequence[Streams],
    *,
    optimizers: Sequence[torch.optim.Optimizer] | None = None,
    read_every: int | None = None,
    read_out: ReadOut | None = None,
) -> SeedRuns:
    """Train model ``tag`` for every seed: together in one seed batch when possible, else one by one.

    ``models``, ``dists`` and ``streams`` hold one entry per seed (the seed is ``streams[i].seed``). The seed
    batch is used when :func:`vectorise_problem` finds nothing against it and, on ``--resume``, no per-seed
    checkpoint of ``tag`` exists without a batch checkpoint (an earlier one-by-one run is continued one by one).
    With ``read_out``, training stops every ``read_every`` steps and ``read_out(i, model_i)`` is recorded per
    seed (at step 0, after every chunk and at the end).

    Checkpoints, ``--resume``, ``ctx.stop_after`` and SIGINT/SIGTERM behave as in
    :func:`experiments.common.train_model`: a seed batch writes ``checkpoints/{tag}-s{seeds}-batch.pt`` every
    ``checkpoint_every`` steps, at each read-out and on a stop, and continues from it exactly; when finished it
    writes each seed's ordinary checkpoint ``{tag}-s{seed}.pt`` (the seed's slice of the batch state, the same
    format as a one-by-one run's) and removes the batch file, so a finished model resumes either way.

    Raises:
        TrainingDiverged: see :meth:`icl.train.Trainer.run` / :meth:`icl.vectorised.SeedBatchTrainer.run`.
        TrainingInterrupted: stopped by a signal or by ``ctx.stop_after``, after checkpointing.
    """
    seeds = [st.seed for st in streams]
    if read_out is not None and read_every is None:
        raise ValueError("read_out needs read_every")
    ckpt_dir = ctx.out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    seed_paths = [ckpt_dir / f"{tag}-s{seed}.pt" for seed in seeds]
    batch_path = ckpt_dir / f"{tag}-s{'-'.join(str(s) for s in seeds)}-batch.pt"
    reason = vectorise_problem(cfg, models, train_cfg, optimizers)
    if reason is not None:
        if getattr(cfg, "vectorise_seeds", False) and len(seeds) > 1:
            ctx.print(f"{tag}: seeds trained one by one ({reason})")
    elif ctx.resume and not batch_path.exists() and any(p.exists() for p in seed_paths):
        reason = "per-seed checkpoints exist (a finished model, or an earlier one-by-one run)"
    if reason is not None:
        trainers, dynamics = [], []
        for i, (model, dist, st) in enumerate(zip(models, dists, streams)):
            opt = optimizers[i] if optimizers is not None else None
            if read_out is None:
                trainers.append(train_one(ctx, cfg, tag, st.seed, model, dist, train_cfg, st, optimizer=opt))
                dynamics.append([])
            else:
                one = lambda m, i=i: read_out(i, m)
                trainer, dyn = _train_one_with_readouts(ctx, cfg, seed_paths[i], model, dist, train_cfg, st, opt,
                                                        read_every, one)  # fmt: skip
                trainers.append(trainer)
                dynamics.append(dyn)
        return SeedRuns(trainers, dynamics, vectorised=False, reason=reason)

    batch = SeedBatchTrainer(models, dists, train_cfg, streams, device=ctx.device, quiet=ctx.quiet)
    dynamics = [[] for _ in seeds]
    if ctx.resume and batch_path.exists():
        ckpt = restore_seed_batch(ctx, cfg, batch, batch_path)
        dynamics = [[dict(r) for r in dyn] for dyn in ckpt.get("dynamics", dynamics)]
        if batch.step < train_cfg.steps:
            ctx.print(f"resumed {batch_path.name} at step {batch.step}")
    t0 = time.time()

    def read() -> None:
        for i, model in enumerate(batch.models()):
            dynamics[i].append({"step": float(batch.step), **read_out(i, model)})

    if read_out is not None and not dynamics[0]:
        read()
    extra = (lambda: {"dynamics": dynamics}) if read_out is not None else dict
    save = lambda b: save_checkpoint(batch_path, seed_batch_payload(ctx, cfg, b, **extra()))
    _run_in_chunks(batch, train_cfg.steps, ctx.stop_after, save, getattr(cfg, "checkpoint_every", 1000), read_every,
                   read if read_out is not None else None)  # fmt: skip
    # hand every seed over to an ordinary Trainer, in the state a one-by-one run would have ended in
    trainers = []
    for i, (model, dist, st) in enumerate(zip(batch.models(), dists, streams)):
        trainer = Trainer(model, dist, train_cfg, st, device=ctx.device, quiet=ctx.quiet)
        trainer.load_state_dict(batch.seed_state_dict(i))
        payload = checkpoint_payload(ctx, cfg, trainer, **({"dynamics": dynamics[i]} if read_out is not None else {}))
        save_checkpoint(seed_paths[i], payload)
        trainers.append(trainer)
    batch_path.unlink(missing_ok=True)
    wall = time.time() - t0
    for trainer in trainers:
        trainer.wall_time = wall / len(trainers)  # type: ignore[attr-defined]
    ctx.print(f"{tag}: seeds {', '.join(str(s) for s in seeds)} trained together ({wall:.0f}s)")
    return SeedRuns(trainers, dynamics, vectorised=True, reason=None)


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
