"""LN-Net: width-3 networks of affine maps and LayerNorm that fit any binary labelling, as ordinary Networks.

Subject: Y. Ni, Y. Guo, J. Jia and L. Huang, "On the Nonlinearity of Layer Normalization", ICML 2024
(arXiv:2406.01255): LayerNorm alone, with width 3 and O(m) layers, fits any labelling of m points.

* `ln_net_classifier` builds the network (our construction, its proof in the docstring): an ordinary
  `meanfield.Network` of blocks Linear(W, b) -> LayerNorm and a readout block Linear(r), with the class
  labels and the construction's info in ``Network.meta``; both engines run it (`meanfield.propagate`
  exactly on explicit features, `meanfield.simulate` as fixed layers);
* `predict` gives its labels, `predict_grid` its decision regions in 2-D, and `vc_probe` is an empirical
  VC-dimension probe of the construction at restricted depth.

Re-exported by `meanfield.layernorm`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from meanfield.core.validate import check_int, check_real, check_samples, check_seed
from meanfield.infinite import propagate
from meanfield.layers import Block, LayerNorm, Linear
from meanfield.network import Network

__all__ = ["ln_net_classifier", "predict", "VCProbe", "vc_probe", "predict_grid"]

# orthonormal basis of the plane {y in R^3 : sum y = 0}, columns e1, e2: LN (d = 3) maps onto the circle of
# radius sqrt(3) in it
_E = np.array([
    [1.0 / math.sqrt(2.0), 1.0 / math.sqrt(6.0)],
    [-1.0 / math.sqrt(2.0), 1.0 / math.sqrt(6.0)],
    [0.0, -2.0 / math.sqrt(6.0)],
])
_SQRT3 = math.sqrt(3.0)


def predict(net, X) -> np.ndarray:
    """Labels of the rows of X (n, D) under an LN-Net (a `Network` from `ln_net_classifier`).

    The label is ``classes[1]`` (``net.meta["classes"]``) where the readout score is > 0 and ``classes[0]``
    otherwise. The network is run through `meanfield.propagate`, whose rule for fixed Linear layers and norms
    acts exactly on the explicit features.
    """
    if not isinstance(net, Network):
        raise ValueError(f"predict: net must be a Network from ln_net_classifier; got {type(net).__name__}")
    if not net.meta or "classes" not in net.meta:
        raise ValueError("predict: net must come from ln_net_classifier (a Network with meta['classes'])")
    s = propagate(net, X=check_samples("predict", X)).info["features"][:, 0]
    cls = np.asarray(net.meta["classes"])
    return np.where(s > 0, cls[1], cls[0])


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


def ln_net_classifier(X, y, max_layers: int | None = None, seed: int = 0, check: bool = True) -> Network:
    """A width-3 LN-Net (affine maps, each followed by LayerNorm on 3 features) that fits any labels.

    Given m distinct points X (m, D) and binary labels y (any two values), returns an ordinary
    `meanfield.Network`: at most max(1, m - 1) blocks Linear(W, b) -> LayerNorm of width 3 (in exact
    arithmetic; numerically a few extra warp layers can be inserted), then a readout block Linear(r) of
    width 1, whose `predict` reproduces y. Our own construction (the paper's Theorem -- width 3, O(m) layers -- is
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
    Network
        Both engines run it: `meanfield.propagate(net, X=X)` exactly on the explicit features,
        `meanfield.simulate` as fixed layers; ``net.widths`` lists the layer widths (3, ..., 3, 1).
        ``net.meta`` (JSON-safe) holds ``classes`` (the two labels) and ``info``: ``depth_needed`` (LN
        layers of the full construction), ``complete`` (bool), ``folds`` and ``extra_warps``.
    """
    owner = "ln_net_classifier"
    Xa = check_samples(owner, X)
    m = Xa.shape[0]
    ya = np.asarray(y)
    if ya.ndim != 1 or ya.shape[0] != m:
        raise ValueError(f"{owner}: y must have shape ({m},) to match X; got shape {ya.shape}")
    classes = np.unique(ya)
    if classes.size > 2:
        raise ValueError(f"{owner}: y must be binary (at most two distinct values); got {classes.size} values")
    if max_layers is not None:
        max_layers = check_int(owner, "max_layers", max_layers, lo=1, strict=True)
    cls = (classes[0], classes[-1])
    yb = (ya == cls[1]).astype(int)

    U, inv = np.unique(Xa, axis=0, return_inverse=True)
    inv = inv.ravel()
    ulab = np.full(U.shape[0], -1)
    for i, g in enumerate(inv):
        if ulab[g] >= 0 and ulab[g] != yb[i]:
            raise ValueError(f"{owner}: X has a repeated point (row {i}) with two different labels: not "
                             "separable")
        ulab[g] = yb[i]
    w = _projection(U, check_seed("ln_net_classifier", seed))
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
    hidden = [Block((Linear(*_layer_matrices(*sp)), LayerNorm())) for sp in specs]
    # readout: the best threshold on the angles of the data's final states
    hid = propagate(Network(hidden), X=U).info["features"]
    ang = np.arctan2(hid @ _E[:, 1], hid @ _E[:, 0])
    o = np.argsort(ang)
    counts = np.bincount(inv, minlength=U.shape[0])
    readout = _E @ _best_cut_readout(ang[o], [int(v) for v in ulab[o]], [int(v) for v in counts[o]])
    net = Network([*hidden, Block((Linear(readout[None, :]),), name="readout")],
                  meta={"classes": [c.item() if hasattr(c, "item") else c for c in cls],
                        "info": {"depth_needed": depth_needed, "complete": complete, "folds": folds,
                                 "extra_warps": extra}, "kind": "ln_net"})
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
    owner = "vc_probe"
    depth = check_int(owner, "depth", depth, lo=1, strict=True)
    trials = check_int(owner, "trials", trials, lo=1, strict=True)
    dim = check_int(owner, "dim", dim, lo=1, strict=True)
    ms = [check_int(owner, f"m_values[{i}]", v, lo=1, strict=True) for i, v in enumerate(m_values)]
    if not ms:
        raise ValueError(f"{owner}: m_values={list(m_values)!r} must be a non-empty list of integers >= 1")
    rng = np.random.default_rng(check_seed("vc_probe", seed))
    fractions = []
    for m in ms:
        ok = 0
        for _ in range(trials):
            X = rng.standard_normal((m, dim))
            y = rng.integers(0, 2, m)
            try:
                net = ln_net_classifier(X, y, max_layers=depth, check=False)
                ok += bool(np.array_equal(predict(net, X), y))
            except (RuntimeError, ValueError):
                pass
        fractions.append(ok / trials)
    fitted = [m for m, f in zip(ms, fractions) if f == 1.0]
    return VCProbe(depth=depth, m_values=ms, fraction_fitted=fractions,
                   vc_estimate=max(fitted) if fitted else 0)


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
    owner = "predict_grid"
    num = check_int(owner, "num", num, lo=2, strict=True)
    chunk = check_int(owner, "chunk", chunk, lo=1, strict=True)
    lims = []
    for nm, lim in (("xlim", xlim), ("ylim", ylim)):
        try:
            lo, hi = lim
        except (TypeError, ValueError):
            raise ValueError(f"{owner}: {nm}={lim!r} must be a pair (lo, hi) of finite numbers with lo < hi") \
                from None
        lo = check_real(owner, f"{nm}[0]", lo)
        lims.append((lo, check_real(owner, f"{nm}[1]", hi, lo=lo, lo_open=True)))
    xx, yy = np.meshgrid(np.linspace(*lims[0], num), np.linspace(*lims[1], num))
    pts = np.column_stack([xx.ravel(), yy.ravel()])
    labels = np.concatenate([predict(net, pts[i:i + chunk]) for i in range(0, len(pts), chunk)])
    return xx, yy, labels.reshape(xx.shape)
