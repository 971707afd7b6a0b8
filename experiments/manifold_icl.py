"""manifold_icl (issue #19): does an orthogonality constraint trained by manifold Adam help in-context learning?

Setting: Ahn et al.'s (NeurIPS 2023) law, d = 5, n = 20, x ~ N(0, Σ), Σ = V diag(1, 1, 1/4, 1/16, 1) Vᵀ (V Haar per
seed), w* ~ N(0, Σ⁻¹), noiseless. The optimal L-layer sparse LSA is A_ℓ = c_ℓ Σ⁻¹ (their Theorem 3): one eigenbasis,
per-layer spectra. The spectral models (:mod:`learned_optimizers.spectral`) parametrise exactly that class,
A_ℓ = U diag(s_ℓ) Uᵀ with one U ∈ St(d, d); the unconstrained model trains A_ℓ ∈ R^{d×d}, whose outer problem is
badly conditioned (its Hessian scales with λ_iλ_j: condition ≈ 256 here).

Methods (``methods``), each at the learning rate of its grid with the best mean final held-out gap:

- ``spectral_manifold_adam``: spectral sparse LSA, :class:`~icl.optim.ManifoldAdam` (U on Stiefel, spectra in its
  Euclidean group; U's learning rate is ``basis_lr_factor`` × the spectra's), ``constrained_schedule``;
- ``unconstrained_adam``: the sparse LSA with pgd_depth's converged recipe, per layer as there (AdamW β =
  ``reference_betas``, (0.9, 0.999) like pgd_depth's standard profile, per-matrix clip 0.01, the learning rate
  halved every L·``halve_every`` steps, at most L·``reference_steps`` steps, a plateau patience of
  L·``reference_patience`` steps); its seeds train together in one engine seed batch;
- ``unconstrained_adam_cosine``: the same model with torch Adam (default β) on one cosine schedule, no clipping (the
  pilot's recipe; on this data it ends closer to PGD than pgd_depth's recipe, so both are kept);
- ``spectral_projected_adam``: :class:`~icl.optim.ProjectedRiemannianAdam` (tangent projection, QR retraction);
- ``spectral_manifold_sgd`` and ``spectral_manifold_momentum``: :class:`~icl.optim.ManifoldSGD`, momentum 0 / 0.9;
- ``cgd_spectral_manifold_adam``, ``lfom_spectral_manifold_adam``: the CGD-like and LFOM Memformers (Dutta & Sra
  2024) with spectral A_ℓ, ManifoldAdam;
- ``per_layer_basis_manifold_adam``: the ablation with one U_ℓ per layer (the optimum is still in the class);
- ``factorised_stiefel_adam``: the factorised LSA (von Oswald et al.) with W_K, W_Q on St(k, d+1), on this data (the
  former ``manifold_adam`` study's model, now this row).
  Q = W_Kᵀ W_Q is a product of partial isometries (k unit singular values), so Σ⁻¹ with eigenvalues spread by 16
  can not be expressed: this row shows what a constraint that does not contain the optimum costs.

Reference: Σ⁻¹-preconditioned GD with its L step sizes tuned on ``tune`` prompts (:func:`reference_optimizers.tune`,
started from the steps that attain the Σ⁻¹ Krylov bound, :func:`reference_optimizers.krylov_steps`), evaluated on
the same prompts as the models; the Σ⁻¹ Krylov bound itself (fitted on ``tune``, evaluated on ``test``) is recorded
beside it. Gap = log(model MSE) − log(PGD MSE), on the trainer's held-out ``val`` prompts during training and on
``test`` prompts at the end.

**One data regime for every method** (the comparison is fair only then): ``train``'s batch size and
``resample_every`` (default: a fresh batch every step). Each method keeps its own recipe: the unconstrained model
pgd_depth's converged one (its own step cap, ``reference_steps`` per layer), the constrained ones
``constrained_schedule``; every run stops at its cap or when the plateau rule (``train.plateau_patience``) fires.

Recorded per (method, depth, seed): the gap curve, steps, wall-clock seconds and the process's CPU seconds (1
thread: independent of the machine's load) to the first evaluation within ``gap_target`` of PGD, the final test
gap (with its standard error over prompts, delta method), the constraint violation ‖UᵀU − I‖_F and the largest
principal angle between the learned U and Σ's eigenspaces over training
(:func:`learned_optimizers.spectral.eigenbasis_angles`). Paired against the unconstrained model on the same seed
and test prompts: the ratio of steps (CPU, wall seconds) to the target and the difference of final gaps; every
verdict is :func:`experiments.reporting.paired_verdict` over seeds (:mod:`experiments.reports.manifold_icl`). A
model that never came within the target counts with its last step: a censored value, the ratio's lower bound when
it is the unconstrained model, its upper bound when it is the constrained one (then "≥ 3×" never holds); a sign
test over seeds, which such bounds can not fool, stands beside the t-interval. "No worse" final gap: the upper end
of the paired 95% interval of (method − unconstrained) is ≤ ``no_worse_margin``, on ``no_worse_statistic`` of the
per-prompt test errors, fixed before a run (``mean``: the log MSE, the default and the standard run's; the 5%-trimmed
mean is reported beside it, never in its place). The unconstrained model's CPU and
wall seconds are its share of the seed batch's, less than the same run alone would take: the time ratios lean
towards it.

Rows (:mod:`experiments.results`): ``method`` and ``lr`` name a run, ``depth`` is L; curves (``val_gap``, ``wall_s``,
``cpu_s``, ``violation``, ``angle`` with the eigenspace in ``k``, ``angle_max``) carry ``train_step``; the paired
rows ``gap_vs``, ``gap_vs_stderr`` and ``gap_vs_trimmed`` (of log 5%-trimmed means) name the unconstrained run
in ``reference`` and its learning rate in ``param``; ``pgd_tuned``'s sorted step sizes carry their rank in ``k``.

The constrained recipe (``spectrum = "log"``, lr halved every ``constrained_halve_every`` steps) and the data regime
come from a diagnosis of why a first spectral run (linear spectra, one cosine schedule, batch 2048 reused for 100
steps) stopped short of PGD although it came within 0.05 six times sooner than the unconstrained model:

- U finds Σ's eigenbasis to within about 1.5° in a few hundred steps, then, with a batch reused for 100 steps,
  jitters by 1–4°: Adam's step is about lr per coordinate whatever the gradient's size, so U follows each batch's
  optimum. A rotation that mixes the λ = 1 and λ = 1/16 directions, whose A-eigenvalues differ by 16×, is
  expensive (gap 0.04–0.06 at 1.2–1.6°, 0.17–0.20 at 3–4° in one run); with U held at the eigenbasis the spectra
  alone ended within 0.004 of PGD;
- one cosine schedule spends only its last few percent of steps at a learning rate small enough to average over
  batches; a learning rate halved at a fixed period leaves a long low-rate tail;
- with linear spectra Adam moves every eigenvalue of A_ℓ by the same absolute amount (≈ 0.4 for λ = 1, ≈ 27 for
  λ = 1/16); θ = log s makes the steps relative.

Outlier batches (a second diagnosis, after a standard run in which L = 4 seeds 2 and 3 came within 0.05 only at
step 900 and not in 1,000 steps, with U's lr halved every 200 steps and no clipping; pilots with
``--profile standard --set "methods=(spectral_manifold_adam,)" --set "depths=(4,)" --set "seeds=(2,3)"``, evaluated
every 20 steps): U had found Σ's eigenbasis to 2–5° by step 100 and the gap was 0.03–0.05 at steps 240–340, but U
jumped by 8–15° within 20 steps at steps 120, 200 and 380 (lr 0.03 down to 0.0075), the gap with it (0.04 → 0.6 at
step 380). One outlier gradient g makes Adam's step m/√v ≈ (1 − β₁)/√(1 − β₂)·(β₁/√β₂)^k in its direction for k
steps, whatever its size: about 10 full steps with (0.9, 0.99), about 32 with β₂ = 0.999 (U with (0.9, 0.999) jumped
by 15° as well). Clipping each gradient block to norm 0.01 (the unconstrained recipe's clip) removed the jumps (at
most 2–4° after step 100), and halving every 100 steps instead of 200 let U settle to 0.1–0.3° and the held-out gap
to ≤ 0.02 by step 500: with both, seeds 0–4 came within 0.05 at steps 300, 300, 300, 200, 200 (L = 3) and 400, –,
400, 200, 200 (L = 4, evaluated every 100 steps on 4,096 val prompts), final test gaps (20,000 prompts) 0.005,
−0.002, 0.001, 0.001, −0.030 and 0.028, −0.006, 0.008, 0.004, −0.115. L = 4 seed 1's val gap stayed at 0.14 on those
4,096 prompts while it was −0.01 on 16,384 and −0.006 on the test prompts: a held-out mean is carried by a few
heavy-tailed prompts, so the standard profile evaluates on 16,384 val prompts and scores on 100,000 test prompts. A
depth-scaled schedule (``constrained_depth_unit = 2``: cap 500·L, halved every 100·L steps) was noisier at L = 4
(val gaps up to 0.14 at steps 1,100–1,400) and not better at the end (seeds 2, 3: 0.048, 0.005 against 0.008,
0.004): with the lr halved ten times by step 1,000 the constrained models end annealed, so their cap stays 1,000
steps at every depth. The SGD-type methods are not clipped (a clip would rescale their step).

Development pilots for the data regime (seed 0, L = 3, batch 1024, 20,000 test prompts): with a fresh batch every
step the spectral model came within 0.05 at step 200 and ended at −0.001 (3,000 steps), the unconstrained one at
step 1,200, ending at +0.003 (8,000 steps); seed 1, L = 4: steps 400 and 3,600, final +0.017 and +0.025. With a batch
reused for 10 steps both were noisier and the unconstrained model was still 0.9 above PGD after 2,000 steps, so the
fresh regime is the better one for both and the default. Manifold SGD on the log-spectra is not scale-free: at
seed 0, L = 3 it stayed 2.4–2.9 above PGD after 1,000 steps at lr 0.003, 0.03, 0.3 and 3 (with or without
momentum 0.9 at 0.003, 0.03, 0.3; at 0.3 the spectra overshoot: a plain loop without the schedule reaches NaN by step
150), which is why its row is far off.

The unconstrained recipe (development pilots, seeds 0–4, the standard data regime, lr 0.05, per-matrix clip 0.01,
no plateau rule): with Ahn et al.'s β = (0.99, 0.9), 2,000·L steps and the learning rate halved every 1,000 steps,
a former run came within 0.05 at L = 3 at steps 2200, 2200, 2000 (seeds 0–2) and ended at +0.002, +0.021, +0.014,
but the old plateau rule (10 evaluations, 1,000 steps, without a 0.1% gain, the same at every depth) stopped the
L = 4 runs at 5900, 3300 and 3000 steps, two of them before coming within 0.05. With pgd_depth's standard β =
(0.9, 0.999) and its per-layer schedule (halved every 500·L steps), the L = 3 model came within 0.05 at steps
1600, 1500, 1100, 2000, 2300 and ended (6,000 steps) at +0.016, +0.035, −0.022, +0.006, +0.021; the L = 4 model
at steps 2600, 2700, 2300, 3500, 3200, ending (8,000 steps) at +0.024, +0.085, +0.035, +0.016, +0.039, its
held-out gap still swinging by ±0.1 between evaluations at lr 0.006. That recipe reaches the target sooner, so it
is the reference; its plateau rule counts its patience in steps per layer (L·``reference_patience``, 4,000 steps
at L = 4: two halvings), which these descents do not trigger. pgd_depth's converged L = 4 sparse models (20,000
steps, batch 2048 reused for 100 steps) ended at +0.056, −0.112, +0.078: within 0.1 of tuned PGD, as noisy.

Newcomer check (seeds never used in development, 23 and 31; ``--profile standard --set "side_seeds=None" --set
"seeds=(23,31)" --set "methods=(spectral_manifold_adam,unconstrained_adam)" --set "depths=(3,4)"``, the standard
recipe with the per-matrix clip and 100-step halving; 206 s CPU): the spectral model came within 0.05 at steps 200,
200 (L = 3) and 300, 700 (L = 4), the unconstrained one at 1100, 1700 and 4800, 2500: every per-seed step ratio ≥ 3
(5.5, 8.5; 16, 3.6); final test gaps spectral 0.003, 0.009; 0.043, 0.044 against 0.011, 0.024; 0.101, 0.047 (Δ
−0.008, −0.015; −0.058, −0.003). With two seeds no interval decides; the direction agrees with the standard run.
(The same check under the former recipe, no clip and 200-step halving: steps 300, 300 and 600, 700 against 1100,
1900 and 2400, 2500.)

Profiles: ``quick`` (a test: depth 2, one seed, 60 steps); ``standard`` (seeds 0–4 for the headline pair at
depths 1–4, the other methods at L = 3 on seeds 0–2; 1,000 steps for the constrained models, at most 2,000·L for
the unconstrained one, batch 1024 fresh every step, one learning rate per method (chosen in the pilots), 16,384
val and 100,000 test prompts); ``paper`` (5 seeds, every method at every depth, 3,000 constrained steps, 5,000·L
unconstrained steps, learning-rate grids).
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any

import torch
from einops import einsum

from experiments.common import RunContext, make_distribution, write_config
from experiments.configs.manifold_icl import EIGENVALUES, METHODS, PROFILES, STANDARD_METHODS, ManifoldICLConfig  # noqa: F401  (re-exported)
from experiments.convergence import tail_stats
from experiments.optimizer_sweep import train_timed
from experiments.registry import Study
from experiments.results import Rows
from experiments.study import held_out_prompts
from icl.config import ConfigError
from icl.optim import ManifoldAdam, ManifoldSGD, ProjectedRiemannianAdam, project_to_manifold
from icl.optim.manifolds import get_manifold
from icl.prompts import PromptBatch
from icl.runio import write_json
from icl.seeding import Streams
from icl.training import ModelSpec, OptimizerSpec, TrainConfig
from learned_optimizers import LinearSelfAttention, LSAConfig
from learned_optimizers.constraints import param_groups
from learned_optimizers.spectral import (
    SpectralLSA,
    SpectralLSAConfig,
    SpectralMemformer,
    SpectralMemformerConfig,
    eigenbasis_angles,
    stiefel_violation,
)
from reference_optimizers import krylov_bound, krylov_steps, preconditioned_gd, tune

NAME = "manifold_icl"
REFERENCE = "unconstrained_adam"
#: the unconstrained recipes every other method is paired with
REFERENCES = ("unconstrained_adam", "unconstrained_adam_cosine")
SGD_TYPE = ("spectral_manifold_sgd", "spectral_manifold_momentum")
#: the methods run at every depth (the others only at ``side_depths``)
HEADLINE = ("spectral_manifold_adam", *REFERENCES)


# -- models and optimizers ---------------------------------------------------------------------------------------


def methods_at(cfg: ManifoldICLConfig, L: int) -> tuple[str, ...]:
    """The methods run at depth L: all of ``methods`` at ``side_depths`` (every depth when None), otherwise only
    the headline pair ``spectral_manifold_adam`` and the unconstrained recipes."""
    if cfg.side_depths is None or L in cfg.side_depths:
        return cfg.methods
    return tuple(m for m in cfg.methods if m in HEADLINE)


def method_lrs(cfg: ManifoldICLConfig, method: str) -> tuple[float, ...]:
    if method in REFERENCES:
        return cfg.unconstrained_lrs
    return cfg.sgd_lrs if method in SGD_TYPE else cfg.adam_lrs


def method_train_config(cfg: ManifoldICLConfig, method: str, lr: float, L: int) -> TrainConfig:
    """The outer recipe of ``method``. The unconstrained model gets pgd_depth's converged recipe, per layer like
    there: AdamW β = ``reference_betas``, each d×d gradient clipped to norm 0.01, the learning rate halved every
    L·``halve_every`` steps, at most L·``reference_steps`` steps, and a plateau rule with its patience in steps,
    L·``reference_patience`` (the engine counts it in evaluations: ⌈L·reference_patience / eval_every⌉), so that a
    slow, noisy descent is not stopped between two halvings. The constrained ones: ``constrained_schedule``, no
    clipping (global clip 1.0 for the factorised row), ``train.steps`` and its plateau rule. Every method sees the
    same data regime, ``train``'s batch size and ``resample_every``."""
    steps = cfg.train.steps if cfg.reference_steps is None else cfg.reference_steps * L
    if method in REFERENCES and steps < cfg.train.eval_every:
        raise ConfigError(f"reference_steps = {steps} at L = {L} is below train.eval_every = {cfg.train.eval_every}")
    patience = math.ceil(L * cfg.reference_patience / cfg.train.eval_every) if cfg.reference_patience else 0
    if method == "unconstrained_adam_cosine":
        return cfg.train.replace(optimizer="adam", lr=lr, schedule="cosine", clip="none", steps=steps,
                                 plateau_patience=patience)  # fmt: skip
    if method == REFERENCE:
        return cfg.train.replace(optimizer="adamw", lr=lr, betas=cfg.reference_betas, weight_decay=0.0,
                                 clip="per_matrix", clip_value=0.01, schedule="step", halve_every=cfg.halve_every * L,
                                 steps=steps, plateau_patience=patience)  # fmt: skip
    clip = ("global", 1.0) if method == "factorised_stiefel_adam" else ("none", 1.0) if method in SGD_TYPE \
        else (cfg.constrained_clip, cfg.constrained_clip_value)  # fmt: skip
    scale = L / cfg.constrained_depth_unit if cfg.constrained_depth_unit else 1.0
    return cfg.train.replace(lr=lr, schedule=cfg.constrained_schedule, clip=clip[0], clip_value=clip[1],
                             halve_every=max(1, round(cfg.constrained_halve_every * scale)),
                             steps=max(1, round(cfg.train.steps * scale)))  # fmt: skip


