"""``tune(restarts=k)``: the refinement also runs from the next k best candidates, on an objective with two basins
whose values are known in closed form."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import reference_optimizers as ro

D = 3


def two_wells(X: torch.Tensor, y: torch.Tensor, steps: int, eta: float = 1.0) -> torch.Tensor:
    """Iterates whose last one is √f(η)·e_1, f(η) = 1 − ½·exp(−(η−1)²/0.01) − exp(−(η−3)²/0.01): a shallow well at
    η = 1 (f ≈ ½) and a deep one at η = 3 (f ≈ 0); the query x_q = e_1, y_q = 0 makes the query loss f(η)."""
    f = 1 - 0.5 * math.exp(-((eta - 1) ** 2) / 0.01) - math.exp(-((eta - 3) ** 2) / 0.01)
    w = torch.zeros(X.shape[0], steps + 1, D, dtype=X.dtype)
    w[:, -1, 0] = math.sqrt(max(f, 0.0))
    return w


def _prompts(batch: int = 4) -> SimpleNamespace:
    X = torch.randn(batch, 6, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xq = torch.zeros(batch, D, dtype=torch.float64)
    xq[:, 0] = 1.0
    return SimpleNamespace(X=X, y=X[..., 0], x_query=xq, y_query=torch.zeros(batch, dtype=torch.float64))


def test_restarts_reach_the_deep_well_that_one_refinement_from_the_best_grid_point_misses():
    prompts = _prompts()
    grid = {"eta": (1.02, 2.9, 5.0)}  # f = 0.52, 0.63, 1: the best grid point lies in the shallow well
    one = ro.tune(two_wells, prompts, 1, grid, maxfev=200)
    default = ro.tune(two_wells, prompts, 1, grid, maxfev=200, restarts=0)
    multi = ro.tune(two_wells, prompts, 1, grid, maxfev=200, restarts=1)
    assert one.objective == pytest.approx(0.5, abs=1e-6) and one.hyperparameters["eta"] == pytest.approx(1.0, abs=1e-3)
    assert default.hyperparameters == one.hyperparameters and default.evaluations == one.evaluations
    assert multi.objective == pytest.approx(0.0, abs=1e-6)
    assert multi.hyperparameters["eta"] == pytest.approx(3.0, abs=1e-3)
    assert multi.evaluations > one.evaluations
    # more restarts than distinct candidates: every candidate is refined once, the result is the deep well
    many = ro.tune(two_wells, prompts, 1, grid, maxfev=200, restarts=10)
    assert many.objective == pytest.approx(0.0, abs=1e-6)


def test_restarts_is_checked_before_any_evaluation():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="restarts"):
            ro.tune(two_wells, _prompts(), 1, {"eta": (1.0,)}, restarts=bad)
