"""E[f(u) g(v)] in closed form for piecewise-linear f and g and jointly Gaussian (u, v).

For a piecewise-linear function (every piece p(x) = p0 + p1 x of degree <= 1 on [a_i, b_i): hardtanh,
relu6, shifted and clipped ramps, steps, or any user activation given by such ``pieces``), write
u = sqrt(Q1) X, v = sqrt(Q2) Y with (X, Y) standard bivariate normal of correlation rho, and
f(sqrt(Q1) X) = sum_p (dA_p + dB_p X) 1{X > h_p} over the break points h_p = a/sqrt(Q1) (h_0 = -inf),
where dA_p, dB_p are the jumps of the piece's coefficients (in X) at h_p. Then

    E[f(u) g(v)] = sum_(p, q) dA_p dC_q L + dA_p dD_q L_Y + dB_p dC_q L_X + dB_p dD_q L_XY

at the corners (h_p, k_q), with the orthant moments of the standard bivariate normal (Rosenbaum 1961;
s = sqrt(1 - rho^2), Phi-bar the upper normal tail):

    L    = P(X > h, Y > k)  (Owen 1956: by Owen's T function),
    L_X  = E[X 1{X > h, Y > k}] = phi(h) Phi-bar((k - rho h)/s) + rho phi(k) Phi-bar((h - rho k)/s),
    L_Y  = the same with (h, X) and (k, Y) exchanged,
    L_XY = rho L + rho (h phi(h) Phi-bar((k - rho h)/s) + k phi(k) Phi-bar((h - rho k)/s))
           + s phi(h) phi((k - rho h)/s).

The arguments (k - rho h)/s are formed from one rounded difference k - h (or k + h for rho < 0) and the
exact 1 - |rho|, so that their rounding errors cancel where the two tails add up to one (rho -> +-1, h ~ k).
Each value comes with an estimate of its rounding error; callers take the value where that estimate is
small against the scale of the kernel, and an accurate numerical method elsewhere (and at |rho| = 1).

A few ufunc passes per corner and entry (Owen's T is scipy.special.owens_t): the derivative kernels of
piecewise-linear functions are step functions, which this covers as well.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special as sc

__all__ = ["linear_pieces", "orthant_moments", "piecewise_linear_pair"]

_EPS = np.finfo(np.float64).eps
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def linear_pieces(pieces, derivative: int = 0) -> list | None:
    """[(a, b, p0, p1), ...] of ``pieces`` (or of their derivative) when every piece has degree <= 1, else None."""
    out = []
    for a, b, coeffs in pieces:
        c = [float(x) for x in coeffs]
        if derivative:
            c = [i * c[i] for i in range(1, len(c))]
        c = c + [0.0] * (2 - len(c)) if len(c) < 2 else c
        if any(x != 0.0 for x in c[2:]):
            return None
        out.append((float(a), float(b), c[0], c[1]))
    return out


def _terms(pieces: list, scale: np.ndarray) -> list:
    """f(sqrt(Q) X) = sum over the returned (side, t, dA, dB) of side (dA + dB X) 1{side X > side t / sqrt(Q)}
    (t = -inf: the indicator is 1).

    The expansion starts from the piece that contains 0 (its polynomial, t = -inf) and adds the jump of the
    coefficients at each break above it (side +1) and subtracts it at each break below it (side -1), so
    every other term lives away from the bulk of the Gaussian: no O(1) terms cancel (hardtanh at small q is
    x, not -1 + relu(x + 1) - relu(x - 1)). dB is an array (the slope in X is p1 sqrt(Q)).
    """
    base = next(i for i, (a, b, *_rest) in enumerate(pieces) if a <= 0.0 < b)
    _, _, p0, p1 = pieces[base]
    out = [(1.0, -math.inf, p0, p1 * scale)]
    for i in range(base + 1, len(pieces)):  # breaks above the base piece
        a, _, q0, q1 = pieces[i]
        _, _, r0, r1 = pieces[i - 1]
        if q0 != r0 or q1 != r1:
            out.append((1.0, a, q0 - r0, (q1 - r1) * scale))
    for i in range(base - 1, -1, -1):  # breaks below it: -(jump) 1{X < b}
        _, b, q0, q1 = pieces[i]
        _, _, r0, r1 = pieces[i + 1]
        if q0 != r0 or q1 != r1:
            out.append((-1.0, b, r0 - q0, (r1 - q1) * scale))
    return out


def _tail(x):
    return sc.ndtr(-x)


def _density(x):
    with np.errstate(over="ignore"):
        return np.where(np.isfinite(x), np.exp(-0.5 * x * x) * _INV_SQRT_2PI, 0.0)


def orthant_moments(h, k, r):
    """(L, L_X, L_Y, L_XY) at the corner (h, k) for correlation r (broadcast arrays; |r| < 1, h and k may be
    -inf; see the module docstring), with the sum of the absolute values of their parts (for the rounding
    estimate)."""
    h, k, r = np.broadcast_arrays(np.asarray(h, dtype=np.float64), np.asarray(k, dtype=np.float64),
                                  np.asarray(r, dtype=np.float64))
    if h.size and np.all(h == -math.inf):  # a half plane (or the whole plane) for every entry
        return _half_plane_moments(k, r)
    if k.size and np.all(k == -math.inf):
        L, LY, LX, LXY, size = _half_plane_moments(h, r)
        return L, LX, LY, LXY, size
    pos = r >= 0
    one_m = np.where(pos, 1.0 - r, 1.0 + r)  # exact for |r| >= 1/2
    s = np.sqrt(one_m * np.where(pos, 1.0 + r, 1.0 - r))
    hf, kf = np.isfinite(h), np.isfinite(k)
    h0, k0 = np.where(hf, h, 0.0), np.where(kf, k, 0.0)
    d = np.where(pos, k0 - h0, k0 + h0)  # one rounded difference for both arguments
    e1 = np.where(pos, d + one_m * h0, d - one_m * h0)  # k - r h
    e2 = np.where(pos, -d + one_m * k0, d - one_m * k0)  # h - r k
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t1 = e1 / s  # (k - r h)/s
        t2 = e2 / s
    ph, pk = _density(h), _density(k)  # 0 at -inf
    # Phi-bar((k - r h)/s), Phi-bar((h - r k)/s); where a corner coordinate is -inf its condition always holds (1)
    A1 = np.where(hf & kf, _tail(t1), 1.0)
    A2 = np.where(hf & kf, _tail(t2), 1.0)
    L = _orthant_probability(h0, k0, hf, kf, r, s, e1, e2)
    LX = ph * A1 + r * pk * A2
    LY = pk * A2 + r * ph * A1
    hph, kpk = h0 * ph, k0 * pk
    cross = np.where(hf & kf, s * ph * _density(t1), 0.0)
    LXY = r * L + r * (hph * A1 + kpk * A2) + cross
    size = np.abs(L) + np.abs(hph) + np.abs(kpk) + ph + pk + cross
    empty = (h == math.inf) | (k == math.inf)  # an overflowed corner: the orthant is empty
    if np.any(empty):
        L, LX, LY, LXY, size = (np.where(empty, 0.0, x) for x in (L, LX, LY, LXY, size))
    return L, LX, LY, LXY, size


def _half_plane_moments(k, r):
    """`orthant_moments` at h = -inf: L = Phi-bar(k), L_X = r phi(k), L_Y = phi(k), L_XY = r L + r k phi(k)
    (k = +inf: the empty orthant; any other non-finite k, -inf or the NaN of 0/0 at a zero variance, the whole
    plane, 1, 0, 0, r, as the general path takes it), the general formulas with their vanishing terms left
    out: the same values bit for bit, without Owen's T of a corner that is not there. Terms of one-sided
    pieces (relu6: 5 of its 9 corner pairs) are all of this kind."""
    kf = np.isfinite(k)
    pk = _density(k)
    L = np.where(kf, sc.ndtr(-k), np.where(k == math.inf, 0.0, 1.0))
    kpk = np.where(kf, k, 0.0) * pk
    LX = r * pk
    LY = pk
    LXY = r * L + r * kpk
    size = np.abs(L) + np.abs(kpk) + pk
    return L, LX, LY, LXY, size


def _orthant_probability(h, k, hf, kf, r, s, e1, e2):
    """P(X > h, Y > k) = Phi2(-h, -k; r) by Owen's T function (h, k finite where hf, kf; else -inf).

    Owen's T is evaluated only at the corners that need it: a corner at (0, 0) (the kink of relu6 or hardtanh'
    at 0 against itself) is 1/4 + arcsin(r) / (2 pi), and half planes are one normal tail.
    """
    shape = h.shape
    h, k, hf, kf, r, s, e1, e2 = (np.reshape(x, -1) for x in (h, k, hf, kf, r, s, e1, e2))
    both_zero = (h == 0) & (k == 0)
    need = hf & kf & ~both_zero
    P = np.empty(h.shape)
    if np.any(need):
        sel = slice(None) if np.all(need) else need
        P[sel] = _owen_probability(h[sel], k[sel], s[sel], e1[sel], e2[sel])
    if np.any(both_zero):
        P[both_zero] = 0.25 + np.arcsin(r[both_zero]) / (2.0 * math.pi)
    # half planes and the whole plane
    half = hf & ~kf
    if np.any(half):
        P[half] = sc.ndtr(-h[half])
    half = ~hf & kf
    if np.any(half):
        P[half] = sc.ndtr(-k[half])
    P[~hf & ~kf] = 1.0
    return P.reshape(shape)


def _owen_probability(h, k, s, e1, e2):
    """Phi2(-h, -k; r) at finite corners not both 0, by Owen's T function."""
    # Owen (1956): Phi2(a, b; r) = (Phi(a) + Phi(b))/2 - T(a, (b - r a)/(a s)) - T(b, (a - r b)/(b s)) - beta,
    # beta = 1/2 if a b < 0 or (a b = 0 and a + b < 0), else 0; here a = -h, b = -k, so b - r a = -(k - r h).
    a, b = -h, -k
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ta = np.where(a != 0, (-e1) / (a * s), np.copysign(np.inf, -e1))
        tb = np.where(b != 0, (-e2) / (b * s), np.copysign(np.inf, -e2))
    # from the signs, not the product a b (which underflows to 0 for tiny nonzero a, b)
    opposite = ((a < 0) & (b > 0)) | ((a > 0) & (b < 0))
    beta = np.where(opposite | (((a == 0) | (b == 0)) & (a + b < 0)), 0.5, 0.0)
    return 0.5 * (sc.ndtr(a) + sc.ndtr(b)) - sc.owens_t(a, ta) - sc.owens_t(b, tb) - beta


