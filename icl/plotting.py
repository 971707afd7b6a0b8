"""Figures: one seaborn theme (colour-blind palette), every figure saved as PNG and PDF."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402


def set_theme() -> None:
    """The framework's plotting style (Garg et al.'s: darkgrid, colour-blind palette)."""
    sns.set_theme(style="darkgrid", palette="colorblind", context="paper")


def save_figure(fig: plt.Figure, stem: str | os.PathLike) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` and close it; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        tmp = path.with_name(f".{path.name}.tmp.{ext}")
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format=ext)
        os.replace(tmp, path)
        paths.append(path)
    plt.close(fig)
    return paths


def training_curve(
    rows: Sequence[Mapping[str, float]],
    evals: Sequence[Mapping[str, float]],
    stem: str | os.PathLike,
    *,
    optimum: float | None = None,
    trivial: float | None = None,
    title: str = "",
) -> list[Path]:
    """Training and held-out loss against steps (log scale), the theoretical optimum and the zero predictor
    dashed."""
    set_theme()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    if rows:
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=0.8, alpha=0.6, label="train batch")
    if evals:
        ax.plot(
            [e["step"] for e in evals],
            [e["eval_loss"] for e in evals],
            lw=1.6,
            marker="o",
            ms=3,
            label="held-out batch",
        )
    if optimum is not None:
        ax.axhline(optimum, ls="--", color="k", lw=1.2, label=f"theory optimum {optimum:.4g}")
    if trivial is not None:
        ax.axhline(trivial, ls=":", color="grey", lw=1.2, label=f"zero predictor {trivial:.4g}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("query MSE")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)
    return save_figure(fig, stem)
