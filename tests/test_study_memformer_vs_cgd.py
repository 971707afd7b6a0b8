"""memformer_vs_cgd: the quick profile end to end, the report re-render, and the pieces it relies on."""

import csv
import json
import math

import pytest
import torch
from committed_view import drop_ignored

from experiments.cli import main
from experiments.memformer_vs_cgd import (
    MemformerVsCGDConfig,
    baseline_iterates,
    build,
    collapse_heads,
    lfom_shared,
    tuned_baselines,
)
from experiments.reports.memformer_vs_cgd import _batch_exceptions, class_gaps
from experiments.results import read_results
from icl.config import ConfigError
from icl.prompts import PromptConfig, PromptDistribution
from reference_optimizers import gradient_descent, krylov_bound

EIG = (1.0, 1.0, 0.25, 0.0625, 1.0)

# the quick profile, further reduced so that the test stays well under a minute on one core
TINY = [
    "--set", "depths=1,2", "--set", "models=lt_scalar,lt_full,cgd_scalar,lfom_scalar,lfom_scalar_h5,lfom_full",
    "--set", "settings=noniso,iso", "--set", "iso_models=lt_full", "--set", "sweep_models=lt_full",
    "--set", "sweep_settings=noniso,iso",
    "--set", "train.steps=20", "--set", "train.eval_every=5", "--set", "train.halve_every=5",
    "--set", "train.plateau_patience=1", "--set", "checkpoint_every=10", "--set", "test_prompts=500",
    "--set", "tune_prompts=200", "--quiet",
]  # fmt: skip


