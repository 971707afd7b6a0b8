"""The tidy results table every study writes (``results.csv``) and reads back.

One row per number. The key columns, each a real column (blank where it does not apply):

- ``experiment``: the study's name;
- ``setting``: the data setting or dataset of the row (``noniso``/``iso``, ``ahn_dutta``/``isotropic``, a noise law);
- ``method``: the model, baseline or outer optimizer;
- ``reference``: the reference optimizer a model is compared with (newton_vs_gd: ``newton``, ``gd``);
- ``lr``: the outer learning rate of a sweep (manifold_adam, outer_optimizers);
- ``depth``: the model's number of layers, or a reference method's number of steps (0: not applicable);
- ``layer``: the layer (1-based, or 0..L for read-outs after the embedding) a per-layer quantity belongs to;
- ``k``: the index along the metric's own axis: the k-th smallest step size, a schedule's step k, the iteration
  count k of the reference iterate a similarity is measured against;
- ``param``: the value of a swept scalar (gd_one_layer: the interpolation weight t, the input scale a);
- ``train_step``: the training step of a quantity recorded during training;
- ``seed``, ``metric``, ``value``.

:func:`read_results` also reads the packed format of results written before these columns existed
(``noniso:cg``, ``name@lr``, ``dyn:dist_sigma:l1:t200``, a training step in the depth column), converting each
row, so the committed runs re-render without re-running.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from icl.runio import RunDirError, write_csv
from icl.runio import read_results as strict_read_results

COLUMNS = ("experiment", "setting", "method", "reference", "lr", "depth", "layer", "k", "param", "train_step", "seed",
           "metric", "value")  # fmt: skip
#: the columns every row has
REQUIRED = ("experiment", "method", "depth", "seed", "metric", "value")
KEYS = tuple(c for c in COLUMNS if c not in ("experiment", "seed", "metric", "value"))
_INT = ("depth", "layer", "k", "train_step", "seed")
_FLOAT = ("lr", "param", "value")


class Rows:
    """Collects the tidy rows of a study (see the module docstring for the columns)."""

    def __init__(self, experiment: str) -> None:
        self.experiment = experiment
        self.rows: list[dict[str, Any]] = []

    def add(self, method: str, depth: int, seed: int, metric: str, value: float, **keys: Any) -> None:
        """One row; ``keys`` are further key columns (``setting``, ``layer``, ``train_step``, ``lr`` …)."""
        bad = sorted(set(keys) - set(KEYS))
        if bad:
            raise ValueError(f"unknown result column(s) {bad}; the columns are {COLUMNS}")
        self.rows.append(
            dict(experiment=self.experiment, method=method, depth=int(depth), seed=int(seed), metric=metric,
                 value=float(value), **{k: v for k, v in keys.items() if v is not None})
        )  # fmt: skip

    def add_loss(self, method: str, depth: int, seed: int, est: Any, prefix: str = "test_loss", **keys: Any) -> None:
        """A loss estimate (``mean``, ``stderr``) as two rows: ``test_loss`` and ``test_loss_stderr``."""
        self.add(method, depth, seed, prefix, est.mean, **keys)
        self.add(method, depth, seed, f"{prefix}_stderr", est.stderr, **keys)

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        self.rows.extend(rows)

    def write(self, ctx: Any) -> None:
        """Write ``results.csv`` atomically (called after every seed, so partial studies keep their rows)."""
        write_results(ctx.out_dir / "results.csv", self.rows)


def write_results(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Atomically write tidy rows: the required columns and every key column some row uses, in :data:`COLUMNS`
    order."""
    rows = list(rows)
    used = set(REQUIRED).union(*(r.keys() for r in rows)) if rows else set(REQUIRED)
    unknown = sorted(used - set(COLUMNS))
    if unknown:
        raise ValueError(f"unknown result column(s) {unknown}; the columns are {COLUMNS}")
    return write_csv(path, rows, [c for c in COLUMNS if c in used])


def read_results(path: str | os.PathLike, config: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of ``results.csv``, every column of :data:`COLUMNS` present (None where blank), typed.

    A file in the old packed format (columns experiment, method, depth, seed, metric, value only, with keys packed
    into the strings) is converted row by row (:func:`unpack_legacy`; ``config`` is the run's config, used to
    give per-step rows of the sweeps their model depth).
    """
    raw = strict_read_results(path, COLUMNS)  # header, field counts, types and truncation checked
    legacy = bool(raw) and set(raw[0]) == set(REQUIRED)
    out = []
    for r in raw:
        row: dict[str, Any] = {c: None for c in COLUMNS}
        for c, v in r.items():
            if v == "" or v is None:
                continue
            try:
                row[c] = int(v) if c in _INT else float(v) if c in _FLOAT else v
            except ValueError:
                raise RunDirError(f"results file {path}: column {c} holds {v!r}, not a number") from None
        out.append(unpack_legacy(row, config) if legacy else row)
    return out


_LAYER = re.compile(r"^(?P<q>[A-Za-z_]+):l(?P<layer>\d+)$")
_DYN = re.compile(r"^dyn:(?P<q>[A-Za-z_]+):l(?P<layer>\d+):t(?P<t>\d+)$")
_SORTED = re.compile(r"^step_sorted:k(?P<k>\d+)$")
_AT = re.compile(r"^(?P<q>[A-Za-z_:]+)@(?P<k>\d+)$")
_EQ = re.compile(r"^(?P<q>interp|ood):(?P<p>[ta])=(?P<x>[-+0-9.e]+)$")
_CURVES = ("val_loss", "wall_s", "violation")


def unpack_legacy(row: dict[str, Any], config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One row of the old packed format in the tidy columns (see :func:`read_results`)."""
    r = dict(row)
    exp, method, metric = r["experiment"], r["method"], r["metric"]
    if exp == "baselines" and "/" in method:
        r["setting"], r["method"] = method.split("/", 1)
    elif exp in ("memformer_vs_cgd", "noisy_regression") and ":" in method:
        r["setting"], r["method"] = method.split(":", 1)
    elif exp == "newton_vs_gd" and ":" in method:
        r["method"], r["reference"] = method.split(":", 1)
        r["layer"], r["depth"] = r["depth"], 0
    elif exp in ("manifold_adam", "outer_optimizers"):
        if "@" in method:
            name, lr = method.split("@", 1)
            r["method"], r["lr"] = name, float(lr)
        if metric in _CURVES:
            r["train_step"], r["depth"] = r["depth"], 0
        if metric == "step_size":
            r["k"] = r["depth"]
            r["depth"] = int((config or {}).get("model", {}).get("layers", 0))
    if m := _DYN.match(metric):
        r.update(metric=m["q"], layer=int(m["layer"]), train_step=int(m["t"]))
    elif m := _LAYER.match(metric):
        r.update(metric=m["q"], layer=int(m["layer"]))
    elif m := _SORTED.match(metric):
        r.update(metric="step_sorted", k=int(m["k"]))
    elif m := _AT.match(metric):
        r.update(metric=m["q"], k=int(m["k"]))
    elif m := _EQ.match(metric):
        r.update(metric={"interp": "interp_loss", "ood": "ood_half_mse"}[m["q"]], param=float(m["x"]))
    return r
