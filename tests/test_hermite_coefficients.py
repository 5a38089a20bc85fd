"""Hermite coefficients (`hermite.coefficients`, `exact_coefficients`, `second_moment`, `tail_mass`,
`transform`) against independent truths.

Convention (DESIGN.md): c_k(q) = E[f(sqrt(q) z) h_k(z)], z ~ N(0, 1), h_k = He_k / sqrt(k!).

The references below are written here, independently of hermite/: exact formulas (ReLU, exp, monomials,
He_k, a piecewise-linear callable), mpmath integrals for the smooth closed-form families, and, for the
built-ins without a closed form, scipy.integrate.quad (adaptive Gauss-Kronrod) on many short panels split
at the kinks, with the activations re-implemented with the `math` module. The accuracy target of issue 2
is an absolute error <= 1e-12 sqrt(E f^2) for K <= 200 and q in [1e-4, 1e4].
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import mpmath
import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special

import hermite

TOL = 1e-12
REPO = Path(__file__).resolve().parents[1]
PROPS = settings(max_examples=25, deadline=None)

# ------------------------------------------------------------------------------------------------
# independent scalar definitions of the built-ins (math module only), with their kinks
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _expit(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _he(k, x):
    """He_k(x) by the three-term recurrence (plain floats)."""
    a, b = 1.0, x
    if k == 0:
        return a
    for j in range(1, k):
        a, b = b, x * b - j * a
    return b


# name -> (params, scalar f, kinks)
REFERENCE = {
    "identity": ({}, lambda x: x, ()),
    "relu": ({}, lambda x: max(x, 0.0), (0.0,)),
    "leaky_relu": ({}, lambda x: x if x > 0 else 0.01 * x, (0.0,)),
    "leaky_relu(0.2)": ({"negative_slope": 0.2}, lambda x: x if x > 0 else 0.2 * x, (0.0,)),
    "abs": ({}, abs, (0.0,)),
    "step": ({}, lambda x: 1.0 if x > 0 else 0.0, (0.0,)),
    "sign": ({}, lambda x: math.copysign(1.0, x) if x != 0 else 0.0, (0.0,)),
    "hardtanh": ({}, lambda x: min(max(x, -1.0), 1.0), (-1.0, 1.0)),
    "relu6": ({}, lambda x: min(max(x, 0.0), 6.0), (0.0, 6.0)),
    "tanh": ({}, math.tanh, ()),
    "sigmoid": ({}, _expit, ()),
    "erf": ({}, math.erf, ()),
    "gelu": ({}, lambda x: 0.5 * x * math.erfc(-x / math.sqrt(2.0)), ()),
    "gelu_tanh": ({}, lambda x: 0.5 * x * (1.0 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))), ()),
    "silu": ({}, lambda x: x * _expit(x), ()),
    "mish": ({}, lambda x: x * math.tanh(_softplus(x)), ()),
    "elu": ({}, lambda x: x if x > 0 else math.expm1(x), (0.0,)),
    "elu(0.5)": ({"alpha": 0.5}, lambda x: x if x > 0 else 0.5 * math.expm1(x), (0.0,)),
    "selu": ({}, lambda x: SELU_SCALE * (x if x > 0 else SELU_ALPHA * math.expm1(x)), (0.0,)),
    "softplus": ({}, _softplus, ()),
    "softplus(3)": ({"beta": 3.0}, lambda x: _softplus(3.0 * x) / 3.0, ()),
    "sin": ({}, math.sin, ()),
    "cos": ({}, math.cos, ()),
    "exp": ({}, math.exp, ()),
    "gaussian": ({}, lambda x: math.exp(-0.5 * x * x), ()),
    "monomial": ({}, lambda x: x, ()),
    "monomial(3)": ({"k": 3}, lambda x: x**3, ()),
    "hermite": ({}, lambda x: x, ()),
    "hermite(4)": ({"k": 4}, lambda x: _he(4, x), ()),
}


def make(key: str) -> hermite.Activation:
    return hermite.activation(key.split("(")[0], **REFERENCE[key][0])


def test_reference_covers_every_builtin():
    assert {k.split("(")[0] for k in REFERENCE} == set(hermite.builtin_names())


# ------------------------------------------------------------------------------------------------
# quadrature reference: c_k = int f(sqrt(q) z) h_k(z) phi(z) dz by QUADPACK on short panels.
# |h_k(z) phi(z)| <= phi(z)^(1/2) for every k (Cramer's bound on Hermite functions), so the integrand is
# below |f(sqrt(q) z)| exp(-z^2/4) and [-16, 16] holds all but ~1e-28 of it.
ZMAX = 16.0


def _h_phi(k: int, z: float) -> float:
    """h_k(z) phi(z) = He_k(z) exp(-z^2/2) / sqrt(2 pi k!), scaled in two halves against underflow."""
    s = math.exp(0.5 * (-0.5 * z * z - 0.5 * math.lgamma(k + 1) - 0.5 * math.log(2 * math.pi)))
    return special.eval_hermitenorm(k, z) * s * s


def _panels(kinks, q, width=0.5):
    sq = math.sqrt(q)
    pts = set(np.arange(-ZMAX, ZMAX + 1e-9, width).tolist())
    for t in tuple(kinks) + (0.0,):  # split at the kinks, grade towards the unit scale of f
        z0 = t / sq
        pts.add(z0)
        h = 1.0 / sq
        while h < width:
            pts.update((z0 - h, z0 + h))
            h *= 2
    pts = sorted(p for p in pts if -ZMAX <= p <= ZMAX)
    return list(zip(pts[:-1], pts[1:]))


def _quad(g, panels, epsabs):
    total = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        for a, b in panels:
            total += integrate.quad(g, a, b, epsabs=epsabs, epsrel=1e-14, limit=200)[0]
    return total


def ref_second_moment(f, kinks, q):
    sq = math.sqrt(q)
    panels = _panels(kinks, q)
    return _quad(lambda z: f(sq * z) ** 2 * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi), panels, 1e-20)


def ref_coefficient(f, kinks, k, q, scale=1.0):
    sq = math.sqrt(q)
    panels = _panels(kinks, q)
    return _quad(lambda z: f(sq * z) * _h_phi(k, z), panels, 1e-17 * scale / len(panels))


def test_reference_quadrature_is_sound():
    """The quadrature reference itself reproduces known values (ReLU c_2, exp c_5, E tanh^2 at q=1)."""
    assert abs(ref_coefficient(lambda x: max(x, 0.0), (0.0,), 2, 1.0) - 1 / (2 * math.sqrt(math.pi))) < 1e-15
    assert abs(ref_coefficient(math.exp, (), 5, 1.0) - math.exp(0.5) / math.sqrt(120)) < 1e-14
    assert abs(ref_second_moment(math.tanh, (), 1.0) - 0.39429449039784117) < 1e-15  # mpmath, 30 digits
    z = np.linspace(-6, 6, 13)
    for k in (0, 1, 5, 30):
        h = special.eval_hermitenorm(k, z) * np.exp(-z * z / 2) / math.sqrt(2 * math.pi * math.factorial(k))
        np.testing.assert_allclose([_h_phi(k, t) for t in z], h, rtol=1e-13, atol=1e-300)


# ------------------------------------------------------------------------------------------------
# exact ReLU and exp coefficients
def relu_exact(K: int) -> np.ndarray:
    """c_k of ReLU at q = 1: 1/sqrt(2 pi), 1/2, He_{k-2}(0)/(sqrt(2 pi) sqrt(k!)) for k >= 2.

    He_{2m}(0) = (-1)^m (2m - 1)!!, He_odd(0) = 0; c_k^2 = He_{k-2}(0)^2 / (2 pi k!) is formed exactly as
    a fraction and rounded once.
    """
    c = np.zeros(K + 1)
    c[0] = 1 / math.sqrt(2 * math.pi)
    if K >= 1:
        c[1] = 0.5
    for k in range(2, K + 1):
        if k % 2:
            continue
        m = (k - 2) // 2
        dfact = math.prod(range(1, 2 * m, 2))  # (2m - 1)!!
        c[k] = (-1) ** m * math.sqrt(float(Fraction(dfact * dfact, math.factorial(k))) / (2 * math.pi))
    return c


@pytest.mark.parametrize("q", [1e-4, 3e-3, 0.25, 1.0, 2.0, 37.0, 1e4])
def test_relu_exact_coefficients(q):
    K = 200
    c = hermite.coefficients("relu", K, q)
    assert c.shape == (K + 1,) and c.dtype == np.float64
    expected = math.sqrt(q) * relu_exact(K)  # ReLU is positively homogeneous: c_k(q) = sqrt(q) c_k(1)
    err = np.max(np.abs(c - expected))
    assert err <= TOL * math.sqrt(q / 2), err


def test_relu_exact_sympy():
    c = hermite.exact_coefficients("relu", 6)
    assert len(c) == 7
    assert sp.simplify(c[2] - 1 / (2 * sp.sqrt(sp.pi))) == 0
    assert sp.simplify(c[0] - 1 / sp.sqrt(2 * sp.pi)) == 0
    assert sp.simplify(c[1] - sp.Rational(1, 2)) == 0
    assert sp.simplify(c[3]) == 0 and sp.simplify(c[5]) == 0
    assert sp.simplify(c[4] + 1 / (4 * sp.sqrt(3 * sp.pi))) == 0  # He_2(0)/(sqrt(2 pi) sqrt(4!))
    # with an exact rational variance: c_k(q) = sqrt(q) c_k(1)
    c9 = hermite.exact_coefficients("relu", 2, q=sp.Rational(9, 4))
    assert sp.simplify(c9[2] - sp.Rational(3, 2) / (2 * sp.sqrt(sp.pi))) == 0


@pytest.mark.parametrize("q", [1e-4, 0.01, 1.0, 10.0, 100.0])
def test_exp_coefficients(q):
    """exp: c_k = exp(q/2) q^(k/2) / sqrt(k!) (from E exp(t z) = exp(t^2/2)), evaluated with mpmath."""
    K = 200
    c = hermite.coefficients("exp", K, q)
    with mpmath.workdps(30):
        expected = np.array([float(mpmath.exp(mpmath.mpf(q) / 2) * mpmath.mpf(q) ** (mpmath.mpf(k) / 2)
                                   / mpmath.sqrt(mpmath.factorial(k))) for k in range(K + 1)])
    scale = math.exp(q)  # sqrt(E exp(2 sqrt(q) z))
    assert np.max(np.abs(c - expected)) <= TOL * scale
    assert abs(hermite.second_moment("exp", q) - math.exp(2 * q)) <= TOL * math.exp(2 * q)


@pytest.mark.parametrize("k", [0, 1, 2, 5, 10, 25])
def test_hermite_activation_is_a_basis_vector(k):
    """f = He_k has c_j(1) = sqrt(k!) delta_jk."""
    c = hermite.coefficients(hermite.activation("hermite", k=k), 40)
    expected = np.zeros(41)
    expected[k] = math.sqrt(math.factorial(k))
    assert np.max(np.abs(c - expected)) <= TOL * math.sqrt(math.factorial(k))


@pytest.mark.parametrize("k", [0, 1, 2, 3, 6, 9])
@pytest.mark.parametrize("q", [0.01, 1.0, 4.0])
def test_monomial_coefficients(k, q):
    """z^k = sum_j k! / (2^m m! j!) He_j(z), m = (k - j)/2: c_j = q^(k/2) k! / (2^m m! sqrt(j!))."""
    c = hermite.coefficients(hermite.activation("monomial", k=k), 12, q)
    expected = np.zeros(13)
    for j in range(k % 2, k + 1, 2):
        m = (k - j) // 2
        expected[j] = q ** (k / 2) * math.factorial(k) / (2**m * math.factorial(m) * math.sqrt(math.factorial(j)))
    m2 = q**k * math.prod(range(1, 2 * k, 2))  # E x^(2k) = q^k (2k - 1)!!
    assert np.max(np.abs(c - expected)) <= TOL * math.sqrt(m2)
    assert abs(hermite.second_moment(hermite.activation("monomial", k=k), q) - m2) <= TOL * m2


# ------------------------------------------------------------------------------------------------
# sympy vs numeric
CLOSED_FORM = [
    ("relu", {}), ("leaky_relu", {}), ("leaky_relu", {"negative_slope": 0.2}), ("abs", {}), ("step", {}),
    ("sign", {}), ("hardtanh", {}), ("relu6", {}), ("identity", {}), ("monomial", {"k": 3}),
    ("monomial", {"k": 4}), ("hermite", {"k": 2}), ("hermite", {"k": 5}), ("exp", {}), ("sin", {}),
    ("cos", {}), ("erf", {}), ("gaussian", {}),
]


@pytest.mark.parametrize("name,params", CLOSED_FORM, ids=[f"{n}{p or ''}" for n, p in CLOSED_FORM])
@pytest.mark.parametrize("q", [sp.Rational(1, 4), sp.Integer(1), sp.Integer(3)], ids=str)
def test_exact_matches_numeric(name, params, q):
    act = hermite.activation(name, **params)
    K = 8
    exact = hermite.exact_coefficients(act, K, q)
    assert len(exact) == K + 1
    assert not any(e.has(sp.Float) for e in exact), "exact coefficients should hold no floats"
    values = np.array([float(sp.N(e, 30)) for e in exact])
    numeric = hermite.coefficients(act, K, float(q))
    scale = math.sqrt(hermite.second_moment(act, float(q)))
    assert np.max(np.abs(values - numeric)) <= TOL * scale


SMOOTH_FAMILIES = {
    "exp": mpmath.exp, "sin": mpmath.sin, "cos": mpmath.cos, "erf": mpmath.erf,
    "gaussian": lambda x: mpmath.exp(-x * x / 2),
}


@pytest.mark.parametrize("name", sorted(SMOOTH_FAMILIES))
@pytest.mark.parametrize("q", [sp.Rational(1, 4), pytest.param(sp.Integer(3), marks=pytest.mark.slow)], ids=str)
def test_exact_smooth_families_vs_mpmath(name, q):
    """Generating-function closed forms against direct mpmath integrals of f(sqrt q z) He_k(z) phi(z)."""
    f = SMOOTH_FAMILIES[name]
    exact = hermite.exact_coefficients(name, 5, q)
    with mpmath.workdps(25):
        s = mpmath.sqrt(mpmath.mpf(int(q.p)) / int(q.q))
        for k, e in enumerate(exact):
            he = lambda z, k=k: mpmath.hermite(k, z / mpmath.sqrt(2)) * 2 ** (-mpmath.mpf(k) / 2)  # He_k
            val = mpmath.quad(lambda z, he=he: f(s * z) * he(z) * mpmath.npdf(z),
                              [-mpmath.inf, 0, mpmath.inf]) / mpmath.sqrt(mpmath.factorial(k))
            assert abs(float(sp.N(e, 25)) - float(val)) < 1e-14


def test_exact_coefficients_refuses_without_closed_form():
    for name in ("tanh", "gelu", "sigmoid"):
        with pytest.raises(ValueError, match="closed form"):
            hermite.exact_coefficients(name, 3)


# ------------------------------------------------------------------------------------------------
# every built-in against the quadrature reference
KS = (0, 1, 2, 3, 7, 50, 199, 200)


def _check_against_quadrature(key, q, ks):
    params, f, kinks = REFERENCE[key]
    act = make(key)
    c = hermite.coefficients(act, 200, q)
    m2 = ref_second_moment(f, kinks, q)
    scale = math.sqrt(m2)
    errs = {k: abs(c[k] - ref_coefficient(f, kinks, k, q, scale)) / scale for k in ks}
    worst = max(errs, key=errs.get)
    assert errs[worst] <= TOL, f"{key} q={q}: c_{worst} off by {errs[worst]:.2e} sqrt(E f^2)"
    assert abs(hermite.second_moment(act, q) - m2) <= TOL * m2


@pytest.mark.parametrize("key", sorted(REFERENCE))
@pytest.mark.parametrize("q", [1e-4, 1.0, 1e4])
def test_builtin_against_quadrature(key, q):
    if key == "exp" and q > 100:
        pytest.skip("E exp(u)^2 = exp(2q) overflows float64; see test_exp_coefficients")
    _check_against_quadrature(key, q, KS)


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(REFERENCE))
@pytest.mark.parametrize("q", [3e-3, 0.37, 250.0])
def test_builtin_against_quadrature_many_orders(key, q):
    if key == "exp" and q > 100:
        pytest.skip("exp(sqrt(q) z) phi(z) peaks at z = sqrt(q), outside the reference window; "
                    "see test_exp_coefficients")
    _check_against_quadrature(key, q, range(0, 201, 7))


# ------------------------------------------------------------------------------------------------
# Parseval and the tail mass
@pytest.mark.parametrize("key", sorted(REFERENCE))
@pytest.mark.parametrize("q", [1e-4, 1.0, 1e4])
def test_parseval(key, q):
    if key == "exp" and q > 100:
        pytest.skip("E exp(u)^2 = exp(2q) overflows float64")
    act = make(key)
    K = 60
    c = hermite.coefficients(act, K, q)
    m2 = hermite.second_moment(act, q)
    tail = hermite.tail_mass(act, K, q)
    assert tail >= 0.0
    assert abs(np.sum(c**2) + tail - m2) <= TOL * m2
    assert np.sum(c**2) <= m2 * (1 + 1e-12)  # Bessel's inequality


@pytest.mark.parametrize("key", ["relu", "tanh", "gelu", "step", "hardtanh", "elu", "softplus", "sin"])
@pytest.mark.parametrize("q", [1e-4, 1.0, 1e4])
def test_second_moment_vs_quadrature(key, q):
    params, f, kinks = REFERENCE[key]
    m2 = ref_second_moment(f, kinks, q)
    assert abs(hermite.second_moment(make(key), q) - m2) <= TOL * m2


def test_tail_mass_decreases_and_vanishes_for_polynomials():
    t = [hermite.tail_mass("relu", K) for K in (2, 10, 50, 200)]
    assert all(a > b for a, b in zip(t, t[1:]))
    assert t[-1] > 0  # ReLU is not a polynomial: the tail never vanishes
    assert hermite.tail_mass(hermite.activation("monomial", k=5), 5, 2.0) <= 1e-12 * 2.0**5 * 945
    # ReLU's c_k^2 ~ k^(-5/2) / (2 pi ...), so the tail beyond K shrinks like K^(-3/2)
    ratio = hermite.tail_mass("relu", 100) / hermite.tail_mass("relu", 400)
    assert 6.0 < ratio < 10.0  # 4^(3/2) = 8


def test_tail_mass_array_q():
    t = hermite.tail_mass("relu", 10, np.array([1.0, 4.0]))
    assert t.shape == (2,)
    assert t[1] == pytest.approx(4 * t[0], rel=1e-10)


# ------------------------------------------------------------------------------------------------
# parity
ODD = [("tanh", {}), ("erf", {}), ("sign", {}), ("identity", {}), ("sin", {}), ("hardtanh", {}),
       ("monomial", {"k": 3}), ("hermite", {"k": 5}), ("leaky_relu", {"negative_slope": 1.0})]
EVEN = [("abs", {}), ("cos", {}), ("gaussian", {}), ("monomial", {"k": 4}), ("hermite", {"k": 4}),
        ("x*tanh(x)", {}), ("leaky_relu", {"negative_slope": -1.0})]


@pytest.mark.parametrize("name,params,parity", [(n, p, -1) for n, p in ODD] + [(n, p, 1) for n, p in EVEN],
                         ids=[f"odd-{n}{p or ''}" for n, p in ODD] + [f"even-{n}{p or ''}" for n, p in EVEN])
@pytest.mark.parametrize("q", [0.01, 1.0, 100.0])
def test_parity(name, params, parity, q):
    act = hermite.activation(name, **params)
    assert act.parity == parity
    c = hermite.coefficients(act, 60, q)
    vanishing = c[0::2] if parity == -1 else c[1::2]
    assert np.max(np.abs(vanishing)) <= 1e-14 * math.sqrt(hermite.second_moment(act, q))
    surviving = c[1::2] if parity == -1 else c[0::2]
    assert np.max(np.abs(surviving)) > 0


@pytest.mark.parametrize("q", [0.01, 1.0, 100.0])
def test_parity_of_undeclared_callables(q):
    """Opaque callables (no parity declared) still get their vanishing coefficients numerically zero."""
    even = hermite.activation(lambda x: x * np.tanh(x))
    odd = hermite.activation(lambda x: np.tanh(x) ** 3)
    for act, idx in ((even, slice(1, None, 2)), (odd, slice(0, None, 2))):
        c = hermite.coefficients(act, 60, q)
        assert np.max(np.abs(c[idx])) <= 1e-14 * math.sqrt(hermite.second_moment(act, q))


# ------------------------------------------------------------------------------------------------
# user callables with kinks
def _piecewise_linear_exact(K, q, pieces, dps=40):
    """c_k of f(x) = sum_i w_i max(x - t_i, 0) at variance q, exactly (mpmath, dps digits).

    With J_k(t) = int_t^inf He_k(z) phi(z) dz (J_0 = Q(t), J_k = He_{k-1}(t) phi(t)) and
    z He_k = He_{k+1} + k He_{k-1}:  E[max(s z - t, 0) He_k(z)] = s (J_{k+1} + k J_{k-1}) - t J_k at t/s.
    """
    mp = mpmath
    out = []
    with mp.workdps(dps):
        s = mp.sqrt(mp.mpf(q))
        total = [mp.mpf(0)] * (K + 1)
        for w, t in pieces:
            t = mp.mpf(t)
            a = t / s
            he = [mp.mpf(1), a]
            for j in range(1, K + 1):
                he.append(a * he[j] - j * he[j - 1])
            phi = mp.npdf(a)
            J = [mp.erfc(a / mp.sqrt(2)) / 2] + [he[j - 1] * phi for j in range(1, K + 2)]
            for k in range(K + 1):
                lower = k * J[k - 1] if k >= 1 else 0
                total[k] += w * (s * (J[k + 1] + lower) - t * J[k])
        for k in range(K + 1):
            out.append(float(total[k] / mp.sqrt(mp.factorial(k))))
    return np.array(out)


@pytest.mark.parametrize("q", [1e-2, 1.0, 9.0, 1e4])
def test_user_callable_with_kinks(q):
    act = hermite.activation(lambda x: np.maximum(x, 0) - 0.5 * np.maximum(x - 1, 0), kinks=[0, 1])
    assert act.kinks == (0.0, 1.0)
    K = 80
    c = hermite.coefficients(act, K, q)
    expected = _piecewise_linear_exact(K, q, [(1.0, 0.0), (-0.5, 1.0)])
    m2 = float(np.sum(expected**2)) + 1e-300
    assert np.max(np.abs(c - expected)) <= TOL * math.sqrt(hermite.second_moment(act, q))
    assert hermite.second_moment(act, q) >= m2 * (1 - 1e-12)


def test_piecewise_exact_formula_reproduces_relu():
    np.testing.assert_allclose(_piecewise_linear_exact(30, 2.0, [(1.0, 0.0)]), math.sqrt(2) * relu_exact(30),
                               rtol=0, atol=1e-15)


def test_formula_string_kinks_found():
    act = hermite.activation("Max(x, 0) - Max(x - 1, 0)/2")
    assert act.kinks == (0.0, 1.0)
    expected = _piecewise_linear_exact(40, 1.0, [(1.0, 0.0), (-0.5, 1.0)])
    assert np.max(np.abs(hermite.coefficients(act, 40) - expected)) <= TOL


# ------------------------------------------------------------------------------------------------
# gains, conventions, array q
@pytest.mark.parametrize("name,gain", [("relu", 2.0), ("tanh", 0.5), ("gelu", 3.0), ("elu", 1.7), ("sin", 2.0)])
@pytest.mark.parametrize("q", [0.1, 1.0, 5.0])
def test_gain_is_variance_rescaling(name, gain, q):
    """c_k of f(a x) at variance q are those of f at variance a^2 q."""
    a = hermite.activation(name, gain=gain)
    c = hermite.coefficients(a, 50, q)
    ref = hermite.coefficients(name, 50, gain**2 * q)
    scale = math.sqrt(hermite.second_moment(name, gain**2 * q))
    assert np.max(np.abs(c - ref)) <= TOL * scale
    x = np.linspace(-3, 3, 7)
    np.testing.assert_allclose(a(x), hermite.activation(name)(gain * x), rtol=1e-15, atol=0)


def test_gain_relu_is_homogeneous():
    np.testing.assert_allclose(hermite.coefficients(hermite.activation("relu", gain=2), 100, 0.7),
                               2 * hermite.coefficients("relu", 100, 0.7), rtol=0, atol=1e-14)


POLY = "x**3 - 2*x + 1"


def _poly(x):
    return x**3 - 2 * x + 1


@pytest.mark.parametrize("q", [0.5, 1.0, 3.0])
def test_probabilists_convention_reconstructs(q):
    a = hermite.coefficients(POLY, 6, q, convention="probabilists")
    z = np.array([-2.5, -1.0, 0.0, 0.3, 1.7])
    np.testing.assert_allclose(np.polynomial.hermite_e.hermeval(z, a), _poly(math.sqrt(q) * z), rtol=0, atol=1e-12)
    assert np.max(np.abs(a[4:])) < 1e-13


@pytest.mark.parametrize("q", [0.5, 1.0, 3.0])
def test_physicists_convention_reconstructs(q):
    b = hermite.coefficients(POLY, 6, q, convention="physicists")
    z = np.array([-2.5, -1.0, 0.0, 0.3, 1.7])
    np.testing.assert_allclose(np.polynomial.hermite.hermval(z / math.sqrt(2), b), _poly(math.sqrt(q) * z),
                               rtol=0, atol=1e-12)


def test_conventions_for_relu():
    """a_k = c_k / sqrt(k!), b_k = c_k / sqrt(2^k k!), so sum a_k He_k = sum b_k H_k(./sqrt 2) = f."""
    c = relu_exact(20)
    k = np.arange(21)
    fact = np.array([math.factorial(int(j)) for j in k], dtype=float)
    a = hermite.coefficients("relu", 20, convention="probabilists")
    b = hermite.coefficients("relu", 20, convention="physicists")
    np.testing.assert_allclose(a, c / np.sqrt(fact), rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(b, c / np.sqrt(fact * 2.0**k), rtol=1e-12, atol=1e-16)


def test_array_q_shape_and_rows():
    q = np.array([0.01, 0.5, 1.0, 20.0])
    c = hermite.coefficients("tanh", 30, q)
    assert c.shape == (4, 31)
    for i, qi in enumerate(q):
        np.testing.assert_allclose(c[i], hermite.coefficients("tanh", 30, float(qi)), rtol=0, atol=1e-15)
    assert hermite.coefficients("relu", 5, [1.0, 2.0]).shape == (2, 6)
    m = hermite.second_moment("tanh", q)
    assert np.shape(m) == (4,)
    assert isinstance(hermite.second_moment("tanh", 1.0), float)


def test_coefficients_prefix_consistent():
    """c_0..c_K do not depend on the requested K (same integral, different truncation)."""
    for name in ("relu", "tanh", "selu", "hardtanh"):
        c200 = hermite.coefficients(name, 200, 2.0)
        c7 = hermite.coefficients(name, 7, 2.0)
        assert np.max(np.abs(c200[:8] - c7)) <= TOL * math.sqrt(hermite.second_moment(name, 2.0))


# ------------------------------------------------------------------------------------------------
# transforms (Vatanen, Raiko, Valpola and LeCun 2013)
def _vatanen_constants(f, fprime, kinks, q):
    """alpha = E f'(u), beta = E f(u), E f(u)^2 for u ~ N(0, q), by 1-D quadrature."""
    sq = math.sqrt(q)
    panels = _panels(kinks, q)
    pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    alpha = _quad(lambda z: fprime(sq * z) * pdf(z), panels, 1e-18)
    beta = _quad(lambda z: f(sq * z) * pdf(z), panels, 1e-18)
    m2 = _quad(lambda z: f(sq * z) ** 2 * pdf(z), panels, 1e-18)
    return alpha, beta, m2


