"""E[f(u) g(v)] for activations that are piecewise linear up to a localized remainder: the closed kernel of the
linear parts plus short tensor rules for what is left.

Many smooth activations approach a piecewise-linear function away from 0: silu, softplus, mish and gelu_tanh
approach relu, sigmoid and tanh a step (elu and selu approach a ramp with a step, but their closed Gaussian
smoothing already makes the general quadrature one-dimensional and faster). Writing f = A + a with A piecewise
linear (the family's ``asymptote`` = (pieces, R, scale[, strip])) and a(x) = f(x) - A(x) below 1e-16 for |x| > R and
varying on the length ``scale`` (1, or 1/beta for softplus(beta)), and g = B + b likewise,

    E[f(u) g(v)] = E[A(u) B(v)] + E[a(u) E[B(v) | u]] + E[b(v) E[A(u) | v]] + E[a(u) b(v)],

with (u, v) jointly Gaussian, Var u = q1, Var v = q2, corr rho, and s = sqrt(1 - rho^2):

- E[A(u) B(v)]: the closed bivariate kernel of piecewise-linear functions (`hermite.bivariate`);
- the mixed terms: one-dimensional rules over |x| <= R against the closed Gaussian smoothing of the other
  asymptote (`hermite.smoothing`; v | u = x is N(rho sqrt(q2/q1) x, q2 s^2));
- E[a(u) b(v)]: a tensor rule over [-Ra, Ra] x [-Rb, Rb] against the bivariate normal density.

At large variance (no norm, sigma_w > 1: q in the hundreds to thousands) the remainders live on a sliver
|x| <= R of the Gaussian's range, where the general two-dimensional quadrature (`hermite.quadrature`) spends
most of its nodes (20-200 ms an entry); here every rule covers only the remainders' support (0.5-3 ms).

The rules are composite 12-point Gauss-Legendre, split at the remainders' kinks and jumps, with panels (in
units of the scale) no wider than 1 within |x| <= 4, 2 within 12 and 4 beyond (`_ZONES`). The remainders are
analytic within pi/2 of the real axis between their kinks (tanh's poles), where a 12-point rule on a panel of
width 1 errs ~1e-20; the coarser rules' relative errors (up to 1e-13 and 3e-8 for tanh, 1e-19 and 1e-13 for
silu, whose poles are at pi) multiply remainders that have decayed like e^(-|x|) or faster to below 1e-3 and
1e-4. A family whose remainder is analytic within pi of the real axis (the asymptote's optional fourth entry,
``strip``: softplus, silu and sigmoid, whose poles are at i pi) gets panels twice as wide (2, 4 and 8; half the
nodes per axis, a quarter of the tensor rule): against a 16-point rule on panels half as wide as the narrow
ones, over q1, q2 from 1 to 1e5, conditional deviations from 1 to 30 and both derivatives, they err at most
2.4e-16 of sqrt(E f^2 E g^2) (sigmoid': 7.0e-16, the narrow panels 6.5e-16), where tanh (strip pi/2) would err
2e-12 and mish and gelu_tanh (poles nearer than pi) 6e-15; those keep the narrow panels. The conditional
deviations sqrt(q1) s and sqrt(q2) s (the scale on which the density varies along each
axis) are at least `MIN_DEVIATION` = 1 (times the scale) where the rule is used, so the same panels resolve
the density; the joint density is formed from its whole exponent, which is never positive. Closer to
rho = +-1 the tensor rule would need too many nodes, and the caller's quadrature (fast there: a
Gauss-Hermite inner rule) takes the entry. Where both conditional deviations are wide (above ~R/6; deep networks
without a norm: hundreds), the three remainder terms are short series in the remainders' moments instead
(`hermite.remainder_moments`, with per-entry error bounds held to `MOMENT_TOL`): 1-5 us an entry instead of
100-300 us. Agreement with the general quadrature and with mpmath:
`tests/test_asymptotic.py` (below 5e-16 of sqrt(E f^2 E g^2) at q from 1 to 1e5).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from hermite.basis import panel_rule
from hermite.bivariate import linear_pieces, piecewise_linear_pair
from hermite.remainder_moments import remainder_moments, side_moments
from hermite.smoothing import piecewise_smoothing

__all__ = ["asymptotic_pair", "far_field", "MIN_DEVIATION"]

#: the moment series' bound, relative to sqrt(E f^2 E g^2): the tensor rules' own accuracy (~5e-16), so that
#: which of the two takes an entry changes its value by rounding only
MOMENT_TOL = 1e-15
MIN_DEVIATION = 1.0  # smallest conditional deviation sqrt(q) s, in units of the scale, for the tensor rules
_NODES = 12
_PANEL = 1.0  # widest panel: the remainders are analytic within pi/2 of the real axis (tanh, sech^2)
#: (|x| up to, panel width factor): the remainders decay at least like e^(-|x|), so farther out a coarser rule's
#: relative error (tanh's poles at pi/2: 1e-13 for panels of width 2, 3e-8 for 4) multiplies a smaller value
_ZONES = ((4.0, 1.0), (12.0, 2.0), (math.inf, 4.0))
_CHUNK = 1 << 20  # density values per batch of entries (8 MB: 20 % faster than 32 MB, measured)
_INV_2PI = 1.0 / (2.0 * math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _pieces_value(pieces: list, x: np.ndarray) -> np.ndarray:
    """The piecewise-linear function [(a, b, p0, p1), ...] at x (right-continuous at the breaks)."""
    out = np.zeros(x.shape)
    for a, b, p0, p1 in pieces:
        sel = (x >= a) & (x < b)
        out[sel] = p0 + p1 * x[sel]
    return out


class _Side:
    """One function's asymptote for a derivative order: linear pieces, and the remainder on its rule."""

    def __init__(self, core, derivative: int):
        pieces, radius, scale, *strip = core.asymptote
        panel = _PANEL * (2.0 if strip and strip[0] >= math.pi else 1.0)  # strip: pi/2 unless declared
        self.scale = float(scale)
        self.pieces = pieces  # ((a, b, coeffs), ...): for the smoothing
        self.linear = linear_pieces(pieces, derivative)
        self.derivative = derivative
        R = float(radius)
        breaks = {t for a, b, *_ in self.linear for t in (a, b) if math.isfinite(t)}
        breaks.update(core.kinks)
        breaks.update(core.jumps)
        breaks.update(t for edge, _ in _ZONES[:-1] for t in (-edge * self.scale, edge * self.scale))
        ends = sorted({-R, R, *(t for t in breaks if -R < t < R)})
        br = [ends[0]]
        for a, b in zip(ends[:-1], ends[1:]):
            width = next(f for edge, f in _ZONES if abs(0.5 * (a + b)) <= edge * self.scale) * panel * self.scale
            n = max(1, math.ceil((b - a) / width - 1e-9))
            br.extend(a + (b - a) * np.arange(1, n) / n)
            br.append(b)
        self.x, w = panel_rule(np.asarray(br), _NODES)
        with np.errstate(over="ignore"):
            self.wa = w * (core.function(derivative)(self.x) - _pieces_value(self.linear, self.x))  # weights * a(x)
        # the remainder's moments on these nodes (None unless the linear pieces break only at 0)
        self.moments = side_moments(self.x, self.wa, self.linear, R)

    def smoothing(self, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """E[A(mu + sigma Z)] (of A' for derivative 1), closed; sigma broadcasts against mu."""
        return piecewise_smoothing(self.pieces, mu, sigma, self.derivative)


@lru_cache(maxsize=64)
def _side(core, derivative: int) -> _Side:
    return _Side(core, derivative)


def far_field(core, derivative: int):
    """(R, closed): beyond |x| = R the function (derivative=1: its derivative) is its asymptote's linear pieces
    to 1e-16, and ``closed(mu, sigma)`` = E[A(mu + sigma Z)] is their Gaussian smoothing in closed form (for
    `hermite.quadrature`'s inner rules)."""
    return float(core.asymptote[1]), _side(core, derivative).smoothing


def asymptotic_pair(fa, fb, r, Q1, Q2, derivative: int, scale: np.ndarray, tol: float = 1e-13,
                    tensor: bool = True):
    """E[fa(u) fb(v)] (derivative=1: of the derivatives) by the decomposition of the module docstring, for the
    entries of the flat arrays r, Q1, Q2 where it applies: |r| < 1, both conditional deviations at least
    `MIN_DEVIATION`, and the closed part's rounding estimate at most ``tol`` times ``scale`` (sqrt(E fa^2
    E fb^2)). ``tensor=False``: the moment series only (for families whose general quadrature has a closed
    inner smoothing, elu and selu: 4x faster than the tensor rules there). Returns (values, mask of the
    entries computed)."""
    A, B = _side(fa, derivative), _side(fb, derivative)
    r = np.asarray(r, dtype=np.float64)
    Q1 = np.broadcast_to(np.asarray(Q1, dtype=np.float64), r.shape)
    Q2 = np.broadcast_to(np.asarray(Q2, dtype=np.float64), r.shape)
    s = np.sqrt(np.maximum((1.0 - r) * (1.0 + r), 0.0))
    ok = (np.abs(r) < 1.0) & (np.sqrt(Q1) * s >= MIN_DEVIATION * A.scale) & (np.sqrt(Q2) * s >= MIN_DEVIATION * B.scale)
    out = np.zeros(r.size)
    idx = np.nonzero(ok)[0]
    if idx.size == 0:
        return out, ok
    closed, err = piecewise_linear_pair(A.linear, B.linear, r[idx], Q1[idx], Q2[idx])
    good = err <= tol * scale[idx]
    ok[idx[~good]] = False
    idx, closed = idx[good], closed[good]
    if A.moments is not None and B.moments is not None:
        # wide conditional deviations: the remainders' moment series (`hermite.remainder_moments`), where their
        # bound meets tol; the tensor rules below take the rest
        rest, fine = remainder_moments(A.moments, B.moments, r[idx], np.sqrt(Q1[idx]), np.sqrt(Q2[idx]), s[idx],
                                       min(tol, MOMENT_TOL) * scale[idx])
        out[idx[fine]] = closed[fine] + rest[fine]
        idx, closed = idx[~fine], closed[~fine]
    if not tensor:
        ok[idx] = False
        return out, ok
    step = max(1, _CHUNK // (A.x.size * B.x.size))
    for c in range(0, idx.size, step):
        i = idx[c:c + step]
        out[i] = closed[c:c + step] + _remainders(A, B, r[i], np.sqrt(Q1[i]), np.sqrt(Q2[i]), s[i])
    return out, ok


def _remainders(A: _Side, B: _Side, r, a1, a2, s) -> np.ndarray:
    """E[a(u) B(v)] + E[A(u) b(v)] + E[a(u) b(v)] for a few entries (arrays of correlations, deviations
    sqrt(q1), sqrt(q2) and s = sqrt(1 - r^2))."""
    r, a1, a2, s = r[:, None], a1[:, None], a2[:, None], s[:, None]
    zx, zy = A.x[None, :] / a1, B.x[None, :] / a2
    ra = A.wa * np.exp(-0.5 * zx * zx) * (_INV_SQRT_2PI / a1)  # weighted a(x) phi_q1(x), per entry
    rb = B.wa * np.exp(-0.5 * zy * zy) * (_INV_SQRT_2PI / a2)
    mixed = np.sum(ra * B.smoothing(r * a2 * zx, a2 * s), axis=1) + np.sum(rb * A.smoothing(r * a1 * zy, a1 * s),
                                                                          axis=1)
    # the bivariate standard normal density: its exponent -(zx^2 - 2 r zx zy + zy^2) / (2 s^2) is
    # -(zx - r zy)^2 / (2 s^2) - zy^2 / 2, two terms <= 0 (the density over the product of the marginals
    # overflows for wide supports); the second goes into the weights of b
    d = zx[:, :, None] - r[:, :, None] * zy[:, None, :]
    np.square(d, out=d)
    d *= (-0.5 / (s * s))[:, :, None]
    np.exp(d, out=d)
    wb = B.wa * np.exp(-0.5 * zy * zy)
    joint = np.matmul(A.wa, np.matmul(d, wb[:, :, None])[:, :, 0].T) * (_INV_2PI / (a1 * a2 * s))[:, 0]
    return mixed + joint
