"""Orthonormal probabilists' Hermite functions and the quadrature rules the numerics are built on.

h_k = He_k / sqrt(k!) are orthonormal under the standard Gaussian weight phi(z) = exp(-z^2/2)/sqrt(2 pi).
We never form h_k(z) phi(z) directly (it under/overflows for large k and |z|); instead the Hermite
functions psi_k(z) = h_k(z) sqrt(phi(z)) satisfy the stable three-term recurrence

    psi_0 = phi^(1/2),  psi_1 = z psi_0,  psi_{k+1} = (z psi_k - sqrt(k) psi_{k-1}) / sqrt(k+1),

and |psi_k| stays below 1 for every k and z; an integral E[g(z) h_k(z)] is then
sum_j w_j g(z_j) sqrt(phi(z_j)) psi_k(z_j) for a rule (z_j, w_j) of dz.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import scipy.special as sc

__all__ = ["gauss_legendre", "gauss_hermite", "hermite_functions", "hermite_polynomials", "panel_rule",
           "sqrt_gaussian_density"]

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
    for k in range(1, K):
        out[k + 1] = (z * out[k] - math.sqrt(k) * out[k - 1]) / math.sqrt(k + 1)
    return out


def hermite_polynomials(K: int, z: np.ndarray) -> np.ndarray:
    """h_k(z) = He_k(z)/sqrt(k!) for k = 0..K, shape (K+1,) + z.shape (moderate |z| and K only)."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty((K + 1,) + z.shape)
    out[0] = 1.0
    if K >= 1:
        out[1] = z
    for k in range(1, K):
        out[k + 1] = (z * out[k] - math.sqrt(k) * out[k - 1]) / math.sqrt(k + 1)
    return out
