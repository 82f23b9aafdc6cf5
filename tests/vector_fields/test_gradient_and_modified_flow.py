import diffrax
import numpy as np
import pytest
import scipy.linalg

import flows
from tests.helpers import quadratic_problem, tanh_mlp_problem


def test_gradient_flow_is_the_matrix_exponential():
    problem, h, w0 = quadratic_problem([3.0, 1.0, 0.25, -0.5])
    lr, steps = 0.3, 10
    run = flows.simulate(problem, "gradient_flow", lr=lr, steps=steps)
    expected = np.stack([scipy.linalg.expm(-lr * k * h) @ w0 for k in range(steps + 1)])
    np.testing.assert_allclose(run.params, expected, rtol=1e-7, atol=1e-9)
    assert run.status == "ok"


def test_modified_flow_on_quadratic_is_its_closed_form():
    # dw/dτ = −η(H + (η/2)H²) w  ⇒  w(τ) = exp(−ητ(H + (η/2)H²)) w₀.
    problem, h, w0 = quadratic_problem([2.0, 1.0, 0.3])
    lr, steps = 0.2, 8
    run = flows.simulate(problem, "modified_flow", lr=lr, steps=steps)
    generator = h + 0.5 * lr * h @ h
    expected = np.stack([scipy.linalg.expm(-lr * k * generator) @ w0 for k in range(steps + 1)])
    np.testing.assert_allclose(run.params, expected, rtol=1e-7, atol=1e-9)


def test_euler_with_step_one_is_gd():
    problem = tanh_mlp_problem()
    gd = flows.simulate(problem, "gd", lr=0.4, steps=15)
    euler = flows.simulate(
        problem, "gradient_flow", lr=0.4, steps=15,
        integrator=flows.Integrator(solver=diffrax.Euler(), dt0=1.0),
    )
    np.testing.assert_allclose(euler.params, gd.params, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("which", ["quadratic", "mlp"])
def test_modified_flow_error_is_second_order_gradient_flow_first(which):
    """At fixed physical time ηk = T, ‖w_GD − w_flow‖ is O(η) for gradient flow and
    O(η²) for the modified flow: halving η halves one and quarters the other."""
    if which == "quadratic":
        problem = quadratic_problem([2.0, 1.0, 0.5, 0.1])[0]
    else:
        problem = tanh_mlp_problem(seed=1)
    physical_time = 2.0
    errors = {"gradient_flow": [], "modified_flow": []}
    for lr in [0.04, 0.02]:
        steps = int(round(physical_time / lr))
        gd = flows.simulate(problem, "gd", lr=lr, steps=steps)
        for method in errors:
            flow = flows.simulate(
                problem, method, lr=lr, steps=steps,
                integrator=flows.Integrator(rtol=1e-11, atol=1e-13),
            )
            errors[method].append(float(np.linalg.norm(gd.final_params - flow.final_params)))
    gf_ratio = errors["gradient_flow"][0] / errors["gradient_flow"][1]
    mf_ratio = errors["modified_flow"][0] / errors["modified_flow"][1]
    assert 1.8 < gf_ratio < 2.2, errors
    assert 3.6 < mf_ratio < 4.4, errors
    assert errors["modified_flow"][1] < 0.1 * errors["gradient_flow"][1]


def test_exploding_flow_is_reported_as_diverged():
    problem = quadratic_problem([-3.0, 1.0])[0]  # a negative direction: the flow explodes
    run = flows.simulate(problem, "gradient_flow", lr=1.0, steps=40)
    assert run.status.startswith("diverged at step")
    k = int(run.stopped_at)
    assert 0 < k < 40
    assert np.all(np.isnan(run.loss[k + 1 :]))
