"""Linear self-attention (LSA) transformers that learn an optimizer in context.

Notation follows Ahn et al. (NeurIPS 2023) and Dutta & Sra (2024), with tokens as rows (docs/conventions.md):
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
- ``full``: unconstrained (d+1)×(d+1) P and Q (Ahn et al.'s code, PR #1; Vladymyrov et al. 2024's FULL).
- ``diag`` (Vladymyrov et al. 2024's DIAG): P = diag(p_x·I_d, p_y), Q = diag(q_x·I_d, q_y), four scalars per
  head. Summed over heads they give ω_xx = Σ p_x q_x, ω_xy = Σ p_x q_y, ω_yx = Σ p_y q_x, ω_yy = Σ p_y q_y;
  GD is ω_yx = −η with the others 0, GD++ adds ω_xx = −γ.
- ``factorised`` (von Oswald et al. 2023, §2): value, key and query matrices W_V, W_K, W_Q ∈ R^{k×(d+1)} (key
  size k) and, with ``projection``, W_P ∈ R^{(d+1)×k}; Q = W_Kᵀ W_Q and P = W_P W_V (without ``projection``,
  P = W_V, which needs k = d+1). W_K, W_Q, W_V are stored as separate parameters of shape (L, H, k, d+1) so that
  an orthogonality (Stiefel) constraint can act on each (k, d+1) block. Von Oswald et al.'s Proposition 1
  weights W_K = W_Q = [[I, 0], [0, 0]], W_V = [[0, 0], [0, −1]], W_P = η·I make one layer one GD step of size η
  (their 1/N is the layer's 1/n here).

Heads are summed. Layers are independent or ``tied`` (one set of weights applied L times, a recurrent model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, repeat
from torch import nn

from icl.validation import check_tensor
from learned_optimizers import fused
from learned_optimizers.configs import MODES, LSAConfig  # noqa: F401  (re-exported)

#: the trainable parameters of each mode
MODE_PARAMETERS = {
    "sparse": ("A",),
    "gdpp": ("A", "B"),
    "full": ("P", "Q"),
    "diag": ("p", "q"),
    "factorised": ("W_K", "W_Q", "W_V", "W_P"),
}


def context_gram(Z: torch.Tensor) -> torch.Tensor:
    """G = Σ_{i≤n} z_i z_iᵀ over the n context tokens (the query excluded), (B, d+1, d+1).

    On the CPU by the fused kernel (:mod:`learned_optimizers.fused`, one pass over the tokens) when the tokens are
    data (no gradient asked for them); otherwise one batched GEMM.
    """
    if fused.usable(Z):
        return fused.context_gram(Z)
    ctx = Z[:, :-1]
    return torch.matmul(ctx.mT, ctx)


def prompt_statistics(Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a Gram-space forward reads of the tokens Z (B, n+1, d+1): the context Gram matrix G_0 and the query
    token z_q (B, d+1); one pass of the fused kernel over the tokens where it applies."""
    if fused.usable(Z):
        return fused.prompt_statistics(Z)
    return context_gram(Z), Z[:, -1]


