"""Eigen tracking against dense numpy linear algebra and closed forms."""

import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows.eigen_tracking import (
    midpoints,
    p_inv_series,
    track,
    track_trajectory,
)
from flows.problems import valley

from .helpers import quadratic_problem


def valley_hessian(x, y):
    """The Hessian of (1 + x²)y², by hand."""
    return np.array([[2 * y * y, 4 * x * y], [4 * x * y, 2 * (1 + x * x)]])


def test_midpoints_cancel_the_period_two_oscillation_and_keep_a_linear_trend():
    i = np.arange(9.0)
    centre = np.stack([1.0 + 0.3 * i, -2.0 + 0.1 * i], axis=1)
    series = centre + np.outer((-1.0) ** i, [0.5, -0.25])
    mid = np.asarray(midpoints(jnp.asarray(series)))
    np.testing.assert_allclose(mid[1:-1], centre[1:-1], atol=1e-14)
    np.testing.assert_allclose(mid[0], 0.5 * (series[0] + series[1]), atol=1e-14)
    np.testing.assert_allclose(mid[-1], 0.5 * (series[-2] + series[-1]), atol=1e-14)


def test_track_matches_dense_eigh_every_n_rows_with_aligned_signs():
    eigs = [3.0, 1.0, 0.5, -0.2]
    problem, h, _ = quadratic_problem(eigs)
    rng = np.random.default_rng(3)
    params = jnp.asarray(rng.standard_normal((7, 4)))
    result = track(problem, params, 2, every=3, steps=jnp.arange(7) * 10)
    np.testing.assert_array_equal(np.asarray(result.steps), [0, 30, 60])
    np.testing.assert_array_equal(np.asarray(result.rows), [0, 3, 6])
    values, vectors = np.linalg.eigh(h)
    np.testing.assert_allclose(np.asarray(result.values), np.tile([3.0, 1.0], (3, 1)), atol=1e-10)
    for row in np.asarray(result.vectors):
        np.testing.assert_allclose(np.abs(row.T @ vectors[:, [3, 2]]), np.eye(2), atol=1e-10)
    # Signs aligned along the track: consecutive overlaps are +1, not ±1.
    overlaps = np.einsum("mnk,mnk->mk", result.vectors[1:], result.vectors[:-1])
    np.testing.assert_allclose(np.asarray(overlaps), 1.0, atol=1e-10)


def test_valley_sharpness_on_the_minimizers_is_two_one_plus_x_squared():
    x = np.linspace(-1.5, 2.0, 8)
    params = jnp.asarray(np.stack([x, np.zeros_like(x)], axis=1))
    result = track(valley(), params, 2)
    np.testing.assert_allclose(np.asarray(result.sharpness), 2 * (1 + x**2), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(result.values[:, 1]), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.abs(np.asarray(result.vectors[:, 1, 0])), 1.0, atol=1e-12)


def test_midpoint_tracking_sees_the_valley_floor_under_an_oscillation():
    steps = np.arange(11)
    x = 1.0 - 0.05 * steps
    y = 0.3 * (-1.0) ** steps
    params = jnp.asarray(np.stack([x, y], axis=1))
    at_mid = track(valley(), params, 1, midpoint=True)
    floor = 2 * (1 + x[1:-1] ** 2)
    np.testing.assert_allclose(np.asarray(at_mid.sharpness[1:-1]), floor, rtol=1e-12)
    at_iterates = track(valley(), params, 1)
    expected = [np.linalg.eigvalsh(valley_hessian(a, b))[-1] for a, b in zip(x, y)]
    np.testing.assert_allclose(np.asarray(at_iterates.sharpness), expected, rtol=1e-12)


def test_nan_rows_give_nan_and_do_not_break_the_track():
    problem, h, _ = quadratic_problem([2.0, 1.0, 0.1])
    params = np.random.default_rng(0).standard_normal((5, 3))
    params[2] = np.nan
    result = track(problem, jnp.asarray(params), 1)
    values = np.asarray(result.sharpness)
    assert np.isnan(values[2])
    np.testing.assert_allclose(values[[0, 1, 3, 4]], 2.0, atol=1e-10)


def rmsprop_by_hand(h, w0, lr, beta2, steps):
    """RMSProp on ½wᵀHw in numpy: ν_{−1} = g₀², ν_k = β₂ν_{k−1} + (1−β₂)g_k², P_k⁻¹ = η/√ν_k."""
    w, nu = w0.copy(), (h @ w0) ** 2
    ws, p_invs = [], []
    for _ in range(steps + 1):
        g = h @ w
        nu = beta2 * nu + (1 - beta2) * g * g
        ws.append(w.copy())
        p_invs.append(lr / np.sqrt(nu))
        w = w - p_invs[-1] * g
    return np.array(ws), np.array(p_invs)


