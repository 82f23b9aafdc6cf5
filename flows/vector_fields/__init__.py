"""Vector fields (one file per flow), all called as ``(t, y, args)`` in step time."""

from .base import VectorField, initial_optimizer_state
from .gradient_flow import GradientFlow
from .modified_flow import ModifiedFlow

__all__ = ["VectorField", "initial_optimizer_state", "GradientFlow", "ModifiedFlow"]
