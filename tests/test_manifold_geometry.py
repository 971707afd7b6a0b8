"""Geometry of the global-section construction (Brantner 2023), float64."""

from __future__ import annotations

import pytest
import torch

from icl.optim.manifolds import (
    Grassmann,
    Stiefel,
    SymplecticStiefel,
    cayley_kernel,
    exp_kernel,
    get_manifold,
    poisson_tensor,
)

DT = torch.float64
SHAPES = {
    "stiefel": [(6, 2), (9, 4), (5, 5)],
    "grassmann": [(7, 3), (6, 1)],
    "symplectic_stiefel": [(8, 4), (6, 2)],
}
CASES = [(name, shape) for name, shapes in SHAPES.items() for shape in shapes]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _E(manifold, shape):
    N, p = shape
    if manifold.name == "symplectic_stiefel":
        M, n = N // 2, p // 2
        idx = torch.cat([torch.arange(n), torch.arange(M, M + n)])
        return torch.eye(N, dtype=DT)[:, idx]
    return torch.eye(N, dtype=DT)[:, :p]


@pytest.mark.parametrize("name,shape", CASES)
def test_section_maps_E_to_Y_and_is_in_group(name, shape):
    m = get_manifold(name)
    g = _gen(1)
    Y = m.random_point(shape, g)
    assert m.check(Y) < 1e-12
    L = m.init_section(Y, g)
    assert torch.allclose(L @ _E(m, shape), Y, atol=1e-13, rtol=0)
    assert torch.equal(m.point(L, shape[1]), Y)
    N = shape[0]
    if name == "symplectic_stiefel":
        J = poisson_tensor(N // 2)
        assert torch.linalg.matrix_norm(L.T @ J @ L - J) < 1e-10
    else:
        assert torch.linalg.matrix_norm(L.T @ L - torch.eye(N, dtype=DT)) < 1e-13


@pytest.mark.parametrize("name,shape", CASES)
def test_global_rep_inverts_and_dimension(name, shape):
    m = get_manifold(name)
    g = _gen(2)
    Y = m.random_point(shape, g)
    L = m.init_section(Y, g)
    D = m.random_tangent(Y, g)
    c = m.global_rep(L, D)
    assert c.numel() == m.dim(shape)
    # Λ·global_rep(Δ)·E = Δ
    assert torch.allclose(m.tangent(L, c, shape[1]), D, atol=1e-11, rtol=0)
    # the dense element of 𝔤^hor gives the same thing
    H = m.hor_matrix(c, shape)
    assert torch.allclose(L @ H @ _E(m, shape), D, atol=1e-11, rtol=0)
    # and it factors as B′B″ᵀ
    U, V = m.lowrank_factors(c, shape)
    assert torch.allclose(U @ V.T, H, atol=1e-13, rtol=0)


@pytest.mark.parametrize("name,shape", CASES)
def test_riemannian_gradient_represents_differential(name, shape):
    """Tr(∇Lᵀ V) = g_Y(rgrad, V) for random tangent V; rgrad is tangent; grad_rep = global_rep∘rgrad."""
    m = get_manifold(name)
    g = _gen(3)
    Y = m.random_point(shape, g)
    G = torch.randn(shape, generator=g, dtype=DT)
    R = m.rgrad(Y, G)
    L = m.init_section(Y, g)
    assert torch.allclose(m.tangent(L, m.global_rep(L, R), shape[1]), R, atol=1e-10, rtol=0)
    if name != "symplectic_stiefel":
        assert torch.allclose(m.grad_rep(L, G), m.global_rep(L, R), atol=1e-11, rtol=0)
    # grad_rep is the coordinate gradient of the pulled-back loss: ⟨c, w⟩ = Tr(Gᵀ Λ W̄(w) E)
    w = torch.randn(m.dim(shape), generator=g, dtype=DT)
    assert torch.allclose(m.grad_rep(L, G) @ w, torch.sum(G * m.tangent(L, w, shape[1])), atol=1e-10, rtol=0)
    for _ in range(3):
        V = m.random_tangent(Y, g)
        assert torch.allclose(torch.sum(G * V), m.inner(Y, R, V), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name,shape", CASES)
@pytest.mark.parametrize("scale", [0.05, 1.0, 30.0])
def test_lowrank_retractions_equal_dense(name, shape, scale):
    m = get_manifold(name)
    g = _gen(4)
    Y = m.random_point(shape, g)
    L = m.init_section(Y, g)
    c = torch.randn(m.dim(shape), generator=g, dtype=DT)
    c = c * (scale / c.norm())
    H = m.hor_matrix(c, shape)
    N = shape[0]
    I = torch.eye(N, dtype=DT)
    dense = {
        "cayley": torch.linalg.solve(I - 0.5 * H, I + 0.5 * H),
        "exp": torch.linalg.matrix_exp(H),
    }
    U, V = m.lowrank_factors(c, shape)
    X = V.T @ U
    h = X.shape[0] // 2
    for method, R in dense.items():
        K = cayley_kernel(X) if method == "cayley" else exp_kernel(X, h)
        tol = 1e-12 * max(1.0, float(torch.linalg.matrix_norm(R)))
        assert torch.allclose(I + U @ K @ V.T, R, atol=tol, rtol=0), method
        L2 = L.clone()
        m.retract_(L2, c, shape[1], method)
        assert torch.allclose(L2, L @ R, atol=10 * tol, rtol=0), method


@pytest.mark.parametrize("name", ["stiefel", "grassmann"])
@pytest.mark.parametrize("shape", [(6, 1), (9, 4), (30, 8), (5, 5)])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_closed_form_cayley_equals_the_2p_woodbury_solve(name, shape, scale):
    """The closed-form Cayley update of Stiefel/Grassmann retract_ (one p×p inverse Σ) equals the general
    low-rank form Λ + (ΛB′)(I − ½B″ᵀB′)⁻¹B″ᵀ, from the small steps of training to lifts far outside them."""
    m = get_manifold(name)
    g = _gen(6)
    L = m.init_section(m.random_point(shape, g), g)
    c = torch.randn(m.dim(shape), generator=g, dtype=DT)
    c = c * (scale / c.norm())
    U, V = m.lowrank_factors(c, shape)
    ref = L + (L @ U) @ cayley_kernel(V.T @ U) @ V.T
    out = m.retract_(L.clone(), c, shape[1], "cayley")
    assert torch.allclose(out, ref, atol=1e-13 * max(1.0, scale), rtol=0)


def test_batched_retraction_and_coordinates_equal_one_at_a_time():
    """retract_batch_ and grad_coords on a stack of k sections equal k single calls (Stiefel, Grassmann)."""
    g = _gen(7)
    for name in ("stiefel", "grassmann"):
        m = get_manifold(name)
        shape = (9, 3)
        Ls = torch.stack([m.init_section(m.random_point(shape, g), g) for _ in range(4)])
        G = torch.randn(4, *shape, generator=g, dtype=DT)
        C = m.grad_coords(Ls, G)
        assert C.shape == (4, *m.coord_shape(shape))
        for i in range(4):
            assert torch.allclose(m.to_flat(C[i], shape), m.global_rep(Ls[i], m.rgrad(Ls[i][:, :3], G[i])), atol=1e-13)
            assert torch.equal(m.to_matrix(m.to_flat(C[i], shape), shape), C[i])
            if name == "stiefel":  # an even quantity (C ⊙ C, like Adam's second moment) has a symmetric A block
                assert torch.equal(m.to_matrix(m.to_flat(C[i] * C[i], shape), shape, even=True), C[i] * C[i])
        W = 0.1 * torch.randn(4, *m.coord_shape(shape), generator=g, dtype=DT)
        if name == "stiefel":
            W[..., :3] = W[..., :3] - W[..., :3].mT
        for method in ("cayley", "exp"):
            batch = Ls.clone()
            m.retract_batch_(batch, W.clone(), 3, method)  # W is scratch
            for i in range(4):
                one = m.retract_(Ls[i].clone(), m.to_flat(W[i], shape), 3, method)
                assert torch.allclose(batch[i], one, atol=1e-14, rtol=0), (name, method)


def test_exp_series_is_stable_for_large_lifts():
    """The plain Taylor series blows up for ‖B̄‖ ≳ 50 (Brantner 2023); scaling and squaring does not."""
    m = Stiefel()
    g = _gen(5)
    shape = (20, 3)
    L = m.init_section(m.random_point(shape, g), g)
    for scale in (5.0, 80.0, 160.0):
        c = torch.randn(m.dim(shape), generator=g, dtype=DT)
        c = c * (scale / c.norm())
        L2 = L.clone()
        m.retract_(L2, c, shape[1], "exp")
        assert m.check(m.point(L2, 3)) < 1e-12
        assert torch.linalg.matrix_norm(L2.T @ L2 - torch.eye(20, dtype=DT)) < 1e-12


def test_compact_storage_sizes():
    assert Stiefel().dim((10, 4)) == 4 * 3 // 2 + 6 * 4
    assert Grassmann().dim((10, 4)) == 6 * 4
    sp = SymplecticStiefel()
    assert sp.dim((10, 4)) == 4 * 5 * 2 - 2 * 4 + 2
    # the dimension of 𝔤^hor equals that of the manifold: rank of the differential of the chart
    L = sp.init_section(sp.random_point((10, 4), _gen(6)), _gen(7))
    Dm = torch.stack([sp.tangent(L, e, 4).reshape(-1) for e in torch.eye(sp.dim((10, 4)), dtype=DT)])
    assert int(torch.linalg.matrix_rank(Dm)) == sp.dim((10, 4))


def test_qr_projection_and_reorthonormalize():
    m = Stiefel()
    g = _gen(8)
    Y = m.random_point((7, 3), g)
    assert torch.allclose(m.project(Y), Y, atol=1e-14)
    L = m.init_section(Y, g)
    noisy = L + 1e-7 * torch.randn(7, 7, generator=g, dtype=DT)
    m.reorthonormalize_(noisy, 3)
    assert torch.allclose(noisy, L, atol=1e-6)
    assert torch.linalg.matrix_norm(noisy.T @ noisy - torch.eye(7, dtype=DT)) < 1e-14
    sp = SymplecticStiefel()
    U = sp.random_point((8, 4), g)
    Ls = sp.init_section(U, g)
    J = poisson_tensor(4)
    noisy = Ls + 1e-8 * torch.randn(8, 8, generator=g, dtype=DT)
    sp.reorthonormalize_(noisy, 4)
    assert torch.allclose(noisy, Ls, atol=1e-5)
    assert torch.linalg.matrix_norm(noisy.T @ J @ noisy - J) < 1e-10


def test_unknown_manifold_name():
    with pytest.raises(ValueError, match="manifold"):
        get_manifold("sphere")


@pytest.mark.parametrize("name", ["stiefel", "grassmann"])
def test_point_reorthonormalisation_is_a_polar_step(name):
    """reorthonormalize_point_ moves a slightly non-orthonormal Y to second order onto the manifold, keeps its
    span (the Grassmann point) and leaves Y_⊥ alone."""
    m = get_manifold(name)
    g = _gen(9)
    L = torch.stack([m.init_section(m.random_point((12, 4), g), g) for _ in range(2)])
    noisy = L.clone()
    noisy[..., :4] += 1e-6 * torch.randn(2, 12, 4, generator=g, dtype=DT)
    out = m.reorthonormalize_point_(noisy.clone(), 4)
    for i in range(2):
        Y = out[i, :, :4]
        before = m.check(noisy[i, :, :4])
        assert before > 1e-6 and m.check(Y) < 1e-4 * before  # second order: ε → O(ε²)
        P = noisy[i, :, :4] @ torch.linalg.pinv(noisy[i, :, :4])  # projector onto the old span
        assert torch.allclose(P @ Y, Y, atol=1e-14)
    assert torch.equal(out[..., 4:], noisy[..., 4:])
