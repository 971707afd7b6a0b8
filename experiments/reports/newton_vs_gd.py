"""The report of :mod:`experiments.newton_vs_gd`."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from matplotlib.ticker import MaxNLocator

from experiments.convergence import TRIM, class_gap
from experiments.newton_vs_gd import (
    _LOSS_WORDS,
    FU_NEWTON,
    NAME,
    NewtonVsGDConfig,
)
from experiments.reporting import (
    MATCH_THRESHOLD,
    finish_report,
    fmt,
    markdown_table,
    mean_ci,
    open_report,
    paired_verdict,
)
from icl.plotting import plt, save_figure, set_theme
from learned_optimizers.probes import MATCH_THRESHOLD as FIT_THRESHOLD

MODEL_LABELS = {"lsa_full": "full LSA", "gpt": "GPT"}


def _sim_matrix(rows, model: str, ref: str, metric: str) -> tuple[np.ndarray, list[int], list[int]]:
    """Mean over seeds of a layer × reference-step similarity of ``model`` against reference ``ref``."""
    acc: dict[tuple[int, int], list[float]] = defaultdict(list)
    for r in rows:
        if r["method"] == model and r["reference"] == ref and r["metric"] == metric:
            acc[(r["layer"], r["k"])].append(r["value"])
    layers = sorted({k[0] for k in acc})
    steps = sorted({k[1] for k in acc})
    M = np.array([[np.mean(acc[(ell, t)]) for t in steps] for ell in layers])
    return M, layers, steps


def heatmap(rows, model: str, ref: str, stem, title: str) -> list:
    import seaborn as sns

    set_theme()
    M, layers, steps = _sim_matrix(rows, model, ref, "sim_e")
    if M.size == 0:
        return []
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(steps)), 0.45 * len(layers) + 1.6))
    sns.heatmap(M, ax=ax, cmap="viridis", vmin=max(0.0, float(np.nanmin(M))), vmax=1.0, xticklabels=steps,
                yticklabels=layers, cbar_kws={"label": "SimE (mean over seeds)"})  # fmt: skip
    best = M.argmax(axis=1)
    top = M.max(axis=1)
    ok = top >= MATCH_THRESHOLD
    ys = np.arange(len(layers)) + 0.5
    ax.scatter(best[ok] + 0.5, ys[ok], marker="*", color="red", s=50,
               label=f"best-matching step (SimE ≥ {MATCH_THRESHOLD:g})")  # fmt: skip
    ax.scatter(best[~ok] + 0.5, ys[~ok], marker="x", color="darkorange", s=30,
               label=f"argmax, SimE < {MATCH_THRESHOLD:g}: no step matches")  # fmt: skip
    ax.set_xlabel("reference step")
    ax.set_ylabel("layer (0 = input)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.32), ncol=2, frameon=False)
    return save_figure(fig, stem)


def best_steps(rows, model: str, ref: str, metric: str = "best_step_sime") -> dict[int, tuple[float, float, float]]:
    """Per layer, the mean over seeds (and 95% interval) of ``metric`` of ``model`` against reference ``ref``."""
    acc: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r["method"] == model and r["reference"] == ref and r["metric"] == metric:
            acc[r["layer"]].append(r["value"])
    return {k: mean_ci(v) for k, v in sorted(acc.items())}


def reference_losses(rows, ref: str) -> dict[int, float]:
    """Mean over seeds of a reference method's query MSE on the comparison prompts, per step."""
    acc: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r["method"] == ref and r["metric"] == "compare_loss":
            acc[r["depth"]].append(r["value"])
    return {t: float(np.mean(v)) for t, v in sorted(acc.items())}


def steps_to_reach(loss: float, ref_loss: dict[int, float]) -> str:
    """The bracket of reference steps (on its grid) between which the reference's loss falls to ``loss``."""
    if not math.isfinite(loss) or not ref_loss:
        return "–"
    steps = sorted(ref_loss)
    reached = [t for t in steps if ref_loss[t] <= loss]
    if not reached:
        return f"> {steps[-1]}"
    first = reached[0]
    before = [t for t in steps if t < first]
    return f"{before[-1]}–{first}" if before else f"≤ {first}"


