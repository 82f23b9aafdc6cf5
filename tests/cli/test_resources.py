"""`flows run` sizes the saved rows before it runs: a run whose rows would not fit in
memory or on disk is refused in one line naming the settings; and what it holds while
it runs and writes ``results.npz`` is a chunk, not the run."""

import tracemalloc

import jax
import numpy as np
import pytest

import flows.runs
from flows.runs import runner as runner_module

from .helpers import ROOT, assert_one_line_error, load_results, run_cli, write_config


def _quickstart(**run):
    """configs/quickstart.toml with GD only and these [run] settings."""
    text = (ROOT / "configs" / "quickstart.toml").read_text()
    text = text[: text.index("[methods.")] + "[methods.gd]\n"
    for key, value in run.items():
        lines = [f"{key} = {value}" if line.split("=")[0].strip() == key else line
                 for line in text.splitlines()]
        text = "\n".join(lines) + "\n"
    return text


def test_a_billion_steps_are_refused_in_one_line(tmp_path):
    # 5·10⁷ saved rows per chunk of 3466 float32 parameters: 693 GB, held in memory.
    config = tmp_path / "long.toml"
    config.write_text(_quickstart(steps=10**9, save_every=1, num_eigenvalues=0))
    code, _, err = run_cli("run", config, "--out", tmp_path / "run")
    assert code == 2
    assert_one_line_error(err)
    assert "[run] steps = 1000000000, save_every = 1, checkpoint_every = 50000000" in err
    assert "of memory" in err and "save_params" in err and "num_eigenvalues" in err
    assert not (tmp_path / "run").exists()  # nothing written


def test_rows_that_would_not_fit_on_disk_are_refused(tmp_path, monkeypatch):
    config = {
        "problem": {"name": "quadratic", "eigenvalues": [0.5, 3.0, 9.0]},
        "run": {"lr": 0.1, "steps": 300, "num_eigenvalues": 1, "dtype": "float64"},
        "methods": {"gd": {}},
    }
    path = write_config(tmp_path / "run.toml", config)
    monkeypatch.setattr(runner_module, "free_disk", lambda directory: 1000)
    code, _, err = run_cli("run", path, "--out", tmp_path / "run")
    assert code == 2
    assert_one_line_error(err)
    assert "[run] steps = 300, save_every = 1" in err and "on disk" in err
    assert "results.npz" in err and "1 kB free" in err
    assert not (tmp_path / "run").exists()


def test_a_run_and_its_results_file_hold_a_chunk_not_the_run(tmp_path):
    # 2001 saved rows of 3466 float32 parameters: 27.7 MB; a chunk is 1/20 of that.
    config = tmp_path / "every_step.toml"
    config.write_text(_quickstart(steps=2000, save_every=1, num_eigenvalues=0))
    assert run_cli("run", config, "--out", tmp_path / "warm")[0] == 0  # compiled
    tracemalloc.start()
    try:
        code, _, err = run_cli("run", config, "--out", tmp_path / "run")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 0, err
    params = load_results(tmp_path / "run")["gd/params"]
    assert params.shape == (2001, 3466) and params.nbytes > 27e6
    assert peak < params.nbytes / 4, peak  # before: the rows joined, then copied to write
    np.testing.assert_array_equal(params, load_results(tmp_path / "warm")["gd/params"])
    assert not list((tmp_path / "run" / "chunks").glob("*.npz"))  # results.npz holds them


def test_out_of_memory_in_a_compiled_step_is_one_line(tmp_path, monkeypatch):
    # What XLA's CPU backend raised for the float64 central flow on 1000 CIFAR-10 images.
    def out_of_memory(*args, **kwargs):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory allocating 44540262560 bytes.")

    monkeypatch.setattr(flows.runs, "run", out_of_memory)
    config = tmp_path / "run.toml"
    config.write_text(_quickstart(steps=20, save_every=10))
    code, _, err = run_cli("run", config, "--out", tmp_path / "run")
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("flows: error:")
    assert "44.5 GB" in last and "[data] n" in last and "float32" in last
    assert "[problem] data_chunk" in last


def test_other_runtime_errors_are_not_called_out_of_memory(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr(flows.runs, "run", broken)
    config = tmp_path / "run.toml"
    config.write_text(_quickstart(steps=20, save_every=10))
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        run_cli("run", config, "--out", tmp_path / "run")
