"""Tests of meanfield.simulate, the finite-width engine.

Independent truths: the closed-form arc-cosine map of ReLU (with and without layer-norm centring), the
chi-square / Beta laws of one random layer, chi_1 from Gauss-Hermite quadrature, finite differences for
the backward pass, and the defining identities of each normalization layer.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
from finite_differences import input_gradient_fd

import meanfield
from meanfield import (
    Activation,
    BatchNorm,
    Block,
    Center,
    Dense,
    GroupLayerNorm,
    LayerNorm,
    Linear,
    MaxPool,
    Network,
    Residual,
    RMSNorm,
    Scale,
    WeightNormDense,
)
from meanfield.finite import simulate

sim_mod = importlib.import_module("meanfield.finite")
SQ2 = math.sqrt(2.0)


# ------------------------------------------------------------------------------------------------------
# independent references
def arccos_map(S: np.ndarray) -> np.ndarray:
    """E relu(u_a) relu(u_b) for u ~ N(0, S): sqrt(S_aa S_bb)/(2 pi) (sin t + (pi - t) cos t)."""
    d = np.sqrt(np.diag(S))
    rho = np.clip(S / np.outer(d, d), -1.0, 1.0)
    t = np.arccos(rho)
    return np.outer(d, d) / (2 * np.pi) * (np.sin(t) + (np.pi - t) * np.cos(t))


def relu_theory(K0: np.ndarray, depth: int, sw2: float = 2.0, ln: bool = False) -> np.ndarray:
    """Mean-field Grams of Dense(sw) -> ReLU [-> LayerNorm] blocks."""
    out = [K0]
    K = K0
    for _ in range(depth):
        S = sw2 * K
        M = arccos_map(S)
        if ln:
            m = np.sqrt(np.diag(S) / (2 * np.pi))
            C = M - np.outer(m, m)
            d = np.sqrt(np.diag(C))
            M = C / np.outer(d, d)
        K = M
        out.append(K)
    return np.array(out)


def batch(n=4, d=8, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X[1] = 0.6 * X[0] + 0.8 * X[1]  # one strongly correlated pair
    X *= np.linspace(0.7, 1.4, n)[:, None]  # unequal norms
    return X


def assert_close_in_se(sim, theory, width, k=4.5):
    """|seed mean - theory| <= k standard errors + a 1.5/width finite-width bias allowance, everywhere."""
    mean = sim.gram.mean(axis=0)
    se = sim.gram.std(axis=0, ddof=1) / math.sqrt(sim.seeds)
    scale = np.sqrt(np.einsum("lii,ljj->lij", theory, theory))
    tol = k * se + 1.5 / width * scale + 1e-12
    bad = np.abs(mean - theory) > tol
    assert not bad.any(), (np.argwhere(bad), (mean - theory)[bad], tol[bad])


# ------------------------------------------------------------------------------------------------------
# agreement with theory
def test_relu_no_norm_matches_arccos_recursion():
    X = batch()
    depth, width = 5, 1024
    net = meanfield.mlp(depth, "relu", sigma_w=SQ2)
    sim = simulate(net, X, width=width, seeds=20, seed=11)
    assert sim.gram.shape == (20, depth + 1, 4, 4) and sim.gram.dtype == np.float64
    th = relu_theory(X @ X.T / X.shape[1], depth)
    np.testing.assert_allclose(sim.gram[:, 0], np.broadcast_to(th[0], (20, 4, 4)), rtol=1e-14)
    assert_close_in_se(sim, th, width)


def test_relu_layernorm_post_matches_centred_arccos_recursion():
    X = batch(seed=2)
    depth, width = 5, 1024
    net = meanfield.mlp(depth, "relu", norm="ln", placement="post", sigma_w=1.3)
    sim = simulate(net, X, width=width, seeds=20, seed=12)
    th = relu_theory(X @ X.T / X.shape[1], depth, sw2=1.3**2, ln=True)
    assert_close_in_se(sim, th, width)
    np.testing.assert_allclose(np.diagonal(sim.gram[:, 1:], axis1=-2, axis2=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(sim.means[:, 1:], 0.0, atol=1e-12)


def test_frobenius_error_shrinks_like_inverse_sqrt_width():
    X = batch(n=3, d=6, seed=3)
    net = meanfield.mlp(3, "relu", sigma_w=SQ2)
    th = relu_theory(X @ X.T / 6, 3)[-1]
    widths = np.array([128, 256, 512, 1024, 2048])
    errs = []
    for w in widths:
        sim = simulate(net, X, width=int(w), seeds=64, seed=5)
        errs.append(np.linalg.norm(sim.gram[:, -1] - th, axis=(-2, -1)).mean())
    slope = np.polyfit(np.log(widths), np.log(errs), 1)[0]
    assert -0.65 <= slope <= -0.35, (slope, errs)


def test_bias_of_the_seed_mean_shrinks_like_inverse_width():
    # ReLU + LN post: E[K_hat] - K_mf = O(1/width) (the fluctuations are O(width^-1/2) but average out).
    X = batch(n=3, d=6, seed=1)
    net = meanfield.mlp(3, "relu", norm="ln", sigma_w=SQ2)
    th = relu_theory(X @ X.T / 6, 3, ln=True)[-1]
    widths = np.array([16, 32, 64])
    bias = []
    for w in widths:
        sim = simulate(net, X, width=int(w), seeds=20000, seed=3)
        bias.append(sim.gram[:, -1].mean(axis=0) - th)
    bias = np.array(bias)
    i, j = np.unravel_index(np.argmax(np.abs(bias[0])), th.shape)
    slope = np.polyfit(np.log(widths), np.log(np.abs(bias[:, i, j])), 1)[0]
    assert -1.3 <= slope <= -0.7, (slope, bias[:, i, j])


def _propagate():
    return importlib.import_module("meanfield.infinite").propagate


def wide_batch(n=4, d=1024, seed=1):
    """X (n, d) whose Gram X X^T / d is a prescribed well-conditioned K0 (so identity shortcuts and
    weight-norm layers see a wide input)."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, n))
    K0 = G @ G.T / n + 0.2 * np.eye(n)
    Q, _ = np.linalg.qr(rng.standard_normal((d, n)))
    return np.linalg.cholesky(K0) @ Q.T * math.sqrt(d)


