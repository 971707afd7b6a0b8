"""The training config: what the outer optimisation does, validated in one place.

Torch-free, so that a study's config can be resolved and checked (``--show-config``, a bad ``--set``) without
loading torch: the optimizers are named here with the hyperparameters each accepts, and
tests/test_study_train_config.py checks this table against the signatures of :data:`icl.optim.OPTIMIZERS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from icl.config import Config, ConfigError, spec

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "float64")
#: the registered outer optimizers (:data:`icl.optim.OPTIMIZERS`, same order) -> which of ``betas``,
#: ``momentum`` and ``weight_decay`` each takes
OPTIMIZER_HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "adam": ("betas", "weight_decay"),
    "adamw": ("betas", "weight_decay"),
    "sgd": ("momentum", "weight_decay"),
    "fadam": ("betas", "weight_decay"),
    "rf_rmsprop": ("momentum", "weight_decay"),
    "rf_adamw": ("betas", "weight_decay"),
    "sirfshampoo": ("weight_decay",),
    "manifold_adam": ("betas", "weight_decay"),
    "manifold_sgd": ("momentum", "weight_decay"),
    "riemannian_adam": ("betas", "weight_decay"),
}
#: optimizers whose parameter groups take a ``manifold`` option (what constrained weights need)
MANIFOLD_OPTIMIZERS = ("manifold_adam", "manifold_sgd", "riemannian_adam")
LOSSES = ("query", "prefix")


@dataclass(frozen=True)
class TrainConfig(Config):
    """The outer optimisation.

    Attributes:
        steps: number of optimizer steps.
        batch_size: prompts per step.
        optimizer: the outer optimizer's name.
        lr: the base learning rate.
        betas: (β₁, β₂) of the optimizers that take them; None keeps the optimizer's default.
        momentum: momentum of the optimizers that take one (SGD, RF-RMSProp); None keeps the default.
        weight_decay: weight decay as the optimizer defines it (decoupled for AdamW); None keeps the default.
        clip: gradient clipping: ``none``, ``global`` (total norm) or ``per_matrix`` (each d×d block).
        clip_value: the clipping threshold.
        resample_every: draw a fresh batch every k steps (Ahn et al. use k = 100).
        schedule: ``constant``, ``step`` (halve every ``halve_every`` steps) or ``cosine`` (to 0).
        halve_every: the period of the step schedule.
        eval_every: evaluate the held-out batch every m steps.
        eval_batch: size of the held-out batch.
        log_every: read the losses back (and update the progress bar) every so many steps.
        dtype: floating dtype of the model and the prompts.
        on_divergence: what a non-finite loss, gradient or state does: ``stop`` raises
            :class:`TrainingDiverged` naming the step and the last finite loss; ``rollback`` restores the last
            state that passed a finite read-back and continues with the learning rate multiplied by
            ``rollback_lr_factor``, at most ``max_rollbacks`` times (then it stops as ``stop`` does).
        max_rollbacks: how many rollbacks one run may take.
        rollback_lr_factor: the learning rate is multiplied by this at each rollback.
        explode_factor: a read-back loss above ``explode_factor`` × max(the seed's running best loss, the zero
            predictor's loss on the held-out batch) counts as divergence too (an explosion that has not yet
            overflowed), and a state is kept for rollback only when its loss is below that bound.
        plateau_patience: stop training when the held-out loss has not improved by a relative ``plateau_tol``
            for this many evaluations in a row (0: off; ``steps`` stays the cap). In a seed batch the run stops
            when every seed has plateaued. What stopped the run is recorded in its history's events.
        plateau_tol: the relative improvement of the best held-out loss that counts as progress.
        stiefel: weights of the model (dotted names, e.g. ``W_K,W_Q`` of a factorised LSA or
            ``attention.W_K`` of a Memformer) trained on the Stiefel manifold: each (L, H, k, p) weight is split
            into per-layer/head blocks Wᵀ ∈ St(p, k), started at a random point drawn from the seed's
            ``constraints`` stream (:mod:`learned_optimizers.constraints`); needs a manifold optimizer
            (``manifold_adam``, ``manifold_sgd``, ``riemannian_adam``).
        compile: run the training loss (the forward and ``loss``) through torch.compile;
            the backward pass is compiled with it, the held-out evaluation stays eager. The results equal the
            eager run up to rounding (the fused kernels may sum in another order). On a shared 2-core CPU a
            cold compile took 20 s (tiny model) to about 100 s (the benchmark's sparse and full LSA), seconds
            with inductor's cache warm, and made a sparse-LSA step 1.37× faster, so it pays only for runs of
            many thousand steps; off by default (docs/performance.md). A resumed run may switch it.
        loss: the training loss. ``query``: the query MSE (ŷ − y_q)², the linear models' loss (Ahn et al.,
            von Oswald et al.). ``prefix``: Garg et al.'s (2022) mean over the n+1 prefixes i = 0, …, n of
            (ŷ_i − y_{i+1})², ŷ_i the prediction for x_{i+1} from the first i pairs and y_{n+1} = y_q (see
            :func:`prefix_mse`); only for models with ``prefix_predictions(X, y, x_query, check)`` (the causal
            :class:`~learned_optimizers.gpt.GPT`), others are refused when the Trainer is built. The
            held-out evaluation is the query MSE either way.
    """

    steps: int = spec(2000, ge=0)
    batch_size: int = spec(1024, ge=1)
    optimizer: str = spec("adamw", choices=tuple(OPTIMIZER_HYPERPARAMETERS))
    lr: float = spec(1e-2, gt=0)
    betas: tuple[float, ...] | None = spec(None, ge=0, lt=1, allow_repeats=True)
    momentum: float | None = spec(None, ge=0, lt=1)
    weight_decay: float | None = spec(None, ge=0)
    clip: str = spec("none", choices=("none", "global", "per_matrix"))
    clip_value: float = spec(1.0, gt=0)
    resample_every: int = spec(1, ge=1)
    schedule: str = spec("constant", choices=("constant", "step", "cosine"))
    halve_every: int = spec(1000, ge=1)
    eval_every: int = spec(100, ge=1)
    eval_batch: int = spec(4096, ge=1)
    log_every: int = spec(50, ge=1)
    dtype: str = spec("float32", choices=DTYPE_NAMES)
    on_divergence: str = spec("stop", choices=("stop", "rollback"))
    max_rollbacks: int = spec(3, ge=0)
    rollback_lr_factor: float = spec(0.5, gt=0, lt=1)
    explode_factor: float = spec(1e4, gt=1)
    plateau_patience: int = spec(0, ge=0)
    plateau_tol: float = spec(1e-3, ge=0, lt=1)
    compile: bool = False
    loss: str = spec("query", choices=LOSSES)
    stiefel: tuple[str, ...] = spec((), allow_empty=True)

    def check(self) -> None:
        if self.betas is not None and len(self.betas) != 2:
            raise ConfigError(f"betas must have 2 entries (β₁, β₂), got {len(self.betas)}")
        if self.stiefel and self.optimizer not in MANIFOLD_OPTIMIZERS:
            raise ConfigError(f"stiefel = {','.join(self.stiefel)} needs a manifold optimizer "
                              f"({', '.join(MANIFOLD_OPTIMIZERS)}); optimizer is {self.optimizer!r}")  # fmt: skip
        accepted = OPTIMIZER_HYPERPARAMETERS[self.optimizer]
        for name in ("betas", "momentum", "weight_decay"):
            if getattr(self, name) is not None and name not in accepted:
                raise ConfigError(f"{name} is set but optimizer {self.optimizer!r} takes no {name}; leave it unset")

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)
