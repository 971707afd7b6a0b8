"""Hand-set constructions run their optimizer exactly: float64, 1e-10, against reference_optimizers or a numpy oracle.

A model's layer-ℓ prediction equals ⟨w_ℓ, x_q⟩ for the reference iterate w_ℓ, for every ℓ = 0…L; the implicit
weights (exact, by basis queries) equal w_ℓ themselves.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from einops import einsum

import reference_optimizers as ro
from icl.prompts import PromptConfig, PromptDistribution
from learned_optimizers.constructions import (
    gd_factorised,
    gd_lsa,
    gd_plus_plus_lsa,
    heavy_ball_memformer,
    lfom_memformer,
    preconditioned_gd_lsa,
)
from learned_optimizers.memformer import Memformer
from learned_optimizers.probes import implicit_weights

D, N, L, TOL = 4, 12, 4, 1e-10
ETAS = [0.6, 0.9, 0.4, 1.1]


def prompts(B: int = 16, d: int = D, n: int = N, seed: int = 0, **kw):
    g = torch.Generator().manual_seed(seed)
    cfg = PromptConfig(d=d, n=n, eigenvalues=tuple(np.linspace(0.3, 1.5, d)), **kw)
    return PromptDistribution(cfg, generator=g, dtype=torch.float64).sample(B, g)


def assert_runs(model, batch, iterates):
    """The model's per-layer predictions and implicit weights equal the reference iterates."""
    Z = batch.Z()
    pred_ref = einsum(iterates, batch.x_query, "b t d, b d -> b t")
    with torch.no_grad():
        torch.testing.assert_close(model.layer_predictions(Z), pred_ref, rtol=0, atol=TOL)
    torch.testing.assert_close(implicit_weights(model, Z), iterates, rtol=0, atol=TOL)


def test_preconditioned_gd_with_per_layer_preconditioners():
    b = prompts()
    g = torch.Generator().manual_seed(1)
    Ps = 0.3 * torch.randn(L, D, D, generator=g, dtype=torch.float64) + torch.eye(
        D, dtype=torch.float64
    )  # non-symmetric
    # the oracle recurrence in numpy: w ← w − P_ℓ (H w − g)
    X, y = b.X.numpy(), b.y.numpy()
    H, gv = np.einsum("bni,bnj->bij", X, X) / N, np.einsum("bni,bn->bi", X, y) / N
    w = np.zeros((16, D))
    oracle = [w]
    for P in Ps.numpy():
        w = w - np.einsum("ij,bj->bi", P, np.einsum("bij,bj->bi", H, w) - gv)
        oracle.append(w)
    model = preconditioned_gd_lsa(Ps)
    assert_runs(model, b, torch.from_numpy(np.stack(oracle, axis=1)))
    # the transpose matters: A_ℓ = P_ℓᵀ, not P_ℓ
    torch.testing.assert_close(model.A[:, 0], Ps.transpose(-1, -2))
    # and the fixed-preconditioner reference with a step schedule
    P = Ps[0]
    assert_runs(
        preconditioned_gd_lsa(torch.stack([e * P for e in ETAS])), b, ro.preconditioned_gd(b.X, b.y, L, P, ETAS)
    )


@pytest.mark.parametrize("mode", ["sparse", "gdpp", "full", "diag", "factorised"])
def test_gradient_descent_in_every_mode(mode):
    b = prompts()
    assert_runs(gd_lsa(D, L, ETAS, mode=mode), b, ro.gradient_descent(b.X, b.y, L, ETAS))


def test_factorised_proposition_1_is_one_gd_step():
    b = prompts()
    model = gd_factorised(D, 1, 0.7)
    # von Oswald et al.'s weights: W_K = W_Q = [[I, 0], [0, 0]], W_V = [[0, 0], [0, -1]], W_P = η·I
    assert torch.equal(model.W_K[0, 0][:D, :D], torch.eye(D, dtype=torch.float64)) and model.W_V[0, 0, -1, -1] == -1
    assert_runs(model, b, ro.gradient_descent(b.X, b.y, 1, 0.7))
    assert_runs(gd_factorised(D, L, ETAS), b, ro.gradient_descent(b.X, b.y, L, ETAS))


def test_gd_plus_plus():
    b = prompts()
    gammas = [0.3, 0.2, 0.5, 0.1]
    model = gd_plus_plus_lsa(D, L, ETAS, gammas)
    assert_runs(model, b, ro.gd_plus_plus(b.X, b.y, L, ETAS, gammas))
    # with A = η·I and B = (γ/η)·I the first layer multiplies every x (query included) by (I − γ XᵀX/n)
    Z0, Z1 = model.tokens(b.Z())[:2]
    H = einsum(b.X, b.X, "b n i, b n j -> b i j") / N
    T = torch.eye(D, dtype=torch.float64) - gammas[0] * H
    torch.testing.assert_close(Z1[..., :D], einsum(T, Z0[..., :D], "b i j, b t j -> b t i"), rtol=0, atol=TOL)
    with pytest.raises(ValueError, match="nonzero"):
        gd_plus_plus_lsa(D, 2, [1.0, 0.0], 0.1)