def seeds_of(cfg: ManifoldICLConfig, method: str) -> tuple[int, ...]:
    """The seeds ``method`` runs on: every seed for the headline pair, ``side_seeds`` (when set) for the others."""
    if method in HEADLINE or cfg.side_seeds is None:
        return cfg.seeds
    return tuple(s for s in cfg.seeds if s in cfg.side_seeds)


def build(cfg: ManifoldICLConfig, method: str, L: int, lr: float, streams: Streams, device: Any):
    """(model, optimizer, monitor) of one run: the optimizer is an :class:`~icl.training.OptimizerSpec` (the
    factorised row), a built optimizer (the spectral models: U's own learning rate) or None (the unconstrained
    model: ``train``'s optimizer); monitor() -> dict of read-outs (``violation``, ``angle``, ``angle_max``)."""
    d, dtype = cfg.prompt.d, cfg.train.torch_dtype
    gen = streams.generator("init", "cpu")
    att = LSAConfig(layers=L, mode="sparse", init_std=cfg.init_std)
    spectral = dict(spectrum=cfg.spectrum, spectrum_init=cfg.spectrum_init)
    if method in REFERENCES:
        model = LinearSelfAttention(d, att, generator=gen).to(device=device, dtype=dtype)
        return model, None, dict
    if method == "factorised_stiefel_adam":
        fact = LSAConfig(layers=L, mode="factorised", key_size=cfg.factorised_key_size, init_std=0.3, projection=True)
        spec_ = ModelSpec("lsa", d, fact, constraints={"W_K": "stiefel", "W_Q": "stiefel"})  # per-block St(k, d+1)
        model = spec_.build(gen).to(device=device, dtype=dtype)
        stiefel = [p for g in param_groups(model) if g.get("manifold") == "stiefel" for p in g["params"]]
        with torch.no_grad():  # drawn in float32: orthonormal again in the training dtype
            for p in stiefel:
                p.copy_(project_to_manifold(p, "stiefel"))
        opt = OptimizerSpec.from_config(cfg.train, "manifold_adam", lr=lr)  # the engine groups blocks by manifold
        st = get_manifold("stiefel")
        return model, opt, lambda: {"violation": max(st.check(p.detach()) for p in stiefel)}
    if method.startswith(("cgd_", "lfom_")):
        memory = method.split("_", 1)[0]
        extra = {} if memory == "cgd" else dict(gamma_shape="scalar", gamma_shared=False, gamma_init="identity")
        mcfg = SpectralMemformerConfig(attention=att, memory=memory, **extra, **spectral)
        model = SpectralMemformer(d, mcfg, generator=gen)
    else:
        shared = method != "per_layer_basis_manifold_adam"
        model = SpectralLSA(d, SpectralLSAConfig(**att.to_dict(), **spectral, shared_basis=shared), generator=gen)
    model.to(device=device, dtype=dtype)
    return model, spectral_optimizer(cfg, method, model, lr, streams), None


