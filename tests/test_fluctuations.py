"""Tests of the finite-width theory, ``meanfield.propagate(net, K0, width=W)``, against independent truths.

Truths used:
- Wishart moments: a linear network (Dense with sigma_w = 1, identity activation) keeps E K_hat = K0 exactly
  and, to first order, Cov(K_ab, K_cd) = L (K_ac K_bd + K_ad K_bc) / W after L layers;
- one block Dense -> f: Cov(K_ab, K_cd) = (E[f_a f_b f_c f_d] - E[f_a f_b] E[f_c f_d]) / W exactly, checked for
  the diagonal by 1-D scipy quad (E f^4) and off the diagonal by a 200 x 200 Gauss-Hermite tensor rule (tanh);
- the simulator (`meanfield.simulate`, the exact shortcut sampling), with tolerances from its own sampling
  error: the standard error of a sample variance from the fourth central moment, of a mean from the spread;
- Monte Carlo over Gaussian Gram matrices for the delta method of the measures.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate as si

import meanfield
from meanfield import Activation, Block, Center, Dense, LayerNorm, Network, Scale
from meanfield.fluctuations import propagate_finite
from meanfield.spread import measure_moments


def _inputs(n, d=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X * math.sqrt(d) / np.linalg.norm(X, axis=1, keepdims=True)


def _entry_var(th, L):
    return np.einsum("abab->ab", th.gram_cov[L])


def _sample_var(G):
    """Variance over seeds (axis 0) and its standard error sqrt((m4 - s^4) / S)."""
    S = G.shape[0]
    c = G - G.mean(axis=0)
    v = np.mean(c * c, axis=0) * S / (S - 1)
    m4 = np.mean(c**4, axis=0)
    return v, np.sqrt(np.maximum(m4 - v * v, 0.0) / S)


# ---------------------------------------------------------------------------------------------------------
# exact truths
def test_linear_network_is_wishart():
    X = _inputs(3)
    K0 = X @ X.T / X.shape[1]
    L, W = 4, 100
    th = propagate_finite(meanfield.mlp(L, "identity"), X=X, width=W, order=1)
    np.testing.assert_allclose(th.gram, np.broadcast_to(K0, th.gram.shape), atol=1e-12)
    for layer in range(L + 1):
        truth = layer * (np.einsum("ac,bd->abcd", K0, K0) + np.einsum("ad,bc->abcd", K0, K0)) / W
        err = th.info["gram_cov_stderr"][layer]
        np.testing.assert_allclose(th.gram_cov[layer], truth, rtol=0, atol=5e-3 * np.abs(truth).max() + 1e-15)
        assert np.all(np.abs(th.gram_cov[layer] - truth) <= 6 * err + 1e-12)


def test_linear_network_second_order_is_exact_wishart():
    """Linear network: Cov_{l+1} = Cov_l + (T(K) + Cov_l(ac, bd) + Cov_l(ad, bc)) / W exactly, T(K)_abcd =
    K_ac K_bd + K_ad K_bc, so the 1/W^2 coefficient after L layers is L (L - 1) / 2 (2 K_ab K_cd + T)."""
    X = _inputs(3)
    K0 = X @ X.T / X.shape[1]
    L, W = 5, 50
    th = propagate_finite(meanfield.mlp(L, "identity"), X=X, width=W)
    T = np.einsum("ac,bd->abcd", K0, K0) + np.einsum("ad,bc->abcd", K0, K0)
    KK = np.einsum("ab,cd->abcd", K0, K0)
    for layer in range(L + 1):
        truth = layer * T / W + layer * (layer - 1) / 2 * (2 * KK + T) / W**2
        first = layer * T / W
        err = th.info["gram_cov_stderr"][layer]
        np.testing.assert_allclose(th.gram_cov[layer], truth, rtol=0, atol=5e-3 * np.abs(truth).max() + 1e-15)
        assert np.all(np.abs(th.gram_cov[layer] - truth) <= 6 * err + 1e-12)
    # the second-order part is resolved: at the last layer first order alone is off by 4x the tolerance
    assert np.abs(first - truth).max() > 4 * (5e-3 * np.abs(truth).max())


def test_relu_scale_is_a_product_second_order_exact():
    """ReLU, sigma_w^2 = 2, no norm: q_hat_{l+1} = q_hat_l chi_l with E chi = 1 and Var chi = 5 / W
    independent of the past, so Var q_L = q_0^2 ((1 + 5/W)^L - 1): 5 L / W + 25 L (L - 1) / 2 / W^2 + ...
    (E relu^4 = 3 q^2 / 2, E relu^2 = q / 2). First order alone misses 25 (L - 1) / (2 W) of it."""
    X = _inputs(2)
    q0 = np.diag(X @ X.T / X.shape[1])
    L, W = 8, 64
    th = propagate_finite(meanfield.mlp(L, "relu", sigma_w=2**0.5), X=X, width=W)
    one = propagate_finite(meanfield.mlp(L, "relu", sigma_w=2**0.5), X=X, width=W, order=1)
    for layer in range(1, L + 1):
        for a in range(2):
            truth = q0[a] ** 2 * (5 * layer / W + 12.5 * layer * (layer - 1) / W**2)
            assert th.gram_cov[layer, a, a, a, a] == pytest.approx(truth, rel=1e-2)
            assert one.gram_cov[layer, a, a, a, a] == pytest.approx(q0[a] ** 2 * 5 * layer / W, rel=1e-2)
    assert th.info["order"] == 2 and th.info["second_order_captured"] == pytest.approx(1.0)


def test_second_order_is_a_polynomial_in_one_over_width():
    X = _inputs(3)
    net = meanfield.mlp(3, "relu", norm="ln")
    th = propagate_finite(net, X=X, width=[64, 128, 256], nodes=2**10)
    c = {w: th[w].gram_cov for w in th}
    # cov(W) = A / W + B / W^2: W cov(W) is linear in 1/W (1/128 = 1/3 * 1/64 + 2/3 * 1/256), and B != 0
    np.testing.assert_allclose(128 * c[128], (64 * c[64] + 2 * 256 * c[256]) / 3, rtol=0,
                               atol=1e-12 * np.abs(64 * c[64]).max())
    assert np.abs(64 * c[64] - 256 * c[256]).max() > 1e-3 * np.abs(64 * c[64]).max()
    np.testing.assert_allclose(th[256].gram, propagate_finite(net, X=X, width=256, nodes=2**10, order=1).gram,
                               rtol=0, atol=1e-15)


def _pair():
    X = np.array([[1.0, 0.3, -0.5, 0.8], [0.9, 0.5, -0.2, 0.6]])   # correlation 0.96
    return X * 2 / np.linalg.norm(X, axis=1, keepdims=True)


def test_second_order_of_a_curved_map_against_simulation():
    """GELU without a norm (sigma_w = 1.5), 6 blocks, W = 128: the map is curved along the fluctuations, so
    the third derivative, the third cumulant and the rest of the second-order terms all enter. First order
    misses the simulated variances by more than 5 standard errors; second order is within 4."""
    X = _pair()
    net = meanfield.mlp(6, "gelu", sigma_w=1.5)
    W, S = 128, 40000
    sim = meanfield.simulate(net, X, width=W, seeds=S, seed=5)
    v, se = _sample_var(sim.gram[:, -1])
    p1 = _entry_var(propagate_finite(net, X=X, width=W, order=1), -1)
    p2 = _entry_var(propagate_finite(net, X=X, width=W), -1)
    assert np.all(np.abs(v - p1) > 5 * se), (v - p1) / se
    assert np.all(np.abs(v - p2) <= 4 * se), (v - p2) / se


def test_second_order_under_layernorm_against_simulation():
    """ReLU then LayerNorm, a pair at correlation 0.96, 8 blocks. At W = 64 one block already carries the
    delta method's O(1/W^2) term (first order misses by 18 %); at W = 128 first order's error compounds to
    16 % by block 4. Second order (that term and the compounding ones) stays within 4 standard errors + 2 %."""
    X = _pair()
    net = meanfield.mlp(8, "relu", norm="ln")
    S = 40000
    for W in (64, 128):
        sim = meanfield.simulate(net, X, width=W, seeds=S, seed=5)
        v, se = _sample_var(sim.gram[:, 1:, 0, 1])
        p1 = propagate_finite(net, X=X, width=W, order=1).gram_cov[1:, 0, 1, 0, 1]
        p2 = propagate_finite(net, X=X, width=W).gram_cov[1:, 0, 1, 0, 1]
        if W == 64:
            assert abs(v[0] - p1[0]) > 10 * se[0] and abs(v[0] - p2[0]) <= 4 * se[0]
        else:
            assert np.max(np.abs(v / p1 - 1)) > 0.12
            assert np.all(np.abs(v - p2) <= 4 * se + 0.02 * v), (v - p2) / se


def test_one_block_fresh_covariance_tanh():
    """Var of the diagonal by 1-D quad, of an off-diagonal entry by a 200-node Gauss-Hermite tensor rule."""
    K0 = np.array([[1.0, 0.4], [0.4, 1.5]])
    W = 64
    th = meanfield.propagate(meanfield.mlp(1, "tanh", sigma_w=1.3), K0, width=W, seed=3)
    C = 1.69 * K0
    def moment(s, k):
        return si.quad(lambda z: np.tanh(s * z) ** k * np.exp(-z * z / 2) / math.sqrt(2 * math.pi), -12, 12,
                       epsabs=1e-14)[0]

    for a in range(2):
        m4, m2 = moment(math.sqrt(C[a, a]), 4), moment(math.sqrt(C[a, a]), 2)
        assert th.gram_cov[1, a, a, a, a] == pytest.approx((m4 - m2 * m2) / W, rel=2e-3)
    x, w = np.polynomial.hermite_e.hermegauss(200)
    w = w / w.sum()
    Lc = np.linalg.cholesky(C)
    u = Lc[0, 0] * x[:, None] + 0 * x[None, :]
    v = Lc[1, 0] * x[:, None] + Lc[1, 1] * x[None, :]
    ww = w[:, None] * w[None, :]
    e22 = np.sum(ww * np.tanh(u) ** 2 * np.tanh(v) ** 2)
    e11 = np.sum(ww * np.tanh(u) * np.tanh(v))
    assert th.gram_cov[1, 0, 1, 0, 1] == pytest.approx((e22 - e11 * e11) / W, rel=2e-3)
    np.testing.assert_allclose(th.gram[1], th.info["meanfield_gram"][1], atol=1e-15)  # one block: no shift


def test_several_widths_one_computation_and_scaling():
    X = _inputs(3)
    net = meanfield.mlp(3, "relu", norm="ln")
    both = meanfield.fluctuations.propagate_finite(net, X=X, width=[64, 256], nodes=2**10, order=1)
    one = propagate_finite(net, X=X, width=256, nodes=2**10, order=1)
    np.testing.assert_allclose(both[256].gram_cov, one.gram_cov, rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(both[64].gram_cov, 4 * both[256].gram_cov, rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(both[64].info["shift"], 4 * both[256].info["shift"], rtol=1e-12, atol=1e-18)
    mf = meanfield.propagate(net, X=X)
    np.testing.assert_allclose(one.info["meanfield_gram"], mf.gram, atol=1e-13)
    assert one.gram_cov.shape == (4, 3, 3, 3, 3)
    # symmetric in both index pairs and between them
    c = one.gram_cov
    np.testing.assert_allclose(c, np.swapaxes(c, 1, 2), atol=0)
    np.testing.assert_allclose(c, np.transpose(c, (0, 3, 4, 1, 2)), atol=1e-15)


def test_deterministic_and_reported_error():
    X = _inputs(3)
    net = meanfield.mlp(2, "gelu", norm="ln", placement="pre")
    a = propagate_finite(net, X=X, width=128, nodes=2**10, seed=5)
    b = propagate_finite(net, X=X, width=128, nodes=2**10, seed=5)
    np.testing.assert_array_equal(a.gram_cov, b.gram_cov)
    c = propagate_finite(net, X=X, width=128, nodes=2**12, seed=6)
    # two independent estimates agree within their reported standard errors
    se = np.hypot(a.info["gram_cov_stderr"], c.info["gram_cov_stderr"])
    assert np.all(np.abs(a.gram_cov - c.gram_cov) <= 6 * se + 1e-12 * np.abs(a.gram_cov).max())
    assert a.info["nodes"] == 2**10 and a.info["replicates"] == 8


# ---------------------------------------------------------------------------------------------------------
# against the simulator
NETS = {
    "relu": lambda: meanfield.mlp(3, "relu", sigma_w=2**0.5),
    "tanh-bias": lambda: meanfield.mlp(3, "tanh", sigma_w=1.2, sigma_b=0.1),
    "gelu-ln-post": lambda: meanfield.mlp(3, "gelu", norm="ln"),
    "relu-ln-pre": lambda: meanfield.mlp(3, "relu", norm="ln", placement="pre"),
    "relu-bn-pre": lambda: meanfield.mlp(2, "relu", norm="bn", placement="pre"),
    "tanh-center-scale": lambda: Network([Block((Dense(1.2, 0.1), Activation("tanh"), Center(), Scale()))
                                          for _ in range(3)]),
    "ungrouped": lambda: Network([Dense(1.0), Activation("relu"), LayerNorm(), Dense(1.0), LayerNorm(),
                                  Activation("tanh")]),
    "gln-pre": lambda: meanfield.mlp(2, "relu", norm="gln", groups=2, placement="pre"),
    "readout": lambda: meanfield.mlp(2, "tanh", norm="ln", readout=128),
    "weightnorm": lambda: Network([Block((Dense(1.0), Activation("relu")))] + [
        Block((meanfield.WeightNormDense(1.4, sigma_b=0.1), Activation("tanh"))) for _ in range(2)]),
    "center-scale-per-sample": lambda: Network([Block((Dense(1.1, 0.2), Activation("relu"), Center("per_sample"),
                                                      Scale("per_sample"))) for _ in range(3)]),
}


@pytest.mark.parametrize("name", list(NETS))
def test_variance_and_mean_against_simulation(name):
    """Every Gram entry of every block: predicted variance within 4 standard errors of the simulated one plus
    a first-order allowance of 3 depth / W; the predicted mean within 4 standard errors plus a fifth of the
    predicted shift."""
    net = NETS[name]()
    X = _inputs(3)
    W, S = 256, 2000
    th = meanfield.propagate(net, X=X, width=W)
    sim = meanfield.simulate(net, X, width=W, seeds=S, seed=11)
    for L in range(1, net.depth + 1):
        G = sim.gram[:, L]
        v, se = _sample_var(G)
        pv = _entry_var(th, L)
        live = pv > 1e-12 * pv.max()
        tol = 4 * se + 3 * L / W * pv
        assert np.all(np.abs(pv - v)[live] <= tol[live]), (name, L, pv / np.where(v > 0, v, 1))
        mse = np.sqrt(v / S)
        shift = np.abs(th.info["shift"][L])
        assert np.all(np.abs(G.mean(axis=0) - th.gram[L]) <= 4 * mse + 0.2 * shift + 1e-12), (name, L)


def test_mean_shift_against_simulation():
    """The 1/W shift of the mean (the von Mises term of a norm before the activation, the curvature of the
    ReLU kernel, the weight-norm scale) where it is many standard errors away from the mean field: W = 64,
    20000 seeds."""
    X = _inputs(3)
    W, S = 64, 20000
    wn = Network([Block((Dense(1.0), Activation("relu")))] + [
        Block((meanfield.WeightNormDense(1.4, sigma_b=0.1), Activation("relu"))) for _ in range(2)])
    for net in (meanfield.mlp(3, "relu", norm="ln", placement="pre"), meanfield.mlp(3, "relu", norm="ln"), wn):
        th = meanfield.propagate(net, X=X, width=W)
        sim = meanfield.simulate(net, X, width=W, seeds=S, seed=2)
        L = net.depth
        mean = sim.gram[:, L].mean(axis=0)
        se = sim.gram[:, L].std(axis=0) / math.sqrt(S)
        mfv = th.info["meanfield_gram"][L]
        off = ~np.eye(3, dtype=bool)
        shift = th.info["shift"][L]
        assert np.max((np.abs(mean - mfv) / se)[off]) > 5               # the mean field misses it
        assert np.all(np.abs(mean - th.gram[L])[off] <= 4 * se[off] + 0.1 * np.abs(shift[off]))


def test_isometry_floor_against_simulation():
    """LayerNorm after ReLU: the mean isometry gap leaves the mean-field curve and settles on the floor."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 32))
    X[1] = X[0] + 0.3 * X[1]
    net = meanfield.mlp(24, "relu", norm="ln")
    th = meanfield.propagate(net, X=X, width=512)
    sim = meanfield.simulate(net, X, width=512, seeds=400, seed=1)
    mf = meanfield.propagate(net, X=X)
    e, s = th.expected("isometry_gap"), th.std("isometry_gap")
    es, ss = sim.expected("isometry_gap"), sim.std("isometry_gap")
    assert mf.isometry_gap()[-1] < 0.2 * es[-1]                        # the floor is not mean field
    assert np.all(np.abs(e[1:] - es[1:]) <= 0.05 * es[1:] + 4 * ss[1:] / math.sqrt(400)), e / es
    # the spread: 400 seeds estimate a std to about 4% (and the gap is skewed near the floor)
    np.testing.assert_allclose(s[1:], ss[1:], rtol=0.2)


