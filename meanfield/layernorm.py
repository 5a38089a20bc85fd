"""The nonlinearity of layer normalization and group layer normalization.

Subject: Y. Ni, Y. Guo, J. Jia and L. Huang, "On the Nonlinearity of Layer Normalization", ICML 2024
(arXiv:2406.01255). Everything here is plain numpy float64 and works on one vector or on stacks of
vectors with the features on the last axis, shape (..., d).

Contents
--------
* The maps: `layer_norm` (LN, and group LN "LN-G" through ``groups``), `rms_norm`, and the two parts
  of LN, `center` and `scale` (LN = scale o center).
* Exact first and second derivatives in closed form: `layer_norm_jacobian`, `layer_norm_hessian`,
  `rms_norm_jacobian`, `rms_norm_hessian`.
* A Hessian-based nonlinearity measure H(f; x) = sum_i ||Hess f_i(x)||_F^2: `nonlinearity` (closed
  form for LN, RMSNorm and their group versions), `expected_nonlinearity` (its mean for x ~ N(0, I_d)),
  `nonlinearity_fd` (any user function, by finite differences), `group_amplification` and
  `best_groups`.
* Separability: `ssr` (sum-of-squares ratio) and `lssr` (its lower bound over all affine maps), and
  `xor_example`, where one affine map followed by LN goes below the LSSR of its input.
* LN-Net: `ln_net_classifier`, a width-3 network of affine maps and LayerNorm that fits any binary
  labelling of m distinct points with at most max(1, m - 1) layers (in exact arithmetic), `predict`,
  the empirical VC-dimension probe `vc_probe`, and `predict_grid` (decision regions in 2-D).
* Infinite vs finite width: `group_size_study` runs `meanfield.propagate` and `meanfield.simulate` on
  networks with GroupLayerNorm of a fixed group size G (`group_size_network`): the normalization's
  nonlinearity, invisible for plain LN at infinite width, survives in groups of fixed size.

Conventions: population variance (divide by d), no epsilon unless asked, no affine parameters
(gamma = 1, beta = 0). A vector (or group) with zero variance is an error when eps = 0, never a NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "layer_norm", "rms_norm", "center", "scale",
    "layer_norm_jacobian", "layer_norm_hessian", "rms_norm_jacobian", "rms_norm_hessian",
    "nonlinearity", "expected_nonlinearity", "nonlinearity_fd", "group_amplification", "best_groups",
    "ssr", "lssr", "XorExample", "xor_example",
    "LNNet", "ln_net_classifier", "predict", "VCProbe", "vc_probe",
    "GroupSizeStudy", "group_size_network", "group_size_study", "predict_grid",
]

_KINDS = ("ln", "rms")


# ----------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------
def _as_stack(x, name: str = "x", min_d: int = 1) -> np.ndarray:
    """float64 array of shape (..., d), finite, with d >= min_d."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real array of shape (..., d); got {type(x).__name__}") from exc
    if arr.ndim == 0:
        raise ValueError(f"{name} must have at least one axis (features last); got a scalar {arr!r}")
    d = arr.shape[-1]
    if d < min_d:
        raise ValueError(f"{name} must have d = x.shape[-1] >= {min_d} features; got d = {d}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; it contains NaN or inf")
    return arr


def _check_groups(d: int, groups, min_size: int, name: str = "groups") -> int:
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)):
        raise ValueError(f"{name} must be a positive integer dividing d = {d}; got {groups!r}")
    g = int(groups)
    if g < 1 or d % g != 0:
        raise ValueError(f"{name} must be a positive integer dividing d = {d}; got {groups!r}")
    if d // g < min_size:
        raise ValueError(
            f"{name} = {g} gives groups of size d/{name} = {d // g}; need a group size >= {min_size} "
            f"(so {name} <= {d // min_size})"
        )
    return g


def _check_eps(eps) -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}") from exc
    if not math.isfinite(e) or e < 0:
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
    return e


def _check_kind(kind) -> str:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}; got {kind!r}")
    return kind


