"""newton_vs_gd (issue #5 item 4): do deeper layers match iterative Newton or exponentially many GD steps?

Fu et al. (2023/24, arXiv 2310.17086) probe every layer of a 12-layer GPT-2 (d = 20) and find best-matching
iterative-Newton steps 1, 1, 3, 5, 8, 10, 14, 17, 20, 21, 21, 21 for layers 1..12 (about 3 Newton iterations
per middle layer) while GD needs exponentially many steps per extra layer; Giannou et al. (2024) show linear
attention can emulate Newton–Schulz steps. At CPU scale we train, on d = 10, n = 20, x ~ N(0, I), w* ~ N(0, I):

- ``lsa_full``: an L-layer LSA with unconstrained P, Q (``mode="full"``), read out per layer as −(query y-slot)
  (von Oswald et al.'s per-layer read-out), grown depth by depth (``grow``): depth ℓ starts from the trained
  depth ℓ−1 with its last layer repeated, and each depth trains (float64, AdamW lr 1e-2 halved every 400 steps,
  global clip 1) until the plateau rule stops it or the cap of 2400 steps. Trained from its random
  initialisation instead, the 4-layer model is far slower: lr 1e-3 cosine over 3000 steps ended at test MSE 1.24;
  lr 1e-2 halved every 300 steps reached 0.055 after 2000 steps (seed 1). Grown with a cap of 800 steps per depth
  (lr halved every 150) it ended 2.0×, 3.7× and 4.2× above tuned 4-step GD++ (seeds 0, 1, 2), its class optimum,
  which each run measures on its own test prompts (``class_tolerance``): the last depth was still descending at
  its cap with the learning rate already at 8e-5. The same three depth-3 models trained 2000 more steps at depth 4
  (lr halved every 400) ended 0.79×, 1.32×, 1.39×; the recipe above, on seeds 7 and 23 (never used otherwise),
  1.03× and 0.71× (depths 1–3 stopped by the plateau rule after 400, 1150 and 1950 steps, depth 4 at its cap).
  The per-prompt losses of a 4-layer model are heavy-tailed (the worst 1% of prompts carry 70–80% of the test
  MSE), so the explosion guard only catches non-finite losses (``explode_factor`` 1e30): with 1e8, seed 7's
  depth 4 read a finite spike above the bound, rolled back, and met it again after every rollback;
- ``gpt``: the softmax baseline (:class:`learned_optimizers.GPT`, pre-LN, causal, Garg's interleaved tokens),
  trained as Garg et al. and Fu et al. train it, on the mean squared error over every prefix
  (``gpt_train.loss = "prefix"``); per layer a linear read-out of the query position's hidden state is fitted
  by ridge regression on separate ``probe`` prompts (Fu et al. retrain one linear read-out per layer with the
  network frozen; ours is the closed-form fit of that read-out). Every reported loss is the query MSE.

Per layer ℓ and reference step t, :func:`learned_optimizers.probes.compare` gives Fu's SimE (cosine of the error
vectors on the n context inputs and the query; Fu use prefixes of a causal model, ours is the whole-context
version of the probe) and SimW (cosine of induced weights), against

- iterative Newton (Newton–Schulz on S = XᵀX, M₀ = αS with Fu's *code* scaling α = 1/‖SSᵀ‖_F; the paper's
  α = 2/‖SSᵀ‖₂ does not converge along the top eigenvector, see ``reference_optimizers.newton_schulz``), steps
  1..``newton_steps``;
- GD with the tuned constant step (η minimising the mean query loss after ``gd_tune_steps`` steps on a
  ``tune`` batch, :func:`reference_optimizers.tune`), at
  log-spaced steps 1, 2, 4, …, ``gd_max_steps`` plus a linear grid.

The best-matching step of a layer is argmax_t SimE (Fu's p_b^M); heat maps show SimE per layer × step.

Profiles: quick (1 seed, tiny models and budgets: a smoke test, the models barely train), standard (3 seeds, the
grown 4-layer LSA and a 2-layer GPT; measured wall and CPU time in the run's ``finished.json``), paper (6-layer LSA
and a 6-layer GPT width 128, 8 heads, 50k steps batch 64: GPU scale, ``--device cuda``; its settings are not
measured). Fu et al.'s GPT-2 has 12 layers, width 256 and 8 heads. The committed standard run took 1343 s of CPU at
one thread on the loaded machine (wall 2473 s at load 3–4); its GPTs' 8900 steps alone are ≈ 8900 × 0.072 s ≈ 640 s
of that on a quiet core (plus their evaluations, ≈ 3%). With 2 threads a GPT step takes 0.041 s of wall, so the
study on 2 quiet cores takes about 8900 × 0.041 × 1.03 + (1343 − 660) ≈ 1060 s ≈ 18 min (an estimate: the rest of
the study, not timed with 2 threads, is assumed no slower than with one). Of the time outside training, measured
under cProfile before the comparisons were merged: tuning GD++ ≈ 30%, the layer comparisons ≈ 45% (the GPT's
forward per SimE and SimW query point, then computed twice, now once for Newton and GD together), the GPT's test
loss and probes ≈ 10%.

Why the standard GPT has 2 layers, and when it stops. Measured on one CPU core (d = 10, n = 20, batch 128 unless
said, prefix loss, CPU time of ``Trainer.train_step``): a 4-layer width-64 GPT takes 0.14 s per step and was still
descending at step 6000 (held-out query MSE 0.31; zero predictor 9.89): its plateau lies beyond 6000 × 3 seeds ×
0.14 s ≈ 42 min of CPU. A 4-layer width-32 GPT (batch 64, 0.04–0.06 s per step) had not left the zero-predictor
plateau at step 1750 (10.06). The 2-layer width-64 GPT (4 heads, init std 0.1, lr 1e-3) leaves it at step 300–500
(seeds 0, 1, 2) and takes 0.072 s per step on a quiet core (0.041 s wall with 2 threads; 0.1 s of CPU on the loaded
machine; 3 seeds stacked cost the same per seed). With the lr halved every 500 steps (``gpt_train``) it is not at a
plateau by step 2000: the held-out prefix loss of seeds 0, 1, 2 was 3.27, 3.53, 3.60 there, still improving ≈ 1%
per 100 steps (halved every 400 instead, seed 2 was at 4.51 at step 1600, improving 2–3% per 100 steps: an earlier
decay leaves it higher, not flatter). Trained on with the same schedule, the plateau rule (patience 4 evaluations
of 100 steps, tol 1e-2) stopped seed 0 at step 3000 (held-out loss 3.029 at step 2600, 3.006–3.026 over the next
400 steps, at lr 3.1e-5), seed 1 at step 3100 (3.384 at 2700, 3.356 at 3100) and seed 2 at step 2800 (3.506 at
2400, 3.484–3.497 over the next 400 steps), each with less than 1% gained over its last 400 steps (the committed
standard run, whose GPTs end 4.5–4.9× above tuned 2-step GD++); seed 7, never used otherwise, stopped at step 2600
(3.382 at 2200, 3.349–3.383 over the next 400 steps). So the cap, ``gpt_train.steps`` = 4000, is a safety
net 900–1400 steps beyond the measured stops (the lr is 1e-3/256 there), and the report says per seed whether the
rule or the cap ended it, with its gap to tuned GD++ of its depth. Seeds train one after another so that each
stops at its own plateau (a seed batch stops when its last seed does). The plateau rule counts only once the
held-out loss is below ``gpt_escape`` (0.5) × the zero predictor's: with patience 4 of 100 steps it would otherwise
stop a seed on the zero-predictor plateau (flat to < 1% for the first 300–400 steps; the held-out loss first falls
below half its plateau value at step 800–1100 on seeds 0, 1, 2).

Why the GPT trains this way. Measured on seed 0 with d = 10, n = 20, width 64, 4 layers, 4 heads, AdamW,
global clip 1, cosine schedule; the number is the held-out query MSE on the 2048 ``val`` prompts, on which the
zero predictor scores 9.89. The first comparisons (batch 64, 3000 steps) used a 100-step warm-up that the
study's Trainer does not have; the batch-size comparison used the Trainer itself. A softmax GPT first sits
on the zero-predictor plateau, and at CPU budgets only some settings leave it:

- GPT-2's init std 0.02 (tuned for width 768) never left it: 9.89 after 2250 steps on the prefix loss, and
  a Garg-style curriculum (effective dimension 2 → 10, points 5 → 20 over 2000 steps) only reached 8.55 by
  step 3000. Init std 0.1 (≈ 1/√width) leaves it after ≈ 750–1000 steps; 0.2 leaves it as early but learns
  slower afterwards (4.45 vs 3.20 at step 2500).
- The loss over every prefix is what makes it learn: on the query loss alone (init 0.1, lr 1e-3) the GPT was
  still at 9.89 after 3000 steps, against 3.13 on the prefix loss (each prompt gives n+1 targets, and the short
  prefixes, which need less of the algorithm, are learnt first).
- lr 1e-3 is the best of those tried over 3000 steps: 2e-3 never left the plateau (9.89), 5e-4 reached 4.81
  (1e-3: 3.13). Two heads instead of four were still on the plateau at step 2500. The curriculum above gave
  3.34 at 3000 steps with init 0.1 (3.13 without), so the standard profile trains without one.
- Batch: at equal compute, batch 128 beats 64 threefold: 0.31 after 6000 steps of 128 against 0.94 after
  12000 steps of 64 and 1.18 after 3000 steps of 256 (each with its cosine schedule over its steps). The prefix
  loss is dominated by the short prefixes' irreducible error (prefix i < d leaves (d − i) of the d directions
  of w* unseen: a floor of Σ_{i<d} (d − i)/(n+1) = 2.6 on this loss, while the training loss ends near 3.2),
  so a larger batch mostly buys a less noisy gradient for the long prefixes that matter.
- Budget (4-layer width-64 GPT): a step of batch 128 takes ≈ 0.15 s on one core, so 8000 steps are ≈ 20 minutes
  per seed; that GPT is not in the standard profile (above).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

import numpy as np
import torch
from einops import einsum
from torch import nn

from experiments.common import RunContext, make_distribution, write_config
from experiments.configs.newton_vs_gd import MODELS, PROFILES, NewtonVsGDConfig  # noqa: F401  (re-exported)
from experiments.convergence import tail_stats
from experiments.registry import Study
from experiments.study import Rows, grow, held_out_prompts, train_all_seeds, train_one
from icl.prompts import PromptBatch, zero_predictor_loss
from icl.runio import write_json
from icl.seeding import Streams
from icl.training import ModelSpec, Plateau, TrainConfig, TrainingDiverged
from learned_optimizers.gpt import GPT
from learned_optimizers.probes import compare, fit_reference
from reference_optimizers import (
    gd_plus_plus,
    gradient_descent,
    iterative_newton,
    least_squares,
    mean_query_loss,
    moments,
    tune,
)

NAME = "newton_vs_gd"
_LOSS_WORDS = {"prefix": "squared error averaged over every prefix, Garg et al.", "query": "query MSE"}
#: Fu et al. (2024) Fig. 7b legend: best-matching iterative-Newton steps of GPT-2 layers 1..12 (d = 20)
FU_NEWTON = (1, 1, 3, 5, 8, 10, 14, 17, 20, 21, 21, 21)


class ProbedGPT(nn.Module):
    """The GPT with one fitted linear read-out per layer on the query position's hidden state (Fu et al.'s
    per-layer probes), exposing the interface :func:`compare` uses."""

    query_linear = False

    def __init__(self, gpt: GPT, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.gpt, self.d, self.layers = gpt, gpt.d, gpt.layers
        self.register_buffer("weight", weight.to(gpt.dtype))  # (L+1, width)
        self.register_buffer("bias", bias.to(gpt.dtype))  # (L+1,)

    @property
    def dtype(self) -> torch.dtype:
        return self.gpt.dtype

    def check_input(self, Z: torch.Tensor) -> torch.Tensor:
        return self.gpt.check_input(Z)

    def hidden(self, Z: torch.Tensor) -> list[torch.Tensor]:
        return [h[:, -1] for h in self.gpt.hidden_states(Z[:, :-1, :-1], Z[:, :-1, -1], Z[:, -1, :-1])]

    def layer_predictions(self, Z: torch.Tensor, check: bool = True) -> torch.Tensor:
        if check:
            Z = self.check_input(Z)
        hs = self.hidden(Z)
        return torch.stack([h @ self.weight[i] + self.bias[i] for i, h in enumerate(hs)], dim=1)

    def forward(self, Z: torch.Tensor, check: bool = True) -> torch.Tensor:
        return self.layer_predictions(Z, check)[:, -1]


@torch.no_grad()
def fit_probes(gpt: GPT, dist, streams: Streams, count: int, ridge: float = 1e-4) -> ProbedGPT:
    """Ridge read-outs y_q ≈ w_ℓᵀ h_ℓ + b_ℓ on ``count`` prompts of the ``probe`` stream."""
    old = dist.dtype
    dist.dtype = gpt.dtype
    batch = dist.sample(count, streams.generator("probe", next(gpt.parameters()).device))
    dist.dtype = old
    probe = ProbedGPT(gpt, torch.zeros(gpt.layers + 1, gpt.cfg.width), torch.zeros(gpt.layers + 1))
    hs = probe.hidden(batch.Z())
    y = batch.y_query.double().cpu()
    W, b = [], []
    for h in hs:
        H = torch.cat([h.double().cpu(), torch.ones(count, 1, dtype=torch.float64)], dim=1)
        A = H.T @ H + ridge * count * torch.eye(H.shape[1], dtype=torch.float64)
        coef = torch.linalg.solve(A, H.T @ y)
        W.append(coef[:-1])
        b.append(coef[-1])
    probe.weight.copy_(torch.stack(W).to(probe.weight))
    probe.bias.copy_(torch.stack(b).to(probe.bias))
    return probe


def gd_steps_grid(max_steps: int) -> list[int]:
    """Log-spaced 0, 1, 2, 4, … plus a linear grid (Fu: 2⁰…2¹² and 1, 50, 100, …)."""
    steps = {0, max_steps}
    k = 1
    while k <= max_steps:
        steps.add(k)
        steps.add(min(max_steps, int(round(k * 1.5))))
        k *= 2
    return sorted(steps)


def gd_iterates(X: torch.Tensor, y: torch.Tensor, eta: float, keep: list[int]) -> torch.Tensor:
    """GD from w₀ = 0 with step η on R(w) = (1/2n)‖Xw − y‖², the iterates at the steps in ``keep``."""
    H, g = moments(X, y)
    w = X.new_zeros(X.shape[0], X.shape[2])
    out, wanted = [], set(keep)
    for t in range(max(keep) + 1):
        if t in wanted:
            out.append(w)
        w = w - eta * (einsum(H, w, "b i j, b j -> b i") - g)
    return torch.stack(out, dim=1)


#: the families :func:`fit_reference` tries on the full LSA: those it can express with a scalar per step, and the
#: parameter-free ones. Per-step preconditioned GD (a d×d matrix per layer, 400 values at d = 10, L = 4) is left out:
#: its finite-difference Levenberg–Marquardt fit took minutes of CPU per model, beyond this study's budget.
FIT_FAMILIES = ("gradient_descent", "gd_plus_plus", "conjugate_gradient", "newton")
#: the first comparison prompts the family fit runs on (GD++'s fit: ≈ 15 s of CPU on 64 prompts at L = 4)
FIT_PROMPTS = 32

#: the constant GD step sizes scored before the refinement (normalised gradient: η < 2/λ_max is stable)
ETA_GRID = tuple(float(v) for v in np.geomspace(0.05, 1.5, 13))


def tune_prompt_batch(dist, streams: Streams, count: int) -> PromptBatch:
    """``count`` float64 prompts of the seed's ``tune`` stream (never trained on, never tested on)."""
    old = dist.dtype
    dist.dtype = torch.float64
    try:
        return dist.sample(count, streams.generator("tune"))
    finally:
        dist.dtype = old


