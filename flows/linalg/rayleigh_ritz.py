"""Warm-started block Rayleigh–Ritz: cheap top-k eigenpairs along a trajectory.

Along a flow the top eigenvectors move little from one evaluation to the next, so
the previous vectors V are an excellent start. Each iteration orthonormalises the
residual block ``R = AV − VΘ`` against V and takes the top Ritz pairs of A on
``span[V, R]`` (a block Davidson / LOBPCG iteration without the momentum block).
From a warm start one or two iterations reach the residual tolerance; every
iteration costs one block of matrix-vector products, and ``AV`` is carried along
(``AV = [AV, AR] Y``), so nothing is recomputed. Pure JAX with a fixed block size:
jit-, vmap- and scan-safe.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .eigen import Eigenpairs, EigenSolver, Matvec
from .products import map_columns, tall_times_small

__all__ = ["BlockRayleighRitz", "block_rayleigh_ritz"]


def _orthonormalize(block: Array, against: Array | None = None) -> Array:
    """Orthonormal columns spanning ``block`` minus its part in span(against).

    Gram-matrix orthonormalisation done twice (CholeskyQR2, with ``eigh`` so that a
    rank-deficient block is safe): two small k×k eigendecompositions and a few n×k
    products, much faster than a Householder QR of a tall matrix. Columns the block
    does not really span come out as zero and are ignored by `_ritz`.
    """
    dtype = block.dtype
    eps = np.finfo(dtype).eps
    for _ in range(2):
        if against is not None:
            block = block - tall_times_small(against, against.T @ block)
        gram = block.T @ block
        values, vectors = jnp.linalg.eigh(0.5 * (gram + gram.T))
        floor = jnp.maximum(jnp.max(values), np.finfo(dtype).tiny) * eps * block.shape[1] * 10
        scale = jnp.where(values > floor, 1 / jnp.sqrt(jnp.maximum(values, floor)), 0.0)
        block = tall_times_small(block, vectors) * scale
    return block


def _ritz(basis: Array, image: Array, m: int) -> tuple[Array, Array, Array]:
    """The top m Ritz pairs of A on span(basis), given ``image = A basis``; zero columns
    of the basis (see `_orthonormalize`) are pushed to the bottom of the spectrum."""
    small = basis.T @ image
    small = 0.5 * (small + small.T)
    empty = 1.0 - jnp.sum(basis * basis, axis=0)
    penalty = 10 * (jnp.max(jnp.abs(small)) + 1.0) * jnp.clip(empty, 0.0, 1.0)
    values, coefficients = jnp.linalg.eigh(small - jnp.diag(penalty))
    order = jnp.argsort(values)[::-1][:m]
    coefficients = coefficients[:, order]
    return (values[order], tall_times_small(basis, coefficients),
            tall_times_small(image, coefficients))


def block_rayleigh_ritz(
    matvec: Matvec,
    init: Float[Array, "n m"],
    *,
    num_converged: int | None = None,
    max_iterations: int = 20,
    rtol: float | None = None,
) -> tuple[Float[Array, " m"], Float[Array, "n m"], Float[Array, "n m"], Array]:
    """Refine the block ``init`` towards the top-m eigenpairs of the symmetric A.

    Args:
        matvec: ``v ↦ Av``.
        init: the warm start, m columns (need not be orthonormal).
        num_converged: stop once the top this many residuals are below tolerance
            (all m by default; extra columns act as a guard that speeds convergence).
        max_iterations: expansion iterations at most (0: Rayleigh–Ritz in span(init) only).
        rtol: residual tolerance ``‖Av − θv‖ ≤ rtol · max|θ|`` (default √eps of the dtype).

    Returns:
        (values descending, vectors (n, m) orthonormal, A·vectors, iterations used).
    """
    n, m = init.shape
    k = m if num_converged is None else num_converged
    dtype = init.dtype
    rtol = float(np.sqrt(np.finfo(dtype).eps)) if rtol is None else rtol
    if 2 * m > n:
        # No room for an expansion block: the whole space is small, solve it exactly.
        eye = jnp.eye(n, dtype=dtype)
        values, vectors, image = _ritz(eye, map_columns(matvec, eye), m)
        return values, vectors, image, jnp.asarray(0)

    basis = _orthonormalize(init)
    values, vectors, image = _ritz(basis, map_columns(matvec, basis), m)

    def residual(values, vectors, image):
        norms = jnp.linalg.norm(image - vectors * values, axis=0)[:k]
        return jnp.max(norms) / jnp.maximum(jnp.max(jnp.abs(values)), jnp.finfo(dtype).tiny)

    def body(carry):
        values, vectors, image, _, iteration = carry
        expansion = _orthonormalize(image - vectors * values, vectors)
        basis = jnp.concatenate([vectors, expansion], axis=1)
        images = jnp.concatenate([image, map_columns(matvec, expansion)], axis=1)
        values, vectors, image = _ritz(basis, images, m)
        return values, vectors, image, residual(values, vectors, image), iteration + 1

    def not_done(carry):
        return (carry[4] < max_iterations) & (carry[3] > rtol)

    start = (values, vectors, image, residual(values, vectors, image), jnp.asarray(0))
    if max_iterations <= 4:
        # A few iterations: a straight-line program, so that the work shared with other
        # computations at the same point (the forward pass) is done once; with rtol > 0
        # each iteration is a `lax.cond` on the residual (skipped when converged).
        carry = start
        for _ in range(max_iterations):
            if rtol == 0:
                carry = body(carry)
            else:
                carry = jax.lax.cond(not_done(carry), body, lambda c: c, carry)
        values, vectors, image, _, iterations = carry
    else:
        values, vectors, image, _, iterations = jax.lax.while_loop(not_done, body, start)
    return values, vectors, image, iterations


class BlockRayleighRitz(EigenSolver):
    """Warm-started block Rayleigh–Ritz (see `block_rayleigh_ritz`).

    Meant for tracking: pass the previous eigenvectors as ``init``; they may have
    more columns than k (guard vectors). Without ``init`` it starts from a fixed
    random block and needs many more iterations: use `DenseEigh` or `Lanczos` then.
    """

    max_iterations: int = eqx.field(static=True, default=50)
    rtol: float | None = eqx.field(static=True, default=None)

    def __call__(self, matvec, w, k, init=None):
        if init is None:
            init = jax.random.normal(jax.random.key(0), (w.shape[0], k), dtype=w.dtype)
        values, vectors, _, _ = block_rayleigh_ritz(
            matvec,
            init.astype(w.dtype),
            num_converged=k,
            max_iterations=self.max_iterations,
            rtol=self.rtol,
        )
        return Eigenpairs(values[:k], vectors[:, :k])
