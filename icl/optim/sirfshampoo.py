"""SIRFShampoo: structured inverse- and root-free Shampoo (Lin et al., ICML 2024), dense Kronecker factors."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from icl.optim._common import (
    DtypePreservingOptimizer,
    check_number,
    check_positive_int,
    state_dtype,
)


class SIRFShampoo(DtypePreservingOptimizer):
    r"""Inverse- and root-free Kronecker-factored optimizer (IF-Shampoo / SIRFShampoo).

    Paper: Lin, Dangel, Eschenhagen, Bae, Turner, Makhzani (ICML 2024), "Can we remove the square-root in
    adaptive gradient methods? A second-order perspective", arXiv:2402.03496. Reference code:
    ``f-dangel/sirfshampoo`` (``SIRFShampoo``, dense structure, ``PerParameter`` grouping), whose
    argument names and defaults are kept here (``weight_decay`` is the package's ``kappa``).

    **Matrix parameters** :math:`\theta \in \mathbb{R}^{d_o \times d_i}` (two axes of size > 1, each at most
    ``max_factor_dim``) keep factors :math:`K_o, K_i` (initialised to :math:`I`) and Riemannian momenta
    :math:`m_o, m_i` (initialised to 0). Every ``T``-th step (starting with the first), with the *old*
    factors, batch size :math:`B`, damping :math:`\lambda` and :math:`H = K_o^\top G K_i`:

    .. math::
        M_o &= \tfrac12\big[\lambda\, \tfrac{\mathrm{tr}(K_i^\top K_i)}{d_i} K_o^\top K_o
               + \tfrac{B}{d_i} H H^\top - I\big], \qquad
        M_i = \tfrac12\big[\lambda\, \tfrac{\mathrm{tr}(K_o^\top K_o)}{d_o} K_i^\top K_i
               + \tfrac{B}{d_o} H^\top H - I\big] \\
        m &\leftarrow \alpha_2\, m + (1-\alpha_2)\, M \\
        K &\leftarrow K - \frac{\beta_2}{\max(1, \|m\|_F)}\, K m

    (a first-order truncation of :math:`K \exp(-\beta_2 m)`), then with the new factors

    .. math::
        U = K_o K_o^\top\, G\, K_i K_i^\top .

    Only matrix products, traces and norms are used: no inverse, no root, no eigendecomposition, which is
    why the factors can be kept in bfloat16. :math:`K K^\top` tracks, without inversion, the inverse of a
    Kronecker factor of the :math:`B`-scaled empirical Fisher plus damping.

    **Other parameters** (vectors, scalars, tensors of order > 2, matrices with a size-1 axis or an axis
    longer than ``max_factor_dim``) fall back to the root-free diagonal preconditioner of
    :class:`icl.optim.RFRMSProp` with the same hyper-parameters:
    :math:`s \leftarrow (1-\beta_2)s + \beta_2 B g^2` (:math:`s_0 = 1`), :math:`U = g / (s + \lambda)`.

    **Parameter step** (both cases): :math:`U \leftarrow U + \kappa\theta`,
    :math:`b \leftarrow \alpha_1 b + U` (heavy ball, :math:`b_0 = 0`),
    :math:`\theta \leftarrow \theta - \eta b`.

    Differences from the package, all deliberate: parameters without gradient are skipped (the package
    crashes); ``step`` accepts a closure and returns its loss; all state lives in ``self.state`` as plain
    tensors, so ``state_dict`` loads with ``torch.load(..., weights_only=True)`` and is moved to the
    parameter's device on load; ``batch_size`` is a number, not a forward hook on a model; the package's
    rescaling of :math:`K` before the products (mathematically neutral, for fp16 range) is omitted.

    Args:
        params: parameters or parameter groups.
        lr: parameter learning rate :math:`\eta` (> 0; "beta1" in the paper).
        beta2: preconditioner learning rate :math:`\beta_2` (> 0).
        alpha1: heavy-ball momentum :math:`\alpha_1` in [0, 1).
        alpha2: Riemannian momentum :math:`\alpha_2` in [0, 1).
        lam: damping :math:`\lambda` (>= 0).
        weight_decay: :math:`\kappa` (>= 0), added to :math:`U` before the momentum.
        batch_size: :math:`B` (> 0).
        T: update the Kronecker factors every ``T`` steps (integer >= 1).
        preconditioner_dtype: dtype of :math:`K, m` (``None``: the parameter's dtype, so bfloat16 for
            bfloat16 parameters). Momentum and the diagonal :math:`s` are float32 for 16-bit parameters.
        max_factor_dim: largest axis given a dense factor (integer >= 1).
        maximize: maximise the objective instead.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        beta2: float = 0.01,
        alpha1: float = 0.9,
        alpha2: float = 0.5,
        lam: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: float = 1,
        T: int = 1,
        *,
        preconditioner_dtype: torch.dtype | None = None,
        max_factor_dim: int = 4096,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            beta2=beta2,
            alpha1=alpha1,
            alpha2=alpha2,
            lam=lam,
            weight_decay=weight_decay,
            batch_size=batch_size,
            T=T,
            preconditioner_dtype=preconditioner_dtype,
            max_factor_dim=max_factor_dim,
            maximize=maximize,
        )
        self._validate(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def _validate(g: dict[str, Any]) -> None:
        check_number("lr", g["lr"])
        check_number("beta2", g["beta2"], low_open=True)
        check_number("alpha1", g["alpha1"], high=1.0)
        check_number("alpha2", g["alpha2"], high=1.0)
        check_number("lam", g["lam"])
        check_number("weight_decay", g["weight_decay"])
        check_number("batch_size", g["batch_size"], low_open=True)
        check_positive_int("T", g["T"])
        check_positive_int("max_factor_dim", g["max_factor_dim"])
        dt = g["preconditioner_dtype"]
        if dt is not None and not (isinstance(dt, torch.dtype) and dt.is_floating_point):
            raise ValueError(f"preconditioner_dtype must be None or a floating torch.dtype, got {dt!r}")
        if not isinstance(g["maximize"], bool):
            raise ValueError(f"maximize must be a bool, got {g['maximize']!r}")

    _LATER_OPTIONS = {"max_factor_dim": 4096, "maximize": False}

    @staticmethod
    def _is_matrix(p: torch.Tensor, max_dim: int) -> bool:
        return p.ndim == 2 and min(p.shape) > 1 and max(p.shape) <= max_dim

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[p]
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        sdt = state_dtype(p)
        if group["alpha1"] != 0:
            state["momentum_buffer"] = torch.zeros_like(p, dtype=sdt)
        if self._is_matrix(p, group["max_factor_dim"]):
            fdt = group["preconditioner_dtype"] or p.dtype
            for name, d in (("out", p.shape[0]), ("in", p.shape[1])):
                state[f"K_{name}"] = torch.eye(d, dtype=fdt, device=p.device)
                state[f"m_{name}"] = torch.zeros(d, d, dtype=fdt, device=p.device)
        else:
            state["s"] = torch.ones_like(p, dtype=sdt)
        return state

    @staticmethod
    def _update_factors(state: dict[str, Any], G: torch.Tensor, group: dict[str, Any]) -> None:
        Ko, Ki, mo, mi = state["K_out"], state["K_in"], state["m_out"], state["m_in"]
        d_out, d_in = G.shape
        B, lam, alpha2 = group["batch_size"], group["lam"], group["alpha2"]
        H = Ko.T @ G @ Ki
        tr_out = Ko.square().sum() / d_out  # tr(K^T K) / d
        tr_in = Ki.square().sum() / d_in
        eye_out = torch.eye(d_out, dtype=G.dtype, device=G.device)
        eye_in = torch.eye(d_in, dtype=G.dtype, device=G.device)
        M_out = 0.5 * (lam * tr_in * (Ko.T @ Ko) + (B / d_in) * (H @ H.T) - eye_out)
        M_in = 0.5 * (lam * tr_out * (Ki.T @ Ki) + (B / d_out) * (H.T @ H) - eye_in)
        for K, m, M in ((Ko, mo, M_out), (Ki, mi, M_in)):
            if alpha2 == 0:
                m.copy_(M)
            else:
                m.mul_(alpha2).add_(M, alpha=1.0 - alpha2)
            wide = torch.promote_types(m.dtype, torch.float32)  # the norm of a bf16 m in float32
            norm = m.to(wide).square().sum().sqrt().clamp(min=1.0)
            K.sub_((K @ m) * (group["beta2"] / norm).to(K.dtype))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one step; ``closure`` (optional) re-evaluates the loss, which is returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SIRFShampoo does not support sparse gradients")
                state = self.state[p] or self._init_state(p, group)
                state["step"] += 1
                t = int(state["step"])
                if "K_out" in state:
                    Ko, Ki = state["K_out"], state["K_in"]
                    G = p.grad.to(Ko.dtype)
                    if group["maximize"]:
                        G = -G
                    if (t - 1) % group["T"] == 0:
                        self._update_factors(state, G, group)
                    U = (Ko @ (Ko.T @ G)) @ (Ki @ Ki.T)
                    U = U.to(state_dtype(p))
                else:
                    s = state["s"]
                    g = p.grad.to(s.dtype)
                    if group["maximize"]:
                        g = -g
                    s.mul_(1.0 - group["beta2"]).addcmul_(g, g, value=group["beta2"] * group["batch_size"])
                    U = g / (s + group["lam"])
                if group["weight_decay"] != 0:
                    U.add_(p.to(U.dtype), alpha=group["weight_decay"])
                if group["alpha1"] != 0:
                    if "momentum_buffer" not in state:  # momentum switched on mid-training
                        state["momentum_buffer"] = torch.zeros_like(U)
                    U = state["momentum_buffer"].mul_(group["alpha1"]).add_(U)
                if p.dtype == U.dtype:
                    p.add_(U, alpha=-group["lr"])
                else:
                    p.copy_(p.to(U.dtype).add_(U, alpha=-group["lr"]))
        return loss
