"""Step-time and drift benchmark of ManifoldAdam (Brantner 2023) on one Stiefel matrix.

Compares, on the same N×p tensor with the same fixed gradient: ``torch.optim.Adam``, ManifoldAdam (global
section, low-rank Cayley) and the projection baseline ProjectedRiemannianAdam (QR retraction), all timed in
one run; then the constraint violation ‖YᵀY − I‖_F after ``violation_steps`` ManifoldAdam steps on a fixed
random linear cost, in float32 (default re-orthonormalisation) and float64.  Reference: Brantner (2023),
*Generalizing Adam to manifolds for efficiently training transformers*; reference notes §3.

Run ``python -m icl.optim.bench_manifold`` for a table.
"""

from __future__ import annotations

import statistics
import time

import torch

from icl.optim.manifold_adam import ManifoldAdam
from icl.optim.manifolds import manifold_point
from icl.optim.riemannian_adam import ProjectedRiemannianAdam

__all__ = ["bench_manifold_adam"]


def _time_steps(opt, p, G, steps: int, repeats: int = 5) -> float:
    """Median over ``repeats`` blocks of the mean seconds per ``opt.step()``."""
    p.grad = G
    for _ in range(5):
        opt.step()
    block = max(1, steps // repeats)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(block):
            opt.step()
        times.append((time.perf_counter() - t0) / block)
    return statistics.median(times)


def _violation(n: int, p: int, steps: int, dtype: torch.dtype, seed: int, lr: float) -> float:
    g = torch.Generator().manual_seed(seed)
    Y = torch.nn.Parameter(manifold_point("stiefel", (n, p), generator=g, dtype=dtype))
    C = torch.randn(n, p, generator=g, dtype=torch.float64).to(dtype)  # fixed linear cost −tr(CᵀY)
    opt = ManifoldAdam([{"params": [Y], "manifold": "stiefel"}], lr=lr, seed=seed)
    Y.grad = -C
    for _ in range(steps):
        opt.step()
    return opt.constraint_violation()


def bench_manifold_adam(
    n: int = 512,
    p: int = 64,
    steps: int = 200,
    *,
    dtype: torch.dtype = torch.float32,
    violation_steps: int = 10_000,
    lr: float = 1e-3,
    seed: int = 0,
    threads: int | None = 1,
) -> dict:
    """Time one St(p, n) parameter (n rows, p columns) and measure drift.

    Args:
        n: ambient dimension N (rows).
        p: number of columns.
        steps: timed steps per optimizer.
        dtype: dtype of the timed runs.
        violation_steps: steps of the drift runs (0 skips them).
        lr: learning rate of all runs.
        seed: seed of the point, gradient and section.
        threads: torch intra-op threads during the benchmark (None leaves the setting alone).

    Returns:
        dict with ``adam_ms``, ``manifold_adam_ms``, ``projected_ms`` (per step), ``ratio_vs_adam``,
        ``ratio_vs_projected``, ``violation_float32``, ``violation_float64`` and the settings.
    """
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(seed)
        Y0 = manifold_point("stiefel", (n, p), generator=g, dtype=dtype)
        G = torch.randn(n, p, generator=g, dtype=torch.float64).to(dtype)
        res: dict = dict(n=n, p=p, steps=steps, dtype=str(dtype).replace("torch.", ""), threads=threads)
        x = torch.nn.Parameter(Y0.clone())
        res["adam_ms"] = 1e3 * _time_steps(torch.optim.Adam([x], lr=lr, betas=(0.9, 0.99)), x, G, steps)
        y = torch.nn.Parameter(Y0.clone())
        opt = ManifoldAdam([{"params": [y], "manifold": "stiefel"}], lr=lr, seed=seed)
        res["manifold_adam_ms"] = 1e3 * _time_steps(opt, y, G, steps)
        z = torch.nn.Parameter(Y0.clone())
        opt = ProjectedRiemannianAdam([{"params": [z], "manifold": "stiefel"}], lr=lr)
        res["projected_ms"] = 1e3 * _time_steps(opt, z, G, steps)
        res["ratio_vs_adam"] = res["manifold_adam_ms"] / res["adam_ms"]
        res["ratio_vs_projected"] = res["manifold_adam_ms"] / res["projected_ms"]
        res["violation_steps"] = violation_steps
        if violation_steps:
            res["violation_float32"] = _violation(n, p, violation_steps, torch.float32, seed, lr)
            res["violation_float64"] = _violation(n, p, violation_steps, torch.float64, seed, lr)
        return res
    finally:
        torch.set_num_threads(old_threads)


if __name__ == "__main__":
    r = bench_manifold_adam()
    print(f"St({r['p']}, {r['n']}) ({r['n']}x{r['p']}), {r['dtype']}, {r['threads']} thread(s), median ms/step")
    print(f"{'optimizer':<28}{'ms/step':>10}{'ratio':>10}")
    print(f"{'torch.optim.Adam':<28}{r['adam_ms']:>10.3f}{1.0:>10.2f}")
    print(f"{'ManifoldAdam (Cayley)':<28}{r['manifold_adam_ms']:>10.3f}{r['ratio_vs_adam']:>10.2f}")
    print(f"{'ProjectedRiemannianAdam':<28}{r['projected_ms']:>10.3f}{r['projected_ms'] / r['adam_ms']:>10.2f}")
    print(f"ManifoldAdam / projected: {r['ratio_vs_projected']:.2f}")
    if r["violation_steps"]:
        print(f"||Y^T Y - I||_F after {r['violation_steps']} steps:")
        print(f"  float32 (re-orthonormalised every 100): {r['violation_float32']:.2e}")
        print(f"  float64:                                {r['violation_float64']:.2e}")
