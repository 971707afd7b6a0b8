"""Gradient descent and heavy-ball momentum in the global tangent space (Brantner 2023).

The comparison optimizers of Brantner (2023), *Generalizing Adam to manifolds for efficiently training
transformers* (arXiv 2305.16901): GeometricMachineLearning.jl's ``GradientOptimizer`` and
``MomentumOptimizer``, in the same global-section framework as :class:`~icl.optim.manifold_adam.ManifoldAdam`.
"""

from __future__ import annotations

import torch

from icl.optim.manifold_optimizer import GlobalSectionOptimizer, check_nonneg

__all__ = ["ManifoldSGD"]


class ManifoldSGD(GlobalSectionOptimizer):
    r"""Manifold gradient descent (``momentum=0``) or momentum in 𝔤^hor (Brantner 2023).

    With B = global_rep(Λ, rgrad(Y, ∇L)) and a buffer b ∈ 𝔤^hor (started at b = B, as torch's SGD):

    .. code-block:: text

        b ← μ b + B        W = −η b        Λ ← Λ · Retraction(W),  Y ← ΛE

    The buffer, like Adam's moments, is not transported (elements of 𝔤^hor are invariant).  Euclidean
    parameters get exactly ``torch.optim.SGD(lr, momentum)`` (dampening 0, no Nesterov); weight decay is
    decoupled (θ ← θ − η·λ·θ) and applies to Euclidean parameters only (a no-op on Stiefel).

    Args:
        params: parameters or groups (a group may set ``manifold``, ``retraction``, ``geometry_dtype``,
            ``reorthonormalize_every``, ``manifold_tol``).
        lr: learning rate η >= 0.
        momentum: μ >= 0.
        weight_decay: decoupled weight decay on Euclidean parameters.
        maximize: ascend instead of descend.
        seed: seed of the generator drawing the sections.
        generator: explicit generator for the sections.

    Raises:
        ValueError: naming the argument.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, seed=seed, generator=generator)

    def _validate_hyper(self, group: dict) -> None:
        check_nonneg("momentum", group["momentum"])
        if not isinstance(group["maximize"], bool):
            raise ValueError(f"maximize must be a bool, got {group['maximize']!r}")

    _coord_state_keys = ("momentum_buffer",)

    def _euclidean_update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        state["step"] += 1
        if group["weight_decay"] != 0:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        mu = group["momentum"]
        if mu != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = torch.clone(grad).detach()
            else:
                buf.mul_(mu).add_(grad)
            grad = buf
        p.add_(grad, alpha=-group["lr"])

    def _skew_exact(self, group: dict) -> bool:
        return True  # W = −η·b is linear in the exactly skew coordinates

    def _velocity(self, state, C, step, group, uniform, step_views, work):
        """W = −η·b with b ← μb + C (b starts at 0, so its first value is C, as torch's SGD)."""
        mu = group["momentum"]
        if mu != 0:
            C = state["momentum_buffer"].mul_(mu).add_(C)
        return C * (-group["lr"]) if work is None else torch.mul(C, -group["lr"], out=work["W"])
