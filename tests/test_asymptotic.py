"""Kernels of activations that are piecewise linear up to a localized remainder (`hermite.asymptotic`) against
the general two-dimensional quadrature (`hermite.quadrature.pair_expectation`, an independent method) and
mpmath; the declared asymptotes and radii against the functions themselves."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest

import hermite
from hermite import quadrature
from hermite.asymptotic import MIN_DEVIATION, asymptotic_pair
from hermite.bivariate import linear_pieces
from hermite.cores import _moments

FAMILIES = ["silu", "softplus", "mish", "gelu_tanh", "tanh", "sigmoid"]
TOL = 1e-13


def _core(name):
    return hermite.activation(name).core


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("derivative", [0, 1])
def test_against_two_dimensional_quadrature(name, derivative):
    """Random variance pairs (q from 1 to 1e5, ratios up to 100) and correlations from generic to the
    threshold deviation sqrt(q) s = MIN_DEVIATION, both signs."""
    core = _core(name)
    rng = np.random.default_rng(7 + derivative)
    n = 12
    q1 = 10 ** rng.uniform(0, 5, n)
    q2 = q1 * 10 ** rng.uniform(-2, 2, n)
    s = 10 ** rng.uniform(-0.2, 1.5, n) / np.sqrt(np.minimum(q1, q2))
    r = np.sqrt(np.clip(1 - s**2, 0, 1)) * rng.choice([-1, 1], n)
    r[:4] = rng.uniform(-1, 1, 4)
    scale = np.sqrt(_moments(core, q1, derivative) * _moments(core, q2, derivative))
    got, ok = asymptotic_pair(core, core, r, q1, q2, derivative, scale)
    assert ok.sum() >= n // 2
    f = core.function(derivative)
    with np.errstate(over="ignore"):
        want = quadrature.pair_expectation(f, f, core, core, r[ok], q1[ok], q2[ok])
    assert np.max(np.abs(got[ok] - want) / scale[ok]) < TOL


def test_against_mpmath_where_the_general_quadrature_errs():
    """mish' at q = 1e5, rho = 0: E f'(u)^2 by a 30-digit integral (where the general 2-D quadrature's inner
    Gauss-Hermite rules agreed on a wrong value, 2e-8 off, until they were kept to small deviations)."""
    core = _core("mish")
    q = 1e5
    got, ok = asymptotic_pair(core, core, np.array([0.0]), np.array([q]), np.array([q]), 1, np.array([0.5]))
    assert ok[0]
    with mp.workdps(30):
        def fp(x):
            sp = mp.log(1 + mp.exp(x))
            return mp.tanh(sp) + x / (1 + mp.exp(-x)) / mp.cosh(sp) ** 2

        sq = mp.sqrt(q)
        mean = mp.quad(lambda x: fp(x) * mp.npdf(x / sq) / sq, [-mp.inf, -40, -10, -3, 0, 3, 10, 40, mp.inf])
        want = float(mean * mean)
    assert abs(got[0] - want) < 1e-15


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("derivative", [0, 1])
def test_declared_radius_bounds_the_remainder(name, derivative):
    """|f^(d)(x) - A^(d)(x)| <= 1e-16 for radius <= |x| <= 4 radius: the rules may stop at the radius."""
    core = _core(name)
    pieces, radius = core.asymptote
    lin = linear_pieces(pieces, derivative)
    x = np.concatenate([-np.linspace(radius, 4 * radius, 301), np.linspace(radius, 4 * radius, 301)])
    A = sum(np.where((x >= a) & (x < b), p0 + p1 * x, 0.0) for a, b, p0, p1 in lin)
    with np.errstate(over="ignore"):
        rem = core.function(derivative)(x) - A
    assert np.max(np.abs(rem)) <= 1e-16 * np.maximum(1.0, np.abs(x)).max()


def test_small_deviation_is_left_to_the_caller():
    core = _core("silu")
    q = np.array([400.0, 400.0])
    r = np.array([1.0 - 0.1 / 400.0, 0.5])  # sqrt(q) s = 0.45 and 17
    assert math.sqrt(400.0 * (1 - r[0] ** 2)) < MIN_DEVIATION
    _, ok = asymptotic_pair(core, core, r, q, q, 0, np.full(2, 200.0))
    assert ok.tolist() == [False, True]


def test_general_quadrature_step_like_inner_function():
    """The general quadrature's inner Gauss-Hermite rules are not used at large deviations, where a step-like
    function fooled both: silu' at q ~ 1e4 and rho = 0.0045 is 1/4 + asin(rho)/(2 pi) + O(1/sqrt(q)), not 1/4."""
    core = _core("gelu_tanh")
    r, q1, q2 = 0.004508023810162465, 8764.853855556423, 4312.026604143241
    got = quadrature.pair_expectation(core.derivative, core.derivative, core, core, np.array([r]),
                                      np.array([q1]), np.array([q2]))[0]
    series = hermite.kernel("gelu_tanh", r, q1, q2, derivative=1)  # the Mehler series converges at this rho
    assert abs(got - series) < TOL
    assert abs(got - (0.25 + math.asin(r) / (2 * math.pi))) < 1e-3


def test_kernel_uses_it_and_agrees_at_every_correlation():
    """hermite.kernel at large variance: the whole correlation range (series, this path, quadrature near 1)
    against the general quadrature."""
    core = _core("softplus")
    r = np.array([-0.99999, -0.9, -0.3, 0.3, 0.9, 0.999, 0.99999, 1 - 1e-9])
    q1, q2 = 800.0, 1300.0
    got = hermite.kernel("softplus", r, q1, q2)
    want = quadrature.pair_expectation(core.fn, core.fn, core, core, r, np.full(r.size, q1), np.full(r.size, q2))
    scale = math.sqrt(hermite.kernel("softplus", 1.0, q1) * hermite.kernel("softplus", 1.0, q2))
    assert np.max(np.abs(got - want)) < TOL * scale
