"""Spectral linear-attention and Memformer models: A_ℓ = U·diag(s_ℓ)·Uᵀ with one orthogonal U shared by the layers.

The optimal L-layer sparse LSA on Ahn et al.'s (NeurIPS 2023) data, x ~ N(0, Σ), w* ~ N(0, Σ⁻¹), has
A_ℓ = c_ℓ·Σ⁻¹ (their Theorem 3): every layer shares Σ's eigenbasis and differs only in its spectrum. The models
here parametrise exactly that class,

    A_ℓ = U · diag(s_ℓ) · Uᵀ,   U ∈ O(d) = St(d, d) (one matrix for all layers), s_ℓ ∈ R^d free per layer,

so the class contains the optimum (U = the eigenbasis of Σ, s_ℓ = c_ℓ/λ) and separates the rotation, found on
the Stiefel manifold (e.g. by :class:`icl.optim.ManifoldAdam`), from the scales, a well-conditioned diagonal
problem. Variants (all share one U across layers, and in ``gdpp`` across A and B):

- :class:`SpectralLSA` with ``mode = "sparse"`` (Ahn et al. eq. 8): A_ℓ spectral;
- :class:`SpectralLSA` with ``mode = "gdpp"`` (eq. 11): A_ℓ = U diag(s_ℓ) Uᵀ and B_ℓ = U diag(b_ℓ) Uᵀ (Thm 4's
  optimum A_ℓ = a_ℓΣ⁻¹, B_ℓ = b_ℓI is in the class);
- :class:`SpectralMemformer`: the CGD-like and LFOM Memformers (Dutta & Sra 2024) with spectral A_ℓ;
- ``shared_basis = False``: one U_ℓ per layer (an ablation; the optimum is still in the class).

Spectra (``spectrum``): ``linear`` stores s directly; ``log`` stores θ with s = exp(θ) (positive spectra,
multiplicative updates: a step changes every eigenvalue of A_ℓ by the same *relative* amount, whatever its size,
so the eigenvalues 1/λ that span a factor 16 on Ahn et al.'s data move at one pace).

The models are the package's :class:`~learned_optimizers.linear_attention.LinearSelfAttention` and
:class:`~learned_optimizers.memformer.Memformer` with their ``A`` (and ``B``) weights replaced by a
:class:`SpectralWeights` module whose ``[layer]`` returns the (H, d, d) stack U diag(s_ℓ,h) Uᵀ: the forward
passes (the linear-time Gram-space kernels) are reused unchanged, and so are every probe and read-out.

The manifold constraint is declared with the library's mechanism (:mod:`learned_optimizers.constraints`):
``model.constraints = {"bases": "stiefel"}``, so :func:`learned_optimizers.constraints.param_groups` (what the
training engine's optimizer specs use) puts every U in a ``stiefel`` group and the rest in a Euclidean one, the
groups a :class:`~icl.optim.ManifoldAdam`, :class:`~icl.optim.ManifoldSGD` or
:class:`~icl.optim.ProjectedRiemannianAdam` takes; :meth:`SpectralMixin.param_groups` adds U's own options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from einops import einsum
from torch import nn

from icl.config import ConfigError, spec
from icl.optim.manifolds import project_to_manifold
from learned_optimizers.constraints import param_groups
from learned_optimizers.linear_attention import LinearSelfAttention, LSAConfig
from learned_optimizers.memformer import Memformer, MemformerConfig

#: how the spectra are stored: s itself, or θ with s = exp(θ)
SPECTRA = ("linear", "log")
#: the manifold of the basis U (the name :class:`icl.optim.ManifoldAdam` groups take)
BASIS_MANIFOLD = "stiefel"


def haar_basis(d: int, generator: torch.Generator | None) -> torch.Tensor:
    """A Haar-random U ∈ O(d) (sign-fixed QR of a Gaussian matrix), float32."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


class SpectralWeights(nn.Module):
    """The weights U_ℓ diag(s_{ℓ,h}) U_ℓᵀ of every layer ℓ and head h, built from a basis and stored spectra.

    ``self[layer]`` is the (H, d, d) stack of that layer, what the LSA kernels index (``model.A[layer]``).

    Args:
        spectra: the stored spectra, a parameter of shape (L, H, d) (θ with s = exp(θ) for ``log``).
        basis: ``basis(layer)`` -> U_ℓ (d, d); the basis parameters belong to the owning model.
        spectrum: ``linear`` or ``log``.
    """

    def __init__(self, spectra: torch.Tensor, basis: Callable[[int], torch.Tensor], spectrum: str) -> None:
        super().__init__()
        self.spectra = nn.Parameter(spectra)
        self._basis = basis
        self.spectrum = spectrum

    def values(self) -> torch.Tensor:
        """The spectra s (L, H, d)."""
        return self.spectra.exp() if self.spectrum == "log" else self.spectra

    def __getitem__(self, layer: int) -> torch.Tensor:
        U = self._basis(layer)
        return einsum(U * self.values()[layer][:, None, :], U, "h i k, j k -> h i j")  # U diag(s) Uᵀ

    def full(self) -> torch.Tensor:
        """All layers' matrices, (L, H, d, d)."""
        return torch.stack([self[i] for i in range(self.spectra.shape[0])])


