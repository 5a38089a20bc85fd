"""Exact Hermite coefficients with sympy, wherever they exist in closed form.

Piecewise polynomials (relu, leaky_relu, abs, step, sign, hardtanh, relu6, identity, monomial, hermite,
and polynomial formulas) are integrated exactly piece by piece: on [a, b],

    int_a^b x^m phi(x) dx = I_m,   I_m = [-x^(m-1) phi(x)]_a^b + (m - 1) I_(m-2),
    I_0 = Phi(b) - Phi(a),  I_1 = phi(a) - phi(b),

so c_k(q) = sum over pieces of int p(sqrt(q) x) He_k(x) phi(x) dx / sqrt(k!) is a finite combination of
phi, Phi (erf) at the scaled breakpoints (`hermite.basis.piecewise_coefficients`). exp, sin, cos, gaussian
(exp(-x^2/2)) and erf use their generating functions: E[exp(t z)] = exp(t^2/2) gives
c_k = exp(q/2) q^(k/2)/sqrt(k!) for exp, and so on. Each family's formula is its core's
``exact_coefficients`` method (`hermite.cores`); gains and affine maps are applied by the Activation.
"""

from __future__ import annotations

from hermite.activations import activation
from hermite.validate import check_exact_order, check_exact_variance

__all__ = ["exact_coefficients"]


def exact_coefficients(act, K: int, q=1) -> list:
    """Exact sympy expressions of c_0..c_K of f(sqrt(q) z) (orthonormal convention).

    Available for piecewise polynomials (relu, leaky_relu, abs, step, sign, hardtanh, relu6, identity,
    monomial, hermite, polynomial formulas), exp, sin, cos, gaussian and erf, with gains and affine
    transforms of these. ``q`` may be a number (converted to an exact rational) or a positive sympy
    symbol. Raises ValueError where no closed form is known (tanh, sigmoid, gelu, ...).

    Examples
    --------
    >>> import hermite, sympy as sp
    >>> c = hermite.exact_coefficients("relu", 2)
    >>> sp.simplify(c[2] - 1 / (2 * sp.sqrt(sp.pi)))
    0
    """
    act = activation(act)
    K = check_exact_order(K)
    return act.exact_coefficients_at(K, check_exact_variance(q))
