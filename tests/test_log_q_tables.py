"""The octave tables of Hermite coefficients in log q (`hermite.log_q_tables`) against the accurate quadrature,
their verification, and the determinism of the engines that use them."""

from __future__ import annotations

import numpy as np
import pytest

import hermite
from hermite import cores, log_q_tables, quadrature
from hermite.activations import activation


def _fresh():
    log_q_tables._CACHE.clear()
    cores._MEMO.clear()


@pytest.mark.parametrize("name", ["tanh", "silu", "elu", "selu", "gelu_tanh", "softplus", "mish"])
@pytest.mark.parametrize("K", [32, 256])
def test_tables_match_the_accurate_coefficients(name, K):
    """Over 10 octaves (q from 2^-3 to 2^7) the tables agree with the public accurate quadrature (fast=False,
    no tables) to 1e-13 of ||c(q)|| in the largest coefficient and 5e-13 in the l2 norm (the fast direct rules
    the tables are built from are ~1e-14 per coefficient)."""
    _fresh()
    core = activation(name).core
    Q = np.exp2(np.random.default_rng(K).uniform(-3.0, 7.0, 60))
    out = np.full((Q.size, K + 1), np.nan)
    done = log_q_tables.octave_coefficients(core, K, Q, out, quadrature._fast_direct)
    assert done.all()
    ref = quadrature.hermite_coefficients(core, K, Q)
    norm = np.sqrt(np.sum(ref * ref, axis=1))
    assert np.max(np.abs(out - ref).max(axis=1) / norm) < 1e-13
    assert np.max(np.sqrt(np.sum((out - ref) ** 2, axis=1)) / norm) < 5e-13


def test_order_1024_at_large_variance():
    _fresh()
    core = activation("silu").core
    Q = np.exp2(np.linspace(5.01, 8.99, 20))
    out = np.empty((Q.size, 1025))
    assert log_q_tables.octave_coefficients(core, 1024, Q, out, quadrature._fast_direct).all()
    ref = quadrature.hermite_coefficients(core, 1024, Q)
    assert np.max(np.abs(out - ref).max(axis=1) / np.sqrt(np.sum(ref * ref, axis=1))) < 1e-13


def test_second_moments_from_the_tables():
    """E phi(sqrt(q) z)^2 for many variances (the tables of phi^2 at K = 0) against one-variance quadrature."""
    _fresh()
    act = activation("gelu_tanh")
    Q = np.exp2(np.random.default_rng(0).uniform(-4.0, 9.0, 40))
    m = act.core.second_moment(Q)
    ref = np.array([act.core.numerical_second_moment(np.array([q]))[0] for q in Q])
    np.testing.assert_allclose(m, ref, rtol=1e-13, atol=0)


def test_a_table_that_fails_verification_is_not_used():
    """Node values with a kink in log q (not analytic) fail the trailing-coefficient test at every level: the
    octave is left to the direct path, and the failure is remembered (no rebuild)."""
    _fresh()
    core = activation("tanh").core
    calls = []

    def kinked(f, K, Q):
        calls.append(Q.size)
        c = quadrature._fast_direct(f, K, Q)
        return c * (1.0 + 1e-6 * np.abs(np.log2(Q) - 0.5))[:, None]

    Q = np.exp2(np.linspace(0.01, 0.99, 20))
    out = np.zeros((Q.size, 33))
    done = log_q_tables.octave_coefficients(core, 32, Q, out, kinked)
    assert not done.any() and np.all(out == 0.0)
    n = len(calls)
    assert log_q_tables.octave_coefficients(core, 32, Q, out, kinked).sum() == 0 and len(calls) == n


def test_few_variances_are_computed_directly():
    _fresh()
    core = activation("tanh").core
    Q = np.exp2(np.linspace(0.1, 3.0, log_q_tables.MIN_VARIANCES - 1))
    out = np.zeros((Q.size, 33))
    assert not log_q_tables.octave_coefficients(core, 32, Q, out, quadrature._fast_direct).any()
    assert not log_q_tables._CACHE


