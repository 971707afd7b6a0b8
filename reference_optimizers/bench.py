"""Wall-clock benchmark of the reference optimizers on one large batch of random prompts.

Run ``python -m reference_optimizers.bench`` for a table. The thread count is whatever torch is set to.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from einops import einsum

from reference_optimizers.closed_form import least_squares, ridge
from reference_optimizers.conjugate_gradient import conjugate_gradient
from reference_optimizers.gd_plus_plus import gd_plus_plus
from reference_optimizers.gradient_descent import gradient_descent, preconditioned_gd
from reference_optimizers.momentum import heavy_ball, nesterov
from reference_optimizers.newton import iterative_newton, newton


def _methods(
    d: int, dtype: torch.dtype
) -> dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]]:
    P = torch.eye(d, dtype=dtype) * 0.5
    return {
        "gradient_descent": lambda X, y, s: gradient_descent(X, y, s, eta=0.5),
        "preconditioned_gd": lambda X, y, s: preconditioned_gd(X, y, s, P),
        "gd_plus_plus": lambda X, y, s: gd_plus_plus(X, y, s, eta=0.5, gamma=0.05),
        "heavy_ball": lambda X, y, s: heavy_ball(X, y, s, eta=0.5, beta=0.3),
        "nesterov": lambda X, y, s: nesterov(X, y, s, eta=0.5, beta=0.3),
        "conjugate_gradient": conjugate_gradient,
        "newton": newton,
        "iterative_newton": iterative_newton,
        "least_squares": lambda X, y, s: least_squares(X, y),
        "ridge": lambda X, y, s: ridge(X, y, 0.1),
    }


def bench_reference_optimizers(
    batch: int = 100_000,
    d: int = 20,
    n: int = 40,
    steps: int = 20,
    repeats: int = 3,
    dtype: torch.dtype = torch.float32,
    methods: list[str] | None = None,
    seed: int = 0,
) -> list[dict]:
    """Time every reference optimizer on one batch of isotropic noiseless prompts (best of ``repeats``).

    Args:
        batch: number of prompts B.
        d: input dimension.
        n: context points per prompt.
        steps: iterations per method (the closed forms ignore it).
        repeats: timed runs per method; the minimum is reported.
        dtype: the data dtype.
        methods: a subset of method names (default: all).
        seed: seed of the torch.Generator that draws the prompts.

    Returns:
        One dict per method: ``method``, ``seconds`` (wall clock), ``prompts_per_s`` and ``cpu_seconds`` (CPU
        time of this process summed over its threads; on a machine shared with other jobs the wall clock of a
        multi-threaded run can be far above cpu_seconds / threads, so both are reported).
    """
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, n, d, generator=gen, dtype=dtype)
    w = torch.randn(batch, d, generator=gen, dtype=dtype)
    y = einsum(X, w, "b n d, b d -> b n")
    table = _methods(d, dtype)
    names = list(table) if methods is None else methods
    rows = []
    for name in names:
        if name not in table:
            raise ValueError(f"methods: unknown method {name!r}; known: {sorted(table)}")
        best, best_cpu = float("inf"), float("inf")
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            table[name](X, y, steps)
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        rows.append({"method": name, "seconds": best, "prompts_per_s": batch / best, "cpu_seconds": best_cpu})
    return rows


if __name__ == "__main__":
    cfg = dict(batch=100_000, d=20, n=40, steps=20)
    print(f"reference optimizers, {cfg}, float32, torch threads = {torch.get_num_threads()}")
    print(f"{'method':<20} {'seconds':>9} {'prompts/s':>12} {'cpu seconds':>12}")
    for name in _methods(cfg["d"], torch.float32):
        (row,) = bench_reference_optimizers(**cfg, methods=[name])
        print(
            f"{name:<20} {row['seconds']:>9.3f} {row['prompts_per_s']:>12.0f} {row['cpu_seconds']:>12.3f}",
            flush=True,
        )
