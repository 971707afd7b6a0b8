"""Run directories, atomic writes and checkpoints.

Everything a run writes goes through :func:`atomic_write_bytes`: the bytes go to a temporary file in the same
directory, are flushed and fsync'ed, and the file is renamed over the target, so a crash never leaves a
half-written ``results.csv`` or checkpoint, and what was there before survives until the new file is complete.

Checkpoints are plain ``torch.save`` dicts of tensors, numbers, strings, lists and dicts, so they load with
``torch.load(path, weights_only=True)``; the resolved config is stored as a JSON string, and a SHA-256 of the
contents (``checksum``) lets :func:`load_checkpoint` reject a file whose bytes changed after it was written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

RESULT_COLUMNS = ("experiment", "method", "depth", "seed", "metric", "value")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or not one of ours."""


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (e.g. it holds an earlier run)."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
    if isinstance(o, torch.Tensor):
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


def write_results(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write tidy long-form results (experiment, method, depth, seed, metric, value)."""
    return write_csv(path, rows, RESULT_COLUMNS)


def prepare_run_dir(path: str | os.PathLike, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Create the run directory, refusing one that already holds a run unless told to resume or overwrite."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} exists and is not a directory")
    # an empty figures/ folder is what an earlier attempt that failed before writing anything leaves
    occupied = path.is_dir() and any(p.name != "figures" or any(p.iterdir()) for p in path.iterdir())
    if occupied and not (overwrite or resume):
        raise RunDirError(
            f"run directory {path} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    if resume and not (path / "checkpoint.pt").exists() and not any((path / "checkpoints").glob("*.pt")):
        raise RunDirError(f"cannot resume: {path} holds no checkpoint (checkpoint.pt or checkpoints/*.pt)")
    path.mkdir(parents=True, exist_ok=True)
    (path / "figures").mkdir(exist_ok=True)
    return path


def find_nonfinite(obj: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN/inf floating tensor inside ``obj`` (nested dicts, lists and tensors),
    or None when every floating tensor is finite."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel() and not bool(torch.isfinite(obj).all()):
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
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def payload_digest(obj: Any) -> str:
    """A SHA-256 over a checkpoint payload's contents (tensor bytes, dtypes, shapes, numbers, strings), stored
    in the file so that bytes flipped inside tensor data, which ``torch.load`` cannot notice, are caught."""
    h = hashlib.sha256()

    def feed(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
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
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})") from None
    except Exception as e:  # pickle.UnpicklingError and friends
        raise CheckpointError(f"checkpoint {path} could not be read ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} is not an icl-optimizers checkpoint (a {type(obj).__name__})")
    if "checksum" in obj:
        stored = obj.pop("checksum")
        if stored != payload_digest(obj):
            raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match the stored checksum")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is not an icl-optimizers checkpoint: missing {', '.join(repr(k) for k in missing)}"
        )
    return obj
