"""Formulas and callables as cores: safe parsing, lambdify, kinks, jumps and parity.

A formula is parsed by walking its Python syntax tree (`parse_expression`), never by evaluating code; the
resulting sympy expression gives the numpy function (lambdify), its first and second derivatives (sympy
diff), its kinks (the switching points of Abs, Max, Min, sign, Heaviside and Piecewise), its parity and,
for polynomials, exact Hermite coefficients. A numpy callable gets its jumps by comparing values a hair to
either side of each declared kink.
"""

from __future__ import annotations

import ast
import math

import numpy as np

from hermite.cores import CallableCore, ExpressionCore
from hermite.validate import check_kinks, check_parity

__all__ = ["parse_expression", "core_expr", "is_sympy", "polynomial_real_roots"]

_FUNCS = {
    "exp": "exp", "log": "log", "sin": "sin", "cos": "cos", "tan": "tan", "tanh": "tanh", "sinh": "sinh",
    "cosh": "cosh", "erf": "erf", "erfc": "erfc", "sqrt": "sqrt", "abs": "Abs", "Abs": "Abs",
    "Max": "Max", "max": "Max", "Min": "Min", "min": "Min", "sign": "sign", "Heaviside": "Heaviside",
    "atan": "atan", "arctan": "atan", "asinh": "asinh", "arcsinh": "asinh", "log1p": None,
}
_CONSTS = {"pi": "pi", "e": "E", "E": "E"}


#: Fixed limits that bound the cost of parsing a formula (each is named in its ValueError).
MAX_LENGTH = 2000  # characters
MAX_DEPTH = 64  # nesting depth of the syntax tree (operators, calls, unary signs)
MAX_NODES = 600  # nodes of the syntax tree
MAX_TOWER = 3  # height of an exponent tower a**b**c (right-associative)
MAX_EXPONENT = 100  # |n| of a power p**n whose base depends on x (the degree of a polynomial)
MAX_CONSTANT_BITS = 4096  # bits of an exact constant power such as 9**9 (its value is computed exactly)


def _syntax_limits(text: str, tree) -> None:
    """Check the depth, the node count and the exponent towers of a parsed formula, iteratively (no
    recursion, so any depth is measured safely)."""
    nodes, stack = 0, [(tree, 1, 1)]
    while stack:
        node, depth, tower = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ValueError(f"activation expression {text[:60]!r}...: more than MAX_NODES={MAX_NODES} syntax "
                             "nodes (limit on the size of a formula)")
        if depth > MAX_DEPTH:
            raise ValueError(f"activation expression {text[:60]!r}...: nesting depth above MAX_DEPTH={MAX_DEPTH} "
                             "(limit on nested operators, calls and signs)")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            if tower + 1 > MAX_TOWER:
                raise ValueError(f"activation expression {text[:60]!r}: exponent tower of height above "
                                 f"MAX_TOWER={MAX_TOWER} (a**b**c is height 3)")
            stack.append((node.left, depth + 1, tower))
            stack.append((node.right, depth + 1, tower + 1))
            continue
        for child in ast.iter_child_nodes(node):
            stack.append((child, depth + 1, tower))


def _power(text: str, a, b):
    """a**b with the cost of exact constants and the degree of x-dependent bases bounded."""
    import sympy as sp

    if isinstance(b, sp.Integer) and isinstance(a, sp.Rational) and a not in (0, 1, -1):
        p, q = a.as_numer_denom()
        bits = abs(int(b)) * max(abs(int(p)).bit_length(), abs(int(q)).bit_length())
        if bits > MAX_CONSTANT_BITS:
            raise ValueError(f"activation expression {text!r}: the constant {a}**{b} would need about {bits} "
                             f"bits, above MAX_CONSTANT_BITS={MAX_CONSTANT_BITS}")
    if not a.is_number and b.is_number:
        try:
            big = bool(abs(b) > MAX_EXPONENT)
        except TypeError:
            big = False
        if big:
            raise ValueError(f"activation expression {text!r}: the exponent {b} of {a} exceeds "
                             f"MAX_EXPONENT={MAX_EXPONENT} in absolute value")
    out = a**b
    if not out.is_number:
        for node in sp.preorder_traversal(out):  # sympy folds (x**a)**b into x**(a*b)
            if isinstance(node, sp.Pow) and node.exp.is_number and not node.base.is_number:
                if bool(abs(node.exp) > MAX_EXPONENT):
                    raise ValueError(f"activation expression {text!r}: the power {node} has an exponent above "
                                     f"MAX_EXPONENT={MAX_EXPONENT} in absolute value")
    return out


