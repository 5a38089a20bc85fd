"""Finite-width engine: sample random networks of a given width, many seeds at once, and record the Gram
matrix of the batch after every block.

``simulate(net, X, width, seeds)`` reads the same `Network` description as the mean-field engine
(`meanfield.propagate`) and returns the same `Trajectory` type, with a leading seed axis:
``gram[s, l] = H H^T / width_l`` for the (n, width_l) features H of network s after block l (l = 0 is the
input X, whose Gram is X X^T / d0).

Layer rules (the semantics of `meanfield.layers`; "features" are the (n, width) matrix H of one network):

* Dense(sigma_w, sigma_b): H -> H W + 1 b^T, W_ij ~ N(0, sigma_w^2 / fan_in), b_i ~ N(0, sigma_b^2).
* WeightNormDense(g, "fixed"): columns w_i = g v_i / ||v_i||, v_i ~ N(0, I) (a uniformly random direction
  of norm g), plus b_i ~ N(0, sigma_b^2). ("data"): every pre-activation H v_i is standardized over the
  batch (mean 0, population standard deviation 1); g, the norm of v_i and the bias cancel.
* Linear(W, b): the fixed affine map x -> W x + b (the same deterministic weights in every network).
* Activation(f): elementwise f.
* LayerNorm: each sample centred across its features and divided by their population standard deviation;
  RMSNorm: divided by the root mean square only; GroupLayerNorm: LayerNorm on each of the contiguous
  groups of features; BatchNorm: each feature centred over the n inputs and divided by its batch
  (population) standard deviation -- batch statistics, never running statistics.
* Center("layer"): subtract each sample's feature mean; Scale("layer"): divide by each sample's root mean
  square. Center("meanfield"): subtract c_0(q_a) = E f(sqrt(q_a) z); Scale("meanfield"): divide by
  sqrt(E f(sqrt(q_a) z)^2 - [c_0(q_a)^2 if a Center precedes]), where f is the preceding
  Activation and q_a = (1/width) sum_i u_ia^2 is sample a's empirical mean-square pre-activation at that
  Activation (`hermite.coefficients`, `hermite.second_moment`). Only Center/Scale layers may stand
  between the Activation and a meanfield Center/Scale, and a meanfield Center must come before any Scale.
* MaxPool(k): maximum over k consecutive units (the width must be divisible by k).
* Residual(branch, alpha, shortcut): shortcut(H) + alpha * branch(H); shortcut None is the identity.

A zero variance (a sample for LayerNorm/RMSNorm/Scale/GroupLayerNorm, a feature for BatchNorm and
weight-norm data init) maps to 0, never to NaN. "Zero" means at or below the rounding level of the
computation: a centred variance v is zero when v <= 4 max(m, 16) eps^2 mean(x^2) over the m reduced
entries (the error of a variance computed in floating point from a constant vector), a mean square when
it is exactly 0.

The exact shortcut (DESIGN.md, "Numerics that matter")
------------------------------------------------------
Given the features H of the previous layer, a Dense layer with fresh Gaussian weights produces
pre-activations whose columns are i.i.d. N(0, C) with C = sigma_w^2 K_hat + sigma_b^2 11^T and
K_hat = H H^T / fan_in. So the forward statistics are sampled exactly by drawing width standard normal
n-vectors Z and forming A Z with A A^T = C: the Cholesky factor, or, network by network where it fails
or is numerically singular (a zero sample, duplicate inputs, fewer features than inputs), the eigen square
root with the eigenvalues below 8 n eps lambda_max set to 0 (a perturbation of C at its rounding level that
keeps duplicate inputs exactly duplicate). That is O(n^2 width) work and n width normals instead of
O(n width^2) and width^2 normals. The same holds for the data-dependent weight-norm init (a Gaussian
pre-activation of covariance K_hat, then batch standardization), and for the fixed weight-norm init when
fan_in >= n: writing H = U S V^T, the projections z = V_n^T v of v ~ N(0, I_fan_in) on the first n right
singular vectors are N(0, I_n) and independent of the remaining fan_in - n coordinates, so
H v / ||v|| = M z / sqrt(||z||^2 + chi^2_{fan_in - n}) with M M^T = H H^T. The law of every recorded
quantity is the same as with explicit weights; only the random numbers differ. Explicit weights are used
where the shortcut is not exact (gradients need the weights themselves), where it would cost more
(n comparable to the width: the factorization costs O(n^3)), or when asked (``explicit_weights``).

Random numbers
--------------
Network s draws from its own stream, ``numpy.random.SeedSequence(seed).spawn(seeds)[s]`` (an SFC64 bit
generator), layer after layer in a fixed order (weights or shortcut normals, then the bias, ...; the
Gaussian readout of the backward pass last). Draws therefore do not depend on how the seeds are chunked
(results are bitwise identical on numpy for any ``max_memory``), and network s is the same whatever the
total number of seeds (``seeds=8`` is a prefix of ``seeds=16``). On numpy and any non-cupy array-API
backend the numbers are generated on the host with numpy (per-seed slices filled in parallel threads) and
moved with ``xp.asarray``; on cupy each stream is a ``cupy.random.default_rng`` seeded with the same
spawned SeedSequence, so everything stays on the GPU (reproducible on cupy, but not the same numbers as
numpy). float32 and float64 runs draw different numbers (numpy generates float32 normals natively).

Throughput
----------
The seeds of a chunk are stacked into batched matrix products of shape (seeds, n, width); the data stay
on the device and each block's Grams are reduced there; only (seeds, n, n) Grams and (seeds, n) means are
transferred, once per chunk. ``max_memory`` (bytes) bounds the estimated peak memory of a chunk; by
default a quarter of the available RAM (numpy, other CPU namespaces) or half of the free GPU memory
(cupy).

Backward pass (``gradients=True``)
----------------------------------
Independent Gaussian readouts r_a ~ N(0, I_width), one per input, are put on the last block's output,
L = sum_a r_a . x_a^(L) (a shared readout would make L identically 0 after a final BatchNorm), and its
gradient G_l = dL/dX^(l) (n x width_l) is propagated back through every layer with its exact
vector-Jacobian product: LayerNorm dx = (dy - mean(dy) - y mean(dy y)) / sigma per sample, BatchNorm the
same over the batch (the batch coupling included), RMSNorm dx = (dy - y mean(dy y)) / rms, and so on.
Recorded: ``grad_norms[s, l] = ||G_l||_F / sqrt(n width_l)``, whose square grows by
chi_1 = sigma_w^2 E f'(u)^2 per Dense + Activation block in the mean-field limit (Schoenholz et al.
2017), and with ``grad_gram=True`` the backward Gram ``G_l G_l^T / width_l``. Two layers have parameters
set from data, which the gradient treats as the constants they are after initialization: the
weight-norm data init (g_i = 1/std_i and b_i = -mean_i/std_i, Salimans and Kingma 2016) and the
meanfield Center/Scale constants c_0(q_a), E f(sqrt(q_a) z)^2 (their dependence on the empirical q_a is
not differentiated).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np

import hermite
from meanfield.layers import (
    Activation,
    BatchNorm,
    Block,
    Center,
    Dense,
    GroupLayerNorm,
    Layer,
    LayerNorm,
    Linear,
    MaxPool,
    Residual,
    RMSNorm,
    Scale,
    WeightNormDense,
)
from meanfield.network import Network
from meanfield.trajectory import Trajectory

__all__ = ["simulate"]

_DTYPES = ("float32", "float64")
_KNOWN_BACKENDS = ("numpy", "cupy", "array_api_strict")
_GPU_HINT = "install the gpu extra: pip install meanfield-hermite[gpu]"

# flop-equivalent cost of one Gaussian draw, and of the O(n^3) eigendecomposition per n^3, used to choose
# between the exact shortcut and explicit weights when both are allowed (explicit_weights=None)
_RNG_COST = 60.0
_EIGH_COST = 30.0
_PROGRESS_FLOPS = 2e10  # a run estimated above this many flops shows a progress bar (stderr a TTY)


# ==========================================================================================================
# backends
class _Backend:
    """The array namespace and dtype of a run."""

    def __init__(self, name: str, xp: Any, kind: str, dtype_name: str):
        self.name = name
        self.xp = xp
        self.kind = kind  # "numpy", "cupy" or "other"
        self.np_dtype = np.dtype(dtype_name)
        self.dtype = getattr(xp, dtype_name)
        self.eps = float(np.finfo(self.np_dtype).eps)
        self.pool: ThreadPoolExecutor | None = None  # numpy: seed-parallel matmuls and RNG
        self.workers = 1

    def matmul(self, a, b):
        """Batched a @ b. On numpy with a thread pool the stack is split across threads, each running a
        single-threaded BLAS gemm per network (BLAS is capped at 1 thread meanwhile): threaded BLAS on small
        per-network products collapses on shared cores, and the per-matrix results do not depend on the
        split, so results stay bitwise reproducible."""
        if self.kind != "numpy" or self.pool is None:
            return self.xp.matmul(a, b)
        s = max(a.shape[0], b.shape[0])
        m, k, p = a.shape[-2], a.shape[-1], b.shape[-1]
        if s < 2 or a.ndim != 3 or b.ndim != 3 or 2.0 * s * m * k * p < 4e6:
            return np.matmul(a, b)
        out = np.empty((s, m, p), dtype=np.result_type(a, b))
        parts = min(self.workers, s)
        bounds = [(i * s // parts, (i + 1) * s // parts) for i in range(parts)]

        def job(lohi):
            lo, hi = lohi
            np.matmul(a if a.shape[0] == 1 else a[lo:hi], b if b.shape[0] == 1 else b[lo:hi], out=out[lo:hi])

        list(self.pool.map(job, bounds))
        return out

    def asarray(self, a: np.ndarray):
        a = np.ascontiguousarray(a, dtype=self.np_dtype)
        if self.kind == "numpy":
            return a
        return self.xp.asarray(a, dtype=self.dtype)


def _namespace_of_module(mod: ModuleType):
    import array_api_compat

    if mod is np or getattr(mod, "__name__", "") in ("numpy", "array_api_compat.numpy"):
        import array_api_compat.numpy as cnp

        return "numpy", cnp, "numpy"
    name = getattr(mod, "__name__", repr(mod))
    if name in ("cupy", "array_api_compat.cupy"):
        import array_api_compat.cupy as ccp

        return "cupy", ccp, "cupy"
    try:
        xp = array_api_compat.array_namespace(mod.asarray([0.0]))
    except Exception:  # noqa: BLE001 - any failure means "not an array-API namespace"
        xp = mod if getattr(mod, "__array_api_version__", None) is not None else None
    if xp is None or not hasattr(xp, "linalg"):
        raise ValueError(f"simulate: backend={name!r} is not an array-API namespace with the linalg "
                         "extension "
                         f"(wrap it with array_api_compat); allowed: {', '.join(_KNOWN_BACKENDS)}, or an "
                         "array-API namespace module")
    return name, xp, "other"


def _resolve_backend(backend: Any, dtype_name: str) -> _Backend:
    if isinstance(backend, ModuleType):
        name, xp, kind = _namespace_of_module(backend)
        return _Backend(name, xp, kind, dtype_name)
    if not isinstance(backend, str):
        raise ValueError(f"simulate: backend={backend!r} must be a name ({', '.join(_KNOWN_BACKENDS)}, or an "
                         "importable array-API module name such as 'torch') or an array-API namespace module")
    if backend == "numpy":
        import array_api_compat.numpy as cnp

        return _Backend("numpy", cnp, "numpy", dtype_name)
    if backend == "cupy":
        try:
            import cupy  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"simulate: backend='cupy' needs CuPy, which is not installed; "
                              f"{_GPU_HINT}") from exc
        import array_api_compat.cupy as ccp

        return _Backend("cupy", ccp, "cupy", dtype_name)
    if backend == "array_api_strict":
        import array_api_strict

        return _Backend("array_api_strict", array_api_strict, "other", dtype_name)
    try:
        mod = importlib.import_module(backend)
    except ImportError:
        raise ValueError(f"simulate: backend={backend!r} is not known and cannot be imported; allowed: "
                         f"{', '.join(_KNOWN_BACKENDS)}, or an importable array-API module ('torch', "
                         "...)") from None
    name, xp, kind = _namespace_of_module(mod)
    return _Backend(backend, xp, kind, dtype_name)


def _to_host(x) -> np.ndarray:
    """A numpy copy (or view) of an array of any backend."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("cupy"):
        return x.get()
    try:
        return np.from_dlpack(x)
    except Exception:  # noqa: BLE001 - fall back to the buffer protocol / __array__
        pass
    try:
        import array_api_compat

        return np.asarray(array_api_compat.to_device(x, "cpu"))
    except Exception:  # noqa: BLE001
        return np.asarray(x)


