"""The first-order modified flow (implicit gradient regularization)."""

from __future__ import annotations

from typing import ClassVar

from ..linalg.hvp import gradient, hvp
from ..optimizers.base import UpdateRule
from ..problem import Problem
from .base import VectorField

__all__ = ["ModifiedFlow"]


class ModifiedFlow(VectorField):
    """The modified (IGR) flow of Barrett & Dherin (ICLR 2021), in step time τ:

        dw/dτ = −η (g + (η/2) H g) = −η ∇(L + (η/4)‖g‖²).

    For a preconditioned rule with ``p = P⁻¹`` it is ``−(p g + ½ p H (p g))``, the
    same backward-error correction. It tracks GD to O(η²) below the edge of stability.

    Preconditioned rules only: the correction is derived for ``w_{k+1} = w_k − P⁻¹ g_k``,
    not for a step made of a momentum state (heavy ball, Nesterov, Adam), whose
    backward error has other terms.
    """

    problem: Problem
    rule: UpdateRule

    models: ClassVar[tuple[str, ...] | None] = (
        "gd", "normalized_gd", "sqrt_gd", "rmsprop", "scalar_rmsprop", "dal"
    )

    def __check_init__(self):
        if not self.rule.preconditioned:
            raise ValueError(
                f"modified_flow models preconditioned rules w ← w − P⁻¹g only, not "
                f"{type(self.rule).__name__} (a momentum rule); use gradient_flow"
            )

    def __call__(self, t, y, args):
        w, state = y
        f = self.problem.flat_loss
        g = gradient(f)(w)
        p_inv, dstate = self.rule.derivative(t, state, f, w, g)
        step = p_inv * g
        return -(step + 0.5 * p_inv * hvp(f, w, step)), dstate

    def diagnostics(self, t, y):
        """The optimizer state along the flow (e.g. RMSProp's ``{"nu": ν(τ)}``)."""
        return self.rule.state_diagnostics(y[1])