def _per_seed(rows, method: str, metric: str, depth=None, **where) -> dict[int, float]:
    out = {}
    for r in rows:
        if r["method"] == method and r["metric"] == metric and (depth is None or r["depth"] == depth) and all(
            r.get(k) == v for k, v in where.items()
        ):
            out[int(r["seed"])] = float(r["value"])
    return out


def model_depth(cfg: NewtonVsGDConfig, model: str) -> int:
    return cfg.lsa.layers if model == "lsa_full" else cfg.gpt.layers


def convergence_section(cfg: NewtonVsGDConfig, rows, models) -> tuple[str, dict]:
    """Per model and seed: the test MSE with its tails, the class optimum (tuned GD++ of the model's depth on the
    same test prompts), the gap (:func:`class_gap`, flagged beyond ``cfg.class_tolerance``), how training ended,
    and the paired verdict over seeds."""
    tol = cfg.class_tolerance
    lines, summary = [], {}
    for m in models:
        L = model_depth(cfg, m)
        ref = f"tuned {L}-step GD++"
        learned, optimum = _per_seed(rows, m, "test_log_mean"), _per_seed(rows, "gdpp_tuned", "test_log_mean", L)
        table, gaps = [], {}
        for seed in sorted(learned):
            g = class_gap(learned[seed], optimum.get(seed, math.nan), tol, ref)
            gaps[seed] = g
            stats_ = {k: _per_seed(rows, m, f"test_{k}").get(seed, math.nan)
                      for k in ("mean", "median", "trimmed_mean", "log_mean_parts_sd", "top_share")}  # fmt: skip
            opt = _per_seed(rows, "gdpp_tuned", "test_mean", L).get(seed, math.nan)
            ends = [r for r in rows if r["method"] == m and r["seed"] == seed and r["metric"] == "steps_trained"]
            stops = _per_seed_all(rows, m, "plateau_stop", seed)
            ended = ", ".join(f"L{int(r['depth'])}: {int(r['value'])} ({'plateau' if stops.get(r['depth']) else 'cap'})"
                              for r in sorted(ends, key=lambda r: r["depth"]))  # fmt: skip
            table.append([seed, stats_["mean"], stats_["median"], stats_["trimmed_mean"], stats_["log_mean_parts_sd"],
                          stats_["top_share"], opt, f"{math.exp(g.gap):.3g}×", gap_text(m, g), ended])  # fmt: skip
        v = paired_verdict(learned, optimum, "less", margin=-tol)
        count = int(_first(rows, m, "test_count"))
        parts = int(_first(rows, m, "test_parts"))
        lines.append(
            f"**{m}** ({L} layers) against {ref} on the same {count} test prompts per seed; its test MSE is "
            f"within {math.exp(tol):.3g}× of {ref}'s (log gap below {tol:.3g}): {v.text('in log MSE')}. "
            f"{stop_sentence(rows, m, L)}\n\n"
            + markdown_table(["seed", "test MSE", "median", f"trimmed mean ({TRIM:g} each end)",
                              f"sd of log MSE over {parts} parts", "top-1% share", f"{ref} MSE",
                              f"MSE / {ref}'s", "gap in log MSE", "training steps per depth (stopped by)"],
                             table)  # fmt: skip
        )
        summary[m] = {"class_reference": ref, "class_gap": {s: g.gap for s, g in gaps.items()},
                      "flagged_seeds": [s for s, g in gaps.items() if g.flagged], "within_verdict": v.word,
                      "test_loss_per_seed": {s: math.exp(x) for s, x in learned.items()},
                      "class_optimum_per_seed": {s: math.exp(x) for s, x in optimum.items()}}  # fmt: skip
    return "\n\n".join(lines), summary


