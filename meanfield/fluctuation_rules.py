"""The fresh fluctuation and the intrinsic 1/width shift of one segment of a network (the theory behind
`meanfield.fluctuations`).

A *segment* is a random layer (Dense) and the layers after it up to the next random layer. Given the empirical
Gram K_hat of its input, the Dense layer's units are exactly i.i.d. z_i ~ N(0, C), C = sigma_w^2 K_hat +
sigma_b^2 (the simulator's shortcut), i = 1..w. The layers that follow are of two kinds (`Layer.fluctuation_kind`):

- "unit": a map of each unit's n-vector alone (activations, BatchNorm across the batch, mean-only BatchNorm):
  units stay i.i.d.;
- "sample": per sample a, x_a -> alpha_a x_a + beta_a with (alpha, beta) functions of the sample's empirical
  mean m_a and mean square sq_a over the units (LayerNorm, RMSNorm, Center, Scale, GroupLayerNorm(groups)).

The Gram at a point of the segment is then a smooth functional of the empirical law of the z_i, and to first
order in 1/w (the delta method, van der Vaart 1998 ch. 3 and 20; for deep networks Yaida 2020 and Roberts,
Yaida and Hanin 2022, ch. 4):

    E K_hat = K_inf + b / w,      Cov K_hat = Sigma_f / w,       Sigma_f = Cov_z IF(z),

with IF the influence function of the functional and b its second-order (von Mises) shift. Two patterns are
supported, which cover every placement of a norm around one activation:

P1  random, unit*, sample*   Statistics A_hat = mean_i a(x_i), a(x) = (x x^T, x): the moments of the unit
    layers' output; the Gram is N(A_hat) with N the composed per-sample maps (`sample_chain`). Then
    IF = N'(a(x) - E a) and b = N''[Cov a] / 2: fourth-, third- and second-order cross moments of the units.
P2  random, sample+, Activation f, sample*   (a norm before the activation) y_i = alpha_hat z_i + beta_hat,
    theta_hat = (alpha_hat, beta_hat) = h(t_hat), t_hat = mean_i (z_i^2, z_i). With Psi(z; theta) = a(f(alpha z +
    beta)), A(theta) = E Psi and xi(z) = h'(t*) (tau(z) - t*):
        IF_A(z) = Psi(z; theta*) - A + A'(theta*) xi(z),
        b_A = A'_alpha h''[Cov tau] / 2 + Cov_z(d_theta Psi(z), xi(z)) + A''[Cov xi] / 2.
    By parity (z -> -z) Cov(alpha_hat, beta_hat) = 0 and E beta_hat = 0 to this order. The second-order
    derivatives of A never need f'': with Gamma(alpha) = alpha alpha^T o C, A = G(beta, Gamma) is the Gaussian
    mean-field map of the activation, and the heat equation (Price 1958) turns its beta-Hessian into a
    Gamma-derivative, A_beta beta[V] / 2 = d/dt G(0, Gamma + t V); the alpha-Hessian is a second derivative of
    G along alpha. So they are finite differences of the exact (1e-12) mean-field map; only first derivatives
    f' enter the node averages.

Numerics
--------
Node averages use randomized quasi-Monte Carlo: R independent Owen-scrambled Sobol sets of M points (scipy),
mapped to N(0, C) through the principal-component square root of C (largest variance on the first Sobol
coordinate). Each replicate gives its own estimate; the driver reports their mean and standard error
(relative error about 1e-3 for tanh and GELU and a few 1e-3 for ReLU at M = 2^14, R = 8, n = 10).
Derivatives of the exact maps are five-point central differences (error O(h^4)) with steps at most 1e-2 of
the scale of the Gram and 1/20 of its smallest non-zero eigenvalue: about 1e-8 relative for first and 1e-6
for second derivatives.
"""

from __future__ import annotations

import numpy as np
import scipy.special as sc
from scipy.stats import qmc

from meanfield.core.law import Gaussian

__all__ = ["upper_index", "to_sym", "upper", "sample_chain", "affine_chain", "stencil", "safe_step",
           "curvature_cov", "gaussian_nodes", "sobol_normals", "principal_root", "tangent_root",
           "segment_fresh"]

