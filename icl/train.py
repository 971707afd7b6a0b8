"""The outer training loop: fit a learned optimizer to random regression prompts.

Each step samples (or reuses, with ``resample_every`` = k > 1) a batch of prompts from the run's ``train``
stream, computes the training loss (``loss``: the query mean squared error of the model's prediction, or Garg et
al.'s mean over every prefix for models that predict at every prefix), clips the gradient (globally or per
d×d matrix, as Ahn et al.'s code does), sets the learning rate from the schedule, and takes one step of the
outer optimizer (AdamW by default; any ``torch.optim.Optimizer`` may be passed in). Losses stay on the device
and are read back every ``log_every`` steps, so the step itself never synchronises with the host. A fixed
held-out batch from the ``val`` stream is evaluated every ``eval_every`` steps, always on the query MSE.

The :class:`Trainer` owns everything needed to continue a run exactly: the step, the model and optimizer
states, the state of the ``train`` generator at the start of the current batch, and the history.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from icl.config import Config, ConfigError, spec
from icl.optim import OPTIMIZERS, make_optimizer
from icl.prompts import PromptDistribution
from icl.runio import find_nonfinite
from icl.seeding import Streams

DTYPES = {"float32": torch.float32, "float64": torch.float64}
LOSSES = ("query", "prefix")


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
        on_divergence: what a non-finite loss, gradient or state does: ``stop`` raises
            :class:`TrainingDiverged` naming the step and the last finite loss; ``rollback`` restores the last
            state that passed a finite read-back and continues with the learning rate multiplied by
            ``rollback_lr_factor``, at most ``max_rollbacks`` times (then it stops as ``stop`` does).
        max_rollbacks: how many rollbacks one run may take.
        rollback_lr_factor: the learning rate is multiplied by this at each rollback.
        compile: run the training loss (:meth:`Trainer.loss`, the forward and ``loss``) through torch.compile;
            the backward pass is compiled with it, the held-out evaluation stays eager. The results equal the
            eager run up to rounding (the fused kernels may sum in another order). On a shared 2-core CPU a
            cold compile took 20 s (tiny model) to about 100 s (the benchmark's sparse and full LSA), seconds
            with inductor's cache warm, and made a sparse-LSA step 1.37× faster, so it pays only for runs of
            many thousand steps; off by default (docs/performance.md). A resumed run may switch it.
        loss: the training loss. ``query``: the query MSE (ŷ − y_q)², the linear models' loss (Ahn et al.,
            von Oswald et al.). ``prefix``: Garg et al.'s (2022) mean over the n+1 prefixes i = 0, …, n of
            (ŷ_i − y_{i+1})², ŷ_i the prediction for x_{i+1} from the first i pairs and y_{n+1} = y_q (see
            :func:`prefix_mse`); only for models with ``prefix_predictions(X, y, x_query, check)`` (the causal
            :class:`~learned_optimizers.gpt.GPT`), others are refused when the :class:`Trainer` is built. The
            held-out evaluation is the query MSE either way.
    """

    steps: int = spec(2000, ge=0)
    batch_size: int = spec(1024, ge=1)
    optimizer: str = spec("adamw", choices=tuple(OPTIMIZERS))
    lr: float = spec(1e-2, gt=0)
    betas: tuple[float, ...] | None = spec(None, ge=0, lt=1, allow_repeats=True)
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
    on_divergence: str = spec("stop", choices=("stop", "rollback"))
    max_rollbacks: int = spec(3, ge=0)
    rollback_lr_factor: float = spec(0.5, gt=0, lt=1)
    compile: bool = False
    loss: str = spec("query", choices=LOSSES)

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


def prefix_mse(pred: torch.Tensor, y: torch.Tensor, y_query: torch.Tensor) -> torch.Tensor:
    """Garg et al.'s (2022) loss: the mean over prompts and over the n+1 prefixes of the squared error.

    Args:
        pred: (B, n+1); entry i predicts y_{i+1} from the first i pairs, the last entry is the query prediction.
        y: the context targets (B, n) (noisy if the law is).
        y_query: the query targets (B,).

    Returns:
        (1/(B(n+1))) Σ_b [Σ_{i<n} (pred_{b,i} − y_{b,i+1})² + (pred_{b,n} − y_q,b)²], a 0-d tensor.
    """
    target = torch.cat([y, y_query[:, None]], dim=1)
    return (pred - target).square().mean()


