"""Finite width in 1/width: the mean (first order) and the covariance (first order plus the second-order terms
that compound with depth) of every Gram of a trajectory.

``meanfield.propagate(net, K0, width=W)`` (this module's `propagate_finite`) predicts what
``meanfield.simulate(net, X, width=W, seeds=...)`` measures: the mean of each block's empirical Gram matrix
K_hat (infinite-width value plus its 1/W shift) and the covariance of its entries.

Theory (Yaida 2020, "Non-Gaussian processes and neural networks at finite widths"; Roberts, Yaida and Hanin
2022, *The Principles of Deep Learning Theory*, ch. 4-5; the delta method for per-sample maps, van der Vaart
1998). Given the empirical Gram K_hat entering a Dense layer, its units are exactly i.i.d. N(0, sigma_w^2 K_hat
+ sigma_b^2) (the simulator's shortcut). So the Gram after a *segment* (a Dense layer and the layers up to the
next one) is F(K_hat) + fresh noise, where F is the exact infinite-width map of the segment and the noise,
given K_hat, has covariance Sigma_f(K_hat)/w and mean b(K_hat)/w (`meanfield.fluctuation_rules`). Writing
K_hat = K + delta + eps with K the mean-field Gram, delta the 1/W shift and Cov eps = Sigma:

    delta' = F'(K)[delta] + F''(K)[Sigma] / 2 + b(K) / w,
    Sigma' = F'(K) Sigma F'(K)^T + Sigma_f(K) / w,

exact to first order in 1/W. With ``order=2`` (the default) the covariance also carries the terms of order
1/W^2 that compound with depth, Cov = Sigma1 / W + Sigma2 / W^2 (`_compounding`): the fresh noise read at the
fluctuating input, the Jacobian at the shifted mean, the third derivative and the curvature of the map
against the input's covariance and its third cumulant, which is carried along (`_kappa_out`). Per block these
are O(1/W^2), but summed over L blocks they grow like (L / W)^2, where first order's error is a relative
~ c L / W (c ~ 2.5 for ReLU without a norm: 18 % at L = 20, W = 256). The one-segment O(1/W^2) term of the
delta method of a per-sample norm after the activation (a relative ~ 10 / W for a LayerNorm'd pair at
correlation 0.96) does not compound but is added (`fluctuation_rules._post`). Not carried: the fourth
cumulant, the von Mises second-order part of a norm *before* the activation, and GroupLayerNorm with
groups > 1 at second order. F' and F'' are five-point finite differences of the
exact mean-field map along the eigenvectors of Sigma (and delta), so every layer with an exact infinite-width
rule works through its own rule; Sigma_f and b need the layer's finite-width rule (`Layer.fluctuation_kind`).

Which networks: a prefix of deterministic layers on the data (exact, no fluctuation), then segments of the
form Dense (or WeightNormDense(init="fixed") after a wide layer), per-unit layers (activation,
BatchNorm(mode="exact"), MeanOnlyBatchNorm), per-sample norms (LayerNorm, RMSNorm, Center, Scale,
GroupLayerNorm(groups=g)); or Dense, per-sample norms, one activation, per-sample norms (a norm before the
activation). Every rule on the way must be exact (no Monte
Carlo). Anything else raises a ValueError that names the block and the layer: never a silently wrong band.

Size: the state is the mean (p) and covariance (p x p) of the p = n (n + 1) / 2 Gram entries; practical for
n <= 16 inputs (larger n raises); the second-order terms use at most 16 directions of Sigma (all of them for
n <= 5; ``info["second_order_captured"]``). Accuracy: docs/user_guide.md, "finite width"; the numerical error
of the node averages is reported (``traj.info["gram_cov_stderr"]``, ``traj.info["shift_stderr"]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meanfield.core.backends import blas_single_thread
from meanfield.core.law import Features, Gaussian, Unknown
from meanfield.core.validate import check_int
from meanfield.fluctuation_rules import (
    curvature_cov,
    principal_root,
    safe_step,
    segment_fresh,
    sobol_normals,
    stencil,
    to_sym,
    upper,
)
from meanfield.infinite import Propagation, _input_law
from meanfield.layers.base import Layer
from meanfield.network import Network
from meanfield.trajectory import Trajectory

__all__ = ["propagate_finite", "MAX_INPUTS"]

#: the largest batch the theory accepts (the covariance has (n (n + 1) / 2)^2 entries per block)
MAX_INPUTS = 16
#: directions of the input covariance along which the second-order (compounding) terms are taken
_SECOND_ORDER_DIRECTIONS = 16
_OWNER = "propagate(width=...)"
_SUPPORTED = ("supported: Dense (or WeightNormDense(init='fixed')), then per-unit layers (Activation, "
              "BatchNorm(mode='exact'), MeanOnlyBatchNorm) and per-sample norms (LayerNorm, RMSNorm, "
              "Center/Scale, GroupLayerNorm(groups=g)); or Dense, per-sample norms, one Activation, per-sample "
              "norms")


@dataclass
class _Plan:
    """One segment: the random layer, the layers after it, where Grams are needed, and its pattern."""

    random: Layer
    layers: list
    points: list            # positions (layers applied after the random one) where the Gram is needed
    records: dict           # position -> trajectory indices recorded there
    act_pos: int | None     # pattern P2: position of the activation after the per-sample norms
    groups: int             # GroupLayerNorm(groups=g) in the segment: g, else 1
    width: int | None       # the random layer's own width (None: the network's width W)


def propagate_finite(net, K0=None, *, X=None, width, nodes: int = 2**14, replicates: int = 8,
                     seed: int = 0, order: int = 2):
    """Mean and covariance of every block's Gram at finite width: the mean to first order in 1/width, the
    covariance to first order plus (``order=2``, the default) the second-order terms that compound with depth.

    Parameters
    ----------
    net : Network (or a layer or list of layers)
    K0, X : the input Gram (n x n) or a data matrix (n x d), as for `meanfield.propagate`; n <= 16.
    width : int >= 2, or a sequence of them
        The width W of the simulated networks (a Dense layer with its own ``width`` keeps it). The theory is a
        polynomial in 1/W, so a sequence of widths costs one computation and returns a dict
        {width: Trajectory}.
    nodes : int
        Quasi-Monte Carlo points per replicate for the per-unit moments (a power of two, 2^8 to 2^20).
    replicates : int
        Independent scramblings (2 to 64); their spread gives the reported numerical error.
    seed : int
        Seed of the scramblings (the result is a deterministic function of it).
    order : 1 or 2
        1: the covariance to first order in 1/W (Sigma1_L / W). 2 (default): plus the terms of order 1/W^2
        that compound with depth (Sigma2_L / W^2, see the module docstring). First order alone misses the
        variances by a relative ~ c L / W (c ~ 2.5 for ReLU without a norm: 18 % at L = 20, W = 256); second
        order is within 10% of the simulation for every entry and block at W >= 256 in the validation of
        docs/user_guide.md. The mean is first order in both cases. Order 2 costs 2 m + 2 more node averages per
        block (m <= 16 directions) and is 5-20 times slower (n = 10, 30 blocks: about 2 minutes against 6 s).

    Returns
    -------
    Trajectory with ``gram`` (L+1, n, n) the mean of the empirical Gram to first order (mean field plus the
    1/W shift), ``gram_cov`` (L+1, n, n, n, n) the covariance Cov(K_ab, K_cd) of its entries, and in ``info``:
    ``width``, ``meanfield_gram`` (the infinite-width Grams), ``shift`` (gram minus meanfield_gram),
    ``gram_cov_stderr`` and ``shift_stderr`` (the numerical standard errors of the node averages).
    ``traj.std(measure)`` and ``traj.expected(measure)`` give the predicted spread and mean of the measures.

    Sources: Yaida (2020); Roberts, Yaida and Hanin (2022), ch. 4-5; van der Vaart (1998), ch. 3 and 20.

    Examples
    --------
    >>> import numpy as np, meanfield
    >>> net = meanfield.mlp(3, "tanh", norm="ln")
    >>> t = meanfield.propagate(net, np.eye(3) * 0.8 + 0.2, width=256)
    >>> t.gram_cov.shape
    (4, 3, 3, 3, 3)
    """
    if isinstance(net, (list, tuple, Layer)):
        net = Network(net)
    if not isinstance(net, Network):
        raise ValueError(f"{_OWNER}: net must be a meanfield.Network (or a list of layers), got {type(net).__name__}")
    many = isinstance(width, (list, tuple, np.ndarray))
    widths = [check_int(_OWNER, "width", w, lo=2) for w in (width if many else [width])]
    if not widths:
        raise ValueError(f"{_OWNER}: width={width!r} must be an integer >= 2 or a non-empty sequence of them")
    log2 = _log2_nodes(nodes)
    R = check_int(_OWNER, "replicates", replicates, lo=2, hi=64)
    order = check_int(_OWNER, "order", order, lo=1, hi=2)
    law = _input_law(K0, X)
    if law.n > MAX_INPUTS:
        raise ValueError(f"{_OWNER}: the batch has n={law.n} inputs; the finite-width theory carries the "
                         f"covariance of all n (n + 1) / 2 Gram entries and accepts n <= {MAX_INPUTS} (use a "
                         "sub-batch)")
    with blas_single_thread():  # small products: threaded BLAS only loses on shared cores
        parts = _theory(net, law, log2, R, seed, order)
    out = {w: _trajectory(net, parts, w) for w in widths}
    return out if many else out[widths[0]]


def _theory(net, law, log2, R, seed, order=2) -> dict:
    """Mean-field Grams and, per replicate, the shift and covariance of every block in three components: the
    coefficient of 1/W (layers of the network's width), the part of layers with a fixed width, and the
    coefficient of 1/W^2 of the covariance (``order`` 2; zero otherwise)."""
    n = law.n
    p = n * (n + 1) // 2
    ctx = Propagation(np.random.default_rng(0), 2**10, False, None)
    L = net.depth
    seq = [(layer, b) for b, block in enumerate(net.blocks, start=1) for layer in block.layers]
    ends = {}
    for i, (_, b) in enumerate(seq):
        ends[b] = i  # index of the last layer of block b
    mf = np.empty((L + 1, n, n))
    means = np.empty((L + 1, n))
    shift = np.zeros((R, 3, L + 1, p))
    cov = np.zeros((R, 3, L + 1, p, p))
    captured = 1.0
    mf[0], means[0] = law.K, law.m
    streams = np.random.SeedSequence(seed).spawn(R)
    groups = []
    i = 0
    while i < len(seq) and not seq[i][0].random:  # deterministic prefix: exact, no fluctuation
        layer, b = seq[i]
        if _has_random(layer):
            raise ValueError(f"{_OWNER}: block {b} layer {layer!r} has no finite-width rule; " + _SUPPORTED)
        law = ctx.apply(layer, law)
        _check_exact(law, layer, b)
        if ends[b] == i:
            mf[b], means[b] = law.K, law.m
        i += 1
    d_in = np.zeros((R, 3, p))
    s_in = np.zeros((R, 3, p, p))
    kappa = None          # third cumulant of the Gram (coefficient of 1/W^2): (basis (p, m), tensor (m, m, m))
    # fan-in of the first random layer: the data's dimension (a fixed width); a given K0 counts as infinitely wide
    fan_in = (1, 1.0 / law.F.shape[1]) if isinstance(law, Features) else (None, 0.0)
    while i < len(seq):
        j = i + 1
        while j < len(seq) and not seq[j][0].random:
            j += 1
        plan = _plan(seq, i, j, ends, last=(j == len(seq)))
        if plan.groups > 1 and plan.width is None:
            groups.append((plan.groups, seq[i][1]))
        laws = _run(plan, law, ctx, seq[i][1])
        inh = _inherited(plan, law.K, laws, ctx, d_in[:, :2].reshape(2 * R, p), s_in[:, :2].reshape(2 * R, p, p))
        if np.any(s_in[:, 2]):  # the 1/W^2 part: carried by the Jacobian along its own directions, no mean
            inh2 = _inherited(plan, law.K, laws, ctx, np.zeros((R, p)), s_in[:, 2], indefinite=True)[1]
        else:
            inh2 = [np.zeros((R, p, p)) for _ in plan.points]
        fan = _fan_in_shift(plan, law.K, laws, ctx) if plan.random.fluctuation_fan_in else None
        fan_comp, fan_scale = fan_in
        seeds = [np.random.default_rng(s.spawn(1)[0]) for s in streams]
        normals = [sobol_normals(n, log2, g) for g in seeds]
        fresh, thirds = segment_fresh(plan, laws, log2, None, normals, third=True) if order == 2 else (
            segment_fresh(plan, laws, log2, None, normals), None)
        comp, scale = (0, 1.0) if plan.width is None else (1, 1.0 / plan.width)
        second = None
        if order == 2 and np.any(s_in[:, 0]):
            second, frac, pieces = _compounding(plan, law, laws, ctx, s_in[:, 0].mean(axis=0),
                                                d_in[:, 0].mean(axis=0), fresh, normals, log2, seq[i][1], kappa)
            captured = min(captured, frac)
        res = []
        for k, pos in enumerate(plan.points):
            d = np.concatenate([inh[0][k].reshape(R, 2, p), np.zeros((R, 1, p))], axis=1)  # mean: first order
            s = np.concatenate([inh[1][k].reshape(R, 2, p, p), inh2[k][:, None]], axis=1)
            d[:, comp] += scale * np.stack([fresh[r][k][1] for r in range(R)])
            s[:, comp] += scale * np.stack([fresh[r][k][0] for r in range(R)])
            if second is not None:
                # the fresh noise at the fluctuating input: 1/W^2, or 1/(W width) for a layer of its own width
                s[:, 2 if plan.width is None else 0] += scale * (second[0][k] + second[2][k])
                s[:, 2] += second[1][k]
            if thirds is not None and thirds[k][1] is not None:
                # the delta method's O(1/w^2) term within the segment (not compounding, but carried)
                s[:, 2 if plan.width is None else 1] += scale * scale * thirds[k][1]
            if fan is not None and fan_comp is not None:
                d[:, fan_comp] += fan_scale * fan[k]
            res.append((d, s))
            for b in plan.records.get(pos, ()):
                mf[b], means[b] = laws[pos].K, laws[pos].m
                shift[:, :, b], cov[:, :, b] = d, s
        law = laws[-1]
        if plan.points and plan.points[-1] == len(plan.layers):
            d_in, s_in = res[-1]
            if order == 2 and plan.width is None and np.any(s_in[:, 0]):
                kappa = _kappa_out(pieces if second is not None else None, len(plan.points) - 1, p,
                                   s_in[:, 0].mean(axis=0), laws[-1].K, thirds[-1][0])
            else:
                kappa = None
        fan_in = (comp, scale)  # the next random layer's fan-in is this segment's width
        i = j
    return {"mf": mf, "means": means, "shift": shift, "cov": cov, "groups": groups, "R": R, "log2": log2,
            "order": order, "captured": captured}


def _has_random(layer) -> bool:
    return bool(layer.random) or any(_has_random(sub) for sub in layer.sublayers())


def _log2_nodes(nodes) -> int:
    v = check_int(_OWNER, "nodes", nodes, lo=2**8, hi=2**20)
    k = int(round(np.log2(v)))
    if 2**k != v:
        raise ValueError(f"{_OWNER}: nodes={nodes!r} must be a power of two in [256, 1048576] (Sobol points)")
    return k


def _check_exact(law, layer, b):
    if law.mc_error > 0:
        raise ValueError(f"{_OWNER}: block {b} layer {layer!r} has no exact infinite-width rule here (its mean "
                         "field is Monte Carlo), so the 1/width theory has no exact map to expand; " + _SUPPORTED)


def _plan(seq, i, j, ends, last) -> _Plan:
    random, b0 = seq[i]
    if random.fluctuation_kind != "random":
        raise ValueError(f"{_OWNER}: block {b0} layer {random!r} has no finite-width rule; " + _SUPPORTED)
    layers = [seq[k][0] for k in range(i + 1, j)]
    kinds = []
    for k, layer in zip(range(i + 1, j), layers):
        kind = layer.fluctuation_kind
        if kind not in ("unit", "sample"):
            raise ValueError(f"{_OWNER}: block {seq[k][1]} layer {layer!r} has no finite-width rule; " + _SUPPORTED)
        kinds.append(kind)
    first_sample = kinds.index("sample") if "sample" in kinds else len(kinds)
    act_pos = None
    if "unit" in kinds[first_sample:]:
        units = [k for k, kind in enumerate(kinds) if kind == "unit"]
        from meanfield.layers.activation import Activation

        ok = (len(units) == 1 and first_sample == 0 and isinstance(layers[units[0]], Activation))
        if not ok:
            where = seq[i + 1 + units[-1]]
            raise ValueError(f"{_OWNER}: block {where[1]} layer {where[0]!r}: this order of layers has no "
                             "finite-width rule; " + _SUPPORTED)
        act_pos = units[0] + 1
    for k, layer in enumerate(layers):
        if layer.fluctuation_chain and (act_pos is not None or "unit" not in kinds[:k]
                                        or not hasattr(layers[max(u for u in range(k) if kinds[u] == "unit")],
                                                       "act")):
            raise ValueError(f"{_OWNER}: block {seq[i + 1 + k][1]} layer {layer!r} needs an Activation before it "
                             "in its segment, with only per-sample layers in between, and no norm before the "
                             "activation")
    grouped = [layer for layer, kind in zip(layers, kinds) if kind == "sample" and layer.fluctuation_groups > 1]
    nsample = kinds.count("sample")
    if grouped and nsample > 1:
        raise ValueError(f"{_OWNER}: {grouped[0]!r} must be the only per-sample norm of its segment (from one "
                         "Dense layer to the next) in the finite-width theory")
    width = random.width
    groups = grouped[0].fluctuation_groups if grouped else 1
    if width is not None and width % groups:
        raise ValueError(f"{_OWNER}: the width {width} of {random!r} is not a multiple of {grouped[0]!r}'s groups")
    records: dict = {}
    for k in range(i, j):
        b = seq[k][1]
        if ends[b] == k:
            records.setdefault(k - i, []).append(b)
    points = sorted(set(records) | ({len(layers)} if not last else set()))
    return _Plan(random, layers, points, records, act_pos, groups, width)


def _run(plan, law, ctx, b):
    """Mean-field laws after the random layer and after each layer of the segment."""
    law = plan.random.infinite(law, ctx)
    if not isinstance(law, Gaussian):
        raise ValueError(f"{_OWNER}: block {b} layer {plan.random!r}: its units are not Gaussian here (weight "
                         "normalization on the data itself is a spherical law); the theory needs Gaussian units, "
                         "e.g. a Dense layer first")
    laws = [law]
    for layer in plan.layers:
        law = layer.infinite(law, ctx)
        _check_exact(law, layer, b)
        laws.append(law)
    return laws


def _inherited(plan, K, laws, ctx, d_in, s_in, indefinite=False):
    """F'(K)[delta] + F''(K)[Sigma]/2 and F'(K) Sigma F'(K)^T at every point of the segment, for each case
    (rows of d_in (c, p) and s_in (c, p, p)): lists over points of (c, p) and (c, p, p) arrays."""
    c, p = d_in.shape
    n = K.shape[0]
    npts = len(plan.points)
    if not (np.any(s_in) or np.any(d_in)):
        return [np.zeros((c, p)) for _ in range(npts)], [np.zeros((c, p, p)) for _ in range(npts)]
    # directions: the joint range of the covariances (each case scaled to a unit trace), then what of the
    # shifts lies outside it
    if indefinite:  # corrections that need not be positive semi-definite: the range of their squares
        S = sum(x @ x.T / np.sum(x * x) for x in s_in if np.any(x))
    else:
        S = sum(x / np.trace(x) for x in s_in if np.trace(x) > 0) if np.any(s_in) else np.zeros((p, p))
    lam, V = np.linalg.eigh(0.5 * (S + S.T))
    top = max(float(lam.max()), 0.0)
    keep = lam > 1e-12 * top if top > 0 else np.zeros(p, bool)
    dirs = V[:, keep].T
    nk = dirs.shape[0]
    for dm in d_in:
        res = dm - dirs.T @ (dirs @ dm)
        if np.linalg.norm(res) > 1e-9 * max(np.linalg.norm(dm), 1e-300):
            dirs = np.concatenate([dirs, (res / np.linalg.norm(res))[None]])
    f0 = np.concatenate([upper(laws[pos].K) for pos in plan.points])
    Dsym = to_sym(dirs, n)
    d1, d2 = stencil(_segment_map(plan, ctx, n), K, Dsym, safe_step(K, Dsym), f0)
    C = dirs @ s_in @ dirs.T                                      # (c, k, k)
    mean = (d_in @ dirs.T) @ d1 + 0.5 * np.diagonal(C, axis1=1, axis2=2)[:, :nk] @ d2[:nk]
    cov = d1.T[None] @ C @ d1[None]
    return ([mean[:, k * p:(k + 1) * p] for k in range(npts)],
            [cov[:, k * p:(k + 1) * p, k * p:(k + 1) * p] for k in range(npts)])


def _compounding(plan, law, laws, ctx, sig1, d1, fresh, normals, log2, b, kappa=None):
    """The second-order terms of a segment's covariance that compound with depth, per replicate and point.

    With K_hat = K + delta + eps the segment's input Gram (E delta = d1 / W; Cov eps = Sigma1 / W; third
    cumulant ``kappa`` / W^2) and Y = F(K_hat) + eta its output, where given K_hat the fresh noise eta has mean
    b(K_hat) / w and covariance Sigma_f(K_hat) / w, the covariance of Y to O(1/W^2) is

        F' Sigma F'^T                                         first order (carried by `_inherited`)
        + Sigma_f(K) / w                                      first order (the fresh noise)
        + (Sigma_f'[delta] + Sigma_f''[Sigma] / 2) / w         the fresh noise at the fluctuating input
        + F''[delta, .] Sigma F'^T + transpose                the Jacobian at the shifted mean
        + (F' Sigma b'^T + transpose) / w                      the fresh mean moves with the input
        + sum_jk lambda_j lambda_k H_jk H_jk^T / 2              Var F''[eps, eps] / 2 (Gaussian part)
        + (F' Sigma G'^T + transpose) / 2, G = F''[Sigma]     Cov(F' eps, F'''[eps, eps, eps] / 6)
        + (F' kappa[H] + transpose) / 2                        Cov(F' eps, F''[eps, eps] / 2): third cumulant

    with Sigma = sum_j lambda_j u_j u_j^T and H_jk = d_j d_k F along the directions u_j (`_top_directions`).
    Each is O(1/W^2) per block, but summed over blocks they grow like L^2 / W^2: a product of L independent
    factors of relative variance s / W has variance (1 + s/W)^L - 1, not L s / W. The third cumulant is carried
    from segment to segment (`_kappa_out`). The delta method's own O(1/W^2) term within one segment (a norm
    after the activation; not compounding) is added by the caller from `segment_fresh(third=True)`. Dropped:
    the fourth cumulant of eps, the von Mises second-order part of a norm before the activation in the fresh
    third cumulant, and the mixed terms with layers of a fixed width. Derivatives are central differences
    along u_j; the fresh covariance is re-estimated on the same normals mapped by `tangent_root` (common
    random numbers), so its differences are smooth.

    Returns ((fresh part: list over points of (R, p, p), per unit of 1/w, times 1/W; curvature part: list over
    points of (p, p), times 1/W^2; fresh-mean part: list over points of (p, p), per unit of 1/w, times 1/W),
    the fraction of the normalized trace of Sigma1 the directions carry, and the pieces `_kappa_out` needs."""
    n = law.K.shape[0]
    p = n * (n + 1) // 2
    K = law.K
    lam_k, Uk, Pk, frac = _top_directions(sig1, K)
    dirs = to_sym(Uk.T, n)
    m = lam_k.size
    lam, V = np.linalg.eigh(0.5 * (sig1 + sig1.T))
    R = len(normals)
    npts = len(plan.points)
    root0 = principal_root(laws[0].K)
    top = float(lam.max())

    def fresh_at(Kp):
        lw = _run(plan, Unknown(Kp, np.zeros(n), ""), ctx, b)
        out = segment_fresh(plan, lw, log2, None, normals, root0)
        return ([np.stack([out[r][k][0] for r in range(R)]) for k in range(npts)],
                [np.stack([out[r][k][1] for r in range(R)]) for k in range(npts)])

    base = [np.stack([fresh[r][k][0] for r in range(R)]) for k in range(npts)]
    add = [np.zeros((R, p, p)) for _ in range(npts)]
    steps = safe_step(K, dirs)
    dS = [np.zeros((m, p, p)) for _ in range(npts)]       # Sigma_f' along each direction (replicate mean)
    db = [np.zeros((m, p)) for _ in range(npts)]          # b' along each direction (replicate mean)
    for j, (lj, D, h) in enumerate(zip(lam_k, dirs, steps)):
        (up, bu), (dn, bd) = fresh_at(K + h * D), fresh_at(K - h * D)
        for k in range(npts):
            add[k] += 0.5 * lj * (up[k] - 2.0 * base[k] + dn[k]) / (h * h)
            dS[k][j] = np.mean(up[k] - dn[k], axis=0) / (2.0 * h)
            db[k][j] = np.mean(bu[k] - bd[k], axis=0) / (2.0 * h)
    dn1 = np.linalg.norm(d1)
    if dn1 > 0:
        D = to_sym(d1 / dn1, n)
        h = safe_step(K, D[None])[0]
        (up, _), (dn, _) = fresh_at(K + h * D), fresh_at(K - h * D)
        for k in range(npts):
            add[k] += dn1 * (up[k] - dn[k]) / (2.0 * h)
    # the exact map: J and H_jk by central differences (diagonal: 5-point)
    F = _segment_map(plan, ctx, n)
    f0 = np.concatenate([upper(laws[pos].K) for pos in plan.points])
    d1s, d2 = stencil(F, K, dirs, steps, f0)
    J = d1s.T                                              # (q, m)
    H = np.zeros((f0.size, m, m))
    for j in range(m):
        H[:, j, j] = d2[j]
        for k in range(j + 1, m):
            hj, hk = steps[j], steps[k]
            pts = np.stack([K + sj * hj * dirs[j] + sk * hk * dirs[k] for sj in (1, -1) for sk in (1, -1)])
            v = F(pts)
            H[:, j, k] = H[:, k, j] = (v[0] - v[1] - v[2] + v[3]) / (4.0 * hj * hk)
    # Var F''[eps, eps] / 2 (Gaussian eps) and Cov(J eps, F'''[eps, eps, eps] / 6) + transpose
    curv = curvature_cov(F, K, dirs, steps, lam_k, d1s, H.transpose(1, 2, 0))
    if kappa is not None:
        # Cov(J eps, F''[eps, eps] / 2) + transpose = (J kappa[H] + transpose) / 2, kappa the third cumulant
        M = Pk @ kappa[0]                                  # previous coordinates -> these
        kap = np.einsum("abc,ia,jb,kc->ijk", kappa[1], M, M, M)
        t = 0.5 * np.einsum("ai,ijk,bjk->ab", J, kap, H)
        curv += t + t.T
    else:
        kap = None
    if dn1 > 0:
        # the Jacobian at the shifted mean: J(K + delta) Sigma J(K + delta)^T = J Sigma J^T + (J'[delta] Sigma
        # J^T + its transpose) + ..., along every direction of Sigma1
        live = lam > 1e-12 * top
        alld = to_sym(V[:, live].T, n)
        st = safe_step(K, alld)
        D = to_sym(d1 / dn1, n)
        hd = safe_step(K, D[None])[0]
        J0, _ = stencil(F, K, alld, st, f0)
        Jp, _ = stencil(F, K + hd * D, alld, st)
        Jm, _ = stencil(F, K - hd * D, alld, st)
        t = (dn1 * (Jp - Jm) / (2.0 * hd)).T @ (lam[live][:, None] * J0)
        curv += t + t.T
    # the conditional mean of the fresh noise moves with the input: Cov(J eps, b'[eps]) / w + transpose
    JL = J * lam_k[None, :]
    fresh_mean = []
    for k in range(npts):
        t = JL[k * p:(k + 1) * p] @ db[k]
        fresh_mean.append(t + t.T)
    pieces = {"J": J, "H": H, "lam": lam_k, "kappa": kap, "dS": dS}
    return (add, [curv[k * p:(k + 1) * p, k * p:(k + 1) * p] for k in range(npts)], fresh_mean), frac, pieces


def _top_directions(sig, K):
    """The directions the second-order terms use: the eigenvectors of the covariance ``sig`` of the upper Gram
    entries in units of sqrt(K_aa K_bb) (so a small entry's own fluctuations count as much as the scale's), the
    largest eigenvalues above 1e-10 of the top, at most `_SECOND_ORDER_DIRECTIONS`. Returns (lam (m,),
    U (p, m), P (m, p), frac): eps = sum_j x_j U[:, j] + (the rest), with x = P eps uncorrelated of variances
    lam; frac is the fraction of the normalized trace the directions carry."""
    d = np.sqrt(np.maximum(np.diag(K), 1e-300))
    D = upper(d[:, None] * d[None, :])
    Sn = sig / D[:, None] / D[None, :]
    lam, W = np.linalg.eigh(0.5 * (Sn + Sn.T))
    top = float(lam.max()) if lam.size else 0.0
    order_ = np.argsort(lam)[::-1]
    keep = [j for j in order_[:_SECOND_ORDER_DIRECTIONS] if lam[j] > 1e-10 * top] if top > 0 else []
    frac = float(sum(lam[j] for j in keep) / max(float(np.sum(np.maximum(lam, 0.0))), 1e-300))
    Wk = W[:, keep]
    return lam[keep], D[:, None] * Wk, Wk.T / D[None, :], frac


def _kappa_out(pc, k, p, sig_out, K_out, fresh_third):
    """The third cumulant (coefficient of 1/W^2) of the Gram at point k of a segment, in the basis of the top
    directions of its covariance sig_out: J^3 kappa_in + the Gaussian-curvature part 3 sym(J Sigma (x) J Sigma :
    H) + the part 3 sym(J Sigma (x) Sigma_f') / w (Cov(eps, Sigma_f(K_hat))) + the fresh noise's own third
    cumulant (``fresh_third``, from `segment_fresh`; None where unavailable). ``pc``: the pieces of
    `_compounding`, or None for a segment whose input does not fluctuate. Returns (U_out (p, m'), kappa), the
    tensor in the coordinates of `_top_directions`."""
    _, Uo, Po, _ = _top_directions(sig_out, K_out)
    out = np.zeros((Po.shape[0],) * 3) if fresh_third is None else fresh_third(Po.T)
    if pc is None:
        return Uo, out
    sl = slice(k * p, (k + 1) * p)
    Jo = Po @ pc["J"][sl]                                   # (m', m)
    Ho = np.einsum("ic,cjl->ijl", Po, pc["H"][sl])          # (m', m, m)
    lam = pc["lam"]
    JL = Jo * lam[None, :]
    T = np.einsum("aj,bl,cjl->abc", JL, JL, Ho)
    out = out + T + np.transpose(T, (0, 2, 1)) + np.transpose(T, (2, 1, 0))
    dS = np.einsum("jbc,ib,kc->jik", pc["dS"][k], Po, Po)   # (m, m', m')
    U = np.einsum("aj,jbc->abc", JL, dS)
    out += U + np.transpose(U, (1, 0, 2)) + np.transpose(U, (2, 1, 0))
    if pc["kappa"] is not None:
        out += np.einsum("ijk,ai,bj,ck->abc", pc["kappa"], Jo, Jo, Jo)
    return Uo, out


def _segment_map(plan, ctx, n):
    """The exact mean-field map of a segment, input Gram -> Grams at its points: stacks (k, n, n) -> (k, q)."""
    last = plan.points[-1]

    def F(Ks):
        out = []
        for Kp in Ks:
            law = plan.random.infinite(Unknown(Kp, np.zeros(n), ""), ctx)
            vals = [law]
            for layer in plan.layers[:last]:
                law = layer.infinite(law, ctx)
                vals.append(law)
            out.append(np.concatenate([upper(vals[pos].K) for pos in plan.points]))
        return np.stack(out)

    return F


def _fan_in_shift(plan, K, laws, ctx):
    """Weight normalization, w = g v / |v|: on the span of the n inputs, a unit's pre-activations are
    s g R z_hat with R R^T = K_hat, z_hat ~ N(0, I_n) and s^2 = fan_in / (|z_hat|^2 + chi^2_{fan_in - n})
    (independent across units). With s^2 = 1 + delta: E[delta | z_hat] = (2 - (|z_hat|^2 - n)) / fan_in,
    E delta^2 = 2 / fan_in, and Gaussian integration by parts, E[h (|z_hat|^2 - n)] = 2 d/dt E h(sqrt(1+t) z_hat),
    turn the mean of the segment's Grams into F(K) - D_K^2 F / fan_in: the second derivative of the exact map
    along K itself (the direction that scales the weight part of C = g^2 K + sigma_b^2). Per 1/fan_in.
    (Check: the pre-activation Gram g^2 K_hat itself, linear along K, is unbiased, as it is exactly.)"""
    n = K.shape[0]
    f0 = np.concatenate([upper(laws[pos].K) for pos in plan.points])
    D = K[None] / np.linalg.norm(K, 2)
    _, d2 = stencil(_segment_map(plan, ctx, n), K, D, safe_step(K, D), f0)
    t = np.linalg.norm(K, 2)
    total = -t * t * d2[0]
    p = n * (n + 1) // 2
    return [total[k * p:(k + 1) * p] for k in range(len(plan.points))]


def _full(cov_upper: np.ndarray, n: int) -> np.ndarray:
    """(..., p, p) upper-coordinate covariances -> (..., n, n, n, n) Cov(K_ab, K_cd)."""
    idx = np.empty((n, n), dtype=np.int64)
    iu, ju = np.triu_indices(n)
    idx[iu, ju] = np.arange(iu.size)
    idx[ju, iu] = np.arange(iu.size)
    return cov_upper[..., idx[:, :, None, None], idx[None, None, :, :]]


def _trajectory(net, parts, W) -> Trajectory:
    for g, b in parts["groups"]:
        if W % g:
            raise ValueError(f"{_OWNER}: width={W} must be a multiple of the {g} groups of the GroupLayerNorm in "
                             f"block {b}")
    mf, R = parts["mf"], parts["R"]
    n = mf.shape[-1]
    shift = parts["shift"][:, 0] / W + parts["shift"][:, 1]
    cov = parts["cov"][:, 0] / W + parts["cov"][:, 1] + parts["cov"][:, 2] / (W * W)
    d = shift.mean(axis=0)
    c = cov.mean(axis=0)
    d_se = shift.std(axis=0, ddof=1) / np.sqrt(R)
    c_se = cov.std(axis=0, ddof=1) / np.sqrt(R)
    info = {"width": W, "meanfield_gram": mf, "shift": to_sym(d, n), "shift_stderr": to_sym(d_se, n),
            "gram_cov_stderr": _full(c_se, n), "nodes": 2 ** parts["log2"], "replicates": R,
            "order": parts["order"], "second_order_captured": parts["captured"],
            "method": ("first order in 1/width" if parts["order"] == 1 else
                       "first order in 1/width plus the compounding second-order terms of the covariance")
            + "; node averages by scrambled Sobol quasi-Monte Carlo"}
    return Trajectory(gram=mf + to_sym(d, n), engine="meanfield", network=net, means=parts["means"],
                      mc_error=np.zeros(mf.shape[0]), info=info, gram_cov=_full(c, n))
