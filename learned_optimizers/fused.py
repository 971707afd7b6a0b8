"""Fused CPU kernels for the Gram-space forward and backward of the LSA family (issue 15).

The Gram-space forward (:meth:`LinearSelfAttention.forward_gram`, :meth:`Memformer.forward_gram`) is a chain of
tiny per-prompt (d+1)×(d+1) products, which torch runs as batched GEMMs far below the CPU's arithmetic rate.
Here the whole chain, forward and hand-written backward, runs in one C kernel
(``csrc/gram_space.c``) that holds 16 prompts at a time batch-last (structure of arrays) in L1 and
vectorises every multiply-add over them; only the weight gradient's reduction over the batch,
dK = Σ_b vec(G_ℓ) vec(dW_ℓ)ᵀ, is left to one GEMM in torch.

Every model of the family reduces to one recursion on T_ℓ (Z_ℓ = Z_0 T_ℓ):

    G_ℓ = T_ℓᵀ G_0 T_ℓ,   W_ℓ = K_ℓ(G_ℓ) = Σ_h Q_hᵀ G_ℓ P_hᵀ,   U_ℓ = T_ℓ W_ℓ,
    T_{ℓ+1} = T_ℓ + (1/n) Σ_{j≤ℓ} U_j diag(c_{ℓj}),   T_0 = I,   ŷ = −z_qᵀ T_L e_y,

with the layer's linear map K_ℓ on the symmetric G_ℓ (:func:`gram_maps`, any mode, heads summed) and the memory
coefficients c (:func:`plain_memory` for the LSA, c_{ℓj} = α_ℓ Π_{j<k≤ℓ} γ_k for the CGD-like Memformer, Γ_j^ℓ
for LFOM with a scalar or per-feature Γ). Gradients reach the weights through K and c by ordinary autograd.
The sparse mode (Ahn et al.) has its own O(L·d²) kernel on g = X_ctxᵀ y_ctx (Lemma 1).

The kernel is compiled on first use for each token width d+1 and dtype (float32, float64) with the system C
compiler (``cc -O3 -march=native``, without ``-march=native`` where the compiler refuses it; about a second;
cached under ``$ICL_KERNEL_CACHE`` or ``~/.cache/icl-optimizers``) and loaded with ctypes. Where there is no
compiler, the tensors are not on the CPU or not float32/float64, the data need a gradient, while
``torch.compile`` traces, with ``ICL_FUSED=0`` or inside :func:`disabled`, :func:`usable` is False and the
models run their torch code (the same numbers up to rounding; tests check both against the token recursion).
Under ``torch.func.vmap`` (the seed batch) the seeds are folded into the kernel's leading dimension.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from einops import einsum

SOURCE = Path(__file__).parent / "csrc" / "gram_space.c"
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-pthread")
_CTYPES = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}
_off: dict[int, int] = {}  # thread ident -> depth of the disabled() blocks it is in (a threading.local's
# attribute read took ~12 us after a kernel step had evicted it from the cache; an empty dict's test is one read)
_lock = threading.Lock()


# ``os.environ`` reads through four Python-level calls (Mapping.get, __getitem__, encodekey, decodevalue); after a
# kernel step has evicted them from the core's cache, ``enabled()`` took 15-24 us of a 0.9 ms ManifoldAdam step.
# CPython keeps the variables in one dict, ``os.environ._data``, updated in place by every write through
# os.environ (monkeypatch.setenv too): read it directly where it exists.
_ENV = getattr(os.environ, "_data", None)
_KEY = _OFF = None
if isinstance(_ENV, dict) and hasattr(os.environ, "encodekey") and hasattr(os.environ, "encodevalue"):
    _KEY, _OFF = os.environ.encodekey("ICL_FUSED"), os.environ.encodevalue("0")


def enabled() -> bool:
    """Whether the fused kernels may be used at all (``ICL_FUSED=0`` and :func:`disabled` turn them off)."""
    if _KEY is not None:
        if _ENV.get(_KEY) == _OFF:
            return False
    elif os.environ.get("ICL_FUSED", "1") == "0":
        return False
    return not (_off and threading.get_ident() in _off)


@contextmanager
def disabled() -> Iterator[None]:
    """Run the models' torch code instead of the fused kernels in this thread (tests compare the two)."""
    ident = threading.get_ident()
    with _lock:
        _off[ident] = _off.get(ident, 0) + 1
    try:
        yield
    finally:
        with _lock:
            if _off[ident] == 1:
                del _off[ident]
            else:
                _off[ident] -= 1


