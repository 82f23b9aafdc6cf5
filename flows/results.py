"""Run directories on disk: atomic writes, results streamed in chunks, checkpoints.

A run directory holds

- ``chunks/NNNNN.npz``: the arrays saved during chunk NNNNN of a run, one file per
  chunk, keyed ``"<label>/<name>"`` (``"gd/loss"``, ``"gd/params"``, …); a run
  appends one file per chunk as it goes, so the results so far are readable while
  it runs;
- ``checkpoint.npz``: where to resume: the number of chunks done, each method's
  carry (its state at that step), and the fingerprint of the configuration;
- ``results.npz`` and ``summary.json`` once the run is complete.

Every file is written to a temporary name in the same directory, flushed, and
renamed over its target (`os.replace` is atomic on POSIX and Windows), so a
reader, or a run killed at any instant, sees either the old file or the new one,
never a torn one.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RunDirectory",
    "CorruptRunError",
    "atomic_write_bytes",
    "save_npz",
    "load_npz",
    "save_json",
    "load_json",
    "concatenate_chunks",
    "split_keys",
]

CHECKPOINT = "checkpoint.npz"
RESULTS = "results.npz"
SUMMARY = "summary.json"
CHUNKS = "chunks"


class CorruptRunError(ValueError):
    """A run directory's file is unreadable or missing (bad input, reported in one line)."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedIOBase], Any]) -> None:
    """Call ``write(file)`` on an in-memory file and store its bytes atomically at ``path``."""
    buffer = io.BytesIO()
    write(buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """Save named arrays to an ``.npz`` file atomically (no pickled objects)."""
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    for name, value in arrays.items():
        if value.dtype == object:
            raise TypeError(f"cannot save {name!r}: object arrays are not stored")
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file; `CorruptRunError` (naming the file) if it is corrupt."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise CorruptRunError(f"{path}: unreadable (truncated or corrupt file): {err}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None  # JSON has no NaN or infinity
    return value


def save_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (NaN and ±inf become null)."""
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())


def load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise CorruptRunError(f"{path}: unreadable (truncated or corrupt file): {err}") from None


def split_keys(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """``{"gd/loss": a, …}`` → ``{"gd": {"loss": a}, …}`` (the first slash splits)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        label, _, name = key.partition("/")
        out.setdefault(label, {})[name] = value
    return out


def concatenate_chunks(chunks: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join chunk arrays along their first axis, key by key, in chunk order.

    A key missing from later chunks (a method that stopped) keeps what it had.
    """
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in chunks:
        for key, value in chunk.items():
            parts.setdefault(key, []).append(np.asarray(value))
    return {key: np.concatenate(values) for key, values in parts.items()}


class RunDirectory:
    """The files of one run (see the module docstring for the layout)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    def chunk_path(self, index: int) -> Path:
        return self.path / CHUNKS / f"{index:05d}.npz"

    def create(self) -> None:
        (self.path / CHUNKS).mkdir(parents=True, exist_ok=True)

    def has_run(self) -> bool:
        """Whether the folder already holds a run (a checkpoint, results or a summary)."""
        return any(p.exists() for p in (self.checkpoint_path, self.results_path, self.summary_path))

    # ---------------------------------------------------------------- chunks

    def write_chunk(self, index: int, arrays: Mapping[str, Any]) -> None:
        self.create()
        save_npz(self.chunk_path(index), arrays)

    def read_chunks(self, count: int | None = None) -> dict[str, np.ndarray]:
        """The chunks ``0 … count−1`` joined (all consecutive ones present if None)."""
        chunks = []
        index = 0
        while count is None or index < count:
            path = self.chunk_path(index)
            if not path.exists():
                if count is None:
                    break
                raise CorruptRunError(f"{path}: missing (the run directory is incomplete)")
            chunks.append(load_npz(path))
            index += 1
        return concatenate_chunks(chunks)

    def remove_chunks_from(self, index: int) -> None:
        """Delete chunk files ``index, index+1, …`` (left by a run killed mid-chunk)."""
        folder = self.path / CHUNKS
        if not folder.is_dir():
            return
        for path in folder.glob("*.npz"):
            if path.stem.isdigit() and int(path.stem) >= index:
                path.unlink()

    # ------------------------------------------------------------ checkpoint

    def write_checkpoint(self, arrays: Mapping[str, Any]) -> None:
        self.create()
        save_npz(self.checkpoint_path, arrays)

    def read_checkpoint(self) -> dict[str, np.ndarray] | None:
        """The checkpoint's arrays, or None if there is none."""
        if not self.checkpoint_path.exists():
            return None
        return load_npz(self.checkpoint_path)

    def fingerprint(self) -> str | None:
        """The configuration fingerprint recorded in the folder (checkpoint or summary)."""
        checkpoint = self.read_checkpoint()
        if checkpoint is not None and "fingerprint" in checkpoint:
            return str(checkpoint["fingerprint"])
        if self.summary_path.exists():
            summary = load_json(self.summary_path)
            if isinstance(summary, dict) and "fingerprint" in summary:
                return str(summary["fingerprint"])
        return None
