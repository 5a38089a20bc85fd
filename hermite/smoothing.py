"""Gaussian smoothing in closed form: G(mu, sigma) = E[phi(mu + sigma Z)], Z ~ N(0, 1), for kinked families.

The two-dimensional expectation E[f(u) g(v)] of the kernels is an integral over z1 of
phi(z1) f(sqrt(Q1) z1) G(z1), G(z1) = E[g(sqrt(Q2) (rho z1 + sqrt(1 - rho^2) z2))], that is the Gaussian
smoothing of g at mu = sqrt(Q2) rho z1, sigma = sqrt(Q2 (1 - rho^2)) (`hermite.quadrature.pair_expectation`).
Where G is known in closed form the inner integral disappears: one kernel value costs a few hundred
evaluations instead of about 1e5, which is what makes the verified kernel tables (`hermite.tables`) of
the kinked built-ins cheap to build.

Closed forms (standard truncated-Gaussian moments; alpha = (a - mu)/sigma, beta = (b - mu)/sigma):

* a polynomial p(x) = sum_i p_i x^i on [a, b):
  E[p(mu + sigma Z) 1{a <= mu + sigma Z < b}] = sum_i p_i sum_j binom(i, j) mu^(i-j) sigma^j J_j,
  J_j = int_alpha^beta z^j phi(z) dz, J_0 = Phi(beta) - Phi(alpha), J_1 = phi(alpha) - phi(beta),
  J_j = alpha^(j-1) phi(alpha) - beta^(j-1) phi(beta) + (j - 1) J_(j-2);
* the exponential-linear family phi = s (x 1{x > 0} + a (e^x - 1) 1{x <= 0}) (elu, selu):
  E[X 1{X > 0}] = mu Phi(mu/sigma) + sigma phi(mu/sigma),
  E[(e^X - 1) 1{X <= 0}] = e^(mu + sigma^2/2) Phi(-mu/sigma - sigma) - Phi(-mu/sigma),
  E[e^X 1{X <= 0}] = e^(mu + sigma^2/2) Phi(-mu/sigma - sigma) (for phi'), with X = mu + sigma Z; the
  product is formed as e^(-t^2/2) erfcx((t + sigma)/sqrt 2)/2 (t = mu/sigma) where t + sigma >= 0, else as
  exp(mu + sigma^2/2 + log Phi(-t - sigma)): it never overflows and nothing cancels at wide sigma.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special as sc

from hermite.basis import gauss_legendre, gaussian_mass

__all__ = ["truncated_moments", "piecewise_smoothing", "exp_linear_smoothing"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)


def _z_power_density(z: np.ndarray, m: int) -> np.ndarray:
    """z^m phi(z), zero at z = +-inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        v = z**m * np.exp(-0.5 * z * z) * _INV_SQRT_2PI
    return np.where(np.isfinite(z), v, 0.0)


def truncated_moments(alpha: np.ndarray, beta: np.ndarray, deg: int) -> list:
    """[J_0, ..., J_deg], J_j = int_alpha^beta z^j phi(z) dz (alpha <= beta, arrays of one shape).

    By the recursion of the module docstring where the interval is at least 1/2 wide (or infinite), and by a
    24-point Gauss-Legendre rule where it is narrower: there the recursion cancels (J_2 ~ width^3 / 12 is formed
    from terms of size width), while the rule is exact to rounding for an analytic integrand on so short an
    interval.
    """
    J = [gaussian_mass(alpha, beta)]
    if deg >= 1:
        J.append(_z_power_density(alpha, 0) - _z_power_density(beta, 0))
    for j in range(2, deg + 1):
        J.append(_z_power_density(alpha, j - 1) - _z_power_density(beta, j - 1) + (j - 1) * J[j - 2])
    with np.errstate(invalid="ignore"):
        narrow = np.nonzero(np.ravel(beta - alpha < 0.5))[0]
    if narrow.size:
        x, w = gauss_legendre(24)
        lo, hi = np.ravel(alpha)[narrow], np.ravel(beta)[narrow]
        half = 0.5 * (hi - lo)
        z = 0.5 * (hi + lo)[:, None] + half[:, None] * x[None, :]
        g = (half[:, None] * w[None, :]) * np.exp(-0.5 * z * z) * _INV_SQRT_2PI
        for j in range(deg + 1):
            Jj = np.array(J[j], dtype=np.float64, copy=True).reshape(-1)
            Jj[narrow] = np.sum(g * z**j, axis=1)
            J[j] = Jj.reshape(np.shape(J[j]))
    return J


