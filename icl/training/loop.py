"""The training loop: S >= 1 models of one architecture, one per seed, trained as one stacked computation.

Each step draws (or reuses, with ``resample_every`` = k > 1) every seed's batch from the seed's own ``train``
stream, computes the training loss of every seed (``loss``: the query MSE of the model's prediction, or Garg et
al.'s mean over every prefix for models that predict at every prefix), applies the gradient transforms
(clipping, per seed: :mod:`icl.training.transforms`), sets the learning rate from the schedule and takes one
step of the outer optimizer. Losses stay on the device and are read back every ``log_every`` steps, so the step
itself never synchronises with the host. Everything else the loop does is a callback
(:mod:`icl.training.callbacks`): held-out evaluation (:class:`~icl.training.callbacks.Evaluate`, every
``eval_every`` steps on a fixed batch from each seed's ``val`` stream, always the query MSE), divergence
handling (:class:`~icl.training.callbacks.Divergence`), checkpointing (:class:`~icl.training.callbacks.Checkpoint`),
read-outs, the plateau rule, timing and trackers.

One seed is the special case S = 1 of the same loop: the model is called directly. For S > 1 the seeds'
weights are stacked along a leading axis and one :func:`torch.func.vmap` of :func:`torch.func.functional_call`
evaluates all S models on their own batches in one batched forward and backward pass (for the LSA family, whose
prediction needs only the context Gram matrix and the query, the Gram matrices are formed once per batch outside
autograd). Each seed's weights stay its own model's parameters, so gradient hooks and optimizers see exactly
what a one-seed run sees: seed s of a batch gives the weights and history of the same run with S = 1 up to
float rounding of the batched kernels (tests/test_vectorised.py: 1e-6 after 50 steps).

Optimizers (:class:`~icl.training.specs.OptimizerSpec`): one instance over all seeds' parameters, with one
parameter group per seed and group, for every optimizer that updates each parameter from its own gradient and
state (Adam, AdamW, SGD, FAdam, the root-free methods, SIRFShampoo, projected Riemannian Adam: per-tensor norms
and Kronecker factors are then per seed by construction); one instance per seed for those that draw from their
own generator (ManifoldAdam, ManifoldSGD), stepped one after another.

The :class:`Trainer` owns everything needed to continue exactly: the step, the models and optimizer states, each
seed's ``train`` generator state at the start of the current batch, the histories and the callbacks' state
(:meth:`state_dict`). Divergence (a non-finite loss, gradient or state, or a loss that explodes far above the
seed's running best and the zero predictor) stops the run or rolls every seed back to the last healthy read-back,
lowering the learning rate of the seeds that diverged, which go on with fresh batches (the others replay the same
steps exactly). In a seed
batch the convergence rule (:class:`~icl.training.callbacks.Plateau`) ends the run only when every seed has
plateaued; until then every seed trains on (docs/training.md).
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from icl import progress
from icl.prompts import PromptDistribution, sample_tokens, stack_problem
from icl.runio import find_nonfinite
from icl.seeding import Streams
from icl.training import signals
from icl.training.callbacks import Callback, Checkpoint, Divergence, Evaluate, TrainingDiverged  # noqa: F401 (re-exported)
from icl.training.config import DTYPE_NAMES, TrainConfig
from icl.training.signals import TrainingInterrupted
from icl.training.specs import OptimizerSpec
from icl.training.transforms import schedule_from_config, seed_grad_norms, transform_from_config
from learned_optimizers.constraints import apply_constraints

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}  # TrainConfig.dtype -> torch dtype


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


@dataclass
class History:
    """What one seed's run logged: one row per step, the held-out evaluations and events (rollbacks, stops)."""

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


#: keys :meth:`Trainer.load_state_dict` needs
TRAINER_STATE_KEYS = ("step", "models", "optimizers", "train_generators", "histories")