def stop_sentence(rows, model: str, depth: int) -> str:
    """Which seeds' last training stage (depth ``depth``) the plateau rule stopped and which ran to the cap."""
    stops = {int(r["seed"]): bool(r["value"]) for r in rows
             if r["method"] == model and r["metric"] == "plateau_stop" and r["depth"] == depth}  # fmt: skip
    steps = {int(r["seed"]): int(r["value"]) for r in rows
             if r["method"] == model and r["metric"] == "steps_trained" and r["depth"] == depth}  # fmt: skip
    if not stops:
        return ""
    plateau = [s for s, v in sorted(stops.items()) if v]
    cap = [s for s, v in sorted(stops.items()) if not v]
    parts = []
    if plateau:
        parts.append(f"stopped by the plateau rule for seed{'s' * (len(plateau) > 1)} {plateau} (steps "
                     f"{[steps.get(s) for s in plateau]})")  # fmt: skip
    if cap:
        parts.append(f"ran to the step cap for seed{'s' * (len(cap) > 1)} {cap} ({steps.get(cap[0])} steps): "
                     "**not at a plateau** there")  # fmt: skip
    return f"Training of the {depth}-layer model " + "; ".join(parts) + "."


def gap_text(model: str, gap) -> str:
    """The gap cell: :meth:`Gap.text` for the LSA, whose class holds the reference; for the softmax GPT, which is
    held to that bar without containing it, a gap beyond the tolerance is flagged as far above it (its training
    ended by the plateau rule or the cap, as the steps column says), not as unconverged."""
    if model == "lsa_full" or not gap.flagged:
        return gap.text()
    return f"**{gap.gap:+.3g}: far above {gap.reference}** (tolerance {gap.tolerance:g})"


def _per_seed_all(rows, method: str, metric: str, seed: int) -> dict[int, float]:
    return {r["depth"]: r["value"] for r in rows if r["method"] == method and r["metric"] == metric
            and r["seed"] == seed}  # fmt: skip


def _first(rows, method: str, metric: str) -> float:
    return next((r["value"] for r in rows if r["method"] == method and r["metric"] == metric), math.nan)


def closer_to_newton(rows, model: str, layer: int):
    """Paired over seeds: is the layer's best SimE with iterative Newton higher than with GD (Fu et al.'s claim)?"""
    a = _per_seed(rows, model, "best_sime", reference="newton", layer=layer)
    b = _per_seed(rows, model, "best_sime", reference="gd", layer=layer)
    return paired_verdict(a, b, "greater")


def fit_sentence(rows, model: str) -> str:
    """What :func:`learned_optimizers.probes.fit_reference` found per seed: a family only where it matches."""
    out = []
    fits = [r for r in rows if r["method"] == model and r["metric"] == "fit_matched"]
    for r in sorted(fits, key=lambda r: r["seed"]):
        errs = {e["reference"]: e["value"] for e in rows if e["method"] == model and e["seed"] == r["seed"]
                and e["metric"] == "fit_relative_error"}  # fmt: skip
        best = errs.get(r["reference"], math.nan)
        if r["value"]:
            out.append(f"seed {r['seed']}: `{r['reference']}` (relative error {fmt(best)})")
        else:
            out.append(f"seed {r['seed']}: no family fits (best `{r['reference']}`, relative error {fmt(best)} > "
                       f"{FIT_THRESHOLD:g})")  # fmt: skip
    if not out:
        return ""
    return (f" Classical family whose per-layer iterates match the LSA's implicit weights (`fit_reference`, families "
            f"the full LSA can express plus the parameter-free CG and Newton; a match needs relative error ≤ "
            f"{FIT_THRESHOLD:g}): " + "; ".join(out) + ".")  # fmt: skip