_OFFSETS = np.array([-2.0, -1.0, 1.0, 2.0])
#: directions of a statistic's covariance along which `_post` takes the second-order parts
_POST_DIRECTIONS = 24


# ---------------------------------------------------------------------------------------------------------
# upper-triangle coordinates of symmetric matrices
def upper_index(n: int):
    """Row and column indices (a <= b) of the p = n (n + 1) / 2 upper-triangle entries."""
    return np.triu_indices(n)


def upper(S: np.ndarray) -> np.ndarray:
    """(..., n, n) -> (..., p): the upper triangle (the coordinates of a symmetric matrix)."""
    iu, ju = upper_index(S.shape[-1])
    return S[..., iu, ju]


def to_sym(v: np.ndarray, n: int) -> np.ndarray:
    """(..., p) -> (..., n, n): the symmetric matrix with upper triangle v."""
    iu, ju = upper_index(n)
    S = np.zeros(v.shape[:-1] + (n, n))
    S[..., iu, ju] = v
    S[..., ju, iu] = v
    return S


# ---------------------------------------------------------------------------------------------------------
# per-sample layers on moments
def sample_chain(layers, S: np.ndarray, m: np.ndarray, chain: dict | None = None):
    """Second moments and means (S (..., n, n), m (..., n)) after a chain of "sample" layers:
    y_a = alpha_a x_a + beta_a gives E y_a y_b = alpha_a alpha_b S_ab + alpha_a beta_b m_a + beta_a alpha_b m_b +
    beta_a beta_b. ``chain``: the preceding activation ``act`` and its input's mean square ``q`` (..., n), for
    Center/Scale with mode "per_sample"."""
    ch = None if chain is None else dict(chain, centered=False)
    for layer in layers:
        a, b = layer.sample_affine(np.diagonal(S, axis1=-2, axis2=-1), m, ch)
        am = a * m
        S = (a[..., :, None] * a[..., None, :] * S + am[..., :, None] * b[..., None, :]
             + b[..., :, None] * am[..., None, :] + b[..., :, None] * b[..., None, :])
        m = am + b
    return S, m


def affine_chain(layers, sq: np.ndarray, m: np.ndarray):
    """(alpha, beta) of the composed per-sample map of a chain of "sample" layers, from the mean square and
    mean of its input (arrays (..., n))."""
    alpha, beta = np.ones_like(sq), np.zeros_like(sq)
    for layer in layers:
        a, b = layer.sample_affine(sq, m)
        alpha, beta = a * alpha, a * beta + b
        sq, m = a * a * sq + 2.0 * a * b * m + b * b, a * m + b
    return alpha, beta


# ---------------------------------------------------------------------------------------------------------
# finite differences
def stencil(fun, x0: np.ndarray, dirs: np.ndarray, h: np.ndarray, f0: np.ndarray | None = None):
    """First and second derivatives of ``fun`` at x0 along each row of ``dirs`` (step h[k]): the five-point
    central formulas f' = (f_-2 - 8 f_-1 + 8 f_1 - f_2) / 12h, f'' = (-f_-2 + 16 f_-1 - 30 f_0 + 16 f_1 -
    f_2) / 12h^2, error O(h^4). ``fun`` maps a stack of points (k, ...) to values (k, q)."""
    k = dirs.shape[0]
    if k == 0:
        return np.zeros((0,) + np.shape(f0 if f0 is not None else fun(x0[None])[0])), None
    coef = (_OFFSETS[None, :] * h[:, None]).reshape((k, 4) + (1,) * x0.ndim)
    pts = x0[None, None] + coef * dirs[:, None]
    vals = fun(pts.reshape((4 * k,) + x0.shape)).reshape(k, 4, -1)
    if f0 is None:
        f0 = fun(x0[None])[0]
    f0 = np.asarray(f0).reshape(1, -1)
    m2, m1, p1, p2 = vals[:, 0], vals[:, 1], vals[:, 2], vals[:, 3]
    hh = h[:, None]
    d1 = (m2 - 8.0 * m1 + 8.0 * p1 - p2) / (12.0 * hh)
    d2 = (-m2 + 16.0 * m1 - 30.0 * f0 + 16.0 * p1 - p2) / (12.0 * hh * hh)
    # a value that does not move beyond rounding along a direction (a unit diagonal after a norm) has
    # derivatives exactly 0 there, not rounding noise divided by h^2
    still = np.all(np.abs(vals - f0[:, None]) <= 16 * np.finfo(float).eps * np.maximum(np.abs(vals),
                                                                                        np.abs(f0[:, None])),
                   axis=1)
    d1[still] = 0.0
    d2[still] = 0.0
    return d1, d2


