"""MaxPool's exact mean-field rule for k <= 4 (meanfield.layers.pooling) and Francazi et al.'s max-pooling
bias (bias.maxpool_gamma), against truths computed here.

Independent truths used:
- the moments of the maximum of k standard normals by mpmath quadrature of the order-statistic density
  k phi(x) Phi(x)^(k-1) at 30 digits;
- E[max_j x_j max_j y_j] by Hoeffding's identity Cov = double integral of F(s, t)^k - Phi(s)^k Phi(t)^k,
  with the bivariate normal CDF F from Owen's T function (scipy dblquad; a different route from the
  module's Plackett integrals);
- at rho = -1, E[max x min x] by the joint density of the extreme order statistics (scipy dblquad);
- Monte Carlo of the maxima;
- the research notes' table of gamma for linear and ReLU networks with max pooling (6 digits, derived there
  by quadrature).
"""

from __future__ import annotations

import math

import mpmath as mpm
import numpy as np
import pytest
import scipy.integrate as si
import scipy.special as sc

from meanfield import Activation, Block, Dense, MaxPool, Network, bias, propagate, simulate
from meanfield.layers.pooling import max_kernel, max_moments

TABLE = {  # k: (linear + max-pool, ReLU + max-pool), the notes' table
    2: (0.466942, 1.041469), 3: (1.280142, 1.704570), 4: (2.154934, 2.429259), 8: (5.434844, 5.464219)}


def bvn_cdf(h, k, r):
    """P(X <= h, Y <= k) for a standard bivariate normal of correlation r (Owen 1956, T function)."""
    if h == 0.0:
        h = 1e-300
    if k == 0.0:
        k = 1e-300
    s = math.sqrt(1.0 - r * r)
    beta = 0.0 if h * k > 0 else 0.5
    return (0.5 * sc.ndtr(h) + 0.5 * sc.ndtr(k) - sc.owens_t(h, (k - r * h) / (h * s))
            - sc.owens_t(k, (h - r * k) / (k * s)) - beta)


def hoeffding(rho, k):
    e = max_moments(k)[0]
    f = lambda t, s: bvn_cdf(s, t, rho) ** k - (sc.ndtr(s) * sc.ndtr(t)) ** k  # noqa: E731
    cov = si.dblquad(f, -9.0, 9.0, -9.0, 9.0, epsabs=1e-12, epsrel=1e-12)[0]
    return cov + e * e


@pytest.mark.parametrize("k", [2, 3, 4])
def test_moments_of_the_maximum(k):
    mpm.mp.dps = 30
    dens = lambda x: k * mpm.npdf(x) * mpm.ncdf(x) ** (k - 1)  # noqa: E731
    m1 = mpm.quad(lambda x: x * dens(x), [-mpm.inf, 0, mpm.inf])
    m2 = mpm.quad(lambda x: x * x * dens(x), [-mpm.inf, 0, mpm.inf])
    e, s = max_moments(k)
    assert abs(e - float(m1)) < 1e-15 and abs(s - float(m2)) < 1e-15
    assert max_kernel(1.0, k) == s and abs(max_kernel(0.0, k) - e * e) < 1e-15


@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("rho", [-0.6, 0.35, 0.85])
def test_kernel_against_hoeffding(k, rho):
    assert abs(max_kernel(rho, k) - hoeffding(rho, k)) < 2e-10


@pytest.mark.parametrize("k", [2, 3, 4])
def test_kernel_at_minus_one_and_slope_at_zero(k):
    """rho = -1: y = -x, so E[max x max(-x)] = -E[max x min x]; g'(0) = k P(0) = 1/k."""
    def joint(y, x):  # density of (min, max) = (x, y), x < y
        return x * y * k * (k - 1) * sc.ndtr(y - 0) ** 0 * (sc.ndtr(y) - sc.ndtr(x)) ** (k - 2) \
            * math.exp(-0.5 * (x * x + y * y)) / (2 * math.pi)
    emm = si.dblquad(joint, -10.0, 10.0, lambda x: x, 10.0, epsabs=1e-13, epsrel=1e-13)[0]
    assert abs(max_kernel(-1.0, k) + emm) < 1e-11
    h = 1e-5
    assert abs((max_kernel(h, k) - max_kernel(-h, k)) / (2 * h) - 1.0 / k) < 1e-8
    closed = {2: 0.0, 3: math.sqrt(3.0) / math.pi, 4: 3.0 / math.pi}[k]
    assert abs(max_kernel(-1.0, k) - closed) < 1e-14


