"""Shared machinery of the global-section optimizers (Brantner 2023, arXiv 2305.16901).

:class:`GlobalSectionOptimizer` owns everything that is not the update rule itself: parameter groups with a
``manifold`` entry, argument validation, the global section Λ of every manifold parameter (built **once**, in
float64, at construction, from an explicit seeded generator, and afterwards only carried along by the
updates), float32 drift control, the float64-geometry option, ``state_dict``/``load_state_dict`` and the step.

One manifold step is (Brantner 2023, §4): C = coordinates of global_rep(Λ, rgrad(Y, ∇L)) in 𝔤^hor;
W = velocity(C); Λ ← Λ·Retraction(W) (low-rank, in place); Y ← ΛE (written into the parameter).

**Batched.**  Within a parameter group, the manifold parameters of one (shape, dtype, device) form a
:class:`_Bucket` and are stepped as one batch, as torch's foreach/fused optimizers do: one batched product
GᵀΛ for the coordinates, one Adam update for the bucket, batched p×p inverses and batched GEMMs for the
retraction.  Λ and the 𝔤^hor state live in the bucket's (k, …) tensors; the per-parameter entries of
``optimizer.state`` are views into them, so ``state_dict`` stays per parameter.

**No host synchronisation in a step** (Cayley retraction): the step counts are device tensors (with a host
mirror for the re-orthonormalisation schedule), a parameter changed outside the optimizer is detected by its
version counter (a host integer), and shapes are static.  Float32 section products run with TF32 off.

Subclasses supply two rules:

* ``_euclidean_step(group, params)``: the unconstrained case (must equal the torch optimizer);
* ``_velocity(state, C, step, group, uniform, step_views, work)``: the velocity W ∈ 𝔤^hor for a bucket, from
  the batched coordinates C and the batched state named by ``_coord_state_keys`` (``uniform``: every member
  has the same step count; ``step_views``: the members' step counts as 0-dim views of ``step``; ``work``: the
  bucket's scratch buffers, W to be written into ``work["W"]``, or None), and ``_skew_exact(group)``, whether
  W's A block is exactly skew when C's is;
* optionally ``_whole_step(...)``: the whole step of a bucket in one fused kernel (ManifoldAdam's C kernel on
  CPU), returning False where it can not run, so that the step above runs instead.

A step allocates nothing of the parameters' size: the coordinates, the velocity and the retraction's
temporaries live in buffers made once per bucket (:meth:`icl.optim.manifolds.Manifold.workspace`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch.optim import Optimizer
from torch.optim import optimizer as _torch_optimizer

from icl.optim._common import check_loaded_groups
from icl.optim.manifolds import Manifold, get_manifold

__all__ = [
    "GlobalSectionOptimizer",
    "check_lr",
    "check_betas",
    "check_nonneg",
    "check_state_dict_groups",
    "resolve_dtype",
]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_RETRACTIONS = ("cayley", "exp")
_SECTION_KEYS = ("manifold", "retraction", "geometry_dtype", "reorthonormalize_every", "manifold_tol")
_OPTIONAL_KEYS = ("reorthonormalize_point_every",)  # newer than some checkpoints; defaulted on load


def check_lr(lr: object) -> None:
    if isinstance(lr, torch.Tensor):
        lr = float(lr)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")


def check_nonneg(name: str, v: object) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")


def check_betas(betas: object) -> None:
    ok = isinstance(betas, (tuple, list)) and len(betas) == 2
    if ok:
        for i, b in enumerate(betas):
            if not isinstance(b, (int, float)) or isinstance(b, bool) or not 0.0 <= b < 1.0:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {b!r}")
    else:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")


def resolve_dtype(name: object, argname: str = "geometry_dtype") -> str | None:
    """Normalise a dtype option to None, "float32" or "float64" (strings are weights_only-safe)."""
    if name is None:
        return None
    if isinstance(name, torch.dtype):
        for k, v in _DTYPES.items():
            if v == name:
                return k
    if isinstance(name, str) and name in _DTYPES:
        return name
    raise ValueError(f"{argname} must be None, torch.float32 or torch.float64, got {name!r}")


def check_state_dict_groups(opt: Optimizer, state_dict: object, keys) -> None:
    """Refuse, before anything is loaded, a state_dict that ``opt`` did not write.

    torch's loader takes the saved groups' hyperparameters wholesale, so a torch.optim.Adam state_dict loaded
    into a Stiefel group would silently turn it Euclidean, and FAdam's would bring its weight decay. Every saved
    group must hold exactly ``opt``'s hyperparameter names (:func:`icl.optim._common.check_loaded_groups`), all
    of ``keys`` among them, and the same ``manifold``.

    Raises:
        ValueError: naming the group and what is wrong.
    """
    def validate(group: dict) -> None:
        missing = [k for k in keys if k not in group]
        if missing:
            raise ValueError(f"lacks {missing}: it was not written by {type(opt).__name__}")

    check_loaded_groups(opt, state_dict, validate, keep=("manifold",))


@contextlib.contextmanager
def _ieee_float32(device: torch.device):
    """Full float32 precision for matrix products on CUDA (TF32 off), restored afterwards."""
    if device.type != "cuda":
        yield
        return
    mm = torch.backends.cuda.matmul
    attr = "fp32_precision" if hasattr(mm, "fp32_precision") else "allow_tf32"
    old = getattr(mm, attr)
    setattr(mm, attr, "ieee" if attr == "fp32_precision" else False)
    try:
        yield
    finally:
        setattr(mm, attr, old)


class _Bucket:
    """The manifold parameters of one group with one (shape, dtype, device, geometry dtype), as a batch.

    Holds Λ (k, N, N), the coordinate state (k, *coord_shape) and the step counts ``count`` (k,) (float32,
    on the device); ``optimizer.state[p]`` holds views of row i.  ``steps`` mirrors the counts on the host (read
    once, when the bucket is built) and ``versions`` the parameters' version counters after the last write.
    """

    def __init__(self, opt: GlobalSectionOptimizer, params: list, m: Manifold, keys: tuple[str, ...]):
        self.params, self.m, self.keys = params, m, keys
        self.k, self.p = len(params), params[0].shape[1]
        states = [opt.state[p] for p in params]
        self.bufs = {key: torch.stack([st[key] for st in states]) for key in ("section", *keys)}
        L = self.bufs["section"]
        self.count = torch.stack([st["step"].to(device=L.device, dtype=torch.float32) for st in states])
        self.steps = [int(st["step"]) for st in states]
        self.views = {key: list(buf.unbind(0)) for key, buf in self.bufs.items()}
        self.count_views = list(self.count.unbind(0))
        for i, st in enumerate(states):
            for key in self.bufs:
                st[key] = self.views[key][i]
            st["step"] = self.count_views[i]
        self.points = list(m.point(L, self.p).unbind(0)) if m.point_is_view else None
        self.state = {key: self.bufs[key] for key in keys}
        self.all = list(range(self.k))
        self.G = None  # gradient buffer (k, N, p), made at the first step that needs it
        self.work = None  # scratch buffers of the step (Manifold.workspace), made at the first full step
        self._grad = self._G = None  # the last single gradient and its (1, N, p) view
        self.versions = [p._version for p in params]
        self.whole = False  # (whether the last step was the subclass's whole-step kernel for every member)
        self.uniform = True  # (whether the members' step counts are equal; set where the fast step is enabled)

    def intact(self, opt: GlobalSectionOptimizer) -> bool:
        """Whether every state entry is still this bucket's view (False after outside replacement)."""
        for i, p in enumerate(self.params):
            st = opt.state.get(p)
            if st is None or st.get("step") is not self.count_views[i]:
                return False
            for key, views in self.views.items():
                if st.get(key) is not views[i]:
                    return False
        return True

    def _reanchor(self, i: int, gd: torch.dtype) -> None:
        """The parameter was written outside the optimizer: re-anchor Λ at it, keeping the old complement.

        Reads one comparison back to the host; it runs only after such a write (the version counter moved).
        """
        p, L = self.params[i], self.views["section"][i]
        if not torch.equal(p, self.m.point(L, self.p).to(p.dtype)):
            Y = self.m.project(p.detach().to(torch.float64))
            L.copy_(self.m.resection(Y, L.to(torch.float64)).to(gd))
        self.versions[i] = p._version

    def step(self, opt: GlobalSectionOptimizer, group: dict) -> None:
        params = self.params
        grads = [p.grad for p in params]
        if any(g is None for g in grads):
            idx = [i for i, g in enumerate(grads) if g is not None]
            if not idx:
                return
        else:
            idx = self.all
        L = self.bufs["section"]
        for i in idx:
            if grads[i].is_sparse:
                raise RuntimeError(f"{type(opt).__name__} does not support sparse gradients")
            if params[i]._version != self.versions[i]:
                self._reanchor(i, L.dtype)
        if idx is self.all:
            if self.work is None:
                self.work = self.m.workspace(L, self.p)
            if not self._advance(opt, group, L, self.state, self.count, self.count_views, grads, idx, self.work):
                torch._foreach_copy_(params, self.points or list(self.m.point(L, self.p).unbind(0)))
            self.versions = [p._version for p in params]
            return
        # some parameters have no gradient: step the others on gathered copies
        t = torch.tensor(idx, device=L.device)
        Ls, step = L.index_select(0, t), self.count.index_select(0, t)
        state = {k: self.bufs[k].index_select(0, t) for k in self.keys}
        self._advance(opt, group, Ls, state, step, list(step.unbind(0)), [grads[i] for i in idx], idx, None)
        L.index_copy_(0, t, Ls)
        self.count.index_copy_(0, t, step)
        for k in self.keys:
            self.bufs[k].index_copy_(0, t, state[k])
        points = self.points or list(self.m.point(L, self.p).unbind(0))
        torch._foreach_copy_([params[i] for i in idx], [points[i] for i in idx])
        for i in idx:
            self.versions[i] = params[i]._version

    def _advance(self, opt, group, L, state, step, step_views, grads, idx, work) -> bool:
        """One step of the members ``idx`` whose sections, state and step counts are ``L``, ``state``, ``step``
        (the bucket's own tensors, with ``work`` its scratch buffers, or gathered copies and ``work`` None).

        Returns whether the parameters already hold the new points (the subclass's :meth:`_whole_step` wrote
        them and no re-orthonormalisation followed)."""
        m, p, k, gd = self.m, self.p, len(idx), L.dtype
        steps = self.steps
        s = steps[idx[0]] + 1
        uniform = True
        for i in idx:
            steps[i] += 1
            uniform = uniform and steps[i] == s
        whole = work is not None and opt._whole_step(m, L, state, step, grads, self.params, group, work)
        self.whole = whole  # (the kernel made the step of every member: work is None for a partial step)
        if not whole:
            self._velocity_and_retract(opt, group, L, state, step, step_views, grads, uniform, work)
        full, point = opt._reorth_every(group, gd, m)
        if uniform:  # (the usual case: one test for the whole batch)
            if full and s % full == 0:
                m.reorthonormalize_(L, p)
            elif point and s % point == 0:
                m.reorthonormalize_point_(L, p)
            else:
                return whole
            return False
        due_full = [j for j, i in enumerate(idx) if full and steps[i] % full == 0]
        due_point = [j for j, i in enumerate(idx) if point and steps[i] % point == 0 and j not in due_full]
        for due, fix in ((due_full, m.reorthonormalize_), (due_point, getattr(m, "reorthonormalize_point_", None))):
            if len(due) == k:
                fix(L, p)
            elif due:
                sub = L[due]
                fix(sub, p)
                L[due] = sub
        return whole and not due_full and not due_point

    def _velocity_and_retract(self, opt, group, L, state, step, step_views, grads, uniform, work) -> None:
        """The step through torch: the gradient's coordinates, the subclass's velocity, the retraction."""
        m, p, k, gd = self.m, self.p, len(grads), L.dtype
        if k == 1 and grads[0].dtype == gd:
            if grads[0] is not self._grad:  # (the same gradient tensor as last step: its view is kept)
                self._grad, self._G = grads[0], grads[0].unsqueeze(0)
            G = self._G
            if group["maximize"]:
                G = -G
        else:
            if work is None:
                G = torch.stack(grads).to(gd)
            else:
                if self.G is None:
                    self.G = L.new_empty(k, *grads[0].shape)
                    self._G_views = list(self.G.unbind(0))
                torch._foreach_copy_(self._G_views, grads)
                G = self.G
            if group["maximize"]:
                G.neg_()
        C = m.grad_coords(L, G, work=work)
        step.add_(1)
        W = opt._velocity(state, C, step, group, uniform, step_views, work)
        m.retract_batch_(L, W, p, group["retraction"], work=work, skew_exact=opt._skew_exact(group))


