"""memformer_vs_cgd: Memformers against per-prompt CG, tuned momentum/Nesterov and preconditioned GD.

Reproduces Dutta & Sra (2024, arXiv 2410.07263, "Memory-augmented Transformers can implement linear first-order
optimization methods", Figs. 1, 2 and 5) with held-out test prompts, several seeds and every baseline on the same
n = 20 context points as the models.

Data. d = 5, n = 20, x = U·diag(√λ)·g with a Haar U per seed and λ = (1, 1, 1/4, 1/16, 1), w* ~ N(0, Σ⁻¹)
(``noniso``), and the isotropic variant Σ = I (``iso``). Convention: λ are the eigenvalues of Σ itself. The
paper's text writes Σ = UᵀDU with D = diag(1, 1, ½, ¼, 1), but its code draws x = U D g, so its Σ has
eigenvalues D² = (1, 1, 0.25, 0.0625, 1) (κ = 16): those are the values used here.

Models (all trained, one per depth L = 1…4, sparse parametrisation B_ℓ = 0):

- ``lt_scalar`` / ``lt_full``: the plain linear transformer (Ahn et al. eq. 8) with A_ℓ = a_ℓ·I ("no
  preconditioning", the paper's Q = q·I) or a full A_ℓ ("LT (Pre)").
- ``cgd_scalar`` / ``cgd_full``: the CGD-like Memformer (eqs. 17–18; learned α_ℓ, γ_ℓ) with A_ℓ = a_ℓ·I (Fig. 1a)
  or full A_ℓ (Fig. 1b).
- ``lfom_scalar``: the LFOM Memformer (eqs. 19–20) with A_ℓ = a_ℓ·I and scalar Γ_j (an LFOM in Goh's sense,
  the 1-head model of Fig. 5); ``lfom_scalar_h5``: the same with 5 heads, each A_{ℓ,h} = a_{ℓ,h}·I (Fig. 5).
- ``lfom_full``: the LFOM Memformer with full A_ℓ and the paper's full Hadamard Γ_j ∈ R^{(n+1)×(d+1)} shared
  across layers, initialised at zero as in the authors' code (Fig. 2).

The scalar constraint A_ℓ = a_ℓ·I is not an LSAConfig option. It is imposed here by initialising every A block
at a_ℓ·I (a_ℓ from the ``init`` stream) and projecting the gradient of each d×d block onto span{I}
(g ← tr(g)/d · I) with a tensor hook. Adam then sees a zero gradient off the diagonal (its moments stay 0, so
those entries never move) and the same gradient on every diagonal entry, so each block stays exactly a_ℓ·I at
every step and the saved weights are an ordinary ``lsa``/``memformer`` checkpoint. This is the authors'
``identity_q()`` projection (Q ← mean(diag Q)·I before every forward) done on the gradient instead, and it
equals training the scalar a_ℓ directly (Adam is invariant to the factor d). Using mode ``diag`` would not
do: its P and q_y entries would have to be frozen as well.

Baselines, computed on the same held-out test prompts of each seed:

- ``cg``: Fletcher–Reeves CG with exact line search per prompt on the 20 context points (``cg_n19``: on the
  first 19 only, the authors' off-by-one, to explain the published numbers).
- ``gd_tuned`` (one η), ``heavy_ball_tuned`` and ``nesterov_tuned`` (one (η, β)), and ``pgd_tuned``
  (preconditioner Σ⁻¹, one η_ℓ per step: the Ahn et al. Thm 3 family A_ℓ = a_ℓ Σ⁻¹), each tuned for every
  depth with ``reference_optimizers.tune`` on ``tune_prompts`` prompts of the training law (the ``tune``
  stream, never the test prompts).
- ``krylov`` (``reference_optimizers.krylov_bound`` fitted in-sample): min over shared coefficients c of
  mean (Σ_{k<L} c_k x_qᵀH^k g − y_q)² on the test prompts, with H = XᵀX/n, g = Xᵀy/n: a lower bound for every
  model whose output is one polynomial p(H)g shared by all prompts, i.e. ``lt_scalar``, ``cgd_scalar``,
  ``lfom_scalar(_h5)``, GD, heavy ball (any shared schedule). ``krylov_pre``: the same with the
  Σ⁻¹-preconditioned Krylov space x_qᵀ(Σ⁻¹H)^kΣ⁻¹g, which contains ``pgd_tuned``. Full-A models are in neither
  space (their A_ℓ differ per layer and need not be functions of Σ).
- ``lfom_shared_class``: the best member (coefficients tuned on the training-law prompts) of the weight-space
  family the scalar LFOM Memformer with shared Γ_j^ℓ = Γ_j computes, w_{ℓ+1} = w_ℓ − Σ_{j≤ℓ} c_j ∇R(w_j): the
  floor of ``lfom_scalar(_h5)``'s function class, which is strictly smaller than the Krylov class.
- ``theory_ahn_thm1`` (L = 1): the optimal single full-A layer, d(d+1)/(n+d+1) for w* ~ N(0, Σ⁻¹).

The loss is the plain query MSE (Dutta & Sra plot log(MSE), no ½), reported as log(test loss) as in the paper.

Heads. With P = [[0, 0], [0, 1]] and Q_h = −a_h·I per head the heads' outputs sum to one head with a = Σ_h a_h,
so ``lfom_scalar_h5`` has exactly the function class of ``lfom_scalar``; the study checks this by collapsing the
trained 5-head model into one head (metric ``collapse_max_abs_diff``) and compares the two trained losses.

Profiles (seeds 0, 1, 2 unless --seeds): ``quick`` (depths 1–2, 60 steps, a smoke test, about a minute);
``standard`` (depths 1–4, both data settings, 800 AdamW steps of 500 prompts each at lr 0.03, cosine schedule: Adam
moves an entry by at most ≈ lr per step and the optimal A ≈ 0.77·Σ⁻¹ has an eigenvalue ≈ 12, so lr 0.01 left the
full-A LT at log-loss +0.47 instead of +0.23 at L = 1; measured ≈ 6–7 minutes per seed on one core at load ≈ 3,
about 20 minutes for three seeds, 17 minutes for one seed under load ≈ 10 at nice 10); ``paper`` (B = 1000
resampled every 100 steps, lr 0.01 halved every 4000 steps, per-matrix clipping 0.01 as in the authors' code, but
20,000 steps instead of their 10 steps plus 1000 fine-tuning steps on one fixed batch; 5 seeds, 100,000 test
prompts; about 40 trainings × 20k steps per seed: roughly 1–2 GPU-hours with --device cuda, days on a CPU).
Each setting's baselines are computed per seed, then each (kind, depth) is trained for all seeds at once
(``vectorise_seeds``, :func:`experiments.study.train_all_seeds`); the timings above are of one-by-one runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from einops import einsum
from torch import nn

from experiments.common import RunContext, make_distribution, write_config
from experiments.registry import Study
from experiments.study import Rows, StudyConfig, held_out_prompts, query_losses, train_all_seeds
from icl.config import ConfigError, spec
from icl.prompts import PromptBatch, PromptConfig, PromptDistribution, zero_predictor_loss
from icl.runio import write_json
from icl.seeding import Streams
from icl.training import TrainConfig, signals
from learned_optimizers import LinearSelfAttention, LSAConfig
from learned_optimizers.memformer import Memformer, MemformerConfig
from reference_optimizers import (
    conjugate_gradient,
    gradient_descent,
    heavy_ball,
    krylov_bound,
    moments,
    nesterov,
    one_layer_optimum,
    preconditioned_gd,
    tune,
)

NAME = "memformer_vs_cgd"
MODEL_KINDS = ("lt_scalar", "lt_full", "cgd_scalar", "cgd_full", "lfom_scalar", "lfom_scalar_h5", "lfom_full")
SETTINGS = ("noniso", "iso")
PAPER_EIGENVALUES = (1.0, 1.0, 0.25, 0.0625, 1.0)

#: Dutta & Sra's printed CGD log-losses (notebook output, 19 context points, B = 1000 test prompts).
PAPER_CG_LOG = {1: 0.75, 2: 0.18, 3: -0.74, 4: -1.62}
#: Values read off the paper's figures at L = 1 and L = 4 (±0.1–0.3): (setting, method) -> {L: log}.
PAPER_FIGURES = {
    ("noniso", "cg"): {1: 0.5, 4: -1.5},
    ("noniso", "cgd_scalar"): {1: 0.5, 4: -0.4},  # Fig. 1a Memformer
    ("noniso", "lt_scalar"): {1: 0.5, 4: -0.1},  # Fig. 1a LT
    ("noniso", "cgd_full"): {1: 0.2, 4: -2.0},  # Fig. 1b Memformer
    ("noniso", "lt_full"): {1: 0.2, 4: -1.1},  # Figs. 1b/2a LT (Pre)
    ("noniso", "lfom_full"): {1: 0.2, 4: -2.0},  # Fig. 2a
    ("iso", "cg"): {1: 0.2, 4: -6.0},  # Fig. 2b
    ("iso", "lfom_full"): {1: 0.2, 4: -1.8},
    ("iso", "lt_full"): {1: 0.2, 4: -1.8},
}
FIGURE_OF = {"cgd_scalar": "1a", "lt_scalar": "1a", "cgd_full": "1b", "lt_full": "1b/2a", "lfom_full": "2a/2b",
             "cg": "1a, 2b", "lfom_scalar": "5", "lfom_scalar_h5": "5"}  # fmt: skip


@dataclass(frozen=True)
class MemformerVsCGDConfig(StudyConfig):
    """The study (defaults: the ``standard`` profile).

    Attributes:
        d, n: dimension and context points (the paper's 5 and 20).
        eigenvalues: the spectrum of Σ in the non-isotropic setting (the code's D², see the module docstring).
        depths: the numbers of layers / steps L.
        settings: ``noniso`` and/or ``iso``.
        models: the trained models in the non-isotropic setting.
        iso_models: the trained models in the isotropic setting.
        heads: heads of ``lfom_scalar_h5``.
        init_std: std of the initial attention weights (scalar blocks: of a_ℓ).
        train: the outer training (AdamW, per-matrix clipping as in the authors' code).
        test_prompts: held-out prompts per seed (models and every baseline see the same ones).
        tune_prompts: prompts of the training law used to tune the baselines' step sizes.
    """

    d: int = spec(5, ge=1)
    n: int = spec(20, ge=2)
    eigenvalues: tuple[float, ...] = spec(PAPER_EIGENVALUES, gt=0, allow_repeats=True)
    depths: tuple[int, ...] = spec((1, 2, 3, 4), ge=1)
    settings: tuple[str, ...] = SETTINGS
    models: tuple[str, ...] = MODEL_KINDS
    iso_models: tuple[str, ...] = ("lt_full", "cgd_scalar", "lfom_full")
    heads: int = spec(5, ge=2)
    init_std: float = spec(0.01, gt=0)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=800,
            batch_size=500,
            lr=0.03,
            weight_decay=0.0,
            clip="per_matrix",
            clip_value=0.01,
            resample_every=10,
            schedule="cosine",
            eval_every=200,
            eval_batch=1000,
            log_every=100,
        )  # fmt: skip
    )
    test_prompts: int = spec(20_000, ge=100)
    tune_prompts: int = spec(4_000, ge=100)

    def check(self) -> None:
        super().check()
        if len(self.eigenvalues) != self.d:
            raise ConfigError(f"eigenvalues has {len(self.eigenvalues)} entries but d = {self.d}")
        for name, values, allowed in (
            ("settings", self.settings, SETTINGS),
            ("models", self.models, MODEL_KINDS),
            ("iso_models", self.iso_models, MODEL_KINDS),
        ):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ConfigError(f"{name} has unknown entries {bad}; choose from {', '.join(allowed)}")

    def prompt(self, setting: str) -> PromptConfig:
        eig = self.eigenvalues if setting == "noniso" else None
        return PromptConfig(d=self.d, n=self.n, eigenvalues=eig, w_prior="inverse_sigma")


PROFILES = {
    "quick": {
        "depths": (1, 2),
        "models": ("lt_scalar", "lt_full", "cgd_scalar", "lfom_scalar", "lfom_scalar_h5", "lfom_full"),
        "iso_models": ("lt_full",),
        "train.steps": 60,
        "train.batch_size": 200,
        "train.eval_every": 60,
        "train.eval_batch": 200,
        "test_prompts": 2000,
        "tune_prompts": 500,
        "checkpoint_every": 60,
    },
    "standard": {},
    "paper": {
        "seeds": (0, 1, 2, 3, 4),
        "iso_models": MODEL_KINDS,
        "train.steps": 20_000,
        "train.batch_size": 1000,
        "train.resample_every": 100,
        "train.schedule": "step",
        "train.halve_every": 4000,
        "train.betas": (0.99, 0.9),
        "train.eval_every": 1000,
        "test_prompts": 100_000,
        "tune_prompts": 20_000,
        "checkpoint_every": 1000,
    },
}


# -- models --------------------------------------------------------------------------------------------------


def _project_to_identity(grad: torch.Tensor) -> torch.Tensor:
    """The orthogonal projection of every trailing d×d block onto span{I}: g ← (tr g / d)·I."""
    d = grad.shape[-1]
    scale = torch.diagonal(grad, dim1=-2, dim2=-1).mean(-1)
    return scale[..., None, None] * torch.eye(d, dtype=grad.dtype, device=grad.device)


def constrain_scalar(A: nn.Parameter, generator: torch.Generator, std: float) -> None:
    """Make every d×d block of A a multiple a·I (a ~ N(0, std²)) and keep it so under any gradient step."""
    with torch.no_grad():
        a = torch.randn(A.shape[:-2], generator=generator, dtype=torch.float64) * std
        A.copy_((a[..., None, None] * torch.eye(A.shape[-1], dtype=torch.float64)).to(A.dtype))
    A.register_hook(_project_to_identity)


def build(kind: str, d: int, n: int, layers: int, cfg: MemformerVsCGDConfig, generator: torch.Generator) -> nn.Module:
    """One of :data:`MODEL_KINDS` with ``layers`` layers (weights from ``generator``)."""
    scalar = "scalar" in kind
    heads = cfg.heads if kind.endswith("_h5") else 1
    att = LSAConfig(layers=layers, heads=heads, mode="sparse", init_std=cfg.init_std)
    if kind.startswith("lt"):
        model: nn.Module = LinearSelfAttention(d, att, generator)
        A = model.A
    else:
        if kind.startswith("cgd"):
            mcfg = MemformerConfig(attention=att, memory="cgd")
        else:
            shape = "scalar" if scalar else "full"
            mcfg = MemformerConfig(attention=att, memory="lfom", gamma_shape=shape, gamma_init="zeros", n=n)
        model = Memformer(d, mcfg, generator)
        A = model.attention.A
    if scalar:
        constrain_scalar(A, generator, cfg.init_std)
    return model


def attention_A(model: nn.Module) -> torch.Tensor:
    return (model.attention.A if isinstance(model, Memformer) else model.A).detach()


@torch.no_grad()
def collapse_heads(model: Memformer, d: int, generator: torch.Generator) -> Memformer:
    """The one-head Memformer with A_ℓ = Σ_h A_{ℓ,h} and the same memory coefficients."""
    att = model.cfg.attention
    one = Memformer(d, model.cfg.replace(attention=att.replace(heads=1)), generator)
    one = one.to(dtype=model.dtype)
    one.attention.A.copy_(model.attention.A.sum(dim=1, keepdim=True))
    one.set_memory(Gamma=model.Gamma)
    return one


# -- baselines -----------------------------------------------------------------------------------------------


def krylov(test: PromptBatch, depth: int, M: torch.Tensor | None = None) -> list[float]:
    """In-sample Krylov bounds on ``test`` for depths 1…``depth`` (``reference_optimizers.krylov_bound``).

    The coefficients are fitted on the test prompts themselves, so the value is the smallest loss on exactly
    these prompts that any prediction x_qᵀ p(MH) M g with one polynomial p of degree < L shared by all prompts can
    reach: a strict lower bound for the measured losses of scalar-A LSAs and Memformers, GD and heavy ball with
    any shared schedule (M = I), and of preconditioned GD with P = Σ⁻¹ (M = Σ⁻¹).
    """
    return [float(v) for v in krylov_bound(test, test, depth, preconditioner=M).test_loss[1:]]


def lfom_shared(X: torch.Tensor, y: torch.Tensor, steps: int, c: list[float] | float = 1.0) -> torch.Tensor:
    """The weight-space iteration of the scalar LFOM Memformer with Γ shared across layers (Γ_j^ℓ = Γ_j).

    Update rule: w_{ℓ+1} = w_ℓ − Σ_{j≤ℓ} c_j ∇R(w_j), c_j = Γ_j·a_j, w_0 = 0 (Dutta & Sra eq. 20 with scalar Γ and
    A_j = a_j·I, B = 0): every layer re-applies all earlier gradients with the same weights. Returns (B, steps+1, d).
    """
    cs = [float(c)] * steps if isinstance(c, (int, float)) else [float(v) for v in c]
    H, g = moments(X, y)
    w = torch.zeros_like(g)
    grads, out = [], [w]
    for layer in range(steps):
        grads.append(einsum(H, w, "b i j, b j -> b i") - g)
        w = w - sum(cs[j] * grads[j] for j in range(layer + 1))
        out.append(w)
    return torch.stack(out, dim=1)


def tuned_baselines(tune_batch: PromptBatch, Sinv: torch.Tensor, L: int) -> dict[str, dict]:
    """GD (one η), heavy ball and Nesterov (one (η, β)) and Σ⁻¹-preconditioned GD (one η_ℓ per step), each
    tuned for L steps on ``tune_batch`` with ``reference_optimizers.tune`` (grid, then scipy refinement)."""
    etas = np.geomspace(0.02, 3.0, 30).tolist()
    pair = {"eta": np.geomspace(0.02, 3.0, 20).tolist(), "beta": np.linspace(0.0, 0.95, 20).tolist()}
    out = {
        "gd_tuned": tune(gradient_descent, tune_batch, L, {"eta": etas}).hyperparameters,
        "heavy_ball_tuned": tune(heavy_ball, tune_batch, L, pair).hyperparameters,
        "nesterov_tuned": tune(nesterov, tune_batch, L, pair).hyperparameters,
        "pgd_tuned": tune(
            preconditioned_gd, tune_batch, L, {"eta": etas}, per_step=("eta",), fixed={"P": Sinv}
        ).hyperparameters,
        "lfom_shared_class": tune(
            lfom_shared, tune_batch, L, {"c": [-0.2, 0.1, 0.3, 0.6, 1.0]}, per_step=("c",), maxfev=3000
        ).hyperparameters,
    }
    return {k: {h: v for h, v in hp.items() if h != "P"} for k, hp in out.items()}


def baseline_iterates(name: str, batch: PromptBatch, L: int, hp: dict, Sinv: torch.Tensor) -> torch.Tensor:
    if name == "gd_tuned":
        return gradient_descent(batch.X, batch.y, L, eta=hp["eta"])
    if name == "heavy_ball_tuned":
        return heavy_ball(batch.X, batch.y, L, eta=hp["eta"], beta=hp["beta"])
    if name == "nesterov_tuned":
        return nesterov(batch.X, batch.y, L, eta=hp["eta"], beta=hp["beta"])
    if name == "lfom_shared_class":
        return lfom_shared(batch.X, batch.y, L, c=hp["c"])
    return preconditioned_gd(batch.X, batch.y, L, P=Sinv, eta=hp["eta"])


# -- the study -----------------------------------------------------------------------------------------------


def run(cfg: MemformerVsCGDConfig, ctx: RunContext) -> dict:
    t0 = time.time()
    write_config(ctx, cfg, Streams(cfg.seeds[0], ctx.device))
    rows = Rows(NAME)
    hparams: dict = {}
    ctx.expect_models(sum(len(cfg.models if s == "noniso" else cfg.iso_models) for s in cfg.settings) * len(cfg.depths))
    for setting in cfg.settings:
        pcfg = cfg.prompt(setting)
        streams, dists, tests = [], [], []
        for seed in cfg.seeds:  # the baselines, per seed
            st = Streams(seed, ctx.device)
            dist = make_distribution(pcfg, st)
            test = held_out_prompts(dist, st, cfg.test_prompts, torch.float64)
            tune_batch = PromptDistribution(pcfg, U=dist.U, dtype=torch.float64).sample(
                cfg.tune_prompts, st.generator("tune", "cpu")
            )
            Sinv = torch.linalg.inv(dist.Sigma)
            signals.raise_if_requested("computing the baselines")
            _baselines(rows, hparams, cfg, setting, seed, test, tune_batch, Sinv, dist)
            streams.append(st)
            dists.append(dist)
            tests.append(test)
        rows.write(ctx)
        kinds = cfg.models if setting == "noniso" else cfg.iso_models
        for kind in kinds:
            for L in cfg.depths:  # each model trained for all seeds at once (when vectorise_seeds allows)
                models = [build(kind, cfg.d, cfg.n, L, cfg, st.generator("init", "cpu")) for st in streams]
                runs = train_all_seeds(ctx, cfg, f"{setting}-{kind}-L{L}", models, dists, cfg.train, streams)
                for st, trainer, test in zip(streams, runs.runs, tests):
                    seed, model = st.seed, trainer.model
                    with torch.no_grad():
                        pred = model(test.Z().to(device=ctx.device, dtype=model.dtype))
                    est = query_losses(pred, test)
                    method = kind
                    rows.add_loss(method, L, seed, est, setting=setting)
                    rows.add(method, L, seed, "final_train_loss", trainer.history.last_loss, setting=setting)
                    rows.add(method, L, seed, "train_seconds", getattr(trainer, "wall_time", float("nan")),
                             setting=setting)  # fmt: skip
                    _model_diagnostics(rows, setting, method, L, seed, kind, model, test, ctx, cfg, st)
                    ctx.print(f"seed {seed} {method:<24} L={L}  log test loss {math.log(est.mean):+.3f}")
                rows.write(ctx)
    rows.write(ctx)
    summary = {"experiment": NAME, "seeds": list(cfg.seeds), "profile": cfg.profile, "hyperparameters": hparams,
               "wall_time_s": time.time() - t0}  # fmt: skip
    from experiments.reports.memformer_vs_cgd import report  # the report module imports matplotlib

    summary.update(report(ctx.out_dir))
    write_json(ctx.out_dir / "summary.json", summary)
    ctx.print((ctx.out_dir / "report.md").read_text())
    return summary


def _baselines(rows, hparams, cfg, setting, seed, test, tune_batch, Sinv, dist) -> None:
    zero = zero_predictor_loss(cfg.prompt(setting))
    plain, pre = krylov(test, max(cfg.depths)), krylov(test, max(cfg.depths), Sinv)
    for L in cfg.depths:
        rows.add("zero_predictor", L, seed, "test_loss", zero, setting=setting)
        cg = conjugate_gradient(test.X, test.y, L)[:, -1]
        rows.add_loss("cg", L, seed, query_losses(einsum(cg, test.x_query, "b d, b d -> b"), test),
                      setting=setting)  # fmt: skip
        n1 = cfg.n - 1
        cg19 = conjugate_gradient(test.X[:, :n1], test.y[:, :n1], L)[:, -1]
        rows.add_loss("cg_n19", L, seed, query_losses(einsum(cg19, test.x_query, "b d, b d -> b"), test),
                      setting=setting)  # fmt: skip
        rows.add("krylov", L, seed, "test_loss", plain[L - 1], setting=setting)
        rows.add("krylov_pre", L, seed, "test_loss", pre[L - 1], setting=setting)
        hp = tuned_baselines(tune_batch, Sinv, L)
        hparams[f"{setting}/s{seed}/L{L}"] = hp
        for name, h in hp.items():
            w = baseline_iterates(name, test, L, h, Sinv)[:, -1]
            rows.add_loss(name, L, seed, query_losses(einsum(w, test.x_query, "b d, b d -> b"), test),
                          setting=setting)  # fmt: skip
    opt = one_layer_optimum(dist.Sigma, cfg.n, "inverse_sigma")
    rows.add("theory_ahn_thm1", 1, seed, "test_loss", opt.loss, setting=setting)


def _model_diagnostics(rows, setting, method, L, seed, kind, model, test, ctx, cfg, streams) -> None:
    A = attention_A(model).double().cpu()
    if "scalar" in kind:  # the constraint held: off-diagonal mass of every block
        off = A - torch.diag_embed(torch.diagonal(A, dim1=-2, dim2=-1).mean(-1, keepdim=True).expand(*A.shape[:-1]))
        rows.add(method, L, seed, "scalar_violation", float(off.abs().max()), setting=setting)
    if kind.endswith("_h5"):
        one = collapse_heads(model, cfg.d, streams.generator("init", "cpu"))
        Z = test.Z().to(device=ctx.device, dtype=model.dtype)
        with torch.no_grad():
            diff = (one.to(ctx.device)(Z) - model(Z)).abs().max()
        rows.add(method, L, seed, "collapse_max_abs_diff", float(diff), setting=setting)


STUDY = Study(MemformerVsCGDConfig, run, PROFILES)
