"""The remainder terms by moment series (`hermite.remainder_moments`) against the tensor rules of
`hermite.asymptotic` (an independent discretization of the same integrals), mpmath, and the closed Gaussian
smoothing; their error bounds against their actual errors; the shortest Mehler orders of `hermite.pairs`
against the full sums; and the derivative series at small variances."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest

import hermite
from hermite import asymptotic as asy
from hermite import pairs
from hermite import remainder_moments as rm
from hermite.pairs import _moments
from hermite.smoothing import piecewise_smoothing

FAMILIES = [("silu", {}), ("softplus", {}), ("mish", {}), ("gelu_tanh", {}), ("tanh", {}), ("sigmoid", {}),
            ("softplus", {"beta": 0.5}), ("softplus", {"beta": 10.0}), ("elu", {}), ("selu", {}),
            ("elu", {"alpha": 0.5})]


def _entries(rng, n, core, lo=0.5, hi=4.0):
    """Variance pairs from 1e2 to 1e8 (ratios up to 10) and correlations of both signs whose smaller conditional
    deviation is R 10^u / 4, u uniform in [-lo, hi] (R the remainder's radius)."""
    R = core.asymptote[1]
    q1 = 10 ** rng.uniform(2, 8, n)
    q2 = q1 * 10 ** rng.uniform(-1, 1, n)
    dev = R * 10 ** rng.uniform(-lo, hi, n) / 4  # the smaller conditional deviation
    s = np.minimum(dev / np.sqrt(np.minimum(q1, q2)), 1.0)
    r = np.sqrt((1 - s) * (1 + s)) * rng.choice([-1.0, 1.0], n)
    return r, q1, q2, np.sqrt((1 - r) * (1 + r))


@pytest.mark.parametrize("name,params", FAMILIES)
@pytest.mark.parametrize("derivative", [0, 1])
def test_against_the_tensor_rules(name, params, derivative):
    """Where the bounds (held to `hermite.asymptotic.MOMENT_TOL` = 1e-15 of sqrt(E f^2 E g^2)) admit an entry,
    T1 + T2 + T3 agree with the tensor rules to 2e-15 of that scale; the bounds admit every entry whose
    conditional deviations exceed the radius."""
    core = hermite.activation(name, **params).core
    side = asy._side(core, derivative)
    assert side.moments is not None
    rng = np.random.default_rng(11 + derivative)
    r, q1, q2, s = _entries(rng, 400, core)
    scale = np.sqrt(_moments(core, q1, derivative) * _moments(core, q2, derivative))
    got, ok = rm.remainder_moments(side.moments, side.moments, r, np.sqrt(q1), np.sqrt(q2), s,
                                   asy.MOMENT_TOL * scale)
    wide = np.minimum(np.sqrt(q1), np.sqrt(q2)) * s >= 2 * core.asymptote[1]
    assert ok[wide].all() and ok.sum() >= 0.5 * r.size
    idx = np.nonzero(ok)[0]
    want = np.concatenate([asy._remainders(side, side, r[c], np.sqrt(q1[c]), np.sqrt(q2[c]), s[c])
                           for c in np.array_split(idx, max(1, idx.size // 40))])
    assert np.max(np.abs(got[idx] - want) / scale[idx]) < 2e-15


@pytest.mark.parametrize("terms", [((3, 4),), ((5, 8),), ((8, 12),)])
@pytest.mark.parametrize("name", ["silu", "tanh", "sigmoid"])
def test_bounds_cover_the_actual_error(name, terms, monkeypatch):
    """With few terms the series err visibly, and each entry's bound is at least its error against the tensor
    rules (which agree with mpmath to ~1e-16)."""
    core = hermite.activation(name).core
    side = asy._side(core, 0)
    rng = np.random.default_rng(5)
    r, q1, q2, s = _entries(rng, 300, core, lo=0.0, hi=2.0)
    monkeypatch.setattr(rm, "TERMS", terms)
    J, K = terms[0]
    with np.errstate(all="ignore"):
        got, err = rm._remainder_moments(side.moments, side.moments, r, np.sqrt(q1), np.sqrt(q2), s, J, K)
    finite = np.isfinite(err)
    assert finite.sum() >= 50
    idx = np.nonzero(finite)[0]
    want = np.concatenate([asy._remainders(side, side, r[c], np.sqrt(q1[c]), np.sqrt(q2[c]), s[c])
                           for c in np.array_split(idx, max(1, idx.size // 40))])
    actual = np.abs(got[idx] - want)
    scale = np.sqrt(q1[idx] * q2[idx])
    assert np.all(actual <= err[idx] + 1e-16 * scale)
    if terms[0][0] <= 5:
        assert np.max(actual / scale) > 1e-14  # the test can fail: these truncations are visible


@pytest.mark.parametrize("name,derivative", [("silu", 0), ("silu", 1), ("tanh", 0), ("sigmoid", 1)])
def test_taylor_series_of_the_smoothing(name, derivative):
    """sum_m (mu/sigma)^m (h0_m + sigma h1_m) / sqrt(m!) against the closed smoothing E[B(mu + sigma Z)] for
    |mu / sigma| <= 1 (the series' range here), sigma from 1e-2 to 1e3."""
    side = asy._side(hermite.activation(name).core, derivative)
    M = side.moments
    K = M.h0.size
    for sigma in (1e-2, 1.0, 30.0, 1e3):
        t = np.linspace(-1.0, 1.0, 41)
        mu = t * sigma
        want = piecewise_smoothing(side.pieces, mu, sigma, derivative)
        fact = np.sqrt([float(math.factorial(m)) for m in range(K)])
        got = (t[:, None] ** np.arange(K)[None, :] / fact) @ (M.h0 + sigma * M.h1)
        assert np.max(np.abs(got - want)) < 1e-14 * max(1.0, sigma)


def test_whole_remainder_against_mpmath():
    """silu at q1 = 1e6, q2 = 2e6, rho = 1 - 1e-4 (conditional deviations 14 and 20, where the moment series take
    the entry): T1 + T2 + T3 by 20-digit one- and two-dimensional integrals."""
    core = hermite.activation("silu").core
    side = asy._side(core, 0)
    q1, q2, rho = 1e6, 2e6, 1 - 1e-4
    s = math.sqrt((1 - rho) * (1 + rho))
    a1, a2 = math.sqrt(q1), math.sqrt(q2)
    got, ok = rm.remainder_moments(side.moments, side.moments, np.array([rho]), np.array([a1]), np.array([a2]),
                                   np.array([s]), np.array([1e-13 * a1 * a2 / 2]))
    assert ok[0]
    R = core.asymptote[1]
    with mp.workdps(20):
        def rem(x):
            return x / (1 + mp.exp(-x)) - max(x, 0)

        def smooth_relu(mu, sd):  # E relu(mu + sd Z)
            return mu * mp.ncdf(mu / sd) + sd * mp.npdf(mu / sd)

        def mixed(aa, ab, r):  # E[a(u) relu(v)], Var u = aa^2, Var v = ab^2
            return mp.quad(lambda x: rem(x) * mp.npdf(x / aa) / aa * smooth_relu(r * ab / aa * x, ab * s),
                           [-R, -10, 0, 10, R])

        def joint():
            sig1, sig2 = a1 * s, a2 * s
            c = rho / (sig1 * sig2)
            return mp.quad(lambda x, y: rem(x) * rem(y) * mp.exp(-x * x / (2 * sig1**2) - y * y / (2 * sig2**2)
                                                               + c * x * y), [-R, 0, R], [-R, 0, R]) \
                / (2 * mp.pi * a1 * a2 * s)

        want = float(mixed(a1, a2, rho) + mixed(a2, a1, rho) + joint())
    assert abs(got[0] - want) < 1e-13 * a1 * a2 / 2
    assert abs(got[0]) > 1e-10 * abs(want)  # a nonzero quantity


def test_kernel_through_the_moment_series_against_the_general_quadrature():
    """hermite.kernel of silu at large variances and rho near 1 (the no-norm regime of deep networks), where
    the moment series take the entries, against the general two-dimensional quadrature."""
    from hermite import quadrature

    core = hermite.activation("silu").core
    r = np.array([1 - 1e-3, 1 - 1e-4, 0.99999, -0.9999])
    q1, q2 = 4e5, 9e5
    got = hermite.kernel("silu", r, q1, q2)
    want = quadrature.pair_expectation(core.fn, core.fn, core, core, r, np.full(r.size, q1), np.full(r.size, q2))
    scale = math.sqrt(hermite.second_moment("silu", q1) * hermite.second_moment("silu", q2))
    assert np.max(np.abs(got - want)) < 1e-13 * scale


@pytest.mark.parametrize("name", ["silu", "tanh", "gelu_tanh"])
def test_shortest_mehler_orders_against_the_full_sums(name, monkeypatch):
    """Small distinct variances near rho = 1 (deep networks near a small fixed point) are proven at the order
    1024 and summed at a much shorter order: within the tolerance of the full sums, and shorter orders are
    used."""
    core = hermite.activation(name).core
    rng = np.random.default_rng(2)
    m = 80  # the strict upper triangle of a Gram of m inputs with distinct variances
    q = 0.02 * (1 + 1e-6 * rng.standard_normal(m))
    i, j = np.triu_indices(m, 1)
    q1, q2 = q[i], q[j]
    n = i.size
    r = 1 - 10 ** rng.uniform(-15, -8, n)
    used = []
    original = pairs.mehler_sum

    def spy(ca, cb, ia, ib, rr, **kw):
        used.append((ca.shape[1] - 1, rr.size))
        return original(ca, cb, ia, ib, rr, **kw)

    monkeypatch.setattr(pairs, "mehler_sum", spy)
    got = pairs.pair_kernel(core, core, r, q1, q2)
    short = sum(m for k, m in used if k < 1024)
    monkeypatch.setattr(pairs, "_shortest_sums",
                        lambda ca, cb, ta, tb, ia, ib, rp, scale, ok, K, out, pending:
                        out.__setitem__(pending[np.nonzero(ok)[0]],
                                        original(ca, cb, ia[ok], ib[ok], rp[ok])))
    used.clear()
    full = pairs.pair_kernel(core, core, r, q1, q2)
    scale = np.sqrt(core.second_moment(q1) * core.second_moment(q2))
    assert np.max(np.abs(got - full) / scale) < 2 * pairs.TOL
    assert short >= n // 2


def test_moment_series_only_where_the_inner_smoothing_is_closed():
    """elu and selu (closed inner smoothing in the general quadrature, 4x faster than the tensor rules) take the
    asymptotic path through the moment series only: the entries it returns are those the series admit, with
    the values of the full path, and narrow deviations are left to the caller."""
    core = hermite.activation("elu").core
    rng = np.random.default_rng(4)
    r, q1, q2, s = _entries(rng, 200, core, lo=1.0, hi=2.0)
    scale = np.sqrt(_moments(core, q1, 0) * _moments(core, q2, 0))
    full, ok_full = asy.asymptotic_pair(core, core, r, q1, q2, 0, scale)
    only, ok_only = asy.asymptotic_pair(core, core, r, q1, q2, 0, scale, tensor=False)
    side = asy._side(core, 0)
    _, admitted = rm.remainder_moments(side.moments, side.moments, r, np.sqrt(q1), np.sqrt(q2), s,
                                       asy.MOMENT_TOL * scale)
    assert ok_full.all() and 0 < ok_only.sum() < r.size
    assert np.array_equal(ok_only, admitted)
    assert np.array_equal(only[ok_only], full[ok_only])


@pytest.mark.parametrize("name", ["silu", "elu", "tanh"])
def test_truncation_estimate_bounds_the_truncation(name, monkeypatch):
    """The cheap per-entry estimate that picks an entry's first term counts is at least the exact truncation
    bound (the bound without its rounding part) at every term count."""
    core = hermite.activation(name).core
    side = asy._side(core, 0)
    rng = np.random.default_rng(9)
    r, q1, q2, s = _entries(rng, 300, core, lo=0.0, hi=3.0)
    a1, a2 = np.sqrt(q1), np.sqrt(q2)
    monkeypatch.setattr(rm, "_EPS", 0.0)
    with np.errstate(all="ignore"):
        for J, K in rm.TERMS:
            est = rm._truncation_estimate(side.moments, side.moments, r, a1, a2, s, J, K)
            _, exact = rm._remainder_moments(side.moments, side.moments, r, a1, a2, s, J, K)
            finite = np.isfinite(exact)
            assert finite.sum() > 50
            assert np.all(est[finite] >= exact[finite] * (1 - 1e-12))


@pytest.mark.parametrize("name", ["softplus", "sigmoid", "tanh"])
def test_derivative_series_at_small_variances(name):
    """Stein's lemma d_k = sqrt((k+1)/q) c_(k+1) magnifies the fast coefficients' error (~3e-14 of ||c||) at
    small q: softplus' on a Gram of 60 distinct variances in [1e-3, 30] erred 3.3e-12 of the scale at
    (rho, q1, q2) = (0.9853, 24.0, 1.0e-3) (found in review). The batch against each entry computed alone
    (one variance pair: the accurate path) and, for that entry, against the general quadrature."""
    rng = np.random.default_rng(1)
    q = 10 ** rng.uniform(-3, 1.5, 60)
    i, j = np.triu_indices(60, 1)
    r = (1 - 10 ** rng.uniform(-15, 0, i.size)) * rng.choice([-1.0, 1.0], i.size)
    core = hermite.activation(name).core
    batch = hermite.kernel(name, r, q[i], q[j], derivative=1)
    scale = np.sqrt(core.derivative_moment(q[i]) * core.derivative_moment(q[j]))
    pick = np.argsort(np.minimum(q[i], q[j]))[:40]  # the smallest variances, where the magnification is largest
    alone = np.array([hermite.kernel(name, r[k], q[i][k], q[j][k], derivative=1) for k in pick])
    assert np.max(np.abs(batch[pick] - alone) / scale[pick]) < 1e-13
    if name == "softplus":  # the entry of the review against the general two-dimensional quadrature
        from hermite import quadrature

        k = int(np.argmin(np.abs(q[i] - 24.01826690730531) + np.abs(q[j] - 0.0010063562710175783)))
        f = core.function(1)
        want = quadrature.pair_expectation(f, f, core, core, r[k:k + 1], q[i][k:k + 1], q[j][k:k + 1])[0]
        assert abs(batch[k] - want) < 1e-13 * scale[k]
