import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
from tests.helpers import random_symmetric, tanh_mlp_problem


@pytest.fixture(scope="module")
def mlp():
    problem = tanh_mlp_problem()
    return problem.flat_loss, problem.w0


def test_hvp_equals_dense_hessian_times_vector(mlp):
    f, w = mlp
    v = jax.random.normal(jax.random.key(3), w.shape)
    expected = jax.hessian(f)(w) @ v
    np.testing.assert_allclose(flows.hvp(f, w, v), expected, rtol=1e-10, atol=1e-12)


def test_dense_hessian_equals_jax_hessian(mlp):
    f, w = mlp
    np.testing.assert_allclose(flows.hessian(f, w), jax.hessian(f)(w), rtol=1e-10, atol=1e-12)


def test_third_derivative_term_equals_finite_difference(mlp):
    f, w = mlp
    u = jax.random.normal(jax.random.key(1), w.shape)
    v = jax.random.normal(jax.random.key(2), w.shape)
    grad = flows.hessian_quadratic_form_grad(f, w, u, v)
    direction = jax.random.normal(jax.random.key(4), w.shape)
    eps = 1e-5

    def form(x):
        return u @ jax.hessian(f)(x) @ v

    central = (form(w + eps * direction) - form(w - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(grad @ direction, central, rtol=1e-6)


def test_hvp_at_complex_parameters_is_complex_symmetric_hessian():
    h = jnp.asarray(random_symmetric([3.0, 1.0, -0.5, 0.2]))

    def f(w):
        return 0.5 * jnp.dot(w, h @ w) + jnp.sum(jnp.tanh(w) ** 2)

    w = jnp.asarray([0.3 + 0.2j, -0.1j, 0.5, 0.1 - 0.3j])
    v = jnp.asarray([1.0 + 0j, 2.0, -1.0, 0.5j])
    dense = jax.jacfwd(jax.grad(f, holomorphic=True), holomorphic=True)(w)
    np.testing.assert_allclose(flows.hvp(f, w, v), dense @ v, rtol=1e-10)
    np.testing.assert_allclose(dense, dense.T, rtol=1e-10)


@pytest.mark.parametrize("complex_parameters", [False, True], ids=["real", "complex"])
def test_third_derivative_pullback_equals_dense_third_derivative(complex_parameters):
    # One forward pass of w ↦ H(w)v pulled back at several u: each is D³f[u, v, ·], the
    # dense third-derivative tensor contracted (bilinear, also at complex parameters).
    h = jnp.asarray(random_symmetric([3.0, 1.0, -0.5, 0.2]))

    def f(w):
        return 0.5 * jnp.dot(w, h @ w) + jnp.sum(jnp.tanh(w) ** 3) + jnp.prod(jnp.cos(w))

    w = jnp.asarray([0.3, -0.1, 0.5, 0.1])
    v = jnp.asarray([1.0, 2.0, -1.0, 0.5])
    us = jax.random.normal(jax.random.key(5), (3, 4))
    if complex_parameters:
        w, v, us = w + 0.2j * jnp.roll(w, 1), v - 0.5j, us + 1j * jnp.roll(us, 1, axis=1)
    holomorphic = complex_parameters
    third = jax.jacfwd(
        jax.jacfwd(jax.grad(f, holomorphic=holomorphic), holomorphic=holomorphic),
        holomorphic=holomorphic,
    )(w)
    pullback = flows.hessian_quadratic_form_pullback(f, w, v)
    for u in us:
        expected = jnp.einsum("ijk,i,j->k", third, u, v)
        np.testing.assert_allclose(pullback(u), expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            flows.hessian_quadratic_form_grad(f, w, u, v), expected, rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize(
    "eigensolver",
    [flows.DenseEigh(), flows.Lanczos(num_matvecs=30), flows.LOBPCG(max_iterations=200)],
    ids=["dense", "lanczos", "lobpcg"],
)
def test_top_k_matches_dense_eigh(eigensolver):
    # Negative eigenvalues of larger magnitude: the top *algebraic* ones are wanted.
    spectrum = np.concatenate([[5.0, 4.0, 3.5, 2.0], np.linspace(-8.0, 1.0, 36)])
    h = random_symmetric(spectrum, seed=5)
    hj = jnp.asarray(h)

    def f(w):
        return 0.5 * w @ hj @ w

    w = jnp.zeros(40)
    pairs = flows.top_eigenpairs(f, w, 3, eigensolver=eigensolver)
    values, vectors = np.linalg.eigh(h)
    np.testing.assert_allclose(pairs.values, values[::-1][:3], rtol=1e-8)
    overlaps = np.abs(np.sum(np.asarray(pairs.vectors) * vectors[:, ::-1][:, :3], axis=0))
    np.testing.assert_allclose(overlaps, 1.0, atol=1e-6)


def spread_quadratic():
    """½wᵀHw with eigenvalues 3, 2, 1, 0.5, 0.1, 0, −1, −2 (a random rotation)."""
    h = jnp.asarray(random_symmetric([3.0, 2.0, 1.0, 0.5, 0.1, 0.0, -1.0, -2.0], seed=2))
    return lambda w: 0.5 * w @ h @ w


def test_warm_start_aligns_signs_with_previous_vectors():
    f = spread_quadratic()
    w = jnp.zeros(8)
    first = flows.top_eigenpairs(f, w, 2, eigensolver=flows.DenseEigh())
    flipped = -first.vectors
    again = flows.top_eigenpairs(f, w, 2, eigensolver=flows.Lanczos(), init=flipped)
    np.testing.assert_allclose(again.vectors, flipped, atol=1e-8)


def test_warm_start_may_carry_extra_guard_columns():
    f = spread_quadratic()
    w = jnp.zeros(8)
    four = flows.top_eigenpairs(f, w, 4, eigensolver=flows.DenseEigh())
    two = flows.top_eigenpairs(f, w, 2, eigensolver=flows.DenseEigh(), init=-four.vectors)
    np.testing.assert_allclose(two.values, [3.0, 2.0], rtol=1e-12)
    np.testing.assert_allclose(two.vectors, -four.vectors[:, :2], atol=1e-10)


def test_sharpness_of_quadratic_and_effective_sharpness():
    h = random_symmetric([4.0, 1.0, 0.5], seed=1)
    hj = jnp.asarray(h)

    def f(w):
        return 0.5 * w @ hj @ w

    w = jnp.zeros(3)
    assert flows.sharpness(f, w) == pytest.approx(4.0, rel=1e-12)
    p_inv = jnp.asarray([0.5, 2.0, 1.0])
    effective = flows.top_eigenpairs(f, w, 1, p_inv=p_inv).values[0]
    expected = np.max(np.linalg.eigvals(np.diag(np.asarray(p_inv)) @ h).real)
    assert effective == pytest.approx(expected, rel=1e-10)
