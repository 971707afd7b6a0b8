"""Property tests of the prompt sampler: random shapes (n < d, d = 1, n = 1), spectra from 1e-6 to 1e6, every
input law, prior and noise model, both float dtypes: the batch has the documented shapes and layout, is finite,
and is a deterministic function of the generator; a law whose scale cannot be represented is a clear error."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icl.prompts import PromptConfig, PromptDistribution

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@st.composite
def prompt_laws(draw):
    d = draw(st.integers(1, 6))
    n = draw(st.integers(1, 6))
    exps = draw(st.lists(st.floats(-6, 6), min_size=d, max_size=d))
    cfg = PromptConfig(
        d=d,
        n=n,
        eigenvalues=tuple(10.0**e for e in exps) if draw(st.booleans()) else None,
        rotation=draw(st.sampled_from(["haar", "identity"])),
        input_law=draw(st.sampled_from(["gaussian", "uniform"])),
        uniform_a=10.0 ** draw(st.floats(-3, 3)),
        w_prior=draw(st.sampled_from(["identity", "inverse_sigma"])),
        noise=draw(st.sampled_from(["none", "fixed", "uniform", "categorical"])),
        sigma=draw(st.floats(0, 1e3)),
        sigma_max=draw(st.floats(0, 1e3)),
        sigma_set=tuple(draw(st.lists(st.floats(0, 1e3), min_size=1, max_size=3))),
    )
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return cfg, dtype, draw(st.integers(1, 4)), draw(st.integers(0, 2**31))


@SETTINGS
@given(prompt_laws())
def test_batches_have_documented_shapes_and_are_finite(law):
    cfg, dtype, B, seed = law
    dist = PromptDistribution(cfg, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    batch = dist.sample(B, torch.Generator().manual_seed(seed + 1))
    n, d = cfg.n, cfg.d
    shapes = dict(X=(B, n, d), y=(B, n), x_query=(B, d), y_query=(B,), w_star=(B, d), Sigma=(d, d), U=(d, d))
    for name, shape in shapes.items():
        t = getattr(batch, name)
        assert tuple(t.shape) == shape, name
        assert t.dtype == dtype, name
        assert bool(torch.isfinite(t).all()), f"{name} is not finite"
    Z = batch.Z()
    assert Z.shape == (B, n + 1, d + 1)
    assert bool(torch.isfinite(Z).all())
    assert torch.equal(Z[:, :n, :d], batch.X) and torch.equal(Z[:, :n, d], batch.y)
    assert torch.equal(Z[:, n, :d], batch.x_query) and bool((Z[:, n, d] == 0).all())
    # the query label is noiseless: y_q = <w*, x_q>
    expect = (batch.x_query.double() * batch.w_star.double()).sum(-1)
    scale = (batch.x_query.double().abs() * batch.w_star.double().abs()).sum(-1) + 1e-300
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert bool(((batch.y_query.double() - expect).abs() <= tol * scale).all())
    # noise levels are within the law
    assert bool((batch.sigma >= 0).all())
    if cfg.noise == "none":
        assert torch.equal(batch.y, torch.einsum("bnd,bd->bn", batch.X, batch.w_star)) or bool(
            torch.allclose(batch.y.double(), torch.einsum("bnd,bd->bn", batch.X.double(), batch.w_star.double()))
        )
    # Σ has the configured spectrum (times the uniform law's variance a²/3)
    var_g = cfg.uniform_a**2 / 3 if cfg.input_law == "uniform" else 1.0
    lam = torch.tensor(sorted(cfg.spectrum()), dtype=torch.float64) * var_g
    got = torch.linalg.eigvalsh(dist.Sigma)
    assert torch.allclose(got, lam, rtol=1e-6, atol=1e-9 * float(lam.max()))


@SETTINGS
@given(prompt_laws())
def test_sampling_is_a_function_of_the_generator(law):
    cfg, dtype, B, seed = law
    dist = PromptDistribution(cfg, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    a = dist.sample(B, torch.Generator().manual_seed(seed))
    b = dist.sample(B, torch.Generator().manual_seed(seed))
    for name in ("X", "y", "x_query", "y_query", "w_star", "sigma"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(0, 1000))
def test_rank_deficient_contexts_are_finite(d, n, seed):
    """n < d gives a rank-deficient X (rank ≤ n); the token matrix is still finite and well formed."""
    dist = PromptDistribution(PromptConfig(d=d, n=n), generator=torch.Generator().manual_seed(seed))
    batch = dist.sample(3, torch.Generator().manual_seed(seed))
    assert int(torch.linalg.matrix_rank(batch.X.double()).max()) <= min(n, d)
    assert bool(torch.isfinite(batch.Z()).all())


@pytest.mark.parametrize(
    "cfg, dtype",
    [
        (PromptConfig(d=2, n=3, eigenvalues=(1e40, 1.0)), torch.float32),
        (PromptConfig(d=2, n=3, eigenvalues=(1e-40, 1.0), w_prior="inverse_sigma"), torch.float32),
        (PromptConfig(d=1, n=3, noise="fixed", sigma=1e30), torch.float32),
        (PromptConfig(d=1, n=2, eigenvalues=(1e306,)), torch.float64),
    ],
)
def test_unrepresentable_scale_is_a_clear_error(cfg, dtype):
    dist = PromptDistribution(cfg, generator=torch.Generator().manual_seed(0), dtype=dtype)
    with pytest.raises(ValueError, match=f"overflows {str(dtype).replace('torch.', '')}"):
        dist.sample(2, torch.Generator().manual_seed(0))


def test_large_but_representable_scale_in_float64_is_fine():
    cfg = PromptConfig(d=2, n=3, eigenvalues=(1e40, 1.0))
    dist = PromptDistribution(cfg, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batch = dist.sample(2, torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(batch.Z()).all()) and math.isfinite(float((batch.y_query**2).mean()))
