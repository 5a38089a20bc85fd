"""One validation module for `meanfield`: every public function checks its arguments here.

One message style everywhere: ``"<owner>: <name>=<value> must be <allowed range>"`` (ValueError), where the
owner is the public function or layer that received the argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["check_int", "check_real", "check_bool", "check_choice", "check_array", "check_real_array", "check_data",
           "check_samples", "check_gram", "check_gram_eig", "check_tol", "check_seed", "check_widths", "where",
           "as_real_array", "check_finite", "scaled_eigvalsh"]

_EPS = float(np.finfo(np.float64).eps)


def _prefix(owner: str | None) -> str:
    return f"{owner}: " if owner else ""


def check_int(owner: str | None, name: str, value, lo: int | None = None, hi: int | None = None, *,
              strict: bool = False) -> int:
    """An integer (an integral float is accepted unless ``strict``, a bool never) in [lo, hi]."""
    kinds = (int, np.integer) if strict else (int, np.integer, float, np.floating)
    ok = not isinstance(value, bool) and isinstance(value, kinds)
    if ok:
        try:
            ok = math.isfinite(float(value)) and float(value).is_integer()
        except (TypeError, ValueError, OverflowError):
            ok = False
    if ok:
        v = int(value)
        ok = (lo is None or v >= lo) and (hi is None or v <= hi)
    if not ok:
        if lo is not None and hi is not None:
            rng = f"an integer in [{lo}, {hi}]"
        elif lo is not None:
            rng = f"an integer >= {lo}"
        elif hi is not None:
            rng = f"an integer <= {hi}"
        else:
            rng = "an integer"
        raise ValueError(f"{_prefix(owner)}{name}={value!r} must be {rng}")
    return int(value)


def _interval(lo, hi, lo_open: bool, hi_open: bool) -> str:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return f"{left}{'-inf' if lo is None else format(lo, 'g')}, {'inf' if hi is None else format(hi, 'g')}{right}"


def check_real(owner: str | None, name: str, value, lo: float | None = None, hi: float | None = None, *,
               lo_open: bool = False, hi_open: bool = False, allow_inf: bool = False,
               allow_none: bool = False) -> float | None:
    """A real number (not a bool), finite unless ``allow_inf``, in the interval given by lo/hi."""
    if value is None and allow_none:
        return None
    rng = _interval(lo, hi, lo_open, hi_open)
    if isinstance(value, bool):
        raise ValueError(f"{_prefix(owner)}{name}={value!r} must be a real number in {rng}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{_prefix(owner)}{name}={value!r} must be a real number in {rng}") from None
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{_prefix(owner)}{name}={value!r} must be a finite real number in {rng}")
    below = lo is not None and (v <= lo if lo_open else v < lo)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if below or above:
        raise ValueError(f"{_prefix(owner)}{name}={value!r} must be in {rng}")
    return v


def check_bool(owner: str | None, name: str, value) -> bool:
    if value not in (True, False) or not isinstance(value, (bool, np.bool_, int)):
        raise ValueError(f"{_prefix(owner)}{name}={value!r} must be True or False")
    return bool(value)


def check_choice(owner: str | None, name: str, value, choices: Sequence) -> Any:
    """One of ``choices`` (compared with ==; strings exactly)."""
    for c in choices:
        if value is c or (type(value) is type(c) and value == c):
            return c
    raise ValueError(f"{_prefix(owner)}{name}={value!r} must be one of {', '.join(repr(c) for c in choices)}")


def check_seed(owner: str | None, seed, name: str = "seed", *, generator: bool = False):
    """A random seed: a non-negative integer (not a bool), a non-empty sequence of them (SeedSequence
    entropy), or a numpy SeedSequence; with ``generator`` also a numpy Generator or None. Returned as given
    (a sequence as a list of ints)."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if generator and (seed is None or isinstance(seed, np.random.Generator)):
        return seed
    if isinstance(seed, (list, tuple)) and seed:
        return [check_int(owner, f"{name}[{i}]", v, lo=0, strict=True) for i, v in enumerate(seed)]
    ok = "an integer >= 0, a sequence of them or a numpy SeedSequence"
    if generator:
        ok += ", a numpy Generator or None"
    try:
        return check_int(owner, name, seed, lo=0, strict=True)
    except ValueError:
        raise ValueError(f"{_prefix(owner)}{name}={seed!r} must be {ok}") from None


