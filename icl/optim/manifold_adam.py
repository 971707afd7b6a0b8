"""Adam on Stiefel, Grassmann and symplectic Stiefel manifolds via global sections.

Brantner (2023), *Generalizing Adam to manifolds for efficiently training transformers*, arXiv 2305.16901,
as implemented in GeometricMachineLearning.jl / GeometricOptimizers.jl: Adam's moments live in the global
tangent space 𝔤^hor, the update goes through the group.
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam

from icl.optim import manifold_kernels
from icl.optim.manifold_optimizer import GlobalSectionOptimizer, check_betas, check_nonneg
from icl.optim.manifolds import Stiefel
from learned_optimizers.fused import enabled as fused_enabled

__all__ = ["ManifoldAdam"]

_FUSED_DEVICES = ("cpu", "cuda")


class ManifoldAdam(GlobalSectionOptimizer):
    r"""Adam whose moments live in the global tangent space 𝔤^hor (Brantner 2023).

    For a manifold parameter Y with section Λ (ΛE = Y, drawn once and carried along), at step t:

    .. code-block:: text

        Δ   = rgrad(Y, ∇L)                       (Riemannian gradient)
        B   = global_rep(Λ, Δ) ∈ 𝔤^hor           (coordinates; Stiefel: the p×N matrix [A | Bᵀ] = GᵀΛ, skewed)
        m   ← β₁ m + (1 − β₁) B                  (elementwise on the coordinates)
        v   ← β₂ v + (1 − β₂) B ⊙ B
        W   = −η · (m / (1 − β₁ᵗ)) ⊘ (√(v / (1 − β₂ᵗ)) + ε)     (ε after the square root)
        Λ   ← Λ · Retraction(W)                  (Cayley or exp, low-rank; moments are *not* transported:
        Y   ← ΛE                                  an element of 𝔤^hor is invariant under the group action)

    so the first step is W = −η·sign(B) up to ε.  On the symplectic Stiefel manifold B is the coordinate
    gradient of the pulled-back loss (equal to global_rep(Λ, rgrad) on Stiefel/Grassmann), see
    :meth:`icl.optim.manifolds.SymplecticStiefel.grad_rep`.
    For Euclidean parameters (the default ``manifold``) the update is exactly ``torch.optim.Adam``
    (``weight_decay=0``) or ``torch.optim.AdamW`` (decoupled decay), operation for operation.

    Weight decay is decoupled (θ ← θ − η·λ·θ) and applies to **Euclidean parameters only**: on Stiefel and
    Grassmann it would be a no-op anyway, since rgrad(Y, λY) = λY − Y(λY)ᵀY = 0, and it is ignored on
    manifold parameters.

    The manifold parameters of a group that share shape, dtype and device are stepped as one batch (one
    product GᵀΛ, one fused Adam update, batched p×p inverses; see
    :mod:`icl.optim.manifold_optimizer`); on CPU the whole Cayley step of a Stiefel or Grassmann batch is one C
    call (:class:`icl.optim.manifold_kernels.AdamStep`, the same update to rounding); the Euclidean ones go
    through ``torch.optim.adam.adam``, i.e.
    torch's own single-tensor, foreach or fused path as ``torch.optim.Adam`` would choose it.

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
            manifold or retraction, a manifold parameter of the wrong shape or off the manifold); from
            ``load_state_dict``, a state_dict written by another optimizer or for another manifold.
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

    _coord_state_keys = ("exp_avg", "exp_avg_sq")
    _even_state_keys = ("exp_avg_sq",)

    def _euclidean_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """torch.optim.Adam (weight_decay 0) or AdamW (decoupled decay), through torch's functional adam."""
        grads, exp_avgs, exp_avg_sqs, steps = [], [], [], []
        for p in params:
            state = self.state[p]
            if "exp_avg" not in state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        adam(
            params, grads, exp_avgs, exp_avg_sqs, [], steps,
            has_complex=any(torch.is_complex(p) for p in params), decoupled_weight_decay=True,
            amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=group["maximize"],
        )  # fmt: skip

    def _skew_exact(self, group: dict) -> bool:
        # C's A block is exactly skew, so m's is and v's is symmetric, and the update is odd in m: W's A block
        # is exactly skew, its diagonal −η·0/(0 + ε) = 0, unless ε = 0 (0/0)
        return group["eps"] > 0

    def _whole_step(self, m, L, state, count, grads, params, group, work) -> bool:
        """The whole Cayley step of a Stiefel or Grassmann bucket in one C call (:class:`manifold_kernels.AdamStep`,
        bound to the bucket at its first step) where it can run: CPU, float32/float64, gradients and parameters
        of the geometry dtype in a layout it reads, fused kernels on and no ``torch.compile`` tracing."""
        call = work.get("adam_step")
        if call is None:  # (the bucket's first full step: what can not change while the bucket lives)
            call = work["adam_step"] = isinstance(m, Stiefel) and manifold_kernels.step_usable(L) and (
                manifold_kernels.AdamStep(
                    L, state["exp_avg"], state["exp_avg_sq"], count, p=params[0].shape[1], skew=m.has_skew
                )
            )
        run = self._prepared(call, group, grads, params)
        if run is None:
            return False
        run()
        torch.autograd.graph.increment_version(params)  # (written in place, as torch's optimizers do)
        return True

    def _fast_call(self, bucket, group, grads):
        """The bucket's whole-step kernel, its arguments written for these gradients (:meth:`_fast_step`)."""
        return self._prepared(bucket.work.get("adam_step") if bucket.work is not None else None, group, grads,
                              bucket.params)  # fmt: skip

    @staticmethod
    def _prepared(call, group, grads, params):
        """``call`` (a bucket's AdamStep, or None/False where it has none) with its arguments written, ready to run;
        None where the kernel may not run: another retraction, kernels off, torch.compile tracing, or a layout it
        does not read."""
        if not call or group["retraction"] != "cayley" or not fused_enabled() or torch.compiler.is_compiling():
            return None
        if not call.prepare(grads, params, group["lr"], group["betas"], group["eps"], group["maximize"]):
            return None
        return call.run

    def _velocity(self, state, C, step, group, uniform, step_views, work):
        """W = −η·m̂ ⊘ (√v̂ + ε) for a bucket, the moments updated in place, as one fused Adam update.

        torch's fused Adam kernel applied to a zero "parameter" W with "gradient" C leaves W = −η·m̂/(√v̂ + ε)
        in one pass; with equal step counts the whole bucket is one tensor, otherwise one per member.
        """
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        W = torch.zeros_like(C) if work is None else work["W"].zero_()
        if C.device.type in _FUSED_DEVICES:
            if uniform:
                if work is None:
                    Ws, Cs, ms, vs, steps = [W], [C], [m], [v], step_views[:1]
                else:  # (the lists are made once per bucket)
                    if "adam" not in work or work["adam"][1][0] is not C or work["adam"][2][0] is not m:
                        work["adam"] = [W], [C], [m], [v], step_views[:1]
                    Ws, Cs, ms, vs, steps = work["adam"]
            else:
                Ws, Cs, ms, vs = (list(t.unbind(0)) for t in (W, C, m, v))
                steps = step_views
            torch._fused_adam_(
                Ws, Cs, ms, vs, [], steps, lr=lr, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=eps,
                amsgrad=False, maximize=False,
            )  # fmt: skip
            return W
        shape = (-1,) + (1,) * (C.ndim - 1)
        t = step.to(C.dtype).view(shape)
        m.lerp_(C, 1 - beta1)
        v.mul_(beta2).addcmul_(C, C, value=1 - beta2)
        torch.sqrt(v, out=W).div_(torch.sqrt(1 - torch.pow(beta2, t))).add_(eps)
        return torch.div(m, W, out=W).mul_(-lr / (1 - torch.pow(beta1, t)))
