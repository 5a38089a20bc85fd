"""Dual kernels E[f(u) f(v)] for jointly Gaussian (u, v): closed forms, Mehler series, quadrature.

For Var u = q1, Var v = q2, corr(u, v) = rho, Mehler's formula gives

    E[f(u) f(v)] = sum_k c_k(q1) c_k(q2) rho^k,      E[f'(u) f'(v)] = sum_k d_k(q1) d_k(q2) rho^k,

with d_k(q) = sqrt((k+1)/q) c_{k+1}(q) the coefficients of f' (Stein's lemma). Three methods, chosen per
entry so that every value is within 1e-12 sqrt(E f(u)^2 E f(v)^2) of the truth:

1. Closed forms (exact): the arc-cosine family (Cho and Saul 2009) for a relu(x) + b relu(-x) (relu,
   leaky_relu, abs, identity) and a 1{x>0} + b 1{x<0} (step, sign); erf (Williams 1997); exp; sin; cos;
   the gaussian exp(-x^2/2); gelu x Phi(x) (derived with Stein's lemma, see `_gelu`).
2. The Mehler series, truncated at K, wherever its remainder is proven small: by Cauchy-Schwarz
   |sum_{k>K} c_k(q1) c_k(q2) rho^k| <= |rho|^(K+1) sqrt(T_K(q1) T_K(q2)), T_K the tail mass. A truncated
   series is never used near |rho| = 1 without this bound.
3. Direct two-dimensional quadrature where the bound fails (kinked activations near |rho| = 1, large
   variances): E[f(u) g(v)] = int phi(z1) f(sqrt(q1) z1) G(z1) dz1 with
   G(z1) = E[g(sqrt(q2) (rho z1 + sqrt(1 - rho^2) z2))], each a composite Gauss-Legendre rule split at
   the kinks; the outer panels are graded geometrically towards the points where G varies on the scale
   sqrt(1 - rho^2) (the shadows of g's kinks), so rho = 1 - 1e-12 is as accurate as rho = 0.

An Activation f = gamma (phi(g x) + alpha x + beta) reduces exactly to its core phi: e.g.
E[f(u) f(v)] = gamma^2 [K_phi + alpha rho (sqrt(q2) c_1(Q1) + sqrt(q1) c_1(Q2)) + alpha^2 rho sqrt(q1 q2)
+ beta (c_0(Q1) + c_0(Q2)) + beta^2], Q = g^2 q, since E[phi(g u) v] = rho sqrt(q2) c_1^phi(Q1).
"""

from __future__ import annotations

import math

import numpy as np

from hermite.activations import Activation, Core, activation
from hermite.basis import gauss_legendre, panel_rule
from hermite.numeric import check_variance, core_coefficients, core_second_moment

__all__ = ["kernel", "activation_kernel", "activation_means", "pair_kernel", "check_correlation"]

TOL = 2e-14  # target relative accuracy of each method (the guarantee is 1e-12)
SERIES_K = (32, 256)
_L = 11.0  # |z| beyond which phi(z) < 1e-26
_M_OUTER = 20
_M_INNER = 16