# ==========================================================================================================
# random streams: one per network
class _HostStreams:
    """Per-network numpy generators; draws are generated on the host and moved to the backend."""

    def __init__(self, seqs: list, be: _Backend, pool: ThreadPoolExecutor | None):
        self.gens = [np.random.Generator(np.random.SFC64(s)) for s in seqs]
        self.be = be
        self.pool = pool
        self._bufs: dict = {}

    @property
    def size(self) -> int:
        return len(self.gens)

    def normal(self, shape: tuple, reuse: bool = False):
        """(seeds, *shape) standard normals in the compute dtype; reuse=True may hand back the buffer of an
        earlier call of the same shape (only when the caller keeps no reference to it)."""
        full = (len(self.gens), *shape)
        dt = self.be.np_dtype
        buf = self._bufs.get(full) if reuse else None
        if buf is None:
            buf = np.empty(full, dtype=dt)
            if reuse:
                self._bufs[full] = buf

        def fill(i):
            self.gens[i].standard_normal(out=buf[i], dtype=dt)

        per = int(np.prod(shape))
        if self.pool is not None and len(self.gens) > 1 and per >= 16384:
            list(self.pool.map(fill, range(len(self.gens))))
        else:
            for i in range(len(self.gens)):
                fill(i)
        return self.be.asarray(buf)

    def chisquare(self, df: int, shape: tuple):
        """(seeds, *shape) chi-square variables with df degrees of freedom (0 where df == 0)."""
        if df <= 0:
            return self.be.asarray(np.zeros((len(self.gens), *shape)))
        return self.be.asarray(np.stack([g.chisquare(df, size=shape) for g in self.gens]))


class _CupyStreams:
    """Per-network cupy generators (cupy.random.default_rng seeded by the spawned SeedSequence)."""

    def __init__(self, seqs: list, be: _Backend):
        import cupy

        self.cp = cupy
        self.gens = [cupy.random.default_rng(s) for s in seqs]
        self.be = be
        self._bufs: dict = {}

    @property
    def size(self) -> int:
        return len(self.gens)

    def normal(self, shape: tuple, reuse: bool = False):
        full = (len(self.gens), *shape)
        buf = self._bufs.get(full) if reuse else None
        if buf is None:
            buf = self.cp.empty(full, dtype=self.be.np_dtype)
            if reuse:
                self._bufs[full] = buf
        for i, g in enumerate(self.gens):
            g.standard_normal(size=shape, dtype=self.be.np_dtype, out=buf[i])
        return buf

    def chisquare(self, df: int, shape: tuple):
        if df <= 0:
            return self.cp.zeros((len(self.gens), *shape), dtype=self.be.np_dtype)
        out = [2.0 * g.standard_gamma(df / 2.0, size=shape) for g in self.gens]
        return self.cp.stack(out).astype(self.be.np_dtype)


