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
- :func:`bench_gemm_ratio`: every model family's train step at batch 20,000 over one 512×512×512 float32 GEMM
  timed in the same interleaved run (issue 15), with the fused kernels and with the torch code.
- :func:`bench_paper_profile`: Ahn et al.'s paper profile (20,000 steps at batch 20,000) extrapolated from a
  measured block of ``resample_every`` Trainer steps, 3-layer sparse and GD++ LSA, 2 threads.

``ICL_BENCH_DEVICE=cuda`` runs the last two on that device (the GEMM yardstick too).
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

from icl.prompts import PromptConfig, PromptDistribution, sample_tokens
from icl.seeding import Streams
from icl.training import TrainConfig, Trainer, query_mse
from learned_optimizers import build_model, fused

# -- timing ------------------------------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 2, budget_s: float | None = None):
    """Median seconds per call of each function, timed A, B, A, B, … (``reps`` rounds after ``warmup``).

    ``budget_s`` stops early (after at least 3 rounds) once the rounds have taken that long.
    """
    wall, _cpu, rounds = interleaved_wall_cpu(fns, reps, warmup, budget_s)
    return wall, rounds


def interleaved_wall_cpu(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 2, budget_s: float | None = None):
    """:func:`interleaved`, also returning the median CPU seconds of the calling thread per call (on a machine
    shared by more jobs than cores the wall clock also counts other jobs' time slices, the thread's CPU time
    does not); returns (wall medians, CPU medians, rounds)."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(reps):
        for k, f in fns.items():
            c0, t0 = time.thread_time(), time.perf_counter()
            f()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.thread_time() - c0)
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break
    med = statistics.median
    return {k: med(v) for k, v in wall.items()}, {k: med(v) for k, v in cpu.items()}, len(wall[next(iter(fns))])


def synchronized(fn: Callable[[], Any], device: str) -> Callable[[], None]:
    """``fn`` followed by a device synchronisation where the device runs asynchronously (CUDA)."""
    if device != "cuda":
        return fn

    def call() -> None:
        fn()
        torch.cuda.synchronize()

    return call


def bench_device() -> str:
    """The device of the issue-15 benchmarks: ``$ICL_BENCH_DEVICE`` (default cpu)."""
    device = os.environ.get("ICL_BENCH_DEVICE", "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("ICL_BENCH_DEVICE=cuda but CUDA is not available on this machine")
    return device


class threads:
    """Context manager: torch's intra-op threads set to ``k`` (the fused kernels follow it), restored after."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.k)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


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
    4 layers; the step includes drawing the batch when it is resampled.

    With a fresh batch every step the same run also times the floor of the target: the S seeds' sampling alone
    (:func:`icl.prompts.sample_tokens`, what every step of the S-seed trainer draws) and a raw ``torch.randn`` of
    as many normals as those batches hold (the draws no sampler can skip: each seed's prompts are its own
    generator's), each over one seed's whole step, and the ratio the S-seed step would have if its sampling
    cost only those normals (its step minus its sampling plus the raw draws, over one seed's step). The ratios
    are also given in CPU time of the timing thread (``_cpu``; torch runs in that thread at 1 thread), which a
    machine shared by more jobs than cores inflates less than the wall clock; the floor is given in CPU time.
    """
    d, n, layers = (3, 10, 2) if quick else (5, 20, 4)
    settings = ((64, 1),) if quick else ((256, 100), (256, 1), (1024, 100), (1024, 1))
    rows = []
    for batch, resample in settings:
        one, many = _seed_batch(1, d, n, batch, layers, resample), _seed_batch(S, d, n, batch, layers, resample)
        fns = {"trainer_1": one.train_step, f"batch_{S}": many.train_step}
        if resample == 1:
            gen = torch.Generator().manual_seed(0)
            normals = S * batch * ((n + 1) * d + d)  # g (B, n+1, d) and w* (B, d) per seed: a noiseless law
            fns["sampling"] = lambda many=many, batch=batch: sample_tokens(many.dists, batch, many.gens)
            fns["randn"] = lambda gen=gen, normals=normals: torch.randn(normals, generator=gen)
        med, cpu, reps = interleaved_wall_cpu(fns, reps=5 if quick else 60, warmup=3, budget_s=2 if quick else 30)
        ratio = med[f"batch_{S}"] / med["trainer_1"]
        row = {
            "S": S, "batch": batch, "resample_every": resample, "reps": reps,
            "trainer_1seed_ms": 1e3 * med["trainer_1"],
            f"vectorised_{S}seeds_ms": 1e3 * med[f"batch_{S}"], "ratio_vs_1seed": ratio,
            "ratio_vs_1seed_cpu": cpu[f"batch_{S}"] / cpu["trainer_1"],
            "sequential_equivalent": float(S), "target": "<= 2.5", "ok": _ok(ratio <= 2.5, quick),
        }  # fmt: skip
        if resample == 1:
            one = cpu["trainer_1"]
            row.update({
                f"sampling_{S}seeds_cpu_ms": 1e3 * cpu["sampling"], "sampling_vs_1seed_step_cpu": cpu["sampling"] / one,
                f"randn_{S}seeds_cpu_ms": 1e3 * cpu["randn"], "randn_vs_1seed_step_cpu": cpu["randn"] / one,
                "ratio_if_sampling_were_randn_cpu": (cpu[f"batch_{S}"] - cpu["sampling"] + cpu["randn"]) / one,
            })  # fmt: skip
        rows.append(row)
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


# -- issue 15: every family's step against the CPU's arithmetic rate ------------------------------------------

#: model -> (kind, config, target ratio to the GEMM or None); d = 5, n = 20, L = 3, batch 20,000
GEMM_RATIO_MODELS: dict[str, tuple[str, dict[str, Any], float | None]] = {
    "sparse LSA": ("lsa", {"mode": "sparse"}, 2.0),
    "GD++ LSA": ("lsa", {"mode": "gdpp"}, 10.0),
    "full LSA": ("lsa", {"mode": "full"}, 10.0),
    "CGD-like Memformer": ("memformer", {"memory": "cgd"}, 10.0),
    "diag LSA": ("lsa", {"mode": "diag"}, None),
    "factorised LSA": ("lsa", {"mode": "factorised"}, None),
    "full LSA, 4 heads": ("lsa", {"mode": "full", "heads": 4}, None),
    "GD++ LSA, tied": ("lsa", {"mode": "gdpp", "tied": True}, None),
    "LFOM Memformer, feature Γ": ("memformer", {"memory": "lfom", "gamma_shape": "feature", "gamma_init": "ones"},
                                  None),
    "CGD-like Memformer, full P, Q": ("memformer", {"memory": "cgd", "mode": "full"}, None),
}


def _build(kind: str, cfg: dict[str, Any], d: int, layers: int) -> nn.Module:
    cfg = dict(cfg)
    if kind == "memformer":
        att = {"layers": layers, **{k: cfg.pop(k) for k in ("mode", "heads", "tied") if k in cfg}}
        cfg["attention"] = att
    else:
        cfg["layers"] = layers
    return build_model(kind, d, cfg, generator=torch.Generator().manual_seed(1))


def gemm_yardstick(size: int = 512, device: str = "cpu") -> tuple[Callable[[], None], Callable[[], float]]:
    """One size³ float32 GEMM C = A B (alpha = 1, beta = 0, random non-zero factors, so BLAS can skip nothing)
    into a preallocated C; returns the call and a check: the relative error of C against A B in float64."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device)
    b = torch.randn(size, size, generator=g).to(device)
    c = torch.zeros(size, size, device=device)

    def error() -> float:
        ref = a.double() @ b.double()
        return float((c.double() - ref).abs().max() / ref.abs().max())

    return synchronized(lambda: torch.matmul(a, b, out=c), device), error


def bench_gemm_ratio(quick: bool = False, repeats: int = 1) -> list[dict[str, Any]]:
    """Train step (forward of the public model API, backward, torch Adam) of every model family at batch 20,000,
    d = 5, n = 20, L = 3, float32, one thread, over one 512³ float32 GEMM, all timed interleaved in one run
    (medians of the wall clock; ``cpu_step_per_gemm`` is the same ratio of the thread's CPU time, which other
    jobs' time slices on a shared machine do not inflate); the four issue-15 models also with the fused
    kernels off (their torch code). Targets (wall clock): sparse ≤ 2, GD++ / full / CGD-like Memformer ≤ 10."""
    device = bench_device()
    d, n, layers, batch = (5, 20, 3, 2000) if quick else (5, 20, 3, 20_000)
    rows = []
    with threads(1):
        gemm, check = gemm_yardstick(device=device)
        gemm()
        gemm_error = check()  # the yardstick really computed A B
        Z, y = tokens(d, n, batch, device=device)
        fns: dict[str, Callable[[], None]] = {"gemm": gemm}
        for name, (kind, cfg, target) in GEMM_RATIO_MODELS.items():
            model = _build(kind, cfg, d, layers).to(device)
            fns[name] = synchronized(step_fn(model, Z, y), device)
            if target is not None and device == "cpu":
                torch_step = step_fn(_build(kind, cfg, d, layers), Z, y)

                def unfused(step: Callable[[], None] = torch_step) -> None:
                    with fused.disabled():
                        step()

                fns[name + " (torch)"] = unfused
        for _ in range(repeats):
            med, cpu, reps = interleaved_wall_cpu(fns, reps=3 if quick else 11, budget_s=3 if quick else 60)
            g = med["gemm"]
            for name, (_kind, _cfg, target) in GEMM_RATIO_MODELS.items():
                ratio = med[name] / g
                unfused = med.get(name + " (torch)")
                rows.append({
                    "model": name, "batch": batch, "layers": layers, "device": device, "reps": reps,
                    "fused": fused.usable(Z) if device == "cpu" else False, "step_ms": 1e3 * med[name],
                    "gemm_ms": 1e3 * g, "gemm_gflops": 2 * 512**3 / g / 1e9, "gemm_rel_error": gemm_error,
                    "step_per_gemm": ratio, "cpu_step_per_gemm": cpu[name] / cpu["gemm"] if device == "cpu" else "",
                    "torch_step_per_gemm": "" if unfused is None else unfused / g,
                    "target": "" if target is None else f"<= {target:g}",
                    "ok": "" if target is None else _ok(ratio <= target, quick),
                })  # fmt: skip
    return rows


def bench_paper_profile(quick: bool = False, n_threads: int = 2) -> list[dict[str, Any]]:
    """Wall time of Ahn et al.'s paper profile (20,000 AdamW steps at batch 20,000, d = 5, n = 20, a fresh batch
    every 100 steps, per-matrix clipping) for a 3-layer sparse and a 3-layer GD++ LSA on ``n_threads`` threads,
    extrapolated from one measured block of 100 :class:`icl.training.Trainer` steps (sampling included), the
    held-out evaluations left out; ``cpu_ms_all_threads`` is the process's CPU time per step (all threads).
    Target: under 10 minutes each."""
    device = bench_device()
    steps, batch, block = (200, 2000, 20) if quick else (20_000, 20_000, 100)
    rows = []
    with threads(n_threads):
        for mode in ("sparse", "gdpp"):
            cfg = TrainConfig(steps=steps, batch_size=batch, optimizer="adamw", lr=0.01, betas=(0.99, 0.9),
                              clip="per_matrix", clip_value=0.01, resample_every=block, schedule="step",
                              halve_every=4000, eval_batch=256)  # fmt: skip
            st = Streams(0)
            model = build_model("lsa", 5, {"layers": 3, "mode": mode}, generator=st.generator("init")).to(device)
            dist = PromptDistribution(PromptConfig(d=5, n=20), generator=st.generator("rotation"))
            trainer = Trainer(model, dist, cfg, st, device=device, quiet=True)
            for _ in range(block):  # warm-up: one whole block
                trainer.train_step()
            if device == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(block):  # starts at a block boundary: one batch drawn, block - 1 reused
                loss, _, _ = trainer.train_step()
            float(loss)  # the steps are done (a host read)
            per_step = (time.perf_counter() - t0) / block
            cpu_per_step = (time.process_time() - c0) / block
            total = per_step * steps
            rows.append({
                "model": f"lsa {mode}", "layers": 3, "batch": batch, "steps": steps, "threads": n_threads,
                "device": device, "measured_steps": block, "step_ms": 1e3 * per_step,
                "cpu_ms_all_threads": 1e3 * cpu_per_step, "extrapolated_min": total / 60,
                "target": "< 10 min", "ok": _ok(total < 600, quick),
            })  # fmt: skip
    return rows
