"""Memformers: linear self-attention with memory registers across layers (Dutta & Sra 2024, arXiv 2410.07263).

Both variants reuse any parametrization of :mod:`learned_optimizers.linear_attention` for the attention
Attn_ℓ(Z) = Σ_h Z Q_{ℓ,h}ᵀ G_ℓ P_{ℓ,h}ᵀ (computed in linear time) and add a memory of earlier attention outputs.

- ``cgd`` (CGD-like Memformer, Dutta & Sra eqs. 17–18): one register carried across layers,

      R_ℓ = Attn_ℓ(Z_ℓ) + γ_ℓ·R_{ℓ−1},   Z_{ℓ+1} = Z_ℓ + α_ℓ·(1/n)·R_ℓ,   R_{−1} = 0,

  with learned scalars α_ℓ (init 1) and γ_ℓ (init 0), so the untrained model is the plain LSA. With the sparse
  parametrization (B_ℓ = 0) the implicit linear model follows s_ℓ = A_ℓᵀ∇R(w_ℓ) + γ_ℓ·s_{ℓ−1},
  w_{ℓ+1} = w_ℓ − α_ℓ·s_ℓ. With A_ℓ = a_ℓ·I this is Polyak's heavy ball v_{ℓ+1} = β_ℓ v_ℓ − η_ℓ ∇R(w_ℓ),
  w_{ℓ+1} = w_ℓ + v_{ℓ+1} with η_ℓ = α_ℓ·a_ℓ and β_ℓ = α_ℓ·γ_ℓ/α_{ℓ−1} (β_0 is irrelevant since v_0 = 0).

- ``lfom`` (LFOM Memformer, Dutta & Sra eqs. 19–20): one register per layer,

      R_ℓ = Attn_ℓ(Z_ℓ),   Z_{ℓ+1} = Z_ℓ + (1/n)·Σ_{j≤ℓ} Γ_j^ℓ ⊙ R_j,

  with Γ_j^ℓ a full (n+1)×(d+1) Hadamard array (``gamma_shape = "full"``, as in the paper; the model then only
  accepts prompts with the configured n), one coefficient per token feature (``"feature"``, (d+1,)), or a scalar
  (``"scalar"``). Γ is ``gamma_shared`` across ℓ (Γ_j^ℓ = Γ_j, the paper's experiments) or separate for every
  (ℓ, j ≤ ℓ). With scalar Γ_j^ℓ = c_{ℓj} and the sparse parametrization the implicit linear model is the linear
  first-order method w_{ℓ+1} = w_ℓ − Σ_{j≤ℓ} c_{ℓj}·A_jᵀ∇R(w_j) (Goh 2017's LFOM in increment form).
  ``fixed_current`` fixes the coefficient of the newest register R_ℓ to 1 and learns only the older ones (the
  paper's GD++/momentum/Nesterov notebooks: Z ← Z + R_ℓ + Σ_{j<ℓ} Γ_j ⊙ R_j).

  Initialisation (``gamma_init``): ``zeros`` as in the paper's code (then, without ``fixed_current``, the model
  outputs 0 until Γ moves), ``ones`` (every register counted once: Z_{ℓ+1} = Z_ℓ + (1/n)·Σ_{j≤ℓ} R_j), or
  ``identity`` (Γ_j^ℓ = 1 if j = ℓ else 0: exactly the plain LSA; needs per-layer Γ).

α, γ and Γ are per layer even when the attention weights are ``tied``: a recurrent Memformer shares P and Q, not
its memory coefficients.
"""

from __future__ import annotations

import torch
from einops import einsum
from torch import nn

from learned_optimizers import fused
from learned_optimizers.configs import GAMMA_SHAPES, MemformerConfig  # noqa: F401  (re-exported)
from learned_optimizers.linear_attention import (
    LinearSelfAttention,
    check_tokens,
    prompt_statistics,
    read_prediction,
)

_COMBINE = {  # Σ_j Γ_j ⊙ R_j for each shape of Γ
    "scalar": "j, j b t e -> b t e",
    "feature": "j e, j b t e -> b t e",
    "full": "j t e, j b t e -> b t e",
}


