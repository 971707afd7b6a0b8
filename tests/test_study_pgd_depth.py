"""pgd_depth: the quick profile end to end (artifacts, convergence rows, report re-rendering, resume) and the
reference pieces it relies on (whitened GD++ = the gdpp LSA construction, the Krylov bound's per-prompt predictions
= PGD with the bound-attaining steps)."""

import json
import math

import numpy as np
import pytest
import torch

import reference_optimizers as ro
from experiments.cli import main
from experiments.pgd_depth import (
    PGDDepthConfig,
    choose_gdpp,
    gdpp_candidates,
    learned_gdpp_schedule,
    predict,
    squared_errors,
    tuned_gd,
    whiten,
)
from experiments.results import read_results
from experiments.study import grow
from icl.prompts import PromptConfig, PromptDistribution
from icl.seeding import Streams
from learned_optimizers import LinearSelfAttention, LSAConfig
from learned_optimizers.constructions import gd_plus_plus_lsa, preconditioned_gd_lsa


def _law(n_prompts=64, seed=0):
    cfg = PromptConfig(d=5, n=20, eigenvalues=(1, 1, 0.25, 0.0625, 1), w_prior="inverse_sigma")
    dist = PromptDistribution(cfg, generator=Streams(seed).generator("rotation"), dtype=torch.float64)
    return dist, dist.sample(n_prompts, Streams(seed).generator("test"))


def test_reference_predictions_equal_the_lsa_constructions():
    dist, batch = _law()
    Sinv = torch.linalg.inv(dist.Sigma)
    etas = [0.4, 0.7, 1.7]
    lsa = preconditioned_gd_lsa(torch.tensor(etas, dtype=torch.float64)[:, None, None] * Sinv)
    pgd = predict(ro.preconditioned_gd, batch, 3, {"P": Sinv, "eta": etas})
    assert torch.allclose(pgd, lsa(batch.Z()), atol=1e-10)
    # whitened, Σ⁻¹-PGD is plain GD
    assert torch.allclose(predict(ro.gradient_descent, whiten(batch, dist.Sigma), 3, {"eta": etas}), pgd, atol=1e-10)
    # GD++ on whitened prompts = the gdpp LSA with A = ηΣ⁻¹, B = (γ/η)I (Ahn et al. Thm 4's set)
    gammas = [0.3, 0.2, 0.0]
    model = gd_plus_plus_lsa(5, 3, torch.tensor(etas), torch.tensor(gammas))
    e, g = torch.tensor(etas, dtype=torch.float64), torch.tensor(gammas, dtype=torch.float64)
    model.set_weights(e[:, None, None, None] * Sinv, (g / e)[:, None, None, None] * torch.eye(5, dtype=torch.float64))
    wpp = predict(ro.gd_plus_plus, whiten(batch, dist.Sigma), 3, {"eta": etas, "gamma": gammas})
    assert torch.allclose(wpp, model(batch.Z()), atol=1e-10)


def test_krylov_predictions_are_per_prompt_and_attained_by_tuned_pgd():
    dist, tune = _law(4000, seed=1)
    _, test = _law(3000, seed=1)
    Sinv = torch.linalg.inv(dist.Sigma)
    kb = ro.krylov_bound(tune, test, 3, Sinv)
    assert kb.test_predictions.shape == (3000, 3)
    for L in (1, 2, 3):  # the per-prompt predictions are what test_loss averages
        err = (kb.test_predictions[:, L - 1] - test.y_query).square().mean()
        assert float(err) == pytest.approx(float(kb.test_loss[L]), rel=1e-12)
    etas = ro.krylov_steps(kb.coefficients_by_depth[2])
    assert etas is not None and np.all(etas > 0)  # real roots: PGD with these steps is the fitted polynomial
    pred = predict(ro.preconditioned_gd, test, 3, {"P": Sinv, "eta": list(etas)})
    assert torch.allclose(pred, kb.test_predictions[:, 2], atol=1e-8)
    # the study's tuner (one tuner: reference_optimizers.tune_depths) starts there: it matches the bound on test
    steps, errs = tuned_gd(tune, test, Sinv, (1, 2, 3), evals=10)
    for L in (1, 2, 3):
        assert len(steps[L]) == L
        assert math.log(errs[L].mean()) == pytest.approx(math.log(kb.test_loss[L]), abs=0.01)


