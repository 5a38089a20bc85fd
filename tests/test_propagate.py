"""Tests of meanfield.propagate, the infinite-width Gram recursion, against truths computed here.

Independent truths used (none of them calls the engine's kernels):
- the arc-cosine kernel of ReLU (Cho and Saul 2009) in closed form, with and without centering (the
  per-sample feature mean of ReLU(u), u ~ N(0, q), is sqrt(q / (2 pi)));
- the erf kernel (Williams 1997): (2/pi) arcsin(2 K_ab / sqrt((1 + 2 K_aa)(1 + 2 K_bb)));
- the scalar q-map and c-map of Poole et al. (2016) for tanh, by 1-D scipy quad and a 400-node 2-D
  Gauss-Hermite tensor rule (converged to ~1e-15 against 800 nodes, checked in the test);
- batch norm of a Gaussian batch: for P G P proportional to P the output is n/(n-1) P; for n = 3 the
  angle law of a 2-D Gaussian, E[x1^2 / |x|^2] = sqrt(l1) / (sqrt(l1) + sqrt(l2)); the trace is n;
  a large Monte Carlo otherwise;
- group layer norm with group size 2: (2/pi) arcsin(rho); the max of two i.i.d. Gaussians,
  max = (u + |v|)/sqrt(2): E = (K_ab + (2/pi) sqrt(K_aa K_bb)(sqrt(1 - rho^2) + rho arcsin rho)) / 2;
- small numpy finite-width simulations written here (the exact "pre-activations are N(0, C) given the
  previous features" sampling of DESIGN.md), compared within their sampling error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate as si
import scipy.special as sc

import hermite
import meanfield
from meanfield import (
    Activation,
    BatchNorm,
    Block,
    Center,
    Dense,
    GroupLayerNorm,
    LayerNorm,
    MaxPool,
    Network,
    Residual,
    RMSNorm,
    Scale,
    WeightNormDense,
    mlp,
    propagate,
)

TWO_PI = 2.0 * math.pi
EPS = np.finfo(float).eps


# ------------------------------------------------------------------------------------------------
# helpers: inputs and comparisons
def random_gram(seed: int, n: int, d: int | None = None, spread: float = 0.0) -> np.ndarray:
    """X X^T / d for Gaussian X, rows scaled by exp(spread * N(0,1)) (each input its own variance)."""
    rng = np.random.default_rng(seed)
    d = n + 3 if d is None else d
    X = rng.standard_normal((n, d)) * np.exp(spread * rng.standard_normal((n, 1)))
    return X @ X.T / d


def scaled_err(A: np.ndarray, B: np.ndarray) -> float:
    """max |A - B| relative to the natural scale of each entry, sqrt(B_aa B_bb) (1 where that is 0)."""
    d = np.sqrt(np.abs(np.diagonal(B, axis1=-2, axis2=-1)))
    s = d[..., :, None] * d[..., None, :]
    s = np.where(s > 0, s, 1.0)
    return float(np.max(np.abs(A - B) / s))


def gram_corr(K: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.diag(K))
    return K / np.outer(d, d)


# ------------------------------------------------------------------------------------------------
# closed-form truths
def relu_second_moment(G: np.ndarray) -> np.ndarray:
    """E[relu(u_a) relu(u_b)], u ~ N(0, G): sqrt(G_aa G_bb)/(2 pi) (sin t + (pi - t) cos t), t = arccos rho."""
    d = np.sqrt(np.diag(G))
    s = np.outer(d, d)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.clip(np.where(s > 0, G / np.where(s > 0, s, 1.0), 0.0), -1.0, 1.0)
    t = np.arccos(rho)
    J = s / TWO_PI * (np.sin(t) + (math.pi - t) * np.cos(t))
    np.fill_diagonal(J, np.diag(G) / 2.0)
    return 0.5 * (J + J.T)


def relu_mean(G: np.ndarray) -> np.ndarray:
    return np.sqrt(np.diag(G) / TWO_PI)


def erf_second_moment(G: np.ndarray) -> np.ndarray:
    d = 1.0 + 2.0 * np.diag(G)
    return 2.0 / math.pi * np.arcsin(np.clip(2.0 * G / np.sqrt(np.outer(d, d)), -1.0, 1.0))


def normalize(K: np.ndarray) -> np.ndarray:
    out = gram_corr(K)
    np.fill_diagonal(out, 1.0)
    return out


def dense(K, sw, sb):
    return sw * sw * K + sb * sb


def block_truth(kind: str, sw: float, sb: float):
    """The closed-form map of one mlp block on the post-block Gram."""

    def f(K):
        G = dense(K, sw, sb)
        if kind == "plain":
            return relu_second_moment(G)
        if kind == "ln_post":
            m = relu_mean(G)
            return normalize(relu_second_moment(G) - np.outer(m, m))
        if kind in ("ln_pre", "rms_pre"):
            return relu_second_moment(normalize(G))
        if kind == "rms_post":
            return normalize(relu_second_moment(G))
        if kind == "center":
            m = relu_mean(G)
            return relu_second_moment(G) - np.outer(m, m)
        if kind == "erf":
            return erf_second_moment(G)
        raise AssertionError(kind)

    return f


def iterate(f, K0, depth):
    out = [K0]
    for _ in range(depth):
        out.append(f(out[-1]))
    return np.stack(out)


# 2-D truths for smooth activations (tanh). The trapezoidal rule on the real line converges
# geometrically for integrands analytic in a strip (Trefethen and Weideman 2014): tanh(sqrt(q) z) is
# analytic for |Im z| < pi / (2 sqrt(q)) >= 0.25 for q <= 40, so h = 0.02 on [-10, 10] (Gaussian tail
# e^-50) leaves an error below exp(-2 pi 0.25 / 0.02) ~ 1e-34 plus rounding. A Gauss-Hermite tensor rule
# (what neural-tangents uses) converges much more slowly once sqrt(q) z makes tanh steep; it is checked
# against the trapezoid where it has converged.
_TZ = np.linspace(-10.0, 10.0, 1001)
_TW = np.exp(-_TZ * _TZ / 2) * (_TZ[1] - _TZ[0]) / math.sqrt(TWO_PI)


def trap_kernel(f, q1, q2, c):
    """E[f(u) f(v)], Var u = q1, Var v = q2, corr c, by the 1001 x 1001 trapezoidal tensor rule."""
    s = math.sqrt(max(0.0, 1.0 - c * c))
    fu = f(math.sqrt(q1) * _TZ)
    fv = f(math.sqrt(q2) * (c * _TZ[:, None] + s * _TZ[None, :]))
    return float(_TW @ (fu[:, None] * fv) @ _TW)


def trap_second_moment(f, q):
    return float(_TW @ f(math.sqrt(q) * _TZ) ** 2)


_GH = {}


def gh_rule(N):
    if N not in _GH:
        z, w = sc.roots_hermitenorm(N)
        _GH[N] = (z, w / w.sum())
    return _GH[N]


def gh_kernel(f, q1, q2, c, N=400):
    """E[f(u) f(v)], Var u = q1, Var v = q2, corr c, by an N x N Gauss-Hermite tensor rule."""
    z, w = gh_rule(N)
    fu = f(math.sqrt(q1) * z)
    s = math.sqrt(max(0.0, 1.0 - c * c))
    fv = f(math.sqrt(q2) * (c * z[:, None] + s * z[None, :]))
    return float(np.sum(w[:, None] * w[None, :] * fu[:, None] * fv))


def quad_second_moment(f, q):
    val, _ = si.quad(lambda z: f(math.sqrt(q) * z) ** 2 * math.exp(-z * z / 2), -40.0, 40.0,
                     points=[0.0], epsabs=1e-16, epsrel=1e-13, limit=400)
    return val / math.sqrt(TWO_PI)


# ------------------------------------------------------------------------------------------------
# a small numpy finite-width simulation (written independently of meanfield.simulate)
def _sqrt_psd(C):
    w, V = np.linalg.eigh(C)
    return V * np.sqrt(np.clip(w, 0.0, None))[..., None, :]


def _gram(H):
    return H @ np.swapaxes(H, -1, -2) / H.shape[-1]


def _sim_layers(H, layers, width, rng):
    """H: (seeds, n, w). Dense uses the exact law of its pre-activations given H: i.i.d. columns
    N(0, sigma_w^2 H H^T / w + sigma_b^2) (DESIGN.md, 'Numerics that matter')."""
    for layer in layers:
        if isinstance(layer, Dense):
            C = layer.sigma_w**2 * _gram(H) + layer.sigma_b**2
            Z = rng.standard_normal((H.shape[0], H.shape[1], width))
            H = _sqrt_psd(C) @ Z
        elif isinstance(layer, Activation):
            H = layer.act.fn(H)
        elif isinstance(layer, LayerNorm):
            Hc = H - H.mean(axis=2, keepdims=True)
            H = Hc / np.sqrt(np.mean(Hc * Hc, axis=2, keepdims=True))
        elif isinstance(layer, RMSNorm):
            H = H / np.sqrt(np.mean(H * H, axis=2, keepdims=True))
        elif isinstance(layer, BatchNorm):  # a feature constant over the batch maps to 0
            Hc = H - H.mean(axis=1, keepdims=True)
            v = np.mean(Hc * Hc, axis=1, keepdims=True)
            live = v > 64 * EPS**2 * np.mean(H * H, axis=1, keepdims=True)
            H = np.where(live, Hc / np.sqrt(np.where(live, v, 1.0)), 0.0)
        elif isinstance(layer, MaxPool):
            s, n, w = H.shape
            H = H.reshape(s, n, w // layer.k, layer.k).max(axis=3)
        elif isinstance(layer, Residual):
            sh = H if layer.shortcut is None else _sim_layers(H, layer.shortcut, width, rng)
            H = sh + layer.alpha * _sim_layers(H, layer.branch, width, rng)
        else:  # pragma: no cover
            raise AssertionError(f"no simulation rule for {layer!r}")
    return H


def simulate_np(net: Network, X: np.ndarray, width: int, seeds: int, seed: int = 0):
    """Gram (seeds, L+1, n, n) and means (seeds, L+1, n) of ``seeds`` random networks of ``width``."""
    rng = np.random.default_rng(seed)
    H = np.broadcast_to(X, (seeds, *X.shape)).copy()
    grams, means = [_gram(H)], [H.mean(axis=2)]
    for block in net.blocks:
        H = _sim_layers(H, block.layers, width, rng)
        grams.append(_gram(H))
        means.append(H.mean(axis=2))
    return np.stack(grams, axis=1), np.stack(means, axis=1)


def assert_within_sampling_error(mf, sim, width, z=5.0, mc_error=None, bias=4.0):
    """|mean_seeds(sim) - mf| <= z * (standard error over seeds (+) mc error) + bias / width."""
    mean = sim.mean(axis=0)
    se = sim.std(axis=0, ddof=1) / math.sqrt(sim.shape[0])
    mc = 0.0 if mc_error is None else np.asarray(mc_error)[..., None, None]
    tol = z * np.sqrt(se**2 + mc**2) + bias / width
    excess = np.abs(mean - mf) - tol
    assert np.all(excess <= 0), (
        f"theory vs simulation: worst excess {excess.max():.3g} (|diff| max {np.abs(mean - mf).max():.3g},"
        f" tol min {np.min(tol):.3g})")


# ================================================================================================
# closed-form ReLU iterations
@pytest.mark.parametrize("sw,sb", [(2**0.5, 0.0), (1.3, 0.4), (1.8, 0.1)])
def test_relu_mlp_matches_arccosine_every_layer(sw, sb):
    K0 = random_gram(0, 8, spread=0.5)
    depth = 40
    t = propagate(mlp(depth, "relu", sigma_w=sw, sigma_b=sb), K0)
    f = block_truth("plain", sw, sb)
    # each layer's map, applied to the engine's own previous layer: 1e-12 relative
    for layer in range(depth):
        assert scaled_err(t.gram[layer + 1], f(t.gram[layer])) < 1e-12, layer
    # the whole chain, iterated independently
    ref = iterate(f, K0, depth)
    assert scaled_err(t.gram, ref) < 1e-11
    # means: E relu(u_a) = sqrt(G_aa / (2 pi))
    for layer in range(depth):
        np.testing.assert_allclose(t.means[layer + 1], relu_mean(dense(t.gram[layer], sw, sb)), rtol=1e-13)


def test_relu_near_and_at_unit_correlation():
    """Duplicated (rho = 1) and opposite (rho = -1) samples, and rho = 1 - 1e-10: the kernel is exact up
    to |rho| = 1 (no truncated series)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(50)
    y = x + 1e-5 * rng.standard_normal(50)
    X = np.stack([x, x, -x, y, rng.standard_normal(50)])
    K0 = X @ X.T / 50
    depth = 30
    t = propagate(mlp(depth, "relu", sigma_w=2**0.5), K0)
    ref = iterate(block_truth("plain", 2**0.5, 0.0), K0, depth)
    assert scaled_err(t.gram, ref) < 1e-11
    # the duplicate keeps rho exactly 1 (K_01 == K_00), the opposite sample gives 0 after one ReLU
    for layer in range(1, depth + 1):
        K = t.gram[layer]
        assert abs(K[0, 1] - K[0, 0]) <= 4 * EPS * K[0, 0]
    assert t.gram[1, 0, 2] == 0.0 and t.gram[1, 1, 2] == 0.0


