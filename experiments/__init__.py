"""Studies: one module per result, a registry, and the ``python -m experiments`` CLI."""

from experiments import (  # noqa: F401
    baselines,
    manifold_adam_study,
    newton_vs_gd,
    outer_optimizers,
    quickstart,  # noqa: F401  (registers the studies)
)

STUDIES = ("quickstart", "newton_vs_gd", "manifold_adam", "outer_optimizers", "baselines")
