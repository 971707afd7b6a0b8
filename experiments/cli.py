"""``python -m experiments``: list the studies and run one.

    python -m experiments list
    python -m experiments run NAME [--out DIR] [--seed S | --seeds 0,1,2] [--profile quick|standard|paper]
                                   [--set key=value ...] [--device cpu|cuda|mps] [--quiet] [--resume] [--overwrite]
    python -m experiments report RUN_DIR [--partial] | SWEEP_DIR
    python -m experiments sweep NAME --grid key=v1,v2 [--seeds 0-4] [--jobs N] [--backend local|slurm] (see sweep.py)
    python -m experiments collect DIR... [--out table.csv]
    python -m experiments bench [--quick] [--out bench.json]

Every argument is validated before any compute: an unknown experiment or config key, a value out of range, a
budget or size that cannot run (experiments/preflight.py) or an unavailable device exits with status 2 and a
message naming the problem, before a run directory is made. A run holds an exclusive lock on its directory
(experiments/runlock.py): a second writer exits 2 naming the holder. ``--resume`` continues the run with its own
config; a flag that disagrees with it exits 2 naming the flag (experiments/rundir.py). ``--overwrite`` empties the
directory first. ``report`` refuses (exit 2) a run that did not finish or whose results.csv does not match its
config, unless given ``--partial``.

Exit status: 0 done (or stopped at ``--stop-after``); 1 training diverged (the last finite checkpoint is kept);
2 bad arguments, config, run directory or checkpoint; 128 + N stopped by signal N (SIGINT 130, SIGTERM 143)
after checkpointing, to be continued with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from experiments.registry import descriptions, get_experiment
from icl.config import ConfigError

DEVICES = ("cpu", "cuda", "mps")


def check_device_name(name: str) -> None:
    """``name`` is one of :data:`DEVICES` (checked without torch)."""
    if name not in DEVICES:
        raise ConfigError(f"--device = {name!r} is not one of: {', '.join(DEVICES)}")


def check_device(name: str):
    """The torch device, if this machine has it."""
    import torch

    check_device_name(name)
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available on this machine")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was asked for but MPS is not available on this machine")
    return torch.device(name)


def build_parser(sweeps: bool = True) -> argparse.ArgumentParser:
    """The CLI's parser; ``sweeps=False`` leaves out the sweep and collect commands (and their imports)."""
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the registered studies")
    run = sub.add_parser("run", help="run a study")
    run.add_argument("name", help="the study's name (see `list`)")
    run.add_argument("--out", type=Path, default=None, help="run directory (default runs/NAME/<time>-s<seed>)")
    run.add_argument("--seed", type=int, default=None, help="the root seed (overrides the config's seed)")
    run.add_argument("--seeds", default=None, help="comma-separated seeds for a multi-seed study, e.g. 0,1,2")
    run.add_argument("--profile", default=None, help="quick, standard or paper (studies only)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field by its dotted name, e.g. --set train.lr=0.003",
    )
    run.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    run.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    run.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="STEP",
        help="checkpoint and stop at this training step, as an interruption would (continue with --resume)",
    )
    report = sub.add_parser(
        "report", help="re-render a run's figures and report.md from its results.csv (and write missing model files)"
    )
    report.add_argument("run_dir", type=Path)
    report.add_argument(
        "--partial",
        action="store_true",
        help="render a run that did not finish (or whose results do not cover its config), marked INCOMPLETE",
    )
    bench = sub.add_parser("bench", help="run the benchmarks and write bench.json")
    bench.add_argument("--quick", action="store_true", help="small sizes (a smoke test of the benchmark itself)")
    bench.add_argument("--out", type=Path, default=Path("bench.json"))
    bench.add_argument("--only", action="append", default=[], help="run only these benchmarks")
    if sweeps:
        from experiments import collect, sweep  # they use resolve_config and check_device from here

        sweep.add_parser(sub)
        collect.add_parser(sub)
    return parser