def test_relu_layernorm_post_200_blocks_within_1e9():
    """The issue's accuracy requirement: ReLU + LN (post) after 200 blocks vs iterating the centred
    arc-cosine map in closed form."""
    K0 = random_gram(1, 10, spread=0.7)
    depth = 200
    for sw, sb in [(1.0, 0.0), (2**0.5, 0.3)]:
        t = propagate(mlp(depth, "relu", norm="ln", placement="post", sigma_w=sw, sigma_b=sb), K0)
        f = block_truth("ln_post", sw, sb)
        ref = iterate(f, K0, depth)
        assert np.max(np.abs(t.gram[1:] - ref[1:])) < 1e-9
        for layer in range(depth):
            assert scaled_err(t.gram[layer + 1], f(t.gram[layer])) < 1e-12, layer
        # LN output: per-sample feature mean 0, exactly unit diagonal
        assert np.all(t.means[1:] == 0.0) or np.max(np.abs(t.means[1:])) < 1e-15
        assert np.all(np.diagonal(t.gram[1:], axis1=1, axis2=2) == 1.0)


@pytest.mark.parametrize("norm,placement,kind", [
    ("ln", "pre", "ln_pre"), ("rms", "pre", "rms_pre"), ("rms", "post", "rms_post")])
def test_relu_norm_variants_closed_form(norm, placement, kind):
    K0 = random_gram(2, 7, spread=0.6)
    sw, sb, depth = 1.7, 0.2, 50
    t = propagate(mlp(depth, "relu", norm=norm, placement=placement, sigma_w=sw, sigma_b=sb), K0)
    f = block_truth(kind, sw, sb)
    for layer in range(depth):
        assert scaled_err(t.gram[layer + 1], f(t.gram[layer])) < 1e-12, layer
    assert scaled_err(t.gram, iterate(f, K0, depth)) < 1e-10
    if placement == "post":
        assert np.all(np.diagonal(t.gram[1:], axis1=1, axis2=2) == 1.0)
    else:  # unit-variance Gaussian into ReLU: diagonal 1/2
        np.testing.assert_allclose(np.diagonal(t.gram[1:], axis1=1, axis2=2), 0.5, rtol=1e-15)


