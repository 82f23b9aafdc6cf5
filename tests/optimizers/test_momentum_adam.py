"""Heavy-ball and Nesterov momentum, Adam and AdamW: the discrete rules against optax
step by step, and their stable flows against closed forms and the discrete runs.

Truth: optax's own ``sgd(lr, momentum=β[, nesterov=True])``, ``adam`` and ``adamw``
applied to the same flat loss; the matrix exponential of the heavy-ball flow's linear
(w, m) system on a quadratic; Adam's flow on a linear loss (constant gradient), where
the half-step alignment of the moments makes it exact at every step.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

import flows
from flows.vector_fields import ModifiedFlow
from tests.helpers import quadratic_problem, random_symmetric, tanh_mlp_problem

OPTAX = {
    "momentum": (
        lambda lr: optax.sgd(lr, momentum=0.9),
        {"beta": 0.9},
        lambda state: {"momentum": state[0].trace},
    ),
    "nesterov": (
        lambda lr: optax.sgd(lr, momentum=0.8, nesterov=True),
        {"beta": 0.8},
        lambda state: {"momentum": state[0].trace},
    ),
    "adam": (
        lambda lr: optax.adam(lr, b1=0.8, b2=0.95, eps=1e-6),
        {"beta1": 0.8, "beta2": 0.95, "eps": 1e-6},
        lambda state: {"mu": state[0].mu, "nu": state[0].nu},
    ),
    "adamw": (
        lambda lr: optax.adamw(lr, b1=0.85, b2=0.9, eps=1e-7, weight_decay=0.3),
        {"beta1": 0.85, "beta2": 0.9, "eps": 1e-7, "weight_decay": 0.3},
        lambda state: {"mu": state[0].mu, "nu": state[0].nu},
    ),
}


def _optax_run(problem, transformation, steps, states):
    """w_k for k = 0 … steps, and the optimizer state after update k (k = 0 … steps)."""
    grad = jax.jit(jax.grad(problem.flat_loss))
    w = problem.w0
    state = transformation.init(w)
    ws, saved = [w], []
    for _ in range(steps + 1):
        updates, state = transformation.update(grad(w), state, w)
        saved.append(states(state))
        w = optax.apply_updates(w, updates)
        ws.append(w)
    saved = {k: np.stack([s[k] for s in saved]) for k in saved[0]}
    return np.stack(ws[:-1]), saved


@pytest.mark.parametrize("which", ["quadratic", "mlp"])
@pytest.mark.parametrize("optimizer", list(OPTAX))
def test_discrete_rules_are_optax(optimizer, which):
    problem = quadratic_problem([2.0, 1.0, 0.5, 0.1])[0] if which == "quadratic" else (
        tanh_mlp_problem()
    )
    make, options, states = OPTAX[optimizer]
    lr, steps = (0.05 if optimizer.startswith("adam") else 0.1), 40
    run = flows.simulate(problem, optimizer, lr=lr, steps=steps, **options)
    ws, saved = _optax_run(problem, make(lr), steps, states)
    np.testing.assert_allclose(run.params, ws, rtol=1e-12, atol=1e-14)
    # the saved state of row k is the one step k uses (after g_k), as optax's after update k
    assert set(run.extras) == set(saved)
    for name, values in saved.items():
        np.testing.assert_allclose(run.extras[name], values, rtol=1e-12, atol=1e-14)


def test_adam_p_inv_is_its_bias_corrected_preconditioner():
    problem = tanh_mlp_problem()
    lr, steps = 0.05, 10
    run = flows.simulate(problem, "adam", lr=lr, steps=steps, beta1=0.8, beta2=0.95,
                         tracking=flows.Tracking(1, effective=True))
    nu = run.extras["nu"]
    counts = np.arange(steps + 1)[:, None] + 1
    expected = lr / (np.sqrt(nu / (1 - 0.95**counts)) + 1e-8)
    np.testing.assert_allclose(run.extras["p_inv"], expected, rtol=1e-12)
    assert np.all(np.isfinite(run.eigenvalues))


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_flow_on_a_quadratic_is_its_closed_form(nesterov):
    # g = Hw: d(w, m)/dτ = A (w, m) with c = −log β,
    #   A = [[0, −η], [cH/(1−β), −c]]  (Nesterov: [[−ηH, −ηβ], …]),
    # from m(0) = m_{−½} = g₀/(1 + √β).
    problem, h, w0 = quadratic_problem([2.0, 1.0, 0.5, -0.2])
    lr, beta, steps = 0.05, 0.9, 30
    n, c = len(w0), -np.log(beta)
    top = [-lr * h, -lr * beta * np.eye(n)] if nesterov else [np.zeros((n, n)), -lr * np.eye(n)]
    generator = np.block([top, [c / (1 - beta) * h, -c * np.eye(n)]])
    y0 = np.concatenate([w0, h @ w0 / (1 + np.sqrt(beta))])
    expected = np.stack([scipy.linalg.expm(generator * k) @ y0 for k in range(steps + 1)])
    run = flows.simulate(problem, "gradient_flow", optimizer="nesterov" if nesterov else "momentum",
                         lr=lr, steps=steps, beta=beta)
    np.testing.assert_allclose(run.params, expected[:, :n], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(run.extras["momentum"], expected[:, n:], rtol=1e-7, atol=1e-9)


def test_adam_flow_is_exact_on_a_linear_loss():
    """A constant gradient a: the discrete μ̂_k = a, ν̂_k = a ⊙ a from the first step, so
    w_k = w₀ − kη a/(|a| + ε). The flow's μ(τ) = μ_{τ−½} and the count τ + ½ give the same
    μ̂, ν̂ at every τ ≥ 0, so it matches at every step (a count τ + 1, or μ(0) = μ_0,
    would not)."""
    a = jnp.asarray([1.5, -0.2, 3.0, -0.7])
    problem = flows.Problem(lambda w: jnp.dot(a, w), jnp.asarray([0.3, -1.0, 0.5, 2.0]))
    options = {"beta1": 0.9, "beta2": 0.99, "eps": 1e-3}
    lr, steps = 0.05, 20
    run = flows.simulate(problem, "adam", lr=lr, steps=steps, **options)
    flow = flows.simulate(problem, "gradient_flow", optimizer="adam", lr=lr, steps=steps,
                          integrator=flows.Integrator(rtol=1e-11, atol=1e-13), **options)
    a = np.asarray(a)
    expected = np.asarray(problem.w0) - lr * np.arange(steps + 1)[:, None] * a / (np.abs(a) + 1e-3)
    np.testing.assert_allclose(run.params, expected, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(flow.params, expected, rtol=1e-8, atol=1e-9)
    # the moments at integer τ are the half steps: μ(k) = a (1 − β₁^{k+½})
    counts = np.arange(steps + 1)[:, None] + 0.5
    np.testing.assert_allclose(flow.extras["mu"], a * (1 - 0.9**counts), rtol=1e-8)
    np.testing.assert_allclose(flow.extras["nu"], a * a * (1 - 0.99**counts), rtol=1e-8)


def test_flows_taking_over_a_run_on_a_linear_loss_are_its_closed_form():
    """A constant gradient a, the run taken over at step K = 7 (`simulate`'s start_from):
    heavy ball's m_k = x (1 − β^{k+1}), x = a/(1 − β), so a flow whose m(τ) models
    m_{τ−½} carries m(τ) = x (1 − β^{τ+½}) from τ = K on and moves by
    ``−η x [(τ − K) − (β^{τ+½} − β^{K+½})/log β]``; Adam's μ̂ = a, ν̂ = a ⊙ a at every
    τ only if its bias correction goes on counting from K (a count restarted at 0 would
    overcorrect the carried moments)."""
    a = jnp.asarray([1.5, -0.2, 3.0, -0.7])
    problem = flows.Problem(lambda w: jnp.dot(a, w), jnp.asarray([0.3, -1.0, 0.5, 2.0]))
    lr, steps, start = 0.05, 20, 7
    tight = flows.Integrator(rtol=1e-11, atol=1e-13)
    tau = np.arange(start, steps + 1, dtype=float)[:, None]
    a = np.asarray(a)

    beta = 0.9
    run = flows.simulate(problem, "momentum", lr=lr, steps=steps, beta=beta)
    flow = flows.simulate(problem, "gradient_flow", optimizer="momentum", lr=lr,
                          steps=steps - start, beta=beta, integrator=tight,
                          start_from=(run, start))
    x = a / (1 - beta)
    moved = (tau - start) - (beta ** (tau + 0.5) - beta ** (start + 0.5)) / np.log(beta)
    np.testing.assert_array_equal(flow.steps, np.arange(start, steps + 1))
    np.testing.assert_allclose(flow.params, run.params[start] - lr * x * moved, rtol=1e-9)
    np.testing.assert_allclose(flow.extras["momentum"], x * (1 - beta ** (tau + 0.5)),
                               rtol=1e-9)

    options = {"beta1": 0.9, "beta2": 0.99, "eps": 1e-3}
    run = flows.simulate(problem, "adam", lr=lr, steps=steps, **options)
    flow = flows.simulate(problem, "gradient_flow", optimizer="adam", lr=lr,
                          steps=steps - start, integrator=tight, start_from=(run, start),
                          **options)
    np.testing.assert_allclose(flow.params, run.params[start:], rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(flow.extras["mu"], a * (1 - 0.9 ** (tau + 0.5)), rtol=1e-8)
    np.testing.assert_allclose(flow.extras["nu"], a * a * (1 - 0.99 ** (tau + 0.5)), rtol=1e-8)


@functools.cache
def _controlled_quadratic():
    """½ wᵀHw from a w₀ whose gradient is ±3 to ±4 in every coordinate: over the physical
    time below no coordinate's gradient nears 0, where Adam's P⁻¹ = η/|g| would put it
    past its edge of stability (Adam's flows converge where √ν̂ stays away from 0)."""
    h = jnp.asarray(random_symmetric([2.0, 1.0, 0.5, 0.1], seed=0))
    w0 = jnp.linalg.solve(h, jnp.asarray([4.0, -3.0, 3.5, -4.0]))
    return flows.Problem(lambda w: 0.5 * jnp.dot(w, h @ w), w0, name="controlled_quadratic")


FIRST_ORDER = {
    "momentum": {"beta": 0.9},
    "nesterov": {"beta": 0.9},
    "adam": {"beta1": 0.9, "beta2": 0.99},
    "adamw": {"beta1": 0.9, "beta2": 0.99, "weight_decay": 0.5},
}


def _flow_errors(problem, optimizer, options, lrs, physical_time=0.3):
    """‖w_k − w(k)‖ at k = physical_time/η for each η, discrete run against stable flow."""
    errors = []
    for lr in lrs:
        steps = int(round(physical_time / lr))
        run = flows.simulate(problem, optimizer, lr=lr, steps=steps, **options)
        flow = flows.simulate(problem, "gradient_flow", optimizer=optimizer, lr=lr, steps=steps,
                              integrator=flows.Integrator(rtol=1e-11, atol=1e-13), **options)
        assert run.status == flow.status == "ok"
        errors.append(float(np.linalg.norm(run.final_params - flow.final_params)))
    displacement = float(np.linalg.norm(run.final_params - run.params[0]))
    return errors, displacement


@pytest.mark.parametrize("which", ["quadratic", "mlp"])
@pytest.mark.parametrize("optimizer", list(FIRST_ORDER))
def test_stable_flows_are_first_order(optimizer, which):
    """At fixed physical time ηk = 0.3, ‖w_k − w(k)‖ is O(η): halving η halves it.

    Adam's first-order coefficient is small (∝ β₂ − β₁, module docstring of
    `flows.optimizers.adam`), so on the quadratic it is measured with β₁ = 0.5, β₂ = 0.9,
    where it dominates the second-order term already at these η (ratio 1.96 measured)."""
    if which == "quadratic":
        problem = _controlled_quadratic()
    else:
        problem = tanh_mlp_problem(n_in=2, width=3, n_out=1, seed=1)  # no gradient near 0
    options = FIRST_ORDER[optimizer]
    if optimizer == "adam" and which == "quadratic":
        options = {"beta1": 0.5, "beta2": 0.9}
    errors, displacement = _flow_errors(problem, optimizer, options, [0.002, 0.001])
    assert 1.8 < errors[0] / errors[1] < 2.2, errors
    assert errors[1] < 1e-3 * displacement, (errors, displacement)


def test_adam_flow_with_equal_decays_is_second_order_on_a_sign_like_run():
    """With β₁ = β₂ the moments' lag mismatches (each (1 − β)/12 of a step) cancel in
    μ̂/√ν̂, the flow's first-order error with them: halving η quarters the error."""
    errors, _ = _flow_errors(_controlled_quadratic(), "adam", {"beta1": 0.9, "beta2": 0.9},
                             [0.002, 0.001])
    assert 3.4 < errors[0] / errors[1] < 4.4, errors


def test_methods_api():
    problem = quadratic_problem([2.0, 1.0, 0.5, 0.1])[0]
    run = flows.simulate(problem, "momentum", lr=0.05, steps=20, beta=0.9)
    assert run.status == "ok" and run.loss[-1] < run.loss[0]
    flow = flows.simulate(problem, "gradient_flow", optimizer="adam", lr=0.01, steps=20)
    assert flow.status == "ok" and set(flow.extras) >= {"mu", "nu"}
    swept = flows.sweep(problem, "adam", lrs=[0.01, 0.02], steps=10)
    single = flows.simulate(problem, "adam", lr=0.02, steps=10)
    np.testing.assert_allclose(np.asarray(swept.params)[1], single.params, rtol=1e-12)
    for name in ("momentum", "nesterov", "adam", "adamw"):
        assert name in flows.available_methods()


@pytest.mark.parametrize("optimizer", ["momentum", "nesterov", "adam", "adamw"])
def test_flows_that_need_a_preconditioned_step_refuse_momentum_rules(optimizer):
    problem = quadratic_problem([2.0, 1.0])[0]
    with pytest.raises(ValueError, match="modified_flow does not model the optimizer"):
        flows.simulate(problem, "modified_flow", optimizer=optimizer, lr=0.1, steps=5)
    rule = flows.OPTIMIZERS[optimizer](lr=jnp.asarray(0.1))
    with pytest.raises(ValueError, match="preconditioned"):
        ModifiedFlow(problem=problem, rule=rule)


@pytest.mark.parametrize(("optimizer", "option"), [("momentum", "beta"), ("adam", "beta1"),
                                                   ("adamw", "beta2")])
def test_flows_refuse_decays_without_a_continuous_limit(optimizer, option):
    problem = quadratic_problem([2.0, 1.0])[0]
    with pytest.raises(ValueError, match=f"{option} must be in"):
        flows.simulate(problem, "gradient_flow", optimizer=optimizer, lr=0.1, steps=5,
                       **{option: 0.0})


@pytest.mark.parametrize(("optimizer", "options"), [
    ("adam", {}), ("rmsprop", {"bias_correction": True}),
])
def test_bias_correction_keeps_a_float32_run_in_float32(optimizer, options):
    """The bias correction's count is an integer step: its power used to promote the
    preconditioner to float64, and effective-sharpness tracking by Lanczos (above 128
    parameters) then failed on mixed dtypes in a float32 run."""
    problem = tanh_mlp_problem(n_in=8, width=16, n_out=4, n_data=12).astype(jnp.float32)
    assert problem.num_params > 128
    run = flows.simulate(problem, optimizer, lr=1e-3, steps=4, **options,
                         tracking=flows.Tracking(1, every=2, effective=True))
    assert run.params.dtype == run.extras["p_inv"].dtype == jnp.float32
    assert np.all(np.isfinite(run.eigenvalues[::2])) and run.eigenvalues.dtype == jnp.float32
