"""The baselines study's config and profiles, torch-free so that ``--show-config`` and a bad ``--set`` answer
without loading torch; the study itself is :mod:`experiments.baselines`, which re-exports every name here."""

from __future__ import annotations

from dataclasses import dataclass, field

from experiments.configs.base import StudyConfig
from icl.config import ConfigError, spec
from icl.prompt_config import PromptConfig

DATASETS = ("ahn_dutta", "isotropic")


def ahn_dutta_prompt() -> PromptConfig:
    return PromptConfig(d=5, n=20, eigenvalues=(1.0, 1.0, 0.25, 0.0625, 1.0), w_prior="inverse_sigma")


def isotropic_prompt() -> PromptConfig:
    return PromptConfig(d=5, n=20, w_prior="identity")


@dataclass(frozen=True)
class BaselinesConfig(StudyConfig):
    """Classical baselines vs steps (defaults: the standard profile).

    Attributes:
        datasets: which of ``ahn_dutta`` and ``isotropic`` to run.
        ahn_dutta: the prompt law of Ahn et al. / Dutta & Sra (non-isotropic, w* ~ N(0, Σ⁻¹)).
        isotropic: the isotropic prompt law (w* ~ N(0, I)).
        steps: the largest number of steps T (every T in 1..steps is tuned and reported).
        test_prompts: held-out prompts per seed (stream ``test``).
        train_prompts: prompts per seed on which hyperparameters are tuned (stream ``tune``).
        val_prompts: prompts per seed on which the tuned candidates are compared (stream ``val``; never the test
            prompts): the refinement can leave a schedule at the training batch's edge of stability.
        krylov_prompts: prompts per seed on which the Krylov coefficients are fitted (stream ``krylov``; one
            least-squares fit, so cheap: many prompts keep the deep fits from extrapolating badly to test prompts
            whose spectrum leaves the fitted range, see :func:`reference_optimizers.krylov_bound`).
        tune_budget: method evaluations per free hyperparameter in the scipy refinement of :func:`tune`.
    """

    datasets: tuple[str, ...] = DATASETS
    ahn_dutta: PromptConfig = field(default_factory=ahn_dutta_prompt)
    isotropic: PromptConfig = field(default_factory=isotropic_prompt)
    steps: int = spec(8, ge=1)
    test_prompts: int = spec(10_000, ge=2)
    train_prompts: int = spec(2048, ge=2)
    val_prompts: int = spec(20_000, ge=2)
    krylov_prompts: int = spec(100_000, ge=16)
    tune_budget: int = spec(50, ge=0)

    def check(self) -> None:
        super().check()
        bad = [d for d in self.datasets if d not in DATASETS]
        if bad or not self.datasets:
            raise ConfigError(f"datasets {list(self.datasets)} must be a non-empty subset of {', '.join(DATASETS)}")
        if any(getattr(self, d).n < 2 for d in self.datasets):
            raise ConfigError("every dataset needs n >= 2 (cg_fr_19pts drops one context point)")


PROFILES = {
    "quick": {"seeds": (0,), "test_prompts": 2000, "train_prompts": 512, "val_prompts": 5000, "krylov_prompts": 20_000,
              "tune_budget": 20},
    "standard": {},
    "paper": {
        "seeds": (0, 1, 2, 3, 4),
        "test_prompts": 100_000,
        "train_prompts": 16384,
        "val_prompts": 100_000,
        "krylov_prompts": 400_000,
        "tune_budget": 100,
    },
}
