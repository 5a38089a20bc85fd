"""Concat: keep the input and append a branch's output, y = [x, branch(x)] along the features.

A stack of Concat layers gives every later layer all earlier ones as input: the all-to-all shortcut
connections W{l,ll}, ll < l, of Raiko, Valpola and LeCun (2012) and Vatanen, Raiko, Valpola and LeCun (2013)
(their code: ``X{l} = bias{l} + sum_{ll<l} W{l,ll} Y{ll}``, ``tvatanen/ltmlp-neuralnet``, ltmlp_ff.m lines
14-20), and the dense connectivity of DenseNet (Huang et al. 2017). With the state s_{l-1} = [Y_1, ..., Y_{l-1}]
(Y_1 the input), ``Concat(branch=[Linear(W_l, b_l), Activation(f_l)])`` computes Y_l = f_l(W_l s_{l-1} + b_l)
and the new state s_l = [s_{l-1}, Y_l], where the columns of W_l are the blocks W{l,1}, ..., W{l,l-1}; a final
Linear reads the whole state (the output layer's shortcuts).

Mean field. At infinite width the output's features are those of the input (a fraction 1 - share) and those of
the branch (a fraction ``share``), so one unit of y is a unit of x with probability 1 - share and a unit of
branch(x) otherwise: its law is that mixture, K -> (1 - share) K + share K_branch, m -> the same mixture of the
means (exact; later rules that need the law sample the mixture). ``share`` (in (0, 1)) is the branch's share of
the output width, w_branch / (w_in + w_branch); the infinite-width limit takes widths to infinity at these
ratios, so the mean-field rule needs it, and the simulator checks it against the actual widths. On the explicit
features of a deterministic prefix (the data, fixed Linear layers, activations) the layer is exact without
``share``: the features are concatenated.

Finite width: the concatenation of the input and the branch's output; the vector-Jacobian product splits the
output gradient, g_in = g_x + branch^T(g_branch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meanfield.core.law import Sampled
from meanfield.core.ops import Op, Run, backward_seq, forward_seq
from meanfield.core.validate import check_real
from meanfield.layers.base import Layer, coerce_layers, sequence_degree

__all__ = ["Concat"]


@dataclass(frozen=True, repr=False)
class Concat(Layer):
    """y = [x, branch(x)]: keep the input and append the branch's output (all-to-all shortcuts, DenseNet).

    Parameters
    ----------
    branch : sequence of layers
        The layers whose output is appended (e.g. ``[Linear(W, b), Activation(f)]``).
    share : float in (0, 1) or None
        The branch's share of the output width, w_branch / (w_in + w_branch): needed by the infinite-width
        rule (the mixture K -> (1 - share) K + share K_branch); the simulator checks it against the widths.
        None: only the exact rule on explicit features (a deterministic prefix) and the simulator.
    """

    branch: tuple = ()
    share: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "branch", coerce_layers("Concat.branch", self.branch))
        if not self.branch:
            raise ValueError("Concat: branch must contain at least one layer")
        object.__setattr__(self, "share", check_real("Concat", "share", self.share, 0.0, 1.0, lo_open=True,
                                                     hi_open=True, allow_none=True))

    def __repr__(self):
        sh = "" if self.share is None else f", share={self.share:g}"
        return f"Concat(branch={list(self.branch)!r}{sh})"

    def sublayers(self) -> tuple:
        return self.branch

    @property
    def scale_degree(self):
        """1 when the branch is (the identity half is linear), else None."""
        return 1 if sequence_degree(self.branch) == 1 else None

    def infinite(self, law, ctx):
        if self.share is None:
            raise ValueError("Concat: share=None, but the mean-field rule after a random layer needs share (the "
                             "branch's share of the output width, in (0, 1)); give share= or propagate the data "
                             "X through a deterministic prefix")
        br = ctx.run(self.branch, law)
        s = self.share
        K = (1.0 - s) * law.K + s * br.K
        m = (1.0 - s) * law.m + s * br.m
        src_x, src_b = law.sampler(), br.sampler()

        def sample(rng, M):
            pick = rng.random(M) < s
            out = np.empty((M, law.n))
            nb = int(pick.sum())
            if nb < M:
                out[~pick] = src_x(rng, M - nb)
            if nb:
                out[pick] = src_b(rng, nb)
            return out

        return Sampled(0.5 * (K + K.T), m, sample, max(law.mc_error, br.mc_error))

    def population(self, law, ctx):  # the branch's own population rules are applied by ctx.run
        return self.infinite(law, ctx)

    def on_features(self, F):
        G = F
        for layer in self.branch:
            G = layer.on_features(G)
            if G is None:
                return None
        return np.concatenate([F, G], axis=1)

    def compile(self, w_in, compiler):
        at = compiler.where
        compiler.chain = None
        ops, wb = compiler.compile_seq(self.branch, w_in, f"{at} branch")
        compiler.where = at
        compiler.chain = None
        if self.share is not None:
            actual = wb / (w_in + wb)
            if abs(actual - self.share) > 1e-12:
                raise compiler.error(f"share={self.share:g} but the branch appends {wb} features to {w_in}, a share "
                                     f"of {actual:.6g}: the two engines would describe different networks; set "
                                     f"share={actual:.6g} or change the widths")
        return ConcatOp(ops, w_in, wb), w_in + wb

    def to_torch_module(self, w_in, width, generator):
        """[x, branch(x)]: the torch forms of the branch's layers, concatenated to the input."""
        from meanfield.core.torch_modules import Concatenation, build_sequence

        branch, wb = build_sequence(self.branch, w_in, width, generator)
        return Concatenation(branch), w_in + wb

    @classmethod
    def example(cls):
        from meanfield.layers.activation import Activation
        from meanfield.layers.dense import Dense

        return cls(branch=(Dense(1.1, 0.1), Activation("tanh")), share=0.5)

    @classmethod
    def invalid_parameters(cls):
        return [{"branch": ()}, {"branch": ("relu",)}, {"branch": None},
                {"branch": cls.example().branch, "share": 1.0}, {"branch": cls.example().branch, "share": -0.2}]


class ConcatOp(Op):
    """[h, branch(h)] along the features; the VJP adds the input part of the gradient to the branch's VJP."""

    def __init__(self, branch: list, w_in: int, w_branch: int):
        self.branch = branch
        self.w_in, self.w_branch = w_in, w_branch
        self.w_out = w_in + w_branch

    def forward(self, h, rt: Run):
        xp = rt.xp
        hb, cache = forward_seq(self.branch, h, rt)
        rt.known = None
        lead = np.broadcast_shapes(tuple(h.shape[:-1]), tuple(hb.shape[:-1]))
        hx = xp.broadcast_to(h, (*lead, self.w_in))
        hb = xp.broadcast_to(hb, (*lead, self.w_branch))
        concat = getattr(xp, "concat", None) or xp.concatenate
        return concat([hx, hb], axis=-1), (cache if rt.grad else None)

    def backward(self, g, cache, rt: Run):
        gx, gb = g[..., : self.w_in], g[..., self.w_in:]
        return gx + backward_seq(self.branch, cache, gb, rt)

    def transient(self, n: int) -> int:
        return 3 * n * self.w_out + max(op.transient(n) for op in self.branch)

    def cache_elems(self, n: int) -> int:
        return sum(op.cache_elems(n) for op in self.branch)

    def flops(self, n: int) -> float:
        return sum(op.flops(n) for op in self.branch) + 2.0 * n * self.w_out
