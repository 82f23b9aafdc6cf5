"""`simulate`: run a discrete optimizer (``lax.scan``) or a flow (diffrax) on a problem.

Both are sampled at the same integer steps (step time, τ = k is step k), so a flow
and the optimizer it models are compared point by point. The cores
`run_discrete` and `run_flow` are pure and jit/vmap-safe (the learning rate is an
array inside the rule, so new values never recompile); `simulate` adds input
checks, timing (compile separated from run), eigenvalue tracking and the
`Trajectory` wrapper.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .eigen_tracking import track, tracked_eigenvalues, tracking_interval
from .linalg.eigen import EigenSolver
from .linalg.hvp import loss_and_gradient
from .methods import is_flow, make_method
from .optimizers.base import UpdateRule
from .problem import Problem
from .progress import progress_bar, progress_callback
from .trajectory import STATUS_DIVERGED, STATUS_FAILED, STATUS_OK, Trajectory
from .vector_fields.base import VectorField

__all__ = [
    "simulate",
    "run_discrete",
    "run_flow",
    "run_method",
    "track_eigenpairs",
    "divergence_threshold",
    "first_divergence",
    "default_tolerances",
]


def divergence_threshold(loss0: Array, factor: float = 1e6) -> Array:
    """A loss of magnitude above ``factor · (1 + |L(w₀)|)`` (or a non-finite one) counts as
    diverged; the magnitude, since a loss unbounded below runs off to −∞."""
    return factor * (1.0 + jnp.abs(jnp.real(loss0)))


def first_divergence(steps: Array, loss: Array, threshold: Array) -> Array:
    """The first saved step whose loss is non-finite or beyond ±``threshold`` (−1 if none)."""
    bad = ~(jnp.abs(jnp.real(loss)) <= threshold)  # NaN compares False, so it counts as bad
    return jnp.where(jnp.any(bad), steps[jnp.argmax(bad)], -1)


def _mask_after(stopped_at: Array, steps: Array, series: Array) -> Array:
    """NaN out the saved values after a divergence, so nothing downstream reads them."""
    after = (stopped_at >= 0) & (steps > stopped_at)
    shape = (-1,) + (1,) * (series.ndim - 1)
    return jnp.where(after.reshape(shape), jnp.nan, series)


def run_discrete(
    problem: Problem,
    rule: UpdateRule,
    steps: int,
    save_every: int = 1,
    *,
    divergence_factor: float = 1e6,
    progress: bool = False,
    start: tuple | None = None,
) -> dict[str, Array]:
    """Run ``w_{k+1} = w_k − P⁻¹_k g_k`` for ``steps`` steps with ``lax.scan``.

    Saves ``w_k`` and ``L(w_k)`` at ``k = 0, save_every, …, steps``, and in ``extras``
    the rule's `state_diagnostics` of the state s_k that step k uses (e.g. RMSProp's
    ν_k, which already includes g_k). A step whose loss is non-finite or above the
    divergence threshold freezes the run there; the values saved after it are NaN and
    ``stopped_at`` is that step.

    ``start`` continues a run from a carry ``(k₀, w, state[, stopped_at])``, e.g. the
    ``"carry"`` of a previous call: the steps are then ``k₀ … k₀ + steps`` (``k₀``
    an array, so chunks of one length share one compiled function). The output's
    ``"carry"`` is the final ``(step, w, state, stopped_at)``; the divergence
    threshold always comes from the problem's ``w₀``.
    """
    f = problem.flat_loss
    w0 = problem.w0
    loss0 = f(w0)
    threshold = divergence_threshold(loss0, divergence_factor)

    def one_step(carry, _):
        step, w, state, stopped_at = carry
        loss, g = loss_and_gradient(f, w)
        bad = ~(jnp.abs(loss) <= threshold) | ~jnp.all(jnp.isfinite(w))
        stopped_at = jnp.where((stopped_at < 0) & bad, step, stopped_at)
        p_inv, new_state = rule.update(step, state, f, w, g)
        running = stopped_at < 0
        w = jnp.where(running, w - p_inv * g, w)
        state = jax.tree_util.tree_map(lambda a, b: jnp.where(running, a, b), new_state, state)
        return (step + 1, w, state, stopped_at), (loss, rule.state_diagnostics(new_state))

    def save_block(carry, _):
        w = carry[1]
        if progress:
            progress_callback(carry[0], steps)
        carry, (losses, extras) = jax.lax.scan(one_step, carry, None, length=save_every)
        return carry, (w, losses[0], jax.tree_util.tree_map(lambda a: a[0], extras))

    num_blocks = steps // save_every
    if start is None:
        carry = (jnp.asarray(0), w0, rule.init(f, w0), jnp.asarray(-1))
    else:
        carry = (*start, jnp.asarray(-1))[:4]
    first_step = carry[0]
    carry, (ws, losses, extras) = jax.lax.scan(save_block, carry, None, length=num_blocks)
    step_last, w_last, state_last, stopped_at = carry
    loss_last = f(w_last)
    # The state the next step would use (unused, hence compiled away, for stateless rules).
    state_next = rule.update(step_last, state_last, f, w_last, loss_and_gradient(f, w_last)[1])[1]
    extras_last = rule.state_diagnostics(state_next)
    stopped_at = jnp.where(
        (stopped_at < 0) & ~(jnp.abs(loss_last) <= threshold), first_step + steps, stopped_at
    )
    saved_steps = first_step + jnp.arange(num_blocks + 1) * save_every
    ws = jnp.concatenate([ws, w_last[None]])
    losses = jnp.concatenate([losses, loss_last[None]])
    if progress:
        progress_callback(jnp.asarray(steps), steps)
    return {
        "steps": saved_steps,
        "params": _mask_after(stopped_at, saved_steps, ws),
        "loss": _mask_after(stopped_at, saved_steps, losses),
        "status_code": jnp.where(stopped_at >= 0, STATUS_DIVERGED, STATUS_OK),
        "stopped_at": stopped_at,
        "extras": {
            k: _mask_after(stopped_at, saved_steps, jnp.concatenate([v, extras_last[k][None]]))
            for k, v in extras.items()
        },
        "carry": (step_last, w_last, state_last, stopped_at),
    }


def default_tolerances(dtype) -> tuple[float, float]:
    """(rtol, atol) for the adaptive integrator: tight, but above the dtype's noise."""
    if jnp.finfo(dtype).bits >= 64:
        return 1e-8, 1e-10
    return 1e-5, 1e-7


