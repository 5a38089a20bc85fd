"""The elementwise activation layer: any `hermite.Activation` (transformed ones included).

Mean field on a Gaussian input N(0, K): K_ab -> E[f(u_a) f(u_b)], the dual kernel with each entry's own
variances K_aa, K_bb and correlation K_ab / sqrt(K_aa K_bb) (`hermite.kernel`, 1e-12 accurate up to
rho = +-1); the per-sample feature mean becomes m_a = E f(u_a). After an exact BatchNorm of a Gaussian, a
positively homogeneous f (relu, leaky_relu, abs, identity, step, sign) is exact by Yang et al.'s
one-dimensional reduction (`meanfield.core.law.BatchNormOfGaussian.homogeneous_moments`). On any other input
law (two activations in a row, an activation after a residual sum, ...): Monte Carlo over the exact law of
the input, with its standard error; never a silently wrong number.

Finite width: f elementwise on the backend (the activation's array-API implementation, or a host round trip
for numpy-only callables); its derivative for the backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

import hermite
from hermite.distinct import Distinct
from hermite.integrability import divergence
from meanfield.core.backends import Backend, host_apply, same_kind
from meanfield.core.law import BatchNormOfGaussian, Gaussian, Sampled, monte_carlo
from meanfield.core.ops import ChainState, Op, Run
from meanfield.layers.base import Layer

__all__ = ["Activation", "gaussian_moments"]

#: log of the largest standard deviation at which `Activation.scaled_rule` takes f as linear
_LINEAR_BELOW = math.log(1e-24)


def _coerce_activation(act):
    """An `hermite.Activation` from an Activation, a name, formula, callable or sympy expression, or its
    dict (``Activation.to_dict``); ValueError naming ``act`` otherwise."""
    if isinstance(act, dict):
        if not any(k in act for k in ("name", "expr", "subtract")):
            raise ValueError(f"Activation: act={act!r} must be an activation dict with a 'name', 'expr' or "
                             "'subtract' key (hermite.Activation.to_dict)")
        try:
            return hermite.Activation.from_dict(act)
        except ValueError as exc:
            raise ValueError(f"Activation: act={act!r} is not a valid activation: {exc}") from None
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"Activation: act={act!r} is not a valid activation dict ({type(exc).__name__}: "
                             f"{exc})") from None
    return hermite.activation(act)


@dataclass(frozen=True, repr=False, eq=True)
class Activation(Layer):
    """Elementwise activation f, any `hermite.Activation` (transformed ones included).

    Mean field (Gaussian input): K_ab -> E[f(u_a) f(u_b)], the dual kernel with each entry's own
    variances K_aa, K_bb (`hermite.kernel`); the per-sample feature mean becomes E f(u_a).
    """

    act: Any = "relu"

    #: a serialized Activation layer must name its activation (no silent ReLU default in a dict)
    dict_required: ClassVar[tuple] = ("act",)

    def __post_init__(self):
        object.__setattr__(self, "act", _coerce_activation(self.act))

    def __repr__(self):
        return f"Activation({self.act.name!r})"

    @property
    def scale_degree(self):
        """k for a positively homogeneous f of degree k (f(s x) = s^k f(x), s > 0), else None."""
        return None if self.act.per_unit else self.act.homogeneous_degree

    def scaled_rule(self, law, ctx):
        """At a tiny true variance (standard deviation below 1e-24: `meanfield.core.scale`) an f
        with f(0) = 0, smooth at 0 with f'(0) != 0, is linear to rounding: f(x) = f'(0) x (1 + O(x)), so the
        law is scaled by f'(0) and keeps its log-scale (relative error O(standard deviation) < 1e-24)."""
        act = self.act
        if law.log_scale >= 0 or act.per_unit or not act.has_derivative or 0.0 in act.kinks:
            return None
        d = np.diag(law.K)
        if d.size == 0 or d.max() <= 0 or 0.5 * (math.log(float(d.max())) + law.log_scale) > _LINEAR_BELOW:
            return None
        f0 = float(act.fn(np.zeros(1))[0])
        g = float(act.derivative(np.zeros(1))[0])
        if f0 != 0.0 or g == 0.0 or not math.isfinite(g):
            return None
        out = law.affine(None, np.full(law.n, g))
        out.log_scale = law.log_scale
        return out

    def infinite(self, law, ctx):
        act = self.act
        if act.per_unit:
            raise ValueError(f"propagate: activation {act.name!r} has per-unit parameters (alpha, beta or gamma one "
                             "per unit), which have no single Hermite expansion and so no infinite-width rule; it "
                             "acts only on explicit features (propagate(net, X=X) through fixed layers) and in "
                             "simulate")
        _check_finite_second_moments(act, law)
        src = law.sampler()
        fn = act.fn

        def sample(rng_, M_):
            return fn(src(rng_, M_))

        if isinstance(law, Gaussian):
            K, m = gaussian_moments(act, law.K)
            return Sampled(K, m, sample, law.mc_error)
        degree = act.homogeneous_degree if isinstance(law, BatchNormOfGaussian) else None
        if degree is not None:  # exact BatchNorm followed by a positively homogeneous activation: exact
            K, m = law.homogeneous_moments(act, degree, lambda r, q1, q2: act.kernel_at(r, q1, q2, 0),
                                           lambda q: act.mean_at(q, 0))
            return Sampled(K, m, sample, law.mc_error)
        return monte_carlo(sample, law.n, ctx.rng, ctx.M, law.mc_error)

    def on_features(self, F):
        return self.act.fn(F)

    def compile(self, w_in, compiler):
        if compiler.grad and not self.act.has_derivative:
            raise compiler.error(f"gradients=True needs the derivative of every activation; activation "
                                 f"{self.act.name!r} has none (pass derivative= to hermite.activation)")
        if self.act.per_unit and self.act.units != w_in:
            raise compiler.error(f"activation {self.act.name!r} has per-unit parameters for {self.act.units} units "
                                 f"but the layer receives {w_in} features")
        op = ActOp(self.act, w_in)
        compiler.chain = {"act": op, "center": False, "scaled": False}
        return op, w_in

    def to_torch_module(self, w_in, width, generator):
        """f unit by unit: torch's own function for the core where it has one, else the activation's
        array-API form on torch tensors (autograd differentiates either)."""
        from meanfield.core.torch_modules import Elementwise

        if self.act.per_unit and self.act.units != w_in:
            raise ValueError(f"to_torch: activation {self.act.name!r} has {self.act.units} per-unit parameters "
                             f"but the layer receives {w_in} units")
        return Elementwise(self.act), w_in

    @classmethod
    def example(cls):
        return cls("tanh")

    @classmethod
    def invalid_parameters(cls):
        return [{"act": "no_such_activation"}, {"act": 3.0}]

    # 1/width theory: f on each unit's n-vector (one scalar function: per-unit parameters have no rule)
    @property
    def fluctuation_kind(self):
        return None if self.act.per_unit else "unit"

    def unit_map(self, X):
        return self.act.fn(X)

    def unit_derivative(self, X):
        """f'(X) between the kinks (the theory of a norm before the activation needs it)."""
        return self.act.derivative(X)


