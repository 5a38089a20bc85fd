"""Mean and spread of the measures of a random Gram matrix with known mean and covariance (delta method).

The finite-width theory (`meanfield.fluctuations`) gives, per block, the mean K of the empirical Gram K_hat and
the covariance T_abcd = Cov(K_hat_ab, K_hat_cd), both to first order in 1/width. For a measure f, the delta
method to second order (van der Vaart 1998, ch. 3; the Gaussian quadratic form for the spread) gives

    E f(K_hat) = f(K) + <f''(K), T> / 2,
    Var f(K_hat) = f'(K)^T T f'(K) + tr((f''(K) T)^2) / 2,

with f' and f'' the gradient and Hessian on the n^2 entries. The second terms are O(1/width) corrections
where the first ones are not small, and the leading terms where they vanish: at isometry the isometry gap
has f' = 0, so its finite-width floor <f'', T>/2 and its spread come from the Hessian (the floor that the
heuristic `meanfield.rates.finite_width_gap` approximates). Closed forms:

- isometry gap f = -(1/n) log det K + log(tr K / n): f' = -K^-1/n + I/tr K, f''[D, D] = tr(K^-1 D K^-1 D)/n -
  (tr D)^2/(tr K)^2; isometry I = exp(-f): I' = -I f', I'' = I (f' f'^T - f'');
- correlations rho_ab = K_ab / sqrt(K_aa K_bb): d rho_ab = dK_ab / s_ab - rho_ab (u_a + u_b) / 2 with u_a =
  dK_aa / K_aa, and its second derivatives in (K_ab, K_aa, K_bb); the mean correlation averages them;
- gamma = c / (k - c) of the mean diagonal k and mean off-diagonal entry c: a function of two linear
  statistics;
- potential max_{a<b} |rho_ab| / (1 - |rho_ab|) is not smooth at rho = 0 (where the floor lives): its mean and
  spread are Monte Carlo over the Gaussian law of the correlations, N(E rho, Cov rho), with 4096 draws of a
  fixed seed (sampling error about 1.5% of the spread).
"""

from __future__ import annotations

import numpy as np

__all__ = ["SPREAD_MEASURES", "measure_moments"]

SPREAD_MEASURES = ("gram", "diagonal", "correlations", "mean_correlation", "isometry_gap", "isometry",
                   "potential", "gamma")
_POTENTIAL_DRAWS = 4096


