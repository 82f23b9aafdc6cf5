"""A small ResNet and a small vision transformer, built from equinox layers.

Both take one NHWC image ``(H, W, C)`` (the zoo's image layout) and are turned into
problems by `flows.problems.from_equinox`, so their losses are full-batch losses of the
parameter pytree like every other network in the zoo.

Everything in them is smooth, so the third derivatives a central flow needs are the true
ones: the norms are GroupNorm / LayerNorm with ε > 0 (per example, no running statistics:
batch norm's running averages would make the loss depend on the past), and the default
activation is gelu. With ``activation="relu"`` the third derivatives vanish almost
everywhere, which is correct but not what the papers' smooth networks have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from flows.problem import Problem
from flows.problems.adapters import from_equinox
from flows.problems.data import Dataset, check_size, check_sizes
from flows.problems.networks import ACTIVATIONS, LOSSES, _check_choice, _image_arrays

__all__ = ["ResNet", "VisionTransformer", "resnet", "vit"]


def _groups(channels: int, groups: int) -> int:
    """The largest divisor of ``channels`` not above ``groups``."""
    return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


class _ResidualBlock(eqx.Module):
    """Pre-activation residual block (He et al. 2016): x + conv(σ(norm(conv(σ(norm(x))))))."""

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    shortcut: eqx.nn.Conv2d | None
    activation: str = eqx.field(static=True)

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int, activation: str, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm1 = eqx.nn.GroupNorm(_groups(c_in, groups), c_in)
        self.conv1 = eqx.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, key=k1)
        self.norm2 = eqx.nn.GroupNorm(_groups(c_out, groups), c_out)
        self.conv2 = eqx.nn.Conv2d(c_out, c_out, 3, padding=1, key=k2)
        needs_projection = stride != 1 or c_in != c_out
        self.shortcut = (
            eqx.nn.Conv2d(c_in, c_out, 1, stride=stride, use_bias=False, key=k3)
            if needs_projection
            else None
        )
        self.activation = activation

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "c2 h2 w2"]:
        act = ACTIVATIONS[self.activation]
        h = self.conv1(act(self.norm1(x)))
        h = self.conv2(act(self.norm2(h)))
        return (x if self.shortcut is None else self.shortcut(x)) + h


class ResNet(eqx.Module):
    """A small pre-activation ResNet for NHWC images.

    A 3×3 stem convolution to ``widths[0]`` channels; per stage ``blocks`` residual blocks
    (the first of every stage after the first halves the resolution, with a 1×1 projection
    on the shortcut); GroupNorm, the activation, global average pooling and a dense head.
    """

    stem: eqx.nn.Conv2d
    blocks: tuple[_ResidualBlock, ...]
    norm: eqx.nn.GroupNorm
    head: eqx.nn.Linear
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_size: int,
        widths: Sequence[int] = (8, 16),
        blocks: int = 1,
        groups: int = 4,
        activation: str = "gelu",
        *,
        key: PRNGKeyArray,
    ):
        keys = iter(jax.random.split(key, 2 + len(widths) * blocks))
        self.stem = eqx.nn.Conv2d(in_channels, widths[0], 3, padding=1, key=next(keys))
        layers, c = [], widths[0]
        for stage, width in enumerate(widths):
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(_ResidualBlock(c, width, stride, groups, activation, key=next(keys)))
                c = width
        self.blocks = tuple(layers)
        self.norm = eqx.nn.GroupNorm(_groups(c, groups), c)
        self.head = eqx.nn.Linear(c, out_size, key=next(keys))
        self.activation = activation

    def __call__(self, image: Float[Array, "h w c"]) -> Float[Array, " d_out"]:
        h = self.stem(jnp.moveaxis(image, -1, 0))
        for block in self.blocks:
            h = block(h)
        h = ACTIVATIONS[self.activation](self.norm(h))
        return self.head(jnp.mean(h, axis=(1, 2)))


class _TransformerBlock(eqx.Module):
    """Pre-norm transformer block: h + attention(LN(h)), then h + MLP(LN(h))."""

    norm1: eqx.nn.LayerNorm
    attention: eqx.nn.MultiheadAttention
    norm2: eqx.nn.LayerNorm
    hidden: eqx.nn.Linear
    output: eqx.nn.Linear
    activation: str = eqx.field(static=True)

    def __init__(self, dim: int, heads: int, mlp_ratio: int, activation: str, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm1 = eqx.nn.LayerNorm(dim)
        self.attention = eqx.nn.MultiheadAttention(heads, dim, key=k1)
        self.norm2 = eqx.nn.LayerNorm(dim)
        self.hidden = eqx.nn.Linear(dim, mlp_ratio * dim, key=k2)
        self.output = eqx.nn.Linear(mlp_ratio * dim, dim, key=k3)
        self.activation = activation

    def __call__(self, tokens: Float[Array, "t d"]) -> Float[Array, "t d"]:
        normed = jax.vmap(self.norm1)(tokens)
        tokens = tokens + self.attention(normed, normed, normed)
        normed = jax.vmap(self.norm2)(tokens)
        mlp = jax.vmap(self.output)(ACTIVATIONS[self.activation](jax.vmap(self.hidden)(normed)))
        return tokens + mlp


class VisionTransformer(eqx.Module):
    """A small ViT (Dosovitskiy et al. 2021) for NHWC images.

    Non-overlapping ``patch × patch`` patches embedded by a strided convolution, a learned
    position embedding, ``depth`` pre-norm transformer blocks, a final LayerNorm, the mean
    over tokens (no class token) and a dense head.
    """

    embed: eqx.nn.Conv2d
    position: Float[Array, "t d"]
    blocks: tuple[_TransformerBlock, ...]
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        out_size: int,
        patch: int = 2,
        dim: int = 16,
        depth: int = 2,
        heads: int = 2,
        mlp_ratio: int = 2,
        activation: str = "gelu",
        *,
        key: PRNGKeyArray,
    ):
        height, width, channels = image_shape
        tokens = (height // patch) * (width // patch)
        keys = jax.random.split(key, 3 + depth)
        self.embed = eqx.nn.Conv2d(channels, dim, patch, stride=patch, key=keys[0])
        self.position = 0.02 * jax.random.normal(keys[1], (tokens, dim))
        self.blocks = tuple(
            _TransformerBlock(dim, heads, mlp_ratio, activation, key=k) for k in keys[3:]
        )
        self.norm = eqx.nn.LayerNorm(dim)
        self.head = eqx.nn.Linear(dim, out_size, key=keys[2])

    def __call__(self, image: Float[Array, "h w c"]) -> Float[Array, " d_out"]:
        patches = self.embed(jnp.moveaxis(image, -1, 0))  # (dim, h/p, w/p)
        tokens = patches.reshape(patches.shape[0], -1).T + self.position
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(jnp.mean(jax.vmap(self.norm)(tokens), axis=0))


def resnet(
    data: Dataset,
    widths: Sequence[int] = (8, 16),
    blocks: int = 1,
    groups: int = 4,
    activation: str = "gelu",
    loss: str = "mse",
    seed: int = 0,
    data_chunk: int | None = None,
) -> Problem:
    """A small pre-activation ResNet (`ResNet`) on NHWC images, full-batch ``loss``.

    ``widths``: channels per stage (each stage after the first halves the resolution);
    ``blocks``: residual blocks per stage; ``groups``: GroupNorm groups (at most).
    Weights are equinox's default initialization from ``jax.random.key(seed)``;
    ``data_chunk`` as in `from_equinox` (GroupNorm is per example, so chunks are exact).

    Its convolutions are equinox's, i.e. XLA's: on a CPU their gradient runs several times
    slower inside a loop body than outside it (jax-ml/jax#12868; measured 8× for a GD step
    of the default network on 200 digits, 81 against 10 ms), and every step of a run is in
    a loop. The zoo's `cnn` avoids this with shifted matrix products (the issue is XLA's
    CPU backend's).
    """
    _check_choice(activation, ACTIVATIONS, "activation")
    _check_choice(loss, LOSSES, "loss")
    widths = check_sizes(widths, "widths")
    blocks = check_size(blocks, "blocks")
    groups = check_size(groups, "groups")
    seed = check_size(seed, "seed", minimum=0)
    x, y = _image_arrays(data, "resnet")
    data = Dataset(x, y, data.num_classes, data.name)
    if min(x.shape[1:3]) < 2 ** (len(widths) - 1):
        raise ValueError(f"images of shape {x.shape[1:3]} are too small for {len(widths)} stages")
    model = ResNet(
        x.shape[-1], y.shape[1], widths, blocks, groups, activation, key=jax.random.key(seed)
    )
    name = f"resnet-{activation}-{'x'.join(map(str, widths))}-b{blocks}"
    return from_equinox(model, data, loss, name=name, data_chunk=data_chunk)


def vit(
    data: Dataset,
    patch: int = 2,
    dim: int = 16,
    depth: int = 2,
    heads: int = 2,
    mlp_ratio: int = 2,
    activation: str = "gelu",
    loss: str = "mse",
    seed: int = 0,
    data_chunk: int | None = None,
) -> Problem:
    """A small vision transformer (`VisionTransformer`) on NHWC images, full-batch ``loss``.

    ``patch`` must divide the image height and width and ``heads`` must divide ``dim``.
    Weights are equinox's default initialization from ``jax.random.key(seed)`` (position
    embeddings normal with standard deviation 0.02); ``data_chunk`` as in `from_equinox`.
    """
    _check_choice(activation, ACTIVATIONS, "activation")
    _check_choice(loss, LOSSES, "loss")
    patch, dim, depth, heads, mlp_ratio = (
        check_size(value, what)
        for value, what in zip(
            (patch, dim, depth, heads, mlp_ratio), ("patch", "dim", "depth", "heads", "mlp_ratio")
        )
    )
    seed = check_size(seed, "seed", minimum=0)
    x, y = _image_arrays(data, "vit")
    data = Dataset(x, y, data.num_classes, data.name)
    height, width, channels = x.shape[1:]
    if height % patch or width % patch:
        raise ValueError(f"patch {patch} does not divide the image size {height}×{width}")
    if dim % heads:
        raise ValueError(f"heads {heads} does not divide dim {dim}")
    model = VisionTransformer(
        (height, width, channels),
        y.shape[1],
        patch,
        dim,
        depth,
        heads,
        mlp_ratio,
        activation,
        key=jax.random.key(seed),
    )
    tokens = math.prod((height // patch, width // patch))
    name = f"vit-{activation}-d{dim}-l{depth}-t{tokens}"
    return from_equinox(model, data, loss, name=name, data_chunk=data_chunk)
