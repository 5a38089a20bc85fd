"""The `Activation` type and the registry of built-in activations.

An activation is stored as a *core* function phi together with an outer affine map,

    f(x) = gamma * (phi(gain * x) + alpha * x + beta),

so that gains (``activation("relu", gain=2)``) and the transformations of Vatanen, Raiko, Valpola and
LeCun (2013) (``hermite.transform``) keep every closed form of phi: the Hermite coefficients and dual
kernels of f follow exactly from those of phi (see ``hermite.numeric`` and ``hermite.kernels``).

A core knows its numpy-vectorized function, its sympy expression when it has one, the points where it is
not smooth (``kinks``; ``jumps`` are the kinks where it is discontinuous), the points near which it
varies on the unit scale (``features``, used to grade quadrature panels at large input variance), its
parity, its derivative, and for piecewise polynomials the exact pieces.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.special as sc

__all__ = ["Activation", "activation", "builtin_names", "parse_expression"]

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


@dataclass(frozen=True, eq=False)
class Core:
    """A scalar function phi with the metadata the numerics need (internal; see `Activation`)."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    params: dict = field(default_factory=dict)
    expr: Any = None  # sympy expression in the real symbol x, or None
    kinks: tuple = ()  # points where phi or a derivative is discontinuous
    jumps: tuple = ()  # subset of kinks where phi itself jumps
    features: tuple = ()  # points near which phi varies on the unit scale
    frequency: float = 0.0  # oscillation frequency (sin, cos), 0 if none
    parity: int | None = None  # +1 even, -1 odd, None unknown/neither
    derivative: Callable | None = None  # numpy phi' (between the kinks)
    pieces: tuple | None = None  # ((a, b, (p0, p1, ...)), ...) exact piecewise polynomial
    closed_form: tuple | None = None  # (family, params) for closed-form kernels
    array_fn: Callable | None = None  # (x, xp) -> phi(x) with array-API functions only
    spec: dict | None = None  # JSON-safe description, None for an opaque callable