def has_prefix_predictions(model: nn.Module) -> bool:
    """Whether ``model`` predicts at every prefix (and so can train on :func:`prefix_mse`)."""
    return callable(getattr(model, "prefix_predictions", None))


class TrainingDiverged(RuntimeError):
    """The loss, the gradient or the trained state became non-finite (and no rollback was left).

    Attributes:
        step: the step (1-based count of optimizer steps) at which it was detected.
        last_loss: the last finite training loss read back (NaN if none).
    """

    def __init__(self, message: str, *, step: int = -1, last_loss: float = float("nan")) -> None:
        super().__init__(message)
        self.step = step
        self.last_loss = last_loss


class TrainingInterrupted(RuntimeError):
    """The run was asked to stop (SIGINT, SIGTERM or :meth:`Trainer.request_stop`) and stopped cleanly.

    The on-checkpoint callback has been called with the state at ``step`` before this is raised, so the run can
    be continued exactly from it.

    Attributes:
        step: the step the trainer stopped at.
        signum: the signal that asked for the stop, or None for a programmatic request.
    """

    def __init__(self, message: str, *, step: int, signum: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class History:
    """What the run logged: one row per step, the held-out evaluations and events (rollbacks)."""

    rows: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        return {
            "rows": [dict(r) for r in self.rows],
            "evals": [dict(r) for r in self.evals],
            "events": [dict(r) for r in self.events],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> History:
        return cls(
            rows=[dict(r) for r in state["rows"]],
            evals=[dict(r) for r in state["evals"]],
            events=[dict(r) for r in state.get("events", [])],
        )

    def table(self) -> list[dict[str, Any]]:
        """Rows (step, loss, lr, grad_norm, eval_loss) for ``train_log.csv``; eval_loss empty between evals."""
        evals = {int(e["step"]): e["eval_loss"] for e in self.evals}
        return [{**r, "eval_loss": evals.get(int(r["step"]), "")} for r in self.rows]

    @property
    def last_loss(self) -> float:
        return self.rows[-1]["loss"] if self.rows else float("nan")


@dataclass
class _Snapshot:
    """An in-memory copy of the trainer state taken at a read-back where everything was finite."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    block_state: torch.Tensor
    gen_state: torch.Tensor
    rows: int


class StopOnSignals:
    """What the training loops share for stopping cleanly: :meth:`request_stop` and the SIGINT/SIGTERM handler.

    A loop clears ``_stop`` when it starts, runs inside :meth:`_stop_on_signals`, and after each step checks
    ``_stop``: when set, it reads its losses back, calls its on-checkpoint callback and raises
    :class:`TrainingInterrupted`.
    """

    _stop: tuple[str, int | None] | None = None

    def request_stop(self, reason: str = "a stop was requested", signum: int | None = None) -> None:
        """Ask :meth:`run` to stop after the current step: it reads the losses back, calls the on-checkpoint
        callback and raises :class:`TrainingInterrupted`. Safe to call from a signal handler."""
        self._stop = (reason, signum)

    def _checkpoint_or_stop(self, checkpoint: bool, on_checkpoint: Callable[[Any], None] | None, stop: bool) -> None:
        """After a step's losses are read back: call the on-checkpoint callback when due, then raise
        :class:`TrainingInterrupted` if a stop was requested before this step's boundary was decided (a stop
        asked for by the callback itself takes effect after the next step)."""
        if checkpoint:
            on_checkpoint(self)
        if stop:
            reason, signum = self._stop
            raise TrainingInterrupted(f"{reason}; stopped at step {self.step}", step=self.step, signum=signum)

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """Turn SIGINT/SIGTERM into :meth:`request_stop` while training (a second signal acts at once);
        the previous handlers are restored afterwards. Only in the main thread (where Python allows it)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop is not None and self._stop[1] is not None:  # asked twice: stop now
                signal.signal(signum, previous.get(signum, signal.SIG_DFL))
                signal.raise_signal(signum)
                return
            self.request_stop(f"{signal.Signals(signum).name} received", signum)

        try:
            for sig in STOP_SIGNALS:
                previous[sig] = signal.signal(sig, handler)
            yield
        finally:
            for sig, prev in previous.items():
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)


