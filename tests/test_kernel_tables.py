"""Kernel tables (hermite.tables) and closed-form Gaussian smoothing (hermite.smoothing).

Independent truths: the arc-cosine closed form (a user callable relu through the table), the generic
two-dimensional quadrature with its numerical inner rule (for the smoothing closed forms), the proven
Mehler series at moderate rho (for the quadrature that uses the smoothing), and the accurate path entry by
entry (for every table of a built-in without a closed kernel, rho = +-1 included).
"""

import numpy as np
import pytest

import hermite
from hermite import quadrature, tables
from hermite.builtins import builtin_names
from hermite.pairs import pair_kernel

CONTRACT = 1e-12  # relative to sqrt(E phi(u)^2 E phi(v)^2)


def _rho_grid():
    r = np.linspace(-1.0, 1.0, 161)
    tiny = np.logspace(-16, -2, 15)
    return np.concatenate([r, 1.0 - tiny, -1.0 + tiny, [0.0, 1.0, -1.0]])


def _scale(core, q1, q2, derivative):
    Q = np.array([q1, q2])
    m = core.second_moment(Q) if derivative == 0 else core.derivative_moment(Q)
    return float(np.sqrt(m[0] * m[1]))


def _tabulated_builtins():
    """Built-ins whose kernel is not closed form (the ones tables serve), with the derivative orders they have."""
    out = []
    for name in builtin_names():
        core = hermite.activation(name).core
        if core.closed_kernel(np.array([0.5]), 1.0, 1.0, 0) is not None:
            continue
        out.append((name, 0))
        if not core.jumps and core.derivative is not None:
            out.append((name, 1))
    return out


KINKED = [("elu", {}), ("elu", {"alpha": 0.5}), ("selu", {}), ("hardtanh", {}),
          ("hardtanh", {"min_val": -0.5, "max_val": 2.0}), ("relu6", {})]


@pytest.mark.parametrize("name,params", KINKED)
@pytest.mark.parametrize("derivative", [0, 1])
def test_closed_smoothing_matches_the_numerical_inner_rule(name, params, derivative):
    core = hermite.activation(name, **params).core
    g = core.function(derivative)
    mu = np.concatenate([np.linspace(-8.0, 8.0, 41), [0.0, 1e-9, -1e-9, 6.0, -0.5, 2.0]])
    for sigma in (1e-10, 1e-3, 0.2, 1.0, 4.0, 30.0):
        closed = core.closed_smoothing(mu, sigma, derivative)
        numeric = quadrature._inner(g, core, mu, sigma)
        np.testing.assert_allclose(closed, numeric, rtol=1e-13, atol=1e-13)


def test_generic_cores_have_no_closed_smoothing():
    core = hermite.activation("tanh").core
    assert core.closed_smoothing(np.zeros(3), 1.0, 0) is None


@pytest.mark.parametrize("name", ["elu", "selu", "hardtanh", "relu6"])
def test_quadrature_with_smoothing_matches_the_proven_series(name):
    """At moderate rho the Mehler series is proven; the (smoothed) quadrature is an independent method."""
    core = hermite.activation(name).core
    r = np.array([-0.6, -0.2, 0.0, 0.3, 0.7])
    for q1, q2 in ((1.0, 1.0), (0.4, 3.0)):
        Q1, Q2 = np.full(r.size, q1), np.full(r.size, q2)
        for derivative in (0, 1):
            series = pair_kernel(core, core, r, Q1, Q2, derivative)  # proven series at these rho

            def smoothing(mu, sigma, d=derivative):
                return core.closed_smoothing(mu, sigma, d)

            f = core.function(derivative)
            quad = quadrature.pair_expectation(f, f, core, core, r, Q1, Q2, smoothing)
            assert np.max(np.abs(quad - series)) <= CONTRACT * _scale(core, q1, q2, derivative)


