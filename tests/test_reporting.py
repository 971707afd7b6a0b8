"""Report helpers shared by the studies."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from experiments.reporting import dominated_by_few
from experiments.study import query_losses


def _rows(seed: int, errors: np.ndarray) -> list[dict]:
    """test_loss / test_loss_stderr rows of one seed, from the studies' own estimator (squared errors given)."""
    est = query_losses(torch.as_tensor(np.sqrt(errors)), SimpleNamespace(y_query=torch.zeros(len(errors))))
    return [
        dict(method="m", depth=4, seed=seed, metric="test_loss", value=est.mean),
        dict(method="m", depth=4, seed=seed, metric="test_loss_stderr", value=est.stderr),
    ]


def test_one_exploding_prompt_is_flagged_and_a_light_tail_is_not():
    rng = np.random.default_rng(0)
    typical = rng.chisquare(1, size=20_000) * 0.01  # squared Gaussian errors: s.e./mean ≈ √2/√M ≈ 1%
    exploded = typical.copy()
    exploded[123] = 1e6  # one prompt diverged
    rows = _rows(0, typical) + _rows(1, exploded)
    flagged = dominated_by_few(rows, "m", 4)
    assert [s for s, _, _ in flagged] == [1]
    seed, mean, se = flagged[0]
    assert abs(se / mean - 1) < 0.01  # one prompt of value V among M: mean ≈ s.e. ≈ V/M
    assert dominated_by_few(rows, "m", 4, floor=1e3) == []  # the floor excludes small means
    assert dominated_by_few(rows, "other", 4) == []
