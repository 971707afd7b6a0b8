"""Callbacks: what the training loop does besides training, each a small object with hooks.

The protocol (every hook is optional; ``trainer`` is the :class:`~icl.training.loop.Trainer`, which trains
``trainer.S`` seeds; per-seed things are lists indexed by the seed's position)::

    class Callback:
        name: str                                  # the key of its state in the checkpoint
        def on_start(self, trainer): ...           # each time Trainer.run starts (also after a resume)
        def on_step(self, trainer): ...            # after each healthy read-back of the losses: the new rows are
                                                   #   trainer.histories[s].rows[-k:], all at steps <= trainer.step
        def on_eval(self, trainer, losses): ...    # after a held-out evaluation: losses[s], at trainer.step
        def on_rollback(self, trainer, step): ...  # every seed went back to ``step`` (drop what came after)
        def on_end(self, trainer): ...             # the run reached train.steps (or a convergence rule ended it)
        def due(self, trainer, step) -> bool: ...  # whether the loop must read back at ``step`` (e.g. a read-out)
        def state_dict(self) -> dict: ...          # what must survive a stop and resume (saved in the checkpoint)
        def load_state_dict(self, state): ...
        def seed_state(self, state, s): ...        # seed s's part of the state (to hand a seed over alone)
        def merge_states(self, states): ...        # the inverse: S one-seed states as one

One step of the loop: train every seed; then, every ``train.log_every`` steps and whenever a callback is
``due`` (or a stop was requested, or the run reached the step it trains to), read the losses back. A read-back
goes to :class:`Divergence` first (a diverged seed stops the run or rolls every seed back, and nothing else
sees that read-back); a healthy one is a snapshot for rollback and goes to every callback's ``on_step`` in
order: :class:`Evaluate` first (its ``on_eval`` reaches every callback before their ``on_step``), the
callbacks given to the trainer, and :class:`Checkpoint` last (it saves what every other one has recorded).

The engine's own pieces are callbacks of this protocol: :class:`Evaluate` (held-out evaluation),
:class:`Divergence` (stop or roll back), :class:`Checkpoint` (saving at its steps, before a stop and when a
convergence rule ends the run); they keep no state of their own in the checkpoint (what they produce is the
trainer's: histories, best losses, rollbacks, learning rates). Also here: :class:`ReadOut` (named numbers of
each seed's model every k steps, kept in the checkpoint so a resume never drops a row), :class:`Plateau` (the
convergence rule), :class:`Clock` (wall time), and :class:`Tracker` (the base of experiment-tracker writers,
TensorBoard or wandb). The ``train_log.csv`` of each seed is written by :func:`~icl.training.fit` from the
histories.
"""

from __future__ import annotations

import math
import sys
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


class TrainingDiverged(RuntimeError):
    """The loss, the gradient or the trained state became non-finite or exploded (and no rollback was left).

    Attributes:
        step: the step (1-based count of optimizer steps) at which it was detected.
        last_loss: the last healthy training loss read back (NaN if none).
        seed: the root seed that diverged.
    """

    def __init__(self, message: str, *, step: int = -1, last_loss: float = float("nan"), seed: int = -1) -> None:
        super().__init__(message)
        self.step = step
        self.last_loss = last_loss
        self.seed = seed


class Evaluate:
    """Held-out evaluation: every ``every`` steps and at ``train.steps``, each seed's query MSE on its fixed
    held-out batch (drawn once from its ``val`` stream) is appended to its history's ``evals`` and sent to every
    callback's ``on_eval``. The trainer puts it first, so ``on_eval`` comes before the other ``on_step`` hooks.
    """

    name = "evaluate"

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every

    def due(self, trainer: Any, step: int) -> bool:
        return step % self.every == 0 or step == trainer.cfg.steps

    def on_step(self, trainer: Any) -> None:
        if not self.due(trainer, trainer.step):
            return
        values = trainer.evaluate()
        for hist, value in zip(trainer.histories, values):
            hist.evals.append({"step": trainer.step, "eval_loss": value})
        trainer.emit("on_eval", values)


