"""A problem: a pure loss of a parameter pytree and the initial parameters.

Everything downstream (linear algebra, update rules, vector fields) works on the
flat parameter vector ``w``; `Problem` provides that view without casting dtypes,
so the same loss can be evaluated at complex parameters (the principal flow).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree, Scalar

__all__ = ["Problem", "cast_floating", "ravel"]


def ravel(params: PyTree) -> tuple[Array, Callable[[Array], PyTree]]:
    """Flatten a pytree of arrays into one vector, with its inverse.

    Unlike `jax.flatten_util.ravel_pytree`, the inverse keeps the dtype of the
    vector it is given, so a complex vector unravels into complex leaves.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    leaves = [jnp.asarray(leaf) for leaf in leaves]
    shapes = tuple(leaf.shape for leaf in leaves)
    sizes = tuple(math.prod(shape) for shape in shapes)
    if leaves:
        flat = jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])
    else:
        flat = jnp.zeros((0,))
    splits = tuple(itertools.accumulate(sizes))[:-1]

    def unravel(vector: Array) -> PyTree:
        chunks = jnp.split(vector, splits) if splits else [vector]
        return jax.tree_util.tree_unflatten(
            treedef, [chunk.reshape(shape) for chunk, shape in zip(chunks, shapes)]
        )

    return flat, unravel


def cast_floating(tree: PyTree, dtype) -> PyTree:
    """``tree`` with its floating-point arrays cast to ``dtype``; integer arrays, keys and
    non-array leaves kept."""

    def cast(x):
        if eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    return jax.tree_util.tree_map(cast, tree)


def _leaf_name(path) -> str:
    key = jax.tree_util.keystr(path)
    return f"leaf {key} has" if key else "it has"


def _check_params0(params0: PyTree) -> None:
    """Every leaf of the initial parameters is a real floating-point array (or scalar)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params0)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            try:
                dtype = jnp.asarray(leaf).dtype
            except TypeError:
                raise ValueError(
                    f"params0 must be a pytree of arrays: {_leaf_name(path)} type "
                    f"{type(leaf).__name__}"
                ) from None
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"params0 must be real floating point: {_leaf_name(path)} dtype {dtype}"
            )


def _check_loss(loss: Callable[[PyTree], Scalar], params0: PyTree) -> None:
    """``loss(params0)`` is a real floating-point scalar, checked without computing it."""
    if not callable(loss):
        raise ValueError(f"loss must be a function of the parameters, got {type(loss).__name__}")
    try:
        out = jax.eval_shape(loss, params0)
    except Exception as err:  # the loss's own error, one line, the original chained
        text = " ".join(str(err).split()) or type(err).__name__
        if len(text) > 300:
            text = text[:297] + "..."
        raise ValueError(f"loss(params0) fails: {type(err).__name__}: {text}") from err
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise ValueError(f"loss must return a scalar array, got a {type(out).__name__}")
    if out.shape != ():
        raise ValueError(f"loss must return a scalar, got shape {out.shape}")
    if jnp.issubdtype(out.dtype, jnp.complexfloating):
        raise ValueError(f"loss must be real at real parameters, got {out.dtype}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"loss must return a floating-point scalar, got {out.dtype}")


class Problem(eqx.Module):
    """A loss function of a parameter pytree, with initial parameters.

    Attributes:
        loss: pure function ``params -> scalar``. For the principal flow at large
            learning rates it must be holomorphic (tanh, swish, polynomials, MSE),
            so that it can be evaluated at complex parameters.
        params0: the initial parameters (any pytree of arrays).
        loss_min: the minimum value of the loss, used by GD on √L (default 0).
        predict: optional ``params -> outputs`` (network predictions on the data).
        name: a label for results and plots.

    The flat view used by the rest of the library is `w0`, `unravel` and
    `flat_loss`. Losses that close over large data sets are best given as
    `jax.tree_util.Partial(fn, data...)`, so the data are pytree leaves (traced
    arguments) rather than constants baked into every compiled function.

    A `Problem` is checked when it is made (abstractly, with `jax.eval_shape`: nothing
    is computed): ``params0`` must be real floating point and ``loss(params0)`` a real
    floating-point scalar; anything else is a `ValueError` that says what is wrong.
    """

    loss: Callable[[PyTree], Scalar]
    params0: PyTree
    loss_min: float = 0.0
    predict: Callable[[PyTree], Any] | None = None
    name: str = eqx.field(static=True, default="problem")

    def __check_init__(self):
        # Runs when a Problem is made through __init__ only (not when JAX or equinox
        # rebuild one from its leaves inside traced code), and computes nothing.
        _check_params0(self.params0)
        _check_loss(self.loss, self.params0)

    @classmethod
    def from_equinox(cls, model, data, loss="mse", **kwargs) -> Problem:
        """The full-batch loss of an equinox model on ``data``; see
        `flows.problems.from_equinox` for the arguments."""
        from flows.problems.adapters import from_equinox

        return from_equinox(model, data, loss, **kwargs)

    @classmethod
    def from_flax(cls, module, params, data, loss="mse", **kwargs) -> Problem:
        """The full-batch loss of a flax linen or nnx module on ``data``; see
        `flows.problems.from_flax` for the arguments."""
        from flows.problems.adapters import from_flax

        return from_flax(module, params, data, loss, **kwargs)

    @property
    def w0(self) -> Float[Array, " n"]:
        """The initial parameters as one flat vector."""
        return ravel(self.params0)[0]

    @property
    def num_params(self) -> int:
        return int(self.w0.shape[0])

    def unravel(self, w: Float[Array, " n"]) -> PyTree:
        """The parameter pytree for a flat vector (dtype kept, complex allowed)."""
        return ravel(self.params0)[1](w)

    def flat_loss(self, w: Float[Array, " n"]) -> Scalar:
        """The loss as a function of the flat parameter vector."""
        return self.loss(self.unravel(w))

    def flat_predict(self, w: Float[Array, " n"]) -> Any:
        if self.predict is None:
            raise ValueError(f"problem {self.name!r} has no predict function")
        return self.predict(self.unravel(w))

    def astype(self, dtype) -> Problem:
        """The same problem in ``dtype``: the parameters and every floating-point array
        the loss and predictions carry (a network's data), so that nothing is promoted
        back to a wider type inside the loss. Integer arrays (labels) are kept."""

        params0 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), self.params0)
        return eqx.tree_at(lambda p: p.params0, cast_floating(self, dtype), params0)
