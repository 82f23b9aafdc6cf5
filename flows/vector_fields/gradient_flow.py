"""Gradient flow, and more generally the stable flow of any update rule."""

from __future__ import annotations

from ..linalg.hvp import gradient
from ..optimizers.base import UpdateRule
from ..problem import Problem
from .base import VectorField

__all__ = ["GradientFlow"]


class GradientFlow(VectorField):
    """The stable flow of an update rule, in step time τ:

        dw/dτ = −P⁻¹(s) g(w),    ds/dτ = (the rule's state derivative at E[g⊙g] = g⊙g),

    or, for a momentum rule, its own ``dw/dτ`` (`UpdateRule.velocity`: heavy ball's
    ``−η m``, Adam's ``−η m̂/(√ν̂ + ε)``) with the momentum in the state. For GD
    (P⁻¹ = η) this is gradient flow ``dw/dτ = −η ∇L(w)``, which tracks GD to O(η)
    (per unit step time) below the edge of stability.
    """

    problem: Problem
    rule: UpdateRule

    def __call__(self, t, y, args):
        w, state = y
        f = self.problem.flat_loss
        g = gradient(f)(w)
        return self.rule.velocity(t, state, f, w, g)

    def diagnostics(self, t, y):
        """The optimizer state along the flow (e.g. RMSProp's ``{"nu": ν(τ)}``)."""
        return self.rule.state_diagnostics(y[1])
