"""Tests of meanfield.rates: non-linearity strength, the LayerNorm(post) map, rate predictions and fits,
and the batch-norm counterparts (gradient explosion rate, orthogonality chain)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import hermite
import meanfield
from meanfield import bn_gradients, rates
from meanfield.measures import correlations, isometry_gap, potential

FAST_ACTS = ["relu", "tanh", "sigmoid", "silu", "gelu", "sin", "exp", "abs", "identity"]


def random_corr(rng, n, mix=1.0):
    X = rng.standard_normal((n, n + 3)) + mix * rng.standard_normal((1, n + 3))
    return correlations(X @ X.T)


# ---------------------------------------------------------------------------------------------------------
# beta0, beta_sigma
# ---------------------------------------------------------------------------------------------------------


def test_beta_closed_forms():
    assert rates.beta0("relu") == pytest.approx(math.pi / (2 * (math.pi - 1)), abs=1e-12)
    assert rates.beta0("exp") == pytest.approx(1 / (math.e - 1), abs=1e-12)
    # exp at variance q: c_1^2 = q e^q, Var = e^{2q} - e^q
    assert rates.beta0("exp", q=2.0) == pytest.approx(2.0 / (math.e**2 - 1), abs=1e-12)
    assert rates.beta0("relu", q=3.7) == pytest.approx(rates.beta0("relu"), abs=1e-12)  # homogeneous
    assert rates.beta0("identity") == pytest.approx(1.0, abs=1e-14)
    assert rates.beta0(hermite.activation("hermite", k=2)) == pytest.approx(0.0, abs=1e-14)
    assert rates.beta0("abs") == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("act", FAST_ACTS)
def test_beta_sigma_is_two_minus_beta0(act):
    b0 = rates.beta0(act)
    assert 0.0 <= b0 <= 1.0
    assert rates.beta_sigma(act) == pytest.approx(2.0 - b0, abs=1e-15)
    c = hermite.coefficients(act, 1)
    assert b0 == pytest.approx(c[1] ** 2 / (hermite.second_moment(act) - c[0] ** 2), rel=1e-12)


def test_summary_consistent():
    s = rates.summary("relu")
    assert s.beta0 == pytest.approx(math.pi / (2 * (math.pi - 1)))
    assert s.potential_bound == pytest.approx(1 / s.beta_sigma)
    assert s.gap_local == pytest.approx(s.beta0**2)
    assert s.kappa_prime_1 == pytest.approx(math.pi / (math.pi - 1), abs=1e-12)
    assert s.collinear == pytest.approx(1 / s.kappa_prime_1)
    assert s.potential_local <= s.potential_bound  # beta0 <= 1/beta_sigma
    assert rates.predicted_rate("relu", "isometry_gap") == pytest.approx(s.beta0**2)
    assert rates.predicted_rate("relu") == pytest.approx(s.beta0)


# ---------------------------------------------------------------------------------------------------------
# kappa
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", FAST_ACTS + ["selu"])
def test_kappa_endpoints(act):
    assert rates.kappa(act, 1.0) == pytest.approx(1.0, abs=1e-12)
    assert rates.kappa(act, 0.0) == pytest.approx(0.0, abs=1e-12)


def test_kappa_relu_closed_form():
    rho = np.linspace(-1, 1, 41)
    k = (np.sqrt(1 - rho**2) + (np.pi - np.arccos(rho)) * rho) / (2 * np.pi)
    expected = (k - 1 / (2 * np.pi)) / (0.5 - 1 / (2 * np.pi))
    np.testing.assert_allclose(rates.kappa("relu", rho), expected, atol=1e-13)


def test_kappa_matches_mehler_series_inside():
    rho = np.linspace(-0.6, 0.6, 13)
    c = hermite.coefficients("tanh", 80)
    k = np.arange(81)
    series = (c[1:, None] ** 2 * rho[None, :] ** k[1:, None]).sum(0) / (c[1:] ** 2).sum()
    np.testing.assert_allclose(rates.kappa("tanh", rho), series, atol=1e-12)


@pytest.mark.parametrize("act", FAST_ACTS + ["0.3*x + 1.2*(x**2 - 1) - 0.4*x**3", "cos"])
def test_kappa_bound(act):
    rho = np.linspace(-1, 1, 201)
    b0 = rates.beta0(act)
    k = rates.kappa(act, rho)
    assert np.all(np.abs(k) <= b0 * np.abs(rho) + (1 - b0) * rho**2 + 1e-12)


def test_kappa_derivative():
    assert rates.kappa_derivative("relu", 1.0) == pytest.approx(math.pi / (math.pi - 1), abs=1e-12)
    h = 1e-5
    for act, r in (("tanh", 0.3), ("gelu", -0.4), ("sin", 0.8)):
        fd = (rates.kappa(act, r + h) - rates.kappa(act, r - h)) / (2 * h)
        assert rates.kappa_derivative(act, r) == pytest.approx(fd, rel=1e-7)
    assert rates.kappa_derivative("step", 1.0) == math.inf
    with pytest.raises(ValueError, match="jumps"):
        rates.kappa_derivative("step", 0.5)
    for act in FAST_ACTS:  # kappa'(1) >= beta_sigma
        assert rates.kappa_derivative(act, 1.0) >= rates.beta_sigma(act) - 1e-12


# ---------------------------------------------------------------------------------------------------------
# bounds and the exact recursion
# ---------------------------------------------------------------------------------------------------------


def test_potential_bound_formula():
    b0 = rates.beta0("relu")
    p = np.array([0.0, 0.1, 1.0, 10.0, np.inf])
    out = rates.potential_bound("relu", p)
    np.testing.assert_allclose(out[:4], p[:4] * (b0 + p[:4]) / (1 + (2 - b0) * p[:4]))
    assert out[4] == np.inf
    assert np.all(out[:4] <= p[:4] / (2 - b0) + 1e-15)
    assert rates.potential_bound("relu", 0.7, layers=0) == 0.7
    two = rates.potential_bound("relu", 0.7, layers=2)
    assert two == pytest.approx(rates.potential_bound("relu", rates.potential_bound("relu", 0.7)))
    with pytest.raises(ValueError, match="potential"):
        rates.potential_bound("relu", -1.0)
    with pytest.raises(ValueError, match="layers"):
        rates.potential_bound("relu", 1.0, layers=-1)


def test_gap_bound_from_potential_holds():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(2, 7))
        C = random_corr(rng, n, mix=rng.uniform(0, 0.4))
        b = rates.gap_bound_from_potential(potential(C), n)
        assert isometry_gap(C) <= b + 1e-12
    # the example: potential 2.41, singular Gram: no finite bound for n = 3
    x1, x2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    X = np.stack([x1, x2, (x1 + x2) / np.sqrt(2)])
    K = X @ X.T
    assert potential(K) == pytest.approx(1 / (np.sqrt(2) - 1))
    assert isometry_gap(K) == np.inf
    assert rates.gap_bound_from_potential(potential(K), 3) == np.inf


@pytest.mark.parametrize("act,sigma_w", [("relu", 1.0), ("tanh", 1.3), ("gelu", 0.8), ("sin", 1.0)])
def test_ln_post_trajectory_matches_propagate(act, sigma_w):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 6)) * np.array([[0.5], [1.0], [2.0], [1.3]])
    K0 = X @ X.T / 6
    ours = rates.ln_post_trajectory(act, K0, 8, sigma_w=sigma_w)
    ref = meanfield.propagate(meanfield.mlp(8, act, norm="ln", sigma_w=sigma_w), K0)
    np.testing.assert_allclose(ours.gram, ref.gram, atol=1e-12)


def test_layers_to_gap_exact_and_bound():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4, 8))
    X[1] = X[0] + 0.2 * X[1]
    K0 = X @ X.T / 8
    for act in ("relu", "gelu"):
        pred = rates.layers_to_gap(act, 1e-4, K0)
        L = pred.exact
        assert L is not None and L > 2
        gaps = meanfield.propagate(meanfield.mlp(L, act, norm="ln"), K0).isometry_gap()
        assert gaps[L] <= 1e-4 < gaps[L - 1]
        np.testing.assert_allclose(pred.values, gaps, atol=1e-10)
        assert pred.bound >= L
        assert pred.asymptotic < L  # near collinearity the local rate near isometry is too optimistic
        # near isometry (gap < 3e-3) the local rate beta0^2 predicts the remaining blocks
        j = int(np.argmax(pred.values < 3e-3))
        later = rates.layers_to_gap(act, 1e-4, start=pred.values[j])
        assert abs(later.asymptotic - (L - j)) < 1.5
        pp = rates.layers_to_gap(act, 1e-4, K0, measure="potential")
        pots = meanfield.propagate(meanfield.mlp(pp.exact, act, norm="ln"), K0).potential()
        assert pots[pp.exact] <= 1e-4 < pots[pp.exact - 1]
        assert pp.bound >= pp.exact


def test_layers_to_gap_from_start_values():
    b0 = rates.beta0("relu")
    p = rates.layers_to_gap("relu", 1e-3, start=1e-1)
    assert p.exact is None and p.bound is None  # no potential, no n
    assert p.asymptotic == pytest.approx(math.log(100) / math.log(1 / b0**2))
    p = rates.layers_to_gap("relu", 1e-3, start=1e-1, start_potential=0.5, n=4)
    assert p.bound is not None and p.bound > p.asymptotic
    p = rates.layers_to_gap("relu", 1e-3, start=1.0, measure="potential")
    assert p.asymptotic == pytest.approx(math.log(1e3) / math.log(1 / b0))
    assert p.bound >= p.asymptotic - 1
    assert rates.layers_to_gap("relu", 1.0, start=0.5).asymptotic == 0.0
    assert rates.layers_to_gap("abs", 1e-3, start=1.0).asymptotic is None  # beta0 = 0: super-exponential
    assert rates.layers_to_gap("identity", 1e-3, start=1.0).asymptotic == math.inf
    # identity: the exact recursion stops at its fixed point instead of running to max_layers
    p = rates.layers_to_gap("identity", 1e-3, np.array([[1.0, 0.5], [0.5, 1.0]]))
    assert p.exact is None


def test_layers_to_gap_bad_inputs():
    with pytest.raises(ValueError, match="K0"):
        rates.layers_to_gap("relu", 1e-3)
    with pytest.raises(ValueError, match="target"):
        rates.layers_to_gap("relu", -1.0, start=1.0)
    with pytest.raises(ValueError, match="measure"):
        rates.layers_to_gap("relu", 1e-3, start=1.0, measure="isometry")
    with pytest.raises(ValueError, match="symmetric"):
        rates.layers_to_gap("relu", 1e-3, np.array([[1.0, 0.2], [0.3, 1.0]]))
    with pytest.raises(ValueError, match="diagonal"):
        rates.layers_to_gap("relu", 1e-3, np.array([[1.0, 0.0], [0.0, 0.0]]))


# ---------------------------------------------------------------------------------------------------------
# rate fits
# ---------------------------------------------------------------------------------------------------------


def test_fit_rate_geometric_series():
    v = 3.0 * 0.6 ** np.arange(12)
    f = rates.fit_rate(v)
    assert f.rate == pytest.approx(0.6, rel=1e-12)
    assert f.stderr == pytest.approx(0.0, abs=1e-12)
    noisy = v[None, :] * np.exp(0.01 * np.random.default_rng(0).standard_normal((20, 12)))
    fs = rates.fit_rate(noisy, "isometry_gap")
    assert fs.per_seed.shape == (20,)
    assert abs(fs.rate - 0.6) < 4 * fs.stderr + 1e-3


def test_fit_rate_meanfield_matches_prediction():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((4, 6))
    traj = meanfield.propagate(meanfield.mlp(40, "relu", norm="ln"), X=X)
    b0 = rates.beta0("relu")
    fp = rates.fit_rate(traj, "potential", start=25)
    fg = rates.fit_rate(traj, "isometry_gap", start=25)
    assert fp.rate == pytest.approx(b0, rel=2e-3)
    assert fg.rate == pytest.approx(b0**2, rel=4e-3)


def test_fit_rate_bad_inputs():
    v = 0.5 ** np.arange(6)
    with pytest.raises(ValueError, match="measure"):
        rates.fit_rate(v, "gap")
    with pytest.raises(ValueError, match="start"):
        rates.fit_rate(v, start=5, stop=3)
    with pytest.raises(ValueError, match="usable"):
        rates.fit_rate(np.zeros(6))
    with pytest.raises(ValueError, match="shape"):
        rates.fit_rate(np.zeros((2, 2, 2)))


# ---------------------------------------------------------------------------------------------------------
# batch norm
# ---------------------------------------------------------------------------------------------------------


def test_bn_gradient_rate_linear_closed_form():
    for B in (4, 5, 8, 32):
        est = rates.bn_gradient_rate("identity", B)
        assert est.value == pytest.approx((B - 2) / (B - 3))
        assert est.method == "closed form"
        # the Monte Carlo formula is exact for an affine activation, sample by sample
        mc = bn_gradients._bn_rate_mc(hermite.activation("identity"), B, 2000, 0)
        assert mc.value == pytest.approx((B - 2) / (B - 3), rel=1e-12)
    assert rates.bn_gradient_rate("relu", 2).value == 0.0
    assert rates.bn_gradient_rate("relu", 3).value == math.inf


def test_bn_gradient_rate_relu_large_batch():
    lim = rates.bn_gradient_rate_limit("relu")
    assert lim == pytest.approx(math.pi / (math.pi - 1), abs=1e-12)
    assert rates.bn_gradient_rate_limit("identity") == pytest.approx(1.0)
    small = rates.bn_gradient_rate("relu", 8, samples=2**15)
    big = rates.bn_gradient_rate("relu", 512, samples=2**13)
    assert small.value > big.value
    assert big.value == pytest.approx(lim, rel=5e-3)
    assert 0 < small.stderr < 0.01


YANG_TABLE = {  # B: (ReLU, linear), Theorem 8 evaluated in the research notes (section 4.5)
    4: (3.084061, 2.0), 5: (2.273707, 1.5), 8: (1.788190, 1.2), 16: (1.589950, 1.076923),
    32: (1.521953, 1.034483), 64: (1.493063, 1.016393), 128: (1.479681, 1.008), 1000: (1.468539, 1.001003)}


def test_yang_theorem8_table_and_limits():
    for B, (relu, lin) in YANG_TABLE.items():
        assert rates.yang_gradient_rate("relu", B) == pytest.approx(relu, abs=6e-7)
        assert rates.yang_gradient_rate("identity", B) == pytest.approx(lin, abs=6e-7)
    # alpha = 1 of the printed alpha-ReLU formula, re-derived here
    for B in (4, 7, 50):
        c = -1.0 / (B - 1)
        J = (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / math.pi
        Jp = (math.pi - math.acos(c)) / math.pi
        a = 1.0
        lam = ((B - 3 + 2 * a) * ((2 * a - 1) * Jp + a * a * (B - 1) * 1.0)
               / ((2 * a - 1) * (B - 3) * (B - 1) * (1.0 - J)) - a * a / (B - 3))
        assert rates.yang_gradient_rate("relu", B) == pytest.approx(lam, rel=1e-14)
    big = rates.yang_gradient_rate("relu", 10**7)
    assert big == pytest.approx(rates.bn_gradient_rate_limit("relu"), rel=1e-6)
    assert rates.yang_gradient_rate(hermite.activation("relu", gain=2.0), 8) == rates.yang_gradient_rate("relu", 8)
    assert rates.yang_gradient_rate("2*x + 1", 8) == pytest.approx(1.2)
    assert rates.yang_gradient_rate("relu", 2) == 0.0 and rates.yang_gradient_rate("relu", 3) == math.inf
    rs = [rates.yang_gradient_rate("relu", B) for B in range(4, 200)]
    assert np.all(np.diff(rs) < 0)  # decreasing in B


@pytest.mark.parametrize("B", [4, 6, 8, 32])
def test_yang_theorem8_against_the_toolkits_monte_carlo(B):
    est = rates.bn_gradient_rate("relu", B, samples=2**17, seed=B)
    assert abs(est.value - rates.yang_gradient_rate("relu", B)) < 4.5 * est.stderr


def test_yang_theorem8_against_simulation():
    """measure_bn_gradient_rate (simulator with gradients): within its error plus the O(B/width) bias."""
    m = rates.measure_bn_gradient_rate("relu", 8, width=512, depth=16, seeds=8, skip=4)
    lam = rates.yang_gradient_rate("relu", 8)
    assert abs(m.value - lam) < 3 * m.stderr + 0.03 * lam


def test_yang_gradient_rate_bad_inputs():
    with pytest.raises(ValueError, match="tanh.*ReLU"):
        rates.yang_gradient_rate("tanh", 8)
    with pytest.raises(ValueError, match="batch_size=1"):
        rates.yang_gradient_rate("relu", 1)


def test_bn_gradient_network_needs_head():
    from meanfield.finite import simulate

    X = np.random.default_rng(0).standard_normal((6, 8))
    bare = simulate(rates.bn_gradient_network("identity", 3, head=False), X, width=32, seeds=2, gradients=True)
    assert np.min(bare.grad_norms) > 1e-3  # independent per-sample readouts survive a final BatchNorm
    head = simulate(rates.bn_gradient_network("identity", 3), X, width=32, seeds=2, gradients=True)
    assert np.min(head.grad_norms) > 1e-3


def test_orthogonality_chain():
    V = rates.orthogonality_chain(32, 4, 10, seeds=6, rho0=0.5)
    assert V.shape == (6, 11)
    K = 0.5 * np.eye(4) + 0.5
    assert V[0, 0] == pytest.approx(meanfield.measures.orthogonality_gap_gram(K))
    assert np.all(V[:, -1] < V[:, 0])
    # shortcut and explicit weights agree in distribution (plateau rms)
    a = rates.orthogonality_chain(48, 3, 20, seeds=24, seed=1)[:, 10:]
    b = rates.orthogonality_chain(48, 3, 20, seeds=24, seed=2, explicit=True)[:, 10:]
    ra, rb = np.sqrt(np.mean(a**2)), np.sqrt(np.mean(b**2))
    assert ra == pytest.approx(rb, rel=0.15)
    assert ra == pytest.approx(rates.orthogonality_plateau(48, 3), rel=0.15)
    assert rates.orthogonality_rate(4) == pytest.approx(2 / 3)


def test_finite_width_gap():
    b0 = rates.beta0("relu")
    assert rates.finite_width_gap("relu", 4, 256) == pytest.approx(3 / (512 * (1 - b0**2)))
    assert rates.finite_width_gap("identity", 4, 256) == math.inf


# ---------------------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------------------


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown activation"):
        rates.beta0("nope")
    for q in (0.0, -1.0, math.nan, math.inf, "x"):
        with pytest.raises(ValueError, match="q="):
            rates.beta0("relu", q=q)
    with pytest.raises(ValueError, match="constant"):
        rates.beta0(hermite.activation("hermite", k=0))
    with pytest.raises(ValueError, match="rho"):
        rates.kappa("relu", 1.5)
    with pytest.raises(ValueError, match="rho"):
        rates.kappa("relu", math.nan)
    with pytest.raises(ValueError, match="batch_size"):
        rates.bn_gradient_rate("relu", 1)
    with pytest.raises(ValueError, match="samples"):
        rates.bn_gradient_rate("relu", 8, samples=10)
    with pytest.raises(ValueError, match="d="):
        rates.orthogonality_chain(0, 4, 3)
    with pytest.raises(ValueError, match="rho0"):
        rates.orthogonality_chain(8, 4, 3, rho0=1.0)
    with pytest.raises(ValueError, match="K0"):
        rates.orthogonality_chain(8, 4, 3, K0=np.eye(3))
    with pytest.raises(ValueError, match="depth"):
        rates.ln_post_trajectory("relu", np.eye(3), -1)
    with pytest.raises(ValueError, match="skip"):
        rates.measure_bn_gradient_rate("relu", 8, depth=5, skip=2)
