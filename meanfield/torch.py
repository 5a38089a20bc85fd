"""PyTorch: networks to and from torch, and the Gram trajectory of torch models at initialization.

Optional extra ``torch`` (``pip install meanfield-hermite[torch]``); importing this module imports torch.

- `to_torch(net, width, input_dim, seed)`: the `torch.nn.Module` of a description, initialized by its law
  exactly. This module is a driver: every layer class holds its own torch form
  (``Layer.to_torch_module(w_in, width, generator) -> (module, w_out)``), so a user-defined layer type with
  that method converts too, and one without it raises a ValueError naming it.
- `from_torch(module, init=...)`: the `Network` of an `nn.Sequential`-style model. The model is traced with
  ``torch.fx`` into a chain of modules and functions; a sum ``x + f(x)`` or ``g(x) + alpha * f(x)`` becomes a
  `Residual`. The one table from torch module types to layer types is `FROM_TORCH` (extend it with
  `register_from_torch`).
- `trajectory(net, X, width, seeds)`: the Gram matrices K = H H^T / width after every block of ``seeds``
  torch models at initialization, as a `Trajectory` (``engine="torch"``), to compare with `meanfield.simulate`
  and `meanfield.propagate`.

Sources: PyTorch's default initialization of nn.Linear (kaiming_uniform_ with a = sqrt(5), so weights and
biases are uniform with variance 1/(3 fan_in)); torch.nn.init's kaiming (He et al. 2015) and xavier
(Glorot and Bengio 2010) schemes; weight normalization as in Salimans and Kingma (2016).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

import hermite
from meanfield import layers as L
from meanfield.core import torch_modules as tm
from meanfield.core.validate import check_choice, check_data, check_int, check_seed, check_widths
from meanfield.finite import _network
from meanfield.network import Network
from meanfield.trajectory import Trajectory

__all__ = ["to_torch", "from_torch", "trajectory", "model_grams", "register_from_torch", "FROM_TORCH",
           "INIT_SCHEMES", "torch_dtype", "Model"]

Model = tm.Model
INIT_SCHEMES = ("auto", "default", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform",
                "weights")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def torch_dtype(owner: str, dtype) -> torch.dtype:
    """torch.float32 or torch.float64 from a name ("float32", "float64") or a torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"{owner}: dtype={dtype!r} must be one of 'float32', 'float64' (or torch.float32, "
                     "torch.float64)")


def _device(owner: str, device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{owner}: device={device!r} must be a torch device ('cpu', 'cuda', 'cuda:0', ...) or "
                         "None") from None


def _root_seed(owner: str, seed) -> np.random.SeedSequence:
    seed = check_seed(owner, seed)
    return seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)


