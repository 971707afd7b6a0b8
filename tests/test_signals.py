"""Stop requests outlive one training: a CLI run installs the handler once, and a SIGTERM that arrives outside
training (before it, between two models, after it) is kept until honoured, so the run exits 143."""

import os
import signal

import pytest

import experiments.quickstart as quickstart
from experiments.cli import main
from icl.prompts import PromptConfig, PromptDistribution
from icl.training import ModelSpec, TrainConfig, TrainingInterrupted, fit, signals

CFG = TrainConfig(steps=6, batch_size=8, eval_batch=8, eval_every=3, log_every=1)


def law(st):
    return PromptDistribution(PromptConfig(d=2, n=4), generator=st.generator("rotation"))


def test_a_request_made_between_trainings_stops_the_next_one_before_any_step():
    assert signals.install()
    try:
        signals.request_stop("SIGTERM received", signal.SIGTERM)
        with pytest.raises(TrainingInterrupted) as err:
            fit(ModelSpec("lsa", 2, {"layers": 1}), law, CFG, [0, 1], quiet=True)
        assert err.value.signum == signal.SIGTERM
        assert signals.pending() is not None  # kept until the run ends
    finally:
        signals.uninstall()
        signals.clear()


def test_training_outside_a_run_handles_signals_only_for_its_own_loop():
    assert not signals.installed()
    fitted = fit(ModelSpec("lsa", 2, {"layers": 1}), law, CFG, [0], quiet=True)
    assert fitted.runs[0].step == 6 and not signals.installed() and signals.pending() is None


def test_sigterm_before_training_exits_143_from_the_cli(tmp_path, monkeypatch, capsys):
    real = quickstart.write_config

    def write_then_signal(*args, **kwargs):  # the signal lands before training starts
        path = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return path

    monkeypatch.setattr(quickstart, "write_config", write_then_signal)
    rc = main(["run", "quickstart", "--out", str(tmp_path / "run"), "--quiet", "--set", "train.steps=5", "--set",
               "train.batch_size=8", "--set", "train.eval_batch=8", "--set", "test_prompts=100"])  # fmt: skip
    assert rc == 143
    assert "SIGTERM received" in capsys.readouterr().err
    assert not signals.installed() and signals.pending() is None  # the handler was the run's, for its life


def test_sigterm_during_a_studys_baselines_stops_before_the_next_seed(tmp_path, monkeypatch, capsys):
    """Issue 18 item 4: a signal while the baselines are computed is honoured before the next seed's baselines
    (exit 143), not after the whole study has run."""
    from experiments import pgd_depth

    real, calls = pgd_depth.baselines, []

    def baselines_then_signal(*args, **kwargs):
        calls.append(args[2])  # the seed
        out = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(pgd_depth, "baselines", baselines_then_signal)
    rc = main(["run", "pgd_depth", "--profile", "quick", "--seeds", "0,1", "--out", str(tmp_path / "run"),
               "--quiet"])  # fmt: skip
    assert rc == 143 and calls == [0]
    assert "the baselines" in capsys.readouterr().err  # (computing them, or tuning GD++'s candidates after them)
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