def _check_spectral(mode: str, spectrum_init: float, spectrum: str) -> None:
    if mode not in ("sparse", "gdpp"):
        raise ConfigError(f"mode = {mode!r}: a spectral model is 'sparse' or 'gdpp' (A_ℓ, B_ℓ = U diag(s) Uᵀ)")
    if spectrum == "log" and spectrum_init <= 0:
        raise ConfigError(f"spectrum_init = {spectrum_init} must be > 0 with spectrum = 'log' (s = exp(θ) > 0)")


@dataclass(frozen=True)
class SpectralLSAConfig(LSAConfig):
    """A spectral LSA: the :class:`LSAConfig` fields (mode ``sparse`` or ``gdpp``) and

    Attributes:
        shared_basis: one U for all layers (True) or one U_ℓ per layer (the ablation).
        spectrum: ``linear`` (s stored) or ``log`` (θ stored, s = exp(θ)).
        spectrum_init: the spectra start at s = spectrum_init·(1 + init_std·ε), ε ~ N(0, 1) per entry (``log``:
            θ = log(spectrum_init) + init_std·ε); ``linear`` with spectrum_init = 0 starts at s = init_std·ε,
            as the unconstrained model's A = init_std·ε.
    """

    shared_basis: bool = True
    spectrum: str = spec("linear", choices=SPECTRA)
    spectrum_init: float = spec(0.0, ge=0)

    def check(self) -> None:
        _check_spectral(self.mode, self.spectrum_init, self.spectrum)


@dataclass(frozen=True)
class SpectralMemformerConfig(MemformerConfig):
    """A Memformer with spectral attention weights: the :class:`MemformerConfig` fields and ``shared_basis``,
    ``spectrum``, ``spectrum_init`` as in :class:`SpectralLSAConfig` (applied to ``attention``)."""

    shared_basis: bool = True
    spectrum: str = spec("linear", choices=SPECTRA)
    spectrum_init: float = spec(0.0, ge=0)

    def check(self) -> None:
        super().check()
        _check_spectral(self.attention.mode, self.spectrum_init, self.spectrum)


class SpectralMixin:
    """Builds the basis and the spectral weights of a model whose LSA is ``self._lsa()``; declares U on Stiefel."""

    bases: nn.ParameterList

    def _lsa(self) -> LinearSelfAttention:
        raise NotImplementedError

    def _make_spectral(self, cfg: Any, generator: torch.Generator | None) -> None:
        lsa = self._lsa()
        acfg = lsa.cfg
        d, lead = lsa.d, (1 if acfg.tied else acfg.layers, acfg.heads)
        count = 1 if (cfg.shared_basis or acfg.tied) else acfg.layers
        self.bases = nn.ParameterList([nn.Parameter(haar_basis(d, generator)) for _ in range(count)])
        self.constraints = {"bases": BASIS_MANIFOLD}  # learned_optimizers.constraints: every U on Stiefel
        for name in ("A", "B"):
            if getattr(lsa, name) is None:
                continue
            eps = torch.randn(lead + (d,), generator=generator) * acfg.init_std
            if cfg.spectrum == "log":
                init = eps + torch.log(torch.tensor(cfg.spectrum_init))
            else:
                init = cfg.spectrum_init * (1 + eps) if cfg.spectrum_init > 0 else eps
            delattr(lsa, name)
            setattr(lsa, name, SpectralWeights(init, self.basis, cfg.spectrum))

    def basis(self, layer: int) -> torch.Tensor:
        """U_ℓ of ``layer`` (the shared U when ``shared_basis``)."""
        return self.bases[0 if len(self.bases) == 1 else layer]

    def param_groups(self, **stiefel_options: Any) -> list[dict[str, Any]]:
        """The parameter groups of a manifold optimizer: :func:`learned_optimizers.constraints.param_groups` (every
        U on ``stiefel``, everything else Euclidean) with ``stiefel_options`` (e.g. ``lr``) on the U group.

        The bases are first re-orthonormalised in their current dtype (sign-fixed QR): a basis drawn in float32
        and converted to float64 is orthogonal only to ~1e-7, which the manifold optimizers refuse in float64.
        Call it after moving the model to its training dtype."""
        with torch.no_grad():
            for p in self.bases:
                p.copy_(project_to_manifold(p.detach(), BASIS_MANIFOLD))
        return [{**g, **stiefel_options} if g.get("manifold") else g for g in param_groups(self)]

    @torch.no_grad()
    def set_spectral(
        self, U: torch.Tensor | None = None, s: torch.Tensor | None = None, b: torch.Tensor | None = None
    ) -> Any:
        """Hand-set the basis U (d, d; every U_ℓ), the spectra s of A and b of B (broadcast to (L, H, d));
        spectra are given as values s, also for ``log`` storage."""
        lsa = self._lsa()
        if U is not None:
            for p in self.bases:
                p.copy_(torch.as_tensor(U, dtype=p.dtype, device=p.device))
        for name, value in (("A", s), ("B", b)):
            if value is None:
                continue
            w = getattr(lsa, name)
            if w is None:
                raise ValueError(f"{name} can not be set in mode {lsa.cfg.mode!r}")
            v = torch.as_tensor(value, dtype=w.spectra.dtype, device=w.spectra.device).expand_as(w.spectra)
            w.spectra.copy_(v.log() if w.spectrum == "log" else v)
        return self

    @torch.no_grad()
    def matrices(self) -> dict[str, torch.Tensor]:
        """The current A (and B) of every layer and head, {name: (L, H, d, d)}."""
        lsa = self._lsa()
        return {name: getattr(lsa, name).full() for name in ("A", "B") if getattr(lsa, name) is not None}