VATANEN = {
    "tanh": (math.tanh, lambda x: 1 / math.cosh(x) ** 2, ()),
    "relu": (lambda x: max(x, 0.0), lambda x: 1.0 if x > 0 else 0.0, (0.0,)),
}


@pytest.mark.parametrize("name", sorted(VATANEN))
@pytest.mark.parametrize("q", [1.0, 0.5])
def test_transform_is_vatanen(name, q):
    f, fp, kinks = VATANEN[name]
    alpha, beta, m2 = _vatanen_constants(f, fp, kinks, q)
    x = np.array([-3.0, -1.0, -0.2, 0.0, 0.4, 1.0, 2.5])
    fx = np.array([f(t) for t in x])
    raw = hermite.transform(name, q=q, unit_variance=False)
    np.testing.assert_allclose(raw(x), fx - alpha * x - beta, rtol=0, atol=1e-13)
    # third transformation: scale to E T(u)^2 = 1; E (f - alpha u - beta)^2 = E f^2 - beta^2 - alpha^2 q
    gamma = 1 / math.sqrt(m2 - beta**2 - alpha**2 * q)
    unit = hermite.transform(name, q=q)
    np.testing.assert_allclose(unit(x), gamma * (fx - alpha * x - beta), rtol=0, atol=1e-12)
    c = hermite.coefficients(unit, 6, q)
    assert abs(c[0]) < 1e-13 and abs(c[1]) < 1e-13
    assert abs(hermite.second_moment(unit, q) - 1) < 1e-12
    assert abs(np.sum(c**2) + hermite.tail_mass(unit, 6, q) - 1) < 1e-12


