"""Model registry: rebuild any model from its name, d and config dict (what a checkpoint stores)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from learned_optimizers.gpt import GPT, GPTConfig
from learned_optimizers.linear_attention import LinearSelfAttention, LSAConfig
from learned_optimizers.memformer import Memformer, MemformerConfig
from learned_optimizers.spectral import SpectralLSA, SpectralLSAConfig, SpectralMemformer, SpectralMemformerConfig

#: name -> (model class, config class); every model takes (d, cfg, generator).
MODELS: dict[str, tuple[type[nn.Module], type]] = {
    "lsa": (LinearSelfAttention, LSAConfig),
    "memformer": (Memformer, MemformerConfig),
    "gpt": (GPT, GPTConfig),
    "spectral_lsa": (SpectralLSA, SpectralLSAConfig),
    "spectral_memformer": (SpectralMemformer, SpectralMemformerConfig),
}


def model_name(model: nn.Module) -> str:
    """The registry name of a model instance."""
    for name, (cls, _) in MODELS.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not a registered model; known: {', '.join(MODELS)}")


def build_model(name: str, d: int, cfg: Mapping[str, Any] | Any, generator: torch.Generator | None = None) -> nn.Module:
    """Construct a registered model from its config (a config object or a dict)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    cls, cfg_cls = MODELS[name]
    if not isinstance(cfg, cfg_cls):
        cfg = cfg_cls.from_dict(cfg)
    return cls(d, cfg, generator)
