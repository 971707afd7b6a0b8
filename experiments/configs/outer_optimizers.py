"""The outer_optimizers study's config and profiles, torch-free so that ``--show-config`` and a bad ``--set`` answer
without loading torch; the study itself is :mod:`experiments.outer_optimizers`, which re-exports every name here."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from experiments.configs.base import StudyConfig
from icl.config import ConfigError, spec
from icl.prompt_config import PromptConfig
from icl.training.config import TrainConfig
from learned_optimizers.configs import LSAConfig

REFERENCE_LR = 1e-2  # the train.lr the base rates of `optimizers` are given for


OPTIMIZER_NAMES = ("adam", "adamw", "fadam", "rf_rmsprop", "rf_adamw", "sirfshampoo", "manifold_adam")


@dataclass(frozen=True)
class OuterOptimizersConfig(StudyConfig):
    """The outer-optimizer comparison (defaults: the standard profile).

    Attributes:
        prompt, model: the data law and the sparse LSA trained.
        train: the full runs (every optimizer at its selected rate, the same schedule). ``train.betas`` and
            ``train.weight_decay`` must be set: they are given to every optimizer that takes them, so that no
            optimizer runs at a default the others do not share (torch's Adam/AdamW and FAdam default to β₂ =
            0.999, the others to 0.99; AdamW decays by 0.01, FAdam by 0.1, RF-AdamW by 0.01, the others not at
            all). β₂ also sets the second-moment horizon of RF-RMSProp (``lr_cov`` = 1 − β₂) and SIRFShampoo
            (its preconditioner rate ``beta2`` = 1 − β₂). Weight decay 0 (the default) keeps every optimizer's
            fixed point at the minimiser of the loss, which is what the class optimum is.
        optimizers: ``NAME=BASE_LR`` entries; the rates tried are BASE_LR × ``lr_grid`` × train.lr / 0.01 (the
            bases centre each grid on the rate the 4000-step development runs selected for seeds 0–2), plus up to
            ``LR_EXTENSIONS`` rates past the edge the selected rate sits on. AdamW and ManifoldAdam are not among
            the defaults: at weight decay 0 AdamW is Adam step for step, and ManifoldAdam on these Euclidean
            parameters with the shared β is Adam too (tests/test_manifold_adam.py; identical losses here).
        lr_grid: multipliers of the base rates tried by the tuning runs.
        tune_steps: length of the tuning runs (at most ``train.steps``; the schedule of ``train`` compressed to this
            length). At ``train.steps`` (the default) the tuning runs are the reported runs: the rates are ranked at
            the length they are reported at.
        target_factor: the target loss is this × the best mean final held-out loss.
        test_prompts: float64 test prompts per seed (stream ``test``) every model and reference is scored on.
        tune_prompts: training-law prompts per seed (stream ``tune``) on which the Σ⁻¹-PGD steps are tuned and the
            Σ⁻¹ Krylov bound is fitted.
        class_tolerance: how far (log test loss) above the tuned Σ⁻¹-PGD a model may end and count as converged.
    """

    prompt: PromptConfig = field(
        default_factory=lambda: PromptConfig(
            d=5, n=20, eigenvalues=(1.0, 1.0, 0.25, 0.0625, 1.0), w_prior="inverse_sigma"
        )
    )
    model: LSAConfig = field(default_factory=lambda: LSAConfig(layers=3, mode="sparse", init_std=0.01))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=8000, batch_size=250, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0, schedule="cosine",
            eval_every=100, eval_batch=4096, log_every=100,
        )
    )
    optimizers: tuple[str, ...] = (
        "adam=0.1", "fadam=0.3", "rf_rmsprop=0.1", "rf_adamw=1.0", "sirfshampoo=0.01",
    )  # fmt: skip
    lr_grid: tuple[float, ...] = spec((0.3, 1.0, 3.0), gt=0)
    tune_steps: int = spec(8000, ge=1)
    target_factor: float = spec(1.1, gt=1)
    test_prompts: int = spec(20_000, ge=10)
    tune_prompts: int = spec(20_000, ge=2)
    class_tolerance: float = spec(0.05, gt=0)

    def check(self) -> None:
        super().check()
        for entry in self.optimizers:
            name, _, lr = entry.partition("=")
            if name not in OPTIMIZER_NAMES:
                raise ConfigError(f"optimizers: {name!r} is not among {', '.join(OPTIMIZER_NAMES)}")
            try:
                ok = float(lr) > 0
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"optimizers: {entry!r} must be NAME=BASE_LR with BASE_LR > 0")
        names = [e.partition("=")[0] for e in self.optimizers]
        if len(set(names)) != len(names):
            raise ConfigError(f"optimizers: each optimizer may appear once, got {names}")
        if self.train.optimizer != TrainConfig.optimizer:
            raise ConfigError(f"train.optimizer = {self.train.optimizer!r} is not used by this study, which trains "
                              "every optimizer of `optimizers` (set optimizers=NAME=BASE_LR,... to choose them)")
        for name in ("betas", "weight_decay"):
            if getattr(self.train, name) is None:
                raise ConfigError(f"train.{name} must be set: it is given to every optimizer that takes it, whose "
                                  "defaults differ (unset, each would run at its own)")  # fmt: skip
        if self.model.mode != "sparse":
            raise ConfigError("model.mode must be 'sparse' (Ahn et al. eq. 8): the class optimum reported beside "
                              "every model, tuned Σ⁻¹-preconditioned GD, is the sparse LSA's")  # fmt: skip

    def lr_scale(self) -> float:
        """``train.lr`` scales every base rate: the base rates are those for ``train.lr`` = 0.01."""
        return self.train.lr / REFERENCE_LR

    def base_lrs(self) -> list[tuple[str, float]]:
        """(optimizer, base learning rate) pairs; the grid is base × lr_grid."""
        return [(e.partition("=")[0], float(e.partition("=")[2])) for e in self.optimizers]

    def tune_train(self) -> TrainConfig:
        """The tuning runs' training config: ``train`` cut to ``tune_steps`` (at most ``train.steps``), its schedule
        compressed with it."""
        steps = min(self.tune_steps, self.train.steps)
        return replace(self.train, steps=steps, halve_every=max(1, self.train.halve_every * steps
                                                                // max(1, self.train.steps)))


PROFILES = {
    "quick": {"seeds": (0,), "train.steps": 300, "tune_steps": 300, "train.batch_size": 128, "train.eval_every": 25,
              "train.eval_batch": 1024, "lr_grid": (1.0, 3.0), "test_prompts": 4000, "tune_prompts": 4000,
              "checkpoint_every": 300},
    "standard": {},
    "paper": {"seeds": (0, 1, 2, 3, 4), "train.steps": 20000, "tune_steps": 2000, "train.batch_size": 20000,
              "train.resample_every": 100, "train.eval_every": 200, "checkpoint_every": 2000},
}  # fmt: skip
