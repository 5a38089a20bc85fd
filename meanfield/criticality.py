"""Order to chaos: chi_1, chi_c, the depth scales xi_q and xi_c, the edge of chaos and the phase diagram.

`chi1`, `chi_c`, `depth_scales`, `edge_of_chaos` and `phase_diagram` of a stack of identical blocks
Dense(sigma_w, sigma_b) + Activation(f) at infinite width (Poole et al. 2016; Schoenholz et al. 2017),
computed from the q-map and c-map of `meanfield.qc_maps` at their fixed points. The formulas, their
derivation and the sources are in the docstring of `meanfield.maps`, the public facade that re-exports
these names.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq

import hermite
from meanfield.core.validate import check_real, check_real_array
from meanfield.qc_maps import (
    Q_LIMIT,
    NoFixedPointError,
    UndefinedMapError,
    _block_arguments,
    _block_cmap,
    _CMap,
    _fixed_point_q,
    _kernel,
    _norm_arguments,
    _qmap_slope,
    _smallest_fixed_point,
)

__all__ = ["chi1", "chi_c", "depth_scales", "edge_of_chaos", "phase_diagram"]

_SIGMA_W_MAX = 20.0


# ------------------------------------------------------------------------------------------------
# chi_1, chi_c, depth scales
def _chi1(act, sw: float, sb: float, norm, placement, q0: float = 1.0) -> float:
    if norm == "bn":
        raise ValueError("chi1 is not defined by the large-batch scalar maps for norm='bn': the gradient of a "
                         "BatchNorm network depends on the whole batch (Yang et al. 2019); use norm None, 'ln' "
                         "or 'rms'")
    sw2 = sw * sw
    if norm is None:
        qs = _fixed_point_q(act, sw2, sb * sb, q0)
        if sw2 == 0:
            return 0.0
        return float(sw2 * _kernel(act, 1.0, qs if qs > 0 else Q_LIMIT, derivative=1))
    return float(_CMap(act, sw2, sb * sb, norm, placement).slope(1.0))


def chi1(act, sigma_w, sigma_b, *, norm=None, placement="post", q0=1.0) -> float:
    """chi_1 = sigma_w^2 E f'(sqrt(q*) z)^2, z ~ N(0, 1) (Schoenholz et al. 2017, eq. 5).

    The slope of the c-map at c = 1 at q = q*, and the per-block growth factor of the squared gradient
    norm. q* = 0 uses the limit q -> 0+ (e.g. sigma_w^2 f'(0)^2 for a smooth f, sigma_w^2 / 2 for ReLU).
    With a LN/RMS norm: the c-map's slope at c = 1, sigma_w^2 E f'(u)^2 / Var f(u) (post LN),
    sigma_w^2 E f'(u)^2 / E f(u)^2 (post RMS), u ~ N(0, sigma_w^2 + sigma_b^2); and sigma_w^2 E f'(z)^2 /
    (sigma_w^2 E f(z)^2 + sigma_b^2) (pre). Not defined for BN (ValueError). Infinite for activations
    that jump (step, sign).

    Examples
    --------
    >>> from meanfield import maps
    >>> maps.chi1("relu", 1.2, 0.3)               # sigma_w^2 / 2 for ReLU
    0.72
    """
    act = hermite.activation(act)
    sw, sb, norm, placement, q0 = _block_arguments("chi1", sigma_w, sigma_b, norm, placement, q0)
    return _chi1(act, sw, sb, norm, placement, q0)


def _xi(chi: float) -> float:
    """-1 / log|chi|: 0 at chi = 0, infinite for |chi| >= 1 - 1e-12 (criticality within the maps' accuracy)."""
    a = abs(chi)
    if a == 0:
        return 0.0
    if a >= 1 - 1e-12 or math.isnan(a):
        return math.inf if not math.isnan(a) else math.nan
    return -1.0 / math.log(a)


def _analysis(act, sw: float, sb: float, norm, placement, q0: float = 1.0, *, need_chi1: bool = True,
              strict: bool = True) -> dict:
    """q*, chi_q, chi_1, c*, chi_c, xi_q, xi_c of one block (internal)."""
    sw2, sb2 = sw * sw, sb * sb
    if norm is None:
        qs = _fixed_point_q(act, sw2, sb2, q0)
        chi_q = _qmap_slope(act, qs, sw2, sb2)
    else:
        qs = sw2 + sb2 if placement == "post" else 1.0
        chi_q = 0.0
    out = {"q_star": float(qs), "chi_q": float(chi_q), "xi_q": _xi(chi_q)}
    out["chi1"] = math.nan
    if norm != "bn" and need_chi1:
        try:
            out["chi1"] = _chi1(act, sw, sb, norm, placement, q0)
        except UndefinedMapError:
            if strict:
                raise
    try:
        F = _block_cmap(act, sw, sb, norm, placement, q0)
    except UndefinedMapError:
        if strict:
            raise
        out.update(c_star=math.nan, chi_c=math.nan, xi_c=math.nan)
        return out
    if F.is_identity():
        out.update(c_star=math.nan, chi_c=1.0, xi_c=math.inf)
        return out
    cs = _smallest_fixed_point(F)
    chi_c = float(F.slope(cs))
    out.update(c_star=cs, chi_c=chi_c, xi_c=_xi(chi_c))
    return out


def chi_c(act, sigma_w, sigma_b, *, norm=None, placement="post", q0=1.0) -> float:
    """chi_c = C'(c*), the slope of the c-map at its stable fixed point c* (Schoenholz et al. 2017, eq. 9).

    c* is the smallest fixed point of C in [0, 1], which attracts every c in [0, 1) (c* = 1 in the
    ordered phase, where chi_c = chi_1; c* < 1 in the chaotic phase); for norm=None,
    chi_c = sigma_w^2 E[f'(u) f'(v)] with (u, v) of variance q* and correlation c*. 0 for BN (c -> 0).
    1 when the c-map is the identity (every c is a fixed point; correlations are not forgotten).
    """
    act = hermite.activation(act)
    sw, sb, norm, placement, q0 = _block_arguments("chi_c", sigma_w, sigma_b, norm, placement, q0)
    return _analysis(act, sw, sb, norm, placement, q0, need_chi1=False)["chi_c"]


def depth_scales(act, sigma_w, sigma_b, *, norm=None, placement="post", q0=1.0) -> dict:
    """Depth scales of the approach to the fixed points (Schoenholz et al. 2017, eqs. 7 and 9).

    |q_l - q*| ~ exp(-l / xi_q) and |c_l - c*| ~ exp(-l / xi_c), with

        xi_q = -1 / log |chi_q|,  chi_q = Q'(q*) = sigma_w^2 E[f'(u)^2 + f(u) f''(u)],  u ~ N(0, q*),
        xi_c = -1 / log chi_c,    chi_c = C'(c*) (`chi_c`).

    chi_q is computed by a central difference of the second moment (relative accuracy ~1e-10). A depth
    scale is math.inf when its chi is >= 1 - 1e-12 (criticality: xi_c at the edge of chaos, where c* = 1
    and chi_c = chi_1 = 1; xi_q where every q is a fixed point) and 0 when chi = 0 (the map is constant:
    xi_q = 0 with any norm, since the norm sets the variance in one block; xi_c = 0 for BN).

    Returns
    -------
    dict with keys "xi_q" and "xi_c" (floats).

    Examples
    --------
    >>> from meanfield import maps
    >>> maps.depth_scales("relu", 2 ** 0.5, 0.0)["xi_c"]       # ReLU at criticality
    inf
    """
    act = hermite.activation(act)
    sw, sb, norm, placement, q0 = _block_arguments("depth_scales", sigma_w, sigma_b, norm, placement, q0)
    a = _analysis(act, sw, sb, norm, placement, q0, need_chi1=False)
    return {"xi_q": a["xi_q"], "xi_c": a["xi_c"]}


# ------------------------------------------------------------------------------------------------
# edge of chaos
def edge_of_chaos(act, sigma_b, *, norm=None, placement="post", sigma_w_max=_SIGMA_W_MAX, q0=1.0) -> float:
    """The critical sigma_w (a standard deviation) at which chi_1(sigma_w, sigma_b) = 1.

    chi_1 (`chi1`, at q*(sigma_w, sigma_b) from q0) is evaluated on 25 geometrically spaced sigma_w in
    [1e-3, sigma_w_max]; the first sign change of chi_1 - 1 is refined by Brent's method (to ~1e-14). If
    q* stops existing (the q-map diverges) before chi_1 reaches 1, the boundary of existence is located
    by bisection and returned when chi_1 tends to 1 there: that is ReLU with sigma_b > 0, whose critical
    line sigma_w^2 = 2 is also where q* runs off to infinity.

    Accuracy: ~1e-14 where chi_1 crosses 1 transversally; where it touches 1 quadratically (tanh at
    sigma_b = 0: chi_1 = sigma_w^2 below sigma_w = 1 as q* = 0, and 1 + 1.33 (sigma_w - 1)^2 above) the
    root is resolved only to ~1e-8.

    Known values: ReLU sigma_w^2 = 2 for every sigma_b (chi_1 = sigma_w^2 / 2); tanh sigma_w = 1 at
    sigma_b = 0 and sigma_w^2 ~ 1.76 at sigma_b^2 = 0.05 (Schoenholz et al. 2017, fig. 1; Poole et al.
    2016, fig. 2).

    Raises
    ------
    ValueError
        If chi_1 = 1 has no solution with sigma_w in (0, sigma_w_max] (e.g. exp, whose stable q* always has
        chi_1 < 1/2, or a post-LN ReLU block, which is chaotic for every sigma_w), or for norm="bn".
    """
    act = hermite.activation(act)
    sb = check_real("edge_of_chaos", "sigma_b", sigma_b, lo=0.0)
    norm, placement, q0 = _norm_arguments("edge_of_chaos", norm, placement, q0)
    smax = check_real("edge_of_chaos", "sigma_w_max", sigma_w_max, lo=1e-3, lo_open=True)
    if norm == "bn":
        _chi1(act, 1.0, sb, norm, placement)  # raises the explanation

    def f(sw):
        return _chi1(act, sw, sb, norm, placement, q0) - 1.0

    def value(sw):
        try:
            return f(sw)
        except NoFixedPointError:
            return None

    grid = np.geomspace(1e-3, smax, 25)
    prev_sw, prev = None, None
    for sw in grid:
        v = value(float(sw))
        if v is None:
            if prev is not None and prev < 0:
                return _boundary(value, prev_sw, float(sw), act, sb)
            prev_sw, prev = float(sw), None
            continue
        if abs(v) <= 1e-13:
            nxt = value(float(sw) * 1.5)
            if nxt is not None and abs(nxt) <= 1e-13:
                raise ValueError(f"chi_1 = 1 for every sigma_w (activation {act.name!r}, sigma_b={sb!r}, "
                                 f"norm={norm!r}, placement={placement!r}): every sigma_w is critical")
            return float(sw)
        if prev is not None and prev < 0 < v:
            return float(brentq(f, prev_sw, float(sw), xtol=1e-15, rtol=1e-15, maxiter=200))
        prev_sw, prev = float(sw), v
    raise ValueError(f"no edge of chaos for activation {act.name!r} with sigma_b={sb!r}, norm={norm!r}: chi_1 = 1 "
                     f"has no solution for sigma_w in (0, {smax:g}] (chi_1 - 1 at sigma_w = {smax:g}: {prev!r})")


def _boundary(value, lo: float, hi: float, act, sb: float) -> float:
    """Bisect between lo (q* exists, chi_1 < 1) and hi (no q*); switch to Brent on a sign change."""
    vlo = value(lo)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        v = value(mid)
        if v is None:
            hi = mid
        elif v < 0:
            lo, vlo = mid, v
        else:
            return float(brentq(lambda s: value(s), lo, mid, xtol=1e-15, rtol=1e-15, maxiter=200))
    if abs(vlo) < 1e-6:
        return float(lo)
    raise ValueError(f"no edge of chaos for activation {act.name!r} with sigma_b={sb!r}: beyond "
                     f"sigma_w ~ {lo:.6g} the q-map has no fixed point reachable from q0, and chi_1 = "
                     f"{1 + vlo:.6g} < 1 before that")


# ------------------------------------------------------------------------------------------------
def phase_diagram(act, sigma_b2_grid, sigma_w2_grid, *, norm=None, placement="post", q0=1.0) -> dict:
    """The order-to-chaos phase diagram over a (sigma_b^2, sigma_w^2) grid (Poole et al. 2016, fig. 2;
    Schoenholz et al. 2017, fig. 1).

    Parameters
    ----------
    act : activation
    sigma_b2_grid, sigma_w2_grid : 1-D arrays of variances >= 0 (note: sigma^2, not sigma)
    norm, placement, q0 : as in the scalar functions

    Returns
    -------
    dict with "sigma_b2", "sigma_w2" (the grids) and 2-D float arrays of shape
    (len(sigma_b2_grid), len(sigma_w2_grid)), entry [i, j] at sigma_b^2 = sigma_b2_grid[i] and
    sigma_w^2 = sigma_w2_grid[j], equal to the scalar functions there:
        "q_star" (`fixed_point_q`), "c_star" (the attractor of [0, 1), see `chi_c`), "chi1" (`chi1`),
        "chi_q", "chi_c" (`chi_c`), "xi_q", "xi_c" (`depth_scales`),
    and "phase", an array of str: "ordered" (chi_1 < 1), "chaotic" (chi_1 > 1), "critical"
    (|chi_1 - 1| <= 1e-10), "unbounded" (no finite q*: every other entry is NaN), or "undefined" (BN,
    where chi_1 is not defined). c* is NaN where the c-map is the identity (e.g. q* = 0 with tanh).
    """
    act = hermite.activation(act)
    norm, placement, q0 = _norm_arguments("phase_diagram", norm, placement, q0)
    b2, w2 = (np.atleast_1d(check_real_array("phase_diagram", name, grid, lo=0.0, ndim=(0, 1), nonempty=True))
              for name, grid in (("sigma_b2_grid", sigma_b2_grid), ("sigma_w2_grid", sigma_w2_grid)))
    keys = ("q_star", "c_star", "chi1", "chi_q", "chi_c", "xi_q", "xi_c")
    out = {k: np.full((b2.size, w2.size), np.nan) for k in keys}
    phase = np.empty((b2.size, w2.size), dtype=object)
    for i, sb2 in enumerate(b2):
        for j, sw2 in enumerate(w2):
            try:
                a = _analysis(act, math.sqrt(sw2), math.sqrt(sb2), norm, placement, q0, need_chi1=norm != "bn",
                              strict=False)
            except NoFixedPointError:
                phase[i, j] = "unbounded"
                continue
            for k in keys:
                out[k][i, j] = a[k]
            x = a["chi1"]
            if math.isnan(x):
                phase[i, j] = "undefined"
            elif abs(x - 1) <= 1e-10:
                phase[i, j] = "critical"
            else:
                phase[i, j] = "ordered" if x < 1 else "chaotic"
    out["phase"] = phase.astype(str)
    out["sigma_b2"], out["sigma_w2"] = b2, w2
    return out
