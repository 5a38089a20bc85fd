"""Orthonormal probabilists' Hermite functions and the quadrature rules the numerics are built on.

h_k = He_k / sqrt(k!) are orthonormal under the standard Gaussian weight phi(z) = exp(-z^2/2)/sqrt(2 pi).
We never form h_k(z) phi(z) directly (it under/overflows for large k and |z|); instead the Hermite
functions psi_k(z) = h_k(z) sqrt(phi(z)) satisfy the stable three-term recurrence

    psi_0 = phi^(1/2),  psi_1 = z psi_0,  psi_{k+1} = (z psi_k - sqrt(k) psi_{k-1}) / sqrt(k+1),

and |psi_k| stays below 1 for every k and z; an integral E[g(z) h_k(z)] is then
sum_j w_j g(z_j) sqrt(phi(z_j)) psi_k(z_j) for a rule (z_j, w_j) of dz.

Mehler's formula E[h_j(u) h_k(v)] = delta_jk rho^k (standard Gaussians with correlation rho) turns a dual
kernel into the power series sum_k a_k b_k rho^k, summed by Horner's rule in `mehler_sum`.
"""

from __future__ import annotations

import math
import sys
from functools import cache, lru_cache

import numpy as np
import scipy.special as sc

__all__ = ["gauss_legendre", "gauss_hermite", "hermite_functions", "hermite_polynomials", "panel_rule",
           "sqrt_gaussian_density", "mehler_sum", "exact_number",
           "piecewise_coefficients"]

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@lru_cache(maxsize=64)
def gauss_legendre(m: int) -> tuple[np.ndarray, np.ndarray]:
    """m-point Gauss-Legendre nodes and weights on [-1, 1] (cached, read-only)."""
    x, w = sc.roots_legendre(m)
    x.setflags(write=False)
    w.setflags(write=False)
    return x, w


@lru_cache(maxsize=32)
def gauss_hermite(m: int) -> tuple[np.ndarray, np.ndarray]:
    """m-point Gauss rule for the standard Gaussian weight (probabilists'), weights summing to 1.

    Uses scipy.special.roots_hermitenorm, which stays accurate at high degree (numpy's hermegauss
    returns NaN weights from degree ~372 on).
    """
    x, w = sc.roots_hermitenorm(m)
    w = w / math.sqrt(2 * math.pi)
    x.setflags(write=False)
    w.setflags(write=False)
    return x, w


