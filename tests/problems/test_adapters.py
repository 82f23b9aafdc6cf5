"""Bring-your-own-model adapters against the zoo's own networks with the same weights: the
losses, gradients and whole GD runs must agree, so the adapters add nothing of their own."""

import equinox as eqx
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flows
from flows.problems import cnn, digits, from_equinox, from_flax, mlp

_value_and_grad = jax.jit(lambda problem, w: jax.value_and_grad(problem.flat_loss)(w))


@pytest.fixture(scope="module")
def flat_digits():
    return digits(n=40)


@pytest.fixture(scope="module")
def image_digits():
    return digits(n=24, flatten=False)


def _float64(tree):
    """Flax initializes float32 parameters even under x64."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _same_runs(ours, theirs, steps=20, lr=0.3):
    """Equal losses along GD runs from the same weights (flat orders may differ)."""
    run_a = flows.simulate(ours, "gd", lr=lr, steps=steps)
    run_b = flows.simulate(theirs, "gd", lr=lr, steps=steps)
    assert run_a.loss[-1] < 0.9 * run_a.loss[0]  # the run moved
    np.testing.assert_allclose(run_a.loss, run_b.loss, rtol=1e-11)


def test_equinox_mlp_is_the_zoo_mlp(flat_digits):
    model = eqx.nn.MLP(64, 10, 16, 1, activation=jnp.tanh, key=jax.random.key(3))
    ours = from_equinox(model, flat_digits)
    assert ours.num_params == 64 * 16 + 16 + 16 * 10 + 10
    # The zoo's MLP keeps weights as (fan_in, fan_out); equinox's Linear as (out, in).
    zoo = mlp(flat_digits, widths=[16], activation="tanh")
    params = [{"w": layer.weight.T, "b": layer.bias} for layer in model.layers]
    zoo = eqx.tree_at(lambda p: p.params0, zoo, params)
    loss_a, grad_a = _value_and_grad(ours, ours.w0)
    loss_b, grad_b = _value_and_grad(zoo, zoo.w0)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-13)
    grads_a, grads_b = ours.unravel(grad_a), zoo.unravel(grad_b)
    for layer, expected in zip(grads_a.layers, grads_b):
        np.testing.assert_allclose(layer.weight.T, expected["w"], rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(layer.bias, expected["b"], rtol=1e-10, atol=1e-15)
    _same_runs(ours, zoo)
    # predict gives the model's outputs on the inputs.
    np.testing.assert_allclose(
        ours.predict(ours.params0), jax.vmap(model)(flat_digits.x), rtol=1e-14
    )


def test_problem_classmethods_are_the_adapters(flat_digits):
    model = eqx.nn.MLP(64, 10, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
    a = flows.Problem.from_equinox(model, flat_digits, "cross_entropy")
    b = from_equinox(model, flat_digits, loss="cross_entropy")
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    np.testing.assert_array_equal(a.flat_loss(a.w0), b.flat_loss(b.w0))


class _LinenCNN(linen.Module):
    """The zoo's `cnn` written in flax linen: 3×3 SAME conv + bias, tanh, 2×2 average pool."""

    channels: tuple[int, ...] = (4, 6)

    @linen.compact
    def __call__(self, x):
        for c in self.channels:
            x = jnp.tanh(linen.Conv(c, (3, 3), padding="SAME")(x))
            x = linen.avg_pool(x, (2, 2), (2, 2))
        return linen.Dense(10)(x.reshape(x.shape[0], -1))


def test_flax_linen_cnn_is_the_zoo_cnn(image_digits):
    module = _LinenCNN()
    variables = _float64(module.init(jax.random.key(1), image_digits.x[:1]))
    ours = from_flax(module, variables, image_digits)
    p = variables["params"]
    zoo = cnn(image_digits, channels=(4, 6), activation="tanh")
    params = {
        "conv": [{"w": p[f"Conv_{i}"]["kernel"], "b": p[f"Conv_{i}"]["bias"]} for i in range(2)],
        "dense": {"w": p["Dense_0"]["kernel"], "b": p["Dense_0"]["bias"]},
    }
    zoo = eqx.tree_at(lambda q: q.params0, zoo, params)
    # Leaf orders differ (flax sorts 'Conv_0', 'Conv_1', 'Dense_0'; bias before kernel):
    # compare on the parameter pytrees, through each problem's own unravel.
    loss_a, grad_a = _value_and_grad(ours, ours.w0)
    loss_b, grad_b = _value_and_grad(zoo, zoo.w0)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-13)
    grads_a, grads_b = ours.unravel(grad_a), zoo.unravel(grad_b)
    for i in range(2):
        np.testing.assert_allclose(
            grads_a[f"Conv_{i}"]["kernel"], grads_b["conv"][i]["w"], rtol=1e-10, atol=1e-14
        )
    np.testing.assert_allclose(grads_a["Dense_0"]["bias"], grads_b["dense"]["b"], rtol=1e-10)
    _same_runs(ours, zoo, lr=0.5)


def test_flax_float32_parameters_get_float32_data(image_digits):
    module = _LinenCNN(channels=(3,))
    variables = module.init(jax.random.key(0), image_digits.x[:1])
    problem = from_flax(module, variables, image_digits)
    assert problem.w0.dtype == jnp.float32
    assert problem.flat_loss(problem.w0).dtype == jnp.float32
    wide = from_flax(module, variables, image_digits, dtype=jnp.float64)
    assert wide.w0.dtype == jnp.float64
    np.testing.assert_array_equal(
        wide.unravel(wide.w0)["Conv_0"]["kernel"], variables["params"]["Conv_0"]["kernel"]
    )


