"""Kink-split, feature-graded Gaussian quadrature in one and two dimensions (the one copy in hermite).

Every Gaussian integral in hermite is built here from composite Gauss-Legendre rules whose panels

- break exactly at the points where the integrand is not smooth (kinks), so every piece is smooth and the
  rule converges exponentially (plain Gauss-Hermite and Monte Carlo are ~1e-3 off for kinked functions
  at high order);
- are graded geometrically, from width h up to a maximal width, towards the points near which the
  integrand varies on a small scale h (the features of phi(s z) at large s, the shadows of the kinks of
  the inner function in two dimensions), so tanh(sqrt(q) z) at q = 1e4 is as accurate as at q = 1;
- are no wider than the local wavelength of the integrand allows (`graded_breaks`).

On these rules:

- `hermite_coefficients`: c_k(q) = E[phi(sqrt(q) z) h_k(z)], k = 0..K, for many variances at once (the
  Hermite functions psi_k = h_k sqrt(phi) of `hermite.basis` keep the integrand bounded), with two
  verified fast paths for engines: Gauss-Hermite rules for kink-free functions and the Chebyshev
  interpolants in log q of `hermite.log_q_tables` for many variances;
- `gaussian_expectation`: E[g(m + sqrt(q) z)] for several functions g at once (stacked rows);
- `pair_expectation`: E[f(u) g(v)] for jointly Gaussian (u, v) by an outer graded rule over z1 and an
  inner split rule for G(z1) = E[g(sqrt(q2) (rho z1 + sqrt(1 - rho^2) z2))].

A function to integrate is described by any object with the attributes ``fn`` (numpy-vectorized),
``kinks``, ``features``, ``frequency`` and ``name`` (a `hermite.cores.Core`); kinks and features are
points in the function's own argument.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import lru_cache

import numpy as np
import scipy.special as sc

from hermite import log_q_tables
from hermite.basis import gauss_legendre, hermite_functions, panel_rule, sqrt_gaussian_density

__all__ = ["graded_breaks", "hermite_coefficients", "gaussian_expectation", "pair_expectation"]

_NODES = 20  # Gauss-Legendre nodes per panel of the coefficient rules
_RULES: OrderedDict = OrderedDict()
_RULES_BYTES = 2**30
_GH: dict = {}
_L2 = 11.0  # |z| beyond which phi(z) < 1e-26 (two-dimensional rules)
_M_OUTER = 20
_M_INNER = 16


# ------------------------------------------------------------------------------------------------
# panel layout
def graded_breaks(L: float, wmax: float, splits=(), graded=(), reach: float | None = None) -> np.ndarray:
    """Panel end points on [-L, L] (sorted).

    The panels break at -L, L and every point of ``splits`` inside (-L, L); around every (z0, h) of
    ``graded`` at z0 +- h 2^j for the j with h 2^j < reach (default wmax), so panels grow geometrically
    away from z0 from width h; finally each gap is cut into equal panels no wider than wmax.
    """
    reach = wmax if reach is None else reach
    pts = [np.array([-L, L]), np.asarray([z for z in splits if -L < z < L], dtype=np.float64)]
    for z0, h in graded:
        if not (-L - reach < z0 < L + reach) or not h < reach:
            continue  # no graded point of this one falls inside (-L, L)
        J = max(1, math.ceil(math.log2(reach / h)))  # the count of w = h 2^j < reach (doubling is exact)
        while h * 2.0 ** J < reach:
            J += 1
        while J > 1 and h * 2.0 ** (J - 1) >= reach:
            J -= 1
        w = h * np.exp2(np.arange(J))
        z = np.concatenate([z0 - w, z0 + w])
        pts.append(z[(z > -L) & (z < L)])
    pts = np.unique(np.concatenate(pts))
    a, b = pts[:-1], pts[1:]
    n = np.maximum(1, np.ceil((b - a) / wmax - 1e-9)).astype(np.int64)
    gap = np.repeat(np.arange(a.size), n)
    k = np.arange(gap.size) - np.repeat(np.cumsum(n) - n, n) + 1
    out = a[gap] + (b - a)[gap] * k / n[gap]
    last = k == n[gap]
    out[last] = b[gap[last]]  # exactly: a + (b - a) rounds, and a kink at 1e-20 would move to 0 (review finding)
    return np.concatenate([pts[:1], out])


# ------------------------------------------------------------------------------------------------
# Hermite coefficients by quadrature
def _domain(K: int) -> float:
    """|z| beyond which h_K(z) phi(z) is below 1e-20 of its peak."""
    return math.sqrt(4 * K + 2) + 10.0


def _breaks(f, s: float, K: int, L: float) -> np.ndarray:
    """Panel end points in z for f(s z) h_k(z) phi(z), k <= K, on [-L, L]: split at the kinks t/s,
    graded towards kinks and features from the unit scale 1/s of f (rounded down to a power of 2, so that
    nearby variances share one layout and its Hermite functions), at most the wavelength of h_K."""
    wmax = _panel_width(f, s, K)
    h = _unit_scale(s)
    graded = [(t / s, h) for t in f.features + f.kinks] if h < wmax else []
    return graded_breaks(L, wmax, [t / s for t in f.kinks], graded, reach=2 * wmax)


def _panel_width(f, s: float, K: int) -> float:
    """The widest panel: at most ~2 periods of h_K (and of f(s z)) per 20-node panel (one period agrees with it
    to 1e-15 of sqrt(E f^2) at K = 256 and 1024)."""
    return min(0.5, 12.0 / (math.sqrt(4 * K + 2) + s * f.frequency))


def _unit_scale(s):
    """The unit scale 1/s of f(s z) rounded down to a power of 2 (at most 2x finer)."""
    return 2.0 ** np.floor(np.log2(1.0 / s))


def _rule(f, s: float, K: int, L: float):
    """Nodes z, weights w * sqrt(phi(z)) and the Hermite functions psi_k(z) (cached by layout)."""
    br = _breaks(f, s, K, L)
    key = (K, br.tobytes())
    hit = _RULES.get(key)
    if hit is not None:
        _RULES.move_to_end(key)
        return hit
    z, w = panel_rule(br, _NODES)
    ws = w * sqrt_gaussian_density(z)
    psi = hermite_functions(K, z)
    hit = (z, ws, psi)
    _RULES[key] = hit
    # at most 48 layouts and _RULES_BYTES of Hermite functions (one order-1024 rule alone is ~250 MB)
    while len(_RULES) > 1 and (len(_RULES) > 48 or sum(p.nbytes for _, _, p in _RULES.values()) > _RULES_BYTES):
        _RULES.popitem(last=False)
    return hit


def hermite_coefficients(f, K: int, Q: np.ndarray, fast: bool = False) -> np.ndarray:
    """c_k(Q) = E[f(sqrt(Q) z) h_k(z)] for k = 0..K by composite quadrature; Q is 1-D, result (Q.size, K+1).

    The integral over z is a composite Gauss-Legendre rule (20 nodes per panel) on [-L, L],
    L = sqrt(4K + 2) + 10 (extended where the integrand is not yet negligible at the ends), laid out by
    `graded_breaks`. Variances that share a panel layout are integrated together with one matrix product.
    fast=True (engines) lets many variances (16 or more) share, octave by octave of q, a verified Chebyshev
    interpolant in log q (`hermite.log_q_tables`) and kink-free functions two verified Gauss-Hermite rules
    (accurate to ~1e-14 instead of ~1e-16).
    """
    if fast and Q.size >= log_q_tables.MIN_VARIANCES:
        out = np.empty((Q.size, K + 1))
        done = log_q_tables.octave_coefficients(f, K, Q, out, _fast_direct)
        rest = np.nonzero(~done)[0]
        if rest.size:
            out[rest] = _direct_coefficients(f, K, Q[rest], fast=True)
        return out
    return _direct_coefficients(f, K, Q, fast)


def _fast_direct(f, K: int, Q: np.ndarray) -> np.ndarray:
    return _direct_coefficients(f, K, Q, fast=True)


def _direct_coefficients(f, K: int, Q: np.ndarray, fast: bool) -> np.ndarray:
    """`hermite_coefficients` without the tables in log q."""
    out = np.empty((Q.size, K + 1))
    L0 = _domain(K)
    groups: dict = {}
    rest = np.arange(Q.size)
    if fast and not f.kinks and f.frequency == 0.0 and Q.size > 1:
        done = _smooth_gauss_hermite(f, K, Q, out)
        rest = np.nonzero(~done)[0]
        if rest.size == 0:
            return out
        Q_rest = Q[rest]
    else:
        Q_rest = Q
    if all(t == 0.0 for t in f.kinks + f.features) and f.frequency == 0.0 and rest.size:
        # every panel layout is the same while the unit scale is not graded (_breaks)
        simple = _unit_scale(np.sqrt(Q_rest)) >= _panel_width(f, 0.0, K)
        if np.any(simple):
            groups["simple"] = list(rest[simple])
        rest = rest[~simple]
    for i in rest:
        br = _breaks(f, math.sqrt(Q[i]), K, L0)
        groups.setdefault(br.tobytes(), []).append(i)
    for idx in groups.values():
        idx = np.asarray(idx)
        z, ws, psi = _rule(f, float(np.sqrt(Q[idx[0]])), K, L0)
        chunk = max(1, (1 << 21) // z.size)
        for c0 in range(0, idx.size, chunk):
            sub = idx[c0:c0 + chunk]
            s = np.sqrt(Q[sub])
            F = f.fn(s[:, None] * z[None, :])
            if not np.all(np.isfinite(F)):
                raise ValueError(f"activation {f.name!r} is not finite on the quadrature nodes at q in "
                                 f"[{Q[sub].min():g}, {Q[sub].max():g}]")
            G = F * ws
            ends = [0, 1, -2, -1]
            edge = np.abs(G[:, ends]).max(axis=1) * np.abs(psi[:, ends]).max()
            ok = edge <= 1e-18 * (np.abs(G).max(axis=1) + 1e-300)
            out[sub[ok]] = G[ok] @ psi.T
            for i in sub[~ok]:  # integrand not negligible at the ends: widen the domain for this variance
                out[i] = _one_variance(f, K, float(Q[i]))
    return out


def _one_variance(f, K: int, qv: float) -> np.ndarray:
    s = math.sqrt(qv)
    L = _domain(K)
    for _ in range(8):
        L *= 1.5
        z, ws, psi = _rule(f, s, K, L)
        g = f.fn(s * z) * ws
        if not np.all(np.isfinite(g)):
            raise ValueError(f"activation {f.name!r} is not finite on the quadrature nodes at q={qv:g}")
        ends = [0, 1, -2, -1]
        if np.abs(g[ends]).max() * np.abs(psi[:, ends]).max() <= 1e-18 * (np.abs(g).max() + 1e-300) or L > 300:
            break
    return psi @ g


def _gh_rule(N: int, K: int):
    """Gauss-Hermite nodes, weights * h_k(z) (as w / sqrt(phi) * psi_k, no overflow), cached."""
    key = (N, K)
    hit = _GH.get(key)
    if hit is None:
        z, w = _gh_nodes(N)
        ws = w / sqrt_gaussian_density(z)
        hit = (z, (hermite_functions(K, z) * ws).T.copy())
        if len(_GH) > 16:
            _GH.clear()
        _GH[key] = hit
    return hit


def _smooth_gauss_hermite(f, K: int, Q: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Coefficients of a kink-free function by two Gauss-Hermite rules (N and 3N/2 nodes), accepted only
    where the two agree to 3e-14 of the coefficient scale (the rounding floor of Gauss-Hermite sums is
    ~5e-15); returns the mask of accepted variances.

    A smooth activation is approximated by polynomials on the Gaussian-weighted line, so the rule
    converges exponentially; the second rule is the a-posteriori error estimate.
    """
    N1 = 2 * K + 400
    N2 = (3 * N1) // 2
    z1, H1 = _gh_rule(N1, K)
    z2, H2 = _gh_rule(N2, K)
    done = np.zeros(Q.size, dtype=bool)
    chunk = max(1, (1 << 20) // N2)
    for c0 in range(0, Q.size, chunk):
        s = np.sqrt(Q[c0:c0 + chunk])
        with np.errstate(over="ignore", invalid="ignore"):
            F1 = f.fn(s[:, None] * z1[None, :])
            F2 = f.fn(s[:, None] * z2[None, :])
        if not (np.all(np.isfinite(F1)) and np.all(np.isfinite(F2))):
            continue
        C1 = F1 @ H1
        C2 = F2 @ H2
        with np.errstate(over="ignore"):
            scale = np.sqrt(np.sum(C2 * C2, axis=1)) + 1e-300
        wide = ~np.isfinite(scale)  # q near the float64 limit: ||c|| without squaring it
        if np.any(wide):
            big = np.max(np.abs(C2[wide]), axis=1)
            scale[wide] = big * np.sqrt(np.sum((C2[wide] / big[:, None]) ** 2, axis=1))
        ok = np.max(np.abs(C1 - C2), axis=1) <= 3e-14 * scale
        idx = np.arange(c0, c0 + s.size)[ok]
        out[idx] = C2[ok]
        done[idx] = True
    return done


# ------------------------------------------------------------------------------------------------
# one Gaussian expectation of several functions
def gaussian_expectation(g, m: float, q: float, *, kinks=(), features=(), gain: float = 1.0,
                         tail_rows=slice(None), rtol: float = 1e-17) -> np.ndarray:
    """E[g(m + sqrt(q) z)], z ~ N(0, 1), for a function g whose values may be stacked rows.

    g maps a 1-D array u to an array of shape (..., u.size) (several functions of u at once, evaluated
    on the same nodes); the result has shape (...). The rule in z is composite Gauss-Legendre (20 nodes
    per panel, panels at most 0.5 wide) on [-L, L], split at the kinks (t - m)/sqrt(q) and graded towards
    the kinks and features (points in u near which g varies on the scale 1/gain) from the width
    1/(gain sqrt(q)) up to 1. L starts at 12 and grows by 1.5 (at most 8 times) until the rows
    ``tail_rows`` of g at m +- sqrt(q) L, times exp(-L^2/2), are below rtol times their expectations.
    Accurate to ~1e-14 relative for functions smooth between their kinks.
    """
    s = math.sqrt(q)
    points = list(kinks) + list(features)
    L = 12.0
    for _ in range(8):
        h = 1.0 / (gain * s)  # unit scale of g in z
        br = graded_breaks(L, 0.5, [(t - m) / s for t in kinks], [((t - m) / s, h) for t in points], reach=1.0)
        z, w = panel_rule(br, 20)
        w = w * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        G = np.asarray(g(m + s * z))
        vals = np.array([w @ row for row in G.reshape(-1, z.size)]).reshape(G.shape[:-1])
        ends = np.asarray(g(np.array([m - s * L, m + s * L])))[tail_rows]
        tail = np.max(np.abs(ends)) * math.exp(-0.5 * L * L)
        if tail <= rtol * max(np.max(np.abs(vals[tail_rows])), 1e-300):
            return vals
        L *= 1.5
    return vals


# ------------------------------------------------------------------------------------------------
# two-dimensional: E[f(u) g(v)], (u, v) jointly Gaussian
def _phi(z):
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def pair_expectation(f, g, fa, fb, r, Q1, Q2, smoothing=None, far=None) -> np.ndarray:
    """E[f(u) g(v)] on flat arrays: Var u = Q1, Var v = Q2, corr(u, v) = r, each entry by its own rule (many
    entries evaluated together where the inner integral allows, `_pair_batch`).

    f, g are numpy functions; fa, fb describe their kinks and features (see the module docstring);
    ``smoothing(mu, sigma)``, when given and not None for these arguments, is G in closed form
    (`hermite.smoothing`), which replaces the inner rule; ``far`` lets the batched Gauss-Hermite inner rules
    take g's asymptote in closed form far from its remainder (`_inner_gauss_hermite`).
    E[f(u) g(v)] = int phi(z1) f(sqrt(Q1) z1) G(z1) dz1 with G(z1) = E[g(sqrt(Q2) (r z1 + sqrt(1 - r^2) z2))];
    the outer rule on |z1| <= 11 is split at f's kinks and graded towards f's features and towards the
    shadows of g's kinks and features, t / (sqrt(Q2) r), where G varies on the scale sqrt(1 - r^2) / |r|,
    so r = 1 - 1e-12 is as accurate as r = 0; at |r| = 1 exactly the integral is one-dimensional.
    """
    r, Q1, Q2 = (np.asarray(x, dtype=np.float64).ravel() for x in (r, Q1, Q2))
    out = np.empty(r.size)
    done, tried = _pair_batch(f, g, fa, fb, r, Q1, Q2, smoothing, out, far)
    for i in np.nonzero(~done)[0]:
        out[i] = _pair_one(f, g, fa, fb, float(r[i]), float(Q1[i]), float(Q2[i]), smoothing, not tried[i])
    return out


_BATCH_NODES = 1 << 17  # outer nodes per batch of entries (an eighth of it with the Gauss-Hermite inner rules, whose
# arrays hold up to 96 values per node: smaller batches stay in cache)


def _pair_batch(f, g, fa, fb, r, Q1, Q2, smoothing, out, far=None) -> tuple[np.ndarray, np.ndarray]:
    """`_pair_one` for many entries at once, where G has a closed smoothing or the Gauss-Hermite inner rules
    apply and are accepted (entry by entry, as in `_pair_one`): the same outer rule (`_batched_outer`), the
    entries' nodes laid end to end and summed per entry. Fills ``out`` and returns the masks of the entries
    done and of those tried; the others (|r| = 1, the split inner rule) are left to `_pair_one`."""
    a, b = np.sqrt(Q1), np.sqrt(Q2)
    s = np.sqrt(np.maximum((1.0 - r) * (1.0 + r), 0.0))
    closed = smoothing is not None and smoothing(np.zeros(1), 1.0) is not None
    cand = s >= 1e-15
    if not closed:
        cand &= _may_use_gauss_hermite(fb, b * s)
    done = np.zeros(r.size, dtype=bool)
    idx = np.nonzero(cand)[0]
    if idx.size < 2:  # one entry: `_pair_one` as it is
        return done, done
    rows, z, w = _batched_outer(fa, fb, r[idx], a[idx], b[idx], s[idx])
    keep = w * _phi(z) > 1e-40
    rows, z, w = rows[keep], z[keep], w[keep]
    starts = np.searchsorted(rows, np.arange(idx.size))
    bounds = np.append(starts, rows.size)
    limit = _BATCH_NODES if closed else _BATCH_NODES // 8
    c0 = 0
    while c0 < idx.size:  # batches of whole entries, about `limit` nodes each
        c1 = max(c0 + 1, int(np.searchsorted(bounds, bounds[c0] + limit, side="right")) - 1)
        c1 = min(c1, idx.size)
        n0, n1 = bounds[c0], bounds[c1]
        e = idx[rows[n0:n1]]
        zz, ww = z[n0:n1], w[n0:n1]
        mu, sig = b[e] * r[e] * zz, b[e] * s[e]
        if closed:
            G, ok = smoothing(mu, sig), np.ones(c1 - c0, dtype=bool)
        else:
            G = _inner_gauss_hermite(g, mu, sig, bounds[c0:c1] - n0, far)
            ok = np.zeros(c1 - c0, dtype=bool) if G is None else ~np.isnan(G[bounds[c0:c1] - n0])
            G = np.zeros(mu.size) if G is None else np.where(np.isnan(G), 0.0, G)
        vals = ww * _phi(zz) * f(a[e] * zz) * G
        sums = np.add.reduceat(vals, bounds[c0:c1] - n0) if vals.size else np.zeros(c1 - c0)
        sel = idx[c0:c1][ok]
        out[sel] = sums[ok]
        done[sel] = True
        c0 = c1
    return done, cand


def _batched_outer(fa, fb, r, a, b, s):
    """The outer rule of `_pair_one` (`_outer_breaks` of its points, 20-node panels) for many entries at once:
    (entry of each node, nodes, weights), the entries' nodes consecutive and in order. Every entry has at least
    the panels of [-11, 11] no wider than `_outer_width`, so none is empty."""
    L, wmax = _L2, _outer_width(fa, fb)
    E = r.size
    ar = np.abs(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        pts = [(t / a, np.zeros(E)) for t in fa.kinks] + [(t / a, 1.0 / a) for t in fa.features]
        shadow = [np.where(r != 0.0, t / (b * r), np.nan) for t in fb.kinks + fb.features]
        pts += [(z0, s / ar) for z0 in shadow[: len(fb.kinks)]]
        pts += [(z0, np.maximum(s, 1.0 / b) / ar) for z0 in shadow[len(fb.kinks):]]
    cols = [np.full((E, 1), -L), np.full((E, 1), L)]
    for p, (z0, h) in enumerate(pts):
        near = (z0 > -L - wmax) & (z0 < L + wmax)  # NaN (no shadow at r = 0) is never near
        cols.append(np.where(near & (z0 > -L) & (z0 < L), z0, np.nan)[:, None])
        graded = near & (h > 0.0) & (h < wmax)
        for q, (z1, h1) in enumerate(pts):  # graded at the same place: only the finest grading (the first of equals)
            if q != p:
                graded &= ~((z1 == z0) & (h1 > 0.0) & ((h1 < h) | ((h1 == h) & (q < p))))
        if not graded.any():
            continue
        hh = np.where(graded, np.maximum(h, 1e-300), wmax)
        J = int(math.ceil(math.log2(wmax / float(hh.min())))) + 1
        W = hh[:, None] * np.exp2(np.arange(J))[None, :]  # h 2^j, exactly as repeated doubling
        lv = graded[:, None] & (W < wmax)
        for zz in (z0[:, None] - W, z0[:, None] + W):
            cols.append(np.where(lv & (zz > -L) & (zz < L), zz, np.nan))
    C = np.sort(np.concatenate(cols, axis=1), axis=1)  # NaN last
    dup = np.zeros(C.shape, dtype=bool)
    dup[:, 1:] = C[:, 1:] == C[:, :-1]
    C[dup] = np.nan
    C = np.sort(C, axis=1)
    A, B = C[:, :-1], C[:, 1:]
    gap = ~np.isnan(B)
    ga, gb = A[gap], B[gap]
    grow = np.nonzero(gap)[0]
    n = np.maximum(1, np.ceil((gb - ga) / wmax - 1e-9)).astype(np.int64)
    pg = np.repeat(np.arange(ga.size), n)
    k = np.arange(pg.size) - np.repeat(np.cumsum(n) - n, n) + 1
    lo = ga[pg] + (gb - ga)[pg] * (k - 1) / n[pg]
    hi = ga[pg] + (gb - ga)[pg] * k / n[pg]
    last = k == n[pg]
    hi[last] = gb[pg[last]]
    x, wx = gauss_legendre(_M_OUTER)
    half = 0.5 * (hi - lo)[:, None]
    z = (0.5 * (lo + hi)[:, None] + half * x).ravel()
    w = (half * wx).ravel()
    return np.repeat(grow[pg], _M_OUTER), z, w


def _inner_gauss_hermite(g, mu: np.ndarray, sigma, starts=(0,), far=None) -> np.ndarray | None:
    """G(mu) = E g(mu + sigma Z) for a kink-free g by a chain of Gauss-Hermite rules, for the nodes of one or
    several entries (entry j's nodes from starts[j]; sigma a scalar or per node). An entry is accepted, with the
    larger rule's values, where two consecutive rules of the chain agree to 1e-15 of its largest |G| (finite
    throughout); the nodes of the others are NaN (left to the panel rule `_inner`), and None comes back when no
    entry is accepted.

    Near rho = +-1, sigma = sqrt(Q2 (1 - rho^2)) is small against the scale on which a smooth activation
    varies, where Gauss-Hermite converges geometrically for an activation analytic within d of the real axis:
    60 evaluations per outer node (24 and 36 nodes) where they agree (sigma up to ~0.3 for tanh, d = pi/2,
    and ~0.7 for silu and softplus, d = pi), else 124 (36 and 64) or 220 (64 and 96 nodes: sigma up to ~0.65
    and beyond 1), instead of ~800 for the panel rule. Each rule's values are kept for the next comparison.

    ``far`` = (R, closed), for a g that is piecewise linear up to a remainder below 1e-16 beyond |x| = R (its
    asymptote, `hermite.asymptotic`), with ``closed(mu, sigma)`` the closed smoothing of the linear pieces: at
    the nodes with |mu| >= R + 12 sigma (mu + sigma Z stays beyond R but with probability 2e-33) that closed
    value is G, and g is evaluated only at the others. At large variance most outer nodes are such (softplus
    near rho = 1: about half).
    """
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), mu.shape)
    starts = np.asarray(starts, dtype=np.int64)
    bounds = np.append(starts, mu.size)
    G = np.full(mu.size, np.nan)
    prev = np.full(mu.size, np.nan)  # the previous rule's values, node by node
    prev_finite = np.ones(mu.size, dtype=bool)
    outside = np.zeros(mu.size, dtype=bool)
    if far is not None:
        outside = np.abs(mu) >= far[0] + _FAR_DEVIATIONS * sigma
        if outside.any():
            prev[outside] = far[1](mu[outside], sigma[outside])
    todo = np.arange(starts.size)
    for i, N in enumerate(_GH_INNER):
        if todo.size == 0:
            break
        sel = np.concatenate([np.arange(bounds[j], bounds[j + 1]) for j in todo])
        sub = np.cumsum(np.concatenate([[0], (bounds[todo + 1] - bounds[todo])[:-1]]))
        zg, wg = _gh_nodes(N)
        inside = ~outside[sel]
        ins = sel[inside]
        with np.errstate(over="ignore", invalid="ignore"):
            F = g(mu[ins, None] + sigma[ins, None] * zg[None, :])
        good = np.ones(sel.size, dtype=bool)
        good[inside] = np.all(np.isfinite(F), axis=1)
        cur = prev[sel]  # the closed values outside (a copy: fancy indexing)
        cur[inside] = np.where(good[inside][:, None], F, 0.0) @ wg
        if i > 0:
            diff = np.maximum.reduceat(np.abs(prev[sel] - cur), sub)
            scale = np.maximum.reduceat(np.abs(cur), sub)
            bad = np.add.reduceat((~(good & prev_finite[sel])).astype(np.int64), sub) > 0
            accept = ~bad & (diff <= _GH_INNER_TOL * np.maximum(scale, 1e-300))
            for j, k in zip(todo[accept], sub[accept]):
                G[bounds[j]:bounds[j + 1]] = cur[k:k + bounds[j + 1] - bounds[j]]
            todo = todo[~accept]
        prev[sel] = cur
        prev_finite[sel] = good
    return None if todo.size == starts.size else G