def _batch(count=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = PromptConfig(d=5, n=20, eigenvalues=EIG, w_prior="inverse_sigma")
    return PromptDistribution(cfg, generator=g, dtype=torch.float64).sample(count, g)


def test_quick_profile_cli_writes_every_artifact_and_report_rerenders(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "memformer_vs_cgd", "--profile", "quick", "--seeds", "0,1", "--out", str(out), *TINY]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["profile"] == "quick" and cfg["config"]["seeds"] == [0, 1]
    rows = read_results(out / "results.csv")
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header == ["experiment", "setting", "method", "depth", "seed", "metric", "value"]
    methods = {(r["setting"], r["method"]) for r in rows}
    assert {("noniso", m) for m in ("cg", "cg_n19", "krylov", "krylov_pre", "heavy_ball_tuned", "gd_tuned",
                                    "pgd_tuned", "lfom_shared_class", "cgd_scalar")} | {("iso", "lt_full")} <= methods
    # which model at which depth: the sweep model at every depth, the others at the deepest only
    trained = {(r["setting"], r["method"], r["depth"]) for r in rows if r["metric"] == "train_steps"}
    assert ("noniso", "lt_full", 1) in trained and ("iso", "lt_full", 1) in trained
    assert ("noniso", "cgd_scalar", 2) in trained and ("noniso", "cgd_scalar", 1) not in trained
    assert {r["seed"] for r in rows} == {0, 1}
    val = {(r["setting"], r["method"], r["depth"], r["seed"], r["metric"]): r["value"] for r in rows}
    for (setting, m, L, s, metric), v in val.items():
        if metric == "scalar_violation":  # the scalar constraint held
            assert v == 0.0
        if metric == "collapse_max_abs_diff":  # the 5 heads collapse into one head exactly
            assert v < 1e-4
        if metric == "train_steps":  # the plateau rule or the cap ended every run, and the row says which
            assert 0 < v <= 20 and (v < 20) <= bool(val[(setting, m, L, s, "stopped_by_plateau")])
        if metric == "test_loss_median":  # heavy tails: the median of per-prompt losses is below their mean
            assert v < val[(setting, m, L, s, "test_loss")]
    # the tuned per-step heavy ball contains per-step GD, so on the tuning prompts it is never worse; on the test
    # prompts the two stay close
    for s in (0, 1):
        for L in (1, 2):
            hb = val[("noniso", "heavy_ball_tuned", L, s, "test_loss")]
            assert hb < val[("noniso", "gd_tuned", L, s, "test_loss")] * 1.2
    text = (out / "report.md").read_text()
    assert "nan" not in text.lower()
    # every flagged gap in the report is a gap beyond the tolerance, and every such gap is flagged
    for setting, kind, L in trained:
        for seed, gap in class_gaps(rows, setting, kind, L, 0.1).items():
            line = f"{setting}/{kind} L = {L} seed {seed} ({gap.gap:+.3f})"
            assert (line in text) == gap.flagged
    summary = json.loads((out / "summary.json").read_text())
    assert "noniso" in summary["log_test_loss"] and summary["hyperparameters"]
    for stem in ("log_loss_noniso_scalar", "log_loss_noniso_full", "log_loss_iso_full"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000
        assert (out / "figures" / f"{stem}.pdf").exists()
    assert "paper" in text and "Krylov" in text and "1 head vs 5 heads" in text and "Heavy tails" in text
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == text

    # --resume finds every checkpoint complete and reproduces the rows
    def timeless(path):
        return [r for r in csv.DictReader(path.open()) if r["metric"] != "train_seconds"]

    before = timeless(out / "results.csv")
    assert main(["run", "memformer_vs_cgd", "--resume", "--out", str(out)]) == 0
    assert timeless(out / "results.csv") == before

    # a clean clone of the committed run (the files .gitignore keeps out deleted: checkpoints, train logs, PDFs)
    # re-renders the same report and the same PNG figures
    text = (out / "report.md").read_text()
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    dropped = drop_ignored(out, "memformer_vs_cgd")
    assert {p.split("/")[0] for p in dropped} == {"checkpoints", "train_logs", "figures"}
    assert all(p.endswith(".pdf") for p in dropped if p.startswith("figures/"))
    assert (out / "models" / "noniso-lt_full-L2-s1.pt").exists()
    for p in [out / "report.md", *(out / "figures").glob("*.png")]:
        p.unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == text
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == pngs


def test_sweep_models_are_swept_only_in_the_sweep_settings():
    cfg = MemformerVsCGDConfig()  # standard: the LT swept in the non-isotropic setting only
    assert cfg.settings == ("noniso", "iso") and cfg.iso_models == ("lt_full", "lfom_full")
    assert cfg.model_depths("lt_full", "noniso") == (1, 2, 3, 4)
    assert cfg.model_depths("lt_full", "iso") == (4,) and cfg.model_depths("lfom_full", "noniso") == (4,)
    both = cfg.replace(sweep_settings=("noniso", "iso"))
    assert both.model_depths("lt_full", "iso") == (1, 2, 3, 4)
    with pytest.raises(ConfigError, match="sweep_settings has unknown entries"):
        MemformerVsCGDConfig(sweep_settings=("isotropic",))


def test_scalar_models_stay_scalar_under_adam():
    cfg = MemformerVsCGDConfig()
    g = torch.Generator().manual_seed(0)
    model = build("cgd_scalar", 5, 20, 3, cfg, g)
    A0 = model.attention.A.detach().clone()
    assert torch.allclose(A0, torch.diag_embed(torch.diagonal(A0, dim1=-2, dim2=-1)))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    b = _batch().to(dtype=torch.float32)
    for _ in range(5):
        opt.zero_grad()
        (model(b.Z()) - b.y_query).square().mean().backward()
        opt.step()
    A = model.attention.A.detach()
    diag = torch.diagonal(A, dim1=-2, dim2=-1)
    assert not torch.allclose(A, A0)
    assert torch.equal(A - torch.diag_embed(diag), torch.zeros_like(A))  # off-diagonal exactly 0
    assert torch.equal(diag, diag[..., :1].expand_as(diag))  # one value a_ℓ on the diagonal


def test_tuned_baselines_are_monotone_attain_the_one_step_bound_and_heads_collapse():
    b = _batch(600)
    Sinv = torch.diag(1 / torch.tensor(EIG, dtype=torch.float64))  # any SPD preconditioner will do here
    hp = tuned_baselines(b, Sinv, 3, lfom_depths={2})

    def loss(name, L):
        w = baseline_iterates(name, b, L, hp[name][L - 1], Sinv)[:, -1]
        return float(((w * b.x_query).sum(-1) - b.y_query).square().mean())

    for name in ("gd_tuned", "heavy_ball_tuned", "pgd_tuned"):  # tune_depths: never worse than depth T−1
        assert loss(name, 1) >= loss(name, 2) - 1e-12 >= loss(name, 3) - 2e-12
        assert loss("heavy_ball_tuned", 2) <= loss("gd_tuned", 2) + 1e-12  # heavy ball contains GD
    # one step: the best constant step attains the (in-sample) Krylov bound, plain and preconditioned
    assert loss("gd_tuned", 1) == pytest.approx(float(krylov_bound(b, b, 1).test_loss[1]), rel=1e-6)
    pre = float(krylov_bound(b, b, 1, preconditioner=Sinv).test_loss[1])
    assert loss("pgd_tuned", 1) == pytest.approx(pre, rel=1e-6)
    # the shared-Γ LFOM floor is tuned only where asked; one step of it is one GD step of size c_0
    assert hp["lfom_shared_class"][0] is None and hp["lfom_shared_class"][2] is None
    torch.testing.assert_close(lfom_shared(b.X, b.y, 1, [0.7]), gradient_descent(b.X, b.y, 1, eta=0.7))
    cfg = MemformerVsCGDConfig()
    five = build("lfom_scalar_h5", 5, 20, 2, cfg, torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        five.Gamma.copy_(torch.tensor([0.7, 1.3]))
    one = collapse_heads(five, 5, torch.Generator().manual_seed(2))
    torch.testing.assert_close(one(b.Z()), five(b.Z()), rtol=1e-10, atol=1e-10)


def test_class_gap_uses_the_best_candidate_of_the_seed_and_flags_beyond_tolerance():
    def row(method, seed, value):
        return {"setting": "noniso", "method": method, "depth": 4, "seed": seed, "metric": "test_loss",
                "value": value}  # fmt: skip

    e = math.e
    rows = [row("cgd_full", 0, e**-2.0), row("pgd_tuned", 0, e**-2.5), row("heavy_ball_tuned", 0, e**-1.0),
            row("gd_tuned", 0, e**-0.5), row("cgd_full", 1, e**-2.95), row("pgd_tuned", 1, e**-3.0)]  # fmt: skip
    gaps = class_gaps(rows, "noniso", "cgd_full", 4, 0.1)
    assert gaps[0].reference == "tuned Σ⁻¹-PGD" and gaps[0].gap == pytest.approx(0.5) and gaps[0].flagged
    assert gaps[1].gap == pytest.approx(0.05) and not gaps[1].flagged
    assert class_gaps(rows, "noniso", "lt_scalar", 4, 0.1) == {}  # a model that was not run has no gap


def test_big_batch_models_train_on_the_big_batch_and_the_report_names_them():
    cfg = MemformerVsCGDConfig(big_batch_models=("lt_full",), big_batch_size=6000)
    assert cfg.train_for("lt_full").batch_size == 6000
    assert cfg.train_for("lt_full").replace(batch_size=cfg.train.batch_size) == cfg.train  # only the batch differs
    assert cfg.train_for("lfom_full") == cfg.train
    with pytest.raises(ConfigError, match="big_batch_models"):
        MemformerVsCGDConfig(big_batch_models=("lt_wide",))
    rows = [{"method": "lt_full", "metric": "batch_size", "value": 6000.0},
            {"method": "cgd_full", "metric": "batch_size", "value": 2000.0}]  # fmt: skip
    assert _batch_exceptions(rows, 2000) == " (lt_full: 6000)"
    assert _batch_exceptions(rows[1:], 2000) == ""
