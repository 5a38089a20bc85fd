"""The `Activation` type: f(x) = gamma (phi(g x) + alpha x + beta) for a core phi, and its constructor.

An activation is stored as a *core* function phi (`hermite.cores`) together with an outer affine map,

    f(x) = gamma * (phi(gain * x) + alpha * x + beta),

so that gains (``activation("relu", gain=2)``) and the transformations of Vatanen, Raiko, Valpola and
LeCun (2013) (``hermite.transform``) keep every closed form of phi. This module is the only place that
knows the affine map: with Q = g^2 q, Stein's lemma (E[phi(g u) u] = sqrt(q) c_1^phi(Q) for u ~ N(0, q))
and Mehler's formula give exactly

    c_k^f(q) = gamma [c_k^phi(Q) + alpha sqrt(q) [k = 1] + beta [k = 0]],
    E f(u)^2 = gamma^2 [M_phi(Q) + alpha^2 q + beta^2 + 2 alpha sqrt(q) c_1^phi(Q) + 2 beta c_0^phi(Q)],
    E[f(u) f(v)] = gamma^2 [K_phi + alpha rho (sqrt(q2) c_1^phi(Q1) + sqrt(q1) c_1^phi(Q2))
                   + alpha^2 rho sqrt(q1 q2) + beta (c_0^phi(Q1) + c_0^phi(Q2)) + beta^2],

(`Activation.coefficients_at`, `second_moment_at`, `kernel_at`, `mean_at`, `exact_coefficients_at`: the
unvalidated, flat-array methods behind the public verbs, used by the engines).

alpha, beta and gamma may also be 1-D arrays, one value per unit (Vatanen et al.'s per-unit
transformations): f then acts on the last axis of x unit by unit (``act.per_unit``); such an activation
has no single Hermite expansion, and everything that needs one raises ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hermite.basis import exact_number
from hermite.builtins import builtin_core, builtin_names, resolve
from hermite.cores import Core, NoClosedForm, SubtractedCore
from hermite.expressions import _from_callable, _from_expr, core_expr, is_sympy, parse_expression
from hermite.validate import check_gain, check_per_unit

__all__ = ["Activation", "activation", "builtin_names", "parse_expression"]

_AFFINE = (("gain", 1.0), ("alpha", 0.0), ("beta", 0.0), ("gamma", 1.0))


def _fmt(v) -> str:
    if isinstance(v, np.ndarray) and v.ndim == 1:
        head = ", ".join(f"{t:.6g}" for t in v[:3])
        return f"[{head}{', ...' if v.size > 3 else ''}]"
    return f"{v:.6g}"


def _hashable(v):
    return tuple(float(t) for t in v) if isinstance(v, np.ndarray) and v.ndim == 1 else v


@dataclass(frozen=True, eq=False)
class Activation:
    """f(x) = gamma * (phi(gain * x) + alpha * x + beta) for a core phi.

    Build with `hermite.activation`; transform with `hermite.transform`. Calling it evaluates f on a
    numpy array (float64). ``act.fn`` is the numpy function, ``act.kinks`` the points (in x) where f is
    not smooth, ``act.features`` the points near which it varies on the scale 1/gain, ``act.parity``
    +1 (even), -1 (odd) or None, ``act.homogeneous_degree`` 1 (f(cx) = c f(x) for c > 0), 0
    (f(cx) = f(x)) or None. alpha, beta, gamma may be 1-D arrays, one value per unit (``act.per_unit``).
    """

    core: Core
    gain: float = 1.0
    alpha: Any = 0.0
    beta: Any = 0.0
    gamma: Any = 1.0
    label: str | None = None

    def __post_init__(self):
        if np.ndim(self.gain) != 0:
            raise ValueError(f"gain={self.gain!r} must be a single number (not per unit)")
        sizes = set()
        for key in ("alpha", "beta", "gamma"):
            v = check_per_unit(getattr(self, key), key)
            object.__setattr__(self, key, v)
            if isinstance(v, np.ndarray):
                sizes.add(v.size)
        if len(sizes) > 1:
            raise ValueError(f"alpha, beta, gamma have per-unit lengths {sorted(sizes)}; they must agree")

    # ----------------------------------------------------------------------------------------------
    @property
    def per_unit(self) -> bool:
        """True when alpha, beta or gamma holds one value per unit (a 1-D array)."""
        return any(isinstance(v, np.ndarray) for v in (self.alpha, self.beta, self.gamma))

    @property
    def units(self) -> int | None:
        """The number of units of a per-unit activation, else None."""
        for v in (self.alpha, self.beta, self.gamma):
            if isinstance(v, np.ndarray):
                return v.size
        return None

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        s = self.core.name
        if self.gain != 1.0:
            s = f"{s}(gain={self.gain:g})"
        if self.per_unit or (self.alpha, self.beta, self.gamma) != (0.0, 0.0, 1.0):
            s = f"{_fmt(self.gamma)}*({s} + {_fmt(self.alpha)}*x + {_fmt(self.beta)})"
        return s

    @property
    def params(self) -> dict:
        return dict(self.core.params)

    @property
    def is_plain(self) -> bool:
        """True when f is the core itself (no gain, no affine part)."""
        return not self.per_unit and (self.gain, self.alpha, self.beta, self.gamma) == (1.0, 0.0, 0.0, 1.0)

    @property
    def kinks(self) -> tuple:
        return tuple(sorted(t / self.gain for t in self.core.kinks))

    @property
    def jumps(self) -> tuple:
        return tuple(sorted(t / self.gain for t in self.core.jumps))

    @property
    def features(self) -> tuple:
        """Points (in x) near which f varies on the scale 1/gain (quadrature grades its panels there)."""
        return tuple(sorted(t / self.gain for t in self.core.features))

    @property
    def parity(self) -> int | None:
        p = self.core.parity
        if p == -1 and np.all(np.asarray(self.beta) == 0.0):  # odd + alpha x stays odd
            return -1
        if p == 1 and np.all(np.asarray(self.alpha) == 0.0):  # even + beta stays even
            return 1
        return None

    @property
    def homogeneous_degree(self) -> int | None:
        """1 if f(c x) = c f(x) for every c > 0 (the arc-cosine family a relu(x) + b relu(-x), identity and
        other piecewise-linear cores broken only at 0, with beta = 0), 0 if f(c x) = f(x) (the step family
        a 1{x>0} + b 1{x<0} and constants, with alpha = 0), else None."""
        d = self.core.homogeneous_degree
        if d == 1 and np.all(np.asarray(self.beta) == 0.0):
            return 1
        if d == 0 and np.all(np.asarray(self.alpha) == 0.0):
            return 0
        return None

    @property
    def has_derivative(self) -> bool:
        """True when f' (between the kinks) is available."""
        return self.core.derivative is not None

    @property
    def has_second_derivative(self) -> bool:
        """True when f'' (between the kinks) is available."""
        return self.core.second_derivative is not None

    @property
    def expr(self):
        """sympy expression of f in the real symbol x, or None (opaque callables, per-unit parameters)."""
        base = core_expr(self.core)
        if base is None or self.per_unit:
            return None
        import sympy as sp

        x = sp.Symbol("x", real=True)
        g = _sym_number(self.gain)
        e = base.subs(x, g * x) if self.gain != 1.0 else base
        if not self.is_plain:
            e = _sym_number(self.gamma) * (e + _sym_number(self.alpha) * x + _sym_number(self.beta))
        return e

    # ----------------------------------------------------------------------------------------------
    # evaluation
    def _check_units(self, x):
        n = self.units
        if np.ndim(x) == 0 or x.shape[-1] != n:
            raise ValueError(f"x.shape={tuple(np.shape(x))} must end in {n}: activation {self.name!r} has "
                             f"per-unit parameters for {n} units (the last axis of x)")

    def fn(self, x):
        x = np.asarray(x, dtype=np.float64)
        y = self.core.fn(self.gain * x if self.gain != 1.0 else x)
        if self.is_plain:
            return y
        if self.per_unit:
            self._check_units(x)
        return self.gamma * (y + self.alpha * x + self.beta)

    __call__ = fn

    def derivative(self, x):
        """f'(x) between the kinks (the weak derivative; jumps are not included)."""
        if self.core.derivative is None:
            raise ValueError(
                f"activation {self.name!r} has no derivative: pass derivative= to hermite.activation "
                "or give it as a sympy expression"
            )
        x = np.asarray(x, dtype=np.float64)
        if self.per_unit:
            self._check_units(x)
        d = self.core.derivative(self.gain * x) * self.gain
        return self.gamma * (d + self.alpha)

    def second_derivative(self, x):
        """f''(x) = gamma g^2 phi''(g x) between the kinks (delta masses at kinks are not included)."""
        if self.core.second_derivative is None:
            raise ValueError(
                f"activation {self.name!r} has no second derivative: pass second_derivative= to "
                "hermite.activation or give it as a sympy expression"
            )
        x = np.asarray(x, dtype=np.float64)
        if self.per_unit:
            self._check_units(x)
        return self.gamma * (self.core.second_derivative(self.gain * x) * (self.gain * self.gain))

    def array_fn(self, x, xp):
        """f on an array of any array-API namespace ``xp`` (used by the finite-width simulator)."""
        if self.core.array_fn is None:
            y = self.core.fn(self.gain * x if self.gain != 1.0 else x)  # numpy ufuncs dispatch (cupy)
        else:
            y = self.core.array_fn(self.gain * x if self.gain != 1.0 else x, xp)
        if self.is_plain:
            return y
        if self.per_unit:
            self._check_units(x)
            a, b, g = (xp.asarray(v, dtype=x.dtype) if isinstance(v, np.ndarray) else v
                       for v in (self.alpha, self.beta, self.gamma))
            return g * (y + a * x + b)
        return self.gamma * (y + self.alpha * x + self.beta)

    def array_derivative(self, x, xp):
        """f' on an array of any array-API namespace ``xp``, through the core's numpy-ufunc derivative
        (which dispatches on cupy); the simulator falls back to a host round trip where it does not."""
        if self.core.derivative is None:
            self.derivative(np.zeros(1))  # raises the ValueError that names the activation
        d = self.core.derivative(self.gain * x if self.gain != 1.0 else x)
        if self.per_unit:
            self._check_units(x)
            a, g = (xp.asarray(v, dtype=x.dtype) if isinstance(v, np.ndarray) else v for v in (self.alpha, self.gamma))
            return g * (d * self.gain + a)
        return self.gamma * (d * self.gain + self.alpha)

    # ----------------------------------------------------------------------------------------------
    # Gaussian integrals on flat 1-D float64 arrays, unvalidated (the public verbs validate and call these)
    def check_single(self, what: str):
        """ValueError for a per-unit activation: ``what`` needs one scalar function."""
        if self.per_unit:
            raise ValueError(f"activation {self.name!r} has per-unit parameters (alpha, beta or gamma one per "
                             f"unit), which have no single Hermite expansion; {what} needs one scalar function")

    def coefficients_at(self, K: int, Q: np.ndarray) -> np.ndarray:
        """c_0..c_K of f at the variances Q (1-D), shape (Q.size, K+1) (possibly a shared read-only array)."""
        self.check_single("coefficients")
        c = self.core.coefficients(K, self.gain**2 * Q)
        if not self.is_plain:
            c = c * self.gamma
            c[:, 0] += self.gamma * self.beta
            if K >= 1:
                c[:, 1] += self.gamma * self.alpha * np.sqrt(Q)
        return c

    def second_moment_at(self, Q: np.ndarray) -> np.ndarray:
        """E f(sqrt(Q) z)^2 at the variances Q (1-D)."""
        self.check_single("second_moment")
        Qg = self.gain**2 * Q
        m = self.core.second_moment(Qg)
        if self.is_plain:
            return m
        c = self.core.coefficients(1, Qg)
        a, b, g = self.alpha, self.beta, self.gamma
        return g * g * (m + a * a * Q + b * b + 2 * a * np.sqrt(Q) * c[:, 1] + 2 * b * c[:, 0])

    def mean_at(self, q: np.ndarray, derivative: int = 0, fast: bool = False) -> np.ndarray:
        """E f(u) (derivative=0) or E f'(u) (derivative=1) for u ~ N(0, q), q 1-D.

        fast=True (the engines) lets many variances of a generic core share the verified interpolants in
        log q of `hermite.log_q_tables` (c_0, c_1 to ~3e-14 of ||c(q)|| instead of ~1e-16), as the kernels'
        own coefficients do. The mean of an odd core (E f(u) = 0 by symmetry) is not integrated at all.
        """
        self.check_single("the Gaussian mean")
        if derivative == 0 and self.core.parity == -1:
            return self.gamma * (np.zeros(np.shape(q)) + self.beta)  # c_0 = 0 exactly, as the coefficients give it
        Q = self.gain**2 * q
        uq, inv = np.unique(Q, return_inverse=True)
        c = self.core.coefficients(1, uq, fast)[inv]
        if derivative == 0:
            return self.gamma * (c[:, 0] + self.beta)
        return self.gamma * (self.gain * c[:, 1] / np.sqrt(Q) + self.alpha)  # E phi'(u) = c_1 / sqrt(Q)

    def kernel_at(self, r, q1, q2, derivative: int = 0) -> np.ndarray:
        """E[f(u) f(v)] (derivative=1: E[f'(u) f'(v)]) at correlation r and variances q1, q2.

        The engines pass a flat array r with q1, q2 flat arrays of its size or floats shared by every entry (a
        Gram whose variances are all equal: no per-entry variance arrays). Any other shapes (scalars, 0-d or
        n-d arrays) are broadcast together, evaluated flat and returned in the broadcast shape.
        """
        r_arr = np.asarray(r, dtype=np.float64)
        flat = r_arr.ndim == 1 and all(
            np.ndim(q) == 0 and not isinstance(q, np.ndarray) or np.shape(q) == r_arr.shape for q in (q1, q2))
        if not flat:
            try:
                shape = np.broadcast_shapes(r_arr.shape, np.shape(q1), np.shape(q2))
            except ValueError:
                raise ValueError(f"kernel_at: r, q1 and q2 must broadcast together; got shapes {r_arr.shape}, "
                                 f"{np.shape(q1)} and {np.shape(q2)}") from None
            r1, a1, a2 = (np.ascontiguousarray(np.broadcast_to(np.asarray(x, dtype=np.float64), shape)).ravel()
                          for x in (r_arr, q1, q2))
            return np.asarray(self.kernel_at(r1, a1, a2, derivative)).reshape(shape)
        r = r_arr
        self.check_single("kernel")
        g = self.gain
        if self.is_plain:
            return self.core.kernel(r, g * g * q1 if g != 1.0 else q1, g * g * q2 if g != 1.0 else q2, derivative)
        q1 = np.broadcast_to(np.asarray(q1, dtype=np.float64), np.shape(r))
        q2 = np.broadcast_to(np.asarray(q2, dtype=np.float64), np.shape(r))
        Q1, Q2 = g * g * q1, g * g * q2
        kc = self.core.kernel(r, Q1, Q2, derivative)
        a, b, gm = self.alpha, self.beta, self.gamma
        uq, inv = np.unique(np.concatenate([Q1, Q2]), return_inverse=True)
        c = self.core.coefficients(1, uq)[inv]
        c1, c2 = c[: r.size], c[r.size:]
        if derivative == 0:
            out = (kc + a * r * (np.sqrt(q2) * c1[:, 1] + np.sqrt(q1) * c2[:, 1])
                   + a * a * r * np.sqrt(q1) * np.sqrt(q2) + b * (c1[:, 0] + c2[:, 0]) + b * b)
        else:
            out = g * g * kc + a * g * (c1[:, 1] / np.sqrt(Q1) + c2[:, 1] / np.sqrt(Q2)) + a * a
        return gm * gm * out

    def exact_coefficients_at(self, K: int, q) -> list:
        """Exact sympy c_0..c_K at the sympy variance q (ValueError where the core has no closed form)."""
        self.check_single("exact_coefficients")
        import sympy as sp

        try:
            c = self.core.exact_coefficients(K, exact_number(self.gain) ** 2 * q)
        except NoClosedForm:
            raise NoClosedForm(self.name) from None
        if not self.is_plain:
            g, a, b = exact_number(self.gamma), exact_number(self.alpha), exact_number(self.beta)
            c = [g * ck for ck in c]
            c[0] += g * b
            if K >= 1:
                c[1] += g * a * sp.sqrt(q)
        return c

    # ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain, JSON-safe description (raises ValueError for an opaque user callable); per-unit
        parameters are stored as lists."""
        if self.core.spec is None:
            raise ValueError(
                f"activation {self.name!r} is an opaque Python callable and cannot be serialized; "
                "give it as a string or sympy expression to make it serializable"
            )
        d = dict(self.core.spec)
        for k, default in _AFFINE:
            v = getattr(self, k)
            if isinstance(v, np.ndarray):
                d[k] = [float(t) for t in v]
            elif v != default:
                d[k] = float(v)
        if self.label:
            d["label"] = self.label
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Activation:
        d = dict(d)
        affine = {k: ([float(t) for t in d.pop(k)] if isinstance(d[k], (list, tuple)) else float(d.pop(k)))
                  for k, _ in _AFFINE if k in d}
        label = d.pop("label", None)
        if "subtract" in d:
            base = Activation(SubtractedCore.from_spec(d["subtract"], cls.from_dict))
        elif "expr" in d:
            base = activation(d["expr"], kinks=d.get("kinks"))
        else:
            base = activation(d["name"], **d.get("params", {}))
        return replace(base, label=label, **affine)

    def _key(self):
        core_key = repr(sorted(self.core.spec.items())) if self.core.spec is not None else id(self.core)
        return (core_key, self.gain, _hashable(self.alpha), _hashable(self.beta), _hashable(self.gamma))

    def __eq__(self, other):
        if not isinstance(other, Activation):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return f"Activation({self.name!r})"


def _sym_number(v: float):
    import sympy as sp

    return sp.nsimplify(v, rational=True) if float(v).is_integer() else sp.Float(v, 20)


# ------------------------------------------------------------------------------------------------
def activation(act: Any, *, gain: float | None = None, kinks=None, derivative=None, second_derivative=None,
               parity=None, name: str | None = None, **params) -> Activation:
    """Return an `Activation` from a name, an Activation, a callable or a formula.

    Parameters
    ----------
    act : str, Activation, callable or sympy expression
        A built-in name (see `builtin_names`), a formula in x such as ``"x*tanh(x)"`` (parsed safely,
        never evaluated as code), a sympy expression in one symbol, or a numpy-vectorized callable.
    gain : float, optional
        Return f(gain * x) instead of f(x) (gain > 0).
    kinks : sequence of float, optional
        For a callable: the points where it is not smooth (quadrature is split there). Required for
        accuracy with kinked callables; a formula's kinks are found automatically.
    derivative : callable, optional
        For a callable: its derivative, needed for derivative kernels by direct quadrature.
    second_derivative : callable, optional
        For a callable: its second derivative (between the kinks), for `Activation.second_derivative`.
    parity : {1, -1, None}, optional
        For a callable: declare it even (1) or odd (-1).
    **params
        Parameters of a built-in, e.g. ``negative_slope`` for leaky_relu, ``alpha`` for elu, ``beta``
        for softplus, ``k`` for monomial and hermite, ``min_val``/``max_val`` for hardtanh.

    Examples
    --------
    >>> import hermite
    >>> f = hermite.activation("leaky_relu", negative_slope=0.2)
    >>> float(f(-1.0))
    -0.2
    >>> hermite.activation("x*tanh(x)").parity
    1
    """
    for_callable = kinks is not None or derivative is not None or second_derivative is not None
    if isinstance(act, Activation):
        if params or for_callable:
            raise ValueError("parameters cannot be applied to an existing Activation; build a new one")
        out = act
    elif isinstance(act, str):
        key = act.strip()
        lname = resolve(key)
        if lname is not None:
            if for_callable:
                raise ValueError(f"kinks= and derivative= are for user callables, not the built-in {lname!r}")
            out = Activation(builtin_core(lname, params))
        else:
            if params:
                raise ValueError(f"unknown activation {act!r}; built-ins are: {', '.join(builtin_names())}")
            try:
                expr = parse_expression(key)
            except ValueError as exc:
                raise ValueError(f"unknown activation {act!r}: not a built-in ({', '.join(builtin_names())}) "
                                 f"and not a safe formula in x ({exc})") from None
            out = Activation(_from_expr(expr, kinks, name=name, source=key))
    elif is_sympy(act):
        out = Activation(_from_expr(act, kinks, name=name))
    elif callable(act):
        if params:
            raise ValueError(f"unexpected parameters {sorted(params)} for a callable activation")
        out = Activation(_from_callable(act, kinks, derivative, second_derivative, parity, name))
    else:
        raise ValueError(f"activation must be a name, a formula string, a sympy expression or a callable; "
                         f"got {type(act).__name__}")
    if gain is not None:
        g = check_gain(gain)
        # f(g x) = gamma (phi(gain g x) + alpha g x + beta)
        out = replace(out, gain=out.gain * g, alpha=out.alpha * g, label=None)
    return out