def _interval_maxima(
    ts: Array, at_saved: dict[str, Array], step_times: Array, at_steps: dict[str, Array]
) -> dict[str, Array]:
    """Per saved step i, the largest value at the accepted steps in (t_{i−1}, t_i] and at
    t_i itself; unused step slots (t = inf) fall outside every interval."""
    interval = jnp.searchsorted(ts, step_times, side="left")
    return {
        name: jnp.maximum(
            at_saved[name], jax.ops.segment_max(values, interval, num_segments=ts.shape[0])
        )
        for name, values in at_steps.items()
    }


def flow_solver(
    field: VectorField, solver: diffrax.AbstractSolver | None = None
) -> diffrax.AbstractSolver:
    """The integrator `run_flow` uses: ``solver``, else the flow's own (the central flow's
    tracks eigenvectors), else Tsit5."""
    if solver is not None:
        return solver
    default_solver = getattr(field, "default_solver", None)
    return diffrax.Tsit5() if default_solver is None else default_solver()


def is_adaptive(solver: diffrax.AbstractSolver, dt0: float | None) -> bool:
    """Whether `run_flow` steps adaptively (PID-controlled): an adaptive solver, no dt0."""
    return isinstance(solver, diffrax.AbstractAdaptiveSolver) and dt0 is None


