"""Matrix functions f(A)v: branch of the log, φ(x) = log(1 − x)/x, dense and Lanczos paths.

Truth comes from numpy/scipy (Taylor series, ``scipy.linalg.expm``), never from flows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from flows.linalg.matfun import (
    complex_symmetric_lanczos,
    dense_funm,
    lanczos_funm,
    log1m_over_x,
    shifted_log,
)
from tests.helpers import random_symmetric


def complex_symmetric(eigenvalues, imag_scale, seed=0):
    """A = S + i·c·R with S, R real symmetric: complex symmetric (A = Aᵀ), not Hermitian."""
    rng = np.random.default_rng(seed + 10)
    r = rng.standard_normal((len(eigenvalues),) * 2)
    return random_symmetric(eigenvalues, seed) + 1j * imag_scale * (r + r.T) / 2


def test_shifted_log_is_a_logarithm_with_arg_in_the_shifted_range():
    rng = np.random.default_rng(0)
    z = rng.standard_normal(200) + 1j * rng.standard_normal(200)
    log = np.asarray(shifted_log(jnp.asarray(z)))
    np.testing.assert_allclose(np.exp(log), z, rtol=1e-13)
    assert np.all(log.imag > -np.pi / 2) and np.all(log.imag <= 1.5 * np.pi)
    # Off the third quadrant it is the principal logarithm.
    keep = ~((z.real < 0) & (z.imag < 0))
    np.testing.assert_allclose(log[keep], np.log(z[keep]), rtol=1e-13)


def test_shifted_log_is_continuous_across_the_negative_real_axis():
    # 1 − ηλ for ηλ > 1 with rounding noise of either sign in the imaginary part: the
    # principal log jumps between ±iπ, the shifted one gives +iπ on both sides.
    z = jnp.asarray([-0.5 + 1e-17j, -0.5 - 1e-17j, -0.5 + 0j, -0.5 - 0j, -2.0 - 1e-12j])
    log = np.asarray(shifted_log(z))
    np.testing.assert_allclose(log.imag, np.pi, atol=1e-11)
    np.testing.assert_allclose(log.real, np.log(np.abs(np.asarray(z))), rtol=1e-14)
    assert np.ptp(np.angle(np.asarray(z)[:4])) > 6  # the principal branch does flip


def test_phi_small_arguments_match_the_taylor_series():
    x = np.array([0.0, 1e-12, -3e-9, 2e-5 + 1e-5j, -1e-4j, 1e-3])
    series = -sum(x**k / (k + 1) for k in range(8))
    np.testing.assert_allclose(np.asarray(log1m_over_x(jnp.asarray(x))), series, rtol=1e-14)


def test_phi_on_the_real_line_both_sides_of_one():
    below = np.array([-5.0, -0.3, 0.2, 0.9, 0.999])
    np.testing.assert_allclose(
        np.asarray(log1m_over_x(jnp.asarray(below))), np.log1p(-below) / below, rtol=1e-14
    )
    above = np.array([1.001, 1.5, 2.0, 2.5, 7.0])
    expected = (np.log(above - 1) + 1j * np.pi) / above  # Re = log|1 − x|/x, Im = +π/x
    np.testing.assert_allclose(np.asarray(log1m_over_x(jnp.asarray(above))), expected, rtol=1e-14)
    # At the branch point the log is clamped (no inf, no nan).
    assert np.isfinite(complex(log1m_over_x(jnp.asarray(1.0))))


@pytest.mark.parametrize("imag_scale", [0.0, 0.05])
def test_dense_funm_exp_equals_scipy_expm(imag_scale):
    a = complex_symmetric([2.0, 1.0, 0.5, -0.7, 0.1], imag_scale)
    v = np.random.default_rng(1).standard_normal(5) + 0.3j
    out = dense_funm(jnp.exp, jnp.asarray(a, complex), jnp.asarray(v))
    np.testing.assert_allclose(out, scipy.linalg.expm(a) @ v, rtol=1e-12)


def test_dense_funm_on_a_real_matrix_uses_eigh():
    a = random_symmetric([3.0, 1.0, -1.0, 0.2])
    v = np.arange(1.0, 5.0)
    np.testing.assert_allclose(
        dense_funm(jnp.exp, jnp.asarray(a), jnp.asarray(v)), scipy.linalg.expm(a) @ v, rtol=1e-12
    )


def test_dense_phi_is_a_matrix_logarithm_over_x():
    """x φ(x) = log(1 − x), so exp(A φ(A)) = I − A: a branch-free check, with
    eigenvalues on both sides of 1 and beyond 2 (complex-symmetric A)."""
    a = complex_symmetric([2.6, 1.6, 1.2, 0.5, -0.4], 0.03, seed=3)
    apply = jax.vmap(lambda e: dense_funm(log1m_over_x, jnp.asarray(a), e))
    phi_a = np.asarray(apply(jnp.eye(5, dtype=complex))).T
    np.testing.assert_allclose(scipy.linalg.expm(a @ phi_a), np.eye(5) - a, atol=1e-11)
    # Same branch as the scalar function: the eigenvalues of A φ(A) are shifted_log(1 − λ).
    lam = np.linalg.eigvals(a)
    logs = np.linalg.eigvals(a @ phi_a)
    expected = np.asarray(shifted_log(jnp.asarray(1 - lam)))
    np.testing.assert_allclose(np.sort_complex(logs), np.sort_complex(expected), atol=1e-10)


def spread_spectrum(n, seed=0):
    """A bulk near 0 and a few outliers, like a network Hessian."""
    rng = np.random.default_rng(seed)
    bulk = 0.05 * rng.standard_normal(n - 4)
    return np.concatenate([[3.0, 1.7, 1.3, -0.6], bulk])


@pytest.mark.parametrize("imag_scale", [0.0, 1e-3])
def test_lanczos_funm_matches_dense_on_a_spread_spectrum(imag_scale):
    n = 100
    a = jnp.asarray(complex_symmetric(spread_spectrum(n), imag_scale / np.sqrt(n)))
    v = jnp.asarray(np.random.default_rng(2).standard_normal(n), complex)
    fun = lambda lam: log1m_over_x(0.6 * lam)  # ηλ from −0.36 to 1.8
    exact = dense_funm(fun, a, v)
    approx = jax.jit(lambda a, v: lanczos_funm(fun, lambda x: a @ x, v, num_matvecs=36))(a, v)
    assert np.linalg.norm(approx - exact) < 1e-9 * np.linalg.norm(exact)


def test_lanczos_funm_exp_equals_scipy_expm():
    n = 80
    a = random_symmetric(np.linspace(-1.0, 1.0, n), seed=4)
    v = np.random.default_rng(5).standard_normal(n)
    out = lanczos_funm(jnp.exp, lambda x: jnp.asarray(a) @ x, jnp.asarray(v), num_matvecs=30)
    np.testing.assert_allclose(out, scipy.linalg.expm(a) @ v, rtol=1e-11)


def test_lanczos_basis_is_bilinear_orthonormal_and_tridiagonalises():
    n, m = 60, 12
    a = complex_symmetric(spread_spectrum(n, seed=1), 0.02, seed=1)
    rng = np.random.default_rng(6)
    v = rng.standard_normal(n) + 0.1j * rng.standard_normal(n)
    basis, diagonal, off, length = complex_symmetric_lanczos(
        lambda x: jnp.asarray(a) @ x, jnp.asarray(v), m
    )
    basis = np.asarray(basis)
    # Bilinear (no conjugation): QᵀQ = I and QᵀAQ = T.
    np.testing.assert_allclose(basis @ basis.T, np.eye(m), atol=1e-12)
    t = np.diag(diagonal) + np.diag(off, 1) + np.diag(off, -1)
    np.testing.assert_allclose(basis @ a @ basis.T, t, atol=1e-11)
    np.testing.assert_allclose(length * basis[0], v, rtol=1e-13)


def test_lanczos_is_exact_when_the_krylov_space_is_exhausted_and_vmaps():
    # Three distinct eigenvalues: the residual vanishes after three steps and the
    # recurrence must restart (not divide by zero); the result is exact. Batched with
    # vmap under jit (the restart's cond becomes a select).
    n = 40
    a = random_symmetric(np.repeat([2.0, 0.5, -1.0], [10, 10, 20]), seed=8)
    vs = np.random.default_rng(9).standard_normal((2, n))
    matvec = lambda x: jnp.asarray(a) @ x
    out = jax.jit(jax.vmap(lambda v: lanczos_funm(jnp.exp, matvec, v, 10)))(jnp.asarray(vs))
    np.testing.assert_allclose(out, vs @ scipy.linalg.expm(a).T, rtol=1e-12)
