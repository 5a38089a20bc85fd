"""Signal-propagation maps of one block: q-map, c-map, fixed points, chi_1, depth scales, edge of chaos.

The classic mean-field theory of deep networks at initialization (Poole, Lahiri, Raghu, Sohl-Dickstein
and Ganguli 2016, "Exponential expressivity in deep neural networks through transient chaos";
Schoenholz, Gilmer, Ganguli and Sohl-Dickstein 2017, "Deep information propagation"), for a stack of
identical blocks Dense(sigma_w, sigma_b) + Activation(f), with sigma_w and sigma_b standard deviations
(W_ij ~ N(0, sigma_w^2 / fan_in), b_i ~ N(0, sigma_b^2)), at infinite width.

Plain blocks (``norm=None``). The state is the pre-activation (the activation's input) of a block, of
variance q and, between two inputs, correlation c (Poole et al.):

    q-map   q -> Q(q) = sigma_w^2 E f(sqrt(q) z)^2 + sigma_b^2,                       z ~ N(0, 1)
    c-map   c -> C(c) = (sigma_w^2 E[f(u) f(v)] + sigma_b^2) / Q(q),   Var u = Var v = q, corr(u, v) = c
    slope   C'(c) = sigma_w^2 q E[f'(u) f'(v)] / Q(q)                  (Price's theorem, dK/dCov = E f'f')
    chi_1   = sigma_w^2 E f'(sqrt(q*) z)^2 = C'(1) at q = q*             (Schoenholz et al. eq. 5)
    chi_q   = Q'(q*) = sigma_w^2 E[f'^2 + f f''],  xi_q = -1 / log chi_q (Schoenholz et al. eq. 7)
    chi_c   = C'(c*) = sigma_w^2 E[f'(u) f'(v)] at (c*, q*),  xi_c = -1 / log chi_c (eq. 9)

chi_1 is also the factor by which the squared gradient norm grows per block (Schoenholz et al. sec. 4;
Pennington, Schoenholz and Ganguli 2017); chi_1 < 1 is the ordered phase (c* = 1 is stable, correlations
converge to 1), chi_1 > 1 the chaotic phase (c = 1 is unstable and a c* < 1 attracts), chi_1 = 1 the edge
of chaos, where xi_c = infinity.

Structure used throughout: with q1 = q2 = q, Mehler's formula E[f(u) f(v)] = sum_k c_k(q)^2 c^k has
non-negative coefficients and C(1) = 1, so the c-map is a probability generating function in c. On [0, 1]
it is increasing and convex: 1 is always a fixed point, there is exactly one more fixed point in [0, 1)
when C'(1) = chi_1 > 1 or C(0) = 0 and none otherwise (unless C is the identity), and every c in [0, 1)
is attracted to the *smallest* fixed point c* in [0, 1] (as the extinction probability of a branching
process). (At q* = 0, chi_1 = sigma_w^2 E f'^2 is the q -> 0+ limit, while the c-map's slope at 1 is
sigma_w^2 q E f'^2 / Q(q), which tends to 1 for a smooth f; the c-map is then the q -> 0+ limit.)
`chi_c` and `depth_scales` use that c*; `fixed_point_c` also finds the fixed points in [-1, 0) (e.g. -1
and -c* for odd activations with sigma_b = 0).

Blocks with a normalization layer (``norm="ln" | "rms" | "bn"``, ``placement="pre" | "post"``; pre is
Dense -> Norm -> Activation, post is Dense -> Activation -> Norm; no affine parameters). At infinite
width the per-sample feature mean of a pre-activation vanishes, so LN and RMS agree before an activation.

    placement="pre" (LN, RMS): the norm fixes the activation's input variance to 1, so Q(q) = 1 for every
        q (q* = 1, chi_q = 0, xi_q = 0). The state is the activation's input, as for plain blocks, and the
        c-map is the plain c-map at q = 1:  c -> (sigma_w^2 K(c; 1) + sigma_b^2) / (sigma_w^2 K(1; 1)
        + sigma_b^2),  K(c; q) = E[f(u) f(v)].
    placement="post" (LN, RMS): the block output has unit diagonal, so the activation's input variance
        is q = sigma_w^2 + sigma_b^2 at every block (Q(q) = sigma_w^2 + sigma_b^2, chi_q = 0). The state
        is the block output (the norm's output), and the c-map is the Dense step followed by the
        normalized kernel:  rho = (sigma_w^2 c + sigma_b^2) / (sigma_w^2 + sigma_b^2),
        c -> (K(rho; q) - m^2) / (K(1; q) - m^2) for LN (m = E f(sqrt(q) z): LN centres each sample
        across features, and that mean is m at infinite width), c -> K(rho; q) / K(1; q) for RMS.
    chi_1 with a norm is the c-map's slope at c = 1, which is also the per-block growth of the squared
        gradient norm at infinite width (the norm's Jacobian is 1/std on all but O(1) directions):
        post: sigma_w^2 E f'(u)^2 / Var f(u) (LN), sigma_w^2 E f'(u)^2 / E f(u)^2 (RMS), u ~ N(0, q);
        pre: sigma_w^2 E f'(z)^2 / (sigma_w^2 E f(z)^2 + sigma_b^2).
    norm="bn" (either placement), batch statistics in the large-batch limit: BatchNorm acts as LN on the
        batch-centred Gram, K -> P K P with P = I - 11^T / n, then unit diagonal. For an exchangeable batch
        (all pairwise correlations c, n -> infinity) P K P = q (1 - c) P has off-diagonal correlation
        -1/(n - 1) -> 0: centring over the batch removes the mean correlation, so *the scalar c-map of two
        inputs after a BN is c -> 0* (a constant; its only fixed point is c* = 0, with slope 0, and
        xi_c = 0). (c = 1, a batch of identical inputs, is degenerate: BN maps it to the zero vector; the
        limit from c < 1, 0, is returned.) The q-map is that of LN/RMS in the same placement. chi_1 and
        the edge of chaos are not defined by these scalar maps for BN (the gradient of a BN network
        depends on the whole batch, Yang et al. 2019, "A mean field theory of batch normalization") and
        raise ValueError; `meanfield.propagate` has the exact batch-coupled rule.

Numerics: every expectation is `hermite.kernel` / `hermite.second_moment` (closed forms, proven Mehler
series or kink-split quadrature, 1e-12 accurate including c = +-1); C(1) = 1 exactly and C maps into
[-1, 1]. chi_q uses a five-point central difference of the (analytic) second moment, relative accuracy
about 1e-10.

Sources: Poole et al. 2016 (NeurIPS); Schoenholz et al. 2017 (ICLR); Pennington et al. 2017 ("Resurrecting
the sigmoid"); Cho and Saul 2009 (arc-cosine kernels, the ReLU c-map); Williams 1997 (the erf kernel);
Yang, Pennington, Rao, Sohl-Dickstein and Schoenholz 2019 (batch normalization); Xiong et al. 2020 (pre-
and post-LN placement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import brentq

import hermite
from hermite.validate import check_correlation

__all__ = [
    "FixedPoint", "qmap", "cmap", "cmap_slope", "fixed_point_q", "fixed_point_c", "chi1", "chi_c",
    "depth_scales", "edge_of_chaos", "phase_diagram", "NORMS", "PLACEMENTS", "NoFixedPointError",
    "UndefinedMapError",
]

NORMS = (None, "ln", "rms", "bn")
PLACEMENTS = ("pre", "post")

Q_LIMIT = 1e-20  # variance at which the q -> 0+ limit of the maps is evaluated (when q* = 0)
_ITER = 12  # plain iterations of the q-map before bracketing
_SIGMA_W_MAX = 20.0


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
# validation
def _sigma(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a finite number >= 0 (a standard deviation)") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name}={value!r} must be a finite number >= 0 (a standard deviation)")
    return v


def _norm(norm, placement) -> tuple:
    key = norm.lower() if isinstance(norm, str) else norm
    if key not in NORMS:
        raise ValueError(f"norm={norm!r} must be one of None, 'ln', 'rms', 'bn'")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r} must be 'pre' (Dense -> Norm -> Activation) or "
                         "'post' (Dense -> Activation -> Norm)")
    return key, placement


def _corr(c) -> np.ndarray:
    return check_correlation(c, "c")


def _variance(q, name: str, *, allow_zero: bool) -> np.ndarray:
    try:
        a = np.asarray(q, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={q!r} must be a finite number or array > 0 (a variance)") from None
    lo_ok = (a >= 0) if allow_zero else (a > 0)
    if not np.all(np.isfinite(a)) or not np.all(lo_ok):
        bad = a[~(np.isfinite(a) & lo_ok)].ravel()[0]
        rng = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={float(bad)!r} must be finite and {rng} (a variance)")
    return a


def _grid(values, name: str) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D array of variances >= 0, got {values!r}") from None
    a = np.atleast_1d(a)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of variances >= 0, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        bad = a[~(np.isfinite(a) & (a >= 0))][0]
        raise ValueError(f"{name} contains {float(bad)!r}; entries must be finite and >= 0 (sigma^2 values)")
    return a


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
        norm=None:   Q(q) = sigma_w^2 E f(sqrt(q) z)^2 + sigma_b^2  (Poole et al. 2016, eq. 3), z ~ N(0, 1)
                     (at q = 0: sigma_w^2 f(0)^2 + sigma_b^2);
        post norm:   sigma_w^2 + sigma_b^2 for every q (the norm's output has unit second moment);
        pre norm:    1 for every q (the norm fixes the activation's input variance).

    Examples
    --------
    >>> from meanfield import maps
    >>> maps.qmap("relu", 2.0, 1.0, 0.5)          # 1 * 2/2 + 0.25
    1.25
    """
    act = hermite.activation(act)
    sw, sb = _sigma(sigma_w, "sigma_w"), _sigma(sigma_b, "sigma_b")
    norm, placement = _norm(norm, placement)
    qa = _variance(q, "q", allow_zero=True)
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
    sw, sb = _sigma(sigma_w, "sigma_w"), _sigma(sigma_b, "sigma_b")
    norm, placement = _norm(norm, placement)
    ca = _corr(c)
    if norm is not None:
        return _out(_CMap(act, sw * sw, sb * sb, norm, placement)(ca))
    if q is None:
        return _out(_block_cmap(act, sw, sb, None, placement)(ca))
    qa = _variance(q, "q", allow_zero=False)
    ca, qa = np.broadcast_arrays(ca, qa)
    out = np.empty(ca.shape)
    for qv in np.unique(qa):
        sel = qa == qv
        out[sel] = _CMap(act, sw * sw, sb * sb, None, placement, float(qv))(ca[sel])
    return _out(out)