# ==========================================================================================================
# array helpers (array-API standard only)
def _mT(xp, a):
    return xp.matrix_transpose(a)


def _gram(be, h):
    """H H^T / width on the last two axes."""
    return be.matmul(h, _mT(be.xp, h)) / h.shape[-1]


def _sqrt_tol(n: int, eps: float) -> float:
    """Relative level below which an eigenvalue (or a squared Cholesky pivot) of an n x n Gram is rounding
    noise: 8 n eps of its largest diagonal entry."""
    return 8.0 * n * eps


def _eigh_sqrt(xp, c, eps: float):
    """V diag(sqrt(lambda)) with the eigenvalues below the rounding level set to 0: a square root of a
    symmetric PSD stack that exists for singular C and keeps duplicate inputs exactly duplicate (clipping
    only the negative eigenvalues would leave sqrt(eps)-sized noise in the null directions)."""
    ev = xp.linalg.eigh(c)
    lam = ev.eigenvalues
    top = xp.max(xp.abs(lam), axis=-1, keepdims=True)
    keep = lam > _sqrt_tol(c.shape[-1], eps) * top
    lam = xp.sqrt(xp.where(keep, lam, 0.0))
    return ev.eigenvectors * xp.expand_dims(lam, axis=-2)


def _chol_bad(xp, L, c, eps: float):
    """Per matrix: True where the Cholesky factor is not usable: L L^T does not reproduce C to rounding (a
    failed or NaN factorization; some backends do not raise), or a pivot is at the rounding level (a
    numerically singular C, whose factor would carry sqrt(eps)-sized noise)."""
    n = c.shape[-1]
    scale = xp.max(xp.abs(c), axis=(-2, -1))
    r = xp.max(xp.abs(xp.matmul(L, _mT(xp, L)) - c), axis=(-2, -1))
    d = xp.linalg.diagonal(L)
    pivot = xp.min(d * d, axis=-1)
    return ~((r <= 100.0 * (n + 1) * eps * scale) & (pivot > _sqrt_tol(n, eps) * scale))


def _cholesky_parts(xp, c, lo: int, parts: list, failed: list) -> None:
    """Cholesky of the stack c (networks lo, lo+1, ...), bisecting around the matrices for which the
    backend raises (numpy raises for a whole stack if one matrix fails)."""
    try:
        parts.append(xp.linalg.cholesky(c))
        return
    except Exception:  # noqa: BLE001 - LinAlgError or the backend's equivalent
        pass
    s = c.shape[0]
    if s == 1:
        parts.append(xp.zeros_like(c))
        failed.append(lo)
        return
    h = s // 2
    _cholesky_parts(xp, c[:h, ...], lo, parts, failed)
    _cholesky_parts(xp, c[h:, ...], lo + h, parts, failed)


def _sqrt_psd(be, c):
    """A with A A^T = C for a stack of symmetric PSD C (shape (s, n, n)): the Cholesky factor (cheap), and
    for the matrices where it fails or is numerically singular (a zero sample, duplicate inputs, fewer
    features than inputs, ...) the eigen square root. The choice is made matrix by matrix, so a network's
    result does not depend on the other networks of its chunk."""
    xp = be.xp
    parts: list = []
    failed: list = []
    _cholesky_parts(xp, c, 0, parts, failed)
    L = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
    bad = np.array(_to_host(_chol_bad(xp, L, c, be.eps)), dtype=bool).reshape(-1)
    bad[failed] = True
    if not bad.any():
        return L
    idx = np.nonzero(bad)[0]
    E = _eigh_sqrt(xp, xp.take(c, xp.asarray(idx), axis=0), be.eps)
    if idx.size == bad.size:
        return E
    pos = np.zeros(bad.size, dtype=np.int64)
    pos[idx] = np.arange(idx.size)
    E = xp.take(E, xp.asarray(pos), axis=0)
    return xp.where(xp.asarray(bad.reshape(-1, 1, 1)), E, L)


def _safe_inv_sqrt(xp, v, ok):
    """1 / sqrt(v) where ok, 0 elsewhere (no division by zero is ever evaluated)."""
    return xp.where(ok, 1.0 / xp.sqrt(xp.where(ok, v, 1.0)), 0.0)


def _standardize(xp, h, axis: int, center: bool, eps: float):
    """(y, inv): y = (h - [mean]) * inv along ``axis`` with inv = 1/std (or 1/rms), 0 for a zero variance."""
    if center:
        hc = h - xp.mean(h, axis=axis, keepdims=True)
        v = xp.mean(hc * hc, axis=axis, keepdims=True)
        m2 = xp.mean(h * h, axis=axis, keepdims=True)
        tol = 4.0 * max(h.shape[axis], 16) * eps * eps
        ok = v > tol * m2
    else:
        hc = h
        v = xp.mean(h * h, axis=axis, keepdims=True)
        ok = v > 0.0
    inv = _safe_inv_sqrt(xp, v, ok)
    return hc * inv, inv


def _standardize_vjp(xp, g, y, inv, axis: int, center: bool):
    """Vector-Jacobian product of `_standardize`: inv * (g - [mean g] - y mean(g y))."""
    t = g - y * xp.mean(g * y, axis=axis, keepdims=True)
    if center:
        t = t - xp.mean(g, axis=axis, keepdims=True)
    return inv * t


def _host_apply(fn, x, be: _Backend):
    y = np.asarray(fn(_to_host(x)), dtype=np.float64)
    return be.asarray(y)


def _same_kind(y, x) -> bool:
    return type(y) is type(x) and tuple(y.shape) == tuple(x.shape)


def _act_forward(act, x, be: _Backend):
    """f(x) with the activation's array-API implementation; a host round trip for user callables that only
    work on numpy arrays."""
    xp = be.xp
    try:
        y = act.array_fn(x, xp)
    except Exception:  # noqa: BLE001 - numpy-only user callable on a non-numpy backend
        return _host_apply(act.fn, x, be)
    if not _same_kind(y, x):
        return _host_apply(act.fn, x, be)
    if y.dtype != be.dtype:
        y = xp.astype(y, be.dtype)
    return y


def _act_derivative(act, x, be: _Backend):
    """f'(x) (between the kinks) on the backend: numpy directly, other namespaces through the core's
    numpy-ufunc derivative when it dispatches (cupy), else a host round trip."""
    if be.kind == "numpy":
        return np.asarray(act.derivative(x), dtype=be.np_dtype)
    core = act.core
    try:
        d = core.derivative(act.gain * x if act.gain != 1.0 else x)
        if not _same_kind(d, x):
            raise TypeError
        d = act.gamma * (d * act.gain + act.alpha)
        if d.dtype != be.dtype:
            d = be.xp.astype(d, be.dtype)
        return d
    except Exception:  # noqa: BLE001
        return _host_apply(act.derivative, x, be)


# ==========================================================================================================
# the run context of one chunk of seeds
class _MFState:
    """What a meanfield Center/Scale needs from the preceding Activation."""

    def __init__(self, act, q):
        self.act = act
        self.q = q  # (s, n) empirical mean-square pre-activation per sample
        self.c0 = None  # set by a meanfield Center