def test_effective_sharpness_of_rmsprop_is_the_top_eigenvalue_of_p_inv_h():
    problem, h, w0 = quadratic_problem([4.0, 1.0, 0.3])
    lr, beta2, steps = 0.05, 0.9, 12
    trajectory = flows.simulate(
        problem, "rmsprop", lr=lr, steps=steps, beta2=beta2,
        tracking=flows.Tracking(2, effective=True),
    )
    ws, p_invs = rmsprop_by_hand(h, w0, lr, beta2, steps)
    np.testing.assert_allclose(np.asarray(trajectory.params), ws, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(trajectory.extras["p_inv"]), p_invs, rtol=1e-10)
    expected = [np.sort(np.linalg.eigvals(np.diag(p) @ h).real)[::-1][:2] for p in p_invs]
    np.testing.assert_allclose(np.asarray(trajectory.eigenvalues), expected, rtol=1e-9)
    # The same from the trajectory and the rule, without the saved series.
    rule = flows.make_method(problem, "rmsprop", lr, options={"beta2": beta2})
    again = track_trajectory(
        problem, flows.simulate(problem, "rmsprop", lr=lr, steps=steps, beta2=beta2), 2, rule=rule
    )
    np.testing.assert_allclose(np.asarray(again.values), expected, rtol=1e-9)


def test_effective_sharpness_of_bias_corrected_rmsprop_uses_the_step_p_inv():
    """From ν_{−1} = 0 with bias correction, step k uses P_k⁻¹ = η/√(ν_k/(1 − β₂^{k+1})):
    the flow's count τ + ½ at τ = k would be off by up to √(1 + √β₂) ≈ √2 at k = 0."""
    problem, h, w0 = quadratic_problem([4.0, 1.0, 0.3])
    lr, beta2, steps = 0.05, 0.9, 6
    options = dict(beta2=beta2, initial_nu=0.0, bias_correction=True)
    trajectory = flows.simulate(
        problem, "rmsprop", lr=lr, steps=steps, tracking=flows.Tracking(1, effective=True),
        **options,
    )
    w, nu, p_invs = w0.copy(), np.zeros(3), []
    for k in range(steps + 1):
        g = h @ w
        nu = beta2 * nu + (1 - beta2) * g * g
        p_invs.append(lr / np.sqrt(nu / (1 - beta2 ** (k + 1))))
        w = w - p_invs[-1] * g
    p_invs = np.array(p_invs)
    np.testing.assert_allclose(np.asarray(trajectory.extras["p_inv"]), p_invs, rtol=1e-10)
    expected = [np.max(np.linalg.eigvals(np.diag(p) @ h).real) for p in p_invs]
    np.testing.assert_allclose(np.asarray(trajectory.eigenvalues[:, 0]), expected, rtol=1e-9)
    rule = flows.make_method(problem, "rmsprop", lr, options=options)
    series = p_inv_series(
        problem, rule, trajectory.steps, trajectory.params, trajectory.extras
    )
    np.testing.assert_allclose(np.asarray(series), p_invs, rtol=1e-10)
    # A flow's rows are P⁻¹(τ) of its own state ν(τ) ≈ ν_{τ−½}, with the count τ + ½.
    flow_rows = p_inv_series(
        problem, rule, trajectory.steps, trajectory.params, trajectory.extras, discrete=False
    )
    counts = np.arange(steps + 1) + 0.5
    np.testing.assert_allclose(
        np.asarray(flow_rows),
        lr / np.sqrt(np.asarray(trajectory.extras["nu"]) / (1 - beta2 ** counts)[:, None]),
        rtol=1e-10,
    )


def test_p_inv_series_of_stateless_rules():
    problem, h, _ = quadratic_problem([2.0, 0.5])
    params = jnp.asarray(np.random.default_rng(1).standard_normal((4, 2)))
    steps = jnp.arange(4)
    gd = flows.make_method(problem, "gd", 0.3)
    np.testing.assert_allclose(np.asarray(p_inv_series(problem, gd, steps, params)), 0.3)
    ngd = flows.make_method(problem, "normalized_gd", 0.3)
    expected = 0.3 / np.linalg.norm(np.asarray(params) @ h, axis=1)
    np.testing.assert_allclose(
        np.asarray(p_inv_series(problem, ngd, steps, params)), expected, rtol=1e-12
    )


def test_simulate_tracking_options():
    problem, h, _ = quadratic_problem([3.0, 1.0, 0.2])
    default = flows.simulate(problem, "gd", lr=0.1, steps=8, save_every=2, tracking=2)
    exact = np.tile([3.0, 1.0], (5, 1))
    np.testing.assert_allclose(np.asarray(default.eigenvalues), exact, atol=1e-10)
    sparse = flows.simulate(
        problem, "gd", lr=0.1, steps=8, save_every=2, tracking=flows.Tracking(2, every=4)
    )
    values = np.asarray(sparse.eigenvalues)
    np.testing.assert_allclose(values[::2], np.tile([3.0, 1.0], (3, 1)), atol=1e-10)
    assert np.all(np.isnan(values[1::2]))
    common = dict(lr=0.1, steps=8, save_every=2)
    with pytest.raises(ValueError, match="eigen_every"):
        flows.simulate(problem, "gd", tracking=flows.Tracking(1, every=3), **common)
    with pytest.raises(ValueError, match="odd number of steps"):
        flows.simulate(problem, "gd", tracking=flows.Tracking(1, midpoint=True), **common)
    with pytest.raises(ValueError, match="every must be a positive"):
        track(problem, default.params, 1, every=0)
