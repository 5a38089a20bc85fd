"""The mean-field engine: the batch Gram matrix through every layer at infinite width.

At infinite width the features of a layer are, unit by unit, i.i.d. copies of a random n-vector x (one
entry per input of the batch). The engine carries its second-moment Gram K_ab = E[x_a x_b] (what
`Trajectory.gram` holds), its per-sample feature mean m_a = E[x_a], and whether x is a centred Gaussian
N(0, K). One rule per layer type, each exact at infinite width:

- Dense(sigma_w, sigma_b): K -> sigma_w^2 K + sigma_b^2 11^T, m -> 0; the output is Gaussian whatever the
  input (central limit over fan_in, Neal 1996).
- Activation(f) on a Gaussian input: K_ab -> E[f(u_a) f(u_b)] with Var u_a = K_aa, Var u_b = K_bb,
  corr = K_ab / sqrt(K_aa K_bb) (`hermite.kernel`, 1e-12 accurate up to rho = +-1), m_a -> E f(u_a).
- Center: K -> K - m m^T, m -> 0 (mode "meanfield" subtracts c_0 = E f(u_a) = m_a: the same map).
- Scale / RMSNorm: K -> D^-1/2 K D^-1/2, D = diag K, m -> D^-1/2 m. LayerNorm = Center then Scale.
  A sample with zero variance maps to 0, never NaN.
- BatchNorm, mode "large_batch": K -> P K P / (tr(P K P)/n), P = I - 11^T/n (Gaussian stays Gaussian).
  Mode "exact" on a Gaussian input N(0, G): the batch-coupled expectation reduces to one dimension
  (Yang et al. 2019): with P G P = U diag(lambda) U^T,
  K = n U diag(lambda_i int_0^inf (1 + 2 t lambda_i)^-1 prod_k (1 + 2 t lambda_k)^-1/2 dt) U^T,
  computed by adaptive quadrature (relative error < 1e-13). A positively homogeneous activation after it
  (relu, leaky_relu, abs, identity, step, sign: the BatchNorm-before-activation placement) is exact too,
  by the same reduction (`_activation_after_bn`). On a non-Gaussian input (after an activation), Monte
  Carlo over the exact law of x with the standard error reported in ``mc_error``.
- With ``exchangeable=True`` the n inputs stand for an infinite i.i.d. data set (used for the initial
  guessing bias): BatchNorm uses population statistics, K -> (K - c) / (mean diag K - c) with c the mean
  off-diagonal entry, exact at infinite data.
- GroupLayerNorm(groups=g): LayerNorm's rule (each group is infinitely wide). GroupLayerNorm(group_size=G)
  on a Gaussian input: the expected cosine of two correlated Gaussian vectors in dimension k = G - 1,
  E cos = (2/k) (Gamma((k+1)/2)/Gamma(k/2))^2 rho 2F1(1/2, 1/2; k/2 + 1; rho^2); Monte Carlo otherwise.
- WeightNormDense: init "fixed" is Dense(sigma_w=g, sigma_b) for an infinitely wide input; on the data
  X itself (finite fan-in d) its pre-activations are g times the projection of a uniform direction on
  the sphere, not Gaussian, so an activation after it is sampled from that exact law (Monte Carlo).
  init "data" is Dense(1, 0) followed by exact batch standardization (the BatchNorm rule).
- Residual: K -> K_s + alpha^2 K_r + alpha (m_s m_r^T + m_r m_s^T), m -> m_s + alpha m_r: the shortcut and
  the branch are independent given the input when one of them starts with its own random weights
  (otherwise a ValueError).
- MaxPool(2) on a Gaussian input: max(x1, x2) = (s + |d|)/sqrt(2) with s, d independent N(0, K), so
  K -> (K + E[|d_a| |d_b|])/2 (the abs arc-cosine kernel) and m_a = sqrt(K_aa/pi), exactly.
- MaxPool(k > 2) and an Activation whose input is not Gaussian (two activations in a row, an activation
  after exact BatchNorm or a residual sum): Monte Carlo over the exact law of x, with the standard error
  reported; never a silently wrong number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.integrate as si
import scipy.special as sc

from hermite.activations import Activation as HermiteActivation
from hermite.activations import activation as _hermite_activation
from meanfield.layers import (
    Activation,
    BatchNorm,
    Block,
    Center,
    Dense,
    GroupLayerNorm,
    Layer,
    LayerNorm,
    Linear,
    MaxPool,
    Residual,
    RMSNorm,
    Scale,
    WeightNormDense,
)
from meanfield.measures import check_gram
from meanfield.network import Network
from meanfield.trajectory import Trajectory

__all__ = ["propagate", "State"]

_ABS = _hermite_activation("abs")


@dataclass
class State:
    """Law of one unit's n-vector at infinite width: second moments, means, Gaussian flag, sampler."""

    K: np.ndarray
    m: np.ndarray
    gaussian: bool
    sampler: Callable  # (rng, M) -> (M, n) samples of the unit vector
    mc_error: float = 0.0
    features: np.ndarray | None = None  # explicit (n, d) features of a deterministic prefix
    bn_of: np.ndarray | None = None  # exact BatchNorm of N(0, bn_of): enables exact rules that follow