def curvature_cov(fun, x0: np.ndarray, dirs: np.ndarray, steps: np.ndarray, lam: np.ndarray, J: np.ndarray,
                  H: np.ndarray) -> np.ndarray:
    """The second-order covariance of fun(x0 + e) for a Gaussian e = sum_j sqrt(lam_j) z_j dirs_j:
    Var fun''[e, e] / 2 = sum_jk lam_j lam_k H_jk H_jk^T / 2, plus Cov(J e, fun'''[e, e, e] / 6) and its
    transpose, (J Sigma G'^T + transpose) / 2 with G(x) = fun''(x)[Sigma] (its derivative along each direction
    by central differences of second differences, steps ``steps``). ``J`` (m, q): fun' along each direction;
    ``H`` (m, m, q): fun'' along each pair. ``fun`` maps a stack of points to values (k, q)."""
    m = lam.size
    HL = H * np.sqrt(lam)[:, None, None] * np.sqrt(lam)[None, :, None]
    cov = 0.5 * np.einsum("jka,jkb->ab", HL, HL)
    axes = (slice(None),) + (None,) * x0.ndim

    def G(X):
        pts = np.concatenate([X[None], X[None] + steps[axes] * dirs, X[None] - steps[axes] * dirs])
        v = fun(pts)
        return (lam / steps**2) @ (v[1:m + 1] - 2.0 * v[0] + v[m + 1:])

    Gd = np.stack([(G(x0 + steps[j] * dirs[j]) - G(x0 - steps[j] * dirs[j])) / (2.0 * steps[j]) for j in range(m)])
    t = 0.5 * (J * lam[:, None]).T @ Gd
    return cov + t + t.T


def safe_step(K: np.ndarray, dirs_sym: np.ndarray, rel: float = 1e-2, frac: float = 0.05) -> np.ndarray:
    """Steps h[k] along symmetric directions such that K + t D_k stays away from the boundary of the PSD cone
    for |t| <= 2h: h = min(rel * tr(K)/n, frac * lambda_min^+(K)) / ||D_k||_2, with lambda_min^+ the smallest
    eigenvalue above the rounding level (exact null directions, e.g. duplicated inputs, are kept by the
    directions that matter)."""
    n = K.shape[0]
    lam = np.linalg.eigvalsh(0.5 * (K + K.T))
    top = max(float(lam.max()), 0.0)
    pos = lam[lam > 1e-10 * top] if top > 0 else np.array([1.0])
    scale = float(np.trace(K)) / n if np.trace(K) > 0 else 1.0
    base = min(rel * scale, frac * float(pos.min()))
    norms = np.linalg.norm(dirs_sym, ord=2, axis=(-2, -1)) if dirs_sym.size else np.zeros(0)
    return base / np.where(norms > 0, norms, 1.0)


# ---------------------------------------------------------------------------------------------------------
# nodes
def gaussian_nodes(C: np.ndarray, log2_nodes: int, seed) -> np.ndarray:
    """2^log2_nodes randomized quasi-Monte Carlo draws of z ~ N(0, C), shape (M, n): an Owen-scrambled Sobol
    set mapped by the inverse normal CDF and the principal-component square root of C (largest variance
    first, the best-distributed Sobol coordinate)."""
    return sobol_normals(C.shape[0], log2_nodes, seed) @ principal_root(C).T


def sobol_normals(n: int, log2_nodes: int, seed) -> np.ndarray:
    """The standard normal part of `gaussian_nodes`: ndtri of an Owen-scrambled Sobol set, shape (M, n)."""
    return sc.ndtri(qmc.Sobol(d=n, scramble=True, seed=seed).random_base2(log2_nodes))