@pytest.mark.parametrize("name,derivative", _tabulated_builtins())
def test_every_builtin_table_meets_the_contract_everywhere(name, derivative):
    core = hermite.activation(name).core
    r = _rho_grid()
    for q1, q2 in ((1.0, 1.0), (0.5, 2.0)):
        table = tables.build_table(core, q1, q2, derivative)
        assert table is not None, f"{name}: no table at ({q1}, {q2})"
        assert table.error <= tables.CHECK_TOL
        exact = pair_kernel(core, core, r, np.full(r.size, q1), np.full(r.size, q2), derivative)
        err = np.max(np.abs(table(r.copy()) - exact)) / _scale(core, q1, q2, derivative)
        assert err <= CONTRACT, f"{name} d={derivative} ({q1}, {q2}): {err:.2e}"
        # rho = +-1 are panel ends: reproduced to rounding
        ends = table(np.array([1.0, -1.0]))
        np.testing.assert_allclose(ends, exact[-2:], rtol=0, atol=1e-14 * table.scale)


@pytest.mark.parametrize("derivative", [0, 1])
def test_user_callable_with_declared_kink_against_the_arc_cosine_closed_form(derivative):
    f = hermite.activation(lambda x: np.maximum(x, 0.0), kinks=(0.0,), derivative=lambda x: (x > 0) * 1.0)
    relu = hermite.activation("relu").core
    r = np.concatenate([np.linspace(-1.0, 1.0, 1001), 1 - np.logspace(-16, -2, 15), -1 + np.logspace(-16, -2, 15)])
    q1, q2 = 1.3, 0.7
    table = tables.table_for(f.core, q1, q2, derivative)
    assert table is not None
    truth = relu.closed_kernel(r, q1, q2, derivative)
    assert np.max(np.abs(table(r.copy()) - truth)) <= CONTRACT * table.scale
    # through the public function: r.size >= TABLE_MIN entries share the pair, so the table answers
    assert r.size >= tables.TABLE_MIN
    k = hermite.kernel(f, r, q1, q2, derivative=derivative)
    assert np.max(np.abs(k - truth)) <= CONTRACT * table.scale


def test_table_is_symmetric_in_the_variances_and_memoized():
    core = hermite.activation("tanh").core
    t12 = tables.table_for(core, 0.5, 2.0)
    t21 = tables.table_for(core, 2.0, 0.5)
    assert t12 is t21
    r = np.linspace(-1, 1, 31)
    exact = pair_kernel(core, core, r, np.full(31, 2.0), np.full(31, 0.5))
    assert np.max(np.abs(t21(r.copy()) - exact)) <= CONTRACT * t21.scale


def test_grouped_variance_pairs_use_tables_and_the_accurate_path_for_the_rest():
    core = hermite.activation("elu").core
    rng = np.random.default_rng(3)
    n = 2 * tables.TABLE_MIN + 40
    r = rng.uniform(-1, 1, n)
    r[:4] = [1.0, -1.0, 1 - 1e-13, -1 + 1e-13]
    Q1 = np.concatenate([np.full(tables.TABLE_MIN, 1.0), np.full(tables.TABLE_MIN, 2.0), rng.uniform(0.5, 2, 40)])
    Q2 = np.concatenate([np.full(tables.TABLE_MIN, 1.0), np.full(tables.TABLE_MIN, 0.5), rng.uniform(0.5, 2, 40)])
    Q2[tables.TABLE_MIN: tables.TABLE_MIN + 200] = 2.0  # swapped order: the same pair (0.5, 2)
    Q1[tables.TABLE_MIN: tables.TABLE_MIN + 200] = 0.5
    got = tables.tabulated_kernel(core, r, Q1, Q2)
    exact = pair_kernel(core, core, r, Q1, Q2)
    m = core.second_moment(np.array([0.5, 1.0, 2.0]))
    assert np.max(np.abs(got - exact)) <= CONTRACT * float(m.max())


def test_a_table_that_does_not_converge_falls_back_to_the_accurate_path(monkeypatch):
    core = hermite.activation("softplus").core
    monkeypatch.setattr(tables, "MAX_PANELS", 4)  # fewer than the 8 starting panels: never converges
    assert tables.build_table(core, 0.9, 0.9) is None
    r = np.linspace(-1, 1, tables.TABLE_MIN + 1)
    Q = np.full(r.size, 0.9)
    np.testing.assert_array_equal(tables.tabulated_kernel(core, r, Q, Q), pair_kernel(core, core, r, Q, Q))