def _gauss_sampler(G: np.ndarray) -> Callable:
    G = G.copy()
    root: list = []

    def sample(rng, M):
        if not root:  # the square root is only needed if a Monte Carlo rule follows
            w, V = np.linalg.eigh(G)
            w[w <= 1e-13 * max(w.max(), 0.0)] = 0.0  # rounding-level eigenvalues of a singular Gram are 0
            root.append(V * np.sqrt(w))
        return rng.standard_normal((M, G.shape[0])) @ root[0].T

    return sample


def _gaussian_state(G: np.ndarray) -> State:
    # every rule keeps K exactly symmetric (products and sums of symmetric terms), so no re-symmetrization
    return State(G, np.zeros(G.shape[0]), True, _gauss_sampler(G))


# ------------------------------------------------------------------------------------------------
# rules
def _dense(st: State, sigma_w: float, sigma_b: float) -> State:
    return _gaussian_state(sigma_w**2 * st.K + sigma_b**2)


def _weightnorm_on_data(F: np.ndarray, g: float, sigma_b: float) -> State:
    """WeightNormDense(fixed) on explicit features F (n, d) of finite fan-in d: h = g (F u) + b with u
    uniform on the unit sphere of R^d. The second moments are Dense's (g^2 F F^T / d + sigma_b^2) but the
    law is a spherical projection, Gaussian only as d -> infinity: later rules sample it exactly."""
    d = F.shape[1]
    K = g * g * (F @ F.T) / d + sigma_b**2

    def sample(rng, M):
        z = rng.standard_normal((M, d))
        u = z / np.linalg.norm(z, axis=1, keepdims=True)
        return g * (u @ F.T) + sigma_b * rng.standard_normal((M, 1))

    return State(K, np.zeros(F.shape[0]), False, sample)


def _activation_exact(act: HermiteActivation, G: np.ndarray):
    n = G.shape[0]
    d = np.diag(G).copy()
    if d[0] > 0 and np.all(d == d[0]):
        # equal variances (e.g. after a norm): one vectorized pass over the whole matrix
        g = G.ravel()
        # rho = 1 (the diagonal, duplicated inputs) is the second moment exactly: the two routes to it
        # differ in the last bit, and where rho = 1 is unstable the map would amplify that difference
        one = g == d[0]
        K = np.empty(n * n)
        K[one] = act.second_moment_at(d[:1])[0]
        rest = ~one
        if np.any(rest):
            q = np.full(int(rest.sum()), d[0])
            K[rest] = act.kernel_at(np.clip(g[rest] / d[0], -1.0, 1.0), q, q, 0)
        K = K.reshape(n, n)
        m = np.full(n, act.mean_at(d[:1], 0)[0])
        return 0.5 * (K + K.T), m
    live = d > 0
    K = np.zeros((n, n))
    m = np.zeros(n)
    iu, ju = np.triu_indices(n)
    both = live[iu] & live[ju]
    if np.any(both):
        a, b = iu[both], ju[both]
        r = np.clip(G[a, b] / np.sqrt(d[a] * d[b]), -1.0, 1.0)
        # the diagonal and duplicated inputs (rho = 1, equal variances) are second moments, exactly: one
        # value per distinct variance (a batched quadrature may round rows differently)
        diag = (a == b) | ((G[a, b] == d[a]) & (d[a] == d[b]))
        vals = np.empty(a.size)
        uq, inv = np.unique(d[a[diag]], return_inverse=True)
        vals[diag] = act.second_moment_at(uq)[inv]
        off = ~diag
        if np.any(off):
            vals[off] = act.kernel_at(r[off], d[a[off]], d[b[off]], 0)
        K[a, b] = vals
        K[b, a] = vals
    if np.any(live):
        m[live] = act.mean_at(d[live], 0)
    if np.any(~live):  # a zero-variance input: f(0) deterministically
        f0 = float(act.fn(np.zeros(1))[0])
        dead = ~live
        m[dead] = f0
        K[dead, :] = f0 * m[None, :]
        K[:, dead] = m[:, None] * f0
        K[np.ix_(dead, dead)] = f0 * f0
    return 0.5 * (K + K.T), m


