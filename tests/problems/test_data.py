"""Data sets: the bundled digits, synthetic data, and CIFAR-10 from fake local files."""

import pickle

import numpy as np
import pytest
from sklearn.datasets import load_digits

from flows.problems import cifar10, digits, synthetic_classification, synthetic_regression

# ------------------------------------------------------------------------------ digits


def test_digits_full():
    data = digits()
    assert data.x.shape == (1797, 64)
    assert data.y.shape == (1797, 10)
    assert data.num_classes == 10
    y = np.asarray(data.y)
    np.testing.assert_array_equal(y.sum(axis=1), 1.0)
    np.testing.assert_array_equal(np.argmax(y, axis=1), load_digits().target)
    np.testing.assert_allclose(np.asarray(data.x).mean(axis=0), 0.0, atol=1e-10)


def test_digits_options():
    images = digits(n=20, flatten=False, standardize=False)
    assert images.x.shape == (20, 8, 8, 1)
    reference = load_digits()
    np.testing.assert_allclose(np.asarray(images.x)[:, :, :, 0], reference.images[:20] / 16.0)


def test_digits_class_subset():
    data = digits(classes=[7, 3], n=30)
    target = load_digits().target
    chosen = target[np.isin(target, [3, 7])][:30]
    assert data.x.shape == (30, 64) and data.y.shape == (30, 2)
    assert data.num_classes == 2
    np.testing.assert_array_equal(np.asarray(data.labels), np.where(chosen == 7, 0, 1))
    with pytest.raises(ValueError, match="unknown class"):
        digits(classes=[3, 11])
    with pytest.raises(ValueError, match="only"):
        digits(n=5000)


def test_synthetic_data():
    reg = synthetic_regression(n=50, d_in=4, d_out=3, seed=7)
    assert reg.x.shape == (50, 4) and reg.y.shape == (50, 3) and reg.num_classes is None
    np.testing.assert_array_equal(reg.x, synthetic_regression(n=50, d_in=4, d_out=3, seed=7).x)
    assert not np.allclose(reg.x, synthetic_regression(n=50, d_in=4, d_out=3, seed=8).x)
    cls = synthetic_classification(n=200, d_in=5, num_classes=4, seed=0)
    assert cls.y.shape == (200, 4) and cls.num_classes == 4
    np.testing.assert_array_equal(np.asarray(cls.y).sum(axis=1), 1.0)
    assert set(np.asarray(cls.labels).tolist()) == {0, 1, 2, 3}


# ---------------------------------------------------------------------------- CIFAR-10


def _fake_images(count, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(count) % 10
    return images, labels


def _write_batch(path, images, labels):
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # channel-major rows
    with open(path, "wb") as f:
        pickle.dump({b"data": flat, b"labels": list(labels)}, f)


def _expected(images):
    x = images.astype(np.float64) / 255.0
    return x - x.mean(axis=(0, 1, 2))


def test_cifar10_pickle_batch(tmp_path):
    images, labels = _fake_images(12)
    file = tmp_path / "data_batch_1"
    _write_batch(file, images, labels)
    data = cifar10(file, n=None, flatten=False)
    assert data.x.shape == (12, 32, 32, 3) and data.y.shape == (12, 10)
    np.testing.assert_allclose(data.x, _expected(images), atol=1e-12)
    np.testing.assert_allclose(np.asarray(data.x).mean(axis=(0, 1, 2)), 0.0, atol=1e-12)
    np.testing.assert_array_equal(data.labels, labels)
    flat = cifar10(file, n=5)
    assert flat.x.shape == (5, 3072)
    np.testing.assert_allclose(flat.x, _expected(images[:5]).reshape(5, -1), atol=1e-12)


def test_cifar10_directory_and_classes(tmp_path):
    images, labels = _fake_images(20)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    _write_batch(folder / "data_batch_1", images[:10], labels[:10])
    _write_batch(folder / "data_batch_2", images[10:], labels[10:])
    data = cifar10(tmp_path, n=15, flatten=False)  # the parent folder works too
    np.testing.assert_allclose(data.x, _expected(images[:15]), atol=1e-12)
    subset = cifar10(folder, n=None, classes=["cat", 1], flatten=False)
    keep = np.isin(labels, [3, 1])
    np.testing.assert_allclose(subset.x, _expected(images[keep]), atol=1e-12)
    np.testing.assert_array_equal(subset.labels, np.where(labels[keep] == 3, 0, 1))
    assert subset.num_classes == 2
    with pytest.raises(ValueError, match="unknown class"):
        cifar10(folder, classes=["dragon"])


def test_cifar10_npz_matches_pickle(tmp_path):
    images, labels = _fake_images(8, seed=3)
    _write_batch(tmp_path / "data_batch_1", images, labels)
    np.savez(tmp_path / "small.npz", x=images, y=labels)
    from_npz = cifar10(tmp_path / "small.npz", n=None)
    from_pickle = cifar10(tmp_path / "data_batch_1", n=None)
    np.testing.assert_allclose(from_npz.x, from_pickle.x, atol=1e-12)
    np.testing.assert_array_equal(from_npz.y, from_pickle.y)


def test_cifar10_bad_input(tmp_path):
    images, labels = _fake_images(10)
    good = tmp_path / "data_batch_1"
    _write_batch(good, images, labels)

    truncated = tmp_path / "truncated_batch"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated") as info:
        cifar10(truncated)
    assert str(truncated) in str(info.value)

    np.savez(tmp_path / "full.npz", x=images, y=labels)
    broken = tmp_path / "broken.npz"
    broken.write_bytes((tmp_path / "full.npz").read_bytes()[:3000])
    with pytest.raises(ValueError, match="truncated"):
        cifar10(broken)

    with pytest.raises(FileNotFoundError, match="missing_file"):
        cifar10(tmp_path / "missing_file")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="data_batch"):
        cifar10(empty)

    wrong_shape = tmp_path / "wrong_shape"
    with open(wrong_shape, "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, f)
    with pytest.raises(ValueError, match="3072"):
        cifar10(wrong_shape)

    bad_labels = tmp_path / "bad_labels"
    _write_batch(bad_labels, images[:2], [0, 12])
    with pytest.raises(ValueError, match="0..9"):
        cifar10(bad_labels)

    np.savez(tmp_path / "wrong_keys.npz", images=images, labels=labels)
    with pytest.raises(ValueError, match="'x' and 'y'"):
        cifar10(tmp_path / "wrong_keys.npz")

    with pytest.raises(ValueError, match="only 10 examples"):
        cifar10(good, n=5000)
