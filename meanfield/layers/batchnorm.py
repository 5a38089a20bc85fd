"""BatchNorm with batch statistics: each feature centred over the n inputs of the batch and divided by its
batch (population) standard deviation; no affine parameters at initialization, never running statistics.

Mean field (one unit's n-vector x):

- mode "exact" on a Gaussian input N(0, G): the batch-coupled law y = sqrt(n) P x / |P x|, P = I - 11^T/n,
  whose moments reduce to one dimension (Yang et al. 2019; `meanfield.core.law.BatchNormOfGaussian`). A
  positively homogeneous activation after it (relu, leaky_relu, abs, identity, step, sign: the
  BatchNorm-before-activation placement) is exact too, by the same reduction. On a non-Gaussian input (after
  an activation): Monte Carlo over the exact law of x, with the standard error reported in ``mc_error``.
- mode "large_batch": the n -> infinity approximation K -> P K P / (tr(P K P)/n) (Gaussian stays Gaussian).
- population (``exchangeable=True``: the n inputs stand for an infinite i.i.d. data set): population
  statistics, K -> (K - c) / (mean diag K - c) with c the mean off-diagonal entry, exact at infinite data.

Finite width: `StandardizeOp` along the batch axis; its vector-Jacobian product includes the batch coupling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from meanfield.core.law import BatchNormOfGaussian, Gaussian, Sampled, batchnorm_sampler, monte_carlo
from meanfield.core.validate import check_choice
from meanfield.layers.base import Layer
from meanfield.layers.norms import StandardizeOp

__all__ = ["BatchNorm", "batchnorm_exact", "batchnorm_large_batch", "batchnorm_population"]


@dataclass(frozen=True, repr=False)
class BatchNorm(Layer):
    """Batch norm with batch statistics (never running statistics): each feature is centred over the n
    inputs of the batch and divided by its batch standard deviation.

    mode="exact": the batch-coupled expectation (Yang et al. 2019); mode="large_batch": its n -> infinity
    approximation K -> P K P / (tr(P K P)/n), P = I - 11^T/n. Only the mean-field engine reads ``mode``.
    """

    mode: str = "exact"

    batch_coupled = True
    norm_key = "bn"

    def __post_init__(self):
        check_choice("BatchNorm", "mode", self.mode, ("exact", "large_batch"))

    #: standardizing over the batch is scale invariant
    scale_degree = 0

    def infinite(self, law, ctx):
        if self.mode == "large_batch":
            return batchnorm_large_batch(law)
        return batchnorm_exact(law, ctx)

    def population(self, law, ctx):
        return batchnorm_population(law)

    def on_features(self, F):
        C = F - F.mean(axis=0, keepdims=True)
        s = np.sqrt(np.mean(C * C, axis=0, keepdims=True))
        return np.divide(C, s, out=np.zeros_like(C), where=s > 0)

    def compile(self, w_in, compiler):
        return StandardizeOp(w_in, axis=-2, center=True), w_in

    def to_torch_module(self, w_in, width, generator):
        """torch.nn.BatchNorm1d: batch statistics in training mode (the mode `to_torch` returns), running
        statistics at evaluation; affine at gamma = 1, beta = 0 (trainable). ``mode`` is the mean-field
        engine's option and does not change the torch form."""
        from torch import nn

        from meanfield.core.torch_modules import DTYPE

        return nn.BatchNorm1d(w_in, dtype=DTYPE), w_in

    @classmethod
    def invalid_parameters(cls):
        return [{"mode": "running"}, {"mode": None}]

    @classmethod
    def for_mlp(cls, bn_mode="exact", **_):
        return cls(mode=bn_mode)

    # 1/width theory: each unit's n-vector x -> sqrt(n) P x / |P x| (mode "large_batch" approximates the
    # batch statistics and has no rule)
    @property
    def fluctuation_kind(self):
        return "unit" if self.mode == "exact" else None

    def unit_map(self, X):
        return batchnorm_sampler(lambda rng, M: X, X.shape[-1])(None, X.shape[0])


def batchnorm_exact(law, ctx):
    """The exact batch-coupled law of batch standardization: `BatchNormOfGaussian` on a Gaussian input, Monte
    Carlo over the exact law of x otherwise."""
    if isinstance(law, Gaussian):
        return BatchNormOfGaussian(law)
    return monte_carlo(batchnorm_sampler(law.sampler(), law.n), law.n, ctx.rng, ctx.M, law.mc_error)


def batchnorm_large_batch(law):
    """K -> P K P / (tr(P K P)/n), m -> (m - mean m) s: the large-batch approximation."""
    n = law.n
    P = np.eye(n) - 1.0 / n
    C = P @ law.K @ P
    tr = np.trace(C) / n
    s = 1.0 / math.sqrt(tr) if tr > 1e-12 * abs(np.trace(law.K) / n) and tr > 0 else 0.0
    Kn = C * s * s
    Kn = 0.5 * (Kn + Kn.T)
    if isinstance(law, Gaussian):
        return Gaussian(Kn, law.mc_error)
    src = law.sampler()
    return Sampled(Kn, (law.m - law.m.mean()) * s, lambda rng_, M_: (src(rng_, M_) @ P) * s, law.mc_error)


def batchnorm_population(law):
    """Population statistics of an exchangeable batch: K -> (K - c) / (mean diag K - c), m -> (m - mean m) s,
    with c the mean off-diagonal entry (exact at infinite data)."""
    n = law.n
    K = law.K
    off = K[~np.eye(n, dtype=bool)]
    c = off.mean() if off.size else 0.0
    v = np.diag(K).mean() - c
    s = 1.0 / math.sqrt(v) if v > 1e-12 * abs(np.diag(K).mean()) and v > 0 else 0.0
    Kn = (K - c) * s * s
    Kn = 0.5 * (Kn + Kn.T)
    if isinstance(law, Gaussian):
        return Gaussian(Kn, law.mc_error)

    def sample(rng_, M_):
        raise ValueError("propagate(exchangeable=True): a Monte Carlo rule after a population BatchNorm of "
                         "a non-Gaussian input is not supported")

    return Sampled(Kn, (law.m - law.m.mean()) * s, sample, law.mc_error)