@pytest.mark.parametrize("act, norm, placement, extra", [
    ("relu", None, "post", {}),
    ("tanh", None, "post", {}),
    ("relu", "ln", "post", {}),
    ("tanh", "ln", "post", {}),
    ("relu", "bn", "pre", {}),
    ("tanh", "rms", "pre", {}),
    ("tanh", "wn", "post", {}),
    ("tanh", "wn", "post", {"wn_init": "data"}),
    ("relu", "ln", "post", {"residual": 0.5, "centering": "per_sample"}),
])
def test_agrees_with_propagate(act, norm, placement, extra):
    propagate = _propagate()
    X = wide_batch(seed=4)
    net = meanfield.mlp(3, act, norm=norm, placement=placement, sigma_w=1.4, sigma_b=0.2, **extra)
    mf = propagate(net, X=X)
    sim = simulate(net, X, width=1024, seeds=20, seed=4)
    th = np.asarray(mf.gram)
    mc = 0.0 if getattr(mf, "mc_error", None) is None else np.asarray(mf.mc_error)[:, None, None]
    mean = sim.gram.mean(axis=0)
    se = sim.gram.std(axis=0, ddof=1) / math.sqrt(sim.seeds)
    scale = np.sqrt(np.einsum("lii,ljj->lij", th, th))
    bad = np.abs(mean - th) > 4.5 * se + 1.5 / 1024 * scale + 4 * mc + 1e-12
    assert not bad.any(), (np.argwhere(bad), (mean - th)[bad])


# ------------------------------------------------------------------------------------------------------
# gradients
def tanh_fixed_point(sw2: float, sb2: float = 0.0):
    z, w = np.polynomial.hermite_e.hermegauss(121)
    w = w / w.sum()
    q = 1.0
    for _ in range(500):
        q = sw2 * np.sum(w * np.tanh(np.sqrt(q) * z) ** 2) + sb2
    chi1 = sw2 * np.sum(w / np.cosh(np.sqrt(q) * z) ** 4)
    return q, chi1


def test_gradient_norms_relu_critical_stay_flat():
    w = 512
    X = np.random.default_rng(0).standard_normal((4, w))
    sim = simulate(meanfield.mlp(6, "relu", sigma_w=SQ2), X, width=w, seeds=16, gradients=True, seed=1)
    g2 = sim.grad_norms ** 2
    assert sim.grad_norms.shape == (16, 7) and sim.grad_gram is None
    mean, se = g2.mean(axis=0), g2.std(axis=0, ddof=1) / 4
    assert np.all(np.abs(mean - 1.0) < 4 * se + 0.05), (mean, se)
    # no trend with depth
    slope = np.polyfit(np.arange(7), np.log(mean), 1)[0]
    assert abs(slope) < 0.02


def test_gradient_norms_tanh_chaotic_grow_like_chi1():
    sw2 = 4.0
    q, chi1 = tanh_fixed_point(sw2)
    assert chi1 > 1.2  # chaotic phase
    w, depth = 512, 8
    X = np.random.default_rng(0).standard_normal((4, w))
    X *= np.sqrt(q / sw2) / np.sqrt((X**2).mean(axis=1, keepdims=True))  # start at the fixed point
    sim = simulate(meanfield.mlp(depth, "tanh", sigma_w=2.0), X, width=w, seeds=16, gradients=True, seed=2)
    g2 = (sim.grad_norms ** 2).mean(axis=0)
    rate = -np.polyfit(np.arange(depth + 1), np.log(g2), 1)[0]  # log of the growth per block toward the input
    assert abs(rate - math.log(chi1)) < 0.1 * math.log(chi1), (rate, math.log(chi1))
    np.testing.assert_allclose(g2[:-1] / g2[1:], chi1, rtol=0.1)


def test_grad_gram_diagonal_matches_norms():
    X = batch(n=3, d=16)
    net = meanfield.mlp(3, "tanh", norm="ln", sigma_w=1.5)
    sim = simulate(net, X, width=32, seeds=3, grad_gram=True)
    assert sim.grad_gram.shape == (3, 4, 3, 3)
    tr = np.trace(sim.grad_gram, axis1=-2, axis2=-1) / 3
    np.testing.assert_allclose(tr, sim.grad_norms ** 2, rtol=1e-12)
    # at the readout every sample receives its own Gaussian r_a: the Gram is r_a . r_b / width, with
    # diagonal near 1 and off-diagonal entries of order width^-1/2
    last = sim.grad_gram[:, -1]
    assert np.all(np.abs(np.diagonal(last, axis1=-2, axis2=-1) - 1) < 1.5)
    assert np.all(np.abs(last - np.diagonal(last, axis1=-2, axis2=-1)[:, :, None] * np.eye(3)) < 1.0)


