"""The q-map and c-map of one block, their slopes and their fixed points (q*, and c* in [-1, 1]).

`qmap`, `cmap`, `cmap_slope`, `fixed_point_q`, `fixed_point_c` for a stack of identical blocks
Dense(sigma_w, sigma_b) + Activation(f) at infinite width, with or without a norm layer (None, "ln", "rms",
"bn" of the vocabulary of `meanfield.network`, in either placement). The formulas, their derivation and
the sources are in the docstring of `meanfield.maps`, the public facade that re-exports these names;
`meanfield.criticality` builds chi_1, the depth scales and the edge of chaos on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import brentq

import hermite
from hermite.validate import check_correlation
from meanfield.core.validate import check_real, check_real_array
from meanfield.network import check_placement, norm_choices, norm_layers

__all__ = ["FixedPoint", "qmap", "cmap", "cmap_slope", "fixed_point_q", "fixed_point_c", "NoFixedPointError",
           "UndefinedMapError"]

_SUPPORTED_NORMS = (None, "ln", "rms", "bn")  # of the norm vocabulary (`meanfield.network.norm_choices`)
Q_LIMIT = 1e-20  # variance at which the q -> 0+ limit of the maps is evaluated (when q* = 0)
_ITER = 12  # plain iterations of the q-map before bracketing


class NoFixedPointError(ValueError):
    """The q-map has no finite, attracting fixed point reachable from q0 (a ValueError)."""


class UndefinedMapError(ValueError):
    """The c-map is undefined (zero variance at the activation's output or the next input; a ValueError)."""


@dataclass(frozen=True)
class FixedPoint:
    """A fixed point c of the c-map, its slope C'(c) and its stability (|slope| < 1)."""

    c: float
    slope: float
    stable: bool


# ------------------------------------------------------------------------------------------------
# arguments
def _norm_arguments(owner: str, norm, placement, q0=None) -> tuple:
    """(norm, placement[, q0]) validated. norm: None, "ln", "rms" or "bn", checked against the one norm
    vocabulary of `meanfield.network` (a ValueError names the unknown key, or the supported subset for a key
    of the vocabulary that these scalar maps do not cover: "gln", "wn", "mobn", ...). placement: "pre" or
    "post" (`meanfield.network.check_placement`). q0 (when given): a variance > 0."""
    norm_layers(owner, norm)
    if norm not in _SUPPORTED_NORMS:
        raise ValueError(f"{owner}: norm={norm!r} is in the norm vocabulary {norm_choices()} but the scalar maps "
                         f"support only {_SUPPORTED_NORMS}; use meanfield.propagate for the others")
    check_placement(owner, placement)
    if q0 is None:
        return norm, placement
    return norm, placement, check_real(owner, "q0", q0, lo=0.0, lo_open=True)


def _block_arguments(owner: str, sigma_w, sigma_b, norm, placement, q0=None) -> tuple:
    """(sigma_w, sigma_b, norm, placement[, q0]) validated: standard deviations >= 0, then `_norm_arguments`."""
    sw = check_real(owner, "sigma_w", sigma_w, lo=0.0)
    sb = check_real(owner, "sigma_b", sigma_b, lo=0.0)
    return (sw, sb, *_norm_arguments(owner, norm, placement, q0))


@lru_cache(maxsize=2048)
def _kernel_diag(act, q: float, derivative: int, centered: bool) -> float:
    """hermite.kernel at rho = 1 (a quadrature for many activations: cached per (act, q))."""
    with np.errstate(all="ignore"):
        return float(hermite.kernel(act, 1.0, q, derivative=derivative, centered=centered))


def _kernel(act, rho, q: float, derivative: int = 0, centered: bool = False):
    r = np.asarray(rho, dtype=np.float64)
    if r.ndim == 0 and float(r) == 1.0:
        return _kernel_diag(act, float(q), derivative, centered)
    with np.errstate(all="ignore"):
        return hermite.kernel(act, r, q, derivative=derivative, centered=centered)


def _out(x):
    x = np.asarray(x, dtype=np.float64)
    return float(x) if x.ndim == 0 else x


# ------------------------------------------------------------------------------------------------
# second moments (q = 0 allowed: E f(0)^2)
def _second_moment(act, q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    out = np.empty(q.shape)
    pos = q > 0
    with np.errstate(all="ignore"):
        if np.any(pos):
            out[pos] = hermite.second_moment(act, q[pos])
        if np.any(~pos):
            out[~pos] = float(act(np.array(0.0))) ** 2
    return out


def _plain_qmap(act, q, sw2: float, sb2: float) -> np.ndarray:
    return sw2 * _second_moment(act, q) + sb2


def qmap(act, q, sigma_w, sigma_b, *, norm=None, placement="post"):
    """The length map: variance of the activation's input in the next block.

    Parameters
    ----------
    act : activation (name, callable, formula or `hermite.Activation`)
    q : float or array >= 0
        Variance of the activation's input (the pre-activation) in this block.
    sigma_w, sigma_b : float >= 0
        Standard deviations of the Dense layer: W_ij ~ N(0, sigma_w^2 / fan_in), b_i ~ N(0, sigma_b^2).
    norm : None, "ln", "rms" or "bn";  placement : "pre" or "post"

    Returns
    -------
    float or ndarray of q's shape:
        - norm=None:   Q(q) = sigma_w^2 E f(sqrt(q) z)^2 + sigma_b^2  (Poole et al. 2016, eq. 3), z ~ N(0, 1)
          (at q = 0: sigma_w^2 f(0)^2 + sigma_b^2);
        - post norm:   sigma_w^2 + sigma_b^2 for every q (the norm's output has unit second moment);
        - pre norm:    1 for every q (the norm fixes the activation's input variance).

    Examples
    --------
    >>> from meanfield import maps
    >>> maps.qmap("relu", 2.0, 1.0, 0.5)          # 1 * 2/2 + 0.25
    1.25
    """
    act = hermite.activation(act)
    sw, sb, norm, placement = _block_arguments("qmap", sigma_w, sigma_b, norm, placement)
    qa = check_real_array("qmap", "q", q, lo=0.0)
    if norm is None:
        return _out(_plain_qmap(act, qa, sw * sw, sb * sb))
    value = sw * sw + sb * sb if placement == "post" else 1.0
    return _out(np.full(qa.shape, value))


# ------------------------------------------------------------------------------------------------
# the c-map of one block at fixed variances
class _CMap:
    """C(c) and C'(c) for one block with its variances fixed (internal).

    kind "plain" (norm None or a pre norm): C = (sw2 K(c; q) + sb2) / (sw2 K(1; q) + sb2);
    kind "post": rho = (sw2 c + sb2) / (sw2 + sb2), C = (K(rho; q) [- m^2]) / (K(1; q) [- m^2]);
    kind "bn": C = 0.
    """

    def __init__(self, act, sw2: float, sb2: float, norm, placement, q: float | None = None):
        self.act, self.sw2, self.sb2 = act, sw2, sb2
        if norm == "bn":
            self.kind, self.q, self.den = "bn", 1.0 if placement == "pre" else sw2 + sb2, 1.0
            return
        if norm is None:
            self.kind, self.q = "plain", float(q)
        elif placement == "pre":
            self.kind, self.q = "plain", 1.0
        else:
            self.kind, self.q = "post", sw2 + sb2
            if self.q == 0:
                raise UndefinedMapError("sigma_w = sigma_b = 0: the activation's input vanishes and the c-map of a "
                                 "post-norm block is undefined; take sigma_w > 0 or sigma_b > 0")
        self.centered = norm == "ln" and placement == "post"
        if self.kind == "plain":
            self.den = sw2 * _kernel(act, 1.0, self.q) + sb2
        else:
            self.den = _kernel(act, 1.0, self.q, centered=self.centered)
        if not (math.isfinite(self.den) and self.den > 0):
            what = ("the next pre-activation variance" if self.kind == "plain" else
                    "the variance (over features) of the activation's output")
            raise UndefinedMapError(f"the c-map is undefined: {what} is {self.den!r} at q={self.q!r} "
                                    f"(sigma_w^2={sw2!r}, sigma_b^2={sb2!r})")

    def rho(self, c):
        return (self.sw2 * c + self.sb2) / (self.sw2 + self.sb2) if self.kind == "post" else c

    def __call__(self, c) -> np.ndarray:
        c = np.asarray(c, dtype=np.float64)
        if self.kind == "bn":
            return np.zeros(c.shape)
        out = np.ones(c.shape)
        live = c != 1.0  # C(1) = 1 exactly: identical inputs stay identical
        if np.any(live):
            cl = c[live]
            with np.errstate(all="ignore"):
                if self.kind == "plain":
                    v = (self.sw2 * _kernel(self.act, cl, self.q) + self.sb2) / self.den
                else:
                    v = _kernel(self.act, self.rho(cl), self.q, centered=self.centered) / self.den
            out[live] = np.clip(v, -1.0, 1.0)
        return out

    def slope(self, c) -> np.ndarray:
        c = np.asarray(c, dtype=np.float64)
        if self.kind == "bn":
            return np.zeros(c.shape)
        r = np.clip(self.rho(c), -1.0, 1.0)
        d = np.empty(c.shape)
        one = r == 1.0
        if np.any(one):
            d[one] = _kernel_diag(self.act, self.q, 1, False)
        if np.any(~one):
            d[~one] = _kernel(self.act, r[~one], self.q, derivative=1)
        with np.errstate(all="ignore"):
            if self.kind == "plain":
                return self.sw2 * self.q * d / self.den
            return self.sw2 / (self.sw2 + self.sb2) * self.q * d / self.den

    def is_identity(self) -> bool:
        """True when C(c) = c on [-1, 1] to 1e-9 (e.g. the q -> 0 limit of a smooth f with f'(0) != 0)."""
        if self.kind == "bn":
            return False
        c = np.linspace(-1.0, 1.0, 9)
        return bool(np.max(np.abs(self(c) - c)) <= 1e-9)


def _block_cmap(act, sw: float, sb: float, norm, placement, q0: float = 1.0) -> _CMap:
    """The c-map at the fixed-point variance (q* for plain blocks; q* = 0 uses q = Q_LIMIT)."""
    if norm is None:
        qs = _fixed_point_q(act, sw * sw, sb * sb, q0)
        return _CMap(act, sw * sw, sb * sb, None, placement, qs if qs > 0 else Q_LIMIT)
    return _CMap(act, sw * sw, sb * sb, norm, placement)


def cmap(act, c, q=None, sigma_w=1.0, sigma_b=0.0, *, norm=None, placement="post"):
    """The correlation map of one block.

    Parameters
    ----------
    act : activation (name, callable, formula or `hermite.Activation`)
    c : float or array in [-1, 1]
        Correlation between two inputs' states (see below).
    q : float or array > 0, or None
        norm=None: the common variance of the two pre-activations (broadcast with c); None means q*
        (`fixed_point_q`; when q* = 0 the q -> 0+ limit, evaluated at q = Q_LIMIT = 1e-20).
        With a norm the variances are fixed by the norm and q is ignored.
    sigma_w, sigma_b : float >= 0
        Standard deviations of the Dense layer.
    norm : None, "ln", "rms" or "bn";  placement : "pre" or "post"

    Returns
    -------
    float or ndarray (broadcast shape of c and q), in [-1, 1], with C(1) = 1 exactly (except BN):

    norm=None (Poole et al. 2016 eq. 5; the state is the pre-activation):
        C(c) = (sigma_w^2 E[f(u) f(v)] + sigma_b^2) / Q(q),  Var u = Var v = q, corr(u, v) = c,
        Q(q) = sigma_w^2 E f(u)^2 + sigma_b^2 the next variance (so C is exact for any q, not only q*).
    placement="pre" with "ln"/"rms" (the state is the activation's input, variance 1): C at q = 1.
    placement="post" with "ln"/"rms" (the state is the block output, unit diagonal):
        rho = (sigma_w^2 c + sigma_b^2) / (sigma_w^2 + sigma_b^2), q = sigma_w^2 + sigma_b^2,
        C(c) = (E[f(u) f(v)] - m^2) / (E f(u)^2 - m^2), m = E f(u), for LN (centred kernel);
        C(c) = E[f(u) f(v)] / E f(u)^2 for RMS; (u, v) of variance q and correlation rho.
    norm="bn" (large-batch limit, exchangeable batch): C(c) = 0 (see the module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> from meanfield import maps
    >>> c = 0.3                                   # ReLU, sigma_b = 0: the normalized arc-cosine map
    >>> ref = (np.sqrt(1 - c * c) + (np.pi - np.arccos(c)) * c) / np.pi
    >>> bool(abs(maps.cmap("relu", c, 1.0, 1.0, 0.0) - ref) < 1e-15)
    True
    """
    act = hermite.activation(act)
    sw, sb, norm, placement = _block_arguments("cmap", sigma_w, sigma_b, norm, placement)
    ca = check_correlation(c, "c")
    if norm is not None:
        return _out(_CMap(act, sw * sw, sb * sb, norm, placement)(ca))
    if q is None:
        return _out(_block_cmap(act, sw, sb, None, placement)(ca))
    qa = check_real_array("cmap", "q", q, lo=0.0, lo_open=True)
    ca, qa = np.broadcast_arrays(ca, qa)
    out = np.empty(ca.shape)
    for qv in np.unique(qa):
        sel = qa == qv
        out[sel] = _CMap(act, sw * sw, sb * sb, None, placement, float(qv))(ca[sel])
    return _out(out)


def cmap_slope(act, c, q=None, sigma_w=1.0, sigma_b=0.0, *, norm=None, placement="post"):
    """dC/dc, the slope of `cmap` (same arguments and conventions).

    By Price's theorem d E[f(u) f(v)] / d Cov(u, v) = E[f'(u) f'(v)] (weak derivatives; `hermite.kernel`
    with derivative=1), so::

        norm=None / pre norm:  C'(c) = sigma_w^2 q E[f'(u) f'(v)] / Q(q)  (= sigma_w^2 E f'f' at q = q*),
        post LN / RMS:         C'(c) = sigma_w^2 q E[f'(u) f'(v)] / ((sigma_w^2 + sigma_b^2) D),
                               D = Var f(u) (LN) or E f(u)^2 (RMS), (u, v) at (rho(c), q),
        BN:                    0.

    Activations that jump (step, sign) have an infinite slope at c = +-1.
    """
    act = hermite.activation(act)
    sw, sb, norm, placement = _block_arguments("cmap_slope", sigma_w, sigma_b, norm, placement)
    ca = check_correlation(c, "c")
    if norm is not None:
        return _out(_CMap(act, sw * sw, sb * sb, norm, placement).slope(ca))
    if q is None:
        return _out(_block_cmap(act, sw, sb, None, placement).slope(ca))
    qa = check_real_array("cmap_slope", "q", q, lo=0.0, lo_open=True)
    ca, qa = np.broadcast_arrays(ca, qa)
    out = np.empty(ca.shape)
    for qv in np.unique(qa):
        sel = qa == qv
        out[sel] = _CMap(act, sw * sw, sb * sb, None, placement, float(qv)).slope(ca[sel])
    return _out(out)


# ------------------------------------------------------------------------------------------------
# q*
def _qmap_slope(act, q: float, sw2: float, sb2: float) -> float:
    """Q'(q) = sigma_w^2 dM/dq by a five-point central difference (q > 0); at q = 0 the limit Q(q)/q."""
    if sw2 == 0:
        return 0.0
    if q <= 0:
        return sw2 * float(_second_moment(act, np.array(Q_LIMIT))) / Q_LIMIT
    h = 1e-3 * q
    m = _second_moment(act, q + h * np.array([-2.0, -1.0, 1.0, 2.0]))
    return sw2 * float((m[0] - 8 * m[1] + 8 * m[2] - m[3]) / (12 * h))


def _refuse_repelling(act, q: float, sw2: float, sb2: float, message) -> None:
    """NoFixedPointError(message(slope)) when the fixed point q of the q-map repels: |Q'(q)| > 1 + 1e-9."""
    slope = _qmap_slope(act, q, sw2, sb2)
    if abs(slope) > 1 + 1e-9:
        raise NoFixedPointError(message(slope))


def _fixed_point_q(act, sw2: float, sb2: float, q0: float) -> float:
    """q* reached from q0 by the plain q-map (internal, validated inputs)."""
    if sw2 == 0:
        return sb2
    qmax = 1e12 * max(1.0, q0, sw2, sb2)

    def fail(q):
        raise NoFixedPointError(
            f"no finite fixed point of the q-map: iterating q -> sigma_w^2 E f(sqrt(q) z)^2 + sigma_b^2 from "
            f"q0={q0!r} grows without bound (q reached {q:.6g}) for sigma_w^2={sw2!r}, sigma_b^2={sb2!r}, "
            f"activation {act.name!r}; take a smaller sigma_w")

    def Q(q):
        v = float(_plain_qmap(act, np.array(q), sw2, sb2))
        if not math.isfinite(v) or v > qmax:
            fail(v)
        return v

    def g(q):
        return Q(q) - q

    traj = [q0]
    q = q0
    for _ in range(_ITER):
        qn = Q(q)
        if abs(qn - q) <= 1e-15 * max(q, qn) or qn == 0.0:
            # converged (also: q0 is itself a fixed point, e.g. every q for ReLU at sigma_w^2 = 2); an
            # iterate can only land on a repelling fixed point exactly (q0 itself): refuse that one
            _refuse_repelling(act, qn, sw2, sb2, lambda slope, qn=qn: (
                f"q={qn!r} is a repelling fixed point of the q-map (slope {slope:.6g}) for "
                f"sigma_w^2={sw2!r}, sigma_b^2={sb2!r}, activation {act.name!r}: the iterates stay there only "
                f"because q0={q0!r} is that point; start from another q0"))
            return qn
        traj.append(qn)
        q = qn
    a, b = traj[-2], traj[-1]
    root = _bracket_root(g, Q, a, b, qmax, fail, act, sw2, sb2)
    _refuse_repelling(act, root, sw2, sb2, lambda slope: (
        f"the q-map has no attracting fixed point reachable from q0={q0!r}: the fixed point q={root:.6g} "
        f"has slope {slope:.6g} (|slope| > 1; the iterates oscillate or run off) for sigma_w^2={sw2!r}, "
        f"sigma_b^2={sb2!r}, activation {act.name!r}"))
    return root


def _bracket_root(g, Q, a: float, b: float, qmax: float, fail, act, sw2: float, sb2: float) -> float:
    """The root of g(q) = Q(q) - q that the iterates ..., a, b = Q(a) approach (internal).

    g(a) = b - a. If g(b) has the other sign the root lies between a and b (oscillating iterates);
    otherwise it lies beyond b in the direction of motion (for an increasing map there is no root between
    a and b), found by doubling steps and, towards 0, by a geometric scan.
    """
    d = b - a
    gb = g(b)
    if gb == 0:
        return b
    if (gb > 0) != (d > 0):
        lo, hi = min(a, b), max(a, b)
        return brentq(g, lo, hi, xtol=1e-300, rtol=1e-15, maxiter=200)
    if d > 0:
        lo, step = b, d
        while True:
            hi = lo + step
            if hi > qmax:
                fail(hi)
            if g(hi) <= 0:
                return brentq(g, lo, hi, xtol=1e-300, rtol=1e-15, maxiter=200)
            lo, step = hi, 2 * step
    hi, step = b, -d
    while True:
        lo = hi - step
        if lo <= 0:
            # scan (0, hi) geometrically (a root near 0 appears when q = 0 repels, e.g. selu)
            x = hi / 4
            while x > 1e-30:
                if g(x) > 1e-12 * x:  # clearly positive (not rounding noise of Q(x) - x ~ x^2)
                    return brentq(g, x, hi, xtol=1e-300, rtol=1e-15, maxiter=200)
                hi, x = x, x / 4
            if float(_plain_qmap(act, np.array(0.0), sw2, sb2)) > 0:
                return brentq(g, 0.0, hi, xtol=1e-300, rtol=1e-15, maxiter=200)
            return 0.0  # Q(0) = 0 and g < 0 on (0, b]: q -> 0 (e.g. tanh, sigma_w <= 1, sigma_b = 0)
        if g(lo) >= 0:
            return brentq(g, lo, hi, xtol=1e-300, rtol=1e-15, maxiter=200)
        hi, step = lo, 2 * step


def fixed_point_q(act, sigma_w, sigma_b, q0=1.0, *, norm=None, placement="post") -> float:
    """The fixed point q* of the q-map reached from the input variance q0.

    Parameters
    ----------
    act : activation;  sigma_w, sigma_b : float >= 0 (standard deviations)
    q0 : float > 0
        Starting variance (of the first pre-activation); the iteration is started there.
    norm, placement : see `qmap`

    Returns
    -------
    float q* >= 0:
        norm=None: the limit of q_{l+1} = Q(q_l) from q0 (Poole et al. 2016). The map is iterated a few
        times, then the root of Q(q) - q on the side the iterates move to is bracketed and refined by
        Brent's method to machine precision. Special cases:

          * q* = 0 when sigma_b = 0, f(0) = 0 and the map contracts to 0 (tanh with sigma_w <= 1, ReLU with
            sigma_w^2 < 2); the maps are then evaluated in the limit q -> 0+ (at q = Q_LIMIT = 1e-20).
          * when q0 is itself a fixed point, q0 is returned; in particular for ReLU with sigma_w^2 = 2,
            sigma_b = 0 (and the identity with sigma_w = 1, sigma_b = 0) every q is a fixed point and q* = q0.
          * sigma_w = 0: q* = sigma_b^2.

        with a norm: sigma_w^2 + sigma_b^2 (post) or 1 (pre), independent of q0.

    Raises
    ------
    ValueError (`NoFixedPointError`)
        If the iterates grow without bound (no finite fixed point: exp with a large sigma_w, ReLU with
        sigma_w^2 > 2, the identity with sigma_w > 1), or oscillate around a fixed point with |Q'| >= 1.

    Examples
    --------
    >>> from meanfield import maps
    >>> maps.fixed_point_q("relu", 1.0, 1.0)      # sigma_b^2 / (1 - sigma_w^2 / 2)
    2.0
    """
    act = hermite.activation(act)
    sw, sb, norm, placement, q0 = _block_arguments("fixed_point_q", sigma_w, sigma_b, norm, placement, q0)
    if norm is not None:
        return sw * sw + sb * sb if placement == "post" else 1.0
    return float(_fixed_point_q(act, sw * sw, sb * sb, q0))


# ------------------------------------------------------------------------------------------------
# c*
def _grid_negative() -> np.ndarray:
    """[-1, 0]: 41 points clustered at -1 (Chebyshev) plus -1 + 10^-k, k = 2, 4, ..., 12."""
    n = 40
    cheb = -np.cos(0.5 * np.pi * np.arange(n + 1) / n)
    tail = -1 + 10.0 ** -np.arange(2.0, 13.0, 2.0)
    return np.unique(np.concatenate([cheb, tail, [-1.0, 0.0]]))


def _smallest_fixed_point(F: _CMap) -> float:
    """The smallest fixed point of C in [0, 1], the attractor of every c in [0, 1).

    C is a generating function (increasing and convex on [0, 1], C(1) = 1; see the module docstring), so
    h(c) = C(c) - c is convex with h(1) = 0: there is a root in [0, 1) iff h(0) = 0 or C'(1) > 1, and then
    h < 0 between it and 1. The bracket [0, 1 - 2^-k] is found by halving the distance to 1 (fast, far from
    1, in the usual case) and the root refined by Brent's method. A chaos too weak to resolve (min h above
    -1e-14, i.e. chi_1 - 1 below ~1e-7) gives c* = 1: within ~2 (chi_1 - 1) / C''(1) of the truth.
    """
    if F.kind == "bn":
        return 0.0
    if float(F(0.0)) <= 1e-14:  # C(0) = 0 up to rounding: 0 is the fixed point
        return 0.0
    if not float(F.slope(1.0)) > 1:
        return 1.0
    lo = 0.0
    for k in range(1, 60):
        b = 1.0 - 2.0 ** -k
        if float(F(b)) - b < -1e-14:  # clearly negative, not rounding noise near c = 1
            root = brentq(lambda c: float(F(c)) - c, lo, b, xtol=1e-16, rtol=1e-15, maxiter=200)
            return 1.0 if 1.0 - root < 1e-10 else float(root)
        lo = b
    return 1.0


def fixed_point_c(act, sigma_w, sigma_b, *, norm=None, placement="post", q0=1.0) -> list[FixedPoint]:
    """All fixed points of the c-map in [-1, 1], with their slopes and stability.

    The c-map is taken at its fixed-point variance (`cmap` with q = q*, from q0; with a norm, at the
    variances the norm fixes). On [0, 1] the c-map is a generating function (module docstring), whose
    fixed points there are exactly 1 (identical inputs stay identical) and c*, the smallest one, which is
    < 1 iff C(0) = 0 or chi_1 = C'(1) > 1; c* is bracketed and refined by Brent's method. On [-1, 0) fixed
    points are found as sign changes of C(c) - c on 47 points clustered at -1 (Chebyshev points plus
    -1 + 10^-k, k = 2, 4, ..., 12), refined by Brent's method; two fixed points closer than the grid
    spacing with no sign change between them (a tangency) can be missed there. Roots closer than 1e-9 are
    merged; a root within 1e-10 of +-1 is reported as +-1.

    Returns
    -------
    list of `FixedPoint(c, slope, stable)` sorted by c; slope = C'(c) (`cmap_slope`), stable iff
    |slope| < 1 (Schoenholz et al. 2017: c* = 1 is stable iff chi_1 < 1).

    Raises
    ------
    ValueError
        If the c-map is the identity (every c is a fixed point: a linear network, or q* = 0 for an
        activation that is linear at 0, such as tanh with sigma_b = 0 and sigma_w <= 1), or if q* does
        not exist (see `fixed_point_q`).
    """
    act = hermite.activation(act)
    sw, sb, norm, placement, q0 = _block_arguments("fixed_point_c", sigma_w, sigma_b, norm, placement, q0)
    F = _block_cmap(act, sw, sb, norm, placement, q0)
    if F.kind == "bn":
        return [FixedPoint(0.0, 0.0, True)]
    if F.is_identity():
        raise ValueError(
            f"every c in [-1, 1] is a fixed point: the c-map of {act.name!r} at q={F.q:.3g} is the identity "
            f"(sigma_w={sw!r}, sigma_b={sb!r}; a linear network, or q* = 0 with f linear near 0)")
    grid = _grid_negative()
    h = F(grid) - grid
    tol = 1e-14
    s = np.where(np.abs(h) <= tol, 0, np.sign(h))

    def g(c):
        return float(F(c)) - c

    roots = [1.0, _smallest_fixed_point(F)]
    for i in range(grid.size - 1):
        if s[i] * s[i + 1] < 0:
            roots.append(brentq(g, grid[i], grid[i + 1], xtol=1e-16, rtol=1e-15, maxiter=200))
    for i in np.nonzero(s == 0)[0]:
        roots.append(float(grid[i]))
    roots = sorted(roots)
    merged: list[float] = []
    for r in roots:
        r = 1.0 if 1 - r < 1e-10 else (-1.0 if 1 + r < 1e-10 else r)
        if merged and abs(r - merged[-1]) < 1e-9:
            # keep the better root (an exact +-1 or the smaller |C(c) - c|)
            if abs(r) == 1.0 or (abs(merged[-1]) != 1.0 and abs(g(r)) < abs(g(merged[-1]))):
                merged[-1] = r
            continue
        merged.append(r)
    slopes = np.atleast_1d(F.slope(np.array(merged)))
    return [FixedPoint(float(c), float(d), bool(abs(d) < 1)) for c, d in zip(merged, slopes)]
