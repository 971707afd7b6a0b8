"""Transformers that learn optimizers in context, and their hand-set constructions."""

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
]
