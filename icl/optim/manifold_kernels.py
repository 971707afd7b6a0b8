"""Fused CPU kernels of ManifoldAdam's closed-form Cayley step (issue 16); C source: ``manifold_step.c``.

The source is ``learned_optimizers/csrc/manifold_step.c``.

* :func:`cayley_solve_`: K_top = T⁻¹S₂ with T = I − ½S₂ (p×p, p = the parameter's columns; see
  :meth:`icl.optim.manifolds.Stiefel.retract_batch_`).  Through torch this is LAPACK's getrf + getrs behind
  ``torch.linalg.solve_ex``, whose CPU path adds a dozen small tensor operations (layout copies, a pivot check
  that reads back to the host); inside the optimizer step that costs about a third of one N×N×p product at
  p = 64 (measured by replacing it, 2026-12-02).  Here the same solve — Gaussian elimination with partial
  pivoting on [T | S₂], then back substitution, in the data's precision as LAPACK — is one C call on the batch.
* :func:`polar_point_`: the polar step on Y of :meth:`icl.optim.manifolds.Stiefel.reorthonormalize_point_` as
  Y ← Y + YE, E = (I − YᵀY)/2: YᵀY in float64 (its distance from I is what the step corrects), YE — as small as
  that distance — in the data's precision, no float64 temporaries of torch's.
* :class:`AdamStep`: a whole ManifoldAdam step of a bucket of Stiefel or Grassmann parameters in one C call —
  the gradient's coordinates GᵀΛ, their skew part, Adam's moments and the scaled step fused into one pass, the
  p×p solve, the products D = Λ·K and Y_⊥ −= H·Bᵀ, and Y + D written into the section and the parameter in one
  pass.  Its four products call the BLAS ``sgemm_``/``dgemm_`` that torch is linked against (MKL in torch's CPU
  wheels; found in ``libtorch_cpu``), so they are the same GEMMs that ``torch.bmm`` makes; what the kernel
  removes is every intermediate tensor, every elementwise pass but two, and the Python and dispatch cost of
  about fifteen torch operations per step.

The kernels are compiled on first use with the system C compiler by :func:`learned_optimizers.fused.build_library`
(``cc -O3 -march=native -fno-math-errno``, retried without ``-march=native``; cached under ``$ICL_KERNEL_CACHE`` or
``~/.cache/icl-optimizers``) and loaded with ctypes.  Where there is no compiler, the tensors are not
float32/float64 CPU tensors, while ``torch.compile`` traces, or the fused kernels are switched off (``ICL_FUSED=0``,
:func:`learned_optimizers.fused.disabled`), :func:`usable` is False and the step runs its torch code (the solve by
``torch.linalg.solve_ex``); where torch's BLAS entry is not found, :func:`step_usable` is False and only the
whole-step kernel is skipped.  Both give the same numbers up to rounding (``tests/test_manifold_batched.py``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings
from pathlib import Path

import torch

__all__ = [
    "usable", "step_usable", "cayley_solve_", "AdamStep", "layouts_fit", "step_scratch_size",
    "solve_scratch_size", "polar_point_",
]  # fmt: skip

FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC")  # (no errno: sqrt vectorises)
_SOLVE = {torch.float32: "cayley_solve_f32", torch.float64: "cayley_solve_f64"}
_STEP = {torch.float32: "adam_step_f32", torch.float64: "adam_step_f64"}
_POLAR = {torch.float32: "polar_point_f32", torch.float64: "polar_point_f64"}


def _source() -> str:
    import learned_optimizers  # (lazy: learned_optimizers imports icl.optim)

    return (Path(learned_optimizers.__file__).parent / "csrc" / "manifold_step.c").read_text()


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The kernels, built on first use; None (with a warning) where they can not be built."""
    from learned_optimizers.fused import build_library

    lib, why = build_library(_source(), "manifold_step", FLAGS, libs=("-lm",))
    if lib is None:
        return _unavailable(why)
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for name in _SOLVE.values():
        getattr(lib, name).argtypes = [i64, i64, ptr, i64, i64, ptr, i64, i64, ptr]
        getattr(lib, name).restype = None
    for name in _STEP.values():
        getattr(lib, name).argtypes = [ptr, ptr, ptr, ptr]
        getattr(lib, name).restype = None
    for name in _POLAR.values():
        getattr(lib, name).argtypes = [i64, i64, i64, ptr, ptr]
        getattr(lib, name).restype = None
    lib.set_blas.argtypes = [ptr, ptr]
    lib.set_blas.restype = None
    lib.blas_found = _set_blas(lib)
    return lib