class Divergence:
    """Divergence handling: a seed diverged when a read-back loss or gradient norm is non-finite, a loss exceeds
    ``explode_factor`` × max(the seed's running best loss, the zero predictor's loss on its held-out batch), or
    its weights or optimizer state hold a non-finite value after the read-back's last step.

    ``on = "stop"`` raises :class:`TrainingDiverged` naming the seed, the step and its last healthy loss (the last
    checkpoint is then the last healthy state). ``on = "rollback"`` puts every seed back to the last healthy
    read-back (weights, optimizer states, histories, callback states), multiplies the learning rate of the seeds
    that diverged by ``lr_factor`` and continues, at most ``max_rollbacks`` times per seed; then it stops as
    ``stop`` does. The seeds that diverged go on with fresh batches, from the stream ``train.rollback{k}`` of
    their k-th rollback, so the batch that made them diverge never comes back (deterministic: see
    :meth:`~icl.training.loop.Trainer.restore_snapshot`); the others replay the same steps exactly, so each seed
    of a batch ends where its own run would. The running best losses, the rollback
    counts and the lowered learning rates are the trainer's state (``best_losses``, ``rollbacks``, ``base_lrs``).
    """

    name = "divergence"

    def __init__(self, on: str = "stop", max_rollbacks: int = 3, lr_factor: float = 0.5,
                 explode_factor: float = 1e4) -> None:  # fmt: skip
        if on not in ("stop", "rollback"):
            raise ValueError(f"on must be 'stop' or 'rollback', got {on!r}")
        self.on, self.max_rollbacks, self.lr_factor, self.explode_factor = on, max_rollbacks, lr_factor, explode_factor

    @classmethod
    def from_config(cls, cfg: Any) -> Divergence:
        """From a :class:`~icl.training.config.TrainConfig` (``on_divergence``, ``max_rollbacks``,
        ``rollback_lr_factor``, ``explode_factor``)."""
        return cls(cfg.on_divergence, cfg.max_rollbacks, cfg.rollback_lr_factor, cfg.explode_factor)

    def check(self, trainer: Any, s: int, step: int, loss: float, grad_norm: float) -> str | None:
        """What is wrong with seed ``s``'s loss and gradient norm read back for ``step`` (None: healthy, and the
        seed's running best is updated)."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            return f"non-finite {what} ({loss if what == 'loss' else grad_norm}) at step {step}"
        best, zero = trainer.best[s], trainer.zero_losses[s]
        if loss > self.explode_factor * max(best, zero):
            return (f"loss {loss:.6g} at step {step} exploded (above {self.explode_factor:g} × max(best {best:.4g}, "
                    f"zero predictor {zero:.4g}))")  # fmt: skip
        trainer.best[s] = min(best, loss)
        return None

    def on_diverged(self, trainer: Any, bad: dict[int, tuple[str, int]]) -> None:
        """Seeds ``bad`` (index -> (what, step)) diverged: roll every seed back to the trainer's snapshot and lower
        the learning rate of those seeds, or raise :class:`TrainingDiverged` naming the first."""
        snap = trainer.snapshot
        can = self.on == "rollback" and snap is not None
        if can and all(trainer.rollbacks[s] < self.max_rollbacks for s in bad):
            for s in bad:
                trainer.rollbacks[s] += 1
                trainer.base_lrs[s] = [lr * self.lr_factor for lr in trainer.base_lrs[s]]
            trainer.restore_snapshot(fresh=bad)
            for s, (what, step) in bad.items():
                trainer.histories[s].events.append(
                    {"event": "rollback", "diverged_at": step, "rolled_back_to": snap.step,
                     "base_lr": trainer.base_lrs[s][0], "rollback": trainer.rollbacks[s]}
                )  # fmt: skip
                who = f"seed {trainer.seeds[s]}: " if trainer.S > 1 else ""
                print(
                    f"warning: {who}{what}; rolled back to step {snap.step} and lowered the learning rate to "
                    f"{trainer.base_lrs[s][0]:.3g} (rollback {trainer.rollbacks[s]} of {self.max_rollbacks})",
                    file=sys.stderr,
                    flush=True,
                )
            trainer.emit("on_rollback", snap.step)
            return
        s, (what, step) = next(iter(bad.items()))
        last = trainer.histories[s].last_loss
        tail = ""
        if self.on == "rollback":
            tail = f" after {trainer.rollbacks[s]} rollback(s) (max_rollbacks = {self.max_rollbacks})"
        who = f"seed {trainer.seeds[s]}: " if trainer.S > 1 else ""
        raise TrainingDiverged(f"{who}{what}; last healthy loss {last:.6g}{tail}", step=step, last_loss=last,
                               seed=trainer.seeds[s])  # fmt: skip


class Checkpoint:
    """Saves the run with ``save(trainer)`` every ``every`` steps and at the step the run trains to (``every``
    None or 0: neither), before a requested stop raises, and when a convergence rule ends the run; always at a
    healthy read-back and after every other callback has seen the step (the trainer puts it last)."""

    name = "checkpoint"

    def __init__(self, save: Callable[[Any], Any], every: int | None = None) -> None:
        self.save, self.every = save, every

    def due(self, trainer: Any, step: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == trainer.until)

    def on_step(self, trainer: Any) -> None:
        if self.due(trainer, trainer.step) or trainer.stopping is not None or trainer.stopped is not None:
            self.save(trainer)


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

    With ``escape``, a seed's count starts only once its held-out loss is below ``escape`` × the zero predictor's
    on the same prompts: before that it sits on the zero-predictor plateau (a softmax GPT does for hundreds of
    steps), where a flat loss means "not started", not "converged".
    """

    name = "plateau"

    def __init__(self, patience: int, tol: float = 1e-3, escape: float | None = None) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience, self.tol, self.escape = patience, tol, escape
        self.best: list[float] = []
        self.waited: list[int] = []

    def on_eval(self, trainer: Any, losses: Sequence[float]) -> None:
        if not self.best:
            self.best = [float("inf")] * len(losses)
            self.waited = [0] * len(losses)
        for s, loss in enumerate(losses):
            if self.escape is not None and loss >= self.escape * trainer.zero_losses[s]:  # not escaped yet
                self.best[s], self.waited[s] = loss, 0
            elif loss < self.best[s] * (1 - self.tol):
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
    """Base of experiment-tracker writers: :meth:`write` gets every logged row (training loss, learning rate,
    gradient norm) and every held-out loss of every seed; by default it calls :meth:`scalar` with (tag, value,
    step) per number (tag ``seed{seed}/{metric}``, held-out ``seed{seed}/eval_loss``). Subclass it and implement
    :meth:`scalar` (and :meth:`close`), or :meth:`write` (see :class:`TrackTo`). A resumed run writes only what
    comes after its checkpoint (the earlier numbers are in the tracker's files already)."""

    name = "tracker"

    def __init__(self) -> None:
        self._written = 0  # rows of seed 0 already written (all seeds log the same steps)

    def scalar(self, tag: str, value: float, step: int) -> None:
        raise NotImplementedError

    def write(self, kind: str, seed: int, step: int, values: dict[str, float]) -> None:
        """One row of numbers of one seed: ``kind`` is ``train`` (loss, lr, grad_norm) or ``eval``."""
        for key, value in values.items():
            self.scalar(f"seed{seed}/{key if kind == 'train' else 'eval_' + key}", value, step)

    def close(self) -> None:
        pass

    def on_start(self, trainer: Any) -> None:
        self._written = len(trainer.histories[0].rows)

    def on_step(self, trainer: Any) -> None:
        for s, hist in enumerate(trainer.histories):
            for row in hist.rows[self._written :]:
                values = {k: row[k] for k in ("loss", "lr", "grad_norm")}
                self.write("train", trainer.seeds[s], int(row["step"]), values)
        self._written = len(trainer.histories[0].rows)

    def on_eval(self, trainer: Any, losses: Sequence[float]) -> None:
        for s, value in enumerate(losses):
            self.write("eval", trainer.seeds[s], trainer.step, {"loss": float(value)})

    def on_rollback(self, trainer: Any, step: int) -> None:
        self._written = len(trainer.histories[0].rows)

    def on_end(self, trainer: Any) -> None:
        self.close()


