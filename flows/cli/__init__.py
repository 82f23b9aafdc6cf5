"""The ``flows`` command line.

    flows run CONFIG.toml [--out DIR] [--overwrite] [--no-progress]
    flows show DIR [--no-plots]
    flows --version

``run`` runs every method of the configuration (see ``configs/README.md``) on its
problem with `flows.runs.run` (single runs and learning-rate sweeps alike), in chunks
with a checkpoint after each, streaming the results to ``DIR/chunks/``; interrupted
(Ctrl-C, a killed process), the same command resumes from the last checkpoint. At the
end it writes ``results.npz``, ``summary.json`` and the plots. ``show`` prints the
summary of a run, finished or still going, and refreshes its plots.

Bad input (an unknown key, method or name, a value of the wrong type or range, a
missing or corrupt data file, an output folder holding another configuration's run, a
damaged run folder, a folder another run is using, saved rows that would not fit in
memory or on disk) is reported in one line, with exit status 2, before anything is
written; so is a disk that fills up during the run, which keeps every completed chunk
and the last checkpoint to resume from.

The package: `parsing` (arguments), `schema` (value kinds against signatures),
`config` (TOML → `Config`, the problem), `report` (results files, summaries, plots,
``show``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..options import ConfigError
from ..results import CorruptRunError, RunDirectory, RunInUseError, RunState, is_disk_full
from . import report
from .config import Config, build_problem, check_methods, load_config
from .parsing import UsageError, parse_args

__all__ = ["main", "run", "show", "compilation_cache_dir"]

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

#: The environment variable naming JAX's persistent compilation cache ("" disables it).
CACHE_ENV = "FLOWS_CACHE_DIR"


def _error(message: str) -> None:
    print(f"flows: error: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flows`` command; returns the exit status."""
    try:
        args = parse_args(argv)
    except UsageError as err:
        _error(str(err))
        return EXIT_BAD_INPUT
    except SystemExit as done:  # --help, --version: printed already
        return done.code if isinstance(done.code, int) else EXIT_OK
    try:
        if args.command == "run":
            return run(args.config, args.out, overwrite=args.overwrite,
                       progress=not args.no_progress)
        return show(args.dir, plots=not args.no_plots)
    except (ConfigError, CorruptRunError, RunInUseError) as err:  # bad input: a checkpoint
        _error(str(err))  # of another config, a damaged or busy run folder, a full disk
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # before the run started: nothing to resume
        print("\nflows: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# ------------------------------------------------------------------------ run


def compilation_cache_dir() -> Path | None:
    """Where `flows run` keeps JAX's persistent compilation cache: ``$FLOWS_CACHE_DIR``
    (empty: no cache), else ``$XDG_CACHE_HOME/flows/jax``, else ``~/.cache/flows/jax``."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return Path(value).expanduser() if value.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flows" / "jax"


def _use_compilation_cache() -> None:
    """Compiled functions are kept on disk: a second run of a config starts fast."""
    import jax

    path = compilation_cache_dir()
    if path is None:
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # everything
    _cacheable_runtime_checks()


def _cacheable_runtime_checks() -> None:
    """Let the flows' compiled functions be stored in the persistent cache too.

    Equinox compiles the runtime checks inside diffrax (that the saved times increase and
    lie in [t0, t1], which chunked runs trace from the chunk's start) into host callbacks,
    and JAX never stores a function with a host callback on disk, so every flow would be
    compiled again on every run. In this process the checks return NaN instead of raising,
    which equinox offers as ``EQX_ON_ERROR=nan``; that variable is read when equinox is
    imported, before this command runs, hence the module setting. A NaN is what the runner
    already watches for: it stops the method there and reports the step.
    """
    import equinox._errors as errors  # no public switch after import

    if getattr(errors, "EQX_ON_ERROR", None) == "raise":
        errors.EQX_ON_ERROR = "nan"


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


def _clear_run(run_dir: RunDirectory) -> None:
    for path in (run_dir.checkpoint_path, run_dir.results_path, run_dir.summary_path):
        path.unlink(missing_ok=True)
    for name in report.PLOTS:
        (run_dir.path / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir.path / "chunks", ignore_errors=True)
    run_dir.remove_temporary_files()


def _preflight(config: Config, run_dir: RunDirectory, overwrite: bool) -> RunState:
    """Check the output folder before anything is computed: a damaged run (an unreadable
    checkpoint or summary, a missing or unreadable chunk) or a run of another
    configuration is refused, or cleared with ``overwrite``. What the folder holds."""
    path = run_dir.path
    try:
        state = run_dir.inspect()
    except CorruptRunError as err:
        if not overwrite:
            raise ConfigError(
                f"{err}; the run folder {path} is damaged and cannot be resumed: pass "
                "--overwrite to start the run afresh there (what it saved is lost), or "
                "choose another --out"
            ) from None
        _clear_run(run_dir)
        return run_dir.inspect()
    if state.has_run and state.fingerprint != config.fingerprint():
        if not overwrite:
            raise ConfigError(
                f"{path} holds a run of another configuration; choose another --out "
                "or pass --overwrite to replace it"
            )
        _clear_run(run_dir)
        return run_dir.inspect()
    return state


def _disk_full(config: Config, run_dir: RunDirectory, error: OSError) -> str:
    """The line for a write that found the disk full: which file, what is kept, what to do."""
    steps_done = 0
    with contextlib.suppress(OSError, ValueError):
        checkpoint = run_dir.read_checkpoint()
        if checkpoint is not None and "steps_done" in checkpoint:
            steps_done = int(checkpoint["steps_done"])
    return (
        f"{error.filename or run_dir.path}: no space left on the device; the completed "
        f"chunks and the last checkpoint ({steps_done} of {config.run.steps} steps) are "
        f"kept in {run_dir.path}/ — free some space and run the same command again to resume"
    )


def run(config_path: str | os.PathLike, out: str | os.PathLike | None = None, *,
        overwrite: bool = False, progress: bool = True) -> int:
    """``flows run``: the exit status.

    The order matters: the config, the problem and the methods are checked; the folder
    is locked against other runs, checked (integrity, configuration) and the saved rows
    are sized against memory and disk, all before anything is written or compiled; then
    the manifest (``summary.json``, not complete, with the fingerprint) is written, so a
    run killed while it compiles resumes as this configuration's; then the runner, and
    the results, streamed from the chunks, which are removed once ``results.npz`` is
    complete."""
    config = load_config(config_path)
    for note in config.notes:
        print(f"flows: note: {note}", file=sys.stderr)
    out = Path(out) if out else Path("runs") / Path(config_path).stem
    run_dir = RunDirectory(out)
    _use_compilation_cache()
    with _precision(config.dtype):
        problem = build_problem(config)
        check_methods(config, problem)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: exists and is not a folder")
        created = not out.exists()
        try:
            with run_dir.lock():
                return _run_locked(config, problem, run_dir, overwrite, progress)
        except (ConfigError, CorruptRunError):
            if created:  # refused before it wrote anything: leave no folder behind
                run_dir.remove_if_unused()
            raise


def _run_locked(config: Config, problem, run_dir: RunDirectory, overwrite: bool,
                progress: bool) -> int:
    import jax

    from ..runs import ResourceError, check_resources
    from ..runs import run as run_spec

    out, steps = run_dir.path, config.run.steps
    state = _preflight(config, run_dir, overwrite)
    if state.finished:
        run_dir.clear_chunks()  # left by a run stopped right after it finished
        print(f"flows: the run in {out}/ is complete; nothing to recompute", file=sys.stderr)
        print(report.format_summary(state.summary), file=sys.stdout)
        return EXIT_OK
    try:
        check_resources(problem, config.run, out, results_file=True)
    except ResourceError as err:
        raise ConfigError(f"[run] {err}") from None
    try:
        report.start_summary(config, problem, run_dir)
    except OSError as err:
        if is_disk_full(err):
            raise ConfigError(_disk_full(config, run_dir, err)) from None
        raise ConfigError(f"--out {out}: cannot write there ({err.strerror or err})") from None
    print(report.header(config, problem, out), file=sys.stderr)
    if state.steps_done >= steps:
        print(f"flows: all {steps} steps were computed already; writing the results",
              file=sys.stderr)
    elif state.steps_done:
        print(f"flows: resuming at step {state.steps_done} of {steps} from the checkpoint "
              f"in {out}/", file=sys.stderr)
    started = time.perf_counter()
    try:
        output = run_spec(
            problem, config.run, directory=out, fingerprint=config.fingerprint(),
            progress=progress, on_chunk=None,
        )
        summary = report.write_results(config, problem, output, run_dir)
        run_dir.clear_chunks()  # results.npz and summary.json are complete: they hold it all
    except KeyboardInterrupt:
        print(report.interrupted(config, run_dir), file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:
        if not is_disk_full(err):
            raise
        raise ConfigError(_disk_full(config, run_dir, err)) from None
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        raise ConfigError(_out_of_memory(run_dir, err)) from None
    total = time.perf_counter() - started
    print(report.format_summary(summary), file=sys.stdout)
    print(f"done in {total:.1f} s; results in {out}/", file=sys.stderr)
    return EXIT_OK


def _out_of_memory(run_dir: RunDirectory, err: Exception) -> str:
    """One line for XLA's out-of-memory error: what it asked for and what decides it."""
    asked = re.search(r"allocating (\d+) bytes", str(err))
    size = f" (it asked for {int(asked.group(1)) / 1e9:.1f} GB)" if asked else ""
    return (f"a compiled step needs more memory than this machine has{size}: the network's "
            f"activations on all the data at once, times the derivatives a flow takes "
            f"(the central flow's third derivatives most); evaluate the loss over chunks of "
            f"the data ([problem] data_chunk = 100, say), use fewer data points ([data] n), "
            f"[run] dtype = \"float32\", a smaller network, or a machine with more memory; "
            f"what was saved in {run_dir.path}/ is kept")


def show(directory: str | os.PathLike, *, plots: bool = True) -> int:
    """``flows show``: the exit status."""
    report.show(RunDirectory(directory), plots=plots)
    return EXIT_OK
