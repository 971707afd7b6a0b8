"""manifold_icl: the quick profile (further reduced) writes every artifact with every method, keeps U on the Stiefel
manifold and re-renders; the gap, first-reach and verdict helpers on hand-made numbers."""

import json
import math

import pytest
import torch

from experiments.cli import main
from experiments.manifold_icl import (
    METHODS,
    REFERENCES,
    ManifoldICLConfig,
    first_reach,
    log_gap,
    method_train_config,
    settled,
)
from experiments.reporting import load_run
from experiments.reports.manifold_icl import no_worse_word, paired, sign_test, verdict
from icl.config import ConfigError

SMALL = ["--set", "train.steps=20", "--set", "train.eval_every=10", "--set", "train.batch_size=64",
         "--set", "train.eval_batch=128", "--set", "test_prompts=300", "--set", "tune_prompts=300",
         "--set", "monitor_every=10", "--set", "reference_steps=10"]  # fmt: skip


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
    cpu = sorted((r["train_step"], r["value"]) for r in rows if r["metric"] == "cpu_s" and r["seed"] == 0
                 and r["method"] == "spectral_manifold_adam")  # fmt: skip
    assert cpu[0] == (0, 0.0) and all(b[1] >= a[1] for a, b in zip(cpu, cpu[1:]))  # CPU seconds never go back
    steps = {r["train_step"] for r in rows if r["metric"] == "val_gap" and r["method"] == "unconstrained_adam"}
    assert max(steps) == 2 * 10  # reference_steps per layer, L = 2
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


def _tab(curves: dict[str, dict[int, dict[int, float]]], final: dict[str, dict[int, float]]) -> dict:
    """A report table {(tag, L): {seed: {key: value}}} at L = 3 from hand-made gap curves and final gaps."""
    tab: dict = {}
    for tag, per_seed in curves.items():
        tab[(tag, 3)] = {s: {**{f"val_gap:t{t}": g for t, g in c.items()},
                             **{f"cpu_s:t{t}": t / 100 for t in c}, **{f"wall_s:t{t}": t / 50 for t in c},
                             "final_gap": final[tag][s]} for s, c in per_seed.items()}  # fmt: skip
    return tab


def test_first_reach_settled_and_paired_verdicts_follow_the_numbers():
    assert first_reach({100: 0.2, 200: 0.04, 300: 0.06}, 0.05) == 200
    assert math.isnan(first_reach({100: 0.2}, 0.05))
    assert settled({100: 0.04, 200: 0.06, 300: 0.04, 400: 0.03}, 0.05) == 300
    steps = range(100, 2100, 100)
    fast = {s: {t: (0.01 if t >= 200 else 0.5) for t in steps} for s in range(3)}  # reach 200
    slow = {s: {t: (0.01 if t >= 1500 + 100 * s else 0.5) for t in steps} for s in range(3)}  # 1500, 1600, 1700
    never = {s: {t: 0.5 for t in steps} for s in range(3)}
    tab = _tab({"a@0.1": fast, "ref@0.1": slow, "never@0.1": never},
               {"a@0.1": {0: 0.01, 1: 0.02, 2: 0.015}, "ref@0.1": {0: 0.03, 1: 0.035, 2: 0.04},
                "never@0.1": {0: 0.5, 1: 0.5, 2: 0.5}})  # fmt: skip
    p = paired(tab, "a@0.1", "ref@0.1", 3, 0.05)
    ratios = [1500 / 200, 1600 / 200, 1700 / 200]
    assert abs(p["reach"]["ratio"][0] - math.exp(sum(map(math.log, ratios)) / 3)) < 1e-9
    assert p["reach"]["verdict"].word == "holds" and p["reach"]["censored"] == 0  # ratios 7.5-8.5: interval > 3
    assert p["lower"].word == "holds" and p["higher"].word == "does not hold"
    text = verdict("a", "ref", 3, p, 0.05)
    assert "fewer steps over 3 seed(s) (≥ 3× fewer: **holds**" in text and "(upper end ≤ +0) **holds**" in text
    q = paired(tab, "a@0.1", "never@0.1", 3, 0.05)  # the reference never reaches: its last step, a lower bound
    assert q["reach"]["censored"] == 3 and abs(q["reach"]["per_seed"][0] - 2000 / 200) < 1e-9
    assert q["cpu"]["censored"] == 3 and abs(q["cpu"]["per_seed"][1] - 20.0 / 2.0) < 1e-9  # CPU s = step / 100
    assert "lower bound" in verdict("a", "never", 3, q, 0.05)
    assert q["reach"]["kind"] == {0: "lower", 1: "lower", 2: "lower"}
    r = paired(tab, "never@0.1", "a@0.1", 3, 0.05)  # the method never reaches: its last step, an upper bound
    assert r["reach"]["kind"] == {0: "upper", 1: "upper", 2: "upper"} and abs(r["reach"]["per_seed"][0] - 0.1) < 1e-9
    assert r["reach"]["verdict"].word == "does not hold" and "upper bounds" in verdict("never", "a", 3, r, 0.05)
    z = paired(tab, "never@0.1", "never@0.1", 3, 0.05)  # neither reaches: no ratio at all
    assert z["reach"]["verdict"].count == 0 and "no seed where either reaches" in verdict("n", "n", 3, z, 0.05)
    assert p["cpu"]["ratio"][0] == p["reach"]["ratio"][0]  # CPU seconds proportional to steps here


