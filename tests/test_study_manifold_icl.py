"""manifold_icl: the quick profile (further reduced) writes every artifact with every method, keeps U on the Stiefel
manifold and re-renders; the gap, first-reach and verdict helpers on hand-made numbers."""

import json
import math

import torch

from experiments.cli import main
from experiments.manifold_icl import METHODS, REFERENCES, first_reach, log_gap
from experiments.reporting import load_run
from experiments.reports.manifold_icl import verdict

SMALL = ["--set", "train.steps=20", "--set", "train.eval_every=10", "--set", "train.batch_size=64",
         "--set", "train.eval_batch=128", "--set", "test_prompts=300", "--set", "tune_prompts=300",
         "--set", "monitor_every=10"]  # fmt: skip


def test_manifold_icl_quick(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "manifold_icl", "--profile", "quick", "--out", str(out), "--quiet", *SMALL]) == 0
    for name in ("config.json", "results.csv", "summary.json", "report.md"):
        assert (out / name).is_file(), name
    for stem in ("loss_vs_steps_L2", "loss_vs_seconds_L2", "principal_angles"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000, stem
    summary = json.loads((out / "summary.json").read_text())
    assert {k.split("/")[0] for k in summary["selected"]} == set(METHODS)
    for name in METHODS:
        if name not in REFERENCES:
            assert summary["selected"][f"{name}/L2"]["max_violation"] < 1e-12, name
    assert len(summary["verdicts"]) == (len(METHODS) - len(REFERENCES)) * len(REFERENCES)
    _, rows = load_run(out)
    angles = [r["value"] for r in rows if r["metric"] == "angle_max" and r["train_step"] is not None]
    assert angles and all(0 <= a <= 90 for a in angles)
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "Paired comparisons" in (out / "report.md").read_text()


def test_log_gap_and_its_paired_standard_error():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(4000, generator=g, dtype=torch.float64) + 0.5
    err = 1.2 * ref  # a constant ratio: the gap is log 1.2 with no spread over prompts
    gap, se = log_gap(err, ref)
    assert abs(gap - math.log(1.2)) < 1e-12 and se < 1e-12
    noisy = ref * (1 + 0.1 * torch.randn(4000, generator=g, dtype=torch.float64))
    gap, se = log_gap(noisy, ref)
    assert abs(gap - math.log(float(noisy.mean() / ref.mean()))) < 1e-12 and 0 < se < 0.01


def test_first_reach_and_verdicts_follow_the_numbers():
    assert first_reach({100: 0.2, 200: 0.04, 300: 0.06}, 0.05) == 200
    assert math.isnan(first_reach({100: 0.2}, 0.05))
    fast = dict(ratio=(5.0, 4.0, 6.0), time_ratio=(3.0, 2.0, 4.0), pairs=3, diff=(-0.01, -0.02, -0.005),
                diff_prompt_se=[0.01] * 3, seeds=3, unreached_ref=0)  # fmt: skip
    text = verdict("spectral", "unconstrained", 3, fast, 0.05)
    assert "5× fewer steps" in text and "excludes 1" in text and "meets the 3× target" in text
    assert "lower than" in text and "over prompts" in text
    slow = dict(fast, ratio=(2.0, 0.5, 8.0), diff=(0.01, -0.02, 0.04))
    text = verdict("spectral", "unconstrained", 3, slow, 0.05)
    assert "not distinguishable from 1" in text and "does not meet" in text and "not distinguishable at 95%" in text