def panel_rule(breaks: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite m-point Gauss-Legendre rule on consecutive panels [breaks[i], breaks[i+1]]."""
    x, w = gauss_legendre(m)
    a = breaks[:-1, None]
    b = breaks[1:, None]
    half = 0.5 * (b - a)
    nodes = (0.5 * (a + b) + half * x).ravel()
    weights = (half * w).ravel()
    return nodes, weights


def sqrt_gaussian_density(z: np.ndarray) -> np.ndarray:
    """phi(z)^(1/2) = exp(-z^2/4) / (2 pi)^(1/4)."""
    return np.exp(-0.25 * z * z - 0.5 * LOG_SQRT_2PI)


def hermite_functions(K: int, z: np.ndarray) -> np.ndarray:
    """psi_k(z) = h_k(z) phi(z)^(1/2) for k = 0..K, shape (K+1, len(z)), by the stable recurrence."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty((K + 1, z.size))
    out[0] = sqrt_gaussian_density(z)
    if K >= 1:
        out[1] = z * out[0]
    _normalized_recurrence(out, z)
    return out


def hermite_polynomials(K: int, z: np.ndarray) -> np.ndarray:
    """h_k(z) = He_k(z)/sqrt(k!) for k = 0..K, shape (K+1,) + z.shape (moderate |z| and K only)."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty((K + 1,) + z.shape)
    out[0] = 1.0
    if K >= 1:
        out[1] = z
    _normalized_recurrence(out, z)
    return out


def _normalized_recurrence(out: np.ndarray, z: np.ndarray) -> None:
    """Rows 2.. of ``out`` from rows 0 and 1 by out[k+1] = (z out[k] - sqrt(k) out[k-1]) / sqrt(k+1), in place.

    A compiled double loop where numba is available (the same operations in the same order, no contraction
    into fused multiply-adds: bitwise the values of the numpy rows, tested), else numpy row by row without
    temporaries. The compiled loop is 80x faster for the short rows of per-variance closed coefficients
    (order 256 at 64 variances: 0.72 -> 0.009 ms) and 2.4x at order 1024 on 16,000 nodes.
    """
    out = out.reshape(out.shape[0], -1)  # a view (out is fresh and contiguous): rows are arrays, also for a scalar z
    z = np.ascontiguousarray(z.reshape(-1), dtype=np.float64)
    compiled = _numba_recurrence() if out.shape[0] > 2 and out.flags.c_contiguous and _worth_compiling(out) else None
    if compiled is not None:
        compiled(out, z)
        return
    tmp = np.empty(z.shape)
    for k in range(1, out.shape[0] - 1):
        np.multiply(z, out[k], out=out[k + 1])
        np.multiply(out[k - 1], math.sqrt(k), out=tmp)
        out[k + 1] -= tmp
        out[k + 1] /= math.sqrt(k + 1)


_NUMPY_ROWS = [0]  # rows computed by numpy so far in this process
_ROWS_BEFORE_COMPILING = 50_000  # ~0.2 s of numpy rows at ~4 us each: the cost of importing numba


def _worth_compiling(out: np.ndarray) -> bool:
    """Whether to take the compiled loop: once numba is imported anyway, or once this process has spent about
    an import of numba (~0.2 s) on numpy rows. The two paths give the same bits, so the switch never changes
    a value; it keeps numba's import out of short runs (the first propagate of a 50-block LN network with
    n = 64 stays at most ~0.12 s for every built-in; compiling on every large call made it 0.36 s)."""
    if "numba" in sys.modules or _NUMPY_ROWS[0] >= _ROWS_BEFORE_COMPILING:
        return True
    _NUMPY_ROWS[0] += out.shape[0]
    return False


@cache
def _numba_recurrence():
    """The compiled recurrence (numba, serial, compiled on first use and cached on disk), or None."""
    try:
        import numba

        @numba.njit(cache=True, fastmath=False)
        def recurrence(out, z):  # pragma: no cover - compiled
            for k in range(1, out.shape[0] - 1):
                a = math.sqrt(k)
                b = math.sqrt(k + 1)
                for i in range(z.size):
                    out[k + 1, i] = (z[i] * out[k, i] - out[k - 1, i] * a) / b

        return recurrence
    except Exception:  # noqa: BLE001 - numba missing or unable to compile: numpy rows
        return None


@cache
def _numba_mehler():
    """The compiled Horner kernel (numba, compiled on first use and cached on disk), or None."""
    try:
        import numba

        @numba.njit(parallel=True, cache=True, fastmath=False)
        def horner(ca, cb, ia, ib, r, out):  # pragma: no cover - compiled
            K = ca.shape[1] - 1
            for e in numba.prange(r.size):
                a = ia[e]
                b = ib[e]
                x = r[e]
                v = ca[a, K] * cb[b, K]
                for k in range(K - 1, -1, -1):
                    v = v * x + ca[a, k] * cb[b, k]
                out[e] = v

        return horner
    except Exception:  # noqa: BLE001 - numba missing or unable to compile: numpy fallback
        return None


def mehler_sum(ca, cb, ia, ib, r, chunk=8192):
    """sum_k ca[ia, k] cb[ib, k] r^k by Horner's rule (numba in parallel, numpy in chunks otherwise)."""
    out = np.empty(r.size)
    horner = _numba_mehler() if r.size >= 2048 else None
    if horner is not None:
        horner(np.ascontiguousarray(ca), np.ascontiguousarray(cb), ia.astype(np.int64), ib.astype(np.int64),
               np.ascontiguousarray(r, dtype=np.float64), out)
        return out
    K = ca.shape[1] - 1
    for s in range(0, r.size, chunk):
        e = min(s + chunk, r.size)
        P = ca[ia[s:e]] * cb[ib[s:e]]
        rr = r[s:e]
        v = P[:, K].copy()
        for k in range(K - 1, -1, -1):
            v *= rr
            v += P[:, k]
        out[s:e] = v
    return out



_SQRT_HALF = math.sqrt(0.5)


