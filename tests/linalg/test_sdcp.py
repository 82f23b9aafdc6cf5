"""The in-JAX SDCP solver against independent truth: the k = 1 closed form, scipy on the
equivalent convex QP (Burer–Monteiro factorization X = LLᵀ, several starts), and the
defining complementarity conditions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from flows.linalg.rayleigh_ritz import BlockRayleighRitz, block_rayleigh_ritz
from flows.linalg.sdcp import psd_projection, smat, solve_sdcp, svec
from tests.helpers import random_symmetric

solve = jax.jit(solve_sdcp)


def gram_problem(k, n=12, seed=0, scales=True):
    """α_ij = ⟨g_ij, h⟩, β_ijkl = ⟨g_ij, g_kl⟩ with symmetric g_ij of varied scales."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((k, k, n))
    if scales:
        g = g * np.exp(rng.standard_normal((k, 1, 1)))
    g = 0.5 * (g + g.transpose(1, 0, 2))
    h = 2 * rng.standard_normal(n)
    return np.einsum("ijn,n->ij", g, h), np.einsum("ijn,kln->ijkl", g, g)


def qp_objective(x, alpha, beta):
    return 0.5 * np.einsum("ij,ijkl,kl", x, beta, x) + np.sum(alpha * x)


def scipy_qp(alpha, beta, starts=4):
    """min_{X ⪰ 0} ½⟨X, β[X]⟩ + ⟨α, X⟩ over X = LLᵀ with BFGS, best of several starts."""
    k = alpha.shape[0]
    best = None
    for seed in range(starts):
        start = np.random.default_rng(100 + seed).standard_normal(k * k)

        def objective(flat):
            factor = flat.reshape(k, k)
            return qp_objective(factor @ factor.T, alpha, beta)

        result = scipy.optimize.minimize(
            objective, start, method="BFGS", options={"gtol": 1e-12, "maxiter": 20000}
        )
        if best is None or result.fun < best.fun:
            best = result
    factor = best.x.reshape(k, k)
    return factor @ factor.T, best.fun


def assert_complementarity(x, m, scale, atol=1e-9):
    x, m = np.asarray(x), np.asarray(m)
    assert np.linalg.eigvalsh(x).min() >= -atol * scale
    assert np.linalg.eigvalsh(m).min() >= -atol * scale
    assert abs(np.sum(x * m)) <= atol * scale**2


