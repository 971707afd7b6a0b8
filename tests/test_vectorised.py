"""Vectorised multi-seed training equals training the seeds one by one with the Trainer."""

import io

import pytest
import torch

from icl.config import ConfigError
from icl.prompts import PromptConfig, PromptDistribution
from icl.seeding import Streams
from icl.train import TrainConfig, Trainer, TrainingDiverged, TrainingInterrupted
from icl.vectorised import SeedBatchTrainer, seed_batch_problem, seed_batchable, train_seeds
from learned_optimizers import build_model

PROMPT = PromptConfig(d=3, n=10)
SEEDS = (0, 1, 5)

VARIANTS = {
    "lsa-sparse": ("lsa", {"layers": 2, "init_std": 0.1}),
    "lsa-full-heads": ("lsa", {"layers": 2, "heads": 2, "mode": "full", "init_std": 0.3}),
    "memformer-cgd": ("memformer", {"attention": {"layers": 2, "mode": "gdpp", "init_std": 0.1}}),
    "gpt": ("gpt", {"layers": 1, "heads": 2, "width": 16, "max_points": 10}),
}


def factories(variant):
    name, cfg = VARIANTS[variant]

    def model_factory(streams):
        return build_model(name, PROMPT.d, cfg, generator=streams.generator("init"))

    def dist_factory(streams):
        return PromptDistribution(PROMPT, generator=streams.generator("rotation"))

    return model_factory, dist_factory


def sequential(variant, cfg, seeds):
    model_factory, dist_factory = factories(variant)
    out = []
    for seed in seeds:
        streams = Streams(seed)
        trainer = Trainer(model_factory(streams), dist_factory(streams), cfg, streams, quiet=True)
        out.append((trainer.model, trainer.run()))
    return out


def comparable(name, p):
    """The GPT's key bias shifts every score of a query by the same amount, to which the softmax is invariant:
    its gradient is exactly zero, so in float32 it is pure rounding noise that Adam normalises into steps of
    size lr, in the sequential run as much as in the batched one. It is left out; the rest must agree."""
    if name.endswith("attn.c_attn.bias"):
        width = p.shape[0] // 3
        return torch.cat([p[:width], p[2 * width :]])
    return p


def assert_same(vec, seq, tol=1e-6, grad_tol=1e-6):
    for (mv, hv), (ms, hs) in zip(vec, seq):
        for (name, pv), (_, ps) in zip(mv.named_parameters(), ms.named_parameters()):
            assert torch.allclose(comparable(name, pv), comparable(name, ps), rtol=tol, atol=tol), name
        assert [r["step"] for r in hv.rows] == [r["step"] for r in hs.rows]
        for rv, rs in zip(hv.rows + hv.evals, hs.rows + hs.evals):
            for key in rv:
                t = grad_tol if key == "grad_norm" else tol
                assert rv[key] == pytest.approx(rs[key], rel=t, abs=t), key


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_seed_batch_equals_sequential_trainer(variant):
    cfg = TrainConfig(steps=50, batch_size=32, lr=1e-2, eval_every=20, eval_batch=64, log_every=10)
    # the GPT's gradient norms see the drift of its (loss-invariant) key bias in the last float32 bits; with 2
    # intra-op threads its batched and per-seed matmuls also reduce in different orders, and Adam turns those
    # rounding differences of small gradients into weight differences up to ~1.3e-6 after 50 steps (measured)
    grad_tol = 1e-5 if variant == "gpt" else 1e-6
    tol = 3e-6 if variant == "gpt" else 1e-6
    vec, seq = train_seeds(*factories(variant), cfg, SEEDS, quiet=True), sequential(variant, cfg, SEEDS)
    assert_same(vec, seq, tol=tol, grad_tol=grad_tol)


