"""flows: continuous-time models of gradient descent, compared step for step with GD.

Losses are pure JAX functions of a parameter pytree (`Problem`); optimizers are
update rules (`flows.optimizers`); flows are vector fields in step time
(`flows.vector_fields`), integrated by diffrax next to the discrete runs
(`flows.integrate`). Options are values (`Method`, `Integrator`, `Tracking`,
`RunSpec`), consumed by `simulate`, `sweep` and the checkpointed runner `flows.runs`.
"""

from . import eigen_tracking, eos, integrate, linalg, optimizers, problems, runs, vector_fields
from .integrate import run_discrete, run_flow, run_method
from .linalg import (
    LOBPCG,
    DenseEigh,
    Eigenpairs,
    EigenSolver,
    Lanczos,
    hessian,
    hessian_quadratic_form_grad,
    hessian_quadratic_form_pullback,
    hvp,
    sharpness,
    top_eigenpairs,
)
from .methods import FLOWS, OPTIMIZERS, available_methods, make_method
from .options import Integrator, Method, RunSpec, Tracking
from .problem import Problem
from .simulate import simulate
from .sweep import sweep
from .trajectory import Trajectory
from .vector_fields import CentralFlow, PrincipalFlow

__version__ = "0.1.0"

__all__ = [
    "Problem",
    "Trajectory",
    "simulate",
    "sweep",
    "Method",
    "Integrator",
    "Tracking",
    "RunSpec",
    "run_discrete",
    "run_flow",
    "run_method",
    "available_methods",
    "make_method",
    "OPTIMIZERS",
    "FLOWS",
    "PrincipalFlow",
    "CentralFlow",
    "hvp",
    "hessian",
    "hessian_quadratic_form_grad",
    "hessian_quadratic_form_pullback",
    "top_eigenpairs",
    "sharpness",
    "Eigenpairs",
    "EigenSolver",
    "DenseEigh",
    "Lanczos",
    "LOBPCG",
    "linalg",
    "optimizers",
    "problems",
    "vector_fields",
    "eigen_tracking",
    "eos",
    "integrate",
    "runs",
]
