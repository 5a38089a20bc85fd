"""Formulas of the arc-cosine and step families (Cho and Saul 2009): their kernels and Hermite coefficients.

phi = a relu(x) + b relu(-x) (relu, leaky_relu, abs, identity) has the degree-1 arc-cosine kernel
s12 (w1 J1(rho) + w2 J1(-rho)); phi = a 1{x>0} + b 1{x<0} (step, sign) the degree-0 one, built from
J0(rho) = (pi - arccos rho) / (2 pi). The families themselves are `hermite.cores.ArcCosineCore` and
`hermite.cores.StepCore`; this module holds the arithmetic they share.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["j0", "step_kernel", "half_line_coefficients", "two_sided", "ARC_FORMS", "arc_cosine_kernel"]


def j0(r):
    """(pi - arccos r) / (2 pi) = P(u > 0, v > 0) for unit variances."""
    return (np.pi - np.arccos(r)) / (2 * np.pi)


def step_kernel(a, b, r, Q1, Q2, derivative):
    """E[f(u) f(v)] for f = a 1{x>0} + b 1{x<0}; f' = (a - b) delta(x) gives (a - b)^2 phi_2(0, 0)."""
    if derivative == 0:
        return (a * a + b * b) * j0(r) + 2 * a * b * j0(-r)
    w = (a - b) ** 2
    if w == 0:
        return np.zeros_like(r)
    return w / (2 * np.pi * np.sqrt(Q1) * np.sqrt(Q2) * np.sqrt(np.maximum(1 - r * r, 0.0)))


def half_line_coefficients(K: int, degree: int) -> np.ndarray:
    """Orthonormal Hermite coefficients of 1{z>0} (degree 0) or relu(z) (degree 1) at unit variance, k = 0..K.

    With int_0^inf He_m phi = He_(m-1)(0) phi(0) (m >= 1), z He_k = He_(k+1) + k He_(k-1) and
    He_k(0) = (-1)^(k/2) (k-1)!! (k even, else 0): 1{z>0} has c_0 = 1/2 and, for odd k,
    c_k = (-1)^((k-1)/2) (k-2)!! phi(0) / sqrt(k!); relu has c_0 = phi(0), c_1 = 1/2 and, for even k >= 2,
    c_k = (-1)^(k/2+1) (k-3)!! phi(0) / sqrt(k!) (double factorials through log-gamma).
    """
    k = np.arange(K + 1)
    c = np.zeros(K + 1)
    log_phi0 = -0.5 * math.log(2 * math.pi)
    lg = np.vectorize(math.lgamma)
    if degree == 0:
        c[0] = 0.5
        odd = k[1::2]
        if odd.size:
            log_df = lg(odd.astype(float)) - 0.5 * (odd - 1) * math.log(2) - lg((odd + 1) / 2.0)
            sign = np.where(((odd - 1) // 2) % 2 == 0, 1.0, -1.0)
            c[1::2] = sign * np.exp(log_df + log_phi0 - 0.5 * lg(odd + 1.0))
        return c
    c[0] = math.exp(log_phi0)
    if K >= 1:
        c[1] = 0.5
    even = k[2::2]
    if even.size:
        log_df = lg(even - 1.0) - 0.5 * (even - 2) * math.log(2) - lg(even / 2.0)
        sign = np.where((even // 2 + 1) % 2 == 0, 1.0, -1.0)
        c[2::2] = sign * np.exp(log_df + log_phi0 - 0.5 * lg(even + 1.0))
    return c


def two_sided(a: float, b: float, K: int, degree: int) -> np.ndarray:
    """Coefficients of a h(z) + b h(-z) with h = 1{z>0} or relu: c_k (a + (-1)^k b)."""
    return half_line_coefficients(K, degree) * (a + b * (-1.0) ** np.arange(K + 1))


# numpy forms of the named members (bitwise what they have always been): (a, b) -> fn, f', array fn
ARC_FORMS = {
    (1.0, 0.0): (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(np.float64),
                 lambda x, xp: xp.maximum(x, 0.0)),
    (1.0, 1.0): (np.abs, np.sign, lambda x, xp: xp.abs(x)),
    (1.0, -1.0): (lambda x: np.array(x, dtype=np.float64, copy=True), lambda x: np.ones_like(x),
                  lambda x, xp: x + 0.0),
}


def arc_cosine_kernel(r: np.ndarray, s12, w1: float, w2: float) -> np.ndarray:
    """s12 (w1 J1(r) + w2 J1(-r)) with J1(r) = (sqrt(1 - r^2) + (pi - arccos r) r) / (2 pi), in place.

    J1(-r) = (sqrt(1 - r^2) - arccos(r) r) / (2 pi), so the sum is ((w1 + w2)(sqrt(1 - r^2) - arccos(r) r)
    + w1 pi r) / (2 pi): five numpy passes with ``out=`` and one temporary, faster than a parallel compiled
    loop at every size measured (benchmarks/bench_hermite.py), and never slower under load.
    """
    shape = np.broadcast_shapes(np.shape(r), np.shape(s12))
    r = np.broadcast_to(np.asarray(r, dtype=np.float64), shape).reshape(-1)
    s12 = np.broadcast_to(s12, shape).reshape(-1) if np.ndim(s12) else s12
    out = np.arccos(r)
    out *= r
    tmp = np.multiply(r, r)
    np.subtract(1.0, tmp, out=tmp)
    np.maximum(tmp, 0.0, out=tmp)
    np.sqrt(tmp, out=tmp)
    np.subtract(tmp, out, out=out)
    if w1 + w2 != 1.0:
        out *= w1 + w2
    np.multiply(r, w1 * np.pi, out=tmp)
    out += tmp
    out *= s12
    out /= 2 * np.pi
    return out.reshape(shape)