def _fresh(cfg: ManifoldICLConfig, method: str, L: int, lr: float, device: Any, streams: Streams):
    """A freshly built model of one seed (the engine's seed batch builds, and on divergence rebuilds, them)."""
    return build(cfg, method, L, lr, streams, device)[0]


def spectral_optimizer(cfg: ManifoldICLConfig, method: str, model, lr: float, streams: Streams):
    """The outer optimizer of a spectral model: U (its own learning rate) on Stiefel, the rest Euclidean."""
    seed = streams.seed_of("section")
    if method in SGD_TYPE:
        groups = model.param_groups(lr=lr * cfg.basis_lr_factor)
        return ManifoldSGD(groups, lr=lr, momentum=0.9 if method == "spectral_manifold_momentum" else 0.0, seed=seed)
    groups = model.param_groups(lr=lr * cfg.basis_lr_factor, betas=tuple(cfg.basis_betas or cfg.adam_betas))
    if method == "spectral_projected_adam":
        return ProjectedRiemannianAdam(groups, lr=lr, betas=tuple(cfg.adam_betas))
    return ManifoldAdam(groups, lr=lr, betas=tuple(cfg.adam_betas), seed=seed)


def spectral_monitor(model, dist) -> dict[str, float]:
    """Constraint violation and the largest principal angle (degrees) per eigenspace of Σ, ``angle:k`` for the
    k-th eigenspace in increasing eigenvalue order, and their maximum (the shared U; with per-layer bases the worst
    layer)."""
    out = {"violation": stiefel_violation(model)}
    angles = torch.stack([eigenbasis_angles(U.detach().cpu(), dist.U, dist.eigenvalues) for U in model.bases])
    for k, a in enumerate(angles.max(0).values.tolist()):
        out[f"angle:{k + 1}"] = math.degrees(a)  # rows: metric ``angle``, k = the eigenspace (increasing λ)
    out["angle_max"] = max(out[f"angle:{k + 1}"] for k in range(angles.shape[1]))
    return out


