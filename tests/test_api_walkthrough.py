"""The docs/api.md walkthrough runs end to end with tiny settings (train, probe, plot)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("api_walkthrough", ROOT / "docs" / "examples" / "api_walkthrough.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_walkthrough_trains_probes_and_plots(tmp_path):
    result = _load().main(steps=40, layers=2, test_prompts=256, out=tmp_path)
    loss = np.asarray(result["loss_per_layer"])
    assert loss.shape == (3,) and np.isfinite(loss).all()
    probes = result["probes"]
    assert len(probes) == 2
    for c in probes.values():
        # layer 0 and step 0 are both the zero predictor w_0 = 0 on the same prompts
        assert math.isclose(c.loss_model[0], c.loss_reference[0], rel_tol=1e-9)
        assert c.sim_e.shape == (3, 3)
    assert loss[-1] < loss[0]  # 40 steps of training already beat the zero predictor
    assert result["figure"].exists() and result["figure"].stat().st_size > 0
    lo, hi = result["ylim"]
    data = np.concatenate([loss, *[c.loss_reference for c in probes.values()]])
    assert lo >= data.min() / 10 and hi <= data.max() * 10
