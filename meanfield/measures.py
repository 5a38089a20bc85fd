"""Measures of a batch Gram matrix: isometry, isometry gap, potential, correlations, orthogonality gap.

Every function takes a Gram matrix K (n x n, symmetric positive semi-definite, K_ab = <x_a, x_b> / d for
a batch of n inputs) or a stack of them with shape (..., n, n), and returns a float (for one matrix) or
an array with the leading stack shape (for a stack). Inputs are validated by `check_gram`, which the
mean-field engine uses as well: bad input raises ValueError naming the argument, the offending value and
the valid range.

Sources
-------
* Isometry and isometry gap: A. Joudaki, H. Daneshmand and F. Bach, "On the impact of activation and
  normalization in obtaining isometric embeddings at initialization", NeurIPS 2023.
* Orthogonality gap: H. Daneshmand, A. Joudaki and F. Bach, "Batch normalization orthogonalizes
  representations in deep random networks", NeurIPS 2021.

Numerics
--------
Spectral measures are computed from the eigenvalues of K (`numpy.linalg.eigvalsh`) in log space and
relative to the largest eigenvalue, so that they are scale invariant, never overflow, and are exact for
c I (isometry exactly 1, gap exactly 0). Eigenvalues at or below ``rcond * lambda_max`` are treated as
exactly 0: a numerically singular K has isometry exactly 0.0 and isometry gap exactly +inf, without
warnings and never NaN.

The singularity threshold (`DEFAULT_RCOND_FACTOR`)
--------------------------------------------------
The default is ``rcond = 16 n eps`` (eps = 2.2e-16): numpy's `matrix_rank` convention n eps, times a
safety factor 16, so that a Gram that is singular in exact arithmetic is classified singular every time,
not for most seeds. Measured (issue 17, BatchNorm after ReLU, whose output Gram has rank n - 1 exactly):
the smallest eigenvalue of 32 seeds x 50 blocks of simulated Grams (float64, widths 64 to 8192, n = 2 to
32) and of the mean-field Grams was at most 1.45 n eps lambda_max (1.3e-15 for n = 4), at least 11 times
below the threshold; the second smallest was at least 5.6e-3 lambda_max, far above it. Before, with
rcond = n eps, 9 of 1600 such Grams at n = 4 had a finite gap (8.3) and 1591 had +inf, so a median over
seeds could mix them. Genuinely non-singular Grams whose eigenvalues spread over more than 1 / (16 n eps)
(about 1e13 at n = 32) are classified singular; pass ``rcond`` to change the threshold (``rcond=0`` only
clips negative eigenvalues). A simulation in float32 has round-off near 1e-7 relative: pass
``rcond=16 * n * numpy.finfo(numpy.float32).eps`` for its Grams.
"""

from __future__ import annotations

import numpy as np

from meanfield.core.validate import (
    as_real_array,
    check_finite,
    check_gram,
    check_gram_eig,
    check_tol,
    scaled_eigvalsh,
    where,
)

__all__ = [
    "am_gm_ratio",
    "default_rcond",
    "gamma_from_gram",
    "check_gram",
    "correlations",
    "isometry",
    "isometry_gap",
    "mean_correlation",
    "orthogonality_gap",
    "orthogonality_gap_gram",
    "potential",
]

_EPS = float(np.finfo(np.float64).eps)
#: the default singularity threshold is rcond = DEFAULT_RCOND_FACTOR * n * eps (see the module docstring)
DEFAULT_RCOND_FACTOR = 16.0


def default_rcond(n: int) -> float:
    """The default relative eigenvalue threshold of an n x n Gram: ``16 n eps`` (module docstring)."""
    return DEFAULT_RCOND_FACTOR * n * _EPS

def _scalar_or_array(x: np.ndarray) -> float | np.ndarray:
    """A numpy float64 scalar (a `float`) for 0-d results, the array otherwise."""
    x = np.asarray(x, dtype=np.float64)
    return x[()] if x.ndim == 0 else x


def _check_rcond(rcond) -> float | None:
    """rcond in [0, 1) or None: at 1 and above every eigenvalue (every pair) would count as 0 (collinear)."""
    rc = check_tol(rcond, "rcond", allow_none=True)
    if rc is not None and not rc < 1.0:
        raise ValueError(f"rcond={rcond!r} must be a relative threshold in [0, 1) (at 1 and above every eigenvalue "
                         "counts as 0); default None: 16 n eps")
    return rc


