"""Two-parameter toy losses from the edge-of-stability literature.

Every toy takes its starting point as keyword arguments, and its loss is a
`jax.tree_util.Partial` of a module-level function (no leaves, a static function), so
problems built twice compare equal under jit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Inexact, Scalar

from flows.problem import Problem
from flows.problems.quadratic import quadratic_from_matrix

__all__ = ["diagonal_quadratic", "scalar_product", "two_layer_scalar", "valley"]


def _scalar(value: float) -> Array:
    return jnp.asarray(value, dtype=jnp.result_type(float))


def diagonal_quadratic(*, theta: tuple[float, float] = (-0.35, -0.2)) -> Problem:
    """``L(θ) = θᵀ diag(1, 0.01) θ``: the ill-conditioned 2-D quadratic of Rosca, Wu, Qin
    and Dherin, "On a continuous time model of gradient descent dynamics and instability
    in deep learning" (TMLR 2023).

    There is no factor ½, so the Hessian is ``diag(2, 0.02)`` (GD is stable for η < 1).
    Parameters: the flat vector ``θ`` (shape ``(2,)``), starting at ``theta``;
    `quadratic_hessian` applies.
    """
    try:
        ok = np.asarray(theta, dtype=np.float64).shape == (2,)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"theta must be 2 numbers, got {theta!r}")
    return quadratic_from_matrix(jnp.diag(jnp.array([2.0, 0.02])), theta, name="diagonal_quadratic")


def _valley_loss(params: dict[str, Inexact[Array, ""]]) -> Scalar:
    x, y = params["x"], params["y"]
    return (1.0 + x * x) * (y * y)


def valley(*, x: float = 1.0, y: float = 0.1) -> Problem:
    """``L(x, y) = (1 + x²) y²`` (Arora, Li and Panigrahi, "Understanding gradient descent
    on the edge of stability in deep learning", ICML 2022).

    The minimizers are the line ``Γ = {y = 0}``, where the sharpness is ``λ_1 = 2(1 + x²)``;
    at the edge of stability GD oscillates across ``y = 0`` while ``x`` drifts to 0.
    Parameters ``{"x", "y"}`` (scalars); ``loss_min = 0``.
    """
    params = {"x": _scalar(x), "y": _scalar(y)}
    return Problem(jax.tree_util.Partial(_valley_loss), params, loss_min=0.0, name="valley")


def _scalar_product_loss(params: dict[str, Inexact[Array, ""]]) -> Scalar:
    r = params["a"] * params["b"] - 1.0
    return 0.5 * (r * r)


def scalar_product(*, a: float = 0.5, b: float = 3.0) -> Problem:
    """``L(a, b) = ½(ab − 1)²``, the scalar two-layer linear network fitting one example
    ``(x, y) = (1, 1)``: the width-1 case of the ``uv`` model of Lewkowycz, Bahri, Dyer,
    Sohl-Dickstein and Gur-Ari, "The large learning rate phase of deep learning: the
    catapult mechanism" (2020).

    The minimizers form the hyperbola ``ab = 1`` with sharpness ``a² + b²``, smallest at the
    balanced points ``|a| = |b| = 1``. The default start is unbalanced. ``loss_min = 0``.
    """
    params = {"a": _scalar(a), "b": _scalar(b)}
    return Problem(
        jax.tree_util.Partial(_scalar_product_loss), params, loss_min=0.0, name="scalar_product"
    )


def _half_squared_residual(u: Inexact[Array, ""]) -> Scalar:
    r = u - 1.0
    return 0.5 * (r * r)


@dataclasses.dataclass(frozen=True)
class _ComposeProduct:
    """``params ↦ z(θ₁ θ₂)``, hashable by ``z`` (a static `Partial` function)."""

    z: Callable[[Array], Scalar]

    def __call__(self, params: dict[str, Inexact[Array, ""]]) -> Scalar:
        return self.z(params["theta1"] * params["theta2"])


def two_layer_scalar(
    z: Callable[[Array], Scalar] | None = None,
    *,
    theta1: float = 1.5,
    theta2: float = 0.2,
    loss_min: float = 0.0,
) -> Problem:
    """``L(θ₁, θ₂) = z(θ₁ θ₂)``: the toy model of Wang and Roberts, "Can stability be
    detrimental? Better generalization through gradient descent instabilities" (2024),
    for studying the rotation of Hessian eigenvectors during instabilities (depth 2).

    Args:
        z: a scalar function of the product ``u = θ₁θ₂`` (holomorphic if the principal flow
            is wanted); default ``z(u) = ½(u − 1)²``.
        theta1, theta2: the starting point.
        loss_min: the minimum of ``z`` (0 for the default).
    """
    z = _half_squared_residual if z is None else z
    params = {"theta1": _scalar(theta1), "theta2": _scalar(theta2)}
    loss = jax.tree_util.Partial(_ComposeProduct(z))
    return Problem(loss, params, loss_min=loss_min, name="two_layer_scalar")
