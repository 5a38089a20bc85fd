"""Where the Gaussian integrals of an activation diverge: E f(sqrt(q) z)^2 = +inf.

The Hermite expansion, the second moment and the dual kernel of f at input variance q exist only if f is
square-integrable under N(0, q). Quadrature cannot see a divergence: it integrates over a finite range and
returns a large finite number (E exp(2 x^2) came back as 1.4e189, E x^-2 as 1351). This module decides
divergence from the integrand itself, before any quadrature, and the public verbs act on the verdict
(`hermite.second_moment` returns +inf, `coefficients`, `tail_mass` and `kernel` raise ValueError; see
their docstrings).

Built-in families are square-integrable at every q > 0 (polynomial or exponential-linear growth, no
singularities) and are not examined. For user activations:

Formulas (strings and sympy expressions) are decided from the formula, in two parts.

* Singularities: the real zeros of every denominator (a negative power), of every log argument and of the
  cosine inside every tan, found with sympy ``solveset`` (infinitely many periodic ones: those in
  [-20, 20]; where sympy cannot solve, a numeric scan of [-60, 60] for sign changes). At each point x0 the
  local exponent p of |f(x0 +- h)| ~ h^(-p) is read from mpmath evaluations (80 digits) at
  h = 1e-10, 1e-15, 1e-20 on both sides: f^2 is integrable near x0 iff 2 p < 1. A slope 2p >= 1.2
  diverges; 2p <= 0.8 converges; in between, h f(x0 + h)^2 not decreasing (h^-1 up to logarithms:
  |x|^(-1/2)) diverges, anything else is undecidable (ValueError). A non-integrable singularity makes
  the integral infinite at every q (the Gaussian weight is positive everywhere). An integrable but
  unbounded singularity (|x|^(-1/4), log|x|: log|f| still rising by more than 0.05 per step) is refused
  with a ValueError: the integral is finite, but the quadrature, built for functions smooth between
  kinks, would be off by about 1e-2 (E |z|^(-1/2) came out 1.696 for 1.720).
* Growth: the log-integrand g(z) = 2 log|f(sqrt(q) z)| - z^2 / 2 is evaluated with mpmath (precision
  raised with z, so that the cancellation of the two terms is resolved) at z = 8 ... 1e30, each value the
  maximum over four points within 4 of x (so oscillating factors such as sin x count with their envelope).
  With s the slope of g against log z between the last points: s < -1.5 twice converges, s > -0.5 (or
  overflow of log|f| itself) diverges, anything else (f^2 ~ x^-1 exp(x^2 / (2q)), the borderline) is
  undecidable (ValueError). A divergence verdict is confirmed at twice the precision, so round-off
  cancellation in the formula cannot fake growth. Divergence is monotone in q (a wider Gaussian only
  weighs the tails more), so many variances cost a bisection, not one test each.

Convergent but unresolved: the quadrature behind the numbers is accurate for integrands concentrated
near the origin. Measured on formulas against exact values: E x^68 was 2e-13 off, E x^72 4e-12, E x^100
2e-5; E exp(2x) at q = 25 5e-13, at q = 28 3e-11, at q = 64 13%; E exp(2 x^2) at q = 0.205 4e-13, at
q = 0.21 8e-12, at q = 0.24 6e-4. So a convergent integrand f(sqrt(q) z)^2 phi(z) of a user activation
may hold at most 1e-6 of its mass beyond |z| = 12 (estimated on a grid of step 0.25 over |z| <= 40);
otherwise ValueError. This refuses every measured case off by more than 1e-12 and some accurate ones (the
mass of x^40 beyond 12 is 2e-5): it is a guard until the quadrature adapts to where the mass is.

Callables (numpy functions) are decided from float64 samples, which is all that is decidable. f must
be finite at z = -8, -7.5, ..., 8 (z = 0 included) and at its declared kinks (else ValueError: 1/x is
refused there). The tail integrand t(z) = f(sqrt(q) z)^2 phi(z) at z = +-8 ... +-64 (up to the first
overflow of f) must decay: a log-slope above -0.5 at the last finite samples, or an overflow after
growing samples, is divergence (+inf: also the correctly rounded value of an integral beyond 1e308); a
NaN, an overflow before three samples, a slope between -1.5 and -0.5, or a tail still above 1e-30 of
the bulk is undecidable (ValueError). Poles of a callable between the samples are not detectable:
declare them as kinks, or give the activation as a formula.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

__all__ = ["divergence", "FAR_Z"]

#: standardized tail points z = x / sqrt(q) at which the growth of a formula is read
FAR_Z = (8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1e3, 1e4, 1e5, 1e6, 1e8, 1e10, 1e12, 1e16, 1e20, 1e25, 1e30)
_OFFSETS = (0.0, 1.1, 2.3, 3.7)  # envelope window (absolute, in x)
_CONVERGE_SLOPE = -1.5
_DIVERGE_SLOPE = -0.5
_STEPS = (1e-10, 1e-15, 1e-20)  # distances from a singular point
_SING_DPS = 80
_PERIODIC_RANGE = 20.0
_SCAN_RANGE = 60.0
_CALLABLE_Z = (8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0)
#: a convergent integrand may hold at most RESOLVED_MASS of its mass beyond |z| = Z_RESOLVED (else
#: `Unresolved`, a ValueError); the mass is estimated on the grid _MASS_Z
Z_RESOLVED = 12.0
RESOLVED_MASS = 1e-6
_MASS_Z = np.linspace(-40.0, 40.0, 321)
_EXP_GUARD = "1e1000"  # exp of a larger (mpmath) argument is +inf: log|f| beyond every z^2 / 2 of the grid
_CACHE: OrderedDict = OrderedDict()


def _far_z(Q: float) -> list:
    """FAR_Z, extended by factors of 1e15 until z >= 1e12 sqrt(Q): far enough that exponential-linear growth
    exp(c x) is beaten by the Gaussian weight (it is from z ~ 4 c sqrt(Q) on)."""
    zs = list(FAR_Z)
    while zs[-1] < 1e12 * math.sqrt(Q):
        zs.append(zs[-1] * 1e15)
    return zs


def _check_resolved(z: np.ndarray, g: np.ndarray, what: str) -> None:
    """ValueError when more than RESOLVED_MASS of the integrand exp(g(z)) (g the log-integrand
    2 log|f(sqrt(q) z)| - z^2/2 sampled on the grid z) lies beyond |z| = Z_RESOLVED: the integral
    converges, but its mass lies where the quadrature is not accurate."""
    g = np.where(np.isnan(g), -np.inf, g)
    top = float(np.max(g))
    if not math.isfinite(top):
        return
    w = np.exp(g - top)
    outer = float(w[np.abs(z) > Z_RESOLVED].sum() / w.sum())
    if outer > RESOLVED_MASS:
        raise Unresolved(f"{what}(sqrt(q) z)^2 phi(z) has {outer:.2g} of its mass beyond |z| = {Z_RESOLVED:g}; "
                         "the quadrature is accurate only for integrands concentrated within that range (E x^72 "
                         "came out 4e-12 off, E exp(2x) at q = 64 13% off), so the integral is not computed")


class Undecidable(ValueError):
    """The divergence of a Gaussian integral of the named activation could not be decided."""


class Unbounded(ValueError):
    """An integrable singularity: the integral is finite, but quadrature cannot guarantee its accuracy."""


class Unresolved(ValueError):
    """A convergent integral whose mass lies beyond the range where the quadrature is accurate."""


def divergence(act, q: np.ndarray, derivative: int = 0) -> tuple[np.ndarray, str]:
    """Where E f(sqrt(q) z)^2 (derivative=1: E f'(sqrt(q) z)^2) is +inf, for an `Activation` f.

    Parameters
    ----------
    act : Activation
        f = gamma (phi(g x) + alpha x + beta); only the core phi can diverge (at variance g^2 q).
    q : numpy.ndarray
        Flat array of input variances, > 0.
    derivative : 0 or 1
        Examine f (0) or its derivative between the kinks (1).

    Returns
    -------
    (mask, reason) : (numpy.ndarray of bool, str)
        ``mask[i]`` is True where the integral diverges at ``q[i]``; ``reason`` says why (for the first
        divergent variance; "" when none diverges).

    Raises
    ------
    ValueError
        When divergence cannot be decided (see the module docstring), naming the activation and q.
    """
    q = np.asarray(q, dtype=np.float64).ravel()
    mask = np.zeros(q.shape, dtype=bool)
    if q.size == 0 or act.per_unit or np.all(np.asarray(act.gamma) == 0.0):
        return mask, ""
    profile = _profile(act.core, derivative)
    if profile is None:
        return mask, ""
    Q = act.gain**2 * q
    uq, inv = np.unique(Q, return_inverse=True)
    verdicts: dict = {}

    def decide(i):
        if i not in verdicts:
            verdicts[i] = _decide(profile, float(uq[i]), act)
        return verdicts[i][0]

    # divergence is monotone in q: find the first divergent variance by bisection
    lo, hi = 0, uq.size - 1
    if not decide(hi):
        return mask, ""
    if decide(lo):
        first = 0
    else:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if decide(mid) else (mid, hi)
        first = hi
    mask = inv >= first
    return mask, verdicts[first][1]


def _decide(profile, Q: float, act):
    """The verdict (diverges, reason) at the core variance Q, through the profile's monotone memo: every
    Q' <= a convergent Q converges, every Q' >= a divergent Q diverges."""
    if Q <= profile.q_converges:
        return False, ""
    if Q >= profile.q_diverges[0]:
        return True, profile.q_diverges[1]
    try:
        verdict = profile.diverges(Q)
    except (Undecidable, Unbounded, Unresolved) as exc:
        raise type(exc)(f"activation {act.name!r} at q={Q / act.gain**2:g}: {exc}") from None
    if verdict[0]:
        profile.q_diverges = (Q, verdict[1])
    else:
        profile.q_converges = Q
    return verdict


# ---------------------------------------------------------------------------------------------------------
def _profile(core, derivative: int):
    """The cached divergence profile of a core (None: a built-in family, square-integrable everywhere)."""
    from hermite.cores import CallableCore, ExpressionCore, SubtractedCore

    if isinstance(core, ExpressionCore) and core.expr is not None:
        from hermite.expressions import core_expr

        key = ("expr", str(core.expr), tuple(core.kinks), derivative)
        make = lambda: _Formula(core_expr(core), derivative)  # noqa: E731
    elif isinstance(core, SubtractedCore) and core.spec is not None:
        key = ("sub", repr(sorted(core.spec["subtract"]["base"].items())), derivative)
        make = lambda: _Base(core.spec["subtract"]["base"], derivative)  # noqa: E731
    elif isinstance(core, (CallableCore, SubtractedCore)):
        fn = core.fn if derivative == 0 else core.derivative
        if fn is None:
            return None
        key = ("callable", id(core), derivative)
        make = lambda: _Sampled(fn, core)  # noqa: E731
    else:
        return None
    hit = _CACHE.get(key)
    if hit is None:
        hit = make()
        _CACHE[key] = hit
        if len(_CACHE) > 128:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return hit


class _Base:
    """A polynomial-subtracted core (`hermite.transform`): it diverges exactly where its base does."""

    q_converges = 0.0  # the largest variance known to converge
    q_diverges = (math.inf, "")  # the smallest known to diverge, and why

    def __init__(self, spec: dict, derivative: int):
        from hermite.activations import Activation

        self.base = Activation.from_dict(spec)
        self.derivative = derivative

    def diverges(self, Q: float):
        mask, reason = divergence(self.base, np.array([Q]), self.derivative)
        return bool(mask[0]), reason


class _Sampled:
    """A numpy callable, judged from float64 samples of its tail integrand."""

    q_converges = 0.0  # the largest variance known to converge
    q_diverges = (math.inf, "")  # the smallest known to diverge, and why

    def __init__(self, fn, core):
        self.fn = fn
        self.core = core  # keeps id(core) in the cache key alive

    def diverges(self, Q: float):
        s = math.sqrt(Q)
        zc = np.linspace(-8.0, 8.0, 33)  # includes z = 0
        xs = np.concatenate([s * zc, np.asarray(self.core.kinks, dtype=np.float64)])
        with np.errstate(all="ignore"):
            yc = np.asarray(self.fn(xs), dtype=np.float64)
        if not np.all(np.isfinite(yc)):
            x0 = float(xs[np.argmax(~np.isfinite(yc))])
            raise Undecidable(f"the callable returned {yc[np.argmax(~np.isfinite(yc))]} at x = {x0:g} (a singularity "
                              "or a domain error); cannot decide whether E f^2 converges: give the activation as a "
                              "formula, whose singularities are examined exactly")
        bulk_max = float(np.max(yc[:zc.size] ** 2 * np.exp(-0.5 * zc * zc)))
        for sign in (1.0, -1.0):
            z = np.array(_CALLABLE_Z)
            pts = sign * (s * z[:, None] + np.array(_OFFSETS)[None, :])
            with np.errstate(all="ignore"):
                y = np.abs(np.asarray(self.fn(pts.ravel()), dtype=np.float64)).reshape(pts.shape)
                logt = (2 * np.log(y) - 0.5 * (pts / s) ** 2).max(axis=1)
            bad = ~np.isfinite(y).all(axis=1) | np.isnan(logt)
            n = int(np.argmax(bad)) if bad.any() else z.size  # samples before the first non-finite one
            with np.errstate(invalid="ignore"):
                grew = n >= 2 and bool(np.all(np.diff(logt[:n]) > 0))
            if n < z.size and np.isnan(y[n]).any():
                raise Undecidable(f"the callable returned NaN at x = {sign * s * z[n]:g}; cannot decide whether "
                                  "E f^2 converges")
            if n < z.size and grew:
                return True, (f"f(sqrt(q) z)^2 phi(z) grows along the samples z = {sign * z[0]:g} .. "
                              f"{sign * z[n - 1]:g} and f overflows at z = {sign * z[n]:g}")
            if n < 3:
                raise Undecidable(f"the callable overflows at x = {sign * s * z[n]:g}; cannot decide whether "
                                  "E f^2 converges")
            if logt[n - 1] == -np.inf:
                continue  # f vanishes far out on this side
            slope = (logt[n - 1] - logt[n - 2]) / math.log(z[n - 1] / z[n - 2]) if logt[n - 2] > -np.inf \
                else -np.inf
            if slope > _DIVERGE_SLOPE:
                return True, (f"f(sqrt(q) z)^2 phi(z) does not decay at z = {sign * z[n - 1]:g} "
                              f"(log-slope {slope:.3g}): f^2 grows at least like the inverse Gaussian weight")
            tail = math.exp(min(float(logt[n - 1]), 700.0))
            if not (slope < _CONVERGE_SLOPE and tail <= 1e-30 * bulk_max):
                raise Undecidable(f"f(sqrt(q) z)^2 phi(z) at z = {sign * z[n - 1]:g} is still {tail:.3g} "
                                  f"(log-slope {slope:.3g}) against its bulk {bulk_max:.3g}; cannot decide "
                                  "whether E f^2 converges")
        with np.errstate(all="ignore"):
            g = 2 * np.log(np.abs(np.asarray(self.fn(s * _MASS_Z), dtype=np.float64))) - 0.5 * _MASS_Z**2
        _check_resolved(_MASS_Z, g, "f")
        return False, ""


# ---------------------------------------------------------------------------------------------------------
# formulas
def _mp_functions(mp):
    """mpmath versions of the formula functions that cannot hang or overflow on huge arguments: exp of
    |t| > 1e200 is inf or 0, sin/cos of arguments beyond the working precision are their envelope 1."""

    guard = mp.mpf(_EXP_GUARD)

    def exp(t):
        if t > guard:
            return mp.inf
        if t < -guard:
            return mp.mpf(0)
        return mp.exp(t)

    def _trig(f):
        def g(t):
            if abs(t) > mp.mpf(10) ** (mp.mp.dps - 20):
                return mp.mpf(1)
            return f(t)
        return g

    def tan(t):
        if abs(t) > mp.mpf(10) ** (mp.mp.dps - 20):
            return mp.nan
        return mp.tan(t)

    def cosh(t):
        return exp(abs(t)) / 2 if abs(t) > 1e6 else mp.cosh(t)

    def sinh(t):
        return mp.sign(t) * exp(abs(t)) / 2 if abs(t) > 1e6 else mp.sinh(t)

    def heaviside(t, h=0.5):
        return mp.mpf(1) if t > 0 else (mp.mpf(0) if t < 0 else mp.mpf(h))

    return {"exp": exp, "sin": _trig(mp.sin), "cos": _trig(mp.cos), "tan": tan, "cosh": cosh, "sinh": sinh,
            "Heaviside": heaviside}


class _Formula:
    """A sympy formula: singularities with sympy and mpmath, growth with mpmath (see the module docstring)."""

    q_converges = 0.0  # the largest variance known to converge
    q_diverges = (math.inf, "")  # the smallest known to diverge, and why

    def __init__(self, expr, derivative: int):
        import sympy as sp

        self.x = sp.Symbol("x", real=True)
        if derivative:
            from hermite.expressions import _between_kinks

            expr = _between_kinks(sp.diff(expr, self.x))
        self.expr = expr
        self.what = "f'" if derivative else "f"
        self._fn = None
        self._singular = None

    def fn(self):
        if self._fn is None:
            import mpmath
            import sympy as sp

            self._fn = sp.lambdify(self.x, self.expr, modules=[_mp_functions(mpmath), "mpmath"])
        return self._fn

    def _log_abs(self, t, mp):
        """log|f(t)| with mpmath: +inf on overflow, -inf at zeros, None where undefined or failing."""
        try:
            v = self.fn()(t)
        except (OverflowError, ZeroDivisionError):
            return None
        except Exception:  # noqa: BLE001 - a formula can fail in many ways far out
            return None
        if isinstance(v, mp.mpc):
            if abs(v.imag) > 1e-20 * (abs(v.real) + 1e-300):
                raise Undecidable(f"{self.what} = {self.expr} is not real-valued at x = {mp.nstr(t, 8)}")
            v = v.real
        if v != v:  # NaN
            return None
        if mp.isinf(v):
            return mp.inf
        return mp.log(abs(v)) if v != 0 else -mp.inf

    # -- singularities ----------------------------------------------------------------------------------
    def diverges(self, Q: float):
        sing = self.singular()
        if sing[0]:
            return sing
        return self._growth(Q)

    def singular(self):
        if self._singular is None:
            self._singular = self._find_singular()
        return self._singular

    def _find_singular(self):
        import mpmath as mp

        for x0 in self._candidates():
            for side in (1, -1):
                with mp.workdps(_SING_DPS):
                    c = mp.mpf(x0) if not hasattr(x0, "evalf") else mp.mpf(str(x0.evalf(_SING_DPS + 10)))
                    L = [self._log_abs(c + side * mp.mpf(h), mp) for h in _STEPS]
                    if any(v is None for v in L):
                        raise Undecidable(f"cannot evaluate {self.what} = {self.expr} near its singular point "
                                          f"x = {float(c):.6g}")
                    if all(v == -mp.inf for v in L):
                        continue
                    if any(v == mp.inf for v in L):
                        return True, (f"{self.what} = {self.expr} is infinite near x = {float(c):.6g}: "
                                      "a non-integrable singularity")
                    p = [-(L[i + 1] - L[i]) / mp.log(mp.mpf(_STEPS[i + 1]) / _STEPS[i]) for i in range(2)]
                    two_p = 2 * float(p[-1])
                    where = f"x = {float(c):.6g}{'+' if side > 0 else '-'}"
                    if two_p >= 1.2:
                        return True, (f"{self.what}^2 = ({self.expr})^2 grows like |x - x0|^(-{two_p:.3g}) at "
                                      f"{where}: a non-integrable singularity")
                    if two_p > 0.8:
                        # h f(x0 + h)^2 not decreasing: f^2 ~ 1/h up to logarithms, not integrable
                        r = [2 * v + mp.log(mp.mpf(h)) for v, h in zip(L, _STEPS)]
                        if r[2] >= r[1] - math.log(2.0) and r[1] >= r[0] - math.log(2.0):
                            return True, (f"{self.what}^2 = ({self.expr})^2 grows like 1/|x - x0| at {where}: "
                                          "a non-integrable singularity")
                        raise Undecidable(f"{self.what}^2 = ({self.expr})^2 grows like |x - x0|^(-{two_p:.3g}) "
                                          f"at {where}, too close to 1/|x - x0| to decide integrability")
                    if L[2] > L[1] + 0.05 and L[1] > L[0] + 0.05:
                        raise Unbounded(f"{self.what} = {self.expr} is unbounded near {where} (|{self.what}| ~ "
                                        f"|x - x0|^(-{two_p / 2:.3g})): its Gaussian integrals are finite but the "
                                        "quadrature cannot compute them to the promised accuracy, so they are "
                                        "not computed")
        return False, ""

    def _candidates(self) -> list:
        """Real points where a denominator, a log argument or a tan's cosine vanishes."""
        import sympy as sp

        x = self.x
        targets = []
        for node in sp.preorder_traversal(self.expr):
            if isinstance(node, sp.Pow) and node.base.has(x) and (not node.exp.is_number or node.exp.is_negative):
                targets.append(node.base)
            elif isinstance(node, sp.log) and node.args[0].has(x):
                targets.append(node.args[0])
            elif isinstance(node, sp.tan) and node.args[0].has(x):
                targets.append(sp.cos(node.args[0]))
        points = []
        for t in targets:
            points.extend(self._zeros(t))
        return points

    def _zeros(self, t) -> list:
        import sympy as sp

        from hermite.expressions import polynomial_real_roots

        x = self.x
        roots = polynomial_real_roots(t)
        if roots is not None:
            return roots
        try:
            sol = sp.solveset(t, x, sp.S.Reals)
        except Exception:  # noqa: BLE001
            sol = None
        if isinstance(sol, sp.FiniteSet):
            return [s for s in sol if s.is_real is not False]
        if sol is sp.S.EmptySet:
            return []
        if sol is not None and not isinstance(sol, sp.ConditionSet):
            try:
                window = sol.intersect(sp.Interval(-_PERIODIC_RANGE, _PERIODIC_RANGE))
                if isinstance(window, sp.FiniteSet):
                    return list(window)
                if isinstance(window, sp.Interval) or (isinstance(window, sp.Union)
                                                       and any(isinstance(a, sp.Interval) for a in window.args)):
                    raise Undecidable(f"{t} vanishes on an interval ({window}): {self.what} = {self.expr} is "
                                      "undefined there")
            except Undecidable:
                raise
            except Exception:  # noqa: BLE001
                pass
        return self._scan(t)

    def _scan(self, t) -> list:
        """Numeric zeros of t on [-60, 60]: exact zeros on a fine grid, and sign changes refined by bisection
        in mpmath (80 digits), so that the singular point is located far closer than the steps h."""
        import mpmath as mp
        import sympy as sp

        f = sp.lambdify(self.x, t, "numpy")
        grid = np.linspace(-_SCAN_RANGE, _SCAN_RANGE, 240001)
        with np.errstate(all="ignore"):
            v = np.broadcast_to(np.asarray(f(grid), dtype=np.float64), grid.shape)
        pts = [float(p) for p in grid[v == 0]]
        s = np.sign(v)
        change = np.nonzero(s[:-1] * s[1:] < 0)[0][:64]
        if change.size:
            g = sp.lambdify(self.x, t, modules=[_mp_functions(mp), "mpmath"])
            with mp.workdps(_SING_DPS):
                for i in change:
                    a, b = mp.mpf(grid[i]), mp.mpf(grid[i + 1])
                    try:
                        ga = g(a)
                        for _ in range(4 * _SING_DPS):
                            m = (a + b) / 2
                            gm = g(m)
                            if gm == 0:
                                a = b = m
                                break
                            if (gm > 0) == (ga > 0):
                                a, ga = m, gm
                            else:
                                b = m
                        pts.append(sp.Float(str((a + b) / 2), _SING_DPS))
                    except Exception:  # noqa: BLE001 - fall back to the grid midpoint
                        pts.append(float(0.5 * (grid[i] + grid[i + 1])))
        return pts[:64]

    # -- growth -----------------------------------------------------------------------------------------
    def _growth(self, Q: float):
        verdict = self._growth_at(Q, extra=0)
        if verdict[0]:
            again = self._growth_at(Q, extra=40)  # confirm with more digits: no fake growth by cancellation
            if not again[0]:
                raise Undecidable(f"the growth of {self.what} = {self.expr} depends on the working precision "
                                  "(round-off cancellation); cannot decide whether E f^2 converges")
            return verdict
        import mpmath as mp

        with mp.workdps(30):
            sq = mp.sqrt(mp.mpf(Q))
            logs = [self._log_abs(sq * mp.mpf(float(t)), mp) for t in _MASS_Z]
        g = np.array([-np.inf if v is None else float(2 * v) for v in logs]) - 0.5 * _MASS_Z**2
        _check_resolved(_MASS_Z, g, self.what)
        return verdict

    def _growth_at(self, Q: float, extra: int):
        import mpmath as mp

        sq = math.sqrt(Q)
        grid = _far_z(Q)
        for sign in (1, -1):
            zs, gs = [], []
            for z in grid:
                dps = 30 + extra + 2 * max(0, math.ceil(math.log10(z * max(sq, 1.0))))
                with mp.workdps(dps):
                    xz = mp.sqrt(mp.mpf(Q)) * mp.mpf(z)
                    best = None
                    for o in _OFFSETS:
                        xo = xz + o
                        v = self._log_abs(sign * xo, mp)
                        if v is None:
                            continue
                        if v == mp.inf:
                            return True, (f"|{self.what}(x)| overflows every bound near x = {sign * float(xo):.3g}: "
                                          f"{self.what}^2 grows faster than the Gaussian weight exp(-x^2/(2q)) "
                                          "decays")
                        g = 2 * v - xo * xo / (2 * Q)  # the log-integrand at z = xo / sqrt(Q)
                        best = g if best is None else max(best, g)
                    if best is None:
                        continue
                    zs.append(z)
                    gs.append(best)
            if zs and zs[-1] == grid[-1] and gs[-1] == -mp.inf:
                continue  # f vanishes far out on this side
            far = [(z, g) for z, g in zip(zs, gs) if z >= 64 and g != -mp.inf]
            if len(far) < 3:
                raise Undecidable(f"{self.what} = {self.expr} could not be evaluated far out on the "
                                  f"{'positive' if sign > 0 else 'negative'} side")
            (z0, g0), (z1, g1), (z2, g2) = far[-3:]
            s1 = float((g1 - g0) / mp.log(mp.mpf(z1) / z0))
            s2 = float((g2 - g1) / mp.log(mp.mpf(z2) / z1))
            if s2 > _DIVERGE_SLOPE:
                return True, (f"{self.what}(sqrt(q) z)^2 phi(z) does not decay at z = {sign * z2:g} "
                              f"(log-slope {s2:.3g}): {self.what}^2 grows at least like the inverse of the "
                              "Gaussian weight exp(-x^2/(2q))")
            if not (s1 < _CONVERGE_SLOPE and s2 < _CONVERGE_SLOPE):
                raise Undecidable(f"{self.what}(sqrt(q) z)^2 phi(z) decays like z^({s2:.3g}) at "
                                  f"z = {sign * z2:g}, too close to 1/z to decide whether E {self.what}^2 converges")
        return False, ""
