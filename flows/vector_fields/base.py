"""The vector-field interface shared by every flow.

A flow is an equinox module called as ``(t, y, args) -> dy/dτ`` in *step time*
τ (τ = k is step k of the discrete optimizer, for every learning rate; DESIGN,
"Time convention"), so it plugs straight into ``diffrax.ODETerm``. Besides the
derivative it says how to start (`initial_state`), how to read the real
parameters off its state (`parameters`), and which diagnostics to report at the
saved steps (`diagnostics`, and `running_maxima` over the steps in between).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree, Scalar

from ..optimizers.base import UpdateRule
from ..problem import Problem

__all__ = ["VectorField", "initial_optimizer_state"]


def initial_optimizer_state(rule: UpdateRule, problem: Problem, w=None, state=None):
    """The optimizer state a flow starts from at w (the problem's w₀ by default):
    `UpdateRule.initial_flow_state`.

    By default the discrete state of the step there: the discrete step k uses s_k, which
    already includes g_k (e.g. RMSProp's ν_k), so s(0) = s_0 = update(s_{−1}, g_0);
    RMSProp's flow state is aligned half a step earlier (ν(0) = ν_{−½}). ``state`` is
    the discrete state before that step (s_{k−1} where the flow takes over a run at
    step k; the rule's ``init`` by default).
    """
    f, w = problem.flat_loss, problem.w0 if w is None else w
    return rule.initial_flow_state(f, w, rule.init(f, w) if state is None else state)


class VectorField(eqx.Module):
    """Interface: ``field(t, y, args) -> dy/dτ``.

    Subclasses hold the `Problem` and the `UpdateRule` they are built on, and say which
    rules they model (`models`, by optimizer name; None: any rule with a continuous-time
    derivative) and which one by default (`default_optimizer`).
    """

    problem: eqx.AbstractVar[Problem]
    rule: eqx.AbstractVar[UpdateRule]

    models: ClassVar[tuple[str, ...] | None] = None
    default_optimizer: ClassVar[str] = "gd"

    @abc.abstractmethod
    def __call__(self, t: Scalar, y: PyTree, args) -> PyTree:
        raise NotImplementedError

    def initial_state(self, w=None, state=None, t0=0) -> PyTree:
        """y(τ₀): by default ``(w_0, s_0)`` at τ₀ = 0.

        ``w``, ``state`` and ``t0`` take over a discrete run at step t0 = k from its
        w_k and the state s_{k−1} before that step (`flows.simulate`'s ``start_from``):
        ``(w_k, s_k)``, with s_k aligned as the rule's flow state is
        (`initial_optimizer_state`).
        """
        w = self.problem.w0 if w is None else w
        return w, initial_optimizer_state(self.rule, self.problem, w, state)

    def parameters(self, y: PyTree) -> Float[Array, " n"]:
        """The (real) parameter vector held in the state y."""
        return jnp.real(y[0])

    def diagnostics(self, t: Scalar, y: PyTree) -> dict[str, Array]:
        """Extra quantities reported at the saved steps (none by default)."""
        return {}

    def in_sweep(self) -> VectorField:
        """The field as a member of a vmapped sweep (`flows.sweep`): itself by default. A
        field whose work depends on its state through `lax.switch`/`lax.cond` (every
        branch runs under vmap) may prefer a single branch there."""
        return self

    def running_maxima(self, t: Scalar, y: PyTree) -> dict[str, Scalar]:
        """Scalars reported at each saved step as their largest value since the previous
        one, over the integrator's accepted steps and the saved step itself (none by
        default): what happens *between* saved steps, e.g. how complex the principal
        flow's state gets while it is real again at every integer step of a quadratic."""
        return {}
