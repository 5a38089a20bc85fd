"""Finite width to first order in 1/width: the mean and the covariance of every Gram of a trajectory.

``meanfield.propagate(net, K0, width=W)`` (this module's `propagate_finite`) predicts what
``meanfield.simulate(net, X, width=W, seeds=...)`` measures: the mean of each block's empirical Gram matrix
K_hat (infinite-width value plus its 1/W shift) and the covariance of its entries, to first order in 1/W.

Theory (Yaida 2020, "Non-Gaussian processes and neural networks at finite widths"; Roberts, Yaida and Hanin
2022, *The Principles of Deep Learning Theory*, ch. 4-5; the delta method for per-sample maps, van der Vaart
1998). Given the empirical Gram K_hat entering a Dense layer, its units are exactly i.i.d. N(0, sigma_w^2 K_hat
+ sigma_b^2) (the simulator's shortcut). So the Gram after a *segment* (a Dense layer and the layers up to the
next one) is F(K_hat) + fresh noise, where F is the exact infinite-width map of the segment and the noise,
given K_hat, has covariance Sigma_f(K_hat)/w and mean b(K_hat)/w (`meanfield.fluctuation_rules`). Writing
K_hat = K + delta + eps with K the mean-field Gram, delta the 1/W shift and Cov eps = Sigma:

    delta' = F'(K)[delta] + F''(K)[Sigma] / 2 + b(K) / w,
    Sigma' = F'(K) Sigma F'(K)^T + Sigma_f(K) / w,

exact to first order in 1/W (terms O(1/W^2) dropped). F' and F'' are five-point finite differences of the
exact mean-field map along the eigenvectors of Sigma (and delta), so every layer with an exact infinite-width
rule works through its own rule; Sigma_f and b need the layer's finite-width rule (`Layer.fluctuation_kind`).

Which networks: a prefix of deterministic layers on the data (exact, no fluctuation), then segments of the
form Dense (or WeightNormDense(init="fixed") after a wide layer), per-unit layers (activation,
BatchNorm(mode="exact"), MeanOnlyBatchNorm), per-sample norms (LayerNorm, RMSNorm, Center, Scale,
GroupLayerNorm(groups=g)); or Dense, per-sample norms, one activation, per-sample norms (a norm before the
activation). Every rule on the way must be exact (no Monte
Carlo). Anything else raises a ValueError that names the block and the layer: never a silently wrong band.

Size: the state is the mean (p) and covariance (p x p) of the p = n (n + 1) / 2 Gram entries; practical for
n <= 16 inputs (larger n raises). Accuracy: the first-order expansion is good while depth / width is small
(docs/user_guide.md, "finite width"); the numerical error of the node averages is reported
(``traj.info["gram_cov_stderr"]``, ``traj.info["shift_stderr"]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meanfield.core.backends import blas_single_thread
from meanfield.core.law import Features, Gaussian, Unknown
from meanfield.core.validate import check_int
from meanfield.fluctuation_rules import safe_step, segment_fresh, stencil, to_sym, upper
from meanfield.infinite import Propagation, _input_law
from meanfield.layers.base import Layer
from meanfield.network import Network
from meanfield.trajectory import Trajectory

__all__ = ["propagate_finite", "MAX_INPUTS"]

#: the largest batch the theory accepts (the covariance has (n (n + 1) / 2)^2 entries per block)
MAX_INPUTS = 16
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
                     seed: int = 0):
    """Mean and covariance of every block's Gram at finite width, to first order in 1/width.

    Parameters
    ----------
    net : Network (or a layer or list of layers)
    K0, X : the input Gram (n x n) or a data matrix (n x d), as for `meanfield.propagate`; n <= 16.
    width : int >= 2, or a sequence of them
        The width W of the simulated networks (a Dense layer with its own ``width`` keeps it). The first-order
        theory is linear in 1/W, so a sequence of widths costs one computation and returns a dict
        {width: Trajectory}.
    nodes : int
        Quasi-Monte Carlo points per replicate for the per-unit moments (a power of two, 2^8 to 2^20).
    replicates : int
        Independent scramblings (2 to 64); their spread gives the reported numerical error.
    seed : int
        Seed of the scramblings (the result is a deterministic function of it).

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
    law = _input_law(K0, X)
    if law.n > MAX_INPUTS:
        raise ValueError(f"{_OWNER}: the batch has n={law.n} inputs; the finite-width theory carries the "
                         f"covariance of all n (n + 1) / 2 Gram entries and accepts n <= {MAX_INPUTS} (use a "
                         "sub-batch)")
    with blas_single_thread():  # small products: threaded BLAS only loses on shared cores
        parts = _theory(net, law, log2, R, seed)
    out = {w: _trajectory(net, parts, w) for w in widths}
    return out if many else out[widths[0]]


