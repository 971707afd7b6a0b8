"""baselines (issue #3): query loss vs steps 1..8 of every classical reference optimizer, tuned fairly.

The learned models of the papers are judged against classical iterations, usually untuned (Dutta & Sra 2024's
notebooks fix η = 0.005, β = 0.9) and run on n − 1 context points (the off-by-one inherited from Ahn et al.'s
baseline code). This study gives every study a common, honest reference: on the
same held-out prompts (all n context points), in float64,

- gradient descent with the best constant η (``gd``) and the best per-step schedule η_1..η_T (``gd_schedule``),
- preconditioned GD with P = Σ⁻¹ (``pgd_sigma_inv``) and with Ahn et al.'s one-layer optimum P = A* = Γ⁻¹
  (``pgd_gamma_inv``; Ahn et al. 2023 Thm 1, for w* ~ N(0, Σ⁻¹) A* = n/(n+d+1)·Σ⁻¹),
  and the per-step Σ⁻¹ schedule (``pgd_schedule_sigma_inv``, Ahn et al.'s Thm 3 family A_ℓ = a_ℓΣ⁻¹),
- GD++ (von Oswald et al. 2023, App. A.10; η and γ), heavy ball (per-step η_t, β_t) and Nesterov (η and β),
- conjugate gradient with exact line search, Fletcher–Reeves (``cg_fr``, Dutta & Sra's CGD) and Polak–Ribière
  (``cg_pr``), plus ``cg_fr_19pts``: the same prompts with the last context point dropped, as in the notebooks,
- Newton (one exact step reaches least squares) and iterative Newton (Newton–Schulz, Fu et al.'s code scaling),
- the Krylov bound (``krylov_bound``: the best prompt-independent coefficients c_k of ŷ = Σ c_k x_qᵀ(PH)^{k−1}Pg,
  which caps GD with any schedule, heavy ball, Nesterov and the B_ℓ = 0 linear transformers; and
  ``krylov_bound_sigma_inv`` with P = Σ⁻¹, which caps Σ⁻¹-preconditioned GD and the preconditioned LSA),
- ``least_squares`` (the floor: 0 up to float64 round-off on noiseless prompts), the zero predictor (the trivial
  line), and ``ahn_thm1`` (the one-layer optimum's loss, at step 1).

Every tunable method is tuned *for every number of steps T* (objective: the mean query loss after T steps, like a
T-layer model trained for its depth) with :func:`reference_optimizers.tune` on a separate training batch (stream
``tune``), then evaluated on the test prompts (stream ``test``); constant hyperparameters start from the grid and
from depth T−1's values. The per-step schedules (``gd_schedule``, ``pgd_schedule_sigma_inv``, ``heavy_ball``) are
tuned by :func:`reference_optimizers.tune_depths`, started from the steps that attain the Krylov bound when its
polynomial has real roots (:func:`reference_optimizers.krylov_steps`) and from depth T−1's schedule extended by a
step that does nothing, so on the training batch a schedule is never worse than its own T−1 result. Refined
schedules can sit at the training batch's edge of stability, so the reported hyperparameters are, per T, the best
on a separate validation batch (stream ``val``, never the test prompts) among the tuned ones, the bound's steps
and the ones chosen at T−1 (extended by a zero step): never worse than T−1 there either. The Krylov
coefficients are fitted on their own, larger batch (stream ``krylov``) and evaluated on the test prompts: the one
meaning of "Krylov bound" (:mod:`experiments.convergence`). Beside each mean the rows carry the per-prompt
losses' median, 5%-trimmed mean, the spread of log(mean) over 5 disjoint parts of the test set and the share
of the worst 1% of prompts (:func:`experiments.convergence.tail_stats`): the deep losses are heavy-tailed.

Datasets: ``ahn_dutta`` (d = 5, n = 20, Σ = U diag(1, 1, 1/4, 1/16, 1) Uᵀ with a Haar U per seed, w* ~ N(0, Σ⁻¹):
the eigenvalues of the Dutta/Ahn code) and ``isotropic`` (Σ = I, w* ~ N(0, I)); noiseless.
Loss: plain query MSE; log-loss = natural log of the mean over prompts (Dutta & Sra's y-axis).

No training is involved, so the profiles only differ in prompts, seeds and tuning budget: ``quick`` (1 seed,
2,000 test / 512 training prompts, small tuning budget; well under a minute), ``standard`` (3 seeds × 10,000 test
/ 2,048 training / 20,000 validation prompts, 50 tuning evaluations per free value; measured 339 s of CPU time with
one thread, about 6 minutes on 2 quiet cores), ``paper`` (5 seeds,
as in Dutta & Sra's plots, × 100,000 test / 16,384 training prompts, 100 evaluations per free value; about an hour
on one CPU core, dominated by tuning; ``--device cuda`` works but gains little at d = 5). ``--resume`` skips the
(dataset, seed) pairs already finished (``checkpoints/*.pt``).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from einops import einsum

from experiments.common import RunContext, make_distribution, write_config
from experiments.configs.baselines import DATASETS, PROFILES, BaselinesConfig, ahn_dutta_prompt, isotropic_prompt  # noqa: F401  (re-exported)
from experiments.convergence import tail_stats
from experiments.registry import Study
from experiments.study import Rows, held_out_prompts
from icl.progress import bar
from icl.prompts import PromptConfig, zero_predictor_loss
from icl.runio import write_json
from icl.seeding import Streams
from icl.training import signals
from reference_optimizers import (
    conjugate_gradient,
    gd_plus_plus,
    gradient_descent,
    heavy_ball,
    iterative_newton,
    krylov_bound,
    krylov_steps,
    least_squares,
    moments,
    nesterov,
    newton,
    one_layer_optimum,
    preconditioned_gd,
    query_loss,
    tune,
    tune_depths,
)
from reference_optimizers._checks import DivergedError

NAME = "baselines"
#: Dutta & Sra's notebooks, ``gd_loss_mean``: log(mean query MSE) of Fletcher–Reeves CGD after 1..4 steps on
#: the Ahn/Dutta data, computed on 19 of the 20 context points (the authors' notebook output).
DUTTA_CGD = (0.75, 0.18, -0.74, -1.62)

ETA_GRID = tuple(float(v) for v in np.geomspace(0.05, 3.0, 13))
BETA_GRID = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
GAMMA_GRID = (0.0, 0.05, 0.1, 0.2, 0.3)

#: methods with prompt-independent scalar coefficients in the plain Krylov space (capped by krylov_bound)
PLAIN_KRYLOV = ("gd", "gd_schedule", "heavy_ball", "nesterov")
#: the same in the Σ⁻¹-preconditioned Krylov space (capped by krylov_bound_sigma_inv)
SIGMA_KRYLOV = ("pgd_sigma_inv", "pgd_schedule_sigma_inv")
#: per-step schedules tuned by tune_depths: never worse than depth T−1 on the training prompts
SCHEDULES = ("gd_schedule", "pgd_schedule_sigma_inv", "heavy_ball")
#: the test set is cut into this many disjoint parts for the spread of log(mean loss) (tail_stats)
TAIL_PARTS = 5
#: drawn dashed: bounds, the floor, the trivial line and theory
DASHED = ("krylov_bound", "krylov_bound_sigma_inv", "least_squares", "zero_predictor", "ahn_thm1")
ORDER = (
    "zero_predictor", "gd", "gd_schedule", "pgd_sigma_inv", "pgd_schedule_sigma_inv", "pgd_gamma_inv",
    "gd_plus_plus", "heavy_ball",
    "nesterov", "cg_fr", "cg_pr", "cg_fr_19pts", "newton", "iterative_newton", "krylov_bound",
    "krylov_bound_sigma_inv", "ahn_thm1", "least_squares",
)  # fmt: skip
LABELS = {
    "gd": "GD, tuned constant η",
    "gd_schedule": "GD, tuned per-step η_t",
    "pgd_sigma_inv": "preconditioned GD, P = Σ⁻¹ (tuned η)",
    "pgd_schedule_sigma_inv": "preconditioned GD, P = Σ⁻¹ (tuned per-step η_t)",
    "pgd_gamma_inv": "preconditioned GD, P = Γ⁻¹ = A* (tuned η)",
    "gd_plus_plus": "GD++ (tuned η, γ)",
    "heavy_ball": "heavy ball (tuned per-step η_t, β_t)",
    "nesterov": "Nesterov (tuned η, β)",
    "cg_fr": "CG Fletcher–Reeves",
    "cg_pr": "CG Polak–Ribière",
    "cg_fr_19pts": "CG FR on 19 points (notebook protocol)",
    "newton": "Newton",
    "iterative_newton": "iterative Newton (Newton–Schulz)",
    "krylov_bound": "Krylov bound (P = I)",
    "krylov_bound_sigma_inv": "Krylov bound (P = Σ⁻¹)",
    "least_squares": "least squares (floor)",
    "zero_predictor": "zero predictor",
    "ahn_thm1": "Ahn et al. Thm 1 one-layer optimum",
}
#: the lowest log-loss drawn; exact methods reach float64 round-off (≈ e^−65) and leave the axis there
LOG_FLOOR = -16.0


def _losses(method, prompts, T: int, **kw) -> torch.Tensor | None:
    """Per-prompt query losses (B,) after T steps, or None if the iteration diverges."""
    try:
        it = method(prompts.X, prompts.y, T, **kw)
    except DivergedError:
        return None
    return query_loss(it[:, T], prompts.x_query, prompts.y_query)


def _tuned_specs(dist, cfg_prompt: PromptConfig) -> dict[str, tuple]:
    """name -> (method, grid, fixed) for the constant-hyperparameter tuned methods."""
    Sigma = dist.Sigma.to(torch.float64)
    theory = one_layer_optimum(Sigma, cfg_prompt.n, cfg_prompt.w_prior, cfg_prompt.mean_noise_var())
    return {
        "gd": (gradient_descent, {"eta": ETA_GRID}, {}),
        "pgd_sigma_inv": (preconditioned_gd, {"eta": ETA_GRID}, {"P": torch.linalg.inv(Sigma)}),
        # the layer computes A*ᵀ g; A* is symmetric here (Ahn et al. Thm 1), so P = A* is preconditioned GD
        "pgd_gamma_inv": (preconditioned_gd, {"eta": ETA_GRID}, {"P": theory.A}),
        "gd_plus_plus": (gd_plus_plus, {"eta": ETA_GRID, "gamma": GAMMA_GRID}, {}),
        "nesterov": (nesterov, {"eta": ETA_GRID, "beta": BETA_GRID}, {}),
    }


def _schedule_specs(dist) -> dict[str, tuple]:
    """name -> (method, grid, fixed, the Krylov bound whose steps start the search) for the per-step schedules."""
    Sigma_inv = torch.linalg.inv(dist.Sigma.to(torch.float64))
    return {
        "gd_schedule": (gradient_descent, {"eta": ETA_GRID}, {}, "krylov_bound"),
        "pgd_schedule_sigma_inv": (preconditioned_gd, {"eta": ETA_GRID}, {"P": Sigma_inv}, "krylov_bound_sigma_inv"),
        "heavy_ball": (heavy_ball, {"eta": ETA_GRID, "beta": BETA_GRID}, {}, "krylov_bound"),
    }


def _as_schedule(value, T: int) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * T


def _krylov_losses(kb, prompts, P: torch.Tensor, T: int) -> torch.Tensor:
    """Per-prompt query losses (B,) of the Krylov predictor with the monomial coefficients fitted for depth T."""
    c = kb.coefficients_by_depth[T - 1]
    H, g = moments(prompts.X, prompts.y)
    v = einsum(P, g, "i j, b j -> b i")
    pred = torch.zeros_like(prompts.y_query)
    for k in range(T):
        pred = pred + float(c[k]) * einsum(prompts.x_query, v, "b i, b i -> b")
        v = einsum(P, einsum(v, H, "b j, b j i -> b i"), "i j, b j -> b i")
    return (pred - prompts.y_query) ** 2


def run_dataset(cfg: BaselinesConfig, ctx: RunContext, dataset: str, seed: int) -> list[dict]:
    """All methods on one (dataset, seed): the tidy rows."""
    rows = Rows(ctx.name)
    pcfg: PromptConfig = getattr(cfg, dataset)
    streams = Streams(seed, "cpu")
    dist = make_distribution(pcfg, streams)
    test = held_out_prompts(dist, streams, cfg.test_prompts, torch.float64)
    dist.dtype = torch.float64
    train = dist.sample(cfg.train_prompts, streams.generator("tune", "cpu"))
    kry = dist.sample(cfg.krylov_prompts, streams.generator("krylov", "cpu"))
    val = dist.sample(cfg.val_prompts, streams.generator("val", "cpu"))
    d, steps = pcfg.d, cfg.steps

    def add_loss(method: str, T: int, losses: torch.Tensor | None, mean: float | None = None) -> None:
        if losses is None or not bool(torch.isfinite(losses).all()):
            rows.add(method, T, seed, "diverged", 1.0, setting=dataset)
            return
        m = float(losses.mean()) if mean is None else mean
        rows.add(method, T, seed, "test_loss", m, setting=dataset)
        rows.add(method, T, seed, "test_loss_stderr", float(losses.std() / math.sqrt(losses.numel())), setting=dataset)
        rows.add(method, T, seed, "log_test_loss", math.log(max(m, 1e-300)), setting=dataset)
        tails = tail_stats(losses, parts=TAIL_PARTS)  # how heavy-tailed the per-prompt losses are
        for key in ("median", "trimmed_mean", "log_mean_parts_min", "log_mean_parts_max", "log_mean_parts_sd",
                    "top_share"):  # fmt: skip
            rows.add(method, T, seed, f"tail:{key}", getattr(tails, key), setting=dataset)

    # methods without hyperparameters: one trajectory gives every T
    yq, xq = test.y_query, test.x_query
    fixed_methods = {
        "cg_fr": conjugate_gradient(test.X, test.y, steps, "fletcher_reeves"),
        "cg_pr": conjugate_gradient(test.X, test.y, steps, "polak_ribiere"),
        "cg_fr_19pts": conjugate_gradient(test.X[:, :-1], test.y[:, :-1], steps, "fletcher_reeves"),
        "newton": newton(test.X, test.y, steps),
        "iterative_newton": iterative_newton(test.X, test.y, steps, scaling="code"),
    }
    for name, it in fixed_methods.items():
        ql = query_loss(it, xq, yq)
        for T in range(1, steps + 1):
            add_loss(name, T, ql[:, T])
    w_ls = least_squares(test.X, test.y)
    ls = query_loss(w_ls, xq, yq)
    zero = yq**2
    for T in range(1, steps + 1):
        add_loss("least_squares", T, ls)
        add_loss("zero_predictor", T, zero)
    # numeric checks: CG after d steps is least squares; Newton after one step is least squares
    if steps >= d:
        w_cg = fixed_methods["cg_fr"][:, d]
        rel = float(((w_cg - w_ls).norm(dim=1) / w_ls.norm(dim=1).clamp_min(1e-300)).max())
        rows.add("cg_fr", d, seed, "max_rel_err_vs_least_squares", rel, setting=dataset)
    rel = float(((fixed_methods["newton"][:, 1] - w_ls).norm(dim=1) / w_ls.norm(dim=1).clamp_min(1e-300)).max())
    rows.add("newton", 1, seed, "max_rel_err_vs_least_squares", rel, setting=dataset)

    theory = one_layer_optimum(dist.Sigma, pcfg.n, pcfg.w_prior, pcfg.mean_noise_var())
    rows.add("ahn_thm1", 1, seed, "test_loss", theory.loss, setting=dataset)
    rows.add("ahn_thm1", 1, seed, "log_test_loss", math.log(theory.loss), setting=dataset)
    rows.add("zero_predictor", 0, seed, "theory_loss", zero_predictor_loss(pcfg), setting=dataset)

    # Krylov bounds, fitted on their own training prompts (stream `krylov`), evaluated on the test prompts
    eye = torch.eye(d, dtype=torch.float64)
    Sigma_inv = torch.linalg.inv(dist.Sigma.double())
    bounds = {}
    for name, P in (("krylov_bound", eye), ("krylov_bound_sigma_inv", Sigma_inv)):
        kb = bounds[name] = krylov_bound(kry, test, steps, preconditioner=P)
        for T in range(1, steps + 1):
            losses = _krylov_losses(kb, test, P, T)
            add_loss(name, T, losses, mean=float(kb.test_loss[T]))  # the bound's own (Chebyshev-basis) number
            rows.add(name, T, seed, "train_loss", float(kb.train_loss[T]), setting=dataset)
            check = abs(float(losses.mean()) / float(kb.test_loss[T]) - 1)
            rows.add(name, T, seed, "monomial_check", check, setting=dataset)
            real = krylov_steps(kb.coefficients_by_depth[T - 1]) is not None
            rows.add(name, T, seed, "real_roots", float(real), setting=dataset)

    def scored(method, fixed: dict, hp: dict, T: int, prompts) -> float:
        losses = _losses(method, prompts, T, **fixed, **hp)
        return float(losses.mean()) if losses is not None and bool(torch.isfinite(losses).all()) else math.inf

    def choose(method, fixed: dict, T: int, candidates: list[dict]) -> dict:
        """The candidate with the lowest loss on the validation prompts (stream ``val``, never the test prompts):
        a schedule refined on the training prompts can sit at the edge of stability and lose on new prompts."""
        return min(candidates, key=lambda hp: scored(method, fixed, hp, T, val))

    def record(name: str, T: int, method, fixed: dict, hp: dict) -> None:
        add_loss(name, T, _losses(method, test, T, **fixed, **hp))
        rows.add(name, T, seed, "train_loss", scored(method, fixed, hp, T, train), setting=dataset)
        rows.add(name, T, seed, "val_loss", scored(method, fixed, hp, T, val), setting=dataset)
        for k, v in hp.items():
            if isinstance(v, list):
                for t, e in enumerate(v, start=1):
                    rows.add(name, T, seed, f"hp:{k}", float(e), k=t, setting=dataset)
            else:
                rows.add(name, T, seed, f"hp:{k}", float(v), setting=dataset)

    specs, schedules = _tuned_specs(dist, pcfg), _schedule_specs(dist)
    tuning = bar(len(specs) * steps + len(schedules), f"tune {dataset} s{seed}", quiet=ctx.quiet, unit="fit")
    # constant hyperparameters, tuned for every T (the previous T's values are a start beside the grid's); the
    # tuned values or the previous T's, whichever is better on the validation prompts
    for name, (method, grid, fixed) in specs.items():
        prev: list = []
        for T in range(1, steps + 1):
            tuning.set_postfix_str(f"{name} T={T}", refresh=False)
            res = tune(method, train, T, grid, fixed=fixed, refine=cfg.tune_budget > 0, starts=prev,
                       maxfev=max(1, cfg.tune_budget * len(grid)))  # fmt: skip
            hp = choose(method, fixed, T, [{k: res.hyperparameters[k] for k in grid}, *prev])
            record(name, T, method, fixed, hp)
            prev = [hp]
            tuning.update(1)
            signals.raise_if_requested(f"tuning the baselines of {dataset}, seed {seed}")
    # per-step schedules: tune_depths, started from the steps that attain the Krylov bound (when its polynomial has
    # real roots) and from depth T-1 extended by a step that does nothing (never worse than T-1 on the training
    # prompts); then, on the validation prompts, the best of that schedule, the bound's steps and the schedule
    # chosen at T-1 extended by a zero step, so the reported schedule is never worse than its own T-1 result there
    for name, (method, grid, fixed, bound) in schedules.items():
        tuning.set_postfix_str(name, refresh=False)
        starts = {}
        for T in range(1, steps + 1):
            etas = krylov_steps(bounds[bound].coefficients_by_depth[T - 1])
            if etas is not None:
                start = {"eta": [float(e) for e in etas]}
                starts[T] = [{**start, **{k: [0.0] * T for k in grid if k != "eta"}}]
        results = tune_depths(method, train, steps, grid, per_step=tuple(grid), fixed=fixed, starts=starts,
                              maxfev=max(1, cfg.tune_budget * len(grid) * steps))  # fmt: skip
        chosen: dict | None = None
        for T, res in enumerate(results, start=1):
            tuned = {k: _as_schedule(res.hyperparameters[k], T) for k in grid}
            extended = [{k: [*chosen[k], 0.0] for k in grid}] if chosen is not None else []
            chosen = choose(method, fixed, T, [tuned, *starts.get(T, []), *extended])
            record(name, T, method, fixed, chosen)
        tuning.update(1)
        signals.raise_if_requested(f"tuning the baselines of {dataset}, seed {seed}")
    tuning.close()
    return rows.rows


def run(cfg: BaselinesConfig, ctx: RunContext) -> dict:
    t0 = time.time()
    write_config(ctx, cfg, Streams(cfg.seeds[0], ctx.device))
    rows = Rows(ctx.name)
    ckpt_dir = ctx.out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for dataset in cfg.datasets:
        for seed in cfg.seeds:
            path = ckpt_dir / f"{dataset}-s{seed}.pt"
            if ctx.resume and path.exists():
                part = torch.load(path, weights_only=True)["rows"]
                ctx.print(f"{dataset} seed {seed}: resumed from {path.name}")
            else:
                t1 = time.time()
                part = run_dataset(cfg, ctx, dataset, seed)
                tmp = path.with_suffix(".tmp")
                torch.save({"rows": part}, tmp)
                tmp.replace(path)
                ctx.print(f"{dataset} seed {seed}: done in {time.time() - t1:.1f} s")
            rows.extend(part)
            rows.write(ctx)
    from experiments.reports.baselines import report  # the report module imports matplotlib

    summary = report(ctx.out_dir)
    summary["wall_time_s"] = time.time() - t0
    write_json(ctx.out_dir / "summary.json", summary)
    ctx.print(summary["cgd_table"])
    ctx.print(f"run directory: {ctx.out_dir}")
    return summary


STUDY = Study(BaselinesConfig, run, PROFILES)
