"""LN-Net: width-3 networks of affine maps and LayerNorm that fit any binary labelling, as ordinary Networks.

Subject: Y. Ni, Y. Guo, J. Jia and L. Huang, "On the Nonlinearity of Layer Normalization", ICML 2024
(arXiv:2406.01255). What the paper's abstract states (the body could not be read for this package): an
LN-Net (layerwise composition of linear and LN transformations) with 3 neurons in each layer and O(m) LN
layers correctly classifies m samples with any label assignment, and the VC dimension of an LN-Net has a
lower bound. Everything below is the toolkit's own construction and its own, exhaustively checked,
statements; the paper's construction and bound are not implemented.

* `ln_net_classifier` builds the network (the toolkit's construction, its proof in the docstring): an
  ordinary `meanfield.Network` of blocks Linear(W, b) -> LayerNorm and a readout block (Linear(r), or
  Linear(r, c) with ``readout="affine"``), with the class labels and the construction's info in
  ``Network.meta``; both engines run it (`meanfield.propagate` exactly on explicit features,
  `meanfield.simulate` as fixed layers);
* `construction_depth` and `construction_vc_bound` state what the construction proves (at most m - 1,
  or m - 2, layers; VC dimension >= L + 1, or L + 2); `shattering` tries all 2^m labellings of a point set
  at a given depth, and `random_fit_rate` measures how often random labelled sets are fitted (a rate,
  not a VC bound);
* `predict` gives its labels and `predict_grid` its decision regions in 2-D.

Re-exported by `meanfield.layernorm`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from meanfield.core.validate import check_choice, check_int, check_real, check_samples, check_seed
from meanfield.infinite import propagate
from meanfield.layers import Block, LayerNorm, Linear
from meanfield.network import Network

__all__ = ["ln_net_classifier", "predict", "construction_depth", "construction_vc_bound", "Shattering",
           "shattering", "RandomFitRate", "random_fit_rate", "predict_grid"]

# orthonormal basis of the plane {y in R^3 : sum y = 0}, columns e1, e2: LN (d = 3) maps onto the circle of
# radius sqrt(3) in it
_E = np.array([
    [1.0 / math.sqrt(2.0), 1.0 / math.sqrt(6.0)],
    [-1.0 / math.sqrt(2.0), 1.0 / math.sqrt(6.0)],
    [0.0, -2.0 / math.sqrt(6.0)],
])
_SQRT3 = math.sqrt(3.0)
_READOUTS = ("linear", "affine")   # readout block: Linear(r) or Linear(r, c); at most 1 or 2 label changes


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


def _done(lab: list, max_switches: int) -> bool:
    """The readout can finish: at most one label change (linear readout) or two (affine readout)."""
    return len(_switches(lab)) <= max_switches


_RATIO = 0.25
_ALPHAS = np.linspace(0.5, 1.55, 22)
_BETAS = np.linspace(0.5, 1.4, 10)


def _choose_warp(s: np.ndarray, lab: list, nd: int, max_switches: int):
    """Warp (mu, lam, sg) preparing the next fold (or the readout); None if the near-case condition
    cannot be met."""
    n = len(s)
    if n == 1:
        return s[0], 1.0, 1.0
    if _done(lab, max_switches):
        sw = _switches(lab)
        if len(sw) == 2:                          # affine readout: both changes well inside the arc
            return _warp_to(s, sw[0] - 1, sw[1], 1.2, 1.2)
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
    """Linear readout (2-vector in plane coordinates) of the best threshold on the ordered angles."""
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


def _best_chord_readout(psi: np.ndarray, lab: list, weight: list[int]):
    """Affine readout (r, c) in plane coordinates, score r . v - c, of the best chord on the ordered angles.

    A chord of the circle cuts the arc of the states into an inner interval [k1, k2) of the (increasing)
    angles and the two outer pieces; the best (k1, k2, inner label) by weighted count is realized by the
    chord through the midpoint angles tau1, tau2: with tau = (tau1 + tau2) / 2 and h = (tau2 - tau1) / 2,
    sqrt(3) cos(psi - tau) > sqrt(3) cos h iff |psi - tau| < h.
    """
    n = len(psi)
    w = np.asarray(weight, float)
    pos = np.asarray(lab, float)
    cum1 = np.concatenate([[0.0], np.cumsum(w * pos)])        # weight of label 1 in [0, k)
    cum0 = np.concatenate([[0.0], np.cumsum(w * (1 - pos))])
    best = None
    for k1 in range(n + 1):
        for k2 in range(k1, n + 1):
            for inner in (1.0, 0.0):
                cin = (cum1 if inner == 1.0 else cum0)
                cout = (cum0 if inner == 1.0 else cum1)
                correct = cin[k2] - cin[k1] + cout[k1] + cout[n] - cout[k2]
                if best is None or correct > best[0] + 1e-9:
                    best = (correct, k1, k2, inner)
    _, k1, k2, inner = best
    tau1 = psi[0] - 0.5 if k1 == 0 else 0.5 * (psi[k1 - 1] + psi[k1])
    tau2 = psi[-1] + 0.5 if k2 == n else 0.5 * (psi[k2 - 1] + psi[k2])
    if k1 == k2:                                  # empty inner interval: everything is the outer label
        tau1, tau2 = psi[-1] + 0.5, psi[-1] + 0.6
    tau, h = 0.5 * (tau1 + tau2), 0.5 * (tau2 - tau1)
    sgn = 1.0 if inner == 1.0 else -1.0
    return sgn * np.array([math.cos(tau), math.sin(tau)]), sgn * _SQRT3 * math.cos(h)


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


def ln_net_classifier(X, y, max_layers: int | None = None, seed: int = 0, check: bool = True,
                      readout: str = "linear") -> Network:
    """The toolkit's width-3 LN-Net (affine maps, each followed by LayerNorm on 3 features) fitting any labels.

    Given m distinct points X (m, D) and binary labels y (any two values), returns an ordinary
    `meanfield.Network`: blocks Linear(W, b) -> LayerNorm of width 3, then a readout block of width 1 whose
    `predict` reproduces y. With ``readout="linear"`` (the default) the readout is Linear(r), a line through
    the origin, and at most max(1, m - 1) LN layers are used; with ``readout="affine"`` it is Linear(r, c),
    a chord of the circle, and at most max(1, m - 2) LN layers are used (in exact arithmetic; numerically a
    few extra warp layers can be inserted, counted in ``meta["info"]["extra_warps"]``).

    Whose construction: the toolkit's. Ni et al. (2024) state in their abstract that width 3 and O(m) LN
    layers classify any m labelled samples and that the VC dimension of an LN-Net has a lower bound; their
    construction, its depth and their bound are in the paper's body, which could not be read for this
    package. Nothing here is the paper's algorithm, and the depths above are this construction's.

    What the depth buys (VC-type statements of this construction): with L LN layers, the linear readout
    fits every labelling of any L + 1 distinct points (proved below; so width-3 LN-Nets with L layers and a
    linear readout have VC dimension at least L + 1), but on m = L + 2 points it fails 2^(m-2) of the 2^m
    labellings (a quarter: the labellings for which it needs m - 1 layers); the affine readout fits every
    labelling of any L + 2 points (VC dimension at least L + 2 with an affine readout) and fails 2^(m-3)
    of those of m = L + 3 points. The counts 2^L are counted, not proved: by `shattering` for L <= 6 on
    collinear and random points (notebooks/ni.ipynb) and for m <= 10 by a string model of the folds (the
    tests). These are lower bounds on the VC dimension of the network class; a labelling this construction
    misses may still be fitted by other weights.

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
    arc in the order of t (collinear points and general points are handled alike).

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
    monotone warps keep them apart. The folds stop once the readout can finish: when the labels along the
    list change at most once (linear readout: sign(r . y), r the normal of the line through the origin at
    the midpoint angle between the two sides) or at most twice (affine readout: the chord through the two
    midpoint angles, with the middle run on one side). Depth: 1 + the number of folds.

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
        Stop after this many layers (at least 1) and read out the best threshold (linear) or chord
        (affine) on the state then; the network may then misclassify (this is how `shattering` and
        `random_fit_rate` restrict the depth).
    seed : int
        Seed for the choice of the projection direction.
    check : bool
        If the construction ran to completion, verify ``predict(net, X) == y`` (RuntimeError if not).
    readout : {"linear", "affine"}
        The readout block: Linear(r) (no bias), or Linear(r, c) (with a bias).

    Returns
    -------
    Network
        Both engines run it: `meanfield.propagate(net, X=X)` exactly on the explicit features,
        `meanfield.simulate` as fixed layers; ``net.widths`` lists the layer widths (3, ..., 3, 1).
        ``net.meta`` (JSON-safe) holds ``classes`` (the two labels) and ``info``: ``depth_needed`` (LN
        layers of the full construction), ``complete`` (bool), ``folds``, ``extra_warps`` and ``readout``.
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
    readout = check_choice(owner, "readout", readout, _READOUTS)
    max_switches = _READOUTS.index(readout) + 1
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
            wp = _choose_warp(s, lab, nd, max_switches) if attempt < 4 else _existence_warp(s, nd)
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
    while not _done(lab, max_switches):
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
    groups = (ang[o], [int(v) for v in ulab[o]], [int(v) for v in counts[o]])
    if readout == "linear":
        out = Linear((_E @ _best_cut_readout(*groups))[None, :])
    else:
        r, c = _best_chord_readout(*groups)
        out = Linear((_E @ r)[None, :], [-c])
    net = Network([*hidden, Block((out,), name="readout")],
                  meta={"classes": [c.item() if hasattr(c, "item") else c for c in cls],
                        "info": {"depth_needed": depth_needed, "complete": complete, "folds": folds,
                                 "extra_warps": extra, "readout": readout}, "kind": "ln_net"})
    if check and complete and not np.array_equal(predict(net, Xa), ya):
        raise RuntimeError("LN-Net construction lost the labels to rounding (points too close)")
    return net


