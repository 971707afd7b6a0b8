"""newton_vs_gd: the study's pieces (GD iterates, the grown LSA, the GD++ tuner, how a run ended, the report's
convergence verdicts) and the quick profile (further reduced) end to end."""

import json
import math

import torch

from experiments.cli import main
from experiments.newton_vs_gd import (
    NewtonVsGDConfig,
    _end,
    gd_iterates,
    gd_steps_grid,
    grown_lsa,
    tune_gd_step,
    tune_gdpp,
)
from experiments.reporting import load_run
from experiments.reports.newton_vs_gd import (
    convergence_section,
    fit_sentence,
    gap_text,
    steps_to_reach,
    stop_sentence,
)
from icl.prompts import PromptConfig, PromptDistribution
from icl.seeding import Streams
from icl.training import Plateau
from icl.training.loop import History
from learned_optimizers import LSAConfig
from reference_optimizers import gd_plus_plus, gradient_descent, mean_query_loss

SMALL = ["--set", "lsa_train.steps=20", "--set", "gpt_train.steps=10", "--set", "compare_prompts=16",
         "--set", "probe_prompts=128", "--set", "test_prompts=200", "--set", "gd_max_steps=64",
         "--set", "newton_steps=6", "--set", "gpt.layers=2", "--set", "lsa.layers=2",
         "--set", "tune_prompts=128"]  # fmt: skip


