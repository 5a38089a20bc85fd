"""Structure: Residual connections and Blocks (groups of layers recorded as one step of a trajectory).

Residual: y = shortcut(x) + alpha * branch(x); shortcut None is the identity. Mean field:
K -> K_s + alpha^2 K_r + alpha (m_s m_r^T + m_r m_s^T), m -> m_s + alpha m_r, exact when the shortcut and the
branch are independent given the input, i.e. when one of them starts with its own random weights (otherwise a
ValueError).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meanfield.core.law import Gaussian, Sampled
from meanfield.core.ops import Op, Run, backward_seq, forward_seq
from meanfield.core.validate import check_real
from meanfield.layers.base import Layer, coerce_layers, sequence_degree

__all__ = ["Residual", "Block"]


def _starts_random(layers) -> bool:
    return bool(layers) and layers[0].random


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
        object.__setattr__(self, "branch", coerce_layers("Residual.branch", self.branch))
        if not self.branch:
            raise ValueError("Residual: branch must contain at least one layer")
        if self.shortcut is not None:
            object.__setattr__(self, "shortcut", coerce_layers("Residual.shortcut", self.shortcut))
        object.__setattr__(self, "alpha", check_real("Residual", "alpha", self.alpha))

    def __repr__(self):
        sc = "identity" if self.shortcut is None else list(self.shortcut)
        return f"Residual(branch={list(self.branch)!r}, alpha={self.alpha:g}, shortcut={sc})"

    def sublayers(self) -> tuple:
        return self.branch + (self.shortcut or ())

    @property
    def scale_degree(self):
        """1 when the branch and the shortcut are both of degree 1 (their sum is then linear in scale)."""
        sc = 1 if self.shortcut is None else sequence_degree(self.shortcut)
        return 1 if sequence_degree(self.branch) == 1 and sc == 1 else None

    def infinite(self, law, ctx):
        if not (_starts_random(self.branch) or (self.shortcut is not None and _starts_random(self.shortcut))):
            raise ValueError("Residual: at infinite width the mean-field rule needs the branch or the shortcut to "
                             "start with its own random Dense/WeightNormDense layer (then the two are independent "
                             f"given the input); got branch={list(self.branch)!r}")
        br = ctx.run(self.branch, law)
        sh = law if self.shortcut is None else ctx.run(self.shortcut, law)
        a = self.alpha
        K = sh.K + a * a * br.K + a * (np.outer(sh.m, br.m) + np.outer(br.m, sh.m))
        K = 0.5 * (K + K.T)
        err = max(sh.mc_error, br.mc_error)
        if isinstance(sh, Gaussian) and isinstance(br, Gaussian):
            return Gaussian(K, err)
        s1, s2 = sh.sampler(), br.sampler()

        def sample(rng_, M_):
            return s1(rng_, M_) + a * s2(rng_, M_)

        return Sampled(K, sh.m + a * br.m, sample, err)

    def compile(self, w_in, compiler):
        at = compiler.where
        compiler.chain = None
        branch, wb = compiler.compile_seq(self.branch, w_in, f"{at} branch")
        if self.shortcut is None:
            short, ws = None, w_in
        else:
            compiler.chain = None
            short, ws = compiler.compile_seq(self.shortcut, w_in, f"{at} shortcut")
        compiler.where = at
        if wb != ws:
            raise compiler.error(f"the branch output width {wb} differs from the shortcut output width {ws}"
                                 + (" (identity shortcut: the input width); use a Dense shortcut or make the "
                                    "widths equal" if self.shortcut is None else ""))
        return ResidualOp(branch, short, self.alpha, w_in, wb), wb

    def to_torch_module(self, w_in, width, generator):
        """shortcut(x) + alpha * branch(x), each side the torch forms of its layers (identity shortcut when
        None)."""
        from meanfield.core.torch_modules import ResidualSum, build_sequence

        branch, wb = build_sequence(self.branch, w_in, width, generator)
        short, ws = (None, w_in) if self.shortcut is None else build_sequence(self.shortcut, w_in, width, generator)
        if wb != ws:
            raise ValueError(f"to_torch: Residual: the branch output width {wb} differs from the shortcut output "
                             f"width {ws}")
        return ResidualSum(branch, self.alpha, short), wb

    @classmethod
    def example(cls):
        from meanfield.layers.activation import Activation
        from meanfield.layers.dense import Dense
        from meanfield.layers.norms import LayerNorm

        return cls(branch=(Dense(1.1, 0.1), Activation("relu"), LayerNorm()), alpha=0.6)

    @classmethod
    def invalid_parameters(cls):
        return [{"branch": ()}, {"branch": ("relu",)}, {"branch": None}]


class ResidualOp(Op):
    def __init__(self, branch: list, shortcut: list | None, alpha: float, w_in: int, w_out: int):
        self.branch, self.shortcut, self.alpha = branch, shortcut, alpha
        self.w_in, self.w_out = w_in, w_out

    def forward(self, h, rt: Run):
        known = rt.known
        hb, cb = forward_seq(self.branch, h, rt)
        rt.known = known
        if self.shortcut is None:
            hs, cs = h, None
        else:
            hs, cs = forward_seq(self.shortcut, h, rt)
        rt.known = None
        return hs + self.alpha * hb, ((cb, cs) if rt.grad else None)

    def backward(self, g, cache, rt: Run):
        cb, cs = cache
        gb = backward_seq(self.branch, cb, g * self.alpha, rt)
        gs = g if self.shortcut is None else backward_seq(self.shortcut, cs, g, rt)
        return gs + gb

    def _all(self):
        return self.branch + (self.shortcut or [])

    def transient(self, n: int) -> int:
        return 3 * n * self.w_out + max(op.transient(n) for op in self._all())

    def cache_elems(self, n: int) -> int:
        return sum(op.cache_elems(n) for op in self._all())

    def flops(self, n: int) -> float:
        return sum(op.flops(n) for op in self._all()) + 2.0 * n * self.w_out


@dataclass(frozen=True, repr=False)
class Block(Layer):
    """A group of layers whose output is recorded as one step of a trajectory (inside a Residual branch, a
    plain sequence of layers)."""

    layers: tuple = field(default_factory=tuple)
    name: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "layers", coerce_layers("Block.layers", self.layers))
        if not self.layers:
            raise ValueError("Block: layers must contain at least one layer")
        for layer in self.layers:
            if isinstance(layer, Block):
                raise ValueError("Block: blocks cannot be nested; use Residual for sub-structures")

    @property
    def random(self) -> bool:  # a block starting with a random layer starts random
        return self.layers[0].random

    def sublayers(self) -> tuple:
        return self.layers

    @property
    def scale_degree(self):
        """The product of the layers' degrees (None if one is None)."""
        return sequence_degree(self.layers)

    def infinite(self, law, ctx):
        return ctx.run(self.layers, law)

    def compile(self, w_in, compiler):
        ops, w = compiler.compile_seq(self.layers, w_in, f"{compiler.where} block")
        return SequenceOp(ops, w_in, w), w

    def to_torch_module(self, w_in, width, generator):
        """torch.nn.Sequential of the layers' torch forms."""
        from meanfield.core.torch_modules import build_sequence

        return build_sequence(self.layers, w_in, width, generator)

    def to_dict(self) -> dict:
        d = {"type": "Block", "layers": [layer.to_dict() for layer in self.layers]}
        if self.name is not None:
            d["name"] = self.name
        return d

    def __repr__(self):
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Block[{inner}]" if self.name is None else f"Block {self.name!r}[{inner}]"

    @classmethod
    def example(cls):
        from meanfield.layers.activation import Activation
        from meanfield.layers.norms import LayerNorm

        return cls((Activation("gelu"), LayerNorm()))

    @classmethod
    def invalid_parameters(cls):
        return [{"layers": ()}, {"layers": (cls.example(),)}, {"layers": ("relu",)}]


class SequenceOp(Op):
    """Operations run one after another (a Block inside a structure)."""

    def __init__(self, ops: list, w_in: int, w_out: int):
        self.ops, self.w_in, self.w_out = ops, w_in, w_out

    def forward(self, h, rt: Run):
        return forward_seq(self.ops, h, rt)

    def backward(self, g, cache, rt: Run):
        return backward_seq(self.ops, cache, g, rt)

    def transient(self, n: int) -> int:
        return max(op.transient(n) for op in self.ops)

    def cache_elems(self, n: int) -> int:
        return sum(op.cache_elems(n) for op in self.ops)

    def flops(self, n: int) -> float:
        return sum(op.flops(n) for op in self.ops)
