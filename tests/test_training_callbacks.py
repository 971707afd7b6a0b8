"""The engine's callbacks and divergence rules: the plateau rule ends a run and says so, read-outs survive a stop
and resume, trackers see every logged number, an explosion is caught before it overflows, and a rollback in a
seed batch leaves every seed where its own run would be; evaluation, divergence handling and checkpointing are
callbacks in a fixed order, and the plateau rule of a seed batch waits for every seed."""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments.quickstart import QuickstartConfig
from icl.prompts import PromptConfig, PromptDistribution
from icl.seeding import Streams
from icl.training import (
    Callback,
    Divergence,
    Evaluate,
    ModelSpec,
    Plateau,
    RunStore,
    Tracker,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    fit,
)
from icl.training.signals import TrainingInterrupted
from learned_optimizers import LinearSelfAttention, LSAConfig

PROMPT = PromptConfig(d=3, n=6)
SPEC = ModelSpec("lsa", 3, {"layers": 2, "init_std": 0.1})


def law(st):
    return PromptDistribution(PROMPT, generator=st.generator("rotation"))


class Poisoned(PromptDistribution):
    """A law whose batch drawn for 0-based step ``at`` is all-NaN once (``owner`` tells the step)."""

    owner = None
    at = -1

    def sample(self, batch_size, generator):
        batch = super().sample(batch_size, generator)
        if self.owner is not None and self.owner.step == self.at:
            batch.X.fill_(float("nan"))
            self.at = -1
        return batch


def test_plateau_ends_the_run_and_records_why():
    """lr 1e-30 leaves the weights unchanged, so the held-out loss never improves after the first evaluation:
    with patience 2 the run ends at the third evaluation (step 15), not at the cap of 100."""
    cfg = TrainConfig(steps=100, batch_size=16, eval_batch=32, eval_every=5, optimizer="sgd", lr=1e-30,
                      plateau_patience=2, plateau_tol=1e-3)  # fmt: skip
    (run,) = fit(SPEC, law, cfg, [0], quiet=True).runs
    assert run.step == 15 and [e["step"] for e in run.history.evals] == [5, 10, 15]
    (event,) = run.history.events
    assert event["event"] == "finished" and event["step"] == 15 and event["reason"].startswith("plateau")
    trained = fit(SPEC, law, cfg.replace(lr=1e-2, plateau_patience=0), [0], quiet=True).runs[0]
    assert trained.step == 100 and not trained.history.events  # without the rule it runs to the cap
    with pytest.raises(ValueError, match="patience"):
        Plateau(0)


def test_read_outs_survive_stop_and_resume(tmp_path):
    """#18 item 5: a run stopped between read-outs and resumed ends with every read-out row of the
    uninterrupted run (the rows travel in the checkpoint)."""
    cfg = TrainConfig(steps=30, batch_size=16, eval_batch=32, eval_every=10, log_every=5)
    read = lambda i, m: {"norm": float(m.A.detach().norm())}  # noqa: E731
    full = fit(SPEC, law, cfg, [0, 1], read_out=read, read_every=10, quiet=True)
    store = RunStore(tmp_path, "t", QuickstartConfig(), stop_after=15)
    with pytest.raises(TrainingInterrupted):
        fit(SPEC, law, cfg, [0, 1], store=store, read_out=read, read_every=10, quiet=True)
    store.stop_after, store.resume = None, True
    resumed = fit(SPEC, law, cfg, [0, 1], store=store, read_out=read, read_every=10, quiet=True)
    for a, b in zip(full.runs, resumed.runs):
        assert [r["step"] for r in a.readouts] == [0, 10, 20, 30]
        assert a.readouts == b.readouts
        assert torch.equal(a.model.A, b.model.A)


def test_a_tracker_sees_every_logged_and_evaluated_number():
    seen = []

    class Collect(Tracker):
        def scalar(self, tag, value, step):
            seen.append((tag, step, value))

    cfg = TrainConfig(steps=12, batch_size=16, eval_batch=32, eval_every=6, log_every=4)
    fitted = fit(SPEC, law, cfg, [0, 1], callbacks=[Collect()], quiet=True)
    for run in fitted.runs:
        losses = [(step, v) for tag, step, v in seen if tag == f"seed{run.seed}/loss"]
        assert losses == [(r["step"], r["loss"]) for r in run.history.rows]
        evals = [(step, v) for tag, step, v in seen if tag == f"seed{run.seed}/eval_loss"]
        assert evals == [(e["step"], e["eval_loss"]) for e in run.history.evals]


