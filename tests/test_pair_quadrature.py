"""The two-dimensional kernel quadrature laid out for many entries at once (`hermite.quadrature`): the vectorized
panel layouts against their one-entry definitions, the batched sums against the entry-by-entry rule, the wider
outer panels against a much finer rule, and the later Gauss-Hermite inner rules of the chain against the panel
rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

import hermite
from hermite import quadrature
from hermite.basis import panel_rule


def _graded_breaks_reference(L, wmax, splits=(), graded=(), reach=None):
    """The panel layout as first written (one point at a time): the definition the vectorized code follows."""
    reach = wmax if reach is None else reach
    pts = [-L, L]
    pts.extend(z for z in splits if -L < z < L)
    for z0, h in graded:
        if not (-L - reach < z0 < L + reach):
            continue
        w = h
        while w < reach:
            for z in (z0 - w, z0 + w):
                if -L < z < L:
                    pts.append(z)
            w *= 2.0
    pts = np.unique(np.asarray(pts, dtype=np.float64))
    out = [pts[0]]
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(1, math.ceil((b - a) / wmax - 1e-9))
        out.extend(a + (b - a) * np.arange(1, n) / n)
        out.append(b)
    return np.asarray(out)


def test_graded_breaks_equal_the_one_point_at_a_time_definition():
    rng = np.random.default_rng(0)
    for i in range(400):
        L = float(rng.choice([5.0, 11.0, 20.0]))
        wmax = float(rng.choice([0.1, 0.5, 2.0]))
        splits = list(rng.uniform(-1.2 * L, 1.2 * L, rng.integers(0, 4)))
        graded = [(float(rng.uniform(-1.3 * L, 1.3 * L)), float(10.0 ** rng.uniform(-300, 1)))
                  for _ in range(rng.integers(0, 4))]
        if i % 5 == 0:
            graded.append((0.0, 1e-300))
        reach = None if i % 2 else float(rng.uniform(0.1, 3.0))
        got = quadrature.graded_breaks(L, wmax, splits, graded, reach=reach)
        np.testing.assert_array_equal(got, _graded_breaks_reference(L, wmax, splits, graded, reach))


def _entries(rng, n):
    r = np.concatenate([1 - 10.0 ** rng.uniform(-14, -0.3, n // 2), rng.uniform(-1, 1, n // 4),
                        -1 + 10.0 ** rng.uniform(-14, -1, n - n // 2 - n // 4)])
    r[:2] = [0.0, 0.5]
    Q1 = 10.0 ** rng.uniform(-2, 4, n)
    Q2 = Q1 * 10.0 ** rng.uniform(-0.5, 0.5, n)
    return r, Q1, Q2


@pytest.mark.parametrize("name", ["elu", "tanh", "gelu_tanh", "hardtanh"])
def test_batched_outer_rule_is_the_one_entry_rule(name):
    """Node for node (bitwise) the rule `_pair_one` builds from `_outer_breaks` of its points."""
    core = hermite.activation(name).core
    r, Q1, Q2 = _entries(np.random.default_rng(1), 60)
    s = np.sqrt(np.maximum((1 - r) * (1 + r), 0.0))
    a, b = np.sqrt(Q1), np.sqrt(Q2)
    rows, z, w = quadrature._batched_outer(core, core, r, a, b, s)
    wmax = quadrature._outer_width(core, core)
    for i in range(r.size):
        pts = [(t / a[i], 0.0) for t in core.kinks] + [(t / a[i], 1.0 / a[i]) for t in core.features]
        if r[i] != 0.0:
            pts += [(t / (b[i] * r[i]), s[i] / abs(r[i])) for t in core.kinks]
            pts += [(t / (b[i] * r[i]), max(s[i], 1.0 / b[i]) / abs(r[i])) for t in core.features]
        z1, w1 = panel_rule(quadrature._outer_breaks(pts, wmax), quadrature._M_OUTER)
        np.testing.assert_array_equal(z[rows == i], z1)
        np.testing.assert_array_equal(w[rows == i], w1)


def _scale(core, Q1, Q2, derivative):
    m = core.second_moment if derivative == 0 else core.derivative_moment
    return np.sqrt(m(Q1) * m(Q2))


@pytest.mark.parametrize("name", ["elu", "selu", "silu", "softplus", "tanh", "relu6"])
@pytest.mark.parametrize("derivative", [0, 1])
def test_batched_sums_equal_the_entry_by_entry_rule(name, derivative):
    core = hermite.activation(name).core
    f = core.function(derivative)
    r, Q1, Q2 = _entries(np.random.default_rng(2), 80)

    def smoothing(mu, sigma):
        return core.closed_smoothing(mu, sigma, derivative)

    batched = quadrature.pair_expectation(f, f, core, core, r, Q1, Q2, smoothing)
    one = np.array([quadrature._pair_one(f, f, core, core, float(r[i]), float(Q1[i]), float(Q2[i]), smoothing)
                    for i in range(r.size)])
    assert np.max(np.abs(batched - one) / _scale(core, Q1, Q2, derivative)) < 2e-15


@pytest.mark.parametrize("name", ["elu", "selu", "silu", "tanh", "gelu_tanh", "tanh(3*x)", "x*tanh(2*x)"])
def test_outer_panels_of_width_two_agree_with_a_rule_16_times_finer(name, monkeypatch):
    """The outer panels are at most 2 wide away from the graded points (at most 0.5 for oscillating
    functions); a rule with panels of at most 1/8 is the reference."""
    core = hermite.activation(name).core
    rng = np.random.default_rng(4)
    r, Q1, Q2 = _entries(rng, 12 if name == "gelu_tanh" else 24)
    for derivative in (0, 1):
        f = core.function(derivative)

        def smoothing(mu, sigma, d=derivative):
            return core.closed_smoothing(mu, sigma, d)

        got = quadrature.pair_expectation(f, f, core, core, r, Q1, Q2, smoothing)
        with monkeypatch.context() as m:
            m.setattr(quadrature, "OUTER_WIDTH", 1.0 / 8.0)
            fine = quadrature.pair_expectation(f, f, core, core, r, Q1, Q2, smoothing)
        assert np.max(np.abs(got - fine) / _scale(core, Q1, Q2, derivative)) < 5e-15


@pytest.mark.parametrize("name, sigma", [("tanh", 0.6), ("softplus", 1.0), ("silu", 1.0)])
def test_second_gauss_hermite_pair_matches_the_panel_rule(name, sigma):
    """Where the inner deviation nears the distance of the activation's poles from the real axis (pi/2 for
    tanh, pi for softplus and silu) the 24- and 36-node rules disagree; a later pair is accepted and agrees
    with the panel rule `_inner` (the independent method)."""
    core = hermite.activation(name).core
    mu = np.linspace(-4.0, 4.0, 41)
    first = quadrature._GH_INNER[:2]
    vals = []
    for N in first:
        zg, wg = quadrature._gh_nodes(N)
        vals.append(core.fn(mu[:, None] + sigma * zg[None, :]) @ wg)
    assert np.max(np.abs(vals[0] - vals[1])) > quadrature._GH_INNER_TOL * np.max(np.abs(vals[1]))
    G = quadrature._inner_gauss_hermite(core.fn, mu, sigma)
    assert G is not None
    panel = quadrature._inner(core.fn, core, mu, sigma)
    assert np.max(np.abs(G - panel)) <= 2e-15 * np.max(np.abs(panel))


def test_entries_declined_by_both_pairs_come_back_as_nan():
    mu = np.linspace(-3.0, 3.0, 7)
    G = quadrature._inner_gauss_hermite(np.tanh, np.concatenate([mu, mu]),
                                        np.concatenate([np.full(7, 0.1), np.full(7, 40.0)]), starts=[0, 7])
    assert G is not None and np.all(np.isfinite(G[:7])) and np.all(np.isnan(G[7:]))


@pytest.mark.parametrize("name", ["softplus", "silu", "tanh"])
def test_same_function_integrates_inside_over_the_smaller_variance(name):
    """For E[f(u) f(v)], `pair_kernel` hands the quadrature the larger variance outside and the smaller inside
    (where the inner deviation sqrt(Q2 (1 - r^2)) straddles 1, Gauss-Hermite is then accepted instead of the
    panel rule): the kernel is bitwise symmetric in (q1, q2), and agrees with the quadrature in the other
    orientation (a different rule) to 5e-15 of sqrt(E f^2 E f^2)."""
    from hermite.pairs import pair_kernel

    core = hermite.activation(name).core
    rng = np.random.default_rng(11)
    Q1 = 10.0 ** rng.uniform(1, 3, 24)
    Q2 = Q1 * 10.0 ** rng.uniform(0.3, 1.0, 24)  # Q2 > Q1
    s = rng.uniform(0.6, 1.4, 24) / np.sqrt(Q2)  # inner deviation sqrt(Q2) s around 1 in the given orientation
    r = np.sqrt(1 - s * s)
    for derivative in (0, 1):
        got = pair_kernel(core, core, r, Q1, Q2, derivative)
        np.testing.assert_array_equal(got, pair_kernel(core, core, r, Q2, Q1, derivative))
        f = core.function(derivative)
        other = quadrature.pair_expectation(f, f, core, core, r, Q1, Q2,
                                            lambda mu, sigma, d=derivative: core.closed_smoothing(mu, sigma, d))
        assert np.max(np.abs(got - other) / _scale(core, Q1, Q2, derivative)) < 5e-15


@pytest.mark.parametrize("name", ["softplus", "silu", "gelu_tanh"])
@pytest.mark.parametrize("derivative", [0, 1])
def test_gauss_hermite_takes_the_asymptote_far_from_the_remainder(name, derivative):
    """With ``far`` (`hermite.asymptotic.far_field`) the Gauss-Hermite inner rules evaluate g only where
    |mu| < R + 12 sigma and take the closed smoothing of the asymptote elsewhere: the result agrees with the
    panel rule `_inner` (the independent method) everywhere on mu in [-300, 300]."""
    from hermite.asymptotic import far_field

    core = hermite.activation(name).core
    g = core.function(derivative)
    R, closed = far_field(core, derivative)
    seen = []

    def counted(x):
        seen.append(x)
        return g(x)

    mu = np.concatenate([np.linspace(-300.0, 300.0, 241), np.linspace(-60.0, 60.0, 97)])
    sigma = 0.7
    G = quadrature._inner_gauss_hermite(counted, mu, sigma, far=(R, closed))
    assert G is not None and np.all(np.isfinite(G))
    evaluated = np.concatenate([x.ravel() for x in seen])
    zmax = max(float(quadrature._gh_nodes(N)[0].max()) for N in quadrature._GH_INNER)
    assert np.max(np.abs(evaluated)) <= R + 12 * sigma + zmax * sigma  # nodes of mu within R + 12 sigma only
    assert evaluated.size < 0.6 * mu.size * sum(quadrature._GH_INNER)
    panel = quadrature._inner(g, core, mu, sigma)
    assert np.max(np.abs(G - panel)) <= 2e-15 * np.max(np.abs(panel))
    near = np.abs(mu) < 30.0  # where the remainder matters, against the panel rule's own scale there
    assert np.max(np.abs(G[near] - panel[near])) <= 2e-15 * max(np.max(np.abs(panel[near])), 1.0)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softplus", "mish", "elu", "hardtanh"])
def test_same_function_kernel_is_bitwise_symmetric_on_every_route(name):
    """`pair_kernel(f, f, ...)` orients every entry before any route (series, closed form, asymptotic rule,
    quadrature), so swapping q1 and q2 changes no bit; the entries below reach every route of the family
    (the asymptotic rule of sigmoid' and tanh' was not symmetric before: review finding, 2e-16)."""
    from hermite.pairs import pair_kernel

    core = hermite.activation(name).core
    rng = np.random.default_rng(21)
    n = 96
    Q1 = 10.0 ** rng.uniform(-1, 4, n)
    Q2 = Q1 * 10.0 ** rng.uniform(-1, 1, n)
    s = 10.0 ** rng.uniform(-3, 0.5, n) / np.sqrt(np.minimum(Q1, Q2))
    r = np.sqrt(np.clip(1 - s * s, 0, 1)) * rng.choice([-1, 1], n)
    r[:12] = rng.uniform(-0.9, 0.9, 12)
    for derivative in (0, 1):
        np.testing.assert_array_equal(pair_kernel(core, core, r, Q1, Q2, derivative),
                                      pair_kernel(core, core, r, Q2, Q1, derivative))
