"""Step-time and drift benchmark of ManifoldAdam (Brantner 2023) against its floor and its PyTorch peers.

Two cases, each timed in one paired, interleaved run:

* **one large matrix**, St(64, 512) (a 512×64 parameter): ManifoldAdam; the **floor** — the three O(N²p)
  products every exact global-section step must make, and nothing else (:func:`gemm_floor`); torch's Adam
  (default path and ``fused=True``); the projection baseline ProjectedRiemannianAdam; geoopt's
  ``RiemannianAdam`` on ``geoopt.Stiefel()`` (canonical metric, one scalar second moment per matrix);
* **Brantner's shapes**: the 336 query/key/value matrices of his vision transformer (16 blocks × 7 heads × 3)
  on St(7, 49), all in one optimizer: ManifoldAdam (one batch), the batched floor, torch's Adam and geoopt.

**Pairing.**  A run is a number of *periods*; a period is ten *rounds*, and a round runs one block of every
variant in turn (A, B, C, A, B, C, …).  ManifoldAdam's block is a tenth of its full re-orthonormalisation period
(1000 float32 steps), so each period covers exactly one float64 QR of Λ and 100 polar steps on Y; every other
variant's block is sized to last about as long as ManifoldAdam's (a few calls timed first).  Each ratio is taken
period by period — both times come from the same few seconds of the run, interleaved at a tenth of a second —
and the ratio reported is the median over periods (with its range).  On a virtual machine whose speed drifts by
±30% between seconds, this pairing is what makes two runs agree; medians of unpaired blocks of unequal length
did not (a short block lands in a fast or a slow stretch, a long one averages them).

Then the constraint violation ‖YᵀY − I‖_F after ``violation_steps`` ManifoldAdam steps on a fixed linear cost,
in float32 (default re-orthonormalisation) and float64, at the last step and the largest seen at every 10th step.

geoopt is not a dependency: it is imported if present and otherwise installed with ``pip install geoopt``
when ``install_geoopt`` is true; if that fails the geoopt columns are NaN and ``geoopt`` says why.

Run ``python -m icl.optim.bench_manifold`` for the tables (``--repeat R`` runs R times and prints medians).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from icl.optim.manifold_adam import ManifoldAdam
from icl.optim.manifolds import manifold_point
from icl.optim.riemannian_adam import ProjectedRiemannianAdam

__all__ = ["bench_manifold_adam", "gemm_floor", "load_geoopt"]

REORTH = 1000  # ManifoldAdam's default period of the full re-orthonormalisation of Λ in float32
ROUNDS = 10  # rounds per period: ManifoldAdam's block is REORTH // ROUNDS steps


def load_geoopt(install: bool = True):
    """(geoopt module or None, a note): imports geoopt, installing it with pip first if asked and missing."""
    try:
        import geoopt

        return geoopt, f"geoopt {geoopt.__version__}"
    except ImportError:
        if not install:
            return None, "geoopt unavailable: not installed (pip install geoopt)"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "geoopt"], capture_output=True, text=True, timeout=600
    )
    importlib.invalidate_caches()
    try:
        import geoopt

        return geoopt, f"geoopt {geoopt.__version__} (installed by the benchmark)"
    except ImportError:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"geoopt unavailable: pip install geoopt failed ({tail[0][:200]})"


CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def _paired(fns: dict[str, tuple[Callable[[], object], int]], periods: int, clock: str) -> dict[str, list[float]]:
    """Seconds per call of each variant in each of ``periods`` periods; fns maps a name to (function, calls per
    block).  A period is :data:`ROUNDS` rounds, a round one block of every variant in turn.

    ``clock="cpu"`` times with the thread's CPU time, which on a shared machine leaves out the time the
    thread waits for a core (with one intra-op thread the two clocks agree on an idle machine)."""
    now = CLOCKS[clock]
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(periods):
        spent = dict.fromkeys(fns, 0.0)
        for _ in range(ROUNDS):
            for k, (f, block) in fns.items():
                t0 = now()
                for _ in range(block):
                    f()
                spent[k] += now() - t0
        for k, (_, block) in fns.items():
            out[k].append(spent[k] / (ROUNDS * block))
    return out


def _blocks(fns: dict[str, Callable[[], object]], lead: str, lead_block: int, clock: str) -> dict[str, tuple]:
    """(function, calls per block) for each variant: ``lead_block`` calls of ``lead`` (run once as warm-up and
    timed), and as many calls of every other variant (warmed up, then three timed) as last about that long."""
    now = CLOCKS[clock]
    f = fns[lead]
    t0 = now()
    for _ in range(lead_block):
        f()
    target = now() - t0
    out = {lead: (f, lead_block)}
    for k, g in fns.items():
        if k == lead:
            continue
        g()
        t0 = now()
        for _ in range(3):
            g()
        out[k] = (g, max(1, round(3 * target / max(now() - t0, 1e-9))))
    return out


def gemm_floor(L: torch.Tensor, G: torch.Tensor, Bt: torch.Tensor, H: torch.Tensor) -> None:
    """The three O(N²p) products of an exact global-section Stiefel step, and nothing else, on a batch:
    the coordinates GᵀΛ of the gradient, the tangent Y_⊥B of the velocity and the rank-p update
    Y_⊥ ← Y_⊥ − H·Bᵀ of the section (Brantner 2023, §4), with nonzero operands and alpha = −1 (BLAS skips a
    product whose alpha is 0).  L: (k, N, N), G and H: (k, N, p), Bt: (k, p, N−p).

    Why three and not two: Adam acts elementwise on the (N−p)·p coordinates Y_⊥ᵀG in the carried frame Y_⊥
    (a generic orthonormal frame after a few steps), so they need one product with a new G every step; the
    point moves by Y_⊥B, B a nonlinear (elementwise) function of them, so a second; and the frame must be
    carried, Y_⊥ ← Y_⊥ − H·Bᵀ, N(N−p)p multiply-adds — deferring it (Y_⊥ = Y_⊥⁰ − Σ H_sB_sᵀ) corrects
    the next steps' products cheaply but the deferred rank-jp update costs the same N(N−p)p per step when it
    is applied.  The closed-form Cayley step removes the 2p×2p kernel, not a product."""
    p = G.shape[-1]
    Yp = L[..., p:]
    if L.shape[0] == 1:  # plain GEMMs for one matrix (the fastest form on CPU BLAS)
        torch.mm(G[0].T, L[0])
        torch.mm(Yp[0], Bt[0].T)
        Yp[0].addmm_(H[0], Bt[0], alpha=-1.0)
        return
    torch.bmm(G.mT, L)
    torch.bmm(Yp, Bt.mT)
    # the rank-p update in its fastest batched form: the whole contiguous Λ by H·[0 | Bᵀ] (an in-place
    # batched product on the strided block Y_⊥ copies it)
    L.baddbmm_(H, torch.cat([Bt.new_zeros(Bt.shape[0], p, p), Bt], -1), alpha=-1.0)


def _floor_operands(k: int, n: int, p: int, dtype: torch.dtype, g: torch.Generator):
    # contiguous, as ManifoldAdam keeps its sections (LAPACK's Q is column-major)
    L = torch.linalg.qr(torch.randn(k, n, n, generator=g, dtype=torch.float64))[0].to(dtype).contiguous()
    G = torch.randn(k, n, p, generator=g, dtype=torch.float64).to(dtype)
    Bt = 1e-3 * torch.randn(k, p, n - p, generator=g, dtype=torch.float64).to(dtype)
    H = torch.randn(k, n, p, generator=g, dtype=torch.float64).to(dtype)
    return L, G, Bt, H


def _violation(n: int, p: int, steps: int, dtype: torch.dtype, seed: int, lr: float) -> tuple[float, float]:
    """(‖YᵀY − I‖_F after ``steps`` steps, the largest at steps 9, 19, 29, … — just before each polar step)."""
    g = torch.Generator().manual_seed(seed)
    Y = torch.nn.Parameter(manifold_point("stiefel", (n, p), generator=g, dtype=dtype))
    C = torch.randn(n, p, generator=g, dtype=torch.float64).to(dtype)  # fixed linear cost −tr(CᵀY)
    opt = ManifoldAdam([{"params": [Y], "manifold": "stiefel"}], lr=lr, seed=seed)
    Y.grad = -C
    worst = 0.0
    for s in range(1, steps + 1):
        opt.step()
        if s % 10 == 9:
            worst = max(worst, opt.constraint_violation())
    return opt.constraint_violation(), worst


def _case(k, n, p, dtype, lr: float, seed: int, geoopt, periods: int, projected: bool, clock: str) -> dict:
    """One paired run of k parameters on St(p, n), all in one optimizer per variant."""
    g = torch.Generator().manual_seed(seed)
    Y0 = [manifold_point("stiefel", (n, p), generator=g, dtype=dtype) for _ in range(k)]
    G = [torch.randn(n, p, generator=g, dtype=torch.float64).to(dtype) for _ in range(k)]

    def params(cls=torch.nn.Parameter, **kw):
        ps = [cls(y.clone(), **kw) for y in Y0]
        for x, gr in zip(ps, G):
            x.grad = gr.clone()
        return ps

    fns: dict[str, Callable[[], object]] = {}
    fns["manifold_adam"] = ManifoldAdam([{"params": params(), "manifold": "stiefel"}], lr=lr, seed=seed).step
    ops = _floor_operands(k, n, p, dtype, g)
    fns["floor"] = lambda: gemm_floor(*ops)
    fns["adam"] = torch.optim.Adam(params(), lr=lr, betas=(0.9, 0.99)).step
    fns["adam_fused"] = torch.optim.Adam(params(), lr=lr, betas=(0.9, 0.99), fused=True).step
    if projected:
        fns["projected"] = ProjectedRiemannianAdam([{"params": params(), "manifold": "stiefel"}], lr=lr).step
    if geoopt is not None:
        ps = params(geoopt.ManifoldParameter, manifold=geoopt.Stiefel())
        fns["geoopt"] = geoopt.optim.RiemannianAdam(ps, lr=lr, betas=(0.9, 0.99)).step
    t = _paired(_blocks(fns, "manifold_adam", REORTH // ROUNDS, clock), periods, clock)
    nan = [math.nan] * periods
    res = {f"{name}_ms": 1e3 * statistics.median(t.get(name, nan)) for name in (*fns, "projected", "geoopt")}
    ours = t["manifold_adam"]
    for name in ("floor", "geoopt", "adam", "adam_fused"):
        ratios = [a / b for a, b in zip(ours, t.get(name, nan))]
        res[f"ratio_vs_{name}"] = statistics.median(ratios)
        res[f"ratio_vs_{name}_range"] = (min(ratios), max(ratios))
    res["floor_vs_adam_fused"] = statistics.median(a / b for a, b in zip(t["floor"], t["adam_fused"]))
    res["periods"] = periods
    return res


def bench_manifold_adam(
    n: int = 512,
    p: int = 64,
    *,
    vit: tuple[int, int, int] | None = (336, 49, 7),
    dtype: torch.dtype = torch.float32,
    violation_steps: int = 10_000,
    lr: float = 1e-3,
    seed: int = 0,
    threads: int | None = 1,
    periods: int = 7,
    vit_periods: int = 3,
    install_geoopt: bool = True,
    clock: str = "cpu",
) -> list[dict]:
    """Time ManifoldAdam on one St(p, n) matrix and on ``vit`` = (k, N, p) matrices in one optimizer.

    Args:
        n, p: the single matrix's shape (n rows, p columns).
        vit: (k, N, p) of the many-small-matrices case, or None to skip it.
        dtype: dtype of the timed runs.
        violation_steps: steps of the drift runs on the single matrix (0 skips them).
        lr: learning rate of all runs.
        seed: seed of the points, gradients and sections.
        threads: torch intra-op threads during the benchmark (None leaves the setting alone).
        periods: paired periods of the single-matrix case (each 1000 ManifoldAdam steps and as long of each
            other variant; the ratios are medians over periods).
        vit_periods: paired periods of the many-matrices case (its ratio to geoopt is far from the target).
        install_geoopt: ``pip install geoopt`` if it is missing.
        clock: "cpu" (the thread's CPU time; robust on a shared machine) or "wall".

    Returns:
        One row per case: ``case``, ``k``, ``n``, ``p``, per-step milliseconds ``manifold_adam_ms``,
        ``floor_ms`` (:func:`gemm_floor`), ``adam_ms``, ``adam_fused_ms``, ``projected_ms`` (single matrix
        only), ``geoopt_ms`` (medians over periods); paired ratios ``ratio_vs_floor``, ``ratio_vs_geoopt``,
        ``ratio_vs_adam``, ``ratio_vs_adam_fused`` (medians over periods, each with ``…_range``, its smallest and
        largest period), ``floor_vs_adam_fused``, ``periods``; ``violation_float32``/``violation_float64``
        and ``worst_violation_*`` (single matrix), ``clock``, ``geoopt`` (version or why it is missing),
        ``load`` (1-minute load average at the start) and the settings.
    """
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        geoopt, note = load_geoopt(install_geoopt)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
        common = dict(dtype=str(dtype).replace("torch.", ""), threads=threads, clock=clock, geoopt=note, load=load)
        rows = [dict(case=f"St({p},{n})", k=1, n=n, p=p, **common)]
        rows[0].update(_case(1, n, p, dtype, lr, seed, geoopt, periods, True, clock))
        rows[0]["violation_steps"] = violation_steps
        if violation_steps:
            for dt in (torch.float32, torch.float64):
                name = str(dt).replace("torch.", "")
                rows[0][f"violation_{name}"], rows[0][f"worst_violation_{name}"] = _violation(
                    n, p, violation_steps, dt, seed, lr
                )
        if vit is not None:
            k, N, q = vit
            row = dict(case=f"{k}xSt({q},{N})", k=k, n=N, p=q, **common)
            row.update(_case(k, N, q, dtype, lr, seed, geoopt, vit_periods, False, clock))
            rows.append(row)
        return rows
    finally:
        torch.set_num_threads(old_threads)


def _print(rows: list[dict]) -> None:
    for r in rows:
        head = f"{r['case']} ({r['k']} x {r['n']}x{r['p']}), {r['dtype']}, {r['threads']} thread(s)"
        print(f"{head}, {r['clock']} clock, load {r['load']:.2f}")
        for name in ("manifold_adam", "floor", "adam", "adam_fused", "projected", "geoopt"):
            if not math.isnan(r[f"{name}_ms"]):
                print(f"  {name:<16}{r[f'{name}_ms']:>10.3f} ms")
        (lo, hi), (glo, ghi) = r["ratio_vs_floor_range"], r["ratio_vs_geoopt_range"]
        print(
            f"  ManifoldAdam / floor {r['ratio_vs_floor']:.2f} (periods {lo:.2f}-{hi:.2f}), "
            f"/ geoopt {r['ratio_vs_geoopt']:.3f} ({glo:.3f}-{ghi:.3f}), "
            f"/ Adam {r['ratio_vs_adam']:.2f}, / fused Adam {r['ratio_vs_adam_fused']:.2f}; "
            f"floor / fused Adam {r['floor_vs_adam_fused']:.2f}"
        )
        if r.get("violation_steps"):
            print(f"  ||Y^T Y - I||_F after {r['violation_steps']} steps (largest seen): "
                  f"float32 {r['violation_float32']:.2e} ({r['worst_violation_float32']:.2e}), "
                  f"float64 {r['violation_float64']:.2e} ({r['worst_violation_float64']:.2e})")  # fmt: skip
    print(rows[0]["geoopt"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="independent runs; medians of the ratios are printed")
    ap.add_argument("--violation-steps", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-install", action="store_true", help="do not pip install geoopt if it is missing")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    ap.add_argument("--no-vit", action="store_true", help="skip the 336 x St(7, 49) case")
    ap.add_argument("--periods", type=int, default=7, help="paired periods of the St(64, 512) case")
    args = ap.parse_args(argv)
    runs = []
    for i in range(args.repeat):
        rows = bench_manifold_adam(
            violation_steps=args.violation_steps if i == 0 else 0,
            threads=args.threads,
            install_geoopt=not args.no_install,
            clock=args.clock,
            vit=None if args.no_vit else (336, 49, 7),
            periods=args.periods,
        )
        print(f"== run {i + 1}/{args.repeat}")
        _print(rows)
        runs.append(rows)
    if args.repeat > 1:
        print(f"== medians over {args.repeat} runs")
        for j, r in enumerate(runs[0]):
            med = {
                key: statistics.median(run[j][key] for run in runs)
                for key in ("ratio_vs_floor", "ratio_vs_geoopt", "ratio_vs_adam", "ratio_vs_adam_fused", "load")
            }
            print(f"  {r['case']}: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))


if __name__ == "__main__":
    main()