def _readout_choice(owner: str, readout) -> str:
    return check_choice(owner, "readout", readout, _READOUTS)


def construction_depth(m: int, readout: str = "linear") -> int:
    """LN layers that the toolkit's construction (`ln_net_classifier`) needs at most for m distinct points.

        linear readout: max(1, m - 1),    affine readout: max(1, m - 2)

    in exact arithmetic (the proof is in `ln_net_classifier`: one projection layer, then at most one fold
    per point after the first two; the affine readout finishes with two label changes left instead of
    one). Numerically, tightly clustered points can cost extra warp layers. This is the toolkit's
    construction's depth, not a depth stated by Ni et al. (2024), whose abstract says O(m).
    """
    owner = "construction_depth"
    m = check_int(owner, "m", m, lo=1, strict=True)
    readout = _readout_choice(owner, readout)
    return max(1, m - (1 if readout == "linear" else 2))


def construction_vc_bound(depth: int, readout: str = "linear") -> int:
    """The VC-dimension lower bound that the toolkit's construction proves for width-3 LN-Nets of ``depth``
    LN layers: L + 1 with a linear readout, L + 2 with an affine readout (L = depth).

    Why: by `construction_depth`, every labelling of any L + 1 (linear) or L + 2 (affine) distinct points
    is fitted with at most L layers (a network with fewer layers can be padded with blocks Linear(I, 0) ->
    LayerNorm, which act as the identity on LN outputs), so every such point set is shattered, and the VC
    dimension (the size of the largest shattered set) is at least this. It is a lower bound of the
    construction: on one more point this construction fails 2^L labellings (counted by `shattering` for
    L <= 6), which says nothing about other weights. Ni et al. (2024) also state a VC lower bound for
    LN-Nets (abstract); its form could not be read for this package, so it is neither used nor checked here.
    """
    owner = "construction_vc_bound"
    depth = check_int(owner, "depth", depth, lo=1, strict=True)
    readout = _readout_choice(owner, readout)
    return depth + (1 if readout == "linear" else 2)


