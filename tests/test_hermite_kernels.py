"""Dual kernels `hermite.kernel(act, rho, q1, q2, derivative=0, centered=False)` against independent truths.

E[f(u) f(v)] for jointly Gaussian (u, v), Var u = q1, Var v = q2, corr(u, v) = rho. The truths are written
here, independently of hermite/: the arc-cosine kernels (Cho and Saul 2009) and the erf kernel (Williams
1997), Gaussian moment-generating functions (exp, sin, cos, gaussian), Isserlis' theorem (monomials), and a
two-dimensional quadrature: an adaptive QUADPACK integral over z1 of phi(z1) f(sqrt(q1) z1) G(z1), with
G(z1) = E[f(sqrt(q2) (rho z1 + sqrt(1 - rho^2) z2))] a composite Gauss-Legendre rule split at the kinks.
The accuracy target (issue 2) is 1e-12 sqrt(E f(u)^2 E f(v)^2) for every rho in [-1, 1], ends included.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special

import hermite

TOL = 1e-12
PROPS = settings(max_examples=30, deadline=None)
RHOS = np.array([-1.0, -0.999999, -0.99, -0.7, -0.5, -0.1, 0.0, 0.2, 0.5, 0.9, 0.999, 0.999999, 1.0])
QPAIRS = [(1.0, 1.0), (0.3, 2.5), (4.0, 0.25), (1e-3, 10.0)]


def _arccos_relu(rho, q1, q2):
    """E relu(u) relu(v) = sqrt(q1 q2)/(2 pi) (sqrt(1 - rho^2) + (pi - arccos rho) rho)."""
    return np.sqrt(q1 * q2) / (2 * np.pi) * (np.sqrt(1 - rho**2) + (np.pi - np.arccos(rho)) * rho)


def _arccos_step(rho, q1=None, q2=None):
    """E 1{u>0} 1{v>0} = (pi - arccos rho)/(2 pi)."""
    return (np.pi - np.arccos(rho)) / (2 * np.pi)


def _leaky(a):
    # f = relu(x) - a relu(-x): E f(u) f(v) = (1 + a^2) K(rho) - 2 a K(-rho)
    return lambda rho, q1, q2: (1 + a * a) * _arccos_relu(rho, q1, q2) - 2 * a * _arccos_relu(-rho, q1, q2)


CLOSED = {
    "relu": ({}, _arccos_relu),
    "leaky_relu": ({}, _leaky(0.01)),
    "leaky_relu(0.2)": ({"negative_slope": 0.2}, _leaky(0.2)),
    "leaky_relu(-0.5)": ({"negative_slope": -0.5}, _leaky(-0.5)),
    "abs": ({}, _leaky(-1.0)),
    "identity": ({}, lambda rho, q1, q2: rho * np.sqrt(q1 * q2)),
    "step": ({}, lambda rho, q1, q2: _arccos_step(rho) + 0 * q1 * q2),
    "sign": ({}, lambda rho, q1, q2: 2 / np.pi * np.arcsin(rho) + 0 * q1 * q2),
    "erf": ({}, lambda rho, q1, q2: 2 / np.pi * np.arcsin(2 * rho * np.sqrt(q1 * q2)
                                                         / np.sqrt((1 + 2 * q1) * (1 + 2 * q2)))),
    "exp": ({}, lambda rho, q1, q2: np.exp(0.5 * (q1 + q2) + rho * np.sqrt(q1 * q2))),
    "sin": ({}, lambda rho, q1, q2: np.exp(-0.5 * (q1 + q2)) * np.sinh(rho * np.sqrt(q1 * q2))),
    "cos": ({}, lambda rho, q1, q2: np.exp(-0.5 * (q1 + q2)) * np.cosh(rho * np.sqrt(q1 * q2))),
    "gaussian": ({}, lambda rho, q1, q2: 1 / np.sqrt((1 + q1) * (1 + q2) - rho**2 * q1 * q2)),
    # Isserlis: E u^2 v^2 = q1 q2 (1 + 2 rho^2), E u^3 v^3 = (q1 q2)^(3/2) (9 rho + 6 rho^3)
    "monomial(2)": ({"k": 2}, lambda rho, q1, q2: q1 * q2 * (1 + 2 * rho**2)),
    "monomial(3)": ({"k": 3}, lambda rho, q1, q2: (q1 * q2) ** 1.5 * (9 * rho + 6 * rho**3)),
    "hermite(2)": ({"k": 2}, lambda rho, q1, q2: q1 * q2 * (1 + 2 * rho**2) - q1 - q2 + 1),
}


def make(key: str, table) -> hermite.Activation:
    return hermite.activation(key.split("(")[0], **table[key][0])


def _scale(closed, q1, q2):
    """sqrt(E f(u)^2 E f(v)^2) from the closed form at rho = 1."""
    return math.sqrt(float(closed(1.0, q1, q1)) * float(closed(1.0, q2, q2)))


def kern(act, rho, q1=1.0, q2=None, **kw):
    return np.asarray(hermite.kernel(act, rho, q1, q2, **kw), dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# closed forms
@pytest.mark.parametrize("key", sorted(CLOSED))
@pytest.mark.parametrize("q1,q2", QPAIRS)
def test_closed_form_kernels(key, q1, q2):
    params, closed = CLOSED[key]
    if key == "exp" and max(q1, q2) > 5:
        q1, q2 = min(q1, 3.0), min(q2, 3.0)
    act = make(key, CLOSED)
    got = kern(act, RHOS, q1, q2)
    assert got.shape == RHOS.shape
    expected = closed(RHOS, q1, q2)
    err = np.max(np.abs(got - expected))
    assert err <= TOL * _scale(closed, q1, q2), (err, RHOS[np.argmax(np.abs(got - expected))])


@pytest.mark.parametrize("key", sorted(CLOSED))
def test_closed_form_kernels_scalar_ends(key):
    """rho exactly +-1 as Python floats (a common source of sqrt(1 - rho^2) = nan or arccos domain errors)."""
    params, closed = CLOSED[key]
    act = make(key, CLOSED)
    for rho in (1.0, -1.0, 0.0):
        got = float(kern(act, rho, 0.7, 1.9))
        assert math.isfinite(got)
        assert abs(got - float(closed(rho, 0.7, 1.9))) <= TOL * _scale(closed, 0.7, 1.9)


def test_relu_kernel_known_values():
    """Spot values: E relu(u)^2 = q/2; at rho = 0, E relu(u) relu(v) = (E relu(u))^2 = q/(2 pi); at rho = -1, 0."""
    assert abs(float(kern("relu", 1.0, 2.0)) - 1.0) <= 1e-15
    assert abs(float(kern("relu", 0.0, 2.0)) - 1 / math.pi) <= 1e-15
    assert abs(float(kern("relu", -1.0, 2.0))) <= 1e-15
    assert abs(float(kern("step", 0.0)) - 0.25) <= 1e-15
    assert abs(float(kern("sign", -1.0)) + 1.0) <= 1e-15


# ------------------------------------------------------------------------------------------------
# independent 2-D quadrature
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _expit(x):
    return special.expit(x)


# name -> (params, numpy f, kinks); every built-in (default parameters) and a few parameterized ones
NUMPY_REF = {
    "identity": ({}, lambda x: x, ()),
    "relu": ({}, lambda x: np.maximum(x, 0.0), (0.0,)),
    "leaky_relu": ({}, lambda x: np.where(x > 0, x, 0.01 * x), (0.0,)),
    "abs": ({}, np.abs, (0.0,)),
    "step": ({}, lambda x: (x > 0).astype(float), (0.0,)),
    "sign": ({}, np.sign, (0.0,)),
    "hardtanh": ({}, lambda x: np.clip(x, -1.0, 1.0), (-1.0, 1.0)),
    "relu6": ({}, lambda x: np.clip(x, 0.0, 6.0), (0.0, 6.0)),
    "tanh": ({}, np.tanh, ()),
    "sigmoid": ({}, _expit, ()),
    "erf": ({}, special.erf, ()),
    "gelu": ({}, lambda x: 0.5 * x * special.erfc(-x / math.sqrt(2.0)), ()),
    "gelu_tanh": ({}, lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))), ()),
    "silu": ({}, lambda x: x * _expit(x), ()),
    "mish": ({}, lambda x: x * np.tanh(np.logaddexp(0.0, x)), ()),
    "elu": ({}, lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))), (0.0,)),
    "selu": ({}, lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0.0))), (0.0,)),
    "softplus": ({}, lambda x: np.logaddexp(0.0, x), ()),
    "sin": ({}, np.sin, ()),
    "cos": ({}, np.cos, ()),
    "exp": ({}, np.exp, ()),
    "gaussian": ({}, lambda x: np.exp(-0.5 * x * x), ()),
    "monomial": ({}, lambda x: x, ()),
    "hermite": ({}, lambda x: x, ()),
    "hermite(3)": ({"k": 3}, lambda x: x**3 - 3 * x, ()),
    "elu(0.5)": ({"alpha": 0.5}, lambda x: np.where(x > 0, x, 0.5 * np.expm1(np.minimum(x, 0.0))), (0.0,)),
    "softplus(4)": ({"beta": 4.0}, lambda x: np.logaddexp(0.0, 4.0 * x) / 4.0, ()),
    "hardtanh(-0.5,2)": ({"min_val": -0.5, "max_val": 2.0}, lambda x: np.clip(x, -0.5, 2.0), (-0.5, 2.0)),
}

# derivatives (between the kinks) for derivative=1 references
NUMPY_DERIV = {
    "tanh": (lambda x: 1.0 / np.cosh(x) ** 2, ()),
    "gelu": (lambda x: special.ndtr(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi), ()),
    "silu": (lambda x: _expit(x) * (1 + x * _expit(-x)), ()),
    "elu": (lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0))), (0.0,)),
    "softplus": (_expit, ()),
    "hardtanh": (lambda x: ((x > -1) & (x < 1)).astype(float), (-1.0, 1.0)),
    "gaussian": (lambda x: -x * np.exp(-0.5 * x * x), ()),
}

ZMAX = 13.0  # phi(13) ~ 1e-37
_GLX, _GLW = np.polynomial.legendre.leggauss(16)


def _composite(breaks):
    a, b = breaks[:-1, None], breaks[1:, None]
    half = 0.5 * (b - a)
    return (0.5 * (a + b) + half * _GLX).ravel(), (half * _GLW).ravel()


def _inner(g, kinks, a, b):
    """E_y g(a + b y), y ~ N(0, 1), b > 0: composite 16-point Gauss-Legendre, split where a + b y hits a kink
    (and graded towards g's unit scale around 0, so large b is resolved)."""
    pts = [np.arange(-ZMAX, ZMAX + 1e-9, 0.25)]
    for t in tuple(kinks) + (0.0,):
        y0 = (t - a) / b
        pts.append([y0])
        h = 1.0 / b
        while h < 0.25:
            pts.append([y0 - h, y0 + h])
            h *= 2
    br = np.unique(np.concatenate([np.asarray(p, dtype=float) for p in pts]))
    br = br[(br >= -ZMAX) & (br <= ZMAX)]
    y, w = _composite(br)
    return float(np.sum(w * np.exp(-0.5 * y * y) * g(a + b * y))) / math.sqrt(2 * math.pi)


def _outer(h, points):
    pts = sorted({-ZMAX, ZMAX, *(p for p in points if -ZMAX < p < ZMAX)} | set(np.arange(-ZMAX, ZMAX, 0.5).tolist()))
    total = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        for a, b in zip(pts[:-1], pts[1:]):
            total += integrate.quad(h, a, b, epsabs=1e-16, epsrel=1e-13, limit=200)[0]
    return total


def ref_kernel(f, kinks, rho, q1, q2, g=None, gkinks=None):
    """E[f(u) g(v)] (g = f by default) by 1-D (|rho| = 1) or nested 2-D quadrature."""
    g = f if g is None else g
    gkinks = kinks if gkinks is None else gkinks
    s1, s2 = math.sqrt(q1), math.sqrt(q2)
    pdf = lambda x: math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    fx = lambda x: float(f(np.array([s1 * x]))[0])
    pts = [t / s1 for t in kinks]
    if abs(rho) == 1.0:
        pts += [t / (rho * s2) for t in gkinks]
        return _outer(lambda x: pdf(x) * fx(x) * float(g(np.array([rho * s2 * x]))[0]), pts)
    s = math.sqrt(1 - rho * rho)
    if rho != 0:  # shadows of g's kinks, where G(x) varies on the scale s
        for t in tuple(gkinks) + (0.0,):
            x0 = t / (rho * s2)
            pts.append(x0)
            h = s / abs(rho)
            while h < 0.5:
                pts += [x0 - h, x0 + h]
                h *= 2
    return _outer(lambda x: pdf(x) * fx(x) * _inner(g, gkinks, rho * s2 * x, s * s2), pts)


def ref_second_moment(f, kinks, q):
    return ref_kernel(f, kinks, 1.0, q, q)


def test_reference_2d_quadrature_is_sound():
    f, kinks = NUMPY_REF["relu"][1:]
    for rho in (-1.0, -0.6, 0.0, 0.3, 0.999, 1.0):
        assert abs(ref_kernel(f, kinks, rho, 0.5, 2.0) - _arccos_relu(rho, 0.5, 2.0)) < 1e-14
    f, kinks = NUMPY_REF["sign"][1:]
    assert abs(ref_kernel(f, kinks, 0.999, 1.0, 3.0) - 2 / math.pi * math.asin(0.999)) < 1e-14
    f = NUMPY_REF["erf"][1]
    expected = CLOSED["erf"][1](0.7, 0.4, 3.0)
    assert abs(ref_kernel(f, (), 0.7, 0.4, 3.0) - expected) < 1e-14


# ------------------------------------------------------------------------------------------------
# Mehler's identity against 2-D quadrature
MEHLER_RHOS = [-0.9, -0.5, 0.0, 0.3, 0.9]


@pytest.mark.parametrize("key", ["tanh", "gelu", "silu"])
@pytest.mark.parametrize("q1,q2", [(1.0, 1.0), (0.5, 2.0)])
def test_mehler_identity(key, q1, q2):
    """E f(u) f(v) = sum_k c_k(q1) c_k(q2) rho^k: the series from our coefficients, the library kernel and an
    independent 2-D quadrature agree."""
    params, f, kinks = NUMPY_REF[key]
    K = 200
    c1 = hermite.coefficients(key, K, q1)
    c2 = hermite.coefficients(key, K, q2)
    scale = math.sqrt(ref_second_moment(f, kinks, q1) * ref_second_moment(f, kinks, q2))
    k = np.arange(K + 1)
    for rho in MEHLER_RHOS:
        series = float(np.sum(c1 * c2 * rho**k))
        # the truncation error is bounded by |rho|^(K+1) sqrt(T_K(q1) T_K(q2)) (Cauchy-Schwarz)
        bound = abs(rho) ** (K + 1) * math.sqrt(hermite.tail_mass(key, K, q1) * hermite.tail_mass(key, K, q2))
        assert bound <= 1e-14 * scale
        ref = ref_kernel(f, kinks, rho, q1, q2)
        assert abs(series - ref) <= TOL * scale, (rho, series - ref)
        assert abs(float(kern(key, rho, q1, q2)) - ref) <= TOL * scale, rho


def test_mehler_identity_relu_converges_slowly_at_one():
    """At rho = 1 the ReLU series converges only like K^(-3/2): the kernel must not be a truncated series."""
    c = hermite.coefficients("relu", 200)
    assert 0.5 - np.sum(c**2) > 1e-5  # a 200-term series is off by > 1e-5 ...
    assert abs(float(kern("relu", 1.0)) - 0.5) <= 1e-15  # ... the kernel is exact


# ------------------------------------------------------------------------------------------------
# derivative kernels: E f'(u) f'(v)
@pytest.mark.parametrize("q1,q2", QPAIRS)
def test_derivative_relu_is_step_kernel(q1, q2):
    got = kern("relu", RHOS, q1, q2, derivative=1)
    assert np.max(np.abs(got - _arccos_step(RHOS))) <= TOL * 0.5


@pytest.mark.parametrize("q1,q2", QPAIRS)
def test_derivative_closed_forms(q1, q2):
    # erf' = 2/sqrt(pi) exp(-x^2):  E = (4/pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 rho^2 q1 q2)
    erf_d = 4 / np.pi / np.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * RHOS**2 * q1 * q2)
    scale = 4 / np.pi / math.sqrt(math.sqrt((1 + 4 * q1) * (1 + 4 * q2)))
    assert np.max(np.abs(kern("erf", RHOS, q1, q2, derivative=1) - erf_d)) <= TOL * scale
    # leaky_relu(a)' = a + (1 - a) 1{x > 0}:  E = a^2 + a (1 - a) + (1 - a)^2 S(rho)
    a = 0.2
    leaky_d = a * a + a * (1 - a) + (1 - a) ** 2 * _arccos_step(RHOS)
    got = kern(hermite.activation("leaky_relu", negative_slope=a), RHOS, q1, q2, derivative=1)
    assert np.max(np.abs(got - leaky_d)) <= TOL
    # identity' = 1; sin' = cos; exp' = exp
    assert np.max(np.abs(kern("identity", RHOS, q1, q2, derivative=1) - 1.0)) <= TOL
    cos_k = CLOSED["cos"][1]
    assert np.max(np.abs(kern("sin", RHOS, q1, q2, derivative=1) - cos_k(RHOS, q1, q2))) <= TOL
    if max(q1, q2) <= 5:
        exp_k = CLOSED["exp"][1]
        got = kern("exp", RHOS, q1, q2, derivative=1)
        assert np.max(np.abs(got - exp_k(RHOS, q1, q2))) <= TOL * _scale(exp_k, q1, q2)


