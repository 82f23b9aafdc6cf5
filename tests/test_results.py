"""Run directories: atomic writes, chunks appended and read back, corrupt files named."""

import json
import os

import numpy as np
import pytest

from flows.results import (
    CorruptRunError,
    RunDirectory,
    atomic_write,
    check_npz,
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


def test_chunked_arrays_join_pad_and_stream(tmp_path):
    """Chunks read back lazily: joined along the steps, a series that stopped padded with
    NaN (ints become floats), ``steps`` filled in, a sweep's rates first; written to an
    ``.npz`` piece by piece, equal to the joined arrays."""
    run = RunDirectory(tmp_path / "run")
    rng = np.random.default_rng(0)
    first = {"gd/steps": np.arange(0, 3), "gd/count": np.arange(3, dtype=np.int32),
             "gd/params": rng.standard_normal((3, 2, 4)), "gf/loss": rng.standard_normal(3)}
    second = {"gf/loss": rng.standard_normal(2)}  # gd stopped after the first chunk
    run.write_chunk(0, first)
    run.write_chunk(1, second)
    arrays = run.chunked_arrays([3, 2], sweep=False, save_every=1)
    assert set(arrays) == set(first)
    assert not isinstance(arrays["gd/params"], np.ndarray)  # nothing read yet
    np.testing.assert_array_equal(arrays["gd/steps"], np.arange(5))
    np.testing.assert_array_equal(arrays["gf/loss"], np.concatenate([first["gf/loss"],
                                                                     second["gf/loss"]]))
    count = np.asarray(arrays["gd/count"])
    assert count.dtype == np.float64 and np.all(np.isnan(count[3:]))
    np.testing.assert_array_equal(count[:3], [0, 1, 2])
    params = np.asarray(arrays["gd/params"])
    assert params.shape == (5, 2, 4) and np.all(np.isnan(params[3:]))
    # A sweep: pieces are (rows, L, …), the array (L, T, …), and a[i] is rate i.
    sweep = {"gd/params": run.chunked_arrays([3, 2], sweep=True, save_every=1)["gd/params"]}
    assert sweep["gd/params"].shape == (2, 5, 4)
    np.testing.assert_array_equal(sweep["gd/params"][1][:3], first["gd/params"][:, 1])
    np.testing.assert_array_equal(sweep["gd/params"], np.swapaxes(params, 0, 1))
    save_npz(tmp_path / "joined.npz", {**arrays, **{f"sweep/{k}": v for k, v in sweep.items()},
                                       "lr": np.asarray(0.1)})
    back = load_npz(tmp_path / "joined.npz")
    for key, value in arrays.items():
        np.testing.assert_array_equal(back[key], np.asarray(value), err_msg=key)
        assert back[key].dtype == value.dtype
    np.testing.assert_array_equal(back["sweep/gd/params"], np.swapaxes(params, 0, 1))


def test_inspect_finds_a_damaged_run_from_the_zip_directories(tmp_path):
    run = RunDirectory(tmp_path)
    for i in range(3):
        run.write_chunk(i, {"gd/loss": np.arange(100.0)})
    run.write_checkpoint({"chunks_done": np.asarray(2), "steps_done": np.asarray(20)})
    state = run.inspect()
    assert (state.chunks_done, state.steps_done, state.finished) == (2, 20, False)
    assert check_npz(run.chunk_path(0)) == {"gd/loss": ((100,), np.dtype(np.float64))}
    run.chunk_path(2).write_bytes(b"beyond the checkpoint: not looked at")
    run.inspect()
    path = run.chunk_path(1)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(CorruptRunError, match="00001.npz: unreadable"):
        run.inspect()
    path.unlink()
    with pytest.raises(CorruptRunError, match="00001.npz: missing"):
        run.inspect()
