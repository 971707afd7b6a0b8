"""The Krylov lower bound: the best query loss of any method with prompt-independent scalar coefficients.

GD with any step schedule, heavy ball, Nesterov, preconditioned GD with a fixed P, and the linear transformers
with B_ℓ = 0 and scalar or shared matrices (Dutta & Sra 2024 §1.3 [D] in our notes; Ahn et al. 2023, Lemma 1)
all predict, after `depth` steps from w_0 = 0,

    ŷ = Σ_{k=1..depth} c_k · x_qᵀ (P H)^{k−1} P g,   H = XᵀX/n, g = Xᵀy/n,

with coefficients c_k that are the same for every prompt. Fitting c by least squares on many prompts therefore
gives the lowest expected query loss any such method can reach (CG and Newton are not in this class: their
coefficients depend on the prompt). With P = Σ⁻¹ it bounds the preconditioned linear transformer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from einops import einsum

from reference_optimizers._checks import check_prompts, prompt_weights
from reference_optimizers.gradient_descent import moments


@dataclass(frozen=True)
class KrylovBound:
    """The fitted bound.

    Attributes:
        coefficients: c_1, …, c_depth of the monomial form above, (depth,) float64.
        train_loss: the fitted mean squared query error on the training prompts for depth 0, …, depth
            (depth+1,); entry k uses the best k coefficients (entry 0 is the zero predictor).
        test_loss: the same coefficients evaluated on the test prompts, (depth+1,): the honest bound.
        coefficients_by_depth: the monomial coefficients fitted for every depth 1, …, depth.
        test_predictions: the prediction ŷ of the depth-k fit on each test prompt in column k − 1,
            (B_test, depth) float64: the per-prompt errors (ŷ − y_q)² of the bound, for paired comparisons and
            tail statistics.
    """

    coefficients: torch.Tensor
    train_loss: torch.Tensor
    test_loss: torch.Tensor
    coefficients_by_depth: tuple[torch.Tensor, ...]
    test_predictions: torch.Tensor | None = None


def krylov_bound(
    train_prompts: Any, test_prompts: Any, depth: int, preconditioner: torch.Tensor | None = None
) -> KrylovBound:
    """Fit ŷ = Σ_k c_k x_qᵀ (PH)^{k−1} P g on ``train_prompts`` by least squares; evaluate on the test ones.

    Numerics: in float64, the features are built in the Chebyshev basis T_{k−1}(2PH/L − I) P g (L the largest
    eigenvalue of PH over the training prompts), which spans the same space as the monomials but is far better
    conditioned, and every feature column is scaled to unit RMS before an SVD-based least squares. The fitted
    polynomial is converted back to the monomial coefficients c_k for reporting. Depth 1 is one GD step with
    the best constant step; with P = I and isotropic data it is also Ahn et al.'s one-layer optimum.

    The train loss decreases with depth; the test loss need not: a deep fit (large coefficients) can
    extrapolate badly to test prompts whose spectrum of PH leaves the training range, so fit deep bounds on
    many prompts (or tail-weighted ones) and read ``test_loss`` as the bound. A batch with importance ``weights``
    (:func:`reference_optimizers.tail_weighted`) is fitted by weighted least squares, and its train loss is the
    weighted mean.

    Args:
        train_prompts: anything with X (B, n, d), y (B, n), x_query (B, d), y_query (B,).
        test_prompts: the same, for a separate batch (same d).
        depth: the number of steps/coefficients (>= 1).
        preconditioner: a fixed (d, d) matrix P with real non-negative spectrum of PH (e.g. Σ⁻¹); default I.

    Returns:
        A :class:`KrylovBound`.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    train = [t.detach().to(torch.float64) for t in check_prompts(train_prompts, "train_prompts")]
    test = [t.detach().to(torch.float64) for t in check_prompts(test_prompts, "test_prompts")]
    d = train[0].shape[2]
    if test[0].shape[2] != d:
        raise ValueError(f"test_prompts has d = {test[0].shape[2]} but train_prompts has d = {d}")
    if preconditioner is None:
        P = torch.eye(d, dtype=torch.float64, device=train[0].device)
    else:
        if not isinstance(preconditioner, torch.Tensor) or preconditioner.shape != (d, d):
            raise ValueError(f"preconditioner must be a (d, d) = ({d}, {d}) tensor, got {preconditioner!r}")
        if not bool(torch.isfinite(preconditioner).all()):
            raise ValueError("preconditioner contains NaN or infinite values")
        P = preconditioner.detach().to(torch.float64).to(train[0].device)

    w_tr = prompt_weights(train_prompts, "train_prompts")
    H_tr, g_tr = moments(train[0], train[1])
    L = _spectral_scale(P, H_tr)
    F_tr = _chebyshev_features(P, H_tr, g_tr, train[2], depth, L)
    H_te, g_te = moments(test[0], test[1])
    F_te = _chebyshev_features(P, H_te, g_te.to(train[0].device), test[2].to(train[0].device), depth, L)
    y_tr, y_te = train[3], test[3].to(train[0].device)
    if w_tr is not None:  # importance weights: the weighted least squares of the rows scaled by √w
        root = w_tr.to(y_tr.device).sqrt()
        F_tr, y_tr = F_tr * root[:, None], y_tr * root

    train_loss = [float((y_tr**2).mean())]
    test_loss = [float((y_te**2).mean())]
    coeffs = []
    preds = []
    for k in range(1, depth + 1):
        A = F_tr[:, :k]
        scale = A.pow(2).mean(0).sqrt().clamp_min(torch.finfo(torch.float64).tiny)
        a = torch.linalg.pinv(A / scale, rtol=1e-13) @ y_tr / scale  # Chebyshev-basis coefficients
        train_loss.append(float(((A @ a - y_tr) ** 2).mean()))
        preds.append(F_te[:, :k] @ a)
        test_loss.append(float(((preds[-1] - y_te) ** 2).mean()))
        coeffs.append(torch.as_tensor(_chebyshev_to_monomial(a.cpu().numpy(), L), dtype=torch.float64))
    return KrylovBound(
        coefficients=coeffs[-1],
        train_loss=torch.tensor(train_loss, dtype=torch.float64),
        test_loss=torch.tensor(test_loss, dtype=torch.float64),
        coefficients_by_depth=tuple(coeffs),
        test_predictions=torch.stack(preds, dim=1),
    )


