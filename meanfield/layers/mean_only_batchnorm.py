"""Mean-only batch normalization (Salimans and Kingma 2016, section 2.2): subtract each feature's batch mean,
no division by the standard deviation. At initialization the learned bias is 0; in training the paper keeps a
running mean for evaluation, while both engines here use the batch statistics, as for BatchNorm.

Mean field (one unit's n-vector x): x -> P x with P = I - 11^T/n, a fixed linear map, so the rule is exact for
every law: K -> P K P, m -> m - mean(m), and a Gaussian stays Gaussian. Population rule (``exchangeable=True``,
infinite i.i.d. data): subtracting the population mean mu of a unit gives E[(x_a - mu)(x_b - mu)] = K_ab - c,
with c = E[x_a x_b] for two independent inputs (the mean off-diagonal entry of K).

Finite width: h - mean over the batch, per feature; its vector-Jacobian product is the same centering of the
output gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meanfield.core.law import Gaussian, Sampled
from meanfield.core.ops import Op, Run
from meanfield.layers.base import Layer

__all__ = ["MeanOnlyBatchNorm"]


@dataclass(frozen=True, repr=False)
class MeanOnlyBatchNorm(Layer):
    """Subtract each feature's batch mean, no scaling (Salimans and Kingma 2016): mlp(norm="mobn"), and with
    weight normalization mlp(norm="wn+mobn")."""

    batch_coupled = True
    norm_key = "mobn"

    #: subtracting the batch mean is linear
    scale_degree = 1

    def infinite(self, law, ctx):
        n = law.n
        P = np.eye(n) - 1.0 / n
        K = P @ law.K @ P
        K = 0.5 * (K + K.T)
        if isinstance(law, Gaussian):
            return Gaussian(K, law.mc_error)
        src = law.sampler()
        return Sampled(K, law.m - law.m.mean(), lambda rng, M: src(rng, M) @ P, law.mc_error)

    def population(self, law, ctx):
        n = law.n
        off = law.K[~np.eye(n, dtype=bool)]
        c = off.mean() if off.size else 0.0
        K = law.K - c
        if isinstance(law, Gaussian):
            return Gaussian(K, law.mc_error)

        def sample(rng, M):
            raise ValueError("propagate(exchangeable=True): a Monte Carlo rule after a population mean-only "
                             "BatchNorm of a non-Gaussian input is not supported")

        return Sampled(K, law.m - law.m.mean(), sample, law.mc_error)

    def on_features(self, F):
        return F - F.mean(axis=0, keepdims=True)

    def compile(self, w_in, compiler):
        return BatchCenterOp(w_in), w_in

    def to_torch_module(self, w_in, width, generator):
        """Subtract the batch mean in training mode, the running mean at evaluation, plus a trainable bias
        (0 at initialization), as Salimans and Kingma do."""
        from meanfield.core.torch_modules import BatchCenter

        return BatchCenter(w_in), w_in

    # 1/width theory: each unit's n-vector x -> P x
    fluctuation_kind = "unit"

    def unit_map(self, X):
        return X - X.mean(axis=-1, keepdims=True)


class BatchCenterOp(Op):
    """h - mean over the batch axis (per feature); the VJP centres the gradient the same way."""

    def __init__(self, w: int):
        self.w_in = self.w_out = w

    def forward(self, h, rt: Run):
        return h - rt.xp.mean(h, axis=-2, keepdims=True), None

    def backward(self, g, cache, rt: Run):
        return g - rt.xp.mean(g, axis=-2, keepdims=True)
