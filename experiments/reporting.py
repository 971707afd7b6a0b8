"""What every study report shares: confidence intervals, tidy-row helpers, markdown tables and line plots.

A study writes tidy long-form rows (experiment, method, depth, seed, metric, value) to ``results.csv``; its
``report(run_dir)`` function rebuilds every figure and ``report.md`` from that file and ``config.json`` alone,
so ``python -m experiments report RUN_DIR`` re-renders a run without training.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from experiments.results import read_results
from icl.plotting import plt, save_figure, set_theme
from icl.runio import atomic_write_bytes, write_json

Row = Mapping[str, Any]


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval (a single value gives a zero-width interval)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(float(v))], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if x.size == 1:
        return m, m, m
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, m - half, m + half


def se_ci(mean: float, stderr: float, level: float = 0.95) -> tuple[float, float]:
    """Normal-approximation interval from a mean and its standard error."""
    z = float(stats.norm.ppf(0.5 + level / 2))
    return mean - z * stderr, mean + z * stderr


def load_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``config.json`` and the typed rows of ``results.csv`` (:func:`experiments.results.read_results`: every
    column present, None where blank; results in the old packed format are converted)."""
    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    return cfg, read_results(run_dir / "results.csv", cfg.get("config"))


@dataclass
class ReportRun:
    """What every report starts from: the run directory, its config and its rows.

    Attributes:
        run_dir: the run directory.
        config: the study's config object (``config_cls.from_dict`` of config.json's ``config``), or that dict
            when no class is given.
        saved: config.json as written by the run (``experiment``, ``config``, provenance).
        rows: the typed rows of results.csv (:func:`load_run`).
        seeds: the seeds present in the rows, sorted.
    """

    run_dir: Path
    config: Any
    saved: dict[str, Any]
    rows: list[dict[str, Any]]
    seeds: list[int]

    @property
    def figures(self) -> Path:
        return self.run_dir / "figures"


def open_report(run_dir: str | os.PathLike, config_cls: Any = None) -> ReportRun:
    """The opening every ``report(run_dir)`` shares: config.json, the typed rows and the seeds."""
    run_dir = Path(run_dir)
    saved, rows = load_run(run_dir)
    cfg = config_cls.from_dict(saved["config"]) if config_cls is not None else saved["config"]
    return ReportRun(run_dir, cfg, saved, rows, sorted({r["seed"] for r in rows}))


