"""``python -m experiments bench``: every benchmark of the package, ratios measured in one run.

Benchmarks register here with :func:`benchmark`; each returns a list of flat dict rows. The command prints
one table per benchmark and writes them all to ``bench.json`` with the date and the hardware, so that the
README's performance section can quote a run. Timings are never asserted in tests (machines are noisy).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from icl.config import ConfigError
from icl.runio import write_json

BENCHMARKS: dict[str, Callable[[bool], list[dict[str, Any]]]] = {}


def benchmark(name: str):
    """Register ``fn(quick: bool) -> rows`` as a benchmark."""

    def deco(fn: Callable[[bool], list[dict[str, Any]]]) -> Callable[[bool], list[dict[str, Any]]]:
        BENCHMARKS[name] = fn
        return fn

    return deco


def hardware() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def print_table(name: str, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print(f"\n== {name} ==")
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _load_all() -> None:
    from experiments import benchmarks  # noqa: F401  (registers the benchmarks)


def check_out(out: Path) -> None:
    """Refuse, before any benchmark runs, an ``--out`` that cannot be written or is not a bench file: an existing
    file is replaced only when it is a ``bench.json`` this command wrote (a JSON object with ``hardware`` and
    ``benchmarks``), so a mistyped path never clobbers another file."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise ConfigError(f"--out {out} exists and is not a plain file")
    if out.exists():
        try:
            old = json.loads(out.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            old = None
        if not (isinstance(old, dict) and {"hardware", "benchmarks"} <= set(old)):
            raise ConfigError(f"--out {out} exists and is not a bench.json written by `bench`: refusing to replace it")
    parent = out.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{out.name}.", suffix=".tmp"):
            pass
    except OSError as e:
        raise ConfigError(f"--out {out} cannot be written: {e.strerror or e}") from None


def run_benchmarks(out: Path, quick: bool = False, only: Sequence[str] = ()) -> dict[str, Any]:
    _load_all()
    unknown = [n for n in only if n not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(BENCHMARKS)}")
    check_out(out)
    result: dict[str, Any] = {"hardware": hardware(), "quick": quick, "benchmarks": {}}
    print(f"benchmarks on {result['hardware']}")
    for name, fn in BENCHMARKS.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        rows = fn(quick)
        result["benchmarks"][name] = {"rows": rows, "seconds": time.perf_counter() - t0}
        print_table(name, rows)
        write_json(out, result)  # after every benchmark, so a long run leaves what it measured
    print(f"\nwrote {out}")
    return result
