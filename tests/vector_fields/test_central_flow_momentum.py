"""Central flows of heavy ball, Nesterov and Adam against independent truth: analytic
stationary points on a valley (the sharpness held at each rule's own threshold), the
second-order stability condition against dense third- and fourth-derivative tensors, the
stable phase against the rule's stable flow, and a vmapped sweep against single runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows.vector_fields.central_flow import momentum_edge_system
from tests.helpers import tanh_mlp_problem
from tests.vector_fields.test_central_flow import VALLEY_SLOPE, valley


@pytest.mark.parametrize(
    ("optimizer", "beta", "threshold", "newton_steps"),
    [("momentum", 0.9, 3.8, None), ("momentum", 0.5, 3.0, None), ("nesterov", 0.5, 1.5, 3)],
)
def test_momentum_valley_stationary_point_is_analytic(optimizer, beta, threshold, newton_steps):
    """L = −c x + ½(1 + x²) y²: at rest m = 0 and E[g] = 0, so σ² = c/x* as for GD, but the
    sharpness stops at the rule's own edge, ηS = 2(1 + β) (heavy ball) or
    2(1 + β)/(1 + 2β) (Nesterov): 1 + x*² = threshold/η. Nesterov's stability condition
    is quadratic in X: two Newton steps leave 2e-6 of x*, three reach rounding; heavy
    ball's is affine, and its default, one Newton step, is exact."""
    lr = 0.5
    run = flows.simulate(valley(), "central_flow", optimizer=optimizer, lr=lr, steps=400,
                         beta=beta, num_eigenvalues=2, newton_steps=newton_steps)
    assert run.status == "ok"
    x_star = np.sqrt(threshold / lr - 1)
    np.testing.assert_allclose(run.params[-1], [x_star, 0.0], atol=1e-9)
    np.testing.assert_allclose(run.extras["effective_eigenvalues"][-1, 0], threshold, rtol=1e-9)
    np.testing.assert_allclose(run.extras["sigma_eigenvalues"][-1, 0], VALLEY_SLOPE / x_star,
                               rtol=1e-8)
    np.testing.assert_allclose(run.extras["momentum"][-1], 0.0, atol=1e-12)
    # E[L] = L + ½⟨Σ, H⟩ = −c x* + ½ σ² (1 + x*²).
    np.testing.assert_allclose(
        run.extras["predicted_loss"][-1],
        -VALLEY_SLOPE * x_star + 0.5 * (VALLEY_SLOPE / x_star) * threshold / lr, rtol=1e-8,
    )


def test_adam_valley_stationary_point_is_analytic():
    """Adam (ε = 0) on the same valley: at rest μ = 0 and E[g] = 0 give σ² = c/x*, and y's
    second moment is the oscillation's alone, ν_y = E[(H δ)²] = (1 + x²)² σ²; holding
    η(1 + x²)/√ν_y at the threshold c_A = 2(1 + β₁)/(1 − β₁) then gives σ² = η²/c_A², so
    x* = c c_A²/η²: the preconditioner, not the sharpness, comes to the edge."""
    lr, beta1, beta2 = 0.5, 0.5, 0.9
    threshold = 2 * (1 + beta1) / (1 - beta1)
    run = flows.simulate(valley(), "central_flow", optimizer="adam", lr=lr, steps=1500,
                         beta1=beta1, beta2=beta2, eps=0.0, num_eigenvalues=2)
    sigma_sq = lr**2 / threshold**2
    x_star = VALLEY_SLOPE / sigma_sq
    assert run.status == "ok"
    np.testing.assert_allclose(run.params[-1], [x_star, 0.0], atol=1e-7)
    np.testing.assert_allclose(run.extras["effective_eigenvalues"][-1, 0], threshold, rtol=1e-5)
    np.testing.assert_allclose(run.extras["sigma_eigenvalues"][-1, 0], sigma_sq, rtol=1e-5)
    np.testing.assert_allclose(run.extras["nu"][-1],
                               [VALLEY_SLOPE**2, (1 + x_star**2) ** 2 * sigma_sq], rtol=1e-5)


