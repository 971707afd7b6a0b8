"""The report of :mod:`experiments.manifold_icl`: per model and depth the steps and seconds to the target gap,
the final gap, the constraint violation and the principal angles; paired comparisons with the unconstrained
model, verdicts computed from their intervals; held-out loss against steps and seconds, the PGD level dashed.

The tidy rows are read into ``{(tag, L): {seed: {key: value}}}`` (:func:`_table`; ``tag`` = ``method@lr``, ``key``
= the metric with its eigenspace and training step, ``angle:e1:t100``), the form every helper below reads.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from experiments.manifold_icl import REFERENCES, ManifoldICLConfig, first_reach, settled
from experiments.reporting import finish_report, fmt, markdown_table, mean_ci, open_report
from icl.plotting import plt, save_figure, set_theme


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
    per_seed = tab[(tag, L)]
    gaps = _curve(per_seed, "val_gap")
    walls = _curve(per_seed, "wall_s")
    reach = {s: first_reach(c, target) for s, c in gaps.items()}
    stay = {s: settled(c, target) for s, c in gaps.items()}
    secs = {s: walls[s].get(int(r), math.nan) if math.isfinite(r) else math.nan for s, r in reach.items()}
    angles = _curve(per_seed, "angle_max")
    viol = _curve(per_seed, "violation")
    final_angle = [c[max(c)] for c in angles.values()]
    return dict(
        seeds=sorted(per_seed), reach=reach, secs=secs, stay=stay,
        reached=sum(math.isfinite(r) for r in reach.values()),
        final_gap=_ci([m.get("final_gap", math.nan) for m in per_seed.values()]),
        final_gap_se=float(np.sqrt(np.mean([m.get("final_gap_stderr", math.nan) ** 2 for m in per_seed.values()]))),
        ms=_ci([m.get("time_per_step_ms", math.nan) for m in per_seed.values()]),
        max_violation=max((max(c.values()) for c in viol.values()), default=math.nan),
        final_angle=_ci(final_angle) if final_angle else (math.nan,) * 3,
    )  # fmt: skip


def paired(tab: dict, tag: str, ref: str, L: int, target: float, run_dir: Path | None = None) -> dict[str, Any]:
    """Per seed: steps ratio ref/tag to the target (log scale), final-gap difference tag − ref; t-intervals."""
    a, b = method_stats(tab, tag, L, target), method_stats(tab, ref, L, target)
    seeds = [s for s in a["seeds"] if s in b["seeds"]]
    logr = [math.log(b["reach"][s] / a["reach"][s]) for s in seeds
            if math.isfinite(a["reach"].get(s, math.nan)) and math.isfinite(b["reach"].get(s, math.nan))
            and a["reach"][s] > 0]  # fmt: skip
    logs = [math.log(b["stay"][s] / a["stay"][s]) for s in seeds
            if math.isfinite(a["stay"].get(s, math.nan)) and math.isfinite(b["stay"].get(s, math.nan))
            and a["stay"][s] > 0]  # fmt: skip
    logt = [math.log(b["secs"][s] / a["secs"][s]) for s in seeds
            if math.isfinite(a["secs"].get(s, math.nan)) and math.isfinite(b["secs"].get(s, math.nan))
            and a["secs"][s] > 0]  # fmt: skip
    # log(MSE_tag) − log(MSE_ref) on the same test prompts = the difference of their gaps to the same PGD
    diff = [tab[(tag, L)][s]["final_gap"] - tab[(ref, L)][s]["final_gap"] for s in seeds
            if "final_gap" in tab[(tag, L)][s] and "final_gap" in tab[(ref, L)][s]]  # fmt: skip
    se = [tab[(tag, L)][s].get("gap_vs_stderr:" + ref, math.nan) for s in seeds]
    ratio = tuple(math.exp(x) for x in _ci(logr)) if logr else (math.nan,) * 3
    tratio = tuple(math.exp(x) for x in _ci(logt)) if logt else (math.nan,) * 3
    sratio = tuple(math.exp(x) for x in _ci(logs)) if logs else (math.nan,) * 3
    unreached_ref = sum(1 for s in seeds if not math.isfinite(b["reach"].get(s, math.nan))
                        and math.isfinite(a["reach"].get(s, math.nan)))  # fmt: skip
    return dict(ratio=ratio, time_ratio=tratio, settled_ratio=sratio, settled_pairs=len(logs), pairs=len(logr),
                diff=_ci(diff), diff_prompt_se=se, seeds=len(seeds), unreached_ref=unreached_ref)  # fmt: skip


def verdict(name: str, ref: str, L: int, p: dict, target: float, want_ratio: float = 3.0) -> str:
    """A sentence computed from the paired intervals (never hand-written)."""
    r, lo, hi = p["ratio"]
    parts = []
    if p["pairs"] == 0:
        tail = f" ({p['unreached_ref']} seed(s) where only {name} reached it)" if p["unreached_ref"] else ""
        parts.append(f"no seed where both reach the {target:g} gap{tail}")
    else:
        if p["pairs"] < 2:
            how = "one seed, no interval"
        elif lo > 1:
            how = "faster, the 95% interval over seeds excludes 1"
        elif hi < 1:
            how = "slower, the 95% interval over seeds excludes 1"
        else:
            how = "not distinguishable from 1 at 95% over seeds"
        goal = "meets" if (lo if p["pairs"] >= 2 else r) >= want_ratio else "does not meet"
        parts.append(
            f"reaches the {target:g} gap in {r:.3g}× fewer steps ({how}; {goal} the {want_ratio:g}× target"
            f"{' at the lower end of the interval' if p['pairs'] >= 2 else ''}); "
            f"{p['time_ratio'][0]:.3g}× fewer wall-clock seconds"
        )
    if p.get("settled_pairs"):
        sr, slo, shi = p["settled_ratio"]
        band = f" [{slo:.3g}, {shi:.3g}]" if p["settled_pairs"] >= 2 else ""
        parts.append(f"stays within it for good {sr:.3g}×{band} sooner")
    d, dlo, dhi = p["diff"]
    ses = p["diff_prompt_se"]
    # the mean over these seeds with its interval over test prompts (paired per prompt within each seed)
    se = math.sqrt(sum(x * x for x in ses)) / len(ses) if ses and all(math.isfinite(x) for x in ses) else math.nan
    z = d / se if se > 0 else math.nan
    over_prompts = f"{d:+.3g} ± {1.96 * se:.2g} over prompts" if math.isfinite(se) else f"{d:+.3g}, no prompt interval"
    if math.isfinite(d):
        if p["seeds"] < 2:
            word = "lower than" if z < -1.96 else "higher than" if z > 1.96 else "not distinguishable from"
            parts.append(f"final test MSE {word} {ref}'s (log difference {over_prompts})")
        else:
            word = "lower than" if dhi < 0 else "higher than" if dlo > 0 else "not distinguishable at 95% from"
            pw = "lower" if z < -1.96 else "higher" if z > 1.96 else "not distinguishable"
            parts.append(f"final test MSE {word} {ref}'s over seeds (log difference {d:+.3g} "
                         f"[{dlo:+.3g}, {dhi:+.3g}]); for these seeds {pw} over prompts ({over_prompts})")  # fmt: skip
    return f"L = {L}, {name}: " + "; ".join(parts) + "."


def _plot(tab, selected, L, x, stem, title, target, pgd) -> list[Path]:
    """Held-out MSE (mean over seeds) against steps or seconds; dashed: tuned Σ⁻¹-PGD on the same prompts."""
    set_theme()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3
    for (name, tag), color in zip(selected.items(), colors):
        gaps, walls = _curve(tab[(tag, L)], "val_gap"), _curve(tab[(tag, L)], "wall_s")
        if not gaps:
            continue
        steps = sorted(set.intersection(*(set(c) for c in gaps.values())))
        mse = np.array([np.mean([pgd[s] * math.exp(gaps[s][t]) for s in gaps]) for t in steps])
        xs = np.array(steps, float) if x == "step" else np.array([np.mean([walls[s][t] for s in gaps]) for t in steps])
        ax.plot(xs, mse, color=color, lw=1.3, label=f"{name} (lr {_split(tag)[1]:g})")
    level = float(np.mean(list(pgd.values())))
    ax.axhline(level, ls="--", lw=1, color="black", label="tuned Σ⁻¹-PGD")
    ax.axhline(level * math.exp(target), ls=":", lw=1, color="grey", label=f"PGD level × e^{target:g}")
    ax.set_yscale("log")
    ax.set_xlabel("training step" if x == "step" else "wall-clock seconds (mean over seeds)")
    ax.set_ylabel("held-out query MSE")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6.5, loc="upper right")
    fig.text(0.01, -0.02, "mean over seeds of the held-out (val) MSE; dashed: tuned Σ⁻¹-PGD on the same prompts "
             "(mean over seeds); dotted: the target gap", fontsize=7, ha="left", va="top")  # fmt: skip
    return save_figure(fig, stem)


def _plot_angles(tab, selected, depths, stem) -> list[Path]:
    set_theme()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3
    i = 0
    for L in depths:
        tag = selected.get(("spectral_manifold_adam", L))
        if tag is None:
            continue
        c = _curve(tab[(tag, L)], "angle_max")
        if not c:
            continue
        steps = sorted(set.intersection(*(set(v) for v in c.values())))
        ax.plot(steps, [np.mean([c[s][t] for s in c]) for t in steps], color=colors[i], label=f"L = {L}")
        i += 1
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("largest principal angle to Σ's eigenspaces (degrees)")
    ax.set_title("spectral sparse LSA + ManifoldAdam: learned U vs Σ's eigenbasis", fontsize=9)
    if i:
        ax.legend(fontsize=7)
    fig.text(0.01, -0.02, "mean over seeds", fontsize=7, ha="left", va="top")
    return save_figure(fig, stem)


def report(run_dir) -> dict:
    run = open_report(run_dir, ManifoldICLConfig)
    run_dir, cfg, rows = run.run_dir, run.config, run.rows
    tab = _table(rows)
    sel = select_lrs(tab, cfg.methods, cfg.depths)
    target = cfg.gap_target
    figs: list[Path] = []
    body, verdicts, summary_rows = [], [], {}
    for L in cfg.depths:
        chosen = {name: sel[(name, L)] for name in cfg.methods if (name, L) in sel}
        title = f"Ahn et al.'s data, d = {cfg.prompt.d}, n = {cfg.prompt.n}, L = {L}"
        pgd_val = {s: m["val_loss"] for s, m in tab[("pgd_tuned", L)].items()}
        figs += _plot(tab, chosen, L, "step", run_dir / "figures" / f"loss_vs_steps_L{L}", title, target, pgd_val)
        figs += _plot(tab, chosen, L, "wall", run_dir / "figures" / f"loss_vs_seconds_L{L}", title, target, pgd_val)
        for name, tag in chosen.items():
            st = method_stats(tab, tag, L, target)
            steps = _ci([v for v in st["reach"].values()])
            stay = _ci([v for v in st["stay"].values()])
            secs = _ci([v for v in st["secs"].values()])
            body.append([L, name, f"{_split(tag)[1]:g}", f"{st['reached']}/{len(st['seeds'])}", _fmt_ci(steps),
                         _fmt_ci(stay), _fmt_ci(secs), _fmt_ci(st["final_gap"]), fmt(st["final_gap_se"], 2),
                         _fmt_ci(st["ms"]), fmt(st["max_violation"], 2), _fmt_ci(st["final_angle"])])  # fmt: skip
            summary_rows[f"{name}/L{L}"] = {"lr": _split(tag)[1], "steps_to_target": steps[0], "steps_to_stay": stay[0],
                                            "seconds_to_target": secs[0], "final_gap": st["final_gap"][0],
                                            "reached": st["reached"], "max_violation": st["max_violation"]}  # fmt: skip
        for ref_name in REFERENCES:
            ref = chosen.get(ref_name)
            if ref is None:
                continue
            for name, tag in chosen.items():
                if name in REFERENCES:
                    continue
                p = paired(tab, tag, ref, L, target, run_dir)
                verdicts.append(verdict(name, ref_name, L, p, target))
                summary_rows[f"{name}/L{L}"][f"vs_{ref_name}"] = dict(
                    steps_ratio=p["ratio"], time_ratio=p["time_ratio"], settled_ratio=p["settled_ratio"],
                    gap_difference=p["diff"], pairs=p["pairs"])
    sel_all = {k: v for k, v in sel.items()}
    figs += _plot_angles(tab, sel_all, cfg.depths, run_dir / "figures" / "principal_angles")
    table = markdown_table(
        ["L", "method", "lr", "reached", f"steps to gap {target:g}", "steps to stay within",
         f"seconds to gap {target:g}",
         "final test gap (95% CI over seeds)", "its SE over prompts", "ms/step", "max ‖UᵀU−I‖", "final max angle (°)"],
        body,
    )  # fmt: skip
    pgd = {L: mean_ci([r["value"] for r in rows if r["method"] == "pgd_tuned" and r["depth"] == L
                       and r["metric"] == "test_loss"])[0] for L in cfg.depths}  # fmt: skip
    pgd_line = ", ".join(f"L = {L}: {math.log(v):.3f}" for L, v in pgd.items() if v > 0)
    grid = sorted({(_tag(r["method"], r["lr"]), r["depth"]) for r in rows if r["metric"] == "final_val_gap"})
    grid_table = markdown_table(["method@lr", "L", "mean final val gap"],
                                [[t, L, fmt(float(np.mean([m["final_val_gap"] for m in tab[(t, L)].values()])))]
                                 for t, L in grid])  # fmt: skip
    text = f"""# manifold_icl: spectral models on the Stiefel manifold vs unconstrained LSA (issue #19)

