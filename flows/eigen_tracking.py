"""Hessian eigenpairs tracked along a run (a discrete optimizer or a flow).

`track` computes the top-k eigenpairs at every ``every``-th saved point of a run,
warm-starting each solve from the previous eigenvectors and aligning their signs,
so the eigenvector series is smooth and can be differenced (`flows.eos` measures
its rotation). Two refinements matter at the edge of stability (Cohen, Kaur, Li,
Kolter, Talwalkar, ICLR 2021):

- *midpoints*: GD oscillates across a valley, ``w_k ≈ c_k + (−1)^k a_k``, so the
  eigenvectors at the iterates themselves flip between two curvatures and converge
  slowly; at ``(w_{k−1} + 2w_k + w_{k+1})/4`` the period-2 part cancels exactly and a
  linear drift is kept, so the Hessian is evaluated on the central path.
- *effective sharpness*: a preconditioned rule ``w_{k+1} = w_k − P_k⁻¹ g_k`` is stable
  iff ``λ_max(P_k⁻¹ H) ≤ 2`` (DESIGN, "All of these are preconditioned GD"); with the
  series of ``P⁻¹`` (`p_inv_series`, rebuilt from the saved parameters and
  the optimizer state the run reports, e.g. RMSProp's ``ν``) the tracked eigenvalues
  are those of ``P⁻¹H``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .linalg.eigen import EigenSolver, default_eigensolver, top_eigenpairs
from .linalg.hvp import gradient
from .methods import FLOWS
from .optimizers.base import UpdateRule
from .problem import Problem
from .vector_fields.base import VectorField

__all__ = [
    "EigenTrack",
    "midpoints",
    "track",
    "track_trajectory",
    "fill_saved",
    "p_inv_series",
    "tracked_eigenvalues",
    "track_output",
]


class EigenTrack(eqx.Module):
    """Eigenpairs along a run.

    Attributes:
        steps: the steps where the eigenpairs were computed, shape (m,).
        values: the top-k eigenvalues, descending, shape (m, k).
        vectors: the eigenvectors as columns, sign-aligned from one row to the next,
            shape (m, n, k). For an effective (preconditioned) track these are the
            eigenvectors of ``p^{1/2} H p^{1/2}`` (``p = P⁻¹``).
        rows: the indices of the tracked rows in the saved series, shape (m,).
    """

    steps: Int[Array, " m"]
    values: Float[Array, "m k"]
    vectors: Float[Array, "m n k"]
    rows: Int[Array, " m"]

    @property
    def sharpness(self) -> Float[Array, " m"]:
        return self.values[:, 0]


def midpoints(series: Float[Array, "T ..."]) -> Float[Array, "T ..."]:
    """``(x_{i−1} + 2x_i + x_{i+1})/4`` along the leading axis.

    A period-2 oscillation ``(−1)^i a`` cancels exactly and a linear trend is kept.
    At the two ends the missing neighbour is reflected (``x_{−1} := x_1``), which
    gives the plain midpoint of the first (last) pair, ``(x_0 + x_1)/2``.
    """
    if series.shape[0] < 2:
        return series
    before = jnp.concatenate([series[1:2], series[:-1]])
    after = jnp.concatenate([series[1:], series[-2:-1]])
    return 0.25 * (before + 2 * series + after)


def _selected_rows(num_rows: int, every: int) -> np.ndarray:
    return np.arange(0, num_rows, every)


def _check_every(every) -> int:
    if isinstance(every, bool) or not isinstance(every, int) or every <= 0:
        raise ValueError(f"every must be a positive integer, got {every!r}")
    return every


def track(
    problem: Problem,
    params: Float[Array, "T n"],
    k: int,
    *,
    steps: Int[Array, " T"] | None = None,
    every: int = 1,
    midpoint: bool = False,
    p_inv: Float[Array, "T ..."] | Float[Array, ""] | None = None,
    eigensolver: EigenSolver | None = None,
) -> EigenTrack:
    """Top-k Hessian eigenpairs at every ``every``-th row of a saved run.

    Args:
        problem: the loss.
        params: the saved parameters, shape (T, n); NaN rows (after a divergence) give
            NaN eigenpairs and do not disturb the warm start.
        k: the number of eigenpairs.
        steps: the step of each row (default ``0 … T−1``).
        every: track rows ``0, every, 2·every, …``.
        midpoint: evaluate the Hessian at ``(w_{i−1} + 2w_i + w_{i+1})/4`` of the
            neighbouring *saved* rows; the period-2 oscillation cancels only if
            neighbouring rows are consecutive steps (saved every step), or an odd
            number of steps apart.
        p_inv: ``P⁻¹`` per row, shape (T,) or (T, n), or one scalar; the
            eigenvalues are then those of ``P⁻¹H`` (the effective sharpness, stability
            threshold 2). With ``midpoint`` it is averaged with the same weights.
        eigensolver: the eigensolver (dense below 1500 parameters, Lanczos above).

    Returns:
        An `EigenTrack` with ``m = ceil(T / every)`` rows.
    """
    every = _check_every(every)
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    params = jnp.asarray(params)
    if params.ndim != 2:
        raise ValueError(f"params must have shape (T, n), got {params.shape}")
    num_rows, n = params.shape
    if k > n:
        raise ValueError(f"k={k} exceeds the number of parameters n={n}")
    if steps is None:
        steps = jnp.arange(num_rows)
    steps = jnp.asarray(steps)
    if steps.shape != (num_rows,):
        raise ValueError(f"steps must have shape ({num_rows},), got {steps.shape}")
    if p_inv is not None:
        p_inv = jnp.asarray(p_inv)
        if p_inv.ndim == 0:
            p_inv = jnp.broadcast_to(p_inv, (num_rows,))
        if p_inv.shape[0] != num_rows or p_inv.shape not in {
            (num_rows,),
            (num_rows, n),
        }:
            raise ValueError(
                f"p_inv must have shape ({num_rows},) or ({num_rows}, {n}), "
                f"got {p_inv.shape}"
            )
    eigensolver = default_eigensolver(n) if eigensolver is None else eigensolver
    rows = _selected_rows(num_rows, every)
    return _track(problem, params, steps, p_inv, k, eigensolver, midpoint, rows)


@eqx.filter_jit
def _track(problem, params, steps, p_inv, k, eigensolver, midpoint, rows):
    points = midpoints(params) if midpoint else params
    if p_inv is not None and midpoint:
        p_inv = midpoints(p_inv)
    points = points[rows]
    p_rows = None if p_inv is None else p_inv[rows]
    f = problem.flat_loss

    def solve(w, p, init):
        # A NaN row (diverged) would poison the warm start: solve at a finite
        # stand-in and report NaN for the row instead.
        finite = jnp.all(jnp.isfinite(w)) & (True if p is None else jnp.all(jnp.isfinite(p)))
        safe_w = jnp.where(finite, w, jnp.zeros_like(w))
        safe_p = None if p is None else jnp.where(finite, p, jnp.ones_like(p))
        pairs = top_eigenpairs(
            f, safe_w, k, eigensolver=eigensolver, init=init, p_inv=safe_p
        )
        values = jnp.where(finite, pairs.values, jnp.nan)
        vectors = jnp.where(finite, pairs.vectors, jnp.nan)
        return finite, values, vectors

    first_p = None if p_rows is None else p_rows[0]
    finite0, values0, vectors0 = solve(points[0], first_p, None)
    start = jnp.where(finite0, vectors0, jnp.eye(points.shape[1], k, dtype=points.dtype))

    def step(previous, row):
        w, p = row
        finite, values, vectors = solve(w, p, previous)
        return jnp.where(finite, vectors, previous), (values, vectors)

    xs = (points[1:], None if p_rows is None else p_rows[1:])
    _, (values, vectors) = jax.lax.scan(step, start, xs)
    values = jnp.concatenate([values0[None], values])
    vectors = jnp.concatenate([vectors0[None], vectors])
    return EigenTrack(steps=steps[rows], values=values, vectors=vectors, rows=jnp.asarray(rows))


def track_trajectory(
    problem: Problem,
    trajectory,
    k: int,
    *,
    every: int = 1,
    midpoint: bool = False,
    rule: UpdateRule | None = None,
    eigensolver: EigenSolver | None = None,
) -> EigenTrack:
    """`track` on a `Trajectory` (its ``params`` and ``steps``).

    The eigenvalues are those of ``P⁻¹H`` (the effective sharpness) if the trajectory
    carries ``extras["p_inv"]`` (``simulate(..., tracking=Tracking(k, effective=True))``)
    or if the update ``rule`` that produced it is given (`p_inv_series`, discrete or flow
    according to ``trajectory.method``); otherwise of H.
    """
    p_inv = trajectory.extras.get("p_inv")
    if p_inv is None and rule is not None:
        p_inv = p_inv_series(
            problem, rule, trajectory.steps, trajectory.params, trajectory.extras,
            discrete=trajectory.method not in FLOWS,
        )
    return track(
        problem,
        trajectory.params,
        k,
        steps=trajectory.steps,
        every=every,
        midpoint=midpoint,
        p_inv=p_inv,
        eigensolver=eigensolver,
    )


def _saved_states(problem: Problem, rule: UpdateRule, extras) -> Array | None:
    """The optimizer state at every saved row, from the diagnostics the run saved.

    Works for stateless rules (no state) and for rules whose `state_diagnostics` holds
    every array of the state under a name of its own (RMSProp: ``{"nu": ν}``; Adam's
    ``(μ, ν)``: ``{"mu": μ, "nu": ν}``).
    """
    template = rule.init(problem.flat_loss, problem.w0)
    if template is None:
        return None
    named = rule.state_diagnostics(template)
    leaves, treedef = jax.tree_util.tree_flatten(template)
    names = [[name for name, value in named.items() if value is leaf] for leaf in leaves]
    if any(len(found) != 1 for found in names):
        raise ValueError(
            f"cannot rebuild the state of {type(rule).__name__} from the saved diagnostics "
            f"{sorted(named)}; pass the P⁻¹ series to `track` directly (p_inv=...)"
        )
    missing = [found[0] for found in names if extras is None or found[0] not in extras]
    if missing:
        raise ValueError(
            f"the run did not save the optimizer state {missing[0]!r} needed for P⁻¹ of "
            f"{type(rule).__name__}"
        )
    return jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(extras[found[0]]) for found in names]
    )


def p_inv_series(
    problem: Problem,
    rule: UpdateRule,
    steps: Int[Array, " T"],
    params: Float[Array, "T n"],
    extras: dict[str, Array] | None = None,
    *,
    discrete: bool = True,
) -> Float[Array, "T ..."]:
    """``P_k⁻¹`` at every saved row: the inverse preconditioner step k uses,
    ``w_{k+1} = w_k − P_k⁻¹ g_k``.

    Rebuilt from ``w_k`` and the optimizer state s_k the run saved in its ``extras``
    (RMSProp's ``ν_k``, which already includes ``g_k``) by `UpdateRule.step_p_inv`;
    stateless rules need only ``w_k``. For a flow (``discrete=False``) the rows are
    ``P⁻¹(τ)`` from its state s(τ) at τ = k (`UpdateRule.p_inv`): RMSProp's ν(τ)
    models ν_{τ−½}, so the two differ by half a step (and by the bias-correction count,
    k + 1 against τ + ½, a factor up to √2 in the first steps). Shape (T,) for scalar
    rules, (T, n) for diagonal ones. Rows after a divergence are NaN.
    """
    states = _saved_states(problem, rule, extras)
    return _p_inv_series(
        problem, rule, jnp.asarray(steps), jnp.asarray(params), states, discrete
    )


@eqx.filter_jit
def _p_inv_series(problem, rule, steps, params, states, discrete):
    f = problem.flat_loss
    at = rule.step_p_inv if discrete else rule.p_inv

    def one(step, w, state):
        return at(step, state, f, w, gradient(f)(w))

    return jax.vmap(one, in_axes=(0, 0, None if states is None else 0))(steps, params, states)


def tracked_eigenvalues(
    problem: Problem,
    rule: UpdateRule,
    output: dict,
    k: int,
    *,
    every: int = 1,
    midpoint: bool = False,
    effective: bool = False,
    discrete: bool = True,
    eigensolver: EigenSolver | None = None,
) -> tuple[Float[Array, "T k"], Array | None]:
    """The eigenvalue series `simulate` reports for a run's ``output`` dict: (T, k), NaN
    at the rows not tracked, and the ``P⁻¹`` series if ``effective`` (else None), of a
    discrete run or (``discrete=False``) of a flow (`p_inv_series`)."""
    params, steps = output["params"], output["steps"]
    p_inv = None
    if effective:
        p_inv = p_inv_series(
            problem, rule, steps, params, output.get("extras"), discrete=discrete
        )
    tracked = track(
        problem, params, k, steps=steps, every=every, midpoint=midpoint,
        p_inv=p_inv, eigensolver=eigensolver,
    )
    return fill_saved(params.shape[0], tracked), p_inv


def fill_saved(num_rows: int, tracked: EigenTrack) -> Float[Array, "T k"]:
    """The tracked eigenvalues spread over all ``num_rows`` saved rows, NaN where
    none were computed (so they line up with ``Trajectory.steps``)."""
    k = tracked.values.shape[1]
    full = jnp.full((num_rows, k), jnp.nan, dtype=tracked.values.dtype)
    return full.at[tracked.rows].set(tracked.values)


def track_output(
    problem: Problem, built, output: dict, tracking, save_every: int
) -> tuple[Float[Array, "T k"] | None, dict[str, Array]]:
    """The eigenvalues a run reports, and its extras: a run's own (the central flow
    reports the eigenvalues it tracks, those of P⁻¹H with ``tracking.effective``), else
    those `tracking` (a `flows.Tracking`) asks for, computed along ``output`` (a
    `flows.integrate.run_method` result) of the update rule or flow ``built``; with
    ``tracking.effective`` the extras gain ``"p_inv"``."""
    extras = dict(output.get("extras", {}))
    eigenvalues = extras.pop("eigenvalues", None)
    if eigenvalues is not None and tracking.effective:
        # The central flow's own report of P⁻¹H, so that every method of an effective run
        # reports the same quantity.
        eigenvalues = extras.get("effective_eigenvalues", eigenvalues)
    if eigenvalues is not None or not tracking.num_eigenvalues:
        return eigenvalues, extras
    flow = isinstance(built, VectorField)
    eigenvalues, p_inv = tracked_eigenvalues(
        problem, built.rule if flow else built, output, tracking.num_eigenvalues,
        every=tracking.rows(save_every), midpoint=tracking.midpoint,
        effective=tracking.effective, discrete=not flow, eigensolver=tracking.eigensolver,
    )
    if p_inv is not None:
        extras["p_inv"] = p_inv
    return eigenvalues, extras
