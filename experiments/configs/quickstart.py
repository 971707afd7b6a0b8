"""The quickstart study's config and profiles, torch-free so that ``--show-config`` and a bad ``--set`` answer
without loading torch; the study itself is :mod:`experiments.quickstart`, which re-exports every name here."""

from __future__ import annotations

from dataclasses import dataclass, field

from icl.config import Config, spec
from icl.prompt_config import PromptConfig
from icl.tracking import TRACKERS
from icl.training.config import TrainConfig
from learned_optimizers.configs import LSAConfig


@dataclass(frozen=True)
class QuickstartConfig(Config):
    """The quickstart study (defaults: the issue's setting, about a minute on 2 CPU cores)."""

    seed: int = spec(0, ge=0)
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(d=5, n=20))
    model: LSAConfig = field(default_factory=lambda: LSAConfig(layers=1, mode="sparse", init_std=0.01))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=3000, batch_size=2048, lr=0.01, weight_decay=0.0, schedule="cosine", eval_every=250, log_every=50
        )
    )
    test_prompts: int = spec(100_000, ge=2)
    checkpoint_every: int = spec(1000, ge=1)
    track: str = spec("none", choices=TRACKERS)  # none, tensorboard or wandb (see experiments.study.StudyConfig)
