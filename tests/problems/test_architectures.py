"""The zoo's ResNet and ViT: third derivatives (what a central flow differentiates) against
finite differences of Hessian-vector products, parameter counts by formula, per-example
independence (no batch coupling in the norms), and named errors for bad shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flows.linalg.hvp import hessian_quadratic_form_grad, hvp
from flows.problems import PROBLEMS, Dataset, digits, resnet, vit


@pytest.fixture(scope="module")
def images():
    return digits(n=6, flatten=False)


_third = jax.jit(lambda problem, w, u, v: hessian_quadratic_form_grad(problem.flat_loss, w, u, v))
_form = jax.jit(lambda problem, w, u, v: jnp.dot(u, hvp(problem.flat_loss, w, v)))
_hvp = jax.jit(lambda problem, w, v: hvp(problem.flat_loss, w, v))
_grad = jax.jit(lambda problem, w: jax.grad(problem.flat_loss)(w))


def _unit(key, n):
    v = jax.random.normal(key, (n,))
    return v / jnp.linalg.norm(v)


def _check_derivatives(problem):
    """∇(uᵀHv)·z and Hv against central differences (float64, step 1e-4: truncation error
    ~1e-8 relative, rounding ~1e-12/1e-4)."""
    w = problem.w0
    n = w.shape[0]
    u, v, z = (_unit(k, n) for k in jax.random.split(jax.random.key(7), 3))
    eps = 1e-4
    third = float(jnp.dot(_third(problem, w, u, v), z))
    fd = (float(_form(problem, w + eps * z, u, v)) - float(_form(problem, w - eps * z, u, v))) / (
        2 * eps
    )
    assert abs(fd) > 1e-4  # a real third derivative, not zero against zero
    assert third == pytest.approx(fd, rel=1e-6)
    # The Hessian-vector product itself against differences of gradients.
    hv = _hvp(problem, w, v)
    fd_hv = (_grad(problem, w + eps * v) - _grad(problem, w - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hv, fd_hv, rtol=0, atol=1e-7 * float(jnp.linalg.norm(hv)))


def test_resnet_third_derivatives_match_finite_differences(images):
    _check_derivatives(resnet(images, widths=(4, 8), groups=2))


def test_vit_third_derivatives_match_finite_differences(images):
    _check_derivatives(vit(images, patch=4, dim=8, depth=1, heads=2))


def test_resnet_parameter_count(images):
    c_in, widths, d_out = 1, (4, 8), 10

    def conv(a, b, k=3, bias=True):
        return k * k * a * b + (b if bias else 0)

    expected = conv(c_in, 4)  # stem
    expected += 2 * 4 + conv(4, 4) + 2 * 4 + conv(4, 4)  # block 1: norms, convs
    expected += 2 * 4 + conv(4, 8) + 2 * 8 + conv(8, 8) + conv(4, 8, k=1, bias=False)
    expected += 2 * 8 + 8 * d_out + d_out  # final norm, head
    problem = resnet(images, widths=widths, groups=2)
    assert problem.num_params == expected


def test_vit_parameter_count(images):
    dim, depth, ratio, patch, d_out = 8, 2, 2, 4, 10
    tokens = (8 // patch) ** 2
    norms, attention = 2 * 2 * dim, 4 * dim * dim  # q, k, v, o projections, no biases
    mlp = (dim * ratio * dim + ratio * dim) + (ratio * dim * dim + dim)
    per_block = norms + attention + mlp
    expected = patch * patch * dim + dim + tokens * dim + depth * per_block + 2 * dim
    expected += dim * d_out + d_out
    problem = vit(images, patch=patch, dim=dim, depth=depth, heads=2, mlp_ratio=ratio)
    assert problem.num_params == expected


@pytest.mark.parametrize("build", [resnet, vit])
def test_examples_are_independent(images, build):
    """Per-example norms: the prediction of an example does not depend on the others."""
    problem = build(images)
    whole = problem.predict(problem.params0)
    alone = build(Dataset(images.x[:2], images.y[:2], 10, "two")).predict(problem.params0)
    np.testing.assert_allclose(whole[:2], alone, rtol=1e-12, atol=1e-14)
    assert whole.shape == (6, 10)


def test_registered_for_configs():
    assert PROBLEMS["resnet"] is resnet and PROBLEMS["vit"] is vit


def test_bad_shapes_are_named(images):
    flat = digits(n=4)
    with pytest.raises(ValueError, match="resnet needs NHWC images"):
        resnet(flat)
    with pytest.raises(ValueError, match="vit needs NHWC images"):
        vit(flat)
    with pytest.raises(ValueError, match="patch 3 does not divide the image size 8×8"):
        vit(images, patch=3)
    with pytest.raises(ValueError, match="heads 3 does not divide dim 16"):
        vit(images, heads=3)
    with pytest.raises(ValueError, match="too small for 5 stages"):
        resnet(images, widths=(2, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="unknown activation 'elu'"):
        resnet(images, activation="elu")
    with pytest.raises(ValueError, match="depth"):
        vit(images, depth=0)
