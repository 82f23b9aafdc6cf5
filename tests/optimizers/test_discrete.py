import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flows
from tests.helpers import quadratic_problem, tanh_mlp_problem


def test_gd_on_quadratic_is_matrix_power():
    problem, h, w0 = quadratic_problem([3.0, 1.5, 0.2, -0.4, 1.0, 0.7])
    lr, steps = 0.5, 30
    run = flows.simulate(problem, "gd", lr=lr, steps=steps)
    step_matrix = np.eye(6) - lr * h
    expected = np.stack([np.linalg.matrix_power(step_matrix, k) @ w0 for k in range(steps + 1)])
    np.testing.assert_allclose(run.params, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(run.loss, 0.5 * np.einsum("ti,ij,tj->t", expected, h, expected))
    assert run.status == "ok"


def test_gd_equals_optax_sgd():
    problem = tanh_mlp_problem()
    lr, steps = 0.3, 25
    run = flows.simulate(problem, "gd", lr=lr, steps=steps)
    opt = optax.sgd(lr)
    params, state = problem.params0, opt.init(problem.params0)
    for _ in range(steps):
        grads = jax.grad(problem.loss)(params)
        updates, state = opt.update(grads, state)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(run.final_params, flows.problem.ravel(params)[0], rtol=1e-10)


def test_save_every_samples_the_same_trajectory():
    problem = tanh_mlp_problem()
    every = flows.simulate(problem, "gd", lr=0.2, steps=12)
    sparse = flows.simulate(problem, "gd", lr=0.2, steps=12, save_every=4)
    np.testing.assert_array_equal(sparse.steps, [0, 4, 8, 12])
    np.testing.assert_allclose(sparse.params, every.params[::4], rtol=1e-12)


def test_gd_past_two_over_eta_diverges_and_reports_the_step():
    problem, h, w0 = quadratic_problem([4.0, 1.0])
    run = flows.simulate(problem, "gd", lr=0.6, steps=200)  # ηλ = 2.4 > 2
    assert run.status.startswith("diverged at step")
    k = int(run.stopped_at)
    # Independent check: the loss of (I − ηH)^k w₀ first exceeds the threshold at step k.
    threshold = 1e6 * (1 + 0.5 * w0 @ h @ w0)
    iterates = (np.linalg.matrix_power(np.eye(2) - 0.6 * h, j) @ w0 for j in range(200))
    losses = [0.5 * w @ h @ w for w in iterates]
    assert k == next(j for j, value in enumerate(losses) if value > threshold)
    assert np.all(np.isfinite(run.loss[: k + 1]))
    assert np.all(np.isnan(run.loss[k + 1 :]))


def _manual(rule_step, problem, steps):
    """Reference loop written directly from the update equations in DESIGN.md."""
    f = problem.flat_loss
    w = np.asarray(problem.w0)
    out = [w]
    state = None
    for k in range(steps):
        g = np.asarray(jax.grad(f)(jnp.asarray(w)))
        w, state = rule_step(k, w, g, state, f)
        out.append(w)
    return np.stack(out)


def test_normalized_and_sqrt_gd_follow_their_equations():
    problem = tanh_mlp_problem()
    lr = 0.05
    run = flows.simulate(problem, "normalized_gd", lr=lr, steps=10)
    manual = _manual(lambda k, w, g, s, f: (w - lr * g / np.linalg.norm(g), s), problem, 10)
    np.testing.assert_allclose(run.params, manual, rtol=1e-10)
    run = flows.simulate(problem, "sqrt_gd", lr=lr, steps=10)
    manual = _manual(
        lambda k, w, g, s, f: (w - lr * g / (2 * np.sqrt(float(f(jnp.asarray(w))))), s), problem, 10
    )
    np.testing.assert_allclose(run.params, manual, rtol=1e-10)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_rmsprop_and_scalar_rmsprop_follow_their_equations(bias_correction):
    problem = tanh_mlp_problem()
    lr, beta2, eps = 0.01, 0.9, 1e-8
    options = dict(beta2=beta2, eps=eps, bias_correction=bias_correction)
    if bias_correction:
        options["initial_nu"] = 0.0

    def rms(scalar):
        def step(k, w, g, nu, f):
            square = np.sum(g * g) if scalar else g * g
            if nu is None:
                nu = 0.0 * square if bias_correction else square
            nu = beta2 * nu + (1 - beta2) * square
            nu_hat = nu / (1 - beta2 ** (k + 1)) if bias_correction else nu
            return w - lr * g / (np.sqrt(nu_hat) + eps), nu

        return step

    for name, scalar in [("rmsprop", False), ("scalar_rmsprop", True)]:
        run = flows.simulate(problem, name, lr=lr, steps=10, **options)
        np.testing.assert_allclose(run.params, _manual(rms(scalar), problem, 10), rtol=1e-9)


def test_dal_step_size():
    problem, h, w0 = quadratic_problem([3.0, 0.5, 0.1])
    for p in [1.0, 0.5]:
        run = flows.simulate(problem, "dal", lr=10.0, steps=5, p=p)

        def step(k, w, g, s, f, p=p):
            curvature = np.linalg.norm(h @ g) / np.linalg.norm(g)
            return w - np.clip(2 / curvature**p, 0, 10.0) * g, s

        np.testing.assert_allclose(run.params, _manual(step, problem, 5), rtol=1e-9)


def test_bad_arguments_name_the_offender():
    problem = tanh_mlp_problem()
    with pytest.raises(ValueError, match="lr"):
        flows.simulate(problem, "gd", lr=-1.0, steps=3)
    with pytest.raises(ValueError, match="unknown method 'gdd'"):
        flows.simulate(problem, "gdd", lr=0.1, steps=3)
    with pytest.raises(ValueError, match="'beta3'"):
        flows.simulate(problem, "rmsprop", lr=0.1, steps=3, beta3=0.9)
    with pytest.raises(ValueError, match="save_every"):
        flows.simulate(problem, "gd", lr=0.1, steps=10, save_every=3)


def _live_quadratic(params):
    return 0.5 * jnp.sum(jnp.asarray([1.0, 3.0]) * params["live"] ** 2)


def _with_a_dead_coordinate(params):
    return _live_quadratic(params)  # params["dead"] never enters the loss (a dead pixel)


@pytest.mark.parametrize("method", ["rmsprop", "gradient_flow", "central_flow"])
def test_rmsprop_with_eps_zero_leaves_a_dead_coordinate_alone(method):
    # ν = 0 and ε = 0 on a coordinate without gradient: its step must be 0, not 0/0.
    live = {"live": jnp.asarray([1.0, -0.5])}
    dead = {"live": live["live"], "dead": jnp.asarray([0.3])}
    kwargs = dict(lr=0.05, steps=20, optimizer="rmsprop", beta2=0.9, eps=0.0)
    if method == "rmsprop":
        kwargs.pop("optimizer")
    alone = flows.simulate(flows.Problem(_live_quadratic, live), method, **kwargs)
    both = flows.simulate(flows.Problem(_with_a_dead_coordinate, dead), method, **kwargs)
    assert both.status == "ok"
    np.testing.assert_array_equal(both.params[:, 0], 0.3)  # ravel order: "dead" first
    # The adaptive integrator's error norm sees one more (constant) component: its steps
    # differ a little, within its tolerance.
    rtol = 1e-12 if method == "rmsprop" else 1e-6
    np.testing.assert_allclose(both.params[:, 1:], alone.params, rtol=rtol, atol=1e-12)
