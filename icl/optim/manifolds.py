"""Geometry of the homogeneous spaces used by the global-section optimizers.

Brantner (2023), *Generalizing Adam to manifolds for efficiently training transformers* (arXiv 2305.16901),
writes Stiefel, Grassmann and symplectic Stiefel manifolds as homogeneous spaces M = G/H with a distinguished
point E. A global section Λ ∈ G with ΛE = Y identifies every tangent space T_Y M with one fixed vector space
𝔤^hor ⊂ 𝔤 (the "global tangent space"); optimizer state lives there, in compact coordinates, and updates go
through the group: Λ ← Λ·Retraction(W), Y = ΛE.  The formulas follow the author's reference code
(GeometricMachineLearning.jl); the symplectic case follows Bendokat & Zimmermann (2021).

Every manifold here implements the same small interface on *geometry tensors* (the section Λ and
coordinates of 𝔤^hor):

* ``rgrad(Y, G)``: the Riemannian gradient for the manifold's metric; ``inner(Y, D1, D2)``: that metric;
* ``init_section(Y, generator)``: a section Λ with ΛE = Y, drawn once from an explicit generator;
* ``global_rep(Λ, Δ)`` → flat coordinates of Λ⁻¹Ω(Y,Δ)Λ; ``grad_rep(Λ, G)``: the coordinate gradient of
  the pulled-back loss, equal to ``global_rep(Λ, rgrad(Y, G))`` on Stiefel and Grassmann (computed directly)
  and used instead of it on symplectic Stiefel, where the induced metric is not the coordinate one;
  ``tangent(Λ, coords)`` = Λ·D·E, the inverse map; ``hor_matrix(coords, shape)``: the dense
  element of 𝔤^hor (tests only);
* ``retract_(Λ, coords, method)``: Λ ← Λ·Retraction(W) in place, with ``method`` "cayley" or "exp", both in
  low-rank form (no matrix function of size N);
* ``point(Λ)`` = ΛE; ``reorthonormalize_(Λ)``: remove floating-point drift of the section (in float64);
  ``check(Y)``: the constraint violation; ``project(X)`` and ``random_point(shape, generator)``: points.

The optimizers step all parameters of one shape as a batch, through ``coord_shape(shape)`` (the layout of one
parameter's coordinates), ``grad_coords(Λ, G)`` (k, N, N), (k, N, p) → (k, *coord_shape) and
``retract_batch_(Λ, W, p, method)``; ``to_matrix``/``to_flat`` convert between that layout and the flat one.

Flat layouts (one vector per parameter):

* Stiefel St(p, N), Y ∈ ℝ^{N×p}: [strict lower triangle of A ∈ 𝔰𝔬(p), row by row | B ∈ ℝ^{(N−p)×p}];
  the optimizer's layout is the p×N matrix [A | Bᵀ], so that the gradient's coordinates are one product GᵀΛ.
* Grassmann Gr(p, N): [B]; the optimizer keeps Bᵀ (p×(N−p)).
* Symplectic Stiefel SpSt(2n, 2N), U ∈ ℝ^{2N×2n}: [A₁ (n×n) | A₂ | A₃ | B₂ | C₂ (each (N−n)×n) | lower
  triangles (with diagonal) of the symmetric B₁ and C₁]; the optimizer keeps this vector.
"""

from __future__ import annotations

import math

import torch

from icl.optim import manifold_kernels

__all__ = [
    "Manifold",
    "Euclidean",
    "Stiefel",
    "Grassmann",
    "SymplecticStiefel",
    "MANIFOLDS",
    "get_manifold",
    "manifold_point",
    "project_to_manifold",
    "poisson_tensor",
    "qr_sign_fixed",
    "symplectic_gram_schmidt",
    "cayley_kernel",
    "exp_kernel",
]


# ----------------------------------------------------------------------------------------------------
# Small shared pieces
# ----------------------------------------------------------------------------------------------------


def qr_sign_fixed(X: torch.Tensor) -> torch.Tensor:
    """Thin QR factor Q of ``X`` (or of each matrix of a batch) with the signs fixed so that diag(R) > 0."""
    Q, R = torch.linalg.qr(X)
    d = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    d = torch.where(d == 0, torch.ones_like(d), d)
    return Q * d.unsqueeze(-2)


