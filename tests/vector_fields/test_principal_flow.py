"""The principal flow: exact on quadratics (GD at every integer step, in every regime),
closer to GD than gradient and modified flows on toys and a small MLP, dense = Lanczos.

Truth: numpy matrix powers and eigendecompositions for quadratics, GD itself, and an
independent scipy integration of the flow on a toy.
Flows are run through one jitted `run_flow` so problems with the same structure share
a compilation (the learning rate is an array).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

import flows
from flows.linalg.hvp import hvp
from flows.linalg.matfun import lanczos_funm, log1m_over_x
from flows.optimizers import GD
from flows.vector_fields import GradientFlow, ModifiedFlow, PrincipalFlow
from flows.vector_fields.principal_flow import AUTO_DENSE_MAX_PARAMS
from tests.helpers import quadratic_problem, tanh_mlp_problem

run_flow = eqx.filter_jit(flows.run_flow)
run_discrete = eqx.filter_jit(flows.run_discrete)

TIGHT = {"integrator": flows.Integrator(rtol=1e-11, atol=1e-13)}

# ηλ for η = 1: a saddle direction, monotone and oscillating convergence, divergence.
QUADRATIC_EIGENVALUES = [-0.4, 0.3, 0.8, 1.4, 1.9, 2.3, 3.0]


def gd_on_quadratic(h, w0, lr, steps):
    step = np.eye(len(w0)) - lr * h
    return np.stack([np.linalg.matrix_power(step, k) @ w0 for k in range(steps + 1)])


def test_principal_flow_is_gd_at_every_step_on_a_quadratic():
    problem, h, w0 = quadratic_problem(QUADRATIC_EIGENVALUES, seed=3)
    lr, steps = 1.0, 14
    gd = gd_on_quadratic(h, w0, lr, steps)
    run = flows.simulate(
        problem, "principal_flow", lr=lr, steps=steps, divergence_factor=1e4, **TIGHT
    )
    # The ηλ = 3 direction grows like 2^k: both runs cross the divergence threshold at
    # the same step, and agree to 1e-9 relative up to there.
    loss_gd = 0.5 * np.einsum("ki,ij,kj->k", gd, h, gd)
    threshold = 1e4 * (1 + abs(loss_gd[0]))
    gd_stop = int(np.argmax(np.abs(loss_gd) > threshold))
    assert 5 < gd_stop < steps
    assert run.status == f"diverged at step {gd_stop}"
    reached = slice(0, gd_stop)
    error = np.linalg.norm(run.params[reached] - gd[reached], axis=1)
    assert np.all(error <= 1e-9 * np.linalg.norm(gd[reached], axis=1)), error
    # At integer steps the state is real again; between them it is complex, and
    # max_imag is the largest |Im w_i| seen since the previous step: the closed form's
    # supremum over that interval (sampled finely here), to the integrator's sampling.
    assert np.all(
        run.extras["imag_at_step"][reached] < 1e-8 * np.linalg.norm(gd[reached], axis=1)
    )
    values, vectors = np.linalg.eigh(h)
    times = np.linspace(0, gd_stop - 1, 2000 * (gd_stop - 1) + 1)
    imag = np.abs(np.imag(((1 - lr * values + 0j) ** times[:, None] * (vectors.T @ w0))
                          @ vectors.T)).max(axis=1)
    supremum = [imag[(times > k - 1) & (times <= k)].max() for k in range(1, gd_stop)]
    seen = np.asarray(run.extras["max_imag"][1:gd_stop])
    assert run.extras["max_imag"][0] == 0
    np.testing.assert_array_less(0.95 * np.asarray(supremum), seen)
    np.testing.assert_array_less(seen, 1.001 * np.asarray(supremum))


# Two toys in one polynomial family (one compilation for both):
# L(u, v) = c₀u²v² + c₁v² + c₂uv + c₃.
VALLEY = (1.0, 1.0, 0.0, 0.0)  # (1 + x²) y²
SCALAR_PRODUCT = (0.5, 0.0, -1.0, 0.5)  # ½(ab − 1)²


def _toy_loss(coefficients, params):
    u, v = params["u"], params["v"]
    c = coefficients
    return c[0] * u * u * v * v + c[1] * v * v + c[2] * u * v + c[3]


def toy(coefficients, u, v):
    params = {"u": jnp.asarray(u, jnp.float64), "v": jnp.asarray(v, jnp.float64)}
    return flows.Problem(jax.tree_util.Partial(_toy_loss, jnp.asarray(coefficients)), params)


def test_toy_family_is_the_zoo_toys():
    rng = np.random.default_rng(0)
    for u, v in rng.standard_normal((3, 2)):
        valley = flows.problems.valley(x=u, y=v)
        product = flows.problems.scalar_product(a=u, b=v)
        np.testing.assert_allclose(toy(VALLEY, u, v).flat_loss(jnp.asarray([u, v])),
                                   valley.flat_loss(valley.w0), rtol=1e-14)
        np.testing.assert_allclose(toy(SCALAR_PRODUCT, u, v).flat_loss(jnp.asarray([u, v])),
                                   product.flat_loss(product.w0), rtol=1e-14)


TOY_OPTIONS = {"divergence_factor": 10.0}
FLOW_OPTIONS = {
    "integrator": flows.Integrator(rtol=1e-8, atol=1e-10, max_steps=4000),
    "divergence_factor": 10.0,
}


def distances_to_gd(problem, lr, steps, flow_classes, **flow_options):
    rule = GD(lr=jnp.asarray(lr))
    gd = run_discrete(problem, rule, steps, **TOY_OPTIONS)
    out = {}
    for cls in flow_classes:
        run = run_flow(cls(problem=problem, rule=rule, **flow_options), steps, **FLOW_OPTIONS)
        assert int(run["status_code"]) == 0
        out[cls.__name__] = np.max(np.linalg.norm(run["params"] - gd["params"], axis=1))
        out[cls.__name__ + ".max_imag"] = float(np.max(run["extras"].get("max_imag", 0.0)))
    return out


@pytest.mark.parametrize(
    "coefficients, start", [(VALLEY, (1.0, 0.1)), (SCALAR_PRODUCT, (0.5, 3.0))]
)
def test_principal_flow_is_closer_to_gd_than_gradient_and_modified_flow_on_toys(
    coefficients, start
):
    problem = toy(coefficients, *start)
    lr = 1.5 / float(flows.sharpness(problem.flat_loss, problem.w0))  # ηλ_max = 1.5
    d = distances_to_gd(problem, lr, 20, [GradientFlow, ModifiedFlow, PrincipalFlow])
    assert d["PrincipalFlow"] <= 0.1 * d["GradientFlow"], d
    assert d["PrincipalFlow"] < d["ModifiedFlow"], d
    assert d["PrincipalFlow.max_imag"] > 1e-4  # GD oscillates: the flow went complex


def test_near_the_minimizers_the_error_is_second_order_in_the_oscillation():
    """On (1 + x²)y² from (1, y₀) at ηλ_max = 1.9: with x frozen the loss is quadratic in y,
    where the principal flow is exact, so its error comes from x's drift, driven by
    ∂L/∂x = 2xy², and is O(y₀²); gradient flow misses the y-oscillation itself, O(y₀).
    Halving y₀ divides them by 4 and 2, and near enough the minimizers the principal flow is
    10× closer to GD than gradient flow even this close to the edge."""
    gaps = {}
    for y0 in (0.02, 0.01):
        problem = toy(VALLEY, 1.0, y0)
        lr = 1.9 / float(flows.sharpness(problem.flat_loss, problem.w0))
        gaps[y0] = distances_to_gd(problem, lr, 20, [GradientFlow, ModifiedFlow, PrincipalFlow])
    pf_order = np.log2(gaps[0.02]["PrincipalFlow"] / gaps[0.01]["PrincipalFlow"])
    gf_order = np.log2(gaps[0.02]["GradientFlow"] / gaps[0.01]["GradientFlow"])
    assert abs(pf_order - 2) < 0.15, gaps
    assert abs(gf_order - 1) < 0.15, gaps
    near = gaps[0.01]
    assert near["PrincipalFlow"] <= 0.1 * near["GradientFlow"], near
    assert near["PrincipalFlow"] < near["ModifiedFlow"], near


def valley_principal_flow_by_scipy(w0, lr, steps):
    """The principal flow on (1 + x²)y², integrated by scipy (DOP853, complex state) with
    the analytic gradient and Hessian and numpy's ``eig``: independent of flows."""

    def rate(t, w):
        x, y = w
        g = np.array([2 * x * y * y, 2 * (1 + x * x) * y])
        h = np.array([[2 * y * y, 4 * x * y], [4 * x * y, 2 * (1 + x * x)]])
        values, vectors = np.linalg.eig(h)
        z = 1 - lr * values
        # log with its cut on the negative imaginary axis, as in the flow's docstring
        angle = np.angle(z)
        angle = np.where(angle <= -np.pi / 2, angle + 2 * np.pi, angle)
        phi = (np.log(np.abs(z)) + 1j * angle) / (lr * values)
        return lr * (vectors @ (phi * np.linalg.solve(vectors, g)))

    solution = scipy.integrate.solve_ivp(
        rate, (0, steps), np.asarray(w0, complex), method="DOP853",
        t_eval=np.arange(steps + 1), rtol=1e-12, atol=1e-14,
    )
    return solution.y.T


