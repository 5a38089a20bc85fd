"""Tests of meanfield.bias: initial guessing bias (Francazi et al. 2024, 2025)."""

import math

import numpy as np
import pytest
import scipy.integrate as si
import scipy.stats as st

import meanfield
from meanfield import Block, Dense, MaxPool, Network, bias, mlp

RELU_G1 = 1.0 / (math.pi - 1.0)  # ReLU, one hidden layer: c = 1/pi
SW = math.sqrt(2.0)
PLACEMENTS = [(None, "post"), ("ln", "pre"), ("ln", "post"), ("bn", "pre"), ("bn", "post")]


def relu_net(depth, norm=None, placement="post"):
    return mlp(depth, "relu", norm=norm, placement=placement, sigma_w=SW, sigma_b=0.0)


# ------------------------------------------------------------------------------------------------
# mean-field gamma: the expected behaviour of the issue
def test_relu_no_norm_one_layer_and_growth():
    g = bias.gamma_trajectory(relu_net(12))
    assert g[0] == 0.0
    assert abs(g[1] - RELU_G1) < 1e-12
    assert abs(bias.gamma(relu_net(1)) - RELU_G1) < 1e-12
    assert np.all(np.diff(g[1:]) > 0.1)  # grows with depth
    assert bias.zero_bias_regime(g[1:]) == "divergent"
    assert bias.zero_bias_regime(g[1]) == "finite"


def test_layernorm_pre_equals_no_norm():
    np.testing.assert_allclose(bias.gamma_trajectory(relu_net(10, "ln", "pre")),
                               bias.gamma_trajectory(relu_net(10)), rtol=1e-12, atol=1e-14)


def test_batchnorm_pre_constant():
    g = bias.gamma_trajectory(relu_net(8, "bn", "pre"))
    np.testing.assert_allclose(g[1:], RELU_G1, rtol=1e-12)
    assert bias.zero_bias_regime(g[1:]) == "finite"


@pytest.mark.parametrize("norm", ["ln", "bn"])
def test_post_norms_neutral(norm):
    g = bias.gamma_trajectory(relu_net(8, norm, "post"))
    assert np.all(g >= 0) and np.all(g < 1e-12)
    assert bias.zero_bias_regime(g[1:]) == "zero"


@pytest.mark.parametrize("act", ["tanh", "sin", "erf"])
def test_odd_activations_neutral(act):
    assert abs(bias.gamma(mlp(1, act, sigma_w=1.0))) < 1e-12
    assert abs(bias.gamma(mlp(1, act, sigma_w=1.5))) < 1e-12


def test_sigmoid_large_and_growing():
    g = bias.gamma_trajectory(mlp(3, "sigmoid", sigma_w=1.0))
    assert g[1] > 5.0
    assert g[3] > 1000.0
    assert bias.zero_bias_regime(g[1:]) == "divergent"


def test_maxpool_biases_a_linear_network():
    assert bias.gamma(mlp(3, "identity")) == 0.0
    net = Network([Block([Dense(1.0), MaxPool(2)])])
    # k = 2: c = (E max(z1, z2))^2 / E max^2 = (1/sqrt(pi))^2 / 1 = 1/pi, as for ReLU; Monte Carlo rule
    g = bias.gamma(net, mc_samples=2**18)
    assert abs(g - RELU_G1) < 0.02
    assert bias.zero_bias_regime(g) == "finite"


@pytest.mark.parametrize("r", [0.2, 0.5, 0.9])
def test_input_mean_shift(r):
    np.testing.assert_allclose(bias.gamma_trajectory(mlp(3, "identity"), r), r / (1 - r), rtol=1e-12)
    # the shift biases an odd activation, and a ReLU network more than without it
    assert bias.gamma(mlp(1, "tanh"), r) > 0.05
    assert bias.gamma(relu_net(1), r) > RELU_G1


def test_edge_values():
    assert bias.gamma(mlp(2, "relu"), 1.0) == math.inf  # identical inputs
    assert math.isnan(bias.gamma(mlp(1, "relu", sigma_w=0.0)))  # output identically 0
    assert bias.gamma_from_correlation(1.0) == math.inf
    np.testing.assert_allclose(bias.gamma_from_correlation(bias.correlation_from_gamma([0.0, 0.3, 5.0])),
                               [0.0, 0.3, 5.0], rtol=1e-14)
    assert bias.correlation_from_gamma(math.inf) == 1.0
    assert abs(bias.output_correlation(relu_net(1)) - 1 / math.pi) < 1e-12


