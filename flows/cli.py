"""The ``flows`` command line.

    flows run CONFIG.toml [--out DIR] [--overwrite] [--no-progress]
    flows show DIR [--no-plots]

``run`` runs every method of the configuration (see ``configs/README.md``) on its
problem, in chunks with a checkpoint after each, streaming the results to
``DIR/chunks/``; interrupted (Ctrl-C, a killed process), the same command resumes
from the last checkpoint. At the end it writes ``results.npz``, ``summary.json``
and the plots. ``show`` prints the summary of a run, finished or still going, and
refreshes its plots.

Bad input (an unknown key, method or name, a value of the wrong type or range, a
missing or corrupt data file, an output folder holding another configuration's
run) is reported in one line, with exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import math
import platform
import shutil
import sys
import time
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config, ConfigError, build_problem, build_specs, load_config, make_eigensolver
from .results import (
    CorruptRunError,
    RunDirectory,
    load_json,
    load_npz,
    save_json,
    save_npz,
    split_keys,
)

__all__ = ["main"]

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

PLOTS = ("loss.png", "sharpness.png", "distance.png", "sweep.png")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (raised, not printed with the usage)."""

    def error(self, message: str):  # noqa: D401
        raise _UsageError(f"{message} (see `flows {self.prog.split()[-1]} --help`)"
                          if " " in self.prog else f"{message} (see `flows --help`)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flows",
        description="Run gradient descent and its continuous-time flows side by side.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser(
        "run", help="run the methods of a config file", description=(
            "Run every method of CONFIG on its problem; resume if DIR holds a checkpoint "
            "of the same configuration."
        ),
    )
    run.add_argument("config", help="a TOML run configuration (see configs/README.md)")
    run.add_argument("--out", help="output folder (default: runs/<config name>)")
    run.add_argument(
        "--overwrite", action="store_true",
        help="replace a run of another configuration found in the output folder",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(handler=_cmd_run)
    show = commands.add_parser(
        "show", help="summarize a run (finished or running) and refresh its plots"
    )
    show.add_argument("dir", help="a run folder written by `flows run`")
    show.add_argument("--no-plots", action="store_true", help="do not redraw the plots")
    show.set_defaults(handler=_cmd_show)
    return parser


def _error(message: str) -> None:
    print(f"flows: error: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flows`` command; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as err:
        _error(str(err))
        return EXIT_BAD_INPUT
    try:
        return args.handler(args)
    except (ConfigError, CorruptRunError) as err:  # bad input: a checkpoint of another
        _error(str(err))  # config, a damaged run folder
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # before the run started: nothing to resume
        print("\nflows: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# ------------------------------------------------------------------------ run


@contextlib.contextmanager
def _precision(dtype: str):
    """Apply the dtype (JAX's x64 flag) before any array is made; restore it after."""
    import jax

    previous = bool(jax.config.read("jax_enable_x64"))
    jax.config.update("jax_enable_x64", dtype == "float64")
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def versions() -> dict[str, str]:
    """Versions of the package and of what decides its numbers."""
    out = {"python": platform.python_version()}
    for name in ("flows", "jax", "jaxlib", "diffrax", "equinox", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            module = sys.modules.get(name)
            out[name] = getattr(module, "__version__", "unknown")
    from . import __version__

    out["flows"] = __version__
    return out


def _clear_run(run_dir: RunDirectory) -> None:
    for path in (run_dir.checkpoint_path, run_dir.results_path, run_dir.summary_path):
        path.unlink(missing_ok=True)
    for name in PLOTS:
        (run_dir.path / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir.path / "chunks", ignore_errors=True)


def _preflight(config: Config, run_dir: RunDirectory, overwrite: bool) -> None:
    """Refuse an output folder that is a file, or holds a run of another configuration."""
    path = run_dir.path
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path}: exists and is not a folder")
    if not run_dir.has_run():
        return
    try:
        found = run_dir.fingerprint()
    except ValueError as err:
        if not overwrite:
            raise ConfigError(f"{err} (use --overwrite to start the run afresh)") from None
        found = None
    if found != config.fingerprint():
        if not overwrite:
            raise ConfigError(
                f"{path} holds a run of another configuration; choose another --out "
                "or pass --overwrite to replace it"
            )
        _clear_run(run_dir)


def _cmd_run(args) -> int:
    config = load_config(args.config)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    run_dir = RunDirectory(out)
    with _precision(config.run.dtype):
        problem = build_problem(config)
        specs = build_specs(config, problem)
        _preflight(config, run_dir, args.overwrite)
        try:
            run_dir.create()
        except OSError as err:
            raise ConfigError(f"--out {out}: cannot write there ({err.strerror or err})") from None
        header = _header(config, problem, out)
        print(header, file=sys.stderr)
        started = time.perf_counter()
        try:
            if config.run.is_sweep:
                summary = _run_sweep(config, problem, specs, run_dir, not args.no_progress)
            else:
                summary = _run_single(config, problem, specs, run_dir, not args.no_progress)
        except KeyboardInterrupt:
            _report_interrupt(config, run_dir)
            return EXIT_INTERRUPTED
    total = time.perf_counter() - started
    print(_format_summary(summary), file=sys.stdout)
    print(f"done in {total:.1f} s; results in {out}/", file=sys.stderr)
    return EXIT_OK


def _header(config: Config, problem, out: Path) -> str:
    lr = config.run.lr
    lr_text = (
        f"η ∈ {{{', '.join(f'{v:g}' for v in lr)}}}" if isinstance(lr, tuple)
        else f"η = {lr:g} (2/η = {2 / lr:.4g})"
    )
    methods = ", ".join(m.label for m in config.methods)
    return (
        f"flows run: {problem.name} ({problem.num_params} parameters, {config.run.dtype}), "
        f"{lr_text}, {config.run.steps} steps; methods: {methods} → {out}/"
    )


def _report_interrupt(config: Config, run_dir: RunDirectory) -> None:
    done = 0
    try:
        checkpoint = run_dir.read_checkpoint()
    except ValueError:
        checkpoint = None
    if checkpoint is not None and "steps_done" in checkpoint:
        done = int(checkpoint["steps_done"])
    print(
        f"\nflows: interrupted; {done} of {config.run.steps} steps are saved in "
        f"{run_dir.path}/ — run the same command again to resume",
        file=sys.stderr,
    )


def _base_summary(config: Config, problem, complete: bool) -> dict[str, Any]:
    return {
        "complete": complete,
        "problem": problem.name,
        "num_params": problem.num_params,
        "lr": list(config.run.lr) if config.run.is_sweep else config.run.lr,
        "steps": config.run.steps,
        "seed": config.run.seed,
        "dtype": config.run.dtype,
        "fingerprint": config.fingerprint(),
        "config_file": str(config.source),
        "config": config.as_dict(),
        "versions": versions(),
    }


def _run_single(config: Config, problem, specs, run_dir: RunDirectory, progress: bool):
    from .checkpoint import run_methods

    run = config.run
    summary = _base_summary(config, problem, complete=False)
    if not run_dir.summary_path.exists():
        run_dir.create()
        save_json(run_dir.summary_path, summary)
    output = run_methods(
        problem, specs, lr=run.lr, steps=run.steps, save_every=run.save_every,
        checkpoint_every=run.checkpoint_every, num_eigenvalues=run.num_eigenvalues,
        eigensolver=make_eigensolver(run.eigensolver), divergence_factor=run.divergence_factor,
        directory=run_dir.path, fingerprint=config.fingerprint(), save_params=run.save_params,
        progress=progress,
    )
    from .checkpoint import is_parameter_series

    arrays: dict[str, Any] = {"lr": np.asarray(run.lr)}
    for label, named in output.arrays.items():
        for name, value in named.items():
            if run.save_params or not is_parameter_series(name, value, problem.num_params):
                arrays[f"{label}/{name}"] = value
        arrays[f"{label}/status_code"] = np.asarray(output.status_code[label])
        arrays[f"{label}/stopped_at"] = np.asarray(output.stopped_at[label])
    save_npz(run_dir.results_path, arrays)
    statuses = {label: output.status(label) for label in output.arrays}
    references = {s.label: s.reference for s in specs if s.reference}
    methods = {
        spec.label: _method_summary(
            spec, output.arrays[spec.label], output.status_code[spec.label],
            output.stopped_at[spec.label], run.lr,
            wall=output.wall_time[spec.label], compile=output.compile_time[spec.label],
        )
        for spec in specs
    }
    summary.update(complete=True, steps_done=run.steps, resumed_at=output.resumed_at,
                   methods=methods, messages=_messages(methods, run.steps))
    summary["plots"] = _plot_single(output.arrays, run.lr, run_dir.path, statuses, references,
                                    problem.name)
    summary["results"] = run_dir.results_path.name
    save_json(run_dir.summary_path, summary)
    return summary


def _plot_single(arrays, lr, directory: Path, statuses, references, title) -> list[str]:
    from .plots.runs import plot_run

    paths = plot_run(arrays, lr, directory, references=references, status=statuses, title=title)
    return [p.name for p in paths]


def _last_finite(values: np.ndarray) -> int | None:
    finite = np.flatnonzero(np.isfinite(np.real(values)))
    return int(finite[-1]) if finite.size else None


def _number(value) -> float | None:
    value = float(np.real(value))
    return value if math.isfinite(value) else None


def _method_summary(
    spec, arrays: Mapping[str, np.ndarray], status_code: int, stopped_at: int, lr: float,
    *, wall: float, compile: float,
) -> dict[str, Any]:
    from .trajectory import status_text

    loss = np.asarray(arrays["loss"])
    i = _last_finite(loss)
    entry: dict[str, Any] = {
        "method": spec.method,
        "status": status_text(status_code, stopped_at),
        "status_code": int(status_code),
        "stopped_at": None if stopped_at < 0 else int(stopped_at),
        "final_step": None if i is None else int(np.asarray(arrays["steps"])[i]),
        "final_loss": None if i is None else _number(loss[i]),
        "final_sharpness": None,
        "distance_to_reference": None,
        "reference": spec.reference,
        "wall_seconds": round(float(wall), 3),
        "compile_seconds": round(float(compile), 3),
    }
    if getattr(spec, "optimizer", "gd") != "gd":
        entry["optimizer"] = spec.optimizer
    if i is not None and "eigenvalues" in arrays:
        entry["final_sharpness"] = _number(np.asarray(arrays["eigenvalues"])[i, 0])
        entry["two_over_lr"] = 2.0 / lr
    if i is not None and "distance" in arrays:
        entry["distance_to_reference"] = _number(np.asarray(arrays["distance"])[i])
    if "max_imag" in arrays:  # the principal flow: how complex its state got
        entry["max_imag"] = _number(np.nanmax(np.asarray(arrays["max_imag"])))
    return entry


def _message(label: str, entry: Mapping[str, Any], steps: int) -> str:
    code, at = entry["status_code"], entry["stopped_at"]
    kept = entry["final_step"]
    if code == 0:
        return f"{label}: ran all {steps} steps"
    if code == 1:
        return (
            f"{label} diverged at step {at} (the loss became non-finite or exceeded the "
            f"divergence threshold); it was stopped there, its results are kept up to step "
            f"{kept}, and the other methods went on"
        )
    return (
        f"{label}: the integrator failed at step {at} (it spent its step budget or its step "
        f"size collapsed); its results are kept up to step {kept}, and the other methods "
        "went on"
    )


def _messages(methods: Mapping[str, Mapping[str, Any]], steps: int) -> list[str]:
    return [_message(label, entry, steps) for label, entry in methods.items()]


# ---------------------------------------------------------------------- sweep


def _run_sweep(config: Config, problem, specs, run_dir: RunDirectory, progress: bool):
    """A learning-rate sweep per method (`flows.sweep`); the unit of checkpointing is a
    method: one finished is stored, and a resumed run skips it."""
    from .sweep import sweep

    run = config.run
    lrs = list(run.lr)
    summary = _base_summary(config, problem, complete=False)
    run_dir.create()
    if not run_dir.summary_path.exists():
        save_json(run_dir.summary_path, summary)
    checkpoint = run_dir.read_checkpoint() or {}
    done = [str(x) for x in np.atleast_1d(checkpoint.get("sweep_done", np.asarray([], str)))]
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for index, spec in enumerate(specs):
        path = run_dir.chunk_path(index)
        if spec.label in done and path.exists():
            arrays[spec.label] = split_keys(load_npz(path)).get(spec.label, {})
            continue
        print(f"sweep: {spec.label} over {len(lrs)} learning rates", file=sys.stderr)
        k = run.num_eigenvalues if spec.num_eigenvalues is None else spec.num_eigenvalues
        start = time.perf_counter()
        trajectory = sweep(
            problem, spec.method, lrs=lrs, steps=run.steps, optimizer=spec.optimizer,
            save_every=run.save_every, num_eigenvalues=k,
            eigensolver=make_eigensolver(run.eigensolver), solver=spec.solver, rtol=spec.rtol,
            atol=spec.atol, dt0=spec.dt0, max_steps=spec.max_steps,
            divergence_factor=run.divergence_factor, progress=progress and sys.stderr.isatty(),
            **spec.options,
        )
        elapsed = time.perf_counter() - start
        named = {
            "steps": np.asarray(trajectory.steps), "loss": np.asarray(trajectory.loss),
            "params": np.asarray(trajectory.params),
            "status_code": np.asarray(trajectory.status_code),
            "stopped_at": np.asarray(trajectory.stopped_at),
            "wall_time": np.asarray(elapsed),
        }
        if trajectory.eigenvalues is not None:
            named["eigenvalues"] = np.asarray(trajectory.eigenvalues)
        for key, value in trajectory.extras.items():
            named[key] = np.asarray(value)
        arrays[spec.label] = named
        run_dir.write_chunk(index, {f"{spec.label}/{k}": v for k, v in named.items()})
        done.append(spec.label)
        run_dir.write_checkpoint({
            "format": np.asarray(1), "fingerprint": np.asarray(config.fingerprint()),
            "sweep_done": np.asarray(done),
        })
    for spec in specs:
        if spec.reference and spec.reference in arrays:
            mine, theirs = arrays[spec.label]["params"], arrays[spec.reference]["params"]
            arrays[spec.label]["distance"] = np.linalg.norm(mine - theirs, axis=-1)
    from .checkpoint import is_parameter_series

    flat: dict[str, Any] = {"lr": np.asarray(lrs)}
    for label, named in arrays.items():
        for name, value in named.items():
            if run.save_params or not is_parameter_series(name, value, problem.num_params):
                flat[f"{label}/{name}"] = value
    save_npz(run_dir.results_path, flat)
    methods = {}
    for spec in specs:
        named = arrays[spec.label]
        per_lr = []
        for i, lr in enumerate(lrs):
            member = {k: v[i] for k, v in named.items() if np.ndim(v) >= 1 and k != "wall_time"}
            entry = _method_summary(
                spec, member, int(named["status_code"][i]), int(named["stopped_at"][i]), lr,
                wall=float(named["wall_time"]) / len(lrs), compile=0.0,
            )
            entry["lr"] = lr
            entry.pop("wall_seconds")
            entry.pop("compile_seconds")
            per_lr.append(entry)
        methods[spec.label] = {
            "method": spec.method, "reference": spec.reference,
            "wall_seconds": round(float(named["wall_time"]), 3), "by_lr": per_lr,
        }
    summary.update(complete=True, steps_done=run.steps, methods=methods)
    summary["messages"] = [
        _message(f"{label} at η = {e['lr']:g}", e, run.steps)
        for label, m in methods.items() for e in m["by_lr"] if e["status_code"] != 0
    ]
    summary["plots"] = _plot_sweep(arrays, lrs, run_dir.path, problem.name, run.reference)
    summary["results"] = run_dir.results_path.name
    save_json(run_dir.summary_path, summary)
    return summary


def _plot_sweep(arrays, lrs, directory: Path, title: str, reference: str | None) -> list[str]:
    try:
        from .plots.sweep import plot_sweep_summary
    except ImportError:
        print("flows: note: no sweep plot (flows.plots.sweep is not available)", file=sys.stderr)
        return []
    from .trajectory import Trajectory

    trajectories = {}
    for label, named in arrays.items():
        extras = {
            k: v for k, v in named.items()
            if k not in ("steps", "loss", "params", "eigenvalues", "status_code", "stopped_at",
                         "wall_time", "distance")
        }
        trajectories[label] = Trajectory(
            method=label, lr=np.asarray(lrs), steps=named["steps"], params=named["params"],
            loss=named["loss"], eigenvalues=named.get("eigenvalues"),
            status_code=named["status_code"], stopped_at=named["stopped_at"], extras=extras,
        )
    path = directory / "sweep.png"
    try:
        plot_sweep_summary(trajectories, path, reference=reference, title=title)
    except Exception as err:  # the results are saved already: a plot must not lose them
        print(f"flows: note: sweep plot skipped ({type(err).__name__}: {err})", file=sys.stderr)
        return []
    return [path.name]


# ----------------------------------------------------------------------- show


def _cmd_show(args) -> int:
    run_dir = RunDirectory(args.dir)
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
    if summary.get("complete") or not isinstance(summary.get("lr"), (int, float)):
        print(_format_summary(summary))
        if not summary.get("complete"):
            print("(the sweep is still running or was interrupted)")
        elif not args.no_plots and "lr" in summary and not isinstance(summary["lr"], list):
            _replot_finished(summary, run_dir)
        return EXIT_OK
    # A run still going (or interrupted): the chunks so far and the checkpoint.
    try:
        checkpoint = run_dir.read_checkpoint() or {}
        arrays = split_keys(run_dir.read_chunks())
    except ValueError as err:
        raise ConfigError(str(err)) from None
    lr = float(summary["lr"])
    config_methods = summary.get("config", {}).get("methods", {})
    methods = {}
    for label, table in config_methods.items():
        named = arrays.get(label)
        if named is None:
            continue
        code = int(checkpoint.get(f"{label}/status_code", 0))
        stopped = int(checkpoint.get(f"{label}/stopped_at", -1))
        spec = types.SimpleNamespace(
            method=table.get("method", label), optimizer=table.get("optimizer", "gd"),
            reference=table.get("reference"),
        )
        methods[label] = _method_summary(
            spec, named, code, stopped, lr,
            wall=float(checkpoint.get(f"{label}/wall_time", math.nan)),
            compile=float(checkpoint.get(f"{label}/compile_time", math.nan)),
        )
    done = max((m["final_step"] or 0 for m in methods.values()), default=0)
    summary = {**summary, "methods": methods, "steps_done": done,
               "messages": [_message(k, v, summary["steps"]) for k, v in methods.items()
                            if v["status_code"] != 0]}
    print(_format_summary(summary))
    if not args.no_plots and arrays:
        statuses = {label: m["status"] for label, m in methods.items()}
        references = {label: m["reference"] for label, m in methods.items() if m["reference"]}
        _plot_single(arrays, lr, run_dir.path, statuses, references, summary.get("problem"))
    return EXIT_OK


def _replot_finished(summary: Mapping[str, Any], run_dir: RunDirectory) -> None:
    try:
        named = split_keys(load_npz(run_dir.results_path))
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    named.pop("lr", None)
    arrays = {
        label: {k: v for k, v in a.items() if k not in ("status_code", "stopped_at")}
        for label, a in named.items()
    }
    methods = summary.get("methods", {})
    statuses = {label: m.get("status", "ok") for label, m in methods.items()}
    references = {label: m["reference"] for label, m in methods.items() if m.get("reference")}
    _plot_single(arrays, float(summary["lr"]), run_dir.path, statuses, references,
                 summary.get("problem"))


def _fmt_value(value, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def _format_summary(summary: Mapping[str, Any]) -> str:
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
        lines[0] += f", η = {lr:g}, 2/η = {2 / lr:.4g}"
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
