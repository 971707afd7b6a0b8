"""Sweeps: the grid validated before anything runs, local runs in parallel that survive a kill and continue
without redoing finished runs, failures reported without stopping the others, the Slurm path against submitit's
own Slurm test double, and ``collect`` giving one table with the varied keys."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.cli import main
from experiments.collect import collect, summarise, varied_keys
from experiments.common import git_state
from experiments.registry import get_experiment
from experiments.sweep import parse_grid, parse_seeds, parse_slurm, plan
from icl.config import ConfigError

TINY = ["--set", "train.batch_size=64", "--set", "train.eval_batch=64", "--set", "train.eval_every=20",
        "--set", "test_prompts=500", "--set", "checkpoint_every=10"]  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _states(sweep: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((sweep / "status").glob("*.json"))}


# -- the grid -------------------------------------------------------------------------------------------------
def test_parse_seeds():
    assert parse_seeds("0-4") == (0, 1, 2, 3, 4)
    assert parse_seeds("3") == (3,)
    assert parse_seeds("0-1,7") == (0, 1, 7)
    for bad, msg in [("4-0", "empty"), ("0,x", "'x' is not a seed"), ("0-2,1", "seed 1 is given twice")]:
        with pytest.raises(ConfigError, match=msg):
            parse_seeds(bad)


def test_plan_names_argv_and_product():
    exp = get_experiment("quickstart")
    grid = parse_grid(exp, ["train.lr=0.01,0.02", "prompt.eigenvalues=1,1,1,1,1;4,1,1,1,1"], ["train.steps=5"])
    assert grid == {"train.lr": ["0.01", "0.02"], "prompt.eigenvalues": ["1,1,1,1,1", "4,1,1,1,1"]}
    runs = plan(exp, grid, seeds=(0, 3), overrides=["train.steps=5"])
    assert len(runs) == 8 and len({r.name for r in runs}) == 8
    assert runs[1].name == "001_lr=0.01_eigenvalues=1-1-1-1-1_seed=3"
    assert runs[1].argv == ["run", "quickstart", "--device", "cpu", "--set", "train.steps=5", "--set", "train.lr=0.01",
                            "--set", "prompt.eigenvalues=1,1,1,1,1", "--seed", "3"]  # fmt: skip
    assert {(r.values["train.lr"], r.values["prompt.eigenvalues"], r.seed) for r in runs} == {
        (lr, ev, s) for lr in ("0.01", "0.02") for ev in ("1,1,1,1,1", "4,1,1,1,1") for s in (0, 3)}
    # a multi-seed study gets the seeds in every run instead of one run per seed
    pgd = get_experiment("pgd_depth")
    (only,) = plan(pgd, parse_grid(pgd, ["train.lr=0.01"], []), seeds=(0, 1, 2), profile="quick")
    assert only.argv[-2:] == ["--seeds", "0,1,2"] and only.seed is None and "--profile" in only.argv


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "train.lr=0.01,abc"], "grid point train.lr=abc: train.lr = 'abc' is not a valid float"),
        (["--grid", "prompt.d=2,0"], "grid point prompt.d=0: prompt.d = 0 is out of range"),
        (["--grid", "train.lrr=1,2"], "unknown config key 'train.lrr'. Did you mean: train.lr"),
        (["--grid", "train.lr=0.1,0.1"], "repeats a value"),
        (["--grid", "train.lr=0.1", "--grid", "train.lr=0.2"], "train.lr is given twice"),
        (["--grid", "train.lr=0.1", "--set", "train.lr=0.2"], "train.lr is both in --grid and in --set"),
        (["--grid", "seed=1,2"], "give the seeds with --seeds"),
        (["--grid", "prompt.eigenvalues=1,2"], "separate them with ';'"),
        (["--grid", "train.lr"], "must look like key=value1,value2"),
        (["--seeds", "2-1"], "empty"),
        (["--jobs", "0"], "--jobs = 0 is out of range"),
        (["--backend", "k8s"], "--backend = 'k8s' is not one of: local, slurm"),
        (["--slurm", "partition=gpu"], "apply to --backend slurm"),
        (["--backend", "slurm", "--slurm", "partitio=gpu"], "unknown parameter(s) partitio"),
    ],
)
def test_bad_sweeps_exit_2_before_anything_runs(args, message, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "quickstart", "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_slurm_parameters():
    assert parse_slurm(["partition=gpu", "time=90", "mem_gb=8", "setup=module load cuda; source env"], None) == {
        "partition": "gpu", "time": 90, "mem": "8GB", "setup": ["module load cuda", "source env"]}


def test_a_directory_holding_another_sweep_is_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "quickstart", "--grid", "train.lr=0.01", "--out", str(out), "--dry-run"]) == 0
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["sweep", "quickstart", "--grid", "train.lr=0.01", "--out", str(out)]) == 2
    assert "is not empty and holds no sweep.json" in capsys.readouterr().err


# -- running: local processes, a kill in the middle, a re-run that continues -------------------------------------
@pytest.mark.slow
def test_local_sweep_killed_halfway_resumes_without_redoing_finished_runs(tmp_path):
    """A 2×2×2-seed grid, 2 local jobs at once: stopped (SIGTERM) once two runs are done and a third has
    checkpointed; the same command again finishes it, leaving the finished runs untouched and resuming the
    interrupted ones from their checkpoints. Then ``collect`` tabulates it with the right varied keys."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "experiments", "sweep", "quickstart", "--grid", "train.lr=0.01,0.02",
           "--grid", "model.layers=1,2", "--seeds", "0-1", "--jobs", "2", "--out", str(sweep),
           "--set", "train.steps=800", *TINY]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        states = _states(sweep) if sweep.exists() else {}
        done = [n for n, s in states.items() if s["state"] == "done"]
        mid = [n for n, s in states.items() if s["state"] == "running" and (sweep / n / "checkpoint.pt").exists()]
        if len(done) >= 2 and mid:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be interrupted:\n" + proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)  # as `kill` would (a Ctrl-C's SIGINT takes the same path)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 143, out
    assert "re-run the same command to continue" in out
    before = _states(sweep)
    finished = {n: s for n, s in before.items() if s["state"] == "done"}
    interrupted = [n for n, s in before.items()
                   if s["state"] == "interrupted" and (sweep / n / "checkpoint.pt").exists()]  # fmt: skip
    assert len(finished) >= 2 and interrupted, before
    assert len(finished) < 8
    mtimes = {n: (sweep / n / "results.csv").stat().st_mtime_ns for n in finished}

    again = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{len(finished)} done, 0 still queued or running, {8 - len(finished)} to run" in again.stdout
    after = _states(sweep)
    assert len(after) == 8 and all(s["state"] == "done" for s in after.values())
    for n, s in finished.items():  # nothing that had finished was redone
        assert after[n] == s
        assert (sweep / n / "results.csv").stat().st_mtime_ns == mtimes[n]
    for n in interrupted:  # resumed from its checkpoint, not restarted
        assert after[n]["mode"] == "resume"
        log = Path(after[n]["stdout"]).read_text()
        assert "--resume" in log and "resumed checkpoint.pt at step" in log
        step = int(log.split("resumed checkpoint.pt at step ")[1].split()[0])
        assert 0 < step < 800
    manifest = json.loads((sweep / "sweep.json").read_text())
    assert manifest["states"] == {"done": 8} and manifest["grid"] == {"train.lr": ["0.01", "0.02"],
                                                                      "model.layers": ["1", "2"]}  # fmt: skip

    # collect: one table, the varied keys as columns with each run's values, the git commit of the code
    assert main(["collect", str(sweep)]) == 0
    with open(sweep / "collected.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:5] == ["run", "train.lr", "model.layers", "git_commit", "git_dirty"]
    seen = set()
    for row in table:
        cfg = json.loads((sweep / row["run"] / "config.json").read_text())["config"]
        assert float(row["train.lr"]) == cfg["train"]["lr"] and int(row["model.layers"]) == cfg["model"]["layers"]
        assert int(row["seed"]) == cfg["seed"]
        assert row["git_commit"] == (git_state(ROOT)["commit"] or "")
        seen.add((row["train.lr"], row["model.layers"], row["seed"]))
    assert seen == {(lr, L, s) for lr in ("0.01", "0.02") for L in ("1", "2") for s in ("0", "1")}
    assert main(["report", str(sweep)]) == 0
    assert (sweep / "figures" / "test_loss_vs_train_lr.png").is_file()
    assert (sweep / "figures" / "test_loss_vs_model_layers.png").is_file()


@pytest.mark.slow
def test_a_failed_run_is_reported_and_does_not_stop_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "experiments", "sweep", "quickstart", "--grid", "train.lr=0.01,1000", "--jobs",
           "2", "--out", str(sweep), "--set", "train.steps=40", "--set", "train.optimizer=sgd", *TINY]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 1, res.stdout + res.stderr
    states = _states(sweep)
    assert states["000_lr=0.01"]["state"] == "done"
    assert states["001_lr=1000"]["state"] == "diverged" and states["001_lr=1000"]["rc"] == 1
    assert "run 001_lr=1000 diverged (exit status 1)" in res.stdout
    assert "training diverged" in res.stdout  # the tail of its log
    assert "not done: 001_lr=1000" in res.stderr


