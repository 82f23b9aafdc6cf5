"""The central flow against independent truth: an analytic stationary point (one
eigenvalue at the edge), an independent SDCP solve from dense linear algebra and scipy
(two at the edge), RK4 gradient flow in the stable phase, and a tightly integrated run
of the same vector field by a generic diffrax solver."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows.integrate import run_flow
from flows.vector_fields.central_flow import (
    TABLEAUS,
    CentralFlow,
    CentralFlowSolver,
    _contract,
    _pair_gram,
    _pair_order,
    _unpack,
)
from tests.helpers import quadratic_problem, tanh_mlp_problem
from tests.linalg.test_sdcp import scipy_qp

STEPS = 100
EDGE_LR = 0.7  # the tiny network sharpens until one, then two eigenvalues reach 2/η
STABLE_LR = 0.3


def test_third_derivatives_stored_per_pair_match_the_dense_array():
    """g_ij is kept once per pair i ≤ j; every contraction with it against the dense,
    symmetric k×k×n array, X not symmetric (the momentum rules' linearisation basis)."""
    k, n = 4, 7
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(k, k, n))
    dense = dense + dense.transpose(1, 0, 2)
    other = rng.normal(size=(k, k, n))
    other = other + other.transpose(1, 0, 2)
    rows, cols = _pair_order(k)
    pairs, other_pairs = dense[rows, cols], other[rows, cols]
    x = rng.normal(size=(k, k))
    v = rng.normal(size=n)
    np.testing.assert_allclose(_unpack(jnp.asarray(pairs), k), dense, rtol=1e-12)
    np.testing.assert_allclose(_unpack(jnp.asarray(pairs @ v), k), dense @ v, rtol=1e-12)
    np.testing.assert_allclose(
        _contract(jnp.asarray(x), jnp.asarray(pairs)), np.einsum("kl,kln->n", x, dense),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        _pair_gram(jnp.asarray(pairs), jnp.asarray(other_pairs), k),
        np.einsum("ijn,kln->ijkl", dense, other), rtol=1e-12,
    )


def gd_rule(lr):
    return flows.OPTIMIZERS["gd"](lr=jnp.asarray(lr))


def rk4_gradient_flow(f, w, lr, steps, dt=1.0):
    """Classic RK4 for dw/dτ = −η∇L, written out with jax.grad and numpy."""
    grad = jax.jit(jax.grad(f))

    def rate(w):
        return -lr * np.asarray(grad(jnp.asarray(w)))

    path = [np.asarray(w)]
    for _ in range(steps):
        w = path[-1]
        k1 = rate(w)
        k2 = rate(w + 0.5 * dt * k1)
        k3 = rate(w + 0.5 * dt * k2)
        k4 = rate(w + dt * k3)
        path.append(w + dt * (k1 + 2 * k2 + 2 * k3 + k4) / 6)
    return np.stack(path)


@pytest.fixture(scope="module")
def mlp():
    """A tiny tanh network, started where gradient flow (η = 0.7) is at τ = 15: past the
    stiff initial transient (ηλ ≈ 1.8 at its initialization), below the edge."""
    problem = tanh_mlp_problem(n_in=3, width=8, n_out=2, n_data=10, seed=0)
    start = rk4_gradient_flow(problem.flat_loss, problem.w0, EDGE_LR, 60, dt=0.25)[-1]
    return flows.Problem(problem.loss, problem.unravel(jnp.asarray(start)), name="tiny")


@pytest.fixture(scope="module")
def runs(mlp):
    """The default integrator with the eigen-basis refined at every step (the exact
    method), vmapped over two learning rates (one compilation)."""

    @eqx.filter_jit
    def sweep(lrs):
        def one(lr):
            field = CentralFlow(problem=mlp, rule=gd_rule(lr), num_eigenvalues=3,
                                refresh_interval=1)
            return run_flow(field, STEPS, 1)

        return jax.vmap(one)(lrs)

    return sweep(jnp.asarray([EDGE_LR, STABLE_LR]))


@pytest.fixture(scope="module")
def edge_run(runs):
    return jax.tree_util.tree_map(lambda x: x[0], runs)


