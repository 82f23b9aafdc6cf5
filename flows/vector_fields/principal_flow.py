"""The principal flow of Rosca, Wu, Qin and Dherin (TMLR 2023)."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Complex, Scalar

from ..linalg.hvp import gradient, hessian, hvp
from ..linalg.matfun import dense_funm, lanczos_funm, log1m_over_x
from ..optimizers.base import UpdateRule
from ..optimizers.gd import GD
from ..problem import Problem
from .base import VectorField

__all__ = ["PrincipalFlow", "PATHS", "AUTO_DENSE_MAX_PARAMS", "DENSE_MAX_PARAMS"]

#: The ways to evaluate ``φ(ηH) g``.
PATHS = ("auto", "dense", "lanczos")
#: ``path="auto"`` uses the dense path up to this many parameters, Lanczos above.
AUTO_DENSE_MAX_PARAMS = 64
#: The dense path refuses larger models: it stores the complex n×n Hessian and
#: diagonalises it with an O(n³) ``eig`` at every evaluation of the vector field.
DENSE_MAX_PARAMS = 5000


def dense_direction(f, w: Array, lr: Array) -> Array:
    """``φ(ηH) g`` with ``φ(x) = log(1 − x)/x``, densely: the Hessian at ``w`` from n HVPs,
    then ``eigh`` (real Hessian) or ``eig`` (complex-symmetric). `PrincipalFlow`'s dense
    path; O(n³) per call, so the flow refuses it above `DENSE_MAX_PARAMS` parameters."""
    return dense_funm(lambda x: log1m_over_x(lr * x), hessian(f, w), gradient(f)(w))


class PrincipalFlow(VectorField):
    """The principal flow (PF) of GD (Rosca, Wu, Qin and Dherin, "On a continuous time
    model of gradient descent dynamics and instability in deep learning", TMLR 2023),
    in step time τ:

        dw/dτ = log(I − ηH) H⁻¹ g = η φ(ηH) g,    φ(x) = log(1 − x)/x = −1 − x/2 − …,

    i.e. ``dw/dτ = η Σ_i φ(ηλ_i) (u_iᵀg) u_i``. Truncating φ after one term gives
    gradient flow, after two the modified flow. On a quadratic it is exact,
    ``w(τ) = (I − ηH)^τ w₀``, equal to GD at every integer τ even where GD oscillates
    (1 < ηλ < 2) or diverges (ηλ > 2).

    For ηλ > 1 the coefficient is complex (``Re = log|1 − ηλ|/(ηλ)``, ``Im = π/(ηλ)``), so
    the state w is complex from the start: the loss is evaluated at complex parameters
    (it must be holomorphic: polynomials, tanh, swish, MSE), its Hessian is then
    complex-symmetric, and the log's branch cut is moved to the negative imaginary
    axis (`flows.linalg.matfun.shifted_log`) so the sign of ``Im`` is the same on both
    sides of ``1 − ηλ < 0`` (the principal branch flips with rounding errors and the
    integrator stalls). The other consistent choice gives the complex-conjugate
    trajectory, with the same real part. `parameters` is ``Re w``; the diagnostics are
    ``imag_at_step = max_i |Im w_i|`` at the saved (integer) steps and ``max_imag``, the
    largest such value seen since the previous saved step, over the integrator's steps
    (on a quadratic the state is real again at every integer step, complex in between).

    Limitation (non-quadratic losses): once w is complex the eigenvalues of ηH(w) move
    in the complex plane, and with a large oscillation (far from a minimum, several
    eigenvalues near 1/η, or ηλ > 2) they can wind around the branch point ηλ = 1. The
    flow would then need the logarithm continued onto another sheet, which no function
    of (t, w) provides: at the cut the field jumps by ``2πi/(ηλ)`` along that
    eigenvector, the flow chatters across it, and the adaptive integrator gives up (the
    run reports "integrator failed"). In practice the flow integrates from trained
    points and in mild regimes, and follows a diverging GD for its first few steps.

    Attributes:
        problem: the loss (holomorphic for ηλ > 1) and the starting point.
        rule: the update rule; must be `flows.optimizers.GD` (the flow is GD's).
        path: how ``φ(ηH) g`` is computed: ``"dense"`` (the full Hessian from n HVPs and
            its eigendecomposition; exact, small models), ``"lanczos"`` (matrix-free,
            ``num_matvecs`` HVPs per evaluation, `flows.linalg.matfun.lanczos_funm`) or
            ``"auto"`` (dense up to `AUTO_DENSE_MAX_PARAMS` parameters).
        num_matvecs: the Krylov depth of the Lanczos path.
    """

    problem: Problem
    rule: UpdateRule
    path: str = eqx.field(static=True, default="auto")

    models: ClassVar[tuple[str, ...] | None] = ("gd",)
    num_matvecs: int = eqx.field(static=True, default=64)

    def __check_init__(self):
        if not isinstance(self.rule, GD):
            raise ValueError(
                "the principal flow models gradient descent only: optimizer must be 'gd', "
                f"got the rule {type(self.rule).__name__}"
            )
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {self.path!r}")
        if (
            isinstance(self.num_matvecs, bool)
            or not isinstance(self.num_matvecs, int)
            or self.num_matvecs < 1
        ):
            raise ValueError(f"num_matvecs must be a positive integer, got {self.num_matvecs!r}")
        n = self.problem.num_params
        if self.path == "dense" and n > DENSE_MAX_PARAMS:
            raise ValueError(
                f"path='dense' forms the {n}×{n} complex Hessian "
                f"({16 * n * n / 2**30:.1f} GiB in complex128) and diagonalises it at every "
                f"evaluation; it is limited to {DENSE_MAX_PARAMS} parameters: use path='lanczos'"
            )

    @property
    def resolved_path(self) -> str:
        """``"dense"`` or ``"lanczos"``: the path ``"auto"`` stands for at this size."""
        if self.path != "auto":
            return self.path
        return "dense" if self.problem.num_params <= AUTO_DENSE_MAX_PARAMS else "lanczos"

    def initial_state(self, w=None, state=None, t0=0) -> tuple[Complex[Array, " n"], None]:
        """``(w₀ + 0i, None)``: complex from the start (GD has no optimizer state)."""
        w0 = self.problem.w0 if w is None else w
        return w0.astype(jnp.result_type(w0.dtype, jnp.complex64)), None

    def __call__(self, t, y, args):
        w, _ = y
        f = self.problem.flat_loss
        lr = self.rule.lr

        if self.resolved_path == "dense":
            return (lr * dense_direction(f, w, lr)).astype(w.dtype), None

        def coefficient(eigenvalue):
            return log1m_over_x(lr * eigenvalue)

        def lanczos(x):
            return lanczos_funm(
                coefficient, lambda v: hvp(f, x, v), gradient(f)(x), self.num_matvecs,
                dtype=w.dtype,
            )

        # While the state is real (every ηλ < 1 so far) so are the HVPs and the Krylov
        # basis: the same numbers as in complex arithmetic, several times cheaper.
        direction = jax.lax.cond(
            jnp.all(jnp.imag(w) == 0), lambda: lanczos(jnp.real(w)), lambda: lanczos(w)
        )
        return (lr * direction).astype(w.dtype), None

    def diagnostics(self, t: Scalar, y) -> dict[str, Array]:
        """``imag_at_step``: the largest ``|Im w_i|`` at this time (0 while every ηλ < 1)."""
        return {"imag_at_step": _largest_imaginary_part(y)}

    def running_maxima(self, t: Scalar, y) -> dict[str, Scalar]:
        """``max_imag``: the largest ``|Im w_i|`` seen since the previous saved step, over
        the integrator's steps (on a quadratic the state is real at every integer step
        and complex in between)."""
        return {"max_imag": _largest_imaginary_part(y)}


def _largest_imaginary_part(y) -> Scalar:
    return jnp.max(jnp.abs(jnp.imag(y[0])))
