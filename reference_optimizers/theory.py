"""Closed-form optima that the learned models are judged against.

Ahn, Cheng, Daneshmand & Sra (NeurIPS 2023), Theorem 1: for one linear self-attention layer on prompts with
x ~ N(0, Σ) and noiseless labels, the prediction is ŷ = x_qᵀ Aᵀ g with g = Xᵀy/n, and the expected query loss
E(ŷ − x_qᵀw*)² is a convex quadratic in A. Writing Ω = E[w* w*ᵀ] and K = E[H Ω H] with H = XᵀX/n,

    K = (1 + 1/n) Σ Ω Σ + (tr(Ω Σ)/n) Σ  (+ (σ²/n) Σ with label noise of variance σ²),
    A* = (Ω Σ K⁻¹)ᵀ,   loss* = tr(Σ Ω) − tr(Σ Ω Σ K⁻¹ Σ Ω).

For w* ~ N(0, I) this is A* = Γ⁻¹ with Γ = (1 + 1/n) Σ + (tr Σ / n) I and loss* = tr Σ − tr(Σ Γ⁻¹ Σ); for
w* ~ N(0, Σ⁻¹) it is A* = n/(n+d+1)·Σ⁻¹ with loss* = d(d+1)/(n+d+1) whatever Σ is. Losses are plain mean
squared errors (multiply by ½ for the ½·MSE convention of von Oswald et al.).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OneLayerOptimum:
    """The optimal one-layer preconditioner and its loss.

    Attributes:
        A: the optimal d×d matrix A* (the layer computes ŷ = x_qᵀ A*ᵀ Xᵀy/n).
        loss: the expected query mean squared error at A*.
        zero_loss: the loss of the zero predictor, E(x_qᵀw*)² = tr(Σ Ω).
    """

    A: torch.Tensor
    loss: float
    zero_loss: float


def one_layer_optimum(
    Sigma: torch.Tensor, n: int, w_prior: str = "identity", noise_var: float = 0.0
) -> OneLayerOptimum:
    """Ahn et al. Theorem 1: the optimal single sparse LSA layer for general Σ.

    Args:
        Sigma: the input covariance Σ, (d, d), symmetric positive definite.
        n: the number of context points.
        w_prior: ``"identity"`` for w* ~ N(0, I), ``"inverse_sigma"`` for w* ~ N(0, Σ⁻¹).
        noise_var: the expected label-noise variance E[σ²] (0 for noiseless prompts).

    Returns:
        A* and the optimal loss, computed in float64.
    """
    if not isinstance(Sigma, torch.Tensor) or Sigma.ndim != 2 or Sigma.shape[0] != Sigma.shape[1]:
        raise ValueError(f"Sigma must be a square (d, d) tensor, got {getattr(Sigma, 'shape', Sigma)!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if noise_var < 0:
        raise ValueError(f"noise_var must be >= 0, got {noise_var}")
    S = Sigma.detach().to(torch.float64).cpu()
    d = S.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    if w_prior == "identity":
        Omega = eye
    elif w_prior == "inverse_sigma":
        Omega = torch.linalg.inv(S)
    else:
        raise ValueError(f"w_prior must be 'identity' or 'inverse_sigma', got {w_prior!r}")
    K = (1 + 1 / n) * S @ Omega @ S + (torch.trace(Omega @ S) / n) * S + (noise_var / n) * S
    M = Omega @ S @ torch.linalg.inv(K)  # the optimal Aᵀ
    zero = torch.trace(S @ Omega)
    loss = zero - torch.trace(S @ Omega @ S @ torch.linalg.inv(K) @ S @ Omega)
    return OneLayerOptimum(A=M.T.contiguous(), loss=float(loss), zero_loss=float(zero))
