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
never a torn one. Files are streamed to their temporary name (an ``.npz`` one array at
a time), so writing one never holds a second copy of what it writes.

A run's saved rows live in the chunk files while it runs; its final arrays are
assembled from them key by key (`ChunkedArray`, read only when asked for), so neither
the run nor the writing of ``results.npz`` holds more than a chunk and one series.
Once ``results.npz`` is complete, ``flows run`` empties ``chunks/``.

A run folder is used by one process at a time (`RunDirectory.lock`, an ``flock`` on
``.lock`` that the system releases when the process ends), and
`RunDirectory.inspect` checks that a folder can be resumed (the checkpoint readable,
the chunks it counts present and readable) before anything is computed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RunDirectory",
    "RunState",
    "ChunkedArray",
    "CorruptRunError",
    "RunInUseError",
    "atomic_write",
    "atomic_write_bytes",
    "save_npz",
    "load_npz",
    "check_npz",
    "save_json",
    "load_json",
    "concatenate_chunks",
    "split_keys",
    "is_disk_full",
]

CHECKPOINT = "checkpoint.npz"
RESULTS = "results.npz"
SUMMARY = "summary.json"
CHUNKS = "chunks"
LOCK = ".lock"


class CorruptRunError(ValueError):
    """A run directory's file is unreadable or missing (bad input, reported in one line)."""


class RunInUseError(ValueError):
    """Another process holds the run folder's lock (bad input, reported in one line)."""


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a write that failed for want of space (or of quota)."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedIOBase], Any]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk and
    rename it over ``path`` (atomic on POSIX and Windows); on any failure the temporary
    file is removed and ``path`` is untouched. An `OSError` of the writing names ``path``
    (``error.filename``)."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except OSError as err:
        if err.filename in (None, str(tmp), tmp):  # name the file meant, not the temporary
            raise OSError(err.errno, err.strerror or os.strerror(err.errno or 0),
                          str(path)) from err
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    atomic_write(path, lambda f: f.write(data))


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


def _write_npz(file, arrays: Mapping[str, Any]) -> None:
    """``np.savez``'s format (stored, uncompressed, zip64), one member at a time: a value
    is turned into an array only while it is written (a `ChunkedArray` streams itself)."""
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED,
                         allowZip64=True) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                if isinstance(value, ChunkedArray):
                    value.write_npy(member)
                    continue
                value = np.asarray(value)
                if value.dtype.hasobject:
                    raise TypeError(f"cannot save {name!r}: object arrays are not stored")
                np.lib.format.write_array(member, value, allow_pickle=False)


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """Save named arrays to an ``.npz`` file atomically (no pickled objects), streaming
    them into the file one by one (values may be `ChunkedArray` or anything
    `numpy.asarray` takes; a lazy mapping is read one value at a time)."""
    atomic_write(path, lambda f: _write_npz(f, arrays))


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


def _load_member(path: Path, key: str) -> np.ndarray:
    """One array of an ``.npz`` file (only that member is read)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive[key]
    except FileNotFoundError:
        raise CorruptRunError(f"{path}: missing (the run directory is incomplete)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise CorruptRunError(f"{path}: unreadable (truncated or corrupt file): {err}") from None


def check_npz(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The shape and dtype of every array of an ``.npz`` file, from its zip directory and
    the arrays' headers only (cheap, whatever the file's size): `CorruptRunError` if it is
    missing, truncated or not an ``.npz`` of arrays."""
    path = Path(path)

    def corrupt(why) -> CorruptRunError:
        return CorruptRunError(f"{path}: unreadable (truncated or corrupt file): {why}")

    if not path.exists():
        raise CorruptRunError(f"{path}: missing (the run directory is incomplete)")
    try:
        size = path.stat().st_size
        out = {}
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise corrupt(f"unexpected member {info.filename!r}")
                if info.header_offset + info.compress_size > size:
                    raise corrupt(f"member {info.filename!r} runs past the end of the file")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(member)
                if np.dtype(dtype).hasobject:
                    raise corrupt(f"member {info.filename!r} is not a plain array")
                out[info.filename[:-4]] = (tuple(shape), np.dtype(dtype))
        return out
    except CorruptRunError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise corrupt(err) from None


