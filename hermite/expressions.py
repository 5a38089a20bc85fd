"""Formulas and callables as cores: safe parsing, lambdify, kinks, jumps and parity.

A formula is parsed by walking its Python syntax tree (`parse_expression`), never by evaluating code; the
resulting sympy expression gives the numpy function (lambdify), its first and second derivatives (sympy
diff), its kinks (the switching points of Abs, Max, Min, sign, Heaviside and Piecewise), its parity and,
for polynomials, exact Hermite coefficients. A numpy callable gets its jumps by comparing values a hair to
either side of each declared kink.
"""

from __future__ import annotations

import ast

import numpy as np

from hermite.cores import CallableCore, ExpressionCore
from hermite.validate import check_kinks, check_parity

__all__ = ["parse_expression", "core_expr", "is_sympy"]

_FUNCS = {
    "exp": "exp", "log": "log", "sin": "sin", "cos": "cos", "tan": "tan", "tanh": "tanh", "sinh": "sinh",
    "cosh": "cosh", "erf": "erf", "erfc": "erfc", "sqrt": "sqrt", "abs": "Abs", "Abs": "Abs",
    "Max": "Max", "max": "Max", "Min": "Min", "min": "Min", "sign": "sign", "Heaviside": "Heaviside",
    "atan": "atan", "arctan": "atan", "asinh": "asinh", "arcsinh": "asinh", "log1p": None,
}
_CONSTS = {"pi": "pi", "e": "E", "E": "E"}