def _may_use_gauss_hermite(fb, sigma):
    """Whether the inner integral may try the Gauss-Hermite rules: only where g(mu + sigma z) varies slowly over
    the nodes (with sigma >> 1 a step-like g (tanh, silu') is constant between the symmetric nodes of both
    rules, which then agree on a wrong value: E sign(mu + sigma Z) = 0 for every small mu)."""
    return (not fb.kinks and not fb.jumps and fb.frequency == 0.0) & ((sigma <= 1.0) | (not fb.features))


def _pair_one(f, g, fa, fb, r, Q1, Q2, smoothing=None, try_gauss_hermite=True):
    a, b = math.sqrt(Q1), math.sqrt(Q2)
    s = math.sqrt(max((1.0 - r) * (1.0 + r), 0.0))  # 1 - r^2 from the exact 1 -+ r: no cancellation at |r| ~ 1
    wmax = _outer_width(fa, fb)
    fa_pts = [(t / a, 0.0) for t in fa.kinks] + [(t / a, 1.0 / a) for t in fa.features]
    if s < 1e-15:
        # v = sign(r) sqrt(Q2) z1 exactly: a one-dimensional integral
        sg = 1.0 if r > 0 else -1.0
        pts = fa_pts + [(sg * t / b, 0.0) for t in fb.kinks] + [(sg * t / b, 1.0 / b) for t in fb.features]
        z, w = panel_rule(_outer_breaks(pts, wmax), _M_OUTER)
        return float(np.sum(w * _phi(z) * f(a * z) * g(sg * b * z)))
    _, z1, w1 = _batched_outer(fa, fb, np.array([r]), np.array([a]), np.array([b]), np.array([s]))  # one layout
    keep = w1 * _phi(z1) > 1e-40
    z1, w1 = z1[keep], w1[keep]
    G = None if smoothing is None else smoothing(b * r * z1, b * s)
    if G is None and try_gauss_hermite and _may_use_gauss_hermite(fb, b * s):
        G = _inner_gauss_hermite(g, b * r * z1, b * s)
    if G is None:
        G = _inner(g, fb, b * r * z1, b * s)
    return float(np.sum(w1 * _phi(z1) * f(a * z1) * G))