@dataclass(frozen=True, eq=False)
class Activation:
    """f(x) = gamma * (phi(gain * x) + alpha * x + beta) for a core phi.

    Build with `hermite.activation`; transform with `hermite.transform`. Calling it evaluates f on a
    numpy array (float64). ``act.fn`` is the numpy function, ``act.kinks`` the points (in x) where f is
    not smooth, ``act.parity`` +1 (even), -1 (odd) or None.
    """

    core: Core
    gain: float = 1.0
    alpha: float = 0.0
    beta: float = 0.0
    gamma: float = 1.0
    label: str | None = None

    # ----------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        if self.label:
            return self.label
        s = self.core.name
        if self.gain != 1.0:
            s = f"{s}(gain={self.gain:g})"
        if (self.alpha, self.beta, self.gamma) != (0.0, 0.0, 1.0):
            s = f"{self.gamma:.6g}*({s} + {self.alpha:.6g}*x + {self.beta:.6g})"
        return s

    @property
    def params(self) -> dict:
        return dict(self.core.params)

    @property
    def is_plain(self) -> bool:
        """True when f is the core itself (no gain, no affine part)."""
        return (self.gain, self.alpha, self.beta, self.gamma) == (1.0, 0.0, 0.0, 1.0)

    @property
    def kinks(self) -> tuple:
        return tuple(sorted(t / self.gain for t in self.core.kinks))

    @property
    def jumps(self) -> tuple:
        return tuple(sorted(t / self.gain for t in self.core.jumps))

    @property
    def parity(self) -> int | None:
        p = self.core.parity
        if p == -1 and self.beta == 0.0:  # odd + alpha x stays odd
            return -1
        if p == 1 and self.alpha == 0.0:  # even + beta stays even
            return 1
        return None

    @property
    def expr(self):
        """sympy expression of f in the real symbol x, or None."""
        base = core_expr(self.core)
        if base is None:
            return None
        import sympy as sp

        x = sp.Symbol("x", real=True)
        g = _sym_number(self.gain)
        e = base.subs(x, g * x) if self.gain != 1.0 else base
        if not self.is_plain:
            e = _sym_number(self.gamma) * (e + _sym_number(self.alpha) * x + _sym_number(self.beta))
        return e

    def fn(self, x):
        x = np.asarray(x, dtype=np.float64)
        y = self.core.fn(self.gain * x if self.gain != 1.0 else x)
        if self.is_plain:
            return y
        return self.gamma * (y + self.alpha * x + self.beta)

    __call__ = fn

    def derivative(self, x):
        """f'(x) between the kinks (the weak derivative; jumps are not included)."""
        if self.core.derivative is None:
            raise ValueError(
                f"activation {self.name!r} has no derivative: pass derivative= to hermite.activation "
                "or give it as a sympy expression"
            )
        x = np.asarray(x, dtype=np.float64)
        d = self.core.derivative(self.gain * x) * self.gain
        return self.gamma * (d + self.alpha)

    def array_fn(self, x, xp):
        """f on an array of any array-API namespace ``xp`` (used by the finite-width simulator)."""
        if self.core.array_fn is None:
            y = self.core.fn(self.gain * x if self.gain != 1.0 else x)  # numpy ufuncs dispatch (cupy)
        else:
            y = self.core.array_fn(self.gain * x if self.gain != 1.0 else x, xp)
        if self.is_plain:
            return y
        return self.gamma * (y + self.alpha * x + self.beta)

    # ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain, JSON-safe description (raises ValueError for an opaque user callable)."""
        if self.core.spec is None:
            raise ValueError(
                f"activation {self.name!r} is an opaque Python callable and cannot be serialized; "
                "give it as a string or sympy expression to make it serializable"
            )
        d = dict(self.core.spec)
        for k, default in (("gain", 1.0), ("alpha", 0.0), ("beta", 0.0), ("gamma", 1.0)):
            v = getattr(self, k)
            if v != default:
                d[k] = float(v)
        if self.label:
            d["label"] = self.label
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Activation:
        d = dict(d)
        affine = {k: float(d.pop(k)) for k in ("gain", "alpha", "beta", "gamma") if k in d}
        label = d.pop("label", None)
        if "subtract" in d:
            from hermite.transforms import subtract_from_dict

            base = subtract_from_dict(d["subtract"])
        elif "expr" in d:
            base = activation(d["expr"], kinks=d.get("kinks"))
        else:
            base = activation(d["name"], **d.get("params", {}))
        return replace(base, label=label, **affine)

    def _key(self):
        core_key = repr(sorted(self.core.spec.items())) if self.core.spec is not None else id(self.core)
        return (core_key, self.gain, self.alpha, self.beta, self.gamma)

    def __eq__(self, other):
        if not isinstance(other, Activation):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return f"Activation({self.name!r})"


# ------------------------------------------------------------------------------------------------
# array-API helpers
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
    return np.logaddexp(0.0, x)


# ------------------------------------------------------------------------------------------------
# built-ins
def _sym():
    import sympy as sp

    return sp, sp.Symbol("x", real=True)


def _sym_number(v: float):
    import sympy as sp

    return sp.nsimplify(v, rational=True) if float(v).is_integer() else sp.Float(v, 20)


def _core_relu(**p):
    _no_params("relu", p)
    return _mk(
        "relu", {}, lambda x: np.maximum(x, 0.0), kinks=(0.0,),
        derivative=lambda x: (x > 0).astype(np.float64),
        pieces=((-math.inf, 0, (0,)), (0, math.inf, (0, 1))), closed_form=("homog1", (1.0, 0.0)),
        array_fn=lambda x, xp: xp.maximum(x, 0.0),
    )


def _mk(name, params, fn, *, expr=None, kinks=(), jumps=(), features=(), frequency=0.0, parity=None,
        derivative=None, pieces=None, closed_form=None, array_fn=None):
    spec = {"name": name}
    if params:
        spec["params"] = dict(params)
    return Core(name, fn, dict(params), expr, tuple(float(k) for k in kinks), tuple(float(j) for j in jumps),
                tuple(features), float(frequency), parity, derivative, pieces, closed_form, array_fn, spec)