class Memformer(nn.Module):
    """A CGD-like or LFOM Memformer (Dutta & Sra 2024, Props. 1–2, eqs. 17–20); see the module docstring.

    Args:
        d: input dimension (tokens have d+1 entries).
        cfg: the Memformer config.
        generator: the run's ``init`` stream; the attention weights are drawn from it (α, γ, Γ are
            initialised deterministically).

    Shapes:
        forward(Z: (B, n+1, d+1)) -> ŷ: (B,); layer_predictions(Z) -> (B, L+1).
    """

    query_linear = True

    def __init__(self, d: int, cfg: MemformerConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.d = d
        self.cfg = cfg
        self.attention = LinearSelfAttention(d, cfg.attention, generator)
        L = cfg.attention.layers
        self.alpha = self.gamma = self.Gamma = None
        if cfg.memory == "cgd":
            self.alpha = nn.Parameter(torch.ones(L))
            self.gamma = nn.Parameter(torch.zeros(L))
        else:
            shape = {"scalar": (), "feature": (d + 1,), "full": ((cfg.n or 0) + 1, d + 1)}[cfg.gamma_shape]
            lead = (L,) if cfg.gamma_shared else (L, L)
            if cfg.gamma_init == "zeros":
                G = torch.zeros(lead + shape)
            elif cfg.gamma_init == "ones":
                G = torch.ones(lead + shape)
            else:  # identity: Γ_ℓ^ℓ = 1
                G = torch.eye(L).reshape((L, L) + (1,) * len(shape)).expand(lead + shape).clone()
            self.Gamma = nn.Parameter(G)

    @property
    def layers(self) -> int:
        return self.cfg.attention.layers

    @property
    def dtype(self) -> torch.dtype:
        return self.attention.dtype

    def check_input(self, Z: torch.Tensor) -> torch.Tensor:
        """Validate Z: (B, n+1, d+1), finite, in the model's dtype (and n as configured for a full Γ)."""
        Z = check_tokens(Z, self.d, self.dtype)
        if self.Gamma is not None and self.cfg.gamma_shape == "full" and Z.shape[1] != self.cfg.n + 1:
            raise ValueError(f"Z must have n+1 = {self.cfg.n + 1} tokens for the full Γ, got {tuple(Z.shape)}")
        return Z

    def gamma_coefficients(self, layer: int) -> torch.Tensor:
        """Γ_j^ℓ for j = 0, …, ℓ at ℓ = ``layer``: (ℓ+1, *gamma_shape) (LFOM only)."""
        G = self.Gamma[: layer + 1] if self.cfg.gamma_shared else self.Gamma[layer, : layer + 1]
        if self.cfg.fixed_current:
            G = torch.cat([G[:layer], torch.ones_like(G[:1])])
        return G

    def tokens(self, Z: torch.Tensor, check: bool = True) -> list[torch.Tensor]:
        """The token matrices Z_0, Z_1, …, Z_L after every layer."""
        if check:
            Z = self.check_input(Z)
        n = Z.shape[1] - 1
        out = [Z]
        R = torch.zeros_like(Z)
        registers: list[torch.Tensor] = []
        for layer in range(self.layers):
            U = self.attention.attend(Z, layer)
            if self.cfg.memory == "cgd":
                R = U + self.gamma[layer] * R
                Z = Z + self.alpha[layer] * R / n
            else:
                registers.append(U)
                G = self.gamma_coefficients(layer)
                Z = Z + einsum(G, torch.stack(registers), _COMBINE[self.cfg.gamma_shape]) / n
            out.append(Z)
        return out

    def layer_predictions(self, Z: torch.Tensor, check: bool = True) -> torch.Tensor:
        """The read-out −[Z_ℓ]_{query, y} after every layer ℓ = 0, …, L, (B, L+1)."""
        return torch.stack([read_prediction(Zl) for Zl in self.tokens(Z, check=check)], dim=1)

    @property
    def gram_sufficient(self) -> bool:
        """Whether ŷ depends on the prompt only through G_0 and z_q (not with the full Hadamard Γ)."""
        return not (self.Gamma is not None and self.cfg.gamma_shape == "full")

    def forward(self, Z: torch.Tensor, check: bool = True) -> torch.Tensor:
        """The prediction ŷ = −[Z_L]_{query, y}, (B,), computed in Gram space where the memory allows.

        Every register is the tokens times a (d+1)×(d+1) matrix, R_ℓ = Z_0 S_ℓ, and Z_ℓ = Z_0 T_ℓ (as for the
        plain LSA, :meth:`LinearSelfAttention.forward_gram`): the prompts are read once (G_0) and each layer
        costs O(d³) per prompt. A scalar or per-feature Γ keeps this form (Γ ⊙ R = Z_0 S diag Γ); the full
        (n+1)×(d+1) Hadamard Γ does not, and runs the token recursion.
        """
        if check:
            Z = self.check_input(Z)
        if not self.gram_sufficient:
            return read_prediction(self.tokens(Z, check=False)[-1])
        return self.forward_gram(*prompt_statistics(Z), Z.shape[1] - 1)

    def forward_gram(self, G0: torch.Tensor, z_q: torch.Tensor, n: int) -> torch.Tensor:
        """ŷ from G_0 (B, d+1, d+1) and the query token z_q (B, d+1); not for the full Hadamard Γ."""
        if not self.gram_sufficient:
            raise ValueError("a Memformer with the full (n+1)×(d+1) Γ needs the tokens, not only their Gram matrix")
        if fused.usable(G0, z_q):  # the same recursion, forward and backward fused in one CPU kernel
            att = self.attention
            return fused.gram_space(G0, z_q, att.gram_maps(), self.memory_coefficients(), n, att.active_entries())
        T = torch.eye(G0.shape[-1], dtype=G0.dtype, device=G0.device).expand_as(G0)
        S = torch.zeros_like(G0)
        registers: list[torch.Tensor] = []
        for layer in range(self.layers):
            W = self.attention.layer_matrix(G0 if layer == 0 else torch.matmul(T.mT, torch.matmul(G0, T)), layer)
            U = W if layer == 0 else torch.matmul(T, W)  # Attn(Z_ℓ) = Z_0 T_ℓ W_ℓ
            if self.cfg.memory == "cgd":
                S = U + self.gamma[layer] * S
                T = T + self.alpha[layer] * S / n
            else:
                registers.append(U)
                G = self.gamma_coefficients(layer)
                T = T + einsum(G, torch.stack(registers), _COMBINE[self.cfg.gamma_shape]) / n
        return -(z_q * T[:, :, -1]).sum(-1)

    def memory_coefficients(self) -> torch.Tensor:
        """The memory as coefficients c (L, L, d+1) of T_{ℓ+1} = T_ℓ + (1/n) Σ_{j≤ℓ} U_j diag(c_{ℓj}), U_j = T_j W_j
        (the registers in Z_0 coordinates; not for the full Hadamard Γ).

        CGD-like: S_ℓ = U_ℓ + γ_ℓ S_{ℓ−1} unrolls to S_ℓ = Σ_{j≤ℓ} (Π_{j<k≤ℓ} γ_k) U_j, so c_{ℓj} = α_ℓ Π_{j<k≤ℓ} γ_k.
        LFOM: c_{ℓj} = Γ_j^ℓ (a scalar broadcast over the d+1 features, or the per-feature vector).
        """
        L, e = self.layers, self.d + 1
        rows = []
        if self.cfg.memory == "cgd":
            decay = self.alpha.new_ones(1)  # Π_{j<k≤ℓ} γ_k for j = 0..ℓ
            for layer in range(L):
                decay = torch.cat([decay * self.gamma[layer], decay.new_ones(1)]) if layer else decay
                rows.append(self.alpha[layer] * decay)
            c = [torch.cat([r, r.new_zeros(L - len(r))]) for r in rows]
            return torch.stack(c)[:, :, None].expand(L, L, e)
        for layer in range(L):
            G = self.gamma_coefficients(layer)  # (ℓ+1,) or (ℓ+1, e)
            G = G[:, None].expand(-1, e) if G.dim() == 1 else G
            rows.append(torch.cat([G, G.new_zeros(L - layer - 1, e)]))
        return torch.stack(rows)

    @torch.no_grad()
    def set_memory(
        self,
        alpha: torch.Tensor | None = None,
        gamma: torch.Tensor | None = None,
        Gamma: torch.Tensor | None = None,
    ) -> Memformer:
        """Hand-set α, γ (CGD-like, (L,)) or Γ (LFOM, broadcast to its shape); used by constructions."""
        for name, value in (("alpha", alpha), ("gamma", gamma), ("Gamma", Gamma)):
            if value is None:
                continue
            param = getattr(self, name)
            if param is None:
                raise ValueError(f"{name} can not be set on a {self.cfg.memory!r} Memformer")
            param.copy_(torch.as_tensor(value, dtype=param.dtype, device=param.device).expand_as(param))
        return self