@pytest.mark.parametrize("centering", ["layer", "per_sample"])
def test_relu_centering(centering):
    """Center after the activation: K -> J - m m^T (both modes agree at infinite width); with
    sigma_w^2 = 2 pi / (pi - 1) the variance of the centred ReLU is preserved."""
    K0 = random_gram(4, 6, spread=0.4)
    sw, depth = math.sqrt(TWO_PI / (math.pi - 1)), 40
    t = propagate(mlp(depth, "relu", sigma_w=sw, centering=centering), K0)
    f = block_truth("center", sw, 0.0)
    for layer in range(depth):
        assert scaled_err(t.gram[layer + 1], f(t.gram[layer])) < 1e-12, layer
    assert scaled_err(t.gram, iterate(f, K0, depth)) < 1e-10
    np.testing.assert_allclose(np.diagonal(t.gram, axis1=1, axis2=2), np.broadcast_to(np.diag(K0), (depth + 1, 6)),
                               rtol=1e-12)
    assert np.max(np.abs(t.means[1:])) < 1e-15


def test_erf_mlp_closed_form():
    K0 = random_gram(5, 8, spread=0.8)
    depth = 30
    for sw, sb in [(1.0, 0.0), (2.5, 0.5), (0.7, 1.0)]:
        t = propagate(mlp(depth, "erf", sigma_w=sw, sigma_b=sb), K0)
        f = block_truth("erf", sw, sb)
        for layer in range(depth):
            assert scaled_err(t.gram[layer + 1], f(t.gram[layer])) < 1e-12, (sw, sb, layer)
        assert scaled_err(t.gram, iterate(f, K0, depth)) < 1e-10
        np.testing.assert_allclose(t.means[1:], 0.0, atol=1e-15)  # erf is odd


