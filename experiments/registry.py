"""The registry of studies: ``python -m experiments run NAME`` looks NAME up here."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from icl.config import Config, ConfigError


@dataclass(frozen=True)
class Experiment:
    """A registered study.

    Attributes:
        name: the CLI name.
        description: one line for ``python -m experiments list``.
        config_cls: its config dataclass (defaults = the published setup at CPU scale).
        run: ``run(cfg, ctx) -> summary dict``; writes its artifacts into ``ctx.out_dir``.
        profiles: overrides per profile (``quick``: minutes, run by the tests; ``standard``: under 30 minutes
            on 2 cores; ``paper``: the paper's budget), applied before the command line's ``--set``.
        report: ``report(run_dir)`` re-renders the figures and ``report.md`` from ``results.csv``.
    """

    name: str
    description: str
    config_cls: type[Config]
    run: Callable[[Any, Any], dict[str, Any]]
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    report: Callable[[Path], Any] | None = None


EXPERIMENTS: dict[str, Experiment] = {}


def register(
    name: str,
    description: str,
    config_cls: type[Config],
    profiles: Mapping[str, Mapping[str, Any]] | None = None,
):
    """Decorator registering ``run(cfg, ctx)`` under ``name``."""

    def deco(fn: Callable[[Any, Any], dict[str, Any]]) -> Callable[[Any, Any], dict[str, Any]]:
        if name in EXPERIMENTS:
            raise ValueError(f"experiment {name!r} is registered twice")
        EXPERIMENTS[name] = Experiment(name, description, config_cls, fn, dict(profiles or {}))
        return fn

    return deco


def register_report(name: str):
    """Decorator registering ``report(run_dir)`` for the experiment ``name`` (registered before)."""

    def deco(fn: Callable[[Path], Any]) -> Callable[[Path], Any]:
        EXPERIMENTS[name] = replace(EXPERIMENTS[name], report=fn)
        return fn

    return deco


def get_experiment(name: str) -> Experiment:
    """Look an experiment up, with the nearest names in the error."""
    _load_all()
    if name not in EXPERIMENTS:
        near = difflib.get_close_matches(name, list(EXPERIMENTS), n=3)
        hint = f" Did you mean: {', '.join(near)}?" if near else ""
        raise ConfigError(f"unknown experiment {name!r}.{hint} Available: {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]


def all_experiments() -> dict[str, Experiment]:
    _load_all()
    return dict(sorted(EXPERIMENTS.items()))


def _load_all() -> None:
    """Import every study module so that it registers itself."""
    from experiments import STUDIES  # noqa: F401