# ------------------------------------------------------------------------------------------------
def kernel(act, rho, q1=1.0, q2=None, derivative: int = 0, centered: bool = False):
    """Dual kernel E[f(u) f(v)] for (u, v) jointly Gaussian with Var u = q1, Var v = q2, corr rho.

    Parameters
    ----------
    act : activation (name, callable, formula or Activation)
    rho : float or array in [-1, 1]
    q1, q2 : float or array > 0 (q2 defaults to q1); rho, q1, q2 broadcast together
    derivative : 0 or 1
        1 gives E[f'(u) f'(v)] (the weak derivative; used for chi_1 and gradients), not d/drho.
    centered : bool
        Return the covariance E[f(u) f(v)] - E f(u) E f(v) (with f' for derivative=1).

    Returns
    -------
    float or ndarray of the broadcast shape (float64).

    Accuracy: absolute error below 1e-12 sqrt(E f(u)^2 E f(v)^2) for every rho in [-1, 1], q1 != q2 and
    every built-in (see the module docstring for the methods).

    Examples
    --------
    >>> import hermite, numpy as np
    >>> k = hermite.kernel("relu", 0.0)                 # E relu(u) relu(v) = 1/(2 pi)
    >>> bool(abs(k - 1 / (2 * np.pi)) < 1e-15)
    True
    >>> float(hermite.kernel("relu", 1.0, q1=2.0))      # E relu(u)^2 = q/2
    1.0
    """
    act = activation(act)
    if derivative not in (0, 1) or isinstance(derivative, bool):
        raise ValueError(f"derivative={derivative!r} must be 0 (E f f) or 1 (E f' f')")
    if not isinstance(centered, (bool, np.bool_)):
        raise ValueError(f"centered={centered!r} must be True or False")
    r = check_correlation(rho)
    a1 = check_variance(q1, "q1")
    a2 = a1 if q2 is None else check_variance(q2, "q2")
    r, a1, a2 = np.broadcast_arrays(r, a1, a2)
    shape = r.shape
    out = activation_kernel(act, r.ravel(), a1.ravel(), a2.ravel(), derivative)
    if centered:
        m1 = activation_means(act, a1.ravel(), derivative)
        m2 = activation_means(act, a2.ravel(), derivative)
        out = out - m1 * m2
    out = out.reshape(shape)
    return float(out) if out.ndim == 0 else out