def test_enters_the_edge_with_two_eigenvalues_and_stays_on_it(edge_run):
    extras = edge_run["extras"]
    mu = np.asarray(extras["effective_eigenvalues"])  # eigenvalues of ηH
    trace = np.asarray(extras["sigma_trace"])
    first = np.argmax(mu[:, 0] > 1.999)
    second = np.argmax(mu[:, 1] > 1.999)
    assert mu[0, 0] < 1.9 and 20 < first < second < STEPS - 20
    # Gradient flow until the edge: no oscillation (Σ = 0) before the approach, which
    # the restoring term smooths over a few steps (κ = 1 per step).
    approach = np.argmax(mu[:, 0] > 1.95)
    assert first - approach < 10
    np.testing.assert_array_equal(trace[:approach], 0.0)
    assert np.all(trace[first + 1 :] > 0)
    # Never above the edge once there (the restoring term), then two eigenvalues on it.
    assert mu[first:, 0].max() < 2.0 + 1e-3 and mu[second:, 1].max() < 2.0 + 1e-3
    np.testing.assert_allclose(mu[-20:, :2], 2.0, atol=1e-3)
    assert np.all(np.asarray(extras["num_at_edge"])[-20:] == 2)
    sigma = np.asarray(extras["sigma_eigenvalues"])[-1]
    assert sigma[0] > 0 and sigma[1] > 0 and abs(sigma[2]) < 1e-12
    np.testing.assert_allclose(extras["sigma_trace"][-1], sigma.sum(), rtol=1e-8)
    # E[L] ≈ L + tr(Σ)/η and E‖g‖² ≈ ‖g‖² + (4/η²) tr Σ at the edge (GD).
    np.testing.assert_allclose(
        extras["predicted_loss"][-1],
        edge_run["loss"][-1] + extras["sigma_trace"][-1] / EDGE_LR,
        rtol=1e-3,
    )
    np.testing.assert_allclose(
        extras["predicted_grad_norm_sq"][-1],
        extras["grad_norm_sq"][-1] + 4 / EDGE_LR**2 * extras["sigma_trace"][-1],
        rtol=1e-10,
    )
    assert np.all(np.asarray(extras["sdcp_residual"]) < 1e-8)
    assert int(edge_run["status_code"]) == 0


def test_stable_phase_is_runge_kutta_gradient_flow(mlp, runs):
    # Below the edge X = 0: the flow is gradient flow, integrated by classic RK4 with
    # step 1 (here in the second lane of the vmapped run).
    out = jax.tree_util.tree_map(lambda x: x[1], runs)
    expected = rk4_gradient_flow(mlp.flat_loss, mlp.w0, STABLE_LR, STEPS)
    np.testing.assert_allclose(out["params"], expected, rtol=1e-9, atol=1e-11)
    np.testing.assert_array_equal(out["extras"]["sigma_trace"], 0.0)
    np.testing.assert_allclose(out["extras"]["predicted_loss"], out["loss"], rtol=1e-12)
    assert out["extras"]["effective_eigenvalues"][:, 0].max() < 1.9


VALLEY_SLOPE = 0.1


def _valley_loss(params):
    x, y = params["x"], params["y"]
    return -VALLEY_SLOPE * x + 0.5 * (1 + x**2) * y**2


def valley():
    """L(x, y) = −c x + ½(1 + x²) y² (c = `VALLEY_SLOPE`) from (0.5, 0.3)."""
    return flows.Problem(
        _valley_loss, {"x": jnp.asarray(0.5), "y": jnp.asarray(0.3)}, name="valley"
    )


@pytest.mark.parametrize("num_eigenvalues", [1, 5])
def test_toy_valley_stationary_point_is_analytic(num_eigenvalues):
    """L(x, y) = −c x + ½(1 + x²) y²: the sharpness 1 + x² grows with x, the central flow
    stops at 1 + x*² = 2/η, y = 0, with σ² = 2⟨−g, ∇S⟩/‖∇S‖² = c/x*. Tracking more
    eigenvalues than there are parameters tracks all of them."""
    c, lr = VALLEY_SLOPE, 0.5
    problem = valley()
    run = flows.simulate(problem, "central_flow", lr=lr, steps=120, num_eigenvalues=num_eigenvalues)
    x_star = np.sqrt(2 / lr - 1)
    np.testing.assert_allclose(run.params[-1], [x_star, 0.0], atol=1e-9)
    np.testing.assert_allclose(run.eigenvalues[-1, 0], 2 / lr, rtol=1e-9)
    np.testing.assert_allclose(run.extras["sigma_eigenvalues"][-1, 0], c / x_star, rtol=1e-8)
    np.testing.assert_allclose(
        run.extras["predicted_loss"][-1], -c * x_star + 2 * c / x_star, rtol=1e-8
    )
    assert run.status == "ok" and run.eigenvalues.shape == (121, min(num_eigenvalues, 2))