def principal_root(C: np.ndarray) -> np.ndarray:
    """R with R R^T = C: the principal-component square root, columns by decreasing variance (eigenvalues
    below 1e-13 of the largest set to 0)."""
    lam, V = np.linalg.eigh(0.5 * (C + C.T))
    top = max(float(lam.max()), 0.0)
    lam = np.where(lam > 1e-13 * top, lam, 0.0)
    return (V * np.sqrt(lam))[:, ::-1]


def tangent_root(R0: np.ndarray, C: np.ndarray) -> np.ndarray:
    """A square root of C near C0 = R0 R0^T that depends smoothly on C: R0 (I + E)^(1/2) with E = R0^+ (C - C0)
    R0^+T (the symmetric square root). Mapping the *same* standard normals through it gives node sets of
    nearby covariances that differ smoothly (common random numbers), so finite differences of node averages
    along C are differences of smooth functions, not of independent noise. Exact on the range of R0 (the
    perturbations used keep that range)."""
    P = np.linalg.pinv(R0, rcond=1e-10)
    E = P @ (C - R0 @ R0.T) @ P.T
    lam, U = np.linalg.eigh(np.eye(R0.shape[1]) + 0.5 * (E + E.T))
    return R0 @ ((U * np.sqrt(np.maximum(lam, 0.0))) @ U.T)


def _moments(x: np.ndarray) -> np.ndarray:
    """a(x) = (upper(x x^T), x) per node: (M, p + n) (a transposed view: the products are formed on contiguous
    rows of x^T, twice as fast as on strided columns)."""
    n = x.shape[1]
    iu, ju = upper_index(n)
    xt = np.ascontiguousarray(x.T)
    out = np.empty((iu.size + n, x.shape[0]))
    np.multiply(xt[iu], xt[ju], out=out[: iu.size])
    out[iu.size:] = xt
    return out.T


def _cov(F: np.ndarray) -> np.ndarray:
    Fc = F - F.mean(axis=0)
    return Fc.T @ Fc / F.shape[0]