class SpectralLSA(SpectralMixin, LinearSelfAttention):
    """An L-layer sparse or GD++ LSA with A_ℓ (and B_ℓ) = U diag(s_ℓ) Uᵀ (module docstring).

    The forward pass is :class:`LinearSelfAttention`'s (Lemma 1 of Ahn et al.: w ← w − A_ℓᵀ∇R(w) in ``sparse``).

    Args:
        d: input dimension.
        cfg: the config.
        generator: the run's ``init`` stream: U is Haar-random, the spectra as ``cfg.spectrum_init``.
    """

    def __init__(self, d: int, cfg: SpectralLSAConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(d, cfg, generator)
        self._make_spectral(cfg, generator)

    def _lsa(self) -> LinearSelfAttention:
        return self

    def set_weights(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("a spectral model's A and B are U diag(s) Uᵀ: use set_spectral(U, s, b)")


class SpectralMemformer(SpectralMixin, Memformer):
    """A CGD-like or LFOM Memformer (Dutta & Sra 2024) whose attention has A_ℓ = U diag(s_ℓ) Uᵀ.

    Args:
        d: input dimension.
        cfg: the config.
        generator: the run's ``init`` stream.
    """

    def __init__(self, d: int, cfg: SpectralMemformerConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(d, cfg, generator)
        self._make_spectral(cfg, generator)

    def _lsa(self) -> LinearSelfAttention:
        return self.attention


@torch.no_grad()
def stiefel_violation(model: SpectralMixin) -> float:
    """max over the bases of ‖UᵀU − I‖_F (float64)."""
    worst = 0.0
    for U in model.bases:
        U = U.detach().double()
        worst = max(worst, float(torch.linalg.matrix_norm(U.T @ U - torch.eye(U.shape[1], dtype=U.dtype))))
    return worst


@torch.no_grad()
def eigenbasis_angles(U: torch.Tensor, V: torch.Tensor, eigenvalues: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """The largest principal angle (radians), per distinct eigenvalue, between its eigenspace and the learned
    directions that represent it.

    A learned column u_k of U represents the eigenspace onto which it projects most; for each distinct
    eigenvalue with eigenspace E (the columns of V with that eigenvalue) the angle is the largest principal angle
    between span(E) and the span of the learned columns assigned to it (π/2 when fewer columns than dim E are
    assigned). Eigenvalues equal up to ``tol`` form one eigenspace, so rotations inside it cost nothing.

    Args:
        U: the learned basis (d, d).
        V: Σ's eigenvectors as columns (d, d).
        eigenvalues: Σ's eigenvalues in the order of V's columns (d,).

    Returns:
        One angle per distinct eigenvalue, in increasing eigenvalue order.
    """
    U, V, lam = U.double(), V.double(), eigenvalues.double()
    groups: list[list[int]] = []
    for i in torch.argsort(lam).tolist():
        if groups and abs(lam[i] - lam[groups[-1][0]]) <= tol * max(1.0, abs(float(lam[i]))):
            groups[-1].append(i)
        else:
            groups.append([i])
    weight = torch.stack([(V[:, g].T @ U).square().sum(0) for g in groups])  # (groups, d): ‖P_E u_k‖²
    owner = weight.argmax(0)
    out = []
    for j, g in enumerate(groups):
        cols = (owner == j).nonzero().flatten()
        if len(cols) < len(g):
            out.append(torch.pi / 2)
            continue
        cos = torch.linalg.svdvals(V[:, g].T @ U[:, cols])
        out.append(float(torch.arccos(cos.min().clamp(-1, 1))))
    return torch.tensor(out, dtype=torch.float64)
