"""`simulate`: compiled functions reused across learning rates, timing that covers the
whole call, keywords folded into option values."""

import time

import numpy as np
import pytest

import flows

from .helpers import count_compilations, quadratic_problem


@pytest.fixture(scope="module")
def quadratic():
    return quadratic_problem([0.5, 2.0, 8.0], seed=7)


@pytest.mark.parametrize("method", ["gd", "gradient_flow"])
def test_another_learning_rate_reuses_the_compiled_function(quadratic, method):
    problem, h, w0 = quadratic
    values, vectors = np.linalg.eigh(h)
    flows.simulate(problem, method, lr=0.1, steps=20, save_every=5, tracking=1)
    run, count = count_compilations(
        lambda: flows.simulate(problem, method, lr=0.15, steps=20, save_every=5, tracking=1)
    )
    assert count == 0 and run.compile_time == 0.0
    # ... and the new learning rate is the one used: the closed forms at η = 0.15.
    k = np.arange(0, 21, 5)[:, None]
    decay = (1 - 0.15 * values) ** k if method == "gd" else np.exp(-0.15 * values * k)
    np.testing.assert_allclose(run.params, (decay * (vectors.T @ w0)) @ vectors.T,
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(run.sharpness, 8.0, rtol=1e-10)


def test_compile_and_run_seconds_make_up_the_whole_call(quadratic):
    problem = quadratic[0]
    start = time.perf_counter()
    run = flows.simulate(problem, "gd", lr=0.123, steps=40, save_every=2,
                         tracking=flows.Tracking(2, every=4))
    total = time.perf_counter() - start
    accounted = run.compile_time + run.wall_time
    assert run.compile_time > 0  # a new tracking interval: compiled here, tracking included
    assert accounted <= total and total - accounted < 0.2 * total + 0.05


def test_a_method_value_is_its_keyword_form(quadratic):
    problem = quadratic[0]
    by_value = flows.simulate(problem, flows.Method("rmsprop", options={"beta2": 0.9}),
                              lr=0.05, steps=10)
    by_keywords = flows.simulate(problem, "rmsprop", lr=0.05, steps=10, beta2=0.9)
    np.testing.assert_array_equal(by_value.params, by_keywords.params)
    with pytest.raises(ValueError, match="inside the flows.Method"):
        flows.simulate(problem, flows.Method("rmsprop"), lr=0.05, steps=10, beta2=0.9)


@pytest.mark.parametrize(("keyword", "where"), [
    ("rtol", "Integrator"), ("dt0", "Integrator"), ("num_eigenvalues", "tracking"),
    ("midpoint", "Tracking"),
])
def test_a_run_keyword_given_as_a_method_option_says_where_it_goes(quadratic, keyword, where):
    with pytest.raises(ValueError, match=where):
        flows.simulate(quadratic[0], "gradient_flow", lr=0.1, steps=4, **{keyword: 1})


def test_bad_run_lengths_are_refused_by_name(quadratic):
    problem = quadratic[0]
    for kwargs, name in [({"steps": 0}, "steps"), ({"steps": 10, "save_every": 3}, "divide"),
                         ({"steps": 2.5}, "steps")]:
        with pytest.raises(ValueError, match=name):
            flows.simulate(problem, "gd", lr=0.1, **{"steps": 10, **kwargs})
    with pytest.raises(ValueError, match="lr"):
        flows.simulate(problem, "gd", lr=-1.0, steps=10)
    with pytest.raises(ValueError, match="num_eigenvalues"):
        flows.simulate(problem, "gd", lr=0.1, steps=10, tracking=4)


def test_a_learning_rate_the_dtype_cannot_hold_is_refused(quadratic):
    import jax.numpy as jnp

    single = quadratic[0].astype(jnp.float32)
    for lr in (1e-300, 1e39):
        with pytest.raises(ValueError, match="not representable in float32"):
            flows.simulate(single, "gd", lr=lr, steps=2)
        with pytest.raises(ValueError, match="not representable in float32"):
            flows.sweep(single, "gd", lrs=[0.1, lr], steps=2)
    flows.simulate(quadratic[0], "gd", lr=1e-300, steps=2)  # float64 holds it


def test_a_discrete_run_taken_over_goes_on_as_the_uninterrupted_run(quadratic):
    quadratic = quadratic[0]
    full = flows.simulate(quadratic, "rmsprop", lr=0.2, steps=30, beta2=0.9)
    rest = flows.simulate(quadratic, "rmsprop", lr=0.2, steps=18, beta2=0.9,
                          start_from=(full, 12))
    np.testing.assert_array_equal(rest.steps, np.arange(12, 31))
    np.testing.assert_array_equal(rest.params, full.params[12:])
    np.testing.assert_array_equal(rest.extras["nu"], full.extras["nu"][12:])
    # compared at the steps both have, 12 … 30
    np.testing.assert_array_equal(rest.distance_to(full), np.zeros(19))
    with pytest.raises(ValueError, match="no common step"):
        rest.distance_to(flows.simulate(quadratic, "rmsprop", lr=0.2, steps=10, beta2=0.9))
    # a stateless rule needs no saved state: any saved step will do
    full = flows.simulate(quadratic, "gd", lr=0.2, steps=30, save_every=5)
    rest = flows.simulate(quadratic, "gd", lr=0.2, steps=10, start_from=(full, np.int64(20)))
    np.testing.assert_allclose(rest.params[::5], full.params[4:], rtol=1e-12)


def test_a_flow_taking_over_at_step_0_is_the_flow_from_the_start(quadratic):
    quadratic = quadratic[0]
    run = flows.simulate(quadratic, "gd", lr=0.3, steps=5)
    for method in ("gradient_flow", "central_flow"):
        fresh = flows.simulate(quadratic, method, lr=0.3, steps=20)
        taken = flows.simulate(quadratic, method, lr=0.3, steps=20, start_from=(run, 0))
        np.testing.assert_allclose(taken.params, fresh.params, rtol=1e-13, atol=1e-15)


def test_what_start_from_cannot_take_over_is_refused_by_name(quadratic, tmp_path):
    quadratic = quadratic[0]
    run = flows.simulate(quadratic, "rmsprop", lr=0.2, steps=10, save_every=2)
    gd = flows.simulate(quadratic, "gd", lr=0.2, steps=10)
    flow = flows.simulate(quadratic, "gradient_flow", lr=0.2, steps=10)
    sweep = flows.sweep(quadratic, "gd", lrs=[0.1, 0.2], steps=10)
    cases = [
        (dict(start_from=run), "a pair"),
        (dict(start_from=(flow, 2)), "'gradient_flow' trajectory"),
        (dict(start_from=(sweep, 2)), "not a sweep"),
        (dict(start_from=(gd, 2), method="gradient_flow", optimizer="rmsprop"), "'gd' run"),
        (dict(start_from=(run, 2), method="gradient_flow"), "optimizer='rmsprop'"),
        (dict(start_from=(run, 2), lr=0.1), "learning rate 0.2"),
        (dict(start_from=(run, 3)), "step 3 is not a saved step"),
        (dict(start_from=(run, 4)), "state of step 3"),
        (dict(start_from=(run, -1)), "start_from's step"),
        (dict(start_from=(run, 4), checkpoint_dir=tmp_path), "checkpoint_dir"),
    ]
    for overrides, message in cases:
        kwargs = {"method": "rmsprop", "lr": 0.2, "steps": 4, **overrides}
        with pytest.raises(ValueError, match=message):
            flows.simulate(quadratic, kwargs.pop("method"), **kwargs)
