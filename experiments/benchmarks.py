"""The registered benchmarks (see :mod:`experiments.bench`), run in this order.

The small, overhead-bound step timings (seed batch, scaling, throughput) run before the quadratic baseline,
whose gigabyte-sized score matrices leave the allocator in a state that slows later small steps.
"""

from __future__ import annotations

from typing import Any

import torch

from experiments.bench import benchmark


@benchmark("gemm_ratio")
def gemm_ratio(quick: bool) -> list[dict[str, Any]]:
    """Every family's train step at batch 20,000 over one 512³ float32 GEMM (issue 15); targets sparse <= 2,
    GD++ / full / CGD-like Memformer <= 10."""
    from experiments.perf import bench_gemm_ratio

    return bench_gemm_ratio(quick)


@benchmark("paper_profile")
def paper_profile(quick: bool) -> list[dict[str, Any]]:
    """Ahn et al.'s paper profile (20,000 steps at batch 20,000) for a 3-layer sparse and GD++ LSA on 2 threads,
    extrapolated from a measured block of 100 steps; target < 10 minutes each (issue 15)."""
    from experiments.perf import bench_paper_profile

    return bench_paper_profile(quick)


@benchmark("manifold_adam")
def manifold_adam(quick: bool) -> list[dict[str, Any]]:
    """ManifoldAdam's step against the three O(N²p) products alone, geoopt's RiemannianAdam and torch's Adam
    (default and fused) on St(64, 512) and on 336 × St(7, 49) in one optimizer, 1 thread (and St(64, 512) with 2
    threads), and the constraint violation after 10,000 steps in float32 and float64 (issue 16)."""
    import os

    from icl.optim.bench_manifold import bench_manifold_adam

    kw: dict[str, Any] = {}
    if quick:  # small shapes, no pip install of geoopt
        kw = {"n": 64, "p": 8, "vit": (12, 16, 4), "violation_steps": 200, "periods": 2, "vit_periods": 1,
              "install_geoopt": False}
    rows = bench_manifold_adam(threads=1, **kw)
    if (os.cpu_count() or 1) >= 2:  # the O(N²p) products use both cores, Adam's elementwise step does not
        rows += bench_manifold_adam(threads=2, **{**kw, "violation_steps": 0, "vit": None})
    return rows


@benchmark("seed_batch")
def seed_batch(quick: bool) -> list[dict[str, Any]]:
    """S = 8 vectorised seeds vs 1 seed; target at most 2.5x the time."""
    from experiments.perf import bench_seed_batch

    return bench_seed_batch(quick)


@benchmark("lsa_scaling_n")
def lsa_scaling_n(quick: bool) -> list[dict[str, Any]]:
    """Step time at n = 1000 over n = 100; target at most 12 (linear in n)."""
    from experiments.perf import bench_scaling_n

    return bench_scaling_n(quick)


@benchmark("throughput")
def throughput(quick: bool) -> list[dict[str, Any]]:
    """Training prompts per second of the LSA, the Memformers and the softmax GPT."""
    from experiments.perf import bench_throughput

    return bench_throughput(quick)


@benchmark("lsa_vs_quadratic")
def lsa_vs_quadratic(quick: bool) -> list[dict[str, Any]]:
    """Train step of the package's LSA vs the quadratic score-matrix form; targets 2.5x, 15x, 50x (issue 8)."""
    from experiments.perf import bench_lsa_vs_quadratic

    return bench_lsa_vs_quadratic(quick)


@benchmark("peak_memory")
def peak_memory(quick: bool) -> list[dict[str, Any]]:
    """Peak memory of a train step per configuration (subprocess maxrss on CPU, max_memory_allocated on CUDA)."""
    from experiments.perf import bench_peak_memory

    return bench_peak_memory(quick, device="cuda" if torch.cuda.is_available() else "cpu")


@benchmark("reference_optimizers")
def reference_optimizers(quick: bool) -> list[dict[str, Any]]:
    """Wall clock of every reference optimizer on 100,000 prompts, d = 20, n = 40, 20 steps (quick: small)."""
    from reference_optimizers.bench import bench_reference_optimizers

    kw = {"batch": 2_000, "d": 5, "n": 10, "steps": 5, "repeats": 1} if quick else {}
    return bench_reference_optimizers(**kw)


@benchmark("compile")
def compile_(quick: bool) -> list[dict[str, Any]]:
    """torch.compile vs eager train step (full bench only)."""
    from experiments.perf import bench_compile

    return bench_compile(quick)