class ChunkedArray:
    """An array kept in files, in pieces along its step axis (the chunks of a run, or one
    member of ``results.npz``), read only when asked for.

    ``numpy.asarray(a)`` (and anything that calls it) assembles the whole array; ``a[i]``
    of a sweep's array selects learning rate ``i`` and is lazy again; `write_npy` streams
    it into a file piece by piece, so writing ``results.npz`` never holds more than one
    piece. A piece that is missing (a method that had stopped) is NaN, or, for ``steps``,
    the saved steps (``fill_steps`` apart).

    Args:
        pieces: per chunk, the file holding its piece (None: missing).
        key: the array's name in those files.
        rows: per chunk, its number of saved rows.
        item_shape: a piece's shape after its rows (a sweep's starts with the rates).
        dtype: the assembled dtype (a float if missing pieces are NaN).
        sweep: pieces are ``(rows, L, …)`` and the array is ``(L, T, …)``.
        fill_steps: missing pieces are the row index times this (the ``steps`` series).
    """

    def __init__(self, pieces, key, rows, item_shape, dtype, *, sweep=False,
                 fill_steps=None, select=None):
        self.pieces = list(pieces)
        self.key = key
        self.rows = [int(r) for r in rows]
        self.item_shape = tuple(item_shape)
        self.dtype = np.dtype(dtype)
        self.sweep = bool(sweep)
        self.fill_steps = fill_steps
        self.select = select

    # ------------------------------------------------------------- array-like

    @property
    def shape(self) -> tuple[int, ...]:
        total = sum(self.rows)
        if not self.sweep:
            return (total,) + self.item_shape
        if self.select is not None:
            return (total,) + self.item_shape[1:]
        return (self.item_shape[0], total) + self.item_shape[1:]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ChunkedArray({self.key!r}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, self.dtype)
        start = 0
        for rows, piece in self._pieces():
            if self.sweep and self.select is None:
                out[:, start:start + rows] = np.swapaxes(piece, 0, 1)
            else:
                out[start:start + rows] = piece
            start += rows
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, index):
        if self.sweep and self.select is None and isinstance(index, (int, np.integer)):
            count = self.item_shape[0]
            if not -count <= index < count:
                raise IndexError(f"index {index} is out of bounds for {count} learning rates")
            return ChunkedArray(self.pieces, self.key, self.rows, self.item_shape, self.dtype,
                                sweep=True, fill_steps=self.fill_steps,
                                select=int(index) % count)
        return np.asarray(self)[index]

    def __iter__(self) -> Iterator:
        if self.sweep and self.select is None:
            return (self[i] for i in range(self.item_shape[0]))
        return iter(np.asarray(self))

    # -------------------------------------------------------------- pieces

    def _pieces(self, lr: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(rows, piece)`` in order: a stored piece (of learning rate ``lr`` or
        ``self.select``, if any) or its fill, in the assembled dtype."""
        lr = self.select if lr is None else lr
        start = 0
        for path, rows in zip(self.pieces, self.rows):
            if path is None:
                shape = (rows,) + self.item_shape
                if self.fill_steps is not None:
                    steps = (start + np.arange(rows)) * self.fill_steps
                    piece = np.broadcast_to(
                        steps.reshape((-1,) + (1,) * len(self.item_shape)), shape)
                else:
                    piece = np.full(shape, np.nan, self.dtype)
            else:
                piece = _load_member(Path(path), self.key)
                if piece.shape != (rows,) + self.item_shape:
                    raise CorruptRunError(
                        f"{path}: {self.key!r} has shape {piece.shape}, expected "
                        f"{(rows,) + self.item_shape}")
            if lr is not None:
                piece = piece[:, lr]
            yield rows, np.ascontiguousarray(piece, dtype=self.dtype)
            start += rows

    def write_npy(self, file) -> None:
        """Write the array in ``.npy`` format to ``file``, one piece at a time."""
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": self.shape}
        np.lib.format.write_array_header_1_0(file, header)
        rates = range(self.item_shape[0]) if self.sweep and self.select is None else [None]
        for lr in rates:
            for _, piece in self._pieces(lr):
                if piece.size:
                    file.write(memoryview(piece).cast("B"))


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


@dataclasses.dataclass
class RunState:
    """What `RunDirectory.inspect` found in a run folder."""

    checkpoint: dict[str, np.ndarray] | None  # None: no checkpoint
    summary: dict[str, Any] | None  # None: no summary.json
    chunks_done: int  # chunks the checkpoint counts
    steps_done: int  # steps the checkpoint counts
    finished: bool  # summary.json says complete and results.npz is readable

    @property
    def has_run(self) -> bool:
        return self.checkpoint is not None or self.summary is not None

    @property
    def fingerprint(self) -> str | None:
        """The configuration fingerprint recorded in the folder (checkpoint or summary)."""
        if self.checkpoint is not None and "fingerprint" in self.checkpoint:
            return str(self.checkpoint["fingerprint"])
        if self.summary is not None and "fingerprint" in self.summary:
            return str(self.summary["fingerprint"])
        return None


#: Locks this process holds: resolved folder → [open lock file, depth].
_HELD_LOCKS: dict[Path, list] = {}


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

    # ------------------------------------------------------------- the lock

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for this process (creating it): an exclusive, non-blocking
        ``flock`` on ``.lock``, which holds this process's id while it runs; the system
        drops the lock when the process ends, however it ends. Re-entrant within one
        process. `RunInUseError` if another process holds it."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no lock
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        held = _HELD_LOCKS.get(key)
        if held is not None:
            held[1] += 1
            try:
                yield
            finally:
                held[1] -= 1
            return
        file = open(self.path / LOCK, "a+")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            file.seek(0)
            pid = file.read().strip()
            file.close()
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunInUseError(
                f"{self.path} is in use by another flows run "
                f"(pid {pid if pid.isdigit() else 'unknown'}); wait for it to end, or "
                "choose another --out"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        _HELD_LOCKS[key] = [file, 1]
        try:
            yield
        finally:
            _HELD_LOCKS.pop(key, None)
            with contextlib.suppress(OSError):
                file.truncate(0)
            file.close()  # releases the lock

    # ------------------------------------------------------------ integrity

    def inspect(self) -> RunState:
        """Check that the run in the folder can be resumed or read, before anything is
        computed: the checkpoint and summary readable, the chunks the checkpoint counts
        present and readable (not needed once ``results.npz`` is complete), and any other
        chunk file of those readable. Cheap: only zip directories and array headers are
        read. `CorruptRunError`, naming the file, otherwise."""
        checkpoint = self.read_checkpoint()
        summary = None
        if self.summary_path.exists():
            summary = load_json(self.summary_path)
            if not isinstance(summary, dict):
                raise CorruptRunError(f"{self.summary_path}: not a run summary (a JSON object)")
        finished = bool(summary and summary.get("complete"))
        if finished:
            check_npz(self.results_path)
        chunks_done = steps_done = 0
        if checkpoint is not None:
            try:
                chunks_done = int(checkpoint.get("chunks_done", 0))
                steps_done = int(checkpoint.get("steps_done", 0))
            except (TypeError, ValueError) as err:
                raise CorruptRunError(f"{self.checkpoint_path}: unreadable: {err}") from None
        files = self.chunk_files()
        for index, path in sorted(files.items()):
            if index < chunks_done:
                check_npz(path)
        if not finished:
            for index in range(chunks_done):
                if index not in files:
                    raise CorruptRunError(
                        f"{self.chunk_path(index)}: missing (the run directory is incomplete)"
                    )
        return RunState(checkpoint, summary, chunks_done, steps_done, finished)

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

    def chunk_files(self) -> dict[int, Path]:
        """The chunk files present, by index."""
        folder = self.path / CHUNKS
        if not folder.is_dir():
            return {}
        return {int(p.stem): p for p in folder.glob("*.npz") if p.stem.isdigit()}

    def chunk_bytes(self) -> int:
        """The bytes the chunk files take."""
        return sum(p.stat().st_size for p in self.chunk_files().values())

    def remove_chunks_from(self, index: int) -> None:
        """Delete chunk files ``index, index+1, …`` (left by a run killed mid-chunk)."""
        for number, path in self.chunk_files().items():
            if number >= index:
                path.unlink(missing_ok=True)

    def remove_temporary_files(self) -> None:
        """Delete the temporary files of writes that a dead process left half done."""
        for folder in (self.path, self.path / CHUNKS):
            if not folder.is_dir():
                continue
            for path in folder.glob(".*.tmp"):
                pid = path.name[:-len(".tmp")].rpartition(".")[2]
                if pid.isdigit() and not _alive(int(pid)):
                    path.unlink(missing_ok=True)

    def chunked_arrays(self, rows: list[int], *, sweep: bool,
                       save_every: int) -> dict[str, ChunkedArray]:
        """The arrays of chunks ``0 … len(rows)−1`` (``rows``: their saved rows) joined
        along the step axis, keyed like the chunks, as `ChunkedArray` (nothing is read
        but the chunks' directories); a sweep's are ``(L, T, …)``. A series that stops
        early (a method that stopped) is NaN (a float) after, ``steps`` the saved steps."""
        infos = [check_npz(self.chunk_path(i)) for i in range(len(rows))]
        out = {}
        for key, (shape, dtype) in (infos[0] if infos else {}).items():
            pieces = [self.chunk_path(i) if key in info else None for i, info in
                      enumerate(infos)]
            steps = key.partition("/")[2] == "steps"
            if None in pieces and not steps and not np.issubdtype(dtype, np.inexact):
                dtype = np.dtype(np.float64)
            out[key] = ChunkedArray(pieces, key, rows, shape[1:], dtype, sweep=sweep,
                                    fill_steps=save_every if steps else None)
        return out

    def results_arrays(self) -> dict[str, ChunkedArray]:
        """The arrays of ``results.npz`` with a step axis, as `ChunkedArray` (read when
        asked for)."""
        return {
            key: ChunkedArray([self.results_path], key, [shape[0]], shape[1:], dtype)
            for key, (shape, dtype) in check_npz(self.results_path).items() if len(shape)
        }

    def remove_if_unused(self) -> None:
        """Remove the folder if it holds nothing but its lock (and an empty ``chunks/``):
        made for a run that was refused."""
        with contextlib.suppress(OSError):
            if all(p.name == LOCK or (p.is_dir() and not any(p.iterdir()))
                   for p in self.path.iterdir()):
                for p in self.path.iterdir():
                    if p.is_dir():
                        p.rmdir()
                    else:
                        p.unlink()
                self.path.rmdir()

    def clear_chunks(self) -> None:
        """Delete every chunk file (once ``results.npz`` holds them); the folder stays."""
        self.remove_chunks_from(0)

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    return True
