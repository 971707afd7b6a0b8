"""Checkpoints of a training run: the payload, the config check, and restore, for one or S seeds.

A checkpoint is self-contained: the experiment's resolved config (JSON), the model spec (registry name, d,
config and constraints: nanoGPT's ``model_args``, from which :func:`learned_optimizers.load_model` rebuilds the
model with no outside state), the optimizer spec, each seed's weights (``models``) and the trainer's exact state
(``trainer``: step, optimizer states, generator states, histories, callback states). Files are written
atomically with a checksum (:func:`icl.runio.save_checkpoint`).

A checkpoint resumes training, so it holds the optimizer moments and every step's history row (hundreds of
kilobytes per model). When a model is trained, :func:`export` also writes its *model file*: the config, the model
spec, the weights and a summary of the run (steps, last loss, held-out evaluations, events), kilobytes, which
:func:`learned_optimizers.load_model` rebuilds like a checkpoint. Committed study runs keep the model files
(``results/NAME/models/``), not the checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from icl.config import Config
from icl.runio import CheckpointError, load_checkpoint, save_checkpoint
from icl.training.loop import Trainer
from icl.training.specs import ModelSpec

CHECKPOINT_FORMAT = "icl-optimizers/2"
CHECKPOINT_KEYS = ("format", "config", "models", "trainer")
MODEL_FORMAT = "icl-optimizers/model-1"

#: config fields (by their last name) that choose how a run is computed, not what: a checkpoint written with
#: another value of them resumes (the numbers then differ from an uninterrupted run only by float rounding)
RESUME_INDIFFERENT = ("vectorise_seeds", "compile", "track")
#: training fields a resume may change (to recover from a divergence); the change is recorded in the
#: histories' events (``{"event": "resume", "changed": {...}}``) and applies from the resumed step on
RESUME_ADJUSTABLE = ("lr", "on_divergence", "max_rollbacks", "rollback_lr_factor", "explode_factor")


def payload(experiment: str, cfg: Config, trainer: Trainer, state: Mapping[str, Any] | None = None,
            **extra: Any) -> dict[str, Any]:  # fmt: skip
    """The checkpoint of ``trainer`` (or of ``state``, one of its :meth:`~Trainer.state_dict` forms)."""
    state = dict(trainer.state_dict() if state is None else state)
    models = state.pop("models")
    try:
        spec = ModelSpec.of(trainer.models[0]).to_dict()
    except (ValueError, AttributeError):  # not a registered model: the weights only
        spec = None
    return {
        "format": CHECKPOINT_FORMAT,
        "experiment": experiment,
        "config": json.dumps(cfg.to_dict()),
        "model_spec": spec,
        "optimizer_spec": trainer.optimizer_spec.to_dict() if trainer.optimizer_spec is not None else None,
        "seeds": list(state["seeds"]),
        "models": models,
        "trainer": state,
        **extra,
    }


def save(path: Path, experiment: str, cfg: Config, trainer: Trainer, state: Mapping[str, Any] | None = None,
         **extra: Any) -> Path:  # fmt: skip
    """Atomically write the checkpoint of ``trainer`` to ``path``."""
    return save_checkpoint(path, payload(experiment, cfg, trainer, state, **extra))


def model_file(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The model file of one seed's checkpoint (:func:`payload` form): everything but the trainer state, with
    the run's summary (``step``, ``last_loss``, ``evals``, ``events``, ``stopped``) in its place."""
    if len(ckpt["models"]) != 1:
        raise ValueError(f"a model file holds one seed; the checkpoint holds {len(ckpt['models'])}")
    state, hist = ckpt["trainer"], ckpt["trainer"]["histories"][0]
    rows = hist["rows"]
    summary = {
        "step": int(state["step"]),
        "last_loss": float(rows[-1]["loss"]) if rows else float("nan"),
        "evals": [dict(e) for e in hist["evals"]],
        "events": [dict(e) for e in hist.get("events", [])],
        "stopped": dict(state["stopped"]) if state.get("stopped") else None,
    }
    keep = ("experiment", "config", "model_spec", "optimizer_spec", "seeds", "models")
    return {"format": MODEL_FORMAT, **{k: ckpt[k] for k in keep if k in ckpt}, "summary": summary}


