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
from icl.runio import atomic_write_bytes, read_json_file, write_json

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


def per_seed(rows: Iterable[Row], transform: Any = None, **where: Any) -> dict[int, float]:
    """{seed: value} of the rows matching ``where`` (one row per seed expected; ``transform`` e.g. math.log)."""
    out = {}
    for r in select(rows, **where):
        v = float(r["value"])
        out[int(r["seed"])] = transform(v) if transform is not None and v > 0 else v if transform is None else math.nan
    return out


@dataclass(frozen=True)
class Verdict:
    """A claim about two methods decided from their paired differences (:func:`paired_verdict`).

    Attributes:
        word: ``holds``, ``does not hold`` or ``undecided`` (the interval straddles the claim's boundary, or
            fewer than two pairs give no interval).
        mean, lo, hi: the mean paired difference a − b and its 95% t-interval.
        count: the number of pairs (seeds present for both).
    """

    word: str
    mean: float
    lo: float
    hi: float
    count: int

    @property
    def holds(self) -> bool | None:
        return {"holds": True, "does not hold": False}.get(self.word)

    def text(self, unit: str = "") -> str:
        """``**holds** (Δ = −0.12 [−0.20, −0.04] over 3 seeds, paired)``."""
        u = f" {unit}" if unit else ""
        if self.count == 0:
            return "**undecided** (no paired data)"
        if self.count == 1:
            return f"**undecided** (Δ = {self.mean:+.3g}{u} from one seed: no interval)"
        return (f"**{self.word}** (Δ = {self.mean:+.3g}{u}, 95% CI [{self.lo:+.3g}, {self.hi:+.3g}] over "
                f"{self.count} seeds, paired)")  # fmt: skip


def paired_verdict(a: Mapping[Any, float], b: Mapping[Any, float], claim: str = "less", margin: float = 0.0,
                   level: float = 0.95) -> Verdict:  # fmt: skip
    """Decide a claim about a and b from the paired differences d_k = a_k − b_k over their common keys (seeds,
    or prompts), with a Student-t interval: the one rule behind every "holds / beats / matches" of a report.

    Claims (m = ``margin``): ``less``: a < b − m (a beats b by more than m, for losses); ``greater``:
    a > b + m; ``within``: |a − b| ≤ m (a matches b). The claim holds when the whole interval satisfies it, does
    not hold when the whole interval violates it, and is undecided otherwise (or with fewer than two pairs).
    """
    keys = [k for k in a if k in b and math.isfinite(a[k]) and math.isfinite(b[k])]
    d = [a[k] - b[k] for k in keys]
    if not d:
        return Verdict("undecided", math.nan, math.nan, math.nan, 0)
    mean, lo, hi = mean_ci(d, level)
    if len(d) < 2:
        return Verdict("undecided", mean, lo, hi, len(d))
    if claim == "less":
        word = "holds" if hi < -margin else "does not hold" if lo >= -margin else "undecided"
    elif claim == "greater":
        word = "holds" if lo > margin else "does not hold" if hi <= margin else "undecided"
    elif claim == "within":
        word = "holds" if (lo >= -margin and hi <= margin) else "does not hold" if (lo > margin or hi < -margin) \
            else "undecided"
    else:
        raise ValueError(f"claim must be 'less', 'greater' or 'within', got {claim!r}")
    return Verdict(word, mean, lo, hi, len(d))


def se_ci(mean: float, stderr: float, level: float = 0.95) -> tuple[float, float]:
    """Normal-approximation interval from a mean and its standard error."""
    z = float(stats.norm.ppf(0.5 + level / 2))
    return mean - z * stderr, mean + z * stderr


