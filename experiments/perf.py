"""The training-step benchmarks of issue #8 (registered in :mod:`experiments.benchmarks`).

Every comparison is a ratio measured in one run: the compared variants are timed interleaved (A, B, A, B, …)
after a warm-up, and each variant's median is taken, so that a machine shared with other jobs slows all of
them alike. A *train step* is forward + backward + one Adam step on a fixed batch (sampling excluded unless a
row says otherwise).

- :func:`bench_lsa_vs_quadratic`: the package's LSA against the textbook quadratic form written here (the
  (n+1)×(n+1) score matrix, Attn = P Z M (Zᵀ Q Z) as in the original notebooks).
- :func:`bench_scaling_n`: step time at n = 1000 over n = 100 (linear would be 10).
- :func:`bench_seed_batch`: S = 8 seeds in one :class:`icl.training.Trainer` against one seed.
- :func:`bench_throughput`: prompts per second of the Memformers, the LSA and the softmax GPT.
- :func:`bench_peak_memory`: peak memory of one train step per configuration, each in a fresh subprocess.
- :func:`bench_compile`: ``torch.compile`` of the loss against eager.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from icl.prompts import PromptConfig, PromptDistribution
from icl.seeding import Streams
from icl.training import TrainConfig, Trainer, query_mse
from learned_optimizers import build_model

# -- timing ------------------------------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 2, budget_s: float | None = None):
    """Median seconds per call of each function, timed A, B, A, B, … (``reps`` rounds after ``warmup``).

    ``budget_s`` stops early (after at least 3 rounds) once the rounds have taken that long.
    """
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {k: statistics.median(v) for k, v in times.items()}, len(times[next(iter(fns))])


def tokens(d: int, n: int, batch: int, seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of regression prompts (B, n+1, d+1) and its query targets."""
    dist = PromptDistribution(PromptConfig(d=d, n=n, rotation="identity"))
    b = dist.sample(batch, torch.Generator(device).manual_seed(seed))
    return b.Z(), b.y_query