def test_an_explosion_is_caught_before_it_overflows():
    """#18 item 9: SGD at lr 1 blows up; the run stops naming the explosion while every logged loss is finite
    and below the bound, long before the loss overflows."""
    cfg = TrainConfig(steps=200, batch_size=32, eval_batch=64, optimizer="sgd", lr=3.0, log_every=1,
                      explode_factor=100.0)  # fmt: skip
    streams = Streams(0)
    trainer = Trainer(SPEC.build(streams.generator("init")), law(streams), cfg, streams, quiet=True)
    with pytest.raises(TrainingDiverged, match="exploded") as err:
        trainer.run()
    rows = trainer.history.rows
    assert err.value.step < 200 and all(math.isfinite(r["loss"]) for r in rows)
    bound = 100.0 * max(min(r["loss"] for r in rows), trainer.zero_losses[0])
    assert max(r["loss"] for r in rows) <= bound


def test_rollback_in_a_seed_batch_leaves_each_seed_where_its_own_run_would_be():
    """Seed 1's batch at step 7 is poisoned: with rollback every seed returns to the last healthy read-back, seed
    1 continues at half its learning rate, seed 0 replays its steps unchanged: it ends bitwise where it ends in
    an unpoisoned batch, and seed 1 where its own one-seed run, poisoned the same way, ends (to the rounding of
    the batched kernels)."""
    cfg = TrainConfig(steps=20, batch_size=16, eval_batch=32, eval_every=10, log_every=5, on_divergence="rollback")

    def make(seeds, poison):
        streams = [Streams(s) for s in seeds]
        dists = [Poisoned(PROMPT, generator=st.generator("rotation")) for st in streams]
        models = [LinearSelfAttention(3, LSAConfig(layers=2, init_std=0.1), generator=st.generator("init"))
                  for st in streams]  # fmt: skip
        trainer = Trainer(models, dists, cfg, streams, quiet=True)
        for s, d in zip(seeds, dists):
            d.owner, d.at = trainer, (7 if s == poison else -1)
        return trainer

    both = make([0, 1], poison=1)
    both.run()
    assert both.rollbacks == [0, 1] and both.base_lrs == [[0.01], [0.005]]
    assert both.histories[1].events[0]["rolled_back_to"] == 5 and not both.histories[0].events
    clean = make([0, 1], poison=None)
    clean.run()
    assert torch.equal(clean.models[0].A, both.models[0].A) and clean.histories[0].rows == both.histories[0].rows
    assert not torch.allclose(clean.models[1].A, both.models[1].A, rtol=1e-3)
    alone = make([1], poison=1)
    alone.run()
    assert alone.rollbacks == [1] and alone.history.events == both.histories[1].events
    assert torch.allclose(alone.model.A, both.models[1].A, rtol=1e-5, atol=1e-7)
    for a, b in zip(alone.history.rows, both.histories[1].rows, strict=True):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_evaluation_comes_first_and_the_checkpoint_last_at_a_read_back():
    """Read-backs at the log steps (2, 4, 6) and the steps a callback is due (evaluation and checkpoint at 3, 6):
    the held-out losses reach every callback before their on_step, and the checkpoint saves after all of them."""
    order = []

    class Spy(Callback):
        name = "spy"

        def on_eval(self, trainer, losses):
            order.append(("eval", trainer.step))

        def on_step(self, trainer):
            order.append(("step", trainer.step))

    cfg = TrainConfig(steps=6, batch_size=16, eval_batch=32, eval_every=3, log_every=2)
    streams = Streams(0)
    t = Trainer(SPEC.build(streams.generator("init")), law(streams), cfg, streams, quiet=True, callbacks=[Spy()])
    t.run(on_checkpoint=lambda tr: order.append(("save", tr.step)), checkpoint_every=3)
    assert order == [("step", 2), ("eval", 3), ("step", 3), ("save", 3), ("step", 4), ("eval", 6), ("step", 6),
                     ("save", 6)]  # fmt: skip
    assert [e["step"] for e in t.history.evals] == [3, 6]


def test_divergence_and_evaluation_given_as_callbacks_replace_the_configs():
    """The config says stop on divergence and evaluate every 100 steps; the callbacks given roll back (lowering
    the learning rate by their factor) and evaluate every 4 steps (and at the last)."""
    cfg = TrainConfig(steps=10, batch_size=16, eval_batch=32, eval_every=100, log_every=5, lr=1e-2)
    streams = Streams(0)
    dist = Poisoned(PROMPT, generator=streams.generator("rotation"))
    callbacks = [Divergence("rollback", max_rollbacks=1, lr_factor=0.25), Evaluate(4)]
    t = Trainer(SPEC.build(streams.generator("init")), dist, cfg, streams, quiet=True, callbacks=callbacks)
    dist.owner, dist.at = t, 2  # the batch of step 3 is all-NaN, found at the read-back of step 5
    t.run()
    (event,) = t.history.events
    assert event["event"] == "rollback" and event["diverged_at"] == 3 and event["rolled_back_to"] == 0
    assert event["base_lr"] == pytest.approx(1e-2 * 0.25)
    assert [e["step"] for e in t.history.evals] == [4, 8, 10] and t.step == 10
    with pytest.raises(ValueError, match="'stop' or 'rollback'"):
        Divergence("ignore")


