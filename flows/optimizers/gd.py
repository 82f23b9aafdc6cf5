"""Stateless rules: GD, normalized GD, GD on √L, and DAL-p."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..linalg.hvp import hvp
from .base import UpdateRule

__all__ = ["GD", "NormalizedGD", "SqrtGD", "DAL"]

_TINY = 1e-30


class _Stateless(UpdateRule):
    """A rule whose ``P⁻¹`` depends only on the current point."""

    def step_size(self, f, w, g) -> Float[Array, ""]:
        raise NotImplementedError

    def init(self, f, w):
        return None

    def update(self, step, state, f, w, g):
        return self.step_size(f, w, g), None

    def derivative(self, t, state, f, w, g, grad_sq=None):
        return self.step_size(f, w, g), None


class GD(_Stateless):
    """Gradient descent ``w_{k+1} = w_k − η g_k``; stable on a quadratic iff ηλ_i < 2."""

    lr: Float[Array, ""]

    def step_size(self, f, w, g):
        return self.lr


class NormalizedGD(_Stateless):
    """Normalized GD ``w_{k+1} = w_k − η g_k / ‖g_k‖`` (Arora, Li, Panigrahi 2022)."""

    lr: Float[Array, ""]

    def step_size(self, f, w, g):
        return self.lr / jnp.maximum(jnp.linalg.norm(g), _TINY)


class SqrtGD(_Stateless):
    """GD on √(L − L_min): ``w_{k+1} = w_k − η g_k / (2√(L − L_min))`` (Arora et al. 2022)."""

    lr: Float[Array, ""]
    loss_min: float = eqx.field(default=0.0)

    def step_size(self, f, w, g):
        gap = jnp.maximum(jnp.real(f(w)) - self.loss_min, _TINY)
        return self.lr / (2 * jnp.sqrt(gap))


class DAL(_Stateless):
    """Drift-adjusted learning rate DAL-p (Rosca et al. 2023).

    ``h = clip(2 / (‖H g‖ / ‖g‖)^p, 0, h_max)`` then a GD step of size h. Here the
    learning rate ``lr`` is the cap ``h_max``. p = 1 is DAL; p < 1 takes larger
    steps at the price of stability.
    """

    lr: Float[Array, ""]
    p: float = eqx.field(default=1.0)

    def step_size(self, f, w, g):
        g_norm = jnp.maximum(jnp.linalg.norm(g), _TINY)
        curvature = jnp.linalg.norm(hvp(f, w, g)) / g_norm
        return jnp.clip(2.0 / jnp.maximum(curvature, _TINY) ** self.p, 0.0, self.lr)