def _mc_state(samples_fn: Callable, n: int, rng, M: int, prev_err: float) -> State:
    """Monte Carlo moments of a non-Gaussian unit law from a sampler (chunked)."""
    chunk = max(256, min(M, int(2**24 // max(n, 1))))
    S1 = np.zeros(n)
    S2 = np.zeros((n, n))
    S4 = np.zeros((n, n))
    done = 0
    while done < M:
        c = min(chunk, M - done)
        X = samples_fn(rng, c)
        S1 += X.sum(axis=0)
        P = X.T @ X
        S2 += P
        S4 += (X * X).T @ (X * X)
        done += c
    K = S2 / M
    m = S1 / M
    var = np.maximum(S4 / M - K * K, 0.0)
    err = float(np.sqrt(var.max() / M))
    return State(0.5 * (K + K.T), m, False, samples_fn, max(err, prev_err))


def _activation(st: State, act: HermiteActivation, rng, M) -> State:
    src = st.sampler
    fn = act.fn

    def sample(rng_, M_):
        return fn(src(rng_, M_))

    if st.gaussian:
        K, m = _activation_exact(act, st.K)
        return State(K, m, False, sample, st.mc_error)
    degree = _homogeneous_degree(act) if st.bn_of is not None else None
    if degree is not None:  # exact BatchNorm followed by a positively homogeneous activation: exact
        K, m = _activation_after_bn(act, st.bn_of, degree)
        return State(K, m, False, sample, st.mc_error)
    return _mc_state(sample, st.K.shape[0], rng, M, st.mc_error)


def _affine(st: State, shift: np.ndarray | None, scale: np.ndarray | None) -> State:
    """x_a -> (x_a - shift_a) * scale_a, exactly on (K, m) and composed into the sampler."""
    K, m = st.K, st.m
    if shift is not None:
        if shift is m or np.array_equal(shift, m):  # centering: K - m m^T, exactly symmetric
            K = K - np.outer(m, m)
        else:
            C = np.outer(shift, m)
            K = K - C - C.T + np.outer(shift, shift)
        m = m - shift
    if scale is not None:
        K = K * np.outer(scale, scale)
        m = m * scale
    src = st.sampler
    sh = np.zeros_like(m) if shift is None else shift
    scl = np.ones_like(m) if scale is None else scale

    def sample(rng, M):
        return (src(rng, M) - sh) * scl

    gaussian = st.gaussian and (shift is None or not np.any(shift))
    return State(K, m, gaussian, _gauss_sampler(K) if gaussian else sample, st.mc_error)


def _inv_sqrt(d: np.ndarray) -> np.ndarray:
    out = np.zeros_like(d)
    pos = d > 0
    out[pos] = 1.0 / np.sqrt(d[pos])
    return out


def _center(st: State) -> State:
    return _affine(st, st.m.copy(), None)


def _scale(st: State, unit_diag: bool = True) -> State:
    d = np.diag(st.K).copy()
    out = _affine(st, None, _inv_sqrt(d))
    if unit_diag:
        # exactly 1 on the diagonal and between duplicated inputs (K_ab = K_aa = K_bb)
        dup = (st.K == d[:, None]) & (d[:, None] == d[None, :]) & (d[:, None] > 0)
        out.K[dup] = 1.0
        np.clip(out.K, -1.0, 1.0, out=out.K)
    return out


def _bn_gaussian_exact(G: np.ndarray) -> np.ndarray:
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
        v, _ = si.quad(f, 0.0, 1.0, epsabs=0.0, epsrel=1e-13, limit=400)
        vals[i] = li * v
    K = n * (U * vals) @ U.T
    return 0.5 * (K + K.T)


def _batchnorm(st: State, mode: str, exchangeable: bool, rng, M) -> State:
    n = st.K.shape[0]
    K = st.K
    if exchangeable:
        off = K[~np.eye(n, dtype=bool)]
        c = off.mean() if off.size else 0.0
        v = np.diag(K).mean() - c
        s = 1.0 / math.sqrt(v) if v > 1e-12 * abs(np.diag(K).mean()) and v > 0 else 0.0
        Kn = (K - c) * s * s
        mbar = st.m.mean()
        mn = (st.m - mbar) * s
        def sample(rng_, M_):
            raise ValueError("propagate(exchangeable=True): a Monte Carlo rule after a population BatchNorm of "
                             "a non-Gaussian input is not supported")

        g = st.gaussian
        return State(0.5 * (Kn + Kn.T), mn, g, _gauss_sampler(Kn) if g else sample, st.mc_error)
    P = np.eye(n) - 1.0 / n
    if mode == "large_batch":
        C = P @ K @ P
        tr = np.trace(C) / n
        s = 1.0 / math.sqrt(tr) if tr > 1e-12 * abs(np.trace(K) / n) and tr > 0 else 0.0
        Kn = C * s * s
        mn = (st.m - st.m.mean()) * s
        src = st.sampler
        sample = lambda rng_, M_: (src(rng_, M_) @ P) * s
        g = st.gaussian
        return State(0.5 * (Kn + Kn.T), mn, g, _gauss_sampler(Kn) if g else sample, st.mc_error)
    src = st.sampler

    def sample(rng_, M_):
        X0 = src(rng_, M_)
        X = X0 @ P
        nrm = np.sqrt(np.sum(X * X, axis=1, keepdims=True) / n)
        ref = np.sqrt(np.sum(X0 * X0, axis=1, keepdims=True) / n)
        # a feature that is constant over the batch (up to rounding) maps to 0
        return np.divide(X, nrm, out=np.zeros_like(X), where=nrm > 1e-12 * ref)

    if st.gaussian:
        Kn = _bn_gaussian_exact(K)
        return State(Kn, np.zeros(n), False, sample, st.mc_error, None, K.copy())
    return _mc_state(sample, n, rng, M, st.mc_error)


def _homogeneous_degree(act: HermiteActivation) -> int | None:
    """1 for f(cx) = c f(x) (a relu(x) + b relu(-x) + alpha x, any gain > 0 and scale), 0 for
    f(cx) = f(x) (a 1{x>0} + b 1{x<0} + beta), None otherwise."""
    return act.homogeneous_degree


def _activation_after_bn(act: HermiteActivation, G: np.ndarray, degree: int):
    """E[f(y_a) f(y_b)] and E f(y_a) for y = BN(g), g ~ N(0, G), f positively homogeneous (exact).

    With v = P g ~ N(0, C), C = P G P = U diag(lambda) U^T and y = sqrt(n) v / |v|: a degree-0 f gives
    the kernel of N(0, C) itself; a degree-1 f gives (Yang et al. 2019's reduction to one dimension)
        E[f(y_a) f(y_b)] = n int_0^inf prod_i (1 + 2 t lambda_i)^-1/2 k_f(C_t)_ab dt,
        E f(y_a) = sqrt(n/pi) int_0^inf t^-1/2 prod_i (1 + 2 t lambda_i)^-1/2 E_{C_t} f(v_a) dt,
    with C_t = C (I + 2 t C)^-1, from 1/|v|^2 = int e^{-t |v|^2} dt and the Gaussian tilt of e^{-t |v|^2}.
    """
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
        out[ok] = act.kernel_at(r, d[a], d[b], 0)
        m = np.zeros(n)
        if np.any(live):
            m[live] = act.mean_at(d[live], 0)
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

        res, _ = si.quad_vec(integrand, 0.0, 1.0, epsabs=0.0, epsrel=1e-13, limit=400)
        vals, m = res[: iu.size], res[iu.size:]
    K = np.empty((n, n))
    K[iu, ju] = vals
    K[ju, iu] = vals
    return K, m


def _expected_cosine(rho: np.ndarray, k: int) -> np.ndarray:
    """E[<x, y>/(|x| |y|)] for x, y in R^k, pairs (x_i, y_i) i.i.d. standard bivariate with correlation rho."""
    c = 2.0 / k * math.exp(2 * (sc.gammaln((k + 1) / 2) - sc.gammaln(k / 2)))
    return c * rho * sc.hyp2f1(0.5, 0.5, k / 2 + 1, rho * rho)


def _group_layernorm(st: State, layer: GroupLayerNorm, rng, M) -> State:
    if layer.groups is not None:
        return _scale(_center(st))
    G = layer.group_size
    n = st.K.shape[0]
    src = st.sampler

    def sample(rng_, M_):
        X = src(rng_, M_ * G).reshape(M_, G, n)
        X = X - X.mean(axis=1, keepdims=True)
        nrm = np.sqrt(np.mean(X * X, axis=1, keepdims=True))
        Y = np.divide(X, nrm, out=np.zeros_like(X), where=nrm > 0)
        return Y[:, 0, :]

    if st.gaussian:
        d = np.diag(st.K)
        s = _inv_sqrt(d)
        rho = np.clip(st.K * np.outer(s, s), -1.0, 1.0)
        Kn = _expected_cosine(rho, G - 1)
        live = d > 0
        Kn[~live, :] = 0.0
        Kn[:, ~live] = 0.0
        idx = np.arange(n)
        Kn[idx, idx] = np.where(live, 1.0, 0.0)
        return State(0.5 * (Kn + Kn.T), np.zeros(n), False, sample, st.mc_error)
    # no exact unit diagonal here: after e.g. a ReLU a small group is all zero with positive probability
    # (3 units: 1/8) and maps to 0, so the diagonal is 1 - P(degenerate group), which the samples estimate
    return _mc_state(sample, n, rng, M, st.mc_error)


def _maxpool(st: State, k: int, rng, M) -> State:
    if k == 1:
        return st
    src = st.sampler
    n = st.K.shape[0]

    def sample(rng_, M_):
        return src(rng_, M_ * k).reshape(M_, k, n).max(axis=1)

    if k == 2 and st.gaussian:
        # max(x1, x2) = (s + |d|)/sqrt(2) with s = (x1 + x2)/sqrt(2), d = (x1 - x2)/sqrt(2) independent
        # N(0, K): K -> (K + E|d_a||d_b|)/2 (the abs arc-cosine kernel), m_a = sqrt(K_aa / pi)
        d = np.diag(st.K).copy()
        K_abs, _ = _activation_exact(_ABS, st.K)
        K = 0.5 * (st.K + K_abs)
        m = np.sqrt(np.clip(d, 0.0, None) / math.pi)
        return State(0.5 * (K + K.T), m, False, sample, st.mc_error)
    return _mc_state(sample, n, rng, M, st.mc_error)


def _starts_random(layers) -> bool:
    return bool(layers) and isinstance(layers[0], (Dense, WeightNormDense))


def _residual(st: State, layer: Residual, ctx) -> State:
    br = _run_layers(st, layer.branch, ctx)
    sh = st if layer.shortcut is None else _run_layers(st, layer.shortcut, ctx)
    if not (_starts_random(layer.branch) or (layer.shortcut is not None and _starts_random(layer.shortcut))):
        raise ValueError("Residual: at infinite width the mean-field rule needs the branch or the shortcut to "
                         "start with its own random Dense/WeightNormDense layer (then the two are independent "
                         f"given the input); got branch={list(layer.branch)!r}")
    a = layer.alpha
    K = sh.K + a * a * br.K + a * (np.outer(sh.m, br.m) + np.outer(br.m, sh.m))
    m = sh.m + a * br.m
    s1, s2 = sh.sampler, br.sampler

    def sample(rng_, M_):
        return s1(rng_, M_) + a * s2(rng_, M_)

    gaussian = sh.gaussian and br.gaussian
    K = 0.5 * (K + K.T)
    return State(K, m, gaussian, _gauss_sampler(K) if gaussian else sample, max(sh.mc_error, br.mc_error))


@dataclass
class _Ctx:
    rng: np.random.Generator
    M: int
    exchangeable: bool
    detail: list | None


def _explicit(F: np.ndarray, layer) -> np.ndarray | None:
    """A deterministic layer applied to explicit features F (n, d); None if the layer is random."""
    if isinstance(layer, Linear):
        if F.shape[1] != layer.W.shape[1]:
            raise ValueError(f"Linear: W expects {layer.W.shape[1]} input features, got {F.shape[1]}")
        return F @ layer.W.T + layer.b
    if isinstance(layer, Activation):
        return layer.act.fn(F)
    if isinstance(layer, (LayerNorm, Center)) or (isinstance(layer, GroupLayerNorm) and layer.groups is not None):
        g = layer.groups if isinstance(layer, GroupLayerNorm) else 1
        if F.shape[1] % g:
            raise ValueError(f"GroupLayerNorm: groups={g} does not divide the width {F.shape[1]}")
        G = F.reshape(F.shape[0], g, -1)
        G = G - G.mean(axis=2, keepdims=True)
        if not isinstance(layer, Center):
            s = np.sqrt(np.mean(G * G, axis=2, keepdims=True))
            G = np.divide(G, s, out=np.zeros_like(G), where=s > 0)
        return G.reshape(F.shape)
    if isinstance(layer, (RMSNorm, Scale)):
        s = np.sqrt(np.mean(F * F, axis=1, keepdims=True))
        return np.divide(F, s, out=np.zeros_like(F), where=s > 0)
    if isinstance(layer, BatchNorm):
        C = F - F.mean(axis=0, keepdims=True)
        s = np.sqrt(np.mean(C * C, axis=0, keepdims=True))
        return np.divide(C, s, out=np.zeros_like(C), where=s > 0)
    if isinstance(layer, MaxPool):
        if F.shape[1] % layer.k:
            raise ValueError(f"MaxPool: k={layer.k} does not divide the width {F.shape[1]}")
        return F.reshape(F.shape[0], -1, layer.k).max(axis=2)
    return None


def _apply(st: State, layer, ctx: _Ctx) -> State:
    if st.features is not None and not ctx.exchangeable:
        F = _explicit(st.features, layer)
        if F is not None:
            K = F @ F.T / F.shape[1]

            def no_law(rng_, M_):
                raise ValueError("propagate: the features of a fixed (Linear) prefix have no infinite-width law; "
                                 "a Dense layer must come before a rule that needs one")

            out = State(0.5 * (K + K.T), F.mean(axis=1), False, no_law, st.mc_error, F)
            if ctx.detail is not None:
                ctx.detail.append((repr(layer), out.K.copy()))
            return out
    if isinstance(layer, Linear):
        raise ValueError("propagate: a Linear layer (fixed weights, finite width) has no infinite-width rule; it "
                         "can only act on the explicit features of a deterministic prefix (pass the data X and "
                         "put no random layer before it)")
    if isinstance(layer, Dense):
        out = _dense(st, layer.sigma_w, layer.sigma_b)
    elif isinstance(layer, WeightNormDense):
        if layer.init == "fixed" and st.features is not None:
            out = _weightnorm_on_data(st.features, layer.g, layer.sigma_b)
        elif layer.init == "fixed":
            out = _dense(st, layer.g, layer.sigma_b)
        else:
            out = _batchnorm(_dense(st, 1.0, 0.0), "exact", ctx.exchangeable, ctx.rng, ctx.M)
    elif isinstance(layer, Activation):
        out = _activation(st, layer.act, ctx.rng, ctx.M)
    elif isinstance(layer, LayerNorm):
        out = _scale(_center(st))
    elif isinstance(layer, RMSNorm):
        out = _scale(st)
    elif isinstance(layer, Center):
        out = _center(st)
    elif isinstance(layer, Scale):
        out = _scale(st)
    elif isinstance(layer, BatchNorm):
        out = _batchnorm(st, layer.mode, ctx.exchangeable, ctx.rng, ctx.M)
    elif isinstance(layer, GroupLayerNorm):
        out = _group_layernorm(st, layer, ctx.rng, ctx.M)
    elif isinstance(layer, MaxPool):
        out = _maxpool(st, layer.k, ctx.rng, ctx.M)
    elif isinstance(layer, Residual):
        out = _residual(st, layer, ctx)
    else:  # pragma: no cover - all layer types are handled above
        raise ValueError(f"propagate: no mean-field rule for layer {layer!r}")
    if ctx.detail is not None:
        ctx.detail.append((repr(layer), out.K.copy()))
    return out


def _run_layers(st: State, layers, ctx: _Ctx) -> State:
    for layer in layers:
        st = _apply(st, layer, ctx)
    return st


# ------------------------------------------------------------------------------------------------
def propagate(net: Network, K0=None, *, X=None, exchangeable: bool = False, detail: bool = False,
              mc_samples: int = 2**17, seed: int = 0) -> Trajectory:
    """Carry the batch Gram matrix through every block of ``net`` at infinite width.

    Parameters
    ----------
    net : Network
    K0 : (n, n) array, optional
        The input Gram matrix (symmetric PSD, checked). A non-square array is taken as a data matrix X; a
        square data matrix must be passed as ``X=`` (a square positional array is always read as K0).
    X : (n, d) array, optional
        Data matrix; K0 = X X^T / d.
    exchangeable : bool
        Treat the n inputs as representatives of an infinite i.i.d. data set (BatchNorm then uses
        population statistics; see the module docstring). Used by `meanfield.bias`.
    detail : bool
        Also record the Gram after every layer (``traj.layers``: list of (layer repr, K)).
    mc_samples, seed : int
        Samples and seed of the Monte Carlo expectations needed only for non-Gaussian inputs to an
        activation, exact BatchNorm after an activation, fixed-size group norm after an activation and
        MaxPool; their standard error is in ``traj.mc_error`` (0 for exact blocks).

    Returns
    -------
    Trajectory with gram (L+1, n, n) and means (L+1, n).

    Examples
    --------
    >>> import numpy as np, meanfield
    >>> net = meanfield.mlp(2, "relu", sigma_w=2**0.5)
    >>> t = meanfield.propagate(net, np.eye(2))
    >>> np.round(t.gram[1], 6).tolist()    # arc-cosine kernel: 2 * 1/(2 pi) off the diagonal
    [[1.0, 0.31831], [0.31831, 1.0]]
    """
    if isinstance(net, (list, tuple, Layer)):  # a bare layer or list of layers, as simulate accepts
        net = Network(net)
    if not isinstance(net, Network):
        raise ValueError(f"propagate: net must be a meanfield.Network (or a list of layers), got "
                         f"{type(net).__name__}")
    if X is not None and K0 is not None:
        raise ValueError("propagate: give K0 or X, not both")
    if K0 is None and X is None:
        raise ValueError("propagate: give the input Gram K0 (n x n) or a data matrix X (n x d)")
    if K0 is not None:
        arr = np.asarray(K0, dtype=np.float64)
        if arr.ndim == 2 and arr.shape[0] != arr.shape[1]:
            X, K0 = arr, None
    if X is not None:
        Xa = np.asarray(X, dtype=np.float64)
        if Xa.ndim != 2 or Xa.shape[0] < 1 or Xa.shape[1] < 1:
            raise ValueError(f"propagate: X must be a 2-D (n, d) data matrix, got shape {Xa.shape}")
        if not np.all(np.isfinite(Xa)):
            raise ValueError("propagate: X contains NaN or inf")
        K = Xa @ Xa.T / Xa.shape[1]
    else:
        try:
            K = check_gram(K0, name="K0", allow_stack=False)
        except ValueError as exc:
            raise ValueError(f"{exc} (a square data matrix must be passed as propagate(net, X=X))") from None
    if isinstance(mc_samples, bool) or int(mc_samples) < 64:
        raise ValueError(f"propagate: mc_samples={mc_samples!r} must be an integer >= 64")
    n = K.shape[0]
    ctx = _Ctx(np.random.default_rng(seed), int(mc_samples), bool(exchangeable), [] if detail else None)
    m0 = np.zeros(n) if X is None else np.asarray(X, float).mean(axis=1)

    def raw_input(rng_, M_):
        raise ValueError("propagate: the law of the raw input features across units is unknown; a layer that "
                         "needs it (activation, batch norm, pooling) must follow a Dense layer")

    st = State(K, m0, False, raw_input, 0.0, None if X is None else np.asarray(X, dtype=np.float64))
    L = net.depth
    grams = np.empty((L + 1, n, n))
    means = np.empty((L + 1, n))
    errs = np.zeros(L + 1)
    grams[0], means[0] = K, m0
    for i, block in enumerate(net.blocks, start=1):
        st = _run_layers(st, block.layers if isinstance(block, Block) else (block,), ctx)
        grams[i], means[i], errs[i] = st.K, st.m, st.mc_error
    info = {"exchangeable": exchangeable}
    if st.features is not None:  # a fully deterministic network: its output features are known exactly
        info["features"] = st.features
    return Trajectory(gram=grams, engine="meanfield", network=net, means=means, mc_error=errs,
                      layers=ctx.detail, info=info)
