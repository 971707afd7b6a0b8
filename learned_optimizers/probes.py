"""Probes: what optimizer does a trained model implement? Works for every model of the package.

- :func:`implicit_weights`: the linear model in x_q after every layer. The LSA and Memformer predictions are
  linear in the query token (the query is never a key or value), so running the layers with x_q replaced by the
  basis vectors e_k gives it exactly; for the softmax GPT it is ∂ŷ_ℓ/∂x_q by autograd (von Oswald et al. 2023,
  §3.3 "model cosine similarity").
- :func:`compare`: von Oswald et al.'s metrics and Fu et al.'s best-matching steps (SimE, SimW) of every layer
  against every step of a reference trajectory, as layer×step arrays ready for a heat map.
- :func:`read_out`: the per-layer A_ℓ, B_ℓ, memory coefficients, Ahn et al.'s Dist(Σ^½AΣ^½, I) and the step
  sizes in Σ⁻¹ units; :func:`fit_reference`: the classical method and hyperparameters that best match a model.
- :func:`interpolate`: the loss along the straight line between two weight sets (von Oswald et al., §3.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import torch
from einops import einsum, rearrange, repeat
from torch import nn

import reference_optimizers as ro
from icl.metrics import dist_to_identity
from icl.prompts import PromptBatch
from icl.validation import check_tensor
from learned_optimizers.gpt import GPT
from learned_optimizers.linear_attention import LinearSelfAttention
from learned_optimizers.memformer import Memformer


def _tokens(model: nn.Module, prompts: PromptBatch) -> torch.Tensor:
    param = next(model.parameters())
    return prompts.Z().to(device=param.device, dtype=param.dtype)


def predictions_at(model: nn.Module, Z: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """The model's prediction after every layer when the query's x is replaced by each of K points.

    Args:
        model: any model of the package.
        Z: tokens, (B, n+1, d+1).
        queries: query inputs, (B, K, d) (or (K, d), shared by all prompts).

    Returns:
        (B, L+1, K).
    """
    Z = model.check_input(Z)
    B, d = Z.shape[0], Z.shape[-1] - 1
    if queries.ndim == 2:
        queries = repeat(queries, "k d -> b k d", b=B)
    queries = check_tensor("queries", queries, shape=(B, None, d)).to(dtype=Z.dtype, device=Z.device)
    K = queries.shape[1]
    Zk = repeat(Z, "b t e -> (b k) t e", k=K).clone()
    Zk[:, -1, :d] = rearrange(queries, "b k d -> (b k) d")
    Zk[:, -1, d] = 0.0
    return rearrange(model.layer_predictions(Zk, check=False), "(b k) l -> b l k", k=K)


def implicit_weights(model: nn.Module, Z: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """The linear model w_ℓ in x_q that the model applies after every layer: ŷ_ℓ = ⟨w_ℓ, x_q⟩, (B, L+1, d).

    Args:
        model: any model of the package.
        Z: tokens, (B, n+1, d+1).
        method: ``basis`` (exact for models linear in the query: w_{ℓ,k} = ŷ_ℓ(e_k) − ŷ_ℓ(0)), ``autograd``
            (∂ŷ_ℓ/∂x_q at the prompt's own query, von Oswald et al.), or ``auto`` (basis when the model's
            ``query_linear`` is true, else autograd).
    """
    Z = model.check_input(Z)
    d = Z.shape[-1] - 1
    if method == "auto":
        method = "basis" if getattr(model, "query_linear", False) else "autograd"
    if method == "basis":
        queries = torch.cat([Z.new_zeros(1, d), torch.eye(d, dtype=Z.dtype, device=Z.device)])
        with torch.no_grad():
            preds = predictions_at(model, Z, queries)  # (B, L+1, d+1)
        return preds[..., 1:] - preds[..., :1]
    if method != "autograd":
        raise ValueError(f"method must be 'auto', 'basis' or 'autograd', got {method!r}")
    with torch.enable_grad():
        xq = Z[:, -1, :d].detach().clone().requires_grad_(True)
        query = torch.cat([xq, Z[:, -1, d:].detach()], dim=-1)
        Zq = torch.cat([Z[:, :-1].detach(), rearrange(query, "b e -> b 1 e")], dim=1)
        preds = model.layer_predictions(Zq, check=False)
        grads = [
            torch.autograd.grad(preds[:, l].sum(), xq, retain_graph=l < preds.shape[1] - 1, allow_unused=True)[0]
            for l in range(preds.shape[1])
        ]
    return torch.stack([torch.zeros_like(xq) if g is None else g for g in grads], dim=1).detach()


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over the last axis; 0 where either vector is zero."""
    num = (a * b).sum(-1)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))