def _set_blas(lib: ctypes.CDLL) -> bool:
    """Hand torch's own Fortran gemm entries to the kernels; False where libtorch_cpu exports none."""
    try:
        torch_cpu = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        s, d = (ctypes.cast(getattr(torch_cpu, f), ctypes.c_void_p).value for f in ("sgemm_", "dgemm_"))
    except (OSError, AttributeError):
        return False
    lib.set_blas(s, d)
    return True


def _unavailable(why: str) -> None:
    warnings.warn(f"ManifoldAdam's fused Cayley solve unavailable ({why}); torch.linalg.solve_ex is used",
                  stacklevel=3)  # fmt: skip
    return None


def usable(S: torch.Tensor) -> bool:
    """Whether :func:`cayley_solve_` can run on ``S`` (k, p, p): a float32/float64 CPU tensor, not while
    torch.compile traces, fused kernels switched on, and the kernel builds."""
    from learned_optimizers.fused import enabled

    if S.device.type != "cpu" or S.dtype not in _SOLVE or not enabled() or torch.compiler.is_compiling():
        return False
    return _library() is not None


def step_usable(L: torch.Tensor) -> bool:
    """Whether :class:`AdamStep` can run on sections ``L``: :func:`usable`, a contiguous ``L`` and torch's BLAS
    entry found."""
    return usable(L) and L.is_contiguous() and _library().blas_found


