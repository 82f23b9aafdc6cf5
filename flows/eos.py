"""Edge-of-stability diagnostics: where a run enters the edge, how it sharpened, and how
its Hessian eigenvectors rotate.

- Progressive sharpening and the edge of stability (Cohen, Kaur, Li, Kolter, Talwalkar,
  "Gradient descent on neural networks typically occurs at the edge of stability",
  ICLR 2021): while ``ηS < 2`` the sharpness S tends to rise; once it reaches ``2/η``
  it hovers there. `edge_entry_step` and `sharpening_summary` read both phases off a
  tracked sharpness series.
- Eigenvector rotation (Wang & Roberts, "Can stability be detrimental? Better
  generalization through gradient descent instabilities", 2024): during instabilities
  the top eigenvectors rotate (for depth > 1), measured by the per-eigenvector overlap
  ``|⟨u_i(τ), u_i(τ − Δ)⟩|`` and the subspace overlap ``‖U(τ)ᵀU(τ − Δ)‖²_F / k``; both
  are 1 when the eigenvectors do not move (a quadratic).

All functions are pure jnp (jit- and vmap-safe, NaN rows of a diverged run are ignored
or propagate as NaN), so they apply to sweeps with a leading batch axis via `jax.vmap`.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

__all__ = [
    "edge_entry_step",
    "SharpeningSummary",
    "sharpening_summary",
    "eigenvector_overlap",
    "subspace_overlap",
    "rotation_angle",
]


def _normalized(sharpness: Array, lr) -> Array:
    """``η S`` (pass ``lr=1`` for an effective sharpness ``λ_max(P⁻¹H)``)."""
    return jnp.asarray(lr) * jnp.asarray(sharpness)


def edge_entry_step(
    steps: Int[Array, " m"],
    sharpness: Float[Array, " m"],
    lr: float | Array = 1.0,
    *,
    threshold: float = 2.0,
    tolerance: float = 0.05,
) -> Int[Array, ""]:
    """The step where the run enters the edge of stability: the first step where
    ``η S ≥ threshold · (1 − tolerance)`` after having been below that level.

    Networks often start above ``2/η`` and drop below it within a few steps (the initial
    transient); entering the edge means coming back up. A run that never comes back up
    (or is never below) enters at its first point at the level; one that never reaches
    it gives −1.

    ``threshold = 2`` is the stability limit of GD on a quadratic (``S = 2/η``); for an
    effective sharpness ``λ_max(P⁻¹H)`` of a preconditioned rule pass ``lr = 1``. The
    tolerance absorbs the tracking interval and the small gap below ``2/η`` at which the
    sharpness settles. NaN entries count neither as reached nor as below.
    """
    steps = jnp.asarray(steps)
    scaled = _normalized(sharpness, lr)
    level = threshold * (1.0 - tolerance)
    reached = scaled >= level  # NaN → False
    below = scaled < level
    below_before = (jnp.cumsum(below) - below) > 0
    entered = reached & below_before
    return jnp.where(
        jnp.any(entered),
        steps[jnp.argmax(entered)],
        jnp.where(jnp.any(reached), steps[jnp.argmax(reached)], -1),
    )


class SharpeningSummary(eqx.Module):
    """Progressive sharpening and the edge-of-stability phase of one run.

    Attributes:
        initial: ``S`` at the first tracked step.
        entry_step: the step where the edge is entered (`edge_entry_step`), −1 if never.
        at_entry: ``S`` at the entry step (NaN if never).
        sharpening_rate: least-squares slope of ``S`` per step before the entry (over
            the whole run if never entered): the progressive-sharpening rate.
        peak: the largest ``ηS`` of the run.
        mean_after: the mean of ``ηS`` after the entry (≈ 2 when the sharpness hovers
            at ``2/η``; NaN if never entered).
        spread_after: the standard deviation of ``ηS`` after the entry.
        fraction_near_edge: the fraction of tracked points after the entry with
            ``|ηS − threshold| ≤ band · threshold``.
    """

    initial: Float[Array, ""]
    entry_step: Int[Array, ""]
    at_entry: Float[Array, ""]
    sharpening_rate: Float[Array, ""]
    peak: Float[Array, ""]
    mean_after: Float[Array, ""]
    spread_after: Float[Array, ""]
    fraction_near_edge: Float[Array, ""]


def _masked_mean(x: Array, mask: Array) -> Array:
    count = jnp.sum(mask)
    return jnp.where(count > 0, jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(count, 1), jnp.nan)


def sharpening_summary(
    steps: Int[Array, " m"],
    sharpness: Float[Array, " m"],
    lr: float | Array = 1.0,
    *,
    threshold: float = 2.0,
    tolerance: float = 0.05,
    band: float = 0.1,
) -> SharpeningSummary:
    """Summarize a sharpness series: progressive sharpening, then the edge of stability.

    Args:
        steps: the tracked steps, shape (m,).
        sharpness: ``S`` at those steps (NaN entries, e.g. after a divergence or where
            nothing was tracked, are ignored).
        lr: η; pass 1 for an effective sharpness ``λ_max(P⁻¹H)``.
        threshold, tolerance: as in `edge_entry_step`.
        band: the relative half-width of "near the edge" in ``fraction_near_edge``.
    """
    steps = jnp.asarray(steps)
    sharpness = jnp.asarray(sharpness)
    scaled = _normalized(sharpness, lr)
    valid = jnp.isfinite(scaled)
    entry = edge_entry_step(steps, sharpness, lr, threshold=threshold, tolerance=tolerance)
    entered = entry >= 0
    before = valid & (~entered | (steps < entry))
    after = valid & entered & (steps > entry)

    # Least-squares slope of S against the step over the points before the entry.
    t = steps.astype(scaled.dtype)
    t_mean = _masked_mean(t, before)
    s_mean = _masked_mean(sharpness, before)
    dt = jnp.where(before, t - t_mean, 0.0)
    ds = jnp.where(before, sharpness - s_mean, 0.0)
    denominator = jnp.sum(dt * dt)
    safe = jnp.where(denominator > 0, denominator, 1.0)
    rate = jnp.where(denominator > 0, jnp.sum(dt * ds) / safe, jnp.nan)

    mean_after = _masked_mean(scaled, after)
    spread = jnp.sqrt(_masked_mean((scaled - mean_after) ** 2, after))
    near = jnp.abs(scaled - threshold) <= band * threshold
    first_valid = jnp.argmax(valid)
    return SharpeningSummary(
        initial=sharpness[first_valid],
        entry_step=entry,
        at_entry=jnp.where(entered, sharpness[jnp.argmax(steps == entry)], jnp.nan),
        sharpening_rate=rate,
        peak=jnp.max(jnp.where(valid, scaled, -jnp.inf)),
        mean_after=mean_after,
        spread_after=spread,
        fraction_near_edge=_masked_mean(near.astype(scaled.dtype), after),
    )


def _lagged(vectors: Array, lag: int) -> tuple[Array, Array]:
    if isinstance(lag, bool) or not isinstance(lag, int) or lag <= 0:
        raise ValueError(f"lag must be a positive integer, got {lag!r}")
    if vectors.ndim != 3:
        raise ValueError(f"vectors must have shape (m, n, k), got {vectors.shape}")
    if lag >= vectors.shape[0]:
        raise ValueError(f"lag={lag} must be smaller than the number of rows {vectors.shape[0]}")
    return vectors[lag:], vectors[:-lag]


def eigenvector_overlap(vectors: Float[Array, "m n k"], lag: int = 1) -> Float[Array, "m-lag k"]:
    """Per-eigenvector overlap ``|⟨u_i(τ), u_i(τ − Δ)⟩|`` (Wang & Roberts 2024).

    ``vectors`` are unit eigenvectors as columns at m tracked points (e.g.
    `flows.eigen_tracking.EigenTrack.vectors`); ``Δ`` is ``lag`` tracked points. Row j
    of the result compares point ``j + lag`` with point j. It is 1 while ``u_i`` stays
    put and drops as it rotates (or when two eigenvalues cross and swap order).
    """
    now, then = _lagged(jnp.asarray(vectors), lag)
    return jnp.abs(jnp.sum(now * then, axis=1))


def subspace_overlap(vectors: Float[Array, "m n k"], lag: int = 1) -> Float[Array, " m-lag"]:
    """Subspace overlap ``‖U(τ)ᵀ U(τ − Δ)‖²_F / k`` of the top-k eigenspaces (Wang &
    Roberts 2024): 1 when the span is unchanged (even if the vectors inside it rotate or
    swap), ``cos²θ`` averaged over the principal angles otherwise."""
    now, then = _lagged(jnp.asarray(vectors), lag)
    gram = jnp.einsum("mnk,mnl->mkl", now, then)
    return jnp.sum(gram * gram, axis=(1, 2)) / vectors.shape[2]


def rotation_angle(vectors: Float[Array, "m n k"], lag: int = 1) -> Float[Array, "m-lag k"]:
    """The angle (radians, in [0, π/2]) each eigenvector turned over ``lag`` tracked
    points: ``arccos |⟨u_i(τ), u_i(τ − Δ)⟩|``. Summed over a run it is the total
    rotation."""
    return jnp.arccos(jnp.clip(eigenvector_overlap(vectors, lag), 0.0, 1.0))
