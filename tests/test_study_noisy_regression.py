"""noisy_regression: the quick profile end to end, the report re-render, and the oracle's λ."""

import json
from dataclasses import replace

import torch

from experiments.cli import main
from experiments.noisy_regression import ada_rr, build, gdpp_errors, gdpp_schedule, posterior_mean, tune_gdpp
from experiments.results import read_results
from icl.prompts import PromptConfig, PromptDistribution
from reference_optimizers import gd_plus_plus, ridge

TINY = ["--set", "depths=1,2", "--set", "train.steps=20", "--set", "checkpoint_every=10",
        "--set", "test_prompts=500", "--set", "tune_prompts=200", "--quiet"]  # fmt: skip


def test_quick_profile_cli_writes_every_artifact_and_report_rerenders(tmp_path):
    out = tmp_path / "run"
    args = ["run", "noisy_regression", "--profile", "quick", "--seeds", "0,1", "--out", str(out), *TINY]
    assert main([*args, "--set", "categorical=1/3"]) == 0
    rows = read_results(out / "results.csv")
    methods = {(r["setting"], r["method"]) for r in rows}
    for noise in ("U(0,0)", "U(0,3)", "cat{1,3}"):
        assert {(noise, m) for m in ("full", "diag", "gdpp", "gdpp_tuned", "const_rr", "ada_rr", "oracle")} <= methods
    val = {(r["setting"], r["method"], r["depth"], r["seed"], r["metric"]): r["value"] for r in rows}
    for noise in ("U(0,0)", "U(0,3)"):
        for L in (1, 2):
            for s in (0, 1):
                assert 0 < val[(noise, "full", L, s, "steps_trained")] <= 20  # the cap of TINY
                assert val[(noise, "gdpp", L, s, "test_loss_median")] < val[(noise, "gdpp", L, s, "max_query_error")]
                # the trained GD++'s own schedule is one of the tuner's starts, so on the tuning prompts tuned GD++
                # is no worse; on the test prompts it may be by sampling noise only
                assert val[(noise, "gdpp_tuned", L, s, "test_loss")] < 1.1 * val[(noise, "gdpp", L, s, "test_loss")]
    for (_noise, m, _L, _s, metric), v in val.items():
        if metric == "adjusted_loss" and m in ("const_rr", "ada_rr", "ols"):
            assert v >= -1e-9  # nobody beats the Bayes oracle on average ... up to Monte-Carlo noise
        if metric == "max_abs_qy":
            assert v == 0.0  # GD++: q_y never moved
    assert val[("U(0,0)", "oracle", 1, 0, "test_loss")] < 1e-20
    summary = json.loads((out / "summary.json").read_text())
    assert "U(0,3)" in summary["adjusted_loss"]
    assert (out / "figures" / "adjusted_U0-3.png").stat().st_size > 1000
    text = (out / "report.md").read_text()
    assert "Table 1" in text and "best of 5 seeds" in text and "gap to best GD++" in text
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == text


