"""Plots of one run of several methods: loss, sharpness (with the 2/η line), distance to GD.

``runs`` maps each method's label to its saved arrays (as in ``results.npz``:
``steps``, ``loss``, ``eigenvalues`` (T, k), ``distance``); values after a method
stopped are NaN and simply not drawn. Figures are drawn with matplotlib's Agg
canvas directly (no pyplot, no global backend switch) and written atomically, so
`flows show` can refresh them while a run writes them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .figures import colours, new_figure, save_figure

__all__ = ["plot_loss", "plot_sharpness", "plot_effective_sharpness", "plot_distance", "plot_run"]

Runs = Mapping[str, Mapping[str, np.ndarray]]


def _figure() -> tuple[Figure, object]:
    figure = new_figure(6.4, 4.0)
    return figure, figure.add_subplot()


def _legend(label: str, status: Mapping[str, str] | None) -> str:
    text = (status or {}).get(label, "ok")
    return label if text == "ok" else f"{label} ({text})"


def _mark_stop(axes, steps: np.ndarray, values: np.ndarray, line) -> None:
    """An × at the last finite value of a series that ends early (a divergence)."""
    finite = np.flatnonzero(np.isfinite(values))
    if finite.size and finite[-1] < values.size - 1:
        i = finite[-1]
        axes.plot(steps[i], values[i], "x", color=line.get_color(), markersize=9, mew=2)


def plot_loss(
    runs: Runs, path: str | os.PathLike, *, status: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Path:
    """Training loss against step, one line per method (log scale when all positive);
    a central flow's predicted loss L + ½⟨Σ, H⟩ (its model of the run's loss averaged over
    the oscillation) dashed, in the flow's colour."""
    figure, axes = _figure()
    colour = colours(runs)
    positive = True
    for label, arrays in runs.items():
        steps, loss = np.asarray(arrays["steps"]), np.real(np.asarray(arrays["loss"]))
        (line,) = axes.plot(steps, loss, label=_legend(label, status), lw=1.2,
                            color=colour[label])
        _mark_stop(axes, steps, loss, line)
        series = [loss]
        if "predicted_loss" in arrays:
            predicted = np.real(np.asarray(arrays["predicted_loss"]))
            axes.plot(steps, predicted, ls="--", lw=1.2, color=colour[label],
                      label=f"{label}: predicted L + ½⟨Σ,H⟩")
            series.append(predicted)
        finite = np.concatenate([s[np.isfinite(s)] for s in series])
        positive &= bool(finite.size == 0 or np.all(finite > 0))
    if positive:
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title or "training loss")
    axes.legend(fontsize="small")
    return save_figure(figure, path)


def plot_sharpness(
    runs: Runs, lr: float, path: str | os.PathLike, *, status: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Path:
    """The top Hessian eigenvalue against step, with the stability threshold 2/η."""
    figure, axes = _figure()
    colour = colours(runs)
    for label, arrays in runs.items():
        if "eigenvalues" not in arrays:
            continue
        steps = np.asarray(arrays["steps"])
        sharpness = np.real(np.asarray(arrays["eigenvalues"]))[:, 0]
        (line,) = axes.plot(steps, sharpness, label=_legend(label, status), lw=1.2,
                            color=colour[label])
        _mark_stop(axes, steps, sharpness, line)
    axes.axhline(2.0 / lr, color="black", ls="--", lw=1, label=f"2/η = {2.0 / lr:.4g}")
    axes.set_xlabel("step")
    axes.set_ylabel("sharpness λ₁(H)")
    axes.set_title(title or f"sharpness (η = {lr:g})")
    axes.legend(fontsize="small")
    return save_figure(figure, path)


def plot_effective_sharpness(
    runs: Runs, thresholds: Mapping[str, float], path: str | os.PathLike, *,
    status: Mapping[str, str] | None = None, title: str | None = None,
) -> Path:
    """The effective sharpness λ_max(P⁻¹H) against step, each optimizer's threshold c
    dashed (2 for GD and RMSProp, 2(1 + β) for heavy ball, 2(1 + β₁)/(1 − β₁) for Adam).

    A central flow's own report (``effective_eigenvalues``) is drawn where it has one,
    else the run's tracked eigenvalues (of P⁻¹H with ``Tracking(effective=True)``).
    """
    figure, axes = _figure()
    colour = colours(runs)
    for label, arrays in runs.items():
        key = "effective_eigenvalues" if "effective_eigenvalues" in arrays else "eigenvalues"
        if key not in arrays:
            continue
        steps = np.asarray(arrays["steps"])
        values = np.real(np.asarray(arrays[key]))[:, 0]
        drawn = ~np.isnan(values)
        (line,) = axes.plot(steps[drawn], values[drawn], label=_legend(label, status), lw=1.2,
                            color=colour[label])
        _mark_stop(axes, steps[drawn], values[drawn], line)
    for threshold in sorted(set(thresholds.values())):
        users = ", ".join(label for label, c in thresholds.items() if c == threshold)
        axes.axhline(threshold, color="black", ls="--", lw=1,
                     label=f"threshold {threshold:.4g} ({users})")
    axes.set_xlabel("step")
    axes.set_ylabel("effective sharpness λ₁(P⁻¹H)")
    axes.set_title(title or "effective sharpness")
    axes.legend(fontsize="small")
    return save_figure(figure, path)


def plot_distance(
    runs: Runs, path: str | os.PathLike, *, references: Mapping[str, str] | None = None,
    status: Mapping[str, str] | None = None, title: str | None = None,
) -> Path:
    """``‖w_method(k) − w_reference(k)‖`` against step (the reference is usually GD)."""
    figure, axes = _figure()
    colour = colours(runs)
    for label, arrays in runs.items():
        if "distance" not in arrays:
            continue
        ref = (references or {}).get(label)
        name = _legend(label, status) + (f" − {ref}" if ref else "")
        axes.plot(np.asarray(arrays["steps"]), np.asarray(arrays["distance"]), label=name,
                  lw=1.2, color=colour[label])
    axes.set_xlabel("step")
    axes.set_ylabel("‖w − w_ref‖")
    axes.set_title(title or "distance to the reference run")
    axes.legend(fontsize="small")
    return save_figure(figure, path)


def plot_run(
    runs: Runs,
    lr: float,
    directory: str | os.PathLike,
    *,
    references: Mapping[str, str] | None = None,
    status: Mapping[str, str] | None = None,
    title: str | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> list[Path]:
    """``loss.png``, ``sharpness.png`` (if eigenvalues were tracked; with ``thresholds``,
    each method's stability threshold, ``effective_sharpness.png`` instead) and
    ``distance.png`` (if distances were recorded) in ``directory``; returns the paths."""
    directory = Path(directory)
    prefix = f"{title}: " if title else ""
    written = [plot_loss(runs, directory / "loss.png", status=status, title=f"{prefix}loss")]
    if thresholds:
        written.append(
            plot_effective_sharpness(runs, thresholds, directory / "effective_sharpness.png",
                                     status=status, title=f"{prefix}effective sharpness")
        )
    elif any("eigenvalues" in arrays for arrays in runs.values()):
        written.append(
            plot_sharpness(runs, lr, directory / "sharpness.png", status=status,
                           title=f"{prefix}sharpness (η = {lr:g})")
        )
    if any("distance" in arrays for arrays in runs.values()):
        written.append(
            plot_distance(runs, directory / "distance.png", references=references, status=status,
                          title=f"{prefix}distance to the reference run")
        )
    return written
