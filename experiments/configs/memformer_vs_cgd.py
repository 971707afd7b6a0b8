"""The memformer_vs_cgd study's config and profiles, torch-free so that ``--show-config`` and a bad ``--set`` answer
without loading torch; the study itself is :mod:`experiments.memformer_vs_cgd`, which re-exports every name here."""

from __future__ import annotations

from dataclasses import dataclass, field

from experiments.configs.base import StudyConfig
from icl.config import ConfigError, spec
from icl.prompt_config import PromptConfig
from icl.training.config import TrainConfig

MODEL_KINDS = ("lt_scalar", "lt_full", "cgd_scalar", "cgd_full", "lfom_scalar", "lfom_scalar_h5", "lfom_full")


SETTINGS = ("noniso", "iso")


PAPER_EIGENVALUES = (1.0, 1.0, 0.25, 0.0625, 1.0)


@dataclass(frozen=True)
class MemformerVsCGDConfig(StudyConfig):
    """The study (defaults: the ``standard`` profile).

    Attributes:
        d, n: dimension and context points (the paper's 5 and 20).
        eigenvalues: the spectrum of Σ in the non-isotropic setting (the code's D², see the module docstring).
        depths: the numbers of layers / steps L.
        settings: ``noniso`` and/or ``iso``.
        models: the trained models in the non-isotropic setting (at the deepest L).
        iso_models: the trained models in the isotropic setting (at the deepest L).
        sweep_models: the models also trained at every other L of ``depths``, in the settings of
            ``sweep_settings``.
        sweep_settings: the settings in which ``sweep_models`` are trained at every L (elsewhere at the deepest
            L only).
        heads: heads of ``lfom_scalar_h5``.
        init_std: std of the initial attention weights (scalar blocks: of a_ℓ).
        train: the outer training (AdamW, per-matrix clipping as in the authors' code, plateau rule and cap).
        test_prompts: held-out prompts per seed (models and every baseline see the same ones).
        tune_prompts: prompts of the training law on which the baselines are tuned and the Krylov bounds fitted.
        gap_tolerance: a model further than this (log units) above its class optimum is flagged as not converged.
        big_batch_models: the models trained on batches of ``big_batch_size`` prompts instead of
            ``train.batch_size`` (the full-A LT and the CGD-like Memformer with Q = q·I: at 2000 prompts their
            heavy-tailed L = 4 gradients left them 0.10–0.13 above their class optimum on some seeds).
        big_batch_size: their batch.
    """

    d: int = spec(5, ge=1)
    n: int = spec(20, ge=2)
    eigenvalues: tuple[float, ...] = spec(PAPER_EIGENVALUES, gt=0, allow_repeats=True)
    depths: tuple[int, ...] = spec((1, 2, 3, 4), ge=1)
    settings: tuple[str, ...] = SETTINGS
    models: tuple[str, ...] = MODEL_KINDS
    iso_models: tuple[str, ...] = ("lt_full", "lfom_full")
    sweep_models: tuple[str, ...] = ("lt_full",)
    sweep_settings: tuple[str, ...] = spec(("noniso",), allow_empty=True)
    heads: int = spec(5, ge=2)
    init_std: float = spec(0.01, gt=0)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=2400,
            batch_size=2000,
            lr=0.1,
            weight_decay=0.0,
            clip="per_matrix",
            clip_value=0.01,
            resample_every=1,
            schedule="step",
            halve_every=400,
            eval_every=100,
            eval_batch=2000,
            log_every=100,
            plateau_patience=8,
            plateau_tol=1e-3,
        )  # fmt: skip
    )
    test_prompts: int = spec(40_000, ge=100)
    tune_prompts: int = spec(8_000, ge=100)
    gap_tolerance: float = spec(0.1, gt=0)
    big_batch_models: tuple[str, ...] = spec(("lt_full", "cgd_scalar"), allow_empty=True)
    big_batch_size: int = spec(6000, ge=1)

    def check(self) -> None:
        super().check()
        if len(self.eigenvalues) != self.d:
            raise ConfigError(f"eigenvalues has {len(self.eigenvalues)} entries but d = {self.d}")
        for name, values, allowed in (
            ("settings", self.settings, SETTINGS),
            ("models", self.models, MODEL_KINDS),
            ("iso_models", self.iso_models, MODEL_KINDS),
            ("sweep_models", self.sweep_models, MODEL_KINDS),
            ("sweep_settings", self.sweep_settings, SETTINGS),
            ("big_batch_models", self.big_batch_models, MODEL_KINDS),
        ):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ConfigError(f"{name} has unknown entries {bad}; choose from {', '.join(allowed)}")

    def prompt(self, setting: str) -> PromptConfig:
        eig = self.eigenvalues if setting == "noniso" else None
        return PromptConfig(d=self.d, n=self.n, eigenvalues=eig, w_prior="inverse_sigma")

    def kinds(self, setting: str) -> tuple[str, ...]:
        return self.models if setting == "noniso" else self.iso_models

    def train_for(self, kind: str) -> TrainConfig:
        """``train``, with ``big_batch_size`` prompts per batch for the models in ``big_batch_models``."""
        return self.train.replace(batch_size=self.big_batch_size) if kind in self.big_batch_models else self.train

    def model_depths(self, kind: str, setting: str) -> tuple[int, ...]:
        """The depths ``kind`` is trained at in ``setting``: every L of ``depths`` for a sweep model in a sweep
        setting, else the deepest."""
        sweep = kind in self.sweep_models and setting in self.sweep_settings
        return tuple(sorted(self.depths)) if sweep else (max(self.depths),)


PROFILES = {
    "quick": {
        "depths": (1, 2),
        "models": ("lt_scalar", "lt_full", "cgd_scalar", "cgd_full", "lfom_scalar", "lfom_scalar_h5", "lfom_full"),
        "sweep_models": ("lt_full", "cgd_full"),
        "train.steps": 60,
        "train.batch_size": 200,
        "big_batch_size": 600,
        "train.eval_every": 20,
        "train.eval_batch": 200,
        "train.halve_every": 20,
        "train.plateau_patience": 2,
        "test_prompts": 2000,
        "tune_prompts": 500,
        "checkpoint_every": 60,
    },
    "standard": {},
    "paper": {
        "seeds": (0, 1, 2, 3, 4),
        "settings": SETTINGS,
        "iso_models": MODEL_KINDS,
        "sweep_models": MODEL_KINDS,
        "sweep_settings": SETTINGS,
        "train.steps": 20_000,
        "train.halve_every": 2000,
        "train.plateau_patience": 30,
        "train.eval_every": 200,
        "test_prompts": 100_000,
        "tune_prompts": 20_000,
        "checkpoint_every": 1000,
    },
}
