"""The gd_one_layer study's config and profiles, torch-free so that ``--show-config`` and a bad ``--set`` answer
without loading torch; the study itself is :mod:`experiments.gd_one_layer`, which re-exports every name here."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from experiments.configs.base import StudyConfig
from icl.config import spec
from icl.prompt_config import PromptConfig
from icl.training.config import TrainConfig
from learned_optimizers.configs import LSAConfig


@dataclass(frozen=True)
class GDOneLayerConfig(StudyConfig):
    """The study (defaults = the standard profile).

    Attributes:
        prompt: von Oswald et al.'s law (d = N = 10, x ~ U(−0.5, 0.5), w* ~ N(0, I), no rotation).
        model: one factorised LSA layer (key size d+1), initialised N(0, 0.002²) (their 0.002/K truncated
            normal with K = 1 layer; Adam leaves the saddle at zero within a few hundred steps).
        train: Adam, lr 1e-3, batch 2048, fresh prompts every step, global clipping.
        test_prompts: held-out prompts (the ``test`` stream) for every metric.
        tune_prompts: training-law prompts (the ``tune`` stream) on which η is tuned.
        ood_a: the half-widths a of the out-of-distribution input laws U(−a, a).
        interp_points: points t ∈ [0, 1] of the interpolation curve.
    """

    prompt: PromptConfig = field(
        default_factory=lambda: PromptConfig(d=10, n=10, input_law="uniform", uniform_a=0.5, rotation="identity")
    )
    model: LSAConfig = field(default_factory=lambda: LSAConfig(layers=1, mode="factorised", init_std=0.002))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=3000, batch_size=2048, optimizer="adam", lr=1e-3, clip="global", clip_value=10.0,
            eval_every=250, eval_batch=4096, log_every=100, plateau_patience=4, plateau_tol=1e-3,
        )
    )  # fmt: skip
    test_prompts: int = spec(10_000, ge=2)
    tune_prompts: int = spec(10_000, ge=2)
    ood_a: tuple[float, ...] = spec(tuple(float(a) for a in np.round(np.linspace(0.25, 1.0, 16), 4)), gt=0)
    interp_points: int = spec(11, ge=2)


PROFILES = {
    "quick": {"seeds": (0,), "train.steps": 400, "train.batch_size": 512, "train.lr": 3e-3, "train.eval_batch": 1024,
              "test_prompts": 2000, "tune_prompts": 2000, "ood_a": (0.25, 0.5, 0.75, 1.0), "interp_points": 5},
    "standard": {},
    "paper": {"train.steps": 50_000, "checkpoint_every": 5000},
}  # fmt: skip
