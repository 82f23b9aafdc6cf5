"""Update rules (pure init/update pairs with a continuous-time derivative)."""

from .base import UpdateRule
from .gd import DAL, GD, NormalizedGD, SqrtGD
from .rmsprop import RMSProp, ScalarRMSProp

__all__ = ["UpdateRule", "GD", "NormalizedGD", "SqrtGD", "DAL", "RMSProp", "ScalarRMSProp"]