def test_transformed_relu_closed_form():
    """hermite.transform(relu, remove=(0, 1)) is f = gamma (relu(x) + alpha x + beta); for Gaussian (u, v)
    E f(u) f(v) = gamma^2 (J + alpha G_uv (Stein: E relu(u) v = G_uv / 2, twice) + alpha^2 G_uv
    + beta (m_u + m_v) + beta^2), m = sqrt(q / (2 pi)); the constants are fixed at q = 1."""
    act = hermite.transform(hermite.activation("relu"), remove=(0, 1))
    al, be, ga = act.alpha, act.beta, act.gamma
    assert abs(be + 1 / math.sqrt(TWO_PI)) < 1e-14 and abs(al + 0.5) < 1e-14  # c_0 and c_1 of relu at q = 1
    K0 = random_gram(9, 6, spread=0.5)
    sw, sb, depth = 1.1, 0.3, 20
    t = propagate(mlp(depth, act, sigma_w=sw, sigma_b=sb), K0)
    for layer in range(depth):
        G = dense(t.gram[layer], sw, sb)
        m = relu_mean(G)
        ref = ga * ga * (relu_second_moment(G) + al * G + al * al * G + be * (m[:, None] + m[None, :]) + be * be)
        assert scaled_err(t.gram[layer + 1], ref) < 1e-12, layer
        np.testing.assert_allclose(t.means[layer + 1], ga * (m + be), rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------------
# tanh: the scalar q-map and c-map (Poole et al. 2016)
def test_references_agree():
    """The trapezoid truth against a converged Gauss-Hermite rule (moderate q), a finer trapezoid and an
    adaptive 1-D quad (large q)."""
    for q1, q2, c in [(2.0, 1.5, 0.6), (0.3, 4.0, -0.9), (1.0, 1.0, 0.999)]:
        a, b = gh_kernel(np.tanh, q1, q2, c, 400), gh_kernel(np.tanh, q1, q2, c, 800)
        assert abs(a - b) < 1e-14
        assert abs(trap_kernel(np.tanh, q1, q2, c) - b) < 5e-14
    for q in (0.5, 1.7, 17.0, 40.0):
        assert abs(trap_kernel(np.tanh, q, q, 1.0) - quad_second_moment(np.tanh, q)) < 5e-14
        assert abs(trap_second_moment(np.tanh, q) - quad_second_moment(np.tanh, q)) < 5e-14
    z = np.linspace(-10.0, 10.0, 2001)
    w = np.exp(-z * z / 2) * (z[1] - z[0]) / math.sqrt(TWO_PI)
    q1, q2, c = 5.75, 16.7, 0.18  # steep tanh: Gauss-Hermite 400 is off by ~1e-9 here, the trapezoid is not
    fine = float(w @ (np.tanh(math.sqrt(q1) * z)[:, None]
                      * np.tanh(math.sqrt(q2) * (c * z[:, None] + math.sqrt(1 - c * c) * z[None, :]))) @ w)
    assert abs(trap_kernel(np.tanh, q1, q2, c) - fine) < 1e-15


def qmap(q, sw, sb):
    return sw * sw * trap_second_moment(np.tanh, q) + sb * sb


def cmap(c, q, sw, sb):
    return (sw * sw * trap_kernel(np.tanh, q, q, c) + sb * sb) / qmap(q, sw, sb)


@pytest.mark.parametrize("sw,sb,c0", [(1.5, 0.3, 0.2), (3.0, 0.1, 0.9), (0.8, 0.5, -0.5)])
def test_two_inputs_match_scalar_qmap_cmap(sw, sb, c0):
    q0, depth = 1.3, 8
    K0 = q0 * np.array([[1.0, c0], [c0, 1.0]])
    t = propagate(mlp(depth, "tanh", sigma_w=sw, sigma_b=sb), K0)
    # Poole et al.: q and c are the pre-activation variance and correlation; the first Dense makes them
    q, c = sw * sw * q0 + sb * sb, (sw * sw * q0 * c0 + sb * sb) / (sw * sw * q0 + sb * sb)
    for layer in range(1, depth + 1):
        K = t.gram[layer]
        G = dense(K, sw, sb)  # the next block's pre-activations
        q, c = qmap(q, sw, sb), cmap(c, q, sw, sb)
        assert abs(G[0, 0] - q) < 1e-12 * q and abs(G[1, 1] - q) < 1e-12 * q, layer
        assert abs(G[0, 1] / G[0, 0] - c) < 1e-12, layer


def test_tanh_each_entry_with_its_own_variance():
    """The activation rule uses K_aa and K_bb of each pair (sigma_b > 0, inputs of different norms)."""
    K0 = random_gram(6, 3, spread=0.8)
    sw, sb, depth = 1.6, 0.4, 4
    t = propagate(mlp(depth, "tanh", sigma_w=sw, sigma_b=sb), K0)
    for layer in range(depth):
        G = dense(t.gram[layer], sw, sb)
        K = t.gram[layer + 1]
        for a in range(3):
            assert abs(K[a, a] - trap_second_moment(np.tanh, G[a, a])) < 1e-13
            for b in range(a + 1, 3):
                c = G[a, b] / math.sqrt(G[a, a] * G[b, b])
                assert abs(K[a, b] - trap_kernel(np.tanh, G[a, a], G[b, b], c)) < 1e-13


# ------------------------------------------------------------------------------------------------
# batch norm
def test_linear_batchnorm_isotropic_closed_form():
    """P G P = a P  =>  y = sqrt(n) P x / |P x| is uniform on a sphere of the (n-1)-dim subspace:
    E y y^T = n/(n-1) P."""
    for n in (2, 3, 8, 33):
        G = 0.7 * np.eye(n) + 0.4  # any a I + b 11^T
        t = propagate(Network([Block([Dense(1.3, 0.2), BatchNorm()])]), G)
        P = np.eye(n) - 1.0 / n
        np.testing.assert_allclose(t.gram[1], n / (n - 1) * P, atol=1e-13)
        assert t.mc_error[1] == 0.0


def test_batchnorm_two_inputs():
    """n = 2: the standardized feature is +-(1, -1) whatever G (non-degenerate): K = [[1, -1], [-1, 1]]."""
    for seed in range(3):
        G = random_gram(30 + seed, 2, spread=0.7)
        t = propagate(Network([Block([Dense(0.8, 0.4), BatchNorm()])]), G)
        np.testing.assert_allclose(t.gram[1], [[1.0, -1.0], [-1.0, 1.0]], atol=1e-14)


def test_linear_batchnorm_three_inputs_angle_law():
    """n = 3: P x lives in a plane; for x ~ N(0, diag(l1, l2)) in 2-D, E x1^2/|x|^2 = sqrt l1/(sqrt l1 +
    sqrt l2), so K = 3 U diag(...) U^T over the eigenvectors of P G P."""
    for seed in range(4):
        G = random_gram(10 + seed, 3, d=5, spread=0.5)
        t = propagate(Network([Block([Dense(), BatchNorm()])]), G)
        P = np.eye(3) - 1.0 / 3
        lam, U = np.linalg.eigh(P @ G @ P)
        s = np.sqrt(np.clip(lam[1:], 0.0, None))
        ref = 3 * (U[:, 1:] * (s / s.sum())) @ U[:, 1:].T
        np.testing.assert_allclose(t.gram[1], ref, atol=1e-12)


def test_linear_batchnorm_monte_carlo_and_trace():
    """A general Gaussian batch: large Monte Carlo (4e5 samples; 5 standard errors), trace = n and rows
    summing to 0 to rounding (P x != 0 almost surely); a deep linear BN chain keeps the trace."""
    n = 5
    G = random_gram(20, n, d=6, spread=0.6)
    net = Network([Block([Dense(), BatchNorm()])] * 6)
    t = propagate(net, G)
    rng = np.random.default_rng(0)
    P = np.eye(n) - 1.0 / n
    M = 400_000
    x = rng.standard_normal((M, n)) @ np.linalg.cholesky(G).T @ P
    y = math.sqrt(n) * x / np.linalg.norm(x, axis=1, keepdims=True)
    mc = y.T @ y / M
    se = np.sqrt(np.maximum((y * y).T @ (y * y) / M - mc * mc, 0.0) / M)
    assert np.all(np.abs(t.gram[1] - mc) <= 5 * se + 1e-12)
    for layer in range(1, 7):
        K = t.gram[layer]
        assert abs(np.trace(K) - n) < 1e-12
        assert np.max(np.abs(K.sum(axis=1))) < 1e-12
        assert t.mc_error[layer] == 0.0


def test_batchnorm_degenerate_batch_exactly_representable():
    """All inputs equal, n = 4 (P = I - 1/4 exact in binary, so P G P is exactly 0): every feature has zero
    batch variance -> 0, never NaN."""
    K0 = np.full((4, 4), 2.0)
    t = propagate(Network([Block([Dense(1.0, 0.5), BatchNorm()])]), K0)
    assert np.all(t.gram[1] == 0.0)
    for placement in ("pre", "post"):
        t = propagate(mlp(3, "relu", norm="bn", bn_mode="large_batch", placement=placement, sigma_b=0.5), K0)
        assert np.all(t.gram[1:] == 0.0)


@pytest.mark.parametrize("mode", ["exact", "large_batch", "exchangeable"])
def test_batchnorm_degenerate_batch_maps_to_zero(mode):
    K0 = np.full((5, 5), 0.3)
    bn = BatchNorm("large_batch" if mode == "large_batch" else "exact")
    t = propagate(Network([Block([Dense(), bn])]), K0, exchangeable=mode == "exchangeable")
    assert np.all(np.isfinite(t.gram))
    assert np.max(np.abs(t.gram[1])) < 1e-12


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_batchnorm_degenerate_batch_monte_carlo_rules(placement):
    K0 = np.full((4, 4), 2.0)
    t = propagate(mlp(3, "relu", norm="bn", placement=placement, sigma_b=0.5), K0, mc_samples=2**12)
    assert np.all(np.isfinite(t.gram))
    assert np.max(np.abs(t.gram[1:])) < 1e-12


def test_batchnorm_large_batch_formula():
    n = 6
    K0 = random_gram(21, n, spread=0.5)
    P = np.eye(n) - 1.0 / n
    sw, sb = 1.2, 0.3
    # post: Dense -> ReLU -> BN(large_batch): P J P / (tr(P J P)/n) with J the second moment (mean included)
    t = propagate(mlp(4, "relu", norm="bn", bn_mode="large_batch", sigma_w=sw, sigma_b=sb), K0)
    for layer in range(4):
        C = P @ relu_second_moment(dense(t.gram[layer], sw, sb)) @ P
        assert scaled_err(t.gram[layer + 1], C / (np.trace(C) / n)) < 1e-12
        assert abs(np.trace(t.gram[layer + 1]) - n) < 1e-12
    assert np.all(t.mc_error == 0.0)
    # pre: Dense -> BN(large_batch) -> ReLU stays Gaussian into ReLU: exact
    t = propagate(mlp(4, "relu", norm="bn", bn_mode="large_batch", placement="pre", sigma_w=sw, sigma_b=sb),
                  K0)
    for layer in range(4):
        C = P @ dense(t.gram[layer], sw, sb) @ P
        assert scaled_err(t.gram[layer + 1], relu_second_moment(C / (np.trace(C) / n))) < 1e-12
    assert np.all(t.mc_error == 0.0)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_batchnorm_exchangeable(act):
    """exchangeable=True: population statistics. Equicorrelated inputs become uncorrelated (off-diagonal
    zero up to one rounding of the mean), with unit diagonal; in general the off-diagonal mean is 0."""
    n, r = 6, 0.3
    K0 = (1 - r) * np.eye(n) + r
    t = propagate(mlp(3, act, norm="bn", sigma_w=1.3, sigma_b=0.2), K0, exchangeable=True)
    off = ~np.eye(n, dtype=bool)
    for layer in range(1, 4):
        K = t.gram[layer]
        assert np.max(np.abs(K[off])) <= 4 * EPS
        np.testing.assert_allclose(np.diag(K), 1.0, rtol=1e-14)
    assert np.all(t.mc_error == 0.0)
    K0 = random_gram(22, n, spread=0.4)
    t = propagate(mlp(2, act, norm="bn", sigma_w=1.3, sigma_b=0.2), K0, exchangeable=True)
    for layer in (1, 2):
        K = t.gram[layer]
        assert abs(K[off].mean()) < 1e-14 and abs(np.diag(K).mean() - 1.0) < 1e-14


def test_weightnorm_rules():
    K0 = random_gram(23, 5, spread=0.3)
    # fixed init: Dense(sigma_w=g)
    a = propagate(mlp(5, "tanh", norm="wn", sigma_w=1.4, sigma_b=0.2), K0)
    b = propagate(mlp(5, "tanh", sigma_w=1.4, sigma_b=0.2), K0)
    np.testing.assert_array_equal(a.gram, b.gram)
    # data init: Dense(1, 0) followed by exact batch standardization
    a = propagate(Network([WeightNormDense(g=3.0, init="data", sigma_b=1.0)]), K0)
    b = propagate(Network([Block([Dense(1.0, 0.0), BatchNorm()])]), K0)
    np.testing.assert_allclose(a.gram, b.gram, rtol=0, atol=1e-15)


def _relu_bn_net(placement):
    return mlp(3, "relu", norm="bn", placement=placement, sigma_w=2**0.5, sigma_b=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_relu_batchnorm_vs_numpy_simulation(placement):
    """ReLU + exact BN (Monte Carlo rule for the non-Gaussian parts) against a width-2048, 20-seed
    simulation written here, within 5 standard errors (seed and MC) plus 4/width finite-width bias."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((4, 16)) * np.array([[0.5], [1.0], [1.5], [2.0]]) + 0.3
    net = _relu_bn_net(placement)
    mf = propagate(net, X=X, mc_samples=2**16)
    # BN -> ReLU (pre) is exact; ReLU -> BN (post) needs Monte Carlo for the BN of a non-Gaussian input
    assert np.all(mf.mc_error[1:] == 0) if placement == "pre" else np.all(mf.mc_error[1:] > 0)
    width = 2048
    sim, _ = simulate_np(net, X, width, 20)
    assert_within_sampling_error(mf.gram[1:], sim[:, 1:], width, mc_error=mf.mc_error[1:])


@pytest.mark.slow
def test_relu_batchnorm_vs_meanfield_simulate():
    """The same comparison with the package's finite-width engine, when it is there."""
    simulate_mod = pytest.importorskip("meanfield.finite")
    rng = np.random.default_rng(8)
    X = rng.standard_normal((4, 16)) + 0.2
    for placement in ("pre", "post"):
        net = _relu_bn_net(placement)
        mf = propagate(net, X=X, mc_samples=2**16)
        width = 2048
        sim = simulate_mod.simulate(net, X, width=width, seeds=20, seed=1)
        assert sim.gram.shape == (20, 4, 4, 4)
        assert_within_sampling_error(mf.gram[1:], sim.gram[:, 1:], width, mc_error=mf.mc_error[1:])


# ------------------------------------------------------------------------------------------------
# group layer norm, max pool, residual, non-Gaussian activations
def test_group_layernorm_fixed_groups_is_layernorm():
    K0 = random_gram(24, 5, spread=0.5)
    a = propagate(mlp(6, "relu", norm="gln", groups=4, sigma_b=0.2), K0)
    b = propagate(mlp(6, "relu", norm="ln", sigma_b=0.2), K0)
    np.testing.assert_array_equal(a.gram, b.gram)


def test_group_layernorm_group_size_two_closed_form():
    """G = 2: y = sign(x1 - x2) (1, -1), so K_ab = E sign(d_a) sign(d_b) = (2/pi) arcsin rho_ab."""
    K0 = random_gram(25, 6, spread=0.5)
    t = propagate(Network([Block([Dense(1.1, 0.3), GroupLayerNorm(group_size=2)])]), K0)
    ref = 2 / math.pi * np.arcsin(np.clip(gram_corr(dense(K0, 1.1, 0.3)), -1, 1))
    np.testing.assert_allclose(t.gram[1], ref, atol=1e-13)
    assert np.all(np.diag(t.gram[1]) == 1.0)


@pytest.mark.parametrize("G", [3, 4, 7])
def test_group_layernorm_group_size_monte_carlo(G):
    """Gaussian input, groups of G features: each group is centred and scaled on its own. Monte Carlo
    over 2e5 groups (5 standard errors); large G tends to LayerNorm's rho."""
    n = 4
    K0 = random_gram(26 + G, n, spread=0.4)
    sw, sb = 1.0, 0.2
    t = propagate(Network([Block([Dense(sw, sb), GroupLayerNorm(group_size=G)])]), K0)
    assert t.mc_error[1] == 0.0
    C = dense(K0, sw, sb)
    rng = np.random.default_rng(G)
    M = 200_000
    x = rng.standard_normal((M, G, n)) @ np.linalg.cholesky(C).T
    x = x - x.mean(axis=1, keepdims=True)
    y = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True))
    yy = y[:, 0, :]  # one unit of each group; all units of a group have the same law
    mc = yy.T @ yy / M
    se = np.sqrt(np.maximum((yy * yy).T @ (yy * yy) / M - mc * mc, 0.0) / M)
    assert np.all(np.abs(t.gram[1] - mc) <= 5 * se + 1e-12)
    big = propagate(Network([Block([Dense(sw, sb), GroupLayerNorm(group_size=4000)])]), K0)
    assert np.max(np.abs(big.gram[1] - normalize(C))) < 1e-3