@dataclass
class Comparison:
    """Per-layer (rows, ℓ = 0…L) against per-step (columns, t = 0…S) similarities to a reference method.

    Attributes:
        loss_model: query MSE after each layer, (L+1,).
        loss_reference: query MSE after each reference step, (S+1,).
        loss_difference: loss_model[ℓ] − loss_reference[t], (L+1, S+1).
        prediction_l2: mean over prompts of |ŷ_ℓ − ⟨w_t, x_q⟩| (von Oswald et al.'s prediction difference).
        model_cosine: mean over prompts of cos(w_ℓ^model, w_t) (their model cosine similarity).
        model_l2: mean over prompts of ‖w_ℓ^model − w_t‖ (their model difference).
        sim_e: Fu et al.'s similarity of errors: mean over prompts of the cosine between the error vectors
            (ŷ(x̃) − ⟨w*, x̃⟩) on the n context inputs and the query.
        sim_w: Fu et al.'s similarity of induced weights: mean cosine between the least-squares linear fit of
            the model's predictions (its implicit weights for a model linear in the query) and w_t.
        best_step_sime, best_step_simw: argmax_t per layer (Fu et al.'s best-matching steps), (L+1,).
    """

    loss_model: np.ndarray
    loss_reference: np.ndarray
    loss_difference: np.ndarray
    prediction_l2: np.ndarray
    model_cosine: np.ndarray
    model_l2: np.ndarray
    sim_e: np.ndarray
    sim_w: np.ndarray
    best_step_sime: np.ndarray = field(init=False)
    best_step_simw: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.best_step_sime = self.sim_e.argmax(axis=1)
        self.best_step_simw = self.sim_w.argmax(axis=1)