# ==========================================================================================================
# to torch
def to_torch(net, width: int | Sequence[int], input_dim: int, seed=0, *, dtype="float64",
             device=None) -> tm.Model:
    """The torch model of a network description, initialized by the description's law.

    Every layer builds its own torch form (``Layer.to_torch_module``): Dense is an ``nn.Linear`` with weights
    N(0, sigma_w^2 / fan_in) and biases N(0, sigma_b^2); LayerNorm, RMSNorm, GroupLayerNorm and BatchNorm are
    torch's modules with their affine parameters at gamma = 1, beta = 0 (trainable); WeightNormDense is an
    ``nn.Linear`` under torch's weight-norm parametrization w_i = g_i v_i / ||v_i|| (init "fixed": g_i = g;
    init "data": set on the first training-mode batch, Salimans and Kingma 2016); MeanOnlyBatchNorm subtracts
    the batch mean in training mode and a running mean at evaluation; Residual is shortcut(x) + alpha
    branch(x). Batch-coupled modules use batch statistics in training mode, the mode the model is returned
    in, as both engines do.

    Parameters
    ----------
    net : Network (or layers)
    width : int or sequence of int
        Width of every Dense-like layer, or one width per block (layers with their own ``width`` keep it).
    input_dim : int >= 1
        Number of input features.
    seed : int or numpy.random.SeedSequence
        All draws come from one ``torch.Generator`` seeded from ``SeedSequence(seed)``, layer after layer.
    dtype : "float64" (default) or "float32"
    device : None (CPU), or a torch device such as "cuda"

    Returns
    -------
    meanfield.torch.Model
        An ``nn.Module`` with ``blocks`` (one ``nn.Sequential`` per block), ``features(x)`` (the input and every
        block's output), ``network`` (the description) and ``widths`` (output width per trajectory index).

    Examples
    --------
    >>> import meanfield, torch
    >>> from meanfield.torch import to_torch, from_torch
    >>> model = to_torch(meanfield.mlp(3, "relu", norm="ln"), width=64, input_dim=10)
    >>> model(torch.randn(5, 10, dtype=torch.float64)).shape
    torch.Size([5, 64])
    >>> from_torch(model) == meanfield.mlp(3, "relu", norm="ln")
    True
    """
    net = _network("to_torch", net)
    widths = check_widths("to_torch", width, net.depth)
    input_dim = check_int("to_torch", "input_dim", input_dim, lo=1)
    root = _root_seed("to_torch", seed)
    dt = torch_dtype("to_torch", dtype)
    dev = _device("to_torch", device)
    gen = torch.Generator(device="cpu").manual_seed(tm.seed_of(root))
    blocks, out_widths, w = [], [input_dim], input_dim
    for b, block in enumerate(net.blocks):
        seq, w = tm.build_sequence(block.layers, w, widths[b], gen)
        seq.meanfield_layer = block
        blocks.append(seq)
        out_widths.append(w)
    model = tm.Model(blocks, net, out_widths).to(dtype=dt, device=dev)
    return model.train()


def model_grams(model: nn.Module, X) -> np.ndarray:
    """K_l = H_l H_l^T / width_l for the input and every block output of a `to_torch` model on the batch X
    (training mode, so batch-coupled layers use the statistics of X; running statistics are not changed).
    Returns float64 (L+1, n, n)."""
    if not hasattr(model, "features"):
        raise ValueError("model_grams: model must be a meanfield.torch.Model (from to_torch)")
    p = next(iter(model.parameters()), None)
    dt, dev = (torch.float64, torch.device("cpu")) if p is None else (p.dtype, p.device)
    x = X if isinstance(X, torch.Tensor) else torch.as_tensor(check_data("model_grams", X), dtype=dt, device=dev)
    was = model.training
    model.train()
    try:
        with torch.no_grad(), tm.frozen_statistics(model):
            feats = model.features(x.to(dtype=dt, device=dev))
    finally:
        model.train(was)
    out = []
    for h in feats:
        h = h.to(torch.float64)
        out.append((h @ h.T / h.shape[-1]).cpu().numpy())
    return np.stack(out)


def trajectory(net, X, width: int | Sequence[int] = 512, seeds: int = 8, seed=0, *, dtype="float64",
               device=None) -> Trajectory:
    """Gram matrices after every block of ``seeds`` torch models at initialization (`to_torch`).

    Model s is ``to_torch(net, width, d, seed=SeedSequence(seed).spawn(seeds)[s])``; its Grams are
    K = H H^T / width on the batch X (n, d) in training mode (batch statistics), as `meanfield.simulate`
    records them, so the two agree in distribution and, at large width, with `meanfield.propagate`.

    Returns
    -------
    Trajectory
        ``engine="torch"``, ``gram`` (seeds, L+1, n, n) and ``means`` (seeds, L+1, n) float64, ``info`` with
        width, widths, dtype, device, seeds, seed.
    """
    net = _network("trajectory", net)
    Xh = check_data("trajectory", X)
    seeds = check_int("trajectory", "seeds", seeds, lo=1)
    root = _root_seed("trajectory", seed)
    widths = check_widths("trajectory", width, net.depth)
    grams, means = [], []
    dev = _device("trajectory", device)
    out_widths: list = []
    for child in root.spawn(seeds):
        model = to_torch(net, widths, Xh.shape[1], seed=child, dtype=dtype, device=dev)
        out_widths = model.widths
        x = torch.as_tensor(Xh, dtype=torch_dtype("trajectory", dtype), device=dev)
        with torch.no_grad():
            feats = model.features(x)
        grams.append(np.stack([(h.double() @ h.double().T / h.shape[-1]).cpu().numpy() for h in feats]))
        means.append(np.stack([h.double().mean(dim=-1).cpu().numpy() for h in feats]))
    info = {"width": width if isinstance(width, (int, np.integer)) else list(widths), "widths": out_widths,
            "dtype": str(dtype), "device": str(dev), "seeds": seeds,
            "seed": seed if isinstance(seed, int) else repr(seed)}
    return Trajectory(gram=np.stack(grams), engine="torch", network=net, means=np.stack(means), info=info)


