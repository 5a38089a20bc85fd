"""The nonlinearity of layer normalization and group layer normalization; the public facade of the LN theory.

Subject: Y. Ni, Y. Guo, J. Jia and L. Huang, "On the Nonlinearity of Layer Normalization", ICML 2024
(arXiv:2406.01255). Everything here is plain numpy float64 and works on one vector or on stacks of
vectors with the features on the last axis, shape (..., d).

Whose definitions (the paper's body could not be read for this package; only its abstract, and third-party
summaries for SSR, were):

* the paper's, as its abstract and summaries give them: LN, LN-G (LN applied within groups of the
  neurons: `layer_norm` with ``groups``), the LN-Net (a composition of linear maps and LN), SSR and its
  linear lower bound LSSR (`meanfield.separability`; the closed form of LSSR is derived here);
* the toolkit's own: the Hessian nonlinearity measure H(f; x) = sum_i ||Hess f_i(x)||_F^2
  (`nonlinearity` and everything built on it: `expected_nonlinearity`, `nonlinearity_sf`,
  `nonlinearity_tail_index`, `nonlinearity_fd`, `group_amplification`, `best_groups`), the width-3
  LN-Net construction and its VC-type statements (`meanfield.ln_net`), the XOR example, and the
  mean-field group-size study (`meanfield.group_size`). The paper measures nonlinearity with its own
  (Hessian-based, by third-party accounts) quantity and proves an amplification by groups under a mild
  assumption; neither its definition nor its theorem is reproduced here.

Contents (this module)
----------------------
* The maps: `layer_norm` (LN, and group LN "LN-G" through ``groups``), `rms_norm`, and the two parts
  of LN, `center` and `scale` (LN = scale o center).
* Exact first and second derivatives in closed form: `layer_norm_jacobian`, `layer_norm_hessian`,
  `rms_norm_jacobian`, `rms_norm_hessian`.
* The toolkit's Hessian measure H(f; x) = sum_i ||Hess f_i(x)||_F^2: `nonlinearity` (closed form for LN,
  RMSNorm and their group versions), its law for x ~ N(0, I_d) (`expected_nonlinearity`, infinite for
  groups of 3 to 5 features; `nonlinearity_sf` and `nonlinearity_tail_index`, the heavy tail behind
  that), `nonlinearity_fd` (any user function, by finite differences), `group_amplification` and
  `best_groups` (the equal-variance ratio H(LN-G) / H(LN)).

Public facade: the rest of the LN theory has its own module, and its public names are re-exported here so
that ``from meanfield import layernorm; layernorm.ssr(...)`` keeps working:

* `meanfield.separability`: `ssr` (sum-of-squares ratio) and `lssr` (its lower bound over all affine
  maps), and `xor_example`, where one affine map followed by LN goes below the LSSR of its input.
* `meanfield.ln_net`: `ln_net_classifier`, a width-3 `meanfield.Network` of Linear maps and LayerNorm that
  fits any binary labelling of m distinct points with at most max(1, m - 1) LN layers (max(1, m - 2)
  with an affine readout), `predict`, `construction_depth`, `construction_vc_bound`, `shattering` (all
  2^m labellings of a set), `random_fit_rate` (a fit rate on random sets, not a VC bound) and
  `predict_grid`.
* `meanfield.group_size`: `group_size_study` runs `meanfield.propagate` and `meanfield.simulate` on
  networks with GroupLayerNorm of a fixed group size G (`group_size_network`): the normalization's
  nonlinearity, invisible for plain LN at infinite width, survives in groups of fixed size.

Conventions: population variance (divide by d), no epsilon unless asked, no affine parameters
(gamma = 1, beta = 0). A vector (or group) with zero variance is an error when eps = 0, never a NaN; zero
is the rounding-level rule of `meanfield.core.linalg.nonzero_variance`, the one the engines use.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from meanfield.core.linalg import nonzero_variance
from meanfield.core.validate import check_array, check_choice, check_int, check_real, check_real_array
from meanfield.group_size import GroupSizeStudy, group_size_network, group_size_study
from meanfield.ln_net import (
    RandomFitRate,
    Shattering,
    construction_depth,
    construction_vc_bound,
    ln_net_classifier,
    predict,
    predict_grid,
    random_fit_rate,
    shattering,
)
from meanfield.separability import XorExample, lssr, ssr, xor_example

__all__ = [
    "layer_norm", "rms_norm", "center", "scale",
    "layer_norm_jacobian", "layer_norm_hessian", "rms_norm_jacobian", "rms_norm_hessian",
    "nonlinearity", "expected_nonlinearity", "nonlinearity_sf", "nonlinearity_tail_index", "nonlinearity_fd",
    "group_amplification", "best_groups",
    # re-exported (public facade)
    "ssr", "lssr", "XorExample", "xor_example",
    "ln_net_classifier", "predict", "construction_depth", "construction_vc_bound", "Shattering", "shattering",
    "RandomFitRate", "random_fit_rate", "predict_grid",
    "GroupSizeStudy", "group_size_network", "group_size_study",
]

_KINDS = ("ln", "rms")
_EPS = float(np.finfo(np.float64).eps)


# ----------------------------------------------------------------------------------------------------
# arguments and group statistics
# ----------------------------------------------------------------------------------------------------
def _vectors(owner: str, x, min_d: int = 1) -> np.ndarray:
    """x as a finite float64 array of shape (..., d), features last, with d >= min_d."""
    arr = check_array(owner, "x", x)
    if arr.ndim == 0:
        raise ValueError(f"{owner}: x={x!r} must have at least one axis (features last)")
    if arr.shape[-1] < min_d:
        raise ValueError(f"{owner}: x must have d = x.shape[-1] >= {min_d} features; got d = {arr.shape[-1]}")
    return arr


def _groups(owner: str, d: int, groups, min_size: int) -> int:
    """A number of groups dividing d into groups of at least ``min_size`` features."""
    g = check_int(owner, "groups", groups, lo=1, hi=d // min_size, strict=True)
    if d % g:
        raise ValueError(f"{owner}: groups={g} must divide d = {d} (group size d / groups >= {min_size})")
    return g


def _grouped(x: np.ndarray, g: int) -> np.ndarray:
    return x.reshape(x.shape[:-1] + (g, x.shape[-1] // g))


def _group_stats(owner: str, x: np.ndarray, g: int, kind: str, eps: float = 0.0):
    """(xg centred or not, scale) for kind 'ln' (std) or 'rms' (root mean square); errors on zero."""
    xg = _grouped(x, g)
    if kind == "ln":
        mean = xg.mean(axis=-1, keepdims=True)
        u = xg - mean
    else:
        u = xg
    ms = np.mean(u * u, axis=-1, keepdims=True)
    if eps == 0.0:
        bad = ~nonzero_variance(np, xg, ms, -1, kind == "ln", _EPS)[..., 0]
        if np.any(bad):
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            part = "variance" if kind == "ln" else "mean square"
            raise ValueError(
                f"{owner}: x has a vector/group with zero {part} (at index {idx} of the (..., groups) "
                f"stack); the normalization is undefined there with eps = 0: pass eps > 0"
            )
    return u, np.sqrt(ms[..., 0] + eps)


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
        with zero variance (up to rounding: variance <= 4 max(m, 16) eps_mach^2 mean(x_group^2), the rule
        of `meanfield.core.linalg.nonzero_variance`).
    """
    arr = _vectors("layer_norm", x, min_d=2)
    g = _groups("layer_norm", arr.shape[-1], groups, 2)
    e = check_real("layer_norm", "eps", eps, lo=0.0)
    u, s = _group_stats("layer_norm", arr, g, "ln", e)
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
    arr = _vectors("rms_norm", x, min_d=1)
    g = _groups("rms_norm", arr.shape[-1], groups, 1)
    e = check_real("rms_norm", "eps", eps, lo=0.0)
    u, s = _group_stats("rms_norm", arr, g, "rms", e)
    return (u / s[..., None]).reshape(arr.shape)