def fit(ctx: RunContext, cfg: ManifoldICLConfig, tag: str, make, dists, train_cfg: TrainConfig,
        streams: list[Streams], optimizer, monitors) -> list[dict[str, Any]]:  # fmt: skip
    """The one place models are trained: the engine (:func:`experiments.optimizer_sweep.train_timed`:
    checkpointed, resumable, timed by its clock) for the seeds of ``streams`` together (one stacked run; a seed
    batch that diverges is retrained seed by seed); ``make(streams)`` builds a seed's model, ``monitors[i](model)``
    is sampled every ``monitor_every`` steps. Returns per seed the trained run (``trainer``; None if it diverged),
    the held-out evaluations, the elapsed seconds per step (the seed's share of the batch) and the monitor samples
    [(step, {name: value})] with ``cpu_s``, the process's CPU seconds since step 0 (the seed's share of them when
    the seeds trained together)."""
    samples: dict[int, list[dict[str, float]]] = {}  # id(model) -> its samples
    index = {st.seed: i for i, st in enumerate(streams)}
    built: dict[int, int] = {}  # id(model) -> the seed's index

    def build(st: Streams):
        model = make(st)
        built[id(model)] = index[st.seed]
        return model

    def sample(model) -> float:
        rec = {**monitors[built[id(model)]](model), "cpu_s": time.process_time()}
        samples.setdefault(id(model), []).append(rec)
        return rec.get("violation", float("nan"))

    results = train_timed(ctx, cfg, tag, build, dists, train_cfg, streams, optimizer, monitor=sample,
                          monitor_every=cfg.monitor_every)  # fmt: skip
    together = len(results) if all(r["elapsed"] is results[0]["elapsed"] for r in results) else 1
    for res in results:
        steps = [s for s, _ in res["samples"]]
        recs = samples.get(id(res["trainer"].model), []) if res["trainer"] is not None else []
        res["monitor"] = list(zip(steps, recs)) if len(recs) == len(steps) else []  # a resumed run keeps none
        if res["monitor"]:  # CPU seconds since the first read-out (step 0): load-independent time
            cpu0 = res["monitor"][0][1]["cpu_s"]
            for _, rec in res["monitor"]:
                rec["cpu_s"] = (rec["cpu_s"] - cpu0) / together
    return results


