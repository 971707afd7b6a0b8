"""S seeds trained as one stacked run equal the seeds trained one by one (S = 1), for every model kind and
every registered optimizer."""

import io

import pytest
import torch

from icl.optim import OPTIMIZERS
from icl.prompts import PromptConfig, PromptDistribution
from icl.seeding import Streams
from icl.training import TrainConfig, Trainer, TrainingDiverged, TrainingInterrupted, fit
from learned_optimizers import build_model

PROMPT = PromptConfig(d=3, n=10)
SEEDS = (0, 1, 5)

VARIANTS = {
    "lsa-sparse": ("lsa", {"layers": 2, "init_std": 0.1}),
    "lsa-full-heads": ("lsa", {"layers": 2, "heads": 2, "mode": "full", "init_std": 0.3}),
    "memformer-cgd": ("memformer", {"attention": {"layers": 2, "mode": "gdpp", "init_std": 0.1}}),
    "gpt": ("gpt", {"layers": 1, "heads": 2, "width": 16, "max_points": 10}),
}


def train_seeds(model_factory, dist_factory, cfg, seeds, **kw):
    """The seeds trained together: (model, history) per seed."""
    return [(r.model, r.history) for r in fit(model_factory, dist_factory, cfg, seeds, quiet=True, **kw).runs]


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
        out.append((trainer.model, trainer.run()[0]))
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
    vec, seq = train_seeds(*factories(variant), cfg, SEEDS), sequential(variant, cfg, SEEDS)
    assert_same(vec, seq, tol=tol, grad_tol=grad_tol)


def test_prefix_loss_seed_batch_equals_sequential_trainer():
    """GPTs on Garg et al.'s prefix loss, stacked, end where each trained alone ends (float64, so that Adam's
    amplification of the batched kernels' rounding stays far below the tolerance)."""
    cfg = TrainConfig(steps=20, batch_size=16, lr=3e-3, eval_every=10, eval_batch=32, log_every=5, loss="prefix",
                      dtype="float64")  # fmt: skip
    vec, seq = train_seeds(*factories("gpt"), cfg, SEEDS[:2]), sequential("gpt", cfg, SEEDS[:2])
    assert_same(vec, seq, tol=1e-9, grad_tol=1e-9)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_registered_optimizer_batches_exactly(name):
    """Each seed of a stacked run keeps its own optimizer state (one instance over all seeds with a group per
    seed, or one instance per seed for the manifold optimizers, whose sections come from the seed's own
    ``section`` stream): the numbers equal the one-by-one runs'. float64, 15 steps, global clipping on."""
    cfg = TrainConfig(steps=15, batch_size=16, optimizer=name, lr=3e-3, eval_every=5, eval_batch=32, log_every=5,
                      clip="global", clip_value=0.5, dtype="float64")  # fmt: skip
    vec, seq = train_seeds(*factories("lsa-full-heads"), cfg, SEEDS[:2]), sequential("lsa-full-heads", cfg, SEEDS[:2])
    assert_same(vec, seq, tol=1e-9, grad_tol=1e-9)
    start = build_model("lsa", 3, VARIANTS["lsa-full-heads"][1], generator=Streams(SEEDS[0]).generator("init"))
    assert not torch.equal(next(vec[0][0].parameters()), next(start.parameters()))  # it trained


@pytest.mark.parametrize("clip", ["global", "per_matrix"])
def test_per_seed_clipping_schedule_resampling_and_weight_decay(clip):
    cfg = TrainConfig(
        steps=50, batch_size=16, optimizer="adamw", weight_decay=0.1, lr=1e-2, clip=clip, clip_value=0.5,
        resample_every=3, schedule="cosine", eval_every=25, eval_batch=32, log_every=7,
    )  # fmt: skip
    vec = train_seeds(*factories("memformer-cgd"), cfg, SEEDS)
    seq = sequential("memformer-cgd", cfg, SEEDS)
    # weights and losses to 1e-6; the gradient norm (a diagnostic) drifts to ~1e-6 relative
    assert_same(vec, seq, grad_tol=2e-6)
    # the clip is active and per seed: the norms differ between seeds and exceed the threshold
    norms = [h.rows[0]["grad_norm"] for _, h in vec]
    assert len(set(norms)) == len(SEEDS) and min(norms) > 0.5


def test_single_seed_and_sgd():
    cfg = TrainConfig(steps=20, batch_size=16, optimizer="sgd", momentum=0.9, lr=1e-2, eval_every=10, eval_batch=16)
    assert_same(train_seeds(*factories("lsa-sparse"), cfg, (3,)), sequential("lsa-sparse", cfg, (3,)))


def _batch(variant, cfg, seeds=SEEDS):
    model_factory, dist_factory = factories(variant)
    streams = [Streams(s) for s in seeds]
    models = [model_factory(s) for s in streams]
    return Trainer(models, [dist_factory(s) for s in streams], cfg, streams, quiet=True)


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
    for ma, mb in zip(a["models"], b["models"]):
        assert all(torch.equal(ma[k], mb[k]) for k in ma)
    for sa, sb in zip(a["optimizers"][0]["state"].values(), b["optimizers"][0]["state"].values()):
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
        assert [st["exp_avg"].shape for st in state.values()] == [p.shape for p in trainer.params[0]]
        handed.append((trainer.model, trainer.run()[0]))
    assert_same(handed, seq, grad_tol=2e-6)