def _grouped(x: np.ndarray, g: int) -> np.ndarray:
    return x.reshape(x.shape[:-1] + (g, x.shape[-1] // g))


def _zero_spread(spread: np.ndarray, xg: np.ndarray) -> np.ndarray:
    """True where a group's spread (std or rms) is zero up to rounding of its entries."""
    size = xg.shape[-1]
    return spread <= 8.0 * size * np.finfo(np.float64).eps * np.max(np.abs(xg), axis=-1)


def _group_stats(x: np.ndarray, g: int, kind: str, eps: float = 0.0, what: str = "x"):
    """(xg centred or not, scale) for kind 'ln' (std) or 'rms' (root mean square); errors on zero."""
    xg = _grouped(x, g)
    if kind == "ln":
        mean = xg.mean(axis=-1, keepdims=True)
        u = xg - mean
    else:
        u = xg
    ms = np.mean(u * u, axis=-1)
    if eps == 0.0:
        bad = _zero_spread(np.sqrt(ms), xg)
        if np.any(bad):
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            part = "variance" if kind == "ln" else "mean square"
            raise ValueError(
                f"{what} has a vector/group with zero {part} (at index {idx} of the (..., groups) "
                f"stack); the normalization is undefined there with eps = 0: pass eps > 0"
            )
    return u, np.sqrt(ms + eps)


# ----------------------------------------------------------------------------------------------------
# the maps
# ----------------------------------------------------------------------------------------------------
def layer_norm(x, groups: int = 1, eps: float = 0.0) -> np.ndarray:
    """Layer normalization (LN), or group layer normalization (LN-G) for ``groups > 1``.

    For one group of size m: ``LN(x) = (x - mu) / sqrt(sigma^2 + eps)`` with ``mu = mean(x)`` and the
    population variance ``sigma^2 = mean((x - mu)^2)``; no affine parameters (gamma = 1, beta = 0).
    LN-G (Ni et al. 2024) splits the d features into ``groups`` contiguous groups of
    m = d / groups features and applies LN to each; ``groups = 1`` is plain LN.

    Parameters
    ----------
    x : array_like, shape (..., d)
        Vectors, features on the last axis.
    groups : int
        Number of groups; must divide d, with group size m = d / groups >= 2.
    eps : float
        Added to the variance; 0 (default) makes a zero-variance group an error.

    Returns
    -------
    ndarray, shape (..., d)
        Each group has mean 0 and (for eps = 0) mean square 1: ``||y_group||^2 = m``.

    Raises
    ------
    ValueError
        d < 2, groups not dividing d or group size < 2, eps < 0, non-finite x, or (eps = 0) a group
        with zero variance (up to rounding: standard deviation <= 8 m eps_mach max|x_group|).
    """
    arr = _as_stack(x, "x", min_d=2)
    d = arr.shape[-1]
    g = _check_groups(d, groups, 2)
    e = _check_eps(eps)
    u, s = _group_stats(arr, g, "ln", e)
    return (u / s[..., None]).reshape(arr.shape)


def rms_norm(x, eps: float = 0.0, *, groups: int = 1) -> np.ndarray:
    """RMS normalization: ``x / sqrt(mean(x^2) + eps)`` (Zhang & Sennrich 2019), no gain.

    With ``groups > 1`` each of the ``groups`` contiguous groups of m = d / groups features is
    normalized separately (the RMS analogue of LN-G). d = 1 is allowed: RMSNorm is then sign(x).

    Parameters
    ----------
    x : array_like, shape (..., d)
    eps : float
        Added to the mean square; 0 (default) makes a zero group an error.
    groups : int, keyword-only
        Must divide d.

    Returns
    -------
    ndarray, shape (..., d), each group with mean square 1 (eps = 0).
    """
    arr = _as_stack(x, "x", min_d=1)
    d = arr.shape[-1]
    g = _check_groups(d, groups, 1)
    e = _check_eps(eps)
    u, s = _group_stats(arr, g, "rms", e)
    return (u / s[..., None]).reshape(arr.shape)


def center(x) -> np.ndarray:
    """Centering, the linear part of LN: ``C(x) = x - mean(x)`` = (I - 1 1^T / d) x.

    LN = S o C with the scaling S = `scale`. Shape (..., d) -> (..., d).
    """
    arr = _as_stack(x, "x", min_d=1)
    return arr - arr.mean(axis=-1, keepdims=True)


def scale(x, eps: float = 0.0) -> np.ndarray:
    """Scaling, the nonlinear part of LN: ``S(x) = x / sqrt(mean(x^2) + eps) = sqrt(d) x / ||x||``.

    This is RMSNorm (`rms_norm`); ``scale(center(x)) == layer_norm(x)``, i.e. LN = S o C with C the
    linear centering `center`. A zero vector is an error when eps = 0.
    """
    return rms_norm(x, eps)


# ----------------------------------------------------------------------------------------------------
# derivatives
# ----------------------------------------------------------------------------------------------------
def _block_jacobian(y: np.ndarray, s: np.ndarray, centred: bool) -> np.ndarray:
    """Per-group Jacobian (..., g, m, m) from normalized output y (..., g, m) and scale s (..., g)."""
    m = y.shape[-1]
    eye = np.eye(m)
    base = eye - 1.0 / m if centred else eye
    return (base - y[..., :, None] * y[..., None, :] / m) / s[..., None, None]


def _block_hessian(y: np.ndarray, s: np.ndarray, centred: bool) -> np.ndarray:
    """Per-group Hessian (..., g, m, m, m): H[i, j, k] = d^2 y_i / dx_j dx_k."""
    m = y.shape[-1]
    eye = np.eye(m)
    base = eye - 1.0 / m if centred else eye
    yi = y[..., :, None, None]
    yj = y[..., None, :, None]
    yk = y[..., None, None, :]
    t = 3.0 * yi * yj * yk / m - (base[:, :, None] * yk + base[:, None, :] * yj + base[None, :, :] * yi)
    return t / (m * s[..., None, None, None] ** 2)


def _assemble(blocks: np.ndarray, d: int, order: int) -> np.ndarray:
    """Place per-group blocks (..., g, m, ..., m) on the block diagonal of a (..., d, ..., d) array."""
    lead = blocks.shape[:-order - 1]
    g, m = blocks.shape[-order - 1], blocks.shape[-1]
    out = np.zeros(lead + (d,) * order)
    for k in range(g):
        sl = (Ellipsis,) + (slice(k * m, (k + 1) * m),) * order
        out[sl] = blocks[(Ellipsis, k) + (slice(None),) * order]
    return out


def _derivative(x, groups: int, kind: str, order: int) -> np.ndarray:
    min_d = 2 if kind == "ln" else 1
    arr = _as_stack(x, "x", min_d=min_d)
    d = arr.shape[-1]
    g = _check_groups(d, groups, min_d)
    u, s = _group_stats(arr, g, kind)
    y = u / s[..., None]
    fn = _block_jacobian if order == 1 else _block_hessian
    return _assemble(fn(y, s, kind == "ln"), d, order + 1)


def layer_norm_jacobian(x, groups: int = 1) -> np.ndarray:
    """Exact Jacobian of LN (or LN-G) at x, shape (..., d, d), ``J[i, j] = d y_i / d x_j``.

    For one group of size m with y = LN(x) and P = I - 1 1^T / m:
    ``J = (P - y y^T / m) / sigma``. Since y is orthogonal to 1 and ||y||^2 = m, P - y y^T / m is the
    orthogonal projection onto the complement of span{1, y}: J is symmetric with singular values
    1/sigma (m - 2 times) and 0 (twice). LN-G: block diagonal over the groups.
    Derived by differentiating y = sqrt(m) P x / ||P x|| (cf. Ni et al. 2024).
    """
    return _derivative(x, groups, "ln", 1)


def layer_norm_hessian(x, groups: int = 1) -> np.ndarray:
    """Exact Hessian of LN (or LN-G) at x, shape (..., d, d, d), ``H[i, j, k] = d^2 y_i/dx_j dx_k``.

    For one group of size m, with y = LN(x), P = I - 1 1^T / m and sigma the standard deviation:

        H[i, j, k] = ( 3 y_i y_j y_k / m - P_ij y_k - P_ik y_j - P_jk y_i ) / (m sigma^2).

    Derivation: y = sqrt(m) g(P x) with g(u) = u / ||u||, whose Hessian is
    (3 n_i n_j n_k - delta_ij n_k - delta_ik n_j - delta_jk n_i) / ||u||^2, n = u / ||u|| = y / sqrt(m),
    ||P x||^2 = m sigma^2, and P n = n. For m = 2 the Hessian vanishes (LN is then locally constant,
    (1, -1) or (-1, 1)). LN-G: entries with i, j, k not all in one group are zero.
    """
    return _derivative(x, groups, "ln", 2)


def rms_norm_jacobian(x, *, groups: int = 1) -> np.ndarray:
    """Exact Jacobian of RMSNorm, shape (..., d, d): ``J = (I - y y^T / m) / s``, s = sqrt(mean x^2).

    Singular values 1/s (m - 1 times) and 0 (once, along y). Groups: block diagonal.
    """
    return _derivative(x, groups, "rms", 1)


def rms_norm_hessian(x, *, groups: int = 1) -> np.ndarray:
    """Exact Hessian of RMSNorm, shape (..., d, d, d):

        H[i, j, k] = ( 3 y_i y_j y_k / m - delta_ij y_k - delta_ik y_j - delta_jk y_i ) / (m s^2),

    with y = x / s, s^2 = mean(x^2) (the LN formula with P replaced by I).
    """
    return _derivative(x, groups, "rms", 2)


# ----------------------------------------------------------------------------------------------------
# the Hessian nonlinearity measure
# ----------------------------------------------------------------------------------------------------
def nonlinearity(x, groups: int = 1, kind: str = "ln"):
    """Hessian nonlinearity H(f; x) = sum_i ||Hess f_i(x)||_F^2 of LN / LN-G / RMSNorm, closed form.

    What we compute: the sum over all outputs i and all input pairs (j, k) of (d^2 f_i / dx_j dx_k)^2
    at the point x, i.e. the squared Frobenius norm of the full (d, d, d) second-derivative tensor.
    It is 0 exactly for affine maps and is scale dependent (H(f; c x) = H(f; x) / c^4 for the
    normalizations, which are scale invariant). Closed forms (derived from the Hessians in
    `layer_norm_hessian` and `rms_norm_hessian`, checked against them and against finite differences
    in the tests), for one group of size m:

    * LN:      H = 3 (m - 2) / (m sigma^4),  sigma^2 the population variance of the group;
    * RMSNorm: H = 3 (m - 1) / (m s^4),      s^2 the mean square of the group;

    and, for ``groups > 1`` (LN-G or grouped RMSNorm), the sum of these over the groups, since the
    Hessian is block diagonal. Derivation of the LN value 3 (m - 2) / (m sigma^4): the Hessian is
    T / (sqrt(m) sigma^2) with T = 3 n n n - (P n + its two index permutations), n = y / sqrt(m) a unit
    vector with P n = n, and ||T||_F^2 = 9 - 18 + 3 (m - 1) + 6 = 3 (m - 2).

    Note: this is the measure as specified for this package. Ni et al. (2024) argue about the
    nonlinearity of LN and LN-G with their own definitions, which may differ from ours (e.g. one
    output vs. the sum over outputs, squared vs. plain norm, normalization per sample or per
    feature); compare only ratios, such as `group_amplification`, which a common constant factor
    does not change.

    Parameters
    ----------
    x : array_like, shape (..., d)
    groups : int
        Number of groups (must divide d; group size >= 2 for LN).
    kind : {"ln", "rms"}

    Returns
    -------
    float for a single vector, else ndarray of shape x.shape[:-1].
    """
    k = _check_kind(kind)
    min_d = 2 if k == "ln" else 1
    arr = _as_stack(x, "x", min_d=min_d)
    d = arr.shape[-1]
    g = _check_groups(d, groups, min_d)
    m = d // g
    _, s = _group_stats(arr, g, k)
    const = 3.0 * (m - 2) / m if k == "ln" else 3.0 * (m - 1) / m
    out = np.sum(const / s**4, axis=-1)
    return float(out) if out.ndim == 0 else out


def expected_nonlinearity(d: int, groups: int = 1, kind: str = "ln") -> float:
    """E[H(f; x)] for x ~ N(0, I_d), with H from `nonlinearity`; ``math.inf`` where it diverges.

    Group size m = d / groups; the groups are independent. LN: m sigma^2 = ||P x_g||^2 ~ chi^2_{m-1}
    and E[1/chi^2_k^2] = 1 / ((k - 2)(k - 4)) for k > 4 (infinite otherwise), so

        E H_LN  = groups * 3 m (m - 2) / ((m - 3)(m - 5))   for m >= 6,
                  0 for m = 2 (H = 0 identically),  inf for m = 3, 4, 5;

    RMSNorm: m s^2 = ||x_g||^2 ~ chi^2_m, so

        E H_RMS = groups * 3 m (m - 1) / ((m - 2)(m - 4))   for m >= 5,
                  0 for m = 1 (sign function),  inf for m = 2, 3, 4.

    The infinite values are genuine: the moment E[sigma^-4] does not exist for small groups (the
    density of sigma near 0 is too heavy), not a numerical failure.
    """
    k = _check_kind(kind)
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < (2 if k == "ln" else 1):
        raise ValueError(f"d must be an integer >= {2 if k == 'ln' else 1} for kind={k!r}; got {d!r}")
    d = int(d)
    g = _check_groups(d, groups, 2 if k == "ln" else 1)
    m = d // g
    if k == "ln":
        if m == 2:
            return 0.0
        if m <= 5:
            return math.inf
        return g * 3.0 * m * (m - 2) / ((m - 3) * (m - 5))
    if m == 1:
        return 0.0
    if m <= 4:
        return math.inf
    return g * 3.0 * m * (m - 1) / ((m - 2) * (m - 4))


def _eval_points(f: Callable, pts: np.ndarray, vectorized: bool) -> np.ndarray:
    if vectorized:
        out = np.asarray(f(pts), dtype=np.float64)
        if out.ndim == 1 and out.shape[0] == pts.shape[0]:
            out = out[:, None]
        if out.ndim != 2 or out.shape[0] != pts.shape[0]:
            raise ValueError(
                f"f with vectorized=True must map (n, d) to (n, k) or (n,); got shape {out.shape} "
                f"for input shape {pts.shape}"
            )
        return out
    rows = [np.atleast_1d(np.asarray(f(p), dtype=np.float64)).ravel() for p in pts]
    return np.stack(rows)


def nonlinearity_fd(f: Callable, x, h: float | None = None, vectorized: bool = False) -> float:
    """H(f; x) = sum_i ||Hess f_i(x)||_F^2 of any function, by central finite differences.

    Same quantity as `nonlinearity` (see there for what is computed), for any f: R^d -> R^k (a scalar
    output counts as k = 1), so an activation applied elementwise (H = sum_j f''(x_j)^2) and a
    normalization layer can be compared on one scale. Each second derivative uses the four-point
    stencil [f(x+h e_j+h e_k) - f(x+h e_j-h e_k) - f(x-h e_j+h e_k) + f(x-h e_j-h e_k)] / (4 h^2)
    (error O(h^2) plus rounding O(eps_mach / h^2)), 2 d (d + 1) evaluations of f.

    Parameters
    ----------
    f : callable
        Maps a vector of shape (d,) to shape (k,) or a scalar; with ``vectorized=True`` it must map a
        stack (n, d) to (n, k) or (n,) row by row (elementwise numpy functions do).
    x : array_like, shape (d,)
    h : float, optional
        Step; default 1e-4 times the standard deviation of x (or its RMS, or 1, if that is 0), which
        balances truncation and rounding for scale-invariant maps such as LN.
    vectorized : bool
        Evaluate all stencil points in one call of f.
    """
    arr = _as_stack(x, "x", min_d=1)
    if arr.ndim != 1:
        raise ValueError(f"x must be a single vector of shape (d,); got shape {arr.shape}")
    if not callable(f):
        raise ValueError(f"f must be callable; got {type(f).__name__}")
    d = arr.shape[0]
    if h is None:
        sc = float(np.std(arr)) or float(np.sqrt(np.mean(arr**2))) or 1.0
        step = 1e-4 * sc
    else:
        try:
            step = float(h)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"h must be a finite number > 0; got {h!r}") from exc
        if not math.isfinite(step) or step <= 0:
            raise ValueError(f"h must be a finite number > 0; got {h!r}")
    jj, kk = np.triu_indices(d)
    eye = np.eye(d) * step
    pts = np.concatenate([
        arr + eye[jj] + eye[kk],
        arr + eye[jj] - eye[kk],
        arr - eye[jj] + eye[kk],
        arr - eye[jj] - eye[kk],
    ])
    vals = _eval_points(f, pts, vectorized)
    n = jj.size
    sec = (vals[:n] - vals[n:2 * n] - vals[2 * n:3 * n] + vals[3 * n:]) / (4.0 * step * step)
    weight = np.where(jj == kk, 1.0, 2.0)
    return float(np.sum(weight[:, None] * sec**2))


def group_amplification(d: int, groups: int) -> float:
    """H(LN-G; x) / H(LN; x) when all groups have the same mean and the same variance.

    From `nonlinearity`: with group size m = d / g and common variance sigma^2 (which is then also the
    variance of the whole vector),

        H(LN-G) / H(LN) = g * 3 (m - 2)/(m sigma^4) / (3 (d - 2)/(d sigma^4)) = g (d - 2 g) / (d - 2),

    (verified against the exact Hessians in the tests). It is 1 for g = 1, exceeds
    1 iff (g - 1)(d - 2 g - 2) > 0, i.e. for g > 1 iff d > 2 g + 2 (group size m > 2 + 2 / g), is 0
    for groups of size 2, and is maximal near g = d / 4 (groups of 4), where it is about d^2 / (8 (d-2)).
    Ni et al. (2024) show that group partition amplifies the nonlinearity of LN under a mild
    assumption; this function is our version of that statement for the measure of `nonlinearity`.
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 3:
        raise ValueError(f"d must be an integer >= 3 (H(LN) = 0 for d = 2); got {d!r}")
    d = int(d)
    g = _check_groups(d, groups, 2)
    return g * (d - 2.0 * g) / (d - 2.0)


def best_groups(d: int) -> int:
    """The number of groups g (a divisor of d with d / g >= 2) maximizing `group_amplification`.

    Ties go to the smaller g. The continuous optimum is g = d / 4 (groups of 4 features).
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 3:
        raise ValueError(f"d must be an integer >= 3; got {d!r}")
    d = int(d)
    best, best_val = 1, -math.inf
    for g in range(1, d // 2 + 1):
        if d % g == 0:
            v = group_amplification(d, g)
            if v > best_val + 1e-12:
                best, best_val = g, v
    return best


# ----------------------------------------------------------------------------------------------------
# separability: SSR and LSSR
# ----------------------------------------------------------------------------------------------------
def _as_samples(X, name: str) -> np.ndarray:
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real array of shape (n, p); got {type(X).__name__}") from exc
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (n, p) or (n,); got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: each class needs at least one sample (n >= 1); got n = 0")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} must have p >= 1 features; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; it contains NaN or inf")
    return arr


def _scatters(X1, X2):
    A = _as_samples(X1, "X1")
    B = _as_samples(X2, "X2")
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"X1 and X2 must have the same number of features; got {A.shape[1]} and {B.shape[1]}")
    allx = np.concatenate([A, B])
    ca, cb, ct = A - A.mean(0), B - B.mean(0), allx - allx.mean(0)
    sw = ca.T @ ca + cb.T @ cb
    st = ct.T @ ct
    tr = np.trace(st)
    if not tr > 1e-300 or tr <= (64 * np.finfo(float).eps) ** 2 * np.sum(allx**2):
        raise ValueError("X1 and X2 have zero total scatter (all samples equal): SSR is undefined")
    return sw, st


