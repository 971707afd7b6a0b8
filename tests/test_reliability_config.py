"""Config validation in one place: a bad value fails at once, naming the full dotted field, the value and the
allowed range; unknown keys and experiment names come with the nearest valid names; the CLI exits with
status 2 before creating a run directory or training anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.quickstart import QuickstartConfig
from icl.config import ConfigError
from icl.prompts import PromptConfig
from icl.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("prompt.d=0", "prompt.d = 0 is out of range: must be >= 1"),
        ("train.lr=-1", "train.lr = -1.0 is out of range: must be > 0"),
        ("train.lr=nan", "train.lr = nan must be finite"),
        ("train.betas=0.9,1.5", "train.betas[1] = 1.5 is out of range: must be >= 0 and < 1"),
        ("train.betas=0.9", "train.betas must have 2 entries"),
        ("train.momentum=0.5", "train.momentum is set but optimizer 'adamw' takes no momentum"),
        ("train.optimizer=adamx", "train.optimizer = 'adamx' is not one of"),
        ("train.max_rollbacks=-1", "train.max_rollbacks = -1 is out of range: must be >= 0"),
        ("train.rollback_lr_factor=1", "train.rollback_lr_factor = 1.0 is out of range: must be > 0 and < 1"),
        ("prompt.eigenvalues=1,2", "prompt.eigenvalues has 2 entries but d = 5"),
        ("prompt.d=x", "prompt.d = 'x' is not a valid int"),
        ("seed=-1", "seed = -1 is out of range: must be >= 0"),
        ("test_prompts=1", "test_prompts = 1 is out of range: must be >= 2"),
    ],
)
def test_override_errors_name_full_dotted_path(override, expected):
    with pytest.raises(ConfigError) as err:
        QuickstartConfig().with_overrides([override])
    assert expected in str(err.value)


def test_nested_error_from_dict_carries_section():
    with pytest.raises(ConfigError, match=r"^prompt\.d = 0 is out of range: must be >= 1$"):
        QuickstartConfig.from_dict({"prompt": {"d": 0}})
    with pytest.raises(ConfigError, match=r"^train\.eval_every = 0 is out of range"):
        QuickstartConfig.from_dict({"train": {"eval_every": 0}})


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError) as err:
        QuickstartConfig().with_overrides(["train.lrr=0.1"])
    msg = str(err.value)
    assert "unknown config key 'train.lrr'" in msg and "Did you mean: train.lr" in msg
    # not prefixed twice
    assert msg.startswith("unknown config key")
    with pytest.raises(ConfigError, match="Did you mean: prompt.d"):
        QuickstartConfig.from_dict({"prompt": {"dd": 3}})


def test_choice_error_suggests_nearest():
    with pytest.raises(ConfigError, match="did you mean: .*'adamw'"):
        TrainConfig(optimizer="adamx")


def test_every_field_is_typed_and_checked():
    with pytest.raises(ConfigError, match="steps must be an integer"):
        TrainConfig(steps="10")
    with pytest.raises(ConfigError, match="lr must be a number"):
        TrainConfig(lr=True)
    with pytest.raises(ConfigError, match="rotation = 'haer' is not one of"):
        PromptConfig(rotation="haer")
    with pytest.raises(ConfigError, match="eigenvalues\\[1\\] = 0.0 is out of range: must be > 0"):
        PromptConfig(d=2, eigenvalues=(1.0, 0.0))


# -- via the command line ------------------------------------------------------------------------------------
def test_cli_bad_override_exits_2_without_run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", "quickstart", "--out", str(out), "--set", "prompt.d=0", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "prompt.d = 0 is out of range: must be >= 1" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["run", "quickstrat"], "unknown experiment 'quickstrat'. Did you mean: quickstart?"),
        (["run", "quickstart", "--set", "train.lrr=1"], "Did you mean: train.lr"),
        (["run", "quickstart", "--set", "train.lr"], "must look like key=value"),
        (["run", "quickstart", "--stop-after", "0"], "--stop-after = 0 is out of range: must be >= 1"),
        (["run", "quickstart", "--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
        (["run", "quickstart", "--device", "tpu"], "--device = 'tpu' is not one of"),
    ],
)
def test_cli_rejects_before_compute(tmp_path, capsys, argv, expected):
    out = tmp_path / "run"
    rc = main([*argv, "--out", str(out), "--quiet"])
    assert rc == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_cli_subprocess_bad_config_exit_2(tmp_path):
    """The real entry point: status 2, the message on stderr, no run directory, no training."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments", "run", "quickstart", "--out", str(out), "--set", "prompt.d=0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "error: prompt.d = 0 is out of range: must be >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_train_config_names_every_optimizer_with_the_hyperparameters_it_takes():
    """TrainConfig validates torch-free from its own table; the table must match the optimizers' signatures."""
    import inspect

    from icl.optim import OPTIMIZERS
    from icl.training.config import OPTIMIZER_HYPERPARAMETERS

    assert list(OPTIMIZER_HYPERPARAMETERS) == list(OPTIMIZERS)
    for name, cls in OPTIMIZERS.items():
        accepted = inspect.signature(cls).parameters
        assert OPTIMIZER_HYPERPARAMETERS[name] == tuple(
            h for h in ("betas", "momentum", "weight_decay") if h in accepted
        ), name