# ---------------------------------------------------------------------------------------------------------
# the segment
def _post(layers, S0: np.ndarray, m0: np.ndarray, Gamma: np.ndarray, bias: np.ndarray | None, act=None,
          q0: np.ndarray | None = None, IF: np.ndarray | None = None):
    """Push a statistic A = (upper S, m[, q]) with per-unit covariance Gamma and shift ``bias`` through the
    per-sample chain N: covariance N' Gamma N'^T, shift N' bias + N''[Gamma] / 2 (per unit, upper coordinates
    of the output Gram). Derivatives by `stencil` along the eigenvectors of Gamma. With ``act``, A also holds
    the mean square q of the activation's input (mean value q0), which Center/Scale(mode="per_sample") read.

    With the node values ``IF`` (M, dim A) of the statistic's influence function, also returns a function
    V -> the per-unit third cumulant of the output projected on the columns of V (the coefficient of 1/w^2 of
    the third cumulant of the Gram): N'^3 kappa_3(IF) + 3 sym((N' Gamma) (x) (N' Gamma) : N''), and the
    coefficient of 1/w^2 of the output's covariance (the delta method's second order: zero without a chain).
    The second-order parts use the `_POST_DIRECTIONS` largest directions of Gamma."""
    n = S0.shape[0]
    p = n * (n + 1) // 2
    if not layers:
        cov, shift = Gamma[:p, :p].copy(), (np.zeros(p) if bias is None else bias[:p].copy())
        return (cov, shift) if IF is None else (cov, shift, _third(IF[:, :p] - IF[:, :p].mean(axis=0)),
                                                 np.zeros((p, p)))

    def N(V):
        chain = None if act is None else {"act": act, "q": V[:, p + n:]}
        S, m = sample_chain(layers, to_sym(V[:, :p], n), V[:, p:p + n], chain)
        return upper(S)

    x0 = np.concatenate([upper(S0), m0] + ([] if act is None else [q0]))
    f0 = N(x0[None])[0]
    g, U = np.linalg.eigh(0.5 * (Gamma + Gamma.T))
    keep = g > 1e-13 * max(float(g.max()), 0.0)
    dirs = U[:, keep].T
    extra = bias is not None and np.any(bias)
    if extra:
        dirs = np.concatenate([dirs, (bias / np.linalg.norm(bias))[None]])
    scale = max(float(np.mean(np.diag(S0))), 1e-300)
    m2 = np.diag(S0) - m0 * m0
    floor = float(m2[m2 > 0].min()) if np.any(m2 > 0) else scale
    h = np.full(dirs.shape[0], min(1e-3 * scale, 0.05 * floor))
    d1, d2 = stencil(N, x0, dirs, h, f0)
    kk = int(keep.sum())
    J = d1[:kk]
    cov = (J.T * g[keep]) @ J
    shift = 0.5 * (g[keep] @ d2[:kk])
    if extra:
        shift = shift + np.linalg.norm(bias) * d1[kk]
    if IF is None:
        return cov, shift
    c = (IF - IF.mean(axis=0)) @ U[:, keep]                  # eigen-coordinates of the statistic per node
    o = c @ J                                               # first-order output per node
    top = np.argsort(g[keep])[::-1][:_POST_DIRECTIONS]      # the second-order parts: the largest directions
    gt, ht, dt, Jt, ct = g[keep][top], h[:kk][top], dirs[:kk][top], J[top], c[:, top]
    t = top.size
    N2 = np.zeros((t, t, f0.size))                          # N'' along pairs of eigenvectors of Gamma
    for j in range(t):
        N2[j, j] = d2[top[j]]
        if j + 1 < t:
            ls = np.arange(j + 1, t)
            pts = np.concatenate([x0[None] + sj * ht[j] * dt[j] + sl * ht[ls, None] * dt[ls]
                                  for sj in (1, -1) for sl in (1, -1)])
            v = N(pts).reshape(4, ls.size, -1)
            mixed = (v[0] - v[1] - v[2] + v[3]) / (4.0 * ht[j] * ht[ls, None])
            N2[j, ls] = mixed
            N2[ls, j] = mixed
    # the one-segment O(1/w^2) variance of N(A_hat), A_hat the mean of w i.i.d. statistics (`curvature_cov`: the
    # Gaussian part and Cov(N' e, N'''[e, e, e]/6); and Cov(N' e, N''[e, e]/2) through the statistic's third
    # cumulant K3), per unit^2
    K3 = np.einsum("mi,mj,mk->ijk", ct, ct, ct, optimize=True) / ct.shape[0]
    cross = 0.5 * np.einsum("ia,ijk,jkb->ab", Jt, K3, N2, optimize=True)
    var2 = curvature_cov(N, x0, dt, ht, gt, Jt, N2) + cross + cross.T
    return cov, shift, _third(o, Jt * gt[:, None], N2), var2


def _third(o: np.ndarray, JG: np.ndarray | None = None, N2: np.ndarray | None = None):
    """V -> E (o V)^(x)3 over the nodes, plus 3 sym((JG V) (x) (JG V) : N2 V) for a nonlinear chain."""

    def proj(V):
        ov = o @ V
        k3 = np.einsum("mi,mj,mk->ijk", ov, ov, ov, optimize=True) / o.shape[0]
        if JG is not None and JG.size:
            A = JG @ V
            T = np.einsum("ja,lb,jlc->abc", A, A, N2 @ V, optimize=True)
            k3 = k3 + T + np.transpose(T, (0, 2, 1)) + np.transpose(T, (2, 1, 0))
        return k3

    return proj