def test_quick_profile_writes_every_artifact_and_rerenders(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "pgd_depth", "--profile", "quick", "--out", str(out), "--quiet"]
    sets = ["train.steps=60", "read_every=30", "tune_prompts=2000", "test_prompts=3000", "tolerance=0.7",
            "gdpp_budget=0.5", "gdpp_grow_from=2", "gdpp_grow_lr=0.125"]
    assert main([*args, *(x for s in sets for x in ("--set", s))]) == 0
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
        # tuned PGD attains the Σ⁻¹ Krylov bound (real roots) and beats tuned plain GD
        assert math.log(vals[("pgd_tuned", L, "test_loss")]) == pytest.approx(
            math.log(vals[("krylov_precond", L, "test_loss")]), abs=0.01)  # fmt: skip
        assert vals[("pgd_tuned", L, "test_loss")] < vals[("gd_tuned", L, "test_loss")] < zero
        for mode, ref in (("sparse", "pgd_tuned"), ("gdpp", "gdpp_tuned")):
            # the gap to the class optimum is the difference of the logged means on the same prompts
            gap = math.log(vals[(mode, L, "test_loss")]) - math.log(vals[(ref, L, "test_loss")])
            assert vals[(mode, L, "gap_log")] == pytest.approx(gap, rel=1e-9)
            assert 0 < vals[(mode, L, "gap_log_se")] < 1
            # the config's per-layer step cap reached the trainer: depth L trains at most L·train.steps (GD++:
            # times gdpp_budget, set to 0.5 here)
            cap = 60 * L * (0.5 if mode == "gdpp" else 1)
            assert vals[(mode, L, "step_cap")] == cap
            assert 0 < vals[(mode, L, "train_steps")] <= cap
            assert any(r["method"] == mode and r["depth"] == L and r["metric"] == "dist_sigma" and r["layer"] == 1
                       and r["train_step"] == 0 for r in rows)  # fmt: skip
        for method in ("sparse", "pgd_tuned", "krylov_plain", "gdpp_tuned"):  # heavy-tail statistics
            med, mean = vals[(method, L, "median")], vals[(method, L, "test_loss")]
            assert 0 < med < mean  # right-skewed per-prompt losses
            lo, hi = vals[(method, L, "log_mean_parts_min")], vals[(method, L, "log_mean_parts_max")]
            assert lo <= math.log(mean) <= hi
        for mode in ("sparse", "gdpp"):  # who carries the tail: top-k means, each on its own worst prompts largest
            assert vals[(mode, L, "worst_own")] >= vals[(mode, L, "worst_reference_own")]
            assert vals[(mode, L, "worst_reference")] >= vals[(mode, L, "worst_own_reference")]
            assert 0 < vals[(mode, L, "worst_own_share")] <= 1
        assert int(vals[("gdpp_tuned", L, "source")]) in range(6)
        assert vals[("gdpp", L, "grown")] == float(L == 2)  # gdpp_grow_from=2: L = 2 starts from the trained L = 1
    assert vals[("thm1_optimum", 1, "test_loss")] < vals[("thm1_zero_predictor", 1, "test_loss")]
    assert ("thm1_learned", 1, "gap_log") in vals
    for stem in ("log_loss_vs_depth", "gap_sparse", "gap_gdpp", "dist_sparse_L2", "dist_gdpp_L2"):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "Who carries the tail" in report and "gap of trimmed means" in report
    assert "gap ± s.e." in report and "3000 held-out test prompts" in report and "profile `quick`" in report
    assert "L = 2: 120 (halved every 100)" in report  # caps from the config, not hard-coded
    assert "The GD++ LSA of depth L = 2 starts from the trained depth L − 1" in report and "grown from L − 1" in report
    assert "0.125× the learning rate" in report
    summary = json.loads((out / "summary.json").read_text())
    # tolerance=0.7 took effect: a gap between 0.05 and 0.7 is not flagged
    assert all(g["tolerance"] == 0.7 and g["flagged"] == (g["gap"] > 0.7) for g in summary["gaps"])
    assert len(summary["gaps"]) == 5 and summary["test_prompts"] == 3000
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    rerendered = (out / "report.md").read_text()
    assert "Timing (finished.json)" in rerendered  # the re-render reads the run's timing
    assert rerendered.split("Timing")[0] == report.split("Timing")[0]
    # --resume reloads every finished model (with its read-outs) instead of retraining, reproducing the rows
    (out / "checkpoints" / "sparse-L2-s0.pt").touch()  # still a valid file: mtime only
    assert main(["run", "pgd_depth", "--out", str(out), "--resume", "--quiet"]) == 0

    def keyed(rs):
        return {tuple(r[c] for c in ("method", "depth", "metric", "layer", "train_step")): r["value"] for r in rs}

    again, before = keyed(read_results(out / "results.csv")), keyed(rows)
    for key in (("sparse", 2, "test_loss", None, None), ("gdpp", 2, "dist_sigma", 1, 60),
                ("pgd_tuned", 2, "test_loss", None, None)):  # fmt: skip
        assert again[key] == pytest.approx(before[key], rel=1e-9)