def _cache_dir() -> Path:
    root = os.environ.get("ICL_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "icl-optimizers"
    )
    return Path(root) / "kernels"


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and its flags (a cached kernel is never run on another CPU)."""
    info = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            info += "".join(sorted({ln for ln in f if ln.startswith(("model name", "flags"))}))
    except OSError:
        pass
    return info


def build_library(source: str, name: str, flags: tuple[str, ...], libs: tuple[str, ...] = ()
                  ) -> tuple[ctypes.CDLL | None, str]:  # fmt: skip
    """Compile C ``source`` into a shared library with the system compiler, cached; the one build routine of the
    project's kernels (these LSA kernels, ManifoldAdam's Cayley solve).

    The cache file's name carries a hash of the source, the compiler, ``flags`` and the CPU (``-march=native``
    code never runs on another CPU); it is written atomically, so concurrent processes see the whole file or none.
    Without ``-march=native`` where the compiler refuses it.

    Returns:
        ``(library, "")``, or ``(None, why)`` where no compiler is found or building or loading fails.
    """
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None, "no C compiler (cc) found"
    key = hashlib.sha256((source + " ".join([cc, *flags, *libs]) + _cpu_id()).encode()).hexdigest()[:16]
    path = _cache_dir() / f"{name}_{key}.so"
    with _lock:
        if not path.exists():
            errors = []
            for attempt in (flags, tuple(f for f in flags if f != "-march=native")):
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                        src, out = Path(tmp) / f"{name}.c", Path(tmp) / path.name
                        src.write_text(source)
                        subprocess.run([cc, *attempt, "-o", str(out), str(src), *libs], check=True,
                                       capture_output=True, text=True, timeout=120)  # fmt: skip
                        os.replace(out, path)
                    break
                except (OSError, subprocess.SubprocessError) as err:
                    errors.append(str(getattr(err, "stderr", "") or err).strip()[:300])
            else:
                return None, f"building {name} failed: {errors[-1]}"
        try:
            return ctypes.CDLL(str(path)), ""
        except OSError as err:
            return None, f"loading {path} failed: {err}"


@functools.cache
def library(e: int, dtype: torch.dtype) -> ctypes.CDLL | None:
    """The kernel for tokens of width e = d+1 in ``dtype``, built on first use; None where it can not be built."""
    if dtype not in _CTYPES or not 2 <= e <= 64:
        return None
    real = "float" if dtype == torch.float32 else "double"
    lib, why = build_library(SOURCE.read_text(), f"gram_space_e{e}_{real}", (*FLAGS, f"-DE={e}", f"-DREAL={real}"))
    if lib is None:
        _warn(why)
        return None
    real_t, ptr, i64, i32 = _CTYPES[dtype], ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    lib.context_gram.argtypes = [i64, i64, ptr, ptr, ptr, i32]
    lib.gram_space_forward.argtypes = [i64, i64, i32, ptr, ptr, ptr, ptr, ptr, real_t, ptr, i32]
    lib.gram_space_backward.argtypes = [i64, i64, i32, ptr, ptr, ptr, ptr, ptr, real_t, ptr, ptr, ptr, i32]
    lib.sparse_forward.argtypes = [i64, i64, i32, ptr, ptr, ptr, real_t, ptr, i32]
    lib.sparse_backward.argtypes = [i64, i64, i32, ptr, ptr, ptr, real_t, ptr, ptr, i32]
    return lib


def _warn(why: str) -> None:
    warnings.warn(f"fused Gram-space kernels unavailable ({why}); the models run their torch code", stacklevel=3)


def usable(*data: torch.Tensor) -> bool:
    """Whether the fused kernels can run on these data tensors: CPU, float32 or float64, no gradient asked for
    them, not while torch.compile traces, not switched off, and the kernel for their width builds."""
    if not enabled() or torch.compiler.is_compiling() or any(x.requires_grad for x in data):
        return False
    t = data[0]
    if t.dtype not in _CTYPES or any(x.device.type != "cpu" or x.dtype != t.dtype for x in data):
        return False
    return library(t.shape[-1], t.dtype) is not None


def _threads(work: int) -> int:
    """Threads for a kernel call: torch's setting, but one for small calls (a thread costs ~30 µs to start)."""
    return max(1, min(torch.get_num_threads(), work // 4096))


def _p(x: torch.Tensor) -> int:
    return x.data_ptr()


# -- the context Gram matrix -------------------------------------------------------------------------------------


class _Gram(torch.autograd.Function):
    """G = Σ_{i≤n} z_i z_iᵀ (B, e, e) of tokens Z (B, n+1, e), the last (query) token excluded; backward in
    torch: dZ_ctx = Z_ctx (dG + dGᵀ)."""

    @staticmethod
    def forward(Z):
        Z = Z.contiguous()
        B, T, e = Z.shape
        G = Z.new_empty(B, e, e)
        library(e, Z.dtype).context_gram(B, T, _p(Z), _p(G), None, _threads(B * T))
        return G

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, dG):
        (Z,) = ctx.saved_tensors
        dZ = torch.matmul(Z[:, :-1], dG + dG.mT)
        return torch.cat([dZ, torch.zeros_like(Z[:, -1:])], dim=1)

    @staticmethod
    def vmap(info, in_dims, Z):
        (Z,) = _fold_vmap(info, in_dims, (Z,))
        G = _Gram.apply(Z)
        return G.reshape(info.batch_size, -1, *G.shape[1:]), 0


def context_gram(Z: torch.Tensor) -> torch.Tensor:
    """G = Σ_{i≤n} z_i z_iᵀ for tokens Z (B, n+1, d+1) (the query, last, excluded), by the kernel (check
    :func:`usable` first); differentiable."""
    return _Gram.apply(Z)


def prompt_statistics(Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The context Gram matrices G_0 (B, e, e) and the query tokens z_q (B, e) of tokens Z (B, n+1, e) in one pass
    over the tokens, by the kernel (check :func:`usable` first); no autograd (Z is data)."""
    Z = Z.detach().contiguous()
    B, T, e = Z.shape
    G, zq = Z.new_empty(B, e, e), Z.new_empty(B, e)
    library(e, Z.dtype).context_gram(B, T, _p(Z), _p(G), _p(zq), _threads(B * T))
    return G, zq


# -- building the kernel's weights from a model -------------------------------------------------------------------


@functools.cache
def _pairs(e: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The upper-triangle entries (j ≤ k) of an e×e matrix in the kernel's order."""
    j, k = torch.triu_indices(e, e)
    return j, k


def gram_maps(P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """K_ℓ with W_ℓ = Σ_h Q_hᵀ G P_hᵀ = Σ_{j≤k} G_jk K_ℓ[(j,k), :] for symmetric G: (L, e(e+1)/2, e²).

    Args:
        P, Q: (L, H, e, e), the layers' value and key-query matrices (heads summed).
    """
    L, e = P.shape[0], P.shape[-1]
    K = einsum(Q, P, "l h j i, l h m k -> l j k i m")  # W_im = Σ_{h,j,k} Q_h[j,i] G_jk P_h[m,k]
    j, k = _pairs(e)
    Ks = K[:, j, k] + K[:, k, j]  # G_jk = G_kj: both entries act through the one stored value
    Ks = torch.where((j == k)[None, :, None, None], K[:, j, k], Ks)
    return Ks.reshape(L, len(j), e * e)


@functools.cache
def _eye_memory(L: int, e: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.eye(L, dtype=dtype, device=device)[:, :, None].expand(L, L, e).contiguous()


def plain_memory(L: int, e: int, like: torch.Tensor) -> torch.Tensor:
    """The memory coefficients of the plain LSA, c_{ℓj} = 1 if j = ℓ else 0: (L, L, e)."""
    return _eye_memory(L, e, like.dtype, str(like.device))


# -- autograd Functions -------------------------------------------------------------------------------------------


def _fold_vmap(info, in_dims, args):
    """For a vmap rule: fold the vmapped dimension into each tensor's leading (seed or batch) dimension."""
    out = []
    for x, dim in zip(args, in_dims):
        if isinstance(x, torch.Tensor):
            x = x.movedim(dim, 0) if dim is not None else x.expand(info.batch_size, *x.shape)
            x = x.reshape(-1, *x.shape[2:])
        out.append(x)
    return out


@functools.cache
def _active_flags(active: tuple[bool, ...]) -> torch.Tensor:
    return torch.tensor(active, dtype=torch.int32)


class _GramSpace(torch.autograd.Function):
    """ŷ (S, B) of the T-recursion above from G_0 (S, B, e, e), z_q (S, B, e), K (S, L, e(e+1)/2, e²),
    c (S, L, L, e), n and the entries of W that K can make non-zero (a tuple of e² flags); gradients for K and c
    (the data get none; K's gradient is zero outside the active entries)."""

    @staticmethod
    def forward(G0, zq, K, C, n, active):
        S, B, e = zq.shape
        y = zq.new_empty(S, B)
        lib = library(e, zq.dtype)
        lib.gram_space_forward(S, B, K.shape[1], _p(_active_flags(active)), _p(G0), _p(zq), _p(K), _p(C), 1.0 / n,
                               _p(y), _threads(S * B))  # fmt: skip
        return y

    @staticmethod
    def setup_context(ctx, inputs, output):
        G0, zq, K, C, n, active = inputs
        ctx.save_for_backward(G0, zq, K, C)
        ctx.n, ctx.active = n, active

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        G0, zq, K, C = ctx.saved_tensors
        S, B, e = zq.shape
        L, NP = K.shape[1], K.shape[2]
        dy = dy.contiguous()
        threads = _threads(S * B)
        dK = zq.new_empty(threads, S, L, NP, e * e)
        dC = zq.new_empty(threads, S, L, L, e)
        library(e, zq.dtype).gram_space_backward(S, B, L, _p(_active_flags(ctx.active)), _p(G0), _p(zq), _p(K),
                                                 _p(C), 1.0 / ctx.n, _p(dy), _p(dK), _p(dC), threads)  # fmt: skip
        return None, None, dK.sum(0), dC.sum(0), None, None

    @staticmethod
    def vmap(info, in_dims, G0, zq, K, C, n, active):
        G0, zq, K, C, _, _ = _fold_vmap(info, in_dims, (G0, zq, K, C, n, active))
        y = gram_space(G0, zq, K, C, n, active)
        return y.reshape(info.batch_size, -1, y.shape[-1]), 0


class _Sparse(torch.autograd.Function):
    """ŷ (S, B) of the sparse mode from G_0 (S, B, e, e), z_q (S, B, e), A (S, L, d, d) (heads summed) and n."""

    @staticmethod
    def forward(G0, zq, A, n):
        S, B, e = zq.shape
        y = zq.new_empty(S, B)
        library(e, zq.dtype).sparse_forward(S, B, A.shape[1], _p(G0), _p(zq), _p(A), 1.0 / n, _p(y), _threads(S * B))
        return y

    @staticmethod
    def setup_context(ctx, inputs, output):
        G0, zq, A, n = inputs
        ctx.save_for_backward(G0, zq, A)
        ctx.n = n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        G0, zq, A = ctx.saved_tensors
        S, B, e = zq.shape
        threads = _threads(S * B)
        dA = zq.new_empty(threads, *A.shape)
        library(e, zq.dtype).sparse_backward(S, B, A.shape[1], _p(G0), _p(zq), _p(A), 1.0 / ctx.n,
                                             _p(dy.contiguous()), _p(dA), threads)  # fmt: skip
        return None, None, dA.sum(0), None

    @staticmethod
    def vmap(info, in_dims, G0, zq, A, n):
        G0, zq, A, _ = _fold_vmap(info, in_dims, (G0, zq, A, n))
        y = sparse(G0, zq, A, n)
        return y.reshape(info.batch_size, -1, y.shape[-1]), 0


def _with_seeds(zq: torch.Tensor, *xs: torch.Tensor) -> tuple[bool, list[torch.Tensor]]:
    """Whether the call carries a seed dimension (z_q is (S, B, e)), and the tensors with one, contiguous."""
    seeded = zq.dim() == 3
    return seeded, [(x if seeded else x.unsqueeze(0)).contiguous() for x in (zq, *xs)]


def gram_space(
    G0: torch.Tensor, zq: torch.Tensor, K: torch.Tensor, C: torch.Tensor, n: int, active: tuple[bool, ...] | None = None
) -> torch.Tensor:
    """ŷ of the T-recursion (module docstring) by the fused kernel: G_0 (B, e, e), z_q (B, e), K (L, e(e+1)/2, e²),
    c (L, L, e) -> (B,); or all with a leading seed dimension S -> (S, B). ``active``: the e² entries (i, m) of W
    that K can make non-zero, row-major (a mode's structure, e.g. only the y-column of the x-rows in the sparse
    mode; :meth:`LinearSelfAttention.active_entries`); the kernel computes only those. None: all."""
    e = zq.shape[-1]
    active = (True,) * (e * e) if active is None else tuple(bool(a) for a in active)
    seeded, (zq, G0, K, C) = _with_seeds(zq.detach(), G0.detach(), K, C)
    y = _GramSpace.apply(G0, zq, K, C, n, active)
    return y if seeded else y[0]


def sparse(G0: torch.Tensor, zq: torch.Tensor, A: torch.Tensor, n: int) -> torch.Tensor:
    """ŷ of the sparse mode by the fused kernel: G_0 (B, e, e), z_q (B, e), A (L, d, d) (heads summed) -> (B,);
    or all with a leading seed dimension S -> (S, B)."""
    seeded, (zq, G0, A) = _with_seeds(zq.detach(), G0.detach(), A)
    y = _Sparse.apply(G0, zq, A, n)
    return y if seeded else y[0]
