"""The benchmark command runs (--quick) and writes every benchmark; the quadratic baseline computes the LSA.

Timings are never asserted here (machines are noisy); the ratios are read from a full run (docs/performance.md).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.bench import BENCHMARKS, _load_all
from experiments.perf import QuadraticLSA, interleaved
from learned_optimizers import LinearSelfAttention, LSAConfig

ROOT = Path(__file__).resolve().parents[1]


def test_quadratic_baseline_equals_the_package_lsa():
    d, n = 4, 12
    quad = QuadraticLSA(d, layers=3, init_std=0.3).double()
    lsa = LinearSelfAttention(d, LSAConfig(layers=3)).double()
    lsa.set_weights(A=quad.A.detach()[:, None])
    Z = torch.randn(5, n + 1, d + 1, dtype=torch.float64)
    Z[:, -1, -1] = 0
    assert torch.allclose(quad(Z), lsa(Z), rtol=1e-12, atol=1e-12)


def test_interleaved_times_every_variant():
    calls = []
    med, reps = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3, warmup=1)
    assert set(med) == {"a", "b"} and reps == 3
    assert calls == ["a", "b"] * 4  # interleaved: A, B, A, B, ...


def test_quick_bench_writes_every_benchmark(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments", "bench", "--quick", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    _load_all()
    assert set(result["benchmarks"]) == set(BENCHMARKS)
    for name, bench in result["benchmarks"].items():
        assert bench["rows"], name
        assert all("error" not in row for row in bench["rows"]), (name, bench["rows"])
    assert {"date", "cpu_count", "torch"} <= set(result["hardware"])


def test_gemm_yardstick_does_its_work():
    """The GEMM the step ratios divide by really computes A B (a product BLAS could skip would be no yardstick)."""
    from experiments.perf import gemm_yardstick

    gemm, error = gemm_yardstick(size=64)
    assert error() == 1.0  # C starts at zero
    gemm()
    assert error() < 1e-5


def test_seed_batch_bench_times_its_floor_in_the_same_run():
    """With a fresh batch every step the seed-batch rows carry the S seeds' sampling alone and their raw normals,
    over one seed's whole step, and the step ratio those would leave (timed in the same interleaved run)."""
    from experiments.perf import bench_seed_batch

    (row,) = bench_seed_batch(quick=True, S=2)
    assert row["resample_every"] == 1
    step = row["sampling_2seeds_cpu_ms"] / row["sampling_vs_1seed_step_cpu"]  # one seed's step, CPU ms
    assert row["randn_vs_1seed_step_cpu"] == pytest.approx(row["randn_2seeds_cpu_ms"] / step)
    assert 0 < row["randn_2seeds_cpu_ms"] and 0 < row["sampling_2seeds_cpu_ms"]
    assert row["ratio_if_sampling_were_randn_cpu"] == pytest.approx(
        row["ratio_vs_1seed_cpu"] - (row["sampling_2seeds_cpu_ms"] - row["randn_2seeds_cpu_ms"]) / step
    )


def test_manifold_bench_pairs_its_variants_period_by_period(monkeypatch):
    """The ManifoldAdam bench's run: every period is ROUNDS rounds of one block of each variant in turn (A, A, B, …),
    the times come back per period and per call, and the blocks are sized to last as long as the lead's."""
    from icl.optim import bench_manifold as bm

    now = [0.0]
    monkeypatch.setitem(bm.CLOCKS, "fake", lambda: now[0])
    calls = []

    def variant(name, cost):
        def f():
            calls.append(name)
            now[0] += cost

        return f

    fns = bm._blocks({"a": variant("a", 1.0), "b": variant("b", 0.25)}, "a", 2, "fake")
    assert fns["a"][1] == 2 and fns["b"][1] == 8  # (b's block lasts as long as a's two calls)
    calls.clear()
    t = bm._paired(fns, periods=3, clock="fake")
    assert calls == (["a"] * 2 + ["b"] * 8) * bm.ROUNDS * 3
    assert t == {"a": [1.0] * 3, "b": [0.25] * 3}
