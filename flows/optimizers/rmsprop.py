"""RMSProp and scalar RMSProp as preconditioned GD.

Discrete (step k, gradient g_k):

    ν_k = β₂ ν_{k−1} + (1 − β₂) g_k ⊙ g_k,    w_{k+1} = w_k − η g_k / (√ν̂_k + ε),

with ν̂_k = ν_k / (1 − β₂^{k+1}) under bias correction. Solving the recursion for
the increment gives ``ν_k − ν_{k−1} = ((1 − β₂)/β₂)(g_k ⊙ g_k − ν_k)``, so the
continuous state ν(τ) matching ν_k obeys

    dν/dτ = ((1 − β₂)/β₂) (E[g ⊙ g] − ν)

(Cohen, Damian et al. 2025, Sec. on RMSProp). Scalar RMSProp uses ‖g‖² instead of
g ⊙ g. The flow starts from ν_0 (after the first gradient), see `initial_flow_state`.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..linalg.hvp import gradient
from .base import UpdateRule

__all__ = ["RMSProp", "ScalarRMSProp"]


class RMSProp(UpdateRule):
    """Elementwise RMSProp: ``P⁻¹ = η / (√ν̂ + ε)``.

    Attributes:
        lr: η.
        beta2: the second-moment decay β₂.
        eps: ε added to √ν̂.
        bias_correction: divide ν by ``1 − β₂^{k+1}``.
        initial_nu: ν_{−1}; ``None`` means ν_{−1} = g_0 ⊙ g_0, so ν_0 = g_0 ⊙ g_0
            (no warm-up transient), else a constant (0 with bias correction is Adam's).
    """

    lr: Float[Array, ""]
    beta2: float = eqx.field(default=0.99)
    eps: float = eqx.field(default=0.0)
    bias_correction: bool = eqx.field(static=True, default=False)
    initial_nu: float | None = eqx.field(static=True, default=None)

    def _second_moment(self, grad_sq):
        return grad_sq

    def init(self, f, w):
        if self.initial_nu is None:
            return self._second_moment(jnp.real(gradient(f)(w)) ** 2)
        return jnp.full_like(self._second_moment(jnp.real(w)), self.initial_nu)

    def _p_inv(self, nu, count):
        if self.bias_correction:
            nu = nu / (1 - self.beta2**count)
        return self.lr / (jnp.sqrt(nu) + self.eps)

    def update(self, step, state, f, w, g):
        nu = self.beta2 * state + (1 - self.beta2) * self._second_moment(g * g)
        return self._p_inv(nu, step + 1), nu

    def derivative(self, t, state, f, w, g, grad_sq=None):
        grad_sq = g * g if grad_sq is None else grad_sq
        rate = (1 - self.beta2) / self.beta2
        dnu = rate * (self._second_moment(grad_sq) - state)
        return self._p_inv(state, t + 1), dnu


class ScalarRMSProp(RMSProp):
    """Scalar RMSProp: ν tracks ‖g‖², ``P⁻¹ = η / (√ν̂ + ε)`` a scalar."""

    def _second_moment(self, grad_sq):
        return jnp.sum(grad_sq)
