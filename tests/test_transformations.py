"""Tests of meanfield.transformations: the gamma forms, the estimators, the Hermite view, the mean-field blocks."""

import math

import numpy as np
import pytest
import scipy.integrate as si
from scipy.stats import norm

import hermite
import meanfield
from meanfield import transformations as tr


def _tanh_d1(x):
    return 1 - np.tanh(x) ** 2


# ----------------------------------------------------------------------------------------------------
# the paper's gamma forms, re-derived from the authors' code
# ----------------------------------------------------------------------------------------------------
def _authors_transform(x, gammatype):
    """ltmlp_transform.m for one tanh layer, written out from the MATLAB (x: units x samples, as there):
    alpha = -mean(tanh'(x), 2); beta = -mean(tanh(x) + alpha x, 2); then gamma from nonlin with [alpha beta 1]."""
    alpha = -np.mean(1 - np.tanh(x) ** 2, axis=1, keepdims=True)
    beta = -np.mean(np.tanh(x) + alpha * x, axis=1, keepdims=True)
    f = 1.0 * (np.tanh(x) + (alpha * x + beta))
    df = 1.0 * ((1 - np.tanh(x) ** 2) + alpha)
    if gammatype == 1:
        gamma = (np.mean(f**2, axis=1) * np.mean(df**2, axis=1) + 1e-4) ** -0.25
    else:
        gamma = (np.mean(f**2, axis=1) + 1e-2) ** -0.5
    return alpha[:, 0], beta[:, 0], gamma


