"""Shared machinery of the global-section optimizers (Brantner 2023).

:class:`GlobalSectionOptimizer` owns everything that is not the update rule itself: parameter groups with a
``manifold`` entry, argument validation, the global section Λ of every manifold parameter (drawn **once**,
at construction, from an explicit seeded generator, and afterwards only carried along by the updates),
float32 drift control, the float64-geometry option, ``state_dict``/``load_state_dict`` and the step loop.
Subclasses supply two rules, both on flat tensors:

* ``_euclidean_update(p, grad, state, group)``: the unconstrained case (must equal the torch optimizer);
* ``_velocity(state, coords, group)``: the velocity W ∈ 𝔤^hor (flat compact coordinates) from the global
  representation of the Riemannian gradient.

One manifold step is (Brantner 2023): Δ = rgrad(Y, ∇L); B = global_rep(Λ, Δ);
W = velocity(B); Λ ← Λ·Retraction(W) (low-rank, in place); Y ← ΛE (written into the parameter).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim import Optimizer

from icl.optim.manifolds import Manifold, get_manifold

__all__ = ["GlobalSectionOptimizer", "check_lr", "check_betas", "check_nonneg", "resolve_dtype"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_RETRACTIONS = ("cayley", "exp")


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


class GlobalSectionOptimizer(Optimizer):
    """Base class: parameter groups on manifolds, the global sections and the step loop.

    Per-group options (in addition to the subclass's hyperparameters):

    * ``manifold``: "euclidean" (default), "stiefel", "grassmann" or "symplectic_stiefel";
    * ``retraction``: "cayley" (default) or "exp" (both low-rank, see :mod:`icl.optim.manifolds`);
    * ``geometry_dtype``: None (the parameter's dtype, at least float32) or float64, which keeps Λ and the
      moments in float64 while the parameter stays float32;
    * ``reorthonormalize_every``: k > 0 re-orthonormalises (Stiefel/Grassmann: sign-fixed QR) or
      re-symplectifies (symplectic Gram–Schmidt) Λ every k steps; 0 disables it; None (default) means 100
      when the geometry is float32 and off in float64 (float32 geometry drifts off the manifold);
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

    _manifold_state_keys: tuple[str, ...] = ()

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
        base = dict(
            manifold="euclidean",
            retraction="cayley",
            geometry_dtype=None,
            reorthonormalize_every=None,
            manifold_tol=None,
        )
        base.update(defaults)
        super().__init__(params, base)

    # ---------------------------------------------------------------------------------------------------
    # groups and validation
    # ---------------------------------------------------------------------------------------------------
    def _validate_hyper(self, group: dict) -> None:
        """Subclass hook: validate the update rule's hyperparameters."""

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_lr(group["lr"])
        check_nonneg("weight_decay", group["weight_decay"])
        group["geometry_dtype"] = resolve_dtype(group["geometry_dtype"])
        m = get_manifold(group["manifold"])
        group["manifold"] = m.name
        if group["retraction"] not in _RETRACTIONS:
            raise ValueError(f"retraction must be one of {_RETRACTIONS}, got {group['retraction']!r}")
        k = group["reorthonormalize_every"]
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ValueError(f"reorthonormalize_every must be None or an int >= 0, got {k!r}")
        if group["manifold_tol"] is not None:
            check_nonneg("manifold_tol", group["manifold_tol"])
        self._validate_hyper(group)
        if m.name == "euclidean":
            return
        for i, p in enumerate(group["params"]):
            name = f"params[{i}] of group {len(self.param_groups) - 1}"
            m.validate(name, p)
            if not p.is_floating_point():
                raise ValueError(f"{name}: a {m.name} parameter must be floating point, got {p.dtype}")
            self._init_manifold_state(p, m, group, name)

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

    def _reorth_every(self, group: dict, gdtype: torch.dtype) -> int:
        k = group["reorthonormalize_every"]
        if k is None:
            return 0 if gdtype == torch.float64 else 100
        return k

    @torch.no_grad()
    def _init_manifold_state(self, p: torch.Tensor, m: Manifold, group: dict, name: str) -> None:
        gd = self._geometry_dtype(group, p)
        Y = p.detach().to(gd)
        tol = self._tol(group, p)
        if not bool(torch.isfinite(Y).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        viol = m.check(Y)
        if viol > tol:
            raise ValueError(
                f"{name} is not on the {m.name} manifold: constraint violation {viol:.3e} > manifold_tol "
                f"{tol:.1e}; create it with icl.optim.manifold_point or project it first"
            )
        Y = m.project(Y)
        L = m.init_section(Y.cpu(), self._generator).to(p.device)
        state = self.state[p]
        state["step"] = torch.tensor(0.0)
        state["section"] = L
        self._init_coord_state(state, m.dim(tuple(p.shape)), L)
        p.copy_(m.point(L, p.shape[1]))

    def _init_coord_state(self, state: dict, dim: int, like: torch.Tensor) -> None:
        """Subclass hook: create the state in 𝔤^hor (flat, ``dim`` coordinates)."""

    # ---------------------------------------------------------------------------------------------------
    # step
    # ---------------------------------------------------------------------------------------------------
    def _euclidean_update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError

    def _velocity(self, state: dict, coords: torch.Tensor, group: dict) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One optimizer step; parameters whose ``grad`` is None are skipped.

        Args:
            closure: re-evaluates the model and returns the loss (evaluated with grad enabled).

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            m = get_manifold(group["manifold"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                if group.get("maximize", False):
                    grad = -grad
                state = self.state[p]
                if m.name == "euclidean":
                    if len(state) == 0:
                        state["step"] = torch.tensor(0.0)
                    self._euclidean_update(p, grad, state, group)
                else:
                    self._manifold_update(p, grad, m, state, group)
        return loss

    def _manifold_update(self, p: torch.Tensor, grad: torch.Tensor, m: Manifold, state: dict, group: dict):
        L = state["section"]
        P = p.shape[1]
        if not torch.equal(p, m.point(L, P).to(p.dtype)):
            # the parameter was changed outside the optimizer (e.g. weights loaded): re-anchor the section
            # at the new point, keeping the old complement as close as possible
            L = m.resection(m.project(p.detach().to(L.dtype)), L)
            state["section"] = L
        coords = m.grad_rep(L, grad.to(L.dtype))
        state["step"] += 1
        W = self._velocity(state, coords, group)
        m.retract_(L, W, P, group["retraction"])
        k = self._reorth_every(group, L.dtype)
        if k and int(state["step"]) % k == 0:
            m.reorthonormalize_(L, P)
        p.copy_(m.point(L, P))

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
        for group in self.param_groups:
            group.setdefault("manifold", "euclidean")
            group.setdefault("retraction", "cayley")
            group.setdefault("geometry_dtype", None)
            group.setdefault("reorthonormalize_every", None)
            group.setdefault("manifold_tol", None)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load optimizer state; Λ and the 𝔤^hor state keep the group's geometry dtype.

        ``torch.optim.Optimizer.load_state_dict`` casts floating state to the parameter's dtype, which would
        truncate a float64 section of a float32 parameter; those entries are restored from ``state_dict``.
        """
        super().load_state_dict(state_dict)
        saved_state = state_dict["state"]
        for group, saved in zip(self.param_groups, state_dict["param_groups"]):
            if group["manifold"] == "euclidean":
                continue
            for p, pid in zip(group["params"], saved["params"]):
                src = saved_state.get(pid)
                if src is None:
                    continue
                gd = self._geometry_dtype(group, p)
                for k, v in src.items():
                    if k != "step" and isinstance(v, torch.Tensor) and v.is_floating_point():
                        self.state[p][k] = v.to(device=p.device, dtype=gd, copy=True)
                L = self.state[p].get("section")
                if L is None:
                    continue
                if L.shape != (p.shape[0], p.shape[0]):
                    raise ValueError(
                        f"state_dict: section of shape {tuple(L.shape)} does not fit a parameter of shape "
                        f"{tuple(p.shape)}"
                    )
                # The parameter is ΛE by construction; if it differs only by rounding (e.g. it was snapped
                # onto the manifold when this optimizer was built), take ΛE so that a resumed run makes
                # exactly the steps of an uninterrupted one.  A real difference re-anchors Λ at the next step.
                Yl = get_manifold(group["manifold"]).point(L, p.shape[1]).to(p.dtype)
                if not torch.equal(p, Yl) and float((p.detach() - Yl).abs().max()) <= self._tol(group, p):
                    with torch.no_grad():
                        p.copy_(Yl)