def test_a_method_that_misses_the_target_on_one_seed_can_not_hold_and_the_sign_test_counts_it_against():
    steps = range(100, 3100, 100)
    fast = {s: {t: (0.01 if t >= 200 else 0.5) for t in steps} for s in range(5)}
    fast[4] = {t: 0.5 for t in steps}  # seed 4: the method never comes within the target (its last step: 3000)
    slow = {s: {t: (0.01 if t >= 2000 + 100 * s else 0.5) for t in steps} for s in range(5)}
    zero = dict.fromkeys(range(5), 0.0)
    tab = _tab({"a@1": fast, "ref@1": slow}, {"a@1": zero, "ref@1": zero})
    p = paired(tab, "a@1", "ref@1", 3, 0.05)
    assert p["reach"]["kind"][4] == "upper" and abs(p["reach"]["per_seed"][4] - 2400 / 3000) < 1e-9
    # the other four ratios are 10-11.5: without seed 4 the interval would be far above 3; with its upper bound
    # 0.8 the interval is wide and, whatever it is, "holds" is not allowed on a seed that never reached
    assert p["reach"]["verdict"].word in ("undecided", "does not hold")
    assert p["reach"]["sign"] == {"word": "undecided", "yes": 4, "no": 1, "n": 5, "p": 6 / 32}


def test_sign_test_counts_only_what_the_bounds_prove():
    kind = dict.fromkeys(range(5), "exact")
    assert sign_test(dict.fromkeys(range(5), 4.0), kind, list(range(5)), 3.0)["word"] == "holds"  # p = 1/32
    assert sign_test(dict.fromkeys(range(5), 2.0), kind, list(range(5)), 3.0)["word"] == "does not hold"
    assert sign_test(dict.fromkeys(range(3), 4.0), kind, list(range(3)), 3.0)["word"] == "undecided"  # p = 1/8
    lower = {**kind, 0: "lower"}  # a lower bound 2 < 3: the true ratio may or may not be >= 3
    out = sign_test({**dict.fromkeys(range(5), 4.0), 0: 2.0}, lower, list(range(5)), 3.0)
    assert (out["yes"], out["no"], out["word"]) == (4, 0, "undecided")
    upper = {**kind, 0: "upper"}  # an upper bound 4 >= 3: not proof of >= 3
    out = sign_test(dict.fromkeys(range(5), 4.0), upper, list(range(5)), 3.0)
    assert (out["yes"], out["no"]) == (4, 0)


