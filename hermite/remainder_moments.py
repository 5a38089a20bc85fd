"""The remainder terms of `hermite.asymptotic` by moment expansions, where both conditional deviations are wide.

`hermite.asymptotic` writes E[f(u) g(v)] = E[A(u) B(v)] + T1 + T2 + T3 with A, B piecewise linear and the
remainders a = f - A, b = g - B localized on |x| <= R:

    T1 = E[a(u) B(v)],   T2 = E[A(u) b(v)],   T3 = E[a(u) b(v)].

(u, v) jointly Gaussian, Var u = q1 = a1^2, Var v = q2 = a2^2, corr r, s = sqrt(1 - r^2), and the conditional
deviations sigma1 = a1 s, sigma2 = a2 s. Without a norm and with sigma_w > 1 the variances grow geometrically
while r -> 1, and sigma1, sigma2 reach the hundreds: the Gaussian factors are then nearly constant over the
remainders' support, and every term is a short series in the remainders' moments (here, L = R and
mu_m = int a(x) (x/L)^m dx on the asymptotic rule's nodes, nu_m the same with |a| and |x|):

* T3: the joint density is exp(-x^2/(2 sigma1^2) - y^2/(2 sigma2^2) + c x y) / (2 pi a1 a2 s) with
  c = r/(sigma1 sigma2). Expanding e^(cxy) and each Gaussian factor,

      T3 = sum_k C^k/k! Ahat_k Bhat_k / (2 pi a1 a2 s),   C = c La Lb,
      Ahat_k = sum_j (-gamma_a)^j/j! mu^a_(k+2j) = int a(x) (x/La)^k e^(-x^2/(2 sigma1^2)) dx,
      gamma_a = La^2/(2 sigma1^2), so |Ahat_k| <= nu^a_k.

* T1: v | u = x is N(kappa x, sigma2^2), kappa x/sigma2 = r x/sigma1, and the Gaussian smoothing of B has the
  Taylor series (Gaussian integration by parts, E[B^(m)(sigma Z)] = sigma^-m E[B(sigma Z) He_m(Z)])

      E[B(mu + sigma Z)] = sum_m (mu/sigma)^m h^B_m(sigma) / sqrt(m!),   h^B_m(sigma) = E[B(sigma Z) He_m(Z)]/sqrt(m!),

  the normalized Hermite coefficients of B at variance sigma^2. When every break of B is at 0, B(sigma Z) =
  B0(Z) + sigma B1(Z) (its constant and linear parts), so h^B_m(sigma) = h0_m + sigma h1_m from two fixed
  coefficient vectors (`hermite.basis.piecewise_linear_coefficients`). Hence, with t = r La/sigma1,

      T1 = (2 pi q1)^(-1/2) sum_m t^m/sqrt(m!) h^B_m(sigma2) Ghat_m,
      Ghat_m = sum_j (-La^2/(2 q1))^j/j! mu^a_(m+2j) = int a(x) (x/La)^m e^(-x^2/(2 q1)) dx,   |Ghat_m| <= nu^a_m;

  T2 likewise with the roles swapped.

Every truncation is bounded per entry (nu decreases in m since |x/L| <= 1):

* the Gaussian factor's series after J terms: at most nu_(2J) gamma^J/J! / (1 - gamma/(J+1));
* T3's series after K terms: nu^a_K nu^b_K |C|^K/K! / (1 - |C|/(K+1));
* the smoothing's series after K terms: (2 pi q1)^(-1/2) (n0 + sigma2 n1) nu^a_K |t|^K/sqrt(K!) /
  (1 - |t|/sqrt(K+1)), n_d = sqrt(E B_d(Z)^2), so that n0 + sigma n1 >= |h^B_m(sigma)|;

and the rounding of each sum is estimated from its terms' sizes (|coefficient| times nu). An entry is computed
here only where the sum of these bounds is at most the caller's allowance (`hermite.asymptotic` allows
`hermite.asymptotic.MOMENT_TOL` = 1e-15 of sqrt(E f^2 E g^2), the tensor rules' own accuracy); it takes the
first of the term counts `TERMS` whose bound meets it, and the others keep the tensor rules. The series are
(entries x J) by (J x K) matrix products: 1-5 us an entry against 100-300 us for the tensor rules, for
conditional deviations down to about L/6 (7 for silu, whose radius is 42). On the rule's nodes the moments are
the very integrals the tensor rules form, so the two agree to the bounds (tested, and against mpmath).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hermite.basis import piecewise_linear_coefficients

__all__ = ["SideMoments", "side_moments", "remainder_moments"]

#: (J, K): terms of each Gaussian factor's series, and of T3's series and each smoothing's Taylor series; an entry
#: takes the first pair whose bound meets the tolerance (the short one suffices for sigma above ~30)
TERMS = ((4, 6), (8, 12), (20, 28), (32, 48))
J_TERMS, K_TERMS = TERMS[-1]
_EPS = np.finfo(np.float64).eps
_PHI = {-math.inf: 0.0, 0.0: 0.5, math.inf: 1.0}


@dataclass(frozen=True)
class SideMoments:
    """One side's moments: L, mu_m and nu_m (m < 2 J + K), and its asymptote's coefficient vectors h0, h1 (m <
    K) with the bounds n0, n1."""

    L: float
    mu: np.ndarray
    nu: np.ndarray
    hankel: np.ndarray  # hankel[j, k] = mu_(k + 2j)
    abs_hankel: np.ndarray  # nu_(k + 2j)
    h0: np.ndarray
    h1: np.ndarray
    n0: float
    n1: float


def side_moments(x: np.ndarray, wa: np.ndarray, linear: list, L: float) -> SideMoments | None:
    """The moments of the remainder (weights * a(x) ``wa`` on the nodes ``x``) and the Taylor coefficients of the
    smoothing of the linear pieces ``linear`` [(a, b, p0, p1), ...]; None unless every finite break is at 0."""
    if any(t not in (0.0, -math.inf, math.inf) for a, b, *_ in linear for t in (a, b)):
        return None
    n = 2 * (J_TERMS - 1) + K_TERMS
    xi = x / L
    powers = xi[None, :] ** np.arange(n)[:, None]
    mu = powers @ wa
    nu = np.abs(powers) @ np.abs(wa)
    at = np.arange(K_TERMS)[None, :] + 2 * np.arange(J_TERMS)[:, None]
    parts = []
    for d in (0, 1):
        pieces = [(a, b, (p0, 0.0) if d == 0 else (0.0, p1)) for a, b, p0, p1 in linear]
        h = piecewise_linear_coefficients(pieces, K_TERMS - 1, np.ones(1))[0]
        # E B_d(Z)^2 = sum over pieces of p^2 E[Z^(2d) 1{Z in [a, b)}] = p^2 (Phi(b) - Phi(a)) (breaks at 0)
        norm = math.sqrt(sum((p0 if d == 0 else p1) ** 2 * (_PHI[b] - _PHI[a]) for a, b, p0, p1 in linear))
        parts.append((h, norm))
    (h0, n0), (h1, n1) = parts
    return SideMoments(float(L), mu, nu, mu[at], nu[at], h0, h1, n0, n1)


def _series(x: np.ndarray, n: int, root: bool = False):
    """x^j/j! (root: x^j/sqrt(j!)) for j < n (entries x n), by cumulative products (x may be negative), and the
    bound of the rest (`_tail` of |x|)."""
    j = np.arange(1, n + 1, dtype=np.float64)
    div = np.sqrt(j) if root else j
    f = np.empty((n, x.size))  # terms along the first axis: the running product is one row operation a term
    f[0] = 1.0
    np.divide(x[None, :], div[:-1, None], out=f[1:])
    for i in range(1, n):  # (np.cumprod along either axis is 3-4x slower here)
        f[i] *= f[i - 1]
    return f.T, _tail(np.abs(x), n, root)


def _mixed(S: SideMoments, T: SideMoments, q, r, sigma_s, sigma_t, J: int, K: int):
    """E[a(u) B(v)] (a: S's remainder at variance q = Var u, B: T's linear pieces; u's conditional deviation
    sigma_s, v's sigma_t), with its error bound."""
    gamma = S.L * S.L / (2.0 * q)
    g, gtail = _series(-gamma, J)
    G = g @ S.hankel[:J, :K]  # Ghat_m = int a(x) (x/L)^m e^(-x^2/(2q)) dx, m < K, |Ghat_m| <= nu_m
    tm, ttail = _series(r * S.L / sigma_s, K, root=True)
    tG = tm * G
    pref = 1.0 / np.sqrt(2.0 * math.pi * q)
    val = pref * (tG @ T.h0[:K] + sigma_t * (tG @ T.h1[:K]))
    hb = T.n0 + sigma_t * T.n1  # >= |h^B_m(sigma_t)| for every m
    # Ghat_m off by at most nu_(m+2J) gtail <= nu_(2J) gtail; the Taylor series after K terms; rounding (Ghat_m
    # sums terms of sizes |g_j| nu_(m+2j))
    err = pref * hb * (S.nu[2 * J] * gtail * np.sum(np.abs(tm), axis=1) + S.nu[K] * ttail
                       + 4.0 * _EPS * (J + K) * np.sum(np.abs(tm) * (np.abs(g) @ S.abs_hankel[:J, :K]), axis=1))
    return val, err


def remainder_moments(A: SideMoments, B: SideMoments, r, a1, a2, s, allowed):
    """T1 + T2 + T3 of the module docstring for the entries of the flat arrays (r, a1 = sqrt(q1), a2 = sqrt(q2),
    s = sqrt(1 - r^2)) where their error bound is at most ``allowed`` (an array); returns (values, mask of the
    entries computed)."""
    out = np.zeros(r.size)
    done = np.zeros(r.size, dtype=bool)
    J, K = TERMS[-1]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        # where some series' bound would be infinite even with the most terms, the tensor rules take the entry
        sig1, sig2 = a1 * s, a2 * s
        todo = np.nonzero((A.L * A.L < 2.0 * (J + 1) * sig1 * sig1) & (B.L * B.L < 2.0 * (J + 1) * sig2 * sig2)
                          & (np.abs(r) * A.L * B.L < (K + 1) * sig1 * sig2)
                          & (np.abs(r) * np.maximum(A.L / sig1, B.L / sig2) < math.sqrt(K + 1)))[0]
        # each entry starts at the first term counts whose truncation estimate (a cheap upper bound of the
        # exact truncation bounds, without the rounding) meets half the allowance; it moves on where the
        # exact bounds fail
        start = np.full(todo.size, len(TERMS) - 1)
        rest = np.arange(todo.size)
        for i in range(len(TERMS) - 1):
            e = todo[rest]
            fits = _truncation_estimate(A, B, r[e], a1[e], a2[e], s[e], *TERMS[i]) <= 0.5 * allowed[e]
            start[rest[fits]] = i
            rest = rest[~fits]
        carried = np.zeros(0, dtype=np.int64)
        for i, (J, K) in enumerate(TERMS):
            sel = np.concatenate([carried, todo[start == i]])
            if sel.size == 0:
                continue
            v, e = _remainder_moments(A, B, r[sel], a1[sel], a2[sel], s[sel], J, K)
            ok = np.isfinite(v) & (e <= allowed[sel])
            out[sel[ok]] = v[ok]
            done[sel[ok]] = True
            carried = sel[~ok]
    return out, done


def _truncation_estimate(A, B, r, a1, a2, s, J, K):
    """An upper bound of the truncation terms of `_remainder_moments`' bound from scalars per entry (sum_(m<K)
    |t|^m/sqrt(m!) <= sqrt(K) e^(t^2/2) by Cauchy-Schwarz, sum_k |C|^k/k! nu_k <= nu_0 e^|C|)."""
    q1, q2 = a1 * a1, a2 * a2
    sigma1, sigma2 = a1 * s, a2 * s
    total = np.zeros(r.size)
    for S, T, q, ss, st in ((A, B, q1, sigma1, sigma2), (B, A, q2, sigma2, sigma1)):
        gamma = S.L * S.L / (2.0 * q)
        t = np.abs(r) * S.L / ss
        gtail = _tail(gamma, J, False)
        ttail = _tail(t, K, True)
        total += (T.n0 + st * T.n1) / np.sqrt(2.0 * math.pi * q) * (
            S.nu[2 * J] * gtail * math.sqrt(K) * np.exp(0.5 * t * t) + S.nu[K] * ttail)
    ta = A.nu[2 * J] * _tail(A.L * A.L / (2.0 * sigma1 * sigma1), J, False)
    tb = B.nu[2 * J] * _tail(B.L * B.L / (2.0 * sigma2 * sigma2), J, False)
    C = np.abs(r) * A.L * B.L / (sigma1 * sigma2)
    total += (np.exp(C) * (ta * B.nu[0] + A.nu[0] * tb + ta * tb) + A.nu[K] * B.nu[K] * _tail(C, K, False)) / (
        2.0 * math.pi * a1 * a2 * s)
    return total


def _tail(x: np.ndarray, n: int, root: bool) -> np.ndarray:
    """sum_(j >= n) x^j/j! (root: x^j/sqrt(j!)) for x >= 0: at most the first term over 1 - x/(n+1) (or over
    1 - x/sqrt(n+1)); inf where that ratio is not below 1."""
    lg = math.lgamma(n + 1.0)
    ratio = x / (math.sqrt(n + 1.0) if root else n + 1.0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        first = np.exp(n * np.log(x) - (0.5 * lg if root else lg))
        return np.where(ratio < 1.0, first / (1.0 - ratio), np.inf)


def _remainder_moments(A, B, r, a1, a2, s, J, K):
    q1, q2 = a1 * a1, a2 * a2
    sigma1, sigma2 = a1 * s, a2 * s
    t1, e1 = _mixed(A, B, q1, r, sigma1, sigma2, J, K)
    t2, e2 = _mixed(B, A, q2, r, sigma2, sigma1, J, K)
    gamma_a, gamma_b = A.L * A.L / (2.0 * sigma1 * sigma1), B.L * B.L / (2.0 * sigma2 * sigma2)
    ga, gta = _series(-gamma_a, J)
    gb, gtb = _series(-gamma_b, J)
    C = r * A.L * B.L / (sigma1 * sigma2)
    ck, ctail = _series(C, K)
    pref = 1.0 / (2.0 * math.pi * a1 * a2 * s)
    t3 = pref * np.sum(ck * (ga @ A.hankel[:J, :K]) * (gb @ B.hankel[:J, :K]), axis=1)
    size = (np.abs(ga) @ A.abs_hankel[:J, :K]) * (np.abs(gb) @ B.abs_hankel[:J, :K])  # the terms' sizes
    ca = np.abs(ck)
    ta, tb = A.nu[2 * J] * gta, B.nu[2 * J] * gtb  # the Gaussian factors' truncations
    e3 = pref * (ta * (ca @ B.nu[:K]) + tb * (ca @ A.nu[:K]) + ta * tb * np.sum(ca, axis=1)
                 + A.nu[K] * B.nu[K] * ctail
                 + 4.0 * _EPS * (J + K) * np.sum(ca * size, axis=1))
    return t1 + t2 + t3, e1 + e2 + e3
