"""Top-k Hessian eigenpairs: one interface, three solvers.

Every eigensolver is an equinox module called as ``eigensolver(matvec, w, k, init)`` and
returns the k *algebraically* largest eigenpairs (sharpness is the top algebraic
eigenvalue, not the largest in magnitude), values descending, vectors as
columns. ``init`` warm-starts the iterative solvers with the previous vectors;
`top_eigenpairs` then aligns signs with them, so eigenvector tracks are smooth.

- `DenseEigh`: forms H from n HVPs and calls ``eigh``. Exact; small models.
- `Lanczos`: matfree's Lanczos with full reorthogonalisation (``eig.eigh_partial``
  with ``decomp.tridiag_sym``); matrix-free, one HVP per Krylov vector.
- `LOBPCG`: JAX's ``lobpcg_standard``, block method, best warm-started.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.experimental.sparse.linalg import lobpcg_standard
from jaxtyping import Array, Float, Scalar
from matfree import decomp, eig

from .hvp import preconditioned_hvp

__all__ = [
    "Eigenpairs",
    "EigenSolver",
    "DenseEigh",
    "Lanczos",
    "LOBPCG",
    "default_eigensolver",
    "top_eigenpairs",
    "sharpness",
    "align_signs",
]

Matvec = Callable[[Array], Array]


class Eigenpairs(eqx.Module):
    """k eigenpairs: ``values`` descending, ``vectors[:, i]`` the i-th eigenvector."""

    values: Float[Array, " k"]
    vectors: Float[Array, "n k"]


def _top_k(values: Array, vectors: Array, k: int) -> Eigenpairs:
    """The k algebraically largest of an ascending ``eigh`` output, descending."""
    order = jnp.argsort(values)[::-1][:k]
    return Eigenpairs(values[order], vectors[:, order])


def _start_vector(w: Array, init: Array | None) -> Array:
    """A deterministic start vector: the previous eigenvectors plus a fixed
    perturbation, so the Krylov space still reaches new directions."""
    noise = jax.random.normal(jax.random.key(0), w.shape, dtype=jnp.real(w).dtype)
    noise = noise / jnp.linalg.norm(noise)
    if init is None:
        return noise.astype(w.dtype)
    warm = jnp.sum(init, axis=1)
    return (warm / jnp.linalg.norm(warm) + 1e-2 * noise).astype(w.dtype)


class EigenSolver(eqx.Module):
    """Interface: ``eigensolver(matvec, w, k, init=None) -> Eigenpairs``."""

    @abc.abstractmethod
    def __call__(
        self, matvec: Matvec, w: Float[Array, " n"], k: int, init: Array | None = None
    ) -> Eigenpairs:
        raise NotImplementedError


class DenseEigh(EigenSolver):
    """Form the operator densely from n matvecs and diagonalise it exactly."""

    def __call__(self, matvec, w, k, init=None):
        eye = jnp.eye(w.shape[0], dtype=w.dtype)
        matrix = jax.vmap(matvec)(eye).T
        values, vectors = jnp.linalg.eigh(0.5 * (matrix + matrix.T))
        return _top_k(values, vectors, k)


class Lanczos(EigenSolver):
    """Lanczos with full reorthogonalisation, ``num_matvecs`` Krylov vectors.

    Accurate for the top few eigenvalues once ``num_matvecs`` is a few times k;
    cost is ``num_matvecs`` HVPs plus an O(n · num_matvecs²) reorthogonalisation.
    """

    num_matvecs: int = eqx.field(static=True, default=40)

    def __call__(self, matvec, w, k, init=None):
        depth = min(max(self.num_matvecs, 2 * k + 2), w.shape[0])
        tridiag = decomp.tridiag_sym(depth, reortho="full", custom_vjp=False)
        values, rows = eig.eigh_partial(tridiag)(matvec, _start_vector(w, init))
        return _top_k(values, rows.T, k)


class LOBPCG(EigenSolver):
    """JAX's ``lobpcg_standard`` (needs ``5k < n``); warm-start with ``init``."""

    max_iterations: int = eqx.field(static=True, default=100)

    def __call__(self, matvec, w, k, init=None):
        n = w.shape[0]
        if 5 * k >= n:
            raise ValueError(f"LOBPCG needs 5k < n, got k={k}, n={n}; use DenseEigh")
        if init is None:
            init = jax.random.normal(jax.random.key(0), (n, k), dtype=w.dtype)
        values, vectors, _ = lobpcg_standard(
            jax.vmap(matvec, in_axes=1, out_axes=1), init, m=self.max_iterations
        )
        return _top_k(values, vectors, k)


def default_eigensolver(num_params: int) -> EigenSolver:
    """Dense below 1500 parameters, Lanczos above."""
    return DenseEigh() if num_params <= 1500 else Lanczos()


def align_signs(vectors: Float[Array, "n k"], reference: Float[Array, "n k"]) -> Array:
    """Flip each column of ``vectors`` to have a non-negative overlap with ``reference``."""
    overlap = jnp.real(jnp.sum(vectors * reference, axis=0))
    return vectors * jnp.where(overlap < 0, -1, 1).astype(vectors.dtype)


def top_eigenpairs(
    f: Callable[[Array], Scalar],
    w: Float[Array, " n"],
    k: int = 1,
    *,
    eigensolver: EigenSolver | None = None,
    init: Float[Array, "n k"] | None = None,
    p_inv: Float[Array, " n"] | float | None = None,
) -> Eigenpairs:
    """The top-k eigenpairs of the Hessian of ``f`` at ``w``.

    With ``p_inv = p`` (the inverse preconditioner P⁻¹, a scalar or a diagonal), the
    operator is ``p^{1/2} H p^{1/2}``, whose eigenvalues are those of ``P⁻¹H`` (the
    effective sharpness of preconditioned GD); its eigenvectors ``v`` give the
    generalized eigenvectors ``p^{1/2} v`` of (H, P). ``eigensolver`` defaults to
    `default_eigensolver` (dense below 1500 parameters, Lanczos above).
    """
    if eigensolver is None:
        eigensolver = default_eigensolver(w.shape[0])
    pairs = eigensolver(preconditioned_hvp(f, w, p_inv), w, k, init)
    if init is not None:
        # init may carry extra (guard) columns beyond the k returned
        pairs = Eigenpairs(pairs.values, align_signs(pairs.vectors, init[:, :k]))
    return pairs


def sharpness(
    f: Callable[[Array], Scalar],
    w: Float[Array, " n"],
    *,
    eigensolver: EigenSolver | None = None,
) -> Scalar:
    """``S(w) = λ_1(∇²f(w))``, the top algebraic Hessian eigenvalue."""
    return top_eigenpairs(f, w, 1, eigensolver=eigensolver).values[0]