def parse_expression(text: str):
    """Parse a formula in one variable (x) into a sympy expression, without evaluating any code.

    Only numbers, the variable ``x``, the constants pi and e, the operators + - * / ** and the functions
    exp, log, log1p, sin, cos, tan, tanh, sinh, cosh, erf, erfc, sqrt, abs, max, min, sign, Heaviside,
    atan, asinh are allowed. Anything else is a ValueError.
    """
    import sympy as sp

    x = sp.Symbol("x", real=True)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"activation expression {text!r} must be a non-empty string")
    if len(text) > 2000:
        raise ValueError("activation expression is longer than 2000 characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"activation expression {text!r} is not a valid formula: {exc.msg}") from None

    def conv(node):
        if isinstance(node, ast.Expression):
            return conv(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return sp.nsimplify(node.value) if isinstance(node.value, int) else sp.Float(node.value)
        if isinstance(node, ast.Name):
            if node.id == "x":
                return x
            if node.id in _CONSTS:
                return getattr(sp, _CONSTS[node.id])
            raise ValueError(f"activation expression {text!r}: unknown name {node.id!r} (the variable is 'x'; "
                             f"allowed functions: {', '.join(sorted(_FUNCS))})")
        if isinstance(node, ast.BinOp):
            a, b = conv(node.left), conv(node.right)
            ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
                   ast.Div: lambda: a / b, ast.Pow: lambda: a**b}
            if type(node.op) not in ops:
                raise ValueError(f"activation expression {text!r}: operator {type(node.op).__name__} not allowed")
            return ops[type(node.op)]()
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = conv(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            fname = node.func.id
            if fname not in _FUNCS:
                raise ValueError(f"activation expression {text!r}: unknown function {fname!r}; allowed: "
                                 f"{', '.join(sorted(_FUNCS))}")
            args = [conv(a) for a in node.args]
            if fname == "log1p":
                return sp.log(1 + args[0])
            return getattr(sp, _FUNCS[fname])(*args)
        raise ValueError(f"activation expression {text!r}: {type(node).__name__} is not allowed in a formula")

    expr = conv(tree)
    if expr.free_symbols - {x}:
        raise ValueError(f"activation expression {text!r} has free symbols other than x")
    return expr


def _lambdify(expr):
    import sympy as sp

    x = sp.Symbol("x", real=True)
    f = sp.lambdify(x, expr, modules=[{"Heaviside": lambda t, h=0.5: np.heaviside(t, h)}, "scipy", "numpy"])

    def g(t):
        t = np.asarray(t, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            return np.broadcast_to(np.asarray(f(t), dtype=np.float64), t.shape).copy()

    return g


def _expr_kinks(expr) -> tuple:
    """Real points where a Piecewise/Abs/Max/Min/sign/Heaviside in ``expr`` switches."""
    import sympy as sp

    x = sp.Symbol("x", real=True)
    args = []
    for node in sp.preorder_traversal(expr):
        if isinstance(node, (sp.Abs, sp.sign, sp.Heaviside)):
            args.append(node.args[0])
        elif isinstance(node, (sp.Max, sp.Min)):
            a = list(node.args)
            args.extend(ai - aj for i, ai in enumerate(a) for aj in a[i + 1:])
        elif isinstance(node, sp.Piecewise):
            for _, cond in node.args:
                if cond is not sp.true and hasattr(cond, "lhs"):
                    args.append(cond.lhs - cond.rhs)
    pts = set()
    for a in args:
        if not a.has(x):
            continue
        try:
            sols = sp.solve(sp.Eq(a, 0), x)
        except Exception:  # noqa: BLE001 - sympy raises many kinds
            sols = None
        if sols is None or any(not s.is_real for s in sols if s.is_real is not None):
            raise ValueError(f"could not locate the kinks of {expr}; pass kinks=[...] explicitly")
        pts.update(float(s) for s in sols if s.is_real)
    return tuple(sorted(pts))


def _expr_parity(expr):
    import sympy as sp

    x = sp.Symbol("x", real=True)
    try:
        m = expr.subs(x, -x)
        if sp.simplify(m - expr) == 0:
            return 1
        if sp.simplify(m + expr) == 0:
            return -1
    except Exception:  # noqa: BLE001
        return None
    return None


def _find_jumps(fn, kinks) -> list:
    """The kinks where fn is discontinuous (compared a hair to either side)."""
    jumps = []
    for t in kinks:
        eps = 1e-9 * max(1.0, abs(t))
        lo, hi = fn(np.array([t - eps, t + eps]))
        if abs(hi - lo) > 1e-6 * max(1.0, abs(hi) + abs(lo)):
            jumps.append(t)
    return jumps


def _from_expr(expr, kinks=None, name=None, source=None) -> ExpressionCore:
    """The core of a sympy formula: lambdified function, first and second derivatives (sympy diff),
    kinks (found in the formula unless given), jumps, parity, and the spec {"expr": text, "kinks": [...]}."""
    import sympy as sp

    x = sp.Symbol("x", real=True)
    free = expr.free_symbols
    if len(free) > 1:
        raise ValueError(f"activation expression {expr} must have exactly one free symbol, "
                         f"has {sorted(map(str, free))}")
    if free and free != {x}:
        expr = expr.subs(next(iter(free)), x)
    if kinks is None:
        kinks = _expr_kinks(expr)
    fn = _lambdify(expr)
    d1 = _between_kinks(sp.diff(expr, x))
    deriv = _lambdify(d1)
    deriv2 = _lazy(lambda: _lambdify(_between_kinks(sp.diff(d1, x))))  # sympy diff and lambdify on first use
    jumps = _find_jumps(fn, kinks)
    text = source if source is not None else str(expr)
    spec = {"expr": text}
    if kinks:
        spec["kinks"] = [float(k) for k in kinks]
    return ExpressionCore(name or text, fn, {}, expr, tuple(float(k) for k in kinks), tuple(jumps), (0.0,), 0.0,
                          _expr_parity(expr), deriv, deriv2, None, spec)


def _between_kinks(d):
    """A derivative between the kinks: the delta masses sympy puts at jumps (DiracDelta) dropped."""
    import sympy as sp

    return d.replace(sp.DiracDelta, lambda *args: sp.Integer(0))


def _lazy(make):
    """A function that builds itself (``make()``) on its first call."""
    cache = []

    def f(t):
        if not cache:
            cache.append(make())
        return cache[0](t)

    return f


def _from_callable(fn, kinks=None, derivative=None, second_derivative=None, parity=None,
                   name=None) -> CallableCore:
    """The core of a numpy-vectorized callable with declared kinks (jumps found numerically)."""
    f = _wrap_callable(fn)
    kk = check_kinks(kinks)
    check_parity(parity)
    jumps = _find_jumps(f, kk)
    d1 = _wrap_callable(derivative) if derivative is not None else None
    d2 = _wrap_callable(second_derivative) if second_derivative is not None else None
    nm = name or getattr(fn, "__name__", "callable")
    return CallableCore(nm, f, {}, None, kk, tuple(jumps), (0.0,), 0.0, parity, d1, d2, None, None)


def core_expr(core):
    """The sympy expression of a core (parsed from its formula or built from its pieces), or None."""
    e = core.expr
    if isinstance(e, str):
        return parse_expression(e)
    if e is None:
        return core.pieces_expr()
    return e


def _wrap_callable(f):
    """f as a float64 numpy function of the input's shape (ValueError if it is not elementwise)."""
    def g(x):
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            y = np.asarray(f(x), dtype=np.float64)
        if y.shape != x.shape:
            try:
                y = np.broadcast_to(y, x.shape).copy()
            except ValueError:
                raise ValueError(f"activation callable returned shape {y.shape} for input shape {x.shape}; "
                                 "it must be numpy-vectorized (elementwise)") from None
        return y

    probe = np.linspace(-3, 3, 7)
    try:
        g(probe)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"activation callable failed on a numpy array ({type(exc).__name__}: {exc}); "
                         "it must accept and return numpy arrays elementwise") from None
    return g


def is_sympy(obj) -> bool:
    """True for a sympy object (checked by module name, without importing sympy)."""
    mod = type(obj).__module__ or ""
    return mod.startswith("sympy")
