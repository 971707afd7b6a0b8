"""Projection-based Riemannian Adam: the baseline that Brantner's global-section Adam is compared with.

This is the ambient-space construction of geoopt / McTorch (Bécigneul & Ganea 2019): the Euclidean
gradient is projected onto the tangent space, the moments live in ℝ^{N×p} and are moved to the new point by
projection (a vector transport), and the point is retracted by a sign-fixed QR.  It is O(Np²) per step and
needs no section.  Compare with Brantner (2023), *Generalizing Adam to manifolds for efficiently training
transformers* (arXiv 2305.16901), implemented in :mod:`icl.optim.manifold_adam`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import Optimizer

from icl.optim.manifold_optimizer import check_betas, check_lr, check_nonneg
from icl.optim.manifolds import get_manifold, qr_sign_fixed

__all__ = ["ProjectedRiemannianAdam"]

_SUPPORTED = ("euclidean", "stiefel", "grassmann")


def _proj(manifold: str, Y: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Orthogonal (Euclidean-metric) projection onto T_Y: U − Y·sym(YᵀU) (Stiefel), U − YYᵀU (Grassmann)."""
    YtU = Y.T @ U
    if manifold == "stiefel":
        YtU = 0.5 * (YtU + YtU.T)
    return U - Y @ YtU


class ProjectedRiemannianAdam(Optimizer):
    r"""Riemannian Adam by projection, QR retraction and transport by projection (a baseline).

    For a Stiefel or Grassmann parameter Y, at step t:

    .. code-block:: text

        r = P_Y(∇L)                          (tangent projection, Euclidean metric)
        m ← β₁ m + (1 − β₁) r                (ambient N×p)
        v ← β₂ v + (1 − β₂) r ⊙ r            (elementwise; or ‖r‖²_F per matrix with second_moment="scalar")
        d = P_Y( (m/(1 − β₁ᵗ)) ⊘ (√(v/(1 − β₂ᵗ)) + ε) )
        Y ← qf(Y − η d)                      (sign-fixed QR retraction)
        m ← P_Y(m)                           (transport by projection)

    ``second_moment="scalar"`` gives geoopt's RiemannianAdam (one adaptive rate per matrix). Euclidean
    parameters get Adam with decoupled weight decay, as :class:`~icl.optim.manifold_adam.ManifoldAdam`.

    Args:
        params: parameters or groups; a group may set ``manifold`` ∈ {"euclidean", "stiefel", "grassmann"}.
        lr, betas, eps, weight_decay: as in Adam(W); weight decay only on Euclidean parameters.
        second_moment: "elementwise" (default) or "scalar".

    Raises:
        ValueError: naming the argument (including ``manifold="symplectic_stiefel"``, unsupported here).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        second_moment: str = "elementwise",
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            manifold="euclidean",
            second_moment=second_moment,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_lr(group["lr"])
        check_betas(group["betas"])
        check_nonneg("eps", group["eps"])
        check_nonneg("weight_decay", group["weight_decay"])
        if group["second_moment"] not in ("elementwise", "scalar"):
            raise ValueError(f"second_moment must be 'elementwise' or 'scalar', got {group['second_moment']!r}")
        m = get_manifold(group["manifold"])
        if m.name not in _SUPPORTED:
            raise ValueError(f"manifold must be one of {_SUPPORTED} for ProjectedRiemannianAdam, got {m.name!r}")
        group["manifold"] = m.name
        if m.name != "euclidean":
            for i, p in enumerate(group["params"]):
                m.validate(f"params[{i}]", p)
                tol = 1e-8 if p.dtype == torch.float64 else 1e-4
                if m.check(p) > tol:
                    raise ValueError(f"params[{i}] is not on the {m.name} manifold (violation {m.check(p):.2e})")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            manifold = group["manifold"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = (
                        torch.zeros_like(p)
                        if group["second_moment"] == "elementwise" or (manifold == "euclidean")
                        else p.new_zeros(())
                    )
                state["step"] += 1
                step = state["step"].item()
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                bc1 = 1 - beta1**step
                bc2_sqrt = (1 - beta2**step) ** 0.5
                if manifold == "euclidean":
                    g = p.grad
                    if group["weight_decay"] != 0:
                        p.mul_(1 - lr * group["weight_decay"])
                    exp_avg.lerp_(g, 1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
                    p.addcdiv_(exp_avg, denom, value=-lr / bc1)
                    continue
                r = _proj(manifold, p, p.grad)
                exp_avg.lerp_(r, 1 - beta1)
                if exp_avg_sq.ndim == 0:
                    exp_avg_sq.mul_(beta2).add_((r * r).sum(), alpha=1 - beta2)
                else:
                    exp_avg_sq.mul_(beta2).addcmul_(r, r, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
                d = _proj(manifold, p, exp_avg / denom)
                p.copy_(qr_sign_fixed(p - (lr / bc1) * d))
                exp_avg.copy_(_proj(manifold, p, exp_avg))
        return loss
