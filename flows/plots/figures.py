"""Figures for files: matplotlib's Agg canvas directly (no pyplot, no global backend
switch), written atomically so a reader never sees half a PNG."""

from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..results import atomic_write_bytes

__all__ = ["new_figure", "save_figure", "colours"]


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of ``width × height`` inches with its own Agg canvas."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``figure`` as a PNG at ``path`` (folders made as needed), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def colours(labels) -> dict[str, str]:
    """One colour per method label, by its place among all the run's labels, so a method
    keeps its colour in every figure, also where another method is not drawn."""
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}
