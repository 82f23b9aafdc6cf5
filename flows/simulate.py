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
import jax.numpy as jnp

from .eigen_tracking import track_output
from .integrate import run_method
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

__all__ = ["simulate", "run_tracked", "check_run_length"]


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
) -> dict[str, Any]:
    """`flows.integrate.run_method`, then the eigenvalue tracking ``tracking`` asks for:
    the arrays of a `Trajectory`, not the carry to continue from (pure; `simulate` jits
    it, `flows.sweep` vmaps it)."""
    output = run_method(
        problem, built, steps, save_every, integrator=integrator,
        divergence_factor=divergence_factor, progress=progress,
    )
    eigenvalues, extras = track_output(problem, built, output, tracking, save_every)
    kept = {k: output[k] for k in ("steps", "params", "loss", "status_code", "stopped_at")}
    return {**kept, "eigenvalues": eigenvalues, "extras": extras}


_run_tracked = eqx.filter_jit(run_tracked)


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
    if checkpoint_dir is not None:
        return simulate_checkpointed(
            problem, method, lr=lr, steps=steps, save_every=save_every, tracking=tracking,
            divergence_factor=divergence_factor, checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every, progress=progress,
        )
    built = method.build(problem, lr)
    with progress_bar(steps, method.name, enabled=progress and not method.is_flow):
        output, compile_time, wall_time = timed(
            _run_tracked, problem, built, steps, save_every, method.integrator, tracking,
            divergence_factor, progress,
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
