"""memformer_vs_cgd: the quick profile end to end, the report re-render, and the pieces it relies on."""

import csv
import json

import pytest
import torch

from experiments.cli import main
from experiments.memformer_vs_cgd import MemformerVsCGDConfig, build, collapse_heads, krylov
from experiments.results import read_results
from icl.prompts import PromptConfig, PromptDistribution
from reference_optimizers import heavy_ball

EIG = (1.0, 1.0, 0.25, 0.0625, 1.0)

# the quick profile, further reduced so that the test stays well under a minute on one core
TINY = [
    "--set", "depths=1,2", "--set", "models=lt_scalar,cgd_scalar,lfom_scalar,lfom_scalar_h5,lfom_full",
    "--set", "train.steps=20", "--set", "checkpoint_every=10", "--set", "test_prompts=500",
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
    assert {("noniso", m) for m in ("cg", "cg_n19", "krylov", "krylov_pre", "heavy_ball_tuned", "nesterov_tuned",
                                    "pgd_tuned", "cgd_scalar")} | {("iso", "lt_full")} <= methods  # fmt: skip
    assert {r["seed"] for r in rows} == {0, 1}
    # the scalar constraint held and the 5 heads collapse into one head exactly
    for r in rows:
        if r["metric"] == "scalar_violation":
            assert float(r["value"]) == 0.0
        if r["metric"] == "collapse_max_abs_diff":
            assert float(r["value"]) < 1e-4
    # every scalar-A model is above the shared-coefficient Krylov bound on the same prompts
    val = {(r["setting"], r["method"], r["depth"], r["seed"], r["metric"]): r["value"] for r in rows}
    for (setting, m, L, s, metric), v in val.items():
        if metric == "test_loss" and setting == "noniso" and ("scalar" in m or m == "heavy_ball_tuned"):
            assert v >= val[("noniso", "krylov", L, s, "test_loss")] * (1 - 1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert "noniso" in summary["log_test_loss"] and summary["hyperparameters"]
    for stem in ("log_loss_noniso_scalar", "log_loss_noniso_full", "log_loss_iso_full"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000
        assert (out / "figures" / f"{stem}.pdf").exists()
    text = (out / "report.md").read_text()
    assert "paper" in text and "Krylov" in text and "1 head vs 5 heads" in text
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == text

    # --resume finds every checkpoint complete and reproduces the rows
    def timeless(path):
        return [r for r in csv.DictReader(path.open()) if r["metric"] != "train_seconds"]

    before = timeless(out / "results.csv")
    assert main(["run", "memformer_vs_cgd", "--resume", "--out", str(out)]) == 0
    assert timeless(out / "results.csv") == before


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


def test_krylov_bound_is_the_best_shared_heavy_ball_and_heads_collapse():
    b = _batch()
    bound = krylov(b, 2)[1]
    # heavy ball with any shared (η, β) has a loss on these prompts at least the bound
    for eta, beta in [(0.5, 0.0), (1.0, 0.3), (1.5, 0.6)]:
        w = heavy_ball(b.X, b.y, 2, eta=eta, beta=beta)[:, -1]
        assert float(((w * b.x_query).sum(-1) - b.y_query).square().mean()) >= bound - 1e-12
    # and with an optimal 1-step GD the bound at L = 1 is attained: p(H) = c
    F = (b.x_query * (b.X.transpose(1, 2) @ b.y[..., None])[..., 0] / 20).sum(-1)
    c = float((F @ b.y_query) / (F @ F))
    assert krylov(b, 1)[0] == pytest.approx(float((c * F - b.y_query).square().mean()), rel=1e-10)
    cfg = MemformerVsCGDConfig()
    five = build("lfom_scalar_h5", 5, 20, 2, cfg, torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        five.Gamma.copy_(torch.tensor([0.7, 1.3]))
    one = collapse_heads(five, 5, torch.Generator().manual_seed(2))
    torch.testing.assert_close(one(b.Z()), five(b.Z()), rtol=1e-10, atol=1e-10)
