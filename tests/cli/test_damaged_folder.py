"""A damaged run folder (a chunk missing or truncated, an unreadable checkpoint) is found
before anything is compiled, refused in one line that says how to recover, and cleared
by --overwrite."""

import numpy as np
import pytest

from flows.runs import runner as runner_module

from .helpers import assert_one_line_error, load_results, run_cli, write_config

HOOK = "_FLOWS_TEST_INTERRUPT_AFTER_CHUNK"

CONFIG = {
    "problem": {"name": "quadratic", "eigenvalues": [0.5, 3.0, 9.0], "seed": 1},
    "run": {"lr": 0.1, "steps": 30, "save_every": 3, "checkpoint_every": 6,
            "num_eigenvalues": 0, "dtype": "float64"},
    "methods": {"gd": {}, "rms": {"method": "rmsprop", "beta2": 0.9}},
}


def _damage(run, how):
    chunk, checkpoint = run / "chunks" / "00001.npz", run / "checkpoint.npz"
    if how == "missing chunk":
        chunk.unlink()
        return "00001.npz: missing"
    if how == "truncated chunk":
        chunk.write_bytes(chunk.read_bytes()[:200])
        return "00001.npz: unreadable"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    return "checkpoint.npz: unreadable"


@pytest.mark.parametrize("how", ["missing chunk", "truncated chunk", "truncated checkpoint"])
def test_a_damaged_folder_is_refused_early_and_overwrite_clears_it(tmp_path, monkeypatch, how):
    path = write_config(tmp_path / "run.toml", CONFIG)
    assert run_cli("run", path, "--out", tmp_path / "whole")[0] == 0
    with monkeypatch.context() as patch:
        patch.setenv(HOOK, "interrupt:3")
        assert run_cli("run", path, "--out", tmp_path / "run")[0] == 130
    named = _damage(tmp_path / "run", how)

    def compiled(*args, **kwargs):
        raise AssertionError("the run was built and compiled before the folder was checked")

    with monkeypatch.context() as patch:
        patch.setattr(runner_module._Member, "__init__", compiled)
        code, _, err = run_cli("run", path, "--out", tmp_path / "run")
    assert code == 2
    assert_one_line_error(err)
    assert named in err and "damaged" in err and "--overwrite" in err

    code, _, err = run_cli("run", path, "--out", tmp_path / "run", "--overwrite")
    assert code == 0, err
    whole, fresh = load_results(tmp_path / "whole"), load_results(tmp_path / "run")
    assert whole.keys() == fresh.keys()
    for key in whole:
        np.testing.assert_array_equal(whole[key], fresh[key], err_msg=key)
