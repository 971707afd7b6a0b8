"""Stop requests: SIGINT/SIGTERM turned into a request that training honours at the next step boundary.

A command-line run installs the handler once, for its whole life (:func:`install`), so a signal that arrives
between two trainings, during baselines or reporting, is kept until some code honours it: the training loop
checkpoints and raises :class:`TrainingInterrupted`; code outside training calls :func:`raise_if_requested`.
A second signal of the same kind acts at once (the default action). Training started outside such a run
(a script, a test) installs the handler only for the duration of its own loop (:func:`handling`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(RuntimeError):
    """The run was asked to stop (SIGINT, SIGTERM or a programmatic request) and stopped cleanly.

    Training has checkpointed the state at ``step`` (when it had a checkpoint callback) before this is raised.

    Attributes:
        step: the step training stopped at (-1 outside training).
        signum: the signal that asked for the stop, or None for a programmatic request.
    """

    def __init__(self, message: str, *, step: int = -1, signum: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.signum = signum


@dataclass(frozen=True)
class StopRequest:
    reason: str
    signum: int | None = None


_pending: StopRequest | None = None
_previous: dict[int, Any] = {}


def request_stop(reason: str, signum: int | None = None) -> None:
    """Ask every training loop of this process to stop at its next step boundary (safe in a signal handler)."""
    global _pending
    if _pending is None or (signum is not None and _pending.signum is None):
        _pending = StopRequest(reason, signum)


def pending() -> StopRequest | None:
    """The stop request not yet honoured, if any."""
    return _pending


def clear() -> None:
    """Forget the pending request (after it was honoured by ending the run)."""
    global _pending
    _pending = None


def raise_if_requested(where: str = "") -> None:
    """Raise :class:`TrainingInterrupted` if a stop is pending (for code between trainings)."""
    req = _pending
    if req is not None:
        at = f" ({where})" if where else ""
        raise TrainingInterrupted(f"{req.reason}{at}", signum=req.signum)


def _handler(signum: int, frame: Any) -> None:
    if _pending is not None and _pending.signum is not None:  # asked twice: stop now
        signal.signal(signum, _previous.get(signum) or signal.SIG_DFL)
        signal.raise_signal(signum)
        return
    request_stop(f"{signal.Signals(signum).name} received", signum)


def installed() -> bool:
    """Whether the stop handler is installed."""
    return bool(_previous)


def install() -> bool:
    """Install the handler for SIGINT and SIGTERM (idempotent; only in the main thread). True if it is now
    installed by this call."""
    if _previous or threading.current_thread() is not threading.main_thread():
        return False
    for sig in STOP_SIGNALS:
        _previous[sig] = signal.signal(sig, _handler)
    return True


def uninstall() -> None:
    """Restore the handlers :func:`install` replaced."""
    for sig, prev in list(_previous.items()):
        signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
    _previous.clear()


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM request a stop. If the handler was not installed before (no
    command-line run around it), it is installed for the block only and a request left at its end is dropped,
    so a later training in the same process starts afresh."""
    mine = install()
    try:
        yield
    finally:
        if mine:
            uninstall()
            clear()
