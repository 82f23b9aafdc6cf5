"""Losses evaluated over chunks of the data (`mean_over_chunks`): the same function and the
same derivatives as the whole batch at once, to rounding, with the memory of one chunk."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows.linalg import hvp
from flows.problems import cnn, digits, from_equinox, mean_over_chunks, mlp, mse


@pytest.fixture(scope="module")
def image_digits():
    return digits(n=103, flatten=False, standardize=False)


def _third(problem, w, v):
    """∇³L[v, v]: the derivative of w ↦ H(w)v along v."""
    return jax.jvp(lambda u: hvp(problem.flat_loss, u, v), (w,), (v,))[1]


_derivatives = jax.jit(
    lambda problem, w, v: (
        problem.flat_loss(w),
        jax.grad(problem.flat_loss)(w),
        hvp(problem.flat_loss, w, v),
        _third(problem, w, v),
    )
)


@pytest.mark.parametrize("chunk_size", [1, 10, 25, 103, 500])
def test_chunked_mse_is_the_mean_over_all_examples(chunk_size):
    rng = np.random.default_rng(0)
    outputs, targets = rng.normal(size=(103, 4)), rng.normal(size=(103, 4))
    expected = 0.5 * np.mean(np.sum((outputs - targets) ** 2, axis=1))  # by hand, in NumPy
    value = jax.jit(mean_over_chunks, static_argnums=(0, 3))(
        mse, jnp.asarray(outputs), jnp.asarray(targets), chunk_size
    )
    np.testing.assert_allclose(float(value), expected, rtol=1e-14)


@pytest.mark.parametrize("data_chunk", [16, 103])
def test_chunked_cnn_has_the_derivatives_of_the_full_batch(image_digits, data_chunk):
    # 103 = 6 chunks of 16 and a remainder of 7; 103 is one chunk, the plain loss.
    full = cnn(image_digits, channels=(4, 8))
    chunked = cnn(image_digits, channels=(4, 8), data_chunk=data_chunk)
    w = full.w0 + 0.1 * jax.random.normal(jax.random.key(0), full.w0.shape, full.w0.dtype)
    v = jax.random.normal(jax.random.key(1), w.shape, w.dtype)
    for got, want in zip(_derivatives(chunked, w, v), _derivatives(full, w, v), strict=True):
        scale = float(jnp.max(jnp.abs(want)))
        assert float(jnp.max(jnp.abs(got - want))) <= 1e-12 * scale


def test_chunked_loss_at_complex_parameters(image_digits):
    # The principal flow evaluates the loss at complex parameters.
    full = mlp(image_digits, widths=(8,))
    chunked = mlp(image_digits, widths=(8,), data_chunk=20)
    w = full.w0 + 0.05j * jax.random.normal(jax.random.key(2), full.w0.shape, full.w0.dtype)
    loss = jax.jit(lambda problem, w: problem.flat_loss(w))
    got, want = loss(chunked, w), loss(full, w)
    assert abs(complex(got) - complex(want)) <= 1e-13 * abs(complex(want))
    assert abs(float(jnp.imag(want))) > 1e-6  # the imaginary part is really there


def test_equinox_model_in_chunks_is_the_same_problem(image_digits):
    model = eqx.nn.MLP(64, 10, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
    data = (np.asarray(image_digits.x).reshape(103, -1), np.asarray(image_digits.y))
    full = from_equinox(model, data, dtype=jnp.float64)
    chunked = from_equinox(model, data, dtype=jnp.float64, data_chunk=30)
    v = jax.random.normal(jax.random.key(3), full.w0.shape, full.w0.dtype)
    for got, want in zip(
        _derivatives(chunked, full.w0, v), _derivatives(full, full.w0, v), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-14)


def test_chunked_loss_in_a_sweep_is_the_whole_batch_sweep(image_digits):
    # lax.map inside the vmap over learning rates: the same GD runs as the plain loss.
    full = mlp(image_digits, widths=(8,))
    chunked = mlp(image_digits, widths=(8,), data_chunk=16)
    runs = [flows.sweep(p, "gd", lrs=[0.02, 0.1], steps=30) for p in (chunked, full)]
    got, want = np.asarray(runs[0].params), np.asarray(runs[1].params)
    assert np.all(np.isfinite(want))
    assert np.max(np.abs(got - want)) <= 1e-10 * np.max(np.abs(want))  # rounding apart
    assert not np.allclose(np.asarray(runs[1].params[0, -1]), np.asarray(runs[1].params[1, -1]))


def test_chunks_bound_the_memory_of_the_third_derivative():
    # XLA's own buffer assignment for ∇³L[v, v]: the whole batch's activations (and their
    # tangents and cotangents) against one chunk's, 1600 examples against 100.
    data = digits(n=1600)

    def temp_bytes(data_chunk):
        problem = mlp(data, widths=(64, 64), data_chunk=data_chunk)
        compiled = jax.jit(_third).lower(problem, problem.w0, problem.w0).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    full, chunked = temp_bytes(None), temp_bytes(100)
    assert chunked < full / 4, (full, chunked)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "16"])
def test_bad_data_chunk_is_named(image_digits, bad):
    with pytest.raises(ValueError, match="data_chunk"):
        cnn(image_digits, channels=(4,), data_chunk=bad)
    with pytest.raises(ValueError, match="data_chunk"):
        from_equinox(eqx.nn.Linear(64, 10, key=jax.random.key(0)), (np.ones((5, 64)),
                     np.ones((5, 10))), data_chunk=bad)
