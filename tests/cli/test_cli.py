"""`flows run` and `flows show` end to end on quadratics with closed forms, divergence of
one method while the others go on, and bad input: one line, exit status 2, nothing written."""

import copy
import io
import json
import math
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.cli import main

from .helpers import (
    assert_one_line_error,
    load_results,
    run_cli,
    run_subprocess,
    write_config,
)

EIGS = np.array([0.5, 2.0, 8.0])
LR, STEPS, EVERY = 0.1, 40, 2

QUADRATIC = {
    "problem": {"name": "quadratic", "eigenvalues": EIGS.tolist(), "rotate": False},
    "run": {"lr": LR, "steps": STEPS, "save_every": EVERY, "checkpoint_every": 10,
            "num_eigenvalues": 2, "dtype": "float64"},
    "methods": {"gd": {}, "gradient_flow": {}},
}


@pytest.fixture(scope="module")
def quadratic_run():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = write_config(tmp / "quad.toml", QUADRATIC)
        code, out, err = run_cli("run", config, "--out", tmp / "run")
        yield tmp, code, out, err


def test_run_matches_closed_forms(quadratic_run):
    tmp, code, out, err = quadratic_run
    assert code == 0, err
    results = load_results(tmp / "run")
    k = np.arange(0, STEPS + 1, EVERY)
    # ½ wᵀ diag(λ) w from w₀ = 1: GD and gradient flow.
    gd = (1 - LR * EIGS[None, :]) ** k[:, None]
    gf = np.exp(-LR * EIGS[None, :] * k[:, None])
    np.testing.assert_array_equal(results["gd/steps"], k)
    np.testing.assert_allclose(results["gd/params"], gd, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(results["gradient_flow/params"], gf, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(results["gd/loss"], 0.5 * (gd**2) @ EIGS, rtol=1e-12)
    for label in ("gd", "gradient_flow"):  # the Hessian is constant
        np.testing.assert_allclose(results[f"{label}/eigenvalues"], [[8.0, 2.0]] * len(k),
                                   rtol=1e-10)
    np.testing.assert_allclose(
        results["gradient_flow/distance"], np.linalg.norm(gf - gd, axis=1), rtol=1e-5, atol=1e-9
    )
    assert "gd/distance" not in results  # GD is the reference


def test_run_writes_summary_and_plots(quadratic_run):
    tmp, code, out, err = quadratic_run
    run = tmp / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and summary["seed"] == 0 and summary["steps"] == STEPS
    assert {"jax", "diffrax", "flows", "equinox", "numpy"} <= set(summary["versions"])
    assert summary["config"]["problem"]["eigenvalues"] == EIGS.tolist()
    gd = summary["methods"]["gd"]
    final = (1 - LR * EIGS) ** STEPS
    assert gd["status"] == "ok" and gd["final_step"] == STEPS
    assert math.isclose(gd["final_loss"], 0.5 * np.sum(EIGS * final**2), rel_tol=1e-10)
    assert math.isclose(gd["final_sharpness"], 8.0, rel_tol=1e-10)
    assert gd["wall_seconds"] >= 0
    gf = summary["methods"]["gradient_flow"]
    assert gf["reference"] == "gd"
    expected = np.linalg.norm(np.exp(-LR * EIGS * STEPS) - final)
    assert math.isclose(gf["distance_to_reference"], expected, rel_tol=1e-5)
    for name in ("loss.png", "sharpness.png", "distance.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "gradient_flow" in out and "ok" in out
    assert "η = 0.1, 2/η = 20" in out and "(2/η = 20)" in err  # GD's edge, for GD's run
    # `flows show` reads it back and redraws the plots.
    (run / "loss.png").unlink()
    code, shown, _ = run_cli("show", run)
    assert code == 0 and "gradient_flow" in shown and "complete" in shown
    assert (run / "loss.png").exists()


def test_rerun_of_a_finished_run_changes_nothing(quadratic_run, tmp_path):
    tmp, code, _, _ = quadratic_run
    before = load_results(tmp / "run")
    code, _, err = run_cli("run", tmp / "quad.toml", "--out", tmp / "run")
    assert code == 0, err
    after = load_results(tmp / "run")
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])


def test_other_configuration_is_refused_and_nothing_is_overwritten(quadratic_run, tmp_path):
    tmp, _, _, _ = quadratic_run
    other = copy.deepcopy(QUADRATIC)
    other["run"]["lr"] = 0.05
    config = write_config(tmp_path / "other.toml", other)
    files = {p: p.read_bytes() for p in (tmp / "run").rglob("*") if p.is_file()}
    code, _, err = run_cli("run", config, "--out", tmp / "run")
    assert code == 2
    assert_one_line_error(err)
    assert "another configuration" in err
    assert {p: p.read_bytes() for p in (tmp / "run").rglob("*") if p.is_file()} == files


def test_overwrite_replaces_another_run(tmp_path):
    small = copy.deepcopy(QUADRATIC)
    small["methods"] = {"gd": {}}
    small["run"].update(steps=10, num_eigenvalues=0)
    write_config(tmp_path / "a.toml", small)
    assert run_cli("run", tmp_path / "a.toml", "--out", tmp_path / "run")[0] == 0
    small["run"]["lr"] = 0.2
    write_config(tmp_path / "b.toml", small)
    assert run_cli("run", tmp_path / "b.toml", "--out", tmp_path / "run")[0] == 2
    code, _, err = run_cli("run", tmp_path / "b.toml", "--out", tmp_path / "run", "--overwrite")
    assert code == 0, err
    params = load_results(tmp_path / "run")["gd/params"]
    np.testing.assert_allclose(params[-1], (1 - 0.2 * EIGS) ** 10, rtol=1e-12)


def test_damaged_run_folder_is_one_line_of_bad_input(tmp_path):
    small = copy.deepcopy(QUADRATIC)
    small["methods"] = {"gd": {}}
    small["run"].update(steps=8, num_eigenvalues=0, checkpoint_every=4)
    config = write_config(tmp_path / "a.toml", small)
    assert run_cli("run", config, "--out", tmp_path / "run")[0] == 0
    (tmp_path / "run" / "chunks" / "00000.npz").write_bytes(b"not an npz file")
    code, _, err = run_cli("run", config, "--out", tmp_path / "run")
    assert code == 2
    assert_one_line_error(err.strip().splitlines()[-1])  # after the run's header line
    assert "Traceback" not in err
    assert "00000.npz" in err and "corrupt" in err
    (tmp_path / "run" / "summary.json").write_text("[1, 2]")
    code, _, err = run_cli("show", tmp_path / "run")
    assert code == 2
    assert_one_line_error(err)
    assert "summary.json" in err


def test_principal_flow_reports_its_largest_imaginary_part(tmp_path):
    # ½wᵀdiag(0.5, 2, 15)w from w₀ = 1 at η = 0.1: the ηλ = 1.5 mode is (−0.5)^τ, whose
    # imaginary part 0.5^τ sin(πτ) the flow's state takes between integer steps.
    config = copy.deepcopy(QUADRATIC)
    config["problem"]["eigenvalues"] = [0.5, 2.0, 15.0]
    config["methods"] = {"gd": {}, "principal_flow": {"rtol": 1e-10, "atol": 1e-12}}
    config["run"].update(steps=6, num_eigenvalues=0, checkpoint_every=6)
    write_config(tmp_path / "pf.toml", config)
    code, _, err = run_cli("run", tmp_path / "pf.toml", "--out", tmp_path / "run")
    assert code == 0, err
    results = load_results(tmp_path / "run")
    np.testing.assert_allclose(results["principal_flow/params"], results["gd/params"],
                               rtol=1e-8, atol=1e-12)
    tau = np.linspace(0, 6, 600001)
    supremum = np.max(0.5**tau * np.abs(np.sin(np.pi * tau)))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert math.isclose(summary["methods"]["principal_flow"]["max_imag"], supremum, rel_tol=0.02)
    assert "max_imag" not in summary["methods"]["gd"]


def test_divergence_stops_one_method_and_the_others_go_on(tmp_path):
    eigs, lr = np.array([1.0, 25.0]), 0.1  # η λ = 2.5 > 2: GD diverges, the flows do not
    config = {
        "problem": {"name": "quadratic", "eigenvalues": eigs.tolist(), "rotate": False},
        "run": {"lr": lr, "steps": 40, "save_every": 2, "checkpoint_every": 10,
                "num_eigenvalues": 1, "dtype": "float64", "save_params": False},
        "methods": {"gd": {}, "rms": {"method": "rmsprop", "eps": 1e-8}},
    }
    code, out, err = run_cli("run", write_config(tmp_path / "c.toml", config), "--out",
                             tmp_path / "run")
    assert code == 0, err
    # Independent truth: the first step whose loss exceeds 10⁶ (1 + L(w₀)).
    k = np.arange(41)
    loss = 0.5 * (((1 - lr * eigs[None, :]) ** (2 * k[:, None])) @ eigs)
    first_bad = int(k[np.argmax(loss > 1e6 * (1 + loss[0]))])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    gd = summary["methods"]["gd"]
    assert gd["status"] == f"diverged at step {first_bad}" and gd["stopped_at"] == first_bad
    assert gd["final_step"] == first_bad - first_bad % 2
    assert any(f"gd diverged at step {first_bad}" in m and "the other methods went on" in m
               for m in summary["messages"])
    assert f"gd diverged at step {first_bad}" in out
    assert summary["methods"]["rms"]["status"] == "ok"
    results = load_results(tmp_path / "run")
    saved = results["gd/steps"]
    assert results["gd/loss"].shape == (21,)
    before = saved < first_bad
    np.testing.assert_allclose(results["gd/loss"][before], loss[saved[before]], rtol=1e-10)
    assert np.all(np.isnan(results["gd/loss"][saved > first_bad]))
    assert np.all(np.isfinite(results["rms/loss"])) and results["rms/loss"].shape == (21,)
    assert np.all(np.isnan(results["rms/distance"][saved > first_bad]))  # GD is gone
    assert not any(k.endswith("/params") or k.endswith("/nu") for k in results)  # save_params
    assert int(results["gd/status_code"]) == 1 and int(results["gd/stopped_at"]) == first_bad


def test_exploding_flow_is_stopped(tmp_path):
    eigs, lr = np.array([-2.0, 1.0]), 0.5  # a saddle: everything escapes along λ = −2
    config = {
        "problem": {"name": "quadratic", "eigenvalues": eigs.tolist(), "rotate": False},
        "run": {"lr": lr, "steps": 20, "save_every": 1, "checkpoint_every": 5,
                "num_eigenvalues": 0, "dtype": "float64", "save_params": False},
        "methods": {"gradient_flow": {}, "gd": {}},
    }
    code, _, err = run_cli("run", write_config(tmp_path / "c.toml", config), "--out",
                           tmp_path / "run")
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    threshold = 1e6 * (1 + abs(0.5 * eigs.sum()))
    tau = np.arange(21)
    flow_loss = 0.5 * (np.exp(-2 * lr * eigs[None, :] * tau[:, None]) @ eigs)
    gd_loss = 0.5 * (((1 - lr * eigs[None, :]) ** (2 * tau[:, None])) @ eigs)
    flow_stop = int(tau[np.argmax(np.abs(flow_loss) > threshold)])
    gd_stop = int(tau[np.argmax(np.abs(gd_loss) > threshold)])
    assert flow_stop != gd_stop  # the two stop at different steps
    assert summary["methods"]["gradient_flow"]["status"] == f"diverged at step {flow_stop}"
    assert summary["methods"]["gd"]["status"] == f"diverged at step {gd_stop}"
    results = load_results(tmp_path / "run")
    np.testing.assert_allclose(results["gradient_flow/loss"][:flow_stop], flow_loss[:flow_stop],
                               rtol=1e-6)
    assert "gd/params" not in results and "gradient_flow/distance" in results


def test_show_while_running_or_interrupted(tmp_path, monkeypatch):
    monkeypatch.setenv("_FLOWS_TEST_INTERRUPT_AFTER_CHUNK", "interrupt:2")
    small = copy.deepcopy(QUADRATIC)
    small["methods"] = {"gd": {}}
    code, _, err = run_cli("run", write_config(tmp_path / "a.toml", small), "--out",
                           tmp_path / "run")
    assert code == 130
    assert "interrupted; 20 of 40 steps are saved" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "results.npz").exists()
    code, out, _ = run_cli("show", tmp_path / "run")
    assert code == 0 and "running or interrupted (20 steps)" in out
    assert (tmp_path / "run" / "loss.png").exists()