@dataclass
class Shattering:
    """Result of `shattering`: which of the 2^m labellings of a point set the construction fits."""

    depth: int
    readout: str
    m: int
    n_labellings: int                 # 2^m
    failed: list[tuple[int, ...]]     # the labellings (0/1 per row of X) that were not fitted

    @property
    def n_failed(self) -> int:
        return len(self.failed)

    @property
    def shattered(self) -> bool:
        """True iff every labelling was fitted (the set is shattered by networks of this depth)."""
        return not self.failed


_MAX_SHATTER = 14


def shattering(X, depth: int, readout: str = "linear", seed: int = 0) -> Shattering:
    """Try all 2^m binary labellings of the m rows of X with the toolkit's construction at ``depth`` layers.

    For each labelling y in {0, 1}^m, build `ln_net_classifier(X, y, max_layers=depth, readout=readout)`
    and check ``predict(net, X) == y``. A set is *shattered* (by width-3 LN-Nets with ``depth`` LN layers)
    if every labelling is fitted; a shattered set of size m proves VC dimension >= m. A failed labelling
    only says that this construction misses it.

    Results (exhaustive, for collinear and random points: L <= 3 in the tests, L <= 6 in notebooks/ni.ipynb):
    with L = depth, every set of `construction_vc_bound` points (L + 1 linear, L + 2 affine) is shattered
    (that part is proved, `construction_vc_bound`), and one point more fails exactly 2^L labellings (2^(m-2)
    of 2^m for the linear readout, 2^(m-3) for the affine one).

    Parameters
    ----------
    X : array_like, shape (m, D), 1 <= m <= 14
        Distinct points.
    depth : int >= 1
    readout : {"linear", "affine"}
    seed : int
        Seed of the construction's projection direction.

    Returns
    -------
    Shattering
    """
    owner = "shattering"
    Xa = check_samples(owner, X)
    m = Xa.shape[0]
    if m > _MAX_SHATTER:
        raise ValueError(f"{owner}: X has m={m} rows; must be 1 <= m <= {_MAX_SHATTER} (2^m labellings are tried)")
    if np.unique(Xa, axis=0).shape[0] != m:
        raise ValueError(f"{owner}: X must have distinct rows (a repeated point cannot carry two labels)")
    depth = check_int(owner, "depth", depth, lo=1, strict=True)
    readout = _readout_choice(owner, readout)
    failed = []
    for bits in itertools.product((0, 1), repeat=m):
        y = np.array(bits)
        net = ln_net_classifier(Xa, y, max_layers=depth, seed=seed, check=False, readout=readout)
        if not np.array_equal(predict(net, Xa), y):
            failed.append(bits)
    return Shattering(depth=depth, readout=readout, m=m, n_labellings=2**m, failed=failed)


