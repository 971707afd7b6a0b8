"""Evaluation metrics on fresh test prompts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from icl.prompts import PromptDistribution


@dataclass(frozen=True)
class LossEstimate:
    """A Monte-Carlo estimate of an expected loss.

    Attributes:
        mean: the mean squared error over the test prompts.
        stderr: its standard error.
        count: the number of prompts.
    """

    mean: float
    stderr: float
    count: int

    def ci95(self) -> tuple[float, float]:
        """The normal-approximation 95% confidence interval."""
        return self.mean - 1.96 * self.stderr, self.mean + 1.96 * self.stderr


def relative_frobenius(M: torch.Tensor, target: torch.Tensor) -> float:
    """‖M − T‖_F / ‖T‖_F."""
    M, T = M.detach().double().cpu(), target.detach().double().cpu()
    return float(torch.linalg.matrix_norm(M - T) / torch.linalg.matrix_norm(T))


def dist_to_identity(M: torch.Tensor) -> float:
    """Ahn et al.'s Dist(M, I) = min_c ‖M − c·I‖_F / ‖M‖_F, attained at c = tr(M)/d."""
    M = M.detach().double().cpu()
    c = torch.trace(M) / M.shape[0]
    return float(torch.linalg.matrix_norm(M - c * torch.eye(M.shape[0], dtype=M.dtype)) / torch.linalg.matrix_norm(M))


@torch.no_grad()
def test_loss(
    model: nn.Module,
    dist: PromptDistribution,
    count: int,
    generator: torch.Generator,
    *,
    chunk: int = 25_000,
) -> LossEstimate:
    """The query MSE of ``model`` on ``count`` fresh prompts, accumulated in float64."""
    if count < 2:
        raise ValueError(f"count must be >= 2 to estimate a standard error, got {count}")
    total, total_sq = 0.0, 0.0
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else dist.dtype
    for batch in dist.sample_many(count, generator, chunk=chunk):
        batch = batch.to(dtype=dtype)
        err = (model(batch.Z(), check=False) - batch.y_query).double().square()
        total += float(err.sum())
        total_sq += float(err.square().sum())
    mean = total / count
    var = max(total_sq / count - mean**2, 0.0) * count / (count - 1)
    return LossEstimate(mean=mean, stderr=math.sqrt(var / count), count=count)