def test_compiled_and_numpy_evaluations_agree():
    table = tables.table_for(hermite.activation("silu").core, 1.7, 1.7)
    rng = np.random.default_rng(5)
    r = np.concatenate([rng.uniform(-1, 1, tables.NUMBA_MIN), [1.0, -1.0, 0.0, 1 - 1e-15, -1 + 1e-15]])
    big = table(r)  # compiled loop (numpy where numba is missing)
    small = np.concatenate([table(r[i:i + 1000].copy()) for i in range(0, r.size, 1000)])  # numpy
    np.testing.assert_array_equal(big, small)  # the same arithmetic in the same order
    exact = pair_kernel(table_core := hermite.activation("silu").core, table_core, r[-5:], np.full(5, 1.7),
                        np.full(5, 1.7))
    assert np.max(np.abs(big[-5:] - exact)) <= CONTRACT * table.scale


@pytest.mark.parametrize("name", ["tanh", "silu", "gelu_tanh", "softplus"])
def test_gauss_hermite_inner_rule_matches_the_panel_rule(name, monkeypatch):
    """Near rho = +-1 a smooth activation's inner integral takes two Gauss-Hermite rules; the panel rule
    (forced here) is the independent method."""
    core = hermite.activation(name).core
    r = np.concatenate([1 - np.logspace(-14, -1, 6), -1 + np.logspace(-14, -1, 6)])
    for q1, q2 in ((1.0, 1.0), (0.3, 4.0), (25.0, 25.0)):
        Q1, Q2 = np.full(r.size, q1), np.full(r.size, q2)
        for derivative in (0, 1):
            f = core.function(derivative)
            fast = quadrature.pair_expectation(f, f, core, core, r, Q1, Q2)
            with monkeypatch.context() as m:
                m.setattr(quadrature, "_inner_gauss_hermite", lambda *args: None)
                panel = quadrature.pair_expectation(f, f, core, core, r, Q1, Q2)
            assert np.max(np.abs(fast - panel)) <= 1e-14 * _scale(core, q1, q2, derivative)


def test_gauss_hermite_inner_rule_declines_a_wide_gaussian():
    mu = np.linspace(-3, 3, 7)
    assert quadrature._inner_gauss_hermite(np.tanh, mu, 0.1) is not None
    assert quadrature._inner_gauss_hermite(np.tanh, mu, 40.0) is None  # tanh's kink-like step at this scale


@pytest.mark.parametrize("name, q", [("tanh", 1.0), ("hardtanh", 25.0), ("silu", 1.7)])
def test_compiled_eight_chains_equal_numpy_with_and_without_lookup(name, q):
    """The compiled loop runs eight entries' Clenshaw chains side by side plus a remainder loop; sizes around
    multiples of 8, with the panel lookup table and with the search through the breaks, give the numpy
    path's values bit for bit."""
    import dataclasses

    table = tables.table_for(hermite.activation(name).core, q, q)
    assert table is not None
    rng = np.random.default_rng(9)
    for T in (table, dataclasses.replace(table, lut=np.empty(0, dtype=np.int64))):
        for n in (tables.NUMBA_MIN, tables.NUMBA_MIN + 3, tables.NUMBA_MIN + 7):
            r = np.concatenate([rng.uniform(-1, 1, n - 6), [1.0, -1.0, 0.0, 1 - 1e-15, -1 + 1e-15, 0.5]])
            rng.shuffle(r)
            big = T(r)
            small = np.concatenate([T(r[i:i + 1000].copy()) for i in range(0, r.size, 1000)])
            np.testing.assert_array_equal(big, small)


def test_the_compiled_loop_is_loaded_from_numbas_disk_cache():
    """The second process that evaluates a large table loads the compiled loop from numba's disk cache instead of
    compiling it (it was compiled again, 1.7 s, in every process while `evaluate` captured `local` as a closure
    variable, which numba cannot key across processes)."""
    import subprocess
    import sys

    pytest.importorskip("numba")
    code = ("import numpy as np, hermite\n"
            "from hermite import tables\n"
            "from hermite.compiled_tables import evaluate\n"
            "t = tables.build_table(hermite.activation('tanh').core, 0.8, 0.8)\n"
            "t(np.linspace(-1.0, 1.0, 2 * tables.NUMBA_MIN))\n"
            "print(sum(evaluate.stats.cache_hits.values()), sum(evaluate.stats.cache_misses.values()))\n")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    hits, misses = (int(x) for x in runs[-1])
    assert (hits, misses) == (1, 0), runs
