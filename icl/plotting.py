"""Figures: one seaborn theme (colour-blind palette), every figure saved as PNG and PDF."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import matplotlib.pyplot as plt


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def __getattr__(name: str) -> Any:
    """``plt`` (matplotlib.pyplot on the Agg backend) and ``sns`` (seaborn), imported on first use, so that
    importing this module (a study definition does) costs no plotting library: ``run --show-config`` stays light."""
    if name == "plt":
        return _pyplot()
    if name == "sns":
        _pyplot()
        import seaborn as sns

        return sns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def set_theme() -> None:
    """The framework's plotting style (Garg et al.'s: darkgrid, colour-blind palette)."""
    __getattr__("sns").set_theme(style="darkgrid", palette="colorblind", context="paper")


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
    _pyplot().close(fig)
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
    fig, ax = _pyplot().subplots(figsize=(5.5, 3.6))
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
