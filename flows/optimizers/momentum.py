"""Heavy-ball and Nesterov momentum (optax's ``sgd(lr, momentum=β[, nesterov=True])``).

Discrete (step k, gradient g_k, m_{−1} = 0):

    m_k = β m_{k−1} + g_k,
    w_{k+1} = w_k − η m_k                  (heavy ball),
    w_{k+1} = w_k − η (g_k + β m_k)        (Nesterov, optax's convention).

The stable flow, in step time τ (DESIGN, "Time convention"), carries m in its state:

    dw/dτ = −η m   (Nesterov: −η (g + β m)),
    dm/dτ = −log(β) (g/(1 − β) − m),         m(0) = m_{−½},

where the flow's m(τ) models m_{τ−½}: step k spans τ ∈ [k, k+1] and uses m_k, which
is then the momentum at the middle of the interval, m(k + ½). The derivation is
RMSProp's for ν (`flows.optimizers.rmsprop`) with the forcing x = g/(1 − β):

- rate −log β: with g frozen, ``m_k − x = β (m_{k−1} − x)``, and this recursion is the
  exact time-1 map of the ODE only at that rate; a frozen-forcing run of the flow then
  satisfies m(τ) = m_{τ−½} exactly, ``m(τ) = x (1 − β^{τ+½})`` from m_{−1} = 0.
- half a step of lag: with g drifting (by O(η) a step), the ODE's m lags x by
  ``1/(−log β) = 1/(1 − β) − ½ − (1 − β)/12 + …`` steps on average and the discrete
  m_k lags x_k by ``β/(1 − β) = 1/(1 − β) − 1``: m(τ) matches m_{τ−½} (to
  (1 − β)/12 of a step). So over [k, k+1] the flow moves by ``−η m(k + ½) ≈ −η m_k``
  (midpoint rule), as the discrete step does.
- initial state m(0) = m_{−½} = x₀ + β^{½} (m_{−1} − x₀), x₀ = g₀/(1 − β): the exact
  half step of the recursion from m_{−1} = 0, i.e. ``g₀/(1 + √β)``. Starting from
  m_0 = g₀ instead puts every warm-up step half a step ahead, a displacement error of
  about ``½ η g₀/(1 − β)``; from m_{−½} the warm-up displacement matches the
  discrete one to a factor ``√β (1 − β)/(−β log β) = 1 + O((1 − β)²)``.

With m aligned, what is left between the stable flow and the discrete run is first
order: at fixed physical time ηk the error is O(η), as gradient flow's against GD
(halving η halves it; tests/optimizers/test_momentum_adam.py). Its coefficient is
small: it comes from the lag mismatch (1 − β)/12 of a step (an exponential kernel
against a geometric one, the one thing the rate −log β cannot match), which puts the
flow's m off by about ġ/12 at every step (Nesterov adds gradient flow's own O(η) in its
−η g term). The rate 2(1 − β)/(1 + β) (the bilinear image of β) matches the lag
exactly instead, and with m(0) = g₀/(1 + β) the total warm-up displacement too; it
gives up the exact frozen-forcing time-1 map, and measured, it makes the heavy-ball
flow second order. It is not used, to keep the alignment of every moment the same
as RMSProp's. On the slow manifold m ≈ g/(1 − β), both flows are gradient flow at
the effective rate η/(1 − β).

``P⁻¹`` (`p_inv`, for effective-sharpness tracking) is η, but the step is not
``−P⁻¹ g``: on a quadratic the iteration on an eigenvalue λ is the linear recursion
``w_{k+1} = (1 + β − ηλ) w_k − β w_{k−1}`` (heavy ball), stable iff
``0 < ηλ < 2(1 + β)``; for Nesterov ``0 < ηλ < 2(1 + β)/(1 + 2β)``. So the edge of
stability of ``λ_max(P⁻¹H) = ηS`` is at ``2(1 + β)`` (heavy ball), not 2.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..linalg.hvp import gradient
from .base import UpdateRule, half_step

__all__ = ["Momentum", "Nesterov"]


class Momentum(UpdateRule):
    """Heavy-ball momentum ``m_k = β m_{k−1} + g_k``, ``w_{k+1} = w_k − η m_k``.

    Stable on a quadratic iff ``ηλ_i < 2(1 + β)``; ``P⁻¹ = η`` (see the module).

    Attributes:
        lr: η.
        beta: the momentum β (optax's ``momentum``); the flow needs 0 < β < 1.
    """

    lr: Float[Array, ""]
    beta: float = eqx.field(default=0.9)

    preconditioned: ClassVar[bool] = False
    nesterov: ClassVar[bool] = False
    affine_edge_condition: ClassVar[bool] = True

    def check_continuous(self):
        # dm/dτ = −log(β)(…): β = 0 (plain GD) relaxes infinitely fast.
        if isinstance(self.beta, (int, float)) and not 0 < self.beta < 1:
            raise ValueError(
                f"beta must be in (0, 1) for a flow (its momentum relaxes at rate −log β), "
                f"got {self.beta!r}"
            )

    @property
    def stability_threshold(self):
        """``2(1 + β)`` (heavy ball), ``2(1 + β)/(1 + 2β)`` (Nesterov): see the module."""
        if self.nesterov:
            return 2 * (1 + self.beta) / (1 + 2 * self.beta)
        return 2 * (1 + self.beta)

    def init(self, f, w):
        return jnp.zeros_like(jnp.real(w))

    def update(self, step, state, f, w, g):
        """``P⁻¹ = η`` and m_k (the step itself is `step`'s)."""
        return self.lr, g + self.beta * state

    def _direction(self, m, g):
        return g + self.beta * m if self.nesterov else m

    def step(self, step, state, f, w, g):
        m = g + self.beta * state
        return -self.lr * self._direction(m, g), m

    def derivative(self, t, state, f, w, g, grad_sq=None):
        # m(τ) models m_{τ−½}: the rate whose time-1 map is the recursion (module docstring).
        dm = -jnp.log(self.beta) * (g / (1 - self.beta) - state)
        return self.lr, dm

    def velocity(self, t, state, f, w, g, grad_sq=None):
        return -self.lr * self._direction(state, g), self.derivative(t, state, f, w, g)[1]

    def initial_flow_state(self, f, w, state):
        """m(k) = m_{k−½} = x_k + β^{½} (m_{k−1} − x_k), x_k = g_k/(1 − β): g₀/(1 + √β) at
        the start (m_{−1} = 0)."""
        forcing = jnp.real(gradient(f)(w)) / (1 - self.beta)
        return half_step(forcing, state, self.beta)

    def state_diagnostics(self, state):
        """``{"momentum": m}``: m_k in a discrete run; m(k) ≈ m_{k−½} on a flow."""
        return {"momentum": state}

    def state_from_diagnostics(self, diagnostics):
        return diagnostics["momentum"]


class Nesterov(Momentum):
    """Nesterov momentum as optax: ``m_k = β m_{k−1} + g_k``, ``w_{k+1} = w_k − η (g_k + β m_k)``.

    Stable on a quadratic iff ``ηλ_i < 2(1 + β)/(1 + 2β)``; ``P⁻¹ = η``.
    """

    nesterov: ClassVar[bool] = True
    affine_edge_condition: ClassVar[bool] = False  # ẇ = −η(E[g] + βm) depends on Σ