def ssr(X1, X2) -> float:
    """Sum-of-squares ratio of two labelled sets: within-class scatter over total scatter.

        SSR = sum_c sum_{x in X_c} ||x - mu_c||^2 / sum_x ||x - mu||^2 = tr(S_W) / tr(S_T),

    in [0, 1]; small means well separated (Ni et al. 2024). X1 (n1, p), X2 (n2, p); a 1-D
    array is n samples of one feature. Invariant under translations, rotations and uniform scaling.
    """
    sw, st = _scatters(X1, X2)
    return float(np.clip(np.trace(sw) / np.trace(st), 0.0, 1.0))


def lssr(X1, X2) -> float:
    """Linear lower bound of SSR: the smallest SSR any affine map of the data can reach.

        LSSR = min_{w : w^T S_T w > 0} (w^T S_W w) / (w^T S_T w),

    the smallest generalized eigenvalue of (S_W, S_T) on the range of S_T (S_W = within-class scatter
    matrix, S_T = total scatter matrix, both p x p). For any affine map x -> A x + b (any output
    dimension), SSR(A X1 + b, A X2 + b) = tr(A S_W A^T) / tr(A S_T A^T) >= LSSR, a ratio of sums of
    per-direction ratios, and the 1-D projection on the minimizing w attains it; in one dimension
    LSSR = SSR. With two classes S_T = S_W + (n1 n2 / n) dm dm^T, so LSSR = 1 - (n1 n2/n) dm^T S_T^+ dm
    (dm the difference of the class means). Cf. the LSSR of Ni et al. (2024).
    """
    sw, st = _scatters(X1, X2)
    vals, vecs = np.linalg.eigh(st)
    keep = vals > vals.max() * 1e-12
    half = vecs[:, keep] / np.sqrt(vals[keep])
    m = half.T @ sw @ half
    lo = np.linalg.eigvalsh(0.5 * (m + m.T))[0]
    return float(np.clip(lo, 0.0, 1.0))


