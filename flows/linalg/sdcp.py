"""The semidefinite complementarity problem (SDCP) of the central flow, solved inside JAX.

Given α ∈ Sᵏ and a linear map β: Sᵏ → Sᵏ (a tensor, ``β[X]_ij = Σ_kl β_ijkl X_kl``),
find X ∈ Sᵏ with

    X ⪰ 0,    M(X) = α + β[X] ⪰ 0,    ⟨X, M(X)⟩ = 0.

For a symmetric positive semidefinite β this is the optimality system of the convex
quadratic program ``min_{X ⪰ 0} ½⟨X, β[X]⟩ + ⟨α, X⟩``; in the central flow of gradient
descent (Cohen, Damian, Talwalkar, Kolter and Lee, "Understanding optimization in deep
learning with central flows", ICLR 2025) it is ``min_{X ⪰ 0} ‖g + ½ Σ_ij X_ij g_ij‖²``
in the η-metric, with ``g_ij = ∇_w(u_iᵀ H u_j)``. For k = 1 the solution is
``X = max(0, −α/β)``, i.e. ``σ² = 2⟨−g, ∇S⟩/‖∇S‖²``.

The reference implementations call CVXPY on the host at every substep. Here k is small
(the eigenvalues at the edge of stability), so the problem is solved by a semismooth
Newton method on the natural residual

    F(X) = X − Π₊(X − t M(X)),       Π₊ = projection onto the PSD cone,

whose zeros are exactly the SDCP solutions for every t > 0. The generalized Jacobian of
Π₊ at ``Z = W diag(d) Wᵀ`` is ``E ↦ W (Ω ∘ WᵀEW) Wᵀ`` with ``Ω_ab = (d_a⁺ − d_b⁺)/(d_a − d_b)``
(Sun and Sun 2002), so each iteration is one k×k ``eigh`` and one solve of size
k(k+1)/2. Every iteration also evaluates a batch of damped steps and the projected
gradient step ``X − F(X)`` and keeps the one with the smallest residual, which makes
the method monotone in ‖F‖. The problem is first rescaled by the congruence
``X = D Y D``, ``D_ii = β_iiii^{-1/4}``, which leaves the SDCP invariant and equalises the
scale of the eigendirections. Everything is pure JAX: jit-, vmap- and scan-safe.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, Scalar

__all__ = ["SDCPSolution", "solve_sdcp", "sdcp_map", "psd_projection", "svec", "smat"]

# Damped Newton steps tried at every iteration (the projected-gradient step is tried too).
_STEP_FRACTIONS = (1.0, 0.5, 0.25, 0.1)


class SDCPSolution(eqx.Module):
    """The solution X of the SDCP, with M(X) and the relative natural residual.

    ``residual`` is ``‖X − Π₊(X − t M(X))‖`` relative to the problem's scale, on the
    rescaled problem; it is the value to check (errors are values inside traced code).
    """

    x: Float[Array, "k k"]
    m: Float[Array, "k k"]
    residual: Scalar
    iterations: Int[Array, ""]


def _basis(k: int) -> np.ndarray:
    """An orthonormal basis E_p of Sᵏ under ⟨A, B⟩ = tr(AB), shape (k(k+1)/2, k, k)."""
    rows, cols = np.triu_indices(k)
    basis = np.zeros((rows.size, k, k))
    value = np.where(rows == cols, 1.0, np.sqrt(0.5))
    basis[np.arange(rows.size), rows, cols] = value
    basis[np.arange(rows.size), cols, rows] = value
    return basis


def svec(x: Float[Array, "... k k"]) -> Float[Array, "... m"]:
    """Coordinates of a symmetric matrix in the orthonormal basis of Sᵏ (isometric)."""
    basis = jnp.asarray(_basis(x.shape[-1]), dtype=x.dtype)
    return jnp.einsum("pij,...ij->...p", basis, x)


def smat(v: Float[Array, "... m"], k: int) -> Float[Array, "... k k"]:
    """The symmetric matrix with svec coordinates v (inverse of `svec`)."""
    basis = jnp.asarray(_basis(k), dtype=v.dtype)
    return jnp.einsum("pij,...p->...ij", basis, v)


def psd_projection(x: Float[Array, "k k"]) -> Float[Array, "k k"]:
    """The nearest positive semidefinite matrix in Frobenius norm: clip the eigenvalues."""
    values, vectors = jnp.linalg.eigh(0.5 * (x + x.T))
    return (vectors * jnp.maximum(values, 0)) @ vectors.T


def sdcp_map(alpha: Float[Array, "k k"], beta: Float[Array, "k k k k"], x: Array) -> Array:
    """``M(X) = α + β[X]``."""
    return alpha + jnp.einsum("ijkl,kl->ij", beta, x)


def _projection_jacobian(values: Array, vectors: Array, basis: Array) -> Array:
    """The generalized Jacobian of svec∘Π₊∘smat at ``W diag(values) Wᵀ`` (m×m, symmetric)."""
    positive = jnp.maximum(values, 0)
    gap = values[:, None] - values[None, :]
    both = (values[:, None] > 0) & (values[None, :] > 0)
    mixed = (values[:, None] > 0) != (values[None, :] > 0)
    safe_gap = jnp.where(mixed, gap, 1.0)
    gap_ratio = (positive[:, None] - positive[None, :]) / safe_gap
    omega = jnp.where(both, 1.0, jnp.where(mixed, gap_ratio, 0.0))
    rotated = jnp.einsum("ia,qij,jb->qab", vectors, basis, vectors)
    return jnp.einsum("pab,ab,qab->pq", rotated, omega, rotated)


def solve_sdcp(
    alpha: Float[Array, "k k"],
    beta: Float[Array, "k k k k"],
    *,
    init: Float[Array, "k k"] | None = None,
    max_iterations: int = 50,
    rtol: float | None = None,
) -> SDCPSolution:
    """Solve ``X ⪰ 0, α + β[X] ⪰ 0, ⟨X, α + β[X]⟩ = 0`` (see the module docstring).

    Args:
        alpha: α, symmetric k×k (only its symmetric part is used).
        beta: β as a (k, k, k, k) tensor acting on the last two axes; β should be
            monotone (``⟨X, β[X]⟩ ≥ 0``), e.g. a Gram tensor ``⟨g_ij, g_kl⟩``.
        init: a starting point (e.g. the previous solution); zero by default.
        max_iterations: Newton iterations at most (usually 1–4 suffice).
        rtol: stop when the relative natural residual is below this
            (default: 100 × the dtype's machine epsilon).

    Returns:
        `SDCPSolution` with X, M(X), the final relative residual and the iteration count.
    """
    k = alpha.shape[-1]
    dtype = alpha.dtype
    if k == 0:
        empty = jnp.zeros((0, 0), dtype)
        return SDCPSolution(empty, empty, jnp.zeros((), dtype), jnp.asarray(0))
    eps = float(jnp.finfo(dtype).eps)
    rtol = 100 * eps if rtol is None else float(rtol)
    alpha = 0.5 * (alpha + alpha.T)
    basis = jnp.asarray(_basis(k), dtype=dtype)
    # Congruence scaling X = D Y D: the SDCP is invariant, the Newton system better scaled.
    # A β without a diagonal (vanishing third derivatives, as on a quadratic) stays unscaled.
    diagonal = jnp.abs(jnp.einsum("iiii->i", beta))
    largest = jnp.max(diagonal)
    floor = jnp.maximum(largest * eps, jnp.finfo(dtype).tiny)
    d = jnp.where(largest > 0, jnp.maximum(diagonal, floor), 1.0) ** -0.25
    alpha_s = d[:, None] * alpha * d[None, :]
    beta_s = jnp.einsum("i,j,ijkl,k,l->ijkl", d, d, beta, d, d)
    q = jnp.einsum("pij,ijkl,qkl->pq", basis, beta_s, basis)
    c = jnp.einsum("pij,ij->p", basis, alpha_s)
    if init is None:
        start = None
    else:
        start = svec(0.5 * (init + init.T) / (d[:, None] * d[None, :]))
    y, residual, iterations = _solve_scaled(q, c, start, max_iterations, rtol)
    solution = d[:, None] * y * d[None, :]
    # β = 0 (no third derivatives: nothing moves the eigenvalues): X = 0, the solution if
    # α ⪰ 0; if not there is none (the QP is unbounded), and X = 0 is what the k = 1 closed
    # form gives, with the residual of X = 0 saying so.
    no_beta = jnp.all(beta == 0)
    solution = jnp.where(no_beta, 0.0, solution)
    tiny = jnp.finfo(dtype).tiny
    zero_residual = jnp.linalg.norm(psd_projection(-alpha)) / jnp.maximum(
        jnp.linalg.norm(alpha), tiny
    )
    residual = jnp.where(no_beta, zero_residual, residual)
    return SDCPSolution(
        x=solution,
        m=sdcp_map(alpha, beta, solution),
        residual=residual,
        iterations=iterations,
    )


def _step_and_scale(q: Array, c: Array) -> tuple[Array, Array]:
    """The natural-residual step t (1/‖q‖ in the max-row-sum norm, 1 for q = 0) and the
    problem's scale."""
    tiny = jnp.finfo(q.dtype).tiny
    row_sum = jnp.max(jnp.sum(jnp.abs(q), axis=1))
    # q = 0 (β = 0): the natural residual X − Π(X − t c) has the same zeros for every t > 0.
    step = jnp.where(row_sum > 0, 1.0 / jnp.maximum(row_sum, tiny), 1.0)
    return step, jnp.maximum(jnp.linalg.norm(step * c), tiny)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _solve_scaled(
    q: Array, c: Array, start: Array | None, max_iterations: int, rtol: float
) -> tuple[Array, Array, Array]:
    """Semismooth Newton on the natural residual of the SDCP ``(c, q)`` in svec
    coordinates: (Y, relative residual, iterations). Derivatives are implicit
    (`_solve_scaled_jvp`), not through the iterations."""
    dtype = q.dtype
    eps = float(jnp.finfo(dtype).eps)
    m = q.shape[0]
    k = int(round((np.sqrt(8 * m + 1) - 1) / 2))
    basis = jnp.asarray(_basis(k), dtype=dtype)
    step, scale = _step_and_scale(q, c)
    eye = jnp.eye(m, dtype=dtype)
    # A symmetric β (GD, RMSProp: a Gram tensor) makes the SDCP a convex QP, whose
    # objective is a reliable merit; otherwise the natural residual is the merit.
    symmetric = jnp.linalg.norm(q - q.T) <= 1e3 * eps * jnp.maximum(jnp.linalg.norm(q), 1.0)

    def project(x):
        values, vectors = jnp.linalg.eigh(jnp.einsum("pij,p->ij", basis, x))
        return jnp.einsum("pij,ia,a,ja->p", basis, vectors, jnp.maximum(values, 0), vectors)

    def natural(x):
        z = jnp.einsum("pij,p->ij", basis, x - step * (q @ x + c))
        values, vectors = jnp.linalg.eigh(z)
        projected = jnp.einsum("pij,ia,a,ja->p", basis, vectors, jnp.maximum(values, 0), vectors)
        return x - projected, values, vectors

    def norm(x):
        return jnp.linalg.norm(natural(x)[0])

    def objective(x, feasible):
        value = jnp.where(feasible, 0.5 * x @ q @ x + c @ x, jnp.inf)
        return jnp.where(jnp.isfinite(value), value, jnp.inf)

    def newton(carry):
        x, value, residual, _, iteration = carry
        f, values, vectors = natural(x)
        jac_projection = _projection_jacobian(values, vectors, basis)
        jacobian = eye - jac_projection + step * jac_projection @ q
        delta = jnp.linalg.solve(jacobian + 10 * eps * eye, -f)
        fractions = jnp.asarray(_STEP_FRACTIONS, dtype=dtype)
        raw = x + fractions[:, None] * delta
        candidates = jnp.concatenate([raw, jax.vmap(project)(raw), (x - f)[None]])
        feasible = jnp.arange(candidates.shape[0]) >= raw.shape[0]
        values = jax.vmap(objective)(candidates, feasible)
        residuals = jax.vmap(norm)(candidates)
        residuals = jnp.where(jnp.isfinite(residuals), residuals, jnp.inf)
        # Symmetric β: the lowest objective, or, once the objective is flat to rounding,
        # the lowest natural residual among feasible points; otherwise the residual.
        flat = 100 * eps * (1 + jnp.abs(value))
        lower = jnp.min(values) < value - flat
        tied = jnp.where(jnp.abs(values - value) <= flat, residuals, jnp.inf)
        best = jnp.where(
            symmetric,
            jnp.where(lower, jnp.argmin(values), jnp.argmin(tied)),
            jnp.argmin(residuals),
        )
        improved = jnp.where(
            symmetric & lower, True, residuals[best] < residual
        ) & jnp.isfinite(residuals[best])
        x = jnp.where(improved, candidates[best], x)
        value = jnp.where(improved, values[best], value)
        new_residual = jnp.where(improved, residuals[best], residual)
        return x, value, new_residual, improved, iteration + 1

    def not_done(carry):
        _, _, residual, improved, iteration = carry
        return (iteration < max_iterations) & (residual > rtol * scale) & improved

    x0 = project(-step * c) if start is None else project(start)
    first = (x0, objective(x0, True), norm(x0), jnp.asarray(True), jnp.asarray(0))
    x, _, residual, _, iterations = jax.lax.while_loop(not_done, newton, first)
    return psd_projection(jnp.einsum("pij,p->ij", basis, x)), residual / scale, iterations


@_solve_scaled.defjvp
def _solve_scaled_jvp(max_iterations, rtol, primals, tangents):
    """Implicit derivative of the solution: at Z = Y − t M(Y) the natural residual
    ``F = Y − Π₊(Z)`` vanishes for every nearby problem, so with J the generalized
    Jacobian of Π₊ at Z, ``(I − J + tJq) dY = −tJ(dq Y + dc)``. The starting point has
    no influence on the solution and gets no derivative."""
    q, c, start = primals
    dq, dc, _ = tangents
    y, residual, iterations = _solve_scaled(q, c, start, max_iterations, rtol)
    dtype = q.dtype
    eps = float(jnp.finfo(dtype).eps)
    m = q.shape[0]
    basis = jnp.asarray(_basis(y.shape[0]), dtype=dtype)
    step, _ = _step_and_scale(q, c)
    x = svec(y)
    values, vectors = jnp.linalg.eigh(smat(x - step * (q @ x + c), y.shape[0]))
    # Eigenvalues of Z at rounding level are zero (degenerate complementarity), which
    # picks one element of the generalized Jacobian.
    level = 1e3 * eps * jnp.maximum(jnp.max(jnp.abs(values)), jnp.finfo(dtype).tiny)
    values = jnp.where(jnp.abs(values) <= level, 0.0, values)
    jacobian = _projection_jacobian(values, vectors, basis)
    eye = jnp.eye(m, dtype=dtype)
    system = eye - jacobian + step * jacobian @ q + 10 * eps * eye
    dx = jnp.linalg.solve(system, -step * jacobian @ (dq @ x + dc))
    zero_int = np.zeros(np.shape(iterations), dtype=jax.dtypes.float0)
    return (y, residual, iterations), (smat(dx, y.shape[0]), jnp.zeros_like(residual), zero_int)
