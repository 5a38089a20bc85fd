"""Hermite coefficients of many variances from verified Chebyshev interpolants in log q, one per octave of q,
built once and cached (the engines' fast path; the public `hermite.coefficients` never uses it).

The coefficients c_k(q) = E[phi(sqrt(q) z) h_k(z)] are analytic in log q for q > 0: the kinks of phi(sqrt(q) z)
sit at t / sqrt(q), which move analytically with q, and phi is analytic between them. On the octave
q in [2^j, 2^(j+1)] they are interpolated in x = 2 (log2 q - j) - 1 in [-1, 1] through the m Chebyshev points
of the second kind x_i = cos(pi i / (m - 1)), m = 17, 33 or 65 (nested: each level reuses the previous one's
values), whose values are computed directly (`direct`, the accurate quadrature). A level is accepted only where

- the last three Chebyshev coefficients are below TOL = 3e-14 of the octave's coefficient scale
  max_i ||c(q_i)||_2 (in the largest absolute value over k, the criterion of the other fast paths), and
- at three other points of the octave the interpolant agrees with the direct value to TOL of that scale,

else the octave keeps the direct path (recorded, so a failed octave is not rebuilt). The kernel error from a
coefficient error delta is |sum_k delta_k d_k r^k| <= ||delta|| ||d|| (Cauchy-Schwarz), far inside the 1e-12
contract. `tests/test_log_q_tables.py` compares the tables with the public accurate coefficients.

The tables serve calls with at least `MIN_VARIANCES` variances (every octave among them; fewer are computed
directly), so a call's result depends on that call's variances only, never on the cache's history: a table is
built deterministically from its octave, and a rebuilt table is the same. A table costs 20-68 direct variances
once; an engine that walks the same octaves block after block (no norm: every input keeps its own variance)
then pays one matrix product per call.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

__all__ = ["octave_coefficients", "MIN_VARIANCES", "TOL", "LEVELS"]

MIN_VARIANCES = 16  # variances in one call from which the tables serve it
TOL = 3e-14
LEVELS = (17, 33, 65)
_CHECKS = np.array([-0.8173, -0.1391, 0.5527])  # verification points, away from every level's nodes
_CACHE: OrderedDict = OrderedDict()  # (id(core), K, j) -> (core, Chebyshev coefficients (m, K+1) or None)
_CACHE_BYTES = 2**28


def octave_coefficients(f, K: int, Q: np.ndarray, out: np.ndarray, direct) -> np.ndarray:
    """Fill ``out[i]`` with c_0..c_K(Q[i]) from the octave tables where Q (1-D) holds at least `MIN_VARIANCES`
    variances and Q[i]'s octave has a verified table; returns the mask of the variances filled.
    ``direct(f, K, Q)`` computes coefficients accurately (the tables' node values)."""
    done = np.zeros(Q.size, dtype=bool)
    if Q.size < MIN_VARIANCES:
        return done
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.log2(Q)
    finite = np.isfinite(t)
    if not finite.any():
        return done
    j = np.zeros(Q.size, dtype=np.int64)
    j[finite] = np.floor(t[finite]).astype(np.int64)
    groups = []  # (positions, table) per octave with a verified table
    for jo in np.unique(j[finite]):
        A = _table(f, K, int(jo), direct)
        if A is not None:
            groups.append((np.nonzero(finite & (j == jo))[0], A))
    if not groups:
        return done
    # the rows T_n(x) of every octave's points by one recurrence, then one matrix product per octave
    sel = np.concatenate([g for g, _ in groups])
    x = np.clip(2.0 * (t[sel] - j[sel]) - 1.0, -1.0, 1.0)
    m = max(A.shape[0] for _, A in groups)
    chunk = max(1, (1 << 22) // m)
    for c0 in range(0, x.size, chunk):
        T = _chebyshev_rows(x[c0:c0 + chunk], m)
        p0 = 0
        for g, A in groups:
            lo, hi = max(p0, c0), min(p0 + g.size, c0 + chunk)
            if lo < hi:
                out[sel[lo:hi]] = T[: A.shape[0], lo - c0:hi - c0].T @ A
            p0 += g.size
    done[sel] = True
    return done


def _table(f, K: int, j: int, direct) -> np.ndarray | None:
    key = (id(f), K, j)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit[1]
    A = _build(f, K, j, direct)
    _CACHE[key] = (f, A)  # the core is kept in the entry so its id cannot be reused
    while len(_CACHE) > 1 and sum(a.nbytes for _, a in _CACHE.values() if a is not None) > _CACHE_BYTES:
        _CACHE.popitem(last=False)
    return A


def _variances(j: int, x: np.ndarray) -> np.ndarray:
    return np.exp2(j + 0.5 * (x + 1.0))


def _build(f, K: int, j: int, direct) -> np.ndarray | None:
    """Chebyshev coefficients (m, K+1) of c_k on octave j at the first verified level, or None."""
    checks = direct(f, K, _variances(j, _CHECKS))
    values = None
    for m in LEVELS:
        x = np.cos(np.pi * np.arange(m) / (m - 1))
        if values is None:
            values = direct(f, K, _variances(j, x))
        else:  # the previous level's points are every other point of this one
            new = np.empty((m, K + 1))
            new[0::2] = values
            new[1::2] = direct(f, K, _variances(j, x[1::2]))
            values = new
        if not np.all(np.isfinite(values)):
            return None
        A = _chebyshev_coefficients(values)
        big = float(np.max(np.abs(values)))
        if not 0.0 < big < math.inf or not np.all(np.isfinite(A)):
            return None  # zero or beyond float64's range: the direct path decides
        scale = big * math.sqrt(float(np.max(np.sum((values / big) ** 2, axis=1))))  # max_i ||c(q_i)||, no overflow
        if np.max(np.abs(A[-3:])) > TOL * scale:
            continue
        if np.max(np.abs(_chebyshev_values(_CHECKS, A) - checks)) > TOL * scale:
            continue
        A.setflags(write=False)
        return A
    return None


def _chebyshev_coefficients(values: np.ndarray) -> np.ndarray:
    """a_0..a_{m-1} with sum_n a_n T_n(x_i) = values[i] at x_i = cos(pi i / (m - 1)) (a discrete cosine
    transform of type I, by one matrix product)."""
    m = values.shape[0]
    n = np.arange(m)
    C = np.cos(np.pi * np.outer(n, n) / (m - 1))
    w = np.full(m, 1.0)
    w[0] = w[-1] = 0.5
    A = (2.0 / (m - 1)) * (C * w[None, :]) @ values
    A[0] *= 0.5
    A[-1] *= 0.5
    return A


def _chebyshev_rows(x: np.ndarray, m: int) -> np.ndarray:
    """T_0(x)..T_{m-1}(x), shape (m, x.size), by the three-term recurrence T_n = 2 x T_{n-1} - T_{n-2}."""
    T = np.empty((m, x.size))
    T[0] = 1.0
    if m > 1:
        T[1] = x
    x2 = 2.0 * x
    for n in range(2, m):
        np.multiply(T[n - 1], x2, out=T[n])
        T[n] -= T[n - 2]
    return T


def _chebyshev_values(x: np.ndarray, A: np.ndarray) -> np.ndarray:
    """sum_n A[n] T_n(x) for every x: the rows T_n(x) by the three-term recurrence, then one matrix product."""
    m = A.shape[0]
    out = np.empty((x.size, A.shape[1]))
    chunk = max(1, (1 << 22) // m)
    for c0 in range(0, x.size, chunk):
        xs = x[c0:c0 + chunk]
        out[c0:c0 + chunk] = _chebyshev_rows(xs, m).T @ A
    return out