@dataclass
class XorExample:
    """Result of `xor_example`: the data, the affine map R^2 -> R^3, and the separability numbers."""

    X1: np.ndarray        # class "x1 x2 > 0", shape (n1, 2)
    X2: np.ndarray        # class "x1 x2 < 0", shape (n2, 2)
    W: np.ndarray         # (3, 2)
    b: np.ndarray         # (3,)
    Y1: np.ndarray        # layer_norm(X1 @ W.T + b), shape (n1, 3)
    Y2: np.ndarray
    ssr_input: float      # SSR of the inputs
    lssr_input: float     # LSSR of the inputs: the best any affine map can do
    ssr_output: float     # SSR after the affine map and LN (below lssr_input)


# orthonormal basis of the plane {y in R^3 : sum y = 0}, columns e1, e2
_E = np.array([
    [1.0 / math.sqrt(2.0), 1.0 / math.sqrt(6.0)],
    [-1.0 / math.sqrt(2.0), 1.0 / math.sqrt(6.0)],
    [0.0, -2.0 / math.sqrt(6.0)],
])
_SQRT3 = math.sqrt(3.0)


def xor_example(seed: int = 0, n_per_cluster: int = 50, noise: float = 0.1) -> XorExample:
    """An XOR data set on which one affine map followed by LN (d = 3) beats every affine map.

    Four Gaussian clusters (standard deviation ``noise``) at (+-1, +-1); class 1 where x1 x2 > 0,
    class 2 where x1 x2 < 0. The class means coincide, so LSSR of the input is (nearly) 1: no affine
    map separates the classes at all. The fixed affine map z = W x + b writes, in the orthonormal
    basis (e1, e2) of the plane sum(z) = 0 that LN maps onto the circle ||y||^2 = 3,

        v = (1 + 1.75 x1 + 1.25 x2,  0.5 (x1 + x2)),   z = v_1 e1 + v_2 e2,

    which sends both class-2 clusters (x1 + x2 = 0) to v = (1 +- 0.5, 0), the same direction, so LN
    collapses class 2 to (nearly) one point, while the class-1 clusters go to the directions of (4, 1)
    and (-2, -1). The SSR after LN is 0.68 without noise and about 0.7 with noise 0.1, far below the
    LSSR of the input (about 1); a numerical search over all affine maps found nothing below 1/2 for
    the noiseless clusters.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    if isinstance(n_per_cluster, bool) or not isinstance(n_per_cluster, (int, np.integer)) or n_per_cluster < 1:
        raise ValueError(f"n_per_cluster must be an integer >= 1; got {n_per_cluster!r}")
    noise = float(noise)
    if not math.isfinite(noise) or noise < 0 or noise > 0.3:
        raise ValueError(f"noise must be in [0, 0.3] (the clusters must stay apart); got {noise!r}")
    rng = np.random.default_rng(seed)
    n = int(n_per_cluster)

    def cluster(cx, cy):
        return np.array([cx, cy]) + noise * rng.standard_normal((n, 2))

    X1 = np.concatenate([cluster(1, 1), cluster(-1, -1)])
    X2 = np.concatenate([cluster(1, -1), cluster(-1, 1)])
    B = np.array([[1.75, 1.25], [0.5, 0.5]])
    c = np.array([1.0, 0.0])
    W = _E @ B
    b = _E @ c
    Y1 = layer_norm(X1 @ W.T + b)
    Y2 = layer_norm(X2 @ W.T + b)
    return XorExample(X1=X1, X2=X2, W=W, b=b, Y1=Y1, Y2=Y2, ssr_input=ssr(X1, X2),
                      lssr_input=lssr(X1, X2), ssr_output=ssr(Y1, Y2))


# ----------------------------------------------------------------------------------------------------
# LN-Net: width-3 networks of affine maps and LN
# ----------------------------------------------------------------------------------------------------
@dataclass
class LNNet:
    """A network of affine maps, each followed by LayerNorm (no epsilon, no affine parameters).

    ``layers[l] = (W, b)`` with W of shape (3, d_in) (d_in = input dimension for the first layer, 3
    after) and b of shape (3,); the hidden state is ``h <- layer_norm(h @ W.T + b)``. The output label
    is ``classes[1]`` where ``h @ readout > 0`` and ``classes[0]`` otherwise.
    """

    layers: list[tuple[np.ndarray, np.ndarray]]
    readout: np.ndarray
    classes: tuple = (0, 1)
    info: dict = field(default_factory=dict)

    @property
    def widths(self) -> list[int]:
        """Output width of every layer (all 3 for the constructions here)."""
        return [int(W.shape[0]) for W, _ in self.layers]

    @property
    def depth(self) -> int:
        """Number of affine + LN layers."""
        return len(self.layers)

    @property
    def input_dim(self) -> int:
        return int(self.layers[0][0].shape[1])

    def forward(self, X) -> np.ndarray:
        """Hidden state after the last layer, shape (n, 3)."""
        h = _as_samples(X, "X")
        if h.shape[1] != self.input_dim:
            raise ValueError(f"X must have {self.input_dim} features; got {h.shape[1]}")
        for W, b in self.layers:
            h = layer_norm(h @ W.T + b)
        return h

    def scores(self, X) -> np.ndarray:
        """Readout ``h @ readout``, shape (n,); positive means ``classes[1]``."""
        return self.forward(X) @ self.readout


def predict(net, X) -> np.ndarray:
    """Labels of the rows of X (n, D) under an LN-Net (a `Network` from `ln_net_classifier` or an `LNNet`).

    The label is ``classes[1]`` where the readout score is > 0 and ``classes[0]`` otherwise. A Network is
    run through `meanfield.propagate`, whose rule for fixed Linear layers and norms acts exactly on the
    explicit features.
    """
    from meanfield.infinite import propagate
    from meanfield.network import Network

    if isinstance(net, LNNet):
        s = net.scores(X)
        cls = np.asarray(net.classes)
    elif isinstance(net, Network):
        if not net.meta or "classes" not in net.meta:
            raise ValueError("net: a Network for predict must come from ln_net_classifier (meta['classes'])")
        Xa = _as_samples(X, "X")
        s = propagate(net, X=Xa).info["features"][:, 0]
        cls = np.asarray(net.meta["classes"])
    else:
        raise ValueError(f"net must be a Network from ln_net_classifier or an LNNet; got {type(net).__name__}")
    return np.where(s > 0, cls[1], cls[0])


def to_network(net: LNNet):
    """The LN-Net as an ordinary `meanfield.Network`: blocks Linear(W, b) -> LayerNorm, then a readout
    block Linear(readout); ``meta`` holds the classes and the construction's info."""
    from meanfield.layers import Block, LayerNorm, Linear
    from meanfield.network import Network

    blocks = [Block((Linear(W, b), LayerNorm())) for W, b in net.layers]
    blocks.append(Block((Linear(np.asarray(net.readout, dtype=float)[None, :]),), name="readout"))
    classes = [c.item() if hasattr(c, "item") else c for c in net.classes]
    info = {k: (v.item() if hasattr(v, "item") else v) for k, v in net.info.items()
            if isinstance(v, (bool, int, float, str, np.generic))}
    return Network(blocks, meta={"classes": classes, "info": info, "kind": "ln_net"})


