"""Progress a person can read: bars that stay on a terminal, one line per finished item in a log, and an ETA.

On a terminal (stderr is a TTY) :func:`bar` is a tqdm bar that stays on screen when done (``leave=True``), so
the finished bars of a run remain as its record. Not on a terminal (a log file, a Slurm job, CI) bars are off
and :class:`Progress` prints one plain line per finished item instead, e.g.::

    model 3/8 pgd_L3 done in 41s; run ETA 3m25s (at 12:41:07)

The ETA of the whole run is the mean time per finished item times the items left: the items of a study
(models, runs of a sweep) are of comparable cost, and the estimate improves as they finish.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any

from tqdm.auto import tqdm


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default stderr, where the bars go) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def format_duration(seconds: float) -> str:
    """``7s``, ``3m05s``, ``2h04m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def bar(total: int | None, desc: str, *, quiet: bool = False, unit: str = "it", **kwargs: Any) -> tqdm:
    """A tqdm bar that stays when done, shown only on a terminal and when not ``quiet``."""
    return tqdm(total=total, desc=desc, unit=unit, leave=True, disable=quiet or not is_terminal(), **kwargs)


class Progress:
    """Counts finished items out of ``total`` and estimates the time left for all of them.

    Args:
        total: the number of items (models of a study, runs of a sweep); None when unknown (the lines then
            count without a total and give no ETA).
        noun: what an item is called in the lines (``model``, ``run``).
        quiet: print nothing.
        done: items already finished before this process started (a resumed run); they do not enter the
            time per item.
        printer: where the lines go (default: ``print`` to stdout, flushed).
        clock: the time source (seconds), replaceable in tests.
    """

    def __init__(
        self,
        total: int | None,
        noun: str = "model",
        *,
        quiet: bool = False,
        done: int = 0,
        printer: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if done < 0 or (total is not None and done > total):
            raise ValueError(f"need 0 <= done <= total, got done={done}, total={total}")
        self.total, self.noun, self.quiet = total, noun, quiet
        self.done = self.skipped = done
        self.clock = clock
        self.started = clock()
        self.printer = printer or (lambda line: print(line, flush=True))

    def eta(self) -> float | None:
        """Seconds until all items are done (None before the first item finished here)."""
        timed = self.done - self.skipped
        if timed <= 0 or self.total is None:
            return None
        return (self.clock() - self.started) / timed * (self.total - self.done)

    def line(self, name: str, seconds: float | None = None, status: str = "done") -> str:
        """The line for a finished item, with the run's ETA while items are left."""
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        text = f"{self.noun} {count} {name} {status}"
        if seconds is not None:
            text += f" in {format_duration(seconds)}"
        eta = self.eta()
        if eta is not None and self.total is not None and self.done < self.total:
            at = time.strftime("%H:%M:%S", time.localtime(self.clock() + eta))
            text += f"; run ETA {format_duration(eta)} (at {at})"
        return text

    def finished(self, name: str, seconds: float | None = None, status: str = "done") -> str:
        """Count one item as finished and print its line (unless quiet); returns the line."""
        self.done += 1
        text = self.line(name, seconds, status)
        if not self.quiet:
            self.printer(text)
        return text
