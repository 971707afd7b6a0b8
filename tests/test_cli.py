"""The command line: list, a tiny quickstart run with every artifact, and bad input rejected before compute."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from experiments.cli import main
from learned_optimizers import load_model

TINY = [
    "--set", "train.steps=30", "--set", "train.batch_size=64", "--set", "train.eval_batch=64",
    "--set", "train.eval_every=10", "--set", "test_prompts=500", "--set", "checkpoint_every=10", "--quiet",
]  # fmt: skip


def test_list(capsys):
    assert main(["list"]) == 0
    assert "quickstart" in capsys.readouterr().out


def test_quickstart_tiny_run_writes_every_artifact(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "quickstart", "--out", str(out), "--seed", "3", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "test loss" in printed and str(out) in printed

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["experiment"] == "quickstart" and cfg["seed"] == 3 and cfg["config"]["seed"] == 3
    assert cfg["config"]["train"]["steps"] == 30 and set(cfg["stream_seeds"]) >= {"train", "val", "test", "init"}

    log = list(csv.DictReader((out / "train_log.csv").open()))
    assert [int(r["step"]) for r in log] == list(range(1, 31))
    assert {"step", "loss", "lr", "grad_norm", "eval_loss"} <= set(log[0])
    assert sum(1 for r in log if r["eval_loss"]) == 3

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert list(rows[0]) == ["experiment", "method", "depth", "seed", "metric", "value"]
    metrics = {(r["method"], r["metric"]): float(r["value"]) for r in rows}
    assert metrics[("theory_ahn_thm1", "test_loss")] == pytest.approx(30 / 26, rel=1e-12)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_loss"]["theory"] == pytest.approx(30 / 26, rel=1e-12)
    assert summary["test_loss"]["prompts"] == 500
    for ext in ("png", "pdf"):
        assert (out / "figures" / f"training_curve.{ext}").stat().st_size > 1000

    # the checkpoint restores the model with no outside state
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["trainer"]["step"] == 30
    model = load_model(out / "checkpoint.pt")
    A = model.A.detach()[0, 0].double()
    assert abs(torch.trace(A).item() / 5 - summary["A"]["learned_scale"]) < 1e-6


def test_run_refuses_existing_directory(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.csv").write_text("keep me")
    assert main(["run", "quickstart", "--out", str(out), *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "results.csv").read_text() == "keep me"


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "quickstrat"], "unknown experiment 'quickstrat'. Did you mean: quickstart?"),
        (["run", "quickstart", "--set", "prompt.dd=3"], "unknown config key 'prompt.dd'. Did you mean: prompt.d"),
        (["run", "quickstart", "--set", "prompt.d=0"], "d = 0 is out of range: must be >= 1"),
        (["run", "quickstart", "--set", "prompt.n=0"], "n = 0 is out of range: must be >= 1"),
        (["run", "quickstart", "--set", "prompt.sigma=-1"], "sigma = -1.0 is out of range: must be >= 0"),
        (
            ["run", "quickstart", "--set", "prompt.eigenvalues=1,1,0,1,1"],
            r"eigenvalues[2] = 0.0 is out of range: must be > 0",
        ),
        (["run", "quickstart", "--set", "prompt.noise=loud"], "noise = 'loud' is not one of: 'none', 'fixed'"),
        (["run", "quickstart", "--set", "train.steps=ten"], "train.steps = 'ten' is not a valid int"),
        (["run", "quickstart", "--set", "train.optimizer=adamax"], "optimizer = 'adamax' is not one of"),
        (["run", "quickstart", "--set", "prompt"], "must look like key=value"),
        (["run", "quickstart", "--device", "tpu"], "--device = 'tpu' is not one of: cpu, cuda, mps"),
    ],
)
def test_bad_input_exits_2_before_training(args, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not out.exists()  # nothing was written, nothing trained


def test_module_entry_point_exit_code():
    """`python -m experiments` exits non-zero with the message on stderr."""
    r = subprocess.run(
        [sys.executable, "-m", "experiments", "run", "nope"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "unknown experiment 'nope'" in r.stderr


def test_show_config_imports_no_plotting_report_or_sweep_module():
    """``run NAME --show-config`` loads the study's definition and nothing heavier than what it imports: no
    plotting library, no report module, no sweep machinery (what remains is the definitions' own imports of
    torch and scipy)."""
    from pathlib import Path

    from experiments.registry import STUDIES

    code = ("import contextlib, io, sys, experiments.cli as c\n"
            f"for name in {sorted(STUDIES)!r}:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "        assert c.main(['run', name, '--show-config']) == 0, name\n"
            "    assert out.getvalue().lstrip().startswith('{'), name\n"
            "heavy = ('matplotlib', 'seaborn', 'experiments.reports', 'experiments.sweep', 'experiments.collect')\n"
            "print('LOADED', sorted(m for m in sys.modules if m.startswith(heavy)))")  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out