def ln_net_classifier(X, y, max_layers: int | None = None, seed: int = 0, check: bool = True):
    """A width-3 network of affine maps and LayerNorm that classifies the labelled points (X, y).

    Returns an ordinary `meanfield.Network` (see `to_network`; its ``widths`` are all 3) that both
    engines run: `meanfield.propagate` exactly on explicit features, `meanfield.simulate` as fixed
    layers. The construction and its proof are in `ln_net`; `predict(net, X)` gives the labels.
    """
    return to_network(ln_net(X, y, max_layers=max_layers, seed=seed, check=check))


# --- internals of the construction -----------------------------------------------------------------
# Every hidden state of the construction is y = sqrt(3) (cos psi e1 + sin psi e2) with psi in
# (-pi/2, pi/2). A layer with parameters (theta, mu, lam, sg) computes s = cos(psi - theta) (a linear
# function of y), v = (lam, sg (s - mu)) (lam > 0), and the new angle psi' = atan(sg (s - mu) / lam).

def _layer_matrices(rho: np.ndarray, mu: float, lam: float, sg: float, first: bool):
    """W, b of the layer with plane map v = (lam, sg (rho . u - mu)); u = y-plane coords or raw x."""
    a = np.array([0.0, sg])
    A = np.outer(a, rho)                      # (2, d_in): rank one
    c = np.array([lam, -sg * mu])
    W = _E @ A if first else _E @ A @ _E.T / _SQRT3
    return W, _E @ c


def _warp_to(s: np.ndarray, i: int, j: int, alpha: float, beta: float):
    """(mu, lam, sg) of the warp psi = atan(sg (s - mu) / lam) sending s[i] -> -alpha, s[j] -> beta."""
    si, sj = s[i], s[j]
    sg = 1.0 if sj > si else -1.0
    ta, tb = math.tan(alpha), math.tan(beta)
    lam = max(sg * (sj - si) / (ta + tb), 1e-300)
    mu = si + sg * lam * ta
    return mu, lam, sg


def _warp(s: np.ndarray, mu: float, lam: float, sg: float) -> np.ndarray:
    return np.arctan(sg * (s - mu) / lam)


def _normalize_state(lab: list, nd: int) -> int:
    """With no F yet, a next point of the other label becomes N (the old N becomes F) for free."""
    if nd == 1 and len(lab) > 1 and lab[1] != lab[0]:
        return 2
    return nd


def _switches(lab: list) -> list[int]:
    return [k for k in range(1, len(lab)) if lab[k] != lab[k - 1]]


def _done(lab: list) -> bool:
    return len(_switches(lab)) <= 1


_RATIO = 0.25
_ALPHAS = np.linspace(0.5, 1.55, 22)
_BETAS = np.linspace(0.5, 1.4, 10)


def _choose_warp(s: np.ndarray, lab: list, nd: int):
    """Warp (mu, lam, sg) preparing the next fold; None if the near-case condition cannot be met."""
    n = len(s)
    if n == 1:
        return s[0], 1.0, 1.0
    if _done(lab):
        sw = _switches(lab)
        k = sw[0] if sw else n - 1
        return _warp_to(s, k - 1, k, 1.0, 1.0)
    i_n, i_b = nd - 1, nd
    near = nd == 2 and lab[i_b] == lab[1] and i_b + 1 < n
    best = None
    for alpha in _ALPHAS:
        for beta in _BETAS:
            mu, lam, sg = _warp_to(s, i_n, i_b, alpha, beta)
            p = _warp(s, mu, lam, sg)
            if near and abs(p[1] - p[0]) > _RATIO * abs(p[i_b + 1] - p[i_b]):
                continue
            gap = np.min(np.abs(np.diff(p)))
            if not gap > 0:
                continue
            score = math.log(gap) - 4.0 * abs(0.5 * (alpha + beta) - 1.0)
            if best is None or score > best[0]:
                best = (score, mu, lam, sg)
    return None if best is None else best[1:]


def _existence_warp(s: np.ndarray, nd: int):
    """The warp of the proof: centre between the first two undecided points, shrink lam until the
    near-case condition |psi_N - psi_F| <= ratio |psi_b2 - psi_b1| holds."""
    i_b = nd
    if i_b + 1 >= len(s):
        return None
    mu = 0.5 * (s[i_b] + s[i_b + 1])
    sg = 1.0 if s[i_b + 1] > s[i_b] else -1.0
    span = float(np.max(s) - np.min(s))
    for k in range(1, 40):
        lam = span * 2.0 ** (-k)
        p = _warp(s, mu, lam, sg)
        if abs(p[1] - p[0]) <= _RATIO * abs(p[i_b + 1] - p[i_b]):
            return mu, lam, sg
    return None


def _best_cut_readout(psi: np.ndarray, lab: list, weight: list[int]):
    """Readout (2-vector in plane coordinates) of the best threshold on the ordered angles."""
    n = len(psi)
    w = np.asarray(weight, float)
    pos = np.asarray(lab, float)
    best = None
    for k in range(n + 1):                        # groups [0, k) on one side, [k, n) on the other
        for upper in (1.0, 0.0):                  # label of groups [k, n)
            correct = np.sum(w[:k] * (pos[:k] == 1.0 - upper)) + np.sum(w[k:] * (pos[k:] == upper))
            if best is None or correct > best[0]:
                best = (correct, k, upper)
    _, k, upper = best
    if k == 0 or k == n:
        label_all = upper if k == 0 else 1.0 - upper
        return np.array([1.0, 0.0]) * (1.0 if label_all == 1.0 else -1.0)
    tau = 0.5 * (psi[k - 1] + psi[k])
    increasing = psi[k] > psi[k - 1]
    # sin(psi - tau) > 0 iff psi > tau; positive class on the side of groups [k, n) if upper == 1
    sgn = 1.0 if (upper == 1.0) == increasing else -1.0
    return sgn * np.array([-math.sin(tau), math.cos(tau)])


def _projection(U: np.ndarray, seed: int) -> np.ndarray:
    """A unit direction with well separated projections of the distinct rows of U."""
    D = U.shape[1]
    if D == 1 or U.shape[0] < 2:
        return np.eye(D)[0]
    rng = np.random.default_rng(seed)
    best, best_w = -1.0, None
    for _ in range(64):
        w = rng.standard_normal(D)
        w /= np.linalg.norm(w)
        t = np.sort(U @ w)
        q = np.min(np.diff(t)) / (t[-1] - t[0])
        if q > best:
            best, best_w = q, w
    if not best > 1e-10:
        raise ValueError("X has points too close together to be separated by a projection "
                         "(relative gap < 1e-10)")
    return best_w