def test_kernel_two_is_the_abs_arc_cosine_kernel_and_smooth_to_the_ends():
    r = np.linspace(-1, 1, 201)
    truth = 0.5 * (r + 2 / math.pi * (np.sqrt(1 - r * r) + r * np.arcsin(r)))
    np.testing.assert_allclose(max_kernel(r, 2), truth, rtol=0, atol=1e-15)
    for k in (3, 4):  # increasing in rho, within [g(-1), g(1)], no jump near +-1
        g = max_kernel(np.concatenate([[-1.0, -1 + 1e-12], r[1:-1], [1 - 1e-12, 1.0]]), k)
        assert np.all(np.diff(g) >= -1e-14)
        assert abs(g[1] - g[0]) < 1e-10 and abs(g[-1] - g[-2]) < 1e-10


@pytest.mark.parametrize("k, rho", [(3, 0.7), (4, -0.4), (4, 0.95)])
def test_kernel_against_monte_carlo(k, rho):
    rng = np.random.default_rng(k)
    N = 2_000_000
    x = rng.standard_normal((N, k))
    y = rho * x + math.sqrt(1 - rho * rho) * rng.standard_normal((N, k))
    p = x.max(axis=1) * y.max(axis=1)
    assert abs(p.mean() - max_kernel(rho, k)) < 5 * p.std() / math.sqrt(N)


def test_engine_is_exact_for_k_up_to_four():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((4, 7)) * np.array([[0.5], [1.0], [1.5], [2.0]])
    X[1] = 0.9 * X[0] + 0.3 * X[1]
    K0 = X @ X.T / 7
    for k in (3, 4):
        net = Network([Block([Dense(1.2, 0.2), MaxPool(k)]), Block([Dense(1.0, 0.1), MaxPool(k)])])
        t = propagate(net, K0)
        assert np.all(t.mc_error == 0)
        e, m2 = max_moments(k)
        for layer in (1, 2):
            G = (1.44 if layer == 1 else 1.0) * t.gram[layer - 1] + (0.04 if layer == 1 else 0.01)
            d = np.sqrt(np.diag(G))
            rho = np.clip(G / np.outer(d, d), -1, 1)
            np.fill_diagonal(rho, 1.0)
            np.testing.assert_allclose(t.gram[layer], np.outer(d, d) * max_kernel(rho, k), rtol=1e-13)
            np.testing.assert_allclose(t.means[layer], d * e, rtol=1e-14)
        Xs = np.linalg.cholesky(K0) * 2.0  # X X^T / 4 = K0
        sim = simulate(net, Xs, width=4096 * k, seeds=12, seed=k)
        se = sim.gram.std(axis=0, ddof=1) / math.sqrt(12)
        assert np.all(np.abs(sim.gram.mean(axis=0) - t.gram) <= 5 * se + 2.0 / 4096)
    t5 = propagate(Network([Block([Dense(1.0), MaxPool(5)])]), K0, mc_samples=2**14)
    assert t5.mc_error[1] > 0  # k >= 5: Monte Carlo, with its error reported


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_maxpool_gamma_table(k):
    lin, relu = TABLE[k]
    assert abs(bias.maxpool_gamma(k) - lin) < 6e-7
    assert abs(bias.maxpool_gamma(k, "relu") - relu) < 6e-7
    if k <= 4:
        e, m2 = max_moments(k)
        net = Network([Block([Dense(1.0), MaxPool(k)])])
        assert abs(bias.gamma(net) - e * e / (m2 - e * e)) < 1e-12
        assert abs(bias.maxpool_gamma(k) - bias.gamma(net)) < 1e-11


def test_relu_then_maxpool_monte_carlo_rule_within_its_error():
    net = Network([Block([Dense(2.0**0.5), Activation("relu"), MaxPool(3)])])
    t = propagate(net, np.eye(2), exchangeable=True, mc_samples=2**18)
    c = t.gram[1, 0, 1] / t.gram[1, 0, 0]
    g = bias.maxpool_gamma(3, "relu")
    cg = g / (1 + g)
    assert abs(c - cg) < 6 * t.mc_error[1] / t.gram[1, 0, 0]