def test_final_batchnorm_still_has_gradients():
    """Independent per-sample readouts: a network ending in BatchNorm has non-zero gradients."""
    X = batch(n=4, d=16)
    net = Network([Block([Dense(1.0), BatchNorm()])] * 2)
    sim = simulate(net, X, width=64, seeds=2, gradients=True)
    assert np.min(sim.grad_norms) > 0.1


def fd_network():
    return Network([
        Block([Dense(1.2, 0.3), LayerNorm(), Activation("tanh")]),
        Block([Dense(1.5, 0.1), Activation("tanh"), BatchNorm()]),
        Block([Dense(1.1), RMSNorm(), Activation("gelu")]),
        Block([Dense(1.3), GroupLayerNorm(groups=2), Activation("tanh"), Center(), Scale()]),
        Block([WeightNormDense(g=1.4, sigma_b=0.2), Activation("sin"), MaxPool(2)]),
        Block([Residual(branch=[Dense(1.2), Activation("tanh")], alpha=0.7, shortcut=[Dense(0.9)])]),
        Block([Residual(branch=[Dense(1.0), LayerNorm(), Activation("tanh")], alpha=0.5)]),
        Block([GroupLayerNorm(group_size=4), Dense(1.0, 0.5), Activation("softplus")]),
    ])


def test_vjps_against_finite_differences():
    net = fd_network()
    X = np.random.default_rng(7).standard_normal((3, 5))
    loss, grad = sim_mod._input_gradient(net, X, width=8, seed=3)
    assert grad.shape == X.shape and np.all(np.isfinite(grad)) and np.abs(grad).max() > 1e-3
    fd = input_gradient_fd(net, X, width=8, seed=3, h=1e-6)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7 * np.abs(fd).max())


def test_vjps_relu_maxpool_against_finite_differences():
    W = np.random.default_rng(3).standard_normal((5, 6))
    net = Network([Block([Linear(W, b=np.arange(5.0)), LayerNorm()]),
                   Block([Dense(1.4, 0.2), Activation("relu"), MaxPool(3)]),
                   Block([Dense(1.4), Activation("leaky_relu"), LayerNorm()]),
                   Block([Dense(1.0), Activation("relu")])])
    X = np.random.default_rng(8).standard_normal((4, 6))
    loss, grad = sim_mod._input_gradient(net, X, width=9, seed=5)
    fd = input_gradient_fd(net, X, width=9, seed=5, h=1e-7)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())


def test_input_gradient_matches_recorded_norm():
    net = fd_network()
    X = np.random.default_rng(7).standard_normal((3, 5))
    _, grad = sim_mod._input_gradient(net, X, width=8, seed=3)
    sim = simulate(net, X, width=8, seeds=1, seed=3, gradients=True)
    np.testing.assert_allclose(sim.grad_norms[0, 0], np.linalg.norm(grad) / math.sqrt(X.size), rtol=1e-12)


# ------------------------------------------------------------------------------------------------------
# weight norm
def one_layer_variance(layer, w, seeds, **kw):
    """Seed variance of K1/K0 for one sample through one linear layer of fan-in = width = w."""
    X = np.random.default_rng(0).standard_normal((1, w))
    sim = simulate(Network([layer]), X, width=w, seeds=seeds, seed=9, **kw)
    r = sim.gram[:, 1, 0, 0] / sim.gram[:, 0, 0, 0]
    return r.mean(), r.var(ddof=1)


@pytest.mark.parametrize("explicit", [True, False])
def test_weightnorm_fixed_vs_dense_small_and_large_width(explicit):
    # Dense: K1/K0 ~ chi2_w / w, variance 2/w. WN fixed (fan-in d = w): K1/K0 = (d/w) sum_i cos^2 theta_i,
    # cos^2 ~ Beta(1/2, (d-1)/2), variance 2 (d-1) / ((d+2) w). Small width: 0.5 vs 0.25.
    S = 4000
    m_d, v_d = one_layer_variance(Dense(1.0), 4, S, explicit_weights=explicit)
    m_w, v_w = one_layer_variance(WeightNormDense(g=1.0), 4, S, explicit_weights=explicit)
    assert abs(m_d - 1) < 4 * math.sqrt(0.5 / S) and abs(m_w - 1) < 4 * math.sqrt(0.25 / S)
    assert abs(v_d / 0.5 - 1) < 0.12 and abs(v_w / 0.25 - 1) < 0.12
    # large width: the same law to O(1/width)
    S = 150
    m_d, v_d = one_layer_variance(Dense(1.0), 256, S, explicit_weights=explicit)
    m_w, v_w = one_layer_variance(WeightNormDense(g=1.0), 256, S, explicit_weights=explicit)
    assert abs(m_d - m_w) < 4 * math.sqrt((v_d + v_w) / S)
    assert 0.65 < v_w / v_d < 1.5


def test_weightnorm_data_standardizes_each_feature():
    X = batch(n=5, d=7)
    net = Network([WeightNormDense(g=3.0, init="data", sigma_b=2.0)])
    for ew in (True, False):
        sim = simulate(net, X, width=64, seeds=3, explicit_weights=ew)
        K = sim.gram[:, 1]
        # every feature has batch mean 0 and batch variance 1: K 1 = 0 and tr K = n
        np.testing.assert_allclose(K.sum(axis=-1), 0.0, atol=1e-12)
        np.testing.assert_allclose(np.trace(K, axis1=-2, axis2=-1), 5.0, rtol=1e-12)


# ------------------------------------------------------------------------------------------------------
# the shortcut against explicit weights, in distribution
def _ks(a, b):
    from scipy.stats import ks_2samp

    return ks_2samp(a, b).pvalue