def test_flax_params_collection_alone_is_accepted(image_digits):
    module = _LinenCNN(channels=(3,))
    variables = module.init(jax.random.key(0), image_digits.x[:1])
    whole = from_flax(module, variables, image_digits)
    params_only = from_flax(module, variables["params"], image_digits)
    np.testing.assert_array_equal(whole.flat_loss(whole.w0), params_only.flat_loss(whole.w0))


class _LinenBatchNormMLP(linen.Module):
    @linen.compact
    def __call__(self, x):
        h = linen.Dense(8)(x)
        h = linen.BatchNorm(use_running_average=False, momentum=0.9)(h)
        return linen.Dense(10)(jnp.tanh(h))


def test_flax_batch_stats_are_held_fixed_and_batch_norm_is_full_batch(flat_digits):
    module = _LinenBatchNormMLP()
    variables = _float64(module.init(jax.random.key(0), flat_digits.x))
    problem = from_flax(module, variables, flat_digits)
    p = variables["params"]
    # Only the params collection is θ (the running mean/variance are not parameters).
    assert problem.num_params == 64 * 8 + 8 + 2 * 8 + 8 * 10 + 10
    h = flat_digits.x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5)
    h = h * p["BatchNorm_0"]["scale"] + p["BatchNorm_0"]["bias"]
    out = jnp.tanh(h) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    expected = 0.5 * jnp.mean(jnp.sum((out - flat_digits.y) ** 2, axis=1))
    np.testing.assert_allclose(problem.flat_loss(problem.w0), expected, rtol=1e-12)
    # Evaluating twice gives the same value: nothing is updated between calls.
    np.testing.assert_array_equal(problem.flat_loss(problem.w0), problem.flat_loss(problem.w0))


class _NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(64, 12, rngs=rngs)
        self.output = nnx.Linear(12, 10, rngs=rngs)

    def __call__(self, x):
        return self.output(jnp.tanh(self.hidden(x)))


def test_flax_nnx_mlp_is_the_zoo_mlp(flat_digits):
    model = _NnxMLP(nnx.Rngs(0))
    ours = from_flax(model, None, flat_digits, dtype=jnp.float64)
    zoo = mlp(flat_digits, widths=[12], activation="tanh")
    params = [
        {"w": model.hidden.kernel[...], "b": model.hidden.bias[...]},
        {"w": model.output.kernel[...], "b": model.output.bias[...]},
    ]
    params = _float64(params)
    zoo = eqx.tree_at(lambda q: q.params0, zoo, params)
    loss_a, _ = _value_and_grad(ours, ours.w0)
    loss_b, _ = _value_and_grad(zoo, zoo.w0)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-13)
    _same_runs(ours, zoo)


def test_same_architecture_shares_the_compiled_structure(flat_digits):
    """Weights and data are leaves, the architecture is static: a second model of the same
    shape on other data has the same tree structure, so compiled functions are reused."""
    other = digits(n=40, classes=list(range(9, -1, -1)))

    def make(seed, data):
        model = eqx.nn.MLP(64, 10, 8, 1, activation=jnp.tanh, key=jax.random.key(seed))
        return from_equinox(model, data)

    a, b = make(0, flat_digits), make(1, other)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    assert not np.array_equal(a.w0, b.w0)
    wider = from_equinox(eqx.nn.MLP(64, 10, 9, 1, key=jax.random.key(0)), flat_digits)
    assert jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(wider)


def test_astype_casts_adapted_problems(flat_digits):
    model = eqx.nn.MLP(64, 10, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
    problem = from_equinox(model, flat_digits).astype(jnp.float32)
    assert problem.w0.dtype == jnp.float32
    assert problem.flat_loss(problem.w0).dtype == jnp.float32


def test_bad_input_is_named(flat_digits, image_digits):
    model = eqx.nn.MLP(64, 10, 8, 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        from_equinox(model, flat_digits, "hinge")
    with pytest.raises(ValueError, match="40 inputs but 39 targets"):
        from_equinox(model, (flat_digits.x, flat_digits.y[:39]))
    with pytest.raises(ValueError, match="Dataset or a pair"):
        from_equinox(model, flat_digits.x)
    with pytest.raises(ValueError, match="needs an equinox.Module"):
        from_equinox(lambda x: x, flat_digits)
    with pytest.raises(ValueError, match=r"loss\(params0\) fails"):
        from_equinox(eqx.nn.MLP(63, 10, 8, 1, key=jax.random.key(0)), flat_digits)
    with pytest.raises(ValueError, match="needs its parameters"):
        from_flax(_LinenCNN(), None, image_digits)
    with pytest.raises(ValueError, match="pass params=None"):
        from_flax(_NnxMLP(nnx.Rngs(0)), {"w": 1.0}, flat_digits)
    with pytest.raises(ValueError, match="dtype must be a floating-point type"):
        from_equinox(model, flat_digits, dtype=jnp.int32)
    with pytest.raises(ValueError, match="dtype must be a floating-point type"):
        from_equinox(model, flat_digits, dtype="fp33")
    with pytest.raises(ValueError, match="linen or nnx Module"):
        from_flax(model, None, flat_digits)