def test_zero_bias_regime_rules():
    assert bias.zero_bias_regime(0.0) == "zero"
    assert bias.zero_bias_regime(-1e-3) == "zero"
    assert bias.zero_bias_regime(1e-7) == "zero"
    assert bias.zero_bias_regime(1e-7, eps=1e-8) == "finite"
    assert bias.zero_bias_regime(0.5) == "finite"
    assert bias.zero_bias_regime(101.0) == "divergent"
    assert bias.zero_bias_regime(101.0, large=1e3) == "finite"
    assert bias.zero_bias_regime(math.inf) == "divergent"
    assert bias.zero_bias_regime([0.5, 0.6]) == "finite"  # too short to tell a trend
    assert bias.zero_bias_regime([0.5, 0.5, 0.5, 0.5]) == "finite"  # flat
    assert bias.zero_bias_regime([0.5, 0.6, 0.5999]) == "finite"  # decreasing
    assert bias.zero_bias_regime([0.1, 0.3, 0.4]) == "finite"  # geometric convergence to 0.5
    assert bias.zero_bias_regime([0.1, 0.5, 0.95]) == "divergent"  # increments growing
    assert bias.zero_bias_regime([1.0, 50.0, 99.0]) == "divergent"  # linear growth
    assert bias.zero_bias_regime([1.0, 41.0, 80.0]) == "divergent"  # converging, but to 80 + 39 * 39 > 100
    assert bias.zero_bias_regime([1.0, 41.0, 80.0], large=2000.0) == "finite"


def test_francazi_regimes_follow_the_class_fraction_law():
    """Francazi et al.: neutral iff G_0 = Phi(sqrt(gamma) Z) is unimodal at 1/2 (gamma < 1), prejudiced iff
    U-shaped (1 < gamma < inf), the neutrality boundary at c = 1/2 (compute_neutrality.py of Bassi et al.)."""
    for g in (0.0, 1e-4, 0.3, 0.999, 1.001, 2.0, 50.0, 1e6):
        law = bias.class_fraction_law(g)
        unimodal = g == 0.0 or law.pdf(0.5) > law.pdf(0.05)
        assert bias.regime(g) == ("neutral" if unimodal else "prejudiced"), g
    assert bias.regime(1.0) == "boundary" and abs(bias.class_fraction_law(1.0).pdf(0.123) - 1.0) < 1e-14
    for c in (0.49, 0.51):
        assert bias.regime(bias.gamma_from_correlation(c)) == ("neutral" if c < 0.5 else "prejudiced")
    assert bias.regime(math.inf) == "deep prejudice"


def test_francazi_regime_rules():
    assert bias.regime(-1e-3) == "neutral"  # a simulated estimate below 0
    assert bias.regime(1e3) == "prejudiced"  # a finite number is never deep prejudice ...
    assert bias.regime([1.0, 50.0, 99.0]) == "deep prejudice"  # ... a curve growing at least linearly is
    assert bias.regime([0.1, 0.5, 0.95]) == "deep prejudice"
    assert bias.regime([1.0, 41.0, 80.0]) == "prejudiced"  # converging geometrically: classified by g_L
    assert bias.regime([0.47, 0.47, 0.47]) == "neutral"  # BN before the activation
    assert bias.regime([0.9, 0.5, 0.2]) == "neutral"  # decreasing
    # the finite-width, finite-data tolerance: gamma compared with 1 within k standard errors
    assert bias.regime(0.97, stderr=0.02) == "boundary"
    assert bias.regime(0.97, stderr=0.02, k=1.0) == "neutral"
    assert bias.regime(1.1, stderr=0.02) == "prejudiced"
    assert bias.regime(0.0009, stderr=0.0001) == "neutral"  # LayerNorm after the activation, width 512
    assert bias.regime([0.2, 0.5, 0.97], stderr=[0.0, 0.01, 0.02]) == "deep prejudice"
    # an ordered network reaches c = 1 up to round-off and stalls there: infinite up to the maps' accuracy
    assert bias.regime([4e7, 2.1e15, 2.1e15, 2.1e15]) == "deep prejudice"
    g = bias.gamma_trajectory(mlp(100, "relu", sigma_w=math.sqrt(0.72), sigma_b=math.sqrt(0.0125)))
    assert bias.regime(g[1:]) == "deep prejudice"


