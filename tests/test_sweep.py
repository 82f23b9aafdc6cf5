"""`flows.sweep`: every member is its own `simulate` run (checked against closed forms on a
quadratic and against `simulate`), divergence stays per member, new learning-rate values
reuse the compiled function, seeds, sharding across (forced) host devices, the summary plot."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import diffrax
import numpy as np
import pytest
import scipy.linalg

import flows
from flows.integrate import divergence_threshold
from flows.plots.sweep import plot_sweep_summary, sweep_summary
from tests.helpers import count_compilations, quadratic_problem

ROOT = Path(__file__).resolve().parents[1]
EIGS = [3.0, 1.0, 0.6, 0.25, 0.1, -0.5]  # the negative one: large η diverge for every method
LRS = [0.9, 0.1, 0.3]  # unsorted on purpose; chunk_size=2 gives two chunks and one padded member
STEPS = 30

# Methods required by the issue; the later flows are picked up as soon as they are registered.
METHODS = [
    m
    for m in ["gd", "gradient_flow", "modified_flow", "principal_flow", "central_flow"]
    if m == "gd" or m in flows.FLOWS
]


@pytest.fixture(scope="module")
def quadratic():
    return quadratic_problem(EIGS)


def closed_form(method, h, w0, lr, steps):
    """w(k) for k = 0..steps: GD and the principal flow are (I − ηH)^k w₀ (the PF is exact at
    integers on a quadratic); gradient flow (and the central flow below the edge) exp(−ηkH) w₀;
    the modified flow exp(−ηk(H + (η/2)H²)) w₀."""
    if method in ("gd", "principal_flow"):
        step = np.eye(len(w0)) - lr * h
        return np.stack([np.linalg.matrix_power(step, k) @ w0 for k in range(steps + 1)])
    generator = h + 0.5 * lr * h @ h if method == "modified_flow" else h
    return np.stack([scipy.linalg.expm(-lr * k * generator) @ w0 for k in range(steps + 1)])


def first_step_beyond(h, ws, w0):
    """The first k with |L(w_k)| beyond the divergence threshold (−1 if none)."""
    losses = 0.5 * np.einsum("ki,ij,kj->k", ws, h, ws)
    threshold = float(divergence_threshold(0.5 * w0 @ h @ w0))
    beyond = np.flatnonzero(np.abs(losses) > threshold)
    return int(beyond[0]) if beyond.size else -1


@pytest.fixture(scope="module", params=METHODS)
def method_sweep(request, quadratic):
    problem, _, _ = quadratic
    return request.param, flows.sweep(problem, request.param, lrs=LRS, steps=STEPS, chunk_size=2)


def test_members_are_their_simulate_runs_and_divergence_stays_per_member(method_sweep, quadratic):
    method, run = method_sweep
    problem, h, w0 = quadratic
    assert run.params.shape == (len(LRS), STEPS + 1, len(w0))
    np.testing.assert_array_equal(run.lr, LRS)
    # The stable members, in the caller's order, against the closed forms.
    for i, lr in enumerate(LRS[1:], start=1):
        assert run.status[i] == "ok"
        tol = dict(rtol=1e-6, atol=1e-8)
        if method == "central_flow":
            # Far below the edge the central flow is gradient flow, to its own accuracy (its
            # simulate run differs from exp(−ηkH)w₀ as much; member 0 below checks the sweep).
            if lr * max(EIGS) > 0.5:
                continue
            tol = dict(rtol=1e-4, atol=1e-5)
        expected = closed_form(method, h, w0, lr, STEPS)
        np.testing.assert_allclose(run.params[i], expected, **tol)
        np.testing.assert_allclose(
            run.loss[i], 0.5 * np.einsum("ki,ij,kj->k", expected, h, expected), **tol
        )
    # η = 0.9 diverges (ηλ = 2.7 > 2 for GD, the negative eigenvalue for the flows); its
    # step is flagged and its neighbours in the padded chunk and the other chunk are fine.
    assert run.status_code[0] == 1 and run.status[0].startswith("diverged")
    if method in ("gd", "gradient_flow", "modified_flow"):
        exact = closed_form(method, h, w0, LRS[0], STEPS)
        assert int(run.stopped_at[0]) == first_step_beyond(h, exact, w0)
    # The diverged member (sharing its chunk with padding) is exactly its own simulate run
    # (a sweep refreshes the central flow's eigen-basis at every step).
    options = {"refresh_interval": 1} if method == "central_flow" else {}
    single = flows.simulate(problem, method, lr=LRS[0], steps=STEPS, **options)
    assert int(run.status_code[0]) == int(single.status_code)
    assert int(run.stopped_at[0]) == int(single.stopped_at)
    np.testing.assert_allclose(run.params[0], single.params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(run.loss[0], single.loss, rtol=1e-9, atol=1e-12)
    assert set(run.extras) == set(single.extras)
    for key, value in single.extras.items():
        np.testing.assert_allclose(run.extras[key][0], value, rtol=1e-9, atol=1e-12)
    stop = int(run.stopped_at[0])
    assert np.all(np.isfinite(run.params[0, :stop]))
    assert not np.any(np.isfinite(run.params[0, stop + 1 :]))


def test_new_learning_rate_values_do_not_recompile(quadratic):
    problem, h, w0 = quadratic
    options = dict(steps=STEPS, chunk_size=2)
    first, _ = count_compilations(
        lambda: flows.sweep(problem, "gradient_flow", lrs=LRS, **options)
    )
    new_lrs = [0.15, 0.35, 0.05]
    second, count = count_compilations(
        lambda: flows.sweep(problem, "gradient_flow", lrs=new_lrs, **options)
    )
    assert count == 0
    assert second.compile_time == 0.0 and first.params.shape == second.params.shape
    for i, lr in enumerate(new_lrs):
        np.testing.assert_allclose(
            second.params[i], closed_form("gradient_flow", h, w0, lr, STEPS), rtol=1e-6, atol=1e-8
        )


def test_seeds_sweep_the_product_with_data_that_depend_on_the_seed():
    # The zoo's quadratic draws its Hessian from the seed: the data leaf is batched too.
    eigs = [2.0, 0.5, 0.1]

    def factory(seed):
        return flows.problems.quadratic(eigs, w0=[1.0, -1.0, 0.5 + seed], seed=seed)

    lrs, seeds, steps = [0.5, 0.2], [0, 3, 7], 6
    run = flows.sweep(factory, "gd", lrs=lrs, seeds=seeds, steps=steps)
    assert run.params.shape == (2, 3, steps + 1, 3) and run.lr.shape == (2, 3)
    for i, lr in enumerate(lrs):
        for j, seed in enumerate(seeds):
            p = factory(seed)
            h = np.asarray(flows.problems.quadratic_hessian(p))
            expected = closed_form("gd", h, np.asarray(p.w0), lr, steps)
            np.testing.assert_allclose(run.params[i, j], expected, rtol=1e-10, atol=1e-12)
            assert run.lr[i, j] == lr


def test_seeds_with_closures_may_only_change_the_initial_parameters():
    problem, h, _ = quadratic_problem([2.0, 0.5, 0.1, 1.0])

    def same_loss(seed):
        w0 = np.random.default_rng(seed).standard_normal(4)
        return flows.Problem(lambda p: problem.loss(p), {"a": w0[:2], "b": w0[2:].reshape(2, 1)})

    run = flows.sweep(same_loss, "gd", lrs=[0.4], seeds=[1, 2], steps=5)
    for j, seed in enumerate([1, 2]):
        w0 = np.random.default_rng(seed).standard_normal(4)
        np.testing.assert_allclose(
            run.params[0, j], closed_form("gd", h, w0, 0.4, 5), rtol=1e-10, atol=1e-12
        )
    with pytest.raises(ValueError, match="another loss"):
        flows.sweep(lambda seed: quadratic_problem(EIGS, seed)[0], "gd", lrs=[0.1], seeds=[0, 1],
                    steps=2)


def test_bad_input_raises_clear_errors(quadratic):
    problem = quadratic[0]
    with pytest.raises(ValueError, match="lrs"):
        flows.sweep(problem, "gd", lrs=[], steps=2)
    with pytest.raises(ValueError, match="lrs"):
        flows.sweep(problem, "gd", lrs=[0.1, -1.0], steps=2)
    with pytest.raises(ValueError, match="lrs"):
        flows.sweep(problem, "gd", lrs=0.1, steps=2)
    with pytest.raises(ValueError, match="seed -> Problem"):
        flows.sweep(problem, "gd", lrs=[0.1], seeds=[0, 1], steps=2)
    with pytest.raises(ValueError, match="flows.Problem"):
        flows.sweep(lambda seed: problem, "gd", lrs=[0.1], steps=2)
    with pytest.raises(ValueError, match="bogus"):
        flows.sweep(problem, "gd", lrs=[0.1], steps=2, bogus=1)
    with pytest.raises(ValueError, match="unknown method"):
        flows.sweep(problem, "nope", lrs=[0.1], steps=2)
    with pytest.raises(ValueError, match="chunk_size"):
        flows.sweep(problem, "gd", lrs=[0.1], steps=2, chunk_size=0)


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np, scipy.linalg
    import flows

    assert len(jax.devices()) == 4, jax.devices()
    h = np.diag([3.0, 1.0, 0.25])
    problem = flows.problems.quadratic_from_matrix(h, [1.0, -2.0, 0.5])
    w0 = np.array([1.0, -2.0, 0.5])
    lrs = [0.05 * (i + 1) for i in range(8)] + [0.9]  # 0.9 diverges; 9 members pad to 12
    sharded = flows.sweep(problem, "gd", lrs=lrs[:8], steps=12)
    single = flows.sweep(problem, "gd", lrs=lrs[:8], steps=12, devices=jax.devices()[:1])
    assert len(sharded.params.sharding.device_set) == 4, sharded.params.sharding
    assert len(single.params.sharding.device_set) == 1
    np.testing.assert_allclose(sharded.params, single.params, rtol=1e-12, atol=0)
    for i, lr in enumerate(lrs[:8]):
        step = np.eye(3) - lr * h
        expected = [np.linalg.matrix_power(step, k) @ w0 for k in range(13)]
        np.testing.assert_allclose(sharded.params[i], expected, rtol=1e-10, atol=1e-12)
    # Adaptive flow, padded, two chunks of 8 (two members per device), one diverging member.
    flow = flows.sweep(problem, "gradient_flow", lrs=lrs, steps=12, chunk_size=5)
    assert flow.params.shape == (9, 13, 3)
    for i, lr in enumerate(lrs):
        expected = [scipy.linalg.expm(-lr * k * h) @ w0 for k in range(13)]
        np.testing.assert_allclose(flow.params[i], expected, rtol=1e-6, atol=1e-8)
    print("SHARDED-OK")
    """
)