@pytest.mark.parametrize("key", sorted(NUMPY_DERIV))
@pytest.mark.parametrize("q1,q2", [(1.0, 1.0), (0.5, 2.0)])
def test_derivative_against_quadrature(key, q1, q2):
    fp, kinks = NUMPY_DERIV[key]
    scale = math.sqrt(ref_second_moment(fp, kinks, q1) * ref_second_moment(fp, kinks, q2))
    rhos = (-1.0, -0.5, 0.0, 0.7, 0.999, 1.0) if key == "tanh" else (-1.0, 0.3, 1.0)
    for rho in rhos:
        ref = ref_kernel(fp, kinks, rho, q1, q2)
        got = float(kern(key, rho, q1, q2, derivative=1))
        assert abs(got - ref) <= TOL * scale, (rho, got - ref)


@pytest.mark.parametrize("q1,q2", [(1.0, 1.0), (0.3, 2.5)])
def test_derivative_of_jumps_is_delta_kernel(q1, q2):
    """step' = delta (distributional): E delta(u) delta(v) = p(0, 0) = 1/(2 pi sqrt(q1 q2 (1 - rho^2)));
    sign' = 2 delta gives 4 p(0, 0). Checked for |rho| < 1 (the kernel is infinite at |rho| = 1)."""
    rho = RHOS[np.abs(RHOS) < 1]
    p00 = 1 / (2 * np.pi * np.sqrt(q1 * q2 * (1 - rho**2)))
    np.testing.assert_allclose(kern("step", rho, q1, q2, derivative=1), p00, rtol=1e-12, atol=0)
    np.testing.assert_allclose(kern("sign", rho, q1, q2, derivative=1), 4 * p00, rtol=1e-12, atol=0)


