"""Layer descriptions: immutable, comparable, printable, serializable.

A layer says *what* happens to the features of a batch; the mean-field engine (`meanfield.propagate`)
and the finite-width simulator (`meanfield.simulate`) each implement one rule per layer type.

Conventions (DESIGN.md): Dense(sigma_w, sigma_b) draws W_ij ~ N(0, sigma_w^2 / fan_in) and
b_i ~ N(0, sigma_b^2); normalization layers have no affine parameters at initialization; LayerNorm acts on
each sample across features, BatchNorm on each feature across the batch with batch statistics. A zero
variance maps to 0 (the limit of a vanishing epsilon), never to NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import hermite

__all__ = [
    "Layer", "Dense", "Linear", "WeightNormDense", "Activation", "LayerNorm", "RMSNorm", "BatchNorm",
    "GroupLayerNorm", "Center", "Scale", "MaxPool", "Residual", "Block", "layer_from_dict",
]


def _check_real(owner: str, name: str, value, *, lo=None, lo_open=False, allow_none=False):
    if value is None and allow_none:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: {name}={value!r} must be a real number") from None
    if not math.isfinite(v):
        raise ValueError(f"{owner}: {name}={value!r} must be finite")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"{owner}: {name}={value!r} must be {'>' if lo_open else '>='} {lo}")
    return v


def _check_width(owner: str, width):
    if width is None:
        return None
    if isinstance(width, bool) or not float(width).is_integer() or int(width) < 1:
        raise ValueError(f"{owner}: width={width!r} must be a positive integer or None")
    return int(width)


class Layer:
    """Base of all layer descriptions (frozen dataclasses)."""

    kind: str = "layer"

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"type": type(self).__name__}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("branch", "shortcut"):
                v = None if v is None else [layer.to_dict() for layer in v]
            elif isinstance(v, hermite.Activation):
                v = v.to_dict()
            if v != f.default:
                d[f.name] = v
        return d

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if v != f.default:
                if isinstance(v, hermite.Activation):
                    v = v.name
                    parts.append(repr(v))
                    continue
                parts.append(f"{f.name}={v!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


@dataclass(frozen=True, repr=False)
class Dense(Layer):
    """Fully connected layer: W_ij ~ N(0, sigma_w^2 / fan_in), b_i ~ N(0, sigma_b^2).

    Mean field: K -> sigma_w^2 K + sigma_b^2 (Neal 1996; Poole et al. 2016). ``width`` fixes the number
    of output features (None: the simulator's width).
    """

    sigma_w: float = 1.0
    sigma_b: float = 0.0
    width: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "sigma_w", _check_real("Dense", "sigma_w", self.sigma_w, lo=0.0))
        object.__setattr__(self, "sigma_b", _check_real("Dense", "sigma_b", self.sigma_b, lo=0.0))
        object.__setattr__(self, "width", _check_width("Dense", self.width))


@dataclass(frozen=True, repr=False, eq=False)
class Linear(Layer):
    """A fixed (deterministic) affine map x -> W x + b with given weights, W of shape (out, in).

    Used for constructed networks such as the width-3 LN-Net of `meanfield.layernorm`. It has no
    infinite-width limit: the mean-field engine applies it exactly to the explicit features of a
    deterministic prefix of the network (input data X, then fixed layers and norms), and raises a
    ValueError after a random layer.
    """

    W: Any = None
    b: Any = None

    def __post_init__(self):
        import numpy as np

        W = np.array(self.W, dtype=np.float64)
        if W.ndim != 2 or W.size == 0 or not np.all(np.isfinite(W)):
            raise ValueError(f"Linear: W must be a finite 2-D (out, in) array, got shape {W.shape}")
        b = np.zeros(W.shape[0]) if self.b is None else np.array(self.b, dtype=np.float64).reshape(-1)
        if b.shape != (W.shape[0],) or not np.all(np.isfinite(b)):
            raise ValueError(f"Linear: b must be a finite vector of length {W.shape[0]}, got shape {b.shape}")
        W.setflags(write=False)
        b.setflags(write=False)
        object.__setattr__(self, "W", W)
        object.__setattr__(self, "b", b)

    @property
    def width(self) -> int:
        return int(self.W.shape[0])

    def to_dict(self) -> dict:
        return {"type": "Linear", "W": self.W.tolist(), "b": self.b.tolist()}

    def __eq__(self, other):
        import numpy as np

        return isinstance(other, Linear) and np.array_equal(self.W, other.W) and np.array_equal(self.b, other.b)

    def __hash__(self):
        return hash((self.W.tobytes(), self.b.tobytes()))

    def __repr__(self):
        return f"Linear({self.W.shape[1]} -> {self.W.shape[0]})"


@dataclass(frozen=True, repr=False)
class WeightNormDense(Layer):
    """Weight-normalized dense layer w_i = g v_i / ||v_i|| (Salimans and Kingma 2016).

    init="fixed": every row has norm g and a uniformly random direction, so the pre-activation
    w_i . x has variance g^2 ||x||^2 / fan_in = g^2 K(x): at infinite width this is Dense(sigma_w=g).
    init="data": the data-dependent initialization, g and b chosen so that every pre-activation has
    batch mean 0 and batch standard deviation 1: at infinite width, Dense followed by batch
    standardization of each feature.
    """

    g: float = 1.0
    init: str = "fixed"
    sigma_b: float = 0.0
    width: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "g", _check_real("WeightNormDense", "g", self.g, lo=0.0))
        object.__setattr__(self, "sigma_b", _check_real("WeightNormDense", "sigma_b", self.sigma_b, lo=0.0))
        if self.init not in ("fixed", "data"):
            raise ValueError(f"WeightNormDense: init={self.init!r} must be 'fixed' or 'data'")
        object.__setattr__(self, "width", _check_width("WeightNormDense", self.width))


@dataclass(frozen=True, repr=False, eq=True)
class Activation(Layer):
    """Elementwise activation f, any `hermite.Activation` (transformed ones included).

    Mean field (Gaussian input): K_ab -> E[f(u_a) f(u_b)], the dual kernel with each entry's own
    variances K_aa, K_bb (`hermite.kernel`); the per-sample feature mean becomes E f(u_a).
    """

    act: Any = "relu"

    def __post_init__(self):
        object.__setattr__(self, "act", _coerce_activation(self.act))

    def __repr__(self):
        return f"Activation({self.act.name!r})"


def _coerce_activation(act):
    if isinstance(act, dict):
        return hermite.Activation.from_dict(act)
    return hermite.activation(act)


@dataclass(frozen=True, repr=False)
class LayerNorm(Layer):
    """Layer norm without affine parameters: each sample is centred across features and scaled to unit
    mean square. Mean field: subtract the per-sample feature mean m_a, then K_ab / sqrt(K_aa K_bb)
    (after centering: K_ab - m_a m_b)."""


@dataclass(frozen=True, repr=False)
class RMSNorm(Layer):
    """RMS norm: each sample scaled to unit mean square across features (no centering).
    Mean field: K_ab -> K_ab / sqrt(K_aa K_bb)."""


@dataclass(frozen=True, repr=False)
class BatchNorm(Layer):
    """Batch norm with batch statistics (never running statistics): each feature is centred over the n
    inputs of the batch and divided by its batch standard deviation.

    mode="exact": the batch-coupled expectation (Yang et al. 2019); mode="large_batch": its n -> infinity
    approximation K -> P K P / (tr(P K P)/n), P = I - 11^T/n. Only the mean-field engine reads ``mode``.
    """

    mode: str = "exact"

    def __post_init__(self):
        if self.mode not in ("exact", "large_batch"):
            raise ValueError(f"BatchNorm: mode={self.mode!r} must be 'exact' or 'large_batch'")


@dataclass(frozen=True, repr=False)
class GroupLayerNorm(Layer):
    """Group layer norm (LN-G, Ni et al. 2024): the features are split into contiguous groups and each
    group is layer-normalized. Give either ``groups`` (a fixed number of groups: at infinite width each
    group is infinitely wide, so the mean field is LayerNorm's) or ``group_size`` (a fixed number of
    features per group: a group-size-dimensional expectation)."""

    groups: int | None = None
    group_size: int | None = None

    def __post_init__(self):
        if (self.groups is None) == (self.group_size is None):
            raise ValueError("GroupLayerNorm: give exactly one of groups= or group_size=")
        for nm in ("groups", "group_size"):
            v = getattr(self, nm)
            if v is not None:
                if isinstance(v, bool) or not float(v).is_integer() or int(v) < (1 if nm == "groups" else 2):
                    lo = 1 if nm == "groups" else 2
                    raise ValueError(f"GroupLayerNorm: {nm}={v!r} must be an integer >= {lo}")
                object.__setattr__(self, nm, int(v))


@dataclass(frozen=True, repr=False)
class Center(Layer):
    """Centering of each sample across features (Joudaki et al. 2023).

    mode="layer": subtract the empirical per-sample feature mean; mode="meanfield": subtract the constant
    E f(sqrt(q_a) z) of the preceding activation f at the sample's pre-activation variance q_a (the
    Hermite coefficient c_0), i.e. mean-field centering.
    """

    mode: str = "layer"

    def __post_init__(self):
        if self.mode not in ("layer", "meanfield"):
            raise ValueError(f"Center: mode={self.mode!r} must be 'layer' or 'meanfield'")


@dataclass(frozen=True, repr=False)
class Scale(Layer):
    """Scaling of each sample to unit mean square across features (Joudaki et al. 2023).

    mode="layer": divide by the empirical per-sample root mean square; mode="meanfield": divide by the
    constant infinite-width root mean square of its input: sqrt(E f(sqrt(q_a) z)^2) for the preceding
    activation f at the sample's pre-activation variance, minus c_0^2 under the root if a Center (either
    mode) comes between them.
    """

    mode: str = "layer"

    def __post_init__(self):
        if self.mode not in ("layer", "meanfield"):
            raise ValueError(f"Scale: mode={self.mode!r} must be 'layer' or 'meanfield'")


@dataclass(frozen=True, repr=False)
class MaxPool(Layer):
    """Max pooling over k consecutive units (the feature count shrinks by k). Creates initial guessing
    bias even in a linear network (Francazi et al. 2024)."""

    k: int = 2

    def __post_init__(self):
        if isinstance(self.k, bool) or not float(self.k).is_integer() or int(self.k) < 1:
            raise ValueError(f"MaxPool: k={self.k!r} must be an integer >= 1")
        object.__setattr__(self, "k", int(self.k))


@dataclass(frozen=True, repr=False)
class Residual(Layer):
    """y = shortcut(x) + alpha * branch(x).

    ``branch`` and ``shortcut`` are sequences of layers; shortcut None is the identity. A Dense shortcut
    with its own weights is Vatanen et al.'s linear shortcut connection. Mean field: the sum of the
    branches' kernels plus the cross term m_s m_r^T + m_r m_s^T of their per-sample feature means (exact
    when one side starts with an independent random Dense layer).
    """

    branch: tuple = ()
    alpha: float = 1.0
    shortcut: tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "branch", _coerce_layers("Residual.branch", self.branch))
        if not self.branch:
            raise ValueError("Residual: branch must contain at least one layer")
        if self.shortcut is not None:
            object.__setattr__(self, "shortcut", _coerce_layers("Residual.shortcut", self.shortcut))
        object.__setattr__(self, "alpha", _check_real("Residual", "alpha", self.alpha))

    def __repr__(self):
        sc = "identity" if self.shortcut is None else list(self.shortcut)
        return f"Residual(branch={list(self.branch)!r}, alpha={self.alpha:g}, shortcut={sc})"


@dataclass(frozen=True, repr=False)
class Block(Layer):
    """A group of layers whose output is recorded as one step of a trajectory."""

    layers: tuple = field(default_factory=tuple)
    name: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "layers", _coerce_layers("Block.layers", self.layers))
        if not self.layers:
            raise ValueError("Block: layers must contain at least one layer")
        for layer in self.layers:
            if isinstance(layer, Block):
                raise ValueError("Block: blocks cannot be nested; use Residual for sub-structures")

    def to_dict(self) -> dict:
        d = {"type": "Block", "layers": [layer.to_dict() for layer in self.layers]}
        if self.name is not None:
            d["name"] = self.name
        return d

    def __repr__(self):
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Block[{inner}]" if self.name is None else f"Block {self.name!r}[{inner}]"


_TYPES = {cls.__name__: cls for cls in (Dense, Linear, WeightNormDense, Activation, LayerNorm, RMSNorm, BatchNorm,
                                        GroupLayerNorm, Center, Scale, MaxPool, Residual, Block)}


def _coerce_layers(owner: str, layers) -> tuple:
    if isinstance(layers, Layer):
        layers = (layers,)
    out = []
    for layer in layers:
        if isinstance(layer, dict):
            layer = layer_from_dict(layer)
        if not isinstance(layer, Layer):
            raise ValueError(f"{owner}: {layer!r} is not a layer (one of {', '.join(sorted(_TYPES))})")
        out.append(layer)
    return tuple(out)


def layer_from_dict(d: dict) -> Layer:
    """Inverse of ``Layer.to_dict``."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"layer description {d!r} must be a dict with a 'type' key")
    d = dict(d)
    typ = d.pop("type")
    if typ not in _TYPES:
        raise ValueError(f"unknown layer type {typ!r}; known: {', '.join(sorted(_TYPES))}")
    cls = _TYPES[typ]
    for key in ("branch", "shortcut", "layers"):
        if key in d and d[key] is not None:
            d[key] = tuple(layer_from_dict(x) for x in d[key])
    try:
        return cls(**d)
    except TypeError as exc:
        raise ValueError(f"bad fields for layer {typ}: {exc}") from None
