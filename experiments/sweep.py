"""``python -m experiments sweep``: a grid of ordinary runs, executed by submitit on this machine or on Slurm.

    python -m experiments sweep quickstart --grid train.lr=0.005,0.01 --grid model.layers=1,2 --seeds 0-1 \\
        --set train.steps=500 --out runs/sweeps/lr-depth --jobs 2
    python -m experiments sweep pgd_depth --grid train.lr=0.01,0.02 --seeds 0-4 --profile standard \\
        --backend slurm --slurm partition=cpu --slurm time=120 --slurm cpus_per_task=4 --slurm mem_gb=8

The grid is the Cartesian product of the ``--grid`` values. Values are separated by commas, or by semicolons
for a key whose values are themselves lists (``--grid "prompt.eigenvalues=1,1,1;4,1,0.25"``). ``--seeds``
(``0-4`` or ``0,2,7``) is one more axis for a single-seed study (one run per seed); a multi-seed study gets the
seeds in every run (its seeds are trained together). Every combination is resolved and validated before
anything runs, exactly as ``run`` would; a bad one exits with status 2 naming the combination.

Each combination is an ordinary run directory under the sweep directory (``000_lr=0.005_layers=1_seed=0``...)
with its own config.json, results.csv and checkpoints, made by ``python -m experiments run`` itself inside the
job. The sweep directory holds ``sweep.json`` (the manifest: grid, runs, their command lines, the jobs that ran
them; written atomically), ``status/<run>.json`` (each run's state, written by its job) and ``logs/`` (submitit's
job logs).

Execution is submitit's: ``--backend local`` starts each run as a local process (``submitit.LocalExecutor``),
at most ``--jobs`` at once, with the machine's cores divided between them (``torch.set_num_threads`` and
``OMP_NUM_THREADS`` per job; ``--threads`` overrides); ``--backend slurm`` submits one job array with the same
code (``submitit.SlurmExecutor``; ``--jobs`` is the array's parallelism), with any of submitit's Slurm
parameters from ``--slurm KEY=VALUE`` or a JSON file ``--slurm-config``. The Slurm backend returns once the
array is queued (``--wait`` to follow it); the sweep directory must be on a filesystem the nodes share.

Running the same command again continues the sweep: finished runs are skipped, interrupted ones are resumed
from their checkpoints (``run --resume``), runs still queued on Slurm (or still running here, started by a sweep
process that was killed) are left alone, and failed ones are tried again. A failed run is reported with the tail
of its log and does not stop the others. Stopping the sweep (Ctrl-C, SIGTERM) stops its local runs the way
``run`` stops on SIGINT: each checkpoints and exits (Slurm jobs are cancelled with ``scancel``).

Exit status: 0 every run done (or, for Slurm without ``--wait``, submitted); 1 some run failed or diverged;
2 bad arguments or a sweep directory holding another sweep; 130 stopped by SIGINT, 143 by SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import signal
import socket
import sys
import time
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import submitit

from experiments.cli import resolve_config
from experiments.common import git_state
from experiments.registry import get_experiment
from icl.config import ConfigError, coerce
from icl.progress import Progress
from icl.runio import has_checkpoint, write_json

MANIFEST = "sweep.json"
FORMAT = "icl-optimizers-sweep/1"
BACKENDS = ("local", "slurm")
#: Slurm states in which a job will still run (a re-run leaves such runs alone)
SLURM_QUEUED = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")
LOCAL_TIMEOUT_MIN = 60 * 24 * 7  # submitit's local default (2 min) would kill any real run
#: the exit status of ``run`` -> the state of the run
STATES = {0: "done", 1: "diverged", 2: "failed"}


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid.

    Attributes:
        name: its directory under the sweep directory.
        values: grid key -> value, as given on the command line.
        seed: its seed, for a single-seed study with ``--seeds`` (else None).
        argv: the ``python -m experiments`` arguments that make it, without ``--out``/``--resume``.
    """

    name: str
    values: dict[str, str]
    seed: int | None
    argv: list[str] = field(default_factory=list)