def test_gd_iterates_match_the_reference(gen):
    X = torch.randn(4, 20, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(4, 20, generator=gen, dtype=torch.float64)
    keep = gd_steps_grid(16)
    assert keep[0] == 0 and keep[-1] == 16
    ref = gradient_descent(X, y, 16, 0.3)
    assert torch.allclose(gd_iterates(X, y, 0.3, keep), ref[:, keep], atol=1e-12)


def test_grown_lsa_keeps_the_trained_layers_and_repeats_the_last():
    cfg = NewtonVsGDConfig(lsa=LSAConfig(layers=3, mode="full", init_std=0.3))
    st = Streams(7, "cpu")
    one = grown_lsa(cfg, 1, None, st)
    two = grown_lsa(cfg, 2, one, st)
    three = grown_lsa(cfg, 3, two, st)
    assert two.layers == 2 and three.layers == 3
    for name in ("P", "Q"):
        a, b, c = getattr(one, name), getattr(two, name), getattr(three, name)
        assert torch.equal(b[0], a[0]) and torch.equal(b[1], a[0])
        assert torch.equal(c[:2], b) and torch.equal(c[2], b[1])


def test_tuned_gdpp_beats_tuned_gd_at_equal_steps():
    """GD++ contains GD (γ = 0); its tuned 3-step schedule must reach a lower training loss than tuned GD's."""
    dist = PromptDistribution(PromptConfig(d=4, n=8), generator=torch.Generator().manual_seed(0))
    dist.dtype = torch.float64
    train = dist.sample(256, torch.Generator().manual_seed(1))
    hp = tune_gdpp(train, 3)
    assert len(hp["eta"]) == len(hp["gamma"]) == 3
    gdpp = float(mean_query_loss(gd_plus_plus(train.X, train.y, 3, hp["eta"], hp["gamma"]), train.x_query,
                                 train.y_query)[-1])  # fmt: skip
    eta = tune_gd_step(train, 3)
    gd = float(mean_query_loss(gradient_descent(train.X, train.y, 3, eta), train.x_query, train.y_query)[-1])
    assert math.isfinite(gdpp) and gdpp < 0.9 * gd


class _Run:
    def __init__(self, events, step):
        self.history, self.step, self.wall_time = History(events=events), step, 1.5


def test_end_tells_a_plateau_stop_from_the_cap():
    plateau = _end(_Run([{"event": "finished", "step": 300, "reason": "plateau: held-out loss not improved"}], 300))
    assert plateau == {"steps_trained": 300.0, "plateau_stop": 1.0, "train_seconds": 1.5}
    assert _end(_Run([], 800))["plateau_stop"] == 0.0


def _rows(lsa_mse: dict[int, float], gdpp_mse: dict[int, float]) -> list[dict]:
    rows = []
    for method, depth, per_seed in (("lsa_full", 0, lsa_mse), ("gdpp_tuned", 2, gdpp_mse)):
        for seed, v in per_seed.items():
            for metric, value in (("test_mean", v), ("test_log_mean", math.log(v)), ("test_median", v / 2),
                                  ("test_trimmed_mean", v / 1.5), ("test_log_mean_parts_sd", 0.01),
                                  ("test_top_share", 0.2), ("test_count", 100.0), ("test_parts", 5.0)):  # fmt: skip
                rows.append({"method": method, "depth": depth, "seed": seed, "metric": metric, "value": value})
    return rows


def test_convergence_section_flags_a_model_far_from_its_class_optimum():
    cfg = NewtonVsGDConfig(lsa=LSAConfig(layers=2, mode="full"), models=("lsa_full",))
    close = _rows({0: 1.5e-3, 1: 1.4e-3, 2: 1.6e-3}, {0: 1e-3, 1: 1e-3, 2: 1.1e-3})  # 1.5x: within 2x
    text, summary = convergence_section(cfg, close, ["lsa_full"])
    assert summary["lsa_full"]["flagged_seeds"] == [] and summary["lsa_full"]["within_verdict"] == "holds"
    assert "not converged" not in text and "tuned 2-step GD++" in text
    far = _rows({0: 3e-3, 1: 1.4e-3, 2: 5e-3}, {0: 1e-3, 1: 1e-3, 2: 1e-3})  # seeds 0 and 2 above 2x
    text, summary = convergence_section(cfg, far, ["lsa_full"])
    assert summary["lsa_full"]["flagged_seeds"] == [0, 2] and "not converged" in text
    assert summary["lsa_full"]["within_verdict"] != "holds"


def test_stop_sentence_says_which_seeds_ran_to_the_cap():
    rows = [{"method": "gpt", "depth": 2, "seed": seed, "metric": metric, "value": value}
            for seed, plateau, steps in ((0, 1.0, 1400.0), (1, 0.0, 2000.0), (2, 0.0, 2000.0))
            for metric, value in (("plateau_stop", plateau), ("steps_trained", steps))]  # fmt: skip
    text = stop_sentence(rows, "gpt", 2)
    assert "plateau rule for seed [0] (steps [1400])" in text
    assert "step cap for seeds [1, 2] (2000 steps): **not at a plateau**" in text
    assert stop_sentence(rows, "gpt", 4) == "" and "cap" not in stop_sentence(rows[:2], "gpt", 2)


def test_a_gpt_far_from_tuned_gdpp_is_flagged_as_far_not_unconverged():
    from experiments.convergence import class_gap

    far, near = class_gap(math.log(3.0), math.log(1.0), math.log(2), "tuned 2-step GD++"), class_gap(0.1, 0.0, 0.5, "x")
    assert "far above tuned 2-step GD++" in gap_text("gpt", far) and "not converged" not in gap_text("gpt", far)
    assert "not converged" in gap_text("lsa_full", far)
    assert gap_text("gpt", near) == near.text()


def test_fit_sentence_names_a_family_only_where_it_matches():
    rows = [{"method": "lsa_full", "seed": seed, "metric": metric, "value": value, "reference": "gd_plus_plus"}
            for seed, metric, value in ((0, "fit_matched", 0.0), (0, "fit_relative_error", 0.3),
                                        (1, "fit_matched", 1.0), (1, "fit_relative_error", 0.01))]  # fmt: skip
    text = fit_sentence(rows, "lsa_full")
    assert "seed 0: no family fits" in text and "seed 1: `gd_plus_plus`" in text


def test_newton_vs_gd_quick(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "newton_vs_gd", "--profile", "quick", "--out", str(out), "--quiet", *SMALL]) == 0
    for name in ("config.json", "results.csv", "summary.json", "report.md"):
        assert (out / name).is_file(), name
    for tag in ("lsa_full_L1", "lsa_full_L2", "gpt"):  # the LSA grows depth by depth, one checkpoint per depth
        assert (out / "checkpoints" / f"{tag}-s0.pt").is_file(), tag
    for stem in ("heatmap_lsa_full_newton", "heatmap_lsa_full_gd", "heatmap_gpt_newton", "heatmap_gpt_gd",
                 "best_matching_steps"):  # fmt: skip
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000, stem
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"lsa_full", "gpt"}
    assert summary["zero_predictor_loss"] == 10.0  # tr Σ = d for x ~ N(0, I), w* ~ N(0, I)
    gd = {int(k): v for k, v in summary["gd_loss"].items()}
    assert gd[0] > gd[1] > gd[2] > gd[4] > gd[8]  # tuned GD decreases the query loss
    assert 0 < summary["tuned_gd_eta"] <= 2.0
    lsa = summary["models"]["lsa_full"]
    assert lsa["class_reference"] == "tuned 2-step GD++" and list(lsa["class_gap"]) == ["0"]
    gpt = summary["models"]["gpt"]  # the GPT is held to tuned GD++ of its own depth, on the same test prompts
    assert gpt["class_reference"] == "tuned 2-step GD++" and list(gpt["class_gap"]) == ["0"]
    _, rows = load_run(out)
    sims = [r["value"] for r in rows if r["metric"] == "sim_e" and r["reference"] in ("newton", "gd")]
    assert sims and all(-1 - 1e-9 <= v <= 1 + 1e-9 for v in sims)
    steps = {r["depth"]: r["value"] for r in rows if r["method"] == "lsa_full" and r["metric"] == "steps_trained"}
    assert set(steps) == {1, 2} and all(0 < v <= 20 for v in steps.values())
    count = [r["value"] for r in rows if r["method"] == "lsa_full" and r["metric"] == "test_count"]
    assert count == [200.0]
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "Fu et al." in text and "tuned 2-step GD++" in text and "200 test prompts" in text
    assert "2-layer softmax GPT" in text and "below 0.5× the zero predictor's" in text


