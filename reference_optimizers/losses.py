"""Query losses of reference iterates: every method reports loss vs steps on the models' own prompts."""

from __future__ import annotations

import torch
from einops import einsum

from icl.validation import check_same, check_tensor


def query_loss(iterates: torch.Tensor, x_query: torch.Tensor, y_query: torch.Tensor) -> torch.Tensor:
    """Squared error of the linear predictions ŷ_t = ⟨w_t, x_query⟩ on the query, per prompt and step.

    The loss is the plain squared error (ŷ_t − y_query)² (multiply by ½ for the ½·MSE convention of
    von Oswald et al. 2023; docs/conventions.md).

    Args:
        iterates: a trajectory (B, steps+1, d) from an iterative method, or solutions (B, d) from a
            closed form.
        x_query: query inputs, (B, d).
        y_query: query targets, (B,).

    Returns:
        (B, steps+1) for a trajectory, (B,) for solutions.
    """
    iterates = check_tensor("iterates", iterates)
    if iterates.ndim not in (2, 3):
        raise ValueError(f"iterates must have shape (B, steps+1, d) or (B, d), got {tuple(iterates.shape)}")
    B, d = iterates.shape[0], iterates.shape[-1]
    x_query = check_tensor("x_query", x_query, shape=(B, d))
    y_query = check_tensor("y_query", y_query, shape=(B,))
    check_same(["iterates", "x_query", "y_query"], [iterates, x_query, y_query])
    if iterates.ndim == 2:
        return (einsum(iterates, x_query, "b d, b d -> b") - y_query) ** 2
    return (einsum(iterates, x_query, "b t d, b d -> b t") - y_query[:, None]) ** 2


def mean_query_loss(iterates: torch.Tensor, x_query: torch.Tensor, y_query: torch.Tensor) -> torch.Tensor:
    """:func:`query_loss` averaged over prompts: (steps+1,) for a trajectory, a scalar for solutions."""
    return query_loss(iterates, x_query, y_query).mean(dim=0)
