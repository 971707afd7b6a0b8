"""What a clean clone holds of a run directory: the repository's own .gitignore decides (tests' helper).

A committed run lives in ``results/NAME/``; its resumable checkpoints, per-step train logs and PDF figures are
ignored by git, so a clean clone has only the rest. :func:`drop_ignored` deletes, in a copy of a run directory,
every file that ``.gitignore`` would keep out of ``results/NAME/``, so a test can re-render the report from what a
clone would hold.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def drop_ignored(run_dir: Path, name: str) -> list[str]:
    """Delete every file under ``run_dir`` that git ignores at ``results/{name}/…``; returns their relative paths.

    Uses ``git check-ignore --no-index`` on the repository's ignore rules (the paths need not exist in it).
    """
    files = sorted(p for p in run_dir.rglob("*") if p.is_file())
    rel = {f"results/{name}/{p.relative_to(run_dir).as_posix()}": p for p in files}
    res = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(rel),
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode in (0, 1), f"git check-ignore failed: {res.stderr}"  # 1: nothing ignored
    ignored = res.stdout.split()
    for path in ignored:
        rel[path].unlink()
    return [p.removeprefix(f"results/{name}/") for p in ignored]
