"""New activations from old: removing Hermite orders, centering, unit variance, gains.

With remove=(0, 1) this is exactly the transformation of Vatanen, Raiko, Valpola and LeCun (2013),
"Pushing stochastic gradient towards second-order methods": f(x) - alpha x - beta with
beta = E f(u) = c_0(q) and alpha = E f'(u) = c_1(q)/sqrt(q) for u ~ N(0, q) (Stein's lemma), and
unit_variance=True is their third (gamma) transformation, scaling to E f(u)^2 = 1.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from hermite.activations import Activation, Core, activation
from hermite.basis import hermite_polynomials
from hermite.numeric import activation_coefficients, activation_second_moment, check_order, check_variance

__all__ = ["transform"]


def transform(act, remove=(0, 1), unit_variance: bool = True, q: float = 1.0) -> Activation:
    """Return f with the Hermite orders ``remove`` removed at input variance q (and scaled to E f^2 = 1).

    T(x) = s * (f(x) - sum_{k in remove} c_k(q) h_k(x / sqrt(q))), with s = 1 / sqrt(E T(u)^2) if
    ``unit_variance`` else 1, u ~ N(0, q); so T has c_k(q) = 0 for every removed k and, at variance q,
    E T^2 = 1. Removing orders 0 and 1 keeps f's closed forms (an affine change); higher orders subtract
    a polynomial.

    Parameters
    ----------
    act : activation (name, callable, formula or Activation)
    remove : iterable of int >= 0
        Hermite orders to remove (default (0, 1): Vatanen et al.'s centering and linear removal).
    unit_variance : bool
        Scale to unit second moment at variance q (Vatanen et al.'s gamma transformation).
    q : float > 0
        Input variance at which the coefficients are taken.

    Examples
    --------
    >>> import hermite, numpy as np
    >>> t = hermite.transform("tanh")
    >>> c = hermite.coefficients(t, 3)
    >>> bool(abs(c[0]) < 1e-15 and abs(c[1]) < 1e-15 and abs(np.sum(c**2) - 1) < 1e-3)
    True
    """
    act = activation(act)
    qv = float(check_variance(q))
    try:
        orders = sorted({check_order(k) for k in remove})
    except TypeError:
        raise ValueError(f"remove={remove!r} must be an iterable of non-negative integers") from None
    K = max(orders) if orders else 0
    c = activation_coefficients(act, K, np.array([qv]))[0]
    out = act
    low = [k for k in orders if k <= 1]
    high = [k for k in orders if k >= 2]
    if low:
        beta = out.beta - (c[0] / out.gamma if 0 in low else 0.0)
        alpha = out.alpha - (c[1] / (out.gamma * math.sqrt(qv)) if 1 in low else 0.0)
        out = replace(out, alpha=alpha, beta=beta, label=None)
    if high:
        out = _subtract_polynomial(out, {k: c[k] for k in high}, qv)
    label = f"{act.name} - orders {orders} (q={qv:g})" if orders else act.name
    if unit_variance:
        m = float(activation_second_moment(out, np.array([qv]))[0])
        m0 = float(activation_second_moment(act, np.array([qv]))[0])
        # the terms that cancel in E T^2 are of size E f^2 + (alpha^2 q + beta^2) gamma^2: below 1e-12 of
        # them only round-off is left, and scaling it up would fabricate an activation
        size = m0 + out.gamma**2 * (out.alpha**2 * qv + out.beta**2)
        if not m > 1e-12 * size:
            raise ValueError(f"transform: remove={tuple(orders)} leaves nothing of {act.name!r} at q={qv:g} "
                             f"(E f^2 drops from {m0:.3g} to {m:.3g}); unit_variance is impossible")
        out = replace(out, gamma=out.gamma / math.sqrt(m))
        label += ", unit variance"
    return replace(out, label=label)


def _subtract_polynomial(act: Activation, ck: dict, q: float) -> Activation:
    """f(x) - sum_k ck[k] h_k(x/sqrt(q)) as a new core (closed forms of f are lost)."""
    K = max(ck)
    sq = math.sqrt(q)
    weights = np.zeros(K + 1)
    for k, v in ck.items():
        weights[k] = v

    def fn(x):
        x = np.asarray(x, dtype=np.float64)
        return act.fn(x) - np.tensordot(weights, hermite_polynomials(K, x / sq), axes=1)

    def deriv(x):
        x = np.asarray(x, dtype=np.float64)
        h = hermite_polynomials(K, x / sq)
        # h_k' = sqrt(k) h_{k-1}
        dk = np.array([math.sqrt(k) * weights[k] for k in range(1, K + 1)])
        return act.derivative(x) - np.tensordot(dk, h[:K], axes=1) / sq

    try:
        spec = {"subtract": {"base": act.to_dict(), "orders": {str(k): float(v) for k, v in ck.items()}, "q": q}}
    except ValueError:
        spec = None
    core = Core(f"{act.name} - poly", fn, {}, None, act.kinks, act.jumps, tuple(act.core.features),
                act.core.frequency, None, deriv, None, None, None, spec)
    return Activation(core)


def subtract_from_dict(d: dict) -> Activation:
    """Inverse of the serialized form of a polynomial-subtracted activation (internal)."""
    base = Activation.from_dict(d["base"])
    return _subtract_polynomial(base, {int(k): float(v) for k, v in d["orders"].items()}, float(d["q"]))
