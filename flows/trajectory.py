"""`Trajectory`: what a run of an optimizer or a flow returns."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

__all__ = ["Trajectory", "STATUS_OK", "STATUS_DIVERGED", "STATUS_FAILED", "status_text"]

STATUS_OK = 0
STATUS_DIVERGED = 1
STATUS_FAILED = 2  # the integrator gave up (step budget spent, step size collapsed)


def status_text(code: int, stopped_at: int) -> str:
    if code == STATUS_OK:
        return "ok"
    if code == STATUS_DIVERGED:
        return f"diverged at step {stopped_at}"
    return f"integrator failed at step {stopped_at}"


class Trajectory(eqx.Module):
    """A run sampled at saved steps (integer step times, τ = k is step k).

    Attributes:
        method: the method name, e.g. ``"gd"`` or ``"central_flow"``.
        lr: the learning rate η (an array, batched in sweeps).
        steps: the saved step indices, shape (T,).
        params: flat parameter vectors at the saved steps, shape (T, n). Entries
            after a divergence are NaN.
        loss: the loss at the saved steps, shape (T,).
        eigenvalues: the top-k Hessian eigenvalues (effective, P⁻¹H, for
            preconditioned methods) at the saved steps, shape (T, k), or None.
        status_code: 0 ok, 1 diverged, 2 integrator failure.
        stopped_at: the step where the run diverged or failed (−1 if ok).
        extras: method-specific series keyed by name, each with leading axis T.
        wall_time: seconds of run time, compilation excluded.
        compile_time: seconds spent compiling.

    Sweeps return the same structure with a leading sweep axis on every array.
    """

    method: str = eqx.field(static=True)
    lr: Float[Array, "*batch"]
    steps: Int[Array, "*batch T"]
    params: Float[Array, "*batch T n"]
    loss: Float[Array, "*batch T"]
    eigenvalues: Float[Array, "*batch T k"] | None
    status_code: Int[Array, "*batch"]
    stopped_at: Int[Array, "*batch"]
    extras: dict[str, Array] = eqx.field(default_factory=dict)
    wall_time: float = eqx.field(static=True, default=float("nan"))
    compile_time: float = eqx.field(static=True, default=float("nan"))

    @property
    def sharpness(self) -> Float[Array, "*batch T"] | None:
        """The top Hessian eigenvalue at the saved steps (None if not tracked)."""
        return None if self.eigenvalues is None else self.eigenvalues[..., 0]

    @property
    def status(self) -> str | list[str]:
        """``"ok"``, ``"diverged at step k"`` or ``"integrator failed at step k"``."""
        codes = np.asarray(self.status_code)
        stops = np.asarray(self.stopped_at)
        if codes.ndim == 0:
            return status_text(int(codes), int(stops))
        return [status_text(int(c), int(s)) for c, s in zip(codes.ravel(), stops.ravel())]

    @property
    def ok(self) -> bool | np.ndarray:
        return np.asarray(self.status_code) == STATUS_OK

    @property
    def final_params(self) -> Float[Array, "*batch n"]:
        return self.params[..., -1, :]

    def distance_to(self, other: Trajectory) -> Float[Array, "*batch T"]:
        """‖w_self(k) − w_other(k)‖ at the common saved steps, in order: all of them for
        runs saved alike, those from step k on for a run taken over at step k
        (`flows.simulate`'s ``start_from``) against the run it took over."""
        mine, theirs = np.asarray(self.steps), np.asarray(other.steps)
        if mine.shape != theirs.shape or np.any(mine != theirs):
            common = np.intersect1d(mine, theirs) if mine.ndim == theirs.ndim == 1 else []
            if len(common) == 0:
                raise ValueError(
                    f"cannot compare trajectories saved with shapes {self.params.shape} "
                    f"and {other.params.shape} at no common step: use the same steps and "
                    "save_every")
            return jnp.linalg.norm(
                self.params[np.searchsorted(mine, common)]
                - other.params[np.searchsorted(theirs, common)], axis=-1)
        return jnp.linalg.norm(self.params - other.params, axis=-1)
