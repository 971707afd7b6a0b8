"""Spectral LSA / Memformer models (A_ℓ = U diag(s_ℓ) Uᵀ): exactness against preconditioned GD, heavy ball and the
unconstrained models, the Stiefel declaration, the registry round trip and the eigenbasis angles."""

import math

import pytest
import torch

from icl.config import ConfigError
from icl.optim import ManifoldAdam
from icl.prompts import PromptConfig, PromptDistribution
from learned_optimizers import LinearSelfAttention, LSAConfig, Memformer, MemformerConfig
from learned_optimizers.registry import build_model, model_name
from learned_optimizers.spectral import (
    SpectralLSA,
    SpectralLSAConfig,
    SpectralMemformer,
    SpectralMemformerConfig,
    eigenbasis_angles,
    stiefel_violation,
)
from reference_optimizers import heavy_ball, preconditioned_gd

AHN = PromptConfig(d=5, n=20, eigenvalues=(1.0, 1.0, 0.25, 0.0625, 1.0), w_prior="inverse_sigma")


def _batch(count=256, seed=0):
    dist = PromptDistribution(AHN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return dist, dist.sample(count, torch.Generator().manual_seed(seed + 1))


def _eigen(dist):
    lam, V = torch.linalg.eigh(dist.Sigma)
    return lam, V


@pytest.mark.parametrize("spectrum", ["linear", "log"])
def test_spectral_sparse_with_the_eigenbasis_is_preconditioned_gd(spectrum):
    dist, b = _batch()
    lam, V = _eigen(dist)
    c = torch.tensor([0.43, 0.69, 1.72], dtype=torch.float64)
    model = SpectralLSA(5, SpectralLSAConfig(layers=3, spectrum=spectrum, spectrum_init=0.3)).double()
    model.set_spectral(U=V, s=c[:, None, None] / lam)
    w = preconditioned_gd(b.X, b.y, 3, torch.linalg.inv(dist.Sigma), eta=c)
    expected = (w[:, -1] * b.x_query).sum(-1)
    assert torch.allclose(model(b.Z()), expected, rtol=0, atol=1e-10)
    per_layer = (w * b.x_query[:, None]).sum(-1)  # read-outs after 0..L layers
    assert torch.allclose(model.layer_predictions(b.Z()), per_layer, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode,heads,tied", [("sparse", 1, False), ("sparse", 2, False), ("gdpp", 1, False),
                                             ("gdpp", 2, True)])  # fmt: skip
@pytest.mark.parametrize("shared", [True, False])
def test_spectral_lsa_equals_the_unconstrained_model_with_the_same_matrices(mode, heads, tied, shared):
    _, b = _batch(64)
    cfg = SpectralLSAConfig(layers=3, heads=heads, mode=mode, tied=tied, init_std=0.3, shared_basis=shared)
    spec = SpectralLSA(5, cfg, generator=torch.Generator().manual_seed(3)).double()
    ref = LinearSelfAttention(5, LSAConfig(layers=3, heads=heads, mode=mode, tied=tied)).double()
    ref.set_weights(**spec.matrices())
    assert len(spec.bases) == (1 if shared or tied else 3)
    A = spec.matrices()["A"]
    assert torch.allclose(A, A.mT, atol=1e-14)  # U diag(s) Uᵀ is symmetric
    if not shared and not tied:  # per-layer bases: layers differ in eigenvectors, not only in spectra
        assert not torch.allclose(A[0, 0] @ A[1, 0], A[1, 0] @ A[0, 0], atol=1e-6)
    assert torch.allclose(spec(b.Z()), ref(b.Z()), rtol=0, atol=1e-10)
    assert torch.allclose(spec.layer_predictions(b.Z()), ref.layer_predictions(b.Z()), rtol=0, atol=1e-10)


@pytest.mark.parametrize("memory", ["cgd", "lfom"])
def test_spectral_memformer_equals_the_unconstrained_memformer(memory):
    _, b = _batch(64)
    att = LSAConfig(layers=3, mode="sparse", init_std=0.3)
    kw = dict(attention=att, memory=memory, gamma_init="ones")
    spec = SpectralMemformer(5, SpectralMemformerConfig(**kw), generator=torch.Generator().manual_seed(4)).double()
    ref = Memformer(5, MemformerConfig(**kw)).double()
    ref.attention.set_weights(A=spec.matrices()["A"])
    mem = dict(alpha=torch.tensor([1.0, 0.8, 1.2]), gamma=torch.tensor([0.0, 0.3, 0.5])) if memory == "cgd" else \
        dict(Gamma=torch.tensor([1.0, 0.4, 0.7]))  # fmt: skip
    spec.set_memory(**mem)
    ref.set_memory(**mem)
    assert torch.allclose(spec(b.Z()), ref(b.Z()), rtol=0, atol=1e-10)
    assert torch.allclose(spec.layer_predictions(b.Z()), ref.layer_predictions(b.Z()), rtol=0, atol=1e-10)


