"""Options as values: how to integrate, what to track, which method, and a whole run.

As in diffrax (a solver, a step-size controller and an adjoint are values handed to
``diffeqsolve``), every option of a run is an immutable equinox module, checked once
when it is made:

- `Integrator`: the diffrax solver and its tolerances, first step, step budget and
  adjoint (flows only);
- `Tracking`: how many top Hessian eigenvalues to track along a run, with which
  eigensolver, how often, at midpoints, of ``H`` or of ``P⁻¹H``;
- `Method`: a method by name, the update rule a flow models, their options, its
  integrator (and, in a run of several methods, its own tracking);
- `RunSpec`: a run of one or more labelled methods on one problem: learning rate (or
  rates: a sweep), steps, saving, chunking, tracking, divergence, references.

`flows.simulate`, `flows.sweep`, the checkpointed runner (`flows.runs`) and the TOML
configs (`flows.cli.config`) all consume these values, so a new option is one field here.
Their non-array fields are static: two equal values share compiled functions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import diffrax
import equinox as eqx
import numpy as np

from .linalg.eigen import LOBPCG, DenseEigh, EigenSolver, Lanczos
from .methods import FLOWS, check_method, default_optimizer, make_method, method_options

__all__ = [
    "ConfigError",
    "Integrator",
    "Tracking",
    "Method",
    "RunSpec",
    "SOLVERS",
    "EIGENSOLVERS",
    "check_positive_int",
    "check_lr",
    "check_lr_in",
]

#: diffrax solvers by name (``solver = "tsit5"`` in a config).
SOLVERS: dict[str, type[diffrax.AbstractSolver]] = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "ralston": diffrax.Ralston,
    "euler": diffrax.Euler,
}

#: Eigensolvers by name; "auto" (None) is dense up to 1500 parameters, Lanczos above.
EIGENSOLVERS: dict[str, type[EigenSolver] | None] = {
    "auto": None,
    "dense": DenseEigh,
    "lanczos": Lanczos,
    "lobpcg": LOBPCG,
}


class ConfigError(ValueError):
    """Bad input in a run configuration or run folder: the message is one line naming the
    key or value (the command line reports it with exit status 2)."""


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` if it is an integer ≥ ``minimum`` (not a bool), else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def check_lr(lr: Any, name: str = "lr") -> float:
    """A learning rate: a finite positive number."""
    try:
        value = float(lr)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {lr!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {lr!r}")
    return value


def check_lr_in(lr: float, dtype, name: str = "lr") -> float:
    """``lr`` if the run's floating-point ``dtype`` holds it: not flushed to 0 (below the
    smallest normal number) and not overflowed to infinity."""
    info = np.finfo(np.dtype(dtype))
    smallest, largest = float(info.tiny), float(info.max)  # Python floats: no overflow
    if not smallest <= lr <= largest:
        raise ValueError(
            f"{name}={lr!r} is not representable in {np.dtype(dtype).name} (it would be "
            f"{'0' if lr < smallest else 'infinite'}); use a value in [{smallest:.3g}, "
            f"{largest:.3g}] or float64"
        )
    return lr


def _check_optional_positive(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _solver(value: Any) -> diffrax.AbstractSolver | None:
    if isinstance(value, str):
        if value not in SOLVERS:
            raise ValueError(f"unknown solver {value!r}; choose one of {', '.join(SOLVERS)}")
        return SOLVERS[value]()
    return value


def _eigensolver(value: Any) -> EigenSolver | None:
    if isinstance(value, str):
        if value not in EIGENSOLVERS:
            raise ValueError(
                f"unknown eigensolver {value!r}; choose one of {', '.join(EIGENSOLVERS)}"
            )
        cls = EIGENSOLVERS[value]
        return None if cls is None else cls()
    return value


class Integrator(eqx.Module):
    """How a flow is integrated in step time (ignored by discrete optimizers).

    Attributes:
        solver: a diffrax solver (or its name, `SOLVERS`); None: the flow's own (the
            central flow's `CentralFlowSolver`), else adaptive Tsit5.
        rtol, atol: tolerances of the PID controller of an adaptive solver (None: by
            dtype, `flows.integrate.default_tolerances`).
        dt0: a fixed step (in steps of the optimizer); None: adaptive stepping for an
            adaptive solver, 1 otherwise.
        max_steps: the integrator's step budget (None: ``1000 + 200·steps/dt0``).
        adjoint: the diffrax adjoint (None: `diffrax.RecursiveCheckpointAdjoint`; pass
            `diffrax.ForwardMode` for forward-mode derivatives).
    """

    solver: diffrax.AbstractSolver | None = eqx.field(default=None, converter=_solver)
    rtol: float | None = eqx.field(default=None, static=True)
    atol: float | None = eqx.field(default=None, static=True)
    dt0: float | None = eqx.field(default=None, static=True)
    max_steps: int | None = eqx.field(default=None, static=True)
    adjoint: diffrax.AbstractAdjoint | None = None

    def __check_init__(self):
        if self.solver is not None and not isinstance(self.solver, diffrax.AbstractSolver):
            raise ValueError(f"solver must be a diffrax solver or a name, got {self.solver!r}")
        for name in ("rtol", "atol", "dt0"):
            _check_optional_positive(name, getattr(self, name))
        if self.max_steps is not None:
            check_positive_int("max_steps", self.max_steps)
        if self.adjoint is not None and not isinstance(self.adjoint, diffrax.AbstractAdjoint):
            raise ValueError(f"adjoint must be a diffrax adjoint, got {self.adjoint!r}")

    @property
    def is_default(self) -> bool:
        return self == Integrator()


class Tracking(eqx.Module):
    """Top Hessian eigenvalues tracked along a run (`flows.eigen_tracking`).

    Attributes:
        num_eigenvalues: how many (0: none).
        eigensolver: an `EigenSolver` or its name (`EIGENSOLVERS`); None ("auto"): dense
            up to 1500 parameters, Lanczos above.
        every: track every this many steps, a multiple of the run's ``save_every``
            (None: at every saved step); the rows in between are NaN.
        midpoint: track at ``(w_{k−1} + 2w_k + w_{k+1})/4`` of neighbouring saved rows,
            where the edge-of-stability oscillation cancels (odd ``save_every``).
        effective: track the eigenvalues of ``P⁻¹H`` (stability threshold 2) and save
            the ``P⁻¹`` series as ``extras["p_inv"]``.
    """

    num_eigenvalues: int = eqx.field(default=0, static=True)
    eigensolver: EigenSolver | None = eqx.field(default=None, converter=_eigensolver)
    every: int | None = eqx.field(default=None, static=True)
    midpoint: bool = eqx.field(default=False, static=True)
    effective: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        check_positive_int("num_eigenvalues", self.num_eigenvalues, minimum=0)
        if self.eigensolver is not None and not isinstance(self.eigensolver, EigenSolver):
            raise ValueError(
                f"eigensolver must be a flows.EigenSolver or a name, got {self.eigensolver!r}"
            )
        if self.every is not None:
            check_positive_int("Tracking.every (eigen_every)", self.every)
        for name in ("midpoint", "effective"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def is_plain(self) -> bool:
        """Tracking at every saved step, of H or (``effective``) of P⁻¹H at that step's own
        P⁻¹: what a chunked run supports, each saved step on its own."""
        return self.every is None and not self.midpoint

    def rows(self, save_every: int) -> int:
        """The tracking interval in saved rows, checked against ``save_every``."""
        every = save_every if self.every is None else self.every
        if every % save_every:
            raise ValueError(
                f"Tracking.every={every} (eigen_every) must be a multiple of "
                f"save_every={save_every}"
            )
        if self.midpoint and save_every % 2 == 0:
            raise ValueError(
                "midpoint tracking averages neighbouring saved rows, which cancels the "
                "period-2 oscillation only if they are an odd number of steps apart; "
                f"got save_every={save_every} (use 1)"
            )
        return every // save_every

    def check(self, num_params: int) -> Tracking:
        """This tracking, refused if it asks for more eigenvalues than parameters."""
        if self.num_eigenvalues > num_params:
            raise ValueError(
                f"num_eigenvalues={self.num_eigenvalues} exceeds the problem's "
                f"{num_params} parameters"
            )
        if isinstance(self.eigensolver, LOBPCG) and 5 * self.num_eigenvalues >= num_params:
            raise ValueError(
                f"num_eigenvalues={self.num_eigenvalues}: LOBPCG needs 5 × "
                f"{self.num_eigenvalues} < {num_params} parameters; use the dense eigensolver"
            )
        return self


def as_tracking(value: Tracking | int | None) -> Tracking:
    """A `Tracking` from itself, a number of eigenvalues, or None (no tracking)."""
    if value is None:
        return Tracking()
    if isinstance(value, Tracking):
        return value
    return Tracking(num_eigenvalues=value)


# Keywords of the run, not of a method: where they go now.
_MOVED = {
    **{key: f"pass integrator=flows.Integrator({key}=...)"
       for key in ("solver", "rtol", "atol", "dt0", "max_steps", "adjoint")},
    "num_eigenvalues": "pass tracking=flows.Tracking(num_eigenvalues) or tracking=<number>",
    "eigensolver": "pass tracking=flows.Tracking(k, eigensolver=...)",
    "eigen_every": "pass tracking=flows.Tracking(k, every=...)",
    "midpoint": "pass tracking=flows.Tracking(k, midpoint=True)",
    "effective_sharpness": "pass tracking=flows.Tracking(k, effective=True)",
}

# Options renamed to one name per concept: old name -> new name (still accepted, with a
# DeprecationWarning, by `Method` and in configs).
RENAMED_OPTIONS = {"num_tracked": "num_eigenvalues"}


class Method(eqx.Module):
    """A method of `flows.simulate`: a discrete optimizer or a flow, with its options.

    Attributes:
        name: one of `flows.available_methods` (``"gd"``, ``"central_flow"``, …).
        optimizer: for a flow, the update rule it models (by default the one it is named
            after: GD, normalized GD for ``normalized_gd_flow``, …); a flow refuses a rule
            it does not model.
        options: the rule's hyperparameters (``beta2``, ``eps``, ``p``, …) and the flow's
            options (``num_eigenvalues``, ``edge_margin``, …); unknown names are refused.
        integrator: how a flow is integrated; must be the default for an optimizer.
        tracking: in a run of several methods (`RunSpec`), this method's own tracking
            instead of the run's (None).
    """

    name: str = eqx.field(static=True)
    optimizer: str | None = eqx.field(default=None, static=True)
    options: dict[str, Any] = eqx.field(default_factory=dict)
    integrator: Integrator = eqx.field(default_factory=Integrator)
    tracking: Tracking | None = None

    def __check_init__(self):
        check_method(self.name)
        unknown = sorted(set(self.options) - method_options(self.name, self.model))
        if unknown:
            accepted = ", ".join(sorted(method_options(self.name, self.model))) or "none"
            raise ValueError(
                f"method {self.name!r} does not take option(s) {', '.join(map(repr, unknown))}; "
                f"it accepts: {accepted}"
            )
        if not self.is_flow:
            if self.optimizer is not None and self.optimizer != self.name:
                raise ValueError(
                    f"optimizer: only flows model an optimizer; {self.name!r} is an optimizer "
                    "itself"
                )
            if not self.integrator.is_default:
                raise ValueError(
                    f"integrator options apply to flows only, and {self.name!r} is a discrete "
                    "optimizer"
                )
        if self.tracking is not None and not isinstance(self.tracking, Tracking):
            raise ValueError(f"tracking must be a flows.Tracking, got {self.tracking!r}")

    @classmethod
    def of(cls, method: str | Method, *, optimizer: str | None = None,
           integrator: Integrator | None = None, **options: Any) -> Method:
        """``method`` itself, or the `Method` of that name with these options (the keyword
        form of `flows.simulate`); renamed options are accepted with a DeprecationWarning."""
        if isinstance(method, Method):
            if optimizer is not None or integrator is not None or options:
                raise ValueError(
                    "pass the optimizer, integrator and options inside the flows.Method, "
                    "not beside it"
                )
            return method
        if not isinstance(method, str):
            raise ValueError(f"method must be a name or a flows.Method, got {method!r}")
        check_method(method)
        accepted = method_options(method, optimizer)
        for key in sorted(set(options) - accepted):
            if key in _MOVED:
                raise ValueError(f"{key} is no option of {method!r}: {_MOVED[key]}")
        return cls(
            method, optimizer=optimizer, options=renamed(options),
            integrator=Integrator() if integrator is None else integrator,
        )

    @property
    def is_flow(self) -> bool:
        return self.name in FLOWS

    @property
    def model(self) -> str:
        """The update rule's name: the optimizer itself, or the one a flow models."""
        if not self.is_flow:
            return self.name
        return default_optimizer(self.name) if self.optimizer is None else self.optimizer

    def build(self, problem, lr, *, in_sweep: bool = False):
        """The update rule (optimizer) or vector field (flow) for ``problem`` at ``lr``; as
        a member of a vmapped sweep with ``in_sweep`` (`VectorField.in_sweep`)."""
        built = make_method(problem, self.name, lr, optimizer=self.model, options=self.options)
        return built.in_sweep() if in_sweep and self.is_flow else built


