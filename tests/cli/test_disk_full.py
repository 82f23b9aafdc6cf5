"""A disk that fills up during `flows run`: one line naming the file, exit status 2,
every completed chunk and the last checkpoint kept, and the same command resumes to the
uninterrupted result once there is space again."""

import errno

import numpy as np
import pytest

import flows.results
from flows.results import load_npz

from .helpers import assert_one_line_error, load_results, run_cli, write_config

CONFIG = {
    "problem": {"name": "quadratic", "eigenvalues": [0.5, 3.0, 9.0], "seed": 1},
    "run": {"lr": 0.1, "steps": 30, "save_every": 3, "checkpoint_every": 6,
            "num_eigenvalues": 1, "dtype": "float64"},
    "methods": {"gd": {}, "rms": {"method": "rmsprop", "beta2": 0.9}},
}


def _fill_the_disk_at(monkeypatch, name):
    """Every write of a file called ``name`` runs out of space half-way."""
    original = flows.results.atomic_write

    def write(path, writer):
        if str(path).endswith(name):
            def half(file):
                file.write(b"PK\x03\x04 the first bytes")
                raise OSError(errno.ENOSPC, "No space left on device")

            return original(path, half)
        return original(path, writer)

    monkeypatch.setattr(flows.results, "atomic_write", write)


@pytest.mark.parametrize("full_at, chunks_kept, steps_kept", [
    ("chunks/00002.npz", 2, 12),  # during the run
    ("results.npz", 5, 30),  # after the last chunk, while writing the results
])
def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path, monkeypatch, full_at,
                                                      chunks_kept, steps_kept):
    path = write_config(tmp_path / "run.toml", CONFIG)
    code, _, err = run_cli("run", path, "--out", tmp_path / "whole")
    assert code == 0, err
    with monkeypatch.context() as patch:
        _fill_the_disk_at(patch, full_at)
        code, _, err = run_cli("run", path, "--out", tmp_path / "run")
    assert code == 2
    assert_one_line_error(err.strip().splitlines()[-1])
    assert "Traceback" not in err
    assert f"{tmp_path / 'run' / full_at}: no space left on the device" in err
    assert f"({steps_kept} of 30 steps)" in err and "run the same command again" in err
    run = tmp_path / "run"
    assert not list(run.rglob("*.tmp"))  # the half-written file is gone
    assert sorted(p.name for p in (run / "chunks").glob("*.npz")) == [
        f"{i:05d}.npz" for i in range(chunks_kept)]
    for i in range(chunks_kept):  # the completed chunks are intact
        load_npz(run / "chunks" / f"{i:05d}.npz")
    checkpoint = load_npz(run / "checkpoint.npz")
    assert int(checkpoint["chunks_done"]) == chunks_kept
    assert not (run / "results.npz").exists()

    code, _, err = run_cli("run", path, "--out", run)  # space again
    assert code == 0, err
    if steps_kept < 30:
        assert f"resuming at step {steps_kept} of 30" in err
    whole, resumed = load_results(tmp_path / "whole"), load_results(run)
    assert whole.keys() == resumed.keys()
    for key in whole:
        np.testing.assert_array_equal(whole[key], resumed[key], err_msg=key)
    assert not list((run / "chunks").glob("*.npz"))  # results.npz holds them now
