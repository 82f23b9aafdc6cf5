"""Small data sets for the network problems, loaded without network access.

Arrays come back in the default float dtype (float32 unless x64 is enabled), with
one-hot targets for classification. Inputs are NumPy-processed at the user boundary,
where bad input raises `FileNotFoundError` or `ValueError` naming the path and the problem.
"""

from __future__ import annotations

import numbers
import pickle
from collections.abc import Iterable, Sequence
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = [
    "CIFAR10_CLASSES",
    "Dataset",
    "chebyshev_data",
    "cifar10",
    "digits",
    "synthetic_classification",
    "synthetic_regression",
]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class Dataset(eqx.Module):
    """Inputs and targets of a supervised problem.

    Attributes:
        x: inputs, ``(n, d)`` or images ``(n, H, W, C)`` (NHWC).
        y: targets, ``(n, d_out)``; one-hot ``(n, num_classes)`` for classification.
        num_classes: number of classes, or None for regression.
        name: a label for results and plots.
    """

    x: Float[Array, "n ..."]
    y: Float[Array, "n d_out"]
    num_classes: int | None = eqx.field(static=True, default=None)
    name: str = eqx.field(static=True, default="data")

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def labels(self) -> Array:
        """Integer class labels (argmax of the one-hot targets)."""
        if self.num_classes is None:
            raise ValueError(f"data set {self.name!r} is a regression data set (no labels)")
        return jnp.argmax(self.y, axis=-1)


def _float(array) -> Array:
    return jnp.asarray(array, dtype=jnp.result_type(float))


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes)[labels]


def check_size(value, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int``: an integer (not a bool, not a float), at least ``minimum``;
    else a `ValueError` that names the argument ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer ≥ {minimum}"
        )
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_sizes(values: Iterable[int], name: str, minimum: int = 1) -> tuple[int, ...]:
    """A sequence of sizes (hidden widths, channels) as ints, each checked as `check_size`."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a list of positive integers, got {values!r}")
    values = list(values)
    try:
        return tuple(check_size(v, name, minimum) for v in values)
    except ValueError:
        what = "positive integers" if minimum == 1 else f"integers ≥ {minimum}"
        raise ValueError(f"{name} must be {what}, got {values!r}") from None


def _check_n(n: int | None, available: int, what: str) -> int:
    if n is None:
        return available
    n = check_size(n, "n")
    if n > available:
        raise ValueError(f"{what}: only {available} examples available, but n={n} requested")
    return int(n)


def _select_classes(
    labels: np.ndarray, classes: Sequence[int] | None, num_classes: int, names=None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Indices of the examples in ``classes`` and their labels relabelled 0..k-1.

    Classes are kept in the order given. Names are accepted when ``names`` is given.
    """
    if classes is None:
        return np.arange(labels.shape[0]), labels, num_classes
    wanted = []
    for c in classes:
        if isinstance(c, str):
            if names is None or c not in names:
                raise ValueError(f"unknown class {c!r}; valid classes are 0..{num_classes - 1}")
            c = names.index(c)
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not (0 <= c < num_classes):
            raise ValueError(f"unknown class {c!r}; valid classes are 0..{num_classes - 1}")
        wanted.append(int(c))
    if not wanted or len(set(wanted)) != len(wanted):
        raise ValueError(f"classes must be a non-empty list without repeats, got {classes!r}")
    relabel = np.full(num_classes, -1)
    relabel[wanted] = np.arange(len(wanted))
    new = relabel[labels]
    index = np.flatnonzero(new >= 0)
    return index, new[index], len(wanted)


