"""Linear algebra of the finite-width engine on stacks of matrices, with array-API functions only:
Grams, square roots of PSD stacks (Cholesky with an eigen fallback), and standardization with its
vector-Jacobian product (LayerNorm, RMSNorm, BatchNorm and the weight-norm data init share it).

Zero variance: a centred variance v counts as zero when v <= 4 max(m, 16) eps^2 mean(x^2) over the m reduced
entries (the error of a variance computed in floating point from a constant vector), a mean square when it
is exactly 0; a zero variance maps to 0, never to NaN.
"""

from __future__ import annotations

import numpy as np

from meanfield.core.backends import to_host

__all__ = ["mT", "to_float64", "gram", "sqrt_tol", "eigh_sqrt", "chol_bad", "cholesky_parts", "sqrt_psd",
           "safe_inv_sqrt", "nonzero_variance", "standardize", "standardize_vjp"]


def mT(xp, a):
    return xp.matrix_transpose(a)


def to_float64(xp, a):
    """``a`` in float64 (no copy when it already is)."""
    return a if a.dtype == xp.float64 else xp.astype(a, xp.float64)


def gram(be, h):
    """H H^T / width on the last two axes, accumulated in float64 whatever the compute dtype.

    A product of two float32 numbers is exact in float64, so with float32 activations the Gram carries
    float64 rounding only (relative ~ width * 1.1e-16 at worst); what remains of float32 is the rounding of
    the activations themselves (see ``simulate``'s dtype).
    """
    h = to_float64(be.xp, h)
    return be.matmul(h, mT(be.xp, h)) / h.shape[-1]


def sqrt_tol(n: int, eps: float) -> float:
    """Relative level below which an eigenvalue (or a squared Cholesky pivot) of an n x n Gram is rounding
    noise: 8 n eps of its largest diagonal entry."""
    return 8.0 * n * eps


def eigh_sqrt(xp, c, eps: float):
    """V diag(sqrt(lambda)) with the eigenvalues below the rounding level set to 0: a square root of a
    symmetric PSD stack that exists for singular C and keeps duplicate inputs exactly duplicate (clipping
    only the negative eigenvalues would leave sqrt(eps)-sized noise in the null directions)."""
    ev = xp.linalg.eigh(c)
    lam = ev.eigenvalues
    top = xp.max(xp.abs(lam), axis=-1, keepdims=True)
    keep = lam > sqrt_tol(c.shape[-1], eps) * top
    lam = xp.sqrt(xp.where(keep, lam, 0.0))
    return ev.eigenvectors * xp.expand_dims(lam, axis=-2)


def chol_bad(xp, L, c, eps: float):
    """Per matrix: True where the Cholesky factor is not usable: L L^T does not reproduce C to rounding (a
    failed or NaN factorization; some backends do not raise), or a pivot is at the rounding level (a
    numerically singular C, whose factor would carry sqrt(eps)-sized noise)."""
    n = c.shape[-1]
    scale = xp.max(xp.abs(c), axis=(-2, -1))
    r = xp.max(xp.abs(xp.matmul(L, mT(xp, L)) - c), axis=(-2, -1))
    d = xp.linalg.diagonal(L)
    pivot = xp.min(d * d, axis=-1)
    return ~((r <= 100.0 * (n + 1) * eps * scale) & (pivot > sqrt_tol(n, eps) * scale))


def cholesky_parts(xp, c, lo: int, parts: list, failed: list) -> None:
    """Cholesky of the stack c (networks lo, lo+1, ...), bisecting around the matrices for which the
    backend raises (numpy raises for a whole stack if one matrix fails)."""
    try:
        parts.append(xp.linalg.cholesky(c))
        return
    except Exception:  # noqa: BLE001 - LinAlgError or the backend's equivalent
        pass
    s = c.shape[0]
    if s == 1:
        parts.append(xp.zeros_like(c))
        failed.append(lo)
        return
    h = s // 2
    cholesky_parts(xp, c[:h, ...], lo, parts, failed)
    cholesky_parts(xp, c[h:, ...], lo + h, parts, failed)


def sqrt_psd(be, c):
    """A with A A^T = C for a stack of symmetric PSD C (shape (s, n, n)): the Cholesky factor (cheap), and
    for the matrices where it fails or is numerically singular (a zero sample, duplicate inputs, fewer
    features than inputs, ...) the eigen square root. The choice is made matrix by matrix, so a network's
    result does not depend on the other networks of its chunk."""
    xp = be.xp
    parts: list = []
    failed: list = []
    cholesky_parts(xp, c, 0, parts, failed)
    L = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
    bad = np.array(to_host(chol_bad(xp, L, c, be.eps)), dtype=bool).reshape(-1)
    bad[failed] = True
    if not bad.any():
        return L
    idx = np.nonzero(bad)[0]
    E = eigh_sqrt(xp, xp.take(c, xp.asarray(idx), axis=0), be.eps)
    if idx.size == bad.size:
        return E
    pos = np.zeros(bad.size, dtype=np.int64)
    pos[idx] = np.arange(idx.size)
    E = xp.take(E, xp.asarray(pos), axis=0)
    return xp.where(xp.asarray(bad.reshape(-1, 1, 1)), E, L)


def safe_inv_sqrt(xp, v, ok):
    """1 / sqrt(v) where ok, 0 elsewhere (no division by zero is ever evaluated)."""
    return xp.where(ok, 1.0 / xp.sqrt(xp.where(ok, v, 1.0)), 0.0)


def nonzero_variance(xp, h, v, axis: int, center: bool, eps: float):
    """The zero-variance rule (module docstring), True where the spread of h along ``axis`` is not zero: for a
    centred variance v (keepdims), v > 4 max(m, 16) eps^2 mean(h^2) over the m entries; for a mean square,
    v > 0. Works on numpy and any array-API namespace ``xp``."""
    if not center:
        return v > 0.0
    m2 = xp.mean(h * h, axis=axis, keepdims=True)
    tol = 4.0 * max(h.shape[axis], 16) * eps * eps
    return v > tol * m2


def standardize(xp, h, axis: int, center: bool, eps: float):
    """(y, inv): y = (h - [mean]) * inv along ``axis`` with inv = 1/std (or 1/rms), 0 for a zero variance."""
    if center:
        hc = h - xp.mean(h, axis=axis, keepdims=True)
        v = xp.mean(hc * hc, axis=axis, keepdims=True)
    else:
        hc = h
        v = xp.mean(h * h, axis=axis, keepdims=True)
    ok = nonzero_variance(xp, h, v, axis, center, eps)
    inv = safe_inv_sqrt(xp, v, ok)
    return hc * inv, inv


def standardize_vjp(xp, g, y, inv, axis: int, center: bool):
    """Vector-Jacobian product of `_standardize`: inv * (g - [mean g] - y mean(g y))."""
    t = g - y * xp.mean(g * y, axis=axis, keepdims=True)
    if center:
        t = t - xp.mean(g, axis=axis, keepdims=True)
    return inv * t
