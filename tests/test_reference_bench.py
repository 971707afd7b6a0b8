"""Smoke test of the benchmark entry point (tiny sizes; the real numbers come from running the module)."""

import pytest

from reference_optimizers.bench import bench_reference_optimizers


def test_bench_returns_one_row_per_method():
    rows = bench_reference_optimizers(batch=50, d=4, n=8, steps=3, repeats=1)
    assert len(rows) == 10 and {"method", "seconds", "prompts_per_s", "cpu_seconds"} <= set(rows[0])
    assert all(r["seconds"] > 0 for r in rows)


def test_bench_rejects_unknown_method():
    with pytest.raises(ValueError, match="methods"):
        bench_reference_optimizers(batch=10, d=3, n=5, steps=2, repeats=1, methods=["adam"])