def cmap_slope(act, c, q=None, sigma_w=1.0, sigma_b=0.0, *, norm=None, placement="post"):
    """dC/dc, the slope of `cmap` (same arguments and conventions).

    By Price's theorem d E[f(u) f(v)] / d Cov(u, v) = E[f'(u) f'(v)] (weak derivatives; `hermite.kernel`
    with derivative=1), so
        norm=None / pre norm:  C'(c) = sigma_w^2 q E[f'(u) f'(v)] / Q(q)  (= sigma_w^2 E f'f' at q = q*),
        post LN / RMS:         C'(c) = sigma_w^2 q E[f'(u) f'(v)] / ((sigma_w^2 + sigma_b^2) D),
                               D = Var f(u) (LN) or E f(u)^2 (RMS), (u, v) at (rho(c), q),
        BN:                    0.
    Activations that jump (step, sign) have an infinite slope at c = +-1.
    """
    act = hermite.activation(act)
    sw, sb = _sigma(sigma_w, "sigma_w"), _sigma(sigma_b, "sigma_b")
    norm, placement = _norm(norm, placement)
    ca = _corr(c)
    if norm is not None:
        return _out(_CMap(act, sw * sw, sb * sb, norm, placement).slope(ca))
    if q is None:
        return _out(_block_cmap(act, sw, sb, None, placement).slope(ca))
    qa = _variance(q, "q", allow_zero=False)
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
            slope = _qmap_slope(act, qn, sw2, sb2)
            if abs(slope) > 1 + 1e-9:
                raise NoFixedPointError(
                    f"q={qn!r} is a repelling fixed point of the q-map (slope {slope:.6g}) for "
                    f"sigma_w^2={sw2!r}, sigma_b^2={sb2!r}, activation {act.name!r}: the iterates stay there only "
                    f"because q0={q0!r} is that point; start from another q0")
            return qn
        traj.append(qn)
        q = qn
    a, b = traj[-2], traj[-1]
    root = _bracket_root(g, Q, a, b, qmax, fail, act, sw2, sb2)
    slope = _qmap_slope(act, root, sw2, sb2)
    if abs(slope) > 1 + 1e-9:
        raise NoFixedPointError(
            f"the q-map has no attracting fixed point reachable from q0={q0!r}: the fixed point q={root:.6g} "
            f"has slope {slope:.6g} (|slope| > 1; the iterates oscillate or run off) for sigma_w^2={sw2!r}, "
            f"sigma_b^2={sb2!r}, activation {act.name!r}")
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
    sw, sb = _sigma(sigma_w, "sigma_w"), _sigma(sigma_b, "sigma_b")
    norm, placement = _norm(norm, placement)
    q0 = float(_variance(q0, "q0", allow_zero=False))
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
    sw, sb = _sigma(sigma_w, "sigma_w"), _sigma(sigma_b, "sigma_b")
    norm, placement = _norm(norm, placement)
    q0 = float(_variance(q0, "q0", allow_zero=False))
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


