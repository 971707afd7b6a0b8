"""Transformers that learn optimizers in context, their hand-set constructions and the probes that read them.

- models: :class:`LinearSelfAttention` (Ahn et al. 2023, von Oswald et al. 2023), :class:`Memformer` (Dutta & Sra
  2024), :class:`GPT` (Garg et al. 2022), built by name with :func:`build_model`, or from a checkpoint with
  :func:`load_model`;
- constructions: weights that make a model run a classical optimizer exactly (:func:`preconditioned_gd_lsa`,
  :func:`gd_lsa`, :func:`gd_factorised`, :func:`gd_plus_plus_lsa`, :func:`heavy_ball_memformer`,
  :func:`lfom_memformer`);
- probes: :func:`implicit_weights`, :func:`predictions_at`, :func:`compare` (von Oswald et al.'s and Fu et al.'s
  similarities per layer), :func:`read_out` (per-layer A_ℓ, B_ℓ, Dist(Σ^½AΣ^½, I), step sizes),
  :func:`fit_reference`, :func:`interpolate`.

Token layout, read-out sign and loss: ``docs/conventions.md``.
"""

from learned_optimizers.constructions import (
    gd_factorised,
    gd_lsa,
    gd_plus_plus_lsa,
    heavy_ball_memformer,
    lfom_memformer,
    preconditioned_gd_lsa,
)
from learned_optimizers.gpt import GPT, GPTConfig
from learned_optimizers.linear_attention import (
    MODES,
    LinearSelfAttention,
    LSAConfig,
    attention,
    context_gram,
    lsa_layer,
    read_prediction,
)
from learned_optimizers.memformer import Memformer, MemformerConfig
from learned_optimizers.probes import (
    Comparison,
    FitResult,
    ReadOut,
    compare,
    fit_reference,
    implicit_weights,
    interpolate,
    predictions_at,
    read_out,
)
from learned_optimizers.registry import MODELS, build_model, load_model

__all__ = [
    "MODES",
    "LSAConfig",
    "LinearSelfAttention",
    "attention",
    "context_gram",
    "lsa_layer",
    "read_prediction",
    "MemformerConfig",
    "Memformer",
    "GPTConfig",
    "GPT",
    "MODELS",
    "build_model",
    "load_model",
    "preconditioned_gd_lsa",
    "gd_lsa",
    "gd_factorised",
    "gd_plus_plus_lsa",
    "heavy_ball_memformer",
    "lfom_memformer",
    "implicit_weights",
    "predictions_at",
    "compare",
    "Comparison",
    "read_out",
    "ReadOut",
    "fit_reference",
    "FitResult",
    "interpolate",
]
