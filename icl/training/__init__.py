"""The training engine: one :func:`fit` and one :class:`Trainer` for one seed or many.

- :mod:`icl.training.config`: :class:`TrainConfig`.
- :mod:`icl.training.specs`: :class:`ModelSpec`, :class:`OptimizerSpec` (what to build, as data).
- :mod:`icl.training.transforms`: clipping and schedules, small pure pieces chained like optax.
- :mod:`icl.training.loop`: :class:`Trainer`, the loop of S >= 1 stacked seeds.
- :mod:`icl.training.callbacks`: the callback protocol and the loop's pieces: held-out evaluation, divergence
  handling (stop or roll back), checkpointing, read-outs, the plateau rule, the clock, trackers.
- :mod:`icl.training.checkpoint`: checkpoint payload, config check and restore.
- :mod:`icl.training.signals`: stop requests from SIGINT/SIGTERM.
- :mod:`icl.training.fitting`: :func:`fit`, with checkpoints and resume (not named ``fit.py``: the package
  imports its names lazily, and a submodule ``fit`` would shadow the function).

Names are imported on first use (``from icl.training import fit`` loads the engine and torch), so that
:mod:`icl.training.config` alone stays torch-free: a config is resolved and validated without loading torch.
"""

from __future__ import annotations

from icl.lazy import lazy_exports

_EXPORTS = {
    "Callback": "icl.training.callbacks",
    "Checkpoint": "icl.training.callbacks",
    "Clock": "icl.training.callbacks",
    "Divergence": "icl.training.callbacks",
    "Evaluate": "icl.training.callbacks",
    "Plateau": "icl.training.callbacks",
    "ReadOut": "icl.training.callbacks",
    "Tracker": "icl.training.callbacks",
    "TrackTo": "icl.training.callbacks",
    "TrainingDiverged": "icl.training.callbacks",
    "DTYPES": "icl.training.loop",
    "LOSSES": "icl.training.config",
    "TrainConfig": "icl.training.config",
    "Fitted": "icl.training.fitting",
    "RunStore": "icl.training.fitting",
    "SeedRun": "icl.training.fitting",
    "fit": "icl.training.fitting",
    "History": "icl.training.loop",
    "Trainer": "icl.training.loop",
    "prefix_mse": "icl.training.loop",
    "query_mse": "icl.training.loop",
    "TrainingInterrupted": "icl.training.signals",
    "ModelSpec": "icl.training.specs",
    "OptimizerSpec": "icl.training.specs",
    "chain": "icl.training.transforms",
    "clip_global": "icl.training.transforms",
    "clip_per_matrix": "icl.training.transforms",
    "cosine": "icl.training.transforms",
    "lr_factor": "icl.training.transforms",
    "step_decay": "icl.training.transforms",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports('icl.training', _EXPORTS, globals())