def core_expr(core: Core):
    """The sympy expression of a core (built lazily from its formula or pieces), or None."""
    e = core.expr
    if isinstance(e, str):
        return parse_expression(e)
    if e is None and core.pieces is not None:
        return _pieces_expr(core.pieces)
    return e


def _pieces_expr(pieces):
    sp, x = _sym()
    args = []
    for _a, b, coeffs in pieces:
        poly = sum(sp.nsimplify(c) * x**i for i, c in enumerate(coeffs))
        if b == math.inf:
            args.append((poly, True))
        else:
            args.append((poly, x < sp.nsimplify(b)))
    return sp.Piecewise(*args)


def _no_params(name, p):
    if p:
        raise ValueError(f"activation {name!r} takes no parameters, got {sorted(p)}")


def _param(name, p, key, default, *, positive=False, integer=False, lo=None):
    v = p.pop(key, default)
    if integer:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not float(v).is_integer():
            raise ValueError(f"activation {name!r}: {key}={v!r} must be an integer")
        v = int(v)
        if lo is not None and v < lo:
            raise ValueError(f"activation {name!r}: {key}={v!r} must be >= {lo}")
        return v
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"activation {name!r}: {key}={v!r} must be a real number") from None
    if not math.isfinite(v):
        raise ValueError(f"activation {name!r}: {key}={v!r} must be finite")
    if positive and v <= 0:
        raise ValueError(f"activation {name!r}: {key}={v!r} must be > 0")
    return v


