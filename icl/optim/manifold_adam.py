"""Adam on Stiefel, Grassmann and symplectic Stiefel manifolds via global sections.

Brantner (2023), *Generalizing Adam to manifolds for efficiently training transformers*, arXiv 2305.16901;
the algorithm as implemented in GeometricMachineLearning.jl / GeometricOptimizers.jl: Adam in the global
tangent space, Cayley/geodesic retractions, the section update and one step as Brantner describes them.
"""

from __future__ import annotations

import torch

from icl.optim.manifold_optimizer import GlobalSectionOptimizer, check_betas, check_nonneg

__all__ = ["ManifoldAdam"]


class ManifoldAdam(GlobalSectionOptimizer):
    r"""Adam whose moments live in the global tangent space 𝔤^hor (Brantner 2023).

    For a manifold parameter Y with section Λ (ΛE = Y, drawn once and carried along), at step t:

    .. code-block:: text

        Δ   = rgrad(Y, ∇L)                       (Riemannian gradient)
        B   = global_rep(Λ, Δ) ∈ 𝔤^hor           (compact coordinates, e.g. strict-lower(A) and B for Stiefel)
        m   ← β₁ m + (1 − β₁) B                  (elementwise on the coordinates)
        v   ← β₂ v + (1 − β₂) B ⊙ B
        W   = −η · (m / (1 − β₁ᵗ)) ⊘ (√(v / (1 − β₂ᵗ)) + ε)     (ε after the square root)
        Λ   ← Λ · Retraction(W)                  (Cayley or exp, low-rank; moments are *not* transported:
        Y   ← ΛE                                  an element of 𝔤^hor is invariant under the group action)

    so the first step is W = −η·sign(B) up to ε.  On the symplectic Stiefel manifold B is the coordinate
    gradient of the pulled-back loss (equal to global_rep(Λ, rgrad) on Stiefel/Grassmann), see
    :meth:`icl.optim.manifolds.SymplecticStiefel.grad_rep`.
    For Euclidean parameters (the default ``manifold``) the update is exactly ``torch.optim.Adam``
    (``weight_decay=0``) or ``torch.optim.AdamW`` (decoupled decay),
    operation for operation.

    Weight decay is decoupled (θ ← θ − η·λ·θ) and applies to **Euclidean parameters only**: on Stiefel and
    Grassmann it would be a no-op anyway, since rgrad(Y, λY) = λY − Y(λY)ᵀY = 0 (Brantner 2023), and
    it is ignored on manifold parameters.

    Note that the B-block coordinates are coordinates in the random basis Y_⊥ of the section, so results
    depend (at O(η²) per step) on the section's seed; the same ``seed`` gives the same trajectory.

    Args:
        params: parameters or groups; a group may set ``manifold`` and the options of
            :class:`~icl.optim.manifold_optimizer.GlobalSectionOptimizer` (``retraction``,
            ``geometry_dtype``, ``reorthonormalize_every``, ``manifold_tol``).
        lr: learning rate η >= 0.
        betas: (β₁, β₂) in [0, 1); default (0.9, 0.99) as in the paper's code.
        eps: ε >= 0, added after the square root.
        weight_decay: decoupled weight decay on Euclidean parameters.
        maximize: ascend instead of descend.
        seed: seed of the generator drawing the sections.
        generator: explicit generator for the sections (instead of ``seed``).

    Raises:
        ValueError: naming the argument (negative lr/eps/weight_decay, betas outside [0, 1), unknown
            manifold or retraction, a manifold parameter of the wrong shape or off the manifold).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, seed=seed, generator=generator)

    def _validate_hyper(self, group: dict) -> None:
        check_betas(group["betas"])
        check_nonneg("eps", group["eps"])
        if not isinstance(group["maximize"], bool):
            raise ValueError(f"maximize must be a bool, got {group['maximize']!r}")

    def _init_coord_state(self, state: dict, dim: int, like: torch.Tensor) -> None:
        state["exp_avg"] = like.new_zeros(dim)
        state["exp_avg_sq"] = like.new_zeros(dim)

    def _euclidean_update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        # The same sequence of operations as torch.optim.Adam's single-tensor path (torch 2.x).
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        step = state["step"].item()
        if wd != 0:
            p.mul_(1 - lr * wd)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad.conj(), value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        p.addcdiv_(exp_avg, denom, value=-step_size)

    def _velocity(self, state: dict, coords: torch.Tensor, group: dict) -> torch.Tensor:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        step = state["step"].item()
        exp_avg.lerp_(coords, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(coords, coords, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        return torch.div(exp_avg, denom).mul_(-lr / bias_correction1)