def test_usage_errors_are_one_line(tmp_path):
    for args in ([], ["fly"], ["run"], ["run", tmp_path / "missing.toml"], ["show", tmp_path],
                 ["show", tmp_path / "nothing"], ["run", "x.toml", "--bogus"]):
        code, out, err = run_cli(*args)
        assert code == 2, args
        assert_one_line_error(err)


def test_python_dash_m_reports_bad_input_without_traceback(tmp_path):
    bad = copy.deepcopy(QUADRATIC)
    bad["run"]["lr"] = -1.0
    result = run_subprocess("run", write_config(tmp_path / "bad.toml", bad), "--out",
                            tmp_path / "run")
    assert result.returncode == 2
    assert_one_line_error(result.stderr)
    assert "[run] lr" in result.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- property-based

VALID = {
    "problem": {"name": "mlp", "widths": [3], "activation": "tanh"},
    "data": {"name": "digits", "n": 8, "classes": [0, 1]},
    "run": {"lr": 0.1, "steps": 4, "save_every": 2, "num_eigenvalues": 1},
    "methods": {"gd": {}, "gradient_flow": {}, "rms": {"method": "rmsprop", "beta2": 0.9}},
}

_known = {
    "problem": {"name", "data", "widths", "activation", "loss", "seed", "bias"},
    "data": {"name", "n", "classes", "flatten", "standardize"},
    "run": {"lr", "steps", "save_every", "checkpoint_every", "num_eigenvalues", "eigensolver",
            "dtype", "seed", "divergence_factor", "save_params", "reference"},
    "methods": {"method", "optimizer", "num_eigenvalues", "reference", "beta2", "eps",
                "bias_correction", "initial_nu", "solver", "rtol", "atol", "dt0", "max_steps"},
}
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
scalars = st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.booleans(),
                    st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=3))
