"""Network = a sequence of blocks of layers; `mlp` builds the common MLPs.

Both engines read this one description: `meanfield.propagate` (infinite width) and `meanfield.simulate`
(finite width). A trajectory records the input and the output of every block.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from meanfield.core.validate import check_choice, check_int
from meanfield.layers import (
    Activation,
    Block,
    Center,
    Dense,
    Layer,
    MeanFieldCenter,
    Residual,
    layer_from_dict,
    norm_layer_types,
)

__all__ = ["Network", "mlp", "NORMS", "PLACEMENTS", "CENTERINGS", "norm_choices", "norm_layers", "check_placement"]

PLACEMENTS = ("pre", "post")
CENTERINGS = (None, "layer", "per_sample", "meanfield")


def norm_choices() -> tuple:
    """The one norm vocabulary of `mlp`, `maps` and `sweep`: None and the ``norm_key`` of every registered
    norm layer type ("ln", "rms", "bn", "gln", "wn", "mobn", "meanfield", and user-defined ones); two keys joined by "+"
    combine a weight normalization with a norm layer (e.g. "wn+mobn", Salimans and Kingma 2016)."""
    return (None, *norm_layer_types())


NORMS = norm_choices()  # the built-in vocabulary


@dataclass(frozen=True, eq=True, repr=False)
class Network:
    """An immutable sequence of blocks.

    ``Network([...])`` accepts layers and `Block`s; every layer outside a Block is a block of its own.
    ``net.to_dict()`` / ``Network.from_dict(d)`` round-trip through plain JSON-safe dicts; ``==``
    compares descriptions.

    Examples
    --------
    >>> import meanfield
    >>> net = meanfield.Network([meanfield.Block([meanfield.Dense(2.0**0.5), meanfield.Activation("relu")])])
    >>> net.depth
    1
    """

    blocks: tuple
    meta: dict | None = None

    def __init__(self, layers, meta: dict | None = None):
        if isinstance(layers, (Layer, Network)):
            layers = [layers]
        blocks = []
        for item in layers:
            if isinstance(item, Network):
                blocks.extend(item.blocks)
            elif isinstance(item, Block):
                blocks.append(item)
            elif isinstance(item, Layer):
                blocks.append(Block((item,)))
            elif isinstance(item, dict):
                lay = layer_from_dict(item)
                blocks.append(lay if isinstance(lay, Block) else Block((lay,)))
            else:
                raise ValueError(f"Network: {item!r} is not a layer or Block")
        if not blocks:
            raise ValueError("Network: needs at least one layer")
        object.__setattr__(self, "blocks", tuple(blocks))
        if meta is not None:
            import json as _json

            try:
                meta = _json.loads(_json.dumps(meta))
            except TypeError:
                raise ValueError("Network: meta must be a JSON-safe dict (numbers, strings, lists, dicts)") from None
        object.__setattr__(self, "meta", meta)

    @property
    def depth(self) -> int:
        """Number of blocks (a trajectory has depth + 1 entries)."""
        return len(self.blocks)

    @property
    def layers(self) -> tuple:
        """All layers, flattened across blocks."""
        return tuple(layer for b in self.blocks for layer in b.layers)

    @property
    def widths(self) -> list:
        """Output width of every Dense/WeightNormDense layer (None where the simulator's width applies)."""
        return [layer.width for layer in _walk(self.layers) if layer.weighted]

    def to_dict(self) -> dict:
        d = {"blocks": [b.to_dict() for b in self.blocks]}
        if self.meta is not None:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Network:
        if not isinstance(d, dict) or "blocks" not in d:
            raise ValueError("Network.from_dict: expected a dict with a 'blocks' list")
        return cls([layer_from_dict(b) for b in d["blocks"]], meta=d.get("meta"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __repr__(self) -> str:
        lines = [f"Network({self.depth} blocks)"]
        for i, b in enumerate(self.blocks):
            lines.append(f"  {i + 1:>3}: " + " -> ".join(repr(layer) for layer in b.layers))
        return "\n".join(lines)

    def __hash__(self):
        return hash((self.blocks, json.dumps(self.meta, sort_keys=True)))

    def __len__(self):
        return len(self.blocks)

    def __iter__(self):
        return iter(self.blocks)


def _walk(layers):
    for layer in layers:
        yield layer
        yield from _walk(layer.sublayers())


def norm_layers(owner: str, norm) -> tuple[type | None, type | None]:
    """(weight-norm class or None, norm-layer class or None) for a ``norm`` of the vocabulary
    (`norm_choices`); ValueError naming ``owner`` otherwise."""
    if norm is None:
        return None, None
    table = norm_layer_types()
    keys = norm.split("+") if isinstance(norm, str) else [norm]
    if not all(isinstance(k, str) and k in table for k in keys) or len(keys) > 2:
        raise ValueError(f"{owner}: norm={norm!r} must be one of {norm_choices()} (or a weight norm and a norm "
                         "layer joined by '+', e.g. 'wn+mobn')")
    classes = [table[k] for k in keys]
    dense = [c for c in classes if c.replaces_dense]
    other = [c for c in classes if not c.replaces_dense]
    if len(dense) > 1 or len(other) > 1:
        raise ValueError(f"{owner}: norm={norm!r} combines two {'weight norms' if len(dense) > 1 else 'norm layers'}; "
                         "give at most one weight norm and one norm layer")
    return (dense[0] if dense else None), (other[0] if other else None)


def check_placement(owner: str, placement) -> str:
    """"pre" (Dense -> Norm -> Activation) or "post" (Dense -> Activation -> Norm)."""
    return check_choice(owner, "placement", placement, PLACEMENTS)


def mlp(depth: int, activation="relu", norm: str | None = None, placement: str = "post",
        sigma_w: float = 1.0, sigma_b: float = 0.0, centering: str | None = None,
        residual: float | None = None, readout: int | bool | None = None, *, groups: int | None = None,
        group_size: int | None = None, wn_init: str = "fixed", bn_mode: str = "exact") -> Network:
    """Build an MLP of ``depth`` blocks.

    Each block is Dense(sigma_w, sigma_b) followed by the activation and the norm in the placement's
    order: "pre" is Dense -> Norm -> Activation, "post" is Dense -> Activation -> Norm.

    Parameters
    ----------
    depth : int >= 1
    activation : name, callable or hermite.Activation
    norm : None, "ln", "rms", "bn", "gln", "wn", "mobn", "meanfield", or "wn+<norm>" (see `norm_choices`)
        "gln" takes ``groups`` or ``group_size``; "wn" replaces Dense by WeightNormDense(g=sigma_w,
        init=wn_init) and adds no norm layer; "bn" uses BatchNorm(mode=bn_mode); "mobn" is
        MeanOnlyBatchNorm; "wn+mobn" is Salimans and Kingma's weight norm with mean-only BatchNorm;
        "meanfield" is Joudaki et al.'s mean-field normalization `MeanFieldScale(activation)`: division by
        the constant sqrt(sum_{k>=1} c_k^2) of the activation (authors' code ``normalization='MF'``).
    placement : "pre" or "post"
    centering : None, "layer", "meanfield" or "per_sample"
        Adds a centring right after the activation (Joudaki et al. 2023): "layer" is Center(mode="layer")
        (subtract each sample's feature mean); "meanfield" is the paper's mean-field centring
        `MeanFieldCenter(activation)`, subtracting the constant c_0 = E f(z), z ~ N(0, 1) (authors' code
        ``centering='MF'``); "per_sample" is the toolkit's extension Center(mode="per_sample"), subtracting
        c_0 at each sample's own empirical pre-activation variance (it acts like a real centring).
    residual : float or None
        If given, each block is Residual(branch=block, alpha=residual) with an identity shortcut.
    readout : int, True or None
        Adds one more block, Dense(sigma_w, 0, width=readout) (True: one output).
    """
    depth = check_int("mlp", "depth", depth, lo=1)
    dense_cls, norm_cls = norm_layers("mlp", norm)
    check_placement("mlp", placement)
    check_choice("mlp", "centering", centering, CENTERINGS)
    act = Activation(activation)
    options = {"groups": groups, "group_size": group_size, "bn_mode": bn_mode, "wn_init": wn_init,
               "sigma_w": sigma_w, "sigma_b": sigma_b, "activation": act.act}
    dense = Dense(sigma_w=sigma_w, sigma_b=sigma_b) if dense_cls is None else dense_cls.for_mlp(**options)
    nl = None if norm_cls is None else norm_cls.for_mlp(**options)
    if centering == "meanfield":
        core = [act, MeanFieldCenter(act.act)]
    else:
        core = [act] + ([Center(mode=centering)] if centering else [])
    if nl is None:
        body = [dense, *core]
    elif placement == "pre":
        body = [dense, nl, *core]
    else:
        body = [dense, *core, nl]
    blocks = []
    for _ in range(depth):
        if residual is None:
            blocks.append(Block(tuple(body)))
        else:
            blocks.append(Block((Residual(branch=tuple(body), alpha=residual),)))
    if readout is not None and readout is not False:
        width = 1 if readout is True else readout
        blocks.append(Block((Dense(sigma_w=sigma_w, sigma_b=0.0, width=width),), name="readout"))
    return Network(blocks)
