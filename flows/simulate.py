"""`simulate`: one method on one problem, as a `Trajectory`.

The run itself is `flows.integrate.run_method` (``lax.scan`` for an optimizer, diffrax
for a flow), followed by the eigenvalue tracking `flows.Tracking` asks for, all in one
compiled function. Everything about the call except its arrays is static, and the
learning rate is an array inside the update rule, so a second call with the same
problem, method and shapes but another learning rate reuses the compiled function.
``compile_time + wall_time`` is the whole call (`flows.timing`).
"""

from __future__ import annotations

import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .eigen_tracking import track_output
from .integrate import run_method
from .methods import OPTIMIZERS
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
from .runs import simulate_checkpointed
from .timing import timed
from .trajectory import Trajectory
from .vector_fields.base import VectorField

__all__ = ["simulate", "run_tracked", "check_run_length", "start_point"]


def check_run_length(steps: Any, save_every: Any) -> tuple[int, int]:
    """``steps`` and ``save_every``: positive integers, the second dividing the first."""
    steps = check_positive_int("steps", steps)
    save_every = check_positive_int("save_every", save_every)
    if steps % save_every:
        raise ValueError(f"save_every={save_every} must divide steps={steps}")
    return steps, save_every


def run_tracked(
    problem: Problem,
    built,
    steps: int,
    save_every: int,
    integrator: Integrator,
    tracking: Tracking,
    divergence_factor: float,
    progress: bool,
    start: tuple | None = None,
) -> dict[str, Any]:
    """`flows.integrate.run_method`, then the eigenvalue tracking ``tracking`` asks for:
    the arrays of a `Trajectory`, not the carry to continue from (pure; `simulate` jits
    it, `flows.sweep` vmaps it). ``start`` is a `start_point` ``(k, w_k, s_{k−1})``:
    the run then covers steps k … k + ``steps``, a flow from the state it builds there
    (`VectorField.initial_state`)."""
    if start is not None and isinstance(built, VectorField):
        start = start[0], built.initial_state(start[1], start[2], start[0])
    output = run_method(
        problem, built, steps, save_every, integrator=integrator,
        divergence_factor=divergence_factor, progress=progress, start=start,
    )
    eigenvalues, extras = track_output(problem, built, output, tracking, save_every)
    kept = {k: output[k] for k in ("steps", "params", "loss", "status_code", "stopped_at")}
    return {**kept, "eigenvalues": eigenvalues, "extras": extras}


_run_tracked = eqx.filter_jit(run_tracked)


def start_point(
    start_from: Any, problem: Problem, method: Method, lr: Any, built
) -> tuple[jax.Array, jax.Array, Any]:
    """``(k, w_k, s_{k−1})``: where ``method`` takes over ``start_from = (run, k)``, a
    discrete run of the optimizer it is (or models) at the same learning rate, at its
    saved step k; s_{k−1} is read from the run's state diagnostics at step k − 1 (the
    rule's ``init`` at k = 0). Raises ValueError saying what does not fit."""
    if not (isinstance(start_from, tuple) and len(start_from) == 2
            and isinstance(start_from[0], Trajectory)):
        raise ValueError(
            f"start_from must be a pair (trajectory, step), got {type(start_from).__name__}")
    run, step = start_from
    step = int(step) if isinstance(step, np.integer) else step
    step = check_positive_int("start_from's step", step, minimum=0)
    if run.method not in OPTIMIZERS:
        raise ValueError(
            f"start_from: only a discrete optimizer's run can be taken over, not a "
            f"{run.method!r} trajectory")
    if np.ndim(run.lr) != 0:
        raise ValueError("start_from: one run, not a sweep (take one member of it)")
    if run.method != method.model:
        hint = f"; pass optimizer={run.method!r}" if method.is_flow else ""
        raise ValueError(
            f"start_from: a {run.method!r} run cannot be taken over by {method.name!r}, "
            f"which runs {method.model!r}{hint}")
    if not np.isclose(float(run.lr), float(lr), rtol=1e-6, atol=0):
        raise ValueError(
            f"start_from: the run's learning rate {float(run.lr):g} is not lr={float(lr):g}")
    if run.params.shape[-1] != problem.num_params:
        raise ValueError(
            f"start_from: the run has {run.params.shape[-1]} parameters, the problem "
            f"{problem.num_params}")
    saved = [int(k) for k in np.asarray(run.steps)]
    if step not in saved:
        raise ValueError(
            f"start_from: step {step} is not a saved step of the run (steps {saved[0]} to "
            f"{saved[-1]}, every {saved[1] - saved[0] if len(saved) > 1 else 1})")
    dtype = jnp.real(problem.w0).dtype
    row = saved.index(step)
    w = jnp.asarray(run.params[row], dtype)
    if not bool(jnp.all(jnp.isfinite(w))):
        raise ValueError(f"start_from: the run has no parameters at step {step} ({run.status})")
    rule = built.rule if isinstance(built, VectorField) else built
    f = problem.flat_loss
    if step == 0 or eqx.filter_eval_shape(rule.init, f, w) is None:
        state = rule.init(f, w)
    elif step - 1 not in saved:
        raise ValueError(
            f"start_from: taking over at step {step} needs the optimizer state of step "
            f"{step - 1}, which the run did not save: save every step there (save_every=1)")
    else:
        previous = {k: v[row - 1] for k, v in run.extras.items()}
        state = jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, dtype), rule.state_from_diagnostics(previous))
    return jnp.asarray(step), w, state