def test_no_worse_is_the_upper_end_of_the_paired_interval_against_the_margin():
    steps = range(100, 600, 100)
    curve = {s: {t: 0.01 for t in steps} for s in range(5)}
    ref_final = {0: 0.02, 1: 0.03, 2: 0.01, 3: 0.02, 4: 0.015}
    close = {s: v + 0.003 + 0.001 * (s % 2) for s, v in ref_final.items()}  # 0.003-0.004 higher: within 0.01
    far = {s: v + 0.05 + 0.001 * (s % 2) for s, v in ref_final.items()}  # 0.05 higher
    tab = _tab({"c@1": curve, "f@1": curve, "ref@1": curve}, {"c@1": close, "f@1": far, "ref@1": ref_final})
    p = paired(tab, "c@1", "ref@1", 3, 0.05, no_worse_margin=0.01)
    assert p["higher"].word == "holds" and no_worse_word(p) == "holds"  # higher, but by less than the margin
    assert no_worse_word(paired(tab, "c@1", "ref@1", 3, 0.05, no_worse_margin=0.0)) == "does not hold"
    assert no_worse_word(paired(tab, "f@1", "ref@1", 3, 0.05, no_worse_margin=0.01)) == "does not hold"


def test_the_unconstrained_recipe_is_per_layer_with_its_patience_in_steps():
    cfg = ManifoldICLConfig().replace(halve_every=500, reference_steps=2000, reference_patience=1000,
                                      reference_betas=(0.9, 0.999))  # fmt: skip
    t = method_train_config(cfg, "unconstrained_adam", 0.05, 4)
    assert (t.steps, t.halve_every, t.betas, t.clip, t.clip_value) == (8000, 2000, (0.9, 0.999), "per_matrix", 0.01)
    assert t.plateau_patience * cfg.train.eval_every == 4000  # 1000 steps per layer, counted in evaluations of 100
    assert method_train_config(cfg.replace(reference_patience=0), "unconstrained_adam", 0.05, 3).plateau_patience == 0
    s = method_train_config(cfg, "spectral_manifold_adam", 0.03, 4)  # the constrained recipe is not per layer
    assert (s.steps, s.halve_every, s.plateau_patience) == (cfg.train.steps, cfg.constrained_halve_every,
                                                            cfg.train.plateau_patience)  # fmt: skip


def test_side_seeds_must_be_among_the_seeds():
    with pytest.raises(ConfigError, match="side_seeds"):
        ManifoldICLConfig(seeds=(0, 1), side_seeds=(2,)).check()


def test_the_unconstrained_seeds_train_together_and_side_methods_run_on_side_seeds(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "manifold_icl", "--profile", "quick", "--out", str(out), "--quiet", *SMALL,
                 "--set", "seeds=(0,1)", "--set", "side_seeds=(1,)",
                 "--set", "methods=(spectral_manifold_adam,unconstrained_adam,spectral_projected_adam)"]) == 0
    _, rows = load_run(out)
    seeds = lambda m: {r["seed"] for r in rows if r["method"] == m and r["metric"] == "final_gap"}  # noqa: E731
    assert seeds("spectral_manifold_adam") == seeds("unconstrained_adam") == {0, 1}
    assert seeds("spectral_projected_adam") == {1}
    cpu = {s: [r["value"] for r in rows if r["method"] == "unconstrained_adam" and r["metric"] == "cpu_s"
               and r["seed"] == s and r["train_step"] == 20] for s in (0, 1)}  # fmt: skip
    # one stacked run: both seeds read the same clock at the same step, each its half of it
    assert cpu[0] and cpu[1] and 0 < cpu[0][0] and abs(cpu[0][0] - cpu[1][0]) < 0.1 * cpu[0][0]
    assert (out / "checkpoints" / "unconstrained_adam@0.05-L2-s1.pt").is_file()