def test_results_do_not_depend_on_the_cache():
    """A call gives the same numbers whether its tables are cached or rebuilt (a table is a function of its
    octave only), so results never depend on what ran before."""
    rng = np.random.default_rng(3)
    n = 200
    r = rng.uniform(-1.0, 1.0, n)
    q1 = np.exp2(rng.uniform(-2.0, 6.0, n))
    q2 = np.exp2(rng.uniform(-2.0, 6.0, n))
    _fresh()
    first = hermite.kernel("silu", r, q1, q2)
    cores._MEMO.clear()
    cached = hermite.kernel("silu", r, q1, q2)
    _fresh()
    rebuilt = hermite.kernel("silu", r, q1, q2)
    np.testing.assert_array_equal(first, cached)
    np.testing.assert_array_equal(first, rebuilt)


def test_chebyshev_transform_is_exact_on_polynomials():
    """The type-I cosine transform and the recurrence reproduce a polynomial of degree < m exactly (to rounding)."""
    m = 17
    x = np.cos(np.pi * np.arange(m) / (m - 1))
    coef = np.random.default_rng(1).standard_normal((m, 3))
    values = np.polynomial.chebyshev.chebval(x, coef).T
    A = log_q_tables._chebyshev_coefficients(values)
    np.testing.assert_allclose(A, coef, atol=1e-14)
    xs = np.linspace(-1.0, 1.0, 11)
    np.testing.assert_allclose(log_q_tables._chebyshev_values(xs, A), np.polynomial.chebyshev.chebval(xs, coef).T,
                               atol=1e-13)


def test_octaves_near_the_float64_range():
    """At q ~ 1e300 the node values' squares overflow; the coefficient scale is formed without overflow (it
    was inf, so that any table passed its checks), and the tables stay accurate there, without a
    floating-point warning."""
    _fresh()
    act = activation("x*tanh(x)")
    Q = np.concatenate([[1e300, 3e299, 1e-300], np.exp2(np.linspace(-3.0, 3.0, 20))])
    with np.errstate(over="raise", invalid="raise"):
        m = act.core.second_moment(Q)
    ref = np.array([act.core.numerical_second_moment(np.array([q]))[0] for q in Q])
    np.testing.assert_allclose(m, ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["silu", "softplus", "gelu_tanh", "x*tanh(2*x)"])
def test_engine_means_from_the_tables(name):
    """`Activation.mean_at(..., fast=True)` (the engines' call without a norm: many variances) against the public
    accurate mean, over 200 variances from 1e-2 to 1e4: within 3e-14 of sqrt(E f^2) (E f'(u): of its value)."""
    act = hermite.activation(name)
    q = 10 ** np.random.default_rng(3).uniform(-2, 4, 200)
    for d in (0, 1):
        exact, fast = act.mean_at(q, d), act.mean_at(q, d, fast=True)
        scale = np.sqrt(act.second_moment_at(q)) if d == 0 else np.maximum(np.abs(exact), 1e-300)
        assert np.max(np.abs(fast - exact) / scale) < 3e-14


def test_mean_of_an_odd_activation_is_not_integrated(monkeypatch):
    """E f(u) of an odd core is 0 by symmetry: mean_at returns gamma * beta without computing coefficients
    (the coefficient path gives c_0 = 0 exactly, so the value is the same)."""
    from dataclasses import replace

    act = replace(hermite.activation("tanh"), gamma=1.5, beta=0.25)
    q = np.array([0.5, 2.0, 40.0])
    want = act.gamma * (act.core.coefficients(1, act.gain**2 * q)[:, 0] + act.beta)

    def fail(*args, **kwargs):
        raise AssertionError("coefficients computed for an odd core's mean")

    monkeypatch.setattr(type(act.core), "coefficients", fail)
    np.testing.assert_array_equal(act.mean_at(q, 0), want)
    np.testing.assert_array_equal(want, np.full(3, 1.5 * 0.25))
