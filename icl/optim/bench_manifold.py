"""Step-time and drift benchmark of ManifoldAdam (Brantner 2023) on one Stiefel matrix.

Compares, on the same N×p tensor with the same fixed gradient: ``torch.optim.Adam``, ManifoldAdam (global
section, low-rank Cayley) and the projection baseline ProjectedRiemannianAdam (QR retraction), all timed in
one run; then the constraint violation ‖YᵀY − I‖_F after ``violation_steps`` ManifoldAdam steps on a fixed
random linear cost, in float32 (default re-orthonormalisation) and float64.  Reference: Brantner (2023),
*Generalizing Adam to manifolds for efficiently training transformers*.

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


def _interleaved(fns: dict, steps: int, repeats: int = 7) -> dict[str, float]:
    """Median seconds per call of each function, timed in interleaved blocks (A, B, C, A, B, C, ...) so that
    machine noise hits every variant alike; ``steps`` calls per variant in all, after a warm-up."""
    for f in fns.values():
        for _ in range(5):
            f()
    block = max(1, steps // repeats)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(block):
                f()
            times[k].append((time.perf_counter() - t0) / block)
    return {k: statistics.median(v) for k, v in times.items()}


def gemm_floor(L: torch.Tensor, G: torch.Tensor, B: torch.Tensor, P2: torch.Tensor) -> None:
    """The O(N²p) products every global-section Stiefel step must make, and nothing else: the coordinates
    ΛᵀG of the gradient, the tangent Y_⊥B of the velocity and the rank-p update Y_⊥ ← Y_⊥ − P₂Bᵀ of the
    section (Brantner 2023).  Its time is a lower bound for ManifoldAdam's step."""
    p = G.shape[1]
    L.T @ G
    L[:, p:] @ B
    L[:, p:].addmm_(P2, B.T, alpha=0.0)


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
        dict with ``adam_ms``, ``manifold_adam_ms``, ``projected_ms``, ``gemm_floor_ms`` (per step; see
        :func:`gemm_floor`), ``ratio_vs_adam``, ``ratio_vs_projected``, ``floor_ratio_vs_adam`` (the floor's
        time over Adam's: no implementation of the method can have a smaller ratio on this machine),
        ``ratio_vs_floor``, ``violation_float32``, ``violation_float64`` and the settings.
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
        adam = torch.optim.Adam([x], lr=lr, betas=(0.9, 0.99))
        y = torch.nn.Parameter(Y0.clone())
        madam = ManifoldAdam([{"params": [y], "manifold": "stiefel"}], lr=lr, seed=seed)
        z = torch.nn.Parameter(Y0.clone())
        proj = ProjectedRiemannianAdam([{"params": [z], "manifold": "stiefel"}], lr=lr)
        x.grad, y.grad, z.grad = G, G.clone(), G.clone()
        L = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0].to(dtype)
        B = 1e-3 * torch.randn(n - p, p, generator=g, dtype=torch.float64).to(dtype)
        P2 = torch.randn(n, p, generator=g, dtype=torch.float64).to(dtype)
        t = _interleaved(
            {"adam": adam.step, "manifold_adam": madam.step, "projected": proj.step,
             "floor": lambda: gemm_floor(L, G, B, P2)},
            steps,
        )  # fmt: skip
        res["adam_ms"] = 1e3 * t["adam"]
        res["manifold_adam_ms"] = 1e3 * t["manifold_adam"]
        res["projected_ms"] = 1e3 * t["projected"]
        res["gemm_floor_ms"] = 1e3 * t["floor"]
        res["ratio_vs_adam"] = res["manifold_adam_ms"] / res["adam_ms"]
        res["ratio_vs_projected"] = res["manifold_adam_ms"] / res["projected_ms"]
        res["floor_ratio_vs_adam"] = res["gemm_floor_ms"] / res["adam_ms"]
        res["ratio_vs_floor"] = res["manifold_adam_ms"] / res["gemm_floor_ms"]
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
    print(f"{'O(N^2 p) products alone':<28}{r['gemm_floor_ms']:>10.3f}{r['floor_ratio_vs_adam']:>10.2f}")
    print(f"ManifoldAdam / projected: {r['ratio_vs_projected']:.2f}; ManifoldAdam / floor: {r['ratio_vs_floor']:.2f}")
    if r["violation_steps"]:
        print(f"||Y^T Y - I||_F after {r['violation_steps']} steps:")
        print(f"  float32 (re-orthonormalised every 100): {r['violation_float32']:.2e}")
        print(f"  float64:                                {r['violation_float64']:.2e}")