def test_gdpp_candidates_and_choice_never_worse_than_pgd_on_the_selection_prompts():
    """The refined GD++ candidates start from tuned PGD (γ = 0), so each is no worse than it on the refinement
    prompts; the choice is the candidate with the lowest mean loss on the selection prompts."""
    dist, select = _law(3000, seed=4)
    wsel = whiten(select, dist.Sigma)
    pgd = {1: [0.77], 2: [0.52, 1.25], 3: [0.43, 0.69, 1.72]}
    cands = gdpp_candidates(wsel[:200], (1, 2, 3), pgd, evals=5, restarts=1)

    def loss(batch, L, hp):
        return float(squared_errors(predict(ro.gd_plus_plus, batch, L, hp), batch).mean())

    for L, (refined, pgd_hp) in cands.items():
        assert pgd_hp == {"eta": pgd[L], "gamma": [0.0] * L}
        assert loss(wsel[:200], L, refined) <= loss(wsel[:200], L, pgd_hp) + 1e-12
        options = [(0, refined), (1, pgd_hp), (7, {"eta": [0.1] * L, "gamma": [0.0] * L})]
        source, hp = choose_gdpp(wsel, L, options)
        assert loss(wsel, L, hp) == min(loss(wsel, L, h) for _, h in options)
        assert source in (0, 1)  # a tiny step is never the best of these
    diverging = {"eta": [1e200], "gamma": [0.0]}  # its squared errors overflow: scored inf, never chosen
    assert choose_gdpp(wsel, 1, [(9, diverging), (1, cands[1][1])])[0] == 1


def test_learned_gdpp_schedule_reads_back_a_gdpp_construction_and_the_theorem4_set():
    """A gdpp LSA built to run GD++ (η_ℓ, γ_ℓ) reads back as that schedule with Σ = I; on Thm 4's set A_ℓ = a_ℓΣ⁻¹,
    B_ℓ = b_ℓI the read-out is η_ℓ = a_ℓ, γ_ℓ = a_ℓb_ℓ, and that GD++ on whitened prompts predicts as the model."""
    eta, gamma = [0.6, 3.5, 2.9], [0.25, 0.35, 0.0]
    hp = learned_gdpp_schedule(gd_plus_plus_lsa(5, 3, eta, gamma), torch.eye(5, dtype=torch.float64))
    np.testing.assert_allclose(hp["eta"], eta, rtol=1e-12)
    np.testing.assert_allclose(hp["gamma"], gamma, rtol=1e-12, atol=1e-15)
    dist, batch = _law(200, seed=2)
    Sinv = torch.linalg.inv(dist.Sigma)
    a, b = [0.6, 3.5], [0.4, 0.1]
    model = gd_plus_plus_lsa(5, 2, [1.0, 1.0], [0.5, 0.5])
    with torch.no_grad():
        for layer in range(2):
            model.A[layer, 0] = a[layer] * Sinv
            model.B[layer, 0] = b[layer] * torch.eye(5, dtype=torch.float64)
    hp = learned_gdpp_schedule(model, dist.Sigma)
    np.testing.assert_allclose(hp["eta"], a, rtol=1e-10)
    np.testing.assert_allclose(hp["gamma"], [x * y for x, y in zip(a, b)], rtol=1e-10)
    with torch.no_grad():
        pred = model(batch.Z())
    torch.testing.assert_close(pred, predict(ro.gd_plus_plus, whiten(batch, dist.Sigma), 2, hp), rtol=1e-9,
                               atol=1e-9)  # fmt: skip


def test_grow_copies_every_layer_repeats_the_last_and_refuses_a_wrong_shape():
    """experiments.study.grow on GD++ LSAs (A and B per layer): depth 3 from depth 2 holds layers 1, 2 and 2 again
    of both matrices, and the grown model computes depth 2's prediction followed by a copy of its last layer."""
    torch.manual_seed(0)
    two = LinearSelfAttention(5, LSAConfig(layers=2, mode="gdpp", init_std=0.3)).double()
    three = grow(LinearSelfAttention(5, LSAConfig(layers=3, mode="gdpp", init_std=0.3)).double(), two)
    for name in ("A", "B"):
        a, b = getattr(two, name), getattr(three, name)
        assert torch.equal(b[:2], a) and torch.equal(b[2], a[1])
    with pytest.raises(ValueError, match="one more layer"):
        grow(LinearSelfAttention(5, LSAConfig(layers=2, mode="gdpp")), two)
    with pytest.raises(ValueError, match="differ"):
        grow(LinearSelfAttention(5, LSAConfig(layers=3, mode="sparse")), two)


def test_only_gdpp_from_gdpp_grow_from_grows_and_at_its_own_learning_rate():
    cfg = PGDDepthConfig(gdpp_grow_from=3, gdpp_grow_lr=0.125)
    assert [L for L in cfg.depths if cfg.grows(L, "gdpp")] == [3, 4]
    assert not any(cfg.grows(L, "sparse") for L in cfg.depths)
    assert cfg.train_at(3, "gdpp").lr == pytest.approx(cfg.train.lr * 0.125)
    assert cfg.train_at(2, "gdpp").lr == cfg.train_at(3, "sparse").lr == cfg.train.lr
    assert not PGDDepthConfig(depths=(1, 3)).grows(3, "gdpp")  # depth 2 is not trained: nothing to grow from
    assert not PGDDepthConfig(gdpp_grow_from=0).grows(3, "gdpp")
