"""manifold_adam: the quick profile (further reduced) writes every artifact, keeps W_K, W_Q on the Stiefel
manifold and re-renders."""

import json

import torch

from experiments.cli import main
from experiments.manifold_adam_study import ManifoldAdamConfig, model_spec, stiefel_blocks, violation
from experiments.reporting import load_run
from icl.seeding import Streams
from learned_optimizers.constraints import param_groups

SMALL = ["--set", "train.steps=30", "--set", "train.eval_every=10", "--set", "train.batch_size=64",
         "--set", "train.eval_batch=256", "--set", "test_prompts=500", "--set", "tune_prompts=500",
         "--set", "monitor_every=10"]  # fmt: skip


def test_blocks_start_on_the_manifold_and_match_the_model():
    cfg = ManifoldAdamConfig()
    model = model_spec(cfg).build(Streams(0).generator("init", "cpu"))
    stiefel = stiefel_blocks(model)
    groups = param_groups(model)
    assert [g.get("manifold") for g in groups] == ["stiefel", None]  # the constrained blocks in their own group
    euclid = groups[1]["params"]
    assert len(stiefel) == 2 * cfg.model.layers and all(p.shape == (6, 5) for p in stiefel)
    assert violation(stiefel) < 1e-5
    P, Q = model.layer_weights(0)
    WK, WQ = stiefel[0].T, stiefel[cfg.model.layers].T  # layer 0, head 0 of W_K and of W_Q
    assert torch.allclose(Q[0], WK.T @ WQ, atol=1e-6)
    assert P.shape == (1, 6, 6) and len(euclid) == 2 * cfg.model.layers


def test_manifold_adam_quick(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "manifold_adam", "--profile", "quick", "--out", str(out), "--quiet", *SMALL]) == 0
    for name in ("config.json", "results.csv", "summary.json", "report.md"):
        assert (out / name).is_file(), name
    for stem in ("loss_vs_steps", "loss_vs_time", "constraint_violation"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000
        assert (out / "figures" / f"{stem}.pdf").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["selected"]) == {"adam_unconstrained", "manifold_adam", "projected_adam", "manifold_sgd",
                                        "manifold_momentum"}  # fmt: skip
    for name in ("manifold_adam", "projected_adam", "manifold_sgd", "manifold_momentum"):
        assert summary["selected"][name]["max_violation"] < 1e-4, name
    _, rows = load_run(out)
    assert any(r["metric"] == "violation" for r in rows)
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "ManifoldAdam" in (out / "report.md").read_text()
