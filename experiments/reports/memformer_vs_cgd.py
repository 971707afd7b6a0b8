"""The report of :mod:`experiments.memformer_vs_cgd`."""

from __future__ import annotations

import math

import numpy as np

from experiments.convergence import class_gap
from experiments.memformer_vs_cgd import (
    CLASS_OPTIMUM,
    FIGURE_OF,
    NAME,
    PAPER_CG_LOG,
    PAPER_FIGURES,
    SETTINGS,
)
from experiments.reporting import (
    aggregate,
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
               "lfom_full", "lfom_shared_class", "heavy_ball_tuned", "gd_tuned", "pgd_tuned", "krylov",
               "krylov_pre"),
    "iso": ("cg", "lt_scalar", "lt_full", "cgd_scalar", "cgd_full", "lfom_scalar", "lfom_scalar_h5", "lfom_full",
            "lfom_shared_class", "heavy_ball_tuned", "gd_tuned", "krylov"),
}  # fmt: skip
DASHED = ("krylov", "krylov_pre", "cg_n19", "lfom_shared_class")
FIGURES = {
    "scalar": ("cg", "cg_n19", "lt_scalar", "cgd_scalar", "lfom_scalar", "lfom_scalar_h5", "lfom_shared_class",
               "heavy_ball_tuned", "gd_tuned", "krylov"),
    "full": ("cg", "lt_full", "cgd_full", "lfom_full", "pgd_tuned", "krylov_pre"),
}  # fmt: skip
#: with Σ = I (``iso``) Σ⁻¹-PGD is plain GD: the full-A panel draws tuned GD and the plain Krylov bound instead
ISO_SAME = {"pgd_tuned": "gd_tuned", "krylov_pre": "krylov"}
NAMES = {"lt_scalar": "LT (Q = q·I)", "cgd_scalar": "CGD-like (Q = q·I)", "lfom_scalar": "LFOM, scalar Γ",
         "lfom_scalar_h5": "LFOM, scalar Γ, 5 heads", "lt_full": "LT (Pre, full A)", "cgd_full": "CGD-like (full A)",
         "lfom_full": "LFOM (full A, full Γ)", "gd_tuned": "tuned per-step GD",
         "heavy_ball_tuned": "tuned per-step heavy ball", "pgd_tuned": "tuned Σ⁻¹-PGD",
         "lfom_shared_class": "shared-Γ LFOM floor", "cg": "per-prompt CG"}  # fmt: skip


def _log_stats(rows, setting: str, method: str, L: int, metric: str = "test_loss") -> tuple[float, float, float, int]:
    """Mean over seeds of log(metric) with its 95% t-interval."""
    picked = select(rows, setting=setting, method=method, depth=L, metric=metric)
    agg = aggregate([{**r, "value": math.log(r["value"])} for r in picked if r["value"] > 0], keys=("method",))
    return agg.get((method,), (float("nan"),) * 3 + (0,))


def _logs(rows, setting, method, L) -> dict[int, float]:
    return per_seed(rows, math.log, setting=setting, method=method, depth=L, metric="test_loss")


def class_gaps(rows, setting: str, kind: str, L: int, tolerance: float) -> dict[int, object]:
    """Per seed, the :class:`~experiments.convergence.Gap` of ``kind`` at depth L to its class optimum: the best
    (on the same test prompts) of the candidates in :data:`CLASS_OPTIMUM` that were run."""
    mine = _logs(rows, setting, kind, L)
    cands = {m: _logs(rows, setting, m, L) for m in CLASS_OPTIMUM.get(kind, ())}
    out = {}
    for seed, value in mine.items():
        have = {m: c[seed] for m, c in cands.items() if seed in c}
        if have:
            best = min(have, key=have.get)
            out[seed] = class_gap(value, have[best], tolerance, NAMES.get(best, best))
    return out


