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

from hermite.activations import Activation, activation
from hermite.cores import SubtractedCore
from hermite.validate import check_orders, check_variance

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
    act.check_single("transform")
    qv = float(check_variance(q))
    orders = check_orders(remove, "remove")
    K = max(orders) if orders else 0
    c = act.coefficients_at(K, np.array([qv]))[0]
    out = act
    low = [k for k in orders if k <= 1]
    high = [k for k in orders if k >= 2]
    if low:
        beta = out.beta - (c[0] / out.gamma if 0 in low else 0.0)
        alpha = out.alpha - (c[1] / (out.gamma * math.sqrt(qv)) if 1 in low else 0.0)
        out = replace(out, alpha=alpha, beta=beta, label=None)
    if high:
        out = Activation(SubtractedCore.of(out, {k: c[k] for k in high}, qv))
    label = f"{act.name} - orders {orders} (q={qv:g})" if orders else act.name
    if unit_variance:
        m = float(out.second_moment_at(np.array([qv]))[0])
        m0 = float(act.second_moment_at(np.array([qv]))[0])
        # the terms that cancel in E T^2 are of size E f^2 + (alpha^2 q + beta^2) gamma^2: below 1e-12 of
        # them only round-off is left, and scaling it up would fabricate an activation
        size = m0 + out.gamma**2 * (out.alpha**2 * qv + out.beta**2)
        if not m > 1e-12 * size:
            raise ValueError(f"transform: remove={tuple(orders)} leaves nothing of {act.name!r} at q={qv:g} "
                             f"(E f^2 drops from {m0:.3g} to {m:.3g}); unit_variance is impossible")
        out = replace(out, gamma=out.gamma / math.sqrt(m))
        label += ", unit variance"
    return replace(out, label=label)