# ------------------------------------------------------------------------------------------------
# chi_1, chi_c, depth scales
def _chi1(act, sw: float, sb: float, norm, placement, q0: float = 1.0) -> float:
    if norm == "bn":
        raise ValueError("chi1 is not defined by the large-batch scalar maps for norm='bn': the gradient of a "
                         "BatchNorm network depends on the whole batch (Yang et al. 2019); use norm None, 'ln' "
                         "or 'rms'")
    sw2 = sw * sw
    if norm is None:
        qs = _fixed_point_q(act, sw2, sb * sb, q0)
        if sw2 == 0:
            return 0.0
        return float(sw2 * _kernel(act, 1.0, qs if qs > 0 else Q_LIMIT, derivative=1))
    return float(_CMap(act, sw2, sb * sb, norm, placement).slope(1.0))


def chi1(act, sigma_w, sigma_b, *, norm=None, placement="post", q0=1.0) -> float:
    """chi_1 = sigma_w^2 E f'(sqrt(q*) z)^2, z ~ N(0, 1) (Schoenholz et al. 2017, eq. 5).

    The slope of the c-map at c = 1 at q = q*, and the per-block growth factor of the squared gradient
    norm. q* = 0 uses the limit q -> 0+ (e.g. sigma_w^2 f'(0)^2 for a smooth f, sigma_w^2 / 2 for ReLU).
    With a LN/RMS norm: the c-map's slope at c = 1, sigma_w^2 E f'(u)^2 / Var f(u) (post LN),
    sigma_w^2 E f'(u)^2 / E f(u)^2 (post RMS), u ~ N(0, sigma_w^2 + sigma_b^2); and sigma_w^2 E f'(z)^2 /
    (sigma_w^2 E f(z)^2 + sigma_b^2) (pre). Not defined for BN (ValueError). Infinite for activations
    that jump (step, sign).

    Examples
    --------
    >>> from meanfield import maps
    >>> maps.chi1("relu", 1.2, 0.3)               # sigma_w^2 / 2 for ReLU
    0.72
    """
    act = hermite.activation(act)
    sw, sb = _sigma(sigma_w, "sigma_w"), _sigma(sigma_b, "sigma_b")
    norm, placement = _norm(norm, placement)
    q0 = float(_variance(q0, "q0", allow_zero=False))
    return _chi1(act, sw, sb, norm, placement, q0)