def maxpool2_truth(K):
    d = np.sqrt(np.diag(K))
    s = np.outer(d, d)
    rho = np.clip(K / s, -1, 1)
    return 0.5 * (K + 2 / math.pi * s * (np.sqrt(1 - rho * rho) + rho * np.arcsin(rho)))


def test_maxpool_closed_form_and_simulation():
    """max(x1, x2) = (u + |v|)/sqrt 2 with u, v i.i.d. N(0, K): closed-form second moment and mean."""
    K0 = random_gram(30, 4, spread=0.5)
    net = Network([Block([Dense(1.2, 0.2), MaxPool(2)]), Block([Dense(1.0, 0.1), MaxPool(2)])])
    t = propagate(net, K0, mc_samples=2**17)
    assert np.all(t.mc_error == 0)  # MaxPool(2) of a Gaussian has an exact rule
    G1 = dense(K0, 1.2, 0.2)
    tol = 1e-12
    assert np.max(np.abs(t.gram[1] - maxpool2_truth(G1))) <= tol
    assert np.max(np.abs(t.means[1] - np.sqrt(np.diag(G1) / math.pi))) <= tol
    # second block from the engine's first (the Dense makes it Gaussian again)
    G2 = dense(t.gram[1], 1.0, 0.1)
    assert np.max(np.abs(t.gram[2] - maxpool2_truth(G2))) <= tol
    # MaxPool(5) has no exact rule (k <= 4 have, tests/test_maxpool.py): Monte Carlo with a reported error
    t3 = propagate(Network([Block([Dense(1.2, 0.2), MaxPool(5)])]), K0, mc_samples=2**16)
    assert 0 < t3.mc_error[1] < 0.02
    # against a wide simulation
    X = np.linalg.cholesky(K0 + 1e-12 * np.eye(4)) * math.sqrt(4)  # X X^T / 4 = K0 (d = 4)
    width = 4096
    sim, _ = simulate_np(net, X, width, 20)
    assert_within_sampling_error(t.gram[1:], sim[:, 1:], width, mc_error=t.mc_error[1:])


def residual_truth(K0, m0, depth, alpha, sw, sb):
    """Identity shortcut + alpha * relu(Dense(x)): K -> K + a^2 J + a (m m_r^T + m_r m^T), m -> m + a m_r."""
    Ks, ms = [K0], [m0]
    K, m = K0, m0
    for _ in range(depth):
        G = dense(K, sw, sb)
        mr = relu_mean(G)
        K = K + alpha**2 * relu_second_moment(G) + alpha * (np.outer(m, mr) + np.outer(mr, m))
        m = m + alpha * mr
        Ks.append(K)
        ms.append(m)
    return np.stack(Ks), np.stack(ms)


def test_residual_identity_shortcut():
    rng = np.random.default_rng(31)
    n, width = 4, 2048
    X = rng.standard_normal((n, width)) * 0.8 + np.array([[0.5], [-0.3], [0.0], [1.0]])
    alpha, sw, sb, depth = 0.6, 1.2, 0.2, 4
    net = mlp(depth, "relu", sigma_w=sw, sigma_b=sb, residual=alpha)
    assert all(isinstance(b.layers[0], Residual) for b in net.blocks)
    t = propagate(net, X=X)
    Kref, mref = residual_truth(X @ X.T / width, X.mean(axis=1), depth, alpha, sw, sb)
    assert scaled_err(t.gram, Kref) < 1e-12
    np.testing.assert_allclose(t.means, mref, rtol=1e-12, atol=1e-15)
    assert np.all(t.mc_error == 0.0)
    # the per-sample means matter: with K0 alone (means taken as 0) the first block differs
    t0 = propagate(net, X @ X.T / width)
    assert np.max(np.abs(t0.gram[1] - t.gram[1])) > 1e-3
    sim, simm = simulate_np(net, X, width, 20)
    assert_within_sampling_error(t.gram[1:], sim[:, 1:], width)
    assert_within_sampling_error(t.means[1:, None], simm[:, 1:, None], width)


def test_residual_with_dense_shortcut_and_ln_branch():
    """Vatanen-style shortcut with its own weights: K -> sw_s^2 K + alpha^2 K_branch (shortcut mean 0)."""
    K0 = random_gram(32, 5, spread=0.5)
    alpha = 0.7
    net = Network([Residual(branch=[Dense(1.3, 0.1), Activation("relu"), LayerNorm()], alpha=alpha,
                            shortcut=[Dense(0.9)])] * 3)
    t = propagate(net, K0)
    K = K0
    for layer in range(3):
        G = dense(K, 1.3, 0.1)
        m = relu_mean(G)
        K = 0.81 * K + alpha**2 * normalize(relu_second_moment(G) - np.outer(m, m))
        assert scaled_err(t.gram[layer + 1], K) < 1e-12


def test_residual_without_random_start_raises():
    net = Network([Dense(), Residual(branch=[Activation("relu")])])
    with pytest.raises(ValueError, match="Residual"):
        propagate(net, np.eye(3))


