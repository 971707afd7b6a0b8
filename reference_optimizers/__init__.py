"""Classical iterations on R(w) = (1/2n)‖Xw − y‖², batched over prompts, returning every iterate."""

from reference_optimizers.gradient_descent import gradient_descent, moments
from reference_optimizers.theory import OneLayerOptimum, one_layer_optimum

__all__ = ["gradient_descent", "moments", "one_layer_optimum", "OneLayerOptimum"]
