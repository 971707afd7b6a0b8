"""baselines (issue #3): query loss vs steps 1..8 of every classical reference optimizer, tuned fairly.

The learned models of the papers are judged against classical iterations, usually untuned (Dutta & Sra 2024's
notebooks fix η = 0.005, β = 0.9) and run on n − 1 context points (the off-by-one inherited from Ahn et al.'s
baseline code, see the research notes §1.6). This study gives every study a common, honest reference: on the
same held-out prompts (all n context points), in float64,

- gradient descent with the best constant η (``gd``) and the best per-step schedule η_1..η_T (``gd_schedule``),
- preconditioned GD with P = Σ⁻¹ (``pgd_sigma_inv``) and with Ahn et al.'s one-layer optimum P = A* = Γ⁻¹
  (``pgd_gamma_inv``; Ahn et al. 2023 Thm 1, for w* ~ N(0, Σ⁻¹) A* = n/(n+d+1)·Σ⁻¹),
- GD++ (von Oswald et al. 2023, App. A.10; η and γ), heavy ball and Nesterov (η and β),
- conjugate gradient with exact line search, Fletcher–Reeves (``cg_fr``, Dutta & Sra's CGD) and Polak–Ribière
  (``cg_pr``), plus ``cg_fr_19pts``: the same prompts with the last context point dropped, as in the notebooks,
- Newton (one exact step reaches least squares) and iterative Newton (Newton–Schulz, Fu et al.'s code scaling),
- the Krylov bound (``krylov_bound``: the best prompt-independent coefficients c_k of ŷ = Σ c_k x_qᵀ(PH)^{k−1}Pg,
  which caps GD with any schedule, heavy ball, Nesterov and the B_ℓ = 0 linear transformers; and
  ``krylov_bound_sigma_inv`` with P = Σ⁻¹, which caps Σ⁻¹-preconditioned GD and the preconditioned LSA),
- ``least_squares`` (the floor: 0 up to float64 round-off on noiseless prompts), the zero predictor (the trivial
  line), and ``ahn_thm1`` (the one-layer optimum's loss, at step 1).

Every tunable method is tuned *separately for every number of steps T* (objective: the mean query loss after T
steps, like a T-layer model trained for its depth) with :func:`reference_optimizers.tune` on a separate training
batch (stream ``tune``), then evaluated on the test prompts (stream ``test``); the Krylov coefficients are fitted
on their own, larger batch (stream ``krylov``). The per-step GD schedule starts from the Chebyshev step pattern
scaled by the tuned constant η (the constant step is a saddle of the per-step problem, see
:func:`gd_scaled_schedule`) and falls back to the constant step if that is better, so on the training batch it is
never worse than the constant step.

Datasets: ``ahn_dutta`` (d = 5, n = 20, Σ = U diag(1, 1, 1/4, 1/16, 1) Uᵀ with a Haar U per seed, w* ~ N(0, Σ⁻¹):
the eigenvalues of the Dutta/Ahn code, see notes §1.9) and ``isotropic`` (Σ = I, w* ~ N(0, I)); noiseless.
Loss: plain query MSE; log-loss = natural log of the mean over prompts (Dutta & Sra's y-axis).

No training is involved, so the profiles only differ in prompts, seeds and tuning budget: ``quick`` (1 seed,
2,000 test / 512 training prompts, small tuning budget; well under a minute), ``standard`` (3 seeds × 10,000 test
/ 2,048 training prompts, 50 tuning evaluations per free value; a few minutes on 2 idle cores), ``paper`` (5 seeds,
as in Dutta & Sra's plots, × 100,000 test / 16,384 training prompts, 100 evaluations per free value; about an hour
on one CPU core, dominated by tuning; ``--device cuda`` works but gains little at d = 5). ``--resume`` skips the
(dataset, seed) pairs already finished (``checkpoints/*.pt``).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from einops import einsum

from experiments.common import RunContext, make_distribution, write_config
from experiments.registry import register, register_report
from experiments.reporting import fmt, load_run, markdown_table, mean_ci, write_report
from experiments.study import Rows, StudyConfig, held_out_prompts
from icl.config import ConfigError, spec
from icl.plotting import plt, save_figure, set_theme
from icl.progress import bar
from icl.prompts import PromptConfig, zero_predictor_loss
from icl.runio import write_json
from icl.seeding import Streams
from reference_optimizers import (
    conjugate_gradient,
    gd_plus_plus,
    gradient_descent,
    heavy_ball,
    iterative_newton,
    krylov_bound,
    least_squares,
    moments,
    nesterov,
    newton,
    one_layer_optimum,
    preconditioned_gd,
    query_loss,
    step_schedule,
    tune,
)
from reference_optimizers._checks import DivergedError

NAME = "baselines"
DATASETS = ("ahn_dutta", "isotropic")
#: Dutta & Sra's notebooks, ``gd_loss_mean``: log(mean query MSE) of Fletcher–Reeves CGD after 1..4 steps on
#: the Ahn/Dutta data, computed on 19 of the 20 context points (research notes §1.6 [N]).
DUTTA_CGD = (0.75, 0.18, -0.74, -1.62)

ETA_GRID = tuple(float(v) for v in np.geomspace(0.05, 3.0, 13))
BETA_GRID = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
GAMMA_GRID = (0.0, 0.05, 0.1, 0.2, 0.3)

#: methods with prompt-independent scalar coefficients in the plain Krylov space (capped by krylov_bound)
PLAIN_KRYLOV = ("gd", "gd_schedule", "heavy_ball", "nesterov")
#: drawn dashed: bounds, the floor, the trivial line and theory
DASHED = ("krylov_bound", "krylov_bound_sigma_inv", "least_squares", "zero_predictor", "ahn_thm1")
ORDER = (
    "zero_predictor", "gd", "gd_schedule", "pgd_sigma_inv", "pgd_gamma_inv", "gd_plus_plus", "heavy_ball",
    "nesterov", "cg_fr", "cg_pr", "cg_fr_19pts", "newton", "iterative_newton", "krylov_bound",
    "krylov_bound_sigma_inv", "ahn_thm1", "least_squares",
)  # fmt: skip
LABELS = {
    "gd": "GD, tuned constant η",
    "gd_schedule": "GD, tuned per-step η_t",
    "pgd_sigma_inv": "preconditioned GD, P = Σ⁻¹ (tuned η)",
    "pgd_gamma_inv": "preconditioned GD, P = Γ⁻¹ = A* (tuned η)",
    "gd_plus_plus": "GD++ (tuned η, γ)",
    "heavy_ball": "heavy ball (tuned η, β)",
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
    "quick": {"seeds": (0,), "test_prompts": 2000, "train_prompts": 512, "krylov_prompts": 20_000, "tune_budget": 20},
    "standard": {},
    "paper": {
        "seeds": (0, 1, 2, 3, 4),
        "test_prompts": 100_000,
        "train_prompts": 16384,
        "krylov_prompts": 400_000,
        "tune_budget": 100,
    },
}


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
        "heavy_ball": (heavy_ball, {"eta": ETA_GRID, "beta": BETA_GRID}, {}),
        "nesterov": (nesterov, {"eta": ETA_GRID, "beta": BETA_GRID}, {}),
    }


def gd_scaled_schedule(X, y, steps: int, eta, base) -> torch.Tensor:
    """Gradient descent with steps η_t·base_t (the per-step schedule, reparametrised for tuning).

    On a quadratic GD steps commute, so the query loss is symmetric in (η_1, …, η_T) and the best constant step
    is a stationary point of the per-step problem: Powell's coordinate searches started there do not move. Tuning
    multipliers of a spread-out base pattern (Chebyshev steps) starts the search off that diagonal.
    """
    return gradient_descent(X, y, steps, [float(e) * b for e, b in zip(step_schedule(eta, steps), base)])


def chebyshev_pattern(prompts, T: int) -> list[float]:
    """Chebyshev step sizes 1/λ_t for the nodes λ_t of [a, b] (a, b: 10% quantile of λ_min(H), 90% of λ_max(H)),
    normalised to geometric mean 1: the shape of the classical optimal T-step schedule."""
    H, _ = moments(prompts.X, prompts.y)
    ev = torch.linalg.eigvalsh(H)
    a, b = float(ev[:, 0].quantile(0.1)), float(ev[:, -1].quantile(0.9))
    nodes = [(a + b) / 2 + (b - a) / 2 * math.cos(math.pi * (2 * t - 1) / (2 * T)) for t in range(1, T + 1)]
    steps = np.array([1 / max(v, 1e-12) for v in nodes])
    return [float(v) for v in steps / np.exp(np.log(steps).mean())]


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
    d, steps = pcfg.d, cfg.steps
    pre = f"{dataset}/"

    def add_loss(method: str, T: int, losses: torch.Tensor | None) -> None:
        if losses is None:
            rows.add(pre + method, T, seed, "diverged", 1.0)
            return
        m = float(losses.mean())
        rows.add(pre + method, T, seed, "test_loss", m)
        rows.add(pre + method, T, seed, "test_loss_stderr", float(losses.std() / math.sqrt(losses.numel())))
        rows.add(pre + method, T, seed, "log_test_loss", math.log(max(m, 1e-300)))

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
        rows.add(pre + "cg_fr", d, seed, "max_rel_err_vs_least_squares", rel)
    rel = float(((fixed_methods["newton"][:, 1] - w_ls).norm(dim=1) / w_ls.norm(dim=1).clamp_min(1e-300)).max())
    rows.add(pre + "newton", 1, seed, "max_rel_err_vs_least_squares", rel)

    theory = one_layer_optimum(dist.Sigma, pcfg.n, pcfg.w_prior, pcfg.mean_noise_var())
    rows.add(pre + "ahn_thm1", 1, seed, "test_loss", theory.loss)
    rows.add(pre + "ahn_thm1", 1, seed, "log_test_loss", math.log(theory.loss))
    rows.add(pre + "zero_predictor", 0, seed, "theory_loss", zero_predictor_loss(pcfg))

    # Krylov bounds, fitted on their own training prompts, evaluated on the test prompts
    eye = torch.eye(d, dtype=torch.float64)
    for name, P in (("krylov_bound", eye), ("krylov_bound_sigma_inv", torch.linalg.inv(dist.Sigma.double()))):
        kb = krylov_bound(kry, test, steps, preconditioner=P)
        for T in range(1, steps + 1):
            losses = _krylov_losses(kb, test, P, T)
            rows.add(pre + name, T, seed, "test_loss", float(kb.test_loss[T]))
            rows.add(pre + name, T, seed, "test_loss_stderr", float(losses.std() / math.sqrt(losses.numel())))
            rows.add(pre + name, T, seed, "log_test_loss", math.log(float(kb.test_loss[T])))
            rows.add(pre + name, T, seed, "train_loss", float(kb.train_loss[T]))
            rows.add(pre + name, T, seed, "monomial_check", abs(float(losses.mean()) / float(kb.test_loss[T]) - 1))

    # tuned methods, separately for every T
    specs = _tuned_specs(dist, pcfg)
    tuning = bar(len(specs) * steps, f"tune {dataset} s{seed}", quiet=ctx.quiet, unit="fit")
    for name, (method, grid, fixed) in specs.items():
        for T in range(1, steps + 1):
            tuning.set_postfix_str(f"{name} T={T}", refresh=False)
            n_free = len(grid)
            res = tune(method, train, T, grid, fixed=fixed, refine=cfg.tune_budget > 0,
                       maxfev=max(1, cfg.tune_budget * n_free))  # fmt: skip
            hp = {k: v for k, v in res.hyperparameters.items() if k in grid}
            add_loss(name, T, _losses(method, test, T, **fixed, **hp))
            rows.add(pre + name, T, seed, "train_loss", float(res.train_loss[T]))
            for k, v in hp.items():
                rows.add(pre + name, T, seed, f"hp:{k}", float(v))
            if name == "gd":  # the per-step schedule, see gd_scaled_schedule for why it starts off the diagonal
                base = chebyshev_pattern(train, T)
                sched = tune(gd_scaled_schedule, train, T, {"eta": [hp["eta"]]}, per_step=("eta",),
                             fixed={"base": base}, refine=cfg.tune_budget > 0,
                             maxfev=max(1, cfg.tune_budget * T))  # fmt: skip
                mult = sched.hyperparameters["eta"]
                mult = mult if isinstance(mult, list) else [mult] * T
                etas = [m * b for m, b in zip(mult, base)]
                train_loss = float(sched.train_loss[T])
                if not train_loss < float(res.train_loss[T]):  # the constant step is a schedule too
                    etas, train_loss = [hp["eta"]] * T, float(res.train_loss[T])
                add_loss("gd_schedule", T, _losses(gradient_descent, test, T, eta=etas))
                rows.add(pre + "gd_schedule", T, seed, "train_loss", train_loss)
                for t, e in enumerate(etas, start=1):
                    rows.add(pre + "gd_schedule", T, seed, f"hp:eta@{t}", float(e))
            tuning.update(1)
    tuning.close()
    return rows.rows


@register(NAME, "every classical reference optimizer (tuned) and the Krylov bound vs steps 1..8, d=5, n=20",
          BaselinesConfig, profiles=PROFILES)  # fmt: skip
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
    summary = report(ctx.out_dir)
    summary["wall_time_s"] = time.time() - t0
    write_json(ctx.out_dir / "summary.json", summary)
    ctx.print(summary["cgd_table"])
    ctx.print(f"run directory: {ctx.out_dir}")
    return summary


# ----------------------------------------------------------------------------------------------------- report


def _by(rows, metric: str) -> dict[tuple[str, str, int], list[float]]:
    """(dataset, method, T) -> per-seed values of ``metric``."""
    out: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in rows:
        if r["metric"] == metric:
            ds, m = r["method"].split("/", 1)
            out[(ds, m, r["depth"])].append(r["value"])
    return out


def _cell(values: list[float] | None, digits: int = 2) -> str:
    """'mean ± half-width of the 95% t-interval over seeds' ('–' when missing)."""
    if not values:
        return "–"
    m, lo, hi = mean_ci(values)
    if not math.isfinite(m):
        return "–"
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def figure(rows, cfg: BaselinesConfig, stem) -> list:
    """Log-loss vs steps, one panel per dataset; bounds, floor, theory and the trivial line dashed."""
    import seaborn as sns

    set_theme()
    logs = _by(rows, "log_test_loss")
    datasets = [d for d in cfg.datasets if any(k[0] == d for k in logs)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.2 * len(datasets), 5.0), squeeze=False)
    methods = [m for m in ORDER if any(k[1] == m for k in logs)]
    palette = dict(zip(methods, sns.color_palette("colorblind", 10) * 2))
    markers = dict(zip(methods, "osD^v<>phX*dP8s^o"))
    for ax, ds in zip(axes[0], datasets):
        for m in methods:
            Ts = sorted(k[2] for k in logs if k[0] == ds and k[1] == m and k[2] >= 1)
            if not Ts:
                continue
            stats = [mean_ci(logs[(ds, m, T)]) for T in Ts]
            mean = np.array([s[0] for s in stats])
            style = "--" if m in DASHED else (":" if m == "cg_fr_19pts" else "-")
            ax.plot(Ts, mean, style, marker=markers[m], ms=4, lw=1.3, color=palette[m], label=LABELS[m])
            if len(cfg.seeds) > 1:
                ax.fill_between(Ts, [s[1] for s in stats], [s[2] for s in stats], color=palette[m], alpha=0.2, lw=0)
        if ds == "ahn_dutta":
            ax.plot(range(1, 5), DUTTA_CGD, "x", color="black", ms=8, mew=2, label="Dutta & Sra notebook CGD (19 pts)")
        p = getattr(cfg, ds)
        title = (
            "Ahn/Dutta: Σ eig (1, 1, 1/4, 1/16, 1), w* ~ N(0, Σ⁻¹)"
            if ds == "ahn_dutta"
            else "isotropic: Σ = I, w* ~ N(0, I)"
        )
        ax.set_title(f"{title}; d = {p.d}, n = {p.n}", fontsize=9)
        ax.set_xlabel("steps")
        ax.set_ylabel("log(query MSE)")
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, LOG_FLOOR), hi)
    axes[0][-1].legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.text(
        0.01, -0.02,
        f"log of the mean query MSE over {cfg.test_prompts:,} held-out prompts per seed; line: mean over "
        f"{len(cfg.seeds)} seed(s) (rotations); band: 95% t-interval over seeds. Tuned methods are tuned for each "
        f"T on {cfg.train_prompts:,} separate prompts. Dashed: bounds, floor, theory, zero predictor. Least squares, "
        f"Newton and CG at T ≥ d reach float64 round-off (≈ e^−65) below the axis (cut at {LOG_FLOOR:g}).",
        fontsize=7, ha="left", va="top", wrap=True,
    )  # fmt: skip
    return save_figure(fig, stem)


@register_report(NAME)
def report(run_dir) -> dict:
    saved, rows = load_run(run_dir)
    cfg = BaselinesConfig.from_dict(saved["config"])
    figs = figure(rows, cfg, run_dir / "figures" / "log_loss_vs_steps")
    logs, losses, ses = _by(rows, "log_test_loss"), _by(rows, "test_loss"), _by(rows, "test_loss_stderr")
    trains = _by(rows, "train_loss")
    datasets = [d for d in cfg.datasets if any(k[0] == d for k in logs)]
    steps = list(range(1, cfg.steps + 1))
    seeds = sorted({r["seed"] for r in rows})

    def lg(ds, m, T):
        return mean_ci(logs.get((ds, m, T), []))[0]

    # main tables
    tables = []
    for ds in datasets:
        methods = [m for m in ORDER if any(k[0] == ds and k[1] == m for k in logs)]
        body = markdown_table(
            ["method", *[f"T={T}" for T in steps]],
            [[LABELS[m], *[_cell(logs.get((ds, m, T))) for T in steps]] for m in methods],
        )
        tables.append(f"### {ds}: log(query MSE) per step, mean ± 95% t-interval over seeds\n\n{body}")

    # the CGD comparison with Dutta & Sra's notebook numbers
    cg_rows, cg_summary = [], {}
    if "ahn_dutta" in datasets:
        for T in range(1, 5):
            if T > cfg.steps:
                break
            per_seed_se = []
            for m in ("cg_fr", "cg_fr_19pts"):
                ls_, se_ = losses.get(("ahn_dutta", m, T), []), ses.get(("ahn_dutta", m, T), [])
                per_seed_se.append(max((1.96 * s / v for v, s in zip(ls_, se_)), default=float("nan")))
            cg_rows.append([T, f"{DUTTA_CGD[T - 1]:.2f}", _cell(logs.get(("ahn_dutta", "cg_fr_19pts", T))),
                            f"{per_seed_se[1]:.3f}", _cell(logs.get(("ahn_dutta", "cg_fr", T))),
                            f"{per_seed_se[0]:.3f}", _cell(logs.get(("ahn_dutta", "krylov_bound", T))),
                            _cell(logs.get(("ahn_dutta", "gd_schedule", T)))])  # fmt: skip
            cg_summary[T] = {
                "published_19pts": DUTTA_CGD[T - 1],
                "ours_19pts": lg("ahn_dutta", "cg_fr_19pts", T),
                "ours_20pts": lg("ahn_dutta", "cg_fr", T),
                "krylov_bound": lg("ahn_dutta", "krylov_bound", T),
            }
    cgd_table = markdown_table(
        ["T", "Dutta & Sra notebook (19 pts, 1 seed, 1,000 prompts)", "ours, 19 pts", "± per seed (1.96 s.e.)",
         "ours, 20 pts", "± per seed (1.96 s.e.)", "Krylov bound (P = I)", "GD per-step tuned"],
        cg_rows,
    )  # fmt: skip

    # checks
    checks, summary_checks = [], {}
    for ds in datasets:
        viol = []
        caps = [(m, "krylov_bound") for m in PLAIN_KRYLOV] + [("pgd_sigma_inv", "krylov_bound_sigma_inv")]
        if ds == "ahn_dutta":
            caps.append(("pgd_gamma_inv", "krylov_bound_sigma_inv"))  # A* ∝ Σ⁻¹ for w* ~ N(0, Σ⁻¹)
        else:
            caps.append(("pgd_gamma_inv", "krylov_bound"))  # Σ = I: A* ∝ I
        worst = -math.inf
        for m, b in caps:
            for T in steps:
                lm, lb = losses.get((ds, m, T)), losses.get((ds, b, T))
                if not lm or not lb:
                    continue
                gap = float(np.mean(lb) / np.mean(lm) - 1)  # > 0: the method beats its bound
                worst = max(worst, gap)
                if gap > 1e-3:
                    viol.append(f"{m} T={T} ({gap:+.2%})")
        cg_vs_bound = [T for T in steps if (ds, "cg_fr", T) in losses and (ds, "krylov_bound", T) in losses
                       and np.mean(losses[(ds, "cg_fr", T)]) < np.mean(losses[(ds, "krylov_bound", T)])]  # fmt: skip
        sched_ok = all(
            np.mean(trains[(ds, "gd_schedule", T)]) <= np.mean(trains[(ds, "gd", T)]) * (1 + 1e-12)
            for T in steps if (ds, "gd", T) in trains
        )  # fmt: skip
        cg_err = max((r["value"] for r in rows if r["method"] == f"{ds}/cg_fr"
                      and r["metric"] == "max_rel_err_vs_least_squares"), default=float("nan"))  # fmt: skip
        nt_err = max((r["value"] for r in rows if r["method"] == f"{ds}/newton"
                      and r["metric"] == "max_rel_err_vs_least_squares"), default=float("nan"))  # fmt: skip
        thm1 = mean_ci(losses.get((ds, "ahn_thm1", 1), []))[0]
        pg1 = mean_ci(losses.get((ds, "pgd_gamma_inv", 1), []))[0]
        kb1 = mean_ci(losses.get((ds, "krylov_bound_sigma_inv", 1), []))[0]
        checks.append(
            f"- **{ds}**: the largest advantage of a shared-coefficient method over its Krylov bound on the test "
            f"prompts is {worst:+.3%} ({'none beyond 0.1%' if not viol else 'above 0.1%: ' + ', '.join(viol)}; "
            f"the bound is fitted on the training prompts, so a tuned method can beat it by sampling noise). "
            f"CG beats the plain Krylov bound at T = {cg_vs_bound}. CG after d = {getattr(cfg, ds).d} steps vs least "
            f"squares: max relative iterate error {fmt(cg_err)}; Newton after 1 step: {fmt(nt_err)}. Per-step GD "
            f"≤ constant-η GD on the training batch at every T: {sched_ok}. Step 1: Ahn et al. Thm 1 optimum "
            f"{fmt(thm1)}, preconditioned GD with A* (tuned η) {fmt(pg1)}, Krylov bound (Σ⁻¹) {fmt(kb1)}."
        )
        summary_checks[ds] = {"max_gain_over_krylov_bound": worst, "violations": viol,
                              "cg_beats_krylov_at": cg_vs_bound, "cg_vs_least_squares_rel_err": cg_err,
                              "newton_vs_least_squares_rel_err": nt_err,
                              "schedule_le_constant_on_train": bool(sched_ok), "ahn_thm1_loss": thm1,
                              "pgd_gamma_inv_step1": pg1}  # fmt: skip

    # tuned hyperparameters (mean over seeds)
    hp_rows = []
    for ds in datasets:
        for m in ("gd", "pgd_sigma_inv", "pgd_gamma_inv", "gd_plus_plus", "heavy_ball", "nesterov"):
            for T in (1, 2, 4, cfg.steps):
                if T > cfg.steps:
                    continue
                vals = {}
                for k in ("eta", "gamma", "beta"):
                    v = [r["value"] for r in rows if r["method"] == f"{ds}/{m}" and r["depth"] == T
                         and r["metric"] == f"hp:{k}"]  # fmt: skip
                    if v:
                        vals[k] = f"{k} = {np.mean(v):.3g}"
                if vals:
                    hp_rows.append([ds, m, T, ", ".join(vals.values())])
        T = cfg.steps
        sched = [np.mean([r["value"] for r in rows if r["method"] == f"{ds}/gd_schedule" and r["depth"] == T
                          and r["metric"] == f"hp:eta@{t}"]) for t in range(1, T + 1)]  # fmt: skip
        if sched and all(math.isfinite(s) for s in sched):
            hp_rows.append([ds, "gd_schedule", T, "η_t = " + ", ".join(f"{s:.3g}" for s in sched)])
    hp_table = markdown_table(["dataset", "method", "T", "tuned (mean over seeds)"], hp_rows)

    zero_theory = {ds: mean_ci([r["value"] for r in rows if r["method"] == f"{ds}/zero_predictor"
                                and r["metric"] == "theory_loss"])[0] for ds in datasets}  # fmt: skip
    zero_line = ", ".join(f"{ds} {fmt(v)}" for ds, v in zero_theory.items())
    a = cg_summary
    offbyone = ""
    if a:
        d19 = [v["ours_19pts"] - v["ours_20pts"] for v in a.values()]
        dpub19 = [v["published_19pts"] - v["ours_19pts"] for v in a.values()]
        dpub20 = [v["published_19pts"] - v["ours_20pts"] for v in a.values()]
        offbyone = (
            "- **The off-by-one.** The notebooks run CGD on `X = Z[0:N-1]`, 19 of the 20 context points, while the "
            "Memformer sees all 20. Dropping the point raises our CG log-loss by "
            + ", ".join(f"{v:+.3f}" for v in d19)
            + " at T = 1..4; published minus ours is "
            + ", ".join(f"{v:+.2f}" for v in dpub19)
            + " on 19 points and "
            + ", ".join(f"{v:+.2f}" for v in dpub20)
            + " on 20 points. The single-seed, 1,000-prompt published numbers carry a ±1.96 s.e. of about "
            "0.1–0.2 in log-loss (heavy-tailed squared errors: w* ~ N(0, Σ⁻¹) has a component of s.d. 4), so "
            "differences of this size are within their sampling noise; a Memformer compared with a 19-point CGD "
            "is compared with a slightly handicapped CGD (by the amounts above), not a different method."
        )
    cg_line = ", ".join(f"{v['ours_20pts']:.2f}" for v in a.values())
    cg19_line = ", ".join(f"{v['ours_19pts']:.2f}" for v in a.values())
    text = f"""# baselines: every classical reference optimizer vs steps (issue #3)