class GlobalSectionOptimizer(Optimizer):
    """Base class: parameter groups on manifolds, the global sections and the batched step.

    Per-group options (in addition to the subclass's hyperparameters):

    * ``manifold``: "euclidean" (default), "stiefel", "grassmann" or "symplectic_stiefel";
    * ``retraction``: "cayley" (default; Stiefel/Grassmann in closed form) or "exp" (low-rank scaling and
      squaring, which reads one number per bucket back to the host to choose the number of squarings);
    * ``geometry_dtype``: None (the parameter's dtype, at least float32) or float64, which keeps Λ and the
      moments in float64 while the parameter stays float32;
    * ``reorthonormalize_every``: k > 0 re-orthonormalises Λ in float64 (Stiefel/Grassmann: sign-fixed QR,
      O(N³); symplectic: symplectic Gram–Schmidt) every k steps; 0 disables it; None (default) means off in
      float64 and, in float32, 1000 (Stiefel/Grassmann) or 100 (symplectic);
    * ``reorthonormalize_point_every`` (Stiefel/Grassmann): j > 0 re-orthonormalises the point Y alone in
      float64 every j steps (one Newton–Schulz polar step, O(Np²)); 0 disables it; None (default) means off
      in float64 and 10 in float32 — float32 rounding makes ‖YᵀY − I‖ a random walk that this bounds;
    * ``manifold_tol``: how far from the manifold a parameter may be at construction (default 1e-8 for
      float64 parameters, 1e-4 otherwise); within it, the parameter is snapped onto the manifold.

    Args:
        params: parameters or parameter groups (dicts).
        defaults: default hyperparameters of the subclass.
        seed: seed of the generator that draws the sections (ignored if ``generator`` is given).  Without
            both, a seed is drawn from torch's global RNG, so ``torch.manual_seed`` makes runs reproducible.
        generator: an explicit ``torch.Generator`` (CPU) for the sections.

    Raises:
        ValueError: naming the offending argument.
    """

    _coord_state_keys: tuple[str, ...] = ()
    _even_state_keys: tuple[str, ...] = ()  # state even in the gradient (its skew block is symmetric)

    def __init__(
        self,
        params,
        defaults: dict,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if generator is None:
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)).item())
            generator = torch.Generator().manual_seed(seed)
        self._generator = generator
        self._buckets: list[list[_Bucket]] = []
        self._fast = self._fast_buckets = None  # (see _fast_step)
        base = dict(
            manifold="euclidean",
            retraction="cayley",
            geometry_dtype=None,
            reorthonormalize_every=None,
            reorthonormalize_point_every=None,
            manifold_tol=None,
        )
        base.update(defaults)
        super().__init__(params, base)

    # ---------------------------------------------------------------------------------------------------
    # groups and validation
    # ---------------------------------------------------------------------------------------------------
    def _validate_hyper(self, group: dict) -> None:
        """Subclass hook: validate the update rule's hyperparameters."""

    def _validate_group(self, group: dict) -> Manifold:
        check_lr(group["lr"])
        check_nonneg("weight_decay", group["weight_decay"])
        group["geometry_dtype"] = resolve_dtype(group["geometry_dtype"])
        m = get_manifold(group["manifold"])
        group["manifold"] = m.name
        if group["retraction"] not in _RETRACTIONS:
            raise ValueError(f"retraction must be one of {_RETRACTIONS}, got {group['retraction']!r}")
        for key in ("reorthonormalize_every", "reorthonormalize_point_every"):
            k = group[key]
            if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
                raise ValueError(f"{key} must be None or an int >= 0, got {k!r}")
        if group["manifold_tol"] is not None:
            check_nonneg("manifold_tol", group["manifold_tol"])
        self._validate_hyper(group)
        return m

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        m = self._validate_group(group)
        if m.name != "euclidean":
            for i, p in enumerate(group["params"]):
                name = f"params[{i}] of group {len(self.param_groups) - 1}"
                m.validate(name, p)
                if not p.is_floating_point():
                    raise ValueError(f"{name}: a {m.name} parameter must be floating point, got {p.dtype}")
                self._init_manifold_state(p, m, group, name)
        if hasattr(self, "_buckets"):  # (torch's __init__ adds the first groups before ours has run)
            self._buckets.append(self._make_buckets(group))

    def _geometry_dtype(self, group: dict, p: torch.Tensor) -> torch.dtype:
        if group["geometry_dtype"] is not None:
            return _DTYPES[group["geometry_dtype"]]
        return torch.float64 if p.dtype == torch.float64 else torch.float32

    @staticmethod
    def _tol(group: dict, p: torch.Tensor) -> float:
        tol = group["manifold_tol"]
        if tol is None:
            tol = 1e-8 if p.dtype == torch.float64 else 1e-4
        return tol

    def _reorth_every(self, group: dict, gdtype: torch.dtype, m: Manifold) -> tuple[int, int]:
        """(period of the full re-orthonormalisation of Λ, period of the point's); 0 means never."""
        f32 = gdtype != torch.float64
        full, point = group["reorthonormalize_every"], group["reorthonormalize_point_every"]
        if full is None:
            full = (1000 if m.point_correction else 100) if f32 else 0
        if point is None:
            point = 10 if f32 else 0
        return full, point if m.point_correction else 0

    @torch.no_grad()
    def _init_manifold_state(self, p: torch.Tensor, m: Manifold, group: dict, name: str) -> None:
        """Snap p onto the manifold and build its section, both in float64, then cast to the geometry dtype."""
        gd = self._geometry_dtype(group, p)
        Y = p.detach().to(torch.float64)
        tol = self._tol(group, p)
        if not bool(torch.isfinite(Y).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        viol = m.check(Y)
        if viol > tol:
            raise ValueError(
                f"{name} is not on the {m.name} manifold: constraint violation {viol:.3e} > manifold_tol "
                f"{tol:.1e}; create it with icl.optim.manifold_point or project it first"
            )
        L = m.init_section(m.project(Y).cpu(), self._generator).to(device=p.device, dtype=gd)
        state = self.state[p]
        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        state["section"] = L
        for key in self._coord_state_keys:
            state[key] = L.new_zeros(m.coord_shape(tuple(p.shape)))
        p.copy_(m.point(L, p.shape[1]))

    def _make_buckets(self, group: dict) -> list[_Bucket]:
        m = get_manifold(group["manifold"])
        if m.name == "euclidean":
            return []
        keyed: dict[tuple, list] = {}
        for p in group["params"]:
            gd = self.state[p]["section"].dtype
            keyed.setdefault((tuple(p.shape), p.dtype, p.device, gd), []).append(p)
        return [_Bucket(self, params, m, self._coord_state_keys) for params in keyed.values()]

    # ---------------------------------------------------------------------------------------------------
    # step
    # ---------------------------------------------------------------------------------------------------
    def _euclidean_update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError

    def _euclidean_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """Step the Euclidean parameters (with gradients) of ``group``; default: one at a time."""
        for p in params:
            grad = -p.grad if group.get("maximize", False) else p.grad
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0)
            self._euclidean_update(p, grad, state, group)

    def _velocity(
        self,
        state: dict,
        C: torch.Tensor,
        step: torch.Tensor,
        group: dict,
        uniform: bool,
        step_views: list[torch.Tensor],
        work: dict | None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def _skew_exact(self, group: dict) -> bool:
        """Whether ``_velocity`` maps an exactly skew A block to an exactly skew one (zero diagonal)."""
        return False

    def _whole_step(self, m, L, state, count, grads, params, group, work) -> bool:
        """Subclass hook: make the whole step of a bucket (coordinates, velocity, retraction, the step counts
        ``count`` incremented and Y written into ``params``) in one fused kernel and return True, or return
        False (nothing done) for the step through torch."""
        return False

    def step(self, closure: Callable[[], float] | None = None):
        """One optimizer step; parameters whose ``grad`` is None are skipped.

        torch.optim's step wrapper (step pre/post hooks, global and per-optimizer, and the profiler's
        ``record_function``) runs exactly when it has something to do: when a hook is registered or a profiler
        is on; otherwise the step skips it (its record_function alone costs about 1% of a St(512, 64) step).

        Args:
            closure: re-evaluates the model and returns the loss (evaluated with grad enabled).

        Returns:
            The closure's loss, or None.
        """
        if (
            self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or _torch_optimizer._global_optimizer_pre_hooks
            or _torch_optimizer._global_optimizer_post_hooks
            or torch.autograd._profiler_enabled()
        ):
            return self._hooked_step(closure)
        if closure is None and self._fast is not None and self._fast_step():
            return None
        grad_on = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)  # (torch.no_grad() without its context-manager object)
        try:
            return self._step(closure)
        finally:
            torch._C._set_grad_enabled(grad_on)

    step.hooked = True  # (torch's Optimizer wraps a step without this mark; ours calls the wrapper itself)

    def _fast_step(self) -> bool:
        """The usual step in as few Python operations as it takes; True where it made the step.

        Python between two kernel steps costs about four times its own time (the kernel's pass over Λ evicts the
        interpreter's data from the core's cache: the full path below took 59 µs after a St(512, 64) step and
        14 µs after itself), so the common case skips it: every manifold bucket made its last step by the
        subclass's whole-step kernel (:meth:`_whole_step`) for all its members, the groups and buckets are the
        same, every parameter has a dense gradient and was not written outside the optimizer, no
        re-orthonormalisation is due, the buckets' state is intact and the kernel takes the gradients' layout
        and the group's hyperparameters (:meth:`_fast_call`).  Everything is checked before anything is
        stepped; where any check fails nothing is done and the full step runs.  Euclidean groups take the
        same update as in the full step.  The iterates are the full step's, bit for bit.
        """
        groups, fast = self.param_groups, self._fast
        if len(groups) != len(fast) or self._fast_buckets is not self._buckets:
            return False
        euclidean, kernels = [], []
        for group, buckets in zip(groups, fast):
            if buckets is None:  # (a Euclidean group)
                params = [p for p in group["params"] if p.grad is not None]
                if any(p.grad.is_sparse for p in params):
                    return False
                euclidean.append((group, params))
                continue
            if sum(b.k for b in buckets) != len(group["params"]):  # (the group's list changed: rebuild)
                return False
            for b in buckets:
                params = b.params
                full, point = self._reorth_every(group, b.bufs["section"].dtype, b.m)
                for t in b.steps[:1] if b.uniform else b.steps:  # (due for a member: the full step makes it)
                    if (full and (t + 1) % full == 0) or (point and (t + 1) % point == 0):
                        return False
                if not b.intact(self):
                    return False
                grads = [p.grad for p in params]
                for p, g, v in zip(params, grads, b.versions):
                    if g is None or p._version != v:
                        return False
                run = self._fast_call(b, group, grads)
                if run is None:
                    return False
                kernels.append((b, run))
        if euclidean:  # (torch's update needs grad mode off; the kernels do not)
            grad_on = torch.is_grad_enabled()
            torch._C._set_grad_enabled(False)
            try:
                for group, params in euclidean:
                    if params:
                        self._euclidean_step(group, params)
            finally:
                torch._C._set_grad_enabled(grad_on)
        for b, run in kernels:
            run()
            params = b.params
            torch._C._increment_version(params)  # (written in place, as torch's optimizers do)
            b.steps = [t + 1 for t in b.steps]
            b.versions = [p._version for p in params]
        return True

    def _fast_call(self, bucket: _Bucket, group: dict, grads: list) -> Callable[[], None] | None:
        """Subclass hook of :meth:`_fast_step`: the bucket's whole step with these gradients, prepared and ready
        to run (a function of no arguments), or None where the kernel can not take them."""
        return None

    def _step(self, closure: Callable[[], float] | None) -> float | None:
        self._fast = None
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if len(self._buckets) != len(self.param_groups):
            self._buckets = [self._make_buckets(g) for g in self.param_groups]
        for gi, group in enumerate(self.param_groups):
            if group["manifold"] == "euclidean":
                params = [p for p in group["params"] if p.grad is not None]
                for p in params:
                    if p.grad.is_sparse:
                        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                if params:
                    self._euclidean_step(group, params)
                continue
            buckets = self._buckets[gi]
            if sum(b.k for b in buckets) != len(group["params"]) or not all(b.intact(self) for b in buckets):
                buckets = self._buckets[gi] = self._make_buckets(group)
            for b in buckets:
                if b.count.device.type == "cuda":
                    with _ieee_float32(b.count.device):
                        b.step(self, group)
                else:
                    b.step(self, group)
        # the next step may take the fast path where every bucket's step was the whole-step kernel's
        fast = [None if g["manifold"] == "euclidean" else bs for g, bs in zip(self.param_groups, self._buckets)]
        if all(bs is None or all(b.whole and b.count.device.type == "cpu" for b in bs) for bs in fast):
            for b in (b for bs in fast if bs is not None for b in bs):
                b.uniform = len(set(b.steps)) == 1
            self._fast, self._fast_buckets = fast, self._buckets
        return loss

    _hooked_step = Optimizer.profile_hook_step(torch.no_grad()(_step))

    # ---------------------------------------------------------------------------------------------------
    # monitoring and checkpoints
    # ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def constraint_violation(self) -> float:
        """max over manifold parameters of the constraint violation (‖YᵀY − I‖_F or ‖UᵀJU − J‖_F)."""
        worst = 0.0
        for group in self.param_groups:
            m = get_manifold(group["manifold"])
            if m.name == "euclidean":
                continue
            for p in group["params"]:
                worst = max(worst, m.check(p))
        return worst

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._buckets = []  # rebuilt from the per-parameter state at the next step
        self._fast = self._fast_buckets = None
        self.__dict__.setdefault("_generator", torch.Generator().manual_seed(0))
        for group in self.param_groups:
            group.setdefault("manifold", "euclidean")
            group.setdefault("retraction", "cayley")
            group.setdefault("geometry_dtype", None)
            group.setdefault("reorthonormalize_every", None)
            group.setdefault("reorthonormalize_point_every", None)  # (absent from checkpoints before it existed)
            group.setdefault("manifold_tol", None)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load optimizer state written by the same optimizer class; Λ and 𝔤^hor state keep the group's
        geometry dtype, and a resumed run makes exactly the steps of an uninterrupted one.

        Refuses (ValueError, before loading anything) a state_dict whose groups lack this optimizer's
        hyperparameters or sit on another manifold (see :func:`check_state_dict_groups`), and state whose
        section or coordinates do not fit the parameter.  Coordinates saved in the flat layout of earlier
        versions are converted.  ``torch.optim.Optimizer.load_state_dict`` casts floating state to the
        parameter's dtype, which would truncate a float64 section of a float32 parameter; those entries are
        restored from ``state_dict``.
        """
        required = {*self.defaults, *_SECTION_KEYS} - set(_OPTIONAL_KEYS)
        check_state_dict_groups(self, state_dict, sorted(required))
        for i, (ours, saved) in enumerate(zip(self.param_groups, state_dict["param_groups"])):
            if len(ours["params"]) != len(saved["params"]):
                break  # torch's loader names this mismatch
            if ours["manifold"] == "euclidean":
                continue
            for p, pid in zip(ours["params"], saved["params"]):
                self._check_saved_state(p, state_dict["state"].get(pid), ours["manifold"], i)
        super().load_state_dict(state_dict)
        saved_state = state_dict["state"]
        for group, saved in zip(self.param_groups, state_dict["param_groups"]):
            m = self._validate_group(group)
            if m.name == "euclidean":
                continue
            for p, pid in zip(group["params"], saved["params"]):
                self._restore(p, saved_state[pid], m, group)
        self._buckets = [self._make_buckets(g) for g in self.param_groups]
        for buckets, group in zip(self._buckets, self.param_groups):
            for b in buckets:
                for i, p in enumerate(b.params):
                    Yl = b.m.point(b.views["section"][i], b.p).to(p.dtype)
                    if torch.equal(p, Yl):
                        continue
                    # The parameter is ΛE by construction; if it differs only by rounding (e.g. it was snapped
                    # onto the manifold when this optimizer was built), take ΛE so that a resumed run makes
                    # exactly the steps of an uninterrupted one.  A real difference (the weights are loaded
                    # later, or were changed) is looked at again at the next step.
                    if float((p.detach() - Yl).abs().max()) <= self._tol(group, p):
                        with torch.no_grad():
                            p.copy_(Yl)
                        b.versions[i] = p._version
                    else:
                        b.versions[i] = -1

    def _check_saved_state(self, p: torch.Tensor, src, manifold: str, gi: int) -> None:
        m = get_manifold(manifold)
        where = f"state_dict: state of a {manifold} parameter of shape {tuple(p.shape)} in param_groups[{gi}]"
        if not isinstance(src, dict) or "section" not in src or "step" not in src:
            raise ValueError(f"{where} has no section (was it written by {type(self).__name__}?)")
        L = src["section"]
        if tuple(L.shape) != (p.shape[0], p.shape[0]):
            raise ValueError(f"{where}: section of shape {tuple(L.shape)}, expected {(p.shape[0], p.shape[0])}")
        shapes = {m.coord_shape(tuple(p.shape)), (m.dim(tuple(p.shape)),)}
        for key in self._coord_state_keys:
            if key in src and tuple(src[key].shape) not in shapes:
                raise ValueError(f"{where}: {key} of shape {tuple(src[key].shape)}, expected one of {sorted(shapes)}")

    def _restore(self, p: torch.Tensor, src: dict, m: Manifold, group: dict) -> None:
        gd = self._geometry_dtype(group, p)
        st = self.state[p]
        st["step"] = src["step"].to(device=p.device, dtype=torch.float32, copy=True)
        st["section"] = src["section"].to(device=p.device, dtype=gd, copy=True)
        shape = m.coord_shape(tuple(p.shape))
        for key in self._coord_state_keys:
            v = src.get(key)
            if v is None:
                st[key] = st["section"].new_zeros(shape)
                continue
            v = v.to(device=p.device, dtype=gd, copy=True)
            st[key] = v if tuple(v.shape) == shape else m.to_matrix(v, tuple(p.shape), key in self._even_state_keys)
