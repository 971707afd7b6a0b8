"""pgd_depth: the quick profile end to end (artifacts, report re-rendering) and the reference pieces it relies on."""

import json
import math

import numpy as np
import pytest
import torch

from experiments.cli import main
from experiments.pgd_depth import gdpp_predictions, krylov_coefficients, pgd_predictions, steps_from_krylov
from experiments.results import read_results
from icl.prompts import PromptConfig, PromptDistribution
from icl.seeding import Streams
from learned_optimizers.constructions import gd_plus_plus_lsa, preconditioned_gd_lsa


def _law(n_prompts=64, seed=0):
    cfg = PromptConfig(d=5, n=20, eigenvalues=(1, 1, 0.25, 0.0625, 1), w_prior="inverse_sigma")
    dist = PromptDistribution(cfg, generator=Streams(seed).generator("rotation"), dtype=torch.float64)
    return dist, dist.sample(n_prompts, Streams(seed).generator("test"))


def test_reference_predictions_equal_the_lsa_constructions():
    dist, batch = _law()
    Sinv = torch.linalg.inv(dist.Sigma)
    etas = torch.tensor([0.4, 0.7, 1.7], dtype=torch.float64)
    lsa = preconditioned_gd_lsa(etas[:, None, None] * Sinv)
    assert torch.allclose(pgd_predictions(batch, Sinv, etas), lsa(batch.Z()), atol=1e-10)
    # GD++ in Σ⁻¹ geometry = the gdpp LSA with A = ηΣ⁻¹, B = (γ/η)I (Ahn et al. Thm 4's set)
    gammas = torch.tensor([0.3, 0.2, 0.0], dtype=torch.float64)
    model = gd_plus_plus_lsa(5, 3, etas, gammas)
    model.set_weights(etas[:, None, None, None] * Sinv, (gammas / etas)[:, None, None, None] * torch.eye(5))
    assert torch.allclose(gdpp_predictions(batch, dist.Sigma, etas, gammas), model(batch.Z()), atol=1e-10)


def test_krylov_roots_give_steps_that_attain_the_bound():
    dist, tune = _law(4000, seed=1)
    Sinv = torch.linalg.inv(dist.Sigma)
    c = krylov_coefficients(tune, Sinv, 3)
    etas = steps_from_krylov(c)
    assert etas is not None and np.all(etas > 0)
    from experiments.pgd_depth import krylov_features

    w_kry = torch.einsum("bkd,k->bd", krylov_features(tune, Sinv, 3), c)
    pred = pgd_predictions(tune, Sinv, torch.tensor(etas))
    assert torch.allclose(pred, (w_kry * tune.x_query).sum(-1), atol=1e-8)


def test_quick_profile_writes_every_artifact_and_rerenders(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "pgd_depth", "--profile", "quick", "--out", str(out), "--quiet"]
    assert main([*args, "--set", "train.steps=60", "--set", "read_every=30", "--set", "tune_prompts=2000"]) == 0
    assert "log test loss" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["experiment"] == "pgd_depth" and cfg["config"]["profile"] == "quick"
    rows = read_results(out / "results.csv")
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"layer", "k", "train_step"} <= set(header)  # real columns, no packed metric names
    vals = {(r["method"], r["depth"], r["metric"]): r["value"] for r in rows
            if r["layer"] is None and r["k"] is None and r["train_step"] is None}  # fmt: skip
    zero = vals[("zero_predictor", 0, "test_loss")]
    assert zero == pytest.approx(5.0, rel=0.15)
    for L in (1, 2):
        assert vals[("krylov_precond", L, "test_loss")] <= vals[("pgd_tuned", L, "test_loss")] * 1.02
        for kry in ("krylov_plain", "krylov_precond"):  # the local bound = reference_optimizers.krylov_bound
            shared = vals[(kry, L, "test_loss_reference_optimizers")]
            assert vals[(kry, L, "test_loss")] == pytest.approx(shared, rel=1e-6)
        assert vals[("pgd_tuned", L, "test_loss")] < vals[("gd_tuned", L, "test_loss")] < zero
        for mode in ("sparse", "gdpp"):
            assert math.isfinite(vals[(mode, L, "test_loss")])
            assert any(r["method"] == mode and r["depth"] == L and r["metric"] == "dist_sigma" and r["layer"] == 1
                       and r["train_step"] == 0 for r in rows)  # fmt: skip
    assert vals[("thm1_theory", 1, "test_loss")] < vals[("thm1_zero_predictor", 1, "test_loss")]
    for stem in ("log_loss_vs_depth", "dist_sparse_L2", "dist_gdpp_L2"):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 1000
    report = (out / "report.md").read_text()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == report
    # --resume reloads every finished model (with its read-outs) instead of retraining, reproducing the rows
    (out / "checkpoints" / "sparse-L2-s0.pt").touch()  # still a valid file: mtime only
    assert main(["run", "pgd_depth", "--out", str(out), "--resume", "--quiet"]) == 0
    def keyed(rs):
        return {tuple(r[c] for c in ("method", "depth", "metric", "layer", "train_step")): r["value"] for r in rs}

    again, before = keyed(read_results(out / "results.csv")), keyed(rows)
    for key in (("sparse", 2, "test_loss", None, None), ("gdpp", 1, "dist_sigma", 1, 60),
                ("pgd_tuned", 2, "test_loss", None, None)):  # fmt: skip
        assert again[key] == pytest.approx(before[key], rel=1e-9)
