"""Issue 18, items 3, 11 and 12: configs that would run wrongly or not at all are refused with exit 2 before the
run directory is made: repeated or empty list entries, budgets no machine gets through, sizes that do not fit in
memory, magnitudes that overflow the prompts, and a prefix loss on a model without prefix predictions."""

from __future__ import annotations

import pytest

from experiments.cli import main, resolve_config
from experiments.preflight import memory_estimate, preflight
from experiments.registry import all_experiments, get_experiment
from icl.config import ConfigError
from icl.prompts import PromptConfig


def refused(tmp_path, capsys, name: str, *args: str) -> str:
    out = tmp_path / "run"
    assert main(["run", name, "--out", str(out), "--quiet", *args]) == 2
    assert not out.exists(), "refused after the run directory was made"
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


# -- item 3: repeated entries ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, args, message",
    [
        ("pgd_depth", ["--seeds", "0,1,1"], "seeds = 0,1,1 repeats 1: give each value once"),
        ("pgd_depth", ["--set", "depths=1,1"], "depths = 1,1 repeats 1"),
        ("pgd_depth", ["--set", "modes=sparse,sparse"], "modes = sparse,sparse repeats 'sparse'"),
        ("outer_optimizers", ["--set", "lr_grid=1,1.0"], "lr_grid = 1.0,1.0 repeats 1.0"),
        ("noisy_regression", ["--set", "sigma_max=1,3,1"], "sigma_max = 1.0,3.0,1.0 repeats 1.0"),
    ],
)
def test_repeated_list_entries_exit_2(tmp_path, capsys, name, args, message):
    assert message in refused(tmp_path, capsys, name, *args)


def test_spectra_may_repeat_values():
    """Eigenvalues (and the categorical σ set, the optimizer's betas) repeat values by design."""
    assert PromptConfig(d=3, eigenvalues=(1.0, 1.0, 0.25)).eigenvalues == (1.0, 1.0, 0.25)
    assert PromptConfig(noise="categorical", sigma_set=(1.0, 1.0, 3.0)).sigma_set == (1.0, 1.0, 3.0)
    cfg = resolve_config(get_experiment("pgd_depth"), ["train.betas=0.9,0.9"], profile="quick")
    assert cfg.train.betas == (0.9, 0.9)


# -- item 11: empty lists --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, key",
    [
        ("pgd_depth", "depths"),
        ("noisy_regression", "sigma_max"),
        ("memformer_vs_cgd", "settings"),
        ("pgd_depth", "modes"),
        ("noisy_regression", "modes"),
        ("manifold_icl", "methods"),
        ("outer_optimizers", "optimizers"),
        ("outer_optimizers", "lr_grid"),
        ("newton_vs_gd", "models"),
        ("memformer_vs_cgd", "models"),
        ("pgd_depth", "seeds"),
    ],
)
def test_empty_lists_exit_2(tmp_path, capsys, name, key):
    assert f"{key} is empty: give at least one value" in refused(tmp_path, capsys, name, "--set", f"{key}=")


def test_empty_eigenvalues_is_not_silently_isotropic(tmp_path, capsys):
    err = refused(tmp_path, capsys, "quickstart", "--set", "prompt.eigenvalues=")
    assert "prompt.eigenvalues = '' has no value" in err and "prompt.eigenvalues=none" in err
    assert main(["run", "quickstart", "--set", "prompt.eigenvalues=none", "--show-config"]) == 0


def test_a_list_declared_empty_ok_accepts_empty(capsys):
    assert main(["run", "noisy_regression", "--profile", "quick", "--set", "categorical=", "--show-config"]) == 0


# -- item 12: checked before config.json ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, args, message",
    [
        ("quickstart", ["--set", "train.loss=prefix"], "train.loss = 'prefix' needs a model that predicts at every"),
        ("newton_vs_gd", ["--set", "lsa_train.loss=prefix"], "lsa_train.loss = 'prefix' needs a model"),
        ("pgd_depth", ["--set", "train.loss=prefix"], "train.loss = 'prefix' needs a model"),
        ("quickstart", ["--set", "prompt.eigenvalues=1e200,1,1,1,1"], "prompt.eigenvalues has 1e+200: eigenvalues"),
        ("quickstart", ["--set", "prompt.eigenvalues=1e-200,1,1,1,1"], "eigenvalues must lie in"),
        ("quickstart", ["--set", "prompt.noise=fixed", "--set", "prompt.sigma=1e200"], "prompt.sigma = 1e+200 is too"),
        ("noisy_regression", ["--set", "sigma_max=0,1e200"], "sigma_max = 0.0,1e+200 is too large"),
        ("quickstart", ["--set", "prompt.n=1e9"], "prompt.n = 1000000000 is too large"),
        ("quickstart", ["--set", "train.batch_size=1e9"], "train.batch_size = 1000000000 is too large"),
        ("quickstart", ["--set", "train.steps=1e30"], "train.steps = 1000000000000000019884624838656 is too large"),
        ("quickstart", ["--set", "test_prompts=1e12"], "test_prompts = 1000000000000 is too large"),
        ("quickstart", ["--set", "model.layers=1e5"], "model.layers = 100000 is too large"),
        ("quickstart", ["--set", "train.batch_size=5e6", "--set", "prompt.n=50000"], "GiB"),
    ],
)
def test_unrunnable_configs_exit_2_before_the_run_directory(tmp_path, capsys, name, args, message):
    assert message in refused(tmp_path, capsys, name, *args)


def test_every_profile_of_every_study_passes_preflight():
    """The bounds are far from every shipped setting (a false refusal would block a published run)."""
    for name, exp in all_experiments().items():
        for profile in exp.profiles or [None]:
            cfg = resolve_config(exp, [], profile=profile)
            preflight(cfg)
            assert memory_estimate(cfg) < 16 * 2**30, (name, profile)


def test_memory_estimate_scales_with_batch_and_prompt_length():
    exp = get_experiment("quickstart")
    base = resolve_config(exp, ["test_prompts=2", "train.eval_batch=1"])
    double_batch = resolve_config(exp, ["test_prompts=2", "train.eval_batch=1", f"train.batch_size={2 * 2048}"])
    assert memory_estimate(double_batch) == 2 * memory_estimate(base)
    big = resolve_config(exp, ["train.batch_size=5e6", "prompt.n=50000"])
    # 5e6 prompts · 50,001 tokens · 6 wide · 3 layers' activations · 2 (backward) · 8 bytes
    assert memory_estimate(big) == 8 * 2 * 5_000_000 * 3 * 50_001 * 6
    with pytest.raises(ConfigError, match="GiB"):
        preflight(big)


def test_the_prefix_models_preflight_names_are_the_registered_models_with_prefix_predictions():
    from experiments.preflight import PREFIX_MODEL_CONFIGS
    from learned_optimizers.registry import MODELS

    prefix = {cfg_cls for cls, cfg_cls in MODELS.values() if callable(getattr(cls, "prefix_predictions", None))}
    assert prefix == set(PREFIX_MODEL_CONFIGS)
