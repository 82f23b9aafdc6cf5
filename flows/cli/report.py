"""What the command line writes and prints: ``results.npz``, ``summary.json``, the plots,
the summary table, and ``flows show``.

One layout for single runs and sweeps: the arrays of a sweep have a leading
learning-rate axis, its ``summary.json`` one entry per learning rate (``by_lr``) under
each method, and its plot is ``sweep.png``.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..methods import default_optimizer, make_rule
from ..options import ConfigError, Method
from ..results import RunDirectory, load_json, load_npz, save_json, save_npz, split_keys
from ..trajectory import status_text
from .config import Config

__all__ = [
    "PLOTS",
    "versions",
    "header",
    "start_summary",
    "write_results",
    "interrupted",
    "format_summary",
    "show",
]

PLOTS = ("loss.png", "sharpness.png", "effective_sharpness.png", "distance.png", "sweep.png")

def versions() -> dict[str, str]:
    """Versions of the package and of what decides its numbers."""
    out = {"python": platform.python_version()}
    for name in ("flows", "jax", "jaxlib", "diffrax", "equinox", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            module = sys.modules.get(name)
            out[name] = getattr(module, "__version__", "unknown")
    from .. import __version__

    out["flows"] = __version__
    return out


def header(config: Config, problem, out: Path) -> str:
    """The line printed when a run starts."""
    lr = config.run.lr
    lr_text = (
        f"η ∈ {{{', '.join(f'{v:g}' for v in lr)}}}" if config.run.is_sweep
        else f"η = {lr:g}"
    )
    if not config.run.is_sweep and all(m.model == "gd" for m in config.run.methods.values()):
        lr_text += f" (2/η = {2 / lr:.4g})"  # GD's edge; other optimizers have their own
    labels = [
        label if label not in config.run.start_from
        else "{} (takes over {} at step {})".format(label, *config.run.start_from[label])
        for label in config.labels
    ]
    return (
        f"flows run: {problem.name} ({problem.num_params} parameters, {config.dtype}), "
        f"{lr_text}, {config.run.steps} steps; methods: {', '.join(labels)} → {out}/"
    )


def interrupted(config: Config, run_dir: RunDirectory) -> str:
    """The line printed when a run is interrupted: how far its checkpoint got, and how
    to resume."""
    steps_done = 0
    try:
        checkpoint = run_dir.read_checkpoint()
    except ValueError:
        checkpoint = None
    if checkpoint is not None and "steps_done" in checkpoint:
        steps_done = int(checkpoint["steps_done"])
    return (
        f"\nflows: interrupted; {steps_done} of {config.run.steps} steps are saved in "
        f"{run_dir.path}/ — run the same command again to resume"
    )


# --------------------------------------------------------------------- summaries


def _base_summary(config: Config, problem, complete: bool) -> dict[str, Any]:
    return {
        "complete": complete,
        "problem": problem.name,
        "num_params": problem.num_params,
        "lr": list(config.run.lr) if config.run.is_sweep else config.run.lr,
        "steps": config.run.steps,
        "seed": config.seed,
        "dtype": config.dtype,
        "fingerprint": config.fingerprint(),
        "config_file": str(config.source),
        "config": config.as_dict(),
        "versions": versions(),
    }


def start_summary(config: Config, problem, run_dir: RunDirectory) -> None:
    """Write the summary of a run that has not finished (unless there is one): it marks
    the folder as this configuration's and lets `flows show` read a running run."""
    run_dir.create()
    if not run_dir.summary_path.exists():
        save_json(run_dir.summary_path, _base_summary(config, problem, complete=False))


def _last_finite(values: np.ndarray) -> int | None:
    finite = np.flatnonzero(np.isfinite(np.real(values)))
    return int(finite[-1]) if finite.size else None


def _number(value) -> float | None:
    value = float(np.real(value))
    return value if math.isfinite(value) else None


def _method_summary(
    method: str, optimizer: str | None, reference: str | None,
    arrays: Mapping[str, np.ndarray], status_code: int, stopped_at: int, lr: float,
    *, wall: float, compile: float,
) -> dict[str, Any]:
    """One method's entry of ``summary.json`` (one learning rate)."""
    loss = np.asarray(arrays["loss"])
    i = _last_finite(loss)
    entry: dict[str, Any] = {
        "method": method,
        "status": status_text(status_code, stopped_at),
        "status_code": int(status_code),
        "stopped_at": None if stopped_at < 0 else int(stopped_at),
        "final_step": None if i is None else int(np.asarray(arrays["steps"])[i]),
        "final_loss": None if i is None else _number(loss[i]),
        "final_sharpness": None,
        "distance_to_reference": None,
        "reference": reference,
        "wall_seconds": round(float(wall), 3),
        "compile_seconds": round(float(compile), 3),
    }
    if optimizer not in (None, "gd"):
        entry["optimizer"] = optimizer
    if i is not None and "eigenvalues" in arrays:
        entry["final_sharpness"] = _number(np.asarray(arrays["eigenvalues"])[i, 0])
        entry["two_over_lr"] = 2.0 / lr
    if i is not None and "distance" in arrays:
        entry["distance_to_reference"] = _number(np.asarray(arrays["distance"])[i])
    if "max_imag" in arrays:  # the principal flow: how complex its state got
        entry["max_imag"] = _number(np.nanmax(np.asarray(arrays["max_imag"])))
    return entry


