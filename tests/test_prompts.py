"""The prompt sampler: its law (covariance, w* prior, noise), the token layout, determinism and streams."""

import math

import numpy as np
import pytest
import torch

from icl.config import ConfigError
from icl.prompts import PromptConfig, PromptDistribution, haar_orthogonal, zero_predictor_loss
from icl.seeding import Streams, derive_seed

AHN = (1.0, 1.0, 0.25, 0.0625, 1.0)


def make(cfg, seed=0, dtype=torch.float64):
    s = Streams(seed)
    return PromptDistribution(cfg, generator=s.generator("rotation"), dtype=dtype), s


@pytest.mark.parametrize("law", ["gaussian", "uniform"])
def test_empirical_covariance_matches_sigma(law):
    cfg = PromptConfig(d=5, n=1, eigenvalues=AHN, input_law=law, uniform_a=0.5)
    dist, s = make(cfg)
    b = dist.sample(100_000, s.generator("train"))
    x = torch.cat([b.X.reshape(-1, 5), b.x_query], 0)  # 200,000 draws
    N = x.shape[0]
    emp = x.T @ x / N
    Sigma = dist.Sigma
    # Var of the (i,j) entry of the sample second moment: (Σ_ii Σ_jj + Σ_ij²)/N for Gaussian x; the uniform law
    # has lighter tails, so the same bound holds. 5 standard errors.
    se = torch.sqrt((torch.outer(Sigma.diagonal(), Sigma.diagonal()) + Sigma**2) / N)
    assert torch.all((emp - Sigma).abs() <= 5 * se), (emp - Sigma).abs() / se
    # and the spectrum is what the config says
    expected = torch.tensor(sorted(AHN)) * (0.25 / 3 if law == "uniform" else 1.0)
    assert torch.allclose(torch.linalg.eigvalsh(Sigma), expected.double(), atol=1e-12)


