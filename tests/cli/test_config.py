"""Run configurations: defaults, and every kind of bad input named in one line."""

import copy
import pickle

import numpy as np
import pytest

from flows.cli.config import build_problem, check_methods, load_config, parse_config
from flows.cli.schema import allowed_kinds
from flows.options import ConfigError, Integrator, Method, RunSpec, Tracking

from .helpers import ROOT, write_config

BASE = {
    "problem": {"name": "mlp", "widths": [4], "activation": "tanh"},
    "data": {"name": "synthetic_regression", "n": 16, "d_in": 3},
    "run": {"lr": 0.1, "steps": 20, "save_every": 2},
    "methods": {
        "gd": {},
        "gradient_flow": {"rtol": 1e-6},
        "rms": {"method": "rmsprop", "beta2": 0.9},
        "rms_flow": {"method": "gradient_flow", "optimizer": "rmsprop", "beta2": 0.9},
    },
}


def with_change(path, value):
    """BASE with ``path`` (a tuple of keys) set to ``value`` (or removed if value is ...)."""
    config = copy.deepcopy(BASE)
    node = config
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return config


def test_defaults_and_labels():
    config = parse_config(BASE)
    run = config.run
    assert isinstance(run, RunSpec)
    assert (run.lr, run.steps, run.save_every) == (0.1, 20, 2)
    assert config.dtype == "float32" and config.seed == 0 and run.tracking.num_eigenvalues == 1
    assert run.checkpoint_every is None and not run.is_sweep
    assert config.reference == "gd"  # there is a method labelled gd
    methods = run.methods
    assert all(isinstance(m, Method) for m in methods.values())
    assert methods["rms"].name == "rmsprop" and methods["rms"].options == {"beta2": 0.9}
    assert methods["rms_flow"].optimizer == "rmsprop"
    assert methods["gradient_flow"].integrator.rtol == 1e-6
    assert "gd" not in run.references  # not measured against itself
    assert run.references["rms"] == "gd"
    assert parse_config(with_change(("run", "lr"), [0.1, 0.2])).run.lr == (0.1, 0.2)


def test_method_tables_become_options():
    raw = copy.deepcopy(BASE)
    raw["run"].update(eigensolver="dense", num_eigenvalues=2)
    raw["methods"]["gradient_flow"].update(solver="dopri5", max_steps=100, num_eigenvalues=3)
    config = parse_config(raw)
    flow = config.run.methods["gradient_flow"]
    assert flow.integrator == Integrator(solver="dopri5", rtol=1e-6, max_steps=100)
    # A count the method does not take is its own tracking, with the run's eigensolver.
    assert flow.tracking == Tracking(num_eigenvalues=3, eigensolver="dense")
    assert config.run.tracking == Tracking(num_eigenvalues=2, eigensolver="dense")
    assert config.run.tracking_of("gd") == config.run.tracking
    table = config.as_dict()["methods"]["gradient_flow"]
    assert table == {"method": "gradient_flow", "solver": "dopri5", "rtol": 1e-6,
                     "max_steps": 100, "num_eigenvalues": 3, "reference": "gd"}
    assert config.as_dict()["run"]["eigensolver"] == "dense"


def test_central_flow_num_eigenvalues_is_its_option_and_num_tracked_is_renamed():
    raw = copy.deepcopy(BASE)
    raw["methods"] = {"gd": {}, "cf": {"method": "central_flow", "num_eigenvalues": 2},
                      "old": {"method": "central_flow", "num_tracked": 3}}
    config = parse_config(raw)
    cf, old = config.run.methods["cf"], config.run.methods["old"]
    assert cf.options == {"num_eigenvalues": 2} and cf.tracking is None
    assert old.options == {"num_eigenvalues": 3} and old.tracking is None
    assert config.as_dict()["methods"]["old"]["num_eigenvalues"] == 3
    (note,) = config.notes
    assert "[methods.old]" in note and "num_tracked" in note and "num_eigenvalues" in note
    assert "\n" not in note
    raw["methods"]["old"]["num_eigenvalues"] = 3
    with pytest.raises(ConfigError, match=r"\[methods.old\] num_tracked and num_eigenvalues"):
        parse_config(raw)
    raw["methods"] = {"gd": {"num_tracked": 1}}  # never an option of GD: not renamed
    with pytest.raises(ConfigError, match=r"\[methods.gd\] num_tracked: unknown key"):
        parse_config(raw)