def _message(label: str, entry: Mapping[str, Any], steps: int) -> str:
    """A sentence on how a method ended. ``final_step`` is the last saved step with a
    finite loss: everything saved after it is NaN (a divergence) or was never reached
    (an integrator failure, a flow's divergence between saved steps)."""
    code, at = entry["status_code"], entry["stopped_at"]
    kept = entry["final_step"]
    if code == 0:
        return f"{label}: ran all {steps} steps"
    if code == 1:
        saved = ("nothing it saved is finite" if kept is None
                 else f"its results are kept up to step {kept}")
        return (
            f"{label} diverged at step {at} (the loss became non-finite or exceeded the "
            f"divergence threshold); it was stopped there, {saved}, and the other methods "
            "went on"
        )
    if at is None:
        when = ""
    elif kept is None or kept >= at:
        when = f" before step {at}"
    else:
        when = f" between steps {kept} and {at}"
    saved = ("nothing it saved is finite" if kept is None
             else f"its results are kept up to step {kept}, the last saved step it reached")
    return (
        f"{label}: the integrator failed{when} (it spent its step budget or its step size "
        f"collapsed); {saved}, and the other methods went on"
    )


def _messages(methods: Mapping[str, Mapping[str, Any]], steps: int) -> list[str]:
    return [_message(label, entry, steps) for label, entry in methods.items()]


# ----------------------------------------------------------------------- results


def _results_arrays(config: Config, problem, output) -> dict[str, Any]:
    """``results.npz``: ``"<label>/<name>"`` and ``lr``."""
    from ..runs import is_parameter_series

    spec = config.run
    arrays: dict[str, Any] = {"lr": np.asarray(spec.lr)}
    for label, named in output.arrays.items():
        for name, value in named.items():
            if spec.save_params or not is_parameter_series(name, value, problem.num_params):
                arrays[f"{label}/{name}"] = value  # streamed into the file, one at a time
        arrays[f"{label}/status_code"] = np.asarray(output.status_code[label])
        arrays[f"{label}/stopped_at"] = np.asarray(output.stopped_at[label])
        if spec.is_sweep:
            arrays[f"{label}/wall_time"] = np.asarray(output.wall_time[label])
    return arrays


def _methods(
    tables: Mapping[str, Mapping[str, Any]], arrays: Mapping[str, Mapping[str, np.ndarray]],
    status_code: Mapping[str, Any], stopped_at: Mapping[str, Any],
    wall: Mapping[str, float], compile: Mapping[str, float], lr: float | list[float],
) -> dict[str, Any]:
    """The ``methods`` entry of ``summary.json``, from the normalized config's method
    tables (`Config.as_dict`) and the arrays (a sweep's with the learning rates first)."""
    methods: dict[str, Any] = {}
    for label, table in tables.items():
        named = arrays.get(label)
        if named is None:
            continue
        method, optimizer = table.get("method", label), table.get("optimizer")
        reference = table.get("reference")
        if not isinstance(lr, list):
            methods[label] = _method_summary(
                method, optimizer, reference, named, int(status_code[label]),
                int(stopped_at[label]), lr, wall=wall[label], compile=compile[label],
            )
            continue
        codes = np.broadcast_to(np.asarray(status_code[label]), (len(lr),))
        stops = np.broadcast_to(np.asarray(stopped_at[label]), (len(lr),))
        per_lr = []
        for i, rate in enumerate(lr):
            member = {k: v[i] for k, v in named.items() if np.ndim(v) >= 1}
            entry = _method_summary(
                method, optimizer, reference, member, int(codes[i]), int(stops[i]), rate,
                wall=0.0, compile=0.0,
            )
            entry["lr"] = rate
            entry.pop("wall_seconds")
            entry.pop("compile_seconds")
            per_lr.append(entry)
        methods[label] = {
            "method": method, "reference": reference,
            "wall_seconds": round(float(wall[label]), 3),
            "compile_seconds": round(float(compile[label]), 3),
            "by_lr": per_lr,
        }
    return methods


