"""E[f(u) g(v)] entry by entry for two cores (the accurate path behind every kernel without a closed form).

`pair_kernel` routes each entry to the first method that proves or meets the accuracy target TOL (2e-14 of
sqrt(E f(u)^2 E g(v)^2); the guarantee is 1e-12):

0. u = v (rho = 1 at one variance, a Gram's diagonal): the second moment;
1. for piecewise-linear pairs with few entries per variance (random triples), the closed bivariate kernel
   (`hermite.bivariate`), whose per-entry cost is below that of per-variance coefficients;
2. the Mehler series sum_k c_k(Q1) d_k(Q2) r^k at the truncation levels `SERIES_K` (and 1024 for smooth
   cores), where its remainder is proven: by Cauchy-Schwarz it is at most |r|^(K+1) sqrt(T_K(Q1) T_K(Q2)),
   T_K the tail mass;
3. the closed bivariate kernel for piecewise-linear pairs (after the series where variances are shared);
4. activations that are piecewise linear up to a localized remainder (`hermite.asymptotic`);
5. kink-split, feature-graded two-dimensional quadrature (`hermite.quadrature.pair_expectation`).

TOL bounds each method's own truncation. The series' coefficients of many variances come from the verified
tables in log q (`hermite.log_q_tables`, within 3e-14 of ||c(q)||), whose error the series carries into the
kernel (Cauchy-Schwarz: at most about ||delta|| ||d||): an independent review against mpmath at 96 points
(2026-12-05) found the series route at most 4.5e-14 of the scale (exact coefficients: 6e-15 there), the
asymptotic rule and the quadrature at most 4.6e-16.

Cores come from `hermite.cores`; this module uses only their methods (coefficients, moments, pieces,
asymptotes, functions), so it imports none of them.
"""

from __future__ import annotations

import numpy as np

from hermite import quadrature
from hermite.asymptotic import asymptotic_pair, far_field
from hermite.basis import mehler_sum
from hermite.bivariate import piecewise_linear_pair
from hermite.distinct import Distinct
from hermite.log_q_tables import TOL as TABLE_TOL

__all__ = ["pair_kernel", "TOL", "SERIES_K"]

TOL = 2e-14  # target relative accuracy of each kernel method (the guarantee is 1e-12)
# each entry is summed at the first level that proves it: intermediate levels spare most entries of random triples
# the order-256 coefficients (2-2.5x more kernel values per second for tanh, sigmoid, silu, elu)
SERIES_K = (24, 64, 160, 256)


# the Mehler series with its proven remainder
def _series_parts(core, K: int, Q: np.ndarray, derivative: int):
    """Per-variance coefficients (of phi or phi'), second moments and tail masses."""
    if derivative == 0:
        c = core.coefficients(K, Q, fast=True)
        m = core.second_moment(Q)
    else:
        c1 = core.coefficients(K + 1, Q, fast=True)
        c = _stein(c1, Q)
        m = core.derivative_moment(Q)
        # the fast coefficients err up to ~3e-14 of ||c(q)||, which Stein's factor sqrt((k+1)/q) magnifies at
        # small q (softplus' at q = 1e-3: 5e-12 of sqrt(E f'^2)): there, the derivative's own coefficients
        loose = TABLE_TOL * np.sqrt(np.einsum("ij,ij->i", c1, c1) * (K + 2)) / np.sqrt(Q) > 1e-14 * np.sqrt(m)
        if np.any(loose):
            c[loose] = _derivative_coefficients(core, K, Q[loose])
    # the tail is known only up to the rounding of M and of sum c_k^2: never trust it below 1e-15 M
    t = np.maximum(m - np.einsum("ij,ij->i", c, c), 0.0) + 1e-15 * m
    return c, m, t


