"""Weights declared on a manifold: blocks start and stay on it, optimizers get them as manifold groups, the CLI
trains any LSA or Memformer with Stiefel weights through ``--set train.stiefel``, and the checkpoint rebuilds
the constrained model alone."""

import pytest
import torch

from experiments.cli import main
from icl.config import ConfigError
from icl.optim.manifolds import get_manifold
from icl.prompts import PromptConfig, PromptDistribution
from icl.training import ModelSpec, TrainConfig, fit
from learned_optimizers import build_model, load_model
from learned_optimizers.constraints import apply_constraints, manifold_of, param_groups

STIEFEL = get_manifold("stiefel")


def violation(model, names):
    on = [p for n, p in model.named_parameters() if manifold_of(model, n) in names]
    return max(STIEFEL.check(p.detach().double()) for p in on)


def test_apply_constraints_splits_projects_and_groups():
    model = build_model("lsa", 3, {"layers": 2, "heads": 2, "mode": "factorised", "key_size": 3},
                        torch.Generator().manual_seed(0))  # fmt: skip
    before = model.W_V.detach().clone()
    apply_constraints(model, {"W_K": "stiefel"}, torch.Generator().manual_seed(1))
    blocks = list(model.W_K.blocks)
    assert len(blocks) == 4 and all(p.shape == (4, 3) for p in blocks)  # Wᵀ: tall (p, k) blocks
    assert max(STIEFEL.check(p.detach().double()) for p in blocks) < 1e-6
    assert torch.equal(model.W_V.full(), before)  # the others are split, values kept
    groups = param_groups(model)
    assert groups[0]["manifold"] == "stiefel" and groups[0]["params"] == blocks
    assert len(groups) == 2 and len(groups[1]["params"]) == 3 * 4
    assert param_groups(model, manifold_aware=False)[0]["params"][:4] == blocks
    with pytest.raises(ValueError, match="no such weight"):
        apply_constraints(build_model("lsa", 3, {"layers": 1, "mode": "factorised"}), {"W_X": "stiefel"})
    with pytest.raises(ValueError, match="k <= p"):
        apply_constraints(build_model("lsa", 3, {"layers": 1, "mode": "factorised", "key_size": 3}), {"W_P": "stiefel"})


def test_stiefel_needs_a_manifold_optimizer():
    with pytest.raises(ConfigError, match="stiefel = W_K needs a manifold optimizer"):
        TrainConfig(stiefel=("W_K",))


@pytest.mark.parametrize("optimizer", ["manifold_adam", "riemannian_adam"])
def test_memformer_with_stiefel_attention_trains_on_the_manifold_seeds_together(optimizer):
    cfg = TrainConfig(steps=30, batch_size=64, eval_batch=64, eval_every=15, optimizer=optimizer, lr=0.02,
                      stiefel=("attention.W_K", "attention.W_Q"))  # fmt: skip
    spec = ModelSpec("memformer", 3, {"attention": {"layers": 2, "mode": "factorised", "key_size": 3}})
    law = lambda st: PromptDistribution(PromptConfig(d=3, n=6), generator=st.generator("rotation"))  # noqa: E731
    fitted = fit(spec, law, cfg, [0, 1], quiet=True)
    for run in fitted.runs:
        assert run.model.constraints == {"attention.W_K": "stiefel", "attention.W_Q": "stiefel"}
        assert violation(run.model, ("stiefel",)) < 1e-5
        assert run.history.evals[-1]["eval_loss"] < run.history.evals[0]["eval_loss"] * 1.5  # it trained, finitely
    start = spec.build(torch.Generator().manual_seed(0))
    assert not torch.equal(fitted.runs[0].model.attention.W_V.full(), start.attention.W_V)


def test_cli_trains_an_lsa_with_stiefel_weights_and_the_checkpoint_rebuilds_it(tmp_path):
    out = tmp_path / "run"
    args = ["run", "quickstart", "--out", str(out), "--quiet", "--set", "model.mode=factorised", "--set",
            "model.layers=2", "--set", "train.optimizer=manifold_adam", "--set", "train.stiefel=W_K,W_Q", "--set",
            "train.steps=20", "--set", "train.batch_size=64", "--set", "train.eval_batch=64", "--set",
            "test_prompts=200"]  # fmt: skip
    assert main(args) == 0
    model = load_model(out / "checkpoint.pt")
    assert model.constraints == {"W_K": "stiefel", "W_Q": "stiefel"}
    assert violation(model, ("stiefel",)) < 1e-4
    Z = PromptDistribution(PromptConfig(d=5, n=20), generator=torch.Generator().manual_seed(0)).sample(
        8, torch.Generator().manual_seed(1)).Z()  # fmt: skip
    assert torch.isfinite(model(Z)).all()