def dense_edge_reference(f, w, lr, k):
    """dw/dτ = −η(g + ½Σ X_ij g_ij) from dense linear algebra and scipy (κ = 0)."""
    w = jnp.asarray(w)
    g = np.asarray(jax.grad(f)(w))
    values, vectors = np.linalg.eigh(np.asarray(jax.hessian(f)(w)))
    u = np.sqrt(lr) * vectors[:, ::-1][:, :k]
    third = np.asarray(jax.jit(jax.jacfwd(jax.hessian(f)))(w))  # T_abc = ∂³L/∂a∂b∂c
    g_ij = np.einsum("abc,ai,bj->ijc", third, u, u)
    alpha = lr * np.einsum("ijn,n->ij", g_ij, g)
    beta = 0.5 * lr * np.einsum("ijn,kln->ijkl", g_ij, g_ij)
    x, _ = scipy_qp(alpha, beta) if k > 1 else (np.maximum(0, -alpha / beta[0, 0]), None)
    return -lr * (g + 0.5 * np.einsum("ij,ijn->n", x, g_ij)), g_ij, lr * values[::-1][:k]


def test_two_eigenvalues_match_an_independent_sdcp_solve(mlp, edge_run):
    f = mlp.flat_loss
    w = edge_run["params"][-1]  # both eigenvalues on the edge
    field = CentralFlow(
        problem=mlp,
        rule=gd_rule(EDGE_LR),
        num_eigenvalues=2,
        edge_margin=10.0,
        restoring_rate=0.0,
        eigensolver=flows.DenseEigh(),
    )
    y = (w, None, field.initial_state()[2])
    dw = np.asarray(eqx.filter_jit(lambda fl, y: fl(jnp.asarray(0.0), y, None))(field, y)[0])
    expected, g_ij, mu = dense_edge_reference(f, w, EDGE_LR, 2)
    np.testing.assert_allclose(mu, 2.0, atol=2e-3)
    np.testing.assert_allclose(dw, expected, rtol=1e-5, atol=1e-7 * np.abs(expected).max())
    # The flow raises neither edge eigenvalue: d(u_iᵀHu_i)/dτ = ⟨g_ii, dw⟩ ≥ 0 ⇒ ≤ 0.
    rates = np.einsum("iin,n->i", g_ij, dw)
    assert np.all(rates <= 1e-7 * np.abs(g_ij).max() * np.abs(dw).max())


def test_default_integrator_matches_a_tight_generic_integration(mlp, edge_run):
    # The same vector field, eigenpairs recomputed from scratch at every evaluation, by
    # adaptive Tsit5 at tight tolerances: the fast solver adds (almost) nothing.
    steps = 60  # through the entries of the first and of the second eigenvalue
    field = CentralFlow(
        problem=mlp, rule=gd_rule(EDGE_LR), num_eigenvalues=3, eigensolver=flows.DenseEigh()
    )
    tight = eqx.filter_jit(
        lambda fl: run_flow(
            fl,
            steps,
            1,
            integrator=flows.Integrator(solver=diffrax.Tsit5(), rtol=1e-9, atol=1e-11),
        )
    )(field)
    fast = edge_run["params"][: steps + 1]
    displacement = np.linalg.norm(tight["params"] - tight["params"][0], axis=1)
    error = np.linalg.norm(fast - tight["params"], axis=1)
    assert np.all(error[1:] <= 2e-3 * displacement[1:])
    # A generic solver does not refresh the report: NaN after the start, not stale values.
    assert np.isfinite(tight["extras"]["predicted_loss"][0])
    assert np.all(np.isnan(tight["extras"]["predicted_loss"][1:]))


