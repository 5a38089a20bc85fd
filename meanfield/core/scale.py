"""Scale-free recursions: the mean-field law at any scale, with its scale carried as a logarithm.

Deep networks drive the variance q of the features geometrically (ReLU with sigma_w = 0.1 divides it by
200 per block, sigma_w = 2 doubles it), and float64 holds q only within about [1e-308, 1e308]: long before
q itself leaves that range, products q_a q_b under- or overflow and correlations go wrong. The engine
therefore carries a law whose second moments are K_true = exp(L) K, with K of order one and the log-scale L
in the law (``Law.log_scale``, 0 by default):

- a layer whose rule commutes with scaling, rule(s K) = s^d rule(K) (``Layer.scale_degree`` = d: a Dense
  layer without bias and a positively homogeneous activation of degree k: d = 1 and k; every normalization:
  d = 0; centring, max pooling: d = 1), acts on the normalized law and L becomes d L: exact at any scale;
- a layer that has an exact limit at the law's scale (``Layer.scaled_rule``: a Dense layer with bias whose
  bias is below the rounding of a huge variance, an activation with f(0) = 0 that is linear to rounding
  at a tiny variance) uses it;
- any other layer gets the true law, K exp(L), computed in float64 (`materialize`): exact whenever the
  true variances are float64 numbers, and a ValueError naming the block, the layer and the variance when
  they are not;
- after every block the driver moves the scale of K into L when K's mean variance leaves [1e-64, 1e64]
  (`renormalize`).

`meanfield.propagate(net, K0, scale_free=True)` returns the normalized Grams with the log-scales in
``traj.info["log_scale"]``; without it, the true Grams, and a ValueError where a true variance is not a
(normal) float64 number.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from meanfield.core.law import Features, Law, Unknown

__all__ = ["RENORMALIZE_AT", "renormalize", "materialize", "with_log_scale", "true_scale_problem"]

#: the normalized law is rescaled when its mean variance leaves [1/RENORMALIZE_AT, RENORMALIZE_AT]
RENORMALIZE_AT = 1e64
#: a true variance must lie in [TINY, HUGE]: float64's normal range, with room for products and sums
TINY = np.finfo(np.float64).tiny
HUGE = np.finfo(np.float64).max / 16


def _mean_variance(law: Law) -> float:
    d = np.diag(law.K)
    return float(np.mean(d)) if d.size else 1.0


def with_log_scale(law: Law, log_scale: float) -> Law:
    """``law`` carrying the log-scale L (a shallow copy when it already carries another one)."""
    if law.log_scale == log_scale:
        return law
    if "log_scale" in vars(law) or law.log_scale != 0.0:
        law = copy.copy(law)
    law.log_scale = float(log_scale)
    return law


def renormalize(law: Law) -> Law:
    """Move the scale of K into ``law.log_scale`` when K's mean variance leaves [1e-64, 1e64] (exact: a law
    rescales exactly, `Law.affine`); explicit features and the raw input are left as they are."""
    if isinstance(law, (Features, Unknown)):
        return law
    s = _mean_variance(law)
    if not (0.0 < s < math.inf) or 1.0 / RENORMALIZE_AT <= s <= RENORMALIZE_AT:
        return law
    out = law.affine(None, np.full(law.n, 1.0 / math.sqrt(s)))
    return with_log_scale(out, law.log_scale + math.log(s))


def true_scale_problem(K: np.ndarray, log_scale: float) -> str | None:
    """Why exp(log_scale) K is not representable in float64 (a sentence naming the variance), or None."""
    if log_scale == 0.0:
        return None
    d = np.abs(np.diag(K))
    d = d[d > 0]
    if d.size == 0:
        return None
    lo = math.log(float(d.min())) + log_scale
    hi = math.log(float(d.max())) + log_scale
    if hi > math.log(HUGE):
        return f"the largest variance of the features, 10^{hi / math.log(10):.1f}, overflows float64"
    if lo < math.log(TINY):
        return (f"the smallest variance of the features, 10^{lo / math.log(10):.1f}, is below float64's normal "
                "range (its relative precision would be lost)")
    return None


def materialize(law: Law, where: str) -> Law:
    """The law with its true second moments exp(L) K (log-scale 0), for a layer that needs the true scale.

    A true variance below float64's range becomes 0 or a subnormal, exactly as float64 arithmetic would round
    it (right for every layer that is continuous at zero variance, e.g. a Dense layer with bias); one above
    it raises a ValueError naming ``where`` (block and layer).
    """
    L = law.log_scale
    if L == 0.0:
        return law
    problem = true_scale_problem(law.K, L)
    if problem is not None and L > 0:
        raise ValueError(f"propagate: {where}: {problem}, and the layer has no rule at that scale (its "
                         "scale_degree is None and it has no scaled_rule): the true Gram is not a float64 "
                         "number. Lower sigma_w or the depth, or add a normalization")
    out = law.affine(None, np.full(law.n, math.exp(0.5 * L)))
    return with_log_scale(out, 0.0)