def test_derivative_at_one_is_mean_square_slope():
    """E f'(u)^2 at rho = 1: tanh (1-D quadrature) and relu (1/2)."""
    fp, _ = NUMPY_DERIV["tanh"]
    for q in (0.25, 1.0, 4.0):
        ref = ref_second_moment(fp, (), q)
        assert abs(float(kern("tanh", 1.0, q, derivative=1)) - ref) <= TOL * ref
    assert abs(float(kern("relu", 1.0, 3.0, derivative=1)) - 0.5) <= 1e-15


# ------------------------------------------------------------------------------------------------
# centered kernels
@pytest.mark.parametrize("q1,q2", [(1.0, 1.0), (0.3, 2.5)])
def test_centered(q1, q2):
    # relu: E relu(u) = sqrt(q / (2 pi))
    got = kern("relu", RHOS, q1, q2, centered=True)
    expected = _arccos_relu(RHOS, q1, q2) - math.sqrt(q1 * q2) / (2 * math.pi)
    assert np.max(np.abs(got - expected)) <= TOL * math.sqrt(q1 * q2) / 2
    # step: E 1{u > 0} = 1/2
    assert np.max(np.abs(kern("step", RHOS, q1, q2, centered=True) - (_arccos_step(RHOS) - 0.25))) <= TOL
    # gelu: E u Phi(u) = q E phi(u) = q / sqrt(2 pi (1 + q))  (Stein's lemma)
    m1, m2 = (q / math.sqrt(2 * math.pi * (1 + q)) for q in (q1, q2))
    params, f, kinks = NUMPY_REF["gelu"]
    scale = math.sqrt(ref_second_moment(f, kinks, q1) * ref_second_moment(f, kinks, q2))
    for rho in (-1.0, 0.0, 0.6, 1.0):
        ref = ref_kernel(f, kinks, rho, q1, q2) - m1 * m2
        assert abs(float(kern("gelu", rho, q1, q2, centered=True)) - ref) <= TOL * scale
    # exp: E exp(u) = exp(q/2)
    got = kern("exp", RHOS, q1, q2, centered=True)
    expected = np.exp(0.5 * (q1 + q2)) * np.expm1(RHOS * math.sqrt(q1 * q2))
    assert np.max(np.abs(got - expected)) <= TOL * math.exp(q1 + q2)
    # odd activations have mean zero: centering changes nothing
    for name in ("tanh", "erf", "sign", "sin"):
        np.testing.assert_allclose(kern(name, RHOS, q1, q2, centered=True), kern(name, RHOS, q1, q2),
                                   rtol=0, atol=1e-15)