def compare(
    model: nn.Module,
    prompts: PromptBatch,
    reference_iterates: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    weight_queries: int | None = None,
) -> Comparison:
    """Compare every layer of ``model`` with every step of a reference trajectory on the same prompts.

    Fu et al. (2023) compute SimE over prefix lengths of a causal model; the LSA models see the whole context,
    so here the error vector runs over K = n+1 query points instead: the n context inputs and the query. SimW
    uses the implicit weights of a model linear in the query (exactly its least-squares fit); for the GPT it fits
    w̃ to predictions at ``weight_queries`` points x̃ ~ N(0, Σ) drawn from ``generator``.

    Args:
        model: any model of the package.
        prompts: the prompts (float64 recommended).
        reference_iterates: (B, S+1, d) from any reference optimizer on the same prompts.
        generator: for the GPT's SimW query points.
        weight_queries: their number (default 4·d + 16).
    """
    Z = _tokens(model, prompts)
    B, d = prompts.batch_size, prompts.d
    ref = check_tensor("reference_iterates", reference_iterates, shape=(B, None, d)).detach().double().cpu()
    X, xq = prompts.X.double().cpu(), prompts.x_query.double().cpu()
    w_star, yq = prompts.w_star.double().cpu(), prompts.y_query.double().cpu()
    w = implicit_weights(model, Z).double().cpu()  # (B, L+1, d)
    with torch.no_grad():
        pred = model.layer_predictions(Z).double().cpu()  # (B, L+1)
    pred_ref = einsum(ref, xq, "b t d, b d -> b t")
    loss_m, loss_r = (pred - yq[:, None]).square().mean(0), (pred_ref - yq[:, None]).square().mean(0)
    cos = _cos(w[:, :, None], ref[:, None]).mean(0)
    l2 = (w[:, :, None] - ref[:, None]).norm(dim=-1).mean(0)
    pred_l2 = (pred[:, :, None] - pred_ref[:, None]).abs().mean(0)
    # SimE over the n context inputs and the query
    Xe = torch.cat([X, xq[:, None]], dim=1)  # (B, n+1, d)
    target = einsum(Xe, w_star, "b k d, b d -> b k")
    if getattr(model, "query_linear", False):
        pred_e = einsum(w, Xe, "b l d, b k d -> b l k")
    else:
        with torch.no_grad():
            pred_e = predictions_at(model, Z, Xe.to(Z.dtype)).double().cpu()
    err_m = pred_e - target[:, None]
    err_r = einsum(ref, Xe, "b t d, b k d -> b t k") - target[:, None]
    sim_e = _cos(err_m[:, :, None], err_r[:, None]).mean(0)
    # SimW
    if getattr(model, "query_linear", False):
        w_fit = w
    else:
        if generator is None:
            raise ValueError("compare needs a generator to draw the SimW query points of a model not linear in x_q")
        T = weight_queries or 4 * d + 16
        chol = torch.linalg.cholesky(prompts.Sigma.double().cpu())
        g = torch.randn(B, T, d, generator=generator, dtype=torch.float64, device=generator.device).cpu()
        Xt = einsum(g, chol, "b t k, i k -> b t i")
        with torch.no_grad():
            pt = predictions_at(model, Z, Xt.to(device=Z.device, dtype=Z.dtype)).double().cpu()  # (B, L+1, T)
        w_fit = einsum(torch.linalg.pinv(Xt), pt, "b d t, b l t -> b l d")
    sim_w = _cos(w_fit[:, :, None], ref[:, None]).mean(0)
    return Comparison(
        loss_model=loss_m.numpy(),
        loss_reference=loss_r.numpy(),
        loss_difference=(loss_m[:, None] - loss_r[None]).numpy(),
        prediction_l2=pred_l2.numpy(),
        model_cosine=cos.numpy(),
        model_l2=l2.numpy(),
        sim_e=sim_e.numpy(),
        sim_w=sim_w.numpy(),
    )


# -- read-out -------------------------------------------------------------------------------------------------


@dataclass
class ReadOut:
    """The interpretable weights of a model (float64 CPU tensors; None where the model has no such part).

    Attributes:
        P, Q: per layer and head, (L, H, d+1, d+1).
        A: the effective preconditioner of each layer, A_ℓ = −Σ_h P_h[y, y]·Q_h[x, x], (L, d, d): the sparse
            layer's w ← w − A_ℓᵀ∇R(w) part (exact for sparse/gdpp/diag, the y-to-y part of full/factorised).
        B: per head P_h[x, x], the x-update of Ahn et al.'s eq. 11, (L, H, d, d).
        step_sizes: c_ℓ = tr(Σ^½A_ℓΣ^½)/d, the step size in Σ⁻¹ units (A_ℓ ≈ c_ℓΣ⁻¹; plain η_ℓ for Σ = I), (L,).
        dist_identity: Ahn et al.'s Dist(Σ^½A_ℓΣ^½, I) = min_c ‖M − cI‖_F/‖M‖_F, (L,).
        dist_identity_raw: Dist(A_ℓ, I), (L,).
        omegas: mode ``diag``: Vladymyrov et al.'s (ω_xx, ω_xy, ω_yx, ω_yy) summed over heads, (L, 4).
        alpha, gamma: CGD-like Memformer scalars, (L,).
        heavy_ball_eta, heavy_ball_beta: the CGD-like Memformer as heavy ball, η_ℓ = α_ℓc_ℓ and
            β_ℓ = α_ℓγ_ℓ/α_{ℓ−1} (β_0 = 0), exact when A_ℓ = c_ℓΣ⁻¹ with Σ = I or B = 0 and scalar A.
        Gamma: LFOM Memformer coefficients as stored ((L, …) shared or (L, L, …) per layer).
        qk: GPT only: per layer and head W_inᵀW_Qᵀ W_K W_in, the bilinear form between x-tokens (ignoring
            LayerNorm and the positional embedding), (L, H, d, d).
    """

    P: torch.Tensor | None = None
    Q: torch.Tensor | None = None
    A: torch.Tensor | None = None
    B: torch.Tensor | None = None
    step_sizes: torch.Tensor | None = None
    dist_identity: torch.Tensor | None = None
    dist_identity_raw: torch.Tensor | None = None
    omegas: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    gamma: torch.Tensor | None = None
    heavy_ball_eta: torch.Tensor | None = None
    heavy_ball_beta: torch.Tensor | None = None
    Gamma: torch.Tensor | None = None
    qk: torch.Tensor | None = None