def resolve_config(
    exp, overrides: Sequence[str], seed: int | None = None, seeds: str | None = None, profile: str | None = None
):
    """The default config of ``exp``, then its profile, then the command-line overrides (all validated)."""
    cfg = exp.config_cls()
    names = set(cfg.field_names())
    if profile is not None:
        if "profile" not in names:
            raise ConfigError(f"--profile: experiment {exp.name!r} has no profiles")
        if profile not in exp.profiles:
            raise ConfigError(f"--profile = {profile!r} is not one of: {', '.join(exp.profiles)}")
    if "profile" in names:
        profile = profile or cfg.profile
        cfg = cfg.with_overrides({**exp.profiles.get(profile, {}), "profile": profile})
    cfg = cfg.with_overrides(list(overrides))
    if seed is not None and seeds is not None:
        raise ConfigError("give --seed or --seeds, not both")
    if seeds is not None or (seed is not None and "seed" not in names):
        if "seeds" not in names:
            raise ConfigError(f"--seeds: experiment {exp.name!r} takes a single --seed")
        cfg = cfg.with_overrides([f"seeds={seeds if seeds is not None else seed}"])
    elif seed is not None:
        cfg = cfg.with_overrides({"seed": seed})
    return cfg


def cmd_list() -> int:
    """The registered studies and their one-line descriptions (imports no study)."""
    studies = descriptions()
    width = max(len(n) for n in studies)
    for name, description in studies.items():
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    # up to --show-config (and every config error) this imports neither torch nor the study: the config comes
    # from the study's torch-free config module, and a cpu device needs no torch to be checked
    from experiments.preflight import preflight
    from icl.runio import RunDirError

    exp = get_experiment(args.name)
    check_device_name(args.device)
    device = args.device if args.device == "cpu" else check_device(args.device)
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out, the run directory to continue")
    if args.resume:
        try:
            exists = args.out.is_dir()
        except OSError as e:
            raise RunDirError(f"cannot resume: {args.out}: {e.strerror or e}") from None
        if not exists:
            raise RunDirError(f"cannot resume: {args.out} is not a run directory (it does not exist)")
    if args.stop_after is not None and args.stop_after < 1:
        raise ConfigError(f"--stop-after = {args.stop_after} is out of range: must be >= 1")
    flags = (args.overrides, args.seed, args.seeds, args.profile)
    if not args.resume:
        cfg = resolve_config(exp, *flags)
    elif args.show_config:
        from experiments.rundir import resume_config

        cfg = resume_config(exp, args.out, *flags) or resolve_config(exp, *flags)
    else:
        cfg = None  # read under the directory's lock, below
    if cfg is not None:
        preflight(cfg, device)
    if args.show_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    device = check_device(args.device)
    from experiments.rundir import resume_config
    from icl.tracking import TrackerUnavailable, make_tracker

    def tracker_for(cfg, out: Path):
        track = getattr(cfg, "track", "none")
        try:  # a missing tracker package is bad input: reported before anything is made
            return make_tracker(track, out / track) if track != "none" else None
        except TrackerUnavailable as e:
            raise ConfigError(str(e)) from None

    # the training stack is imported only for a run (list and report do without it)
    from experiments.rundir import clear_finished
    from experiments.runlock import lock_run_dir
    from icl.runio import make_run_dir, prepare_run_dir

    if cfg is not None:
        tag = getattr(cfg, "seed", None)
        tag = f"s{tag}" if tag is not None else "s" + "-".join(str(s) for s in getattr(cfg, "seeds", (0,)))
        out = args.out or Path("runs") / exp.name / f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}"
        tracker = tracker_for(cfg, out)
    else:
        out = args.out
    with lock_run_dir(make_run_dir(out), argv):
        if cfg is None:  # --resume: the run's own config, which the flags given must agree with
            cfg = resume_config(exp, out, *flags) or resolve_config(exp, *flags)
            preflight(cfg, device)
            tracker = tracker_for(cfg, out)
        out = prepare_run_dir(out, overwrite=args.overwrite, resume=args.resume)
        clear_finished(out)
        return _run_locked(exp, cfg, out, device, args, argv, tracker)