class _Run:
    def __init__(self, be: _Backend, streams, n: int, grad: bool):
        self.be = be
        self.xp = be.xp
        self.streams = streams
        self.n = n
        self.grad = grad
        self.known: tuple | None = None  # (h, K_hat) when the Gram of h is already computed
        self.mf: _MFState | None = None

    def gram_of(self, h):
        if self.known is not None and self.known[0] is h:
            return self.known[1]
        k = _gram(self.be, h)
        self.known = (h, k)
        return k

    def mf_constants(self, need_m2: bool):
        """c_0(q_a) and E f(sqrt(q_a) z)^2 from `hermite`, per seed and sample, on the backend."""
        st = self.mf
        q = np.asarray(_to_host(st.q), dtype=np.float64)
        flat = q.reshape(-1)
        c0 = np.asarray(hermite.coefficients(st.act, 0, q=flat), dtype=np.float64)
        c0 = c0.reshape(flat.shape[0], -1)[:, 0].reshape(q.shape)
        m2 = None
        if need_m2:
            m2 = np.asarray(hermite.second_moment(st.act, flat), dtype=np.float64).reshape(q.shape)
        return c0, m2


# ==========================================================================================================
# operations: one per layer type
class _Op:
    """A compiled layer: static widths plus forward and backward rules on (seeds, n, width) stacks."""

    mf_role: str | None = None  # "act" sets the meanfield state, "keep" keeps it, None resets it
    w_in: int = 0
    w_out: int = 0

    def forward(self, h, rt: _Run):
        raise NotImplementedError

    def backward(self, g, cache, rt: _Run):
        raise NotImplementedError

    # memory model, in elements per seed
    def transient(self, n: int) -> int:
        return 2 * n * max(self.w_in, self.w_out)

    def cache_elems(self, n: int) -> int:
        return 0

    def flops(self, n: int) -> float:
        return 4.0 * n * max(self.w_in, self.w_out)


class _DenseOp(_Op):
    """Dense and WeightNormDense. kind: "dense", "wn_fixed" or "wn_data"."""

    def __init__(self, kind: str, w_in: int, w_out: int, sigma_w: float, sigma_b: float, g: float,
                 shortcut: bool, host_staged: bool):
        self.kind = kind
        self.w_in, self.w_out = w_in, w_out
        self.sigma_w, self.sigma_b, self.g = sigma_w, sigma_b, g
        self.shortcut = shortcut
        self.host_staged = host_staged

    def forward(self, h, rt: _Run):
        xp, n = rt.xp, rt.n
        cache = None
        if self.shortcut:
            k = rt.gram_of(h)
            if self.kind == "dense":
                a = _sqrt_psd(rt.be, (self.sigma_w ** 2) * k + self.sigma_b ** 2)
                z = rt.streams.normal((n, self.w_out), reuse=True)
                pre = rt.be.matmul(a, z)
            elif self.kind == "wn_data":
                z = rt.streams.normal((n, self.w_out), reuse=True)
                pre, _ = _standardize(xp, rt.be.matmul(_sqrt_psd(rt.be, k), z), -2, True, rt.be.eps)
            else:  # wn_fixed, fan_in >= n
                z = rt.streams.normal((n, self.w_out))
                chi = rt.streams.chisquare(self.w_in - n, (1, self.w_out))
                denom = xp.sqrt(xp.sum(z * z, axis=-2, keepdims=True) + chi)
                pre = rt.be.matmul(_sqrt_psd(rt.be, k), z) * ((self.g * math.sqrt(self.w_in)) / denom)
                if self.sigma_b > 0:
                    pre = pre + self.sigma_b * rt.streams.normal((1, self.w_out))
        else:
            w = rt.streams.normal((self.w_in, self.w_out), reuse=not rt.grad)
            u = rt.be.matmul(h, w)
            if self.kind == "dense":
                scale = self.sigma_w / math.sqrt(self.w_in)
                pre = u * scale
                if self.sigma_b > 0:
                    pre = pre + self.sigma_b * rt.streams.normal((1, self.w_out))
            elif self.kind == "wn_fixed":
                scale = self.g / xp.sqrt(xp.sum(w * w, axis=-2, keepdims=True))
                pre = u * scale
                if self.sigma_b > 0:
                    pre = pre + self.sigma_b * rt.streams.normal((1, self.w_out))
            else:  # wn_data: parameters g_i = 1/std_i, b_i = -mean_i/std_i set on this batch
                pre, scale = _standardize(xp, u, -2, True, rt.be.eps)
            if rt.grad:
                cache = (w, scale)
        return pre, cache

    def backward(self, g, cache, rt: _Run):
        w, scale = cache
        return rt.be.matmul(g * scale, _mT(rt.xp, w))

    def transient(self, n: int) -> int:
        if self.shortcut:
            return 3 * n * self.w_out + 4 * n * n + n * self.w_in
        staged = 2 if self.host_staged else 1
        return staged * self.w_in * self.w_out + 2 * n * self.w_out

    def cache_elems(self, n: int) -> int:
        return 0 if self.shortcut else self.w_in * self.w_out + self.w_out

    def flops(self, n: int) -> float:
        if self.shortcut:
            return 2.0 * n * n * (self.w_in + self.w_out) + _EIGH_COST * n ** 3 + _RNG_COST * n * self.w_out
        return 2.0 * n * self.w_in * self.w_out + _RNG_COST * self.w_in * self.w_out


class _LinearOp(_Op):
    """Linear(W, b): the fixed affine map x -> W x + b, the same in every network (W of shape (out, in))."""

    def __init__(self, W: np.ndarray, b: np.ndarray):
        self.W, self.b = W, b
        self.w_out, self.w_in = W.shape
        self._dev: tuple | None = None

    def _arrays(self, rt: _Run):
        if self._dev is None or self._dev[0] is not rt.be:
            wt = rt.be.asarray(self.W.T[None, ...])  # (1, in, out)
            self._dev = (rt.be, wt, rt.be.asarray(self.b[None, None, :]), rt.be.asarray(self.W[None, ...]))
        return self._dev[1:]

    def forward(self, h, rt: _Run):
        wt, b, _ = self._arrays(rt)
        return rt.be.matmul(h, wt) + b, (True if rt.grad else None)

    def backward(self, g, cache, rt: _Run):
        _, _, w = self._arrays(rt)
        return rt.be.matmul(g, w)

    def flops(self, n: int) -> float:
        return 2.0 * n * self.w_in * self.w_out


class _ActOp(_Op):
    mf_role = "act"

    def __init__(self, act, w: int):
        self.act = act
        self.w_in = self.w_out = w
        self.need_q = False

    def forward(self, h, rt: _Run):
        xp = rt.xp
        y = _act_forward(self.act, h, rt.be)
        rt.mf = _MFState(self.act, xp.mean(h * h, axis=-1)) if self.need_q else None
        cache = _act_derivative(self.act, h, rt.be) if rt.grad else None
        return y, cache

    def backward(self, g, cache, rt: _Run):
        return g * cache

    def cache_elems(self, n: int) -> int:
        return n * self.w_out