def _real_float_array(owner: str | None, name: str, value, ndim) -> np.ndarray:
    """A real float64 array (a copy), with ``ndim`` dimensions when given; entries not checked."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise ValueError(f"{_prefix(owner)}{name} must be a real numeric array, got {type(value).__name__}") \
            from None
    if arr.dtype.kind not in "biuf":
        kind = "complex" if arr.dtype.kind == "c" else str(arr.dtype)
        raise ValueError(f"{_prefix(owner)}{name} must be a real numeric array, got dtype {kind}")
    arr = np.array(arr, dtype=np.float64)
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in dims:
            raise ValueError(f"{_prefix(owner)}{name} must have {' or '.join(map(str, dims))} dimensions, got "
                             f"shape {arr.shape}")
    return arr


def check_array(owner: str | None, name: str, value, ndim: int | Sequence[int] | None = None) -> np.ndarray:
    """A real, finite float64 array (a copy), with ``ndim`` dimensions when given."""
    arr = _real_float_array(owner, name, value, ndim)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{_prefix(owner)}{name} must be finite, got {int(bad.sum())} NaN/inf entries")
    return arr


def check_real_array(owner: str | None, name: str, value, lo: float | None = None, hi: float | None = None, *,
                     lo_open: bool = False, hi_open: bool = False, allow_inf: bool = False,
                     ndim: int | Sequence[int] | None = None, nonempty: bool = False) -> np.ndarray:
    """A real float64 array (a copy) whose entries are finite (or +-inf with ``allow_inf``; never NaN) and lie
    in the interval given by lo/hi, with ``ndim`` dimensions when given and, with ``nonempty``, at least
    one entry. The first offending entry is named: ``"<owner>: q[1]=-0.5 must be in [0, inf]"``."""
    arr = check_array(owner, name, value, ndim) if not allow_inf else _real_float_array(owner, name, value, ndim)
    if nonempty and arr.size == 0:
        raise ValueError(f"{_prefix(owner)}{name} must have at least one entry, got shape {arr.shape}")
    bad = np.isnan(arr)
    if lo is not None:
        bad |= (arr <= lo) if lo_open else (arr < lo)
    if hi is not None:
        bad |= (arr >= hi) if hi_open else (arr > hi)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        at = f"{name}[{', '.join(map(str, idx))}]" if idx else name
        raise ValueError(f"{_prefix(owner)}{at}={float(arr[idx])!r} must be in {_interval(lo, hi, lo_open, hi_open)}")
    return arr


def check_data(owner: str | None, X, name: str = "X") -> np.ndarray:
    """A data batch: a real, finite (n, d) array with n >= 1 inputs and d >= 1 features."""
    if not isinstance(X, np.ndarray) and hasattr(X, "shape") and hasattr(X, "dtype"):
        from meanfield.core.backends import to_host

        X = to_host(X)
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError):
        raise ValueError(f"{_prefix(owner)}{name} must be a real (n, d) array, got {type(X).__name__} that is not "
                         "an array (ragged?)") from None
    if arr.dtype.kind not in "biuf":
        kind = "complex" if arr.dtype.kind == "c" else arr.dtype
        raise ValueError(f"{_prefix(owner)}{name} must be a real (n, d) array, got dtype {kind} (complex data is "
                         "refused, never cut to its real part)")
    A = np.asarray(arr, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] < 1 or A.shape[1] < 1:
        raise ValueError(f"{_prefix(owner)}{name} must be a 2-D (n, d) array with n >= 1 inputs and d >= 1 "
                         f"features, got shape {A.shape}")
    bad = ~np.isfinite(A)
    if bad.any():
        raise ValueError(f"{_prefix(owner)}{name} must be finite, got {int(bad.sum())} NaN/inf entries (first at "
                         f"row {int(np.argwhere(bad)[0][0])})")
    return A


def check_samples(owner: str | None, X, name: str = "X") -> np.ndarray:
    """`check_data`, where a 1-D array is read as n samples of one feature (a column)."""
    try:
        if np.ndim(X) == 1:
            X = np.asarray(X)[:, None]
    except (TypeError, ValueError):
        pass  # check_data names the problem
    return check_data(owner, X, name)


def check_widths(owner: str | None, width, depth: int) -> list[int]:
    """One positive integer width, or a sequence of ``depth`` of them (one per block)."""
    if isinstance(width, (str, bytes)) or not isinstance(width, Sequence | np.ndarray):
        try:
            return [check_int(owner, "width", width, lo=1)] * depth
        except ValueError:
            raise ValueError(f"{_prefix(owner)}width={width!r} must be an integer >= 1 or a sequence of {depth} "
                             "such integers (one per block)") from None
    ws = list(width)
    if len(ws) != depth:
        raise ValueError(f"{_prefix(owner)}width has {len(ws)} entries but the network has {depth} blocks; give "
                         "one width per block or a single integer")
    return [check_int(owner, f"width[{i}]", v, lo=1) for i, v in enumerate(ws)]


# ---------------------------------------------------------------------------------------------------------
# Gram matrices
def where(name: str, batch_shape: tuple, flat: int) -> str:
    """``name`` for a single matrix, ``name[i, j]`` for the matrix at flat index ``flat`` of a stack."""
    if not batch_shape:
        return name
    idx = np.unravel_index(int(flat), batch_shape)
    return f"{name}[{', '.join(str(int(i)) for i in idx)}]"


def check_tol(value: float, argname: str, *, allow_none: bool = False) -> float | None:
    """A non-negative tolerance."""
    if value is None and allow_none:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{argname} must be a non-negative float; got {value!r}") from None
    if not (v >= 0.0):  # also rejects NaN
        raise ValueError(f"{argname} must be a non-negative float (>= 0); got {value!r}")
    return v


def as_real_array(A, name: str, what: str) -> np.ndarray:
    """Convert to a float64 array, rejecting ragged, complex and non-numeric input."""
    try:
        arr = np.asarray(A)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be {what}; could not convert it to an array ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be {what} of real numbers; got dtype {arr.dtype}")
    return np.array(arr, dtype=np.float64)  # always a copy: never alias the caller's array


def check_finite(arr: np.ndarray, name: str) -> None:
    finite = np.isfinite(arr)
    if not finite.all():
        idx = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(
            f"{name} must be finite (no NaN or inf); got {arr[idx]} at index {idx} "
            f"({int((~finite).sum())} non-finite entries); valid entries are finite reals"
        )


def scaled_eigvalsh(sym: np.ndarray, scale: np.ndarray, rescale: bool = True) -> np.ndarray:
    """Ascending eigenvalues of the symmetric stack ``sym`` from sym / 2^e, 2^e ~ ``scale`` (its largest absolute
    entry per matrix), times 2^e (inf where an eigenvalue exceeds the float64 range); ``rescale=False``: those of
    sym / 2^e (for scale-invariant uses)."""
    e = np.frexp(np.where(scale > 0, scale, 1.0))[1] - 1  # scale / 2^e in [1, 2): 2^e never overflows
    p = np.ldexp(1.0, e)
    lam = np.linalg.eigvalsh(sym / p[..., None, None])
    if not rescale:
        return lam
    with np.errstate(over="ignore"):
        return lam * p[..., None]


def check_gram_eig(K, name: str, psd_tol: float, sym_tol: float, allow_stack: bool) -> tuple[np.ndarray, np.ndarray]:
    """`check_gram` that also returns the ascending eigenvalues (..., n) it computed."""
    psd_tol = check_tol(psd_tol, "psd_tol")
    sym_tol = check_tol(sym_tol, "sym_tol")
    what = "an n x n Gram matrix or a stack (..., n, n)" if allow_stack else "an n x n Gram matrix"
    arr = as_real_array(K, name, what)
    if arr.ndim < 2:
        raise ValueError(f"{name} must be {what}; got shape {arr.shape} ({arr.ndim}-D), need at least 2-D")
    if not allow_stack and arr.ndim != 2:
        raise ValueError(f"{name} must be {what} (2-D); got shape {arr.shape} ({arr.ndim}-D)")
    n = arr.shape[-1]
    if arr.shape[-2] != n:
        raise ValueError(
            f"{name} must be square in its last two axes ({what}); got shape {arr.shape} "
            f"({arr.shape[-2]} x {n})"
        )
    if n == 0:
        raise ValueError(f"{name} must hold at least one sample (n >= 1); got shape {arr.shape}")
    check_finite(arr, name)
    batch = arr.shape[:-2]

    # symmetry, relative to the largest entry of each matrix
    At = np.swapaxes(arr, -1, -2)
    asym = np.abs(arr - At).max(axis=(-2, -1))
    scale = np.abs(arr).max(axis=(-2, -1))
    bad = asym > sym_tol * scale
    if bad.any():
        rel = np.where(bad, asym / np.where(scale > 0, scale, 1.0), -1.0)
        k = int(np.argmax(rel))
        raise ValueError(
            f"{where(name, batch, k)} must be symmetric; got max |K - K^T| = {asym.flat[k]:.3g} "
            f"({rel.flat[k]:.3g} relative to its largest entry {scale.flat[k]:.3g}); valid: at most "
            f"{sym_tol:g} relative"
        )
    # exactly symmetric (IEEE addition commutes); halves first where K + K^T would overflow
    sym = 0.5 * (arr + At) if not np.any(scale > 1e307) else 0.5 * arr + 0.5 * At

    # positive semi-definite up to round-off, relative to the scale of each matrix (any scale: K and c K
    # are accepted or refused together). The eigenvalues are those of K over a power of two near its largest
    # entry, times that power: the same bits as unscaled wherever nothing under- or overflows, and no
    # LinAlgError or NaN at scales near the float64 limits (1e308 I, 1e-300 I)
    lam = scaled_eigvalsh(sym, scale)
    lmin, lmax = lam[..., 0], lam[..., -1]
    scale = np.maximum(np.abs(lmin), np.abs(lmax))
    floor = -psd_tol * scale
    bad = lmin < floor
    if bad.any():
        margin = np.where(bad, (floor - lmin) / np.where(scale > 0, scale, 1.0), -np.inf)
        k = int(np.argmax(margin))
        raise ValueError(
            f"{where(name, batch, k)} must be positive semi-definite; got smallest eigenvalue "
            f"{lmin.flat[k]:.6g} (largest {lmax.flat[k]:.6g}); valid: smallest eigenvalue >= "
            f"-psd_tol * max|eigenvalue| = {floor.flat[k]:.3g} (psd_tol = {psd_tol:g}, relative)"
        )
    return sym, lam


def check_gram(K, name: str = "K", *, psd_tol: float = 1e-10, sym_tol: float = 1e-12,
               allow_stack: bool = True) -> np.ndarray:
    """Validate a Gram matrix (or a stack of them) and return it as an exactly symmetric float64 array.

    A Gram matrix K_ab = <x_a, x_b> / d of a batch of n inputs is real, finite, square, symmetric and
    positive semi-definite. This function checks each of these up to round-off and raises ValueError
    naming the argument (``name``, with the stack index for stacks), the offending value and the valid
    range:

    * real numeric, finite (no NaN or inf), at least 2-D (exactly 2-D if ``allow_stack`` is False),
      square in its last two axes, n >= 1;
    * symmetric: ``max |K - K^T| <= sym_tol * max |K|`` for each matrix of the stack;
    * positive semi-definite: ``lambda_min >= -psd_tol * max|lambda|`` for each matrix, a tolerance
      relative to the matrix's own scale (so a non-PSD K of scale 1e-12 is refused like one of scale 1).

    Parameters
    ----------
    K : array_like, shape (..., n, n)
        Gram matrix or stack of Gram matrices.
    name : str
        Name of the argument, used in error messages.
    psd_tol : float
        Tolerance on negative eigenvalues, relative to ``max|lambda|`` (default 1e-10: round-off of a Gram
        computed in float64 is about n eps relative).
    sym_tol : float
        Tolerance on the asymmetry, relative to the largest absolute entry.
    allow_stack : bool
        Whether leading stack dimensions are allowed.

    Returns
    -------
    numpy.ndarray, float64, shape (..., n, n)
        A new array equal to ``(K + K^T) / 2``, exactly symmetric. Tiny negative eigenvalues allowed by
        ``psd_tol`` are left as they are; the measures clip them.
    """
    return check_gram_eig(K, name, psd_tol, sym_tol, allow_stack)[0]