TRAINER_STATE_KEYS = ("step", "model", "optimizer", "train_generator", "history")


def step_boundaries(
    cfg: TrainConfig, step: int, until: int, stop: bool, has_checkpoint: bool, checkpoint_every: int | None
) -> tuple[bool, bool, bool]:
    """What happens after training step ``step`` of a run going to ``until``: (read the pending losses back,
    evaluate, checkpoint).  Shared by :class:`Trainer` and the seed batch so that both log, evaluate and
    checkpoint at the same steps.  Losses are read back every ``log_every`` steps and before anything that
    needs them (the end, an evaluation, a checkpoint, a stop)."""
    at_end = step == until
    evaluate = step % cfg.eval_every == 0 or step == cfg.steps
    checkpoint = has_checkpoint and (stop or (bool(checkpoint_every) and (step % checkpoint_every == 0 or at_end)))
    flush = step % cfg.log_every == 0 or at_end or evaluate or checkpoint or stop
    return flush, evaluate, checkpoint


class Trainer(StopOnSignals):
    """Trains one model on one prompt law; resumable exactly from :meth:`state_dict`.

    Args:
        model: a module mapping tokens Z (B, n+1, d+1) to predictions (B,).
        dist: the prompt law.
        cfg: the training config.
        streams: the run's named generators (``train`` and ``val`` are used).
        optimizer: an outer optimizer over ``model.parameters()``; built from ``cfg`` when None.
        device: where the model and the prompts live.
        quiet: no progress bar (it is also off when stderr is not a terminal).

    Raises:
        ValueError: an argument of the wrong kind (naming it) before any compute.
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
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(dist, PromptDistribution):
            raise ValueError(f"dist must be a PromptDistribution, got {type(dist).__name__}")
        if not isinstance(cfg, TrainConfig):
            raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
        if not isinstance(streams, Streams):
            raise ValueError(f"streams must be a Streams, got {type(streams).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device {device!r} is not a torch device ({e})") from None
        model_d = getattr(model, "d", None)
        if isinstance(model_d, int) and model_d != dist.cfg.d:
            raise ValueError(f"the model takes d = {model_d} but the prompts have d = {dist.cfg.d}")
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("model has no trainable parameters")
        if cfg.loss == "prefix" and not has_prefix_predictions(model):
            raise ValueError(
                f"loss = 'prefix' needs a model that predicts at every prefix (a prefix_predictions method, as the "
                f"causal GPT has); {type(model).__name__} predicts only at the query: use loss = 'query'"
            )
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
        self.rollbacks = 0
        self.history = History()
        self.gen_train = streams.generator("train", self.device)
        self._block_state = self.gen_train.get_state()
        val = dist.sample(cfg.eval_batch, streams.generator("val", self.device))
        self.Z_val, self.y_val = val.Z(), val.y_query
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._stop: tuple[str, int | None] | None = None
        self._snapshot: _Snapshot | None = None
        self._train_loss = torch.compile(self.loss) if cfg.compile else self.loss

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (tensors, numbers, lists: loads with weights_only=True).

        ``train_generator`` is the ``train`` stream's state at the start of the current batch block (to
        re-draw a batch that is being reused) and ``train_generator_now`` its current state. The learning-rate
        schedule is stateless (:func:`lr_factor` of the step), so ``base_lrs`` (lowered by rollbacks) and the
        step determine it.
        """
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "train_generator": self._block_state.clone(),
            "train_generator_now": self.gen_train.get_state(),
            "base_lrs": list(self.base_lrs),
            "rollbacks": self.rollbacks,
            "history": self.history.to_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            ValueError: a key is missing, or the saved generator state does not match the re-drawn batch.
        """
        missing = [k for k in TRAINER_STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"trainer state is missing {', '.join(repr(k) for k in missing)}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.history = History.from_state(state["history"])
        if "base_lrs" in state:
            if len(state["base_lrs"]) != len(self.optimizer.param_groups):
                raise ValueError(
                    f"trainer state has {len(state['base_lrs'])} learning rates but the optimizer has "
                    f"{len(self.optimizer.param_groups)} parameter groups"
                )
            self.base_lrs = [float(x) for x in state["base_lrs"]]
        self.rollbacks = int(state.get("rollbacks", 0))
        self._restore_generator(state["train_generator"], state.get("train_generator_now"))
        self._snapshot = None

    def _restore_generator(self, block_state: torch.Tensor, now: torch.Tensor | None) -> None:
        """Put the ``train`` stream where it was at ``self.step``, re-drawing the batch of an unfinished block."""
        self._block_state = block_state.clone()
        self._batch = None
        if self.step % self.cfg.resample_every != 0:  # re-draw the batch the interrupted block was using
            self.gen_train.set_state(self._block_state.clone())
            self._batch = self._sample()
            if now is not None and not torch.equal(self.gen_train.get_state(), now):
                raise ValueError(
                    "the train generator does not reach its saved state after re-drawing the current batch "
                    "(was the state saved with another batch size or prompt law?)"
                )
        elif now is not None:  # at a block boundary the next step draws from the current state
            self.gen_train.set_state(now.clone())
        else:  # an old checkpoint without the current state: only exact when it was saved mid-block
            self.gen_train.set_state(self._block_state.clone())

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
        loss = self._train_loss(Z, y)
        loss.backward()
        gnorm = grad_norm(self.params)
        if cfg.clip == "global":
            torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_value)
        elif cfg.clip == "per_matrix":
            clip_per_matrix(self.params, cfg.clip_value)
        self.optimizer.step()
        self.step += 1
        return loss.detach(), gnorm.detach(), lr

    def loss(self, Z: torch.Tensor, y_query: torch.Tensor) -> torch.Tensor:
        """The training loss (``cfg.loss``) of the model on tokens Z (B, n+1, d+1) with query targets (B,)."""
        if self.cfg.loss == "prefix":
            pred = self.model.prefix_predictions(Z[:, :-1, :-1], Z[:, :-1, -1], Z[:, -1, :-1], check=False)
            return prefix_mse(pred, Z[:, :-1, -1], y_query)
        return query_mse(self.model(Z, check=False), y_query)

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

        Losses stay on the device and are read back every ``log_every`` steps, and always before a checkpoint,
        an evaluation or a stop, so ``on_checkpoint`` only ever sees a state whose losses, gradients, weights and
        optimizer state are all finite. At each such read-back an in-memory snapshot is kept for rollback.

        SIGINT and SIGTERM received while this runs stop it cleanly after the current step (see
        :meth:`request_stop`); the previous handlers are restored when it returns.

        Raises:
            TrainingDiverged: the loss, gradient norm or state became NaN or infinite (naming the step and the
                last finite loss), with ``on_divergence = "stop"`` or no rollback left.
            TrainingInterrupted: a stop was requested; ``on_checkpoint`` was called first.
        """
        cfg = self.cfg
        until = cfg.steps if until is None else min(until, cfg.steps)
        pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []
        self._stop = None
        bar = tqdm(total=cfg.steps, initial=self.step, disable=self.quiet, desc="train", leave=False)
        try:
            with self._stop_on_signals():
                if self._snapshot is None or self._snapshot.step != self.step:
                    self._take_snapshot()
                while self.step < until:
                    loss, gnorm, lr = self.train_step()
                    pending.append((self.step, lr, loss, gnorm))
                    bar.update(1)
                    stop = self._stop is not None
                    flush, evaluate, checkpoint = step_boundaries(
                        cfg, self.step, until, stop, on_checkpoint is not None, checkpoint_every
                    )
                    if flush:
                        ok = self._flush(pending)
                        pending = []
                        if not ok:  # rolled back to the last snapshot
                            bar.reset(total=cfg.steps)
                            bar.update(self.step)
                            continue
                        bar.set_postfix(loss=f"{self.history.last_loss:.4g}")
                    if evaluate:
                        self.history.evals.append({"step": self.step, "eval_loss": self.evaluate()})
                    self._checkpoint_or_stop(checkpoint, on_checkpoint, stop)
        finally:
            bar.close()
        return self.history

    def _take_snapshot(self) -> None:
        self._snapshot = _Snapshot(
            step=self.step,
            model={k: v.detach().clone() for k, v in self.model.state_dict().items()},
            optimizer=copy.deepcopy(self.optimizer.state_dict()),
            block_state=self._block_state.clone(),
            gen_state=self.gen_train.get_state(),
            rows=len(self.history.rows),
        )

    def _restore_snapshot(self) -> None:
        snap = self._snapshot
        assert snap is not None
        self.model.load_state_dict(snap.model)
        self.optimizer.load_state_dict(copy.deepcopy(snap.optimizer))
        self.step = snap.step
        del self.history.rows[snap.rows :]
        self.history.evals = [e for e in self.history.evals if e["step"] <= snap.step]
        self._restore_generator(snap.block_state, snap.gen_state)

    def _state_problem(self) -> str | None:
        """What is non-finite in the weights or the optimizer state, if anything (one host sync)."""
        flags = [torch.isfinite(p.detach()).all() for p in self.params]
        if flags and not bool(torch.stack(flags).all()):
            return f"model weight {find_nonfinite(self.model.state_dict())!r}"
        bad = find_nonfinite(self.optimizer.state_dict().get("state", {}))
        return None if bad is None else f"optimizer state {bad!r}"

    def _flush(self, pending: list[tuple[int, float, torch.Tensor, torch.Tensor]]) -> bool:
        """Read the pending losses back and check them and the state; True if all is finite.

        On a non-finite value: raise :class:`TrainingDiverged`, or roll back and return False.
        """
        if pending:
            values = torch.stack([torch.stack([l.float(), g.float()]) for _, _, l, g in pending]).tolist()
            for (step, lr, _, _), (loss, gnorm) in zip(pending, values):
                if not (math.isfinite(loss) and math.isfinite(gnorm)):
                    what = "loss" if not math.isfinite(loss) else "gradient norm"
                    return self._diverged(
                        f"non-finite {what} ({loss if what == 'loss' else gnorm}) at step {step}", step
                    )
                self.history.rows.append({"step": step, "loss": loss, "lr": lr, "grad_norm": gnorm})
        problem = self._state_problem()
        if problem is not None:
            return self._diverged(f"non-finite {problem} after step {self.step}", self.step)
        self._take_snapshot()
        return True

    def _diverged(self, what: str, step: int) -> bool:
        cfg = self.cfg
        last = self.history.last_loss
        snap = self._snapshot
        if cfg.on_divergence == "rollback" and snap is not None and self.rollbacks < cfg.max_rollbacks:
            self._restore_snapshot()
            self.rollbacks += 1
            self.base_lrs = [lr * cfg.rollback_lr_factor for lr in self.base_lrs]
            self.history.events.append(
                {
                    "event": "rollback",
                    "diverged_at": step,
                    "rolled_back_to": snap.step,
                    "base_lr": self.base_lrs[0],
                    "rollback": self.rollbacks,
                }
            )
            print(
                f"warning: {what}; rolled back to step {snap.step} and lowered the learning rate to "
                f"{self.base_lrs[0]:.3g} (rollback {self.rollbacks} of {cfg.max_rollbacks})",
                file=sys.stderr,
                flush=True,
            )
            return False
        tail = ""
        if cfg.on_divergence == "rollback":
            tail = f" after {self.rollbacks} rollback(s) (max_rollbacks = {cfg.max_rollbacks})"
        raise TrainingDiverged(f"{what}; last finite loss {last:.6g}{tail}", step=step, last_loss=last)
