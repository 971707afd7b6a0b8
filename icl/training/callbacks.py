"""Callbacks: what the training loop does besides training, each a small object with hooks.

The protocol (every hook is optional; ``trainer`` is the :class:`~icl.training.loop.Trainer`, which trains
``trainer.S`` seeds; per-seed things are lists indexed by the seed's position)::

    class Callback:
        name: str                                  # the key of its state in the checkpoint
        def on_start(self, trainer): ...           # each time Trainer.run starts (also after a resume)
        def on_step(self, trainer): ...            # after each read-back of the losses: the new rows are
                                                   #   trainer.histories[s].rows[-k:], all at steps <= trainer.step
        def on_eval(self, trainer, losses): ...    # after a held-out evaluation: losses[s], at trainer.step
        def on_rollback(self, trainer, step): ...  # every seed went back to ``step`` (drop what came after)
        def on_end(self, trainer): ...             # the run reached train.steps (or a convergence rule ended it)
        def due(self, trainer, step) -> bool: ...  # whether the loop must read back at ``step`` (e.g. a read-out)
        def state_dict(self) -> dict: ...          # what must survive a stop and resume (saved in the checkpoint)
        def load_state_dict(self, state): ...
        def seed_state(self, state, s): ...        # seed s's part of the state (to hand a seed over alone)
        def merge_states(self, states): ...        # the inverse: S one-seed states as one

An experiment tracker (TensorBoard, wandb) is a callback writing ``on_step``/``on_eval``: see :class:`Tracker`.
What is here: :class:`ReadOut` (named numbers of each seed's model every k steps, kept in the checkpoint so a
resume never drops a row), :class:`Plateau` (the convergence rule), :class:`Clock` (wall time), and
:class:`Tracker` (the base of tracker writers). Logging to ``train_log.csv``, held-out evaluation,
checkpointing and divergence handling are done by :func:`~icl.training.fit` and the loop itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn


class Callback:
    """Base class with every hook a no-op (see the module docstring for the protocol)."""

    name = "callback"

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Any) -> None:
        pass

    def seed_state(self, state: dict[str, Any], s: int) -> dict[str, Any]:
        return state

    def merge_states(self, states: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return states[0]


class ReadOut(Callback):
    """Read named numbers off each seed's model at step 0, every ``every`` steps and at the end.

    Args:
        read: (index of the seed, its model at the current step) -> named numbers.
        every: the period in steps.
        name: the key of its rows in the checkpoint (several read-outs need different names).

    ``rows[s]`` is seed s's list of ``{"step": t, **read(s, model)}``; it travels in the checkpoint.
    """

    name = "read_out"

    def __init__(self, read: Callable[[int, nn.Module], dict[str, float]], every: int, name: str = "read_out") -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.read, self.every, self.name = read, every, name
        self.rows: list[list[dict[str, float]]] = []

    def _record(self, trainer: Any) -> None:
        for s, model in enumerate(trainer.models):
            self.rows[s].append({"step": float(trainer.step), **self.read(s, model)})

    def on_start(self, trainer: Any) -> None:
        if not self.rows:
            self.rows = [[] for _ in range(trainer.S)]
        if not self.rows[0]:
            self._record(trainer)

    def due(self, trainer: Any, step: int) -> bool:
        return step % self.every == 0 or step == trainer.cfg.steps

    def on_step(self, trainer: Any) -> None:
        step = trainer.step
        if self.due(trainer, step) and self.rows[0][-1]["step"] < step:
            self._record(trainer)

    def on_end(self, trainer: Any) -> None:  # a run ended early by a convergence rule reads out its last state
        if self.rows and self.rows[0][-1]["step"] < trainer.step:
            self._record(trainer)

    def on_rollback(self, trainer: Any, step: int) -> None:
        self.rows = [[r for r in rows if r["step"] <= step] for rows in self.rows]

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [[dict(r) for r in rows] for rows in self.rows]}

    def load_state_dict(self, state: Any) -> None:
        if isinstance(state, list):
            state = self.merge_states(state)
        self.rows = [[dict(r) for r in rows] for rows in state["rows"]]

    def seed_state(self, state: dict[str, Any], s: int) -> dict[str, Any]:
        return {"rows": [state["rows"][s]]}

    def merge_states(self, states: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"rows": [rows for st in states for rows in st["rows"]]}


class Plateau(Callback):
    """The convergence rule: finish when the held-out loss has not improved on its best by a relative ``tol``
    for ``patience`` evaluations in a row (every seed, in a seed batch); ``train.steps`` stays the cap. What
    ended the run is recorded in each seed's history events (``{"event": "finished", "reason": ...}``).
    """

    name = "plateau"

    def __init__(self, patience: int, tol: float = 1e-3) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience, self.tol = patience, tol
        self.best: list[float] = []
        self.waited: list[int] = []

    def on_eval(self, trainer: Any, losses: Sequence[float]) -> None:
        if not self.best:
            self.best = [float("inf")] * len(losses)
            self.waited = [0] * len(losses)
        for s, loss in enumerate(losses):
            if loss < self.best[s] * (1 - self.tol):
                self.best[s], self.waited[s] = loss, 0
            else:
                self.waited[s] += 1
        if all(w >= self.patience for w in self.waited) and trainer.step < trainer.cfg.steps:
            trainer.finish(f"plateau: held-out loss not improved by {self.tol:g} (relative) for {self.patience} "
                           "evaluations")  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"best": list(self.best), "waited": list(self.waited)}

    def load_state_dict(self, state: Any) -> None:
        if isinstance(state, list):
            state = self.merge_states(state)
        self.best, self.waited = list(state["best"]), list(state["waited"])

    def seed_state(self, state: dict[str, Any], s: int) -> dict[str, Any]:
        return {"best": state["best"][s : s + 1], "waited": state["waited"][s : s + 1]}

    def merge_states(self, states: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"best": [b for st in states for b in st["best"]], "waited": [w for st in states for w in st["waited"]]}


class Clock(Callback):
    """Wall-clock seconds of training at every read-back: ``elapsed[step]``, measured from the first step of
    this process (a resumed run keeps the saved times and continues from the last one)."""

    name = "clock"

    def __init__(self) -> None:
        self.elapsed: dict[int, float] = {}
        self._t0: float | None = None
        self._offset = 0.0

    def on_start(self, trainer: Any) -> None:
        self._t0 = time.perf_counter()
        self._offset = max(self.elapsed.values(), default=0.0)
        self.elapsed.setdefault(trainer.step, self._offset)

    def on_step(self, trainer: Any) -> None:
        self.elapsed[trainer.step] = self._offset + time.perf_counter() - (self._t0 or time.perf_counter())

    def on_rollback(self, trainer: Any, step: int) -> None:
        self.elapsed = {k: v for k, v in self.elapsed.items() if k <= step}

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": [[k, v] for k, v in sorted(self.elapsed.items())]}

    def load_state_dict(self, state: Any) -> None:
        if isinstance(state, list):
            state = state[0]
        self.elapsed = {int(k): float(v) for k, v in state["elapsed"]}


class Tracker(Callback):
    """Base of experiment-tracker writers: :meth:`scalar` is called with (tag, value, step) for every logged
    training loss, learning rate and gradient norm and every held-out loss (tag ``seed{seed}/{metric}``).
    Subclass it and implement :meth:`scalar` (and :meth:`close`) to write TensorBoard or wandb events."""

    name = "tracker"

    def __init__(self) -> None:
        self._written = 0  # rows of seed 0 already written (all seeds log the same steps)

    def scalar(self, tag: str, value: float, step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def on_step(self, trainer: Any) -> None:
        for s, hist in enumerate(trainer.histories):
            for row in hist.rows[self._written :]:
                for key in ("loss", "lr", "grad_norm"):
                    self.scalar(f"seed{trainer.seeds[s]}/{key}", row[key], int(row["step"]))
        self._written = len(trainer.histories[0].rows)

    def on_eval(self, trainer: Any, losses: Sequence[float]) -> None:
        for s, value in enumerate(losses):
            self.scalar(f"seed{trainer.seeds[s]}/eval_loss", value, trainer.step)

    def on_rollback(self, trainer: Any, step: int) -> None:
        self._written = len(trainer.histories[0].rows)

    def on_end(self, trainer: Any) -> None:
        self.close()
