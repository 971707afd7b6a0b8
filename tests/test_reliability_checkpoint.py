"""Checkpoints and results on disk: atomic writes that keep the old file on failure, weights_only loading, a
clear CheckpointError for every kind of bad file, and refusal to write a non-finite state."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from experiments.common import RunContext
from experiments.quickstart import QuickstartConfig
from experiments.results import write_results
from icl.prompts import PromptDistribution
from icl.runio import (
    CheckpointError,
    RunDirError,
    atomic_write_bytes,
    load_checkpoint,
    payload_digest,
    prepare_run_dir,
    read_csv,
    save_checkpoint,
    write_json,
)
from icl.seeding import Streams
from icl.training import Trainer, checkpoint
from icl.training.checkpoint import CHECKPOINT_FORMAT
from learned_optimizers import LinearSelfAttention

CFG = QuickstartConfig().with_overrides(
    ["train.steps=4", "train.batch_size=4", "train.eval_batch=4", "prompt.d=2", "prompt.n=3"]
)


def make(tmp_path: Path, cfg=CFG) -> tuple[RunContext, Trainer]:
    ctx = RunContext(name="quickstart", out_dir=tmp_path, quiet=True)
    streams = Streams(cfg.seed)
    dist = PromptDistribution(cfg.prompt, generator=streams.generator("rotation"))
    model = LinearSelfAttention(cfg.prompt.d, cfg.model, generator=streams.generator("init"))
    return ctx, Trainer(model, dist, cfg.train, streams, quiet=True)


@pytest.fixture
def good(tmp_path) -> Path:
    ctx, trainer = make(tmp_path)
    trainer.run(until=2)
    return checkpoint.save(ctx.checkpoint_path, ctx.name, CFG, trainer)


# -- what a checkpoint holds ----------------------------------------------------------------------------------
def test_checkpoint_holds_everything_and_loads_weights_only(good):
    ckpt = torch.load(good, weights_only=True)
    assert ckpt["format"] == CHECKPOINT_FORMAT
    assert QuickstartConfig.from_dict(json.loads(ckpt["config"])) == CFG  # the resolved config
    t = ckpt["trainer"]
    assert t["step"] == 2 and t["seeds"] == [CFG.seed] and [set(m) for m in ckpt["models"]] == [{"A"}]
    assert ckpt["model_spec"] == {"name": "lsa", "d": 2, "cfg": CFG.model.to_dict(), "constraints": {}}
    assert ckpt["optimizer_spec"]["name"] == CFG.train.optimizer
    assert {"state", "param_groups"} <= set(t["optimizers"][0])
    assert t["train_generators"][0].dtype == torch.uint8 and t["train_generators_now"][0].dtype == torch.uint8
    assert t["base_lrs"] == [[CFG.train.lr]] and t["rollbacks"] == [0]
    assert [r["step"] for r in t["histories"][0]["rows"]] == [1, 2]


def test_restore_roundtrip(tmp_path, good):
    ctx, fresh = make(tmp_path)
    checkpoint.restore(fresh, ctx.checkpoint_path, CFG)
    assert fresh.step == 2


# -- bad files ------------------------------------------------------------------------------------------------
def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "truncated_tail":
        path.write_bytes(data[:-10])
    elif how == "garbage":
        path.write_bytes(os.urandom(2048))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "text":
        path.write_text("this is not a checkpoint\n")
    elif how == "flipped":
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :])
    elif how == "pickle_object":  # an arbitrary pickled object: weights_only must refuse it
        path.write_bytes(pickle.dumps(RunDirError("x")))
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "missing":
        path.unlink()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "how",
    ["truncated", "truncated_tail", "garbage", "empty", "text", "flipped", "pickle_object", "directory", "missing"],
)
def test_bad_file_gives_checkpoint_error(tmp_path, good, how):
    corrupt(good, how)
    with pytest.raises(CheckpointError, match=str(good.name)):
        load_checkpoint(good)
    ctx, fresh = make(tmp_path)
    with pytest.raises(CheckpointError):
        checkpoint.restore(fresh, ctx.checkpoint_path, CFG)


def rewrite(path: Path, payload, checksum: bool = True) -> None:
    """Write a hand-edited payload, with a checksum that matches it (so that the later checks are reached) or,
    with ``checksum=False``, none."""
    if isinstance(payload, dict):
        payload = {k: v for k, v in payload.items() if k != "checksum"}
        if checksum:
            payload["checksum"] = payload_digest(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: [1, 2, 3], "is not an icl-optimizers checkpoint \\(a list\\)"),
        (lambda c: {"models": c["models"]}, "missing 'format', 'config', 'trainer'"),
        (lambda c: {k: v for k, v in c.items() if k != "trainer"}, "missing 'trainer'"),
        (lambda c: {**c, "format": "someone-else/3"}, "has format 'someone-else/3'"),
        (lambda c: {**c, "config": "{not json"}, "unreadable config"),
        (lambda c: {**c, "config": json.dumps({"prompt": {"dd": 1}})}, "unreadable config"),
        (lambda c: {**c, "trainer": {k: v for k, v in c["trainer"].items() if k != "step"}}, "missing 'step'"),
        (lambda c: {**c, "models": [{"A": torch.zeros(1, 1, 7, 7)}]}, "does not fit this run"),
        (lambda c: {**c, "trainer": 3}, "'trainer' must be a dict"),
    ],
)
def test_wrong_format_or_missing_keys(tmp_path, good, edit, message):
    rewrite(good, edit(torch.load(good, weights_only=True)))
    ctx, fresh = make(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.restore(fresh, ctx.checkpoint_path, CFG)


def test_checkpoint_without_checksum_is_refused(tmp_path, good):
    """Issue 18, item 16: the checksum is mandatory, so hand-edited values without one are not loaded."""
    ckpt = torch.load(good, weights_only=True)
    ckpt["trainer"]["step"] = 7
    rewrite(good, ckpt, checksum=False)
    with pytest.raises(CheckpointError, match="has no checksum"):
        load_checkpoint(good)
    ctx, fresh = make(tmp_path)
    with pytest.raises(CheckpointError, match="has no checksum"):
        checkpoint.restore(fresh, ctx.checkpoint_path, CFG)


def test_edited_contents_fail_the_checksum(good):
    ckpt = torch.load(good, weights_only=True)
    ckpt["models"][0]["A"] += 1e-3
    buf = io.BytesIO()
    torch.save(ckpt, buf)  # the stored checksum is kept, the contents changed
    good.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="do not match the stored checksum"):
        load_checkpoint(good)


def test_other_config_is_refused_naming_keys(tmp_path, good):
    other = CFG.with_overrides(["train.batch_size=8", "seed=3"])
    ctx, fresh = make(tmp_path, other)
    with pytest.raises(CheckpointError, match="differs in: seed, train.batch_size"):
        checkpoint.restore(fresh, ctx.checkpoint_path, other)


def test_resume_may_change_the_learning_rate_and_divergence_policy_and_records_it(tmp_path, good):
    """#18 item 9: the fixes a divergence message suggests (lower lr, rollback) are accepted on resume, applied
    from the resumed step, and recorded in the history."""
    other = CFG.with_overrides(["train.lr=0.001", "train.on_divergence=rollback"])
    ctx, fresh = make(tmp_path, other)
    checkpoint.restore(fresh, ctx.checkpoint_path, other)
    assert fresh.step == 2 and fresh.base_lrs == [[pytest.approx(0.001)]] and fresh.cfg.on_divergence == "rollback"
    (event,) = fresh.history.events
    assert event["event"] == "resume" and event["step"] == 2
    assert event["changed"]["train.lr"] == {"saved": CFG.train.lr, "now": 0.001}
    assert event["changed"]["train.on_divergence"] == {"saved": "stop", "now": "rollback"}
    fresh.run()
    assert [r["lr"] for r in fresh.history.rows[2:]] == pytest.approx([0.001 * fresh.schedule(k) for k in (2, 3)])


def test_checkpoint_of_older_config_without_new_fields_still_resumes(tmp_path, good):
    ckpt = torch.load(good, weights_only=True)
    old = json.loads(ckpt["config"])
    for k in ("on_divergence", "max_rollbacks", "rollback_lr_factor"):
        del old["train"][k]
    del ckpt["trainer"]["train_generators_now"]
    rewrite(good, {**ckpt, "config": json.dumps(old)})
    ctx, fresh = make(tmp_path)
    checkpoint.restore(fresh, ctx.checkpoint_path, CFG)
    assert fresh.step == 2


# -- never overwrite good with bad ----------------------------------------------------------------------------
def test_nonfinite_state_is_refused_and_old_file_kept(tmp_path, good):
    before = good.read_bytes()
    ctx, trainer = make(tmp_path)
    checkpoint.restore(trainer, ctx.checkpoint_path, CFG)
    with torch.no_grad():
        trainer.model.A[0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="refusing to write a checkpoint: models.0.A is not finite"):
        checkpoint.save(ctx.checkpoint_path, ctx.name, CFG, trainer)
    assert good.read_bytes() == before
    with torch.no_grad():
        trainer.model.A.nan_to_num_(0.0)
    state = trainer.optimizer.state[trainer.model.A]
    state["exp_avg"].fill_(float("inf"))
    with pytest.raises(CheckpointError, match="trainer.optimizers.0.state.0.exp_avg is not finite"):
        save_checkpoint(good, checkpoint.payload(ctx.name, CFG, trainer))
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp files


# -- atomic writes -----------------------------------------------------------------------------------------------
def fail_replace(monkeypatch):
    def boom(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", boom)


@pytest.mark.parametrize(
    "writer",
    [
        lambda p: write_results(p, [dict(experiment="e", method="m", depth=1, seed=0, metric="x", value=2.0)]),
        lambda p: write_json(p, {"test_loss": 2.0}),
        lambda p: save_checkpoint(p, {"format": CHECKPOINT_FORMAT, "model": {"A": torch.ones(2)}}),
        lambda p: atomic_write_bytes(p, b"new"),
    ],
    ids=["results.csv", "summary.json", "checkpoint", "bytes"],
)
def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch, writer):
    path = tmp_path / "target"
    path.write_bytes(b"previous complete contents")
    fail_replace(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        writer(path)
    assert path.read_bytes() == b"previous complete contents"
    assert [p.name for p in tmp_path.iterdir()] == ["target"]


def test_results_and_summary_roundtrip(tmp_path):
    rows = [dict(experiment="e", method="m", depth=1, seed=0, metric="x", value=float("nan"))]
    write_results(tmp_path / "results.csv", rows)
    assert read_csv(tmp_path / "results.csv")[0]["metric"] == "x"
    write_json(tmp_path / "summary.json", {"a": float("inf"), "b": [1.0, float("nan")]})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": None, "b": [1.0, None]}


# -- run directories ---------------------------------------------------------------------------------------------
def test_prepare_run_dir_refuses_occupied(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run)  # new: fine
    prepare_run_dir(run)  # only the empty figures/ folder: still fine
    (run / "results.csv").write_text("old")
    with pytest.raises(RunDirError, match="already holds a run; pass --resume to continue it or --overwrite"):
        prepare_run_dir(run)
    with pytest.raises(RunDirError, match="cannot resume: .* holds no checkpoint"):
        prepare_run_dir(run, resume=True)
    assert prepare_run_dir(run, overwrite=True) == run
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="exists and is not a directory"):
        prepare_run_dir(tmp_path / "file")