def load_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``config.json`` and the typed rows of ``results.csv`` (:func:`experiments.results.read_results`: every
    column present, None where blank; results in the old packed format are converted).

    Raises:
        RunDirError: a file is missing, not UTF-8, truncated or malformed (see :func:`icl.runio.read_results`).
    """
    run_dir = Path(run_dir)
    cfg = read_json_file(run_dir / "config.json", "run config")
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


#: readable names of the method ids the studies share (a report passes ``labels`` for its own)
LABELS = {
    "pgd_tuned": "Σ⁻¹-PGD, tuned steps",
    "gd_tuned": "GD, tuned steps",
    "gdpp_tuned": "GD++ (Σ⁻¹ geometry), tuned",
    "krylov_plain": "Krylov bound, P = I",
    "krylov_precond": "Krylov bound, P = Σ⁻¹",
    "krylov": "Krylov bound, P = I",
    "krylov_pre": "Krylov bound, P = Σ⁻¹",
    "sparse": "sparse LSA (learned)",
    "gdpp": "GD++ LSA (learned)",
    "full": "FULL LSA (learned)",
    "diag": "DIAG LSA (learned)",
    "zero_predictor": "zero predictor",
    "cg": "conjugate gradient",
    "cg_n19": "conjugate gradient, 19 points",
    "heavy_ball_tuned": "heavy ball, tuned",
    "nesterov_tuned": "Nesterov, tuned",
    "lt_scalar": "LT, scalar A (learned)",
    "lt_full": "LT, full A (learned)",
    "cgd_scalar": "CGD Memformer, scalar A (learned)",
    "cgd_full": "CGD Memformer, full A (learned)",
    "lfom_scalar": "LFOM Memformer, scalar A (learned)",
    "lfom_scalar_h5": "LFOM Memformer, scalar A, 5 heads",
    "lfom_full": "LFOM Memformer, full A (learned)",
    "lfom_shared_class": "best shared-Γ LFOM (floor)",
    "const_rr": "ridge, tuned constant λ",
    "ada_rr": "ridge, adaptive λ",
    "lsa_trained": "1-layer LSA (learned)",
    "gd_theory": "GD at the training η (theory)",
    "gd_retuned_theory": "GD re-tuned per a (theory)",
    "ahn_thm1": "Ahn et al. Thm 1 optimum",
}
#: a "best-matching step" is claimed only where the best similarity (SimE, cosine) reaches this; below it a report
#: says that no step matches
MATCH_THRESHOLD = 0.9

#: two curves whose plotted values differ by at most this much everywhere are said to coincide
COINCIDE_TOL = 0.01


#: Kelly's (1965) colours of maximum contrast, for figures with more than ten lines
KELLY = ("#0067A5", "#F38400", "#008856", "#BE0032", "#875692", "#848482", "#F3C300", "#A1CAF1", "#882D17",
         "#8DB600", "#E68FAC", "#2B3D26", "#604E97", "#F6A600", "#B3446C", "#DCD300", "#654522", "#E25822",
         "#C2B280", "#F99379")  # fmt: skip


def distinct_colours(count: int) -> list:
    """``count`` colours no two of which look alike: the colour-blind palette with its pink (too close to its
    lilac) moved last; Kelly's colours of maximum contrast beyond ten lines."""
    import seaborn as sns

    if count > 10:
        return [KELLY[i % len(KELLY)] for i in range(count)]
    base = sns.color_palette("colorblind", 10)
    order = [0, 1, 2, 3, 4, 5, 7, 8, 9, 6]
    return [base[i] for i in order][:count]


def log_band(mean: float, lo: float, hi: float, count: int) -> tuple[float, float, float]:
    """log(mean) and its interval on the log scale: the delta method, log(mean) ± half·/mean with the half-width
    of the (lo, hi) interval of the mean (never the log of a non-positive lower end)."""
    if not (mean > 0) or not math.isfinite(mean):
        return float("nan"), float("nan"), float("nan")
    lm = math.log(mean)
    if count < 2 or not math.isfinite(hi - lo):
        return lm, lm, lm
    half = (hi - lo) / 2 / mean
    return lm, lm - half, lm + half