def center(x) -> np.ndarray:
    """Centering, the linear part of LN: ``C(x) = x - mean(x)`` = (I - 1 1^T / d) x.

    LN = S o C with the scaling S = `scale`. Shape (..., d) -> (..., d).
    """
    arr = _vectors("center", x, min_d=1)
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


def _derivative(owner: str, x, groups: int, kind: str, order: int) -> np.ndarray:
    min_d = 2 if kind == "ln" else 1
    arr = _vectors(owner, x, min_d=min_d)
    d = arr.shape[-1]
    g = _groups(owner, d, groups, min_d)
    u, s = _group_stats(owner, arr, g, kind)
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
    return _derivative("layer_norm_jacobian", x, groups, "ln", 1)


def layer_norm_hessian(x, groups: int = 1) -> np.ndarray:
    """Exact Hessian of LN (or LN-G) at x, shape (..., d, d, d), ``H[i, j, k] = d^2 y_i/dx_j dx_k``.

    For one group of size m, with y = LN(x), P = I - 1 1^T / m and sigma the standard deviation:

        H[i, j, k] = ( 3 y_i y_j y_k / m - P_ij y_k - P_ik y_j - P_jk y_i ) / (m sigma^2).

    Derivation: y = sqrt(m) g(P x) with g(u) = u / ||u||, whose Hessian is
    (3 n_i n_j n_k - delta_ij n_k - delta_ik n_j - delta_jk n_i) / ||u||^2, n = u / ||u|| = y / sqrt(m),
    ||P x||^2 = m sigma^2, and P n = n. For m = 2 the Hessian vanishes (LN is then locally constant,
    (1, -1) or (-1, 1)). LN-G: entries with i, j, k not all in one group are zero.
    """
    return _derivative("layer_norm_hessian", x, groups, "ln", 2)