def run_flow(
    field: VectorField,
    steps: int,
    save_every: int = 1,
    *,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    dt0: float | None = None,
    max_steps: int | None = None,
    divergence_factor: float = 1e6,
    progress: bool = False,
    start: tuple | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
) -> dict[str, Array]:
    """Integrate a flow in step time from τ = 0 to ``steps``, saving at multiples of ``save_every``.

    Adaptive (Tsit5 with a PID controller) by default; with a fixed-step solver
    pass ``dt0`` and ``rtol=atol=None`` is ignored (constant steps). A terminating
    event stops the solve where the loss crosses the divergence threshold; the
    saved values after it are NaN and ``stopped_at`` is the first saved step past
    it. If the integrator gives up (``max_steps`` spent), ``status_code`` is 2.

    ``start`` continues from a carry ``(k₀, y[, status_code, stopped_at])``, e.g. the
    ``"carry"`` of a previous call: the integrator restarts at τ = k₀ (an array, so
    chunks of one length share one compiled function) from the state ``y`` and covers
    ``k₀ … k₀ + steps``; a divergence or failure carried in is kept. The output's
    ``"carry"`` is the final ``(step, y, status_code, stopped_at)``.
    """
    problem = field.problem
    f = problem.flat_loss
    if start is None:
        first_step, y0 = jnp.asarray(0), field.initial_state()
    else:
        first_step, y0 = start[0], start[1]
    threshold = divergence_threshold(f(problem.w0), divergence_factor)
    saved_steps = first_step + jnp.arange(steps // save_every + 1) * save_every
    ts = saved_steps.astype(jnp.real(problem.w0).dtype)

    solver = flow_solver(field, solver)
    if is_adaptive(solver, dt0):
        default_rtol, default_atol = default_tolerances(problem.w0.dtype)
        controller = diffrax.PIDController(
            rtol=default_rtol if rtol is None else rtol,
            atol=default_atol if atol is None else atol,
        )
    else:
        controller = diffrax.ConstantStepSize()
        dt0 = 1.0 if dt0 is None else dt0

    def diverging(t, y, args, **kwargs):
        return ~(jnp.abs(jnp.real(f(field.parameters(y)))) <= threshold)

    if max_steps is None:
        max_steps = int(1000 + 200 * steps / (1.0 if dt0 is None else dt0))
    # Quantities watched between saved steps are saved at every accepted step as well.
    watched = bool(jax.eval_shape(field.running_maxima, ts[0], y0))
    saveat = diffrax.SaveAt(ts=ts)
    if watched:
        saveat = diffrax.SaveAt(subs=[
            diffrax.SubSaveAt(ts=ts),
            diffrax.SubSaveAt(steps=True, fn=lambda t, y, args: field.running_maxima(t, y)),
        ])
    with warnings.catch_warnings():
        # diffrax warns on every complex state; the principal flow's is checked against
        # exact solutions (GD on quadratics, an independent scipy integration).
        warnings.filterwarnings("ignore", message="Complex dtype support in Diffrax")
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            solver,
            t0=0.0 if start is None else ts[0],
            t1=ts[-1],
            dt0=dt0,
            y0=y0,
            saveat=saveat,
            stepsize_controller=controller,
            max_steps=max_steps,
            throw=False,
            event=diffrax.Event(diverging),
            adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
            progress_meter=diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter(),
        )
    ys = solution.ys[0] if watched else solution.ys
    ws = jax.vmap(field.parameters)(ys)
    losses = jax.vmap(f)(ws)
    event = solution.result == diffrax.RESULTS.event_occurred
    solved = (solution.result == diffrax.RESULTS.successful) | event
    stopped_at = first_divergence(saved_steps, losses, threshold)
    status_code = jnp.where(
        ~solved, STATUS_FAILED, jnp.where(stopped_at >= 0, STATUS_DIVERGED, STATUS_OK)
    )
    # unreached save points come back as inf, which must count: not ``<= inf``
    if_failed = first_divergence(saved_steps, losses, jnp.finfo(jnp.real(losses).dtype).max)
    stopped_at = jnp.where(solved, stopped_at, if_failed)
    if start is not None and len(start) == 4:
        earlier = start[3] >= 0
        status_code = jnp.where(earlier, start[2], status_code)
        stopped_at = jnp.where(earlier, start[3], stopped_at)
    extras = jax.vmap(field.diagnostics)(ts, ys)
    if watched:
        extras.update(_interval_maxima(ts, jax.vmap(field.running_maxima)(ts, ys),
                                       solution.ts[1], solution.ys[1]))
    y_last = jax.tree_util.tree_map(lambda a: a[-1], ys)
    return {
        "steps": saved_steps,
        "params": _mask_after(stopped_at, saved_steps, ws),
        "loss": _mask_after(stopped_at, saved_steps, losses),
        "status_code": status_code,
        "stopped_at": stopped_at,
        "extras": {k: _mask_after(stopped_at, saved_steps, v) for k, v in extras.items()},
        "carry": (first_step + steps, y_last, status_code, stopped_at),
    }


