"""Neural-network problems in plain JAX: parameters are lists/dicts of arrays.

Every loss is ``jax.tree_util.Partial(fn, x, y)`` with a module-level ``fn``, so the data
are pytree leaves of the `Problem` (traced, not baked into compiled code), and problems
with the same architecture share compiled functions. Weights are initialized with
``jax.random.key(seed)``: LeCun normal (variance 1/fan_in), He normal (2/fan_in) for ReLU;
biases start at zero. Parameters are in the default float dtype.

With tanh, swish, gelu (tanh approximation) or identity activations and the squared-error
losses, the loss is holomorphic and can be evaluated at complex parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Inexact, PyTree, Scalar

from flows.problem import Problem
from flows.problems.data import (
    Dataset,
    chebyshev_data,
    check_size,
    check_sizes,
    synthetic_regression,
)
from flows.problems.losses import cross_entropy, mean_over_chunks, mean_squared_error, mse

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "chebyshev",
    "cnn",
    "deep_linear",
    "mlp",
    "reference_mlp",
]


def _gelu(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=True)


def _identity(x: Array) -> Array:
    return x


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": _gelu,
    "swish": jax.nn.swish,
    "identity": _identity,
}

LOSSES: dict[str, Callable[[Array, Array], Scalar]] = {
    "mse": mse,
    "cross_entropy": cross_entropy,
    "mean_squared_error": mean_squared_error,
}


@dataclasses.dataclass(frozen=True)
class _Static:
    """A module-level function with static keyword arguments.

    Used as the function of a `jax.tree_util.Partial`: it compares by value, so two
    problems with the same architecture have equal tree structures (jit caches hit).
    """

    fn: Callable[..., Any]
    kwargs: tuple[tuple[str, Any], ...]

    def __call__(self, *args):
        return self.fn(*args, **dict(self.kwargs))


def _bind(fn: Callable[..., Any], **kwargs) -> _Static:
    return _Static(fn, tuple(sorted(kwargs.items())))


def _check_choice(value: str, options: Sequence[str], what: str) -> None:
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}; choose one of {sorted(options)}")


def _float_dtype():
    return jnp.result_type(float)


def _gain(activation: str) -> float:
    return 2.0 if activation == "relu" else 1.0


_BLOCK = 2**14


@functools.partial(jax.jit, static_argnums=2)
def _normal_block(key: Array, index: Array, dtype) -> Array:
    return jax.random.normal(jax.random.fold_in(key, index), (_BLOCK,), dtype=dtype)


def _standard_normal(seed: int, size: int) -> np.ndarray:
    """``size`` standard normals from ``jax.random.key(seed)``, drawn in fixed-size blocks
    (block ``i`` from ``fold_in(key, i)``) so that one compilation serves every network."""
    key, dtype = jax.random.key(seed), _float_dtype()
    count = -(-size // _BLOCK)
    blocks = [np.asarray(_normal_block(key, np.uint32(i), dtype)) for i in range(count)]
    return np.concatenate(blocks)[:size] if blocks else np.zeros(0)


def _init_weights(seed: int, specs: Sequence[tuple[tuple[int, ...], int, float]]) -> list[Array]:
    """Normal weights of standard deviation ``sqrt(gain / fan_in)`` for each
    ``(shape, fan_in, gain)``, cut in order from one stream of normals (`_standard_normal`)."""
    sizes = [math.prod(shape) for shape, _, _ in specs]
    dtype = _float_dtype()
    draw = _standard_normal(seed, sum(sizes))
    weights, offset = [], 0
    for (shape, fan_in, gain), size in zip(specs, sizes, strict=True):
        chunk = draw[offset : offset + size].reshape(shape)
        weights.append(jnp.asarray(math.sqrt(gain / fan_in) * chunk, dtype=dtype))
        offset += size
    return weights


def _zeros(size: int) -> Array:
    return jnp.asarray(np.zeros(size), dtype=_float_dtype())


# ------------------------------------------------------------------------------- MLP


def _mlp_apply(
    x: Inexact[Array, "n d_in"], params: list[dict[str, Array]], *, activation: str
) -> Inexact[Array, "n d_out"]:
    act = ACTIVATIONS[activation]
    h = x
    for i, layer in enumerate(params):
        h = jnp.dot(h, layer["w"])
        if "b" in layer:
            h = h + layer["b"]
        if i < len(params) - 1:
            h = act(h)
    return h


def _supervised_loss(
    x: Array,
    y: Array,
    params: PyTree,
    *,
    model: Callable[..., Array],
    loss: str,
    data_chunk: int | None = None,
) -> Scalar:
    def batch_loss(inputs, targets):
        return LOSSES[loss](model(inputs, params), targets)

    return mean_over_chunks(batch_loss, x, y, data_chunk)


def check_data_chunk(data_chunk: int | None) -> int | None:
    """``None`` or a positive integer (examples per chunk of the loss, `mean_over_chunks`)."""
    return None if data_chunk is None else check_size(data_chunk, "data_chunk")


def _check_data(x: np.ndarray, y: np.ndarray, name: str) -> None:
    """A data set a network can train on: examples, input features and targets."""
    if x.ndim < 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"data {name!r}: expected inputs (n, ...) and targets (n, d_out), got shapes "
            f"{x.shape} and {y.shape}"
        )
    if x.shape[0] == 0 or y.shape[1] == 0 or 0 in x.shape[1:]:
        raise ValueError(
            f"data {name!r} is empty: {x.shape[0]} examples, inputs of shape {x.shape[1:]}, "
            f"{y.shape[1]} targets each"
        )


def _as_matrix(data: Dataset) -> tuple[Array, Array]:
    dtype = _float_dtype()
    x = np.asarray(data.x)
    y = np.asarray(data.y)
    if y.ndim == 1:
        y = y[:, None]
    _check_data(x, y, data.name)
    return jnp.asarray(x.reshape(x.shape[0], -1), dtype=dtype), jnp.asarray(y, dtype=dtype)


def _make(
    data_x, data_y, params, model: _Static, loss: str, name: str, data_chunk: int | None = None
) -> Problem:
    data_chunk = check_data_chunk(data_chunk)
    supervised = _bind(_supervised_loss, model=model, loss=loss, data_chunk=data_chunk)
    return Problem(
        loss=jax.tree_util.Partial(supervised, data_x, data_y),
        params0=params,
        loss_min=0.0,
        predict=jax.tree_util.Partial(model, data_x),
        name=name,
    )


def mlp(
    data: Dataset,
    widths: Sequence[int] = (200, 200),
    activation: str = "tanh",
    loss: str = "mse",
    seed: int = 0,
    bias: bool = True,
    data_chunk: int | None = None,
) -> Problem:
    """A fully connected network ``f(x) = W_L σ(… σ(W_1 x + b_1) …) + b_L`` on a data set.

    The loss is ``L = (1/n) Σ_i ℓ(f(x_i), y_i)`` with ``ℓ`` one of (see `flows.problems.losses`)
    ``"mse"`` (½‖f − y‖², Cohen, Kaur, Li, Kolter and Talwalkar, ICLR 2021, whose
    edge-of-stability networks are tanh MLPs 200-200 with this loss),
    ``"cross_entropy"`` or ``"mean_squared_error"``.

    Args:
        data: inputs ``(n, ...)`` (flattened to ``(n, d_in)``) and targets ``(n, d_out)``.
        widths: hidden widths; the layer sizes are ``[d_in, *widths, d_out]``.
        activation: ``"tanh"``, ``"relu"``, ``"gelu"``, ``"swish"`` or ``"identity"``.
        loss: ``"mse"``, ``"cross_entropy"`` or ``"mean_squared_error"``.
        seed: seeds the initialization.
        bias: whether layers have biases.
        data_chunk: evaluate the loss this many examples at a time, each chunk
            rematerialised in derivatives (`flows.problems.mean_over_chunks`): the same
            loss, with the memory of its derivatives bounded by one chunk's activations
            instead of all ``n`` (default: the whole batch at once).

    Parameters are a list of ``{"w": (d_i, d_{i+1}), "b": (d_{i+1},)}``; the number of
    parameters is ``Σ_i d_i d_{i+1} (+ d_{i+1} with biases)``.
    """
    _check_choice(activation, ACTIVATIONS, "activation")
    _check_choice(loss, LOSSES, "loss")
    widths = check_sizes(widths, "widths")
    seed = check_size(seed, "seed", minimum=0)
    x, y = _as_matrix(data)
    sizes = [x.shape[1], *widths, y.shape[1]]
    pairs = list(zip(sizes[:-1], sizes[1:]))
    weights = _init_weights(seed, [((a, b), a, _gain(activation)) for a, b in pairs])
    params = []
    for w, (_, fan_out) in zip(weights, pairs, strict=True):
        params.append({"w": w, "b": _zeros(fan_out)} if bias else {"w": w})
    model = _bind(_mlp_apply, activation=activation)
    name = f"mlp-{activation}-{'x'.join(map(str, widths)) or 'linear'}-{data.name}"
    return _make(x, y, params, model, loss, name, data_chunk)


def deep_linear(
    data: Dataset, depth: int = 3, width: int = 16, seed: int = 0, loss: str = "mse"
) -> Problem:
    """A deep linear network ``f(x) = W_depth ⋯ W_1 x`` (no biases), with ``depth`` weight
    matrices of inner width ``width``; one of the edge-of-stability setups of Cohen, Kaur,
    Li, Kolter and Talwalkar (ICLR 2021). Loss ``L = (1/n) Σ_i ½‖f(x_i) − y_i‖²`` by default.
    """
    depth, width = check_size(depth, "depth"), check_size(width, "width")
    return _rename(
        mlp(data, [width] * (depth - 1), activation="identity", loss=loss, seed=seed, bias=False),
        f"deep_linear-{depth}x{width}-{data.name}",
    )


def _rename(problem: Problem, name: str) -> Problem:
    return Problem(problem.loss, problem.params0, problem.loss_min, problem.predict, name)


def chebyshev(
    degree: int = 4,
    n: int = 20,
    width: int = 100,
    activation: str = "tanh",
    seed: int = 0,
) -> Problem:
    """Chebyshev regression of Cohen, Kaur, Li, Kolter and Talwalkar (ICLR 2021): a
    1-``width``-1 network fits ``T_degree`` on ``n`` equispaced points in [−1, 1] with
    ``L = (1/n) Σ_i ½ (f(x_i) − T_degree(x_i))²``. Defaults: degree 4, 20 points, 1-100-1 tanh.
    """
    width = check_size(width, "width")
    data = chebyshev_data(degree=degree, n=n)
    return _rename(
        mlp(data, [width], activation=activation, loss="mse", seed=seed),
        f"chebyshev-{degree}-{activation}{width}",
    )


def reference_mlp(seed: int = 0, *, draw: str = "jax") -> Problem:
    """The central-flow reference case of Cohen, Damian, Talwalkar, Kolter and Lee,
    "Understanding optimization in deep learning with central flows" (ICLR 2025):
    an 8-16-16-1 swish MLP (with biases) on 128 standard-normal inputs in R⁸ with
    standard-normal scalar targets, ``L = (1/128) Σ_i (f(x_i) − y_i)²`` (plain mean squared
    error).

    Args:
        seed: the random seed.
        draw: how the instance is drawn.
            ``"jax"`` (default): the instance of the authors' published JAX example, drawn
            in float32 from one key stream (``stream(i) = fold_in(key(seed), i)``): inputs
            from stream 0, targets from stream 1, then each layer's weights from stream
            ``2 + 2l`` by LeCun truncated normal (`jax.nn.initializers.lecun_normal`),
            biases zero (stream ``3 + 2l`` would draw them). The reference figures of the
            central flow (1.4% final distance to GD) are measured on this instance.
            ``"numpy"``: data from ``numpy.random.default_rng(seed)`` and LeCun normal
            weights from this module's stream, as every other network here; some of the
            benchmarks' recorded figures are measured on it.
    """
    _check_choice(draw, ("jax", "numpy"), "draw")
    seed = check_size(seed, "seed", minimum=0)
    if draw == "numpy":
        data = synthetic_regression(n=128, d_in=8, d_out=1, seed=seed)
        return _rename(
            mlp(data, [16, 16], activation="swish", loss="mean_squared_error", seed=seed),
            "reference_mlp",
        )
    key = jax.random.key(seed)

    def stream(i: int) -> Array:
        return jax.random.fold_in(key, i)

    x = jax.random.normal(stream(0), (128, 8), jnp.float32)
    y = jax.random.normal(stream(1), (128, 1), jnp.float32)
    init = jax.nn.initializers.lecun_normal()
    sizes = [8, 16, 16, 1]
    params = [
        {"w": init(stream(2 + 2 * i), (a, b), jnp.float32), "b": jnp.zeros(b, jnp.float32)}
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
    ]
    dtype = _float_dtype()
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    model = _bind(_mlp_apply, activation="swish")
    return _make(
        x.astype(dtype), y.astype(dtype), params, model, "mean_squared_error", "reference_mlp"
    )


# ------------------------------------------------------------------------------- CNN


def _avg_pool(h: Inexact[Array, "n H W C"]) -> Inexact[Array, "n H2 W2 C"]:
    """2×2 average pooling with stride 2 (an odd last row/column is dropped)."""
    n, height, width, c = h.shape
    h = h[:, : height // 2 * 2, : width // 2 * 2, :]
    return h.reshape(n, height // 2, 2, width // 2, 2, c).mean(axis=(2, 4))


def _real_conv(h: Array, w: Array) -> Array:
    """3×3 'SAME' convolution (NHWC, HWIO) as nine shifted matrix products.

    The same sum as ``lax.conv_general_dilated``, but every derivative of it, of any order,
    is slices, pads and matrix products. XLA's CPU backend runs the gradient of its own
    convolution ~36× slower inside a loop body (jax-ml/jax#12868) than outside it, and
    every step of a run is in a loop: on 200 8×8 digits with 64 and 160 channels, a GD step
    in a `lax.scan` takes 0.94 s with ``lax.conv_general_dilated`` and 33 ms with this.
    """
    height, width = h.shape[1:3]
    padded = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(
        padded[:, i : i + height, j : j + width, :] @ w[i, j] for i in range(3) for j in range(3)
    )


def _conv(h: Inexact[Array, "n H W C"], w: Inexact[Array, "3 3 C D"]) -> Inexact[Array, "n H W D"]:
    """3×3 'SAME' convolution; complex operands as real convolutions of their parts.

    XLA's complex convolution loses imaginary parts that are small relative to the real
    parts (it breaks complex-step derivatives), so the product is formed explicitly.
    """
    if not (jnp.iscomplexobj(h) or jnp.iscomplexobj(w)):
        return _real_conv(h, w)
    hr, wr = jnp.real(h), jnp.real(w)
    if not jnp.iscomplexobj(h):
        return jax.lax.complex(_real_conv(hr, wr), _real_conv(hr, jnp.imag(w)))
    hi, wi = jnp.imag(h), jnp.imag(w)
    real = _real_conv(hr, wr) - _real_conv(hi, wi)
    imag = _real_conv(hr, wi) + _real_conv(hi, wr)
    return jax.lax.complex(real, imag)


def _cnn_apply(
    x: Inexact[Array, "n H W C"], params: dict[str, Any], *, activation: str
) -> Inexact[Array, "n d_out"]:
    act = ACTIVATIONS[activation]
    h = x
    for layer in params["conv"]:
        h = _avg_pool(act(_conv(h, layer["w"]) + layer["b"]))
    h = h.reshape(h.shape[0], -1)
    return jnp.dot(h, params["dense"]["w"]) + params["dense"]["b"]


def _image_arrays(data: Dataset, model: str) -> tuple[np.ndarray, np.ndarray]:
    """NHWC images ``(n, H, W, C)`` (a missing channel axis added) and targets ``(n, d_out)``
    of ``data``, checked; a `ValueError` naming ``model`` for flat inputs."""
    x, y = np.asarray(data.x), np.asarray(data.y)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"{model} needs NHWC images, got inputs of shape {x.shape} "
            "(load the data with flatten=False)"
        )
    if y.ndim == 1:
        y = y[:, None]
    _check_data(x, y, data.name)
    return x, y


def cnn(
    data: Dataset,
    channels: Sequence[int] = (8, 16),
    activation: str = "tanh",
    loss: str = "mse",
    seed: int = 0,
    data_chunk: int | None = None,
) -> Problem:
    """A small convolutional network for NHWC images.

    Each block is a 3×3 'SAME' convolution with bias, the activation, and 2×2 average
    pooling; a dense layer maps the flattened features to ``d_out`` outputs. The loss is
    ``L = (1/n) Σ_i ℓ(f(x_i), y_i)`` as in `mlp` (Cohen, Kaur, Li, Kolter and Talwalkar,
    ICLR 2021, also study CNNs on CIFAR-10 with ½‖f − y‖²).

    Parameters: ``{"conv": [{"w": (3, 3, c_in, c_out), "b": (c_out,)}, ...],
    "dense": {"w": (H' W' c_last, d_out), "b": (d_out,)}}`` with ``H' = H // 2^len(channels)``.
    ``data_chunk`` as in `mlp`: on 1000 CIFAR-10-sized images (channels 32, 64, 64) the
    float64 central flow needs 2.8 GB in chunks of 100, and one 44.5 GB buffer at once.
    """
    _check_choice(activation, ACTIVATIONS, "activation")
    _check_choice(loss, LOSSES, "loss")
    channels = check_sizes(channels, "channels")
    seed = check_size(seed, "seed", minimum=0)
    dtype = _float_dtype()
    x, y = _image_arrays(data, "cnn")
    _, height, width, c_in = x.shape
    x, y = jnp.asarray(x, dtype=dtype), jnp.asarray(y, dtype=dtype)
    height, width = height // 2 ** len(channels), width // 2 ** len(channels)
    if height == 0 or width == 0:
        raise ValueError(f"images of shape {x.shape[1:3]} are too small for {len(channels)} pools")
    specs, c = [], c_in
    for c_out in channels:
        specs.append(((3, 3, c, c_out), 9 * c, _gain(activation)))
        c = c_out
    features = height * width * c
    specs.append(((features, y.shape[1]), features, 1.0))
    weights = _init_weights(seed, specs)
    conv = [{"w": w, "b": _zeros(w.shape[-1])} for w in weights[:-1]]
    dense = {"w": weights[-1], "b": _zeros(y.shape[1])}
    model = _bind(_cnn_apply, activation=activation)
    name = f"cnn-{activation}-{'x'.join(map(str, channels))}-{data.name}"
    return _make(x, y, {"conv": conv, "dense": dense}, model, loss, name, data_chunk)
