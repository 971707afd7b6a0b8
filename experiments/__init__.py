"""Studies: one definition module and one report module per result, an explicit registry
(:mod:`experiments.registry`) and the ``python -m experiments`` CLI.

Importing the package imports nothing else: a study's modules are imported when it is run or reported.
"""
