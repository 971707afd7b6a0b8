"""pgd_depth: L-layer linear transformers learn preconditioned gradient descent (Ahn et al., NeurIPS 2023).

Setting (Ahn et al. §2.3 and their ``variable_L_exp`` / ``rotation demonstration-Adam-p0`` notebooks): d = 5,
n = 20, x ~ N(0, Σ) with Σ = U·diag(1, 1, 1/4, 1/16, 1)·Uᵀ (U Haar-random per seed), w* ~ N(0, Σ⁻¹), noiseless.
Sparse LSA (eq. 8, A_ℓ trained) and the GD++ parametrization (eq. 11, mode ``gdpp``: A_ℓ and B_ℓ trained) with
L = 1…4 layers, trained with Ahn et al.'s recipe: AdamW (no weight decay), each d×d gradient block clipped to norm
0.01, a batch resampled every 100 steps, the learning rate halved periodically; except that the standard profile
uses Adam's usual β = (0.9, 0.999) where Ahn et al. use (0.99, 0.9) (the ``paper`` profile): measured on the
3-layer sparse model (3 seeds, 10,000 steps, lr 0.05 halved every 1,000), (0.99, 0.9) ends 0.024–0.047 in log
above tuned Σ⁻¹-PGD with the largest step 1.64–1.69, (0.9, 0.999) 0.011–0.016 above it with steps within 0.02 of
Ahn et al.'s 0.43, 0.69, 1.72.

**Converged training.** A depth-L model trains until its held-out loss stops improving (the engine's plateau
rule: L·``train.plateau_patience`` evaluations without a relative gain of ``train.plateau_tol``), at most
L·``train.steps`` steps, with the learning rate halved every L·``train.halve_every`` steps (these three are per
layer: deeper models anneal more slowly). The GD++ LSA of depth L ≥ ``gdpp_grow_from`` starts from the trained
depth L − 1 model (:func:`experiments.study.grow`; a fresh start stalls in a poor basin of GD++'s loss, see the
config's docstring). The steps taken, the cap, what stopped the run and whether it was grown are rows of
results.csv. Every learned model's log test loss is reported beside its class optimum on the
same test prompts (:func:`experiments.convergence.class_gap`): tuned Σ⁻¹-PGD for the sparse LSA (its A_ℓ ∝ Σ⁻¹ set,
Ahn et al. Thm 3), tuned GD++ in Σ⁻¹ geometry for the GD++ LSA (Thm 4's set A_ℓ = a_ℓΣ⁻¹, B_ℓ = b_ℓI is GD++ on
whitened inputs with γ_ℓ = a_ℓb_ℓ), the Theorem 1 optimum A* = Γ⁻¹ for the w* ~ N(0, I) model; the gap and its
per-prompt standard error (delta method) are rows too, and so is who carries a heavy-tailed gap: each model's and
its reference's mean loss on the other's worst ``TAIL_FRACTION`` of the test prompts.

Measured on held-out test prompts (the seed's ``test`` stream; training never sees them), per depth:

- tuned Σ⁻¹-PGD and tuned GD (:func:`reference_optimizers.tune_depths`: per-step sizes fitted on ``tune``
  prompts of the training law, started from the steps that attain the Krylov bound
  (:func:`reference_optimizers.krylov_steps`), never worse on the tune prompts than depth L−1), tuned GD++ in
  Σ⁻¹ geometry (the same tuner on whitened prompts, started from the grid and the tuned PGD steps with
  ``gdpp_restarts`` further refinements, and, once the GD++ models have trained, refined again from each seed's
  learned read-out; the schedule reported is the best on all tune prompts of these, the other seeds' (whitened, the
  law is x ~ N(0, I), w* ~ N(0, I) for every seed), tuned PGD and depth L−1's choice plus a null step: one
  refinement alone missed the better of GD++'s two L = 2 basins on two seeds of three, which the learned models
  found), and the Krylov
  bounds (:func:`reference_optimizers.krylov_bound`, P = I and P = Σ⁻¹: fitted on the tune prompts, evaluated on
  the test prompts). Every L-step GD with per-step sizes preconditioned by P lies in the Krylov set, so tuned
  (P)GD equals its bound when the optimal polynomial has real roots;
- heavy tails (:func:`experiments.convergence.tail_stats`): median, trimmed mean and the spread of log(mean)
  across ``test_parts`` disjoint parts of the test set, for every method;
- Ahn et al.'s Dist(Σ^½A_ℓΣ^½, I) (and Dist(A_ℓ, I)) per layer over training, read out every ``read_every`` steps;
- the learned step sizes c_ℓ = tr(Σ^½A_ℓΣ^½)/d in Σ⁻¹ units, sorted (Lemma 4: permuting them leaves the loss
  unchanged), against Ahn et al.'s Fig. 2 values 0.43, 0.69, 1.72 for L = 3 and the tuned PGD steps;
- Theorem 1 with w* ~ N(0, I): a 1-layer sparse LSA against A* = Γ⁻¹, Γ = (1 + 1/n)Σ + (tr Σ/n)I
  (:func:`reference_optimizers.one_layer_optimum`), on the same test prompts and as tr Σ − tr(ΣΓ⁻¹Σ).

Profiles: ``quick`` (1 seed, depths 1–2, a few hundred steps; the tests run it); ``standard`` (default: 3 seeds ×
depths 1–4 × {sparse, gdpp} + the Theorem 1 model, batch 2048, converged by the plateau rule; its measured time is
in its report's timing line and finished.json); ``paper``: Ahn et al.'s recipe (β = (0.99, 0.9), lr 0.01, batch
20000, at most 20,000 steps at L = 4), 5 seeds, 200,000 test prompts (use ``--device cuda``). Each model is
trained for all seeds at once (``vectorise_seeds``, :func:`experiments.study.train_all_seeds`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch

import reference_optimizers as ro
from experiments.common import RunContext, write_config
from experiments.configs.pgd_depth import EIGENVALUES, PROFILES, PGDDepthConfig  # noqa: F401  (re-exported)
from experiments.convergence import tail_stats
from experiments.registry import Study
from experiments.study import Rows, grow, held_out_prompts, train_all_seeds
from icl.metrics import LossEstimate, dist_to_identity, relative_frobenius
from icl.prompts import PromptBatch, PromptDistribution
from icl.runio import write_json
from icl.seeding import Streams
from icl.training import Fitted, ModelSpec, SeedRun, signals
from learned_optimizers import LinearSelfAttention, LSAConfig
from learned_optimizers.probes import read_out
from reference_optimizers import one_layer_optimum
from reference_optimizers._checks import DivergedError, OutOfRangeError

NAME = "pgd_depth"
#: Ahn et al. Fig. 2: Σ^½A_ℓΣ^½ ≈ c_ℓ·I for the 3-layer sparse model (0.69, 0.43, 1.72 by layer; sorted here)
PUBLISHED_STEPS_L3 = (0.43, 0.69, 1.72)
#: each learned model's class optimum on the same test prompts (method id of the reference)
CLASS_OPTIMUM = {"sparse": "pgd_tuned", "gdpp": "gdpp_tuned", "thm1_learned": "thm1_optimum"}
#: the tail statistics written per method, depth and seed (names of :class:`experiments.convergence.TailStats`)
TAIL_FIELDS = ("median", "trimmed_mean", "log_mean_parts_min", "log_mean_parts_max", "log_mean_parts_sd",
               "top_share")  # fmt: skip
#: the fraction of test prompts (the worst, by loss) on which a learned model and its reference are compared
TAIL_FRACTION = 1e-3


# -- reference methods ----------------------------------------------------------------------------------------


def whiten(batch: PromptBatch, Sigma: torch.Tensor) -> PromptBatch:
    """The prompts with Σ^{-½}-whitened context and query inputs: there Σ⁻¹-preconditioned GD is plain GD and
    the GD++ LSA's Thm 4 set (A_ℓ = a_ℓΣ⁻¹, B_ℓ = b_ℓI) is GD++ (von Oswald et al.) with γ_ℓ = a_ℓb_ℓ."""
    evals, evecs = torch.linalg.eigh(Sigma.double())
    W = (evecs * evals.rsqrt()) @ evecs.T
    return replace(batch, X=batch.X.double() @ W, x_query=batch.x_query.double() @ W)