def pair_kernel(fa, fb, r, Q1, Q2, derivative=0, distinct: Distinct | None = None) -> np.ndarray:
    """E[fa(u) fb(v)] (or of the derivatives) on flat arrays, by proven series, the closed form of piecewise-linear
    pairs (`hermite.bivariate`), or quadrature, in that order.

    One coefficient computation per distinct variance and truncation level (both functions share it
    when they are the same core); an entry is summed at the first level whose tail bound proves it.
    ``distinct``: the `hermite.distinct.Distinct` of np.concatenate([Q1, Q2]) where the caller has it; the
    distinct variances are otherwise found here, by one sort for the whole call.
    """
    r = np.asarray(r, dtype=np.float64)
    M = r.size
    Q1 = np.broadcast_to(np.asarray(Q1, dtype=np.float64), (M,))
    Q2 = np.broadcast_to(np.asarray(Q2, dtype=np.float64), (M,))
    D = Distinct.of(np.concatenate([Q1, Q2])) if distinct is None else distinct
    i1, i2 = D.index[:M], D.index[M:]  # for the per-variance work; each entry keeps its own Q1, Q2
    if fb is fa:
        # E[f(u) f(v)] is symmetric in (u, v): every route sees the larger variance first, so the kernel is
        # bitwise symmetric in (Q1, Q2), and the quadrature's inner integral runs over the smaller variance,
        # whose conditional deviation sqrt(Q2 (1 - r^2)) the Gauss-Hermite inner rules accept more often
        # (the distinct values are sorted: the larger variance has the larger index)
        Q1, Q2 = np.maximum(Q1, Q2), np.minimum(Q1, Q2)
        i1, i2 = np.maximum(i1, i2), np.minimum(i1, i2)
    out = np.empty(M)
    live = ~(np.isnan(Q1) | np.isnan(Q2))
    out[~live] = np.nan  # a NaN variance gives NaN, never a finite-looking value
    if fb is fa and (derivative == 0 or not fa.jumps):
        # u = v (rho = 1, one variance: a Gram's diagonal): the second moment, one value per variance
        same = (r == 1.0) & (Q1 == Q2)
        if same.any():
            out[same] = _indexed_moments(fa, D, i1[same], derivative)
            live &= ~same
    pending = np.nonzero(live)[0]
    lf, lg = fa.linear_pieces(derivative), fb.linear_pieces(derivative)
    closed = lf is not None and lg is not None
    if closed and 8 * D.count(D.index) > M:
        # few entries per variance (random triples): the series' per-variance coefficients cost more than
        # the closed form of every entry
        pending = pending[_closed_piecewise_linear(fa, fb, lf, lg, r[pending], Q1[pending], Q2[pending], D,
                                                   i1[pending], i2[pending], derivative, out, pending)]
    smooth = all(not f.kinks and f.frequency == 0.0 for f in (fa, fb))
    for K in SERIES_K + ((1024,) if smooth else ()):
        if pending.size == 0:
            break
        if K == 1024 and pending.size < max(64, D.count(np.concatenate([i1[pending], i2[pending]]))):
            break  # a few entries: direct quadrature is cheaper than order-1024 coefficients
        if fb is fa:
            u, (ia, ib) = D.among(i1[pending], i2[pending])
            ca, ma, ta = _series_parts(fa, K, u, derivative)
            cb, mb, tb = ca, ma, ta
        else:
            ua, (ia,) = D.among(i1[pending])
            ub, (ib,) = D.among(i2[pending])
            ca, ma, ta = _series_parts(fa, K, ua, derivative)
            cb, mb, tb = _series_parts(fb, K, ub, derivative)
        rp = r[pending]
        scale = np.sqrt(ma[ia]) * np.sqrt(mb[ib])  # no overflow of the product at q ~ 1e154+
        bound = np.abs(rp) ** (K + 1) * (np.sqrt(ta[ia]) * np.sqrt(tb[ib]))
        ok = bound <= TOL * scale
        if np.any(ok):
            _shortest_sums(ca, cb, ta, tb, ia, ib, rp, scale, ok, K, out, pending)
        pending = pending[~ok]
    if pending.size and closed:  # after the series where variances are shared: a Horner sum is cheaper still
        pending = pending[_closed_piecewise_linear(fa, fb, lf, lg, r[pending], Q1[pending], Q2[pending], D,
                                                   i1[pending], i2[pending], derivative, out, pending)]
    if pending.size and fa.asymptote is not None and fb.asymptote is not None:
        # piecewise linear up to localized remainders (silu, softplus, tanh, ... at large variance)
        scale = (np.sqrt(_indexed_moments(fa, D, i1[pending], derivative))
                 * np.sqrt(_indexed_moments(fb, D, i2[pending], derivative)))
        # where the general quadrature has a closed inner smoothing (elu, selu) it beats the tensor rules
        inner_closed = fb.closed_smoothing(np.zeros(1), 1.0, derivative) is not None
        vals, done = asymptotic_pair(fa, fb, r[pending], Q1[pending], Q2[pending], derivative, scale,
                                     tensor=not inner_closed)
        out[pending[done]] = vals[done]
        pending = pending[~done]
    if pending.size:
        f, g = fa.function(derivative), fb.function(derivative)
        def smoothing(mu, sigma):
            return fb.closed_smoothing(mu, sigma, derivative)

        extra = {"far": far_field(fb, derivative)} if fb.asymptote is not None else {}
        out[pending] = quadrature.pair_expectation(f, g, fa, fb, r[pending], Q1[pending], Q2[pending], smoothing,
                                                   **extra)
    return out