# ---------------------------------------------------------------------------------------------------------
# measures of a random Gram: the delta method against Monte Carlo over Gaussian Grams
def _random_gram_law(n, eps, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n + 3))
    K = A @ A.T / (n + 3) + 0.3 * np.eye(n)
    p = n * (n + 1) // 2
    B = rng.standard_normal((p, p))
    S = eps * B @ B.T / p
    from meanfield.fluctuations import _full

    return K, _full(S, n), S


@pytest.mark.parametrize("measure", ["isometry_gap", "isometry", "mean_correlation", "gamma", "potential",
                                     "correlations"])
def test_measure_moments_against_gaussian_monte_carlo(measure):
    n = 4
    K, T, S = _random_gram_law(n, 5e-4, 1)     # small: the neglected third-order terms scale with it
    mean, std = measure_moments(measure, K, T)
    rng = np.random.default_rng(2)
    lam, V = np.linalg.eigh(S)
    draws = rng.standard_normal((40000, S.shape[0])) @ (V * np.sqrt(np.maximum(lam, 0))).T
    from meanfield.fluctuation_rules import to_sym

    Ks = K + to_sym(draws, n)
    vals = meanfield.measures.correlations(Ks) if measure == "correlations" else getattr(meanfield.measures, {
        "gamma": "gamma_from_gram"}.get(measure, measure))(Ks)
    mc_mean, mc_std = vals.mean(axis=0), vals.std(axis=0)
    se = mc_std / math.sqrt(vals.shape[0])
    assert np.all(np.abs(mean - mc_mean) <= 5 * se + 0.02 * mc_std + 1e-12)
    np.testing.assert_allclose(std, mc_std, rtol=0.05, atol=1e-12)