Setting: Ahn et al.'s law (d = {cfg.prompt.d}, n = {cfg.prompt.n}, Σ eigenvalues {cfg.prompt.eigenvalues},
w* ~ N(0, Σ⁻¹)), {cfg.train.dtype}, batch {cfg.train.batch_size} resampled every {cfg.train.resample_every} steps,
{cfg.train.steps} steps, seeds {list(cfg.seeds)}, depths {list(cfg.depths)}. Spectral models: A_ℓ = U diag(s_ℓ) Uᵀ,
one U ∈ St({cfg.prompt.d}, {cfg.prompt.d}) shared across layers, spectra stored {cfg.spectrum!r}, U's learning rate
{cfg.basis_lr_factor:g} × the spectra's, {cfg.constrained_schedule} schedule (halved every {cfg.constrained_halve_every}
steps). Every method sees the same data regime. Unconstrained: AdamW β = (0.99, 0.9), per-matrix
clip 0.01, lr halved every {cfg.halve_every} steps (pgd_depth's converged recipe),
{cfg.reference_steps} steps per layer. Gap = log(model MSE) −
log(tuned Σ⁻¹-PGD MSE) on the same prompts (val: {cfg.train.eval_batch} prompts during training; test:
{cfg.test_prompts} prompts at the end). Log test MSE of tuned Σ⁻¹-PGD (mean over seeds): {pgd_line}.

## Per model and depth (selected learning rate)

{
        markdown_table(
            ["L", "method", "lr", "reached", "steps", "seconds", "final gap", "SE", "ms/step", "violation", "angle"], []
        )
        if not body
        else table
    }

"Reached": seeds whose held-out gap came within {target:g} (first evaluation, every {cfg.train.eval_every} steps);
"steps to stay within": the first evaluation from which the gap stays within {target:g} to the end.
The angle is the largest principal angle between the learned U's columns and the eigenspace of Σ they represent
(the λ = 1 eigenspace is 3-dimensional, rotations inside it cost nothing). Wall-clock seconds are measured on a
shared machine.

## Paired comparisons with the unconstrained model (same seeds, same test prompts)

{chr(10).join("- " + v for v in verdicts) if verdicts else "(the unconstrained model was not run)"}

Steps ratio = (unconstrained steps to the gap) / (method's steps), geometric mean over the seeds where both reach it,
95% t-interval over seeds on the log ratio. The issue's target for the spectral sparse LSA at L = 3 and 4 is ≥ 3×
fewer steps and a final gap no worse than the unconstrained model's.

## The factorised St(k, d+1) row

`factorised_stiefel_adam` is the manifold_adam study's model (von Oswald et al.'s factorised LSA with W_K, W_Q on
St({cfg.factorised_key_size}, {cfg.prompt.d + 1})) on this data. Its key-query product W_Kᵀ W_Q is a product of
partial isometries with unit singular values, so it cannot express the Σ⁻¹-shaped preconditioner (eigenvalues
spread by a factor {max(cfg.prompt.eigenvalues) / min(cfg.prompt.eigenvalues):g}): a constraint that excludes the
optimum costs accuracy, while the spectral constraint contains it.

## Learning-rate grid

{grid_table}

Figures: `figures/loss_vs_steps_L*.png`, `figures/loss_vs_seconds_L*.png`, `figures/principal_angles.png`.
"""
    return finish_report(run, text, {"experiment": run.saved["experiment"], "selected": summary_rows,
                                     "verdicts": verdicts,
                                     "figures": [str(p.relative_to(run_dir)) for p in figs if p.suffix == ".png"]})
