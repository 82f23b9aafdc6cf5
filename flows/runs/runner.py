"""The runner: methods of a `RunSpec` in lockstep chunks, with checkpoints and resume.

A run of one or more methods on one problem, at one learning rate or a sweep of them,
is cut into chunks of ``RunSpec.chunk_length()`` steps, *always the same way* whether
or not it is interrupted. Each chunk continues every method from its carry (the
discrete optimizer's ``(step, w, state, stopped_at)``; for a flow ``(step, y, status,
stopped_at)``, the integrator restarting at the chunk boundary from the saved state)
through one compiled function per method, whose start step is a traced array, so
nothing recompiles from chunk to chunk; in a sweep the function is vmapped over the
learning rates, the carries batched alike. After each chunk the saved arrays are
appended to the run directory and the carries are checkpointed (both written
atomically, `flows.results`); a run killed at any moment restarts from the last
checkpoint, and since the chunks and the compiled functions are the same, the resumed
results are bitwise equal to an uninterrupted run's. Single runs and sweeps share this
one checkpoint format.

A method whose loss diverges (non-finite, or beyond the divergence threshold), or
whose integrator fails, stops there with its status and step; what it saved up to then
is kept, and the other methods (and, in a sweep, the other learning rates) go on.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ..eigen_tracking import track_output
from ..integrate import run_method
from ..options import ConfigError, Method, RunSpec, Tracking
from ..problem import Problem
from ..results import ChunkedArray, RunDirectory, concatenate_chunks, split_keys
from ..timing import timed
from ..trajectory import STATUS_OK, Trajectory, status_text
from .fingerprint import problem_fingerprint, text_fingerprint

__all__ = [
    "run",
    "RunOutput",
    "CheckpointMismatch",
    "ResourceError",
    "saved_bytes",
    "check_resources",
    "check_take_over",
    "is_parameter_series",
    "simulate_checkpointed",
    "trajectory_of",
]

#: Bumped when the layout of checkpoints changes, so old ones are refused.
CHECKPOINT_FORMAT = 2

# Test hook: "kill:N" sends SIGKILL to this process right after the checkpoint of
# chunk N is written, "interrupt:N" raises KeyboardInterrupt there (a Ctrl-C); N = 0:
# before the first chunk of a fresh run (while it would compile).
_INTERRUPT_HOOK = "_FLOWS_TEST_INTERRUPT_AFTER_CHUNK"

#: Arrays every method saves; anything else a method saves is one of its extras.
BASE_KEYS = ("steps", "loss", "params", "distance")


class CheckpointMismatch(ConfigError):
    """The run directory holds a run of another configuration (bad input: a `ValueError`)."""


class ResourceError(ConfigError):
    """The run's saved rows would not fit in memory or on disk (bad input: a `ValueError`);
    the message names the settings that decide their size."""


@dataclasses.dataclass
class RunOutput:
    """What `run` returns, per label: the saved arrays (step axis first; a sweep's are
    ``(L, T, …)`` with the learning rates first, like `flows.sweep`'s), padded with NaN to
    the whole run after a method stopped, and how each method ended (an int, or an array
    over the learning rates of a sweep).

    A run with a directory returns its arrays as `flows.results.ChunkedArray`: read from
    the chunk files only when asked for (``numpy.asarray``, indexing), one at a time, so
    the output of a long run costs no memory until it is used."""

    arrays: dict[str, dict[str, np.ndarray]]
    status_code: dict[str, int | np.ndarray]
    stopped_at: dict[str, int | np.ndarray]
    wall_time: dict[str, float]
    compile_time: dict[str, float]
    resumed_at: int  # the step the run resumed from (0 for a fresh run)

    def status(self, label: str) -> str | list[str]:
        codes, stops = np.asarray(self.status_code[label]), np.asarray(self.stopped_at[label])
        if codes.ndim == 0:
            return status_text(int(codes), int(stops))
        return [status_text(int(c), int(s)) for c, s in zip(codes, stops)]


def is_parameter_series(name: str, value: np.ndarray, num_params: int) -> bool:
    """Whether a saved series holds a parameter-sized vector per step (``params``, or an
    optimizer state such as RMSProp's ``nu``): what ``save_params=False`` leaves out."""
    return name == "params" or (
        name != "eigenvalues" and np.ndim(value) >= 2 and np.shape(value)[-1] == num_params
    )


def _to_host(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


@eqx.filter_jit
def _initial_carry(problem: Problem, method: Method, lr: jax.Array):
    """The carry at step 0 (batched over ``lr`` in a sweep)."""

    def one(lr_member):
        built = method.build(problem, lr_member, in_sweep=lr.ndim > 0)
        integer = jnp.result_type(int)
        step, status, stopped_at = (jnp.asarray(v, dtype=integer) for v in (0, STATUS_OK, -1))
        if method.is_flow:
            return step, built.initial_state(), status, stopped_at
        f, w0 = problem.flat_loss, problem.w0
        return step, w0, built.init(f, w0), stopped_at

    return one(lr) if lr.ndim == 0 else jax.vmap(one)(lr)


@eqx.filter_jit
def _take_over_carry(problem: Problem, method: Method, lr: jax.Array, source_carry, status_code):
    """A flow's carry where it takes over a discrete run at the run's carry
    ``(k, w_k, s_{k−1}, stopped_at)`` (batched over ``lr`` in a sweep); a member of the run
    that stopped stays stopped, with its status."""

    def one(lr_member, carry, status):
        built = method.build(problem, lr_member, in_sweep=lr.ndim > 0)
        step, w, state, stopped_at = carry
        return step, built.initial_state(w, state, step), status, stopped_at

    if lr.ndim == 0:
        return one(lr, source_carry, status_code)
    return jax.vmap(one)(lr, source_carry, status_code)


@eqx.filter_jit
def _advance(
    problem: Problem,
    method: Method,
    lr: jax.Array,
    carry,
    length: int,
    save_every: int,
    tracking: Tracking,
    divergence_factor: float,
) -> dict[str, Any]:
    """``length`` more steps from ``carry`` (vmapped over ``lr`` in a sweep)."""

    def one(lr_member, carry):
        built = method.build(problem, lr_member, in_sweep=lr.ndim > 0)
        output = run_method(
            problem, built, length, save_every, integrator=method.integrator,
            divergence_factor=divergence_factor, start=carry,
        )
        eigenvalues, extras = track_output(problem, built, output, tracking, save_every)
        arrays = {"steps": output["steps"], "loss": output["loss"], "params": output["params"]}
        if eigenvalues is not None:
            arrays["eigenvalues"] = eigenvalues
        arrays.update(extras)
        return {
            "arrays": arrays, "carry": output["carry"],
            "status_code": output["status_code"], "stopped_at": output["stopped_at"],
        }

    return one(lr, carry) if lr.ndim == 0 else jax.vmap(one)(lr, carry)


class _Member:
    """One method of the run: its carry, status and seconds (arrays over a sweep's rates)."""

    def __init__(self, problem: Problem, spec: RunSpec, label: str):
        self.label = label
        self.problem = problem
        self.method = spec.methods[label]
        self.tracking = spec.tracking_of(label).check(problem.num_params)
        self.sweep = spec.is_sweep
        dtype = jnp.real(problem.w0).dtype
        self.lr = jnp.asarray(spec.lr if not spec.is_sweep else np.asarray(spec.lr), dtype)
        # Build once at the boundary: a bad option fails here, with its name.
        self.method.build(problem, spec.lrs[0])
        self.save_every = spec.save_every
        self.divergence_factor = spec.divergence_factor
        shape = np.shape(self.lr)
        self.status_code = np.full(shape, STATUS_OK)
        self.stopped_at = np.full(shape, -1)
        self.wall_time = 0.0
        self.compile_time = 0.0
        self.carry = _to_host(_initial_carry(problem, self.method, self.lr))
        # (label of the discrete run it takes over, step): before that step, it waits.
        self.start_from = spec.start_from.get(label)
        self._shapes: dict[int, dict[str, Any]] = {}

    @property
    def active(self) -> bool:
        return bool(np.any(self.status_code == STATUS_OK))

    def waits(self, step: int) -> bool:
        return self.start_from is not None and step < self.start_from[1]

    def take_over(self, source: _Member) -> None:
        """Start from ``source``'s carry (at this member's take-over step)."""
        carry = _take_over_carry(self.problem, self.method, self.lr, source.carry,
                                 jnp.asarray(source.status_code))
        self.carry = jax.tree_util.tree_map(
            lambda new, old: np.asarray(new, dtype=old.dtype), _to_host(carry), self.carry
        )
        self.status_code, self.stopped_at = source.status_code.copy(), source.stopped_at.copy()

    def wait_chunk(self, length: int, source: _Member, theirs: dict[str, np.ndarray]):
        """The rows of a chunk up to the take-over: the run's steps, loss and parameters
        (it is the run up to there), this member's own series NaN (integers −1; the row
        of the take-over step is this chunk's, so its diagnostics start a step later)."""
        if length not in self._shapes:  # traced once per chunk length, not compiled
            self._shapes[length] = eqx.filter_eval_shape(
                _advance, self.problem, self.method, self.lr, self.carry, length,
                self.save_every, self.tracking, self.divergence_factor,
            )["arrays"]
        self.status_code, self.stopped_at = source.status_code.copy(), source.stopped_at.copy()
        arrays = {}
        for name, shape in self._shapes[length].items():
            if name in ("steps", "loss", "params"):
                arrays[name] = theirs[name]
                continue
            dims = tuple(shape.shape)
            if self.sweep:  # as run_chunk returns them: rows first, then the rates
                dims = (dims[1], dims[0], *dims[2:])
            fill = np.nan if np.issubdtype(shape.dtype, np.inexact) else -1
            arrays[name] = np.full(dims, fill if shape.dtype != bool else False, shape.dtype)
        return arrays

    def carry_leaves(self) -> list[np.ndarray]:
        return jax.tree_util.tree_leaves(self.carry)

    def restore(self, checkpoint: Mapping[str, np.ndarray]) -> None:
        key = self.label
        count = int(checkpoint[f"{key}/num_leaves"])
        leaves = [checkpoint[f"{key}/carry/{i}"] for i in range(count)]
        reference, treedef = jax.tree_util.tree_flatten(self.carry)
        if len(leaves) != len(reference) or any(
            a.shape != b.shape or a.dtype != b.dtype for a, b in zip(leaves, reference)
        ):
            raise CheckpointMismatch(
                f"the checkpoint's state of {key!r} does not fit this configuration"
            )
        self.carry = jax.tree_util.tree_unflatten(treedef, list(leaves))
        self.status_code = np.asarray(checkpoint[f"{key}/status_code"])
        self.stopped_at = np.asarray(checkpoint[f"{key}/stopped_at"])
        self.wall_time = float(checkpoint[f"{key}/wall_time"])
        self.compile_time = float(checkpoint[f"{key}/compile_time"])

    def checkpoint(self) -> dict[str, np.ndarray]:
        key = self.label
        arrays = {f"{key}/carry/{i}": leaf for i, leaf in enumerate(self.carry_leaves())}
        arrays.update({
            f"{key}/num_leaves": np.asarray(len(self.carry_leaves())),
            f"{key}/status_code": np.asarray(self.status_code),
            f"{key}/stopped_at": np.asarray(self.stopped_at),
            f"{key}/wall_time": np.asarray(self.wall_time),
            f"{key}/compile_time": np.asarray(self.compile_time),
        })
        return arrays

    def run_chunk(self, length: int) -> dict[str, np.ndarray]:
        """Advance ``length`` steps; the chunk's saved arrays (host numpy, step axis first)."""
        out, compile_seconds, run_seconds = timed(
            _advance, self.problem, self.method, self.lr, self.carry, length, self.save_every,
            self.tracking, self.divergence_factor,
        )
        self.compile_time += compile_seconds
        self.wall_time += run_seconds
        out = _to_host(out)
        # Cast back to the dtypes of the first carry: one compiled function for all chunks.
        self.carry = jax.tree_util.tree_map(
            lambda new, old: np.asarray(new, dtype=old.dtype), out["carry"], self.carry
        )
        self.status_code = np.asarray(out["status_code"])
        self.stopped_at = np.asarray(out["stopped_at"])
        arrays = out["arrays"]
        if self.sweep:  # chunks are stored step axis first; the rates follow
            arrays = {k: np.swapaxes(v, 0, 1) for k, v in arrays.items()}
        return arrays

    def status_values(self) -> tuple[int | np.ndarray, int | np.ndarray]:
        if self.sweep:
            return self.status_code, self.stopped_at
        return int(self.status_code), int(self.stopped_at)

    def describe(self) -> str:
        codes = np.atleast_1d(self.status_code)
        stops = np.atleast_1d(self.stopped_at)
        texts = [status_text(int(c), int(s)) for c, s in zip(codes, stops) if c != STATUS_OK]
        return f"{self.label} {', '.join(texts)}"


def _interrupt_hook(chunks_done: int) -> None:
    action, _, when = os.environ.get(_INTERRUPT_HOOK, "").partition(":")
    if not when.isdigit() or int(when) != chunks_done:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "interrupt":
        raise KeyboardInterrupt


def _pad(array: np.ndarray, length: int, name: str, full_steps: np.ndarray) -> np.ndarray:
    """A series cut short by a stop, padded to the whole run (steps: the missing steps)."""
    if array.shape[0] >= length:
        return array
    if name == "steps":
        return np.broadcast_to(
            full_steps.reshape((-1,) + (1,) * (array.ndim - 1)), (length,) + array.shape[1:]
        ).astype(array.dtype)
    if not np.issubdtype(array.dtype, np.inexact):
        array = array.astype(np.float64)
    pad = np.full((length - array.shape[0],) + array.shape[1:], np.nan, dtype=array.dtype)
    return np.concatenate([array, pad])


def _versions_text() -> str:
    return f"jax {jax.__version__}, diffrax {diffrax.__version__}"


def _bounds(spec: RunSpec) -> list[tuple[int, int]]:
    """``(first step, length)`` of every chunk: every ``chunk_length()`` steps, and cut
    where a flow takes over a run (``start_from``)."""
    cuts = {*range(0, spec.steps, spec.chunk_length()), spec.steps}
    cuts.update(step for _, step in spec.start_from.values())
    cuts = sorted(cuts)
    return [(first, end - first) for first, end in zip(cuts[:-1], cuts[1:])]


def _rows(spec: RunSpec, bounds: list[tuple[int, int]]) -> list[int]:
    """The saved rows of every chunk's file (a later chunk drops its first row, the
    previous chunk's last)."""
    return [length // spec.save_every + (i == 0) for i, (_, length) in enumerate(bounds)]


# ------------------------------------------------------------------ resources


def saved_bytes(problem: Problem, spec: RunSpec) -> tuple[int, int]:
    """The bytes of the rows a run saves: ``(one chunk, the whole run)``, over all its
    methods and learning rates, as kept (``save_params`` honoured; distances included).

    Exact for the arrays the methods save (their shapes are traced, nothing is compiled;
    the traces are reused when the run compiles), so ``rows × (params + extras) × dtype
    size × methods (× rates)``, whatever a method saves."""
    chunk = min(spec.chunk_length(), spec.steps)
    chunk_rows = chunk // spec.save_every + 1
    total_rows = spec.steps // spec.save_every + 1
    real = jnp.real(problem.w0).dtype
    lr = jnp.asarray(spec.lr if not spec.is_sweep else np.asarray(spec.lr), real)
    rates = len(spec.lrs) if spec.is_sweep else 1
    per_chunk = 0
    for label, method in spec.methods.items():
        tracking = spec.tracking_of(label).check(problem.num_params)
        carry = eqx.filter_eval_shape(_initial_carry, problem, method, lr)
        out = eqx.filter_eval_shape(
            _advance, problem, method, lr, carry, chunk, spec.save_every, tracking,
            spec.divergence_factor,
        )
        for name, value in out["arrays"].items():
            shape = tuple(value.shape)
            if spec.is_sweep:  # as stored: rows first, then the rates
                shape = (shape[1], shape[0]) + shape[2:]
            if not spec.save_params and is_parameter_series(
                name, np.broadcast_to(np.empty((), np.int8), shape), problem.num_params
            ):
                continue
            per_chunk += math.prod(shape) * np.dtype(value.dtype).itemsize
        if label in spec.references:
            per_chunk += chunk_rows * rates * np.dtype(real).itemsize
    return per_chunk, per_chunk * total_rows // chunk_rows


def available_memory() -> int | None:
    """Bytes of memory available to this process: ``MemAvailable`` (Linux), else the
    physical memory, bounded by a cgroup's limit; None if unknown."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            pass
    try:  # cgroup v2: the container's limit
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def free_disk(directory: str | os.PathLike) -> int:
    """Free bytes on the file system that holds (or will hold) ``directory``."""
    path = Path(directory).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.3g} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1000
    raise AssertionError


def check_resources(
    problem: Problem, spec: RunSpec, directory: str | os.PathLike | None = None, *,
    results_file: bool = False,
) -> None:
    """Refuse (`ResourceError`, one line naming the settings) a run whose saved rows
    would not fit: in memory (with a directory, one chunk is held at a time; without,
    the whole run), or on the disk of ``directory`` (the chunks still to write, plus a
    ``results.npz`` of the same size beside them if ``results_file``)."""
    chunk_bytes, total_bytes = saved_bytes(problem, spec)
    settings = (
        f"steps = {spec.steps}, save_every = {spec.save_every}, "
        f"checkpoint_every = {spec.chunk_length()}"
    )
    fewer = "set save_params = false or track fewer eigenvalues (num_eigenvalues)"
    available = available_memory()
    if directory is None:  # all kept in memory: the chunks, then their concatenation
        need = 2 * total_bytes + chunk_bytes
        if available is not None and need > available:
            raise ResourceError(
                f"{settings}: the run's saved rows need about {_size(need)} of memory "
                f"(without a folder they are all kept) and {_size(available)} is available; "
                f"run it in a folder, raise save_every, {fewer}, or run fewer steps"
            )
        return
    need = 2 * chunk_bytes  # the chunk computed, and its copy on the host
    if available is not None and need > available:
        raise ResourceError(
            f"{settings}: one chunk's saved rows need about {_size(need)} of memory and "
            f"{_size(available)} is available; lower checkpoint_every (the chunk length), "
            f"raise save_every, {fewer}"
        )
    written = RunDirectory(directory).chunk_bytes()
    need = max(0, total_bytes - written) + (total_bytes if results_file else 0)
    free = free_disk(directory)
    if need > free:
        where = " (the chunks, and results.npz beside them)" if results_file else ""
        raise ResourceError(
            f"{settings}: the saved rows need about {_size(need)} on disk{where} and "
            f"{Path(directory)} has {_size(free)} free; raise save_every, {fewer}, run fewer "
            "steps, or free some space"
        )


# ------------------------------------------------------------------------ run


def run(
    problem: Problem,
    spec: RunSpec,
    *,
    directory: str | os.PathLike | None = None,
    fingerprint: str = "",
    progress: bool = False,
    on_chunk: Callable[[int, int], None] | None = None,
) -> RunOutput:
    """Run every method of ``spec`` on ``problem`` in lockstep chunks, with checkpoints.

    Args:
        problem: the loss and initial parameters.
        spec: the methods, learning rate(s), length, saving, chunking, tracking,
            divergence and references (`flows.RunSpec`).
        directory: the run directory (see `flows.results`); the run resumes from its
            checkpoint if there is one, and holds the directory's lock while it runs.
            The saved rows go to the chunk files only, so memory is bounded by a chunk,
            not by the run; the output's arrays are read from them when used. None: no
            files, nothing to resume, everything in memory.
        fingerprint: identifies the configuration; a checkpoint with another
            fingerprint raises `CheckpointMismatch` before anything is written.
        progress: show a progress bar (on a terminal).
        on_chunk: called as ``on_chunk(chunks_done, steps_done)`` after each chunk is
            saved (e.g. to watch a run from the same process).

    Returns:
        `RunOutput`.

    Raises:
        CheckpointMismatch: the directory holds a run of another configuration.
        flows.results.CorruptRunError: the directory is damaged (a missing or
            unreadable checkpoint or chunk), found before anything is computed.
        flows.results.RunInUseError: another process runs in the directory.
        ResourceError: the saved rows would not fit in memory or on disk.
    """
    if not isinstance(spec, RunSpec):
        raise ValueError(f"spec must be a flows.RunSpec, got {spec!r}")
    if directory is None:
        return _run(problem, spec, None, fingerprint, progress, on_chunk)
    run_dir = RunDirectory(directory)
    created = not run_dir.path.exists()
    try:
        with run_dir.lock():
            return _run(problem, spec, run_dir, fingerprint, progress, on_chunk)
    except BaseException:
        if created:  # stopped before it wrote anything: leave no folder behind
            run_dir.remove_if_unused()
        raise


def _run(
    problem: Problem, spec: RunSpec, run_dir: RunDirectory | None, fingerprint: str,
    progress: bool, on_chunk: Callable[[int, int], None] | None,
) -> RunOutput:
    steps = spec.steps
    bounds = _bounds(spec)
    run_fingerprint = text_fingerprint(
        fingerprint, CHECKPOINT_FORMAT, spec.lr, steps, spec.save_every, spec.chunk_length(),
        list(spec.methods), sorted(spec.start_from.items()),
    )
    checkpoint = None
    from_results = False
    if run_dir is not None:  # before anything is built or compiled
        state = run_dir.inspect()
        found = state.fingerprint
        if state.has_run and found is not None and found != fingerprint:
            raise CheckpointMismatch(
                f"{run_dir.path} holds a run of another configuration; "
                "choose another output directory"
            )
        checkpoint = state.checkpoint
        # Finished by `flows run`: results.npz holds the arrays, the chunks are gone.
        from_results = state.finished and not all(
            i in run_dir.chunk_files() for i in range(state.chunks_done)
        )
        run_dir.remove_temporary_files()
    if not from_results:
        check_resources(problem, spec, None if run_dir is None else run_dir.path)
    for label in spec.start_from:
        check_take_over(problem, spec, label)
    members = [_Member(problem, spec, label) for label in spec.methods]

    chunks_done = 0
    history: list[dict[str, np.ndarray]] = []  # only without a directory
    if checkpoint is not None:
        chunks_done = _restore(checkpoint, run_fingerprint, members, run_dir.path)
        if chunks_done > len(bounds):
            raise CheckpointMismatch(f"{run_dir.path}: the checkpoint is past the run's end")
        if not from_results:
            run_dir.remove_chunks_from(chunks_done)

    resumed_at = bounds[chunks_done][0] if chunks_done < len(bounds) else steps
    if chunks_done == 0:
        _interrupt_hook(0)
    bar = tqdm(
        total=steps, initial=resumed_at, desc="run", unit="step", disable=None if progress else True
    )
    try:
        for index in range(chunks_done, len(bounds)):
            first, length = bounds[index]
            flat = _run_chunk(problem, spec, members, index, first, length)
            if run_dir is None:
                history.append(flat)
            else:
                run_dir.write_chunk(index, flat)
                run_dir.write_checkpoint(
                    _checkpoint(fingerprint, run_fingerprint, index + 1, first + length, members)
                )
            del flat
            bar.update(length)
            stopped = [m.describe() for m in members if np.any(m.status_code != STATUS_OK)]
            if stopped:
                bar.set_postfix_str("; ".join(stopped), refresh=False)
            if on_chunk is not None:
                on_chunk(index + 1, first + length)
            _interrupt_hook(index + 1)
    finally:
        bar.close()

    if run_dir is None:
        arrays = _joined(history, spec)
    elif from_results:
        arrays = _split(run_dir.results_arrays(), skip=("status_code", "stopped_at", "wall_time"))
    else:
        arrays = _split(run_dir.chunked_arrays(_rows(spec, bounds), sweep=spec.is_sweep,
                                               save_every=spec.save_every))
    status = {m.label: m.status_values() for m in members}
    return RunOutput(
        arrays=arrays,
        status_code={label: code for label, (code, _) in status.items()},
        stopped_at={label: at for label, (_, at) in status.items()},
        wall_time={m.label: m.wall_time for m in members},
        compile_time={m.label: m.compile_time for m in members},
        resumed_at=resumed_at,
    )


def check_take_over(problem: Problem, spec: RunSpec, label: str) -> None:
    """That the flow ``label`` takes over (``spec.start_from``) a run of its own update
    rule, with the same hyperparameters; `ConfigError` names those that differ."""
    source, _ = spec.start_from[label]
    rule = spec.methods[label].build(problem, spec.lrs[0]).rule
    theirs = spec.methods[source].build(problem, spec.lrs[0])
    if type(rule) is not type(theirs):
        differ = [f"the update rule ({type(rule).__name__}, {type(theirs).__name__})"]
    else:
        differ = [
            f"{field.name} ({getattr(rule, field.name)!r}, {getattr(theirs, field.name)!r})"
            for field in dataclasses.fields(rule)
            if not bool(eqx.tree_equal(getattr(rule, field.name), getattr(theirs, field.name)))
        ]
    if differ:
        raise ConfigError(
            f"start_from: {label!r} and the run {source!r} it takes over differ in "
            f"{', '.join(differ)}; give the flow the run's hyperparameters")


def _run_chunk(
    problem: Problem, spec: RunSpec, members: list[_Member], index: int, first: int,
    length: int,
) -> dict[str, np.ndarray]:
    """Advance every active method one chunk; its saved rows, keyed ``"label/name"``."""
    by_label = {member.label: member for member in members}
    for member in members:  # the runs' carries are at step ``first`` still
        if member.start_from is not None and member.start_from[1] == first:
            member.take_over(by_label[member.start_from[0]])
    chunk_arrays: dict[str, dict[str, np.ndarray]] = {}
    for member in members:
        if member.active and not member.waits(first):
            chunk_arrays[member.label] = member.run_chunk(length)
    for member in members:
        if member.active and member.waits(first):
            source = by_label[member.start_from[0]]
            if source.label in chunk_arrays:
                chunk_arrays[member.label] = member.wait_chunk(
                    length, source, chunk_arrays[source.label])
            else:  # the run stopped before this chunk: so does the flow that waits for it
                member.status_code, member.stopped_at = source.status_code, source.stopped_at
    if index > 0:  # every first row repeats the previous chunk's last
        chunk_arrays = {
            label: {k: v[1:] for k, v in arrays.items()} for label, arrays in chunk_arrays.items()
        }
    for label, reference in spec.references.items():
        mine = chunk_arrays.get(label)
        if mine is None:
            continue
        theirs = chunk_arrays.get(reference)
        if theirs is None:
            mine["distance"] = np.full(mine["loss"].shape, np.nan)
        else:
            mine["distance"] = np.linalg.norm(mine["params"] - theirs["params"], axis=-1)
    return {
        f"{label}/{name}": value
        for label, arrays in chunk_arrays.items()
        for name, value in arrays.items()
        if spec.save_params or not is_parameter_series(name, value, problem.num_params)
    }


def _joined(history: list[dict[str, np.ndarray]], spec: RunSpec) -> dict[str, dict[str, Any]]:
    """The chunks kept in memory (a run without a directory), joined and padded."""
    total = spec.steps // spec.save_every + 1
    full_steps = np.arange(total) * spec.save_every
    arrays: dict[str, dict[str, Any]] = {}
    for key, value in concatenate_chunks(history).items():
        label, _, name = key.partition("/")
        value = _pad(value, total, name, full_steps)
        arrays.setdefault(label, {})[name] = np.swapaxes(value, 0, 1) if spec.is_sweep else value
    return arrays


def _split(
    flat: Mapping[str, ChunkedArray], skip: tuple[str, ...] = ()
) -> dict[str, dict[str, ChunkedArray]]:
    """``"label/name"`` keys by label (`split_keys`), leaving out ``skip`` and the keys
    of the run itself (no label: ``"lr"``)."""
    return {
        label: {name: value for name, value in named.items() if name not in skip}
        for label, named in split_keys(flat).items()
        if "" not in named
    }


def _checkpoint(
    fingerprint: str, run_fingerprint: str, chunks_done: int, steps_done: int,
    members: list[_Member],
) -> dict[str, Any]:
    arrays: dict[str, Any] = {
        "format": np.asarray(CHECKPOINT_FORMAT),
        "fingerprint": np.asarray(fingerprint),
        "run_fingerprint": np.asarray(run_fingerprint),
        "chunks_done": np.asarray(chunks_done),
        "steps_done": np.asarray(steps_done),
        "versions": np.asarray(_versions_text()),
    }
    for member in members:
        arrays.update(member.checkpoint())
    return arrays


def _restore(
    checkpoint: Mapping[str, np.ndarray], fingerprint: str, members: list[_Member], path: Path
) -> int:
    if int(checkpoint.get("format", -1)) != CHECKPOINT_FORMAT:
        raise CheckpointMismatch(
            f"{path}: the checkpoint has an unknown format (written by another version of "
            "flows); start afresh in another folder or with --overwrite"
        )
    if str(checkpoint.get("run_fingerprint", "")) != fingerprint:
        raise CheckpointMismatch(
            f"{path} holds a checkpoint of another configuration; "
            "choose another output directory (or delete that one)"
        )
    try:
        for member in members:
            member.restore(checkpoint)
        return int(checkpoint["chunks_done"])
    except KeyError as err:
        raise CheckpointMismatch(f"{path}: the checkpoint lacks {err}") from None


def trajectory_of(output: RunOutput, label: str, method: str, lr: float) -> Trajectory:
    """The `Trajectory` of one method of a single-rate run (what `simulate` returns)."""
    arrays = {k: np.asarray(v) for k, v in output.arrays[label].items()}
    extras = {k: jnp.asarray(v) for k, v in arrays.items() if k not in BASE_KEYS}
    eigenvalues = extras.pop("eigenvalues", None)
    return Trajectory(
        method=method,
        lr=jnp.asarray(lr),
        steps=jnp.asarray(arrays["steps"]),
        params=jnp.asarray(arrays["params"]),
        loss=jnp.asarray(arrays["loss"]),
        eigenvalues=eigenvalues,
        status_code=jnp.asarray(output.status_code[label]),
        stopped_at=jnp.asarray(output.stopped_at[label]),
        extras=extras,
        wall_time=output.wall_time[label],
        compile_time=output.compile_time[label],
    )


def simulate_checkpointed(
    problem: Problem,
    method: Method,
    *,
    lr: float,
    steps: int,
    save_every: int,
    tracking: Tracking,
    divergence_factor: float,
    checkpoint_dir: str | os.PathLike,
    checkpoint_every: int | None = None,
    progress: bool = False,
) -> Trajectory:
    """`flows.simulate` with ``checkpoint_dir``: the run in chunks, resumable."""
    spec = RunSpec(
        methods={method.name: method}, lr=lr, steps=steps, save_every=save_every,
        checkpoint_every=checkpoint_every, tracking=tracking,
        divergence_factor=divergence_factor,
    )
    fingerprint = problem_fingerprint(
        problem, method, tracking, divergence_factor, str(jnp.result_type(float)),
    )
    output = run(
        problem, spec, directory=checkpoint_dir, fingerprint=fingerprint, progress=progress,
    )
    return trajectory_of(output, method.name, method.name, lr)
