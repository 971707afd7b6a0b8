"""A frozen copy of ManifoldAdam's per-parameter step as it was before the batched rewrite (issue 16).

Copied from ``icl/optim/manifolds.py``, ``manifold_optimizer.py`` and ``manifold_adam.py`` at commit d93a200
(Cayley retraction, float64, no re-orthonormalisation): flat compact coordinates, the block-eliminated
2p×2p Cayley kernel for Stiefel/Grassmann and the rank-4n Woodbury kernel for symplectic Stiefel.  It is the
oracle of ``tests/test_manifold_batched.py``: the new implementation must make the same iterates to 1e-12.
Do not edit it to follow the package; it is meant to stay what the package *was*.
"""

from __future__ import annotations

import torch


def _apply_J(X):
    m = X.shape[0] // 2
    return torch.cat([X[m:], -X[:m]], 0)


# ------------------------------------------------------------------------------------------------
# Stiefel / Grassmann (flat coordinates: [strict lower triangle of A | B])
# ------------------------------------------------------------------------------------------------


def _skew_from(S, p):
    i, j = torch.tril_indices(p, p, -1)
    A = S.new_zeros(p, p)
    A[i, j] = S
    A[j, i] = -S
    return A


def _skew_coords(M):
    p = M.shape[0]
    i, j = torch.tril_indices(p, p, -1)
    return M[i, j]


def stiefel_grad_rep(L, G, has_skew):
    p = G.shape[1]
    LtG = (G.T @ L).T
    B = LtG[p:].reshape(-1)
    if not has_skew:
        return B
    M = LtG[:p]
    return torch.cat([_skew_coords(M - M.T), B])


def _stiefel_cayley_kernel(A, BtB):
    p = BtB.shape[0]
    I = torch.eye(p, dtype=BtB.dtype)
    K = BtB.new_empty(2 * p, 2 * p)
    if A is None:
        T = torch.addmm(I, BtB, I, alpha=0.25)
        C = 0.5 * BtB
        Tinv = torch.cholesky_inverse(torch.linalg.cholesky(T))
        TiC = Tinv @ C
        K[:p, :p] = I - 0.5 * TiC
        K[:p, p:] = 0.5 * Tinv
        K[p:, :p] = -TiC
        K[p:, p:] = Tinv
        return K
    qA = 0.25 * A
    D = I - qA
    A2 = A @ A
    C = 0.5 * BtB - 0.125 * A2
    T = torch.addmm(I - 0.5 * A, BtB, I, alpha=0.25)
    Dinv = (I + qA) @ torch.cholesky_inverse(torch.linalg.cholesky(I - A2 / 16.0))
    Tinv = torch.linalg.inv(T)
    TiCDi = Tinv @ (C @ Dinv)
    K[:p, :p] = Dinv - 0.5 * TiCDi
    K[:p, p:] = 0.5 * Tinv
    K[p:, :p] = -(D @ TiCDi)
    K[p:, p:] = D @ Tinv
    return K


def stiefel_retract_(L, coords, p, has_skew):
    N = L.shape[0]
    k = p * (p - 1) // 2 if has_skew else 0
    S, B = (coords[:k] if has_skew else None), coords[k:].view(N - p, p)
    Y, Yp = L[:, :p], L[:, p:]
    BtB = B.T @ B
    A = _skew_from(S, p) if has_skew else None
    K = _stiefel_cayley_kernel(A, BtB)
    if A is not None:
        hA = 0.5 * A
        K = torch.cat([torch.addmm(K[:, :p], K[:, p:], hA), K[:, p:]], 1)
        R = torch.addmm(K[p:], hA, K[:p])
    else:
        R = K[p:]
    P = torch.addmm(Y @ R, Yp @ B, K[:p])
    Yp.addmm_(P[:, p:], B.T, alpha=-1.0)
    Y.add_(P[:, :p])
    return L


# ------------------------------------------------------------------------------------------------
# Symplectic Stiefel (flat coordinates: [A1 | A2 | A3 | B2 | C2 | tril(B1) | tril(C1)])
# ------------------------------------------------------------------------------------------------


