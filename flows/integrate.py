"""The engine: a discrete optimizer with ``lax.scan``, a flow with diffrax, in step time.

Both are sampled at the same integer steps (step time, τ = k is step k), so a flow
and the optimizer it models are compared point by point. `run_discrete` and
`run_flow` are pure and jit/vmap-safe (the learning rate is an array inside the rule,
so new values never recompile) and continue from a carry, so a long run is the same
computation in chunks; `run_method` picks one by what it is given. Above them,
`flows.simulate`, `flows.sweep` and the checkpointed runner `flows.runs` add checks,
timing, eigenvalue tracking and files.
"""

from __future__ import annotations

import warnings

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .linalg.hvp import loss_and_gradient
from .optimizers.base import UpdateRule
from .options import Integrator
from .problem import Problem
from .progress import progress_callback
from .trajectory import STATUS_DIVERGED, STATUS_FAILED, STATUS_OK
from .vector_fields.base import VectorField

__all__ = [
    "run_discrete",
    "run_flow",
    "run_method",
    "divergence_threshold",
    "first_divergence",
    "default_tolerances",
    "flow_solver",
    "is_adaptive",
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
    """Run ``w_{k+1} = w_k + Δw_k`` (`UpdateRule.step`: ``−P⁻¹_k g_k`` for a
    preconditioned rule) for ``steps`` steps with ``lax.scan``.

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
        delta, new_state = rule.step(step, state, f, w, g)
        running = stopped_at < 0
        w = jnp.where(running, w + delta, w)
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
    state_next = rule.step(step_last, state_last, f, w_last, loss_and_gradient(f, w_last)[1])[1]
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
    integrator: Integrator | None = None,
    divergence_factor: float = 1e6,
    progress: bool = False,
    start: tuple | None = None,
) -> dict[str, Array]:
    """Integrate a flow in step time from τ = 0 to ``steps``, saving at multiples of ``save_every``.

    ``integrator`` (`flows.Integrator`) is adaptive Tsit5 with a PID controller by
    default, or the flow's own solver (the central flow's); with a fixed-step solver
    give ``dt0`` (the tolerances are then unused). A terminating
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

    integrator = Integrator() if integrator is None else integrator
    solver = flow_solver(field, integrator.solver)
    dt0 = integrator.dt0
    if is_adaptive(solver, dt0):
        default_rtol, default_atol = default_tolerances(problem.w0.dtype)
        controller = diffrax.PIDController(
            rtol=default_rtol if integrator.rtol is None else integrator.rtol,
            atol=default_atol if integrator.atol is None else integrator.atol,
        )
    else:
        controller = diffrax.ConstantStepSize()
        dt0 = 1.0 if dt0 is None else dt0

    def diverging(t, y, args, **kwargs):
        return ~(jnp.abs(jnp.real(f(field.parameters(y)))) <= threshold)

    max_steps = integrator.max_steps
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
            adjoint=(
                diffrax.RecursiveCheckpointAdjoint()
                if integrator.adjoint is None else integrator.adjoint
            ),
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


def run_method(
    problem: Problem,
    built: UpdateRule | VectorField,
    steps: int,
    save_every: int = 1,
    *,
    integrator: Integrator | None = None,
    divergence_factor: float = 1e6,
    progress: bool = False,
    start: tuple | None = None,
) -> dict[str, Array]:
    """`run_flow` for a vector field, `run_discrete` for an update rule (as built by
    `flows.Method.build`); the integrator is unused by a discrete method."""
    if isinstance(built, VectorField):
        return run_flow(
            built, steps, save_every, integrator=integrator,
            divergence_factor=divergence_factor, progress=progress, start=start,
        )
    return run_discrete(
        problem, built, steps, save_every, divergence_factor=divergence_factor,
        progress=progress, start=start,
    )