def _sqrtm(S: torch.Tensor) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(S)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


@torch.no_grad()
def read_out(model: nn.Module, Sigma: torch.Tensor | None = None) -> ReadOut:
    """The per-layer A_ℓ, B_ℓ, memory coefficients and Ahn et al.'s diagnostics of a model.

    Args:
        model: any model of the package.
        Sigma: the input covariance Σ (d, d) for Dist(Σ^½AΣ^½, I) and the step sizes in Σ⁻¹ units; I if None.
    """
    if isinstance(model, GPT):
        return _read_out_gpt(model)
    attn = model.attention if isinstance(model, Memformer) else model
    if not isinstance(attn, LinearSelfAttention):
        raise ValueError(f"read_out does not know {type(model).__name__}")
    d = attn.d
    weights = [attn.layer_weights(layer) for layer in range(attn.layers)]
    P = torch.stack([p for p, _ in weights]).double().cpu()
    Q = torch.stack([q for _, q in weights]).double().cpu()
    A = -einsum(P[..., d, d], Q[..., :d, :d], "l h, l h i j -> l i j")
    S = torch.eye(d, dtype=torch.float64) if Sigma is None else check_tensor("Sigma", Sigma, shape=(d, d)).double()
    root = _sqrtm(S.cpu())
    M = root @ A @ root
    out = ReadOut(
        P=P,
        Q=Q,
        A=A,
        B=P[..., :d, :d],
        step_sizes=einsum(M, "l i i -> l") / d,
        dist_identity=torch.tensor([dist_to_identity(m) if m.norm() > 0 else math.nan for m in M]),
        dist_identity_raw=torch.tensor([dist_to_identity(a) if a.norm() > 0 else math.nan for a in A]),
    )
    if attn.cfg.mode == "diag":
        p, q = P[..., [0, d], [0, d]], Q[..., [0, d], [0, d]]  # (L, H, 2): the x and y entries
        out.omegas = rearrange(einsum(p, q, "l h i, l h j -> l i j"), "l i j -> l (i j)")
    if isinstance(model, Memformer):
        if model.alpha is not None:
            alpha, gamma = model.alpha.detach().double().cpu(), model.gamma.detach().double().cpu()
            out.alpha, out.gamma = alpha, gamma
            out.heavy_ball_eta = alpha * out.step_sizes
            beta = alpha * gamma / torch.cat([alpha.new_ones(1), alpha[:-1]])
            beta[0] = 0.0
            out.heavy_ball_beta = beta
        else:
            out.Gamma = model.Gamma.detach().double().cpu()
    return out