# -- Slurm, against submitit's own test double ----------------------------------------------------------------------
def test_slurm_sweep_submits_one_array_and_continues(tmp_path, capsys):
    pytest.importorskip("submitit.slurm.test_slurm")
    from submitit.core import submission
    from submitit.slurm.test_slurm import mocked_slurm

    sweep = tmp_path / "sweep"
    args = ["sweep", "quickstart", "--grid", "train.lr=0.01,0.02", "--seeds", "0", "--backend", "slurm",
            "--jobs", "2", "--out", str(sweep), "--slurm", "partition=cpu", "--slurm", "time=30",
            "--slurm", "mem_gb=2", "--slurm", "cpus_per_task=1", "--set", "train.steps=20", *TINY]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        with mocked_slurm() as mock:
            assert main(args) == 0
            assert "submitted 2 runs to Slurm (job 12)" in capsys.readouterr().out
            (sbatch,) = (sweep / "logs").glob("*_submission.sh")
            text = sbatch.read_text()
            for line in ("#SBATCH --partition=cpu", "#SBATCH --time=30", "#SBATCH --mem=2GB",
                         "#SBATCH --cpus-per-task=1", "#SBATCH --array=0-1%2", "#SBATCH --job-name=sweep-quickstart"):
                assert line in text  # fmt: skip
            assert "export OMP_NUM_THREADS=1" in text
            jobs = json.loads((sweep / "sweep.json").read_text())["jobs"]
            assert [j["job_id"] for j in jobs.values()] == ["12_0", "12_1"]

            # while the array is queued, a re-run leaves it alone
            assert main(args) == 0
            assert "0 done, 2 still queued or running, 0 to run" in capsys.readouterr().out

            # the nodes run the jobs (here: in this process, as submitit's own tests do)
            for j in jobs.values():
                with mock.job_context(j["job_id"]):
                    submission.process_job(sweep / "logs")
            states = _states(sweep)
            assert [s["state"] for s in states.values()] == ["done", "done"]
            assert [s["job_id"] for s in states.values()] == ["12_0", "12_1"]
            assert (sweep / "000_lr=0.01_seed=0" / "results.csv").is_file()

            assert main(args) == 0
            out = capsys.readouterr().out
            assert "2 done, 0 still queued or running, 0 to run" in out and "sweep quickstart: 2 done" in out
    finally:
        torch.set_num_threads(threads)