def _build(name: str, p: dict) -> Core:
    p = dict(p)
    if name == "identity":
        _no_params(name, p)
        return _mk(name, {}, lambda x: np.array(x, dtype=np.float64, copy=True), parity=-1,
                   derivative=lambda x: np.ones_like(x), pieces=((-math.inf, math.inf, (0, 1)),),
                   closed_form=("homog1", (1.0, -1.0)), array_fn=lambda x, xp: x + 0.0)
    if name == "relu":
        return _core_relu(**p)
    if name == "leaky_relu":
        a = _param(name, p, "negative_slope", 0.01)
        _no_params(name, p)
        return _mk(name, {"negative_slope": a}, lambda x: np.where(x > 0, x, a * x), kinks=(0.0,),
                   parity=-1 if a == 1.0 else (1 if a == -1.0 else None),
                   derivative=lambda x: np.where(x > 0, 1.0, a),
                   pieces=((-math.inf, 0, (0, a)), (0, math.inf, (0, 1))), closed_form=("homog1", (1.0, -a)),
                   array_fn=lambda x, xp: xp.where(x > 0, x, a * x))
    if name == "abs":
        _no_params(name, p)
        return _mk(name, {}, np.abs, kinks=(0.0,), parity=1, derivative=np.sign,
                   pieces=((-math.inf, 0, (0, -1)), (0, math.inf, (0, 1))), closed_form=("homog1", (1.0, 1.0)),
                   array_fn=lambda x, xp: xp.abs(x))
    if name == "step":
        _no_params(name, p)
        return _mk(name, {}, lambda x: (np.asarray(x) > 0).astype(np.float64), kinks=(0.0,), jumps=(0.0,),
                   derivative=np.zeros_like, pieces=((-math.inf, 0, (0,)), (0, math.inf, (1,))),
                   closed_form=("homog0", (1.0, 0.0)),
                   array_fn=lambda x, xp: xp.astype(x > 0, x.dtype))
    if name == "sign":
        _no_params(name, p)
        return _mk(name, {}, np.sign, kinks=(0.0,), jumps=(0.0,), parity=-1, derivative=np.zeros_like,
                   pieces=((-math.inf, 0, (-1,)), (0, math.inf, (1,))), closed_form=("homog0", (1.0, -1.0)),
                   array_fn=lambda x, xp: xp.sign(x))
    if name == "hardtanh":
        lo = _param(name, p, "min_val", -1.0)
        hi = _param(name, p, "max_val", 1.0)
        _no_params(name, p)
        if not lo < hi:
            raise ValueError(f"activation 'hardtanh': min_val={lo} must be < max_val={hi}")
        return _mk(name, {"min_val": lo, "max_val": hi} if (lo, hi) != (-1.0, 1.0) else {},
                   lambda x: np.clip(x, lo, hi), kinks=(lo, hi), parity=-1 if lo == -hi else None,
                   derivative=lambda x: ((x > lo) & (x < hi)).astype(np.float64),
                   pieces=((-math.inf, lo, (lo,)), (lo, hi, (0, 1)), (hi, math.inf, (hi,))),
                   array_fn=lambda x, xp: xp.clip(x, lo, hi))
    if name == "relu6":
        _no_params(name, p)
        return _mk(name, {}, lambda x: np.clip(x, 0.0, 6.0), kinks=(0.0, 6.0),
                   derivative=lambda x: ((x > 0) & (x < 6)).astype(np.float64),
                   pieces=((-math.inf, 0, (0,)), (0, 6, (0, 1)), (6, math.inf, (6,))),
                   array_fn=lambda x, xp: xp.clip(x, 0.0, 6.0))
    if name == "tanh":
        _no_params(name, p)
        return _mk(name, {}, np.tanh, expr="tanh(x)", features=(0.0,), parity=-1,
                   derivative=lambda x: 1.0 / np.cosh(x) ** 2, array_fn=lambda x, xp: xp.tanh(x))
    if name == "sigmoid":
        _no_params(name, p)
        return _mk(name, {}, sc.expit, expr="1/(1 + exp(-x))", features=(0.0,),
                   derivative=lambda x: sc.expit(x) * sc.expit(-x), array_fn=_expit_xp)
    if name == "erf":
        _no_params(name, p)
        return _mk(name, {}, sc.erf, expr="erf(x)", features=(0.0,), parity=-1,
                   derivative=lambda x: 2.0 / math.sqrt(math.pi) * np.exp(-x * x), closed_form=("erf", ()),
                   array_fn=_erf_xp)
    if name == "gelu":
        _no_params(name, p)
        return _mk(name, {}, lambda x: x * sc.ndtr(x), expr="x*(1 + erf(x/sqrt(2)))/2",
                   features=(0.0,), derivative=lambda x: sc.ndtr(x) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi),
                   closed_form=("gelu", ()),
                   array_fn=lambda x, xp: 0.5 * x * (1.0 + _erf_xp(x / math.sqrt(2.0), xp)))
    if name == "gelu_tanh":
        _no_params(name, p)
        k = math.sqrt(2 / math.pi)

        def gt(x):
            return 0.5 * x * (1.0 + np.tanh(k * (x + 0.044715 * x**3)))

        def dgt(x):
            t = np.tanh(k * (x + 0.044715 * x**3))
            return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3 * 0.044715 * x * x)

        e = "x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x**3)))/2"
        return _mk(name, {}, gt, expr=e, features=(0.0,), derivative=dgt,
                   array_fn=lambda x, xp: 0.5 * x * (1.0 + xp.tanh(k * (x + 0.044715 * x * x * x))))
    if name == "silu":
        _no_params(name, p)
        return _mk(name, {}, lambda x: x * sc.expit(x), expr="x/(1 + exp(-x))", features=(0.0,),
                   derivative=lambda x: sc.expit(x) * (1 + x * sc.expit(-x)),
                   array_fn=lambda x, xp: x * _expit_xp(x, xp))
    if name == "mish":
        _no_params(name, p)
        e = "x*tanh(log(1 + exp(x)))"
        return _mk(name, {}, lambda x: x * np.tanh(_np_softplus(x)), expr=e, features=(0.0,),
                   derivative=lambda x: np.tanh(_np_softplus(x)) + x * sc.expit(x) / np.cosh(_np_softplus(x)) ** 2,
                   array_fn=lambda x, xp: x * xp.tanh(_softplus_xp(x, xp)))
    if name in ("elu", "selu"):
        if name == "elu":
            a = _param(name, p, "alpha", 1.0)
            s = 1.0
            params = {"alpha": a} if a != 1.0 else {}
        else:
            a, s = SELU_ALPHA, SELU_SCALE
            params = {}
        _no_params(name, p)
        e = f"{s!r}*(max(x, 0) + {a!r}*(exp(min(x, 0)) - 1))"
        return _mk(name, params, lambda x: s * np.where(x > 0, x, a * np.expm1(np.minimum(x, 0.0))), expr=e,
                   kinks=(0.0,), features=(0.0,),
                   derivative=lambda x: s * np.where(x > 0, 1.0, a * np.exp(np.minimum(x, 0.0))),
                   array_fn=lambda x, xp: s * xp.where(x > 0, x, a * xp.expm1(xp.minimum(x, 0.0))))
    if name == "softplus":
        b = _param(name, p, "beta", 1.0, positive=True)
        _no_params(name, p)
        e = f"log(1 + exp({b!r}*x))/{b!r}"
        return _mk(name, {"beta": b} if b != 1.0 else {}, lambda x: _np_softplus(b * x) / b, expr=e,
                   features=(0.0,), derivative=lambda x: sc.expit(b * x),
                   array_fn=lambda x, xp: _softplus_xp(b * x, xp) / b)
    if name == "sin":
        _no_params(name, p)
        return _mk(name, {}, np.sin, expr="sin(x)", frequency=1.0, parity=-1, derivative=np.cos,
                   closed_form=("sin", ()), array_fn=lambda x, xp: xp.sin(x))
    if name == "cos":
        _no_params(name, p)
        return _mk(name, {}, np.cos, expr="cos(x)", frequency=1.0, parity=1, derivative=lambda x: -np.sin(x),
                   closed_form=("cos", ()), array_fn=lambda x, xp: xp.cos(x))
    if name == "exp":
        _no_params(name, p)
        return _mk(name, {}, np.exp, expr="exp(x)", derivative=np.exp, closed_form=("exp", ()),
                   array_fn=lambda x, xp: xp.exp(x))
    if name == "gaussian":
        _no_params(name, p)
        return _mk(name, {}, lambda x: np.exp(-0.5 * x * x), expr="exp(-x**2/2)", features=(0.0,), parity=1,
                   derivative=lambda x: -x * np.exp(-0.5 * x * x), closed_form=("gaussian", ()),
                   array_fn=lambda x, xp: xp.exp(-0.5 * x * x))
    if name == "monomial":
        k = _param(name, p, "k", 1, integer=True, lo=0)
        _no_params(name, p)
        coeffs = (0,) * k + (1,)
        return _mk(name, {"k": k}, lambda x: np.asarray(x, dtype=np.float64) ** k,
                   parity=1 if k % 2 == 0 else -1, derivative=lambda x: k * np.asarray(x, dtype=np.float64) ** (k - 1)
                   if k > 0 else np.zeros_like(x), pieces=((-math.inf, math.inf, coeffs),),
                   array_fn=lambda x, xp: x**k if k > 0 else xp.ones_like(x))
    if name == "hermite":
        k = _param(name, p, "k", 1, integer=True, lo=0)
        _no_params(name, p)
        coeffs = tuple(int(c) for c in np.polynomial.hermite_e.herme2poly([0] * k + [1]))
        poly = np.polynomial.Polynomial(coeffs)
        dpoly = poly.deriv()
        return _mk(name, {"k": k}, lambda x: poly(np.asarray(x, dtype=np.float64)),
                   parity=1 if k % 2 == 0 else -1, derivative=lambda x: dpoly(np.asarray(x, dtype=np.float64)),
                   pieces=((-math.inf, math.inf, coeffs),), closed_form=("hermite", (k,)),
                   array_fn=lambda x, xp: _poly_xp(coeffs, x, xp))
    raise ValueError(f"unknown activation {name!r}; built-ins are: {', '.join(builtin_names())}")


