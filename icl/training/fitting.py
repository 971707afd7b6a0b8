"""``fit``: the one door to training, for one seed or many, with checkpoints, resume and callbacks.

Example (a study's model, trained for three seeds at once)::

    fitted = fit(ModelSpec("lsa", d, cfg.model), lambda st: PromptDistribution(cfg.prompt,
                 generator=st.generator("rotation")), cfg.train, seeds=(0, 1, 2), store=store, tag="lsa-L3")
    for run in fitted.runs:
        run.model, run.history, run.readouts, run.wall_time

Each seed s has its own :class:`~icl.seeding.Streams`: its model is built from its ``init`` stream, its
batches come from ``train``, its held-out batch from ``val``. With a :class:`RunStore` the run checkpoints under
``store.dir`` (``{tag}-s{seeds}-batch.pt`` while a seed batch trains, one ``{tag}-s{seed}.pt`` per seed when
done, the same format either way), resumes exactly on ``store.resume``, stops at ``store.stop_after`` (raising
:class:`~icl.training.signals.TrainingInterrupted` after checkpointing, as SIGINT/SIGTERM do) and writes each
seed's ``train_log.csv``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from icl.config import Config
from icl.prompts import PromptDistribution
from icl.runio import load_checkpoint, write_csv
from icl.seeding import Streams
from icl.training import checkpoint, signals
from icl.training.callbacks import Callback, Plateau, ReadOut, TrackTo
from icl.training.config import TrainConfig
from icl.training.loop import History, Trainer, merge_seed_states
from icl.training.signals import TrainingInterrupted
from icl.training.specs import ModelSpec, OptimizerSpec

TRAIN_LOG_COLUMNS = ("step", "loss", "lr", "grad_norm", "eval_loss")


@dataclass
class RunStore:
    """Where and how :func:`fit` keeps its checkpoints (an experiment runner builds it from its context).

    Attributes:
        dir: the checkpoint directory.
        experiment: the experiment's name (recorded in the checkpoint).
        config: the experiment's resolved config (recorded, and compared on resume).
        resume: continue from the checkpoints found in ``dir``.
        stop_after: stop (checkpointed, :class:`TrainingInterrupted`) at this step; None: train to the end.
        checkpoint_every: steps between checkpoints.
        train_logs: the directory of the ``{tag}-s{seed}.csv`` training logs (None: not written).
        models: the directory of the trained models' ``{tag}-s{seed}.pt`` model files
            (:func:`~icl.training.checkpoint.export`: weights, spec, config and a summary; None: not written).
        log: where progress lines go.
        file: the checkpoint file of a one-seed run, instead of ``dir/{tag}-s{seed}.pt``.
        tracker: the run's experiment tracker (:mod:`icl.tracking`), sent every model's numbers through
            :class:`~icl.training.callbacks.TrackTo` (None: no tracking).
        on_trained: called with (tag, seconds) when :func:`fit` has trained a model (all its seeds): the run's
            per-model progress line.
    """

    dir: Path
    experiment: str
    config: Config
    resume: bool = False
    stop_after: int | None = None
    checkpoint_every: int = 1000
    train_logs: Path | None = None
    models: Path | None = None
    log: Callable[[str], Any] = print
    file: Path | None = None
    tracker: Any = None
    on_trained: Callable[[str, float], Any] | None = None


@dataclass
class SeedRun:
    """One seed's result: its trained model, history, read-outs and training time (a seed batch's time
    divided by its seeds)."""

    seed: int
    model: nn.Module
    history: History
    readouts: list[dict[str, float]] = field(default_factory=list)
    wall_time: float = 0.0
    step: int = 0


@dataclass
class Fitted:
    """What :func:`fit` returns: one :class:`SeedRun` per seed (in the order of the seeds), whether the seeds
    trained together, and the reason if not."""

    runs: list[SeedRun]
    vectorised: bool
    reason: str | None = None


ModelSource = ModelSpec | Callable[[Streams], nn.Module] | Sequence[nn.Module]
DistSource = Callable[[Streams], PromptDistribution] | Sequence[PromptDistribution]


def _models(model: ModelSource, streams: Sequence[Streams]) -> list[nn.Module]:
    if isinstance(model, ModelSpec):
        return [model.build(st.generator("init", "cpu")) for st in streams]
    if callable(model) and not isinstance(model, nn.Module):
        return [model(st) for st in streams]
    models = [model] if isinstance(model, nn.Module) else list(model)
    if len(models) != len(streams):
        raise ValueError(f"got {len(models)} models for {len(streams)} seeds")
    return models


def _dists(dist: DistSource, streams: Sequence[Streams]) -> list[PromptDistribution]:
    if isinstance(dist, PromptDistribution):
        dists = [dist]
    elif callable(dist):
        return [dist(st) for st in streams]
    else:
        dists = list(dist)
    if len(dists) != len(streams):
        raise ValueError(f"got {len(dists)} prompt laws for {len(streams)} seeds")
    return dists


def fit(
    model: ModelSource,
    dist: DistSource,
    train: TrainConfig,
    seeds: Sequence[int] | Sequence[Streams],
    *,
    optimizer: OptimizerSpec | None = None,
    store: RunStore | None = None,
    tag: str = "model",
    callbacks: Sequence[Callback] = (),
    read_out: Callable[[int, nn.Module], dict[str, float]] | None = None,
    read_every: int | None = None,
    vectorise: bool = True,
    device: str | torch.device = "cpu",
    quiet: bool = False,
) -> Fitted:
    """Train one model per seed, all seeds together as one stacked computation.

    Args:
        model: a :class:`ModelSpec` (each seed's model built from its ``init`` stream), a function of the seed's
            Streams, or the freshly built models (one per seed).
        dist: each seed's prompt law: a function of its Streams (draw the rotation from ``rotation``), or the
            laws (one per seed).
        train: the training config.
        seeds: the root seeds (or their Streams).
        optimizer: the outer optimizer; default :meth:`OptimizerSpec.from_config` of ``train``.
        store: checkpoints, resume, stop_after and training logs (None: in memory only).
        tag: the model's name in the checkpoint files.
        callbacks: more callbacks (trackers, ...).
        read_out: (index of the seed, its model) -> named numbers, recorded at step 0, every ``read_every``
            steps and at the end (:class:`~icl.training.callbacks.ReadOut`); kept in the checkpoints.
        vectorise: train the seeds together (False: one after another, the same numbers up to rounding).
        device: where to train.
        quiet: no progress bar.

    Raises:
        TrainingDiverged: see :meth:`Trainer.run` (the checkpoint on disk is the last healthy one).
        TrainingInterrupted: stopped by a signal or by ``store.stop_after``, after checkpointing.
    """
    streams = [st if isinstance(st, Streams) else Streams(int(st)) for st in seeds]
    if not streams:
        raise ValueError("fit needs at least one seed")
    if read_out is not None and (read_every is None or read_every < 1):
        raise ValueError("read_out needs read_every >= 1")
    if store is not None and store.on_trained is not None:
        t0 = time.time()
        fitted = fit(model, dist, train, streams, optimizer=optimizer, store=replace(store, on_trained=None),
                     tag=tag, callbacks=callbacks, read_out=read_out, read_every=read_every, vectorise=vectorise,
                     device=device, quiet=quiet)  # fmt: skip
        store.on_trained(tag, time.time() - t0)
        return fitted
    models = _models(model, streams)
    dists = _dists(dist, streams)
    kw = dict(optimizer=optimizer, store=store, tag=tag, callbacks=callbacks, read_out=read_out,
              read_every=read_every, device=device, quiet=quiet)  # fmt: skip
    reason = None
    if len(streams) > 1 and not vectorise:
        reason = "vectorise_seeds is off"
    elif len(streams) > 1 and store is not None and store.resume:
        paths = [_seed_path(store, tag, st.seed) for st in streams]
        if not _batch_path(store, tag, streams).exists() and any(p.exists() for p in paths):
            steps = {_saved_step(p) for p in paths}
            if len(steps) != 1:
                reason = "per-seed checkpoints at different steps (an earlier one-by-one run)"
    if reason is not None:
        if store is not None:
            store.log(f"{tag}: seeds trained one by one ({reason})")
        runs = []
        for i, (m, d, st) in enumerate(zip(models, dists, streams)):
            one = None if read_out is None else (lambda _, model, i=i: read_out(i, model))  # i: the seed's index
            runs.extend(_fit([m], [d], train, [st], **{**kw, "read_out": one}).runs)
        return Fitted(runs, vectorised=False, reason=reason)
    return _fit(models, dists, train, streams, **kw)


def _seed_path(store: RunStore, tag: str, seed: int) -> Path:
    return store.file if store.file is not None else store.dir / f"{tag}-s{seed}.pt"


def _batch_path(store: RunStore, tag: str, streams: Sequence[Streams]) -> Path:
    if len(streams) == 1:
        return _seed_path(store, tag, streams[0].seed)
    return store.dir / f"{tag}-s{'-'.join(str(st.seed) for st in streams)}-batch.pt"


def _saved_step(path: Path) -> int | None:
    if not path.exists():
        return None
    try:
        return int(load_checkpoint(path)["trainer"]["step"])
    except Exception:  # noqa: BLE001  (an unreadable file is reported when it is restored)
        return -1


def _fit(
    models: list[nn.Module], dists: list[PromptDistribution], train: TrainConfig, streams: list[Streams], *,
    optimizer: OptimizerSpec | None, store: RunStore | None, tag: str, callbacks: Sequence[Callback],
    read_out: Callable[[int, nn.Module], dict[str, float]] | None, read_every: int | None,
    device: str | torch.device, quiet: bool,
) -> Fitted:  # fmt: skip
    signals.raise_if_requested(f"before training {tag}")
    cbs: list[Callback] = list(callbacks)
    reader = None
    if read_out is not None:
        reader = ReadOut(read_out, read_every)
        cbs.append(reader)
    if train.plateau_patience:
        cbs.append(Plateau(train.plateau_patience, train.plateau_tol))
    if store is not None and store.tracker is not None:  # after the read-out, so that it sends its new rows
        cbs.append(TrackTo(store.tracker, tag, reader))
    trainer = Trainer(models, dists, train, streams, optimizer=optimizer, device=device, quiet=quiet, callbacks=cbs)
    t0 = time.time()
    if store is None:
        trainer.run()
        return _result(trainer, reader, time.time() - t0, None)
    path = _batch_path(store, tag, streams)
    seed_paths = [_seed_path(store, tag, st.seed) for st in streams]
    path.parent.mkdir(parents=True, exist_ok=True)
    if store.resume:
        if path.exists():
            checkpoint.restore(trainer, path, store.config, trainer.device)
            if trainer.step < train.steps and trainer.stopped is None:
                store.log(f"resumed {path.name} at step {trainer.step}")
        elif trainer.S > 1 and all(p.exists() for p in seed_paths):  # finished seeds: gather them
            ckpts = [checkpoint.load(p, store.config, trainer.device)[0] for p in seed_paths]
            state = merge_seed_states([checkpoint.trainer_state(c) for c in ckpts], len(trainer.optimizers) == 1)
            trainer.load_state_dict(state)

    def save(t: Trainer) -> None:
        checkpoint.save(path, store.experiment, store.config, t)

    done_before = trainer.step >= train.steps or trainer.stopped is not None
    trainer.run(until=store.stop_after, on_checkpoint=save, checkpoint_every=store.checkpoint_every)
    if store.stop_after is not None and trainer.step < train.steps and trainer.stopped is None:
        save(trainer)
        raise TrainingInterrupted(f"stopped at step {trainer.step} as asked by stop_after = {store.stop_after}",
                                  step=trainer.step)  # fmt: skip
    if trainer.S > 1 and not done_before:  # hand every seed over to its own checkpoint, as a one-seed run ends
        for s, p in enumerate(seed_paths):
            checkpoint.save(p, store.experiment, store.config, trainer, trainer.seed_state_dict(s))
        path.unlink(missing_ok=True)
    elif not path.exists():
        save(trainer)
    wall = time.time() - t0
    if store.train_logs is not None and not done_before:
        store.train_logs.mkdir(parents=True, exist_ok=True)
        for st, hist in zip(streams, trainer.histories):
            write_csv(store.train_logs / f"{tag}-s{st.seed}.csv", hist.table(), TRAIN_LOG_COLUMNS)
    if store.models is not None:
        for s, st in enumerate(streams):
            out = store.models / f"{tag}-s{st.seed}.pt"
            if not done_before or not out.exists():
                out.parent.mkdir(parents=True, exist_ok=True)
                checkpoint.export(out, store.experiment, store.config, trainer, s)
    if trainer.S > 1 and not done_before:
        store.log(f"{tag}: seeds {', '.join(str(s) for s in trainer.seeds)} trained together ({wall:.0f}s)")
    return _result(trainer, reader, wall, None)


def _result(trainer: Trainer, reader: ReadOut | None, wall: float, reason: str | None) -> Fitted:
    runs = [
        SeedRun(seed, model, hist, list(reader.rows[s]) if reader is not None and reader.rows else [],
                wall / trainer.S, trainer.step)
        for s, (seed, model, hist) in enumerate(zip(trainer.seeds, trainer.models, trainer.histories))
    ]
    return Fitted(runs, vectorised=trainer.S > 1, reason=reason)