def tune_gd_step(train: PromptBatch, steps: int) -> float:
    """The constant η minimising the mean query loss after ``steps`` GD steps on ``train``
    (:func:`reference_optimizers.tune`: grid, then Nelder–Mead on log η)."""
    return float(tune(gradient_descent, train, steps, {"eta": ETA_GRID}).hyperparameters["eta"])


def gdpp_starts(steps: int) -> list[dict[str, list[float]]]:
    """Geometric GD++ schedules η_s = η₀ rˢ, γ_s = γ₀ qˢ, the starting points of the tuner.

    Each transform x ← (I − γ_s H_s) x maps an eigenvalue μ of the preconditioned curvature to μ(1 − γ_s μ)²,
    which shrinks the top of the spectrum (by up to 4/9 at γ_s = 1/(3μ_max)); the next steps then need a larger
    γ and a larger η. So good schedules grow geometrically, and a search from a constant schedule stalls far
    from them (constant starts: 0.025–0.04 query MSE at 4 steps on d = 10, n = 20; from these: ≈ 1.5e-3).
    """
    out = []
    for eta0, r, gamma0, q in itertools.product((0.5, 0.75, 1.0), (1.5, 2.5, 3.5), (0.15, 0.22), (1.5, 2.5, 4.0)):
        out.append({"eta": [eta0 * r**s for s in range(steps)], "gamma": [gamma0 * q**s for s in range(steps)]})
    return out