def _xi(chi: float) -> float:
    """-1 / log|chi|: 0 at chi = 0, infinite for |chi| >= 1 - 1e-12 (criticality within the maps' accuracy)."""
    a = abs(chi)
    if a == 0:
        return 0.0
    if a >= 1 - 1e-12 or math.isnan(a):
        return math.inf if not math.isnan(a) else math.nan
    return -1.0 / math.log(a)


def _analysis(act, sw: float, sb: float, norm, placement, q0: float = 1.0, *, need_chi1: bool = True,
              strict: bool = True) -> dict:
    """q*, chi_q, chi_1, c*, chi_c, xi_q, xi_c of one block (internal)."""
    sw2, sb2 = sw * sw, sb * sb
    if norm is None:
        qs = _fixed_point_q(act, sw2, sb2, q0)
        chi_q = _qmap_slope(act, qs, sw2, sb2)
    else:
        qs = sw2 + sb2 if placement == "post" else 1.0
        chi_q = 0.0
    out = {"q_star": float(qs), "chi_q": float(chi_q), "xi_q": _xi(chi_q)}
    out["chi1"] = math.nan
    if norm != "bn" and need_chi1:
        try:
            out["chi1"] = _chi1(act, sw, sb, norm, placement, q0)
        except UndefinedMapError:
            if strict:
                raise
    try:
        F = _block_cmap(act, sw, sb, norm, placement, q0)
    except UndefinedMapError:
        if strict:
            raise
        out.update(c_star=math.nan, chi_c=math.nan, xi_c=math.nan)
        return out
    if F.is_identity():
        out.update(c_star=math.nan, chi_c=1.0, xi_c=math.inf)
        return out
    cs = _smallest_fixed_point(F)
    chi_c = float(F.slope(cs))
    out.update(c_star=cs, chi_c=chi_c, xi_c=_xi(chi_c))
    return out


