"""The report of :mod:`experiments.manifold_icl`: per model and depth the steps and seconds to the target gap,
the final gap to tuned Σ⁻¹-PGD (:func:`experiments.convergence.class_gap`, flagged beyond the target), the
constraint violation and the principal angles; paired comparisons with the unconstrained model, every verdict
from :func:`experiments.reporting.paired_verdict`; held-out loss against steps and against CPU seconds, the PGD
level dashed.

The tidy rows are read into ``{(tag, L): {seed: {key: value}}}`` (:func:`_table`; ``tag`` = ``method@lr``, ``key``
= the metric with its eigenspace and training step, ``angle:e1:t100``), the form every helper below reads.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import ticker

from experiments.convergence import class_gap
from experiments.manifold_icl import HEADLINE, REFERENCE, REFERENCES, ManifoldICLConfig, first_reach, settled
from experiments.reporting import (
    distinct_colours,
    finish_axes,
    finish_report,
    fmt,
    markdown_table,
    mean_ci,
    open_report,
    paired_verdict,
)
from icl.plotting import plt, save_figure, set_theme

#: readable names of the methods (figures)
LABELS = {
    "spectral_manifold_adam": "spectral + ManifoldAdam",
    "unconstrained_adam": "unconstrained + AdamW (pgd_depth recipe)",
    "unconstrained_adam_cosine": "unconstrained + Adam, cosine",
    "spectral_projected_adam": "spectral + projected Riemannian Adam",
    "spectral_manifold_sgd": "spectral + manifold SGD",
    "spectral_manifold_momentum": "spectral + manifold SGD, momentum 0.9",
    "cgd_spectral_manifold_adam": "CGD-like Memformer, spectral + ManifoldAdam",
    "lfom_spectral_manifold_adam": "LFOM Memformer, spectral + ManifoldAdam",
    "per_layer_basis_manifold_adam": "spectral, one U per layer + ManifoldAdam",
    "factorised_stiefel_adam": "factorised, W_K, W_Q on Stiefel + ManifoldAdam",
}


def _split(tag: str) -> tuple[str, float]:
    name, _, lr = tag.partition("@")
    return name, float(lr)


def _tag(method: str, lr: float | None) -> str:
    return method if lr is None else f"{method}@{lr:g}"


def _table(rows: list[dict]) -> dict:
    """{(tag, L): {seed: {key: value}}} of the tidy rows: tag = ``method@lr``; key = the metric, then
    ``:e{k}`` (the angle's eigenspace), ``:{reference}@{lr}`` (a paired difference) and ``:t{train_step}``."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        key = r["metric"]
        if key == "angle" and r["k"] is not None:
            key += f":e{r['k']}"
        elif key == "step_sorted" and r["k"] is not None:
            key += f":k{r['k']}"
        if r["reference"] is not None:
            key += ":" + _tag(r["reference"], r["param"])
        if r["train_step"] is not None:
            key += f":t{r['train_step']}"
        out[(_tag(r["method"], r["lr"]), r["depth"])][r["seed"]][key] = r["value"]
    return out


def _curve(per_seed: dict, prefix: str) -> dict[int, dict[int, float]]:
    """{seed: {step: value}} of the metrics ``prefix:t{step}``."""
    out: dict[int, dict[int, float]] = {}
    for seed, m in per_seed.items():
        c = {int(k.rsplit(":t", 1)[1]): v for k, v in m.items() if k.startswith(prefix + ":t")}
        if c:
            out[seed] = c
    return out


def select_lrs(tab: dict, methods, depths) -> dict[tuple[str, int], str]:
    """Per (method, L), the tag whose mean final held-out gap over seeds is lowest (a diverged seed disqualifies)."""
    best: dict[tuple[str, int], tuple[float, str]] = {}
    for (tag, L), per_seed in tab.items():
        name = tag.partition("@")[0]
        if name not in methods or L not in depths or "final_val_gap" not in next(iter(per_seed.values())):
            continue
        vals = [m.get("final_val_gap", math.inf) for m in per_seed.values()]
        score = float(np.mean(vals)) if all(math.isfinite(v) for v in vals) else math.inf
        if (name, L) not in best or score < best[(name, L)][0]:
            best[(name, L)] = (score, tag)
    return {k: tag for k, (_, tag) in best.items()}


def _ci(values, level=0.95) -> tuple[float, float, float]:
    return mean_ci([v for v in values if math.isfinite(v)], level)


def _fmt_ci(t, digits=3) -> str:
    m, lo, hi = t
    if not math.isfinite(m):
        return "–"
    return f"{m:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]" if hi > lo else f"{m:.{digits}g}"


def method_stats(tab: dict, tag: str, L: int, target: float) -> dict[str, Any]:
    """One (method, L): per seed the first step within ``target`` (``reach``, NaN if never), the first step from
    which it stays within (``stay``), the wall and CPU seconds at ``reach``, the last step trained (``last``);
    over seeds the final test gap, ms/step, the worst constraint violation and the final largest angle."""
    per_seed = tab[(tag, L)]
    gaps = _curve(per_seed, "val_gap")
    walls, cpus = _curve(per_seed, "wall_s"), _curve(per_seed, "cpu_s")

    def at(curves: dict, s: int, step: float) -> float:
        c = curves.get(s, {})
        if not math.isfinite(step) or not c:
            return math.nan
        return c.get(int(step), c[min(c, key=lambda t: abs(t - step))])

    reach = {s: first_reach(c, target) for s, c in gaps.items()}
    stay = {s: settled(c, target) for s, c in gaps.items()}
    angles = _curve(per_seed, "angle_max")
    viol = _curve(per_seed, "violation")
    final_angle = [c[max(c)] for c in angles.values()]
    return dict(
        seeds=sorted(per_seed), reach=reach, stay=stay, last={s: float(max(c)) for s, c in gaps.items()},
        secs={s: at(walls, s, r) for s, r in reach.items()}, cpu={s: at(cpus, s, r) for s, r in reach.items()},
        last_secs={s: at(walls, s, max(c)) for s, c in gaps.items()},
        last_cpu={s: at(cpus, s, max(c)) for s, c in gaps.items()},
        reached=sum(math.isfinite(r) for r in reach.values()),
        final_gaps={s: m.get("final_gap", math.nan) for s, m in per_seed.items()},
        final_gap=_ci([m.get("final_gap", math.nan) for m in per_seed.values()]),
        final_gap_se=float(np.sqrt(np.mean([m.get("final_gap_stderr", math.nan) ** 2 for m in per_seed.values()]))),
        ms=_ci([m.get("time_per_step_ms", math.nan) for m in per_seed.values()]),
        max_violation=max((max(c.values()) for c in viol.values()), default=math.nan),
        final_angle=_ci(final_angle) if final_angle else (math.nan,) * 3,
    )  # fmt: skip


def _censored(a: dict, b: dict, key: str) -> tuple[dict[int, float], dict[int, float], dict[int, str]]:
    """Per seed log(b's count) and log(a's count) of ``key`` (``reach`` steps, ``secs``, ``cpu``) for the paired
    ratio b/a, and what that ratio is (``kind``):

    - ``exact``: both came within the target;
    - ``lower``: b (the reference) never did and counts with its last step (or its time there): the true ratio is
      larger, the seed's value a lower bound (right-censored);
    - ``upper``: a (the method) never did and counts with its last step: the true ratio is smaller, an upper bound.

    A seed where neither came within the target has no ratio and is left out."""
    last = {"reach": "last", "secs": "last_secs", "cpu": "last_cpu"}[key]
    la, lb, kind = {}, {}, {}
    for s in a["seeds"]:
        if s not in b["seeds"]:
            continue
        ra, rb = math.isfinite(a["reach"].get(s, math.nan)), math.isfinite(b["reach"].get(s, math.nan))
        if not (ra or rb):
            continue
        va = a[key].get(s, math.nan) if ra else a[last].get(s, math.nan)
        vb = b[key].get(s, math.nan) if rb else b[last].get(s, math.nan)
        if math.isfinite(va) and math.isfinite(vb) and va > 0 and vb > 0:
            la[s], lb[s] = math.log(va), math.log(vb)
            kind[s] = "exact" if ra and rb else "lower" if ra else "upper"
    return la, lb, kind


def sign_test(ratios: dict[int, float], kind: dict[int, str], seeds: list, want: float) -> dict[str, Any]:
    """The censoring-proof check of "ratio ≥ ``want``" on every seed: a seed counts for the claim when its ratio
    is ≥ ``want`` for sure (exact, or a lower bound ≥ ``want``), against it when it is < ``want`` for sure (exact,
    or an upper bound < ``want``), and as neither otherwise (a seed without a ratio included). One-sided exact sign
    test over all ``seeds``: the claim holds when P(Binomial(n, ½) ≥ #for) < 0.05, does not hold when
    P(Binomial(n, ½) ≥ #against) < 0.05, undecided otherwise (with 5 seeds, it holds only when all 5 are for)."""
    n = len(seeds)
    yes = sum(1 for s, r in ratios.items() if r >= want and kind[s] in ("exact", "lower"))
    no = sum(1 for s, r in ratios.items() if r < want and kind[s] in ("exact", "upper"))

    def tail(k: int) -> float:
        return sum(math.comb(n, j) for j in range(k, n + 1)) / 2**n if n else 1.0

    p_yes, p_no = tail(yes), tail(no)
    word = "holds" if p_yes < 0.05 else "does not hold" if p_no < 0.05 else "undecided"
    return dict(word=word, yes=yes, no=no, n=n, p=p_yes)


def paired(tab: dict, tag: str, ref: str, L: int, target: float, want_ratio: float = 3.0,
           no_worse_margin: float = 0.0, statistic: str = "mean") -> dict[str, Any]:  # fmt: skip
    """The paired comparisons of ``tag`` with ``ref`` over seeds (:func:`paired_verdict`): the ratio ref/tag of
    steps (and wall and CPU seconds) to the target gap, claim "≥ ``want_ratio``× fewer" (a t-interval on the log
    ratios, censored seeds at their bound, see :func:`_censored`; a seed where only the reference came within
    the target makes "holds" at best "undecided"; beside it the censoring-proof :func:`sign_test`); the final test
    gap difference tag − ref, claims "lower" and "higher" (margin 0), and "no worse": the upper end of its 95%
    interval ≤ ``no_worse_margin``, on ``statistic`` of the per-prompt test errors (``mean``: log MSE;
    ``trimmed_mean``: the ``gap_vs_trimmed`` rows); the other statistic's comparison is kept under ``beside``."""
    a, b = method_stats(tab, tag, L, target), method_stats(tab, ref, L, target)
    seeds = [s for s in a["seeds"] if s in b["seeds"]]
    out: dict[str, Any] = {"seeds": seeds}
    for key in ("reach", "secs", "cpu"):
        la, lb, kind = _censored(a, b, key)
        faster = paired_verdict(lb, la, "greater", margin=math.log(want_ratio))  # log(ref/tag) > log want
        if faster.word == "holds" and "upper" in kind.values():
            faster = replace(faster, word="undecided")
        per_seed = {s: math.exp(lb[s] - la[s]) for s in la}
        out[key] = dict(verdict=faster, ratio=tuple(math.exp(x) for x in (faster.mean, faster.lo, faster.hi)),
                        censored=sum(k == "lower" for k in kind.values()), kind=kind, per_seed=per_seed,
                        sign=sign_test(per_seed, kind, seeds, want_ratio))  # fmt: skip
    diffs = {"mean": {s: a["final_gaps"][s] - b["final_gaps"][s] for s in seeds},
             "trimmed_mean": {s: tab[(tag, L)][s].get("gap_vs_trimmed:" + ref, math.nan) for s in seeds}}
    zero = dict.fromkeys(seeds, 0.0)

    def compare(d: dict[int, float]) -> dict[str, Any]:
        return dict(lower=paired_verdict(d, zero, "less"), higher=paired_verdict(d, zero, "greater"),
                    no_worse=paired_verdict(d, zero, "greater", margin=no_worse_margin), per_seed=d)  # fmt: skip

    out.update(compare(diffs[statistic]))  # "no_worse": "does not hold" = no worse
    out["statistic"] = statistic
    other = "trimmed_mean" if statistic == "mean" else "mean"
    out["beside"] = {**compare(diffs[other]), "statistic": other}
    out["no_worse_margin"] = no_worse_margin
    out["gap_vs_stderr"] = {s: tab[(tag, L)][s].get("gap_vs_stderr:" + ref, math.nan) for s in out["seeds"]}
    return out


def no_worse_word(p: dict) -> str:
    """'holds' when the upper end of the final-gap difference's interval is ≤ the margin (the claim 'higher by
    more than the margin' rejected by the whole interval), 'does not hold' when its lower end is above it (``p``:
    :func:`paired`'s answer, or its ``beside``)."""
    return {True: "does not hold", False: "holds"}.get(p["no_worse"].holds, "undecided")


def _ratio_text(p: dict, key: str, unit: str, want: float) -> str:
    v, (r, lo, hi), kind = p[key]["verdict"], p[key]["ratio"], p[key]["kind"]
    if v.count == 0:
        return f"no seed where either reaches the target ({unit})"
    band = f" [{lo:.3g}, {hi:.3g}]" if v.count >= 2 else ""
    lower, upper = sum(k == "lower" for k in kind.values()), sum(k == "upper" for k in kind.values())
    bound = ""
    if lower:
        bound += (f"; {lower} seed(s) where the reference never reached it count at its last step (their ratios "
                  "lower bounds, the interval one for those bounds)")  # fmt: skip
    if upper:
        bound += f"; {upper} seed(s) where this method never reached it count at its last step (upper bounds)"
    sg = p[key]["sign"]
    sign = f"; ≥ {want:g}× on {sg['yes']}/{sg['n']} seeds, sign test p = {sg['p']:.3g}: **{sg['word']}**"
    size = f"{r:.3g}×{band} fewer" if r >= 1 else f"{1 / r:.3g}× more (ratio {r:.3g}{band})"
    return f"{size} {unit} over {v.count} seed(s) (≥ {want:g}× fewer: **{v.word}**{bound}{sign})"


STATISTIC_TEXT = {"mean": "log MSE", "trimmed_mean": "log 5%-trimmed mean"}


def _gap_text(p: dict, ref: str, role: str) -> str:
    lower, higher = p["lower"], p["higher"]
    word = "lower than" if lower.holds else "higher than" if higher.holds else "not distinguishable at 95% from"
    return (f"final test {STATISTIC_TEXT[p['statistic']]} ({role}) {word} {ref}'s (Δ = {lower.mean:+.3g} "
            f"[{lower.lo:+.3g}, {lower.hi:+.3g}] over {lower.count} seeds; 'no worse' (upper end ≤ "
            f"{p['no_worse_margin']:+g}) **{no_worse_word(p)}**)")


def verdict(name: str, ref: str, L: int, p: dict, target: float, want_ratio: float = 3.0) -> str:
    """A sentence computed from the paired verdicts (never hand-written)."""
    parts = [f"to the {target:g} gap: " + _ratio_text(p, "reach", "steps", want_ratio),
             _ratio_text(p, "cpu", "CPU seconds", want_ratio), _ratio_text(p, "secs", "wall seconds", want_ratio)]
    if p["higher"].count:
        parts.append(_gap_text(p, ref, "the verdict's statistic"))
        if p["beside"]["higher"].count:
            parts.append("beside it (not the verdict): " + _gap_text({**p["beside"], "no_worse_margin":
                                                                      p["no_worse_margin"]}, ref, "reported beside"))
    return f"L = {L}, {name} vs {ref}: " + "; ".join(parts) + "."


#: the loss figures add a zoomed panel, PGD / ZOOM_BELOW to PGD × ZOOM, when a curve rises above PGD × ZOOM
ZOOM, ZOOM_BELOW = 1.5, 1.1


def _plot(tab, selected, L, x, stem, title, target) -> list[Path]:
    """Held-out MSE divided by tuned Σ⁻¹-PGD's on the same prompts (each seed its own PGD; mean over the method's
    seeds, so that methods run on fewer seeds compare with the same level) against steps or CPU seconds; dashed:
    PGD (1)."""
    set_theme()
    curves = []
    for (name, tag), colour in zip(selected.items(), distinct_colours(max(len(selected), 1))):
        gaps, cpus = _curve(tab[(tag, L)], "val_gap"), _curve(tab[(tag, L)], "cpu_s")
        if not gaps:
            continue
        steps = sorted(set.intersection(*(set(c) for c in gaps.values())))
        if x == "cpu":
            steps = [t for t in steps if all(t in cpus.get(s, {}) for s in gaps)]
        mse = np.array([np.mean([math.exp(gaps[s][t]) for s in gaps]) for t in steps])  # MSE / PGD's, same prompts
        xs = np.array(steps, float) if x == "step" else np.array([np.mean([cpus[s][t] for s in gaps]) for t in steps])
        curves.append((xs, mse, colour, f"{LABELS.get(name, name)} (lr {_split(tag)[1]:g})"))
    level = 1.0  # tuned PGD on the same prompts, each seed its own
    data = [v for _, mse, *_ in curves for v in mse]
    zoom = bool(data) and max(data) > level * ZOOM  # some curve leaves the band: a second panel zooms in on PGD
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(11.0 if zoom else 7.0, 4.0), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for xs, mse, colour, label in curves:
            ax.plot(xs, mse, color=colour, lw=1.3, label=label)
        ax.axhline(level, ls="--", lw=1.2, color="black", label="tuned Σ⁻¹-PGD")
        ax.axhline(level * math.exp(target), ls=":", lw=1, color="grey", label=f"PGD × e^{target:g} (target)")
        ax.set_yscale("log")
        ax.set_xlabel("training step" if x == "step" else "CPU seconds of training (1 thread; mean over seeds)")
        ax.set_ylabel("held-out MSE / tuned Σ⁻¹-PGD's")
        ax.set_title(title if i == 0 else f"{title}: zoom, PGD/{ZOOM_BELOW:g} to {ZOOM:g}×PGD", fontsize=9)
        last = i == len(axes[0]) - 1
        finish_axes(ax, data + [level], logy=True, integer_x=x == "step", legend=last)
        if i == 1:
            ax.set_ylim(level / ZOOM_BELOW, level * ZOOM)
        _plain_ratio_ticks(ax)
    if zoom:
        fig.subplots_adjust(wspace=0.3)  # (the right panel's y-label clear of the left panel)
    caption = ("held-out (val) MSE divided by tuned Σ⁻¹-PGD's on the same prompts (dashed, 1), mean over each method's "
               "seeds (the side methods run on fewer seeds), up to the last step\nevery seed ran (diverged seeds left "
               "out); dotted: the target gap")
    if zoom:
        caption += "\nright: the same curves between those limits (curves above them leave the panel)"
    if x == "cpu":
        caption += ("\nthe unconstrained model trains its seeds as one seed batch: its CPU seconds are the batch's "
                    "divided by the seeds (a batch costs less than one run per seed, so this favours it)")
    fig.text(0.01, -0.02, caption, fontsize=7, ha="left", va="top")
    return save_figure(fig, stem)


def _plain_ratio_ticks(ax) -> None:
    """Ratio ticks as plain numbers (1, 1.1, 10, …, not 1.1×10⁰); within a decade, about six evenly spaced ones
    and 1 (a log axis there has one decade tick or none)."""
    y0, y1 = ax.get_ylim()
    if y1 / y0 < 10:  # (1, PGD's level, always among them)
        even = ticker.MaxNLocator(nbins=6).tick_values(y0, y1)
        ticks = [t for t in even if t > 0 and abs(math.log(t)) > 0.04] + [1.0]
        ax.yaxis.set_major_locator(ticker.FixedLocator(sorted(t for t in ticks if y0 <= t <= y1)))
        ax.yaxis.set_minor_locator(ticker.NullLocator())
        ax.set_ylim(y0, y1)
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _plot_angles(tab, selected, depths, stem) -> list[Path]:
    set_theme()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colours = distinct_colours(len(depths))
    data = []
    for L, colour in zip(depths, colours):
        tag = selected.get(("spectral_manifold_adam", L))
        c = _curve(tab[(tag, L)], "angle_max") if tag else {}
        if not c:
            continue
        steps = sorted(set.intersection(*(set(v) for v in c.values())))
        ys = [np.mean([c[s][t] for s in c]) for t in steps]
        ax.plot(steps, ys, color=colour, label=f"L = {L}")
        data += ys
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("largest principal angle to Σ's eigenspaces (°)")
    ax.set_title("spectral sparse LSA + ManifoldAdam: learned U vs Σ's eigenbasis", fontsize=9)
    finish_axes(ax, data, logy=True, integer_x=True)
    fig.text(0.01, -0.02, "mean over seeds; the λ = 1 eigenspace is 3-dimensional (rotations inside it cost nothing)",
             fontsize=7, ha="left", va="top")  # fmt: skip
    return save_figure(fig, stem)


def _per_seed(values: dict[int, float], digits: int = 3) -> str:
    return ", ".join(f"s{s}: {fmt(v, digits) if math.isfinite(v) else '–'}" for s, v in sorted(values.items()))


def report(run_dir) -> dict:
    run = open_report(run_dir, ManifoldICLConfig)
    run_dir, cfg, rows = run.run_dir, run.config, run.rows
    tab = _table(rows)
    sel = select_lrs(tab, cfg.methods, cfg.depths)
    target = cfg.gap_target
    figs: list[Path] = []
    body, seed_rows, verdicts, summary_rows, flagged = [], [], [], {}, []
    for L in cfg.depths:
        chosen = {name: sel[(name, L)] for name in cfg.methods if (name, L) in sel}
        if not chosen:
            continue
        title = f"Ahn et al.'s data, d = {cfg.prompt.d}, n = {cfg.prompt.n}, L = {L}"
        figs += _plot(tab, chosen, L, "step", run_dir / "figures" / f"loss_vs_steps_L{L}", title, target)
        figs += _plot(tab, chosen, L, "cpu", run_dir / "figures" / f"loss_vs_seconds_L{L}", title, target)
        for name, tag in chosen.items():
            st = method_stats(tab, tag, L, target)
            pgd = tab[("pgd_tuned", L)]
            gaps = {s: class_gap(math.log(m["test_loss"]), math.log(pgd[s]["test_loss"]), target, "tuned Σ⁻¹-PGD")
                    for s, m in tab[(tag, L)].items() if "test_loss" in m}  # fmt: skip
            flagged += [f"{name} L = {L} seed {s}: {g.text()}" for s, g in gaps.items() if g.flagged]
            flagged += [f"{name} L = {L} seed {s}: **diverged** (no final model)"
                        for s, m in tab[(tag, L)].items() if m.get("diverged") == 1.0]  # fmt: skip
            body.append([L, name, f"{_split(tag)[1]:g}", f"{st['reached']}/{len(st['seeds'])}",
                         _fmt_ci(_ci(st["reach"].values())), _fmt_ci(_ci(st["stay"].values())),
                         _fmt_ci(_ci(st["cpu"].values())), _fmt_ci(_ci(st["secs"].values())),
                         _fmt_ci(st["final_gap"]), f"{st['final_gap_se']:.2g}",
                         f"{sum(g.flagged for g in gaps.values())}/{len(gaps)}", _fmt_ci(st["ms"]),
                         fmt(st["max_violation"], 2), _fmt_ci(st["final_angle"])])  # fmt: skip
            if name in HEADLINE:
                seed_rows.append([L, name, _per_seed(st["reach"], 4), _per_seed(st["cpu"]),
                                  _per_seed(st["final_gaps"]), _per_seed(st["last"], 5)])  # fmt: skip
            summary_rows[f"{name}/L{L}"] = {
                "lr": _split(tag)[1], "steps_to_target": _ci(st["reach"].values())[0],
                "steps_to_target_per_seed": st["reach"], "cpu_seconds_to_target": _ci(st["cpu"].values())[0],
                "wall_seconds_to_target": _ci(st["secs"].values())[0], "final_gap": st["final_gap"][0],
                "final_gap_per_seed": st["final_gaps"], "reached": st["reached"],
                "max_violation": st["max_violation"]}  # fmt: skip
        for ref_name in REFERENCES:
            ref = chosen.get(ref_name)
            if ref is None:
                continue
            for name, tag in chosen.items():
                if name in REFERENCES:
                    continue
                p = paired(tab, tag, ref, L, target, no_worse_margin=cfg.no_worse_margin,
                           statistic=cfg.no_worse_statistic)  # fmt: skip
                verdicts.append(verdict(name, ref_name, L, p, target))
                summary_rows[f"{name}/L{L}"][f"vs_{ref_name}"] = dict(
                    steps_ratio=p["reach"]["ratio"], steps_verdict=p["reach"]["verdict"].word,
                    steps_ratio_per_seed=p["reach"]["per_seed"], steps_ratio_kind=p["reach"]["kind"],
                    censored=p["reach"]["censored"], steps_sign_test=p["reach"]["sign"],
                    cpu_ratio=p["cpu"]["ratio"], wall_ratio=p["secs"]["ratio"],
                    gap_difference=(p["lower"].mean, p["lower"].lo, p["lower"].hi),
                    gap_difference_per_seed=p["per_seed"], no_worse=no_worse_word(p),
                    no_worse_margin=p["no_worse_margin"], no_worse_statistic=p["statistic"],
                    beside={p["beside"]["statistic"]: dict(
                        gap_difference=(p["beside"]["lower"].mean, p["beside"]["lower"].lo, p["beside"]["lower"].hi),
                        gap_difference_per_seed=p["beside"]["per_seed"],
                        no_worse=no_worse_word({**p["beside"], "no_worse_margin": p["no_worse_margin"]}))})  # fmt: skip
    figs += _plot_angles(tab, sel, cfg.depths, run_dir / "figures" / "principal_angles")
    table = markdown_table(
        ["L", "method", "lr", "reached", f"steps to gap {target:g}", "steps to stay within",
         "CPU s to gap", "wall s to gap", "final test gap (95% CI over seeds)", "its SE over prompts",
         f"seeds > {target:g}", "ms/step (wall)", "max ‖UᵀU−I‖", "final max angle (°)"],
        body,
    )  # fmt: skip
    seed_table = markdown_table(["L", "method", f"steps to gap {target:g}", "CPU s to gap", "final test gap",
                                 "steps run (cap or plateau rule)"], seed_rows)  # fmt: skip

    def ref_line(method: str) -> str:
        vals = {L: mean_ci([r["value"] for r in rows if r["method"] == method and r["depth"] == L
                            and r["metric"] == "test_loss"])[0] for L in cfg.depths}  # fmt: skip
        return ", ".join(f"L = {L}: {math.log(v):.3f}" for L, v in vals.items() if v > 0)

    steps3 = [[r["value"] for r in rows if r["method"] == "pgd_tuned" and r["depth"] == 3 and r["seed"] == s
               and r["metric"] == "step_sorted"] for s in sorted({r["seed"] for r in rows})]  # fmt: skip
    steps3_text = "; ".join(", ".join(f"{v:.3f}" for v in st) for st in steps3 if st)
    grid = sorted({(_tag(r["method"], r["lr"]), r["depth"]) for r in rows if r["metric"] == "final_val_gap"})
    grid_table = markdown_table(["method@lr", "L", "mean final val gap"],
                                [[t, L, fmt(float(np.mean([m["final_val_gap"] for m in tab[(t, L)].values()])))]
                                 for t, L in grid])  # fmt: skip
    side = "every depth" if cfg.side_depths is None else f"L = {', '.join(map(str, cfg.side_depths))} only"
    side_seeds = "" if cfg.side_seeds is None else f", seeds {list(cfg.side_seeds)} only"
    tr = cfg.train
    clip_text = (f"{cfg.constrained_clip.replace('_', '-')} {cfg.constrained_clip_value:g}"
                 if cfg.constrained_clip != "none" else "none")  # fmt: skip
    unit = cfg.constrained_depth_unit
    halving = f"{cfg.constrained_halve_every}·L/{unit} steps" if unit else f"{cfg.constrained_halve_every} steps"
    cap = f"{tr.steps}·L/{unit} steps" if unit else f"{tr.steps} steps at every depth"
    text = f"""# manifold_icl: spectral models on the Stiefel manifold vs unconstrained LSA (issue #19)

Setting: Ahn et al.'s law (d = {cfg.prompt.d}, n = {cfg.prompt.n}, Σ eigenvalues {cfg.prompt.eigenvalues},
w* ~ N(0, Σ⁻¹)), {tr.dtype}. **One data regime for every method**: batch {tr.batch_size}, a fresh batch every
{tr.resample_every} step(s), held-out evaluation every {tr.eval_every} steps on {tr.eval_batch} `val` prompts,
final scores on {cfg.test_prompts} `test` prompts per seed; seeds {list(cfg.seeds)}, depths {list(cfg.depths)}
(methods other than {", ".join(HEADLINE)} at {side}{side_seeds}).

- Spectral models: A_ℓ = U diag(s_ℓ) Uᵀ, one U ∈ St({cfg.prompt.d}, {cfg.prompt.d}) shared across layers, spectra
  stored {cfg.spectrum!r}, U's learning rate {cfg.basis_lr_factor:g} × the spectra's, Adam β = {tuple(cfg.adam_betas)}
  (U: {tuple(cfg.basis_betas or cfg.adam_betas)}), gradient clip {clip_text} (the SGD-type methods: none),
  {cfg.constrained_schedule} schedule halved every {halving}, cap {cap}; plateau rule: stop when the
  held-out loss has not improved by {tr.plateau_tol:g} (relative) for {tr.plateau_patience} evaluations
  ({tr.plateau_patience * tr.eval_every} steps).
- Unconstrained (`{REFERENCE}`): pgd_depth's converged recipe per layer, AdamW β = {tuple(cfg.reference_betas)},
  lr {", ".join(f"{x:g}" for x in cfg.unconstrained_lrs)}, per-matrix clip 0.01, lr halved every
  {cfg.halve_every}·L steps, cap {cfg.reference_steps}·L steps; plateau rule with its patience in steps: stop when
  the held-out loss has not improved by {tr.plateau_tol:g} (relative) for {cfg.reference_patience}·L steps (every
  seed of the seed batch), which a slow descent through the halvings does not trigger.

Gap = log(model MSE) − log(tuned Σ⁻¹-PGD MSE) on the same prompts (tuned on {cfg.tune_prompts} `tune` prompts by
`reference_optimizers.tune`, started from the Σ⁻¹ Krylov bound's steps). Log test MSE of tuned Σ⁻¹-PGD (mean over
seeds): {ref_line("pgd_tuned")}; of the Σ⁻¹ Krylov bound (fitted on the tune prompts, evaluated on the test
prompts): {ref_line("krylov_bound_sigma_inv")}. Tuned PGD's sorted steps at L = 3 per seed: {steps3_text}
(Ahn et al.: 0.43, 0.69, 1.72).

## Per model and depth (selected learning rate)

{table}

"Reached": seeds whose held-out gap came within {target:g} (first evaluation, every {tr.eval_every} steps);
"steps to stay within": the first evaluation from which it stays within {target:g} to the end. CPU seconds: the
training process's CPU time (1 thread) at that evaluation, which does not depend on the machine's load (on a
quiet machine it is the wall time); the unconstrained model trains its seeds as one seed batch, and its seconds are
the batch's divided by the seeds (which favours it: a batch costs less than one run per seed); wall seconds were
measured on a shared, loaded machine. "seeds > {target:g}":
final test gaps further than {target:g} above tuned PGD (`class_gap`, flagged below). The angle is the largest
principal angle between the learned U's columns and the eigenspace of Σ they represent.

Per seed (the headline methods):

{seed_table}

## Paired comparisons with the unconstrained model (same seeds, data regime and test prompts)

{chr(10).join("- " + v for v in verdicts) if verdicts else "(the unconstrained model was not run)"}

Ratios: (unconstrained count) / (method's count) per seed, geometric mean over seeds with a 95% t-interval on the
log ratio (`paired_verdict`, claim: log ratio > log 3: holds when the whole interval is above). **Not reached**
is a censored count: a reference that never came within {target:g} counts with its last step (its cap, or where the
plateau rule stopped it), so that seed's ratio is a lower bound and the interval is an interval for those bounds
(the true ratios are larger; since a t-interval is not monotone in one value, the sign test beside it is the
censoring-proof check); a method that never came within it counts with its last step too (an upper bound), and
its "holds" is then at most "undecided". Sign test: seeds whose ratio is ≥ 3 for sure (exact or lower bound) out of
all seeds, one-sided exact binomial p (with 5 seeds, "holds" needs all 5). Final gap: paired difference
(method − unconstrained) of the two log test MSEs on the same test prompts per seed, t-interval over seeds;
**"no worse" holds when the upper end of its 95% interval is ≤ {cfg.no_worse_margin:g}** (in log), does
not hold when its lower end is above that. The verdict's statistic, fixed in the config before the run
(`no_worse_statistic`): **{STATISTIC_TEXT[cfg.no_worse_statistic]}** of the per-prompt test errors; the per-prompt
errors are heavy-tailed (a few prompts carry the mean), so the other statistic (log MSE or log 5%-trimmed mean) is
reported beside it, never in its place. The issue's target for the spectral sparse LSA at L = 3 and 4: ≥ 3×
fewer steps to the {target:g} gap, and a final gap no worse than the unconstrained model's.

## Models further than {target:g} above tuned PGD at the end

{chr(10).join("- " + f for f in flagged) if flagged else "None."}

## The factorised St(k, d+1) row

`factorised_stiefel_adam` is the former manifold_adam study's model (von Oswald et al.'s factorised LSA with W_K, W_Q on
St({cfg.factorised_key_size}, {cfg.prompt.d + 1})) on this data. Its key-query product W_Kᵀ W_Q is a product of
partial isometries with unit singular values, so it cannot express the Σ⁻¹-shaped preconditioner (eigenvalues
spread by a factor {max(cfg.prompt.eigenvalues) / min(cfg.prompt.eigenvalues):g}): a constraint that excludes the
optimum costs accuracy, while the spectral constraint contains it.

## Learning-rate grid

{grid_table}

Figures: `figures/loss_vs_steps_L*.png`, `figures/loss_vs_seconds_L*.png` (CPU seconds), `figures/principal_angles.png`.
"""
    return finish_report(run, text, {"experiment": run.saved["experiment"], "selected": summary_rows,
                                     "verdicts": verdicts, "flagged": flagged,
                                     "figures": [str(p.relative_to(run_dir)) for p in figs if p.suffix == ".png"]})
