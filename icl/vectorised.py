"""Train S independent models (one per root seed) at once, with a leading seed axis.

The S models must share one architecture (same class, config and d). Their parameters are stacked with
:func:`torch.func.stack_module_state` into tensors of shape (S, ...), and one :func:`torch.func.vmap` of
:func:`torch.func.functional_call` evaluates all S models on their own batches, (S, B, n+1, d+1), in one
batched forward and backward pass. Every seed keeps exactly what :class:`icl.train.Trainer` would give it:

- its own :class:`~icl.seeding.Streams`: the ``train`` generator draws its batches (through its own prompt law,
  whose rotation came from its ``rotation`` stream), the ``val`` generator its held-out batch, and the model
  factory its initial weights (from the ``init`` stream);
- the same loss (the query MSE; ``loss = "prefix"`` is refused), learning-rate schedule, ``resample_every``
  blocks, logging and evaluation steps;
- per-seed gradient norms and clipping (``global`` or ``per_matrix``), computed on the stacked gradients with
  the seed axis kept apart;
- the outer optimizer: one optimizer over the stacked parameters. This is exact only for optimizers that act
  elementwise (``adam``, ``adamw``, ``sgd``: their update of an entry reads only that entry's gradient and
  state), so those are the ones accepted; train the others one by one with the Trainer.

So seed s of :func:`train_seeds` gives the same weights and history as ``Trainer(...).run()`` with
``Streams(s)`` (tested to 1e-6 in float32 after 50 steps; the batched kernels may differ from the unbatched
ones in the last bits). The loss is the sum of the per-seed losses, whose gradient with respect to seed s's
slice is seed s's own gradient.

Example (what a study's ``--seeds`` loop becomes)::

    from icl.vectorised import train_seeds

    results = train_seeds(
        lambda streams: build_model("lsa", d, model_cfg, generator=streams.generator("init")),
        lambda streams: PromptDistribution(prompt_cfg, generator=streams.generator("rotation")),
        train_cfg, seeds=(0, 1, 2), device="cpu",
    )
    for seed, (model, history) in zip((0, 1, 2), results):
        ...  # evaluate on Streams(seed).generator("test") as before

Checkpoints: :meth:`SeedBatchTrainer.state_dict` holds the stacked state and
:meth:`SeedBatchTrainer.load_state_dict` continues from it exactly (the same numbers as an uninterrupted run);
:meth:`SeedBatchTrainer.seed_state_dict` is seed s's state in the form of :meth:`icl.train.Trainer.state_dict`
(its optimizer state sliced out of the stacked one), so a finished batch can be handed over as S ordinary
Trainers. :meth:`SeedBatchTrainer.run` takes the Trainer's ``on_checkpoint`` / ``checkpoint_every`` and stops
cleanly on SIGINT/SIGTERM or :meth:`~icl.train.StopOnSignals.request_stop`. The seed batch runs on any device
(``cpu``, ``cuda``, ``mps``); losses stay on the device and are read back every ``log_every`` steps, as in the
Trainer. The studies' ``--seeds`` use it through :func:`experiments.study.train_all_seeds`.

What can not be batched (:func:`seed_batch_problem` says why): an optimizer that is not elementwise, rollback on
divergence (it would have to roll back one seed of a shared optimizer), models of different architectures,
frozen parameters, module hooks, and gradient hooks on parameters unless they are marked :func:`seed_batchable`
(they are then registered on the stacked parameter).
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from icl.config import ConfigError
from icl.prompts import PromptDistribution
from icl.seeding import Streams
from icl.train import (
    History,
    StopOnSignals,
    TrainConfig,
    TrainingDiverged,
    build_optimizer,
    lr_factor,
    query_mse,
    step_boundaries,
)
from learned_optimizers.linear_attention import context_gram

#: outer optimizers whose update is elementwise, so that one optimizer over stacked parameters is S optimizers
ELEMENTWISE_OPTIMIZERS = ("adam", "adamw", "sgd")


def seed_grad_norms(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The global L2 gradient norm of each seed, (S,), from gradients stacked along dim 0 (no host sync)."""
    norms = [torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms, dim=1), dim=1)


