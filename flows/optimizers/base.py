"""Update rules: one definition gives the discrete step and its continuous derivative.

Every optimizer here is preconditioned GD (see DESIGN: "All of these are
preconditioned GD"):

    w_{k+1} = w_k − P_k⁻¹ g_k,

with P⁻¹ (a scalar or a diagonal, called ``p_inv``) a function of an optimizer
state s and of the current point. A rule is a pure (init, update) pair, as in
optax, plus the continuous-time counterpart in step time τ:

    dw/dτ = −P⁻¹(s) g,        ds/dτ = rule.derivative(...).

``derivative`` takes ``grad_sq``, the (expected) elementwise square of the
gradient that drives second-moment states: ``g ⊙ g`` on a stable flow, and
``g ⊙ g`` plus the oscillation's contribution on a central flow. So the central
flow of an optimizer is the generic central-flow machinery plus its rule.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
from jaxtyping import Array, Float, Int, Scalar

__all__ = ["UpdateRule", "Loss", "State"]

Loss = Callable[[Array], Scalar]
State = Any


class UpdateRule(eqx.Module):
    """Interface of an update rule ``w_{k+1} = w_k − P⁻¹(s_k, w_k) g_k``.

    Implementations are immutable equinox modules; hyperparameters that a sweep
    varies (the learning rate) are array fields, so changing their values never
    recompiles.
    """

    lr: Float[Array, ""]

    @abc.abstractmethod
    def init(self, f: Loss, w: Float[Array, " n"]) -> State:
        """The state s before the first step (``None`` for stateless rules)."""

    @abc.abstractmethod
    def update(
        self, step: Int[Array, ""], state: State, f: Loss, w: Float[Array, " n"], g: Array
    ) -> tuple[Float[Array, "..."], State]:
        """Discrete step k: the new state s_k and ``P⁻¹`` for ``w_{k+1} = w_k − P⁻¹ g_k``."""

    @abc.abstractmethod
    def derivative(
        self,
        t: Scalar,
        state: State,
        f: Loss,
        w: Float[Array, " n"],
        g: Array,
        grad_sq: Array | None = None,
    ) -> tuple[Float[Array, "..."], State]:
        """Continuous time τ: ``P⁻¹`` and ``ds/dτ`` (``None`` for stateless rules).

        ``grad_sq`` defaults to ``g ⊙ g``.
        """

    def preconditioner(self, t: Scalar, state: State, f: Loss, w: Float[Array, " n"], g: Array):
        """``P⁻¹`` at continuous time t (scalar or diagonal)."""
        return self.derivative(t, state, f, w, g)[0]
