"""Shared pieces of the outer-optimizer studies (``outer_optimizers``, ``manifold_adam``).

- :class:`BlockParams`: an LSA weight of shape (L, H, a, b) stored as L·H separate 2-D parameters (optionally
  transposed). Stiefel parameters of :class:`icl.optim.ManifoldAdam` must be tall matrices, and
  :class:`icl.optim.SIRFShampoo` gives Kronecker factors only to matrices (it treats order > 2 tensors with its
  diagonal fallback), so both studies hand the optimizers per-layer/head matrices. The module replaces the
  model's attribute (``model.A = BlockParams(...)``), so ``model.A[layer]`` still returns the (H, a, b) stack
  and the model stays a registered :class:`~learned_optimizers.LinearSelfAttention` (checkpoints work).
- :class:`StepClock`: a forward pre-hook that stamps the wall-clock time of every training forward, and
  optionally samples a monitor (e.g. the constraint violation) every so many steps.
- :func:`train_timed`: :func:`experiments.study.train_one` with the clock, a saved timing file next to the
  checkpoint (so ``--resume`` keeps the times of finished runs) and divergence recorded instead of raised.

The report side (learning-rate selection, the sweep table, the curve plots) is :mod:`experiments.reports.sweep`.

Rows: the columns ``method`` and ``lr`` name a run; curve metrics (``val_loss``, ``wall_s``, ``violation``) carry
the training step in the ``train_step`` column; depth is 0 (the model's depth is in the config).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from experiments.common import RunContext
from experiments.study import Rows, evaluate_model, train_one
from icl.config import Config
from icl.prompts import PromptDistribution
from icl.seeding import Streams
from icl.train import TrainingDiverged


class BlockParams(nn.Module):
    """A weight of shape (L, H, a, b) held as L·H parameters of shape (a, b), or (b, a) with ``transpose``.

    ``self[i]`` is the (H, a, b) stack of layer i (what :meth:`LinearSelfAttention.layer_weights` indexes), and
    :meth:`full` the whole (L, H, a, b) tensor.
    """

    def __init__(self, weight: torch.Tensor, transpose: bool = False) -> None:
        super().__init__()
        self.L, self.H = weight.shape[:2]
        self.transpose = transpose
        flat = weight.detach().reshape(self.L * self.H, *weight.shape[2:])
        self.blocks = nn.ParameterList([nn.Parameter((w.T if transpose else w).clone()) for w in flat])

    def block(self, layer: int, head: int) -> torch.Tensor:
        w = self.blocks[layer * self.H + head]
        return w.T if self.transpose else w

    def __getitem__(self, layer: int) -> torch.Tensor:
        return torch.stack([self.block(layer, h) for h in range(self.H)])

    def full(self) -> torch.Tensor:
        return torch.stack([self[i] for i in range(self.L)])


def split_blocks(model: nn.Module, name: str, transpose: bool = False) -> BlockParams:
    """Replace ``model.<name>`` (an (L, H, a, b) parameter) by a :class:`BlockParams` of the same values."""
    blocks = BlockParams(getattr(model, name), transpose=transpose)
    delattr(model, name)
    setattr(model, name, blocks)  # now a submodule: model.<name>[layer] still indexes the (H, a, b) stack
    return blocks


class StepClock:
    """Wall-clock stamps of every training forward (grad enabled) of ``model``, and monitor samples.

    ``times[s]`` is the time at the start of step s+1 (after s steps and the evaluation at step s); call
    :meth:`stop` after training for the end time. ``samples`` holds (step, monitor()) every ``every`` steps.
    """

    def __init__(self, model: nn.Module, monitor: Callable[[], float] | None = None, every: int = 50) -> None:
        self.times: list[float] = []
        self.samples: list[tuple[int, float]] = []
        self.monitor, self.every = monitor, every
        self.end: float | None = None
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any) -> None:
        if not torch.is_grad_enabled():
            return
        step = len(self.times)
        if self.monitor is not None and step % self.every == 0:
            self.samples.append((step, float(self.monitor())))
        self.times.append(time.perf_counter())

    def stop(self) -> None:
        self.end = time.perf_counter()
        self._handle.remove()
        if self.monitor is not None:
            self.samples.append((len(self.times), float(self.monitor())))

    def elapsed(self) -> list[float]:
        """Seconds since the first step at steps 0, 1, …, len(times)."""
        if not self.times:
            return [0.0]
        t0 = self.times[0]
        return [t - t0 for t in self.times] + [(self.end or self.times[-1]) - t0]


def train_timed(
    ctx: RunContext,
    cfg: Config,
    tag: str,
    seed: int,
    model: nn.Module,
    dist: PromptDistribution,
    train_cfg: Any,
    streams: Streams,
    optimizer: torch.optim.Optimizer,
    monitor: Callable[[], float] | None = None,
    monitor_every: int = 50,
) -> dict[str, Any]:
    """Train with :func:`train_one` under a :class:`StepClock`; returns the trainer (None if it diverged),
    the validation curve, the elapsed seconds per step, the monitor samples and the status."""
    timing_path = ctx.out_dir / "checkpoints" / f"{tag}-s{seed}.timing.json"
    clock = StepClock(model, monitor, monitor_every)
    trainer, status = None, "ok"
    try:
        trainer = train_one(ctx, cfg, tag, seed, model, dist, train_cfg, streams, optimizer=optimizer)
    except TrainingDiverged as err:
        status = f"diverged: {err}"
    clock.stop()
    elapsed = clock.elapsed()
    samples = clock.samples
    if ctx.resume and timing_path.exists() and len(elapsed) <= 2:  # finished before: keep the measured times
        saved = json.loads(timing_path.read_text())
        elapsed, samples, status = saved["elapsed"], [tuple(s) for s in saved["samples"]], saved["status"]
    else:
        timing_path.parent.mkdir(parents=True, exist_ok=True)
        timing_path.write_text(json.dumps({"elapsed": elapsed, "samples": samples, "status": status}))
    evals = trainer.history.evals if trainer is not None else []
    return dict(trainer=trainer, evals=evals, elapsed=elapsed, samples=samples, status=status)


def add_run_rows(rows: Rows, method: str, lr: float, seed: int, run: Mapping[str, Any], test=None) -> None:
    """Curve and final rows of one (method, lr, seed) run."""
    elapsed = run["elapsed"]
    for e in run["evals"]:
        step = int(e["step"])
        rows.add(method, 0, seed, "val_loss", e["eval_loss"], lr=lr, train_step=step)
        rows.add(method, 0, seed, "wall_s", elapsed[min(step, len(elapsed) - 1)], lr=lr, train_step=step)
    for step, v in run["samples"]:
        rows.add(method, 0, seed, "violation", v, lr=lr, train_step=step)
    diverged = run["trainer"] is None
    final = run["evals"][-1]["eval_loss"] if run["evals"] and not diverged else float("inf")
    rows.add(method, 0, seed, "final_val_loss", final, lr=lr)
    rows.add(method, 0, seed, "diverged", float(diverged), lr=lr)
    steps = max(len(elapsed) - 1, 1)
    rows.add(method, 0, seed, "time_per_step_ms", 1e3 * elapsed[-1] / steps, lr=lr)
    if test is not None:
        rows.add_loss(method, 0, seed, test, lr=lr)


def evaluate(model: nn.Module, dist: PromptDistribution, streams: Streams, count: int):
    return evaluate_model(model, dist, streams, count)
