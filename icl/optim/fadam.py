"""FAdam: Adam as natural-gradient descent with the diagonal empirical Fisher (Hwang 2024)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from icl.optim._common import (
    DtypePreservingOptimizer,
    check_betas,
    check_choice,
    check_number,
    state_dtype,
)

EPS_MODES = ("min_eps_eps2rms", "min_eps_rms", "max_rms")
CLIP_MODES = ("rms_over_c", "legacy")


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.square().mean().sqrt()


def _clip(x: torch.Tensor, c: float, mode: str) -> torch.Tensor:
    if mode == "rms_over_c":  # x / max(1, RMS(x)/c): unchanged when RMS <= c, else rescaled to RMS = c
        return x / torch.clamp(_rms(x) / c, min=1.0)
    return x * (c / torch.clamp(_rms(x), min=1.0))  # legacy: x / (max(1, RMS(x)) / c)


class FAdam(DtypePreservingOptimizer):
    r"""FAdam (Hwang 2024, "FAdam: Adam is a natural gradient optimizer using diagonal empirical Fisher
    information", arXiv:2405.12807).

    Per parameter tensor :math:`\theta` with its own step counter :math:`t = 1, 2, \dots` (RMS is over the
    elements of that one tensor; products are element-wise):

    .. math::
        \hat\beta_2 &= \beta_2 (1-\beta_2^{t-1}) / (1-\beta_2^{t})            && \text{(so } f_1 = g_1^2)\\
        f_t &= \hat\beta_2 f_{t-1} + (1-\hat\beta_2)\, g_t^2                 && \text{diagonal Fisher}\\
        \bar g_t &= g_t / (f_t^{\,p} + \hat\epsilon_t^{\,q})                  && \text{natural gradient}\\
        \bar g_t &\leftarrow \bar g_t / \max(1, \mathrm{RMS}(\bar g_t)/c)     && \text{RMS clip}\\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, \bar g_t                       && \text{no bias correction}\\
        \bar w_t &= \mathrm{clip}\big(\theta_{t-1} / (f_t^{\,p} + \hat\epsilon_t^{\,q})\big)\\
        \theta_t &= \theta_{t-1} - \eta\, (m_t + \lambda\, \bar w_t)

    The adaptive epsilon :math:`\hat\epsilon_t` (``eps_mode``) and the clip formula (``clip_mode``) are where
    the public implementations disagree; the options are

    * ``eps_mode="min_eps_eps2rms"`` (default; pytorch_optimizer 4.1, paper v2):
      :math:`\hat\epsilon = \min(\epsilon, \epsilon_2\,\mathrm{RMS}(g))`;
      ``"min_eps_rms"`` (paper v3 era, pytorch_optimizer 3.x): :math:`\epsilon\min(1, \mathrm{RMS}(g))`;
      ``"max_rms"`` (lessw2020 HEAD): :math:`\epsilon\max(1, \mathrm{RMS}(g))`.
      In every mode :math:`\hat\epsilon = \epsilon` when :math:`g = 0` exactly, so an all-zero gradient never
      gives 0/0 (for ``"min_eps_rms"`` this is a deliberate deviation from the reference, which NaNs there).
    * ``eps_pow_2p=True`` (default): :math:`q = 2p`, which keeps :math:`\hat\epsilon` in gradient units;
      ``False``: :math:`q = 1` (lessw2020, pytorch_optimizer 3.x). Identical at the default :math:`p = 1/2`.
    * ``clip_mode="rms_over_c"`` (default, the paper's equation): divide by :math:`\max(1, \mathrm{RMS}/c)`;
      ``"legacy"`` (lessw2020, pytorch_optimizer 3.x): divide by :math:`\max(1, \mathrm{RMS})/c`. They agree
      only at :math:`c = 1`.

    The weight decay :math:`\lambda` is preconditioned and clipped, so its step has RMS at most
    :math:`\eta\lambda c` in absolute parameter units: it is *not* comparable to AdamW's ``weight_decay``,
    and with :math:`\lambda > 0` parameters move even when their gradient is zero.

    The momentum and Fisher state are kept in float32 for 16-bit parameters (otherwise in the parameter
    dtype) and keep that dtype across :meth:`load_state_dict`.

    Args:
        params: parameters or parameter groups.
        lr: learning rate :math:`\eta` (>= 0).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: :math:`\epsilon` (> 0).
        clip: RMS clipping threshold :math:`c` (> 0).
        p: Fisher exponent (> 0); 1/2 is Adam's square root, 1 the literal natural gradient.
        weight_decay: :math:`\lambda` (>= 0).
        eps2: :math:`\epsilon_2` of ``eps_mode="min_eps_eps2rms"`` (> 0).
        eps_mode, eps_pow_2p, clip_mode: see above.
        maximize: maximise the objective instead.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        clip: float = 1.0,
        p: float = 0.5,
        weight_decay: float = 0.1,
        *,
        eps2: float = 0.01,
        eps_mode: str = "min_eps_eps2rms",
        eps_pow_2p: bool = True,
        clip_mode: str = "rms_over_c",
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            clip=clip,
            p=p,
            weight_decay=weight_decay,
            eps2=eps2,
            eps_mode=eps_mode,
            eps_pow_2p=eps_pow_2p,
            clip_mode=clip_mode,
            maximize=maximize,
        )
        self._validate(defaults)
        super().__init__(params, defaults)  # every group is validated by add_param_group

    _LATER_OPTIONS = {
        "eps2": 0.01, "eps_mode": "min_eps_eps2rms", "eps_pow_2p": True, "clip_mode": "rms_over_c", "maximize": False
    }  # fmt: skip

    @staticmethod
    def _validate(g: dict[str, Any]) -> None:
        check_number("lr", g["lr"])
        check_betas("betas", g["betas"])
        check_number("eps", g["eps"], low_open=True)
        check_number("clip", g["clip"], low_open=True)
        check_number("p", g["p"], low_open=True)
        check_number("weight_decay", g["weight_decay"])
        check_number("eps2", g["eps2"], low_open=True)
        check_choice("eps_mode", g["eps_mode"], EPS_MODES)
        check_choice("clip_mode", g["clip_mode"], CLIP_MODES)
        if not isinstance(g["eps_pow_2p"], bool):
            raise ValueError(f"eps_pow_2p must be a bool, got {g['eps_pow_2p']!r}")
        if not isinstance(g["maximize"], bool):
            raise ValueError(f"maximize must be a bool, got {g['maximize']!r}")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one step; ``closure`` (optional) re-evaluates the loss, which is returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, c, p_exp = group["lr"], group["eps"], group["clip"], group["p"]
            wd, mode, clip_mode = group["weight_decay"], group["eps_mode"], group["clip_mode"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("FAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    dt = state_dtype(p)
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["momentum"] = torch.zeros_like(p, dtype=dt, memory_format=torch.preserve_format)
                    state["fim"] = torch.zeros_like(p, dtype=dt, memory_format=torch.preserve_format)
                fim, momentum = state["fim"], state["momentum"]
                state["step"] += 1
                t = float(state["step"])
                g = p.grad.to(fim.dtype)  # never modified in place below
                if group["maximize"]:
                    g = -g

                beta2_hat = beta2 * (1.0 - beta2 ** (t - 1.0)) / (1.0 - beta2**t)
                fim.mul_(beta2_hat).addcmul_(g, g, value=1.0 - beta2_hat)

                rms_g = _rms(g)
                if mode == "min_eps_eps2rms":
                    eps_hat = torch.clamp(group["eps2"] * rms_g, max=eps)
                elif mode == "min_eps_rms":
                    eps_hat = eps * torch.clamp(rms_g, max=1.0)
                else:
                    eps_hat = eps * torch.clamp(rms_g, min=1.0)
                eps_hat = torch.where(rms_g > 0, eps_hat, torch.full_like(eps_hat, eps))
                if group["eps_pow_2p"]:
                    eps_hat = eps_hat ** (2.0 * p_exp)
                denom = fim.pow(p_exp) + eps_hat

                momentum.mul_(beta1).add_(_clip(g / denom, c, clip_mode), alpha=1.0 - beta1)
                update = momentum
                if wd != 0:
                    update = momentum + wd * _clip(p.to(fim.dtype) / denom, c, clip_mode)
                if p.dtype == update.dtype:
                    p.add_(update, alpha=-lr)
                else:  # 16-bit parameter: do the arithmetic in the state dtype, round once
                    p.copy_(p.to(update.dtype).add_(update, alpha=-lr))
        return loss