def test_floor_of_the_gap_at_isometry():
    """At K = I the gap's gradient vanishes: mean <H, T>/2 and spread sqrt(tr (H T)^2 / 2), both O(1/W)."""
    n = 3
    K, T, _ = _random_gram_law(n, 1e-4, 3)
    K = np.eye(n)
    mean, std = measure_moments("isometry_gap", K, T)
    assert mean > 0 and std > 0
    mean2, std2 = measure_moments("isometry_gap", K, 2 * T)
    assert mean2 == pytest.approx(2 * mean, rel=1e-12) and std2 == pytest.approx(2 * std, rel=1e-12)


def test_trajectory_spread_on_every_engine():
    X = _inputs(3)
    net = meanfield.mlp(2, "tanh", norm="ln")
    mf = meanfield.propagate(net, X=X)
    np.testing.assert_array_equal(mf.std("isometry_gap"), 0.0)
    np.testing.assert_allclose(mf.expected("isometry_gap"), mf.isometry_gap())
    sim = meanfield.simulate(net, X, width=64, seeds=4, seed=0)
    np.testing.assert_allclose(sim.std("potential"), sim.potential().std(axis=0, ddof=1))
    np.testing.assert_allclose(sim.expected("gram"), sim.gram.mean(axis=0))
    th = meanfield.propagate(net, X=X, width=64)
    assert th.std("gram").shape == (3, 3, 3) and th.std("correlations").shape == (3, 3, 3)
    assert th.expected("mean_correlation").shape == (3,)
    with pytest.raises(ValueError, match="measure='nope' must be one of"):
        th.std("nope")