def test_one_dimensional_closed_form():
    # X = max(0, −α/β): e.g. σ² = 2⟨−g, ∇S⟩/‖∇S‖² for a single eigenvalue at the edge.
    for a, b in [(-3.0, 2.0), (0.5, 4.0), (-1e-3, 1e-2), (0.0, 1.0)]:
        solution = solve(jnp.asarray([[a]]), jnp.asarray(b).reshape(1, 1, 1, 1))
        np.testing.assert_allclose(solution.x[0, 0], max(0.0, -a / b), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(solution.m[0, 0], a + b * max(0.0, -a / b), atol=1e-12)


@pytest.mark.parametrize("k", [2, 4])
def test_matches_scipy_on_the_convex_qp(k):
    for seed in range(2):
        alpha, beta = gram_problem(k, seed=seed + 10 * k)
        solution = solve(jnp.asarray(alpha), jnp.asarray(beta))
        reference, reference_value = scipy_qp(alpha, beta)
        value = qp_objective(np.asarray(solution.x), alpha, beta)
        scale = max(np.abs(reference).max(), 1e-6)
        assert value <= reference_value + 1e-9 * abs(reference_value) + 1e-14
        np.testing.assert_allclose(solution.x, reference, atol=1e-5 * scale)
        assert_complementarity(solution.x, solution.m, max(scale, np.abs(alpha).max()))
        assert float(solution.residual) < 1e-10


def test_solution_can_be_rank_deficient_and_rotated():
    # β = identity: X = Π₊(−α), whose range is a rotated, non-coordinate direction.
    alpha = np.array([[-1.0, 2.0], [2.0, -1.0]])
    beta = np.einsum("ik,jl->ijkl", np.eye(2), np.eye(2))
    beta = 0.5 * (beta + beta.transpose(0, 1, 3, 2))
    solution = solve(jnp.asarray(alpha), jnp.asarray(beta))
    np.testing.assert_allclose(solution.x, 1.5 * np.array([[1.0, -1.0], [-1.0, 1.0]]), atol=1e-12)


def test_zero_solution_when_alpha_is_psd():
    alpha = random_symmetric([3.0, 1.0, 0.2], seed=3)
    _, beta = gram_problem(3, seed=4)
    solution = solve(jnp.asarray(alpha), jnp.asarray(beta))
    np.testing.assert_array_equal(solution.x, np.zeros((3, 3)))


def test_zero_beta_gives_zero_and_says_whether_that_solves_it():
    # β = 0 (vanishing third derivatives, as on a quadratic): X = 0 solves the SDCP iff
    # α ⪰ 0; otherwise there is no solution, and the residual of X = 0 says so.
    beta = jnp.zeros((2, 2, 2, 2))
    psd = solve(jnp.asarray(random_symmetric([0.08, 0.05], seed=1)), beta)
    np.testing.assert_array_equal(psd.x, np.zeros((2, 2)))
    assert float(psd.residual) == 0.0
    indefinite = solve(jnp.asarray(random_symmetric([0.08, -0.05], seed=1)), beta)
    np.testing.assert_array_equal(indefinite.x, np.zeros((2, 2)))
    # ‖Π₊(−α)‖ / ‖α‖ for X = 0
    assert np.isclose(float(indefinite.residual), 0.05 / np.hypot(0.08, 0.05), rtol=1e-12)


@pytest.mark.parametrize("k", [3, 5])
def test_complementarity_on_many_ill_conditioned_problems(k):
    # Eigendirections of very different scales (Gram tensors as in the central flow),
    # some with fewer data than unknowns (singular β): the defining conditions hold.
    problems = [gram_problem(k, n=n, seed=1000 * k + s) for s in range(12) for n in (12, 40)]
    alphas = jnp.asarray(np.stack([a for a, _ in problems]))
    betas = jnp.asarray(np.stack([b for _, b in problems]))
    solutions = jax.jit(jax.vmap(lambda a, b: solve_sdcp(a, b, max_iterations=100)))(alphas, betas)
    for (alpha, beta), x in zip(problems, np.asarray(solutions.x)):
        m = alpha + np.einsum("ijkl,kl->ij", beta, x)  # M recomputed independently
        assert_complementarity(x, m, np.abs(alpha).max(), atol=1e-8)


def test_vmap_equals_one_by_one():
    problems = [gram_problem(2, seed=s) for s in range(2)]
    alphas = jnp.asarray(np.stack([a for a, _ in problems]))
    betas = jnp.asarray(np.stack([b for _, b in problems]))
    batched = jax.jit(jax.vmap(solve_sdcp))(alphas, betas).x
    for i in range(2):
        np.testing.assert_allclose(batched[i], solve(alphas[i], betas[i]).x, atol=1e-12)


def test_svec_is_an_isometry_and_projection_clips_eigenvalues():
    x = jnp.asarray(random_symmetric([2.0, -1.0, 0.5], seed=1))
    y = jnp.asarray(random_symmetric([1.0, 3.0, -2.0], seed=2))
    np.testing.assert_allclose(svec(x) @ svec(y), jnp.sum(x * y), rtol=1e-12)
    np.testing.assert_allclose(smat(svec(x), 3), x, atol=1e-14)
    values, vectors = np.linalg.eigh(np.asarray(x))
    expected = vectors @ np.diag(np.maximum(values, 0)) @ vectors.T
    np.testing.assert_allclose(psd_projection(x), expected, atol=1e-12)


def test_block_rayleigh_ritz_from_a_warm_start_matches_dense_eigh():
    spectrum = np.concatenate([[5.0, 4.0, 3.9, 2.0], np.linspace(-6.0, 1.0, 56)])
    h = random_symmetric(spectrum, seed=9)
    values, vectors = np.linalg.eigh(h)
    top = vectors[:, ::-1][:, :4]
    # A warm start: the true vectors, perturbed.
    warm = top + 0.05 * np.random.default_rng(1).standard_normal(top.shape)
    hj = jnp.asarray(h)
    found, found_vectors, image, _ = block_rayleigh_ritz(
        lambda v: hj @ v, jnp.asarray(warm), max_iterations=30, rtol=1e-9
    )
    np.testing.assert_allclose(found, values[::-1][:4], rtol=1e-10)
    np.testing.assert_allclose(image, h @ np.asarray(found_vectors), atol=1e-10)
    overlaps = np.abs(np.sum(np.asarray(found_vectors) * top, axis=0))
    np.testing.assert_allclose(overlaps, 1.0, atol=1e-8)
    pairs = BlockRayleighRitz()(lambda v: hj @ v, jnp.zeros(60), 3, init=jnp.asarray(warm))
    np.testing.assert_allclose(pairs.values, values[::-1][:3], rtol=1e-7)


def test_block_rayleigh_ritz_small_space_is_exact():
    h = random_symmetric([3.0, -1.0, 0.5], seed=2)
    found, _, _, _ = block_rayleigh_ritz(
        lambda v: jnp.asarray(h) @ v, jnp.ones((3, 2)), max_iterations=0
    )
    np.testing.assert_allclose(found, [3.0, 0.5], rtol=1e-12)


@pytest.mark.parametrize("k, seed, rank", [(1, 0, 1), (2, 1, 1), (2, 15, 2), (3, 2, 1), (3, 3, 2)])
def test_derivative_is_the_implicit_one(k, seed, rank):
    """Forward-mode derivative of X(α, β) along a perturbation of the Gram data (g_ij, h),
    against central finite differences of the solver (and, for k = 1, the closed form
    dX = −dα/β + α dβ/β² where X > 0), for solutions of full and of deficient rank."""
    rng = np.random.default_rng(seed)
    n = 12
    g = rng.standard_normal((k, k, n))
    g = 0.5 * (g + g.transpose(1, 0, 2))
    h = 2 * rng.standard_normal(n)
    dg = rng.standard_normal((k, k, n))
    dg = 0.5 * (dg + dg.transpose(1, 0, 2))
    dh = rng.standard_normal(n)

    def solution(t):
        gt, ht = g + t * dg, h + t * dh
        alpha = jnp.einsum("ijn,n->ij", gt, ht)
        beta = jnp.einsum("ijn,kln->ijkl", gt, gt)
        return solve_sdcp(alpha, beta).x

    x, dx = jax.jit(lambda t: jax.jvp(solution, (t,), (jnp.ones_like(t),)))(jnp.asarray(0.0))
    step = 1e-6
    finite = (solution(jnp.asarray(step)) - solution(jnp.asarray(-step))) / (2 * step)
    assert np.linalg.norm(dx) > 1e-3 * np.linalg.norm(x) > 0
    np.testing.assert_allclose(dx, finite, atol=1e-6 * np.abs(finite).max())
    if k == 1:
        alpha, beta = float(np.dot(g[0, 0], h)), float(np.dot(g[0, 0], g[0, 0]))
        dalpha = float(np.dot(dg[0, 0], h) + np.dot(g[0, 0], dh))
        dbeta = float(2 * np.dot(g[0, 0], dg[0, 0]))
        assert alpha < 0
        np.testing.assert_allclose(dx[0, 0], -dalpha / beta + alpha * dbeta / beta**2, rtol=1e-9)
    assert np.sum(np.linalg.eigvalsh(np.asarray(x)) > 1e-9 * np.abs(x).max()) == rank
