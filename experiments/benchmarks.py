"""The registered benchmarks (see :mod:`experiments.bench`)."""

from __future__ import annotations

from typing import Any

from experiments.bench import benchmark


@benchmark("manifold_adam")
def manifold_adam(quick: bool) -> list[dict[str, Any]]:
    """Step time of one St(512, 64) parameter: ManifoldAdam vs torch Adam vs projected Riemannian Adam, and
    the constraint violation after 10,000 steps in float32 and float64 (issue 6)."""
    from icl.optim.bench_manifold import bench_manifold_adam

    kw = {"n": 64, "p": 8, "steps": 20, "violation_steps": 200} if quick else {}
    res = bench_manifold_adam(**kw)
    return res if isinstance(res, list) else [res]
