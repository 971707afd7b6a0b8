"""outer_optimizers (issue #7): which outer optimizer trains a 3-layer LSA fastest on Ahn/Dutta's data?

Setting (Ahn et al. 2023 §2.3; Dutta & Sra 2024 §1.4, with the code's Σ): d = 5, n = 20, x ~ N(0, Σ) with
Σ = U diag(1, 1, 1/4, 1/16, 1) Uᵀ (U Haar per seed), w* ~ N(0, Σ⁻¹), noiseless; a 3-layer sparse LSA
(Ahn eq. 8; ``--set model.mode=gdpp`` for eq. 11). The same model, data and seeds are trained with Adam, AdamW,
FAdam, RF-RMSProp, RF-AdamW, the inverse-free Kronecker method SIRFShampoo (Lin et al., ICML 2024) and
ManifoldAdam on Euclidean parameters (= Adam with β = (0.9, 0.99)). Each optimizer gets a learning-rate grid
(``NAME=BASE_LR`` entries of ``optimizers``, times ``lr_grid``); the lr with the lowest mean final loss on the
held-out ``val`` batch is selected and reported on ``test`` prompts that neither training nor selection saw.

Every LSA weight is handed to the optimizers as one d×d matrix per layer
(:class:`experiments.optimizer_sweep.BlockParams`): SIRFShampoo gives dense Kronecker factors only to matrices
and falls back to its diagonal rule on order-4 tensors, so without the split it would not be a Kronecker method
here. The root-free methods get ``batch_size`` = the training batch (their Fisher scaling, Lin et al. §3).

Target: ``target_factor`` × the best mean final held-out loss across optimizers (default 1.1×); steps and
wall-clock seconds to reach it are read off the held-out curve (evaluated every ``train.eval_every`` steps).
Reference lines: the zero predictor (E y_q² = d) and the tuned 3-step Σ⁻¹-preconditioned GD (the family
A_ℓ = a_ℓΣ⁻¹ of Ahn et al.'s Thm 3, step sizes fitted on a tuning batch): the sparse LSA can represent it.

Profiles: quick (one seed, 2 lrs per optimizer, 300 steps: ~1 minute), standard (3 seeds, 3 lrs, 3000 steps,
batch 1000: ~20 minutes on 2 idle cores), paper (Ahn's budget: batch 20000 resampled every 100 steps, 20000
steps, 5 seeds: ~1 GPU-hour per optimizer grid point on CPU, minutes on a GPU; ``--device cuda``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import scipy.optimize
import torch

from experiments.common import RunContext, make_distribution, write_config
from experiments.optimizer_sweep import (
    add_run_rows,
    split_blocks,
    train_timed,
)
from experiments.registry import Study
from experiments.study import Rows, StudyConfig, evaluate_model, held_out_prompts
from icl.config import ConfigError, spec
from icl.prompts import PromptConfig, zero_predictor_loss
from icl.runio import write_json
from icl.seeding import Streams
from icl.training import OptimizerSpec, TrainConfig
from learned_optimizers import LinearSelfAttention, LSAConfig
from reference_optimizers import mean_query_loss, preconditioned_gd

NAME = "outer_optimizers"
REFERENCE_LR = 1e-2  # the train.lr the base rates of `optimizers` are given for
OPTIMIZER_NAMES = ("adam", "adamw", "fadam", "rf_rmsprop", "rf_adamw", "sirfshampoo", "manifold_adam")
ROOT_FREE = ("rf_rmsprop", "rf_adamw", "sirfshampoo")
ROOT_BASED = ("adam", "adamw", "fadam", "manifold_adam")


@dataclass(frozen=True)
class OuterOptimizersConfig(StudyConfig):
    """The outer-optimizer comparison (defaults: the standard profile)."""

    prompt: PromptConfig = field(
        default_factory=lambda: PromptConfig(
            d=5, n=20, eigenvalues=(1.0, 1.0, 0.25, 0.0625, 1.0), w_prior="inverse_sigma"
        )
    )
    model: LSAConfig = field(default_factory=lambda: LSAConfig(layers=3, mode="sparse", init_std=0.01))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=3000, batch_size=1000, lr=1e-2, eval_every=50, eval_batch=4096, log_every=50
        )
    )
    optimizers: tuple[str, ...] = (
        "adam=0.01", "adamw=0.01", "fadam=0.01", "rf_rmsprop=0.03", "rf_adamw=0.03", "sirfshampoo=0.01",
        "manifold_adam=0.01",
    )  # fmt: skip
    lr_grid: tuple[float, ...] = spec((0.3, 1.0, 3.0), gt=0)
    target_factor: float = spec(1.1, gt=1)
    test_prompts: int = spec(20_000, ge=2)
    tune_prompts: int = spec(20_000, ge=2)

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
        if self.train.optimizer != TrainConfig.optimizer:
            raise ConfigError(f"train.optimizer = {self.train.optimizer!r} is not used by this study, which trains "
                              "every optimizer of `optimizers` (set optimizers=NAME=BASE_LR,... to choose them)")
        if self.model.mode not in ("sparse", "gdpp"):
            raise ConfigError("model.mode must be 'sparse' or 'gdpp' (Ahn et al. eq. 8 or 11)")

    def lr_scale(self) -> float:
        """``train.lr`` scales every base rate: the base rates are those for ``train.lr`` = 0.01."""
        return self.train.lr / REFERENCE_LR

    def base_lrs(self) -> list[tuple[str, float]]:
        """(optimizer, base learning rate) pairs; the grid is base × lr_grid."""
        return [(e.partition("=")[0], float(e.partition("=")[2])) for e in self.optimizers]


PROFILES = {
    "quick": {"seeds": (0,), "train.steps": 300, "train.batch_size": 256, "train.eval_every": 25,
              "train.eval_batch": 1024, "lr_grid": (1.0, 3.0), "test_prompts": 4000, "tune_prompts": 4000,
              "checkpoint_every": 300},
    "standard": {},
    "paper": {"seeds": (0, 1, 2, 3, 4), "train.steps": 20000, "train.batch_size": 20000,
              "train.resample_every": 100, "train.eval_every": 200, "checkpoint_every": 2000},
}  # fmt: skip


def tuned_pgd(dist, streams: Streams, steps: int, tune: int, test: int) -> tuple[float, list[float]]:
    """The test loss of ``steps``-step Σ⁻¹-preconditioned GD with step sizes fitted on a tuning batch."""
    P = torch.linalg.inv(dist.Sigma)

    def loss(etas, batch) -> float:
        w = preconditioned_gd(batch.X, batch.y, steps, P, list(etas))
        value = float(mean_query_loss(w, batch.x_query, batch.y_query)[-1])
        return value if math.isfinite(value) else 1e30

    old = dist.dtype
    dist.dtype = torch.float64
    tune_batch = dist.sample(tune, streams.generator("tune"))
    dist.dtype = old
    best = None
    for start in ([1.0] * steps, [0.5] * steps, [0.5 + 0.5 * i for i in range(steps)]):
        res = scipy.optimize.minimize(lambda e: loss(e, tune_batch), start, method="Nelder-Mead",
                                      options={"xatol": 1e-6, "fatol": 1e-10, "maxiter": 4000})  # fmt: skip
        if best is None or res.fun < best.fun:
            best = res
    test_batch = held_out_prompts(dist, streams, test, torch.float64)
    return loss(best.x, test_batch), [float(e) for e in best.x]


def build_model(cfg: OuterOptimizersConfig, streams: Streams) -> LinearSelfAttention:
    model = LinearSelfAttention(cfg.prompt.d, cfg.model, generator=streams.generator("init", "cpu"))
    for name in model.parameter_names():
        split_blocks(model, name)
    return model


def optimizer_spec(name: str, lr: float, cfg: OuterOptimizersConfig) -> OptimizerSpec:
    """Optimizer ``name`` at ``lr`` with the rest of ``train`` (betas, momentum, weight decay where it takes them;
    root-free methods get ``batch_size``; ManifoldAdam draws its sections from the seed's ``section`` stream)."""
    return OptimizerSpec.from_config(cfg.train, name, lr=lr)


def run(cfg: OuterOptimizersConfig, ctx: RunContext) -> dict:
    t0 = time.time()
    write_config(ctx, cfg, Streams(cfg.seeds[0], ctx.device))
    rows = Rows(ctx.name)
    seed_streams = [Streams(seed, ctx.device) for seed in cfg.seeds]
    dists = [make_distribution(cfg.prompt, st) for st in seed_streams]
    ctx.expect_models(len(cfg.base_lrs()) * len(cfg.lr_grid))
    for name, base in cfg.base_lrs():  # every (optimizer, lr) trained for all seeds together
        for mult in cfg.lr_grid:
            lr = base * mult * cfg.lr_scale()
            method = f"{name}@{lr:g}"
            opt = optimizer_spec(name, lr, cfg)
            runs = train_timed(ctx, cfg, method, lambda st: build_model(cfg, st), dists, cfg.train, seed_streams, opt)
            for seed, streams, dist, res in zip(cfg.seeds, seed_streams, dists, runs):
                test = evaluate_model(res["trainer"].model, dist, streams, cfg.test_prompts) if res["trainer"] else None
                add_run_rows(rows, name, lr, seed, res, test)
                final = res["evals"][-1]["eval_loss"] if res["evals"] and res["trainer"] else float("nan")
                ctx.print(f"seed {seed} {method:<24} final val {final:.4g}  {res['status'][:60]}")
            rows.write(ctx)
    for seed, streams, dist in zip(cfg.seeds, seed_streams, dists):
        pgd, etas = tuned_pgd(dist, streams, cfg.model.layers, cfg.tune_prompts, cfg.test_prompts)
        rows.add("tuned_pgd_sigma_inv", cfg.model.layers, seed, "test_loss", pgd)
        for i, e in enumerate(etas):
            rows.add("tuned_pgd_sigma_inv", cfg.model.layers, seed, "step_size", e, k=i + 1)
        rows.add("zero_predictor", 0, seed, "test_loss", zero_predictor_loss(cfg.prompt))
        rows.write(ctx)
    from experiments.reports.outer_optimizers import report  # the report module imports matplotlib

    summary = report(ctx.out_dir)
    summary["wall_time_s"] = time.time() - t0
    write_json(ctx.out_dir / "summary.json", summary)
    return summary


STUDY = Study(OuterOptimizersConfig, run, PROFILES)
