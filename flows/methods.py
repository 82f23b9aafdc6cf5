"""Method names → update rules and vector fields, shared by `simulate`, `sweep` and the CLI.

A *discrete* method is an update rule run step by step; a *flow* is a vector
field built from a problem and an update rule (``optimizer=``, GD by default),
so every flow works for every rule where the mathematics allows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from .optimizers import (
    DAL,
    GD,
    Adam,
    AdamW,
    Momentum,
    Nesterov,
    NormalizedGD,
    RMSProp,
    ScalarRMSProp,
    SqrtGD,
)
from .optimizers.base import UpdateRule
from .problem import Problem
from .vector_fields import GradientFlow, ModifiedFlow
from .vector_fields.base import VectorField
from .vector_fields.central_flow import CentralFlow
from .vector_fields.principal_flow import PrincipalFlow
from .vector_fields.sharpness_reduction_flow import NormalizedGDFlow, SqrtGDFlow

__all__ = [
    "OPTIMIZERS",
    "FLOWS",
    "available_methods",
    "is_flow",
    "check_method",
    "default_optimizer",
    "make_rule",
    "make_method",
    "method_options",
]

#: Discrete optimizers by name (each name is also a method of `simulate`).
OPTIMIZERS: dict[str, type[UpdateRule]] = {
    "gd": GD,
    "normalized_gd": NormalizedGD,
    "sqrt_gd": SqrtGD,
    "rmsprop": RMSProp,
    "scalar_rmsprop": ScalarRMSProp,
    "dal": DAL,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adam": Adam,
    "adamw": AdamW,
}

#: What each optimizer is, in words (for messages).
DESCRIPTIONS = {
    "gd": "gradient descent",
    "normalized_gd": "normalized GD",
    "sqrt_gd": "GD on √L",
    "rmsprop": "RMSProp",
    "scalar_rmsprop": "scalar RMSProp",
    "dal": "DAL",
    "momentum": "heavy-ball momentum",
    "nesterov": "Nesterov momentum",
    "adam": "Adam",
    "adamw": "AdamW",
}

#: Flows by name: vector-field classes built as ``cls(problem=..., rule=..., **options)``.
FLOWS: dict[str, type[VectorField]] = {
    "gradient_flow": GradientFlow,
    "modified_flow": ModifiedFlow,
    "principal_flow": PrincipalFlow,
    "normalized_gd_flow": NormalizedGDFlow,
    "sqrt_gd_flow": SqrtGDFlow,
    "central_flow": CentralFlow,
}


def available_methods() -> list[str]:
    """Every method name `simulate` accepts: the optimizers, then the flows."""
    return sorted(OPTIMIZERS) + sorted(FLOWS)


def is_flow(method: str) -> bool:
    check_method(method)
    return method in FLOWS


def default_optimizer(method: str) -> str:
    """The update rule a method runs or, for a flow, models unless told otherwise: the
    optimizer a flow is named after (``normalized_gd_flow`` → ``normalized_gd``), else GD."""
    check_method(method)
    if method in OPTIMIZERS:
        return method
    return FLOWS[method].default_optimizer


def check_method(method: str) -> None:
    if method not in OPTIMIZERS and method not in FLOWS:
        choices = ", ".join(available_methods())
        raise ValueError(f"unknown method {method!r}; choose one of {choices}")


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def method_options(method: str, optimizer: str | None = None) -> set[str]:
    """The keyword options a method accepts (rule hyperparameters and flow options)."""
    if optimizer is None:
        optimizer = default_optimizer(method)
    check_method(method)
    if method in OPTIMIZERS:
        return _field_names(OPTIMIZERS[method]) - {"lr"}
    _check_models(method, optimizer)
    rule_names = _field_names(OPTIMIZERS[optimizer]) - {"lr"}
    return rule_names | (_field_names(FLOWS[method]) - {"problem", "rule"})


def _check_models(flow: str, optimizer: str) -> None:
    """A flow refuses an update rule it does not model (`VectorField.models`)."""
    _check_optimizer(optimizer)
    models = FLOWS[flow].models
    if models is not None and optimizer not in models:
        described = " or ".join(DESCRIPTIONS[m] for m in models)
        names = " or ".join(repr(m) for m in models)
        raise ValueError(
            f"{flow} does not model the optimizer {optimizer!r}: it models {described} only "
            f"(optimizer = {names})"
        )


def _check_optimizer(optimizer: str) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {optimizer!r}; choose one of {', '.join(sorted(OPTIMIZERS))}"
        )


def make_rule(optimizer: str, lr: Any, problem: Problem, options: Mapping[str, Any]) -> UpdateRule:
    """The update rule ``optimizer`` with learning rate ``lr`` and its options."""
    _check_optimizer(optimizer)
    cls = OPTIMIZERS[optimizer]
    kwargs = {k: v for k, v in options.items() if k in _field_names(cls)}
    if "loss_min" in _field_names(cls) and "loss_min" not in kwargs:
        kwargs["loss_min"] = problem.loss_min
    return cls(lr=jnp.asarray(lr, dtype=problem.w0.dtype), **kwargs)


def make_method(
    problem: Problem,
    method: str,
    lr: Any,
    *,
    optimizer: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> UpdateRule | VectorField:
    """Build the update rule (discrete method) or the vector field (flow).

    ``optimizer`` is the rule a flow models (default: `default_optimizer`). Raises
    ValueError naming any option the method does not accept, or a rule a flow does not
    model.
    """
    options = dict(options or {})
    if optimizer is None:
        optimizer = default_optimizer(method)
    accepted = method_options(method, optimizer)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f"method {method!r} does not take option(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(sorted(accepted)) or 'none'}"
        )
    if method in OPTIMIZERS:
        return make_rule(method, lr, problem, options)
    rule = make_rule(optimizer, lr, problem, options)
    rule.check_continuous()
    cls = FLOWS[method]
    flow_kwargs = {k: v for k, v in options.items() if k in _field_names(cls)}
    return cls(problem=problem, rule=rule, **flow_kwargs)
