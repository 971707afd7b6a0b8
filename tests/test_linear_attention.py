"""The linear self-attention layer: linear-time form = quadratic form, GD construction, input checks."""

import numpy as np
import pytest
import torch

from icl.prompts import PromptConfig, PromptDistribution
from learned_optimizers import LinearSelfAttention, LSAConfig, lsa_layer
from reference_optimizers import gradient_descent


def quadratic_lsa_layer(Z, P, Q):
    """The textbook form with the (n+1)×(n+1) score matrix (only here, to prove the linear form equal):
    Z_j ← Z_j + (1/n) Σ_h Σ_{i≤n} (z_iᵀ Q_h z_j) P_h z_i, the query never a key."""
    n = Z.shape[1] - 1
    out = Z.clone()
    mask = torch.ones(n + 1, dtype=Z.dtype)
    mask[n] = 0.0  # keys/values: context tokens only
    for h in range(P.shape[0]):
        S = Z @ Q[h] @ Z.transpose(1, 2)  # S[b, i, j] = z_iᵀ Q z_j
        S = S * mask[None, :, None]
        out = out + torch.einsum("bij,bie->bje", S, Z @ P[h].T) / n
    return out


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("n", [1, 7, 40])
def test_linear_time_equals_quadratic_form(heads, n, gen):
    d = 4
    Z = torch.randn(5, n + 1, d + 1, generator=gen, dtype=torch.float64)
    P = torch.randn(heads, d + 1, d + 1, generator=gen, dtype=torch.float64)
    Q = torch.randn(heads, d + 1, d + 1, generator=gen, dtype=torch.float64)
    fast = lsa_layer(Z, P, Q)
    slow = quadratic_lsa_layer(Z, P, Q)
    assert torch.allclose(fast, slow, rtol=0, atol=1e-12 * slow.abs().max().item())


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_sparse_construction_is_gradient_descent(layers, gen):
    """A_ℓ = η_ℓ·I, B = 0 reproduces L steps of GD with steps η_ℓ (Ahn et al. Lemma 1), to 1e-10."""
    d, n = 5, 20
    cfg = PromptConfig(d=d, n=n, eigenvalues=(1.0, 1.0, 0.25, 0.0625, 1.0))
    dist = PromptDistribution(cfg, generator=gen, dtype=torch.float64)
    b = dist.sample(256, gen)
    etas = [0.4, 0.9, 1.3, 0.7, 1.1][:layers]
    model = LinearSelfAttention(d, LSAConfig(layers=layers, mode="sparse")).double()
    with torch.no_grad():
        model.A.copy_(torch.stack([e * torch.eye(d, dtype=torch.float64) for e in etas])[:, None])
    w = gradient_descent(b.X, b.y, layers, eta=etas)
    pred_gd = torch.einsum("bd,bd->b", w[:, -1], b.x_query)
    assert torch.allclose(model(b.Z()), pred_gd, rtol=0, atol=1e-10)
    # every intermediate layer too: the query's y-slot after layer ℓ is −⟨w_ℓ, x_q⟩, and the context
    # y-slots are the residuals y_i − ⟨w_ℓ, x_i⟩
    for ell, Z in enumerate(model.tokens(b.Z())):
        assert torch.allclose(-Z[:, -1, -1], torch.einsum("bd,bd->b", w[:, ell], b.x_query), atol=1e-10)
        resid = b.y - torch.einsum("bnd,bd->bn", b.X, w[:, ell])
        assert torch.allclose(Z[:, :-1, -1], resid, atol=1e-10)


def test_gradient_descent_matches_numpy_recurrence(gen):
    X = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    etas = [0.3, 0.5, 0.1]
    w = gradient_descent(X, y, 3, eta=etas).numpy()
    for b in range(3):
        Xb, yb = X[b].numpy(), y[b].numpy()
        wb = np.zeros(4)
        for t, e in enumerate(etas):
            np.testing.assert_allclose(w[b, t], wb, atol=1e-12)
            wb = wb - e * Xb.T @ (Xb @ wb - yb) / 6
        np.testing.assert_allclose(w[b, 3], wb, atol=1e-12)


@pytest.mark.parametrize("mode", ["sparse", "gdpp"])
@pytest.mark.parametrize("layers, heads, tied", [(1, 1, False), (3, 2, False), (4, 1, True)])
def test_shapes(mode, layers, heads, tied, gen):
    model = LinearSelfAttention(3, LSAConfig(layers=layers, heads=heads, mode=mode, tied=tied), generator=gen)
    Z = torch.randn(6, 9, 4, generator=gen)
    assert model(Z).shape == (6,)
    toks = model.tokens(Z)
    assert len(toks) == layers + 1 and all(t.shape == Z.shape for t in toks)
    assert model.A.shape == (1 if tied else layers, heads, 3, 3)
    assert (model.B is not None) == (mode == "gdpp")


def test_init_is_seeded():
    a = LinearSelfAttention(3, LSAConfig(layers=2), generator=torch.Generator().manual_seed(5))
    b = LinearSelfAttention(3, LSAConfig(layers=2), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.A, b.A)
    assert abs(a.A.std().item() - 0.01) < 0.005


@pytest.mark.parametrize(
    "Z, match",
    [
        (torch.zeros(2, 5, 3), r"Z must have shape \(\*, \*, 4\)"),
        (torch.zeros(5, 4), r"Z must have shape"),
        (torch.zeros(2, 1, 4), "at least one context token"),
        (torch.full((2, 5, 4), float("nan")), "Z contains NaN"),
        (torch.zeros(2, 5, 4, dtype=torch.float64), "dtype"),
    ],
)
def test_bad_tokens_are_rejected(Z, match):
    model = LinearSelfAttention(3, LSAConfig())
    with pytest.raises(ValueError, match=match):
        model(Z)
