"""Outer-loop optimizers: manifold Adam (Brantner), FAdam, root-free methods, SIRFShampoo, and a name registry.

``OPTIMIZERS`` maps a name to a ``torch.optim.Optimizer`` class; every entry is built by
``OPTIMIZERS[name](params, lr=...)`` with all other arguments at their defaults, and gets the generic
property tests of ``tests/test_optim_properties.py``. To register a new optimizer add one line to it.
"""

from __future__ import annotations

from typing import Any

import torch

from icl.optim.fadam import FAdam
from icl.optim.manifold_adam import ManifoldAdam
from icl.optim.manifold_sgd import ManifoldSGD
from icl.optim.manifolds import manifold_point, project_to_manifold
from icl.optim.riemannian_adam import ProjectedRiemannianAdam
from icl.optim.root_free import RFAdamW, RFRMSProp
from icl.optim.sirfshampoo import SIRFShampoo

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "fadam": FAdam,
    "rf_rmsprop": RFRMSProp,
    "rf_adamw": RFAdamW,
    "sirfshampoo": SIRFShampoo,
    "manifold_adam": ManifoldAdam,
    "manifold_sgd": ManifoldSGD,
    "riemannian_adam": ProjectedRiemannianAdam,
}


def make_optimizer(name: str, params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` in :data:`OPTIMIZERS` on ``params`` with ``kwargs``.

    Raises:
        ValueError: if ``name`` is not registered (the message lists the valid names).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[name](params, **kwargs)


__all__ = [
    "OPTIMIZERS",
    "FAdam",
    "ManifoldAdam",
    "ManifoldSGD",
    "ProjectedRiemannianAdam",
    "RFAdamW",
    "RFRMSProp",
    "SIRFShampoo",
    "make_optimizer",
    "manifold_point",
    "project_to_manifold",
]
