"""The training guard (stop or roll back on a non-finite loss, gradient or state; never checkpoint a diverged
state), clean stops on SIGINT/SIGTERM, and exact resume from a checkpoint file, including mid-block."""

from __future__ import annotations

import math
import signal

import pytest
import torch

from icl.prompts import PromptConfig, PromptDistribution
from icl.runio import load_checkpoint, save_checkpoint
from icl.seeding import Streams
from icl.training import TrainConfig, Trainer, TrainingDiverged, TrainingInterrupted
from learned_optimizers import LinearSelfAttention, LSAConfig

D, N = 3, 6


class HookedDistribution(PromptDistribution):
    """A prompt law that calls ``hook(batch)`` on every sampled batch (to poison it or raise a signal)."""

    hook = None

    def sample(self, batch_size, generator):
        batch = super().sample(batch_size, generator)
        if self.hook is not None:
            self.hook(batch)
        return batch


def make_trainer(seed=0, **train):
    kw = dict(steps=20, batch_size=8, eval_batch=8, log_every=5, eval_every=10, lr=0.01)
    kw.update(train)
    streams = Streams(seed)
    dist = HookedDistribution(PromptConfig(d=D, n=N), generator=streams.generator("rotation"))
    model = LinearSelfAttention(D, LSAConfig(layers=2), generator=streams.generator("init"))
    return Trainer(model, dist, TrainConfig(**kw), streams, quiet=True)


def poison_at(trainer, step, times=1):
    """Make the batch drawn for 0-based step ``step`` all-NaN, ``times`` times (None: every time)."""
    left = [times]

    def hook(batch):
        if trainer.step == step and (left[0] is None or left[0] > 0):
            batch.X.fill_(float("nan"))
            if left[0] is not None:
                left[0] -= 1

    trainer.dist.hook = hook


def finite_state(trainer):
    return all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())


def same_state(a: Trainer, b: Trainer) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    oa, ob = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    return (
        a.step == b.step
        and all(torch.equal(sa[k], sb[k]) for k in sa)
        and all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
        and a.history.rows == b.history.rows
        and a.history.evals == b.history.evals
    )


# -- divergence: stop ------------------------------------------------------------------------------------------
def test_nan_loss_stops_naming_step_and_last_finite_loss():
    t = make_trainer()
    poison_at(t, 12)
    with pytest.raises(TrainingDiverged) as err:
        t.run()
    msg = str(err.value)
    assert "non-finite loss" in msg and "at step 13" in msg
    last = t.history.rows[-1]
    assert last["step"] == 12 and math.isfinite(last["loss"])
    assert f"last healthy loss {last['loss']:.6g}" in msg
    assert err.value.step == 13 and err.value.last_loss == last["loss"]


def test_nan_gradient_stops():
    t = make_trainer()
    t.model.A.register_hook(lambda g: g * float("nan") if t.step == 7 else g)
    with pytest.raises(TrainingDiverged, match="non-finite gradient norm .* at step 8; last healthy loss"):
        t.run()


def test_diverged_state_is_never_checkpointed(tmp_path):
    """Checkpoints every 5 steps, losses read back only every 50: the read-back before each checkpoint must
    catch step 13, and the file on disk must keep step 10."""
    t = make_trainer(log_every=50, eval_every=50)
    poison_at(t, 12)
    seen = []
    path = tmp_path / "checkpoint.pt"

    def on_checkpoint(tr):
        seen.append((tr.step, finite_state(tr)))
        save_checkpoint(path, {"format": "test", "models": [tr.model.state_dict()], "trainer": tr.state_dict()})

    with pytest.raises(TrainingDiverged, match="at step 13"):
        t.run(on_checkpoint=on_checkpoint, checkpoint_every=5)
    assert seen == [(5, True), (10, True)]
    ckpt = load_checkpoint(path)
    assert ckpt["trainer"]["step"] == 10
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["models"][0].values())


def test_diverged_weights_with_finite_losses_are_caught():
    """A step whose loss and gradient were finite can still leave inf weights; the read-back checks them."""
    t = make_trainer()
    orig = t.optimizer.step

    def bad_step(*a, **k):
        out = orig(*a, **k)
        if t.step == 9:  # the 10th update, just before the read-back at step 10
            with torch.no_grad():
                t.model.A.fill_(float("inf"))
        return out

    t.optimizer.step = bad_step
    seen = []
    with pytest.raises(TrainingDiverged, match="non-finite model weight 'A' after step 10"):
        t.run(on_checkpoint=lambda tr: seen.append(tr.step), checkpoint_every=10)
    assert seen == []


def test_diverged_optimizer_state_is_caught():
    t = make_trainer()
    orig = t.optimizer.step

    def bad_step(*a, **k):
        out = orig(*a, **k)
        if t.step == 4:
            t.optimizer.state[t.model.A]["exp_avg_sq"].fill_(float("nan"))
        return out

    t.optimizer.step = bad_step
    with pytest.raises(TrainingDiverged, match="non-finite optimizer state '0.exp_avg_sq' after step 5"):
        t.run()


