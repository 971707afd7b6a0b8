"""memformer_vs_cgd: Memformers against per-prompt CG, tuned momentum/Nesterov and preconditioned GD.

Reproduces Dutta & Sra (2024, arXiv 2410.07263, "Memory-augmented Transformers can implement linear first-order
optimization methods", Figs. 1, 2 and 5) with held-out test prompts, several seeds and every baseline on the same
n = 20 context points as the models.

Data. d = 5, n = 20, x = U·diag(√λ)·g with a Haar U per seed and λ = (1, 1, 1/4, 1/16, 1), w* ~ N(0, Σ⁻¹)
(``noniso``), and the isotropic variant Σ = I (``iso``). Convention: λ are the eigenvalues of Σ itself. The
paper's text writes Σ = UᵀDU with D = diag(1, 1, ½, ¼, 1), but its code draws x = U D g, so its Σ has
eigenvalues D² = (1, 1, 0.25, 0.0625, 1) (κ = 16): those are the values used here.

Models (sparse parametrisation B_ℓ = 0; which depths: see below):

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
- ``gd_tuned`` (one η_ℓ per step: the exact class of ``lt_scalar``), ``heavy_ball_tuned`` (one (η_ℓ, β_ℓ) per
  step: the exact class of ``cgd_scalar``) and ``pgd_tuned`` (preconditioner Σ⁻¹, one η_ℓ per step: the Ahn et
  al. Thm 3 family A_ℓ = a_ℓ Σ⁻¹, inside the class of every full-A model), tuned for every depth by
  ``reference_optimizers.tune_depths`` (never worse than depth T−1 on the tuning prompts) started from
  ``krylov_steps`` (the per-step sizes that attain the Krylov fit when its polynomial has real roots), on
  ``tune_prompts`` prompts of the training law (the ``tune`` stream, never the test prompts).
- ``krylov`` and ``krylov_pre`` (``reference_optimizers.krylov_bound``, the one meaning used in every study):
  coefficients fitted on the ``tune_prompts`` training-law prompts, the loss evaluated on the test prompts: the
  best shared polynomial x_qᵀ p(MH) M g of degree < L (M = I, or M = Σ⁻¹), which per-step GD / heavy ball
  (M = I) and Σ⁻¹-PGD (M = Σ⁻¹) attain when its roots are real.
- ``lfom_shared_class``: the best member (coefficients tuned on the training-law prompts with
  ``reference_optimizers.tune``) of the weight-space family the scalar LFOM Memformer with shared Γ_j^ℓ = Γ_j
  computes, w_{ℓ+1} = w_ℓ − Σ_{j≤ℓ} c_j ∇R(w_j): the floor of ``lfom_scalar(_h5)``'s class, strictly smaller
  than the Krylov class (depth T−1 is not inside depth T's class, so it is tuned per depth).
- ``theory_ahn_thm1`` (L = 1): the optimal single full-A layer, d(d+1)/(n+d+1) for w* ~ N(0, Σ⁻¹).

Convergence. Every model is trained until its held-out loss stops improving (the engine's plateau rule:
``train.plateau_patience`` evaluations without a relative improvement of ``train.plateau_tol``; ``train.steps``
is the cap), and its test loss is reported beside its class optimum on the same test prompts
(:func:`experiments.convergence.class_gap`, flagged beyond ``gap_tolerance``): ``lt_full``: tuned Σ⁻¹-PGD;
``lt_scalar``: tuned per-step GD; ``cgd_scalar``: tuned per-step heavy ball; ``lfom_scalar(_h5)``: the shared-Γ
class floor; ``cgd_full`` and ``lfom_full``: the best tuned linear first-order method (per seed the best of
tuned per-step GD, heavy ball and Σ⁻¹-PGD; the report names which). Per-prompt losses are heavy-tailed at
L = 4, so every test loss comes with :func:`experiments.convergence.tail_stats` (median, trimmed mean, log-mean
on five disjoint parts of the test set).

The loss is the plain query MSE (Dutta & Sra plot log(MSE), no ½), reported as log(test loss) as in the paper.

Heads. With P = [[0, 0], [0, 1]] and Q_h = −a_h·I per head the heads' outputs sum to one head with a = Σ_h a_h,
so ``lfom_scalar_h5`` has exactly the function class of ``lfom_scalar``; the study checks this by collapsing the
trained 5-head model into one head (metric ``collapse_max_abs_diff``) and compares the two trained losses.

Which models at which depth. ``models`` (non-isotropic) and ``iso_models`` (isotropic) are trained at the
deepest L; those also in ``sweep_models`` at every L of ``depths`` (the figures' curves) in the settings of
``sweep_settings``. The recipe (measured on the full-A LT at L = 4, three seeds): AdamW at lr
0.1 halved every 400 steps, fresh batches of 2000 prompts every step (at 1000 prompts the heavy-tailed L = 4
gradients left the LT 0.05–0.10 above the Σ⁻¹ Krylov bound after 4000 steps; at 2000–3000 prompts 0.01–0.05),
per-matrix clipping 0.01 as in the authors' code, plateau patience 8 evaluations of 100 steps, cap 2400 steps.
The full-A LT and the CGD-like Memformer with Q = q·I (``big_batch_models``) train on batches of 6000
(``big_batch_size``). At 2000 the full-A LT at L = 4 ended 0.105 above tuned Σ⁻¹-PGD on seed 11 (never used in
development) at the cap of 2400 steps, and a longer cap alone did not fix it: 0.066 above the Σ⁻¹ Krylov bound
after 3600 steps (lr halved every 400), 0.071 after 4000 (halved every 600, stopped by the plateau rule). With
batches of 6000 and the same cap it ended 0.021 above the bound on seed 11 and 0.007 on seed 23; the CGD-like
Memformer with Q = q·I, 0.127 above tuned heavy ball on seed 2 at batch 2000, ended 0.046 below it. The
heavy-tailed L = 4 gradients (the worst 1% of prompts carry 30–40% of the test loss) need the larger batch. An
LT step is cheap (one seed, 6000 prompts, L = 4: ≈ 11 ms of CPU); the LFOM Memformer with full Γ costs about
ten times as much per prompt, so the other models keep batches of 2000 (on seed 11, with a cap of 3600, the
full-A CGD-like and LFOM Memformers stopped by the plateau rule at steps 3100 and 2500, 0.05 and 0.03 above the
bound). The non-isotropic part of the standard profile on seed 23 alone: every
model within 0.04 of its class optimum, 367 s of CPU.

Profiles (seeds 0, 1, 2 unless --seeds): ``quick`` (depths 1–2, a smoke test, about a minute); ``standard``
(non-isotropic: the full-A LT at L = 1–4, every other model at L = 4; isotropic: the two models of the paper's
Fig. 2b, the full-A LT and the LFOM Memformer, at L = 4; 40,000 test prompts per seed); ``paper`` (every model
at every depth in both settings, 5 seeds, 100,000 test prompts, a cap of 20,000 steps). Each (kind, depth) is
trained for all seeds at once (``vectorise_seeds``, :func:`experiments.study.train_all_seeds`).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from einops import einsum
from torch import nn

from experiments.common import RunContext, make_distribution, write_config
from experiments.configs.memformer_vs_cgd import (  # noqa: F401  (re-exported)
    MODEL_KINDS,
    PAPER_EIGENVALUES,
    PROFILES,
    SETTINGS,
    MemformerVsCGDConfig,
)
from experiments.convergence import tail_stats
from experiments.registry import Study
from experiments.study import Rows, held_out_prompts, train_all_seeds
from icl.prompts import PromptBatch, PromptDistribution, zero_predictor_loss
from icl.runio import write_json
from icl.seeding import Streams
from icl.training import signals
from learned_optimizers import LinearSelfAttention, LSAConfig
from learned_optimizers.memformer import Memformer, MemformerConfig
from reference_optimizers import (
    conjugate_gradient,
    gradient_descent,
    heavy_ball,
    krylov_bound,
    krylov_steps,
    moments,
    one_layer_optimum,
    preconditioned_gd,
    tune,
    tune_depths,
)

NAME = "memformer_vs_cgd"
#: The tuned baselines (per-step schedules, tune_depths) and the class floor of the scalar LFOM.
TUNED = ("gd_tuned", "heavy_ball_tuned", "pgd_tuned")
#: Each model's class optimum on the same test prompts: the candidates (per seed the best one is used).
CLASS_OPTIMUM = {
    "lt_scalar": ("gd_tuned",),
    "cgd_scalar": ("heavy_ball_tuned",),
    "lfom_scalar": ("lfom_shared_class",),
    "lfom_scalar_h5": ("lfom_shared_class",),
    "lt_full": ("pgd_tuned",),
    "cgd_full": TUNED,  # the best tuned linear first-order method
    "lfom_full": TUNED,
}

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


def _krylov_starts(fit, depth: int, extra: dict | None = None) -> dict[int, list[dict]]:
    """Per depth T, the per-step sizes that attain the Krylov fit (``krylov_steps``), where its roots are real."""
    starts = {}
    for T in range(1, depth + 1):
        eta = krylov_steps(fit.coefficients_by_depth[T - 1])
        if eta is not None and np.all(eta > 0):
            starts[T] = [{"eta": eta.tolist(), **{k: [v] * T for k, v in (extra or {}).items()}}]
    return starts


def tuned_baselines(tune_batch: PromptBatch, Sinv: torch.Tensor, depth: int, lfom_depths=()) -> dict[str, list]:
    """Per-step GD, heavy ball and Σ⁻¹-preconditioned GD tuned for T = 1…``depth`` by ``tune_depths`` (started
    from ``krylov_steps`` of the Krylov fits on ``tune_batch``), and the shared-Γ LFOM floor at ``lfom_depths``.

    Returns: name -> one hyperparameter dict per depth T = 1…``depth`` (None where not tuned).
    """
    plain = krylov_bound(tune_batch, tune_batch, depth)
    pre = krylov_bound(tune_batch, tune_batch, depth, preconditioner=Sinv)
    etas = np.geomspace(0.02, 3.0, 24).tolist()
    out = {
        "gd_tuned": tune_depths(gradient_descent, tune_batch, depth, {"eta": etas}, per_step=("eta",),
                                starts=_krylov_starts(plain, depth)),
        "heavy_ball_tuned": tune_depths(
            heavy_ball, tune_batch, depth,
            {"eta": np.geomspace(0.02, 3.0, 12).tolist(), "beta": np.linspace(0.0, 0.9, 10).tolist()},
            per_step=("eta", "beta"), starts=_krylov_starts(plain, depth, {"beta": 0.0}), maxfev=800),
        "pgd_tuned": tune_depths(preconditioned_gd, tune_batch, depth, {"eta": etas}, per_step=("eta",),
                                 fixed={"P": Sinv}, starts=_krylov_starts(pre, depth)),
    }  # fmt: skip
    hp = {k: [{h: v for h, v in r.hyperparameters.items() if h != "P"} for r in res] for k, res in out.items()}
    hp["lfom_shared_class"] = [
        {"c": tune(lfom_shared, tune_batch, T, {"c": [-0.2, 0.1, 0.3, 0.6, 1.0]}, per_step=("c",),
                   maxfev=1500).hyperparameters["c"]} if T in lfom_depths else None
        for T in range(1, depth + 1)
    ]  # fmt: skip
    return hp


def baseline_iterates(name: str, batch: PromptBatch, L: int, hp: dict, Sinv: torch.Tensor) -> torch.Tensor:
    if name == "gd_tuned":
        return gradient_descent(batch.X, batch.y, L, eta=hp["eta"])
    if name == "heavy_ball_tuned":
        return heavy_ball(batch.X, batch.y, L, eta=hp["eta"], beta=hp["beta"])
    if name == "lfom_shared_class":
        return lfom_shared(batch.X, batch.y, L, c=hp["c"])
    return preconditioned_gd(batch.X, batch.y, L, P=Sinv, eta=hp["eta"])


# -- the study -----------------------------------------------------------------------------------------------


def add_losses(rows: Rows, method: str, L: int, seed: int, err: torch.Tensor, setting: str) -> None:
    """Per-prompt squared errors -> rows: ``test_loss`` (mean), its standard error, and the heavy-tail statistics
    (median, 5% trimmed mean, log(mean) on five disjoint parts of the test set: min, max, sd; top-1% share)."""
    err = err.detach().double().cpu().reshape(-1)
    rows.add(method, L, seed, "test_loss", float(err.mean()), setting=setting)
    rows.add(method, L, seed, "test_loss_stderr", float(err.std() / err.numel() ** 0.5), setting=setting)
    t = tail_stats(err)
    for metric, value in (("test_loss_median", t.median), ("test_loss_trimmed", t.trimmed_mean),
                          ("log_loss_parts_min", t.log_mean_parts_min), ("log_loss_parts_max", t.log_mean_parts_max),
                          ("log_loss_parts_sd", t.log_mean_parts_sd), ("top1_share", t.top_share)):  # fmt: skip
        rows.add(method, L, seed, metric, value, setting=setting)


def _query_err(w: torch.Tensor, test: PromptBatch) -> torch.Tensor:
    return (einsum(w, test.x_query, "b d, b d -> b") - test.y_query).square()


def run(cfg: MemformerVsCGDConfig, ctx: RunContext) -> dict:
    t0 = time.time()
    write_config(ctx, cfg, Streams(cfg.seeds[0], ctx.device))
    rows = Rows(NAME)
    hparams: dict = {}
    ctx.expect_models(sum(len(cfg.model_depths(k, s)) for s in cfg.settings for k in cfg.kinds(s)))
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
            lfom_depths = {L for k in cfg.kinds(setting) if k.startswith("lfom_scalar")
                           for L in cfg.model_depths(k, setting)}  # fmt: skip
            _baselines(rows, hparams, cfg, setting, seed, test, tune_batch, Sinv, dist, lfom_depths)
            streams.append(st)
            dists.append(dist)
            tests.append(test)
        rows.write(ctx)
        for kind in cfg.kinds(setting):
            for L in cfg.model_depths(kind, setting):  # each model trained for all seeds at once
                models = [build(kind, cfg.d, cfg.n, L, cfg, st.generator("init", "cpu")) for st in streams]
                tc = cfg.train_for(kind)
                runs = train_all_seeds(ctx, cfg, f"{setting}-{kind}-L{L}", models, dists, tc, streams)
                for st, trainer, test in zip(streams, runs.runs, tests):
                    seed, model = st.seed, trainer.model
                    with torch.no_grad():
                        pred = model(test.Z().to(device=ctx.device, dtype=model.dtype))
                    err = (pred.detach().double().cpu() - test.y_query.double()).square()
                    add_losses(rows, kind, L, seed, err, setting)
                    rows.add(kind, L, seed, "final_train_loss", trainer.history.last_loss, setting=setting)
                    rows.add(kind, L, seed, "train_seconds", trainer.wall_time, setting=setting)
                    rows.add(kind, L, seed, "train_steps", trainer.step, setting=setting)
                    rows.add(kind, L, seed, "batch_size", tc.batch_size, setting=setting)
                    plateau = any(e.get("event") == "finished" for e in trainer.history.events)
                    rows.add(kind, L, seed, "stopped_by_plateau", float(plateau), setting=setting)
                    _model_diagnostics(rows, setting, kind, L, seed, kind, model, test, ctx, cfg, st)
                    ctx.print(f"seed {seed} {kind:<16} L={L}  log test loss {math.log(float(err.mean())):+.3f} "
                              f"after {trainer.step} steps")  # fmt: skip
                rows.write(ctx)
    rows.write(ctx)
    summary = {"experiment": NAME, "seeds": list(cfg.seeds), "profile": cfg.profile, "hyperparameters": hparams,
               "wall_time_s": time.time() - t0}  # fmt: skip
    from experiments.reports.memformer_vs_cgd import report  # the report module imports matplotlib

    summary.update(report(ctx.out_dir))
    write_json(ctx.out_dir / "summary.json", summary)
    ctx.print((ctx.out_dir / "report.md").read_text())
    return summary


def _baselines(rows, hparams, cfg, setting, seed, test, tune_batch, Sinv, dist, lfom_depths) -> None:
    """Every baseline's rows for one seed."""
    zero = zero_predictor_loss(cfg.prompt(setting))
    depth = max(cfg.depths)
    plain = krylov_bound(tune_batch, test, depth).test_loss[1:].tolist()
    pre = krylov_bound(tune_batch, test, depth, preconditioner=Sinv).test_loss[1:].tolist()
    hp = tuned_baselines(tune_batch, Sinv, depth, lfom_depths)
    for L in cfg.depths:
        rows.add("zero_predictor", L, seed, "test_loss", zero, setting=setting)
        add_losses(rows, "cg", L, seed, _query_err(conjugate_gradient(test.X, test.y, L)[:, -1], test), setting)
        n1 = cfg.n - 1
        cg19 = conjugate_gradient(test.X[:, :n1], test.y[:, :n1], L)[:, -1]
        add_losses(rows, "cg_n19", L, seed, _query_err(cg19, test), setting)
        rows.add("krylov", L, seed, "test_loss", plain[L - 1], setting=setting)
        rows.add("krylov_pre", L, seed, "test_loss", pre[L - 1], setting=setting)
        for name, per_depth in hp.items():
            h = per_depth[L - 1]
            if h is None:
                continue
            hparams[f"{setting}/s{seed}/L{L}/{name}"] = h
            err = _query_err(baseline_iterates(name, test, L, h, Sinv)[:, -1], test)
            add_losses(rows, name, L, seed, err, setting)
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
