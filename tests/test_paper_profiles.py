"""Every paper profile runs (issue #13, Budget): each registered study with a ``paper`` profile is run through the
CLI's own entry (``python -m experiments run NAME --profile paper``) with ``--set`` overrides that shrink only
sizes (training steps, batches, prompt counts, seeds, tuning budgets), so the paper profile's structural settings
(its models, widths, depths, dtype, optimizer, settings) are what runs: a paper profile that crashes on its own
settings fails here, in seconds instead of after hours.

The size overrides are derived from the resolved paper config, not copied from it: every training section
(a :class:`~icl.training.config.TrainConfig` field) gets a few steps on small batches, every ``*_prompts`` count a
few hundred prompts; :data:`SIZES` names each study's other size fields (tuning budgets, reference runs; the
noisy_regression noise grid is cut to its two ends, 0 and the paper's largest σ_max, which keeps every model kind,
depth and the categorical noise).
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from experiments.cli import main, resolve_config
from experiments.registry import STUDIES, get_experiment
from experiments.results import read_results
from icl.tracking import flatten
from icl.training.config import TrainConfig

PAPER = [name for name in STUDIES if "paper" in get_experiment(name).profiles]
STEPS = 4
#: the training sizes set in every TrainConfig section of a paper profile
TRAIN_SIZES = {"steps": STEPS, "batch_size": 32, "eval_batch": 64, "eval_every": 2, "log_every": 2,
               "halve_every": 2}  # fmt: skip
PROMPTS = 200
#: per study, its size fields besides training sections and ``*_prompts`` (tuning budgets, reference runs)
SIZES = {
    "baselines": {"tune_budget": 2},
    "gd_one_layer": {"interp_points": 3},
    "pgd_depth": {"tune_evals": 1, "read_every": 2, "gdpp_restarts": 1},
    "newton_vs_gd": {"gd_max_steps": 16, "gd_tune_steps": 4, "compare_prompts": 8},  # compare: autograd per prompt
    "outer_optimizers": {"tune_steps": STEPS},
    "memformer_vs_cgd": {"big_batch_size": 64},
    "manifold_icl": {"reference_steps": STEPS, "reference_patience": 2, "monitor_every": 2, "halve_every": 2,
                     "constrained_halve_every": 2},  # fmt: skip
    "noisy_regression": {"tune_maxfev": 4, "sigma_max": "0,7"},  # the noise grid's ends (8 levels: 210 models)
}


def shrink(name: str) -> list[str]:
    """The ``--set`` overrides that make study ``name``'s paper profile small, sizes only."""
    cfg = resolve_config(get_experiment(name), [], profile="paper")
    sets = [f"checkpoint_every={STEPS}"]
    for field in (f.name for f in dataclasses.fields(cfg)):
        value = getattr(cfg, field)
        if isinstance(value, TrainConfig):
            sets += [f"{field}.{k}={v}" for k, v in TRAIN_SIZES.items()]
        elif field.endswith("_prompts") and isinstance(value, int):
            sets.append(f"{field}={min(value, PROMPTS)}")
    sets += [f"{k}={v}" for k, v in SIZES.get(name, {}).items()]
    return sets


def test_every_size_field_named_exists_and_every_paper_study_is_covered():
    assert set(SIZES) <= set(PAPER) and len(PAPER) >= 8
    for name, fields in SIZES.items():
        names = set(get_experiment(name).config_cls.field_names())
        assert set(fields) <= names, (name, set(fields) - names)


@pytest.mark.parametrize("name", PAPER)
def test_paper_profile_runs_on_its_own_structural_settings(name, tmp_path):
    paper = resolve_config(get_experiment(name), [], profile="paper")
    out = tmp_path / "run"
    args = ["run", name, "--profile", "paper", "--seeds", str(paper.seeds[0]), "--out", str(out), "--quiet"]
    for s in shrink(name):
        args += ["--set", s]
    assert main(args) == 0
    ran = json.loads((out / "config.json").read_text())["config"]
    assert ran["profile"] == "paper"
    # what was shrunk is sizes only: every other field is the paper profile's
    shrunk = {s.split("=")[0] for s in shrink(name)} | {"seeds"}
    flat = paper.to_dict()
    for key, value in flatten(flat).items():
        if key not in shrunk:
            assert flatten(ran)[key] == value, (name, key)
    rows = read_results(out / "results.csv")
    assert rows and any(math.isfinite(r["value"]) for r in rows)
