"""The runner and its folder: memory bounded by a chunk (the rows go to the chunk files
only, the output reads them back when used), the saved rows sized before the run, a
damaged folder refused before anything is compiled, one process per folder."""

import fcntl
import tracemalloc

import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows.results import ChunkedArray, CorruptRunError, RunInUseError
from flows.runs import ResourceError, check_resources, run, saved_bytes
from flows.runs import runner as runner_module

from ..helpers import quadratic_problem

N = 4000  # parameters: 401 saved rows of them are 12.8 MB in float64


def _diagonal_problem():
    d = jnp.linspace(0.1, 2.0, N)
    return flows.Problem(lambda w: 0.5 * jnp.sum(d * w**2), jnp.ones(N), name="diagonal")


PROBLEM = _diagonal_problem()


def _spec(**kwargs):
    return flows.RunSpec(
        methods={"gd": flows.Method("gd"), "rms": flows.Method("rmsprop")},
        lr=0.1, steps=400, save_every=1, checkpoint_every=20, tracking=flows.Tracking(0),
        references={"rms": "gd"}, **kwargs,
    )


def test_a_run_in_a_folder_holds_a_chunk_not_the_run(tmp_path):
    spec = _spec()
    run(PROBLEM, spec, directory=tmp_path / "warm")  # compiled before measuring
    total = sum(np.asarray(a).nbytes for named in run(PROBLEM, spec).arrays.values()
                for a in named.values())
    assert total > 30e6  # params and RMSProp's ν of two methods: 4 × 12.8 MB
    tracemalloc.start()
    try:
        output = run(PROBLEM, spec, directory=tmp_path / "run")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < total / 10, (peak, total)  # a few chunks of 1/20 at most
    # The output reads the chunk files when used, and equals the run kept in memory.
    assert isinstance(output.arrays["gd"]["params"], ChunkedArray)
    in_memory = run(PROBLEM, spec)
    for label, named in in_memory.arrays.items():
        assert set(output.arrays[label]) == set(named)
        for name, value in named.items():
            lazy = output.arrays[label][name]
            assert lazy.shape == value.shape and lazy.dtype == value.dtype
            np.testing.assert_array_equal(np.asarray(lazy), value, err_msg=f"{label}/{name}")


def test_saved_bytes_are_the_bytes_of_the_output(tmp_path):
    problem, _, _ = quadratic_problem([0.5, 2.0, 8.0])
    for spec in (
        flows.RunSpec(methods={"gd": flows.Method("gd"), "gf": flows.Method("gradient_flow")},
                      lr=(0.1, 0.2), steps=40, save_every=2, checkpoint_every=10,
                      tracking=flows.Tracking(1), references={"gf": "gd"}),
        flows.RunSpec(methods={"rms": flows.Method("rmsprop")}, lr=0.1, steps=30,
                      save_every=3, tracking=flows.Tracking(2), save_params=False),
    ):
        chunk, total = saved_bytes(problem, spec)
        output = run(problem, spec)
        assert total == sum(np.asarray(a).nbytes for named in output.arrays.values()
                            for a in named.values())
        rows = spec.chunk_length() // spec.save_every + 1
        assert chunk == total * rows // (spec.steps // spec.save_every + 1)


def test_rows_that_would_not_fit_are_refused_naming_the_settings(tmp_path, monkeypatch):
    spec = _spec()
    chunk, total = saved_bytes(PROBLEM, spec)
    monkeypatch.setattr(runner_module, "available_memory", lambda: 2 * chunk - 1)
    with pytest.raises(ResourceError, match="checkpoint_every = 20.*memory"):
        check_resources(PROBLEM, spec, tmp_path / "run")
    with pytest.raises(ResourceError, match="steps = 400, save_every = 1.*memory"):
        run(PROBLEM, spec)  # without a folder the whole run is held
    monkeypatch.setattr(runner_module, "available_memory", lambda: None)
    monkeypatch.setattr(runner_module, "free_disk", lambda path: total - 1)
    with pytest.raises(ResourceError, match="on disk"):
        run(PROBLEM, spec, directory=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written
    monkeypatch.setattr(runner_module, "free_disk", lambda path: total)
    check_resources(PROBLEM, spec, tmp_path / "run", results_file=False)  # it fits
    with pytest.raises(ResourceError, match="results.npz"):  # the chunks and results.npz
        check_resources(PROBLEM, spec, tmp_path / "run", results_file=True)


def _no_compiling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the run was built and compiled")

    monkeypatch.setattr(runner_module._Member, "__init__", refuse)


def test_a_damaged_folder_is_refused_before_anything_is_compiled(tmp_path, monkeypatch):
    problem, _, _ = quadratic_problem([0.5, 2.0, 8.0])
    spec = flows.RunSpec(methods={"gd": flows.Method("gd")}, lr=0.1, steps=30,
                         save_every=3, checkpoint_every=6)
    with monkeypatch.context() as patch:
        patch.setenv(runner_module._INTERRUPT_HOOK, "interrupt:3")
        with pytest.raises(KeyboardInterrupt):
            run(problem, spec, directory=tmp_path / "run")
    chunk = tmp_path / "run" / "chunks" / "00001.npz"
    good = chunk.read_bytes()
    _no_compiling(monkeypatch)
    chunk.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CorruptRunError, match="00001.npz: unreadable"):
        run(problem, spec, directory=tmp_path / "run")
    chunk.unlink()
    with pytest.raises(CorruptRunError, match="00001.npz: missing"):
        run(problem, spec, directory=tmp_path / "run")
    chunk.write_bytes(good)
    checkpoint = tmp_path / "run" / "checkpoint.npz"
    checkpoint.write_bytes(checkpoint.read_bytes()[:50])
    with pytest.raises(CorruptRunError, match="checkpoint.npz: unreadable"):
        run(problem, spec, directory=tmp_path / "run")


def test_a_folder_in_use_is_refused(tmp_path, monkeypatch):
    problem, _, _ = quadratic_problem([0.5, 2.0, 8.0])
    spec = flows.RunSpec(methods={"gd": flows.Method("gd")}, lr=0.1, steps=6)
    folder = tmp_path / "run"
    folder.mkdir()
    with open(folder / ".lock", "a+") as other:  # another open file: another holder
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.write("4242\n")
        other.flush()
        _no_compiling(monkeypatch)
        with pytest.raises(RunInUseError, match=r"in use by another flows run \(pid 4242\)"):
            run(problem, spec, directory=folder)
    monkeypatch.undo()
    assert run(problem, spec, directory=folder).status("gd") == "ok"  # released
