"""Tall-and-skinny block operations, written as XLA's CPU backend runs them fast.

- XLA lowers ``A @ B`` for A of n×k with a small k to a matrix product that on a CPU runs
  ~10× slower than the same sum written as k fused multiply-adds over columns (at n = 1e5
  and k = m = 5: 1.5 ms against 0.14 ms; measured in ``benchmarks/step_profile.py``'s
  setting): `tall_times_small`.
- A vmapped Hessian-vector product on a block computed in the same program (the
  eigen-basis refinement's orthonormalised block) runs 1.5–2× slower on a CPU than the
  same products column by column (a 1-iteration block Rayleigh–Ritz: 7.2 against 4.1 ms
  at 11k parameters, 61 against 44 ms at 113k): `map_columns`. On an accelerator the
  batched form is kept.

The eigen-basis refinement and the central flow's rates do these at every step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["map_columns", "tall_times_small"]

#: Up to this inner size the column sum is used (beyond it XLA's product catches up).
MAX_INNER = 16


def tall_times_small(a: Float[Array, "n k"], b: Float[Array, "k m"]) -> Float[Array, "n m"]:
    """``a @ b`` for a tall a and a small b (k ≤ `MAX_INNER`): ``Σ_i a[:, i] b[i]``."""
    k = a.shape[1]
    if k > MAX_INNER or k == 0:
        return a @ b
    return sum(a[:, i, None] * b[i] for i in range(k))


def map_columns(
    fn: Callable[[Float[Array, " n"]], Float[Array, " p"]], block: Float[Array, "n m"]
) -> Float[Array, "p m"]:
    """``fn`` applied to each column of ``block`` (``jax.vmap(fn, 1, 1)``): one call per
    column, unrolled, on a CPU for up to `MAX_INNER` columns; batched otherwise."""
    m = block.shape[1]
    if m > MAX_INNER or m == 0 or jax.default_backend() != "cpu":
        return jax.vmap(fn, in_axes=1, out_axes=1)(block)
    return jnp.stack([fn(block[:, i]) for i in range(m)], axis=1)
