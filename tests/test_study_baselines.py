"""baselines: the quick profile via the CLI writes parseable artifacts, re-renders, and passes numeric checks."""

import json
import math

import torch

from experiments.baselines import DUTTA_CGD, SCHEDULES, _krylov_losses
from experiments.cli import main
from experiments.reporting import load_run
from icl.prompts import PromptConfig, PromptDistribution
from reference_optimizers import conjugate_gradient, krylov_bound, least_squares

SMALL = ["--set", "test_prompts=1000", "--set", "train_prompts=256", "--set", "val_prompts=2000",
         "--set", "krylov_prompts=4000", "--set", "tune_budget=10"]  # fmt: skip


def test_cg_after_d_steps_is_least_squares_in_float64(gen):
    cfg = PromptConfig(d=5, n=20, eigenvalues=(1.0, 1.0, 0.25, 0.0625, 1.0), w_prior="inverse_sigma")
    dist = PromptDistribution(cfg, generator=gen, dtype=torch.float64)
    b = dist.sample(500, gen)
    w_ls = least_squares(b.X, b.y)
    for variant in ("fletcher_reeves", "polak_ribiere"):
        w_cg = conjugate_gradient(b.X, b.y, 5, variant)[:, 5]
        rel = (w_cg - w_ls).norm(dim=1) / w_ls.norm(dim=1)
        assert float(rel.max()) < 1e-8, variant


def test_krylov_monomial_predictions_match_the_bound(gen):
    dist = PromptDistribution(PromptConfig(d=5, n=20), generator=gen, dtype=torch.float64)
    train, test = dist.sample(4000, gen), dist.sample(500, gen)
    eye = torch.eye(5, dtype=torch.float64)
    kb = krylov_bound(train, test, 4, preconditioner=eye)
    for T in range(1, 5):
        assert math.isclose(float(_krylov_losses(kb, test, eye, T).mean()), float(kb.test_loss[T]), rel_tol=1e-6)


def test_baselines_quick(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "baselines", "--profile", "quick", "--out", str(out), "--quiet", *SMALL]) == 0
    for name in ("config.json", "results.csv", "summary.json", "report.md"):
        assert (out / name).is_file(), name
    for ext in ("png", "pdf"):
        assert (out / "figures" / f"log_loss_vs_steps.{ext}").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["datasets"] == ["ahn_dutta", "isotropic"]
    cfg, rows = load_run(out)
    assert cfg["config"]["profile"] == "quick"

    def value(method, T, metric="test_loss"):
        setting, _, method = method.partition("/")
        v = [r["value"] for r in rows if r["setting"] == setting and r["method"] == method and r["depth"] == T
             and r["metric"] == metric and r["k"] is None]  # fmt: skip
        assert len(v) == 1, (setting, method, T, metric)
        return v[0]

    for ds in ("ahn_dutta", "isotropic"):
        # CG at step d is least squares (float64), Newton after one step too
        assert value(f"{ds}/cg_fr", 5, "max_rel_err_vs_least_squares") < 1e-8
        assert value(f"{ds}/newton", 1, "max_rel_err_vs_least_squares") < 1e-8
        ls = value(f"{ds}/least_squares", 1)
        assert ls < 1e-20 and value(f"{ds}/newton", 1) < 1e-20
        # a per-step schedule is never worse than its own T−1 result on the prompts it was chosen on
        for m in SCHEDULES:
            val = [value(f"{ds}/{m}", T, "val_loss") for T in range(1, 9)]
            assert all(b <= a * (1 + 1e-12) for a, b in zip(val, val[1:])), (ds, m, val)
        # per-step GD starts from the steps attaining the Krylov bound: where those exist it is at the bound, up to
        # the sampling noise of 1,000 heavy-tailed test prompts (a tuner failure is a gap of 0.3 to 3 at T >= 4)
        for T in range(1, 5):
            if value(f"{ds}/krylov_bound", T, "real_roots") == 1.0:
                gap = math.log(value(f"{ds}/gd_schedule", T)) - math.log(value(f"{ds}/krylov_bound", T))
                assert abs(gap) < 0.1, (ds, T, gap)
        # heavy tails: the log of the mean lies between the parts' log means (equal parts: the mean of their means)
        for T in (1, 8):
            lm = math.log(value(f"{ds}/cg_fr", T))
            assert value(f"{ds}/cg_fr", T, "tail:log_mean_parts_min") <= lm + 1e-12
            assert lm <= value(f"{ds}/cg_fr", T, "tail:log_mean_parts_max") + 1e-12
            assert 0.01 <= value(f"{ds}/cg_fr", T, "tail:top_share") <= 1.0
        # every method beats the zero predictor after one step; CG beats the plain Krylov bound
        zero = value(f"{ds}/zero_predictor", 1)
        assert value(f"{ds}/cg_fr", 1) < zero
        assert all(value(f"{ds}/cg_fr", T) < value(f"{ds}/krylov_bound", T) for T in range(1, 9))
        # the Krylov bound is monotone in depth on the prompts it was fitted on
        tr = [value(f"{ds}/krylov_bound", T, "train_loss") for T in range(1, 9)]
        assert all(a >= b * (1 - 1e-9) for a, b in zip(tr, tr[1:]))
    assert len(summary["cgd"]) == 4 and [v["published_19pts"] for v in summary["cgd"].values()] == list(DUTTA_CGD)
    text = (out / "report.md").read_text()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == text
    assert "Dutta & Sra" in text and "t-interval" in text