Setting: d = 5, n = 20, noiseless; datasets {", ".join(datasets)}; seeds {seeds} (each its own Haar rotation U
and prompts); {cfg.test_prompts:,} held-out test prompts per seed (stream `test`) and {cfg.train_prompts:,}
separate training prompts per seed (stream `tune`) on which every tunable method is tuned **for each T
separately** (`reference_optimizers.tune`: grid, then Nelder–Mead/Powell with {cfg.tune_budget} evaluations per
free value, objective: query MSE after T steps) and the Krylov bounds are fitted. All computations in float64, all
baselines on exactly the n = 20 context points the models see, except the `cg_fr_19pts` line. Loss: plain query
MSE (not ½·MSE); log-loss = natural log of the mean over prompts. Zero predictor (theory): {zero_line}.

Confidence intervals: table cells are mean ± half-width of the **95% Student-t interval across seeds** of the
per-seed log-loss (one seed: the value alone); the CGD table also gives, per seed, the **±1.96 standard errors over
prompts** of the log-loss (≈ 1.96·s.e./mean, the largest over seeds). The figure's band is the t-interval across
seeds.

![log-loss vs steps](figures/log_loss_vs_steps.png)

{chr(10).join(t + chr(10) for t in tables)}
## CGD: ours vs Dutta & Sra's notebooks (Ahn/Dutta data, log query MSE)