def test_the_constrained_recipe_clips_the_adam_type_methods_and_scales_with_depth_only_when_asked():
    cfg = ManifoldICLConfig()
    for method in ("spectral_manifold_adam", "spectral_projected_adam", "cgd_spectral_manifold_adam"):
        t = method_train_config(cfg, method, 0.03, 4)
        assert (t.clip, t.clip_value, t.halve_every, t.steps) == ("per_matrix", 0.01, 100, cfg.train.steps), method
    for method in ("spectral_manifold_sgd", "spectral_manifold_momentum"):  # a clip would rescale an SGD step
        assert method_train_config(cfg, method, 0.3, 4).clip == "none", method
    assert method_train_config(cfg, "factorised_stiefel_adam", 0.03, 4).clip == "global"
    scaled = cfg.replace(constrained_depth_unit=2, constrained_halve_every=150)
    for L, (steps, halve) in {1: (500, 75), 3: (1500, 225), 4: (2000, 300)}.items():
        t = method_train_config(scaled.replace(train=scaled.train.replace(steps=1000)), "spectral_manifold_adam",
                                0.03, L)  # fmt: skip
        assert (t.steps, t.halve_every) == (steps, halve), L


def test_the_basis_gets_its_own_betas_and_learning_rate():
    from experiments.manifold_icl import build
    from icl.seeding import Streams

    cfg = ManifoldICLConfig(basis_lr_factor=0.5, adam_betas=(0.8, 0.95), basis_betas=(0.9, 0.999))
    cfg = cfg.replace(train=cfg.train.replace(dtype="float64"))
    for method in ("spectral_manifold_adam", "spectral_projected_adam"):
        _, opt, _ = build(cfg, method, 2, 0.02, Streams(0, "cpu"), "cpu")
        basis = [g for g in opt.param_groups if g.get("manifold") == "stiefel"]
        rest = [g for g in opt.param_groups if g.get("manifold") != "stiefel"]
        assert basis and rest, method
        assert all(g["betas"] == (0.9, 0.999) and g["lr"] == 0.01 for g in basis), method
        assert all(g["betas"] == (0.8, 0.95) and g["lr"] == 0.02 for g in rest), method
    _, opt, _ = build(cfg.replace(basis_betas=None), "spectral_manifold_adam", 2, 0.02, Streams(0, "cpu"), "cpu")
    assert all(g["betas"] == (0.8, 0.95) for g in opt.param_groups)


def test_no_worse_is_decided_on_the_configured_statistic_and_the_other_is_only_beside_it():
    steps = range(100, 600, 100)
    curve = {s: {t: 0.01 for t in steps} for s in range(5)}
    ref_final = dict.fromkeys(range(5), 0.02)
    # the mean says "much worse" on every seed (a heavy-tailed test set), the trimmed mean says "equal"
    tab = _tab({"m@1": curve, "ref@1": curve}, {"m@1": {s: 0.12 + 0.001 * s for s in range(5)}, "ref@1": ref_final})
    for s in range(5):
        tab[("m@1", 3)][s]["gap_vs_trimmed:ref@1"] = 0.001 * (s - 2)
    on_mean = paired(tab, "m@1", "ref@1", 3, 0.05, no_worse_margin=0.01)
    assert on_mean["statistic"] == "mean" and no_worse_word(on_mean) == "does not hold"
    assert abs(on_mean["lower"].mean - 0.102) < 1e-12
    assert on_mean["beside"]["statistic"] == "trimmed_mean" and abs(on_mean["beside"]["lower"].mean) < 1e-12
    text = verdict("m", "ref", 3, on_mean, 0.05)
    assert "final test log MSE (the verdict's statistic) higher than ref's" in text
    assert "beside it (not the verdict): final test log 5%-trimmed mean (reported beside)" in text
    on_trim = paired(tab, "m@1", "ref@1", 3, 0.05, no_worse_margin=0.01, statistic="trimmed_mean")
    assert no_worse_word(on_trim) == "holds" and on_trim["beside"]["statistic"] == "mean"
    assert "final test log 5%-trimmed mean (the verdict's statistic)" in verdict("m", "ref", 3, on_trim, 0.05)
