"""Shared pieces of the outer-optimizer studies (``outer_optimizers``, ``manifold_icl``).

- :class:`~learned_optimizers.constraints.BlockParams` (from the library): an LSA weight of shape (L, H, a, b)
  stored as L·H separate 2-D parameters. Stiefel parameters of :class:`icl.optim.ManifoldAdam` must be tall
  matrices, and :class:`icl.optim.SIRFShampoo` gives Kronecker factors only to matrices, so both studies hand
  the optimizers per-layer/head matrices.
- :func:`train_timed`: :func:`experiments.study.train_all_seeds` with the engine's clock and a monitor read-out
  (e.g. the constraint violation) as callbacks, and divergence recorded instead of raised.

The report side (learning-rate selection, the sweep table, the curve plots) is :mod:`experiments.reports.sweep`.

Rows: the columns ``method`` and ``lr`` name a run; curve metrics (``val_loss``, ``wall_s``, ``violation``) carry
the training step in the ``train_step`` column; depth is 0 (the model's depth is in the config).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from experiments.common import RunContext
from experiments.study import Rows, evaluate_model, train_all_seeds
from icl.config import Config
from icl.prompts import PromptDistribution
from icl.seeding import Streams
from icl.training import Clock, OptimizerSpec, ReadOut, TrainConfig, TrainingDiverged
from learned_optimizers.constraints import BlockParams, split_blocks  # noqa: F401  (the studies import them here)


def train_timed(
    ctx: RunContext,
    cfg: Config,
    tag: str,
    build: Callable[[Streams], nn.Module],
    dists: Sequence[PromptDistribution],
    train_cfg: TrainConfig,
    streams: Sequence[Streams],
    optimizer: OptimizerSpec,
    monitor: Callable[[nn.Module], float] | None = None,
    monitor_every: int = 50,
) -> list[dict[str, Any]]:
    """Train model ``tag`` (built per seed by ``build``) for every seed together, timed by a
    :class:`~icl.training.Clock` and with ``monitor(model)`` read out every ``monitor_every`` steps (both kept in
    the checkpoints, so ``--resume`` keeps them). When the seed batch diverges, each seed is trained alone, so
    that only the seeds that diverge are recorded as diverged.

    Returns, per seed: the trained run (None if it diverged), the validation curve, the elapsed seconds at each
    step (the seed's share of the batch's time), the monitor samples (step, value) and the status.
    """
    S = len(streams)
    clock = Clock()
    callbacks: list = [clock]
    probe = ReadOut(lambda i, m: {"value": float(monitor(m))}, monitor_every, name="monitor") if monitor else None
    if probe is not None:
        callbacks.append(probe)
    try:
        fitted = train_all_seeds(ctx, cfg, tag, [build(st) for st in streams], dists, train_cfg, streams,
                                 optimizer=optimizer, callbacks=callbacks)  # fmt: skip
    except TrainingDiverged as err:
        if S == 1:
            return [dict(trainer=None, evals=[], elapsed=[0.0], samples=[], status=f"diverged: {err}")]
        ctx.print(f"{tag}: {err}; training the seeds one by one")
        one = lambda i: train_timed(ctx, cfg, tag, build, dists[i : i + 1], train_cfg, streams[i : i + 1],  # noqa: E731
                                    optimizer, monitor, monitor_every)  # fmt: skip
        return [out for i in range(S) for out in one(i)]
    steps = fitted.runs[0].step
    at = sorted(clock.elapsed.items())
    elapsed, k = [], 0
    for step in range(steps + 1):  # the read-back times, carried forward to every step
        while k + 1 < len(at) and at[k + 1][0] <= step:
            k += 1
        elapsed.append((at[k][1] if at else 0.0) / len(fitted.runs))
    out = []
    for i, run in enumerate(fitted.runs):
        samples = [(int(r["step"]), r["value"]) for r in probe.rows[i]] if probe is not None else []
        out.append(dict(trainer=run, evals=run.history.evals, elapsed=elapsed, samples=samples, status="ok"))
    return out


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