def combine_heads(G: torch.Tensor, P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """W = Σ_h Q_hᵀ G P_hᵀ for a batch of Gram matrices G (B, a, a), Q (H, a, c), P (H, e, a): (B, c, e).

    Two GEMMs over all heads and prompts at once (no loop over heads or prompts): the shared weights are always
    the right factor, so each product folds the batch into the rows of one matrix multiplication:
    R[b, j, (h, l)] = Σ_k G[b, j, k] P[h, l, k], then W[b, i, l] = Σ_{h, j} R[b, j, h, l] Q[h, j, i].
    """
    B, a = G.shape[0], G.shape[-1]
    H, e, c = P.shape[0], P.shape[1], Q.shape[-1]
    R = torch.matmul(G, P.permute(2, 0, 1).reshape(a, H * e))  # (B, j, (h, l))
    R = R.reshape(B, a, H, e).permute(0, 3, 2, 1).reshape(B * e, H * a)  # [(b, l), (h, j)]
    return torch.matmul(R, Q.reshape(H * a, c)).reshape(B, e, c).mT


def attention(Z: torch.Tensor, P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """The un-normalised linear attention Attn_{P,Q}(Z) = Σ_h Z Q_hᵀ G P_hᵀ, in linear time.

    Row j is Σ_h Σ_{i≤n} (z_iᵀ Q_h z_j) P_h z_i (Ahn et al. 2023, §2: Attn(Z) = P Z M (Zᵀ Q Z) in their column
    layout); the context Gram matrix G is formed first, never the (n+1)×(n+1) scores.

    Args:
        Z: tokens, (B, n+1, d+1).
        P: value-projection matrices, (H, d+1, d+1).
        Q: key-query matrices, (H, d+1, d+1).

    Returns:
        Attn(Z), (B, n+1, d+1) (without the 1/n of the layer).
    """
    return torch.matmul(Z, combine_heads(context_gram(Z), P, Q))


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
    return Z + attention(Z, P, Q) / n


def read_prediction(Z: torch.Tensor) -> torch.Tensor:
    """ŷ = −(the query's y-slot), (B,)."""
    return -Z[..., -1, -1]


def check_tokens(Z: object, d: int, dtype: torch.dtype) -> torch.Tensor:
    """Validate a token matrix: (B, n+1, d+1) with n >= 1, finite, in ``dtype``; ValueError naming Z otherwise."""
    Z = check_tensor("Z", Z, shape=(None, None, d + 1))
    if Z.shape[1] < 2:
        raise ValueError(f"Z must hold at least one context token and the query, got {tuple(Z.shape)}")
    if Z.dtype != dtype:
        raise ValueError(f"Z has dtype {Z.dtype} but the model's weights are {dtype}")
    return Z


class LinearSelfAttention(nn.Module):
    """An L-layer linear self-attention transformer (Ahn et al. 2023; Dutta & Sra 2024; von Oswald et al. 2023;
    Vladymyrov et al. 2024).

    Update rule per layer ℓ: Z_{ℓ+1} = Z_ℓ + (1/n) Σ_h Z_ℓ Q_{ℓ,h}ᵀ G_ℓ P_{ℓ,h}ᵀ (Ahn et al. eq. 3), with P and Q
    built from the mode's parameters (module docstring); ŷ = −[Z_L]_{query, y}.

    Args:
        d: input dimension (tokens have d+1 entries).
        cfg: the model config.
        generator: the run's ``init`` stream; the weights are drawn from it.

    Shapes:
        forward(Z: (B, n+1, d+1)) -> ŷ: (B,); layer_predictions(Z) -> (B, L+1).
    """

    #: ŷ is linear in the query's x (the query is never a key or value), so probes may use basis queries.
    query_linear = True

    def __init__(self, d: int, cfg: LSAConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"d must be an integer >= 1, got {d!r}")
        self.d = d
        self.cfg = cfg
        e = d + 1
        k = cfg.key_size if cfg.key_size is not None else e
        if cfg.mode == "factorised" and not cfg.projection and k != e:
            raise ValueError(f"mode 'factorised' without projection needs key_size = d+1 = {e}, got {k}")
        self.key_size = k
        lead = (1 if cfg.tied else cfg.layers, cfg.heads)
        shapes = {
            "A": (d, d),
            "B": (d, d),
            "P": (e, e),
            "Q": (e, e),
            "p": (2,),
            "q": (2,),
            "W_K": (k, e),
            "W_Q": (k, e),
            "W_V": (k, e),
            "W_P": (e, k),
        }
        names = MODE_PARAMETERS[cfg.mode]
        if cfg.mode == "factorised" and not cfg.projection:
            names = names[:-1]
        for name in shapes:  # every mode has the same attributes; absent ones are None
            if name in names:
                w = torch.randn(lead + shapes[name], generator=generator, dtype=torch.float32) * cfg.init_std
                self.register_parameter(name, nn.Parameter(w))
            else:
                setattr(self, name, None)

    @property
    def layers(self) -> int:
        return self.cfg.layers

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def layer_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """P and Q of one layer, each (H, d+1, d+1)."""
        i = 0 if self.cfg.tied else layer
        mode, d = self.cfg.mode, self.d
        if mode in ("sparse", "gdpp"):
            Q = -F.pad(self.A[i], (0, 1, 0, 1))
            e_y = torch.zeros_like(Q)
            e_y[:, -1, -1] = 1.0  # P's y→y entry is fixed to 1
            P = e_y if self.B is None else F.pad(self.B[i], (0, 1, 0, 1)) + e_y
        elif mode == "full":
            P, Q = self.P[i], self.Q[i]
        elif mode == "diag":

            def diag(v: torch.Tensor) -> torch.Tensor:
                return torch.diag_embed(torch.cat([repeat(v[:, :1], "h 1 -> h d", d=d), v[:, 1:]], dim=-1))

            P, Q = diag(self.p[i]), diag(self.q[i])
        else:  # factorised
            Q = einsum(self.W_K[i], self.W_Q[i], "h k i, h k j -> h i j")  # W_Kᵀ W_Q
            P = self.W_V[i] if self.W_P is None else einsum(self.W_P[i], self.W_V[i], "h i k, h k j -> h i j")
        return P, Q

    def layer_matrix(self, G: torch.Tensor, layer: int) -> torch.Tensor:
        """W_ℓ = Σ_h Q_{ℓ,h}ᵀ G P_{ℓ,h}ᵀ for a batch of context Gram matrices G (B, d+1, d+1): (B, d+1, d+1).

        One layer is Z ← Z (I + W_ℓ/n) (Attn(Z) = Z W). The mode's structure is used instead of padding P and
        Q to (d+1)×(d+1): with Q_h = −[[A_h, 0], [0, 0]] and P_h = [[B_h, 0], [0, 1]] (``sparse``, ``gdpp``),
        W = −[[Σ_h A_hᵀ G_xx B_hᵀ, Σ_h A_hᵀ G_xy], [0, 0]], whose y-column needs only Σ_h A_h; ``diag`` is
        W = G ⊙ Σ_h q_h p_hᵀ.
        """
        i = 0 if self.cfg.tied else layer
        mode, d = self.cfg.mode, self.d
        if mode in ("sparse", "gdpp"):
            v = -torch.matmul(G[:, -1:, :d], self._a_sum(i))  # (Σ_h A_hᵀ G_xy)ᵀ negated, (B, 1, d)
            if mode == "sparse":
                top = F.pad(v.mT, (d, 0))
            else:
                top = torch.cat([-combine_heads(G[:, :d, :d], self.B[i], self.A[i]), v.mT], dim=-1)
            return F.pad(top, (0, 0, 0, 1))
        if mode == "diag":
            p, q = self._diag_vectors(i)
            return G * torch.matmul(q.mT, p)
        P, Q = self.layer_weights(layer)
        return combine_heads(G, P, Q)

    def gram_maps(self) -> torch.Tensor:
        """Every layer's W_ℓ = Σ_h Q_{ℓ,h}ᵀ G P_{ℓ,h}ᵀ as a linear map of the symmetric G's upper triangle,
        (L, (d+1)(d+2)/2, (d+1)²) (:func:`learned_optimizers.fused.gram_maps`); tied layers share one map."""
        weights = [self.layer_weights(i) for i in range(1 if self.cfg.tied else self.layers)]
        P, Q = (torch.stack(w) for w in zip(*weights))
        K = fused.gram_maps(P, Q)
        return K.expand(self.layers, *K.shape[1:]) if self.cfg.tied else K

    def active_entries(self) -> tuple[bool, ...]:
        """Which entries (i, m) of W_ℓ the mode can make non-zero, row-major (d+1)² flags: the x-rows only in
        modes ``sparse``/``gdpp`` (Q's y-column is zero), and of those only the y-column in ``sparse``
        (P = e_y e_yᵀ)."""
        e, mode = self.d + 1, self.cfg.mode
        return tuple(
            mode not in ("sparse", "gdpp") or (i < self.d and (mode == "gdpp" or m == self.d))
            for i in range(e) for m in range(e)
        )  # fmt: skip

    def a_sums(self) -> torch.Tensor:
        """Modes ``sparse``/``gdpp``: Σ_h A_{ℓ,h} of every layer, (L, d, d). Reads ``self.A[ℓ]`` layer by layer (a
        study may hold A as per-layer blocks that only support that indexing)."""
        if self.cfg.tied:
            A = self._a_sum(0)
            return A.expand(self.layers, *A.shape)
        return torch.stack([self._a_sum(i) for i in range(self.layers)])

    def _a_sum(self, i: int) -> torch.Tensor:
        A = self.A[i]
        return A[0] if A.shape[0] == 1 else A.sum(0)

    def _diag_vectors(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mode ``diag``: the diagonals of P and Q, each (H, d+1) = (p_x·1_d, p_y)."""
        d = self.d
        p, q = self.p[i], self.q[i]
        return (torch.cat([p[:, :1].expand(-1, d), p[:, 1:]], dim=-1),
                torch.cat([q[:, :1].expand(-1, d), q[:, 1:]], dim=-1))  # fmt: skip

    def attend(self, Z: torch.Tensor, layer: int) -> torch.Tensor:
        """Attn_ℓ(Z) = Z W_ℓ(G) of one layer on the token matrix, (B, n+1, d+1) (see :meth:`layer_matrix`)."""
        return torch.matmul(Z, self.layer_matrix(context_gram(Z), layer))

    def check_input(self, Z: torch.Tensor) -> torch.Tensor:
        """Validate the token matrix: (B, n+1, d+1) with n >= 1, finite, in the model's dtype."""
        return check_tokens(Z, self.d, self.dtype)

    def tokens(self, Z: torch.Tensor, check: bool = True) -> list[torch.Tensor]:
        """The token matrices Z_0, Z_1, …, Z_L after every layer (the token-space recursion)."""
        if check:
            Z = self.check_input(Z)
        n = Z.shape[1] - 1
        out = [Z]
        for layer in range(self.cfg.layers):
            Z = Z + self.attend(Z, layer) / n
            out.append(Z)
        return out

    def layer_predictions(self, Z: torch.Tensor, check: bool = True) -> torch.Tensor:
        """The read-out −[Z_ℓ]_{query, y} after every layer ℓ = 0, …, L, (B, L+1)."""
        return torch.stack([read_prediction(Zl) for Zl in self.tokens(Z, check=check)], dim=1)

    #: the prediction depends on the prompt only through its context Gram matrix and its query token
    gram_sufficient = True

    def forward(self, Z: torch.Tensor, check: bool = True) -> torch.Tensor:
        """The prediction ŷ = −[Z_L]_{query, y}, (B,), computed in Gram space (:meth:`forward_gram`)."""
        if check:
            Z = self.check_input(Z)
        return self.forward_gram(*prompt_statistics(Z), Z.shape[1] - 1)

    def forward_gram(self, G0: torch.Tensor, z_q: torch.Tensor, n: int) -> torch.Tensor:
        """ŷ from the prompt's statistics alone: G_0 = Σ_{i≤n} z_i z_iᵀ (B, d+1, d+1) and the query z_q (B, d+1).

        Every layer multiplies all tokens on the right by M_ℓ = I + W_ℓ/n, so Z_ℓ = Z_0 T_ℓ with
        T_ℓ = M_0 ⋯ M_{ℓ−1} and the context Gram matrix of Z_ℓ is T_ℓᵀ G_0 T_ℓ. The data are read once (G_0,
        O(n·d²) per prompt, outside the autograd graph of the weights; a trainer may compute it once per batch);
        the L layers then cost O(d³) per prompt whatever n is, and ŷ = −z_qᵀ T_L e_y. Equal to the token
        recursion (:meth:`tokens`) up to floating-point reassociation.
        """
        if fused.usable(G0, z_q):  # the same recursion, forward and backward fused in one CPU kernel
            if self.cfg.mode == "sparse":
                return fused.sparse(G0, z_q, self.a_sums(), n)
            C = fused.plain_memory(self.layers, self.d + 1, G0)
            return fused.gram_space(G0, z_q, self.gram_maps(), C, n, self.active_entries())
        if self.cfg.mode == "sparse":
            return self._forward_sparse(G0, z_q, n)
        T = None
        for layer in range(self.cfg.layers):
            G = G0 if T is None else torch.matmul(T.mT, torch.matmul(G0, T))
            W = self.layer_matrix(G, layer) / n
            T = W + torch.eye(W.shape[-1], dtype=W.dtype, device=W.device) if T is None else T + torch.matmul(T, W)
        return -(z_q * T[:, :, -1]).sum(-1)

    def _forward_sparse(self, G0: torch.Tensor, z_q: torch.Tensor, n: int) -> torch.Tensor:
        """Mode ``sparse`` in Gram space: x never moves (T_ℓ = [[I, t_ℓ], [0, 1]]), so a layer is
        v = −(Σ_h A_h)ᵀ g, g ← g + G_xx v/n, y_q ← y_q + x_qᵀ v/n with g = X_ctxᵀ y_ctx: O(d²) per prompt
        (Ahn et al.'s Lemma 1: the implicit weights take a preconditioned GD step). The query's updates are
        summed first and read out once."""
        d, L = self.d, self.cfg.layers
        G_n = G0[:, :d, :d] / n  # G_xx/n, contiguous: one copy per forward, none per layer
        g = G0[:, d, :d]  # g = X_ctxᵀ y_ctx, (B, d)
        total = None
        for layer in range(L):
            # u = −v = gᵀ Σ_h A_h as rows: one (B, d) × (d, d) product, a single GEMM (per seed under vmap)
            u = torch.matmul(g, self._a_sum(0 if self.cfg.tied else layer))
            total = u if total is None else total + u
            if layer < L - 1:
                g = g - torch.matmul(G_n, u.unsqueeze(-1)).squeeze(-1)  # g + G_xx v/n
        return (z_q[:, :d] * total).sum(-1) / n - z_q[:, d]  # ŷ = −(y_q + x_qᵀ Σ_ℓ v_ℓ/n)

    @torch.no_grad()
    def set_weights(self, A: torch.Tensor | None = None, B: torch.Tensor | None = None, **named) -> LinearSelfAttention:
        """Hand-set weights, each broadcast to its parameter's shape (L or 1, H, ...); used by constructions.

        Args:
            A, B: mode ``sparse``/``gdpp`` blocks, broadcast to (L, H, d, d).
            **named: any other parameter of the mode by name: P, Q (full), p, q (diag, (…, 2) = (x, y) entries),
                W_K, W_Q, W_V, W_P (factorised).

        Raises:
            ValueError: a weight that the mode does not have.
        """
        named = {"A": A, "B": B, **named}
        for name, value in named.items():
            if value is None:
                continue
            param = getattr(self, name, None) if name in sum(MODE_PARAMETERS.values(), ()) else None
            if not isinstance(param, nn.Parameter):
                raise ValueError(f"{name} can not be set in mode {self.cfg.mode!r}; it has {self.parameter_names()}")
            param.copy_(torch.as_tensor(value, dtype=param.dtype, device=param.device).expand_as(param))
        return self

    def parameter_names(self) -> list[str]:
        """The names of this mode's trained weights."""
        return [name for name, _ in self.named_parameters()]