def digits(
    n: int | None = None,
    classes: Sequence[int] | None = None,
    flatten: bool = True,
    standardize: bool = True,
) -> Dataset:
    """The 8×8 handwritten digits bundled with scikit-learn (1797 images, 10 classes).

    Args:
        n: keep the first ``n`` examples (after the class selection); all by default.
        classes: keep only these digits, relabelled 0..k-1 in the order given.
        flatten: inputs ``(n, 64)`` if True, else NHWC images ``(n, 8, 8, 1)``.
        standardize: z-score every pixel over the selected examples (constant pixels are
            only centred); otherwise pixels are scaled to [0, 1].

    Targets are one-hot, ``(n, k)``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x_all = np.asarray(bunch.data, dtype=np.float64)
    index, labels, k = _select_classes(np.asarray(bunch.target), classes, 10)
    count = _check_n(n, index.size, "digits")
    index, labels = index[:count], labels[:count]
    x = x_all[index]
    if standardize:
        std = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)
    else:
        x = x / 16.0
    if not flatten:
        x = x.reshape(-1, 8, 8, 1)
    return Dataset(_float(x), _float(_one_hot(labels, k)), num_classes=k, name="digits")


def synthetic_regression(n: int = 128, d_in: int = 8, d_out: int = 1, seed: int = 0) -> Dataset:
    """Standard-normal inputs ``(n, d_in)`` and independent standard-normal targets
    ``(n, d_out)``, as in the central-flow reference case (Cohen, Damian, Talwalkar,
    Kolter and Lee, ICLR 2025). Drawn with ``numpy.random.default_rng(seed)``.
    """
    n, d_in, d_out = (check_size(v, k) for v, k in ((n, "n"), (d_in, "d_in"), (d_out, "d_out")))
    rng = np.random.default_rng(check_size(seed, "seed", minimum=0))
    x = rng.standard_normal((n, d_in))
    y = rng.standard_normal((n, d_out))
    return Dataset(_float(x), _float(y), num_classes=None, name="synthetic_regression")


def synthetic_classification(
    n: int = 128, d_in: int = 8, num_classes: int = 3, seed: int = 0
) -> Dataset:
    """Standard-normal inputs labelled by a random linear teacher,
    ``label_i = argmax_c (x_i W)_c`` with ``W`` standard normal ``(d_in, num_classes)``
    (linearly separable). One-hot targets. Drawn with ``numpy.random.default_rng(seed)``.
    """
    n, d_in = check_size(n, "n"), check_size(d_in, "d_in")
    num_classes = check_size(num_classes, "num_classes", minimum=2)
    rng = np.random.default_rng(check_size(seed, "seed", minimum=0))
    x = rng.standard_normal((n, d_in))
    teacher = rng.standard_normal((d_in, num_classes))
    labels = np.argmax(x @ teacher, axis=1)
    return Dataset(
        _float(x),
        _float(_one_hot(labels, num_classes)),
        num_classes=num_classes,
        name="synthetic_classification",
    )


def chebyshev_data(degree: int = 4, n: int = 20) -> Dataset:
    """``n`` equispaced points in [−1, 1] with targets ``T_degree(x)`` (Chebyshev polynomial
    of the first kind): the regression task of Cohen, Kaur, Li, Kolter and Talwalkar
    (ICLR 2021). Inputs and targets have shape ``(n, 1)``.
    """
    degree, n = check_size(degree, "degree", minimum=0), check_size(n, "n")
    x = np.linspace(-1.0, 1.0, n)
    y = np.polynomial.chebyshev.chebval(x, np.eye(degree + 1)[degree])
    return Dataset(_float(x[:, None]), _float(y[:, None]), num_classes=None, name="chebyshev")


# --------------------------------------------------------------------------- CIFAR-10


def _read_pickle_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 32, 32, 3)`` uint8 and labels ``(N,)`` from a python-pickle batch."""
    # Pickle files can run code when loaded: only point this at files you trust.
    try:
        with open(file, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as err:
        raise ValueError(
            f"{file}: cannot read a CIFAR-10 python batch (truncated or corrupt file?): "
            f"{type(err).__name__}: {err}"
        ) from err
    if not isinstance(batch, dict):
        raise ValueError(f"{file}: expected a pickled dict, got {type(batch).__name__}")

    def get(key: str):
        for k in (key.encode(), key):
            if k in batch:
                return batch[k]
        raise ValueError(f"{file}: missing key {key!r} (keys: {sorted(map(str, batch))})")

    data = np.asarray(get("data"))
    labels = np.asarray(get("labels"))
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{file}: 'data' must have shape (N, 3072), got {data.shape}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, _check_labels(labels, data.shape[0], file)


def _check_labels(labels: np.ndarray, count: int, file: Path) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 10:
        labels = np.argmax(labels, axis=1)
    if labels.shape != (count,):
        raise ValueError(f"{file}: expected {count} labels, got an array of shape {labels.shape}")
    integral = np.all(labels == np.round(labels))
    if labels.size and (not integral or labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{file}: labels must be integers in 0..9")
    return labels.astype(np.int64)


def _read_npz(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 32, 32, 3)`` and labels ``(N,)`` from an ``.npz`` with arrays x, y."""
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as err:
        raise ValueError(
            f"{file}: cannot read the .npz (truncated or corrupt file?): "
            f"{type(err).__name__}: {err}"
        ) from err
    if "x" not in arrays or "y" not in arrays:
        raise ValueError(
            f"{file}: the .npz must contain arrays 'x' and 'y', found {sorted(arrays)}"
        )
    x, y = arrays["x"], arrays["y"]
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise ValueError(f"{file}: 'x' must have shape (N, 32, 32, 3), got {x.shape}")
    return x, _check_labels(np.asarray(y), x.shape[0], file)


def _batch_files(path: Path) -> list[Path]:
    for folder in (path, path / "cifar-10-batches-py"):
        files = sorted(folder.glob("data_batch_*"))
        if files:
            return files
    raise FileNotFoundError(
        f"{path}: no CIFAR-10 batch files (data_batch_1, ...) in this directory "
        "or in its cifar-10-batches-py/ subdirectory"
    )


def cifar10(
    path: str | Path,
    n: int | None = 5000,
    classes: Sequence[int | str] | None = None,
    flatten: bool = True,
) -> Dataset:
    """The first ``n`` CIFAR-10 training images from a local copy (no download).

    Cohen, Kaur, Li, Kolter and Talwalkar (ICLR 2021) train on the first 5000 images.

    Args:
        path: one of
            - a python-pickle batch file (``data_batch_1``: a dict with ``b'data'``,
              uint8 ``(N, 3072)`` channel-major, and ``b'labels'``);
            - a directory holding such batches (e.g. ``cifar-10-batches-py``, or its
              parent), read in order ``data_batch_1, data_batch_2, ...``;
            - an ``.npz`` with ``x`` ``(N, 32, 32, 3)`` (uint8 in 0..255, or floats in [0, 1])
              and ``y`` integer labels ``(N,)`` (or one-hot ``(N, 10)``).
            Pickles can execute code when loaded: only use files you trust.
        n: number of examples to keep (after the class selection); None keeps all.
        classes: keep only these classes (indices or names such as ``"cat"``), relabelled
            0..k-1 in the order given.
        flatten: inputs ``(n, 3072)`` (NHWC order) if True, else images ``(n, 32, 32, 3)``.

    Pixels are scaled to [0, 1] and centred by the per-channel mean of the kept images;
    targets are one-hot.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: CIFAR-10 data not found (no such file or directory)")
    if path.is_dir():
        sources = _batch_files(path)
        reader = _read_pickle_batch
    elif path.suffix == ".npz":
        sources, reader = [path], _read_npz
    else:
        sources, reader = [path], _read_pickle_batch

    images, labels, k, total = [], [], 10, 0
    for file in sources:
        x, y = reader(file)
        index, y, k = _select_classes(y, classes, 10, names=CIFAR10_CLASSES)
        images.append(x[index])
        labels.append(y)
        total += index.size
        if n is not None and total >= n:
            break
    x = np.concatenate(images)
    y = np.concatenate(labels)
    if x.shape[0] == 0:
        raise ValueError(f"{path}: no examples of classes {classes!r}")
    count = _check_n(n, x.shape[0], str(path))
    x, y = x[:count], y[:count]

    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float64) / 255.0
    else:
        x = x.astype(np.float64)
        if x.max() > 1.0:
            raise ValueError(
                f"{path}: float images must lie in [0, 1] (max is {x.max():g}); "
                "store uint8 pixels 0..255 instead"
            )
    x = x - x.mean(axis=(0, 1, 2))
    if flatten:
        x = x.reshape(x.shape[0], -1)
    return Dataset(_float(x), _float(_one_hot(y, k)), num_classes=k, name="cifar10")