def chi_c(act, sigma_w, sigma_b, *, norm=None, placement="post", q0=1.0) -> float:
    """chi_c = C'(c*), the slope of the c-map at its stable fixed point c* (Schoenholz et al. 2017, eq. 9).

    c* is the smallest fixed point of C in [0, 1], which attracts every c in [0, 1) (c* = 1 in the
    ordered phase, where chi_c = chi_1; c* < 1 in the chaotic phase); for norm=None,
    chi_c = sigma_w^2 E[f'(u) f'(v)] with (u, v) of variance q* and correlation c*. 0 for BN (c -> 0).
    1 when the c-map is the identity (every c is a fixed point; correlations are not forgotten).
    """
    act = hermite.activation(act)
    sw, sb = _sigma(sigma_w, "sigma_w"), _sigma(sigma_b, "sigma_b")
    norm, placement = _norm(norm, placement)
    q0 = float(_variance(q0, "q0", allow_zero=False))
    return _analysis(act, sw, sb, norm, placement, q0, need_chi1=False)["chi_c"]


def depth_scales(act, sigma_w, sigma_b, *, norm=None, placement="post", q0=1.0) -> dict:
    """Depth scales of the approach to the fixed points (Schoenholz et al. 2017, eqs. 7 and 9).

    |q_l - q*| ~ exp(-l / xi_q) and |c_l - c*| ~ exp(-l / xi_c), with

        xi_q = -1 / log |chi_q|,  chi_q = Q'(q*) = sigma_w^2 E[f'(u)^2 + f(u) f''(u)],  u ~ N(0, q*),
        xi_c = -1 / log chi_c,    chi_c = C'(c*) (`chi_c`).

    chi_q is computed by a central difference of the second moment (relative accuracy ~1e-10). A depth
    scale is math.inf when its chi is >= 1 - 1e-12 (criticality: xi_c at the edge of chaos, where c* = 1
    and chi_c = chi_1 = 1; xi_q where every q is a fixed point) and 0 when chi = 0 (the map is constant:
    xi_q = 0 with any norm, since the norm sets the variance in one block; xi_c = 0 for BN).

    Returns
    -------
    dict with keys "xi_q" and "xi_c" (floats).

    Examples
    --------
    >>> from meanfield import maps
    >>> maps.depth_scales("relu", 2 ** 0.5, 0.0)["xi_c"]       # ReLU at criticality
    inf
    """
    act = hermite.activation(act)
    sw, sb = _sigma(sigma_w, "sigma_w"), _sigma(sigma_b, "sigma_b")
    norm, placement = _norm(norm, placement)
    q0 = float(_variance(q0, "q0", allow_zero=False))
    a = _analysis(act, sw, sb, norm, placement, q0, need_chi1=False)
    return {"xi_q": a["xi_q"], "xi_c": a["xi_c"]}