# -- collect --------------------------------------------------------------------------------------------------------
def _fake_run(path: Path, config: dict, rows: list[tuple]) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"experiment": "toy", "config": config,
                                                  "git": {"commit": "abc123", "dirty": False}}))  # fmt: skip
    lines = ["experiment,method,depth,seed,metric,value"] + [f"toy,{m},1,{s},test_loss,{v}" for m, s, v in rows]
    (path / "results.csv").write_text("\n".join(lines) + "\n")


def test_collect_finds_varied_keys_and_summarises_over_seeds(tmp_path, capsys):
    base = {"seeds": [0, 1, 2], "train": {"lr": 0.01, "steps": 100}, "prompt": {"eigenvalues": [1, 1]}}
    _fake_run(tmp_path / "a" / "r1", base, [("lsa", 0, 1.0), ("lsa", 1, 2.0), ("lsa", 2, 4.0)])
    _fake_run(tmp_path / "b" / "r2", {**base, "seeds": [5], "train": {"lr": 0.02, "steps": 100},
                                      "prompt": {"eigenvalues": [4, 1]}}, [("lsa", 5, 3.0)])  # fmt: skip
    table, keys = collect([tmp_path / "a", tmp_path / "b"])
    assert keys == ["train.lr", "prompt.eigenvalues"]  # seeds differ too, but they are the seed column
    assert [(r["run"], r["train.lr"], r["prompt.eigenvalues"], r["seed"]) for r in table] == [
        ("a/r1", 0.01, "1,1", 0), ("a/r1", 0.01, "1,1", 1), ("a/r1", 0.01, "1,1", 2),
        ("b/r2", 0.02, "4,1", 5)]  # fmt: skip
    (one, two) = summarise(table, keys)
    from scipy import stats

    half = stats.t.ppf(0.975, 2) * stats.tstd([1.0, 2.0, 4.0]) / 3**0.5
    assert one["n_seeds"] == 3 and one["mean"] == pytest.approx(7 / 3)
    assert (one["ci95_low"], one["ci95_high"]) == pytest.approx((7 / 3 - half, 7 / 3 + half))
    assert two["n_seeds"] == 1 and two["mean"] == two["ci95_low"] == two["ci95_high"] == 3.0
    assert varied_keys([{"a": 1, "b": 2}, {"a": 1, "b": 3}], declared=["c"]) == ["c", "b"]

    out = tmp_path / "t.csv"
    assert main(["collect", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0] == ("run,train.lr,prompt.eigenvalues,git_commit,git_dirty,experiment,"
                                               "method,depth,seed,metric,value")  # fmt: skip
    assert (tmp_path / "t_summary.csv").read_text().splitlines()[0] == (
        "experiment,method,depth,train.lr,prompt.eigenvalues,metric,n_seeds,mean,ci95_low,ci95_high")
    assert "2 runs, 4 rows; varied: train.lr, prompt.eigenvalues" in capsys.readouterr().out
    assert main(["collect", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    # runs of a sweep that are not done are named: their rows may be partial
    (tmp_path / "a" / "sweep.json").write_text("{}")
    (tmp_path / "a" / "status").mkdir()
    (tmp_path / "a" / "status" / "r1.json").write_text('{"state": "interrupted"}')
    assert main(["collect", str(tmp_path / "a")]) == 0
    assert "warning: 1 sweep run(s) not done, their rows may be partial: r1" in capsys.readouterr().err
    assert main(["collect", str(tmp_path / "nothing")]) == 2


def test_git_state_records_commit_and_dirty(tmp_path):
    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f.py").write_text("x = 1\n")
    git("add", "f.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "new.txt").write_text("untracked files do not count")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "f.py").write_text("x = 2\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": True}
    assert git_state(tmp_path.parent / "not-a-repo-here") == {"commit": None, "dirty": None}


def test_only_live_submitit_processes_count_as_running_jobs():
    from experiments.sweep import _is_job_process

    child = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)", "submitit"],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout.readline() == "up\n"  # it has exec'd: before that its cmdline is still pytest's
        assert _is_job_process(child.pid)
        assert not _is_job_process(os.getpid()) or "submitit" in " ".join(sys.argv)  # pytest itself is no job
    finally:
        child.kill()
        child.wait()
    assert not _is_job_process(child.pid) and not _is_job_process(None) and not _is_job_process("x")