@pytest.mark.parametrize("name", ["tanh", "relu", "gelu", "selu", "softplus", "sin"])
def test_transform_zeroes_c0_c1(name):
    for q in (0.3, 1.0, 4.0):
        t = hermite.transform(name, q=q)
        c = hermite.coefficients(t, 10, q)
        assert abs(c[0]) < 1e-13 and abs(c[1]) < 1e-13, (q, c[:2])
        assert abs(hermite.second_moment(t, q) - 1) < 1e-12


@pytest.mark.parametrize("q", [1.0, 0.5])
def test_transform_removes_order_two(q):
    t = hermite.transform("relu", remove=(0, 1, 2), q=q)
    c = hermite.coefficients(t, 8, q)
    assert np.max(np.abs(c[:3])) < 1e-13
    assert abs(hermite.second_moment(t, q) - 1) < 1e-12
    # the surviving orders are ReLU's, rescaled: c_k(T) = c_k(relu) / sqrt(E relu^2 - c_0^2 - c_1^2 - c_2^2)
    r = math.sqrt(q) * relu_exact(8)
    s = 1 / math.sqrt(q / 2 - np.sum(r[:3] ** 2))
    np.testing.assert_allclose(c[3:], s * r[3:], rtol=0, atol=1e-12)
    # values: T(x) = s (relu(x) - c0 - c1 x/sqrt(q) - c2 (x^2/q - 1)/sqrt(2))
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    expected = s * (np.maximum(x, 0) - r[0] - r[1] * x / math.sqrt(q) - r[2] * (x**2 / q - 1) / math.sqrt(2))
    np.testing.assert_allclose(t(x), expected, rtol=0, atol=1e-12)


