"""Small problems with known answers, built here so tests do not depend on the zoo.

Each problem is built once per test process and shared: the same loss function, so the
library's compiled functions for it are reused from test to test.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

import flows


def random_symmetric(eigenvalues, seed=0):
    """H = Q diag(eigenvalues) Qᵀ with a random orthogonal Q (numpy, independent of flows)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return q @ np.diag(eigenvalues) @ q.T


def quadratic_problem(eigenvalues, seed=0):
    """½ wᵀHw as a Problem on a dict pytree, with H and w₀ returned for closed forms."""
    problem, h, w0 = _quadratic_problem(tuple(float(v) for v in eigenvalues), seed)
    return problem, h.copy(), w0.copy()


@functools.cache
def _quadratic_problem(eigenvalues, seed):
    h = jnp.asarray(random_symmetric(eigenvalues, seed))
    rng = np.random.default_rng(seed + 1)
    w0 = jnp.asarray(rng.standard_normal(len(eigenvalues)))
    n = len(eigenvalues)
    params0 = {"a": w0[: n // 2], "b": w0[n // 2 :].reshape(-1, 1)}

    def loss(params):
        w = jnp.concatenate([params["a"], params["b"].ravel()])
        return 0.5 * jnp.dot(w, h @ w)

    return flows.Problem(loss, params0, name="quadratic"), np.asarray(h), np.asarray(w0)


@functools.cache
def tanh_mlp_problem(n_in=3, width=6, n_out=2, n_data=10, seed=0):
    """A tiny tanh MLP with MSE, for tests on non-quadratic losses."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(k1, (n_data, n_in))
    y = jax.random.normal(k2, (n_data, n_out))
    params0 = {
        "w1": jax.random.normal(k3, (n_in, width)) / jnp.sqrt(n_in),
        "w2": jax.random.normal(k4, (width, n_out)) / jnp.sqrt(width),
    }

    def loss(params):
        out = jnp.tanh(x @ params["w1"]) @ params["w2"]
        return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))

    return flows.Problem(loss, params0, name="tiny_mlp")


def count_compilations(fn):
    """Run fn and count XLA compilations (JAX's own monitoring event), independent of flows."""
    compiled = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        result = fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return result, len(compiled)
