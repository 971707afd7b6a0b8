"""``python -m experiments collect DIR...``: the results of many runs in one tidy table, and a summary over seeds.

    python -m experiments collect runs/sweeps/lr-depth                  # writes DIR/collected.csv + _summary
    python -m experiments collect runs/a runs/b --out table.csv
    python -m experiments report runs/sweeps/lr-depth                   # figures: the metric against each key

Every DIR is a run directory (config.json + results.csv), a sweep directory or any folder holding run
directories (searched recursively). The table has one row per row of every run's results.csv, with, in front,
the run (its directory), one column per *varied* config key (the keys of the sweeps' grids and every dotted
config key whose value differs between the runs; seeds excepted, they are the ``seed`` column) and the git
commit and dirty flag recorded in config.json. The summary groups the rows by experiment, method, depth, the
varied keys and metric, and gives over seeds the count, the mean and its 95% Student-t interval.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.reporting import line_plot, markdown_table, mean_ci, write_report
from experiments.results import COLUMNS as RESULT_COLUMNS
from experiments.results import KEYS as RESULT_KEYS
from experiments.results import REQUIRED as RESULT_REQUIRED
from experiments.results import read_results
from icl.config import ConfigError
from icl.runio import write_csv

SEED_KEYS = ("seed", "seeds")
SUMMARY_COLUMNS = ("n_seeds", "mean", "ci95_low", "ci95_high")


def find_runs(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """The run directories (config.json and results.csv) at or under ``dirs``, in order, without repeats.

    Raises:
        ConfigError: a DIR that does not exist, or no run found at all.
    """
    runs: list[Path] = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise ConfigError(f"{d} is not a directory")
        found = [d] if (d / "results.csv").is_file() and (d / "config.json").is_file() else sorted(
            p.parent for p in d.rglob("results.csv") if (p.parent / "config.json").is_file())  # fmt: skip
        runs.extend(r for r in found if r not in runs)
    if not runs:
        raise ConfigError(f"no run directory (config.json + results.csv) under {', '.join(map(str, dirs))}")
    return runs


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys; lists become comma-separated text (as ``--set`` writes them)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (list, tuple)):
            out[f"{prefix}{k}"] = ",".join(str(x) for x in v)
        else:
            out[f"{prefix}{k}"] = v
    return out


def unfinished(runs: Sequence[Path]) -> list[Path]:
    """The runs of a sweep whose status is not ``done`` (their results.csv may hold only some seeds)."""
    out = []
    for run in runs:
        status = run.parent / "status" / f"{run.name}.json"
        if (run.parent / "sweep.json").is_file():
            try:
                state = json.loads(status.read_text()).get("state")
            except (OSError, ValueError):
                state = None
            if state != "done":
                out.append(run)
    return out


def grid_keys(dirs: Sequence[str | os.PathLike]) -> list[str]:
    """The grid keys of the sweeps at or under ``dirs`` (from their ``sweep.json``), in order."""
    keys: list[str] = []
    for d in map(Path, dirs):
        for manifest in [d / "sweep.json", *sorted(d.rglob("*/sweep.json"))]:
            if manifest.is_file():
                keys.extend(k for k in json.loads(manifest.read_text()).get("grid", {}) if k not in keys)
    return keys


def varied_keys(configs: Sequence[Mapping[str, Any]], declared: Sequence[str] = ()) -> list[str]:
    """``declared`` keys, then every other key whose value differs between ``configs`` (flat dicts), seeds
    excepted."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    return [k for k in dict.fromkeys([*declared, *differ]) if k not in SEED_KEYS]


def collect(dirs: Sequence[str | os.PathLike]) -> tuple[list[dict[str, Any]], list[str]]:
    """The tidy table of every run under ``dirs`` and its varied keys (see the module docstring)."""
    runs = find_runs(dirs)
    root = Path(os.path.commonpath([str(Path(d).resolve()) for d in dirs]))
    loaded = []
    for run in runs:
        meta = json.loads((run / "config.json").read_text())
        rows = read_results(run / "results.csv", meta.get("config"))
        loaded.append((run, meta, flatten(meta.get("config", {})), rows))
    keys = varied_keys([flat for _, _, flat, _ in loaded], grid_keys(dirs))
    table = []
    for run, meta, flat, rows in loaded:
        name = os.path.relpath(run.resolve(), root) if len(runs) > 1 or run.resolve() != root else run.name
        git = meta.get("git") or {}
        for r in rows:
            table.append({"run": name, **{k: flat.get(k, "") for k in keys}, "git_commit": git.get("commit") or "",
                          "git_dirty": "" if git.get("dirty") is None else git["dirty"],
                          **{c: "" if r[c] is None else r[c] for c in RESULT_COLUMNS}})  # fmt: skip
    return table, keys


