"""Joudaki et al.'s mean-field centring and normalization: constants of the activation, not of the sample.

Source: A. Joudaki, H. Daneshmand and F. Bach, "On the impact of activation and normalization in obtaining
isometric embeddings at initialization" (NeurIPS 2023), and the authors' code (github.com/ajoudaki/
deepnet-isometry, ``validations.ipynb``, function ``run_experiments``): after ``X = F(X @ W)``,

- ``centering == 'MF'``:      ``means = torch.Tensor([c0])``, ``X = X - means``;
- ``normalization == 'MF'``:  ``norms = torch.Tensor([(csum2 - c0**2)**0.5])``, ``X = X / norms``,

with ``c0, c1, csum2 = act_info(activation)`` the moments E F(z), E z F(z), E F(z)^2 of z ~ N(0, 1) (the
authors estimate them from 2e6 samples; here they are exact, `hermite`). So the paper's mean-field centring
subtracts the Hermite coefficient c_0 = E f(z) and its mean-field normalization divides by
sqrt(sum_{k>=1} c_k^2) = sqrt(E f(z)^2 - c_0^2): two numbers of the activation at unit pre-activation
variance, the same for every sample, every layer and every network (the normalization divides by the same
constant whether or not a centring precedes it, as the authors' code does).

`MeanFieldCenter` and `MeanFieldScale` are these layers (``mlp(centering="meanfield")`` and
``mlp(norm="meanfield")``). At infinite width, after Dense(1, 0) on inputs of unit mean square, they centre
and normalize exactly and the correlations follow the centred kernel kappa of the activation (the paper's
mean-field Gram recursion); at finite width nothing corrects the sample norms, and their fluctuations
accumulate with depth (the paper's ``mf_vs_finite`` figure).

The toolkit's extension, ``Center(mode="per_sample")`` and ``Scale(mode="per_sample")`` in
`meanfield.layers.norms`, evaluates the same mean-field constants at each sample's own empirical
pre-activation variance q_a: the same infinite-width limit, but at finite width it rescales by the sample's
actual norm and so acts like a real normalization. It is not the paper's definition.

Mean field (one unit's n-vector x with second moments K and means m): MeanFieldCenter is the exact affine
map K -> K - c_0 (m 1^T + 1 m^T) + c_0^2, m -> m - c_0; MeanFieldScale K -> K / s^2, m -> m / s with
s^2 = E f(z)^2 - c_0^2. Finite width: x - c_0 and x / s, with vector-Jacobian products g and g / s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import hermite
from meanfield.core.ops import Op, Run
from meanfield.layers.base import Layer

__all__ = ["MeanFieldCenter", "MeanFieldScale"]


def _activation(owner: str, act) -> hermite.Activation:
    if isinstance(act, dict):
        return hermite.Activation.from_dict(act)
    try:
        return hermite.activation(act)
    except ValueError as exc:
        raise ValueError(f"{owner}: act={act!r} must be an activation (name, callable, expression or "
                         f"hermite.Activation): {exc}") from None


def _constants(act: hermite.Activation) -> tuple[float, float]:
    """(c_0, E f(z)^2) at z ~ N(0, 1), exact (`hermite`)."""
    c0 = float(np.asarray(hermite.coefficients(act, 0, q=1.0)).reshape(-1)[0])
    m2 = float(hermite.second_moment(act, 1.0))
    return c0, m2


@dataclass(frozen=True, repr=False)
class MeanFieldCenter(Layer):
    """Joudaki et al.'s mean-field centring: subtract the constant c_0 = E f(z), z ~ N(0, 1), of the
    activation ``act`` (the paper's definition; authors' code ``centering == 'MF'``, ``X = X - c0``).

    The constant is the same for every sample, layer and network: at infinite width it centres exactly
    only where the pre-activations have unit variance (Dense(1, 0) on inputs of unit mean square, as in the
    paper's protocol). The toolkit's per-sample variant is ``Center(mode="per_sample")`` (c_0 at the
    sample's own empirical pre-activation variance); ``Center(mode="layer")`` subtracts the empirical mean.

    Mean field: K -> K - c_0 (m 1^T + 1 m^T) + c_0^2, m -> m - c_0 (exact). Finite width: x - c_0.

    Parameters
    ----------
    act : activation (name, callable, expression or `hermite.Activation`)
        The activation whose c_0 is subtracted: in the paper's protocol, the one just before.
    """

    act: Any

    def __post_init__(self):
        a = _activation("MeanFieldCenter", self.act)
        object.__setattr__(self, "act", a)
        object.__setattr__(self, "_c0", _constants(a)[0])

    @property
    def constant(self) -> float:
        """c_0 = E f(z), z ~ N(0, 1)."""
        return self._c0

    def __repr__(self):
        return f"MeanFieldCenter({self.act.name!r})"

    @property
    def scale_degree(self):
        """Subtracting the constant c_0 commutes with scaling only when c_0 = 0."""
        return 1 if self._c0 == 0.0 else None

    def infinite(self, law, ctx):
        return law.affine(np.full(law.n, self._c0), None)

    def on_features(self, F):
        return F - self._c0

    def compile(self, w_in, compiler):
        return ShiftOp(self._c0, w_in), w_in

    def to_torch_module(self, w_in, width, generator):
        """x - c_0, the same constant as both engines use."""
        from meanfield.core.torch_modules import ConstantAffine

        return ConstantAffine(shift=self.constant), w_in

    @classmethod
    def example(cls):
        return cls("relu")

    @classmethod
    def invalid_parameters(cls):
        return [{"act": "no_such_activation"}, {"act": 3.0}]

    # 1/width theory: x_a -> x_a - c_0, a fixed per-sample affine map
    fluctuation_kind = "sample"

    def sample_affine(self, sq, m, chain=None):
        sq = np.asarray(sq, dtype=np.float64)
        return np.ones_like(sq), np.full_like(sq, -self._c0)


@dataclass(frozen=True, repr=False)
class MeanFieldScale(Layer):
    """Joudaki et al.'s mean-field normalization: divide by the constant sqrt(sum_{k>=1} c_k^2) =
    sqrt(E f(z)^2 - c_0^2), z ~ N(0, 1), of the activation ``act`` (the paper's definition; authors' code
    ``normalization == 'MF'``, ``X = X / (csum2 - c0**2)**0.5``, with or without a centring before it).

    ``mlp(norm="meanfield")`` inserts it. The toolkit's per-sample variant is ``Scale(mode="per_sample")``
    (the constant at the sample's own empirical pre-activation variance, so that it rescales like a real
    normalization); ``Scale(mode="layer")`` divides by the empirical root mean square.

    Mean field: K -> K / s^2, m -> m / s, s^2 = E f(z)^2 - c_0^2 (exact). Finite width: x / s.

    Parameters
    ----------
    act : activation with Var f(z) > 0
    """

    act: Any

    norm_key = "meanfield"

    def __post_init__(self):
        a = _activation("MeanFieldScale", self.act)
        c0, m2 = _constants(a)
        var = m2 - c0 * c0
        if not var > 1e-12 * max(m2, 1e-300):  # a constant activation, up to rounding
            raise ValueError(f"MeanFieldScale: act={a.name!r} has Var f(z) = {var!r}; the normalization "
                             "constant sqrt(sum_{k>=1} c_k^2) must be > 0 (a non-constant activation)")
        object.__setattr__(self, "act", a)
        object.__setattr__(self, "_s", math.sqrt(var))

    @property
    def constant(self) -> float:
        """s = sqrt(E f(z)^2 - c_0^2), z ~ N(0, 1)."""
        return self._s

    def __repr__(self):
        return f"MeanFieldScale({self.act.name!r})"

    #: dividing by a constant is linear
    scale_degree = 1

    def infinite(self, law, ctx):
        return law.affine(None, np.full(law.n, 1.0 / self._s))

    def on_features(self, F):
        return F / self._s

    def compile(self, w_in, compiler):
        return ScaleOp(1.0 / self._s, w_in), w_in

    def to_torch_module(self, w_in, width, generator):
        """x / sqrt(sum_{k>=1} c_k^2), the same constant as both engines use."""
        from meanfield.core.torch_modules import ConstantAffine

        return ConstantAffine(scale=1.0 / self.constant), w_in

    @classmethod
    def example(cls):
        return cls("tanh")

    @classmethod
    def invalid_parameters(cls):
        return [{"act": "no_such_activation"}, {"act": "0*x + 1"}]

    @classmethod
    def for_mlp(cls, activation="relu", **_):
        return cls(activation)

    # 1/width theory: x_a -> x_a / s, a fixed per-sample affine map
    fluctuation_kind = "sample"

    def sample_affine(self, sq, m, chain=None):
        sq = np.asarray(sq, dtype=np.float64)
        return np.full_like(sq, 1.0 / self._s), np.zeros_like(sq)


class ShiftOp(Op):
    """x - c (a constant): the vector-Jacobian product is the identity."""

    def __init__(self, c: float, w: int):
        self.c = float(c)
        self.w_in = self.w_out = w

    def forward(self, h, rt: Run):
        return h - self.c, None

    def backward(self, g, cache, rt: Run):
        return g


class ScaleOp(Op):
    """x * a (a constant): the vector-Jacobian product is g * a."""

    def __init__(self, a: float, w: int):
        self.a = float(a)
        self.w_in = self.w_out = w

    def forward(self, h, rt: Run):
        return h * self.a, None

    def backward(self, g, cache, rt: Run):
        return g * self.a