def test_a_seed_batch_plateaus_only_when_every_seed_has():
    """Seed 0 stops improving at once, seed 1 keeps improving: no finish until seed 1 too has waited
    ``patience`` evaluations (docs/training.md: a seed batch trains on until its last seed plateaus)."""

    class Stub:
        step, cfg, reasons = 5, TrainConfig(steps=100), []

        def finish(self, reason):
            self.reasons.append(reason)

    rule, trainer = Plateau(patience=2, tol=0.0), Stub()
    for losses in ([1.0, 1.0], [1.0, 0.5], [1.0, 0.4]):
        rule.on_eval(trainer, losses)
    assert rule.waited == [2, 0] and trainer.reasons == []  # seed 0 has plateaued, seed 1 has not
    for losses in ([1.0, 0.4], [1.0, 0.4]):
        rule.on_eval(trainer, losses)
    assert rule.waited == [4, 2] and len(trainer.reasons) == 1 and trainer.reasons[0].startswith("plateau")


def test_a_trained_model_gets_a_model_file_of_kilobytes_that_load_model_rebuilds(tmp_path):
    """#13 item 10: every trained seed gets ``models/{tag}-s{seed}.pt`` (config, spec, weights, the run's summary;
    no optimizer state or step rows), which loads with ``weights_only`` and rebuilds the trained model exactly;
    a resume that finds the models trained, or ``experiments report`` (:func:`export_models`, only from
    checkpoints of the run's own config), writes it again where it is missing; a seed batch's checkpoint can not
    be exported as one model."""
    from experiments.rundir import export_models
    from icl.runio import CheckpointError
    from icl.training import checkpoint
    from learned_optimizers import load_model

    cfg = TrainConfig(steps=40, batch_size=16, eval_batch=32, eval_every=10, log_every=5)
    store = RunStore(tmp_path / "checkpoints", "t", QuickstartConfig(), models=tmp_path / "models")
    fitted = fit(SPEC, law, cfg, [0, 1], store=store, tag="lsa", quiet=True)
    for run in fitted.runs:
        path = tmp_path / "models" / f"lsa-s{run.seed}.pt"
        full = tmp_path / "checkpoints" / f"lsa-s{run.seed}.pt"
        assert path.stat().st_size * 4 < full.stat().st_size
        saved = torch.load(path, weights_only=True)
        assert saved["format"] == checkpoint.MODEL_FORMAT and "trainer" not in saved
        assert saved["seeds"] == [run.seed] and saved["summary"]["step"] == 40
        assert saved["summary"]["last_loss"] == run.history.last_loss
        assert saved["summary"]["evals"] == run.history.evals
        model = load_model(path)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), run.model.state_dict().values()))
        again = torch.load(checkpoint.export_checkpoint(full, tmp_path / "again.pt"), weights_only=True)
        assert torch.equal(again["models"][0]["A"], saved["models"][0]["A"]) and again["summary"] == saved["summary"]
    (tmp_path / "models" / "lsa-s0.pt").unlink()  # a run from before model files: `experiments report` writes it
    run_config = {"experiment": "t", "config": QuickstartConfig().with_overrides({"seed": 5}).to_dict()}
    (tmp_path / "config.json").write_text(json.dumps(run_config))
    assert export_models(tmp_path) == []  # the checkpoints are of another config: stale, not exported
    run_config["config"] = QuickstartConfig().to_dict()
    (tmp_path / "config.json").write_text(json.dumps(run_config))
    assert export_models(tmp_path) == [tmp_path / "models" / "lsa-s0.pt"] and export_models(tmp_path) == []
    assert torch.equal(torch.load(tmp_path / "models" / "lsa-s0.pt", weights_only=True)["models"][0]["A"],
                       fitted.runs[0].model.A.detach())  # fmt: skip
    (tmp_path / "models" / "lsa-s1.pt").unlink()
    store.resume = True
    fit(SPEC, law, cfg, [0, 1], store=store, tag="lsa", quiet=True)
    assert torch.equal(torch.load(tmp_path / "models" / "lsa-s1.pt", weights_only=True)["models"][0]["A"],
                       fitted.runs[1].model.A.detach())  # fmt: skip
    store = RunStore(tmp_path / "batch", "t", QuickstartConfig(), stop_after=20)
    with pytest.raises(TrainingInterrupted):
        fit(SPEC, law, cfg, [0, 1], store=store, tag="lsa", quiet=True)
    with pytest.raises(CheckpointError, match="one seed"):
        checkpoint.export_checkpoint(tmp_path / "batch" / "lsa-s0-1-batch.pt", tmp_path / "x.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        checkpoint.export_checkpoint(tmp_path / "bad.pt", tmp_path / "x.pt")
