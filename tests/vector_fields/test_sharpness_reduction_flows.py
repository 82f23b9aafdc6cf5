"""The limiting flows of normalized GD and GD on √L (Arora, Li, Panigrahi 2022) against
their closed forms on the toy (1 + x²)y², the discrete optimizers, and the quadratic 2-cycle."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows.eigen_tracking import midpoints
from flows.integrate import run_discrete, run_flow
from flows.methods import method_options
from flows.problems import quadratic_from_matrix, valley


def normalized_flow_x(x0, tau):
    """Solve ln x + x²/2 = ln x₀ + x₀²/2 − τ'/2 (the closed form of dx/dτ' = −x/(2(1+x²)))
    by Newton's method in numpy."""
    target = np.log(x0) + x0 * x0 / 2 - np.asarray(tau) / 2
    # Newton in s = ln x: s + e^{2s}/2 is convex and increasing, so from s₀ ≥ s it
    # converges monotonically.
    s = np.full_like(target, np.log(x0))
    for _ in range(60):
        s = s - (s + np.exp(2 * s) / 2 - target) / (1 + np.exp(2 * s))
    return np.exp(s)


# One compiled run per method, shared by the tests (the learning rate and the starting
# point are traced arrays; only the method and the number of steps are static).
FLOW_STEPS = 1180


@eqx.filter_jit
def run_flow_jit(field):
    return run_flow(field, FLOW_STEPS)


@eqx.filter_jit
def run_discrete_jit(problem, rule):
    return run_discrete(problem, rule, FLOW_STEPS + 20)


@pytest.mark.parametrize("method", ["normalized_gd_flow", "sqrt_gd_flow"])
def test_flow_on_the_valley_matches_the_closed_form(method):
    lr = 0.05  # τ' = η² · 1180 ≈ 3
    output = run_flow_jit(flows.make_method(valley(x=1.5, y=0.0), method, lr))
    assert int(output["status_code"]) == 0
    x, y = np.asarray(output["params"]).T
    tau = lr**2 * np.asarray(output["steps"])
    np.testing.assert_allclose(np.asarray(output["extras"]["rescaled_time"]), tau, rtol=1e-12)
    if method == "normalized_gd_flow":
        expected = normalized_flow_x(1.5, tau)
    else:
        expected = 1.5 * np.exp(-tau / 2)
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    np.testing.assert_allclose(y, 0.0, atol=1e-12)
    eigenvalues = np.asarray(output["extras"]["eigenvalues"])[:, 0]
    np.testing.assert_allclose(eigenvalues, 2 * (1 + x**2), rtol=1e-10)