def test_two_activations_in_a_row_monte_carlo():
    """relu(relu(u)) = relu(u): the Monte Carlo rule must reproduce the exact kernel within its error."""
    K0 = random_gram(33, 4, spread=0.4)
    net = Network([Block([Dense(1.4, 0.2), Activation("relu"), Activation("relu")])])
    t = propagate(net, K0, mc_samples=2**17)
    assert 0 < t.mc_error[1] < 0.02
    ref = relu_second_moment(dense(K0, 1.4, 0.2))
    assert np.max(np.abs(t.gram[1] - ref)) <= 5 * t.mc_error[1]


def test_activation_on_raw_input_raises():
    with pytest.raises(ValueError, match="Dense"):
        propagate(Network([Activation("tanh")]), np.eye(3))


# ================================================================================================
# structural properties
def _structural_nets():
    return {
        "relu_ln_post": mlp(20, "relu", norm="ln", sigma_b=0.1),
        "tanh_rms_post": mlp(8, "tanh", norm="rms", sigma_w=2.5, sigma_b=0.1),
        "gelu_ln_pre": mlp(8, "gelu", norm="ln", placement="pre", sigma_w=1.5),
        "relu_bn_pre": mlp(4, "relu", norm="bn", placement="pre", sigma_w=1.3),
        "relu_gln_size": mlp(6, "relu", norm="gln", group_size=5),
        "relu_residual": mlp(10, "relu", residual=0.5, norm="ln"),
        "erf_maxpool": Network([Block([Dense(1.5, 0.1), Activation("erf"), MaxPool(2)])] * 2),
        "transformed": mlp(10, hermite.transform(hermite.activation("relu"), remove=(0, 1)), norm="ln"),
        "formula": mlp(5, "x*tanh(x)", sigma_b=0.2),
    }


@pytest.fixture(scope="module")
def structural_runs():
    rng = np.random.default_rng(40)
    X = rng.standard_normal((6, 9)) * np.exp(0.4 * rng.standard_normal((6, 1)))
    X[4] = X[1]  # a duplicated sample: rho = 1 exactly at the input
    return {name: propagate(net, X=X, mc_samples=2**12) for name, net in _structural_nets().items()}


@pytest.mark.parametrize("name", sorted(_structural_nets()))
def test_symmetric_psd_correlations_bounded(structural_runs, name):
    t = structural_runs[name]
    G = t.gram
    assert G.shape == (t.depth + 1, 6, 6) and G.dtype == np.float64
    assert np.all(np.isfinite(G))
    np.testing.assert_array_equal(G, np.swapaxes(G, 1, 2))  # exactly symmetric
    lam = np.linalg.eigvalsh(G)
    assert np.all(lam[:, 0] >= -1e-12 * np.maximum(lam[:, -1], 1e-300)), name
    d = np.diagonal(G, axis1=1, axis2=2)
    assert np.all(d >= 0)
    assert np.all(G * G <= d[:, :, None] * d[:, None, :] * (1 + 8 * EPS)), name  # |rho| <= 1
    assert t.means.shape == (t.depth + 1, 6)
    assert t.mc_error.shape == (t.depth + 1,)
    # the duplicated sample stays a duplicate (Monte Carlo rules: far inside their standard error)
    tol = 1e-12 if np.all(t.mc_error == 0) else 1e-6
    np.testing.assert_allclose(G[:, 1, :], G[:, 4, :], rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["relu_ln_post", "tanh_rms_post", "gelu_ln_pre", "transformed"])
def test_unit_diagonal_exact_after_norm(structural_runs, name):
    t = structural_runs[name]
    net = _structural_nets()[name]
    if isinstance(net.blocks[0].layers[-1], (LayerNorm, RMSNorm)):
        assert np.all(np.diagonal(t.gram[1:], axis1=1, axis2=2) == 1.0)
    else:  # pre placement: exactly unit diagonal right after the norm, in the per-layer detail
        d = propagate(net, t.gram[0], detail=True)
        for rep, K in d.layers:
            if rep.startswith(("LayerNorm", "RMSNorm")):
                assert np.all(np.diag(K) == 1.0)


def test_mc_error_zero_for_exact_networks(structural_runs):
    for name in ("relu_ln_post", "tanh_rms_post", "gelu_ln_pre", "relu_residual", "transformed", "formula",
                 "relu_bn_pre"):
        assert np.all(structural_runs[name].mc_error == 0.0), name
    # MaxPool and a fixed group size after the activation have non-Gaussian inputs: Monte Carlo
    for name in ("erf_maxpool", "relu_gln_size"):
        assert np.all(structural_runs[name].mc_error[1:] > 0.0), name
        assert structural_runs[name].mc_error[0] == 0.0


_DUP = np.array([[1.0, 0.2, -0.5], [1.0, 0.2, -0.5], [0.3, -1.0, 0.8]])  # sample 1 duplicates sample 0


@pytest.fixture(scope="module")
def chaotic_run():
    return propagate(mlp(40, "tanh", sigma_w=3.0, sigma_b=0.05), X=_DUP)


def test_chaotic_phase_correlations_stay_bounded(chaotic_run):
    """In the chaotic phase rho = 1 is unstable: no correlation may run past +-1 (or to NaN)."""
    K = chaotic_run.gram
    assert np.all(np.isfinite(K))
    d = np.diagonal(K, axis1=1, axis2=2)
    assert np.all(K * K <= d[:, :, None] * d[:, None, :] * (1 + 8 * EPS))


@pytest.mark.parametrize("which", ["tanh_chaotic", "relu_ln"])
def test_duplicated_input_keeps_unit_correlation(which, chaotic_run):
    if which == "tanh_chaotic":
        K = chaotic_run.gram
    else:
        K = propagate(mlp(200, "relu", norm="ln", sigma_w=2**0.5), X=_DUP).gram
    rho = K[:, 0, 1] / np.sqrt(K[:, 0, 0] * K[:, 1, 1])
    assert np.max(np.abs(1.0 - rho)) < 1e-12


@pytest.mark.parametrize("net", [
    mlp(5, "relu", norm="ln"), mlp(5, "sigmoid", norm="ln"), mlp(5, "tanh", norm="rms"),
    mlp(5, "relu", norm="ln", placement="pre"), mlp(3, "relu", norm="gln", group_size=3),
], ids=["relu_ln", "sigmoid_ln", "tanh_rms", "relu_ln_pre", "gln_size"])
def test_zero_variance_sample_maps_to_zero(net):
    """A zero input (no bias): zero variance over the features of that sample -> 0, never NaN."""
    rng = np.random.default_rng(41)
    X = rng.standard_normal((4, 6))
    X[2] = 0.0
    t = propagate(net, X=X, mc_samples=2**10)
    assert np.all(np.isfinite(t.gram)) and np.all(np.isfinite(t.means))
    assert np.all(t.gram[1:, 2, :] == 0.0) and np.all(t.gram[1:, :, 2] == 0.0)
    others = [0, 1, 3]
    d = np.diagonal(t.gram[-1], axis1=0, axis2=1)[others]
    assert np.all(d > 0)


