"""Quadratic problems ``L(w) = ½ wᵀ H w``, with the Hessian ``H`` kept as a pytree leaf.

On a quadratic every flow in the library has a closed form (for example, the
principal flow equals GD at every integer step, ``w_k = (I − ηH)^k w_0``; Rosca, Wu,
Qin and Dherin, "On a continuous time model of gradient descent dynamics and
instability in deep learning", TMLR 2023), which makes these the first correctness tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Inexact, Scalar

from flows.problem import Problem
from flows.problems.data import check_size

__all__ = ["QuadraticLoss", "quadratic", "quadratic_from_matrix", "quadratic_hessian"]


def _float_dtype():
    return jnp.result_type(float)


class QuadraticLoss(eqx.Module):
    """The loss ``L(w) = ½ wᵀ H w`` of a flat parameter vector ``w``.

    ``H`` is a pytree leaf (traced under jit, not a baked-in constant) and is exposed as
    ``hessian``. The product is ``w · (H w)`` without conjugation, so ``L`` is holomorphic
    and can be evaluated at complex ``w``.
    """

    hessian: Float[Array, "n n"]

    def __call__(self, w: Inexact[Array, " n"]) -> Scalar:
        return 0.5 * jnp.dot(w, jnp.dot(self.hessian, w))


def quadratic_from_matrix(
    H: Float[ArrayLike, "n n"],
    w0: Float[ArrayLike, " n"] | None = None,
    *,
    name: str = "quadratic",
) -> Problem:
    """The quadratic ``L(w) = ½ wᵀ H w`` for a symmetric matrix ``H``.

    Args:
        H: a symmetric ``(n, n)`` matrix (it is symmetrized as ``(H + Hᵀ)/2`` after the check).
        w0: the initial point; by default the vector of ones.
        name: label of the problem.

    Returns:
        A `Problem` whose parameters are the flat vector ``w`` and whose loss is a
        `QuadraticLoss`; `quadratic_hessian` returns ``H``. ``loss_min`` is 0, the minimum
        when ``H`` is positive semidefinite (an indefinite quadratic is unbounded below).
    """
    H_np = np.asarray(H)
    if H_np.ndim != 2 or H_np.shape[0] != H_np.shape[1]:
        raise ValueError(f"H must be a square matrix, got shape {H_np.shape}")
    scale = max(float(np.max(np.abs(H_np))), 1.0) if H_np.size else 1.0
    if not np.allclose(H_np, H_np.T, rtol=0.0, atol=1e-6 * scale):
        raise ValueError("H must be symmetric")
    dtype = _float_dtype()
    H_arr = jnp.asarray(H_np, dtype=dtype)
    H_arr = 0.5 * (H_arr + H_arr.T)
    n = H_arr.shape[0]
    if w0 is None:
        w0_arr = jnp.ones((n,), dtype=dtype)
    else:
        try:
            w0_arr = jnp.asarray(w0, dtype=dtype)
        except (TypeError, ValueError):
            raise ValueError(f"w0 must be a vector of numbers, got {w0!r}") from None
        if w0_arr.shape != (n,):
            raise ValueError(f"w0 must have shape ({n},), got {w0_arr.shape}")
    return Problem(loss=QuadraticLoss(H_arr), params0=w0_arr, loss_min=0.0, name=name)


def quadratic(
    eigenvalues: Sequence[float] | Float[ArrayLike, " n"],
    w0: Float[ArrayLike, " n"] | None = None,
    *,
    seed: int = 0,
    rotate: bool = True,
) -> Problem:
    """The quadratic ``L(w) = ½ wᵀ H w`` with ``H = Q diag(eigenvalues) Qᵀ``.

    Args:
        eigenvalues: the spectrum of ``H`` (any order; negative values give saddles).
        w0: the initial point; by default the vector of ones.
        seed: seeds the random orthogonal ``Q`` (Haar-distributed, from a QR factorization
            of a Gaussian matrix drawn with ``jax.random.key(seed)``).
        rotate: if False, ``Q = I`` and ``H`` is diagonal.
    """
    seed = check_size(seed, "seed", minimum=0)
    try:
        lam = np.asarray(eigenvalues, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"eigenvalues must be a list of numbers, got {eigenvalues!r}") from None
    if lam.ndim != 1 or lam.size == 0:
        raise ValueError(f"eigenvalues must be a non-empty 1-D sequence, got shape {lam.shape}")
    n = lam.size
    if rotate:
        gauss = np.asarray(jax.random.normal(jax.random.key(seed), (n, n)), dtype=np.float64)
        Q, R = np.linalg.qr(gauss)
        Q = Q * np.where(np.diag(R) < 0, -1.0, 1.0)
    else:
        Q = np.eye(n)
    H = (Q * lam) @ Q.T
    return quadratic_from_matrix(0.5 * (H + H.T), w0, name="quadratic")


def quadratic_hessian(problem: Problem) -> Float[Array, "n n"]:
    """The matrix ``H`` of a problem built by `quadratic` or `quadratic_from_matrix`."""
    if not isinstance(problem.loss, QuadraticLoss):
        raise TypeError(f"problem {problem.name!r} is not a quadratic built by flows.problems")
    return problem.loss.hessian