def test_heavy_ball_condition_matches_dense_derivative_tensors():
    """``Ä + 2κȦ + κ²A`` (U frozen) from dense tensors: with ẇ = −ηm and
    ṁ = r(E[g]/(1 − β) − m), r = −log β,
    Ȧ = −T3[u_i, u_j, ẇ], Ä = −T4[u_i, u_j, ẇ, ẇ] + η⟨g_ij, ṁ⟩, so β[X] enters only
    through E[g] = g + ½ Σ X_kl g_kl: β_ijkl = η r ⟨g_ij, g_kl⟩ / (2(1 − β))."""
    problem = tanh_mlp_problem(n_in=2, width=4, n_out=1, n_data=6, seed=3).astype(jnp.float64)
    f, w = problem.flat_loss, problem.w0
    lr, beta, kappa, k = 0.3, 0.8, 0.7, 2
    rule = flows.OPTIMIZERS["momentum"](lr=jnp.asarray(lr), beta=beta)
    m = jax.random.normal(jax.random.key(1), w.shape)
    hessian = np.asarray(jax.hessian(f)(w))
    u = np.sqrt(lr) * np.linalg.eigh(hessian)[1][:, ::-1][:, :k]
    system = momentum_edge_system(rule, f, jnp.asarray(3.0), w, m, jnp.asarray(u),
                                  jnp.asarray(k), kappa)

    t3 = np.asarray(jax.jacfwd(jax.hessian(f))(w))
    t4 = np.asarray(jax.jacfwd(jax.jacfwd(jax.hessian(f)))(w))
    g = np.asarray(jax.grad(f)(w))
    g_ij = np.einsum("abc,ai,bj->ijc", t3, u, u)
    rate = -np.log(beta)
    w_dot = -lr * np.asarray(m)
    m_dot = rate * (g / (1 - beta) - np.asarray(m))
    threshold = 2 * (1 + beta)
    a = threshold / lr * u.T @ u - u.T @ hessian @ u
    a_dot = -np.einsum("ijc,c->ij", g_ij, w_dot)
    a_ddot = -np.einsum("abcd,ai,bj,c,d->ij", t4, u, u, w_dot, w_dot) + lr * np.einsum(
        "ijc,c->ij", g_ij, m_dot
    )
    np.testing.assert_allclose(system.a0, a_ddot + 2 * kappa * a_dot + kappa**2 * a,
                               rtol=1e-9, atol=1e-12)
    expected_beta = lr * rate / (2 * (1 - beta)) * np.einsum("ijc,klc->ijkl", g_ij, g_ij)
    np.testing.assert_allclose(system.beta, expected_beta, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("optimizer", "options"), [
    ("momentum", {"beta": 0.9}),
    ("adam", {"beta1": 0.9, "beta2": 0.99}),
])
def test_stable_phase_is_the_stable_flow(optimizer, options):
    """Below the edge Σ = 0 and the central flow is the rule's stable flow (here integrated
    tightly by a generic adaptive solver; the central flow's RK4 at dt = 1 is 4th order)."""
    problem = tanh_mlp_problem(n_in=3, width=6, n_out=2, n_data=10, seed=0)
    common = dict(lr=0.002 if optimizer == "adam" else 0.01, steps=40, **options)
    central = flows.simulate(problem, "central_flow", optimizer=optimizer, **common)
    stable = flows.simulate(problem, "gradient_flow", optimizer=optimizer,
                            integrator=flows.Integrator(rtol=1e-10, atol=1e-12), **common)
    assert float(np.max(central.extras["sigma_trace"])) == 0.0
    displacement = np.linalg.norm(stable.params[-1] - stable.params[0])
    np.testing.assert_allclose(central.params, stable.params, atol=1e-5 * displacement)


def test_sweep_over_learning_rates_matches_single_runs():
    """One compiled sweep of the heavy-ball central flow equals `simulate` at each η."""
    lrs = [0.4, 0.5]
    swept = flows.sweep(valley(), "central_flow", optimizer="momentum", lrs=lrs, steps=60,
                        beta=0.5, num_eigenvalues=2)
    for i, lr in enumerate(lrs):
        single = flows.simulate(valley(), "central_flow", optimizer="momentum", lr=lr,
                                steps=60, beta=0.5, num_eigenvalues=2)
        np.testing.assert_allclose(swept.params[i], single.params, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(swept.extras["effective_eigenvalues"][i],
                                   single.extras["effective_eigenvalues"], rtol=1e-9)
