"""Layers with weights: Dense (random Gaussian), WeightNormDense (Salimans and Kingma 2016), Linear (fixed).

Dense(sigma_w, sigma_b): W_ij ~ N(0, sigma_w^2 / fan_in), b_i ~ N(0, sigma_b^2).

- Mean field: K -> sigma_w^2 K + sigma_b^2 11^T, m -> 0; the output is a centred Gaussian whatever the
  input (central limit over fan_in; Neal 1996, Poole et al. 2016).
- Finite width: H -> H W + 1 b^T, or the exact shortcut: given the features H of the previous layer, the
  pre-activations are, neuron by neuron, i.i.d. N(0, C) with C = sigma_w^2 K_hat + sigma_b^2 11^T and
  K_hat = H H^T / fan_in, so width standard normal n-vectors Z and a square root A A^T = C (Cholesky, or the
  eigen square root where it fails or is numerically singular) sample them exactly at O(n^2 width) instead
  of O(n width^2). The same holds for the data-dependent weight-norm init (a Gaussian pre-activation of
  covariance K_hat, then batch standardization), and for the fixed weight-norm init when fan_in >= n: writing
  H = U S V^T, the projections z = V_n^T v of v ~ N(0, I_fan_in) on the first n right singular vectors are
  N(0, I_n) and independent of the remaining fan_in - n coordinates, so
  H v / ||v|| = M z / sqrt(||z||^2 + chi^2_{fan_in - n}) with M M^T = H H^T. Explicit weights are used where
  the shortcut is not exact (gradients need the weights themselves), where it would cost more (n comparable
  to the width), or when asked (``explicit_weights``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from meanfield.core.law import Features, Gaussian, Sampled
from meanfield.core.linalg import mT, sqrt_psd, standardize
from meanfield.core.ops import EIGH_COST, RNG_COST, Op, Run
from meanfield.core.validate import check_choice, check_int, check_real
from meanfield.layers.base import Layer
from meanfield.layers.batchnorm import batchnorm_exact, batchnorm_population

__all__ = ["Dense", "WeightNormDense", "Linear"]


def _check_width(owner: str, width):
    if width is None:
        return None
    return check_int(owner, "width", width, lo=1)


def _bias_below_rounding(gain: float, sigma_b: float, law):
    """gain^2 K + sigma_b^2 at a true scale exp(L) so large that sigma_b^2 is below 1e-40 of every variance:
    the bias-free rule, exact to rounding, keeping the log-scale (None when the bias still counts)."""
    d = np.diag(law.K)
    if law.log_scale <= 0 or d.size == 0 or d.min() <= 0:
        return None
    if math.log(sigma_b**2 * 1e40) >= math.log(gain**2 * float(d.min())) + law.log_scale:
        return None
    out = Gaussian(gain**2 * law.K, law.mc_error)
    out.log_scale = law.log_scale
    return out


@dataclass(frozen=True, repr=False)
class Dense(Layer):
    """Fully connected layer: W_ij ~ N(0, sigma_w^2 / fan_in), b_i ~ N(0, sigma_b^2).

    Mean field: K -> sigma_w^2 K + sigma_b^2 (Neal 1996; Poole et al. 2016). ``width`` fixes the number
    of output features (None: the simulator's width).
    """

    sigma_w: float = 1.0
    sigma_b: float = 0.0
    width: int | None = None

    random = True
    weighted = True

    def __post_init__(self):
        object.__setattr__(self, "sigma_w", check_real("Dense", "sigma_w", self.sigma_w, lo=0.0))
        object.__setattr__(self, "sigma_b", check_real("Dense", "sigma_b", self.sigma_b, lo=0.0))
        object.__setattr__(self, "width", _check_width("Dense", self.width))

    @property
    def scale_degree(self):
        """1 without bias; with a bias the rule needs the true scale (or `scaled_rule`)."""
        return 1 if self.sigma_b == 0 else None

    def scaled_rule(self, law, ctx):
        """At a variance so large that sigma_b^2 is below its rounding (1e-40 of it), the bias-free rule."""
        return _bias_below_rounding(self.sigma_w, self.sigma_b, law)

    def infinite(self, law, ctx):
        return Gaussian(self.sigma_w**2 * law.K + self.sigma_b**2)

    def compile(self, w_in, compiler):
        w_out = compiler.block_width if self.width is None else self.width
        sc = _use_shortcut(compiler, "dense", w_in, w_out)
        return DenseOp("dense", w_in, w_out, self.sigma_w, self.sigma_b, 1.0, sc, compiler.host_staged), w_out

    def to_torch_module(self, w_in, width, generator):
        """torch.nn.Linear with weights N(0, sigma_w^2 / fan_in) and biases N(0, sigma_b^2), both trainable."""
        from torch import nn

        from meanfield.core.torch_modules import DTYPE, gaussian_

        w_out = width if self.width is None else self.width
        lin = nn.Linear(w_in, w_out, dtype=DTYPE)
        gaussian_(lin.weight, self.sigma_w / math.sqrt(w_in), generator)
        gaussian_(lin.bias, self.sigma_b, generator)
        return lin, w_out

    @classmethod
    def example(cls):
        return cls(sigma_w=1.3, sigma_b=0.2)

    @classmethod
    def invalid_parameters(cls):
        return [{"sigma_w": -1.0}, {"sigma_b": float("nan")}, {"width": 0}, {"width": 2.5}, {"sigma_w": "a"}]

    # 1/width theory: given the previous empirical Gram K_hat, units are i.i.d. N(0, sigma_w^2 K_hat + sigma_b^2)
    fluctuation_kind = "random"


@dataclass(frozen=True, repr=False)
class WeightNormDense(Layer):
    """Weight-normalized dense layer w_i = g v_i / ||v_i|| (Salimans and Kingma 2016).

    init="fixed": every row has norm g and a uniformly random direction, so the pre-activation
    w_i . x has variance g^2 ||x||^2 / fan_in = g^2 K(x): at infinite width this is Dense(sigma_w=g).
    On the data X itself (finite fan-in d) the pre-activations are g times the projection of a uniform
    direction on the sphere, not Gaussian: the mean-field engine samples that exact law (Monte Carlo) for
    the rules that follow.
    init="data": the data-dependent initialization, g and b chosen so that every pre-activation has
    batch mean 0 and batch standard deviation 1: at infinite width, Dense followed by batch
    standardization of each feature (the exact BatchNorm rule; batch-coupled).
    """

    g: float = 1.0
    init: str = "fixed"
    sigma_b: float = 0.0
    width: int | None = None

    random = True
    weighted = True
    norm_key = "wn"
    replaces_dense = True

    def __post_init__(self):
        object.__setattr__(self, "g", check_real("WeightNormDense", "g", self.g, lo=0.0))
        object.__setattr__(self, "sigma_b", check_real("WeightNormDense", "sigma_b", self.sigma_b, lo=0.0))
        check_choice("WeightNormDense", "init", self.init, ("fixed", "data"))
        object.__setattr__(self, "width", _check_width("WeightNormDense", self.width))

    @property
    def batch_coupled(self) -> bool:  # the data init standardizes each feature over the batch
        return self.init == "data"

    @property
    def scale_degree(self):
        """0 for the data-dependent init (a batch standardization), 1 for init="fixed" without bias."""
        if self.init == "data":
            return 0
        return 1 if self.sigma_b == 0 else None

    def scaled_rule(self, law, ctx):
        """init="fixed" at a variance so large that sigma_b^2 is below its rounding: the bias-free rule."""
        return _bias_below_rounding(self.g, self.sigma_b, law) if self.init == "fixed" else None

    def infinite(self, law, ctx):
        if self.init == "fixed" and isinstance(law, Features):
            return _weightnorm_on_data(law.F, self.g, self.sigma_b)
        if self.init == "fixed":
            return Gaussian(self.g**2 * law.K + self.sigma_b**2)
        return batchnorm_exact(Gaussian(law.K), ctx)

    def population(self, law, ctx):
        if self.init == "data":
            return batchnorm_population(Gaussian(law.K))
        return self.infinite(law, ctx)

    def compile(self, w_in, compiler):
        w_out = compiler.block_width if self.width is None else self.width
        kind = "wn_fixed" if self.init == "fixed" else "wn_data"
        sc = _use_shortcut(compiler, kind, w_in, w_out)
        return DenseOp(kind, w_in, w_out, self.g, self.sigma_b, self.g, sc, compiler.host_staged), w_out

    def to_torch_module(self, w_in, width, generator):
        """torch.nn.Linear under torch's weight-norm parametrization w_i = g_i v_i / ||v_i|| (v Gaussian, so
        each direction is uniform). init="fixed": every g_i = g, biases N(0, sigma_b^2). init="data": the
        first forward pass in training mode sets g_i = 1/sigma_i, b_i = -mu_i/sigma_i from that batch
        (Salimans and Kingma 2016)."""
        from meanfield.core.torch_modules import DataInitWeightNorm, weight_norm_linear

        w_out = width if self.width is None else self.width
        if self.init == "fixed":
            return weight_norm_linear(w_in, w_out, self.g, self.sigma_b, generator), w_out
        return DataInitWeightNorm(weight_norm_linear(w_in, w_out, 1.0, 0.0, generator)), w_out

    @classmethod
    def example(cls):
        return cls(g=1.2, sigma_b=0.1)

    @classmethod
    def invalid_parameters(cls):
        return [{"g": -1.0}, {"init": "random"}, {"sigma_b": -0.1}, {"width": 0}]

    @classmethod
    def for_mlp(cls, sigma_w=1.0, sigma_b=0.0, wn_init="fixed", **_):
        return cls(g=sigma_w, init=wn_init, sigma_b=sigma_b)

    # 1/width theory: init "fixed" is Dense(g) with a per-unit scale s, s^2 = fan_in / chi^2_fan_in (init "data":
    # no rule)
    fluctuation_fan_in = True

    @property
    def fluctuation_kind(self):
        return "random" if self.init == "fixed" else None


def _weightnorm_on_data(F: np.ndarray, g: float, sigma_b: float) -> Sampled:
    """WeightNormDense(fixed) on explicit features F (n, d) of finite fan-in d: h = g (F u) + b with u
    uniform on the unit sphere of R^d. The second moments are Dense's (g^2 F F^T / d + sigma_b^2) but the
    law is a spherical projection, Gaussian only as d -> infinity: later rules sample it exactly."""
    d = F.shape[1]
    K = g * g * (F @ F.T) / d + sigma_b**2

    def sample(rng, M):
        z = rng.standard_normal((M, d))
        u = z / np.linalg.norm(z, axis=1, keepdims=True)
        return g * (u @ F.T) + sigma_b * rng.standard_normal((M, 1))

    return Sampled(K, np.zeros(F.shape[0]), sample)


@dataclass(frozen=True, repr=False, eq=False)
class Linear(Layer):
    """A fixed (deterministic) affine map x -> W x + b with given weights, W of shape (out, in).

    Used for constructed networks such as the width-3 LN-Net of `meanfield.layernorm`. It has no
    infinite-width limit: the mean-field engine applies it exactly to the explicit features of a
    deterministic prefix of the network (input data X, then fixed layers and norms), and raises a
    ValueError after a random layer. The simulator applies the same weights in every network.
    """

    W: Any = None
    b: Any = None

    weighted = True
    deterministic_only = True

    def __post_init__(self):
        W = np.array(self.W, dtype=np.float64)
        if W.ndim != 2 or W.size == 0 or not np.all(np.isfinite(W)):
            raise ValueError(f"Linear: W must be a finite 2-D (out, in) array, got shape {W.shape}")
        b = np.zeros(W.shape[0]) if self.b is None else np.array(self.b, dtype=np.float64).reshape(-1)
        if b.shape != (W.shape[0],) or not np.all(np.isfinite(b)):
            raise ValueError(f"Linear: b must be a finite vector of length {W.shape[0]}, got shape {b.shape}")
        W.setflags(write=False)
        b.setflags(write=False)
        object.__setattr__(self, "W", W)
        object.__setattr__(self, "b", b)

    @property
    def width(self) -> int:
        return int(self.W.shape[0])

    def infinite(self, law, ctx):
        raise ValueError("propagate: a Linear layer (fixed weights, finite width) has no infinite-width rule; it "
                         "can only act on the explicit features of a deterministic prefix (pass the data X and "
                         "put no random layer before it)")

    def on_features(self, F):
        if F.shape[1] != self.W.shape[1]:
            raise ValueError(f"Linear: W expects {self.W.shape[1]} input features, got {F.shape[1]}")
        return F @ self.W.T + self.b

    def compile(self, w_in, compiler):
        if self.W.shape[1] != w_in:
            raise compiler.error(f"W has {self.W.shape[1]} input features but the layer receives {w_in}; the "
                                 "width before it must equal W.shape[1]")
        return LinearOp(np.asarray(self.W, dtype=np.float64), np.asarray(self.b, dtype=np.float64)), self.width

    def to_torch_module(self, w_in, width, generator):
        """torch.nn.Linear holding W and b (trainable, starting at the given values)."""
        import torch
        from torch import nn

        from meanfield.core.torch_modules import DTYPE

        if self.W.shape[1] != w_in:
            raise ValueError(f"to_torch: Linear: W has {self.W.shape[1]} input features but the layer receives "
                             f"{w_in}")
        lin = nn.Linear(w_in, self.width, dtype=DTYPE)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(np.array(self.W), dtype=DTYPE))
            lin.bias.copy_(torch.tensor(np.array(self.b), dtype=DTYPE))
        return lin, self.width

    @classmethod
    def example(cls):
        rng = np.random.default_rng(0)
        return cls(W=rng.standard_normal((3, 3)) / np.sqrt(3.0), b=0.1 * rng.standard_normal(3))

    @classmethod
    def invalid_parameters(cls):
        return [{"W": [1.0, 2.0]}, {"W": [[1.0, float("nan")]]}, {"W": [[1.0, 2.0]], "b": [1.0, 2.0]}]

    def to_dict(self) -> dict:
        return {"type": "Linear", "W": self.W.tolist(), "b": self.b.tolist()}

    def __eq__(self, other):
        return isinstance(other, Linear) and np.array_equal(self.W, other.W) and np.array_equal(self.b, other.b)

    def __hash__(self):
        return hash((self.W.tobytes(), self.b.tobytes()))

    def __repr__(self):
        return f"Linear({self.W.shape[1]} -> {self.W.shape[0]})"


# ---------------------------------------------------------------------------------------------------------
# finite width
def _use_shortcut(compiler, kind: str, w_in: int, w_out: int) -> bool:
    """Whether a Dense-like layer samples its pre-activations by the exact shortcut; recorded in
    ``compiler.modes``."""
    n = compiler.n
    if compiler.grad or compiler.explicit is True:
        short = False
    elif kind == "wn_fixed" and w_in < n:
        short = False  # fewer input coordinates than samples: the chi-square split does not apply
    elif compiler.explicit is False:
        short = True
    else:
        cost_short = 2.0 * n * n * (w_in + w_out) + EIGH_COST * n ** 3 + RNG_COST * n * w_out
        cost_expl = 2.0 * n * w_in * w_out + RNG_COST * w_in * w_out
        short = cost_short <= cost_expl
    compiler.modes.append("shortcut" if short else "explicit")
    return short


class DenseOp(Op):
    """Dense and WeightNormDense. kind: "dense", "wn_fixed" or "wn_data"."""

    def __init__(self, kind: str, w_in: int, w_out: int, sigma_w: float, sigma_b: float, g: float,
                 shortcut: bool, host_staged: bool):
        self.kind = kind
        self.w_in, self.w_out = w_in, w_out
        self.sigma_w, self.sigma_b, self.g = sigma_w, sigma_b, g
        self.shortcut = shortcut
        self.host_staged = host_staged

    def forward(self, h, rt: Run):
        xp, n = rt.xp, rt.n
        cache = None
        if self.shortcut:
            k = rt.gram_of(h)  # float64; its square root is taken in float64 and rounded to the compute dtype

            def root(c):
                return xp.astype(sqrt_psd(rt.be, c), rt.be.dtype)

            if self.kind == "dense":
                a = root((self.sigma_w ** 2) * k + self.sigma_b ** 2)
                z = rt.streams.normal((n, self.w_out), reuse=True)
                pre = rt.be.matmul(a, z)
            elif self.kind == "wn_data":
                z = rt.streams.normal((n, self.w_out), reuse=True)
                pre, _ = standardize(xp, rt.be.matmul(root(k), z), -2, True, rt.be.eps)
            else:  # wn_fixed, fan_in >= n
                z = rt.streams.normal((n, self.w_out))
                chi = rt.streams.chisquare(self.w_in - n, (1, self.w_out))
                denom = xp.sqrt(xp.sum(z * z, axis=-2, keepdims=True) + chi)
                pre = rt.be.matmul(root(k), z) * ((self.g * math.sqrt(self.w_in)) / denom)
                if self.sigma_b > 0:
                    pre = pre + self.sigma_b * rt.streams.normal((1, self.w_out))
        else:
            w = rt.streams.normal((self.w_in, self.w_out), reuse=not rt.grad)
            u = rt.be.matmul(h, w)
            if self.kind == "dense":
                scale = self.sigma_w / math.sqrt(self.w_in)
                pre = u * scale
                if self.sigma_b > 0:
                    pre = pre + self.sigma_b * rt.streams.normal((1, self.w_out))
            elif self.kind == "wn_fixed":
                scale = self.g / xp.sqrt(xp.sum(w * w, axis=-2, keepdims=True))
                pre = u * scale
                if self.sigma_b > 0:
                    pre = pre + self.sigma_b * rt.streams.normal((1, self.w_out))
            else:  # wn_data: parameters g_i = 1/std_i, b_i = -mean_i/std_i set on this batch
                pre, scale = standardize(xp, u, -2, True, rt.be.eps)
            if rt.grad:
                cache = (w, scale)
        return pre, cache

    def backward(self, g, cache, rt: Run):
        w, scale = cache
        return rt.be.matmul(g * scale, mT(rt.xp, w))

    def transient(self, n: int) -> int:
        if self.shortcut:
            return 3 * n * self.w_out + 4 * n * n + n * self.w_in
        staged = 2 if self.host_staged else 1
        return staged * self.w_in * self.w_out + 2 * n * self.w_out

    def cache_elems(self, n: int) -> int:
        return 0 if self.shortcut else self.w_in * self.w_out + self.w_out

    def flops(self, n: int) -> float:
        if self.shortcut:
            return 2.0 * n * n * (self.w_in + self.w_out) + EIGH_COST * n ** 3 + RNG_COST * n * self.w_out
        return 2.0 * n * self.w_in * self.w_out + RNG_COST * self.w_in * self.w_out


class LinearOp(Op):
    """Linear(W, b): the fixed affine map x -> W x + b, the same in every network (W of shape (out, in))."""

    def __init__(self, W: np.ndarray, b: np.ndarray):
        self.W, self.b = W, b
        self.w_out, self.w_in = W.shape
        self._dev: tuple | None = None

    def _arrays(self, rt: Run):
        if self._dev is None or self._dev[0] is not rt.be:
            wt = rt.be.asarray(self.W.T[None, ...])  # (1, in, out)
            self._dev = (rt.be, wt, rt.be.asarray(self.b[None, None, :]), rt.be.asarray(self.W[None, ...]))
        return self._dev[1:]

    def forward(self, h, rt: Run):
        wt, b, _ = self._arrays(rt)
        return rt.be.matmul(h, wt) + b, (True if rt.grad else None)

    def backward(self, g, cache, rt: Run):
        _, _, w = self._arrays(rt)
        return rt.be.matmul(g, w)

    def flops(self, n: int) -> float:
        return 2.0 * n * self.w_in * self.w_out
