"""newton_vs_gd: the quick profile (further reduced) writes heat maps and the report, and re-renders."""

import json

import torch

from experiments.cli import main
from experiments.newton_vs_gd import gd_iterates, gd_steps_grid
from experiments.reporting import load_run
from experiments.reports.newton_vs_gd import steps_to_reach
from reference_optimizers import gradient_descent

SMALL = ["--set", "lsa_train.steps=20", "--set", "gpt_train.steps=10", "--set", "compare_prompts=16",
         "--set", "probe_prompts=128", "--set", "test_prompts=200", "--set", "gd_max_steps=64",
         "--set", "newton_steps=6", "--set", "gpt.layers=2", "--set", "lsa.layers=2"]  # fmt: skip


def test_gd_iterates_match_the_reference(gen):
    X = torch.randn(4, 20, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(4, 20, generator=gen, dtype=torch.float64)
    keep = gd_steps_grid(16)
    assert keep[0] == 0 and keep[-1] == 16
    ref = gradient_descent(X, y, 16, 0.3)
    assert torch.allclose(gd_iterates(X, y, 0.3, keep), ref[:, keep], atol=1e-12)


def test_newton_vs_gd_quick(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "newton_vs_gd", "--profile", "quick", "--out", str(out), "--quiet", *SMALL]) == 0
    for name in ("config.json", "results.csv", "summary.json", "report.md"):
        assert (out / name).is_file(), name
    for stem in ("heatmap_lsa_full_newton", "heatmap_lsa_full_gd", "heatmap_gpt_newton", "heatmap_gpt_gd",
                 "best_matching_steps"):  # fmt: skip
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 1000, stem
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"lsa_full", "gpt"}
    assert summary["zero_predictor_loss"] == 10.0  # tr Σ = d for x ~ N(0, I), w* ~ N(0, I)
    gd = {int(k): v for k, v in summary["gd_loss"].items()}
    assert gd[0] > gd[1] > gd[2] > gd[4] > gd[8]  # tuned GD decreases the query loss
    assert json.loads((out / "config.json").read_text())["config"]["gpt_train"]["loss"] == "prefix"
    assert 0 < summary["tuned_gd_eta"] <= 1.5
    _, rows = load_run(out)
    sims = [r["value"] for r in rows if r["metric"] == "sim_e" and r["reference"] in ("newton", "gd")]
    assert sims and all(-1 - 1e-9 <= v <= 1 + 1e-9 for v in sims)
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "Fu et al." in (out / "report.md").read_text()


def test_steps_to_reach_brackets_the_reference_grid():
    losses = {0: 10.0, 1: 4.0, 2: 2.5, 4: 1.2, 8: 0.5}
    assert steps_to_reach(1.0, losses) == "4–8"
    assert steps_to_reach(2.5, losses) == "1–2"  # reached exactly at step 2
    assert steps_to_reach(11.0, losses) == "≤ 0"
    assert steps_to_reach(0.1, losses) == "> 8"
    assert steps_to_reach(float("nan"), losses) == "–"
