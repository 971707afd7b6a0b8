"""Root-free diagonal adaptive methods: RF-RMSProp and RF-AdamW (Lin et al., ICML 2024)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from icl.optim._common import DtypePreservingOptimizer, check_betas, check_number, state_dtype


def _grad(p: torch.Tensor, dtype: torch.dtype, maximize: bool) -> torch.Tensor:
    if p.grad.is_sparse:
        raise RuntimeError("root-free optimizers do not support sparse gradients")
    g = p.grad.to(dtype)  # a new tensor whenever the dtype changes; never modified in place below
    return -g if maximize else g


def _apply(p: torch.Tensor, update: torch.Tensor, lr: float) -> None:
    """p <- p - lr * update, rounding once into a 16-bit parameter."""
    if p.dtype == update.dtype:
        p.add_(update, alpha=-lr)
    else:
        p.copy_(p.to(update.dtype).add_(update, alpha=-lr))


class _RootFree(DtypePreservingOptimizer):
    _LATER_OPTIONS = {"maximize": False}

    def _closure(self, closure: Callable[[], float] | None) -> float | None:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()


class RFRMSProp(_RootFree):
    r"""Root-free RMSProp (RF-RMSProp) of Lin et al. 2024.

    Paper: Lin, Dangel, Eschenhagen, Bae, Turner, Makhzani (ICML 2024), "Can we remove the square-root in
    adaptive gradient methods? A second-order perspective", arXiv:2402.03496; reference code
    yorkerlin/remove-the-square-root ``myoptim/rfrmsprop.py``.

    With batch size :math:`B`, preconditioner learning rate :math:`\beta_2` (``lr_cov``), damping
    :math:`\lambda`, weight decay :math:`\kappa`, momentum :math:`\mu` and :math:`s_0 = 1`:

    .. math::
        s_t &= (1-\beta_2)\, s_{t-1} + \beta_2\, B\, g_t^2 \\
        u_t &= g_t / (s_t + \lambda) + \kappa\, \theta_{t-1} \\
        b_t &= \mu\, b_{t-1} + u_t \qquad (b_0 = 0;\ b_t = u_t \text{ when } \mu = 0) \\
        \theta_t &= \theta_{t-1} - \eta\, b_t

    There is no square root and no bias correction: :math:`s` starts at 1, so the first steps are SGD-like
    and :math:`s` moves towards :math:`B g^2` on a time scale :math:`1/\beta_2`. :math:`B g^2` estimates a
    batch-size-independent (per-example) Fisher for a loss averaged over :math:`B` samples, which is why
    :math:`B` is a hyper-parameter. The step is invariant to rescaling the parameters but scales as
    :math:`1/c` when the loss is multiplied by :math:`c`. ``p.grad`` is never modified.

    Args:
        params: parameters or parameter groups.
        lr: :math:`\eta` (>= 0).
        lr_cov: :math:`\beta_2` in (0, 1]; AdamW's ``beta2`` corresponds to ``1 - lr_cov``.
        damping: :math:`\lambda` (>= 0), added to :math:`s` (AdamW's ``eps`` plays this role).
        momentum: heavy-ball :math:`\mu` in [0, 1).
        weight_decay: :math:`\kappa` (>= 0), added after preconditioning (it enters the momentum).
        batch_size: :math:`B` (> 0); 1 switches the scaling off.
        s_init: :math:`s_0` (> 0).
        maximize: maximise the objective instead.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        lr_cov: float = 0.01,
        damping: float = 1e-4,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        batch_size: float = 1,
        *,
        s_init: float = 1.0,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            lr_cov=lr_cov,
            damping=damping,
            momentum=momentum,
            weight_decay=weight_decay,
            batch_size=batch_size,
            s_init=s_init,
            maximize=maximize,
        )
        self._validate(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def _validate(g: dict[str, Any]) -> None:
        check_number("lr", g["lr"])
        check_number("lr_cov", g["lr_cov"], low_open=True, high=1.0, high_open=False)
        check_number("damping", g["damping"])
        check_number("momentum", g["momentum"], high=1.0)
        check_number("weight_decay", g["weight_decay"])
        check_number("batch_size", g["batch_size"], low_open=True)
        check_number("s_init", g["s_init"], low_open=True)
        if not isinstance(g["maximize"], bool):
            raise ValueError(f"maximize must be a bool, got {g['maximize']!r}")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one step; ``closure`` (optional) re-evaluates the loss, which is returned."""
        loss = self._closure(closure)
        for group in self.param_groups:
            beta2, lam = group["lr_cov"], group["damping"]
            mu, kappa = group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["s"] = torch.full_like(p, group["s_init"], dtype=state_dtype(p))
                    if mu != 0:
                        state["momentum_buffer"] = torch.zeros_like(p, dtype=state_dtype(p))
                s = state["s"]
                state["step"] += 1
                g = _grad(p, s.dtype, group["maximize"])
                s.mul_(1.0 - beta2).addcmul_(g, g, value=beta2 * group["batch_size"])
                u = g / (s + lam)
                if kappa != 0:
                    u.add_(p.to(s.dtype), alpha=kappa)
                if mu != 0:
                    if "momentum_buffer" not in state:  # momentum switched on mid-training
                        state["momentum_buffer"] = torch.zeros_like(s)
                    u = state["momentum_buffer"].mul_(mu).add_(u)
                _apply(p, u, group["lr"])
        return loss


class RFAdamW(_RootFree):
    r"""Root-free AdamW (RF-AdamW) of Lin et al. 2024.

    Paper: Lin, Dangel, Eschenhagen, Bae, Turner, Makhzani (ICML 2024), "Can we remove the square-root in
    adaptive gradient methods? A second-order perspective", arXiv:2402.03496; reference code
    yorkerlin/remove-the-square-root ``myoptim/rfadamw.py``.

    With batch size :math:`B`, damping :math:`\lambda`, decoupled weight decay :math:`\kappa` and
    :math:`s_0 = 1`:

    .. math::
        \theta &\leftarrow \theta\, (1 - \eta\kappa) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t \qquad (m_0 = 0)\\
        s_t &= \beta_2\, s_{t-1} + (1-\beta_2)\, B\, g_t^2 \\
        \theta_t &= \theta - \frac{\eta}{c_1}\, \frac{m_t}{s_t / c_2 + \lambda}

    where :math:`c_1 = 1-\beta_1^t`, :math:`c_2 = 1-\beta_2^t` with ``bias_correction=True`` and
    :math:`c_1 = c_2 = 1` by default (the reference's default). This is AdamW without the square root, with
    :math:`s` initialised to 1 instead of 0 (see :class:`RFRMSProp` for the role of :math:`B`).
    ``p.grad`` is never modified.

    Args:
        params: parameters or parameter groups.
        lr: :math:`\eta` (>= 0).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        damping: :math:`\lambda` (>= 0).
        weight_decay: decoupled :math:`\kappa` (>= 0).
        batch_size: :math:`B` (> 0); 1 switches the scaling off.
        s_init: :math:`s_0` (> 0).
        bias_correction: divide by :math:`1-\beta^t` as above.
        maximize: maximise the objective instead.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        damping: float = 1e-4,
        weight_decay: float = 1e-2,
        batch_size: float = 1,
        *,
        s_init: float = 1.0,
        bias_correction: bool = False,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            damping=damping,
            weight_decay=weight_decay,
            batch_size=batch_size,
            s_init=s_init,
            bias_correction=bias_correction,
            maximize=maximize,
        )
        self._validate(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def _validate(g: dict[str, Any]) -> None:
        check_number("lr", g["lr"])
        check_betas("betas", g["betas"])
        check_number("damping", g["damping"])
        check_number("weight_decay", g["weight_decay"])
        check_number("batch_size", g["batch_size"], low_open=True)
        check_number("s_init", g["s_init"], low_open=True)
        for flag in ("bias_correction", "maximize"):
            if not isinstance(g[flag], bool):
                raise ValueError(f"{flag} must be a bool, got {g[flag]!r}")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one step; ``closure`` (optional) re-evaluates the loss, which is returned."""
        loss = self._closure(closure)
        for group in self.param_groups:
            (beta1, beta2), lr, lam = group["betas"], group["lr"], group["damping"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=state_dtype(p))
                    state["s"] = torch.full_like(p, group["s_init"], dtype=state_dtype(p))
                m, s = state["exp_avg"], state["s"]
                state["step"] += 1
                t = float(state["step"])
                g = _grad(p, s.dtype, group["maximize"])
                if group["weight_decay"] != 0:
                    p.mul_(1.0 - lr * group["weight_decay"])
                m.mul_(beta1).add_(g, alpha=1.0 - beta1)
                s.mul_(beta2).addcmul_(g, g, value=(1.0 - beta2) * group["batch_size"])
                c1 = c2 = 1.0
                if group["bias_correction"]:
                    c1, c2 = 1.0 - beta1**t, 1.0 - beta2**t
                _apply(p, m / (s / c2 + lam), lr / c1)
        return loss
