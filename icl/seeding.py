"""Named random streams derived from one root seed.

Every random draw in the framework comes from an explicit ``torch.Generator``. A run has one root seed; the
streams ``train``, ``val``, ``test``, ``init`` (and any other name, e.g. ``rotation``) are generators seeded by
``numpy.random.SeedSequence(root, spawn_key=(crc32(name),))``, so that the same root seed and name always give
the same stream and different names give statistically independent, non-overlapping streams.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

STREAMS = ("train", "val", "test", "init", "rotation")


def derive_seed(root: int, name: str) -> int:
    """A 63-bit seed for stream ``name`` of root seed ``root``."""
    if isinstance(root, bool) or not isinstance(root, int) or root < 0:
        raise ValueError(f"seed must be an integer >= 0, got {root!r}")
    ss = np.random.SeedSequence(entropy=root, spawn_key=(zlib.crc32(name.encode()),))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class Streams:
    """The named generators of one run.

    Example:
        >>> streams = Streams(0)
        >>> g = streams.generator("train")  # a fresh generator, always in the same initial state
    """

    def __init__(self, seed: int, device: str | torch.device = "cpu") -> None:
        derive_seed(seed, "check")
        self.seed = seed
        self.device = torch.device(device)

    def seed_of(self, name: str) -> int:
        """The derived seed of a stream (recorded in config.json)."""
        return derive_seed(self.seed, name)

    def generator(self, name: str, device: str | torch.device | None = None) -> torch.Generator:
        """A new generator for stream ``name``, in its initial state."""
        g = torch.Generator(device=torch.device(device) if device is not None else self.device)
        g.manual_seed(self.seed_of(name))
        return g

    def seeds(self) -> dict[str, int]:
        """The derived seeds of the standard streams."""
        return {name: self.seed_of(name) for name in STREAMS}