def ln_net(X, y, max_layers: int | None = None, seed: int = 0, check: bool = True) -> LNNet:
    """A width-3 LN-Net (affine maps, each followed by LayerNorm on 3 features) that fits any labels.

    Given m distinct points X (m, D) and binary labels y (any two values), returns an `LNNet` of at
    most max(1, m - 1) layers (in exact arithmetic; numerically a few extra warp layers can be inserted)
    whose `predict` reproduces y. Our own construction (the paper's Theorem -- width 3, O(m) layers -- is
    the same statement; the construction below is ours and self-contained).

    Construction and proof sketch
    -----------------------------
    *Geometry.* For d = 3, LN maps onto the circle {sum y = 0, ||y||^2 = 3}: y = sqrt(3)(cos psi e1 +
    sin psi e2) with (e1, e2) an orthonormal basis of the plane sum = 0. Every layer here is the rank-one
    affine map that, in these coordinates, sends the state to v = (lam, sg (s - mu)) with s = rho . u a
    linear function of the previous state (lam > 0, sg = +-1), so the new angle is
    psi' = atan(sg (s - mu) / lam) in (-pi/2, pi/2): a strictly monotone function of s. With
    rho = (cos theta, sin theta), s = cos(psi - theta) depends only on the distance |psi - theta| < pi
    and strictly decreases with it:

    * a *fold* (theta inside the occupied arc) merges exactly the pairs of points mirrored about theta
      and orders all points by their distance to theta;
    * a *warp* (theta outside it) is a strictly monotone reparametrization of the arc.

    *Layer 1.* Project on a direction w with distinct projections t = w . x (generic w; we try random
    ones and keep the best separated), and warp: psi = atan(sg (t - mu) / lam). The points are now on an
    arc in the order of t.

    *Invariant.* The points are grouped into a list [F, N, a_1, ..., a_k], monotone in psi: F and N are
    single positions holding all already decided points (labels l_F != l_N), a_1 < ... < a_k are the
    undecided points in order. Initially N = the first point, F is empty (a next point of the other
    label just becomes N, the old N becomes F, at no cost).

    *One layer per point.* To decide a_1:

    * far case, label(a_1) = l_F: fold at theta = (psi_F + psi_a1) / 2. F and a_1 merge (distance
      delta); N lies strictly between them, hence strictly closer; every a_j, j >= 2, is strictly
      farther. New list [N, F + a_1, a_2, ...] (N is the new F): the invariant holds.
    * near case, label(a_1) = l_N: fold at theta = (psi_N + psi_a1) / 2. N and a_1 merge at distance
      delta, F is at delta + |psi_N - psi_F|, a_2 at delta + |psi_a2 - psi_a1|. If
      |psi_N - psi_F| < |psi_a2 - psi_a1|, the new list is [N + a_1, F, a_2, ...]: the invariant holds.
      The warp of the previous layer is chosen to make that inequality true, which is always possible:
      with mu between the images of a_1 and a_2 and lam -> 0, a_1 and a_2 go to opposite ends of
      (-pi/2, pi/2) while F and N go to the same end, so |psi_N - psi_F| -> 0 and
      |psi_a2 - psi_a1| -> pi.

    Points of different labels are never at the same distance from a fold, so they never merge, and
    monotone warps keep them apart. Once the labels along the list change at most once (at the latest
    when all points are decided), the readout sign(r . y), r the normal of the line through the origin
    and the midpoint angle between the two sides, classifies every point. Depth: 1 + (one fold per
    decided point; the first point and the first point of the other label cost nothing, so at most
    m - 2 folds) <= max(1, m - 1) = O(m).

    *Numerics.* Among the warps that satisfy the next step's condition (with margin 1/4) we take the
    gentlest one: it sends N and a_1 to angles -alpha and beta with (alpha + beta) / 2 near 1 radian
    (so the next fold works where cos is nearly linear) and maximizes the smallest gap between
    neighbouring groups. If no such warp exists, pure warp layers (compressing the decided end) are
    inserted, and finally the warp of the proof is used. The result is checked with `predict`.

    Parameters
    ----------
    X : array_like, shape (m, D)
        Distinct points (duplicates allowed only with equal labels).
    y : array_like, shape (m,)
        Labels, at most two distinct values; ``classes = (smaller, larger)``.
    max_layers : int, optional
        Stop after this many layers (at least 1) and read out the best threshold on the state then;
        the network may then misclassify (this is how `vc_probe` restricts the depth).
    seed : int
        Seed for the choice of the projection direction.
    check : bool
        If the construction ran to completion, verify ``predict(net, X) == y`` (RuntimeError if not).

    Returns
    -------
    LNNet
        ``net.info`` holds ``depth_needed`` (layers of the full construction), ``complete`` (bool),
        ``folds`` and ``extra_warps``.
    """
    Xa = _as_samples(X, "X")
    m = Xa.shape[0]
    ya = np.asarray(y)
    if ya.ndim != 1 or ya.shape[0] != m:
        raise ValueError(f"y must have shape ({m},) to match X; got shape {ya.shape}")
    classes = np.unique(ya)
    if classes.size > 2:
        raise ValueError(f"y must be binary (at most two distinct values); got {classes.size} values")
    if max_layers is not None and (isinstance(max_layers, bool)
                                   or not isinstance(max_layers, (int, np.integer)) or max_layers < 1):
        raise ValueError(f"max_layers must be None or an integer >= 1; got {max_layers!r}")
    cls = (classes[0], classes[-1])
    yb = (ya == cls[1]).astype(int)

    U, inv = np.unique(Xa, axis=0, return_inverse=True)
    inv = inv.ravel()
    ulab = np.full(U.shape[0], -1)
    for i, g in enumerate(inv):
        if ulab[g] >= 0 and ulab[g] != yb[i]:
            raise ValueError(f"X has a repeated point (row {i}) with two different labels: not separable")
        ulab[g] = yb[i]
    w = _projection(U, seed)
    t = U @ w
    order = np.argsort(t)
    t0, t1 = float(t[order[0]]), float(t[order[-1]])
    R = (t1 - t0) if t1 > t0 else 1.0
    lab = [int(ulab[i]) for i in order]
    nd = _normalize_state(lab, 1)
    specs: list[tuple] = []       # (rho, mu, lam, sg, first) per layer
    extra = 0

    def finish_layer(rho, shift, first, s):
        """Choose the warp ending the current layer (adding pure warp layers if needed); new angles."""
        nonlocal extra
        if not (np.all(np.diff(s) > 0) or np.all(np.diff(s) < 0)):
            raise RuntimeError("LN-Net construction failed: two groups collided in floating point "
                               "(points too close)")
        for attempt in range(5):
            wp = _choose_warp(s, lab, nd) if attempt < 4 else _existence_warp(s, nd)
            if wp is not None:
                specs.append((rho, wp[0] + shift, wp[1], wp[2], first))
                return _warp(s, *wp)
            if attempt == 4:
                break
            mu, lam, sg = _warp_to(s, nd - 1, nd, 1.55, 0.5)   # squeeze the decided end
            specs.append((rho, mu + shift, lam, sg, first))
            p = _warp(s, mu, lam, sg)
            theta = 0.5 * (p.min() + p.max()) - 0.5 * math.pi   # then read the arc monotonically
            rho, shift, first = np.array([math.cos(theta), math.sin(theta)]), 0.0, False
            s = np.cos(p - theta)
            extra += 1
        raise RuntimeError("LN-Net construction failed: the near-case condition cannot be met in "
                           "floating point (points too close)")

    psi = finish_layer(w / R, t0 / R, True, (t[order] - t0) / R)
    folds = 0
    while not _done(lab):
        a = nd
        if nd == 1:                              # no F yet: merge N and a_1
            theta = 0.5 * (psi[0] + psi[1])
            keep = [0] + list(range(2, len(lab)))
        elif lab[a] == lab[1]:                   # near case: merge N and a_1
            theta = 0.5 * (psi[1] + psi[a])
            keep = [1, 0] + list(range(3, len(lab)))
        else:                                    # far case: merge F and a_1
            theta = 0.5 * (psi[0] + psi[a])
            keep = [1, 0] + list(range(3, len(lab)))
        s = np.cos(psi - theta)[keep]
        lab = [lab[i] for i in keep]
        nd = _normalize_state(lab, 1 if nd == 1 else 2)
        folds += 1
        psi = finish_layer(np.array([math.cos(theta), math.sin(theta)]), 0.0, False, s)

    depth_needed = len(specs)
    complete = max_layers is None or depth_needed <= max_layers
    if not complete:
        specs = specs[:max_layers]
    layers = [_layer_matrices(*sp) for sp in specs]
    net = LNNet(layers=layers, readout=np.zeros(3), classes=cls,
                info={"depth_needed": depth_needed, "complete": complete, "folds": folds,
                      "extra_warps": extra})
    # readout: the best threshold on the angles of the data's final states
    hid = net.forward(U)
    ang = np.arctan2(hid @ _E[:, 1], hid @ _E[:, 0])
    o = np.argsort(ang)
    counts = np.bincount(inv, minlength=U.shape[0])
    net.readout = _E @ _best_cut_readout(ang[o], [int(v) for v in ulab[o]], [int(v) for v in counts[o]])
    if check and complete and not np.array_equal(predict(net, Xa), ya):
        raise RuntimeError("LN-Net construction lost the labels to rounding (points too close)")
    return net