def test_a_flow_refuses_an_optimizer_it_does_not_model():
    raw = with_change(("methods", "x"), {"method": "normalized_gd_flow", "optimizer": "rmsprop"})
    with pytest.raises(ConfigError, match=r"^\[methods.x\] optimizer: normalized_gd_flow does "
                       r"not model the optimizer 'rmsprop'\W.*normalized_gd") as info:
        parse_config(raw)
    assert "\n" not in str(info.value)
    # By default a flow models the optimizer it is named after.
    raw["methods"]["x"] = {"method": "normalized_gd_flow"}
    assert parse_config(raw).run.methods["x"].model == "normalized_gd"


def test_fingerprint_tracks_what_matters():
    a = parse_config(BASE)
    assert a.fingerprint() == parse_config(copy.deepcopy(BASE)).fingerprint()
    assert a.fingerprint() != parse_config(with_change(("run", "lr"), 0.2)).fingerprint()
    changed = with_change(("methods", "rms", "beta2"), 0.95)
    assert a.fingerprint() != parse_config(changed).fingerprint()
    # A default written out is the same configuration.
    assert a.fingerprint() == parse_config(with_change(("run", "seed"), 0)).fingerprint()


@pytest.mark.parametrize(
    "path, value, match",
    [
        (("run", "stepz"), 3, r"\[run\] stepz: unknown key"),
        (("run", "steps"), "ten", r"\[run\] steps: expected a positive integer, got 'ten'"),
        (("run", "steps"), 2.5, r"\[run\] steps: expected a positive integer"),
        (("run", "steps"), True, r"\[run\] steps: expected a positive integer, got True"),
        (("run", "lr"), -0.1, r"\[run\] lr: expected a positive number, got -0.1"),
        (("run", "lr"), 0, r"\[run\] lr: expected a positive number"),
        (("run", "lr"), float("nan"), r"\[run\] lr: expected a positive number"),
        (("run", "lr"), [], r"\[run\] lr: expected a positive number or a non-empty list"),
        (("run", "lr"), [0.1, "x"], r"\[run\] lr: expected a positive number, got 'x'"),
        (("run", "lr"), ..., r"\[run\] lr: missing"),
        (("run", "save_every"), 3, r"\[run\] save_every: 3 must divide steps = 20"),
        (("run", "checkpoint_every"), 5, r"checkpoint_every: 5 must be a multiple of save_every"),
        (("run", "dtype"), "float16", r"\[run\] dtype: unknown value 'float16'"),
        (("run", "eigensolver"), "qr", r"\[run\] eigensolver: unknown value 'qr'"),
        (("run", "seed"), -1, r"\[run\] seed: expected an integer ≥ 0"),
        (("run", "save_params"), 1, r"\[run\] save_params: expected true or false"),
        (("run", "reference"), "sgd", r"\[run\] reference: 'sgd' is not a method label"),
        (("problem", "name"), "lstm", r"\[problem\] name: unknown value 'lstm'"),
        (("problem", "name"), ..., r"\[problem\] name: missing"),
        (("problem", "depth"), 3, r"\[problem\] depth: unknown key; problem 'mlp' takes"),
        (("problem", "widths"), 4, r"\[problem\] widths: expected a list, got 4"),
        (("problem", "seed"), "one", r"\[problem\] seed: expected an integer, got 'one'"),
        (("problem", "activation"), 1, r"\[problem\] activation: expected a string"),
        (("problem", "data_chunk"), 2.5, r"\[problem\] data_chunk: expected an integer"),
        (("problem", "widths"), {"a": 1}, r"\[problem\] widths: expected a value, got a table"),
        (("data", "name"), "mnist", r"\[data\] name: unknown value 'mnist'"),
        (("data", "path"), "x", r"\[data\] path: unknown key"),
        (("data",), ..., r"problem 'mlp' trains on data: add a \[data\] table"),
        (("methods", "sgd"), {}, r"\[methods.sgd\]: unknown method 'sgd'"),
        (("methods", "x"), {"method": "lion"}, r"\[methods.x\] method: unknown method 'lion'"),
        (("methods", "gd", "beta2"), 0.9, r"\[methods.gd\] beta2: unknown key; 'gd' takes"),
        (("methods", "rms", "beta2"), 1.5, r"\[methods.rms\] beta2: expected a number in \[0, 1\)"),
        (("methods", "rms", "beta2"), "high", r"\[methods.rms\] beta2: expected a number"),
        (("methods", "rms", "bias_correction"), 1, r"bias_correction: expected true or false"),
        (("methods", "cf"), {"method": "central_flow", "refresh_tolerance": -1e-3},
         r"\[methods.cf\] refresh_tolerance: expected a non-negative number"),
        (("methods", "cf"), {"method": "central_flow", "refresh_interval": 0},
         r"\[methods.cf\] refresh_interval: expected a positive integer"),
        (("methods", "cf"), {"method": "central_flow", "refresh_interval": 2.5},
         r"\[methods.cf\] refresh_interval: expected an integer"),
        (("methods", "gd", "optimizer"), "rmsprop", r"\[methods.gd\] optimizer: only flows"),
        (("methods", "gd", "rtol"), 1e-3, r"\[methods.gd\] rtol: integrator options apply"),
        (("methods", "gradient_flow", "solver"), "rk4", r"solver: unknown value 'rk4'"),
        (("methods", "gradient_flow", "rtol"), -1.0, r"rtol: expected a positive number"),
        (("methods", "gradient_flow", "optimizer"), "lion", r"optimizer: unknown value 'lion'"),
        (("methods", "gd", "reference"), "nobody", r"\[methods.gd\] reference: 'nobody'"),
        (("methods", "gd", "start_from"), {"method": "rms", "step": 2},
         r"\[methods.gd\] start_from: only a flow takes over a run"),
        (("methods", "rms_flow", "start_from"), "rms",
         r"\[methods.rms_flow\] start_from: expected a table \{ method"),
        (("methods", "rms_flow", "start_from"), {"method": "rms"}, r"expected a table"),
        (("methods", "rms_flow", "start_from"), {"method": "rms", "step": -2},
         r"\[methods.rms_flow\] start_from step: expected an integer ≥ 0"),
        (("methods", "rms_flow", "start_from"), {"method": "nobody", "step": 2},
         r"\[methods.rms_flow\] start_from: 'rms_flow' → 'nobody' names a method that is not"),
        (("methods", "rms_flow", "start_from"), {"method": "gd", "step": 2},
         r"'rms_flow' models 'rmsprop' and cannot take over 'gd', a 'gd' run"),
        (("methods", "rms_flow", "start_from"), {"method": "gradient_flow", "step": 2},
         r"a discrete optimizer's run, not the flow 'gradient_flow'"),
        (("methods", "rms_flow", "start_from"), {"method": "rms", "step": 3},
         r"takes over at step 3, which must be a saved step before the end"),
        (("methods", "rms_flow", "start_from"), {"method": "rms", "step": 20},
         r"a multiple of save_every=2 below steps=20"),
        (("methods",), {}, r"\[methods\]: no methods"),
        (("extra",), {}, r"unknown table \[extra\]"),
    ],
)
def test_bad_values_are_named(path, value, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_config(with_change(path, value))
    assert "\n" not in str(info.value)


def test_data_table_for_a_problem_without_data():
    config = {"problem": {"name": "quadratic", "eigenvalues": [1.0, 2.0]}, **{
        k: v for k, v in BASE.items() if k != "problem"}}
    with pytest.raises(ConfigError, match=r"\[data\]: problem 'quadratic' takes no data"):
        parse_config(config)
    del config["data"]
    parse_config(config)
    del config["problem"]["eigenvalues"]
    with pytest.raises(ConfigError, match=r"\[problem\]: missing required key\(s\): eigenvalues"):
        parse_config(config)


def test_allowed_kinds_read_the_annotation():
    assert allowed_kinds("Sequence[int] | None", None) == {"list"}
    assert allowed_kinds("int | None", None) == {"int"}
    assert allowed_kinds("bool | None", None) == {"bool"}  # central_flow's active_block
    assert allowed_kinds("float", 0.0) == {"int", "float"}
    assert allowed_kinds("Callable[[Array], Scalar] | None", None) == set()
    assert allowed_kinds("", True) == {"bool"}
    assert allowed_kinds("", inspect_empty()) is None


def inspect_empty():
    import inspect

    return inspect.Parameter.empty


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nlr = \n")
    with pytest.raises(ConfigError, match=r"bad.toml: invalid TOML: .*line 2"):
        load_config(bad)
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_config(bad)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    good = write_config(tmp_path / "good.toml", with_change(("run", "steps"), "x"))
    with pytest.raises(ConfigError, match=r"good.toml: \[run\] steps"):
        load_config(good)


def test_quickstart_config_is_valid():
    config = load_config(ROOT / "configs" / "quickstart.toml")
    methods = [m.name for m in config.run.methods.values()]
    assert methods[:3] == ["gd", "gradient_flow", "modified_flow"]
    assert config.problem["name"] == "mlp" and config.data["name"] == "digits"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.toml")))
def test_every_shipped_config_is_valid(name):
    config = load_config(ROOT / "configs" / name)
    check_methods(config, build_problem(config))


def test_build_problem_and_methods():
    config = parse_config(BASE)
    problem = build_problem(config)
    # [run] seed seeds the data set and the initialization when they take a seed.
    assert problem.num_params == 3 * 4 + 4 + 4 * 1 + 1
    check_methods(config, problem)
    specs = config.run.methods
    assert list(specs) == ["gd", "gradient_flow", "rms", "rms_flow"]
    assert specs["rms_flow"].options == {"beta2": 0.9} and specs["rms_flow"].optimizer == "rmsprop"
    other = build_problem(parse_config(with_change(("run", "seed"), 1)))
    assert not np.allclose(problem.w0, other.w0)


def test_data_chunk_reaches_the_network():
    # The BASE data set has more examples than 7: the loss goes through chunks of 7, and is
    # the same function.
    plain = build_problem(parse_config(BASE))
    chunked = build_problem(parse_config(with_change(("problem", "data_chunk"), 7)))
    assert dict(chunked.loss.func.kwargs)["data_chunk"] == 7
    assert dict(plain.loss.func.kwargs)["data_chunk"] is None
    np.testing.assert_allclose(chunked.flat_loss(plain.w0), plain.flat_loss(plain.w0), rtol=1e-12)


def test_eigenvalue_counts_are_checked_against_the_problem():
    config = parse_config(with_change(("run", "num_eigenvalues"), 22))
    with pytest.raises(ConfigError, match=r"\[run\] num_eigenvalues: 22 is more than .* 21 "):
        check_methods(config, build_problem(config))
    raw = with_change(("run", "eigensolver"), "lobpcg")
    raw["run"]["num_eigenvalues"] = 5
    config = parse_config(raw)
    with pytest.raises(ConfigError, match=r"LOBPCG needs 5 × 5 < 21"):
        check_methods(config, build_problem(config))
    with pytest.raises(ConfigError, match=r"\[run\] steps: .* more than"):
        parse_config(with_change(("run", "steps"), 10**10))


def test_a_flow_takes_over_a_run_of_its_own_hyperparameters():
    raw = with_change(("methods", "rms_flow", "start_from"), {"method": "rms", "step": 4})
    config = parse_config(raw)
    assert config.run.start_from == {"rms_flow": ("rms", 4)}
    assert config.as_dict()["methods"]["rms_flow"]["start_from"] == {"method": "rms", "step": 4}
    assert config.fingerprint() != parse_config(BASE).fingerprint()
    check_methods(config, build_problem(config))
    raw["methods"]["rms_flow"]["beta2"] = 0.99
    config = parse_config(raw)
    with pytest.raises(ConfigError, match=r"\[methods.rms_flow\] start_from: 'rms_flow' and "
                       r"the run 'rms' it takes over differ in beta2 \(0.99, 0.9\)"):
        check_methods(config, build_problem(config))


def test_builder_rejections_become_config_errors():
    config = parse_config(with_change(("problem", "activation"), "sigmoid"))
    with pytest.raises(ConfigError, match=r"\[problem\] mlp: unknown activation 'sigmoid'"):
        build_problem(config)
    config = parse_config(with_change(("problem", "widths"), [4, "wide"]))
    with pytest.raises(ConfigError, match=r"\[problem\] mlp: "):
        build_problem(config)


def cifar_config(path):
    return {
        "problem": {"name": "mlp", "widths": [4]},
        "data": {"name": "cifar10", "path": str(path), "n": 4},
        "run": {"lr": 0.1, "steps": 4},
        "methods": {"gd": {}},
    }


def test_missing_and_corrupt_data_files(tmp_path):
    config = parse_config(cifar_config(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"\[data\] cifar10: .*nowhere.*not found"):
        build_problem(config)
    batch = tmp_path / "data_batch_1"
    data = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
    batch.write_bytes(pickle.dumps(data)[:50])  # truncated
    with pytest.raises(ConfigError, match=r"\[data\] cifar10: .*truncated or corrupt") as info:
        build_problem(parse_config(cifar_config(batch)))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "path, value, match",
    [
        (("run", "lr"), 1e-300, r"^\[run\] lr: 1e-300 is not representable in float32: it rounds "
                                r"to 0"),
        (("run", "lr"), 1e39, r"^\[run\] lr: 1e\+39 is not representable in float32: it "
                              r"overflows to inf"),
        (("run", "lr"), [0.1, 1e39], r"^\[run\] lr: 1e\+39 is not representable in float32"),
        (("run", "divergence_factor"), 1e39, r"^\[run\] divergence_factor: 1e\+39 is not "
                                             r"representable"),
        (("methods", "rms", "beta2"), 1 - 1e-10,
         r"^\[methods.rms\] beta2: expected a number in \[0, 1\), got 0.9999999999, which is 1 "
         r"in float32"),
        (("methods", "rms", "eps"), 1e-50, r"^\[methods.rms\] eps: 1e-50 is not representable"),
        (("methods", "gradient_flow", "dt0"), 1e-300, r"^\[methods.gradient_flow\] dt0: 1e-300 is "
                                                      r"not representable"),
        (("methods", "gradient_flow", "dt0"), 1e-12, r"^\[methods.gradient_flow\] dt0: 1e-12 takes "
                                                     r"2e\+13 integrator steps"),
        (("methods", "gradient_flow", "max_steps"), 10**10, r"^\[methods.gradient_flow\] "
                                                            r"max_steps: 10000000000 is more"),
        (("problem", "seed"), -1, r"^\[problem\] seed: expected an integer ≥ 0, got -1"),
        (("data", "seed"), -2, r"^\[data\] seed: expected an integer ≥ 0, got -2"),
        (("data", "n"), True, r"^\[data\] n: expected an integer, got True"),
    ],
)
def test_values_the_run_cannot_use_are_named(path, value, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_config(with_change(path, value))
    assert "\n" not in str(info.value)


def test_representable_numbers_depend_on_the_dtype():
    raw = with_change(("run", "lr"), 1e-300)
    raw["run"]["dtype"] = "float64"
    assert parse_config(raw).run.lr == 1e-300  # a normal float64
    raw["run"]["lr"] = 1e-320  # subnormal in float64
    with pytest.raises(ConfigError, match=r"\[run\] lr: 1e-320 is not representable in float64"):
        parse_config(raw)
    raw = {"problem": {"name": "quadratic", "eigenvalues": [1.0, 1e39]},
           "run": {"lr": 0.1, "steps": 2}, "methods": {"gd": {}}}
    with pytest.raises(ConfigError, match=r"^\[problem\] eigenvalues: 1e\+39 is not representable "
                       r"in float32: it overflows"):
        parse_config(raw)
    raw["problem"]["eigenvalues"] = [1e-50, 1.0]  # a tiny eigenvalue may round to 0
    raw["run"]["lr"] = 0.1
    parse_config(raw)


@pytest.mark.parametrize(
    "path, value, match",
    [
        (("problem", "widths"), [32.5], r"^\[problem\] mlp: widths must be positive integers, "
                                        r"got \[32.5\]$"),
        (("problem", "widths"), [-3, 32], r"^\[problem\] mlp: widths must be positive integers"),
        (("problem", "widths"), [0], r"^\[problem\] mlp: widths must be positive integers"),
        (("problem", "widths"), ["a"], r"^\[problem\] mlp: widths must be positive integers"),
        (("problem", "data_chunk"), 0, r"^\[problem\] mlp: data_chunk must be a positive integer"),
        (("data", "n"), 0, r"^\[data\] synthetic_regression: n must be a positive integer, got 0$"),
        (("data", "n"), -3, r"^\[data\] synthetic_regression: n must be a positive integer"),
        (("data", "d_in"), 0, r"^\[data\] synthetic_regression: d_in must be a positive integer"),
        (("data", "d_out"), 0, r"^\[data\] synthetic_regression: d_out must be a positive integer"),
    ],
)
def test_sizes_the_builders_refuse_are_named(path, value, match):
    config = parse_config(with_change(path, value))
    with pytest.raises(ConfigError, match=match):
        build_problem(config)


def test_the_central_flows_counts_are_checked_against_the_problem():
    raw = copy.deepcopy(BASE)  # 21 parameters
    raw["methods"] = {"gd": {}, "cf": {"method": "central_flow", "num_tracked": 1000}}
    config = parse_config(raw)
    with pytest.raises(ConfigError, match=r"^\[methods.cf\] num_eigenvalues: 1000 is more than "
                       r"the problem's 21 parameters$"):
        check_methods(config, build_problem(config))
    raw["methods"]["cf"] = {"method": "central_flow", "guard": 17}  # 5 + 17 > 21
    config = parse_config(raw)
    with pytest.raises(ConfigError, match=r"^\[methods.cf\] guard: 5 \+ 17 eigenvectors are more "
                       r"than the problem's 21 parameters$"):
        check_methods(config, build_problem(config))
    raw["methods"]["cf"] = {"method": "central_flow", "num_eigenvalues": 21, "guard": 0}
    config = parse_config(raw)
    check_methods(config, build_problem(config))
    # The default count is clipped to a smaller problem, as the flow does.
    raw = {"problem": {"name": "valley"}, "run": {"lr": 0.1, "steps": 2},
           "methods": {"cf": {"method": "central_flow"}}}
    config = parse_config(raw)
    check_methods(config, build_problem(config))
