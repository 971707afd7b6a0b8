"""``python -m experiments``: list the studies and run one.

    python -m experiments list
    python -m experiments run NAME [--out DIR] [--seed S | --seeds 0,1,2] [--profile quick|standard|paper]
                                   [--set key=value ...] [--device cpu|cuda|mps] [--quiet] [--resume] [--overwrite]
    python -m experiments report RUN_DIR
    python -m experiments bench [--quick] [--out bench.json]

Every argument is validated before any compute: an unknown experiment or config key, a value out of range or
an unavailable device exits with status 2 and a message naming the problem, before a run directory is made.

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

from experiments.registry import descriptions, get_experiment, get_report
from icl.config import ConfigError

DEVICES = ("cpu", "cuda", "mps")


def check_device(name: str):
    """The torch device, if this machine has it."""
    import torch

    if name not in DEVICES:
        raise ConfigError(f"--device = {name!r} is not one of: {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available on this machine")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was asked for but MPS is not available on this machine")
    return torch.device(name)


def build_parser() -> argparse.ArgumentParser:
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
    report = sub.add_parser("report", help="re-render a run's figures and report.md from its results.csv")
    report.add_argument("run_dir", type=Path)
    bench = sub.add_parser("bench", help="run the benchmarks and write bench.json")
    bench.add_argument("--quick", action="store_true", help="small sizes (a smoke test of the benchmark itself)")
    bench.add_argument("--out", type=Path, default=Path("bench.json"))
    bench.add_argument("--only", action="append", default=[], help="run only these benchmarks")
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
    exp = get_experiment(args.name)
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out, the run directory to continue")
    if args.stop_after is not None and args.stop_after < 1:
        raise ConfigError(f"--stop-after = {args.stop_after} is out of range: must be >= 1")
    if args.resume and (args.out / "config.json").exists() and not args.overrides and args.seed is None:
        saved = json.loads((args.out / "config.json").read_text())
        cfg = exp.config_cls.from_dict(saved["config"])
    else:
        cfg = resolve_config(exp, args.overrides, args.seed, args.seeds, args.profile)
    if args.show_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    device = check_device(args.device)
    # the training stack is imported only for a run (list, --show-config and report do without it)
    from experiments.common import RunContext
    from icl.runio import prepare_run_dir
    from icl.training import TrainingDiverged, TrainingInterrupted, signals

    tag = getattr(cfg, "seed", None)
    tag = f"s{tag}" if tag is not None else "s" + "-".join(str(s) for s in getattr(cfg, "seeds", (0,)))
    out = args.out or Path("runs") / exp.name / f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}"
    out = prepare_run_dir(out, overwrite=args.overwrite, resume=args.resume)
    ctx = RunContext(
        name=exp.name,
        out_dir=out,
        device=device,
        quiet=args.quiet,
        resume=args.resume,
        argv=list(argv),
        stop_after=args.stop_after,
    )
    signals.install()  # once per run: a stop request is kept until some phase honours it
    try:
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
        print(
            f"interrupted: {e}; the checkpoint {ctx.checkpoint_path} holds it. Continue with:\n  {resume}",
            file=sys.stderr,
        )
        return 0 if e.signum is None else 128 + e.signum
    except TrainingDiverged as e:
        print(
            f"error: training diverged: {e}. Nothing non-finite was written: {ctx.checkpoint_path}, if present, "
            "holds the last finite state. Lower train.lr or set train.on_divergence=rollback.",
            file=sys.stderr,
        )
        return 1
    finally:
        signals.uninstall()
        signals.clear()
    return 0


def cmd_report(run_dir: Path) -> int:
    if not (run_dir / "config.json").is_file() or not (run_dir / "results.csv").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (needs config.json and results.csv)")
    name = json.loads((run_dir / "config.json").read_text())["experiment"]
    get_report(name)(run_dir)
    print(f"re-rendered {run_dir / 'report.md'} and {run_dir / 'figures'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from experiments.bench import run_benchmarks

    run_benchmarks(out=args.out, quick=args.quick, only=args.only)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        return cmd_list()
    from icl.runio import CheckpointError, RunDirError  # imports torch, which `list` does without

    try:
        if args.command == "report":
            return cmd_report(args.run_dir)
        if args.command == "bench":
            return cmd_bench(args)
        return cmd_run(args, argv)
    except (ConfigError, RunDirError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