@dataclass
class VCProbe:
    """Result of `vc_probe`."""

    depth: int
    m_values: list[int]
    fraction_fitted: list[float]   # per m: fraction of the trials fitted exactly
    vc_estimate: int               # largest m (of m_values) with every trial fitted; 0 if none


def vc_probe(depth: int, m_values: Sequence[int], trials: int = 20, seed: int = 0,
             dim: int = 2) -> VCProbe:
    """Empirical VC-dimension probe of the width-3 LN-Net construction restricted to ``depth`` layers.

    For each m in ``m_values`` draw ``trials`` sets of m points x ~ N(0, I_dim) with uniformly random
    binary labels, build `ln_net_classifier` with ``max_layers=depth`` and count the sets whose labels
    are all reproduced. ``vc_estimate`` is the largest m for which every trial was fitted. This probes
    our construction (which needs at most max(1, m - 1) layers for any labelling of m points), so it is an
    empirical lower-bound-type statement for width-3 LN-Nets of that depth, not the VC dimension itself
    (random labellings, not all of them; cf. the VC lower bound of Ni et al. 2024). Since the
    construction needs at most max(1, m - 1) layers, every m <= depth + 1 is always fitted.
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1; got {depth!r}")
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 1:
        raise ValueError(f"trials must be an integer >= 1; got {trials!r}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1; got {dim!r}")
    ms = [int(v) for v in m_values]
    if not ms or any(v < 1 for v in ms):
        raise ValueError(f"m_values must be a non-empty list of integers >= 1; got {list(m_values)!r}")
    rng = np.random.default_rng(seed)
    fractions = []
    for m in ms:
        ok = 0
        for _ in range(int(trials)):
            X = rng.standard_normal((m, int(dim)))
            y = rng.integers(0, 2, m)
            try:
                net = ln_net_classifier(X, y, max_layers=int(depth), check=False)
                ok += bool(np.array_equal(predict(net, X), y))
            except (RuntimeError, ValueError):
                pass
        fractions.append(ok / int(trials))
    fitted = [m for m, f in zip(ms, fractions) if f == 1.0]
    return VCProbe(depth=int(depth), m_values=ms, fraction_fitted=fractions,
                   vc_estimate=max(fitted) if fitted else 0)


# ----------------------------------------------------------------------------------------------------
# infinite vs finite width: the effect of a fixed group size
# ----------------------------------------------------------------------------------------------------
@dataclass
class GroupSizeStudy:
    """Result of `group_size_study`: per group size G, the mean field and the simulation side by side.

    All dictionaries are keyed by the group size G. Curves are indexed by trajectory position
    (0 = input, l = output of block l), shape (depth + 1,); Grams have shape (depth + 1, n, n).

    Attributes
    ----------
    meanfield : G -> Trajectory
        `meanfield.propagate` of the network with GroupLayerNorm(group_size=G).
    simulation : G -> Trajectory
        `meanfield.simulate` of the same network (seed axis first).
    layernorm : Trajectory
        `meanfield.propagate` of the same network with plain LayerNorm (the limit G -> infinity).
    sim_mean, sim_stderr : G -> ndarray (depth + 1, n, n)
        Seed-mean Gram of the simulation and its standard error (`Trajectory.mean`, `Trajectory.stderr`).
    mf_gap, ln_gap : isometry gaps of the mean-field Grams (GLN and plain LN).
    sim_gap, sim_gap_stderr : G -> (depth + 1,)
        Isometry gap of the seed-mean Gram (the quantity the mean field predicts) and its jackknife
        standard error over seeds.
    seed_gap, seed_gap_stderr : G -> (depth + 1,)
        Mean over seeds of each network's own isometry gap and its standard error. A single finite
        network's Gram carries sampling noise, which raises its gap by O(n / width) (the gap is convex
        near isometry), so this differs from ``mf_gap`` even where the mean Gram agrees.
    mc_error : G -> (depth + 1,)
        The Monte Carlo standard error reported by `propagate` (0 where its rule is exact).
    z_max : G -> float
        max over blocks >= 1 and entries of |sim_mean - mf| / sqrt(sim_stderr^2 + mc_error^2): how many
        standard errors the simulation is from the mean field at worst.
    """

    group_sizes: tuple
    activation: str | None
    placement: str
    depth: int
    width: int
    seeds: int
    X: np.ndarray
    networks: dict
    meanfield: dict
    simulation: dict
    layernorm: object
    sim_mean: dict
    sim_stderr: dict
    mf_gap: dict
    ln_gap: np.ndarray
    sim_gap: dict
    sim_gap_stderr: dict
    seed_gap: dict
    seed_gap_stderr: dict
    mc_error: dict
    z_max: dict

    def rows(self) -> list[dict]:
        """One dict per group size with the values at the last block (and ``z_max``)."""
        out = []
        for G in self.group_sizes:
            out.append({
                "group_size": G,
                "mf_gap": float(self.mf_gap[G][-1]),
                "sim_gap": float(self.sim_gap[G][-1]),
                "sim_gap_stderr": float(self.sim_gap_stderr[G][-1]),
                "seed_gap": float(self.seed_gap[G][-1]),
                "seed_gap_stderr": float(self.seed_gap_stderr[G][-1]),
                "ln_gap": float(self.ln_gap[-1]),
                "dist_to_ln": float(np.max(np.abs(self.meanfield[G].gram[-1] - self.layernorm.gram[-1]))),
                "z_max": float(self.z_max[G]),
            })
        return out

    def table(self) -> str:
        """The `rows` as a fixed-width text table."""
        head = (f"{'G':>4} {'gap MF':>9} {'gap sim (mean Gram)':>22} {'gap per seed':>20} {'gap LN':>9} "
                f"{'|K_G-K_LN|':>10} {'z_max':>6}")
        pl = self.placement if self.activation is not None else "none (linear: Dense -> GLN)"
        lines = [f"activation={self.activation}, placement={pl}, depth={self.depth}, "
                 f"width={self.width}, seeds={self.seeds}, n={self.X.shape[0]}; values at the last block",
                 head]
        for r in self.rows():
            lines.append(
                f"{r['group_size']:>4} {r['mf_gap']:9.4f} {r['sim_gap']:12.4f} +- {r['sim_gap_stderr']:6.4f} "
                f"{r['seed_gap']:10.4f} +- {r['seed_gap_stderr']:6.4f} {r['ln_gap']:9.4f} {r['dist_to_ln']:10.4f} "
                f"{r['z_max']:6.2f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo:
        raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")
    return int(v)


def group_size_network(depth: int, group_size: int | None = None, activation=None, placement: str = "pre",
                       sigma_w: float = 1.0, sigma_b: float = 0.0):
    """The network of `group_size_study`: ``depth`` blocks of Dense and a norm, with an optional activation.

    The norm is GroupLayerNorm(group_size=group_size), or plain LayerNorm for ``group_size=None``.
    ``activation=None`` gives the linear network Dense -> norm (``placement`` is then irrelevant);
    otherwise `meanfield.mlp` with ``norm="gln"`` (or ``"ln"``) and the placement ("pre": Dense -> norm ->
    activation, "post": Dense -> activation -> norm).
    """
    from meanfield.layers import Block, Dense, GroupLayerNorm, LayerNorm
    from meanfield.network import Network, mlp

    depth = _check_int("depth", depth, 1)
    if placement not in ("pre", "post"):
        raise ValueError(f"placement must be 'pre' or 'post'; got {placement!r}")
    if group_size is not None:
        group_size = _check_int("group_size", group_size, 2)
    if activation is None:
        nl = LayerNorm() if group_size is None else GroupLayerNorm(group_size=group_size)
        block = Block((Dense(sigma_w=sigma_w, sigma_b=sigma_b), nl))
        return Network([block] * depth)
    if group_size is None:
        return mlp(depth, activation, norm="ln", placement=placement, sigma_w=sigma_w, sigma_b=sigma_b)
    return mlp(depth, activation, norm="gln", placement=placement, sigma_w=sigma_w, sigma_b=sigma_b,
               group_size=group_size)


def _jackknife_gap(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isometry gap of the seed-mean Gram and its jackknife standard error; gram (S, L+1, n, n)."""
    from meanfield.measures import isometry_gap

    S = gram.shape[0]
    mean = gram.mean(axis=0)
    gap = np.asarray(isometry_gap(mean), dtype=float)
    if S < 2:
        return gap, np.full_like(gap, np.nan)
    loo = (S * mean[None] - gram) / (S - 1)
    g = np.asarray(isometry_gap(loo), dtype=float)
    with np.errstate(invalid="ignore"):
        se = np.sqrt((S - 1) / S * np.sum((g - g.mean(axis=0)) ** 2, axis=0))
    return gap, se


