"""The report of :mod:`experiments.memformer_vs_cgd`."""

from __future__ import annotations

import math

import numpy as np

from experiments.memformer_vs_cgd import (
    FIGURE_OF,
    NAME,
    PAPER_CG_LOG,
    PAPER_FIGURES,
    SETTINGS,
)
from experiments.reporting import (
    aggregate,
    fmt,
    line_plot,
    markdown_table,
    open_report,
    paired_verdict,
    per_seed,
    select,
    write_report,
)

# -- report --------------------------------------------------------------------------------------------------

LINES = {
    "noniso": ("cg", "cg_n19", "lt_scalar", "lt_full", "cgd_scalar", "cgd_full", "lfom_scalar", "lfom_scalar_h5",
               "lfom_full", "lfom_shared_class", "heavy_ball_tuned", "nesterov_tuned", "gd_tuned", "pgd_tuned",
               "krylov", "krylov_pre"),
    "iso": ("cg", "lt_full", "cgd_scalar", "lfom_full", "heavy_ball_tuned", "nesterov_tuned", "gd_tuned",
            "krylov"),
}  # fmt: skip
DASHED = ("krylov", "krylov_pre", "cg_n19", "lfom_shared_class")
FIGURES = {
    "scalar": ("cg", "cg_n19", "lt_scalar", "cgd_scalar", "lfom_scalar", "lfom_scalar_h5", "lfom_shared_class",
               "heavy_ball_tuned", "nesterov_tuned", "krylov"),
    "full": ("cg", "lt_full", "cgd_full", "lfom_full", "pgd_tuned", "gd_tuned", "krylov_pre", "cgd_scalar",
             "heavy_ball_tuned", "krylov"),
}  # fmt: skip


def _log_stats(rows, setting: str, method: str, L: int) -> tuple[float, float, float, int]:
    """Mean over seeds of log(test loss) with its 95% t-interval."""
    picked = select(rows, setting=setting, method=method, depth=L, metric="test_loss")
    agg = aggregate([{**r, "value": math.log(r["value"])} for r in picked], keys=("method",))
    return agg.get((method,), (float("nan"),) * 3 + (0,))


