"""The closed Gaussian smoothings of `hermite.smoothing` against 40-digit mpmath."""

from __future__ import annotations

import warnings

import mpmath as mp
import numpy as np
import pytest

from hermite.smoothing import exp_linear_smoothing


def _exp_linear_reference(alpha, mu, sigma, derivative):
    with mp.workdps(40):
        mu, sigma = mp.mpf(mu), mp.mpf(sigma)
        t = mu / sigma
        e_neg = mp.e ** (mu + sigma**2 / 2) * mp.ncdf(-t - sigma)
        if derivative:
            return mp.ncdf(t) + alpha * e_neg
        return mu * mp.ncdf(t) + sigma * mp.npdf(t) + alpha * (e_neg - mp.ncdf(-t))


@pytest.mark.parametrize("derivative", [0, 1])
@pytest.mark.parametrize("alpha", [1.0, -2.0, 1.6732632423543772])
def test_exp_linear_smoothing_at_every_deviation(alpha, derivative):
    """E[phi(mu + sigma Z)] for the exponential-linear family to 1e-15 of sqrt(mu^2 + sigma^2 + 1) (phi': of 1),
    sigma from 1e-3 to 1e7 and mu / sigma from -1e5 to 40 (found in review: e^(mu + sigma^2/2) Phi(-t - sigma)
    formed as one exponential lost ~eps sigma^2/2 of itself, 2.6e-13 at sigma = 1e4 and 2.6e-11 at 1e5)."""
    worst = 0.0
    for sigma in (1e-3, 0.1, 1.0, 3.0, 10.0, 1e2, 1e3, 1e4, 1e5, 1e7):
        t = np.array([-1e5, -40, -30, -5, -1, -1e-3, 0, 0.5, 3, 30, 40])
        mu = t * sigma
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            got = exp_linear_smoothing(alpha, 1.0, mu, sigma, derivative)
        for g, m in zip(got, mu):
            want = _exp_linear_reference(alpha, m, sigma, derivative)
            scale = 1.0 if derivative else float(mp.sqrt(mp.mpf(m) ** 2 + sigma**2 + 1))
            worst = max(worst, abs(float(g - want)) / scale)
    assert worst <= 1e-15


def test_exp_linear_smoothing_broadcasts():
    """mu and sigma broadcast against each other; a scalar mu gives a scalar."""
    mu = np.linspace(-30.0, 3.0, 5)[:, None]
    sigma = np.array([1.0, 2.0, 50.0])
    got = exp_linear_smoothing(1.0, 1.0, mu, sigma, 0)
    assert got.shape == (5, 3)
    for i in range(5):
        for j in range(3):
            assert got[i, j] == exp_linear_smoothing(1.0, 1.0, mu[i], float(sigma[j]), 0)[0]
    assert np.ndim(exp_linear_smoothing(1.0, 1.0, 0.3, 2.0, 1)) == 0