def finish_report(run: ReportRun, text: str, summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The closing every report shares: write ``report.md`` and merge ``summary`` into ``summary.json`` (keys
    the run wrote, such as its wall time, are kept); returns ``summary``."""
    write_report(run.run_dir, text)
    summary = dict(summary or {})
    if summary:
        path = run.run_dir / "summary.json"
        try:
            old = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:  # a truncated summary.json of an interrupted run is rewritten
            old = {}
        write_json(path, {**old, **summary})
    return summary


def select(rows: Iterable[Row], **where: Any) -> list[Row]:
    """The rows whose fields equal the given values (a tuple/list value means 'any of')."""
    out = []
    for r in rows:
        ok = True
        for k, v in where.items():
            if isinstance(v, (tuple, list, set)):
                ok = r[k] in v
            else:
                ok = r[k] == v
            if not ok:
                break
        if ok:
            out.append(r)
    return out


def aggregate(rows: Iterable[Row], keys: Sequence[str] = ("method", "depth", "metric")) -> dict[tuple, tuple]:
    """Group by ``keys`` and return {key: (mean, lo, hi, count)} over seeds."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(float(r["value"]))
    return {k: (*mean_ci(v), len(v)) for k, v in groups.items()}


def mean_value(rows: Iterable[Row], method: str, metric: str) -> float:
    """The mean of ``metric`` of ``method`` over all its rows (seeds, depths); NaN when there is none."""
    v = [float(r["value"]) for r in rows if r["method"] == method and r["metric"] == metric]
    return float(np.mean(v)) if v else float("nan")


def dominated_by_few(
    rows: Iterable[Row], method: str, depth: int, metric: str = "test_loss", threshold: float = 0.3,
    floor: float = 0.0, **where: Any,
) -> list[tuple[int, float, float]]:  # fmt: skip
    """Seeds whose estimate of ``metric`` is carried by a few test prompts: (seed, mean, stderr) with
    stderr > ``threshold``·|mean| (and |mean| > ``floor``).

    A mean over M prompts that one prompt of value V dominates has mean ≈ V/M and standard error ≈ V/M too, so
    stderr/mean → 1; a light-tailed loss has stderr/mean ≈ std/(mean·√M), a few percent at M ≥ 10⁴.  Reports
    mark such cells (†) and name the seeds, because the mean then describes rare prompts, not the typical one.
    """
    rows = select(rows, **where) if where else list(rows)
    means = {r["seed"]: float(r["value"]) for r in rows
             if r["method"] == method and r["depth"] == depth and r["metric"] == metric}  # fmt: skip
    ses = {r["seed"]: float(r["value"]) for r in rows
           if r["method"] == method and r["depth"] == depth and r["metric"] == f"{metric}_stderr"}  # fmt: skip
    out = []
    for seed in sorted(means):
        m, se = means[seed], ses.get(seed, float("nan"))
        if math.isfinite(se) and abs(m) > floor and se > threshold * abs(m):
            out.append((int(seed), m, se))
    return out


def fmt(x: float | None, digits: int = 4) -> str:
    """A number for a report table ('–' for missing)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats formatted with :func:`fmt`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [fmt(c) if isinstance(c, float) else str(c) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(run_dir: str | os.PathLike, text: str) -> Path:
    """Atomically write ``report.md``."""
    return atomic_write_bytes(Path(run_dir) / "report.md", text.rstrip("\n").encode() + b"\n")


def line_plot(
    rows: Sequence[Row],
    stem: str | os.PathLike,
    *,
    x: str = "depth",
    hue: str = "method",
    metric: str,
    ylabel: str,
    xlabel: str = "layers / steps",
    title: str = "",
    logy: bool = False,
    log_values: bool = False,
    dashed: Mapping[str, float] | None = None,
    dashed_methods: Sequence[str] = (),
    caption: str = "mean over seeds; band: 95% t-interval over seeds",
) -> list[Path]:
    """One line per ``hue`` value of ``metric`` against ``x`` with a 95% band over seeds.

    Methods in ``dashed_methods`` (theory lines, bounds, trivial predictors) are drawn dashed; ``dashed`` adds
    horizontal reference lines. ``log_values`` plots log(value) (the papers' log-loss axis).
    """
    set_theme()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    data = [r for r in rows if r["metric"] == metric]
    methods = list(dict.fromkeys(r[hue] for r in data))
    palette = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    for m in methods:
        pts = aggregate([r for r in data if r[hue] == m], keys=(x,))
        xs = sorted(k[0] for k in pts)
        mean = np.array([pts[(v,)][0] for v in xs])
        lo = np.array([pts[(v,)][1] for v in xs])
        hi = np.array([pts[(v,)][2] for v in xs])
        if log_values:
            mean, lo, hi = np.log(mean), np.log(np.maximum(lo, 1e-300)), np.log(hi)
        style = "--" if m in dashed_methods else "-"
        ax.plot(xs, mean, style, marker="o", ms=3, color=palette[m], label=m)
        if any(pts[(v,)][3] > 1 for v in xs):
            ax.fill_between(xs, lo, hi, color=palette[m], alpha=0.2, lw=0)
    for name, value in (dashed or {}).items():
        ax.axhline(np.log(value) if log_values else value, ls="--", color="grey", lw=1, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.text(0.01, -0.02, caption, fontsize=7, ha="left", va="top")
    return save_figure(fig, stem)