def _read_out_gpt(model: GPT) -> ReadOut:
    W_in = model.read_in.weight.detach().double().cpu()  # (width, d)
    qk = []
    for block in model.blocks:
        W = block.attn.c_attn.weight.detach().double().cpu()
        Wq, Wk, _ = rearrange(W, "(three nh e) w -> three nh e w", three=3, nh=model.cfg.heads)
        qk.append(einsum(Wq, Wk, W_in, W_in, "h e w, h e v, w i, v j -> h i j"))
    return ReadOut(qk=torch.stack(qk))


# -- fitting a classical method -------------------------------------------------------------------------------


def _preconditioned_steps(X: torch.Tensor, y: torch.Tensor, L: int, P: torch.Tensor) -> torch.Tensor:
    """Preconditioned GD with one matrix per step: w_{ℓ+1} = w_ℓ − P_ℓ∇R(w_ℓ), w_0 = 0; P is (L, d, d).

    Ahn et al. (2023), Lemma 1: the ℓ-th layer of a sparse LSA is this step with P_ℓ = A_ℓᵀ.
    """
    H, g = ro.moments(X, y)
    w = X.new_zeros(X.shape[0], X.shape[-1])
    out = [w]
    for layer in range(L):
        w = w - einsum(P[layer], einsum(H, w, "b i j, b j -> b i") - g, "i j, b j -> b i")
        out.append(w)
    return torch.stack(out, dim=1)


#: family -> (hyperparameter names, iterates(X, y, steps, **params)); schedules have one entry per step
FAMILIES: dict[str, tuple[tuple[str, ...], Callable[..., torch.Tensor]]] = {
    "gradient_descent": (("eta",), lambda X, y, L, eta: ro.gradient_descent(X, y, L, eta)),
    "preconditioned_gd": (("P",), _preconditioned_steps),
    "gd_plus_plus": (("eta", "gamma"), lambda X, y, L, eta, gamma: ro.gd_plus_plus(X, y, L, eta, gamma)),
    "heavy_ball": (("eta", "beta"), lambda X, y, L, eta, beta: ro.heavy_ball(X, y, L, eta, beta)),
    "nesterov": (("eta", "beta"), lambda X, y, L, eta, beta: ro.nesterov(X, y, L, eta, beta)),
    "conjugate_gradient": ((), lambda X, y, L: ro.conjugate_gradient(X, y, L)),
    "newton": ((), lambda X, y, L: ro.newton(X, y, L)),
}
# entries that can not influence the first L iterates, held at 0: β_0 (v_0 = 0, w_{−1} = w_0), GD++'s last γ
_FROZEN = {"beta": 0, "gamma": -1}
#: hyperparameters that are a d×d matrix per step (all others are one scalar per step)
_MATRIX = frozenset({"P"})
#: families without hyperparameters: they cannot win a fit by their parameter count, so "auto" always tries them
PARAMETER_FREE = tuple(f for f, (names, _) in FAMILIES.items() if not names)
#: the default relative error under which a family is said to match the model
MATCH_THRESHOLD = 0.05


def _lsa_families(mode: str) -> tuple[str, ...]:
    if mode == "sparse":  # w ← w − A_ℓᵀ∇R(w) (Lemma 1): per-step preconditioned GD, nothing else
        return ("gradient_descent", "preconditioned_gd")
    if mode == "diag":  # ω_yx = −η and ω_xx = −γ: GD and scalar GD++ (Vladymyrov et al. 2024)
        return ("gradient_descent", "gd_plus_plus")
    return ("gradient_descent", "preconditioned_gd", "gd_plus_plus")  # gdpp, full, factorised


