"""The training engine: one :func:`fit` and one :class:`Trainer` for one seed or many.

- :mod:`icl.training.config`: :class:`TrainConfig`.
- :mod:`icl.training.specs`: :class:`ModelSpec`, :class:`OptimizerSpec` (what to build, as data).
- :mod:`icl.training.transforms`: clipping and schedules, small pure pieces chained like optax.
- :mod:`icl.training.loop`: :class:`Trainer`, the loop of S >= 1 stacked seeds.
- :mod:`icl.training.callbacks`: the callback protocol and the loop's pieces: held-out evaluation, divergence
  handling (stop or roll back), checkpointing, read-outs, the plateau rule, the clock, trackers.
- :mod:`icl.training.checkpoint`: checkpoint payload, config check and restore.
- :mod:`icl.training.signals`: stop requests from SIGINT/SIGTERM.
- :mod:`icl.training.fit`: :func:`fit`, with checkpoints and resume.
"""

from icl.training.callbacks import (
    Callback,
    Checkpoint,
    Clock,
    Divergence,
    Evaluate,
    Plateau,
    ReadOut,
    Tracker,
    TrackTo,
    TrainingDiverged,
)
from icl.training.config import DTYPES, LOSSES, TrainConfig
from icl.training.fit import Fitted, RunStore, SeedRun, fit
from icl.training.loop import History, Trainer, prefix_mse, query_mse
from icl.training.signals import TrainingInterrupted
from icl.training.specs import ModelSpec, OptimizerSpec
from icl.training.transforms import chain, clip_global, clip_per_matrix, cosine, lr_factor, step_decay

__all__ = [
    "DTYPES",
    "LOSSES",
    "Callback",
    "Checkpoint",
    "Clock",
    "Divergence",
    "Evaluate",
    "Fitted",
    "History",
    "ModelSpec",
    "OptimizerSpec",
    "Plateau",
    "ReadOut",
    "RunStore",
    "SeedRun",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "Tracker",
    "TrackTo",
    "chain",
    "clip_global",
    "clip_per_matrix",
    "cosine",
    "fit",
    "lr_factor",
    "prefix_mse",
    "query_mse",
    "step_decay",
]
