"""Studies: one module per result, a registry, and the ``python -m experiments`` CLI.

Importing the package imports every study module, and each registers itself in :mod:`experiments.registry`.
"""

from experiments import (  # noqa: F401  (registers the studies)
    baselines,
    gd_one_layer,
    manifold_adam_study,
    manifold_icl,
    memformer_vs_cgd,
    newton_vs_gd,
    noisy_regression,
    outer_optimizers,
    pgd_depth,
    quickstart,
)

STUDIES = (
    "quickstart",
    "baselines",
    "gd_one_layer",
    "pgd_depth",
    "newton_vs_gd",
    "manifold_adam",
    "manifold_icl",
    "outer_optimizers",
    "memformer_vs_cgd",
    "noisy_regression",
)
