"""The fast paths of the linear models equal the plain token recursion: Gram-space forward, structured W."""

import itertools

import pytest
import torch

from learned_optimizers import LinearSelfAttention, LSAConfig, Memformer, MemformerConfig
from learned_optimizers.linear_attention import MODES, combine_heads, context_gram

f64 = {"dtype": torch.float64}


def tokens_reference(model, Z):
    """Z ← Z + (1/n) Σ_h Z Q_hᵀ G P_hᵀ with the padded P, Q of ``layer_weights`` and a plain einsum."""
    n = Z.shape[1] - 1
    for layer in range(model.layers):
        P, Q = model.layer_weights(layer)
        W = torch.einsum("hji,bjk,hlk->bil", Q, context_gram(Z), P)
        Z = Z + Z @ W / n
    return -Z[:, -1, -1]


@pytest.mark.parametrize("mode, heads, tied", list(itertools.product(MODES, [1, 3], [False, True])))
def test_gram_space_forward_equals_token_recursion(mode, heads, tied, gen):
    d, n = 4, 9
    model = LinearSelfAttention(d, LSAConfig(layers=3, heads=heads, mode=mode, tied=tied, init_std=0.5), gen)
    model = model.double()
    Z = torch.randn(6, n + 1, d + 1, generator=gen, **f64)
    Z[:, -1, -1] = 0
    ref = tokens_reference(model, Z)
    for out in (model(Z), model.layer_predictions(Z)[:, -1]):
        assert torch.allclose(out, ref, rtol=0, atol=1e-12 * ref.abs().max().item())


@pytest.mark.parametrize("mode", MODES)
def test_gradients_of_the_fast_path_equal_the_reference(mode, gen):
    d, n = 3, 7
    model = LinearSelfAttention(d, LSAConfig(layers=2, heads=2, mode=mode, init_std=0.5), gen).double()
    Z = torch.randn(5, n + 1, d + 1, generator=gen, **f64)
    Z[:, -1, -1] = 0
    fast = torch.autograd.grad(model(Z).square().sum(), list(model.parameters()))
    slow = torch.autograd.grad(tokens_reference(model, Z).square().sum(), list(model.parameters()))
    for a, b in zip(fast, slow):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_combine_heads_equals_einsum(gen):
    G = torch.randn(7, 5, 5, generator=gen, **f64)
    P = torch.randn(3, 4, 5, generator=gen, **f64)
    Q = torch.randn(3, 5, 6, generator=gen, **f64)
    ref = torch.einsum("hji,bjk,hlk->bil", Q, G, P)
    assert torch.allclose(combine_heads(G, P, Q), ref, rtol=1e-12, atol=1e-12)


MEMORIES = [("cgd", "scalar"), ("lfom", "scalar"), ("lfom", "feature"), ("lfom", "full")]


@pytest.mark.parametrize("memory, shape", MEMORIES)
def test_memformer_forward_equals_its_token_recursion(memory, shape, gen):
    d, n = 3, 6
    cfg = MemformerConfig(
        attention=LSAConfig(layers=3, mode="full", init_std=0.4), memory=memory, gamma_shape=shape, n=n,
        gamma_init="ones",
    )  # fmt: skip
    model = Memformer(d, cfg, gen).double()
    with torch.no_grad():
        for p in (model.alpha, model.gamma, model.Gamma):
            if p is not None:
                p.add_(0.3 * torch.randn(p.shape, generator=gen, **f64))
    Z = torch.randn(4, n + 1, d + 1, generator=gen, **f64)
    Z[:, -1, -1] = 0
    ref = model.tokens(Z)[-1][:, -1, -1].neg()
    assert torch.allclose(model(Z), ref, rtol=0, atol=1e-12 * ref.abs().max().item())
