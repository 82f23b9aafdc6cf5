"""flows: continuous-time models of gradient descent, compared step for step with GD.

Losses are pure JAX functions of a parameter pytree (`Problem`); optimizers are
update rules (`flows.optimizers`); flows are vector fields in step time
(`flows.vector_fields`), integrated by diffrax next to the discrete runs
(`simulate`).
"""

from . import eigen_tracking, eos, linalg, optimizers, problems, vector_fields
from .checkpoint import MethodSpec, run_methods
from .linalg import (
    LOBPCG,
    DenseEigh,
    Eigenpairs,
    EigenSolver,
    Lanczos,
    hessian,
    hessian_quadratic_form_grad,
    hvp,
    sharpness,
    top_eigenpairs,
)
from .methods import FLOWS, OPTIMIZERS, available_methods, make_method
from .problem import Problem
from .simulate import run_discrete, run_flow, run_method, simulate, track_eigenpairs
from .sweep import sweep
from .trajectory import Trajectory
from .vector_fields import CentralFlow, PrincipalFlow

__version__ = "0.1.0"

__all__ = [
    "Problem",
    "Trajectory",
    "simulate",
    "sweep",
    "run_methods",
    "MethodSpec",
    "run_discrete",
    "run_flow",
    "run_method",
    "track_eigenpairs",
    "available_methods",
    "make_method",
    "OPTIMIZERS",
    "FLOWS",
    "PrincipalFlow",
    "CentralFlow",
    "hvp",
    "hessian",
    "hessian_quadratic_form_grad",
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
]
