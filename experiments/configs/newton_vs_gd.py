"""The newton_vs_gd study's config and profiles, torch-free so that ``--show-config`` and a bad ``--set`` answer
without loading torch; the study itself is :mod:`experiments.newton_vs_gd`, which re-exports every name here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from experiments.configs.base import StudyConfig
from icl.config import ConfigError, spec
from icl.prompt_config import PromptConfig
from icl.training.config import TrainConfig
from learned_optimizers.configs import GPTConfig, LSAConfig

MODELS = ("lsa_full", "gpt")


@dataclass(frozen=True)
class NewtonVsGDConfig(StudyConfig):
    """Layer-by-step comparison of deeper models with iterative Newton and GD (defaults: standard).

    Attributes (beyond the models' and trainings' configs):
        grow: train the LSA depth by depth (depth ℓ starts from the trained depth ℓ−1 with its last layer
            repeated), each depth until the plateau rule of ``lsa_train`` stops it (``lsa_train.steps`` is the cap
            of each depth); off, the L-layer LSA trains from its random initialisation.
        class_tolerance: how far (in log test MSE) above its class optimum, tuned GD++ of its depth on the same
            test prompts, a model may end and still count as converged; log 2 = "within 2× in MSE".
        gpt_escape: the GPT's plateau rule (``gpt_train.plateau_patience``, ``plateau_tol``) starts counting only
            once a seed's held-out loss is below ``gpt_escape`` × the zero predictor's on the same prompts: a
            softmax GPT first sits for hundreds of steps on the zero-predictor plateau, which must not stop it.
        tune_prompts: prompts of the ``tune`` stream on which GD's and GD++'s steps are tuned.
        test_prompts: test prompts every test loss and class gap is measured on (cut into ``test_parts``
            disjoint parts for the spread of log MSE across test sets).
    """

    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(d=10, n=20))
    models: tuple[str, ...] = MODELS
    lsa: LSAConfig = field(default_factory=lambda: LSAConfig(layers=4, mode="full", init_std=0.02))
    grow: bool = True
    lsa_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=2400, batch_size=512, lr=1e-2, clip="global", clip_value=1.0, schedule="step", halve_every=400,
            eval_every=50, eval_batch=2048, dtype="float64", plateau_patience=4, plateau_tol=1e-3,
            on_divergence="rollback", explode_factor=1e30,
        )
    )  # fmt: skip
    gpt: GPTConfig = field(default_factory=lambda: GPTConfig(layers=2, heads=4, width=64, max_points=20, init_std=0.1))
    gpt_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=4000, batch_size=128, lr=1e-3, clip="global", clip_value=1.0, schedule="step", halve_every=500,
            eval_every=100, eval_batch=1024, loss="prefix", plateau_patience=4, plateau_tol=1e-2,
        )
    )  # fmt: skip
    gpt_escape: float = spec(0.5, gt=0, le=1)
    class_tolerance: float = spec(math.log(2), gt=0)
    compare_prompts: int = spec(256, ge=2)
    probe_prompts: int = spec(4096, ge=16)
    tune_prompts: int = spec(2048, ge=16)
    test_prompts: int = spec(10_000, ge=10)
    test_parts: int = spec(5, ge=1)
    newton_steps: int = spec(24, ge=1)
    gd_max_steps: int = spec(4096, ge=1)
    gd_tune_steps: int = spec(100, ge=1)

    def check(self) -> None:
        super().check()
        bad = [m for m in self.models if m not in MODELS]
        if bad:
            raise ConfigError(f"models {bad} are not among {', '.join(MODELS)}")
        if self.lsa.mode != "full":
            raise ConfigError("lsa.mode must be 'full' (the study's unconstrained LSA)")
        if self.lsa.tied and self.grow:
            raise ConfigError("grow needs untied layers (lsa.tied = false)")
        if self.gpt.max_points < self.prompt.n:
            raise ConfigError(f"gpt.max_points = {self.gpt.max_points} < prompt.n = {self.prompt.n}")
        if self.compare_prompts > self.test_prompts:
            raise ConfigError(f"compare_prompts = {self.compare_prompts} > test_prompts = {self.test_prompts} (the "
                              "comparison prompts are the first test prompts)")  # fmt: skip
        if self.test_parts > self.test_prompts:
            raise ConfigError(f"test_parts = {self.test_parts} > test_prompts = {self.test_prompts}")


PROFILES = {
    "quick": {"seeds": (0,), "lsa.layers": 3, "lsa_train.steps": 150, "lsa_train.batch_size": 256,
              "lsa_train.eval_batch": 512, "lsa_train.eval_every": 25, "gpt.layers": 3, "gpt.width": 32,
              "gpt_train.steps": 60, "gpt_train.batch_size": 32, "gpt_train.eval_batch": 256,
              "gpt_train.eval_every": 30, "gpt_train.halve_every": 30, "compare_prompts": 48, "probe_prompts": 512,
              "test_prompts": 1000, "tune_prompts": 512, "newton_steps": 12, "gd_max_steps": 512,
              "checkpoint_every": 200},
    "standard": {},
    "paper": {"seeds": (0, 1, 2), "lsa.layers": 6, "lsa_train.steps": 5000, "lsa_train.batch_size": 2048,
              "lsa_train.halve_every": 1000, "gpt.layers": 6, "gpt.width": 128, "gpt.heads": 8,
              "gpt_train.steps": 50000, "gpt_train.batch_size": 64, "gpt_train.lr": 3e-4,
              "gpt_train.halve_every": 10000, "gpt_train.eval_every": 500,
              "gpt_train.plateau_patience": 8, "compare_prompts": 1024, "probe_prompts": 16384,
              "test_prompts": 100_000, "tune_prompts": 8192, "checkpoint_every": 5000},
}  # fmt: skip