def test_transform_without_unit_variance_keeps_scale():
    t = hermite.transform("tanh", remove=(0,), unit_variance=False)
    np.testing.assert_allclose(hermite.coefficients(t, 9), hermite.coefficients("tanh", 9), rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# property tests
log_q = st.floats(min_value=-3.0, max_value=3.0).map(lambda e: 10.0**e)


@PROPS
@given(q=log_q, K=st.integers(min_value=0, max_value=120))
def test_property_relu_exact(q, K):
    c = hermite.coefficients("relu", K, q)
    assert c.shape == (K + 1,)
    assert np.max(np.abs(c - math.sqrt(q) * relu_exact(K))) <= TOL * math.sqrt(q / 2)


@PROPS
@given(q=log_q, K=st.integers(min_value=1, max_value=100))
def test_property_stein_tanh_sech2(q, K):
    """Stein: E[f(s z) He_k(z)] = s E[f'(s z) He_{k-1}(z)], so c_k(f) = sqrt(q/k) c_{k-1}(f').

    Checked with f = tanh (built-in) and f' = sech^2 given as an opaque user callable.
    """
    sech2 = hermite.activation(lambda x: 1.0 / np.cosh(x) ** 2)
    c = hermite.coefficients("tanh", K, q)
    d = hermite.coefficients(sech2, K - 1, q)
    k = np.arange(1, K + 1)
    scale = math.sqrt(hermite.second_moment("tanh", q)) + math.sqrt(q * hermite.second_moment(sech2, q))
    assert np.max(np.abs(c[1:] - np.sqrt(q / k) * d)) <= TOL * scale


@PROPS
@given(q=log_q, K=st.integers(min_value=0, max_value=150),
       name=st.sampled_from(["relu", "tanh", "gelu", "silu", "elu", "hardtanh", "step", "erf", "softplus", "cos"]))
def test_property_parseval(q, K, name):
    c = hermite.coefficients(name, K, q)
    m2 = hermite.second_moment(name, q)
    tail = hermite.tail_mass(name, K, q)
    assert tail >= 0
    assert np.sum(c**2) <= m2 * (1 + 1e-12)
    assert abs(np.sum(c**2) + tail - m2) <= 1e-12 * m2


@PROPS
@given(q=log_q, K=st.integers(min_value=0, max_value=60))
def test_property_erf_closed_form(q, K):
    """erf: c_1 = (2/sqrt(pi)) sqrt(q/(1+2q)) and E erf(u)^2 = (2/pi) arcsin(2q/(1+2q)) (Williams 1997)."""
    c = hermite.coefficients("erf", max(K, 1), q)
    assert abs(c[1] - 2 / math.sqrt(math.pi) * math.sqrt(q / (1 + 2 * q))) <= 1e-14
    assert abs(hermite.second_moment("erf", q) - 2 / math.pi * math.asin(2 * q / (1 + 2 * q))) <= 1e-14


# ------------------------------------------------------------------------------------------------
# bad inputs: ValueError naming the argument
@pytest.mark.parametrize("K", [-1, 2.5, "3", None, 4001, 10**6])
def test_bad_order(K):
    with pytest.raises(ValueError, match=r"\bK\b"):
        hermite.coefficients("relu", K)


@pytest.mark.parametrize("fn", [hermite.tail_mass, hermite.exact_coefficients])
def test_bad_order_other_entry_points(fn):
    with pytest.raises(ValueError, match=r"\bK\b"):
        fn("relu", -1)


@pytest.mark.parametrize("q", [0.0, -1.0, float("nan"), float("inf"), [1.0, -2.0], [1.0, float("nan")], "a"])
def test_bad_variance(q):
    with pytest.raises(ValueError, match=r"\bq\b"):
        hermite.coefficients("relu", 3, q)
    with pytest.raises(ValueError, match=r"\bq\b"):
        hermite.second_moment("relu", q)


def test_bad_variance_exact_and_transform():
    with pytest.raises(ValueError, match=r"\bq\b"):
        hermite.exact_coefficients("relu", 3, q=-1)
    with pytest.raises(ValueError, match=r"\bq\b"):
        hermite.transform("relu", q=0.0)


@pytest.mark.parametrize("act", ["foo", "relu7", "", "   "])
def test_unknown_activation_name(act):
    with pytest.raises(ValueError, match="activation"):
        hermite.activation(act)
    with pytest.raises(ValueError, match="activation"):
        hermite.coefficients(act, 3)


@pytest.mark.parametrize("act", [3, 2.5, None, [1, 2]])
def test_non_callable(act):
    with pytest.raises(ValueError, match="activation"):
        hermite.activation(act)


@pytest.mark.parametrize("text", ["__import__('os')", "x.real", "lambda: 1", "y + 1", "().__class__",
                                  "open('f')", "x if x else 1", "[x]", "x**", "exec('1')"])
def test_unsafe_or_invalid_expression(text):
    with pytest.raises(ValueError, match="activation"):
        hermite.activation(text)


def test_safe_expression_is_parsed():
    act = hermite.activation("x*tanh(x)")
    x = np.linspace(-3, 3, 7)
    np.testing.assert_allclose(act(x), x * np.tanh(x), rtol=1e-15)


def test_callable_failing_on_arrays():
    with pytest.raises(ValueError, match="activation"):
        hermite.activation(lambda x: [1, 2, 3])


def test_bad_parameter_type_names_argument():
    with pytest.raises(ValueError, match="negative_slope"):
        hermite.activation("leaky_relu", negative_slope="a")


def test_none_parameter_is_value_error():
    with pytest.raises(ValueError, match="alpha"):
        hermite.activation("elu", alpha=None)


@pytest.mark.parametrize("name,params,arg", [
    ("softplus", {"beta": 0}, "beta"), ("softplus", {"beta": -1.0}, "beta"),
    ("leaky_relu", {"negative_slope": float("nan")}, "negative_slope"), ("monomial", {"k": -1}, r"\bk\b"),
    ("monomial", {"k": 1.5}, r"\bk\b"), ("hermite", {"k": True}, r"\bk\b"), ("relu", {"foo": 1}, "foo"),
    ("hardtanh", {"min_val": 2.0}, "min_val"),
])
def test_bad_parameters(name, params, arg):
    with pytest.raises(ValueError, match=arg):
        hermite.activation(name, **params)


def test_bad_gain_and_convention():
    with pytest.raises(ValueError, match="gain"):
        hermite.activation("relu", gain=-1.0)
    with pytest.raises(ValueError, match="gain"):
        hermite.activation("relu", gain=float("nan"))
    with pytest.raises(ValueError, match="convention"):
        hermite.coefficients("relu", 3, convention="hermite")


def test_bad_transform_orders():
    with pytest.raises(ValueError, match=r"\bK\b|remove"):
        hermite.transform("relu", remove=(-1,))
    with pytest.raises(ValueError, match="remove"):
        hermite.transform("relu", remove=3)


# ------------------------------------------------------------------------------------------------
def test_import_is_fast_and_compiles_nothing():
    """`import hermite` costs under a second and never imports (so never compiles) numba.

    Checked in fresh interpreters. The CPU time of the import is what is bounded, since the wall time on two
    cores shared with other processes can be several times larger; the wall time gets a loose bound.
    """
    code = ("import sys, time; w = time.perf_counter(); c = time.process_time(); import hermite; "
            "print(time.process_time() - c, time.perf_counter() - w, 'numba' in sys.modules)")
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=REPO).stdout.split()
        runs.append((float(out[0]), float(out[1]), out[2]))
        if runs[-1][1] < 1.0:
            break
    assert all(flag == "False" for *_, flag in runs), "import hermite must not import (or compile) numba"
    assert min(cpu for cpu, *_ in runs) < 1.0, runs
    assert min(wall for _, wall, _ in runs) < 5.0, runs