def simulate(
    problem: Problem,
    method: str | Method,
    *,
    lr: float,
    steps: int,
    save_every: int = 1,
    tracking: Tracking | int | None = None,
    integrator: Integrator | None = None,
    optimizer: str | None = None,
    divergence_factor: float = 1e6,
    progress: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    start_from: tuple[Trajectory, int] | None = None,
    **options: Any,
) -> Trajectory:
    """Run ``method`` on ``problem`` for ``steps`` steps (or units of step time).

    Args:
        problem: the loss and initial parameters.
        method: a `flows.Method`, or a name: a discrete optimizer (``"gd"``,
            ``"normalized_gd"``, ``"sqrt_gd"``, ``"rmsprop"``, ``"scalar_rmsprop"``,
            ``"dal"``) or a flow (``"gradient_flow"``, ``"central_flow"``, …; see
            `flows.available_methods`), with ``optimizer``, ``integrator`` and
            ``**options`` making up its `Method`.
        lr: the learning rate η (for DAL, the step-size cap).
        steps: number of steps; flows are integrated over τ ∈ [0, steps].
        save_every: save every this many steps (must divide ``steps``).
        tracking: the top Hessian eigenvalues to track at the saved steps
            (``Trajectory.eigenvalues``, ``.sharpness``): a `flows.Tracking`, or just
            their number. A flow that tracks eigenvalues itself (the central flow)
            reports its own.
        integrator: a `flows.Integrator` for a flow (adaptive Tsit5 by default, the
            central flow's own solver for it).
        optimizer: for a flow, the update rule it models (by default the one it is
            named after, else GD).
        divergence_factor: a loss above ``factor · (1 + |L(w₀)|)`` is divergence.
        progress: show a progress bar.
        checkpoint_dir: run in chunks of ``checkpoint_every`` steps (a multiple of
            ``save_every``; about 20 chunks by default), saving the state and the
            results so far in this folder after each; called again with the same
            arguments, it resumes from there and returns what an uninterrupted call
            would (`flows.runs`). A flow's integrator restarts at every chunk boundary,
            so its results depend slightly on ``checkpoint_every``.
        start_from: ``(run, k)``: take over a discrete ``run`` (a `Trajectory` of the
            optimizer this method is or models, at the same ``lr``) at its saved step k,
            and cover steps k … k + ``steps``. A flow starts from w_k with the run's
            optimizer state carried over as the rule aligns it (heavy ball's m(k) =
            m_{k−½} from m_{k−1}; `UpdateRule.initial_flow_state`), in step time τ = k
            (Adam's bias correction goes on counting); a discrete method continues the
            run exactly. A stateful optimizer needs the run's state at step k − 1 saved
            (``save_every=1``). So flows can be compared with a run past its first
            steps, e.g. Adam's first updates, which no flow follows.
        **options: hyperparameters of the optimizer (``beta2``, ``eps``, ``p``, …)
            and options of the flow; an unknown name raises ValueError.

    Returns:
        A `Trajectory` sampled at steps ``0, save_every, …, steps``, whose
        ``compile_time + wall_time`` is the whole call.
    """
    lr = check_lr_in(check_lr(lr), jnp.real(problem.w0).dtype)
    steps, save_every = check_run_length(steps, save_every)
    method = Method.of(method, optimizer=optimizer, integrator=integrator, **options)
    tracking = as_tracking(tracking).check(problem.num_params)
    tracking.rows(save_every)
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError("checkpoint_every needs a checkpoint_dir to save the checkpoints in")
    if start_from is not None and checkpoint_dir is not None:
        raise ValueError("start_from and checkpoint_dir cannot be combined")
    if checkpoint_dir is not None:
        return simulate_checkpointed(
            problem, method, lr=lr, steps=steps, save_every=save_every, tracking=tracking,
            divergence_factor=divergence_factor, checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every, progress=progress,
        )
    built = method.build(problem, lr)
    start = None if start_from is None else start_point(start_from, problem, method, lr, built)
    with progress_bar(steps, method.name, enabled=progress and not method.is_flow):
        output, compile_time, wall_time = timed(
            _run_tracked, problem, built, steps, save_every, method.integrator, tracking,
            divergence_factor, progress, start,
        )
    return Trajectory(
        method=method.name,
        lr=jnp.asarray(lr),
        steps=output["steps"],
        params=output["params"],
        loss=output["loss"],
        eigenvalues=output["eigenvalues"],
        status_code=output["status_code"],
        stopped_at=output["stopped_at"],
        extras=output["extras"],
        wall_time=wall_time,
        compile_time=compile_time,
    )