def test_shortcut_matches_explicit_weights_in_distribution():
    X = batch(n=4, d=6, seed=5)
    net = meanfield.mlp(3, "relu", norm="ln", sigma_w=1.4, sigma_b=0.3)
    S = 600
    a = simulate(net, X, width=16, seeds=S, seed=1, explicit_weights=False)
    b = simulate(net, X, width=16, seeds=S, seed=2, explicit_weights=True)
    c = simulate(net, X, width=24, seeds=S, seed=3, explicit_weights=False)
    assert set(a.info["dense_modes"]) == {"shortcut"} and set(b.info["dense_modes"]) == {"explicit"}
    stats = (lambda s: s.gram[:, -1, 0, 1], lambda s: s.gram[:, 2, 2, 3], lambda s: s.isometry_gap()[:, -1])
    for stat in stats:
        assert _ks(stat(a), stat(b)) > 1e-3
    # power: a change of width by 1.5 is detected by the same statistics
    assert min(_ks(stat(a), stat(c)) for stat in (lambda s: s.isometry_gap()[:, -1],
                                                   lambda s: s.gram[:, -1, 0, 1])) < 1e-3
    # moments of a Gram entry agree
    x, y = a.gram[:, -1, 0, 1], b.gram[:, -1, 0, 1]
    assert abs(x.mean() - y.mean()) < 4 * math.sqrt((x.var() + y.var()) / S)
    assert 0.8 < x.var() / y.var() < 1.25


@pytest.mark.parametrize("init", ["fixed", "data"])
def test_weightnorm_shortcut_matches_explicit(init):
    X = batch(n=3, d=8, seed=6)
    net = Network([Block([WeightNormDense(g=1.3, init=init, sigma_b=0.2), Activation("tanh")])] * 2)
    S = 800
    a = simulate(net, X, width=8, seeds=S, seed=1, explicit_weights=False)
    b = simulate(net, X, width=8, seeds=S, seed=2, explicit_weights=True)
    assert a.info["dense_modes"] == ["shortcut", "shortcut"]
    for i, j in ((0, 0), (0, 1), (1, 2)):
        assert _ks(a.gram[:, -1, i, j], b.gram[:, -1, i, j]) > 1e-3


def test_weightnorm_fixed_shortcut_when_fan_in_equals_n():
    # fan_in = n: no chi-square part (0 degrees of freedom); fan_in < n: explicit weights
    X = batch(n=3, d=3, seed=7)
    net = Network([Block([WeightNormDense(g=1.2), Activation("tanh")])])
    a = simulate(net, X, width=6, seeds=800, seed=1, explicit_weights=False)
    b = simulate(net, X, width=6, seeds=800, seed=2, explicit_weights=True)
    assert a.info["dense_modes"] == ["shortcut"]
    for i, j in ((0, 0), (0, 1), (1, 2)):
        assert _ks(a.gram[:, -1, i, j], b.gram[:, -1, i, j]) > 1e-3
    c = simulate(net, batch(n=4, d=3), width=6, seeds=2, explicit_weights=False)
    assert c.info["dense_modes"] == ["explicit"]


def test_auto_mode_uses_explicit_weights_when_n_is_large():
    X = np.random.default_rng(0).standard_normal((64, 4))
    sim = simulate(meanfield.mlp(2, "relu"), X, width=16, seeds=2)
    assert sim.info["dense_modes"] == ["explicit", "explicit"]
    sim = simulate(meanfield.mlp(2, "relu"), X[:4], width=256, seeds=2)
    assert sim.info["dense_modes"][1] == "shortcut"


# ------------------------------------------------------------------------------------------------------
# reproducibility, chunking, backends
def test_reproducible_and_seed_prefix():
    X = batch()
    net = meanfield.mlp(3, "tanh", norm="ln")
    a = simulate(net, X, width=64, seeds=6, seed=3)
    b = simulate(net, X, width=64, seeds=6, seed=3)
    c = simulate(net, X, width=64, seeds=6, seed=4)
    d = simulate(net, X, width=64, seeds=3, seed=3)
    assert np.array_equal(a.gram, b.gram) and np.array_equal(a.means, b.means)
    assert not np.allclose(a.gram[:, 1:], c.gram[:, 1:])
    assert np.array_equal(a.gram[:3], d.gram)  # network s does not depend on the number of seeds
    # independent streams: networks differ from each other
    assert not np.allclose(a.gram[0, 1:], a.gram[1, 1:])


@pytest.mark.parametrize("kw", [dict(), dict(explicit_weights=True), dict(gradients=True, grad_gram=True)])
def test_chunking_is_bitwise_invariant(kw):
    X = batch(n=5, d=12)
    net = Network([Block([Dense(1.3, 0.2), Activation("tanh"), LayerNorm()]),
                   Block([Dense(1.2), BatchNorm(), Activation("relu")]),
                   Block([WeightNormDense(g=1.1), Activation("tanh")]),
                   Block([Residual(branch=[Dense(1.0), Activation("tanh")], alpha=0.5)])])
    full = simulate(net, X, width=32, seeds=7, seed=5, **kw)
    assert full.info["chunk"] == 7
    per = full.info["memory_per_seed"]
    for c in (1, 2, 3):
        part = simulate(net, X, width=32, seeds=7, seed=5, max_memory=c * per + 1, **kw)
        assert part.info["chunk"] == c
        assert np.array_equal(full.gram, part.gram) and np.array_equal(full.means, part.means)
        if "gradients" in kw:
            assert np.array_equal(full.grad_norms, part.grad_norms)
            assert np.array_equal(full.grad_gram, part.grad_gram)


