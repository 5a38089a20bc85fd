"""Max pooling over k consecutive units (the feature count shrinks by k); it creates initial guessing bias even
in a linear network (Francazi et al. 2024).

Mean field: MaxPool(2) on a Gaussian input is exact: max(x1, x2) = (s + |d|)/sqrt(2) with s = (x1 + x2)/sqrt(2)
and d = (x1 - x2)/sqrt(2) independent N(0, K), so K -> (K + E[|d_a| |d_b|])/2 (the abs arc-cosine kernel) and
m_a = sqrt(K_aa / pi). MaxPool(k > 2), and any k on a non-Gaussian input: Monte Carlo over the exact law of
the input, with the standard error reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import hermite
from meanfield.core.law import Gaussian, Sampled, monte_carlo
from meanfield.core.ops import Op, Run
from meanfield.core.validate import check_int
from meanfield.layers.activation import gaussian_moments
from meanfield.layers.base import Layer

__all__ = ["MaxPool"]

_ABS = hermite.activation("abs")


@dataclass(frozen=True, repr=False)
class MaxPool(Layer):
    """Max pooling over k consecutive units (the feature count shrinks by k). Creates initial guessing
    bias even in a linear network (Francazi et al. 2024)."""

    k: int = 2

    def __post_init__(self):
        object.__setattr__(self, "k", check_int("MaxPool", "k", self.k, lo=1))

    def infinite(self, law, ctx):
        k = self.k
        if k == 1:
            return law
        src = law.sampler()
        n = law.n

        def sample(rng_, M_):
            return src(rng_, M_ * k).reshape(M_, k, n).max(axis=1)

        if k == 2 and isinstance(law, Gaussian):
            d = np.diag(law.K).copy()
            K_abs, _ = gaussian_moments(_ABS, law.K)
            K = 0.5 * (law.K + K_abs)
            m = np.sqrt(np.clip(d, 0.0, None) / math.pi)
            return Sampled(0.5 * (K + K.T), m, sample, law.mc_error)
        return monte_carlo(sample, n, ctx.rng, ctx.M, law.mc_error)

    def on_features(self, F):
        if F.shape[1] % self.k:
            raise ValueError(f"MaxPool: k={self.k} does not divide the width {F.shape[1]}")
        return F.reshape(F.shape[0], -1, self.k).max(axis=2)

    def compile(self, w_in, compiler):
        if w_in % self.k:
            raise compiler.error(f"MaxPool k={self.k} must divide the width {w_in}; choose a width that is a "
                                 f"multiple of {self.k}")
        return MaxPoolOp(self.k, w_in), w_in // self.k

    def to_torch_module(self, w_in, width, generator):
        """The max over k consecutive units."""
        from meanfield.core.torch_modules import UnitMaxPool

        if w_in % self.k:
            raise ValueError(f"to_torch: MaxPool k={self.k} must divide the width {w_in}")
        return UnitMaxPool(self.k), w_in // self.k

    @classmethod
    def invalid_parameters(cls):
        return [{"k": 0}, {"k": 1.5}, {"k": True}]


class MaxPoolOp(Op):
    def __init__(self, k: int, w_in: int):
        self.k = k
        self.w_in = w_in
        self.w_out = w_in // k

    def forward(self, h, rt: Run):
        xp = rt.xp
        s0, n, w = h.shape
        hr = xp.reshape(h, (s0, n, w // self.k, self.k))
        y = xp.max(hr, axis=-1)
        cache = xp.argmax(hr, axis=-1) if rt.grad else None
        return y, cache

    def backward(self, g, cache, rt: Run):
        xp = rt.xp
        s0, n, wo = g.shape
        onehot = xp.astype(xp.reshape(xp.arange(self.k), (1, 1, 1, self.k)) == xp.expand_dims(cache, axis=-1),
                           g.dtype)
        return xp.reshape(xp.expand_dims(g, axis=-1) * onehot, (s0, n, wo * self.k))

    def cache_elems(self, n: int) -> int:
        return n * self.w_out