OUTER_WIDTH = 2.0


def _outer_width(fa, fb) -> float:
    return OUTER_WIDTH if fa.frequency == 0.0 and fb.frequency == 0.0 else 0.5


def _outer_breaks(points, wmax):
    """Break points on [-11, 11]: every given z is a split, graded from its width h to wmax where h > 0
    (h = 0: a kink of a piecewise-smooth integrand, where a split alone keeps the rule exact)."""
    near = [(z0, h) for z0, h in points if -_L2 - wmax < z0 < _L2 + wmax]
    finest: dict = {}  # points graded at one place: the finest grading resolves every coarser scale there
    for z0, h in near:
        if h > 0:
            finest[z0] = min(finest.get(z0, math.inf), max(h, 1e-300))
    return graded_breaks(_L2, wmax, [z0 for z0, _ in near], list(finest.items()))


_GH_INNER = (24, 36, 64, 96)  # Gauss-Hermite rules of a smooth inner integral; consecutive ones are compared
_GH_INNER_TOL = 1e-15  # accepted difference of consecutive rules, relative to the largest |G|
_FAR_DEVIATIONS = 12.0  # P(|Z| > 12) = 2e-33: beyond R + 12 sigma the inner integral is the asymptote's


@lru_cache(maxsize=8)
def _gh_nodes(N: int):
    """Probabilists' Gauss-Hermite nodes and weights normalized to the standard Gaussian (weights that
    underflow to 0 dropped)."""
    z, w = sc.roots_hermitenorm(N)
    keep = w > 0
    return z[keep], w[keep] / math.sqrt(2 * math.pi)


