"""Matrix functions of (complex-)symmetric Hessians applied to a vector: ``f(A) v``.

The principal flow (Rosca, Wu, Qin and Dherin, TMLR 2023) needs ``φ(ηH) g`` with

    φ(x) = log(1 − x) / x = −1 − x/2 − x²/3 − …,

where H is the Hessian at *complex* parameters once some ηλ > 1. For a holomorphic
loss that Hessian is complex **symmetric** (``H = Hᵀ``, not Hermitian), so

- `dense_funm` diagonalises it with ``eig`` (``H = V Λ V⁻¹``), or with ``eigh`` when
  the matrix happens to be exactly real (exact and several times cheaper);
- `lanczos_funm` is the matrix-free version, ``‖v‖ Q f(T) e₁`` from a Lanczos
  tridiagonalisation built from matrix-vector products (HVPs) only. For a complex
  symmetric operator the Lanczos recurrence must use the *bilinear* form ``xᵀy``
  (no conjugation): that is the form in which a complex-symmetric A is self-adjoint,
  so the three-term recurrence holds and ``T = QᵀAQ`` is complex-symmetric
  tridiagonal. The Hermitian Lanczos of matfree (and every library Lanczos) uses
  ``xᴴy``, in which a complex-symmetric A is *not* self-adjoint, and would return a
  wrong T. Real inputs reduce to the ordinary symmetric Lanczos.

The logarithm's branch cut is moved off the negative real axis (`shifted_log`): for
ηλ > 1 the argument ``1 − ηλ`` is real negative up to rounding, and the principal
branch would flip between ``±iπ`` with the sign of a rounding error.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Inexact

__all__ = [
    "shifted_log",
    "log1m_over_x",
    "dense_funm",
    "complex_symmetric_lanczos",
    "lanczos_funm",
]

ScalarFunction = Callable[[Array], Array]
Matvec = Callable[[Array], Array]


def _complex_dtype(dtype) -> jnp.dtype:
    return jnp.result_type(dtype, jnp.complex64)


def shifted_log(z: Inexact[Array, "..."]) -> Inexact[Array, "..."]:
    """``log z`` with the branch cut along the negative *imaginary* axis.

    ``log z = log|z| + i arg z`` with ``arg z ∈ (−π/2, 3π/2]``: it agrees with the
    principal logarithm except in the third quadrant, and the negative real axis
    (where ``1 − ηλ`` lies for ηλ > 1) is taken continuously to ``+iπ`` from both
    sides. ``|z|`` is clamped below at the dtype's epsilon, so ``log 0`` is
    ``log ε`` rather than −∞ (an eigenvalue exactly at ηλ = 1, which GD removes in
    one step, then decays like ``ε^τ`` instead of producing ``∞ · 0``).
    """
    z = jnp.asarray(z, _complex_dtype(jnp.result_type(z)))
    eps = jnp.finfo(z.dtype).eps
    angle = jnp.angle(z)
    angle = jnp.where(angle <= -0.5 * math.pi, angle + 2 * math.pi, angle)
    return jax.lax.complex(jnp.log(jnp.maximum(jnp.abs(z), eps)), angle)


def log1m_over_x(x: Inexact[Array, "..."]) -> Inexact[Array, "..."]:
    """``φ(x) = log(1 − x) / x`` (complex), with ``φ(0) = −1`` and the log of `shifted_log`.

    For ``Re x < 1`` the argument ``1 − x`` is in the right half-plane, where the
    shifted and principal branches agree, and ``log1p(−x)`` keeps full relative
    accuracy as x → 0. For real x > 1, ``φ(x) = (log(x − 1) + iπ) / x``.
    """
    x = jnp.asarray(x, _complex_dtype(jnp.result_type(x)))
    zero = x == 0
    safe = jnp.where(zero, 1.0, x)
    log = jnp.where(jnp.real(safe) < 1, jnp.log1p(-safe), shifted_log(1 - safe))
    return jnp.where(zero, -1.0 + 0.0j, log / safe).astype(x.dtype)


def _apply_eigh(fun: ScalarFunction, matrix: Array, vector: Array) -> Array:
    values, vectors = jnp.linalg.eigh(matrix)
    transformed = fun(values.astype(vector.dtype))
    dtype = jnp.result_type(vector, transformed)
    vectors = vectors.astype(dtype)
    return vectors @ (transformed.astype(dtype) * (vectors.T @ vector.astype(dtype)))


def _apply_eig(fun: ScalarFunction, matrix: Array, vector: Array) -> Array:
    values, vectors = jnp.linalg.eig(matrix)
    dtype = vectors.dtype
    coefficients = jnp.linalg.solve(vectors, vector.astype(dtype))
    return vectors @ (fun(values).astype(dtype) * coefficients)


def dense_funm(
    fun: ScalarFunction, matrix: Inexact[Array, "n n"], vector: Inexact[Array, " n"]
) -> Inexact[Array, " n"]:
    """``f(A) v`` for a symmetric (real) or complex-symmetric (``A = Aᵀ``) matrix A.

    A real matrix uses ``eigh``: ``f(A) v = U f(Λ) Uᵀ v``. A complex one uses ``eig``,
    ``f(A) v = V f(Λ) V⁻¹ v`` (``V⁻¹ v`` by a linear solve, which stays accurate for
    repeated eigenvalues where ``V⁻¹ = D⁻¹Vᵀ`` would not); when its imaginary part is
    exactly zero, ``eigh`` of the real part is used instead (chosen with ``lax.cond``).
    ``fun`` receives the eigenvalues in ``vector``'s dtype, so pass a complex vector
    to let ``fun`` take complex values (e.g. `log1m_over_x` beyond x = 1).
    """
    if not jnp.iscomplexobj(matrix):
        return _apply_eigh(fun, matrix, vector)
    dtype = jnp.result_type(matrix, vector)
    vector = vector.astype(dtype)
    return jax.lax.cond(
        jnp.all(jnp.imag(matrix) == 0),
        lambda: _apply_eigh(fun, jnp.real(matrix), vector).astype(dtype),
        lambda: _apply_eig(fun, matrix, vector).astype(dtype),
    )


def _bilinear_norm(x: Array) -> Array:
    """``√(xᵀx)`` without conjugation (the norm a complex-symmetric Lanczos needs)."""
    return jnp.sqrt(jnp.dot(x, x))


def complex_symmetric_lanczos(
    matvec: Matvec, vector: Inexact[Array, " n"], num_matvecs: int
) -> tuple[Inexact[Array, "m n"], Inexact[Array, " m"], Inexact[Array, " m-1"], Array]:
    """Lanczos tridiagonalisation ``AQ ≈ QT`` of a (complex-)symmetric operator.

    Inner products are the bilinear ``xᵀy`` (see the module docstring), with full
    reorthogonalisation in that form (classical Gram–Schmidt, twice) at every step,
    so ``QᵀQ = I`` to rounding error and no spurious Ritz copies appear. If the
    Krylov space is exhausted (an invariant subspace: the residual is at rounding
    level), the recurrence restarts from a fixed quasi-random vector orthogonal to the
    basis with a zero coupling, so T is block-diagonal and the result stays exact.

    A *serious* breakdown (``rᵀr ≈ 0`` with ``r ≠ 0``, possible only for complex
    vectors) is not handled; it does not arise when the imaginary parts are small
    compared with the real parts, as along principal-flow trajectories.

    Args:
        matvec: ``x ↦ A x`` (e.g. a Hessian-vector product).
        vector: the start vector (not necessarily normalised).
        num_matvecs: the Krylov depth m (one matvec each); at most ``n``.

    Returns:
        ``(basis, diagonal, off_diagonal, length)``: the rows of ``basis`` (m, n) are the
        Lanczos vectors, T has the given diagonals, and ``length = √(vᵀv)``.
    """
    n = vector.shape[0]
    depth = min(int(num_matvecs), n)
    if depth < 1:
        raise ValueError(f"num_matvecs must be a positive integer, got {num_matvecs!r}")
    dtype = vector.dtype
    eps = jnp.finfo(dtype).eps
    length = _bilinear_norm(vector)
    length = jnp.where(length == 0, jnp.ones_like(length), length)

    def orthogonalise(basis, x):
        for _ in range(2):
            x = x - basis.T @ (basis @ x)
        return x

    def restart(basis, j):
        # A fixed, generic (quasi-random) vector: cheaper to compile than a PRNG draw.
        fresh = jnp.cos(2.399963 * jnp.arange(1, n + 1) + 1.3 * j).astype(dtype)
        fresh = orthogonalise(basis, fresh)
        return fresh / _bilinear_norm(fresh)

    def step(carry, j):
        basis, previous_beta = carry
        q, q_previous = basis[j], basis[jnp.maximum(j - 1, 0)]
        image = matvec(q).astype(dtype)
        alpha = jnp.dot(q, image)
        residual = image - alpha * q - previous_beta * q_previous
        residual = orthogonalise(basis, residual)
        beta = _bilinear_norm(residual)
        exhausted = jnp.linalg.norm(residual) <= 10 * eps * jnp.linalg.norm(image)
        q_next = jax.lax.cond(
            exhausted,
            lambda: restart(basis, j),
            lambda: residual / beta,
        )
        beta = jnp.where(exhausted, jnp.zeros_like(beta), beta)
        basis = basis.at[j + 1].set(q_next)
        return (basis, beta), (alpha, beta)

    basis = jnp.zeros((depth + 1, n), dtype).at[0].set(vector / length)
    (basis, _), (diagonal, off_diagonal) = jax.lax.scan(
        step, (basis, jnp.zeros((), dtype)), jnp.arange(depth)
    )
    return basis[:depth], diagonal, off_diagonal[: depth - 1], length


def lanczos_funm(
    fun: ScalarFunction,
    matvec: Matvec,
    vector: Inexact[Array, " n"],
    num_matvecs: int,
    *,
    dtype=None,
) -> Inexact[Array, " n"]:
    """``f(A) v ≈ √(vᵀv) · Qᵀ f(T) e₁`` from `complex_symmetric_lanczos` (matrix-free).

    Exact when ``num_matvecs`` reaches the number of distinct eigenvalues that v
    excites; otherwise the error is that of the best polynomial approximation of
    ``f`` on the spectrum (Gauss quadrature), small when ``f`` is smooth there.
    ``f(T) e₁`` is `dense_funm` of the small tridiagonal matrix. ``dtype`` is the type
    ``fun`` sees (default v's): a complex one lets a real A and v give the complex
    values of f (e.g. `log1m_over_x` beyond 1) with the Krylov basis in real arithmetic.
    """
    basis, diagonal, off_diagonal, length = complex_symmetric_lanczos(matvec, vector, num_matvecs)
    tridiagonal = (
        jnp.diag(diagonal) + jnp.diag(off_diagonal, 1) + jnp.diag(off_diagonal, -1)
    )
    e1 = jnp.zeros(diagonal.shape, dtype or diagonal.dtype).at[0].set(1)
    coefficients = dense_funm(fun, tridiagonal, e1)
    return length * (basis.T.astype(coefficients.dtype) @ coefficients)