def test_the_gap_to_gd_near_the_edge_is_the_flow_itself():
    """At ηλ_max = 1.9 from (1, 0.1) the principal flow is only ~3.4× closer to GD than
    gradient flow (the O(y₀²) error of the test above); an independent integration of
    the same equation gives the same trajectory, so that gap is the model's."""
    problem = toy(VALLEY, 1.0, 0.1)
    lr = 1.9 / float(flows.sharpness(problem.flat_loss, problem.w0))
    rule = GD(lr=jnp.asarray(lr))
    steps = 20
    pf = run_flow(PrincipalFlow(problem=problem, rule=rule), steps, **FLOW_OPTIONS)
    reference = valley_principal_flow_by_scipy([1.0, 0.1], lr, steps)
    assert np.max(np.abs(reference.imag)) > 1e-3  # the complex regime
    np.testing.assert_allclose(pf["params"], reference.real, rtol=0, atol=1e-8)
    gd = run_discrete(problem, rule, steps, **TOY_OPTIONS)["params"]
    gap = np.max(np.linalg.norm(reference.real - gd, axis=1))
    gf = run_flow(GradientFlow(problem=problem, rule=rule), steps, **FLOW_OPTIONS)["params"]
    assert 2 < np.max(np.linalg.norm(gf - gd, axis=1)) / gap < 5