def _batch(sigma_max=2.0, count=20_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = PromptConfig(d=10, n=20, noise="uniform" if sigma_max > 0 else "none", sigma_max=sigma_max)
    return PromptDistribution(cfg, generator=g, dtype=torch.float64).sample(count, g)


def test_oracle_is_ridge_with_lambda_sigma2_over_n_and_the_posterior_mean():
    b = _batch(count=50)
    n = b.n
    w = posterior_mean(b.X, b.y, b.sigma)
    for i in range(5):
        s = float(b.sigma[i])
        ref = ridge(b.X[i : i + 1], b.y[i : i + 1], s**2 / n)[0]
        torch.testing.assert_close(w[i], ref, rtol=1e-10, atol=1e-10)
        # the Gaussian posterior mean of w* ~ N(0, I), y = Xw* + σξ: (XᵀX + σ²I)⁻¹Xᵀy
        X, y = b.X[i], b.y[i]
        torch.testing.assert_close(w[i], torch.linalg.solve(X.T @ X + s**2 * torch.eye(10, dtype=X.dtype), X.T @ y))


def test_oracle_beats_wrong_lambdas_and_adarr():
    b = _batch()

    def loss(w):
        return ((w * b.x_query).sum(-1) - b.y_query).square()

    oracle = loss(posterior_mean(b.X, b.y, b.sigma))
    for factor in (0.5, 2.0):  # λ·2 and λ/2 are worse, paired on the same prompts
        diff = loss(posterior_mean(b.X, b.y, b.sigma * factor**0.5)) - oracle
        assert diff.mean() > 3 * diff.std() / len(diff) ** 0.5
    diff = loss(ada_rr(b.X, b.y)) - oracle
    assert diff.mean() > 0


def test_gdpp_is_diag_with_qy_zero():
    model = build("gdpp", 10, 2, 0.05, torch.Generator().manual_seed(0))
    assert model.cfg.mode == "diag" and torch.all(model.q[..., 1] == 0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    b = _batch(count=256).to(dtype=torch.float32)
    for _ in range(3):
        opt.zero_grad()
        (model(b.Z()) - b.y_query).square().mean().backward()
        opt.step()
    assert torch.all(model.q[..., 1] == 0) and model.q[..., 0].abs().min() > 0


def test_gdpp_schedule_is_the_models_gd_plus_plus():
    """A GD++ model (DIAG, q_y = 0) predicts what gd_plus_plus predicts with its (η_ℓ, γ_ℓ), in float64."""
    torch.manual_seed(0)
    model = build("gdpp", 10, 3, 0.3, torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        model.p.uniform_(-1.0, 1.0)
        model.q[..., 0].uniform_(-0.5, 0.5)  # q_y stays 0
    b = _batch(sigma_max=1.0, count=64)
    hp = gdpp_schedule(model)
    assert len(hp["eta"]) == len(hp["gamma"]) == 3
    ref = (gd_plus_plus(b.X, b.y, 3, hp["eta"], hp["gamma"])[:, 3] * b.x_query).sum(-1)
    with torch.no_grad():
        torch.testing.assert_close(model(b.Z()), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gdpp_errors(hp, 3, b), (ref - b.y_query).square(), rtol=1e-10, atol=1e-12)


def test_tuned_gdpp_is_monotone_no_worse_than_its_starts_and_finds_the_growing_step_basin():
    """Without noise the best 2-step GD++ has a growing step (η ≈ (0.45, 3.6), ½·MSE ≈ 0.27); the constant
    grid's best point (≈ 0.39) and the learned models' usual point (≈ 0.34) are worse. A given start is kept
    unless the tuner beats it."""
    tune = _batch(sigma_max=0.0, count=2000, seed=3)
    start = {"eta": [0.7, 2.9], "gamma": [0.25, 0.0]}
    res = tune_gdpp(tune, 2, {2: [start]}, maxfev=60)
    start_loss = float(gdpp_errors(start, 2, tune).mean())
    assert float(res[1].train_loss[-1]) <= start_loss + 1e-12
    assert float(res[1].train_loss[-1]) <= float(res[0].train_loss[-1])
    assert float(res[1].train_loss[-1]) / 2 < 0.32  # 0.291 at η = (0.448, 3.65), γ = 0.424; 0.362 at the start


def test_depth_and_noise_scale_the_training_and_the_seeds():
    """train_at: cap, halving period and patience × L/depth_unit (× noisy_budget with noise), batch × depth_unit/L;
    seeds_at: every seed only at the noiseless best_of_depths."""
    from experiments.noisy_regression import NoisyRegressionConfig

    cfg = NoisyRegressionConfig(seeds=(0, 1, 2, 3, 4), depth_unit=2, best_of_depths=(2,), other_seeds=3,
                                noisy_budget=0.25)  # fmt: skip
    t = cfg.train
    t4 = cfg.train_at(4, noisy=False)
    assert (t4.steps, t4.halve_every, t4.plateau_patience, t4.batch_size) == (
        2 * t.steps, 2 * t.halve_every, 2 * t.plateau_patience, t.batch_size // 2)
    t2n = cfg.train_at(2, noisy=True)
    assert (t2n.steps, t2n.batch_size, t2n.lr) == (round(0.25 * t.steps), t.batch_size, t.lr)
    assert cfg.train_at(2, noisy=False) == t
    assert cfg.seeds_at(2, noisy=False) == (0, 1, 2, 3, 4)
    assert cfg.seeds_at(4, noisy=False) == cfg.seeds_at(2, noisy=True) == (0, 1, 2)
    flat = NoisyRegressionConfig(depth_unit=0)
    assert flat.train_at(7, noisy=True) == flat.train
    assert flat.train_at(7, noisy=False, mode="gdpp") == flat.train


def test_deep_noiseless_gdpp_gets_its_larger_batch_and_longer_schedule_and_nothing_else_does():
    from experiments.noisy_regression import NoisyRegressionConfig

    cfg = NoisyRegressionConfig(depth_unit=2, gdpp_deep_batch=2.0, gdpp_deep_steps=1.5)
    t = cfg.train
    g4 = cfg.train_at(4, noisy=False, mode="gdpp")
    assert (g4.steps, g4.halve_every, g4.plateau_patience, g4.batch_size) == (
        3 * t.steps, 3 * t.halve_every, 3 * t.plateau_patience, t.batch_size)
    assert (g4.lr, g4.clip_value, g4.explode_factor) == (t.lr, t.clip_value, t.explode_factor)
    plain = cfg.train_at(4, noisy=False, mode="diag")
    assert plain.dtype == t.dtype and (plain.steps, plain.batch_size) == (2 * t.steps, t.batch_size // 2)
    # the other modes, GD++ at the unit depth and GD++ with noise: the plain rule (the deep noiseless FULL: in
    # full_deep_dtype, float64 by default, its float32 gradient overflows on rare prompts)
    assert cfg.train_at(4, noisy=False, mode="full") == replace(plain, dtype="float64")
    assert cfg.train_at(2, noisy=False, mode="full") == t and cfg.train_at(4, noisy=True, mode="full").dtype == t.dtype
    assert cfg.train_at(2, noisy=False, mode="gdpp") == t
    assert cfg.train_at(4, noisy=True, mode="gdpp") == cfg.train_at(4, noisy=True, mode="full")


def test_tails_section_names_exactly_the_learned_models_a_few_test_prompts_dominate():
    from experiments.reports.noisy_regression import EXPLODED_SHARE, _tails_section

    def rows_of(method, seed, mean, share):
        stats = {"test_loss": mean, "test_loss_median": 1.0, "test_loss_trimmed": 2.0,
                 "log_test_loss_parts_sd": 0.1, "top1pct_share": share}  # fmt: skip
        return [{"setting": "U(0,5)", "method": method, "depth": 4, "seed": seed, "metric": k, "value": v}
                for k, v in stats.items()]  # fmt: skip

    rows = (rows_of("diag", 0, 3e13, 1.0) + rows_of("diag", 1, 3.5, 0.13)
            + rows_of("full", 0, 3.6, EXPLODED_SHARE - 0.01) + rows_of("gdpp_tuned", 0, 9e9, 0.99))  # fmt: skip
    text = "\n".join(_tails_section(rows, ["U(0,5)"], ["full", "diag"], [2, 4], {"test_prompts": 1000}))
    assert "U(0,5) diag L = 4 seed 0 (mean 3e+13, median 1" in text
    assert "seed 1" not in text.split("Exploding")[1] and "full L = 4 seed 0" not in text  # below the share
    assert "gdpp_tuned" not in text.split("Exploding")[1]  # only learned models are named
    calm = "\n".join(_tails_section(rows_of("diag", 1, 3.5, 0.13), ["U(0,5)"], ["diag"], [4], {"test_prompts": 1000}))
    assert "Exploding" not in calm


def test_class_gap_is_to_the_better_of_tuned_and_trained_gdpp_and_gdpp_itself_only_to_tuned():
    import math

    from experiments.reports.noisy_regression import _gaps, _tuned_beaten

    losses = {("full", 0): 2.0, ("gdpp_tuned", 0): 1.5, ("gdpp", 0): 1.0, ("full", 1): 2.0, ("gdpp_tuned", 1): 1.5}
    rows = [{"setting": "U(0,0)", "method": m, "depth": 4, "seed": s, "metric": "test_loss", "value": v}
            for (m, s), v in losses.items()]  # fmt: skip
    full = _gaps(rows, "U(0,0)", "full", 4, 0.05)
    assert math.isclose(full[0].gap, math.log(2.0))  # the trained GD++ (1.0) is the better reference
    assert math.isclose(full[1].gap, math.log(2.0 / 1.5))  # no trained GD++ on seed 1: tuned GD++
    assert full[0].flagged and full[1].flagged
    gdpp = _gaps(rows, "U(0,0)", "gdpp", 4, 0.05)
    assert math.isclose(gdpp[0].gap, math.log(1.0 / 1.5)) and not gdpp[0].flagged  # never against itself
    assert "U(0,0) L = 4" in _tuned_beaten(rows, 0.05) and _tuned_beaten(rows, 0.5) == ""


def test_projections_of_the_class_curriculum_keep_a_model_already_in_the_smaller_class():
    """FULL onto DIAG and DIAG onto GD++ (_initial): a FULL model whose P, Q are DIAG-structured becomes the DIAG
    model with the same predictions (float64), and a DIAG model becomes GD++ with q_y = 0 and its other entries."""
    from experiments.noisy_regression import NoisyRegressionConfig, _initial
    from icl.seeding import Streams

    cfg = NoisyRegressionConfig()
    st = Streams(0)
    diag = build("diag", 10, 2, 0.05, torch.Generator().manual_seed(2)).double()
    with torch.no_grad():
        diag.p.copy_(torch.empty_like(diag.p).uniform_(-1.0, 1.0).float())  # float32 values: _initial builds float32
        diag.q.copy_(torch.empty_like(diag.q).uniform_(-0.5, 0.5).float())
    full = build("full", 10, 2, 0.05, torch.Generator().manual_seed(3)).double()
    with torch.no_grad():
        for layer in range(2):
            P, Q = diag.layer_weights(layer)
            full.P[layer], full.Q[layer] = P, Q
    b = _batch(sigma_max=1.0, count=64)
    projected = _initial("diag", cfg, 2, st, full.state_dict()).double()
    torch.testing.assert_close(projected.p, diag.p)
    with torch.no_grad():
        torch.testing.assert_close(projected(b.Z()), full(b.Z()), rtol=1e-10, atol=1e-10)
    gdpp = _initial("gdpp", cfg, 2, st, diag.state_dict())
    assert torch.all(gdpp.q[..., 1] == 0)
    torch.testing.assert_close(gdpp.q[..., 0], diag.q[..., 0].float())
    torch.testing.assert_close(gdpp.p, diag.p.float())


def test_curriculum_starts():
    """_start: at the class_curriculum depths DIAG from FULL and GD++ from DIAG of the same setting; elsewhere
    noisy FULL and DIAG from the previous setting; the rest (and warm_start off) from the random init."""
    from experiments.noisy_regression import NoisyRegressionConfig, _start

    cfg = NoisyRegressionConfig(class_curriculum=(2,))
    w = {(s, m, L, 0): (s, m, L) for s in range(3) for m in ("full", "diag", "gdpp") for L in (2, 4)}
    assert _start(cfg, w, 1, "diag", 2, 0) == (1, "full", 2)
    assert _start(cfg, w, 0, "gdpp", 2, 0) == (0, "diag", 2)
    assert _start(cfg, w, 2, "full", 2, 0) == (1, "full", 2)
    assert _start(cfg, w, 2, "diag", 4, 0) == (1, "diag", 4)
    assert _start(cfg, w, 0, "full", 2, 0) is None and _start(cfg, w, 0, "diag", 4, 0) is None
    assert _start(cfg, w, 2, "gdpp", 4, 0) is None and _start(cfg, w, 2, "full", 4, 1) is None
    assert _start(NoisyRegressionConfig(warm_start=False), w, 1, "diag", 2, 0) is None
