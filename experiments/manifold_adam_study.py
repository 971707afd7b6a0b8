"""manifold_adam (issue #6): a factorised LSA with Stiefel-constrained keys and queries, trained by ManifoldAdam.

Model: von Oswald et al.'s factorised LSA (``LSAConfig(mode="factorised", key_size=k)``), Q = W_Kᵀ W_Q and
P = W_P W_V, with W_K, W_Q (and, with ``constrain_value``, W_V) ∈ R^{k×(d+1)} having orthonormal rows. The
Stiefel manifold of :class:`icl.optim.ManifoldAdam` holds tall N×p matrices with YᵀY = I, and the model
stores these weights as one (L, H, k, d+1) tensor; so each (layer, head) block is handed to the optimizer as
its own (d+1)×k parameter Y = Wᵀ ∈ St(k, d+1) (:class:`experiments.optimizer_sweep.BlockParams` with
``transpose``; k ≤ d+1), initialised on the manifold with :func:`icl.optim.manifold_point` from the seed's
``init`` stream. W_P (and W_V when unconstrained) stay Euclidean in the same optimizer.

With k = d, W_K = W_Q = [I_d, 0] is a point of the manifold and gives von Oswald's Proposition 1 key-query
product, so the constrained model can still run GD (the step size then lives in P = W_P W_V); Q is a partial
isometry (k unit singular values), so a Σ⁻¹-shaped preconditioner is not representable and the task is the
isotropic one (d = 5, n = 20, x ~ N(0, I), w* ~ N(0, I)).

Methods, same seeds, data and initial weights (the unconstrained model starts at the same orthonormal point):

- ``adam_unconstrained``: torch Adam, β = (0.9, 0.99) (ManifoldAdam's default), no constraint;
- ``manifold_adam``: ManifoldAdam (Brantner 2023), Stiefel W_K, W_Q, Cayley retraction;
- ``projected_adam``: ProjectedRiemannianAdam (tangent projection, QR retraction, transport by projection);
- ``manifold_sgd`` and ``manifold_momentum``: ManifoldSGD with momentum 0 and 0.9.

Each has a small learning-rate grid (Adam-type: ``lr_grid``; SGD-type: ``sgd_lr_grid``); the lr with the best
mean final held-out loss is reported on ``test`` prompts. Recorded: held-out loss against steps and against
wall-clock seconds, the constraint violation max ‖YᵀY − I‖_F over the blocks during training (also measured,
not enforced, for the unconstrained model), and the tuned per-step GD reference (L steps, step sizes fitted on
a tuning batch: a point the constrained model can represent).

Profiles: quick (1 seed, 1 lr per method, 300 steps: ~1 minute), standard (3 seeds, 2 lrs each, 2000 steps,
~20 minutes on 2 idle cores), paper (no paper trains this model: 20000 steps, batch 4096, 5 seeds; ~2 CPU-hours,
minutes on a GPU with ``--device cuda``).
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
    train_timed,
)
from experiments.registry import Study
from experiments.study import Rows, StudyConfig, evaluate_model, held_out_prompts
from icl.config import ConfigError, spec
from icl.optim.manifolds import get_manifold
from icl.prompts import PromptConfig, zero_predictor_loss
from icl.runio import write_json
from icl.seeding import Streams
from icl.training import ModelSpec, OptimizerSpec, TrainConfig
from learned_optimizers import LSAConfig
from learned_optimizers.constraints import param_groups
from reference_optimizers import gradient_descent, mean_query_loss, one_layer_optimum

NAME = "manifold_adam"
REFERENCE_LR = 1e-2  # train.lr scales lr_grid and sgd_lr_grid, which are given for train.lr = 0.01
METHODS = ("adam_unconstrained", "manifold_adam", "projected_adam", "manifold_sgd", "manifold_momentum")
SGD_TYPE = ("manifold_sgd", "manifold_momentum")


@dataclass(frozen=True)
class ManifoldAdamConfig(StudyConfig):
    """The constrained-LSA study (defaults: the standard profile)."""

    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(d=5, n=20))
    model: LSAConfig = field(
        default_factory=lambda: LSAConfig(layers=2, mode="factorised", key_size=5, init_std=0.3, projection=True)
    )
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=2000, batch_size=1000, eval_every=50, eval_batch=4096, log_every=50, clip="global", clip_value=1.0
        )
    )
    methods: tuple[str, ...] = METHODS
    lr_grid: tuple[float, ...] = spec((3e-2, 1e-1), gt=0)
    sgd_lr_grid: tuple[float, ...] = spec((1e-2, 1e-1), gt=0)
    constrain_value: bool = False
    test_prompts: int = spec(20_000, ge=2)
    tune_prompts: int = spec(20_000, ge=2)
    monitor_every: int = spec(50, ge=1)

    def check(self) -> None:
        super().check()
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"methods {bad} are not among {', '.join(METHODS)}")
        if self.model.mode != "factorised":
            raise ConfigError("model.mode must be 'factorised' (W_K, W_Q on Stiefel)")
        k = self.model.key_size if self.model.key_size is not None else self.prompt.d + 1
        if k > self.prompt.d + 1:
            raise ConfigError(f"model.key_size = {k} must be <= d+1 = {self.prompt.d + 1} for St(k, d+1)")
        if self.train.optimizer != TrainConfig.optimizer:
            raise ConfigError(f"train.optimizer = {self.train.optimizer!r} is not used by this study, which trains "
                              "every method of `methods` (set methods=... to choose them)")
        if self.constrain_value and not self.model.projection:
            raise ConfigError("constrain_value needs model.projection = true (P = W_P W_V carries the scale)")


PROFILES = {
    "quick": {"seeds": (0,), "train.steps": 300, "train.batch_size": 256, "train.eval_every": 25,
              "train.eval_batch": 1024, "lr_grid": (1e-1,), "sgd_lr_grid": (1e-1,), "test_prompts": 4000,
              "tune_prompts": 4000, "checkpoint_every": 300, "monitor_every": 25},
    "standard": {},
    "paper": {"seeds": (0, 1, 2, 3, 4), "train.steps": 20000, "train.batch_size": 4096, "train.eval_every": 200,
              "checkpoint_every": 2000, "monitor_every": 200},
}  # fmt: skip


def constrained_names(cfg: ManifoldAdamConfig) -> tuple[str, ...]:
    return ("W_K", "W_Q", "W_V") if cfg.constrain_value else ("W_K", "W_Q")


def model_spec(cfg: ManifoldAdamConfig) -> ModelSpec:
    """The factorised LSA with per-block parameters; the constrained blocks (W_K, W_Q, and W_V with
    ``constrain_value``) start on St(k, d+1)."""
    return ModelSpec("lsa", cfg.prompt.d, cfg.model, constraints={n: "stiefel" for n in constrained_names(cfg)})


def stiefel_blocks(model) -> list:
    return [p for g in param_groups(model) if g.get("manifold") == "stiefel" for p in g["params"]]


def violation(params) -> float:
    """max over blocks of ‖YᵀY − I‖_F (float64)."""
    st = get_manifold("stiefel")
    return max(st.check(p.detach()) for p in params)


def optimizer_spec(method: str, lr: float, train: TrainConfig) -> OptimizerSpec:
    """The optimizer of ``method`` at ``lr``, with the rest of ``train`` where it takes it; the manifold ones get
    the Stiefel blocks as a group on that manifold, ManifoldAdam/SGD draw their sections from the seed's
    ``section`` stream."""
    if method == "adam_unconstrained":
        return OptimizerSpec.from_config(train, "adam", lr=lr, **({} if train.betas else {"betas": (0.9, 0.99)}))
    if method == "manifold_adam":
        return OptimizerSpec.from_config(train, "manifold_adam", lr=lr)
    if method == "projected_adam":
        return OptimizerSpec.from_config(train, "riemannian_adam", lr=lr)
    momentum = 0.9 if method == "manifold_momentum" else 0.0
    return OptimizerSpec.from_config(train, "manifold_sgd", lr=lr, momentum=momentum)


def tuned_gd(dist, streams: Streams, steps: int, tune: int, test: int) -> tuple[float, list[float]]:
    """Test loss of ``steps``-step GD with per-step step sizes fitted on a tuning batch."""

    def loss(etas, batch) -> float:
        v = float(mean_query_loss(gradient_descent(batch.X, batch.y, steps, list(etas)), batch.x_query,
                                  batch.y_query)[-1])  # fmt: skip
        return v if math.isfinite(v) else 1e30

    old = dist.dtype
    dist.dtype = torch.float64
    tune_batch = dist.sample(tune, streams.generator("tune"))
    dist.dtype = old
    res = min(
        (scipy.optimize.minimize(lambda e: loss(e, tune_batch), [s] * steps, method="Nelder-Mead",
                                 options={"xatol": 1e-6, "fatol": 1e-10, "maxiter": 4000}) for s in (0.5, 1.0)),
        key=lambda r: r.fun,
    )  # fmt: skip
    return loss(res.x, held_out_prompts(dist, streams, test, torch.float64)), [float(e) for e in res.x]


def run(cfg: ManifoldAdamConfig, ctx: RunContext) -> dict:
    t0 = time.time()
    write_config(ctx, cfg, Streams(cfg.seeds[0], ctx.device))
    rows = Rows(ctx.name)
    seed_streams = [Streams(seed, ctx.device) for seed in cfg.seeds]
    dists = [make_distribution(cfg.prompt, st) for st in seed_streams]
    spec = model_spec(cfg)
    ctx.expect_models(sum(len(cfg.sgd_lr_grid if m in SGD_TYPE else cfg.lr_grid) for m in cfg.methods))
    for method_name in cfg.methods:  # every (method, lr) trained for all seeds together
        for lr in cfg.sgd_lr_grid if method_name in SGD_TYPE else cfg.lr_grid:
            lr = lr * (cfg.train.lr / REFERENCE_LR)
            method = f"{method_name}@{lr:g}"
            build = lambda st: spec.build(st.generator("init", "cpu"))  # noqa: E731
            runs = train_timed(ctx, cfg, method, build, dists, cfg.train, seed_streams,
                               optimizer_spec(method_name, lr, cfg.train),
                               monitor=lambda m: violation(stiefel_blocks(m)),
                               monitor_every=cfg.monitor_every)  # fmt: skip
            for seed, streams, dist, res in zip(cfg.seeds, seed_streams, dists, runs):
                test = evaluate_model(res["trainer"].model, dist, streams, cfg.test_prompts) if res["trainer"] else None
                add_run_rows(rows, method_name, lr, seed, res, test)
                final = res["evals"][-1]["eval_loss"] if res["evals"] and res["trainer"] else float("nan")
                viol = res["samples"][-1][1] if res["samples"] else float("nan")
                ctx.print(f"seed {seed} {method:<28} final val {final:.4g}  violation {viol:.2e}  {res['status'][:50]}")
            rows.write(ctx)
    for seed, streams, dist in zip(cfg.seeds, seed_streams, dists):
        gd, etas = tuned_gd(dist, streams, cfg.model.layers, cfg.tune_prompts, cfg.test_prompts)
        rows.add("tuned_gd", cfg.model.layers, seed, "test_loss", gd)
        for i, e in enumerate(etas):
            rows.add("tuned_gd", cfg.model.layers, seed, "step_size", e, k=i + 1)
        rows.add("zero_predictor", 0, seed, "test_loss", zero_predictor_loss(cfg.prompt))
        opt1 = one_layer_optimum(dist.Sigma, cfg.prompt.n, cfg.prompt.w_prior, cfg.prompt.mean_noise_var())
        rows.add("theory_ahn_thm1_one_layer", 1, seed, "test_loss", opt1.loss)
        rows.write(ctx)
    from experiments.reports.manifold_adam import report  # the report module imports matplotlib

    summary = report(ctx.out_dir)
    summary["wall_time_s"] = time.time() - t0
    write_json(ctx.out_dir / "summary.json", summary)
    return summary


STUDY = Study(ManifoldAdamConfig, run, PROFILES)