def test_sweep_axis_is_sharded_across_forced_host_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SHARDED-OK" in result.stdout


def test_summary_against_eta_and_its_plot(quadratic, tmp_path):
    problem, h, w0 = quadratic
    # The same shapes as the gradient-flow sweep above: its compiled function is reused.
    run = flows.sweep(problem, "gradient_flow", lrs=LRS, steps=STEPS, chunk_size=2)
    gd = flows.sweep(problem, "gd", lrs=LRS, steps=STEPS, tracking=1)
    summary = sweep_summary(gd)
    lam = max(EIGS)  # a quadratic's sharpness is constant
    np.testing.assert_allclose(gd.sharpness[1:], lam, rtol=1e-10)
    np.testing.assert_allclose(summary["final_lr_sharpness"][1:], np.asarray(LRS[1:]) * lam)
    # η = 0.9 starts at the edge (ηS = 2.7); η = 0.1, 0.3 never reach it.
    assert summary["time_to_edge"][0] == 0 and np.all(np.isnan(summary["time_to_edge"][1:]))
    flow = sweep_summary(run, gd)
    for i, lr in enumerate(LRS[1:], start=1):
        w_gd = closed_form("gd", h, w0, lr, STEPS)[-1]
        w_gf = closed_form("gradient_flow", h, w0, lr, STEPS)
        np.testing.assert_allclose(flow["final_loss"][i], 0.5 * w_gf[-1] @ h @ w_gf[-1], rtol=1e-6)
        np.testing.assert_allclose(flow["distance"][i], np.linalg.norm(w_gf[-1] - w_gd), rtol=1e-5)
    assert np.isnan(flow["distance"][0]) and np.isnan(flow["final_loss"][0])
    path = plot_sweep_summary({"gd": gd, "gradient_flow": run}, tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="same lrs"):
        sweep_summary(run, {"lr": np.asarray([0.2, 0.1, 0.3]), "params": gd.params})


def test_chunking_follows_the_integrator_the_flow_runs_with():
    # Adaptive solves are chunked by learning rate (a vmapped solve runs until its slowest
    # member ends); the central flow's own integrator is fixed-step, so it is not.
    from flows.integrate import flow_solver, is_adaptive

    problem, _, _ = quadratic_problem([1.0, 2.0, 3.0])
    central = flows.make_method(problem, "central_flow", 0.1)
    gradient = flows.make_method(problem, "gradient_flow", 0.1)
    assert not is_adaptive(flow_solver(central), None)
    assert is_adaptive(flow_solver(gradient), None)
    assert not is_adaptive(flow_solver(gradient), 0.5)
    assert not is_adaptive(flow_solver(gradient, diffrax.Euler()), None)