# ==========================================================================================================
# from torch: the one table from torch module types to layer types
#: torch module type -> converter(module, reader) returning a Layer, a list of layers, or None (no layer: the
#: module is the identity at initialization). Lookup follows the module's class hierarchy (MRO).
FROM_TORCH: dict[type, Callable] = {}
_FUNCTIONS: dict[Any, tuple] = {}


def register_from_torch(torch_type: type, converter: Callable) -> None:
    """Describe modules of ``torch_type`` (and its subclasses) by ``converter(module, reader)``, which returns
    a `meanfield.Layer`, a list of layers, or None for a module that is the identity at initialization.
    ``reader.dense(module)`` gives the Dense description of a linear module under the chosen ``init``;
    ``reader.note(text)`` records a remark in ``network.meta["from_torch"]``."""
    if not (isinstance(torch_type, type) and issubclass(torch_type, nn.Module)):
        raise ValueError(f"register_from_torch: torch_type={torch_type!r} must be a torch.nn.Module subclass")
    if not callable(converter):
        raise ValueError(f"register_from_torch: converter={converter!r} must be callable")
    FROM_TORCH[torch_type] = converter


def _act(name: str, **params) -> L.Activation:
    return L.Activation(hermite.activation(name, **params))


def _plain_acts() -> dict:
    """Activation modules without parameters of their own."""
    return {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.Mish: "mish",
            nn.SELU: "selu", nn.ReLU6: "relu6"}


def _builtin_table() -> None:
    for cls, name in _plain_acts().items():
        FROM_TORCH.setdefault(cls, lambda m, r, name=name: _act(name))
    FROM_TORCH.setdefault(nn.LeakyReLU, lambda m, r: _act("leaky_relu", negative_slope=float(m.negative_slope)))
    FROM_TORCH.setdefault(nn.GELU, lambda m, r: _act("gelu_tanh" if m.approximate == "tanh" else "gelu"))
    FROM_TORCH.setdefault(nn.ELU, lambda m, r: _act("elu", alpha=float(m.alpha)))
    FROM_TORCH.setdefault(nn.Softplus, _softplus)
    FROM_TORCH.setdefault(nn.Hardtanh, lambda m, r: _act("hardtanh", min_val=float(m.min_val),
                                                        max_val=float(m.max_val)))
    FROM_TORCH.setdefault(nn.Identity, lambda m, r: None)
    FROM_TORCH.setdefault(nn.Flatten, lambda m, r: r.note(f"{r.where}: Flatten ignored (the input is taken "
                                                          "to be (batch, features) already)"))
    for cls in (nn.Dropout, nn.AlphaDropout, nn.Dropout1d):
        FROM_TORCH.setdefault(cls, lambda m, r: r.note(f"{r.where}: {type(m).__name__}(p={m.p}) ignored: "
                                                       "dropout is not part of the network at initialization"))
    FROM_TORCH.setdefault(nn.Linear, lambda m, r: r.dense(m))
    FROM_TORCH.setdefault(nn.LayerNorm, lambda m, r: r.affine(m, L.LayerNorm()))
    FROM_TORCH.setdefault(nn.RMSNorm, lambda m, r: r.affine(m, L.RMSNorm()))
    FROM_TORCH.setdefault(nn.GroupNorm, lambda m, r: r.affine(m, L.GroupLayerNorm(groups=int(m.num_groups))))
    FROM_TORCH.setdefault(nn.BatchNorm1d, _batchnorm)
    # the building blocks of to_torch, when used without their description
    FROM_TORCH.setdefault(tm.Elementwise, lambda m, r: L.Activation(m.act))
    FROM_TORCH.setdefault(tm.SampleCenter, lambda m, r: L.Center())
    FROM_TORCH.setdefault(tm.SampleScale, lambda m, r: L.Scale())
    FROM_TORCH.setdefault(tm.BatchCenter, lambda m, r: L.MeanOnlyBatchNorm())
    FROM_TORCH.setdefault(tm.UnitMaxPool, lambda m, r: L.MaxPool(int(m.k)))
    FROM_TORCH.setdefault(tm.DataInitWeightNorm, lambda m, r: L.WeightNormDense(
        init="data", width=int(m.linear.out_features)))
    F = torch.nn.functional
    for fns, name, params in (((F.relu, torch.relu, "relu"), "relu", ()), ((torch.tanh, F.tanh, "tanh"), "tanh", ()),
                              ((torch.sigmoid, F.sigmoid, "sigmoid"), "sigmoid", ()),
                              ((F.gelu,), "gelu", ("approximate",)), ((F.silu,), "silu", ()), ((F.mish,), "mish", ()),
                              ((F.elu,), "elu", ("alpha",)), ((F.selu, torch.selu), "selu", ()),
                              ((F.leaky_relu,), "leaky_relu", ("negative_slope",)),
                              ((F.hardtanh,), "hardtanh", ("min_val", "max_val")), ((F.relu6,), "relu6", ()),
                              ((F.softplus,), "softplus", ("beta",)), ((torch.erf, torch.special.erf), "erf", ())):
        for fn in fns:
            _FUNCTIONS.setdefault(fn, (name, params))