def segment_fresh(plan, laws, log2_nodes: int, seeds, normals=None, root0=None, third: bool = False):
    """Fresh per-unit covariance and shift at every point of a segment, one estimate per replicate.

    ``plan`` (from the driver): ``layers`` after the random layer, ``points`` (positions: layers applied after
    the random one), ``act_pos`` (position of the activation of pattern P2, or None) and ``groups`` (a
    GroupLayerNorm's group count, else 1). ``laws``: the mean-field laws at positions 0..k. ``normals``: the
    standard normal nodes of each replicate (`sobol_normals`; drawn from ``seeds`` when None), and ``root0``: a
    root of a nearby covariance whose `tangent_root` maps them (common random numbers for finite differences
    of the fresh covariance along the input Gram). Returns, per replicate, a list over points of (covariance
    (p, p), shift (p,)), both per unit (divide by the width). With ``third``, also a list over points of
    pairs (function V -> the per-unit third cumulant projected on V, the per-unit^2 second-order covariance of
    the per-sample chain) from the first replicate's nodes (`_post`), or (None, None) where they are not
    available (GroupLayerNorm(groups > 1)). For pattern P2 both come from its linear influence function (its
    second-order von Mises parts are omitted).
    """
    layers, points, act_pos = plan.layers, plan.points, plan.act_pos
    C = laws[0].K
    fixed = _pattern2_setup(plan, laws) if act_pos is not None and any(j >= act_pos for j in points) else None
    root = principal_root(C) if root0 is None else tangent_root(root0, C)
    if normals is None:
        normals = [sobol_normals(C.shape[0], log2_nodes, seed) for seed in seeds]
    out = []
    thirds = []
    for r, g in enumerate(normals):
        z = g @ root.T
        xs = [z]
        x = z
        for pos, layer in enumerate(layers, start=1):
            if layer.fluctuation_kind == "unit" and (act_pos is None or pos < act_pos):
                x = layer.unit_map(x)
            xs.append(x)
        p2 = _pattern2_nodes(fixed, z) if fixed is not None else None
        res = []
        for j in points:
            if act_pos is not None and j >= act_pos:
                IF, bias = p2
                q = act_pos
            else:
                q = max([0] + [i for i in range(1, j + 1) if layers[i - 1].fluctuation_kind == "unit"])
                IF, bias = _moments(xs[q]), None
            post = [layers[i - 1] for i in range(q + 1, j + 1)]
            act = q0 = None
            if any(layer.fluctuation_chain for layer in post):  # Center/Scale(meanfield): q of the act's input
                act = layers[q - 1].act
                IF = np.concatenate([IF, xs[q - 1] ** 2], axis=1)
                q0 = np.diag(laws[q - 1].K).copy()
            gr = plan.groups if any(getattr(lay, "fluctuation_groups", 1) > 1 for lay in layers[:j]) else 1
            if third and r == 0:
                cov, shift, th, var2 = _post(post, laws[q].K, laws[q].m, _cov(IF), bias, act, q0, IF)
                thirds.append((th, var2) if gr == 1 else (None, None))
            else:
                cov, shift = _post(post, laws[q].K, laws[q].m, _cov(IF), bias, act, q0)
            res.append((cov, gr * shift))
        out.append(res)
    return (out, thirds) if third else out


def _pattern2_setup(plan, laws) -> dict:
    """Pattern P2 (per-sample norm, then the activation), the parts without nodes: theta = h(t) with t = (mean
    square, mean) of z over units and t* = (diag C, 0); h' and E Delta theta = h''[Cov tau]/2 by differences;
    Cov Delta theta = h' Cov tau h'^T; the second-order term A''[Cov Delta theta]/2 from the exact map."""
    layers, a_pos = plan.layers, plan.act_pos
    pre, act_layer = layers[: a_pos - 1], layers[a_pos - 1]
    C = laws[0].K
    n = C.shape[0]
    t0 = np.concatenate([np.diag(C), np.zeros(n)])

    def h(T):
        a, b = affine_chain(pre, T[:, :n], T[:, n:])
        return np.concatenate([a, b], axis=1)

    theta0 = h(t0[None])[0]
    cov_tau = np.zeros((2 * n, 2 * n))
    cov_tau[:n, :n] = 2.0 * C * C                       # Cov(z_a^2, z_b^2) = 2 C_ab^2
    cov_tau[n:, n:] = C                                  # Cov(z_a, z_b) = C_ab; Cov(z_a^2, z_b) = 0
    d = np.diag(C)
    scale = max(float(np.sqrt(np.mean(d))), 1e-300)
    step = 1e-3 * np.concatenate([np.maximum(d, 1e-300), np.full(n, scale)])
    Jh, _ = stencil(h, t0, np.eye(2 * n), step, theta0)
    Jh = Jh.T                                            # (2n, 2n): d theta_i / d t_k
    g, U = np.linalg.eigh(cov_tau)
    keep = g > 1e-13 * g.max()
    hs = np.full(int(keep.sum()), min(1e-3 * scale, 1e-3 * float(np.min(d[d > 0], initial=scale))))
    _, d2 = stencil(h, t0, U[:, keep].T, hs, theta0)
    e_theta = 0.5 * (g[keep] @ d2)                       # E Delta theta, per unit
    cov_theta = Jh @ cov_tau @ Jh.T                      # Cov Delta theta, per unit (alpha-beta block 0: parity)
    second = _second_order(act_layer, C, theta0[:n], cov_theta[:n, :n], cov_theta[n:, n:])
    return {"act": act_layer, "t0": t0, "theta0": theta0, "Jh": Jh, "e_alpha": e_theta[:n], "second": second}