class _NormOp(_Op):
    """LayerNorm ("ln"), RMSNorm / Scale(layer) ("rms"), BatchNorm ("bn"), GroupLayerNorm ("gln")."""

    def __init__(self, kind: str, w: int, groups: int = 1):
        self.kind = kind
        self.w_in = self.w_out = w
        self.groups = groups
        self.mf_role = "keep" if kind == "rms_scale" else None

    def _axis_center(self):
        if self.kind == "bn":
            return -2, True
        if self.kind in ("rms", "rms_scale"):
            return -1, False
        return -1, True

    def forward(self, h, rt: _Run):
        xp = rt.xp
        axis, center = self._axis_center()
        if self.kind == "gln" and self.groups > 1:
            s0, n, w = h.shape
            hg = xp.reshape(h, (s0, n, self.groups, w // self.groups))
            y, inv = _standardize(xp, hg, -1, True, rt.be.eps)
            out = xp.reshape(y, (s0, n, w))
        else:
            y, inv = _standardize(xp, h, axis, center, rt.be.eps)
            out = y
        return out, ((y, inv) if rt.grad else None)

    def backward(self, g, cache, rt: _Run):
        xp = rt.xp
        y, inv = cache
        axis, center = self._axis_center()
        if self.kind == "gln" and self.groups > 1:
            s0, n, w = g.shape
            gg = xp.reshape(g, (s0, n, self.groups, w // self.groups))
            return xp.reshape(_standardize_vjp(xp, gg, y, inv, -1, True), (s0, n, w))
        return _standardize_vjp(xp, g, y, inv, axis, center)

    def cache_elems(self, n: int) -> int:
        return n * self.w_out + n + self.w_out


class _CenterOp(_Op):
    mf_role = "keep"

    def __init__(self, mode: str, w: int):
        self.mode = mode
        self.w_in = self.w_out = w

    def forward(self, h, rt: _Run):
        xp = rt.xp
        if self.mode == "layer":
            return h - xp.mean(h, axis=-1, keepdims=True), None
        c0, _ = rt.mf_constants(need_m2=False)
        c0 = rt.be.asarray(c0)
        rt.mf.c0 = c0
        return h - rt.xp.expand_dims(c0, axis=-1), None

    def backward(self, g, cache, rt: _Run):
        if self.mode == "layer":
            return g - rt.xp.mean(g, axis=-1, keepdims=True)
        return g


class _ScaleMFOp(_Op):
    """Scale(mode="meanfield"): divide by sqrt(E f^2 [- c_0^2]) at the sample's q_a."""

    mf_role = "keep"

    def __init__(self, w: int, centered: bool = False):
        self.w_in = self.w_out = w
        self.centered = centered  # a Center (either mode) precedes, after the same Activation

    def forward(self, h, rt: _Run):
        c0, m2 = rt.mf_constants(need_m2=True)
        var = m2 - c0 * c0 if self.centered else m2
        ok = var > 0.0
        inv = np.where(ok, 1.0 / np.sqrt(np.where(ok, var, 1.0)), 0.0)
        inv = rt.xp.expand_dims(rt.be.asarray(inv), axis=-1)
        return h * inv, (inv if rt.grad else None)

    def backward(self, g, cache, rt: _Run):
        return g * cache


class _MaxPoolOp(_Op):
    def __init__(self, k: int, w_in: int):
        self.k = k
        self.w_in = w_in
        self.w_out = w_in // k

    def forward(self, h, rt: _Run):
        xp = rt.xp
        s0, n, w = h.shape
        hr = xp.reshape(h, (s0, n, w // self.k, self.k))
        y = xp.max(hr, axis=-1)
        cache = xp.argmax(hr, axis=-1) if rt.grad else None
        return y, cache

    def backward(self, g, cache, rt: _Run):
        xp = rt.xp
        s0, n, wo = g.shape
        onehot = xp.astype(xp.reshape(xp.arange(self.k), (1, 1, 1, self.k)) == xp.expand_dims(cache, axis=-1),
                           g.dtype)
        return xp.reshape(xp.expand_dims(g, axis=-1) * onehot, (s0, n, wo * self.k))

    def cache_elems(self, n: int) -> int:
        return n * self.w_out


class _ResidualOp(_Op):
    def __init__(self, branch: list, shortcut: list | None, alpha: float, w_in: int, w_out: int):
        self.branch, self.shortcut, self.alpha = branch, shortcut, alpha
        self.w_in, self.w_out = w_in, w_out

    def forward(self, h, rt: _Run):
        known = rt.known
        hb, cb = _forward_seq(self.branch, h, rt)
        rt.known = known
        if self.shortcut is None:
            hs, cs = h, None
        else:
            hs, cs = _forward_seq(self.shortcut, h, rt)
        rt.known = None
        return hs + self.alpha * hb, ((cb, cs) if rt.grad else None)

    def backward(self, g, cache, rt: _Run):
        cb, cs = cache
        gb = _backward_seq(self.branch, cb, g * self.alpha, rt)
        gs = g if self.shortcut is None else _backward_seq(self.shortcut, cs, g, rt)
        return gs + gb

    def _all(self):
        return self.branch + (self.shortcut or [])

    def transient(self, n: int) -> int:
        return 3 * n * self.w_out + max(op.transient(n) for op in self._all())

    def cache_elems(self, n: int) -> int:
        return sum(op.cache_elems(n) for op in self._all())

    def flops(self, n: int) -> float:
        return sum(op.flops(n) for op in self._all()) + 2.0 * n * self.w_out


def _forward_seq(ops: list, h, rt: _Run):
    caches = []
    for op in ops:
        if op.mf_role is None:
            rt.mf = None
        h, c = op.forward(h, rt)
        if op.mf_role is None:
            rt.mf = None
        if h is not (rt.known[0] if rt.known else None):
            rt.known = None
        caches.append(c)
    return h, caches


def _backward_seq(ops: list, caches: list, g, rt: _Run):
    for op, c in zip(reversed(ops), reversed(caches)):
        g = op.backward(g, c, rt)
    return g


# ==========================================================================================================
# compiling a network into operations with static widths
class _Config:
    def __init__(self, n: int, explicit: bool | None, grad: bool, host_staged: bool):
        self.n = n
        self.explicit = explicit
        self.grad = grad
        self.host_staged = host_staged
        self.modes: list = []  # "shortcut" / "explicit" per Dense-like layer, in order


def _use_shortcut(cfg: _Config, kind: str, w_in: int, w_out: int) -> bool:
    n = cfg.n
    if cfg.grad or cfg.explicit is True:
        return False
    if kind == "wn_fixed" and w_in < n:
        return False  # fewer input coordinates than samples: the chi-square split does not apply
    if cfg.explicit is False:
        return True
    short = 2.0 * n * n * (w_in + w_out) + _EIGH_COST * n ** 3 + _RNG_COST * n * w_out
    expl = 2.0 * n * w_in * w_out + _RNG_COST * w_in * w_out
    return short <= expl


def _compile_seq(layers: Sequence[Layer], w: int, block_w: int, cfg: _Config, where: str,
                 prev: dict) -> tuple[list, int]:
    """Operations for ``layers`` acting on width ``w``; ``prev`` tracks the Activation that a meanfield
    Center/Scale refers to ({"act": op or None, "center": bool, "scaled": bool})."""
    ops: list = []
    for i, layer in enumerate(layers):
        at = f"{where}, layer {i} ({layer!r})"
        keep_prev = False
        if isinstance(layer, (Dense, WeightNormDense)):
            w_out = block_w if layer.width is None else layer.width
            if isinstance(layer, Dense):
                kind, sw, sb, g = "dense", layer.sigma_w, layer.sigma_b, 1.0
            else:
                kind = "wn_fixed" if layer.init == "fixed" else "wn_data"
                sw, sb, g = layer.g, layer.sigma_b, layer.g
            sc = _use_shortcut(cfg, kind, w, w_out)
            cfg.modes.append("shortcut" if sc else "explicit")
            ops.append(_DenseOp(kind, w, w_out, sw, sb, g, sc, cfg.host_staged))
            w = w_out
        elif isinstance(layer, Linear):
            if layer.W.shape[1] != w:
                raise ValueError(f"simulate: {at}: W has {layer.W.shape[1]} input features but the layer "
                                 f"receives {w}; the width before it must equal W.shape[1]")
            ops.append(_LinearOp(np.asarray(layer.W, dtype=np.float64),
                                 np.asarray(layer.b, dtype=np.float64)))
            w = layer.W.shape[0]
        elif isinstance(layer, Activation):
            if cfg.grad and layer.act.core.derivative is None:
                raise ValueError(f"simulate: gradients=True needs the derivative of every activation; {at}: "
                                 f"activation {layer.act.name!r} has none (pass derivative= to "
                                 "hermite.activation)")
            op = _ActOp(layer.act, w)
            ops.append(op)
            prev.update(act=op, center=False, scaled=False)
            keep_prev = True
        elif isinstance(layer, (LayerNorm, RMSNorm, BatchNorm)):
            kind = {LayerNorm: "ln", RMSNorm: "rms", BatchNorm: "bn"}[type(layer)]
            ops.append(_NormOp(kind, w))
        elif isinstance(layer, GroupLayerNorm):
            if layer.groups is not None:
                groups = layer.groups
                if w % groups:
                    raise ValueError(f"simulate: {at}: GroupLayerNorm groups={groups} must divide the width "
                                     f"{w}; choose a width that is a multiple of {groups}")
            else:
                if w % layer.group_size:
                    raise ValueError(f"simulate: {at}: GroupLayerNorm group_size={layer.group_size} must "
                                     f"divide the width {w}; choose a width that is a multiple of it")
                groups = w // layer.group_size
            ops.append(_NormOp("gln", w, groups))
        elif isinstance(layer, (Center, Scale)):
            if layer.mode == "meanfield":
                if prev.get("act") is None:
                    raise ValueError(f"simulate: {at}: a meanfield {type(layer).__name__} needs a preceding "
                                     "Activation, with only Center/Scale layers in between")
                if isinstance(layer, Center) and prev.get("scaled"):
                    raise ValueError(f"simulate: {at}: a meanfield Center must come before any Scale after "
                                     "its Activation")
                if isinstance(layer, Scale) and prev.get("scaled"):
                    raise ValueError(f"simulate: {at}: a meanfield Scale cannot follow another Scale")
                prev["act"].need_q = True
            if isinstance(layer, Center):
                ops.append(_CenterOp(layer.mode, w))
                prev["center"] = True
            else:
                ops.append(_ScaleMFOp(w, bool(prev.get("center"))) if layer.mode == "meanfield"
                           else _NormOp("rms_scale", w))
                prev["scaled"] = True
            keep_prev = True
        elif isinstance(layer, MaxPool):
            if w % layer.k:
                raise ValueError(f"simulate: {at}: MaxPool k={layer.k} must divide the width {w}; choose a "
                                 f"width that is a multiple of {layer.k}")
            ops.append(_MaxPoolOp(layer.k, w))
            w //= layer.k
        elif isinstance(layer, Residual):
            branch, wb = _compile_seq(layer.branch, w, block_w, cfg, f"{at} branch", {})
            if layer.shortcut is None:
                short, ws = None, w
            else:
                short, ws = _compile_seq(layer.shortcut, w, block_w, cfg, f"{at} shortcut", {})
            if wb != ws:
                raise ValueError(f"simulate: {at}: the branch output width {wb} differs from the shortcut "
                                 f"output width {ws}" + (" (identity shortcut: the input width); use a Dense "
                                                         "shortcut or make the widths equal"
                                                         if layer.shortcut is None else ""))
            ops.append(_ResidualOp(branch, short, layer.alpha, w, wb))
            w = wb
        elif isinstance(layer, Block):  # pragma: no cover - Block forbids nesting
            raise ValueError(f"simulate: {at}: nested blocks are not allowed")
        else:
            raise ValueError(f"simulate: {at}: unsupported layer type {type(layer).__name__}")
        if not keep_prev:
            prev.update(act=None, center=False, scaled=False)
    return ops, w


# ==========================================================================================================
# validation
def _check_int(name: str, value, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)) \
            or not float(value).is_integer() or int(value) < lo:
        raise ValueError(f"simulate: {name}={value!r} must be an integer >= {lo}")
    return int(value)


def _check_widths(width, depth: int) -> list[int]:
    if isinstance(width, (str, bytes)) or not isinstance(width, Sequence | np.ndarray):
        try:
            return [_check_int("width", width)] * depth
        except ValueError:
            raise ValueError(f"simulate: width={width!r} must be an integer >= 1 or a sequence of {depth} "
                             "such integers (one per block)") from None
    ws = list(width)
    if len(ws) != depth:
        raise ValueError(f"simulate: width has {len(ws)} entries but the network has {depth} blocks; give "
                         "one width per block or a single integer")
    return [_check_int(f"width[{i}]", v) for i, v in enumerate(ws)]


def _check_X(X) -> np.ndarray:
    if not isinstance(X, np.ndarray) and hasattr(X, "shape") and hasattr(X, "dtype"):
        X = _to_host(X)
    try:
        A = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"simulate: X must be a real (n, d0) array, got {type(X).__name__}") from None
    if A.ndim != 2 or A.shape[0] < 1 or A.shape[1] < 1:
        raise ValueError(f"simulate: X must be a 2-D (n, d0) array with n >= 1 inputs and d0 >= 1 features, "
                         f"got shape {A.shape}")
    bad = ~np.isfinite(A)
    if bad.any():
        raise ValueError(f"simulate: X must be finite, got {int(bad.sum())} NaN/inf entries (first at row "
                         f"{int(np.argwhere(bad)[0][0])})")
    return A


def _default_memory(be: _Backend) -> int:
    if be.kind == "cupy":
        import cupy

        free, _total = cupy.cuda.runtime.memGetInfo()
        return int(free // 2)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 << 30
    return int(max(avail // 4, 64 << 20))


# ==========================================================================================================
# running one chunk of seeds
class _Sink:
    """Per-block results of a chunk, written into the host array ``host[lo:hi, l]``: at once on numpy,
    else kept on the device and transferred in one stacked copy at the end of the chunk."""

    def __init__(self, be: _Backend, host: np.ndarray, lo: int, hi: int):
        self.be, self.host, self.lo, self.hi = be, host, lo, hi
        self.items: dict = {}

    def put(self, index: int, a) -> None:
        shape = (self.hi - self.lo, *self.host.shape[2:])
        if self.be.kind == "numpy":
            self.host[self.lo:self.hi, index] = np.broadcast_to(a, shape)
        else:
            self.items[index] = self.be.xp.broadcast_to(a, shape)

    def finish(self) -> None:
        if not self.items:
            return
        idx = sorted(self.items)
        stacked = _to_host(self.be.xp.stack([self.items[i] for i in idx], axis=1))
        self.host[self.lo:self.hi, idx[0]:idx[-1] + 1] = stacked
        self.items = {}


def _run_chunk(blocks: list, X, be: _Backend, streams, n: int, grad: bool, sinks: dict,
               progress=None, want_input_grad: bool = False) -> dict:
    """Forward (and backward) pass of one chunk of seeds; Grams, means, gradient norms and Grams go to
    ``sinks`` ("gram", "means", "grad_norms", "grad_gram"; index 0 of gram/means is filled by the caller)."""
    xp = be.xp
    rt = _Run(be, streams, n, grad)
    s = streams.size
    h = xp.expand_dims(be.asarray(X), axis=0)  # (1, n, d0), broadcast against the seeds
    tapes = []
    for b, ops in enumerate(blocks):
        h, caches = _forward_seq(ops, h, rt)
        sinks["gram"].put(b + 1, rt.gram_of(h))
        sinks["means"].put(b + 1, xp.mean(h, axis=-1))
        tapes.append(caches)
        if progress is not None:
            progress.update(1)
    out: dict = {}
    if grad:
        w_last = h.shape[-1]
        # an independent Gaussian readout per sample: a shared one would make the loss of a network that
        # ends in BatchNorm identically zero (BatchNorm removes the batch mean of the output gradient)
        r = streams.normal((n, w_last))  # (s, n, w)
        if want_input_grad:
            out["loss"] = _to_host(xp.sum(xp.broadcast_to(h, (s, n, w_last)) * r, axis=(-2, -1)))
        g = xp.broadcast_to(r, (s, n, w_last))
        gram_sink = sinks.get("grad_gram")

        def record(index, g):
            w = g.shape[-1]
            sinks["grad_norms"].put(index, xp.sqrt(xp.sum(g * g, axis=(-2, -1)) / (n * w)))
            if gram_sink is not None:
                gram_sink.put(index, _gram(be, g))

        record(len(blocks), g)
        for b in range(len(blocks) - 1, -1, -1):
            g = _backward_seq(blocks[b], tapes[b], g, rt)
            tapes[b] = None  # free the caches of this block
            g = xp.broadcast_to(g, (s, n, g.shape[-1]))
            record(b, g)
        if want_input_grad:
            out["input_grad"] = _to_host(g)
    for sink in sinks.values():
        sink.finish()
    return out


def _memory_per_seed(blocks: list, n: int, d0: int, itemsize: int, grad: bool) -> int:
    ops = [op for b in blocks for op in b]
    wmax = max([d0] + [max(op.w_in, op.w_out) for op in ops])
    elems = 6 * n * wmax + 4 * n * n + max(op.transient(n) for op in ops)
    if grad:
        elems += sum(op.cache_elems(n) for op in ops) + 4 * n * wmax
    return int(itemsize * elems + 64 * n * n * len(blocks) + 4096)


# ==========================================================================================================
def simulate(net: Network, X, width: int | Sequence[int] = 512, seeds: int = 32, backend: Any = "numpy",
             seed: int | np.random.SeedSequence = 0, max_memory: float | None = None, gradients: bool = False,
             *, dtype: str = "float64", grad_gram: bool = False, explicit_weights: bool | None = None,
             progress: bool | None = None) -> Trajectory:
    """Sample ``seeds`` random networks of finite width and record the batch Gram after every block.

    Parameters
    ----------
    net : Network
        The description (`meanfield.mlp` or `meanfield.Network`); a single layer or list of layers is
        wrapped in a Network.
    X : array (n, d0)
        The input batch; its Gram is X X^T / d0 (index 0 of the trajectory). Finite entries.
    width : int or sequence of int
        Width of every Dense/WeightNormDense layer, or one width per block. Layers with their own
        ``width`` field keep it.
    seeds : int
        Number of independent networks.
    backend : "numpy", "cupy", "array_api_strict", an importable array-API module name, or a namespace
        module (wrapped with array_api_compat). Only array-API standard functions are used.
    dtype : "float32" or "float64"
        Compute dtype; the results are float64 either way.
    seed : int or numpy.random.SeedSequence
        Network s uses ``SeedSequence(seed).spawn(seeds)[s]``: reproducible, independent of chunking.
    max_memory : bytes or None
        Bound on the estimated peak memory of a chunk of seeds (default: a quarter of the available RAM,
        half of the free GPU memory for cupy). ValueError if one network alone needs more.
    gradients : bool
        Also run the backward pass of independent Gaussian readouts r_a ~ N(0, I) on the last block's output and record
        ``grad_norms[s, l] = ||dL/dX^(l)||_F / sqrt(n width_l)`` (needs explicit weights).
    grad_gram : bool
        Also record ``grad_gram[s, l] = G G^T / width_l``, G = dL/dX^(l) (implies gradients=True).
    explicit_weights : None, True or False
        None: the exact shortcut (pre-activations ~ N(0, sigma_w^2 K_hat + sigma_b^2), sampled from an n x n
        square root) wherever it is exact and cheaper, explicit weights elsewhere and whenever gradients
        are asked for. True: explicit weights everywhere. False: the shortcut wherever it is exact.
    progress : None, True or False
        A tqdm bar over blocks x chunks; None shows it only for long runs (estimated > 2e10 flops) when
        stderr is a terminal.

    Returns
    -------
    Trajectory
        ``engine="simulate"``, ``gram`` (seeds, L+1, n, n) float64 with K = H H^T / width per network,
        ``means`` (seeds, L+1, n) per-sample feature means, ``grad_norms`` (seeds, L+1) and ``grad_gram``
        (seeds, L+1, n, n) when asked for, and ``info`` with width, widths (per trajectory index), backend,
        dtype, seeds, seed, chunk (seeds per chunk), max_memory, dense_modes ("shortcut"/"explicit" per
        Dense-like layer in order).

    Examples
    --------
    >>> import numpy as np, meanfield
    >>> from meanfield.simulate import simulate
    >>> net = meanfield.mlp(3, "relu", norm="ln")
    >>> sim = simulate(net, np.eye(4), width=256, seeds=8)
    >>> sim.gram.shape
    (8, 4, 4, 4)
    """
    if isinstance(net, (Layer, list, tuple)):
        net = Network(net)
    if not isinstance(net, Network):
        raise ValueError(f"simulate: net must be a meanfield.Network (or layers), got {type(net).__name__}")
    dtype_name = np.dtype(dtype).name if _is_float_dtype_like(dtype) else None
    if dtype_name not in _DTYPES:
        raise ValueError(f"simulate: dtype={dtype!r} must be one of {', '.join(_DTYPES)}")
    Xh = _check_X(X)
    n, d0 = Xh.shape
    widths = _check_widths(width, net.depth)
    seeds = _check_int("seeds", seeds)
    if isinstance(seed, np.random.SeedSequence):
        root = seed
    else:
        root = np.random.SeedSequence(_check_int("seed", seed, lo=0))
    if explicit_weights not in (None, True, False):
        raise ValueError(f"simulate: explicit_weights={explicit_weights!r} must be None, True or False")
    for nm, v in (("gradients", gradients), ("grad_gram", grad_gram)):
        if v not in (True, False):
            raise ValueError(f"simulate: {nm}={v!r} must be True or False")
    if progress not in (None, True, False):
        raise ValueError(f"simulate: progress={progress!r} must be None, True or False")
    grad = bool(gradients or grad_gram)
    if grad and explicit_weights is False:
        raise ValueError("simulate: explicit_weights=False (the shortcut) cannot be combined with "
                         "gradients=True, which needs the weights themselves; use explicit_weights=None or "
                         "True")
    if max_memory is not None:
        try:
            mm = float(max_memory)
        except (TypeError, ValueError):
            mm = float("nan")
        if not math.isfinite(mm) or mm <= 0:
            raise ValueError(f"simulate: max_memory={max_memory!r} must be a positive number of bytes or "
                             "None")
    be = _resolve_backend(backend, dtype_name)

    cfg = _Config(n, explicit_weights, grad, host_staged=be.kind == "other")
    blocks, out_widths = [], [d0]
    w = d0
    prev: dict = {"act": None, "center": False, "scaled": False}
    for b, block in enumerate(net.blocks):
        ops, w = _compile_seq(block.layers, w, widths[b], cfg, f"block {b + 1}", prev)
        blocks.append(ops)
        out_widths.append(w)

    per_seed = _memory_per_seed(blocks, n, d0, be.np_dtype.itemsize, grad)
    if max_memory is None:
        budget = _default_memory(be)
        chunk = max(1, min(seeds, budget // per_seed))
    else:
        budget = int(max_memory)
        if per_seed > budget:
            raise ValueError(f"simulate: max_memory={max_memory!r} bytes is below the estimated memory of "
                             f"one network ({per_seed} bytes); raise it or reduce width/depth/n")
        chunk = max(1, min(seeds, budget // per_seed))
    n_chunks = -(-seeds // chunk)

    flops = seeds * sum(op.flops(n) for ops in blocks for op in ops) * (3.0 if grad else 1.0)
    show = progress if progress is not None else (flops > _PROGRESS_FLOPS and _stderr_tty())
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=n_chunks * net.depth, desc="simulate", unit="block", file=sys.stderr)

    seqs = root.spawn(seeds)
    gram = np.empty((seeds, net.depth + 1, n, n))
    means = np.empty((seeds, net.depth + 1, n))
    gram[:, 0] = Xh @ Xh.T / d0
    means[:, 0] = Xh.mean(axis=1)
    gnorm = np.empty((seeds, net.depth + 1)) if grad else None
    ggram = np.empty((seeds, net.depth + 1, n, n)) if grad_gram else None

    workers = min(chunk, _cpu_count())
    pool = ThreadPoolExecutor(workers) if (be.kind != "cupy" and workers > 1) else None
    be.pool, be.workers = (pool, workers) if pool is not None else (None, 1)
    with contextlib.ExitStack() as stack:
        if pool is not None:
            stack.callback(pool.shutdown)
            if be.kind == "numpy":
                stack.enter_context(_blas_single_thread())
        if bar is not None:
            stack.callback(bar.close)
        for c in range(n_chunks):
            lo, hi = c * chunk, min(seeds, (c + 1) * chunk)
            streams = (_CupyStreams(seqs[lo:hi], be) if be.kind == "cupy"
                       else _HostStreams(seqs[lo:hi], be, pool))
            sinks = {"gram": _Sink(be, gram, lo, hi), "means": _Sink(be, means, lo, hi)}
            if grad:
                sinks["grad_norms"] = _Sink(be, gnorm, lo, hi)
            if grad_gram:
                sinks["grad_gram"] = _Sink(be, ggram, lo, hi)
            _run_chunk(blocks, Xh, be, streams, n, grad, sinks, progress=bar)
    be.pool = None

    info = {
        "width": width if isinstance(width, (int, np.integer)) else list(widths),
        "widths": out_widths,
        "backend": be.name,
        "dtype": dtype_name,
        "seeds": seeds,
        "seed": seed if not isinstance(seed, np.random.SeedSequence) else repr(seed),
        "chunk": chunk,
        "max_memory": budget,
        "dense_modes": list(cfg.modes),
        "gradients": grad,
        "memory_per_seed": per_seed,
    }
    return Trajectory(gram=gram, engine="simulate", network=net, means=means, grad_norms=gnorm,
                      grad_gram=ggram, info=info)


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _blas_single_thread():
    """Cap BLAS at one thread while the seeds are spread over our own threads (threadpoolctl, if
    installed)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _is_float_dtype_like(dtype) -> bool:
    try:
        return np.dtype(dtype).kind == "f"
    except TypeError:
        return False


def _stderr_tty() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def _input_gradient(net: Network, X, width=8, seed: int = 0, dtype: str = "float64", backend: Any = "numpy"):
    """(L, dL/dX) for network 0 of ``seed``: the readout output L = sum_a r_a . x_a^(L) and its gradient with
    respect to the input batch (explicit weights). For tests of the vector-Jacobian products."""
    if isinstance(net, (Layer, list, tuple)):
        net = Network(net)
    Xh = _check_X(X)
    n, d0 = Xh.shape
    widths = _check_widths(width, net.depth)
    be = _resolve_backend(backend, np.dtype(dtype).name)
    cfg = _Config(n, True, True, host_staged=be.kind == "other")
    blocks, w = [], d0
    prev: dict = {"act": None, "center": False, "scaled": False}
    for b, block in enumerate(net.blocks):
        ops, w = _compile_seq(block.layers, w, widths[b], cfg, f"block {b + 1}", prev)
        blocks.append(ops)
    seqs = np.random.SeedSequence(seed).spawn(1)
    L = net.depth
    sinks = {"gram": _Sink(be, np.empty((1, L + 1, n, n)), 0, 1),
             "means": _Sink(be, np.empty((1, L + 1, n)), 0, 1),
             "grad_norms": _Sink(be, np.empty((1, L + 1)), 0, 1)}
    res = _run_chunk(blocks, Xh, be, _HostStreams(seqs, be, None), n, True, sinks, want_input_grad=True)
    return float(res["loss"][0]), np.asarray(res["input_grad"][0], dtype=np.float64)


def simulate_outputs(net: Network, X, width=512, seeds: int = 32, backend: Any = "numpy", dtype: str = "float64",
                     seed=0, max_memory: float | None = None) -> np.ndarray:
    """The last block's features, (seeds, n, width_L) float64, of ``seeds`` random networks on the batch X.

    The same layer rules, random streams (network s uses ``SeedSequence(seed).spawn(seeds)[s]``), backends
    and seed-parallel products as `simulate`, but no n x n Gram per block: for many inputs (e.g. the 2000
    points of an initial-guessing-bias estimate, `meanfield.bias.simulate`) the Grams would cost more than
    the forward pass and (seeds, L+1, n, n) memory.
    """
    if not isinstance(net, Network):
        raise ValueError(f"simulate_outputs: net must be a meanfield.Network, got {type(net).__name__}")
    X = _check_X(X)
    seeds = int(seeds)
    if seeds < 1:
        raise ValueError(f"simulate_outputs: seeds={seeds} must be an integer >= 1")
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    if max_memory is None:
        max_memory = _default_memory(_resolve_backend(backend, dtype))
    elif not (isinstance(max_memory, (int, float)) and max_memory > 0):
        raise ValueError(f"simulate_outputs: max_memory={max_memory!r} must be a positive number of bytes")
    n, d0 = X.shape
    if dtype not in ("float32", "float64"):
        raise ValueError(f"simulate_outputs: dtype={dtype!r} must be 'float32' or 'float64'")
    be = _resolve_backend(backend, dtype)
    widths = _check_widths(width, net.depth)
    cfg = _Config(n, None, False, host_staged=be.kind == "other")
    blocks, w, wmax = [], d0, d0
    prev: dict = {"act": None, "center": False, "scaled": False}
    for b, block in enumerate(net.blocks):
        ops, w = _compile_seq(block.layers, w, widths[b], cfg, f"block {b + 1}", prev)
        blocks.append(ops)
        for op in ops:
            wmax = max(wmax, op.w_in, op.w_out)
    per_seed = be.np_dtype.itemsize * (8 * n * wmax + 2 * wmax * wmax) + 4096
    chunk = int(max(1, min(seeds, max_memory // per_seed)))
    seqs = root.spawn(seeds)
    out = np.empty((seeds, n, w))
    xp = be.xp
    workers = min(chunk, _cpu_count())
    pool = ThreadPoolExecutor(workers) if (be.kind != "cupy" and workers > 1) else None
    be.pool, be.workers = (pool, workers) if pool is not None else (None, 1)
    Xd = xp.expand_dims(be.asarray(X), axis=0)
    try:
        with contextlib.ExitStack() as stack:
            if pool is not None:
                stack.callback(pool.shutdown)
                if be.kind == "numpy":
                    stack.enter_context(_blas_single_thread())
            for lo in range(0, seeds, chunk):
                hi = min(seeds, lo + chunk)
                streams = (_CupyStreams(seqs[lo:hi], be) if be.kind == "cupy"
                           else _HostStreams(seqs[lo:hi], be, pool))
                rt = _Run(be, streams, n, False)
                h = Xd
                for ops in blocks:
                    h, _ = _forward_seq(ops, h, rt)
                h = xp.broadcast_to(h, (hi - lo, n, h.shape[-1]))
                out[lo:hi] = np.asarray(_to_host(h), dtype=np.float64)
    finally:
        be.pool = None
    return out