def test_spectral_cgd_memformer_with_the_eigenbasis_is_preconditioned_heavy_ball():
    """A_ℓ = aΣ⁻¹, α_ℓ = 1: s_ℓ = aΣ⁻¹∇R + γ_ℓ s_{ℓ−1}, i.e. heavy ball with β_ℓ = γ_ℓ on Σ^{-½}-whitened inputs."""
    dist, b = _batch()
    lam, V = _eigen(dist)
    cfg = SpectralMemformerConfig(attention=LSAConfig(layers=3, mode="sparse"), memory="cgd")
    model = SpectralMemformer(5, cfg).double()
    a, gammas = 0.8, torch.tensor([0.0, 0.35, 0.6], dtype=torch.float64)
    model.set_spectral(U=V, s=a / lam).set_memory(alpha=torch.ones(3), gamma=gammas)
    W = (V * lam.rsqrt()) @ V.T  # Σ^{-½}
    w = heavy_ball(b.X @ W, b.y, 3, eta=a, beta=gammas)
    expected = (w[:, -1] * (b.x_query @ W)).sum(-1)
    assert torch.allclose(model(b.Z()), expected, rtol=0, atol=1e-10)


def test_param_groups_put_the_basis_on_stiefel_and_manifold_adam_keeps_it_there():
    dist, b = _batch(512)
    model = SpectralLSA(5, SpectralLSAConfig(layers=2, init_std=0.1), generator=torch.Generator().manual_seed(0))
    model = model.double()
    groups = model.param_groups(lr=0.05)
    assert groups[0]["manifold"] == "stiefel" and groups[0]["params"] == list(model.bases)
    assert {id(p) for p in groups[1]["params"]} == {id(model.A.spectra)}
    opt = ManifoldAdam(groups, lr=0.05, seed=0)
    Z, y = b.Z(), b.y_query
    with torch.no_grad():
        first = float((model(Z) - y).square().mean())
    for _ in range(60):
        opt.zero_grad()
        (model(Z) - y).square().mean().backward()
        opt.step()
    with torch.no_grad():
        assert float((model(Z) - y).square().mean()) < 0.5 * first
    assert stiefel_violation(model) < 1e-12


@pytest.mark.parametrize("name,cfg", [
    ("spectral_lsa", SpectralLSAConfig(layers=2, mode="gdpp", shared_basis=False, spectrum="log", spectrum_init=0.5)),
    ("spectral_memformer", SpectralMemformerConfig(attention=LSAConfig(layers=2), memory="lfom", gamma_init="ones",
                                                   spectrum="log", spectrum_init=0.5)),
])  # fmt: skip
def test_registry_rebuilds_a_spectral_model_from_its_config_and_state(name, cfg):
    _, b = _batch(32)
    model = build_model(name, 5, cfg.to_dict(), generator=torch.Generator().manual_seed(5)).double()
    assert model_name(model) == name
    twin = build_model(name, 5, model.cfg.to_dict()).double()
    assert not torch.allclose(twin(b.Z()), model(b.Z()))
    twin.load_state_dict(model.state_dict())
    assert torch.equal(twin(b.Z()), model(b.Z()))


def test_bad_spectral_configs_are_refused():
    with pytest.raises(ConfigError, match="mode"):
        SpectralLSAConfig(mode="full")
    with pytest.raises(ConfigError, match="spectrum_init"):
        SpectralLSAConfig(spectrum="log")
    with pytest.raises(ConfigError, match="mode"):
        SpectralMemformerConfig(attention=LSAConfig(mode="diag"))
    with pytest.raises(ValueError, match="set_spectral"):
        SpectralLSA(5, SpectralLSAConfig()).set_weights(A=torch.eye(5))


def test_eigenbasis_angles():
    lam = torch.tensor([1.0, 1.0, 0.25, 0.0625, 1.0], dtype=torch.float64)
    V = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    # a permutation, sign flips and a rotation inside the 3-dim eigenspace of λ = 1 cost nothing
    R = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]
    U = V.clone()
    U[:, [0, 1, 4]] = V[:, [0, 1, 4]] @ R
    U = -U[:, [3, 0, 2, 4, 1]]
    assert torch.allclose(eigenbasis_angles(U, V, lam), torch.zeros(3, dtype=torch.float64), atol=1e-7)
    # a Givens rotation by θ between the λ = 1/4 and λ = 1/16 directions: both angles are θ, the λ = 1 space 0
    theta = 0.2
    G = V.clone()
    G[:, 2] = math.cos(theta) * V[:, 2] + math.sin(theta) * V[:, 3]
    G[:, 3] = -math.sin(theta) * V[:, 2] + math.cos(theta) * V[:, 3]
    got = eigenbasis_angles(G, V, lam)  # order: λ = 1/16, 1/4, 1
    assert torch.allclose(got, torch.tensor([theta, theta, 0.0], dtype=torch.float64), atol=1e-7)