@pytest.mark.parametrize("clip", ["global", "per_matrix"])
def test_per_seed_clipping_schedule_resampling_and_weight_decay(clip):
    cfg = TrainConfig(
        steps=50, batch_size=16, optimizer="adamw", weight_decay=0.1, lr=1e-2, clip=clip, clip_value=0.5,
        resample_every=3, schedule="cosine", eval_every=25, eval_batch=32, log_every=7,
    )  # fmt: skip
    vec = train_seeds(*factories("memformer-cgd"), cfg, SEEDS, quiet=True)
    seq = sequential("memformer-cgd", cfg, SEEDS)
    # weights and losses to 1e-6; the gradient norm (a diagnostic) drifts to ~1e-6 relative
    assert_same(vec, seq, grad_tol=2e-6)
    # the clip is active and per seed: the norms differ between seeds and exceed the threshold
    norms = [h.rows[0]["grad_norm"] for _, h in vec]
    assert len(set(norms)) == len(SEEDS) and min(norms) > 0.5


def test_single_seed_and_sgd():
    cfg = TrainConfig(steps=20, batch_size=16, optimizer="sgd", momentum=0.9, lr=1e-2, eval_every=10, eval_batch=16)
    assert_same(train_seeds(*factories("lsa-sparse"), cfg, (3,), quiet=True), sequential("lsa-sparse", cfg, (3,)))


def test_non_elementwise_optimizer_is_refused():
    model_factory, dist_factory = factories("lsa-sparse")
    streams = [Streams(0), Streams(1)]
    cfg = TrainConfig(steps=1, optimizer="fadam")
    with pytest.raises(ConfigError, match="elementwise"):
        SeedBatchTrainer([model_factory(s) for s in streams], [dist_factory(s) for s in streams], cfg, streams)


def _batch(variant, cfg, seeds=SEEDS):
    model_factory, dist_factory = factories(variant)
    streams = [Streams(s) for s in seeds]
    models = [model_factory(s) for s in streams]
    return SeedBatchTrainer(models, [dist_factory(s) for s in streams], cfg, streams, quiet=True)


RESUME_CFG = TrainConfig(
    steps=20, batch_size=16, optimizer="adamw", weight_decay=0.1, lr=1e-2, clip="per_matrix", clip_value=0.5,
    resample_every=3, schedule="cosine", eval_every=10, eval_batch=32, log_every=4,
)  # fmt: skip


@pytest.mark.parametrize("stop", [7, 9])  # 7: in the middle of a resample block, 9: at its boundary
def test_seed_batch_resumes_exactly(stop):
    """A batch saved at step ``stop`` (through torch.save / weights_only load) and loaded into a freshly built
    batch ends bitwise equal to the uninterrupted run: weights, optimizer state, generators and histories."""
    full = _batch("memformer-cgd", RESUME_CFG)
    full.run()
    first = _batch("memformer-cgd", RESUME_CFG)
    first.run(until=stop)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = _batch("memformer-cgd", RESUME_CFG)
    second.load_state_dict(torch.load(buf, weights_only=True))
    assert second.step == stop
    second.run()
    a, b = full.state_dict(), second.state_dict()
    for name in a["params"]:
        assert torch.equal(a["params"][name], b["params"][name]), name
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["histories"] == b["histories"]
    assert all(torch.equal(x, y) for x, y in zip(a["train_generators_now"], b["train_generators_now"]))


def test_seed_batch_state_of_other_seeds_or_batch_size_is_refused():
    state = _batch("lsa-sparse", RESUME_CFG).state_dict()
    with pytest.raises(ValueError, match="seeds"):
        _batch("lsa-sparse", RESUME_CFG, seeds=(0, 1, 6)).load_state_dict(state)
    first = _batch("lsa-sparse", RESUME_CFG)
    first.run(until=4)  # mid-block: the re-drawn batch must bring each generator to its saved state
    other = _batch("lsa-sparse", RESUME_CFG.replace(batch_size=8))
    with pytest.raises(ValueError, match="saved state"):
        other.load_state_dict(first.state_dict())


def test_seed_state_hands_over_to_a_trainer_that_continues_as_the_sequential_run():
    """Seed s's slice of the batch state (weights, Adam moments, generators) loaded into an ordinary Trainer at
    step 7 (mid-block) and trained on to step 20 equals the sequential Trainer run of that seed."""
    batch = _batch("lsa-full-heads", RESUME_CFG)
    batch.run(until=7)
    seq = sequential("lsa-full-heads", RESUME_CFG, SEEDS)
    model_factory, dist_factory = factories("lsa-full-heads")
    handed = []
    for s, seed in enumerate(SEEDS):
        streams = Streams(seed)
        trainer = Trainer(model_factory(streams), dist_factory(streams), RESUME_CFG, streams, quiet=True)
        trainer.load_state_dict(batch.seed_state_dict(s))
        assert trainer.step == 7
        state = trainer.optimizer.state_dict()["state"]
        assert [st["exp_avg"].shape for st in state.values()] == [p.shape for p in trainer.params]
        handed.append((trainer.model, trainer.run()))
    assert_same(handed, seq, grad_tol=2e-6)