def _theory(net, law, log2, R, seed) -> dict:
    """Mean-field Grams and, per replicate, the shift and covariance of every block in two components: the
    coefficient of 1/W (layers of the network's width) and the part of layers with a fixed width."""
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
    shift = np.zeros((R, 2, L + 1, p))
    cov = np.zeros((R, 2, L + 1, p, p))
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
    d_in = np.zeros((R, 2, p))
    s_in = np.zeros((R, 2, p, p))
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
        inh = _inherited(plan, law.K, laws, ctx, d_in.reshape(2 * R, p), s_in.reshape(2 * R, p, p))
        fan = _fan_in_shift(plan, law.K, laws, ctx) if plan.random.fluctuation_fan_in else None
        fan_comp, fan_scale = fan_in
        seeds = [np.random.default_rng(s.spawn(1)[0]) for s in streams]
        fresh = segment_fresh(plan, laws, log2, seeds)
        comp, scale = (0, 1.0) if plan.width is None else (1, 1.0 / plan.width)
        res = []
        for k, pos in enumerate(plan.points):
            d = inh[0][k].reshape(R, 2, p)
            s = inh[1][k].reshape(R, 2, p, p)
            d[:, comp] += scale * np.stack([fresh[r][k][1] for r in range(R)])
            s[:, comp] += scale * np.stack([fresh[r][k][0] for r in range(R)])
            if fan is not None and fan_comp is not None:
                d[:, fan_comp] += fan_scale * fan[k]
            res.append((d, s))
            for b in plan.records.get(pos, ()):
                mf[b], means[b] = laws[pos].K, laws[pos].m
                shift[:, :, b], cov[:, :, b] = d, s
        law = laws[-1]
        if plan.points and plan.points[-1] == len(plan.layers):
            d_in, s_in = res[-1]
        fan_in = (comp, scale)  # the next random layer's fan-in is this segment's width
        i = j
    return {"mf": mf, "means": means, "shift": shift, "cov": cov, "groups": groups, "R": R, "log2": log2}


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


def _inherited(plan, K, laws, ctx, d_in, s_in):
    """F'(K)[delta] + F''(K)[Sigma]/2 and F'(K) Sigma F'(K)^T at every point of the segment, for each case
    (rows of d_in (c, p) and s_in (c, p, p)): lists over points of (c, p) and (c, p, p) arrays."""
    c, p = d_in.shape
    n = K.shape[0]
    npts = len(plan.points)
    if not (np.any(s_in) or np.any(d_in)):
        return [np.zeros((c, p)) for _ in range(npts)], [np.zeros((c, p, p)) for _ in range(npts)]
    # directions: the joint range of the covariances (each case scaled to a unit trace), then what of the
    # shifts lies outside it
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
    cov = parts["cov"][:, 0] / W + parts["cov"][:, 1]
    d = shift.mean(axis=0)
    c = cov.mean(axis=0)
    d_se = shift.std(axis=0, ddof=1) / np.sqrt(R)
    c_se = cov.std(axis=0, ddof=1) / np.sqrt(R)
    info = {"width": W, "meanfield_gram": mf, "shift": to_sym(d, n), "shift_stderr": to_sym(d_se, n),
            "gram_cov_stderr": _full(c_se, n), "nodes": 2 ** parts["log2"], "replicates": R,
            "method": "first order in 1/width; node averages by scrambled Sobol quasi-Monte Carlo"}
    return Trajectory(gram=mf + to_sym(d, n), engine="meanfield", network=net, means=parts["means"],
                      mc_error=np.zeros(mf.shape[0]), info=info, gram_cov=_full(c, n))
