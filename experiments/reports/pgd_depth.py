"""The report of :mod:`experiments.pgd_depth`: every number from results.csv and config.json, every verdict from a
paired comparison (:func:`experiments.reporting.paired_verdict`), every learned model beside its class optimum
(:func:`experiments.convergence.class_gap`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from experiments.convergence import TRIM, class_gap
from experiments.pgd_depth import (
    CLASS_OPTIMUM,
    GDPP_SOURCES,
    NAME,
    PUBLISHED_STEPS_L3,
    TAIL_FRACTION,
    PGDDepthConfig,
)
from experiments.reporting import (
    aggregate,
    finish_report,
    fmt,
    line_plot,
    markdown_table,
    open_report,
    paired_verdict,
    per_seed,
)

#: readable names of the study's methods (figures and tables)
LABELS = {
    "sparse": "sparse LSA (learned)",
    "gdpp": "GD++ LSA (learned)",
    "pgd_tuned": "Σ⁻¹-PGD, tuned steps",
    "gd_tuned": "GD, tuned steps",
    "krylov_precond": "Krylov bound, P = Σ⁻¹",
    "krylov_plain": "Krylov bound, P = I",
    "gdpp_tuned": "GD++ (Σ⁻¹ geometry), tuned",
    "thm1_learned": "1-layer sparse LSA, w* ~ N(0, I) (learned)",
    "thm1_optimum": "Theorem 1 optimum A* = Γ⁻¹",
    "zero_predictor": "zero predictor",
    "tolerance": "convergence tolerance",
}
#: the methods of the log-loss figure and table, in order
CURVES = ("sparse", "pgd_tuned", "krylov_precond", "gd_tuned", "krylov_plain", "gdpp", "gdpp_tuned")
SPARSE_CURVES = CURVES[:5]
DIST_LABELS = {"dist_sigma": "Dist(Σ½AΣ½, I)", "dist_raw": "Dist(A, I)", "dist_B": "Dist(B, I)"}
#: tuned Σ⁻¹-PGD and the Σ⁻¹ Krylov bound are the same method when the optimal polynomial has real roots: they are
#: said to coincide when their log losses differ by at most this in every seed
COINCIDE = 0.01
#: Ahn et al.'s Adam β (their notebooks)
AHN_BETAS = (0.99, 0.9)


def _dyn_rows(rows: list[dict], mode: str, L: int) -> list[dict]:
    """The read-outs during training of model (mode, L), one line per quantity and layer."""
    return [{**r, "method": f"{DIST_LABELS[r['metric']]} layer {r['layer']}", "step": r["train_step"], "metric": "dist"}
            for r in rows if r["method"] == mode and r["depth"] == L and r["train_step"] is not None
            and r["metric"] in DIST_LABELS]  # fmt: skip


def _timing(run_dir: Path) -> str:
    """The run's wall and CPU time from finished.json (written when the run ended; absent on the first render)."""
    path = run_dir / "finished.json"
    try:
        t = json.loads(path.read_text()).get("timing", {})
    except (OSError, ValueError):
        return "Timing: not recorded yet (finished.json is written after the first rendering; re-render the report)."
    if not t:
        return "Timing: finished.json holds no timing."
    parts = [f"{k} {fmt(float(v), 4)}" for k, v in t.items() if isinstance(v, (int, float))]
    return "Timing (finished.json): " + ", ".join(parts) + "."