def _spectral_scale(P: torch.Tensor, H: torch.Tensor) -> float:
    """The largest eigenvalue of PH over at most 4096 prompts; it only sets the Chebyshev interval."""
    Hs = H[:4096]
    Ps = (P + P.T) / 2
    # eigenvalues of PH equal those of C H Cᵀ for P = CᵀC when P is SPD; else fall back to singular values
    try:
        C = torch.linalg.cholesky(Ps).T
        lam = torch.linalg.eigvalsh(einsum(C, Hs, C, "i k, b k l, j l -> b i j"))[:, -1]
    except RuntimeError:
        lam = torch.linalg.matrix_norm(einsum(P, Hs, "i k, b k j -> b i j"), ord=2)
    L = float(lam.max())
    return L if L > 0 else 1.0


def _chebyshev_features(P, H, g, xq, depth, L):
    """Columns x_qᵀ T_{k−1}(A) P g, A = (2/L) PH − I, k = 1..depth (three-term recurrence), (B, depth)."""
    v_prev = einsum(P, g, "i j, b j -> b i")
    cols = [einsum(xq, v_prev, "b i, b i -> b")]
    if depth > 1:

        def A(v):
            return 2 / L * einsum(P, einsum(v, H, "b j, b j i -> b i"), "i j, b j -> b i") - v

        v = A(v_prev)
        cols.append(einsum(xq, v, "b i, b i -> b"))
        for _ in range(depth - 2):
            v, v_prev = 2 * A(v) - v_prev, v
            cols.append(einsum(xq, v, "b i, b i -> b"))
    return torch.stack(cols, dim=1)


def _chebyshev_to_monomial(a: np.ndarray, L: float) -> np.ndarray:
    """Σ_j a_j T_j(2x/L − 1) as Σ_k c_k x^{k−1}."""
    p = np.polynomial.Chebyshev(a).convert(kind=np.polynomial.Polynomial)  # in t = 2x/L − 1
    q = p(np.polynomial.Polynomial([-1.0, 2.0 / L]))
    c = np.zeros(len(a))
    c[: len(q.coef)] = q.coef[: len(a)]
    return c


def krylov_steps(coefficients: torch.Tensor | np.ndarray, rtol: float = 1e-8) -> np.ndarray | None:
    """The per-step sizes of (preconditioned) GD that attain a Krylov fit, when they exist.

    The fit predicts with w_T = q(PH)·P g, q(λ) = Σ_k c_k λ^{k−1}; T steps of preconditioned GD with sizes η_t
    give w_T = (I − Π_t (I − η_t PH)) (PH)⁻¹ P g. They agree when 1 − λ q(λ) = Π_t (1 − η_t λ), i.e. when the
    residual polynomial r(λ) = 1 − Σ_k c_k λ^k has the roots 1/η_t. That needs every root real (the optimal
    polynomial often has them; Chebyshev's always does); then GD with those steps, in any order, reproduces the
    bound's coefficients exactly.

    Args:
        coefficients: the monomial c_1, …, c_T of :class:`KrylovBound` (``coefficients_by_depth[T−1]``).
        rtol: a root counts as real when |Im| <= rtol·|root|.

    Returns:
        η_1, …, η_T in increasing order (float64), or None when r has a complex or zero root.
    """
    c = np.asarray(coefficients, dtype=np.float64).reshape(-1)
    if c.size == 0 or not np.all(np.isfinite(c)):
        raise ValueError(f"coefficients must be a non-empty finite vector, got {coefficients!r}")
    roots = np.polynomial.Polynomial(np.concatenate([[1.0], -c])).roots()
    if np.any(roots == 0) or np.any(np.abs(roots.imag) > rtol * np.abs(roots)) or len(roots) != c.size:
        return None
    return np.sort(1.0 / roots.real)