# ------------------------------------------------------------------------------------------------
# edge of chaos
def edge_of_chaos(act, sigma_b, *, norm=None, placement="post", sigma_w_max=_SIGMA_W_MAX, q0=1.0) -> float:
    """The critical sigma_w (a standard deviation) at which chi_1(sigma_w, sigma_b) = 1.

    chi_1 (`chi1`, at q*(sigma_w, sigma_b) from q0) is evaluated on 25 geometrically spaced sigma_w in
    [1e-3, sigma_w_max]; the first sign change of chi_1 - 1 is refined by Brent's method (to ~1e-14). If
    q* stops existing (the q-map diverges) before chi_1 reaches 1, the boundary of existence is located
    by bisection and returned when chi_1 tends to 1 there: that is ReLU with sigma_b > 0, whose critical
    line sigma_w^2 = 2 is also where q* runs off to infinity.

    Accuracy: ~1e-14 where chi_1 crosses 1 transversally; where it touches 1 quadratically (tanh at
    sigma_b = 0: chi_1 = sigma_w^2 below sigma_w = 1 as q* = 0, and 1 + 1.33 (sigma_w - 1)^2 above) the
    root is resolved only to ~1e-8.

    Known values: ReLU sigma_w^2 = 2 for every sigma_b (chi_1 = sigma_w^2 / 2); tanh sigma_w = 1 at
    sigma_b = 0 and sigma_w^2 ~ 1.76 at sigma_b^2 = 0.05 (Schoenholz et al. 2017, fig. 1; Poole et al.
    2016, fig. 2).

    Raises
    ------
    ValueError
        If chi_1 = 1 has no solution with sigma_w in (0, sigma_w_max] (e.g. exp, whose stable q* always has
        chi_1 < 1/2, or a post-LN ReLU block, which is chaotic for every sigma_w), or for norm="bn".
    """
    act = hermite.activation(act)
    sb = _sigma(sigma_b, "sigma_b")
    norm, placement = _norm(norm, placement)
    q0 = float(_variance(q0, "q0", allow_zero=False))
    smax = _sigma(sigma_w_max, "sigma_w_max")
    if smax <= 1e-3:
        raise ValueError(f"sigma_w_max={sigma_w_max!r} must be > 1e-3")
    if norm == "bn":
        _chi1(act, 1.0, sb, norm, placement)  # raises the explanation

    def f(sw):
        return _chi1(act, sw, sb, norm, placement, q0) - 1.0

    def value(sw):
        try:
            return f(sw)
        except NoFixedPointError:
            return None

    grid = np.geomspace(1e-3, smax, 25)
    prev_sw, prev = None, None
    for sw in grid:
        v = value(float(sw))
        if v is None:
            if prev is not None and prev < 0:
                return _boundary(value, prev_sw, float(sw), act, sb)
            prev_sw, prev = float(sw), None
            continue
        if abs(v) <= 1e-13:
            nxt = value(float(sw) * 1.5)
            if nxt is not None and abs(nxt) <= 1e-13:
                raise ValueError(f"chi_1 = 1 for every sigma_w (activation {act.name!r}, sigma_b={sb!r}, "
                                 f"norm={norm!r}, placement={placement!r}): every sigma_w is critical")
            return float(sw)
        if prev is not None and prev < 0 < v:
            return float(brentq(f, prev_sw, float(sw), xtol=1e-15, rtol=1e-15, maxiter=200))
        prev_sw, prev = float(sw), v
    raise ValueError(f"no edge of chaos for activation {act.name!r} with sigma_b={sb!r}, norm={norm!r}: chi_1 = 1 "
                     f"has no solution for sigma_w in (0, {smax:g}] (chi_1 - 1 at sigma_w = {smax:g}: {prev!r})")