def piecewise_linear_pair(pieces_f: list, pieces_g: list, r, Q1, Q2) -> tuple[np.ndarray, np.ndarray]:
    """(E[f(u) g(v)], rounding estimate) for the linear pieces of f and g (`linear_pieces`) on flat arrays r, Q1,
    Q2 (|r| < 1; module docstring).

    The estimate is 4 eps times the sum of the absolute values of the parts of every term: against a 30-digit
    evaluation of the same expansion it exceeded the true error by 5x to 1e3x for hardtanh and relu6 and their
    derivatives at q in [1e-3, 1e4] and |rho| up to 1 - 1e-15 (`tests/test_bivariate.py`).
    """
    r = np.asarray(r, dtype=np.float64)
    Q1 = np.broadcast_to(np.asarray(Q1, dtype=np.float64), r.shape)
    Q2 = np.broadcast_to(np.asarray(Q2, dtype=np.float64), r.shape)
    s1, s2 = np.sqrt(Q1), np.sqrt(Q2)
    out = np.zeros(r.shape)
    size = np.zeros(r.shape)
    for side_f, t, dA, dB in _terms(pieces_f, s1):
        h = np.full(r.shape, -math.inf) if t == -math.inf else side_f * t / s1
        for side_g, u, dC, dD in _terms(pieces_g, s2):
            k = np.full(r.shape, -math.inf) if u == -math.inf else side_g * u / s2
            # in X' = side_f X, Y' = side_g Y: corr side_f side_g r, slopes side dB, side dD
            L, LX, LY, LXY, mag = orthant_moments(h, k, side_f * side_g * r)
            b, dd = side_f * dB, side_g * dD
            sign = side_f * side_g
            out += sign * (dA * dC * L + dA * dd * LY + b * dC * LX + b * dd * LXY)
            size += (abs(dA * dC) + np.abs(dA * dd) + np.abs(b * dC) + np.abs(b * dd)) * mag
    return out, 4.0 * _EPS * size
