"""outer_optimizers: the quick profile (further reduced) writes every artifact, tunes the rate on the held-out
criterion, reports each model against its class optimum and re-renders; the pieces against independent oracles."""

import json
import math
from dataclasses import replace

import pytest
import torch

from experiments.cli import main
from experiments.outer_optimizers import (
    LR_EXTENSIONS,
    OPTIMIZER_NAMES,
    OPTIMUM,
    OuterOptimizersConfig,
    class_optimum,
    next_rate,
    optimizer_spec,
    per_prompt_losses,
    select_lr,
)
from experiments.reporting import load_run
from icl.config import ConfigError
from icl.prompts import PromptConfig, PromptDistribution
from icl.seeding import Streams
from learned_optimizers.constructions import preconditioned_gd_lsa
from reference_optimizers import krylov_bound, preconditioned_gd, query_loss

SMALL = ["--seeds", "0,1", "--set", "train.steps=40", "--set", "tune_steps=40", "--set", "train.eval_every=10",
         "--set", "train.batch_size=64", "--set", "train.eval_batch=256", "--set", "test_prompts=500",
         "--set", "tune_prompts=2000", "--set", "optimizers=adam=0.1,rf_rmsprop=0.1,sirfshampoo=0.03",
         "--set", "lr_grid=0.3,1"]  # fmt: skip
AHN = PromptConfig(d=5, n=20, eigenvalues=(1.0, 1.0, 0.25, 0.0625, 1.0), w_prior="inverse_sigma")


def test_select_lr_takes_the_lowest_mean_log_loss_and_drops_rates_that_diverged():
    # 0.3 has the larger arithmetic mean (0.255 > 0.2) but the lower mean log loss; 1.0 diverged in one seed
    assert select_lr({0.1: [0.2, 0.2], 0.3: [0.01, 0.5], 1.0: [0.001, math.inf]}) == 0.3
    assert select_lr({0.1: [0.2, 0.3], 0.3: [0.1, 0.1], 1.0: [0.01, math.inf]}) == 0.3
    assert select_lr({0.1: [math.nan], 0.3: [math.inf]}) == 0.1  # nothing finite: the smallest rate


def test_next_rate_steps_past_the_edge_the_selected_rate_sits_on_until_it_is_bracketed():
    assert next_rate({0.1: [0.3], 0.3: [0.2], 1.0: [0.1]}) == pytest.approx(10 / 3)  # best at the top: ×3.33
    assert next_rate({0.1: [0.1], 0.3: [0.2]}) == pytest.approx(0.1 / 3)  # best at the bottom: ÷3
    assert next_rate({0.1: [0.3], 0.3: [0.1], 1.0: [0.2]}) is None  # bracketed
    assert next_rate({0.1: [0.3], 0.3: [0.1], 1.0: [0.01, math.inf]}) is None  # a diverged rate brackets from above
    assert next_rate({0.1: [math.inf], 0.3: [math.nan]}) is None  # every rate diverged: nothing to extend
    assert next_rate({0.2: [0.1]}) == pytest.approx(0.6)  # one rate: ×3


def test_every_optimizer_gets_the_shared_betas_horizon_and_weight_decay():
    cfg = replace(OuterOptimizersConfig(), train=replace(OuterOptimizersConfig().train, betas=(0.8, 0.95),
                                                         weight_decay=0.0))  # fmt: skip
    model = torch.nn.Linear(3, 2)
    for name in OPTIMIZER_NAMES:
        spec = optimizer_spec(name, 0.01, cfg)
        (opt,) = spec.build([spec.groups(model)], [Streams(0, "cpu")])
        group = opt.param_groups[0]
        assert group["lr"] == 0.01
        assert group["weight_decay"] == 0.0, name
        if "betas" in group:
            assert tuple(group["betas"]) == (0.8, 0.95), name
        else:  # the root-free methods without betas: the same second-moment horizon as a rate 1 − β₂
            key = {"rf_rmsprop": "lr_cov", "sirfshampoo": "beta2"}[name]
            assert group[key] == pytest.approx(0.05), name


@pytest.mark.parametrize("field", ["betas", "weight_decay"])
def test_unset_betas_or_weight_decay_is_refused(field):
    base = OuterOptimizersConfig()
    with pytest.raises(ConfigError, match=f"train.{field} must be set"):
        replace(base, train=replace(base.train, **{field: None})).check()


def test_adamw_without_weight_decay_is_adam_step_for_step():
    # why the study does not run AdamW by default (its weight decay is 0 for every optimizer)
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(4, 3, generator=gen)
    grads = [torch.randn(4, 3, generator=gen) for _ in range(20)]
    out = []
    for cls in (torch.optim.Adam, torch.optim.AdamW):
        w = torch.nn.Parameter(w0.clone())
        opt = cls([w], lr=0.1, betas=(0.9, 0.99), weight_decay=0.0)
        for g in grads:
            w.grad = g.clone()
            opt.step()
        out.append(w.detach())
    assert torch.equal(out[0], out[1])
    assert not torch.equal(out[0], w0)


def test_per_prompt_losses_of_the_pgd_construction_equal_the_reference_iteration(gen):
    dist = PromptDistribution(AHN, generator=gen, dtype=torch.float64)
    test = dist.sample(300, gen)
    P = torch.linalg.inv(dist.Sigma.double())
    etas = [0.4, 0.7, 1.6]
    model = preconditioned_gd_lsa(torch.stack([e * P for e in etas]))
    want = query_loss(preconditioned_gd(test.X, test.y, 3, P, etas)[:, 3], test.x_query, test.y_query)
    got = per_prompt_losses(model, test)
    assert got.dtype == torch.float64 and got.shape == (300,)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # a float32 model (as trained) is evaluated in float64 on the same prompts: only its weights are rounded
    f32 = per_prompt_losses(model.float(), test)
    assert f32.dtype == torch.float64 and float(f32.mean()) == pytest.approx(float(want.mean()), rel=1e-4)