def test_uniform_law_range_and_identity_rotation():
    cfg = PromptConfig(d=3, n=10, input_law="uniform", uniform_a=0.5, rotation="identity")
    dist, s = make(cfg)
    b = dist.sample(2000, s.generator("train"))
    assert b.X.abs().max() <= 0.5 and b.X.abs().max() > 0.49
    assert torch.equal(dist.U, torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("prior", ["identity", "inverse_sigma"])
def test_w_star_prior(prior):
    cfg = PromptConfig(d=5, n=2, eigenvalues=AHN, w_prior=prior)
    dist, s = make(cfg)
    b = dist.sample(100_000, s.generator("train"))
    emp = b.w_star.T @ b.w_star / b.batch_size
    target = torch.eye(5, dtype=torch.float64) if prior == "identity" else torch.linalg.inv(dist.Sigma)
    se = torch.sqrt((torch.outer(target.diagonal(), target.diagonal()) + target**2) / b.batch_size)
    assert torch.all((emp - target).abs() <= 5 * se)
    # noiseless labels are exactly <w*, x>
    assert torch.allclose(b.y, torch.einsum("bnd,bd->bn", b.X, b.w_star), atol=1e-12)
    # E[y_q²] = tr(Σ Ω), the zero predictor's loss
    m = b.y_query.square().mean().item()
    assert abs(m - zero_predictor_loss(cfg)) < 5 * math.sqrt(2 * zero_predictor_loss(cfg) ** 2 / b.batch_size) * 2


@pytest.mark.parametrize(
    "noise, kw, second_moment",
    [
        ("fixed", {"sigma": 0.7}, 0.49),
        ("uniform", {"sigma_max": 3.0}, 3.0),  # E σ² = σ_max²/3
        ("categorical", {"sigma_set": (1.0, 3.0)}, 5.0),
    ],
)
def test_noise_law_and_noiseless_query(noise, kw, second_moment):
    cfg = PromptConfig(d=3, n=20, noise=noise, **kw)
    dist, s = make(cfg)
    b = dist.sample(50_000, s.generator("train"))
    resid = b.y - torch.einsum("bnd,bd->bn", b.X, b.w_star)
    # per-prompt σ is constant within a prompt; the residual variance matches σ² per prompt on average
    assert abs(resid.square().mean().item() - second_moment) < 0.03 * second_moment + 0.01
    assert math.isclose(cfg.mean_noise_var(), second_moment, rel_tol=1e-12)
    if noise == "uniform":
        assert b.sigma.min() >= 0 and b.sigma.max() <= 3.0
        # U(0, 3): mean 1.5, sd 3/√12
        assert abs(b.sigma.mean().item() - 1.5) < 5 * 3 / math.sqrt(12 * 50_000)
    if noise == "categorical":
        assert set(b.sigma.unique().tolist()) == {1.0, 3.0}
        assert abs((b.sigma == 3.0).double().mean().item() - 0.5) < 0.01
    # the query target is never noisy
    assert torch.allclose(b.y_query, torch.einsum("bd,bd->b", b.x_query, b.w_star), atol=1e-12)


def test_token_matrix_layout():
    cfg = PromptConfig(d=4, n=7)
    dist, s = make(cfg)
    b = dist.sample(3, s.generator("train"))
    Z = b.Z()
    assert Z.shape == (3, 8, 5)
    assert torch.equal(Z[:, :7, :4], b.X) and torch.equal(Z[:, :7, 4], b.y)
    assert torch.equal(Z[:, 7, :4], b.x_query) and torch.all(Z[:, 7, 4] == 0)


def test_same_seed_same_batches_and_streams_independent():
    cfg = PromptConfig(d=5, n=20, eigenvalues=AHN)
    d1, s1 = make(cfg, seed=7)
    d2, s2 = make(cfg, seed=7)
    assert torch.equal(d1.U, d2.U)
    a = d1.sample(64, s1.generator("train"))
    b = d2.sample(64, s2.generator("train"))
    assert torch.equal(a.X, b.X) and torch.equal(a.w_star, b.w_star)
    # different streams and different seeds give different draws
    c = d1.sample(64, s1.generator("test"))
    assert not torch.equal(a.X, c.X)
    d3, s3 = make(cfg, seed=8)
    assert not torch.equal(d1.U, d3.U)
    # the derived seeds of all streams of many roots are distinct (no shared state between streams)
    seeds = {derive_seed(r, n) for r in range(200) for n in ("train", "val", "test", "init", "rotation")}
    assert len(seeds) == 1000
    # and the streams' draws are uncorrelated
    x = torch.randn(200_000, generator=s1.generator("train"), dtype=torch.float64)
    y = torch.randn(200_000, generator=s1.generator("val"), dtype=torch.float64)
    assert abs(float(np.corrcoef(x.numpy(), y.numpy())[0, 1])) < 5 / math.sqrt(200_000)


def test_haar_rotation_is_orthogonal_and_haar():
    g = torch.Generator().manual_seed(0)
    Us = torch.stack([haar_orthogonal(3, g) for _ in range(4000)])
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(Us.transpose(1, 2) @ Us, eye.expand(4000, 3, 3), atol=1e-12)
    # Haar: every entry has mean 0 and variance 1/d
    assert Us.mean(0).abs().max() < 5 * math.sqrt(1 / 3 / 4000)
    assert (Us.square().mean(0) - 1 / 3).abs().max() < 0.03


def test_given_rotation_is_used_and_checked():
    cfg = PromptConfig(d=2, n=3, eigenvalues=(4.0, 1.0))
    U = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    dist = PromptDistribution(cfg, U=U)
    assert torch.allclose(dist.Sigma, torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64)))
    with pytest.raises(ValueError, match="orthogonal"):
        PromptDistribution(cfg, U=2 * U)
    with pytest.raises(ValueError, match="U must have shape"):
        PromptDistribution(cfg, U=torch.eye(3))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"d": 0}, "d = 0 is out of range: must be >= 1"),
        ({"n": -1}, "n = -1 is out of range"),
        ({"sigma": -0.1}, "sigma = -0.1 is out of range: must be >= 0"),
        ({"d": 2, "eigenvalues": (1.0, 0.0)}, r"eigenvalues\[1\] = 0.0 is out of range: must be > 0"),
        ({"d": 3, "eigenvalues": (1.0, 2.0)}, "eigenvalues has 2 entries but d = 3"),
        ({"noise": "loud"}, "noise = 'loud' is not one of"),
        ({"d": 2.5}, "d must be an integer"),
    ],
)
def test_bad_prompt_config(kw, match):
    with pytest.raises(ConfigError, match=match):
        PromptConfig(**kw)


def test_sample_rejects_bad_batch_size(gen):
    dist = PromptDistribution(PromptConfig(d=2, n=2), generator=gen)
    with pytest.raises(ValueError, match="batch_size"):
        dist.sample(0, gen)


@pytest.mark.parametrize("law", ["gaussian", "uniform"])
def test_draw_into_a_token_array_equals_draw(law):
    """draw_into writes the inputs into the x columns of a token array in place (what sample_tokens does per
    seed): the same draws as draw, bit for bit, the y column untouched, the generator left in the same state."""
    cfg = PromptConfig(d=5, n=20, eigenvalues=AHN, w_prior="inverse_sigma", input_law=law)
    dist, s = make(cfg, dtype=torch.float32)
    Z = torch.full((64, 21, 6), 7.0)
    g1, g2 = s.generator("train"), s.generator("train")
    w, sigma, xi = dist.draw_into(Z[..., :5], g1)
    x2, w2, sigma2, xi2 = dist.draw(64, g2)
    assert torch.equal(Z[..., :5], x2) and torch.equal(w, w2) and torch.equal(sigma, sigma2) and xi is xi2 is None
    assert bool((Z[..., 5] == 7.0).all()) and torch.equal(g1.get_state(), g2.get_state())
    with pytest.raises(ValueError, match=r"x must be \(64, 21, 5\) torch.float32"):
        dist.draw_into(torch.empty(64, 21, 5, dtype=torch.float64), g1)