def test_centered_at_zero_correlation_vanishes():
    """u and v independent at rho = 0: the covariance is 0 for every activation."""
    for name in ("relu", "gelu", "softplus", "elu", "sigmoid", "step", "abs", "cos", "hardtanh", "relu6"):
        m = hermite.second_moment(name, 1.0)
        assert abs(float(kern(name, 0.0, 1.0, 2.0, centered=True))) <= TOL * max(m, 1.0), name


# ------------------------------------------------------------------------------------------------
# shapes, symmetry, diagonal
@pytest.mark.parametrize("name", ["relu", "tanh", "gelu", "erf"])
def test_broadcasting(name):
    rho = np.array([-1.0, 0.2, 1.0]).reshape(3, 1, 1)
    q1 = np.array([0.5, 1.0, 2.0, 4.0]).reshape(1, 4, 1)
    q2 = np.array([0.25, 0.5, 1.0, 3.0, 9.0]).reshape(1, 1, 5)
    out = kern(name, rho, q1, q2)
    assert out.shape == (3, 4, 5)
    for i, j, k in [(0, 0, 0), (1, 2, 3), (2, 3, 4), (1, 0, 4)]:
        single = float(kern(name, float(rho[i, 0, 0]), float(q1[0, j, 0]), float(q2[0, 0, k])))
        assert abs(out[i, j, k] - single) <= 1e-15 * max(1.0, abs(single))
    assert kern(name, 0.3).shape == ()
    assert kern(name, [0.1, 0.2]).shape == (2,)
    assert kern(name, 0.3, np.ones((2, 3))).shape == (2, 3)
    assert kern(name, np.zeros((4, 1)), 1.0, np.ones(5)).shape == (4, 5)
    assert kern(name, 0.3, derivative=1).shape == ()


