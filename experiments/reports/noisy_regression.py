"""The report of :mod:`experiments.noisy_regression`."""

from __future__ import annotations

import math
from pathlib import Path

from experiments.noisy_regression import (
    MODES,
    NAME,
    PAPER_NOISELESS_HALF_MSE,
)
from experiments.reporting import (
    aggregate,
    dominated_by_few,
    line_plot,
    markdown_table,
    open_report,
    paired_verdict,
    per_seed,
    select,
    write_report,
)

# -- report --------------------------------------------------------------------------------------------------


def _mean(rows, noise, method, L, metric="adjusted_loss") -> tuple[float, float, float, int]:
    agg = aggregate(select(rows, setting=noise, method=method, depth=L, metric=metric), keys=("method",))
    return agg.get((method,), (float("nan"),) * 3 + (0,))


def _flags(rows, noise, method, L) -> str:
    """† when a few test prompts dominate the mean (s.e. > 30% of it), ‡ when the learning rate was lowered."""
    lr = [r["value"] for r in select(rows, setting=noise, method=method, depth=L, metric="lr_used")]
    base = [r["value"] for r in select(rows, setting=noise, method=method, metric="lr_used")]
    out = " †" if dominated_by_few(rows, method, L, "adjusted_loss", floor=0.05, setting=noise) else ""
    return out + (" ‡" if lr and base and min(lr) < max(base) else "")


def _cell(stats) -> str:
    mean, lo, hi, k = stats
    if not math.isfinite(mean):
        return "–"
    s = f"{mean:.4g}"
    if k > 1:
        s += f" [{lo:.3g}, {hi:.3g}]"
    return s


def render(run_dir, rows, cfg: dict) -> dict:
    run_dir = Path(run_dir)
    noises = list(dict.fromkeys(r["setting"] for r in rows))
    depths = sorted({r["depth"] for r in select(rows, metric="adjusted_loss") if not r["method"].startswith("theory")})
    seeds = sorted({r["seed"] for r in rows})
    modes = [m for m in MODES if any(r["method"] == m for r in rows)]
    out: dict = {"adjusted_loss": {}}
    lines = [
        f"# {NAME}: FULL / DIAG / GD++ linear transformers on noisy regression (Vladymyrov et al. 2024)",
        "",
        f"Seeds {seeds}; d = {cfg['d']}, n = {cfg['n']}, x ~ N(0, I), w* ~ N(0, I), one σ per prompt. Adjusted "
        "loss = model MSE − oracle MSE on the same held-out prompts (oracle: posterior mean (XᵀX + σ²I)⁻¹Xᵀy with "
        "the prompt's σ, i.e. ridge λ = σ²/n in the (1/2n) normalisation). Plain MSE (the paper's ½·MSE × 2). "
        "Cells: mean over seeds [95% t-interval over seeds]. GD++ = DIAG with q_y = 0 (mode diag, q_y held at 0). "
        f"Training: {cfg['train']['steps']} Adam steps of {cfg['train']['batch_size']} prompts, lr "
        f"{cfg['train']['lr']} ({cfg['train']['schedule']}); the paper: 200,000 steps of 2048, lr 1e-4.",
        "",
        "## Adjusted loss (MSE) against depth",
        "",
    ]
    table = []
    for noise in noises:
        for m in (*modes, "const_rr", "ada_rr", "ols"):
            if not select(rows, setting=noise, method=m):
                continue
            cells = [_cell(_mean(rows, noise, m, L)) + _flags(rows, noise, m, L) for L in depths]
            for L in depths:
                out["adjusted_loss"].setdefault(noise, {}).setdefault(m, {})[L] = _mean(rows, noise, m, L)[0]
            table.append([noise, m, *cells])
        oracle = _mean(rows, noise, "oracle", depths[0], "test_loss")[0]
        theory = select(rows, setting=noise, method="theory_1layer_gd", metric="adjusted_loss")
        if theory:
            th = sum(r["value"] for r in theory) / len(theory)
            table.append(
                [noise, "theory: best 1-layer model, any mode (Ahn Thm 1)", f"{th:.4g}", *[""] * (len(depths) - 1)]
            )
        table.append([noise, "(oracle MSE itself)", f"{oracle:.4g}", *[""] * (len(depths) - 1)])
    lines.append(markdown_table(["noise", "method", *[f"L = {L}" for L in depths]], table))
    lines += [
        "",
        "– : every attempt diverged (learning rate halved twice). ‡: trained at a halved learning rate after a "
        "divergence (as Vladymyrov et al. did for unstable deep models). †: the mean is dominated by a few test "
        "prompts (standard error > 30% of the mean): deep LSAs are polynomials of high degree in the labels, and "
        "on rare prompts with large noise and large ‖y‖ their prediction explodes; `max_query_error` in "
        "results.csv records the worst prompt. The paper's 100,000-prompt evaluation would meet such prompts too; "
        "its longer, lower-lr training presumably leaves models whose growth is better controlled.",
        "",
    ]
    noiseless = next((nz for nz in noises if nz == "U(0,0)"), None)
    if noiseless:
        lines += _noiseless_section(rows, noiseless, modes, depths, cfg)
    lines += _findings(rows, noises, modes, depths)
    for noise in noises:
        sub = [r for r in select(rows, setting=noise, metric="adjusted_loss")
               if r["method"] in (*modes, "const_rr", "ada_rr") and r["value"] > 0]  # fmt: skip
        theory_1 = _mean(rows, noise, "theory_1layer_gd", 1)[0]
        stem = "adjusted_" + noise.replace("(", "").replace(")", "").replace(",", "-").replace("{", "").replace("}", "")
        line_plot(
            sub, run_dir / "figures" / stem, metric="adjusted_loss", ylabel="adjusted loss (MSE − oracle MSE)",
            xlabel="layers", logy=True, dashed_methods=("const_rr", "ada_rr"), title=f"noise {noise}",
            points={"one optimal GD step (theory), L = 1": (1, theory_1)} if theory_1 > 0 else None,
            caption="mean over seeds; band: 95% t-interval over seeds; dashed: ridge baselines (depth-independent)"
            + ("; star: the optimal one-step GD (Ahn et al. Thm 1)" if theory_1 > 0 else ""),
        )  # fmt: skip
    write_report(run_dir, "\n".join(lines))
    return out