def test_singular_grams_and_chunking():
    # duplicate inputs (a singular input Gram) and width-2 ReLU layers (all-zero samples in some networks):
    # Cholesky fails for some networks and the eigen square root takes over, network by network
    X = batch(n=4, d=6)
    X[3] = X[0]
    net = meanfield.mlp(4, "relu", sigma_w=SQ2, sigma_b=0.0)
    full = simulate(net, X, width=2, seeds=12, seed=2, explicit_weights=False)
    assert np.all(np.isfinite(full.gram))
    np.testing.assert_allclose(full.gram[:, :, 3, :], full.gram[:, :, 0, :], rtol=1e-12, atol=1e-14)
    assert np.any(full.gram[:, 1:, 1, 1] == 0.0)  # some sample died in some network
    part = simulate(net, X, width=2, seeds=12, seed=2, explicit_weights=False,
                    max_memory=5 * full.info["memory_per_seed"])
    assert part.info["chunk"] == 5 and np.array_equal(full.gram, part.gram)
    # n much larger than the width, forced through the shortcut
    Xw = np.random.default_rng(1).standard_normal((40, 3))
    sim = simulate(meanfield.mlp(3, "tanh", norm="ln"), Xw, width=5, seeds=3, explicit_weights=False)
    assert np.all(np.isfinite(sim.gram)) and np.linalg.matrix_rank(sim.gram[0, -1]) <= 5


def every_layer_network():
    return Network([
        Block([Dense(1.3, 0.2), LayerNorm(), Activation("tanh")]),
        Block([Dense(1.2), Activation("relu"), BatchNorm()]),
        Block([WeightNormDense(g=1.1, init="data"), Activation("gelu"), RMSNorm()]),
        Block([WeightNormDense(g=1.2, sigma_b=0.1), Activation("erf"), GroupLayerNorm(groups=4)]),
        Block([Dense(1.5), Activation("sigmoid"), Center(), Scale(), MaxPool(2)]),
        Block([Residual(branch=[Dense(1.0), Activation("tanh")], alpha=0.5, shortcut=[Dense(1.0)])]),
        Block([Residual(branch=[Dense(1.0), Activation("silu")], alpha=0.3)]),
    ])


@pytest.mark.parametrize("kw", [dict(explicit_weights=False), dict(explicit_weights=True),
                                dict(gradients=True, grad_gram=True)])
def test_array_api_strict_agrees_with_numpy(kw):
    X = batch(n=4, d=10)
    net = every_layer_network()
    a = simulate(net, X, width=16, seeds=3, seed=8, **kw)
    b = simulate(net, X, width=16, seeds=3, seed=8, backend="array_api_strict", **kw)
    assert b.info["backend"] == "array_api_strict"
    np.testing.assert_allclose(b.gram, a.gram, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.means, a.means, rtol=1e-12, atol=1e-12)
    if "gradients" in kw:
        np.testing.assert_allclose(b.grad_norms, a.grad_norms, rtol=1e-11)
        np.testing.assert_allclose(b.grad_gram, a.grad_gram, rtol=1e-11, atol=1e-12)


def test_backend_given_as_module():
    import array_api_strict

    X = batch()
    net = meanfield.mlp(2, "relu", norm="ln")
    a = simulate(net, X, width=16, seeds=2, backend=array_api_strict)
    b = simulate(net, X, width=16, seeds=2, backend=np)
    np.testing.assert_allclose(a.gram, b.gram, rtol=1e-12, atol=1e-13)


def test_float32_runs_and_returns_float64():
    X = batch()
    net = meanfield.mlp(4, "relu", norm="ln", sigma_w=SQ2)
    a = simulate(net, X, width=512, seeds=16, dtype="float32", seed=1)
    b = simulate(net, X, width=512, seeds=16, dtype="float64", seed=1)
    assert a.gram.dtype == np.float64 and a.info["dtype"] == "float32"
    np.testing.assert_allclose(np.diagonal(a.gram[:, 1:], axis1=-2, axis2=-1), 1.0, atol=1e-5)
    # same law: the seed means agree within their sampling error
    se = np.sqrt(a.gram.var(axis=0) + b.gram.var(axis=0)) / 4
    assert np.all(np.abs(a.gram.mean(0) - b.gram.mean(0)) <= 5 * se + 1e-6)
    g = simulate(net, X, width=64, seeds=2, dtype=np.float32, gradients=True)
    assert g.grad_norms.dtype == np.float64 and np.all(np.isfinite(g.grad_norms))


def test_float32_grams_are_accumulated_in_float64():
    """A product of float32 numbers is exact in float64: the Gram of float32 activations equals the float64
    Gram of the same numbers to float64 rounding, not float32's."""
    from meanfield.core.backends import resolve_backend
    from meanfield.core.linalg import gram

    h = np.random.default_rng(0).standard_normal((2, 6, 4096)).astype(np.float32)
    k = gram(resolve_backend("numpy", "float32"), h)
    h64 = h.astype(np.float64)
    exact = h64 @ np.swapaxes(h64, -1, -2) / 4096
    assert k.dtype == np.float64
    np.testing.assert_allclose(k, exact, rtol=1e-13, atol=1e-15)


