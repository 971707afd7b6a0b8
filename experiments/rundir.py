"""What the CLI checks in a run directory: the saved config, the flags of a ``--resume``, and whether a run
finished.

* :func:`saved_config` reads ``config.json`` strictly: a missing, empty, truncated, binary or ill-typed file is a
  :class:`~icl.runio.RunDirError` naming it, never a traceback.
* :func:`resume_config` is the config a ``--resume`` continues: the run's own. Every flag that shapes a run
  (``--seed``, ``--seeds``, ``--profile``, ``--set``) may be repeated on the command line, but must agree with
  the run; one that does not is a :class:`~icl.config.ConfigError` naming the flag, the run's value and the
  flag's. Only the fields of :data:`icl.training.checkpoint.RESUME_INDIFFERENT` (how a run is computed, not
  what) and :data:`~icl.training.checkpoint.RESUME_ADJUSTABLE` (the learning rate and the divergence policy, to
  recover from a divergence; the checkpoint records the change) may be changed by ``--set`` on a resume.
* :func:`mark_finished` writes ``finished.json`` when a run ends normally: the time and the SHA-256 and row count
  of ``results.csv``. Every run start deletes it first, so its presence means the results are those of a finished
  run, unchanged since. :func:`completeness` compares a run directory against its config and lists what is
  missing (``report`` refuses such a run unless asked for a partial report).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from icl.config import Config, ConfigError
from icl.runio import CheckpointError, RunDirError, atomic_write_bytes, read_json_file, read_results, write_json
from icl.training.checkpoint import RESUME_ADJUSTABLE, RESUME_INDIFFERENT, export_checkpoint

FINISHED = "finished.json"


def saved_config(run_dir: Path) -> dict[str, Any]:
    """``config.json`` of a run, checked: a JSON object with the experiment's name and a config mapping.

    Raises:
        RunDirError: the file is missing, unreadable, not JSON or not shaped like a run's config.
    """
    path = run_dir / "config.json"
    saved = read_json_file(path, "run config")
    if not isinstance(saved, dict) or not isinstance(saved.get("experiment"), str):
        raise RunDirError(f"run config {path} is not a run's config.json (no 'experiment' name)")
    if not isinstance(saved.get("config"), dict):
        raise RunDirError(f"run config {path} is corrupt: 'config' must be a mapping")
    return saved


def config_of(exp: Any, run_dir: Path, saved: dict[str, Any]) -> Config:
    """The experiment's config built from a saved ``config.json`` (validated as any config is)."""
    if saved["experiment"] != exp.name:
        raise RunDirError(f"{run_dir} holds a run of {saved['experiment']!r}, not of {exp.name!r}")
    try:
        return exp.config_cls.from_dict(saved["config"])
    except ConfigError as e:
        raise RunDirError(f"run config {run_dir / 'config.json'} holds an invalid config: {e}") from None


def resume_config(
    exp: Any,
    run_dir: Path,
    overrides: Sequence[str],
    seed: int | None,
    seeds: str | None,
    profile: str | None,
) -> Config | None:
    """The config to continue the run in ``run_dir`` with, or None when it has no ``config.json`` yet (a run
    stopped before writing it: the flags then define it).

    Raises:
        ConfigError: a flag disagrees with the run (named, with both values).
        RunDirError: ``config.json`` is corrupt or of another experiment.
    """
    if not (run_dir / "config.json").exists():
        return None
    saved = saved_config(run_dir)
    cfg = config_of(exp, run_dir, saved)
    names = set(cfg.field_names())
    argv = saved.get("argv")
    started = (" ".join(str(a) for a in argv) if isinstance(argv, list) else "") or "unknown"

    def refuse(flag: str, field: str, ours: Any, theirs: Any) -> ConfigError:
        return ConfigError(
            f"--resume: {flag} does not match the run in {run_dir}: {field} is {_show(theirs)} in the run but "
            f"{_show(ours)} with {flag}. Resume with the run's own flags, or none (the run was started with: "
            f"{started}); start a new run with another --out or --overwrite"
        )

    if profile is not None:
        if "profile" not in names:
            raise ConfigError(f"--profile: experiment {exp.name!r} has no profiles")
        if profile != cfg.profile:  # type: ignore[attr-defined]
            raise refuse(f"--profile {profile}", "profile", profile, cfg.profile)  # type: ignore[attr-defined]
    if seed is not None and seeds is not None:
        raise ConfigError("give --seed or --seeds, not both")
    if seeds is not None or (seed is not None and "seed" not in names):
        flag = f"--seeds {seeds}" if seeds is not None else f"--seed {seed}"
        if "seeds" not in names:
            raise ConfigError(f"--seeds: experiment {exp.name!r} takes a single --seed")
        want = cfg.with_overrides([f"seeds={seeds if seeds is not None else seed}"]).seeds  # type: ignore[attr-defined]
        if want != cfg.seeds:  # type: ignore[attr-defined]
            raise refuse(flag, "seeds", want, cfg.seeds)  # type: ignore[attr-defined]
    elif seed is not None and seed != cfg.seed:  # type: ignore[attr-defined]
        raise refuse(f"--seed {seed}", "seed", seed, cfg.seed)  # type: ignore[attr-defined]
    for item in overrides:
        new = cfg.with_overrides([item])
        key = item.split("=", 1)[0].strip()
        if key.rsplit(".", 1)[-1] in RESUME_INDIFFERENT + RESUME_ADJUSTABLE:
            cfg = new
            continue
        if new != cfg:
            raise refuse(f"--set {item}", key, _get(new, key), _get(cfg, key))
    return cfg


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(str(x) for x in v) + ")"
    return repr(v)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_models(run_dir: Path) -> list[Path]:
    """Write ``models/{tag}-s{seed}.pt`` for every one-seed checkpoint under ``checkpoints/`` of this run's config
    whose model file is missing (a run from before model files existed); a seed batch's unfinished checkpoint has
    none, and a checkpoint of another config (a stale file of an earlier run) or a file that is no training
    checkpoint is left alone. Returns the files written."""
    ckpts = run_dir / "checkpoints"
    config = saved_config(run_dir)["config"]
    written = []
    for src in sorted(ckpts.glob("*.pt")) if ckpts.is_dir() else []:
        dst = run_dir / "models" / src.name
        if src.name.endswith("-batch.pt") or dst.exists():
            continue
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if export_checkpoint(src, dst, config) is not None:
                written.append(dst)
        except CheckpointError:  # not a training checkpoint (baselines caches its results under checkpoints/)
            continue
    return written