def _noiseless_section(rows, noise, modes, depths, cfg) -> list[str]:
    d, n = cfg["d"], cfg["n"]
    theory = d * (d + 1) / (n + d + 1)
    table = []
    for m in modes:
        for L in depths:
            mean = _mean(rows, noise, m, L)[0]
            pub = PAPER_NOISELESS_HALF_MSE[m].get(L)
            table.append([m, L, f"{mean:.4g}", f"{mean / 2:.4g}", "–" if pub is None else f"{pub:.3g}",
                          "–" if pub is None else f"{2 * pub:.4g}",
                          f"{theory:.4f} / {theory / 2:.4f}" if L == 1 else ""])  # fmt: skip
    return [
        "## Noiseless column against Table 1 (σ_max = 0; oracle loss 0, so adjusted = model loss)",
        "",
        f"Published values are ½·MSE; theory at L = 1 is d(d+1)/(n+d+1) = {theory:.4f} MSE = {theory / 2:.4f} "
        "½·MSE. At L = 1 every mode's prediction is the query's x against Σ_i (x_i, y_i) products; the terms even in "
        "y (x_ix_iᵀ, y_i²) vanish at the optimum by the symmetry w* → −w*, so the best FULL, DIAG or GD++ layer is "
        "Ahn et al.'s one-step preconditioned GD (A* ∝ I here). Deeper values need the paper's budget: at this "
        "study's budget they sit "
        "above the published ones by orders of magnitude at L ≥ 3.",
        "",
        markdown_table(
            ["mode", "L", "ours MSE", "ours ½·MSE", "paper ½·MSE", "paper ×2 (MSE)", "theory MSE / ½·MSE"], table
        ),  # fmt: skip
        "",
    ]


def _findings(rows, noises, modes, depths) -> list[str]:
    """The paper's orderings at the deepest depth, per noise setting, stated as holds / does not hold."""
    Lmax = max(depths)
    out = ["## Claims checked", ""]
    for noise in noises:
        if noise == "U(0,0)":
            continue
        v = {m: _mean(rows, noise, m, Lmax)[0] for m in (*modes, "const_rr", "ada_rr")}
        seeds_of = {m: per_seed(rows, setting=noise, method=m, depth=Lmax, metric="adjusted_loss") for m in v}
        logs_of = {m: per_seed(rows, math.log, setting=noise, method=m, depth=Lmax, metric="adjusted_loss")
                   for m in v}  # fmt: skip
        const, ada = v["const_rr"], v["ada_rr"]
        parts = []
        if "gdpp" in v:
            vd = paired_verdict(logs_of["gdpp"], logs_of["const_rr"], "within", math.log(1.1))
            parts.append(f"GD++ saturates at ConstRR, within 10% ({v['gdpp']:.3g} vs {const:.3g}): "
                         f"{vd.text('in log')}")  # fmt: skip
        for m in ("diag", "full"):
            if m in v:
                if not math.isfinite(v[m]) or v[m] > 10 * const:
                    parts.append(f"{m.upper()} below ConstRR: not testable (unstable/diverged, {v[m]:.3g})")
                    continue
                below_c = paired_verdict(seeds_of[m], seeds_of["const_rr"], "less")
                below_a = paired_verdict(seeds_of[m], seeds_of["ada_rr"], "less")
                parts.append(f"{m.upper()} below ConstRR ({v[m]:.3g} vs {const:.3g}): {below_c.text()}")
                parts.append(f"{m.upper()} below AdaRR ({ada:.3g}): {below_a.text()}")
        out.append(f"- {noise}, L = {Lmax}: " + "; ".join(parts) + ".")
    out += [
        "",
        "Paper's claims: GD++ saturates at the ConstRR level (it can only estimate one noise level); FULL and DIAG "
        "go below ConstRR and, with ≥ 4 layers and σ_max ≥ 4, below AdaRR (σ_max = 7, L = 7: FULL 0.057, DIAG "
        "0.059, AdaRR 0.092, GD++ 0.530, ConstRR 0.530 in ½·MSE, i.e. ×2 in MSE). Below AdaRR is not expected on "
        f"this grid (σ_max ≤ 5, L ≤ {Lmax}, a training run ~1000× shorter than the paper's); it needs the paper "
        "profile. Where GD++ has not reached ConstRR at small σ_max the model is still training-limited.",
    ]
    return out


def report(run_dir) -> dict:
    run = open_report(run_dir)
    return render(run.run_dir, run.rows, run.config)
