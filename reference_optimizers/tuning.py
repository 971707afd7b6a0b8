"""Fair "tuned" baselines: hyperparameters chosen on a training batch of prompts, reported on a test batch.

The baselines in the papers are often untuned (Dutta & Sra's notebooks fix η = 0.005, β = 0.9) or tuned on the
evaluation tasks (von Oswald et al. scan η on their 10k validation tasks). Here hyperparameters are chosen by
grid search on one batch, optionally refined with ``scipy.optimize.minimize`` (on log-scale for positive
hyperparameters), optionally chosen among the candidates on a validation batch, and reported on a separate batch.

Heavy tails. The mean query loss of a deep schedule is an expectation dominated by rare prompts: a T-step GD
schedule has the residual polynomial r(λ) = Π_t (1 − η_t λ) on the spectrum of H = XᵀX/n, and r(λ)² grows like
λ^{2T} beyond the roots, so prompts with an extreme λ_max(H) (probability 1e-4 to 1e-5 at n = 20, d = 5) carry
the population loss at T ≥ 6. A schedule refined on a few thousand prompts that contain none of them sits at their
edge of stability: it looks excellent on them and on most other batches, and a test set that holds one such
prompt shows a loss far above the depth T−1 result. :func:`tail_weighted` turns a batch into a defensive
importance sample whose half with stretched inputs covers that tail, so that the objective :func:`tune` minimises
is an estimate of the population loss that is not blind to it; ``val_prompts`` then picks, among the refined
point and the starts, the one with the lowest loss on a separate batch.
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
from einops import einsum

from icl.progress import bar
from reference_optimizers._checks import (
    DivergedError,
    OutOfRangeError,
    check_prompts,
    prompt_weights,
)
from reference_optimizers.losses import mean_query_loss, query_loss

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
        objective: the value minimised on the training prompts, at the chosen hyperparameters.
        evaluations: how many times the method was run on the training prompts.
        grid_objective: the best objective of the grid alone.
        val_loss: the mean (importance-weighted) query loss per step on the validation prompts (``None`` without
            them).
    """

    method: str
    hyperparameters: dict[str, Any]
    train_loss: torch.Tensor
    test_loss: torch.Tensor | None
    objective: float
    evaluations: int = 0
    grid_objective: float = field(default=math.nan)
    val_loss: torch.Tensor | None = None


@dataclass(frozen=True)
class WeightedPrompts:
    """A prompt batch with importance weights: its mean query loss is Σ_b w_b ℓ_b / B (see :func:`tail_weighted`).

    Attributes:
        X, y, x_query, y_query: as in :class:`icl.prompts.PromptBatch`.
        weights: (B,) non-negative importance weights p(prompt)/q(prompt) of the law p the loss is wanted under
            and the law q the batch was drawn from.
    """

    X: torch.Tensor
    y: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    weights: torch.Tensor

    def __len__(self) -> int:
        return self.X.shape[0]


