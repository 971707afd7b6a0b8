"""Run directories, atomic writes and checkpoints.

Everything a run writes goes through :func:`atomic_write_bytes`: the bytes go to a temporary file in the same
directory, are flushed and fsync'ed, and the file is renamed over the target, so a crash never leaves a
half-written ``results.csv`` or checkpoint, and what was there before survives until the new file is complete.

Checkpoints are plain ``torch.save`` dicts of tensors, numbers, strings, lists and dicts, so they load with
``torch.load(path, weights_only=True)``; the resolved config is stored as a JSON string, and a SHA-256 of the
contents (``checksum``, required) lets :func:`load_checkpoint` reject a file whose bytes changed after it was
written, or that was written (or hand-edited) without one.

Files are created with the permissions an ordinary ``open`` would give (0666 less the umask), so collaborators on
a shared filesystem can read a run; a file that is replaced keeps its mode.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

RESULT_COLUMNS = ("experiment", "method", "depth", "seed", "metric", "value")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or not one of ours."""


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (e.g. it holds an earlier run)."""


def _is_tensor(o: Any) -> bool:
    """Whether ``o`` is a torch tensor, without importing torch (this module is imported by the CLI's
    ``--show-config``, which never loads torch; no tensor exists before torch is imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(o, torch.Tensor)


def current_umask() -> int:
    """The process's umask: from /proc/self/status where Linux has it (no race with other threads), else by
    setting it and setting it back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename).

    The new file gets the mode of the file it replaces, or 0666 less the umask (``mkstemp`` alone would leave
    it 0600, unreadable to collaborators). A ``path`` that is a directory or a symbolic link is refused, so the
    rename never replaces something that is not a plain file.
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise RunDirError(f"refusing to write {path}: it exists and is not a plain file")
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~current_umask()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def _json_default(o: Any) -> Any:
    if _is_tensor(o):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _clean(o: Any) -> Any:
    """Replace non-finite floats by None so the JSON is standard."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, Mapping):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented, standard JSON."""
    text = json.dumps(_clean(obj), indent=2, default=_json_default, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Atomically write dict rows as CSV with the given column order."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="raise", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow(row)
    return atomic_write_bytes(path, buf.getvalue().encode())


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a CSV file into dict rows."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise RunDirError(f"{what} {path} does not exist")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise RunDirError(f"{what} {path} is corrupt: it is not UTF-8 text") from None
    except OSError as e:
        raise RunDirError(f"{what} {path} cannot be read: {e.strerror}") from None


def read_json_file(path: str | os.PathLike, what: str = "file") -> Any:
    """A JSON file's contents, or a :class:`RunDirError` naming the file and what is wrong (missing, empty,
    truncated, not UTF-8, not JSON)."""
    path = Path(path)
    text = _read_text(path, what)
    if not text.strip():
        raise RunDirError(f"{what} {path} is empty")
    try:
        return json.loads(text)
    except ValueError as e:
        raise RunDirError(f"{what} {path} is corrupt or truncated ({e})") from None


def read_results(path: str | os.PathLike, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The rows of a tidy ``results.csv`` (depth and seed as int, value as float, other columns as written),
    checked strictly.

    Args:
        path: the file.
        columns: the column names a header may use (None: any); it must hold :data:`RESULT_COLUMNS`.

    Raises:
        RunDirError: naming the file and line: not UTF-8, a header without the columns of
            :data:`RESULT_COLUMNS` (or with one outside ``columns``), a row with another number of fields, a
            depth/seed that is not an integer, a value that is not a number, or a last line without its newline
            (a file cut off mid-row, whose last value may be cut short).
    """
    path = Path(path)
    text = _read_text(path, "results file")
    if not text:
        raise RunDirError(f"results file {path} is empty (not even a header)")
    if not text.endswith("\n"):
        raise RunDirError(f"results file {path} is truncated: its last line has no newline (cut off mid-row)")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    missing = [c for c in RESULT_COLUMNS if c not in header]
    unknown = [c for c in header if columns is not None and c not in columns]
    if missing or unknown or len(set(header)) != len(header):
        raise RunDirError(
            f"results file {path} has header {header}: it needs {list(RESULT_COLUMNS)}"
            + (f" and may hold only {list(columns)}" if columns is not None else "")
        )
    rows = []
    for line, fields in enumerate(reader, start=2):
        if len(fields) != len(header):
            raise RunDirError(f"results file {path} line {line}: {len(fields)} fields, expected {len(header)}")
        row: dict[str, Any] = dict(zip(header, fields))
        try:
            row["depth"], row["seed"] = int(row["depth"]), int(row["seed"])
        except ValueError:
            raise RunDirError(f"results file {path} line {line}: depth and seed must be integers") from None
        try:
            row["value"] = float(row["value"]) if row["value"] != "" else float("nan")
        except ValueError:
            raise RunDirError(f"results file {path} line {line}: value {row['value']!r} is not a number") from None
        rows.append(row)
    return rows


#: the lock file of a run directory (experiments/runlock.py); not part of the run
LOCK_NAME = ".lock"
#: what runs write at the top of a run directory; ``--overwrite`` deletes these and nothing else
RUN_ENTRIES = frozenset(
    {"config.json", "results.csv", "summary.json", "report.md", "train_log.csv", "checkpoint.pt", "checkpoints",
     "figures", "finished.json", "train_logs", "models", "tensorboard", "wandb", LOCK_NAME}
)  # fmt: skip
RUN_SUFFIXES = (".csv", ".json", ".md", ".pt", ".tmp")


def make_run_dir(path: str | os.PathLike) -> Path:
    """Create the run directory (and its parents), turning an unusable path into a clear :class:`RunDirError`:
    a path through a file, in a read-only or virtual filesystem, or with a name too long."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create the run directory {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunDirError(f"the run directory {path} is not writable")
    return path


def _looks_like_run(path: Path) -> bool:
    """Whether ``path`` holds a run: a config.json naming an experiment, or checkpoints."""
    if (path / "checkpoint.pt").is_file() or (path / "checkpoints").is_dir():
        return True
    try:
        cfg = json.loads((path / "config.json").read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("experiment"), str)


def _foreign(path: Path, entries: Sequence[Path]) -> list[str]:
    """The entries no run writes: names outside :data:`RUN_ENTRIES`, and, unless the directory holds a run,
    any other .csv/.json/.md/.pt file (a folder of someone's CSVs is not emptied by ``--overwrite``)."""
    run = _looks_like_run(path)
    return [
        p.name for p in entries
        if p.name not in RUN_ENTRIES and not (run and p.is_file() and p.suffix in RUN_SUFFIXES)
    ]  # fmt: skip


def _occupied(path: Path) -> list[Path]:
    """The entries of ``path`` that belong to a run (an empty figures/ folder and the lock file do not)."""
    if not path.is_dir():
        return []
    return [
        p for p in sorted(path.iterdir())
        if p.name != LOCK_NAME and not (p.name == "figures" and p.is_dir() and not any(p.iterdir()))
    ]  # fmt: skip


def prepare_run_dir(path: str | os.PathLike, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Create the run directory, refusing one that already holds a run unless told to resume or overwrite.

    ``overwrite`` starts from an empty directory: the earlier run's files (config, results, summary, report,
    figures, checkpoints) are deleted, so nothing of it survives beside the new run. A directory holding anything
    a run does not write (see :data:`RUN_ENTRIES`) is refused instead of emptied. The caller holds the
    directory's lock (experiments/runlock.py) while calling this.
    """
    path = make_run_dir(path)
    entries = _occupied(path)
    if entries and not (overwrite or resume):
        raise RunDirError(
            f"run directory {path} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    if resume and not has_checkpoint(path):
        raise RunDirError(
            f"cannot resume: {path} holds no checkpoint (checkpoint.pt or checkpoints/*.pt); "
            "start it again with --overwrite"
        )
    if overwrite and entries:
        foreign = _foreign(path, entries)
        if foreign:
            raise RunDirError(
                f"--overwrite refused: {path} holds files that no run writes ({', '.join(foreign[:5])}"
                f"{', …' if len(foreign) > 5 else ''}); it does not look like a run directory, so nothing was deleted"
            )
        for p in entries:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    (path / "figures").mkdir(exist_ok=True)
    return path


def has_checkpoint(path: str | os.PathLike) -> bool:
    """Whether the run directory ``path`` holds a checkpoint to resume from (checkpoint.pt or checkpoints/*.pt)."""
    path = Path(path)
    return (path / "checkpoint.pt").exists() or any((path / "checkpoints").glob("*.pt"))


def find_nonfinite(obj: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN/inf floating tensor inside ``obj`` (nested dicts, lists and tensors),
    or None when every floating tensor is finite."""
    if _is_tensor(obj):
        if obj.is_floating_point() and obj.numel() and not bool(obj.isfinite().all()):
            return path or "<tensor>"
        return None
    if isinstance(obj, Mapping):
        items: Iterable[tuple[Any, Any]] = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        found = find_nonfinite(v, f"{path}.{k}" if path else str(k))
        if found is not None:
            return found
    return None


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Atomically save a checkpoint dict.

    Refuses (with :class:`CheckpointError`, before touching the file) a payload holding any non-finite floating
    tensor (model weights, optimizer state), so a good checkpoint is never replaced by a diverged state.
    """
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"a checkpoint payload must be a mapping, got {type(payload).__name__}")
    bad = find_nonfinite(payload)
    if bad is not None:
        raise CheckpointError(f"refusing to write a checkpoint: {bad} is not finite (the previous file is kept)")
    payload = {k: v for k, v in payload.items() if k != "checksum"}
    payload["checksum"] = payload_digest(payload)
    import torch

    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def payload_digest(obj: Any) -> str:
    """A SHA-256 over a checkpoint payload's contents (tensor bytes, dtypes, shapes, numbers, strings), stored
    in the file so that bytes flipped inside tensor data, which ``torch.load`` cannot notice, are caught."""
    h = hashlib.sha256()

    def feed(o: Any) -> None:
        if _is_tensor(o):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(sys.modules["torch"].uint8).numpy().tobytes())
        elif isinstance(o, Mapping):
            h.update(b"{")
            for k in sorted(o, key=str):
                h.update(repr(k).encode())
                feed(o[k])
            h.update(b"}")
        elif isinstance(o, (list, tuple)):
            h.update(b"[")
            for v in o:
                feed(v)
            h.update(b"]")
        else:
            h.update(repr(o).encode())

    feed(obj)
    return h.hexdigest()


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    required: Sequence[str] = ("format", "models"),
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, turning any failure into a clear :class:`CheckpointError`.

    Args:
        path: the checkpoint file.
        map_location: where to put the tensors.
        required: top-level keys that must be present (named in the error when missing).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    import torch

    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})") from None
    except Exception as e:  # pickle.UnpicklingError and friends
        raise CheckpointError(f"checkpoint {path} could not be read ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} is not an icl-optimizers checkpoint (a {type(obj).__name__})")
    if "checksum" not in obj:
        raise CheckpointError(
            f"checkpoint {path} has no checksum: it was not written by save_checkpoint (or was edited by hand), "
            "so its contents cannot be trusted"
        )
    stored = obj.pop("checksum")
    if stored != payload_digest(obj):
        raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match the stored checksum")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is not an icl-optimizers checkpoint: missing {', '.join(repr(k) for k in missing)}"
        )
    return obj
