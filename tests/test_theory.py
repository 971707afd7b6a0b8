"""Ahn et al. Theorem 1 against a Monte-Carlo estimate and a brute-force minimisation."""

import math

import pytest
import torch

from icl.prompts import PromptConfig, PromptDistribution
from learned_optimizers import LinearSelfAttention, LSAConfig
from reference_optimizers import one_layer_optimum

AHN = (1.0, 1.0, 0.25, 0.0625, 1.0)


def test_isotropic_closed_forms():
    for d, n in [(5, 20), (10, 10), (1, 1)]:
        opt = one_layer_optimum(torch.eye(d), n, "identity")
        assert math.isclose(opt.loss, d * (d + 1) / (n + d + 1), rel_tol=1e-12)
        assert torch.allclose(opt.A, n / (n + d + 1) * torch.eye(d, dtype=torch.float64), atol=1e-14)


def test_inverse_sigma_prior_closed_form():
    Sigma = torch.diag(torch.tensor(AHN, dtype=torch.float64))
    opt = one_layer_optimum(Sigma, 20, "inverse_sigma")
    assert math.isclose(opt.loss, 5 * 6 / 26, rel_tol=1e-12)
    assert torch.allclose(opt.A, 20 / 26 * torch.linalg.inv(Sigma), atol=1e-13)


@pytest.mark.parametrize("prior, noise", [("identity", "none"), ("inverse_sigma", "none"), ("identity", "fixed")])
def test_optimum_against_monte_carlo(prior, noise, gen):
    """The predicted optimal loss equals the Monte-Carlo loss of the layer set to A* (4 standard errors on
    300,000 prompts), and perturbing A* in random directions raises the loss on the same prompts."""
    cfg = PromptConfig(d=5, n=20, eigenvalues=AHN, w_prior=prior, noise=noise, sigma=0.5)
    dist = PromptDistribution(cfg, generator=gen, dtype=torch.float64)
    opt = one_layer_optimum(dist.Sigma, cfg.n, prior, cfg.mean_noise_var())
    b = dist.sample(300_000, torch.Generator().manual_seed(1))
    model = LinearSelfAttention(5, LSAConfig()).double()
    with torch.no_grad():
        model.A.copy_(opt.A[None, None])
    err = (model(b.Z()) - b.y_query).square()
    mean, se = err.mean().item(), err.std().item() / math.sqrt(err.numel())
    assert abs(mean - opt.loss) < 4 * se, (mean, opt.loss, se)
    g = torch.einsum("bnd,bn->bd", b.X, b.y) / cfg.n
    for _ in range(3):  # common random numbers: the same prompts, a perturbed A
        D = torch.randn(5, 5, generator=gen, dtype=torch.float64)
        A = opt.A + 0.1 * D / D.norm() * opt.A.norm()
        pred = torch.einsum("bi,ji,bj->b", b.x_query, A, g)  # x_qᵀ Aᵀ g
        assert (pred - b.y_query).square().mean().item() > mean


def test_bad_arguments():
    with pytest.raises(ValueError, match="Sigma must be a square"):
        one_layer_optimum(torch.ones(2, 3), 5)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        one_layer_optimum(torch.eye(2), 0)
    with pytest.raises(ValueError, match="w_prior"):
        one_layer_optimum(torch.eye(2), 3, "flat")
