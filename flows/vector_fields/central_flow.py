"""The central flow of gradient descent and of preconditioned GD.

Cohen, Damian, Talwalkar, Kolter and Lee, "Understanding optimization in deep
learning with central flows" (ICLR 2025). At the edge of stability GD oscillates
around a smooth *central* path w(τ); the oscillation δ has covariance Σ supported on
the eigenvectors at the edge, and, in step time τ (DESIGN, "Time convention"),

    dw/dτ = −P⁻¹ [ g + ½ ∇_w⟨Σ, H(w)⟩ ],      ds/dτ = rule.derivative(…, E[g⊙g]),

with ``E[g⊙g] = g⊙g + 4P² diag(Σ)`` (at the edge ``Hδ = 2Pδ``). This module is written
for any preconditioned rule ``w_{k+1} = w_k − P⁻¹(s_k) g_k`` (the rule supplies P⁻¹ and
ds/dτ, the machinery here does the rest); for GD ``P⁻¹ = η`` and there is no state.

**Edge and Σ.** Stability is ``λ_max(P⁻¹H) ≤ 2``. With ``V, μ`` the top-k eigenpairs of
``P^{-1/2} H P^{-1/2}`` (μ are the eigenvalues of P⁻¹H; ``ηλ`` for GD), the generalized
eigenvectors ``U = P^{-1/2} V`` (``UᵀPU = I``) and ``Σ = U X Uᵀ`` with X ⪰ 0 a k×k matrix,
the stability matrix ``A = Uᵀ(2P − H)U`` (= ``diag(2 − μ)``) moves, with U frozen, as

    dA/dτ = a₀ + β[X],    a₀_ij = 2u_iᵀṖ₀u_j − ⟨g_ij, ẇ₀⟩,
    β[X]_ij = Σ_kl X_kl(2u_iᵀṖ_klu_j − ⟨g_ij, ẇ_kl⟩),

where ``g_ij = ∇_w(u_iᵀH u_j)``, ``ẇ₀ = −P⁻¹g``, ``ẇ_kl = −½P⁻¹g_kl``, and Ṗ is the
rate of P through the rule's state and its dependence on X (for GD, Ṗ = 0 and
``β_ijkl = ½η⟨g_ij, g_kl⟩``). X solves the semidefinite complementarity problem

    X ⪰ 0,   M = a₀ + κA + β[X] ⪰ 0,   ⟨X, M⟩ = 0            (`flows.linalg.sdcp`),

i.e. the flow is gradient flow projected onto the cone of directions that raise no
eigenvalue at the edge. With one eigenvalue (GD, ``u = √η v``, ``Σ = σ² v vᵀ = U X Uᵀ``)
the solution is ``σ² = ηX = 2⟨−g, ∇S⟩/‖∇S‖²`` and ``dw/dτ = −η Π_{∇S⊥} g``; with several,
X is a full k×k matrix (`flows.linalg.sdcp`).

**Momentum rules** (heavy ball, Nesterov, Adam, AdamW; ``rule.preconditioned`` False).
The edge is the rule's own threshold c (``rule.stability_threshold``): with P frozen,
heavy ball on an eigenvalue λ of H is ``w_{k+1} = (1 + β − ηλ) w_k − β w_{k−1}``, stable
iff ``ηλ < 2(1 + β)``, whose roots at the edge are −1 and −β (GD's period-2 oscillation);
Adam's late steps are heavy ball with ``η_hb = (1 − β₁)P⁻¹`` on ``m = μ/(1 − β₁)``, so its
edge is ``λ(P⁻¹H) = 2(1 + β₁)/(1 − β₁)``. Averaged over the oscillation, the state is driven
by ``E[g] = g + ½∇⟨Σ, H⟩`` (the momentum) and ``E[g⊙g] = g⊙g + c²P² diag Σ`` (Adam's ν):
the rule's own stable-flow ``velocity`` with those averages (`_flow_rates`). Σ then cannot
change ``dA/dτ`` (w moves by the momentum, not by the gradient): it acts through
``d²A/dτ²``, and X solves the complementarity problem on ``Ä + 2κȦ + κ²A``
(`momentum_edge_system`, with Newton steps where that is quadratic in X).

**Restoring term**: ``κA`` (``κ = restoring_rate``) is the continuous form of the
reference code's one-step-ahead condition ``A + dt·dA/dτ ⪰ 0`` (``κ = 1/dt``): on
the edge A = 0 and it vanishes, so it does not change the flow there; an eigenvalue
that drifted above the edge (integration error) is pulled back at rate κ, one below
it may approach at rate at most κ·(distance), so entry into the edge is smoothed over
about 1/κ steps. The stable phase (all μ < 2) is exactly the rule's gradient flow;
entry into the edge of stability needs no event: X becomes non-zero by itself.

Only eigen-directions with ``μ ≥ 2 − edge_margin`` enter the complementarity problem
(the others have X = 0 and need no third derivatives); at most ``max_edge`` of them.

**Predictions** of GD's time averages along the flow (`CentralFlow.diagnostics`):
``E[L] ≈ L + ½⟨Σ, H⟩ = L + tr(Σ)/η`` and ``E‖g‖² ≈ ‖g‖² + (4/η²) tr Σ`` (GD), plus the
eigenvalues of Σ and the tracked eigenvalues.

**Integration.** ``CentralFlow`` is an ordinary vector field (``(t, y, args)``) that any
diffrax solver can integrate; it then recomputes the eigenpairs from scratch at every
evaluation with ``eigensolver`` (dense eigh or Lanczos): exact, and slow. The default
solver, `CentralFlowSolver`, is classic RK4 with one step per GD step that carries the
eigenvectors in its state and refines them once per step from the previous ones
(warm-started block Rayleigh–Ritz, `flows.linalg.rayleigh_ritz`), holds the eigen-basis
fixed over the stages, and computes third derivatives only for the eigenvalues at the
edge. With ``refresh_interval = m`` it holds the basis and the third derivatives over m
steps instead of one (``UᵀHU`` carried to first order in w), which divides the two most
expensive parts of a step at the edge by m. By default a run of GD or an RMSProp rule
chooses m between 1 and 8 as it goes: at each refresh it compares the eigenvalues at the
edge that the held basis carried with the refreshed ones, and halves m when they differ by
more than ``refresh_tolerance``, doubles it when by less than a quarter of that (a sweep
and the momentum rules refresh at every step). Everything is pure JAX (jit, vmap over
learning rates, no host callbacks).

**Derivatives** (forward mode, ``adjoint=diffrax.ForwardMode()`` in `flows.run_flow`): X
has the implicit derivative of the complementarity problem (`flows.linalg.solve_sdcp`);
exact eigenpairs (`DenseEigh`, generic diffrax solver) differentiate through ``eigh``.
The default solver's refined eigenvectors come out of an iteration whose derivative is not
that of the eigenvectors, so it is differentiable in the stable phase and on models small
enough for its exact Rayleigh–Ritz path, not in general at the edge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PyTree, Scalar

from ..linalg.eigen import DenseEigh, EigenSolver, Lanczos, top_eigenpairs
from ..linalg.hvp import (
    gradient,
    hessian_quadratic_form_pullback,
    hvp,
    loss_and_gradient,
    preconditioned_hvp,
)
from ..linalg.products import map_columns, tall_times_small
from ..linalg.rayleigh_ritz import block_rayleigh_ritz
from ..linalg.sdcp import solve_sdcp
from ..optimizers.base import UpdateRule
from ..problem import Problem
from .base import VectorField

__all__ = [
    "CentralFlow",
    "CentralFlowSolver",
    "EdgeSystem",
    "edge_system",
    "momentum_edge_system",
]


#: The most steps between refreshes of the eigen-basis in a run of GD or an RMSProp rule
#: by default (`CentralFlow.refresh_interval`; benchmarks/README.md, "Holding the
#: eigen-basis over several steps").
REFRESH_INTERVAL = 8


# ----------------------------------------------------------------------------- pieces


def _pair_order(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i ≤ j ordered by j, so the first r(r+1)/2 pairs are those of the top-r block."""
    rows = np.asarray([i for j in range(k) for i in range(j + 1)], dtype=int)
    cols = np.asarray([j for j in range(k) for _ in range(j + 1)], dtype=int)
    return rows, cols