def report(run_dir) -> dict:
    run = open_report(run_dir, NewtonVsGDConfig)
    run_dir, cfg, rows, fig_dir = run.run_dir, run.config, run.rows, run.figures
    figs = []
    models = [m for m in cfg.models if any(r["method"] == m and r["reference"] for r in rows)]
    for m in models:
        for ref, label in (("newton", "iterative Newton (Fu code scaling)"), ("gd", "GD, tuned constant step")):
            figs += heatmap(rows, m, ref, fig_dir / f"heatmap_{m}_{ref}", f"{m}: SimE per layer vs {label}")
    # best-matching steps against depth
    set_theme()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, ref in zip(axes, ("newton", "gd")):
        for m, c in zip(models, colors):
            b = best_steps(rows, m, ref)
            xs = np.array(list(b))
            mean = np.array([v[0] for v in b.values()])
            sim = best_steps(rows, m, ref, "best_sime")
            ok = np.array([sim[ell][0] >= MATCH_THRESHOLD for ell in b])
            # the line runs only through matched layers: an unmatched layer has no best-matching step to join
            ax.plot(xs, np.where(ok, mean, np.nan), "-", color=c, label=MODEL_LABELS.get(m, m))
            ax.plot(xs[ok], mean[ok], "o", color=c)
            ax.plot(xs[~ok], mean[~ok], "o", mfc="none", color=c)
            if len(cfg.seeds) > 1:
                lo = np.maximum([v[1] for v in b.values()], 0.0)
                ax.fill_between(xs, np.where(ok, lo, np.nan), np.where(ok, [v[2] for v in b.values()], np.nan),
                                color=c, alpha=0.2)  # fmt: skip
        if ref == "newton":
            ax.plot(range(1, 13), FU_NEWTON, "--", color="grey", label="Fu et al. GPT-2 12L, d=20")
            ax.set_ylabel("best-matching Newton step")
        else:
            ax.set_yscale("symlog", linthresh=1)
            ax.set_ylabel("best-matching GD step")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        # one row under each panel, clear of the caption
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.18), frameon=False, ncol=3)
    fig.text(0.01, -0.2, f"argmax_t SimE per layer; mean over seeds, band: 95% t-interval; dashed: published; hollow: "
             f"best SimE below {MATCH_THRESHOLD:g}, i.e. no step matches that layer", fontsize=7, ha="left",
             va="top")  # fmt: skip
    figs += save_figure(fig, fig_dir / "best_matching_steps")

    def val(method, metric):
        v = [r["value"] for r in rows if r["method"] == method and r["metric"] == metric]
        return float(np.mean(v)) if v else float("nan")

    eta = val("gd", "tuned_eta")
    ols = val("least_squares", "compare_loss")
    zero = val("zero_predictor", "test_loss")
    newton_loss = reference_losses(rows, "newton")
    gd_loss = reference_losses(rows, "gd")
    conv_text, conv_summary = convergence_section(cfg, rows, models)
    tables, summary_models = [], {}
    for m in models:
        bn, bg = best_steps(rows, m, "newton"), best_steps(rows, m, "gd")
        sn = best_steps(rows, m, "newton", "best_sime")
        sg = best_steps(rows, m, "gd", "best_sime")
        ll = best_steps(rows, m, "newton", "layer_loss")

        def step_cell(best, sim, ell, digits):
            if sim[ell][0] < MATCH_THRESHOLD:
                return f"none (argmax {best[ell][0]:.{digits}g})"
            return f"{best[ell][0]:.{digits}g} [{fmt(best[ell][1])}, {fmt(best[ell][2])}]"

        body = markdown_table(
            ["layer", "layer MSE", "best Newton step (SimE)", "SimE there", "best GD step (SimE)", "SimE there",
             "Newton vs GD: SimE higher with Newton", "Fu et al. Newton step"],
            [[ell, ll[ell][0], step_cell(bn, sn, ell, 3), sn[ell][0], step_cell(bg, sg, ell, 4), sg[ell][0],
              closer_to_newton(rows, m, ell).text() if ell >= 1 else "–",
              FU_NEWTON[ell - 1] if 1 <= ell <= 12 else "–"] for ell in bn],
        )  # fmt: skip
        # layer 0 is the input: it always matches step 0. A later layer whose best match is step 0 matches the zero
        # prediction (w = 0), not a step of either method: said apart
        matched = {ref: [ell for ell in s if ell >= 1 and s[ell][0] >= MATCH_THRESHOLD and b[ell][0] > 0]
                   for ref, s, b in (("Newton", sn, bn), ("GD", sg, bg))}  # fmt: skip
        at_zero = {ref: [ell for ell in s if ell >= 1 and s[ell][0] >= MATCH_THRESHOLD and b[ell][0] == 0]
                   for ref, s, b in (("Newton", sn, bn), ("GD", sg, bg))}  # fmt: skip
        zero_line = "".join(f" Layers whose best match against {ref} is step 0, i.e. the zero prediction (no step of "
                            f"{ref} taken yet): {ells}." for ref, ells in at_zero.items() if ells)  # fmt: skip
        test = val(m, "test_mean")
        as_gd, as_newton = steps_to_reach(test, gd_loss), steps_to_reach(test, newton_loss)
        fit_line = fit_sentence(rows, m) if m == "lsa_full" else ""
        tables.append(f"### {m} (test MSE {fmt(test)}, mean over seeds; diverged seeds "
                      f"{int(sum(r['value'] for r in rows if r['method'] == m and r['metric'] == 'diverged'))})\n\n"
                      f"Test MSE {fmt(test)} against zero predictor {fmt(zero)} and least squares {fmt(ols)}: tuned GD "
                      f"reaches it between steps {as_gd}, iterative Newton between steps {as_newton} (on the "
                      f"{cfg.compare_prompts} comparison prompts). "
                      f"A best-matching step is claimed only where its SimE reaches {MATCH_THRESHOLD:g} "
                      f"(Fu et al. report ≈ 0.99); below it the cell says none. Layers with a match: Newton "
                      f"{matched['Newton'] or 'none'}, GD {matched['GD'] or 'none'} (at a step ≥ 1).{zero_line}"
                      f"{fit_line}\n\n"
                      f"{body}")  # fmt: skip
        summary_models[m] = {"test_loss": test, "gd_steps_to_reach": as_gd, "newton_steps_to_reach": as_newton,
                             "match_threshold": MATCH_THRESHOLD,
                             "best_newton": {k: v[0] if sn[k][0] >= MATCH_THRESHOLD else None
                                             for k, v in bn.items()},
                             "best_gd": {k: v[0] if sg[k][0] >= MATCH_THRESHOLD else None
                                         for k, v in bg.items()},
                             **conv_summary.get(m, {})}  # fmt: skip
    nl = ", ".join(f"{t}: {fmt(v)}" for t, v in newton_loss.items() if t <= 8)
    gl = ", ".join(f"{t}: {fmt(v)}" for t, v in gd_loss.items() if t in (1, 2, 4, 8, 16, 32))
    lt, gt = cfg.lsa_train, cfg.gpt_train
    grow = (f"grown depth by depth (depth ℓ starts from the trained depth ℓ−1 with its last layer repeated; each "
            f"depth trained until the plateau rule stops it, cap {lt.steps} steps)" if cfg.grow else
            f"trained from its random initialisation (plateau rule, cap {lt.steps} steps)")  # fmt: skip

    def plateau(tc) -> str:
        if not tc.plateau_patience:
            return f"{tc.steps} steps (no plateau rule)"
        return (f"until the held-out loss ({tc.eval_batch} prompts, every {tc.eval_every} steps) has not improved by "
                f"{tc.plateau_tol:g} (relative) for {tc.plateau_patience} evaluations, cap {tc.steps} steps")

    has_gpt = "gpt" in models
    gpt_line = (f"`gpt` = {cfg.gpt.layers}-layer softmax GPT (pre-LN, causal, MLP ratio {cfg.gpt.mlp_ratio}), width "
                f"{cfg.gpt.width}, {cfg.gpt.heads} heads, init std {cfg.gpt.init_std:g} (Fu et al.'s GPT-2: 12 layers, "
                f"width 256, 8 heads), seeds trained one after another, batch {gt.batch_size}, AdamW lr {gt.lr:g} "
                f"({gt.schedule}, halved every {gt.halve_every} steps), global clip {gt.clip_value:g}, on the "
                f"{_LOSS_WORDS.get(gt.loss, gt.loss)}, {plateau(gt)}, the rule counting only once the held-out loss "
                f"is below {cfg.gpt_escape:g}× the zero predictor's (it first sits on the zero-predictor plateau); "
                f"per-layer ridge read-outs fitted on {cfg.probe_prompts} probe prompts.\n" if has_gpt else
                "The softmax GPT was not run (models: " + ", ".join(cfg.models) + "); `--set models=lsa_full,gpt` "
                "adds it.\n")
    gpt_bar = (" The softmax GPT is held to the same bar (the best a linear transformer of its depth reaches); it is "
               "not in that class, so beyond the tolerance it is flagged as far above the bar, and whether its "
               "training reached a plateau is said separately (plateau rule or step cap)."
               if has_gpt else "")  # fmt: skip
    depth = max(model_depth(cfg, m) for m in models) if models else cfg.lsa.layers
    ours = " and ".join(f"a {model_depth(cfg, m)}-layer {MODEL_LABELS.get(m, m)}" for m in models)
    last = max(newton_loss) if newton_loss else 0
    text = f"""# newton_vs_gd: best-matching Newton and GD steps per layer (Fu et al. 2023; Giannou et al. 2024)

Setting: d = {cfg.prompt.d}, n = {cfg.prompt.n}, x ~ N(0, I), w* ~ N(0, I), noiseless; seeds {list(cfg.seeds)}.
Models: `lsa_full` = {cfg.lsa.layers}-layer full LSA (unconstrained P, Q, init std {cfg.lsa.init_std:g}), {grow};
batch {lt.batch_size}, AdamW lr {lt.lr:g} ({lt.schedule} schedule, halved every {lt.halve_every} steps),
global clip {lt.clip_value:g}, {lt.dtype}; trained {plateau(lt)}.
{gpt_line}Test MSE on {cfg.test_prompts} test prompts per seed; the layer comparisons on
the first {cfg.compare_prompts} of them.
Iterative Newton: M₀ = S/‖SSᵀ‖_F (Fu's code). GD: tuned constant η = {fmt(eta)} (mean over seeds; normalised
gradient; `reference_optimizers.tune` on {cfg.tune_prompts} tune prompts for the best query loss after
{cfg.gd_tune_steps} steps). GD++: per-step (η, γ) tuned the same way for each model depth. Layer 0 = the input
(prediction 0). Least squares on the comparison prompts: {fmt(ols)}; zero predictor {fmt(zero)}.
Iterative Newton query MSE at steps 0..8: {nl}.
Tuned GD query MSE at steps 1, 2, 4, 8, 16, 32: {gl}.

## Convergence: each model against its class optimum

The class optimum of an L-layer full LSA is tuned L-step GD++ (von Oswald et al.: the full LSA expresses it),
measured on the same test prompts; a model more than log {math.exp(cfg.class_tolerance):.3g} = {cfg.class_tolerance:.3g}
above it in log test MSE is flagged as not converged.{gpt_bar} Least squares (≈ 0 here, n > d, noiseless) is out
of reach of any finite depth.
Test MSE per seed with its median, trimmed mean, the spread of log MSE across disjoint parts of the test set and
the share of the loss carried by the worst 1% of prompts (heavy tails).

{conv_text}

## Layer by layer

{(chr(10) * 2).join(tables)}

## Ours vs Fu et al.

Fu et al. (12-layer GPT-2, width 256, d = 20, n ≤ 40, 500k steps): best-matching Newton steps
{", ".join(map(str, FU_NEWTON))} for layers 1..12 (≈ 3 Newton iterations per middle layer), while GD needs
exponentially many steps per layer. Ours: {ours} at d = {cfg.prompt.d}.

- Newton–Schulz converges in about log₂ κ(S)² + log log(1/ε) iterations; at d = {cfg.prompt.d}, n = {cfg.prompt.n}
  iterative Newton's query MSE is {fmt(newton_loss.get(last, math.nan))} at step {last}, the last compared.
- A {depth}-layer model can at most show the first part of Fu's staircase; a
  best-matching step is read only at layers whose SimE reaches {MATCH_THRESHOLD:g}.
- The LSA uses its own per-layer read-out (−y-slot of the query); Fu's probes are retrained read-outs (ours for
  the GPT: ridge on the query position's hidden state). SimE here runs over the n context inputs and the query,
  not over causal prefixes.
- The "Newton vs GD" column is a paired comparison over seeds of each layer's best SimE against either method
  (holds: the 95% interval over seeds of best SimE with Newton minus best SimE with GD lies above 0).

Figures: `figures/heatmap_<model>_<newton|gd>.png` (layer × step SimE), `figures/best_matching_steps.png`.
"""
    return finish_report(run, text, {
            "experiment": NAME, "tuned_gd_eta": eta, "least_squares_loss": ols, "zero_predictor_loss": zero,
            "gd_loss": {t: v for t, v in gd_loss.items() if t <= 32}, "models": summary_models,
            "fu_newton_steps": list(FU_NEWTON), "figures": [str(p.relative_to(run_dir)) for p in figs]})  # fmt: skip