def renamed(options: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """``options`` with renamed keys replaced by their new names (DeprecationWarning)."""
    out = dict(options)
    for old, new in RENAMED_OPTIONS.items():
        if old in out:
            if new in out:
                raise ValueError(f"{where}{old} and {new} are one option; give {new} only")
            warnings.warn(
                f"{where}option {old!r} is now called {new!r}", DeprecationWarning, stacklevel=3
            )
            out[new] = out.pop(old)
    return out


def check_start_from(
    methods: dict[str, Method], steps: int, save_every: int, label: str, source: str, step: int
) -> None:
    """That the flow ``label`` can take over the run ``source`` at ``step`` (`RunSpec`'s
    ``start_from``); ValueError says why not."""
    labels = list(methods)
    if label not in labels or source not in labels:
        raise ValueError(f"start_from: {label!r} → {source!r} names a method that is not one "
                         f"of {labels}")
    method, run = methods[label], methods[source]
    if not method.is_flow:
        raise ValueError(f"start_from: {label!r} is a discrete optimizer; only a flow takes "
                         "over a run")
    if run.is_flow:
        raise ValueError(f"start_from: {label!r} can take over a discrete optimizer's run, "
                         f"not the flow {source!r}")
    if run.name != method.model:
        raise ValueError(f"start_from: {label!r} models {method.model!r} and cannot take over "
                         f"{source!r}, a {run.name!r} run")
    check_positive_int(f"start_from's step ({label!r})", step, minimum=0)
    if step >= steps or step % save_every:
        raise ValueError(
            f"start_from: {label!r} takes over at step {step}, which must be a saved step "
            f"before the end (a multiple of save_every={save_every} below steps={steps})")


class RunSpec(eqx.Module):
    """A run of one or more labelled methods on one problem (`flows.runs.run`).

    Attributes:
        methods: the methods by label (a label is any name; one method may appear twice).
        lr: the learning rate, or a tuple of them: a sweep, every method run for each.
        steps: the number of steps (flows: units of step time).
        save_every: save every this many steps (divides ``steps``).
        checkpoint_every: the chunk length, a multiple of ``save_every`` (None: about 20
            chunks). It decides the results of adaptive flows (the integrator restarts at
            every chunk boundary), so it is part of the run, interrupted or not.
        tracking: the eigenvalues tracked for every method (a method may override it).
        divergence_factor: a loss above ``factor · (1 + |L(w₀)|)`` is divergence.
        references: per label, the label of the method whose distance ``‖w − w_ref‖`` is
            recorded at every saved step.
        save_params: keep the parameters (and parameter-sized states) in the files.
        start_from: per label of a flow, ``(label of a discrete run, step k)``: the flow
            takes over that run at step k (`flows.simulate`'s ``start_from``: the run's
            w_k and optimizer state); up to step k its saved steps, loss and parameters
            are the run's, its own diagnostics NaN (integers −1). k is a multiple of
            ``save_every``, and a chunk boundary (the chunk around it is cut there).
    """

    methods: dict[str, Method]
    lr: float | tuple[float, ...] = eqx.field(static=True)
    steps: int = eqx.field(static=True)
    save_every: int = eqx.field(default=1, static=True)
    checkpoint_every: int | None = eqx.field(default=None, static=True)
    tracking: Tracking = eqx.field(default_factory=Tracking)
    divergence_factor: float = eqx.field(default=1e6, static=True)
    references: dict[str, str] = eqx.field(default_factory=dict, static=True)
    save_params: bool = eqx.field(default=True, static=True)
    start_from: dict[str, tuple[str, int]] = eqx.field(default_factory=dict, static=True)

    def __check_init__(self):
        if not self.methods:
            raise ValueError("methods: a run needs at least one method")
        for label, method in self.methods.items():
            if not isinstance(method, Method):
                raise ValueError(f"methods[{label!r}] must be a flows.Method, got {method!r}")
        if isinstance(self.lr, tuple):
            if not self.lr:
                raise ValueError("lr: a sweep needs at least one learning rate")
            for value in self.lr:
                check_lr(value)
        else:
            check_lr(self.lr)
        check_positive_int("steps", self.steps)
        check_positive_int("save_every", self.save_every)
        if self.steps % self.save_every:
            raise ValueError(f"save_every={self.save_every} must divide steps={self.steps}")
        if self.checkpoint_every is not None:
            check_positive_int("checkpoint_every", self.checkpoint_every)
            if self.checkpoint_every % self.save_every:
                raise ValueError(
                    f"checkpoint_every={self.checkpoint_every} must be a multiple of "
                    f"save_every={self.save_every}"
                )
        _check_optional_positive("divergence_factor", self.divergence_factor)
        labels = list(self.methods)
        for label, reference in self.references.items():
            if label not in labels or reference not in labels:
                raise ValueError(
                    f"references: {label!r} → {reference!r} names a method that is not one of "
                    f"{labels}"
                )
        for label, (source, step) in self.start_from.items():
            check_start_from(self.methods, self.steps, self.save_every, label, source, step)
        for label in labels:
            tracking = self.tracking_of(label)
            if not tracking.is_plain:
                raise ValueError(
                    f"{label}: a chunked run tracks eigenvalues at every saved step; "
                    "eigen_every and midpoint need flows.simulate without a checkpoint folder"
                )

    @property
    def is_sweep(self) -> bool:
        return isinstance(self.lr, tuple)

    @property
    def lrs(self) -> tuple[float, ...]:
        return self.lr if self.is_sweep else (self.lr,)

    def tracking_of(self, label: str) -> Tracking:
        own = self.methods[label].tracking
        return self.tracking if own is None else own

    def chunk_length(self) -> int:
        """``checkpoint_every``, or about 20 chunks of whole save intervals."""
        if self.checkpoint_every is not None:
            return self.checkpoint_every
        blocks = self.steps // self.save_every
        return max(1, math.ceil(blocks / 20)) * self.save_every