@pytest.mark.parametrize(
    "options",
    [
        dict(num_eigenvalues=3, derivative_dtype="float32", refine_rtol=1e-3,
             refresh_interval=1),
        dict(num_eigenvalues=3, refresh_interval=3),
    ],
    ids=["float32-rtol", "refresh-interval"],
)
def test_cheaper_refinement_options_stay_on_the_default_flow(mlp, edge_run, options):
    """float32 HVPs and third derivatives, and a skipped Rayleigh–Ritz expansion once the
    residuals are small; or the eigenvectors and third derivatives refreshed every third
    step only: the same flow to well below the model's own error (percent)."""
    steps = 60

    @eqx.filter_jit
    def run(field):
        return run_flow(field, steps, 1)

    cheap = run(CentralFlow(problem=mlp, rule=gd_rule(EDGE_LR), **options))
    default = edge_run["params"][: steps + 1]
    displacement = np.linalg.norm(default - default[0], axis=1)
    error = np.linalg.norm(cheap["params"] - default, axis=1)
    # Measured: 4.6e-6 (float32, rtol); 3.1e-3 (refreshed every third step: this tiny
    # network's eigenvectors turn fast; 6e-5 at every fourth on the digits MLP).
    tolerance = 5e-3 if "refresh_interval" in options else 1e-3
    assert np.all(error[1:] <= tolerance * displacement[1:])
    assert np.max(error) > 1e-9 * displacement[-1]  # (a different computation)
    assert cheap["params"].dtype == jnp.float64
    assert np.max(np.asarray(cheap["extras"]["num_at_edge"])) == 2  # it did reach the edge
    if "refresh_interval" not in options:  # (held eigenvalues: the next test)
        np.testing.assert_allclose(
            cheap["extras"]["effective_eigenvalues"],
            edge_run["extras"]["effective_eigenvalues"][: steps + 1],
            rtol=1e-4,
        )


def test_edge_system_on_the_active_block_is_the_full_system(mlp, edge_run):
    """The edge system formed on the smallest top block holding the eigenvalues at the edge
    (a single run: sizes 0, 2, 3 through `lax.switch`) and on all K (`active_block=False`,
    what a sweep uses) give the same flow to rounding, through the stable phase, one and two
    eigenvalues at the edge."""

    @eqx.filter_jit
    def run(field):
        return run_flow(field, STEPS, 1)

    field = CentralFlow(problem=mlp, rule=gd_rule(EDGE_LR), num_eigenvalues=3,
                        refresh_interval=1)
    assert field._block_sizes() == (0, 2, 3)
    assert field.in_sweep().active_block is False and field.in_sweep()._block_sizes() == (3,)
    method = flows.Method.of("central_flow", num_eigenvalues=3)
    assert method.build(mlp, EDGE_LR, in_sweep=True).active_block is False
    assert method.build(mlp, EDGE_LR).active_block is None
    block, full = run(field), run(field.in_sweep())
    at_edge = np.asarray(block["extras"]["num_at_edge"])
    assert set(np.unique(at_edge)) == {0, 1, 2}  # every branch taken
    displacement = np.linalg.norm(full["params"][-1] - full["params"][0])
    np.testing.assert_allclose(block["params"], full["params"], rtol=0, atol=1e-11 * displacement)
    np.testing.assert_allclose(block["params"], edge_run["params"], rtol=0,
                               atol=1e-11 * displacement)  # the vmapped run: every branch


def test_adaptive_refresh_interval_follows_its_tolerance(mlp, edge_run):
    """The default run of GD's central flow holds the eigen-basis for an adaptive number of
    steps (1 to 8): on this tiny network, whose eigenvectors turn fast, it refreshes more
    often the tighter ``refresh_tolerance`` is and comes closer to the exact method (the
    basis refined at every step); at tolerance 0 it is the exact method. A sweep and the
    momentum rules refresh at every step."""
    steps = STEPS

    @eqx.filter_jit
    def run(field):  # the tolerance is not static: one compilation for the three
        return run_flow(field, steps, 1)

    field = CentralFlow(problem=mlp, rule=gd_rule(EDGE_LR), num_eigenvalues=3)
    assert field.refresh_interval is None and field.refresh_adaptive
    assert field.refresh_every == 8 and field.in_sweep().refresh_every == 1
    method = flows.Method.of("central_flow", num_eigenvalues=3)
    assert method.build(mlp, EDGE_LR, in_sweep=True).refresh_interval == 1
    assert method.build(mlp, EDGE_LR).refresh_interval is None
    heavy_ball = flows.OPTIMIZERS["momentum"](lr=jnp.asarray(EDGE_LR), beta=0.9)
    assert CentralFlow(problem=mlp, rule=heavy_ball).refresh_every == 1
    assert CentralFlow(problem=mlp, rule=gd_rule(EDGE_LR), refresh_interval=4).refresh_every == 4

    exact = np.asarray(edge_run["params"])
    displacement = np.linalg.norm(exact - exact[0], axis=1)[1:]
    figures = {}
    for tolerance in (0.0, 1e-4, 1e-3):
        out = run(eqx.tree_at(lambda f: f.refresh_tolerance, field, jnp.asarray(tolerance)))
        age = np.rint(np.asarray(out["extras"]["basis_age"])).astype(int)
        # The age counts up between refreshes, by one per step.
        assert np.all((age[1:] == 0) | (age[1:] == age[:-1] + 1)), age
        mu = np.asarray(out["extras"]["effective_eigenvalues"])
        error = np.linalg.norm(np.asarray(out["params"]) - exact, axis=1)[1:] / displacement
        figures[tolerance] = (np.sum(age == 0), age.max(), error.max(), mu[:, 0].max())
    # Measured (refreshes of 101, largest age, largest distance to the exact flow over GD's
    # displacement, largest ηλ₁): 101, 0, 1.5e-14; 76, 7, 2.5e-3, 2.0006; 39, 7, 3.9e-3, 2.0037.
    # (Fixed `refresh_interval=8`: 23 refreshes, 1.0e-2, 2.0094.)
    assert figures[0.0][:2] == (steps + 1, 0) and figures[0.0][2] < 1e-12
    assert figures[1e-4][0] > figures[1e-3][0] > (steps + 1) / 8
    assert figures[1e-4][1] == figures[1e-3][1] == 7  # held over 8 steps where it can
    assert 0 < figures[1e-4][2] < figures[1e-3][2] < 6e-3
    assert figures[1e-4][3] < figures[1e-3][3] < 2.006
    assert figures[1e-4][3] < 2.001


