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

Names are imported on first use, so that :mod:`learned_optimizers.configs` (the model configs) loads without
torch.
"""

from __future__ import annotations

from icl.lazy import lazy_exports

_EXPORTS = {
    "MODES": "learned_optimizers.configs",
    "LSAConfig": "learned_optimizers.configs",
    "LinearSelfAttention": "learned_optimizers.linear_attention",
    "attention": "learned_optimizers.linear_attention",
    "context_gram": "learned_optimizers.linear_attention",
    "lsa_layer": "learned_optimizers.linear_attention",
    "read_prediction": "learned_optimizers.linear_attention",
    "MemformerConfig": "learned_optimizers.configs",
    "Memformer": "learned_optimizers.memformer",
    "GPTConfig": "learned_optimizers.configs",
    "GPT": "learned_optimizers.gpt",
    "MODELS": "learned_optimizers.registry",
    "build_model": "learned_optimizers.registry",
    "load_model": "learned_optimizers.registry",
    "preconditioned_gd_lsa": "learned_optimizers.constructions",
    "gd_lsa": "learned_optimizers.constructions",
    "gd_factorised": "learned_optimizers.constructions",
    "gd_plus_plus_lsa": "learned_optimizers.constructions",
    "heavy_ball_memformer": "learned_optimizers.constructions",
    "lfom_memformer": "learned_optimizers.constructions",
    "implicit_weights": "learned_optimizers.probes",
    "predictions_at": "learned_optimizers.probes",
    "compare": "learned_optimizers.probes",
    "Comparison": "learned_optimizers.probes",
    "read_out": "learned_optimizers.probes",
    "ReadOut": "learned_optimizers.probes",
    "fit_reference": "learned_optimizers.probes",
    "FitResult": "learned_optimizers.probes",
    "interpolate": "learned_optimizers.probes",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports('learned_optimizers', _EXPORTS, globals())