def _poly_xp(coeffs, x, xp):
    y = xp.zeros_like(x) + float(coeffs[-1])
    for c in reversed(coeffs[:-1]):
        y = y * x + float(c)
    return y


_BUILTINS = (
    "identity", "relu", "leaky_relu", "abs", "step", "sign", "hardtanh", "relu6", "tanh", "sigmoid",
    "erf", "gelu", "gelu_tanh", "silu", "mish", "elu", "selu", "softplus", "sin", "cos", "exp",
    "gaussian", "monomial", "hermite",
)
_ALIASES = {"linear": "identity", "swish": "silu", "heaviside": "step", "gelu_erf": "gelu", "he": "hermite"}


def builtin_names() -> tuple:
    """Names of the built-in activations."""
    return _BUILTINS


_CACHE: dict = {}


def _builtin(name: str, params: dict) -> Core:
    key = (name, tuple(sorted((k, repr(v)) for k, v in params.items())))
    core = _CACHE.get(key)
    if core is None:
        core = _build(name, params)
        _CACHE[key] = core
    return core


# ------------------------------------------------------------------------------------------------
# safe expression parsing
_FUNCS = {
    "exp": "exp", "log": "log", "sin": "sin", "cos": "cos", "tan": "tan", "tanh": "tanh", "sinh": "sinh",
    "cosh": "cosh", "erf": "erf", "erfc": "erfc", "sqrt": "sqrt", "abs": "Abs", "Abs": "Abs",
    "Max": "Max", "max": "Max", "Min": "Min", "min": "Min", "sign": "sign", "Heaviside": "Heaviside",
    "atan": "atan", "arctan": "atan", "asinh": "asinh", "arcsinh": "asinh", "log1p": None,
}
_CONSTS = {"pi": "pi", "e": "E", "E": "E"}


