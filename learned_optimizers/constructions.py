"""Hand-set weights that make the learned models run a known optimizer exactly.

Every construction returns a model (float64 by default) whose implicit linear model after layer ℓ is the
iterate w_ℓ of a classical method on R(w) = (1/2n)‖Xw − y‖² from w_0 = 0, i.e. whose layer-ℓ prediction is
⟨w_ℓ, x_q⟩. The tests prove each one against :mod:`reference_optimizers` to 1e-10 in float64.

Mappings (∇R(w) = H w − g, H = XᵀX/n, g = Xᵀy/n):

- sparse LSA, Ahn et al. Lemma 1: layer ℓ does w ← w − A_ℓᵀ∇R(w), so preconditioned GD with P_ℓ needs A_ℓ = P_ℓᵀ.
- gdpp LSA, von Oswald et al. App. A.10: A_ℓ = η_ℓ·I, B_ℓ = (γ_ℓ/η_ℓ)·I gives GD++ (η_ℓ, γ_ℓ).
- CGD-like Memformer, Dutta & Sra Prop. 1: A_ℓ = η_ℓ·I, α_ℓ = 1, γ_ℓ = β_ℓ gives heavy ball (η_ℓ, β_ℓ).
- LFOM Memformer, Dutta & Sra Prop. 2: scalar per-layer Γ_j^ℓ = c_{ℓj}, A_j given:
  w_{ℓ+1} = w_ℓ − Σ_{j≤ℓ} c_{ℓj} A_jᵀ∇R(w_j).
- factorised LSA, von Oswald et al. Prop. 1: W_K = W_Q = [[I, 0], [0, 0]], W_V = [[0, 0], [0, −1]], W_P = η·I.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from learned_optimizers.linear_attention import LinearSelfAttention, LSAConfig
from learned_optimizers.memformer import Memformer, MemformerConfig

Schedule = float | Sequence[float] | torch.Tensor


def _schedule(value: Schedule, layers: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    if t.numel() == 1:
        t = t.expand(layers)
    if t.numel() != layers:
        raise ValueError(f"{name} has {t.numel()} entries but layers = {layers}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t.clone()


def _check_layers(layers: int) -> int:
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be an integer >= 1, got {layers!r}")
    return layers


def _eyes(scales: torch.Tensor, d: int) -> torch.Tensor:
    """(L, 1, d, d) = scales_ℓ · I."""
    return scales[:, None, None, None] * torch.eye(d, dtype=torch.float64)


def preconditioned_gd_lsa(
    preconditioners: torch.Tensor, *, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
) -> LinearSelfAttention:
    """An L-layer sparse LSA that runs L steps of preconditioned GD, w_{ℓ+1} = w_ℓ − P_ℓ∇R(w_ℓ).

    Ahn et al. (2023) Lemma 1 in this layout gives w ← w − A_ℓᵀ∇R(w) (the transpose matters for non-symmetric
    P_ℓ), so the weights are A_ℓ = P_ℓᵀ.

    Args:
        preconditioners: P_ℓ, (L, d, d) (a per-step size η_ℓ is folded in: P_ℓ = η_ℓ·P).
    """
    P = torch.as_tensor(preconditioners, dtype=torch.float64)
    if P.ndim != 3 or P.shape[1] != P.shape[2] or not bool(torch.isfinite(P).all()):
        raise ValueError(f"preconditioners must be a finite (L, d, d) tensor, got shape {tuple(P.shape)}")
    L, d = P.shape[0], P.shape[1]
    model = LinearSelfAttention(d, LSAConfig(layers=L, mode="sparse", init_std=0.0)).to(device=device, dtype=dtype)
    return model.set_weights(P.transpose(-1, -2)[:, None])


def gd_lsa(
    d: int,
    layers: int,
    eta: Schedule,
    *,
    mode: str = "sparse",
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> LinearSelfAttention:
    """An LSA of any mode that runs gradient descent w_{ℓ+1} = w_ℓ − η_ℓ∇R(w_ℓ).

    Weights: sparse/gdpp A_ℓ = η_ℓ·I (B = 0); full P = e_y e_yᵀ, Q = −η_ℓ·[[I, 0], [0, 0]]; diag p = (0, 1),
    q = (−η_ℓ, 0) (Vladymyrov et al.'s ω_yx = −η_ℓ); factorised von Oswald et al.'s Prop. 1 (:func:`gd_factorised`).
    """
    layers = _check_layers(layers)
    etas = _schedule(eta, layers, "eta")
    if mode == "factorised":
        return gd_factorised(d, layers, etas, dtype=dtype, device=device)
    model = LinearSelfAttention(d, LSAConfig(layers=layers, mode=mode, init_std=0.0)).to(device=device, dtype=dtype)
    if mode in ("sparse", "gdpp"):
        return model.set_weights(_eyes(etas, d))
    if mode == "full":
        e = d + 1
        P = torch.zeros(layers, 1, e, e, dtype=torch.float64)
        P[..., -1, -1] = 1.0
        Q = torch.zeros_like(P)
        Q[..., :d, :d] = -_eyes(etas, d)
        return model.set_weights(P=P, Q=Q)
    if mode == "diag":
        p = torch.tensor([0.0, 1.0], dtype=torch.float64).expand(layers, 1, 2)
        q = torch.stack([-etas, torch.zeros_like(etas)], dim=-1)[:, None]
        return model.set_weights(p=p, q=q)
    raise ValueError(f"unknown mode {mode!r}")


def gd_factorised(
    d: int, layers: int, eta: Schedule, *, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
) -> LinearSelfAttention:
    """Von Oswald et al. (2023) Proposition 1 in the factorised parametrization: each layer is one GD step.

    W_K = W_Q = [[I_d, 0], [0, 0]], W_V = [[0, 0], [W_0, −1]] with W_0 = 0, and W_P = η_ℓ·I (their P = (η/N)·I;
    the 1/N is the layer's 1/n here), key size k = d+1. Then Q = W_KᵀW_Q = [[I, 0], [0, 0]] and
    P = W_P W_V = −η_ℓ·e_y e_yᵀ, so every token's y (the residual y_i − ⟨w_ℓ, x_i⟩, and −⟨w_ℓ, x_q⟩ at the query)
    moves by −(η_ℓ/n) Σ_i (x_iᵀx_j) r_i: w_{ℓ+1} = w_ℓ − η_ℓ∇R(w_ℓ).
    """
    layers = _check_layers(layers)
    etas = _schedule(eta, layers, "eta")
    e = d + 1
    model = LinearSelfAttention(d, LSAConfig(layers=layers, mode="factorised", init_std=0.0))
    model = model.to(device=device, dtype=dtype)
    W_KQ = torch.zeros(e, e, dtype=torch.float64)
    W_KQ[:d, :d] = torch.eye(d, dtype=torch.float64)
    W_V = torch.zeros(e, e, dtype=torch.float64)
    W_V[-1, -1] = -1.0
    W_P = etas[:, None, None, None] * torch.eye(e, dtype=torch.float64)
    return model.set_weights(W_K=W_KQ, W_Q=W_KQ, W_V=W_V, W_P=W_P)


def gd_plus_plus_lsa(
    d: int,
    layers: int,
    eta: Schedule,
    gamma: Schedule,
    *,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> LinearSelfAttention:
    """A gdpp LSA that runs von Oswald et al.'s GD++ with step η_ℓ and input transform γ_ℓ.

    Weights A_ℓ = η_ℓ·I and B_ℓ = (γ_ℓ/η_ℓ)·I (Ahn et al. eq. 11): the layer moves y by a GD step of size η_ℓ and
    every x (query included) by x ← x − (1/n)Σ_i (x_iᵀ η_ℓ x) (γ_ℓ/η_ℓ) x_i = (I − γ_ℓ H_ℓ) x, the
    :func:`reference_optimizers.gd_plus_plus` recurrence. Needs η_ℓ ≠ 0 (B_ℓ = γ_ℓ/η_ℓ).
    """
    layers = _check_layers(layers)
    etas, gammas = _schedule(eta, layers, "eta"), _schedule(gamma, layers, "gamma")
    if bool((etas == 0).any()):
        raise ValueError("eta must be nonzero in every layer: B_ℓ = (γ_ℓ/η_ℓ)·I")
    model = LinearSelfAttention(d, LSAConfig(layers=layers, mode="gdpp", init_std=0.0)).to(device=device, dtype=dtype)
    return model.set_weights(_eyes(etas, d), _eyes(gammas / etas, d))


def heavy_ball_memformer(
    d: int,
    layers: int,
    eta: Schedule,
    beta: Schedule,
    *,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> Memformer:
    """A CGD-like Memformer (sparse LSA) that runs Polyak's heavy ball with per-step (η_ℓ, β_ℓ).

    Mapping. The Memformer's implicit model follows s_ℓ = A_ℓᵀ∇R(w_ℓ) + γ_ℓ s_{ℓ−1}, w_{ℓ+1} = w_ℓ − α_ℓ s_ℓ.
    With v_{ℓ+1} = −α_ℓ s_ℓ this is v_{ℓ+1} = (α_ℓγ_ℓ/α_{ℓ−1}) v_ℓ − α_ℓ A_ℓᵀ∇R(w_ℓ), w_{ℓ+1} = w_ℓ + v_{ℓ+1},
    i.e. heavy ball with η_ℓ = α_ℓ a_ℓ and β_ℓ = α_ℓγ_ℓ/α_{ℓ−1} when A_ℓ = a_ℓ·I. This construction takes
    α_ℓ = 1, A_ℓ = η_ℓ·I, γ_ℓ = β_ℓ (γ_0 = β_0 multiplies R_{−1} = 0 and has no effect, as β_0 on v_0 = 0).
    """
    layers = _check_layers(layers)
    etas, betas = _schedule(eta, layers, "eta"), _schedule(beta, layers, "beta")
    cfg = MemformerConfig(attention=LSAConfig(layers=layers, mode="sparse", init_std=0.0), memory="cgd")
    model = Memformer(d, cfg).to(device=device, dtype=dtype)
    model.attention.set_weights(_eyes(etas, d))
    return model.set_memory(alpha=torch.ones(layers), gamma=betas)


def lfom_memformer(
    coefficients: torch.Tensor,
    d: int,
    A: torch.Tensor | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> Memformer:
    """An LFOM Memformer with scalar, per-layer Γ_j^ℓ = c_{ℓj} that runs the linear first-order method

        w_{ℓ+1} = w_ℓ − Σ_{j≤ℓ} c_{ℓj}·A_jᵀ∇R(w_j)   (Dutta & Sra Prop. 2; Goh 2017's LFOM in increment form).

    Args:
        coefficients: c, (L, L); entries above the diagonal (j > ℓ) are ignored.
        d: input dimension.
        A: the per-layer matrices A_j, (L, d, d); the identity when None.
    """
    c = torch.as_tensor(coefficients, dtype=torch.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or not bool(torch.isfinite(c).all()):
        raise ValueError(f"coefficients must be a finite (L, L) tensor, got shape {tuple(c.shape)}")
    L = c.shape[0]
    cfg = MemformerConfig(
        attention=LSAConfig(layers=L, mode="sparse", init_std=0.0),
        memory="lfom",
        gamma_shape="scalar",
        gamma_shared=False,
    )
    model = Memformer(d, cfg).to(device=device, dtype=dtype)
    As = torch.eye(d, dtype=torch.float64).expand(L, d, d) if A is None else torch.as_tensor(A, dtype=torch.float64)
    if As.shape != (L, d, d):
        raise ValueError(f"A must have shape ({L}, {d}, {d}), got {tuple(As.shape)}")
    model.attention.set_weights(As[:, None])
    return model.set_memory(Gamma=torch.tril(c))
