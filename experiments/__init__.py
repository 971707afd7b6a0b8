"""Studies: one module per result, a registry, and the ``python -m experiments`` CLI."""

from experiments import quickstart  # noqa: F401  (registers the studies)

STUDIES = ("quickstart",)