not_positive = st.one_of(st.integers(max_value=0), st.floats(max_value=0.0),
                         st.just(float("nan")), st.just(float("inf")))
not_int = st.one_of(st.floats(allow_nan=True), st.booleans(), st.text(max_size=5),
                    st.lists(st.integers(), max_size=2))


def _set(config, path, value):
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return config


@st.composite
def bad_configs(draw):
    """VALID with one change that makes it invalid, whatever the values drawn."""
    config = copy.deepcopy(VALID)
    kind = draw(st.sampled_from([
        "unknown_key", "run_int", "lr", "run_choice", "names", "problem_type", "method_option",
        "duplicate_table", "data_file", "method_table",
    ]))
    if kind == "unknown_key":
        table = draw(st.sampled_from(["problem", "data", "run", "methods.gd", "methods.rms"]))
        key = draw(names.filter(lambda k: k not in _known[table.split(".")[0]]))
        path = tuple(table.split(".")) + (key,)
        _set(config, path, draw(scalars))
    elif kind == "run_int":
        key = draw(st.sampled_from(["steps", "save_every", "checkpoint_every", "seed",
                                    "num_eigenvalues"]))
        value = draw(st.one_of(not_int, st.integers(max_value=-1)))
        _set(config, ("run", key), value)
    elif kind == "lr":
        value = draw(st.one_of(not_positive, st.text(max_size=5), st.booleans(), st.just([]),
                               st.lists(not_positive, min_size=1, max_size=3)))
        _set(config, ("run", "lr"), value)
    elif kind == "run_choice":
        key = draw(st.sampled_from(["dtype", "eigensolver", "save_params",
                                    "divergence_factor", "reference"]))
        value = {
            "dtype": st.text(max_size=8).filter(lambda s: s not in ("float32", "float64")),
            "eigensolver": st.one_of(st.integers(), st.text(max_size=8).filter(
                lambda s: s not in ("auto", "dense", "lanczos", "lobpcg"))),
            "save_params": st.one_of(st.integers(), st.text(max_size=5), st.floats()),
            "divergence_factor": st.one_of(not_positive, st.text(max_size=4)),
            "reference": st.one_of(st.integers(), names.filter(
                lambda s: s not in ("gd", "gradient_flow", "rms"))),
        }[key]
        _set(config, ("run", key), draw(value))
    elif kind == "names":
        where = draw(st.sampled_from([("problem", "name"), ("data", "name"),
                                      ("methods", "rms", "method"),
                                      ("methods", "gradient_flow", "optimizer")]))
        from flows.methods import FLOWS, OPTIMIZERS
        from flows.problems import DATASETS, PROBLEMS

        taken = set(PROBLEMS) | set(DATASETS) | set(OPTIMIZERS) | set(FLOWS)
        _set(config, where, draw(st.one_of(names.filter(lambda s: s not in taken),
                                           st.integers())))
    elif kind == "problem_type":
        key, value = draw(st.sampled_from([
            ("widths", st.one_of(st.integers(), st.text(max_size=4), st.booleans())),
            ("seed", st.one_of(st.text(max_size=4), st.floats(), st.booleans())),
            ("activation", st.one_of(st.integers(), st.floats(), st.lists(st.integers()))),
            ("bias", st.one_of(st.integers(), st.text(max_size=4))),
        ]))
        _set(config, ("problem", key), draw(value))
    elif kind == "method_option":
        key, value = draw(st.sampled_from([
            ("beta2", st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9),
                                st.text(max_size=4), st.booleans())),
            ("eps", st.one_of(st.floats(max_value=-1e-9), st.text(max_size=4))),
            ("bias_correction", st.one_of(st.integers(), st.floats(), st.text(max_size=3))),
        ]))
        _set(config, ("methods", "rms", key), draw(value))
    elif kind == "method_table":
        label = draw(st.sampled_from(["gd", "rms"]))
        key, value = draw(st.sampled_from([
            ("rtol", st.floats(min_value=1e-9, max_value=1.0)),  # flows only
            ("solver", st.just("tsit5")),
            ("optimizer", st.just("rmsprop")),
        ]))
        _set(config, ("methods", label, key), draw(value))
    elif kind == "data_file":
        config["data"] = {"name": "cifar10", "path": "/nonexistent/" + draw(names)}
    return config, kind == "duplicate_table"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_configs())
