"""The model configs (:class:`LSAConfig`, :class:`MemformerConfig`, :class:`GPTConfig`), torch-free so that a
study's config is resolved and validated without loading torch. The models' modules re-export them; what each
field means for the model is documented there (:mod:`learned_optimizers.linear_attention`,
:mod:`learned_optimizers.memformer`, :mod:`learned_optimizers.gpt`)."""

from __future__ import annotations

from dataclasses import dataclass

from icl.config import Config, ConfigError, spec

MODES = ("sparse", "gdpp", "full", "diag", "factorised")
GAMMA_SHAPES = ("scalar", "feature", "full")


@dataclass(frozen=True)
class LSAConfig(Config):
    """A linear self-attention transformer.

    Attributes:
        layers: number of layers L.
        heads: number of heads per layer (summed).
        mode: the parametrization of P and Q (see :mod:`learned_optimizers.linear_attention`).
        tied: share one layer's weights across all L layers.
        init_std: the weights are initialised i.i.d. N(0, init_std²). Products of two factors (``full``,
            ``diag``, ``factorised``) start at O(init_std²) or smaller, so these modes need a larger init_std
            to leave the saddle at zero quickly.
        key_size: k, the rows of W_K, W_Q, W_V in mode ``factorised``; None means k = d+1.
        projection: mode ``factorised`` only: P = W_P W_V with a trained W_P (True) or P = W_V (False, k = d+1).
    """

    layers: int = spec(1, ge=1)
    heads: int = spec(1, ge=1)
    mode: str = spec("sparse", choices=MODES)
    tied: bool = False
    init_std: float = spec(0.01, ge=0)
    key_size: int | None = spec(None, ge=1)
    projection: bool = True


@dataclass(frozen=True)
class MemformerConfig(Config):
    """A Memformer: an LSA parametrization plus memory registers.

    Attributes:
        attention: the linear self-attention (layers, heads, mode, tied, init_std, ...).
        memory: ``cgd`` (one register, scalars α_ℓ and γ_ℓ) or ``lfom`` (one register per layer, Γ).
        gamma_shape: LFOM only: ``scalar``, ``feature`` ((d+1,)) or ``full`` ((n+1, d+1), needs n).
        gamma_shared: LFOM only: Γ_j^ℓ = Γ_j for every ℓ (True) or one Γ per (ℓ, j ≤ ℓ) (False).
        gamma_init: LFOM only: ``zeros`` (the paper's code), ``ones`` or ``identity`` (plain LSA; per-layer Γ).
        fixed_current: LFOM only: the newest register enters with coefficient 1, only older ones are learned.
        n: the number of context points; required by ``gamma_shape = "full"``.
    """

    attention: LSAConfig = LSAConfig()
    memory: str = spec("cgd", choices=("cgd", "lfom"))
    gamma_shape: str = spec("scalar", choices=GAMMA_SHAPES)
    gamma_shared: bool = True
    gamma_init: str = spec("zeros", choices=("zeros", "ones", "identity"))
    fixed_current: bool = False
    n: int | None = spec(None, ge=1)

    def check(self) -> None:
        if self.memory == "lfom" and self.gamma_shape == "full" and self.n is None:
            raise ConfigError("gamma_shape = 'full' needs n (the Hadamard Γ is (n+1)×(d+1)); set n")
        if self.memory == "lfom" and self.gamma_init == "identity" and self.gamma_shared:
            raise ConfigError(
                "gamma_init = 'identity' needs gamma_shared = false (a shared Γ_j can not be 1 at ℓ = j only); "
                "for a shared Γ that starts as the plain LSA use fixed_current = true with gamma_init = 'zeros'"
            )


@dataclass(frozen=True)
class GPTConfig(Config):
    """A causal softmax transformer.

    Attributes:
        layers: number of blocks.
        heads: attention heads per block (width must be divisible by heads).
        width: the residual width (Garg et al.: 256).
        max_points: the largest n it accepts (the positional embedding has 2·max_points + 1 rows).
        mlp_ratio: hidden width of the MLP over the residual width.
        layer_norm: use the pre-block and final LayerNorms.
        init_std: weights ~ N(0, init_std²) (the residual projections scaled by 1/√(2·layers), as GPT-2).
    """

    layers: int = spec(2, ge=1)
    heads: int = spec(2, ge=1)
    width: int = spec(64, ge=1)
    max_points: int = spec(64, ge=1)
    mlp_ratio: int = spec(4, ge=1)
    layer_norm: bool = True
    init_std: float = spec(0.02, ge=0)

    def check(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"width = {self.width} must be divisible by heads = {self.heads}")