# -- the reference and the gaps ------------------------------------------------------------------------------------


def tuned_pgd(tune_prompts: PromptBatch, test: PromptBatch, Sigma: torch.Tensor, L: int) -> tuple[torch.Tensor, float]:
    """The L step sizes of Σ⁻¹-preconditioned GD minimising the query MSE on ``tune_prompts``
    (:func:`reference_optimizers.tune`, started from the steps that attain the Σ⁻¹ Krylov bound when they exist,
    :func:`reference_optimizers.krylov_steps`), and the Σ⁻¹ Krylov bound fitted on ``tune_prompts`` and
    evaluated on ``test`` (:func:`reference_optimizers.krylov_bound`: the one meaning of the bound)."""
    Sinv = torch.linalg.inv(Sigma.double())
    bound = krylov_bound(tune_prompts, test, L, Sinv)
    start = krylov_steps(bound.coefficients)
    starts = [{"eta": [float(e) for e in start]}] if start is not None else []
    res = tune(preconditioned_gd, tune_prompts, L, {"eta": [0.25, 0.5, 1.0]}, per_step=("eta",), fixed={"P": Sinv},
               starts=starts)  # fmt: skip
    eta = res.hyperparameters["eta"]
    return torch.tensor([float(e) for e in (eta if isinstance(eta, (list, tuple)) else [eta] * L)]), float(
        bound.test_loss[-1]
    )


