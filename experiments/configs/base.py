"""The fields every multi-seed study's config has (:class:`StudyConfig`), torch-free (see
:mod:`experiments.configs`); :mod:`experiments.study` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass

from icl.config import Config, spec
from icl.tracking import TRACKERS

PROFILES = ("quick", "standard", "paper")


@dataclass(frozen=True)
class StudyConfig(Config):
    """Fields every study has.

    Attributes:
        profile: ``quick`` (minutes; run by the tests), ``standard`` (under 30 minutes on 2 cores) or
            ``paper`` (the paper's budget).
        seeds: the root seeds; each gives its own rotation, initialisation and data streams.
        checkpoint_every: steps between checkpoints of each trained model.
        vectorise_seeds: train each model for all seeds at once (S models stacked, one vmapped step, any
            registered optimizer); off, the seeds are trained one by one. Each seed's numbers equal the
            one-by-one run's up to float rounding (tests/test_study_vectorised.py: 1e-5 relative on every
            result); a resumed run may switch it.
        track: an experiment tracker the training numbers go to while the run goes on: ``tensorboard``
            (``RUN_DIR/tensorboard``, one TensorBoard run per model and seed) or ``wandb`` (offline, in
            ``RUN_DIR/wandb``); ``none`` by default (:mod:`icl.tracking`; a resumed run may switch it).
    """

    profile: str = spec("standard", choices=PROFILES)
    seeds: tuple[int, ...] = spec((0, 1, 2), ge=0)
    checkpoint_every: int = spec(1000, ge=1)
    vectorise_seeds: bool = True
    track: str = spec("none", choices=TRACKERS)

    def check(self) -> None:
        super().check()
        if not self.seeds:
            from icl.config import ConfigError

            raise ConfigError("seeds must hold at least one seed")
