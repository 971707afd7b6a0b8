"""The report side of the outer-optimizer sweeps (``outer_optimizers``)."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.reporting import distinct_colours, finish_axes, mean_ci
from icl.plotting import plt, save_figure, set_theme

#: readable names of the optimizers and methods of the sweeps
LABELS = {
    "adam": "Adam", "adamw": "AdamW", "fadam": "FAdam", "rf_rmsprop": "RF-RMSProp", "rf_adamw": "RF-AdamW",
    "sirfshampoo": "SIRFShampoo", "manifold_adam": "ManifoldAdam", "adam_unconstrained": "Adam (unconstrained)",
    "projected_adam": "projected Riemannian Adam", "manifold_sgd": "manifold SGD",
    "manifold_momentum": "manifold momentum",
}  # fmt: skip

#: a run of the sweep: (method, lr), the columns ``method`` and ``lr`` of its rows
Run = tuple[str, float]


def run_key(row: Mapping[str, Any]) -> Run:
    return row["method"], row["lr"]


def _finite_mean(values: Sequence[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return float(np.mean(v)) if len(v) == len(values) and v else float("inf")


def select_lrs(rows: Sequence[Mapping[str, Any]]) -> dict[str, Run]:
    """Per method, the run (method, lr) whose mean final held-out loss over seeds is lowest (a diverged
    seed disqualifies that lr)."""
    finals: dict[Run, list[float]] = defaultdict(list)
    for r in rows:
        if r["metric"] == "final_val_loss":
            finals[run_key(r)].append(r["value"])
    best: dict[str, tuple[float, Run]] = {}
    for method, vals in finals.items():
        name = method[0]
        score = _finite_mean(vals)
        if name not in best or score < best[name][0]:
            best[name] = (score, method)
    return {name: m for name, (_, m) in best.items()}


def curves(rows: Sequence[Mapping[str, Any]], method: Run, metric: str) -> dict[int, dict[int, float]]:
    """{seed: {training step: value}} of a curve metric of the run ``method`` = (method, lr)."""
    out: dict[int, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if run_key(r) == method and r["metric"] == metric and r["train_step"] is not None:
            out[r["seed"]][r["train_step"]] = r["value"]
    return out


def first_reach(curve: Mapping[int, float], target: float) -> int | None:
    for step in sorted(curve):
        if curve[step] <= target:
            return step
    return None


def sweep_table(rows: Sequence[Mapping[str, Any]], target: float) -> list[dict[str, Any]]:
    """One entry per method (selected lr): test loss, final val loss, steps and seconds to ``target``."""
    table = []
    for name, method in select_lrs(rows).items():
        vals = curves(rows, method, "val_loss")
        walls = curves(rows, method, "wall_s")
        steps, secs = [], []
        for seed, curve in vals.items():
            s = first_reach(curve, target)
            steps.append(s if s is not None else float("nan"))
            secs.append(walls[seed].get(s, float("nan")) if s is not None else float("nan"))
        get = {m: [r["value"] for r in rows if run_key(r) == method and r["metric"] == m] for m in
               ("test_loss", "final_val_loss", "time_per_step_ms", "diverged")}  # fmt: skip
        reached = [s for s in steps if math.isfinite(s)]
        table.append(
            dict(
                name=name,
                method=method,
                lr=method[1],
                test=mean_ci(get["test_loss"]),
                final_val=mean_ci(get["final_val_loss"]),
                ms_per_step=mean_ci(get["time_per_step_ms"]),
                steps_to_target=mean_ci(reached) if len(reached) == len(steps) else (float("nan"),) * 3,
                seconds_to_target=mean_ci(secs) if len(reached) == len(steps) else (float("nan"),) * 3,
                reached=f"{len(reached)}/{len(steps)}",
                seeds=len(steps),
            )
        )
    return sorted(table, key=lambda e: e["test"][0] if math.isfinite(e["test"][0]) else float("inf"))


def best_final(rows: Sequence[Mapping[str, Any]]) -> float:
    """The lowest mean final held-out loss over the selected learning rates."""
    best = float("inf")
    for method in select_lrs(rows).values():
        vals = [r["value"] for r in rows if run_key(r) == method and r["metric"] == "final_val_loss"]
        best = min(best, _finite_mean(vals))
    return best


def curve_plot(
    rows: Sequence[Mapping[str, Any]],
    methods: Mapping[str, Run],
    stem: str | os.PathLike,
    *,
    metric: str = "val_loss",
    x: str = "step",
    ylabel: str = "held-out query MSE",
    title: str = "",
    hlines: Mapping[str, float] | None = None,
    logy: bool = True,
    caption: str = "mean over seeds; band: 95% t-interval over seeds",
    ylim: tuple[float, float] | None = None,
) -> list[Path]:
    """``metric`` against the training step (``x="step"``) or the mean elapsed seconds (``x="wall"``) for the
    given {label: (method, lr)}; dashed horizontal reference lines from ``hlines``; ``ylim`` overrides the y-axis
    window (the caption must say what it leaves out)."""
    set_theme()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    refs = list((hlines or {}).items())
    colours = distinct_colours(len(methods) + len(refs))
    plotted: list[float] = []
    for (label, method), color in zip(methods.items(), colours):
        vals = curves(rows, method, metric)
        if not vals:
            continue
        walls = curves(rows, method, "wall_s")
        steps = sorted(set.intersection(*(set(v) for v in vals.values())))
        if not steps:
            continue
        stats = [mean_ci([vals[s][t] for s in vals]) for t in steps]
        xs = np.array(steps, float)
        if x == "wall":
            xs = np.array([np.mean([walls[s].get(t, np.nan) for s in vals]) for t in steps])
        mean = np.array([m for m, _, _ in stats])
        ax.plot(xs, mean, color=color, lw=1.4, label=LABELS.get(label, label))
        plotted.extend(mean.tolist())
        if len(vals) > 1:
            lo = np.array([v for _, v, _ in stats])
            hi = np.array([v for _, _, v in stats])
            ax.fill_between(xs, lo, hi, color=color, alpha=0.2, lw=0)  # clipped at the axes by finish_axes
    for (name, value), colour, ls in zip(refs, colours[len(methods):], ("--", ":", "-.", (0, (5, 2, 1, 2)))):
        ax.axhline(value, ls=ls, lw=1.2, color=colour, label=name)
        plotted.append(value)
    if logy:
        ax.set_yscale("log")
    finish_axes(ax, plotted, logy=logy, integer_x=x == "step")
    if ylim is not None:  # the caller's window (e.g. the end of training), said in its caption
        ax.set_ylim(*ylim)
    ax.set_xlabel("training step" if x == "step" else "wall-clock seconds (mean over seeds)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    fig.text(0.01, -0.02, caption, fontsize=7, ha="left", va="top", wrap=True)
    return save_figure(fig, stem)


def grid_table(rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """One line per run of the sweep: method, lr, mean final held-out loss, diverged seeds."""
    runs = sorted({run_key(r) for r in rows if r["metric"] == "final_val_loss"})
    out = []
    for run in runs:
        finals = [r["value"] for r in rows if run_key(r) == run and r["metric"] == "final_val_loss"]
        diverged = sum(r["value"] for r in rows if run_key(r) == run and r["metric"] == "diverged")
        out.append([run[0], f"{run[1]:g}", float(np.mean(finals)), int(diverged)])
    return out
