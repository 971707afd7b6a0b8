"""Is a learned model converged, and how stable is a test loss? The two questions every study's report answers.

**Gap to the class optimum.** A learned model's test loss is only meaningful beside the best its own class can do
on the same test prompts (a sparse or diagonal-preconditioned LSA: tuned Σ⁻¹-preconditioned GD or the Σ⁻¹
Krylov bound; a GD++/full/diag LSA: tuned GD++; L = 1: Theorem 1 of Ahn et al.; a Memformer: the best tuned linear
first-order method). :func:`class_gap` returns the gap in log test loss and whether it exceeds the study's stated
tolerance; a report flags every model that does, with the number.

**Heavy tails.** Query losses of deep models on random prompts are heavy-tailed: a few ill-conditioned prompts
dominate the mean (Ahn et al.'s L = 4 bound moves by ±0.1 in log across 40k-prompt test sets). :func:`tail_stats`
gives the mean, the median and a trimmed mean of the per-prompt losses, and the spread of log(mean) across
disjoint parts of the test set, so a report states how stable its number is.

**The Krylov bound** means one thing in every study (:func:`reference_optimizers.krylov_bound`): coefficients
fitted by least squares on *training* prompts, the loss evaluated on the *test* prompts the models are scored on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: Default trimming of :func:`tail_stats`: the trimmed mean drops this fraction of prompts at each end.
TRIM = 0.05


@dataclass(frozen=True)
class Gap:
    """A learned model's distance to its class optimum on the same test prompts.

    Attributes:
        learned: the model's log test loss.
        optimum: the class optimum's log test loss (same prompts).
        gap: ``learned − optimum`` (log units; ≥ 0 up to noise for a class optimum that is exact).
        tolerance: the study's stated tolerance.
        reference: which optimum (e.g. ``"tuned Σ⁻¹-PGD"``).
    """

    learned: float
    optimum: float
    gap: float
    tolerance: float
    reference: str

    @property
    def flagged(self) -> bool:
        """True when the model is further than ``tolerance`` above its class optimum (or its loss is not finite)."""
        return not math.isfinite(self.gap) or self.gap > self.tolerance

    def text(self) -> str:
        """``+0.027 (within 0.05 of tuned Σ⁻¹-PGD)`` or ``**+0.96: not converged** (tolerance 0.05, …)``."""
        if self.flagged:
            return f"**{self.gap:+.3g}: not converged** (tolerance {self.tolerance:g} above {self.reference})"
        return f"{self.gap:+.3g} (within {self.tolerance:g} of {self.reference})"


def class_gap(learned: float, optimum: float, tolerance: float, reference: str) -> Gap:
    """The :class:`Gap` of a learned log test loss to its class optimum's.

    Args:
        learned: the model's log test loss.
        optimum: the class optimum's log test loss on the same test prompts.
        tolerance: how far above the optimum still counts as converged (log units, > 0).
        reference: the optimum's name, for reports.

    Raises:
        ValueError: ``tolerance`` is not a positive finite number.
    """
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be a positive finite number, got {tolerance!r}")
    learned, optimum = float(learned), float(optimum)
    return Gap(learned, optimum, learned - optimum, float(tolerance), reference)


@dataclass(frozen=True)
class TailStats:
    """How a test loss is distributed over prompts (:func:`tail_stats`).

    Attributes:
        count: test prompts.
        mean, median, trimmed_mean: of the per-prompt losses.
        log_mean: log of ``mean`` (the statistic the studies report).
        parts: disjoint parts the test set was cut into for the spread.
        log_mean_parts_min, log_mean_parts_max, log_mean_parts_sd: log(mean) on each part: its range and
            standard deviation (how much the number moves with a test set ``count/parts`` prompts large).
        top_share: the share of the total loss carried by the worst 1% of prompts.
    """

    count: int
    mean: float
    median: float
    trimmed_mean: float
    log_mean: float
    parts: int
    log_mean_parts_min: float
    log_mean_parts_max: float
    log_mean_parts_sd: float
    top_share: float

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def tail_stats(losses: torch.Tensor | np.ndarray | Sequence[float], parts: int = 5, trim: float = TRIM) -> TailStats:
    """Mean, median, trimmed mean and the across-parts spread of per-prompt losses.

    Args:
        losses: per-prompt query losses (1-D, finite, ≥ 0).
        parts: cut the prompts, in order, into this many disjoint parts and report log(mean) on each.
        trim: the fraction dropped at each end for the trimmed mean (0 ≤ trim < 0.5).

    Raises:
        ValueError: ``losses`` is not 1-D, is empty, holds fewer prompts than ``parts``, or holds NaN/inf or a
            negative value; ``parts`` < 1; ``trim`` outside [0, 0.5).
    """
    x = losses.detach().cpu().double().numpy() if isinstance(losses, torch.Tensor) else np.asarray(losses, float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"losses must be a non-empty 1-D array of per-prompt losses, got shape {x.shape}")
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1 or parts > x.size:
        raise ValueError(f"parts must be an integer in [1, {x.size}], got {parts!r}")
    if not (0 <= trim < 0.5):
        raise ValueError(f"trim must be in [0, 0.5), got {trim!r}")
    if not np.isfinite(x).all() or (x < 0).any():
        raise ValueError("losses must be finite and non-negative")
    from scipy import stats

    part_logs = np.array([math.log(max(p.mean(), np.finfo(float).tiny)) for p in np.array_split(x, parts)])
    worst = np.sort(x)[::-1][: max(1, x.size // 100)]
    total = float(x.sum())
    return TailStats(
        count=int(x.size),
        mean=float(x.mean()),
        median=float(np.median(x)),
        trimmed_mean=float(stats.trim_mean(x, trim)),
        log_mean=math.log(max(float(x.mean()), np.finfo(float).tiny)),
        parts=parts,
        log_mean_parts_min=float(part_logs.min()),
        log_mean_parts_max=float(part_logs.max()),
        log_mean_parts_sd=float(part_logs.std(ddof=1)) if parts > 1 else 0.0,
        top_share=float(worst.sum() / total) if total > 0 else 0.0,
    )
