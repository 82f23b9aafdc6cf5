"""Comparing a flow with the discrete optimizer it models.

- `gaussian_smooth`: GD at the edge of stability oscillates from step to step; its time
  average, the quantity the central flow predicts (Cohen, Damian, Talwalkar, Kolter and
  Lee, ICLR 2025), is read off by Gaussian smoothing along the steps (their code uses
  ``scipy.ndimage.gaussian_filter1d(x, sigma=50, mode="nearest")``).
- `relative_distance`: ``‖w_A(k) − w_B(k)‖ / ‖w_B(k) − w_B(0)‖``, the distance between two
  runs relative to how far the reference has travelled.
- `first_at_edge`: the first saved step where a central flow's Σ is nonzero.

Pure jnp, jit- and vmap-safe (a leading batch axis via `jax.vmap`).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = ["gaussian_smooth", "relative_distance", "first_at_edge"]


def gaussian_smooth(
    series: Float[Array, " T"], sigma: float, truncate: float = 4.0
) -> Float[Array, " T"]:
    """Convolve ``series`` with a Gaussian of standard deviation ``sigma`` (in samples).

    The kernel is cut at ``truncate · sigma`` and the ends are padded with the edge
    values (``mode="nearest"`` of ``scipy.ndimage.gaussian_filter1d``, which it matches).
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    series = jnp.asarray(series)
    radius = int(math.floor(truncate * sigma + 0.5))
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.real(series).dtype)
    kernel = jnp.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / jnp.sum(kernel)
    padded = jnp.pad(series, (radius, radius), mode="edge")
    return jnp.convolve(padded, kernel, mode="valid")


def relative_distance(
    params: Float[Array, "T n"], reference: Float[Array, "T n"]
) -> Float[Array, " T"]:
    """``‖w(k) − w_ref(k)‖ / ‖w_ref(k) − w_ref(0)‖`` (NaN at k = 0)."""
    params, reference = jnp.asarray(params), jnp.asarray(reference)
    travelled = jnp.linalg.norm(reference - reference[0], axis=-1)
    distance = jnp.linalg.norm(params - reference, axis=-1)
    return distance / jnp.where(travelled > 0, travelled, jnp.nan)


def first_at_edge(sigma_trace: Float[Array, " T"]) -> int:
    """The index of the first saved step with ``tr Σ > 0`` (the central flow's
    ``extras["sigma_trace"]``): where the flow reached the edge; −1 if it never did."""
    active = np.asarray(sigma_trace) > 0
    return int(np.argmax(active)) if np.any(active) else -1
