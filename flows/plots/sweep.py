"""The summary of learning-rate sweeps against η: final loss, final ηS, distance to GD, and
the time GD (or a flow) takes to reach the edge of stability ηS = 2 (Cohen, Kaur, Li,
Kolter, Talwalkar, ICLR 2021).

A sweep is a `flows.Trajectory` returned by `flows.sweep` (leading sweep axes ``(L,)`` or
``(L, S)`` with seeds), or a mapping with the same arrays (``lr``, ``steps``, ``loss``,
``params``, ``eigenvalues``, ``stopped_at``), e.g. loaded from a results file. With seeds
the plot shows the mean over seeds and a band from the smallest to the largest value.
Figures are drawn on matplotlib's Agg canvas (no pyplot, no windows).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .figures import colours, new_figure, save_figure

__all__ = ["sweep_summary", "plot_sweep_summary"]


def _get(sweep: Any, name: str) -> np.ndarray | None:
    value = sweep.get(name) if isinstance(sweep, Mapping) else getattr(sweep, name, None)
    return None if value is None else np.asarray(value)


def sweep_summary(
    sweep: Any, reference: Any | None = None, *, edge_tolerance: float = 0.01
) -> dict[str, np.ndarray]:
    """Per-member numbers of a sweep, each of the sweep's shape (``(L,)`` or ``(L, S)``).

    Keys:
        ``lr``: η.
        ``final_loss``: the loss at the last saved step (NaN if the member diverged).
        ``final_lr_sharpness``: ``η S`` at the last saved step, S = λ₁(H) (the tracked top
            eigenvalue, NaN if none was tracked); GD is stable on a quadratic iff ηS < 2.
        ``time_to_edge``: the first saved step with ``η S ≥ 2 (1 − edge_tolerance)`` (NaN if
            never reached or not tracked).
        ``distance``, ``max_distance``: ``‖w(K) − w_ref(K)‖`` at the last saved step K and
            its largest value over the saved steps, against ``reference`` (a sweep over the
            same learning rates and steps, usually GD; NaN where either diverged or without
            a reference).
        ``stopped_at``: the step where the member diverged or failed (−1 if ok).
    """
    lr = _get(sweep, "lr")
    loss = np.real(_get(sweep, "loss"))
    shape = lr.shape
    out: dict[str, np.ndarray] = {"lr": lr, "final_loss": loss[..., -1]}
    eigenvalues = _get(sweep, "eigenvalues")
    if eigenvalues is None:
        nan = np.full(shape, np.nan)
        out["final_lr_sharpness"], out["time_to_edge"] = nan, nan.copy()
    else:
        steps = np.broadcast_to(_get(sweep, "steps"), loss.shape)
        lr_sharpness = lr[..., None] * np.real(eigenvalues[..., 0])
        out["final_lr_sharpness"] = lr_sharpness[..., -1]
        at_edge = lr_sharpness >= 2.0 * (1.0 - edge_tolerance)  # NaN compares False
        first = np.argmax(at_edge, axis=-1)
        reached = np.take_along_axis(steps, first[..., None], axis=-1)[..., 0]
        out["time_to_edge"] = np.where(at_edge.any(axis=-1), reached, np.nan)
    if reference is None:
        out["distance"], out["max_distance"] = np.full(shape, np.nan), np.full(shape, np.nan)
    else:
        ref_lr, ref_params = _get(reference, "lr"), _get(reference, "params")
        params = _get(sweep, "params")
        if ref_lr.shape != shape or not np.allclose(ref_lr, lr, rtol=1e-12, atol=0.0):
            raise ValueError(
                f"reference: the reference sweep has learning rates {ref_lr.ravel().tolist()}, "
                f"the sweep {lr.ravel().tolist()}: sweep both over the same lrs"
            )
        if ref_params.shape != params.shape:
            raise ValueError(
                f"reference: parameters saved with shape {ref_params.shape} vs {params.shape}: "
                "use the same steps and save_every"
            )
        distance = np.linalg.norm(np.real(params) - np.real(ref_params), axis=-1)
        out["distance"] = distance[..., -1]
        finite = np.where(np.isfinite(distance), distance, -np.inf)
        largest = finite.max(axis=-1)
        out["max_distance"] = np.where(np.isfinite(distance).all(axis=-1), largest, np.nan)
    out["stopped_at"] = _get(sweep, "stopped_at")
    return out


def _by_lr(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over seeds (the second sweep axis, if any), ignoring NaN."""
    if values.ndim == 1:
        return values, values, values
    finite = np.isfinite(values)
    count = finite.sum(axis=1)
    safe = np.where(finite, values, 0.0)
    mean = np.where(count > 0, safe.sum(axis=1) / np.maximum(count, 1), np.nan)
    low = np.where(count > 0, np.where(finite, values, np.inf).min(axis=1), np.nan)
    high = np.where(count > 0, np.where(finite, values, -np.inf).max(axis=1), np.nan)
    return mean, low, high


