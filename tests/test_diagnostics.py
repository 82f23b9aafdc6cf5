"""`flows.diagnostics` against scipy and direct formulas."""

import numpy as np
import pytest
import scipy.ndimage

from flows.diagnostics import first_at_edge, gaussian_smooth, relative_distance


@pytest.mark.parametrize("sigma", [1.5, 50.0])
def test_gaussian_smooth_matches_scipy_nearest_mode(sigma):
    series = np.cumsum(np.random.default_rng(0).standard_normal(400)) + np.sin(np.arange(400))
    expected = scipy.ndimage.gaussian_filter1d(series, sigma=sigma, mode="nearest")
    np.testing.assert_allclose(gaussian_smooth(series, sigma), expected, rtol=1e-10, atol=1e-10)


def test_gaussian_smooth_rejects_bad_sigma():
    with pytest.raises(ValueError, match="sigma"):
        gaussian_smooth(np.ones(5), 0.0)


def test_relative_distance():
    reference = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    params = reference + np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 1.0]])
    out = np.asarray(relative_distance(params, reference))
    assert np.isnan(out[0])
    np.testing.assert_allclose(out[1:], [0.5 / 5.0, 1.0 / 10.0])


def test_first_at_edge():
    assert first_at_edge(np.array([0.0, 0.0, 1e-9, 0.0, 2.0])) == 2
    assert first_at_edge(np.zeros(4)) == -1
