"""Gradient transforms and learning-rate schedules: small pure pieces, chained as optax chains its transforms.

A *gradient transform* takes the gradients of S seeds, ``grads[s]`` the list of seed s's parameter gradients,
and changes them in place, each seed on its own (norms are per seed, so seed s of a batch is clipped exactly as
a model trained alone). :func:`chain` composes transforms left to right. A *schedule* maps the 0-based step to
the multiplier of the base learning rate. :func:`from_config` builds both from a
:class:`~icl.training.config.TrainConfig`::

    transform = chain(clip_global(1.0))          # what train.clip = global does
    factor = step_decay(every=1000)(step)        # what train.schedule = step does
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from icl.training.config import TrainConfig

#: a gradient transform: per-seed gradient lists in, changed in place
GradTransform = Callable[[Sequence[Sequence[torch.Tensor]]], None]
#: a schedule: 0-based step -> multiplier of the base learning rate
Schedule = Callable[[int], float]


def seed_grad_norms(grads: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """The global L2 norm of each seed's gradients, (S,), on the gradients' device (no host sync)."""
    S = len(grads)
    flat = [g for seed in grads for g in seed]
    if not flat:
        return torch.zeros(S)
    P = len(grads[0])
    norms = torch.stack(torch._foreach_norm(flat)).reshape(S, P)
    return torch.linalg.vector_norm(norms, dim=1)


def clip_global(max_norm: float) -> GradTransform:
    """Per seed, what ``torch.nn.utils.clip_grad_norm_`` does to one model: every gradient of the seed times
    min(1, max_norm / (‖g‖ + 1e-6)), ‖g‖ the seed's global norm."""

    @torch.no_grad()
    def transform(grads: Sequence[Sequence[torch.Tensor]]) -> None:
        if not grads or not grads[0]:
            return
        coef = (max_norm / (seed_grad_norms(grads) + 1e-6)).clamp(max=1.0)
        for s, seed in enumerate(grads):
            torch._foreach_mul_(list(seed), coef[s])

    return transform


def clip_per_matrix(max_norm: float) -> GradTransform:
    """Each trailing d×d block of every gradient clipped to Frobenius norm ≤ ``max_norm`` (Ahn et al.'s code);
    a gradient with fewer than two dimensions is one block."""

    @torch.no_grad()
    def transform(grads: Sequence[Sequence[torch.Tensor]]) -> None:
        for seed in grads:
            for g in seed:
                g2 = g if g.ndim >= 2 else g.reshape(1, 1, -1)
                blocks = g2.reshape(-1, g2.shape[-2], g2.shape[-1])
                norms = torch.linalg.matrix_norm(blocks).clamp_min(1e-30)
                blocks.mul_((max_norm / norms).clamp(max=1.0)[:, None, None])

    return transform


def identity() -> GradTransform:
    """Leave the gradients as they are."""
    return lambda grads: None


def chain(*transforms: GradTransform) -> GradTransform:
    """Apply ``transforms`` one after the other."""

    def transform(grads: Sequence[Sequence[torch.Tensor]]) -> None:
        for t in transforms:
            t(grads)

    return transform


def constant() -> Schedule:
    """The base learning rate at every step."""
    return lambda step: 1.0


def step_decay(every: int, factor: float = 0.5) -> Schedule:
    """``factor`` ** (step // every): halve every ``every`` steps by default (Ahn et al.)."""
    return lambda step: factor ** (step // every)


def cosine(total: int) -> Schedule:
    """½(1 + cos(π·min(step, total)/total)): from the base rate down to 0 at ``total``."""
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def schedule_from_config(cfg: TrainConfig) -> Schedule:
    """The schedule ``cfg.schedule`` names."""
    if cfg.schedule == "step":
        return step_decay(cfg.halve_every)
    if cfg.schedule == "cosine":
        return cosine(cfg.steps)
    return constant()


def transform_from_config(cfg: TrainConfig) -> GradTransform:
    """The clipping ``cfg.clip`` names."""
    if cfg.clip == "global":
        return chain(clip_global(cfg.clip_value))
    if cfg.clip == "per_matrix":
        return chain(clip_per_matrix(cfg.clip_value))
    return identity()


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The schedule's multiplier of the base learning rate at ``step`` (0-based)."""
    return schedule_from_config(cfg)(step)
