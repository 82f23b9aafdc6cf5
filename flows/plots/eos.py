"""Edge-of-stability figures: progressive sharpening, the limiting flows of normalized GD and
GD on √L, the quadratic 2-cycle, and eigenvector rotation.

Every function takes plain numpy arrays and a file path, draws on matplotlib's Agg canvas
directly (no pyplot, no global backend switch) and returns the path written. NaN values
(not tracked, or after a divergence) are simply not drawn.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .figures import new_figure, save_figure

__all__ = [
    "plot_progressive_sharpening",
    "plot_flow_comparison",
    "plot_two_cycle",
    "plot_rotation",
    "plot_rotation_vs_lr",
]

Run = Mapping[str, np.ndarray | float | str]


def _figure(rows: int, cols: int, width: float = 5.0, height: float = 3.4):
    figure = new_figure(width * cols, height * rows)
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def _finite(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    keep = np.isfinite(y)
    return x[keep], y[keep]


def plot_progressive_sharpening(
    panels: Mapping[str, Sequence[Run]], path: str | os.PathLike
) -> Path:
    """The classic edge-of-stability picture (Cohen et al., ICLR 2021), one column per
    panel (e.g. per loss): training loss on top, sharpness below with a dashed ``2/η``
    line per learning rate.

    Each run has ``lr``, ``steps``, ``loss`` and ``sharpness`` (NaN where not tracked),
    optionally ``label`` and ``loss_steps`` (when the loss is saved at other steps).
    """
    figure, axes = _figure(2, len(panels))
    for col, (title, runs) in enumerate(panels.items()):
        loss_axes, sharp_axes = axes[0, col], axes[1, col]
        for run in runs:
            lr = float(run["lr"])
            label = str(run.get("label", f"η = {lr:g}"))
            loss_steps = run.get("loss_steps", run["steps"])
            line = loss_axes.plot(*_finite(loss_steps, run["loss"]), lw=1, label=label)[0]
            color = line.get_color()
            sharp_axes.plot(*_finite(run["steps"], run["sharpness"]), lw=1.2, color=color)
            sharp_axes.axhline(2 / lr, ls="--", lw=1, color=color)
        loss_axes.set_yscale("log")
        loss_axes.set_title(title)
        loss_axes.set_ylabel("training loss")
        loss_axes.legend(fontsize=8)
        sharp_axes.set_xlabel("step")
        sharp_axes.set_ylabel("sharpness λ₁ (dashed: 2/η)")
    return save_figure(figure, path)


def plot_flow_comparison(
    panels: Sequence[Mapping],
    path: str | os.PathLike,
    *,
    xlabel: str = "τ' = η² · step",
    ncols: int | None = None,
) -> Path:
    """Discrete optimizers against their limiting flows in rescaled time, one panel each
    (``ncols`` per row, all in one row by default).

    A panel is ``{"title", "ylabel", "curves": [{"label", "x", "y", "flow": bool}]}`` and
    optionally ``"log": True``; flows are drawn as solid lines, discrete runs as thin
    lines with dots.
    """
    ncols = len(panels) if ncols is None else ncols
    nrows = -(-len(panels) // ncols)
    figure, axes = _figure(nrows, ncols)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.ravel(), panels):
        for curve in panel["curves"]:
            x, y = _finite(curve["x"], curve["y"])
            if curve.get("flow"):
                ax.plot(x, y, "-", lw=2, alpha=0.8, label=curve["label"])
            else:
                ax.plot(x, y, ".-", lw=0.6, ms=2, label=curve["label"])
        ax.set_title(panel["title"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel["ylabel"])
        if panel.get("log"):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    return save_figure(figure, path)


def plot_two_cycle(
    runs: Mapping[str, np.ndarray],
    cycles: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    title: str = "",
) -> Path:
    """Iterates of 2-D runs in the plane (``runs``: label → (T, 2)) with the predicted
    2-cycle points (``cycles``: label → (2, 2)) marked by crosses; right panel: the
    component along the top eigenvector (first coordinate) against the step."""
    figure, axes = _figure(1, 2)
    plane, along = axes[0]
    for label, iterates in runs.items():
        iterates = np.asarray(iterates)
        line = plane.plot(iterates[:, 0], iterates[:, 1], ".-", lw=0.5, ms=3, label=label)[0]
        along.plot(iterates[:, 0], ".-", lw=0.5, ms=3, color=line.get_color(), label=label)
        if label in cycles:
            cycle = np.asarray(cycles[label])
            plane.plot(cycle[:, 0], cycle[:, 1], "x", ms=12, mew=2, color=line.get_color())
            for value in cycle[:, 0]:
                along.axhline(value, ls="--", lw=1, color=line.get_color())
    plane.set_xlabel("w₁ (top eigenvector)")
    plane.set_ylabel("w₂")
    plane.set_title(title)
    plane.legend(fontsize=8)
    along.set_xlabel("step")
    along.set_ylabel("w₁ (dashed: predicted 2-cycle)")
    return save_figure(figure, path)


def plot_rotation(
    panels: Mapping[str, Sequence[Run]], path: str | os.PathLike
) -> Path:
    """Eigenvector rotation (Wang & Roberts 2024), one column per model: ``ηλ₁`` with the
    stability line 2 on top, the overlap ``|⟨u₁(τ), u₁(τ − Δ)⟩|`` below.

    Each run has ``lr``, ``steps`` and ``sharpness`` at the tracked points, and
    ``overlap_steps``, ``overlap``; optionally ``label``.
    """
    figure, axes = _figure(2, len(panels))
    for col, (title, runs) in enumerate(panels.items()):
        top, bottom = axes[0, col], axes[1, col]
        for run in runs:
            lr = float(run["lr"])
            label = str(run.get("label", f"η = {lr:g}"))
            scaled = lr * np.asarray(run["sharpness"])
            line = top.plot(*_finite(run["steps"], scaled), lw=1, label=label)[0]
            overlap = _finite(run["overlap_steps"], run["overlap"])
            bottom.plot(*overlap, lw=1, color=line.get_color())
        top.axhline(2.0, ls="--", lw=1, color="k")
        top.set_title(title)
        top.set_ylabel("η λ₁ (dashed: 2)")
        top.legend(fontsize=8)
        bottom.set_xlabel("step")
        bottom.set_ylabel("|⟨u₁(τ), u₁(τ−Δ)⟩|")
    return save_figure(figure, path)


def plot_rotation_vs_lr(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    *,
    ylabel: str = "total rotation of u₁ (rad)",
) -> Path:
    """A rotation summary against ``η λ₁(w₀)`` (the edge at 2 dashed), one line per model:
    ``curves`` maps a label to (η λ₁(w₀) values, rotation values)."""
    figure, axes = _figure(1, 1)
    ax = axes[0, 0]
    for label, (x, y) in curves.items():
        ax.plot(x, y, "o-", label=label)
    ax.axvline(2.0, ls="--", lw=1, color="k")
    ax.set_xlabel("η λ₁(w₀)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return save_figure(figure, path)
