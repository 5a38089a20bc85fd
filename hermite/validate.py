"""Validation of the arguments of hermite's public functions (the one place that checks them).

Every check raises ValueError with one message style, ``<argument>=<value> must be <allowed range>``,
optionally followed by what the argument means; on success it returns the value in the form the numerics
use (an int, a float64 array, a clipped correlation).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["KMAX", "KMAX_EXACT", "CONVENTIONS", "check_order", "check_orders", "check_exact_order",
           "check_variance", "check_exact_variance", "check_correlation", "check_convention",
           "check_derivative_order", "check_flag", "check_gain", "check_parity", "check_kinks", "check_per_unit",
           "check_param", "check_no_params"]

KMAX = 4000
KMAX_EXACT = 400  # sympy expressions grow with K
CONVENTIONS = ("orthonormal", "probabilists", "physicists")


def check_order(K, name: str = "K", kmax: int = KMAX) -> int:
    """A Hermite order: an integer (or an integral float) in [0, kmax]."""
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)):
        if not (isinstance(K, (float, np.floating)) and float(K).is_integer()):
            raise ValueError(f"{name}={K!r} must be an integer in [0, {kmax}]")
    K = int(K)
    if K < 0 or K > kmax:
        raise ValueError(f"{name}={K} must be an integer in [0, {kmax}]")
    return K


def check_orders(orders, name: str = "remove") -> list:
    """A collection of Hermite orders (sorted, without repeats)."""
    try:
        return sorted({check_order(k) for k in orders})
    except TypeError:
        raise ValueError(f"{name}={orders!r} must be an iterable of non-negative integers") from None


def check_exact_order(K) -> int:
    """A Hermite order for exact (sympy) coefficients: an integer in [0, KMAX_EXACT]."""
    K = check_order(K)
    if K > KMAX_EXACT:
        raise ValueError(f"K={K} must be <= {KMAX_EXACT} for exact coefficients (sympy expressions grow with K)")
    return K


def check_variance(q, name: str = "q") -> np.ndarray:
    """Input variances: a number or array of finite numbers > 0 (returned as a float64 array)."""
    try:
        arr = np.asarray(q, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={q!r} must be a positive number or array of positive numbers") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}={q!r} must be finite and > 0 (input variance)")
    if np.any(arr <= 0):
        bad = arr[arr <= 0].ravel()[0]
        raise ValueError(f"{name}={float(bad)!r} must be > 0 (input variance)")
    return arr


def check_exact_variance(q, name: str = "q"):
    """An input variance for exact coefficients: a positive sympy expression (or symbol) as given, or a
    finite number > 0 converted to an exact rational."""
    import sympy as sp

    if isinstance(q, sp.Basic):
        if q.is_positive is False:
            raise ValueError(f"{name}={q} must be positive")
        return q
    try:
        qf = float(q)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={q!r} must be > 0 (input variance)") from None
    if not (math.isfinite(qf) and qf > 0):
        raise ValueError(f"{name}={q!r} must be > 0 (input variance)")
    return sp.nsimplify(q, rational=True)


def check_correlation(rho, name: str = "rho") -> np.ndarray:
    """A correlation (number or array): finite and in [-1, 1]; round-off up to 1e-12 beyond is clipped."""
    try:
        r = np.asarray(rho, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={rho!r} must be a number or array in [-1, 1] (a correlation)") from None
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{name}={rho!r} must be finite and in [-1, 1] (a correlation); got NaN or inf")
    if np.any(np.abs(r) > 1 + 1e-12):
        bad = r[np.abs(r) > 1 + 1e-12].ravel()[0]
        raise ValueError(f"{name}={float(bad)!r} must be in [-1, 1] (a correlation)")
    return np.clip(r, -1.0, 1.0)


def check_convention(convention) -> str:
    """The normalization of the Hermite basis: 'orthonormal', 'probabilists' or 'physicists'."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r} must be 'orthonormal', 'probabilists' or 'physicists'")
    return convention


def check_derivative_order(derivative) -> int:
    """0 (the kernel of f) or 1 (the kernel of f')."""
    if isinstance(derivative, bool) or derivative not in (0, 1):
        raise ValueError(f"derivative={derivative!r} must be 0 (E f f) or 1 (E f' f')")
    return int(derivative)


def check_flag(value, name: str) -> bool:
    """A boolean switch."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}={value!r} must be True or False")
    return bool(value)


def check_gain(gain) -> float:
    """An input gain: a finite number > 0."""
    try:
        g = float(gain)
    except (TypeError, ValueError):
        raise ValueError(f"gain={gain!r} must be a finite number > 0") from None
    if not (math.isfinite(g) and g > 0):
        raise ValueError(f"gain={gain!r} must be a finite number > 0")
    return g


def check_parity(parity):
    """A declared parity: 1 (even), -1 (odd) or None (unknown)."""
    if parity not in (None, 1, -1):
        raise ValueError(f"parity={parity!r} must be 1 (even), -1 (odd) or None")
    return parity


def check_kinks(kinks, name: str = "kinks") -> tuple:
    """Kink locations: finite numbers, returned sorted as a tuple of floats."""
    try:
        kk = tuple(sorted(float(k) for k in (kinks or ())))
    except (TypeError, ValueError):
        raise ValueError(f"{name}={kinks!r} must be a sequence of finite numbers") from None
    for k in kk:
        if not math.isfinite(k):
            raise ValueError(f"{name}={list(kk)!r} must be finite numbers, got {k!r}")
    return kk


def check_per_unit(v, name: str):
    """An affine parameter of an Activation: a scalar stays as given; a sequence or array becomes a
    read-only 1-D float64 array of finite numbers (one value per unit)."""
    if np.ndim(v) == 0:
        return v
    try:
        arr = np.array(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={v!r} must be a number or a 1-D array of numbers (one per unit)") from None
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}={v!r} must be a number or a non-empty 1-D array of finite numbers "
                         "(one per unit)")
    arr.setflags(write=False)
    return arr


def check_no_params(name: str, p: dict):
    """No parameters left over for the built-in ``name``."""
    if p:
        raise ValueError(f"activation {name!r} takes no parameters, got {sorted(p)}")


def check_param(name: str, p: dict, key: str, default, *, positive=False, integer=False, lo=None):
    """Pop the parameter ``key`` of the built-in ``name`` from ``p``: a finite real (> 0 if positive), or
    an integer (>= lo)."""
    v = p.pop(key, default)
    if integer:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not float(v).is_integer():
            raise ValueError(f"activation {name!r}: {key}={v!r} must be an integer")
        v = int(v)
        if lo is not None and v < lo:
            raise ValueError(f"activation {name!r}: {key}={v!r} must be >= {lo}")
        return v
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"activation {name!r}: {key}={v!r} must be a real number") from None
    if not math.isfinite(v):
        raise ValueError(f"activation {name!r}: {key}={v!r} must be finite")
    if positive and v <= 0:
        raise ValueError(f"activation {name!r}: {key}={v!r} must be > 0")
    return v
