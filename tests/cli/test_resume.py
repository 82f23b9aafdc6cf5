"""The command line resumes: a run killed (SIGKILL) or interrupted (Ctrl-C) and resumed gives
bitwise the results of an uninterrupted run."""

import json
import signal

import jax
import numpy as np

import flows.runs
from flows.cli.config import build_problem, load_config

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


QUADRATIC = {
    "problem": {"name": "quadratic", "eigenvalues": [0.5, 3.0, 9.0], "seed": 1},
    "run": {"lr": 0.1, "steps": 30, "save_every": 3, "checkpoint_every": 6,
            "num_eigenvalues": 1, "dtype": "float64"},
    "methods": {"gd": {}, "rms": {"method": "rmsprop", "beta2": 0.9}},
}


def test_a_run_killed_while_it_compiles_is_this_configurations_and_resumes(tmp_path):
    path = write_config(tmp_path / "run.toml", QUADRATIC)
    # SIGKILL before the first chunk, where the run compiles.
    killed = run_subprocess("run", path, "--out", tmp_path / "run", env={HOOK: "kill:0"})
    assert killed.returncode == -signal.SIGKILL
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["complete"] is False and summary["fingerprint"]  # the manifest
    # The folder is this configuration's: another one is refused, the same one runs.
    other = write_config(tmp_path / "other.toml", {**QUADRATIC, "run": {
        **QUADRATIC["run"], "lr": 0.2}})
    code, _, err = run_cli("run", other, "--out", tmp_path / "run")
    assert code == 2 and "another configuration" in err
    code, _, err = run_cli("run", path, "--out", tmp_path / "run")
    assert code == 0, err
    assert "resuming" not in err  # nothing had been computed
    code, _, err = run_cli("run", path, "--out", tmp_path / "whole")
    assert code == 0, err
    _assert_same_results(load_results(tmp_path / "whole"), load_results(tmp_path / "run"))


def test_a_resumed_run_says_where_and_a_finished_one_recomputes_nothing(tmp_path,
                                                                        monkeypatch):
    path = write_config(tmp_path / "run.toml", QUADRATIC)
    monkeypatch.setenv(HOOK, "interrupt:2")
    assert run_cli("run", path, "--out", tmp_path / "run")[0] == 130
    monkeypatch.delenv(HOOK)
    code, _, err = run_cli("run", path, "--out", tmp_path / "run")
    assert code == 0, err
    assert f"flows: resuming at step 12 of 30 from the checkpoint in {tmp_path / 'run'}/" in err
    results = tmp_path / "run" / "results.npz"
    before = (results.stat().st_mtime_ns, load_results(tmp_path / "run"))
    code, out, err = run_cli("run", path, "--out", tmp_path / "run")
    assert code == 0, err
    assert err.strip() == f"flows: the run in {tmp_path / 'run'}/ is complete; nothing to recompute"
    assert "gd" in out and "complete" in out  # its summary
    assert results.stat().st_mtime_ns == before[0]  # not rewritten
    _assert_same_results(before[1], load_results(tmp_path / "run"))
    code, out, _ = run_cli("show", tmp_path / "run", "--no-plots")  # reads results.npz
    assert code == 0 and "complete" in out
    # The chunks are gone; the runner reads a finished folder's arrays from results.npz.
    config = load_config(path)
    output = flows.runs.run(build_problem(config), config.run, directory=tmp_path / "run",
                            fingerprint=config.fingerprint())
    assert output.resumed_at == 30
    np.testing.assert_array_equal(output.arrays["rms"]["params"], before[1]["rms/params"])
