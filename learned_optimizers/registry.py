"""Model registry: rebuild any model from its name, d and config dict (what a checkpoint stores)."""

from __future__ import annotations

import os
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


def load_model(path: str | os.PathLike, seed: int | None = None, map_location: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a checkpoint, rebuilt from the model spec the checkpoint stores (no outside state).

    Args:
        path: a model file (``models/{tag}-s{seed}.pt`` of a study: weights, spec, config and a summary of the
            run) or a checkpoint written by training (``checkpoints/{tag}-s{seed}.pt``, ``checkpoint.pt``).
        seed: which seed's model, for a checkpoint of several seeds (default: the first).
        map_location: where to put the weights.

    Raises:
        CheckpointError: not a readable checkpoint, or without a model spec, or without that seed.
    """
    from icl.runio import CheckpointError, load_checkpoint
    from learned_optimizers.constraints import apply_constraints

    ckpt = load_checkpoint(path, map_location=map_location, required=("format", "models", "model_spec"))
    spec = ckpt["model_spec"]
    if not isinstance(spec, dict):
        raise CheckpointError(f"checkpoint {path} holds no model spec (the model is not a registered one)")
    seeds = list(ckpt.get("seeds", [None]))
    if seed is not None and seed not in seeds:
        raise CheckpointError(f"checkpoint {path} holds seeds {seeds}, not {seed}")
    index = 0 if seed is None else seeds.index(seed)
    model = build_model(spec["name"], int(spec["d"]), spec["cfg"])
    if spec.get("constraints"):
        apply_constraints(model, spec["constraints"])
    model.load_state_dict(ckpt["models"][index])
    return model.to(map_location)


def build_model(name: str, d: int, cfg: Mapping[str, Any] | Any, generator: torch.Generator | None = None) -> nn.Module:
    """Construct a registered model from its config (a config object or a dict)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    cls, cfg_cls = MODELS[name]
    if not isinstance(cfg, cfg_cls):
        cfg = cfg_cls.from_dict(cfg)
    return cls(d, cfg, generator)