# -- the grid ------------------------------------------------------------------------------------------------
def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0-4"``, ``"0,2,7"`` or ``"0-2,9"`` -> the seeds, in order, without repeats."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ConfigError(f"--seeds: range {part!r} is empty (write low-high)")
            new = range(lo, hi + 1)
        elif part.isdigit():
            new = [int(part)]
        else:
            raise ConfigError(f"--seeds = {text!r}: {part!r} is not a seed (use e.g. 0-4 or 0,2,7)")
        for s in new:
            if s in seeds:
                raise ConfigError(f"--seeds = {text!r}: seed {s} is given twice")
            seeds.append(s)
    return tuple(seeds)


def parse_grid(exp: Any, items: Sequence[str], overrides: Sequence[str]) -> dict[str, list[str]]:
    """``["train.lr=0.01,0.02", ...]`` -> ``{"train.lr": ["0.01", "0.02"], ...}``, keys checked against the
    study's config (each value is checked later, with the whole combination)."""
    names = exp.config_cls.field_names()
    hints = _leaf_types(exp.config_cls)
    set_keys = {o.split("=", 1)[0].strip() for o in overrides}
    grid: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} must look like key=value1,value2")
        key, text = (s.strip() for s in item.split("=", 1))
        if key in ("seed", "seeds"):
            raise ConfigError(f"--grid {key}: give the seeds with --seeds (e.g. --seeds 0-4)")
        if key == "profile":
            raise ConfigError("--grid profile: run one sweep per profile (--profile)")
        if key not in names:
            exp.config_cls().with_overrides([f"{key}=0"])  # raises the usual unknown-key error with suggestions
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice")
        if key in set_keys:
            raise ConfigError(f"{key} is both in --grid and in --set")
        tuple_valued = getattr(hints.get(key), "__origin__", None) is tuple
        if tuple_valued and ";" not in text:
            raise ConfigError(f"--grid {key}: its values are lists; separate them with ';' (e.g. \"1,1;4,1\")")
        values = [v.strip() for v in text.split(";" if tuple_valued or ";" in text else ",")]
        if any(v == "" for v in values):
            raise ConfigError(f"--grid {item!r} has an empty value")
        if len(set(values)) < len(values):
            raise ConfigError(f"--grid {item!r} repeats a value")
        grid[key] = values
    return grid


