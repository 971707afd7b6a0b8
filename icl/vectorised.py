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

Checkpoints: :meth:`SeedBatchTrainer.state_dict` holds the stacked state; :meth:`SeedBatchTrainer.models`
unstacks the weights into the per-seed modules. The seed batch runs on any device (``cpu``, ``cuda``,
``mps``); losses stay on the device and are read back every ``log_every`` steps, as in the Trainer.
"""

from __future__ import annotations

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
from icl.train import History, TrainConfig, TrainingDiverged, build_optimizer, lr_factor, query_mse
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


class SeedBatchTrainer:
    """Trains S models of one architecture, one per seed, in one vectorised run (see the module docstring).

    Args:
        models: the S freshly initialised models (same class and config).
        dists: the S prompt laws (each seed's own rotation).
        cfg: the training config (``optimizer`` must be one of :data:`ELEMENTWISE_OPTIMIZERS`).
        streams: the S seeds' streams (``train`` and ``val`` are used).
        device: where the models and prompts live.
        quiet: no progress bar.
        compile: wrap the batched loss in :func:`torch.compile` (off by default: on a 2-core CPU compiling
            costs far more than it saves; see docs/performance.md).
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
        compile: bool = False,
    ) -> None:
        if not models or not (len(models) == len(dists) == len(streams)):
            raise ValueError(f"need one model, law and Streams per seed, got {len(models)}, {len(dists)}, "
                             f"{len(streams)}")  # fmt: skip
        if cfg.optimizer not in ELEMENTWISE_OPTIMIZERS:
            raise ConfigError(
                f"train.optimizer = {cfg.optimizer!r} is not elementwise, so seeds can not share one stacked "
                f"optimizer; use one of {', '.join(ELEMENTWISE_OPTIMIZERS)} or train the seeds one by one"
            )
        if cfg.loss != "query":
            raise ConfigError(
                f"train.loss = {cfg.loss!r} is not supported by the seed batch (it trains on the query loss); "
                "train the seeds one by one with the Trainer"
            )
        kinds = {(type(m), repr(getattr(m, "cfg", None)), getattr(m, "d", None)) for m in models}
        if len(kinds) != 1:
            raise ValueError("every seed's model must have the same class, config and d")
        self.device = torch.device(device)
        self.cfg = cfg
        self.S = len(models)
        self._models = [m.to(device=self.device, dtype=cfg.torch_dtype) for m in models]
        for m in self._models:
            if not all(p.requires_grad for p in m.parameters()):
                raise ValueError("frozen parameters are not supported by the seed batch; train one by one")
        self.dists = list(dists)
        for dist in self.dists:
            dist.dtype = cfg.torch_dtype
        self.streams = list(streams)
        self.quiet = quiet or not sys.stderr.isatty()
        params, buffers = stack_module_state(self._models)
        self.names = list(params)
        self.params = [params[k] for k in self.names]  # leaves, (S, ...)
        self.buffers = buffers
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
        # models whose prediction needs only the context Gram matrix and the query (the LSA family): compute
        # those once per batch for all seeds, outside autograd and vmap, instead of inside every step
        self.gram = bool(getattr(self.skeleton, "gram_sufficient", False))
        self._gram_call = _GramCall(self.skeleton) if self.gram else None
        self.val_inputs = self._inputs(self.Z_val)
        batched = vmap(self._seed_loss)
        self._losses = torch.compile(batched) if compile else batched

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
    def run(self, until: int | None = None) -> list[History]:
        """Train until step ``until`` (default ``cfg.steps``); the per-seed histories, as the Trainer logs them.

        Raises:
            TrainingDiverged: a seed's loss or gradient norm became NaN or infinite (naming the seed).
        """
        cfg = self.cfg
        until = cfg.steps if until is None else min(until, cfg.steps)
        pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []
        bar = tqdm(total=cfg.steps, initial=self.step, disable=self.quiet, desc=f"train ×{self.S}", leave=False)
        try:
            while self.step < until:
                losses, gnorms, lr = self.train_step()
                pending.append((self.step, lr, losses, gnorms))
                bar.update(1)
                at_end = self.step == until
                if self.step % cfg.log_every == 0 or at_end or self.step % cfg.eval_every == 0:
                    self._flush(pending)
                    pending = []
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    for hist, value in zip(self.histories, self.evaluate()):
                        hist.evals.append({"step": self.step, "eval_loss": value})
        finally:
            bar.close()
        return self.histories

    def _flush(self, pending: list[tuple[int, float, torch.Tensor, torch.Tensor]]) -> None:
        if not pending:
            return
        values = torch.stack([torch.stack([l.float(), g.float()], dim=1) for _, _, l, g in pending]).tolist()
        for (step, lr, _, _), per_seed in zip(pending, values):
            for s, (hist, (loss, gnorm)) in enumerate(zip(self.histories, per_seed)):
                if not (math.isfinite(loss) and math.isfinite(gnorm)):
                    what = "loss" if not math.isfinite(loss) else "gradient norm"
                    raise TrainingDiverged(
                        f"seed {self.streams[s].seed}: non-finite {what} at step {step}; "
                        f"last finite loss {hist.last_loss:.6g}"
                    )
                hist.rows.append({"step": step, "loss": loss, "lr": lr, "grad_norm": gnorm})

    # -- results -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def models(self) -> list[nn.Module]:
        """The S models with their trained weights (the stacked parameters copied back)."""
        for s, model in enumerate(self._models):
            named = dict(model.named_parameters())
            for name, p in zip(self.names, self.params):
                named[name].copy_(p[s])
            named_b = dict(model.named_buffers())
            for name, b in self.buffers.items():
                named_b[name].copy_(b[s])
        return self._models

    def state_dict(self) -> dict[str, Any]:
        """The stacked state: step, parameters (S, ...), optimizer, train-generator states, histories."""
        return {
            "step": self.step,
            "params": {k: p.detach().clone() for k, p in zip(self.names, self.params)},
            "optimizer": self.optimizer.state_dict(),
            "train_generators": [s.clone() for s in self._block_states],
            "histories": [h.to_state() for h in self.histories],
        }


def train_seeds(
    model_factory: Callable[[Streams], nn.Module],
    dist_factory: Callable[[Streams], PromptDistribution],
    train_cfg: TrainConfig,
    seeds: Sequence[int],
    *,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    compile: bool = False,
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
        compile: :func:`torch.compile` the batched loss.

    Returns:
        One (trained model, History) per seed, in the order of ``seeds``.
    """
    streams = [Streams(int(s)) for s in seeds]
    models = [model_factory(st) for st in streams]
    dists = [dist_factory(st) for st in streams]
    trainer = SeedBatchTrainer(models, dists, train_cfg, streams, device=device, quiet=quiet, compile=compile)
    histories = trainer.run()
    return list(zip(trainer.models(), histories))
