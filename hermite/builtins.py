"""The built-in activations: one row per name, naming its core class and parameters (plus aliases).

A row is ``name: (core class, make)`` with ``make(name, params)`` validating the user's parameters and
returning the parameters to record in the spec and the keyword arguments of ``core class.build``. A
closed-form family (a class in `hermite.cores`) needs no more than its row, e.g.
``"erf": (ErfCore, _none)``; a built-in without a closed form is a generic `Core` (or a
`PiecewisePolynomialCore`) whose row gives the numpy function, its first and second derivatives (between
the kinks), its formula, kinks and features, and its array-API form.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.special as sc

from hermite.cores import (
    ArcCosineCore,
    Core,
    CosCore,
    ErfCore,
    ExpCore,
    ExpLinearCore,
    GaussianCore,
    GeluCore,
    PiecewisePolynomialCore,
    SinCore,
    SoftplusCore,
    StepCore,
)
from hermite.validate import check_no_params, check_param

__all__ = ["TABLE", "ALIASES", "builtin_names", "builtin_core", "resolve"]

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


# ------------------------------------------------------------------------------------------------
# parameters
_RELU = ((-math.inf, 0.0, (0.0,)), (0.0, math.inf, (0.0, 1.0)))  # the asymptote of silu, softplus, mish, gelu


def _none(**fields):
    """make() of a row without parameters."""
    def make(name, p):
        check_no_params(name, p)
        return {}, fields

    return make


# ------------------------------------------------------------------------------------------------
# array-API forms (the finite-width simulator's backends)
def _erf_xp(x, xp):
    """erf on any array-API namespace, to ~1e-16 (series for |x| < 2.5, continued fraction beyond)."""
    name = getattr(xp, "__name__", "")
    if "numpy" in name and "strict" not in name:
        return sc.erf(x)
    if "cupy" in name:
        import cupyx.scipy.special as cs

        return cs.erf(x)
    ax = xp.abs(x)
    small = xp.minimum(ax, 2.5)
    # Maclaurin series: erf(x) = 2/sqrt(pi) sum_n (-1)^n x^(2n+1) / (n! (2n+1))
    term = small
    total = small
    x2 = small * small
    for n in range(1, 60):
        term = -term * x2 / n
        total = total + term / (2 * n + 1)
    series = 2.0 / math.sqrt(math.pi) * total
    # erfc(x) = exp(-x^2)/sqrt(pi) / (x + 1/2/(x + 1/(x + 3/2/(x + ...)))) evaluated bottom-up
    big = xp.maximum(ax, 2.5)
    frac = big
    for n in range(80, 0, -1):
        frac = big + (n / 2.0) / frac
    cf = 1.0 - xp.exp(-big * big) / math.sqrt(math.pi) / frac
    val = xp.where(ax < 2.5, series, cf)
    return xp.where(x < 0, -val, val)


def _expit_xp(x, xp):
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus_xp(x, xp):
    return xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))


def _np_softplus(x):
    """log(1 + e^x) as max(x, 0) + log1p(e^(-|x|)): within an ulp of np.logaddexp(0, x) and ~6x faster."""
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def _sigmoid_d2(x):
    """sigma'' = sigma' (1 - 2 sigma), sigma' = sigma(x) sigma(-x)."""
    return sc.expit(x) * sc.expit(-x) * (sc.expit(-x) - sc.expit(x))


def _poly_xp(coeffs, x, xp):
    y = xp.zeros_like(x) + float(coeffs[-1])
    for c in reversed(coeffs[:-1]):
        y = y * x + float(c)
    return y


# ------------------------------------------------------------------------------------------------
# rows with parameters
def _leaky_relu(name, p):
    a = check_param(name, p, "negative_slope", 0.01)
    check_no_params(name, p)
    return {"negative_slope": a}, {"a": 1.0, "b": -a}


def _hardtanh(name, p):
    lo = check_param(name, p, "min_val", -1.0)
    hi = check_param(name, p, "max_val", 1.0)
    check_no_params(name, p)
    if not lo < hi:
        raise ValueError(f"activation 'hardtanh': min_val={lo} must be < max_val={hi}")
    return ({"min_val": lo, "max_val": hi} if (lo, hi) != (-1.0, 1.0) else {}), dict(
        fn=lambda x: np.clip(x, lo, hi), kinks=(lo, hi), parity=-1 if lo == -hi else None,
        derivative=lambda x: ((x > lo) & (x < hi)).astype(np.float64), second_derivative=np.zeros_like,
        pieces=((-math.inf, lo, (lo,)), (lo, hi, (0, 1)), (hi, math.inf, (hi,))),
        array_fn=lambda x, xp: xp.clip(x, lo, hi))


def _gelu_tanh(name, p):
    check_no_params(name, p)
    k, c = math.sqrt(2 / math.pi), 0.044715

    # tanh(k (x + c x^3)) is +-1 exactly for |x| >= 9, so the cubic is formed at x clipped to [-20, 20] (and f''
    # at clipped x): the same bits everywhere, and no overflow of x^3 at |x| > 1e102 (variances beyond 1e200)
    def gt(x):
        xc = np.clip(x, -20.0, 20.0)
        return 0.5 * x * (1.0 + np.tanh(k * (xc + c * xc**3)))

    def dgt(x):
        xc = np.clip(x, -20.0, 20.0)
        t = np.tanh(k * (xc + c * xc**3))
        return 0.5 * (1.0 + t) + 0.5 * xc * (1.0 - t * t) * k * (1.0 + 3 * c * xc * xc)

    def d2gt(x):  # u = k (x + c x^3): f'' = (1 - t^2) u' + x ((1 - t^2) u'' - 2 t (1 - t^2) u'^2) / 2
        x = np.clip(x, -20.0, 20.0)  # every term carries 1 - t^2, exactly 0 beyond |x| = 9
        t = np.tanh(k * (x + c * x**3))
        s = 1.0 - t * t
        u1 = k * (1.0 + 3 * c * x * x)
        return s * u1 + 0.5 * x * s * (6 * k * c * x - 2 * t * u1 * u1)

    return {}, dict(fn=gt, expr="x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x**3)))/2", features=(0.0,), derivative=dgt,
                    asymptote=(_RELU, 12.0, 1.0),
                    second_derivative=d2gt, array_fn=lambda x, xp: 0.5 * x * (1.0 + xp.tanh(k * (x + c * x * x * x))))


def _sech2(x):
    """1 / cosh(x)^2 = 4 e^(-2|x|) / (1 + e^(-2|x|))^2, without the overflow of cosh beyond |x| ~ 710."""
    e = np.exp(-2.0 * np.abs(np.asarray(x, dtype=np.float64)))
    return 4.0 * e / (1.0 + e) ** 2


def _mish_d2(x):
    """f = x T, T = tanh(softplus x): f'' = (1 - T^2) s (2 + x (1 - s - 2 T s)), s = sigma(x)."""
    T = np.tanh(_np_softplus(x))
    s = sc.expit(x)
    return s * _sech2(_np_softplus(x)) * (2.0 + x * (sc.expit(-x) - 2.0 * T * s))


def _elu(name, p):
    if name == "elu":
        a = check_param(name, p, "alpha", 1.0)
        s = 1.0
        params = {"alpha": a} if a != 1.0 else {}
    else:
        a, s = SELU_ALPHA, SELU_SCALE
        params = {}
    check_no_params(name, p)
    return params, dict(
        fn=lambda x: s * np.where(x > 0, x, a * np.expm1(np.minimum(x, 0.0))),
        expr=f"{s!r}*(max(x, 0) + {a!r}*(exp(min(x, 0)) - 1))", kinks=(0.0,), features=(0.0,), alpha=a, scale=s,
        # s (x 1{x > 0} - a 1{x <= 0}) up to s a e^x 1{x <= 0}, below 4e-18 beyond x = -R; e^x is entire
        asymptote=(((-math.inf, 0.0, (-a * s,)), (0.0, math.inf, (0.0, s))), 40.0 + math.log(max(1.0, abs(a * s))),
                   1.0, math.pi),
        derivative=lambda x: s * np.where(x > 0, 1.0, a * np.exp(np.minimum(x, 0.0))),
        second_derivative=lambda x: s * np.where(x > 0, 0.0, a * np.exp(np.minimum(x, 0.0))),
        array_fn=lambda x, xp: s * xp.where(x > 0, x, a * xp.expm1(xp.minimum(x, 0.0))))


def _softplus(name, p):
    b = check_param(name, p, "beta", 1.0, positive=True)
    check_no_params(name, p)
    unit = None if b == 1.0 else builtin_core("softplus", {})  # the family reads its numerics off the unit
    return ({"beta": b} if b != 1.0 else {}), dict(beta=b, unit=unit,
        fn=lambda x: _np_softplus(b * x) / b, expr=f"log(1 + exp({b!r}*x))/{b!r}", features=(0.0,),
        # e^(-b R) / b <= 4e-18; log1p(e^(-b|x|)) is singular where e^(-b x) = -1: b x = +-i pi
        asymptote=(_RELU, (40.0 + math.log(max(1.0, 1.0 / b))) / b, 1.0 / b, math.pi),
        derivative=lambda x: sc.expit(b * x), second_derivative=lambda x: b * sc.expit(b * x) * sc.expit(-b * x),
        array_fn=lambda x, xp: _softplus_xp(b * x, xp) / b)


def _monomial(name, p):
    k = check_param(name, p, "k", 1, integer=True, lo=0)
    check_no_params(name, p)
    coeffs = (0,) * k + (1,)
    return {"k": k}, dict(
        fn=lambda x: np.asarray(x, dtype=np.float64) ** k, parity=1 if k % 2 == 0 else -1,
        derivative=lambda x: k * np.asarray(x, dtype=np.float64) ** (k - 1) if k > 0 else np.zeros_like(x),
        second_derivative=lambda x: (k * (k - 1) * np.asarray(x, dtype=np.float64) ** (k - 2) if k > 1
                                     else np.zeros_like(x)),
        pieces=((-math.inf, math.inf, coeffs),), array_fn=lambda x, xp: x**k if k > 0 else xp.ones_like(x))


def _hermite(name, p):
    k = check_param(name, p, "k", 1, integer=True, lo=0)
    check_no_params(name, p)
    coeffs = tuple(int(c) for c in np.polynomial.hermite_e.herme2poly([0] * k + [1]))
    poly = np.polynomial.Polynomial(coeffs)
    dpoly = poly.deriv()
    d2poly = dpoly.deriv()
    return {"k": k}, dict(
        fn=lambda x: poly(np.asarray(x, dtype=np.float64)), parity=1 if k % 2 == 0 else -1,
        derivative=lambda x: dpoly(np.asarray(x, dtype=np.float64)),
        second_derivative=lambda x: d2poly(np.asarray(x, dtype=np.float64)),
        pieces=((-math.inf, math.inf, coeffs),), array_fn=lambda x, xp: _poly_xp(coeffs, x, xp))


# ------------------------------------------------------------------------------------------------
# the table
TABLE = {
    "identity": (ArcCosineCore, _none(a=1.0, b=-1.0)),
    "relu": (ArcCosineCore, _none(a=1.0, b=0.0)),
    "leaky_relu": (ArcCosineCore, _leaky_relu),
    "abs": (ArcCosineCore, _none(a=1.0, b=1.0)),
    "step": (StepCore, _none(a=1.0, b=0.0)),
    "sign": (StepCore, _none(a=1.0, b=-1.0)),
    "hardtanh": (PiecewisePolynomialCore, _hardtanh),
    "relu6": (PiecewisePolynomialCore, _none(
        fn=lambda x: np.clip(x, 0.0, 6.0), kinks=(0.0, 6.0), second_derivative=np.zeros_like,
        derivative=lambda x: ((x > 0) & (x < 6)).astype(np.float64),
        pieces=((-math.inf, 0, (0,)), (0, 6, (0, 1)), (6, math.inf, (6,))),
        array_fn=lambda x, xp: xp.clip(x, 0.0, 6.0))),
    "tanh": (Core, _none(
        fn=np.tanh, expr="tanh(x)", features=(0.0,), parity=-1, derivative=_sech2,
        asymptote=(((-math.inf, 0.0, (-1.0,)), (0.0, math.inf, (1.0,))), 20.0, 1.0),
        second_derivative=lambda x: -2.0 * np.tanh(x) * _sech2(x), array_fn=lambda x, xp: xp.tanh(x))),
    "sigmoid": (Core, _none(
        fn=sc.expit, expr="1/(1 + exp(-x))", features=(0.0,), derivative=lambda x: sc.expit(x) * sc.expit(-x),
        asymptote=(((-math.inf, 0.0, (0.0,)), (0.0, math.inf, (1.0,))), 40.0, 1.0, math.pi),  # poles at +-i pi
        second_derivative=_sigmoid_d2, array_fn=_expit_xp)),
    "erf": (ErfCore, _none(array_fn=_erf_xp)),
    "gelu": (GeluCore, _none(array_fn=lambda x, xp: 0.5 * x * (1.0 + _erf_xp(x / math.sqrt(2.0), xp)))),
    "gelu_tanh": (Core, _gelu_tanh),
    "silu": (Core, _none(
        fn=lambda x: x * sc.expit(x), expr="x/(1 + exp(-x))", features=(0.0,),
        asymptote=(_RELU, 42.0, 1.0, math.pi),  # x expit(x): poles at +-i pi
        derivative=lambda x: sc.expit(x) * (1 + x * sc.expit(-x)),  # f'' = s'(2 + x (1 - 2s)), s' = s(1 - s)
        second_derivative=lambda x: sc.expit(x) * sc.expit(-x) * (2.0 + x * (sc.expit(-x) - sc.expit(x))),
        array_fn=lambda x, xp: x * _expit_xp(x, xp))),
    "mish": (Core, _none(
        fn=lambda x: x * np.tanh(_np_softplus(x)), expr="x*tanh(log(1 + exp(x)))", features=(0.0,),
        asymptote=(_RELU, 42.0, 1.0),
        derivative=lambda x: np.tanh(_np_softplus(x)) + x * sc.expit(x) * _sech2(_np_softplus(x)),
        second_derivative=_mish_d2, array_fn=lambda x, xp: x * xp.tanh(_softplus_xp(x, xp)))),
    "elu": (ExpLinearCore, _elu),
    "selu": (ExpLinearCore, _elu),
    "softplus": (SoftplusCore, _softplus),
    "sin": (SinCore, _none()),
    "cos": (CosCore, _none()),
    "exp": (ExpCore, _none()),
    "gaussian": (GaussianCore, _none()),
    "monomial": (PiecewisePolynomialCore, _monomial),
    "hermite": (PiecewisePolynomialCore, _hermite),
}
ALIASES = {"linear": "identity", "swish": "silu", "heaviside": "step", "gelu_erf": "gelu", "he": "hermite"}
_NAMES = tuple(TABLE)
_CACHE: dict = {}


def builtin_names() -> tuple:
    """Names of the built-in activations."""
    return _NAMES


def resolve(name: str) -> str | None:
    """The built-in name for ``name`` (case-insensitive, aliases resolved), or None."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in TABLE else None


def builtin_core(name: str, params: dict) -> Core:
    """The core of a built-in with the given parameters (cached by name and parameters)."""
    key = (name, tuple(sorted((k, repr(v)) for k, v in params.items())))
    core = _CACHE.get(key)
    if core is None:
        cls, make = TABLE[name]
        spec_params, fields = make(name, dict(params))
        core = cls.build(name, spec_params, **fields)
        _CACHE[key] = core
    return core
