"""Fair "tuned" baselines: hyperparameters chosen on a training batch of prompts, reported on a test batch.

The baselines in the papers are often untuned (Dutta & Sra's notebooks fix η = 0.005, β = 0.9) or tuned on the
evaluation tasks (von Oswald et al. scan η on their 10k validation tasks). Here hyperparameters are chosen by
grid search on one batch, optionally refined with ``scipy.optimize.minimize`` (on log-scale for positive
hyperparameters), and reported on a separate batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.optimize
import torch

from reference_optimizers._checks import DivergedError, check_prompts
from reference_optimizers.losses import mean_query_loss

_BIG = 1e30  # the objective of a diverged run (inf/NaN), finite so that the optimisers can compare it
_TINY = 1e-12  # where a zero enters a log-parametrised refinement


@dataclass(frozen=True)
class TuneResult:
    """The outcome of :func:`tune`.

    Attributes:
        method: the tuned method's ``__name__``.
        hyperparameters: the chosen values: a float, or a list of ``steps`` floats for a per-step schedule,
            plus the ``fixed`` keyword arguments.
        train_loss: mean squared query error per step on the training prompts, (steps+1,) float64.
        test_loss: the same on the test prompts (``None`` without test prompts).
        objective: the value minimised on the training prompts.
        evaluations: how many times the method was run on the training prompts.
    """

    method: str
    hyperparameters: dict[str, Any]
    train_loss: torch.Tensor
    test_loss: torch.Tensor | None
    objective: float
    evaluations: int = 0
    grid_objective: float = field(default=math.nan)


def tune(
    method: Callable[..., torch.Tensor],
    train_prompts: Any,
    steps: int,
    grid: Mapping[str, Sequence[float]] | None = None,
    *,
    test_prompts: Any = None,
    per_step: Sequence[str] = (),
    fixed: Mapping[str, Any] | None = None,
    objective: str = "final",
    refine: bool = True,
    maxfev: int | None = None,
    starts: Sequence[Mapping[str, Any]] = (),
) -> TuneResult:
    """Choose the hyperparameters of ``method`` on ``train_prompts``; report loss per step on test prompts.

    Procedure: (1) grid search over the Cartesian product of ``grid`` (constant hyperparameters); (2) if
    ``refine``, ``scipy.optimize.minimize`` from the best grid point, over log-values for hyperparameters
    whose grid is positive and raw values otherwise; names in ``per_step`` become schedules of ``steps``
    values each (initialised at the grid optimum), so e.g. ``per_step=("eta",)`` tunes a step-size
    schedule. Nelder–Mead is used for up to 4 free values, Powell beyond. Diverging settings (NaN/inf)
    score 1e30.

    Args:
        method: a reference optimizer ``method(X, y, steps, **hyperparameters)``.
        train_prompts: prompts with X, y, x_query, y_query, on which the hyperparameters are chosen.
        steps: the number of iterations.
        grid: hyperparameter name -> candidate values (empty or None for a method without hyperparameters).
        test_prompts: a separate batch to report on.
        per_step: names in ``grid`` to tune as per-step schedules during refinement.
        fixed: extra keyword arguments passed unchanged (e.g. ``P`` for preconditioned_gd).
        objective: ``"final"`` (mean query loss after ``steps``) or ``"mean"`` (averaged over steps 1..steps).
        refine: run the scipy refinement after the grid.
        maxfev: the refinement's budget of method evaluations (default 100 per free value, at most 2000).
        starts: extra candidate points scored beside the grid (e.g. the steps that attain a Krylov bound, or a
            shorter run's schedule extended by a step that does nothing); a name in ``per_step`` may hold a
            list of ``steps`` values. The refinement starts from the best candidate of grid and starts.

    Returns:
        A :class:`TuneResult`.
    """
    X, y, xq, yq = check_prompts(train_prompts, "train_prompts")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    grid = dict(grid or {})
    for name, values in grid.items():
        if len(values) == 0 or not all(math.isfinite(float(v)) for v in values):
            raise ValueError(f"grid[{name!r}] must be a non-empty list of finite numbers, got {values!r}")
    unknown = set(per_step) - set(grid)
    if unknown:
        raise ValueError(f"per_step names {sorted(unknown)} are not in grid")
    if objective not in ("final", "mean"):
        raise ValueError(f"objective must be 'final' or 'mean', got {objective!r}")
    fixed = dict(fixed or {})
    names = list(grid)
    count = [0]

    def losses(hp: dict[str, Any], X, y, xq, yq) -> torch.Tensor:
        with torch.no_grad():
            try:
                it = method(X, y, steps, **fixed, **hp)
            except DivergedError:
                return torch.full((steps + 1,), math.inf, dtype=torch.float64)
        return mean_query_loss(it, xq, yq).to(torch.float64).cpu()

    def score(hp: dict[str, Any]) -> float:
        count[0] += 1
        curve = losses(hp, X, y, xq, yq)
        value = float(curve[-1]) if objective == "final" else float(curve[1:].mean())
        return value if math.isfinite(value) else _BIG

    best_hp: dict[str, Any] = {}
    best = math.inf
    for values in itertools.product(*(grid[k] for k in names)):
        hp = {k: float(v) for k, v in zip(names, values)}
        value = score(hp)
        if value < best:
            best, best_hp = value, hp
    grid_best = best
    for start in starts:
        hp = _check_start(start, names, per_step, steps)
        value = score(hp)
        if value < best:
            best, best_hp = value, hp

    if refine and names:
        log = {k: all(float(v) > 0 for v in grid[k]) for k in names}
        sizes = {k: steps if k in per_step else 1 for k in names}

        def unpack(z: np.ndarray) -> dict[str, Any]:
            hp, i = {}, 0
            for k in names:
                v = z[i : i + sizes[k]]
                v = np.exp(v) if log[k] else v
                hp[k] = [float(e) for e in v] if k in per_step else float(v[0])
                i += sizes[k]
            return hp

        def pack(k: str) -> np.ndarray:
            v = np.broadcast_to(np.asarray(best_hp[k], dtype=np.float64), (sizes[k],))
            return np.log(np.maximum(v, _TINY)) if log[k] else v.copy()

        z0 = np.concatenate([pack(k) for k in names])
        budget = maxfev if maxfev is not None else min(2000, 100 * len(z0))
        solver = "Nelder-Mead" if len(z0) <= 4 else "Powell"
        res = scipy.optimize.minimize(lambda z: score(unpack(z)), z0, method=solver, options={"maxfev": budget})
        if res.fun < best:
            best, best_hp = float(res.fun), unpack(res.x)
        else:  # keep the grid point or start, expanded to schedules where asked
            best_hp = {k: _schedule(best_hp[k], steps) if k in per_step else best_hp[k] for k in names}

    train_curve = losses(best_hp, X, y, xq, yq)
    test_curve = None
    if test_prompts is not None:
        test_curve = losses(best_hp, *check_prompts(test_prompts, "test_prompts"))
    return TuneResult(
        method=getattr(method, "__name__", repr(method)),
        hyperparameters={**fixed, **best_hp},
        train_loss=train_curve,
        test_loss=test_curve,
        objective=best,
        evaluations=count[0],
        grid_objective=grid_best,
    )


def _schedule(value: Any, steps: int) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple, np.ndarray)) else [float(value)] * steps


def _check_start(start: Mapping[str, Any], names: list[str], per_step: Sequence[str], steps: int) -> dict[str, Any]:
    if set(start) != set(names):
        raise ValueError(f"starts entries must set exactly the grid's names {names}, got {sorted(start)}")
    hp = {}
    for k in names:
        v = start[k]
        if isinstance(v, (list, tuple, np.ndarray)):
            if k not in per_step or len(v) != steps:
                raise ValueError(f"starts[{k!r}] may be a list only for a per_step name, with {steps} values")
            hp[k] = [float(e) for e in v]
        else:
            hp[k] = float(v)
        if not all(math.isfinite(e) for e in _schedule(hp[k], steps)):
            raise ValueError(f"starts[{k!r}] must be finite, got {v!r}")
    return hp


def tune_depths(
    method: Callable[..., torch.Tensor],
    train_prompts: Any,
    max_steps: int,
    grid: Mapping[str, Sequence[float]],
    *,
    per_step: Sequence[str],
    test_prompts: Any = None,
    fixed: Mapping[str, Any] | None = None,
    starts: Mapping[int, Sequence[Mapping[str, Any]]] | None = None,
    maxfev: int | None = None,
) -> list[TuneResult]:
    """Tune a per-step schedule for every depth T = 1, …, ``max_steps``, never worse than the depth before.

    Every name in ``per_step`` must be a schedule whose zero entry makes a step do nothing (a step size η_t,
    a momentum β_t: GD, preconditioned GD, heavy ball and Nesterov all keep w_T = w_{T−1} at η_T = β_T = 0).
    Depth T is tuned by :func:`tune` from the grid, from ``starts[T]`` (e.g. :func:`krylov_steps`, the steps that
    attain the Krylov bound when its polynomial has real roots) and from depth T−1's schedule extended by such a
    step, which scores exactly depth T−1's loss and which :func:`tune` keeps unless the refinement beats it. So the
    training objective never increases with T, which a fresh search per T does not guarantee (Nelder–Mead and
    Powell stall on long schedules).

    Args:
        method, train_prompts, grid, test_prompts, fixed, maxfev: as for :func:`tune`.
        max_steps: the deepest T.
        per_step: the grid names tuned as schedules: all of them.
        starts: depth -> extra candidate points for that depth.

    Returns:
        One :class:`TuneResult` per depth T = 1, …, ``max_steps``.
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    if set(per_step) != set(grid) or not grid:
        raise ValueError(f"per_step must name every grid entry ({sorted(grid)}), got {sorted(per_step)}")
    starts = dict(starts or {})
    unknown = sorted(set(starts) - set(range(1, max_steps + 1)))
    if unknown:
        raise ValueError(f"starts has depths {unknown} outside 1..{max_steps}")
    results: list[TuneResult] = []
    for T in range(1, max_steps + 1):
        extension = None
        if results:
            prev = results[-1].hyperparameters
            extension = {k: _schedule(prev[k], T - 1) + [0.0] for k in grid}
        candidates = list(starts.get(T, ())) + ([extension] if extension else [])
        # tune scores every candidate exactly and keeps the best, so the extension bounds the result
        results.append(tune(method, train_prompts, T, grid, test_prompts=test_prompts, per_step=per_step,
                            fixed=fixed, maxfev=maxfev, starts=candidates))  # fmt: skip
    return results
