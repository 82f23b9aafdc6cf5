"""The builders refuse sizes, seeds and values they cannot use, naming the argument."""

import numpy as np
import pytest

from flows.problems import (
    Dataset,
    chebyshev,
    cnn,
    deep_linear,
    diagonal_quadratic,
    digits,
    mlp,
    quadratic,
    reference_mlp,
    synthetic_classification,
    synthetic_regression,
)

DATA = synthetic_regression(n=8, d_in=3)


@pytest.mark.parametrize("widths", [[32.5], [-3, 32], [0], ["a"], [True], 32, "32"])
def test_mlp_widths_are_positive_integers(widths):
    with pytest.raises(ValueError, match=r"^widths must be (a list of )?positive integers, got"):
        mlp(DATA, widths=widths)


def test_mlp_widths_accept_integers_of_any_kind():
    problem = mlp(DATA, widths=(np.int64(4), 2))
    assert problem.num_params == 3 * 4 + 4 + 4 * 2 + 2 + 2 * 1 + 1
    assert mlp(DATA, widths=[]).num_params == 3 + 1  # a linear model


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: cnn(digits(n=4, flatten=False), channels=[0]), r"channels must be positive"),
        (lambda: cnn(digits(n=4, flatten=False), channels=[2.5]), r"channels must be positive"),
        (lambda: deep_linear(DATA, width=0), r"^width must be a positive integer, got 0$"),
        (lambda: deep_linear(DATA, width=-2), r"^width must be a positive integer, got -2$"),
        (lambda: deep_linear(DATA, depth=0), r"^depth must be a positive integer, got 0$"),
        (lambda: chebyshev(degree=-1), r"^degree must be a non-negative integer, got -1$"),
        (lambda: chebyshev(n=0), r"^n must be a positive integer, got 0$"),
        (lambda: chebyshev(width=0), r"^width must be a positive integer, got 0$"),
        (lambda: mlp(DATA, widths=[4], seed=-1), r"^seed must be a non-negative integer, got -1$"),
        (lambda: reference_mlp(seed=-1), r"^seed must be a non-negative integer"),
        (lambda: quadratic([1.0, 2.0], seed=-1), r"^seed must be a non-negative integer"),
        (lambda: quadratic([1.0, "a"]), r"^eigenvalues must be a list of numbers, got \[1.0, 'a'"),
        (lambda: quadratic([1.0, 2.0], w0=["a", 1.0]), r"^w0 must be a vector of numbers"),
        (lambda: diagonal_quadratic(theta=(1.0, 2.0, 3.0)), r"^theta must be 2 numbers"),
        (lambda: diagonal_quadratic(theta=("a", 1.0)), r"^theta must be 2 numbers"),
    ],
)
def test_other_sizes_and_values_are_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: synthetic_regression(n=0), r"^n must be a positive integer, got 0$"),
        (lambda: synthetic_regression(n=-3), r"^n must be a positive integer, got -3$"),
        (lambda: synthetic_regression(d_in=0), r"^d_in must be a positive integer, got 0$"),
        (lambda: synthetic_regression(d_out=0), r"^d_out must be a positive integer, got 0$"),
        (lambda: synthetic_regression(n=2.5), r"^n must be a positive integer, got 2.5$"),
        (lambda: synthetic_regression(seed=-1), r"^seed must be a non-negative integer"),
        (lambda: synthetic_classification(n=0), r"^n must be a positive integer, got 0$"),
        (lambda: synthetic_classification(d_in=0), r"^d_in must be a positive integer"),
        (lambda: synthetic_classification(num_classes=1), r"^num_classes must be an integer ≥ 2"),
        (lambda: digits(n=0), r"^n must be a positive integer, got 0$"),
        (lambda: digits(n=True), r"^n must be a positive integer, got True$"),
        (lambda: digits(classes=[True]), r"unknown class True"),
        (lambda: digits(classes=[1.0]), r"unknown class 1.0"),
    ],
)
def test_data_set_sizes_are_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_a_network_refuses_an_empty_data_set():
    empty_inputs = Dataset(np.zeros((4, 0)), np.ones((4, 1)), name="no_features")
    with pytest.raises(ValueError, match=r"data 'no_features' is empty"):
        mlp(empty_inputs, widths=[4])
    no_targets = Dataset(np.ones((4, 2)), np.ones((4, 0)), name="no_targets")
    with pytest.raises(ValueError, match=r"data 'no_targets' is empty"):
        mlp(no_targets, widths=[4])
    no_examples = Dataset(np.ones((0, 8, 8, 1)), np.ones((0, 2)), name="none")
    with pytest.raises(ValueError, match=r"data 'none' is empty"):
        cnn(no_examples)
