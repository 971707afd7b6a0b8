"""An exclusive lock on a run directory: one writer at a time.

``python -m experiments run`` (and ``report``) take the lock before writing anything into the run directory,
``--overwrite`` and ``--resume`` included, and hold it until they exit. The lock is an ``fcntl.flock`` on the
file ``.lock`` inside the directory, taken without waiting: a second writer fails at once with
:class:`RunDirLocked`, whose message names the holder (pid, host, start time and command line, which the holder
writes into the lock file). The kernel releases the lock when its holder exits, however it exits (SIGKILL
included), so a lock file left behind by a killed run does not block the next one.

A holder unlinks the lock file before it releases the lock; a process that locked a file which is no longer the
one at ``.lock`` (it opened it just before the unlink) drops it and tries again, so two processes never both
believe they hold the directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from icl.runio import LOCK_NAME, RunDirError


class RunDirLocked(RunDirError):
    """Another process holds the run directory."""


class RunLock:
    """The held lock of one run directory (a context manager; :meth:`release` is idempotent)."""

    def __init__(self, run_dir: Path, fd: int) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: see the module docstring
        except OSError:
            pass
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def holder_text(info: dict) -> str:
    """``pid P on host H since T: ARGV`` from the lock file's record."""
    if not info:
        return "a process that is starting (its record is not written yet)"
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started", 0))))
    except (TypeError, ValueError, OverflowError, OSError):
        since = "?"
    argv = info.get("argv")
    argv = " ".join(str(a) for a in argv) if isinstance(argv, list) else "?"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {since}: {argv}"


def _read_record(fd: int) -> dict:
    try:
        data = os.pread(fd, 65536, 0)
        info = json.loads(data.decode()) if data else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def lock_run_dir(run_dir: str | os.PathLike, argv: Sequence[str] = ()) -> RunLock:
    """Take the exclusive lock of ``run_dir`` (which must exist) without waiting.

    Raises:
        RunDirLocked: another process holds it; the message names that process.
        RunDirError: the lock file cannot be created (the directory is not writable).
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise RunDirError(f"cannot use {run_dir} as a run directory: {e.strerror} ({path})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_record(fd)
            os.close(fd)
            raise RunDirLocked(
                f"run directory {run_dir} is in use by another run ({holder_text(info)}); wait for it to finish, "
                "or choose another --out"
            ) from None
        except OSError as e:
            os.close(fd)
            raise RunDirError(f"cannot lock {path}: {e.strerror}") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # we locked a file its holder had just unlinked: try again with the new one
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "argv": list(argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return RunLock(run_dir, fd)
