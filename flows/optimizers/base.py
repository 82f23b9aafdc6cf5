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

Momentum rules (heavy ball, Nesterov, Adam) are not of this form: their step is a
function of a momentum state that stands in for the gradient. The engine therefore
asks every rule for the step itself and its continuous counterpart,

    w_{k+1} = w_k + Δw_k,  (Δw_k, s_k) = rule.step(...);
    dw/dτ, ds/dτ = rule.velocity(...),

whose defaults, ``Δw = −P⁻¹ g`` and ``dw/dτ = −P⁻¹ g``, come from ``update`` and
``derivative``: a preconditioned rule defines only those two, a momentum rule
overrides ``step`` and ``velocity`` as well and says so with ``preconditioned =
False`` (flows whose mathematics needs ``−P⁻¹ g``, the modified and central flows,
refuse it). Its ``update``/``derivative`` still return the preconditioner ``P⁻¹``
(η for heavy ball, ``η/(√ν̂ + ε)`` for Adam), which is what effective-sharpness
tracking (`p_inv`, `step_p_inv`) reads.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, Scalar

from ..linalg.hvp import gradient

__all__ = ["UpdateRule", "Loss", "State", "half_step"]

Loss = Callable[[Array], Scalar]
State = Any


def half_step(forcing, previous, beta):
    """``x + β^{½} (s_{k−1} − x)``: s_{k−½}, the exact half step of the moving average
    ``s_k = x + β (s_{k−1} − x)`` with its forcing x frozen, where a flow whose s(τ)
    models s_{τ−½} starts (RMSProp's ν, Adam's μ and ν, heavy ball's m)."""
    return forcing + jnp.sqrt(beta) * (previous - forcing)


class UpdateRule(eqx.Module):
    """Interface of an update rule ``w_{k+1} = w_k − P⁻¹(s_k, w_k) g_k``.

    Implementations are immutable equinox modules; hyperparameters that a sweep
    varies (the learning rate) are array fields, so changing their values never
    recompiles.
    """

    lr: Float[Array, ""]

    #: Whether the step is ``−P⁻¹ g`` (`update`/`derivative` say all); False for the
    #: momentum rules, whose `step`/`velocity` are their own.
    preconditioned: ClassVar[bool] = True

    #: Whether the central flow's stability condition is affine in Σ, so that one
    #: Newton step solves it (heavy ball: Σ enters only the momentum's rate, linearly).
    affine_edge_condition: ClassVar[bool] = False

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

    def step(
        self, step: Int[Array, ""], state: State, f: Loss, w: Float[Array, " n"], g: Array
    ) -> tuple[Float[Array, " n"], State]:
        """Discrete step k: ``(Δw_k, s_k)`` with ``w_{k+1} = w_k + Δw_k``.

        By default ``Δw_k = −P_k⁻¹ g_k`` from `update`; momentum rules override it.
        """
        p_inv, new_state = self.update(step, state, f, w, g)
        return -p_inv * g, new_state

    def velocity(
        self,
        t: Scalar,
        state: State,
        f: Loss,
        w: Float[Array, " n"],
        g: Array,
        grad_sq: Array | None = None,
    ) -> tuple[Float[Array, " n"], State]:
        """Continuous time τ: ``(dw/dτ, ds/dτ)`` of the rule's stable flow.

        By default ``dw/dτ = −P⁻¹(s) g`` from `derivative`; momentum rules override it.
        """
        p_inv, dstate = self.derivative(t, state, f, w, g, grad_sq)
        return -p_inv * g, dstate

    @property
    def stability_threshold(self) -> float:
        """c: the edge of stability of the rule, ``λ_max(P⁻¹H) = c`` with P frozen.

        2 for preconditioned GD (``w_{k+1} = w_k − P⁻¹ g_k`` on a quadratic is stable iff
        every eigenvalue of P⁻¹H is below 2); momentum rules raise it (`Momentum`,
        `Adam`). Central flows hold the tracked eigenvalues of P⁻¹H at c.
        """
        return 2.0

    def check_continuous(self) -> None:
        """Raise ValueError if these hyperparameters have no continuous-time counterpart
        (called when a flow is built on the rule; nothing to check by default)."""

    def initial_flow_state(self, f: Loss, w: Float[Array, " n"], state: State) -> State:
        """The state a flow starts from at w: by default the discrete state of the step there.

        ``state`` is the discrete state before that step: s_{k−1} where a flow takes
        over a run at step k (`flows.simulate`'s ``start_from``), ``init`` (s_{−1}) at
        the start (`flows.vector_fields.initial_optimizer_state` passes it). Step k uses
        s_k = update(s_{k−1}, g_k), so a flow whose s(τ) models s_τ starts from s_k.
        Rules whose flow state is aligned differently (RMSProp: ν(τ) models ν_{τ−½},
        `half_step`) override this.
        """
        return self.update(jnp.asarray(0), state, f, w, gradient(f)(w))[1]

    def p_inv(self, t: Scalar, state: State, f: Loss, w: Float[Array, " n"], g: Array):
        """``P⁻¹`` at continuous time t (scalar or diagonal), from the flow's state s(t)."""
        return self.derivative(t, state, f, w, g)[0]

    def step_p_inv(
        self, step: Int[Array, ""], state: State, f: Loss, w: Float[Array, " n"], g: Array
    ):
        """``P_k⁻¹`` of the discrete step k from its state s_k (what `run_discrete` saves).

        The same as `p_inv` at t = k unless the flow's state is aligned
        differently: RMSProp's ν(τ) models ν_{τ−½}, so ν_k belongs to τ = k + ½.
        """
        return self.p_inv(step, state, f, w, g)

    def state_diagnostics(self, state: State) -> dict[str, Array]:
        """The optimizer state as named arrays to report along a run (none by default).

        Discrete runs and stable flows save these at the saved steps, e.g. RMSProp's
        ``{"nu": ν}``, so the state of a flow can be compared with the optimizer's.
        """
        return {}

    def state_from_diagnostics(self, diagnostics: dict[str, Array]) -> State:
        """The state s_k back from its `state_diagnostics` (one saved row of a run):
        ``None`` for stateless rules; rules with a state override it."""
        return None