def _normalized_spectrum(K, name: str, rcond: float | None, measure: str) -> np.ndarray:
    """Eigenvalues divided by the largest one, with those at or below ``rcond`` set to exactly 0."""
    sym, lam = check_gram_eig(K, name, 1e-10, 1e-12, True)
    n = sym.shape[-1]
    rc = _check_rcond(rcond)
    if rc is None:
        rc = default_rcond(n)
    lmax = lam[..., -1]
    if not np.all(np.isfinite(lmax)):  # eigenvalues beyond the float64 range (K ~ 1e308): the spectrum of K / 2^e
        lam = scaled_eigvalsh(sym, np.abs(sym).max(axis=(-2, -1)), rescale=False)
        lmax = lam[..., -1]
    bad = ~(lmax > 0)
    if bad.any():
        k = int(np.argmax(bad))
        tr = np.trace(sym, axis1=-2, axis2=-1)
        raise ValueError(
            f"{where(name, sym.shape[:-2], k)} has trace {tr.flat[k]:.3g} and no positive eigenvalue "
            f"(largest {lmax.flat[k]:.3g}); the {measure} needs tr K > 0 (K = 0 has no {measure})"
        )
    t = lam / lmax[..., None]
    return np.where(t > rc, t, 0.0)


def _diag(K: np.ndarray) -> np.ndarray:
    return np.diagonal(K, axis1=-2, axis2=-1)


# ---------------------------------------------------------------------------------------------------------
# isometry
# ---------------------------------------------------------------------------------------------------------


def isometry(K, *, rcond: float | None = None) -> float | np.ndarray:
    """Isometry I(K) = det(K)^(1/n) / (tr(K) / n): geometric over arithmetic mean of the eigenvalues.

    From Joudaki, Daneshmand and Bach, "On the impact of activation and normalization in obtaining
    isometric embeddings at initialization" (NeurIPS 2023). With lambda_1..lambda_n the eigenvalues of K,

        I(K) = exp(mean_i log lambda_i) / mean_i lambda_i,

    computed in log space relative to lambda_max. By the AM-GM inequality I(K) lies in [0, 1]; it equals
    1 exactly for K = c I (c > 0) and 0 exactly for a singular K. It is invariant under K -> c K and
    K -> Q K Q^T (Q orthogonal).

    Parameters
    ----------
    K : array_like, shape (..., n, n)
        Gram matrix or stack, validated by `check_gram`.
    rcond : float, optional
        Eigenvalues at or below ``rcond * lambda_max`` count as exactly 0 (negative ones from round-off
        always do). Default ``16 n eps`` (`default_rcond`; measured margin in the module docstring), so a
        Gram singular in exact arithmetic is singular for every seed. ``rcond=0`` only clips negative
        eigenvalues.

    Returns
    -------
    float or numpy.ndarray
        The isometry, a float for one matrix, an array of shape ``K.shape[:-2]`` for a stack.

    Raises
    ------
    ValueError
        For invalid K (see `check_gram`), or a K with trace 0 (K = 0): it has no isometry.
    """
    t = _normalized_spectrum(K, "K", rcond, "isometry")
    with np.errstate(divide="ignore"):
        logt = np.log(t)  # -inf for zero eigenvalues
    g = np.exp(np.mean(logt, axis=-1))  # exp(-inf) = 0 without warning
    a = np.mean(t, axis=-1)  # in [1/n, 1]
    return _scalar_or_array(np.clip(g / a, 0.0, 1.0))


def isometry_gap(K, *, rcond: float | None = None) -> float | np.ndarray:
    """Isometry gap -log I(K) = log(tr(K) / n) - log(det(K)) / n, in [0, +inf].

    Joudaki, Daneshmand and Bach (NeurIPS 2023). Computed directly in log space from the eigenvalues
    (see `isometry`), so it stays accurate near isometry (exactly 0 for K = c I) and is exactly +inf,
    never NaN and without warnings, for a singular K.

    Parameters
    ----------
    K : array_like, shape (..., n, n)
        Gram matrix or stack, validated by `check_gram`.
    rcond : float, optional
        Relative threshold below which eigenvalues count as 0; see `isometry`.

    Returns
    -------
    float or numpy.ndarray
        The gap, a float for one matrix, an array of shape ``K.shape[:-2]`` for a stack.

    Raises
    ------
    ValueError
        For invalid K (see `check_gram`), or a K with trace 0.
    """
    t = _normalized_spectrum(K, "K", rcond, "isometry gap")
    with np.errstate(divide="ignore"):
        logt = np.log(t)
    gap = np.log(np.mean(t, axis=-1)) - np.mean(logt, axis=-1)  # -(-inf) = +inf for singular K
    return _scalar_or_array(np.maximum(gap, 0.0))


