"""The noisy_regression study's config and profiles, torch-free so that ``--show-config`` and a bad ``--set`` answer
without loading torch; the study itself is :mod:`experiments.noisy_regression`, which re-exports every name here."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from experiments.configs.base import StudyConfig
from icl.config import ConfigError, spec
from icl.prompt_config import PromptConfig
from icl.training.config import TrainConfig

#: the test set is cut into this many parts for the spread of its log-mean (heavy tails)
TAIL_PARTS = 5


MODES = ("full", "diag", "gdpp")


@dataclass(frozen=True)
class NoisyRegressionConfig(StudyConfig):
    """The study (defaults: the ``standard`` profile).

    Attributes:
        d, n: dimension and context points (the paper's 10 and 20).
        depths: numbers of layers.
        sigma_max: the uniform noise settings σ_τ ~ U(0, σ_max) (0: noiseless).
        categorical: the categorical noise sets, each written as levels joined by '/' (e.g. "1/3"); σ_τ is
            uniform over the levels.
        modes: ``full``, ``diag`` and/or ``gdpp`` (GD++ = DIAG with q_y = 0).
        init_std: std of the initial weights (products of two factors, so not too small).
        train: the outer training: ``train.steps`` is the cap, the plateau rule (``train.plateau_patience``
            evaluations without a relative improvement of ``train.plateau_tol`` of the held-out loss) ends it
            earlier; a divergence (a non-finite loss or gradient) rolls back to the last healthy state at a lower
            learning rate. ``explode_factor`` 1e30: at L = 4 a training batch can hold a tail prompt whose loss is
            1e13 or more times the typical one, which is no divergence (the gradient is clipped); with 1e12 such
            batches used up the rollbacks of two 4-layer FULL seeds (and halved their learning rate four times).
        test_prompts: held-out prompts per (seed, noise setting).
        tune_prompts: training-law prompts on which ConstRR's λ and the tuned GD++ are chosen.
        tune_maxfev: the budget of the tuned GD++'s refinement per depth (method evaluations).
        tolerance: a learned model more than this above tuned GD++ (in log test MSE) is flagged.
        depth_unit: ``train.steps``, ``train.halve_every``, ``train.plateau_patience`` and ``train.batch_size`` are
            those of a model of this depth; a depth-L model trains L/depth_unit times the steps, halving period and
            patience on depth_unit/L times the batch (a step costs the same at every depth; deeper models anneal
            more slowly). 0: ``train`` as it is at every depth.
        best_of_depths: the noiseless depths at which every seed is trained (the paper's Table 1 is the best of
            5 seeds); elsewhere only the first ``other_seeds`` seeds.
        other_seeds: how many of ``seeds`` train the models not in ``best_of_depths`` (the noisy settings).
        noisy_budget: in a noisy setting the cap, halving period and patience are this times the noiseless ones
            (the paper's noisy results are orderings of adjusted losses well above the noiseless optimum's 1e-3).
        warm_start: the curriculum (``experiments.noisy_regression._start``; False: every model from its random
            init): at the ``class_curriculum`` depths DIAG starts from the same setting's trained FULL projected onto
            DIAG and GD++ from the trained DIAG with q_y = 0; elsewhere a noisy setting's FULL and DIAG start from
            the previous noise setting's model of their mode, depth and seed.
        class_curriculum: the depths of the class curriculum.
        gdpp_deep_batch, gdpp_deep_steps: the noiseless GD++ deeper than ``depth_unit`` trains on this times the
            batch and this times the cap, halving period and patience. Its per-prompt losses are heavy-tailed (the
            worst 1% of prompts carry 60-80% of the L = 4 test MSE), so a small batch's gradient is mostly noise and
            one seed's held-out loss drifts up while the learning rate falls; with the plain recipe seeds 2 and 3 of
            the standard profile ended at 1.04e-3 and 1.38e-3 ½·MSE, above the 1e-3 target.
        full_deep_dtype: the dtype of the noiseless FULL deeper than ``depth_unit``. In float32 one rare
            heavy-tailed prompt overflows its gradient (non-finite while the loss is finite): the rollback halves
            the learning rate and two of three 4-layer seeds ended +1.36 and +3.03 in log above the class optimum
            (seed 2 −0.05); in float64 the same seeds trained without a rollback to +0.105, −0.30, −0.46 (the
            committed standard run; −0.51, −0.61, −0.90 against tuned GD++ alone), in 245 s of CPU for the three
            (about 90 s in float32).
    """

    d: int = spec(10, ge=1)
    n: int = spec(20, ge=2)
    depths: tuple[int, ...] = spec((2, 4), ge=1)
    sigma_max: tuple[float, ...] = spec((0.0, 1.0, 3.0, 5.0), ge=0)
    categorical: tuple[str, ...] = spec(("1/3",), allow_empty=True)
    modes: tuple[str, ...] = MODES
    init_std: float = spec(0.05, gt=0)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=3000,
            batch_size=512,
            optimizer="adam",
            lr=0.02,
            weight_decay=0.0,
            clip="global",
            clip_value=1.0,
            schedule="step",
            halve_every=600,
            eval_every=100,
            eval_batch=2000,
            log_every=100,
            on_divergence="rollback",
            max_rollbacks=4,
            explode_factor=1e30,
            plateau_patience=10,
            plateau_tol=3e-3,
        )  # fmt: skip
    )
    test_prompts: int = spec(20_000, ge=100)
    tune_prompts: int = spec(2_000, ge=100)
    tune_maxfev: int = spec(300, ge=1)
    tolerance: float = spec(0.05, gt=0)
    depth_unit: int = spec(2, ge=0)
    best_of_depths: tuple[int, ...] = spec((2,), ge=1, allow_empty=True)
    other_seeds: int = spec(3, ge=1)
    noisy_budget: float = spec(0.15, gt=0)
    warm_start: bool = True
    class_curriculum: tuple[int, ...] = spec((2,), ge=1, allow_empty=True)
    gdpp_deep_batch: float = spec(2.0, gt=0)
    gdpp_deep_steps: float = spec(1.5, gt=0)
    full_deep_dtype: str = spec("float64", choices=("float32", "float64"))

    def check(self) -> None:
        super().check()
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ConfigError(f"modes has unknown entries {bad}; choose from {', '.join(MODES)}")
        for s in self.categorical:
            try:
                levels = [float(v) for v in s.split("/")]
            except ValueError:
                raise ConfigError(f"categorical entry {s!r} must be levels joined by '/', e.g. 1/3") from None
            if not levels or min(levels) < 0:
                raise ConfigError(f"categorical entry {s!r} needs non-negative levels")
        if self.n <= self.d:
            raise ConfigError(f"AdaRR needs n > d (σ̂² divides by n − d); got n = {self.n}, d = {self.d}")
        if self.test_prompts < TAIL_PARTS:
            raise ConfigError(f"test_prompts must be >= {TAIL_PARTS} (the tail statistics cut it into parts)")

    def seeds_at(self, L: int, noisy: bool) -> tuple[int, ...]:
        """The seeds a depth-L model trains: all of ``seeds`` at the noiseless ``best_of_depths`` (the paper's
        best-of-5 comparisons), the first ``other_seeds`` of them elsewhere."""
        return self.seeds if not noisy and L in self.best_of_depths else self.seeds[: self.other_seeds]

    def train_at(self, L: int, noisy: bool, mode: str = "full") -> TrainConfig:
        """The training of a depth-L model: ``train.steps`` (the cap), ``train.halve_every`` and
        ``train.plateau_patience`` are those of a depth-``depth_unit`` model, scaled by L/depth_unit (deeper models
        anneal more slowly) and by ``noisy_budget`` in a noisy setting; ``train.batch_size`` is scaled by
        depth_unit/L (prompts × layers per step constant, so a step costs the same at every depth). The noiseless
        ``gdpp`` deeper than ``depth_unit`` gets ``gdpp_deep_batch`` times the batch and ``gdpp_deep_steps`` times
        the cap, halving period and patience; the noiseless ``full`` deeper than ``depth_unit`` trains in
        ``full_deep_dtype``. ``depth_unit`` 0: ``train`` at every depth."""
        if not self.depth_unit:
            return self.train
        f = L / self.depth_unit * (self.noisy_budget if noisy else 1.0)
        b = self.depth_unit / L
        if mode == "gdpp" and not noisy and L > self.depth_unit:
            f, b = f * self.gdpp_deep_steps, b * self.gdpp_deep_batch
        t = self.train
        if mode == "full" and not noisy and L > self.depth_unit:
            t = replace(t, dtype=self.full_deep_dtype)
        return replace(t, steps=max(1, round(f * t.steps)), halve_every=max(1, round(f * t.halve_every)),
                       plateau_patience=max(1, round(f * t.plateau_patience)) if t.plateau_patience else 0,
                       batch_size=max(1, round(t.batch_size * b)))

    def noise_settings(self) -> list[tuple[str, PromptConfig]]:
        """(name, prompt law) of every noise setting."""
        out = []
        for s in self.sigma_max:
            noise = "uniform" if s > 0 else "none"
            out.append((f"U(0,{s:g})", PromptConfig(d=self.d, n=self.n, noise=noise, sigma_max=s)))
        for c in self.categorical:
            levels = tuple(float(v) for v in c.split("/"))
            out.append((f"cat{{{','.join(f'{v:g}' for v in levels)}}}",
                        PromptConfig(d=self.d, n=self.n, noise="categorical", sigma_set=levels)))  # fmt: skip
        return out


#: the standard profile's grid is the config's defaults (the paper profile's is larger): five noise settings in the
#: budget (≤ 20 minutes on 2 cores), the noiseless one with the paper's Table 1 targets trained on 5 seeds
PROFILES = {
    "quick": {
        "depths": (1, 2),
        "sigma_max": (0.0, 3.0),
        "categorical": (),
        "train.steps": 60,
        "train.batch_size": 256,
        "train.eval_every": 20,
        "train.eval_batch": 256,
        "train.halve_every": 30,
        "test_prompts": 2000,
        "tune_prompts": 500,
        "tune_maxfev": 40,
        "checkpoint_every": 60,
        "best_of_depths": (),
        "noisy_budget": 1.0,
    },
    "standard": {"seeds": (0, 1, 2, 3, 4)},
    "paper": {
        "seeds": (0, 1, 2, 3, 4),
        "depths": (1, 2, 3, 4, 5, 6, 7),
        "sigma_max": (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0),
        "categorical": ("1/3", "1/3/5"),
        "init_std": 0.02,
        "train.steps": 200_000,
        "train.batch_size": 2048,
        "train.lr": 1e-4,
        "train.schedule": "constant",
        "train.eval_every": 5000,
        "train.eval_batch": 10_000,
        "train.log_every": 1000,
        "train.plateau_patience": 10,
        "train.plateau_tol": 1e-3,
        "test_prompts": 100_000,
        "tune_prompts": 20_000,
        "tune_maxfev": 2000,
        "checkpoint_every": 5000,
        "depth_unit": 0,
        "best_of_depths": (1, 2, 3, 4, 5, 6, 7),
        "noisy_budget": 1.0,
    },
}