def test_bad_configs_never_show_a_traceback(case):
    config, duplicate = case
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = write_config(tmp / "bad.toml", config)
        if duplicate:  # invalid TOML: a table defined twice
            path.write_text(path.read_text() + "\n[run]\nsteps = 3\n")
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(["run", str(path), "--out", str(tmp / "out")])
        assert code == 2, (config, err.getvalue())
        assert_one_line_error(err.getvalue())
        assert not (tmp / "out").exists()  # nothing written


def test_learning_rate_list_runs_a_sweep(tmp_path):
    eigs, lrs = np.array([1.0, 4.0]), [0.1, 0.3]
    config = {
        "problem": {"name": "quadratic", "eigenvalues": eigs.tolist(), "rotate": False},
        "run": {"lr": lrs, "steps": 10, "save_every": 5, "num_eigenvalues": 1,
                "dtype": "float64"},
        "methods": {"gd": {}, "rms": {"method": "rmsprop", "eps": 1e-8}},
    }
    code, out, err = run_cli("run", write_config(tmp_path / "s.toml", config), "--out",
                             tmp_path / "run")
    assert code == 0, err
    results = load_results(tmp_path / "run")
    np.testing.assert_array_equal(results["lr"], lrs)
    k = np.array([0, 5, 10])
    for i, lr in enumerate(lrs):
        exact = (1 - lr * eigs[None, :]) ** k[:, None]
        np.testing.assert_allclose(results["gd/params"][i], exact, rtol=1e-12)
    np.testing.assert_allclose(results["gd/eigenvalues"][..., 0], 4.0, rtol=1e-10)
    assert results["rms/distance"].shape == (2, 3)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    by_lr = summary["methods"]["gd"]["by_lr"]
    assert [e["lr"] for e in by_lr] == lrs and all(e["status"] == "ok" for e in by_lr)
    assert "rms" in out