def _softplus(m, r):
    r.note(f"{r.where}: Softplus(beta={m.beta}, threshold={m.threshold}) described as log(1 + exp(beta x))/beta "
           "(torch switches to x above the threshold, a relative difference below exp(-threshold))")
    return _act("softplus", beta=float(m.beta))


def _batchnorm(m, r):
    r.note(f"{r.where}: BatchNorm1d described with batch statistics (its training mode); in evaluation mode "
           "torch uses running statistics instead")
    return r.affine(m, L.BatchNorm())


def _function_layer(node, where: str) -> L.Activation:
    name, params = _FUNCTIONS[node.target]
    values = dict(zip(params, node.args[1:]))
    values.update({k: v for k, v in node.kwargs.items() if k in params})
    for k, v in values.items():
        if isinstance(v, torch.fx.Node):
            raise ValueError(f"from_torch: {where}: parameter {k} of {name} is computed, not a constant")
    if name == "gelu":
        return _act("gelu_tanh" if values.get("approximate", "none") == "tanh" else "gelu")
    return _act(name, **{k: float(v) for k, v in values.items()})


class _Reader:
    """Converts one module at a time under the chosen initialization law; collects notes."""

    def __init__(self, init: str, gain: float | None, bias):
        self.init, self.gain, self.bias = init, gain, bias
        self.notes: list = []
        self.where = ""

    def note(self, text: str) -> None:
        self.notes.append(text)
        return None

    def affine(self, m: nn.Module, layer: L.Layer) -> L.Layer:
        w, b = getattr(m, "weight", None), getattr(m, "bias", None)
        ok = (w is None or bool(torch.all(w == 1))) and (b is None or bool(torch.all(b == 0)))
        if not ok:
            raise ValueError(f"from_torch: module {self.where} ({type(m).__name__}) has affine parameters away from "
                             "gamma = 1, beta = 0 (a trained model?); a description holds a normalization at its "
                             "initialization only")
        return layer

    def _sigma_w(self, W: torch.Tensor) -> float:
        fan_out, fan_in = W.shape
        init = "default" if self.init == "auto" else self.init
        if init == "weights":
            return math.sqrt(fan_in * float(torch.mean(W.detach().double() ** 2)))
        if init == "default":
            return 1.0 / math.sqrt(3.0)  # kaiming_uniform_(a=sqrt(5)): Var W = 1/(3 fan_in)
        if init.startswith("kaiming"):
            return math.sqrt(2.0) if self.gain is None else self.gain
        g = 1.0 if self.gain is None else self.gain  # xavier: Var W = 2 g^2 / (fan_in + fan_out)
        return g * math.sqrt(2.0 * fan_in / (fan_in + fan_out))

    def _sigma_b(self, b: torch.Tensor | None, fan_in: int) -> float:
        if isinstance(self.bias, (int, float)):
            return float(self.bias)
        if b is None or self.bias == "zeros" or (self.bias is None and bool(torch.all(b == 0))):
            return 0.0
        if self.init == "weights" or self.bias == "weights":
            return math.sqrt(float(torch.mean(b.detach().double() ** 2)))
        return 1.0 / math.sqrt(3.0 * fan_in)  # torch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))

    def dense(self, m: nn.Module) -> L.Layer:
        from torch.nn.utils import parametrize

        fan_in, out = int(m.in_features), int(m.out_features)
        if parametrize.is_parametrized(m, "weight"):
            plist = m.parametrizations.weight
            if len(plist) != 1 or type(plist[0]).__name__ != "_WeightNorm" or getattr(plist[0], "dim", 0) != 0:
                raise ValueError(f"from_torch: module {self.where} ({type(m).__name__}) has a weight "
                                 "parametrization other than torch's weight_norm(dim=0), which no layer type "
                                 "describes")
            g = plist.original0.detach().double()
            return L.WeightNormDense(g=math.sqrt(float(torch.mean(g * g))), init="fixed",
                                   sigma_b=self._sigma_b(m.bias, fan_in), width=out)
        return L.Dense(sigma_w=self._sigma_w(m.weight), sigma_b=self._sigma_b(m.bias, fan_in), width=out)

    def layers_of(self, m: nn.Module) -> list:
        """The layers of a leaf module (its tag, or the table)."""
        tag = getattr(m, "meanfield_layer", None)
        if tag is not None and (self.init == "auto" or not _has_random(tag)):
            return [tag]
        for cls in type(m).__mro__:
            if cls in FROM_TORCH:
                out = FROM_TORCH[cls](m, self)
                if out is None:
                    return []
                return list(out) if isinstance(out, (list, tuple)) else [out]
        known = sorted({c.__name__ for c in FROM_TORCH})
        raise ValueError(f"from_torch: module {self.where} ({type(m).__name__}) has no layer type; known modules: "
                         f"{', '.join(known)} (extend with meanfield.torch.register_from_torch)")

    def is_leaf(self, m: nn.Module) -> bool:
        tag = getattr(m, "meanfield_layer", None)
        if tag is not None:
            return self.init == "auto" or not _has_random(tag) or not tag.sublayers()
        return any(cls in FROM_TORCH for cls in type(m).__mro__)