def test_detail_records_every_layer():
    net = mlp(4, "relu", norm="ln", sigma_b=0.1)
    K0 = random_gram(42, 5)
    t = propagate(net, K0, detail=True)
    assert len(t.layers) == 3 * 4
    for i, (rep, K) in enumerate(t.layers):
        assert rep == repr(net.blocks[i // 3].layers[i % 3])
        assert K.shape == (5, 5)
        if i % 3 == 2:
            np.testing.assert_array_equal(K, t.gram[i // 3 + 1])
    # the Dense layer's Gram is the affine map of the previous block
    np.testing.assert_allclose(t.layers[3][1], dense(t.gram[1], 1.0, 0.1), rtol=1e-15)
    assert propagate(net, K0).layers is None


def test_means_shape_and_values():
    K0 = random_gram(43, 5)
    t = propagate(mlp(3, "relu", sigma_w=1.5, sigma_b=0.2), K0)
    assert t.means.shape == (4, 5)
    np.testing.assert_array_equal(t.means[0], 0.0)  # K0 given: means taken as 0
    np.testing.assert_allclose(t.means[1], relu_mean(dense(K0, 1.5, 0.2)), rtol=1e-14)
    X = np.random.default_rng(0).standard_normal((5, 7)) + 2.0
    np.testing.assert_allclose(propagate(mlp(3, "relu"), X=X).means[0], X.mean(axis=1))


def test_data_matrix_and_gram_inputs_agree():
    rng = np.random.default_rng(44)
    X = rng.standard_normal((6, 11))
    K0 = X @ X.T / 11
    for net in (mlp(5, "relu", norm="ln"), mlp(3, "tanh", norm="bn", placement="pre")):
        a = propagate(net, X=X, mc_samples=2**10)
        b = propagate(net, K0, mc_samples=2**10)
        c = propagate(net, X=X, mc_samples=2**10)
        np.testing.assert_allclose(a.gram, b.gram, rtol=1e-13, atol=1e-15)
        np.testing.assert_array_equal(a.gram, c.gram)
        np.testing.assert_allclose(a.gram[0], K0, rtol=1e-15)


def test_trajectory_metadata():
    net = mlp(3, "relu", norm="ln")
    t = propagate(net, np.eye(4))
    assert isinstance(t, meanfield.Trajectory)
    assert t.engine == "meanfield" and t.network == net and t.depth == 3 and t.n == 4 and not t.seeded
    assert t.gram.shape == (4, 4, 4)


def test_center_scale_layers_compose_to_layernorm():
    K0 = random_gram(45, 5, spread=0.4)
    a = propagate(Network([Block([Dense(1.2, 0.1), Activation("gelu"), LayerNorm()])] * 3), K0)
    b = propagate(Network([Block([Dense(1.2, 0.1), Activation("gelu"), Center(), Scale()])] * 3), K0)
    c = propagate(Network([Block([Dense(1.2, 0.1), Activation("gelu"), Center("per_sample"),
                                  Scale("per_sample")])] * 3), K0)
    np.testing.assert_array_equal(a.gram, b.gram)
    np.testing.assert_allclose(a.gram, c.gram, rtol=1e-14, atol=1e-15)


# ================================================================================================
# bad inputs
@pytest.mark.parametrize("K0,match", [
    (np.ones(3), "K0"),
    (np.ones((2, 2, 2)), "K0"),
    (np.array([[1.0, 0.5], [0.4, 1.0]]), "K0.*symmetric"),
    (np.array([[1.0, 2.0], [2.0, 1.0]]), "K0.*positive semi-definite"),
    (np.array([[1.0, np.nan], [np.nan, 1.0]]), "K0.*(NaN|finite)"),
], ids=["1d", "3d", "asymmetric", "indefinite", "nan"])
def test_bad_K0_raises(K0, match):
    with pytest.raises(ValueError, match=match):
        propagate(mlp(2, "relu"), K0)


def test_bad_propagate_arguments():
    net = mlp(2, "relu")
    with pytest.raises(ValueError, match="X"):
        propagate(net, X=np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="X"):
        propagate(net, X=np.ones(3))
    with pytest.raises(ValueError, match="K0 or X"):
        propagate(net, np.eye(2), X=np.eye(2))
    with pytest.raises(ValueError, match="K0"):
        propagate(net)
    with pytest.raises(ValueError, match="net"):
        propagate("relu", np.eye(2))
    with pytest.raises(ValueError, match="mc_samples"):
        propagate(net, np.eye(2), mc_samples=3)


def test_nonsquare_K0_raises_and_points_to_X():
    """A positional array is always the Gram K0 (DESIGN.md): a non-square one raises and names X=; the same
    matrix passed as X= is read as data (K0 = X X^T / d)."""
    X = np.random.default_rng(46).standard_normal((3, 5))
    with pytest.raises(ValueError, match=r"X=X"):
        propagate(mlp(2, "relu"), X)
    np.testing.assert_allclose(propagate(mlp(2, "relu"), X=X).gram[0], X @ X.T / 5, rtol=1e-15)


@pytest.mark.parametrize("act", ["relu", "step", "leaky_relu", "abs"])
def test_batchnorm_then_homogeneous_activation_is_exact(act):
    """Dense -> BatchNorm -> ReLU (BN pre): Yang et al.'s one-dimensional reduction, no Monte Carlo.
    Checked against 10^6 samples of the exact law y = sqrt(n) P g / |P g|, g ~ N(0, G)."""
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 6))
    G = A @ A.T / 6
    net = Network([Block([Dense(1.0), BatchNorm(), Activation(act)])])
    t = propagate(net, G)
    assert t.mc_error[-1] == 0.0
    assert np.array_equal(t.gram, propagate(net, G, seed=9).gram)  # deterministic
    M = 10**6
    g = rng.standard_normal((M, 4)) @ np.linalg.cholesky(G).T
    v = g - g.mean(axis=1, keepdims=True)
    y = 2.0 * v / np.linalg.norm(v, axis=1, keepdims=True)
    fy = hermite.activation(act)(y)
    K = fy.T @ fy / M
    se = np.sqrt(np.mean((fy[:, :, None] * fy[:, None, :]) ** 2, axis=0) / M)
    assert np.max(np.abs(t.gram[-1] - K) / se) < 5
    assert np.max(np.abs(t.means[-1] - fy.mean(axis=0)) / (fy.std(axis=0) / np.sqrt(M))) < 5


def test_batchnorm_then_identity_equals_the_exact_batchnorm():
    G = random_gram(8, 5, spread=0.5)
    a = propagate(Network([Block([Dense(1.0), BatchNorm()])]), G).gram[-1]
    b = propagate(Network([Block([Dense(1.0), BatchNorm(), Activation("identity")])]), G).gram[-1]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_weightnorm_fixed_on_narrow_data_uses_the_spherical_law():
    """WeightNormDense(fixed) on a 4-dimensional input is not Gaussian: the engine samples the exact
    spherical projection (mc_error > 0) and agrees with a wide simulation; Dense stays exact."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((5, 4))
    net = Network([Block([WeightNormDense(g=1.0), Activation("tanh")])])
    mf = propagate(net, X=X)
    assert mf.mc_error[-1] > 0
    sim = meanfield.simulate(net, X, width=4096, seeds=30, progress=False)
    se = sim.gram.std(axis=0, ddof=1)[-1] / np.sqrt(30)
    z = np.abs(sim.gram.mean(axis=0)[-1] - mf.gram[-1]) / np.sqrt(se**2 + mf.mc_error[-1] ** 2)
    assert np.max(z) < 5
    # the Gaussian (Dense) rule would be visibly off here
    dense = propagate(Network([Block([Dense(1.0), Activation("tanh")])]), X=X)
    assert np.max(np.abs(dense.gram[-1] - mf.gram[-1])) > 5 * mf.mc_error[-1]


@pytest.mark.parametrize("name,params", [("softplus", {}), ("softplus", {"beta": 3.0}), ("tanh", {})])
def test_shared_variance_tabulated_kernels_take_half_the_gram(name, params, monkeypatch):
    """After a LayerNorm every entry shares one variance; a kernel without a closed form (a table) is then
    evaluated on the strict upper triangle only and mirrored (softplus, whose family rescales the unit
    softplus, once took the whole matrix: twice the work), with the same values as entry by entry."""
    act = hermite.activation(name, **params)
    n = 40
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 3 * n))
    C = np.corrcoef(X)
    np.fill_diagonal(C, 1.0)
    G = 1.7 * C  # one variance, as after a LayerNorm
    calls = []
    real = type(act).kernel_at

    def spy(self, r, q1, q2, derivative=0):
        calls.append(np.size(r))
        return real(self, r, q1, q2, derivative)

    monkeypatch.setattr(type(act), "kernel_at", spy)
    from meanfield.layers.activation import gaussian_moments

    K, _ = gaussian_moments(act, G)
    assert calls == [n * (n - 1) // 2]
    iu, ju = np.triu_indices(n, 1)
    R = np.clip(G[iu, ju] / 1.7, -1.0, 1.0)
    want = np.array([hermite.kernel(act, np.array([r]), 1.7, 1.7)[0] for r in R[:30]])
    np.testing.assert_allclose(K[iu[:30], ju[:30]], want, rtol=0, atol=1e-12 * hermite.second_moment(act, 1.7))
    np.testing.assert_array_equal(K, K.T)


@pytest.mark.parametrize("name", ["tanh", "elu", "relu", "hardtanh"])
def test_own_variances_gram_is_entry_by_entry(name):
    """Without a norm every input keeps its own variance: the Gram of gaussian_moments is, bit for bit, the
    kernel entry by entry (the engine hands the kernels its n distinct variances instead of letting them sort
    the entries' ones), the second moments on the diagonal and for duplicated inputs, f(0) for a zero-variance
    input, and exactly symmetric."""
    from hermite.distinct import Distinct
    from meanfield.layers.activation import gaussian_moments

    act = hermite.activation(name)
    rng = np.random.default_rng(5)
    n = 40
    X = rng.standard_normal((n, 2 * n)) * np.exp(0.6 * rng.standard_normal((n, 1)))
    X[4] = X[9]  # a duplicated input
    X[13] = 0.0  # a zero-variance input
    G = X @ X.T / (2 * n)
    K, m = gaussian_moments(act, G)
    np.testing.assert_array_equal(K, K.T)
    d = np.diag(G)
    live = np.flatnonzero(d > 0)
    iu, ju = np.triu_indices(n, 1)
    keep = (d[iu] > 0) & (d[ju] > 0) & ~((G[iu, ju] == d[iu]) & (d[iu] == d[ju]))
    a, b = iu[keep], ju[keep]
    r = np.clip(G[a, b] / (np.sqrt(d[a]) * np.sqrt(d[b])), -1.0, 1.0)
    plain = act.kernel_at(r, d[a], d[b], 0)
    np.testing.assert_array_equal(K[a, b], plain)
    D = Distinct.of(np.concatenate([d[a], d[b]]))
    np.testing.assert_array_equal(act.core.kernel(r, d[a], d[b], 0, D), plain)
    moments = act.second_moment_at(np.unique(d[live]))
    np.testing.assert_array_equal(np.diag(K)[live], moments[np.searchsorted(np.unique(d[live]), d[live])])
    assert K[4, 9] == K[4, 4] == K[9, 9]
    f0 = float(act.fn(np.zeros(1))[0])
    np.testing.assert_array_equal(K[13], f0 * m)
    assert m[13] == f0


def test_small_batches_run_with_one_blas_thread():
    """The mean-field engine holds BLAS at one thread for a small batch (its spinning workers took a core for
    no gain: `meanfield.core.blas`), gives the threads back to Monte Carlo rules, and restores them after."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from meanfield.core import blas

    def blas_threads():
        return max(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")

    if not any(i["user_api"] == "blas" for i in threadpoolctl.threadpool_info()):
        pytest.skip("no BLAS library that threadpoolctl controls")
    before = blas_threads()
    seen = {"kernel": set()}

    def f(x):
        seen["kernel"].add(blas_threads())
        return np.tanh(x)

    act = hermite.activation(f, name="tanh_spy")
    K0 = np.array([[1.0, 0.3], [0.3, 0.8]])
    seen["kernel"].clear()
    meanfield.propagate(meanfield.mlp(1, act), K0)
    assert seen["kernel"] == {1}
    assert blas_threads() == before
    # two activations in a row: the second is a Monte Carlo rule, its samples drawn with the threads restored
    net = meanfield.Network([meanfield.Dense(), meanfield.Activation("tanh"), meanfield.Activation(act)])
    seen["kernel"].clear()
    meanfield.propagate(net, K0, mc_samples=256)
    assert seen["kernel"] == {before}
    assert blas_threads() == before
    with blas.serial_for(blas.SERIAL_MAX + 1):  # a large batch keeps the threads
        assert blas_threads() == before
    with blas.serial_for(blas.SERIAL_MAX):
        assert blas_threads() == 1


def _blas_thread_count():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    counts = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    if not counts:
        pytest.skip("no BLAS library that threadpoolctl controls")
    return max(counts)


def _needs_two_blas_threads():
    if _blas_thread_count() < 2:
        pytest.skip("needs a BLAS with at least two threads")


def test_values_do_not_depend_on_the_blas_cap(monkeypatch):
    """The cap changes threads, not values: the input Gram of propagate(X=...) is X X^T / d as the caller forms it,
    and exact BatchNorm's eigendecomposition runs with the caller's threads (found in review: both differed in
    the last bits for 256 < n <= 512 with the cap)."""
    _needs_two_blas_threads()
    from meanfield.core import blas

    X = np.random.default_rng(7).normal(size=(300, 30))
    t = meanfield.propagate(meanfield.mlp(1, "relu"), X=X)
    np.testing.assert_array_equal(t.gram[0], X @ X.T / X.shape[1])
    K0 = X @ X.T / 30
    K0 = 0.5 * (K0 + K0.T)
    net = meanfield.Network([meanfield.Dense(), meanfield.BatchNorm(mode="exact"), meanfield.Activation("relu")])
    capped = meanfield.propagate(net, K0).gram
    monkeypatch.setattr(blas, "SERIAL_MAX", -1)
    np.testing.assert_array_equal(capped, meanfield.propagate(net, K0).gram)


def test_monte_carlo_keeps_a_callers_own_blas_cap():
    """Monte Carlo rules get back the threads in force before propagate, a caller's own cap included."""
    _needs_two_blas_threads()
    import threadpoolctl

    seen = set()

    def f(x):
        seen.add(_blas_thread_count())
        return np.tanh(x)

    act = hermite.activation(f, name="tanh_cap_spy")
    net = meanfield.Network([meanfield.Dense(), meanfield.Activation("tanh"), meanfield.Activation(act)])
    seen.clear()
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        meanfield.propagate(net, np.array([[1.0, 0.3], [0.3, 0.8]]), mc_samples=256)
    assert seen == {1}


def _blas_threads_after(before, *targets):
    """Run the targets in Python threads; the BLAS thread count afterwards (the process is left as found)."""
    import threading

    import threadpoolctl

    threads = [threading.Thread(target=target) for target in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = _blas_thread_count()
    if after != before:  # leave the process as found for later tests
        threadpoolctl.threadpool_limits(limits=before, user_api="blas")
    return after


def test_concurrent_propagates_give_the_blas_threads_back():
    """Two serial regions (two propagate calls) in Python threads, the first to open also the first to close: BLAS
    ends with the threads it had (found in review: the second call restored the first one's cap for the whole
    process); inside either region it runs with one thread."""
    import threading

    from meanfield.core import blas

    _needs_two_blas_threads()
    before = _blas_thread_count()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    inside = []

    def first():
        with blas.serial_for(2):
            a_in.set()
            b_in.wait(30)
            inside.append(_blas_thread_count())
        a_out.set()

    def second():
        a_in.wait(30)
        with blas.serial_for(2):
            b_in.set()
            a_out.wait(30)
            inside.append(_blas_thread_count())

    after = _blas_threads_after(before, first, second)
    assert a_out.is_set() and b_in.is_set()
    assert inside == [1, 1]
    assert after == before


def test_blas_threads_come_back_while_the_thread_of_the_first_region_lives():
    """The second region closes while the Python thread that opened the first one is still alive (found in
    review: threadpoolctl >= 3.8 lets only the first live thread that set a pthreads OpenBLAS change it, so
    the last region's restore from another thread was silently dropped and BLAS stayed at one thread)."""
    import threading

    from meanfield.core import blas

    _needs_two_blas_threads()
    before = _blas_thread_count()
    a_in, b_in, a_out, b_out = (threading.Event() for _ in range(4))
    seen = {}

    def first():
        with blas.serial_for(2):
            a_in.set()
            b_in.wait(30)
        a_out.set()
        b_out.wait(30)  # alive until the second region has closed

    def second():
        a_in.wait(30)
        with blas.serial_for(2):
            b_in.set()
            a_out.wait(30)
            seen["inside"] = _blas_thread_count()
        seen["after"] = _blas_thread_count()
        b_out.set()

    after = _blas_threads_after(before, first, second)
    assert a_out.is_set() and b_out.is_set()
    assert seen == {"inside": 1, "after": before}
    assert after == before