def _sizes(N, n):
    return [n * n] + [(N - n) * n] * 4 + [n * (n + 1) // 2] * 2


def _idx(N, n):
    return torch.cat([torch.arange(n), torch.arange(N, N + n)])


def _blocks(coords, N, n):
    parts = torch.split(coords, _sizes(N, n))
    A1 = parts[0].view(n, n)
    A2, A3, B2, C2 = (t.view(N - n, n) for t in parts[1:5])
    i, j = torch.tril_indices(n, n, 0)

    def sym(v):
        S = coords.new_zeros(n, n)
        S[i, j] = v
        S[j, i] = v
        return S

    return A1, A2, A3, B2, C2, sym(parts[5]), sym(parts[6])


def symplectic_grad_rep(L, G):
    N, n = L.shape[0] // 2, G.shape[1] // 2
    X = L.T @ G
    Xq, Xp = X[:, :n], X[:, n:]
    r1, r2, r3, r4 = slice(0, n), slice(n, N), slice(N, N + n), slice(N + n, 2 * N)
    i, j = torch.tril_indices(n, n, 0)

    def sym_adj(S):
        T = S + S.T
        T.diagonal().mul_(0.5)
        return T[i, j]

    return torch.cat(
        [
            (Xq[r1] - Xp[r3].T).reshape(-1),
            (-Xp[r4]).reshape(-1),
            Xq[r2].reshape(-1),
            Xp[r2].reshape(-1),
            Xq[r4].reshape(-1),
            sym_adj(Xp[r1]),
            sym_adj(Xq[r3]),
        ]
    )


def _hor_matrix(coords, N, n):
    A1, A2, A3, B2, C2, B1, C1 = _blocks(coords, N, n)
    Z = coords.new_zeros(N - n, N - n)
    A = torch.cat([torch.cat([A1, A2.T], 1), torch.cat([A3, Z], 1)], 0)
    B = torch.cat([torch.cat([B1, B2.T], 1), torch.cat([B2, Z], 1)], 0)
    C = torch.cat([torch.cat([C1, C2.T], 1), torch.cat([C2, Z], 1)], 0)
    return torch.cat([torch.cat([A, B], 1), torch.cat([C, -A.T], 1)], 0)


def symplectic_retract_(L, coords, p):
    N, n = L.shape[0] // 2, p // 2
    D = _hor_matrix(coords, N, n)
    idx = _idx(N, n)
    E = torch.eye(2 * N, dtype=coords.dtype)[:, idx]
    Rt = D[idx].clone()
    Rt[:, idx] = 0
    U, V = torch.cat([D[:, idx], E], 1), torch.cat([E, Rt.T], 1)
    X = V.T @ U
    I = torch.eye(X.shape[0], dtype=X.dtype)
    K = torch.linalg.solve(I - 0.5 * X, I)
    L.add_((L @ U) @ K @ V.T)
    return L


def symplectic_point(L, p):
    N, n = L.shape[0] // 2, p // 2
    return torch.cat([L[:, :n], L[:, N : N + n]], 1)


# ------------------------------------------------------------------------------------------------
# The step
# ------------------------------------------------------------------------------------------------


def frozen_adam_trajectory(manifold, L0, p, grad_fn, steps, lr=1e-2, betas=(0.9, 0.99), eps=1e-8):
    """Iterates Y_1..Y_steps of the pre-rewrite ManifoldAdam (Cayley) from section L0 (float64)."""
    L = L0.clone()
    beta1, beta2 = betas
    m = v = None
    out = []
    for t in range(1, steps + 1):
        Y = symplectic_point(L, p) if manifold == "symplectic_stiefel" else L[:, :p].clone()
        G = grad_fn(Y, t - 1)
        if manifold == "symplectic_stiefel":
            c = symplectic_grad_rep(L, G)
        else:
            c = stiefel_grad_rep(L, G, manifold == "stiefel")
        if m is None:
            m, v = torch.zeros_like(c), torch.zeros_like(c)
        m.lerp_(c, 1 - beta1)
        v.mul_(beta2).addcmul_(c, c, value=1 - beta2)
        bc1 = 1 - beta1**t
        bc2_sqrt = (1 - beta2**t) ** 0.5
        W = torch.div(m, (v.sqrt() / bc2_sqrt).add_(eps)).mul_(-lr / bc1)
        if manifold == "symplectic_stiefel":
            symplectic_retract_(L, W, p)
            out.append(symplectic_point(L, p))
        else:
            stiefel_retract_(L, W, p, manifold == "stiefel")
            out.append(L[:, :p].clone())
    return out
