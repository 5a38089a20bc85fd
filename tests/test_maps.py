"""Tests of meanfield.maps against independent truths.

Truths used: the ReLU arc-cosine kernel (Cho and Saul 2009) and the erf kernel (Williams 1997) in closed
form, written out here; Gauss-Hermite quadrature (scipy's roots_hermitenorm) for tanh, which is analytic
in a strip so the rule converges geometrically; the published edge of chaos of tanh (sigma_w = 1 at
sigma_b = 0; sigma_w^2 ~ 1.76 at sigma_b^2 = 0.05, Schoenholz et al. 2017) and of ReLU (sigma_w^2 = 2).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import roots_hermitenorm

from meanfield import maps

# ------------------------------------------------------------------------------------------------
# independent references
_Z, _W = roots_hermitenorm(600)
_W = _W / math.sqrt(2 * math.pi)


def gh(fn) -> float:
    """E fn(z), z ~ N(0, 1), by 600-point Gauss-Hermite quadrature (tanh(sqrt(q) z) has poles at
    distance pi / (2 sqrt(q)) from the real axis: 160 points are only 1e-9 accurate at q = 2.5)."""
    return float(np.sum(_W * fn(_Z)))


def gh2(fn, c: float) -> float:
    """E fn(z1, c z1 + sqrt(1 - c^2) z2) by a tensor Gauss-Hermite rule."""
    z1, z2 = _Z[:, None], _Z[None, :]
    return float(np.sum(_W[:, None] * _W[None, :] * fn(z1, c * z1 + math.sqrt(1 - c * c) * z2)))


def sech2(x):
    return 1.0 / np.cosh(x) ** 2


def tanh_qstar(sw2: float, sb2: float) -> float:
    """q = sw2 E tanh(sqrt(q) z)^2 + sb2 by Brent on [sb2, sw2 + sb2] (the map is below sw2 + sb2)."""
    return brentq(lambda q: sw2 * gh(lambda z: np.tanh(math.sqrt(q) * z) ** 2) + sb2 - q,
                  sb2, sw2 + sb2, xtol=1e-15)


def tanh_chi1(sw2: float, sb2: float) -> float:
    q = tanh_qstar(sw2, sb2)
    return sw2 * gh(lambda z: sech2(math.sqrt(q) * z) ** 2)


def tanh_cmap(c: float, q: float, sw2: float, sb2: float) -> float:
    s = math.sqrt(q)
    k = gh2(lambda a, b: np.tanh(s * a) * np.tanh(s * b), c)
    return (sw2 * k + sb2) / (sw2 * gh(lambda z: np.tanh(s * z) ** 2) + sb2)


def arccos1(c):
    """E relu(u) relu(v) for unit variances and correlation c (Cho and Saul 2009)."""
    c = np.asarray(c, dtype=float)
    return (np.sqrt(1 - c * c) + (np.pi - np.arccos(c)) * c) / (2 * np.pi)


def relu_cmap(c, q, sw2, sb2):
    return (sw2 * q * arccos1(c) + sb2) / (sw2 * q / 2 + sb2)


def erf_k(c, q):
    """E erf(u) erf(v), Var u = Var v = q, corr c (Williams 1997)."""
    return 2 / np.pi * np.arcsin(2 * q * np.asarray(c, dtype=float) / (1 + 2 * q))


# ------------------------------------------------------------------------------------------------
# ReLU: closed forms
@pytest.mark.parametrize("sw2,sb2,q", [(2.0, 0.0, 1.0), (1.5, 0.1, 0.7), (1.0, 0.5, 3.0), (2.0, 0.2, 0.05)])
def test_relu_cmap_is_the_arccosine_map(sw2, sb2, q):
    c = np.linspace(-1, 1, 41)
    got = maps.cmap("relu", c, q, math.sqrt(sw2), math.sqrt(sb2))
    np.testing.assert_allclose(got, relu_cmap(c, q, sw2, sb2), rtol=0, atol=2e-15)
    assert got[-1] == 1.0
    # the slope: sw2 q E[f'f'] / q' with E[1{u>0} 1{v>0}] = (pi - arccos c) / (2 pi)
    s = maps.cmap_slope("relu", c[1:-1], q, math.sqrt(sw2), math.sqrt(sb2))
    ref = sw2 * q * (np.pi - np.arccos(c[1:-1])) / (2 * np.pi) / (sw2 * q / 2 + sb2)
    np.testing.assert_allclose(s, ref, rtol=0, atol=1e-14)


def test_relu_iterated_cmap_matches_closed_form():
    sw2, sb2 = 1.9, 0.05
    qs = sb2 / (1 - sw2 / 2)
    assert maps.fixed_point_q("relu", math.sqrt(sw2), math.sqrt(sb2)) == pytest.approx(qs, rel=1e-14)
    c_ref = c_got = 0.1
    for _ in range(200):
        c_ref = float(relu_cmap(c_ref, qs, sw2, sb2))
        c_got = maps.cmap("relu", c_got, None, math.sqrt(sw2), math.sqrt(sb2))
    assert abs(c_got - c_ref) < 1e-12
    # sigma_b = 0: the map does not depend on q; 1 - c_l decays like 1/l^2 (c* = 1 with slope 1)
    c = 0.0
    for _ in range(300):
        c = maps.cmap("relu", c, 1.0, math.sqrt(2.0), 0.0)
    c_ref = 0.0
    for _ in range(300):
        c_ref = float(2 * arccos1(c_ref))
    assert abs(c - c_ref) < 1e-12 and 0 < 1 - c < 1e-3


@pytest.mark.parametrize("sw,sb", [(0.5, 0.0), (1.0, 0.3), (1.3, 1.0), (2 ** 0.5, 0.0), (1.0, 0.0)])
def test_relu_chi1_is_half_sigma_w2(sw, sb):
    assert maps.chi1("relu", sw, sb) == pytest.approx(sw * sw / 2, rel=1e-14)


def test_relu_fixed_points_and_depth_scales():
    # q-map q -> sw2 q / 2 + sb2 is linear: chi_q = sw2 / 2, xi_q = -1 / log(sw2 / 2)
    sw2, sb2 = 1.2, 0.3
    ds = maps.depth_scales("relu", math.sqrt(sw2), math.sqrt(sb2))
    assert ds["xi_q"] == pytest.approx(-1 / math.log(sw2 / 2), rel=1e-8)
    assert ds["xi_c"] == pytest.approx(-1 / math.log(sw2 / 2), rel=1e-12)   # ordered: c* = 1, chi_c = chi1
    # sigma_b = 0, sigma_w^2 < 2: q* = 0 (the limit map is still the arc-cosine map)
    assert maps.fixed_point_q("relu", 1.0, 0.0) == 0.0
    # sigma_w^2 = 2, sigma_b = 0: every q is a fixed point, q0 is returned, both depth scales infinite
    assert maps.fixed_point_q("relu", 2 ** 0.5, 0.0, q0=3.5) == pytest.approx(3.5, rel=1e-14)
    assert maps.depth_scales("relu", 2 ** 0.5, 0.0) == {"xi_q": math.inf, "xi_c": math.inf}
    # sigma_w^2 > 2: q grows without bound
    with pytest.raises(ValueError, match="no finite fixed point"):
        maps.fixed_point_q("relu", 1.5, 0.1)


@pytest.mark.parametrize("sb", [0.0, 0.5])
def test_relu_edge_of_chaos(sb):
    assert maps.edge_of_chaos("relu", sb) ** 2 == pytest.approx(2.0, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# erf: closed form
@pytest.mark.parametrize("sw2,sb2", [(1.0, 0.0), (2.5, 0.2), (4.0, 1.0)])
def test_erf_cmap_closed_form(sw2, sb2):
    sw, sb = math.sqrt(sw2), math.sqrt(sb2)
    qs = brentq(lambda q: sw2 * erf_k(1.0, q) + sb2 - q, 1e-9, sw2 + sb2 + 1, xtol=1e-15)
    got_q = maps.fixed_point_q("erf", sw, sb)
    assert got_q == pytest.approx(qs, rel=1e-12, abs=1e-12) or (sb2 == 0 and sw2 <= np.pi / 4 and got_q == 0)
    for q in (0.3, 2.0, got_q if got_q > 0 else 1.0):
        c = np.linspace(-1, 1, 21)
        ref = (sw2 * erf_k(c, q) + sb2) / (sw2 * erf_k(1.0, q) + sb2)
        np.testing.assert_allclose(maps.cmap("erf", c, q, sw, sb), ref, rtol=0, atol=1e-14)
    # chi1 = sw2 E f'(u)^2 = sw2 (4/pi) / sqrt(1 + 4 q*)
    if got_q > 0:
        assert maps.chi1("erf", sw, sb) == pytest.approx(sw2 * 4 / np.pi / math.sqrt(1 + 4 * qs), rel=1e-11)


def test_erf_edge_of_chaos_closed_form():
    sb2 = 0.1

    def chi(sw2):
        q = brentq(lambda q: sw2 * erf_k(1.0, q) + sb2 - q, 1e-12, sw2 + sb2 + 1, xtol=1e-15)
        return sw2 * 4 / np.pi / math.sqrt(1 + 4 * q) - 1

    sw2_ref = brentq(chi, 0.5, 4.0, xtol=1e-14)
    assert maps.edge_of_chaos("erf", math.sqrt(sb2)) ** 2 == pytest.approx(sw2_ref, rel=1e-10)


# ------------------------------------------------------------------------------------------------
# tanh: quadrature and published values
def test_tanh_qmap_and_cmap_against_gauss_hermite():
    sw2, sb2 = 2.0, 0.3
    qs = tanh_qstar(sw2, sb2)
    assert maps.fixed_point_q("tanh", math.sqrt(sw2), math.sqrt(sb2)) == pytest.approx(qs, rel=1e-12)
    q = np.array([0.1, 1.0, 2.5])
    ref = [sw2 * gh(lambda z, v=v: np.tanh(math.sqrt(v) * z) ** 2) + sb2 for v in q]
    np.testing.assert_allclose(maps.qmap("tanh", q, math.sqrt(sw2), math.sqrt(sb2)), ref, rtol=1e-13)
    for c in (-0.9, 0.0, 0.5, 0.999):
        assert maps.cmap("tanh", c, qs, math.sqrt(sw2), math.sqrt(sb2)) == pytest.approx(
            tanh_cmap(c, qs, sw2, sb2), abs=1e-12)
    assert maps.chi1("tanh", math.sqrt(sw2), math.sqrt(sb2)) == pytest.approx(tanh_chi1(sw2, sb2), rel=1e-12)


def test_tanh_edge_of_chaos_published_values():
    sb2 = 0.05
    sw2_ref = brentq(lambda s: tanh_chi1(s, sb2) - 1, 1.2, 3.0, xtol=1e-14)   # independent: Gauss-Hermite
    assert abs(sw2_ref - 1.76) < 0.005                                         # Schoenholz et al. 2017
    sw = maps.edge_of_chaos("tanh", math.sqrt(sb2))
    assert sw * sw == pytest.approx(sw2_ref, rel=1e-10)
    assert maps.chi1("tanh", sw, math.sqrt(sb2)) == pytest.approx(1.0, abs=1e-12)
    # sigma_b = 0: q* = 0 below sigma_w = 1 (chi1 = sigma_w^2 there), critical sigma_w = 1 (Poole et al. 2016)
    # (chi1 - 1 ~ 1.33 (sigma_w - 1)^2 just above 1, so the root is only resolved to ~1e-8)
    assert maps.edge_of_chaos("tanh", 0.0) == pytest.approx(1.0, abs=1e-7)
    assert maps.fixed_point_q("tanh", 0.8, 0.0) == 0.0
    assert maps.chi1("tanh", 0.8, 0.0) == pytest.approx(0.64, rel=1e-12)


def test_tanh_fixed_points_ordered_and_chaotic():
    sb = math.sqrt(0.3)
    sw_c = maps.edge_of_chaos("tanh", sb)
    # ordered: the only fixed point is c* = 1, stable
    fps = maps.fixed_point_c("tanh", 0.8 * sw_c, sb)
    assert len(fps) == 1 and fps[0].c == 1.0 and fps[0].stable
    assert fps[0].slope == pytest.approx(maps.chi1("tanh", 0.8 * sw_c, sb), rel=1e-12)
    # chaotic: c = 1 unstable (slope chi1 > 1) and a stable c* < 1 that attracts iterates
    sw = 1.5 * sw_c
    fps = maps.fixed_point_c("tanh", sw, sb)
    stable = [p for p in fps if p.stable]
    assert len(stable) == 1 and 0 < stable[0].c < 1
    assert fps[-1].c == 1.0 and not fps[-1].stable and fps[-1].slope > 1
    qs = tanh_qstar(sw * sw, 0.3)
    assert tanh_cmap(stable[0].c, qs, sw * sw, 0.3) == pytest.approx(stable[0].c, abs=1e-11)
    c, q = 0.2, maps.fixed_point_q("tanh", sw, sb)
    for _ in range(400):
        c = maps.cmap("tanh", c, q, sw, sb)
    assert c == pytest.approx(stable[0].c, abs=1e-10)
    # chi_c = sigma_w^2 E[f'(u) f'(v)] at (c*, q*), by quadrature
    s = math.sqrt(qs)
    ref = sw * sw * gh2(lambda a, b: sech2(s * a) * sech2(s * b), stable[0].c)
    assert maps.chi_c("tanh", sw, sb) == pytest.approx(ref, rel=1e-10)
    assert stable[0].slope == pytest.approx(ref, rel=1e-10)


def test_odd_activation_without_bias_has_symmetric_fixed_points():
    fps = maps.fixed_point_c("tanh", 2.0, 0.0)
    cs = [p.c for p in fps]
    assert cs == pytest.approx([-1.0, 0.0, 1.0], abs=1e-12)
    assert [p.stable for p in fps] == [False, True, False]
    # below the edge q* = 0 and the limit c-map is the identity: every c is fixed
    with pytest.raises(ValueError, match="every c"):
        maps.fixed_point_c("tanh", 0.9, 0.0)


def test_depth_scales_diverge_at_the_edge_of_chaos():
    sb = math.sqrt(0.05)
    sw_c = maps.edge_of_chaos("tanh", sb)
    assert maps.depth_scales("tanh", sw_c, sb)["xi_c"] == math.inf          # criticality: infinite
    for side in (-1, 1):
        xs = [maps.depth_scales("tanh", sw_c * (1 + side * d), sb)["xi_c"] for d in (0.1, 0.01, 0.001)]
        assert xs[0] < xs[1] < xs[2] and xs[2] > 100
    # the depth scale is -1 / log chi_c (Schoenholz et al. 2017, eq. 9)
    sw = 1.2 * sw_c
    assert maps.depth_scales("tanh", sw, sb)["xi_c"] == pytest.approx(-1 / math.log(maps.chi_c("tanh", sw, sb)))


def test_chi_q_matches_quadrature():
    # chi_q = sw2 E[f'^2 + f f''] at q*, f = tanh: f' = sech^2, f'' = -2 tanh sech^2
    sw2, sb2 = 1.7, 0.2
    s = math.sqrt(tanh_qstar(sw2, sb2))
    chi_q = sw2 * gh(lambda z: sech2(s * z) ** 2 - 2 * np.tanh(s * z) ** 2 * sech2(s * z))
    xi_q = maps.depth_scales("tanh", math.sqrt(sw2), math.sqrt(sb2))["xi_q"]
    assert xi_q == pytest.approx(-1 / math.log(chi_q), rel=1e-8)


def test_decreasing_qmap_converges_by_oscillation():
    # cos: E cos(sqrt(q) z)^2 = (1 + exp(-2q)) / 2 decreases in q; the iterates oscillate to q*
    q = 1.0
    for _ in range(300):
        q = 1.5 * (1 + math.exp(-2 * q)) / 2 + 0.1
    assert maps.fixed_point_q("cos", math.sqrt(1.5), math.sqrt(0.1)) == pytest.approx(q, rel=1e-13)


def test_repelling_zero_gives_a_small_positive_fixed_point():
    # selu, sigma_b = 0: Q(q) ~ sw2 lambda^2 (1 + alpha^2) / 2 q > q near 0, so q = 0 repels and a small
    # q* > 0 attracts; independent check with scipy.integrate.quad split at the kink
    from scipy.integrate import quad

    lam, alpha = 1.0507009873554805, 1.6732632423543772
    sw2 = 0.49

    def Q(q):
        s = math.sqrt(q)
        pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
        neg = quad(lambda z: (lam * alpha * math.expm1(s * z)) ** 2 * pdf(z), -np.inf, 0, epsabs=0, epsrel=1e-13)[0]
        return sw2 * (neg + lam * lam * q / 2)

    assert sw2 * lam ** 2 * (1 + alpha ** 2) / 2 > 1
    q_ref = brentq(lambda q: Q(q) - q, 1e-6, 0.1, xtol=1e-16)
    assert maps.fixed_point_q("selu", 0.7, 0.0) == pytest.approx(q_ref, rel=1e-9)


def test_exp_has_no_edge_of_chaos_and_diverges_for_large_sigma_w():
    with pytest.raises(ValueError, match="no finite fixed point"):
        maps.fixed_point_q("exp", 1.0, 0.0)
    q = maps.fixed_point_q("exp", 0.3, 0.0)
    assert q == pytest.approx(0.09 * math.exp(2 * q), rel=1e-13)
    with pytest.raises(ValueError, match="edge of chaos"):
        maps.edge_of_chaos("exp", 0.0)


# ------------------------------------------------------------------------------------------------
# normalization layers
def test_post_layernorm_relu_is_the_centred_arccosine_map():
    sw2, sb2 = 1.7, 0.4
    c = np.linspace(-1, 1, 21)
    rho = (sw2 * c + sb2) / (sw2 + sb2)
    m2 = 1 / (2 * np.pi)                                # (E relu(u))^2 / q
    ref_ln = (arccos1(rho) - m2) / (0.5 - m2)
    ref_rms = arccos1(rho) / 0.5
    got_ln = maps.cmap("relu", c, None, math.sqrt(sw2), math.sqrt(sb2), norm="ln", placement="post")
    got_rms = maps.cmap("relu", c, None, math.sqrt(sw2), math.sqrt(sb2), norm="rms", placement="post")
    np.testing.assert_allclose(got_ln, ref_ln, rtol=0, atol=1e-14)
    np.testing.assert_allclose(got_rms, ref_rms, rtol=0, atol=1e-14)
    assert maps.fixed_point_q("relu", math.sqrt(sw2), math.sqrt(sb2), norm="ln") == pytest.approx(sw2 + sb2)
    assert maps.qmap("relu", 5.0, math.sqrt(sw2), math.sqrt(sb2), norm="ln") == pytest.approx(sw2 + sb2)
    # chi1 = slope at c = 1 = sw2 E f'^2 / Var f / (sw2 + sb2) * q = pi / (pi - 1) * sw2 / (sw2 + sb2)
    assert maps.chi1("relu", math.sqrt(sw2), math.sqrt(sb2), norm="ln") == pytest.approx(
        np.pi / (np.pi - 1) * sw2 / (sw2 + sb2), rel=1e-12)
    # iterate 200 blocks: within 1e-9 of iterating the closed form
    a = b = 0.3
    for _ in range(200):
        a = maps.cmap("relu", a, None, math.sqrt(sw2), math.sqrt(sb2), norm="ln")
        r = (sw2 * b + sb2) / (sw2 + sb2)
        b = float((arccos1(r) - m2) / (0.5 - m2))
    assert abs(a - b) < 1e-9
    # LN post with ReLU and no bias is chaotic for every sigma_w: no edge of chaos
    with pytest.raises(ValueError, match="edge of chaos"):
        maps.edge_of_chaos("relu", 0.0, norm="ln")


@pytest.mark.parametrize("norm", ["ln", "rms"])
def test_pre_norm_is_the_plain_map_at_unit_variance(norm):
    sw, sb = 1.3, 0.4
    c = np.linspace(-1, 1, 11)
    got = maps.cmap("tanh", c, None, sw, sb, norm=norm, placement="pre")
    np.testing.assert_allclose(got, maps.cmap("tanh", c, 1.0, sw, sb), rtol=0, atol=1e-15)
    assert maps.fixed_point_q("tanh", sw, sb, norm=norm, placement="pre") == 1.0
    # ReLU: chi1 = sw2 (1/2) / (sw2 / 2 + sb2)
    assert maps.chi1("relu", sw, sb, norm=norm, placement="pre") == pytest.approx(
        sw * sw / 2 / (sw * sw / 2 + sb * sb), rel=1e-13)
    assert maps.depth_scales("tanh", sw, sb, norm=norm, placement="pre")["xi_q"] == 0.0


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_batchnorm_large_batch_cmap_is_zero(placement):
    # the claim behind the map: centring an exchangeable Gram over the batch leaves correlation -1/(n-1)
    n, c = 400, 0.7
    K = (1 - c) * np.eye(n) + c * np.ones((n, n))
    P = np.eye(n) - np.ones((n, n)) / n
    Kc = P @ K @ P
    assert Kc[0, 1] / Kc[0, 0] == pytest.approx(-1 / (n - 1), rel=1e-10)
    got = maps.cmap("relu", np.linspace(-1, 1, 5), None, 1.0, 0.1, norm="bn", placement=placement)
    assert np.all(got == 0)
    assert maps.fixed_point_c("relu", 1.0, 0.1, norm="bn", placement=placement) == [maps.FixedPoint(0.0, 0.0, True)]
    assert maps.depth_scales("relu", 1.0, 0.1, norm="bn", placement=placement)["xi_c"] == 0.0
    with pytest.raises(ValueError, match="bn"):
        maps.chi1("relu", 1.0, 0.1, norm="bn", placement=placement)


# ------------------------------------------------------------------------------------------------
# phase diagram
def test_phase_diagram_shapes_and_consistency():
    b2, w2 = [0.0, 0.05, 0.3], [0.5, 1.6, 3.0]
    pd = maps.phase_diagram("tanh", b2, w2)
    for k in ("q_star", "c_star", "chi1", "chi_q", "chi_c", "xi_q", "xi_c", "phase"):
        assert pd[k].shape == (3, 3)
    for i, j in [(1, 1), (2, 2), (0, 2)]:
        sb, sw = math.sqrt(b2[i]), math.sqrt(w2[j])
        assert pd["q_star"][i, j] == maps.fixed_point_q("tanh", sw, sb)
        assert pd["chi1"][i, j] == maps.chi1("tanh", sw, sb)
        assert pd["chi_c"][i, j] == maps.chi_c("tanh", sw, sb)
        ds = maps.depth_scales("tanh", sw, sb)
        assert pd["xi_q"][i, j] == ds["xi_q"] and pd["xi_c"][i, j] == ds["xi_c"]
    chi = pd["chi1"]
    assert np.array_equal(pd["phase"] == "ordered", chi < 1)
    assert np.array_equal(pd["phase"] == "chaotic", chi > 1)
    assert np.all(pd["c_star"][chi > 1] < 1) and np.all(pd["c_star"][(chi < 1) & (pd["q_star"] > 0)] == 1)
    assert np.isnan(pd["c_star"][0, 0])                # q* = 0 for tanh, sigma_b = 0: identity limit map
    assert pd["q_star"][0, 0] == 0.0 and pd["chi1"][0, 0] == pytest.approx(0.5, rel=1e-12)


def test_phase_diagram_relu_labels():
    pd = maps.phase_diagram("relu", [0.0, 0.1], [1.0, 2.0, 3.0])
    assert pd["phase"].tolist() == [["ordered", "critical", "unbounded"], ["ordered", "unbounded", "unbounded"]]
    assert np.isnan(pd["q_star"][1, 2]) and pd["chi1"][0, 0] == 0.5
    # with post-LN: q* = sigma_w^2 + sigma_b^2, xi_q = 0; sigma_w = sigma_b = 0 is undefined, not an error
    pd = maps.phase_diagram("relu", [0.0, 0.1], [0.0, 1.0], norm="ln")
    np.testing.assert_allclose(pd["q_star"], [[0.0, 1.0], [0.1, 1.1]])
    assert pd["phase"].tolist() == [["undefined", "chaotic"], ["ordered", "chaotic"]]
    assert pd["chi1"][0, 1] == pytest.approx(np.pi / (np.pi - 1), rel=1e-12) and pd["c_star"][0, 1] == 0.0
    assert np.all(pd["xi_q"] == 0)


# ------------------------------------------------------------------------------------------------
# invariants and bad inputs
@pytest.mark.parametrize("act", ["relu", "tanh", "gelu", "silu", "step"])
def test_cmap_fixes_one_exactly_and_stays_in_range(act):
    c = np.concatenate([np.linspace(-1, 1, 51), 1 - np.logspace(-15, -1, 8)])
    out = maps.cmap(act, c, 1.3, 1.4, 0.2)
    assert out[50] == 1.0 and np.all(np.abs(out) <= 1)
    assert np.all(np.diff(out[25:51]) >= 0)             # a generating function: increasing on [0, 1]
    # vectorization and broadcasting over q
    grid = maps.cmap(act, c[:, None][:5], np.array([0.5, 2.0]), 1.4, 0.2)
    assert grid.shape == (5, 2)
    assert grid[3, 1] == pytest.approx(maps.cmap(act, c[3], 2.0, 1.4, 0.2), abs=1e-15)


def test_chaotic_cmap_does_not_run_away_from_one():
    c, q = 1.0, maps.fixed_point_q("tanh", 2.5, 0.3)
    for _ in range(100):
        c = maps.cmap("tanh", c, q, 2.5, 0.3)
    assert c == 1.0
    c = 1 - 1e-15                                        # just below 1: moves away, towards c* < 1, never above 1
    for _ in range(10):
        c_next = maps.cmap("tanh", c, q, 2.5, 0.3)
        assert c_next < c < 1
        c = c_next
    assert 1 - c > 1e-14


@pytest.mark.parametrize("call,arg", [
    (lambda: maps.qmap("relu", 1.0, -1.0, 0.0), "sigma_w"),
    (lambda: maps.qmap("relu", 1.0, 1.0, -0.1), "sigma_b"),
    (lambda: maps.qmap("relu", 1.0, float("nan"), 0.0), "sigma_w"),
    (lambda: maps.qmap("relu", -1.0, 1.0, 0.0), "q"),
    (lambda: maps.cmap("relu", 1.5, 1.0, 1.0, 0.0), "c=1.5"),
    (lambda: maps.cmap("relu", [0.2, -1.01], 1.0, 1.0, 0.0), "c=-1.01"),
    (lambda: maps.cmap("relu", 0.2, 0.0, 1.0, 0.0), "q"),
    (lambda: maps.cmap("relu", 0.2, 1.0, 1.0, 0.0, norm="group"), "norm='group'"),
    (lambda: maps.cmap("relu", 0.2, 1.0, 1.0, 0.0, norm="ln", placement="middle"), "placement='middle'"),
    (lambda: maps.fixed_point_q("relu", 1.0, 0.0, q0=0.0), "q0"),
    (lambda: maps.fixed_point_c("tanh", -2.0, 0.0), "sigma_w"),
    (lambda: maps.chi1("relu", 1.0, 0.0, norm="batch"), "norm"),
    (lambda: maps.depth_scales("relu", 1.0, -2.0), "sigma_b"),
    (lambda: maps.edge_of_chaos("relu", -1.0), "sigma_b"),
    (lambda: maps.phase_diagram("relu", [-0.1], [1.0]), "sigma_b2_grid"),
    (lambda: maps.phase_diagram("relu", [0.1], [[1.0, 2.0]]), "sigma_w2_grid"),
    (lambda: maps.qmap("no_such_activation", 1.0, 1.0, 0.0), "no_such_activation"),
])
def test_bad_inputs_raise_valueerror_naming_the_argument(call, arg):
    with pytest.raises(ValueError) as e:
        call()
    assert arg in str(e.value)


def test_identity_network_cmap_is_degenerate():
    with pytest.raises(ValueError, match="every c"):
        maps.fixed_point_c("identity", 1.0, 0.0)
    assert maps.chi_c("identity", 1.0, 0.0) == 1.0
    assert maps.depth_scales("identity", 1.0, 0.0)["xi_c"] == math.inf
