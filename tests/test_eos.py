"""Edge-of-stability diagnostics against synthetic series, closed-form Hessians and
quadratics (where the eigenvectors cannot move)."""

import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows.eigen_tracking import track
from flows.eos import (
    edge_entry_step,
    eigenvector_overlap,
    rotation_angle,
    sharpening_summary,
    subspace_overlap,
)
from flows.problems import deep_linear, synthetic_regression, two_layer_scalar

from .helpers import quadratic_problem


def ramp_then_edge(lr=0.1, s0=5.0, rate=0.02, entry=600, wobble=0.3, length=1000, every=10):
    """S rises linearly from s0 until it reaches 2/η at ``entry``, then alternates 2/η ± wobble."""
    steps = np.arange(0, length, every)
    s = s0 + rate * steps
    after = steps >= entry
    s[after] = 2 / lr + wobble * (-1.0) ** (steps[after] // every)
    return steps, s


def test_edge_entry_step():
    steps, s = ramp_then_edge()  # 5 + 0.02 k = 20 at k = 750 > entry: the plateau starts it
    assert int(edge_entry_step(steps, s, 0.1, tolerance=0.0)) == 600
    # With a 5 % tolerance the ramp enters at 0.1 (5 + 0.02 k) ≥ 1.9, k ≥ 700 → beyond
    # 600, so still the plateau; a steeper ramp enters earlier.
    steep = 5.0 + 0.05 * steps
    assert int(edge_entry_step(steps, steep, 0.1, tolerance=0.05)) == 280
    assert int(edge_entry_step(steps, s, 0.01)) == -1
    with_nan = s.copy()
    with_nan[60:62] = np.nan  # steps 600, 610 not tracked: the next one above is 620
    assert int(edge_entry_step(steps, with_nan, 0.1, tolerance=0.0)) == 620
    # An initial transient above the edge is not the entry; coming back up is.
    transient = s.copy()
    transient[:3] = 30.0
    assert int(edge_entry_step(steps, transient, 0.1, tolerance=0.0)) == 600
    assert int(edge_entry_step(steps, np.full(steps.shape, 25.0), 0.1)) == 0
    # Starting at the edge and leaving it for good (late cross-entropy): entered at once.
    assert int(edge_entry_step(steps, 25.0 - 0.02 * steps, 0.1)) == 0


def test_sharpening_summary_of_a_ramp_then_a_plateau():
    lr, wobble = 0.1, 0.3
    steps, s = ramp_then_edge(lr=lr, wobble=wobble, entry=500)
    summary = sharpening_summary(steps, s, lr, tolerance=0.0)
    assert int(summary.entry_step) == 500
    np.testing.assert_allclose(float(summary.initial), 5.0)
    np.testing.assert_allclose(float(summary.sharpening_rate), 0.02, rtol=1e-10)
    np.testing.assert_allclose(float(summary.at_entry), 2 / lr + wobble)
    np.testing.assert_allclose(float(summary.peak), lr * (2 / lr + wobble))
    # After the entry: 49 points alternating 2 ∓ ηδ (starting with −), mean 2 − ηδ/49.
    after = lr * s[steps > 500]
    np.testing.assert_allclose(float(summary.mean_after), after.mean(), rtol=1e-12)
    np.testing.assert_allclose(float(summary.spread_after), after.std(), rtol=1e-10)
    np.testing.assert_allclose(float(summary.fraction_near_edge), 1.0)
    never = sharpening_summary(steps, 5.0 + 0.001 * steps, lr)
    assert int(never.entry_step) == -1
    assert np.isnan(float(never.mean_after))
    np.testing.assert_allclose(float(never.sharpening_rate), 0.001, rtol=1e-10)


def test_overlaps_of_a_vector_rotating_in_a_plane():
    angles = 0.1 * np.arange(6) ** 1.5
    first = np.stack([np.cos(angles), np.sin(angles), np.zeros(6)], axis=1)
    second = np.tile([0.0, 0.0, 1.0], (6, 1))
    vectors = jnp.asarray(np.stack([first, second], axis=2))  # (m, n, k) = (6, 3, 2)
    turned = np.diff(angles)
    np.testing.assert_allclose(
        np.asarray(eigenvector_overlap(vectors)), np.stack([np.cos(turned), np.ones(5)], 1)
    )
    np.testing.assert_allclose(np.asarray(rotation_angle(vectors))[:, 0], turned, atol=1e-7)
    np.testing.assert_allclose(np.asarray(subspace_overlap(vectors)), (np.cos(turned) ** 2 + 1) / 2)
    lag2 = angles[2:] - angles[:-2]
    np.testing.assert_allclose(np.asarray(eigenvector_overlap(vectors, 2))[:, 0], np.cos(lag2))
    # A rotation inside the tracked span leaves the subspace overlap at 1.
    inside = np.stack([first, np.stack([-np.sin(angles), np.cos(angles), 0 * angles], 1)], 2)
    np.testing.assert_allclose(np.asarray(subspace_overlap(jnp.asarray(inside))), 1.0)
    with pytest.raises(ValueError, match="lag"):
        eigenvector_overlap(vectors, 6)


def test_no_rotation_on_a_quadratic_even_when_gd_oscillates():
    problem, _, _ = quadratic_problem([3.0, 1.0, 0.5, 0.1])
    run = flows.simulate(problem, "gd", lr=0.6, steps=20)  # ηλ₁ = 1.8: oscillating
    vectors = track(problem, run.params, 3).vectors
    np.testing.assert_allclose(np.asarray(eigenvector_overlap(vectors)), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(subspace_overlap(vectors, 5)), 1.0, atol=1e-12)


def test_no_rotation_for_a_depth_one_linear_model_beyond_the_edge():
    data = synthetic_regression(n=16, d_in=4, d_out=1, seed=0)
    problem = deep_linear(data, depth=1)
    x = np.asarray(data.x)
    sharpness = np.linalg.eigvalsh(x.T @ x / len(x))[-1]  # L = (1/n) Σ ½(wᵀx − y)²
    run = flows.simulate(problem, "gd", lr=2.2 / sharpness, steps=30)  # unstable: grows
    vectors = track(problem, run.params, 2).vectors
    assert run.loss[-1] > 10 * run.loss[0]
    np.testing.assert_allclose(np.asarray(eigenvector_overlap(vectors)), 1.0, atol=1e-10)


def product_hessian(t1, t2):
    """The Hessian of ½(θ₁θ₂ − 1)², by hand: ∇u∇uᵀ + (u − 1)[[0, 1], [1, 0]]."""
    u = t1 * t2
    return np.array([[t2 * t2, 2 * u - 1], [2 * u - 1, t1 * t1]])


def test_eigenvectors_of_the_product_toy_rotate_during_an_instability():
    problem = two_layer_scalar(theta1=2.5, theta2=0.3)
    s0 = float(flows.sharpness(problem.flat_loss, problem.w0))
    stable = flows.simulate(problem, "gd", lr=0.5 / s0, steps=40)
    unstable = flows.simulate(problem, "gd", lr=2.5 / s0, steps=40)
    turned = {}
    for name, run in [("stable", stable), ("unstable", unstable)]:
        vectors = track(problem, run.params, 1).vectors
        overlap = np.asarray(eigenvector_overlap(vectors))[:, 0]
        by_hand = np.array([np.linalg.eigh(product_hessian(*w))[1][:, -1] for w in run.params])
        expected = np.abs(np.sum(by_hand[1:] * by_hand[:-1], axis=1))
        np.testing.assert_allclose(overlap, expected, atol=1e-9)
        turned[name] = float(np.sum(np.arccos(np.clip(overlap, 0, 1))))
    # The unstable run turns the top eigenvector several times further than the stable one.
    assert turned["unstable"] > 3 * turned["stable"]
    assert turned["unstable"] > 0.3
