"""Cores: the scalar functions phi behind activations, and what is known about their Gaussian integrals.

The base class `Core` computes everything numerically for any phi smooth between its kinks: coefficients
c_k(Q) = E[phi(sqrt(Q) z) h_k(z)] by kink-split, feature-graded quadrature (`hermite.quadrature`, with
verified Gauss-Hermite and Chebyshev-in-log-q (`hermite.log_q_tables`) fast paths for engines), the second
moment, the derivative moment E phi'^2, and the dual kernel from a verified table where many entries share a
variance pair (`hermite.tables`), else entry by entry (`hermite.pairs`: the Mehler series
sum_k c_k(Q1) c_k(Q2) r^k wherever its remainder is proven, closed piecewise-linear and asymptotic forms,
two-dimensional quadrature). It knows no exact coefficients (ValueError) and no homogeneity degree (None).

A closed-form family is a subclass overriding only what it knows: ``closed_coefficients``,
``closed_second_moment``, ``closed_kernel`` (None where it knows nothing), ``exact_coefficients``,
``homogeneous_degree``. Here: piecewise polynomials, the arc-cosine family a relu(x) + b relu(-x) (Cho and
Saul 2009), the step family a 1{x>0} + b 1{x<0}, erf (Williams 1997), exp, sin, cos, the gaussian
exp(-x^2/2), gelu x Phi(x); and the user cores: formulas, opaque callables, and the polynomial-subtracted
cores of `hermite.transform`. `hermite.builtins` maps names to these classes.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import scipy.special as sc

from hermite import log_q_tables, quadrature, tables
from hermite.arc_cosine import ARC_FORMS, arc_cosine_kernel, step_kernel, two_sided
from hermite.basis import hermite_polynomials, piecewise_coefficients, piecewise_linear_coefficients
from hermite.bivariate import linear_pieces
from hermite.smoothing import exp_linear_smoothing, piecewise_smoothing

__all__ = ["Core", "NoClosedForm", "PiecewisePolynomialCore", "ArcCosineCore", "StepCore", "ErfCore",
           "ExpCore", "SinCore", "CosCore", "GaussianCore", "GeluCore", "ExpressionCore", "CallableCore",
           "SubtractedCore", "ExpLinearCore", "SoftplusCore"]

_MEMO: OrderedDict = OrderedDict()
_SQUARES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _square_of(core: Core) -> Core:
    """core.squared(), one object per core (the key of its tables in log q)."""
    sq = _SQUARES.get(core)
    if sq is None:
        sq = _SQUARES[core] = core.squared()
    return sq


def _memo(kind: str, core, K: int, Q: np.ndarray, compute):
    """Small LRU memo: engines ask for the same variances several times per layer (kernel, means,
    second moments). The core object is kept in the entry so its id cannot be reused."""
    key = (kind, id(core), K, Q.tobytes())
    hit = _MEMO.get(key)
    if hit is not None:
        _MEMO.move_to_end(key)
        return hit[1]
    val = compute()
    val.setflags(write=False)  # shared: callers read it, the public functions return copies
    _MEMO[key] = (core, val)
    if len(_MEMO) > 64:
        _MEMO.popitem(last=False)
    return val


class NoClosedForm(ValueError):
    """No closed form is known for the Hermite coefficients of the named activation."""

    def __init__(self, name: str):
        super().__init__(f"no closed form is known for the Hermite coefficients of {name!r}; "
                         "use hermite.coefficients (accurate quadrature) instead")


@dataclass(frozen=True, eq=False)
class Core:
    """A scalar function phi with the metadata the numerics need (internal; see `Activation`).

    ``kinks`` are the points where phi or a derivative is discontinuous (``jumps`` those where phi
    itself is), ``features`` the points near which phi varies on the unit scale (quadrature is graded
    towards them at large variance), ``frequency`` the oscillation frequency (sin, cos), ``parity`` +1
    (even), -1 (odd) or None; ``derivative`` and ``second_derivative`` are numpy functions valid between
    the kinks (or None); ``array_fn(x, xp)`` evaluates phi with array-API functions only; ``expr`` is a
    sympy expression or formula string (or None); ``spec`` the JSON-safe description (None: opaque).
    """

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    params: dict = field(default_factory=dict)
    expr: Any = None
    kinks: tuple = ()
    jumps: tuple = ()
    features: tuple = ()
    frequency: float = 0.0
    parity: int | None = None
    derivative: Callable | None = None
    second_derivative: Callable | None = None
    array_fn: Callable | None = None
    spec: dict | None = None
    asymptote: tuple | None = None

    #: ``asymptote`` = (pieces, radius, scale[, strip]): phi minus the piecewise-linear function ``pieces`` ((a,
    #: b, (p0, p1)), ...) is below 1e-16 for |x| > radius and varies on the scale ``scale`` (`hermite.asymptotic`:
    #: silu approaches relu; softplus(beta) too, on the scale 1/beta); the remainder is analytic between its kinks
    #: within ``strip`` scales of the real axis (pi/2 when not given: tanh's poles)

    homogeneous_degree: ClassVar[int | None] = None  # d with phi(c x) = c^d phi(x) for c > 0, d in {0, 1}

    @classmethod
    def build(cls, name: str, params: dict | None = None, **fields):
        """A built-in core: its spec is {"name": name, "params": params} (params only when not empty)."""
        params = dict(params or {})
        spec = {"name": name, "params": dict(params)} if params else {"name": name}
        return cls(name=name, params=params, spec=spec, **fields)

    # --------------------------------------------------------------------------------------------
    # what a family may know in closed form (None: not known)
    def closed_coefficients(self, K: int, Q: np.ndarray) -> np.ndarray | None:
        """c_0..c_K at the 1-D variances Q, shape (Q.size, K+1), or None."""
        return None

    def closed_second_moment(self, Q: np.ndarray) -> np.ndarray | None:
        """E phi(sqrt(Q) z)^2 at the 1-D variances Q, or None."""
        return None

    def closed_kernel(self, r, Q1, Q2, derivative: int) -> np.ndarray | None:
        """E[phi(u) phi(v)] (derivative=1: of phi') on flat arrays, or None."""
        return None

    def closed_smoothing(self, mu: np.ndarray, sigma: float, derivative: int) -> np.ndarray | None:
        """E[phi(mu + sigma Z)] (derivative=1: of phi') for an array mu and a scalar sigma > 0, or None.

        The Gaussian smoothing that removes the inner integral of the two-dimensional kernel quadrature
        (`hermite.smoothing`); kinked families without a closed kernel provide it.
        """
        return None

    def linear_pieces(self, derivative: int) -> list | None:
        """The pieces (a, b, p0, p1) of phi (derivative=1: of phi') when it is piecewise linear, else None: such
        pairs have a closed bivariate kernel (`hermite.bivariate`)."""
        return None

    def exact_coefficients(self, K: int, q) -> list:
        """Exact sympy expressions of c_0..c_K at the (sympy) variance q (NoClosedForm if not known)."""
        raise NoClosedForm(self.name)

    def pieces_expr(self):
        """The sympy expression implied by exact pieces (piecewise polynomials), else None."""
        return None

    @property
    def has_closed_kernel(self) -> bool:
        """Whether the family has a closed kernel (a few ufunc passes per entry; else tables or quadrature)."""
        return type(self).closed_kernel is not Core.closed_kernel

    @property
    def _generic(self) -> bool:
        return not self.has_closed_kernel and type(self).closed_second_moment is Core.closed_second_moment

    # --------------------------------------------------------------------------------------------
    # the generic numerical path
    def numerical_coefficients(self, K: int, Q: np.ndarray, fast: bool = False) -> np.ndarray:
        """c_0..c_K by quadrature (parity zeros exact), shape (Q.size, K+1)."""
        c = quadrature.hermite_coefficients(self, K, Q, fast)
        if self.parity == 1:
            c[:, 1::2] = 0.0
        elif self.parity == -1:
            c[:, 0::2] = 0.0
        return c

    def numerical_second_moment(self, Q: np.ndarray) -> np.ndarray:
        """E phi(sqrt(Q) z)^2 by quadrature of phi^2."""
        return quadrature.hermite_coefficients(self.squared(), 0, Q)[:, 0]

    def numerical_kernel(self, r, Q1, Q2, derivative: int = 0, distinct=None) -> np.ndarray:
        """The kernel from a verified table where many entries share a variance pair (`hermite.tables`),
        else entry by entry (`hermite.pairs.pair_kernel`); ``distinct`` as in `kernel`."""
        return tables.tabulated_kernel(self, r, Q1, Q2, derivative, distinct)

    def squared(self, fn=None) -> Core:
        """A core whose function is fn(x)^2 (default: phi's own), same kinks and features (for moments)."""
        f = self.fn if fn is None else fn
        return Core(self.name + "^2", lambda x: f(x) ** 2, kinks=self.kinks, jumps=self.jumps,
                    features=self.features, frequency=self.frequency, parity=self.parity)

    def derived(self) -> Core:
        """A core whose function is phi' (phi's kinks become its jumps; parity flipped), for the coefficients of
        phi' by quadrature where Stein's lemma on phi's would magnify their error (small q); one per core."""
        return _derived(self)

    # --------------------------------------------------------------------------------------------
    # what the activations call: closed form where known, else numerical (memoized, read-only)
    def coefficients(self, K: int, Q: np.ndarray, fast: bool = False) -> np.ndarray:
        """c_k(Q) for k = 0..K, Q 1-D: closed form when known, else quadrature.

        fast=True (the engines' internal calls) lets many variances of a smooth core share two verified
        Gauss-Hermite rules (accurate to ~1e-14 instead of ~1e-16); the public `coefficients` never does.
        """
        def compute():
            c = self.closed_coefficients(K, Q)
            return self.numerical_coefficients(K, Q, fast) if c is None else c

        return _memo("cf" if fast else "c", self, K, np.ascontiguousarray(Q, dtype=np.float64), compute)

    def second_moment(self, Q: np.ndarray) -> np.ndarray:
        """E phi(sqrt(Q) z)^2, Q 1-D (verified interpolants in log q for many variances of a generic core,
        `hermite.log_q_tables`)."""
        def compute():
            if self._generic and Q.size >= log_q_tables.MIN_VARIANCES:
                out = np.empty((Q.size, 1))
                done = log_q_tables.octave_coefficients(_square_of(self), 0, Q, out, quadrature.hermite_coefficients)
                if not done.all():
                    out[~done, 0] = self.numerical_second_moment(Q[~done])
                return out[:, 0]
            m = self.closed_second_moment(Q)
            return self.numerical_second_moment(Q) if m is None else m

        return _memo("m", self, 0, np.ascontiguousarray(Q, dtype=np.float64), compute)

    def derivative_moment(self, Q: np.ndarray) -> np.ndarray:
        """E phi'(sqrt(Q) z)^2 (infinite when phi jumps)."""
        if self.jumps:
            return np.full(Q.shape, np.inf)
        if self.derivative is None:
            raise ValueError(f"activation {self.name!r} has no derivative: pass derivative= to hermite.activation")
        return quadrature.hermite_coefficients(self.squared(self.derivative), 0, Q)[:, 0]

    def kernel(self, r, Q1, Q2, derivative: int = 0, distinct=None) -> np.ndarray:
        """E[phi(u) phi(v)] (derivative=1: E[phi'(u) phi'(v)]) on a flat array r, with Q1, Q2 flat arrays of its
        size or scalars shared by every entry: closed form, else numerical.

        ``distinct``: optionally the `hermite.distinct.Distinct` of np.concatenate([Q1, Q2]), which a caller
        that knows its variances (the engines: n variances for n (n - 1) / 2 entries) passes so that the
        numerical path does not sort the entries' variances to find them; the values are the same either way.
        """
        with np.errstate(divide="ignore"):
            out = self.closed_kernel(r, Q1, Q2, derivative)
        if out is not None:
            return np.broadcast_to(out, np.shape(r)) if np.shape(out) != np.shape(r) else out
        Q1 = np.broadcast_to(np.asarray(Q1, dtype=np.float64), np.shape(r))
        Q2 = np.broadcast_to(np.asarray(Q2, dtype=np.float64), np.shape(r))
        return self.numerical_kernel(r, Q1, Q2, derivative, distinct)

    def function(self, derivative: int):
        """phi (derivative=0) or phi' (1) for quadrature; ValueError where phi' has delta masses or is unknown."""
        if derivative == 0:
            return self.fn
        if self.jumps:
            raise ValueError(f"the derivative of {self.name!r} has delta masses at its jumps {self.jumps}; "
                             "derivative kernels are only available in closed form for such activations")
        if self.derivative is None:
            raise ValueError(f"activation {self.name!r} has no derivative: pass derivative= to hermite.activation")
        return self.derivative


# ------------------------------------------------------------------------------------------------
# exact (sympy) coefficients of the families
@lru_cache(maxsize=64)
def _derived(core: Core) -> Core:
    if core.derivative is None:
        raise ValueError(f"activation {core.name!r} has no derivative: pass derivative= to hermite.activation")
    return Core(core.name + "'", core.derivative, kinks=(), jumps=core.kinks + core.jumps, features=core.features,
                frequency=core.frequency, parity=None if core.parity is None else -core.parity,
                derivative=core.second_derivative)


def _sp():
    import sympy as sp

    return sp


def _generating(K: int, term) -> list:
    """[term(k, sqrt(k!)) for k = 0..K] with sympy imported (closed-form families' exact coefficients)."""
    sp = _sp()
    return [term(sp, k, sp.sqrt(sp.factorial(k))) for k in range(K + 1)]


@dataclass(frozen=True, eq=False)
class PiecewisePolynomialCore(Core):
    """phi = p_i(x) on [a_i, b_i), pieces ((a, b, (p0, p1, ...)), ...): exact coefficients piece by piece.

    On [a, b], int_a^b x^m phi(x) dx = I_m with I_m = [-x^(m-1) phi(x)]_a^b + (m - 1) I_(m-2),
    I_0 = Phi(b) - Phi(a), I_1 = phi(a) - phi(b), so c_k(q) is a finite combination of phi and Phi at the
    scaled breakpoints. Positively homogeneous of degree d in {0, 1} when every break is at 0 and every
    piece is a multiple of x^d.
    """

    pieces: tuple = ()

    def exact_coefficients(self, K, q):
        return piecewise_coefficients(self.pieces, K, q)

    def linear_pieces(self, derivative):
        if derivative and self.jumps:
            return None  # phi' has delta masses
        return linear_pieces(self.pieces, derivative)

    def closed_second_moment(self, Q):
        """E phi(sqrt(Q) z)^2 for piecewise-linear phi: the Gaussian smoothing (`hermite.smoothing`) of the
        squared pieces at mu = 0, sigma = sqrt(Q) (phi(0)^2 at Q = 0); None for higher degrees."""
        lin = self.linear_pieces(0)
        if lin is None:
            return None
        squares = [(a, b, (p0 * p0, 2 * p0 * p1, p1 * p1)) for a, b, p0, p1 in lin]
        Q = np.asarray(Q, dtype=np.float64)
        pos = Q > 0
        m = piecewise_smoothing(squares, np.zeros(Q.shape), np.sqrt(np.where(pos, Q, 1.0)))
        return np.where(pos, m, float(self.fn(np.zeros(1))[0]) ** 2)

    def closed_coefficients(self, K, Q):
        c = piecewise_linear_coefficients(self.pieces, K, Q)
        if c is not None and self.parity is not None:
            c[:, (1 if self.parity == 1 else 0)::2] = 0.0  # exact zeros, as on the numerical path
        return c

    def closed_smoothing(self, mu, sigma, derivative):
        if derivative and self.jumps:
            return None
        return piecewise_smoothing(self.pieces, mu, sigma, derivative)

    def pieces_expr(self):
        sp = _sp()
        x = sp.Symbol("x", real=True)
        args = []
        for _a, b, coeffs in self.pieces:
            poly = sum(sp.nsimplify(c) * x**i for i, c in enumerate(coeffs))
            args.append((poly, True) if b == math.inf else (poly, x < sp.nsimplify(b)))
        return sp.Piecewise(*args)

    @property
    def homogeneous_degree(self):
        if any(t not in (0.0, -math.inf, math.inf) for a, b, _ in self.pieces for t in (a, b)):
            return None
        degrees = {i for *_, p in self.pieces for i, c in enumerate(p) if c != 0}
        return degrees.pop() if len(degrees) == 1 and degrees <= {0, 1} else None


@dataclass(frozen=True, eq=False)
class ExpLinearCore(Core):
    """phi = scale (x 1{x > 0} + alpha (e^x - 1) 1{x <= 0}): elu (scale 1) and selu (Klambauer et al. 2017).

    No closed kernel is known; the family knows its Gaussian smoothing E[phi(mu + sigma Z)] in closed form
    (`hermite.smoothing.exp_linear_smoothing`), so its two-dimensional kernel quadrature is one-dimensional.
    """

    alpha: float = 1.0
    scale: float = 1.0

    def closed_smoothing(self, mu, sigma, derivative):
        return exp_linear_smoothing(self.alpha, self.scale, mu, sigma, derivative)


@dataclass(frozen=True, eq=False)
class ArcCosineCore(PiecewisePolynomialCore):
    """phi = a relu(x) + b relu(-x): relu (1, 0), leaky_relu (1, -s), abs (1, 1), identity (1, -1).

    Arc-cosine kernel (Cho and Saul 2009): E[phi(u) phi(v)] = sqrt(Q1 Q2) [(a^2 + b^2) J1(r) + 2ab J1(-r)],
    J1(r) = (sqrt(1 - r^2) + (pi - arccos r) r) / (2 pi); E phi^2 = (a^2 + b^2) Q / 2; phi' is the step
    family a 1{x>0} - b 1{x<0}. Positively homogeneous of degree 1.
    """

    a: float = 1.0
    b: float = 0.0
    homogeneous_degree: ClassVar[int] = 1

    @classmethod
    def build(cls, name, params=None, a=1.0, b=0.0):
        a, b = float(a), float(b)
        named = ARC_FORMS.get((a, b)) if math.copysign(1.0, b) > 0 or b != 0 else None  # not for b = -0.0
        fn, d1, xfn = named or (lambda x: np.where(x > 0, a * x, -b * x),
                                                  lambda x: np.where(x > 0, a, -b),
                                                  lambda x, xp: xp.where(x > 0, a * x, -b * x))
        if (a, b) == (1.0, -1.0):
            pieces = ((-math.inf, math.inf, (0, 1)),)
        else:
            pieces = ((-math.inf, 0, (0, -b) if b != 0 else (0,)), (0, math.inf, (0, a)))
        parity = 1 if a == b else (-1 if a == -b else None)
        kinks = () if (a, b) == (1.0, -1.0) else (0.0,)
        return super().build(name, params, fn=fn, kinks=kinks, parity=parity, derivative=d1,
                             second_derivative=np.zeros_like, array_fn=xfn, pieces=pieces, a=a, b=b)

    def closed_coefficients(self, K, Q):
        """c_k(Q) = sqrt(Q) (a + (-1)^k b) c_k(relu) (`half_line_coefficients`)."""
        return np.sqrt(Q)[:, None] * two_sided(self.a, self.b, K, 1)[None, :]

    def closed_second_moment(self, Q):
        return 0.5 * (self.a * self.a + self.b * self.b) * Q

    def closed_kernel(self, r, Q1, Q2, derivative):
        a, b = self.a, self.b
        if derivative == 1:
            return step_kernel(a, -b, r, Q1, Q2, 0)  # phi' = a 1{x>0} - b 1{x<0}
        s12 = np.sqrt(Q1) * np.sqrt(Q2)  # never the product: it underflows for tiny variances
        return arc_cosine_kernel(r, s12, a * a + b * b, 2 * a * b)


@dataclass(frozen=True, eq=False)
class StepCore(PiecewisePolynomialCore):
    """phi = a 1{x>0} + b 1{x<0}: step (1, 0), sign (1, -1).

    E[phi(u) phi(v)] = (a^2 + b^2) J0(r) + 2ab J0(-r), J0(r) = (pi - arccos r)/(2 pi) = P(u > 0, v > 0);
    E phi^2 = (a^2 + b^2)/2; the derivative kernel is (a - b)^2 / (2 pi sqrt(Q1 Q2 (1 - r^2))) (the delta
    mass of phi' at 0). Positively homogeneous of degree 0.
    """

    a: float = 1.0
    b: float = 0.0
    homogeneous_degree: ClassVar[int] = 0

    @classmethod
    def build(cls, name, params=None, a=1.0, b=0.0):
        a, b = float(a), float(b)
        if (a, b) == (1.0, -1.0):
            fn, xfn = np.sign, (lambda x, xp: xp.sign(x))
        elif (a, b) == (1.0, 0.0):
            fn, xfn = (lambda x: (np.asarray(x) > 0).astype(np.float64)), (lambda x, xp: xp.astype(x > 0, x.dtype))
        else:
            fn, xfn = (lambda x: np.where(x > 0, a, np.where(x < 0, b, 0.0))), \
                      (lambda x, xp: xp.where(x > 0, a, xp.where(x < 0, b, 0.0)))
        pieces = ((-math.inf, 0, (b,)), (0, math.inf, (a,)))
        parity = 1 if a == b else (-1 if a == -b else None)
        return super().build(name, params, fn=fn, kinks=(0.0,), jumps=(0.0,), parity=parity,
                             derivative=np.zeros_like, second_derivative=np.zeros_like, array_fn=xfn,
                             pieces=pieces, a=a, b=b)

    def closed_coefficients(self, K, Q):
        """c_k = (a + (-1)^k b) c_k(1{z>0}), the same at every variance (`half_line_coefficients`)."""
        return np.broadcast_to(two_sided(self.a, self.b, K, 0), (np.size(Q), K + 1)).copy()

    def closed_second_moment(self, Q):
        return 0.5 * (self.a * self.a + self.b * self.b) * np.ones_like(Q)

    def closed_kernel(self, r, Q1, Q2, derivative):
        return step_kernel(self.a, self.b, r, Q1, Q2, derivative)


def _orders(K, Q):
    """k = 0..K, Q as a column and log sqrt(k!) (shared by the generating-function families)."""
    k = np.arange(K + 1)
    return k, Q[:, None], 0.5 * sc.gammaln(k + 1.0)


def _sqrt_det(r, Q1, Q2, w: float):
    """(sqrt(D), c) with D = (1 + w Q1)(1 + w Q2) - w^2 c^2 = 1 + w Q1 + w Q2 + w^2 Q1 Q2 (1 - r^2) and c = r sqrt(Q1)
    sqrt(Q2): the determinant-like quantity of the Gaussian-integral closed forms (erf: w = 2; gelu and gaussian:
    w = 1) as nested hypot of the square roots of its non-negative terms. As a difference it cancelled to
    nothing near r = 1 at large variances and went negative (gelu's kernel was NaN at q = 1e16), and its products
    overflowed (erf's kernel was 0 at q >= 1e154); hypot neither cancels nor over- or underflows, whatever the
    two variances (1e-300 against 1e300 included)."""
    r = np.asarray(r, dtype=np.float64)
    s1, s2 = np.sqrt(np.asarray(Q1, dtype=np.float64)), np.sqrt(np.asarray(Q2, dtype=np.float64))
    s = np.sqrt(np.maximum((1.0 - r) * (1.0 + r), 0.0))
    rw = math.sqrt(w)
    return np.hypot(np.hypot(np.hypot(1.0, rw * s1), rw * s2), w * s1 * s2 * s), r * s1 * s2


@dataclass(frozen=True, eq=False)
class ErfCore(Core):
    """phi = erf(x) (Williams 1997): E[phi(u) phi(v)] = (2/pi) arcsin(2 c / sqrt((1 + 2 Q1)(1 + 2 Q2))),
    c = r sqrt(Q1 Q2); c_k = 0 for even k and, k = 2m + 1,
    c_k = (2/sqrt(pi)) sqrt(Q/k) sqrt((2m)!) (1 + 2Q)^(-1/2) (-Q/(1 + 2Q))^m / m!."""

    @classmethod
    def build(cls, name="erf", params=None, array_fn=None):
        c = 2.0 / math.sqrt(math.pi)
        return super().build(name, params, fn=sc.erf, expr="erf(x)", features=(0.0,), parity=-1,
                             derivative=lambda x: c * np.exp(-x * x),
                             second_derivative=lambda x: -2.0 * c * x * np.exp(-x * x), array_fn=array_fn)

    def closed_coefficients(self, K, Q):
        k, Qc, _ = _orders(K, Q)
        m = np.maximum((k - 1) // 2, 0)
        kk = np.maximum(k, 1)
        logmag = (math.log(2 / math.sqrt(math.pi)) + 0.5 * np.log(Qc / kk) + 0.5 * sc.gammaln(2 * m + 1.0)
                  - 0.5 * np.log1p(2 * Qc) + m * np.log(Qc / (1 + 2 * Qc)) - sc.gammaln(m + 1.0))
        sign = np.where(k % 2 == 1, np.where(m % 2 == 0, 1.0, -1.0), 0.0)
        return np.where(k % 2 == 1, sign * np.exp(np.where(k % 2 == 1, logmag, 0.0)), 0.0)

    def closed_second_moment(self, Q):
        return 2 / math.pi * np.arcsin(2 * Q / (1 + 2 * Q))

    def closed_kernel(self, r, Q1, Q2, derivative):
        # arcsin(2c / sqrt((1 + 2 Q1)(1 + 2 Q2))) = arctan2(2c, sqrt(D)), D = (1 + 2 Q1)(1 + 2 Q2) - 4 c^2 > 0
        # formed without cancellation (near rho = 1 the arcsin's argument lost its last digits to 1 - x^2)
        sqrt_d, c = _sqrt_det(r, Q1, Q2, 2.0)
        if derivative == 0:
            return 2 / np.pi * np.arctan2(2.0 * c, sqrt_d)
        return 4 / np.pi / sqrt_d

    def exact_coefficients(self, K, q):
        def term(sp, k, rk):
            if k % 2 == 0:
                return sp.Integer(0)
            m = (k - 1) // 2
            return (2 / sp.sqrt(sp.pi) * sp.sqrt(q / k) * sp.sqrt(sp.factorial(2 * m)) / sp.sqrt(1 + 2 * q)
                    * (-q / (1 + 2 * q)) ** m / sp.factorial(m))
        return _generating(K, term)


@dataclass(frozen=True, eq=False)
class ExpCore(Core):
    """phi = exp(x): E exp(t z) = exp(t^2/2) gives c_k = exp(Q/2) Q^(k/2) / sqrt(k!),
    E phi^2 = exp(2Q) and E[phi(u) phi(v)] = exp((Q1 + Q2)/2 + r sqrt(Q1 Q2)) (phi' = phi)."""

    @classmethod
    def build(cls, name="exp", params=None):
        return super().build(name, params, fn=np.exp, expr="exp(x)", derivative=np.exp, second_derivative=np.exp,
                             array_fn=lambda x, xp: xp.exp(x))

    def closed_coefficients(self, K, Q):
        k, Qc, lgk = _orders(K, Q)
        return np.exp(0.5 * Qc + 0.5 * k * np.log(Qc) - lgk)

    def closed_second_moment(self, Q):
        return np.exp(2 * Q)

    def closed_kernel(self, r, Q1, Q2, derivative):
        return np.exp(0.5 * (Q1 + Q2) + r * np.sqrt(Q1) * np.sqrt(Q2))

    def exact_coefficients(self, K, q):
        return _generating(K, lambda sp, k, rk: sp.exp(q / 2) * q ** sp.Rational(k, 2) / rk)


@dataclass(frozen=True, eq=False)
class SinCore(Core):
    """phi = sin(x): c_k = (-1)^((k-1)/2) exp(-Q/2) Q^(k/2) / sqrt(k!) for odd k (0 for even k),
    E phi^2 = (1 - exp(-2Q))/2, E[phi(u) phi(v)] = exp(-(Q1 + Q2)/2) sinh(r sqrt(Q1 Q2)); phi' = cos."""

    odd: ClassVar[bool] = True

    @classmethod
    def build(cls, name="sin", params=None):
        return super().build(name, params, fn=np.sin, expr="sin(x)", frequency=1.0, parity=-1, derivative=np.cos,
                             second_derivative=lambda x: -np.sin(x), array_fn=lambda x, xp: xp.sin(x))

    def closed_coefficients(self, K, Q):
        k, Qc, lgk = _orders(K, Q)
        mag = np.exp(-0.5 * Qc + 0.5 * k * np.log(Qc) - lgk)
        right = k % 2 == (1 if self.odd else 0)
        return mag * np.where(right, np.where((k // 2) % 2 == 0, 1.0, -1.0), 0.0)

    def closed_second_moment(self, Q):
        return -0.5 * np.expm1(-2 * Q)

    def closed_kernel(self, r, Q1, Q2, derivative):
        # exp(-(q1+q2)/2) sinh/cosh(c) as exp(|c| - (q1+q2)/2) (1 -+ exp(-2|c|))/2: no overflow at large variances
        # (|c| <= (q1+q2)/2), and sinh without the cancellation of e^c - e^-c at small c (it was 0 at q = 1e-17)
        # |c| - (q1+q2)/2 = -((sqrt q1 - sqrt q2)^2/2 + sqrt(q1 q2) (1 - |r|)): no cancellation near |r| = 1 (as a
        # difference it lost eps (q1+q2)/2 of the exponent: 4e-9 of the value at q = 1e8)
        odd = self.odd == (derivative == 0)
        r = np.asarray(r, dtype=np.float64)
        s1, s2 = np.sqrt(np.asarray(Q1, dtype=np.float64)), np.sqrt(np.asarray(Q2, dtype=np.float64))
        c = r * s1 * s2
        ac = np.abs(c)
        a = np.exp(-(0.5 * (s1 - s2) ** 2 + s1 * s2 * (1.0 - np.abs(r))))
        if odd:
            return np.copysign(-0.5 * a * np.expm1(-2.0 * ac), c)
        return 0.5 * a * (1.0 + np.exp(-2.0 * ac))

    def exact_coefficients(self, K, q):
        def term(sp, k, rk):
            if self.odd != (k % 2 == 1):
                return sp.Integer(0)
            return (-1) ** (k // 2) * sp.exp(-q / 2) * q ** sp.Rational(k, 2) / rk
        return _generating(K, term)


@dataclass(frozen=True, eq=False)
class CosCore(SinCore):
    """phi = cos(x): c_k = (-1)^(k/2) exp(-Q/2) Q^(k/2) / sqrt(k!) for even k (0 for odd k),
    E phi^2 = (1 + exp(-2Q))/2, E[phi(u) phi(v)] = exp(-(Q1 + Q2)/2) cosh(r sqrt(Q1 Q2)); phi' = -sin."""

    odd: ClassVar[bool] = False

    @classmethod
    def build(cls, name="cos", params=None):
        return Core.build.__func__(cls, name, params, fn=np.cos, expr="cos(x)", frequency=1.0, parity=1,
                                   derivative=lambda x: -np.sin(x), second_derivative=lambda x: -np.cos(x),
                                   array_fn=lambda x, xp: xp.cos(x))

    def closed_second_moment(self, Q):
        return 0.5 * (1 + np.exp(-2 * Q))


@dataclass(frozen=True, eq=False)
class GaussianCore(Core):
    """phi = exp(-x^2/2): E[phi(u) phi(v)] = 1/sqrt(D), D = (1 + Q1)(1 + Q2) - c^2, c = r sqrt(Q1 Q2)
    (derivative kernel c / D^(3/2)); c_k = 0 for odd k and, k = 2m,
    c_k = sqrt((2m)!) (1 + Q)^(-1/2) (-Q/(2(1 + Q)))^m / m!."""

    @classmethod
    def build(cls, name="gaussian", params=None):
        return super().build(name, params, fn=lambda x: np.exp(-0.5 * x * x), expr="exp(-x**2/2)",
                             features=(0.0,), parity=1, derivative=lambda x: -x * np.exp(-0.5 * x * x),
                             second_derivative=lambda x: (x * x - 1.0) * np.exp(-0.5 * x * x),
                             array_fn=lambda x, xp: xp.exp(-0.5 * x * x))

    def closed_coefficients(self, K, Q):
        k, Qc, _ = _orders(K, Q)
        m = k // 2
        logmag = (0.5 * sc.gammaln(2 * m + 1.0) - 0.5 * np.log1p(Qc)
                  + m * np.log(Qc / (2 * (1 + Qc))) - sc.gammaln(m + 1.0))
        sign = np.where(k % 2 == 0, np.where(m % 2 == 0, 1.0, -1.0), 0.0)
        return sign * np.exp(logmag)

    def closed_second_moment(self, Q):
        return 1.0 / np.sqrt(1 + 2 * Q)

    def closed_kernel(self, r, Q1, Q2, derivative):
        sqrt_d, c = _sqrt_det(r, Q1, Q2, 1.0)  # D = (1 + Q1)(1 + Q2) - c^2
        # c / D^(3/2) as three divisions: no intermediate overflow
        return 1 / sqrt_d if derivative == 0 else c / sqrt_d / sqrt_d / sqrt_d

    def exact_coefficients(self, K, q):
        def term(sp, k, rk):
            if k % 2:
                return sp.Integer(0)
            m = k // 2
            return rk / sp.sqrt(1 + q) * (-q / (2 * (1 + q))) ** m / sp.factorial(m)
        return _generating(K, term)


@dataclass(frozen=True, eq=False)
class SoftplusCore(Core):
    """phi = log(1 + e^(beta x)) / beta: the unit softplus rescaled, phi_beta(x) = phi_1(beta x) / beta.

    The numerics of every core assume it varies on the unit scale near its features; softplus(beta) varies on
    the scale 1/beta, so at beta >> 1 the unit-scale rules were wrong (beta = 30 at q = 10: 2e-6). The family
    instead reads everything off the unit softplus (``unit``) at the variance beta^2 q, exactly:
    c_k(q) = c_k^(1)(beta^2 q) / beta, E phi^2 = E phi_1^2 (beta^2 q) / beta^2, and the kernel of phi
    (of phi') is that of phi_1 (of phi_1') at (beta^2 q1, beta^2 q2), over beta^2 (times 1).
    """

    beta: float = 1.0
    unit: Core | None = None  # the unit softplus (None for beta = 1, which is the unit itself)

    def closed_coefficients(self, K, Q):
        if self.unit is None:
            return None
        return self.unit.coefficients(K, self.beta**2 * np.asarray(Q, dtype=np.float64)) / self.beta

    def closed_second_moment(self, Q):
        if self.unit is None:
            return None
        return self.unit.second_moment(self.beta**2 * np.asarray(Q, dtype=np.float64)) / self.beta**2

    def closed_kernel(self, r, Q1, Q2, derivative):
        if self.unit is None:
            return None
        b2 = self.beta**2
        k = self.unit.kernel(r, b2 * np.asarray(Q1, dtype=np.float64), b2 * np.asarray(Q2, dtype=np.float64),
                             derivative)
        return k if derivative else k / b2

    def derivative_moment(self, Q):
        if self.unit is None:
            return super().derivative_moment(Q)
        return self.unit.derivative_moment(self.beta**2 * np.asarray(Q, dtype=np.float64))

    @property
    def has_closed_kernel(self) -> bool:
        """False: ``closed_kernel`` only rescales the unit softplus, whose kernel is numerical (the engines
        then evaluate its table on half of a Gram, as for every tabulated kernel)."""
        return False


@dataclass(frozen=True, eq=False)
class GeluCore(Core):
    """phi = x Phi(x): E[u Phi(u) v Phi(v)], Var u = a, Var v = b, Cov = c = r sqrt(ab).

    With Phi(u) = P(w1 < u), s_i = u_i - w_i and Stein's lemma applied twice,
    E[u v 1{s1>0} 1{s2>0}] = c P(s1>0, s2>0) + sum_ij Cov(u, s_i) Cov(v, s_j) E[d_i d_j 1{s>0}], giving
    c/4 + c arcsin(c/sqrt((1+a)(1+b)))/(2 pi) + [ab + c^2 (1 - ab)/((1+a)(1+b))] / (2 pi sqrt(D)),
    D = (1+a)(1+b) - c^2. (The derivative kernel is left to the generic path.)
    """

    @classmethod
    def build(cls, name="gelu", params=None, array_fn=None):
        s2pi = math.sqrt(2 * math.pi)
        return super().build(
            name, params, fn=lambda x: x * sc.ndtr(x), expr="x*(1 + erf(x/sqrt(2)))/2", features=(0.0,),
            derivative=lambda x: sc.ndtr(x) + x * np.exp(-x * x / 2) / s2pi,
            second_derivative=lambda x: (2.0 - x * x) * np.exp(-x * x / 2) / s2pi, array_fn=array_fn)

    def closed_coefficients(self, K, Q):
        """c_0 = E[u Phi(u)] = q E phi(u) = q / sqrt(2 pi (1 + q)) (Stein), c_1 = E[u^2 Phi(u)] / sqrt(q) =
        sqrt(q) / 2 (u^2 (Phi(u) - 1/2) is odd); higher orders by quadrature (None)."""
        if K > 1:
            return None
        Q = np.asarray(Q, dtype=np.float64)
        c = np.stack([Q / np.sqrt(2 * np.pi * (1 + Q)), 0.5 * np.sqrt(Q)], axis=1)
        return np.ascontiguousarray(c[:, : K + 1])

    def closed_second_moment(self, Q):
        Q = np.asarray(Q, dtype=np.float64)
        return self.closed_kernel(np.ones(Q.shape), Q, Q, 0)

    def closed_kernel(self, r, Q1, Q2, derivative):
        if derivative:
            return None
        # with D = (1+a)(1+b) - c^2 (`_sqrt_det`): arcsin(c / sqrt((1+a)(1+b))) = arctan2(c, sqrt(D)), and
        # ab + c^2 (1 - ab)/((1+a)(1+b)) = a/(1+a) b/(1+b) (D + r^2): no difference cancels (it lost 3e-11 at
        # q = 1e12 and was NaN at 1e16) and nothing over- or underflows (sqrt(ab) was 0 at q < 1e-154)
        sqrt_d, c = _sqrt_det(r, Q1, Q2, 1.0)
        r = np.asarray(r, dtype=np.float64)
        a, b = np.asarray(Q1, dtype=np.float64), np.asarray(Q2, dtype=np.float64)
        return (c / 4 + c * np.arctan2(c, sqrt_d) / (2 * np.pi)
                + (a / (1 + a)) * (b / (1 + b)) * (sqrt_d + r * r / sqrt_d) / (2 * np.pi))


# ------------------------------------------------------------------------------------------------
# user cores
@dataclass(frozen=True, eq=False)
class ExpressionCore(Core):
    """A sympy formula (``expr`` a sympy expression in the real symbol x); built by
    `hermite.expressions`. Exact coefficients when the formula is a polynomial."""

    def exact_coefficients(self, K, q):
        sp = _sp()
        x = sp.Symbol("x", real=True)
        try:
            poly = sp.Poly(self.expr, x)
        except sp.PolynomialError:
            poly = None
        if poly is None or not all(c.is_number for c in poly.all_coeffs()):
            return super().exact_coefficients(K, q)
        return piecewise_coefficients(((-math.inf, math.inf, tuple(reversed(poly.all_coeffs()))),), K, q)


@dataclass(frozen=True, eq=False)
class CallableCore(Core):
    """An opaque numpy callable with declared kinks (and optional derivatives): numerics only."""


@dataclass(frozen=True, eq=False)
class SubtractedCore(Core):
    """phi(x) = f(x) - sum_k w_k h_k(x / sqrt(q)) for an Activation f (`hermite.transform`, orders >= 2).

    Closed forms of f are lost (a polynomial is subtracted); the derivatives follow from h_k' = sqrt(k)
    h_(k-1). The spec {"subtract": {"base": f.to_dict(), "orders": {k: w_k}, "q": q}} round-trips through
    `from_spec` (None when f is an opaque callable).
    """

    @classmethod
    def of(cls, act, ck: dict, q: float) -> SubtractedCore:
        """The core f - sum_k ck[k] h_k(x / sqrt(q)) for the Activation ``act``."""
        K = max(ck)
        sq = math.sqrt(q)
        weights = np.zeros(K + 1)
        for k, v in ck.items():
            weights[k] = v

        def fn(x):
            x = np.asarray(x, dtype=np.float64)
            return act.fn(x) - np.tensordot(weights, hermite_polynomials(K, x / sq), axes=1)

        def deriv(x):
            x = np.asarray(x, dtype=np.float64)
            h = hermite_polynomials(K, x / sq)
            dk = np.array([math.sqrt(k) * weights[k] for k in range(1, K + 1)])  # h_k' = sqrt(k) h_(k-1)
            return act.derivative(x) - np.tensordot(dk, h[:K], axes=1) / sq

        def deriv2(x):
            x = np.asarray(x, dtype=np.float64)
            h = hermite_polynomials(K, x / sq)
            dk = np.array([math.sqrt(k * (k - 1)) * weights[k] for k in range(2, K + 1)])
            return act.second_derivative(x) - np.tensordot(dk, h[:K - 1], axes=1) / q

        try:
            spec = {"subtract": {"base": act.to_dict(), "orders": {str(k): float(v) for k, v in ck.items()},
                                 "q": q}}
        except ValueError:
            spec = None
        return cls(f"{act.name} - poly", fn, {}, None, act.kinks, act.jumps, act.features, act.core.frequency,
                   None, deriv if act.has_derivative else None,
                   deriv2 if act.has_second_derivative else None, None, spec)

    @classmethod
    def from_spec(cls, spec: dict, from_dict) -> SubtractedCore:
        """Inverse of the spec; ``from_dict`` rebuilds the base Activation from its dict."""
        return cls.of(from_dict(spec["base"]), {int(k): float(v) for k, v in spec["orders"].items()},
                      float(spec["q"]))