def measure_moments(measure: str, K, T):
    """(mean, std) of ``measure`` of a random Gram with mean K (..., n, n) and covariance T (..., n, n, n, n),
    to second order (module docstring). "gram", "diagonal" and "correlations" are per entry; the others one
    number per Gram."""
    if measure not in SPREAD_MEASURES:
        raise ValueError(f"measure={measure!r} must be one of {SPREAD_MEASURES}")
    K = np.asarray(K, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    n = K.shape[-1]
    if T.shape != K.shape[:-2] + (n, n, n, n):
        raise ValueError(f"the covariance has shape {T.shape}; expected {K.shape[:-2] + (n, n, n, n)}")
    if measure == "gram":
        return K.copy(), np.sqrt(np.maximum(np.einsum("...abab->...ab", T), 0.0))
    if measure == "diagonal":
        return np.diagonal(K, axis1=-2, axis2=-1).copy(), np.sqrt(np.maximum(np.einsum("...aaaa->...a", T), 0.0))
    if measure == "gamma":
        return _gamma(K, T)
    flatK = K.reshape((-1, n, n))
    flatT = T.reshape((-1, n, n, n, n))
    outs = [_one(measure, k, t) for k, t in zip(flatK, flatT)]
    mean = np.stack([o[0] for o in outs]).reshape(K.shape[:-2] + np.shape(outs[0][0]))
    std = np.stack([o[1] for o in outs]).reshape(mean.shape)
    return mean, std


def _one(measure, K, T):
    n = K.shape[0]
    if measure in ("isometry_gap", "isometry"):
        return _gap(measure, K, T)
    rho, Erho, C = _correlation_moments(K, T)
    off = ~np.eye(n, dtype=bool)
    if measure == "correlations":
        return Erho, np.sqrt(np.maximum(np.einsum("abab->ab", C), 0.0))
    if measure == "mean_correlation":
        w = off / max(n * (n - 1), 1)
        return float(np.sum(w * Erho)), float(np.sqrt(max(np.einsum("ab,abcd,cd->", w, C, w), 0.0)))
    return _potential(Erho, C)


def _gap(measure, K, T):
    n = K.shape[0]
    S = T.reshape(n * n, n * n)
    tr = float(np.trace(K))
    lam = np.linalg.eigvalsh(K)
    if not (lam.min() > n * np.finfo(float).eps * lam.max() and tr > 0):
        return (np.inf, np.nan) if measure == "isometry_gap" else (0.0, np.nan)
    Ki = np.linalg.inv(K)
    Ki = 0.5 * (Ki + Ki.T)
    f = -np.sum(np.log(lam)) / n + np.log(tr / n)
    g = (-Ki / n + np.eye(n) / tr).reshape(-1)
    H = 0.5 * (np.einsum("il,jk->ijkl", Ki, Ki) + np.einsum("ik,jl->ijkl", Ki, Ki)) / n
    I = np.eye(n).reshape(-1)
    H = H.reshape(n * n, n * n) - np.outer(I, I) / tr**2
    if measure == "isometry":
        iso = np.exp(-f)
        g, H = -iso * g, iso * (np.outer(g, g) - H)
        f = iso
    HS = H @ S
    mean = f + 0.5 * np.sum(H * S)
    var = g @ S @ g + 0.5 * np.trace(HS @ HS)
    return float(mean), float(np.sqrt(max(var, 0.0)))


def _correlation_moments(K, T):
    """rho, its second-order mean and Cov(rho_ab, rho_cd) (first order)."""
    n = K.shape[0]
    d = np.diag(K)
    s = np.sqrt(np.outer(d, d))
    rho = K / s
    ar = np.arange(n)
    Tdiag = T[:, :, ar, ar]                      # Cov(K_ab, K_cc): (a, b, c)
    Taa = T[ar, ar][:, ar, ar]                   # Cov(K_aa, K_cc)
    # second-order mean in x = K_ab, y = K_aa, z = K_bb: 1/2 (2 r_xy c_xy + 2 r_xz c_xz + r_yy c_yy + r_zz c_zz +
    # 2 r_yz c_yz) with r_xy = -1/(2 y s), r_yy = 3 rho/(4 y^2), r_yz = rho/(4 y z)
    cxy = np.einsum("aba->ab", Tdiag)            # Cov(K_ab, K_aa)
    cxz = np.einsum("abb->ab", Tdiag)            # Cov(K_ab, K_bb)
    v = np.diag(Taa)
    y, z = d[:, None], d[None, :]
    second = (-0.5 * cxy / (y * s) - 0.5 * cxz / (z * s) + 0.375 * rho * v[:, None] / y**2
              + 0.375 * rho * v[None, :] / z**2 + 0.25 * rho * Taa / (y * z))
    Erho = rho + second
    np.fill_diagonal(Erho, 1.0)
    # first-order covariance: d rho_ab = dK_ab / s_ab - rho_ab (u_a + u_b) / 2, u_a = dK_aa / K_aa
    Ku = Tdiag / d[None, None, :]                # Cov(K_ab, u_c)
    uu = Taa / np.outer(d, d)                    # Cov(u_a, u_c)
    A = Ku[:, :, :, None] + Ku[:, :, None, :]    # Cov(K_ab, u_c + u_d)
    B = uu[:, None, :, None] + uu[:, None, None, :] + uu[None, :, :, None] + uu[None, :, None, :]
    C = (T / (s[:, :, None, None] * s[None, None])
         - 0.5 * rho[None, None] * A / s[:, :, None, None]
         - 0.5 * rho[:, :, None, None] * np.transpose(A, (2, 3, 0, 1)) / s[None, None]
         + 0.25 * rho[:, :, None, None] * rho[None, None] * B)
    C[ar, ar] = 0.0
    C[:, :, ar, ar] = 0.0
    return rho, Erho, C


def _potential(Erho, C):
    n = Erho.shape[0]
    iu, ju = np.triu_indices(n, 1)
    if iu.size == 0:
        return 0.0, 0.0
    mu = Erho[iu, ju]
    S = C[iu, ju][:, iu, ju]
    lam, V = np.linalg.eigh(0.5 * (S + S.T))
    root = V * np.sqrt(np.maximum(lam, 0.0))
    draws = mu + np.random.default_rng(12345).standard_normal((_POTENTIAL_DRAWS, mu.size)) @ root.T
    r = np.abs(draws)
    with np.errstate(divide="ignore", invalid="ignore"):
        pot = np.where(r < 1.0, r / (1.0 - r), np.inf).max(axis=1)
    if not np.all(np.isfinite(pot)):
        return np.inf, np.nan
    return float(pot.mean()), float(pot.std(ddof=1))


def _gamma(K, T):
    n = K.shape[-1]
    if n < 2:
        raise ValueError("gamma needs n >= 2 inputs")
    wx = np.eye(n) / n
    wy = (1.0 - np.eye(n)) / (n * (n - 1))
    x = np.einsum("ab,...ab->...", wx, K)
    y = np.einsum("ab,...ab->...", wy, K)
    vxx = np.einsum("ab,...abcd,cd->...", wx, T, wx)
    vyy = np.einsum("ab,...abcd,cd->...", wy, T, wy)
    vxy = np.einsum("ab,...abcd,cd->...", wx, T, wy)
    gap = x - y
    with np.errstate(divide="ignore", invalid="ignore"):
        f = y / gap
        fx, fy = -y / gap**2, x / gap**2
        fxx, fyy, fxy = 2 * y / gap**3, 2 * x / gap**3, -(x + y) / gap**3
        mean = f + 0.5 * (fxx * vxx + 2 * fxy * vxy + fyy * vyy)
        lin = fx * fx * vxx + 2 * fx * fy * vxy + fy * fy * vyy
        # tr((H S)^2) for the 2 x 2 Hessian H and covariance S of (x, y)
        a, b, c = fxx * vxx + fxy * vxy, fxx * vxy + fxy * vyy, fxy * vxy + fyy * vyy
        d = fxy * vxx + fyy * vxy
        quad = a * a + 2 * b * d + c * c
        std = np.sqrt(np.maximum(lin + 0.5 * quad, 0.0))
    bad = ~(gap > 0)
    mean = np.where(bad, np.inf, mean)
    std = np.where(bad, np.nan, std)
    return mean + 0.0, std + 0.0