def _boundary(value, lo: float, hi: float, act, sb: float) -> float:
    """Bisect between lo (q* exists, chi_1 < 1) and hi (no q*); switch to Brent on a sign change."""
    vlo = value(lo)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        v = value(mid)
        if v is None:
            hi = mid
        elif v < 0:
            lo, vlo = mid, v
        else:
            return float(brentq(lambda s: value(s), lo, mid, xtol=1e-15, rtol=1e-15, maxiter=200))
    if abs(vlo) < 1e-6:
        return float(lo)
    raise ValueError(f"no edge of chaos for activation {act.name!r} with sigma_b={sb!r}: beyond "
                     f"sigma_w ~ {lo:.6g} the q-map has no fixed point reachable from q0, and chi_1 = "
                     f"{1 + vlo:.6g} < 1 before that")


# ------------------------------------------------------------------------------------------------
def phase_diagram(act, sigma_b2_grid, sigma_w2_grid, *, norm=None, placement="post", q0=1.0) -> dict:
    """The order-to-chaos phase diagram over a (sigma_b^2, sigma_w^2) grid (Poole et al. 2016, fig. 2;
    Schoenholz et al. 2017, fig. 1).

    Parameters
    ----------
    act : activation
    sigma_b2_grid, sigma_w2_grid : 1-D arrays of variances >= 0 (note: sigma^2, not sigma)
    norm, placement, q0 : as in the scalar functions

    Returns
    -------
    dict with "sigma_b2", "sigma_w2" (the grids) and 2-D float arrays of shape
    (len(sigma_b2_grid), len(sigma_w2_grid)), entry [i, j] at sigma_b^2 = sigma_b2_grid[i] and
    sigma_w^2 = sigma_w2_grid[j], equal to the scalar functions there:
        "q_star" (`fixed_point_q`), "c_star" (the attractor of [0, 1), see `chi_c`), "chi1" (`chi1`),
        "chi_q", "chi_c" (`chi_c`), "xi_q", "xi_c" (`depth_scales`),
    and "phase", an array of str: "ordered" (chi_1 < 1), "chaotic" (chi_1 > 1), "critical"
    (|chi_1 - 1| <= 1e-10), "unbounded" (no finite q*: every other entry is NaN), or "undefined" (BN,
    where chi_1 is not defined). c* is NaN where the c-map is the identity (e.g. q* = 0 with tanh).
    """
    act = hermite.activation(act)
    norm, placement = _norm(norm, placement)
    q0 = float(_variance(q0, "q0", allow_zero=False))
    b2 = _grid(sigma_b2_grid, "sigma_b2_grid")
    w2 = _grid(sigma_w2_grid, "sigma_w2_grid")
    keys = ("q_star", "c_star", "chi1", "chi_q", "chi_c", "xi_q", "xi_c")
    out = {k: np.full((b2.size, w2.size), np.nan) for k in keys}
    phase = np.empty((b2.size, w2.size), dtype=object)
    for i, sb2 in enumerate(b2):
        for j, sw2 in enumerate(w2):
            try:
                a = _analysis(act, math.sqrt(sw2), math.sqrt(sb2), norm, placement, q0, need_chi1=norm != "bn",
                              strict=False)
            except NoFixedPointError:
                phase[i, j] = "unbounded"
                continue
            for k in keys:
                out[k][i, j] = a[k]
            x = a["chi1"]
            if math.isnan(x):
                phase[i, j] = "undefined"
            elif abs(x - 1) <= 1e-10:
                phase[i, j] = "critical"
            else:
                phase[i, j] = "ordered" if x < 1 else "chaotic"
    out["phase"] = phase.astype(str)
    out["sigma_b2"], out["sigma_w2"] = b2, w2
    return out