def _inner(g, core, mu: np.ndarray, sigma: float) -> np.ndarray:
    """G(mu) = E g(mu + sigma Z) for an array of mu, split at the kinks (and graded features) of g."""
    L = _L2
    # split points in z for each mu: kinks (exact split), features (graded when sigma is large)
    spl = [(t - mu) / sigma for t in core.kinks]
    grade = sigma > 1.0 and core.features
    if grade:
        spl += [(t - mu) / sigma for t in core.features]
    if spl:
        S = np.sort(np.stack(spl, axis=1), axis=1)
        S = np.clip(S, -L, L)
    else:
        S = np.empty((mu.size, 0))
    edges = np.concatenate([np.full((mu.size, 1), -L), S, np.full((mu.size, 1), L)], axis=1)
    # fixed pattern on [0, 1]: uniform panels plus geometric grading towards both ends
    U = 24
    J = int(min(40, max(0, math.ceil(math.log2(2 * L * sigma))))) if grade else 0
    br = set(np.linspace(0.0, 1.0, U + 1))
    for j in range(1, J + 1):
        br.update((2.0 ** -j / U, 1 - 2.0 ** -j / U))
    br = np.array(sorted(br))
    x, w = gauss_legendre(_M_INNER)
    pa, pb = br[:-1, None], br[1:, None]
    pat = (0.5 * (pa + pb) + 0.5 * (pb - pa) * x).ravel()
    patw = (0.5 * (pb - pa) * w).ravel()
    total = np.zeros(mu.size)
    for j in range(edges.shape[1] - 1):
        lo, hi = edges[:, j:j + 1], edges[:, j + 1:j + 2]
        length = hi - lo
        live = length[:, 0] > 0
        if not np.any(live):
            continue
        zz = lo[live] + length[live] * pat
        ww = length[live] * patw
        vals = g(mu[live, None] + sigma * zz)
        total[live] += np.sum(ww * _phi(zz) * vals, axis=1)
    return total