def predict(method, batch: PromptBatch, steps: int, hyperparameters: dict) -> torch.Tensor:
    """ŷ = ⟨w_steps, x_q⟩ of a reference optimizer with the given (tuned) hyperparameters, (B,)."""
    w = method(batch.X.double(), batch.y.double(), steps, **hyperparameters)[:, -1]
    return (w * batch.x_query.double()).sum(-1)


def squared_errors(pred: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
    """Per-prompt query losses (ŷ − y_q)², float64 (B,)."""
    return (pred.detach().double().cpu() - batch.y_query.double().cpu()).square()


def tuned_gd(tune: PromptBatch, test: PromptBatch, P: torch.Tensor, depths: tuple[int, ...], evals: int
             ) -> tuple[dict[int, list[float]], dict[int, torch.Tensor]]:  # fmt: skip
    """Per-step sizes of P-preconditioned GD tuned for every depth 1…max(depths) (one tuner:
    :func:`reference_optimizers.tune_depths`, started from the Krylov bound's steps) -> ({L: η_1…η_L},
    {L in depths: per-prompt test losses})."""
    top = max(depths)
    kb = ro.krylov_bound(tune, tune, top, P)
    starts = {}
    for T in range(1, top + 1):
        etas = ro.krylov_steps(kb.coefficients_by_depth[T - 1])
        if etas is not None and (etas > 0).all():
            starts[T] = [{"eta": [float(e) for e in etas]}]
    results = ro.tune_depths(ro.preconditioned_gd, tune, top, {"eta": (0.25, 0.5, 1.0)}, per_step=("eta",),
                             fixed={"P": P}, starts=starts, maxfev=evals * top)  # fmt: skip
    steps = {T: list(r.hyperparameters["eta"]) for T, r in enumerate(results, 1)}
    errs = {L: squared_errors(predict(ro.preconditioned_gd, test, L, {"P": P, "eta": steps[L]}), test) for L in depths}
    return steps, errs


#: the GD++ tuner's grid (constant η, γ); γ ≈ 0.25 on whitened prompts is the input-transform basin: from γ = 0 alone
#: the refinement stays near PGD (measured at L = 3: log loss −3.1 against −4.7 with this grid)
GDPP_GRID = {"eta": (0.5, 1.0, 1.5), "gamma": (0.0, 0.25, 0.5)}


def gdpp_candidates(tune: PromptBatch, depths: tuple[int, ...], pgd_steps: dict[int, list[float]], evals: int,
                    restarts: int) -> dict[int, list[dict]]:  # fmt: skip
    """Candidate GD++ schedules (η_ℓ, γ_ℓ) on whitened prompts for every depth 1…max(depths): the schedule refined by
    :func:`reference_optimizers.tune_depths` (started from the grid, from the tuned PGD steps with each grid γ, and
    from depth T−1's result; ``restarts`` further refinements from the next best starts) and the tuned PGD steps
    with γ = 0 -> {L: [refined, PGD]}.

    The GD++ objective has several basins: at L = 2, two 0.4 apart in log loss, and a single refinement from the
    best grid point ends in either (measured on three tune batches: two of three in the worse one).
    """
    top = max(depths)
    starts = {L: [{"eta": list(etas), "gamma": [g] * L} for g in GDPP_GRID["gamma"]] for L, etas in pgd_steps.items()}
    results = ro.tune_depths(ro.gd_plus_plus, tune, top, GDPP_GRID, per_step=("eta", "gamma"), starts=starts,
                             maxfev=evals * top, restarts=restarts)  # fmt: skip
    return {L: [_schedule_of(results[L - 1]), {"eta": list(pgd_steps[L]), "gamma": [0.0] * L}]
            for L in range(1, top + 1)}


def _schedule_of(result: ro.TuneResult) -> dict[str, list[float]]:
    return {k: [float(v) for v in result.hyperparameters[k]] for k in ("eta", "gamma")}


def learned_gdpp_schedule(model: LinearSelfAttention, Sigma: torch.Tensor) -> dict[str, list[float]]:
    """The GD++ schedule nearest a trained GD++ LSA: η_ℓ = tr(Σ^½A_ℓΣ^½)/d, γ_ℓ = η_ℓ·tr(B_ℓ)/d (exact on Ahn et
    al.'s Thm 4 set A_ℓ = a_ℓΣ⁻¹, B_ℓ = b_ℓI, where the layer is GD++ on whitened prompts with γ_ℓ = a_ℓb_ℓ)."""
    r = read_out(model, Sigma)
    eta = [float(a) for a in r.step_sizes]
    b = [float(torch.diagonal(r.B[layer].sum(0)).mean()) for layer in range(model.layers)]
    return {"eta": eta, "gamma": [e * c for e, c in zip(eta, b)]}


def refine_gdpp(tune: PromptBatch, L: int, start: dict[str, list[float]], evals: int) -> dict[str, list[float]]:
    """A GD++ schedule of depth L refined by :func:`reference_optimizers.tune` from ``start`` (and the grid)."""
    return _schedule_of(ro.tune(ro.gd_plus_plus, tune, L, GDPP_GRID, per_step=("eta", "gamma"), starts=[start],
                                maxfev=evals * L))  # fmt: skip


def gdpp_select_loss(select: PromptBatch, L: int, hp: dict) -> float:
    """Mean query loss of GD++ with schedule ``hp`` on the selection prompts (inf where it diverges)."""
    try:
        value = float(squared_errors(predict(ro.gd_plus_plus, select, L, hp), select).mean())
    except (DivergedError, OutOfRangeError):
        return math.inf
    return value if math.isfinite(value) else math.inf


#: where a chosen GD++ schedule came from (the ``source`` row of ``gdpp_tuned``)
GDPP_SOURCES = ("refined", "tuned PGD, γ = 0", "depth L−1 + a null step", "refined from this seed's learned model",
                "refined from another seed's learned model", "another seed's refined")  # fmt: skip


def choose_gdpp(select: PromptBatch, L: int, candidates: list[tuple[int, dict]]) -> tuple[int, dict]:
    """The candidate (source code, schedule) with the lowest mean loss on the selection prompts."""
    scores = [gdpp_select_loss(select, L, hp) for _, hp in candidates]
    return candidates[min(range(len(candidates)), key=lambda i: scores[i])]


def add_scored(rows: Rows, method: str, L: int, seed: int, err: torch.Tensor, parts: int, **keys) -> None:
    """The test loss (mean, standard error) and the tail statistics of per-prompt losses ``err``."""
    t = tail_stats(err, parts=parts)
    rows.add_loss(method, L, seed, LossEstimate(t.mean, float(err.std()) / math.sqrt(t.count), t.count), **keys)
    for name in TAIL_FIELDS:
        rows.add(method, L, seed, name, getattr(t, name), **keys)


def add_gap(rows: Rows, method: str, L: int, seed: int, err: torch.Tensor, ref: torch.Tensor) -> None:
    """log(mean err) − log(mean ref) on the same prompts and its per-prompt standard error (delta method:
    the standard error of the mean of err_i/mean(err) − ref_i/mean(ref)); and which of the two explodes: the mean
    loss of each on the model's worst ``TAIL_FRACTION`` of the prompts and on the reference's, and the share of the
    model's total loss its worst prompts carry."""
    a, b = err.double(), ref.double()
    gap = math.log(a.mean()) - math.log(b.mean())
    z = a / a.mean() - b / b.mean()
    rows.add(method, L, seed, "gap_log", gap)
    rows.add(method, L, seed, "gap_log_se", float(z.std() / math.sqrt(z.numel())))
    # who carries the tail: the mean loss of each on the other's worst TAIL_FRACTION of the prompts
    k = max(1, round(TAIL_FRACTION * a.numel()))
    mine, theirs = a.topk(k).indices, b.topk(k).indices
    rows.add(method, L, seed, "worst_own", float(a[mine].mean()))
    rows.add(method, L, seed, "worst_own_reference", float(b[mine].mean()))
    rows.add(method, L, seed, "worst_reference", float(b[theirs].mean()))
    rows.add(method, L, seed, "worst_reference_own", float(a[theirs].mean()))
    rows.add(method, L, seed, "worst_own_share", float(a[mine].sum() / a.sum()))


def baselines(rows: Rows, cfg: PGDDepthConfig, seed: int, tune: PromptBatch, test: PromptBatch, Sigma: torch.Tensor
              ) -> tuple[dict[tuple[str, int], torch.Tensor], dict[int, list[float]]]:  # fmt: skip
    """Tuned PGD (P = Σ⁻¹), tuned GD and the two Krylov bounds per depth; returns their per-prompt test losses
    {(method, L): losses} and the tuned PGD steps {L: η_1…η_L}. Tuned GD++ is chosen after the GD++ models have
    trained (:func:`run`: their read-outs are candidate starts)."""
    d = Sigma.shape[0]
    Sinv, eye = torch.linalg.inv(Sigma.double()), torch.eye(d, dtype=torch.float64)
    errs: dict[tuple[str, int], torch.Tensor] = {}
    pgd_steps: dict[int, list[float]] = {}
    for method, P in (("pgd_tuned", Sinv), ("gd_tuned", eye)):
        signals.raise_if_requested("tuning the baselines")
        steps, method_errs = tuned_gd(tune, test, P, cfg.depths, cfg.tune_evals)
        for L, err in method_errs.items():
            errs[(method, L)] = err
            for k, e in enumerate(sorted(steps[L])):
                rows.add(method, L, seed, "step_sorted", e, k=k + 1)
        if method == "pgd_tuned":
            pgd_steps = steps
    for method, P in (("krylov_plain", eye), ("krylov_precond", Sinv)):
        kb = ro.krylov_bound(tune, test, max(cfg.depths), P)
        for L in cfg.depths:
            errs[(method, L)] = squared_errors(kb.test_predictions[:, L - 1], test)
    for (method, L), err in errs.items():
        add_scored(rows, method, L, seed, err, cfg.test_parts)
    return errs, pgd_steps


# -- training with read-outs ------------------------------------------------------------------------------------


def readout_rows(model: LinearSelfAttention, Sigma: torch.Tensor) -> dict[str, float]:
    ro_ = read_out(model, Sigma)
    out = {}
    for layer in range(model.layers):
        out[f"dist_sigma:l{layer + 1}"] = float(ro_.dist_identity[layer])
        out[f"dist_raw:l{layer + 1}"] = float(ro_.dist_identity_raw[layer])
        out[f"step:l{layer + 1}"] = float(ro_.step_sizes[layer])
        if model.cfg.mode == "gdpp":
            B = ro_.B[layer, 0]
            out[f"b_scale:l{layer + 1}"] = float(torch.diagonal(B).mean())
            out[f"dist_B:l{layer + 1}"] = dist_to_identity(B) if B.norm() > 0 else math.nan
    return out


def _split_layer(key: str) -> tuple[str, int]:
    """A read-out key ``"dist_sigma:l2"`` as the row's metric and layer: ("dist_sigma", 2)."""
    quantity, _, layer = key.partition(":l")
    return quantity, int(layer)


def add_training(rows: Rows, method: str, L: int, seed: int, run: SeedRun, cap: int) -> None:
    """How the model trained: steps taken, the cap, whether the plateau rule stopped it, the last losses, the time."""
    plateau = any(e.get("event") == "finished" and str(e.get("reason", "")).startswith("plateau")
                  for e in run.history.events)  # fmt: skip
    rows.add(method, L, seed, "train_steps", run.step)
    rows.add(method, L, seed, "step_cap", cap)
    rows.add(method, L, seed, "plateau_stopped", float(plateau))
    rows.add(method, L, seed, "final_train_loss", run.history.last_loss)
    if run.history.evals:
        rows.add(method, L, seed, "best_eval_loss", min(e["eval_loss"] for e in run.history.evals))
    rows.add(method, L, seed, "wall_time_s", run.wall_time)


@dataclass
class _Seed:
    """What the study holds per seed while the models of all seeds are trained."""

    seed: int
    streams: Streams
    dist: PromptDistribution
    test: PromptBatch
    errs: dict[tuple[str, int], torch.Tensor]
    gdpp: dict | None = None  # whitened tune/select/test prompts, candidate and chosen GD++ schedules


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
        zero = squared_errors(torch.zeros_like(test.y_query), test)
        add_scored(rows, "zero_predictor", 0, seed, zero, cfg.test_parts)
        errs, pgd_steps = baselines(rows, cfg, seed, tune, test, dist.Sigma)
        gdpp = None
        if "gdpp" in cfg.modes:  # candidates now, the choice after training (the models' read-outs are starts)
            signals.raise_if_requested("tuning the baselines")
            wselect = whiten(tune, dist.Sigma)
            wtune = wselect[: cfg.gdpp_tune_prompts]
            gdpp = {"tune": wtune, "select": wselect, "test": whiten(test, dist.Sigma), "chosen": {},
                    "candidates": gdpp_candidates(wtune, cfg.depths, pgd_steps, cfg.tune_evals, cfg.gdpp_restarts)}
        rows.write(ctx)
        per_seed.append(_Seed(seed, streams, dist, test, errs, gdpp))
        ctx.print(f"seed {seed}: baselines done ({time.time() - t0:.0f}s)")

    def train(tag: str, L: int, mode: str, dists: list[PromptDistribution], previous: list | None = None) -> Fitted:
        """Model ``tag`` for every seed (together unless vectorise_seeds is off), read out every read_every
        steps; with ``previous`` (each seed's trained depth L − 1 model) started from it
        (:func:`experiments.study.grow`)."""
        spec = ModelSpec("lsa", d, LSAConfig(layers=L, mode=mode, init_std=cfg.init_std))
        streams = [s.streams for s in per_seed]
        models = spec if previous is None else [grow(spec.build(s.streams.generator("init", "cpu")), p)
                                                for s, p in zip(per_seed, previous)]  # fmt: skip
        reader = lambda i, m: readout_rows(m, dists[i].Sigma)  # noqa: E731
        return train_all_seeds(ctx, cfg, tag, models, dists, cfg.train_at(L, mode), streams,
                               read_every=cfg.read_every, read_out=reader)  # fmt: skip

    def errors(model: torch.nn.Module, test: PromptBatch) -> torch.Tensor:
        trained = model.to("cpu").double().eval()
        with torch.no_grad():
            return squared_errors(trained(test.Z()), test)

    # learned models, each trained for all seeds at once
    ctx.expect_models(len(cfg.modes) * len(cfg.depths) + int(cfg.theorem1))
    def choose_gdpp_reference(L: int, models: list[torch.nn.Module]) -> None:
        """Tuned GD++ of depth L per seed: the best on the seed's selection prompts among its own candidates, the
        schedules refined from every seed's learned read-out, the other seeds' refined schedules (on whitened
        prompts the law is the same for every seed: x ~ N(0, I), w* ~ N(0, I)) and its own depth L−1 choice with a
        null step; its test losses, schedule and where it came from become rows."""
        signals.raise_if_requested("tuning GD++")
        from_learned = [refine_gdpp(s.gdpp["tune"], L, learned_gdpp_schedule(m, s.dist.Sigma), cfg.tune_evals)
                        for s, m in zip(per_seed, models)]  # fmt: skip
        for i, s in enumerate(per_seed):
            own, pgd = s.gdpp["candidates"][L]
            cands = [(0, own), (1, pgd)]
            if L - 1 in s.gdpp["chosen"]:
                cands.append((2, {k: v + [0.0] for k, v in s.gdpp["chosen"][L - 1].items()}))
            cands += [(3 if j == i else 4, hp) for j, hp in enumerate(from_learned)]
            cands += [(5, o.gdpp["candidates"][L][0]) for j, o in enumerate(per_seed) if j != i]
            source, hp = choose_gdpp(s.gdpp["select"], L, cands)
            s.gdpp["chosen"][L] = hp
            err = squared_errors(predict(ro.gd_plus_plus, s.gdpp["test"], L, hp), s.gdpp["test"])
            s.errs[("gdpp_tuned", L)] = err
            add_scored(rows, "gdpp_tuned", L, s.seed, err, cfg.test_parts)
            rows.add("gdpp_tuned", L, s.seed, "source", source)
            for k, (e, g) in enumerate(zip(hp["eta"], hp["gamma"])):
                rows.add("gdpp_tuned", L, s.seed, "eta", e, layer=k + 1)
                rows.add("gdpp_tuned", L, s.seed, "gamma", g, layer=k + 1)

    for mode in cfg.modes:
        kept: list | None = None  # each seed's trained model of the previous depth
        for L in sorted(cfg.depths):
            tag = f"{mode}-L{L}"
            grown = cfg.grows(L, mode)
            kept = train(tag, L, mode, [s.dist for s in per_seed],
                         previous=[r.model for r in kept] if grown else None).runs  # fmt: skip
            if mode == "gdpp":
                choose_gdpp_reference(L, [t.model for t in kept])
            for s, trainer in zip(per_seed, kept):
                seed, test, Sigma = s.seed, s.test, s.dist.Sigma
                err = errors(trainer.model, test)
                add_scored(rows, mode, L, seed, err, cfg.test_parts)
                if (CLASS_OPTIMUM[mode], L) in s.errs:
                    add_gap(rows, mode, L, seed, err, s.errs[(CLASS_OPTIMUM[mode], L)])
                add_training(rows, mode, L, seed, trainer, cfg.train_at(L, mode).steps)
                if mode == "gdpp":
                    rows.add(mode, L, seed, "grown", float(grown))
                dynamics = trainer.readouts
                for k, v in dynamics[-1].items():
                    if k != "step":
                        metric, layer = _split_layer(k)
                        rows.add(mode, L, seed, metric, v, layer=layer)
                steps = sorted(dynamics[-1][f"step:l{layer + 1}"] for layer in range(L))
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
                    rows.add(mode, 1, seed, "A_rel_error_thm1", relative_frobenius(trainer.model.A[0, 0], opt.A))
                ctx.print(f"seed {seed} {tag}: log test loss {math.log(err.mean()):.3f}, {trainer.step} steps "
                          f"({trainer.wall_time:.0f}s){', grown from L − 1' if grown else ''}")  # fmt: skip
            rows.write(ctx)

    if cfg.theorem1:  # Theorem 1: w* ~ N(0, I), non-isotropic Σ, one sparse layer
        law = replace(cfg.prompt, w_prior="identity")
        dists1 = [PromptDistribution(law, U=s.dist.U) for s in per_seed]
        runs = train("thm1-sparse-L1", 1, "sparse", dists1)
        for s, trainer, dist1 in zip(per_seed, runs.runs, dists1):
            seed = s.seed
            Sinv = torch.linalg.inv(s.dist.Sigma)
            test1 = held_out_prompts(dist1, s.streams, cfg.test_prompts, torch.float64)
            err = errors(trainer.model, test1)
            opt = one_layer_optimum(dist1.Sigma, n, "identity")
            opt_err = squared_errors(predict(ro.preconditioned_gd, test1, 1, {"P": opt.A.double(), "eta": 1.0}), test1)
            add_scored(rows, "thm1_learned", 1, seed, err, cfg.test_parts)
            add_scored(rows, "thm1_optimum", 1, seed, opt_err, cfg.test_parts)
            add_gap(rows, "thm1_learned", 1, seed, err, opt_err)
            add_training(rows, "thm1_learned", 1, seed, trainer, cfg.train_at(1).steps)
            A = trainer.model.A[0, 0].detach()
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