def _run_locked(exp, cfg, out: Path, device, args: argparse.Namespace, argv: Sequence[str], tracker=None) -> int:
    """Run the study in ``out`` (whose lock the caller holds); the exit status."""
    from experiments.common import RunContext
    from experiments.rundir import checkpoint_note, mark_finished
    from icl.training import TrainingDiverged, TrainingInterrupted, signals

    ctx = RunContext(
        name=exp.name,
        out_dir=out,
        device=device,
        quiet=args.quiet,
        resume=args.resume,
        argv=list(argv),
        stop_after=args.stop_after,
        tracker=tracker,
    )
    import os

    import torch

    load0, wall0, cpu0 = os.getloadavg(), time.perf_counter(), time.process_time()
    signals.install()  # once per run: a stop request is kept until some phase honours it
    try:
        if tracker is not None:
            tracker.on_start(cfg.to_dict())
        exp.run(cfg, ctx)
        signals.raise_if_requested("after the run")
    except TrainingInterrupted as e:
        resume = f"python -m experiments run {exp.name} --out {out} --resume"
        if args.overrides:
            resume += "".join(f" --set {o}" for o in args.overrides)
        if args.seed is not None:
            resume += f" --seed {args.seed}"
        if args.seeds is not None:
            resume += f" --seeds {args.seeds}"
        if args.profile is not None:
            resume += f" --profile {args.profile}"
        print(f"interrupted: {e}; {checkpoint_note(out)}. Continue with:\n  {resume}", file=sys.stderr)
        return 0 if e.signum is None else 128 + e.signum
    except TrainingDiverged as e:
        print(
            f"error: training diverged: {e}. Nothing non-finite was written: {checkpoint_note(out)}, the last "
            "finite state. Lower train.lr or set train.on_divergence=rollback.",
            file=sys.stderr,
        )
        return 1
    finally:
        signals.uninstall()
        signals.clear()
        if tracker is not None:
            tracker.on_end()
    mark_finished(out, {"wall_time_s": round(time.perf_counter() - wall0, 2),
                        "cpu_time_s": round(time.process_time() - cpu0, 2), "torch_threads": torch.get_num_threads(),
                        "load_average_start": [round(x, 2) for x in load0],
                        "load_average_end": [round(x, 2) for x in os.getloadavg()]})  # fmt: skip
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = args.run_dir
    try:
        if (run_dir / "sweep.json").is_file():
            from experiments.collect import report_sweep

            report_sweep(run_dir)
            print(f"wrote {run_dir / 'report.md'} and {run_dir / 'figures'}")
            return 0
        ok = run_dir.is_dir() and (run_dir / "config.json").exists() and (run_dir / "results.csv").exists()
    except OSError:
        ok = False
    if not ok:
        raise ConfigError(f"{run_dir} is not a run directory (needs config.json and results.csv)")
    from experiments.rundir import completeness, config_of, export_models, mark_incomplete, saved_config
    from experiments.runlock import lock_run_dir
    from icl.runio import RunDirError, read_json_file

    with lock_run_dir(run_dir, ["report", str(run_dir)]):
        saved = saved_config(run_dir)
        exp = get_experiment(saved["experiment"])
        config_of(exp, run_dir, saved)
        if exp.report is None:
            raise ConfigError(f"experiment {exp.name!r} has no report to re-render")
        if (run_dir / "summary.json").exists():
            read_json_file(run_dir / "summary.json", "run summary")
        problems = completeness(run_dir, saved)
        if problems and not args.partial:
            raise RunDirError(
                f"INCOMPLETE run in {run_dir}: {'; '.join(problems)}. Pass --partial to render a report of what is "
                "there (marked INCOMPLETE)"
            )
        try:
            exp.report(run_dir)
        except (KeyError, ValueError, IndexError, ZeroDivisionError) as e:
            raise RunDirError(f"cannot render a report of {run_dir}: {type(e).__name__}: {e}") from None
        if problems:
            mark_incomplete(run_dir / "report.md", problems)
            print(f"warning: INCOMPLETE run: {'; '.join(problems)}", file=sys.stderr)
        exported = export_models(run_dir)
    print(f"re-rendered {run_dir / 'report.md'} and {run_dir / 'figures'}")
    if exported:
        print(f"wrote {len(exported)} model files missing from {run_dir / 'models'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from experiments.bench import run_benchmarks

    run_benchmarks(out=args.out, quick=args.quick, only=args.only)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # sweep and collect (and what they import) are loaded only when asked for: `list` imports no torch and no
    # study, `run` only its own study
    parser = build_parser(sweeps=not argv or argv[0] in ("sweep", "collect", "-h", "--help"))
    args = parser.parse_args(argv)
    if args.command == "list":
        return cmd_list()
    from icl.runio import CheckpointError, RunDirError  # no torch: `run --show-config` does without

    try:
        if args.command == "report":
            return cmd_report(args)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command in ("sweep", "collect"):
            return args.func(args)
        return cmd_run(args, argv)
    except (ConfigError, RunDirError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
