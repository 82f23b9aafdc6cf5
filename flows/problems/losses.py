"""Per-example losses, averaged over examples.

All three are written with holomorphic operations where the mathematics allows
(``d * d`` rather than ``abs(d) ** 2``), so a loss built from them can be evaluated at
complex parameters, as the principal flow requires.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Inexact, Scalar

__all__ = ["cross_entropy", "mean_squared_error", "mse"]


def _per_example_sum(values: Array) -> Array:
    """Sum over every axis but the first (a 1-D input is one value per example)."""
    if values.ndim <= 1:
        return values
    return jnp.sum(values.reshape(values.shape[0], -1), axis=1)


def mse(outputs: Inexact[Array, "n ..."], targets: Inexact[Array, "n ..."]) -> Scalar:
    """Half the squared error summed over outputs, averaged over examples.

    ``L = (1/n) Σ_i ½‖f(x_i) − y_i‖²``: the convention of Cohen, Kaur, Li, Kolter and
    Talwalkar, "Gradient descent on neural networks typically occurs at the edge of
    stability" (ICLR 2021), used there with one-hot targets for classification.
    """
    diff = outputs - targets
    return 0.5 * jnp.mean(_per_example_sum(diff * diff))


def mean_squared_error(outputs: Inexact[Array, "..."], targets: Inexact[Array, "..."]) -> Scalar:
    """The plain mean of squared errors over all entries, ``L = mean((f(x) − y)²)``.

    The loss of the central-flow reference case (Cohen, Damian, Talwalkar, Kolter and
    Lee, "Understanding optimization in deep learning with central flows", ICLR 2025).
    """
    diff = outputs - targets
    return jnp.mean(diff * diff)


def cross_entropy(logits: Inexact[Array, "n k"], labels_onehot: Inexact[Array, "n k"]) -> Scalar:
    """Softmax cross-entropy with one-hot (or soft) labels, averaged over examples.

    ``L = −(1/n) Σ_i Σ_c y_ic log softmax(z_i)_c``. The log-sum-exp is shifted by the
    (gradient-stopped) maximum real part, so it stays stable for real logits and is
    holomorphic in the logits.
    """
    shift = jax.lax.stop_gradient(jnp.max(jnp.real(logits), axis=-1, keepdims=True))
    shifted = logits - shift
    log_norm = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
    log_probs = shifted - log_norm
    return -jnp.mean(jnp.sum(labels_onehot * log_probs, axis=-1))
