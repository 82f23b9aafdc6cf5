"""Long runs in chunks: checkpoints, resume, results streamed to disk, divergence per method.

A run of one or more methods on one problem is cut into chunks of
``checkpoint_every`` steps, *always the same way* whether or not it is interrupted.
Each chunk continues every method from its carry (the discrete optimizer's
``(step, w, state, stopped_at)``; for a flow ``(step, y, status, stopped_at)``, the
integrator restarting at the chunk boundary from the saved state) with one compiled
function per method, whose start step is a traced array, so nothing recompiles from
chunk to chunk. After each chunk the saved arrays are appended to the run directory
and the carries are checkpointed (both written atomically, see `flows.results`); a
run killed at any moment restarts from the last checkpoint, and since the chunks and
the compiled functions are the same, the resumed results are bitwise equal to an
uninterrupted run's.

A method whose loss diverges (non-finite, or beyond the threshold of `simulate`),
or whose integrator fails, stops there with its status and step; what it saved up
to then is kept, and the other methods go on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .config import ConfigError
from .linalg.eigen import EigenSolver
from .methods import is_flow, make_method
from .problem import Problem
from .results import RunDirectory, concatenate_chunks
from .simulate import run_method, track_eigenpairs
from .trajectory import STATUS_OK, Trajectory, status_text

__all__ = [
    "MethodSpec",
    "RunOutput",
    "CheckpointMismatch",
    "run_methods",
    "default_checkpoint_every",
    "problem_fingerprint",
    "is_parameter_series",
]

#: Bumped when the layout of checkpoints changes, so old ones are refused.
CHECKPOINT_FORMAT = 1

# Test hook: "kill:N" sends SIGKILL to this process right after the checkpoint of
# chunk N is written, "interrupt:N" raises KeyboardInterrupt there (a Ctrl-C).
_INTERRUPT_HOOK = "_FLOWS_TEST_INTERRUPT_AFTER_CHUNK"

#: Arrays every method saves; anything else a method saves is one of its extras.
BASE_KEYS = ("steps", "loss", "params", "distance")


class CheckpointMismatch(ConfigError):
    """The run directory holds a run of another configuration (bad input: a `ValueError`)."""


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One method of a run, under a label (the same method may appear twice).

    The fields are those of `flows.simulate`; ``num_eigenvalues=None`` takes the
    run's; ``reference`` is the label of the run whose distance ``‖w − w_ref‖`` is
    recorded at every saved step (None: no distance).
    """

    label: str
    method: str
    optimizer: str = "gd"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    solver: diffrax.AbstractSolver | None = None
    rtol: float | None = None
    atol: float | None = None
    dt0: float | None = None
    max_steps: int | None = None
    num_eigenvalues: int | None = None
    reference: str | None = None


@dataclasses.dataclass
class RunOutput:
    """What `run_methods` returns: per label, the saved arrays (padded with NaN to the
    full length of the run after a method stopped) and how the method ended."""

    arrays: dict[str, dict[str, np.ndarray]]
    status_code: dict[str, int]
    stopped_at: dict[str, int]
    wall_time: dict[str, float]
    compile_time: dict[str, float]
    resumed_at: int  # the step the run resumed from (0 for a fresh run)

    def status(self, label: str) -> str:
        return status_text(self.status_code[label], self.stopped_at[label])


def is_parameter_series(name: str, value: np.ndarray, num_params: int) -> bool:
    """Whether a saved series holds a parameter-sized vector per step (``params``, or an
    optimizer state such as RMSProp's ``nu``): what ``save_params=False`` leaves out."""
    return name == "params" or (
        name != "eigenvalues" and np.ndim(value) >= 2 and np.shape(value)[-1] == num_params
    )


def default_checkpoint_every(steps: int, save_every: int) -> int:
    """About 20 chunks, each a whole number of save intervals."""
    blocks = steps // save_every
    return max(1, math.ceil(blocks / 20)) * save_every


def _hash_update_tree(digest, tree) -> None:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    # Function reprs carry memory addresses that change from process to process.
    digest.update(re.sub(r" at 0x[0-9a-fA-F]+", "", str(treedef)).encode())
    for leaf in leaves:
        array = np.asarray(leaf)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())


