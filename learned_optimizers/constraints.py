"""Weights that live on a manifold, declared on the model (geoopt's ``ManifoldParameter`` idea).

A model declares ``model.constraints = {weight name: manifold}``; :func:`apply_constraints` does it for a
registered model: each constrained weight of shape (L, H, a, b) becomes L·H per-layer/head parameters
(:class:`BlockParams`, transposed so that a block Y = Wᵀ is a tall (b, a) matrix, the form Stiefel points
take), each started at a random point of its manifold. Optimizers then read the manifold from the parameter
group: :func:`param_groups` puts every constrained block in a group ``{"params": [...], "manifold": name}``
(ahead of the unconstrained weights), which :class:`~icl.optim.ManifoldAdam`, :class:`~icl.optim.ManifoldSGD`
and :class:`~icl.optim.ProjectedRiemannianAdam` take as they are.

:class:`BlockParams` is also what optimizers that want matrices need (SIRFShampoo gives Kronecker factors only
to 2-D parameters): :func:`split_blocks` splits a weight without constraining it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from icl.optim import manifold_point

MANIFOLDS = ("stiefel", "grassmann", "symplectic_stiefel")


class BlockParams(nn.Module):
    """A weight of shape (L, H, a, b) held as L·H parameters of shape (a, b), or (b, a) with ``transpose``.

    ``self[i]`` is the (H, a, b) stack of layer i (what the LSA indexes), and :meth:`full` the whole
    (L, H, a, b) tensor.
    """

    def __init__(self, weight: torch.Tensor, transpose: bool = False) -> None:
        super().__init__()
        if weight.ndim != 4:
            raise ValueError(f"BlockParams splits (L, H, a, b) weights, got shape {tuple(weight.shape)}")
        self.L, self.H = weight.shape[:2]
        self.transpose = transpose
        flat = weight.detach().reshape(self.L * self.H, *weight.shape[2:])
        self.blocks = nn.ParameterList([nn.Parameter((w.T if transpose else w).clone()) for w in flat])

    def block(self, layer: int, head: int) -> torch.Tensor:
        w = self.blocks[layer * self.H + head]
        return w.T if self.transpose else w

    def __getitem__(self, layer: int) -> torch.Tensor:
        return torch.stack([self.block(layer, h) for h in range(self.H)])

    def full(self) -> torch.Tensor:
        return torch.stack([self[i] for i in range(self.L)])


def split_blocks(model: nn.Module, name: str, transpose: bool = False) -> BlockParams:
    """Replace ``model.<name>`` (an (L, H, a, b) parameter) by a :class:`BlockParams` of the same values."""
    blocks = BlockParams(getattr(model, name), transpose=transpose)
    delattr(model, name)
    setattr(model, name, blocks)  # now a submodule: model.<name>[layer] still indexes the (H, a, b) stack
    return blocks


def top_level_weights(model: nn.Module) -> list[str]:
    """The model's own weights (not those of submodules), in registration order."""
    return [name for name, _ in model.named_parameters(recurse=False)]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding the weight ``name`` (dotted: ``attention.W_K``) and the weight's own name."""
    path, _, leaf = name.rpartition(".")
    try:
        return (model.get_submodule(path) if path else model), leaf
    except AttributeError:
        return model, name


def apply_constraints(
    model: nn.Module,
    constraints: Mapping[str, str],
    generator: torch.Generator | None = None,
    *,
    split_all: bool = True,
) -> nn.Module:
    """Put the weights ``constraints`` names on their manifolds (in place; returns ``model``).

    Every constrained (L, H, a, b) weight is split into transposed blocks (b, a) started at a random point of
    the manifold drawn from ``generator``; with ``split_all`` the other 4-D weights are split too (untransposed,
    values kept), so that every weight is a matrix. ``model.constraints`` records the declaration.

    Raises:
        ValueError: an unknown weight or manifold, or a weight that is not (L, H, a, b) with a ≤ b.
    """
    if dict(getattr(model, "constraints", {})) == dict(constraints):
        return model  # a model that declares its own constraints (e.g. the spectral models' basis U)
    weights = [name for name, _ in model.named_parameters()]
    for name, manifold in constraints.items():
        if name not in weights:
            raise ValueError(f"constraint on {name!r}: the model has no such weight; its weights: {', '.join(weights)}")
        if manifold not in MANIFOLDS:
            raise ValueError(f"constraint on {name!r}: unknown manifold {manifold!r}; one of {', '.join(MANIFOLDS)}")
        w = model.get_parameter(name)
        if w.ndim != 4 or w.shape[-2] > w.shape[-1]:
            raise ValueError(f"constraint on {name!r}: needs an (L, H, k, p) weight with k <= p (so Wᵀ is tall), "
                             f"got shape {tuple(w.shape)}")  # fmt: skip
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    owners = dict.fromkeys(_owner(model, name)[0] for name in constraints)
    prefix = {owner: path for path, owner in model.named_modules() if owner in owners}
    for owner, path in prefix.items():
        for leaf in top_level_weights(owner):
            name = f"{path}.{leaf}" if path else leaf
            on = name in constraints
            if not (on or (split_all and getattr(owner, leaf).ndim == 4)):
                continue
            blocks = split_blocks(owner, leaf, transpose=on)
            if on:
                with torch.no_grad():
                    for p in blocks.blocks:
                        p.copy_(manifold_point(constraints[name], tuple(p.shape), generator=gen))
    model.constraints = dict(constraints)
    return model


def manifold_of(model: nn.Module, param_name: str) -> str:
    """The manifold the parameter ``param_name`` (a name of ``model.named_parameters()``) lives on."""
    for name, manifold in dict(getattr(model, "constraints", {})).items():
        if param_name == name or param_name.startswith(name + "."):
            return manifold
    return "euclidean"


def param_groups(model: nn.Module, manifold_aware: bool = True) -> list[dict]:
    """The trainable parameters of ``model`` as optimizer groups: one group per manifold (in the order the
    constraints are declared), then the unconstrained ones. Without ``manifold_aware`` (an optimizer that takes
    no ``manifold`` group option) the constrained weights are trained as ordinary ones, in one group.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    constraints = dict(getattr(model, "constraints", {}))
    if not constraints:
        return [{"params": [p for _, p in params]}]
    groups = []
    for manifold in dict.fromkeys(constraints.values()):
        on = [p for n, p in params if manifold_of(model, n) == manifold]
        if on:
            groups.append({"params": on, "manifold": manifold} if manifold_aware else {"params": on})
    rest = [p for n, p in params if manifold_of(model, n) == "euclidean"]
    if rest:
        groups.append({"params": rest})
    if not manifold_aware:
        groups = [{"params": [p for g in groups for p in g["params"]]}]
    return groups
