"""Linear algebra: one HVP primitive, one top-k eigensolver interface."""

from .eigen import (
    LOBPCG,
    DenseEigh,
    Eigenpairs,
    EigenSolver,
    Lanczos,
    align_signs,
    default_eigensolver,
    sharpness,
    top_eigenpairs,
)
from .hvp import (
    gradient,
    hessian,
    hessian_quadratic_form_grad,
    hessian_quadratic_form_pullback,
    hvp,
    loss_and_gradient,
    preconditioned_hvp,
)

__all__ = [
    "hvp",
    "preconditioned_hvp",
    "hessian",
    "gradient",
    "loss_and_gradient",
    "hessian_quadratic_form_grad",
    "hessian_quadratic_form_pullback",
    "Eigenpairs",
    "EigenSolver",
    "DenseEigh",
    "Lanczos",
    "LOBPCG",
    "default_eigensolver",
    "top_eigenpairs",
    "sharpness",
    "align_signs",
]