def test_float32_forward_accuracy_against_float64_of_the_same_weights(monkeypatch):
    """The accuracy stated in simulate's docstring: with float32-representable weights drawn in both runs,
    the float32 Grams agree with the float64 ones to ~3e-7 of sqrt(K_aa K_bb) after one block (the rounding
    of the float32 activations; reduced in float32 the Gram itself erred by 2e-6) and the error grows slowly
    with depth through the network's own sensitivity."""
    from meanfield.core import streams

    def normal_rounded(self, shape, reuse=False):
        buf = np.empty((len(self.gens), *shape), dtype=np.float32)
        for i, g in enumerate(self.gens):
            g.standard_normal(out=buf[i], dtype=np.float32)
        return self.be.asarray(buf.astype(self.be.np_dtype))

    monkeypatch.setattr(streams.HostStreams, "normal", normal_rounded)
    X = np.random.default_rng(0).standard_normal((8, 32))
    for net, explicit, tol in [(meanfield.mlp(12, "relu", norm="ln", sigma_w=SQ2), False, 1e-6),
                               (meanfield.mlp(12, "relu", norm="ln", sigma_w=SQ2), True, 2e-5),
                               (meanfield.mlp(12, "tanh"), False, 5e-6)]:
        a = simulate(net, X, width=512, seeds=3, dtype="float32", seed=3, explicit_weights=explicit)
        b = simulate(net, X, width=512, seeds=3, dtype="float64", seed=3, explicit_weights=explicit)
        d = np.sqrt(np.einsum("slii->sli", b.gram))
        err = np.abs(a.gram - b.gram) / (d[..., :, None] * d[..., None, :])
        assert err[:, 1].max() <= 8e-7
        assert err.max() <= tol


def test_cupy_missing_names_the_gpu_extra():
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises((ImportError, ValueError), match=r"meanfield-hermite\[gpu\]"):
            simulate(meanfield.mlp(1), batch(), backend="cupy")
    else:  # pragma: no cover - only on a GPU machine
        sim = simulate(meanfield.mlp(2, "relu", norm="ln"), batch(), width=64, seeds=2, backend="cupy")
        assert sim.gram.shape == (2, 3, 4, 4)


# ------------------------------------------------------------------------------------------------------
# layer semantics
def test_layer_identities():
    X = batch(n=5, d=12)
    w = 48
    seeds = 2

    def out(*layers, **kw):
        return simulate(Network([Block([Dense(1.3, 0.3), Activation("tanh"), *layers])]), X, width=w,
                        seeds=seeds, **kw)

    for kw in (dict(), dict(explicit_weights=True)):
        ln = out(LayerNorm(), **kw)
        np.testing.assert_allclose(np.diagonal(ln.gram[:, 1], axis1=-2, axis2=-1), 1.0, atol=1e-13)
        np.testing.assert_allclose(ln.means[:, 1], 0.0, atol=1e-14)
        rms = out(RMSNorm(), **kw)
        np.testing.assert_allclose(np.diagonal(rms.gram[:, 1], axis1=-2, axis2=-1), 1.0, atol=1e-13)
        bn = out(BatchNorm(), **kw)
        np.testing.assert_allclose(bn.gram[:, 1].sum(axis=-1), 0.0, atol=1e-12)
        np.testing.assert_allclose(np.trace(bn.gram[:, 1], axis1=-2, axis2=-1), 5.0, rtol=1e-12)
        ce = out(Center(), **kw)
        np.testing.assert_allclose(ce.means[:, 1], 0.0, atol=1e-14)
        sc = out(Scale(), **kw)
        np.testing.assert_allclose(np.diagonal(sc.gram[:, 1], axis1=-2, axis2=-1), 1.0, atol=1e-13)
        gl = out(GroupLayerNorm(groups=4), **kw)
        np.testing.assert_allclose(np.diagonal(gl.gram[:, 1], axis1=-2, axis2=-1), 1.0, atol=1e-13)
        np.testing.assert_allclose(gl.means[:, 1], 0.0, atol=1e-14)
        gs = out(GroupLayerNorm(group_size=6), **kw)
        np.testing.assert_allclose(np.diagonal(gs.gram[:, 1], axis1=-2, axis2=-1), 1.0, atol=1e-13)
        # LN and GroupLayerNorm(groups=1) are the same operation on the same random numbers
        g1 = out(GroupLayerNorm(groups=1), **kw)
        np.testing.assert_allclose(g1.gram, ln.gram, rtol=1e-14, atol=1e-15)


def test_group_layer_norm_is_layer_norm_per_group():
    # a GroupLayerNorm of g groups on features that are identical in every group = LN of one group
    X = batch(n=3, d=4)
    net_g = Network([Block([GroupLayerNorm(groups=3)])])
    net_l = Network([Block([LayerNorm()])])
    Xg = np.concatenate([X, 2 * X + 1, -X], axis=1)
    a = simulate(net_g, Xg, width=8, seeds=1)
    b = simulate(net_l, X, width=8, seeds=1)
    np.testing.assert_allclose(a.gram[0, 1], b.gram[0, 1], rtol=1e-13)


def test_maxpool_and_widths():
    X = batch(n=3, d=12)
    net = Network([Block([MaxPool(3)]), Block([Dense(1.0), Activation("relu")]),
                   Block([Dense(1.0, width=5)])])
    sim = simulate(net, X, width=[7, 16, 99], seeds=2)
    assert sim.info["widths"] == [12, 4, 16, 5]
    Xp = X.reshape(3, 4, 3).max(axis=-1)
    np.testing.assert_allclose(sim.gram[0, 1], Xp @ Xp.T / 4, rtol=1e-14)
    np.testing.assert_allclose(sim.means[1, 1], Xp.mean(axis=1), rtol=1e-14)