def _has_random(layer: L.Layer) -> bool:
    return bool(layer.random) or any(_has_random(s) for s in layer.sublayers())


def _trace(module: nn.Module, reader: _Reader):
    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return reader.is_leaf(m) or (not isinstance(m, nn.Sequential) and super().is_leaf_module(m, qualname))

    try:
        return Tracer().trace(module)
    except Exception as exc:  # noqa: BLE001 - fx raises many types
        raise ValueError(f"from_torch: the model ({type(module).__name__}) cannot be traced into a chain of modules "
                         f"({type(exc).__name__}: {exc}); only nn.Sequential-style models with residual sums are "
                         "described") from None


_ADD = (operator.add, operator.iadd, torch.add, "add", "add_", "__add__")
_MUL = (operator.mul, torch.mul, "mul", "__mul__", "__rmul__")


def _read_layers(module: nn.Module, reader: _Reader) -> list:
    """The layers of a traced model: a chain from its input to its output, residual sums included."""
    graph = _trace(module, reader)
    prev: dict = {}
    item: dict = {}  # node -> list of layers, or ("scale", c)
    root = None

    def arg_node(node, i=0):
        a = node.args[i] if len(node.args) > i else None
        if not isinstance(a, torch.fx.Node):
            raise ValueError(f"from_torch: {node.name} does not act on the running features")
        return a

    for node in graph.nodes:
        name = getattr(node.target, "__name__", node.target)
        where = node.target if node.op == "call_module" else f"{node.op} {name}"
        reader.where = repr(where)
        if node.op == "placeholder":
            if root is not None:
                raise ValueError("from_torch: the model takes more than one input")
            root, prev[node], item[node] = node, None, []
        elif node.op == "call_module":
            prev[node] = arg_node(node)
            item[node] = reader.layers_of(module.get_submodule(node.target))
        elif node.op in ("call_function", "call_method") and node.target in _FUNCTIONS:
            prev[node] = arg_node(node)
            item[node] = [_function_layer(node, where)]
        elif node.op in ("call_function", "call_method") and node.target in _MUL:
            nodes = [a for a in node.args if isinstance(a, torch.fx.Node)]
            consts = [a for a in node.args if isinstance(a, (int, float)) and not isinstance(a, bool)]
            if len(nodes) != 1 or len(consts) != 1:
                raise ValueError(f"from_torch: {where}: only a product of the features with one constant "
                                 "(a residual branch's alpha) is described")
            prev[node], item[node] = nodes[0], ("scale", float(consts[0]))
        elif node.op in ("call_function", "call_method") and node.target in _ADD:
            a, b = node.args[0], node.args[1]
            if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)) or len(node.args) > 2 or node.kwargs:
                raise ValueError(f"from_torch: {where}: only the sum of two feature paths (a residual) is described")
            prev[node], item[node] = _residual(a, b, prev, item)
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, torch.fx.Node):
                raise ValueError("from_torch: the model must return one tensor")
            chain = _path(root, out, prev)
            return _layers(chain, item)
        else:
            raise ValueError(f"from_torch: {where} ({node.op}) is not a layer, an activation function or a "
                             "residual sum; it has no description")
    raise ValueError("from_torch: the model has no output")