def test_gram_matrix_use():
    """The kernel of a correlation matrix (entrywise) is symmetric and PSD (it is a Gram matrix)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 4))
    K = X @ X.T / 4
    d = np.sqrt(np.diag(K))
    R = np.clip(K / np.outer(d, d), -1.0, 1.0)
    np.fill_diagonal(R, 1.0)
    Q = np.diag(K)
    for name in ("relu", "tanh", "gelu", "step"):
        G = kern(name, R, Q[:, None], Q[None, :])
        assert G.shape == (6, 6)
        np.testing.assert_allclose(G, G.T, rtol=0, atol=1e-15)
        assert np.linalg.eigvalsh(G).min() > -1e-12
        np.testing.assert_allclose(np.diag(G), hermite.second_moment(name, Q), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["relu", "gelu", "elu", "softplus", "sigmoid", "relu6", "step", "silu", "exp"])
def test_symmetric_in_variances(name):
    rhos = np.array([-1.0, -0.3, 0.5, 0.999, 1.0])
    for q1, q2 in [(0.3, 2.5), (0.05, 1.0)]:
        a = kern(name, rhos, q1, q2)
        b = kern(name, rhos, q2, q1)
        scale = math.sqrt(hermite.second_moment(name, q1) * hermite.second_moment(name, q2))
        assert np.max(np.abs(a - b)) <= 1e-14 * scale


def test_default_q2_is_q1():
    for name in ("relu", "tanh", "gelu"):
        np.testing.assert_array_equal(kern(name, RHOS, 2.0), kern(name, RHOS, 2.0, 2.0))
        np.testing.assert_array_equal(kern(name, RHOS), kern(name, RHOS, 1.0, 1.0))


ALL_KEYS = sorted(NUMPY_REF)
DEFAULT_KEYS = [k for k in ALL_KEYS if "(" not in k]  # built-ins at their default parameters
PARAM_KEYS = [k for k in ALL_KEYS if "(" in k]


@pytest.mark.parametrize("key", ALL_KEYS)
def test_diagonal_is_second_moment(key):
    act = make(key, NUMPY_REF)
    for q in (0.3, 1.0, 3.0):
        m = hermite.second_moment(act, q)
        assert abs(float(kern(act, 1.0, q, q)) - m) <= TOL * m


# ------------------------------------------------------------------------------------------------
# every built-in against the 2-D quadrature
ALL_RHOS = (-1.0, -0.5, 0.0, 0.7, 0.999, 1.0)


def _check_builtin(key, q1, q2):
    params, f, kinks = NUMPY_REF[key]
    act = make(key, NUMPY_REF)
    scale = math.sqrt(ref_second_moment(f, kinks, q1) * ref_second_moment(f, kinks, q2))
    got = kern(act, np.array(ALL_RHOS), q1, q2)
    errs = [abs(got[i] - ref_kernel(f, kinks, rho, q1, q2)) / scale for i, rho in enumerate(ALL_RHOS)]
    worst = int(np.argmax(errs))
    assert errs[worst] <= TOL, f"{key} rho={ALL_RHOS[worst]} q=({q1}, {q2}): off by {errs[worst]:.2e} scale"


@pytest.mark.parametrize("key", DEFAULT_KEYS)
def test_builtin_against_quadrature(key):
    _check_builtin(key, 1.0, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("key", PARAM_KEYS)
def test_parameterized_builtin_against_quadrature(key):
    _check_builtin(key, 1.0, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("key", ALL_KEYS)
def test_builtin_against_quadrature_unequal_variances(key):
    _check_builtin(key, 0.5, 2.0)


def test_user_callable_kernel():
    """A user callable with declared kinks: E f(u) f(v) against 2-D quadrature."""
    f = lambda x: np.maximum(x, 0) - 0.5 * np.maximum(x - 1, 0)
    act = hermite.activation(f, kinks=[0, 1])
    scale = math.sqrt(ref_second_moment(f, (0.0, 1.0), 0.8) * ref_second_moment(f, (0.0, 1.0), 1.7))
    for rho in (-1.0, 0.4, 0.999, 1.0):
        ref = ref_kernel(f, (0.0, 1.0), rho, 0.8, 1.7)
        assert abs(float(kern(act, rho, 0.8, 1.7)) - ref) <= TOL * scale, rho


@pytest.mark.parametrize("q1,q2", [(1.0, 1.0), (0.3, 2.5)])
def test_gain_and_transform_kernels(q1, q2):
    """relu(2x) = 2 relu(x): kernel x4. Vatanen's T = gamma (relu(x) - x/2 - beta), beta = 1/sqrt(2 pi),
    gamma^-2 = 1/2 - 1/4 - 1/(2 pi) (taken at q = 1): with E[relu(u) v] = rho sqrt(q1 q2)/2 and
    E relu(u) = sqrt(q/(2 pi)),
    E T(u) T(v) = gamma^2 [K(rho) - rho sqrt(q1 q2)/4 - beta (sqrt(q1/2pi) + sqrt(q2/2pi)) + beta^2]."""
    doubled = kern(hermite.activation("relu", gain=2.0), RHOS, q1, q2)
    np.testing.assert_allclose(doubled, 4 * _arccos_relu(RHOS, q1, q2), rtol=0, atol=4 * TOL * math.sqrt(q1 * q2))
    beta = 1 / math.sqrt(2 * math.pi)
    gamma2 = 1 / (0.25 - 1 / (2 * math.pi))
    expected = gamma2 * (_arccos_relu(RHOS, q1, q2) - RHOS * math.sqrt(q1 * q2) / 4
                         - beta * (math.sqrt(q1 / (2 * math.pi)) + math.sqrt(q2 / (2 * math.pi))) + beta**2)
    got = kern(hermite.transform("relu"), RHOS, q1, q2)
    assert np.max(np.abs(got - expected)) <= 10 * TOL * gamma2 * max(q1, q2)


@pytest.mark.parametrize("name", ["sin", "cos"])
def test_sin_cos_kernels_large_variance(name):
    """E sin(u)^2 = (1 - exp(-2q))/2 and E cos(u)^2 = (1 + exp(-2q))/2 are 1/2 at q = 1e4 (inside the
    variance range [1e-4, 1e4] of issue 2)."""
    for q in (800.0, 1e4):
        expected = np.array([0.5, 0.5 * math.exp(-q * 0.5)])  # rho = 1 and rho = 0.5 (q1 = q2 = q)
        got = kern(name, np.array([1.0, 0.5]), q)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# property tests
log_q = st.floats(min_value=-3.0, max_value=3.0).map(lambda e: 10.0**e)
corr = st.one_of(st.floats(min_value=-1.0, max_value=1.0), st.sampled_from([-1.0, 1.0, 0.0]))


@PROPS
@given(rho=corr, q1=log_q, q2=log_q)
def test_property_arc_cosine_and_erf(rho, q1, q2):
    for key in ("relu", "step", "sign", "abs", "erf"):
        closed = CLOSED[key][1]
        got = float(kern(key, rho, q1, q2))
        assert abs(got - float(closed(rho, q1, q2))) <= TOL * _scale(closed, q1, q2), key


@PROPS
@given(rho=corr, q1=log_q, q2=log_q, name=st.sampled_from(["tanh", "gelu", "silu", "elu", "softplus", "relu6"]))
def test_property_cauchy_schwarz_and_monotone(rho, q1, q2, name):
    """|E f(u) f(v)| <= sqrt(E f(u)^2 E f(v)^2); for q1 = q2 the kernel is nondecreasing in rho >= 0
    (Mehler: it is sum_k c_k(q)^2 rho^k, a power series with nonnegative coefficients)."""
    m1, m2 = hermite.second_moment(name, q1), hermite.second_moment(name, q2)
    k = float(kern(name, rho, q1, q2))
    assert abs(k) <= math.sqrt(m1 * m2) * (1 + 1e-12)
    if 0.0 <= rho < 1.0:
        lo, hi = kern(name, np.array([rho, min(1.0, rho + 0.01)]), q1, q1)
        assert hi >= lo - 1e-13 * m1


# ------------------------------------------------------------------------------------------------
# bad inputs
@pytest.mark.parametrize("rho", [1.5, -1.0001, 2.0, float("nan"), [0.5, 1.2]])
def test_bad_rho(rho):
    with pytest.raises(ValueError, match="rho"):
        hermite.kernel("relu", rho)


@pytest.mark.parametrize("q", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_variances(q):
    with pytest.raises(ValueError, match="q1"):
        hermite.kernel("relu", 0.5, q)
    with pytest.raises(ValueError, match="q2"):
        hermite.kernel("relu", 0.5, 1.0, q)


@pytest.mark.parametrize("derivative", [2, -1, 0.5, "1"])
def test_bad_derivative(derivative):
    with pytest.raises(ValueError, match="derivative"):
        hermite.kernel("tanh", 0.5, derivative=derivative)


def test_bad_activation():
    with pytest.raises(ValueError, match="activation"):
        hermite.kernel("foo", 0.5)
    with pytest.raises(ValueError, match="activation"):
        hermite.kernel(3, 0.5)


@pytest.mark.parametrize("name", ["tanh", "elu", "gelu_tanh"])
def test_many_distinct_variances_match_small_batches(name):
    """With thousands of distinct variances the engines interpolate c_k in log q (verified against direct
    checks); every value must still agree with small-batch evaluation (direct coefficients) to 1e-12."""
    rng = np.random.default_rng(11)
    M = 3000
    rho = rng.uniform(-1, 1, M)
    rho[:5] = [1.0, -1.0, 0.9999, -0.99, 0.0]
    q1 = np.exp(rng.uniform(np.log(0.25), np.log(4), M))
    q2 = np.exp(rng.uniform(np.log(0.25), np.log(4), M))
    big = hermite.kernel(name, rho, q1, q2)
    idx = np.r_[0:5, rng.choice(M, 25, replace=False)]
    small = np.array([hermite.kernel(name, rho[i], q1[i], q2[i]) for i in idx])
    scale = np.sqrt(hermite.second_moment(name, q1[idx]) * hermite.second_moment(name, q2[idx]))
    assert np.max(np.abs(big[idx] - small) / scale) < 1e-12


# ------------------------------------------------------------------------------------------------
# extreme variances: piecewise-linear activations whose linear piece is a vanishing sliver of the Gaussian
# (hardtanh at q = 1e10 is linear on [-1e-5, 1e-5] in z), against mpmath at a precision growing with log q
_MP_PIECES = {  # (lo, hi, a, b): f = a + b x on [lo, hi]
    ("hardtanh", 0): [(-math.inf, -1, -1, 0), (-1, 1, 0, 1), (1, math.inf, 1, 0)],
    ("relu6", 0): [(-math.inf, 0, 0, 0), (0, 6, 0, 1), (6, math.inf, 6, 0)],
    ("hardtanh", 1): [(-1, 1, 1, 0)],
    ("relu6", 1): [(0, 6, 1, 0)],
}


def _mp_kernel(pieces, rho: float, q: float):
    """E f(u) f(v) at Var = q, corr rho: an mpmath integral over z1 of phi(z1) f(sqrt(q) z1) times the closed
    Gaussian average of the piecewise-linear f at mean sqrt(q) rho z1 and deviation sqrt(q (1 - rho^2))."""
    import mpmath as mp

    with mp.workdps(int(30 + 1.5 * math.log10(q))):
        inf = mp.inf
        rho, rq = mp.mpf(rho), mp.sqrt(mp.mpf(q))
        s = mp.sqrt((1 - rho) * (1 + rho))

        def f(x):
            return next((a + b * x for lo, hi, a, b in pieces if lo <= x <= hi), mp.mpf(0))

        def smooth(m, sig):  # E f(m + sig z)
            if sig == 0:
                return f(m)
            tot = mp.mpf(0)
            for lo, hi, a, b in pieces:
                al = -inf if lo == -math.inf else (lo - m) / sig
                be = inf if hi == math.inf else (hi - m) / sig
                tot += (a + b * m) * (mp.ncdf(be) - mp.ncdf(al))
                tot += b * sig * ((0 if al == -inf else mp.npdf(al)) - (0 if be == inf else mp.npdf(be)))
            return tot

        kinks = sorted({t for lo, hi, _, _ in pieces for t in (lo, hi) if abs(t) != math.inf})
        pts = {t / rq for t in kinks}
        for t in kinks if rho != 0 else ():  # the inner average turns on a scale s / |rho| near t / (sqrt(q) rho)
            pts.update(t / (rq * rho) + k * s / abs(rho) for k in (-30, -10, -3, -1, 0, 1, 3, 10, 30))
        grid = [-inf] + sorted(p for p in pts if abs(p) < 40) + [inf]
        val = mp.quad(lambda z: mp.npdf(z) * f(rq * z) * smooth(rq * rho * z, rq * s), grid)
        return float(val)


@pytest.mark.parametrize("name,derivative", list(_MP_PIECES))
@pytest.mark.parametrize("q", [1e10, 1e40])
def test_piecewise_linear_at_extreme_variance_against_mpmath(name, derivative, q):
    """The Mehler series with closed coefficients (hardtanh/relu6 erred 2e-12 at q = 1e10 and O(1) at 1e40:
    the slope moments cancelled on the narrow piece) and the quadrature near |rho| = 1 (hardtanh' erred 4e-11
    at q = 1e6-1e10: 1 - rho^2 cancelled) at every path: one entry (closed form first) and a shared
    variance (series first)."""
    pieces = _MP_PIECES[(name, derivative)]
    rhos = [0.0, 0.3] if derivative == 0 else [-1.0 + 1e-9, 1.0 - 1e-8]
    scale = _mp_kernel(pieces, 1.0, q)
    want = np.array([_mp_kernel(pieces, r, q) for r in rhos])
    shared = kern(name, np.repeat(rhos, 8), q, derivative=derivative)[::8]
    single = np.array([kern(name, r, q, derivative=derivative) for r in rhos])
    assert np.max(np.abs(shared - want)) < TOL * scale
    assert np.max(np.abs(single - want)) < TOL * scale


@pytest.mark.parametrize("name", ["tanh", "silu", "elu", "softplus", "hardtanh"])
def test_unit_correlation_at_one_variance_is_the_second_moment(name):
    """E[f(u) f(v)] at rho = 1 and q1 = q2 (a Gram's diagonal) is E f(u)^2 exactly, and E f'(u)^2 for the
    derivative kernel, also amid other entries."""
    q = np.array([0.3, 1.0, 7.5, 40.0])
    r = np.array([1.0, 1.0, 1.0, 1.0, 0.2, -0.9999])
    Q = np.concatenate([q, [1.0, 2.0]])
    np.testing.assert_array_equal(hermite.kernel(name, r, Q, Q)[:4], hermite.second_moment(name, q))
    act = hermite.activation(name)
    np.testing.assert_array_equal(act.kernel_at(r, Q, Q, 1)[:4], act.core.derivative_moment(q))


@pytest.mark.parametrize("name", ["relu", "tanh", "elu"])
def test_kernel_at_accepts_scalars_and_any_shape(name):
    """`Activation.kernel_at` broadcasts scalars, 0-d and n-d arrays (it raised IndexError on them) and returns the
    broadcast shape, with the values of the flat call; relu against the arc-cosine kernel written here."""
    act = hermite.activation(name)
    if name == "tanh":  # the affine path (gamma (phi(x) + alpha x + beta)) as well as the plain one
        act = replace(act, gamma=1.5, alpha=0.3, beta=0.2)
    r = np.array([[0.3, -0.5, 0.99], [1.0, 0.0, -1.0]])
    q1, q2 = 0.7, np.array([1.0, 2.0, 0.4])
    flat = act.kernel_at(r.ravel(), np.full(6, q1), np.tile(q2, 2))
    out = act.kernel_at(r, q1, q2)
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out.ravel(), flat)
    for d in (0, 1):
        s = act.kernel_at(0.3, 0.7, 2.0, d)
        assert np.shape(s) == ()
        assert float(s) == act.kernel_at(np.array([0.3]), np.array([0.7]), np.array([2.0]), d)[0]
        assert float(act.kernel_at(np.array(0.3), np.array(0.7), np.array(2.0), d)) == float(s)
    if name == "relu":
        np.testing.assert_allclose(out, _arccos_relu(r, q1, q2), rtol=0, atol=1e-14)


def test_kernel_at_names_shapes_that_do_not_broadcast():
    with pytest.raises(ValueError, match=r"r, q1 and q2 must broadcast together; got shapes \(3,\), \(2,\)"):
        hermite.activation("tanh").kernel_at(np.zeros(3), np.ones(2), 1.0)


def _closed_reference(name, r, a, b, derivative):
    """The textbook closed forms at 700 digits (enough for the cancellations between 1e-300 and 1e300)."""
    import mpmath as mp

    with mp.workdps(700):
        r, a, b = mp.mpf(r), mp.mpf(a), mp.mpf(b)
        c = r * mp.sqrt(a) * mp.sqrt(b)
        if name == "erf":
            if derivative == 0:
                return 2 / mp.pi * mp.asin(2 * c / mp.sqrt((1 + 2 * a) * (1 + 2 * b)))
            return 4 / mp.pi / mp.sqrt((1 + 2 * a) * (1 + 2 * b) - 4 * c * c)
        if name in ("sin", "cos"):
            odd = (name == "sin") == (derivative == 0)
            return mp.e ** (-(a + b) / 2) * (mp.sinh(c) if odd else mp.cosh(c))
        if name == "gaussian":
            D = (1 + a) * (1 + b) - c * c
            return 1 / mp.sqrt(D) if derivative == 0 else c / D**1.5
        ap, bp = 1 + a, 1 + b  # gelu
        D = ap * bp - c * c
        return (c / 4 + c * mp.asin(c / mp.sqrt(ap * bp)) / (2 * mp.pi)
                + (a * b + c * c * (1 - a * b) / (ap * bp)) / (2 * mp.pi * mp.sqrt(D)))


@pytest.mark.parametrize("name, derivative", [("erf", 0), ("erf", 1), ("sin", 0), ("sin", 1), ("cos", 0),
                                              ("gaussian", 0), ("gaussian", 1), ("gelu", 0)])
def test_closed_forms_at_every_scale(name, derivative):
    """The closed kernels to 1e-15 of sqrt(E f(u)^2 E f(v)^2) (derivative=1: of f') from q = 1e-300 to 1e300 (also
    mixed: 1e-300 against 1e300), near and at rho = +-1, without a RuntimeWarning (found in review: erf was 0 at
    q >= 1e154; gelu lost 3e-11 at q = 1e12 and was NaN at 1e16, and 0 at q < 1e-154; sin lost everything at
    q = 1e-17 and 4e-9 near rho = 1 at q = 1e8; the gaussian's derivative overflowed at 1e300)."""
    worst = 0.0
    pairs = [(q, q * ratio) for q in (1e-300, 1e-17, 1e-4, 1.0, 1e8, 1e16, 1e300) for ratio in (1.0, 1e-3)]
    pairs += [(1e-300, 1e300), (1e-20, 1e300), (0.3, 1e300)]  # (found in review: gelu was inf or NaN here)
    for a, b in pairs:
        for r in (0.3, -0.7, 0.999, 1 - 1e-15, 1.0, -1.0):
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                got = float(hermite.kernel(name, r, a, b, derivative=derivative))
            want = _closed_reference(name, r, a, b, derivative)
            scale = (_closed_reference(name, 1, a, a, derivative) * _closed_reference(name, 1, b, b, derivative)
                     ) ** 0.5
            worst = max(worst, float(abs(got - want) / scale))
    assert worst <= 1e-15


@pytest.mark.parametrize("name", ["silu", "elu", "selu", "mish", "gelu_tanh", "gelu", "softplus", "tanh", "sigmoid"])
def test_derivative_kernels_at_the_smallest_variances(name):
    """At q = 5e-324 (subnormal) the derivative kernels equal their values at q = 1e-300 (both are the q -> 0
    limit to far below 1e-15), without NaN or warnings (found in review: Stein's factor sqrt((k+1)/q) overflowed
    and silu's derivative kernel was NaN at q1 = 5e-324)."""
    r = np.array([-0.6, 0.3, 0.9, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for q2 in (5e-324, 1e-250, 1e-16):
            got = hermite.kernel(name, r, 5e-324, q2, derivative=1)
            want = hermite.kernel(name, r, 1e-300, q2, derivative=1)
            np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