def cayley_solve_(S: torch.Tensor, X: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """X ← (I − ½S)⁻¹S for each of the k matrices of ``S`` (k, p, p), by the kernel (check :func:`usable`).

    ``S`` and ``X`` may be strided views (unit column stride), ``scratch`` holds ≥ :func:`solve_scratch_size`
    numbers of their dtype.
    """
    k, p = S.shape[0], S.shape[-1]
    need = solve_scratch_size(p)
    if S.stride(-1) != 1 or X.stride(-1) != 1 or scratch.dtype != S.dtype or scratch.numel() < need:
        raise ValueError(
            f"cayley_solve_: S and X need unit column stride, scratch {need} numbers of their dtype (p = {p})"
        )
    getattr(_library(), _SOLVE[S.dtype])(
        k, p, S.data_ptr(), S.stride(0), S.stride(1), X.data_ptr(), X.stride(0), X.stride(1), scratch.data_ptr()
    )
    return X


def solve_scratch_size(p: int) -> int:
    """Numbers of scratch the p×p solve needs: the augmented matrix [I − ½S | S], p rows of 2·pp numbers with
    pp = p rounded up to a multiple of 16, so that its row operations are whole vectors."""
    return p * 2 * (-(-p // 16) * 16)


def step_scratch_size(N: int, p: int, skew: bool) -> int:
    """Numbers of scratch :class:`AdamStep` needs for one N×p parameter (C and W, S₂, K and D, the solve's)."""
    c = N if skew else N - p
    return 2 * p * c + p * p + 2 * N * p + solve_scratch_size(p)


def layouts_fit(grads, params, dtype: torch.dtype) -> bool:
    """Whether :class:`AdamStep` can read ``grads`` and write ``params`` (N×p tensors of ``dtype``, N > p): the
    gradients all row-major or all column-major (dense), the parameters all with one set of strides."""
    N, p = params[0].shape
    if any(g.layout != torch.strided for g in grads):  # (a sparse gradient has no strides: the full step names it)
        return False
    gs, ps = grads[0].stride(), params[0].stride()
    if N == p:  # (square: no Y_⊥; BLAS refuses the empty operands' leading dimensions)
        return False
    if not ((gs[1] == 1 and gs[0] >= p) or (gs[0] == 1 and gs[1] >= N)) or min(ps) < 1:
        return False
    for g, x in zip(grads, params):
        if g.dtype != dtype or x.dtype != dtype or g.stride() != gs or x.stride() != ps or g.shape != x.shape:
            return False
    return True


class AdamStep:
    """A whole ManifoldAdam step (closed-form Cayley) of one bucket of k Stiefel (``skew``) or Grassmann
    parameters, in place, in one C call.  The call's arguments live in two ctypes arrays made once per bucket
    (the bucket's fixed addresses and sizes, and the hyperparameters, rewritten only when they change) and two
    arrays of the k gradients' and parameters' addresses, so that a step passes four pointers.

    ``L`` (k, N, N) the contiguous sections; ``exp_avg``/``exp_avg_sq`` the contiguous moments (k, p, c) with
    c = N (Stiefel, [A | Bᵀ]) or N − p (Grassmann, Bᵀ); ``count`` the float32 step counts (k,), incremented (the
    bias corrections use the incremented count); ``scratch`` ≥ :func:`step_scratch_size` numbers (made here if
    not given).  :meth:`prepare` takes k N×p ``grads`` and ``params`` of ``L``'s dtype that pass :func:`layouts_fit`
    (else it writes nothing and returns False); :meth:`run` then makes the step (the parameters receive Y = ΛE).
    The update is :class:`icl.optim.ManifoldAdam`'s (its docstring and
    :meth:`icl.optim.manifolds.Stiefel.retract_batch_`).  Check :func:`step_usable` first; the bound tensors must
    keep their storage (the optimizer's bucket buffers do).
    """

    def __init__(self, L, exp_avg, exp_avg_sq, count, *, p: int, skew: bool, scratch=None) -> None:
        k, N = L.shape[0], L.shape[-1]
        if scratch is None:
            scratch = L.new_empty(step_scratch_size(N, p, skew))
        if scratch.numel() < step_scratch_size(N, p, skew) or scratch.dtype != L.dtype:
            raise ValueError("AdamStep: scratch too small or of another dtype")
        self.fn = getattr(_library(), _STEP[L.dtype])
        self.dtype, self.k, self.shape = L.dtype, k, torch.Size((N, p))
        self.scratch = scratch  # (kept alive with its address)
        # k, N, p, skew, L, g_rs, g_cs, p_rs, p_cs, m, v, count, work, maximize
        self.ia = (ctypes.c_int64 * 14)(
            k, N, p, int(skew), L.data_ptr(), 0, 0, 0, 0, exp_avg.data_ptr(), exp_avg_sq.data_ptr(),
            count.data_ptr(), scratch.data_ptr(), 0,
        )  # fmt: skip
        self.fa = (ctypes.c_double * 4)()
        self.grads, self.params = (ctypes.c_int64 * k)(), (ctypes.c_int64 * k)()
        self.args = (ctypes.addressof(self.ia), ctypes.addressof(self.fa), self.grads, self.params)
        self.hyper = self.layout = None

    def prepare(self, grads, params, lr: float, betas, eps: float, maximize: bool) -> bool:
        """Write the call's arguments for these gradients, parameters and hyperparameters; False (nothing
        written) where :func:`layouts_fit` refuses them.  :meth:`run` then makes the step."""
        g0, x0 = grads[0], params[0]
        if g0.is_sparse:
            return False
        layout = (g0.stride(), x0.stride())
        if (  # (one parameter, as last time: four attribute reads instead of layouts_fit)
            self.k > 1 or layout != self.layout or x0.shape != self.shape or g0.shape != self.shape
            or x0.dtype != self.dtype or g0.dtype != self.dtype
        ):  # fmt: skip
            if x0.shape != self.shape or not layouts_fit(grads, params, self.dtype):
                return False
            self.ia[5], self.ia[6] = layout[0]
            self.ia[7], self.ia[8] = layout[1]
            self.layout = layout
        hyper = (lr, betas, eps, maximize)
        if hyper != self.hyper:
            fa = self.fa
            fa[0], (fa[1], fa[2]), fa[3] = lr, betas, eps
            self.ia[13] = int(maximize)
            self.hyper = hyper
        gp, pp = self.grads, self.params
        for i, g in enumerate(grads):
            gp[i] = g.data_ptr()
        for i, x in enumerate(params):
            pp[i] = x.data_ptr()
        return True

    def run(self) -> None:
        """The step :meth:`prepare` wrote the arguments of."""
        self.fn(*self.args)


def polar_point_(L: torch.Tensor, p: int) -> torch.Tensor:
    """Y ← Y(3I − YᵀY)/2 = Y + YE, E = (I − YᵀY)/2 with YᵀY in float64, for the Y blocks (first ``p`` columns) of
    the sections ``L`` (k, N, N), one C call (:meth:`icl.optim.manifolds.Stiefel.reorthonormalize_point_`; check
    :func:`step_usable`)."""
    k, N = L.shape[0], L.shape[-1]
    work = torch.empty(2 * N * p + 2 * p * p, dtype=torch.float64)
    getattr(_library(), _POLAR[L.dtype])(k, N, p, L.data_ptr(), work.data_ptr())
    return L