{cgd_table}

Measured CG (Fletcher–Reeves) log-loss at T = 1..4: **{cg_line}** on all 20 context points and **{cg19_line}**
on the first 19 (the notebooks' protocol), against the published 0.75, 0.18, −0.74, −1.62.

## Checks

{chr(10).join(checks)}

## Tuned hyperparameters

{hp_table}

## Discussion

{offbyone}
- **CG beats the Krylov bound**, which caps every method whose coefficients are shared by all prompts: GD with any
  step schedule, heavy ball, Nesterov, fixed preconditioners, and the linear transformers / CGD-like and LFOM
  Memformers with B_ℓ = 0 and scalar Γ (notes §1.3 [D]). CG chooses α_t, β_t per prompt (exact line search), so
  after T steps it picks the best polynomial *for each prompt*; a learned model with shared coefficients cannot,
  which is why the CGD-like Memformer stays above CGD in Fig. 1a. A learned model below the Krylov bound must be
  using something outside the class (full A_ℓ learned ≈ Σ⁻¹ preconditioning: compare with the Σ⁻¹ bound; B_ℓ ≠ 0
  as in GD++; per-token Γ).
- **Newton and least squares reach the floor in 1 step** (float64 round-off, below the figure's axis); CG reaches it
  after d = 5 steps (finite termination), iterative Newton after its linear phase of ≈ log₂ κ(S)² iterations.
- Tuned per-step GD is the shared-coefficient method closest to the bound (its polynomial has real roots 1/η_t; the
  bound's may not); heavy ball and Nesterov with constant η, β lie between constant-η GD and the bound.
- On the Ahn/Dutta data Σ⁻¹-preconditioning removes the conditioning problem altogether (and there A* ∝ Σ⁻¹, so
  `pgd_gamma_inv` and `pgd_sigma_inv` coincide after tuning η); at T = 1 both equal Ahn et al.'s optimum
  d(d+1)/(n+d+1) = 1.154 up to sampling noise. On isotropic data Σ⁻¹ = I, so these coincide with GD.
- **Tuning to the edge of stability does not generalise perfectly.** The tuned steps (per-step schedules, heavy
  ball) sit near the stability edge of the training batch; a rare test prompt with a larger λ_max(H) then grows
  instead of converging, and the log of the mean loss follows that one prompt. This is what the wide intervals of
  the tuned methods at T ≥ 6 are (one seed of three); the Krylov bound, fitted on many more prompts, does not show it.
- Dutta & Sra's momentum/NAG baselines (η = 0.005 or 0.03, β = 0.9 on the unnormalised gradient, 19 points) are
  untuned; the tuned ones here are the fair comparison.
"""
    write_report(run_dir, text)
    return {"experiment": NAME, "seeds": seeds, "datasets": datasets, "cgd": cg_summary, "checks": summary_checks,
            "log_loss": {ds: {m: [lg(ds, m, T) for T in steps] for m in ORDER
                              if any(k[0] == ds and k[1] == m for k in logs)} for ds in datasets},
            "cgd_table": cgd_table, "figures": [str(p.relative_to(run_dir)) for p in figs]}  # fmt: skip
