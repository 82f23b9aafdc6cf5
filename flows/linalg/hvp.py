"""Hessian-vector products: the one primitive every flow and diagnostic uses.

`hvp` is forward-over-reverse, ``jvp(grad L)``: one gradient's cost times a small
constant, never forming H. The third-derivative term of the central flow,
``∇_w (uᵀ H(w) v)``, is the gradient of that directional HVP. Complex parameters
(the principal flow) are handled by holomorphic differentiation and the bilinear
(not sesquilinear) product, since the Hessian is then complex *symmetric*.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Scalar

__all__ = [
    "gradient",
    "hvp",
    "preconditioned_hvp",
    "hessian",
    "hessian_quadratic_form_grad",
    "hessian_quadratic_form_pullback",
    "loss_and_gradient",
]

Loss = Callable[[Array], Scalar]


def gradient(f: Loss) -> Callable[[Array], Array]:
    """``∇f`` as a function; holomorphic when called at complex parameters."""

    def grad_f(w):
        return jax.grad(f, holomorphic=jnp.iscomplexobj(w))(w)

    return grad_f


def loss_and_gradient(f: Loss, w: Array) -> tuple[Scalar, Array]:
    return jax.value_and_grad(f, holomorphic=jnp.iscomplexobj(w))(w)


def hvp(f: Loss, w: Float[Array, " n"], v: Float[Array, " n"]) -> Float[Array, " n"]:
    """``H(w) v`` by forward-over-reverse differentiation."""
    return jax.jvp(gradient(f), (w,), (v.astype(w.dtype),))[1]


def preconditioned_hvp(
    f: Loss,
    w: Float[Array, " n"],
    p_inv: Float[Array, " n"] | float | None = None,
) -> Callable[[Array], Array]:
    """``v ↦ p^{1/2} H p^{1/2} v`` for ``p = p_inv``, the inverse preconditioner P⁻¹ (a
    scalar or a diagonal; ``v ↦ Hv`` for None): the symmetric operator whose eigenvalues
    are those of ``P⁻¹H``."""
    if p_inv is None:
        return lambda v: hvp(f, w, v)
    root = jnp.sqrt(p_inv)
    return lambda v: root * hvp(f, w, root * v)


def hessian(f: Loss, w: Float[Array, " n"]) -> Float[Array, "n n"]:
    """The dense Hessian, built column by column from `hvp` (small models only)."""
    eye = jnp.eye(w.shape[0], dtype=w.dtype)
    columns = jax.vmap(lambda v: hvp(f, w, v))(eye)
    return 0.5 * (columns + columns.T)


def hessian_quadratic_form_grad(
    f: Loss, w: Float[Array, " n"], u: Float[Array, " n"], v: Float[Array, " n"]
) -> Float[Array, " n"]:
    """``∇_w (uᵀ H(w) v)``: the third derivative of ``f`` contracted with u and v.

    For ``u = v`` the top eigenvector, this is ``∇S``, the gradient of the
    sharpness (Cohen, Damian et al. 2025).
    """
    return hessian_quadratic_form_pullback(f, w, v)(u)


def hessian_quadratic_form_pullback(
    f: Loss, w: Float[Array, " n"], v: Float[Array, " n"]
) -> Callable[[Float[Array, " n"]], Float[Array, " n"]]:
    """``u ↦ ∇_w (uᵀ H(w) v)`` for one v and many u: the pullback (vjp) of ``w ↦ H(w)v``,
    whose forward pass is done once and shared by every u. Linear in u, not conjugate-linear,
    as `hvp`'s bilinear product wants for complex parameters."""
    _, pullback = jax.vjp(lambda x: hvp(f, x, v), w)
    return lambda u: pullback(u.astype(w.dtype))[0]