# ------------------------------------------------------- version, help, sweeps, options


def test_version_and_help():
    from flows import __version__

    code, out, err = run_cli("--version")
    assert code == 0 and out.strip() == f"flows {__version__}" and not err
    code, out, _ = run_cli("run", "--help")
    assert code == 0
    assert "--out DIR" in out and "OUT" not in out  # one name for the output folder


def test_sweep_resumes_from_the_one_checkpoint_format(tmp_path, monkeypatch):
    eigs, lrs = np.array([1.0, 4.0]), [0.1, 0.3, 0.6]  # η λ = 2.4: GD diverges at 0.6
    config = {
        "problem": {"name": "quadratic", "eigenvalues": eigs.tolist(), "rotate": False},
        "run": {"lr": lrs, "steps": 40, "save_every": 2, "checkpoint_every": 10,
                "num_eigenvalues": 1, "dtype": "float64"},
        "methods": {"gd": {}, "gradient_flow": {}},
    }
    path = write_config(tmp_path / "s.toml", config)
    code, _, err = run_cli("run", path, "--out", tmp_path / "whole")
    assert code == 0, err
    monkeypatch.setenv("_FLOWS_TEST_INTERRUPT_AFTER_CHUNK", "interrupt:2")
    code, _, err = run_cli("run", path, "--out", tmp_path / "resumed")
    assert code == 130 and "interrupted; 20 of 40 steps are saved" in err
    with np.load(tmp_path / "resumed" / "checkpoint.npz") as checkpoint:
        # The runner's checkpoint (the carries of every rate), not a list of methods done.
        assert int(checkpoint["steps_done"]) == 20 and "sweep_done" not in checkpoint.files
        assert checkpoint["gd/status_code"].shape == (3,)
    code, out, _ = run_cli("show", tmp_path / "resumed", "--no-plots")
    assert code == 0 and "running or interrupted (20 steps)" in out
    assert "gradient_flow" in out and "0.6" in out
    monkeypatch.delenv("_FLOWS_TEST_INTERRUPT_AFTER_CHUNK")
    code, _, err = run_cli("run", path, "--out", tmp_path / "resumed")
    assert code == 0, err
    whole, resumed = load_results(tmp_path / "whole"), load_results(tmp_path / "resumed")
    assert whole.keys() == resumed.keys()
    for key in whole:
        if not key.endswith("/wall_time"):
            np.testing.assert_array_equal(whole[key], resumed[key], err_msg=key)
    assert resumed["gd/params"].shape == (3, 21, 2) and resumed["gd/status_code"].shape == (3,)
    k = np.arange(0, 41, 2)
    np.testing.assert_allclose(resumed["gd/params"][0], (1 - 0.1 * eigs) ** k[:, None],
                               rtol=1e-12)
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["complete"] and summary["resumed_at"] == 20
    by_lr = summary["methods"]["gd"]["by_lr"]
    assert [e["lr"] for e in by_lr] == lrs
    assert [e["status"] for e in by_lr][:2] == ["ok", "ok"]
    assert by_lr[2]["status"].startswith("diverged at step")
    assert any(m.startswith("gd at η = 0.6 diverged") for m in summary["messages"])
    assert summary["methods"]["gradient_flow"]["by_lr"][0]["reference"] == "gd"
    (tmp_path / "resumed" / "sweep.png").unlink()
    code, out, _ = run_cli("show", tmp_path / "resumed")
    assert code == 0 and "complete" in out and "diverged" in out
    assert (tmp_path / "resumed" / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_flow_refuses_an_optimizer_it_does_not_model(tmp_path):
    config = copy.deepcopy(QUADRATIC)
    config["methods"] = {"x": {"method": "normalized_gd_flow", "optimizer": "rmsprop"}}
    code, _, err = run_cli("run", write_config(tmp_path / "x.toml", config), "--out",
                           tmp_path / "run")
    assert code == 2
    assert_one_line_error(err)
    assert "[methods.x] optimizer: normalized_gd_flow does not model the optimizer " \
           "'rmsprop'" in err and "normalized_gd" in err.split("'rmsprop'")[1]
    assert not (tmp_path / "run").exists()


def test_renamed_key_is_accepted_with_a_note(tmp_path):
    config = copy.deepcopy(QUADRATIC)
    config["run"].update(steps=4, checkpoint_every=4, num_eigenvalues=0)
    config["methods"] = {"gd": {}, "cf": {"method": "central_flow", "num_tracked": 1}}
    code, _, err = run_cli("run", write_config(tmp_path / "c.toml", config), "--out",
                           tmp_path / "run")
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("flows: note:")]
    assert len(notes) == 1
    assert "[methods.cf]" in notes[0]
    assert "'num_tracked' is now called 'num_eigenvalues'" in notes[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["methods"]["cf"]["num_eigenvalues"] == 1
    assert "num_tracked" not in summary["config"]["methods"]["cf"]


def test_compilation_cache_location(monkeypatch, tmp_path):
    from flows.cli import compilation_cache_dir

    monkeypatch.setenv("FLOWS_CACHE_DIR", str(tmp_path / "here"))
    assert compilation_cache_dir() == tmp_path / "here"
    monkeypatch.setenv("FLOWS_CACHE_DIR", "")
    assert compilation_cache_dir() is None  # disabled
    monkeypatch.delenv("FLOWS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache_dir() == tmp_path / "xdg" / "flows" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compilation_cache_dir() == tmp_path / "home" / ".cache" / "flows" / "jax"


def test_second_run_reads_the_compilation_cache(tmp_path):
    small = copy.deepcopy(QUADRATIC)
    small["methods"] = {"gd": {}}
    config = write_config(tmp_path / "a.toml", small)
    cache = tmp_path / "cache"
    first = run_subprocess("run", config, "--out", tmp_path / "one", "--no-progress",
                           env={"FLOWS_CACHE_DIR": str(cache)})
    assert first.returncode == 0, first.stderr
    entries = {p.name for p in cache.rglob("*") if p.is_file()}
    assert entries  # the compiled functions are on disk
    second = run_subprocess("run", config, "--out", tmp_path / "two", "--no-progress",
                            env={"FLOWS_CACHE_DIR": str(cache)})
    assert second.returncode == 0, second.stderr
    assert {p.name for p in cache.rglob("*") if p.is_file()} >= entries
    a, b = load_results(tmp_path / "one"), load_results(tmp_path / "two")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


SMALL_MLP = {
    "problem": {"name": "mlp", "widths": [4], "activation": "tanh"},
    "data": {"name": "synthetic_regression", "n": 16, "d_in": 3},
    "run": {"lr": 0.1, "steps": 4, "save_every": 2},
    "methods": {"gd": {}},
}


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (("problem", "widths"), [32.5],
         "[problem] mlp: widths must be positive integers, got [32.5]"),
        (("problem", "widths"), [-3, 32], "[problem] mlp: widths must be positive integers"),
        (("problem", "widths"), [0], "[problem] mlp: widths must be positive integers"),
        (("problem", "widths"), ["a"], "[problem] mlp: widths must be positive integers"),
        (("run", "lr"), 1e-300, "[run] lr: 1e-300 is not representable in float32"),
        (("run", "lr"), 1e39, "[run] lr: 1e+39 is not representable in float32"),
        (("data", "n"), 0, "[data] synthetic_regression: n must be a positive integer, got 0"),
        (("data", "d_in"), 0, "[data] synthetic_regression: d_in must be a positive integer"),
        (("methods", "cf"), {"method": "central_flow", "num_tracked": 1000},
         "[methods.cf] num_eigenvalues: 1000 is more than the problem's 21 parameters"),
    ],
)
def test_values_that_used_to_run_or_fail_obscurely_are_named(tmp_path, path, value, expected):
    config = _set(copy.deepcopy(SMALL_MLP), path, value)
    code, _, err = run_cli("run", write_config(tmp_path / "c.toml", config), "--out",
                           tmp_path / "run")
    assert code == 2
    error = [line for line in err.splitlines() if not line.startswith("flows: note:")]
    assert_one_line_error("\n".join(error))
    assert expected in err
    assert not (tmp_path / "run").exists()