def tune_gdpp(train: PromptBatch, steps: int) -> dict[str, list[float]]:
    """GD++'s per-step (η_s, γ_s) minimising the mean query loss after ``steps`` steps on ``train``
    (:func:`reference_optimizers.tune` from the constant grid and the geometric :func:`gdpp_starts`)."""
    res = tune(gd_plus_plus, train, steps, {"eta": ETA_GRID[::3], "gamma": (0.05, 0.15, 0.3)},
               per_step=("eta", "gamma"), starts=gdpp_starts(steps), maxfev=50 * 2 * steps)  # fmt: skip
    hp = res.hyperparameters
    return {"eta": list(map(float, hp["eta"])), "gamma": list(map(float, hp["gamma"]))}


def per_prompt_loss(pred: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
    """(ŷ − y_q)² per prompt, float64 on the CPU."""
    return (pred.detach().double().cpu() - batch.y_query.double().cpu()).square()


@torch.no_grad()
def model_per_prompt(model: nn.Module, batch: PromptBatch, chunk: int = 5000) -> torch.Tensor:
    """The model's per-prompt query loss on ``batch`` (in the model's dtype, chunked)."""
    dtype = next(model.parameters()).dtype
    preds = [model(batch[i : i + chunk].to(dtype=dtype).Z(), check=False) for i in range(0, len(batch), chunk)]
    return per_prompt_loss(torch.cat(preds), batch)


def _train(ctx: RunContext, cfg, tag: str, models, dists, tc: TrainConfig, seed_streams: list[Streams]) -> list:
    """``train_all_seeds``; when a seed diverges, seed by seed, so that the others keep their models (None where
    it diverged)."""
    try:
        return train_all_seeds(ctx, cfg, tag, models, dists, tc, seed_streams).runs
    except TrainingDiverged as err:
        ctx.print(f"{tag}: {err}; training the seeds one by one")
    if isinstance(models, ModelSpec):
        models = [models.build(st.generator("init", "cpu")) for st in seed_streams]
    runs = []
    for st, dist, model in zip(seed_streams, dists, models):
        if model is None:
            runs.append(None)
            continue
        try:
            runs.append(train_one(ctx, cfg, tag, st.seed, model, dist, tc, st))
        except TrainingDiverged as e:
            ctx.print(f"seed {st.seed} {tag}: {e}")
            runs.append(None)
    return runs


def grown_lsa(cfg: NewtonVsGDConfig, layers: int, previous: nn.Module | None, streams: Streams) -> nn.Module:
    """A ``layers``-layer full LSA: freshly initialised, with the trained layers of ``previous`` (depth
    ``layers`` − 1) copied in and its last layer repeated as the new last layer."""
    model = ModelSpec("lsa", cfg.prompt.d, replace(cfg.lsa, layers=layers)).build(streams.generator("init", "cpu"))
    return grow(model, previous) if previous is not None else model


def _end(run) -> dict:
    """How a training run ended: steps taken and whether the plateau rule (not the cap) stopped it."""
    events = [e for e in run.history.events if e.get("event") == "finished"]
    reason = str(events[-1].get("reason", "")) if events else ""
    return {"steps_trained": float(run.step), "plateau_stop": float(reason.startswith("plateau")),
            "train_seconds": float(run.wall_time)}


def train_gpt(ctx: RunContext, cfg: NewtonVsGDConfig, seed_streams: list[Streams], dists) -> list:
    """The GPT of every seed (None where it diverged), one seed after another, each until the plateau rule
    counted from the zero-predictor plateau's end (:class:`~icl.training.Plateau` with ``escape``:
    ``gpt_train.plateau_patience``, ``plateau_tol``, ``gpt_escape``) stops it or the cap of ``gpt_train.steps``.
    One by one, not as a seed batch: each seed stops at its own plateau (a batch stops when the last seed does),
    and a stacked GPT step costs the same per seed as a single one (module docstring)."""
    tc = replace(cfg.gpt_train, plateau_patience=0)  # the rule is the callback's
    spec = ModelSpec("gpt", cfg.prompt.d, cfg.gpt)
    runs = []
    for st, dist in zip(seed_streams, dists):
        rule = Plateau(cfg.gpt_train.plateau_patience, cfg.gpt_train.plateau_tol, escape=cfg.gpt_escape)
        try:
            runs.append(train_one(ctx, cfg, "gpt", st.seed, spec.build(st.generator("init", "cpu")), dist, tc, st,
                                  callbacks=[rule] if cfg.gpt_train.plateau_patience else []))  # fmt: skip
        except TrainingDiverged as e:
            ctx.print(f"seed {st.seed} gpt: {e}")
            runs.append(None)
    return runs


def train_models(cfg: NewtonVsGDConfig, ctx: RunContext, seed_streams: list[Streams], dists) -> list[dict]:
    """Per seed, each of ``cfg.models`` trained, as (model or None where it diverged, list of per-stage end
    records): all seeds together; when a seed diverges, seed by seed. The LSA grows depth by depth
    (``cfg.grow``): checkpoint ``lsa_full_L{ℓ}`` per depth."""
    out: list[dict] = [{} for _ in seed_streams]
    stages = cfg.lsa.layers if cfg.grow else 1
    ctx.expect_models(("lsa_full" in cfg.models) * stages + ("gpt" in cfg.models) * len(seed_streams))  # GPT: per seed
    for name in cfg.models:
        if name == "lsa_full" and cfg.grow:
            models: list = [None] * len(seed_streams)
            ends: list[list] = [[] for _ in seed_streams]
            for depth in range(1, cfg.lsa.layers + 1):
                alive = [i for i, m in enumerate(models) if depth == 1 or m is not None]
                built = [grown_lsa(cfg, depth, models[i], seed_streams[i]) for i in alive]
                runs = _train(ctx, cfg, f"lsa_full_L{depth}", built, [dists[i] for i in alive], cfg.lsa_train,
                              [seed_streams[i] for i in alive])  # fmt: skip
                models = [None] * len(seed_streams)
                for i, run in zip(alive, runs):
                    models[i] = run.model if run is not None else None
                    if run is not None:
                        ends[i].append({"layers": depth, **_end(run)})
            for o, m, e in zip(out, models, ends):
                o[name] = (m, e)
            continue
        if name == "lsa_full":
            runs = _train(ctx, cfg, name, ModelSpec("lsa", cfg.prompt.d, cfg.lsa), dists, cfg.lsa_train, seed_streams)
            depth = cfg.lsa.layers
        else:
            runs, depth = train_gpt(ctx, cfg, seed_streams, dists), cfg.gpt.layers
        for o, run in zip(out, runs):
            o[name] = (run.model, [{"layers": depth, **_end(run)}]) if run is not None else (None, [])
    return out


def run(cfg: NewtonVsGDConfig, ctx: RunContext) -> dict:
    t0 = time.time()
    write_config(ctx, cfg, Streams(cfg.seeds[0], ctx.device))
    rows = Rows(ctx.name)
    keep = gd_steps_grid(cfg.gd_max_steps)
    seed_streams = [Streams(seed, ctx.device) for seed in cfg.seeds]
    dists = [make_distribution(cfg.prompt, st) for st in seed_streams]
    trained = train_models(cfg, ctx, seed_streams, dists)
    depths = sorted({cfg.lsa.layers if m == "lsa_full" else cfg.gpt.layers for m in cfg.models})
    for seed, streams, dist, models in zip(cfg.seeds, seed_streams, dists, trained):
        test = held_out_prompts(dist, streams, cfg.test_prompts, torch.float64)
        prompts = test[: cfg.compare_prompts]
        train = tune_prompt_batch(dist, streams, cfg.tune_prompts)
        eta = tune_gd_step(train, cfg.gd_tune_steps)
        rows.add("gd", 0, seed, "tuned_eta", eta)
        for depth in depths:  # the class optimum of an L-layer full LSA: tuned L-step GD++, on the test prompts
            hp = tune_gdpp(train, depth)
            it = gd_plus_plus(test.X, test.y, depth, hp["eta"], hp["gamma"])
            losses = per_prompt_loss(einsum(it[:, -1], test.x_query, "b i, b i -> b"), test)
            for k, v in tail_stats(losses, cfg.test_parts).as_dict().items():
                rows.add("gdpp_tuned", depth, seed, f"test_{k}", v)
            for s, (e, g) in enumerate(zip(hp["eta"], hp["gamma"])):
                rows.add("gdpp_tuned", depth, seed, "eta", e, k=s + 1)
                rows.add("gdpp_tuned", depth, seed, "gamma", g, k=s + 1)
            ctx.print(f"seed {seed}: tuned {depth}-step GD++ test MSE {float(losses.mean()):.4g}")
        refs = {
            "newton": (iterative_newton(prompts.X, prompts.y, cfg.newton_steps, scaling="code"),
                       list(range(cfg.newton_steps + 1))),
            "gd": (gd_iterates(prompts.X, prompts.y, eta, keep), keep),
        }  # fmt: skip
        for ref, (iters, steps) in refs.items():
            losses = mean_query_loss(iters, prompts.x_query, prompts.y_query)
            for t, v in zip(steps, losses.tolist()):
                rows.add(ref, t, seed, "compare_loss", v)
        ols = least_squares(prompts.X, prompts.y)
        rows.add(
            "least_squares", 0, seed, "compare_loss", float(mean_query_loss(ols, prompts.x_query, prompts.y_query))
        )
        rows.add("zero_predictor", 0, seed, "test_loss", zero_predictor_loss(cfg.prompt))
        for name, (model, ends) in models.items():
            for e in ends:
                for k, v in e.items():
                    if k != "layers":
                        rows.add(name, e["layers"], seed, k, v)
            if model is None:
                rows.add(name, 0, seed, "diverged", 1.0)
                continue
            rows.add(name, 0, seed, "diverged", 0.0)
            for k, v in tail_stats(model_per_prompt(model, test), cfg.test_parts).as_dict().items():
                rows.add(name, 0, seed, f"test_{k}", v)
            probed = model if name == "lsa_full" else fit_probes(model, dist, streams, cfg.probe_prompts)
            if name == "lsa_full":  # the classical family the LSA's implicit weights follow, if any
                fit = fit_reference(model, FIT_FAMILIES, prompts[:FIT_PROMPTS])
                rows.add(name, 0, seed, "fit_matched", float(fit.matched), reference=fit.family)
                for fam, err in fit.errors.items():
                    rows.add(name, 0, seed, "fit_relative_error", err, reference=fam)
            # one comparison against Newton's and GD's iterates side by side: the model's predictions at the SimE
            # and SimW query points (a GPT forward per point, most of the study's non-training time) are computed once
            c = compare(probed, prompts, torch.cat([iters for iters, _ in refs.values()], dim=1),
                        generator=streams.generator("simw", "cpu"))  # fmt: skip
            start = 0
            for ref, (_, steps) in refs.items():
                cols = slice(start, start + len(steps))
                start += len(steps)
                sim_e, sim_w = c.sim_e[:, cols], c.sim_w[:, cols]
                for layer in range(sim_e.shape[0]):
                    key = dict(reference=ref, layer=layer)
                    rows.add(name, 0, seed, "layer_loss", c.loss_model[layer], **key)
                    for j, t in enumerate(steps):
                        rows.add(name, 0, seed, "sim_e", sim_e[layer, j], k=t, **key)
                        rows.add(name, 0, seed, "sim_w", sim_w[layer, j], k=t, **key)
                    rows.add(name, 0, seed, "best_step_sime", steps[int(sim_e[layer].argmax())], **key)
                    rows.add(name, 0, seed, "best_step_simw", steps[int(sim_w[layer].argmax())], **key)
                    rows.add(name, 0, seed, "best_sime", float(sim_e[layer].max()), **key)
            ctx.print(f"seed {seed} {name}: compared with Newton and GD")
        rows.write(ctx)
    from experiments.reports.newton_vs_gd import report  # the report module imports matplotlib

    summary = report(ctx.out_dir)
    summary["wall_time_s"] = time.time() - t0
    write_json(ctx.out_dir / "summary.json", summary)
    return summary


STUDY = Study(NewtonVsGDConfig, run, PROFILES)
