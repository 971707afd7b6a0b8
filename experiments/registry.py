"""The registry of studies: ``python -m experiments run NAME`` looks NAME up here.

:data:`STUDIES` is a literal mapping from a study's name to where its definition and its report live
(``"module:attribute"``) and the one line ``python -m experiments list`` prints. Nothing is imported until a
study is used: ``list`` reads this file alone, ``run NAME --show-config`` (and a config error) imports NAME's
torch-free config module (``experiments/configs/NAME.py``: the config class and its ``PROFILES``), ``run NAME``
its definition module, ``report RUN_DIR`` its report module. A new study is one config file, one definition file
(``experiments/NAME.py`` with ``STUDY = Study(...)``), one report file (``experiments/reports/NAME.py`` with
``report(run_dir)``) and one line below.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from icl.config import ConfigError


class Entry(NamedTuple):
    """Where a study lives: its definition and report as ``"module:attribute"``, its one-line description and its
    config class (``"module:attribute"``, in a module that imports no torch; the module's ``PROFILES``, if any,
    are the study's profiles)."""

    definition: str
    report: str | None
    description: str
    config: str


# fmt: off
STUDIES: dict[str, Entry] = {
    "quickstart": Entry("experiments.quickstart:STUDY", None, "1-layer sparse LSA vs the Ahn et al. one-layer optimum (d=5, n=20)", "experiments.configs.quickstart:QuickstartConfig"),  # noqa: E501
    "baselines": Entry("experiments.baselines:STUDY", "experiments.reports.baselines:report", "every classical reference optimizer (tuned) and the Krylov bound vs steps 1..8, d=5, n=20", "experiments.configs.baselines:BaselinesConfig"),  # noqa: E501
    "gd_one_layer": Entry("experiments.gd_one_layer:STUDY", "experiments.reports.gd_one_layer:report", "1-layer factorised LSA vs one optimal GD step (von Oswald et al. 2023)", "experiments.configs.gd_one_layer:GDOneLayerConfig"),  # noqa: E501
    "pgd_depth": Entry("experiments.pgd_depth:STUDY", "experiments.reports.pgd_depth:report", "L-layer LSA vs preconditioned GD, Krylov bounds, Dist(Σ½AΣ½, I) (Ahn et al. 2023)", "experiments.configs.pgd_depth:PGDDepthConfig"),  # noqa: E501
    "newton_vs_gd": Entry("experiments.newton_vs_gd:STUDY", "experiments.reports.newton_vs_gd:report", "per-layer best-matching iterative-Newton vs GD steps of a full LSA and a small GPT (d=10)", "experiments.configs.newton_vs_gd:NewtonVsGDConfig"),  # noqa: E501
    "outer_optimizers": Entry("experiments.outer_optimizers:STUDY", "experiments.reports.outer_optimizers:report", "Adam/AdamW/FAdam vs root-free RF-RMSProp/RF-AdamW/SIRFShampoo and ManifoldAdam on a 3-layer LSA", "experiments.configs.outer_optimizers:OuterOptimizersConfig"),  # noqa: E501
    "memformer_vs_cgd": Entry("experiments.memformer_vs_cgd:STUDY", "experiments.reports.memformer_vs_cgd:report", "Memformers (CGD-like, LFOM) vs per-prompt CG, tuned momentum/Nesterov/PGD (Dutta & Sra 2024)", "experiments.configs.memformer_vs_cgd:MemformerVsCGDConfig"),  # noqa: E501
    "manifold_icl": Entry("experiments.manifold_icl:STUDY", "experiments.reports.manifold_icl:report", "spectral (Stiefel U) LSA/Memformers with ManifoldAdam vs unconstrained Adam on Ahn et al.'s data", "experiments.configs.manifold_icl:ManifoldICLConfig"),  # noqa: E501
    "noisy_regression": Entry("experiments.noisy_regression:STUDY", "experiments.reports.noisy_regression:report", "FULL/DIAG/GD++ linear transformers vs ridge oracles on noisy regression (Vladymyrov et al. 2024)", "experiments.configs.noisy_regression:NoisyRegressionConfig"),  # noqa: E501
}
# fmt: on


@dataclass(frozen=True)
class Study:
    """What a study's definition module declares (``STUDY = Study(...)``).

    Attributes:
        config_cls: its config dataclass (defaults = the published setup at CPU scale).
        run: ``run(cfg, ctx) -> summary dict``; writes its artifacts into ``ctx.out_dir``.
        profiles: overrides per profile (``quick``: minutes, run by the tests; ``standard``: under 30 minutes
            on 2 cores; ``paper``: the paper's budget), applied before the command line's ``--set``.
    """

    config_cls: type
    run: Callable[[Any, Any], dict[str, Any]]
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """A registered study: its config imported (torch-free), its definition and report imported on first use.

    Attributes:
        name: the CLI name.
        description: one line for ``python -m experiments list``.
        config_cls, profiles: the study's config class and profiles, from its config module.
        definition: ``"module:attribute"`` of its :class:`Study`; :attr:`run` imports it.
        report_target: ``"module:attribute"`` of ``report(run_dir)``, which re-renders the figures and
            ``report.md`` from ``results.csv`` (None: the study writes its report inside ``run``).
    """

    name: str
    description: str
    config_cls: type
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    definition: str | None = None
    report_target: str | None = None

    @property
    def run(self) -> Callable[[Any, Any], dict[str, Any]]:
        """``run(cfg, ctx)``, from the study's definition (imported on first use: torch and the study's code)."""
        return study_of(self.name).run

    @property
    def report(self) -> Callable[[Path], Any] | None:
        """``report(run_dir)``, imported on first use (None when the study has none)."""
        return None if self.report_target is None else load(self.report_target)


def load(target: str) -> Any:
    """The object a ``"module:attribute"`` string names (imports the module)."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _unknown(name: str) -> ConfigError:
    near = difflib.get_close_matches(name, list(STUDIES), n=3)
    hint = f" Did you mean: {', '.join(near)}?" if near else ""
    return ConfigError(f"unknown experiment {name!r}.{hint} Available: {', '.join(sorted(STUDIES))}")


def get_experiment(name: str) -> Experiment:
    """Study ``name`` with its config module imported (not its definition or report: no torch), with the nearest
    names in the error."""
    if name not in STUDIES:
        raise _unknown(name)
    entry = STUDIES[name]
    config_cls = load(entry.config)
    profiles = getattr(importlib.import_module(entry.config.partition(":")[0]), "PROFILES", {})
    return Experiment(name, entry.description, config_cls, dict(profiles), entry.definition, entry.report)


def study_of(name: str) -> Study:
    """Import study ``name``'s definition: its :class:`Study` (which must declare the registry's config class)."""
    if name not in STUDIES:
        raise _unknown(name)
    entry = STUDIES[name]
    study = load(entry.definition)
    if not isinstance(study, Study):
        raise TypeError(f"{entry.definition} is a {type(study).__name__}, not a Study")
    if study.config_cls is not load(entry.config):
        raise TypeError(f"{entry.definition} declares {study.config_cls.__name__}, the registry {entry.config}")
    return study


def get_report(name: str) -> Callable[[Path], Any]:
    """Study ``name``'s ``report(run_dir)`` (imports the report module only)."""
    if name not in STUDIES:
        raise _unknown(name)
    if STUDIES[name].report is None:
        raise ConfigError(f"experiment {name!r} has no report to re-render")
    return load(STUDIES[name].report)


def descriptions() -> dict[str, str]:
    """name -> one-line description, sorted by name, without importing any study."""
    return {name: STUDIES[name].description for name in sorted(STUDIES)}


def all_experiments() -> dict[str, Experiment]:
    """Every study with its config imported (its definition is imported by :attr:`Experiment.run`)."""
    return {name: get_experiment(name) for name in sorted(STUDIES)}
