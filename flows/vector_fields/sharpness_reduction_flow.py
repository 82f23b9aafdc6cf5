"""The limiting flows of normalized GD and of GD on √L (Arora, Li, Panigrahi, ICML 2022).

Near a manifold Γ of minimizers both optimizers enter the edge of stability: they
oscillate across Γ along the top Hessian eigenvector with amplitude O(η) while
drifting *along* Γ, slowly, in the direction that lowers the sharpness λ₁. In the
rescaled time ``τ' = η² · steps`` the drift converges (η → 0) to

    normalized GD, ``w ← w − η g/‖g‖``:          dX/dτ' = −¼ P_Γ ∇ log λ₁(X),
    GD on √L, ``w ← w − η g/(2√(L − L_min))``:   dX/dτ' = −⅛ P_Γ ∇ λ₁(X),

with ``P_Γ`` the orthogonal projection onto the tangent space of Γ at X ("Understanding
gradient descent on the edge of stability in deep learning"; their theorems state it for
``Φ(x_k)``, the gradient-flow limit of the iterates).
On the toy ``L = (1 + x²) y²`` (Γ = {y = 0}, λ₁ = 2(1 + x²)) the first reads
``dx/dτ' = −x / (2(1 + x²))`` and the second ``dx/dτ' = −x/2``.

Like every flow in the library these are integrated in step time τ = k (DESIGN,
"Time convention"): ``dX/dτ = η² dX/dτ'``, so the solution saved at the integer
steps lines up with the discrete iterates for any η (only ``rule.lr`` is used).

Γ and P_Γ: the loss vanishes (equals ``loss_min``) on Γ, so at a point of Γ the
Hessian is zero on the tangent space and its range is the normal space. The normal
space is spanned by the top ``codim`` Hessian eigenvectors (for an interpolating
MSE model: the rows of the Jacobian of the outputs, ``codim`` = examples × outputs),
and ``P_Γ = I − U Uᵀ``. ``∇λ₁ = ∇_w(u₁ᵀ H(w) u₁)`` is the third-derivative term
(`flows.linalg.hvp.hessian_quadratic_form_grad`).

Staying on Γ: the exact flow is tangent to Γ, so Γ is invariant, but an integrator
drifts off it at its truncation error. A restoring term ``−r U Λ⁻¹ Uᵀ g`` (a Newton
step in the normal space, zero on Γ, so it leaves the flow on Γ unchanged) pulls the
solution back at rate ``r = restoring_rate`` per unit τ'.

Starting point: the flow starts at the projection of ``problem.w0`` onto Γ by
``projection_iterations`` Newton steps in the normal space, ``w ← w − U Λ⁻¹ Uᵀ g``.
From a point at distance d from Γ this lands within O(d²) of the gradient-flow limit
Φ(w0) that the theory uses (the discrete optimizers themselves land within O(η) of
it). Newton steps need ``w0`` near Γ: for a network, start the flow from an iterate
of normalized GD that has reached the edge (small loss), e.g. by building the problem
with that iterate as its initial parameters.

Like the theorem, the field assumes λ₁ is simple: where the flow drives λ₁ down onto
λ₂ the field is discontinuous, and an adaptive integrator crawls (bound ``max_steps``)
or reports failure there.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..linalg.eigen import Eigenpairs, EigenSolver, top_eigenpairs
from ..linalg.hvp import gradient, hessian_quadratic_form_grad
from ..optimizers.base import UpdateRule
from ..problem import Problem
from .base import VectorField

__all__ = ["SharpnessReductionFlow", "NormalizedGDFlow", "SqrtGDFlow"]


class SharpnessReductionFlow(VectorField):
    """``dX/dτ' = −c P_Γ ∇ φ(λ₁(X))`` on the minimizer manifold Γ, integrated in step time
    ``τ = τ'/η²``; ``φ = log`` with ``c = ¼`` (`NormalizedGDFlow`) or ``φ = id`` with
    ``c = ⅛`` (`SqrtGDFlow`). See the module docstring for Γ, P_Γ and the start.

    Attributes:
        problem: the loss, minimal (``loss_min``) on Γ; ``w0`` near Γ.
        rule: the update rule; only its learning rate η is used.
        codim: the dimension of the normal space of Γ (top Hessian eigenvectors
            removed by ``P_Γ``); 1 for the toy ``(1 + x²)y²``.
        restoring_rate: the rate, per unit τ', at which drift off Γ is pulled back.
        projection_iterations: Newton steps projecting ``w0`` onto Γ (0: start at ``w0``).
        eigensolver: for the top ``codim`` eigenpairs (dense below 1500 parameters).
    """

    problem: Problem
    rule: UpdateRule
    codim: int = eqx.field(static=True, default=1)
    restoring_rate: float = 1.0
    projection_iterations: int = eqx.field(static=True, default=20)
    eigensolver: EigenSolver | None = None

    coefficient: ClassVar[float] = 0.25
    logarithmic: ClassVar[bool] = True

    def __check_init__(self):
        n = self.problem.num_params
        if isinstance(self.codim, bool) or not isinstance(self.codim, int):
            raise ValueError(f"codim must be an integer, got {self.codim!r}")
        if not 1 <= self.codim < n:
            raise ValueError(f"codim must be in [1, {n - 1}] for {n} parameters, got {self.codim}")
        if self.projection_iterations < 0:
            raise ValueError(
                f"projection_iterations must be >= 0, got {self.projection_iterations}"
            )

    def normal_space(self, w: Float[Array, " n"]) -> Eigenpairs:
        """The top ``codim`` Hessian eigenpairs at w (their vectors span the normal space)."""
        return top_eigenpairs(
            self.problem.flat_loss, w, self.codim, eigensolver=self.eigensolver
        )

    def _newton_step(self, pairs: Eigenpairs, w: Array) -> Array:
        """``U Λ⁻¹ Uᵀ g``: the Newton step onto Γ within the normal space."""
        g = gradient(self.problem.flat_loss)(w)
        positive = pairs.values > 0
        inverse = jnp.where(positive, 1.0 / jnp.where(positive, pairs.values, 1.0), 0.0)
        return pairs.vectors @ (inverse * (pairs.vectors.T @ g))

    def project_to_manifold(self, w: Float[Array, " n"]) -> Float[Array, " n"]:
        """``projection_iterations`` Newton steps from w onto Γ."""

        def newton(_, w):
            return w - self._newton_step(self.normal_space(w), w)

        return jax.lax.fori_loop(0, self.projection_iterations, newton, w)

    def tangent_projection(self, w: Float[Array, " n"], v: Float[Array, " n"]) -> Array:
        """``P_Γ v = v − U Uᵀ v``."""
        vectors = self.normal_space(w).vectors
        return v - vectors @ (vectors.T @ v)

    def rescaled_velocity(self, w: Float[Array, " n"]) -> Float[Array, " n"]:
        """``dX/dτ'`` at w, including the restoring term (zero on Γ)."""
        f = self.problem.flat_loss
        pairs = self.normal_space(w)
        top = pairs.vectors[:, 0]
        grad_sharpness = hessian_quadratic_form_grad(f, w, top, top)
        tangent = grad_sharpness - pairs.vectors @ (pairs.vectors.T @ grad_sharpness)
        if self.logarithmic:
            tangent = tangent / pairs.values[0]
        return -self.coefficient * tangent - self.restoring_rate * self._newton_step(pairs, w)

    def __call__(self, t, y, args):
        return self.rule.lr**2 * self.rescaled_velocity(y)

    def initial_state(self, w=None, state=None, t0=0) -> Float[Array, " n"]:
        """w (w₀ by default) projected onto the manifold the flow moves on."""
        return self.project_to_manifold(self.problem.w0 if w is None else w)

    def parameters(self, y):
        return jnp.real(y)

    def diagnostics(self, t, y) -> dict[str, Array]:
        """The top ``codim`` eigenvalues (``"eigenvalues"``, so ``Trajectory.sharpness``
        is λ₁ along the flow) and the rescaled time ``τ' = η² τ``."""
        return {
            "eigenvalues": self.normal_space(y).values,
            "rescaled_time": self.rule.lr**2 * t,
        }


class NormalizedGDFlow(SharpnessReductionFlow):
    """The limiting flow of normalized GD: ``dX/dτ' = −¼ P_Γ ∇ log λ₁(X)``, ``τ' = η² τ``."""

    coefficient: ClassVar[float] = 0.25
    logarithmic: ClassVar[bool] = True
    models: ClassVar[tuple[str, ...] | None] = ("normalized_gd",)
    default_optimizer: ClassVar[str] = "normalized_gd"


class SqrtGDFlow(SharpnessReductionFlow):
    """The limiting flow of GD on √L: ``dX/dτ' = −⅛ P_Γ ∇ λ₁(X)``, ``τ' = η² τ``."""

    coefficient: ClassVar[float] = 0.125
    logarithmic: ClassVar[bool] = False
    models: ClassVar[tuple[str, ...] | None] = ("sqrt_gd",)
    default_optimizer: ClassVar[str] = "sqrt_gd"
