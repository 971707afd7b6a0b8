"""outer_optimizers (issue #7): which outer optimizer trains a 3-layer LSA best on Ahn/Dutta's data?

Setting (Ahn et al. 2023 §2.3; Dutta & Sra 2024 §1.4, with the code's Σ): d = 5, n = 20, x ~ N(0, Σ) with
Σ = U diag(1, 1, 1/4, 1/16, 1) Uᵀ (U Haar per seed), w* ~ N(0, Σ⁻¹), noiseless; a 3-layer sparse LSA
(Ahn eq. 8). The same model, data and seeds are trained with Adam, FAdam, RF-RMSProp, RF-AdamW and the
inverse-free Kronecker method SIRFShampoo (Lin et al., ICML 2024) by default (AdamW and ManifoldAdam on request,
``optimizers``), every one with the same annealing schedule (``train.schedule``, cosine to 0 by default), so that
they are compared at their converged losses and not at the noise floors of a constant rate.

The recipe every optimizer shares: the same steps, batch and schedule; β = ``train.betas`` (0.9, 0.99) for every
optimizer that takes β, and the same second-moment horizon for the two that name it otherwise (RF-RMSProp's
``lr_cov`` and SIRFShampoo's ``beta2``, both 1 − β₂, which is their default 0.01); weight decay ``train.weight_decay``
= 0 for all. Why, measured on seeds 0–2 and 3–5 with 4000-step cosine runs (log gap to the class optimum, per
seed): the optimizers' own defaults decay the weights (AdamW 0.01, FAdam 0.1, RF-AdamW 0.01), which moves their fixed
point off the loss's minimiser whatever the rate and however long they train (AdamW +0.11…+0.16, FAdam
+0.44…+0.61, RF-AdamW +0.55…+0.79 at the best rates, with β₂ = 0.99); without it they end within 0.04. Torch's Adam at
its β₂ = 0.999 is slower to settle (+0.06…+0.23 at 4000 steps, +0.01…+0.09 at 6000, within 0.02 at 8000); at 0.99
it ends within 0.02 at 4000. AdamW at weight decay 0 is Adam step for step, and ManifoldAdam on
Euclidean parameters is Adam (the previous study's "ManifoldAdam converges, Adam does not" was their default β₂),
so neither is run by default. 8000
steps (not 4000) leave the slowest seed a margin: FAdam's worst seed of 3–5 ends +0.039 at 4000, +0.009 at 8000.

Learning rates: each optimizer's rate is tuned on a grid (``NAME=BASE_LR`` entries of ``optimizers`` times
``lr_grid``); the rate with the lowest mean log final loss on the held-out ``val`` batch (never the test prompts;
a rate that diverged on any seed is out) is selected. With ``tune_steps`` ≥ ``train.steps`` (the standard profile)
every rate is run for the full length with the full schedule and the selected run is the reported one, so rates are
ranked at the length they are reported at (short runs favour rates too large for the long schedule); with a
shorter ``tune_steps`` the rates are tried by runs of that length, the schedule compressed, and the selected rate is
trained for ``train.steps``. While the selected rate is the smallest or largest tried, one more rate past that edge
(by the grid's ratio there) is run, at most ``LR_EXTENSIONS`` per optimizer; a rate still at an edge is named in the
report. Every run trains all seeds together (stacked).

Every model is reported on ``test_prompts`` float64 test prompts per seed that neither training nor selection saw,
beside its class optimum on the *same* prompts (:func:`experiments.convergence.class_gap`): the tuned
``layers``-step Σ⁻¹-preconditioned GD (per-step sizes, the family A_ℓ = a_ℓΣ⁻¹ of Ahn et al.'s Thm 3, which the
sparse LSA represents; tuned by :func:`reference_optimizers.tune` on ``tune_prompts`` training-law prompts, started
from the steps that attain the Σ⁻¹ Krylov bound), with the Σ⁻¹ Krylov bound (fitted on the same training-law
prompts, evaluated on the test prompts) beside it. Comparisons between optimizers are paired over seeds
(:func:`experiments.reporting.paired_verdict` on the per-seed log test loss): Lin et al.'s claim that root-free
methods match root-based ones is decided from the pairs (best root-free vs best root-based).

Every LSA weight is handed to the optimizers as one d×d matrix per layer
(:class:`experiments.optimizer_sweep.BlockParams`): SIRFShampoo gives dense Kronecker factors only to matrices
and falls back to its diagonal rule on order-4 tensors, so without the split it would not be a Kronecker method
here. The root-free methods get ``batch_size`` = the training batch (their Fisher scaling, Lin et al. §3).

Target: ``target_factor`` × the best mean final held-out loss across optimizers (default 1.1×); steps and
wall-clock seconds to reach it are read off the held-out curve (evaluated every ``train.eval_every`` steps).

Profiles: quick (one seed, 2 lrs per optimizer, short runs: ~1 minute), standard (3 seeds, 3 lrs per optimizer and up
to 2 extensions, every rate run for the full 8000 steps at batch 250; the committed run's CPU and wall time are in its
finished.json), paper (Ahn's budget: batch
20000 resampled every 100 steps, 20000 steps, 5 seeds: ~1 GPU-hour per optimizer on CPU, minutes on a GPU;
``--device cuda``).
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch

from experiments.common import RunContext, make_distribution, write_config
from experiments.configs.outer_optimizers import OPTIMIZER_NAMES, PROFILES, REFERENCE_LR, OuterOptimizersConfig  # noqa: F401  (re-exported)
from experiments.optimizer_sweep import add_run_rows, split_blocks, train_timed
from experiments.registry import Study
from experiments.study import Rows, held_out_prompts
from icl.prompts import PromptBatch, zero_predictor_loss
from icl.runio import write_json
from icl.seeding import Streams
from icl.training import OptimizerSpec, signals
from learned_optimizers import LinearSelfAttention
from reference_optimizers import krylov_bound, krylov_steps, preconditioned_gd, query_loss, tune

NAME = "outer_optimizers"
ROOT_FREE = ("rf_rmsprop", "rf_adamw", "sirfshampoo")
ROOT_BASED = ("adam", "adamw", "fadam", "manifold_adam")
#: the step-size grid of the tuned Σ⁻¹-PGD reference (refined per step by reference_optimizers.tune)
ETA_GRID = tuple(float(v) for v in np.geomspace(0.1, 3.0, 9))
#: the class optimum's name in rows and reports
OPTIMUM = "tuned_pgd_sigma_inv"
#: how many rates past the grid's edge are tried, one at a time, while the selected rate sits on an edge
LR_EXTENSIONS = 2


def class_optimum(dist, streams: Streams, layers: int, tune_count: int, test: PromptBatch) -> dict:
    """The sparse LSA's class optimum on ``test``: ``layers``-step Σ⁻¹-preconditioned GD with per-step sizes tuned
    on ``tune_count`` training-law prompts (stream ``tune``), started from the steps attaining the Σ⁻¹ Krylov bound
    (fitted on the same prompts, evaluated on ``test``). Returns the per-prompt test losses of both and the steps."""
    P = torch.linalg.inv(dist.Sigma.double())
    old = dist.dtype
    dist.dtype = torch.float64
    try:
        train = dist.sample(tune_count, streams.generator("tune", "cpu"))
    finally:
        dist.dtype = old
    kb = krylov_bound(train, test, layers, preconditioner=P)
    etas = krylov_steps(kb.coefficients_by_depth[-1])
    starts = [{"eta": [float(e) for e in etas]}] if etas is not None else []
    res = tune(preconditioned_gd, train, layers, {"eta": ETA_GRID}, per_step=("eta",), fixed={"P": P}, starts=starts)
    steps = res.hyperparameters["eta"]
    steps = steps if isinstance(steps, list) else [float(steps)] * layers
    w = preconditioned_gd(test.X, test.y, layers, P, steps)
    return {"pgd": query_loss(w[:, layers], test.x_query, test.y_query), "eta": steps,
            "krylov": float(kb.test_loss[layers]), "krylov_real_roots": etas is not None}  # fmt: skip


def per_prompt_losses(model: torch.nn.Module, test: PromptBatch) -> torch.Tensor:
    """(ŷ − y_q)² per test prompt, the model evaluated in float64 on the float64 test prompts."""
    m = copy.deepcopy(model).to("cpu").double().eval()
    with torch.no_grad():
        return (m(test.Z(), check=False) - test.y_query).square()


def build_model(cfg: OuterOptimizersConfig, streams: Streams) -> LinearSelfAttention:
    model = LinearSelfAttention(cfg.prompt.d, cfg.model, generator=streams.generator("init", "cpu"))
    for name in model.parameter_names():
        split_blocks(model, name)
    return model


#: optimizers whose second-moment horizon is a rate (1 − β₂) under another name -> that name
HORIZON = {"rf_rmsprop": "lr_cov", "sirfshampoo": "beta2"}


def optimizer_spec(name: str, lr: float, cfg: OuterOptimizersConfig) -> OptimizerSpec:
    """Optimizer ``name`` at ``lr`` with the rest of ``train`` (betas, momentum, weight decay where it takes them;
    RF-RMSProp and SIRFShampoo, which take no betas, get the same second-moment horizon as rate 1 − β₂ of
    ``train.betas``; root-free methods get ``batch_size``; ManifoldAdam draws its sections from the seed's
    ``section`` stream)."""
    extra = {HORIZON[name]: 1.0 - cfg.train.betas[1]} if name in HORIZON and cfg.train.betas is not None else {}
    return OptimizerSpec.from_config(cfg.train, name, lr=lr, **extra)


def select_lr(finals: dict[float, list[float]]) -> float:
    """The rate whose mean log final held-out loss over seeds is lowest (a diverged seed disqualifies a rate; if
    every rate diverged somewhere, the smallest rate)."""
    def score(vals: list[float]) -> float:
        ok = all(math.isfinite(v) and v > 0 for v in vals)
        return float(np.mean([math.log(v) for v in vals])) if ok and vals else math.inf

    scored = {lr: score(v) for lr, v in finals.items()}
    best = min(scored, key=lambda lr: (scored[lr], lr))
    return best if math.isfinite(scored[best]) else min(finals)


def next_rate(finals: dict[float, list[float]]) -> float | None:
    """The rate to try next so that the selected one is bracketed, or None when it is.

    The selected rate (:func:`select_lr`) is bracketed when a smaller and a larger rate were tried (a rate that
    diverged on some seed brackets from above). At the largest rate tried the next one is that rate times the
    grid's ratio at that end (3 for a one-rate grid), at the smallest it is divided by it. Every rate diverged:
    None (the grid's smallest is reported; lower the base rate).
    """
    lrs = sorted(finals)
    best = select_lr(finals)
    if not all(math.isfinite(v) for v in finals[best]):
        return None
    if best == lrs[-1]:
        return best * (lrs[-1] / lrs[-2] if len(lrs) > 1 else 3.0)
    if best == lrs[0]:
        return best / (lrs[1] / lrs[0])
    return None


def run(cfg: OuterOptimizersConfig, ctx: RunContext) -> dict:
    t0 = time.time()
    write_config(ctx, cfg, Streams(cfg.seeds[0], ctx.device))
    rows = Rows(ctx.name)
    seed_streams = [Streams(seed, ctx.device) for seed in cfg.seeds]
    dists = [make_distribution(cfg.prompt, st) for st in seed_streams]
    tests = [held_out_prompts(dist, st, cfg.test_prompts, torch.float64) for dist, st in zip(dists, seed_streams)]
    tune_train = cfg.tune_train()
    full = tune_train.steps >= cfg.train.steps  # the selection runs are the final runs: one length ranks them
    # at most: the grid, the extensions and (with shorter tuning runs) the final run, per optimizer
    ctx.expect_models(len(cfg.base_lrs()) * (len(cfg.lr_grid) + LR_EXTENSIONS + (0 if full else 1)))
    for name, base in cfg.base_lrs():  # every run trains all seeds together
        finals: dict[float, list[float]] = {}
        trials: dict[float, list[dict]] = {}
        pending, extensions = [base * mult * cfg.lr_scale() for mult in cfg.lr_grid], 0
        while pending:  # one run per rate (all seeds), scored by its final loss on the held-out `val` batch
            lr = pending.pop(0)
            tag = f"{name}@{lr:g}" if full else f"tune-{name}@{lr:g}"
            runs = train_timed(ctx, cfg, tag, lambda st: build_model(cfg, st), dists, tune_train, seed_streams,
                               optimizer_spec(name, lr, cfg))  # fmt: skip
            trials[lr] = runs
            finals[lr] = [r["evals"][-1]["eval_loss"] if r["evals"] and r["trainer"] else math.inf for r in runs]
            for seed, v in zip(cfg.seeds, finals[lr]):
                rows.add(name, 0, seed, "tune_final_val_loss", v, lr=lr)
            beyond = next_rate(finals) if not pending and extensions < LR_EXTENSIONS else None
            if beyond is not None:  # bracket the selected rate: one more rate past the edge it sits on
                pending, extensions = [beyond], extensions + 1
        lr = select_lr(finals)
        runs = trials[lr] if full else train_timed(
            ctx, cfg, f"{name}@{lr:g}", lambda st: build_model(cfg, st), dists, cfg.train, seed_streams,
            optimizer_spec(name, lr, cfg))  # fmt: skip
        for seed, test, res in zip(cfg.seeds, tests, runs):
            losses = per_prompt_losses(res["trainer"].model, test) if res["trainer"] else None
            add_run_rows(rows, name, lr, seed, res)
            if losses is not None and bool(torch.isfinite(losses).all()):
                rows.add(name, 0, seed, "test_loss", float(losses.mean()), lr=lr)
                rows.add(name, 0, seed, "test_loss_stderr", float(losses.std() / math.sqrt(losses.numel())), lr=lr)
            final = res["evals"][-1]["eval_loss"] if res["evals"] and res["trainer"] else float("nan")
            ctx.print(f"seed {seed} {name}@{lr:g}: final val {final:.4g}  {res['status'][:60]}")
        rows.write(ctx)
    for seed, streams, dist, test in zip(cfg.seeds, seed_streams, dists, tests):
        signals.raise_if_requested(f"tuning the class optimum of seed {seed}")
        opt = class_optimum(dist, streams, cfg.model.layers, cfg.tune_prompts, test)
        rows.add(OPTIMUM, cfg.model.layers, seed, "test_loss", float(opt["pgd"].mean()))
        for i, e in enumerate(opt["eta"]):
            rows.add(OPTIMUM, cfg.model.layers, seed, "step_size", e, k=i + 1)
        rows.add("krylov_bound_sigma_inv", cfg.model.layers, seed, "test_loss", opt["krylov"])
        rows.add("krylov_bound_sigma_inv", cfg.model.layers, seed, "real_roots", float(opt["krylov_real_roots"]))
        rows.add("zero_predictor", 0, seed, "test_loss", zero_predictor_loss(cfg.prompt))
        rows.write(ctx)
    from experiments.reports.outer_optimizers import report  # the report module imports matplotlib

    summary = report(ctx.out_dir)
    summary["wall_time_s"] = time.time() - t0
    write_json(ctx.out_dir / "summary.json", summary)
    return summary


STUDY = Study(OuterOptimizersConfig, run, PROFILES)
