"""A fused CPU kernel for the p×p solve of ManifoldAdam's closed-form Cayley step (issue 16).

The step needs K_top = T⁻¹S₂ with T = I − ½S₂ (p×p, p = the parameter's columns; see
:meth:`icl.optim.manifolds.Stiefel.retract_batch_`).  Through torch this is LAPACK's getrf + getrs behind
``torch.linalg.solve_ex``, whose CPU path adds a dozen small tensor operations (layout copies, a pivot check
that reads back to the host); inside the optimizer step, between the large products, that costs about a
third of one N×N×p product at p = 64 (measured by replacing it, 2026-12-02).  Here the same solve — Gaussian
elimination with partial pivoting on [T | S₂], then back substitution, in the data's precision as LAPACK — is
one C call on the batch.

The kernel is compiled on first use with the system C compiler (``cc -O3 -march=native``, retried without
``-march=native``; cached under ``$ICL_KERNEL_CACHE`` or ``~/.cache/icl-optimizers``, as the LSA kernels of
:mod:`learned_optimizers.fused`) and loaded with ctypes.  Where there is no compiler, the tensors are not
float32/float64 CPU tensors, while ``torch.compile`` traces, or the fused kernels are switched off
(``ICL_FUSED=0``, :func:`learned_optimizers.fused.disabled`), :func:`usable` is False and the step calls
``torch.linalg.solve_ex`` (the same numbers up to rounding; ``tests/test_manifold_batched.py`` checks both).
"""

from __future__ import annotations

import ctypes
import functools
import warnings

import torch

__all__ = ["usable", "cayley_solve_"]

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

/* For each of k systems: X = T^{-1} S with T = I - S/2 (p x p, row-major, rows `rs` apart, matrices `bs`
   apart), written into X (same strides).  Gaussian elimination with partial pivoting on [T | S], then back
   substitution, in the data's precision (as LAPACK's getrf + getrs); `w` is scratch of 2 p^2 numbers. */
static inline void axpy_f32(float *restrict y, const float *restrict x, float a, int64_t n) {
    for (int64_t j = 0; j < n; j++) y[j] -= a * x[j];
}
static inline void axpy_f64(double *restrict y, const double *restrict x, double a, int64_t n) {
    for (int64_t j = 0; j < n; j++) y[j] -= a * x[j];
}

#define SOLVE(NAME, REAL, AXPY)                                                                              \
void NAME(int64_t k, int64_t p, const REAL *S, int64_t s_bs, int64_t s_rs, REAL *X, int64_t x_bs,            \
          int64_t x_rs, REAL *w) {                                                                           \
    REAL *T = w, *B = w + p * p;                                                                             \
    for (int64_t b = 0; b < k; b++) {                                                                        \
        const REAL *Sb = S + b * s_bs;                                                                       \
        for (int64_t i = 0; i < p; i++)                                                                      \
            for (int64_t j = 0; j < p; j++) {                                                                \
                REAL s = Sb[i * s_rs + j];                                                                   \
                B[i * p + j] = s;                                                                            \
                T[i * p + j] = (REAL)(i == j) - (REAL)0.5 * s;                                               \
            }                                                                                                \
        for (int64_t c = 0; c < p; c++) {                                                                    \
            int64_t piv = c;                                                                                 \
            REAL best = fabs(T[c * p + c]);                                                                  \
            for (int64_t i = c + 1; i < p; i++)                                                              \
                if (fabs(T[i * p + c]) > best) { best = fabs(T[i * p + c]); piv = i; }                       \
            if (piv != c)                                                                                    \
                for (int64_t j = 0; j < p; j++) {                                                            \
                    REAL t = T[c * p + j]; T[c * p + j] = T[piv * p + j]; T[piv * p + j] = t;                \
                    t = B[c * p + j]; B[c * p + j] = B[piv * p + j]; B[piv * p + j] = t;                     \
                }                                                                                            \
            const REAL inv = (REAL)1 / T[c * p + c];                                                         \
            const REAL *Tc = T + c * p, *Bc = B + c * p;                                                     \
            for (int64_t i = c + 1; i < p; i++) {                                                            \
                REAL *Ti = T + i * p, *Bi = B + i * p;                                                       \
                const REAL f = Ti[c] * inv;                                                                  \
                if (f == 0) continue;                                                                        \
                AXPY(Ti + c + 1, Tc + c + 1, f, p - c - 1);                                                  \
                AXPY(Bi, Bc, f, p);                                                                          \
            }                                                                                                \
        }                                                                                                    \
        for (int64_t i = p - 1; i >= 0; i--) {                                                               \
            REAL *Bi = B + i * p;                                                                            \
            const REAL *Ti = T + i * p;                                                                      \
            for (int64_t l = i + 1; l < p; l++) AXPY(Bi, B + l * p, Ti[l], p);                               \
            const REAL inv = (REAL)1 / Ti[i];                                                                \
            REAL *Xi = X + b * x_bs + i * x_rs;                                                              \
            for (int64_t j = 0; j < p; j++) { Bi[j] *= inv; Xi[j] = Bi[j]; }                                 \
        }                                                                                                    \
    }                                                                                                        \
}
SOLVE(cayley_solve_f32, float, axpy_f32)
SOLVE(cayley_solve_f64, double, axpy_f64)
"""

FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")
_ENTRY = {torch.float32: "cayley_solve_f32", torch.float64: "cayley_solve_f64"}


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The kernel, built on first use; None (with a warning) where it can not be built."""
    from learned_optimizers.fused import build_library  # (lazy: learned_optimizers imports icl.optim)

    lib, why = build_library(SOURCE, "cayley_solve", FLAGS, libs=("-lm",))
    if lib is None:
        return _unavailable(why)
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for name in _ENTRY.values():
        getattr(lib, name).argtypes = [i64, i64, ptr, i64, i64, ptr, i64, i64, ptr]
        getattr(lib, name).restype = None
    return lib


def _unavailable(why: str) -> None:
    warnings.warn(f"ManifoldAdam's fused Cayley solve unavailable ({why}); torch.linalg.solve_ex is used",
                  stacklevel=3)  # fmt: skip
    return None


def usable(S: torch.Tensor) -> bool:
    """Whether :func:`cayley_solve_` can run on ``S`` (k, p, p): a float32/float64 CPU tensor, not while
    torch.compile traces, fused kernels switched on, and the kernel builds."""
    from learned_optimizers.fused import enabled

    if S.device.type != "cpu" or S.dtype not in _ENTRY or not enabled() or torch.compiler.is_compiling():
        return False
    return _library() is not None


def cayley_solve_(S: torch.Tensor, X: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """X ← (I − ½S)⁻¹S for each of the k matrices of ``S`` (k, p, p), by the kernel (check :func:`usable`).

    ``S`` and ``X`` may be strided views (unit column stride), ``scratch`` holds ≥ 2p² numbers of their dtype.
    """
    k, p = S.shape[0], S.shape[-1]
    if S.stride(-1) != 1 or X.stride(-1) != 1 or scratch.dtype != S.dtype or scratch.numel() < 2 * p * p:
        raise ValueError("cayley_solve_: S and X need unit column stride, scratch 2p^2 numbers of their dtype")
    getattr(_library(), _ENTRY[S.dtype])(
        k, p, S.data_ptr(), S.stride(0), S.stride(1), X.data_ptr(), X.stride(0), X.stride(1), scratch.data_ptr()
    )
    return X
