"""The problem zoo against independent truth: hand computations, analytic Hessians,
parameter counts by formula, and a NumPy re-implementation of the CNN forward pass."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows.problems import (
    DATASETS,
    PROBLEMS,
    chebyshev,
    cnn,
    cross_entropy,
    deep_linear,
    diagonal_quadratic,
    digits,
    mean_squared_error,
    mlp,
    mse,
    quadratic,
    quadratic_from_matrix,
    quadratic_hessian,
    reference_mlp,
    scalar_product,
    synthetic_classification,
    synthetic_regression,
    two_layer_scalar,
    valley,
)

# Compiled once per problem structure: much faster than op-by-op evaluation.
_loss = jax.jit(lambda problem, w: problem.flat_loss(w))
_value_and_grad = jax.jit(lambda problem, w: jax.value_and_grad(problem.flat_loss)(w))
_predict = jax.jit(lambda problem: problem.predict(problem.params0))
_hessian = jax.jit(lambda problem, w: jax.hessian(problem.flat_loss)(w))


def _complex_step(problem, w, v, h=1e-20):
    """Im L(w + i h v) / h: the exact directional derivative of a real-analytic loss."""
    return float(jnp.imag(_loss(problem, w + 1j * h * v)) / h)


# ------------------------------------------------------------------------------ losses


def test_mse_hand_computation():
    outputs = jnp.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    targets = jnp.zeros((2, 3))
    # example 1: ½(1 + 4) = 2.5; example 2: ½·9 = 4.5; mean 3.5
    assert float(mse(outputs, targets)) == pytest.approx(3.5)
    assert float(mean_squared_error(outputs, targets)) == pytest.approx(14.0 / 6.0)
    # one output per example given as a vector
    assert float(mse(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0]))) == pytest.approx(1.25)


def test_mse_is_holomorphic():
    outputs = jnp.array([[1.0 + 2.0j]])
    assert complex(mse(outputs, jnp.zeros((1, 1)))) == pytest.approx(0.5 * (1.0 + 2.0j) ** 2)


def test_cross_entropy_hand_computation():
    logits = jnp.array([[0.0, np.log(3.0)], [0.0, 0.0]])
    labels = jnp.array([[0.0, 1.0], [1.0, 0.0]])
    expected = 0.5 * (-np.log(0.75) + np.log(2.0))
    assert float(cross_entropy(logits, labels)) == pytest.approx(expected)
    # stable for large logits, and matches log_softmax
    big = jnp.array([[1000.0, 0.0, -1000.0]])
    onehot = jnp.array([[0.0, 1.0, 0.0]])
    assert float(cross_entropy(big, onehot)) == pytest.approx(1000.0)
    complex_value = cross_entropy(logits + 0j, labels)
    assert complex(complex_value) == pytest.approx(expected)


# --------------------------------------------------------------------------- quadratics


def test_quadratic_hessian_is_the_constructed_matrix():
    eigenvalues = [3.0, 1.0, 0.5, -0.2, 0.01]
    problem = quadratic(eigenvalues, seed=1)
    H = quadratic_hessian(problem)
    hessian = _hessian(problem, problem.w0)
    np.testing.assert_allclose(hessian, H, atol=1e-12)
    np.testing.assert_allclose(np.linalg.eigvalsh(hessian), sorted(eigenvalues), atol=1e-12)
    assert np.abs(H - np.diag(np.diag(H))).max() > 1e-3  # rotated
    np.testing.assert_allclose(problem.w0, np.ones(5))


def test_quadratic_unrotated_is_diagonal_and_takes_w0():
    w0 = jnp.array([1.0, -2.0, 0.5])
    problem = quadratic([2.0, 1.0, 0.1], w0, rotate=False)
    np.testing.assert_allclose(quadratic_hessian(problem), np.diag([2.0, 1.0, 0.1]))
    assert float(problem.flat_loss(w0)) == pytest.approx(0.5 * (2.0 + 4.0 + 0.025))


def test_quadratic_from_matrix_at_complex_params():
    H = np.array([[2.0, 0.5], [0.5, 1.0]])
    problem = quadratic_from_matrix(H, jnp.array([1.0, 1.0]))
    w = jnp.array([1.0 + 1.0j, 0.5 - 2.0j])
    expected = 0.5 * np.asarray(w) @ H @ np.asarray(w)  # no conjugation
    assert complex(problem.flat_loss(w)) == pytest.approx(complex(expected))
    with pytest.raises(ValueError, match="symmetric"):
        quadratic_from_matrix(np.array([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        quadratic_from_matrix(np.ones((2, 3)))
    with pytest.raises(TypeError):
        quadratic_hessian(valley())


# ------------------------------------------------------------------------------- toys


def test_diagonal_quadratic():
    problem = diagonal_quadratic(theta=(0.3, -2.0))
    assert float(_loss(problem, problem.w0)) == pytest.approx(0.09 + 0.01 * 4.0)
    np.testing.assert_allclose(_hessian(problem, problem.w0), np.diag([2.0, 0.02]))


@pytest.mark.parametrize("x", [0.0, 0.7, -2.0])
def test_valley_hessian_on_the_manifold(x):
    problem = valley(x=x, y=0.0)
    params = problem.params0
    assert float(problem.loss(params)) == 0.0
    hessian = _hessian(problem, problem.w0)
    assert float(np.linalg.eigvalsh(hessian)[-1]) == pytest.approx(2.0 * (1.0 + x * x))
    off = valley(x=2.0, y=0.5)
    assert float(_loss(off, off.w0)) == pytest.approx(5.0 * 0.25)


def test_scalar_product_sharpness_at_a_minimum():
    start = scalar_product()
    assert float(_loss(start, start.w0)) == pytest.approx(0.5 * (1.5 - 1.0) ** 2)
    problem = scalar_product(a=2.0, b=0.5)
    assert float(_loss(problem, problem.w0)) == 0.0
    top = np.linalg.eigvalsh(_hessian(problem, problem.w0))[-1]
    assert float(top) == pytest.approx(2.0**2 + 0.5**2)


def test_two_layer_scalar_with_custom_z():
    problem = two_layer_scalar(lambda u: 0.25 * u**4, theta1=2.0, theta2=0.5)
    u = 1.0
    assert float(_loss(problem, problem.w0)) == pytest.approx(0.25)
    grad = jax.grad(problem.loss)(problem.params0)
    assert float(grad["theta1"]) == pytest.approx(u**3 * 0.5)
    assert float(grad["theta2"]) == pytest.approx(u**3 * 2.0)
    default = two_layer_scalar(theta1=1.5, theta2=0.2)
    assert float(_loss(default, default.w0)) == pytest.approx(0.5 * 0.7**2)


# --------------------------------------------------------------------------- networks


def _mlp_count(sizes, bias=True):
    return sum(a * b + (b if bias else 0) for a, b in zip(sizes[:-1], sizes[1:]))


@pytest.mark.parametrize(
    ("activation", "loss"),
    [(act, "mse") for act in ["tanh", "relu", "gelu", "swish", "identity"]]
    + [("tanh", "cross_entropy"), ("relu", "mean_squared_error")],
)
def test_mlp_finite_loss_and_parameter_count(activation, loss):
    data = digits(n=40, classes=[0, 1, 2])
    problem = mlp(data, [5, 7], activation=activation, loss=loss, seed=3)
    assert problem.num_params == _mlp_count([64, 5, 7, 3])
    value = _loss(problem, problem.w0)
    assert np.isfinite(float(value))
    assert jax.eval_shape(problem.predict, problem.params0).shape == (40, 3)
    assert problem.w0.dtype == jnp.float64


def test_mlp_loss_matches_its_predictions():
    data = synthetic_classification(n=30, d_in=4, num_classes=3, seed=1)
    problem = mlp(data, [6], activation="tanh", loss="mse")
    outputs = np.asarray(_predict(problem))
    expected = 0.5 * np.mean(np.sum((outputs - np.asarray(data.y)) ** 2, axis=1))
    assert float(_loss(problem, problem.w0)) == pytest.approx(expected)
    # an independent forward pass
    p = problem.params0
    hidden = np.tanh(np.asarray(data.x) @ np.asarray(p[0]["w"]) + np.asarray(p[0]["b"]))
    np.testing.assert_allclose(outputs, hidden @ np.asarray(p[1]["w"]) + np.asarray(p[1]["b"]))


def test_mlp_without_bias_and_bad_options():
    data = synthetic_regression(n=10, d_in=3, d_out=2)
    assert mlp(data, [4], bias=False).num_params == _mlp_count([3, 4, 2], bias=False)
    with pytest.raises(ValueError, match="activation"):
        mlp(data, [4], activation="sigmoidal")
    with pytest.raises(ValueError, match="loss"):
        mlp(data, [4], loss="hinge")


def test_same_architecture_shares_compiled_code():
    data = synthetic_regression(n=10, d_in=3, d_out=1)
    a = mlp(data, [4], seed=0)
    b = mlp(synthetic_regression(n=10, d_in=3, d_out=1, seed=5), [4], seed=1)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    leaves = jax.tree_util.tree_leaves(a.loss)
    assert any(leaf.shape == (10, 3) for leaf in leaves)  # data are leaves, not constants


def test_deep_linear_is_a_matrix_product():
    data = synthetic_regression(n=12, d_in=5, d_out=2, seed=2)
    problem = deep_linear(data, depth=3, width=4, seed=0)
    assert problem.num_params == 5 * 4 + 4 * 4 + 4 * 2
    weights = [np.asarray(layer["w"]) for layer in problem.params0]
    product = weights[0] @ weights[1] @ weights[2]
    np.testing.assert_allclose(_predict(problem), np.asarray(data.x) @ product)


def test_chebyshev_problem():
    problem = chebyshev()
    assert problem.num_params == 1 * 100 + 100 + 100 * 1 + 1
    x = np.linspace(-1.0, 1.0, 20)
    target = 8 * x**4 - 8 * x**2 + 1  # T_4
    outputs = np.asarray(_predict(problem))[:, 0]
    assert outputs.shape == (20,)
    expected = 0.5 * np.mean((outputs - target) ** 2)
    assert float(_loss(problem, problem.w0)) == pytest.approx(expected)


def test_reference_mlp_numpy_draw():
    problem = reference_mlp(seed=0, draw="numpy")
    assert problem.num_params == _mlp_count([8, 16, 16, 1])
    data = synthetic_regression(n=128, d_in=8, d_out=1, seed=0)
    assert data.x.shape == (128, 8) and data.y.shape == (128, 1)
    outputs = np.asarray(_predict(problem))
    expected = np.mean((outputs - np.asarray(data.y)) ** 2)
    assert float(_loss(problem, problem.w0)) == pytest.approx(expected)


# Printed by the authors' JAX example (flax.nnx: Rngs(seed), x and y by rngs.normal, then
# three nnx.Linear layers with their default initialisation), run in float32.
_FLAX_REFERENCE = {
    0: {
        "x[0, :3]": [1.0040143, -0.9063372, -0.7481722],
        "y[:3]": [-2.4424558, -2.0356805, 0.20554423],
        "w0[0, :3]": [0.4806873, 0.50062776, -0.15674235],
        "w1[0, :2]": [-0.27184486, 0.16445768],
        "w2[:3, 0]": [0.30768085, -0.258987, 0.06979684],
        "loss": 1.059820532798767,
    },
    3: {"w1[0, :2]": [0.41365117, 0.5645014], "loss": 1.7963671684265137},
}


@pytest.mark.parametrize("seed", sorted(_FLAX_REFERENCE))
def test_reference_mlp_is_the_published_instance(seed):
    problem = reference_mlp(seed=seed)
    assert problem.num_params == _mlp_count([8, 16, 16, 1])
    x, y = problem.loss.args
    params = problem.params0
    views = {
        "x[0, :3]": lambda: x[0, :3],
        "y[:3]": lambda: y[:3, 0],
        "w0[0, :3]": lambda: params[0]["w"][0, :3],
        "w1[0, :2]": lambda: params[1]["w"][0, :2],
        "w2[:3, 0]": lambda: params[2]["w"][:3, 0],
    }
    expected = _FLAX_REFERENCE[seed]
    for name, value in expected.items():
        if name != "loss":
            np.testing.assert_allclose(np.asarray(views[name]()), value, rtol=1e-6, err_msg=name)
    assert all(np.all(np.asarray(layer["b"]) == 0) for layer in params)
    assert float(problem.astype(jnp.float32).loss(problem.astype(jnp.float32).params0)) == (
        pytest.approx(expected["loss"], rel=1e-6)
    )


def test_reference_mlp_rejects_an_unknown_draw():
    with pytest.raises(ValueError, match="draw 'torch'"):
        reference_mlp(draw="torch")


def _numpy_cnn(x, params):
    """SAME 3×3 cross-correlation, tanh, 2×2 average pool, dense: written with loops."""
    h = x
    for layer in params["conv"]:
        w, b = np.asarray(layer["w"]), np.asarray(layer["b"])
        n, height, width, _ = h.shape
        padded = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = np.zeros((n, height, width, w.shape[-1]))
        for i in range(3):
            for j in range(3):
                patch = padded[:, i : i + height, j : j + width, :]
                out += np.einsum("nhwc,cd->nhwd", patch, w[i, j])
        out = np.tanh(out + b)
        h = out.reshape(n, height // 2, 2, width // 2, 2, -1).mean(axis=(2, 4))
    h = h.reshape(h.shape[0], -1)
    return h @ np.asarray(params["dense"]["w"]) + np.asarray(params["dense"]["b"])


def test_cnn_shapes_count_and_forward_pass():
    data = digits(n=6, flatten=False)
    problem = cnn(data, channels=(4, 8), activation="tanh", seed=0)
    expected_count = (9 * 1 * 4 + 4) + (9 * 4 * 8 + 8) + (2 * 2 * 8) * 10 + 10
    assert problem.num_params == expected_count
    outputs = _predict(problem)
    assert outputs.shape == (6, 10)
    np.testing.assert_allclose(outputs, _numpy_cnn(np.asarray(data.x), problem.params0), atol=1e-10)
    assert np.isfinite(float(_loss(problem, problem.w0)))
    with pytest.raises(ValueError, match="NHWC"):
        cnn(digits(n=6), channels=(4,))


# ---------------------------------------------------------------- complex parameters


@pytest.mark.parametrize(
    "build",
    [
        lambda: mlp(synthetic_regression(n=16, d_in=3, d_out=2), [8], activation="tanh"),
        lambda: mlp(
            synthetic_classification(n=16, d_in=3, num_classes=3),
            [8],
            activation="swish",
            loss="cross_entropy",
        ),
        lambda: cnn(digits(n=4, flatten=False), channels=(2,), activation="tanh"),
        lambda: valley(x=0.5, y=0.3),
    ],
)
def test_loss_at_complex_params(build):
    problem = build()
    w = problem.w0 + 0.1 * np.sin(np.arange(problem.num_params))
    real_value, grad = _value_and_grad(problem, w)
    complex_value = _loss(problem, w.astype(jnp.complex128))
    assert jnp.iscomplexobj(complex_value)
    assert complex(complex_value) == pytest.approx(float(real_value), rel=1e-12)
    # holomorphic: the complex-step derivative is the real directional derivative
    v = np.cos(np.arange(problem.num_params))
    directional = float(jnp.dot(grad, v))
    assert _complex_step(problem, w, v) == pytest.approx(directional, rel=1e-8, abs=1e-12)


# ---------------------------------------------------------------------------- registry


def test_registries():
    assert set(PROBLEMS) == {
        "quadratic",
        "diagonal_quadratic",
        "valley",
        "scalar_product",
        "two_layer_scalar",
        "chebyshev",
        "mlp",
        "deep_linear",
        "cnn",
        "reference_mlp",
        "resnet",
        "vit",
    }
    assert set(DATASETS) == {
        "digits",
        "synthetic_regression",
        "synthetic_classification",
        "cifar10",
    }
    problem = PROBLEMS["mlp"](data=DATASETS["digits"](n=50), widths=[8, 8], activation="tanh")
    assert np.isfinite(float(_loss(problem, problem.w0)))
    for name in ["diagonal_quadratic", "valley", "scalar_product", "two_layer_scalar"]:
        toy = PROBLEMS[name]()
        assert toy.name == name
        assert np.isfinite(float(_loss(toy, toy.w0)))
    assert PROBLEMS["quadratic"]([1.0, 2.0]).num_params == 2


def _indexed_sum(index, scale, params):
    return scale * jnp.sum(params[index] ** 2)


def test_astype_casts_the_data_too():
    # float32 parameters on float64 data would run the whole network in float64.
    problem = reference_mlp().astype(jnp.float32)
    floating = [
        leaf for leaf in jax.tree_util.tree_leaves(problem)
        if eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.floating)
    ]
    assert len(floating) > len(jax.tree_util.tree_leaves(problem.params0))  # data too
    assert all(leaf.dtype == jnp.float32 for leaf in floating)
    assert "f64" not in str(jax.make_jaxpr(jax.grad(problem.flat_loss))(problem.w0))
    # Integer arrays (indices, labels) keep their type.
    loss = jax.tree_util.Partial(_indexed_sum, jnp.arange(2), jnp.asarray(0.5))
    small = flows.Problem(loss, jnp.ones(3)).astype(jnp.float32)
    assert small.loss.args[0].dtype == jnp.arange(2).dtype
    assert small.loss.args[1].dtype == jnp.float32 and small.w0.dtype == jnp.float32
    assert small.loss(small.params0) == 1.0