def test_fixed_linear_layer():
    X = batch(n=3, d=4)
    W = np.random.default_rng(0).standard_normal((6, 4))
    b = np.linspace(-1, 1, 6)
    sim = simulate(Network([Linear(W, b)]), X, width=99, seeds=2)
    Y = X @ W.T + b
    np.testing.assert_allclose(sim.gram[:, 1], np.broadcast_to(Y @ Y.T / 6, (2, 3, 3)), rtol=1e-13)
    assert sim.info["widths"] == [4, 6]
    with pytest.raises(ValueError, match="input features"):
        simulate(Network([Dense(1.0), Linear(W, b)]), X, width=8, seeds=1)


def test_residual_identity_linear_branch():
    # y = x + alpha W x: E K_y = (1 + alpha^2 sigma_w^2) K_x (the cross term has mean zero)
    X = np.random.default_rng(0).standard_normal((3, 256))
    net = Network([Residual(branch=[Dense(1.2)], alpha=0.5)])
    sim = simulate(net, X, width=256, seeds=200)
    K0 = X @ X.T / 256
    se = sim.gram[:, 1].std(axis=0) / math.sqrt(200)
    assert np.all(np.abs(sim.gram[:, 1].mean(axis=0) - (1 + 0.25 * 1.44) * K0) < 4.5 * se)
    # alpha = 0: exactly the shortcut
    sim0 = simulate(Network([Residual(branch=[Dense(1.2)], alpha=0.0, shortcut=[RMSNorm()])]), X, width=256,
                    seeds=1)
    np.testing.assert_allclose(np.diag(sim0.gram[0, 1]), 1.0, rtol=1e-13)


def test_zero_variance_maps_to_zero_never_nan():
    X = batch(n=4, d=6)
    X[2] = 0.0  # a zero sample
    for layer in (LayerNorm(), RMSNorm(), Scale(), GroupLayerNorm(groups=2)):
        sim = simulate(Network([Block([layer])]), X, width=6, seeds=1)
        assert np.all(np.isfinite(sim.gram)) and np.all(sim.gram[0, 1, 2] == 0.0)
    Xc = np.ones((3, 4)) * np.array([[1.0], [2.0], [-3.0]])  # constant samples: LN variance exactly 0
    sim = simulate(Network([Block([LayerNorm()])]), Xc, width=4, seeds=1)
    assert np.all(sim.gram[0, 1] == 0.0)
    # BatchNorm with one input, or a feature that is constant over the batch
    sim = simulate(meanfield.mlp(2, "relu", norm="bn"), X[:1], width=8, seeds=2)
    assert np.all(np.isfinite(sim.gram)) and np.all(sim.gram[:, 1:] == 0.0)
    Xb = np.tile(np.arange(5.0), (3, 1))
    sim = simulate(Network([Block([BatchNorm()])]), Xb, width=5, seeds=1)
    assert np.all(sim.gram[0, 1] == 0.0)
    # a width-1 layer followed by LayerNorm, with gradients
    net = Network([Block([Dense(1.0, width=1), LayerNorm()]), Block([Dense(1.0), Activation("tanh")])])
    sim = simulate(net, X, width=8, seeds=2, gradients=True, grad_gram=True)
    assert np.all(np.isfinite(sim.grad_gram)) and np.all(sim.gram[:, 1] == 0.0)
    assert np.all(sim.grad_norms[:, 0] == 0.0) and np.all(sim.grad_norms[:, 1] > 0.0)


# ------------------------------------------------------------------------------------------------------
# meanfield centring and scaling (hermite's coefficients replaced by the ReLU closed forms, so the test
# depends on nothing being written concurrently)
@pytest.fixture
def relu_hermite(monkeypatch):
    import hermite

    def coefficients(act, K, q=1.0):
        assert act.name == "relu" and K == 0
        q = np.asarray(q, dtype=np.float64)
        return np.sqrt(q / (2 * np.pi))[..., None]

    def second_moment(act, q=1.0):
        assert act.name == "relu"
        return np.asarray(q, dtype=np.float64) / 2

    monkeypatch.setattr(hermite, "coefficients", coefficients)
    monkeypatch.setattr(hermite, "second_moment", second_moment)


def test_per_sample_center_and_scale(relu_hermite):
    X = batch(n=4, d=32)
    w = 4096
    net = Network([Block([Dense(1.3), Activation("relu"), Center(mode="per_sample"),
                          Scale(mode="per_sample")])])
    sim = simulate(net, X, width=w, seeds=4, seed=1)
    # exact identity: the output is (relu(u) - c0(q)) / sqrt(q/2 - c0^2) per sample, so the diagonal is
    # (m2_hat - 2 c0 m_hat + c0^2) / (q/2 - c0^2), which -> 1 at infinite width (relative error ~ 1/sqrt(w))
    d = np.diagonal(sim.gram[:, 1], axis1=-2, axis2=-1)
    np.testing.assert_allclose(d, 1.0, atol=6 / math.sqrt(w))
    np.testing.assert_allclose(sim.means[:, 1], 0.0, atol=6 / math.sqrt(w))
    # mean-field scaling without centring divides by sqrt(E relu^2) = sqrt(q/2)
    net2 = Network([Block([Dense(1.3), Activation("relu"), Scale(mode="per_sample")])])
    sim2 = simulate(net2, X, width=w, seeds=4, seed=1)
    np.testing.assert_allclose(np.diagonal(sim2.gram[:, 1], axis1=-2, axis2=-1), 1.0, atol=6 / math.sqrt(w))
    # the meanfield constant is not the empirical mean: means are small but not exactly 0
    assert np.abs(sim.means[:, 1]).max() > 1e-8
    # the backward pass treats the constants as constants and runs
    g = simulate(net, X, width=64, seeds=2, gradients=True)
    assert np.all(np.isfinite(g.grad_norms))


