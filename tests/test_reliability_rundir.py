"""Issue 18, items 2, 6, 7, 13, 14 and 16: what the CLI does with a run directory that is resumed with other
flags, overwritten, reported on while incomplete or corrupt, or that cannot be used at all. Every failure is a
clear exit 2 before any compute, never a traceback and never a silently wrong report."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from experiments.cli import main, resolve_config
from experiments.registry import get_experiment
from experiments.rundir import FINISHED, checkpoint_note
from icl.runio import LOCK_NAME, RunDirError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "train.batch_size=16", "--set", "train.eval_batch=16", "--set", "test_prompts=100", "--quiet"]


def fake_run(run: Path, name: str, seeds: str | None = None, profile: str | None = None, seed: int | None = None):
    """A run directory holding only the config.json a run of these flags writes first."""
    cfg = resolve_config(get_experiment(name), [], seed, seeds, profile)
    run.mkdir(parents=True, exist_ok=True)
    argv = ["run", name, *(["--seeds", seeds] if seeds else []), *(["--profile", profile] if profile else [])]
    (run / "config.json").write_text(json.dumps({"experiment": name, "config": cfg.to_dict(), "argv": argv}))
    return cfg


# -- item 2: --resume compares every flag that shapes the run ----------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seeds", "0,1,2"], "--seeds 0,1,2 does not match .*: seeds is \\(0, 1\\) in the run but \\(0, 1, 2"),
        (["--seeds", "1,0"], "--seeds 1,0 does not match"),
        (["--seed", "3"], "--seed 3 does not match"),
        (["--profile", "standard"], "--profile standard does not match .*profile is 'quick' in the run but 'standard'"),
        (["--set", "train.batch_size=7"], "--set train.batch_size=7 does not match .*batch_size is .* but 7"),
    ],
)
def test_resume_with_other_flags_exits_2_naming_the_flag(tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    fake_run(run, "pgd_depth", seeds="0,1", profile="quick")
    before = (run / "config.json").read_bytes()
    assert main(["run", "pgd_depth", "--out", str(run), "--resume", "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: ")
    assert re.search(message, err), err
    assert "the run was started with: run pgd_depth --seeds 0,1 --profile quick" in err
    assert (run / "config.json").read_bytes() == before and not (run / "figures").exists()


def test_resume_with_the_runs_own_flags_is_accepted(tmp_path, capsys):
    """The same flags pass the comparison; this directory then has no checkpoint, which is named, with
    --overwrite as the way out (item 16)."""
    run = tmp_path / "run"
    fake_run(run, "pgd_depth", seeds="0,1", profile="quick")
    args = ["run", "pgd_depth", "--out", str(run), "--resume", "--quiet"]
    for flags in ([], ["--seeds", "0,1", "--profile", "quick"], ["--set", "train.lr=0.05"]):
        assert main([*args, *flags]) == 2
        err = capsys.readouterr().err
        assert "holds no checkpoint" in err and "start it again with --overwrite" in err, err


def test_resume_or_report_of_a_missing_directory_creates_nothing(tmp_path, capsys):
    for name in ("typo", "r" * 300):
        assert main(["run", "quickstart", "--out", str(tmp_path / name), "--resume"]) == 2
        assert "cannot resume: " in capsys.readouterr().err and not (tmp_path / "typo").exists()
        assert main(["report", str(tmp_path / name)]) == 2
        assert "is not a run directory" in capsys.readouterr().err


def test_resume_single_seed_study_compares_seed(tmp_path, capsys):
    run = tmp_path / "run"
    fake_run(run, "quickstart", seed=0)
    assert main(["run", "quickstart", "--out", str(run), "--resume", "--seed", "1"]) == 2
    assert "--seed 1 does not match the run" in capsys.readouterr().err


# -- item 6: --overwrite starts from an empty directory ----------------------------------------------------------
def test_overwrite_leaves_nothing_of_the_old_run(tmp_path, capsys):
    run = tmp_path / "run"
    fake_run(run, "quickstart", seed=0)
    for name in ("summary.json", "report.md", "results.csv", FINISHED):
        (run / name).write_text("old")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "lsa-s0.pt").write_bytes(b"old")
    (run / "models").mkdir()  # a committed run's model files (their absence from RUN_ENTRIES refused this run)
    (run / "models" / "lsa-s0.pt").write_bytes(b"old")
    (run / "figures").mkdir()
    (run / "figures" / "old.png").write_bytes(b"old")
    args = ["run", "quickstart", "--out", str(run), "--overwrite", "--set", "train.steps=8", *TINY]
    assert main([*args, "--stop-after", "4"]) == 0  # stopped: no summary, report or results of its own yet
    capsys.readouterr()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "figures"]
    assert not any((run / "figures").iterdir())
    assert json.loads((run / "config.json").read_text())["argv"] == [*args, "--stop-after", "4"]


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    (home / "config.json").write_text("{}")
    assert main(["run", "quickstart", "--out", str(home), "--overwrite", *TINY]) == 2
    err = capsys.readouterr().err
    assert "--overwrite refused" in err and "thesis.tex" in err and "nothing was deleted" in err
    assert (home / "thesis.tex").read_text() == "precious" and (home / "config.json").read_text() == "{}"
    data = tmp_path / "data"  # files with run-like suffixes, but no run: kept too
    data.mkdir()
    (data / "measurements.csv").write_text("a,b\n")
    assert main(["run", "quickstart", "--out", str(data), "--overwrite", *TINY]) == 2
    assert "measurements.csv" in capsys.readouterr().err and (data / "measurements.csv").exists()


# -- item 7: report flags an incomplete or truncated run ---------------------------------------------------------
@pytest.fixture
def published(tmp_path) -> Path:
    """A copy of the published pgd_depth run (config, results, summary), written before finished.json existed."""
    run = tmp_path / "pgd"
    run.mkdir()
    for name in ("config.json", "results.csv", "summary.json"):
        shutil.copy(ROOT / "results" / "pgd_depth" / name, run / name)
    return run


def test_report_of_a_complete_run_and_of_a_truncated_one(published, capsys):
    assert main(["report", str(published)]) == 0
    assert not (published / LOCK_NAME).exists()
    text = (published / "results.csv").read_bytes()
    (published / "results.csv").write_bytes(text[:-5])  # the last value cut short, as a crash mid-write leaves it
    assert main(["report", str(published), "--partial"]) == 2
    assert "is truncated: its last line has no newline" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["header_only", "no_summary", "seed_missing"])
def test_report_of_an_incomplete_run_exits_2_unless_partial(published, capsys, how):
    results = published / "results.csv"
    lines = results.read_text().splitlines(keepends=True)
    if how == "header_only":
        results.write_text(lines[0])
    elif how == "no_summary":
        (published / "summary.json").unlink()
    else:
        seed = lines[0].rstrip("\n").split(",").index("seed")  # the tidy columns a study uses come before it
        kept = [line for line in lines if line.split(",")[seed] != "2"]
        assert len(kept) < len(lines)
        results.write_text("".join(kept))
    assert main(["report", str(published)]) == 2
    err = capsys.readouterr().err
    assert "INCOMPLETE run" in err and "--partial" in err
    expected = {"header_only": "holds no rows", "no_summary": "did not finish", "seed_missing": "seed(s) 2"}[how]
    assert expected in err
    if how != "header_only":
        assert main(["report", str(published), "--partial"]) == 0
        assert (published / "report.md").read_text().startswith("> **INCOMPLETE run**")


def test_finished_run_records_its_results_and_report_sees_later_changes(tmp_path, capsys):
    """A finished run writes finished.json; rows dropped at a line boundary afterwards (invisible to a parser)
    are caught by its digest; a run stopped early has none."""
    from experiments.rundir import completeness, mark_finished, saved_config

    run = tmp_path / "q"
    assert main(["run", "quickstart", "--out", str(run), "--set", "train.steps=4", *TINY]) == 0
    record = json.loads((run / FINISHED).read_text())
    assert record["results.csv"]["rows"] == len((run / "results.csv").read_text().splitlines()) - 1
    timing = record["timing"]  # what a wall time measured on a busy machine is read beside
    assert 0 < timing["wall_time_s"] < 600 and 0 < timing["cpu_time_s"] and timing["torch_threads"] >= 1
    assert len(timing["load_average_start"]) == len(timing["load_average_end"]) == 3
    assert completeness(run, saved_config(run)) == []
    lines = (run / "results.csv").read_text().splitlines(keepends=True)
    (run / "results.csv").write_text("".join(lines[:-2]))
    assert completeness(run, saved_config(run)) == [
        f"results.csv changed since the run finished ({len(lines) - 1} rows then, {len(lines) - 3} now)"
    ]
    mark_finished(run)
    assert completeness(run, saved_config(run)) == []
    stopped = tmp_path / "stopped"
    args = ["run", "quickstart", "--out", str(stopped), "--set", "train.steps=8", *TINY]
    assert main([*args, "--stop-after", "2"]) == 0
    assert not (stopped / FINISHED).exists()
    shutil.copy(run / FINISHED, stopped / FINISHED)  # a stale record
    assert main([*args, "--resume", "--stop-after", "4"]) == 0
    capsys.readouterr()
    assert not (stopped / FINISHED).exists()  # a (re)started run is not finished until it ends


# -- item 14: corrupt config.json or results.csv -----------------------------------------------------------------
CORRUPT = {
    "truncated": lambda t: t[: len(t) // 2],
    "empty": lambda t: b"",
    "binary": lambda t: b"\x80\x81\xfe\xff" * 10,
    "wrong_types": lambda t: json.dumps({"experiment": "pgd_depth", "config": [1, 2]}).encode(),
    "not_a_dict": lambda t: b"[1, 2, 3]",
    "bad_values": lambda t: json.dumps({"experiment": "pgd_depth", "config": {"depths": "x"}}).encode(),
}


@pytest.mark.parametrize("how", list(CORRUPT))
def test_corrupt_config_json_exits_2_on_report_and_resume(published, capsys, how):
    path = published / "config.json"
    path.write_bytes(CORRUPT[how](path.read_bytes()))
    (published / "checkpoints").mkdir()
    (published / "checkpoints" / "x.pt").write_bytes(b"x")
    for argv in (["report", str(published)], ["run", "pgd_depth", "--out", str(published), "--resume", "--quiet"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "config.json" in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"\x80\x81\xfe\xff\n", "not UTF-8"),
        (b"a,b\n1,2\n", "has header"),
        (b"experiment,method,depth,seed,metric,value\npgd_depth,x,one,0,test_loss,1.0\n", "line 2: depth and seed"),
        (b"experiment,method,depth,seed,metric,value\npgd_depth,x,1,0,test_loss,abc\n", "line 2: value 'abc'"),
        (b"experiment,method,depth,seed,metric,value\npgd_depth,x,1,0,test_loss\n", "line 2: 5 fields"),
    ],
)
def test_corrupt_results_csv_exits_2_on_report(published, capsys, content, message):
    (published / "results.csv").write_bytes(content)
    assert main(["report", str(published), "--partial"]) == 2
    err = capsys.readouterr().err
    assert message in err and "results.csv" in err, err


def test_corrupt_summary_json_exits_2_on_report(published, capsys):
    (published / "summary.json").write_bytes(b'{"a": ')
    assert main(["report", str(published)]) == 2
    assert "summary.json is corrupt or truncated" in capsys.readouterr().err


# -- item 13: unusable --out paths, checked before compute -------------------------------------------------------
@pytest.mark.parametrize("where", ["inside_a_file", "proc", "long_name"])
def test_unusable_out_exits_2(tmp_path, capsys, where):
    (tmp_path / "file").write_text("x")
    out = {
        "inside_a_file": tmp_path / "file" / "run",
        "proc": Path("/proc/icl-run"),
        "long_name": tmp_path / ("r" * 300),
    }[where]
    assert main(["run", "quickstart", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot create the run directory"), err
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("where", ["foreign_file", "missing_folder", "proc", "directory"])
def test_bench_out_is_checked_before_any_benchmark(tmp_path, capsys, monkeypatch, where):
    from experiments import bench

    ran = []
    monkeypatch.setattr(bench, "BENCHMARKS", {"x": lambda quick: ran.append(1) or [{"a": 1}]})
    monkeypatch.setattr(bench, "_load_all", lambda: None)
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    target.chmod(0o644)
    (tmp_path / "dir").mkdir()
    out = {"foreign_file": target, "missing_folder": tmp_path / "no" / "b.json", "proc": Path("/proc/b.json"),
           "directory": tmp_path / "dir"}[where]  # fmt: skip
    assert main(["bench", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out"), err
    assert not ran
    assert target.read_text() == "root:x:0:0\n" and target.stat().st_mode & 0o777 == 0o644
    # a bench.json it wrote itself is replaced, keeping its mode
    good = tmp_path / "bench.json"
    assert main(["bench", "--out", str(good)]) == 0 and ran == [1]
    good.chmod(0o640)
    assert main(["bench", "--out", str(good)]) == 0 and ran == [1, 1]
    assert good.stat().st_mode & 0o777 == 0o640
    assert json.loads(good.read_text())["benchmarks"]["x"]["rows"] == [{"a": 1}]


# -- item 16: messages point at files that exist ------------------------------------------------------------------
def test_interrupt_message_names_the_checkpoint_that_exists(tmp_path, capsys):
    run = tmp_path / "q"
    assert main(["run", "quickstart", "--out", str(run), "--set", "train.steps=8", "--stop-after", "4", *TINY]) == 0
    err = capsys.readouterr().err
    assert f"the checkpoint {run / 'checkpoint.pt'} holds it" in err and (run / "checkpoint.pt").is_file()
    study = tmp_path / "study"
    (study / "checkpoints").mkdir(parents=True)
    assert "no checkpoint was written yet" in checkpoint_note(study) and "--overwrite" in checkpoint_note(study)
    (study / "checkpoints" / "lsa-s0.pt").write_bytes(b"x")
    (study / "checkpoints" / "lsa-s1.pt").write_bytes(b"x")
    note = checkpoint_note(study)
    assert f"the checkpoints in {study / 'checkpoints'} hold it" in note and "checkpoint.pt" not in note


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_follow_the_umask_and_replacements_keep_their_mode(tmp_path, umask, mode):
    from icl.runio import atomic_write_bytes, save_checkpoint

    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        save_checkpoint(tmp_path / "c.pt", {"format": "x", "model": {}})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == mode
        assert (tmp_path / "c.pt").stat().st_mode & 0o777 == mode
        (tmp_path / "a.json").chmod(0o600)  # chosen by the user: kept on rewrite
        atomic_write_bytes(tmp_path / "a.json", b"[]")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    (tmp_path / "link").symlink_to(tmp_path / "a.json")
    with pytest.raises(RunDirError, match="is not a plain file"):
        atomic_write_bytes(tmp_path / "link", b"x")