def gaussian_mass(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Phi(beta) - Phi(alpha) (alpha <= beta), to a few ulps of max(|alpha|, |beta|) phi near 0 and of the
    smaller tail in the tails.

    By erf (accurate near 0) where the interval straddles 0 or starts within 1 of it, and by erfc (accurate in
    the tails) beyond: never Phi(beta) - Phi(alpha) near 1/2, whose rounding (1e-16) would dominate a narrow
    interval around 0 (hardtanh at q = 1e10: [-1e-5, 1e-5], mass 8e-6).
    """
    a = np.asarray(alpha, dtype=np.float64) * _SQRT_HALF
    b = np.asarray(beta, dtype=np.float64) * _SQRT_HALF
    neg = b <= 0  # both ends <= 0: mirrored onto the positive side (erf(-x) = -erf(x))
    x, y = np.where(neg, -b, a), np.where(neg, -a, b)  # x <= y, and x >= 0 unless the interval straddles 0
    tail = x >= _SQRT_HALF  # both ends beyond 1 standard deviation on one side
    return 0.5 * np.where(tail, sc.erfc(x) - sc.erfc(y), sc.erf(y) - sc.erf(x))


def piecewise_linear_coefficients(pieces, K: int, Q: np.ndarray) -> np.ndarray | None:
    """c_0..c_K(q) in float64 (shape (Q.size, K+1)) of phi = p_i(x) on [a_i, b_i) when every piece is of degree
    <= 1, or phi is one polynomial of degree <= 4 on the whole line; None otherwise (`piecewise_coefficients`
    is exact).

    On a piece, with alpha = a/sqrt(q), beta = b/sqrt(q), D_m = h_m(alpha) phi(alpha) - h_m(beta) phi(beta)
    (h_m phi = psi_m phi^(1/2), the stable Hermite functions) and He_k phi = -(He_(k-1) phi)':
    int h_k phi = D_(k-1) / sqrt(k) (k >= 1; Phi(beta) - Phi(alpha) for k = 0), and with x He_k = He_(k+1) +
    k He_(k-1): int x h_k phi = D_k + sqrt(k / (k - 1)) D_(k-2) (k >= 2), D_1 + Phi(beta) - Phi(alpha) (k = 1),
    D_0 (k = 0). A whole-line polynomial is expanded in He_k directly (c_k = sqrt(k!) times its He_k
    coefficient of p(sqrt(q) x)).
    """
    Q = np.asarray(Q, dtype=np.float64)
    if len(pieces) == 1 and math.isinf(pieces[0][0]) and math.isinf(pieces[0][1]):
        coeffs = np.asarray(pieces[0][2], dtype=np.float64)
        if coeffs.size > 5:  # the power basis of a high degree cancels in the conversion: quadrature instead
            return None
        out = np.zeros((Q.size, K + 1))
        for i, q in enumerate(Q):
            he = np.polynomial.hermite_e.poly2herme(coeffs * math.sqrt(q) ** np.arange(coeffs.size))
            m = min(he.size, K + 1)
            out[i, :m] = he[:m] * np.sqrt([float(math.factorial(k)) for k in range(m)])
        return out
    if any(len(c) > 2 for *_, c in pieces):
        return None
    sq = np.sqrt(Q)
    out = np.zeros((Q.size, K + 1))
    k = np.arange(K + 1, dtype=np.float64)
    for a, b, c in pieces:
        c0 = float(c[0]) if len(c) > 0 else 0.0
        c1 = float(c[1]) if len(c) > 1 else 0.0
        if c0 == 0.0 and c1 == 0.0:
            continue
        ends = []
        for t in (a, b):
            if math.isinf(t):
                ends.append(None)
                continue
            z = t / sq
            ends.append((z, hermite_functions(K, z) * sqrt_gaussian_density(z)))  # h_m phi at z: (K+1, Q.size)
        D = np.zeros((K + 1, Q.size))
        if ends[0] is not None:
            D += ends[0][1]
        if ends[1] is not None:
            D -= ends[1][1]
        za = -np.inf if ends[0] is None else ends[0][0]
        zb = np.inf if ends[1] is None else ends[1][0]
        mass = gaussian_mass(za, zb)
        if c0:
            I = np.empty((K + 1, Q.size))
            I[0] = mass
            if K >= 1:
                I[1:] = D[:-1] / np.sqrt(k[1:, None])
            out += c0 * I.T
        if c1:
            X = np.empty((K + 1, Q.size))
            X[0] = D[0]
            if K >= 1:
                X[1] = D[1] + mass
            if K >= 2:
                X[2:] = D[2:] + np.sqrt(k[2:, None] / (k[2:, None] - 1.0)) * D[:-2]
            X *= sq[None, :]
            if math.isfinite(a) and math.isfinite(b):
                _narrow_slope_moments(a, b, K, sq, X)
            out += c1 * X.T
    return out


_NARROW = 4.0  # a piece is narrow where its width in z times sqrt(2K + 1) (h_K's top frequency) is below this
_NARROW_NODES = 24


def _narrow_slope_moments(a: float, b: float, K: int, sq: np.ndarray, X: np.ndarray) -> None:
    """sqrt(q) int_alpha^beta z h_k(z) phi(z) dz (k = 0..K) by a Gauss-Legendre rule, into the columns of X
    (shape (K+1, sq.size)) whose piece [alpha, beta] = [a, b]/sqrt(q) is narrow.

    The recurrence's differences D_m of h_m phi at the two ends cancel there: they are of size (beta - alpha) and
    carry a rounding of 1e-16, which sqrt(q) multiplies (hardtanh at q = 1e10: 1e-11; at q >= 1e32 the
    coefficients are O(1) wrong). On so short an interval the integrand is a low-degree polynomial to rounding
    (its phase moves by at most `_NARROW` radians), so the rule is exact to a few ulps of the result; the scaled
    weights sqrt(q) (beta - alpha)/2 w_j = (b - a)/2 w_j never underflow.
    """
    with np.errstate(divide="ignore"):
        narrow = np.nonzero((b - a) / sq * math.sqrt(2.0 * K + 1.0) <= _NARROW)[0]
    if narrow.size == 0:
        return
    x, w = gauss_legendre(_NARROW_NODES)
    s = sq[narrow]
    z = (0.5 * (a + b) / s)[:, None] + (0.5 * (b - a) / s)[:, None] * x[None, :]  # (n, nodes)
    psi = hermite_functions(K, z.ravel()).reshape(K + 1, narrow.size, x.size)
    g = (0.5 * (b - a)) * w[None, :] * z * sqrt_gaussian_density(z)  # (n, nodes)
    X[:, narrow] = np.einsum("knj,nj->kn", psi, g)


# ------------------------------------------------------------------------------------------------
# exact Hermite coefficients of piecewise polynomials (sympy, imported on use)
def _sp():
    import sympy as sp

    return sp


def exact_number(v):
    """An exact sympy number (rational for floats, +-oo for infinities)."""
    sp = _sp()
    if isinstance(v, sp.Basic):
        return v
    if isinstance(v, float) and math.isinf(v):
        return sp.oo if v > 0 else -sp.oo
    return sp.nsimplify(v, rational=True)


def _moments(a, b, mmax):
    """I_m = int_a^b x^m phi(x) dx for m = 0..mmax (exact): I_m = [-x^(m-1) phi]_a^b + (m - 1) I_(m-2)."""
    sp = _sp()
    phi = lambda t: 0 if t in (sp.oo, -sp.oo) else sp.exp(-t**2 / 2) / sp.sqrt(2 * sp.pi)
    Phi = lambda t: (sp.Integer(1) if t == sp.oo else sp.Integer(0) if t == -sp.oo
                     else (1 + sp.erf(t / sp.sqrt(2))) / 2)

    def bracket(m1):  # [-x^m1 phi(x)]_a^b
        def term(t):
            return 0 if t in (sp.oo, -sp.oo) else -(t**m1) * phi(t)
        return term(b) - term(a)

    out = [Phi(b) - Phi(a)]
    if mmax >= 1:
        out.append(phi(a) - phi(b))
    for m in range(2, mmax + 1):
        out.append(sp.expand(bracket(m - 1) + (m - 1) * out[m - 2]))
    return out


def piecewise_coefficients(pieces, K: int, q) -> list:
    """Exact c_0..c_K(q) of phi = p_i(x) on [a_i, b_i), pieces ((a, b, (p0, p1, ...)), ...) (sympy).

    c_k(q) = sum over pieces of int p(sqrt(q) x) He_k(x) phi(x) dx / sqrt(k!) over [a/sqrt(q), b/sqrt(q)],
    a finite combination of phi and Phi at the scaled breakpoints by the recursion of `_moments`.
    q may be a positive sympy number or symbol.
    """
    sp = _sp()
    x = sp.Symbol("x", real=True)
    sq = sp.sqrt(q)
    he = [sp.Integer(1), x]
    for k in range(1, K):
        he.append(sp.expand(x * he[k] - k * he[k - 1]))
    he = he[: K + 1]
    coeffs = [sp.Integer(0)] * (K + 1)
    for a, b, poly in pieces:
        aa = exact_number(a) / sq if not (isinstance(a, float) and math.isinf(a)) else exact_number(a)
        bb = exact_number(b) / sq if not (isinstance(b, float) and math.isinf(b)) else exact_number(b)
        p = sum(exact_number(c) * (sq * x) ** i for i, c in enumerate(poly))
        deg = len(poly) - 1
        mom = _moments(aa, bb, deg + K)
        for k in range(K + 1):
            prod = sp.Poly(sp.expand(p * he[k]), x)
            val = sum(c * mom[m[0]] for m, c in zip(prod.monoms(), prod.coeffs()))
            coeffs[k] += val
    return [sp.simplify(c / sp.sqrt(sp.factorial(k))) if K <= 40 else c / sp.sqrt(sp.factorial(k))
            for k, c in enumerate(coeffs)]
