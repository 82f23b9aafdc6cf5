"""`sweep`: many learning rates (and initialization seeds) as one compiled, vmapped run.

Every member of a sweep is the run `simulate` would make for it (the same pure cores
`run_discrete` / `run_flow`, built by `Method.build` from the member's learning rate):
the cores are vmapped over the learning rate (an array field of the update rule,
DESIGN "Time convention": in step time every flow is saved at the same integer steps
for every η), jit-compiled once, and the sweep axis is sharded across all devices
with `jax.sharding`.

How members are grouped:

- Under ``vmap`` diffrax's step loop runs until its *slowest* member finishes, and a
  flow ``dw/dτ = −η g`` in step time is stiffer the larger η (its explicit step is
  bounded by ``η λ_max Δτ ≲ 3``): one large learning rate would make every member pay
  for its steps. Members are therefore sorted by learning rate and run in chunks of
  ``chunk_size`` similar learning rates, each chunk one call of the *same* compiled
  function (equal chunk shapes: no recompilation). For gradient flow over η ∈ [0.01, 1]
  on a 433-parameter MLP (22 to 1333 integrator steps) 4 sorted chunks run 3.7× faster
  than one chunk of 16 on a CPU (benchmarks/sweep_vs_loop.py).
- Padding: the number of members is padded (with copies of the last member) to a
  whole number of chunks, each a multiple of the device count; padding is dropped
  from the results.

Reference: the step-time convention and the pitfalls of vmapped diffrax solves are in
the library's design notes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, PyTree

from .integrate import flow_solver, is_adaptive
from .options import (
    Integrator,
    Method,
    Tracking,
    as_tracking,
    check_lr,
    check_lr_in,
    check_positive_int,
)
from .problem import Problem
from .progress import progress_bar
from .simulate import check_run_length, run_tracked
from .timing import compile_clock
from .trajectory import Trajectory

__all__ = ["sweep", "sweep_mesh", "SWEEP_AXIS"]

#: The name of the mesh axis the sweep members are sharded along.
SWEEP_AXIS = "sweep"

def sweep_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh (axis ``"sweep"``) over ``devices``, all devices of all processes
    by default (`jax.devices()`, which spans every host after `jax.distributed.initialize`)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must name at least one device")
    return Mesh(np.asarray(devices), (SWEEP_AXIS,))


class _Setup(eqx.Module):
    """Everything about a sweep chunk except the members: one compiled function per setup."""

    method: Method
    steps: int = eqx.field(static=True)
    save_every: int = eqx.field(static=True)
    tracking: Tracking
    divergence_factor: float = eqx.field(static=True)
    progress: bool = eqx.field(static=True)
    mesh: Mesh | None = eqx.field(static=True)


def _run_member(setup: _Setup, problem: Problem, lr: Array) -> dict[str, Array]:
    """One member: exactly what `simulate` computes for ``(problem, lr)``."""
    return run_tracked(
        problem, setup.method.build(problem, lr, in_sweep=True), setup.steps, setup.save_every,
        setup.method.integrator, setup.tracking, setup.divergence_factor, setup.progress,
    )


@eqx.filter_jit
def _run_chunk(setup: _Setup, shared: Problem, varying: Problem, lrs: Array) -> dict[str, Any]:
    """A chunk of members at once: ``vmap`` over the learning rates and the parts of the
    problem that vary between members (``varying``; ``shared`` is the rest)."""

    def member(lr, varying_part):
        return _run_member(setup, eqx.combine(varying_part, shared), lr)

    output = jax.vmap(member)(lrs, varying)
    if setup.mesh is not None and setup.mesh.size > 1:
        sharding = NamedSharding(setup.mesh, PartitionSpec(SWEEP_AXIS))
        output = jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(x, sharding), output
        )
    return output


@eqx.filter_jit
def _assemble(chunks: list[dict], order: Array, mesh: Mesh | None) -> dict[str, Any]:
    """Concatenate the chunks and put the members back in the caller's order (dropping
    the padding), keeping the sweep axis sharded when it divides evenly."""
    joined = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *chunks)
    output = jax.tree_util.tree_map(lambda x: jnp.take(x, order, axis=0), joined)
    if mesh is not None and mesh.size > 1 and order.shape[0] % mesh.size == 0:
        sharding = NamedSharding(mesh, PartitionSpec(SWEEP_AXIS))
        output = jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(x, sharding), output
        )
    return output


def _check_lrs(lrs: Any) -> np.ndarray:
    try:
        values = np.asarray(lrs, dtype=object)
    except Exception:
        values = None
    if isinstance(lrs, (str, bytes)) or values is None or values.ndim != 1 or not values.size:
        raise ValueError(f"lrs must be a non-empty list of positive numbers, got {lrs!r}")
    try:
        return np.asarray([check_lr(v) for v in values], dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"lrs: {error}") from None


def _check_seeds(seeds: Any) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (Sequence, np.ndarray)):
        raise ValueError(f"seeds must be a sequence of integers, got {seeds!r}")
    checked = []
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seeds must be integers, got {seed!r}")
        checked.append(int(seed))
    if not checked:
        raise ValueError("seeds must not be empty")
    return checked


def _leaves_equal(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if eqx.is_array(a) and eqx.is_array(b):
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))
    if eqx.is_array(a) or eqx.is_array(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # an incomparable leaf (e.g. an array-like function) counts as unequal
        return False


def _problems_of_seeds(
    factory: Callable[[int], Problem], seeds: list[int]
) -> tuple[Problem, Problem]:
    """Build ``factory(seed)`` for every seed and split the problems into the part they
    share and a ``varying`` part stacked along a leading seed axis: ``(shared, varying)``.

    Problems of equal structure (the zoo's problems: module-level functions with the data
    as pytree leaves) may differ in any array (initial parameters, data drawn from the
    seed). Otherwise (e.g. a loss that is a fresh closure for every seed) only the initial
    parameters may vary, which is checked on the loss values at the initial points.
    """
    problems = [factory(seed) for seed in seeds]
    for seed, problem in zip(seeds, problems):
        if not isinstance(problem, Problem):
            raise ValueError(f"problem({seed}) must return a flows.Problem, got {problem!r}")
    first = problems[0]
    structure = jax.tree_util.tree_structure(first.params0)
    shapes = [(x.shape, x.dtype) for x in jax.tree_util.tree_leaves(first.params0)]
    for seed, problem in zip(seeds, problems):
        leaves, other = jax.tree_util.tree_flatten(problem.params0)
        if other != structure or [(jnp.shape(x), jnp.result_type(x)) for x in leaves] != shapes:
            raise ValueError(
                f"problem({seed}) has initial parameters of another structure or shape than "
                f"problem({seeds[0]}): a seed may change their values only"
            )
    # The name is a label (it may mention the seed), not part of the computation.
    problems = [dataclasses.replace(p, name=first.name) for p in problems]
    first_leaves, treedef = jax.tree_util.tree_flatten(first)
    flat = [jax.tree_util.tree_flatten(p) for p in problems[1:]]
    batchable = all(other == treedef for _, other in flat)
    varies = []
    for i, leaf in enumerate(first_leaves):
        if not batchable:
            break
        same = [_leaves_equal(leaves[i], leaf) for leaves, _ in flat]
        if not eqx.is_array(leaf):
            batchable = all(same)
        elif not all(same):
            batchable = all(jnp.shape(leaves[i]) == jnp.shape(leaf) for leaves, _ in flat)
        varies.append(eqx.is_array(leaf) and not all(same))

    if batchable:
        stacked = [
            jnp.stack([leaf] + [leaves[i] for leaves, _ in flat]) if vary else leaf
            for i, (leaf, vary) in enumerate(zip(first_leaves, varies))
        ]
        batched = jax.tree_util.tree_unflatten(treedef, stacked)
        mask = jax.tree_util.tree_unflatten(treedef, varies)
        varying, shared = eqx.partition(batched, mask)
        return shared, varying

    # Not batchable as a whole: only the initial parameters may differ between seeds.
    f0 = first.flat_loss
    for seed, problem in zip(seeds[1:], problems[1:]):
        w = problem.w0
        own, common = float(jnp.real(problem.flat_loss(w))), float(jnp.real(f0(w)))
        if not math.isclose(own, common, rel_tol=1e-6, abs_tol=1e-12):
            raise ValueError(
                f"problem({seed}) has another loss than problem({seeds[0]}) (L = {own} vs "
                f"{common} at its initial point) and a structure that cannot be batched: "
                "build the loss from module-level functions with the data as pytree leaves "
                "(e.g. jax.tree_util.Partial), or let the seed change the initial parameters only"
            )
    params0 = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[p.params0 for p in problems])
    batched = eqx.tree_at(lambda p: p.params0, first, params0)
    mask = jax.tree_util.tree_map(lambda _: False, first)
    mask = eqx.tree_at(
        lambda p: p.params0, mask, jax.tree_util.tree_map(lambda _: True, params0)
    )
    varying, shared = eqx.partition(batched, mask)
    return shared, varying


def _place(tree: PyTree, mesh: Mesh, spec: PartitionSpec) -> PyTree:
    """Put the array leaves of ``tree`` on ``mesh`` with ``spec`` (every process passes the
    same values, as `jax.device_put` requires for shardings that span hosts)."""
    sharding = NamedSharding(mesh, spec)
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x, tree
    )


def _to_host(tree: PyTree) -> PyTree:
    """Arrays spread over several processes are gathered so every process gets them all."""

    def gather(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return jnp.asarray(multihost_utils.process_allgather(x, tiled=True))
        return x

    return jax.tree_util.tree_map(gather, tree)


def sweep(
    problem: Problem | Callable[[int], Problem],
    method: str,
    *,
    lrs: Sequence[float],
    steps: int,
    seeds: Sequence[int] | None = None,
    save_every: int = 1,
    tracking: Tracking | int | None = None,
    integrator: Integrator | None = None,
    optimizer: str | None = None,
    divergence_factor: float = 1e6,
    progress: bool = False,
    chunk_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    **options: Any,
) -> Trajectory:
    """Run ``method`` for every learning rate in ``lrs`` (and every seed) as one compiled run.

    The keyword options are those of `flows.simulate`, with ``lrs`` (a list) in place of
    ``lr``; member ``i`` equals ``simulate(problem, method, lr=lrs[i], steps=steps, ...)``
    to float tolerance. All members are vmapped through one jit-compiled function, whose
    sweep axis is sharded across ``devices`` (all devices, of every host once
    `jax.distributed.initialize` has run, by default); new learning-rate values of the same
    count reuse the compiled function.

    A member that diverges (loss beyond ``divergence_factor · (1 + |L(w₀)|)`` or
    non-finite) is frozen and flagged (``status_code == 1``, ``stopped_at`` = its step, NaN
    afterwards); the others are unaffected.

    Args:
        problem: a `Problem`; with ``seeds``, a factory ``seed -> Problem`` called once per
            seed. Seeded problems must have initial parameters of one structure and shape.
            If the problems' non-array parts are equal (the zoo's problems: module-level
            functions, data as pytree leaves) any array may depend on the seed (weights,
            data); otherwise (a fresh closure per seed) only the initial parameters may,
            which is checked on the loss at each initial point (ValueError if not).
        method: any method of `flows.simulate` (`flows.available_methods`).
        lrs: the learning rates, a non-empty 1-D sequence of positive numbers.
        steps: number of steps; flows are integrated over τ ∈ [0, steps] in step time.
        seeds: optional initialization seeds; the sweep is then the product lrs × seeds.
        save_every, tracking, integrator, optimizer, divergence_factor, progress,
            **options: as in `flows.simulate` (``method`` may be a `flows.Method`).
        chunk_size: members per vmapped call. Members are sorted by learning rate and run
            in chunks of this many (rounded up to a multiple of the device count), each
            chunk a call of the same compiled function, so that a stiff large learning
            rate only slows down its own chunk. ``None``: one chunk for discrete methods
            and fixed-step solvers; chunks of ``max(4, ⌈members/4⌉)`` (about 4 chunks) for
            adaptive flows. The best size depends on how much of the hardware one member
            keeps busy: smaller chunks (down to 1) for CPU-bound models, ``len(lrs)`` for
            small problems on an accelerator (see the benchmarks' README).
        devices: the devices to shard the sweep axis across (default all, `sweep_mesh`).

    A sweep is held in memory; a checkpointed, resumable sweep is a `flows.RunSpec` with a
    tuple of learning rates run by `flows.runs.run` (or ``flows run`` on a config).

    Returns:
        A `Trajectory` whose arrays carry leading sweep axes: ``(L, ...)`` for L learning
        rates, ``(L, S, ...)`` with S seeds (member ``[i, j]`` is ``lrs[i]``, ``seeds[j]``).
        ``lr`` has the sweep shape, ``steps`` too (one row per member). ``wall_time`` is the
        whole sweep's run time and ``compile_time`` its tracing and compilation (0 when the
        compiled function is reused).
    """
    lr_values = _check_lrs(lrs)
    steps, save_every = check_run_length(steps, save_every)
    method = Method.of(method, optimizer=optimizer, integrator=integrator, **options)
    if chunk_size is not None:
        chunk_size = check_positive_int("chunk_size", chunk_size)

    if seeds is None:
        if not isinstance(problem, Problem):
            raise ValueError(
                f"problem must be a flows.Problem (or, with seeds, a function seed -> Problem), "
                f"got {problem!r}"
            )
        seed_list: list[int] = []
        varying, shared = eqx.partition(problem, lambda _: False)
        num_seeds = 1
    else:
        seed_list = _check_seeds(seeds)
        if isinstance(problem, Problem) or not callable(problem):
            raise ValueError(
                "with seeds, problem must be a function seed -> Problem "
                f"(e.g. lambda seed: flows.problems.mlp(data, seed=seed)), got {problem!r}"
            )
        shared, varying = _problems_of_seeds(problem, seed_list)
        num_seeds = len(seed_list)

    # Validate the method and its options at the boundary, with the first member's problem.
    first_varying = jax.tree_util.tree_map(lambda x: x[0], varying)
    first_problem = eqx.combine(first_varying, shared)
    dtype = jnp.real(first_problem.w0).dtype
    for value in lr_values:
        check_lr_in(float(value), dtype, "lrs")
    first = method.build(first_problem, lr_values[0])
    tracking = as_tracking(tracking).check(first_problem.num_params)
    tracking.rows(save_every)

    mesh = sweep_mesh(devices)
    num_lrs = len(lr_values)
    num_members = num_lrs * num_seeds
    lr_index = np.repeat(np.arange(num_lrs), num_seeds)  # member m = (lr m // S, seed m % S)
    seed_index = np.tile(np.arange(num_seeds), num_lrs)
    # Stiffness grows with η: similar learning rates share a chunk.
    by_lr = np.argsort(lr_values[lr_index], kind="stable")

    adaptive = method.is_flow and is_adaptive(
        flow_solver(first, method.integrator.solver), method.integrator.dt0
    )
    if chunk_size is None:
        chunk_size = max(4, -(-num_members // 4)) if adaptive else num_members
    chunk_size = min(chunk_size, num_members)
    chunk_size = -(-chunk_size // mesh.size) * mesh.size
    num_chunks = -(-num_members // chunk_size)
    padded = np.concatenate(
        [by_lr, np.full(num_chunks * chunk_size - num_members, by_lr[-1], dtype=by_lr.dtype)]
    )

    member_lrs = lr_values[lr_index[padded]]
    member_seeds = seed_index[padded]
    setup = _Setup(
        method=method, steps=steps, save_every=save_every, tracking=tracking,
        divergence_factor=divergence_factor, progress=progress, mesh=mesh,
    )
    replicated = PartitionSpec()
    by_member = PartitionSpec(SWEEP_AXIS)
    shared = _place(shared, mesh, replicated)
    varying_host = jax.tree_util.tree_map(np.asarray, varying)

    outputs = []
    with compile_clock() as compile_seconds:
        start = time.perf_counter()
        for chunk in range(num_chunks):
            members = slice(chunk * chunk_size, (chunk + 1) * chunk_size)
            chunk_lrs = _place(np.asarray(member_lrs[members], dtype=dtype), mesh, by_member)
            seeds_of_chunk = member_seeds[members]
            chunk_varying = _place(
                jax.tree_util.tree_map(lambda x, s=seeds_of_chunk: x[s], varying_host),
                mesh,
                by_member,
            )
            label = (
                method.name if num_chunks == 1 else f"{method.name} [{chunk + 1}/{num_chunks}]"
            )
            with progress_bar(steps, label, enabled=progress and not method.is_flow):
                outputs.append(_run_chunk(setup, shared, chunk_varying, chunk_lrs))
        order = np.empty(num_members, dtype=np.int32)
        order[by_lr] = np.arange(num_members, dtype=np.int32)
        order = _place(order, mesh, replicated)
        output = jax.block_until_ready(_assemble(outputs, order, mesh))
        total = time.perf_counter() - start
    compile_time = compile_seconds[0]
    output = _to_host(output)

    shape = (num_lrs, num_seeds) if seeds is not None else (num_lrs,)

    def unflatten(x):
        return None if x is None else x.reshape(shape + x.shape[1:])

    lr_grid = np.broadcast_to(lr_values[:, None], (num_lrs, num_seeds)).reshape(shape)
    return Trajectory(
        method=method.name,
        lr=jnp.asarray(lr_grid),
        steps=unflatten(output["steps"]),
        params=unflatten(output["params"]),
        loss=unflatten(output["loss"]),
        eigenvalues=unflatten(output["eigenvalues"]),
        status_code=unflatten(output["status_code"]),
        stopped_at=unflatten(output["stopped_at"]),
        extras={k: unflatten(v) for k, v in output["extras"].items()},
        wall_time=max(total - compile_time, 0.0),
        compile_time=compile_time,
    )