def report(run_dir: str | Path) -> dict:
    """Re-render the figures, report.md and summary.json of a run from results.csv and config.json."""
    run = open_report(run_dir, PGDDepthConfig)
    run_dir, cfg, rows, seeds = run.run_dir, run.config, run.rows, run.seeds
    final = [r for r in rows if r["train_step"] is None]
    agg = aggregate(final, keys=("method", "depth", "metric", "layer", "k"))
    depths = list(cfg.depths)
    learned = [m for m in cfg.modes]

    def v(method: str, L: int, metric: str = "test_loss", layer: int | None = None, k: int | None = None) -> float:
        return agg.get((method, L, metric, layer, k), (float("nan"),))[0]

    def seeds_of(method: str, L: int, metric: str = "test_loss", log: bool = False, **keys) -> dict[int, float]:
        where = {"layer": None, "k": None, **keys}
        return per_seed(final, math.log if log else None, method=method, depth=L, metric=metric, **where)

    def logmean(method: str, L: int) -> float:
        """The mean over seeds of the per-seed log test loss (the statistic of every table and verdict)."""
        xs = list(seeds_of(method, L, log=True).values())
        return sum(xs) / len(xs) if xs else float("nan")

    # -- figures ------------------------------------------------------------------------------------------------
    figs = []
    zero = v("zero_predictor", 0)
    thm1_point = v("ahn_thm1", 1)
    coincide = [L for L in depths if seeds_of("pgd_tuned", L) and all(
        abs(a - seeds_of("krylov_precond", L, log=True).get(s, math.inf)) <= COINCIDE
        for s, a in seeds_of("pgd_tuned", L, log=True).items())]  # fmt: skip
    # two figures: the GD++ models' heavy-tailed means (up to e^15 in some seeds) would flatten the sparse curves
    for stem, methods in (("log_loss_vs_depth", SPARSE_CURVES), ("log_loss_gdpp", ("gdpp", "gdpp_tuned", "sparse"))):
        loss_rows = sorted((r for r in final if r["metric"] == "test_loss" and r["method"] in methods),
                           key=lambda r: methods.index(r["method"]))  # the legend in order, learned models first
        if not any(r["method"] in ("gdpp", "gdpp_tuned") for r in loss_rows) and stem != "log_loss_vs_depth":
            continue
        figs += line_plot(
            loss_rows, run_dir / "figures" / stem, metric="test_loss", ylabel="log(test loss)",
            xlabel="layers L (= steps)", log_values=True, dashed={"zero_predictor": zero}, labels=LABELS,
            dashed_methods=("krylov_plain", "krylov_precond"),
            points={"Ahn et al. Thm 1 optimum (L = 1)": (1, thm1_point)} if 1 in depths else None,
            title=f"Ahn et al.: d={cfg.prompt.d}, n={cfg.prompt.n}, Σ eigenvalues {cfg.prompt.eigenvalues}",
            caption=f"log of the seed-mean of the mean query MSE on {cfg.test_prompts} test prompts per seed "
            f"({len(seeds)} seed(s)); band: 95% t-interval over seeds; dashed: "
            f"{'Krylov bounds and ' if 'krylov_precond' in methods else ''}the zero predictor; star: Theorem 1's "
            "population optimum" + (
                f"; tuned Σ⁻¹-PGD and the Σ⁻¹ Krylov bound coincide at L = {', '.join(map(str, coincide))} (within "
                f"{COINCIDE} in every seed)" if coincide and "pgd_tuned" in methods else ""),
        )  # fmt: skip
    gap_labels = {"sparse": "sparse LSA − tuned Σ⁻¹-PGD", "gdpp": "GD++ LSA − tuned GD++ (Σ⁻¹)"}
    for mode in learned:  # one figure per model class: their gaps differ by orders of magnitude
        gap_rows = [r for r in final if r["metric"] == "gap_log" and r["method"] == mode]
        if not gap_rows:
            continue
        gap_rows += [dict(method="tolerance", depth=L, seed=seeds[0], metric="gap_log", value=cfg.tolerance_at(L),
                          layer=None, k=None, train_step=None) for L in depths]  # fmt: skip
        figs += line_plot(
            gap_rows, run_dir / "figures" / f"gap_{mode}", metric="gap_log", labels={**LABELS, **gap_labels},
            ylabel="log(learned) − log(class optimum)", xlabel="layers L", dashed_methods=("tolerance",),
            title=f"{LABELS[mode]}: gap to the best its class does, same test prompts",
            caption=f"mean over {len(seeds)} seed(s); band: 95% t-interval over seeds; dashed: the tolerance "
            f"({cfg.tolerance:g}, {cfg.tolerance_deep:g} from L = {cfg.deep_from}); per-seed gaps in report.md",
        )  # fmt: skip
    L_dyn = 3 if 3 in depths else max(depths)
    for mode in cfg.modes:
        dyn = _dyn_rows(rows, mode, L_dyn)
        if dyn:
            figs += line_plot(
                dyn, run_dir / "figures" / f"dist_{mode}_L{L_dyn}", x="step", metric="dist", ylabel="Dist(M, I)",
                floor=0.0,
                xlabel="training step", title=f"{LABELS[mode]}, L = {L_dyn}: distance to a multiple of I",
                dashed_methods=tuple(m for m in {r["method"] for r in dyn} if not m.startswith("Dist(Σ")),
                caption=f"mean over {len(seeds)} seed(s); band: 95% t-interval over seeds; solid Dist(Σ½A_ℓΣ½, I) "
                "(→ 0 under Thm 3), dashed Dist(A_ℓ, I)" + (" and Dist(B_ℓ, I) (the last layer's B does not "
                                                           "affect the prediction)" if mode == "gdpp" else ""),
            )  # fmt: skip

    # -- convergence: every learned model against its class optimum, per seed --------------------------------
    gaps, conv_table, below = [], [], []
    models = [(m, L) for m in learned for L in depths] + ([("thm1_learned", 1)] if cfg.theorem1 else [])
    for method, L in models:
        ref = CLASS_OPTIMUM[method]
        mine, opt = seeds_of(method, L, log=True), seeds_of(ref, L, log=True)
        se, steps, caps = seeds_of(method, L, "gap_log_se"), seeds_of(method, L, "train_steps"), seeds_of(
            method, L, "step_cap")  # fmt: skip
        plateau, grown = seeds_of(method, L, "plateau_stopped"), seeds_of(method, L, "grown")
        med, med_opt = seeds_of(method, L, "median", log=True), seeds_of(ref, L, "median", log=True)
        trim, trim_opt = seeds_of(method, L, "trimmed_mean", log=True), seeds_of(ref, L, "trimmed_mean", log=True)
        for s in sorted(mine):
            if s not in opt:
                continue
            g = class_gap(mine[s], opt[s], cfg.tolerance_at(L), LABELS[ref])
            gaps.append((method, L, s, g))
            if g.gap + 2 * se.get(s, math.nan) < 0:  # the reference is not the class optimum here
                below.append((method, L, s, g.gap, se[s]))
            how = ("plateau" if plateau.get(s) == 1 else "cap") + ("; grown from L − 1" if grown.get(s) == 1 else "")
            conv_table.append((LABELS[method], L, s, fmt(mine[s]), fmt(opt[s]),
                               f"{g.text()} ± {se.get(s, math.nan):.2g}",
                               f"{med.get(s, math.nan) - med_opt.get(s, math.nan):+.3g}",
                               f"{trim.get(s, math.nan) - trim_opt.get(s, math.nan):+.3g}",
                               f"{int(steps.get(s, 0))} / {int(caps.get(s, 0))} ({how})"))  # fmt: skip
    flagged = [(m, L, s, g) for m, L, s, g in gaps if g.flagged]
    flag_text = ("**Flagged (further from the class optimum than the tolerance):** " + "; ".join(
        f"{LABELS[m]} L = {L} seed {s}: {g.gap:+.3g}" for m, L, s, g in flagged) + "." if flagged else
        f"No learned model is further from its class optimum than the tolerance ({cfg.tolerance:g} in log below "
        f"L = {cfg.deep_from}, {cfg.tolerance_deep:g} from there on) in any seed.")  # fmt: skip
    below_text = ("**Below their class reference by more than 2 standard errors** (the reference misses the class "
                  "optimum there, or the model leaves the reference's parametrised set): " + "; ".join(
                      f"{LABELS[m]} L = {L} seed {s}: {g:+.3g} ± {e:.2g}" for m, L, s, g, e in below) + "."
                  if below else "No learned model is below its class reference by more than 2 standard errors of "
                  "the paired gap: the references are the best their class was found to do.")  # fmt: skip

    # -- who carries the heavy tail: each model and its reference on the other's worst prompts ----------------
    tail_pct = f"{100 * TAIL_FRACTION:g}%"
    who_table = []
    for method, L in models:
        worst = seeds_of(method, L, "worst_own")
        for s in sorted(worst):
            own_ref = seeds_of(method, L, "worst_own_reference").get(s, math.nan)
            ref_w, ref_own = (seeds_of(method, L, "worst_reference").get(s, math.nan),
                              seeds_of(method, L, "worst_reference_own").get(s, math.nan))  # fmt: skip
            ratio = math.log(worst[s] / own_ref) if worst[s] > 0 and own_ref > 0 else math.nan
            who_table.append((LABELS[method], L, s, fmt(worst[s], 3), fmt(own_ref, 3), f"{ratio:+.3g}",
                              fmt(seeds_of(method, L, "worst_own_share").get(s, math.nan), 2),
                              fmt(ref_w, 3), fmt(ref_own, 3)))  # fmt: skip
    diagnosis = []  # each flagged model: is the typical prompt far too, or only the tail, and whose tail is it?
    for m, L, s, g in flagged:
        ref = CLASS_OPTIMUM[m]
        def at(method: str, metric: str, log: bool = False, L: int = L, s: int = s) -> float:
            return seeds_of(method, L, metric, log=log).get(s, math.nan)

        trim = at(m, "trimmed_mean", True) - at(ref, "trimmed_mean", True)
        med = at(m, "median", True) - at(ref, "median", True)
        own, own_ref, share = at(m, "worst_own"), at(m, "worst_own_reference"), at(m, "worst_own_share")
        ratio = math.log(own / own_ref) if own > 0 and own_ref > 0 else math.nan
        head = f"{LABELS[m]} L = {L} seed {s} (gap of means {g.gap:+.3g})"
        if trim > g.tolerance or med > g.tolerance:
            diagnosis.append(f"{head}: the typical prompt is far too (gap of trimmed means {trim:+.3g}, of medians "
                             f"{med:+.3g}): not converged")  # fmt: skip
        elif ratio > math.log(10):
            diagnosis.append(f"{head}: within {g.tolerance:g} on the typical prompt (gap of trimmed means {trim:+.3g}, "
                             f"of medians {med:+.3g}); the gap of means is the learned model's own tail: its worst "
                             f"{tail_pct} of the prompts carry {share:.0%} of its mean loss, and there its loss is "
                             f"e^{ratio:.3g} times the reference's")  # fmt: skip
        else:
            diagnosis.append(f"{head}: within {g.tolerance:g} on the typical prompt (gap of trimmed means {trim:+.3g}, "
                             f"of medians {med:+.3g}); on its worst {tail_pct} of the prompts its loss is "
                             f"e^{ratio:.3g} times the reference's")  # fmt: skip
    diagnosis_text = ("**What carries each flagged gap** (computed from the tail rows): " + "; ".join(diagnosis) + "."
                      if diagnosis else "")  # fmt: skip
    source_rows = [(L, s, GDPP_SOURCES[int(c)]) for L in depths
                   for s, c in sorted(seeds_of("gdpp_tuned", L, "source").items())]  # fmt: skip
    source_text = ("Where each seed's tuned GD++ schedule came from (chosen on the selection prompts): " + "; ".join(
        f"L = {L} seed {s}: {src}" for L, s, src in source_rows) + "." if source_rows else "")  # fmt: skip

    # -- verdicts (paired over seeds) ---------------------------------------------------------------------------
    verdicts = []
    for method, L in models:
        ref = CLASS_OPTIMUM[method]
        vd = paired_verdict(seeds_of(method, L, log=True), seeds_of(ref, L, log=True), "within", cfg.tolerance_at(L))
        verdicts.append((f"{LABELS[method]}, L = {L}: log test loss within {cfg.tolerance_at(L):g} of "
                         f"{LABELS[ref]}", vd))  # fmt: skip
    if 3 in depths and "sparse" in cfg.modes:
        for k, pub in enumerate(PUBLISHED_STEPS_L3, 1):
            mine = seeds_of("sparse", 3, "step_sorted", k=k)
            vd = paired_verdict(mine, {s: pub for s in mine}, "within", cfg.step_tolerance)
            verdicts.append((f"3-layer sparse LSA, sorted step {k} within {cfg.step_tolerance:g} of Ahn et al.'s "
                             f"{pub} (Σ⁻¹ units)", vd))  # fmt: skip
    for L in depths:
        vd = paired_verdict(seeds_of("pgd_tuned", L, log=True), seeds_of("krylov_precond", L, log=True), "within",
                            COINCIDE)  # fmt: skip
        verdicts.append((f"L = {L}: tuned Σ⁻¹-PGD attains the Σ⁻¹ Krylov bound (within {COINCIDE} in log)", vd))
    for L in depths:
        vd = paired_verdict(seeds_of("pgd_tuned", L, log=True), seeds_of("gd_tuned", L, log=True), "less")
        verdicts.append((f"L = {L}: Σ⁻¹-preconditioning beats plain GD (tuned steps both)", vd))
    if "gdpp" in cfg.modes and "sparse" in cfg.modes:
        for L in depths:
            vd = paired_verdict(seeds_of("gdpp", L, log=True), seeds_of("sparse", L, log=True), "less")
            verdicts.append((f"L = {L}: the learned GD++ LSA beats the learned sparse LSA", vd))
    verdict_table = [(claim, vd.text("" if "Σ⁻¹ units" in claim else "log")) for claim, vd in verdicts]

    # -- tables ---------------------------------------------------------------------------------------------------
    loss_table = [(L, *(fmt(logmean(m, L)) for m in CURVES),
                   fmt(math.log(thm1_point)) if L == 1 and thm1_point > 0 else "–") for L in depths]  # fmt: skip
    tail_methods = [m for m in CURVES if any(r["method"] == m for r in final)]
    tail_table = []
    for L in depths:
        for m in tail_methods:
            if (m, L, "median", None, None) not in agg:
                continue
            tail_table.append((LABELS[m], L, fmt(logmean(m, L)), fmt(math.log(v(m, L, "median")) if v(
                m, L, "median") > 0 else math.nan), fmt(math.log(v(m, L, "trimmed_mean")) if v(
                m, L, "trimmed_mean") > 0 else math.nan),  # fmt: skip
                f"{fmt(v(m, L, 'log_mean_parts_min'))} … {fmt(v(m, L, 'log_mean_parts_max'))}",
                fmt(max(seeds_of(m, L, "log_mean_parts_sd").values(), default=math.nan), 2),
                fmt(v(m, L, "top_share"), 2)))  # fmt: skip
    dist_table = [(LABELS[mode], L, *(
        f"{fmt(v(mode, L, 'dist_sigma', layer=k))} / {fmt(v(mode, L, 'dist_raw', layer=k))}" if k <= L else ""
        for k in range(1, max(depths) + 1))) for mode in cfg.modes for L in depths]  # fmt: skip
    step_table = []
    for method in ("sparse", "pgd_tuned"):
        if method == "sparse" and "sparse" not in cfg.modes:
            continue
        for L in depths:
            for s in seeds:
                steps = [seeds_of(method, L, "step_sorted", k=k).get(s, math.nan) for k in range(1, L + 1)]
                pub = ", ".join(str(x) for x in PUBLISHED_STEPS_L3) if L == 3 else "–"
                step_table.append((LABELS[method], L, s, ", ".join(fmt(x, 3) for x in steps), pub))
    thm1 = (v("thm1_learned", 1), v("thm1_optimum", 1), v("thm1_theory", 1), v("thm1_zero_predictor", 1),
            v("thm1_learned", 1, "A_rel_error"), v("thm1_learned", 1, "A_rel_error_vs_sigma_inv"))  # fmt: skip
    if cfg.theorem1 and math.isfinite(thm1[0]):
        thm1_text = markdown_table(("quantity", "ours (learned)", "theory"), [
            ("test loss (MSE), same test prompts", fmt(thm1[0]), f"{fmt(thm1[1])} (A* = Γ⁻¹ on the same prompts)"),
            ("test loss, population", "–", f"{fmt(thm1[2])} (tr Σ − tr(ΣΓ⁻¹Σ))"),
            ("zero predictor", "–", f"{fmt(thm1[3])} (tr Σ)"),
            ("‖A − Γ⁻¹‖_F / ‖Γ⁻¹‖_F", fmt(thm1[4]), "0"),
            ("‖A − cΣ⁻¹‖_F / ‖cΣ⁻¹‖_F (same trace)", fmt(thm1[5]), "> 0: Γ⁻¹ is not a multiple of Σ⁻¹")])
    else:
        thm1_text = "Not run in this configuration (`theorem1 = false`)."
    train_caps = "; ".join(f"{LABELS[m]}: " + ", ".join(
        f"L = {L}: {cfg.train_at(L, m).steps} (halved every {cfg.train_at(L, m).halve_every})" for L in depths)
        for m in cfg.modes)  # fmt: skip
    grown_at = [L for L in depths if "gdpp" in cfg.modes and cfg.grows(L, "gdpp")]
    grow_text = (f" The GD++ LSA of depth L = {', '.join(map(str, grown_at))} starts from the trained depth L − 1 "
                 "model of its seed (its layers, the last one repeated), not from the initialisation, at "
                 f"{cfg.gdpp_grow_lr:g}× the learning rate (AdamW lr {cfg.train.lr * cfg.gdpp_grow_lr:g}): GD++'s loss "
                 "has several basins, and from L = 3 on a fresh start stalls in a poor one (measurements in the "
                 "docstring of `experiments/configs/pgd_depth.py`)." if grown_at else "")  # fmt: skip
    plateau_rule = (f"the engine's plateau rule stops a depth-L model when its held-out loss "
                    f"({cfg.train.eval_batch} validation prompts, every {cfg.train.eval_every} steps) has not "
                    f"improved by a relative {cfg.train.plateau_tol:g} for L·{cfg.train.plateau_patience} "
                    f"evaluations in a row (GD++: {cfg.gdpp_budget:g}× the sparse budget, cap and patience)"
                    if cfg.train.plateau_patience else "no plateau rule (`train.plateau_patience = 0`): every "
                    "model trains to its cap")  # fmt: skip
    betas_text = "" if tuple(cfg.train.betas or ()) == AHN_BETAS else (
        f" (5) Adam β = {tuple(cfg.train.betas) if cfg.train.betas else 'default'} where Ahn et al. use {AHN_BETAS} "
        "(the `paper` profile): with theirs the 3-layer model converged about three times further from tuned "
        "Σ⁻¹-PGD in the same number of steps (module docstring of `experiments/pgd_depth.py`).")  # fmt: skip
    L3 = 3 in depths and "sparse" in cfg.modes
    paper_table = [
        ("3-layer sparse steps c_ℓ (Σ⁻¹ units, sorted)", ", ".join(str(x) for x in PUBLISHED_STEPS_L3),
         ", ".join(fmt(v("sparse", 3, "step_sorted", k=k), 3) for k in (1, 2, 3)) if L3 else "–",
         ", ".join(fmt(v("pgd_tuned", 3, "step_sorted", k=k), 3) for k in (1, 2, 3)) + " (tuned Σ⁻¹-PGD)"
         if 3 in depths else "–"),
        ("1-layer sparse, w* ~ N(0, Σ⁻¹): loss", "–", fmt(v("sparse", 1)), f"{fmt(thm1_point)} (Thm 1)"),
        ("1-layer sparse, w* ~ N(0, I): loss", "–", fmt(thm1[0]), f"{fmt(thm1[2])} (Thm 1)"),
    ]  # fmt: skip
    text = f"""# pgd_depth: L-layer linear transformers learn preconditioned GD (Ahn et al. 2023)

Setting: d = {cfg.prompt.d}, n = {cfg.prompt.n}, Σ = U diag{cfg.prompt.eigenvalues} Uᵀ (Haar U per seed),
w* ~ N(0, Σ⁻¹), noiseless; profile `{cfg.profile}`, seeds {seeds}. Loss = query MSE (Ahn et al.'s convention; no ½).
Every model and baseline is scored on the same {cfg.test_prompts} held-out test prompts per seed (never trained on);
the baselines' steps and the Krylov coefficients are fit on {cfg.tune_prompts} prompts of the training law (tuned
GD++ is refined on the first {cfg.gdpp_tune_prompts}, from the grid, the tuned PGD steps and {cfg.gdpp_restarts}
further starts, and again from every seed's learned GD++ read-out; it is chosen on all {cfg.tune_prompts} among these
refinements, the other seeds' (the whitened law is the same for every seed), tuned Σ⁻¹-PGD and its own
one-step-shorter choice, so that it is never worse than any of them there).

Training: AdamW lr {cfg.train.lr}, β = {cfg.train.betas}, per-matrix clip {cfg.train.clip_value}, batch
{cfg.train.batch_size} resampled every {cfg.train.resample_every} steps; step caps (lr halving period) by depth:
{train_caps}; {plateau_rule}. The steps each model took are in the convergence table.{grow_text}

## Convergence: every learned model against its class optimum, per seed

{markdown_table(("model", "L", "seed", "log test loss", "class optimum (log)", "gap ± s.e. (per prompt)",
                 "gap of medians (log)", "gap of trimmed means (log)", "steps taken / cap (stopped by)"),
               conv_table)}

Class optima on the same prompts: {LABELS['pgd_tuned']} for the sparse LSA, {LABELS['gdpp_tuned']} for the GD++ LSA,
{LABELS['thm1_optimum']} for the w* ~ N(0, I) model. The standard error is over prompts (delta method on the paired
per-prompt losses). The gap of medians (log median loss minus the class optimum's, same prompts) shows whether a
gap of means comes from the typical prompt or from the few tail prompts that carry the mean (heavy tails table);
the trimmed means drop the {100 * TRIM:g}% lowest and highest losses of each. The flag is on the gap of means.
{flag_text}
{below_text}

### Who carries the tail: each learned model and its class reference on the other's worst {tail_pct} of the test prompts

{markdown_table(("model", "L", "seed", f"model's mean loss on its worst {tail_pct}", "reference's, same prompts",
                 "log ratio", "share of the model's total loss on them", f"reference's mean on its worst {tail_pct}",
                 "model's, same prompts"), who_table)}

A large positive log ratio says the model explodes on prompts where its reference does not (the model, not the
reference, carries the gap of means); a ratio near 0 says both are large there (the prompts are hard for the class).
{diagnosis_text}
{source_text}

## Verdicts (paired over seeds: the per-seed differences of log test loss, 95% t-interval)

{markdown_table(("claim", "verdict"), verdict_table)}

## Ours vs the paper vs theory

{markdown_table(("quantity", "paper", "ours (learned, mean over seeds)", "theory / tuned baseline"), paper_table)}

## log(test loss) per depth (mean over seeds of the per-seed log)

{markdown_table(("L", *(LABELS[m] for m in CURVES), "Ahn Thm 1 (L=1)"), loss_table)}

Zero predictor: log {fmt(math.log(zero) if zero > 0 else math.nan)} (theory log d = {math.log(cfg.prompt.d):.4f}).
The L = 1 optimum of Theorem 1 (w* ~ N(0, Σ⁻¹)) is d(d+1)/(n+d+1) whatever Σ. Figures:
`figures/log_loss_vs_depth.png`, `figures/log_loss_gdpp.png`, `figures/gap_<model>.png`.

## Heavy tails ({cfg.test_prompts} test prompts per seed, cut into {cfg.test_parts} parts)

{markdown_table(("method", "L", "log mean", "log median", "log trimmed mean", "log mean on a part (min … max)",
                 "sd across parts (worst seed)", "share of the worst 1%"), tail_table)}

Means over seeds except the last two columns' worst seed and the parts' extremes over seeds. The spread across
parts is how far a test set {cfg.test_prompts // cfg.test_parts} prompts large moves the log mean; the full
set's log mean is steadier by about √{cfg.test_parts}, and a paired gap (same prompts) steadier still.

## Dist(Σ^½A_ℓΣ^½, I) / Dist(A_ℓ, I) at the end of training (Ahn et al. Fig. 1: the first → 0, the second stays)

{markdown_table(("model", "L", *(f"layer {k}" for k in range(1, max(depths) + 1))), dist_table)}

Curves over training: `figures/dist_<mode>_L{L_dyn}.png`.

## Step sizes in Σ⁻¹ units, sorted (Lemma 4: any order of the per-layer steps gives the same loss)

{markdown_table(("model", "L", "seed", "c_ℓ sorted", "Ahn et al. Fig. 2"), step_table)}

The learned c_ℓ = tr(Σ^½A_ℓΣ^½)/d; the PGD rows are the tuned per-step sizes of Σ⁻¹-preconditioned GD (the same
parametrization), the optimum the sparse model should reach on this training law.

## Theorem 1 check: w* ~ N(0, I), non-isotropic Σ, one sparse layer

{thm1_text}

**Differences from the paper.** (1) Batch {cfg.train.batch_size} and a plateau rule instead of Ahn et al.'s fixed
budget at batch 20,000. (2) Baselines see all n = {cfg.prompt.n} context points (Ahn et al.'s code uses n − 1) and
use the (1/n)-normalised gradient; their steps are tuned by `reference_optimizers.tune_depths` on training-law
prompts. (3) U is Haar-random. (4) The Krylov bounds and the GD++-in-Σ⁻¹-geometry baseline are ours.{betas_text}

{_timing(run_dir)}
"""
    summary = {
        "experiment": NAME,
        "profile": cfg.profile,
        "seeds": seeds,
        "test_prompts": cfg.test_prompts,
        "log_test_loss": {m: {str(L): logmean(m, L) for L in depths} for m in CURVES},
        "gaps": [{"model": m, "depth": L, "seed": s, "gap": g.gap, "tolerance": g.tolerance, "flagged": g.flagged}
                 for m, L, s, g in gaps],
        "flagged": len(flagged),
        "verdicts": {claim: vd.word for claim, vd in verdicts},
        "steps_sparse_L3": [v("sparse", 3, "step_sorted", k=k) for k in (1, 2, 3)] if L3 else None,
        "zero_predictor_loss": zero,
        "thm1": {"learned": thm1[0], "optimum_same_prompts": thm1[1], "theory": thm1[2], "A_rel_error": thm1[4]},
        "figures": [str(Path(p).relative_to(run_dir)) for p in figs],
    }  # fmt: skip
    return finish_report(run, text, summary)
