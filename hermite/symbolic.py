"""Exact Hermite coefficients with sympy, wherever they exist in closed form.

Piecewise polynomials (relu, leaky_relu, abs, step, sign, hardtanh, relu6, identity, monomial, hermite,
and polynomial formulas) are integrated exactly piece by piece: on [a, b],

    int_a^b x^m phi(x) dx = I_m,   I_m = [-x^(m-1) phi(x)]_a^b + (m - 1) I_(m-2),
    I_0 = Phi(b) - Phi(a),  I_1 = phi(a) - phi(b),

so c_k(q) = sum over pieces of int p(sqrt(q) x) He_k(x) phi(x) dx / sqrt(k!) is a finite combination of
phi, Phi (erf) at the scaled breakpoints. exp, sin, cos, gaussian (exp(-x^2/2)) and erf use their
generating functions: E[exp(t z)] = exp(t^2/2) gives c_k = exp(q/2) q^(k/2)/sqrt(k!) for exp, and so on.
"""

from __future__ import annotations

import math

from hermite.activations import activation, core_expr
from hermite.numeric import check_order

__all__ = ["exact_coefficients"]


def _sp():
    import sympy as sp

    return sp


def _num(v):
    sp = _sp()
    if isinstance(v, sp.Basic):
        return v
    if isinstance(v, float) and math.isinf(v):
        return sp.oo if v > 0 else -sp.oo
    return sp.nsimplify(v, rational=True)


def _moments(a, b, mmax):
    """I_m = int_a^b x^m phi(x) dx for m = 0..mmax (exact)."""
    sp = _sp()
    phi = lambda t: 0 if t in (sp.oo, -sp.oo) else sp.exp(-t**2 / 2) / sp.sqrt(2 * sp.pi)
    Phi = lambda t: (sp.Integer(1) if t == sp.oo else sp.Integer(0) if t == -sp.oo
                     else (1 + sp.erf(t / sp.sqrt(2))) / 2)

    def bracket(m1):  # [-x^m1 phi(x)]_a^b
        def term(t):
            return 0 if t in (sp.oo, -sp.oo) else -(t**m1) * phi(t)
        return term(b) - term(a)

    out = [Phi(b) - Phi(a)]
    if mmax >= 1:
        out.append(phi(a) - phi(b))
    for m in range(2, mmax + 1):
        out.append(sp.expand(bracket(m - 1) + (m - 1) * out[m - 2]))
    return out


def _pieces_coefficients(pieces, K, q):
    sp = _sp()
    x = sp.Symbol("x", real=True)
    sq = sp.sqrt(q)
    he = [sp.Integer(1), x]
    for k in range(1, K):
        he.append(sp.expand(x * he[k] - k * he[k - 1]))
    he = he[: K + 1]
    coeffs = [sp.Integer(0)] * (K + 1)
    for a, b, poly in pieces:
        aa = _num(a) / sq if not (isinstance(a, float) and math.isinf(a)) else _num(a)
        bb = _num(b) / sq if not (isinstance(b, float) and math.isinf(b)) else _num(b)
        p = sum(_num(c) * (sq * x) ** i for i, c in enumerate(poly))
        deg = len(poly) - 1
        mom = _moments(aa, bb, deg + K)
        for k in range(K + 1):
            prod = sp.Poly(sp.expand(p * he[k]), x)
            val = sum(c * mom[m[0]] for m, c in zip(prod.monoms(), prod.coeffs()))
            coeffs[k] += val
    return [sp.simplify(c / sp.sqrt(sp.factorial(k))) if K <= 40 else c / sp.sqrt(sp.factorial(k))
            for k, c in enumerate(coeffs)]


def _family_coefficients(fam, params, K, q):
    sp = _sp()
    out = []
    for k in range(K + 1):
        rk = sp.sqrt(sp.factorial(k))
        if fam == "exp":
            out.append(sp.exp(q / 2) * q ** sp.Rational(k, 2) / rk)
        elif fam in ("sin", "cos"):
            odd = k % 2 == 1
            if (fam == "sin") != odd:
                out.append(sp.Integer(0))
            else:
                out.append((-1) ** (k // 2) * sp.exp(-q / 2) * q ** sp.Rational(k, 2) / rk)
        elif fam == "gaussian":
            if k % 2:
                out.append(sp.Integer(0))
            else:
                m = k // 2
                out.append(rk / sp.sqrt(1 + q) * (-q / (2 * (1 + q))) ** m / sp.factorial(m))
        elif fam == "erf":
            if k % 2 == 0:
                out.append(sp.Integer(0))
            else:
                m = (k - 1) // 2
                out.append(2 / sp.sqrt(sp.pi) * sp.sqrt(q / k) * sp.sqrt(sp.factorial(2 * m)) / sp.sqrt(1 + 2 * q)
                           * (-q / (1 + 2 * q)) ** m / sp.factorial(m))
        else:  # pragma: no cover
            raise AssertionError(fam)
    return out


def _polynomial_pieces(expr):
    sp = _sp()
    x = sp.Symbol("x", real=True)
    if expr is None:
        return None
    try:
        poly = sp.Poly(expr, x)
    except sp.PolynomialError:
        return None
    if not all(c.is_number for c in poly.all_coeffs()):
        return None
    coeffs = tuple(reversed(poly.all_coeffs()))
    return ((-math.inf, math.inf, coeffs),)


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
    sp = _sp()
    act = activation(act)
    K = check_order(K)
    if K > 400:
        raise ValueError(f"K={K} must be <= 400 for exact coefficients (sympy expressions grow with K)")
    if isinstance(q, sp.Basic):
        qq = q
        if qq.is_positive is False:
            raise ValueError(f"q={q} must be positive")
    else:
        qf = float(q)
        if not (math.isfinite(qf) and qf > 0):
            raise ValueError(f"q={q!r} must be > 0 (input variance)")
        qq = sp.nsimplify(q, rational=True)
    core = act.core
    Q = _num(act.gain) ** 2 * qq
    fam = core.closed_form[0] if core.closed_form else None
    if fam in ("exp", "sin", "cos", "gaussian", "erf"):
        c = _family_coefficients(fam, core.closed_form[1], K, Q)
    else:
        pieces = core.pieces if core.pieces is not None else _polynomial_pieces(core_expr(core))
        if pieces is None:
            raise ValueError(f"no closed form is known for the Hermite coefficients of {act.name!r}; "
                             "use hermite.coefficients (accurate quadrature) instead")
        c = _pieces_coefficients(pieces, K, Q)
    if not act.is_plain:
        g, a, b = _num(act.gamma), _num(act.alpha), _num(act.beta)
        c = [g * ck for ck in c]
        c[0] += g * b
        if K >= 1:
            c[1] += g * a * sp.sqrt(qq)
    return c