def used_keys(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """The result key columns (method, depth, setting, layer, …) that some row of ``table`` fills."""
    return [c for c in RESULT_KEYS if c in ("method", "depth") or any(r.get(c, "") != "" for r in table)]


def summarise(table: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and 95% t-interval over seeds per (experiment, method, depth, varied keys, metric)."""
    group = ["experiment", *used_keys(table), *keys, "metric"]
    values: dict[tuple, list[float]] = defaultdict(list)
    for r in table:
        values[tuple(r[k] for k in group)].append(float(r["value"]))
    out = []
    for k, v in values.items():
        mean, lo, hi = mean_ci(v)
        out.append({**dict(zip(group, k)), "n_seeds": len(v), "mean": mean, "ci95_low": lo, "ci95_high": hi})
    return out


def summary_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_summary{out.suffix or '.csv'}")


def main_metric(table: Sequence[Mapping[str, Any]]) -> str:
    metrics = list(dict.fromkeys(r["metric"] for r in table))
    return "test_loss" if "test_loss" in metrics else metrics[0]


def add_parser(sub: Any) -> None:
    """Register ``collect`` on the CLI's sub-parsers."""
    p = sub.add_parser("collect", help="gather the results.csv of many runs into one table and a seed summary")
    p.add_argument("dirs", nargs="+", type=Path, help="run directories, sweep directories or folders of runs")
    p.add_argument("--out", type=Path, default=None,
                   help="the table (default DIR/collected.csv for one DIR); the summary goes next to it")  # fmt: skip
    p.set_defaults(func=cmd_collect)


def cmd_collect(args: argparse.Namespace) -> int:
    if args.out is None and len(args.dirs) > 1:
        raise ConfigError("collect: give --out when collecting from several directories")
    table, keys = collect(args.dirs)
    out = args.out or args.dirs[0] / "collected.csv"
    used = [c for c in RESULT_COLUMNS if c in RESULT_REQUIRED or any(r[c] != "" for r in table)]
    columns = ["run", *keys, "git_commit", "git_dirty", *used]
    write_csv(out, [{c: r[c] for c in columns} for r in table], columns)
    summary = summarise(table, keys)
    write_csv(summary_path(out), summary, ["experiment", *used_keys(table), *keys, "metric", *SUMMARY_COLUMNS])
    partial = unfinished(find_runs(args.dirs))
    if partial:
        print(f"warning: {len(partial)} sweep run(s) not done, their rows may be partial: "
              + ", ".join(p.name for p in partial), file=sys.stderr)  # fmt: skip
    runs = len({r["run"] for r in table})
    print(f"{runs} runs, {len(table)} rows; varied: {', '.join(keys) or 'nothing'}; wrote {out} and "
          f"{summary_path(out)}")  # fmt: skip
    metric = main_metric(table)
    rows = [r for r in summary if r["metric"] == metric]
    print(f"\n{metric}, mean and 95% t-interval over seeds:")
    print(summary_table(rows, keys))
    return 0


def summary_table(summary: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    """Summary rows as a markdown table."""
    return markdown_table(["method", "depth", *keys, "seeds", "mean", "95% CI"],
                          [[r["method"], r["depth"], *(r[k] for k in keys), r["n_seeds"], r["mean"],
                            f"[{r['ci95_low']:.4g}, {r['ci95_high']:.4g}]"] for r in summary])  # fmt: skip


def _number(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def report_sweep(sweep_dir: Path, metric: str | None = None) -> list[Path]:
    """Figures of ``metric`` (default test_loss) against each varied key of the sweep, one line per method and
    combination of the other keys (mean over seeds, 95% band; a method with one value in every run, such as a
    theory line, dashed), and ``report.md`` with the summary table."""
    table, keys = collect([sweep_dir])
    metric = metric or main_metric(table)
    rows = [dict(r) for r in table if r["metric"] == metric]
    summary = [r for r in summarise(table, keys) if r["metric"] == metric]
    # methods whose value is the same in every run (theory, trivial predictors) are drawn once, dashed
    by_method: dict[str, set[float]] = defaultdict(set)
    for r in rows:
        by_method[r["method"]].add(float(r["value"]))
    constant = {m: float(sum(v) / len(v)) for m, v in by_method.items()
                if len(rows) > 1 and max(v) - min(v) <= 1e-9 * max(abs(x) for x in v)}  # fmt: skip
    rows = [r for r in rows if r["method"] not in constant]
    figures = []
    for key in keys:
        others = [k for k in keys if k != key]
        numeric = all(_number(r[key]) is not None for r in rows)
        plot_rows = [{**r, "x": _number(r[key]) if numeric else str(r[key]), "seed": int(r["seed"]),
                      "series": ", ".join([r["method"], *(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in others)])}
                     for r in rows]  # fmt: skip
        xs = sorted({r["x"] for r in plot_rows}) if numeric else []
        logx = numeric and len(xs) > 1 and xs[0] > 0 and xs[-1] / xs[0] >= 10
        values = [float(r["value"]) for r in plot_rows if _number(r["value"]) is not None] + list(constant.values())
        logy = bool(values) and min(values) > 0 and max(values) / min(values) >= 10
        stem = sweep_dir / "figures" / f"{metric}_vs_{key.replace('.', '_')}"
        figures += line_plot(plot_rows, stem, x="x", hue="series",
                             metric=metric, ylabel=metric, xlabel=key, logy=logy, logx=logx, dashed=constant,
                             title=f"{table[0]['experiment']} sweep: {metric} against {key}")  # fmt: skip
    text = [f"# Sweep {sweep_dir.name}: {table[0]['experiment']}", "",
            f"{len({r['run'] for r in table})} runs; varied: {', '.join(keys) or 'nothing'}.", "",
            f"## {metric}: mean and 95% t-interval over seeds", "",
            summary_table(summary, keys), ""]  # fmt: skip
    text += [f"![{p.stem}](figures/{p.name})" for p in figures if p.suffix == ".png"]
    write_report(sweep_dir, "\n".join(text))
    return figures