def expressible_families(model: nn.Module) -> tuple[str, ...]:
    """The parametric families of :data:`FAMILIES` that ``model``'s class can run exactly, in some setting of
    its weights, plus the parameter-free ones (:data:`PARAMETER_FREE`), which are always worth comparing.

    - sparse LSA: GD and per-step preconditioned GD (Ahn et al. 2023, Lemma 1); it cannot express GD++;
    - diag LSA: GD and GD++ (Vladymyrov et al. 2024); gdpp, full and factorised LSA: GD, preconditioned GD, GD++;
    - Memformers add the momentum methods their memory can express (Dutta & Sra 2024): heavy ball for the
      CGD-like register, heavy ball and Nesterov for the LFOM registers;
    - the softmax GPT: every family (nothing restricts it).
    """
    if isinstance(model, Memformer):
        memory = ("heavy_ball",) if model.cfg.memory == "cgd" else ("heavy_ball", "nesterov")
        parametric = _lsa_families(model.cfg.attention.mode) + memory
    elif isinstance(model, LinearSelfAttention):
        parametric = _lsa_families(model.cfg.mode)
    else:
        return tuple(FAMILIES)
    return tuple(f for f in FAMILIES if f in parametric or f in PARAMETER_FREE)


@dataclass
class FitResult:
    """The best-matching classical method.

    Attributes:
        family: the best family's name (a key of :data:`FAMILIES`), whether or not it matches.
        params: its per-step hyperparameter schedules: (L,) per scalar, (L, d, d) for the matrices P_ℓ.
        relative_error: ‖w^ref − w^model‖ / ‖w^model‖ over layers 1…L and prompts.
        iterates: the fitted method's iterates, (B, L+1, d).
        errors: the relative error of every family tried.
        parameter_counts: the number of fitted values of every family tried (the frozen ones not counted).
        threshold: the relative error under which a family is said to match.
        matched: ``relative_error <= threshold``; when False no family tried fits the model, and a report must
            say so instead of naming ``family``.
    """

    family: str
    params: dict[str, np.ndarray]
    relative_error: float
    iterates: torch.Tensor
    errors: dict[str, float]
    parameter_counts: dict[str, int] = field(default_factory=dict)
    threshold: float = MATCH_THRESHOLD
    matched: bool = True


