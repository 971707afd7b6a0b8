"""The outer training loop: fit a learned optimizer to random regression prompts.

Each step samples (or reuses, with ``resample_every`` = k > 1) a batch of prompts from the run's ``train``
stream, computes the query mean squared error of the model's prediction, clips the gradient (globally or per
d×d matrix, as Ahn et al.'s code does), sets the learning rate from the schedule, and takes one step of the
outer optimizer (AdamW by default; any ``torch.optim.Optimizer`` may be passed in). Losses stay on the device
and are read back every ``log_every`` steps, so the step itself never synchronises with the host. A fixed
held-out batch from the ``val`` stream is evaluated every ``eval_every`` steps.

The :class:`Trainer` owns everything needed to continue a run exactly: the step, the model and optimizer
states, the state of the ``train`` generator at the start of the current batch, and the history.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from icl.config import Config, ConfigError, spec
from icl.optim import OPTIMIZERS, make_optimizer
from icl.prompts import PromptDistribution
from icl.seeding import Streams

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class TrainConfig(Config):
    """The outer optimisation.

    Attributes:
        steps: number of optimizer steps.
        batch_size: prompts per step.
        optimizer: the outer optimizer's name.
        lr: the base learning rate.
        betas: (β₁, β₂) of the optimizers that take them; None keeps the optimizer's default.
        momentum: momentum of the optimizers that take one (SGD, RF-RMSProp); None keeps the default.
        weight_decay: weight decay as the optimizer defines it (decoupled for AdamW); None keeps the default.
        clip: gradient clipping: ``none``, ``global`` (total norm) or ``per_matrix`` (each d×d block).
        clip_value: the clipping threshold.
        resample_every: draw a fresh batch every k steps (Ahn et al. use k = 100).
        schedule: ``constant``, ``step`` (halve every ``halve_every`` steps) or ``cosine`` (to 0).
        halve_every: the period of the step schedule.
        eval_every: evaluate the held-out batch every m steps.
        eval_batch: size of the held-out batch.
        log_every: read the losses back (and update the progress bar) every so many steps.
        dtype: floating dtype of the model and the prompts.
    """

    steps: int = spec(2000, ge=0)
    batch_size: int = spec(1024, ge=1)
    optimizer: str = spec("adamw", choices=tuple(OPTIMIZERS))
    lr: float = spec(1e-2, gt=0)
    betas: tuple[float, ...] | None = spec(None, ge=0, lt=1)
    momentum: float | None = spec(None, ge=0, lt=1)
    weight_decay: float | None = spec(None, ge=0)
    clip: str = spec("none", choices=("none", "global", "per_matrix"))
    clip_value: float = spec(1.0, gt=0)
    resample_every: int = spec(1, ge=1)
    schedule: str = spec("constant", choices=("constant", "step", "cosine"))
    halve_every: int = spec(1000, ge=1)
    eval_every: int = spec(100, ge=1)
    eval_batch: int = spec(4096, ge=1)
    log_every: int = spec(50, ge=1)
    dtype: str = spec("float32", choices=tuple(DTYPES))

    def check(self) -> None:
        if self.betas is not None and len(self.betas) != 2:
            raise ConfigError(f"betas must have 2 entries (β₁, β₂), got {len(self.betas)}")
        accepted = inspect.signature(OPTIMIZERS[self.optimizer]).parameters
        for name in ("betas", "momentum", "weight_decay"):
            if getattr(self, name) is not None and name not in accepted:
                raise ConfigError(f"{name} is set but optimizer {self.optimizer!r} takes no {name}; leave it unset")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The schedule's multiplier of the base learning rate at ``step`` (0-based)."""
    if cfg.schedule == "step":
        return 0.5 ** (step // cfg.halve_every)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / max(cfg.steps, 1)))
    return 1.0


def build_optimizer(cfg: TrainConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The configured outer optimizer from :data:`icl.optim.OPTIMIZERS`; ``betas``, ``momentum`` and
    ``weight_decay`` are passed to those optimizers whose constructor takes them."""
    accepted = inspect.signature(OPTIMIZERS[cfg.optimizer]).parameters
    options = {"betas": cfg.betas, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay}
    kwargs = {k: v for k, v in options.items() if v is not None and k in accepted}
    return make_optimizer(cfg.optimizer, list(params), lr=cfg.lr, **kwargs)


def grad_norm(params: Iterable[nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of the gradients (a 0-d tensor on the parameters' device, no host sync)."""
    params = list(params)
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    if not norms:
        return torch.zeros((), device=params[0].device if params else None)
    return torch.linalg.vector_norm(torch.stack(norms))


@torch.no_grad()
def clip_per_matrix(params: Iterable[nn.Parameter], max_norm: float) -> None:
    """Clip each trailing d×d block of every gradient to Frobenius norm ≤ ``max_norm`` (Ahn et al.'s code)."""
    for p in params:
        if p.grad is None:
            continue
        g = p.grad if p.grad.ndim >= 2 else p.grad.reshape(1, 1, -1)
        blocks = g.reshape(-1, g.shape[-2], g.shape[-1])
        norms = torch.linalg.matrix_norm(blocks).clamp_min(1e-30)
        scale = (max_norm / norms).clamp(max=1.0)
        blocks.mul_(scale[:, None, None])


def query_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss: mean over prompts of (ŷ − y_q)²."""
    return (pred - target).square().mean()


class TrainingDiverged(RuntimeError):
    """The loss or gradient became non-finite."""


@dataclass
class History:
    """What the run logged: one row per step, and the held-out evaluations."""

    rows: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows], "evals": [dict(r) for r in self.evals]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> History:
        return cls(rows=[dict(r) for r in state["rows"]], evals=[dict(r) for r in state["evals"]])

    def table(self) -> list[dict[str, Any]]:
        """Rows (step, loss, lr, grad_norm, eval_loss) for ``train_log.csv``; eval_loss empty between evals."""
        evals = {int(e["step"]): e["eval_loss"] for e in self.evals}
        return [{**r, "eval_loss": evals.get(int(r["step"]), "")} for r in self.rows]

    @property
    def last_loss(self) -> float:
        return self.rows[-1]["loss"] if self.rows else float("nan")


class Trainer:
    """Trains one model on one prompt law; resumable exactly from :meth:`state_dict`.

    Args:
        model: a module mapping tokens Z (B, n+1, d+1) to predictions (B,).
        dist: the prompt law.
        cfg: the training config.
        streams: the run's named generators (``train`` and ``val`` are used).
        optimizer: an outer optimizer over ``model.parameters()``; built from ``cfg`` when None.
        device: where the model and the prompts live.
        quiet: no progress bar (it is also off when stderr is not a terminal).
    """

    def __init__(
        self,
        model: nn.Module,
        dist: PromptDistribution,
        cfg: TrainConfig,
        streams: Streams,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        device: str | torch.device = "cpu",
        quiet: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.cfg = cfg
        self.model = model.to(device=self.device, dtype=cfg.torch_dtype)
        self.dist = dist
        self.dist.dtype = cfg.torch_dtype
        self.streams = streams
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = optimizer if optimizer is not None else build_optimizer(cfg, self.params)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.quiet = quiet or not sys.stderr.isatty()
        self.step = 0
        self.history = History()
        self.gen_train = streams.generator("train", self.device)
        self._block_state = self.gen_train.get_state()
        val = dist.sample(cfg.eval_batch, streams.generator("val", self.device))
        self.Z_val, self.y_val = val.Z(), val.y_query
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (tensors, numbers, lists: loads with weights_only=True)."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "train_generator": self._block_state.clone(),
            "history": self.history.to_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.history = History.from_state(state["history"])
        self._block_state = state["train_generator"].clone()
        self.gen_train.set_state(self._block_state.clone())
        self._batch = None
        if self.step % self.cfg.resample_every != 0:  # re-draw the batch the interrupted block was using
            self._batch = self._sample()

    # -- one step ------------------------------------------------------------------------------------------
    def _sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.dist.sample(self.cfg.batch_size, self.gen_train)
        return batch.Z(), batch.y_query

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step; returns the (device) loss and gradient norm, and the learning rate used."""
        cfg = self.cfg
        if self.step % cfg.resample_every == 0 or self._batch is None:
            self._block_state = self.gen_train.get_state()
            self._batch = self._sample()
        Z, y = self._batch
        factor = lr_factor(cfg, self.step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        lr = self.base_lrs[0] * factor
        self.optimizer.zero_grad(set_to_none=True)
        loss = query_mse(self.model(Z, check=False), y)
        loss.backward()
        gnorm = grad_norm(self.params)
        if cfg.clip == "global":
            torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_value)
        elif cfg.clip == "per_matrix":
            clip_per_matrix(self.params, cfg.clip_value)
        self.optimizer.step()
        self.step += 1
        return loss.detach(), gnorm.detach(), lr

    @torch.no_grad()
    def evaluate(self) -> float:
        """The query MSE on the fixed held-out batch."""
        return float(query_mse(self.model(self.Z_val, check=False), self.y_val))

    # -- the loop ------------------------------------------------------------------------------------------
    def run(
        self,
        until: int | None = None,
        on_checkpoint: Callable[[Trainer], None] | None = None,
        checkpoint_every: int | None = None,
    ) -> History:
        """Train until step ``until`` (default ``cfg.steps``), logging and evaluating on the way.

        Raises:
            TrainingDiverged: the loss or gradient norm became NaN or infinite (naming the step and the last
                finite loss).
        """
        cfg = self.cfg
        until = cfg.steps if until is None else min(until, cfg.steps)
        pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []
        bar = tqdm(total=cfg.steps, initial=self.step, disable=self.quiet, desc="train", leave=False)
        try:
            while self.step < until:
                loss, gnorm, lr = self.train_step()
                pending.append((self.step, lr, loss, gnorm))
                bar.update(1)
                at_end = self.step == until
                if self.step % cfg.log_every == 0 or at_end or self.step % cfg.eval_every == 0:
                    self._flush(pending)
                    pending = []
                    bar.set_postfix(loss=f"{self.history.last_loss:.4g}")
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    self.history.evals.append({"step": self.step, "eval_loss": self.evaluate()})
                if on_checkpoint is not None and checkpoint_every and (self.step % checkpoint_every == 0 or at_end):
                    on_checkpoint(self)
        finally:
            bar.close()
        return self.history

    def _flush(self, pending: list[tuple[int, float, torch.Tensor, torch.Tensor]]) -> None:
        if not pending:
            return
        values = torch.stack([torch.stack([l.float(), g.float()]) for _, _, l, g in pending]).tolist()
        for (step, lr, _, _), (loss, gnorm) in zip(pending, values):
            if not (math.isfinite(loss) and math.isfinite(gnorm)):
                last = self.history.last_loss
                raise TrainingDiverged(
                    f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {step}; "
                    f"last finite loss {last:.6g}"
                )
            self.history.rows.append({"step": step, "loss": loss, "lr": lr, "grad_norm": gnorm})