def step_fn(model: nn.Module, Z: torch.Tensor, y: torch.Tensor, lr: float = 1e-3) -> Callable[[], None]:
    """One train step (forward, backward, Adam step) of ``model`` on the fixed batch."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        query_mse(model(Z, check=False), y).backward()
        opt.step()

    return step


def _ok(passed: bool, quick: bool, mode: str = "sparse") -> bool | str:
    """Whether a target is met; targets apply to the full sizes of the default (sparse) model only."""
    if mode != "sparse":
        return ""
    return "n/a (quick)" if quick else bool(passed)


# -- the quadratic baseline --------------------------------------------------------------------------------


class QuadraticLSA(nn.Module):
    """The textbook LSA of the original notebooks, in their column layout Z ∈ R^{(d+1)×(n+1)} per prompt:

        Z ← Z + (1/n) · P Z M (Zᵀ Q Z),   M = diag(1, …, 1, 0),

    with the (n+1)×(n+1) score matrix formed explicitly, and the sparse P = [[0, 0], [0, 1]],
    Q = −[[A, 0], [0, 0]] built by padding A in every layer (Ahn et al.'s parametrization). Baseline only.
    """

    def __init__(self, d: int, layers: int, init_std: float = 0.01, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(layers, d, d, generator=g) * init_std)
        self.d, self.layers = d, layers

    def forward(self, Z: torch.Tensor, check: bool = False) -> torch.Tensor:
        Z = Z.transpose(1, 2)  # (B, d+1, n+1): columns are tokens
        n = Z.shape[-1] - 1
        M = torch.ones(n + 1, dtype=Z.dtype, device=Z.device)
        M[n] = 0.0
        for layer in range(self.layers):
            Q = -torch.nn.functional.pad(self.A[layer], (0, 1, 0, 1))
            P = torch.zeros_like(Q)
            P[-1, -1] = 1.0
            scores = Z.transpose(1, 2) @ Q @ Z  # (B, n+1, n+1)
            Z = Z + (P @ (Z * M)) @ scores / n
        return -Z[:, -1, -1]


# -- benchmarks --------------------------------------------------------------------------------------------

LSA_CONFIGS = ((5, 20, 1000, 4, 2.5), (5, 100, 1000, 4, 15.0), (10, 500, 256, 4, 50.0))


def bench_lsa_vs_quadratic(quick: bool = False) -> list[dict[str, Any]]:
    """Train-step time of the package's LSA (sparse, Ahn et al.; and full P, Q) against the quadratic form."""
    configs = ((3, 10, 64, 2, 2.5), (3, 40, 64, 2, 15.0)) if quick else LSA_CONFIGS
    rows = []
    for d, n, batch, layers, target in configs:
        Z, y = tokens(d, n, batch)
        fns = {}
        for mode in ("sparse", "full"):
            model = build_model("lsa", d, {"layers": layers, "mode": mode}, generator=torch.Generator().manual_seed(1))
            fns[mode] = step_fn(model, Z, y)
        fns["quadratic"] = step_fn(QuadraticLSA(d, layers), Z, y)
        med, reps = interleaved(fns, reps=3 if quick else 15, budget_s=2 if quick else 30)
        for mode in ("sparse", "full"):
            ratio = med["quadratic"] / med[mode]
            rows.append({
                "d": d, "n": n, "batch": batch, "layers": layers, "mode": mode, "reps": reps,
                "lsa_ms": 1e3 * med[mode], "quadratic_ms": 1e3 * med["quadratic"], "speedup": ratio,
                "target": f">= {target:g}" if mode == "sparse" else "", "ok": _ok(ratio >= target, quick, mode),
            })  # fmt: skip
    return rows


def bench_scaling_n(quick: bool = False) -> list[dict[str, Any]]:
    """Step time at n = 1000 over n = 100 (d = 5, batch 1000, 4 layers); linear is 10, the target at most 12."""
    d, batch, layers = (3, 64, 2) if quick else (5, 1000, 4)
    small, large = (10, 100) if quick else (100, 1000)
    rows = []
    for mode in ("sparse", "full"):
        fns = {}
        for n in (small, large):
            Z, y = tokens(d, n, batch)
            model = build_model("lsa", d, {"layers": layers, "mode": mode}, generator=torch.Generator().manual_seed(1))
            fns[n] = step_fn(model, Z, y)
        med, reps = interleaved(fns, reps=3 if quick else 21, budget_s=2 if quick else 40)
        ratio = med[large] / med[small]
        rows.append({
            "mode": mode, "d": d, "batch": batch, "layers": layers, "reps": reps,
            f"ms_n{small}": 1e3 * med[small], f"ms_n{large}": 1e3 * med[large], "ratio": ratio,
            "linear": large / small, "target": "<= 12", "ok": _ok(ratio <= 12, quick, mode),
        })  # fmt: skip
    return rows


def _seed_batch(S: int, d: int, n: int, batch: int, layers: int, resample_every: int) -> Trainer:
    cfg = TrainConfig(batch_size=batch, eval_batch=64, resample_every=resample_every, optimizer="adam")
    streams = [Streams(s) for s in range(S)]
    prompt = PromptConfig(d=d, n=n)
    models = [build_model("lsa", d, {"layers": layers}, generator=st.generator("init")) for st in streams]
    dists = [PromptDistribution(prompt, generator=st.generator("rotation")) for st in streams]
    return Trainer(models, dists, cfg, streams, quiet=True)


def bench_seed_batch(quick: bool = False, S: int = 8) -> list[dict[str, Any]]:
    """S seeds in one stacked step against one seed (the same Trainer with S = 1), sparse LSA, d = 5, n = 20,
    4 layers; the step includes drawing the batch when it is resampled."""
    d, n, layers = (3, 10, 2) if quick else (5, 20, 4)
    settings = ((64, 1),) if quick else ((256, 100), (256, 1), (1024, 100), (1024, 1))
    rows = []
    for batch, resample in settings:
        fns = {
            "trainer_1": _seed_batch(1, d, n, batch, layers, resample).train_step,
            f"batch_{S}": _seed_batch(S, d, n, batch, layers, resample).train_step,
        }
        med, reps = interleaved(fns, reps=5 if quick else 60, warmup=3, budget_s=2 if quick else 30)
        ratio = med[f"batch_{S}"] / med["trainer_1"]
        rows.append({
            "S": S, "batch": batch, "resample_every": resample, "reps": reps,
            "trainer_1seed_ms": 1e3 * med["trainer_1"],
            f"vectorised_{S}seeds_ms": 1e3 * med[f"batch_{S}"], "ratio_vs_1seed": ratio,
            "sequential_equivalent": float(S), "target": "<= 2.5", "ok": _ok(ratio <= 2.5, quick),
        })  # fmt: skip
    return rows


THROUGHPUT_MODELS = {
    "lsa (sparse)": ("lsa", {"layers": 4}),
    "lsa (full)": ("lsa", {"layers": 4, "mode": "full"}),
    "memformer cgd": ("memformer", {"attention": {"layers": 4}, "memory": "cgd"}),
    "memformer lfom": ("memformer", {"attention": {"layers": 4}, "memory": "lfom", "gamma_shape": "feature"}),
    "memformer lfom full Γ": ("memformer", {"attention": {"layers": 4}, "memory": "lfom", "gamma_shape": "full"}),
    "gpt (softmax)": ("gpt", {"layers": 4, "heads": 4, "width": 64}),
}


def bench_throughput(quick: bool = False) -> list[dict[str, Any]]:
    """Training prompts per second (forward, backward and Adam step on a fixed batch), d = 5, n = 20."""
    d, n, batch = (3, 10, 64) if quick else (5, 20, 1000)
    Z, y = tokens(d, n, batch)
    fns = {}
    for name, (kind, cfg) in THROUGHPUT_MODELS.items():
        cfg = dict(cfg)
        if kind == "gpt":
            cfg["max_points"] = n
        if cfg.get("gamma_shape") == "full":
            cfg["n"] = n
        model = build_model(kind, d, cfg, generator=torch.Generator().manual_seed(1))
        fns[name] = step_fn(model, Z, y)
    med, reps = interleaved(fns, reps=3 if quick else 15, budget_s=2 if quick else 40)
    return [
        {"model": k, "d": d, "n": n, "batch": batch, "layers": 4, "reps": reps, "step_ms": 1e3 * v,
         "prompts_per_s": batch / v}
        for k, v in med.items()
    ]  # fmt: skip


# -- peak memory -------------------------------------------------------------------------------------------


def _peak_memory_child(kind: str, d: int, n: int, batch: int, layers: int, device: str) -> dict[str, Any]:
    """Run in a fresh interpreter: peak memory of 3 train steps above what the data and model hold."""
    import resource

    Z, y = tokens(d, n, batch, device=device)
    model = QuadraticLSA(d, layers) if kind == "quadratic" else build_model("lsa", d, {"layers": layers, "mode": kind})
    model = model.to(device)
    step = step_fn(model, Z, y)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        return {"peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20, "method": "cuda max_memory_allocated"}
    status = "/proc/self/status"
    if os.path.exists(status) and os.path.exists("/proc/self/clear_refs"):
        # Linux: reset the peak RSS of this process to its current RSS, then read the new peak (VmHWM). The
        # rusage maximum can not be used here: exec keeps the forking parent's peak in it.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kib(status, "VmRSS")
        for _ in range(3):
            step()
        peak = _status_kib(status, "VmHWM")
        return {"peak_mib": (peak - base) / 1024, "method": "Linux VmHWM after clear_refs, minus VmRSS, subprocess"}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in KiB on Linux, bytes on macOS
    return {"peak_mib": (after - before) * scale / 2**20, "method": "getrusage maxrss delta, subprocess"}


def _status_kib(path: str, field: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in {path}")


def bench_peak_memory(quick: bool = False, device: str = "cpu") -> list[dict[str, Any]]:
    """Peak memory of a train step per configuration, each measured in its own subprocess: on Linux CPUs the
    peak resident set (VmHWM, reset through /proc/self/clear_refs) over 3 steps above the resident set with the
    data and model in place; elsewhere the growth of ``getrusage``'s maximum; on CUDA
    ``torch.cuda.max_memory_allocated`` above the allocated memory before the steps."""
    configs = ((3, 10, 64, 2),) if quick else tuple(c[:4] for c in LSA_CONFIGS) + ((5, 1000, 1000, 4),)
    rows = []
    for d, n, batch, layers in configs:
        for kind in ("sparse",) if quick else ("sparse", "quadratic"):
            if kind == "quadratic" and n >= 1000:
                continue  # the (n+1)² score matrices of 1000 prompts: gigabytes, not run
            code = (
                "import json; from experiments.perf import _peak_memory_child; "
                f"print(json.dumps(_peak_memory_child({kind!r}, {d}, {n}, {batch}, {layers}, {device!r})))"
            )
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
            if out.returncode != 0:
                rows.append({"d": d, "n": n, "batch": batch, "layers": layers, "model": kind,
                             "error": out.stderr.strip().splitlines()[-1:]})  # fmt: skip
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"d": d, "n": n, "batch": batch, "layers": layers, "model": kind, **res})
    return rows


# -- torch.compile -----------------------------------------------------------------------------------------


def bench_compile(quick: bool = False) -> list[dict[str, Any]]:
    """``torch.compile`` of the loss against eager, sparse and full LSA (d = 5, n = 20, batch 1000, 4 layers):
    the compile time and the step-time ratio. Opt-in (``ICL_BENCH_COMPILE=1``), never in quick mode: a cold
    compile takes minutes on 2 cores, which would break the full bench's 10-minute budget."""
    if quick or not os.environ.get("ICL_BENCH_COMPILE"):
        return [{"mode": "-", "note": "skipped: set ICL_BENCH_COMPILE=1 (a cold compile takes ~2 minutes on 2 "
                 "cores; see docs/performance.md for a measured run)"}]  # fmt: skip
    d, n, batch, layers = 5, 20, 1000, 4
    Z, y = tokens(d, n, batch)
    rows = []
    for mode in ("sparse", "full"):
        model = build_model("lsa", d, {"layers": layers, "mode": mode}, generator=torch.Generator().manual_seed(1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def loss_fn(model: nn.Module = model) -> torch.Tensor:
            return query_mse(model(Z, check=False), y)

        try:
            compiled = torch.compile(loss_fn)
            t0 = time.perf_counter()
            compiled().backward()
            compile_s = time.perf_counter() - t0
        except Exception as e:  # no compiler toolchain, unsupported platform, …
            rows.append({"mode": mode, "note": f"torch.compile unavailable: {type(e).__name__}: {str(e)[:120]}"})
            continue

        def runner(f: Callable[[], torch.Tensor], opt: torch.optim.Optimizer = opt) -> Callable[[], None]:
            def step() -> None:
                opt.zero_grad(set_to_none=True)
                f().backward()
                opt.step()

            return step

        med, reps = interleaved({"eager": runner(loss_fn), "compiled": runner(compiled)}, reps=30, budget_s=20)
        rows.append({
            "mode": mode, "reps": reps, "compile_s": compile_s, "eager_ms": 1e3 * med["eager"],
            "compiled_ms": 1e3 * med["compiled"], "speedup": med["eager"] / med["compiled"],
        })  # fmt: skip
    return rows