def test_velocity_on_the_manifold_and_projection_onto_it():
    problem = valley(x=0.7, y=0.2)
    eta = 0.05
    xs = jnp.array([-1.3, 0.4, 2.0])
    on_manifold = jnp.stack([xs, jnp.zeros(3)], axis=1)

    @eqx.filter_jit
    def evaluate(normalized, sqrt):
        return (
            jax.vmap(normalized.rescaled_velocity)(on_manifold),
            jax.vmap(sqrt.rescaled_velocity)(on_manifold),
            jax.vmap(lambda w: normalized(0.0, w, None))(on_manifold),
            normalized.initial_state(),
            normalized.tangent_projection(jnp.array([0.3, 0.0]), jnp.array([1.0, 2.0])),
        )

    normalized, sqrt, step_time, start, projected = evaluate(
        flows.make_method(problem, "normalized_gd_flow", eta),
        flows.make_method(problem, "sqrt_gd_flow", eta),
    )
    x = np.asarray(xs)
    zero = np.zeros(3)
    np.testing.assert_allclose(np.asarray(normalized), np.stack([-x / (2 * (1 + x * x)), zero], 1),
                               atol=1e-12)
    np.testing.assert_allclose(np.asarray(sqrt), np.stack([-x / 2, zero], 1), atol=1e-12)
    np.testing.assert_allclose(np.asarray(step_time), eta**2 * np.asarray(normalized), atol=1e-15)
    # Newton steps in the normal space land on y = 0, near x₀.
    assert abs(float(start[1])) < 1e-12 and abs(float(start[0]) - 0.7) < 0.05
    # The tangent projection removes the normal (y) direction on Γ.
    np.testing.assert_allclose(np.asarray(projected), [1.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("method", ["normalized_gd", "sqrt_gd"])
def test_discrete_x_follows_the_flow_on_the_valley(method):
    """Started where the optimizer has reached the valley floor (the midpoint of its
    iterates after k₀ steps, projected onto y = 0), the flow predicts x over τ' ≈ 3."""
    lr, k0 = 0.05, 20
    problem = valley(x=1.0, y=0.1)
    discrete = run_discrete_jit(problem, flows.make_method(problem, method, lr))
    start = midpoints(discrete["params"][k0 - 1 : k0 + 2])[1]
    restarted = eqx.tree_at(lambda p: p.params0, problem, problem.unravel(start))
    flow = run_flow_jit(flows.make_method(restarted, method + "_flow", lr))
    x_discrete = np.asarray(discrete["params"][k0:, 0])
    x_flow = np.asarray(flow["params"][:, 0])
    assert x_flow[-1] < 0.5 * x_flow[0]  # the drift is substantial over this window
    np.testing.assert_allclose(x_discrete, x_flow, atol=2e-3)


def test_simulate_runs_the_flows_by_name():
    run = flows.simulate(valley(x=1.0, y=0.0), "sqrt_gd_flow", lr=0.1, steps=100, save_every=50)
    assert run.status == "ok"
    tau = 0.01 * np.array([0, 50, 100])
    np.testing.assert_allclose(np.asarray(run.params[:, 0]), np.exp(-tau / 2), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(run.sharpness), 2 * (1 + np.exp(-tau)), rtol=1e-6)


def test_normal_space_of_an_interpolating_mse_model_is_the_jacobian_row_space():
    """On Γ of ½‖f(w) − y‖²/N (teacher = student, so w* ∈ Γ) P_Γ = I − J⁺J."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (3, 2))
    w_star = {"a": jax.random.normal(k2, (2, 4)), "b": jax.random.normal(k3, (4,))}

    def predict(params):
        return jnp.tanh(x @ params["a"]) @ params["b"]

    y = predict(w_star)
    problem = flows.Problem(lambda p: 0.5 * jnp.mean((predict(p) - y) ** 2), w_star)
    field = flows.make_method(problem, "normalized_gd_flow", 0.1, options={"codim": 3})
    w = problem.w0
    v = jnp.asarray(np.random.default_rng(0).standard_normal(12))

    @eqx.filter_jit
    def evaluate(field):
        jacobian = jax.jacobian(lambda u: predict(problem.unravel(u)))(w)
        return jacobian, field.tangent_projection(w, v), field.rescaled_velocity(w)

    jacobian, projected, velocity = map(np.asarray, evaluate(field))
    tangent = np.eye(12) - np.linalg.pinv(jacobian) @ jacobian
    np.testing.assert_allclose(projected, tangent @ np.asarray(v), atol=1e-10)
    # The flow's velocity is tangent to Γ at w*, and not zero.
    np.testing.assert_allclose(jacobian @ velocity, 0.0, atol=1e-10)
    assert np.linalg.norm(velocity) > 1e-3


def test_normalized_gd_on_a_quadratic_ends_in_the_two_cycle_along_the_top_eigenvector():
    lr = 0.1
    problem = quadratic_from_matrix(np.diag([1.0, 0.4]), [lr / 2, 1e-4])
    run = flows.simulate(problem, "normalized_gd", lr=lr, steps=400)
    end = np.asarray(run.params[-2:])
    # The start's off-axis component b₀ leaves an O(η b₀²/a₀²) asymmetry (≈ 3e-8 here).
    np.testing.assert_allclose(np.sort(end[:, 0]), [-lr / 2, lr / 2], atol=1e-6)
    np.testing.assert_allclose(end[:, 1], 0.0, atol=1e-12)
    # From a generic start it ends in some 2-cycle (a, a − η) along u₁.
    generic = flows.simulate(
        quadratic_from_matrix(np.diag([1.0, 0.4]), [0.7, -0.5]), "normalized_gd", lr=lr, steps=400
    )
    a = np.asarray(generic.params[-3:, 0])
    np.testing.assert_allclose(np.abs(np.diff(a)), lr, rtol=1e-10)
    np.testing.assert_allclose(a[0], a[2], atol=1e-12)
    np.testing.assert_allclose(np.asarray(generic.params[-1, 1]), 0.0, atol=1e-12)
    # GD on √L: steps of η√(λ₁/2), so the symmetric cycle sits at ±(η/2)√(λ₁/2).
    half = lr / 2 * np.sqrt(0.5)
    problem = quadratic_from_matrix(np.diag([1.0, 0.4]), [half, 1e-4])
    sqrt = flows.simulate(problem, "sqrt_gd", lr=lr, steps=400)
    np.testing.assert_allclose(np.sort(np.asarray(sqrt.params[-2:, 0])), [-half, half], atol=1e-6)
    np.testing.assert_allclose(np.asarray(sqrt.params[-2:, 1]), 0.0, atol=1e-12)


def test_registration_and_options():
    assert {"normalized_gd_flow", "sqrt_gd_flow"} <= set(flows.available_methods())
    assert {"codim", "restoring_rate", "projection_iterations"} <= method_options("sqrt_gd_flow")
    with pytest.raises(ValueError, match="codim"):
        flows.make_method(valley(), "normalized_gd_flow", 0.1, options={"codim": 2})
