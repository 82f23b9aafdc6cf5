"""The command line resumes: a run killed (SIGKILL) or interrupted (Ctrl-C) and resumed gives
bitwise the results of an uninterrupted run."""

import json
import signal

import jax
import numpy as np

from .helpers import load_results, run_cli, run_subprocess, write_config

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