def problem_fingerprint(problem: Problem, *extra: Any) -> str:
    """A hash of the problem's arrays and structure and of ``extra`` (reprs)."""
    digest = hashlib.sha256()
    _hash_update_tree(digest, problem)
    for item in extra:
        digest.update(re.sub(r" at 0x[0-9a-fA-F]+", "", repr(item)).encode())
    return digest.hexdigest()


def _to_host(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


class _Member:
    """One method of the run: its built rule or field, carry and compiled chunk functions."""

    def __init__(
        self,
        problem: Problem,
        spec: MethodSpec,
        lr: float,
        *,
        save_every: int,
        num_eigenvalues: int,
        divergence_factor: float,
    ):
        self.spec = spec
        self.label = spec.label
        self.problem = problem
        self.flow = is_flow(spec.method)
        self.built = make_method(
            problem, spec.method, lr, optimizer=spec.optimizer, options=spec.options
        )
        self.save_every = save_every
        self.num_eigenvalues = (
            num_eigenvalues if spec.num_eigenvalues is None else spec.num_eigenvalues
        )
        self.divergence_factor = divergence_factor
        self._compiled: dict[int, Any] = {}
        self.active = True
        self.status_code = STATUS_OK
        self.stopped_at = -1
        self.wall_time = 0.0
        self.compile_time = 0.0
        self.carry = self._initial_carry()

    def _core(self, length: int):
        spec = self.spec

        def core(problem, built, carry):
            return run_method(
                problem, built, length, self.save_every, solver=spec.solver, rtol=spec.rtol,
                atol=spec.atol, dt0=spec.dt0, max_steps=spec.max_steps,
                divergence_factor=self.divergence_factor, start=carry,
            )

        return core

    def _initial_carry(self):
        """The carry at step 0, as host arrays of fixed dtypes: every chunk's carry is
        cast back to them, so one compiled function serves all chunks."""
        f, w0 = self.problem.flat_loss, self.problem.w0
        integer = jnp.result_type(int)
        step, status, stopped_at = (np.asarray(v, dtype=integer) for v in (0, STATUS_OK, -1))
        if self.flow:
            return _to_host((step, self.built.initial_state(), status, stopped_at))
        return _to_host((step, w0, self.built.init(f, w0), stopped_at))

    def carry_leaves(self) -> list[np.ndarray]:
        return jax.tree_util.tree_leaves(self.carry)

    def restore_carry(self, leaves: Sequence[np.ndarray]) -> None:
        reference, treedef = jax.tree_util.tree_flatten(self.carry)
        if len(leaves) != len(reference) or any(
            a.shape != b.shape or a.dtype != b.dtype for a, b in zip(leaves, reference)
        ):
            raise CheckpointMismatch(
                f"the checkpoint's state of {self.label!r} does not fit this configuration"
            )
        self.carry = jax.tree_util.tree_unflatten(treedef, list(leaves))

    def run_chunk(self, length: int, tracker: _EigenTracker | None) -> dict[str, Any]:
        """Advance ``length`` steps; the chunk's saved arrays (host numpy)."""
        if length not in self._compiled:
            start = time.perf_counter()
            fn = eqx.filter_jit(self._core(length))
            self._compiled[length] = fn.lower(self.problem, self.built, self.carry).compile()
            self.compile_time += time.perf_counter() - start
        start = time.perf_counter()
        out = jax.block_until_ready(self._compiled[length](self.problem, self.built, self.carry))
        self.wall_time += time.perf_counter() - start
        out = _to_host(out)
        self.carry = jax.tree_util.tree_map(
            lambda new, old: np.asarray(new, dtype=old.dtype), out["carry"], self.carry
        )
        self.status_code = int(out["status_code"])
        self.stopped_at = int(out["stopped_at"])
        if self.status_code != STATUS_OK:
            self.active = False
        arrays = {"steps": out["steps"], "loss": out["loss"], "params": out["params"]}
        arrays.update(out.get("extras", {}))
        if self.num_eigenvalues and "eigenvalues" not in arrays and tracker is not None:
            values, seconds, compile_seconds = tracker(arrays["params"], self.num_eigenvalues)
            self.wall_time += seconds
            self.compile_time += compile_seconds
            arrays["eigenvalues"] = values
        return arrays


class _EigenTracker:
    """Top Hessian eigenvalues at a chunk's saved parameters: one compiled function per
    (rows, k), shared by all methods of the run (they save at the same steps)."""

    def __init__(self, problem: Problem, solver: EigenSolver | None):
        self.problem = problem
        self.solver = solver
        self._compiled: dict[tuple[int, int], Any] = {}

    def __call__(self, params: np.ndarray, k: int) -> tuple[np.ndarray, float, float]:
        """The eigenvalues (rows, k), seconds run and seconds compiling (on a first call)."""
        key = (params.shape[0], k)
        compile_time = 0.0
        if key not in self._compiled:
            start = time.perf_counter()

            def track(problem, params):
                return track_eigenpairs(problem, params, k, solver=self.solver)[0]

            lowered = eqx.filter_jit(track).lower(self.problem, params)
            self._compiled[key] = lowered.compile()
            compile_time = time.perf_counter() - start
        start = time.perf_counter()
        values = jax.block_until_ready(self._compiled[key](self.problem, params))
        return np.asarray(values), time.perf_counter() - start, compile_time


def _interrupt_hook(chunks_done: int) -> None:
    action, _, when = os.environ.get(_INTERRUPT_HOOK, "").partition(":")
    if not when.isdigit() or int(when) != chunks_done:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "interrupt":
        raise KeyboardInterrupt


def _pad(array: np.ndarray, length: int, fill_steps: np.ndarray | None = None) -> np.ndarray:
    if array.shape[0] >= length:
        return array
    if fill_steps is not None:
        return fill_steps
    if not np.issubdtype(array.dtype, np.inexact):
        array = array.astype(np.float64)
    pad = np.full((length - array.shape[0],) + array.shape[1:], np.nan, dtype=array.dtype)
    return np.concatenate([array, pad])


def run_methods(
    problem: Problem,
    specs: Sequence[MethodSpec],
    *,
    lr: float,
    steps: int,
    save_every: int = 1,
    checkpoint_every: int | None = None,
    num_eigenvalues: int = 0,
    eigensolver: EigenSolver | None = None,
    divergence_factor: float = 1e6,
    directory: str | os.PathLike | None = None,
    fingerprint: str = "",
    save_params: bool = True,
    progress: bool = False,
    on_chunk: Callable[[int, int], None] | None = None,
) -> RunOutput:
    """Run every method of ``specs`` on ``problem`` in lockstep chunks, with checkpoints.

    Args:
        problem, lr, steps, save_every, num_eigenvalues, eigensolver, divergence_factor:
            as in `flows.simulate` (shared by all methods; a spec may override
            ``num_eigenvalues``).
        specs: the methods, each under a unique label.
        checkpoint_every: the chunk length in steps, a multiple of ``save_every``
            (default `default_checkpoint_every`). The chunking decides the results of
            adaptive flows (the integrator restarts at every boundary), so it is part
            of the configuration: always the same, interrupted or not.
        directory: the run directory (see `flows.results`); the run resumes from its
            checkpoint if there is one. None: no files, nothing to resume.
        fingerprint: identifies the configuration; a checkpoint with another
            fingerprint raises `CheckpointMismatch` before anything is written.
        save_params: keep the parameters (and parameter-sized states, e.g. RMSProp's
            ν) at the saved steps in the files (distances are computed either way).
        progress: show a progress bar (on a terminal).
        on_chunk: called as ``on_chunk(chunks_done, steps_done)`` after each chunk is
            saved (e.g. to watch a run from the same process).

    Returns:
        `RunOutput`.
    """
    labels = [spec.label for spec in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"method labels must be unique, got {labels}")
    for spec in specs:
        if spec.reference is not None and spec.reference not in labels:
            raise ValueError(
                f"{spec.label!r}: reference {spec.reference!r} is not one of the methods {labels}"
            )
    if checkpoint_every is None:
        checkpoint_every = default_checkpoint_every(steps, save_every)
    if checkpoint_every <= 0 or checkpoint_every % save_every:
        raise ValueError(
            f"checkpoint_every={checkpoint_every} must be a positive multiple of "
            f"save_every={save_every}"
        )
    if steps % save_every:
        raise ValueError(f"save_every={save_every} must divide steps={steps}")
    bounds = [(s, min(checkpoint_every, steps - s)) for s in range(0, steps, checkpoint_every)]

    # The run's own fingerprint adds what the chunking depends on to the caller's.
    digest = hashlib.sha256(str(fingerprint).encode())
    digest.update(repr((CHECKPOINT_FORMAT, lr, steps, save_every, checkpoint_every)).encode())
    digest.update(repr(labels).encode())
    run_fingerprint = digest.hexdigest()

    members = [
        _Member(
            problem, spec, lr, save_every=save_every, num_eigenvalues=num_eigenvalues,
            divergence_factor=divergence_factor,
        )
        for spec in specs
    ]
    tracker = _EigenTracker(problem, eigensolver)
    run_dir = None if directory is None else RunDirectory(directory)

    chunks_done = 0
    history: list[dict[str, np.ndarray]] = []
    if run_dir is not None:
        if run_dir.has_run():
            found = run_dir.fingerprint()
            if found is not None and found != fingerprint:
                raise CheckpointMismatch(
                    f"{run_dir.path} holds a run of another configuration; "
                    "choose another output directory"
                )
        checkpoint = run_dir.read_checkpoint()
        if checkpoint is not None:
            chunks_done = _restore(checkpoint, run_fingerprint, members, run_dir.path)
            if chunks_done > len(bounds):
                raise CheckpointMismatch(f"{run_dir.path}: the checkpoint is past the run's end")
            history = [run_dir.read_chunks(chunks_done)]
            run_dir.remove_chunks_from(chunks_done)

    resumed_at = bounds[chunks_done][0] if chunks_done < len(bounds) else steps
    bar = tqdm(
        total=steps, initial=resumed_at, desc="run", unit="step", disable=None if progress else True
    )
    try:
        for index in range(chunks_done, len(bounds)):
            first, length = bounds[index]
            chunk_arrays: dict[str, dict[str, np.ndarray]] = {}
            for member in members:
                if member.active:
                    arrays = member.run_chunk(length, tracker)
                    if index > 0:  # its first row repeats the previous chunk's last
                        arrays = {k: v[1:] for k, v in arrays.items()}
                    chunk_arrays[member.label] = arrays
            for member in members:
                ref = member.spec.reference
                mine = chunk_arrays.get(member.label)
                if ref is None or mine is None:
                    continue
                theirs = chunk_arrays.get(ref)
                if theirs is None:
                    distance = np.full(mine["loss"].shape, np.nan)
                else:
                    distance = np.linalg.norm(mine["params"] - theirs["params"], axis=-1)
                mine["distance"] = distance
            flat = {
                f"{label}/{name}": value
                for label, arrays in chunk_arrays.items()
                for name, value in arrays.items()
                if save_params or not is_parameter_series(name, value, problem.num_params)
            }
            history.append(flat)
            if run_dir is not None:
                run_dir.write_chunk(index, flat)
                run_dir.write_checkpoint(
                    _checkpoint(fingerprint, run_fingerprint, index + 1, first + length, members)
                )
            bar.update(length)
            stopped = [f"{m.label} {status_text(m.status_code, m.stopped_at)}" for m in members
                       if not m.active]
            if stopped:
                bar.set_postfix_str(", ".join(stopped), refresh=False)
            if on_chunk is not None:
                on_chunk(index + 1, first + length)
            _interrupt_hook(index + 1)
    finally:
        bar.close()

    total = steps // save_every + 1
    full_steps = np.arange(total) * save_every
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for key, value in concatenate_chunks(history).items():
        label, _, name = key.partition("/")
        fill = full_steps if name == "steps" else None
        arrays.setdefault(label, {})[name] = _pad(value, total, fill)
    return RunOutput(
        arrays=arrays,
        status_code={m.label: m.status_code for m in members},
        stopped_at={m.label: m.stopped_at for m in members},
        wall_time={m.label: m.wall_time for m in members},
        compile_time={m.label: m.compile_time for m in members},
        resumed_at=resumed_at,
    )


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
    for m in members:
        for i, leaf in enumerate(m.carry_leaves()):
            arrays[f"{m.label}/carry/{i}"] = leaf
        arrays[f"{m.label}/num_leaves"] = np.asarray(len(m.carry_leaves()))
        arrays[f"{m.label}/active"] = np.asarray(m.active)
        arrays[f"{m.label}/status_code"] = np.asarray(m.status_code)
        arrays[f"{m.label}/stopped_at"] = np.asarray(m.stopped_at)
        arrays[f"{m.label}/wall_time"] = np.asarray(m.wall_time)
        arrays[f"{m.label}/compile_time"] = np.asarray(m.compile_time)
    return arrays


def _versions_text() -> str:
    import diffrax as _diffrax

    return f"jax {jax.__version__}, diffrax {_diffrax.__version__}"


def _restore(
    checkpoint: Mapping[str, np.ndarray], fingerprint: str, members: list[_Member], path: Path
) -> int:
    if int(checkpoint.get("format", -1)) != CHECKPOINT_FORMAT:
        raise CheckpointMismatch(f"{path}: the checkpoint has an unknown format")
    if str(checkpoint.get("run_fingerprint", "")) != fingerprint:
        raise CheckpointMismatch(
            f"{path} holds a checkpoint of another configuration; "
            "choose another output directory (or delete that one)"
        )
    try:
        for m in members:
            count = int(checkpoint[f"{m.label}/num_leaves"])
            m.restore_carry([checkpoint[f"{m.label}/carry/{i}"] for i in range(count)])
            m.active = bool(checkpoint[f"{m.label}/active"])
            m.status_code = int(checkpoint[f"{m.label}/status_code"])
            m.stopped_at = int(checkpoint[f"{m.label}/stopped_at"])
            m.wall_time = float(checkpoint[f"{m.label}/wall_time"])
            m.compile_time = float(checkpoint[f"{m.label}/compile_time"])
        return int(checkpoint["chunks_done"])
    except KeyError as err:
        raise CheckpointMismatch(f"{path}: the checkpoint lacks {err}") from None


def trajectory_of(output: RunOutput, label: str, method: str, lr: float) -> Trajectory:
    """The `Trajectory` of one method of a run (what `simulate` returns)."""
    arrays = output.arrays[label]
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
    method: str,
    *,
    lr: float,
    steps: int,
    checkpoint_dir: str | os.PathLike,
    checkpoint_every: int | None = None,
    optimizer: str = "gd",
    save_every: int = 1,
    num_eigenvalues: int = 0,
    eigensolver: EigenSolver | None = None,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    dt0: float | None = None,
    max_steps: int | None = None,
    divergence_factor: float = 1e6,
    progress: bool = False,
    options: Mapping[str, Any] | None = None,
) -> Trajectory:
    """`flows.simulate` with ``checkpoint_dir``: the run in chunks, resumable."""
    options = dict(options or {})
    spec = MethodSpec(
        label=method, method=method, optimizer=optimizer, options=options, solver=solver,
        rtol=rtol, atol=atol, dt0=dt0, max_steps=max_steps,
    )
    fingerprint = problem_fingerprint(
        problem, spec, sorted(options.items()), num_eigenvalues, eigensolver,
        divergence_factor, str(jnp.result_type(float)),
    )
    output = run_methods(
        problem, [spec], lr=lr, steps=steps, save_every=save_every,
        checkpoint_every=checkpoint_every, num_eigenvalues=num_eigenvalues,
        eigensolver=eigensolver, divergence_factor=divergence_factor,
        directory=checkpoint_dir, fingerprint=fingerprint, progress=progress,
    )
    return trajectory_of(output, method, method, lr)