def rms_norm_jacobian(x, *, groups: int = 1) -> np.ndarray:
    """Exact Jacobian of RMSNorm, shape (..., d, d): ``J = (I - y y^T / m) / s``, s = sqrt(mean x^2).

    Singular values 1/s (m - 1 times) and 0 (once, along y). Groups: block diagonal.
    """
    return _derivative("rms_norm_jacobian", x, groups, "rms", 1)


def rms_norm_hessian(x, *, groups: int = 1) -> np.ndarray:
    """Exact Hessian of RMSNorm, shape (..., d, d, d):

        H[i, j, k] = ( 3 y_i y_j y_k / m - delta_ij y_k - delta_ik y_j - delta_jk y_i ) / (m s^2),

    with y = x / s, s^2 = mean(x^2) (the LN formula with P replaced by I).
    """
    return _derivative("rms_norm_hessian", x, groups, "rms", 2)


# ----------------------------------------------------------------------------------------------------
# the Hessian nonlinearity measure
# ----------------------------------------------------------------------------------------------------
def nonlinearity(x, groups: int = 1, kind: str = "ln"):
    """The toolkit's Hessian nonlinearity H(f; x) = sum_i ||Hess f_i(x)||_F^2 of LN / LN-G / RMSNorm, closed form.

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

    Whose measure: the toolkit's. Ni et al. (2024) measure the nonlinearity of LN and LN-G with their
    own definition, which could not be read for this package and may differ from this one (one output
    or the sum over outputs, squared or plain norm, the normalization); ratios such as
    `group_amplification` are unchanged by a common constant factor, but not by such differences.

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
    k = check_choice("nonlinearity", "kind", kind, _KINDS)
    min_d = 2 if k == "ln" else 1
    arr = _vectors("nonlinearity", x, min_d=min_d)
    d = arr.shape[-1]
    g = _groups("nonlinearity", d, groups, min_d)
    m = d // g
    _, s = _group_stats("nonlinearity", arr, g, k)
    const = 3.0 * (m - 2) / m if k == "ln" else 3.0 * (m - 1) / m
    out = np.sum(const / s**4, axis=-1)
    return float(out) if out.ndim == 0 else out


def expected_nonlinearity(d: int, groups: int = 1, kind: str = "ln") -> float:
    """E[H(f; x)] for x ~ N(0, I_d), with H the toolkit's measure (`nonlinearity`); ``math.inf`` where it diverges.

    Group size m = d / groups; the groups are independent. LN: m sigma^2 = ||P x_g||^2 ~ chi^2_{m-1}
    and E[1/chi^2_k^2] = 1 / ((k - 2)(k - 4)) for k > 4 (infinite otherwise), so

        E H_LN  = groups * 3 m (m - 2) / ((m - 3)(m - 5))   for m >= 6,
                  0 for m = 2 (H = 0 identically),  inf for m = 3, 4, 5;

    RMSNorm: m s^2 = ||x_g||^2 ~ chi^2_m, so

        E H_RMS = groups * 3 m (m - 1) / ((m - 2)(m - 4))   for m >= 5,
                  0 for m = 1 (sign function),  inf for m = 2, 3, 4.

    The infinite values are genuine: the moment E[sigma^-4] does not exist for small groups (the
    density of sigma near 0 is too heavy), not a numerical failure; `nonlinearity_sf` gives the exact
    tail, P(H > t) ~ t^(-(m - 1)/4) for LN. They include groups of 4 features, the size that
    `best_groups` picks by the equal-variance ratio: under Gaussian inputs the "best" group size has an
    infinite expected measure, so "best" refers to that ratio (or to medians), never to this mean.
    (Toolkit's measure; see `nonlinearity`.)
    """
    owner = "expected_nonlinearity"
    k = check_choice(owner, "kind", kind, _KINDS)
    d = check_int(owner, "d", d, lo=2 if k == "ln" else 1, strict=True)
    g = _groups(owner, d, groups, 2 if k == "ln" else 1)
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


def _group_law(owner: str, group_size, kind) -> tuple[int, str, float, int]:
    """(m, kind, c, k): for one group of size m, H = c / S^2 with S ~ chi^2_k (x ~ N(0, I_m))."""
    k = check_choice(owner, "kind", kind, _KINDS)
    m = check_int(owner, "group_size", group_size, lo=3 if k == "ln" else 2, strict=True)
    if k == "ln":   # m sigma^2 = ||P x||^2 ~ chi^2_{m-1},  H = 3 (m - 2) / (m sigma^4) = 3 m (m - 2) / S^2
        return m, k, 3.0 * m * (m - 2), m - 1
    return m, k, 3.0 * m * (m - 1), m      # m s^2 = ||x||^2 ~ chi^2_m,  H = 3 m (m - 1) / S^2


def nonlinearity_sf(t, group_size: int, kind: str = "ln"):
    """P(H > t) for one group of ``group_size`` features, x ~ N(0, I_m), H the toolkit's `nonlinearity`.

    Exact: H = c / S^2 with S ~ chi^2_k, so P(H > t) = P(S < sqrt(c / t)) = F_{chi^2_k}(sqrt(c / t)):

        LN:      c = 3 m (m - 2),  k = m - 1;        RMSNorm: c = 3 m (m - 1),  k = m.

    For large t, P(H > t) ~ (c / t)^(k / 4) / (2^(k/2) Gamma(k/2 + 1)): a power tail with index k / 4
    (`nonlinearity_tail_index`), so E H is finite iff k > 4, i.e. m >= 6 for LN (m >= 5 for RMSNorm), as
    in `expected_nonlinearity`. (For several groups, H is a sum of independent copies and its tail index
    is that of one group.)

    Parameters
    ----------
    t : float or array_like, t in [0, inf]
    group_size : int, >= 3 for LN (H = 0 for m = 2), >= 2 for RMSNorm
    kind : {"ln", "rms"}
    """
    from scipy.stats import chi2

    owner = "nonlinearity_sf"
    _, _, c, k = _group_law(owner, group_size, kind)
    arr = check_real_array(owner, "t", t, lo=0.0, allow_inf=True)
    with np.errstate(divide="ignore"):
        out = chi2.cdf(np.sqrt(c / arr), k)
    return float(out) if np.ndim(out) == 0 else out


def nonlinearity_tail_index(group_size: int, kind: str = "ln") -> float:
    """The index alpha of the power tail P(H > t) ~ C t^(-alpha) of the toolkit's measure, x ~ N(0, I_m).

    alpha = (m - 1) / 4 for LN and m / 4 for RMSNorm (`nonlinearity_sf`). Moments E H^p exist iff p < alpha:
    the mean is infinite for LN groups of 3, 4 and 5 features (alpha = 1/2, 3/4, 1), and the variance for
    groups of fewer than 10.
    """
    _, k, _, dof = _group_law("nonlinearity_tail_index", group_size, kind)
    return dof / 4.0


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
    owner = "nonlinearity_fd"
    arr = _vectors(owner, x, min_d=1)
    if arr.ndim != 1:
        raise ValueError(f"{owner}: x must be a single vector of shape (d,); got shape {arr.shape}")
    if not callable(f):
        raise ValueError(f"{owner}: f must be callable; got {type(f).__name__}")
    d = arr.shape[0]
    if h is None:
        sc = float(np.std(arr)) or float(np.sqrt(np.mean(arr**2))) or 1.0
        step = 1e-4 * sc
    else:
        step = check_real(owner, "h", h, lo=0.0, lo_open=True)
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
    d = check_int("group_amplification", "d", d, lo=3, strict=True)  # H(LN) = 0 for d = 2
    g = _groups("group_amplification", d, groups, 2)
    return g * (d - 2.0 * g) / (d - 2.0)


def best_groups(d: int) -> int:
    """The number of groups g (a divisor of d with d / g >= 2) maximizing `group_amplification`.

    Ties go to the smaller g. The continuous optimum is g = d / 4 (groups of 4 features). "Best" is by
    the toolkit's equal-variance ratio only: for Gaussian inputs the expected measure at that group size
    is infinite (`expected_nonlinearity` is inf for group sizes 3, 4 and 5), so no finite mean singles it
    out, and it is not a group number recommended by Ni et al. (2024).
    """
    d = check_int("best_groups", "d", d, lo=3, strict=True)
    best, best_val = 1, -math.inf
    for g in range(1, d // 2 + 1):
        if d % g == 0:
            v = group_amplification(d, g)
            if v > best_val + 1e-12:
                best, best_val = g, v
    return best
