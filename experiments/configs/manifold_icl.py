"""The manifold_icl study's config and profiles, torch-free so that ``--show-config`` and a bad ``--set`` answer
without loading torch; the study itself is :mod:`experiments.manifold_icl`, which re-exports every name here."""

from __future__ import annotations

from dataclasses import dataclass, field

from experiments.configs.base import StudyConfig
from experiments.configs.pgd_depth import EIGENVALUES
from icl.config import ConfigError, spec
from icl.prompt_config import PromptConfig
from icl.training.config import TrainConfig

METHODS = (
    "spectral_manifold_adam",
    "unconstrained_adam",
    "unconstrained_adam_cosine",
    "spectral_projected_adam",
    "spectral_manifold_sgd",
    "spectral_manifold_momentum",
    "cgd_spectral_manifold_adam",
    "lfom_spectral_manifold_adam",
    "per_layer_basis_manifold_adam",
    "factorised_stiefel_adam",
)


#: the standard profile's methods: all but the per-layer-basis ablation and the cosine unconstrained recipe
STANDARD_METHODS = tuple(m for m in METHODS if m not in ("per_layer_basis_manifold_adam", "unconstrained_adam_cosine"))


@dataclass(frozen=True)
class ManifoldICLConfig(StudyConfig):
    """The study (defaults: the headline setting, batch 2048 and 40,000 test prompts; the standard profile shortens it).

    Attributes:
        prompt: Ahn et al.'s law.
        depths: numbers of layers L.
        methods: see the module docstring.
        train: batch, steps, evaluation and dtype shared by every method; each method sets its own optimizer,
            schedule and clipping (:func:`method_train_config`).
        adam_lrs, unconstrained_lrs, sgd_lrs: learning-rate grids of the Adam-type spectral methods, the
            unconstrained model and the SGD-type methods.
        basis_lr_factor: U's learning rate relative to the spectra's (the spectral methods).
        adam_betas: (β₁, β₂) of the Adam-type spectral methods (ManifoldAdam's default (0.9, 0.99)).
        basis_betas: U's own (β₁, β₂) (None: ``adam_betas``).
        constrained_schedule, constrained_halve_every: the learning-rate schedule of every method but the
            unconstrained one (``step``: halved every ``constrained_halve_every`` steps).
        constrained_depth_unit: ``train.steps`` and ``constrained_halve_every`` are those of a model of this depth;
            a depth-L constrained model trains L/constrained_depth_unit times the steps with that times the halving
            period (as the unconstrained recipe scales its cap and halving with L); 0: the same at every depth.
        constrained_clip, constrained_clip_value: the gradient clipping of the Adam-type spectral methods (the
            engine's ``clip``/``clip_value``; default per-matrix 0.01 as in the unconstrained recipe; the SGD-type
            methods are not clipped, a clip would rescale their step; the factorised row keeps its global clip 1.0).
        side_depths: the depths at which the methods other than the headline pair (``spectral_manifold_adam`` and
            the unconstrained recipes) run; None: every depth.
        spectrum: the spectra's storage, ``linear`` (s) or ``log`` (s = exp(θ)).
        spectrum_init: the spectra's starting value (``log``: s = spectrum_init; ``linear``: see
            :class:`~learned_optimizers.spectral.SpectralLSAConfig`).
        init_std: the unconstrained A_ℓ ~ N(0, init_std²); the spectra's relative jitter.
        halve_every: the unconstrained recipe's lr halving period per layer (halved every L·halve_every steps at
            depth L, as in pgd_depth).
        reference_steps: the unconstrained models' step cap per layer (L·reference_steps at depth L; pgd_depth's
            converged runs take up to 15,000 at L = 3 and 20,000 at L = 4 with a batch reused for 100 steps);
            None: ``train.steps`` like every other method.
        reference_betas: the unconstrained recipe's AdamW β (pgd_depth's standard profile: (0.9, 0.999), which
            ends closer to PGD there than Ahn et al.'s (0.99, 0.9)).
        reference_patience: the unconstrained models' plateau patience in steps per layer: they stop when the
            held-out loss has not improved by ``train.plateau_tol`` (relative) for L·reference_patience steps
            (0: no plateau rule, the cap only).
        side_seeds: the seeds on which the methods other than the headline pair run (None: every seed).
        no_worse_margin: "no worse" final gap: the upper end of the paired 95% interval of (method −
            unconstrained) log test MSE is ≤ this.
        no_worse_statistic: the statistic of the per-prompt test errors that the "no worse" verdict compares,
            fixed before a run: ``mean`` (the MSE) or ``trimmed_mean`` (``experiments.convergence.TRIM`` cut at
            each end); the other one is reported beside it, never in its place.
        factorised_key_size: k of the factorised St(k, d+1) row.
        gap_target: the gap in log MSE to Σ⁻¹-PGD that counts as reached.
        monitor_every: steps between constraint/angle read-outs.
        test_prompts, tune_prompts: held-out prompts per seed, and prompts on which PGD's steps are tuned.
    """

    prompt: PromptConfig = field(
        default_factory=lambda: PromptConfig(d=5, n=20, eigenvalues=EIGENVALUES, w_prior="inverse_sigma")
    )
    depths: tuple[int, ...] = spec((1, 2, 3, 4), ge=1)
    methods: tuple[str, ...] = METHODS
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=1000, batch_size=1024, resample_every=1, eval_every=100, eval_batch=4096, log_every=100,
            dtype="float64", lr=0.03, plateau_patience=10,
        )
    )  # fmt: skip
    adam_lrs: tuple[float, ...] = spec((0.03,), gt=0)
    unconstrained_lrs: tuple[float, ...] = spec((0.05,), gt=0)
    sgd_lrs: tuple[float, ...] = spec((0.3,), gt=0)
    basis_lr_factor: float = spec(1.0, gt=0)
    adam_betas: tuple[float, float] = spec((0.9, 0.99), ge=0, lt=1)
    basis_betas: tuple[float, float] | None = spec(None, ge=0, lt=1)
    constrained_schedule: str = spec("step", choices=("constant", "step", "cosine"))
    constrained_halve_every: int = spec(100, ge=1)
    constrained_clip: str = spec("per_matrix", choices=("none", "global", "per_matrix"))
    constrained_depth_unit: int = spec(0, ge=0)
    constrained_clip_value: float = spec(0.01, gt=0)
    side_depths: tuple[int, ...] | None = spec(None, ge=1)
    spectrum: str = spec("log", choices=("linear", "log"))
    spectrum_init: float = spec(0.3, ge=0)
    init_std: float = spec(0.01, gt=0)
    halve_every: int = spec(500, ge=1)
    reference_steps: int | None = spec(2000, ge=1)
    reference_betas: tuple[float, float] = spec((0.9, 0.999), ge=0, lt=1)
    reference_patience: int = spec(1000, ge=0)
    side_seeds: tuple[int, ...] | None = spec(None, ge=0)
    no_worse_margin: float = spec(0.01, ge=0)
    no_worse_statistic: str = spec("mean", choices=("mean", "trimmed_mean"))
    factorised_key_size: int = spec(5, ge=1)
    gap_target: float = spec(0.05, gt=0)
    monitor_every: int = spec(100, ge=1)
    test_prompts: int = spec(40_000, ge=2)
    tune_prompts: int = spec(20_000, ge=2)

    def check(self) -> None:
        super().check()
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"methods {bad} are not among {', '.join(METHODS)}")
        if self.factorised_key_size > self.prompt.d + 1:
            raise ConfigError(f"factorised_key_size = {self.factorised_key_size} must be <= d+1 = {self.prompt.d + 1}")
        if self.spectrum == "log" and self.spectrum_init <= 0:
            raise ConfigError("spectrum = 'log' needs spectrum_init > 0")
        if len(self.reference_betas) != 2:
            raise ConfigError(f"reference_betas = {self.reference_betas} must be two numbers (β1, β2)")
        if self.side_seeds is not None and not set(self.side_seeds) <= set(self.seeds):
            raise ConfigError(f"side_seeds {list(self.side_seeds)} must be among seeds {list(self.seeds)}")


PROFILES = {
    "quick": {"seeds": (0,), "depths": (2,), "reference_steps": 30, "train.steps": 60, "train.batch_size": 256,
              "train.eval_every": 20, "train.eval_batch": 512, "train.log_every": 20, "monitor_every": 20,
              "test_prompts": 2000, "tune_prompts": 2000, "halve_every": 15, "constrained_halve_every": 20,
              "checkpoint_every": 60},
    "standard": {"seeds": (0, 1, 2, 3, 4), "side_seeds": (0, 1, 2), "side_depths": (3,), "methods": STANDARD_METHODS,
                 "test_prompts": 100_000, "tune_prompts": 10_000, "train.eval_batch": 16_384},
    "paper": {"seeds": (0, 1, 2, 3, 4), "train.steps": 3000, "constrained_halve_every": 300,
              "reference_steps": 5000, "halve_every": 500, "reference_patience": 2500, "checkpoint_every": 2000,
              "adam_lrs": (0.01, 0.03, 0.1), "unconstrained_lrs": (0.02, 0.05, 0.1), "sgd_lrs": (0.01, 0.03, 0.1, 0.3)},
}  # fmt: skip