def coinciding(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], tol: float = COINCIDE_TOL
               ) -> list[tuple[str, str]]:  # fmt: skip
    """Pairs of curves {name: (xs, ys)} at the same xs whose ys differ by at most ``tol`` everywhere (a NaN
    anywhere makes a pair not coincide)."""
    names = list(curves)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (xa, ya), (xb, yb) = curves[a], curves[b]
            if list(xa) == list(xb) and len(xa) and np.all(np.abs(np.asarray(ya) - np.asarray(yb)) <= tol):
                out.append((a, b))
    return out


#: markers of the curves that are a single point (a model trained at one depth), in turn
SINGLE_MARKERS = ("D", "s", "^", "v", "P", "X", "h")

#: how much wider than the lines' range the bands may make a figure's y-axis (see :func:`finish_axes`)
BAND_WIDEN = 3.0


def finish_axes(ax: Any, data: Sequence[float], *, logy: bool = False, integer_x: bool = False,
                legend: bool = True, bands: Sequence[float] = ()) -> None:  # fmt: skip
    """What every line figure shares: y-limits from the plotted lines, widened to hold the bands (``bands``: their
    ends) unless that would make the axis more than :data:`BAND_WIDEN` times the lines' range, or, on a log axis,
    reach a decade past them (then the bands are clipped, so that a few exploding prompts do not flatten every
    curve), integer x ticks where x counts layers
    or steps, and the legend outside the axes so it covers no data."""
    from matplotlib.ticker import MaxNLocator

    def usable(values: Sequence[float]) -> np.ndarray:
        return np.asarray([v for v in values if v is not None and math.isfinite(v) and (v > 0 or not logy)], float)

    y, b = usable(data), usable(bands)
    if logy and y.size:  # on a log axis a band may widen it by less than a decade either way
        b = b[(b >= y.min() / 10**0.8) & (b <= y.max() * 10**0.8)]
    if y.size and b.size:
        t = np.log(np.concatenate([y, b])) if logy else np.concatenate([y, b])
        t_lines = np.log(y) if logy else y
        span, span_lines = float(t.max() - t.min()), float(t_lines.max() - t_lines.min())
        if span <= BAND_WIDEN * max(span_lines, 1e-12):
            y = np.concatenate([y, b])
    if y.size:
        lo, hi = float(y.min()), float(y.max())
        if logy:
            ax.set_ylim(lo / 10**0.15, hi * 10**0.15)
        else:
            pad = 0.08 * (hi - lo) if hi > lo else 0.1 * max(abs(hi), 1.0)
            ax.set_ylim(lo - pad, hi + pad)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


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
    logx: bool = False,
    log_values: bool = False,
    dashed: Mapping[str, float] | None = None,
    dashed_methods: Sequence[str] = (),
    points: Mapping[str, tuple[float, float]] | None = None,
    labels: Mapping[str, str] | None = None,
    caption: str = "mean over seeds; band: 95% t-interval over seeds",
    floor: float | None = None,
) -> list[Path]:
    """One line per ``hue`` value of ``metric`` against ``x`` with a 95% band over seeds.

    Methods in ``dashed_methods`` (theory lines, bounds, trivial predictors) are drawn dashed; ``dashed`` adds
    horizontal reference lines and ``points`` single theory points {label: (x, y)} (y in the metric's units).
    ``log_values`` plots log(value) (the papers' log-loss axis) with the band computed on the log scale
    (:func:`log_band`). Labels come from ``labels``, then :data:`LABELS`, else the id. The y-limits follow the
    lines (bands are clipped at the axes, and then the caption says so), integer x values get integer ticks, the
    legend sits outside the axes, every line has its own colour, and curves that coincide (within
    :data:`COINCIDE_TOL` in plotted units) are named as coinciding in the legend. ``floor``: the least value the
    metric can take (e.g. 0 for a distance); bands are cut there and the caption says so.
    """
    set_theme()
    names = {**LABELS, **(labels or {})}
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    data = [r for r in rows if r["metric"] == metric]
    methods = list(dict.fromkeys(r[hue] for r in data))
    refs = list((dashed or {}).items())
    n_colours = len(methods) + len(refs)
    colours = distinct_colours(n_colours)
    palette = dict(zip(methods, colours))
    curves: dict[str, tuple[list, np.ndarray]] = {}
    bands: dict[str, tuple[np.ndarray, np.ndarray, bool]] = {}
    for m in methods:
        pts = aggregate([r for r in data if r[hue] == m], keys=(x,))
        xs = sorted(k[0] for k in pts)
        stats_ = [pts[(v,)] for v in xs]
        if log_values:
            stats_ = [(*log_band(*s), s[3]) for s in stats_]
        elif logy:  # the same interval on the log axis, drawn back in the metric's units
            stats_ = [(s[0], *np.exp(log_band(*s)[1:]), s[3]) if s[0] > 0 else s for s in stats_]
        curves[m] = (xs, np.array([s[0] for s in stats_]))
        bands[m] = (np.array([s[1] for s in stats_]), np.array([s[2] for s in stats_]), any(s[3] > 1 for s in stats_))
    same = coinciding({m: (xs, np.log(np.where(ys > 0, ys, np.nan))) for m, (xs, ys) in curves.items()} if logy
                      else curves)  # on a log axis, coinciding means within 1% of each other
    partner: dict[str, list[str]] = defaultdict(list)
    for a, b in same:
        partner[b].append(a)
    plotted: list[float] = []
    band_ends: list[float] = []
    single = iter(SINGLE_MARKERS)  # (models at one depth: hollow shapes of their own, so none hides another)
    for m in methods:
        xs, mean = curves[m]
        label = names.get(m, m)
        if partner[m]:
            label += " (= " + ", ".join(names.get(p, p) for p in partner[m]) + ")"
        style = "--" if m in dashed_methods else "-"
        if len(xs) == 1:
            ax.plot(xs, mean, style, marker=next(single, "o"), ms=7, mew=1.5, mfc="none", color=palette[m],
                    label=label)  # fmt: skip
        else:
            ax.plot(xs, mean, style, marker="o", ms=3, color=palette[m], label=label)
        plotted.extend(mean.tolist())
        lo, hi, has_band = bands[m]
        if floor is not None:
            lo = np.maximum(lo, floor)
        if has_band:
            ax.fill_between(xs, lo, hi, color=palette[m], alpha=0.2, lw=0)
            band_ends.extend([*lo.tolist(), *hi.tolist()])
    for (name, value), colour, ls in zip(refs, colours[len(methods):], ("--", ":", "-.", (0, (5, 2, 1, 2)))):
        yv = math.log(value) if log_values and value > 0 else value if not log_values else float("nan")
        if math.isfinite(yv):
            ax.axhline(yv, ls=ls, color=colour, lw=1.2, label=names.get(name, name))
            plotted.append(yv)
    for name, (px, py) in (points or {}).items():
        yv = math.log(py) if log_values and py > 0 else py if not log_values else float("nan")
        if math.isfinite(yv):
            ax.plot([px], [yv], marker="*", ms=11, color="black", ls="none", label=names.get(name, name))
            plotted.append(yv)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    xs_all = [v for m in methods for v in curves[m][0]]
    integer_x = bool(xs_all) and all(float(v).is_integer() for v in xs_all)
    finish_axes(ax, plotted, logy=logy, integer_x=integer_x, bands=band_ends)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    if same:
        caption += f"; (= …): the curves coincide within {COINCIDE_TOL:g}" + (" in log" if logy or log_values else "")
    if log_values or logy:
        caption += "; band on the log scale: log(mean) ± half-width/mean"
    if floor is not None:
        caption += f"; bands cut at {floor:g}, the least value {ylabel} can take"
    y0, y1 = ax.get_ylim()
    if any(math.isfinite(v) and not y0 <= v <= y1 for v in band_ends):
        caption += "; bands that leave the axes are cut at them (the intervals are wider)"
    fig.text(0.01, -0.02, caption, fontsize=7, ha="left", va="top", wrap=True)
    return save_figure(fig, stem)