def test_transform_that_leaves_nothing_is_an_error():
    """Removing orders 0 and 1 of an affine activation leaves round-off: unit_variance must refuse."""
    with pytest.raises(ValueError, match="remove"):
        hermite.transform("identity", remove=(0, 1))
    t = hermite.transform("identity", remove=(0, 1), unit_variance=False)
    assert hermite.second_moment(t, 1.0) < 1e-15


@pytest.mark.parametrize("z", [0.7, np.array(-1.3), np.linspace(-4.0, 4.0, 9).reshape(3, 3)])
def test_normalized_hermite_recurrence_any_shape(z):
    """`hermite.basis.hermite_polynomials` (scalar, 0-d and n-d z) and `hermite_functions` (flat z) against
    numpy's probabilists' Hermite polynomials He_k / sqrt(k!) (times phi^(1/2)), k = 0..12."""
    from numpy.polynomial import hermite_e

    from hermite import basis

    K = 12
    zz = np.asarray(z, dtype=np.float64)
    want = np.array([hermite_e.hermeval(zz, np.eye(K + 1)[k]) / math.sqrt(math.factorial(k)) for k in range(K + 1)])
    got = basis.hermite_polynomials(K, z)
    assert got.shape == (K + 1,) + zz.shape
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    flat = zz.reshape(-1)
    np.testing.assert_allclose(basis.hermite_functions(K, flat),
                               want.reshape(K + 1, -1) * np.exp(-flat**2 / 4) / (2 * math.pi) ** 0.25,
                               rtol=1e-13, atol=1e-15)


