"""Studies: one module per result, a registry, and the ``python -m experiments`` CLI."""

from experiments import gd_one_layer, pgd_depth, quickstart  # noqa: F401  (registers the studies)

STUDIES = ("quickstart", "gd_one_layer", "pgd_depth")
