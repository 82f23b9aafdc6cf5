"""The engine: runs continue from their carry, the integrator is a value, failures and
divergence are reported with their step."""

import diffrax
import numpy as np

import flows
from flows.integrate import run_discrete, run_flow
from flows.optimizers import GD
from flows.trajectory import STATUS_DIVERGED, STATUS_FAILED

from .helpers import quadratic_problem


def test_a_discrete_run_in_two_chunks_is_the_run_in_one():
    problem, h, w0 = quadratic_problem([0.5, 2.0, 8.0])
    rule = flows.make_method(problem, "rmsprop", 0.05, options={"beta2": 0.9})
    whole = run_discrete(problem, rule, 20, 2)
    first = run_discrete(problem, rule, 10, 2)
    second = run_discrete(problem, rule, 10, 2, start=first["carry"])
    np.testing.assert_array_equal(second["steps"], np.arange(10, 21, 2))
    np.testing.assert_array_equal(np.concatenate([first["params"], second["params"][1:]]),
                                  whole["params"])


def test_euler_at_step_one_is_gd_and_a_flow_continues_from_its_carry():
    problem, h, w0 = quadratic_problem([0.5, 2.0, 8.0])
    field = flows.make_method(problem, "gradient_flow", 0.1)
    euler = flows.Integrator(solver=diffrax.Euler(), dt0=1.0)
    first = run_flow(field, 6, integrator=euler)
    second = run_flow(field, 6, integrator=euler, start=first["carry"])
    k = np.arange(0, 13)[:, None]
    values, vectors = np.linalg.eigh(h)
    gd = ((1 - 0.1 * values) ** k * (vectors.T @ w0)) @ vectors.T
    np.testing.assert_allclose(np.concatenate([first["params"], second["params"][1:]]), gd,
                               rtol=1e-12, atol=1e-14)


def test_a_spent_step_budget_is_a_failure_at_its_step():
    problem, h, w0 = quadratic_problem([0.5, 2.0, 8.0])
    field = flows.make_method(problem, "gradient_flow", 0.1)
    run = run_flow(field, 40, 2, integrator=flows.Integrator(max_steps=3))
    assert int(run["status_code"]) == STATUS_FAILED
    stopped = int(run["stopped_at"])
    assert 0 < stopped <= 40
    assert np.all(np.isnan(run["loss"][run["steps"] > stopped]))


def test_gd_past_the_edge_diverges_at_the_step_the_closed_form_does():
    problem, h, w0 = quadratic_problem([0.5, 2.0, 8.0])
    run = run_discrete(problem, GD(lr=np.asarray(0.3)), 60, divergence_factor=1e3)
    values, vectors = np.linalg.eigh(h)
    k = np.arange(61)[:, None]
    exact = ((1 - 0.3 * values) ** k * (vectors.T @ w0)) @ vectors.T
    loss = 0.5 * np.einsum("ki,ij,kj->k", exact, h, exact)
    expected = int(np.argmax(np.abs(loss) > 1e3 * (1 + abs(loss[0]))))
    assert int(run["status_code"]) == STATUS_DIVERGED and int(run["stopped_at"]) == expected