def _pair_index(k: int) -> np.ndarray:
    """``index[i, j]``: the position of the pair (min(i, j), max(i, j)) in `_pair_order`."""
    rows, cols = _pair_order(k)
    index = np.zeros((k, k), dtype=int)
    index[rows, cols] = index[cols, rows] = np.arange(rows.size)
    return index


def _unpack(pairs: Array, k: int) -> Array:
    """The symmetric k×k (leading axes) from its k(k+1)/2 pairs (`_pair_order`)."""
    return pairs[_pair_index(k)]


def _contract(x: Array, pairs: Array) -> Array:
    """``Σ_kl X_kl g_kl`` for g symmetric in (k, l), stored as pairs (`_pair_order`):
    ``Σ_{k≤l} (X_kl + X_lk) g_kl``, the diagonal counted once (any X, not only symmetric)."""
    rows, cols = _pair_order(x.shape[0])
    weights = jnp.where(rows == cols, x[rows, cols], (x + x.T)[rows, cols])
    return weights @ pairs


def _pair_gram(a: Array, b: Array, k: int) -> Array:
    """``⟨a_ij, b_kl⟩`` as a k×k×k×k array, from a and b stored as pairs: a 15×15 Gram
    matrix for k = 5, not 25×25."""
    index = _pair_index(k)
    return (a @ b.T)[index[:, :, None, None], index[None, None, :, :]]