@seed_batchable
def _double(grad):
    return 2 * grad


def test_marked_gradient_hooks_are_carried_and_unmarked_ones_refused():
    model_factory, dist_factory = factories("lsa-sparse")
    cfg = TrainConfig(steps=10, batch_size=16, lr=1e-2, eval_every=10, eval_batch=16)

    def hooked(streams, hook):
        model = model_factory(streams)
        model.A.register_hook(hook)
        return model

    def run_seq(hook):
        out = []
        for seed in SEEDS:
            streams = Streams(seed)
            trainer = Trainer(hooked(streams, hook), dist_factory(streams), cfg, streams, quiet=True)
            out.append((trainer.model, trainer.run()))
        return out

    vec = train_seeds(lambda st: hooked(st, _double), dist_factory, cfg, SEEDS, quiet=True)
    seq = run_seq(_double)
    assert_same(vec, seq)  # the doubled gradient shows in the logged norms of both
    plain = train_seeds(model_factory, dist_factory, cfg, SEEDS, quiet=True)
    assert vec[0][1].rows[0]["grad_norm"] == pytest.approx(2 * plain[0][1].rows[0]["grad_norm"], rel=1e-6)
    streams = [Streams(s) for s in SEEDS]
    models = [hooked(st, lambda g: 2 * g) for st in streams]
    assert "not marked seed_batchable" in seed_batch_problem(models, cfg)
    with pytest.raises(ValueError, match="seed_batchable"):
        SeedBatchTrainer(models, [dist_factory(s) for s in streams], cfg, streams)


def test_what_can_not_be_batched_is_named():
    model_factory, _ = factories("lsa-sparse")
    models = [model_factory(Streams(s)) for s in (0, 1)]
    assert seed_batch_problem(models, TrainConfig()) is None
    assert "rollback" in seed_batch_problem(models, TrainConfig(on_divergence="rollback"))
    assert "elementwise" in seed_batch_problem(models, TrainConfig(optimizer="fadam"))
    other = build_model("lsa", PROMPT.d, {"layers": 3}, generator=Streams(2).generator("init"))
    assert "differ" in seed_batch_problem([models[0], other], TrainConfig())
    models[1].A.requires_grad_(False)
    assert "frozen" in seed_batch_problem(models, TrainConfig())


def test_stop_request_checkpoints_then_raises_and_divergence_names_the_seed():
    batch = _batch("lsa-sparse", RESUME_CFG)
    saved = []

    def on_checkpoint(b):
        saved.append(b.step)
        if b.step == 4:
            b.request_stop("test")

    with pytest.raises(TrainingInterrupted, match="stopped at step 5"):
        batch.run(on_checkpoint=on_checkpoint, checkpoint_every=2)
    assert saved == [2, 4, 5] and all(len(h.rows) == 5 for h in batch.histories)
    bad = _batch("lsa-sparse", RESUME_CFG.replace(lr=1e30, clip="none", optimizer="sgd", weight_decay=None))
    with pytest.raises(TrainingDiverged, match="seed 0"):
        bad.run()


def test_compile_is_read_from_the_train_config():
    """SeedBatchTrainer compiles when TrainConfig.compile says so, unless told otherwise (nothing runs here:
    torch.compile only wraps the function until it is first called)."""
    assert _batch("lsa-sparse", RESUME_CFG.replace(compile=True)).compiled
    assert not _batch("lsa-sparse", RESUME_CFG).compiled
    model_factory, dist_factory = factories("lsa-sparse")
    streams = [Streams(0), Streams(1)]
    batch = SeedBatchTrainer([model_factory(s) for s in streams], [dist_factory(s) for s in streams],
                             RESUME_CFG.replace(compile=True), streams, compile=False)  # fmt: skip
    assert not batch.compiled
