"""Update rules (pure init/update pairs with a continuous-time derivative)."""

from .adam import Adam, AdamW
from .base import UpdateRule
from .gd import DAL, GD, NormalizedGD, SqrtGD
from .momentum import Momentum, Nesterov
from .rmsprop import RMSProp, ScalarRMSProp

__all__ = [
    "UpdateRule", "GD", "NormalizedGD", "SqrtGD", "DAL", "RMSProp", "ScalarRMSProp",
    "Momentum", "Nesterov", "Adam", "AdamW",
]