def render(run_dir, rows, cfg: dict) -> dict:
    """Figures and report.md from the rows; returns the headline numbers for summary.json."""
    from pathlib import Path

    run_dir = Path(run_dir)
    depths = sorted({r["depth"] for r in rows if r["depth"] > 0 and r["metric"] == "test_loss"})
    settings = [s for s in SETTINGS if any(r["setting"] == s for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    out: dict = {"log_test_loss": {}}
    lines = [
        f"# {NAME}: Memformers vs CG, momentum, Nesterov and preconditioned GD (Dutta & Sra 2024)",
        "",
        f"Seeds {seeds}; d = {cfg['d']}, n = {cfg['n']}; every model and baseline on the same n = {cfg['n']} "
        f"context points and the same {cfg['test_prompts']:,} held-out test prompts per seed. Values are "
        "log(query MSE), mean over seeds [95% t-interval over seeds]. Non-isotropic: Σ eigenvalues "
        f"{tuple(cfg['eigenvalues'])} (the authors' code's D²), w* ~ N(0, Σ⁻¹). Training: "
        f"{cfg['train']['steps']} AdamW steps of {cfg['train']['batch_size']} prompts, lr {cfg['train']['lr']} "
        f"({cfg['train']['schedule']}), {cfg['train']['clip']} clip {cfg['train']['clip_value']}.",
        "",
    ]
    for setting in settings:
        names = [m for m in LINES[setting] if select(rows, setting=setting, method=m, metric="test_loss")]
        table = []
        for m in names:
            row = [m, FIGURE_OF.get(m, "")]
            for L in depths:
                mean, lo, hi, k = _log_stats(rows, setting, m, L)
                out["log_test_loss"].setdefault(setting, {}).setdefault(m, {})[L] = mean
                paper = PAPER_FIGURES.get((setting, m), {}).get(L)
                if m == "cg_n19" and setting == "noniso":
                    paper = PAPER_CG_LOG.get(L)
                cell = "–" if not math.isfinite(mean) else f"{mean:+.3f}"
                if k > 1 and math.isfinite(lo):
                    cell += f" [{lo:+.2f}, {hi:+.2f}]"
                if paper is not None:
                    cell += f" (paper {paper:+.2f})"
                row.append(cell)
            table.append(row)
        zero = select(rows, setting=setting, method="zero_predictor", metric="test_loss")
        theory = select(rows, setting=setting, method="theory_ahn_thm1", metric="test_loss")
        lines += [f"## {setting}: log(test loss) against L", ""]
        lines.append(markdown_table(["method", "paper fig.", *[f"L = {L}" for L in depths]], table))
        lines.append("")
        if zero and theory:
            lines.append(
                f"Zero predictor log {math.log(zero[0]['value']):+.3f}; Ahn et al. Thm 1 optimum of one full-A layer "
                f"log {math.log(theory[0]['value']):+.3f} (= log d(d+1)/(n+d+1) = "
                f"{math.log(cfg['d'] * (cfg['d'] + 1) / (cfg['n'] + cfg['d'] + 1)):+.3f})."
            )
            lines.append("")
        sub = [r for r in select(rows, setting=setting, metric="test_loss") if r["method"] in names]
        for panel, members in FIGURES.items():  # two panels of at most ten lines, one colour each
            part = [r for r in sub if r["method"] in members]
            if not part:
                continue
            line_plot(
                part, run_dir / "figures" / f"log_loss_{setting}_{panel}", metric="test_loss",
                ylabel="log(test MSE)", log_values=True, dashed_methods=DASHED,
                title=f"{setting}, {panel} A: Memformers vs CG and tuned baselines",
                points={"Ahn et al. Thm 1 optimum, L = 1": (1, float(np.mean([r["value"] for r in theory])))}
                if theory and panel == "full" else None,
                caption="mean over seeds of the test MSE, plotted as log; band: 95% t-interval over seeds; dashed: "
                "Krylov lower bounds, the shared-Γ LFOM floor and CG on 19 points"
                + ("; star: Thm 1's one-layer optimum" if theory and panel == "full" else ""),
            )  # fmt: skip
    lines += _heads_section(rows, depths, out)
    lines += _krylov_section(rows, depths)
    lines += _findings(rows, depths, cfg)
    write_report(run_dir, "\n".join(lines))
    return out


def _heads_section(rows, depths, out) -> list[str]:
    if not select(rows, setting="noniso", method="lfom_scalar_h5"):
        return []
    table = []
    for L in depths:
        one = _log_stats(rows, "noniso", "lfom_scalar", L)[0]
        five = _log_stats(rows, "noniso", "lfom_scalar_h5", L)[0]
        diff = [r["value"] for r in select(rows, setting="noniso", method="lfom_scalar_h5", depth=L,
                                           metric="collapse_max_abs_diff")]  # fmt: skip
        kry = _log_stats(rows, "noniso", "krylov", L)[0]
        floor = _log_stats(rows, "noniso", "lfom_shared_class", L)[0]
        table.append([L, f"{one:+.3f}", f"{five:+.3f}", f"{floor:+.3f}", f"{kry:+.3f}",
                      fmt(max(diff) if diff else float("nan"))])  # fmt: skip
    out["heads"] = {str(r[0]): {"one": r[1], "five": r[2]} for r in table}
    return [
        "## 1 head vs 5 heads (scalar-Γ LFOM Memformer, A_{ℓ,h} = a_{ℓ,h}·I; paper Fig. 5)",
        "",
        "Each head has P = [[0, 0], [0, 1]] and Q_h = −a_h·I, so the heads sum to one head with a = Σ_h a_h: the "
        "two models have the same function class. `max |Δŷ|` is the largest difference on the test prompts "
        "between the trained 5-head model and its collapse into one head (float32 rounding only). Both are "
        "bounded below by the Krylov bound, since their output is one shared polynomial p(H)g, and more tightly by "
        "the best member of their own class (Γ shared across layers: w_{ℓ+1} = w_ℓ − Σ_{j≤ℓ} c_j ∇R(w_j), "
        "`lfom_shared_class`, tuned on training-law prompts). When both models sit at that floor, the 1-head vs "
        "5-head difference of the paper's Fig. 5 (trained and evaluated on one batch of 10 prompts) is not "
        "reproduced: it came from optimisation/evaluation, not from the extra heads.",
        "",
        markdown_table(["L", "1 head", "5 heads", "class floor", "Krylov bound", "max |Δŷ| (5 → 1 head)"], table),
        "",
    ]


def _krylov_section(rows, depths) -> list[str]:
    table = []
    for m in ("lt_scalar", "cgd_scalar", "lfom_scalar", "lfom_scalar_h5", "heavy_ball_tuned", "gd_tuned",
              "pgd_tuned", "cgd_full", "lfom_full", "lt_full", "cg"):  # fmt: skip
        if not select(rows, setting="noniso", method=m):
            continue
        row = [m]
        for L in depths:
            mine = _log_stats(rows, "noniso", m, L)[0]
            kry = _log_stats(rows, "noniso", "krylov", L)[0]
            pre = _log_stats(rows, "noniso", "krylov_pre", L)[0]
            row.append(f"{mine - kry:+.3f} / {mine - pre:+.3f}")
        table.append(row)
    if not table:
        return []
    return [
        "## Gap to the Krylov bounds (non-isotropic)",
        "",
        "log(loss) − log(bound), plain Krylov / Σ⁻¹-preconditioned Krylov, per seed-mean. Every scalar-A model "
        "(and GD, heavy ball) must be ≥ 0 against the plain bound; PGD ≥ 0 against the preconditioned one. "
        "Per-prompt CG (data-dependent coefficients) and full-A models are not bound by them.",
        "",
        markdown_table(["method", *[f"L = {L}" for L in depths]], table),
        "",
    ]


def _findings(rows, depths, cfg) -> list[str]:
    """Where the paper's claims hold and where they do not, stated from the numbers."""

    def v(m, L, setting="noniso"):
        return _log_stats(rows, setting, m, L)[0]

    Lmax = max(depths)
    out = ["## Claims checked", ""]
    if select(rows, setting="noniso", method="cg_n19"):
        cg20 = ", ".join(f"{v('cg', L):+.2f}" for L in depths)
        cg19 = ", ".join(f"{v('cg_n19', L):+.2f}" for L in depths)
        pub = ", ".join(f"{PAPER_CG_LOG[L]:+.2f}" for L in depths if L in PAPER_CG_LOG)
        se = []
        for L in depths:  # s.e. of a log-loss estimated from 1000 prompts, as the authors' printed values were
            est = select(rows, setting="noniso", method="cg_n19", depth=L, metric="test_loss_stderr")
            mean = select(rows, setting="noniso", method="cg_n19", depth=L, metric="test_loss")
            if est and mean:
                se.append(est[0]["value"] / mean[0]["value"] * math.sqrt(cfg["test_prompts"] / 1000))
        gap = max(abs(v("cg_n19", L) - PAPER_CG_LOG[L]) for L in depths if L in PAPER_CG_LOG)
        out.append(
            f"- **CG numbers.** Published CGD log-loss (19 points, 1000 test prompts): {pub}. Ours on 19 points: "
            f"{cg19}; on the 20 points the models see: {cg20}. The published curve is CG on 19 of the 20 points "
            "(the authors' off-by-one); dropping a point costs CG the difference between those two rows. The "
            f"largest gap between the published values and our 19-point CG is {gap:.2f}, against a standard error "
            f"of ≈ {max(se) if se else float('nan'):.2f} for a log-loss from 1000 prompts "
            f"({'within' if se and gap <= 2 * max(se) else 'outside'} two standard errors). The figure readings "
            "(≈ +0.5 at L = 1) are less precise than the printed notebook values."
        )
    def pv(a, b, claim="less", margin=0.0, setting="noniso"):
        """The paired verdict on the per-seed log test losses of a and b at L = Lmax."""
        ls = {m: per_seed(rows, math.log, setting=setting, method=m, depth=Lmax, metric="test_loss") for m in (a, b)}
        return paired_verdict(ls[a], ls[b], claim, margin)

    def have(*methods, setting="noniso"):
        return all(select(rows, setting=setting, method=m) for m in methods)

    checks = []
    if have("cgd_scalar", "lt_scalar"):
        checks.append(("CGD-like Memformer (Q = q·I) beats the LT without preconditioning (Fig. 1a)",
                       pv("cgd_scalar", "lt_scalar")))  # fmt: skip
    if have("cgd_scalar", "cg"):
        checks.append((f"CGD-like Memformer (Q = q·I) is behind per-prompt CG at L = {Lmax} (Fig. 1a)",
                       pv("cgd_scalar", "cg", "greater")))  # fmt: skip
    if have("cgd_full", "cg"):
        checks.append((f"CGD-like Memformer with full A beats per-prompt CG at L = {Lmax} (Fig. 1b)",
                       pv("cgd_full", "cg")))  # fmt: skip
    if have("lfom_full", "lt_full"):
        checks.append((f"LFOM Memformer (full A, full Γ) beats the preconditioned LT at L = {Lmax} (Fig. 2a)",
                       pv("lfom_full", "lt_full")))  # fmt: skip
    if have("lfom_full", "cg"):
        checks.append((f"LFOM Memformer beats per-prompt CG at L = {Lmax} (Fig. 2a)", pv("lfom_full", "cg")))
    if have("lfom_full", "pgd_tuned"):
        checks.append((f"Memformers do not radically outperform preconditioned GD (§6.1): LFOM not more than 0.5 "
                       f"log-units below tuned PGD at L = {Lmax}",
                       pv("lfom_full", "pgd_tuned", "greater", -0.5)))  # fmt: skip
    if have("lfom_full", "lt_full", setting="iso"):
        checks.append(("Isotropic: the LFOM Memformer is not better than the LT (Fig. 2b) by more than 0.1 log-units",
                       pv("lfom_full", "lt_full", "greater", -0.1, setting="iso")))  # fmt: skip
    if have("lfom_scalar_h5", "lfom_scalar"):
        checks.append(("5 heads better than 1 head by more than 0.02 log-units (Fig. 5)",
                       pv("lfom_scalar_h5", "lfom_scalar", "less", 0.02)))  # fmt: skip
    for text, verdict in checks:
        out.append(f"- {text}: {verdict.text('log-units')}.")
    if have("lt_scalar", "cgd_scalar", "krylov"):
        kry = v("krylov", Lmax)
        lt_gap = v("lt_scalar", Lmax) - kry
        reading = "below" if -0.4 < kry else "above"
        why = ("The LT's residual polynomial Π_ℓ(1 − a_ℓλ) already reaches the best shared polynomial here (within "
               "0.05), so the memory has nothing to add" if lt_gap < 0.05 else
               f"Neither reaches the bound at this budget (the LT is {lt_gap:+.3f} above it)")  # fmt: skip
        out.append(
            f"- **No preconditioning (Q = q·I).** At L = {Lmax} the plain LT with per-layer scalar steps is "
            f"{lt_gap:+.3f} and the CGD-like Memformer {v('cgd_scalar', Lmax) - kry:+.3f} "
            f"log-units above the Krylov bound ({kry:+.3f}). {why}. The paper's Fig. 1a reading "
            f"(Memformer ≈ −0.4, LT ≈ −0.1 at L = 4) puts its Memformer {reading} this bound"
            + (", which no shared-coefficient model can do on fresh prompts (the figure reading, ±0.3, is off, or "
               "the curve was not measured on fresh prompts)." if reading == "below" else ".")
        )
    if select(rows, setting="noniso", method=("lfom_scalar",)) and select(rows, setting="noniso",
                                                                          method="lfom_shared_class"):
        out.append(
            f"- **Scalar-Γ LFOM.** 1 head {v('lfom_scalar', Lmax):+.3f}, 5 heads {v('lfom_scalar_h5', Lmax):+.3f}, "
            f"floor of the shared-Γ class {v('lfom_shared_class', Lmax):+.3f} (Krylov {v('krylov', Lmax):+.3f}): "
            "sharing Γ_j across layers makes every layer re-apply all earlier gradients with the same weight, a "
            "strictly smaller class than the Krylov one. Same function class for 1 and 5 heads (collapse check), "
            "same loss: Fig. 5's gap is not an expressivity effect."
        )
    full = [m for m in ("cgd_full", "lfom_full", "lt_full") if have(m)]
    if full and have("pgd_tuned", "cg"):
        names = {"cgd_full": "CGD-like", "lfom_full": "LFOM", "lt_full": "LT (Pre)"}
        beats = {m: pv(m, "pgd_tuned") for m in full}
        winners = [names[m] for m, vd in beats.items() if vd.holds]
        out.append(
            "- **Full A.** " + ", ".join(f"{names[m]} {v(m, Lmax):+.3f}" for m in full)
            + f", tuned PGD with the true Σ⁻¹ {v('pgd_tuned', Lmax):+.3f}, per-prompt CG {v('cg', Lmax):+.3f}. "
            + ("The LT's class contains A_ℓ = a_ℓΣ⁻¹ (= PGD), so a deficit of the LT to tuned PGD is optimisation "
               "at this budget, not expressivity. " if "lt_full" in full else "")
            + ("Learned models that beat tuned preconditioned GD (paired over seeds): " + ", ".join(winners) + "."
               if winners else "No learned model beats tuned preconditioned GD (claim 'beats tuned PGD', paired over "
               "seeds: "
               + "; ".join(f"{names[m]} {vd.text('log-units')}" for m, vd in beats.items()) + ").")
        )
    for m in ("cgd_scalar", "lfom_scalar", "lt_scalar"):
        if select(rows, setting="noniso", method=m):
            gaps = [v(m, L) - v("krylov", L) for L in depths]
            out.append(f"- {m} stays above the shared-coefficient Krylov bound at every L (min gap "
                       f"{min(gaps):+.3f}): {'yes' if min(gaps) > -1e-3 else 'NO (check)'}.")  # fmt: skip
    out += [
        "",
        "Differences from the paper: (1) baselines use all 20 context points (the authors' code used 19: see the "
        "CG row); (2) training is a resampled-batch AdamW run of the profile's length, not 10 steps plus 1000 "
        "steps on one fixed batch, and the test prompts are never trained on; (3) momentum and Nesterov are "
        "tuned for every L on training prompts (the authors used fixed η = 0.005/0.03, β = 0.9 on the "
        "unnormalised gradient); (4) values are means over seeds with intervals, not read off a figure; figure "
        "readings are ±0.1–0.3. A shorter training budget than the paper's leaves the deeper learned models "
        "(L = 3, 4) above their optimum, which mostly affects full-A models (many more parameters).",
    ]
    return out


def report(run_dir) -> dict:
    run = open_report(run_dir)
    return render(run.run_dir, run.rows, run.config)
