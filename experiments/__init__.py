"""Studies: one module per result, a registry, and the ``python -m experiments`` CLI."""

from experiments import memformer_vs_cgd, noisy_regression, quickstart  # noqa: F401  (registers the studies)

STUDIES = ("quickstart", "memformer_vs_cgd", "noisy_regression")
