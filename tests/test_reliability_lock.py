"""Issue 18, item 1: one writer per run directory. Two real ``python -m experiments run`` processes on one
``--out``: the second exits 2 naming the first (pid, host, command line) and writes nothing, ``--overwrite``
included; the lock goes with its holder, even a SIGKILLed one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.cli import main
from experiments.runlock import RunDirLocked, lock_run_dir
from icl.runio import LOCK_NAME

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "train.batch_size=16", "--set", "train.eval_batch=16", "--set", "test_prompts=100", "--quiet"]


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "experiments", "run", "quickstart", *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_lock(run: Path, proc: subprocess.Popen, timeout: float = 120.0) -> dict:
    """The lock record once ``proc`` holds the directory and has written its config."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        try:
            record = json.loads((run / LOCK_NAME).read_text())
            if record.get("pid") == proc.pid and (run / "config.json").exists():
                return record
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError("the first run never took the lock")


def test_second_writer_exits_2_naming_holder(tmp_path):
    """A second run (another seed), then a second run with --overwrite, against a running first one; then the
    first is SIGKILLed and its lock goes with it."""
    run = tmp_path / "run"
    first = start(tmp_path, "--out", str(run), "--seed", "0", "--set", "train.steps=1000000", *TINY)
    try:
        record = wait_for_lock(run, first)
        assert record["argv"][:2] == ["run", "quickstart"]
        config_before = (run / "config.json").read_bytes()
        for second in (["--seed", "1"], ["--seed", "1", "--overwrite"]):
            other = start(tmp_path, "--out", str(run), "--set", "train.steps=10", *TINY, *second)
            out, err = other.communicate(timeout=300)
            assert other.returncode == 2, err
            assert f"is in use by another run (pid {first.pid} on host {socket.gethostname()}" in err
            assert "--seed 0" in err  # the holder's command line
            assert first.poll() is None  # the holder runs on, its files untouched
            assert (run / "config.json").read_bytes() == config_before
        assert json.loads(config_before)["config"]["seed"] == 0
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate()
    assert (run / LOCK_NAME).exists()  # left behind by the killed holder, but no longer locked
    with lock_run_dir(run, ["test"]) as lock:
        assert lock.held
    assert not (run / LOCK_NAME).exists()  # a clean release removes the file


def test_lock_in_process_and_release(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with lock_run_dir(run, ["holder", "argv"]):
        with pytest.raises(RunDirLocked, match=f"pid {os.getpid()} on host .*: holder argv"):
            lock_run_dir(run)
        # the CLI refuses too, before writing anything (report included)
        assert main(["run", "quickstart", "--out", str(run), "--set", "train.steps=1", *TINY]) == 2
        assert "is in use by another run" in capsys.readouterr().err
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]
    lock = lock_run_dir(run)
    lock.release()
    lock.release()  # idempotent


def test_run_releases_its_lock_and_writes_readable_files(tmp_path, capsys):
    """Issue 18, item 16: outputs follow the umask (0644 under 022), not mkstemp's 0600."""
    run = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert main(["run", "quickstart", "--out", str(run), "--set", "train.steps=4", *TINY]) == 0
    finally:
        os.umask(old)
    assert not (run / LOCK_NAME).exists()
    for name in ("config.json", "results.csv", "summary.json", "checkpoint.pt"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name
    torch.load(run / "checkpoint.pt", weights_only=True)
