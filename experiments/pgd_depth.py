"""pgd_depth: L-layer linear transformers learn preconditioned gradient descent (Ahn et al., NeurIPS 2023).

Setting (Ahn et al. §2.3 and their ``variable_L_exp`` / ``rotation demonstration-Adam-p0`` notebooks): d = 5,
n = 20, x ~ N(0, Σ) with Σ = U·diag(1, 1, 1/4, 1/16, 1)·Uᵀ (U Haar-random per seed), w* ~ N(0, Σ⁻¹), noiseless.
Sparse LSA (eq. 8, A_ℓ trained) and the GD++ parametrization (eq. 11, mode ``gdpp``: A_ℓ and B_ℓ trained) with
L = 1…4 layers, trained with Ahn et al.'s recipe scaled to CPU: AdamW (β = (0.99, 0.9), no weight decay), each d×d
gradient block clipped to norm 0.01, a batch resampled every 100 steps, the learning rate halved periodically.

Measured on held-out test prompts (the seed's ``test`` stream; training never sees them), per depth:

- the learned log test loss against: preconditioned GD with P = Σ⁻¹ and the L per-step sizes tuned on prompts of
  the training law (the ``tune`` stream), plain GD with tuned per-step sizes, GD++ in Σ⁻¹ geometry with tuned
  (η_ℓ, γ_ℓ) (Thm 4's set A_ℓ = a_ℓΣ⁻¹, B_ℓ = b_ℓI is exactly GD++ on whitened inputs with γ_ℓ = a_ℓb_ℓ), and the
  shared-coefficient Krylov bounds: the best w = Σ_{k<L} c_k (PH)^k P g with coefficients c fitted on the tune
  prompts, for P = I (plain) and P = Σ⁻¹ (preconditioned). Every L-step GD with per-step sizes (preconditioned by P)
  lies in that set, so its bound is below the tuned (P)GD; it is attained when the optimal polynomial has real roots;
- Ahn et al.'s Dist(Σ^½A_ℓΣ^½, I) (and Dist(A_ℓ, I)) per layer over training, read out every ``read_every`` steps;
- the learned step sizes c_ℓ = tr(Σ^½A_ℓΣ^½)/d in Σ⁻¹ units, sorted (Lemma 4: permuting them leaves the loss
  unchanged), against Ahn et al.'s Fig. 2 values 0.43, 0.69, 1.72 for L = 3 and the tuned PGD steps;
- Theorem 1 with w* ~ N(0, I): a 1-layer sparse LSA against A* = Γ⁻¹, Γ = (1 + 1/n)Σ + (tr Σ/n)I
  (:func:`reference_optimizers.one_layer_optimum`), its loss tr Σ − tr(ΣΓ⁻¹Σ).

``tune`` and ``krylov_bound`` of ``reference_optimizers`` were not yet merged when this study was written; the
minimal versions used are :func:`tune_steps` (multi-start L-BFGS on the training-law prompts, autograd, started
from the steps that attain the Krylov bound, so it finds the exact optimum whenever the optimal polynomial has
real roots) and :func:`krylov_bound` below (per-prompt errors, hence standard errors); every Krylov row is
cross-checked against ``reference_optimizers.krylov_bound`` (metric ``test_loss_reference_optimizers``).

Profiles (2 shared CPU cores, measured): ``quick`` 1 seed, depths 1–2, 150 steps (< 1 min); ``standard``
(default) 3 seeds × depths 1–4 × {sparse, gdpp} + the Theorem 1 model, 1200 steps at batch 2048, lr 0.05 halved every
300 (≈ 25 min on 2 idle cores, one seed ≈ 8 min; per layer-step ≈ 12 ms at batch 2048); ``paper``: Ahn et
al.'s batch 20000, 20,000 steps, lr halved every 4000, 5 seeds, 100,000 test prompts (days on CPU; use
``--device cuda``). The baselines are computed per seed, then each model is trained for all seeds at once
(``vectorise_seeds``, :func:`experiments.study.train_all_seeds`; the timings above are of one-by-one runs: on
the CPU the seed batch halves the sparse models' training time and leaves the GD++ models' unchanged, see
docs/performance.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.optimize
import torch
from einops import einsum

import reference_optimizers as ro
from experiments.common import RunContext, write_config
from experiments.registry import Study
from experiments.study import Rows, StudyConfig, held_out_prompts, query_losses, train_all_seeds
from icl.config import ConfigError, spec
from icl.metrics import dist_to_identity, relative_frobenius
from icl.prompts import PromptBatch, PromptConfig, PromptDistribution
from icl.runio import write_json
from icl.seeding import Streams
from icl.training import Fitted, ModelSpec, TrainConfig, signals
from learned_optimizers import LinearSelfAttention, LSAConfig
from learned_optimizers.probes import read_out
from reference_optimizers import moments, one_layer_optimum

NAME = "pgd_depth"
#: Ahn et al. Fig. 2: Σ^½A_ℓΣ^½ ≈ c_ℓ·I for the 3-layer sparse model (0.69, 0.43, 1.72 by layer; sorted here)
PUBLISHED_STEPS_L3 = (0.43, 0.69, 1.72)
EIGENVALUES = (1.0, 1.0, 0.25, 0.0625, 1.0)


@dataclass(frozen=True)
class PGDDepthConfig(StudyConfig):
    """The study (defaults = the standard profile).

    Attributes:
        prompt: Ahn et al.'s law (d = 5, n = 20, Σ eigenvalues (1, 1, 1/4, 1/16, 1), w* ~ N(0, Σ⁻¹)).
        depths: the numbers of layers L.
        modes: LSA parametrizations: ``sparse`` (eq. 8) and ``gdpp`` (eq. 11).
        init_std: the A_ℓ (and B_ℓ) are initialised i.i.d. N(0, init_std²).
        train: the outer optimisation (Ahn et al.'s recipe at CPU scale).
        read_every: steps between read-outs of Dist(Σ^½A_ℓΣ^½, I) during training.
        theorem1: also train the 1-layer sparse model with w* ~ N(0, I) (Theorem 1 check).
        test_prompts: held-out prompts per seed.
        tune_prompts: training-law prompts per seed on which the baselines' steps and Krylov coefficients are fit.
        tune_starts: random restarts of the step-size tuning.
    """

    prompt: PromptConfig = field(
        default_factory=lambda: PromptConfig(d=5, n=20, eigenvalues=EIGENVALUES, w_prior="inverse_sigma")
    )
    depths: tuple[int, ...] = spec((1, 2, 3, 4), ge=1)
    modes: tuple[str, ...] = ("sparse", "gdpp")
    init_std: float = spec(0.01, gt=0)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=1200, batch_size=2048, optimizer="adamw", lr=0.05, betas=(0.99, 0.9), weight_decay=0.0,
            clip="per_matrix", clip_value=0.01, resample_every=100, schedule="step", halve_every=300,
            eval_every=250, eval_batch=4096, log_every=50,
        )
    )  # fmt: skip
    read_every: int = spec(100, ge=1)
    theorem1: bool = True
    test_prompts: int = spec(20_000, ge=2)
    tune_prompts: int = spec(10_000, ge=2)
    tune_starts: int = spec(2, ge=0)

    def check(self) -> None:
        super().check()
        if not self.depths or not self.modes:
            raise ConfigError("depths and modes must not be empty")
        bad = [m for m in self.modes if m not in ("sparse", "gdpp")]
        if bad:
            raise ConfigError(f"modes = {bad} : each mode must be 'sparse' or 'gdpp'")


PROFILES = {
    "quick": {"seeds": (0,), "depths": (1, 2), "train.steps": 150, "train.batch_size": 256, "train.halve_every": 75,
              "train.eval_every": 50, "train.eval_batch": 512, "read_every": 50, "test_prompts": 4000,
              "tune_prompts": 4000, "tune_starts": 1},
    "standard": {},
    "paper": {"seeds": (0, 1, 2, 3, 4), "train.lr": 0.01, "train.steps": 20_000, "train.batch_size": 20_000,
              "train.halve_every": 4000, "train.eval_every": 1000, "read_every": 500, "checkpoint_every": 2000,
              "test_prompts": 100_000, "tune_prompts": 50_000},
}  # fmt: skip


# -- reference methods (minimal local tune / krylov_bound) --------------------------------------------------------


def _whiten(batch: PromptBatch, Sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ^{-½}-whitened context and query inputs (the coordinates in which Σ⁻¹-preconditioned GD is plain GD)."""
    evals, evecs = torch.linalg.eigh(Sigma.double())
    W = (evecs * evals.rsqrt()) @ evecs.T
    return batch.X.double() @ W, batch.x_query.double() @ W


def pgd_predictions(batch: PromptBatch, P: torch.Tensor, etas: torch.Tensor) -> torch.Tensor:
    """ŷ = ⟨w_L, x_q⟩ after L steps w ← w − η_ℓ P(Hw − g) from w_0 = 0 (differentiable in η), (B,)."""
    H, g = moments(batch.X.double(), batch.y.double())
    w = torch.zeros_like(g)
    for eta in etas:
        w = w - eta * einsum(P, einsum(H, w, "b i j, b j -> b i") - g, "i j, b j -> b i")
    return einsum(w, batch.x_query.double(), "b d, b d -> b")


def gdpp_predictions(batch: PromptBatch, Sigma: torch.Tensor, etas: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
    """GD++ (von Oswald et al. App. A.10) on Σ^{-½}-whitened inputs, the token recurrence (differentiable), (B,).

    Each layer: Δ = (η/n)Σ_j r_j x_j, r_j ← r_j − ⟨Δ, x_j⟩, ŷ ← ŷ + ⟨Δ, x_q⟩, then every x ← (I − γH)x with
    H = XᵀX/n of the current inputs. This is the gdpp LSA with A_ℓ = η_ℓΣ⁻¹, B_ℓ = (γ_ℓ/η_ℓ)I (Ahn et al. Thm 4).
    """
    X, xq = _whiten(batch, Sigma)
    r, n = batch.y.double(), X.shape[1]
    pred = torch.zeros_like(r[:, 0])
    for eta, gamma in zip(etas, gammas):
        delta = eta * einsum(r, X, "b n, b n i -> b i") / n
        r = r - einsum(X, delta, "b n i, b i -> b n")
        pred = pred + einsum(xq, delta, "b i, b i -> b")
        H = einsum(X, X, "b n i, b n j -> b i j") / n
        X = X - gamma * einsum(X, H, "b n j, b i j -> b n i")
        xq = xq - gamma * einsum(xq, H, "b j, b i j -> b i")
    return pred


def tune_steps(loss_fn, dim: int, rng: np.random.Generator, starts: int, x0: np.ndarray | None = None) -> np.ndarray:
    """Minimise ``loss_fn(theta: torch.Tensor) -> scalar`` over R^dim by multi-start L-BFGS with autograd.

    A minimal stand-in for ``reference_optimizers.tune`` (not merged yet). Starts: ``x0`` (if given; for (P)GD
    the steps that attain the Krylov bound, :func:`steps_from_krylov`) and ``starts`` log-uniform random points in
    [0.2, 3].
    """

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
        loss = loss_fn(t)
        if not torch.isfinite(loss):
            return 1e30, np.zeros(dim)
        (grad,) = torch.autograd.grad(loss, t)
        return float(loss.detach()), grad.numpy()

    inits = ([x0] if x0 is not None else []) + [
        np.exp(rng.uniform(np.log(0.2), np.log(3.0), dim)) for _ in range(starts)
    ]
    best = None
    for x in inits:
        sol = scipy.optimize.minimize(f, x, jac=True, method="L-BFGS-B", options={"maxiter": 200})
        if best is None or sol.fun < best.fun:
            best = sol
    return np.asarray(best.x)


def krylov_features(batch: PromptBatch, P: torch.Tensor, L: int) -> torch.Tensor:
    """v_k = (PH)^k P g for k < L, (B, L, d)."""
    H, g = moments(batch.X.double(), batch.y.double())
    v = einsum(P, g, "i j, b j -> b i")
    out = [v]
    for _ in range(L - 1):
        v = einsum(P, einsum(H, v, "b i j, b j -> b i"), "i j, b j -> b i")
        out.append(v)
    return torch.stack(out, dim=1)


def krylov_coefficients(tune: PromptBatch, P: torch.Tensor, L: int) -> torch.Tensor:
    """c minimising the query MSE of w = Σ_{k<L} c_k (PH)^k P g on ``tune`` (linear least squares), (L,).

    Solved with LAPACK's SVD-based ``gelsd``, not torch's CPU default ``gelsy``: MKL's ``gelsy`` is not
    bitwise reproducible (its result depends on where its inputs and workspace lie in memory, so two processes
    with the same seed, or two calls on copies of one matrix, differ in the last bits;
    tests/test_reliability_determinism.py). Those bits moved the start of the tuned steps, and with it the
    pgd_tuned baseline's last digit, between processes.
    """
    F_tune = einsum(krylov_features(tune, P, L), tune.x_query.double(), "b k d, b d -> b k")
    return torch.linalg.lstsq(F_tune, tune.y_query.double()[:, None], driver="gelsd").solution[:, 0]


def krylov_bound(tune: PromptBatch, test: PromptBatch, P: torch.Tensor, L: int) -> torch.Tensor:
    """Predictions on ``test`` of the best shared-coefficient Krylov method w = Σ_{k<L} c_k (PH)^k P g.

    A minimal stand-in for ``reference_optimizers.krylov_bound`` (not merged yet).
    """
    c = krylov_coefficients(tune, P, L)
    F_test = einsum(krylov_features(test, P, L), test.x_query.double(), "b k d, b d -> b k")
    return F_test @ c


def steps_from_krylov(c: torch.Tensor) -> np.ndarray | None:
    """The per-step sizes η_ℓ whose GD residual polynomial Π(1 − η_ℓλ) equals 1 − λΣ c_kλ^k: η_ℓ = 1/root_ℓ
    (None if a root is complex). When they exist, L-step (P)GD with these steps attains the Krylov bound."""
    coeffs = np.concatenate([(-c.numpy())[::-1], [1.0]])  # highest degree first: −c_{L−1}λ^L … − c_0λ + 1
    roots = np.roots(coeffs)
    if np.abs(roots.imag).max(initial=0.0) > 1e-8 * np.abs(roots).max(initial=1.0):
        return None
    return np.sort(1.0 / roots.real)


def baselines(
    rows: Rows, cfg: PGDDepthConfig, seed: int, tune: PromptBatch, test: PromptBatch, Sigma: torch.Tensor,
    rng: np.random.Generator,
) -> None:  # fmt: skip
    """Tuned PGD (P = Σ⁻¹), tuned GD, the two Krylov bounds and tuned GD++ in Σ⁻¹ geometry, per depth."""
    d = Sigma.shape[0]
    Sinv, eye = torch.linalg.inv(Sigma.double()), torch.eye(d, dtype=torch.float64)

    def mse(pred: torch.Tensor) -> torch.Tensor:
        return (pred - tune.y_query).square().mean()

    for L in cfg.depths:
        for method, P in (("pgd_tuned", Sinv), ("gd_tuned", eye)):
            x0 = steps_from_krylov(krylov_coefficients(tune, P, L))
            etas = tune_steps(lambda t, P=P: mse(pgd_predictions(tune, P, t)), L, rng, cfg.tune_starts, x0=x0)
            rows.add_loss(method, L, seed, query_losses(pgd_predictions(test, P, torch.tensor(etas)), test))
            for k, e in enumerate(sorted(etas)):
                rows.add(method, L, seed, "step_sorted", e, k=k + 1)
        for method, P in (("krylov_plain", eye), ("krylov_precond", Sinv)):
            rows.add_loss(method, L, seed, query_losses(krylov_bound(tune, test, P, L), test))
            # cross-check against the shared implementation (merged from refopt after this study was written)
            shared = ro.krylov_bound(tune, test, L, P)
            rows.add(method, L, seed, "test_loss_reference_optimizers", float(shared.test_loss[L]))
        if "gdpp" in cfg.modes:
            pgd = steps_from_krylov(krylov_coefficients(tune, Sinv, L))
            x0 = np.concatenate([pgd if pgd is not None else np.full(L, 0.8), np.zeros(L)])
            theta = tune_steps(lambda t, L=L: mse(gdpp_predictions(tune, Sigma, t[:L], t[L:])), 2 * L, rng,
                               cfg.tune_starts, x0=x0)  # fmt: skip
            t = torch.tensor(theta)
            rows.add_loss("gdpp_tuned", L, seed, query_losses(gdpp_predictions(test, Sigma, t[:L], t[L:]), test))


# -- training with read-outs ------------------------------------------------------------------------------------


def readout_rows(model: LinearSelfAttention, Sigma: torch.Tensor) -> dict[str, float]:
    ro = read_out(model, Sigma)
    out = {}
    for layer in range(model.layers):
        out[f"dist_sigma:l{layer + 1}"] = float(ro.dist_identity[layer])
        out[f"dist_raw:l{layer + 1}"] = float(ro.dist_identity_raw[layer])
        out[f"step:l{layer + 1}"] = float(ro.step_sizes[layer])
        if model.cfg.mode == "gdpp":
            out[f"b_scale:l{layer + 1}"] = float(torch.diagonal(ro.B[layer, 0]).mean())
            out[f"dist_B:l{layer + 1}"] = dist_to_identity(ro.B[layer, 0]) if ro.B[layer, 0].norm() > 0 else math.nan
    return out


def _split_layer(key: str) -> tuple[str, int]:
    """A read-out key ``"dist_sigma:l2"`` as the row's metric and layer: ("dist_sigma", 2)."""
    quantity, _, layer = key.partition(":l")
    return quantity, int(layer)


@dataclass
class _Seed:
    """What the study holds per seed while the models of all seeds are trained."""

    seed: int
    streams: Streams
    dist: PromptDistribution
    test: PromptBatch


def run(cfg: PGDDepthConfig, ctx: RunContext) -> dict:
    t0 = time.time()
    write_config(ctx, cfg, Streams(cfg.seeds[0], ctx.device))
    rows = Rows(NAME)
    d, n = cfg.prompt.d, cfg.prompt.n
    per_seed: list[_Seed] = []
    for seed in cfg.seeds:  # the baselines, per seed
        signals.raise_if_requested("computing the baselines")
        streams = Streams(seed, ctx.device)
        dist = PromptDistribution(cfg.prompt, generator=streams.generator("rotation"))
        tune = dist.sample(cfg.tune_prompts, streams.generator("tune", "cpu")).to(dtype=torch.float64)
        test = held_out_prompts(dist, streams, cfg.test_prompts, torch.float64)
        rng = np.random.default_rng([seed, 7])
        rows.add_loss("zero_predictor", 0, seed, query_losses(torch.zeros_like(test.y_query), test))
        baselines(rows, cfg, seed, tune, test, dist.Sigma, rng)
        rows.write(ctx)
        per_seed.append(_Seed(seed, streams, dist, test))

    def train(tag: str, L: int, mode: str, dists: list[PromptDistribution]) -> Fitted:
        """Model ``tag`` for every seed (together unless vectorise_seeds is off), read out every read_every
        steps."""
        spec = ModelSpec("lsa", d, LSAConfig(layers=L, mode=mode, init_std=cfg.init_std))
        streams = [s.streams for s in per_seed]
        read_out = lambda i, m: readout_rows(m, dists[i].Sigma)
        return train_all_seeds(ctx, cfg, tag, spec, dists, cfg.train, streams, read_every=cfg.read_every,
                               read_out=read_out)  # fmt: skip

    # learned models, each trained for all seeds at once
    ctx.expect_models(len(cfg.modes) * len(cfg.depths))
    for mode in cfg.modes:
        for L in cfg.depths:
            tag = f"{mode}-L{L}"
            runs = train(tag, L, mode, [s.dist for s in per_seed])
            for s, trainer in zip(per_seed, runs.runs):
                dynamics = trainer.readouts
                seed, test, Sigma = s.seed, s.test, s.dist.Sigma
                trained = trainer.model.to("cpu").double().eval()
                with torch.no_grad():
                    est = query_losses(trained(test.Z()), test)
                rows.add_loss(mode, L, seed, est)
                rows.add(mode, L, seed, "final_train_loss", trainer.history.last_loss)
                rows.add(mode, L, seed, "wall_time_s", trainer.wall_time)
                final = dynamics[-1]
                for k, v in final.items():
                    if k != "step":
                        metric, layer = _split_layer(k)
                        rows.add(mode, L, seed, metric, v, layer=layer)
                steps = sorted(final[f"step:l{layer + 1}"] for layer in range(L))
                for k, v in enumerate(steps):
                    rows.add(mode, L, seed, "step_sorted", v, k=k + 1)
                for rec in dynamics:
                    for k, v in rec.items():
                        if k.startswith(("dist_sigma", "dist_raw", "dist_B")):
                            metric, layer = _split_layer(k)
                            rows.add(mode, L, seed, metric, v, layer=layer, train_step=int(rec["step"]))
                if L == 1 and mode == "sparse":  # Thm 1 with w* ~ N(0, Σ⁻¹): A* = n/(n+d+1)·Σ⁻¹
                    opt = one_layer_optimum(Sigma, n, "inverse_sigma")
                    rows.add("ahn_thm1", 1, seed, "test_loss", opt.loss)
                    rows.add(mode, 1, seed, "A_rel_error_thm1", relative_frobenius(trained.A[0, 0], opt.A))
                ctx.print(f"seed {seed} {tag}: log test loss {math.log(est.mean):.3f} "
                          f"({trainer.wall_time:.0f}s)")  # fmt: skip
            rows.write(ctx)

    if cfg.theorem1:  # Theorem 1: w* ~ N(0, I), non-isotropic Σ, one sparse layer
        law = replace(cfg.prompt, w_prior="identity")
        dists1 = [PromptDistribution(law, U=s.dist.U) for s in per_seed]
        runs = train("thm1-sparse-L1", 1, "sparse", dists1)
        for s, trainer, dist1 in zip(per_seed, runs.runs, dists1):
            seed = s.seed
            Sinv = torch.linalg.inv(s.dist.Sigma)
            trained = trainer.model.to("cpu").double().eval()
            test1 = held_out_prompts(dist1, s.streams, cfg.test_prompts, torch.float64)
            with torch.no_grad():
                est = query_losses(trained(test1.Z()), test1)
            opt = one_layer_optimum(dist1.Sigma, n, "identity")
            A = trained.A[0, 0].detach()
            rows.add_loss("thm1_learned", 1, seed, est)
            rows.add("thm1_theory", 1, seed, "test_loss", opt.loss)
            rows.add("thm1_zero_predictor", 1, seed, "test_loss", opt.zero_loss)
            rows.add("thm1_learned", 1, seed, "A_rel_error", relative_frobenius(A, opt.A))
            rows.add("thm1_learned", 1, seed, "A_rel_error_vs_sigma_inv",
                     relative_frobenius(A, torch.trace(A) / torch.trace(Sinv) * Sinv))  # fmt: skip
        rows.write(ctx)
    from experiments.reports.pgd_depth import report  # the report module imports matplotlib

    summary = report(ctx.out_dir)
    summary["wall_time_s"] = time.time() - t0
    write_json(ctx.out_dir / "summary.json", summary)
    ctx.print(f"run directory: {ctx.out_dir}")
    return summary


STUDY = Study(PGDDepthConfig, run, PROFILES)