def clear_finished(run_dir: Path) -> None:
    """Forget that the run finished (called when a run starts, resumed or not)."""
    (run_dir / FINISHED).unlink(missing_ok=True)


def mark_finished(run_dir: Path, timing: dict[str, Any] | None = None) -> None:
    """Record that the run in ``run_dir`` finished, with the digest and row count of its ``results.csv`` and
    ``timing`` (wall and CPU seconds, torch threads, the load average before and after: a wall time measured on
    a busy machine is read beside its CPU time)."""
    results = run_dir / "results.csv"
    record: dict[str, Any] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if timing:
        record["timing"] = dict(timing)
    if results.is_file():
        record["results.csv"] = {"sha256": _digest(results), "rows": len(read_results(results))}
    write_json(run_dir / FINISHED, record)


def completeness(run_dir: Path, saved: dict[str, Any]) -> list[str]:
    """What is missing or changed in a run directory, compared with its config (empty: complete).

    Checks: ``results.csv`` parses strictly (else :class:`RunDirError`), holds rows, the run finished
    (``finished.json``, or for runs written before it existed, ``summary.json``), ``results.csv`` is the file the
    finished run wrote, and its rows cover exactly the config's seeds.
    """
    problems = []
    rows = read_results(run_dir / "results.csv")
    if not rows:
        problems.append("results.csv holds no rows (only its header)")
    finished = run_dir / FINISHED
    if finished.exists():
        record = read_json_file(finished, "run status")
        want = record.get("results.csv") if isinstance(record, dict) else None
        if isinstance(want, dict) and want.get("sha256") != _digest(run_dir / "results.csv"):
            problems.append(
                f"results.csv changed since the run finished ({want.get('rows')} rows then, {len(rows)} now)"
            )
    elif not (run_dir / "summary.json").exists():
        problems.append("the run did not finish (no finished.json or summary.json): it was stopped or is running")
    cfg = saved["config"]
    seeds = cfg.get("seeds", [cfg["seed"]] if "seed" in cfg else None)
    if isinstance(seeds, list) and rows:
        have = {r["seed"] for r in rows}
        missing = [s for s in seeds if s not in have]
        extra = sorted(have - set(seeds))
        if missing:
            problems.append(f"results.csv has no rows for seed(s) {', '.join(map(str, missing))} of the config")
        if extra:
            problems.append(f"results.csv has rows for seed(s) {', '.join(map(str, extra))} not in the config")
    return problems


def checkpoint_note(run_dir: Path) -> str:
    """Where the state of an interrupted run is: its newest checkpoint file, or that none was written yet."""
    found = [p for p in [run_dir / "checkpoint.pt", *sorted((run_dir / "checkpoints").glob("*.pt"))] if p.is_file()]
    if not found:
        return f"no checkpoint was written yet in {run_dir} (start it again with --overwrite)"
    newest = max(found, key=lambda p: p.stat().st_mtime)
    if len(found) == 1:
        return f"the checkpoint {newest} holds it"
    return f"the checkpoints in {newest.parent} hold it (the newest: {newest.name})"


def mark_incomplete(report: Path, problems: Sequence[str]) -> None:
    """Put an INCOMPLETE banner listing ``problems`` at the top of a rendered ``report.md``."""
    text = report.read_text() if report.exists() else ""
    banner = "> **INCOMPLETE run**: " + "; ".join(problems) + ". The numbers below cover only what was written.\n\n"
    atomic_write_bytes(report, (banner + text).encode())
