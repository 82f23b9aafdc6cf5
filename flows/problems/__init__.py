"""The problem zoo: quadratics, toy losses, networks, and the data sets they train on.

`PROBLEMS` and `DATASETS` map configuration names to builders, e.g.
``PROBLEMS["mlp"](data=DATASETS["digits"](n=500), widths=[32, 32], activation="tanh")``.
"""

from __future__ import annotations

from collections.abc import Callable

from flows.problem import Problem
from flows.problems.adapters import from_equinox, from_flax
from flows.problems.architectures import ResNet, VisionTransformer, resnet, vit
from flows.problems.data import (
    CIFAR10_CLASSES,
    Dataset,
    chebyshev_data,
    cifar10,
    digits,
    synthetic_classification,
    synthetic_regression,
)
from flows.problems.losses import cross_entropy, mean_over_chunks, mean_squared_error, mse
from flows.problems.networks import (
    ACTIVATIONS,
    LOSSES,
    chebyshev,
    cnn,
    deep_linear,
    mlp,
    reference_mlp,
)
from flows.problems.quadratic import (
    QuadraticLoss,
    quadratic,
    quadratic_from_matrix,
    quadratic_hessian,
)
from flows.problems.toys import diagonal_quadratic, scalar_product, two_layer_scalar, valley

__all__ = [
    "ACTIVATIONS",
    "CIFAR10_CLASSES",
    "DATASETS",
    "LOSSES",
    "PROBLEMS",
    "Dataset",
    "QuadraticLoss",
    "ResNet",
    "VisionTransformer",
    "chebyshev",
    "chebyshev_data",
    "cifar10",
    "cnn",
    "cross_entropy",
    "deep_linear",
    "diagonal_quadratic",
    "digits",
    "from_equinox",
    "from_flax",
    "mean_over_chunks",
    "mean_squared_error",
    "mlp",
    "mse",
    "quadratic",
    "quadratic_from_matrix",
    "quadratic_hessian",
    "reference_mlp",
    "resnet",
    "scalar_product",
    "synthetic_classification",
    "synthetic_regression",
    "two_layer_scalar",
    "valley",
    "vit",
]

PROBLEMS: dict[str, Callable[..., Problem]] = {
    "quadratic": quadratic,
    "diagonal_quadratic": diagonal_quadratic,
    "valley": valley,
    "scalar_product": scalar_product,
    "two_layer_scalar": two_layer_scalar,
    "chebyshev": chebyshev,
    "mlp": mlp,
    "deep_linear": deep_linear,
    "cnn": cnn,
    "resnet": resnet,
    "vit": vit,
    "reference_mlp": reference_mlp,
}

DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": digits,
    "synthetic_regression": synthetic_regression,
    "synthetic_classification": synthetic_classification,
    "cifar10": cifar10,
}