def fit_reference(
    model: nn.Module,
    family: str | Sequence[str],
    prompts: PromptBatch,
    *,
    threshold: float = MATCH_THRESHOLD,
) -> FitResult:
    """The classical method (and per-step hyperparameters) whose iterates best match the model's implicit
    weights layer by layer: argmin Σ_{ℓ≥1} Σ_b ‖w_ℓ^ref − w_ℓ^model‖², by Levenberg–Marquardt in float64.

    A family with more hyperparameters can only fit as well or better, so ``"auto"`` tries only the families
    the model's class can express (:func:`expressible_families`: a sparse LSA is never said to run GD++) and
    the parameter-free ones; among families within 1e-9 relative error of the best, the one with the fewest
    fitted values wins. A list of families is tried as given.

    Args:
        model: any model of the package.
        family: a key of :data:`FAMILIES`, a list of them, or ``"auto"``.
        prompts: the prompts the match is measured on.
        threshold: the relative error under which the best family is said to match (``FitResult.matched``).
    """
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
    if family == "auto":
        families = list(expressible_families(model))
    else:
        families = [family] if isinstance(family, str) else list(family)
    if not families:
        raise ValueError("family must name at least one family")
    for f in families:
        if f not in FAMILIES:
            raise ValueError(f"unknown family {f!r}; known: {', '.join(FAMILIES)}")
    w = implicit_weights(model, _tokens(model, prompts)).double().cpu()
    X, y = prompts.X.double().cpu(), prompts.y.double().cpu()
    L, d = w.shape[1] - 1, w.shape[2]
    scale = float(w[:, 1:].norm()) or 1.0
    # starting points from the model's own iterates (each step fitted given the model's w_ℓ):
    # greedy per-layer GD step sizes, and per-layer preconditioners by linear least squares
    H, g = ro.moments(X, y)
    grad = einsum(H, w[:, :-1], "b i j, b l j -> b l i") - g[:, None]
    delta = w[:, 1:] - w[:, :-1]
    step = -(delta * grad).sum((0, 2)) / grad.square().sum((0, 2)).clamp_min(1e-300)
    # δ_b = −P r_b for every prompt b: R Pᵀ = −Δ with the prompts as rows
    P0 = torch.stack([torch.linalg.lstsq(grad[:, layer], -delta[:, layer]).solution.mT for layer in range(L)])
    start = {"eta": step.numpy(), "P": P0.numpy().reshape(-1)}
    sizes = {name: L * d * d if name in _MATRIX else L for f in families for name in FAMILIES[f][0]}
    results = {}
    for f in families:
        names, fn = FAMILIES[f]

        def unpack(theta: np.ndarray, names: tuple[str, ...] = names) -> dict[str, torch.Tensor]:
            params, i = {}, 0
            for name in names:
                v = torch.as_tensor(theta[i : i + sizes[name]], dtype=torch.float64).clone()
                i += sizes[name]
                if name in _MATRIX:
                    v = v.reshape(L, d, d)
                if name in _FROZEN:
                    v[_FROZEN[name]] = 0.0
                params[name] = v
            return params

        def residual(theta: np.ndarray, fn: Callable = fn, unpack: Callable = unpack) -> np.ndarray:
            it = fn(X, y, L, **unpack(theta))
            return ((it[:, 1:] - w[:, 1:]) / scale).reshape(-1).numpy()

        if names:
            theta0 = np.concatenate([start.get(n, np.zeros(sizes[n])) for n in names])
            # LM needs at least as many residuals as unknowns; the trust-region method does not
            method = "lm" if w[:, 1:].numel() >= theta0.size else "trf"
            sol = scipy.optimize.least_squares(residual, theta0, method=method, xtol=1e-15, ftol=1e-15, gtol=1e-15)
            theta = sol.x
        else:
            theta = np.zeros(0)
        params = unpack(theta)
        it = fn(X, y, L, **params)
        err = float((it[:, 1:] - w[:, 1:]).norm()) / scale
        count = sum(sizes[n] - (1 if n in _FROZEN else 0) for n in names)
        results[f] = (err, {k: v.numpy() for k, v in params.items()}, it, count)
    lowest = min(r[0] for r in results.values())
    tied = [f for f in results if results[f][0] <= lowest + 1e-9]
    best = min(tied, key=lambda f: (results[f][3], results[f][0]))
    err, params, it, _ = results[best]
    return FitResult(
        family=best,
        params=params,
        relative_error=err,
        iterates=it,
        errors={f: r[0] for f, r in results.items()},
        parameter_counts={f: r[3] for f, r in results.items()},
        threshold=float(threshold),
        matched=err <= threshold,
    )


# -- interpolation --------------------------------------------------------------------------------------------


@torch.no_grad()
def interpolate(
    model_trained: nn.Module, model_construction: nn.Module, t: Sequence[float] | np.ndarray, prompts: PromptBatch
) -> np.ndarray:
    """The query MSE of the weights (1 − t)·θ_trained + t·θ_construction for each t (von Oswald et al. 2023).

    Both models must be of the same class with parameters of the same names and shapes (t = 0 is the trained
    model, t = 1 the construction). No rescaling symmetry is removed: for factorised weights, align them first.

    Returns:
        The losses, (len(t),).
    """
    a, b = dict(model_trained.named_parameters()), dict(model_construction.named_parameters())
    if type(model_trained) is not type(model_construction) or a.keys() != b.keys():
        raise ValueError("interpolate needs two models of the same class and parametrization")
    for k in a:
        if a[k].shape != b[k].shape:
            raise ValueError(f"parameter {k} has shape {tuple(a[k].shape)} vs {tuple(b[k].shape)}")
    Z = _tokens(model_trained, prompts)
    yq = prompts.y_query.to(device=Z.device, dtype=Z.dtype)
    losses = []
    for s in np.asarray(t, dtype=np.float64).reshape(-1):
        params = {k: (1 - s) * a[k] + s * b[k].to(a[k]) for k in a}
        pred = torch.func.functional_call(model_trained, params, (Z,), {"check": False})
        losses.append(float((pred - yq).square().mean()))
    return np.asarray(losses)
