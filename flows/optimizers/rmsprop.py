"""RMSProp and scalar RMSProp as preconditioned GD.

Discrete (step k, gradient g_k):

    ν_k = β₂ ν_{k−1} + (1 − β₂) g_k ⊙ g_k,    w_{k+1} = w_k − η g_k / (√ν̂_k + ε),

with ν̂_k = ν_k / (1 − β₂^{k+1}) under bias correction. The continuous counterpart, in
step time (DESIGN, "Time convention"), is

    dw/dτ = −η g / (√ν̂ + ε),    dν/dτ = −log(β₂) (E[g ⊙ g] − ν),    ν̂ = ν / (1 − β₂^{τ+½}),

where the flow's ν(τ) models ν_{τ−½}: step k spans τ ∈ [k, k+1] and uses ν_k, so the
ν in force at the middle of that interval, ν(k + ½), is the one that models ν_k.
Scalar RMSProp uses ‖g‖² instead of g ⊙ g. This alignment makes the stable flow's
step over [k, k+1] use ν_k to first order, as the discrete step does:

- rate −log β₂: with the forcing x = g ⊙ g frozen, the recursion
  ``ν_k − x = β₂ (ν_{k−1} − x)`` is the exact time-1 map of this ODE; with a drifting
  forcing the ODE's ν lags x by ``1/(−log β₂) = 1/(1 − β₂) − ½ + O(1 − β₂)`` steps, and
  the discrete ν_k lags x_k by ``β₂/(1 − β₂)``: ν(τ) matches ν_{τ−½}.
  The rate ``(1 − β₂)/β₂`` (from ``ν_k − ν_{k−1} = ((1 − β₂)/β₂)(g_k ⊙ g_k − ν_k)``,
  Cohen, Damian et al. 2025) models ν_τ and ``1 − β₂`` models ν_{τ−1}: both put ν
  half a step off during each step, an error of the same order as gradient flow's
  against GD, which adds to it or cancels depending on the run.
- initial state ν(0) = ν_{−½} = x₀ + β₂^{½} (ν_{−1} − x₀), x₀ = g₀ ⊙ g₀: the exact
  half step of the recursion from ν_{−1} (`RMSProp.initial_flow_state`). It is x₀ for
  the default ν_{−1} = x₀, and about ν_0/2 from zeros, where starting from ν_0 would
  make every early step of the flow too short (ν doubles over the first step).
- bias correction with the count τ + ½, so that ν̂(k + ½) models ν̂_k.

With ν aligned, what is left between the stable flow and the discrete run is the
O(η) error of gradient flow against GD, so the first-order modified flow
(`flows.ModifiedFlow`, ``p g + ½ p H (p g)``) removes it: for RMSProp it tracks the
run to the next order only with this alignment.

The measured effect (stable flow vs the discrete run, against gradient flow vs GD at
the same effective sharpness) is in benchmarks/README.md, "RMSProp flows: time
alignment".
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..linalg.hvp import gradient
from .base import UpdateRule, half_step

__all__ = ["RMSProp", "ScalarRMSProp", "bias_correction", "inverse_root"]


def bias_correction(beta, count, like):
    """``1 − β^count`` in the dtype of ``like``: the count is an integer step (or a float
    step time), whose power would otherwise promote a float32 state to float64."""
    return (1 - beta ** jnp.asarray(count, jnp.result_type(like))).astype(jnp.result_type(like))


def inverse_root(lr, nu, eps):
    """``lr / (√ν + ε)``, guarded where ν = 0 (RMSProp and Adam share it)."""
    # A coordinate whose gradient is identically zero (a dead input pixel) keeps ν = 0;
    # √ν's derivative is infinite there, and the central flow differentiates P⁻¹ along
    # ds/dτ = 0 in it: inf · 0 would poison the flow with NaN. The double `where`
    # gives such a coordinate a zero derivative. Its step is 0 whatever P⁻¹ is (g = 0),
    # so with ε = 0 it gets P⁻¹ = η rather than η/0 (whose 0 · ∞ step is NaN).
    positive = nu > 0
    root = jnp.where(positive, jnp.sqrt(jnp.where(positive, nu, 1.0)), 0.0)
    denominator = root + eps
    return lr / jnp.where(denominator > 0, denominator, 1.0)


class RMSProp(UpdateRule):
    """Elementwise RMSProp: ``P⁻¹ = η / (√ν̂ + ε)``.

    Attributes:
        lr: η.
        beta2: the second-moment decay β₂.
        eps: ε added to √ν̂.
        bias_correction: divide ν_k by ``1 − β₂^{k+1}`` (ν(τ) by ``1 − β₂^{τ+½}``).
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

    def check_continuous(self):
        # dν/dτ = −log(β₂)(…): β₂ = 0 (ν = g ⊙ g at every step) relaxes infinitely fast.
        if isinstance(self.beta2, (int, float)) and not 0 < self.beta2 < 1:
            raise ValueError(
                f"beta2 must be in (0, 1) for a flow (its ν relaxes at rate −log β₂), "
                f"got {self.beta2!r}"
            )

    def init(self, f, w):
        if self.initial_nu is None:
            return self._second_moment(jnp.real(gradient(f)(w)) ** 2)
        return jnp.full_like(self._second_moment(jnp.real(w)), self.initial_nu)

    def _p_inv(self, nu, count):
        if self.bias_correction:
            nu = nu / bias_correction(self.beta2, count, nu)
        return inverse_root(self.lr, nu, self.eps)

    def update(self, step, state, f, w, g):
        nu = self.beta2 * state + (1 - self.beta2) * self._second_moment(g * g)
        return self._p_inv(nu, step + 1), nu

    def derivative(self, t, state, f, w, g, grad_sq=None):
        # ν(τ) models ν_{τ−½}: the rate that samples the recursion exactly, the count of ν_{τ−½}.
        grad_sq = g * g if grad_sq is None else grad_sq
        dnu = -jnp.log(self.beta2) * (self._second_moment(grad_sq) - state)
        return self._p_inv(state, t + 0.5), dnu

    def step_p_inv(self, step, state, f, w, g):
        return self._p_inv(state, step + 1)

    def initial_flow_state(self, f, w, state):
        """ν(k) = ν_{k−½} = x_k + β₂^{½} (ν_{k−1} − x_k), x_k = g_k ⊙ g_k (‖g_k‖² for scalar);
        ν_{−1} = `init` at the start."""
        forcing = self._second_moment(jnp.real(gradient(f)(w)) ** 2)
        return half_step(forcing, state, self.beta2)

    def state_diagnostics(self, state):
        """``{"nu": ν}``: ν_k in a discrete run; ν(k) ≈ ν_{k−½} ≈ ½(ν_{k−1} + ν_k) on a flow."""
        return {"nu": state}

    def state_from_diagnostics(self, diagnostics):
        return diagnostics["nu"]


class ScalarRMSProp(RMSProp):
    """Scalar RMSProp: ν tracks ‖g‖², ``P⁻¹ = η / (√ν̂ + ε)`` a scalar."""

    def _second_moment(self, grad_sq):
        return jnp.sum(grad_sq)