def parse_expression(text: str):
    """Parse a formula in one variable (x) into a sympy expression, without evaluating any code.

    Only numbers, the variable ``x``, the constants pi and e, the operators + - * / ** and the functions
    exp, log, log1p, sin, cos, tan, tanh, sinh, cosh, erf, erfc, sqrt, abs, max, min, sign, Heaviside,
    atan, asinh are allowed. Anything else is a ValueError.
    """
    import sympy as sp

    x = sp.Symbol("x", real=True)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"activation expression {text!r} must be a non-empty string")
    if len(text) > 2000:
        raise ValueError("activation expression is longer than 2000 characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"activation expression {text!r} is not a valid formula: {exc.msg}") from None

    def conv(node):
        if isinstance(node, ast.Expression):
            return conv(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return sp.nsimplify(node.value) if isinstance(node.value, int) else sp.Float(node.value)
        if isinstance(node, ast.Name):
            if node.id == "x":
                return x
            if node.id in _CONSTS:
                return getattr(sp, _CONSTS[node.id])
            raise ValueError(f"activation expression {text!r}: unknown name {node.id!r} (the variable is 'x'; "
                             f"allowed functions: {', '.join(sorted(_FUNCS))})")
        if isinstance(node, ast.BinOp):
            a, b = conv(node.left), conv(node.right)
            ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
                   ast.Div: lambda: a / b, ast.Pow: lambda: a**b}
            if type(node.op) not in ops:
                raise ValueError(f"activation expression {text!r}: operator {type(node.op).__name__} not allowed")
            return ops[type(node.op)]()
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = conv(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            fname = node.func.id
            if fname not in _FUNCS:
                raise ValueError(f"activation expression {text!r}: unknown function {fname!r}; allowed: "
                                 f"{', '.join(sorted(_FUNCS))}")
            args = [conv(a) for a in node.args]
            if fname == "log1p":
                return sp.log(1 + args[0])
            return getattr(sp, _FUNCS[fname])(*args)
        raise ValueError(f"activation expression {text!r}: {type(node).__name__} is not allowed in a formula")

    expr = conv(tree)
    if expr.free_symbols - {x}:
        raise ValueError(f"activation expression {text!r} has free symbols other than x")
    return expr



def _lambdify(expr):
    import sympy as sp

    x = sp.Symbol("x", real=True)
    f = sp.lambdify(x, expr, modules=[{"Heaviside": lambda t, h=0.5: np.heaviside(t, h)}, "scipy", "numpy"])

    def g(t):
        t = np.asarray(t, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            return np.broadcast_to(np.asarray(f(t), dtype=np.float64), t.shape).copy()

    return g


def _expr_kinks(expr) -> tuple:
    """Real points where a Piecewise/Abs/Max/Min/sign/Heaviside in ``expr`` switches."""
    import sympy as sp

    x = sp.Symbol("x", real=True)
    args = []
    for node in sp.preorder_traversal(expr):
        if isinstance(node, (sp.Abs, sp.sign, sp.Heaviside)):
            args.append(node.args[0])
        elif isinstance(node, (sp.Max, sp.Min)):
            a = list(node.args)
            args.extend(ai - aj for i, ai in enumerate(a) for aj in a[i + 1:])
        elif isinstance(node, sp.Piecewise):
            for _, cond in node.args:
                if cond is not sp.true and hasattr(cond, "lhs"):
                    args.append(cond.lhs - cond.rhs)
    pts = set()
    for a in args:
        if not a.has(x):
            continue
        try:
            sols = sp.solve(sp.Eq(a, 0), x)
        except Exception:  # noqa: BLE001 - sympy raises many kinds
            sols = None
        if sols is None or any(not s.is_real for s in sols if s.is_real is not None):
            raise ValueError(f"could not locate the kinks of {expr}; pass kinks=[...] explicitly")
        pts.update(float(s) for s in sols if s.is_real)
    return tuple(sorted(pts))


def _expr_parity(expr):
    import sympy as sp

    x = sp.Symbol("x", real=True)
    try:
        m = expr.subs(x, -x)
        if sp.simplify(m - expr) == 0:
            return 1
        if sp.simplify(m + expr) == 0:
            return -1
    except Exception:  # noqa: BLE001
        return None
    return None


def _find_jumps(fn, kinks) -> list:
    """The kinks where fn is discontinuous (compared a hair to either side)."""
    jumps = []
    for t in kinks:
        eps = 1e-9 * max(1.0, abs(t))
        lo, hi = fn(np.array([t - eps, t + eps]))
        if abs(hi - lo) > 1e-6 * max(1.0, abs(hi) + abs(lo)):
            jumps.append(t)
    return jumps


def _from_expr(expr, kinks=None, name=None, source=None) -> Core:
    import sympy as sp

    x = sp.Symbol("x", real=True)
    free = expr.free_symbols
    if len(free) > 1:
        raise ValueError(f"activation expression {expr} must have exactly one free symbol, "
                         f"has {sorted(map(str, free))}")
    if free and free != {x}:
        expr = expr.subs(next(iter(free)), x)
    if kinks is None:
        kinks = _expr_kinks(expr)
    fn = _lambdify(expr)
    deriv = _lambdify(sp.diff(expr, x))
    jumps = _find_jumps(fn, kinks)
    text = source if source is not None else str(expr)
    spec = {"expr": text}
    if kinks:
        spec["kinks"] = [float(k) for k in kinks]
    return Core(name or text, fn, {}, expr, tuple(float(k) for k in kinks), tuple(jumps), (0.0,), 0.0,
                _expr_parity(expr), deriv, None, None, None, spec)


# ------------------------------------------------------------------------------------------------
def activation(act: Any, *, gain: float | None = None, kinks=None, derivative=None, parity=None,
               name: str | None = None, **params) -> Activation:
    """Return an `Activation` from a name, an Activation, a callable or a formula.

    Parameters
    ----------
    act : str, Activation, callable or sympy expression
        A built-in name (see `builtin_names`), a formula in x such as ``"x*tanh(x)"`` (parsed safely,
        never evaluated as code), a sympy expression in one symbol, or a numpy-vectorized callable.
    gain : float, optional
        Return f(gain * x) instead of f(x) (gain > 0).
    kinks : sequence of float, optional
        For a callable: the points where it is not smooth (quadrature is split there). Required for
        accuracy with kinked callables; a formula's kinks are found automatically.
    derivative : callable, optional
        For a callable: its derivative, needed for derivative kernels by direct quadrature.
    parity : {1, -1, None}, optional
        For a callable: declare it even (1) or odd (-1).
    **params
        Parameters of a built-in, e.g. ``negative_slope`` for leaky_relu, ``alpha`` for elu, ``beta``
        for softplus, ``k`` for monomial and hermite, ``min_val``/``max_val`` for hardtanh.

    Examples
    --------
    >>> import hermite
    >>> f = hermite.activation("leaky_relu", negative_slope=0.2)
    >>> float(f(-1.0))
    -0.2
    >>> hermite.activation("x*tanh(x)").parity
    1
    """
    if isinstance(act, Activation):
        if params or kinks is not None or derivative is not None:
            raise ValueError("parameters cannot be applied to an existing Activation; build a new one")
        out = act
    elif isinstance(act, str):
        key = act.strip()
        lname = _ALIASES.get(key.lower(), key.lower())
        if lname in _BUILTINS:
            if kinks is not None or derivative is not None:
                raise ValueError(f"kinks= and derivative= are for user callables, not the built-in {lname!r}")
            out = Activation(_builtin(lname, params))
        else:
            if params:
                raise ValueError(f"unknown activation {act!r}; built-ins are: {', '.join(_BUILTINS)}")
            try:
                expr = parse_expression(key)
            except ValueError as exc:
                raise ValueError(f"unknown activation {act!r}: not a built-in ({', '.join(_BUILTINS)}) "
                                 f"and not a safe formula in x ({exc})") from None
            out = Activation(_from_expr(expr, kinks, name=name, source=key))
    elif _is_sympy(act):
        out = Activation(_from_expr(act, kinks, name=name))
    elif callable(act):
        if params:
            raise ValueError(f"unexpected parameters {sorted(params)} for a callable activation")
        fn = _wrap_callable(act)
        kk = tuple(sorted(float(k) for k in (kinks or ())))
        for k in kk:
            if not math.isfinite(k):
                raise ValueError(f"kinks must be finite numbers, got {k!r}")
        if parity not in (None, 1, -1):
            raise ValueError(f"parity={parity!r} must be 1 (even), -1 (odd) or None")
        jumps = _find_jumps(fn, kk)
        d = _wrap_callable(derivative) if derivative is not None else None
        nm = name or getattr(act, "__name__", "callable")
        out = Activation(Core(nm, fn, {}, None, kk, tuple(jumps), (0.0,), 0.0, parity, d, None, None, None, None))
    else:
        raise ValueError(f"activation must be a name, a formula string, a sympy expression or a callable; "
                         f"got {type(act).__name__}")
    if gain is not None:
        g = float(gain)
        if not (math.isfinite(g) and g > 0):
            raise ValueError(f"gain={gain!r} must be a finite number > 0")
        # f(g x) = gamma (phi(gain g x) + alpha g x + beta)
        out = replace(out, gain=out.gain * g, alpha=out.alpha * g, label=None)
    return out


def _is_sympy(obj) -> bool:
    mod = type(obj).__module__ or ""
    return mod.startswith("sympy")


def _wrap_callable(f):
    def g(x):
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            y = np.asarray(f(x), dtype=np.float64)
        if y.shape != x.shape:
            try:
                y = np.broadcast_to(y, x.shape).copy()
            except ValueError:
                raise ValueError(f"activation callable returned shape {y.shape} for input shape {x.shape}; "
                                 "it must be numpy-vectorized (elementwise)") from None
        return y

    probe = np.linspace(-3, 3, 7)
    try:
        g(probe)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"activation callable failed on a numpy array ({type(exc).__name__}: {exc}); "
                         "it must accept and return numpy arrays elementwise") from None
    return g
