"""The report of :mod:`experiments.outer_optimizers`."""

from __future__ import annotations

import math

from experiments.outer_optimizers import (
    NAME,
    ROOT_BASED,
    ROOT_FREE,
    OuterOptimizersConfig,
)
from experiments.reporting import finish_report, fmt, markdown_table, mean_value, open_report, paired_verdict
from experiments.reports.sweep import (
    best_final,
    curve_plot,
    grid_table,
    select_lrs,
    sweep_table,
)


def report(run_dir) -> dict:
    run = open_report(run_dir, OuterOptimizersConfig)
    run_dir, cfg, rows, fig_dir = run.run_dir, run.config, run.rows, run.figures
    best = best_final(rows)
    target = cfg.target_factor * best
    table = sweep_table(rows, target)
    pgd = mean_value(rows, "tuned_pgd_sigma_inv", "test_loss")
    zero = mean_value(rows, "zero_predictor", "test_loss")
    selected = {e["name"]: e["method"] for e in table}
    hl = {"tuned 3-step Σ⁻¹-PGD (Ahn Thm 3 family)": pgd, "zero predictor": zero, f"target {fmt(target)}": target}
    cap = (f"held-out query MSE of the selected lr per optimizer; mean over {len(cfg.seeds)} seed(s), band: 95% "
           "t-interval over seeds; dashed: references")  # fmt: skip
    title = f"{cfg.model.layers}-layer {cfg.model.mode} LSA, d={cfg.prompt.d}, n={cfg.prompt.n}, non-isotropic Σ"
    figs = curve_plot(rows, selected, fig_dir / "loss_vs_steps", hlines=hl, title=title, caption=cap)
    figs += curve_plot(rows, selected, fig_dir / "loss_vs_time", x="wall", hlines=hl, title=title, caption=cap)

    def ci(t):
        m, lo, hi = t
        return f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]" if math.isfinite(m) else "–"

    body = markdown_table(
        ["optimizer", "selected lr", "test MSE (95% CI)", "log test MSE", "final val MSE", "steps to target",
         "seconds to target", "reached", "ms/step"],
        [[e["name"], f"{e['lr']:g}", ci(e["test"]), fmt(math.log(e["test"][0])) if e["test"][0] > 0 else "–",
          ci(e["final_val"]), ci(e["steps_to_target"]), ci(e["seconds_to_target"]), e["reached"],
          fmt(e["ms_per_step"][0])] for e in table],
    )  # fmt: skip
    by = {e["name"]: e for e in table}
    rf = [by[n] for n in ROOT_FREE if n in by]
    rb = [by[n] for n in ROOT_BASED if n in by]
    verdict = "not enough optimizers to compare"
    if rf and rb:
        best_rf = min(rf, key=lambda e: e["test"][0])
        best_rb = min(rb, key=lambda e: e["test"][0])
        ratio = best_rf["test"][0] / best_rb["test"][0]
        logs = [{int(r["seed"]): math.log(r["value"]) for r in rows if r["metric"] == "test_loss"
                 and (r["method"], r["lr"]) == e["method"] and r["value"] > 0} for e in (best_rf, best_rb)]  # fmt: skip
        vd = paired_verdict(logs[0], logs[1], "less", -math.log(cfg.target_factor))
        verdict = (
            f"best root-free: {best_rf['name']} (test MSE {fmt(best_rf['test'][0])}); best root-based: "
            f"{best_rb['name']} (test MSE {fmt(best_rb['test'][0])}); ratio {ratio:.3g}. Lin et al.'s claim that "
            f"root-free methods match root-based ones (test MSE within {cfg.target_factor:g}× of it, paired over seeds "
            f"on the log test MSE): {vd.text('in log')} (steps to target: {ci(best_rf['steps_to_target'])} vs "
            f"{ci(best_rb['steps_to_target'])})."
        )
    grid = markdown_table(["optimizer", "lr", "mean final val MSE", "diverged seeds"], grid_table(rows))
    best_txt = f"{fmt(table[0]['test'][0])} ({table[0]['name']})" if table else "–"
    paper_rows = (
        f'| best test MSE, {cfg.model.layers}-layer LSA | {best_txt} | Ahn et al.: "converges to an almost 0 value" '
        "(sparse, 3 layers, Fig. 1, no number); Dutta & Sra Fig. 2a LT(Pre): log-loss ≈ −1.1 at 4 layers [F] | "
        f"tuned Σ⁻¹-PGD {fmt(pgd)} |\n| root-free vs root-based | see verdict | Lin et al. 2024: root-free matches "
        "root-based on transformers (large models) | – |"
    )
    text = f"""# outer_optimizers: outer optimizers for a {cfg.model.layers}-layer LSA (issue #7)

Setting: d = {cfg.prompt.d}, n = {cfg.prompt.n}, Σ eigenvalues {cfg.prompt.eigenvalues} (the code's Σ = U D² Uᵀ of
Ahn/Dutta, κ = 16), w* ~ N(0, Σ⁻¹), {cfg.model.layers}-layer `{cfg.model.mode}` LSA (init std {cfg.model.init_std}),
batch {cfg.train.batch_size} (resampled every {cfg.train.resample_every} step(s)), {cfg.train.steps} steps, constant lr,
no clipping, seeds {list(cfg.seeds)} (each seed: its own U, initialisation and data). Loss: query MSE (not ½·MSE).
Learning rate selected per optimizer on the held-out `val` batch ({cfg.train.eval_batch} prompts); test MSE on
{cfg.test_prompts} `test` prompts. Target = {cfg.target_factor:g} × best mean final val MSE = **{fmt(target)}**.

## Results (selected learning rates)

{body}

References: tuned {cfg.model.layers}-step Σ⁻¹-preconditioned GD (step sizes fitted on {cfg.tune_prompts} prompts; the
sparse LSA contains it, Ahn Thm 3): test MSE **{fmt(pgd)}** (log {fmt(math.log(pgd)) if pgd > 0 else "–"}); zero
predictor {fmt(zero)}.

**Root-free vs root-based (Lin et al. 2024):** {verdict}

## Ours vs the papers

| quantity | ours | paper | theory / reference |
|---|---|---|---|
{paper_rows}

Differences explained: Ahn et al. train 100k steps with batch 20000, per-matrix clipping 0.01 and a halving lr
schedule (the `paper` profile follows the batch and resampling); Dutta & Sra's numbers come from 10 Adam steps plus
1000 full-batch steps on one fixed batch (their code), so neither is a like-for-like number for this budget.
Their baselines use 19 of the 20 context points; ours use all 20 (as the model). The tuned PGD line is a
representable point of the sparse model, so a model below it has found more than the Thm 3 family (possible:
Thm 3 only says the family contains critical points), and a model above it is under-trained at this budget.

## Learning-rate grid (mean final val MSE over seeds)

{grid}

Figures: `figures/loss_vs_steps.png`, `figures/loss_vs_time.png` (the time axis is the mean over seeds of the
wall-clock seconds at each step, measured on a shared machine: compare ms/step only within one run).
Rows: results.csv (columns `method` and `lr` name a run; curve metrics carry the step in `train_step`).
"""
    return finish_report(run, text, {
        "experiment": NAME,
        "target": target,
        "best_final_val": best,
        "tuned_pgd_test_loss": pgd,
        "selected": {e["name"]: {"lr": e["lr"], "test_loss": e["test"][0], "steps_to_target": e["steps_to_target"][0],
                                 "seconds_to_target": e["seconds_to_target"][0], "reached": e["reached"]}
                     for e in table},
        "verdict": verdict,
        "figures": [str(p.relative_to(run_dir)) for p in figs],
        "selection": {name: run[1] for name, run in select_lrs(rows).items()},
    })  # fmt: skip