# -- divergence: rollback -------------------------------------------------------------------------------------
def test_rollback_restores_last_finite_snapshot_and_lowers_lr():
    t = make_trainer(on_divergence="rollback", max_rollbacks=2, rollback_lr_factor=0.25)
    poison_at(t, 12, times=1)
    t.run()
    assert t.step == 20 and finite_state(t)
    assert [r["step"] for r in t.history.rows] == list(range(1, 21))
    assert t.history.events == [
        {"event": "rollback", "diverged_at": 13, "rolled_back_to": 10, "base_lr": 0.0025, "rollback": 1}
    ]
    lrs = {r["step"]: r["lr"] for r in t.history.rows}
    assert lrs[10] == 0.01 and lrs[11] == pytest.approx(0.0025)
    assert [e["step"] for e in t.history.evals] == [10, 20]
    state = t.state_dict()
    assert state["rollbacks"] == [1] and state["base_lrs"] == [[pytest.approx(0.0025)]]
    # steps 11.. are trained on fresh batches, from the seed's stream train.rollback1: rerunning from scratch
    # to step 10 and going on from there with that stream and the lower lr gives the same weights
    u = make_trainer(on_divergence="rollback", max_rollbacks=2, rollback_lr_factor=0.25)
    u.run(until=10)
    u.base_lrs = [[0.0025]]
    u.gens[0].set_state(u.streams[0].generator("train.rollback1").get_state())
    u.run()
    assert all(torch.equal(a, b) for a, b in zip(t.model.parameters(), u.model.parameters()))
    assert t.history.rows == u.history.rows


def explode_on_batch(trainer, step, bad=None):
    """Make the batch first drawn for 0-based step ``step`` (or the batch ``bad[0]``) all-NaN, and that same
    batch (the same prompts) again whenever it is drawn: a rare prompt that overflows, found by its data, not by
    the step. Returns the steps it was drawn at and the list holding it."""
    bad, seen = ([] if bad is None else bad), []

    def hook(batch):
        if trainer.step == step and not bad:
            bad.append(batch.X.clone())
        if bad and torch.equal(batch.X, bad[0]):
            seen.append(trainer.step)
            batch.X.fill_(float("nan"))

    trainer.dist.hook = hook
    return seen, bad


@pytest.mark.parametrize("resample_every", [1, 3])
def test_a_rolled_back_run_never_meets_the_offending_batch_again(resample_every):
    """The batch of step 13 (one of a block of 3 with resample_every 3) overflows: the run rolls back once to
    step 10 and trains on to the end on fresh batches; the offending batch was drawn once. (Replaying the
    snapshot's generator would draw it again after every rollback and give up after max_rollbacks.)"""
    t = make_trainer(on_divergence="rollback", max_rollbacks=2, resample_every=resample_every)
    seen, _ = explode_on_batch(t, 12)
    t.run()
    assert seen == [12] and t.rollbacks == [1] and t.step == 20 and finite_state(t)
    assert t.history.events[0]["rolled_back_to"] == 10
    assert [r["step"] for r in t.history.rows] == list(range(1, 21))


@pytest.mark.parametrize("resample_every, stop", [(1, 14), (1, 15), (3, 14), (3, 16)])
def test_resume_after_a_rollback_equals_the_uninterrupted_run(tmp_path, resample_every, stop):
    """Stopped at step 14 the run finds the divergence of step 13 at that read-back, not at step 15's as the
    uninterrupted run does: it rolls back to the same snapshot onto the same fresh stream, and the checkpoint
    written after the rollback (mid-block or not) resumes to the uninterrupted run's state bit for bit."""
    full = make_trainer(on_divergence="rollback", resample_every=resample_every)
    explode_on_batch(full, 12)
    full.run()
    first = make_trainer(on_divergence="rollback", resample_every=resample_every)
    seen, bad = explode_on_batch(first, 12)
    first.run(until=stop)
    assert first.rollbacks == [1] and seen == [12]
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"format": "t", "models": [first.model.state_dict()], "trainer": first.state_dict()})
    second = make_trainer(on_divergence="rollback", resample_every=resample_every)
    seen, _ = explode_on_batch(second, -1, bad)  # the offending batch would be poisoned again were it drawn
    ckpt = load_checkpoint(path)
    second.load_state_dict({**ckpt["trainer"], "models": ckpt["models"]})
    second.run()
    assert same_state(full, second) and second.history.events == full.history.events and not seen


def test_rollback_gives_up_after_max_rollbacks():
    t = make_trainer(on_divergence="rollback", max_rollbacks=2)
    poison_at(t, 12, times=None)
    with pytest.raises(TrainingDiverged, match=r"at step 13; last healthy loss .* after 2 rollback\(s\)"):
        t.run()
    assert t.rollbacks == [2] and len(t.history.events) == 2