def _path(top, node, prev) -> list:
    """Nodes from just after ``top`` down to ``node`` (top excluded), in order."""
    out = []
    while node is not top:
        if node is None:
            raise ValueError("from_torch: a residual sum joins paths that do not start at a common point")
        out.append(node)
        node = prev[node]
    return out[::-1]


def _layers(nodes: list, item: dict) -> list:
    layers = []
    for n in nodes:
        it = item[n]
        if isinstance(it, tuple):
            raise ValueError(f"from_torch: {n.name}: a product with a constant outside a residual sum has no "
                             "layer type")
        layers.extend(it)
    return layers


def _residual(a, b, prev, item):
    """A Residual from the sum of the paths ending at a and b, which meet at their last common node."""
    up, x = set(), a
    while x is not None:
        up.add(x)
        x = prev[x]
    top = b
    while top is not None and top not in up:
        top = prev[top]
    if top is None:
        raise ValueError("from_torch: a residual sum joins paths that do not start at a common point")
    pa, pb = _path(top, a, prev), _path(top, b, prev)
    for n in pa[:-1] + pb[:-1]:
        if len(n.users) != 1:
            raise ValueError(f"from_torch: {n.name} feeds more than one path; only residual sums are described")
    alpha = 1.0
    if pa and isinstance(item[pa[-1]], tuple) and not (pb and isinstance(item[pb[-1]], tuple)):
        pa, pb = pb, pa
    if pb and isinstance(item[pb[-1]], tuple):
        alpha = item[pb[-1]][1]
        pb = pb[:-1]
    branch, short = _layers(pb, item), _layers(pa, item)
    if not branch:
        branch, short = short, []
    if not branch:
        raise ValueError("from_torch: a residual sum x + alpha * x has no branch layers")
    return top, [L.Residual(branch=tuple(branch), alpha=alpha, shortcut=tuple(short) if short else None)]