def _check_finite_second_moments(act: hermite.Activation, law) -> None:
    """ValueError where E f(u_a)^2 is infinite at an input variance of ``law`` (`hermite.integrability`,
    decided from the integrand's growth): the next Gram would be +inf, never a finite-looking number. Only a
    Gaussian input is decided (other laws are bounded or sampled)."""
    if not isinstance(law, Gaussian):
        return
    d = np.diag(law.K)
    d = d[d > 0]
    if d.size == 0:
        return
    bad, why = divergence(act, d)
    if np.any(bad):
        raise ValueError(f"propagate: E f(u)^2 of activation {act.name!r} is infinite at input variance "
                         f"q = {float(d[bad].min()):g} ({why}): the Gram after it does not exist")


@lru_cache(maxsize=8)
def _strict_triangles(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows i, columns j (i < j, row-major) of the strict upper triangle of an n x n matrix, and the flat (C-order)
    indices of its entries and of their mirror images, kept: a gather by np.take and a flat scatter cost a third
    of the row-and-column fancy indexing, and np.triu_indices itself took 70 us a block at n = 256."""
    iu, ju = np.triu_indices(n, 1)
    upper, lower = iu * n + ju, ju * n + iu
    for a in (iu, ju, upper, lower):
        a.setflags(write=False)
    return iu, ju, upper, lower


def gaussian_moments(act: hermite.Activation, G: np.ndarray):
    """E[f(u) f(u)^T] and E f(u) for u ~ N(0, G): the dual kernel entry by entry, exactly.

    The diagonal and duplicated inputs (rho = 1 with equal variances) are second moments, exactly; a
    zero-variance input gives f(0) deterministically.
    """
    n = G.shape[0]
    d = np.diag(G).copy()
    if d[0] > 0 and np.all(d == d[0]):
        # equal variances (after a norm; after a Dense layer on equal-norm inputs): one kernel call on the
        # whole matrix with the variance shared, in place; K is exactly symmetric because G is and the map
        # is elementwise
        q = float(d[0])
        if act.core.has_closed_kernel or n < 32:
            R = np.divide(G, q)
            np.clip(R, -1.0, 1.0, out=R)
            K = act.kernel_at(R.reshape(-1), q, q, 0).reshape(n, n)
            if not K.flags.writeable or K.base is R:
                K = np.array(K)
        else:
            # a tabulated kernel costs more per entry than the gathers: the strict upper triangle only,
            # mirrored (each entry is computed exactly as on the whole matrix)
            _, _, upper, lower = _strict_triangles(n)
            r = np.divide(np.take(G, upper), q)
            np.clip(r, -1.0, 1.0, out=r)
            vals = act.kernel_at(r, q, q, 0)
            K = np.empty((n, n))
            flat = K.reshape(-1)
            flat[upper] = vals
            flat[lower] = vals  # the diagonal is set below with every rho = 1 entry
        # rho = 1 (the diagonal, duplicated inputs) is the second moment exactly: the two routes to it
        # differ in the last bit, and where rho = 1 is unstable the map would amplify that difference
        np.putmask(K, G == q, act.second_moment_at(d[:1])[0])
        m = np.full(n, act.mean_at(d[:1], 0)[0])
        return K, m
    live = d > 0
    K = np.zeros((n, n))
    m = np.zeros(n)
    if np.any(live):
        # the diagonal and duplicated inputs (rho = 1, equal variances) are second moments, exactly: one value
        # per distinct variance (a batched quadrature may round rows differently)
        uq, inv = np.unique(d[live], return_inverse=True)
        moment = act.second_moment_at(uq)
        which = np.zeros(n, dtype=np.intp)
        which[live] = inv
        iu, ju, upper, lower = _strict_triangles(n)
        if not np.all(live):
            both = live[iu] & live[ju]
            iu, ju, upper, lower = iu[both], ju[both], upper[both], lower[both]
        g = np.take(G, upper)
        da, db = d[iu], d[ju]
        dup = (g == da) & (da == db)
        vals = np.empty(g.size)
        off = slice(None)  # every entry takes the kernel, unless some are duplicates
        if np.any(dup):
            vals[dup] = moment[which[iu[dup]]]
            off = ~dup
            g, da, db, iu, ju = g[off], da[off], db[off], iu[off], ju[off]
        if g.size:
            r = np.sqrt(da)
            r *= np.sqrt(db)
            np.divide(g, r, out=r)
            np.clip(r, -1.0, 1.0, out=r)
            if act.is_plain and not act.core.has_closed_kernel:
                # the entries' variances are the n distinct ones found above: handed to the core's numerical
                # kernel (kernel_at's own path for this activation), so that it does not sort them again
                variances = Distinct(uq, np.concatenate([which[iu], which[ju]]))
                vals[off] = act.core.kernel(r, da, db, 0, variances)
            else:
                vals[off] = act.kernel_at(r, da, db, 0)
        flat = K.reshape(-1)
        flat[upper] = vals
        flat[lower] = vals
        idx = np.flatnonzero(live)
        K[idx, idx] = moment[inv]
        m[live] = act.mean_at(d[live], 0, fast=True)
    if np.any(~live):  # a zero-variance input: f(0) deterministically
        f0 = float(act.fn(np.zeros(1))[0])
        dead = ~live
        m[dead] = f0
        K[dead, :] = f0 * m[None, :]
        K[:, dead] = m[:, None] * f0
        K[np.ix_(dead, dead)] = f0 * f0
    return K, m  # exactly symmetric: every entry and its mirror image are written from one value


# ---------------------------------------------------------------------------------------------------------
# finite width
def _act_forward(act, x, be: Backend):
    """f(x) with the activation's array-API implementation; a host round trip for user callables that only
    work on numpy arrays."""
    xp = be.xp
    try:
        y = act.array_fn(x, xp)
    except Exception:  # noqa: BLE001 - numpy-only user callable on a non-numpy backend
        return host_apply(act.fn, x, be)
    if not same_kind(y, x):
        return host_apply(act.fn, x, be)
    if y.dtype != be.dtype:
        y = xp.astype(y, be.dtype)
    return y


def _act_derivative(act, x, be: Backend):
    """f'(x) (between the kinks) on the backend: numpy directly, other namespaces through the activation's
    array derivative when it dispatches (cupy), else a host round trip."""
    if be.kind == "numpy":
        return np.asarray(act.derivative(x), dtype=be.np_dtype)
    try:
        d = act.array_derivative(x, be.xp)
        if not same_kind(d, x):
            raise TypeError
        if d.dtype != be.dtype:
            d = be.xp.astype(d, be.dtype)
        return d
    except Exception:  # noqa: BLE001
        return host_apply(act.derivative, x, be)


class ActOp(Op):
    chain_role = "act"

    def __init__(self, act, w: int):
        self.act = act
        self.w_in = self.w_out = w
        self.need_q = False  # a mean-field Center/Scale reads the empirical input variances

    def forward(self, h, rt: Run):
        xp = rt.xp
        y = _act_forward(self.act, h, rt.be)
        rt.chain = ChainState(self.act, xp.mean(h * h, axis=-1)) if self.need_q else None
        cache = _act_derivative(self.act, h, rt.be) if rt.grad else None
        return y, cache

    def backward(self, g, cache, rt: Run):
        return g * cache

    def cache_elems(self, n: int) -> int:
        return n * self.w_out