def test_state_stays_real_below_one_over_eta():
    problem = toy(VALLEY, 1.0, 0.1)
    lr = 0.8 / float(flows.sharpness(problem.flat_loss, problem.w0))
    d = distances_to_gd(problem, lr, 20, [PrincipalFlow])
    assert d["PrincipalFlow.max_imag"] == 0.0


def test_principal_flow_diverges_where_gd_diverges_on_a_toy():
    problem = toy(VALLEY, 0.1, 0.1)
    rule = GD(lr=jnp.asarray(4.0 / float(flows.sharpness(problem.flat_loss, problem.w0))))
    gd = run_discrete(problem, rule, 20, **TOY_OPTIONS)
    pf = run_flow(PrincipalFlow(problem=problem, rule=rule), 20, **FLOW_OPTIONS)
    assert int(gd["status_code"]) == int(pf["status_code"]) == 1  # diverged
    assert int(pf["stopped_at"]) == int(gd["stopped_at"])
    stop = int(gd["stopped_at"])
    np.testing.assert_allclose(pf["loss"][:stop], gd["loss"][:stop], rtol=0.05)


@pytest.fixture(scope="module")
def trained_mlp():
    """A tiny tanh MLP (30 parameters) after 50 GD steps, where ηλ_max = 1.5 is stable."""
    problem = tanh_mlp_problem()
    start = run_discrete(problem, GD(lr=jnp.asarray(0.4)), 50)["params"][-1]
    problem = flows.Problem(problem.loss, problem.unravel(start), name="tiny_mlp")
    lr = 1.5 / float(flows.sharpness(problem.flat_loss, problem.w0))
    return problem, lr


@pytest.fixture(scope="module")
def mlp_runs(trained_mlp):
    problem, lr = trained_mlp
    rule = GD(lr=jnp.asarray(lr))
    steps = 50
    runs = {"gd": run_discrete(problem, rule, steps)}
    fields = {
        "gradient_flow": GradientFlow(problem=problem, rule=rule),
        "modified_flow": ModifiedFlow(problem=problem, rule=rule),
        "dense": PrincipalFlow(problem=problem, rule=rule, path="dense"),
        "lanczos": PrincipalFlow(problem=problem, rule=rule, path="lanczos", num_matvecs=16),
    }
    for name, field in fields.items():
        runs[name] = run_flow(
            field, steps, integrator=flows.Integrator(rtol=1e-8, atol=1e-10, max_steps=4000)
        )
        assert int(runs[name]["status_code"]) == 0
    return runs


