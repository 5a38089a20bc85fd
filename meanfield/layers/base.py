"""The extension point: `Layer`, the base of every layer type, and the registry of layer types.

A layer type is a frozen dataclass that says *what* happens to the features of a batch, and carries, beside
its description, its rules for both engines:

- ``infinite(law, ctx)``: the infinite-width rule on this batch, from the law of one unit's n-vector before
  the layer to the law after it (`meanfield.core.law`), exact where possible, Monte Carlo with its
  standard error otherwise;
- ``population(law, ctx)``: the infinite-data rule, where the n inputs stand for an infinite i.i.d. data set
  (``propagate(..., exchangeable=True)``, used by `meanfield.bias`). A layer that couples the inputs of a
  batch (``batch_coupled``) must override it; without an override it raises a ValueError, never a silently
  wrong number. Other layers act on each input alone, so their population rule is their batch rule;
- ``on_features(F)``: for a deterministic layer, its exact action on explicit features (n, d) of a
  deterministic prefix (data, then fixed Linear layers and norms); None for a random layer;
- ``compile(w_in, compiler)``: the finite-width operation (`meanfield.core.ops.Op`: forward, vector-Jacobian
  product, memory and cost) with its output width;
- ``example()``: a typical instance that can follow a Dense layer, which the registry-wide contract tests
  use; ``invalid_parameters()``: constructor arguments that must raise ValueError.

Every subclass registers itself by its class name (`layer_types()`), which is also its ``"type"`` in
``to_dict()``: a layer defined outside the package works with both engines, serialization and the contract
tests as soon as its class is defined.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar

import hermite

__all__ = ["Layer", "layer_types", "layer_from_dict", "coerce_layers", "norm_layer_types"]

_REGISTRY: dict[str, type] = {}


class Layer:
    """Base of all layer types (frozen dataclasses with their rules for both engines).

    Subclass it to add a layer type; see the module docstring and docs/user_guide.md for a complete example.
    """

    #: couples the inputs of a batch (statistics over the batch): needs a population rule
    batch_coupled: ClassVar[bool] = False
    #: draws its own random weights (so a residual branch starting with it is independent of its shortcut)
    random: ClassVar[bool] = False
    #: has a weight matrix whose output width ``self.width`` it fixes (None: the simulator's width)
    weighted: ClassVar[bool] = False
    #: a mean-field Center/Scale that reads the preceding Activation (keeps the activation chain)
    keeps_chain: ClassVar[bool] = False
    #: has no infinite-width rule after a random layer: acts only on the explicit features of a deterministic
    #: prefix of the network (fixed weights); its contract example then runs on the data itself
    deterministic_only: ClassVar[bool] = False
    #: the name under which `meanfield.mlp(norm=...)` offers this layer (None: not a norm of mlp)
    norm_key: ClassVar[str | None] = None
    #: with ``norm_key``: the layer replaces the Dense layer of an mlp block (weight normalization)
    replaces_dense: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        name = cls.__name__
        old = _REGISTRY.get(name)
        if old is not None and old.__module__.startswith("meanfield.") and not cls.__module__.startswith("meanfield."):
            raise ValueError(f"Layer: a layer type named {name!r} exists already ({old.__module__}); choose "
                             "another class name")
        _REGISTRY[name] = cls

    # ---------------------------------------------------------------------------------------------------
    # rules (override in subclasses)
    def infinite(self, law, ctx):
        """The infinite-width rule on this batch: the law after the layer."""
        raise ValueError(f"propagate: layer {self!r} has no mean-field rule (define {type(self).__name__}.infinite)")

    def population(self, law, ctx):
        """The infinite-data rule (``exchangeable=True``); the batch rule for layers that act on each input
        alone."""
        if self.batch_coupled:
            raise ValueError(f"propagate(exchangeable=True): {type(self).__name__} couples the inputs of a batch "
                             "and has no infinite-data (population) rule; define "
                             f"{type(self).__name__}.population, or propagate without exchangeable=True")
        return self.infinite(law, ctx)

    def on_features(self, F):
        """A deterministic layer's action on explicit features F (n, d); None for a random layer."""
        return None

    # scale-free recursions (`meanfield.core.scale`)
    @property
    def scale_degree(self) -> float | None:
        """d such that the rule commutes with scaling: rule(s K) = s^d rule(K) for every s > 0 (second moments
        and the law; d = 1 for a bias-free Dense layer, 0 for a normalization), or None (the default: the
        rule needs the true scale, and the engine hands it the true law)."""
        return None

    def scaled_rule(self, law, ctx):
        """The rule on a law whose true second moments are exp(law.log_scale) law.K with a log-scale beyond
        float64's comfortable range, where the layer has a limit at that scale exact to rounding: the law after
        the layer, carrying its own log_scale. None (the default): no such limit, and the engine hands the
        rule the true law (`meanfield.core.scale.materialize`)."""
        return None

    def compile(self, w_in: int, compiler):
        """The finite-width operation and its output width: ``(op, w_out)``."""
        raise compiler.error(f"layer type {type(self).__name__} has no finite-width operation (define "
                             f"{type(self).__name__}.compile)")

    def to_torch_module(self, w_in: int, width: int, generator):
        """The torch form of this layer (`meanfield.to_torch`): ``(torch.nn.Module, w_out)`` acting on
        (batch, w_in) tensors, initialized by the layer's law with draws from the ``torch.Generator``;
        ``width`` is the block width (for layers whose own width is None). Import torch inside the method.
        Without an override: a ValueError naming the layer type."""
        name = type(self).__name__
        raise ValueError(f"to_torch: layer type {name} ({self!r}) has no torch form; define "
                         f"{name}.to_torch_module(w_in, width, generator) -> (torch.nn.Module, w_out)")

    def sublayers(self) -> tuple:
        """Layers nested inside this one (branches of a Residual, members of a Block)."""
        return ()

    @classmethod
    def example(cls) -> Layer:
        """A typical instance that can follow a Dense layer (used by the contract tests)."""
        return cls()

    @classmethod
    def invalid_parameters(cls) -> list[dict]:
        """Constructor keyword arguments that must raise ValueError (used by the contract tests)."""
        return []

    @classmethod
    def for_mlp(cls, **options) -> Layer:
        """The layer that ``mlp(norm=cls.norm_key, ...)`` inserts, from mlp's options (groups, group_size,
        bn_mode, wn_init, sigma_w, sigma_b, activation)."""
        return cls()

    # ---------------------------------------------------------------------------------------------------
    # finite width to first order in 1/width (`meanfield.fluctuations`)
    #: how the 1/width theory reads the layer: "random" (fresh Gaussian weights: given the previous Gram, its
    #: units are i.i.d. Gaussian), "unit" (acts on each unit's n-vector alone: `unit_map`), "sample" (a
    #: per-sample affine map set by the sample's empirical mean and mean square over units: `sample_affine`),
    #: or None: no rule, and the theory raises a ValueError naming the layer
    fluctuation_kind: ClassVar[str | None] = None
    #: "sample" layers: groups of units with statistics of their own (GroupLayerNorm(groups=g))
    fluctuation_groups: ClassVar[int] = 1
    #: "sample" layers whose map reads the preceding activation's input (Center/Scale with mode "per_sample")
    fluctuation_chain: ClassVar[bool] = False
    #: "random" layers whose units carry a scale s, s^2 = fan_in / chi^2_fan_in (normalized weight vectors)
    fluctuation_fan_in: ClassVar[bool] = False

    def unit_map(self, X):
        """A "unit" layer on unit n-vectors, the rows of X (M, n)."""
        raise NotImplementedError(f"{type(self).__name__} is not a per-unit layer")

    def sample_affine(self, sq, m, chain=None):
        """A "sample" layer: (alpha, beta), y_a = alpha_a x_a + beta_a, from each sample's mean square sq_a and
        mean m_a over units (arrays (..., n)). ``chain`` (layers with ``fluctuation_chain``): a dict with the
        preceding activation ``act``, the mean square ``q`` (..., n) of its input over units, and ``centered``
        (a Center came after the activation; a Center sets it)."""
        raise NotImplementedError(f"{type(self).__name__} is not a per-sample layer")

    # ---------------------------------------------------------------------------------------------------
    # description: serialization and printing
    def to_dict(self) -> dict:
        """Plain, JSON-safe description; ``layer_from_dict`` inverts it."""
        d: dict[str, Any] = {"type": type(self).__name__}
        for f in fields(self):
            v = getattr(self, f.name)
            if not hasattr(v, "shape") and v == f.default:
                continue
            d[f.name] = _plain(v)
        return d

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if hasattr(v, "shape") or v != f.default:
                if isinstance(v, hermite.Activation):
                    parts.append(repr(v.name))
                    continue
                parts.append(f"{f.name}={v!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _plain(v):
    if isinstance(v, Layer):
        return v.to_dict()
    if isinstance(v, tuple) and v and all(isinstance(x, Layer) for x in v):
        return [x.to_dict() for x in v]
    if isinstance(v, hermite.Activation):
        return v.to_dict()
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def sequence_degree(layers) -> float | None:
    """The scale degree of layers applied in turn: the product of theirs (None if one is None)."""
    d = 1
    for layer in layers:
        e = layer.scale_degree
        if e is None:
            return None
        d *= e
    return d


def layer_types() -> tuple:
    """Every registered layer class, built-in and user-defined, in order of definition."""
    return tuple(_REGISTRY.values())


def norm_layer_types() -> dict:
    """The layer classes that `meanfield.mlp` offers as ``norm=``, by their key."""
    return {cls.norm_key: cls for cls in _REGISTRY.values() if cls.norm_key is not None}


def coerce_layers(owner: str, layers) -> tuple:
    """A tuple of layers from a layer, a sequence of layers, or their dicts."""
    if isinstance(layers, Layer):
        layers = (layers,)
    if isinstance(layers, (str, bytes, dict)) or not hasattr(layers, "__iter__"):
        raise ValueError(f"{owner}: {layers!r} must be a layer or a sequence of layers")
    out = []
    for layer in layers:
        if isinstance(layer, dict):
            layer = layer_from_dict(layer)
        if not isinstance(layer, Layer):
            raise ValueError(f"{owner}: {layer!r} is not a layer (one of {', '.join(sorted(_REGISTRY))})")
        out.append(layer)
    return tuple(out)


def layer_from_dict(d: dict) -> Layer:
    """Inverse of ``Layer.to_dict``: nested lists of layer dicts become tuples of layers.

    Parameters
    ----------
    d : dict
        ``{"type": <registered class name>, <field>: <value>, ...}``. A field the class lists in its
        ``dict_required`` class attribute must be present (a layer dict without its activation is an error,
        not a ReLU by default).

    Returns
    -------
    Layer

    Raises
    ------
    ValueError
        For a non-dict, an unknown type, a missing required field, an unknown field or an invalid value,
        naming the layer type and the field.
    """
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"layer description {d!r} must be a dict with a 'type' key")
    d = dict(d)
    typ = d.pop("type")
    if not isinstance(typ, str) or typ not in _REGISTRY:
        raise ValueError(f"layer description: type={typ!r} must be one of {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[typ]
    missing = [k for k in getattr(cls, "dict_required", ()) if k not in d]
    if missing:
        raise ValueError(f"layer description of type {typ!r}: field {missing[0]!r} is required (got fields "
                         f"{sorted(d)}); e.g. {{'type': {typ!r}, {missing[0]!r}: ...}}")
    for key, v in d.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) and "type" in x for x in v):
            d[key] = tuple(layer_from_dict(x) for x in v)
    try:
        return cls(**d)
    except TypeError as exc:
        raise ValueError(f"bad fields for layer {typ}: {exc}") from None