def test_held_steps_report_the_eigenvalues_of_the_hessian(mlp):
    """Between refreshes (``refresh_interval``) the active eigenvalues come from UᵀHU
    carried to first order in w; at every step, held or not, they match a dense
    eigendecomposition of ηH at the flow's point."""
    steps, interval = 60, 5

    @eqx.filter_jit
    def run(field):
        return run_flow(field, steps, 1)

    held = run(
        CentralFlow(problem=mlp, rule=gd_rule(EDGE_LR), num_eigenvalues=3,
                    refresh_interval=interval)
    )
    hessian = jax.jit(jax.hessian(mlp.flat_loss))
    reported = np.asarray(held["extras"]["effective_eigenvalues"])
    for step in range(steps - 2 * interval, steps + 1):  # at the edge, several cycles
        exact = np.linalg.eigvalsh(EDGE_LR * np.asarray(hessian(held["params"][step])))[::-1]
        # The two at the edge are carried (measured: 4e-4 at most, the directions outside
        # span U that a held U misses); the third, below the edge, is the last refresh's.
        np.testing.assert_allclose(reported[step, :2], exact[:2], rtol=1e-3, err_msg=str(step))
        np.testing.assert_allclose(reported[step, 2], exact[2], rtol=3e-2, err_msg=str(step))
        assert exact[0] < 2.002 and exact[1] > 1.99, (step, exact)  # two held on the edge


def test_bad_options_are_rejected(mlp):
    with pytest.raises(ValueError, match="num_eigenvalues"):
        CentralFlow(problem=mlp, rule=gd_rule(0.1), num_eigenvalues=0)
    with pytest.raises(ValueError, match="max_edge"):
        CentralFlow(problem=mlp, rule=gd_rule(0.1), num_eigenvalues=2, max_edge=3)
    with pytest.raises(ValueError, match="guard"):
        CentralFlow(problem=mlp, rule=gd_rule(0.1), guard=-3)
    with pytest.raises(ValueError, match="refine_iterations"):
        CentralFlow(problem=mlp, rule=gd_rule(0.1), refine_iterations=0)
    with pytest.raises(ValueError, match="edge_margin"):
        CentralFlow(problem=mlp, rule=gd_rule(0.1), edge_margin=-0.1)
    with pytest.raises(ValueError, match="refine_rtol"):
        CentralFlow(problem=mlp, rule=gd_rule(0.1), refine_rtol=-1e-3)
    with pytest.raises(ValueError, match="refresh_interval"):
        CentralFlow(problem=mlp, rule=gd_rule(0.1), refresh_interval=0)
    with pytest.raises(ValueError, match="derivative_dtype must be a floating-point type"):
        CentralFlow(problem=mlp, rule=gd_rule(0.1), derivative_dtype="int8")
    with pytest.raises(ValueError, match="derivative_dtype must be a floating-point type"):
        CentralFlow(problem=mlp, rule=gd_rule(0.1), derivative_dtype="fp33")
    with pytest.raises(ValueError, match="tableau"):
        CentralFlowSolver(tableau="rk9")
    assert set(TABLEAUS) == {"euler", "heun", "rk3", "rk4"}
    with pytest.raises(ValueError, match="restoring"):
        flows.simulate(mlp, "central_flow", lr=0.1, steps=2, restoring=1.0)


