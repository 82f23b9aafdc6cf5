"""Run directories: atomic writes, chunks appended and read back, corrupt files named."""

import json
import os

import numpy as np
import pytest

from flows.results import (
    RunDirectory,
    atomic_write,
    concatenate_chunks,
    load_json,
    load_npz,
    save_json,
    save_npz,
    split_keys,
)


def test_npz_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "gd/params": rng.standard_normal((5, 3)).astype(np.float32),
        "gd/loss": rng.standard_normal(5),
        "fingerprint": np.asarray("abc"),
        "flag": np.asarray(True),
    }
    save_npz(tmp_path / "a.npz", arrays)
    back = load_npz(tmp_path / "a.npz")
    assert set(back) == set(arrays)
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype
        np.testing.assert_array_equal(back[key], value)
    assert os.listdir(tmp_path) == ["a.npz"]  # no temporary file left behind


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "results.npz"
    save_npz(path, {"x": np.arange(3)})

    def broken(f):
        f.write(b"half a file")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    np.testing.assert_array_equal(load_npz(path)["x"], np.arange(3))
    assert os.listdir(tmp_path) == ["results.npz"]


def test_truncated_npz_is_named(tmp_path):
    path = tmp_path / "chunk.npz"
    save_npz(path, {"x": np.arange(1000.0)})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="chunk.npz: unreadable"):
        load_npz(path)
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "missing.npz")


def test_json_has_no_nan(tmp_path):
    path = tmp_path / "summary.json"
    save_json(path, {"loss": float("nan"), "values": np.asarray([1.0, np.inf]), "n": np.int64(3)})
    assert json.loads(path.read_text()) == {"loss": None, "values": [1.0, None], "n": 3}
    path.write_text("{ not json")
    with pytest.raises(ValueError, match="summary.json: unreadable"):
        load_json(path)


def test_chunks_append_and_read_back(tmp_path):
    run = RunDirectory(tmp_path / "run")
    assert not run.has_run()
    run.write_chunk(0, {"gd/steps": np.arange(0, 3), "gf/steps": np.arange(0, 3)})
    run.write_chunk(1, {"gd/steps": np.arange(3, 6)})  # gf stopped after chunk 0
    run.write_chunk(2, {"gd/steps": np.arange(6, 9)})
    joined = run.read_chunks()
    np.testing.assert_array_equal(joined["gd/steps"], np.arange(9))
    np.testing.assert_array_equal(joined["gf/steps"], np.arange(3))
    np.testing.assert_array_equal(run.read_chunks(2)["gd/steps"], np.arange(6))
    run.remove_chunks_from(1)
    np.testing.assert_array_equal(run.read_chunks()["gd/steps"], np.arange(3))
    with pytest.raises(ValueError, match="missing"):
        run.read_chunks(2)


def test_checkpoint_and_fingerprint(tmp_path):
    run = RunDirectory(tmp_path)
    assert run.read_checkpoint() is None and run.fingerprint() is None
    run.write_checkpoint({"fingerprint": np.asarray("f00"), "chunks_done": np.asarray(2)})
    assert run.has_run()
    assert run.fingerprint() == "f00"
    assert int(run.read_checkpoint()["chunks_done"]) == 2


def test_split_and_concatenate():
    chunks = [{"a/x": np.zeros((2, 3)), "b/y": np.ones(2)}, {"a/x": np.ones((1, 3))}]
    joined = concatenate_chunks(chunks)
    assert joined["a/x"].shape == (3, 3) and joined["b/y"].shape == (2,)
    named = split_keys({"gd/loss": 1, "gd/extra/name": 2, "lr": 3})
    assert named == {"gd": {"loss": 1, "extra/name": 2}, "lr": {"": 3}}