# ---------------------------------------------------------------------------------------------------------
# correlations and potential
# ---------------------------------------------------------------------------------------------------------


def correlations(K) -> np.ndarray:
    """Correlation matrices rho_ab = K_ab / sqrt(K_aa K_bb) of a Gram stack.

    The diagonal is exactly 1 and the entries are clipped to [-1, 1] (round-off can push them out).
    Identical inputs give rho exactly 1. ``correlations(K)`` is D^(-1/2) K D^(-1/2) with D = diag(K):
    every sample rescaled to unit norm.

    Parameters
    ----------
    K : array_like, shape (..., n, n)
        Gram matrix or stack, validated by `check_gram`.

    Returns
    -------
    numpy.ndarray, shape (..., n, n)

    Raises
    ------
    ValueError
        For invalid K (see `check_gram`), or if a sample has zero variance (K_aa <= 0): its correlations
        are undefined.
    """
    K = check_gram(K)
    n = K.shape[-1]
    d = _diag(K)
    bad = ~(d > 0)
    if bad.any():
        k = int(np.argmax(bad.reshape(-1)))
        idx = np.unravel_index(k, d.shape)
        a = int(idx[-1])
        where = ", ".join(str(int(i)) for i in idx[:-1])
        where = f"{where}, " if where else ""
        raise ValueError(
            f"K[{where}{a}, {a}] = {d[idx]:.3g}: sample {a} has zero variance, so its correlations are "
            f"undefined; valid: every diagonal entry K_aa > 0"
        )
    # normalize by the largest variance first: no overflow, and equal entries stay equal
    s = d.max(axis=-1)
    Kn = K / s[..., None, None]
    dn = d / s[..., None]
    prod = dn[..., :, None] * dn[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = Kn / np.sqrt(prod)
    tiny = prod < 1e-290  # variances 1e290 apart: the product (or dn itself) underflowed
    if np.any(tiny):
        sd = np.sqrt(d)  # <= 1.4e154: the product of two does not overflow
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(tiny, K / (sd[..., :, None] * sd[..., None, :]), rho)
    rho = np.clip(rho, -1.0, 1.0)
    rho[..., np.arange(n), np.arange(n)] = 1.0
    return rho


def mean_correlation(K) -> float | np.ndarray:
    """Mean off-diagonal correlation, sum_{a != b} rho_ab / (n (n - 1)), of a Gram stack.

    Parameters
    ----------
    K : array_like, shape (..., n, n)
        Gram matrix or stack with n >= 2, validated by `check_gram`.

    Returns
    -------
    float or numpy.ndarray
        In [-1/(n-1), 1]; a float for one matrix, an array of shape ``K.shape[:-2]`` for a stack.

    Raises
    ------
    ValueError
        For invalid K, a sample with zero variance (see `correlations`), or n < 2.
    """
    rho = correlations(K)
    n = rho.shape[-1]
    if n < 2:
        raise ValueError(f"K must hold at least 2 samples for a mean correlation (n >= 2); got n = {n}")
    off = ~np.eye(n, dtype=bool)
    return _scalar_or_array(np.sum(rho, axis=(-2, -1), where=off) / (n * (n - 1)))


def potential(K, *, rcond: float | None = None) -> float | np.ndarray:
    """Potential max_{a != b} |rho_ab| / (1 - |rho_ab|) of the correlation matrix of K.

    The potential tracked in the mean-field analysis of layer normalization with an activation (issue 5
    of this project; after Joudaki, Daneshmand and Bach, NeurIPS 2023): 0 iff the samples are pairwise
    orthogonal, +inf iff two samples are collinear (|rho_ab| = 1, e.g. duplicate inputs). It controls
    the correlations, not the isometry: three unit vectors x1 _|_ x2, x3 = (x1 + x2)/sqrt(2) have potential
    (1/sqrt 2)/(1 - 1/sqrt 2) = 2.414 and a singular Gram matrix (isometry gap +inf).

    Collinearity is decided like singularity in `isometry`: a pair whose 2 x 2 correlation matrix is
    singular to ``rcond`` ((1 - |rho|) / (1 + |rho|) <= rcond, default ``default_rcond(2) = 32 eps``,
    i.e. |rho| >= 1 - 1.4e-14) is collinear and gives +inf every time, not a round-off-dependent 1e14.

    Parameters
    ----------
    K : array_like, shape (..., n, n)
        Gram matrix or stack, validated by `check_gram`.
    rcond : float, optional
        The relative eigenvalue threshold of a pair (default ``16 * 2 * eps``); ``rcond=0`` counts only
        |rho| = 1 exactly.

    Returns
    -------
    float or numpy.ndarray
        In [0, +inf]; 0 for n = 1. A float for one matrix, an array of shape ``K.shape[:-2]`` for a stack.

    Raises
    ------
    ValueError
        For invalid K (see `check_gram`), or if a sample has zero variance (K_aa <= 0).
    """
    rc = _check_rcond(rcond)
    rc = default_rcond(2) if rc is None else rc
    r = np.abs(correlations(K))
    n = r.shape[-1]
    r[..., np.arange(n), np.arange(n)] = 0.0
    collinear = (1.0 - r) <= rc * (1.0 + r)
    with np.errstate(divide="ignore"):
        p = np.where(collinear, np.inf, r / np.where(collinear, 1.0, 1.0 - r))
    return _scalar_or_array(p.max(axis=(-2, -1)))


# ---------------------------------------------------------------------------------------------------------
# orthogonality gap (batch normalization)
# ---------------------------------------------------------------------------------------------------------


def _orthogonality_from_gram(G: np.ndarray, name: str) -> np.ndarray:
    n = G.shape[-1]
    tr = np.trace(G, axis1=-2, axis2=-1)
    bad = ~(tr > 0)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(
            f"{where(name, G.shape[:-2], k)} has zero norm (trace {tr.flat[k]:.3g}); the orthogonality "
            f"gap needs a nonzero representation (trace > 0)"
        )
    M = G / tr[..., None, None]
    M[..., np.arange(n), np.arange(n)] -= 1.0 / n
    return np.sqrt(np.sum(M * M, axis=(-2, -1)))


def orthogonality_gap(H) -> float | np.ndarray:
    """Orthogonality gap V(H) = || H^T H / ||H||_F^2 - I_n / n ||_F of representations H (d x n).

    Daneshmand, Joudaki and Bach, "Batch normalization orthogonalizes representations in deep random
    networks" (NeurIPS 2021). The columns of H are the n samples, its rows the d features. V(H) is 0
    iff the samples are orthogonal with equal norms, and sqrt(1 - 1/n) (its maximum) iff H has rank one.

    Parameters
    ----------
    H : array_like, shape (..., d, n)
        Representations, d features by n samples, or a stack of them. Finite, not all zero.

    Returns
    -------
    float or numpy.ndarray
        In [0, sqrt(1 - 1/n)]; a float for one matrix, an array of shape ``H.shape[:-2]`` for a stack.

    Raises
    ------
    ValueError
        If H is not real, finite and at least 2-D with d, n >= 1, or if H = 0.
    """
    what = "a d x n representation matrix (features x samples) or a stack (..., d, n)"
    H = as_real_array(H, "H", what)
    if H.ndim < 2:
        raise ValueError(f"H must be {what}; got shape {H.shape} ({H.ndim}-D), need at least 2-D")
    if H.shape[-1] == 0 or H.shape[-2] == 0:
        raise ValueError(f"H must have d >= 1 features and n >= 1 samples; got shape {H.shape}")
    check_finite(H, "H")
    scale = np.abs(H).max(axis=(-2, -1))
    Hn = H / np.where(scale > 0, scale, 1.0)[..., None, None]  # avoid overflow in H^T H
    G = np.swapaxes(Hn, -1, -2) @ Hn
    G = 0.5 * (G + np.swapaxes(G, -1, -2))
    return _scalar_or_array(_orthogonality_from_gram(G, "H"))


def orthogonality_gap_gram(K) -> float | np.ndarray:
    """Orthogonality gap from a Gram matrix: V = || K / tr(K) - I_n / n ||_F.

    Equals `orthogonality_gap` (H) for K = H^T H (or any positive multiple). Daneshmand, Joudaki and Bach
    (NeurIPS 2021).

    Parameters
    ----------
    K : array_like, shape (..., n, n)
        Gram matrix or stack, validated by `check_gram`.

    Returns
    -------
    float or numpy.ndarray
        In [0, sqrt(1 - 1/n)]; a float for one matrix, an array of shape ``K.shape[:-2]`` for a stack.

    Raises
    ------
    ValueError
        For invalid K (see `check_gram`), or a K with trace 0.
    """
    K = check_gram(K)
    return _scalar_or_array(_orthogonality_from_gram(K, "K"))


# ---------------------------------------------------------------------------------------------------------
# sample norms
# ---------------------------------------------------------------------------------------------------------


def am_gm_ratio(K) -> float | np.ndarray:
    """Arithmetic over geometric mean of the diagonal of K: mean_a K_aa / (prod_a K_aa)^(1/n) >= 1.

    Rescaling every sample to the same norm (K -> D^(-1/2) K D^(-1/2), D = diag K) multiplies the
    isometry by exactly this factor, since det scales by 1/prod(K_aa) and the trace becomes n:

        isometry(D^(-1/2) K D^(-1/2)) = am_gm_ratio(K) * isometry(K)

    (Joudaki, Daneshmand and Bach, NeurIPS 2023), so normalizing sample norms never decreases isometry.
    Computed in log space relative to the largest diagonal entry: exactly 1 when all norms are equal.

    Parameters
    ----------
    K : array_like, shape (..., n, n)
        Gram matrix or stack, validated by `check_gram`.

    Returns
    -------
    float or numpy.ndarray
        In [1, +inf]; +inf (the limit, without warning) when some but not all samples have zero norm.
        A float for one matrix, an array of shape ``K.shape[:-2]`` for a stack.

    Raises
    ------
    ValueError
        For invalid K (see `check_gram`), or a K with zero diagonal (trace 0).
    """
    K = check_gram(K)
    d = np.maximum(_diag(K), 0.0)
    s = d.max(axis=-1)
    bad = ~(s > 0)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(
            f"{where('K', K.shape[:-2], k)} has an all-zero diagonal (trace 0); the AM/GM ratio of the "
            f"sample norms needs tr K > 0"
        )
    dn = d / s[..., None]
    with np.errstate(divide="ignore"):
        lg = np.mean(np.log(dn), axis=-1)  # -inf if a sample has zero norm
    log_ratio = np.log(np.mean(dn, axis=-1)) - lg
    with np.errstate(over="ignore"):
        ratio = np.exp(np.maximum(log_ratio, 0.0))
    return _scalar_or_array(ratio)


def gamma_from_gram(G) -> np.ndarray:
    """Initial guessing bias gamma = c / (K - c) per Gram of a stack (Francazi et al.).

    K is the mean diagonal entry and c the mean off-diagonal entry: the infinite-data bias of an output
    whose second moments over initialization are G, reading the n inputs as independent draws from the
    data (exchangeable: for n = 2 the two diagonal entries agree up to Monte Carlo noise).

    Parameters
    ----------
    G : array_like, shape (..., n, n)
        Gram matrix or stack with n >= 2, validated by `check_gram` (real, finite, symmetric, positive
        semi-definite with the relative tolerance).

    Returns
    -------
    float or numpy.ndarray
        gamma per Gram: +inf when c = K (collinear outputs), NaN for a zero output (K = 0).

    Raises
    ------
    ValueError
        For an invalid G (naming it, the offending value and the valid range) or n < 2.
    """
    G = check_gram(G, "G")
    if G.shape[-1] < 2:
        raise ValueError(f"gamma_from_gram: G must be a stack of n x n Grams with n >= 2, got shape {G.shape}")
    n = G.shape[-1]
    diag = np.trace(G, axis1=-2, axis2=-1) / n
    off = (G.sum(axis=(-2, -1)) - n * diag) / (n * (n - 1))
    gap = diag - off
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(gap > 0, off / np.where(gap > 0, gap, 1.0), np.inf)
    g = np.where(diag > 0, g, np.nan)
    return g + 0.0  # no negative zeros