def _problem_messages(methods: Mapping[str, Any], steps: int) -> list[str]:
    """Sentences for the methods (and, in a sweep, learning rates) that did not finish."""
    out = []
    for label, m in methods.items():
        for e in m.get("by_lr", [m]):
            if e["status_code"] != 0:
                name = f"{label} at η = {e['lr']:g}" if "lr" in e else label
                out.append(_message(name, e, steps))
    return out


def write_results(config: Config, problem, output, run_dir: RunDirectory) -> dict[str, Any]:
    """Write ``results.npz``, the plots and the finished ``summary.json`` of a run (a
    `flows.runs.RunOutput`); returns the summary."""
    spec = config.run
    save_npz(run_dir.results_path, _results_arrays(config, problem, output))
    summary = _base_summary(config, problem, complete=True)
    methods = _methods(
        summary["config"]["methods"], output.arrays, output.status_code, output.stopped_at,
        output.wall_time, output.compile_time, summary["lr"],
    )
    summary.update(steps_done=spec.steps, resumed_at=int(output.resumed_at), methods=methods)
    if spec.is_sweep:
        summary["messages"] = _problem_messages(methods, spec.steps)
        summary["plots"] = _plot_sweep(output.arrays, spec.lrs, run_dir.path, problem.name,
                                       config.reference)
    else:
        summary["messages"] = _messages(methods, spec.steps)
        statuses = {label: output.status(label) for label in output.arrays}
        thresholds = _thresholds(spec, problem) if spec.tracking.effective else None
        if thresholds:
            summary["thresholds"] = thresholds
        summary["plots"] = _plot_single(output.arrays, spec.lr, run_dir.path, statuses,
                                        dict(spec.references), problem.name, thresholds)
    summary["results"] = run_dir.results_path.name
    save_json(run_dir.summary_path, summary)
    return summary


# ------------------------------------------------------------------------- plots


def _thresholds(spec, problem) -> dict[str, float]:
    """Each method's stability threshold c of λ_max(P⁻¹H), from its update rule."""
    out = {}
    for label, method in spec.methods.items():
        optimizer = method.optimizer or default_optimizer(method.name)
        rule = make_rule(optimizer, spec.lr, problem, method.options)
        out[label] = float(rule.stability_threshold)
    return out


def _plot_single(arrays, lr, directory: Path, statuses, references, title,
                 thresholds=None) -> list[str]:
    from ..plots.runs import plot_run

    paths = plot_run(arrays, lr, directory, references=references, status=statuses, title=title,
                     thresholds=thresholds)
    return [p.name for p in paths]


def _plot_sweep(arrays, lrs, directory: Path, title: str, reference: str | None) -> list[str]:
    from ..plots.sweep import plot_sweep_summary

    sweeps = {}
    for label, named in arrays.items():
        sweeps[label] = {
            "lr": np.asarray(lrs),
            **{k: np.asarray(v) for k, v in named.items()
               if k in ("steps", "loss", "params", "eigenvalues", "stopped_at")},
        }
        if "stopped_at" not in sweeps[label]:
            sweeps[label]["stopped_at"] = np.full(len(lrs), -1)
    if reference is not None and "params" not in sweeps.get(reference, {}):
        reference = None  # parameters not kept (save_params = false): no distance panel
    path = directory / "sweep.png"
    try:
        plot_sweep_summary(sweeps, path, reference=reference, title=title)
    except Exception as err:  # the results are saved already: a plot must not lose them
        print(f"flows: note: sweep plot skipped ({type(err).__name__}: {err})", file=sys.stderr)
        return []
    return [path.name]


# -------------------------------------------------------------------------- show