def test_per_sample_center_needs_its_activation():
    X = batch()
    for layers in ([Dense(1.0), Center(mode="per_sample")],
                   [Activation("relu"), Dense(1.0), Scale(mode="per_sample")],
                   [Activation("relu"), Scale(), Center(mode="per_sample")]):
        with pytest.raises(ValueError, match="meanfield"):
            simulate(Network([Block(layers)]), X, width=8, seeds=1)


# ------------------------------------------------------------------------------------------------------
# trajectory, progress, bad inputs
def test_trajectory_fields_and_info():
    X = batch()
    net = meanfield.mlp(2, "relu", norm="ln", readout=True)
    sim = simulate(net, X, width=32, seeds=3, seed=2)
    assert sim.engine == "simulate" and sim.network == net and sim.seeded
    assert sim.gram.shape == (3, 4, 4, 4) and sim.means.shape == (3, 4, 4)
    assert sim.grad_norms is None and sim.grad_gram is None
    assert sim.info["widths"] == [8, 32, 32, 1]
    assert sim.info["backend"] == "numpy" and sim.info["dtype"] == "float64" and sim.info["width"] == 32
    assert sim.mean().gram.shape == (4, 4, 4) and sim.stderr().shape == (4, 4, 4)
    assert np.all(np.isfinite(sim.isometry_gap()[:, :-1]))


def test_progress_bar(capsys):
    simulate(meanfield.mlp(2), batch(), width=8, seeds=2, progress=True)
    assert "simulate" in capsys.readouterr().err
    simulate(meanfield.mlp(2), batch(), width=8, seeds=2, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("kw, match", [
    (dict(width=0), "width"),
    (dict(width=-3), "width"),
    (dict(width=2.5), "width"),
    (dict(width=True), "width"),
    (dict(width="wide"), "width"),
    (dict(width=[8, 8]), "3 blocks"),
    (dict(width=[8, 0, 8]), "width"),
    (dict(seeds=0), "seeds"),
    (dict(seeds=-1), "seeds"),
    (dict(backend="tensorflow_nonexistent"), "backend"),
    (dict(backend=42), "backend"),
    (dict(dtype="float16"), "dtype"),
    (dict(dtype="int32"), "dtype"),
    (dict(dtype="double-ish"), "dtype"),
    (dict(seed=-1), "seed"),
    (dict(max_memory=-5), "max_memory"),
    (dict(max_memory=10), "max_memory"),
    (dict(explicit_weights=False, gradients=True), "explicit_weights"),
    (dict(explicit_weights="yes"), "explicit_weights"),
    (dict(progress="loud"), "progress"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        simulate(meanfield.mlp(3, "relu"), batch(), **{"width": 8, "seeds": 2, **kw})


@pytest.mark.parametrize("X, match", [
    (np.ones(4), "2-D"),
    (np.ones((2, 3, 4)), "2-D"),
    (np.ones((0, 3)), "n >= 1"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "finite"),
    (np.array([[1.0, np.inf], [0.0, 1.0]]), "finite"),
    ([["a", "b"]], "X"),
])
def test_bad_inputs(X, match):
    with pytest.raises(ValueError, match=match):
        simulate(meanfield.mlp(1), X, width=4, seeds=1)


def test_bad_widths_for_layers():
    X = batch()
    with pytest.raises(ValueError, match="groups=3 must divide the width 8"):
        simulate(Network([Block([Dense(1.0), GroupLayerNorm(groups=3)])]), X, width=8, seeds=1)
    with pytest.raises(ValueError, match="group_size=3"):
        simulate(Network([Block([Dense(1.0), GroupLayerNorm(group_size=3)])]), X, width=8, seeds=1)
    with pytest.raises(ValueError, match="MaxPool k=3"):
        simulate(Network([Block([Dense(1.0), MaxPool(3)])]), X, width=8, seeds=1)
    with pytest.raises(ValueError, match="branch output width"):
        simulate(meanfield.mlp(2, "relu", residual=0.5), X, width=16, seeds=1)  # X has 8 features
    sim = simulate(meanfield.mlp(2, "relu", residual=0.5), X, width=8, seeds=1)
    assert sim.gram.shape == (1, 3, 4, 4)


def test_per_sample_scale_after_layer_center_matches_propagate():
    """Scale("per_sample") divides by the infinite-width RMS of its input, c_0 removed after any Center."""
    import meanfield
    from meanfield import Activation, Center, Dense, Network, Scale

    net = Network([meanfield.Block([Dense(1.3), Activation("relu"), Center("layer"), Scale("per_sample")])] * 3)
    X = np.random.default_rng(5).standard_normal((4, 16))
    mf = meanfield.propagate(net, X=X)
    sim = simulate(net, X, width=2048, seeds=12, seed=3, progress=False)
    err = np.abs(sim.gram.mean(axis=0) - mf.gram)
    se = sim.gram.std(axis=0, ddof=1) / np.sqrt(12)
    assert np.all(err <= 5 * se + 3.0 / 2048)


def test_simulate_outputs_matches_the_last_gram():
    """simulate_outputs returns the features whose Gram simulate records (same streams, same rules)."""
    X = batch(n=4, d=12)
    net = meanfield.mlp(3, "tanh", norm="ln", sigma_w=1.3)
    sim = simulate(net, X, width=64, seeds=3, seed=7, progress=False)
    H = meanfield.simulate_outputs(net, X, width=64, seeds=3, seed=7)
    assert H.shape == (3, 4, 64)
    np.testing.assert_allclose(H @ H.transpose(0, 2, 1) / 64, sim.gram[:, -1], rtol=1e-10, atol=1e-12)