def test_cgd_memformer_is_heavy_ball():
    b = prompts()
    betas = [0.7, 0.5, 0.3, 0.8]
    model = heavy_ball_memformer(D, L, ETAS, betas)
    assert_runs(model, b, ro.heavy_ball(b.X, b.y, L, ETAS, betas))
    # the general mapping: α_ℓ, γ_ℓ and A_ℓ = a_ℓ·I give η_ℓ = α_ℓ a_ℓ, β_ℓ = α_ℓ γ_ℓ / α_{ℓ−1}
    f64 = dict(dtype=torch.float64)
    alpha, gamma, a = (
        torch.tensor([0.5, 2.0, 1.5, 0.8], **f64),
        torch.tensor([9.0, 0.4, -0.2, 0.6], **f64),
        torch.tensor(ETAS, **f64),
    )
    model.set_memory(alpha=alpha, gamma=gamma)
    model.attention.set_weights(a[:, None, None, None] * torch.eye(D, **f64))
    eta = alpha * a
    beta = alpha * gamma / torch.cat([torch.ones(1, **f64), alpha[:-1]])
    assert_runs(model, b, ro.heavy_ball(b.X, b.y, L, eta, beta))


def test_lfom_memformer_runs_the_linear_first_order_method():
    b = prompts()
    g = torch.Generator().manual_seed(2)
    c = torch.tril(0.5 * torch.rand(L, L, generator=g, dtype=torch.float64) + 0.2)
    As = 0.2 * torch.randn(L, D, D, generator=g, dtype=torch.float64) + torch.eye(D, dtype=torch.float64)
    # oracle: w_{ℓ+1} = w_ℓ − Σ_{j≤ℓ} c_{ℓj} A_jᵀ ∇R(w_j)
    X, y = b.X.numpy(), b.y.numpy()
    H, gv = np.einsum("bni,bnj->bij", X, X) / N, np.einsum("bni,bn->bi", X, y) / N
    ws, grads = [np.zeros((16, D))], []
    for layer in range(L):
        grads.append(np.einsum("bij,bj->bi", H, ws[-1]) - gv)
        step = sum(c[layer, j].item() * np.einsum("ji,bj->bi", As[j].numpy(), grads[j]) for j in range(layer + 1))
        ws.append(ws[-1] - step)
    model = lfom_memformer(c, D, As)
    assert isinstance(model, Memformer) and model.Gamma.shape == (L, L)
    assert_runs(model, b, torch.from_numpy(np.stack(ws, axis=1)))
    # LFOM with Γ_j^ℓ = η_ℓ·[j = ℓ] is gradient descent; Γ_j^ℓ = η_j β^{ℓ−j} is heavy ball with constant β
    eye_c = torch.diag(torch.tensor(ETAS, dtype=torch.float64))
    assert_runs(lfom_memformer(eye_c, D), b, ro.gradient_descent(b.X, b.y, L, ETAS))
    beta = 0.6
    hb = torch.tensor(
        [[ETAS[j] * beta ** (i - j) if j <= i else 0.0 for j in range(L)] for i in range(L)], dtype=torch.float64
    )
    assert_runs(lfom_memformer(hb, D), b, ro.heavy_ball(b.X, b.y, L, ETAS, beta))


def test_constructions_are_device_and_dtype_agnostic():
    b = prompts().to(dtype=torch.float32)
    model = gd_lsa(D, 2, 0.5, dtype=torch.float32)
    assert model.A.dtype == torch.float32
    ref = ro.gradient_descent(b.X, b.y, 2, 0.5)
    torch.testing.assert_close(model.layer_predictions(b.Z()), einsum(ref, b.x_query, "b t d, b d -> b t"))


# -- what shared coefficients can not do ---------------------------------------------------------------------


def krylov_bound(batch, steps: int) -> float:
    """The best query MSE over all shared polynomials: min_c mean_b (Σ_{k<steps} c_k x_qᵀH^k g − y_q)² (numpy).

    A CGD-like Memformer (or LFOM) with scalar A_ℓ = a_ℓ·I, B_ℓ = 0 and shared scalars α, γ (Γ) outputs
    x_qᵀ p(H) g for one polynomial p of degree < L shared by every prompt, so its loss on these prompts is at
    least this in-sample optimum.
    """
    X, y = batch.X.numpy(), batch.y.numpy()
    n = X.shape[1]
    H, v = np.einsum("bni,bnj->bij", X, X) / n, np.einsum("bni,bn->bi", X, y) / n
    feats = []
    for _ in range(steps):
        feats.append(np.einsum("bd,bd->b", batch.x_query.numpy(), v))
        v = np.einsum("bij,bj->bi", H, v)
    F = np.stack(feats, axis=1)
    c, *_ = np.linalg.lstsq(F, batch.y_query.numpy(), rcond=None)
    return float(np.mean((F @ c - batch.y_query.numpy()) ** 2))


@pytest.mark.parametrize("steps", [2, 3])
def test_per_prompt_cg_beats_every_shared_coefficient_memformer(steps):
    cfg = dict(eigenvalues=(1.0, 1.0, 0.25, 0.0625, 1.0), w_prior="inverse_sigma")  # Ahn / Dutta & Sra
    g = torch.Generator().manual_seed(3)
    b = PromptDistribution(PromptConfig(d=5, n=20, **cfg), generator=g, dtype=torch.float64).sample(500, g)
    bound = krylov_bound(b, steps)
    cg = float(ro.mean_query_loss(ro.conjugate_gradient(b.X, b.y, steps), b.x_query, b.y_query)[-1])
    assert cg < 0.95 * bound, (cg, bound)
    # every scalar CGD-like Memformer stays above the bound (random and hand-tuned coefficients)
    rng = torch.Generator().manual_seed(4)
    for _ in range(5):
        eta = (0.2 + 1.5 * torch.rand(steps, generator=rng, dtype=torch.float64)).tolist()
        beta = torch.rand(steps, generator=rng, dtype=torch.float64).tolist()
        model = heavy_ball_memformer(5, steps, eta, beta)
        with torch.no_grad():
            loss = float((model(b.Z()) - b.y_query).square().mean())
        assert loss >= bound - 1e-12
