"""A small causal GPT on Garg et al.'s interleaved prompt layout: the softmax baseline.

In the spirit of nanoGPT's model.py, in one readable file: pre-LayerNorm blocks of causal softmax self-attention
and a GELU MLP, each added to the residual stream, a learned positional embedding, a final LayerNorm.

Token layout (Garg et al. 2022, §2; dtsip/in-context-learning ``models.py``): the prompt (x_1, y_1, …, x_n, y_n,
x_q) becomes the sequence of 2n+1 vectors in R^d

    x-token = x_i,   y-token = (y_i, 0, …, 0),

read in linearly to the width, with a learned positional embedding added. The read-out is linear, and the
prediction for x_{i+1} is taken at the position of the x-token x_{i+1}, so one causal forward pass gives the
predictions for every prefix i = 0, …, n (:meth:`GPT.prefix_predictions`; Garg et al. train on the mean loss over
prefixes, which ``TrainConfig(loss="prefix")`` selects). :meth:`GPT.forward` takes the token matrix Z (B, n+1, d+1)
of the linear models and returns the prediction at the query, so the model trains in the same
:class:`icl.training.Trainer`.

``layer_norm = False`` drops every LayerNorm (von Oswald et al. 2023 report that LayerNorm hurts); with zero
query weights the attention is then a uniform causal average and the model is linear in x_q, which the probe
tests use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from icl.validation import check_tensor
from learned_optimizers.configs import GPTConfig
from learned_optimizers.linear_attention import check_tokens


def _linear(n_in: int, n_out: int) -> nn.Linear:
    # skip_init: no draw from the global RNG; every weight is set from the model's generator afterwards
    return torch.nn.utils.skip_init(nn.Linear, n_in, n_out)


class CausalSelfAttention(nn.Module):
    """Multi-head causal softmax self-attention: softmax(q kᵀ/√e + causal mask) v, heads concatenated."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.c_attn = _linear(cfg.width, 3 * cfg.width)
        self.c_proj = _linear(cfg.width, cfg.width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.c_attn(h), "b t (three nh e) -> three b nh t e", three=3, nh=self.heads)
        att = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        T = h.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        return self.c_proj(rearrange(att @ v, "b nh t e -> b t (nh e)"))


class Block(nn.Module):
    """h ← h + Attn(LN(h)); h ← h + MLP(LN(h))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        norm = (lambda: nn.LayerNorm(cfg.width)) if cfg.layer_norm else nn.Identity
        self.ln_1, self.ln_2 = norm(), norm()
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(
            _linear(cfg.width, cfg.mlp_ratio * cfg.width), nn.GELU(), _linear(cfg.mlp_ratio * cfg.width, cfg.width)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.ln_1(h))
        return h + self.mlp(self.ln_2(h))


class GPT(nn.Module):
    """A causal softmax transformer on interleaved (x, y) tokens (Garg et al. 2022; nanoGPT layout).

    Args:
        d: input dimension.
        cfg: the model config.
        generator: the run's ``init`` stream; every weight is drawn from it.

    Shapes:
        forward(Z: (B, n+1, d+1)) -> ŷ: (B,); prefix_predictions(X (B, n, d), y (B, n), x_query (B, d)) ->
        (B, n+1); layer_predictions(Z) -> (B, L+1).
    """

    #: ŷ is not linear in x_q: probes use autograd for the implicit weights
    query_linear = False

    def __init__(self, d: int, cfg: GPTConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"d must be an integer >= 1, got {d!r}")
        self.d = d
        self.cfg = cfg
        self.read_in = _linear(d, cfg.width)
        self.wpe = nn.Parameter(torch.empty(2 * cfg.max_points + 1, cfg.width))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        self.ln_f = nn.LayerNorm(cfg.width) if cfg.layer_norm else nn.Identity()
        self.read_out = _linear(cfg.width, 1)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2 initialisation from ``generator``: N(0, std²) weights, std/√(2L) on the residual projections,
        zero biases, unit LayerNorm gains."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif ".ln_" in name or name.startswith("ln_f"):
                p.fill_(1.0)
            else:
                residual = name.endswith(("c_proj.weight", "mlp.2.weight"))
                scale = std / math.sqrt(2 * self.cfg.layers) if residual else std
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)

    @property
    def layers(self) -> int:
        return self.cfg.layers

    @property
    def dtype(self) -> torch.dtype:
        return self.wpe.dtype

    def check_input(self, Z: torch.Tensor) -> torch.Tensor:
        """Validate Z: (B, n+1, d+1), finite, in the model's dtype, n <= max_points."""
        Z = check_tokens(Z, self.d, self.dtype)
        if Z.shape[1] - 1 > self.cfg.max_points:
            raise ValueError(f"Z holds n = {Z.shape[1] - 1} context points but max_points = {self.cfg.max_points}")
        return Z

    def _sequence(self, X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        """The interleaved sequence (x_1, [y_1, 0…], …, x_n, [y_n, 0…], x_q), (B, 2n+1, d)."""
        y_tok = F.pad(rearrange(y, "b n -> b n 1"), (0, self.d - 1))
        pairs = rearrange(torch.stack([X, y_tok], dim=2), "b n two d -> b (n two) d")
        return torch.cat([pairs, rearrange(x_query, "b d -> b 1 d")], dim=1)

    def hidden_states(self, X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream after the embedding and after every block, each (B, 2n+1, width)."""
        s = self._sequence(X, y, x_query)
        h = self.read_in(s) + self.wpe[: s.shape[1]]
        out = [h]
        for block in self.blocks:
            h = block(h)
            out.append(h)
        return out

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The linear read-out after the final LayerNorm, (..., width) -> (...)."""
        return self.read_out(self.ln_f(h))[..., 0]

    def prefix_predictions(
        self, X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor, check: bool = True
    ) -> torch.Tensor:
        """Predictions at every x position: entry i predicts y_{i+1} from the first i pairs, (B, n+1).

        The last entry is the query prediction; entries 0…n−1 are Garg et al.'s prefix predictions of the
        context targets (their loss is the mean over all n+1 entries, :func:`icl.training.prefix_mse`, which
        ``TrainConfig(loss="prefix")`` trains on). ``check = False`` skips the shape and finiteness checks (the
        training step, which must not synchronise with the host).
        """
        if check:
            X = check_tensor("X", X, shape=(None, None, self.d))
            y = check_tensor("y", y, shape=(X.shape[0], X.shape[1]))
            x_query = check_tensor("x_query", x_query, shape=(X.shape[0], self.d))
        if X.shape[1] > self.cfg.max_points:
            raise ValueError(f"X holds n = {X.shape[1]} context points but max_points = {self.cfg.max_points}")
        return self.head(self.hidden_states(X, y, x_query)[-1][:, ::2])

    def layer_predictions(self, Z: torch.Tensor, check: bool = True) -> torch.Tensor:
        """The read-out applied at the query after the embedding and after every block, (B, L+1)."""
        if check:
            Z = self.check_input(Z)
        hs = self.hidden_states(Z[:, :-1, :-1], Z[:, :-1, -1], Z[:, -1, :-1])
        return torch.stack([self.head(h[:, -1]) for h in hs], dim=1)

    def forward(self, Z: torch.Tensor, check: bool = True) -> torch.Tensor:
        """The prediction at the query, (B,), from the linear models' token matrix Z (B, n+1, d+1)."""
        if check:
            Z = self.check_input(Z)
        return self.head(self.hidden_states(Z[:, :-1, :-1], Z[:, :-1, -1], Z[:, -1, :-1])[-1][:, -1])
