"""The report of :mod:`experiments.pgd_depth`."""

from __future__ import annotations

import math
from pathlib import Path

from experiments.pgd_depth import (
    NAME,
    PUBLISHED_STEPS_L3,
    PGDDepthConfig,
)
from experiments.reporting import (
    aggregate,
    dominated_by_few,
    finish_report,
    fmt,
    line_plot,
    markdown_table,
    open_report,
)

# -- report ---------------------------------------------------------------------------------------------------


DIST_LABELS = {"dist_sigma": "Dist(Σ½AΣ½, I)", "dist_raw": "Dist(A, I)", "dist_B": "Dist(B, I)"}


def _dyn_rows(rows: list[dict], mode: str, L: int) -> list[dict]:
    """The read-outs during training of model (mode, L), one line per quantity and layer."""
    return [{**r, "method": f"{DIST_LABELS[r['metric']]} layer {r['layer']}", "step": r["train_step"], "metric": "dist"}
            for r in rows if r["method"] == mode and r["depth"] == L and r["train_step"] is not None
            and r["metric"] in DIST_LABELS]  # fmt: skip


def report(run_dir: str | Path) -> dict:
    """Re-render the figures, report.md and summary.json of a run from results.csv and config.json."""
    run = open_report(run_dir, PGDDepthConfig)
    run_dir, cfg, rows, seeds = run.run_dir, run.config, run.rows, run.seeds
    agg = aggregate([r for r in rows if r["train_step"] is None], keys=("method", "depth", "metric", "layer", "k"))
    depths = list(cfg.depths)
    figs = []
    loss_rows = [r for r in rows if r["metric"] == "test_loss" and r["method"] not in ("zero_predictor",)
                 and not r["method"].startswith(("thm1", "ahn"))]  # fmt: skip
    zero = agg.get(("zero_predictor", 0, "test_loss", None, None), (float("nan"),))[0]
    figs += line_plot(
        loss_rows, run_dir / "figures" / "log_loss_vs_depth", metric="test_loss", ylabel="log(test loss)",
        log_values=True, dashed={"zero predictor": zero}, dashed_methods=("krylov_plain", "krylov_precond"),
        points={"Ahn et al. Thm 1 optimum, L = 1": (1, agg.get(("ahn_thm1", 1, "test_loss", None, None),
                                                               (float("nan"),))[0])},
        title=f"Ahn et al.: d={cfg.prompt.d}, n={cfg.prompt.n}, Σ eigenvalues {cfg.prompt.eigenvalues}",
        caption=f"log of the held-out query MSE averaged over {len(seeds)} seed(s); band: 95% t-interval over seeds; "
        "dashed: shared-coefficient Krylov bounds (P = I, P = Σ⁻¹) and the zero predictor; star: Thm 1's optimum",
    )  # fmt: skip
    for mode in cfg.modes:
        L = 3 if 3 in depths else max(depths)
        dyn = _dyn_rows(rows, mode, L)
        if dyn:
            figs += line_plot(
                dyn, run_dir / "figures" / f"dist_{mode}_L{L}", x="step", metric="dist", ylabel="Dist(M, I)",
                xlabel="training step", title=f"{mode} LSA, L = {L}: distance to a multiple of I",
                dashed_methods=tuple(m for m in {r["method"] for r in dyn} if not m.startswith("Dist(Σ")),
                caption=f"mean over {len(seeds)} seed(s); band: 95% t-interval over seeds; solid Dist(Σ½A_ℓΣ½, I) "
                "(→ 0 under Thm 3), dashed Dist(A_ℓ, I) and Dist(B_ℓ, I)",
            )  # fmt: skip

    def v(method: str, L: int, metric: str = "test_loss", layer: int | None = None, k: int | None = None) -> float:
        return agg.get((method, L, metric, layer, k), (float("nan"),))[0]

    def logv(method: str, L: int) -> float:
        x = v(method, L)
        return math.log(x) if x > 0 else float("nan")

    tails = {(m, L): dominated_by_few(rows, m, L) for m in ("sparse", "pgd_tuned", "krylov_precond", "gd_tuned",
             "krylov_plain", "gdpp", "gdpp_tuned") for L in depths}  # fmt: skip
    tails = {k: t for k, t in tails.items() if t}

    def logc(method: str, L: int) -> str:
        """log-mean cell, † when a few test prompts carry the mean in some seed."""
        return fmt(logv(method, L)) + (" †" if (method, L) in tails else "")

    header = ("L", "sparse LSA", "PGD Σ⁻¹ tuned", "Krylov Σ⁻¹", "GD tuned", "Krylov plain", "GD++ LSA",
              "GD++ Σ⁻¹ tuned", "Ahn Thm 1 (L=1)")  # fmt: skip
    table = []
    for L in depths:
        table.append((L, logc("sparse", L), logc("pgd_tuned", L), logc("krylov_precond", L), logc("gd_tuned", L),
                      logc("krylov_plain", L), logc("gdpp", L), logc("gdpp_tuned", L),
                      math.log(v("ahn_thm1", 1)) if L == 1 and v("ahn_thm1", 1) > 0 else "–"))  # fmt: skip
    dist_table = []
    for mode in cfg.modes:
        for L in depths:
            dist_table.append((mode, L, *(
                f"{fmt(v(mode, L, 'dist_sigma', layer=k))} / {fmt(v(mode, L, 'dist_raw', layer=k))}" if k <= L else ""
                for k in range(1, max(depths) + 1))))  # fmt: skip
    step_table = []
    for method in ("sparse", "pgd_tuned") + (("gdpp",) if "gdpp" in cfg.modes else ()):
        for L in depths:
            steps = [v(method, L, "step_sorted", k=k) for k in range(1, L + 1)]
            pub = ", ".join(str(s) for s in PUBLISHED_STEPS_L3) if (L == 3 and method == "sparse") else "–"
            step_table.append((method, L, ", ".join(fmt(s, 3) for s in steps), pub))
    thm1 = (v("thm1_learned", 1), v("thm1_theory", 1), v("thm1_zero_predictor", 1), v("thm1_learned", 1, "A_rel_error"),
            v("thm1_learned", 1, "A_rel_error_vs_sigma_inv"))  # fmt: skip
    thm1_sparse = (v("sparse", 1), v("ahn_thm1", 1), v("sparse", 1, "A_rel_error_thm1"))
    gap = {L: logv("sparse", L) - logv("pgd_tuned", L) for L in depths}
    tail_text = ""
    if tails:
        seed_means = lambda m, L: ", ".join(  # noqa: E731
            f"seed {r['seed']}: {fmt(r['value'], 3)}" for r in sorted(rows, key=lambda r: r["seed"])
            if r["method"] == m and r["depth"] == L and r["metric"] == "test_loss")  # fmt: skip
        items = "\n".join(
            f"- {m}, L = {L}: " + "; ".join(f"seed {s} mean {fmt(mu, 3)} ± {fmt(se, 3)} (s.e.)" for s, mu, se in t)
            + f" (per-seed means: {seed_means(m, L)})" for (m, L), t in tails.items()
        )  # fmt: skip
        tail_text = f"""
† The mean over the held-out prompts is carried by a few prompts (standard error > 30% of the mean) in these
seeds, so the log-mean in the table describes rare prompts, not the typical one:

{items}

A single prompt of error V among M gives mean ≈ s.e. ≈ V/M. For a learned model this is what an iteration
whose steps are fit to typical prompts does on a rare prompt where a step exceeds 2/λ_max of that prompt's own
XᵀX/n: the error grows layer after layer (GD++ also transforms x, so its error is a high-degree polynomial in
the data; not checked prompt by prompt here). For the tuned baselines at losses near 1e-5 it is the slowest
prompts' residual. The per-seed means show the typical outcome.
"""

    L3 = 3 in depths
    kry_diff = max(
        (abs(v(m, L, "test_loss_reference_optimizers") / v(m, L) - 1) for m in ("krylov_plain", "krylov_precond")
         for L in depths if (m, L, "test_loss_reference_optimizers", None, None) in agg),
        default=float("nan"),
    )  # fmt: skip
    paper_table = [
        ("3-layer sparse steps c_ℓ (Σ⁻¹ units, sorted)", ", ".join(str(x) for x in PUBLISHED_STEPS_L3),
         ", ".join(fmt(v("sparse", 3, "step_sorted", k=k), 3) for k in (1, 2, 3)) if L3 else "–",
         ", ".join(fmt(v("pgd_tuned", 3, "step_sorted", k=k), 3) for k in (1, 2, 3)) if L3 else "–"),
        ("3-layer eq. 11 (GD++) model: log test loss", "−7.12 (notebook, 100k steps) [N]",
         fmt(logv("gdpp", 3)) if L3 else "–", f"{fmt(logv('gdpp_tuned', 3))} (tuned GD++, Σ⁻¹)" if L3 else "–"),
        ("1-layer sparse, w* ~ N(0, Σ⁻¹): loss", "–", fmt(v("sparse", 1)), f"{fmt(v('ahn_thm1', 1))} (Thm 1)"),
        ("1-layer sparse, w* ~ N(0, I): loss", "–", fmt(v("thm1_learned", 1)), f"{fmt(v('thm1_theory', 1))} (Thm 1)"),
    ]  # fmt: skip
    if L3:
        gap_tuned = max(abs(v("pgd_tuned", 3, "step_sorted", k=k) - s) for k, s in enumerate(PUBLISHED_STEPS_L3, 1))
        gap_learned = max(abs(v("sparse", 3, "step_sorted", k=k) - s) for k, s in enumerate(PUBLISHED_STEPS_L3, 1))
        steps_text = (
            (f"The tuned Σ⁻¹-PGD steps reproduce Ahn et al.'s learned 3-layer steps (largest difference "
             f"{fmt(gap_tuned, 2)}): the published numbers are the optimal per-layer steps of preconditioned GD for "
             "this law. " if gap_tuned <= 0.05 else f"The tuned Σ⁻¹-PGD steps differ from Ahn et al.'s learned "
             f"3-layer steps by up to {fmt(gap_tuned, 2)}. ")
            + (f"The learned 3-layer model's steps are within {fmt(gap_learned, 2)} of them."
               if gap_learned <= 0.05 else f"The learned 3-layer model's steps are up to {fmt(gap_learned, 2)} "
               f"away from them after {cfg.train.steps} training steps (next sections).")
        )  # fmt: skip
    else:
        steps_text = "No 3-layer model in this run: the published 3-layer steps are not compared."
    d1 = v("sparse", 1, "dist_sigma", layer=1)
    dist_text = (f" (this run: {fmt(d1, 2)} after {cfg.train.steps} steps even for L = 1, where the problem is "
                 "convex)") if math.isfinite(d1) else ""  # fmt: skip
    if cfg.theorem1 and math.isfinite(thm1[0]):
        thm1_text = f"""| quantity | ours | theory |
|---|---|---|
| test loss (MSE) | {fmt(thm1[0])} | {fmt(thm1[1])} (tr Σ − tr(ΣΓ⁻¹Σ)) |
| zero predictor | – | {fmt(thm1[2])} (tr Σ) |
| ‖A − Γ⁻¹‖_F / ‖Γ⁻¹‖_F | {fmt(thm1[3])} | 0 |
| ‖A − cΣ⁻¹‖_F / ‖cΣ⁻¹‖_F (same trace) | {fmt(thm1[4])} | > 0: Γ⁻¹ is not a multiple of Σ⁻¹ |"""
    else:
        thm1_text = "Not run in this configuration (`theorem1 = false`)."
    text = f"""# pgd_depth: L-layer linear transformers learn preconditioned GD (Ahn et al. 2023)

Setting: d = {cfg.prompt.d}, n = {cfg.prompt.n}, Σ = U diag{cfg.prompt.eigenvalues} Uᵀ (Haar U per seed),
w* ~ N(0, Σ⁻¹), noiseless. AdamW lr {cfg.train.lr}, β = {cfg.train.betas}, per-matrix clip {cfg.train.clip_value},
batch {cfg.train.batch_size} resampled every {cfg.train.resample_every} steps, lr halved every {cfg.train.halve_every}
steps, {cfg.train.steps} steps; profile `{cfg.profile}`, seeds {seeds}; {cfg.test_prompts} held-out test prompts per
seed (never trained on); the baselines' step sizes and Krylov coefficients are fit on {cfg.tune_prompts} prompts of the
training law (the `tune` stream). Loss = query MSE (Ahn et al.'s convention; no ½). Means over seeds.

## Ours vs the paper vs theory

{markdown_table(("quantity", "paper", "ours (learned)", "theory / tuned baseline"), paper_table)}

{steps_text} [N] = a number printed in Ahn et al.'s notebook (`rotation demonstration-Adam`), not in the paper.

## log(test loss) per depth

{markdown_table(header, table)}

Zero predictor: log {fmt(math.log(zero) if zero > 0 else float("nan"))} (theory log d = {math.log(cfg.prompt.d):.4f}).
The L = 1 optimum of Theorem 1 (w* ~ N(0, Σ⁻¹)) is d(d+1)/(n+d+1) whatever Σ; the learned 1-layer sparse loss is
{fmt(thm1_sparse[0])} vs {fmt(thm1_sparse[1])}, ‖A − A*‖_F/‖A*‖_F = {fmt(thm1_sparse[2])}.
Learned sparse minus tuned PGD (log-loss): {", ".join(f"L={L}: {fmt(g, 3)}" for L, g in gap.items())}.
{tail_text}
**What to expect.** Ahn et al. (Thm 3, Fig. 7) predict that the sparse LSA implements Σ⁻¹-preconditioned GD with
per-layer steps, so its loss should approach the tuned PGD column (and cannot beat the Σ⁻¹ Krylov bound when its
A_ℓ ∝ Σ⁻¹); GD++ (eq. 11) can go below both (Ahn et al.'s Fig. 7 LT reaches ≈ −7 at L = 3 after 100k steps on a GPU).
Plain GD and its Krylov bound are worse because κ(Σ) = 16. A learned loss above PGD at a given L measures the
training budget: this run (profile `{cfg.profile}`) trains {cfg.train.steps} steps at batch {cfg.train.batch_size}
(Ahn et al.: 20,000 steps at batch 20,000; the `paper` profile). The outer problem is badly conditioned: the
target A_ℓ ≈ c_ℓΣ⁻¹ has eigenvalues up to 16·c_ℓ along the Haar-rotated small-variance direction, where the loss
gradient is 16× weaker, and Adam's per-coordinate scaling does not undo a rotation, so Dist(Σ^½A_ℓΣ^½, I)
decreases slowly at batch {cfg.train.batch_size}{dist_text}.

## Dist(Σ^½A_ℓΣ^½, I) / Dist(A_ℓ, I) at the end of training (Ahn et al. Fig. 1: the first → 0, the second stays)

{markdown_table(("mode", "L", *(f"layer {k}" for k in range(1, max(depths) + 1))), dist_table)}

Curves over training: `figures/dist_<mode>_L<L>.png`.

## Step sizes in Σ⁻¹ units, sorted (Lemma 4: any order of the per-layer steps gives the same loss)

{markdown_table(("model", "L", "c_ℓ sorted (ours)", "Ahn et al. Fig. 2"), step_table)}

The learned c_ℓ = tr(Σ^½A_ℓΣ^½)/d; the PGD rows are the tuned per-step sizes of Σ⁻¹-preconditioned GD (the same
parametrization), i.e. the optimum the sparse model should reach on this training law. Ahn et al.'s numbers come
from 30,000 steps at batch 20,000; a shorter run leaves the steps short of the optimum.

## Theorem 1 check: w* ~ N(0, I), non-isotropic Σ, one sparse layer

{thm1_text}

**Differences from the paper.** (1) Budget: CPU-scaled training (above). (2) Baselines see all n = {cfg.prompt.n}
context points (Ahn et al.'s code uses n − 1 = 19) and use the (1/n)-normalised gradient; their step sizes are tuned
by L-BFGS on training-law prompts rather than a grid. (3) U is Haar-random (their SVD of a U(−1, 1) matrix is not
exactly Haar; irrelevant for rotation-equivariant methods). (4) The Krylov bounds and GD++-in-Σ⁻¹-geometry columns are
ours, not the paper's. (5) The step tuning and Krylov bound are local (module docstring); the Krylov losses are
cross-checked against `reference_optimizers.krylov_bound` (largest relative difference {fmt(kry_diff, 2)}).
"""
    summary = {
        "experiment": NAME,
        "profile": cfg.profile,
        "seeds": seeds,
        "log_test_loss": {m: {str(L): logv(m, L) for L in depths} for m in
                          ("sparse", "gdpp", "pgd_tuned", "gd_tuned", "krylov_precond", "krylov_plain", "gdpp_tuned")},
        "zero_predictor_loss": zero,
        "dominated_by_few_prompts": {f"{m}:L{L}": [s for s, _, _ in t] for (m, L), t in tails.items()},
        "thm1": {"learned": thm1[0], "theory": thm1[1], "A_rel_error": thm1[3]},
        "sparse_L1_vs_thm1": {"learned": thm1_sparse[0], "theory": thm1_sparse[1], "A_rel_error": thm1_sparse[2]},
        "figures": [str(Path(p).relative_to(run_dir)) for p in figs],
    }  # fmt: skip
    return finish_report(run, text, summary)