def _fmt_value(value, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def _runs_gd(entry: Mapping[str, Any]) -> bool:
    """Whether a summary's method runs or models GD (`Method.model`, as the header asks)."""
    try:
        return Method(entry.get("method", ""), optimizer=entry.get("optimizer")).model == "gd"
    except ValueError:  # a method of another version of flows
        return False


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as a small table plus sentences for anything that went wrong."""
    lr = summary.get("lr")
    steps = summary.get("steps")
    done = summary.get("steps_done", steps if summary.get("complete") else None)
    state = "complete" if summary.get("complete") else f"running or interrupted ({done} steps)"
    lines = [f"{summary.get('problem')}: {steps} steps, {state}"]
    methods = summary.get("methods", {})
    if isinstance(lr, list):
        lines.append(f"{'method':<16} {'η':>8} {'status':<28} {'loss':>10} {'sharpness':>10}"
                     f" {'distance':>10}")
        for label, entry in methods.items():
            for e in entry.get("by_lr", []):
                lines.append(
                    f"{label:<16} {e['lr']:>8.4g} {e['status']:<28} "
                    f"{_fmt_value(e['final_loss']):>10} {_fmt_value(e['final_sharpness']):>10} "
                    f"{_fmt_value(e['distance_to_reference']):>10}"
                )
    else:
        lines[0] += f", η = {lr:g}"
        if methods and all(_runs_gd(e) for e in methods.values()):
            lines[0] += f", 2/η = {2 / lr:.4g}"  # GD's edge; other optimizers have their own
        lines.append(f"{'method':<16} {'status':<28} {'loss':>10} {'sharpness':>10} "
                     f"{'distance':>10} {'wall s':>8}")
        for label, e in methods.items():
            ref = f" (to {e['reference']})" if e.get("reference") else ""
            lines.append(
                f"{label:<16} {e['status']:<28} {_fmt_value(e['final_loss']):>10} "
                f"{_fmt_value(e['final_sharpness']):>10} "
                f"{_fmt_value(e['distance_to_reference']):>10} "
                f"{_fmt_value(e.get('wall_seconds'), '.1f'):>8}{ref}"
            )
    for message in summary.get("messages", []):
        if "ran all" not in message:
            lines.append(message)
    return "\n".join(lines)


def _read_summary(run_dir: RunDirectory) -> dict[str, Any]:
    if not run_dir.path.is_dir():
        raise ConfigError(f"{run_dir.path}: no such run folder")
    if not run_dir.summary_path.exists():
        raise ConfigError(f"{run_dir.path}: not a run folder (no summary.json)")
    try:
        summary = load_json(run_dir.summary_path)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not isinstance(summary, dict):
        raise ConfigError(f"{run_dir.summary_path}: not a run summary (a JSON object)")
    return summary


def show(run_dir: RunDirectory, *, plots: bool = True) -> None:
    """Print the summary of a run, finished or not (then from the chunks written so far
    and the checkpoint), and redraw its plots."""
    summary = _read_summary(run_dir)
    if summary.get("complete"):
        print(format_summary(summary))
        if plots:
            _replot_finished(summary, run_dir)
        return
    lr = summary.get("lr")
    sweep = isinstance(lr, list)
    # A run still going (or interrupted): the chunks so far and the checkpoint.
    try:
        checkpoint = run_dir.read_checkpoint() or {}
        arrays = split_keys(run_dir.read_chunks())
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if sweep:  # chunks are stored step axis first
        arrays = {label: {k: np.swapaxes(v, 0, 1) if np.ndim(v) >= 2 else v
                          for k, v in named.items()} for label, named in arrays.items()}
    tables = summary.get("config", {}).get("methods", {})
    methods = _methods(
        tables, arrays,
        {label: checkpoint.get(f"{label}/status_code", 0) for label in tables},
        {label: checkpoint.get(f"{label}/stopped_at", -1) for label in tables},
        {label: float(checkpoint.get(f"{label}/wall_time", math.nan)) for label in tables},
        {label: float(checkpoint.get(f"{label}/compile_time", math.nan)) for label in tables},
        lr if sweep else float(lr),
    )
    if "steps_done" in checkpoint:
        done = int(checkpoint["steps_done"])
    else:
        done = max((e["final_step"] or 0 for m in methods.values()
                    for e in m.get("by_lr", [m])), default=0)
    summary = {**summary, "methods": methods, "steps_done": done,
               "messages": _problem_messages(methods, summary["steps"])}
    print(format_summary(summary))
    if plots and arrays:
        if sweep:
            reference = summary.get("config", {}).get("run", {}).get("reference")
            _plot_sweep(arrays, lr, run_dir.path, summary.get("problem"), reference)
        else:
            statuses = {label: m["status"] for label, m in methods.items()}
            references = {label: m["reference"] for label, m in methods.items()
                          if m["reference"]}
            _plot_single(arrays, float(lr), run_dir.path, statuses, references,
                         summary.get("problem"))


def _replot_finished(summary: Mapping[str, Any], run_dir: RunDirectory) -> None:
    try:
        named = split_keys(load_npz(run_dir.results_path))
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    lr = named.pop("lr", {}).get("")
    methods = summary.get("methods", {})
    if isinstance(summary.get("lr"), list):
        reference = summary.get("config", {}).get("run", {}).get("reference")
        _plot_sweep(named, list(summary["lr"]) if lr is None else np.asarray(lr), run_dir.path,
                    summary.get("problem"), reference)
        return
    arrays = {
        label: {k: v for k, v in a.items() if k not in ("status_code", "stopped_at")}
        for label, a in named.items()
    }
    statuses = {label: m.get("status", "ok") for label, m in methods.items()}
    references = {label: m["reference"] for label, m in methods.items() if m.get("reference")}
    _plot_single(arrays, float(summary["lr"]), run_dir.path, statuses, references,
                 summary.get("problem"), summary.get("thresholds"))
