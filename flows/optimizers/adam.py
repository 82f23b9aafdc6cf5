"""Adam and AdamW, exactly as optax's ``adam(lr, b1, b2, eps)`` and ``adamw(…, weight_decay)``.

Discrete (step k, gradient g_k, μ_{−1} = ν_{−1} = 0):

    μ_k = β₁ μ_{k−1} + (1 − β₁) g_k,        μ̂_k = μ_k / (1 − β₁^{k+1}),
    ν_k = β₂ ν_{k−1} + (1 − β₂) g_k ⊙ g_k,  ν̂_k = ν_k / (1 − β₂^{k+1}),
    w_{k+1} = w_k − η (μ̂_k / (√ν̂_k + ε) + λ w_k),

with ε outside the root and, for AdamW, the decoupled weight decay λ added to the
update before it is scaled by the learning rate (optax's ``add_decayed_weights``
between ``scale_by_adam`` and ``scale_by_learning_rate``): the decay per step is ηλw,
not P⁻¹λw. Adam is AdamW with λ = 0.

The stable flow, in step time τ, carries both moments in its state:

    dw/dτ = −η (μ̂ / (√ν̂ + ε) + λ w),
    dμ/dτ = −log(β₁) (g − μ),                  μ̂ = μ / (1 − β₁^{τ+½}),
    dν/dτ = −log(β₂) (g ⊙ g − ν),              ν̂ = ν / (1 − β₂^{τ+½}),
    μ(0) = μ_{−½} = (1 − β₁^{½}) g₀,           ν(0) = ν_{−½} = (1 − β₂^{½}) g₀ ⊙ g₀.

Each moment is aligned as RMSProp's ν (`flows.optimizers.rmsprop`) and heavy ball's
m (`flows.optimizers.momentum`): μ(τ) models μ_{τ−½} and ν(τ) models ν_{τ−½}, so step k,
spanning [k, k+1], uses the moments of its midpoint k + ½:

- rates −log β: with g frozen, each recursion is the exact time-1 map of its ODE, and
  from μ(0) = μ_{−½} (the exact half step from μ_{−1} = 0) the flow gives
  ``μ(τ) = g (1 − β₁^{τ+½}) = μ_{τ−½}`` exactly (the same for ν);
- with g drifting, the ODE lags its forcing by ``1/(−log β) = 1/(1 − β) − ½ + O(1 − β)``
  steps, the recursion by ``β/(1 − β)``: half a step apart;
- bias correction with the count τ + ½, that of μ_{τ−½}: with g frozen the corrected
  moments are exact, ``μ̂(τ) = g`` and ``ν̂(τ) = g ⊙ g`` for every τ ≥ 0, as the
  discrete ``μ̂_k = g``, ``ν̂_k = g ⊙ g`` are. (Counting τ + 1 against μ(τ) = μ_{τ−½}
  would shrink the first steps by up to 1 − √β₁; the count τ + ½ also keeps the
  correction finite at τ = 0.)

What is left between the stable flow and the discrete run is first order: at fixed
physical time ηk the error is O(η) (halving η halves it;
tests/optimizers/test_momentum_adam.py), with a small coefficient. Each exponential
moment lags its forcing (1 − β)/12 of a step less than the geometric one does; in
μ̂/√ν̂ ≈ sign(g)(1 + (L₂ − L₁) ġ/g) (L the lags) the two mismatches enter as
(β₂ − β₁)/12 · ġ/|g|, so they cancel for β₁ = β₂ and the flow is then second order
(measured), as long as no coordinate's gradient nears 0. AdamW adds the O(η) of its
decay term, evaluated along the flow rather than at w_k (as gradient flow's g).
Where a coordinate's gradient passes through 0, P⁻¹ = η/(√ν̂ + ε) grows past the
threshold below and the discrete run oscillates there: the stable flow stops tracking
it (Adam's edge of stability).

``P⁻¹ = η / (√ν̂ + ε)`` (bias-corrected; `p_inv`, `step_p_inv`) is the preconditioner
for effective-sharpness tracking, but the step is ``−P⁻¹ μ̂``, not ``−P⁻¹ g``: with P
frozen, the iteration on an eigenvalue λ of P⁻¹H is stable iff
``λ < 2(1 + β₁)/(1 − β₁)`` (38 for β₁ = 0.9: the adaptive edge of stability of
Cohen et al. 2022), not 2.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..linalg.hvp import gradient
from .base import UpdateRule, half_step
from .rmsprop import bias_correction, inverse_root

__all__ = ["Adam", "AdamW"]


class Adam(UpdateRule):
    """Adam: ``w_{k+1} = w_k − η μ̂_k / (√ν̂_k + ε)``; ``P⁻¹ = η / (√ν̂ + ε)``.

    The state is ``(μ, ν)``; the count is the step (k + 1 discrete, τ + ½ on a flow).

    Attributes:
        lr: η.
        beta1: the first-moment decay β₁ (optax's ``b1``).
        beta2: the second-moment decay β₂ (optax's ``b2``).
        eps: ε added to √ν̂ (outside the root, optax's ``eps``; ``eps_root`` = 0).
    """

    lr: Float[Array, ""]
    beta1: float = eqx.field(default=0.9)
    beta2: float = eqx.field(default=0.999)
    eps: float = eqx.field(default=1e-8)

    preconditioned: ClassVar[bool] = False

    def check_continuous(self):
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not 0 < value < 1:
                raise ValueError(
                    f"{name} must be in (0, 1) for a flow (its moment relaxes at rate "
                    f"−log β), got {value!r}"
                )

    @property
    def stability_threshold(self):
        """``2(1 + β₁)/(1 − β₁)`` (38 for β₁ = 0.9): see the module."""
        return 2 * (1 + self.beta1) / (1 - self.beta1)

    def init(self, f, w):
        return jnp.zeros_like(jnp.real(w)), jnp.zeros_like(jnp.real(w))

    def _decay(self, w):
        """The decoupled weight decay's part of the update (before the −η), none here."""
        return None

    def _p_inv(self, nu, count):
        return inverse_root(self.lr, nu / bias_correction(self.beta2, count, nu), self.eps)

    def _delta(self, p_inv, mu, count, w):
        direction = p_inv * (mu / bias_correction(self.beta1, count, mu))
        decay = self._decay(w)
        return -direction if decay is None else -(direction + self.lr * decay)

    def _moments(self, state, g):
        mu, nu = state
        return (1 - self.beta1) * g + self.beta1 * mu, (1 - self.beta2) * (g * g) + self.beta2 * nu

    def update(self, step, state, f, w, g):
        """``P_k⁻¹ = η / (√ν̂_k + ε)`` and (μ_k, ν_k) (the step itself is `step`'s)."""
        state = self._moments(state, g)
        return self._p_inv(state[1], step + 1), state

    def step(self, step, state, f, w, g):
        p_inv, state = self.update(step, state, f, w, g)
        return self._delta(p_inv, state[0], step + 1, w), state

    def derivative(self, t, state, f, w, g, grad_sq=None):
        # μ(τ), ν(τ) model μ_{τ−½}, ν_{τ−½}: exact-time-1-map rates, the count τ + ½.
        mu, nu = state
        grad_sq = g * g if grad_sq is None else grad_sq
        dmu = -jnp.log(self.beta1) * (g - mu)
        dnu = -jnp.log(self.beta2) * (grad_sq - nu)
        return self._p_inv(nu, t + 0.5), (dmu, dnu)

    def velocity(self, t, state, f, w, g, grad_sq=None):
        p_inv, dstate = self.derivative(t, state, f, w, g, grad_sq)
        return self._delta(p_inv, state[0], t + 0.5, w), dstate

    def step_p_inv(self, step, state, f, w, g):
        return self._p_inv(state[1], step + 1)

    def initial_flow_state(self, f, w, state):
        """μ(k) = μ_{k−½} = g_k + β₁^{½} (μ_{k−1} − g_k), ν(k) = ν_{k−½} likewise with
        g_k ⊙ g_k; μ_{−1} = ν_{−1} = 0 at the start."""
        g = jnp.real(gradient(f)(w))
        mu, nu = state
        return half_step(g, mu, self.beta1), half_step(g * g, nu, self.beta2)

    def state_diagnostics(self, state):
        """``{"mu": μ, "nu": ν}``: μ_k, ν_k in a discrete run; μ(k) ≈ μ_{k−½}, ν(k) ≈
        ν_{k−½} on a flow."""
        return {"mu": state[0], "nu": state[1]}

    def state_from_diagnostics(self, diagnostics):
        return diagnostics["mu"], diagnostics["nu"]


class AdamW(Adam):
    """AdamW: ``w_{k+1} = w_k − η (μ̂_k / (√ν̂_k + ε) + λ w_k)`` (optax's ``adamw``).

    Attributes:
        weight_decay: λ (optax's default 1e-4), scaled by η but not by P⁻¹.
    """

    weight_decay: float = eqx.field(default=1e-4)

    def _decay(self, w):
        return self.weight_decay * w