def export(path: Path, experiment: str, cfg: Config, trainer: Trainer, s: int = 0) -> Path:
    """Atomically write seed index ``s``'s model file (:func:`model_file`) to ``path``."""
    state = trainer.seed_state_dict(s) if trainer.S > 1 else None
    return save_checkpoint(path, model_file(payload(experiment, cfg, trainer, state)))


def export_checkpoint(src: Path, dst: Path, config: Mapping[str, Any] | None = None) -> Path | None:
    """Write the model file of the one-seed checkpoint ``src`` to ``dst`` (a committed run's checkpoints
    turned into model files without training again).

    Args:
        src: the checkpoint.
        dst: the model file to write.
        config: the run's resolved config (``config.json``'s ``config``); a checkpoint written with another one
            (a stale file of an earlier run) is not exported and None is returned.

    Raises:
        CheckpointError: ``src`` is not a readable one-seed checkpoint of this format.
    """
    ckpt = load_checkpoint(src, required=CHECKPOINT_KEYS)
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {src} has format {ckpt['format']!r}; this version reads "
                              f"{CHECKPOINT_FORMAT!r}")  # fmt: skip
    if config is not None:
        try:
            saved = json.loads(ckpt["config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {src} holds an unreadable config ({e})") from None
        ignored = RESUME_INDIFFERENT + RESUME_ADJUSTABLE
        if [k for k in _diff_keys(saved, dict(config)) if k.rsplit(".", 1)[-1] not in ignored]:
            return None
    try:
        return save_checkpoint(dst, model_file(ckpt))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"checkpoint {src} can not be exported ({type(e).__name__}: {e})") from None


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two nested dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out.extend(_diff_keys(a.get(k), b.get(k), f"{prefix}{k}."))
        return out
    return [] if a == b else [prefix.rstrip(".")]


def load(path: Path, cfg: Config, device: torch.device | str = "cpu") -> tuple[dict[str, Any], dict[str, tuple]]:
    """Load a checkpoint of this run, refusing one that is not ours or was written for another config.

    Returns:
        The checkpoint and the adjustable training fields that changed (dotted key -> (saved, now)).

    Raises:
        CheckpointError: missing, truncated, corrupt, of another format or of another config.
    """
    ckpt = load_checkpoint(path, map_location=device, required=CHECKPOINT_KEYS)
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {ckpt['format']!r}; this version reads {CHECKPOINT_FORMAT!r}"
        )
    try:
        saved = json.loads(ckpt["config"])
        saved = type(cfg).from_dict(saved).to_dict()  # defaults of fields added since are filled in
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} holds an unreadable config ({e})") from None
    now = cfg.to_dict()
    diff = [k for k in _diff_keys(saved, now) if k.rsplit(".", 1)[-1] not in RESUME_INDIFFERENT]
    changed = {k: (_get(saved, k), _get(now, k)) for k in diff if k.rsplit(".", 1)[-1] in RESUME_ADJUSTABLE}
    diff = [k for k in diff if k not in changed]
    if diff:
        raise CheckpointError(
            f"the checkpoint {path} was written with a different config (differs in: {', '.join(diff)}); "
            f"resume with the same settings (a resume may change only {', '.join(RESUME_ADJUSTABLE)})"
        )
    if not isinstance(ckpt["trainer"], dict):
        raise CheckpointError(f"checkpoint {path}: 'trainer' must be a dict, got {type(ckpt['trainer']).__name__}")
    return ckpt, changed


def _get(d: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


def trainer_state(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The :meth:`Trainer.state_dict` form of a loaded checkpoint."""
    return {**ckpt["trainer"], "models": ckpt["models"]}


def restore(trainer: Trainer, path: Path, cfg: Config, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load the checkpoint at ``path`` into ``trainer`` (see :func:`load`); a changed learning rate or
    divergence policy is applied and recorded. Returns the checkpoint dict.

    Raises:
        CheckpointError: as :func:`load`, or the state does not fit the trainer.
    """
    ckpt, changed = load(path, cfg, device)
    lr = next((now for k, (_, now) in changed.items() if k.rsplit(".", 1)[-1] == "lr"), None)
    try:
        trainer.load_state_dict(trainer_state(ckpt), lr=lr)
    except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this run ({type(e).__name__}: {e})") from None
    if changed:
        event = {"event": "resume", "step": trainer.step,
                 "changed": {k: {"saved": a, "now": b} for k, (a, b) in changed.items()}}  # fmt: skip
        for hist in trainer.histories:
            hist.events.append(event)
    return ckpt