def _pad(x: Array, size: int, axes: tuple[int, ...]) -> Array:
    widths = [(0, 0)] * x.ndim
    for axis in axes:
        widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def _active_third_derivatives(f, w, u, num_active: Int[Array, ""]) -> Array:
    """``g_ij = ∇_w(u_iᵀ H(w) u_j)`` for the top ``num_active`` columns of u, zero elsewhere,
    one row per pair i ≤ j (`_pair_order`: k(k+1)/2 rows, not k×k; g is symmetric).

    Loops over the r = ``num_active`` columns (a traced value: only the pairs at the edge
    are differentiated, none in the stable phase): for each j one forward pass of
    ``w ↦ H(w)u_j`` and its pullback applied to ``u_i``, i ≤ j (10% cheaper than a full
    gradient of ``u_iᵀHu_j`` per pair at r = 3, 11k and 113k parameters).
    """
    k, n = u.shape[1], w.shape[0]
    index = jnp.asarray(_pair_index(k))

    def column(j, acc):
        pullback = hessian_quadratic_form_pullback(f, w, u[:, j])

        def pair(i, acc):
            return acc.at[index[i, j]].set(pullback(u[:, i]))

        return jax.lax.fori_loop(0, j + 1, pair, acc)

    return jax.lax.fori_loop(0, num_active, column, jnp.zeros((k * (k + 1) // 2, n), w.dtype))


def _solve_active(alpha: Array, beta: Array, num_active: Int[Array, ""]):
    """The SDCP on the top ``num_active`` block, X = 0 elsewhere.

    Entries outside the block are decoupled: there α = 0 and β acts as the identity,
    so their solution is 0 and one fixed-size problem serves every block size. With
    at most one eigenvalue at the edge the closed form ``X₁₁ = max(0, −α₁₁/β₁₁₁₁)`` is
    used instead (the common case, and the whole stable phase).
    """
    k = alpha.shape[0]
    active = jnp.arange(k) < num_active
    inside = active[:, None] & active[None, :]

    def scalar():
        curvature = beta[0, 0, 0, 0]
        safe = jnp.where(curvature > 0, curvature, 1.0)
        active = (num_active > 0) & (curvature > 0)
        x11 = jnp.where(active, jnp.maximum(0.0, -alpha[0, 0] / safe), 0.0)
        return jnp.zeros((k, k), alpha.dtype).at[0, 0].set(x11), jnp.zeros((), alpha.dtype)

    def block():
        eye = jnp.eye(k, dtype=alpha.dtype)
        identity = 0.5 * (
            jnp.einsum("ik,jl->ijkl", eye, eye) + jnp.einsum("il,jk->ijkl", eye, eye)
        )
        masked_alpha = jnp.where(inside, alpha, 0.0)
        masked_beta = jnp.where(
            inside[:, :, None, None] & inside[None, None, :, :],
            beta,
            jnp.where(inside[:, :, None, None], 0.0, identity),
        )
        solution = solve_sdcp(masked_alpha, masked_beta)
        return jnp.where(inside, solution.x, 0.0), solution.residual

    if k == 1:
        return scalar()
    return jax.lax.cond(num_active <= 1, scalar, block)


class EdgeSystem(eqx.Module):
    """How the stability matrix ``A = Uᵀ(cP − H)U`` moves at one point, affine in X
    (``Σ = U X Uᵀ``): with U frozen, ``dA/dτ = a0 + β[X]``."""

    a0: Float[Array, "k k"]
    beta: Float[Array, "k k k k"]


def _quadratic_form(u: Array, diagonal: Array) -> Array:
    """``Uᵀ diag(d) U`` for a scalar or per-coordinate d."""
    if jnp.ndim(diagonal) == 0:  # e.g. GD's constant P⁻¹ (and its zero rate)
        return diagonal * (u.T @ u)
    return jnp.einsum("ni,n,nj->ij", u, jnp.broadcast_to(diagonal, u.shape[:1]), u)


def _flow_rates(rule, f, t, w, state, g, p_inv, u, third, x):
    """``(dw/dτ, ds/dτ, E[g⊙g])`` of the central flow for ``Σ = U X Uᵀ``.

    The rule's stable-flow velocity with the gradient and its square replaced by their
    averages over the oscillation δ ∈ span(U): ``E[g] = g + ½∇⟨Σ, H⟩ = g + ½ Σ X_kl g_kl``
    and, since ``Hδ = cPδ`` at the edge (c the rule's threshold),
    ``E[g⊙g] = g⊙g + c²P² diag Σ``.
    """
    threshold = rule.stability_threshold
    expected_grad = g + 0.5 * _contract(x, third)
    diag_sigma = jnp.sum(tall_times_small(u, x) * u, axis=1)
    grad_sq = g * g + threshold**2 / p_inv**2 * diag_sigma
    dw, ds = rule.velocity(t, state, f, w, expected_grad, grad_sq)
    return dw, ds, grad_sq


def edge_system(
    rule: UpdateRule,
    f: Callable[[Array], Scalar],
    t: Scalar,
    w: Float[Array, " n"],
    state: PyTree,
    g: Float[Array, " n"],
    u: Float[Array, "n k"],
    third: Float[Array, "pairs n"],
) -> EdgeSystem:
    """`EdgeSystem` of a preconditioned rule at ``(t, w, s)`` for the basis u and
    ``third = g_ij`` (one row per pair i ≤ j, `_active_third_derivatives`), assembled from
    its pieces.

    Generic in the rule: ``P⁻¹`` is ``rule.p_inv``, the state rate comes from
    ``rule.derivative`` (linearised in ``E[g⊙g]``, exact for RMSProp-type rules), and
    Ṗ is the derivative of ``P⁻¹(t, s, w)`` along (1, ṡ, ẇ), by forward differentiation.
    For GD all the Ṗ terms vanish identically.
    """
    k = u.shape[1]
    rows, cols = _pair_order(k)
    threshold = rule.stability_threshold
    p_inv = rule.p_inv(t, state, f, w, g)
    dw0 = -p_inv * g
    # X's terms, like g_ij, are symmetric in (k, l): one per pair k ≤ l.
    dw_x = -0.5 * p_inv * third
    # The oscillation δ ∈ span(U) has Hδ = cPδ at the edge: E[(Hδ)⊙(Hδ)] = c²P² diag(Σ).
    grad_sq_x = threshold**2 / p_inv**2 * (u.T[rows] * u.T[cols])

    def state_rate(grad_sq):
        return rule.derivative(t, state, f, w, g, grad_sq)[1]

    ds0, state_rate_linear = jax.linearize(state_rate, g * g)

    def p_inv_at(time, s, x):
        return rule.p_inv(time, s, f, x, gradient(f)(x))

    def d_precond(dt, ds, dw):
        dp_inv = jax.jvp(p_inv_at, (t, state, w), (dt, ds, dw))[1]
        return -dp_inv / p_inv**2

    ds_x = jax.vmap(state_rate_linear)(grad_sq_x)
    zero_t = jnp.zeros_like(t)
    dprecond_x = jax.vmap(lambda ds, dw: d_precond(zero_t, ds, dw))(ds_x, dw_x)
    dprecond_0 = d_precond(jnp.ones_like(t), ds0, dw0)
    a0 = threshold * _quadratic_form(u, dprecond_0) - _unpack(third @ dw0, k)
    beta_p = _unpack(jax.vmap(lambda d: _quadratic_form(u, d))(dprecond_x), k)  # [k, l, i, j]
    beta = threshold * jnp.transpose(beta_p, (2, 3, 0, 1)) - _pair_gram(third, dw_x, k)
    return EdgeSystem(a0, beta)


def momentum_edge_system(
    rule: UpdateRule,
    f: Callable[[Array], Scalar],
    t: Scalar,
    w: Float[Array, " n"],
    state: PyTree,
    u: Float[Array, "n k"],
    num_active: Int[Array, ""],
    restoring_rate: float | Array,
    around: Float[Array, "k k"] | None = None,
) -> EdgeSystem:
    """The second-order stability condition of a momentum rule: ``(d/dτ + κ)² A = a0 + β[X]``.

    A momentum rule moves w by its momentum, ``dw/dτ = −η m`` (heavy ball), and Σ enters
    only the momentum's rate, ``dm/dτ ∝ E[g] − (1 − β) m``: ``dA/dτ = −⟨g_ij, ẇ⟩`` does
    not depend on X, and Σ can only hold A at 0 through ``d²A/dτ²``. So X solves the
    complementarity problem on ``Ä + 2κȦ + κ²A`` (critically damped return to the edge
    at rate κ, the second-order form of the first-order flows' ``Ȧ + κA``), with U frozen
    and every derivative along the flow taken by forward differentiation, through the
    rule's own ``velocity``: generic in the rule. ``Ä`` holds fourth derivatives of the
    loss (the sharpness' curvature along ẇ), once per point, not per entry of X.

    The condition is quadratic in X in general and is linearised ``around`` a given X
    (0 by default; `CentralFlow` takes Newton steps, ``newton_steps``): exact at once for
    heavy ball, whose rates are affine in X and whose A does not depend on the state;
    Adam's (P depends on ν, ν's rate on X) and Nesterov's (``dw/dτ = −η(E[g] + βm)``
    depends on X) quadratic terms are removed by the next Newton step.
    """
    k = u.shape[1]

    def stability(time, x_w, s):
        p_inv = rule.p_inv(time, s, f, x_w, gradient(f)(x_w))
        hu = map_columns(lambda v: hvp(f, x_w, v), u)
        return rule.stability_threshold * _quadratic_form(u, 1.0 / p_inv) - u.T @ hu

    def along_flow(fn, time, x_w, s, x):
        """``(fn, d/dτ fn)`` at (τ, w, s) along the flow with X = x held."""
        _, g = loss_and_gradient(f, x_w)
        p_inv = rule.p_inv(time, s, f, x_w, g)
        third = _active_third_derivatives(f, x_w, u, num_active)
        dw, ds, _ = _flow_rates(rule, f, time, x_w, s, g, p_inv, u, third, x)
        return jax.jvp(fn, (time, x_w, s), (jnp.ones_like(time), dw, ds))

    def condition(x):
        def rate(time, x_w, s):
            return along_flow(stability, time, x_w, s, x)[1]

        # One jvp of Ȧ along the flow gives Ȧ (its primal) and Ä (its tangent).
        a_dot, a_ddot = along_flow(rate, t, w, state, x)
        kappa = restoring_rate
        return a_ddot + 2 * kappa * a_dot + kappa**2 * stability(t, w, state)

    around = jnp.zeros((k, k), w.dtype) if around is None else around
    value, linear = jax.linearize(condition, around)
    basis = jnp.eye(k * k, dtype=w.dtype).reshape(k * k, k, k)
    beta = jax.vmap(linear)(basis)  # [kl, i, j] = ∂M_ij/∂X_kl
    beta = jnp.moveaxis(beta.reshape(k, k, k, k), (0, 1), (2, 3))
    return EdgeSystem(value - jnp.einsum("ijkl,kl->ij", beta, around), beta)


def _rank(x: Array) -> Array:
    """The number of eigenvalues of the PSD x above rounding (relative to its largest)."""
    values = jnp.linalg.eigvalsh(x)
    threshold = 1e3 * jnp.finfo(x.dtype).eps * jnp.max(jnp.abs(values))
    return jnp.sum(values > jnp.maximum(threshold, jnp.finfo(x.dtype).tiny))


def _scale_columns(p_inv: Array, vectors: Array) -> Array:
    """``P^{-1/2}`` times each column (P⁻¹ a scalar or a diagonal)."""
    root = jnp.sqrt(p_inv)
    return (root[:, None] if jnp.ndim(root) else root) * vectors


class EdgeSummary(eqx.Module):
    """What the flow reports at a point (see `CentralFlow.diagnostics`).

    ``time`` is when it was computed: `CentralFlowSolver` fills it in at every step;
    other solvers leave the initial one, so later reports are recognisably stale.
    """

    time: Scalar
    effective_eigenvalues: Float[Array, " k"]
    sigma_eigenvalues: Float[Array, " k"]
    sigma_trace: Scalar
    predicted_loss: Scalar
    predicted_grad_norm_sq: Scalar
    grad_norm_sq: Scalar
    num_at_edge: Scalar
    sdcp_residual: Scalar
    basis_age: Scalar  # steps since the eigen-basis was refined (0: refined here)


class _Geometry(eqx.Module):
    """The eigen-basis at a point: refined vectors V (of P^{-1/2}HP^{-1/2}), the values
    μ, the generalized eigenvectors U = P^{-1/2}V of the edge block and its size."""

    vectors: Array
    values: Array
    u: Array
    num_active: Array


class _Evaluation(eqx.Module):
    """The flow's rates at one point, and its third derivatives (for the next stages;
    one row per pair, `_active_third_derivatives`)."""

    dw: Array
    ds: PyTree
    third: Array


class _Report(eqx.Module):
    """The pieces of an `EdgeSummary` that come out of an evaluation."""

    x: Array
    curvature: Array
    loss: Array
    g: Array
    grad_sq: Array
    residual: Array


# ------------------------------------------------------------------------------ flow


class CentralFlow(VectorField):
    """The central flow of an update rule (GD by default), in step time τ.

    ``dw/dτ = −P⁻¹[g + ½∇⟨Σ, H⟩]`` with Σ from the semidefinite complementarity problem
    over the eigenvalues at the edge ``λ(P⁻¹H) = 2`` (one, two or more at once); see the
    module docstring for the equations, the restoring term and the predictions.

    The state is ``y = (w, s, summary)``: parameters, optimizer state, and the
    `EdgeSummary` at w that `CentralFlowSolver` (the default integrator) fills in at
    every step; the eigenvectors it tracks live in the solver's state, not in y. With
    another diffrax solver the flow recomputes the eigenpairs from scratch at every
    evaluation (``eigensolver``) and the summary, hence the diagnostics, stay NaN (use
    `CentralFlow.evaluate` at the saved points).

    Attributes:
        problem: the loss.
        rule: the update rule (GD, or a preconditioned rule supplying P⁻¹ and ds/dτ).
        num_eigenvalues: the number of top eigenvalues (of P⁻¹H) tracked and reported
            (``eigenvalues`` in the diagnostics); ``k = min(num_eigenvalues, n)``.
        max_edge: at most this many of the tracked eigenvalues at the edge at once,
            between 1 and ``num_eigenvalues`` (default: all k; see `edge_size`).
        edge_margin: eigen-directions with ``μ ≥ 2 − edge_margin`` (μ the eigenvalues of
            P⁻¹H, ηλ for GD) enter the complementarity problem.
        restoring_rate: κ, per unit of step time (see the module docstring); keep
            ``κ · dt0 ≤ 1`` with `CentralFlowSolver`.
        guard: extra eigenvectors tracked beyond the ``num_eigenvalues`` reported (they
            speed up the warm-started eigensolver; see `block_size`).
        refine_iterations: block Rayleigh–Ritz iterations per step in `CentralFlowSolver`.
        refine_rtol: skip a Rayleigh–Ritz expansion (a block of HVPs) when the top k
            residuals are already below ``refine_rtol · max|θ|`` (0: always expand).
        derivative_dtype: dtype of the eigenvector refinement's HVPs and of the third
            derivatives (e.g. ``"float32"`` in a float64 run; default: the run's). For
            momentum rules the derivatives along the flow inside their second-order
            edge system stay in the run's dtype.
        stage_third_derivatives: recompute ``g_ij`` at every Runge–Kutta stage (else the
            step start's are used at every stage).
        refresh_interval: `CentralFlowSolver` refines the eigenvectors and recomputes
            ``g_ij`` every this many steps (1: every step). In between, U and ``g_ij``
            are held, as over the Runge–Kutta stages of one step, and ``UᵀHU`` is carried
            to first order in w (``d(u_iᵀHu_j) = ⟨g_ij, dw⟩``): the eigenvalues of the
            active set are those of that matrix, the others those of the last refresh.
            Every step is refreshed while an eigenvalue outside the active set may enter
            it (extrapolated at twice its last rate). ``None`` (default): adaptive in a
            run of GD and the RMSProp rules, between 1 and `REFRESH_INTERVAL` (8) steps,
            set by ``refresh_tolerance``; 1 in a `flows.sweep` (under vmap both branches
            of the refresh run: no saving) and for the momentum rules (heavy ball,
            Nesterov, Adam, whose held steps are not measured). 1 is the exact method.
        refresh_tolerance: with the adaptive ``refresh_interval``: at each refresh the
            eigenvalues at the edge carried by the held basis are compared with the
            refreshed ones; the interval halves when they differ by more than this (in
            μ, whose edge is 2 for GD; relative to the threshold for other rules), and
            doubles when by less than a quarter of it (the carried error grows about as
            the square of the interval).
        active_block: form the edge system on the smallest top block (of sizes 0, 2 and
            K, `edge_size`) holding the eigenvalues at the edge, not on all K (the same
            flow; at 113k parameters an evaluation of the rates 11 → 4.5 ms, with ~20% more
            compile time). GD and the RMSProp rules; the momentum rules (Newton steps on
            `momentum_edge_system`) always form it on all K. ``None`` (default): on in a
            run, off in a `flows.sweep`, where every branch would run.
        newton_steps: momentum rules only: Newton steps on their second-order stability
            condition, quadratic in X (`momentum_edge_system`). ``None`` (default): one
            for heavy ball, where it is exact (the condition is affine in X), two for
            Adam and Nesterov (to rounding on the analytic tests).
        eigensolver: the from-scratch eigensolver, for the first step and for generic
            diffrax solvers (by default dense up to 128 parameters, Lanczos with 100
            Krylov vectors above).
    """

    problem: Problem
    rule: UpdateRule
    num_eigenvalues: int = eqx.field(static=True, default=5)
    max_edge: int | None = eqx.field(static=True, default=None)
    edge_margin: float = 0.1
    restoring_rate: float = 1.0
    guard: int = eqx.field(static=True, default=0)
    refine_iterations: int = eqx.field(static=True, default=1)
    refine_rtol: float = eqx.field(static=True, default=0.0)
    derivative_dtype: str | None = eqx.field(static=True, default=None)
    stage_third_derivatives: bool = eqx.field(static=True, default=False)
    refresh_interval: int | None = eqx.field(static=True, default=None)
    refresh_tolerance: float = 1e-3
    newton_steps: int | None = eqx.field(static=True, default=None)
    active_block: bool | None = eqx.field(static=True, default=None)
    eigensolver: EigenSolver | None = None

    # Preconditioned rules whose P⁻¹ is a function of a state s with a rate ds/dτ.
    models: ClassVar[tuple[str, ...] | None] = (
        "gd", "rmsprop", "scalar_rmsprop", "momentum", "nesterov", "adam", "adamw"
    )

    def __check_init__(self):
        for name, least in (
            ("num_eigenvalues", 1), ("guard", 0), ("refine_iterations", 1), ("newton_steps", 1),
            ("refresh_interval", 1),
        ):
            value = getattr(self, name)
            if name in ("refresh_interval", "newton_steps") and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer ≥ {least}, got {value!r}")
        k = self.num_eigenvalues
        if self.max_edge is not None and not 1 <= self.max_edge <= k:
            raise ValueError(
                f"max_edge must be between 1 and num_eigenvalues={k}, got {self.max_edge!r}"
            )
        for name in ("edge_margin", "restoring_rate", "refine_rtol", "refresh_tolerance"):
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not (value >= 0 and np.isfinite(value)):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if self.derivative_dtype is not None:
            try:
                floating = jnp.issubdtype(jnp.dtype(self.derivative_dtype), jnp.floating)
            except TypeError:
                floating = False
            if not floating:
                raise ValueError(f"derivative_dtype must be a floating-point type such as "
                                 f"'float32', got {self.derivative_dtype!r}")

    # -- pieces

    @property
    def k(self) -> int:
        """``k = min(num_eigenvalues, n)``: the number of eigenvalues tracked and reported."""
        return min(self.num_eigenvalues, self.problem.num_params)

    @property
    def edge_size(self) -> int:
        """K: the size of the complementarity problem, the leading K of the k tracked
        eigenvalues that may be at the edge: ``min(max_edge, k)``, k by default."""
        return self.k if self.max_edge is None else min(self.max_edge, self.k)

    @property
    def refresh_every(self) -> int:
        """The most steps between refreshes of the eigen-basis: ``refresh_interval``, or
        by default `REFRESH_INTERVAL` for GD and the RMSProp rules (adaptive,
        `refresh_adaptive`) and 1 for the momentum rules (`in_sweep` sets 1)."""
        if self.refresh_interval is not None:
            return self.refresh_interval
        return REFRESH_INTERVAL if self.rule.preconditioned else 1

    @property
    def newton_iterations(self) -> int:
        """``newton_steps``, or by default one where the rule's stability condition is
        affine in X (heavy ball: `UpdateRule.affine_edge_condition`), two elsewhere."""
        if self.newton_steps is not None:
            return self.newton_steps
        return 1 if self.rule.affine_edge_condition else 2

    @property
    def refresh_adaptive(self) -> bool:
        """Whether the interval between refreshes adapts (``refresh_interval=None``)."""
        return self.refresh_interval is None and self.refresh_every > 1

    def _next_interval(self, interval, carried: _Geometry, refreshed: _Geometry):
        """The adaptive interval after a refresh: halved when the eigenvalues at the edge
        carried by the held basis (``carried``) differ from the refreshed ones by more than
        ``refresh_tolerance`` (relative to the threshold over 2), doubled when by less
        than a quarter of it, between 1 and `refresh_every`."""
        size = self.edge_size
        active = jnp.arange(size) < jnp.maximum(carried.num_active, refreshed.num_active)
        gap = jnp.abs(carried.values[:size] - refreshed.values[:size])
        error = 2.0 * jnp.max(jnp.where(active, gap, 0.0)) / self.rule.stability_threshold
        tolerance = self.refresh_tolerance
        grown = jnp.where(error < 0.25 * tolerance, 2 * interval, interval)
        interval = jnp.where(error > tolerance, interval // 2, grown)
        return jnp.clip(interval, 1, self.refresh_every)

    @property
    def block_size(self) -> int:
        """The number of eigenvectors tracked, ``min(num_eigenvalues + guard, n)``: the k
        reported and the ``guard`` ones beyond them."""
        return min(self.num_eigenvalues + self.guard, self.problem.num_params)

    def _exact_eigensolver(self) -> EigenSolver:
        if self.eigensolver is not None:
            return self.eigensolver
        n = self.problem.num_params
        # Forming the Hessian (n HVPs) and a dense eigh cost more than a whole run of
        # the flow already at a few hundred parameters; Lanczos converges the top few.
        return DenseEigh() if n <= 128 else Lanczos(num_matvecs=min(n, 100))

    def _geometry(self, p_inv, values, vectors) -> _Geometry:
        mu = values[: self.edge_size]
        # The margin is relative to GD's threshold 2: the same fraction of every rule's.
        threshold = self.rule.stability_threshold
        num_active = jnp.sum(mu >= threshold * (1.0 - 0.5 * self.edge_margin))
        u = _scale_columns(p_inv, vectors[:, : self.edge_size])
        return _Geometry(vectors, values, u, num_active)

    def _p_inv(self, t, w, state):
        """The rule's ``P⁻¹`` at (t, w, s), for the eigen-basis (no gradient at hand)."""
        f = self.problem.flat_loss
        return self.rule.p_inv(t, state, f, w, gradient(f)(w))

    def _exact_geometry(self, t, w, state) -> _Geometry:
        f = self.problem.flat_loss
        p_inv = self._p_inv(t, w, state)
        pairs = top_eigenpairs(
            f, w, self.block_size, eigensolver=self._exact_eigensolver(), p_inv=p_inv
        )
        return self._geometry(p_inv, pairs.values, pairs.vectors)

    def _refined_geometry(self, t, w, state, vectors) -> _Geometry:
        p_inv = self._p_inv(t, w, state)
        f_low, low = self._low_precision(w)
        values, vectors, _, _ = block_rayleigh_ritz(
            preconditioned_hvp(f_low, w.astype(low), jnp.asarray(p_inv, low)),
            vectors.astype(low),
            num_converged=self.k,
            max_iterations=self.refine_iterations,
            rtol=self.refine_rtol,
        )
        values, vectors = values.astype(w.dtype), vectors.astype(w.dtype)
        return self._geometry(p_inv, values, vectors)

    def _entering(self, geometry: _Geometry, stale, rates, steps) -> Array:
        """Whether an eigenvalue outside the active set may enter it within a step: a held
        basis would not see it (its curvature is not carried, it has no ``g_ij``). Its
        value at the last refresh (``stale``) is extrapolated ``steps`` ahead at twice the
        rate it rose at between the last two refreshes (``rates``)."""
        size = self.edge_size
        predicted = stale[:size] + 2.0 * jnp.maximum(rates[:size], 0.0) * steps
        inactive = jnp.arange(size) >= geometry.num_active
        entry = self.rule.stability_threshold * (1.0 - 0.5 * self.edge_margin)
        return jnp.any(inactive & (predicted >= entry))

    def _held_geometry(self, t, w, state, geometry: _Geometry, curvature) -> _Geometry:
        """The basis U held at w with ``curvature = UᵀH(w)U``: the same vectors and edge
        block, the eigenvalues of the edge block those of the pencil ``(UᵀHU, UᵀPU)``
        (of P⁻¹H on span U), the others as they were."""
        p_inv = self._p_inv(t, w, state)
        factor = jnp.linalg.cholesky(_quadratic_form(geometry.u, 1.0 / p_inv))
        reduced = jax.scipy.linalg.solve_triangular(factor, curvature, lower=True)
        reduced = jax.scipy.linalg.solve_triangular(factor, reduced.T, lower=True)
        edge = jnp.linalg.eigvalsh(0.5 * (reduced + reduced.T))[::-1]
        values = geometry.values.at[: self.edge_size].set(edge)
        return _Geometry(geometry.vectors, values, geometry.u, geometry.num_active)

    def _low_precision(self, w):
        """The loss and dtype of the eigenvector refinement and third derivatives:
        ``derivative_dtype`` (e.g. float32 in a float64 run), else the run's own."""
        if self.derivative_dtype is None or jnp.dtype(self.derivative_dtype) == w.dtype:
            return self.problem.flat_loss, w.dtype
        low = jnp.dtype(self.derivative_dtype)
        return self.problem.astype(low).flat_loss, low

    def _third_derivatives(self, w, geometry: _Geometry) -> Array:
        """``g_ij`` at w for the pairs of the active set of ``geometry`` (in
        ``derivative_dtype``)."""
        f_low, low = self._low_precision(w)
        return _active_third_derivatives(
            f_low, w.astype(low), geometry.u.astype(low), geometry.num_active
        ).astype(w.dtype)

    def _evaluate(self, t, w, state, geometry: _Geometry, curvature=None, third=None):
        """The rates at (t, w, s) in the basis ``geometry.u``, with the pieces of the report.

        ``curvature = UᵀH(w)U`` (default: the eigenvalues, U the eigenvectors at w) and
        ``third = g_ij`` at w (default: computed here).

        Traced once per structure of its arguments (a nested jit): diffrax traces a solver
        step several times (shape inference, then the loop) and the edge system is most
        of a step's trace.
        """
        # A Python number would be a static argument of the jit: one compilation per value.
        t = t if isinstance(t, jax.Array) else jnp.asarray(t)
        return _evaluate_traced_once(self, t, w, state, geometry, curvature, third)

    def _evaluate_body(self, t, w, state, geometry: _Geometry, curvature=None, third=None):
        f = self.problem.flat_loss
        u, num_active = geometry.u, geometry.num_active
        loss, g = loss_and_gradient(f, w)
        p_inv = self.rule.p_inv(t, state, f, w, g)
        if third is None:
            third = self._third_derivatives(w, geometry)
        if curvature is None:
            curvature = jnp.diag(geometry.values[: self.edge_size])
        stability = self.rule.stability_threshold * _quadratic_form(u, 1.0 / p_inv) - curvature
        if self.rule.preconditioned:
            x, residual, (dw, ds, grad_sq) = self._edge_rates(
                t, w, state, g, p_inv, u, third, stability, num_active
            )
        else:
            size = self.edge_size

            def newton_step(_, carry):
                x, _ = carry
                system = jax.lax.cond(
                    num_active > 0,
                    lambda: momentum_edge_system(
                        self.rule, f, t, w, state, u, num_active, self.restoring_rate, x
                    ),
                    lambda: EdgeSystem(
                        jnp.zeros((size, size), w.dtype), jnp.eye(size**2, dtype=w.dtype)
                        .reshape((size,) * 4)
                    ),
                )
                return _solve_active(system.a0, system.beta, num_active)

            # A loop, not an unrolled Python one: the edge system (fourth derivatives)
            # is traced and compiled once, however many Newton steps are taken.
            x, residual = jax.lax.fori_loop(
                0, self.newton_iterations, newton_step,
                (jnp.zeros((size, size), w.dtype), jnp.zeros((), w.dtype)),
            )
            dw, ds, grad_sq = _flow_rates(self.rule, f, t, w, state, g, p_inv, u, third, x)
        report = _Report(x, curvature, loss, g, grad_sq, residual)
        return _Evaluation(dw, ds, third), report

    def _block_sizes(self) -> tuple[int, ...]:
        """The static sizes of the top block the edge system is formed on: 0 (the stable
        phase: gradient flow), 2 (one or two eigenvalues at the edge, the common case) and
        K; `_edge_rates` takes the smallest that holds the eigenvalues at the edge (K
        only without `active_block`)."""
        size = self.edge_size
        if self.active_block is False:
            return (size,)
        return tuple(sorted({0, min(2, size), size}))

    def in_sweep(self) -> CentralFlow:
        """In a sweep the edge system is formed on all K (`active_block`) and the basis is
        refreshed every step (`refresh_interval`), unless asked: under vmap every branch
        of a switch runs, so neither saves anything there."""
        return dataclasses.replace(
            self,
            active_block=False if self.active_block is None else self.active_block,
            refresh_interval=1 if self.refresh_interval is None else self.refresh_interval,
        )

    def _edge_rates(self, t, w, state, g, p_inv, u, third, stability, num_active):
        """X (K×K), the SDCP residual and the rates ``(dw, ds, E[g⊙g])`` of a
        preconditioned rule, the edge system formed on the smallest top block of
        `_block_sizes` holding the ``num_active`` eigenvalues at the edge: its work on the
        third derivatives is over that block's r(r+1)/2 pairs (`_pair_order` puts them
        first), not all K(K+1)/2. Exact: the pairs outside it are zero and X = 0 there.
        Under vmap (a sweep) every branch runs."""
        f = self.problem.flat_loss
        size = self.edge_size

        def on_block(r: int):
            def rates():
                u_r, third_r = u[:, :r], third[: r * (r + 1) // 2]
                if r == 0:
                    x_r, residual = jnp.zeros((0, 0), w.dtype), jnp.zeros((), w.dtype)
                else:
                    system = edge_system(self.rule, f, t, w, state, g, u_r, third_r)
                    alpha = system.a0 + self.restoring_rate * stability[:r, :r]
                    x_r, residual = _solve_active(alpha, system.beta, num_active)
                rates = _flow_rates(self.rule, f, t, w, state, g, p_inv, u_r, third_r, x_r)
                return _pad(x_r, size, (0, 1)), residual, rates

            return rates

        sizes = self._block_sizes()
        branch = jnp.searchsorted(jnp.asarray(sizes), num_active)
        return jax.lax.switch(branch, [on_block(r) for r in sizes])

    def _summary(self, t, geometry: _Geometry, report: _Report, basis_age=0) -> EdgeSummary:
        k = self.k
        x, u, curvature, loss = report.x, geometry.u, report.curvature, report.loss
        g, grad_sq, residual = report.g, report.grad_sq, report.residual
        # Σ = U X Uᵀ shares its non-zero eigenvalues with Lᵀ X L, UᵀU = L Lᵀ; unlike a
        # square root of the rank-deficient X, the Cholesky factor has finite derivatives.
        gram = u.T @ u
        factor = jnp.linalg.cholesky(gram)
        sigma_values = jnp.linalg.eigvalsh(factor.T @ x @ factor)[::-1]
        return EdgeSummary(
            time=jnp.asarray(t, jnp.real(loss).dtype),
            effective_eigenvalues=geometry.values[:k],
            sigma_eigenvalues=_pad(sigma_values, k, (0,))[:k],
            sigma_trace=jnp.trace(x @ gram),
            # E[L] ≈ L + ½⟨Σ, H⟩ = L + ½ tr(X UᵀHU).
            predicted_loss=loss + 0.5 * jnp.sum(x * curvature),
            predicted_grad_norm_sq=jnp.sum(grad_sq),
            grad_norm_sq=jnp.sum(g * g),
            num_at_edge=_rank(x).astype(loss.dtype),
            sdcp_residual=residual,
            basis_age=jnp.asarray(basis_age, jnp.real(loss).dtype),
        )

    # -- VectorField interface

    def evaluate(self, t, w, state=None) -> EdgeSummary:
        """The `EdgeSummary` at (t, w, s), eigenpairs computed from scratch."""
        t = jnp.asarray(t, jnp.real(w).dtype)  # e.g. an integer saved step
        geometry = self._exact_geometry(t, w, state)
        return self._summary(t, geometry, self._evaluate(t, w, state, geometry)[1])

    def initial_state(self, w=None, state=None, t0=0):
        w0, s0 = super().initial_state(w, state, t0)
        t0 = jnp.asarray(t0, jnp.real(w0).dtype)
        return w0, s0, self.evaluate(t0, w0, s0)

    def __call__(self, t, y, args):
        w, state, summary = y
        evaluation, _ = self._evaluate(t, w, state, self._exact_geometry(t, w, state))
        zero = jax.tree_util.tree_map(jnp.zeros_like, summary)
        return evaluation.dw, evaluation.ds, zero

    def diagnostics(self, t, y):
        """The tracked eigenvalues, Σ, and the predicted time averages of GD at y.

        ``eigenvalues`` are those of P⁻¹H divided by η (the Hessian's for GD: the edge
        is 2/η), ``effective_eigenvalues`` those of P⁻¹H (edge at 2); ``sigma_*`` are the
        eigenvalues and trace of Σ; ``predicted_loss = L + ½⟨Σ, H⟩`` and
        ``predicted_grad_norm_sq = ‖g‖² + 4 Σ_i P_i² Σ_ii`` predict GD's time-averaged
        loss and squared gradient norm; ``basis_age`` counts the steps since the
        eigen-basis was refined (`refresh_interval`; 0 where it was). NaN where
        `CentralFlowSolver` did not fill them in (other solvers). The optimizer state
        follows under the rule's names (`UpdateRule.state_diagnostics`, e.g. RMSProp's
        ``nu``: ν(τ), which models the discrete ν_{τ−½}); it is part of the flow's state,
        so it is never stale.
        """
        summary = y[2]
        fresh = jnp.abs(summary.time - t) <= 1e-3 * (1 + jnp.abs(t))
        out = {
            name: jnp.where(fresh, value, jnp.nan)
            for name, value in dataclasses.asdict(summary).items()
            if name != "time"
        }
        out["eigenvalues"] = out["effective_eigenvalues"] / self.rule.lr
        out.update(self.rule.state_diagnostics(y[1]))
        return out

    def default_solver(self) -> CentralFlowSolver:
        """`CentralFlowSolver`, used by `flows.simulate` unless a solver is given."""
        return CentralFlowSolver()


# ---------------------------------------------------------------------------- solver

def _tableau(a: list[list[float]], b: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """An explicit Runge–Kutta tableau with an extra last row (= b, at c = 1): the new
    point, whose rates are the next step's first stage (first same as last)."""
    stages = len(b)
    full = np.zeros((stages + 1, stages + 1))
    for i, row in enumerate(a):
        full[i, : len(row)] = row
    full[stages, :stages] = b
    return full, full.sum(axis=1)


#: Explicit Runge–Kutta tableaus for `CentralFlowSolver` (its ``tableau``), by name.
TABLEAUS = {
    "euler": _tableau([[]], [1.0]),
    "heun": _tableau([[], [1.0]], [0.5, 0.5]),
    "rk3": _tableau([[], [0.5], [-1.0, 2.0]], [1 / 6, 2 / 3, 1 / 6]),
    "rk4": _tableau([[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6]),
}
_ORDERS = {"euler": 1, "heun": 2, "rk3": 3, "rk4": 4}


@eqx.filter_jit
def _evaluate_traced_once(field, t, w, state, geometry, curvature, third):
    return field._evaluate_body(t, w, state, geometry, curvature, third)


def _unwrap(terms) -> CentralFlow:
    term = terms
    while not isinstance(term, diffrax.ODETerm) and hasattr(term, "term"):
        term = term.term  # diffrax wraps the user's term (direction of integration)
    field = getattr(term, "vector_field", None)
    if not isinstance(field, CentralFlow):
        raise ValueError(
            f"CentralFlowSolver integrates a CentralFlow, got {type(field).__name__}"
        )
    return field


class _SolverState(eqx.Module):
    geometry: _Geometry
    first: _Evaluation
    has_first: Array
    curvature: Array  # UᵀH(w)U at the current point, U = geometry.u
    held_steps: Array  # steps since the last refinement of the eigenvectors
    interval: Array  # steps between refinements (adaptive: `CentralFlow.refresh_interval`)
    refreshed_values: Array  # the eigenvalues at the last refinement
    rates: Array  # their rates per step between the last two refinements


class CentralFlowSolver(diffrax.AbstractSolver):
    """Fixed-step classic Runge–Kutta (order 4) for `CentralFlow`, with eigenvector tracking.

    The solver state carries the tracked eigenvectors and the rates at the current
    point. A step from w₀ (basis U₀ and rates known) evaluates the three inner RK4
    stages with U₀ held fixed — exact gradient, P⁻¹ and third derivatives
    ``g_ij`` at the stage point, the stability matrix ``Uᵀ(2P − H)U`` by a second-order
    Taylor expansion in w — and then, at the new point w₁, refines the eigenvectors
    from U₀ (``refine_iterations`` block Rayleigh–Ritz iterations) and evaluates the
    rates there, which are both the report at w₁ (the `EdgeSummary` in y₁) and the first
    stage of the next step. Cost per step: one block Rayleigh–Ritz refinement (two blocks
    of HVPs), four gradients, one third-derivative set (r(r+1)/2 gradients of ``uᵀHv``
    for r eigenvalues at the edge, none in the stable phase) and four small
    complementarity problems; with ``CentralFlow.refresh_interval = m`` the refinement
    and the third derivatives once per m steps, the basis held in between (as over the
    stages).

    Use it with a constant step ``dt0`` (1 by default in `flows.run_flow`) dividing the
    save interval; ``restoring_rate · dt0 ≤ 1`` keeps the restoring term stable.

    Attributes:
        tableau: the explicit Runge–Kutta tableau, by name (`TABLEAUS`); classic RK4
            (``"rk4"``) by default.
    """

    tableau: str = eqx.field(static=True, default="rk4")

    term_structure = diffrax.AbstractTerm
    interpolation_cls = diffrax.LocalLinearInterpolation

    def __check_init__(self):
        if self.tableau not in TABLEAUS:
            raise ValueError(
                f"unknown tableau {self.tableau!r}; choose one of {sorted(TABLEAUS)}"
            )

    def order(self, terms):
        return _ORDERS[self.tableau]

    def init(self, terms, t0, t1, y0, args):
        field = _unwrap(terms)
        w0, s0, _ = y0
        geometry = field._exact_geometry(t0, w0, s0)
        size = field.edge_size
        first = _Evaluation(
            jnp.zeros_like(w0),
            jax.tree_util.tree_map(jnp.zeros_like, s0),
            jnp.zeros((size * (size + 1) // 2,) + w0.shape, w0.dtype),
        )
        curvature = jnp.diag(geometry.values[:size])
        interval = 1 if field.refresh_adaptive else field.refresh_every
        return _SolverState(
            geometry, first, jnp.asarray(False), curvature, jnp.asarray(0),
            jnp.asarray(interval), geometry.values, jnp.zeros_like(geometry.values),
        )

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        field = _unwrap(terms)
        f = field.problem.flat_loss
        w0, s0, _ = y0
        geometry0, first = solver_state.geometry, solver_state.first
        h = t1 - t0
        a, c = (jnp.asarray(x, dtype=h.dtype) for x in TABLEAUS[self.tableau])
        last = a.shape[0] - 1
        curvature0 = solver_state.curvature

        def advance(y, rates, weights):
            return jax.tree_util.tree_map(
                lambda y_, k_: y_ + h * jnp.tensordot(weights, k_, axes=1), y, rates
            )

        def stage(carry, i):
            k_w, k_s, third0 = carry
            t = t0 + c[i] * h
            w = advance(w0, k_w, a[i])
            state = advance(s0, k_s, a[i])

            def fresh():
                third = jax.lax.cond(
                    (i == 0) | field.stage_third_derivatives,
                    lambda: _active_third_derivatives(
                        f, w, geometry0.u, geometry0.num_active
                    ),
                    lambda: third0,
                )
                start = jnp.where(i == 0, third, third0)
                # U held at U₀: u_iᵀH(w)u_j to second order in w − w₀ (d/dw = g_ij).
                curvature = curvature0 + 0.5 * _unpack((start + third) @ (w - w0), field.edge_size)
                return field._evaluate(t, w, state, geometry0, curvature, third)[0]

            evaluation = jax.lax.cond(
                (i == 0) & solver_state.has_first, lambda: first, fresh
            )
            third0 = jnp.where(i == 0, evaluation.third, third0)
            k_w = k_w.at[i].set(evaluation.dw)
            k_s = _set(k_s, i, evaluation.ds)
            return (k_w, k_s, third0), None

        stages = a.shape[0] - 1
        k_w = jnp.zeros((stages + 1,) + w0.shape, w0.dtype)
        k_s = jax.tree_util.tree_map(
            lambda x: jnp.zeros((stages + 1,) + jnp.shape(x), jnp.result_type(x)), s0
        )
        (k_w, k_s, third0), _ = jax.lax.scan(
            stage, (k_w, k_s, first.third), jnp.arange(stages)
        )
        # The new point: refined eigenvectors (or those held, see `refresh_interval`), its
        # rates (the next step's first stage) and the report.
        w1 = advance(w0, k_w, a[last])
        s1 = advance(s0, k_s, a[last])

        since = solver_state.held_steps + 1  # steps since the last refinement, at w₁
        interval = solver_state.interval
        # UᵀHU at w₁ for the held basis U₀, to first order in w₁ − w₀.
        curvature1 = curvature0 + _unpack(third0 @ (w1 - w0), field.edge_size)

        # The branches give the basis at w₁, UᵀHU and g_ij there; the rates are evaluated
        # once, after them (one copy of the edge system to compile, not two).
        def refreshed():
            geometry1 = field._refined_geometry(t1, w1, s1, geometry0.vectors)
            rates = (geometry1.values - solver_state.refreshed_values) / since
            if field.refresh_adaptive:
                carried = field._held_geometry(t1, w1, s1, geometry0, curvature1)
                next_interval = field._next_interval(interval, carried, geometry1)
            else:
                next_interval = interval
            return (geometry1, jnp.diag(geometry1.values[: field.edge_size]),
                    field._third_derivatives(w1, geometry1), jnp.asarray(0), next_interval,
                    geometry1.values, rates)

        def held():
            geometry1 = field._held_geometry(t1, w1, s1, geometry0, curvature1)
            return (geometry1, curvature1, third0, since, interval,
                    solver_state.refreshed_values, solver_state.rates)

        if field.refresh_every == 1:
            outcome = refreshed()
        else:
            entering = field._entering(
                geometry0, solver_state.refreshed_values, solver_state.rates, since + 1
            )
            due = since >= interval
            outcome = jax.lax.cond(due | entering, refreshed, held)
        geometry1, curvature, third1, held_steps, interval1, refreshed_values, rates = outcome
        evaluation1, report = field._evaluate(t1, w1, s1, geometry1, curvature, third1)
        y1 = (w1, s1, field._summary(t1, geometry1, report, held_steps))
        state1 = _SolverState(
            geometry1, evaluation1, jnp.asarray(True), report.curvature, held_steps,
            interval1, refreshed_values, rates,
        )
        return y1, None, dict(y0=y0, y1=y1), state1, diffrax.RESULTS.successful


def _set(stack: PyTree, i, value: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda s, v: s.at[i].set(v), stack, value)