class TrackTo(Tracker):
    """Sends a model's numbers to an experiment tracker of :mod:`icl.tracking` (TensorBoard, wandb): each seed
    is the series ``{model}-s{seed}``; training rows go to its ``on_step``, held-out losses and the read-outs of
    ``readout`` (e.g. steps in Σ⁻¹ units, constraint violation) to its ``on_eval``.

    Args:
        writer: an :class:`icl.tracking.Tracker`, shared by every model of the run (the run closes it).
        model: the model's name (its checkpoint tag).
        readout: the run's :class:`ReadOut`, whose new rows are sent after each read-back.
    """

    def __init__(self, writer: Any, model: str, readout: ReadOut | None = None) -> None:
        super().__init__()
        self.writer, self.model, self.readout = writer, model, readout
        self._read = 0  # read-out rows of seed 0 already sent

    def write(self, kind: str, seed: int, step: int, values: dict[str, float]) -> None:
        metrics = {"step": step, "model": self.model, "seed": seed, **values}
        (self.writer.on_step if kind == "train" else self.writer.on_eval)(metrics)

    def on_start(self, trainer: Any) -> None:
        super().on_start(trainer)
        if trainer.step > 0 and self.readout is not None and self.readout.rows:  # resumed: sent before the stop
            self._read = len(self.readout.rows[0])

    def _send_readouts(self, trainer: Any) -> None:
        if self.readout is None or not self.readout.rows:
            return
        for s, rows in enumerate(self.readout.rows):
            for row in rows[self._read :]:
                self.write("eval", trainer.seeds[s], int(row["step"]), {k: v for k, v in row.items() if k != "step"})
        self._read = len(self.readout.rows[0])

    def on_step(self, trainer: Any) -> None:
        super().on_step(trainer)
        self._send_readouts(trainer)

    def on_rollback(self, trainer: Any, step: int) -> None:
        super().on_rollback(trainer, step)
        if self.readout is not None and self.readout.rows:
            self._read = min(self._read, len(self.readout.rows[0]))

    def on_end(self, trainer: Any) -> None:
        self._send_readouts(trainer)