def test_class_optimum_attains_the_sigma_inverse_krylov_bound_on_the_test_prompts():
    streams = Streams(3, "cpu")
    dist = PromptDistribution(AHN, generator=streams.generator("rotation"))
    test = dist.sample(4000, torch.Generator().manual_seed(11)).to(dtype=torch.float64)
    opt = class_optimum(dist, streams, 3, 4000, test)
    # the tuned steps reproduce the reported per-prompt losses
    P = torch.linalg.inv(dist.Sigma.double())
    again = query_loss(preconditioned_gd(test.X, test.y, 3, P, opt["eta"])[:, 3], test.x_query, test.y_query)
    torch.testing.assert_close(opt["pgd"], again)
    # the bound (any 3 prompt-independent Σ⁻¹-Krylov coefficients) is what per-step PGD attains (real roots)
    assert opt["krylov_real_roots"]
    assert abs(math.log(float(opt["pgd"].mean())) - math.log(opt["krylov"])) < 0.03
    assert float(opt["pgd"].mean()) < float(test.y_query.square().mean()) / 10
    # the bound is the one of reference_optimizers.krylov_bound fitted on the `tune` stream
    dist.dtype = torch.float64
    train = dist.sample(4000, streams.generator("tune", "cpu"))
    assert opt["krylov"] == pytest.approx(float(krylov_bound(train, test, 3, P).test_loss[3]), rel=1e-12)


def test_outer_optimizers_quick(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "outer_optimizers", "--profile", "quick", "--out", str(out), "--quiet", *SMALL]) == 0
    for name in ("config.json", "results.csv", "summary.json", "report.md"):
        assert (out / name).is_file(), name
    for stem in ("loss_vs_steps", "loss_vs_time", "gap_to_class_optimum"):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["selected"]) == {"adam", "rf_rmsprop", "sirfshampoo"}
    _, rows = load_run(out)
    # the selected rate is the full-length runs' best on the held-out criterion, bracketed by a smaller and a larger
    # rate unless the extensions ran out or every rate diverged; only it is reported
    for name, sel in summary["selected"].items():
        tuned = {}
        for r in rows:
            if r["method"] == name and r["metric"] == "tune_final_val_loss":
                tuned.setdefault(r["lr"], []).append(r["value"])
        assert 2 <= len(tuned) <= 2 + LR_EXTENSIONS and all(len(v) == 2 for v in tuned.values())
        assert sel["lr"] == select_lr(tuned)
        if len(tuned) < 2 + LR_EXTENSIONS and all(math.isfinite(v) for v in tuned[sel["lr"]]):
            assert min(tuned) < sel["lr"] < max(tuned)
        assert (name in summary["selected_at_edge"]) == (sel["lr"] in (min(tuned), max(tuned)))
        full = {r["lr"] for r in rows if r["method"] == name and r["metric"] == "test_loss"}
        assert full == {sel["lr"]}
        # every seed's gap to the class optimum is its log test loss minus the optimum's, on the same seed
        for seed in (0, 1):
            learned = [r["value"] for r in rows if r["method"] == name and r["metric"] == "test_loss"
                       and r["seed"] == seed]  # fmt: skip
            optimum = [r["value"] for r in rows if r["method"] == OPTIMUM and r["metric"] == "test_loss"
                       and r["seed"] == seed]  # fmt: skip
            assert sel["gap_per_seed"][str(seed)] == pytest.approx(math.log(learned[0]) - math.log(optimum[0]))
            assert (seed in sel["flagged_seeds"]) == (sel["gap_per_seed"][str(seed)] > 0.05)
    assert summary["verdicts"]["root_free_matches_root_based"] in ("holds", "does not hold", "undecided")
    walls = sorted((r["train_step"], r["value"]) for r in rows
                   if r["method"] == "adam" and r["metric"] == "wall_s")  # fmt: skip
    assert len(walls) > 1 and all(b[1] >= a[1] for a, b in zip(walls, walls[1:]))
    text = (out / "report.md").read_text()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == text
    assert "Root-free vs root-based" in text and "not converged" in text  # 40 steps: far from the optimum


def test_together_from_is_the_first_step_after_which_every_mean_curve_stays_within_the_factor():
    from experiments.reports.outer_optimizers import TOGETHER, together_from

    def rows(method, values):
        return [dict(method=method, lr=0.1, seed=s, metric="val_loss", train_step=t, value=v * (1 + 0.01 * s))
                for s in (0, 1) for t, v in zip((100, 200, 300, 400), values)]  # fmt: skip

    a = rows("a", [1.0, 0.5, 0.30, 0.20])
    b = rows("b", [2.0, 0.3, 0.31, 0.2 * TOGETHER * 0.999])  # within the factor from step 300 on
    methods = {"a": ("a", 0.1), "b": ("b", 0.1)}
    assert together_from(a + b, methods) == 300
    c = rows("c", [1.0, 0.5, 0.30, 0.2 * TOGETHER * 1.01])  # apart at the last step: never together
    assert together_from(a + c, {"a": ("a", 0.1), "c": ("c", 0.1)}) is None
    assert together_from(a, {"a": ("a", 0.1)}) is None  # one curve: nothing to coincide with
