"""Laws: the mean-field state of one unit at infinite width.

At infinite width the features of a layer are, unit by unit, i.i.d. copies of a random n-vector x (one entry
per input of the batch). A `Law` is what the mean-field engine knows of x: its second-moment Gram
K_ab = E[x_a x_b], its per-sample mean m_a = E[x_a], the Monte Carlo standard error of whatever was
estimated on the way (0 where every rule so far was exact), and a sampler of x when later rules need one.

The law types, each with exact operations:

- `Gaussian`: x ~ N(0, K), centred (after a Dense layer, a centred Gaussian stays Gaussian under scaling).
- `BatchNormOfGaussian`: x = sqrt(n) P g / |P g|, g ~ N(0, G), P = I - 11^T/n: exact BatchNorm of a
  Gaussian, with Yang et al.'s one-dimensional reduction of its moments and of a positively homogeneous
  activation that follows.
- `Features`: the explicit (n, d) features of a deterministic prefix of the network (the data X, then fixed
  Linear layers and norms): K = F F^T / d exactly, no law across units.
- `Sampled`: any other law, known through exact moments or Monte Carlo, with a sampler that later Monte Carlo
  rules compose with (`monte_carlo` estimates moments from a sampler, with their standard error).

Layer rules (`meanfield.layers`) read and produce laws; they may dispatch on the law type, never on another
layer's type.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from meanfield.core import blas
from meanfield.core.progress import current as current_progress

__all__ = ["Law", "Gaussian", "BatchNormOfGaussian", "Features", "Sampled", "Unknown", "monte_carlo",
           "inv_sqrt", "batchnorm_sampler"]


class Law:
    """The law of one unit's n-vector at infinite width: second moments K, means m, Monte Carlo error.

    Subclasses implement `sample`; `affine` is exact for every law.
    """

    K: np.ndarray
    m: np.ndarray
    mc_error: float
    #: natural log of the scale: the true second moments are exp(log_scale) K and the true means
    #: exp(log_scale / 2) m (`meanfield.core.scale`; 0 unless a deep recursion left float64's comfortable range)
    log_scale: float = 0.0

    def __init__(self, K: np.ndarray, m: np.ndarray, mc_error: float = 0.0):
        self.K = K
        self.m = m
        self.mc_error = float(mc_error)

    @property
    def n(self) -> int:
        return self.K.shape[0]

    def sample(self, rng: np.random.Generator, M: int) -> np.ndarray:
        """M independent draws of x, shape (M, n)."""
        raise NotImplementedError

    def sampler(self) -> Callable:
        """``(rng, M) -> (M, n)`` draws of x (for laws built on this one)."""
        return self.sample

    def affine(self, shift: np.ndarray | None, scale: np.ndarray | None) -> Law:
        """The law of (x_a - shift_a) * scale_a, exactly: K -> D (K - s m^T - m s^T + s s^T) D, m -> D (m - s).

        A centred Gaussian stays a centred Gaussian under scaling; anything else is `Sampled` with the
        composed sampler.
        """
        K, m = self.K, self.m
        if shift is not None:
            if shift is m or np.array_equal(shift, m):  # centering: K - m m^T, exactly symmetric
                K = K - m[0] * m[0] if m.size and np.all(m == m[0]) else K - np.outer(m, m)
            else:
                C = np.outer(shift, m)
                K = K - C - C.T + np.outer(shift, shift)
            m = m - shift
        if scale is not None:
            # one shared scale (a norm after equal variances): one pass, the same numbers as the outer product
            K = K * (scale[0] * scale[0]) if scale.size and np.all(scale == scale[0]) else K * np.outer(scale, scale)
            m = m * scale
        if isinstance(self, Gaussian) and (shift is None or not np.any(shift)):
            return Gaussian(K, self.mc_error)
        src = self.sampler()
        sh = np.zeros_like(m) if shift is None else shift
        scl = np.ones_like(m) if scale is None else scale

        def sample(rng, M):
            return (src(rng, M) - sh) * scl

        return Sampled(K, m, sample, self.mc_error)

    def centered(self) -> Law:
        """x - E x: K -> K - m m^T, m -> 0."""
        return self.affine(self.m.copy(), None)

    def scaled(self, unit_diag: bool = True) -> Law:
        """x_a / sqrt(K_aa) (a zero-variance sample maps to 0): K -> D^-1/2 K D^-1/2, m -> D^-1/2 m.

        With ``unit_diag`` the diagonal, and the entries of duplicated inputs (K_ab = K_aa = K_bb), are set to
        exactly 1 and correlations clipped to [-1, 1]: in the chaotic phase rho = 1 is an unstable fixed point,
        and a round-off step past it would run away.
        """
        d = np.diag(self.K).copy()
        out = self.affine(None, inv_sqrt(d))
        if unit_diag:
            if d.size and d[0] > 0 and np.all(d == d[0]):  # one shared variance: the same mask in one pass
                dup = self.K == d[0]
            else:
                dup = (self.K == d[:, None]) & (d[:, None] == d[None, :]) & (d[:, None] > 0)
            np.putmask(out.K, dup, 1.0)
            np.clip(out.K, -1.0, 1.0, out=out.K)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, mc_error={self.mc_error:.3g})"


def inv_sqrt(d: np.ndarray) -> np.ndarray:
    """1/sqrt(d) where d > 0, 0 elsewhere (a zero variance maps to 0)."""
    out = np.zeros_like(d)
    pos = d > 0
    out[pos] = 1.0 / np.sqrt(d[pos])
    return out


class Gaussian(Law):
    """x ~ N(0, K) (the output of a Dense layer at infinite width: central limit over fan-in, Neal 1996)."""

    def __init__(self, K: np.ndarray, mc_error: float = 0.0):
        # every rule keeps K exactly symmetric (products and sums of symmetric terms): no re-symmetrization
        super().__init__(K, np.zeros(K.shape[0]), mc_error)
        self._root: np.ndarray | None = None

    def sample(self, rng, M):
        if self._root is None:  # the square root is only needed if a Monte Carlo rule follows
            w, V = np.linalg.eigh(self.K)
            w[w <= 1e-13 * max(w.max(), 0.0)] = 0.0  # rounding-level eigenvalues of a singular Gram are 0
            self._root = V * np.sqrt(w)
        return rng.standard_normal((M, self.K.shape[0])) @ self._root.T


class Sampled(Law):
    """A law known by its moments (exact or estimated) and a sampler of x."""

    def __init__(self, K: np.ndarray, m: np.ndarray, sampler: Callable, mc_error: float = 0.0):
        super().__init__(K, m, mc_error)
        self._sampler = sampler

    def sample(self, rng, M):
        return self._sampler(rng, M)


class Unknown(Law):
    """Second moments without a law across units (the raw input Gram K0): rules that need the law raise."""

    def __init__(self, K: np.ndarray, m: np.ndarray, reason: str):
        super().__init__(K, m, 0.0)
        self.reason = reason

    def sample(self, rng, M):
        raise ValueError(self.reason)


class Features(Unknown):
    """Explicit features F (n, d) of a deterministic prefix: K = F F^T / d, m = row means of F, exactly.

    Deterministic layers act on F itself (`Layer.on_features`); a random layer reads K (Dense) or F
    (weight norm on finite fan-in). There is no law across units, so a rule that needs one raises.
    """

    def __init__(self, F: np.ndarray, reason: str, mc_error: float = 0.0, symmetrize: bool = True):
        K = F @ F.T / F.shape[1]
        super().__init__(0.5 * (K + K.T) if symmetrize else K, F.mean(axis=1), reason)
        self.F = F
        self.mc_error = float(mc_error)


def monte_carlo(sampler: Callable, n: int, rng: np.random.Generator, M: int, prev_err: float) -> Sampled:
    """Monte Carlo moments of a non-Gaussian unit law from its sampler (chunked), with the standard error
    max_ab sqrt(Var(x_a x_b) / M) (at least the error already carried)."""
    chunk = max(256, min(M, int(2**24 // max(n, 1))))
    if (progress := current_progress()) is not None:  # a propagate(progress=...) around: large work opens its bar
        progress.monte_carlo(M, n)
    S1 = np.zeros(n)
    S2 = np.zeros((n, n))
    S4 = np.zeros((n, n))
    done = 0
    with blas.restored():  # the samples' products are large: BLAS threads pay here
        while done < M:
            c = min(chunk, M - done)
            X = sampler(rng, c)
            S1 += X.sum(axis=0)
            P = X.T @ X
            S2 += P
            S4 += (X * X).T @ (X * X)
            done += c
    K = S2 / M
    m = S1 / M
    var = np.maximum(S4 / M - K * K, 0.0)
    err = float(np.sqrt(var.max() / M))
    return Sampled(0.5 * (K + K.T), m, sampler, max(err, prev_err))


# ---------------------------------------------------------------------------------------------------------
def batchnorm_sampler(src: Callable, n: int) -> Callable:
    """Draws of y = sqrt(n) P x / |P x| (batch standardization of one feature) from draws of x."""
    P = np.eye(n) - 1.0 / n

    def sample(rng, M):
        X0 = src(rng, M)
        X = X0 @ P
        nrm = np.sqrt(np.sum(X * X, axis=1, keepdims=True) / n)
        ref = np.sqrt(np.sum(X0 * X0, axis=1, keepdims=True) / n)
        # a feature that is constant over the batch (up to rounding) maps to 0
        return np.divide(X, nrm, out=np.zeros_like(X), where=nrm > 1e-12 * ref)

    return sample


class BatchNormOfGaussian(Sampled):
    """y = sqrt(n) P g / |P g| for g ~ N(0, G), P = I - 11^T/n: BatchNorm with batch statistics of a
    Gaussian unit (each feature centred over the batch and divided by its population standard deviation).

    Its second moments follow from Yang et al. (2019)'s one-dimensional reduction: with
    P G P = U diag(lambda) U^T,

        E[y y^T] = n U diag(lambda_i int_0^inf (1 + 2 t lambda_i)^-1 prod_k (1 + 2 t lambda_k)^-1/2 dt) U^T,

    by adaptive quadrature (relative error < 1e-13); E y = 0. `homogeneous_moments` gives E[f(y) f(y)^T]
    and E f(y) exactly for a positively homogeneous f.
    """

    def __init__(self, source: Gaussian):
        G = source.K
        n = G.shape[0]
        self.G = G.copy()
        super().__init__(_bn_gaussian_moments(G), np.zeros(n), batchnorm_sampler(source.sampler(), n),
                         source.mc_error)

    @blas.restored()  # eigendecomposition and products with the caller's BLAS threads: the same bits at any n
    def homogeneous_moments(self, act, degree: int, kernel: Callable, means: Callable):
        """E[f(y_a) f(y_b)] and E f(y_a) for f positively homogeneous of ``degree`` (0 or 1), exactly.

        With v = P g ~ N(0, C), C = P G P = U diag(lambda) U^T and y = sqrt(n) v / |v|: a degree-0 f gives the
        kernel of N(0, C) itself; a degree-1 f gives (Yang et al. 2019's reduction to one dimension)
            E[f(y_a) f(y_b)] = n int_0^inf prod_i (1 + 2 t lambda_i)^-1/2 k_f(C_t)_ab dt,
            E f(y_a) = sqrt(n/pi) int_0^inf t^-1/2 prod_i (1 + 2 t lambda_i)^-1/2 E_{C_t} f(v_a) dt,
        with C_t = C (I + 2 t C)^-1, from 1/|v|^2 = int e^{-t |v|^2} dt and the Gaussian tilt of e^{-t |v|^2}.
        ``kernel(r, q1, q2)`` and ``means(q)`` are f's dual kernel and mean on flat arrays.
        """
        G = self.G
        n = G.shape[0]
        P = np.eye(n) - 1.0 / n
        C = P @ G @ P
        lam, U = np.linalg.eigh(0.5 * (C + C.T))
        top = max(lam.max(), 0.0)
        if top <= 1e-12 * max(float(np.trace(G)) / n, 0.0) or top <= 0:
            f0 = float(act.fn(np.zeros(1))[0])  # a constant batch maps to y = 0
            return np.full((n, n), f0 * f0), np.full(n, f0)
        lam = np.where(lam > 1e-13 * top, lam, 0.0)
        iu, ju = np.triu_indices(n)

        def kernel_of(Ct):
            d = np.clip(np.diag(Ct).copy(), 0.0, None)
            live = d > 0
            out = np.zeros(iu.size)
            ok = live[iu] & live[ju]
            a, b = iu[ok], ju[ok]
            r = np.clip(Ct[a, b] / np.sqrt(d[a] * d[b]), -1.0, 1.0)
            r[a == b] = 1.0
            out[ok] = kernel(r, d[a], d[b])
            m = np.zeros(n)
            if np.any(live):
                m[live] = means(d[live])
            return out, m

        if degree == 0:
            vals, m = kernel_of(U @ np.diag(lam) @ U.T)
        else:
            pos = lam > 0
            tau = 1.0 / np.mean(lam[pos])

            def integrand(u):
                t = tau * (u / (1.0 - u)) ** 2
                dt = 2.0 * tau * u / (1.0 - u) ** 3
                w = lam / (1.0 + 2.0 * t * lam)
                det = np.exp(-0.5 * np.sum(np.log1p(2.0 * t * lam[pos])))
                kv, mv = kernel_of((U * w) @ U.T)
                # t^-1/2 dt = 2 sqrt(tau) / (1 - u)^2 du
                return np.concatenate([n * det * dt * kv, math.sqrt(n / math.pi) * det * 2.0 * math.sqrt(tau)
                                       / (1.0 - u) ** 2 * mv])

            import scipy.integrate as si  # lazy: 0.15 s of import time, needed by BatchNorm laws only

            res, _ = si.quad_vec(integrand, 0.0, 1.0, epsabs=0.0, epsrel=1e-13, limit=400)
            vals, m = res[: iu.size], res[iu.size:]
        K = np.empty((n, n))
        K[iu, ju] = vals
        K[ju, iu] = vals
        return K, m


@blas.restored()  # eigendecomposition and products with the caller's BLAS threads: the same bits at any n
def _bn_gaussian_moments(G: np.ndarray) -> np.ndarray:
    """E[y y^T], y = sqrt(n) P x / ||P x||, x ~ N(0, G): Yang et al.'s one-dimensional reduction."""
    n = G.shape[0]
    P = np.eye(n) - 1.0 / n
    C = P @ G @ P
    lam, U = np.linalg.eigh(0.5 * (C + C.T))
    lam = np.clip(lam, 0.0, None)
    top = lam.max()
    scale = max(float(np.trace(G)) / n, 0.0)
    if top <= 1e-12 * scale or top <= 0:  # all inputs identical up to rounding: BN outputs 0
        return np.zeros((n, n))
    lam = lam / top
    pos = lam > 1e-14
    lp = lam[pos]

    def integrand(t, li):
        return 1.0 / (1.0 + 2 * t * li) * np.exp(-0.5 * np.sum(np.log1p(2 * t * lp)))

    vals = np.zeros(n)
    for i in np.nonzero(pos)[0]:
        li = lam[i]
        # substitution t = s / (1 - s) maps [0, inf) to [0, 1)
        f = lambda s, li=li: integrand(s / (1 - s), li) / (1 - s) ** 2 if s < 1 else 0.0
        import scipy.integrate as si  # lazy (see above)

        v, _ = si.quad(f, 0.0, 1.0, epsabs=0.0, epsrel=1e-13, limit=400)
        vals[i] = li * v
    K = n * (U * vals) @ U.T
    return 0.5 * (K + K.T)
