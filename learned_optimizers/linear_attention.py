"""Linear self-attention (LSA) transformers that learn an optimizer in context.

Notation follows Ahn et al. (NeurIPS 2023) and Dutta & Sra (2024), with tokens as rows (DEVELOPERS.md):
Z ∈ R^{B×(n+1)×(d+1)} holds the n context tokens z_i = (x_i, y_i) and the query (x_q, 0). One layer is

    Z ← Z + (1/n) · Attn_{P,Q}(Z),   Attn(Z)_j = Σ_h Σ_{i ≤ n} (z_iᵀ Q_h z_j) · P_h z_i,

with the query never used as a key or value. In row form Attn(Z) = Σ_h Z Q_hᵀ G P_hᵀ, where G = Σ_{i≤n} z_i z_iᵀ
is the (d+1)×(d+1) Gram matrix of the context: computing G first makes the layer O(n·d²) (linear in n) and the
(n+1)×(n+1) score matrix is never formed. The prediction is ŷ = −[Z_L]_{query, y} (the minus sign of
Ahn et al. and von Oswald et al.) and the loss the mean squared error on the query.

Parametrizations (``mode``), per layer and head:

- ``sparse`` (Ahn et al. eq. 8): P = [[0, 0], [0, 1]], Q = −[[A, 0], [0, 0]]; A is trained. One layer then
  performs w ← w − Aᵀ∇R(w) on the implicit linear model (Lemma 1), so A = η·I is a GD step of size η.
- ``gdpp`` (Ahn et al. eq. 11): P = [[B, 0], [0, 1]], Q = −[[A, 0], [0, 0]]; A and B are trained. The layer also
  moves every x: x_j ← x_j − (1/n) Σ_i (x_iᵀ A x_j) B x_i, so with A = η·I and B = (γ/η)·I every x (query
  included) is multiplied by (I − γ·XᵀX/n): von Oswald et al.'s GD++ step (η, γ).

Layers are independent or ``tied`` (one set of weights applied L times, a recurrent model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import einsum
from torch import nn

from icl.config import Config, spec
from icl.validation import check_tensor

MODES = ("sparse", "gdpp")


@dataclass(frozen=True)
class LSAConfig(Config):
    """A linear self-attention transformer.

    Attributes:
        layers: number of layers L.
        heads: number of heads per layer (summed).
        mode: the parametrization of P and Q (see the module docstring).
        tied: share one layer's weights across all L layers.
        init_std: the weights are initialised i.i.d. N(0, init_std²).
    """

    layers: int = spec(1, ge=1)
    heads: int = spec(1, ge=1)
    mode: str = spec("sparse", choices=MODES)
    tied: bool = False
    init_std: float = spec(0.01, ge=0)


def context_gram(Z: torch.Tensor) -> torch.Tensor:
    """G = Σ_{i≤n} z_i z_iᵀ over the n context tokens (the query excluded), (B, d+1, d+1)."""
    ctx = Z[:, :-1]
    return einsum(ctx, ctx, "b n i, b n j -> b i j")


def lsa_layer(Z: torch.Tensor, P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """One linear self-attention layer in linear time: Z + (1/n) Σ_h Z Q_hᵀ G P_hᵀ.

    Args:
        Z: tokens, (B, n+1, d+1).
        P: value-projection matrices, (H, d+1, d+1).
        Q: key-query matrices, (H, d+1, d+1).

    Returns:
        The updated tokens, (B, n+1, d+1).
    """
    n = Z.shape[1] - 1
    G = context_gram(Z)
    W = einsum(Q, G, P, "h j i, b j k, h l k -> b i l")  # Σ_h Q_hᵀ G P_hᵀ
    return Z + torch.bmm(Z, W) / n


def read_prediction(Z: torch.Tensor) -> torch.Tensor:
    """ŷ = −(the query's y-slot), (B,)."""
    return -Z[:, -1, -1]


class LinearSelfAttention(nn.Module):
    """An L-layer linear self-attention transformer (Ahn et al. 2023; Dutta & Sra 2024).

    Args:
        d: input dimension (tokens have d+1 entries).
        cfg: the model config.
        generator: the run's ``init`` stream; the weights are drawn from it.

    Shapes:
        forward(Z: (B, n+1, d+1)) -> ŷ: (B,).
    """

    def __init__(self, d: int, cfg: LSAConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"d must be an integer >= 1, got {d!r}")
        self.d = d
        self.cfg = cfg
        n_weights = 1 if cfg.tied else cfg.layers
        shape = (n_weights, cfg.heads, d, d)

        def draw() -> nn.Parameter:
            w = torch.randn(shape, generator=generator, dtype=torch.float32) * cfg.init_std
            return nn.Parameter(w)

        self.A = draw()
        self.B = draw() if cfg.mode == "gdpp" else None

    @property
    def layers(self) -> int:
        return self.cfg.layers

    def layer_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """P and Q of one layer, each (H, d+1, d+1)."""
        idx = 0 if self.cfg.tied else layer
        Q = -F.pad(self.A[idx], (0, 1, 0, 1))
        e_y = torch.zeros_like(Q)
        e_y[:, -1, -1] = 1.0  # P's y→y entry is fixed to 1
        P = e_y if self.B is None else F.pad(self.B[idx], (0, 1, 0, 1)) + e_y
        return P, Q

    def check_input(self, Z: torch.Tensor) -> torch.Tensor:
        """Validate the token matrix: (B, n+1, d+1) with n >= 1, finite, in the model's dtype."""
        Z = check_tensor("Z", Z, shape=(None, None, self.d + 1))
        if Z.shape[1] < 2:
            raise ValueError(f"Z must hold at least one context token and the query, got {tuple(Z.shape)}")
        if Z.dtype != self.A.dtype:
            raise ValueError(f"Z has dtype {Z.dtype} but the model's weights are {self.A.dtype}")
        return Z

    def tokens(self, Z: torch.Tensor, check: bool = True) -> list[torch.Tensor]:
        """The token matrices Z_0, Z_1, …, Z_L after every layer."""
        if check:
            Z = self.check_input(Z)
        out = [Z]
        for layer in range(self.cfg.layers):
            P, Q = self.layer_weights(layer)
            Z = lsa_layer(Z, P, Q)
            out.append(Z)
        return out

    def forward(self, Z: torch.Tensor, check: bool = True) -> torch.Tensor:
        """The prediction ŷ = −[Z_L]_{query, y}, (B,)."""
        if check:
            Z = self.check_input(Z)
        for layer in range(self.cfg.layers):
            P, Q = self.layer_weights(layer)
            Z = lsa_layer(Z, P, Q)
        return read_prediction(Z)

    @torch.no_grad()
    def set_weights(self, A: torch.Tensor, B: torch.Tensor | None = None) -> LinearSelfAttention:
        """Hand-set the weights (broadcast to (L, H, d, d)); used by constructions and tests."""
        self.A.copy_(torch.as_tensor(A, dtype=self.A.dtype).expand_as(self.A))
        if B is not None:
            if self.B is None:
                raise ValueError("B can only be set in mode 'gdpp'")
            self.B.copy_(torch.as_tensor(B, dtype=self.B.dtype).expand_as(self.B))
        return self
