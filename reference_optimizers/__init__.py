"""Classical iterations on R(w) = (1/2n)‖Xw − y‖², batched over prompts, returning every iterate.

Inputs may be float16 or bfloat16: the methods built on linear algebra (least squares, ridge, Newton, GD++ with
γ ≠ 0) then compute in float32, which torch's pinv/solve/eigh need, and return the input's dtype. Hyperparameters
outside a method's range (a constant η < 0, β outside [0, 1), γ < 0) raise ``ValueError`` before any compute;
per-step schedules are the general recurrences and may hold any finite values.
"""

from reference_optimizers.closed_form import least_squares, ridge
from reference_optimizers.conjugate_gradient import conjugate_gradient
from reference_optimizers.gd_plus_plus import gd_plus_plus
from reference_optimizers.gradient_descent import gradient_descent, moments, preconditioned_gd, step_schedule
from reference_optimizers.krylov import KrylovBound, krylov_bound, krylov_steps
from reference_optimizers.losses import mean_query_loss, query_loss
from reference_optimizers.momentum import heavy_ball, nesterov
from reference_optimizers.newton import iterative_newton, newton, newton_schulz
from reference_optimizers.theory import OneLayerOptimum, one_layer_optimum
from reference_optimizers.tuning import TuneResult, WeightedPrompts, tail_weighted, tune, tune_depths

__all__ = [
    "gradient_descent",
    "moments",
    "one_layer_optimum",
    "OneLayerOptimum",
    "step_schedule",
    "preconditioned_gd",
    "gd_plus_plus",
    "heavy_ball",
    "nesterov",
    "conjugate_gradient",
    "newton",
    "newton_schulz",
    "iterative_newton",
    "least_squares",
    "ridge",
    "query_loss",
    "mean_query_loss",
    "krylov_bound",
    "krylov_steps",
    "KrylovBound",
    "tune",
    "tune_depths",
    "TuneResult",
    "WeightedPrompts",
    "tail_weighted",
]
