"""Max pooling over k consecutive units (the feature count shrinks by k); it creates initial guessing bias even
in a linear network (Francazi, Lucchi and Baity-Jesi, ICML 2024).

Mean field on a Gaussian input N(0, K) (exact for k <= 4): the k pooled units are i.i.d. copies of the
n-vector u ~ N(0, K), so the output of sample a is M_a = max_j u_ja and

    E M_a = sqrt(K_aa) e_k,     E[M_a M_b] = sqrt(K_aa K_bb) g_k(rho_ab),     rho_ab = K_ab / sqrt(K_aa K_bb),

with e_k = E max of k standard normals and g_k(rho) = E[max_j x_j max_j y_j] for i.i.d. standard pairs
(x_j, y_j) of correlation rho (`max_kernel`):

- k = 1: g = rho; k = 2: max(x1, x2) = (s + |d|)/sqrt 2 with s, d independent, so
  g_2 = (rho + (2/pi)(sqrt(1 - rho^2) + rho arcsin rho)) / 2 (the abs arc-cosine kernel);
- k = 3, 4 (derivation, this module): Hoeffding's covariance identity Cov(M_a, M_b) = double integral of
  F(s, t)^k - Phi(s)^k Phi(t)^k, F the bivariate normal CDF, and Plackett's identity dF/drho = phi_2 (the
  bivariate density) give g_k'(rho) = k E[F(x, y)^(k-1)] = k P(Y >= 0), the orthant probability of the
  2(k - 1)-vector Y = (x_1 - x_j, y_1 - y_j)_{j=2..k} with correlation matrix [[C, rho C], [rho C, C]],
  C = (I + 1 1^T)/2. Plackett's identity once more (dP/dR_ab = phi_2(0, 0; R_ab) times the orthant
  probability of the others given Y_a = Y_b = 0) gives

      P'(rho) = (k - 1) phi_2(0, 0; rho) Q_d(rho) + (k - 1)(k - 2)/2 phi_2(0, 0; rho/2) Q_o(rho),

  Q_d, Q_o the orthant probabilities of the remaining 2(k - 2) coordinates given a same-index pair
  (x_1 - x_2, y_1 - y_2) = 0, resp. a cross pair (x_1 - x_2, y_1 - y_3) = 0. For k = 3 they are bivariate,
  1/4 + arcsin(r)/(2 pi); for k = 4 four-variate, by Plackett's path from the identity,
  P_4(R) = 1/16 + sum_{a<b} (1/2 pi) int_0^{arcsin R_ab} P_2(r_ab(sin w / R_ab)) dw, with r_ab(t) the
  conditional correlation of the other two given (Y_a, Y_b) = 0 under (1 - t) I + t R. The same-index
  conditional matrix is exactly [[S, rho S], [rho S, S]], S the conditional correlation of C (no
  cancellation near rho = +-1). Then, with g_k(0) = e_k^2 and g_k'(0) = k P(0) = 1/k,

      g_k(rho) = e_k^2 + rho / k + k int_0^rho (rho - s) P'(s) ds,

  by Gauss-Legendre quadrature in phi = arcsin s (which absorbs the 1/sqrt(1 - s^2) of phi_2(0, 0; s)),
  accurate to ~1e-14 up to |rho| = 1 (tests: closed forms at k = 2 and at rho = 0, +-1, quadrature of the
  order-statistic densities, Monte Carlo). Closed forms: e_2 = 1/sqrt(pi), e_3 = 3/(2 sqrt(pi)),
  e_4 = 6 arctan(sqrt 2)/pi^(3/2); g_k(1) = E M^2: 1, 1 + sqrt(3)/(2 pi), 1 + sqrt(3)/pi.

A zero-variance sample gives M = 0. MaxPool(k >= 5) of a Gaussian, and any k on a non-Gaussian input (e.g.
after an activation): Monte Carlo over the exact law of the input, with the standard error reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from meanfield.core.law import Gaussian, Sampled, monte_carlo
from meanfield.core.ops import Op, Run
from meanfield.core.validate import check_int, check_real_array
from meanfield.layers.base import Layer

__all__ = ["MaxPool", "max_moments", "max_kernel", "EXACT_K"]

EXACT_K = (1, 2, 3, 4)  # pool sizes with an exact rule on a Gaussian input
_NODES = 48  # Gauss-Legendre nodes of each of the (at most two) nested integrals


def max_moments(k: int) -> tuple[float, float]:
    """(E M, E M^2) for M the maximum of k i.i.d. standard normals, in closed form for k <= 4."""
    k = check_int("max_moments", "k", k, lo=1, hi=4)
    sp = math.sqrt(math.pi)
    return {1: (0.0, 1.0), 2: (1.0 / sp, 1.0), 3: (1.5 / sp, 1.0 + math.sqrt(3.0) / (2.0 * math.pi)),
            4: (6.0 * math.atan(math.sqrt(2.0)) / sp**3, 1.0 + math.sqrt(3.0) / math.pi)}[k]


@cache
def _legendre(m: int):
    return np.polynomial.legendre.leggauss(m)


def _p2(r):
    """P(Z_1 >= 0, Z_2 >= 0) for a standard bivariate normal of correlation r."""
    return 0.25 + np.arcsin(np.clip(r, -1.0, 1.0)) / (2.0 * math.pi)


def _cond_corr(R, a, b, c, d, t=1.0):
    """Correlation of Y_c, Y_d given Y_a = Y_b = 0 for the correlation matrix (1 - t) I + t R (entries of R
    given as R[(x, y)] arrays, t broadcasting against them)."""
    r = lambda x, y: t * R[(min(x, y), max(x, y))]  # noqa: E731
    rab = r(a, b)
    den = 1.0 - rab * rab

    def cov(x, y):
        base = 1.0 if x == y else r(x, y)
        xa, xb, ya, yb = r(x, a), r(x, b), r(y, a), r(y, b)
        return base - (xa * ya - rab * (xa * yb + xb * ya) + xb * yb) / den

    return cov(c, d) / np.sqrt(cov(c, c) * cov(d, d))


def _p4(R):
    """Orthant probability of a 4-variate normal with correlations R[(x, y)] (x < y), arrays of one shape."""
    x, w = _legendre(_NODES)
    out = np.full(np.shape(R[(0, 1)]), 1.0 / 16.0)
    for a, b, c, d in ((0, 1, 2, 3), (0, 2, 1, 3), (0, 3, 1, 2), (1, 2, 0, 3), (1, 3, 0, 2), (2, 3, 0, 1)):
        rab = np.asarray(R[(a, b)])
        top = np.arcsin(np.clip(rab, -1.0, 1.0))
        wn = 0.5 * top[..., None] * (x + 1.0)
        safe = np.where(rab == 0.0, 1.0, rab)[..., None]
        t = np.where(rab[..., None] == 0.0, 0.0, np.sin(wn) / safe)
        Rn = {key: np.asarray(v)[..., None] for key, v in R.items()}
        out = out + 0.5 * top * np.sum(w * _p2(_cond_corr(Rn, a, b, c, d, t)), axis=-1) / (2.0 * math.pi)
    return out


def _orthant_derivative_terms(s: np.ndarray, k: int):
    """(Q_d, Q_o) at correlations s (see the module docstring)."""
    if k == 3:
        # same-index pair: the remaining (Y_2, Y'_2) have correlation s exactly; cross pair: from the matrix
        # of (Y_1, Y_2, Y'_1, Y'_2) = [[1, 1/2, s, s/2], [1/2, 1, s/2, s], ...] given Y_1 = Y'_2 = 0
        R = {(0, 1): 0.5, (0, 2): s, (0, 3): 0.5 * s, (1, 2): 0.5 * s, (1, 3): s, (2, 3): 0.5}
        return _p2(s), _p2(_cond_corr(R, 0, 3, 1, 2))
    # k = 4: Y = (Y_1, Y_2, Y_3), Y' likewise, index 0..2 and 3..5
    # same-index (Y_1, Y'_1) = 0: [[S, s S], [s S, S]], S the correlation of (Y_2, Y_3) given Y_1 = 0: 1/3
    third = np.full_like(s, 1.0 / 3.0)
    Qd = _p4({(0, 1): third, (0, 2): s, (0, 3): s / 3.0, (1, 2): s / 3.0, (1, 3): s, (2, 3): third})
    # cross (Y_1, Y'_2) = 0: the conditional correlations of (Y_2, Y_3, Y'_1, Y'_3)
    C = lambda i, j: (1.0 if i == j else 0.5)  # noqa: E731
    full = {}
    for i in range(6):
        for j in range(i + 1, 6):
            full[(i, j)] = C(i % 3, j % 3) * (s if (i < 3) != (j < 3) else 1.0) + 0.0 * s
    rest = (1, 2, 3, 5)
    a, b = 0, 4
    rab = full[(a, b)]
    den = 1.0 - rab * rab
    f = lambda x, y: 1.0 if x == y else full[(min(x, y), max(x, y))]  # noqa: E731

    def cov(x, y):
        return f(x, y) - (f(x, a) * f(y, a) - rab * (f(x, a) * f(y, b) + f(x, b) * f(y, a)) + f(x, b) * f(y, b)) / den

    var = [cov(x, x) for x in rest]
    R = {(i, j): cov(rest[i], rest[j]) / np.sqrt(var[i] * var[j]) for i in range(4) for j in range(i + 1, 4)}
    return Qd, _p4(R)


def max_kernel(rho, k: int):
    """g_k(rho) = E[max_j x_j max_j y_j] for k i.i.d. standard bivariate normal pairs of correlation rho.

    Exact for k <= 4 (closed forms for k = 1, 2; the one-dimensional Plackett integral, resp. two-dimensional,
    for k = 3, 4, accurate to ~1e-14; see the module docstring). ``rho`` in [-1, 1], arrays broadcast.
    """
    k = check_int("max_kernel", "k", k, lo=1, hi=4)
    r = check_real_array("max_kernel", "rho", rho, lo=-1.0, hi=1.0)
    if k == 1:
        return r[()] + 0.0
    if k == 2:
        return (0.5 * (r + 2.0 / math.pi * (np.sqrt(np.maximum(1.0 - r * r, 0.0)) + r * np.arcsin(r))))[()]
    e, m2 = max_moments(k)
    flat = r.reshape(-1)
    out = np.empty(flat.shape)
    uniq, inv = np.unique(flat, return_inverse=True)
    x, w = _legendre(_NODES)
    top = np.arcsin(uniq)
    ph = 0.5 * top[:, None] * (x + 1.0)  # (u, nodes) in [0, arcsin rho]
    s = np.sin(ph)
    Qd, Qo = _orthant_derivative_terms(s, k)
    m = k - 1
    # phi_2(0, 0; s) ds = d(phi) / (2 pi); phi_2(0, 0; s/2) ds = cos(phi) d(phi) / (2 pi sqrt(1 - s^2/4))
    integrand = (uniq[:, None] - s) * (m * Qd + 0.5 * m * (m - 1) * Qo * np.cos(ph) / np.sqrt(1.0 - 0.25 * s * s))
    vals = e * e + uniq / k + k * 0.5 * top * np.sum(w * integrand, axis=1) / (2.0 * math.pi)
    vals = np.where(uniq == 1.0, m2, vals)
    out[:] = vals[inv]
    return out.reshape(r.shape)[()]


@dataclass(frozen=True, repr=False)
class MaxPool(Layer):
    """Max pooling over k consecutive units (the feature count shrinks by k). Creates initial guessing
    bias even in a linear network (Francazi et al. 2024).

    Mean field: exact on a Gaussian input for k <= 4 (E M_a = sqrt(K_aa) e_k, E[M_a M_b] =
    sqrt(K_aa K_bb) g_k(rho_ab), `max_kernel`); Monte Carlo with its standard error otherwise.
    """

    k: int = 2

    def __post_init__(self):
        object.__setattr__(self, "k", check_int("MaxPool", "k", self.k, lo=1))

    #: max(s x) = s max(x) for s > 0
    scale_degree = 1

    def infinite(self, law, ctx):
        k = self.k
        if k == 1:
            return law
        src = law.sampler()
        n = law.n

        def sample(rng_, M_):
            return src(rng_, M_ * k).reshape(M_, k, n).max(axis=1)

        if k in EXACT_K and isinstance(law, Gaussian):
            K, m = _gaussian_max_moments(law.K, k)
            return Sampled(K, m, sample, law.mc_error)
        return monte_carlo(sample, n, ctx.rng, ctx.M, law.mc_error)

    def on_features(self, F):
        if F.shape[1] % self.k:
            raise ValueError(f"MaxPool: k={self.k} does not divide the width {F.shape[1]}")
        return F.reshape(F.shape[0], -1, self.k).max(axis=2)

    def compile(self, w_in, compiler):
        if w_in % self.k:
            raise compiler.error(f"MaxPool k={self.k} must divide the width {w_in}; choose a width that is a "
                                 f"multiple of {self.k}")
        return MaxPoolOp(self.k, w_in), w_in // self.k

    def to_torch_module(self, w_in, width, generator):
        """The max over k consecutive units."""
        from meanfield.core.torch_modules import UnitMaxPool

        if w_in % self.k:
            raise ValueError(f"to_torch: MaxPool k={self.k} must divide the width {w_in}")
        return UnitMaxPool(self.k), w_in // self.k

    @classmethod
    def invalid_parameters(cls):
        return [{"k": 0}, {"k": 1.5}, {"k": True}]


def _gaussian_max_moments(G: np.ndarray, k: int):
    """E[M M^T] and E M for M = max of k i.i.d. copies of u ~ N(0, G), exactly (k <= 4)."""
    n = G.shape[0]
    d = np.clip(np.diag(G).copy(), 0.0, None)
    sd = np.sqrt(d)
    e, m2 = max_moments(k)
    live = d > 0
    iu, ju = np.triu_indices(n, 1)
    ok = live[iu] & live[ju]
    a, b = iu[ok], ju[ok]
    r = np.clip(G[a, b] / (sd[a] * sd[b]), -1.0, 1.0)
    r[(G[a, b] == d[a]) & (d[a] == d[b])] = 1.0  # duplicated inputs: the second moment, exactly
    K = np.zeros((n, n))
    K[a, b] = sd[a] * sd[b] * max_kernel(r, k)
    K[b, a] = K[a, b]
    idx = np.arange(n)
    K[idx, idx] = d * m2
    return K, sd * e


class MaxPoolOp(Op):
    def __init__(self, k: int, w_in: int):
        self.k = k
        self.w_in = w_in
        self.w_out = w_in // k

    def forward(self, h, rt: Run):
        xp = rt.xp
        s0, n, w = h.shape
        hr = xp.reshape(h, (s0, n, w // self.k, self.k))
        y = xp.max(hr, axis=-1)
        cache = xp.argmax(hr, axis=-1) if rt.grad else None
        return y, cache

    def backward(self, g, cache, rt: Run):
        xp = rt.xp
        s0, n, wo = g.shape
        onehot = xp.astype(xp.reshape(xp.arange(self.k), (1, 1, 1, self.k)) == xp.expand_dims(cache, axis=-1),
                           g.dtype)
        return xp.reshape(xp.expand_dims(g, axis=-1) * onehot, (s0, n, wo * self.k))

    def cache_elems(self, n: int) -> int:
        return n * self.w_out