def group_size_study(activation="relu", group_sizes: Sequence[int] = (3, 4, 8, 16), depth: int = 10,
                     width: int = 480, seeds: int = 32, n: int = 4, placement: str = "pre", seed: int = 0,
                     X=None, sigma_w: float = 1.0, sigma_b: float = 0.0,
                     mc_samples: int = 2**16) -> GroupSizeStudy:
    """Finite-group-size LayerNorm: the mean field with GroupLayerNorm(group_size=G) against simulation.

    At infinite width LayerNorm divides each sample by a deterministic constant (its feature variance
    concentrates), so in the mean field it is a fixed rescaling of the Gram and its nonlinearity (the
    Hessian measure of `nonlinearity`, which decays like 3 / sigma^4 per group of size m, summed over
    d / m groups) is invisible. With a fixed group size G the normalization stays nonlinear at any width:
    each group of G features is normalized by its own random variance. `meanfield.propagate` has the exact
    rule for GroupLayerNorm(group_size=G) on a Gaussian input, K_ab -> E[cos(x_a, x_b)] of two correlated
    Gaussian vectors in dimension G - 1 (Monte Carlo on non-Gaussian inputs, with ``mc_error``), and it
    tends to LayerNorm's rule as G grows. This function runs, for each G, the same network through
    `meanfield.propagate` and `meanfield.simulate` (nothing is re-derived here) and collects the Gram
    trajectories and isometry gaps; the plain-LN mean field is the reference G = infinity.

    For the linear network (``activation=None``: Dense -> GLN) the expected cosine contracts every
    correlation (|E cos| < |rho|), so smaller groups drive the Gram towards isometry faster: the isometry
    gap at a given depth increases with G towards LN's, which stays constant after the first block.

    Parameters
    ----------
    activation : activation name/callable, or None
        None: the linear network Dense -> GLN; otherwise Dense, GLN and the activation in ``placement``
        order (`group_size_network`).
    group_sizes : sequence of int >= 2
        Each must divide ``width``.
    depth, width, seeds : int
        Blocks; width of every layer in the simulation; number of simulated networks.
    n : int
        Batch size of the default input (ignored when X is given).
    placement : "pre" or "post"
    seed : int
        Seeds the default input, the simulation and propagate's Monte Carlo.
    X : array (n, d0), optional
        The input batch. Default: n rows x_a = sqrt(1/2) (z_0 + z_a), z ~ N(0, I_64), pairwise
        correlation about 1/2.
    sigma_w, sigma_b : float
        Dense layer parameters.
    mc_samples : int
        Monte Carlo samples of `propagate` (used only where its rule is not exact).

    Returns
    -------
    GroupSizeStudy
        Trajectories, seed means and standard errors, isometry gaps, and ``table()`` / ``rows()``.
    """
    from meanfield.finite import simulate
    from meanfield.infinite import propagate

    depth = _check_int("depth", depth, 1)
    width = _check_int("width", width, 2)
    seeds = _check_int("seeds", seeds, 2)
    if placement not in ("pre", "post"):
        raise ValueError(f"placement must be 'pre' or 'post'; got {placement!r}")
    try:
        gs = tuple(int(_check_int("group_sizes entry", G, 2)) for G in group_sizes)
    except TypeError as exc:
        raise ValueError(f"group_sizes must be a sequence of integers >= 2; got {group_sizes!r}") from exc
    if not gs:
        raise ValueError("group_sizes must not be empty")
    if len(set(gs)) != len(gs):
        raise ValueError(f"group_sizes must be distinct; got {gs}")
    bad = [G for G in gs if width % G]
    if bad:
        raise ValueError(f"every group size must divide width = {width}; {bad} do not")
    if X is None:
        n = _check_int("n", n, 2)
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n + 1, 64))
        Xa = math.sqrt(0.5) * (z[:1] + z[1:])
    else:
        Xa = _as_samples(X, "X")
    nets, mfs, sims = {}, {}, {}
    sim_mean, sim_se, mf_gap, sim_gap, sim_gap_se, seed_gap, seed_gap_se, mc, zmax = ({} for _ in range(9))
    for G in gs:
        net = group_size_network(depth, G, activation, placement, sigma_w, sigma_b)
        mf = propagate(net, X=Xa, mc_samples=mc_samples, seed=seed)
        sim = simulate(net, Xa, width=width, seeds=seeds, seed=seed)
        nets[G], mfs[G], sims[G] = net, mf, sim
        sim_mean[G] = sim.gram.mean(axis=0)
        sim_se[G] = sim.stderr()
        mf_gap[G] = np.asarray(mf.isometry_gap(), dtype=float)
        sim_gap[G], sim_gap_se[G] = _jackknife_gap(sim.gram)
        g = np.asarray(sim.isometry_gap(), dtype=float)
        seed_gap[G] = g.mean(axis=0)
        with np.errstate(invalid="ignore"):
            seed_gap_se[G] = g.std(axis=0, ddof=1) / math.sqrt(seeds)
        mc[G] = np.zeros(depth + 1) if mf.mc_error is None else np.asarray(mf.mc_error, dtype=float)
        diff = np.abs(sim_mean[G] - mf.gram)[1:]
        den = np.sqrt(sim_se[G][1:] ** 2 + mc[G][1:, None, None] ** 2)
        z = np.where(diff <= 1e-10, 0.0, diff / np.maximum(den, 1e-300))
        zmax[G] = float(np.max(z))
    ln = propagate(group_size_network(depth, None, activation, placement, sigma_w, sigma_b), X=Xa)
    return GroupSizeStudy(
        group_sizes=gs, activation=None if activation is None else str(getattr(activation, "name", activation)),
        placement=placement, depth=depth, width=width, seeds=seeds, X=Xa, networks=nets, meanfield=mfs,
        simulation=sims, layernorm=ln, sim_mean=sim_mean, sim_stderr=sim_se, mf_gap=mf_gap,
        ln_gap=np.asarray(ln.isometry_gap(), dtype=float), sim_gap=sim_gap, sim_gap_stderr=sim_gap_se,
        seed_gap=seed_gap, seed_gap_stderr=seed_gap_se, mc_error=mc, z_max=zmax)


def predict_grid(net, xlim=(-3.0, 3.0), ylim=(-3.0, 3.0), num: int = 200, chunk: int = 128):
    """Labels of an LN-Net on a regular 2-D grid, for drawing decision regions.

    Calls `predict` on chunks of at most ``chunk`` grid points (a `Network` is run through
    `meanfield.propagate`, which forms the n x n Gram of its batch, so one call on the whole grid would
    need O(num^4) memory and time; chunks of ~100 points are fastest). The network must take 2-D inputs.

    Returns
    -------
    xx, yy, labels : ndarrays of shape (num, num)
        ``xx, yy = meshgrid(linspace(*xlim, num), linspace(*ylim, num))`` and the predicted labels there.
    """
    num = _check_int("num", num, 2)
    chunk = _check_int("chunk", chunk, 1)
    lims = []
    for nm, lim in (("xlim", xlim), ("ylim", ylim)):
        try:
            lo, hi = (float(v) for v in lim)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{nm} must be a pair (lo, hi) of finite numbers with lo < hi; got {lim!r}") from exc
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"{nm} must be a pair (lo, hi) of finite numbers with lo < hi; got {lim!r}")
        lims.append((lo, hi))
    xx, yy = np.meshgrid(np.linspace(*lims[0], num), np.linspace(*lims[1], num))
    pts = np.column_stack([xx.ravel(), yy.ravel()])
    labels = np.concatenate([predict(net, pts[i:i + chunk]) for i in range(0, len(pts), chunk)])
    return xx, yy, labels.reshape(xx.shape)