@pytest.mark.parametrize("form, gammatype", [("vatanen_geometric", 1), ("vatanen_variance", 2)])
def test_empirical_is_the_authors_code(form, gammatype):
    rng = np.random.default_rng(0)
    U = rng.standard_normal((500, 6)) * [0.05, 0.3, 1.0, 2.0, 4.0, 1.0] + [0.0, 0.4, -1.0, 0.0, 1.0, 3.0]
    alpha, beta, gamma = _authors_transform(U.T, gammatype)
    t = tr.empirical("tanh", U, gamma=form)
    np.testing.assert_allclose(t.alpha, alpha, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(t.beta, beta, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(t.gamma, gamma, rtol=1e-12)
    assert t.gamma_form == form and t.units == 6
    # the default is the authors' default, gammatype 1
    np.testing.assert_array_equal(tr.empirical("tanh", U).gamma, tr.empirical("tanh", U, "vatanen_geometric").gamma)


def test_regularizers_cap_gamma_at_ten():
    """A unit whose transformed output vanishes (tanh of tiny inputs is linear): the paper's forms give gamma -> 10
    (1e-4^(-1/4) = 1e-2^(-1/2) = 10), the toolkit's unregularized forms blow up or are undefined."""
    assert tr.REGULARIZERS == {"vatanen_geometric": 1e-4, "vatanen_variance": 1e-2}
    for form in ("vatanen_geometric", "vatanen_variance"):
        assert float(tr.gamma_value(0.0, 0.0, form)) == pytest.approx(10.0, rel=1e-15)
        s = np.logspace(-3, 0.5, 12)
        g = tr.gaussian("tanh", s**2, gamma=form).gamma
        assert np.all(g <= 10.0) and np.all(np.diff(g) <= 0) and g[0] > 9.99 and g[-1] < 5
    gv = tr.gaussian("tanh", 1e-2, gamma="unit_variance").gamma
    assert gv > 1e3  # ~ s^-3 (the notebook's divergence)
    U = np.random.default_rng(1).standard_normal((50, 2))
    with pytest.raises(ValueError, match="unregularized"):
        tr.empirical("relu", np.abs(U) + 1.0, gamma="unit_variance")  # relu is linear over the data
    t = tr.empirical("relu", np.abs(U) + 1.0, gamma="vatanen_variance")
    np.testing.assert_allclose(t.gamma, 10.0, rtol=1e-12)
    assert np.all(tr.empirical("relu", np.abs(U) + 1.0, gamma=None).gamma == 1.0)


def test_gamma_value_forms():
    v, s = np.array([0.3, 0.02]), np.array([0.1, 0.5])
    np.testing.assert_allclose(tr.gamma_value(v, s, "vatanen_geometric"), (v * s + 1e-4) ** -0.25, rtol=1e-15)
    np.testing.assert_allclose(tr.gamma_value(v, s, "vatanen_variance"), (v + 1e-2) ** -0.5, rtol=1e-15)
    np.testing.assert_allclose(tr.gamma_value(v, s, "unit_geometric"), (v * s) ** -0.25, rtol=1e-15)
    np.testing.assert_allclose(tr.gamma_value(v, s, "unit_variance"), v**-0.5, rtol=1e-15)
    np.testing.assert_array_equal(tr.gamma_value(v, s, None), 1.0)
    with pytest.raises(ValueError, match="gamma='std'"):
        tr.gamma_value(v, s, "std")
    with pytest.raises(ValueError, match=">= 0"):
        tr.gamma_value(-v, s)


# ----------------------------------------------------------------------------------------------------
# Gaussian estimator against closed forms and an independent quadrature
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [1.0, 0.5])
def test_gaussian_relu_closed_forms(q):
    t = tr.gaussian("relu", q, gamma="unit_variance")
    var_out = q * (0.25 - 1 / (2 * np.pi))  # E (|u|/2 - sqrt(q/2pi))^2
    assert abs(t.alpha + 0.5) < 1e-13
    assert abs(t.beta + math.sqrt(q / (2 * np.pi))) < 1e-13
    assert abs(t.mean_square - var_out) < 1e-13
    assert abs(t.slope_mean_square - 0.25) < 1e-13
    assert abs(t.gamma - var_out**-0.5) < 1e-11
    tg = tr.gaussian("relu", q, gamma="unit_geometric")
    assert abs(tg.gamma - (var_out * 0.25) ** -0.25) < 1e-11
    assert float(tr.gaussian("relu", q, gamma=None).gamma) == 1.0
    # the paper's forms on the same moments
    assert abs(tr.gaussian("relu", q).gamma - (var_out * 0.25 + 1e-4) ** -0.25) < 1e-11
    assert abs(tr.gaussian("relu", q, gamma="vatanen_variance").gamma - (var_out + 1e-2) ** -0.5) < 1e-11


def test_gaussian_reference_table():
    """The unregularized gamma values of the research notes (adaptive quadrature, independent of this code)."""
    rows = {("tanh", 1.0): (-0.6057055096, 0.0, 0.0274153260, 0.0975237381, 4.39768442, 6.03953208),
            ("tanh", 0.5): (-0.7263236921, 0.0, 0.0099032551, 0.0648796877, 6.28099316, 10.04872628),
            ("relu", 1.0): (-0.5, -0.3989422804, 0.0908450569, 0.25, 2.57596331, 3.31779348),
            ("relu", 0.5): (-0.5, -0.2820947918, 0.0454225285, 0.25, 3.06335389, 4.69206854)}
    for (act, q), (a, b, ef2, edf2, g1, g2) in rows.items():
        t1 = tr.gaussian(act, q, gamma="unit_geometric")
        t2 = tr.gaussian(act, q, gamma="unit_variance")
        for got, want in ((t1.alpha, a), (t1.beta, b), (t1.mean_square, ef2), (t1.slope_mean_square, edf2),
                          (t1.gamma, g1), (t2.gamma, g2)):
            assert abs(float(got) - want) <= 2e-9 * max(1.0, abs(want)), (act, q, got, want)


@pytest.mark.parametrize("q, m", [(1.0, 0.3), (0.5, -0.7), (2.0, 1.5)])
def test_gaussian_relu_shifted_closed_forms(q, m):
    s = math.sqrt(q)
    P, p = norm.cdf(m / s), norm.pdf(m / s)
    E1 = m * P + s * p  # E relu(u), u ~ N(m, q)
    E2 = (m * m + q) * P + m * s * p  # E relu(u)^2
    alpha = -P
    cov = q * P  # Cov(relu(u), u) = q E relu'(u) (Stein)
    var_out = E2 - E1 * E1 + 2 * alpha * cov + alpha * alpha * q
    t = tr.gaussian("relu", q, m, gamma="unit_variance")
    assert abs(t.alpha - alpha) < 1e-13
    assert abs(t.beta - (-E1 - alpha * m)) < 1e-13
    assert abs(t.mean_square - var_out) < 1e-13
    assert abs(t.slope_mean_square - P * (1 - P)) < 1e-13
    assert abs(t.gamma - var_out**-0.5) < 1e-10 * t.gamma


def _quad_tanh(q, m):
    """E phi, E phi', Var-type moments of tanh(u), u ~ N(m, q), by scipy's adaptive quadrature."""
    s = math.sqrt(q)

    def E(h):
        return si.quad(lambda z: h(m + s * z) * norm.pdf(z), -np.inf, np.inf, epsabs=1e-14, epsrel=1e-13)[0]

    alpha = -E(_tanh_d1)
    beta = -E(np.tanh) - alpha * m
    var_out = E(lambda u: (np.tanh(u) + alpha * u + beta) ** 2)
    var_slope = E(lambda u: (_tanh_d1(u) + alpha) ** 2)
    return alpha, beta, var_out, var_slope


@pytest.mark.parametrize("q, m", [(1.0, 0.0), (0.5, 0.0), (1.0, 0.4), (0.5, -1.2)])
def test_gaussian_tanh_against_quadrature(q, m):
    alpha, beta, var_out, var_slope = _quad_tanh(q, m)
    t = tr.gaussian("tanh", q, m, gamma="unit_variance")
    tg = tr.gaussian("tanh", q, m, gamma="unit_geometric")
    tv = tr.gaussian("tanh", q, m)
    assert abs(t.alpha - alpha) < 1e-12
    assert abs(t.beta - beta) < 1e-12
    assert abs(t.mean_square - var_out) < 1e-11 * var_out + 1e-14
    assert abs(t.slope_mean_square - var_slope) < 1e-11 * var_slope + 1e-14
    np.testing.assert_allclose(t.gamma, var_out**-0.5, rtol=1e-9)
    np.testing.assert_allclose(tg.gamma, (var_out * var_slope) ** -0.25, rtol=1e-9)
    np.testing.assert_allclose(tv.gamma, (var_out * var_slope + 1e-4) ** -0.25, rtol=1e-9)
    if m == 0:
        assert t.beta == 0.0 or abs(t.beta) < 1e-15  # tanh is odd


def test_gaussian_vectorized_per_unit():
    q = np.array([1.0, 0.5, 2.0, 1.0])
    m = np.array([0.0, 0.0, 0.3, -0.3])
    t = tr.gaussian("tanh", q, m, gamma="unit_geometric")
    assert t.alpha.shape == (4,) and t.units == 4
    for i in range(4):
        ti = tr.gaussian("tanh", q[i], m[i], gamma="unit_geometric")
        assert ti.units is None
        for k in ("alpha", "beta", "gamma"):
            assert abs(getattr(t, k)[i] - getattr(ti, k)) < 1e-12 * max(1.0, abs(getattr(ti, k)))
    # tanh is odd: the mean -m gives the same alpha and beta(-m) = -beta(m)
    t3 = tr.gaussian("tanh", 1.0, 0.3)
    assert abs(t.alpha[3] - t3.alpha) < 1e-13 and abs(t.beta[3] + t3.beta) < 1e-13


# ----------------------------------------------------------------------------------------------------
# transformed activations: no Hermite orders 0 and 1; per-unit activations
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("act", ["tanh", "relu", "gelu", "softplus"])
@pytest.mark.parametrize("q", [1.0, 0.5])
def test_transformed_activation_has_zero_orders_0_and_1(act, q):
    f = tr.gaussian(act, q, gamma="unit_variance").activation(act)
    c = hermite.coefficients(f, 4, q)
    assert abs(c[0]) < 1e-13 and abs(c[1]) < 1e-13
    assert abs(hermite.second_moment(f, q) - 1.0) < 1e-12  # gamma = "unit_variance"
    # identical to hermite.transform with remove=(0, 1), unit_variance=True
    np.testing.assert_allclose(c, hermite.coefficients(hermite.transform(act, q=q), 4, q), atol=1e-13)
    # unit_geometric: std(f) * rms(f') = 1
    g = tr.gaussian(act, q, gamma="unit_geometric").activation(act)
    cg = hermite.coefficients(g, 1, q)
    assert abs(cg[0]) < 1e-13 and abs(cg[1]) < 1e-13
    prod = hermite.second_moment(g, q) * hermite.kernel(g, 1.0, q1=q, derivative=1)
    assert abs(prod - 1.0) < 1e-11
    # the paper's default: E f^2 E f'^2 = gamma^4 (E f~^2 E f~'^2) = 1 - 1e-4 gamma^4
    t = tr.gaussian(act, q)
    v = t.activation(act)
    prod = hermite.second_moment(v, q) * hermite.kernel(v, 1.0, q1=q, derivative=1)
    assert abs(prod - (1 - 1e-4 * float(t.gamma) ** 4)) < 1e-11


def test_per_unit_activation():
    rng = np.random.default_rng(2)
    U = rng.standard_normal((400, 5)) * [0.5, 1.0, 2.0, 1.0, 0.7] + [0.0, 0.5, -1.0, 2.0, 0.1]
    t = tr.empirical("tanh", U)
    f = t.activation("tanh")
    assert f.per_unit and f.units == 5
    F, dF = f.fn(U), f.derivative(U)
    np.testing.assert_allclose(F, t.gamma * (np.tanh(U) + t.alpha * U + t.beta), rtol=1e-14)
    assert np.max(np.abs(F.mean(axis=0))) < 1e-13 and np.max(np.abs(dF.mean(axis=0))) < 1e-13
    # the per-unit activation has no infinite-width rule, and says so
    net = meanfield.Network([meanfield.Dense(), meanfield.Activation(f)])
    with pytest.raises(ValueError, match="per-unit"):
        meanfield.propagate(net, np.eye(5))
    # but the simulator runs it (width = units), and checks the width
    sim = meanfield.simulate(net, rng.standard_normal((3, 4)), width=5, seeds=2)
    assert np.all(np.isfinite(sim.gram))
    with pytest.raises(ValueError, match="per-unit parameters for 5 units"):
        meanfield.simulate(net, rng.standard_normal((3, 4)), width=6, seeds=1)
    with pytest.raises(ValueError, match="per-unit"):
        t.activation(f)


# ----------------------------------------------------------------------------------------------------
# empirical estimator
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("q", [1.0, 0.5])
@pytest.mark.parametrize("form", ["unit_variance", "unit_geometric", "vatanen_geometric", "vatanen_variance"])
def test_empirical_converges_to_gaussian(act, q, form):
    """Every column of U is an independent replicate: the spread over columns is the estimator's error."""
    N, units = 4000, 200
    rng = np.random.default_rng([len(act), int(4 * q), len(form)])
    U = math.sqrt(q) * rng.standard_normal((N, units))
    est = tr.empirical(act, U, gamma=form)
    exact = tr.gaussian(act, q, gamma=form)
    for k in ("alpha", "beta", "gamma"):
        e, x = getattr(est, k), float(getattr(exact, k))
        scale = max(1.0, abs(x))
        sd = e.std(ddof=1)
        # the error of one estimate is a few / sqrt(N) (relative to the quantity's scale) ...
        assert sd < 4.0 * scale / math.sqrt(N), (k, sd)
        # ... and the estimates are centred on the Gaussian value (bias O(1/N))
        assert abs(e.mean() - x) < 5 * sd / math.sqrt(units) + 5 * scale / N, (k, e.mean(), x)


def test_empirical_exact_constraints_on_its_data():
    rng = np.random.default_rng(3)
    U = rng.standard_normal((300, 5)) * [0.3, 1.0, 2.0, 1.0, 0.7] + [0.0, 0.5, -1.0, 2.0, 0.1]
    phi = hermite.activation(np.tanh, derivative=_tanh_d1)  # a user callable with its derivative
    for form in ("unit_variance", "unit_geometric", None, "vatanen_geometric"):
        t = tr.empirical(phi, U, gamma=form)
        F = t.gamma * (np.tanh(U) + t.alpha * U + t.beta)
        dF = t.gamma * (_tanh_d1(U) + t.alpha)
        assert np.max(np.abs(F.mean(axis=0))) < 1e-13
        assert np.max(np.abs(dF.mean(axis=0))) < 1e-13
        if form == "unit_variance":
            np.testing.assert_allclose(np.mean(F * F, axis=0), 1.0, rtol=1e-12)
        if form == "unit_geometric":
            np.testing.assert_allclose(np.mean(F * F, axis=0) * np.mean(dF * dF, axis=0), 1.0, rtol=1e-12)
        if form == "vatanen_geometric":
            np.testing.assert_allclose(np.mean(F * F, axis=0) * np.mean(dF * dF, axis=0),
                                       1 - 1e-4 * t.gamma**4, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------
# mean field: the shortcut blocks in both engines, faster contraction
# ----------------------------------------------------------------------------------------------------
def test_correlation_map_matches_propagate_and_mehler():
    rho = np.array([-0.8, -0.2, 0.3, 0.9, 1.0])
    net = tr.shortcut_network(1, "tanh", mix=0.6)
    for r in rho:
        K0 = np.array([[1.0, r], [r, 1.0]])
        g = meanfield.propagate(net, K0).gram[-1]
        assert abs(g[0, 0] - 1.0) < 1e-12
        assert abs(g[0, 1] - tr.correlation_map("tanh", r, mix=0.6)) < 1e-12
    # only orders >= 2 remain: rho' = 0.4 rho + 0.6 sum_{k>=2} c_k^2 rho^k
    c = hermite.coefficients(hermite.transform("tanh"), 80)
    series = 0.4 * rho + 0.6 * np.polynomial.polynomial.polyval(rho, c**2)
    assert abs(c[0]) < 1e-13 and abs(c[1]) < 1e-13
    np.testing.assert_allclose(tr.correlation_map("tanh", rho, mix=0.6), series, atol=1e-12)
    # the paper's gamma form: the same map up to the block's variance
    net = tr.shortcut_network(1, "tanh", mix=0.6, gamma="vatanen_geometric")
    g = meanfield.propagate(net, np.array([[1.0, 0.5], [0.5, 1.0]])).gram[-1]
    assert abs(g[0, 1] / g[0, 0] - tr.correlation_map("tanh", 0.5, mix=0.6, gamma="vatanen_geometric")) < 1e-12


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_transformed_network_correlations_contract_faster(act):
    d = tr.depth_curves(act, depth=12, rho0=0.9)
    rt, rp = d["rho_transformed"], d["rho_plain"]
    assert rt[0] == rp[0] == pytest.approx(0.9)
    assert np.all(np.abs(rt[1:]) < np.abs(rp[1:]))
    assert np.all(np.diff(rt) < 0) and rt[-1] < 0.05  # towards orthogonality
    assert np.all(d["gap_transformed"][1:] < d["gap_plain"][1:])
    # a larger batch: the isometry gap of the transformed network falls below the plain one's
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 3)) + 1.0
    X /= np.linalg.norm(X, axis=1, keepdims=True) / math.sqrt(3)  # unit second moment per sample
    K0 = X @ X.T / 3
    d2 = tr.depth_curves(act, depth=8, K0=K0, gamma="unit_geometric")
    assert np.all(d2["gap_transformed"][1:] < d2["gap_plain"][1:])


