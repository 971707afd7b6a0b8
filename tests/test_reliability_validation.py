"""Tensor validation: icl.validation itself, and the inputs of the prompt sampler and the model. Every error is
a ValueError that names the tensor (or argument) and what was expected, raised before any compute."""

from __future__ import annotations

import pytest
import torch

from icl.prompts import PromptConfig, PromptDistribution
from icl.validation import (
    check_float_dtype,
    check_generator,
    check_regression,
    check_same,
    check_steps,
    check_tensor,
)
from learned_optimizers import LinearSelfAttention, LSAConfig


# -- icl.validation ------------------------------------------------------------------------------------------
def test_check_tensor_accepts_and_returns_unchanged():
    t = torch.zeros(2, 3)
    assert check_tensor("X", t, shape=(2, None)) is t


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        ([1.0, 2.0], {}, r"X must be a torch.Tensor, got list"),
        (torch.zeros(2, 3), {"ndim": 3}, r"X must have shape 3 dimensions, got \(2, 3\)"),
        (torch.zeros(2, 3), {"shape": (2, 3, 1)}, r"X must have shape \(2, 3, 1\), got \(2, 3\)"),
        (torch.zeros(2, 3), {"shape": (None, 4)}, r"X must have shape \(\*, 4\), got \(2, 3\) \(dimension 1\)"),
        (torch.zeros(2, dtype=torch.int64), {}, r"X must be a floating tensor, got dtype torch.int64"),
        (torch.tensor([1.0, float("nan")]), {}, r"X contains NaN or infinite values"),
        (torch.tensor([float("-inf")]), {}, r"X contains NaN or infinite values"),
    ],
)
def test_check_tensor_errors_name_tensor_and_expectation(value, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_tensor("X", value, **kwargs)


def test_check_tensor_options():
    check_tensor("X", torch.tensor([float("nan")]), finite=False)
    check_tensor("idx", torch.arange(3), floating=False)
    check_tensor("X", torch.zeros(0, 3))  # empty is finite


def test_check_same_names_the_odd_one():
    a, b = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="y has dtype torch.float64 but X has torch.float32"):
        check_same(["X", "y"], [a, b])
    meta = torch.zeros(2, device="meta")
    with pytest.raises(ValueError, match="y is on meta but X is on cpu"):
        check_same(["X", "y"], [a, meta])


def test_check_regression():
    X, y = torch.randn(2, 4, 3), torch.randn(2, 4)
    assert check_regression(X, y) == (X, y)
    with pytest.raises(ValueError, match=r"y must have shape \(2, 4\), got \(2, 5\)"):
        check_regression(X, torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"X must have shape \(B, n, d\) with B, n, d >= 1, got \(2, 0, 3\)"):
        check_regression(torch.zeros(2, 0, 3), torch.zeros(2, 0))
    with pytest.raises(ValueError, match=r"X must have shape \(\*, \*, \*\), got \(4, 3\)"):
        check_regression(torch.randn(4, 3), y)
    with pytest.raises(ValueError, match="y has dtype torch.float64"):
        check_regression(X, y.double())
    with pytest.raises(ValueError, match="y contains NaN"):
        check_regression(X, torch.full((2, 4), float("nan")))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3", None])
def test_check_steps(bad):
    assert check_steps(0) == 0 and check_steps(7) == 7
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        check_steps(bad)


def test_check_generator_and_dtype():
    g = torch.Generator()
    assert check_generator("generator", g) is g
    with pytest.raises(ValueError, match="generator must be a torch.Generator .* got int"):
        check_generator("generator", 0)
    assert check_float_dtype("dtype", torch.float64) is torch.float64
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        check_float_dtype("dtype", torch.int32)
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        check_float_dtype("dtype", "float32")


# -- the prompt sampler ----------------------------------------------------------------------------------------
CFG = PromptConfig(d=3, n=4)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"U": torch.eye(4, dtype=torch.float64)}, r"U must have shape \(3, 3\), got \(4, 4\)"),
        ({"U": torch.ones(3, 3, dtype=torch.float64)}, r"U must be orthogonal"),
        ({"U": torch.full((3, 3), float("nan"))}, r"U contains NaN"),
        ({"U": torch.eye(3, dtype=torch.int64)}, r"U must be a floating tensor"),
        ({}, r"a generator \(the run's 'rotation' stream\) is needed"),
        ({"generator": 0}, r"generator must be a torch.Generator"),
        ({"generator": gen(), "dtype": torch.int64}, r"dtype must be a floating torch dtype"),
    ],
)
def test_distribution_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromptDistribution(CFG, **kwargs)


def test_distribution_rejects_non_config():
    with pytest.raises(ValueError, match="cfg must be a PromptConfig, got dict"):
        PromptDistribution({"d": 3, "n": 4}, generator=gen())


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "8"])
def test_sample_rejects_bad_batch_size(bad):
    dist = PromptDistribution(CFG, generator=gen())
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        dist.sample(bad, gen())


def test_sample_needs_an_explicit_generator():
    dist = PromptDistribution(CFG, generator=gen())
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        dist.sample(2, None)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        dist.sample(2, 0)


# -- the model ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "Z, message",
    [
        (torch.zeros(2, 5, 3), r"Z must have shape \(\*, \*, 4\), got \(2, 5, 3\)"),
        (torch.zeros(5, 4), r"Z must have shape \(\*, \*, 4\), got \(5, 4\)"),
        (torch.zeros(2, 1, 4), r"Z must hold at least one context token and the query"),
        (torch.zeros(2, 5, 4, dtype=torch.float64), r"Z has dtype torch.float64 but the model's weights are"),
        (torch.full((2, 5, 4), float("inf")), r"Z contains NaN or infinite values"),
    ],
)
def test_model_rejects_bad_tokens(Z, message):
    model = LinearSelfAttention(3, LSAConfig())
    with pytest.raises(ValueError, match=message):
        model(Z)