def _blocks(layers: list) -> list:
    """Blocks of an MLP: a new block at every layer with weights or sublayers."""
    blocks: list = []
    for layer in layers:
        if not blocks or layer.weighted or layer.sublayers():
            blocks.append([layer])
        else:
            blocks[-1].append(layer)
    return [L.Block(tuple(b)) for b in blocks]


def from_torch(module: nn.Module, init: str = "auto", *, gain: float | None = None, bias=None) -> Network:
    """The `Network` description of an ``nn.Sequential``-style torch model.

    Modules are read through the table `FROM_TORCH`: Linear (Dense, or WeightNormDense under torch's
    weight_norm parametrization), the activations ReLU, LeakyReLU, Tanh, Sigmoid, GELU (both forms), SiLU,
    Mish, ELU, SELU, Softplus, Hardtanh, ReLU6 (and the same torch functions), LayerNorm, RMSNorm,
    BatchNorm1d (with batch statistics), GroupNorm (GroupLayerNorm with its number of groups); Identity,
    Flatten and Dropout are the identity at initialization and are left out, with a note in
    ``network.meta["from_torch"]``. Nested Sequentials are flattened; a sum ``x + f(x)``, ``g(x) + f(x)`` or
    ``x + alpha * f(x)`` (e.g. a residual wrapper module) becomes a `Residual`. A new block starts at every
    Linear and every residual sum. Modules made by `to_torch` carry their layer and read back exactly.

    The weight law of a Linear layer: ``init="default"`` is PyTorch's (U(+-1/sqrt(fan_in)): Var W =
    1/(3 fan_in), so sigma_w = 1/sqrt(3)); "kaiming_normal"/"kaiming_uniform" give sigma_w = gain (default
    sqrt(2), torch's leaky_relu gain with a = 0, mode fan_in); "xavier_normal"/"xavier_uniform" give
    sigma_w = gain sqrt(2 fan_in / (fan_in + fan_out)) (default gain 1); "weights" reads the empirical second
    moment, sigma_w^2 = fan_in mean(W^2); "auto" (default) is the description of modules made by `to_torch`
    and "default" elsewhere. A uniform law is described by the Gaussian of the same variance: the same mean
    field (central limit over fan_in), a different law at finite width. The bias law: ``bias=None`` gives 0
    for absent or all-zero biases, else torch's default U(+-1/sqrt(fan_in)) (sigma_b^2 = 1/(3 fan_in)), or
    with init="weights" the empirical sigma_b^2 = mean(b^2); bias="zeros", "default", "weights" or a number
    (sigma_b) forces one.

    Raises
    ------
    ValueError
        Naming the module and why, for anything without a description (a convolution, a normalization whose
        affine parameters are not at gamma = 1, beta = 0, a computed reshape, a model that fx cannot trace).
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"from_torch: module must be a torch.nn.Module, got {type(module).__name__}")
    check_choice("from_torch", "init", init, INIT_SCHEMES)
    if gain is not None and not (isinstance(gain, (int, float)) and math.isfinite(gain) and gain > 0):
        raise ValueError(f"from_torch: gain={gain!r} must be a positive number or None")
    if not (bias is None or bias in ("zeros", "default", "weights")
            or (isinstance(bias, (int, float)) and not isinstance(bias, bool) and math.isfinite(bias) and bias >= 0)):
        raise ValueError(f"from_torch: bias={bias!r} must be None, 'zeros', 'default', 'weights' or a number >= 0")
    _builtin_table()
    reader = _Reader(init, None if gain is None else float(gain), bias)
    if isinstance(module, tm.Model):
        blocks = []
        for seq, orig in zip(module.blocks, module.network.blocks):
            blocks.append(L.Block(tuple(_read_layers(seq, reader)), name=orig.name))
    else:
        layers = _read_layers(module, reader)
        if not layers:
            raise ValueError(f"from_torch: the model ({type(module).__name__}) has no layers")
        blocks = _blocks(layers)
    meta = {"from_torch": {"init": init, "notes": reader.notes}} if reader.notes or init != "auto" else None
    return Network(blocks, meta=meta)