def parse_expression(text: str):
    """Parse a formula in one variable (x) into a sympy expression, without evaluating any code.

    Only numbers, the variable ``x``, the constants pi and e, the operators + - * / ** and the functions
    exp, log, log1p, sin, cos, tan, tanh, sinh, cosh, erf, erfc, sqrt, abs, max, min, sign, Heaviside,
    atan, asinh are allowed. Anything else is a ValueError.

    The cost is bounded by fixed limits, each named in the ValueError that enforces it: at most
    ``MAX_LENGTH`` (2000) characters, ``MAX_NODES`` (600) syntax nodes, nesting depth ``MAX_DEPTH`` (64),
    exponent towers a**b**c of height ``MAX_TOWER`` (3), exact constant powers of at most
    ``MAX_CONSTANT_BITS`` (4096) bits (``9**9**9`` is refused, it has about 1.2e9 bits), and exponents of
    x-dependent bases of at most ``MAX_EXPONENT`` (100) in absolute value. Every failure inside sympy, and a
    formula with a non-finite constant (``1/0``, ``1e999``), is a ValueError naming the formula.

    Parameters
    ----------
    text : str
        The formula, e.g. ``"x*tanh(x)"``.

    Returns
    -------
    sympy.Expr
        The formula in the real symbol x.

    Raises
    ------
    ValueError
        For anything but an allowed formula within the limits.
    """
    import sympy as sp

    x = sp.Symbol("x", real=True)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"activation expression {text!r} must be a non-empty string")
    if len(text) > MAX_LENGTH:
        raise ValueError(f"activation expression of {len(text)} characters is longer than "
                         f"MAX_LENGTH={MAX_LENGTH}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"activation expression {text!r} is not a valid formula: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise ValueError(f"activation expression {text[:60]!r}...: nesting depth above MAX_DEPTH={MAX_DEPTH} "
                         "(limit on nested operators, calls and signs)") from None
    _syntax_limits(text, tree)

    def conv(node):
        if isinstance(node, ast.Expression):
            return conv(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            if isinstance(node.value, float) and not math.isfinite(node.value):
                raise ValueError(f"activation expression {text!r}: the constant {node.value!r} is not finite")
            return sp.Integer(node.value) if isinstance(node.value, int) else sp.Float(node.value)
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
                   ast.Div: lambda: a / b, ast.Pow: lambda: _power(text, a, b)}
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

    try:
        expr = conv(tree)
    except ValueError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise ValueError(f"activation expression {text[:60]!r}: too large to build ({type(exc).__name__})") \
            from None
    except Exception as exc:  # noqa: BLE001 - sympy raises many kinds (TypeError for wrong arity, ...)
        raise ValueError(f"activation expression {text!r} could not be built: {type(exc).__name__}: {exc}") \
            from None
    if not isinstance(expr, sp.Expr):
        raise ValueError(f"activation expression {text!r} is not a real-valued formula (got {type(expr).__name__})")
    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise ValueError(f"activation expression {text!r} contains a non-finite constant ({expr})")
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


def polynomial_real_roots(expr, max_exact: int = 4):
    """The real roots of ``expr`` if it is a polynomial in x with numeric coefficients, else None.

    Degree <= ``max_exact``: exact (sympy). Higher degrees: numpy's companion-matrix roots, those within
    1e-6 of the real axis polished by Newton's method in mpmath at 80 digits and kept when they converge
    to a real root; bounded cost (sympy's exact solve of x**97 - x**3 + 1 does not finish).
    """
    import mpmath as mp
    import sympy as sp

    x = sp.Symbol("x", real=True)
    try:
        poly = sp.Poly(expr, x)
    except (sp.PolynomialError, sp.GeneratorsNeeded, ValueError, TypeError):
        return None
    coeffs = poly.all_coeffs()
    if not all(c.is_number for c in coeffs) or poly.degree() < 1:
        return None if not all(c.is_number for c in coeffs) else []
    if poly.degree() <= max_exact:
        return [r for r in sp.solve(poly.as_expr(), x) if r.is_real]
    c = np.array([float(v) for v in coeffs])
    out = []
    with mp.workdps(80):
        cm = [mp.mpf(str(sp.Float(v, 90))) for v in coeffs]
        for z in np.roots(c):
            if abs(z.imag) > 1e-6 * (1.0 + abs(z)):
                continue
            try:
                r = mp.findroot(lambda t: mp.polyval(cm, t), mp.mpf(float(z.real)), tol=mp.mpf(10) ** -70)
            except (ValueError, ZeroDivisionError):
                continue
            if abs(mp.im(r)) == 0 and all(abs(r - o) > mp.mpf(10) ** -40 for o in out):
                out.append(mp.re(r))
        return [sp.Float(str(r), 80) for r in sorted(out)]  # str inside workdps: all 80 digits


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
        roots = polynomial_real_roots(a)
        if roots is not None:
            pts.update(float(r) for r in roots)
            continue
        try:
            sols = sp.solve(sp.Eq(a, 0), x)
        except Exception:  # noqa: BLE001 - sympy raises many kinds
            sols = None
        if sols is None or any(not s.is_real for s in sols if s.is_real is not None):
            raise ValueError(f"could not locate the kinks of {expr}; pass kinks=[...] explicitly")
        pts.update(float(s) for s in sols if s.is_real)
    return tuple(sorted(pts))


def _expr_parity(expr, fn=None):
    """+1 (even), -1 (odd) or None, proven with sympy. A numeric test at a few points comes first, so the
    (possibly slow) symbolic simplification runs only for a parity the numbers support."""
    import sympy as sp

    x = sp.Symbol("x", real=True)
    candidates = (1, -1)
    if fn is not None:
        t = np.array([0.31, 0.77, 1.13, 1.91, 2.63, 3.71])
        a, b = fn(t), fn(-t)
        ok = np.isfinite(a) & np.isfinite(b)
        a, b = a[ok], b[ok]
        tol = 1e-9 * (np.abs(a) + np.abs(b)) + 1e-300
        candidates = tuple(p for p in (1, -1) if np.all(np.abs(b - p * a) <= tol))
    try:
        m = expr.subs(x, -x)
        for p in candidates:
            d = m - p * expr
            if d == 0 or sp.simplify(d) == 0:
                return p
    except Exception:  # noqa: BLE001
        return None
    return None


def _check_real(fn, text) -> None:
    """ValueError when the formula is not real-valued on an interval of [-20, 20] (NaN there and at both
    neighbours 1e-6 away: log(x), sqrt(x) for x < 0); isolated NaN such as sin(x)/x at 0 are allowed."""
    grid = np.linspace(-20.0, 20.0, 4001)
    with np.errstate(all="ignore"):
        v = fn(grid)
        nan = np.isnan(v)
        if nan.any():
            nan &= np.isnan(fn(grid - 1e-6)) & np.isnan(fn(grid + 1e-6))
    if nan.any():
        t = float(grid[np.argmax(nan)])
        raise ValueError(f"activation expression {text!r} must be real-valued on the whole real line; it is not "
                         f"(NaN) near x = {t:g}")


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
    text = source if source is not None else str(expr)
    try:
        if kinks is None:
            kinks = _expr_kinks(expr)
        fn = _lambdify(expr)
        _check_real(fn, text)
        d1 = _between_kinks(sp.diff(expr, x))
        deriv = _lambdify(d1)
        deriv2 = _lazy(lambda: _lambdify(_between_kinks(sp.diff(d1, x))))  # sympy diff and lambdify on first use
        jumps = _find_jumps(fn, kinks)
        parity = _expr_parity(expr, fn)
    except ValueError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise ValueError(f"activation expression {text[:60]!r}: too large to analyse ({type(exc).__name__})") \
            from None
    except Exception as exc:  # noqa: BLE001 - sympy and lambdify raise many kinds
        raise ValueError(f"activation expression {text!r} could not be analysed: {type(exc).__name__}: {exc}") \
            from None
    spec = {"expr": text}
    if kinks:
        spec["kinks"] = [float(k) for k in kinks]
    return ExpressionCore(name or text, fn, {}, expr, tuple(float(k) for k in kinks), tuple(jumps), (0.0,), 0.0,
                          parity, deriv, deriv2, None, spec)


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
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
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