# ---------------------------------------------------------------------------------------------------------
# what the theory refuses
@pytest.mark.parametrize("net, match", [
    (meanfield.mlp(2, "relu", residual=0.5), "Residual"),
    (Network([Dense(), Activation("relu"), meanfield.WeightNormDense(init="data")]), "WeightNormDense"),
    (meanfield.mlp(2, "relu", norm="bn"), "Monte Carlo"),                # ReLU -> BN: no exact mean field
    (meanfield.mlp(2, "relu", norm="bn", bn_mode="large_batch"), "large_batch"),
    (meanfield.mlp(2, "relu", norm="gln", group_size=4), "group_size=4"),
    (Network([Dense(), LayerNorm(), Activation("relu"), Center("per_sample")]), "needs an Activation before it"),
    (Network([Dense(), Center("per_sample")]), "needs an Activation before it"),
    (Network([Dense(), LayerNorm(), Activation("relu"), meanfield.BatchNorm()]), "this order of layers"),
    (Network([Dense(), meanfield.MaxPool(2)]), "MaxPool"),
])
def test_unsupported_layers_raise(net, match):
    with pytest.raises(ValueError, match=match):
        meanfield.propagate(net, np.eye(3) * 0.7 + 0.3, width=64)


@pytest.mark.parametrize("kwargs, match", [
    ({"width": 1}, "width=1 must be an integer >= 2"),
    ({"width": 2.5}, "width=2.5 must be"),
    ({"width": []}, "non-empty sequence"),
    ({"width": 64, "nodes": 1000}, "nodes=1000 must be a power of two"),
    ({"width": 64, "replicates": 1}, "replicates=1 must be an integer in"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        propagate_finite(meanfield.mlp(1, "relu"), np.eye(2), **kwargs)


def test_weight_norm_on_the_data_raises():
    """On the data itself (finite fan-in d) weight norm gives a spherical law, not Gaussian units."""
    with pytest.raises(ValueError, match="not Gaussian"):
        meanfield.propagate(meanfield.mlp(2, "relu", norm="wn"), X=_inputs(3), width=64)


def test_too_many_inputs_and_other_options():
    with pytest.raises(ValueError, match="n <= 16"):
        meanfield.propagate(meanfield.mlp(1, "relu"), np.eye(17), width=64)
    with pytest.raises(ValueError, match="exchangeable"):
        meanfield.propagate(meanfield.mlp(1, "relu"), np.eye(2), width=64, exchangeable=True)
    with pytest.raises(ValueError, match="multiple of the 3 groups"):
        meanfield.propagate(meanfield.mlp(1, "relu", norm="gln", groups=3), np.eye(2), width=64)


# ---------------------------------------------------------------------------------------------------------
# theory bands in meanfield.plot
def test_theory_bands_in_plots():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scipy.special as sc

    from meanfield import plot

    X = _inputs(3)
    net = meanfield.mlp(4, "relu", norm="ln")
    mf = meanfield.propagate(net, X=X)
    sims = {64: meanfield.simulate(net, X, width=64, seeds=6, seed=1),
            256: meanfield.simulate(net, X, width=256, seeds=6, seed=2)}
    ax = plot.theory_vs_simulation(mf, sims, "isometry_gap", theory=True)
    labels = [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert labels == ["mean field", "width 64", "theory 64", "width 256", "theory 256"]
    th = meanfield.propagate(net, X=X, width=64)
    (mean_line,) = [ln for ln in ax.get_lines() if ln.get_label() == "theory 64"]
    # a gamma law with the predicted mean and spread: median line, 10% and 90% dotted
    mean, std = th.expected("isometry_gap"), th.std("isometry_gap")
    with np.errstate(divide="ignore"):                       # block 0 has no spread
        k, theta = (mean / std) ** 2, std**2 / mean
    np.testing.assert_allclose(mean_line.get_ydata()[1:], sc.gammaincinv(k[1:], 0.5) * theta[1:], rtol=1e-10)
    i = ax.get_lines().index(mean_line)
    hi = ax.get_lines()[i + 2].get_ydata()
    np.testing.assert_allclose(hi[1:], sc.gammaincinv(k[1:], 0.9) * theta[1:], rtol=1e-10)
    mean_c, lo_c, hi_c = plot.theory_band(th, "mean_correlation")
    np.testing.assert_allclose(hi_c, th.expected("mean_correlation") + sc.ndtri(0.9) * th.std("mean_correlation"))
    assert ax.get_lines()[i + 1].get_color() == mean_line.get_color() == ax.get_lines()[i - 1].get_color()
    with pytest.raises(ValueError, match="grad_norms"):
        plot.theory_band(th, "grad_norms")
    plt.close("all")


# ---------------------------------------------------------------------------------------------------------
# the validation sweep (benchmarks/validate_fluctuations.py) at reduced size
@pytest.mark.slow
def test_validation_sweep_reduced():
    """Three networks, 10 blocks, widths 256 and 1024, 1500 seeds: every entry of every block within 10% plus
    3 standard errors, and the predicted mean gap within 15% at width 1024."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "validate_fluctuations", Path(__file__).resolve().parent.parent / "benchmarks" / "validate_fluctuations.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    X = bench.inputs()
    for name in ("tanh", "relu+LN pre", "gelu+LN post"):
        rows = bench.compare(meanfield.mlp(10, **bench.NETS[name]), X, [256, 1024], 1500)
        for r in rows:  # worst_se: the relative standard error of the simulated variance of that entry
            assert abs(r["worst_ratio"] - 1) <= 0.10 + 3 * r["worst_se"], (name, r)
        assert abs(rows[-1]["gap_pred"] / rows[-1]["gap_sim"] - 1) <= 0.15, (name, rows[-1])