def _leaf_types(cls: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf name -> its type (Optional stripped), to tell list-valued keys."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(_leaf_types(tp, f"{prefix}{f.name}."))
        else:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            out[f"{prefix}{f.name}"] = args[0] if typing.get_origin(tp) is not tuple and len(args) == 1 else tp
    return out


def _label(key: str, keys: Sequence[str]) -> str:
    """The short name of a grid key in run names: its last part, unless another key shares it."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", value).strip("-") or "_"


def plan(
    exp: Any,
    grid: dict[str, list[str]],
    *,
    seeds: tuple[int, ...] | None = None,
    overrides: Sequence[str] = (),
    profile: str | None = None,
    device: str = "cpu",
) -> list[SweepRun]:
    """Every run of the sweep, each one's config resolved and validated as ``run`` would (nothing runs).

    Raises:
        ConfigError: a combination that ``run`` would refuse, named in the message.
    """
    names = set(exp.config_cls.field_names())
    single_seed = "seed" in names
    if seeds is not None and not single_seed and "seeds" not in names:
        raise ConfigError(f"--seeds: experiment {exp.name!r} has no seed")
    seed_axis: list[int | None] = list(seeds) if (seeds is not None and single_seed) else [None]
    keys = list(grid)
    runs = []
    for i, (combo, seed) in enumerate(itertools.product(itertools.product(*(grid[k] for k in keys)), seed_axis)):
        values = dict(zip(keys, combo))
        sets = [*overrides, *(f"{k}={v}" for k, v in values.items())]
        seeds_arg = ",".join(map(str, seeds)) if (seeds is not None and not single_seed) else None
        where = ", ".join([f"{k}={v}" for k, v in values.items()] + ([f"seed={seed}"] if seed is not None else []))
        try:
            resolve_config(exp, sets, seed=seed, seeds=seeds_arg, profile=profile)
        except ConfigError as e:
            raise ConfigError(f"grid point {where or '(the only one)'}: {e}") from None
        parts = [f"{_label(k, keys)}={_slug(v)}" for k, v in values.items()]
        if seed is not None:
            parts.append(f"seed={seed}")
        name = "_".join([f"{i:03d}", *parts])
        argv = ["run", exp.name, "--device", device]
        if profile is not None:
            argv += ["--profile", profile]
        for s in sets:
            argv += ["--set", s]
        if seed is not None:
            argv += ["--seed", str(seed)]
        if seeds_arg is not None:
            argv += ["--seeds", seeds_arg]
        runs.append(SweepRun(name, values, seed, argv))
    return runs


# -- the job: one run, inside a submitit job -------------------------------------------------------------------
def run_state(status_path: Path) -> dict[str, Any]:
    """A run's status file (``{"state": "pending"}`` when there is none or it is unreadable)."""
    try:
        return json.loads(status_path.read_text())
    except (OSError, ValueError):
        return {"state": "pending"}


class RunJob(submitit.helpers.Checkpointable):
    """One run of a sweep, as a submitit job: ``python -m experiments run ...`` in this process.

    It continues what is in the run directory: ``--resume`` when a checkpoint is there, ``--overwrite`` when an
    earlier attempt left files but no checkpoint, a fresh run otherwise. Being ``Checkpointable``, a Slurm job
    that reaches its time limit or is preempted is requeued by submitit and continues from its checkpoint.
    It writes ``status/<run>.json`` (state, exit status, times, log paths) when it starts and ends.
    """

    def __call__(self, run_dir: str, argv: list[str], status_path: str, threads: int) -> dict[str, Any]:
        import torch

        from experiments.cli import main

        env = submitit.JobEnvironment()
        if env.cluster in ("local", "debug"):
            # the sweep stops a local run with one SIGINT of its own (a terminal's Ctrl-C reaches only the sweep:
            # this process leaves the terminal's process group, the job controllers ignore SIGINT)
            os.setpgrp()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever was inherited: SIGINT stops the run
        torch.set_num_threads(threads)
        out = Path(run_dir)
        occupied = out.is_dir() and any(out.iterdir())
        mode = "resume" if has_checkpoint(out) else ("overwrite" if occupied else "fresh")
        flags = {"resume": ["--resume"], "overwrite": ["--overwrite"], "fresh": []}[mode]
        status = {
            "state": "running", "mode": mode, "started": time.time(), "host": socket.gethostname(),
            "pid": os.getpid(), "job_id": env.job_id, "threads": threads,
            "stdout": str(env.paths.stdout), "stderr": str(env.paths.stderr),
        }  # fmt: skip
        write_json(status_path, status)
        command = [*argv, "--out", str(out), *flags]
        print(f"sweep run {out.name} ({mode}): python -m experiments {' '.join(command)}", flush=True)
        try:
            rc = main(command)
        except KeyboardInterrupt:
            rc = 128 + signal.SIGINT
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
        except BaseException as e:
            write_json(status_path, {**status, "state": "failed", "rc": None, "finished": time.time(),
                                     "error": f"{type(e).__name__}: {e}"})  # fmt: skip
            raise
        state = STATES.get(rc, "interrupted" if rc > 128 else "failed")
        status = {**status, "state": state, "rc": rc, "finished": time.time()}
        write_json(status_path, status)
        return status


# -- the sweep directory ----------------------------------------------------------------------------------------
def write_manifest(sweep_dir: Path, manifest: dict[str, Any]) -> None:
    write_json(sweep_dir / MANIFEST, {**manifest, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})


def open_sweep(sweep_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest to use: a new one, or the one in ``sweep_dir`` when it describes the same runs.

    Raises:
        ConfigError: the directory holds another sweep, or something that is not a sweep.
    """
    path = sweep_dir / MANIFEST
    if not path.exists():
        if sweep_dir.is_dir() and any(sweep_dir.iterdir()):
            raise ConfigError(f"{sweep_dir} is not empty and holds no {MANIFEST}; give an empty or new --out")
        return manifest
    try:
        old = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path} is unreadable ({e})") from None
    if old.get("format") != FORMAT:
        raise ConfigError(f"{path} has format {old.get('format')!r}; this version reads {FORMAT!r}")
    mine = [(r["name"], r["argv"]) for r in manifest["runs"]]
    theirs = [(r["name"], r["argv"]) for r in old.get("runs", [])]
    if mine != theirs:
        differ = [k for k in ("experiment", "grid", "seeds", "overrides", "profile", "device")
                  if manifest.get(k) != old.get(k)] or ["runs"]  # fmt: skip
        raise ConfigError(
            f"{sweep_dir} holds another sweep (differs in: {', '.join(differ)}); re-run it with the same grid, "
            "seeds and settings to continue it, or give another --out"
        )
    return {**old, "backend": manifest["backend"], "jobs_limit": manifest["jobs_limit"]}


def log_tail(path: str | None, lines: int = 15) -> str:
    if not path or not Path(path).is_file():
        return f"    (no log at {path})"
    text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    return "\n".join("    " + t for t in text)


# -- executors ----------------------------------------------------------------------------------------------------
def parse_slurm(items: Sequence[str], config: Path | None) -> dict[str, Any]:
    """Slurm parameters from ``--slurm-config`` (a JSON object) then ``--slurm KEY=VALUE``, checked against the
    parameters submitit's SlurmExecutor takes (``partition``, ``time`` in minutes, ``mem``, ``cpus_per_task``,
    ``gpus_per_node``, ``account``, ``qos``, ``constraint``, ``setup``...). ``mem_gb`` is accepted for ``mem``."""
    params: dict[str, Any] = {}
    if config is not None:
        try:
            loaded = json.loads(Path(config).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"--slurm-config {config}: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--slurm-config {config} must hold a JSON object")
        params.update(loaded)
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--slurm {item!r} must look like key=value")
        key, value = (s.strip() for s in item.split("=", 1))
        if key == "setup":
            params[key] = [s.strip() for s in value.split(";") if s.strip()]
            continue
        for tp in (int, float):
            try:
                params[key] = coerce(key, value, tp)
                break
            except ConfigError:
                continue
        else:
            params[key] = value
    if "mem_gb" in params:
        params["mem"] = f"{params.pop('mem_gb')}GB"
    valid = submitit.SlurmExecutor._valid_parameters()
    unknown = sorted(set(params) - valid - {"array_parallelism"})
    if unknown:
        raise ConfigError(f"--slurm: unknown parameter(s) {', '.join(unknown)}; submitit's Slurm parameters are: "
                          f"{', '.join(sorted(valid))}")  # fmt: skip
    return params


def make_executor(backend: str, folder: Path, *, jobs: int, threads: int, slurm: dict[str, Any], name: str) -> Any:
    if backend == "local":
        ex = submitit.LocalExecutor(folder=folder)
        env = [f"export {v}={threads}" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")]
        # the job controllers ignore SIGINT: a terminal's Ctrl-C must not make them kill their run a second later
        ex.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, setup=[*env, "trap '' INT"])
        return ex
    ex = submitit.SlurmExecutor(folder=folder)
    params = {"job_name": name, "cpus_per_task": threads, "array_parallelism": jobs, **slurm}
    params.setdefault("setup", [])
    params["setup"] = [*params["setup"], f"export OMP_NUM_THREADS={params['cpus_per_task']}"]
    ex.update_parameters(**params)
    return ex


@dataclass
class Sweep:
    """A sweep directory and its runs, and the loop that executes them."""

    exp_name: str
    sweep_dir: Path
    manifest: dict[str, Any]
    runs: list[SweepRun]

    def run_dir(self, run: SweepRun) -> Path:
        return self.sweep_dir / run.name

    def status_path(self, run: SweepRun) -> Path:
        return self.sweep_dir / "status" / f"{run.name}.json"

    def state(self, run: SweepRun) -> dict[str, Any]:
        return run_state(self.status_path(run))

    def save(self) -> None:
        write_manifest(self.sweep_dir, self.manifest)

    def still_running(self, run: SweepRun) -> bool:
        """Whether the run's job is still queued or running: a Slurm job in a queued state, or a local process
        (of an earlier sweep process that was killed) that is still alive."""
        status = self.state(run)
        if status.get("state") not in ("pending", "submitted", "running"):
            return False
        if status.get("state") == "running" and status.get("host") == socket.gethostname() and "pid" in status:
            return _is_job_process(status["pid"])
        job = self.manifest.get("jobs", {}).get(run.name)
        if not job or job.get("backend") != "slurm":
            return False
        try:
            state = submitit.SlurmJob(self.sweep_dir / "logs", job["job_id"]).state
        except Exception:  # no sacct here, or the job is unknown: treat as not queued
            return False
        return state.split(" ")[0] in SLURM_QUEUED

    def submit(self, executor: Any, backend: str, runs: Sequence[SweepRun], threads: int) -> list[Any]:
        for run in runs:  # a fresh status (no pid of an earlier attempt's process), the last one kept inside it
            previous = self.state(run)
            write_json(self.status_path(run), {"state": "submitted", "previous": previous.get("state")})
        args = [(str(self.run_dir(r)), r.argv, str(self.status_path(r)), threads) for r in runs]
        if backend == "slurm":
            with executor.batch():
                jobs = [executor.submit(RunJob(), *a) for a in args]
        else:
            jobs = [executor.submit(RunJob(), *a) for a in args]
        for run, job in zip(runs, jobs):
            self.manifest.setdefault("jobs", {})[run.name] = {
                "backend": backend, "job_id": str(job.job_id),
                "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
            }  # fmt: skip
        self.save()
        return jobs

    def outcome(self, run: SweepRun, job: Any) -> dict[str, Any]:
        """The run's status once its job ended (a job that died without writing one is ``failed``)."""
        state = self.state(run)
        if state.get("state") in ("pending", "submitted", "running"):
            try:
                job.result()
            except Exception as e:
                state = {**state, "state": "failed", "error": str(e).strip().splitlines()[-1] if str(e) else ""}
            else:
                state = {**state, "state": "failed", "error": "the job ended without a final status"}
            state.setdefault("stderr", str(job.paths.stderr))
        return state

    def wait(self, pending: list[SweepRun], executor: Any, backend: str, jobs: int, threads: int,
             progress: Progress) -> dict[str, dict[str, Any]]:  # fmt: skip
        """Run ``pending``: at most ``jobs`` at once locally (Slurm: the whole array, its parallelism capped),
        until all ended; returns run name -> final status."""
        results: dict[str, dict[str, Any]] = {}
        queue = list(pending)
        active: dict[str, tuple[SweepRun, Any]] = {}
        if backend == "slurm":
            active = {r.name: (r, j) for r, j in zip(queue, self.submit(executor, backend, queue, threads))}
            queue = []
        try:
            while queue or active:
                while queue and len(active) < jobs:
                    run = queue.pop(0)
                    (job,) = self.submit(executor, backend, [run], threads)
                    active[run.name] = (run, job)
                for name, (run, job) in list(active.items()):
                    if job.done():
                        del active[name]
                        results[name] = self.report(run, self.outcome(run, job), progress)
                time.sleep(0.2)
        except KeyboardInterrupt:
            print(f"\nsweep: stopping {len(active)} running run(s); each checkpoints and exits", flush=True)
            self.stop([r for r, _ in active.values()], [j for _, j in active.values()], backend)
            for name, (run, _) in active.items():
                results[name] = self.state(run)
                if results[name].get("state") in ("pending", "submitted", "running"):  # stopped before it said so
                    results[name] = {**results[name], "state": "interrupted"}
                    write_json(self.status_path(run), results[name])
            raise
        return results

    def stop(self, runs: Sequence[SweepRun], jobs: Sequence[Any], backend: str, grace: float = 120.0) -> None:
        """Stop running jobs as ``run`` stops on SIGINT (checkpoint, exit): locally one SIGINT to each run's
        process once it has said its pid (a job still starting gets it as soon as it has); on Slurm
        ``scancel``. Jobs still alive after ``grace`` seconds are cancelled through submitit."""
        if backend == "slurm":
            for job in jobs:
                job.cancel(check=False)
            return
        signalled: set[str] = set()
        deadline = time.time() + grace
        while time.time() < deadline and not all(j.done() for j in jobs):
            for run, job in zip(runs, jobs):
                status = self.state(run)
                ours = status.get("job_id") == str(job.job_id) and _is_job_process(status.get("pid"))
                if run.name not in signalled and not job.done() and ours:
                    try:
                        os.kill(int(status["pid"]), signal.SIGINT)
                    except OSError:
                        pass
                    signalled.add(run.name)
            time.sleep(0.1)
        for job in jobs:
            if not job.done():
                job.cancel(check=False)

    def report(self, run: SweepRun, status: dict[str, Any], progress: Progress) -> dict[str, Any]:
        took = (status["finished"] - status["started"]) if "finished" in status and "started" in status else None
        label = status["state"] if status.get("mode") != "resume" else f"{status['state']} (resumed)"
        progress.finished(run.name, took, label)
        if status["state"] != "done":
            log = status.get("stderr")
            print(f"  run {run.name} {status['state']} (exit status {status.get('rc')}); "
                  f"{status.get('error', '')}\n  log {log}:\n{log_tail(log)}", flush=True)  # fmt: skip
        return status


# -- the command -------------------------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    """Register ``sweep`` on the CLI's sub-parsers."""
    p = sub.add_parser("sweep", help="run a grid of runs of a study (locally or on Slurm, through submitit)",
                       description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("name", help="the study's name (see `list`)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a config key and its values (repeat for more axes; ';' separates list values)")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 0-4 or 0,2,7 (one run per seed for single-seed studies)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override shared by every run")
    p.add_argument("--profile", default=None, help="quick, standard or paper (studies only)")
    p.add_argument("--out", type=Path, default=None, help="the sweep directory (default runs/sweeps/NAME-<time>)")
    p.add_argument("--backend", default="local", help="local (processes here) or slurm")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (Slurm: the array's parallelism)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads per run (default: local cores / --jobs; Slurm: cpus_per_task)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (for every run)")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="a submitit Slurm parameter, e.g. partition=gpu, time=120 (minutes), mem_gb=8")
    p.add_argument("--slurm-config", type=Path, default=None, help="a JSON object of Slurm parameters")
    p.add_argument("--wait", action="store_true", help="Slurm: follow the jobs until they end")
    p.add_argument("--dry-run", action="store_true", help="validate and list the runs, run nothing")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    exp = get_experiment(args.name)
    if args.backend not in BACKENDS:
        raise ConfigError(f"--backend = {args.backend!r} is not one of: {', '.join(BACKENDS)}")
    if args.jobs < 1:
        raise ConfigError(f"--jobs = {args.jobs} is out of range: must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads = {args.threads} is out of range: must be >= 1")
    if args.backend == "local" and (args.slurm or args.slurm_config or args.wait):
        raise ConfigError("--slurm, --slurm-config and --wait apply to --backend slurm")
    from experiments.cli import check_device

    if args.backend == "local":
        check_device(args.device)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    grid = parse_grid(exp, args.grid, args.overrides)
    runs = plan(exp, grid, seeds=seeds, overrides=args.overrides, profile=args.profile, device=args.device)
    slurm = parse_slurm(args.slurm, args.slurm_config) if args.backend == "slurm" else {}
    if args.backend == "local":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = args.threads or max(1, cores // args.jobs)
    else:
        threads = args.threads or int(slurm.get("cpus_per_task", 1))
        slurm.setdefault("cpus_per_task", threads)
    sweep_dir = args.out or Path("runs") / "sweeps" / f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    manifest = {
        "format": FORMAT, "experiment": exp.name, "grid": grid, "seeds": list(seeds) if seeds else None,
        "overrides": list(args.overrides), "profile": args.profile, "device": args.device,
        "runs": [asdict(r) for r in runs], "backend": args.backend, "jobs_limit": args.jobs,
        "git": git_state(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }  # fmt: skip
    manifest = open_sweep(sweep_dir, manifest)
    axes = " × ".join([f"{len(v)} {k}" for k, v in grid.items()] + ([f"{len(seeds)} seeds"] if seeds else []))
    print(f"sweep {exp.name}: {len(runs)} runs ({axes or 'one point'}) in {sweep_dir}", flush=True)
    if args.dry_run:
        for r in runs:
            print(f"  {r.name}: python -m experiments {' '.join(r.argv)}")
        return 0
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sweep = Sweep(exp.name, sweep_dir, manifest, runs)
    sweep.save()

    done = [r for r in runs if sweep.state(r).get("state") == "done"]
    queued = [r for r in runs if r not in done and sweep.still_running(r)]
    pending = [r for r in runs if r not in done and r not in queued]
    print(f"  {len(done)} done, {len(queued)} still queued or running, {len(pending)} to run "
          f"({args.backend}, {args.jobs} at once, {threads} thread(s) each)", flush=True)  # fmt: skip
    if not pending:
        return _summary(sweep, args.backend)
    executor = make_executor(args.backend, sweep_dir / "logs", jobs=args.jobs, threads=threads, slurm=slurm,
                             name=f"sweep-{exp.name}")  # fmt: skip
    if args.backend == "slurm" and not args.wait:
        jobs = sweep.submit(executor, "slurm", pending, threads)
        print(f"submitted {len(jobs)} runs to Slurm (job {jobs[0].job_id.split('_')[0]}); logs in {sweep_dir / 'logs'}."
              "\nRe-run this command to see their state and continue the sweep; `python -m experiments collect "
              f"{sweep_dir}` gathers the results.")  # fmt: skip
        return 0
    progress = Progress(len(runs), "run", done=len(done) + len(queued))
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        sweep.wait(pending, executor, args.backend, args.jobs, threads, progress)
    except KeyboardInterrupt as e:
        sweep.save()
        print(f"sweep interrupted; re-run the same command to continue it (finished runs are kept):\n"
              f"  python -m experiments {' '.join(sys.argv[1:]) if sys.argv[1:] else 'sweep ...'}", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return _summary(sweep, args.backend)


def _is_job_process(pid: Any) -> bool:
    """Whether ``pid`` is a live process of a submitit job on this machine (not a reused pid)."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (TypeError, ValueError, OSError):
        return False
    try:
        return b"submitit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # no /proc (macOS): the pid is alive, trust it
        return True


class SweepStopped(KeyboardInterrupt):
    """SIGTERM, turned into the same clean stop as Ctrl-C."""

    signum = signal.SIGTERM


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise SweepStopped


def _summary(sweep: Sweep, backend: str) -> int:
    states = {r.name: sweep.state(r).get("state", "pending") for r in sweep.runs}
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s] = counts.get(s, 0) + 1
    sweep.manifest["states"] = counts
    sweep.save()
    print(f"sweep {sweep.exp_name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"; collect with: python -m experiments collect {sweep.sweep_dir}")  # fmt: skip
    bad = [n for n, s in states.items() if s in ("failed", "diverged")]
    if bad:
        print("not done: " + ", ".join(bad) + " (re-run the sweep to try them again)", file=sys.stderr)
    return 1 if bad else 0
