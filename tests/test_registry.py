"""The explicit study registry: a literal mapping, nothing imported until used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from experiments.registry import STUDIES, Study, get_experiment, get_report, load, study_of
from icl.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_list_imports_no_study_and_no_torch():
    code = ("import sys, experiments.cli as c; c.main(['list']); "
            "print('LOADED', sorted(m for m in sys.modules if m == 'torch' or m.startswith('experiments.') "
            "and m not in ('experiments.cli', 'experiments.registry')))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out
    for name in STUDIES:
        assert name in out


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_entry_resolves_to_a_study_and_its_report(name):
    entry = STUDIES[name]
    assert isinstance(load(entry.definition), Study)
    assert study_of(name).config_cls is load(entry.config)
    exp = get_experiment(name)
    assert exp.name == name and exp.description == entry.description
    cfg = exp.config_cls()
    assert cfg.to_dict()  # the default config builds and validates
    if entry.report is not None:
        assert callable(get_report(name))


def test_unknown_names_get_the_nearest_ones():
    with pytest.raises(ConfigError, match="Did you mean: pgd_depth"):
        get_experiment("pgd_dept")
    with pytest.raises(ConfigError, match="has no report"):
        get_report("quickstart")


SHOW = """
import runpy, sys
sys.argv = ["experiments", *sys.argv[1:]]
try:
    runpy.run_module("experiments", run_name="__main__")
except SystemExit as e:
    print("EXIT", e.code)
print("LOADED", sorted(m for m in ("torch", "scipy") if m in sys.modules
                       or any(k.startswith(m + ".") for k in sys.modules)))
from experiments.registry import STUDIES
print("STUDY MODULES", sorted(k for k in sys.modules if k.split(".")[:2] in [["experiments", n] for n in STUDIES]))
"""


@pytest.mark.parametrize(
    "args, status",
    [
        (["pgd_depth", "--show-config"], 0),
        (["noisy_regression", "--show-config", "--profile", "quick", "--seeds", "0,1"], 0),
        (["newton_vs_gd", "--show-config", "--set", "gpt_train.lr=0.003"], 0),
        (["pgd_depth", "--show-config", "--set", "train.lr=-1"], 2),  # a config error, reported before any torch
        (["pgd_depth", "--set", "train.lr=-1"], 2),
    ],
)
def test_show_config_and_config_errors_import_neither_torch_nor_scipy(args, status):
    """`python -m experiments run NAME --show-config` answers from the study's config module alone: the printed
    config is the resolved one, and torch, scipy and the study module are never imported."""
    out = subprocess.run([sys.executable, "-c", SHOW, "run", *args], cwd=ROOT, capture_output=True, text=True)
    assert f"EXIT {status}" in out.stdout and "LOADED []" in out.stdout, out.stdout + out.stderr
    assert "STUDY MODULES []" in out.stdout
    if status == 0:
        assert '"profile"' in out.stdout
    if "gpt_train.lr=0.003" in args:
        assert '"lr": 0.003' in out.stdout


def test_study_configs_load_without_torch_or_scipy():
    code = ("import sys\nfrom experiments.registry import STUDIES\nimport importlib\n"
            "for name in STUDIES:\n    importlib.import_module('experiments.configs.' + name)\n"
            "print('LOADED', sorted(m for m in ('torch', 'scipy') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_the_study_re_exports_its_config_and_profiles(name):
    import importlib

    configs = importlib.import_module(f"experiments.configs.{name}")
    study = load(STUDIES[name].definition)
    assert study.config_cls is getattr(configs, study.config_cls.__name__)
    assert dict(study.profiles) == dict(getattr(configs, "PROFILES", {}))


@pytest.mark.parametrize("package", ["icl", "icl.training", "learned_optimizers"])
def test_lazy_packages_list_their_exports_and_name_an_unknown_one(package):
    import importlib

    module = importlib.import_module(package)
    assert set(module.__all__) <= set(dir(module))
    name = module.__all__[0]
    assert getattr(module, name) is getattr(module, name)  # imported once, then cached
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'no_such_name'"):
        module.no_such_name
