"""Kernel tables: rho -> E[phi(u) phi(v)] at one variance pair, as a verified piecewise Chebyshev interpolant.

After a LayerNorm, RMSNorm or BatchNorm every entry of a Gram shares one variance pair (q, q), and in
general a batch has one pair per pair of distinct variances. For such a pair the dual kernel is a function
of rho alone, k(rho) = E[phi(u) phi(v)] with Var u = Q1, Var v = Q2, corr(u, v) = rho (or the kernel of
phi' for derivative=1). A `KernelTable` evaluates it at numpy speed from a few hundred values of the
accurate path (`hermite.pairs.pair_kernel`: proven Mehler series, else kink-split two-dimensional
quadrature), so whole Grams of an activation without a closed form cost a few passes over the matrix.

The variable. Kinks and jumps of phi make k non-analytic at rho = +-1 only, through half-integer powers
(the arc-cosine kernel: sqrt(1 - rho^2) + (pi - arccos rho) rho): near rho = 1, k = A(rho) + sqrt(1 - rho) B(rho)
with A, B analytic, and likewise at rho = -1 with sqrt(1 + rho). The table's variable is

    y = sqrt(1 - rho) for rho >= 0,      y = 2 - sqrt(1 + rho) for rho < 0      (y in [0, 2], y = 1 at rho = 0),

in which every such term is analytic on each half (rho = 1 - y^2, resp. (2 - y)^2 - 1), so a polynomial in y
resolves them; y = 1 is a panel end, so the two halves never share a panel. Smooth phi whose Mehler series
converges slowly at rho = 1 (tanh: c_k^2 ~ exp(-c sqrt k)) are smooth in y as well. A square root, unlike
arccos, costs next to nothing, and 1 -+ |rho| is exact near the ends (Sterbenz), so y is as accurate as rho.

The interpolant. [0, 2] is split into dyadic panels, each carrying the degree-16 Chebyshev interpolant
through the 17 Chebyshev points of its own y-interval (the panel ends included, so rho = +-1 and 0 are nodes
and are reproduced to rounding). A panel is accepted when (i) at its 16 check points, the angle midpoints
between the nodes where the interpolation error of a polynomial interpolant peaks, the interpolant is within
`CHECK_TOL` sqrt(E phi(u)^2 E phi(v)^2) of the accurate path, and (ii) its last two Chebyshev coefficients are
below `TABLE_TOL` times the same (the coefficients have decayed: the panel is resolved); otherwise it is
bisected. The two bounds differ because the accurate path itself carries errors up to a few 1e-13 near
rho = +-1 for activations whose derivative jumps (hardtanh' at q = 25: 2.8e-13), which no bisection removes.
A table that does not converge in `MAX_DEPTH` bisections, needs more than `MAX_PANELS` panels, or would need a
panel whose nodes round to the same rho (kinked phi at large variance vary on the scale 1 - |rho| ~ 1/q) is not built
(`build_table` returns None) and its entries take the accurate path.

Near y = 0 and 2 one ulp of rho = 1 - y^2 moves y by ulp / (2 y), so the value computed at the rounded rho
belongs to y(rho), not to y; each panel is fitted at those true abscissae (a 17 x 17 Chebyshev-Vandermonde
solve), which is what lets panels near rho = +-1 meet the bound. Evaluation finds an entry's panel through
a lookup table over the finest dyadic cells (no search).

Build cost: a few hundred accurate values, 1-100 ms for every built-in at variances of order one (the kinked
ones use the closed Gaussian smoothing of `hermite.smoothing`); smooth activations at large variances
(q ~ 25) take 0.5-3 s, where the series needs order 1024 and the quadrature its numerical inner rule.
`KernelTable.error` is the largest checked error, relative to sqrt(E phi(u)^2 E phi(v)^2).

This is the toolkit's own method (bisected piecewise Chebyshev interpolation is standard; the variable y
is ours); its contract is the kernels' one, 1e-12 relative, with
`TABLE_TOL` = 1e-13 and `CHECK_TOL` = 4e-13 leaving a margin between check points.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache

import numpy as np

from hermite.distinct import Distinct

__all__ = ["KernelTable", "build_table", "table_for", "tabulated_kernel", "TABLE_TOL", "CHECK_TOL", "TABLE_MIN"]

TABLE_TOL = 1e-13  # accepted size of a panel's last Chebyshev coefficients, relative to sqrt(M1 M2)
CHECK_TOL = 4e-13  # accepted error at the check points against the accurate path; the kernels' contract is 1e-12
NUMBA_MIN = 4096  # from this many entries on a table is evaluated by the compiled loop
TABLE_MIN = 512  # a variance pair with fewer entries than this takes the accurate path directly
DEGREE = 16
MAX_DEPTH = 24
MAX_PANELS = 256  # a table that needs more panels is not built (its entries take the accurate path)
_TABLES: OrderedDict = OrderedDict()
_TABLES_MAX = 128
_LOCK = threading.Lock()

_J = np.arange(DEGREE + 1)
_NODES = np.cos(np.pi * _J / DEGREE)  # Chebyshev points of the second kind on [-1, 1], descending
_CHECK = np.cos(np.pi * (np.arange(DEGREE) + 0.5) / DEGREE)  # the angle midpoints between the nodes
Y_END = 2.0
START_PANELS = 8
LUT_MAX = 1 << 16  # finest-cell lookup tables up to this size; deeper tables search their breaks


def to_y(rho: np.ndarray) -> np.ndarray:
    """y = sqrt(1 - rho) for rho >= 0, 2 - sqrt(1 + rho) for rho < 0 (rho clipped to [-1, 1])."""
    r = np.clip(rho, -1.0, 1.0)
    a = np.sqrt(1.0 - np.abs(r))
    return np.where(r >= 0.0, a, Y_END - a)


def to_rho(y: np.ndarray) -> np.ndarray:
    """The inverse of `to_y`: 1 - y^2 for y <= 1, (2 - y)^2 - 1 above."""
    w = Y_END - y
    return np.where(y <= 1.0, 1.0 - y * y, w * w - 1.0)


@dataclass(frozen=True)
class KernelTable:
    """k(rho) at one variance pair, piecewise Chebyshev in y = to_y(rho) (see `to_y` and the module docstring).

    breaks : panel edges in y, ascending from 0 to 2; coef : (DEGREE + 1, panels) Chebyshev coefficients
    of each panel in its local variable t = (2 y - a - b) / (b - a); scale : sqrt(M1 M2), the second
    moments (of phi' for derivative=1); error : the largest checked error relative to scale; lut, inv_h :
    the panel of each finest dyadic cell [j h, (j + 1) h), h = 1 / inv_h (empty: search the breaks).
    """

    breaks: np.ndarray
    coef: np.ndarray
    scale: float
    error: float
    evaluations: int
    lut: np.ndarray
    inv_h: float

    def panel_of(self, y: np.ndarray) -> np.ndarray:
        """The panel index of each y (numpy)."""
        if self.lut.size:
            j = (y * self.inv_h).astype(np.int64)
            np.minimum(j, self.lut.size - 1, out=j)
            return self.lut[j]
        idx = np.searchsorted(self.breaks, y, side="right") - 1
        return np.clip(idx, 0, self.breaks.size - 2)

    def __call__(self, rho: np.ndarray) -> np.ndarray:
        """k(rho) for a flat array of rho in [-1, 1] (Clenshaw's recurrence per entry, its panel's coefficients;
        compiled serial loop from `NUMBA_MIN` entries on, numpy below or without numba)."""
        if rho.size >= NUMBA_MIN:
            evaluate = _numba_evaluate()
            if evaluate is not None:
                out = np.empty(rho.size)
                evaluate(self.breaks, self.coef, self.lut, self.inv_h, np.ascontiguousarray(rho, dtype=np.float64),
                         out)
                return out
        y = to_y(rho)
        idx = self.panel_of(y)
        a, b = self.breaks[:-1], self.breaks[1:]
        t = y
        t -= (0.5 * (a + b))[idx]
        t *= (2.0 / (b - a))[idx]
        np.clip(t, -1.0, 1.0, out=t)
        C = np.take(self.coef, idx, axis=1)  # (DEGREE + 1, M): each row contiguous
        t2 = 2.0 * t
        b1 = C[DEGREE].copy()
        b2 = np.zeros_like(t)
        tmp = np.empty_like(t)
        for k in range(DEGREE - 1, 0, -1):
            np.multiply(t2, b1, out=tmp)
            tmp -= b2
            tmp += C[k]
            b2, b1, tmp = b1, tmp, b2
        np.multiply(t, b1, out=tmp)
        tmp -= b2
        tmp += C[0]
        return tmp


@cache
def _numba_evaluate():
    """The compiled evaluation loop (`hermite.compiled_tables`; serial, eight Clenshaw chains side by side, bit for
    bit the numpy path), or None without numba. Compiled on first use, then loaded from numba's disk cache."""
    try:
        from hermite.compiled_tables import evaluate

        return evaluate
    except Exception:  # noqa: BLE001 - numba missing or unable to compile: numpy
        return None


def build_table(core, Q1: float, Q2: float, derivative: int = 0) -> KernelTable | None:
    """The verified table of rho -> E[phi(u) phi(v)] (phi' for derivative=1) of ``core`` at (Q1, Q2).

    Returns None where bisection does not converge within MAX_DEPTH levels (the caller then evaluates
    every entry on the accurate path). Values come from `hermite.pairs.pair_kernel`.
    """
    from hermite.pairs import pair_kernel

    Q = np.array([Q1, Q2], dtype=np.float64)
    if derivative == 0:
        M = core.second_moment(Q)
    else:
        M = core.derivative_moment(Q)
    scale = float(np.sqrt(M[0]) * np.sqrt(M[1]))
    if not np.isfinite(scale):
        return None
    bound, check = TABLE_TOL * scale, CHECK_TOL * scale

    def exact(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The accurate path at rho = to_rho(y) rounded to float64, and the abscissa that rho really has.

        Near y = 0 and 2 one ulp of rho moves y by ulp / (2 y), so a value computed at the rounded rho
        belongs to to_y(rho), not to y: the interpolation uses the true abscissae."""
        r = to_rho(y)
        q1 = np.full(r.size, float(Q1))
        q2 = np.full(r.size, float(Q2))
        return pair_kernel(core, core, r, q1, q2, derivative), to_y(r)

    w0 = Y_END / START_PANELS
    panels = [(w0 * i, w0 * (i + 1), 0) for i in range(START_PANELS)]
    done: list[tuple[float, float, np.ndarray]] = []
    worst = 0.0
    evaluations = 0
    while panels:
        if len(done) + len(panels) > MAX_PANELS:
            return None
        a = np.array([p[0] for p in panels])
        b = np.array([p[1] for p in panels])
        mid, half = 0.5 * (a + b), 0.5 * (b - a)
        y_nodes = np.clip(mid[:, None] + half[:, None] * _NODES[None, :], 0.0, Y_END)
        y_nodes[:, 0], y_nodes[:, -1] = b, a  # the panel ends exactly (nodes descend in t)
        y_check = mid[:, None] + half[:, None] * _CHECK[None, :]
        vals, y_true = exact(np.concatenate([y_nodes.ravel(), y_check.ravel()]))
        evaluations += vals.size
        n_nodes = y_nodes.size
        P = len(panels)
        V = vals[:n_nodes].reshape(P, DEGREE + 1)
        W = vals[n_nodes:].reshape(P, DEGREE)
        # local variables of the true abscissae; Chebyshev-Vandermonde solve
        t_nodes = np.clip((y_true[:n_nodes].reshape(P, -1) - mid[:, None]) / half[:, None], -1.0, 1.0)
        t_check = np.clip((y_true[n_nodes:].reshape(P, -1) - mid[:, None]) / half[:, None], -1.0, 1.0)
        if not np.all(np.diff(t_nodes, axis=1) < 0.0):
            # nodes whose rho round to one float (a panel a few ulps of rho wide: kinked phi at large variance,
            # where k varies on the scale 1 - |rho| ~ 1/q): float64 cannot resolve it; no table
            return None
        A = np.cos(np.arccos(t_nodes)[:, :, None] * _J[None, None, :])  # (P, nodes, k)
        coef = np.linalg.solve(A, V[:, :, None])[:, :, 0]  # (P, DEGREE + 1)
        B = np.cos(np.arccos(t_check)[:, :, None] * _J[None, None, :])
        err = np.max(np.abs(np.einsum("pck,pk->pc", B, coef) - W), axis=1)
        tail = np.abs(coef[:, -1]) + np.abs(coef[:, -2])
        nxt = []
        for i, (pa, pb, depth) in enumerate(panels):
            if err[i] <= check and tail[i] <= bound:
                done.append((pa, pb, coef[i]))
                worst = max(worst, float(err[i]))
            elif depth >= MAX_DEPTH:
                return None
            else:
                m = 0.5 * (pa + pb)
                nxt += [(pa, m, depth + 1), (m, pb, depth + 1)]
        panels = nxt
    done.sort(key=lambda p: p[0])
    breaks = np.array([p[0] for p in done] + [Y_END])
    coef = np.ascontiguousarray(np.stack([p[2] for p in done], axis=1))
    h = float(np.min(np.diff(breaks)))  # dyadic: every break is a multiple of the finest width
    cells = int(round(Y_END / h))
    if cells <= LUT_MAX:
        centres = (np.arange(cells) + 0.5) * h
        lut = np.searchsorted(breaks, centres, side="right") - 1
    else:
        lut = np.empty(0, dtype=np.int64)
    return KernelTable(breaks, coef, scale, worst / scale if scale > 0 else 0.0, evaluations,
                       lut.astype(np.int64), 1.0 / h)


def table_for(core, Q1: float, Q2: float, derivative: int = 0) -> KernelTable | None:
    """The memoized table of ``core`` at (Q1, Q2) (LRU over the last 128 pairs; None: no table).

    k(rho; Q1, Q2) = k(rho; Q2, Q1) (swap u and v), so both orders share one table.
    """
    Q1, Q2 = sorted((float(Q1), float(Q2)))
    key = (id(core), Q1, Q2, int(derivative))
    with _LOCK:
        hit = _TABLES.get(key)
        if hit is not None:
            _TABLES.move_to_end(key)
            return hit[1]
    table = build_table(core, Q1, Q2, derivative)
    with _LOCK:
        _TABLES[key] = (core, table)  # the core is kept so its id cannot be reused
        while len(_TABLES) > _TABLES_MAX:
            _TABLES.popitem(last=False)
    return table


def _tabulable(q: float) -> bool:
    return 0.0 < q < math.inf


def tabulated_kernel(core, r: np.ndarray, Q1: np.ndarray, Q2: np.ndarray, derivative: int = 0,
                     distinct: Distinct | None = None) -> np.ndarray:
    """E[phi(u) phi(v)] on flat arrays: entries whose variance pair is shared by at least `TABLE_MIN` of them
    come from that pair's verified table, the others (and pairs without a table) from the accurate path
    (`hermite.pairs.pair_kernel`: proven Mehler series, else two-dimensional quadrature).

    ``distinct``: the `hermite.distinct.Distinct` of np.concatenate([Q1, Q2]) where the caller has it (else
    one sort finds it); the pairs are grouped through it by integer codes, without a sort of the pairs.
    """
    from hermite.pairs import pair_kernel

    r = np.asarray(r, dtype=np.float64)
    M = r.size
    if M < TABLE_MIN:
        return pair_kernel(core, core, r, Q1, Q2, derivative, distinct=distinct)
    if Q1[0] == Q1[-1] and Q2[0] == Q2[-1] and np.all(Q1 == Q1[0]) and np.all(Q2 == Q2[0]):
        q1, q2 = float(Q1[0]), float(Q2[0])
        table = table_for(core, q1, q2, derivative) if _tabulable(q1) and _tabulable(q2) else None
        if table is None:
            return pair_kernel(core, core, r, Q1, Q2, derivative, distinct=distinct)
        return table(r)
    D = Distinct.of(np.concatenate([Q1, Q2])) if distinct is None else distinct
    i1, i2 = D.index[:M], D.index[M:]
    lo, hi = np.minimum(i1, i2), np.maximum(i1, i2)  # the values are sorted: the index orders them too
    if np.bincount(lo).max() < TABLE_MIN:
        # no variance pair can be shared by TABLE_MIN entries (no norm: every input keeps its own variance);
        # a one-dimensional count costs a fraction of grouping the pairs
        return pair_kernel(core, core, r, Q1, Q2, derivative, distinct=D)
    U = D.values.size
    code = lo * U + hi  # (lo, hi) -> one integer, in the lexicographic order of the variance pairs
    if U * U <= 4 * M + 65536:  # few variances: count the codes directly
        keys, inv, counts = None, code, np.bincount(code)
    else:
        keys, inv, counts = np.unique(code, return_inverse=True, return_counts=True)
    out = np.empty(M)
    rest = np.ones(M, dtype=bool)
    for g in np.nonzero(counts >= TABLE_MIN)[0]:
        c = int(g if keys is None else keys[g])
        q1, q2 = float(D.values[c // U]), float(D.values[c % U])
        table = table_for(core, q1, q2, derivative) if _tabulable(q1) and _tabulable(q2) else None
        if table is None:
            continue
        sel = inv == g
        out[sel] = table(r[sel])
        rest &= ~sel
    if np.any(rest):
        out[rest] = pair_kernel(core, core, r[rest], Q1[rest], Q2[rest], derivative,
                                distinct=Distinct(D.values, np.concatenate([i1[rest], i2[rest]])))
    return out