def test_francazi_regimes_of_the_placements():
    """Mean field, ReLU, sigma_w^2 = 2: no norm and LN before the activation are deep-prejudiced, BN before
    is neutral (gamma = 1/(pi - 1) at every depth), a norm after the activation neutral (gamma = 0)."""
    expect = {(None, "post"): "deep prejudice", ("ln", "pre"): "deep prejudice", ("bn", "pre"): "neutral",
              ("ln", "post"): "neutral", ("bn", "post"): "neutral"}
    for (norm, placement), label in expect.items():
        assert bias.regime(bias.gamma_trajectory(relu_net(8, norm, placement))[1:]) == label
    # two and three ReLU layers cross the boundary gamma = 1 (0.975 -> 1.531)
    g = bias.gamma_trajectory(relu_net(3))
    assert [bias.regime(x) for x in g[1:]] == ["neutral", "neutral", "prejudiced"]


def test_francazi_regime_of_tanh_phases():
    """tanh with sigma_b^2 = 0.1: ordered phase (sigma_w^2 = 0.5) c -> 1, deep prejudice; chaotic phase:
    the fixed point c* decides, neutral iff c* <= 1/2 (Bassi et al.'s neutrality line)."""
    sb = math.sqrt(0.1)
    assert bias.regime(bias.gamma_trajectory(mlp(12, "tanh", sigma_w=math.sqrt(0.5), sigma_b=sb))[1:]) \
        == "deep prejudice"
    for w2 in (2.0, 8.0):
        net = mlp(40, "tanh", sigma_w=math.sqrt(w2), sigma_b=sb)
        c_star = bias.output_correlation(net)
        assert bias.regime(bias.gamma_trajectory(net)[1:]) == ("neutral" if c_star < 0.5 else "prejudiced")


def test_simulated_deep_prejudice():
    """Every initialization sends all the data to one class: the finite-data signature of gamma = inf."""
    sim = bias.simulate(mlp(5, "sigmoid"), n_points=200, seeds=12, width=128)
    assert np.all(sim.fractions.max(axis=1) == 1.0) and sim.regime() == "deep prejudice"
    assert sim.zero_bias_regime() == "divergent"