def test_rollback_state_survives_a_checkpoint(tmp_path):
    t = make_trainer(on_divergence="rollback")
    poison_at(t, 3, times=1)
    t.run(until=12)
    save_checkpoint(tmp_path / "c.pt", {"format": "t", "models": [t.model.state_dict()], "trainer": t.state_dict()})
    u = make_trainer(on_divergence="rollback")
    u.load_state_dict(load_checkpoint(tmp_path / "c.pt")["trainer"])
    assert u.base_lrs == t.base_lrs and u.rollbacks == [1] and u.history.events == t.history.events


# -- exact resume -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("resample_every, stop", [(1, 10), (1, 7), (7, 10), (7, 14)])
def test_resume_from_checkpoint_file_is_bitwise_exact(tmp_path, resample_every, stop):
    """Stopping at step k (mid-block or at a block boundary), saving to disk, loading into a fresh trainer and
    continuing gives the uninterrupted run's weights, optimizer state and history exactly."""
    full = make_trainer(resample_every=resample_every)
    full.run()
    first = make_trainer(resample_every=resample_every)
    first.run(until=stop)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"format": "t", "models": [first.model.state_dict()], "trainer": first.state_dict()})
    second = make_trainer(resample_every=resample_every)
    ckpt = load_checkpoint(path)
    second.load_state_dict({**ckpt["trainer"], "models": ckpt["models"]})
    second.run()
    assert same_state(full, second)


def test_trainer_state_missing_key_is_named():
    t = make_trainer()
    state = t.state_dict()
    del state["optimizers"]
    with pytest.raises(ValueError, match="trainer state is missing 'optimizers'"):
        make_trainer().load_state_dict(state)


# -- signals ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_stops_cleanly_and_resumes_exactly(tmp_path, signum):
    sentinel = lambda s, f: None
    previous = signal.signal(signum, sentinel)
    try:
        t = make_trainer(resample_every=3)
        hit = []

        def hook(batch):
            if t.step == 6 and not hit:
                hit.append(True)
                signal.raise_signal(signum)

        t.dist.hook = hook
        path = tmp_path / "checkpoint.pt"
        saved = []

        def on_checkpoint(tr):
            saved.append(tr.step)
            save_checkpoint(path, {"format": "t", "models": [tr.model.state_dict()], "trainer": tr.state_dict()})

        with pytest.raises(TrainingInterrupted) as err:
            t.run(on_checkpoint=on_checkpoint, checkpoint_every=5)
        assert err.value.step == 7 and err.value.signum == signum
        assert signal.Signals(signum).name in str(err.value)
        assert saved == [5, 7]
        assert signal.getsignal(signum) is sentinel  # the previous handler is back
    finally:
        signal.signal(signum, previous)

    resumed = make_trainer(resample_every=3)
    ckpt = load_checkpoint(path)
    resumed.load_state_dict({**ckpt["trainer"], "models": ckpt["models"]})
    resumed.run()
    full = make_trainer(resample_every=3)
    full.run()
    assert same_state(full, resumed)


def test_request_stop_without_checkpoint_callback():
    t = make_trainer()
    t.dist.hook = lambda batch: t.request_stop("test") if t.step == 3 else None
    with pytest.raises(TrainingInterrupted, match="test; stopped at step 4"):
        t.run()
    assert [r["step"] for r in t.history.rows] == [1, 2, 3, 4]


# -- argument validation -------------------------------------------------------------------------------------------
def test_trainer_rejects_bad_arguments():
    streams = Streams(0)
    dist = PromptDistribution(PromptConfig(d=D, n=N), generator=streams.generator("rotation"))
    model = LinearSelfAttention(D, LSAConfig())
    cfg = TrainConfig(steps=1, batch_size=2, eval_batch=2)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        Trainer("lsa", dist, cfg, streams)
    with pytest.raises(ValueError, match="dist must be a PromptDistribution"):
        Trainer(model, PromptConfig(d=D, n=N), cfg, streams)
    with pytest.raises(ValueError, match="cfg must be a TrainConfig"):
        Trainer(model, dist, {"steps": 1}, streams)
    with pytest.raises(ValueError, match="streams must be a Streams"):
        Trainer(model, dist, cfg, 0)
    with pytest.raises(ValueError, match="the model takes d = 4 but the prompts have d = 3"):
        Trainer(LinearSelfAttention(4, LSAConfig()), dist, cfg, streams)
    frozen = LinearSelfAttention(D, LSAConfig()).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(frozen, dist, cfg, streams)
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer"):
        Trainer(model, dist, cfg, streams, optimizer="adamw")
    with pytest.raises(ValueError, match="device 'gpu0' is not a torch device"):
        Trainer(model, dist, cfg, streams, device="gpu0")
