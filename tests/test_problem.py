"""`flows.Problem` is checked when it is made: a scalar, real loss of real floating-point
parameters, found out abstractly (nothing computed), in one readable ValueError."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows


def _sum_of_squares(params):
    return sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize(
    "loss, params0, match",
    [
        (lambda p: p["w"] * 2.0, {"w": jnp.ones(3)},
         r"^loss must return a scalar, got shape \(3,\)$"),
        (lambda p: jnp.sum(p["w"]), {"w": jnp.ones(3, jnp.int32)},
         r"^params0 must be real floating point: leaf \['w'\] has dtype int32$"),
        (lambda p: jnp.sum(p[1]), [jnp.ones(2), jnp.ones(2, bool)],
         r"params0 must be real floating point: leaf \[1\] has dtype bool"),
        (jnp.sum, jnp.ones(3, jnp.complex64),
         r"params0 must be real floating point: it has dtype complex64"),
        (lambda w: jnp.sum(w) * 1j, jnp.ones(3),
         r"^loss must be real at real parameters, got complex(64|128)$"),
        (lambda w: (jnp.sum(w), w), jnp.ones(3), r"^loss must return a scalar array, got a tuple$"),
        (lambda w: jnp.sum(w) > 0, jnp.ones(3),
         r"^loss must return a floating-point scalar, got bool$"),
        (lambda w: jnp.sum(w).astype(jnp.int32), jnp.ones(3),
         r"^loss must return a floating-point scalar, got int32$"),
        (None, jnp.ones(3), r"^loss must be a function of the parameters, got NoneType$"),
    ],
)
def test_a_bad_problem_says_what_is_wrong(loss, params0, match):
    with pytest.raises(ValueError, match=match) as info:
        flows.Problem(loss, params0)
    assert "\n" not in str(info.value)


def test_a_loss_that_fails_keeps_its_own_error_behind_a_one_line_prefix():
    data = jnp.ones((5, 4))

    def loss(w):  # closes over data of the wrong shape for the parameters
        return jnp.sum(data @ w)

    with pytest.raises(ValueError, match=r"^loss\(params0\) fails: TypeError: dot_general") as info:
        flows.Problem(loss, jnp.ones(3))
    assert "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, TypeError)  # the original, chained


def test_nothing_is_computed():
    # Computing this loss would need a 40 GB intermediate; checking it needs its shape only.
    def loss(w):
        big = jnp.tile(w, 100_000)
        return jnp.sum(jnp.outer(big, big))

    problem = flows.Problem(loss, jnp.ones(1, jnp.float32))
    assert problem.num_params == 1


def test_good_problems_and_python_scalars():
    mixed = {"a": 1.0, "b": np.float32(2.0)}
    assert flows.Problem(lambda p: p["a"] * p["b"], mixed).num_params == 2
    assert flows.Problem(lambda w: 1.0, jnp.ones(2)).num_params == 2  # a constant loss is a scalar
    with pytest.raises(ValueError, match=r"leaf \['n'\] has dtype int"):
        flows.Problem(lambda p: p["a"] * p["n"], {"a": 1.0, "n": 3})


def test_problems_rebuilt_inside_traced_code_still_work():
    problem = flows.Problem(_sum_of_squares, {"w": jnp.ones(3), "b": jnp.zeros(())})

    @jax.jit
    def made_inside(w):  # a Problem made through __init__ from tracers
        return flows.Problem(_sum_of_squares, w).flat_loss(w)

    np.testing.assert_allclose(made_inside(jnp.full(3, 2.0)), 12.0)
    np.testing.assert_allclose(jax.vmap(made_inside)(jnp.ones((2, 3))), [3.0, 3.0])
    np.testing.assert_allclose(jax.grad(made_inside)(jnp.ones(3)), 2.0 * np.ones(3))

    # Rebuilt from leaves (tree_map, tree_at, vmap over a batch of problems): no check runs.
    doubled = jax.tree_util.tree_map(lambda x: 2 * x if eqx.is_array(x) else x, problem)
    assert float(doubled.flat_loss(doubled.w0)) == 12.0
    moved = eqx.tree_at(lambda p: p.params0, problem, {"w": jnp.zeros(3), "b": jnp.ones(())})
    assert float(moved.flat_loss(moved.w0)) == 1.0
    batch = jax.tree_util.tree_map(
        lambda x: jnp.stack([x, 3 * x]) if eqx.is_array(x) else x, problem
    )
    losses = eqx.filter_vmap(lambda p: p.flat_loss(p.w0))(batch)
    np.testing.assert_allclose(losses, [3.0, 27.0])

    # The principal flow evaluates the loss at complex parameters: still allowed.
    value = problem.flat_loss(problem.w0 * (1 + 1j))
    assert jnp.iscomplexobj(value)
    np.testing.assert_allclose(value, 3 * (1 + 1j) ** 2)
    assert problem.astype(jnp.float32).w0.dtype == jnp.float32
