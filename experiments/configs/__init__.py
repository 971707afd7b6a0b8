"""The studies' configs and profiles, one torch-free module per study (``experiments.configs.NAME``).

``python -m experiments run NAME --show-config`` and config errors resolve and validate a study's config from
here alone, without importing torch, scipy or the study; the study module re-exports every name.
"""