def _derivative_coefficients(core, K: int, Q: np.ndarray) -> np.ndarray:
    """d_0..d_K(Q), the coefficients of phi', accurate relative to sqrt(E phi'^2): for a smooth core, those of
    phi' itself (`Core.derived`; fast: its own tables in log q, verified relative to its own scale), else
    Stein's lemma on the accurate (not the fast) coefficients of phi."""
    if not core.kinks and not core.jumps and core.derivative is not None:
        return core.derived().coefficients(K, Q, fast=True)
    return _stein(core.coefficients(K + 1, Q), Q)


def _stein(c1: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """The coefficients of phi' from those of phi (c_0..c_(K+1) per row): d_k = sqrt((k+1)/q) c_(k+1) (Stein's
    lemma); below q ~ 1e-290, where (k+1)/q overflows, with the square roots apart (d_k was NaN at q = 5e-324)."""
    k = np.arange(1, c1.shape[1])
    with np.errstate(over="ignore", invalid="ignore"):  # the rows below are replaced
        c = c1[:, 1:] * np.sqrt(k[None, :] / Q[:, None])
    tiny = Q < 1e-290
    if np.any(tiny):
        c[tiny] = c1[tiny, 1:] / np.sqrt(Q[tiny])[:, None] * np.sqrt(k)[None, :]
    return c


def _shortest_sums(ca, cb, ta, tb, ia, ib, rp, scale, ok, K, out, pending) -> None:
    """Sum each proven entry (``ok``) of a level K at the shortest order K' in K/32, ..., K/4, K/2, K (at least
    the first level) whose own bound proves it: |r|^(K'+1) sqrt(T_K'(Q1) T_K'(Q2)) <= TOL scale, with
    T_K' = T_K + sum_(K' < k <= K) c_k^2 a sum of squares (no cancellation). Fast-decaying coefficients (small
    variances of smooth cores, rho near 1) thereby cost a few dozen terms instead of up to 1024."""
    sel = np.nonzero(ok)[0]
    orders = [K >> i for i in range(1, 6) if K >> i >= SERIES_K[0]]
    if not orders:
        out[pending[sel]] = mehler_sum(ca, cb, ia[sel], ib[sel], rp[sel])
        return
    order = np.full(sel.size, K)
    a_sq, b_sq = ca * ca, cb * cb
    for k in orders:  # the largest first, so an entry ends at the shortest order that proves it
        Ta = ta + np.sum(a_sq[:, k + 1:], axis=1)
        Tb = Ta if cb is ca and tb is ta else tb + np.sum(b_sq[:, k + 1:], axis=1)
        fine = np.abs(rp[sel]) ** (k + 1) * (np.sqrt(Ta[ia[sel]]) * np.sqrt(Tb[ib[sel]])) <= TOL * scale[sel]
        order[fine] = k
    for k in np.unique(order):
        e = sel[order == k]
        out[pending[e]] = mehler_sum(ca[:, :k + 1], cb[:, :k + 1], ia[e], ib[e], rp[e])


def _moments(core, Q: np.ndarray, derivative: int) -> np.ndarray:
    """E phi^2 (or E phi'^2) at the variances Q, one value per distinct variance."""
    return _indexed_moments(core, Distinct.of(Q), None, derivative)


def _indexed_moments(core, D: Distinct, i: np.ndarray | None, derivative: int) -> np.ndarray:
    """E phi^2 (or E phi'^2) at the variances D.values[i] (i None: D.index), one value per distinct variance."""
    u, (inv,) = D.among(D.index if i is None else i)
    return (core.second_moment(u) if derivative == 0 else core.derivative_moment(u))[inv]


def _closed_piecewise_linear(fa, fb, lf, lg, r, Q1, Q2, D, i1, i2, derivative, out, where) -> np.ndarray:
    """Entries with |r| < 1 by the closed form of `hermite.bivariate` (into ``out[where]``) where its rounding
    estimate is at most 1e-12 sqrt(E fa^2 E fb^2); returns the positions left to the other methods (|r| = 1,
    larger estimates)."""
    idx = np.nonzero(np.abs(r) < 1.0)[0]
    if idx.size == 0:
        return np.arange(r.size)
    v, err = piecewise_linear_pair(lf, lg, r[idx], Q1[idx], Q2[idx])
    scale = (np.sqrt(_indexed_moments(fa, D, i1[idx], derivative))
             * np.sqrt(_indexed_moments(fb, D, i2[idx], derivative)))
    ok = err <= 1e-12 * scale
    out[where[idx[ok]]] = v[ok]
    done = np.zeros(r.size, dtype=bool)
    done[idx[ok]] = True
    return np.nonzero(~done)[0]