def pgd_errors(batch: PromptBatch, Sigma: torch.Tensor, etas: torch.Tensor) -> torch.Tensor:
    """Per-prompt squared query errors of Σ⁻¹-preconditioned GD with steps ``etas`` (float64)."""
    Sinv = torch.linalg.inv(Sigma.double())
    w = preconditioned_gd(batch.X.double(), batch.y.double(), len(etas), Sinv, etas.double())[:, -1]
    return (einsum(w, batch.x_query.double(), "b d, b d -> b") - batch.y_query.double()).square()


def log_gap(err: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """log(mean err) − log(mean ref) over the same prompts and its standard error (delta method, paired)."""
    err, ref = err.double(), ref.double()
    d = err / err.mean() - ref / ref.mean()
    return float(err.mean().log() - ref.mean().log()), float(d.std() / math.sqrt(len(d)))


def first_reach(curve: dict[int, float], target: float) -> float:
    """The first evaluated step with a gap <= target (NaN if none): the issue's 'comes within'."""
    for step in sorted(curve):
        if curve[step] <= target:
            return float(step)
    return float("nan")


def settled(curve: dict[int, float], target: float) -> float:
    """The first evaluated step from which every later gap stays <= target (NaN if the last one is above)."""
    out = float("nan")
    for step in sorted(curve, reverse=True):
        if curve[step] > target:
            break
        out = float(step)
    return out


def run(cfg: ManifoldICLConfig, ctx: RunContext) -> dict:
    t0 = time.time()
    write_config(ctx, cfg, Streams(cfg.seeds[0], ctx.device))
    rows = Rows(NAME)
    ctx.expect_models(sum(len(method_lrs(cfg, m)) * (1 if m in REFERENCES else len(seeds_of(cfg, m)))
                          for L in cfg.depths for m in methods_at(cfg, L)))  # fmt: skip
    seeds = []  # per seed: streams, law, tune and test prompts
    for seed in cfg.seeds:
        streams = Streams(seed, ctx.device)
        dist = make_distribution(cfg.prompt, streams)
        old = dist.dtype
        dist.dtype = torch.float64
        tune_prompts = dist.sample(cfg.tune_prompts, streams.generator("tune", "cpu"))
        dist.dtype = old
        seeds.append((seed, streams, dist, tune_prompts, held_out_prompts(dist, streams, cfg.test_prompts,
                                                                          torch.float64)))  # fmt: skip
    for L in cfg.depths:
        pgd: dict[int, tuple[float, torch.Tensor]] = {}  # seed -> (val MSE, per-prompt test errors) of tuned PGD
        for seed, streams, dist, tune_prompts, test in seeds:
            etas, krylov = tuned_pgd(tune_prompts, test, dist.Sigma, L)
            old = dist.dtype
            dist.dtype = cfg.train.torch_dtype
            val = dist.sample(cfg.train.eval_batch, streams.generator("val", ctx.device)).to("cpu", torch.float64)
            dist.dtype = old
            pgd[seed] = (float(pgd_errors(val, dist.Sigma, etas).mean()), pgd_errors(test, dist.Sigma, etas))
            rows.add("pgd_tuned", L, seed, "test_loss", float(pgd[seed][1].mean()))
            rows.add("pgd_tuned", L, seed, "val_loss", pgd[seed][0])
            rows.add("krylov_bound_sigma_inv", L, seed, "test_loss", krylov)
            for k, e in enumerate(sorted(etas.tolist())):
                rows.add("pgd_tuned", L, seed, "step_sorted", e, k=k + 1)
        errs: dict[int, dict[tuple[str, float], torch.Tensor]] = {seed: {} for seed, *_ in seeds}
        for method in methods_at(cfg, L):
            for lr in method_lrs(cfg, method):
                tag = f"{method}@{lr:g}"
                # the unconstrained model trains every seed in one stacked run (the engine's seed batch); the
                # spectral ones, each with its own optimizer object, one seed at a time
                mine = [one for one in seeds if one[0] in seeds_of(cfg, method)]
                groups = [mine] if method in REFERENCES else [[one] for one in mine]
                for group in groups:
                    built = [build(cfg, method, L, lr, st, ctx.device) for _, st, *_ in group]
                    monitors = [(lambda _m, f=mon: f()) if mon else (lambda m, law=dist: spectral_monitor(m, law))
                                for (_, _, mon), (_, _, dist, *_) in zip(built, group)]  # fmt: skip
                    make = partial(_fresh, cfg, method, L, lr, ctx.device) if len(group) > 1 \
                        else (lambda _st, m=built[0][0]: m)  # fmt: skip
                    results = fit(ctx, cfg, f"{tag}-L{L}", make, [d for _, _, d, *_ in group],
                                  method_train_config(cfg, method, lr, L), [st for _, st, *_ in group],
                                  built[0][1], monitors)  # fmt: skip
                    for (seed, *_, test), res in zip(group, results):
                        err = add_run(rows, method, lr, L, seed, res, test, *pgd[seed])
                        if err is not None:
                            errs[seed][(method, lr)] = err
                        last = rows.rows[-1]
                        ctx.print(f"seed {seed} L{L} {tag:<34} {last['metric']} {last['value']:.4g}  "
                                  f"{res['status'][:40]}")  # fmt: skip
        for seed, by_method in errs.items():  # paired with the unconstrained model on the same test prompts
            for (method, lr), err in by_method.items():
                for (ref, ref_lr), ref_err in by_method.items():
                    if ref in REFERENCES and (method, lr) != (ref, ref_lr):
                        diff, se = log_gap(err, ref_err)
                        trimmed = math.log(tail_stats(err).trimmed_mean) - math.log(tail_stats(ref_err).trimmed_mean)
                        for metric, value in (("gap_vs", diff), ("gap_vs_stderr", se), ("gap_vs_trimmed", trimmed)):
                            rows.add(method, L, seed, metric, value, lr=lr, reference=ref, param=ref_lr)
        rows.write(ctx)
    from experiments.reports.manifold_icl import report  # the report module imports matplotlib

    summary = report(ctx.out_dir)
    summary["wall_time_s"] = time.time() - t0
    write_json(ctx.out_dir / "summary.json", summary)
    return summary


def add_run(rows: Rows, method: str, lr: float, L: int, seed: int, res: dict, test: PromptBatch, pgd_val: float,
            pgd_err: torch.Tensor) -> torch.Tensor | None:  # fmt: skip
    """The rows of one run (curves carry their ``train_step``, the angle its eigenspace in ``k``); returns the
    per-prompt test errors (None if it diverged)."""
    elapsed = res["elapsed"]

    def add(metric: str, value: float, **keys: Any) -> None:
        rows.add(method, L, seed, metric, value, lr=lr, **keys)

    for e in res["evals"]:
        step = int(e["step"])
        add("val_gap", math.log(e["eval_loss"]) - math.log(pgd_val), train_step=step)
        add("wall_s", elapsed[min(step, len(elapsed) - 1)], train_step=step)
    for step, rec in res["monitor"]:
        for key, v in rec.items():
            metric, _, k = key.partition(":")
            add(metric, v, train_step=step, k=int(k) if k else None)
    add("time_per_step_ms", 1e3 * elapsed[-1] / max(len(elapsed) - 1, 1))
    add("diverged", float(res["trainer"] is None))
    if res["trainer"] is None:
        add("final_val_gap", float("inf"))
        return None
    add("final_val_gap", math.log(res["evals"][-1]["eval_loss"]) - math.log(pgd_val))
    model = res["trainer"].model
    with torch.no_grad():
        pred = model(test.Z().to(next(model.parameters()).device, next(model.parameters()).dtype), check=False)
    err = (pred.detach().double().cpu() - test.y_query).square()
    gap, se = log_gap(err, pgd_err)
    add("test_loss", float(err.mean()))
    add("final_gap_stderr", se)
    add("final_gap", gap)
    return err


STUDY = Study(ManifoldICLConfig, run, PROFILES)