def test_integrator_failure_says_up_to_which_saved_step_results_are_kept(tmp_path):
    # Euler with dt0 = 0.5 and a budget of 3 steps reaches τ = 1.5: steps 0 and 1 are saved,
    # step 2 is the first it never reaches.
    config = copy.deepcopy(QUADRATIC)
    config["run"].update(steps=6, save_every=1, checkpoint_every=6, num_eigenvalues=0)
    config["methods"] = {"gd": {}, "gf": {"method": "gradient_flow", "solver": "euler",
                                          "dt0": 0.5, "max_steps": 3}}
    code, out, err = run_cli("run", write_config(tmp_path / "c.toml", config), "--out",
                             tmp_path / "run")
    assert code == 0, err
    gf = json.loads((tmp_path / "run" / "summary.json").read_text())["methods"]["gf"]
    assert gf["status"] == "integrator failed at step 2" and gf["stopped_at"] == 2
    assert gf["final_step"] == 1
    results = load_results(tmp_path / "run")
    assert np.all(np.isfinite(results["gf/loss"][:2])) and not np.isfinite(results["gf/loss"][2])
    assert ("gf: the integrator failed between steps 1 and 2 (it spent its step budget or its "
            "step size collapsed); its results are kept up to step 1, the last saved step it "
            "reached, and the other methods went on") in out


