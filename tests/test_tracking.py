"""Trackers: TensorBoard event files written and read back; wandb calls (against a stand-in module); errors."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from icl.tracking import TensorBoardTracker, Tracker, TrackerUnavailable, WandbTracker, make_tracker, series_name


def _read_scalars(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}, acc


def test_tensorboard_events_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    tracker = make_tracker("tensorboard", tmp_path / "tb")
    assert isinstance(tracker, TensorBoardTracker)
    tracker.on_start({"train": {"lr": 0.01, "steps": 3}, "seed": 0})
    for seed in (0, 1):
        for step in range(3):
            tracker.on_step({"step": step, "model": "lsa_L2", "seed": seed, "loss": 1.0 / (step + 1) + seed,
                             "lr": 0.01 * (3 - step), "grad_norm": torch.tensor(0.5 * step), "eval_loss": None})
        tracker.on_eval({"step": 2, "model": "lsa_L2", "seed": seed, "loss": 0.25 + seed, "steps_sigma": 1.5})
    tracker.on_end({"test_loss": 0.3})

    runs = sorted(p.name for p in (tmp_path / "tb").iterdir() if p.is_dir())
    assert runs == ["lsa_L2-s0", "lsa_L2-s1"]
    for seed in (0, 1):
        got, _ = _read_scalars(tmp_path / "tb" / f"lsa_L2-s{seed}")
        assert sorted(got) == ["eval/loss", "eval/steps_sigma", "train/grad_norm", "train/loss", "train/lr"]
        assert got["train/loss"] == [(t, pytest.approx(1.0 / (t + 1) + seed)) for t in range(3)]
        assert got["train/lr"] == [(t, pytest.approx(0.01 * (3 - t))) for t in range(3)]
        assert got["train/grad_norm"] == [(t, pytest.approx(0.5 * t)) for t in range(3)]
        assert got["eval/loss"] == [(2, pytest.approx(0.25 + seed))]
        assert got["eval/steps_sigma"] == [(2, pytest.approx(1.5))]
    root, acc = _read_scalars(tmp_path / "tb")
    assert root == {"summary/test_loss": [(0, pytest.approx(0.3))]}
    assert "config/text_summary" in acc.Tags()["tensors"]


def test_tracker_rejects_bad_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    tracker = make_tracker("tensorboard", tmp_path)
    with pytest.raises(KeyError, match="step"):
        tracker.on_step({"loss": 1.0})
    with pytest.raises(TypeError, match="'loss' must be a number"):
        tracker.on_step({"step": 0, "loss": "high"})
    tracker.on_end()


def test_make_tracker_names(tmp_path):
    none = make_tracker("none", tmp_path)
    assert type(none) is Tracker
    none.on_start({})
    none.on_step({"step": 0, "loss": 1.0})
    none.on_end()
    assert type(make_tracker(None, tmp_path)) is Tracker
    with pytest.raises(ValueError, match="'tensorbord' is not one of: none, tensorboard, wandb"):
        make_tracker("tensorbord", tmp_path)
    assert series_name({"model": "gd pp", "seed": 3}) == "gd_pp-s3"
    assert series_name({"seed": 3}) == "s3" and series_name({}) == ""


def test_missing_packages_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with pytest.raises(TrackerUnavailable, match="pip install tensorboard"):
        make_tracker("tensorboard", tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(TrackerUnavailable, match="pip install wandb"):
        make_tracker("wandb", tmp_path)


class _FakeRun:
    def __init__(self, **kwargs):
        self.init = kwargs
        self.defined, self.logged, self.summary, self.finished = [], [], {}, False

    def define_metric(self, name, step_metric=None):
        self.defined.append((name, step_metric))

    def log(self, data):
        self.logged.append(dict(data))

    def finish(self):
        self.finished = True


def test_wandb_offline_per_series_step_axes(tmp_path, monkeypatch):
    runs = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: runs.append(_FakeRun(**kw)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tracker = make_tracker("wandb", tmp_path / "run" / "wandb")
    assert isinstance(tracker, WandbTracker)
    tracker.on_start({"train": {"lr": 0.01}})
    tracker.on_step({"step": 5, "model": "lsa", "seed": 1, "loss": 2.0, "lr": 0.01})
    tracker.on_step({"step": 0, "model": "gd", "seed": 1, "loss": 3.0})  # another model starts at step 0
    tracker.on_eval({"step": 5, "model": "lsa", "seed": 1, "loss": 1.5})
    tracker.on_end({"test_loss": 0.5, "verdict": "pass"})
    (run,) = runs
    assert run.init["mode"] == "offline" and run.init["project"] == "icl-optimizers"
    assert run.init["name"] == "run" and run.init["config"] == {"train": {"lr": 0.01}}
    assert run.defined == [("lsa-s1/step", None), ("lsa-s1/*", "lsa-s1/step"),
                           ("gd-s1/step", None), ("gd-s1/*", "gd-s1/step")]  # fmt: skip
    assert run.logged == [
        {"lsa-s1/step": 5, "lsa-s1/train/loss": 2.0, "lsa-s1/train/lr": 0.01},
        {"gd-s1/step": 0, "gd-s1/train/loss": 3.0},
        {"lsa-s1/step": 5, "lsa-s1/eval/loss": 1.5},
    ]
    assert run.summary == {"test_loss": 0.5, "verdict": "pass"} and run.finished


# -- wired into training: fit sends every number once, across a stop and resume; the CLI's track=... -----------------
class Collect:
    """A stand-in tracker recording the dicts it is sent."""

    def __init__(self) -> None:
        self.steps, self.evals = [], []

    def on_step(self, metrics):
        self.steps.append(dict(metrics))

    def on_eval(self, metrics):
        self.evals.append(dict(metrics))


def test_fit_sends_every_row_eval_and_readout_once_across_a_resume(tmp_path):
    from experiments.quickstart import QuickstartConfig
    from icl.prompts import PromptConfig, PromptDistribution
    from icl.training import ModelSpec, RunStore, TrainConfig, fit
    from icl.training.signals import TrainingInterrupted

    spec = ModelSpec("lsa", 3, {"layers": 2, "init_std": 0.1})
    law = lambda st: PromptDistribution(PromptConfig(d=3, n=6), generator=st.generator("rotation"))  # noqa: E731
    read = lambda i, m: {"norm": float(m.A.detach().norm())}  # noqa: E731
    cfg = TrainConfig(steps=30, batch_size=16, eval_batch=32, eval_every=10, log_every=5)
    writer = Collect()
    store = RunStore(tmp_path, "t", QuickstartConfig(), stop_after=15, tracker=writer)
    with pytest.raises(TrainingInterrupted):
        fit(spec, law, cfg, [0, 1], store=store, tag="lsa", read_out=read, read_every=10, quiet=True)
    store.stop_after, store.resume = None, True
    fitted = fit(spec, law, cfg, [0, 1], store=store, tag="lsa", read_out=read, read_every=10, quiet=True)
    for run in fitted.runs:
        mine = [m for m in writer.steps if m["seed"] == run.seed]
        assert all(m["model"] == "lsa" for m in mine)
        assert [(m["step"], m["loss"], m["lr"], m["grad_norm"]) for m in mine] == [
            (r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in run.history.rows]  # each step once
        evals = [(m["step"], m["loss"]) for m in writer.evals if m["seed"] == run.seed and "loss" in m]
        assert evals == [(e["step"], e["eval_loss"]) for e in run.history.evals]
        reads = [(m["step"], m["norm"]) for m in writer.evals if m["seed"] == run.seed and "norm" in m]
        assert reads == [(r["step"], r["norm"]) for r in run.readouts] and [s for s, _ in reads] == [0, 10, 20, 30]


def test_run_with_track_tensorboard_writes_the_training_curves(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from experiments.cli import main
    from icl.runio import read_csv

    out = tmp_path / "run"
    tiny = ["--set", "train.steps=30", "--set", "train.batch_size=64", "--set", "train.eval_batch=64", "--set",
            "train.eval_every=10", "--set", "train.log_every=5", "--set", "test_prompts=500", "--quiet"]  # fmt: skip
    assert main(["run", "quickstart", "--out", str(out), "--seed", "3", *tiny, "--set", "track=tensorboard"]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["track"] == "tensorboard"
    (series,) = [p for p in (out / "tensorboard").iterdir() if p.is_dir()]
    assert series.name.endswith("-s3")
    got, _ = _read_scalars(series)
    log = read_csv(out / "train_log.csv")
    assert got["train/loss"] == [(int(r["step"]), pytest.approx(float(r["loss"]), rel=1e-6)) for r in log]
    assert got["train/lr"] == [(int(r["step"]), pytest.approx(float(r["lr"]), rel=1e-6)) for r in log]
    assert got["eval/loss"] == [(int(r["step"]), pytest.approx(float(r["eval_loss"]), rel=1e-6))
                                for r in log if r["eval_loss"]]  # fmt: skip


def test_a_missing_tracker_package_is_bad_input_before_anything_is_made(tmp_path, monkeypatch, capsys):
    from experiments.cli import main

    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "run"
    assert main(["run", "quickstart", "--out", str(out), "--set", "track=wandb"]) == 2
    assert "track=wandb needs the wandb package" in capsys.readouterr().err and not out.exists()
    assert main(["run", "quickstart", "--out", str(out), "--set", "track=tb"]) == 2
    assert "track = 'tb' is not one of: 'none', 'tensorboard', 'wandb'" in capsys.readouterr().err