def test_compiled_hermite_recurrence_is_the_numpy_one(monkeypatch):
    """The compiled recurrence gives the numpy rows' values bit for bit (same operations, same order, no fused
    multiply-adds), for short and long rows up to order 1024."""
    from hermite import basis

    pytest.importorskip("numba")
    assert basis._numba_recurrence() is not None
    for K, N in ((2, 1), (40, 3), (256, 64), (1024, 5000)):
        z = np.linspace(-40.0, 40.0, N)
        with monkeypatch.context() as m:
            m.setattr(basis, "_worth_compiling", lambda out: True)
            compiled = basis.hermite_functions(K, z)
        with monkeypatch.context() as m:
            m.setattr(basis, "_numba_recurrence", lambda: None)
            rows = basis.hermite_functions(K, z)
        np.testing.assert_array_equal(compiled, rows)


def test_recurrence_switches_to_compiled_after_an_import_worth_of_rows(monkeypatch):
    """Short runs stay on numpy rows (no numba import); after `_ROWS_BEFORE_COMPILING` rows the compiled loop
    takes over, with the same values."""
    from hermite import basis

    monkeypatch.delitem(sys.modules, "numba", raising=False)
    monkeypatch.setattr(basis, "_NUMPY_ROWS", [0])
    out = np.empty((257, 3))
    assert not basis._worth_compiling(out)
    assert basis._NUMPY_ROWS[0] == 257
    monkeypatch.setattr(basis, "_NUMPY_ROWS", [basis._ROWS_BEFORE_COMPILING])
    assert basis._worth_compiling(out)


def test_compiled_mehler_sum_is_the_numpy_one(monkeypatch):
    """The compiled Horner loop gives the numpy chunks' values bit for bit (the same products and Horner steps in
    the same order, no fused multiply-add), so the size at which `mehler_sum` switches changes no value."""
    from hermite import basis

    pytest.importorskip("numba")
    horner = basis._numba_mehler()
    assert horner is not None
    rng = np.random.default_rng(7)
    for K, N, V in ((0, 300, 3), (24, 2016, 64), (64, 500, 20), (256, 3000, 40)):
        ca, cb = rng.standard_normal((V, K + 1)), rng.standard_normal((V, K + 1))
        ia, ib = rng.integers(0, V, N), rng.integers(0, V, N)
        r = rng.uniform(-1.0, 1.0, N)
        compiled = np.empty(N)
        horner(ca, cb, ia, ib, r, compiled)
        with monkeypatch.context() as m:
            m.setattr(basis, "_numba_mehler", lambda: None)
            chunks = basis.mehler_sum(ca, cb, ia, ib, r, chunk=1000)
        np.testing.assert_array_equal(compiled, chunks)
        if N >= 2048:
            np.testing.assert_array_equal(basis.mehler_sum(ca, cb, ia, ib, r), chunks)