def test_messages_when_nothing_finite_was_saved():
    from flows.cli.report import _message

    diverged = {"status_code": 1, "stopped_at": 0, "final_step": None}
    text = _message("gd", diverged, 10)
    assert "diverged at step 0" in text and "nothing it saved is finite" in text
    assert "None" not in text
    failed = {"status_code": 2, "stopped_at": 5, "final_step": None}
    text = _message("gf", failed, 10)
    assert "failed before step 5" in text and "None" not in text
    failed = {"status_code": 2, "stopped_at": 10, "final_step": 5}
    assert "failed between steps 5 and 10" in _message("gf", failed, 10)


def test_effective_sharpness_against_each_threshold(tmp_path):
    """``[run] effective = true``: every method reports λ(P⁻¹H) (here η·8 on the diagonal
    quadratic, for GD and heavy ball alike, P⁻¹ = η), the summary holds each method's
    threshold (2 for GD, 2(1 + β) for heavy ball) and effective_sharpness.png replaces
    sharpness.png. A value that is not a boolean is one line naming the key."""
    config = {**QUADRATIC, "run": {**QUADRATIC["run"], "effective": True},
              "methods": {"gd": {}, "momentum": {"beta": 0.5},
                          "cf": {"method": "central_flow", "optimizer": "momentum",
                                 "beta": 0.5}}}
    code, out, err = run_cli("run", write_config(tmp_path / "e.toml", config), "--out",
                             tmp_path / "run")
    assert code == 0, err
    # heavy ball's edge is not GD's 2/η: neither the header nor the summary says 2/η
    assert "η = 0.1" in out and "η = 0.1" in err and "2/η" not in out + err
    results = load_results(tmp_path / "run")
    for label in ("gd", "momentum", "cf"):
        np.testing.assert_allclose(results[f"{label}/eigenvalues"][:, 0], LR * EIGS[-1],
                                   rtol=1e-9)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["thresholds"] == {"gd": 2.0, "momentum": 3.0, "cf": 3.0}
    assert "effective_sharpness.png" in summary["plots"]
    assert not (tmp_path / "run" / "sharpness.png").exists()

    bad = {**QUADRATIC, "run": {**QUADRATIC["run"], "effective": 1}}
    code, _, err = run_cli("run", write_config(tmp_path / "b.toml", bad), "--out",
                           tmp_path / "bad")
    assert code == 2
    assert_one_line_error(err)
    assert "effective" in err and "true or false" in err


def test_a_flow_taking_over_a_run_from_a_config(tmp_path):
    """``start_from`` in a flow's table: up to step 10 the flow is GD's run, from there
    gradient flow from GD's w₁₀ (closed forms on the diagonal quadratic, w₀ = 1)."""
    config = copy.deepcopy(QUADRATIC)
    config["methods"]["gradient_flow"]["start_from"] = {"method": "gd", "step": 10}
    code, out, err = run_cli("run", write_config(tmp_path / "t.toml", config), "--out",
                             tmp_path / "run")
    assert code == 0, err
    assert "gradient_flow (takes over gd at step 10)" in err
    results = load_results(tmp_path / "run")
    steps = results["gradient_flow/steps"][:, None]
    gd = (1 - LR * EIGS) ** steps
    after = np.maximum(steps - 10, 0)
    taken = (1 - LR * EIGS) ** np.minimum(steps, 10) * np.exp(-LR * EIGS * after)
    np.testing.assert_allclose(results["gd/params"], gd, rtol=1e-10)
    np.testing.assert_allclose(results["gradient_flow/params"], taken, rtol=1e-6, atol=1e-12)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["methods"]["gradient_flow"]["start_from"] == {
        "method": "gd", "step": 10}
