"""Vector fields (one file per flow), all called as ``(t, y, args)`` in step time."""

from .base import VectorField, initial_optimizer_state
from .central_flow import CentralFlow, CentralFlowSolver, EdgeSummary
from .gradient_flow import GradientFlow
from .modified_flow import ModifiedFlow
from .principal_flow import PrincipalFlow
from .sharpness_reduction_flow import NormalizedGDFlow, SharpnessReductionFlow, SqrtGDFlow

__all__ = [
    "VectorField",
    "initial_optimizer_state",
    "GradientFlow",
    "ModifiedFlow",
    "PrincipalFlow",
    "SharpnessReductionFlow",
    "NormalizedGDFlow",
    "SqrtGDFlow",
    "CentralFlow",
    "CentralFlowSolver",
    "EdgeSummary",
]
