"""Per-sample normalizations across features: LayerNorm, RMSNorm, GroupLayerNorm, Center, Scale.

Conventions (DESIGN.md): no affine parameters at initialization; LayerNorm centres each sample across its
features and scales it to unit mean square (population variance); RMSNorm scales only; GroupLayerNorm splits
the features into contiguous groups and layer-normalizes each. A sample with zero variance maps to 0 (the
limit of a vanishing epsilon), never to NaN.

Mean field (one unit's n-vector x with second moments K and means m):

- Center: K -> K - m m^T, m -> 0 (mode "per_sample" subtracts c_0(q_a) = E f(u_a) = m_a: the same map).
- Scale / RMSNorm: K -> D^-1/2 K D^-1/2, D = diag K, m -> D^-1/2 m, with the diagonal (and duplicated
  inputs) exactly 1. LayerNorm = Center then Scale.
- GroupLayerNorm(groups=g): LayerNorm's rule (each group is infinitely wide). GroupLayerNorm(group_size=G)
  on a Gaussian input: the expected cosine of two correlated Gaussian vectors in dimension k = G - 1,
  E cos = (2/k) (Gamma((k+1)/2)/Gamma(k/2))^2 rho 2F1(1/2, 1/2; k/2 + 1; rho^2); Monte Carlo otherwise.

Finite width: `StandardizeOp` (shared with BatchNorm, along the batch axis) with its vector-Jacobian product
dx = (dy - mean(dy) - y mean(dy y)) / sigma (without the mean term for RMSNorm).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.special as sc

import hermite
from meanfield.core.backends import to_host
from meanfield.core.law import Gaussian, Sampled, inv_sqrt, monte_carlo
from meanfield.core.linalg import standardize, standardize_vjp
from meanfield.core.ops import Op, Run
from meanfield.core.validate import check_choice, check_int
from meanfield.layers.base import Layer

__all__ = ["LayerNorm", "RMSNorm", "GroupLayerNorm", "Center", "Scale", "StandardizeOp", "expected_cosine",
           "standardize_affine"]


def _center_features(F: np.ndarray, groups: int, scale: bool) -> np.ndarray:
    if F.shape[1] % groups:
        raise ValueError(f"GroupLayerNorm: groups={groups} does not divide the width {F.shape[1]}")
    G = F.reshape(F.shape[0], groups, -1)
    G = G - G.mean(axis=2, keepdims=True)
    if scale:
        s = np.sqrt(np.mean(G * G, axis=2, keepdims=True))
        G = np.divide(G, s, out=np.zeros_like(G), where=s > 0)
    return G.reshape(F.shape)


def _rms_features(F: np.ndarray) -> np.ndarray:
    s = np.sqrt(np.mean(F * F, axis=1, keepdims=True))
    return np.divide(F, s, out=np.zeros_like(F), where=s > 0)


@dataclass(frozen=True, repr=False)
class LayerNorm(Layer):
    """Layer norm without affine parameters: each sample is centred across features and scaled to unit
    mean square. Mean field: subtract the per-sample feature mean m_a, then K_ab / sqrt(K_aa K_bb)
    (after centering: K_ab - m_a m_b)."""

    norm_key = "ln"

    #: scale invariant
    scale_degree = 0

    def infinite(self, law, ctx):
        return law.centered().scaled()

    def on_features(self, F):
        return _center_features(F, 1, True)

    def compile(self, w_in, compiler):
        return StandardizeOp(w_in, axis=-1, center=True), w_in

    def to_torch_module(self, w_in, width, generator):
        """torch.nn.LayerNorm over the features, affine parameters at gamma = 1, beta = 0 (trainable)."""
        from torch import nn

        from meanfield.core.torch_modules import DTYPE

        return nn.LayerNorm(w_in, dtype=DTYPE), w_in

    # 1/width theory: x_a -> (x_a - m_a) / sqrt(sq_a - m_a^2), m and sq the sample's moments over units
    fluctuation_kind = "sample"

    def sample_affine(self, sq, m, chain=None):
        return standardize_affine(sq, m, center=True, scale=True)


@dataclass(frozen=True, repr=False)
class RMSNorm(Layer):
    """RMS norm: each sample scaled to unit mean square across features (no centering).
    Mean field: K_ab -> K_ab / sqrt(K_aa K_bb)."""

    norm_key = "rms"

    #: scale invariant
    scale_degree = 0

    def infinite(self, law, ctx):
        return law.scaled()

    def on_features(self, F):
        return _rms_features(F)

    def compile(self, w_in, compiler):
        return StandardizeOp(w_in, axis=-1, center=False), w_in

    def to_torch_module(self, w_in, width, generator):
        """torch.nn.RMSNorm over the features, its scale at 1 (trainable)."""
        from torch import nn

        from meanfield.core.torch_modules import DTYPE

        return nn.RMSNorm(w_in, dtype=DTYPE), w_in

    # 1/width theory: x_a -> x_a / sqrt(sq_a)
    fluctuation_kind = "sample"

    def sample_affine(self, sq, m, chain=None):
        return standardize_affine(sq, m, center=False, scale=True)


@dataclass(frozen=True, repr=False)
class GroupLayerNorm(Layer):
    """Group layer norm (LN-G, Ni et al. 2024): the features are split into contiguous groups and each
    group is layer-normalized. Give either ``groups`` (a fixed number of groups: at infinite width each
    group is infinitely wide, so the mean field is LayerNorm's) or ``group_size`` (a fixed number of
    features per group: a group-size-dimensional expectation)."""

    groups: int | None = None
    group_size: int | None = None

    norm_key = "gln"

    def __post_init__(self):
        if (self.groups is None) == (self.group_size is None):
            raise ValueError("GroupLayerNorm: give exactly one of groups= or group_size=")
        if self.groups is not None:
            object.__setattr__(self, "groups", check_int("GroupLayerNorm", "groups", self.groups, lo=1))
        if self.group_size is not None:
            object.__setattr__(self, "group_size", check_int("GroupLayerNorm", "group_size", self.group_size, lo=2))

    #: scale invariant
    scale_degree = 0

    def infinite(self, law, ctx):
        if self.groups is not None:
            return law.centered().scaled()
        G = self.group_size
        n = law.n
        src = law.sampler()

        def sample(rng_, M_):
            X = src(rng_, M_ * G).reshape(M_, G, n)
            X = X - X.mean(axis=1, keepdims=True)
            nrm = np.sqrt(np.mean(X * X, axis=1, keepdims=True))
            Y = np.divide(X, nrm, out=np.zeros_like(X), where=nrm > 0)
            return Y[:, 0, :]

        if isinstance(law, Gaussian):
            d = np.diag(law.K)
            s = inv_sqrt(d)
            rho = np.clip(law.K * np.outer(s, s), -1.0, 1.0)
            Kn = expected_cosine(rho, G - 1)
            live = d > 0
            Kn[~live, :] = 0.0
            Kn[:, ~live] = 0.0
            idx = np.arange(n)
            Kn[idx, idx] = np.where(live, 1.0, 0.0)
            return Sampled(0.5 * (Kn + Kn.T), np.zeros(n), sample, law.mc_error)
        # no exact unit diagonal here: after e.g. a ReLU a small group is all zero with positive probability
        # (3 units: 1/8) and maps to 0, so the diagonal is 1 - P(degenerate group), which the samples estimate
        return monte_carlo(sample, n, ctx.rng, ctx.M, law.mc_error)

    def on_features(self, F):
        return None if self.groups is None else _center_features(F, self.groups, True)

    def compile(self, w_in, compiler):
        if self.groups is not None:
            groups = self.groups
            if w_in % groups:
                raise compiler.error(f"GroupLayerNorm groups={groups} must divide the width {w_in}; choose a width "
                                     f"that is a multiple of {groups}")
        else:
            if w_in % self.group_size:
                raise compiler.error(f"GroupLayerNorm group_size={self.group_size} must divide the width {w_in}; "
                                     "choose a width that is a multiple of it")
            groups = w_in // self.group_size
        return StandardizeOp(w_in, axis=-1, center=True, groups=groups), w_in

    def to_torch_module(self, w_in, width, generator):
        """torch.nn.GroupNorm (contiguous groups of features, affine at gamma = 1, beta = 0, trainable)."""
        from torch import nn

        from meanfield.core.torch_modules import DTYPE

        size = self.group_size if self.groups is None else None
        if (self.groups is not None and w_in % self.groups) or (size is not None and w_in % size):
            what = f"groups={self.groups}" if size is None else f"group_size={size}"
            raise ValueError(f"to_torch: GroupLayerNorm {what} must divide the width {w_in}")
        groups = self.groups if size is None else w_in // size
        return nn.GroupNorm(groups, w_in, dtype=DTYPE), w_in

    @classmethod
    def example(cls):
        return cls(group_size=4)

    @classmethod
    def invalid_parameters(cls):
        return [{}, {"groups": 2, "group_size": 4}, {"groups": 0}, {"group_size": 1}, {"groups": 1.5}]

    @classmethod
    def for_mlp(cls, groups=None, group_size=None, **_):
        if groups is None and group_size is None:
            groups = 1
        return cls(groups=groups, group_size=group_size)

    # 1/width theory: groups=g is LayerNorm on each of g groups of width/g units (group_size=G: no rule)
    @property
    def fluctuation_kind(self):
        return "sample" if self.groups is not None else None

    @property
    def fluctuation_groups(self):
        return self.groups or 1

    def sample_affine(self, sq, m, chain=None):
        return standardize_affine(sq, m, center=True, scale=True)


def standardize_affine(sq, m, center: bool, scale: bool):
    """(alpha, beta) of the per-sample map x_a -> alpha_a x_a + beta_a of a centring and/or scaling from the
    sample's mean square sq_a and mean m_a over units (arrays (..., n)); a zero variance maps to 0."""
    sq = np.asarray(sq, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    v = sq - m * m if center else sq
    alpha = np.where(v > 0, 1.0 / np.sqrt(np.where(v > 0, v, 1.0)), 0.0) if scale else np.ones_like(sq)
    beta = -alpha * m if center else np.zeros_like(sq)
    return alpha, beta


def expected_cosine(rho: np.ndarray, k: int) -> np.ndarray:
    """E[<x, y>/(|x| |y|)] for x, y in R^k, pairs (x_i, y_i) i.i.d. standard bivariate with correlation rho."""
    c = 2.0 / k * math.exp(2 * (sc.gammaln((k + 1) / 2) - sc.gammaln(k / 2)))
    return c * rho * sc.hyp2f1(0.5, 0.5, k / 2 + 1, rho * rho)


MODES = ("layer", "per_sample")


def _mode(owner: str, mode) -> str:
    """The mode of Center/Scale; "meanfield", the former name of "per_sample", is accepted with a FutureWarning."""
    if mode == "meanfield":
        warnings.warn(f"{owner}(mode='meanfield') is the former name of {owner}(mode='per_sample'), the toolkit's "
                      "per-sample variant; Joudaki et al.'s mean-field layer (a constant of the activation) is "
                      f"meanfield.{'MeanFieldCenter' if owner == 'Center' else 'MeanFieldScale'}(act). The old "
                      "name will raise in a later version.", FutureWarning, stacklevel=4)
        return "per_sample"
    return check_choice(owner, "mode", mode, MODES)


@dataclass(frozen=True, repr=False)
class Center(Layer):
    """Centering of each sample across features.

    mode="layer": subtract the empirical per-sample feature mean (the centring of LayerNorm; Joudaki et al.
    2023's "layer" centring). mode="per_sample" (the toolkit's extension, not the paper's definition):
    subtract the mean-field constant E f(sqrt(q_a) z) of the preceding activation f evaluated at the
    sample's own empirical pre-activation variance q_a (its Hermite coefficient c_0(q_a)). Joudaki et al.'s
    mean-field centring subtracts one constant c_0 = E f(z) for every sample: `MeanFieldCenter`.

    Mean field (both modes): K -> K - m m^T, m -> 0.
    """

    mode: str = "layer"

    keeps_chain = True

    def __post_init__(self):
        object.__setattr__(self, "mode", _mode("Center", self.mode))

    #: K -> K - m m^T is linear (both modes)
    scale_degree = 1

    def infinite(self, law, ctx):
        return law.centered()

    def on_features(self, F):
        return _center_features(F, 1, False)

    def compile(self, w_in, compiler):
        chain = _chain(self, compiler)
        if chain is not None:
            chain["center"] = True
        return CenterOp(self.mode, w_in), w_in

    def to_torch_module(self, w_in, width, generator):
        """mode="layer": subtract each sample's feature mean. mode="per_sample" has no torch form (its constant
        depends on the preceding activation's input variance at run time): a ValueError."""
        from meanfield.core.torch_modules import SampleCenter

        if self.mode != "layer":
            raise ValueError("to_torch: Center(mode='per_sample') has no torch form (it subtracts c_0 at the "
                             "preceding activation's run-time input variance); use Center(mode='layer')")
        return SampleCenter(), w_in

    @classmethod
    def invalid_parameters(cls):
        return [{"mode": "batch"}]

    # 1/width theory: x_a -> x_a - m_a (mode "per_sample": x_a - c_0(q_a), q_a the activation input's mean square)
    fluctuation_kind = "sample"

    @property
    def fluctuation_chain(self):
        return self.mode == "per_sample"

    def sample_affine(self, sq, m, chain=None):
        if chain is not None:
            chain["centered"] = True
        if self.mode == "layer":
            return standardize_affine(sq, m, center=True, scale=False)
        q = np.asarray(chain["q"], dtype=np.float64)
        c0 = chain["act"].mean_at(q.reshape(-1), 0).reshape(q.shape)
        return np.ones_like(q), -c0


@dataclass(frozen=True, repr=False)
class Scale(Layer):
    """Scaling of each sample to unit mean square across features.

    mode="layer": divide by the empirical per-sample root mean square. mode="per_sample" (the toolkit's
    extension, not the paper's definition): divide by the infinite-width root mean square of its input
    evaluated at the sample's own empirical pre-activation variance q_a, sqrt(E f(sqrt(q_a) z)^2) for the
    preceding activation f, minus c_0(q_a)^2 under the root if a Center (either mode) comes between them.
    Joudaki et al.'s mean-field normalization divides by one constant sqrt(sum_{k>=1} c_k^2) for every
    sample: `MeanFieldScale`.

    Mean field (both modes): K -> D^-1/2 K D^-1/2, D = diag K.
    """

    mode: str = "layer"

    keeps_chain = True

    def __post_init__(self):
        object.__setattr__(self, "mode", _mode("Scale", self.mode))

    #: K -> D^-1/2 K D^-1/2 is scale invariant (both modes)
    scale_degree = 0

    def infinite(self, law, ctx):
        return law.scaled()

    def on_features(self, F):
        return _rms_features(F)

    def compile(self, w_in, compiler):
        chain = _chain(self, compiler)
        centered = bool(chain and chain["center"])
        if chain is not None:
            chain["scaled"] = True
        if self.mode == "per_sample":
            return ScaleMFOp(w_in, centered), w_in
        return StandardizeOp(w_in, axis=-1, center=False, chain_role="keep"), w_in

    def to_torch_module(self, w_in, width, generator):
        """mode="layer": divide each sample by its root mean square (no affine parameters). mode="per_sample"
        has no torch form: a ValueError."""
        from meanfield.core.torch_modules import SampleScale

        if self.mode != "layer":
            raise ValueError("to_torch: Scale(mode='per_sample') has no torch form (it divides by a mean-field "
                             "constant at the preceding activation's run-time input variance); use "
                             "Scale(mode='layer')")
        return SampleScale(), w_in

    @classmethod
    def invalid_parameters(cls):
        return [{"mode": "batch"}]

    # 1/width theory: x_a -> x_a / sqrt(sq_a) (mode "per_sample": x_a / sqrt(E f^2 [- c_0^2]) at the activation
    # input's mean square q_a)
    fluctuation_kind = "sample"

    @property
    def fluctuation_chain(self):
        return self.mode == "per_sample"

    def sample_affine(self, sq, m, chain=None):
        if self.mode == "layer":
            return standardize_affine(sq, m, center=False, scale=True)
        act, q = chain["act"], np.asarray(chain["q"], dtype=np.float64)
        var = act.second_moment_at(q.reshape(-1)).reshape(q.shape)
        if chain["centered"]:
            var = var - act.mean_at(q.reshape(-1), 0).reshape(q.shape) ** 2
        return np.where(var > 0, 1.0 / np.sqrt(np.where(var > 0, var, 1.0)), 0.0), np.zeros_like(q)


def _chain(layer, compiler) -> dict | None:
    """The compile-time chain of the Activation that a Center/Scale follows (checked for per-sample mode)."""
    chain = compiler.chain
    if layer.mode == "per_sample":
        name = type(layer).__name__
        if chain is None:
            raise compiler.error(f"a per_sample {name} (mode='per_sample', formerly 'meanfield') needs a preceding "
                                 "Activation, with only Center/Scale layers in between")
        if name == "Center" and chain["scaled"]:
            raise compiler.error("a per_sample Center (mode='per_sample', formerly 'meanfield') must come before "
                                 "any Scale after its Activation")
        if name == "Scale" and chain["scaled"]:
            raise compiler.error("a per_sample Scale (mode='per_sample', formerly 'meanfield') cannot follow "
                                 "another Scale")
        chain["act"].need_q = True
    return chain


# ---------------------------------------------------------------------------------------------------------
# finite width
class StandardizeOp(Op):
    """(x - [mean]) / std along ``axis`` (-1: across features, per sample; -2: across the batch, per
    feature), in ``groups`` contiguous groups of features; a zero variance maps to 0."""

    def __init__(self, w: int, axis: int, center: bool, groups: int = 1, chain_role: str | None = None):
        self.w_in = self.w_out = w
        self.axis, self.center, self.groups = axis, center, groups
        self.chain_role = chain_role

    def forward(self, h, rt: Run):
        xp = rt.xp
        if self.groups > 1:
            s0, n, w = h.shape
            hg = xp.reshape(h, (s0, n, self.groups, w // self.groups))
            y, inv = standardize(xp, hg, -1, True, rt.be.eps)
            out = xp.reshape(y, (s0, n, w))
        else:
            y, inv = standardize(xp, h, self.axis, self.center, rt.be.eps)
            out = y
        return out, ((y, inv) if rt.grad else None)

    def backward(self, g, cache, rt: Run):
        xp = rt.xp
        y, inv = cache
        if self.groups > 1:
            s0, n, w = g.shape
            gg = xp.reshape(g, (s0, n, self.groups, w // self.groups))
            return xp.reshape(standardize_vjp(xp, gg, y, inv, -1, True), (s0, n, w))
        return standardize_vjp(xp, g, y, inv, self.axis, self.center)

    def cache_elems(self, n: int) -> int:
        return n * self.w_out + n + self.w_out


def _chain_constants(rt: Run, need_m2: bool):
    """c_0(q_a) and E f(sqrt(q_a) z)^2 from `hermite`, per seed and sample, for the chain's activation."""
    st = rt.chain
    q = np.asarray(to_host(st.q), dtype=np.float64)
    flat = q.reshape(-1)
    c0 = np.asarray(hermite.coefficients(st.act, 0, q=flat), dtype=np.float64)
    c0 = c0.reshape(flat.shape[0], -1)[:, 0].reshape(q.shape)
    m2 = None
    if need_m2:
        m2 = np.asarray(hermite.second_moment(st.act, flat), dtype=np.float64).reshape(q.shape)
    return c0, m2


class CenterOp(Op):
    chain_role = "keep"

    def __init__(self, mode: str, w: int):
        self.mode = mode
        self.w_in = self.w_out = w

    def forward(self, h, rt: Run):
        xp = rt.xp
        if self.mode == "layer":
            return h - xp.mean(h, axis=-1, keepdims=True), None
        c0, _ = _chain_constants(rt, need_m2=False)
        c0 = rt.be.asarray(c0)
        rt.chain.c0 = c0
        return h - rt.xp.expand_dims(c0, axis=-1), None

    def backward(self, g, cache, rt: Run):
        if self.mode == "layer":
            return g - rt.xp.mean(g, axis=-1, keepdims=True)
        return g


class ScaleMFOp(Op):
    """Scale(mode="per_sample"): divide by sqrt(E f^2 [- c_0^2]) at the sample's q_a."""

    chain_role = "keep"

    def __init__(self, w: int, centered: bool = False):
        self.w_in = self.w_out = w
        self.centered = centered  # a Center (either mode) precedes, after the same Activation

    def forward(self, h, rt: Run):
        c0, m2 = _chain_constants(rt, need_m2=True)
        var = m2 - c0 * c0 if self.centered else m2
        ok = var > 0.0
        inv = np.where(ok, 1.0 / np.sqrt(np.where(ok, var, 1.0)), 0.0)
        inv = rt.xp.expand_dims(rt.be.asarray(inv), axis=-1)
        return h * inv, (inv if rt.grad else None)

    def backward(self, g, cache, rt: Run):
        return g * cache