def _pattern2_nodes(fx: dict, z: np.ndarray):
    """Pattern P2 on one node set: IF_A(z) = a(f(y)) + A'(theta*) xi(z) (minus its mean) and the shift
    b_A = A'_alpha E Delta alpha + Cov(d_theta Psi, xi) + A''[Cov Delta theta]/2, per unit, with y = alpha* z +
    beta*, xi = h' (tau(z) - t*) and the derivative moments P = E[f'(y_c) u_b], Q = E[f'(y_c) z_c u_b]."""
    n = z.shape[1]
    alpha, beta = fx["theta0"][:n], fx["theta0"][n:]
    xi = (np.concatenate([z * z, z], axis=1) - fx["t0"]) @ fx["Jh"].T
    xi -= xi.mean(axis=0)
    xa, xb = xi[:, :n], xi[:, n:]
    y = alpha * z + beta
    u = fx["act"].unit_map(y)
    D = fx["act"].unit_derivative(y)
    M = z.shape[0]
    iu, ju = upper_index(n)
    P = D.T @ u / M                                      # E[f'(y_c) u_b]
    Q = (D * z).T @ u / M                                # E[f'(y_c) z_c u_b]
    ED, EDz = D.mean(axis=0), (D * z).mean(axis=0)
    lin = np.concatenate([P[iu, ju] * xb[:, iu] + P[ju, iu] * xb[:, ju] + Q[iu, ju] * xa[:, iu]
                          + Q[ju, iu] * xa[:, ju], ED * xb + EDz * xa], axis=1)
    B = xb * D + xa * D * z                              # sum_theta d_theta u_c xi_theta, per node and sample
    cross = np.concatenate([(B[:, iu] * u[:, ju] + B[:, ju] * u[:, iu]).mean(axis=0), B.mean(axis=0)])
    ea = fx["e_alpha"]
    first = np.concatenate([Q[iu, ju] * ea[iu] + Q[ju, iu] * ea[ju], EDz * ea])
    return _moments(u) + lin, first + cross + fx["second"]


def _gmap(act_layer, Gam: np.ndarray) -> np.ndarray:
    """The exact mean-field map of the activation on N(0, Gamma): (upper E f f^T, E f)."""
    law = act_layer.infinite(Gaussian(Gam), None)
    return np.concatenate([upper(law.K), law.m])


def _second_order(act_layer, C, alpha, cov_alpha, cov_beta):
    """A''[Cov theta] / 2 by the heat equation (beta block) and second differences along alpha (alpha block)."""
    G0 = alpha[:, None] * alpha[None, :] * C
    f0 = _gmap(act_layer, G0)
    total = np.zeros_like(f0)

    def many(stack):
        return np.stack([_gmap(act_layer, s) for s in stack])

    if np.any(cov_beta):
        nrm = np.linalg.norm(cov_beta, 2)
        V = cov_beta / nrm
        h = safe_step(G0, V[None])
        d1, _ = stencil(many, G0, V[None], h, f0)
        total += nrm * d1[0]
    g, W = np.linalg.eigh(0.5 * (cov_alpha + cov_alpha.T))
    keep = g > 1e-13 * max(float(g.max()), 0.0)
    if np.any(keep):
        dirs = W[:, keep].T
        live = alpha[alpha > 0]
        h = np.full(dirs.shape[0], 1e-2 * (live.min() if live.size else 1.0))

        def along(A):
            return many(A[:, :, None] * A[:, None, :] * C)

        _, d2 = stencil(along, alpha, dirs, h, f0)
        total += 0.5 * (g[keep] @ d2)
    return total
