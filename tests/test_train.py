"""The training loop: schedules, clipping, resampling, determinism, the outer-optimizer registry and Garg et al.'s
prefix loss."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from icl.config import ConfigError
from icl.prompts import PromptConfig, PromptDistribution
from icl.seeding import Streams
from icl.training import OptimizerSpec, TrainConfig, Trainer, clip_per_matrix, lr_factor, prefix_mse, query_mse
from learned_optimizers import LinearSelfAttention, LSAConfig
from learned_optimizers.gpt import GPT, GPTConfig


def make_trainer(seed=0, **train):
    s = Streams(seed)
    dist = PromptDistribution(PromptConfig(d=3, n=10), generator=s.generator("rotation"))
    model = LinearSelfAttention(3, LSAConfig(layers=2), generator=s.generator("init"))
    cfg = TrainConfig(**{"steps": 40, "batch_size": 32, "eval_batch": 64, "eval_every": 20, "log_every": 7, **train})
    return Trainer(model, dist, cfg, s, quiet=True)


def test_schedules():
    cfg = TrainConfig(steps=100, schedule="step", halve_every=30)
    assert [lr_factor(cfg, s) for s in (0, 29, 30, 59, 60, 90)] == [1, 1, 0.5, 0.5, 0.25, 0.125]
    cfg = TrainConfig(steps=100, schedule="cosine")
    assert lr_factor(cfg, 0) == 1 and abs(lr_factor(cfg, 50) - 0.5) < 1e-12 and lr_factor(cfg, 100) < 1e-12
    assert lr_factor(TrainConfig(), 12345) == 1


def test_lr_follows_schedule_in_log():
    t = make_trainer(schedule="step", halve_every=10, lr=0.01)
    t.run()
    lrs = {int(r["step"]): r["lr"] for r in t.history.rows}
    assert lrs[1] == 0.01 and lrs[10] == 0.01 and lrs[11] == 0.005 and lrs[40] == 0.00125


def test_per_matrix_clipping_clips_each_block():
    p = torch.nn.Parameter(torch.zeros(2, 3, 4, 4))
    p.grad = torch.randn(2, 3, 4, 4) * 10
    p.grad[0, 0] = 0.01  # a small block stays as it is
    small = p.grad[0, 0].clone()
    clip_per_matrix(0.5)([[p.grad]])
    norms = torch.linalg.matrix_norm(p.grad.reshape(-1, 4, 4))
    assert torch.all(norms <= 0.5 + 1e-6)
    assert torch.allclose(norms[1:], torch.full_like(norms[1:], 0.5))
    assert torch.equal(p.grad[0, 0], small)


def test_global_clipping_and_grad_norm_logged():
    t = make_trainer(clip="global", clip_value=1e-3, lr=1.0, optimizer="sgd")
    before = t.model.A.detach().clone()
    t.run(until=1)
    # one SGD step with lr 1 moves the weights by exactly the clipped gradient (norm 1e-3)
    assert abs((t.model.A.detach() - before).norm().item() - 1e-3) < 1e-6
    assert t.history.rows[0]["grad_norm"] > 1e-3


def test_resample_every_reuses_the_batch():
    t = make_trainer(resample_every=5, optimizer="sgd", lr=1e-30)
    t.run(until=10)
    losses = [r["loss"] for r in t.history.rows]
    # lr 1e-30 leaves float32 weights unchanged: the loss only changes when the batch changes
    assert len(set(losses[:5])) == 1 and len(set(losses[5:10])) == 1 and losses[0] != losses[5]


def test_same_seed_same_run_and_loss_decreases():
    a, b, c = make_trainer(0), make_trainer(0), make_trainer(1)
    for t in (a, b, c):
        t.run()
    assert torch.equal(a.model.A, b.model.A) and a.history.rows == b.history.rows
    assert not torch.equal(a.model.A, c.model.A)
    assert a.history.evals[-1]["eval_loss"] < a.history.evals[0]["eval_loss"] or a.history.evals[0]["step"] == 20
    assert [e["step"] for e in a.history.evals] == [20, 40]
    first = sum(r["loss"] for r in a.history.rows[:5])
    last = sum(r["loss"] for r in a.history.rows[-5:])
    assert last < first


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "fadam", "rf_rmsprop", "rf_adamw", "manifold_adam"])
def test_any_registered_outer_optimizer_trains(name):
    t = make_trainer(optimizer=name, lr=1e-2 if name != "sgd" else 1e-3, steps=60)
    t.run()
    assert all(math.isfinite(r["loss"]) for r in t.history.rows)
    assert type(t.optimizer).__name__.lower().replace("_", "").startswith(name.replace("_", "")[:4])


def test_unset_hyperparameters_keep_optimizer_defaults():
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt = OptimizerSpec.from_config(TrainConfig(optimizer="fadam")).build([[{"params": p}]], [Streams(0)])[0]
    assert opt.param_groups[0]["weight_decay"] == 0.1  # FAdam's published default, not overridden by 0
    with pytest.raises(ConfigError, match="momentum is set but optimizer 'adam' takes no momentum"):
        TrainConfig(optimizer="adam", momentum=0.9)
    with pytest.raises(ConfigError, match="betas must have 2 entries"):
        TrainConfig(betas=(0.9,))


def test_any_torch_optimizer_instance_is_accepted():
    s = Streams(0)
    dist = PromptDistribution(PromptConfig(d=2, n=5), generator=s.generator("rotation"))
    model = LinearSelfAttention(2, LSAConfig())
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    t = Trainer(model, dist, TrainConfig(steps=5, batch_size=8, eval_batch=8), s, optimizer=opt, quiet=True)
    t.run()
    assert t.optimizer is opt and t.step == 5


def test_compiled_training_equals_eager():
    """train.compile = True runs the loss through torch.compile (inductor fuses the forward and backward, so
    the sums may be taken in another order): after 5 steps the weights and logged losses agree with the eager
    run to float32 rounding. Measured (2-core CPU, one thread): 19 s with a cold inductor cache, 6 s warm."""
    eager = make_trainer(steps=5, log_every=1, eval_every=5)
    compiled = make_trainer(steps=5, log_every=1, eval_every=5, compile=True)
    assert compiled.compiled and not eager.compiled
    eager.run()
    compiled.run()
    assert torch.allclose(compiled.model.A, eager.model.A, rtol=1e-6, atol=1e-7)
    assert not torch.equal(compiled.model.A, make_trainer().model.A)  # it trained
    for a, b in zip(compiled.history.rows + compiled.history.evals, eager.history.rows + eager.history.evals):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key


# -- the prefix loss (Garg et al.) ------------------------------------------------------------------------------


def make_gpt_trainer(seed=0, **train):
    s = Streams(seed)
    dist = PromptDistribution(PromptConfig(d=3, n=6), generator=s.generator("rotation"))
    model = GPT(3, GPTConfig(layers=2, heads=2, width=8, max_points=6, init_std=0.3), generator=s.generator("init"))
    kw = {"steps": 12, "batch_size": 8, "eval_batch": 16, "eval_every": 6, "log_every": 5, "loss": "prefix"}
    return Trainer(model, dist, TrainConfig(**{**kw, **train}), s, quiet=True)


def test_prefix_loss_is_the_mean_of_per_prefix_squared_errors():
    """The training loss on the first batch equals, in float64, the mean over prompts and the n+1 prefixes of
    (prediction for x_{i+1} from the first i pairs − y_{i+1})², each prediction from its own forward pass on the
    truncated prompt (x_1, y_1, …, x_i, y_i, x_{i+1}); step 1 logs it (read back in float32)."""
    t = make_gpt_trainer(dtype="float64", optimizer="sgd", lr=1e-3)
    batch = t.dist.sample(8, Streams(0).generator("train"))  # the batch step 1 draws
    X = torch.cat([batch.X, batch.x_query[:, None]], dim=1)  # x_1 … x_n, x_q
    Y = torch.cat([batch.y, batch.y_query[:, None]], dim=1)  # y_1 … y_n, y_q
    errors = []
    with torch.no_grad():
        for i in range(batch.n + 1):  # prefix i: i pairs, predict at x_{i+1}
            Z = torch.cat([torch.cat([X[:, :i], Y[:, :i, None]], dim=-1), F.pad(X[:, i : i + 1], (0, 1))], dim=1)
            errors.append((t.model(Z, check=False) - Y[:, i]).square().numpy())
        oracle = float(np.mean(np.stack(errors)))
        assert float(t.loss(batch.Z(), batch.y_query)) == pytest.approx(oracle, rel=1e-12)
    assert abs(oracle - float(np.mean(errors[-1]))) > 1e-3  # the query loss alone would not pass
    t.run(until=1)
    assert t.history.rows[0]["loss"] == pytest.approx(oracle, rel=1e-6)
    # the held-out evaluation stays the query MSE
    with torch.no_grad():
        assert t.evaluate() == pytest.approx([float(query_mse(t.model(t.Z_val[0]), t.y_val[0]))], rel=1e-12)


def test_prefix_mse_formula():
    pred = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    y_query = torch.tensor([5.0, -1.0], dtype=torch.float64)
    # squared errors: [0, 4, 4] and [1, 4, 1]; mean 14/6
    assert float(prefix_mse(pred, y, y_query)) == pytest.approx(14 / 6, rel=1e-15)


def test_prefix_loss_refused_without_prefix_predictions():
    s = Streams(0)
    dist = PromptDistribution(PromptConfig(d=3, n=6), generator=s.generator("rotation"))
    lsa = LinearSelfAttention(3, LSAConfig(layers=2), generator=s.generator("init"))
    with pytest.raises(ValueError, match="loss = 'prefix' needs a model that predicts at every prefix.*LinearSelf"):
        Trainer(lsa, dist, TrainConfig(loss="prefix", eval_batch=8), s, quiet=True)
    with pytest.raises(ConfigError, match="loss"):
        TrainConfig(loss="prefixes")


def test_prefix_loss_trains_and_resumes_exactly():
    """The GPT on the prefix loss learns (loss falls) and a run stopped mid-way and continued from its state
    equals the uninterrupted run bitwise."""
    full = make_gpt_trainer(steps=60, lr=3e-3, eval_every=30)
    full.run()
    first = [r["loss"] for r in full.history.rows[:10]]
    last = [r["loss"] for r in full.history.rows[-10:]]
    assert sum(last) < 0.9 * sum(first)
    a = make_gpt_trainer(steps=60, lr=3e-3, eval_every=30)
    a.run(until=23)
    b = make_gpt_trainer(steps=60, lr=3e-3, eval_every=30)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    b.run()
    sa, sb = full.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.history.rows == full.history.rows and b.history.evals == full.history.evals
