"""Trackers: TensorBoard event files written and read back; wandb calls (against a stand-in module); errors."""

from __future__ import annotations

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
