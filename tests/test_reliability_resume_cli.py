"""End to end through ``python -m experiments``: a run stopped at step k (by ``--stop-after`` or a real SIGTERM)
and continued with ``--resume`` ends bitwise identical to an uninterrupted run; an occupied run directory is
refused; a diverging run exits 1 without writing a non-finite checkpoint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.cli import main
from icl.runio import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
QUICK = [
    "--set",
    "train.steps=60",
    "--set",
    "test_prompts=2000",
    "--set",
    "checkpoint_every=20",
    "--set",
    "train.batch_size=64",
    "--set",
    "train.eval_batch=64",
    "--quiet",
]


def cli(tmp_path: Path, *args: str) -> subprocess.Popen:
    # the same intra-op thread count as this process: the in-process resume must reduce in the same order
    # (CPU results are bitwise reproducible for a fixed thread count, not across thread counts)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen(
        [sys.executable, "-m", "experiments", "run", "quickstart", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_same(a, b, path="checkpoint"):
    """Nested dicts/lists of tensors and numbers are bitwise equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def assert_same_run(a: Path, b: Path):
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert_same(ca["models"], cb["models"], "models")
    assert_same(ca["trainer"], cb["trainer"], "trainer")
    assert ca["config"] == cb["config"]


@pytest.mark.parametrize("resample_every", [1, 7])
def test_stop_after_then_resume_is_bitwise_identical(tmp_path, capsys, resample_every):
    """Stopped at step 30 (between checkpoints; mid-block when resample_every = 7), then resumed. In-process
    to keep the suite fast; the SIGTERM test below does the same through a real subprocess."""
    args = [*QUICK, "--set", f"train.resample_every={resample_every}"]
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(["run", "quickstart", "--out", str(full), *args]) == 0
    capsys.readouterr()
    assert main(["run", "quickstart", "--out", str(split), *args, "--stop-after", "30"]) == 0
    err = capsys.readouterr().err
    assert "stopped at step 30" in err and "--resume" in err
    assert load_checkpoint(split / "checkpoint.pt")["trainer"]["step"] == 30
    assert not (split / "results.csv").exists()

    # resuming with other settings is refused, naming the key, and leaves the checkpoint alone (a resume may
    # change only the learning rate and the divergence policy)
    assert main(["run", "quickstart", "--out", str(split), *args, "--set", "train.batch_size=9", "--resume"]) == 2
    assert "differs in: train.batch_size" in capsys.readouterr().err
    assert load_checkpoint(split / "checkpoint.pt")["trainer"]["step"] == 30

    assert main(["run", "quickstart", "--out", str(split), *args, "--resume"]) == 0
    assert (full / "results.csv").read_bytes() == (split / "results.csv").read_bytes()
    assert (full / "train_log.csv").read_bytes() == (split / "train_log.csv").read_bytes()
    assert_same_run(full, split)


def test_sigterm_checkpoints_exits_143_and_resumes_exactly(tmp_path, capsys):
    """A real SIGTERM to the CLI process: it checkpoints the step it is at, says how to resume, and exits
    128 + 15. Continuing that checkpoint matches an uninterrupted run to the same step bitwise."""
    args = [a.replace("train.steps=60", "train.steps=100000") for a in QUICK]
    run = tmp_path / "killed"
    proc = cli(tmp_path, "--out", str(run), *args)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    m = re.search(r"SIGTERM received; stopped at step (\d+)", err)
    assert m, err
    k = int(m.group(1))
    assert "Traceback" not in err and "--resume" in err
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["trainer"]["step"] == k and 20 <= k < 100000
    assert not (run / "results.csv").exists()

    target = str(k + 5)
    capsys.readouterr()
    assert main(["run", "quickstart", "--out", str(run), *args, "--resume", "--stop-after", target]) == 0
    fresh = tmp_path / "fresh"
    assert main(["run", "quickstart", "--out", str(fresh), *args, "--stop-after", target]) == 0
    assert_same_run(run, fresh)


def test_occupied_run_dir_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.csv").write_text("precious\n")
    assert main(["run", "quickstart", "--out", str(run), *QUICK]) == 2
    assert "already holds a run; pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert (run / "results.csv").read_text() == "precious\n"
    assert main(["run", "quickstart", "--out", str(run), *QUICK, "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_diverging_run_exits_1_and_keeps_finite_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["run", "quickstart", "--out", str(run), *QUICK, "--set", "train.optimizer=sgd", "--set", "train.lr=30"])
    assert rc == 1
    err = capsys.readouterr().err
    assert re.search(r"training diverged: (non-finite|loss) .*at step \d+.*; last healthy loss", err), err
    assert not (run / "results.csv").exists()
    if (run / "checkpoint.pt").exists():
        ckpt = load_checkpoint(run / "checkpoint.pt")
        assert all(bool(torch.isfinite(v).all()) for v in ckpt["models"][0].values())
