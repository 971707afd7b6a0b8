"""The report of :mod:`experiments.baselines`."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from experiments.baselines import (
    DASHED,
    DUTTA_CGD,
    LABELS,
    LOG_FLOOR,
    NAME,
    ORDER,
    PLAIN_KRYLOV,
    SCHEDULES,
    SIGMA_KRYLOV,
    TAIL_STRETCH,
    BaselinesConfig,
)
from experiments.convergence import class_gap
from experiments.reporting import coinciding, distinct_colours, finish_report, fmt, markdown_table, mean_ci, open_report
from icl.plotting import plt, save_figure, set_theme

#: every tuned method, in the order of the tables
TUNED = ("gd", "gd_schedule", "pgd_sigma_inv", "pgd_schedule_sigma_inv", "pgd_gamma_inv", "gd_plus_plus", "heavy_ball",
         "nesterov")  # fmt: skip
#: not drawn: below the axis (float64 round-off after one step) or the same as CG Fletcher–Reeves to the eye
NOT_DRAWN = ("newton", "least_squares", "cg_pr")
#: curves within this (log-loss) of each other at every T are said to coincide on the figure
COINCIDE_LOG = 0.02
#: a per-step schedule within this (log) of its Krylov bound attains it
ATTAIN_TOL = 0.05
#: the methods of the heavy-tail table
TAILS = ("gd_schedule", "pgd_schedule_sigma_inv", "gd_plus_plus", "heavy_ball", "cg_fr", "krylov_bound",
         "krylov_bound_sigma_inv")

# ----------------------------------------------------------------------------------------------------- report


def _by(rows, metric: str) -> dict[tuple[str, str, int], list[float]]:
    """(dataset, method, T) -> per-seed values of ``metric``."""
    out: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in rows:
        if r["metric"] == metric:
            out[(r["setting"], r["method"], r["depth"])].append(r["value"])
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


def _groups(pairs: list[tuple[str, str]]) -> list[list[str]]:
    """The connected groups of coinciding pairs, in the order of ORDER."""
    groups: list[set[str]] = []
    for a, b in pairs:
        hit = [g for g in groups if a in g or b in g]
        merged = set().union({a, b}, *hit)
        groups = [g for g in groups if g not in hit] + [merged]
    return [sorted(g, key=ORDER.index) for g in sorted(groups, key=lambda g: min(ORDER.index(m) for m in g))]


def figure(rows, cfg: BaselinesConfig, stem) -> list:
    """Log-loss vs steps, one panel per dataset; bounds, floor, theory and the trivial line dashed."""
    set_theme()
    logs = _by(rows, "log_test_loss")
    datasets = [d for d in cfg.datasets if any(k[0] == d for k in logs)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.2 * len(datasets), 5.0), squeeze=False)
    methods = [m for m in ORDER if any(k[1] == m for k in logs) and m not in NOT_DRAWN]
    black = ("cg_fr_19pts", "ahn_thm1")  # drawn in black: the palette keeps at most 13 well-separated colours
    palette = dict(zip([m for m in methods if m not in black], distinct_colours(len(methods) - len(black))))
    palette.update({m: "black" for m in black})
    markers = dict(zip(methods, "osD^v<>phX*dP8s^o<>HD"))
    for ax, ds in zip(axes[0], datasets):
        drawn = {}
        for m in methods:
            Ts = sorted(k[2] for k in logs if k[0] == ds and k[1] == m and k[2] >= 1)
            if not Ts:
                continue
            stats = [mean_ci(logs[(ds, m, T)]) for T in Ts]
            mean = np.array([s[0] for s in stats])
            drawn[m] = (Ts, mean)
            style = "--" if m in DASHED else (":" if m == "cg_fr_19pts" else "-")
            ms = 9 if m == "ahn_thm1" else 4
            ax.plot(Ts, mean, style, marker=markers[m], ms=ms, lw=1.3, color=palette[m], label=LABELS[m])
            if len(cfg.seeds) > 1:
                ax.fill_between(Ts, [s[1] for s in stats], [s[2] for s in stats], color=palette[m], alpha=0.2, lw=0)
        groups = _groups(coinciding({m: c for m, c in drawn.items() if len(c[0]) > 1}, COINCIDE_LOG))
        if groups:
            ax.text(0.0, -0.13, f"coincide (|Δ log| ≤ {COINCIDE_LOG:g} at every T):\n"
                    + "\n".join(" = ".join(LABELS[m] for m in g) for g in groups), transform=ax.transAxes,
                    fontsize=6.5, va="top", ha="left")  # fmt: skip
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
        0.01, -0.17,
        f"log of the mean query MSE over {cfg.test_prompts:,} held-out prompts per seed; line: mean over "
        f"{len(cfg.seeds)} seed(s) (rotations); band: 95% t-interval over seeds. Tuned methods are tuned for each "
        f"T on {cfg.train_prompts:,} separate tail-weighted prompts (chosen on {cfg.val_prompts:,} tail-weighted "
        "validation prompts; the Krylov bounds are fitted on tail-weighted prompts too). Dashed: "
        "bounds, theory, zero predictor. Least squares and Newton "
        f"(not drawn) and CG at T ≥ d reach float64 round-off (≈ e^−65) below the axis (cut at {LOG_FLOOR:g}); CG "
        "Polak–Ribière (not drawn) is in the tables. Curves that coincide are listed in each panel.",
        fontsize=7, ha="left", va="top", wrap=True,
    )  # fmt: skip
    return save_figure(fig, stem)


def report(run_dir) -> dict:
    run = open_report(run_dir, BaselinesConfig)
    run_dir, cfg, rows, seeds = run.run_dir, run.config, run.rows, run.seeds
    figs = figure(rows, cfg, run_dir / "figures" / "log_loss_vs_steps")
    logs, losses, ses = _by(rows, "log_test_loss"), _by(rows, "test_loss"), _by(rows, "test_loss_stderr")
    datasets = [d for d in cfg.datasets if any(k[0] == d for k in logs)]
    steps = list(range(1, cfg.steps + 1))

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
        caps = [(m, "krylov_bound") for m in PLAIN_KRYLOV] + [(m, "krylov_bound_sigma_inv") for m in SIGMA_KRYLOV]
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
        # monotone in T: the validation loss (on which the candidates were chosen) and the test log-loss
        vals = _by(rows, "val_loss")
        rises_val = {m: [T for T in steps[1:] if (ds, m, T) in vals and np.mean(vals[(ds, m, T)])
                         > np.mean(vals[(ds, m, T - 1)]) * (1 + 1e-12)] for m in TUNED}  # fmt: skip
        rises_test = {m: [T for T in steps[1:] if (ds, m, T) in logs and (ds, m, T - 1) in logs
                          and lg(ds, m, T) > lg(ds, m, T - 1)] for m in TUNED}  # fmt: skip
        sched_ok = not any(rises_val[m] for m in SCHEDULES)
        # the per-step schedules against the bound of their class, per T (mean over seeds of the log gap)
        attain = {}
        for m, b in (("gd_schedule", "krylov_bound"), ("pgd_schedule_sigma_inv", "krylov_bound_sigma_inv"),
                     ("heavy_ball", "krylov_bound")):
            real = _by(rows, "real_roots")
            g = [(T, class_gap(lg(ds, m, T), lg(ds, b, T), ATTAIN_TOL, LABELS[b]),
                  bool(np.all(real.get((ds, b, T), [0.0])))) for T in steps if (ds, m, T) in logs]  # fmt: skip
            attain[m] = g
        attain_txt = "; ".join(
            f"{LABELS[m]}: within {ATTAIN_TOL:g} of its bound at T = {[T for T, g, _ in gs if not g.flagged]}, "
            f"further at T = {[f'{T} ({g.gap:+.2f})' for T, g, _ in gs if g.flagged]} (the bound's polynomial has "
            f"real roots in every seed at T = {[T for T, _, r in gs if r]})" for m, gs in attain.items())  # fmt: skip
        rises_txt = ", ".join(f"{LABELS[m]} at T = {v}" for m, v in rises_test.items() if v) or "none"
        cg_err = max((r["value"] for r in rows if r["setting"] == ds and r["method"] == "cg_fr"
                      and r["metric"] == "max_rel_err_vs_least_squares"), default=float("nan"))  # fmt: skip
        nt_err = max((r["value"] for r in rows if r["setting"] == ds and r["method"] == "newton"
                      and r["metric"] == "max_rel_err_vs_least_squares"), default=float("nan"))  # fmt: skip
        thm1 = mean_ci(losses.get((ds, "ahn_thm1", 1), []))[0]
        pg1 = mean_ci(losses.get((ds, "pgd_gamma_inv", 1), []))[0]
        kb1 = mean_ci(losses.get((ds, "krylov_bound_sigma_inv", 1), []))[0]
        checks.append(
            f"- **{ds}**: the largest advantage of a shared-coefficient method over its Krylov bound on the test "
            f"prompts is {worst:+.3%} ({'none beyond 0.1%' if not viol else 'above 0.1%: ' + ', '.join(viol)}; "
            f"the bound is fitted on the training prompts, so a tuned method can beat it by sampling noise). "
            f"CG beats the plain Krylov bound at T = {cg_vs_bound}. CG after d = {getattr(cfg, ds).d} steps vs least "
            f"squares: max relative iterate error {fmt(cg_err)}; Newton after 1 step: {fmt(nt_err)}. Step 1: Ahn "
            f"et al. Thm 1 optimum {fmt(thm1)}, preconditioned GD with A* (tuned η) {fmt(pg1)}, Krylov bound (Σ⁻¹) "
            f"{fmt(kb1)}. Per-step schedules never worse than their T−1 result on the validation prompts: "
            f"{sched_ok}. Mean test log-loss above the T−1 value: {rises_txt}. Bound attainment (log gap, mean over "
            f"seeds): {attain_txt}."
        )
        summary_checks[ds] = {"max_gain_over_krylov_bound": worst, "violations": viol,
                              "cg_beats_krylov_at": cg_vs_bound, "cg_vs_least_squares_rel_err": cg_err,
                              "newton_vs_least_squares_rel_err": nt_err,
                              "schedules_monotone_on_val": bool(sched_ok), "test_rises": rises_test,
                              "gap_to_bound": {m: {T: g.gap for T, g, _ in gs} for m, gs in attain.items()},
                              "ahn_thm1_loss": thm1,
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
                    v = [r["value"] for r in rows if r["setting"] == ds and r["method"] == m and r["depth"] == T
                         and r["metric"] == f"hp:{k}" and r["k"] is None]  # fmt: skip
                    if v:
                        vals[k] = f"{k} = {np.mean(v):.3g}"
                if vals:
                    hp_rows.append([ds, m, T, ", ".join(vals.values())])
        T = cfg.steps
        sched = [np.mean([r["value"] for r in rows if r["setting"] == ds and r["method"] == "gd_schedule"
                          and r["depth"] == T and r["metric"] == "hp:eta" and r["k"] == t])
                 for t in range(1, T + 1)]  # fmt: skip
        if sched and all(math.isfinite(s) for s in sched):
            hp_rows.append([ds, "gd_schedule", T, "η_t = " + ", ".join(f"{s:.3g}" for s in sched)])
        for m, k in (("pgd_schedule_sigma_inv", "eta"), ("heavy_ball", "eta"), ("heavy_ball", "beta")):
            sched = [np.mean([r["value"] for r in rows if r["setting"] == ds and r["method"] == m and r["depth"] == T
                              and r["metric"] == f"hp:{k}" and r["k"] == t]) for t in range(1, T + 1)]  # fmt: skip
            if sched and all(math.isfinite(v) for v in sched):
                hp_rows.append([ds, m, T, f"{k}_t = " + ", ".join(f"{v:.3g}" for v in sched)])
    hp_table = markdown_table(["dataset", "method", "T", "tuned (mean over seeds)"], hp_rows)

    # heavy tails: per-prompt statistics beside the mean (means over seeds)
    tail_rows = []
    tails = {key: _by(rows, f"tail:{key}") for key in ("median", "trimmed_mean", "log_mean_parts_min",
                                                        "log_mean_parts_max", "top_share")}  # fmt: skip
    for ds in datasets:
        for T in sorted({min(4, cfg.steps), cfg.steps}):
            for m in TAILS:
                if (ds, m, T) not in logs or (ds, m, T) not in tails["median"]:
                    continue
                t = {k: float(np.mean(v[(ds, m, T)])) for k, v in tails.items()}
                tail_rows.append([ds, T, LABELS[m], f"{lg(ds, m, T):.2f}", f"{math.log(t['median']):.2f}",
                                  f"{math.log(t['trimmed_mean']):.2f}",
                                  f"[{t['log_mean_parts_min']:.2f}, {t['log_mean_parts_max']:.2f}]",
                                  f"{t['top_share']:.0%}"])  # fmt: skip
    tail_table = markdown_table(["dataset", "T", "method", "log mean", "log median", "log 5%-trimmed mean",
                                 "log mean on 5 parts of the test set (range)", "worst 1% share"], tail_rows)

    zero_theory = {ds: mean_ci([r["value"] for r in rows if r["setting"] == ds and r["method"] == "zero_predictor"
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
separately** (`reference_optimizers.tune`, the per-step schedules by `reference_optimizers.tune_depths` started from
the Krylov bound's steps: grid, then Nelder–Mead/Powell with {cfg.tune_budget} evaluations per free value, objective:
query MSE after T steps), then chosen per T on {cfg.val_prompts:,} validation prompts (stream `val`) among the tuned
values, the starts and the previous T's extended by a zero step. The training and validation batches are
tail-weighted (`reference_optimizers.tail_weighted`, inputs of half the prompts stretched by {TAIL_STRETCH:.3g}, every
prompt weighted by its Gaussian density ratio): the weighted mean estimates the plain law's mean while the rare
prompts with an extreme λ_max(H), which carry a deep schedule's loss, are sampled. The Krylov bounds are fitted on
{cfg.krylov_prompts:,} tail-weighted prompts (stream `krylov`, weighted least squares) and evaluated on the test
prompts. All computations in float64,
all baselines on exactly the n = 20 context points the models see, except the `cg_fr_19pts` line. Loss: plain query
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

## Heavy tails ({cfg.test_prompts:,} test prompts per seed, cut into 5 disjoint parts; means over seeds)

{tail_table}

## Discussion

{offbyone}
- **CG beats the Krylov bound**, which caps every method whose coefficients are shared by all prompts: GD with any
  step schedule, heavy ball, Nesterov, fixed preconditioners, and the linear transformers / CGD-like and LFOM
  Memformers with B_ℓ = 0 and scalar Γ (Dutta & Sra Props. 1–2). CG chooses α_t, β_t per prompt (exact line search), so
  after T steps it picks the best polynomial *for each prompt*; a learned model with shared coefficients cannot,
  which is why the CGD-like Memformer stays above CGD in Fig. 1a. A learned model below the Krylov bound must be
  using something outside the class (full A_ℓ learned ≈ Σ⁻¹ preconditioning: compare with the Σ⁻¹ bound; B_ℓ ≠ 0
  as in GD++; per-token Γ).
- **Newton and least squares reach the floor in 1 step** (float64 round-off, below the figure's axis); CG reaches it
  after d = 5 steps (finite termination), iterative Newton after its linear phase of ≈ log₂ κ(S)² iterations.
- **Per-step schedules and the Krylov bound.** When the bound's residual polynomial has real roots, GD with the
  steps 1/root reproduces it exactly (`reference_optimizers.krylov_steps`), so the per-step schedules start there; the
  bound attainment above is measured, per T, on the test prompts. Where the roots are complex no GD schedule attains
  the bound, and heavy ball (per-step η_t, β_t) may come closer.
- **Tuning to the edge of stability does not generalise.** A T-step schedule's residual polynomial grows like
  λ^{{2T}} past its roots, so at T ≥ 6 its mean loss is carried by prompts with an extreme λ_max(H) (at n = 20,
  d = 5, Σ = I, λ_max > 3.5 has probability about 1e-4). Refined on {cfg.train_prompts:,} plain prompts without such
  a prompt, a schedule sits at their edge of stability, looks monotone on most batches and blows up on a test set
  that holds one. Tuning and choosing on tail-weighted batches puts that tail into the objective; the heavy-tail
  table shows how much the worst prompts still carry. The Krylov bound is fitted on tail-weighted prompts for the
  same reason (fitted on plain prompts, isotropic seed 7's T = 8 bound lands at −4.5 on the test prompts, 0.9 above
  the tail-robust GD schedule).
- Dutta & Sra's momentum/NAG baselines (η = 0.005 or 0.03, β = 0.9 on the unnormalised gradient, 19 points) are
  untuned; the tuned ones here are the fair comparison.
"""
    return finish_report(run, text, {
            "experiment": NAME, "seeds": seeds, "datasets": datasets, "cgd": cg_summary, "checks": summary_checks,
            "log_loss": {ds: {m: [lg(ds, m, T) for T in steps] for m in ORDER
                              if any(k[0] == ds and k[1] == m for k in logs)} for ds in datasets},
            "cgd_table": cgd_table, "figures": [str(p.relative_to(run_dir)) for p in figs]})  # fmt: skip