def check_correlation(rho, name: str = "rho") -> np.ndarray:
    """A correlation (number or array) must be finite and in [-1, 1] (round-off up to 1e-12 is clipped)."""
    try:
        r = np.asarray(rho, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={rho!r} must be a number or array in [-1, 1] (a correlation)") from None
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{name} must be finite and in [-1, 1] (a correlation); got NaN or inf")
    if np.any(np.abs(r) > 1 + 1e-12):
        bad = r[np.abs(r) > 1 + 1e-12].ravel()[0]
        raise ValueError(f"{name}={float(bad)!r} must be in [-1, 1] (a correlation)")
    return np.clip(r, -1.0, 1.0)



# ------------------------------------------------------------------------------------------------
def activation_means(act: Activation, q: np.ndarray, derivative: int = 0) -> np.ndarray:
    """E f(u) (derivative=0) or E f'(u) (derivative=1) for u ~ N(0, q), q 1-D (internal)."""
    Q = act.gain**2 * q
    uq, inv = np.unique(Q, return_inverse=True)
    c = core_coefficients(act.core, 1, uq)[inv]
    if derivative == 0:
        return act.gamma * (c[:, 0] + act.beta)
    return act.gamma * (act.gain * c[:, 1] / np.sqrt(Q) + act.alpha)


def activation_kernel(act: Activation, r, q1, q2, derivative: int = 0) -> np.ndarray:
    """Kernel of an Activation on flat arrays (internal; no validation)."""
    g = act.gain
    Q1, Q2 = g * g * q1, g * g * q2
    kc = core_kernel(act.core, r, Q1, Q2, derivative)
    if act.is_plain:
        return kc
    a, b, gm = act.alpha, act.beta, act.gamma
    uq, inv = np.unique(np.concatenate([Q1, Q2]), return_inverse=True)
    c = core_coefficients(act.core, 1, uq)[inv]
    c1, c2 = c[: r.size], c[r.size:]
    if derivative == 0:
        out = (kc + a * r * (np.sqrt(q2) * c1[:, 1] + np.sqrt(q1) * c2[:, 1]) + a * a * r * np.sqrt(q1 * q2)
               + b * (c1[:, 0] + c2[:, 0]) + b * b)
    else:
        out = g * g * kc + a * g * (c1[:, 1] / np.sqrt(Q1) + c2[:, 1] / np.sqrt(Q2)) + a * a
    return gm * gm * out


# ------------------------------------------------------------------------------------------------
# closed forms
def _j1(r):
    """(sqrt(1 - r^2) + (pi - arccos r) r) / (2 pi): E relu(u) relu(v) for unit variances."""
    return (np.sqrt(np.maximum(1.0 - r * r, 0.0)) + (np.pi - np.arccos(r)) * r) / (2 * np.pi)


def _j0(r):
    """(pi - arccos r) / (2 pi) = P(u > 0, v > 0) for unit variances."""
    return (np.pi - np.arccos(r)) / (2 * np.pi)


def _gelu(r, a, b):
    """E[u Phi(u) v Phi(v)], Var u = a, Var v = b, Cov = c = r sqrt(ab).

    With Phi(u) = P(w1 < u), s_i = u_i - w_i and Stein's lemma applied twice,
    E[u v 1{s1>0} 1{s2>0}] = c P(s1>0, s2>0) + sum_ij Cov(u, s_i) Cov(v, s_j) E[d_i d_j 1{s>0}], giving
    c/4 + c arcsin(c/sqrt((1+a)(1+b)))/(2 pi) + [ab + c^2 (1 - ab)/((1+a)(1+b))] / (2 pi sqrt(D)),
    D = (1+a)(1+b) - c^2.
    """
    c = r * np.sqrt(a * b)
    ap, bp = 1 + a, 1 + b
    D = ap * bp - c * c
    return (c / 4 + c * np.arcsin(np.clip(c / np.sqrt(ap * bp), -1, 1)) / (2 * np.pi)
            + (a * b + c * c * (1 - a * b) / (ap * bp)) / (2 * np.pi * np.sqrt(D)))


def _closed_kernel(core: Core, r, Q1, Q2, derivative):
    if core.closed_form is None:
        return None
    fam, p = core.closed_form
    s12 = np.sqrt(Q1 * Q2)
    with np.errstate(divide="ignore"):
        if fam == "homog1":
            a, b = p
            if derivative == 0:
                fused = _numba_homog1() if r.size >= 4096 else None
                if fused is not None:
                    out = np.empty(r.size)
                    fused(np.ascontiguousarray(r, dtype=np.float64).ravel(),
                          np.ascontiguousarray(np.broadcast_to(s12, r.shape), dtype=np.float64).ravel(),
                          float(a * a + b * b), float(2 * a * b), out)
                    return out.reshape(r.shape)
                k1 = (a * a + b * b) * _j1(r)
                return s12 * (k1 + 2 * a * b * _j1(-r)) if a * b != 0 else s12 * k1
            fam, p, derivative = "homog0", (a, -b), 0  # f' = a 1{x>0} - b 1{x<0}
        if fam == "homog0":
            a, b = p
            if derivative == 0:
                return (a * a + b * b) * _j0(r) + 2 * a * b * _j0(-r)
            w = (a - b) ** 2
            if w == 0:
                return np.zeros_like(r)
            return w / (2 * np.pi * np.sqrt(Q1 * Q2 * np.maximum(1 - r * r, 0.0)))
        if fam == "erf":
            if derivative == 0:
                return 2 / np.pi * np.arcsin(np.clip(2 * r * s12 / np.sqrt((1 + 2 * Q1) * (1 + 2 * Q2)), -1, 1))
            return 4 / np.pi / np.sqrt((1 + 2 * Q1) * (1 + 2 * Q2) - 4 * r * r * Q1 * Q2)
        if fam == "exp":
            return np.exp(0.5 * (Q1 + Q2) + r * s12)
        if fam in ("sin", "cos"):
            # exp(-(q1+q2)/2) sinh/cosh(c), written without overflow for large variances
            odd = (fam == "sin") == (derivative == 0)
            c = r * s12
            a = np.exp(-0.5 * (Q1 + Q2) + c)
            b = np.exp(-0.5 * (Q1 + Q2) - c)
            return 0.5 * (a - b) if odd else 0.5 * (a + b)
        if fam == "gaussian":
            c = r * s12
            D = (1 + Q1) * (1 + Q2) - c * c
            return 1 / np.sqrt(D) if derivative == 0 else c / D**1.5
        if fam == "gelu" and derivative == 0:
            return _gelu(r, Q1, Q2)
    return None


# ------------------------------------------------------------------------------------------------
def core_kernel(core: Core, r, Q1, Q2, derivative=0) -> np.ndarray:
    """Kernel of a core on flat arrays: closed form, else proven Mehler series, else quadrature."""
    out = _closed_kernel(core, r, Q1, Q2, derivative)
    if out is not None:
        return out
    return pair_kernel(core, core, r, Q1, Q2, derivative)


def _derivative_moment(core: Core, Q: np.ndarray) -> np.ndarray:
    if core.jumps:
        return np.full(Q.shape, np.inf)
    if core.derivative is None:
        raise ValueError(f"activation {core.name!r} has no derivative: pass derivative= to hermite.activation")
    from hermite.numeric import _core_coefficients_quad, _SquaredCore

    return _core_coefficients_quad(_SquaredCore(core, core.derivative), 0, Q)[:, 0]


def _series_parts(core: Core, K: int, Q: np.ndarray, derivative: int):
    """Per-variance coefficients (of phi or phi'), second moments and tail masses."""
    if derivative == 0:
        c = core_coefficients(core, K, Q, fast=True)
        m = core_second_moment(core, Q)
    else:
        c1 = core_coefficients(core, K + 1, Q, fast=True)
        k = np.arange(1, K + 2)
        c = c1[:, 1:] * np.sqrt(k[None, :] / Q[:, None])
        m = _derivative_moment(core, Q)
    # the tail is known only up to the rounding of M and of sum c_k^2: never trust it below 1e-15 M
    t = np.maximum(m - np.einsum("ij,ij->i", c, c), 0.0) + 1e-15 * m
    return c, m, t


def pair_kernel(fa: Core, fb: Core, r, Q1, Q2, derivative=0) -> np.ndarray:
    """E[fa(u) fb(v)] (or of the derivatives) on flat arrays, by proven series or quadrature.

    One coefficient computation per distinct variance and truncation level (both functions share it
    when they are the same core); an entry is summed at the first level whose tail bound proves it.
    """
    r = np.asarray(r, dtype=np.float64)
    M = r.size
    out = np.empty(M)
    pending = np.arange(M)
    smooth = all(not f.kinks and f.frequency == 0.0 for f in (fa, fb))
    for K in SERIES_K + ((1024,) if smooth else ()):
        if pending.size == 0:
            break
        if K == 1024 and pending.size < max(64, np.unique(np.concatenate([Q1[pending], Q2[pending]])).size):
            break  # a few entries: direct quadrature is cheaper than order-1024 coefficients
        Qa, Qb = Q1[pending], Q2[pending]
        if fb is fa:
            u, inv = np.unique(np.concatenate([Qa, Qb]), return_inverse=True)
            ia, ib = inv[: pending.size], inv[pending.size:]
            ca, ma, ta = _series_parts(fa, K, u, derivative)
            cb, mb, tb = ca, ma, ta
        else:
            ua, ia = np.unique(Qa, return_inverse=True)
            ub, ib = np.unique(Qb, return_inverse=True)
            ca, ma, ta = _series_parts(fa, K, ua, derivative)
            cb, mb, tb = _series_parts(fb, K, ub, derivative)
        rp = r[pending]
        scale = np.sqrt(ma[ia] * mb[ib])
        bound = np.abs(rp) ** (K + 1) * np.sqrt(ta[ia] * tb[ib])
        ok = bound <= TOL * scale
        if np.any(ok):
            sel = np.nonzero(ok)[0]
            out[pending[sel]] = _mehler_sum(ca, cb, ia[sel], ib[sel], rp[sel])
        pending = pending[~ok]
    if pending.size:
        out[pending] = _quadrature(fa, fb, r[pending], Q1[pending], Q2[pending], derivative)
    return out


_NUMBA_SUM: list = []


_NUMBA_HOMOG1: list = []


def _numba_homog1():
    """Compiled arc-cosine kernel s12 (w1 J1(r) + w2 J1(-r)) for large arrays (numba, cached), or None."""
    if not _NUMBA_HOMOG1:
        try:
            import numba

            @numba.njit(parallel=True, cache=True, fastmath=False)
            def homog1(r, s12, w1, w2, out):  # pragma: no cover - compiled
                inv2pi = 1.0 / (2.0 * np.pi)
                for e in numba.prange(r.size):
                    x = r[e]
                    sq = np.sqrt(max(1.0 - x * x, 0.0))
                    t = np.arccos(x)
                    v = w1 * (sq + (np.pi - t) * x)
                    if w2 != 0.0:
                        v += w2 * (sq - t * x)  # J1(-r): arccos(-x) = pi - arccos(x)
                    out[e] = s12[e] * v * inv2pi

            _NUMBA_HOMOG1.append(homog1)
        except Exception:  # noqa: BLE001 - numba missing or unable to compile: numpy fallback
            _NUMBA_HOMOG1.append(None)
    return _NUMBA_HOMOG1[0]


def _numba_mehler():
    """The compiled Horner kernel (numba, compiled on first use and cached on disk), or None."""
    if not _NUMBA_SUM:
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

            _NUMBA_SUM.append(horner)
        except Exception:  # noqa: BLE001 - numba missing or unable to compile: numpy fallback
            _NUMBA_SUM.append(None)
    return _NUMBA_SUM[0]


def _mehler_sum(ca, cb, ia, ib, r, chunk=8192):
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


# ------------------------------------------------------------------------------------------------
# direct quadrature
def _graded(points, wmax, L):
    """Break points on [-L, L]: given (z, h) pairs are graded geometrically from width h up to wmax."""
    pts = [-L, L]
    for z0, h in points:
        if not (-L - wmax < z0 < L + wmax):
            continue
        if -L < z0 < L:
            pts.append(z0)
        h = max(h, 1e-300)
        w = h
        while w < wmax:
            for z in (z0 - w, z0 + w):
                if -L < z < L:
                    pts.append(z)
            w *= 2.0
    pts = np.unique(np.asarray(pts, dtype=np.float64))
    out = [pts[0]]
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(1, math.ceil((b - a) / wmax - 1e-9))
        out.extend(a + (b - a) * np.arange(1, n + 1) / n)
    return np.asarray(out)


def _phi(z):
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _fn(core: Core, derivative: int):
    if derivative == 0:
        return core.fn
    if core.jumps:
        raise ValueError(f"the derivative of {core.name!r} has delta masses at its jumps {core.jumps}; "
                         "derivative kernels are only available in closed form for such activations")
    if core.derivative is None:
        raise ValueError(f"activation {core.name!r} has no derivative: pass derivative= to hermite.activation")
    return core.derivative


def _quadrature(fa: Core, fb: Core, r, Q1, Q2, derivative):
    f, g = _fn(fa, derivative), _fn(fb, derivative)
    out = np.empty(r.size)
    for i in range(r.size):
        out[i] = _quad_one(f, g, fa, fb, float(r[i]), float(Q1[i]), float(Q2[i]))
    return out


def _quad_one(f, g, fa: Core, fb: Core, r, Q1, Q2):
    a, b = math.sqrt(Q1), math.sqrt(Q2)
    s = math.sqrt(max(1.0 - r * r, 0.0))
    wmax = 0.5
    fa_pts = [(t / a, 0.0) for t in fa.kinks] + [(t / a, 1.0 / a) for t in fa.features]
    if s < 1e-15:
        # v = sign(r) sqrt(Q2) z1 exactly: a one-dimensional integral
        sg = 1.0 if r > 0 else -1.0
        pts = fa_pts + [(sg * t / b, 0.0) for t in fb.kinks] + [(sg * t / b, 1.0 / b) for t in fb.features]
        z, w = panel_rule(_graded(pts, wmax, _L), _M_OUTER)
        return float(np.sum(w * _phi(z) * f(a * z) * g(sg * b * z)))
    pts = list(fa_pts)
    if r != 0.0:
        ar = abs(r)
        pts += [(t / (b * r), s / ar) for t in fb.kinks]
        pts += [(t / (b * r), max(s, 1.0 / b) / ar) for t in fb.features]
    z1, w1 = panel_rule(_graded(pts, wmax, _L), _M_OUTER)
    keep = w1 * _phi(z1) > 1e-40
    z1, w1 = z1[keep], w1[keep]
    G = _inner(g, fb, b * r * z1, b * s)
    return float(np.sum(w1 * _phi(z1) * f(a * z1) * G))


def _inner(g, core: Core, mu: np.ndarray, sigma: float) -> np.ndarray:
    """G(mu) = E g(mu + sigma Z) for an array of mu, split at the kinks (and graded features) of g."""
    L = _L
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