def test_two_eigenvalues_near_the_edge_of_a_quadratic_are_rk4_gradient_flow():
    # ηλ = 1.95 and 1.92 are both inside the edge margin, so the two-eigenvalue
    # complementarity problem is solved, with β = 0 (no third derivatives): X = 0 and the
    # flow is gradient flow, which the default RK4 steps exactly as R(−ηH)^k w₀.
    problem, h, w0 = quadratic_problem([19.5, 19.2, 5.0, 1.0], seed=2)
    lr, steps = 0.1, 12
    run = flows.simulate(problem, "central_flow", lr=lr, steps=steps, num_eigenvalues=2)
    z = -lr * h
    rk4 = np.eye(4) + z + z @ z / 2 + z @ z @ z / 6 + z @ z @ z @ z / 24
    expected = np.stack([np.linalg.matrix_power(rk4, k) @ w0 for k in range(steps + 1)])
    assert run.status == "ok"
    np.testing.assert_allclose(run.params, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(run.extras["sigma_trace"], 0.0)
    np.testing.assert_allclose(run.eigenvalues[:, :2], [[19.5, 19.2]] * (steps + 1), rtol=1e-12)


def test_evaluate_at_an_integer_step(mlp):
    field = CentralFlow(problem=mlp, rule=gd_rule(EDGE_LR), num_eigenvalues=2)
    at_int = field.evaluate(3, mlp.w0)
    at_float = field.evaluate(jnp.asarray(3.0), mlp.w0)
    np.testing.assert_array_equal(at_int.effective_eigenvalues, at_float.effective_eigenvalues)
    assert float(at_int.time) == 3.0


def test_forward_mode_derivative_on_the_valley_is_analytic():
    """d x*/dη of the valley's stationary point x* = √(2/η − 1) is −1/(η² x*): forward
    mode through the default integrator (the SDCP's derivative is implicit)."""
    lr = 0.5
    problem = valley()

    def final(lr):
        field = CentralFlow(problem=problem, rule=gd_rule(lr), num_eigenvalues=1)
        integrator = flows.Integrator(adjoint=diffrax.ForwardMode())
        return run_flow(field, 120, integrator=integrator)["params"][-1]

    params, tangent = jax.jit(lambda lr: jax.jvp(final, (lr,), (jnp.ones_like(lr),)))(
        jnp.asarray(lr)
    )
    x_star = np.sqrt(2 / lr - 1)
    np.testing.assert_allclose(params, [x_star, 0.0], atol=1e-9)
    np.testing.assert_allclose(tangent, [-1 / (lr**2 * x_star), 0.0], atol=1e-8)


def test_forward_mode_derivative_through_two_edge_eigenvalues(mlp):
    """d w(τ)/dη over 100 steps (two eigenvalues enter the edge) with exact eigenpairs
    (dense eigh, differentiable) and a generic diffrax solver, against central finite
    differences of the same integration."""

    def final(lr):
        field = CentralFlow(
            problem=mlp, rule=gd_rule(lr), num_eigenvalues=3, eigensolver=flows.DenseEigh()
        )
        run = run_flow(
            field,
            STEPS,
            integrator=flows.Integrator(
                solver=diffrax.Tsit5(), dt0=0.25, adjoint=diffrax.ForwardMode()
            ),
        )
        return run["params"][-1]

    with_tangent = jax.jit(lambda lr: jax.jvp(final, (lr,), (jnp.ones_like(lr),)))
    params, tangent = with_tangent(jnp.asarray(EDGE_LR))
    top = np.linalg.eigvalsh(np.asarray(jax.hessian(mlp.flat_loss)(params)))[::-1][:2]
    np.testing.assert_allclose(EDGE_LR * top, 2.0, atol=2e-3)  # both on the edge
    step = 1e-6

    def run(lr):  # the primal of the same compiled function: one compilation, not two
        return with_tangent(jnp.asarray(lr))[0]

    finite = (run(EDGE_LR + step) - run(EDGE_LR - step)) / (2 * step)
    assert np.linalg.norm(finite) > 1.0
    np.testing.assert_allclose(tangent, finite, atol=1e-5 * np.abs(finite).max())