def piecewise_smoothing(pieces, mu: np.ndarray, sigma: float, derivative: int = 0) -> np.ndarray:
    """E[p(mu + sigma Z)] for the piecewise polynomial ((a, b, (p0, p1, ...)), ...) (or of p' for derivative=1).

    mu is an array, sigma > 0 a scalar (see the module docstring for the formula).
    """
    mu = np.asarray(mu, dtype=np.float64)
    out = np.zeros(mu.shape)
    for a, b, coeffs in pieces:
        poly = np.polynomial.Polynomial(np.asarray(coeffs, dtype=np.float64))
        if derivative:
            poly = poly.deriv()
        c = poly.coef
        if not np.any(c):
            continue
        deg = c.size - 1
        alpha = (a - mu) / sigma if math.isfinite(a) else np.full(mu.shape, -math.inf)
        beta = (b - mu) / sigma if math.isfinite(b) else np.full(mu.shape, math.inf)
        J = truncated_moments(alpha, beta, deg)
        for i, ci in enumerate(c):
            if ci == 0.0:
                continue
            term = np.zeros(mu.shape)
            for j in range(i + 1):
                term += math.comb(i, j) * mu ** (i - j) * sigma**j * J[j]
            out += ci * term
    return out


def _exp_below_zero(mu: np.ndarray, sigma, t: np.ndarray) -> np.ndarray:
    """E[e^X 1{X <= 0}] = e^(mu + sigma^2/2) Phi(-t - sigma), X = mu + sigma Z, t = mu / sigma, to a few ulp of
    the value at any sigma.

    Where x = t + sigma >= 0 it is e^(-t^2/2) erfcx(x/sqrt 2)/2: the exponent mu + sigma^2/2 - x^2/2 is -t^2/2
    exactly, so nothing cancels (formed as exp(mu + sigma^2/2 + log Phi(-x)) the two large exponents cancelled
    and the value lost ~eps sigma^2/2 of itself: 2.6e-13 at sigma = 1e4). Where x < 0, mu < -sigma^2 and the
    exponent mu + sigma^2/2 + log Phi(-x) has no cancellation (log Phi(-x) in (-0.7, 0]).
    """
    x = t + sigma
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.exp(-0.5 * t * t)
        out *= sc.erfcx(x * _INV_SQRT_2)
    out *= 0.5
    neg = x < 0.0
    if np.any(neg):  # mu < -sigma^2: the direct form (Phi(-x) in [1/2, 1], the exponent below -sigma^2/2)
        out = np.array(np.broadcast_to(out, neg.shape))
        m = np.broadcast_to(mu, neg.shape)[neg]
        sg = np.broadcast_to(np.asarray(sigma, dtype=np.float64), neg.shape)[neg]
        out[neg] = np.exp(m + 0.5 * sg * sg) * sc.ndtr(-np.broadcast_to(x, neg.shape)[neg])
    return out


def exp_linear_smoothing(alpha: float, scale: float, mu: np.ndarray, sigma: float,
                         derivative: int = 0) -> np.ndarray:
    """E[phi(mu + sigma Z)] for phi = scale (x 1{x > 0} + alpha (e^x - 1) 1{x <= 0}) (phi' for derivative=1)."""
    mu = np.asarray(mu, dtype=np.float64)
    t = mu / sigma
    e_neg = _exp_below_zero(mu, sigma, t)
    if derivative:
        return scale * (sc.ndtr(t) + alpha * e_neg)
    positive = mu * sc.ndtr(t) + sigma * np.exp(-0.5 * t * t) * _INV_SQRT_2PI
    return scale * (positive + alpha * (e_neg - sc.ndtr(-t)))