@torch.no_grad()
def clip_seed_global(grads: Sequence[torch.Tensor], max_norm: float) -> None:
    """Per seed, what ``torch.nn.utils.clip_grad_norm_`` does to one model: scale every gradient of the seed by
    min(1, max_norm / (total_norm + 1e-6))."""
    total = seed_grad_norms(grads)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.reshape((-1,) + (1,) * (g.ndim - 1)))


@torch.no_grad()
def clip_seed_per_matrix(grads: Sequence[torch.Tensor], max_norm: float) -> None:
    """Per seed, :func:`icl.train.clip_per_matrix`: each trailing d×d block (a parameter with fewer than two
    dimensions per seed is one block) clipped to Frobenius norm ≤ ``max_norm``."""
    for g in grads:
        S = g.shape[0]
        blocks = g.reshape(-1, g.shape[-2], g.shape[-1]) if g.ndim >= 3 else g.reshape(S, 1, -1)
        norms = torch.linalg.matrix_norm(blocks).clamp_min(1e-30)
        blocks.mul_((max_norm / norms).clamp(max=1.0)[:, None, None])


class _GramCall(nn.Module):
    """Calls ``model.forward_gram`` through :func:`functional_call` (parameters named ``model.*``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, G0: torch.Tensor, z_q: torch.Tensor, n: int) -> torch.Tensor:
        return self.model.forward_gram(G0, z_q, n)


#: a tensor hook: gradient in, replacement gradient (or None) out
GradHook = Callable[[torch.Tensor], "torch.Tensor | None"]
#: keys :meth:`SeedBatchTrainer.load_state_dict` needs
SEED_BATCH_STATE_KEYS = ("step", "params", "optimizer", "train_generators", "histories")


def seed_batchable(hook: GradHook) -> GradHook:
    """Mark a parameter's gradient hook as safe to apply to the stacked (S, ...) gradient of S seeds.

    That holds for a hook that treats every index of the leading dimensions alike and on its own, e.g. one that
    maps each trailing d×d block of the gradient to a function of that block. :class:`SeedBatchTrainer` carries
    marked hooks over to the stacked parameter and refuses models with unmarked ones.
    """
    hook.seed_batchable = True  # type: ignore[attr-defined]
    return hook


def _grad_hooks(p: torch.Tensor) -> tuple[GradHook, ...]:
    return tuple((getattr(p, "_backward_hooks", None) or {}).values())


def _config_problem(cfg: TrainConfig) -> str | None:
    if cfg.optimizer not in ELEMENTWISE_OPTIMIZERS:
        return (f"train.optimizer = {cfg.optimizer!r} is not elementwise, so seeds can not share one stacked "
                f"optimizer; use one of {', '.join(ELEMENTWISE_OPTIMIZERS)} or train the seeds one by one")  # fmt: skip
    if cfg.loss != "query":
        return (f"train.loss = {cfg.loss!r} is not supported by the seed batch (it trains on the query loss); "
                "train the seeds one by one with the Trainer")  # fmt: skip
    if cfg.on_divergence != "stop":
        return (f"train.on_divergence = {cfg.on_divergence!r}: a rollback of one seed would roll back the "
                "optimizer of all; the seed batch only stops")  # fmt: skip
    return None


def _model_problem(models: Sequence[nn.Module]) -> str | None:
    kinds = {(type(m), repr(getattr(m, "cfg", None)), getattr(m, "d", None)) for m in models}
    if len(kinds) != 1:
        return "the seeds' models differ in class, config or d"
    hooks = []
    for m in models:
        if not all(p.requires_grad for p in m.parameters()):
            return "a model has frozen parameters"
        for sub in m.modules():
            if sub._forward_hooks or sub._forward_pre_hooks or sub._backward_hooks or sub._backward_pre_hooks:
                return f"module {type(sub).__name__} has hooks"
        for name, p in m.named_parameters():
            if getattr(p, "_post_accumulate_grad_hooks", None):
                return f"parameter {name!r} has a post-accumulate-grad hook"
            unmarked = [h for h in _grad_hooks(p) if not getattr(h, "seed_batchable", False)]
            if unmarked:
                return (f"parameter {name!r} has a gradient hook ({getattr(unmarked[0], '__name__', unmarked[0])}) "
                        "that is not marked seed_batchable")  # fmt: skip
        hooks.append([_grad_hooks(p) for p in m.parameters()])
    if any(h != hooks[0] for h in hooks):
        return "the seeds' parameters carry different gradient hooks"
    return None


def seed_batch_problem(models: Sequence[nn.Module], cfg: TrainConfig) -> str | None:
    """Why ``models`` can not be trained as one :class:`SeedBatchTrainer` under ``cfg`` (None: they can)."""
    return _config_problem(cfg) or _model_problem(models)


class SeedBatchTrainer(StopOnSignals):
    """Trains S models of one architecture, one per seed, in one vectorised run (see the module docstring).

    Args:
        models: the S freshly initialised models (same class and config).
        dists: the S prompt laws (each seed's own rotation).
        cfg: the training config (``optimizer`` must be one of :data:`ELEMENTWISE_OPTIMIZERS`,
            ``on_divergence`` must be ``stop``).
        streams: the S seeds' streams (``train`` and ``val`` are used).
        device: where the models and prompts live.
        quiet: no progress bar.
        compile: wrap the batched loss in :func:`torch.compile`; None (default) reads ``cfg.compile`` (off by
            default: on a 2-core CPU compiling costs far more than it saves; see docs/performance.md).

    Raises:
        ConfigError: ``cfg`` can not be batched (:func:`seed_batch_problem`).
        ValueError: the models can not be batched, or the argument counts differ.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        dists: Sequence[PromptDistribution],
        cfg: TrainConfig,
        streams: Sequence[Streams],
        *,
        device: str | torch.device = "cpu",
        quiet: bool = False,
        compile: bool | None = None,
    ) -> None:
        if not models or not (len(models) == len(dists) == len(streams)):
            raise ValueError(f"need one model, law and Streams per seed, got {len(models)}, {len(dists)}, "
                             f"{len(streams)}")  # fmt: skip
        problem = _config_problem(cfg)
        if problem:
            raise ConfigError(problem)
        problem = _model_problem(models)
        if problem:
            raise ValueError(f"{problem}; train the seeds one by one")
        self.device = torch.device(device)
        self.cfg = cfg
        self.S = len(models)
        self._models = [m.to(device=self.device, dtype=cfg.torch_dtype) for m in models]
        self.dists = list(dists)
        for dist in self.dists:
            dist.dtype = cfg.torch_dtype
        self.streams = list(streams)
        self.quiet = quiet or not sys.stderr.isatty()
        params, buffers = stack_module_state(self._models)
        self.names = list(params)
        self.params = [params[k] for k in self.names]  # leaves, (S, ...)
        self.buffers = buffers
        originals = dict(self._models[0].named_parameters())
        for name, p in zip(self.names, self.params):  # the seed-batchable gradient hooks, on the stacked leaf
            for hook in _grad_hooks(originals[name]):
                p.register_hook(hook)
        self.optimizer = build_optimizer(cfg, self.params)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.skeleton = self._models[0]
        self.step = 0
        self.histories = [History() for _ in range(self.S)]
        self.gens = [s.generator("train", self.device) for s in self.streams]
        self._block_states = [g.get_state() for g in self.gens]
        vals = [d.sample(cfg.eval_batch, s.generator("val", self.device)) for d, s in zip(self.dists, self.streams)]
        self.Z_val = torch.stack([v.Z() for v in vals])
        self.n = self.Z_val.shape[-2] - 1
        self.y_val = torch.stack([v.y_query for v in vals])
        self._batch: tuple[tuple[torch.Tensor, ...], torch.Tensor] | None = None
        self._stop = None
        # models whose prediction needs only the context Gram matrix and the query (the LSA family): compute
        # those once per batch for all seeds, outside autograd and vmap, instead of inside every step
        self.gram = bool(getattr(self.skeleton, "gram_sufficient", False))
        self._gram_call = _GramCall(self.skeleton) if self.gram else None
        self.val_inputs = self._inputs(self.Z_val)
        self.compiled = bool(cfg.compile if compile is None else compile)
        batched = vmap(self._seed_loss)
        self._losses = torch.compile(batched) if self.compiled else batched

    @property
    def seeds(self) -> list[int]:
        return [s.seed for s in self.streams]

    # -- one step ------------------------------------------------------------------------------------------
    def _inputs(self, Z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What the model reads of a token array (S, B, n+1, d+1): the tokens, or (G_0, z_q) for the LSA family."""
        if not self.gram:
            return (Z,)
        S, B, T, e = Z.shape
        return context_gram(Z.reshape(S * B, T, e)).reshape(S, B, e, e), Z[:, :, -1]

    def _seed_loss(self, params: dict, buffers: dict, inputs: tuple, y: torch.Tensor) -> torch.Tensor:
        if self.gram:
            G0, z_q = inputs
            params = {f"model.{k}": v for k, v in params.items()}
            buffers = {f"model.{k}": v for k, v in buffers.items()}
            pred = functional_call(self._gram_call, (params, buffers), (G0, z_q, self.n))
        else:
            pred = functional_call(self.skeleton, (params, buffers), inputs, {"check": False})
        return query_mse(pred, y)

    def _param_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.params))

    def _sample(self) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Each seed's batch from its own generator, written straight into one (S, B, n+1, d+1) token array
        (the layout of :meth:`icl.prompts.PromptBatch.Z`, without building S token arrays and stacking them)."""
        batches = [d.sample(self.cfg.batch_size, g) for d, g in zip(self.dists, self.gens)]
        first = batches[0]
        B, n, d = first.X.shape
        Z = first.X.new_empty((self.S, B, n + 1, d + 1))
        y = first.y_query.new_empty((self.S, B))
        for s, b in enumerate(batches):
            Z[s, :, :n, :d] = b.X
            Z[s, :, :n, d] = b.y
            Z[s, :, n, :d] = b.x_query
            y[s] = b.y_query
        Z[:, :, n, d] = 0
        return self._inputs(Z), y

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step of every seed; returns the (device) losses and gradient norms, (S,), and the lr."""
        cfg = self.cfg
        if self.step % cfg.resample_every == 0 or self._batch is None:
            self._block_states = [g.get_state() for g in self.gens]
            self._batch = self._sample()
        inputs, y = self._batch
        factor = lr_factor(cfg, self.step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        lr = self.base_lrs[0] * factor
        self.optimizer.zero_grad(set_to_none=True)
        losses = self._losses(self._param_dict(), self.buffers, inputs, y)
        losses.sum().backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        gnorms = seed_grad_norms(grads) if grads else torch.zeros(self.S, device=self.device)
        if cfg.clip == "global":
            clip_seed_global(grads, cfg.clip_value)
        elif cfg.clip == "per_matrix":
            clip_seed_per_matrix(grads, cfg.clip_value)
        self.optimizer.step()
        self.step += 1
        return losses.detach(), gnorms.detach(), lr

    @torch.no_grad()
    def evaluate(self) -> list[float]:
        """Each seed's query MSE on its fixed held-out batch."""
        return self._losses(self._param_dict(), self.buffers, self.val_inputs, self.y_val).tolist()

    # -- the loop ------------------------------------------------------------------------------------------
    def run(
        self,
        until: int | None = None,
        on_checkpoint: Callable[[SeedBatchTrainer], None] | None = None,
        checkpoint_every: int | None = None,
    ) -> list[History]:
        """Train until step ``until`` (default ``cfg.steps``); the per-seed histories, as the Trainer logs them.

        As :meth:`icl.train.Trainer.run`: losses are read back every ``log_every`` steps and always before an
        evaluation, a checkpoint or a stop, so ``on_checkpoint`` (called every ``checkpoint_every`` steps, at
        ``until`` and on a stop) only sees states whose losses, gradients, weights and optimizer state are
        finite. SIGINT and SIGTERM stop the run after the current step.

        Raises:
            TrainingDiverged: a seed's loss, gradient norm, weights or optimizer state became NaN or infinite
                (naming the seed).
            TrainingInterrupted: a stop was requested; ``on_checkpoint`` was called first.
        """
        cfg = self.cfg
        until = cfg.steps if until is None else min(until, cfg.steps)
        pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []
        self._stop = None
        bar = tqdm(total=cfg.steps, initial=self.step, disable=self.quiet, desc=f"train ×{self.S}", leave=False)
        try:
            with self._stop_on_signals():
                while self.step < until:
                    losses, gnorms, lr = self.train_step()
                    pending.append((self.step, lr, losses, gnorms))
                    bar.update(1)
                    stop = self._stop is not None
                    flush, evaluate, checkpoint = step_boundaries(
                        cfg, self.step, until, stop, on_checkpoint is not None, checkpoint_every
                    )
                    if flush:
                        self._flush(pending)
                        pending = []
                    if evaluate:
                        for hist, value in zip(self.histories, self.evaluate()):
                            hist.evals.append({"step": self.step, "eval_loss": value})
                    self._checkpoint_or_stop(checkpoint, on_checkpoint, stop)
        finally:
            bar.close()
        return self.histories

    def _flush(self, pending: list[tuple[int, float, torch.Tensor, torch.Tensor]]) -> None:
        """Read the pending losses back and check them and the state, per seed."""
        if pending:
            values = torch.stack([torch.stack([l.float(), g.float()], dim=1) for _, _, l, g in pending]).tolist()
            for (step, lr, _, _), per_seed in zip(pending, values):
                for s, (hist, (loss, gnorm)) in enumerate(zip(self.histories, per_seed)):
                    if not (math.isfinite(loss) and math.isfinite(gnorm)):
                        what = "loss" if not math.isfinite(loss) else "gradient norm"
                        self._diverged(s, f"non-finite {what} at step {step}", step)
                    hist.rows.append({"step": step, "loss": loss, "lr": lr, "grad_norm": gnorm})
        stacked = list(self.params)
        for state in self.optimizer.state.values():
            stacked += [v for v in state.values() if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == self.S]
        if stacked:
            finite = torch.stack([torch.isfinite(t.detach()).reshape(self.S, -1).all(1) for t in stacked]).all(0)
            bad = (~finite).nonzero().flatten().tolist()
            if bad:
                self._diverged(bad[0], f"non-finite weights or optimizer state after step {self.step}", self.step)

    def _diverged(self, s: int, what: str, step: int) -> None:
        last = self.histories[s].last_loss
        raise TrainingDiverged(f"seed {self.seeds[s]}: {what}; last finite loss {last:.6g}", step=step, last_loss=last)

    # -- state and results ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _copy_out(self, s: int) -> nn.Module:
        model = self._models[s]
        named = dict(model.named_parameters())
        for name, p in zip(self.names, self.params):
            named[name].copy_(p[s])
        named_b = dict(model.named_buffers())
        for name, b in self.buffers.items():
            named_b[name].copy_(b[s])
        return model

    def models(self) -> list[nn.Module]:
        """The S models with their trained weights (the stacked parameters copied back)."""
        return [self._copy_out(s) for s in range(self.S)]

    def state_dict(self) -> dict[str, Any]:
        """The stacked state (tensors, numbers, lists: loads with weights_only=True).

        ``params`` maps each parameter name to its (S, ...) stack; ``train_generators`` holds each seed's ``train``
        stream state at the start of the current batch block and ``train_generators_now`` its current state,
        as :meth:`icl.train.Trainer.state_dict` does for one seed.
        """
        return {
            "step": self.step,
            "seeds": self.seeds,
            "params": {k: p.detach().clone() for k, p in zip(self.names, self.params)},
            "optimizer": self.optimizer.state_dict(),
            "train_generators": [s.clone() for s in self._block_states],
            "train_generators_now": [g.get_state() for g in self.gens],
            "histories": [h.to_state() for h in self.histories],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; training then continues exactly as the saved run would have.

        Raises:
            ValueError: a key is missing, the seeds or parameter names differ, or a saved generator state does
                not match the re-drawn batch.
        """
        missing = [k for k in SEED_BATCH_STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"seed-batch state is missing {', '.join(repr(k) for k in missing)}")
        if "seeds" in state and [int(s) for s in state["seeds"]] != self.seeds:
            raise ValueError(f"the state is of seeds {list(state['seeds'])}, this batch trains seeds {self.seeds}")
        if set(state["params"]) != set(self.names):
            raise ValueError(f"the state's parameters {sorted(state['params'])} are not this model's {self.names}")
        if len(state["train_generators"]) != self.S or len(state["histories"]) != self.S:
            raise ValueError(f"the state holds {len(state['histories'])} seeds, this batch {self.S}")
        with torch.no_grad():
            for name, p in zip(self.names, self.params):
                p.copy_(state["params"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.histories = [History.from_state(h) for h in state["histories"]]
        self._block_states = [g.clone() for g in state["train_generators"]]
        now = state.get("train_generators_now")
        self._batch = None
        if self.step % self.cfg.resample_every != 0:  # re-draw the batch the interrupted block was using
            for g, block in zip(self.gens, self._block_states):
                g.set_state(block.clone())
            self._batch = self._sample()
            if now is not None and not all(torch.equal(g.get_state(), t) for g, t in zip(self.gens, now)):
                raise ValueError(
                    "a train generator does not reach its saved state after re-drawing the current batch "
                    "(was the state saved with another batch size or prompt law?)"
                )
        else:
            for g, t in zip(self.gens, now if now is not None else self._block_states):
                g.set_state(t.clone())

    def seed_state_dict(self, s: int) -> dict[str, Any]:
        """Seed index ``s``'s state as :meth:`icl.train.Trainer.state_dict` has it, for a Trainer over the same
        model, law, config and Streams: its weights, its slice of every stacked optimizer tensor (Adam's moments,
        SGD's momentum buffer; the shared step counter as it is), its generator states and history."""
        model = self._copy_out(s)
        opt = self.optimizer.state_dict()
        shapes = {i: p.shape for i, p in enumerate(self.params)}
        sliced = {}
        for i, st in opt["state"].items():
            sliced[i] = {
                k: (v[s].clone() if v.shape == shapes[i] else v.clone()) if torch.is_tensor(v) else copy.deepcopy(v)
                for k, v in st.items()
            }
        return {
            "step": self.step,
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": {"state": sliced, "param_groups": copy.deepcopy(opt["param_groups"])},
            "train_generator": self._block_states[s].clone(),
            "train_generator_now": self.gens[s].get_state(),
            "base_lrs": list(self.base_lrs),
            "rollbacks": 0,
            "history": self.histories[s].to_state(),
        }


def train_seeds(
    model_factory: Callable[[Streams], nn.Module],
    dist_factory: Callable[[Streams], PromptDistribution],
    train_cfg: TrainConfig,
    seeds: Sequence[int],
    *,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    compile: bool | None = None,
) -> list[tuple[nn.Module, History]]:
    """Train one model per root seed in one vectorised run; per seed the same as the sequential Trainer.

    Args:
        model_factory: builds the seed's freshly initialised model from its Streams (draw the weights from
            ``streams.generator("init")``, as the studies do).
        dist_factory: builds the seed's prompt law from its Streams (rotation from ``streams.generator("rotation")``).
        train_cfg: the training config, shared by the seeds (optimizer adam, adamw or sgd).
        seeds: the root seeds; seed s uses ``Streams(s)``.
        device: ``cpu``, ``cuda`` or ``mps``.
        quiet: no progress bar.
        compile: :func:`torch.compile` the batched loss; None reads ``train_cfg.compile``.

    Returns:
        One (trained model, History) per seed, in the order of ``seeds``.
    """
    streams = [Streams(int(s)) for s in seeds]
    models = [model_factory(st) for st in streams]
    dists = [dist_factory(st) for st in streams]
    trainer = SeedBatchTrainer(models, dists, train_cfg, streams, device=device, quiet=quiet, compile=compile)
    histories = trainer.run()
    return list(zip(trainer.models(), histories))
