"""The runner: chunks that share one compiled function, resume bitwise, divergence per
method and per learning rate, sweeps in the same checkpoint format as single runs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows.options import ConfigError
from flows.runs import CheckpointMismatch, run

from ..helpers import quadratic_problem

HOOK = "_FLOWS_TEST_INTERRUPT_AFTER_CHUNK"


def test_simulate_with_a_checkpoint_dir(tmp_path):
    problem, h, w0 = quadratic_problem([0.5, 1.0, 4.0, 9.0])
    kwargs = dict(lr=0.1, steps=30, save_every=3, checkpoint_every=6)
    plain = flows.simulate(problem, "rmsprop", lr=0.1, steps=30, save_every=3)
    whole = flows.simulate(problem, "rmsprop", checkpoint_dir=tmp_path / "a", **kwargs)
    # Discrete methods do the same arithmetic in chunks as in one scan.
    np.testing.assert_allclose(whole.params, plain.params, rtol=1e-13, atol=1e-15)
    assert whole.status == "ok" and whole.params.shape == plain.params.shape

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOOK, "interrupt:3")
        with pytest.raises(KeyboardInterrupt):
            flows.simulate(problem, "rmsprop", checkpoint_dir=tmp_path / "b", **kwargs)
    resumed = flows.simulate(problem, "rmsprop", checkpoint_dir=tmp_path / "b", **kwargs)
    np.testing.assert_array_equal(resumed.params, whole.params)
    np.testing.assert_array_equal(resumed.loss, whole.loss)
    with pytest.raises(CheckpointMismatch, match="another configuration"):
        flows.simulate(problem, "rmsprop", checkpoint_dir=tmp_path / "b",
                       **{**kwargs, "lr": 0.2})


def test_flow_chunks_restart_from_the_saved_state_with_one_compiled_function():
    problem, h, w0 = quadratic_problem([0.5, 2.0, 8.0])
    spec = flows.RunSpec(
        methods={"gf": flows.Method("gradient_flow")}, lr=0.1, steps=40, save_every=2,
        checkpoint_every=4, tracking=flows.Tracking(1),
    )
    compiles, after_first_chunk = [0], []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles[0] += 1

    def on_chunk(chunks_done, steps_done):
        if chunks_done == 1:
            after_first_chunk.append(compiles[0])

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        output = run(problem, spec, on_chunk=on_chunk)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert after_first_chunk[0] >= 1  # the flow with its eigenvalue tracking
    assert compiles[0] == after_first_chunk[0]  # nothing compiled for chunks 2 … 10
    values, vectors = np.linalg.eigh(h)
    gf = output.arrays["gf"]
    np.testing.assert_array_equal(gf["steps"], np.arange(0, 41, 2))
    for k, w in zip(gf["steps"], gf["params"]):
        exact = vectors @ (np.exp(-0.1 * values * k) * (vectors.T @ w0))
        np.testing.assert_allclose(w, exact, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(gf["eigenvalues"][:, 0], 8.0, rtol=1e-10)


def _nan_after_crossing_zero():
    # L(w) = ½‖w‖² + 0·Σ log w: finite while w > 0, NaN once GD (η = 1.5, w ← −½ w) crosses 0.
    def loss(w):
        return 0.5 * jnp.sum(w**2) + 0.0 * jnp.sum(jnp.log(w))

    return flows.Problem(loss, jnp.ones(2))


def test_nan_loss_stops_that_method_only():
    spec = flows.RunSpec(
        methods={"gd": flows.Method("gd"), "gf": flows.Method("gradient_flow")},
        lr=1.5, steps=12, save_every=1, checkpoint_every=3, references={"gf": "gd"},
    )
    output = run(_nan_after_crossing_zero(), spec)
    assert output.status("gd") == "diverged at step 1"
    assert output.status("gf") == "ok"
    gd, gf = output.arrays["gd"], output.arrays["gf"]
    assert np.isfinite(gd["loss"][0]) and np.all(np.isnan(gd["loss"][2:]))
    np.testing.assert_allclose(gf["params"][-1], np.exp(-1.5 * 12) * np.ones(2), atol=1e-9)
    assert np.all(np.isnan(gf["distance"][2:]))  # no reference left to compare with
    assert gd["loss"].shape == gf["loss"].shape == (13,)


def test_a_sweep_is_chunked_in_the_same_format_and_resumes_bitwise(tmp_path):
    """Every member of a chunked sweep is the closed form of its own run; a sweep killed
    after a chunk resumes from the checkpoint to the uninterrupted result; a diverging
    learning rate stops alone."""
    problem, h, w0 = quadratic_problem([0.5, 2.0, 8.0])
    lrs = (0.05, 0.2, 0.3)  # 0.3 · 8 = 2.4 > 2: GD diverges at the largest
    spec = flows.RunSpec(
        methods={"gd": flows.Method("gd"), "gf": flows.Method("gradient_flow")},
        lr=lrs, steps=60, save_every=5, checkpoint_every=20, tracking=flows.Tracking(1),
        references={"gf": "gd"}, divergence_factor=1e3,
    )
    whole = run(problem, spec, directory=tmp_path / "whole")
    values, vectors = np.linalg.eigh(h)
    gd, gf = whole.arrays["gd"], whole.arrays["gf"]
    assert gd["params"].shape == (3, 13, 3) and gd["steps"].shape == (3, 13)
    for i, lr in enumerate(lrs):
        k = np.arange(0, 61, 5)[:, None]
        exact_gd = ((1 - lr * values) ** k * (vectors.T @ w0)) @ vectors.T
        exact_gf = (np.exp(-lr * values * k) * (vectors.T @ w0)) @ vectors.T
        ok = np.isfinite(gd["loss"][i])
        np.testing.assert_allclose(gd["params"][i][ok], exact_gd[ok], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gf["params"][i], exact_gf, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(
            gf["distance"][i][ok], np.linalg.norm(exact_gd - exact_gf, axis=1)[ok],
            rtol=1e-5, atol=1e-9,
        )
    assert list(whole.status_code["gd"]) == [0, 0, 1]
    assert whole.status("gd")[2].startswith("diverged at step")
    assert list(whole.status_code["gf"]) == [0, 0, 0]
    np.testing.assert_allclose(gd["eigenvalues"][:2, :, 0], 8.0, rtol=1e-10)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOOK, "interrupt:2")
        with pytest.raises(KeyboardInterrupt):
            run(problem, spec, directory=tmp_path / "resumed")
    checkpoint = np.load(tmp_path / "resumed" / "checkpoint.npz")
    assert int(checkpoint["chunks_done"]) == 2 and int(checkpoint["steps_done"]) == 40
    resumed = run(problem, spec, directory=tmp_path / "resumed")
    assert resumed.resumed_at == 40
    for label in ("gd", "gf"):
        for name, value in whole.arrays[label].items():
            np.testing.assert_array_equal(resumed.arrays[label][name], value, err_msg=name)


def test_a_run_refuses_tracking_it_cannot_chunk():
    with pytest.raises(ValueError, match="midpoint"):
        flows.RunSpec(methods={"gd": flows.Method("gd")}, lr=0.1, steps=10,
                      tracking=flows.Tracking(1, midpoint=True))


def test_a_flow_takes_over_a_run_at_its_step_and_resumes_bitwise(tmp_path):
    """Gradient flow taking over GD at step 25 of a chunked sweep is the closed form from
    GD's w₂₅ (before that it is the GD run); a rate whose GD run diverged before step 25
    stops the flow with it; a run killed before the take-over resumes to the same arrays."""
    problem, h, w0 = quadratic_problem([0.5, 2.0, 8.0])
    lrs = (0.05, 0.2, 0.3)  # GD diverges at 0.3 (0.3 · 8 > 2) before step 25
    spec = flows.RunSpec(
        methods={"gd": flows.Method("gd"), "gf": flows.Method("gradient_flow")},
        lr=lrs, steps=60, save_every=5, checkpoint_every=20, references={"gf": "gd"},
        divergence_factor=1e3, start_from={"gf": ("gd", 25)},
    )
    whole = run(problem, spec, directory=tmp_path / "whole")
    values, vectors = np.linalg.eigh(h)
    steps = np.arange(0, 61, 5)[:, None]
    gd, gf = whole.arrays["gd"], whole.arrays["gf"]
    for i, lr in enumerate(lrs[:2]):
        exact_gd = ((1 - lr * values) ** steps * (vectors.T @ w0)) @ vectors.T
        exact_gf = (np.exp(-lr * values * np.maximum(steps - 25, 0))
                    * (vectors.T @ exact_gd[5])) @ vectors.T
        exact_gf[:5] = exact_gd[:5]
        np.testing.assert_allclose(gd["params"][i], exact_gd, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gf["params"][i], exact_gf, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(gf["distance"][i][:6], 0.0)
        np.testing.assert_array_equal(gf["steps"][i], steps[:, 0])
    assert whole.status("gd")[2].startswith("diverged at step")
    assert whole.status("gf") == ["ok", "ok", whole.status("gd")[2]]
    assert np.all(np.isnan(gf["params"][2][-7:]))

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOOK, "interrupt:1")  # after steps 0 … 20, before the take-over
        with pytest.raises(KeyboardInterrupt):
            run(problem, spec, directory=tmp_path / "resumed")
    resumed = run(problem, spec, directory=tmp_path / "resumed")
    assert resumed.resumed_at == 20
    for label in ("gd", "gf"):
        for name, value in whole.arrays[label].items():
            np.testing.assert_array_equal(resumed.arrays[label][name], value, err_msg=name)
    with pytest.raises(CheckpointMismatch):  # taking over at another step is another run
        run(problem, dataclasses.replace(spec, start_from={"gf": ("gd", 30)}),
            directory=tmp_path / "resumed")


def test_a_flow_takes_over_a_heavy_ball_run_with_its_momentum():
    """The runner hands a flow the run's own carry (w_k, m_{k−1}): the same start as
    `simulate`'s ``start_from``, which reads the momentum from the saved diagnostics."""
    problem, h, w0 = quadratic_problem([0.5, 2.0, 8.0])
    options = {"beta": 0.8}
    spec = flows.RunSpec(
        methods={"hb": flows.Method("momentum", options=options),
                 "sf": flows.Method("gradient_flow", optimizer="momentum", options=options)},
        lr=0.1, steps=30, checkpoint_every=30, start_from={"sf": ("hb", 10)},
    )  # one chunk cut at 10: the adaptive integrator takes the steps simulate takes
    output = run(problem, spec)
    hb = flows.simulate(problem, "momentum", lr=0.1, steps=30, **options)
    taken = flows.simulate(problem, "gradient_flow", optimizer="momentum", lr=0.1, steps=20,
                           start_from=(hb, 10), **options)
    sf = output.arrays["sf"]
    np.testing.assert_array_equal(sf["params"][:11], output.arrays["hb"]["params"][:11])
    np.testing.assert_allclose(sf["params"][10:], taken.params, rtol=1e-12, atol=1e-14)
    # its own diagnostics from the first step after the take-over (NaN until then)
    np.testing.assert_allclose(sf["momentum"][11:], taken.extras["momentum"][1:], rtol=1e-12,
                               atol=1e-14)
    assert np.all(np.isnan(sf["momentum"][:11]))
    # a flow of other hyperparameters does not model that run
    other = dataclasses.replace(spec, methods={**spec.methods, "sf": flows.Method(
        "gradient_flow", optimizer="momentum", options={"beta": 0.9})})
    with pytest.raises(ConfigError, match=r"differ in beta \(0.9, 0.8\)"):
        run(problem, other)


@pytest.mark.parametrize("start_from, message", [
    ({"gd": ("gf", 5)}, "'gd' is a discrete optimizer; only a flow takes over"),
    ({"gf": ("gf", 5)}, "not the flow 'gf'"),
    ({"gf": ("x", 5)}, "'gf' → 'x' names a method that is not one of"),
    ({"gf": ("rms", 5)}, "'gf' models 'gd' and cannot take over 'rms', a 'rmsprop' run"),
    ({"gf": ("gd", 3)}, "takes over at step 3, which must be a saved step"),
    ({"gf": ("gd", 10)}, "a multiple of save_every=5 below steps=10"),
    ({"gf": ("gd", -5)}, "start_from's step"),
])
def test_what_a_flow_cannot_take_over_is_refused_by_name(start_from, message):
    methods = {"gd": flows.Method("gd"), "gf": flows.Method("gradient_flow"),
               "rms": flows.Method("rmsprop")}
    with pytest.raises(ValueError, match=message):
        flows.RunSpec(methods=methods, lr=0.1, steps=10, save_every=5, start_from=start_from)
