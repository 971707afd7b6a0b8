"""Specs: what to build, as data. A study hands :func:`~icl.training.fit` a :class:`ModelSpec` and an
:class:`OptimizerSpec` built from its resolved config, so that every ``--set model.*`` or ``--set train.*``
reaches what is trained; the checkpoint stores both (nanoGPT's ``model_args``) and the model is rebuilt from the
checkpoint alone (:func:`learned_optimizers.load_model`)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from icl.optim import OPTIMIZERS
from icl.seeding import Streams
from icl.training.config import MANIFOLD_OPTIMIZERS, TrainConfig
from learned_optimizers.constraints import apply_constraints, param_groups
from learned_optimizers.registry import MODELS, build_model, model_name


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its registry name, d, config (a dict) and the manifolds some weights live on.

    Attributes:
        name: the key of :data:`learned_optimizers.registry.MODELS` (``lsa``, ``memformer``, ``gpt``).
        d: the input dimension.
        cfg: the model config as a dict (``Config.to_dict()``).
        constraints: weight name -> manifold (e.g. ``{"W_K": "stiefel"}``): those weights are split into
            per-layer/head blocks on the manifold (:func:`learned_optimizers.constraints.apply_constraints`).
    """

    name: str
    d: int
    cfg: Mapping[str, Any]
    constraints: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise ValueError(f"unknown model {self.name!r}; known models: {', '.join(MODELS)}")
        if not hasattr(self.cfg, "items"):  # a Config object: keep its dict
            object.__setattr__(self, "cfg", self.cfg.to_dict())
        object.__setattr__(self, "constraints", dict(self.constraints))

    def build(self, generator: torch.Generator | None = None) -> nn.Module:
        """A freshly initialised model (weights from ``generator``, the seed's ``init`` stream)."""
        model = build_model(self.name, self.d, dict(self.cfg), generator)
        if self.constraints:
            apply_constraints(model, self.constraints, generator)
        return model

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "d": int(self.d), "cfg": dict(self.cfg), "constraints": dict(self.constraints)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        return cls(data["name"], int(data["d"]), dict(data["cfg"]), dict(data.get("constraints", {})))

    @classmethod
    def of(cls, model: nn.Module) -> ModelSpec:
        """The spec of an existing registered model (its constraints included)."""
        return cls(model_name(model), int(model.d), model.cfg.to_dict(), dict(getattr(model, "constraints", {})))


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered outer optimizer and its hyperparameters.

    Attributes:
        name: the key of :data:`icl.optim.OPTIMIZERS`.
        hparams: keyword arguments of its constructor (``lr`` included).
    """

    name: str
    hparams: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; valid names: {', '.join(sorted(OPTIMIZERS))}")
        accepted = self.accepted()
        bad = [k for k in self.hparams if k not in accepted]
        if bad:
            raise ValueError(f"optimizer {self.name!r} takes no {', '.join(bad)}")
        object.__setattr__(self, "hparams", dict(self.hparams))

    def accepted(self) -> Mapping[str, inspect.Parameter]:
        return inspect.signature(OPTIMIZERS[self.name]).parameters

    @classmethod
    def from_config(cls, cfg: TrainConfig, name: str | None = None, **overrides: Any) -> OptimizerSpec:
        """``cfg.optimizer`` (or ``name``) with ``lr`` and those of ``betas``, ``momentum``, ``weight_decay`` that
        are set and that it takes; root-free optimizers get ``batch_size`` = ``cfg.batch_size``. ``overrides``
        (e.g. ``lr``) win."""
        name = cfg.optimizer if name is None else name
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(sorted(OPTIMIZERS))}")
        accepted = inspect.signature(OPTIMIZERS[name]).parameters
        options = {"betas": cfg.betas, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay}
        hp: dict[str, Any] = {"lr": cfg.lr}
        hp.update({k: (tuple(v) if k == "betas" else v) for k, v in options.items() if v is not None and k in accepted})
        if "batch_size" in accepted:
            hp["batch_size"] = float(cfg.batch_size)
        hp.update(overrides)
        return cls(name, hp)

    @property
    def per_seed(self) -> bool:
        """Whether each seed needs its own instance: optimizers that draw from their own generator (the
        manifold optimizers' sections). The others update each parameter from its own gradient and state
        only, so one instance over the parameters of S seeds (one group per seed and group) is S optimizers."""
        return "seed" in self.accepted()

    def build(
        self, groups: Sequence[Sequence[dict[str, Any]]], streams: Sequence[Streams]
    ) -> list[torch.optim.Optimizer]:
        """The optimizers of S seeds: ``groups[s]`` are seed s's parameter groups. One instance over all seeds'
        groups, or one per seed (:attr:`per_seed`, seeded from the seed's ``section`` stream)."""
        cls = OPTIMIZERS[self.name]
        if self.per_seed:
            return [cls([dict(g) for g in gs], **{"seed": st.seed_of("section"), **self.hparams})
                    for gs, st in zip(groups, streams)]  # fmt: skip
        return [cls([dict(g) for gs in groups for g in gs], **self.hparams)]

    def groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """The parameter groups of ``model``: its weights grouped by the manifold they are declared on (one
        group when the optimizer takes no manifold groups)."""
        return param_groups(model, manifold_aware=self.name in MANIFOLD_OPTIMIZERS)

    def to_dict(self) -> dict[str, Any]:
        hp = {k: list(v) if isinstance(v, tuple) else v for k, v in self.hparams.items()}
        return {"name": self.name, "hparams": hp}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptimizerSpec:
        hp = {k: tuple(v) if isinstance(v, list) else v for k, v in data.get("hparams", {}).items()}
        return cls(data["name"], hp)
