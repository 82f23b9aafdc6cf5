"""Checkpoints: a run killed (SIGKILL) or interrupted (Ctrl-C) and resumed gives bitwise the
results of an uninterrupted run; the chunks share one compiled function; NaN losses stop
one method only; the same config and seed give bitwise-equal results."""

import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows.checkpoint import CheckpointMismatch, MethodSpec, run_methods

from .cli_helpers import load_results, run_cli, run_subprocess, write_config
from .helpers import quadratic_problem

HOOK = "_FLOWS_TEST_INTERRUPT_AFTER_CHUNK"

# A tiny MLP, float32 (applied in the subprocess), a discrete method with state,
# a flow with an adaptive integrator, and eigenvalue tracking: everything a checkpoint holds.
CONFIG = {
    "problem": {"name": "mlp", "widths": [4], "activation": "tanh"},
    "data": {"name": "synthetic_regression", "n": 16, "d_in": 3},
    "run": {"lr": 0.5, "steps": 24, "save_every": 2, "checkpoint_every": 6,
            "num_eigenvalues": 0, "dtype": "float32", "seed": 3},
    "methods": {"rms": {"method": "rmsprop", "beta2": 0.9, "eps": 1e-3, "reference": "gf"},
                "gf": {"method": "gradient_flow"}},
}


def _assert_same_results(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    config = write_config(tmp_path / "run.toml", CONFIG)
    # The uninterrupted run in this process (x64 on for the tests, off while it runs).
    code, _, err = run_cli("run", config, "--out", tmp_path / "whole")
    assert code == 0, err
    assert jax.config.read("jax_enable_x64")  # restored
    # SIGKILL right after the second checkpoint: no chance to clean up anything.
    killed = run_subprocess("run", config, "--out", tmp_path / "resumed",
                            env={HOOK: "kill:2"})
    assert killed.returncode == -signal.SIGKILL
    checkpoint = np.load(tmp_path / "resumed" / "checkpoint.npz")
    assert int(checkpoint["chunks_done"]) == 2 and int(checkpoint["steps_done"]) == 12
    assert not (tmp_path / "resumed" / "results.npz").exists()
    resumed = run_subprocess("run", config, "--out", tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_results(tmp_path / "whole"), load_results(tmp_path / "resumed")
    assert a["rms/params"].dtype == np.float32  # the dtype of the config, not of the tests
    _assert_same_results(a, b)
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["resumed_at"] == 12 and summary["seed"] == 3
    assert summary["dtype"] == "float32"
    assert {"jax", "jaxlib", "diffrax", "flows"} <= set(summary["versions"])


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    config = {
        "problem": {"name": "quadratic", "eigenvalues": [0.5, 3.0, 9.0], "seed": 1},
        "run": {"lr": 0.1, "steps": 30, "save_every": 3, "checkpoint_every": 6,
                "num_eigenvalues": 1, "dtype": "float64"},
        "methods": {"gd": {}, "rms": {"method": "rmsprop", "beta2": 0.9}},
    }
    path = write_config(tmp_path / "run.toml", config)
    assert run_cli("run", path, "--out", tmp_path / "whole")[0] == 0
    monkeypatch.setenv(HOOK, "interrupt:2")  # Ctrl-C after the second checkpoint
    code, _, err = run_cli("run", path, "--out", tmp_path / "resumed")
    assert code == 130 and "12 of 30 steps are saved" in err and "Traceback" not in err
    monkeypatch.delenv(HOOK)
    code, _, err = run_cli("run", path, "--out", tmp_path / "resumed")
    assert code == 0, err
    _assert_same_results(load_results(tmp_path / "whole"), load_results(tmp_path / "resumed"))
    # The checkpoint belongs to this configuration: another one is refused, with one line.
    config["run"]["seed"] = 4
    other = write_config(tmp_path / "other.toml", config)
    code, _, err = run_cli("run", other, "--out", tmp_path / "resumed")
    assert code == 2 and "another configuration" in err and "\n" not in err.strip()


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
    specs = [MethodSpec("gf", "gradient_flow")]
    compiles, after_first_chunk = [0], []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles[0] += 1

    def on_chunk(chunks_done, steps_done):
        if chunks_done == 1:
            after_first_chunk.append(compiles[0])

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        output = run_methods(problem, specs, lr=0.1, steps=40, save_every=2, checkpoint_every=4,
                             num_eigenvalues=1, on_chunk=on_chunk)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert after_first_chunk[0] >= 2  # the flow and the eigenvalue tracker
    assert compiles[0] == after_first_chunk[0]  # nothing compiled for chunks 2 … 10
    values, vectors = np.linalg.eigh(h)
    gf = output.arrays["gf"]
    np.testing.assert_array_equal(gf["steps"], np.arange(0, 41, 2))
    for k, w in zip(gf["steps"], gf["params"]):
        exact = vectors @ (np.exp(-0.1 * values * k) * (vectors.T @ w0))
        np.testing.assert_allclose(w, exact, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(gf["eigenvalues"][:, 0], 8.0, rtol=1e-10)


def test_nan_loss_stops_that_method_only():
    # L(w) = ½‖w‖² + 0·Σ log w: finite while w > 0, NaN once GD (η = 1.5, w ← −½ w) crosses 0.
    def loss(w):
        return 0.5 * jnp.sum(w**2) + 0.0 * jnp.sum(jnp.log(w))

    problem = flows.Problem(loss, jnp.ones(2))
    specs = [MethodSpec("gd", "gd"), MethodSpec("gf", "gradient_flow", reference="gd")]
    output = run_methods(problem, specs, lr=1.5, steps=12, save_every=1, checkpoint_every=3)
    assert output.status("gd") == "diverged at step 1"
    assert output.status("gf") == "ok"
    gd, gf = output.arrays["gd"], output.arrays["gf"]
    assert np.isfinite(gd["loss"][0]) and np.all(np.isnan(gd["loss"][2:]))
    np.testing.assert_allclose(gf["params"][-1], np.exp(-1.5 * 12) * np.ones(2), atol=1e-9)
    assert np.all(np.isnan(gf["distance"][2:]))  # no reference left to compare with
    assert gd["loss"].shape == gf["loss"].shape == (13,)