class _Call(nn.Module):
    """Calls a model's forward (``query``), ``forward_gram`` (``gram``) or ``prefix_predictions`` (``prefix``)
    through :func:`functional_call` (parameters named ``model.*``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, method: str, *args: Any) -> torch.Tensor:
        if method == "gram":
            return self.model.forward_gram(*args)
        Z = args[0]
        if method == "prefix":
            return self.model.prefix_predictions(Z[:, :-1, :-1], Z[:, :-1, -1], Z[:, -1, :-1], check=False)
        return self.model(Z, check=False)


def _batch_problem(models: Sequence[nn.Module]) -> str | None:
    """Why ``models`` can not be evaluated as one stacked computation (None: they can)."""
    kinds = {(type(m), repr(getattr(m, "cfg", None)), getattr(m, "d", None)) for m in models}
    if len(kinds) != 1:
        return "the seeds' models differ in class, config or d"
    shapes = {tuple((n, tuple(p.shape)) for n, p in m.named_parameters()) for m in models}
    if len(shapes) != 1:
        return "the seeds' models differ in their parameters"
    for m in models:
        for sub in m.modules():
            if sub._forward_hooks or sub._forward_pre_hooks or sub._backward_hooks or sub._backward_pre_hooks:
                return f"module {type(sub).__name__} has hooks"
    return None


@dataclass
class _Snapshot:
    """An in-memory copy of the state at a healthy read-back, for rollback."""

    step: int
    models: list[dict[str, torch.Tensor]]
    optimizers: list[dict[str, Any]]
    block_states: list[torch.Tensor]
    gen_states: list[torch.Tensor]
    rows: list[int]
    best: list[float]
    callbacks: dict[str, Any]


class Trainer:
    """Trains S >= 1 models of one architecture, one per seed, on their prompt laws; resumable exactly.

    Args:
        models: one freshly initialised model (S = 1) or a sequence of S (same class, config and d), each
            mapping tokens Z (B, n+1, d+1) to predictions (B,).
        dists: the prompt law, or one per seed (each seed's own rotation).
        cfg: the training config, shared by the seeds.
        streams: the seed's :class:`~icl.seeding.Streams`, or one per seed (``train``, ``val`` and, for the
            manifold optimizers, ``section`` are used).
        optimizer: an :class:`~icl.training.specs.OptimizerSpec` (default: built from ``cfg``), or ready-made
            ``torch.optim.Optimizer`` instances, one per seed (their groups are the seed's).
        device: where the models and the prompts live.
        quiet: no progress bar (it is also off when stderr is not a terminal).
        compile: run the training loss through :func:`torch.compile`; None reads ``cfg.compile``.
        callbacks: :class:`~icl.training.callbacks.Callback` objects called at the loop's events, after the
            held-out :class:`~icl.training.callbacks.Evaluate` (built from ``cfg.eval_every``);
            :attr:`divergence` is a :class:`~icl.training.callbacks.Divergence` built from ``cfg``. An
            ``Evaluate`` or ``Divergence`` among ``callbacks`` replaces the one from the config.

    Raises:
        ValueError: an argument of the wrong kind or models that can not be stacked (naming it), before any
            compute.
    """

    def __init__(
        self,
        models: nn.Module | Sequence[nn.Module],
        dists: PromptDistribution | Sequence[PromptDistribution],
        cfg: TrainConfig,
        streams: Streams | Sequence[Streams],
        *,
        optimizer: OptimizerSpec | torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        device: str | torch.device = "cpu",
        quiet: bool = False,
        compile: bool | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        models = list(models) if isinstance(models, (list, tuple)) else [models]
        dists = list(dists) if isinstance(dists, (list, tuple)) else [dists]
        streams = list(streams) if isinstance(streams, (list, tuple)) else [streams]
        if isinstance(optimizer, torch.optim.Optimizer):
            optimizer = [optimizer]
        for m in models:
            if not isinstance(m, nn.Module):
                raise ValueError(f"model must be a torch.nn.Module, got {type(m).__name__}")
        for dist in dists:
            if not isinstance(dist, PromptDistribution):
                raise ValueError(f"dist must be a PromptDistribution, got {type(dist).__name__}")
        if not isinstance(cfg, TrainConfig):
            raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
        for st in streams:
            if not isinstance(st, Streams):
                raise ValueError(f"streams must be a Streams, got {type(st).__name__}")
        if not models or not (len(models) == len(dists) == len(streams)):
            raise ValueError(f"need one model, law and Streams per seed, got {len(models)}, {len(dists)}, "
                             f"{len(streams)}")  # fmt: skip
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device {device!r} is not a torch device ({e})") from None
        for m, dist in zip(models, dists):
            model_d = getattr(m, "d", None)
            if isinstance(model_d, int) and model_d != dist.cfg.d:
                raise ValueError(f"the model takes d = {model_d} but the prompts have d = {dist.cfg.d}")
            if not any(p.requires_grad for p in m.parameters()):
                raise ValueError("model has no trainable parameters")
            if cfg.loss == "prefix" and not has_prefix_predictions(m):
                raise ValueError(
                    f"loss = 'prefix' needs a model that predicts at every prefix (a prefix_predictions method, as "
                    f"the causal GPT has); {type(m).__name__} predicts only at the query: use loss = 'query'"
                )
        if cfg.stiefel:  # weights declared on the Stiefel manifold by the config (a model may declare its own)
            for m, st in zip(models, streams):
                if not getattr(m, "constraints", None):
                    apply_constraints(m, {name: "stiefel" for name in cfg.stiefel}, st.generator("constraints", "cpu"))
        self.S = len(models)
        if self.S > 1:
            problem = _batch_problem(models) or stack_problem(dists)
            if problem:
                raise ValueError(f"{problem}; train the seeds one by one")
        self.cfg = cfg
        self.models = [m.to(device=self.device, dtype=cfg.torch_dtype) for m in models]
        self.dists = dists
        for dist in self.dists:
            dist.dtype = cfg.torch_dtype
        self.streams = streams
        self.quiet = quiet or not sys.stderr.isatty()
        self.params = [[p for p in m.parameters() if p.requires_grad] for m in self.models]
        self._build_optimizers(optimizer)
        self.schedule = schedule_from_config(cfg)
        self.transform = transform_from_config(cfg)
        callbacks = list(callbacks)
        evaluate = next((cb for cb in callbacks if isinstance(cb, Evaluate)), None) or Evaluate(cfg.eval_every)
        self.callbacks = [evaluate, *(cb for cb in callbacks if cb is not evaluate)]  # evaluation first
        self.divergence = next((cb for cb in callbacks if isinstance(cb, Divergence)), None) or Divergence.from_config(
            cfg
        )
        self.until = cfg.steps  # the step the current run() trains to
        self.stopping: signals.StopRequest | None = None  # a stop requested during the current step
        self.step = 0
        self.rollbacks = [0] * self.S
        self.histories = [History() for _ in range(self.S)]
        self.stopped: dict[str, Any] | None = None  # why the run ended before cfg.steps (plateau), if it did
        self.gens = [st.generator("train", self.device) for st in self.streams]
        self._block_states = [g.get_state() for g in self.gens]
        vals = [d.sample(cfg.eval_batch, st.generator("val", self.device)) for d, st in zip(self.dists, self.streams)]
        self.Z_val = torch.stack([v.Z() for v in vals])
        self.y_val = torch.stack([v.y_query for v in vals])
        self.n = self.Z_val.shape[-2] - 1
        self.zero_losses = self.y_val.double().square().mean(1).tolist()  # the zero predictor on the val batch
        self.best = [math.inf] * self.S
        self._batch: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None
        self._stop: signals.StopRequest | None = None
        self._snapshot: _Snapshot | None = None
        # S > 1: the models whose prediction needs only the context Gram matrix and the query (the LSA family)
        # have those formed once per batch for all seeds, outside autograd and vmap
        skeleton = self.models[0]
        self.gram = self.S > 1 and cfg.loss == "query" and bool(getattr(skeleton, "gram_sufficient", False))
        if self.S > 1:
            self.names = [n for n, _ in skeleton.named_parameters()]
            self._named = [dict(m.named_parameters()) for m in self.models]
            self._buffers = {k: torch.stack([dict(m.named_buffers())[k] for m in self.models])
                             for k, _ in skeleton.named_buffers()}  # fmt: skip
            self._call = _Call(skeleton)
        self.val_inputs = self._inputs(self.Z_val)
        self.compiled = bool(cfg.compile if compile is None else compile)
        fn = self._seed_losses
        self._losses = torch.compile(fn) if self.compiled else fn

    # -- construction --------------------------------------------------------------------------------------
    def _build_optimizers(self, optimizer: Any) -> None:
        if optimizer is None or isinstance(optimizer, OptimizerSpec):
            spec = optimizer if optimizer is not None else OptimizerSpec.from_config(self.cfg)
            groups = [spec.groups(m) for m in self.models]
            self.optimizers = spec.build(groups, self.streams)
            self.optimizer_spec: OptimizerSpec | None = spec
        else:
            optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
            if len(optimizers) != self.S or not all(isinstance(o, torch.optim.Optimizer) for o in optimizers):
                raise ValueError(f"optimizer must be a torch.optim.Optimizer per seed or an OptimizerSpec, got "
                                 f"{[type(o).__name__ for o in optimizers]}")  # fmt: skip
            self.optimizers = optimizers
            self.optimizer_spec = None
        self.base_lrs = [[g["lr"] for g in groups] for groups in self.seed_groups]
        self._opt_of = {}
        for opt in self.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    self._opt_of[p] = opt

    @property
    def seed_groups(self) -> list[list[dict[str, Any]]]:
        """Each seed's parameter groups (looked up each time: ``load_state_dict`` of an optimizer replaces its
        group dicts)."""
        if len(self.optimizers) == 1:
            groups = self.optimizers[0].param_groups
            G = len(groups) // self.S
            return [groups[s * G : (s + 1) * G] for s in range(self.S)]
        return [opt.param_groups for opt in self.optimizers]

    # -- one seed's view -----------------------------------------------------------------------------------
    def _single(self, what: str) -> None:
        if self.S != 1:
            raise AttributeError(f"{what} is the one seed's; this trainer has {self.S} seeds (use {what}s)")

    @property
    def model(self) -> nn.Module:
        """The model of a one-seed trainer."""
        self._single("model")
        return self.models[0]

    @property
    def dist(self) -> PromptDistribution:
        self._single("dist")
        return self.dists[0]

    @property
    def history(self) -> History:
        self._single("history")
        return self.histories[0]

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer, when one instance holds every seed."""
        if len(self.optimizers) != 1:
            raise AttributeError(f"this trainer has one optimizer per seed ({len(self.optimizers)}): use optimizers")
        return self.optimizers[0]

    @property
    def seeds(self) -> list[int]:
        return [st.seed for st in self.streams]

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (tensors, numbers, lists: loads with weights_only=True).

        ``train_generators`` holds each seed's ``train`` stream state at the start of the current batch block
        (to re-draw a batch that is being reused) and ``train_generators_now`` its current state. The
        learning-rate schedule is stateless (a function of the step), so ``base_lrs`` (lowered by rollbacks)
        and the step determine it.
        """
        return {
            "step": self.step,
            "seeds": self.seeds,
            "models": [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.models],
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "train_generators": [b.clone() for b in self._block_states],
            "train_generators_now": [g.get_state() for g in self.gens],
            "base_lrs": [list(b) for b in self.base_lrs],
            "rollbacks": list(self.rollbacks),
            "best_losses": list(self.best),
            "histories": [h.to_state() for h in self.histories],
            "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks if hasattr(cb, "state_dict")},
            "stopped": dict(self.stopped) if self.stopped else None,
        }

    def load_state_dict(self, state: dict[str, Any], *, lr: float | None = None) -> None:
        """Restore a :meth:`state_dict` (training then continues exactly as the saved run would have).

        Args:
            state: the saved state.
            lr: a new base learning rate (a resume that changes ``train.lr``): every seed's groups get their
                saved rates scaled by lr / (the saved first group's rate).

        Raises:
            ValueError: a key is missing, the seeds or parameters differ, or a saved generator state does not
                match the re-drawn batch.
        """
        missing = [k for k in TRAINER_STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"trainer state is missing {', '.join(repr(k) for k in missing)}")
        if "seeds" in state and [int(s) for s in state["seeds"]] != self.seeds:
            raise ValueError(f"the state is of seeds {list(state['seeds'])}, this trainer trains seeds {self.seeds}")
        if len(state["models"]) != self.S or len(state["histories"]) != self.S:
            raise ValueError(f"the state holds {len(state['models'])} seeds, this trainer {self.S}")
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(f"the state holds {len(state['optimizers'])} optimizers, this trainer "
                             f"{len(self.optimizers)}")  # fmt: skip
        for m, sd in zip(self.models, state["models"]):
            m.load_state_dict(sd)
        for opt, sd in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(sd)
        self.step = int(state["step"])
        self.histories = [History.from_state(h) for h in state["histories"]]
        if "base_lrs" in state:
            if [len(b) for b in state["base_lrs"]] != [len(g) for g in self.seed_groups]:
                saved, now = [len(b) for b in state["base_lrs"]], [len(g) for g in self.seed_groups]
                raise ValueError(f"trainer state has learning rates for {saved} parameter groups, the optimizer "
                                 f"has {now}")  # fmt: skip
            self.base_lrs = [[float(x) for x in b] for b in state["base_lrs"]]
        if lr is not None:
            self.base_lrs = [[x * lr / b[0] for x in b] for b in self.base_lrs]
        self.rollbacks = [int(r) for r in state.get("rollbacks", [0] * self.S)]
        self.best = [float(b) for b in state.get("best_losses", [math.inf] * self.S)]
        self.stopped = dict(state["stopped"]) if state.get("stopped") else None
        saved_cb = state.get("callbacks", {})
        for cb in self.callbacks:
            if hasattr(cb, "load_state_dict") and cb.name in saved_cb:
                cb.load_state_dict(saved_cb[cb.name])
        self._restore_generators(state["train_generators"], state.get("train_generators_now"))
        self._snapshot = None

    def _restore_generators(
        self, blocks: Sequence[torch.Tensor], now: Sequence[torch.Tensor] | None, fresh: Collection[int] = ()
    ) -> None:
        """Put the ``train`` streams where they were at ``self.step``, re-drawing the batch of an unfinished
        block; a seed in ``fresh`` (its block and current state both its stream's state now) draws a new batch
        there instead, which then counts as its block's batch."""
        self._block_states = [b.clone() for b in blocks]
        self._batch = None
        if self.step % self.cfg.resample_every != 0:  # re-draw the batch the interrupted block was using
            for g, b in zip(self.gens, self._block_states):
                g.set_state(b.clone())
            self._batch = self._sample()
            reached = [torch.equal(g.get_state(), t) for g, t in zip(self.gens, now)] if now is not None else []
            if not all(ok for s, ok in enumerate(reached) if s not in fresh):
                raise ValueError(
                    "the train generator does not reach its saved state after re-drawing the current batch "
                    "(was the state saved with another batch size or prompt law?)"
                )
        else:  # at a block boundary the next step draws from the current state
            for g, t in zip(self.gens, now if now is not None else self._block_states):
                g.set_state(t.clone())

    def seed_state_dict(self, s: int) -> dict[str, Any]:
        """Seed index ``s``'s state in the form of a one-seed trainer's :meth:`state_dict`."""
        state = self.state_dict()
        if len(self.optimizers) == 1:
            opt = [split_optimizer_state(state["optimizers"][0], [len(g) for g in self.seed_groups])[s]]
        else:
            opt = [state["optimizers"][s]]
        one = {k: [v[s]] for k, v in state.items()
               if k in ("models", "train_generators", "train_generators_now", "base_lrs", "rollbacks",
                        "best_losses", "histories", "seeds")}  # fmt: skip
        cbs = {name: cb.seed_state(st, s) if hasattr(cb, "seed_state") else st
               for name, st in state["callbacks"].items() for cb in self.callbacks if cb.name == name}  # fmt: skip
        return {**state, **one, "optimizers": opt, "callbacks": cbs}

    # -- one step ------------------------------------------------------------------------------------------
    def _inputs(self, Z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What the models read of a token array (S, B, n+1, d+1): the tokens, or (G_0, z_q) for the LSA
        family in a seed batch."""
        if not self.gram:
            return (Z,)
        from learned_optimizers.linear_attention import context_gram

        S, B, T, e = Z.shape
        return context_gram(Z.reshape(S * B, T, e)).reshape(S, B, e, e), Z[:, :, -1]

    def _sample(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Each seed's batch from its own generator, in one (S, B, n+1, d+1) token array
        (:func:`icl.prompts.sample_tokens`), and the query targets (S, B)."""
        Z, y = sample_tokens(self.dists, self.cfg.batch_size, self.gens)
        return y, self._inputs(Z)

    def loss(self, Z: torch.Tensor, y_query: torch.Tensor) -> torch.Tensor:
        """The training loss (``cfg.loss``) of the one-seed model on tokens Z (B, n+1, d+1), targets (B,)."""
        model = self.model
        if self.cfg.loss == "prefix":
            pred = model.prefix_predictions(Z[:, :-1, :-1], Z[:, :-1, -1], Z[:, -1, :-1], check=False)
            return prefix_mse(pred, Z[:, :-1, -1], y_query)
        return query_mse(model(Z, check=False), y_query)

    def _seed_losses(self, y: torch.Tensor, inputs: tuple[torch.Tensor, ...], train: bool = True) -> torch.Tensor:
        """Every seed's loss, (S,): the training loss, or (``train`` False) the query MSE."""
        if self.S == 1:
            if train:
                return self.loss(inputs[0][0], y[0])[None]
            return query_mse(self.models[0](inputs[0][0], check=False), y[0])[None]
        params = {"model." + k: torch.stack([named[k] for named in self._named]) for k in self.names}
        buffers = {"model." + k: v for k, v in self._buffers.items()}
        prefix = train and self.cfg.loss == "prefix"

        def one(p: dict, b: dict, inp: tuple, target: torch.Tensor) -> torch.Tensor:
            if self.gram:
                pred = functional_call(self._call, (p, b), ("gram", *inp, self.n))
            elif prefix:
                pred = functional_call(self._call, (p, b), ("prefix", *inp))
                return prefix_mse(pred, inp[0][:, :-1, -1], target)
            else:
                pred = functional_call(self._call, (p, b), ("query", *inp))
            return query_mse(pred, target)

        return vmap(one)(params, buffers, inputs, y)

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """One optimizer step of every seed; returns the (device) losses and gradient norms, (S,), and each
        seed's learning rate."""
        cfg = self.cfg
        if self.step % cfg.resample_every == 0 or self._batch is None:
            self._block_states = [g.get_state() for g in self.gens]
            self._batch = self._sample()
        y, inputs = self._batch
        factor = self.schedule(self.step)
        for groups, bases in zip(self.seed_groups, self.base_lrs):
            for group, base in zip(groups, bases):
                group["lr"] = base * factor
        lrs = [bases[0] * factor for bases in self.base_lrs]
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        losses = self._losses(y, inputs)
        losses.sum().backward()
        grads = [[p.grad for p in ps if p.grad is not None] for ps in self.params]
        gnorms = seed_grad_norms(grads).to(losses.device)
        self.transform(grads)
        for opt in self.optimizers:
            opt.step()
        self.step += 1
        return losses.detach(), gnorms.detach(), lrs

    @torch.no_grad()
    def evaluate(self) -> list[float]:
        """Each seed's query MSE on its fixed held-out batch."""
        return self._seed_losses(self.y_val, self.val_inputs, train=False).tolist()

    # -- stopping ------------------------------------------------------------------------------------------
    def request_stop(self, reason: str = "a stop was requested", signum: int | None = None) -> None:
        """Ask :meth:`run` to stop after the current step: it reads the losses back, calls the on-checkpoint
        callback and raises :class:`TrainingInterrupted`."""
        self._stop = signals.StopRequest(reason, signum)

    def finish(self, reason: str) -> None:
        """End the run at the current step as finished (a convergence rule, called from a callback): recorded
        at once in every seed's history events and in :attr:`stopped`; the :class:`Checkpoint` then saves it
        and :meth:`run` returns after this step."""
        self.stopped = {"reason": reason, "step": self.step}
        for hist in self.histories:
            hist.events.append({"event": "finished", "step": self.step, "reason": reason})

    # -- the loop ------------------------------------------------------------------------------------------
    def emit(self, event: str, *args: Any) -> None:
        """Call hook ``event`` of every callback, in order."""
        for cb in self.callbacks:
            fn = getattr(cb, event, None)
            if fn is not None:
                fn(self, *args)

    def run(
        self,
        until: int | None = None,
        on_checkpoint: Callable[[Trainer], None] | None = None,
        checkpoint_every: int | None = None,
    ) -> list[History]:
        """Train until step ``until`` (default ``cfg.steps``); returns the per-seed histories.

        Losses are read back every ``log_every`` steps, and always before a stop, at ``until`` and at a step a
        callback asks to see (:meth:`Callback.due`: an evaluation, a checkpoint, a read-out). Each read-back is
        checked by :attr:`divergence`; a healthy one is kept in memory for rollback and goes to every
        callback's ``on_step`` (the order is in :mod:`icl.training.callbacks`), so a checkpoint only ever sees a
        state whose losses, gradients, weights and optimizer state are all healthy.

        Args:
            until: the step to train to (at most ``cfg.steps``).
            on_checkpoint: ``save(trainer)``, called by a :class:`~icl.training.callbacks.Checkpoint` added
                last for this run: every ``checkpoint_every`` steps and at ``until``, before a stop and when a
                convergence rule ends the run.
            checkpoint_every: see ``on_checkpoint``.

        SIGINT and SIGTERM stop the run cleanly after the current step (:mod:`icl.training.signals`).

        Raises:
            TrainingDiverged: a seed's loss, gradient norm or state became NaN or infinite or exploded
                (naming the step, the seed and its last healthy loss), with ``on_divergence = "stop"`` or no
                rollback left.
            TrainingInterrupted: a stop was requested; the checkpoint was saved first.
        """
        cfg = self.cfg
        self.until = until = cfg.steps if until is None else min(until, cfg.steps)
        callbacks = self.callbacks
        if on_checkpoint is not None:  # last: it saves what every other callback has recorded
            self.callbacks = [*callbacks, Checkpoint(on_checkpoint, checkpoint_every)]
        pending: list[tuple[int, list[float], torch.Tensor, torch.Tensor]] = []
        self._stop = None
        desc = "train" if self.S == 1 else f"train ×{self.S}"
        bar = progress.bar(cfg.steps, desc, quiet=self.quiet, initial=self.step)  # stays when done
        try:
            with signals.handling():
                if self._snapshot is None or self._snapshot.step != self.step:
                    self._take_snapshot()
                self.emit("on_start")
                while self.step < until and self.stopped is None:
                    losses, gnorms, lrs = self.train_step()
                    pending.append((self.step, lrs, losses, gnorms))
                    bar.update(1)
                    self.stopping = request = self._stop or signals.pending()
                    due = any(cb.due(self, self.step) for cb in self.callbacks if hasattr(cb, "due"))
                    if self.step % cfg.log_every == 0 or self.step == until or request is not None or due:
                        ok = self._flush(pending)
                        pending = []
                        if not ok:  # rolled back to the last snapshot
                            bar.reset(total=cfg.steps)
                            bar.update(self.step)
                            continue
                        bar.set_postfix(loss=f"{self.histories[0].last_loss:.4g}")
                        self.emit("on_step")
                    if request is not None:
                        raise TrainingInterrupted(f"{request.reason}; stopped at step {self.step}", step=self.step,
                                                  signum=request.signum)  # fmt: skip
                if self.step >= cfg.steps or self.stopped is not None:
                    self.emit("on_end")
        finally:
            self.callbacks = callbacks
            self.stopping = None
            bar.close()
        return self.histories

    @property
    def snapshot(self) -> _Snapshot | None:
        """The state at the last healthy read-back (what a rollback returns to)."""
        return self._snapshot

    def _take_snapshot(self) -> None:
        self._snapshot = _Snapshot(
            step=self.step,
            models=[{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.models],
            optimizers=[copy.deepcopy(opt.state_dict()) for opt in self.optimizers],
            block_states=[b.clone() for b in self._block_states],
            gen_states=[g.get_state() for g in self.gens],
            rows=[len(h.rows) for h in self.histories],
            best=list(self.best),
            callbacks={cb.name: copy.deepcopy(cb.state_dict()) for cb in self.callbacks if hasattr(cb, "state_dict")},
        )

    def restore_snapshot(self, fresh: Iterable[int] = ()) -> None:
        """Put every seed back to :attr:`snapshot` (weights, optimizer states, generators, histories, best
        losses, callback states).

        Args:
            fresh: the seeds (indices) that diverged: their batches are not replayed but drawn from a new stream,
                ``train.rollback{k}`` of the seed's :class:`~icl.seeding.Streams` at its k-th rollback
                (:attr:`rollbacks`, already counted), so that a rolled-back seed trains on fresh batches and
                never meets again the batch that made it diverge (a rare prompt that overflows would otherwise
                come back after every rollback). The stream depends only on the seed and k, not on when the
                divergence was read back, so an interrupted and resumed run rolls back exactly as an
                uninterrupted one. The other seeds replay their batches exactly, as their own runs would."""
        snap = self._snapshot
        assert snap is not None
        for m, sd in zip(self.models, snap.models):
            m.load_state_dict(sd)
        for opt, sd in zip(self.optimizers, snap.optimizers):
            opt.load_state_dict(copy.deepcopy(sd))
        self.step = snap.step
        for hist, rows in zip(self.histories, snap.rows):
            del hist.rows[rows:]
            hist.evals = [e for e in hist.evals if e["step"] <= snap.step]
        self.best = list(snap.best)
        for cb in self.callbacks:
            if hasattr(cb, "load_state_dict") and cb.name in snap.callbacks:
                cb.load_state_dict(copy.deepcopy(snap.callbacks[cb.name]))
        new = {s: self.streams[s].generator(f"train.rollback{self.rollbacks[s]}", self.device).get_state()
               for s in set(fresh)}  # fmt: skip
        self._restore_generators([new.get(s, b) for s, b in enumerate(snap.block_states)],
                                 [new.get(s, t) for s, t in enumerate(snap.gen_states)], fresh=new)  # fmt: skip

    def _state_problems(self) -> list[str | None]:
        """Per seed, what is non-finite in its weights or optimizer state, if anything (one host sync)."""
        per_seed = []
        for ps in self.params:
            tensors = [p.detach() for p in ps]
            for p in ps:
                st = self._opt_of[p].state.get(p, {})
                tensors += [v for v in st.values() if torch.is_tensor(v) and v.is_floating_point()]
            per_seed.append(torch.stack([torch.isfinite(t).all() for t in tensors]).all())
        ok = torch.stack(per_seed).tolist()
        problems: list[str | None] = []
        for s, good in enumerate(ok):
            if good:
                problems.append(None)
                continue
            bad = find_nonfinite(self.models[s].state_dict())
            if bad is None:  # named as in the seed's own optimizer state_dict
                bad = find_nonfinite({i: self._opt_of[p].state.get(p, {}) for i, p in enumerate(self.params[s])})
                problems.append(f"optimizer state {bad!r}")
            else:
                problems.append(f"model weight {bad!r}")
        return problems

    def _flush(self, pending: list[tuple[int, list[float], torch.Tensor, torch.Tensor]]) -> bool:
        """Read the pending losses back, log the healthy rows and have :attr:`divergence` check them and the
        state; True if every seed is healthy (then a snapshot is taken). On a problem the divergence handler
        raises :class:`TrainingDiverged` or rolls back (False)."""
        guard = self.divergence
        if pending:
            values = torch.stack([torch.stack([l.float(), g.float()], dim=1) for _, _, l, g in pending]).tolist()
            bad: dict[int, tuple[str, int]] = {}
            for (step, lrs, _, _), per_seed in zip(pending, values):
                for s, (loss, gnorm) in enumerate(per_seed):
                    if s in bad:
                        continue
                    problem = guard.check(self, s, step, loss, gnorm)
                    if problem is not None:
                        bad[s] = (problem, step)
                        continue
                    self.histories[s].rows.append({"step": step, "loss": loss, "lr": lrs[s], "grad_norm": gnorm})
            if bad:
                guard.on_diverged(self, bad)
                return False
        problems = self._state_problems()
        bad = {s: (f"non-finite {p} after step {self.step}", self.step) for s, p in enumerate(problems) if p}
        if bad:
            guard.on_diverged(self, bad)
            return False
        self._take_snapshot()
        return True


def split_optimizer_state(state: dict[str, Any], groups_per_seed: Sequence[int]) -> list[dict[str, Any]]:
    """Split the state of one optimizer over S seeds (consecutive parameter groups per seed) into S states, each
    as an optimizer over that seed's groups alone would have it."""
    out, g0 = [], 0
    groups = state["param_groups"]
    for G in groups_per_seed:
        mine = groups[g0 : g0 + G]
        ids = [i for g in mine for i in g["params"]]
        remap = {old: new for new, old in enumerate(ids)}
        out.append({
            "state": {remap[i]: copy.deepcopy(v) for i, v in state["state"].items() if i in remap},
            "param_groups": [{**copy.deepcopy({k: v for k, v in g.items() if k != "params"}),
                              "params": [remap[i] for i in g["params"]]} for g in mine],
        })  # fmt: skip
        g0 += G
    return out


def merge_optimizer_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The inverse of :func:`split_optimizer_state`: S one-seed states as the state of one optimizer over all."""
    merged: dict[str, Any] = {"state": {}, "param_groups": []}
    offset = 0
    for st in states:
        n = sum(len(g["params"]) for g in st["param_groups"])
        for i, v in st["state"].items():
            merged["state"][int(i) + offset] = copy.deepcopy(v)
        for g in st["param_groups"]:
            merged["param_groups"].append({**copy.deepcopy({k: v for k, v in g.items() if k != "params"}),
                                           "params": [int(i) + offset for i in g["params"]]})  # fmt: skip
        offset += n
    return merged


def merge_seed_states(states: Sequence[dict[str, Any]], shared_optimizer: bool) -> dict[str, Any]:
    """S one-seed :meth:`Trainer.state_dict` states (at the same step) as the state of one S-seed trainer."""
    steps = {int(st["step"]) for st in states}
    if len(steps) != 1:
        raise ValueError(f"the seeds' states are at different steps {sorted(steps)}")
    out: dict[str, Any] = {"step": steps.pop()}
    for key in ("seeds", "models", "train_generators", "train_generators_now", "base_lrs", "rollbacks",
                "best_losses", "histories"):  # fmt: skip
        if all(key in st for st in states):
            out[key] = [v for st in states for v in st[key]]
    opts = [o for st in states for o in st["optimizers"]]
    out["optimizers"] = [merge_optimizer_states(opts)] if shared_optimizer else opts
    names = {n for st in states for n in st.get("callbacks", {})}
    out["callbacks"] = {n: [st["callbacks"][n] for st in states] for n in names}
    stopped = [st.get("stopped") for st in states]
    out["stopped"] = stopped[0] if all(s == stopped[0] for s in stopped) else None
    return out
