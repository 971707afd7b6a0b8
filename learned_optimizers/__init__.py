"""Transformers that learn optimizers in context, and their hand-set constructions."""

from learned_optimizers.linear_attention import (
    LinearSelfAttention,
    LSAConfig,
    context_gram,
    lsa_layer,
    read_prediction,
)
from learned_optimizers.registry import MODELS, build_model

__all__ = [
    "LSAConfig",
    "LinearSelfAttention",
    "context_gram",
    "lsa_layer",
    "read_prediction",
    "MODELS",
    "build_model",
]