def track_eigenpairs(
    problem: Problem,
    params: Array,
    k: int,
    *,
    solver: EigenSolver | None = None,
    preconditioner: Array | None = None,
) -> tuple[Array, Array]:
    """Top-k Hessian eigenpairs at each row of ``params`` (T, n), warm-started and
    sign-aligned from one row to the next (`flows.eigen_tracking.track` at every row; NaN
    rows give NaN). Returns values (T, k) and vectors (T, n, k)."""
    pairs = track(problem, params, k, solver=solver, preconditioner=preconditioner)
    return pairs.values, pairs.vectors


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_num_eigenvalues(value: Any, problem: Problem) -> int:
    """0 (no tracking) or a positive integer, at most the number of parameters."""
    if value == 0 and not isinstance(value, bool):
        return 0
    value = _check_positive_int("num_eigenvalues", value)
    if value > problem.num_params:
        raise ValueError(
            f"num_eigenvalues={value} exceeds the problem's {problem.num_params} parameters"
        )
    return value


def check_lr(lr: Any) -> float:
    """A learning rate must be a finite positive number."""
    try:
        value = float(lr)
    except (TypeError, ValueError):
        raise ValueError(f"lr must be a positive number, got {lr!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    return value


def _timed(fn, *args):
    """Compile ``fn`` ahead of time, then run it: (output, compile seconds, run seconds)."""
    start = time.perf_counter()
    compiled = eqx.filter_jit(fn).lower(*args).compile()
    compiled_at = time.perf_counter()
    output = jax.block_until_ready(compiled(*args))
    return output, compiled_at - start, time.perf_counter() - compiled_at


def run_method(
    problem: Problem,
    method: UpdateRule | VectorField,
    steps: int,
    save_every: int = 1,
    *,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    dt0: float | None = None,
    max_steps: int | None = None,
    divergence_factor: float = 1e6,
    progress: bool = False,
    start: tuple | None = None,
) -> dict[str, Array]:
    """`run_flow` for a vector field, `run_discrete` for an update rule (as built by
    `flows.make_method`); the integrator's options are ignored for a discrete method."""
    if isinstance(method, VectorField):
        return run_flow(
            method, steps, save_every, solver=solver, rtol=rtol, atol=atol, dt0=dt0,
            max_steps=max_steps, divergence_factor=divergence_factor, progress=progress,
            start=start,
        )
    return run_discrete(
        problem, method, steps, save_every, divergence_factor=divergence_factor,
        progress=progress, start=start,
    )


def simulate(
    problem: Problem,
    method: str,
    *,
    lr: float,
    steps: int,
    optimizer: str = "gd",
    save_every: int = 1,
    num_eigenvalues: int = 0,
    eigensolver: EigenSolver | None = None,
    eigen_every: int | None = None,
    midpoint: bool = False,
    effective_sharpness: bool = False,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    dt0: float | None = None,
    max_steps: int | None = None,
    divergence_factor: float = 1e6,
    progress: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    **options: Any,
) -> Trajectory:
    """Run ``method`` on ``problem`` for ``steps`` steps (or units of step time).

    Args:
        problem: the loss and initial parameters.
        method: a discrete optimizer (``"gd"``, ``"normalized_gd"``, ``"sqrt_gd"``,
            ``"rmsprop"``, ``"scalar_rmsprop"``, ``"dal"``) or a flow
            (``"gradient_flow"``, ``"modified_flow"``, …); see
            `flows.available_methods`.
        lr: the learning rate η (for DAL, the step-size cap).
        steps: number of steps; flows are integrated over τ ∈ [0, steps].
        optimizer: for flows, the update rule they model (default GD).
        save_every: save every this many steps (must divide ``steps``).
        num_eigenvalues: if > 0, track this many top Hessian eigenvalues at the
            saved steps (``Trajectory.eigenvalues``, ``.sharpness``).
        eigensolver: the eigensolver for tracking (dense below 1500 parameters,
            Lanczos above, by default).
        eigen_every: track every this many steps (a multiple of ``save_every``, the
            default); the rows in between are NaN (`flows.eigen_tracking`).
        midpoint: track at ``(w_{k−1} + 2w_k + w_{k+1})/4`` of neighbouring saved rows,
            where the edge-of-stability oscillation cancels (``save_every`` odd, e.g. 1).
        effective_sharpness: track the eigenvalues of ``P⁻¹H`` (stability threshold 2)
            and save the ``P⁻¹`` series as ``extras["p_inv"]``.
        solver, rtol, atol, dt0, max_steps: the diffrax integrator for flows
            (adaptive Tsit5 by default; a fixed-step solver with ``dt0``).
        divergence_factor: a loss above ``factor · (1 + |L(w₀)|)`` is divergence.
        progress: show a progress bar.
        checkpoint_dir: run in chunks of ``checkpoint_every`` steps (a multiple of
            ``save_every``; about 20 chunks by default), saving the state and the
            results so far in this folder after each; called again with the same
            arguments, it resumes from there and returns what an uninterrupted call
            would (see `flows.checkpoint`). A flow's integrator restarts at every
            chunk boundary, so its results depend slightly on ``checkpoint_every``.
        **options: hyperparameters of the optimizer (``beta2``, ``eps``, ``p``, …)
            and options of the flow; an unknown name raises ValueError.

    Returns:
        A `Trajectory` sampled at steps ``0, save_every, …, steps``.
    """
    lr = check_lr(lr)
    steps = _check_positive_int("steps", steps)
    save_every = _check_positive_int("save_every", save_every)
    if steps % save_every:
        raise ValueError(f"save_every={save_every} must divide steps={steps}")
    num_eigenvalues = check_num_eigenvalues(num_eigenvalues, problem)
    built = make_method(problem, method, lr, optimizer=optimizer, options=options)
    eigen_rows = tracking_interval(save_every, eigen_every, midpoint)
    custom_tracking = eigen_every is not None or midpoint or effective_sharpness
    if custom_tracking and checkpoint_dir is not None:
        raise ValueError("eigen_every, midpoint and effective_sharpness need checkpoint_dir=None")
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError("checkpoint_every needs a checkpoint_dir to save the checkpoints in")
    if checkpoint_dir is not None:
        from .checkpoint import simulate_checkpointed  # it builds on this module

        return simulate_checkpointed(
            problem, method, lr=lr, steps=steps, checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every, optimizer=optimizer, save_every=save_every,
            num_eigenvalues=num_eigenvalues, eigensolver=eigensolver, solver=solver,
            rtol=rtol, atol=atol, dt0=dt0, max_steps=max_steps,
            divergence_factor=divergence_factor, progress=progress, options=options,
        )

    def core(built):
        return run_method(
            problem, built, steps, save_every, solver=solver, rtol=rtol, atol=atol, dt0=dt0,
            max_steps=max_steps, divergence_factor=divergence_factor, progress=progress,
        )

    with progress_bar(steps, method, enabled=progress and not is_flow(method)):
        output, compile_time, wall_time = _timed(core, built)
    extras = dict(output.get("extras", {}))
    eigenvalues = extras.pop("eigenvalues", None)
    if num_eigenvalues and eigenvalues is None and custom_tracking:
        eigenvalues, p_inv = tracked_eigenvalues(
            problem, built.rule if is_flow(method) else built, output, num_eigenvalues,
            every=eigen_rows, midpoint=midpoint, effective=effective_sharpness,
            discrete=not is_flow(method), solver=eigensolver,
        )
        if p_inv is not None:
            extras["p_inv"] = p_inv
    elif num_eigenvalues and eigenvalues is None:
        values, _ = eqx.filter_jit(track_eigenpairs)(
            problem, output["params"], num_eigenvalues, solver=eigensolver
        )
        eigenvalues = values
    return Trajectory(
        method=method,
        lr=jnp.asarray(lr),
        steps=output["steps"],
        params=output["params"],
        loss=output["loss"],
        eigenvalues=eigenvalues,
        status_code=output["status_code"],
        stopped_at=output["stopped_at"],
        extras=extras,
        wall_time=wall_time,
        compile_time=compile_time,
    )