def test_shortcut_network_simulate_matches_propagate():
    from meanfield.finite import simulate

    rng = np.random.default_rng(4)
    X = rng.standard_normal((4, 32))
    net = tr.shortcut_network(3, "tanh", sigma_b=0.2, sigma_d=0.1)
    mf = meanfield.propagate(net, X=X)
    sim = simulate(net, X, width=512, seeds=12, seed=1)
    err = np.abs(sim.gram.mean(axis=0) - mf.gram)
    assert np.all(err <= 5 * sim.stderr() + 2e-3)
    assert meanfield.Network.from_dict(net.to_dict()) == net


# ----------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_value_errors_naming_the_argument():
    with pytest.raises(ValueError, match="U is an empty batch"):
        tr.empirical("tanh", np.zeros((0, 3)))
    U = np.random.default_rng(0).standard_normal((10, 3))
    U[:, 1] = 0.7
    with pytest.raises(ValueError, match=r"U has constant units.*\[1\]"):
        tr.empirical("tanh", U)
    with pytest.raises(ValueError, match="gamma='unit'"):
        tr.empirical("tanh", np.eye(3), gamma="unit")
    with pytest.raises(ValueError, match="gamma="):
        tr.gaussian("tanh", 1.0, gamma="std")
    with pytest.raises(ValueError, match="q="):
        tr.gaussian("tanh", 0.0)
    with pytest.raises(ValueError, match="m must be finite"):
        tr.gaussian("tanh", 1.0, np.nan)
    with pytest.raises(ValueError, match="no derivative"):
        tr.empirical(hermite.activation(np.tanh), np.eye(3))
    with pytest.raises(ValueError, match="gamma="):
        tr.shortcut_network(2, "tanh", gamma="bogus")
    with pytest.raises(ValueError, match="mix="):
        tr.shortcut_network(2, "tanh", mix=0.0)
    with pytest.raises(ValueError, match="depth="):
        tr.shortcut_network(0, "tanh")
    with pytest.raises(ValueError, match="rho="):
        tr.correlation_map("tanh", 1.5)