def poisson_tensor(m: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """J_{2m} = [[0, I_m], [−I_m, 0]]."""
    I = torch.eye(m, dtype=dtype, device=device)
    Z = torch.zeros(m, m, dtype=dtype, device=device)
    return torch.cat([torch.cat([Z, I], 1), torch.cat([-I, Z], 1)], 0)


def _apply_J(X: torch.Tensor) -> torch.Tensor:
    """J·X for J = J_{2m}, without forming J."""
    m = X.shape[0] // 2
    return torch.cat([X[m:], -X[:m]], 0)


def _apply_Jt(X: torch.Tensor) -> torch.Tensor:
    """Jᵀ·X = −J·X."""
    m = X.shape[0] // 2
    return torch.cat([-X[m:], X[:m]], 0)


def symplectic_gram_schmidt(X: torch.Tensor, passes: int = 2) -> torch.Tensor:
    """S factor of an SR decomposition X = S·R by modified symplectic Gram–Schmidt.

    The columns of ``X`` (2N × 2k) are read as pairs (x_i, x_{k+i}).  Pair i is made symplectically
    orthogonal to the pairs before it (projector P = S_j J_{2j}ᵀ S_jᵀ J, applied ``passes`` times for
    stability) and then scaled so that ω(s_i, t_i) = s_iᵀ J t_i = 1, with the sign of t_i flipped if needed.
    The result satisfies SᵀJ_{2N}S = J_{2k}; when X is already symplectic it is returned (nearly) unchanged,
    which is what makes this usable as a re-symplectification with a sign fix.

    Raises:
        ValueError: if a pair is (numerically) degenerate, ω(s_i, t_i) ≈ 0.
    """
    two_k = X.shape[1]
    k = two_k // 2
    S = X.clone()
    tiny = torch.finfo(X.dtype).eps * 1e3
    for i in range(k):
        s, t = S[:, i].clone(), S[:, k + i].clone()
        if i:
            prev = torch.cat([S[:, :i], S[:, k : k + i]], 1)  # 2N × 2i, pairs (j, i + j)
            for _ in range(passes):
                for v in (s, t):
                    # P v = prev · J_{2i}ᵀ · prevᵀ J v
                    c = prev.T @ _apply_J(v.unsqueeze(1))
                    v -= (prev @ _apply_Jt(c)).squeeze(1)
        r = s @ _apply_J(t.unsqueeze(1)).squeeze(1)
        scale = max(float(s.norm() * t.norm()), 1.0)
        if abs(float(r)) <= tiny * scale:
            raise ValueError("symplectic Gram-Schmidt met a degenerate pair (omega(s, t) = 0)")
        sg = torch.sign(r)
        a = torch.sqrt(torch.abs(r))
        S[:, i] = s / a
        S[:, k + i] = t * sg / a
    return S


def _block_scale(X: torch.Tensor, h: int) -> torch.Tensor:
    """α² balancing the off-diagonal h-blocks of X (batched; see :func:`exp_kernel`)."""
    a = torch.linalg.matrix_norm(X[..., :h, h:])
    b = torch.linalg.matrix_norm(X[..., h:, :h])
    ok = (a > 0) & (b > 0)
    return torch.where(ok, torch.sqrt(a / torch.where(ok, b, torch.ones_like(b))), torch.ones_like(a))


def cayley_kernel(X: torch.Tensor) -> torch.Tensor:
    """K with Cayley(UVᵀ) = (I − ½UVᵀ)⁻¹(I + ½UVᵀ) = I + U·K·Vᵀ, given X = VᵀU.

    By Woodbury, K = (I − ½X)⁻¹ (Brantner 2023): only a (rank × rank) solve.
    """
    I = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    return torch.linalg.solve(I - 0.5 * X, I.expand_as(X))


def exp_kernel(X: torch.Tensor, h: int | None = None) -> torch.Tensor:
    """K with exp(UVᵀ) = I + U·K·Vᵀ, given X = VᵀU (or a batch of them), by scaling and squaring in low rank.

    exp(UVᵀ) = I + U φ₁(X) Vᵀ with φ₁(X) = Σ_{k≥0} X^k/(k+1)!.  The plain series fails when ‖X‖ is large
    although the spectral radius is small (‖X‖ ≈ ‖B̄‖²/4, as GeometricOptimizers.jl found), so:

    1. balance: X' = D⁻¹XD with D = diag(αI_h, α⁻¹I_h) and α² = sqrt(‖X₁₂‖/‖X₂₁‖), which makes
       ‖X'‖ ≈ ‖UVᵀ‖;
    2. scale: W₀ = φ₁(X'/2^s)/2^s with ‖X'/2^s‖₁ ≤ ½ (Taylor series, truncation below eps);
    3. square s times in low-rank form, (I + UWVᵀ)² = I + U(2W + WX'W)Vᵀ;
    4. undo the balancing: K = D·W·D⁻¹.

    No N×N matrix is formed or squared.  A batch shares one s (the largest any member needs: more squarings
    cost accuracy only at the level of rounding); choosing s reads one number back to the host.
    """
    r = X.shape[-1]
    if h is None:
        h = r // 2
    alpha = torch.sqrt(_block_scale(X, h)).unsqueeze(-1)
    d = torch.cat([alpha.expand(*alpha.shape[:-1], h), (1.0 / alpha).expand(*alpha.shape[:-1], r - h)], -1)
    Xb = X * d.unsqueeze(-2) / d.unsqueeze(-1)  # D⁻¹ X D
    nrm = float(torch.linalg.matrix_norm(Xb, ord=1).max()) if Xb.numel() else 0.0
    s = max(0, math.ceil(math.log2(nrm / 0.5))) if nrm > 0.5 else 0
    Z = Xb / (2.0**s)
    terms = 18 if X.dtype == torch.float64 else 10
    I = torch.eye(r, dtype=X.dtype, device=X.device)
    # Horner for φ₁(Z) = Σ_{k=0}^{m} Z^k/(k+1)!
    phi = (I / math.factorial(terms + 1)).expand_as(X)
    for k in range(terms - 1, -1, -1):
        phi = I / math.factorial(k + 1) + Z @ phi
    W = phi / (2.0**s)
    for _ in range(s):
        W = 2.0 * W + W @ Xb @ W
    return W * d.unsqueeze(-1) / d.unsqueeze(-2)  # D W D⁻¹


_EYES: dict = {}


def _eye(p: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A cached identity (read-only by convention): the step makes no allocation for it."""
    key = (p, dtype, str(device))
    if key not in _EYES:
        _EYES[key] = torch.eye(p, dtype=dtype, device=device)
    return _EYES[key]


def _kernel(X: torch.Tensor, method: str, h: int) -> torch.Tensor:
    if method == "cayley":
        return cayley_kernel(X)
    if method == "exp":
        return exp_kernel(X, h)
    raise ValueError(f"retraction must be 'cayley' or 'exp', got {method!r}")


# ----------------------------------------------------------------------------------------------------
# Manifolds
# ----------------------------------------------------------------------------------------------------


class Manifold:
    """Interface; the Euclidean case is the identity (𝔤^hor is the space itself, retraction is addition)."""

    name = "euclidean"

    def validate(self, name: str, t: torch.Tensor) -> None:
        """Raise ValueError naming ``name`` if ``t`` cannot be a point of this manifold (shape only)."""

    def check(self, Y: torch.Tensor) -> float:
        """Constraint violation of ``Y`` (Frobenius norm, computed in float64)."""
        return 0.0

    def project(self, X: torch.Tensor) -> torch.Tensor:
        return X.clone()

    def random_point(self, shape, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=dtype)

    def rgrad(self, Y: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        return G.clone()

    def inner(self, Y: torch.Tensor, D1: torch.Tensor, D2: torch.Tensor) -> torch.Tensor:
        return (D1 * D2).sum()

    def random_tangent(self, Y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(Y.shape, generator=generator, dtype=Y.dtype)

    def dim(self, shape) -> int:
        return math.prod(shape)

    def workspace(self, L: torch.Tensor, p: int) -> dict[str, torch.Tensor]:
        """Scratch buffers of one batched step of the sections ``L`` (k, N, N) of parameters with p columns: the
        coordinates ``C`` and the velocity ``W`` (k, *coord_shape), made once per batch so that a step
        allocates nothing of the parameters' size."""
        coords = (L.shape[0], *self.coord_shape((L.shape[-1], p)))
        return {"C": L.new_empty(coords), "W": L.new_empty(coords)}


class Euclidean(Manifold):
    """ℝ^shape; the optimizers treat it with the plain (torch-identical) update."""


class Stiefel(Manifold):
    """St(p, N) = {Y ∈ ℝ^{N×p} : YᵀY = I_p}, N ≥ p, with the canonical metric; G = SO(N), E = [I_p; 0].

    * metric g_Y(Δ₁, Δ₂) = Tr(Δ₁ᵀ(I − ½YYᵀ)Δ₂); Riemannian gradient Δ = ∇L − Y∇LᵀY;
    * section Λ = [Y, Y_⊥] (stored as one N×N matrix), Y_⊥ = QR factor of a Gaussian N×(N−p) draw with its
      Y-component removed (drawn once);
    * 𝔤^hor = {[[A, −Bᵀ], [B, 0]] : A ∈ 𝔰𝔬(p), B ∈ ℝ^{(N−p)×p}}; global_rep(Λ, Δ) = (skew(YᵀΔ), Y_⊥ᵀΔ);
    * low-rank factors B̄ = B′B″ᵀ, B′ = [[½A, I], [B, 0]], B″ᵀ = [[I, 0], [½A, −Bᵀ]], X = B″ᵀB′
      = [[½A, I], [¼A² − BᵀB, ½A]], so exp(B̄) = I + B′·K·B″ᵀ with K from :func:`exp_kernel` (2p×2p);
    * Cayley in closed form (see :meth:`retract_batch_`): one p×p inverse Σ = (I − ½A + ¼BᵀB)⁻¹.

    The optimizer keeps the coordinates of 𝔤^hor as one p×N matrix [A | Bᵀ] per parameter (``coord_shape``),
    so that the gradient's coordinates are the single product GᵀΛ.  The flat vector [strict lower triangle of
    A | B] (``global_rep``, ``grad_rep``, ``tangent``, ``retract_``) is the compact form used by the tests.

    Cost per step O(N²p) (GᵀΛ, Y_⊥B and the rank-p update of Y_⊥) plus O(Np²); no N×N temporary.
    """

    name = "stiefel"
    has_skew = True
    point_is_view = True  # ΛE is the view Λ[:, :p]
    point_correction = True  # has reorthonormalize_point_

    # -- shapes and coordinates ---------------------------------------------------------------------
    def validate(self, name: str, t: torch.Tensor) -> None:
        if t.ndim != 2:
            raise ValueError(f"{name}: a {self.name} parameter must be a matrix (N, p), got {tuple(t.shape)}")
        N, p = t.shape
        if N < p or p < 1:
            raise ValueError(f"{name}: a {self.name} parameter must be tall (N >= p >= 1), got {tuple(t.shape)}")

    def dim(self, shape) -> int:
        N, p = shape
        return (p * (p - 1) // 2 if self.has_skew else 0) + (N - p) * p

    def _nskew(self, p: int) -> int:
        return p * (p - 1) // 2 if self.has_skew else 0

    def split(self, coords: torch.Tensor, N: int, p: int):
        """Views (S, B) of the flat coordinates; S is None for Grassmann."""
        k = self._nskew(p)
        S = coords[:k] if self.has_skew else None
        return S, coords[k:].view(N - p, p)

    @staticmethod
    def skew_from(S: torch.Tensor, p: int) -> torch.Tensor:
        """A ∈ 𝔰𝔬(p) from its strict lower triangle (row-major order: (1,0), (2,0), (2,1), …)."""
        i, j = torch.tril_indices(p, p, -1, device=S.device)
        A = S.new_zeros(p, p)
        A[i, j] = S
        A[j, i] = -S
        return A

    @staticmethod
    def skew_coords(M: torch.Tensor) -> torch.Tensor:
        """Strict lower triangle of the skew matrix M."""
        p = M.shape[0]
        i, j = torch.tril_indices(p, p, -1, device=M.device)
        return M[i, j]

    # -- points --------------------------------------------------------------------------------------
    def check(self, Y: torch.Tensor) -> float:
        Y = Y.detach().to(torch.float64)
        return float(torch.linalg.matrix_norm(Y.T @ Y - torch.eye(Y.shape[1], dtype=torch.float64)))

    def project(self, X: torch.Tensor) -> torch.Tensor:
        """Nearest-by-QR point: the sign-fixed thin QR factor of X."""
        return qr_sign_fixed(X)

    def random_point(self, shape, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
        """QR (sign-fixed) of a Gaussian matrix: Haar-distributed on St(p, N)."""
        return qr_sign_fixed(torch.randn(*shape, generator=generator, dtype=dtype))

    def point(self, L: torch.Tensor, p: int) -> torch.Tensor:
        return L[..., :p]

    # -- metric and gradient -------------------------------------------------------------------------
    def rgrad(self, Y: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        return G - Y @ (G.T @ Y)

    def inner(self, Y: torch.Tensor, D1: torch.Tensor, D2: torch.Tensor) -> torch.Tensor:
        return (D1 * D2).sum() - 0.5 * ((Y.T @ D1) * (Y.T @ D2)).sum()

    def random_tangent(self, Y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Y·Ω + (I − YYᵀ)K with Ω skew: a generic tangent vector."""
        p = Y.shape[1]
        M = torch.randn(p, p, generator=generator, dtype=Y.dtype)
        K = torch.randn(Y.shape, generator=generator, dtype=Y.dtype)
        return Y @ (M - M.T) + K - Y @ (Y.T @ K)

    # -- section -------------------------------------------------------------------------------------
    def init_section(self, Y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Λ = [Y, Y_⊥]: Y_⊥ from a Gaussian draw (``generator``), Y-component removed, sign-fixed QR."""
        N, p = Y.shape
        R = torch.randn(N, N - p, generator=generator, dtype=Y.dtype).to(Y.device)
        return self._complete(Y, R)

    def _complete(self, Y: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        N, p = Y.shape
        L = torch.empty(N, N, dtype=Y.dtype, device=Y.device)
        L[:, :p] = Y
        if N > p:
            for _ in range(2):  # twice is enough (Kahan–Parlett)
                R = R - Y @ (Y.T @ R)
            L[:, p:] = qr_sign_fixed(R)
        return L

    def reorthonormalize_(self, L: torch.Tensor, p: int) -> torch.Tensor:
        """Λ ← sign-fixed QR factor of Λ, computed in float64 (Λ is close to orthogonal, so this moves it by
        O(drift)); ``L`` may be a batch (k, N, N)."""
        L.copy_(qr_sign_fixed(L.to(torch.float64)))
        return L

    def reorthonormalize_point_(self, L: torch.Tensor, p: int) -> torch.Tensor:
        """Y ← Y(3I − YᵀY)/2 in float64 (one Newton–Schulz step to the polar factor; O(Np²)), Y_⊥ untouched.

        Cheap between the full re-orthonormalisations of Λ: float32 rounding of Y + D makes ‖YᵀY − I‖ a
        random walk (~1e-7·√steps at p = 64), which this removes to second order; the span of Y (the
        Grassmann point) is unchanged.  ``L`` is a batch (k, N, N).
        """
        if manifold_kernels.step_usable(L):  # (one C call, see manifold_kernels)
            return manifold_kernels.polar_point_(L, p)
        Y = L[..., :p].to(torch.float64)
        L[..., :p] = torch.baddbmm(Y, Y, torch.bmm(Y.mT, Y), beta=1.5, alpha=-0.5)
        return L

    def resection(self, Y: torch.Tensor, L_old: torch.Tensor) -> torch.Tensor:
        """A section for a new point Y that stays close to the old one (re-completes with the old Y_⊥)."""
        return self._complete(Y, L_old[:, Y.shape[1] :].clone())

    # -- global tangent space ------------------------------------------------------------------------
    def global_rep(self, L: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        """Flat coordinates of Λ⁻¹Ω(Y, Δ)Λ: (skew(YᵀΔ), Y_⊥ᵀΔ)."""
        p = D.shape[1]
        Y, Yp = L[:, :p], L[:, p:]
        B = (Yp.T @ D).reshape(-1)
        if not self.has_skew:
            return B
        M = Y.T @ D
        return torch.cat([self.skew_coords(0.5 * (M - M.T)), B])

    def grad_rep(self, L: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        """global_rep(Λ, rgrad(Y, G)) in flat coordinates (see :meth:`grad_coords`)."""
        return self.to_flat(self.grad_coords(L.unsqueeze(0), G.unsqueeze(0))[0], tuple(G.shape))

    # -- the optimizer's layout: a batch of p×N coordinate matrices ---------------------------------
    def coord_shape(self, shape) -> tuple[int, ...]:
        """Shape of one parameter's coordinates in the optimizer: [A | Bᵀ] (p×N); Grassmann Bᵀ (p×(N−p))."""
        N, p = shape
        return (p, N) if self.has_skew else (p, N - p)

    def to_matrix(self, coords: torch.Tensor, shape, even: bool = False) -> torch.Tensor:
        """Flat coordinates [strict lower(A) | B] → the p×N matrix [A | Bᵀ] (Grassmann: B → Bᵀ).

        ``even=True`` fills the upper triangle of the A block with the lower one instead of its negative: the
        layout of a quantity even in the gradient, such as Adam's second moment (entry (j, i) of A is −(i, j)).
        """
        N, p = shape
        S, B = self.split(coords, N, p)
        if not self.has_skew:
            return B.T.contiguous()
        A = self.skew_from(S, p)
        if even:
            A = A.tril(-1)
            A = A + A.T
        return torch.cat([A, B.T], 1)

    def to_flat(self, C: torch.Tensor, shape) -> torch.Tensor:
        """The p×N matrix [A | Bᵀ] → flat coordinates [strict lower(A) | B] (inverse of :meth:`to_matrix`)."""
        N, p = shape
        if not self.has_skew:
            return C.T.reshape(-1)
        return torch.cat([self.skew_coords(C[:, :p]), C[:, p:].T.reshape(-1)])

    def grad_coords(
        self, L: torch.Tensor, G: torch.Tensor, out: torch.Tensor | None = None, work: dict | None = None
    ) -> torch.Tensor:
        """Coordinates of global_rep(Λ, rgrad(Y, G)) for a batch Λ (k, N, N), G (k, N, p), as [A | Bᵀ].

        One batched product C = GᵀΛ = [GᵀY | GᵀY_⊥] (the second block is Bᵀ = (Y_⊥ᵀG)ᵀ, using Y_⊥ᵀY = 0);
        the first block GᵀY becomes A = YᵀG − GᵀY (its transpose minus itself) in place.  Grassmann:
        C = GᵀY_⊥ only.  With ``work`` (:meth:`workspace` of this Λ) C is its buffer ``C``.
        """
        if work is not None:
            C = torch.bmm(G.mT, work["Lc"], out=work["C"])
            if self.has_skew:
                Ct = work["Ct"]
                Ct.copy_(torch.sub(work["CtT"], Ct, out=work["A"]))
            return C
        p = G.shape[-1]
        if not self.has_skew:
            return torch.bmm(G.mT, L[..., p:], out=out)
        C = torch.bmm(G.mT, L, out=out)
        Ct = C[..., :p]
        Ct.copy_(Ct.mT - Ct)
        return C

    def workspace(self, L: torch.Tensor, p: int) -> dict[str, torch.Tensor]:
        """The base's ``C`` and ``W``, the temporaries of the Cayley retraction (``K`` and ``D`` (k, N, p), a
        p×p buffer ``A``, LAPACK's ``info``) and the views of Λ, C, W and K that a step uses (made once: a step
        builds no view)."""
        work = super().workspace(L, p)
        k, N = L.shape[0], L.shape[-1]
        work.update(K=L.new_empty(k, N, p), D=L.new_empty(k, N, p), A=L.new_empty(k, p, p))
        work.update(info=torch.empty(k, dtype=torch.int32, device=L.device), I=_eye(p, L.dtype, L.device))
        work["solve_scratch"] = torch.empty(manifold_kernels.solve_scratch_size(p), dtype=L.dtype)  # (CPU only)
        return self._views(work, L, work["W"], p)

    def _views(self, work: dict, L: torch.Tensor, W: torch.Tensor, p: int) -> dict:
        K, C = work["K"], work["C"]
        Bt = W[..., p:] if self.has_skew else W
        work.update(L=L, W=W, Y=L[..., :p], Bt=Bt, BtT=Bt.mT, K_top=K[..., :p, :], K_bottom=K[..., p:, :])
        work["Lc"] = L if self.has_skew else L[..., p:]
        if self.has_skew:
            work.update(Ct=C[..., :p], CtT=C[..., :p].mT, WA=W[..., :p])
        if L.shape[0] == 1:
            work.update(Yp0=L[0, :, p:], Bt0=Bt[0], H0=K[0])  # (H is written into K)
        return work

    def retract_batch_(
        self,
        L: torch.Tensor,
        W: torch.Tensor,
        p: int,
        method: str = "cayley",
        *,
        work: dict[str, torch.Tensor] | None = None,
        skew_exact: bool = False,
    ) -> None:
        """Λ ← Λ·Retraction(W̄) in place for a batch Λ (k, N, N) and velocities W (k, p, N) = [A | Bᵀ].

        W is scratch: its A block may be overwritten.  ``work`` (:meth:`workspace` of this Λ, with W its
        buffer ``W``) holds the temporaries and views; ``skew_exact=True`` says that W's A block is exactly
        skew (its diagonal exactly 0, as Adam's update with ε > 0 and SGD's make it), otherwise the diagonal is
        zeroed (Adam with ε = 0 leaves 0/0 there).

        **Cayley, closed form.**  With Σ = (I − ½A + ¼BᵀB)⁻¹ (p×p), block elimination of
        (I − ½W̄)X = W̄ gives Cayley(W̄) − I = [[2(Σ − I), −ΣBᵀ], [BΣ, −½BΣBᵀ]], so

            D = Y_⊥BΣ + 2Y(Σ − I) = Λ·K,  K = [2(Σ − I); BΣ] (N×p),   Y_⊥ ← Y_⊥ − (Y + ½D)Bᵀ,   Y ← Y + D.

        Σ⁻¹'s symmetric part is I + ¼BᵀB ≻ 0, so Σ always exists (Grassmann, A = 0: Σ⁻¹ is SPD, Cholesky).
        2(Σ − I) = Σ·(A − ½BᵀB) comes from one p×p solve, accurate relative to its size O(η), and
        BΣ = B + ½B·2(Σ − I); D is small and computed as such (Y + D rounds once).  Two O(N²p) products
        (Λ·K and the rank-p update of Y_⊥), O(Np²) work and three passes over N×p numbers; no 2p×2p kernel.

        **exp**: Λ ← Λ + (ΛB′)·K·B″ᵀ with K = :func:`exp_kernel` of X (2p×2p), the ½A factors folded into K:
        (ΛB′K)B″ᵀ = [P₁ + ½P₂A, −P₂Bᵀ] with P = [Y_⊥B, Y]-products of N×p by p×2p.
        """
        if method not in ("cayley", "exp"):
            raise ValueError(f"retraction must be 'cayley' or 'exp', got {method!r}")
        k = L.shape[0]
        if method == "cayley":
            if work is None or work["L"] is not L or work["W"] is not W:
                work = self._views(self.workspace(L, p), L, W, p)
            Bt, BtT, S2, K_top, I = work["Bt"], work["BtT"], work["A"], work["K_top"], work["I"]
            # S2 = 2(I − Σ⁻¹) = A − ½BᵀB, Σ⁻¹ = I − ½S2; 2(Σ − I) = Σ·S2 = (Σ⁻¹)⁻¹S2, solved directly: formed
            # from Σ it would carry an absolute error of one ulp of 1 into 2Y(Σ − I), which drifts Y off the
            # manifold by ~1e-6 per float32 step at p = 64.  The _ex forms do not read the LAPACK status back
            # to the host (Σ⁻¹ is never singular, see above).
            if self.has_skew:
                WA = work["WA"]
                if not skew_exact:
                    WA.diagonal(dim1=-2, dim2=-1).zero_()
                torch.baddbmm(WA, Bt, BtT, alpha=-0.5, out=S2)
            else:
                torch.baddbmm(S2, Bt, BtT, beta=0.0, alpha=-0.5, out=S2)
            if manifold_kernels.usable(S2):  # one C call (see manifold_kernels: LAPACK's path costs far more here)
                manifold_kernels.cayley_solve_(S2, K_top, work["solve_scratch"])
            elif self.has_skew:
                torch.linalg.solve_ex(torch.sub(I, S2, alpha=0.5), S2, out=(K_top, work["info"]))
            else:
                torch.cholesky_solve(S2, torch.linalg.cholesky_ex(torch.sub(I, S2, alpha=0.5))[0], out=K_top)
            torch.baddbmm(BtT, BtT, K_top, alpha=0.5, out=work["K_bottom"])  # BΣ = B + ½B·2(Σ − I)
            D = torch.bmm(L, work["K"], out=work["D"])
            H = torch.add(work["Y"], D, alpha=0.5, out=work["K"])  # (K is free again)
            if k == 1:
                # one matrix: BLAS updates the strided block Y_⊥ in place (N(N − p)p multiply-adds)
                work["Yp0"].addmm_(work["H0"], work["Bt0"], alpha=-1.0)
            else:
                # Y_⊥ ← Y_⊥ − H·Bᵀ as an update of the whole (contiguous) Λ by H·[0 | Bᵀ]: the Y columns get
                # exactly 0, and an in-place batched product on the strided block Y_⊥ would copy it (4× slower
                # for many small matrices)
                if self.has_skew:
                    Wz = W
                    work["WA"].zero_()
                else:
                    Wz = torch.cat([W.new_zeros(k, p, p), W], -1)
                L.baddbmm_(H, Wz, alpha=-1.0)
            work["Y"].add_(D)
            return
        Y, Yp = L[..., :p], L[..., p:]
        Bt = W[..., p:] if self.has_skew else W  # Bᵀ, (k, p, N−p)
        I = _eye(p, L.dtype, L.device)
        A = None
        if self.has_skew:  # exactly skew from the strict lower triangle (the diagonal may be 0/0 if eps = 0)
            A = W[..., :p].tril(-1)
            A = A - A.mT
        BtB = torch.bmm(Bt, Bt.mT)
        hA = 0.5 * A if A is not None else torch.zeros_like(BtB)
        X = torch.cat([torch.cat([hA, I.expand(k, p, p)], -1), torch.cat([hA @ hA - BtB, hA], -1)], -2)
        K = exp_kernel(X, p)
        if A is not None:
            K = torch.cat([torch.baddbmm(K[..., :p], K[..., p:], hA), K[..., p:]], -1)
            R = torch.baddbmm(K[..., p:, :], hA, K[..., :p, :])  # ½A·K_top + K_bottom
        else:
            R = K[..., p:, :]
        P = torch.baddbmm(torch.bmm(Y, R), torch.bmm(Yp, Bt.mT), K[..., :p, :])  # [P₁ + ½P₂A, P₂]
        Yp.baddbmm_(P[..., p:], Bt, alpha=-1.0)
        Y.add_(P[..., :p])

    def tangent(self, L: torch.Tensor, coords: torch.Tensor, p: int) -> torch.Tensor:
        """Λ·B̄·E = Y·A + Y_⊥·B (the inverse of global_rep)."""
        S, B = self.split(coords, L.shape[0], p)
        out = L[:, p:] @ B
        if self.has_skew:
            out = out + L[:, :p] @ self.skew_from(S, p)
        return out

    def hor_matrix(self, coords: torch.Tensor, shape) -> torch.Tensor:
        """The dense element [[A, −Bᵀ], [B, 0]] of 𝔤^hor (N×N; tests and documentation only)."""
        N, p = shape
        S, B = self.split(coords, N, p)
        H = coords.new_zeros(N, N)
        if self.has_skew:
            H[:p, :p] = self.skew_from(S, p)
        H[p:, :p] = B
        H[:p, p:] = -B.T
        return H

    def lowrank_factors(self, coords: torch.Tensor, shape):
        """(B′, B″) with B̄ = B′B″ᵀ (dense N×2p each; tests and documentation only)."""
        N, p = shape
        S, B = self.split(coords, N, p)
        A = self.skew_from(S, p) if self.has_skew else coords.new_zeros(p, p)
        I = torch.eye(p, dtype=coords.dtype, device=coords.device)
        Z = coords.new_zeros(N - p, p)
        Bp = torch.cat([torch.cat([0.5 * A, I], 1), torch.cat([B, Z], 1)], 0)
        Bpp = torch.cat([torch.cat([I, 0.5 * A.T], 1), torch.cat([Z, -B], 1)], 0)
        return Bp, Bpp

    # -- retraction ----------------------------------------------------------------------------------
    def retract_(self, L: torch.Tensor, coords: torch.Tensor, p: int, method: str = "cayley") -> torch.Tensor:
        """Λ ← Λ·Retraction(B̄) in place for one Λ and flat coordinates (see :meth:`retract_batch_`)."""
        W = self.to_matrix(coords, (L.shape[0], p)).unsqueeze(0)
        self.retract_batch_(L.unsqueeze(0), W, p, method)
        return L


class Grassmann(Stiefel):
    """Gr(p, N), points represented by orthonormal Y ∈ ℝ^{N×p} (span(Y)); the Stiefel formulas with A ≡ 0.

    Metric Tr(Δ₁ᵀΔ₂); Riemannian gradient ∇L − YYᵀ∇L; 𝔤^hor = {[[0, −Bᵀ], [B, 0]]}, B = Y_⊥ᵀΔ;
    X = [[0, I], [−BᵀB, 0]] (Brantner 2023).
    """

    name = "grassmann"
    has_skew = False

    def rgrad(self, Y: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        return G - Y @ (Y.T @ G)

    def inner(self, Y: torch.Tensor, D1: torch.Tensor, D2: torch.Tensor) -> torch.Tensor:
        return (D1 * D2).sum()

    def random_tangent(self, Y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        K = torch.randn(Y.shape, generator=generator, dtype=Y.dtype)
        return K - Y @ (Y.T @ K)


class SymplecticStiefel(Manifold):
    """SpSt(2n, 2N) = {U ∈ ℝ^{2N×2n} : UᵀJ_{2N}U = J_{2n}}; G = Sp(2N); E = columns 1..n, N+1..N+n of I.

    * metric (Bendokat & Zimmermann 2021) g_U(Δ₁, Δ₂) = tr((UᵀU)⁻¹Δ₁ᵀ(I − ½JᵀU(UᵀU)⁻¹UᵀJ)Δ₂), Riemannian
      gradient ∇L·UᵀU + J·U·(∇Lᵀ J U);
    * section: U's columns completed by a symplectic Gram–Schmidt (SR) of a Gaussian draw with the
      symplectic U-component removed; Λ = [U_q, W, U_p, Z] ∈ Sp(2N);
    * 𝔤^hor: Hamiltonian [[A, B], [C, −Aᵀ]] with A = [[A₁, A₂ᵀ], [A₃, 0]], B = [[B₁, B₂ᵀ], [B₂, 0]],
      C = [[C₁, C₂ᵀ], [C₂, 0]], B₁, C₁ symmetric (Brantner 2023); global_rep reads the unique
      D ∈ 𝔤^hor with DE = Λ⁻¹Δ, Λ⁻¹ = JᵀΛᵀJ;
    * retraction: D = UVᵀ with U = [DE, E], Vᵀ = [Eᵀ; EᵀD(I − EEᵀ)] (rank 4n), Λ ← Λ + (ΛU)·K·Vᵀ with the
      same Cayley / low-rank exp kernels.  Cayley and exp of a Hamiltonian matrix are symplectic.

    Dense 2N×2N work is used for the (small) symplectic case; there is no performance target here.
    """

    name = "symplectic_stiefel"
    point_is_view = False
    point_correction = False

    def validate(self, name: str, t: torch.Tensor) -> None:
        if t.ndim != 2:
            raise ValueError(f"{name}: a symplectic_stiefel parameter must be a matrix (2N, 2n), got {tuple(t.shape)}")
        M, m = t.shape
        if M % 2 or m % 2 or m < 2 or M < m:
            raise ValueError(
                f"{name}: a symplectic_stiefel parameter must have even shape (2N, 2n) with N >= n >= 1, "
                f"got {tuple(t.shape)}"
            )

    def dim(self, shape) -> int:
        N, n = shape[0] // 2, shape[1] // 2
        return 4 * N * n - 2 * n * n + n

    def _sizes(self, N: int, n: int):
        return [n * n] + [(N - n) * n] * 4 + [n * (n + 1) // 2] * 2

    def _idx(self, N: int, n: int, device=None) -> torch.Tensor:
        """Indices of E's columns (and rows): 0..n−1 and N..N+n−1."""
        return torch.cat([torch.arange(n, device=device), torch.arange(N, N + n, device=device)])

    # -- points --------------------------------------------------------------------------------------
    def check(self, U: torch.Tensor) -> float:
        U = U.detach().to(torch.float64)
        n = U.shape[1] // 2
        return float(torch.linalg.matrix_norm(U.T @ _apply_J(U) - poisson_tensor(n)))

    def project(self, X: torch.Tensor) -> torch.Tensor:
        """S factor of the SR decomposition of X (symplectic Gram–Schmidt, positive normalisation)."""
        return symplectic_gram_schmidt(X)

    def random_point(self, shape, generator: torch.Generator, dtype=torch.float64, spread: float = 0.5):
        """S factor of the SR decomposition of Q·E + spread·G, Q orthosymplectic, G Gaussian.

        Q = [[Re V, −Im V], [Im V, Re V]] with V Haar-unitary (QR of a complex Gaussian) is orthogonal and
        symplectic; the Gaussian perturbation and the SR make the point generic but well conditioned (the SR
        of a plain Gaussian matrix is often badly conditioned).
        """
        M, m = shape
        N, n = M // 2, m // 2
        Z = torch.complex(
            torch.randn(N, N, generator=generator, dtype=torch.float64),
            torch.randn(N, N, generator=generator, dtype=torch.float64),
        )
        V, R = torch.linalg.qr(Z)
        ph = torch.diagonal(R) / torch.abs(torch.diagonal(R))
        V = V * ph  # phase fix: Haar measure
        Q = torch.cat([torch.cat([V.real, -V.imag], 1), torch.cat([V.imag, V.real], 1)], 0)
        idx = torch.cat([torch.arange(n), torch.arange(N, N + n)])
        X = Q[:, idx] + spread * torch.randn(M, m, generator=generator, dtype=torch.float64)
        return symplectic_gram_schmidt(X).to(dtype)

    def point(self, L: torch.Tensor, p: int) -> torch.Tensor:
        N, n = L.shape[-2] // 2, p // 2
        return torch.cat([L[..., :n], L[..., N : N + n]], -1)

    # -- metric and gradient -------------------------------------------------------------------------
    def rgrad(self, U: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        JU = _apply_J(U)
        return G @ (U.T @ U) + JU @ (G.T @ JU)

    def inner(self, U: torch.Tensor, D1: torch.Tensor, D2: torch.Tensor) -> torch.Tensor:
        Ginv = torch.linalg.inv(U.T @ U)
        JtU = _apply_Jt(U)
        M = D2 - 0.5 * JtU @ (Ginv @ (U.T @ _apply_J(D2)))
        return torch.trace(Ginv @ D1.T @ M)

    def random_tangent(self, U: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Λ·D·E for a random D ∈ 𝔤^hor, with Λ any section at U."""
        L = self.init_section(U, generator)
        c = torch.randn(self.dim(U.shape), generator=generator, dtype=U.dtype)
        return self.tangent(L, c, U.shape[1])

    # -- section -------------------------------------------------------------------------------------
    def _assemble(self, U: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        """Λ = [U_q, C_q, U_p, C_p] from U (2N×2n) and the complement C (2N×2(N−n))."""
        n, k = U.shape[1] // 2, C.shape[1] // 2
        return torch.cat([U[:, :n], C[:, :k], U[:, n:], C[:, k:]], 1)

    def init_section(self, U: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        M, m = U.shape
        R = torch.randn(M, M - m, generator=generator, dtype=U.dtype).to(U.device)
        return self._complete(U, R)

    def _complete(self, U: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        M, m = U.shape
        if M == m:
            return self._assemble(U, U[:, :0])
        Jn = poisson_tensor(m // 2, U.dtype, U.device)
        for _ in range(2):
            R = R - U @ (Jn.T @ (U.T @ _apply_J(R)))  # remove the symplectic U-component
        return self._assemble(U, symplectic_gram_schmidt(R))

    def reorthonormalize_(self, L: torch.Tensor, p: int) -> torch.Tensor:
        """Re-symplectify Λ (or each of a batch) by symplectic Gram–Schmidt in float64 over its pairs
        (i, N+i), U's pairs first (Λ's columns are already in that order)."""
        if L.ndim == 3:
            for Li in L:
                self.reorthonormalize_(Li, p)
            return L
        L.copy_(symplectic_gram_schmidt(L.to(torch.float64), passes=2))
        return L

    def resection(self, U: torch.Tensor, L_old: torch.Tensor) -> torch.Tensor:
        N, n = L_old.shape[0] // 2, U.shape[1] // 2
        C = torch.cat([L_old[:, n:N], L_old[:, N + n :]], 1)
        return self._complete(U, C.clone())

    # -- global tangent space ------------------------------------------------------------------------
    def _from_TE(self, X: torch.Tensor) -> torch.Tensor:
        """Coordinates of the D ∈ 𝔤^hor with DE = X (X ∈ T_E, 2N×2n)."""
        N, n = X.shape[0] // 2, X.shape[1] // 2
        q, pc = X[:, :n], X[:, n:]
        A1 = q[:n]
        A3 = q[n:N]
        C1 = q[N : N + n]
        C2 = q[N + n :]
        B1 = pc[:n]
        B2 = pc[n:N]
        A2 = -pc[N + n :]
        i, j = torch.tril_indices(n, n, 0, device=X.device)
        sym = lambda S: (0.5 * (S + S.T))[i, j]
        return torch.cat(
            [A1.reshape(-1), A2.reshape(-1), A3.reshape(-1), B2.reshape(-1), C2.reshape(-1), sym(B1), sym(C1)]
        )

    def _blocks(self, coords: torch.Tensor, N: int, n: int):
        parts = torch.split(coords, self._sizes(N, n))
        A1 = parts[0].view(n, n)
        A2, A3, B2, C2 = (t.view(N - n, n) for t in parts[1:5])
        i, j = torch.tril_indices(n, n, 0, device=coords.device)

        def sym(v):
            S = coords.new_zeros(n, n)
            S[i, j] = v
            S[j, i] = v
            return S

        return A1, A2, A3, B2, C2, sym(parts[5]), sym(parts[6])

    def _Linv(self, L: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Λ⁻¹X = JᵀΛᵀJX."""
        return _apply_Jt(L.T @ _apply_J(X))

    def global_rep(self, L: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        return self._from_TE(self._Linv(L, D))

    def grad_rep(self, L: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        """Coordinate gradient c of w ↦ L(Λ·(I + W̄(w))·E) at w = 0, i.e. ⟨c, w⟩ = Tr(Gᵀ·Λ·W̄(w)·E).

        For Stiefel and Grassmann this *is* global_rep(Λ, rgrad(Y, G)).  Here the metric that 𝔤^hor inherits
        is not the coordinate inner product (the reference code calls it "bi-invariant but degenerate"), and
        global_rep(rgrad) preconditioned elementwise is not always a descent direction; the coordinate
        gradient is, for every positive diagonal preconditioner (so Adam's step always descends).  It is the
        adjoint of the map w ↦ Λ·W̄(w)·E applied to G.
        """
        N, n = L.shape[0] // 2, G.shape[1] // 2
        X = L.T @ G
        Xq, Xp = X[:, :n], X[:, n:]
        r1, r2, r3, r4 = slice(0, n), slice(n, N), slice(N, N + n), slice(N + n, 2 * N)
        i, j = torch.tril_indices(n, n, 0, device=G.device)

        def sym_adj(S):  # adjoint of v ↦ sym(v) (lower triangle with diagonal)
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

    # -- the optimizer's layout: flat coordinates, stepped one matrix at a time -----------------------
    def coord_shape(self, shape) -> tuple[int, ...]:
        return (self.dim(shape),)

    def to_matrix(self, coords: torch.Tensor, shape) -> torch.Tensor:
        return coords

    def to_flat(self, C: torch.Tensor, shape) -> torch.Tensor:
        return C

    def grad_coords(
        self, L: torch.Tensor, G: torch.Tensor, out: torch.Tensor | None = None, work: dict | None = None
    ) -> torch.Tensor:
        """:meth:`grad_rep` for a batch (a loop: the symplectic case has no performance target)."""
        if work is not None:
            out = work["C"]
        C = torch.stack([self.grad_rep(Li, Gi) for Li, Gi in zip(L, G)])
        return C if out is None else out.copy_(C)

    def retract_batch_(self, L: torch.Tensor, W: torch.Tensor, p: int, method: str = "cayley", **_) -> None:
        """:meth:`retract_` for a batch (a loop; ``work`` and ``skew_exact`` are not used)."""
        for Li, Wi in zip(L, W):
            self.retract_(Li, Wi, p, method)

    def hor_matrix(self, coords: torch.Tensor, shape) -> torch.Tensor:
        N, n = shape[0] // 2, shape[1] // 2
        A1, A2, A3, B2, C2, B1, C1 = self._blocks(coords, N, n)
        Z = coords.new_zeros(N - n, N - n)
        A = torch.cat([torch.cat([A1, A2.T], 1), torch.cat([A3, Z], 1)], 0)
        B = torch.cat([torch.cat([B1, B2.T], 1), torch.cat([B2, Z], 1)], 0)
        C = torch.cat([torch.cat([C1, C2.T], 1), torch.cat([C2, Z], 1)], 0)
        return torch.cat([torch.cat([A, B], 1), torch.cat([C, -A.T], 1)], 0)

    def tangent(self, L: torch.Tensor, coords: torch.Tensor, p: int) -> torch.Tensor:
        N, n = L.shape[0] // 2, p // 2
        D = self.hor_matrix(coords, (2 * N, 2 * n))
        idx = self._idx(N, n, L.device)
        return L @ D[:, idx]

    def lowrank_factors(self, coords: torch.Tensor, shape):
        """(U, V) with D = UVᵀ, U = [DE, E], Vᵀ = [Eᵀ; EᵀD(I − EEᵀ)] (2N × 4n each)."""
        N, n = shape[0] // 2, shape[1] // 2
        D = self.hor_matrix(coords, shape)
        idx = self._idx(N, n, coords.device)
        E = torch.eye(2 * N, dtype=coords.dtype, device=coords.device)[:, idx]
        Rt = D[idx].clone()
        Rt[:, idx] = 0
        return torch.cat([D[:, idx], E], 1), torch.cat([E, Rt.T], 1)

    def retract_(self, L: torch.Tensor, coords: torch.Tensor, p: int, method: str = "cayley") -> torch.Tensor:
        """Λ ← Λ + (ΛU)·K·Vᵀ with the rank-4n factors of :meth:`lowrank_factors`."""
        N, n = L.shape[0] // 2, p // 2
        U, V = self.lowrank_factors(coords, (2 * N, 2 * n))
        K = _kernel(V.T @ U, method, 2 * n)
        L.add_((L @ U) @ K @ V.T)
        return L


MANIFOLDS: dict[str, Manifold] = {
    "euclidean": Euclidean(),
    "stiefel": Stiefel(),
    "grassmann": Grassmann(),
    "symplectic_stiefel": SymplecticStiefel(),
}


def get_manifold(name: object, argname: str = "manifold") -> Manifold:
    """The manifold registered under ``name``; ValueError naming ``argname`` otherwise."""
    if isinstance(name, Manifold):
        return name
    if not isinstance(name, str) or name not in MANIFOLDS:
        raise ValueError(f"{argname} must be one of {sorted(MANIFOLDS)}, got {name!r}")
    return MANIFOLDS[name]


def manifold_point(
    manifold: str,
    shape,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """A random point of ``manifold`` with the given shape, drawn (in float64) from ``generator``.

    Stiefel/Grassmann: sign-fixed QR of a Gaussian matrix (Haar on St); symplectic Stiefel: S factor of the
    SR decomposition of a Gaussian matrix; Euclidean: a Gaussian tensor.

    Raises:
        ValueError: unknown manifold, wrong shape, or ``generator`` not a torch.Generator.
    """
    m = get_manifold(manifold)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    shape = tuple(shape)
    m.validate("shape", torch.empty(shape, device="meta"))
    return m.random_point(shape, generator, torch.float64).to(dtype=dtype, device=device)


def project_to_manifold(X: torch.Tensor, manifold: str) -> torch.Tensor:
    """A point of ``manifold`` near X (sign-fixed QR, or SR for symplectic Stiefel), in X's dtype.

    Raises:
        ValueError: unknown manifold or a shape that cannot lie on it.
    """
    m = get_manifold(manifold)
    m.validate("X", X)
    return m.project(X.detach().to(torch.float64)).to(X.dtype)
