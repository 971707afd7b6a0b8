"""The convergence helpers every report uses: gap to the class optimum and heavy-tail statistics."""

import math

import numpy as np
import pytest
from scipy import stats

from experiments.convergence import class_gap, tail_stats


def test_class_gap_flags_only_beyond_tolerance():
    ok = class_gap(-2.00, -2.03, 0.05, "tuned PGD")
    assert ok.gap == pytest.approx(0.03) and not ok.flagged and "within 0.05" in ok.text()
    bad = class_gap(-2.00, -2.96, 0.1, "tuned PGD")
    assert bad.gap == pytest.approx(0.96) and bad.flagged and "not converged" in bad.text()
    assert class_gap(float("nan"), -1.0, 0.1, "x").flagged


@pytest.mark.parametrize("tol", [0, -1, float("nan"), float("inf")])
def test_class_gap_rejects_bad_tolerance(tol):
    with pytest.raises(ValueError, match="tolerance"):
        class_gap(0.0, 0.0, tol, "x")


def test_tail_stats_against_numpy_and_scipy():
    rng = np.random.default_rng(0)
    x = rng.standard_cauchy(10_000) ** 2  # heavy-tailed, non-negative
    t = tail_stats(x, parts=4, trim=0.1)
    assert t.count == 10_000
    assert t.mean == pytest.approx(x.mean(), rel=1e-12)
    assert t.median == pytest.approx(np.median(x), rel=1e-12)
    assert t.trimmed_mean == pytest.approx(stats.trim_mean(x, 0.1), rel=1e-12)
    logs = [math.log(p.mean()) for p in np.split(x, 4)]
    assert t.log_mean_parts_min == pytest.approx(min(logs)) and t.log_mean_parts_max == pytest.approx(max(logs))
    assert t.log_mean_parts_sd == pytest.approx(np.std(logs, ddof=1))
    top = np.sort(x)[-100:].sum() / x.sum()
    assert t.top_share == pytest.approx(top)
    assert t.median < t.trimmed_mean < t.mean  # what heavy tails look like


@pytest.mark.parametrize("bad, match", [([], "non-empty"), ([[1.0]], "1-D"), ([1.0, float("nan")], "finite"),
                                        ([1.0, -1.0], "non-negative")])
def test_tail_stats_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        tail_stats(np.asarray(bad, dtype=float), parts=1)


def test_tail_stats_rejects_more_parts_than_prompts():
    with pytest.raises(ValueError, match="parts"):
        tail_stats([1.0, 2.0], parts=3)