def _draw(axes, lr: np.ndarray, values: np.ndarray, label: str, diverged: np.ndarray,
          colour: str):
    mean, low, high = _by_lr(values)
    (line,) = axes.plot(lr, mean, "o-", ms=3.5, lw=1.2, label=label, color=colour)
    if values.ndim > 1:
        axes.fill_between(lr, low, high, color=line.get_color(), alpha=0.2, lw=0)
    # Diverged learning rates: a cross on the bottom edge of the axes.
    if diverged.any():
        transform = axes.get_xaxis_transform()
        axes.plot(lr[diverged], np.zeros(diverged.sum()), "x", color=line.get_color(),
                  ms=8, mew=2, transform=transform, clip_on=False)


def _positive(values: list[np.ndarray]) -> bool:
    finite = np.concatenate([v[np.isfinite(v)].ravel() for v in values] or [np.zeros(0)])
    return bool(finite.size and np.all(finite > 0))


def plot_sweep_summary(
    sweeps: Any,
    path: str | os.PathLike,
    *,
    reference: str | Any | None = "gd",
    edge_tolerance: float = 0.01,
    title: str | None = None,
) -> Path:
    """Plot a sweep's summary against the learning rate η (log axis), four panels:
    final loss, final ηS (with the stability line ηS = 2), distance to the reference
    ‖w(K) − w_GD(K)‖ at the last saved step, and the time (step) to reach the edge
    ηS ≥ 2(1 − ``edge_tolerance``). Learning rates where a member diverged (with seeds: any
    seed) are crosses on the bottom edge; with seeds the lines are means over the seeds that
    did not diverge, with a band from the smallest to the largest value.

    Args:
        sweeps: one sweep, or a mapping ``label -> sweep`` (e.g. ``{"gd": ..., "central_flow":
            ...}``), each a `flows.Trajectory` from `flows.sweep` or a mapping of its arrays;
            all over the same learning rates. Sharpness panels need ``num_eigenvalues ≥ 1``.
        path: the PNG file to write (its folder is created).
        reference: the label in ``sweeps`` of the run the distances are measured to (default
            ``"gd"``; no distance panel entries if absent), or a sweep itself, or None.
        edge_tolerance: relative slack below 2 that counts as having reached the edge.
        title: the figure title.

    Returns:
        The path written.
    """
    if not isinstance(sweeps, Mapping) or "loss" in sweeps:
        label = str(getattr(sweeps, "method", "sweep"))
        sweeps = {label: sweeps}
    if isinstance(reference, str):
        ref_label = reference
        reference = sweeps.get(reference)
    else:
        ref_label = "reference"
    summaries = {
        label: sweep_summary(
            sweep, None if sweep is reference else reference, edge_tolerance=edge_tolerance
        )
        for label, sweep in sweeps.items()
    }

    colour = colours(summaries)
    figure = new_figure(10.0, 7.0)
    panels = figure.subplots(2, 2, sharex=True).ravel()
    spec = [
        ("final_loss", "final loss", "final loss L(w_K)"),
        ("final_lr_sharpness", "final ηS", "η λ₁(H) at the last step"),
        ("distance", f"distance to {ref_label}", f"‖w(K) − w_{ref_label}(K)‖"),
        ("time_to_edge", "time to reach the edge", "first step with ηS ≥ 2"),
    ]
    for axes, (key, name, ylabel) in zip(panels, spec):
        drawn = []
        for label, summary in summaries.items():
            values = summary[key]
            if not np.isfinite(values).any():
                continue
            lr = summary["lr"] if summary["lr"].ndim == 1 else summary["lr"][:, 0]
            diverged = _by_lr(np.where(summary["stopped_at"] >= 0, 1.0, 0.0))[2] > 0  # any seed
            _draw(axes, lr, values, label, diverged, colour[label])
            drawn.append(values)
        if key == "final_lr_sharpness":
            axes.axhline(2.0, color="black", ls="--", lw=1, label="ηS = 2")
        if key != "time_to_edge" and _positive(drawn):
            axes.set_yscale("log")
        if not drawn:
            axes.text(0.5, 0.5, "not tracked" if key != "distance" else "no reference",
                      transform=axes.transAxes, ha="center", va="center", color="gray")
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_title(name)
        axes.set_ylabel(ylabel)
        if drawn or key == "final_lr_sharpness":
            axes.legend(fontsize="small")
    for axes in panels[2:]:
        axes.set_xlabel("learning rate η")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)