def test_gradient_hooks_apply_per_seed_and_what_can_not_be_stacked_is_named():
    """Each seed's weights stay its own model's parameters, so a gradient hook acts on that seed's gradient as
    in a one-seed run; models of different architectures, or with module hooks, are refused."""
    model_factory, dist_factory = factories("lsa-sparse")
    cfg = TrainConfig(steps=10, batch_size=16, lr=1e-2, eval_every=10, eval_batch=16)

    def hooked(streams):
        model = model_factory(streams)
        model.A.register_hook(lambda g: 2 * g)
        return model

    def run_seq():
        out = []
        for seed in SEEDS:
            streams = Streams(seed)
            trainer = Trainer(hooked(streams), dist_factory(streams), cfg, streams, quiet=True)
            out.append((trainer.model, trainer.run()[0]))
        return out

    vec = train_seeds(hooked, dist_factory, cfg, SEEDS)
    assert_same(vec, run_seq())  # the doubled gradient shows in the logged norms of both
    plain = train_seeds(model_factory, dist_factory, cfg, SEEDS)
    assert vec[0][1].rows[0]["grad_norm"] == pytest.approx(2 * plain[0][1].rows[0]["grad_norm"], rel=1e-6)
    streams = [Streams(s) for s in (0, 1)]
    dists = [dist_factory(s) for s in streams]
    other = build_model("lsa", PROMPT.d, {"layers": 3}, generator=streams[1].generator("init"))
    with pytest.raises(ValueError, match="differ"):
        Trainer([model_factory(streams[0]), other], dists, cfg, streams)
    models = [model_factory(s) for s in streams]
    models[1].register_forward_hook(lambda *a: None)
    with pytest.raises(ValueError, match="hooks"):
        Trainer(models, dists, cfg, streams)


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
    """The Trainer compiles when TrainConfig.compile says so, unless told otherwise (nothing runs here:
    torch.compile only wraps the function until it is first called)."""
    assert _batch("lsa-sparse", RESUME_CFG.replace(compile=True)).compiled
    assert not _batch("lsa-sparse", RESUME_CFG).compiled
    model_factory, dist_factory = factories("lsa-sparse")
    streams = [Streams(0), Streams(1)]
    batch = Trainer([model_factory(s) for s in streams], [dist_factory(s) for s in streams],
                    RESUME_CFG.replace(compile=True), streams, compile=False)  # fmt: skip
    assert not batch.compiled


LAWS = {
    "isotropic": PromptConfig(d=3, n=10),
    "inverse-sigma-fixed-noise": PromptConfig(d=4, n=7, eigenvalues=(4.0, 2.0, 1.0, 0.5), w_prior="inverse_sigma",
                                              noise="fixed", sigma=0.5),
    "uniform-inputs-uniform-noise": PromptConfig(d=2, n=5, input_law="uniform", noise="uniform", sigma_max=1.0),
    "categorical-noise": PromptConfig(d=5, n=20, eigenvalues=(1.0, 2.0, 3.0, 4.0, 5.0), noise="categorical"),
}  # fmt: skip


@pytest.mark.parametrize("law", list(LAWS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 7, 300])
def test_seed_tokens_equal_each_seeds_own_batch_bit_for_bit(law, dtype, batch):
    """The S seeds' token array is each seed's own PromptDistribution.sample, bit for bit, and leaves every
    generator where sampling alone leaves it (so a seed's draws do not depend on the other seeds)."""
    from icl.prompts import sample_tokens

    streams = [Streams(s) for s in SEEDS]
    dists = [PromptDistribution(LAWS[law], generator=st.generator("rotation"), dtype=dtype) for st in streams]
    gens = [st.generator("train") for st in streams]
    Z, y = sample_tokens(dists, batch, gens)
    own = [st.generator("train") for st in streams]
    batches = [d.sample(batch, g) for d, g in zip(dists, own)]
    assert Z.dtype == dtype and Z.shape == (len(SEEDS), batch, LAWS[law].n + 1, LAWS[law].d + 1)
    for s, b in enumerate(batches):
        assert torch.equal(Z[s], b.Z()) and torch.equal(y[s], b.y_query)
        assert torch.equal(gens[s].get_state(), own[s].get_state())


def test_seed_laws_that_can_not_share_a_token_array_are_named():
    from icl.prompts import sample_tokens

    streams = [Streams(s) for s in SEEDS[:2]]
    noisy = PromptConfig(d=3, n=10, noise="fixed", sigma=0.1)
    dists = [PromptDistribution(law, generator=st.generator("rotation")) for law, st in zip((PROMPT, noisy), streams)]
    with pytest.raises(ValueError, match="label noise"):
        sample_tokens(dists, 4, [st.generator("train") for st in streams])
    models = [build_model("lsa", 3, {"layers": 1}, generator=st.generator("init")) for st in streams]
    with pytest.raises(ValueError, match="differ in n, d or label noise.*train the seeds one by one"):
        Trainer(models, dists, TrainConfig(steps=1), streams, quiet=True)