def test_phase_diagram_relu_and_tanh():
    sb2 = [0.0, 0.1, 0.5]
    sw2 = [1.0, 2.0, 3.0]
    pd_relu = bias.phase_diagram("relu", 4, sb2, sw2)
    assert pd_relu.gamma.shape == (3, 3) and pd_relu.gamma_depth.shape == (3, 3, 5)
    # zero bias: ReLU is homogeneous, gamma does not depend on sigma_w (rows sigma_b^2, columns sigma_w^2)
    np.testing.assert_allclose(pd_relu.gamma[0, :], pd_relu.gamma[0, 0], rtol=1e-10)
    np.testing.assert_allclose(pd_relu.gamma_depth[0, 0, 1], RELU_G1, rtol=1e-12)
    assert set(pd_relu.zero_bias.ravel()) == {"divergent"}
    assert set(pd_relu.regime.ravel()) == {"deep prejudice"}  # Francazi et al.: ReLU c -> 1 everywhere
    pd_tanh = bias.phase_diagram("tanh", 4, sb2, sw2)
    assert np.all(pd_tanh.gamma[0, :] < 1e-12) and np.all(pd_tanh.zero_bias[0, :] == "zero")
    assert np.all(pd_tanh.regime[0, :] == "neutral")
    assert np.all(pd_tanh.gamma[1:, :] > 0)
    assert np.all(pd_tanh.zero_bias_codes()[0, :] == 0) and np.all(pd_tanh.zero_bias_codes()[1:, :] >= 1)
    # tanh with a bias: deep prejudice in the ordered phase (small sigma_w), prejudiced in the chaotic one
    pd_t = bias.phase_diagram("tanh", 10, [0.1], [0.5, 8.0])
    assert list(pd_t.zero_bias[0]) == ["divergent", "finite"]
    # BN before the activation freezes gamma: never deep prejudice at zero bias
    pd_bn = bias.phase_diagram("relu", 4, [0.0], [1.0, 2.0], norm="bn", placement="pre")
    assert pd_bn.gamma.shape == (1, 2)
    assert np.all(pd_bn.zero_bias == "finite")
    assert np.all(pd_bn.regime == "neutral")  # Francazi et al.: gamma = 1/(pi - 1) < 1
    np.testing.assert_allclose(pd_bn.gamma, RELU_G1, rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# the class-fraction law
@pytest.mark.parametrize("g", [0.05, 0.3, 1.0, 2.5, 20.0])
def test_law_closed_forms_against_quadrature(g):
    law = bias.class_fraction_law(g)
    c = g / (1 + g)

    def lower(f, b=0.5):
        """int_0^b f(x) pdf(x) dx, b <= 1/2, with x = Phi(y): the end-point singularity of the density
        (gamma > 1) becomes a smooth Gaussian-like tail, and x near 0 is represented accurately."""
        h = lambda y: f(st.norm.cdf(y)) * law.pdf(st.norm.cdf(y)) * st.norm.pdf(y)
        return si.quad(h, -37.0, st.norm.ppf(b), limit=400, epsabs=1e-14, epsrel=1e-12)[0]

    one = lambda x: 1.0
    for x in (0.01, 0.2, 0.37):  # the density is symmetric about 1/2
        assert abs(law.pdf(x) - law.pdf(1 - x)) <= 1e-12 * law.pdf(x)
    assert abs(2 * lower(one) - 1.0) < 1e-9
    for x in (0.001, 0.1, 0.4, 0.5):
        assert abs(lower(one, x) - law.cdf(x)) < 1e-9
        assert abs(lower(one, x) - law.sf(1 - x)) < 1e-9
        assert abs(law.cdf(x) + law.sf(x) - 1.0) < 1e-15
        assert abs(law.ppf(law.cdf(x)) - x) < 1e-9 * max(1, x / law.pdf(x))
    var_q = 2 * lower(lambda x: (x - 0.5) ** 2)
    assert abs(law.var() - var_q) < 1e-9
    assert abs(law.var() - math.asin(c) / (2 * math.pi)) < 1e-15
    maj_q = 2 * lower(lambda x: 1 - x)
    assert abs(law.expected_majority() - maj_q) < 1e-9
    # Var Phi(sZ) = P(U1 <= sZ, U2 <= sZ) - 1/4: an orthant probability with correlation c
    orth = st.multivariate_normal(mean=[0, 0], cov=[[1, c], [c, 1]]).cdf([0, 0])
    assert abs(law.var() - (orth - 0.25)) < 1e-6
    for t in (0.5, 0.6, 0.9, 0.99):
        assert abs(law.majority_sf(t) - 2 * lower(one, 1 - t)) < 1e-9
        assert abs(law.majority_cdf(t) + law.majority_sf(t) - 1) < 1e-15
        if t > 0.5:
            assert abs(law.majority_pdf(t) - 2 * law.pdf(t)) <= 1e-15 * law.pdf(t)
    assert abs(law.prob_extreme(0.1) - 2 * law.cdf(0.1)) < 1e-15
    assert law.mean() == 0.5


@pytest.mark.parametrize("g", [0.2, 1.0, 6.0])
def test_law_against_monte_carlo(g):
    law = bias.class_fraction_law(g)
    x = law.sample(200_000, rng=np.random.default_rng(3))
    n = x.size
    assert abs(x.mean() - 0.5) < 4 * math.sqrt(0.25 / n)
    assert abs(x.var() - law.var()) < 4 * math.sqrt(np.var((x - 0.5) ** 2) / n)
    maj = np.maximum(x, 1 - x)
    assert abs(maj.mean() - law.expected_majority()) < 4 * maj.std() / math.sqrt(n)
    assert st.kstest(x[:20000], law.cdf).pvalue > 1e-3
    for t in (0.6, 0.9):
        p = law.majority_sf(t)
        assert abs(np.mean(maj > t) - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_law_shapes_and_limits():
    assert abs(bias.class_fraction_law(1.0).pdf(0.3) - 1.0) < 1e-14  # uniform at gamma = 1
    assert bias.class_fraction_law(0.3).pdf(0.0) == 0.0 and bias.class_fraction_law(3.0).pdf(1.0) == np.inf
    lo = bias.class_fraction_law(0.0)
    assert lo.var() == 0.0 and lo.expected_majority() == 0.5 and lo.cdf(0.49) == 0 and lo.cdf(0.5) == 1
    assert np.all(lo.sample(5, rng=0) == 0.5)
    hi = bias.class_fraction_law(math.inf)
    assert hi.var() == 0.25 and hi.expected_majority() == 1.0 and hi.cdf(0.3) == 0.5
    assert set(np.unique(hi.sample(100, rng=0))) == {0.0, 1.0}
    np.testing.assert_allclose(bias.class_fraction_law(0.5).pdf([-0.1, 1.1]), 0.0)
    assert bias.class_fraction_law(0.5).cdf(np.array([0.2, 0.8])).shape == (2,)


def test_sample_fractions_two_classes_is_the_law():
    g = 0.8
    f = bias.sample_fractions(g, 2, 20000, rng=1)
    assert f.shape == (20000, 2)
    np.testing.assert_allclose(f.sum(axis=1), 1.0, rtol=1e-14)
    assert st.kstest(f[:, 0], bias.class_fraction_law(g).cdf).pvalue > 1e-3


def test_sample_fractions_many_classes():
    from meanfield.class_fractions import _fractions_given_means

    rng = np.random.default_rng(5)
    g = 1.7
    m = rng.standard_normal((3, 4))
    exact = _fractions_given_means(m, g)
    np.testing.assert_allclose(exact.sum(axis=1), 1.0, rtol=1e-13)
    # brute force: argmax of sqrt(g) m_k + e_k over many inputs
    N = 400_000
    o = math.sqrt(g) * m[:, None, :] + rng.standard_normal((3, N, 4))
    brute = (np.argmax(o, axis=-1)[..., None] == np.arange(4)).mean(axis=1)
    np.testing.assert_allclose(exact, brute, atol=4 * math.sqrt(0.25 / N))
    # exchangeable classes, finite-data variant, gamma = 0 uniform, gamma = inf one class
    f = bias.sample_fractions(g, 5, 4000, rng=2)
    np.testing.assert_allclose(f.mean(axis=0), 0.2, atol=0.02)
    fn = bias.sample_fractions(g, 3, 50, rng=2, n_points=100)
    assert np.allclose(np.round(fn * 100), fn * 100) and np.allclose(fn.sum(axis=1), 1)
    np.testing.assert_allclose(bias.sample_fractions(0.0, 4, 3, rng=0), 0.25, rtol=1e-12)
    assert np.all(bias.sample_fractions(math.inf, 3, 10, rng=0).max(axis=1) == 1.0)


# ------------------------------------------------------------------------------------------------
# bad input
def test_bad_input():
    net = relu_net(1)
    for bad in (-0.1, float("nan"), "x"):
        with pytest.raises(ValueError, match="gamma"):
            bias.class_fraction_law(bad)
        with pytest.raises(ValueError, match="gamma"):
            bias.sample_fractions(bad, 2)
    for r in (1.5, -1.01, float("nan")):
        with pytest.raises(ValueError, match=r"input_correlation.*\[-1, 1\]"):
            bias.gamma(net, r)
    with pytest.raises(ValueError, match="classes=1"):
        bias.sample_fractions(0.5, classes=1)
    with pytest.raises(ValueError, match="classes=1"):
        bias.simulate(net, 10, 2, 8, classes=1)
    with pytest.raises(ValueError, match="data"):
        bias.simulate(net, data=np.zeros((0, 5)))
    with pytest.raises(ValueError, match="n_points"):
        bias.simulate(net, data=np.zeros((1, 5)))
    with pytest.raises(ValueError, match="n_points=1"):
        bias.simulate(net, n_points=1)
    with pytest.raises(ValueError, match="NaN"):
        bias.simulate(net, data=np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match=r"input_correlation.*\[0, 1\]"):
        bias.simulate(net, 10, 2, 8, input_correlation=-0.2)
    with pytest.raises(ValueError, match="seeds=1"):
        bias.simulate(net, 10, 1, 8)
    with pytest.raises(ValueError, match="width"):
        bias.simulate(net, 10, 2, 0)
    with pytest.raises(ValueError, match="NaN"):
        bias.regime(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        bias.zero_bias_regime(float("nan"))
    with pytest.raises(ValueError, match="stderr"):
        bias.regime(0.5, stderr=-1.0)
    with pytest.raises(ValueError, match="k=0"):
        bias.maxpool_gamma(0)
    with pytest.raises(ValueError, match="non-decreasing"):
        bias.maxpool_gamma(2, "sin")
    with pytest.raises(ValueError, match="net"):
        bias.gamma("relu")
    with pytest.raises(ValueError, match="sigma_b2_grid"):
        bias.phase_diagram("relu", 2, [-1.0], [1.0])
    with pytest.raises(ValueError, match="delta"):
        bias.class_fraction_law(1.0).prob_extreme(0.7)


# ------------------------------------------------------------------------------------------------
# simulation against theory
SMALL = dict(n_points=400, seeds=60, width=256)


@pytest.mark.parametrize("norm,placement", PLACEMENTS)
def test_simulation_agrees_with_theory(norm, placement):
    net = relu_net(2, norm, placement)
    theory = bias.gamma(net)
    sim = bias.simulate(net, **SMALL)
    assert sim.fractions.shape == (60, 2) and np.allclose(sim.fractions.sum(axis=1), 1)
    assert abs(sim.gamma - theory) <= 3 * sim.gamma_stderr + 2.0 / sim.n_points + 0.01
    if placement == "post" and norm is not None:
        assert abs(sim.gamma) < 0.01
        assert sim.zero_bias_regime(large=100.0) in ("zero", "finite")
        assert sim.regime() == "neutral"  # Francazi et al.: gamma < 1 within the tolerance
    else:
        assert sim.gamma > 5 * sim.gamma_stderr
    if norm == "bn" and placement == "post":  # batch statistics: every output has data mean exactly 0
        assert sim.gamma == pytest.approx(-1.0 / sim.n_points, abs=1e-12)
        assert np.all(np.abs(sim.output_mean) < 1e-12)


@pytest.mark.parametrize("make,expect", [
    (lambda: Network([Block([Dense(1.0), MaxPool(2)])]), RELU_G1),
    (lambda: mlp(1, "tanh"), 0.0),
    (lambda: mlp(1, "sigmoid"), None),
])
def test_simulation_other_layers(make, expect):
    net = make()
    theory = bias.gamma(net) if expect is None else expect
    sim = bias.simulate(net, **SMALL)
    assert abs(sim.gamma - theory) <= 3 * sim.gamma_stderr + 2.0 / sim.n_points + 0.01 * max(theory, 1)


def test_simulation_input_shift_and_classes():
    sim = bias.simulate(mlp(2, "identity"), **SMALL, input_correlation=0.5)
    assert abs(sim.gamma - 1.0) <= 3 * sim.gamma_stderr + 0.01
    # three classes: the majority fraction follows the Gaussian model of sample_fractions
    net = relu_net(1)
    sim3 = bias.simulate(net, **SMALL, classes=3, seed=2)
    assert sim3.fractions.shape == (60, 3)
    maj = sim3.majority()
    ref = bias.sample_fractions(bias.gamma(net), 3, 20000, rng=0, n_points=sim3.n_points).max(axis=1)
    assert abs(maj.mean() - ref.mean()) <= 3 * maj.std(ddof=1) / math.sqrt(maj.size) + 0.005


def test_simulation_reproducible_and_chunk_independent():
    net = relu_net(1, "ln", "pre")
    a = bias.simulate(net, 100, 6, 64, seed=3)
    b = bias.simulate(net, 100, 6, 64, seed=3, max_memory=200_000)  # one network per chunk
    assert a.gamma == b.gamma and np.array_equal(a.fractions, b.fractions)
    c = bias.simulate(net, 100, 6, 64, seed=4)
    assert a.gamma != c.gamma
    X = np.random.default_rng(0).standard_normal((50, 7))
    d = bias.simulate(net, data=X, seeds=4, width=32)
    assert d.n_points == 50 and d.input_dim == 7


@pytest.mark.slow
def test_simulation_issue_size():
    """Nearer the issue's sizes (2000 points, 200 initializations, width 512); about 25 s on 2 cores."""
    net = relu_net(1)
    sim = bias.simulate(net, n_points=2000, seeds=200, width=512)
    assert abs(sim.gamma - RELU_G1) <= 3 * sim.gamma_stderr
    assert sim.gamma_stderr < 0.05
    law = bias.class_fraction_law(RELU_G1)
    maj = sim.majority()
    assert abs(maj.mean() - law.expected_majority()) <= 3 * maj.std(ddof=1) / math.sqrt(maj.size) + 0.005


def test_gamma_from_gram_matches_the_exchangeable_pair():
    """For an exchangeable n x n Gram, gamma depends only on the mean diagonal and off-diagonal entries."""
    K = 0.7 * np.eye(5) + 0.3  # diag 1, off 0.3 -> c = 0.3, gamma = 0.3/0.7
    assert bias.gamma_from_gram(K) == pytest.approx(0.3 / 0.7, rel=1e-14)
    net = meanfield.mlp(3, "relu", sigma_w=2**0.5)
    t = meanfield.propagate(net, np.eye(2), exchangeable=True)
    np.testing.assert_allclose(t.gamma(), bias.gamma_trajectory(net), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="n >= 2"):
        bias.gamma_from_gram(np.eye(1))
