"""Bring your own model: a `Problem` from an equinox model or a flax module.

The loss is ``L(θ) = loss(model_θ(x), y)`` over the whole data set (full batch), a pure
function of the model's floating-point parameters θ. Everything else the model holds is
fixed: equinox's non-array fields (activations, shapes) and flax's module definition go
into the compiled function's static structure; integer arrays, flax's other variable
collections (``batch_stats``) and nnx's non-parameter state (batch statistics, RNG state)
are carried as constant leaves, like the data. So two problems with the same architecture
on different data or weights share compiled functions, as the zoo's networks do.

The model is called as it is: put it in the mode you want studied (a flax ``BatchNorm`` with
``use_running_average=False`` normalizes by the statistics of the full batch, which is a
smooth function of θ; its running averages are not updated). Dropout or anything else that
draws random numbers has no place in a deterministic flow: switch it off.

For the principal flow the model must be holomorphic (tanh, gelu, swish, no ``abs`` or
``max``), since the loss is evaluated at complex parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree, Scalar

from flows.problem import Problem, cast_floating
from flows.problems.data import Dataset
from flows.problems.losses import mean_over_chunks
from flows.problems.networks import LOSSES, _bind, check_data_chunk

__all__ = ["from_equinox", "from_flax"]

Loss = str | Callable[[Array, Array], Scalar]


def _loss_function(loss: Loss) -> Callable[[Array, Array], Scalar]:
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(
                f"unknown loss {loss!r}; choose one of {sorted(LOSSES)} or pass "
                "a function (outputs, targets) -> scalar"
            )
        return LOSSES[loss]
    if not callable(loss):
        raise ValueError(
            f"loss must be a name or a function (outputs, targets) -> scalar, "
            f"got {type(loss).__name__}"
        )
    return loss


def _problem_dtype(params: PyTree, dtype) -> Any:
    """The problem's floating dtype: ``dtype`` if given, else the parameters' own."""
    if dtype is not None:
        try:
            floating = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
        except TypeError:
            floating = False
        if not floating:
            raise ValueError(f"dtype must be a floating-point type, got {dtype!r}")
        if jnp.dtype(dtype).itemsize == 8 and not jax.config.jax_enable_x64:
            raise ValueError(
                f"dtype {jnp.dtype(dtype)} needs 64-bit JAX: "
                'jax.config.update("jax_enable_x64", True) first'
            )
        return jnp.dtype(dtype)
    leaves = jax.tree_util.tree_leaves(params)
    return jnp.result_type(*leaves) if leaves else jnp.result_type(float)


def _data_arrays(data: Dataset | tuple[Any, Any], dtype) -> tuple[Array, Array, str]:
    """Inputs and targets as arrays, floating ones in ``dtype`` (so nothing is promoted
    inside the loss), cast once from the data as given."""
    if isinstance(data, Dataset):
        x, y, name = data.x, data.y, data.name
    elif isinstance(data, tuple | list) and len(data) == 2:
        (x, y), name = data, "data"
    else:
        raise ValueError(
            f"data must be a flows Dataset or a pair (inputs, targets), got {type(data).__name__}"
        )

    def as_array(value, what):
        array = np.asarray(value)
        if array.ndim == 0 or array.shape[0] == 0:
            raise ValueError(
                f"data {what} must have a leading axis of examples, got shape {array.shape}"
            )
        if np.issubdtype(array.dtype, np.floating):
            return jnp.asarray(array, dtype=dtype)
        return jnp.asarray(array)

    x, y = as_array(x, "inputs"), as_array(y, "targets")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"data has {x.shape[0]} inputs but {y.shape[0]} targets")
    return x, y, name


def _supervised(
    fixed: PyTree,
    x: Array,
    y: Array,
    params: PyTree,
    *,
    apply: Callable[..., Array],
    loss: Callable,
    data_chunk: int | None,
) -> Scalar:
    def batch_loss(inputs, targets):
        return loss(apply(fixed, inputs, params), targets)

    return mean_over_chunks(batch_loss, x, y, data_chunk)


def _make(
    apply, fixed, data, loss: Loss, params, dtype, name, loss_min: float, data_chunk
) -> Problem:
    data_chunk = check_data_chunk(data_chunk)
    dtype = _problem_dtype(params, dtype)
    x, y, data_name = _data_arrays(data, dtype)
    params = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, dtype), params)
    # Fixed floating arrays (batch statistics) in the same dtype; keys and integers kept.
    fixed = cast_floating(fixed, dtype)
    name = f"{name}-{data_name}"
    loss_fn = _bind(_supervised, apply=apply, loss=_loss_function(loss), data_chunk=data_chunk)
    return Problem(
        loss=jax.tree_util.Partial(loss_fn, fixed, x, y),
        params0=params,
        loss_min=loss_min,
        predict=jax.tree_util.Partial(apply, fixed, x),
        name=name,
    )


# --------------------------------------------------------------------------- equinox


def _equinox_apply(
    constants: PyTree, x: Array, params: PyTree, *, static: PyTree, batched: bool
) -> Array:
    model = eqx.combine(params, constants, static)
    return model(x) if batched else jax.vmap(model)(x)


def from_equinox(
    model: eqx.Module,
    data: Dataset | tuple[Any, Any],
    loss: Loss = "mse",
    *,
    batched: bool = False,
    dtype=None,
    loss_min: float = 0.0,
    name: str | None = None,
    data_chunk: int | None = None,
) -> Problem:
    """The full-batch loss of an equinox model: ``L(θ) = loss(vmap(model_θ)(x), y)``.

    Args:
        model: an `equinox.Module`; its floating-point arrays are the parameters θ.
        data: a `flows.problems.Dataset` or a pair ``(inputs, targets)`` with a leading
            axis of examples.
        loss: ``"mse"`` (½‖f − y‖² averaged over examples), ``"cross_entropy"``,
            ``"mean_squared_error"``, or a function ``(outputs, targets) -> scalar``.
        batched: the model takes the whole batch; by default it takes one example (the
            equinox convention) and is vmapped over the examples.
        dtype: the problem's floating dtype (parameters and data); default: the
            parameters' own.
        loss_min: the loss's minimum (for GD on √L).
        name: a label for results (default: the model's class); the data's name is
            appended.
        data_chunk: evaluate the loss this many examples at a time, each chunk
            rematerialised in derivatives (`flows.problems.mean_over_chunks`): the memory
            of every derivative bounded by one chunk's activations instead of all ``n``.
            Needs a loss that is a mean over examples (the named ones are) and a model
            whose output on one example does not depend on the others.

    ``predict(θ)`` gives the model's outputs on the inputs.
    """
    if not isinstance(model, eqx.Module):
        raise ValueError(f"from_equinox needs an equinox.Module, got {type(model).__name__}")
    params, rest = eqx.partition(model, eqx.is_inexact_array)
    constants, static = eqx.partition(rest, eqx.is_array)
    apply = _bind(_equinox_apply, static=static, batched=bool(batched))
    name = name or type(model).__name__.lower()
    return _make(apply, constants, data, loss, params, dtype, name, loss_min, data_chunk)


# ------------------------------------------------------------------------------ flax


def _linen_apply(collections: dict, x: Array, params: PyTree, *, module: Any) -> Array:
    variables = {"params": params, **collections}
    if not collections:
        return module.apply(variables, x)
    # Other collections (batch statistics) are inputs held fixed; their updates are dropped.
    outputs, _ = module.apply(variables, x, mutable=list(collections))
    return outputs


def _nnx_apply(state: PyTree, x: Array, params: PyTree, *, graphdef: Any) -> Array:
    from flax import nnx

    return nnx.merge(graphdef, params, state)(x)


def from_flax(
    module: Any,
    params: PyTree | None,
    data: Dataset | tuple[Any, Any],
    loss: Loss = "mse",
    *,
    dtype=None,
    loss_min: float = 0.0,
    name: str | None = None,
    data_chunk: int | None = None,
) -> Problem:
    """The full-batch loss of a flax model: ``L(θ) = loss(f_θ(x), y)``.

    Args:
        module: a flax linen ``Module`` (with ``params`` its ``params`` collection, or the
            whole variables dict from ``module.init``) or a flax nnx ``Module`` (with
            ``params=None``: its ``nnx.Param`` variables are θ). Flax modules take the
            whole batch.
        params: see ``module``.
        data, loss, dtype, loss_min, name, data_chunk: as in `from_equinox` (no
            ``data_chunk`` with batch statistics: they would be each chunk's).

    Linen collections other than ``params`` (``batch_stats``) and nnx state other than
    ``nnx.Param`` are held fixed. Flax creates float32 parameters unless told otherwise
    (``param_dtype``), also under x64: pass ``dtype=jnp.float64`` for a float64 study (the
    data are cast from the values given, so no precision is lost on the way). Needs
    ``flax`` (``pip install flax``).
    """
    try:
        import flax.linen as linen
        from flax import nnx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("from_flax needs flax: pip install flax") from err
    if isinstance(module, nnx.Module):
        if params is not None:
            raise ValueError("an nnx module carries its own parameters: pass params=None")
        graphdef, weights, state = nnx.split(module, nnx.Param, ...)
        weights, state = nnx.to_pure_dict(weights), nnx.to_pure_dict(state)
        apply = _bind(_nnx_apply, graphdef=graphdef)
        fixed = state
    elif isinstance(module, linen.Module):
        if params is None:
            raise ValueError(
                "a linen module needs its parameters: pass "
                "module.init(key, x) (or its 'params' collection)"
            )
        params = dict(params)
        if "params" in params:
            collections = {key: value for key, value in params.items() if key != "params"}
            weights = params["params"]
        else:
            collections, weights = {}, params
        apply = _bind(_linen_apply, module=module)
        fixed = collections
    else:
        raise ValueError(f"from_flax needs a flax linen or nnx Module, got {type(module).__name__}")
    name = name or type(module).__name__.lower()
    return _make(apply, fixed, data, loss, weights, dtype, name, loss_min, data_chunk)
