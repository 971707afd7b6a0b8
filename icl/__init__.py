"""``icl``: random regression prompts, seeded streams and the outer training loop.

The public API (``from icl import ...``):

- :class:`PromptConfig`, :class:`PromptDistribution`, :class:`PromptBatch`, :func:`zero_predictor_loss`: the
  prompt law and its samples (token layout and data law: ``docs/conventions.md``);
- :class:`Streams`: the named random generators of a run, all derived from one seed;
- :func:`fit`, :class:`TrainConfig`, :class:`ModelSpec`, :class:`OptimizerSpec`, :class:`Fitted`: the outer
  optimisation of a model on prompts, for one seed or many trained together (:mod:`icl.training`,
  ``docs/training.md``);
- :class:`LossEstimate`, :func:`test_loss`: a model's held-out query MSE with its standard error.

Names are imported on first use, so ``import icl.config`` stays cheap (the CLI's ``list`` does not load torch).
"""

from __future__ import annotations

from icl.lazy import lazy_exports

_EXPORTS = {
    "PromptConfig": "icl.prompts",
    "PromptDistribution": "icl.prompts",
    "PromptBatch": "icl.prompts",
    "zero_predictor_loss": "icl.prompts",
    "Streams": "icl.seeding",
    "fit": "icl.training",
    "Fitted": "icl.training",
    "TrainConfig": "icl.training",
    "ModelSpec": "icl.training",
    "OptimizerSpec": "icl.training",
    "LossEstimate": "icl.metrics",
    "test_loss": "icl.metrics",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports('icl', _EXPORTS, globals())