def test_principal_flow_is_closer_to_gd_on_a_small_mlp(mlp_runs):
    gd = mlp_runs["gd"]["params"][:21]
    d = {k: np.max(np.linalg.norm(mlp_runs[k]["params"][:21] - gd, axis=1)) for k in mlp_runs}
    assert d["dense"] <= 0.1 * d["gradient_flow"], d
    assert d["dense"] < d["modified_flow"], d
    assert np.max(mlp_runs["dense"]["extras"]["max_imag"]) > 0


def test_lanczos_path_agrees_with_dense_path_over_50_steps(mlp_runs):
    dense, lanczos = mlp_runs["dense"]["params"], mlp_runs["lanczos"]["params"]
    error = np.linalg.norm(lanczos - dense, axis=1) / np.linalg.norm(dense, axis=1)
    assert np.max(error) < 1e-5, error


def test_simulate_passes_the_flow_options():
    problem = tanh_mlp_problem()
    field = flows.make_method(
        problem, "principal_flow", 0.1, options={"path": "lanczos", "num_matvecs": 7}
    )
    assert isinstance(field, PrincipalFlow)
    assert (field.path, field.num_matvecs) == ("lanczos", 7)
    assert {"path", "num_matvecs"} <= flows.methods.method_options("principal_flow")


def test_the_flow_models_gd_only():
    problem = tanh_mlp_problem()
    with pytest.raises(ValueError, match="gradient descent only"):
        flows.make_method(problem, "principal_flow", 0.1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="path"):
        flows.make_method(problem, "principal_flow", 0.1, options={"path": "exact"})
    with pytest.raises(ValueError, match="num_matvecs"):
        flows.make_method(problem, "principal_flow", 0.1, options={"num_matvecs": 0})


def test_path_is_chosen_by_size_and_dense_refuses_large_models():
    small = flows.Problem(lambda w: jnp.sum(w**2), jnp.zeros(AUTO_DENSE_MAX_PARAMS))
    large = flows.Problem(lambda w: jnp.sum(w**2), jnp.zeros(50_000))
    rule = GD(lr=jnp.asarray(0.1))
    assert PrincipalFlow(problem=small, rule=rule).resolved_path == "dense"
    assert PrincipalFlow(problem=large, rule=rule).resolved_path == "lanczos"
    assert PrincipalFlow(problem=small, rule=rule, path="lanczos").resolved_path == "lanczos"
    with pytest.raises(ValueError, match="path='lanczos'"):
        PrincipalFlow(problem=large, rule=rule, path="dense")


def test_real_state_lanczos_is_the_complex_computation(trained_mlp):
    # At a real state with ηλ_max = 1.5 the field is complex; the Lanczos path then runs
    # in real arithmetic (real HVPs and Krylov basis, complex coefficients only).
    problem, lr = trained_mlp
    rule = GD(lr=jnp.asarray(lr))
    w = problem.w0.astype(jnp.complex128)
    y = (w, None)

    def rate(field, y):
        return field(jnp.asarray(0.0), y, None)[0]

    rate = eqx.filter_jit(rate)
    lanczos = PrincipalFlow(problem=problem, rule=rule, path="lanczos", num_matvecs=30)
    dense = PrincipalFlow(problem=problem, rule=rule, path="dense")
    real_branch = np.asarray(rate(lanczos, y))
    assert np.max(np.abs(real_branch.imag)) > 1e-3 * np.max(np.abs(real_branch))
    np.testing.assert_allclose(real_branch, np.asarray(rate(dense, y)), rtol=1e-8, atol=1e-12)
    f = problem.flat_loss
    complex_arithmetic = lr * lanczos_funm(
        lambda x: log1m_over_x(lr * x), lambda v: hvp(f, w, v), jax.grad(f, holomorphic=True)(w),
        30,
    )
    np.testing.assert_allclose(real_branch, np.asarray(complex_arithmetic), rtol=1e-10, atol=1e-13)