def test_steps_to_reach_brackets_the_reference_grid():
    losses = {0: 10.0, 1: 4.0, 2: 2.5, 4: 1.2, 8: 0.5}
    assert steps_to_reach(1.0, losses) == "4–8"
    assert steps_to_reach(2.5, losses) == "1–2"  # reached exactly at step 2
    assert steps_to_reach(11.0, losses) == "≤ 0"
    assert steps_to_reach(0.1, losses) == "> 8"
    assert steps_to_reach(float("nan"), losses) == "–"


class _Trainer:
    """What the plateau rule reads of a Trainer: the zero predictor's held-out loss per seed, the step and the cap;
    ``finish`` records the step it was called at."""

    def __init__(self, zero_losses):
        self.zero_losses, self.step, self.cfg, self.finished_at = zero_losses, 0, type("C", (), {"steps": 10_000}), None

    def finish(self, reason):
        assert reason.startswith("plateau")  # what _end reads as a plateau stop
        self.finished_at = self.step


def _evaluate(rule, trainer, losses_per_eval):
    for losses in losses_per_eval:
        trainer.step += 100
        rule.on_eval(trainer, losses)
        if trainer.finished_at is not None:
            return trainer.finished_at
    return None


def test_the_gpt_plateau_rule_waits_until_the_zero_predictor_plateau_is_left():
    # flat at the zero predictor's 10 for 6 evaluations (patience 2): the plain rule stops there, this one waits
    flat, then = [[9.9]] * 6, [[4.0], [3.0], [2.98], [2.97], [2.99]]
    plain = Plateau(2, 1e-2)
    assert _evaluate(plain, _Trainer([10.0]), flat + then) == 300
    # escaped at 4.0 (step 700), improved at 3.0, then < 1% for 2 evaluations: stops at step 1000
    assert _evaluate(Plateau(2, 1e-2, escape=0.5), _Trainer([10.0]), flat + then) == 1000
    # escape = 0.25 (below 2.5): never escaped, never stopped
    assert _evaluate(Plateau(2, 1e-2, escape=0.25), _Trainer([10.0]), flat + then) is None
    # two seeds: the run stops only when both have escaped and plateaued
    two = [[9.9, 9.9]] * 3 + [[3.0, 9.9]] * 4 + [[3.0, 3.0]] * 3
    assert _evaluate(Plateau(2, 1e-2, escape=0.5), _Trainer([10.0, 10.0]), two) == 1000