@dataclass
class RandomFitRate:
    """Result of `random_fit_rate`: per m, the fraction of random (point set, labelling) pairs fitted."""

    depth: int
    readout: str
    dim: int
    trials: int
    m_values: list[int]
    fraction_fitted: list[float]
    stderr: list[float]               # binomial standard error sqrt(f (1 - f) / trials)


def random_fit_rate(depth: int, m_values: Sequence[int], trials: int = 20, seed: int = 0, dim: int = 2,
                    readout: str = "linear") -> RandomFitRate:
    """How often the toolkit's construction, restricted to ``depth`` layers, fits random labelled point sets.

    For each m in ``m_values`` draw ``trials`` pairs (m points x ~ N(0, I_dim), uniform binary labels),
    build `ln_net_classifier(..., max_layers=depth, readout=readout)` and count the pairs whose labels are
    all reproduced. This is a fit rate, not a VC bound: a VC lower bound needs one set on which *every*
    labelling is fitted (`shattering`), and a random labelling of a random set tests neither that nor an
    upper bound. For m <= `construction_vc_bound(depth, readout)` the rate is 1; one point more, its
    expectation is 1 - 2^L / 2^m (3/4 for the linear readout, 7/8 for the affine one) by `shattering`'s
    count.
    (Formerly ``vc_probe``, whose ``vc_estimate`` read this rate as a VC estimate.)
    """
    owner = "random_fit_rate"
    depth = check_int(owner, "depth", depth, lo=1, strict=True)
    trials = check_int(owner, "trials", trials, lo=1, strict=True)
    dim = check_int(owner, "dim", dim, lo=1, strict=True)
    readout = _readout_choice(owner, readout)
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
                net = ln_net_classifier(X, y, max_layers=depth, check=False, readout=readout)
                ok += bool(np.array_equal(predict(net, X), y))
            except (RuntimeError, ValueError):
                pass
        fractions.append(ok / trials)
    se = [math.sqrt(f * (1 - f) / trials) for f in fractions]
    return RandomFitRate(depth=depth, readout=readout, dim=dim, trials=trials, m_values=ms,
                         fraction_fitted=fractions, stderr=se)


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