def tail_weighted(prompts: Any, stretch: float = math.sqrt(2.0)) -> WeightedPrompts:
    """A defensive importance sample of the prompt law that covers the tail of its spectrum.

    The context inputs of the second half of ``prompts`` are multiplied by ``stretch`` = s (their targets follow:
    y_i ← s·x_iᵀw* + ε_i, the noise ε_i = y_i − x_iᵀw* unchanged; the queries are kept). The batch is then a
    sample of the mixture q = ½p + ½p_s of the prompt law p and the law p_s whose context rows are x ~ N(0, s²Σ),
    and each prompt gets the weight p/q = 1/(½ + ½·p_s/p) ∈ (0, 2], with, for Gaussian rows x_i ~ N(0, Σ),

        log p_s(X)/p(X) = −nd·log s + ½(1 − s⁻²)·tr(X Σ⁻¹ Xᵀ).

    The weighted mean is an unbiased estimate of the mean under p whose variance is at most twice that of the
    plain mean for any loss (the weights are at most 2), while λ_max(H) of the stretched half reaches s² times the
    plain half's: the rare prompts that carry a deep schedule's loss are sampled (Owen & Zhou 2000, defensive
    importance sampling). Only for Gaussian context inputs.

    Args:
        prompts: a batch with X (B, n, d), y, x_query, y_query, w_star (B, d) and Sigma (d, d), drawn from a law
            with Gaussian inputs x ~ N(0, Σ) (:class:`icl.prompts.PromptBatch`), B >= 2.
        stretch: s > 1.

    Returns:
        :class:`WeightedPrompts` in the prompts' dtype.
    """
    X, y, xq, yq = check_prompts(prompts, "prompts")
    for attr in ("w_star", "Sigma"):
        if not hasattr(prompts, attr):
            raise ValueError(f"prompts must have {attr!r} (a PromptBatch): the weights need w* and Σ")
    if isinstance(stretch, bool) or not isinstance(stretch, (int, float)) or not math.isfinite(stretch) or stretch <= 1:
        raise ValueError(f"stretch must be a finite number > 1, got {stretch!r}")
    B, n, d = X.shape
    if B < 2:
        raise ValueError(f"prompts must hold at least 2 prompts (half of them are stretched), got {B}")
    w_star = prompts.w_star.to(X.dtype)
    half = B // 2
    signal = einsum(X, w_star, "b n d, b d -> b n")
    X = torch.cat([X[:half], stretch * X[half:]])
    y = torch.cat([y[:half], y[half:] + (stretch - 1) * signal[half:]])
    Sigma_inv = torch.linalg.inv(prompts.Sigma.to(torch.float64))
    quad = einsum(X.to(torch.float64), Sigma_inv, X.to(torch.float64), "b n i, i j, b n j -> b")
    log_ratio = -n * d * math.log(stretch) + 0.5 * (1 - stretch**-2) * quad
    weights = 1.0 / (0.5 + 0.5 * torch.exp(log_ratio))
    return WeightedPrompts(X=X, y=y, x_query=xq, y_query=yq, weights=weights.to(X.dtype))


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
    val_prompts: Any = None,
    restarts: int = 0,
    progress: bool = False,
) -> TuneResult:
    """Choose the hyperparameters of ``method`` on ``train_prompts``; report loss per step on test prompts.

    Procedure: (1) grid search over the Cartesian product of ``grid`` (constant hyperparameters); (2) if
    ``refine``, ``scipy.optimize.minimize`` from the best grid point, over log-values for hyperparameters
    whose grid is positive and raw values otherwise; names in ``per_step`` become schedules of ``steps``
    values each (initialised at the grid optimum), so e.g. ``per_step=("eta",)`` tunes a step-size
    schedule. Nelder–Mead is used for up to 4 free values, Powell beyond. Diverging settings (NaN/inf) and
    values outside a method's range (a negative step size, a momentum outside [0, 1)) score 1e30.

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
        val_prompts: a separate batch on which the result is chosen among the refined point and ``starts``.
        restarts: the refinement also runs from the next ``restarts`` best distinct candidates of grid and starts
            (each with the budget ``maxfev``), keeping the best refined point: a multi-start for objectives with
            several basins (GD++ at two steps has two, 0.4 apart in log loss, and one refinement from the best
            grid point lands in either). 0 (the default) refines from the best candidate only.
        progress: show a bar of the method evaluations (on a terminal; it stays when done, at the count used).

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
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
        raise ValueError(f"restarts must be an integer >= 0, got {restarts!r}")
    fixed = dict(fixed or {})
    names = list(grid)
    count = [0]
    points = math.prod(len(v) for v in grid.values())
    free = sum(steps if k in per_step else 1 for k in names)
    budget = maxfev if maxfev is not None else min(2000, 100 * free)
    total = points + len(starts) + ((1 + restarts) * budget if refine and names else 0)
    pbar = bar(total, f"tune {getattr(method, '__name__', 'method')}", quiet=not progress, unit="eval")

    weights = _cpu(prompt_weights(train_prompts, "train_prompts"))
    val = None
    if val_prompts is not None:
        val = (*check_prompts(val_prompts, "val_prompts"), _cpu(prompt_weights(val_prompts, "val_prompts")))

    def losses(hp: dict[str, Any], X, y, xq, yq, w=None) -> torch.Tensor:
        with torch.no_grad():
            try:
                it = method(X, y, steps, **fixed, **hp)
            except (DivergedError, OutOfRangeError):  # a refinement step outside the method's range scores 1e30
                return torch.full((steps + 1,), math.inf, dtype=torch.float64)
        if w is None:
            return mean_query_loss(it, xq, yq).to(torch.float64).cpu()
        return (query_loss(it, xq, yq).to(torch.float64).cpu() * w[:, None]).mean(dim=0)

    def reduce(curve: torch.Tensor) -> float:
        value = float(curve[-1]) if objective == "final" else float(curve[1:].mean())
        return value if math.isfinite(value) else _BIG

    def score(hp: dict[str, Any]) -> float:
        count[0] += 1
        pbar.update(1)
        return reduce(losses(hp, X, y, xq, yq, weights))

    best_hp: dict[str, Any] = {}
    best = math.inf
    scored: list[tuple[float, dict[str, Any]]] = []  # every grid point and start with its objective
    for values in itertools.product(*(grid[k] for k in names)):
        hp = {k: float(v) for k, v in zip(names, values)}
        value = score(hp)
        scored.append((value, hp))
        if value < best:
            best, best_hp = value, hp
    grid_best = best
    start_points = [_check_start(start, names, per_step, steps) for start in starts]
    for hp in start_points:
        value = score(hp)
        scored.append((value, hp))
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

        def pack(hp: dict[str, Any], k: str) -> np.ndarray:
            v = np.broadcast_to(np.asarray(hp[k], dtype=np.float64), (sizes[k],))
            return np.log(np.maximum(v, _TINY)) if log[k] else v.copy()

        origins = [best_hp]
        if restarts:  # the next best distinct candidates, in order of their objective
            seen = [np.concatenate([pack(best_hp, k) for k in names])]
            for value, hp in sorted(scored, key=lambda item: item[0]):
                if len(origins) > restarts or value >= _BIG:
                    break
                z = np.concatenate([pack(hp, k) for k in names])
                if not any(np.array_equal(z, other) for other in seen):
                    seen.append(z)
                    origins.append(hp)
        refined_best, refined_hp = math.inf, None
        for origin in origins:
            z0 = np.concatenate([pack(origin, k) for k in names])
            solver = "Nelder-Mead" if len(z0) <= 4 else "Powell"
            res = scipy.optimize.minimize(lambda z: score(unpack(z)), z0, method=solver, options={"maxfev": budget})
            if res.fun < refined_best:
                refined_best, refined_hp = float(res.fun), unpack(res.x)
        if refined_best < best:
            best, best_hp = refined_best, refined_hp
        else:  # keep the grid point or start, expanded to schedules where asked
            best_hp = {k: _schedule(best_hp[k], steps) if k in per_step else best_hp[k] for k in names}

    val_curve = None
    if val is not None:  # the refined point or a start, whichever is best on the validation prompts
        candidates = [best_hp, *start_points]
        curves = [losses(hp, *val) for hp in candidates]
        i = min(range(len(candidates)), key=lambda j: reduce(curves[j]))
        best_hp, val_curve = candidates[i], curves[i]
        if names and refine:
            best_hp = {k: _schedule(best_hp[k], steps) if k in per_step else best_hp[k] for k in names}
    pbar.total = count[0]  # the refinement may stop before its budget: the bar ends full
    pbar.set_postfix_str(f"objective {best:.4g}")
    pbar.close()
    train_curve = losses(best_hp, X, y, xq, yq, weights)
    test_curve = None
    if test_prompts is not None:
        test = check_prompts(test_prompts, "test_prompts")
        test_curve = losses(best_hp, *test, _cpu(prompt_weights(test_prompts, "test_prompts")))
    return TuneResult(
        method=getattr(method, "__name__", repr(method)),
        hyperparameters={**fixed, **best_hp},
        train_loss=train_curve,
        test_loss=test_curve,
        objective=best if val is None else reduce(train_curve),
        evaluations=count[0],
        grid_objective=grid_best,
        val_loss=val_curve,
    )


def _cpu(w: torch.Tensor | None) -> torch.Tensor | None:
    return None if w is None else w.cpu()


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
    val_prompts: Any = None,
    restarts: int = 0,
) -> list[TuneResult]:
    """Tune a per-step schedule for every depth T = 1, …, ``max_steps``, never worse than the depth before.

    Every name in ``per_step`` must be a schedule whose zero entry makes a step do nothing (a step size η_t,
    a momentum β_t: GD, preconditioned GD, heavy ball and Nesterov all keep w_T = w_{T−1} at η_T = β_T = 0).
    Depth T is tuned by :func:`tune` from the grid, from ``starts[T]`` (e.g. :func:`krylov_steps`, the steps that
    attain the Krylov bound when its polynomial has real roots) and from depth T−1's schedule extended by such a
    step, which scores exactly depth T−1's loss and which :func:`tune` keeps unless the refinement beats it. So the
    training objective never increases with T, which a fresh search per T does not guarantee (Nelder–Mead and
    Powell stall on long schedules). With ``val_prompts``, depth T's result is the best on them among the refined
    schedule, ``starts[T]`` and depth T−1's result extended by a zero step (:func:`tune`), so the validation loss
    never increases with T either, and depth T+1 extends that result: a schedule refined to the training batch's
    edge of stability is replaced by the T−1 steps plus one that generalise (pass :func:`tail_weighted` batches
    for training and validation where the deep losses are heavy-tailed).

    Args:
        method, train_prompts, grid, test_prompts, fixed, maxfev, val_prompts, restarts: as for :func:`tune`.
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
                            fixed=fixed, maxfev=maxfev, starts=candidates, val_prompts=val_prompts,
                            restarts=restarts))  # fmt: skip
    return results
