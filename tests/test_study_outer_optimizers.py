"""outer_optimizers: the quick profile (further reduced) writes every artifact and re-renders."""

import json
import math

from experiments.cli import main
from experiments.reporting import load_run

SMALL = ["--set", "train.steps=40", "--set", "train.eval_every=10", "--set", "train.batch_size=64",
         "--set", "train.eval_batch=256", "--set", "test_prompts=500", "--set", "tune_prompts=500",
         "--set", "optimizers=adam=0.01,rf_rmsprop=0.03,sirfshampoo=0.01,manifold_adam=0.01",
         "--set", "lr_grid=1,3"]  # fmt: skip


def test_outer_optimizers_quick(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "outer_optimizers", "--profile", "quick", "--out", str(out), "--quiet", *SMALL]) == 0
    for name in ("config.json", "results.csv", "summary.json", "report.md"):
        assert (out / name).is_file(), name
    for stem in ("loss_vs_steps", "loss_vs_time"):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["selected"]) == {"adam", "rf_rmsprop", "sirfshampoo", "manifold_adam"}
    assert math.isfinite(summary["tuned_pgd_test_loss"]) and summary["tuned_pgd_test_loss"] < 5.0
    _, rows = load_run(out)
    assert {r["metric"] for r in rows} >= {"val_loss", "wall_s", "test_loss", "final_val_loss"}
    # training curves start at the zero-ish predictor level and the wall clock is increasing
    walls = sorted((r["train_step"], r["value"]) for r in rows
                   if (r["method"], r["lr"]) == ("adam", 0.01) and r["metric"] == "wall_s")  # fmt: skip
    assert len(walls) > 1
    assert all(b[1] >= a[1] for a, b in zip(walls, walls[1:]))
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "Root-free vs root-based" in (out / "report.md").read_text()