def render(run_dir, rows, cfg: dict) -> dict:
    """Figures and report.md from the rows; returns the headline numbers for summary.json."""
    from pathlib import Path

    run_dir = Path(run_dir)
    depths = sorted({r["depth"] for r in rows if r["depth"] > 0 and r["metric"] == "test_loss"
                     and r["method"] != "theory_ahn_thm1"})  # fmt: skip
    settings = [s for s in SETTINGS if any(r["setting"] == s for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    tr = cfg["train"]
    out: dict = {"log_test_loss": {}}
    trained = sorted({(r["setting"], r["method"], r["depth"]) for r in rows if r["metric"] == "train_steps"})
    lines = [
        f"# {NAME}: Memformers vs CG, momentum and preconditioned GD (Dutta & Sra 2024)",
        "",
        f"Profile `{cfg['profile']}`; seeds {seeds}; d = {cfg['d']}, n = {cfg['n']}; every model and baseline on the "
        f"same n = {cfg['n']} context points and the same {cfg['test_prompts']:,} held-out test prompts per seed. "
        "Values are log(query MSE), mean over seeds [95% t-interval over seeds]. Non-isotropic: Σ eigenvalues "
        f"{tuple(cfg['eigenvalues'])} (the authors' code's D²), w* ~ N(0, Σ⁻¹). Training: AdamW, fresh batches of "
        f"{tr['batch_size']} prompts{_batch_exceptions(rows, tr['batch_size'])} every {tr['resample_every']} step(s), "
        f"lr {tr['lr']} ({tr['schedule']}"
        + (f", halved every {tr['halve_every']} steps" if tr["schedule"] == "step" else "")
        + f"), {tr['clip']} clip {tr['clip_value']}; until the held-out loss ({tr['eval_batch']} prompts, every "
        f"{tr['eval_every']} steps) has not improved by a relative {tr['plateau_tol']:g} for "
        f"{tr['plateau_patience']} evaluations, at most {tr['steps']} steps. Models trained: "
        + ", ".join(f"{s}/{m} L = {L}" for s, m, L in trained) + " (no other model was run). Baselines tuned on "
        f"{cfg['tune_prompts']:,} training-law prompts per seed; the Krylov bounds are fitted on those and evaluated "
        "on the test prompts.",
        "",
    ]
    for setting in settings:
        names = [m for m in LINES[setting] if select(rows, setting=setting, method=m, metric="test_loss")]
        table = []
        for m in names:
            row = [m, FIGURE_OF.get(m, "")]
            for L in depths:
                mean, lo, hi, k = _log_stats(rows, setting, m, L)
                paper = PAPER_FIGURES.get((setting, m), {}).get(L)
                if m == "cg_n19" and setting == "noniso":
                    paper = PAPER_CG_LOG.get(L)
                if not math.isfinite(mean):
                    row.append("–")
                    continue
                out["log_test_loss"].setdefault(setting, {}).setdefault(m, {})[L] = mean
                cell = f"{mean:+.3f}"
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
        for panel, members in FIGURES.items():  # two panels, one colour per line
            if setting == "iso":
                members = tuple(ISO_SAME.get(m, m) for m in members)
            part = [r for r in sub if r["method"] in members]
            if not any(r["method"] in ("lt_scalar", "cgd_scalar", "lfom_scalar", "lt_full", "cgd_full", "lfom_full")
                       for r in part):  # fmt: skip
                continue
            star = bool(theory) and panel == "full"
            line_plot(
                part, run_dir / "figures" / f"log_loss_{setting}_{panel}", metric="test_loss",
                ylabel="log(test MSE)", log_values=True, dashed_methods=DASHED, labels=NAMES,
                title=f"{setting}, {panel} A: Memformers vs CG and tuned baselines",
                points={"Ahn et al. Thm 1 optimum, L = 1": (1, float(np.mean([r["value"] for r in theory])))}
                if star else None,
                caption="mean over seeds of the test MSE, plotted as log; band: 95% t-interval over seeds; dashed: "
                "Krylov bounds (fitted on training prompts), the shared-Γ LFOM floor and CG on 19 points; a "
                "model trained at one depth only is a single point" + ("; star: Thm 1's one-layer optimum" if star
                                                                      else ""),
            )  # fmt: skip
    lines += _convergence_section(rows, settings, cfg, out)
    lines += _tails_section(rows, settings, depths, cfg)
    lines += _heads_section(rows, depths, out)
    lines += _findings(rows, depths, cfg)
    write_report(run_dir, "\n".join(lines))
    return out


def _batch_exceptions(rows, default: int) -> str:
    """The clause naming the trained models whose batch (row ``batch_size``) differs from ``default``, e.g.
    ``" (lt_full: 6000)"``; empty when none does."""
    other = sorted({(r["method"], int(r["value"])) for r in rows if r["metric"] == "batch_size"
                    and int(r["value"]) != default})  # fmt: skip
    return f" ({', '.join(f'{m}: {b}' for m, b in other)})" if other else ""


def _convergence_section(rows, settings, cfg, out) -> list[str]:
    tol = cfg["gap_tolerance"]
    table, flagged = [], []
    for setting in settings:
        for kind in CLASS_OPTIMUM:
            for L in sorted({r["depth"] for r in select(rows, setting=setting, method=kind, metric="train_steps")}):
                gaps = class_gaps(rows, setting, kind, L, tol)
                steps = per_seed(rows, setting=setting, method=kind, depth=L, metric="train_steps")
                plateau = per_seed(rows, setting=setting, method=kind, depth=L, metric="stopped_by_plateau")
                for seed, g in sorted(gaps.items()):
                    how = "plateau" if plateau.get(seed) else "cap"
                    table.append([setting, kind, L, seed, f"{g.learned:+.3f}", g.reference, f"{g.optimum:+.3f}",
                                  g.text(), f"{int(steps.get(seed, 0))} ({how})"])  # fmt: skip
                    out.setdefault("class_gap", {}).setdefault(f"{setting}/{kind}/L{L}", {})[seed] = g.gap
                    if g.flagged:
                        flagged.append(f"{setting}/{kind} L = {L} seed {seed} ({g.gap:+.3f})")
    if not table:
        return []
    return [
        "## Convergence: each model against its class optimum (same test prompts)",
        "",
        f"Gap = log(model loss) − log(class optimum), flagged beyond {tol:g}. Class optima: LT with Q = q·I: tuned "
        "per-step GD (its exact class); CGD-like with Q = q·I: tuned per-step heavy ball (its exact class); scalar-Γ "
        "LFOM: the tuned shared-Γ class floor; LT (Pre): tuned Σ⁻¹-PGD (inside its class, and optimal for it in Ahn "
        "et al.); full-A Memformers: the best tuned linear first-order method on these prompts, per seed the best of "
        "tuned per-step GD, heavy ball and Σ⁻¹-PGD (named in the table). The tuned methods are tuned on training "
        "prompts, so a model can sit slightly below them on the test prompts (a negative gap). Steps: the step the "
        "run ended at, by the plateau rule or at the cap.",
        "",
        markdown_table(["setting", "model", "L", "seed", "log loss", "class optimum", "its log loss", "gap",
                        "steps"], table),  # fmt: skip
        "",
        ("Beyond the tolerance: " + "; ".join(flagged) + "." if flagged
         else f"Every trained model is within {tol:g} of its class optimum on every seed."),
        "",
    ]


def _tails_section(rows, settings, depths, cfg) -> list[str]:
    Lmax = max(depths)
    table = []
    for setting in settings:
        for m in LINES[setting]:
            if not select(rows, setting=setting, method=m, depth=Lmax, metric="test_loss_median"):
                continue
            mean = _log_stats(rows, setting, m, Lmax)[0]
            med = _log_stats(rows, setting, m, Lmax, "test_loss_median")[0]
            trim = _log_stats(rows, setting, m, Lmax, "test_loss_trimmed")[0]
            lo = min(r["value"] for r in select(rows, setting=setting, method=m, depth=Lmax,
                                                metric="log_loss_parts_min"))  # fmt: skip
            hi = max(r["value"] for r in select(rows, setting=setting, method=m, depth=Lmax,
                                                metric="log_loss_parts_max"))  # fmt: skip
            sd = float(np.mean([r["value"] for r in select(rows, setting=setting, method=m, depth=Lmax,
                                                           metric="log_loss_parts_sd")]))  # fmt: skip
            top = float(np.mean([r["value"] for r in select(rows, setting=setting, method=m, depth=Lmax,
                                                            metric="top1_share")]))  # fmt: skip
            table.append([setting, m, f"{mean:+.3f}", f"{med:+.3f}", f"{trim:+.3f}", f"[{lo:+.2f}, {hi:+.2f}]",
                          f"{sd:.3f}", f"{top:.0%}"])  # fmt: skip
    if not table:
        return []
    part = cfg["test_prompts"] // 5
    return [
        f"## Heavy tails at L = {Lmax}",
        "",
        f"Per-prompt query losses on the {cfg['test_prompts']:,} test prompts of each seed: log of the mean (the "
        "number reported above), of the median and of the 5% trimmed mean (means over seeds); the range over seeds "
        f"of log(mean) on five disjoint parts of {part:,} prompts, its standard deviation across parts (mean over "
        "seeds), and the share of the total loss carried by the worst 1% of prompts.",
        "",
        markdown_table(["setting", "method", "log mean", "log median", "log trimmed mean",
                        f"log mean on {part:,}-prompt parts", "sd across parts", "top-1% share"], table),  # fmt: skip
        "",
    ]


def _heads_section(rows, depths, out) -> list[str]:
    both = [L for L in depths if select(rows, setting="noniso", method="lfom_scalar_h5", depth=L, metric="test_loss")
            and select(rows, setting="noniso", method="lfom_scalar", depth=L, metric="test_loss")]  # fmt: skip
    if not both:
        return []
    table = []
    for L in both:
        one = _log_stats(rows, "noniso", "lfom_scalar", L)[0]
        five = _log_stats(rows, "noniso", "lfom_scalar_h5", L)[0]
        diff = [r["value"] for r in select(rows, setting="noniso", method="lfom_scalar_h5", depth=L,
                                           metric="collapse_max_abs_diff")]  # fmt: skip
        floor = _log_stats(rows, "noniso", "lfom_shared_class", L)[0]
        kry = _log_stats(rows, "noniso", "krylov", L)[0]
        table.append([L, f"{one:+.3f}", f"{five:+.3f}", f"{floor:+.3f}", f"{kry:+.3f}", f"{max(diff):.1e}"])
    out["heads"] = {str(r[0]): {"one": r[1], "five": r[2]} for r in table}
    return [
        "## 1 head vs 5 heads (scalar-Γ LFOM Memformer, A_{ℓ,h} = a_{ℓ,h}·I; paper Fig. 5)",
        "",
        "Each head has P = [[0, 0], [0, 1]] and Q_h = −a_h·I, so the heads sum to one head with a = Σ_h a_h: the "
        "two models have the same function class. `max |Δŷ|` is the largest difference on the test prompts "
        "between the trained 5-head model and its collapse into one head (float32 rounding only). The class floor "
        "is the best member of their class (Γ shared across layers: w_{ℓ+1} = w_ℓ − Σ_{j≤ℓ} c_j ∇R(w_j), tuned on "
        "training-law prompts); the Krylov bound is that of every shared polynomial p(H)g.",
        "",
        markdown_table(["L", "1 head", "5 heads", "class floor", "Krylov bound", "max |Δŷ| (5 → 1 head)"], table),
        "",
    ]


def _findings(rows, depths, cfg) -> list[str]:
    """The paper's claims, each decided by a paired comparison over seeds on the same test prompts."""
    Lmax = max(depths)

    def v(m, L=Lmax, setting="noniso"):
        return _log_stats(rows, setting, m, L)[0]

    def have(*methods, setting="noniso"):
        return all(select(rows, setting=setting, method=m, depth=Lmax, metric="test_loss") for m in methods)

    def pv(a, b, claim="less", margin=0.0, setting="noniso"):
        """The paired verdict on the per-seed log test losses of a and b at L = Lmax."""
        return paired_verdict(_logs(rows, setting, a, Lmax), _logs(rows, setting, b, Lmax), claim, margin)

    out = ["## Claims checked", ""]
    if have("cg_n19", "cg"):
        ds = [L for L in depths if L in PAPER_CG_LOG and select(rows, setting="noniso", method="cg_n19", depth=L)]
        gap = max(abs(v("cg_n19", L) - PAPER_CG_LOG[L]) for L in ds)
        se = max(  # s.e. of a log-loss estimated from 1000 prompts, as the authors' printed values were
            select(rows, setting="noniso", method="cg_n19", depth=L, metric="test_loss_stderr")[0]["value"]
            / select(rows, setting="noniso", method="cg_n19", depth=L, metric="test_loss")[0]["value"]
            * math.sqrt(cfg["test_prompts"] / 1000) for L in ds
        )  # fmt: skip
        out.append(
            "- **CG numbers.** Published CGD log-loss (19 points, 1000 test prompts): "
            + ", ".join(f"{PAPER_CG_LOG[L]:+.2f}" for L in ds) + ". Ours on 19 points: "
            + ", ".join(f"{v('cg_n19', L):+.2f}" for L in ds) + "; on the 20 points the models see: "
            + ", ".join(f"{v('cg', L):+.2f}" for L in ds) + f". The largest gap to the published values is {gap:.2f}, "
            f"against a standard error of ≈ {se:.2f} for a log-loss from 1000 prompts "
            f"({'within' if gap <= 2 * se else 'outside'} two standard errors)."
        )
    checks = []
    if have("cgd_scalar", "lt_scalar"):
        checks.append(("CGD-like Memformer (Q = q·I) beats the LT without preconditioning (Fig. 1a)",
                       pv("cgd_scalar", "lt_scalar")))  # fmt: skip
    if have("cgd_scalar", "cg"):
        checks.append(("CGD-like Memformer (Q = q·I) is behind per-prompt CG (Fig. 1a)",
                       pv("cgd_scalar", "cg", "greater")))  # fmt: skip
    if have("cgd_full", "cg"):
        checks.append(("CGD-like Memformer with full A beats per-prompt CG (Fig. 1b)", pv("cgd_full", "cg")))
    if have("cgd_full", "lt_full"):
        checks.append(("CGD-like Memformer with full A beats the preconditioned LT (Fig. 1b)",
                       pv("cgd_full", "lt_full")))  # fmt: skip
    if have("lfom_full", "lt_full"):
        checks.append(("LFOM Memformer (full A, full Γ) beats the preconditioned LT (Fig. 2a)",
                       pv("lfom_full", "lt_full")))  # fmt: skip
    if have("lfom_full", "cg"):
        checks.append(("LFOM Memformer beats per-prompt CG (Fig. 2a)", pv("lfom_full", "cg")))
    for m in ("lt_full", "cgd_full", "lfom_full"):
        if have(m, "pgd_tuned"):
            checks.append((f"{NAMES[m]} within 0.1 log-units of tuned Σ⁻¹-PGD (the issue's target)",
                           pv(m, "pgd_tuned", "within", 0.1)))  # fmt: skip
            checks.append((f"{NAMES[m]} beats tuned Σ⁻¹-PGD", pv(m, "pgd_tuned")))
    if have("lfom_full", "lt_full", setting="iso"):
        checks.append(("Isotropic: the LFOM Memformer is within 0.1 log-units of the LT (Fig. 2b)",
                       pv("lfom_full", "lt_full", "within", 0.1, setting="iso")))  # fmt: skip
    if have("lfom_scalar_h5", "lfom_scalar"):
        checks.append(("5 heads better than 1 head by more than 0.02 log-units (Fig. 5)",
                       pv("lfom_scalar_h5", "lfom_scalar", "less", 0.02)))  # fmt: skip
    for text, verdict in checks:
        out.append(f"- {text}, at L = {Lmax}: {verdict.text('log-units')}.")
    if have("lt_scalar", "cgd_scalar", "krylov"):
        kry = v("krylov")
        out.append(
            f"- **No preconditioning (Q = q·I).** At L = {Lmax} the LT with per-layer scalar steps is "
            f"{v('lt_scalar') - kry:+.3f} and the CGD-like Memformer {v('cgd_scalar') - kry:+.3f} log-units from the "
            f"Krylov bound ({kry:+.3f}, the best shared polynomial p(H)g fitted on training prompts)."
            + (f" The paper's Fig. 1a reading (Memformer ≈ −0.4, LT ≈ −0.1 at L = 4) puts its Memformer "
               f"{-0.4 - kry:+.2f} from this bound." if Lmax == 4 else "")
        )
    out += [
        "",
        "Differences from the paper: (1) baselines use all 20 context points (the authors' code used 19: see the "
        "CG row); (2) training is a resampled-batch AdamW run ended by the plateau rule or the step cap (the "
        "steps column above), not 10 steps plus 1000 "
        "steps on one fixed batch, and the test prompts are never trained on; (3) the baselines are tuned per step "
        "for every L on training prompts (the authors used fixed η = 0.005/0.03, β = 0.9); (4) values are means over "
        "seeds with intervals, not read off a figure; figure readings are ±0.1–0.3.",
    ]
    return out


def report(run_dir) -> dict:
    run = open_report(run_dir)
    return render(run.run_dir, run.rows, run.config)
