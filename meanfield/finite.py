"""Finite-width engine: sample random networks of a given width, many seeds at once, and record the Gram
matrix of the batch after every block.

``simulate(net, X, width, seeds)`` reads the same `Network` description as the mean-field engine
(`meanfield.propagate`) and returns the same `Trajectory` type, with a leading seed axis:
``gram[s, l] = H H^T / width_l`` for the (n, width_l) features H of network s after block l (l = 0 is the
input X, whose Gram is X X^T / d0).

Each layer type holds its finite-width operation (`Layer.compile`, see `meanfield.layers`): this module
is the driver that compiles a network, chunks the seeds, runs the forward (and backward) pass and records the
results. A zero variance (a sample for LayerNorm/RMSNorm/Scale/GroupLayerNorm, a feature for BatchNorm and
weight-norm data init) maps to 0, never to NaN (`meanfield.core.linalg.standardize`).

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
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from meanfield.core.backends import (
    DTYPES,
    Backend,
    blas_single_thread,
    cpu_count,
    default_memory,
    is_float_dtype_like,
    resolve_backend,
    to_host,
)
from meanfield.core.linalg import gram, to_float64
from meanfield.core.ops import Compiler, Run, backward_seq, forward_seq, memory_per_seed
from meanfield.core.progress import bar as progress_bar
from meanfield.core.progress import interactive
from meanfield.core.streams import HostStreams, make_streams
from meanfield.core.validate import check_bool, check_choice, check_data, check_int, check_seed, check_widths
from meanfield.layers.base import Layer
from meanfield.network import Network
from meanfield.trajectory import Trajectory

__all__ = ["simulate", "simulate_outputs"]

PROGRESS_FLOPS = 1e10  # a run estimated above this many flops (about 2-3 s on one core) may show a progress bar


def _network(owner: str, net) -> Network:
    if isinstance(net, (Layer, list, tuple)):
        net = Network(net)
    if not isinstance(net, Network):
        raise ValueError(f"{owner}: net must be a meanfield.Network (or layers), got {type(net).__name__}")
    return net


def _compile(net: Network, n: int, d0: int, widths: list, explicit, grad: bool, be: Backend):
    """The blocks' operations, the output width of every block and the compiler (its dense modes)."""
    compiler = Compiler(n, explicit, grad, host_staged=be.kind == "other")
    blocks, out_widths, w = [], [d0], d0
    for b, block in enumerate(net.blocks):
        compiler.block_width = widths[b]
        ops, w = compiler.compile_seq(block.layers, w, f"block {b + 1}")
        blocks.append(ops)
        out_widths.append(w)
    return blocks, out_widths, compiler


def _check_memory(owner: str, max_memory) -> None:
    if max_memory is None:
        return
    try:
        mm = float(max_memory)
    except (TypeError, ValueError):
        mm = float("nan")
    if isinstance(max_memory, bool) or not math.isfinite(mm) or mm <= 0:
        raise ValueError(f"{owner}: max_memory={max_memory!r} must be a positive number of bytes or None")


def _available_memory(device: bool, be: Backend | None = None) -> int | None:
    """Bytes available now: free GPU memory (``device`` on cupy), else the host's MemAvailable
    (/proc/meminfo; free pages where that is missing); None where unknown (the check is then skipped)."""
    if device and be is not None and be.kind == "cupy":
        try:
            import cupy

            return int(cupy.cuda.runtime.memGetInfo()[0])
        except Exception:  # noqa: BLE001
            return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if b < 1024 or unit == "PiB":
            return f"{b:.3g} {unit}"
        b /= 1024
    return f"{b:.3g} PiB"


def _check_fits(owner: str, be: Backend, per_seed: int, results: int, what: str, *, seeds: int) -> None:
    """ValueError, before anything is allocated, when one network (``per_seed`` bytes, estimated) does not fit
    in the memory available on the device, or the ``results`` arrays do not fit in the host's."""
    avail = _available_memory(True, be)
    if avail is not None and per_seed > avail:
        raise ValueError(f"{owner}: {what} needs an estimated {_fmt_bytes(per_seed)} ({per_seed} bytes) for one "
                         f"network, more than the {_fmt_bytes(avail)} available; reduce width, depth or n")
    host = _available_memory(False)
    if host is not None and results > host:
        raise ValueError(f"{owner}: seeds={seeds} with {what} needs {_fmt_bytes(results)} ({results} bytes) for "
                         f"the results alone, more than the {_fmt_bytes(host)} available; reduce seeds or n")


@contextlib.contextmanager
def _seed_pool(be: Backend, chunk: int):
    """Threads that share the seeds of a chunk (numpy and other CPU namespaces), with BLAS capped at one
    thread meanwhile on numpy; yields the pool (None when one thread or cupy)."""
    workers = min(chunk, cpu_count())
    pool = ThreadPoolExecutor(workers) if (be.kind != "cupy" and workers > 1) else None
    be.pool, be.workers = (pool, workers) if pool is not None else (None, 1)
    try:
        with contextlib.ExitStack() as stack:
            if pool is not None:
                stack.callback(pool.shutdown)
                if be.kind == "numpy":
                    stack.enter_context(blas_single_thread())
            yield pool
    finally:
        be.pool, be.workers = None, 1


# ==========================================================================================================
# running one chunk of seeds
class _Sink:
    """Per-block results of a chunk, written into the host array ``host[lo:hi, l]``: at once on numpy,
    else kept on the device and transferred in one stacked copy at the end of the chunk."""

    def __init__(self, be: Backend, host: np.ndarray, lo: int, hi: int):
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
        stacked = to_host(self.be.xp.stack([self.items[i] for i in idx], axis=1))
        self.host[self.lo:self.hi, idx[0]:idx[-1] + 1] = stacked
        self.items = {}


def _run_chunk(blocks: list, X, be: Backend, streams, n: int, grad: bool, sinks: dict,
               progress=None, want_input_grad: bool = False) -> dict:
    """Forward (and backward) pass of one chunk of seeds; Grams, means, gradient norms and Grams go to
    ``sinks`` ("gram", "means", "grad_norms", "grad_gram"; index 0 of gram/means is filled by the caller)."""
    xp = be.xp
    rt = Run(be, streams, n, grad)
    s = streams.size
    h = xp.expand_dims(be.asarray(X), axis=0)  # (1, n, d0), broadcast against the seeds
    tapes = []
    for b, ops in enumerate(blocks):
        h, caches = forward_seq(ops, h, rt)
        sinks["gram"].put(b + 1, rt.gram_of(h))
        sinks["means"].put(b + 1, xp.mean(to_float64(xp, h), axis=-1))
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
            out["loss"] = to_host(xp.sum(xp.broadcast_to(h, (s, n, w_last)) * r, axis=(-2, -1)))
        g = xp.broadcast_to(r, (s, n, w_last))
        gram_sink = sinks.get("grad_gram")

        def record(index, g):
            w = g.shape[-1]
            g64 = to_float64(xp, g)
            sinks["grad_norms"].put(index, xp.sqrt(xp.sum(g64 * g64, axis=(-2, -1)) / (n * w)))
            if gram_sink is not None:
                gram_sink.put(index, gram(be, g))

        record(len(blocks), g)
        for b in range(len(blocks) - 1, -1, -1):
            g = backward_seq(blocks[b], tapes[b], g, rt)
            tapes[b] = None  # free the caches of this block
            g = xp.broadcast_to(g, (s, n, g.shape[-1]))
            record(b, g)
        if want_input_grad:
            out["input_grad"] = to_host(g)
    for sink in sinks.values():
        sink.finish()
    return out


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
    backend : "numpy", "cupy", "array_api_strict", "torch", an importable array-API module name, or a namespace
        module (wrapped with array_api_compat). Only array-API standard functions are used. "torch" runs on
        CUDA when torch sees a GPU, else on the CPU ("torch:cpu", "torch:cuda[:i]" choose); the random numbers
        are drawn on the host as for numpy, so the law is numpy's for the same description.
    dtype : "float32" or "float64"
        Compute dtype of the weights and activations; the results are float64 either way. The Grams, means
        and gradient norms are accumulated in float64 from the float32 numbers (their products are exact in
        float64), and the shortcut's square root of a Gram is taken in float64. Accuracy of float32, measured
        against the float64 forward of the same float32-representable weights (relu + LN, tanh, relu, gelu +
        BN; widths 256-2048): Gram entries within ~3e-7 of sqrt(K_aa K_bb) after one block, growing with depth
        through the network's own sensitivity to ~1e-6 (shortcut) and 1e-6-2e-5 (explicit weights) by block
        20 (``tests/test_simulate.py``). Far below the seed-to-seed spread of any width, but not float64's 1e-15.
    seed : int or numpy.random.SeedSequence
        Network s uses ``SeedSequence(seed).spawn(seeds)[s]``: reproducible, independent of chunking.
    max_memory : bytes or None
        Bound on the estimated peak memory of a chunk of seeds (default: a quarter of the available RAM,
        half of the free GPU memory for cupy). ValueError if one network alone needs more. Whatever
        max_memory, the estimate of one network is checked against the memory available now (free GPU
        memory on cupy, MemAvailable of the host otherwise), and the result arrays (seeds x (L+1) x n x n
        float64) against the host's, before anything is allocated: ValueError naming width, n, depth or
        seeds and the estimate (``width=10**12`` used to try to allocate 29 TiB).
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
        A tqdm bar over blocks x chunks; None shows it only for long runs (estimated > 1e10 flops) when
        stderr is a terminal or this runs in a notebook.

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
    >>> net = meanfield.mlp(3, "relu", norm="ln")
    >>> sim = meanfield.simulate(net, np.eye(4), width=256, seeds=8)
    >>> sim.gram.shape
    (8, 4, 4, 4)
    """
    net = _network("simulate", net)
    dtype_name = np.dtype(dtype).name if is_float_dtype_like(dtype) else None
    if dtype_name not in DTYPES:
        raise ValueError(f"simulate: dtype={dtype!r} must be one of {', '.join(DTYPES)}")
    Xh = check_data("simulate", X)
    n, d0 = Xh.shape
    widths = check_widths("simulate", width, net.depth)
    seeds = check_int("simulate", "seeds", seeds, lo=1)
    root = check_seed("simulate", seed)
    root = root if isinstance(root, np.random.SeedSequence) else np.random.SeedSequence(root)
    check_choice("simulate", "explicit_weights", explicit_weights, (None, True, False))
    gradients = check_bool("simulate", "gradients", gradients)
    grad_gram = check_bool("simulate", "grad_gram", grad_gram)
    check_choice("simulate", "progress", progress, (None, True, False))
    grad = bool(gradients or grad_gram)
    if grad and explicit_weights is False:
        raise ValueError("simulate: explicit_weights=False (the shortcut) cannot be combined with "
                         "gradients=True, which needs the weights themselves; use explicit_weights=None or "
                         "True")
    _check_memory("simulate", max_memory)
    be = resolve_backend(backend, dtype_name)
    blocks, out_widths, compiler = _compile(net, n, d0, widths, explicit_weights, grad, be)

    per_seed = memory_per_seed(blocks, n, d0, be.np_dtype.itemsize, grad)
    L = net.depth
    results = 8 * seeds * (L + 1) * (n * n * (2 if grad_gram else 1) + n + (1 if grad else 0))
    _check_fits("simulate", be, per_seed, results, f"width={width!r}, n={n}, depth={L}", seeds=seeds)
    if max_memory is None:
        budget = default_memory(be)
        chunk = max(1, min(seeds, budget // per_seed))
    else:
        budget = int(max_memory)
        if per_seed > budget:
            raise ValueError(f"simulate: max_memory={max_memory!r} bytes is below the estimated memory of "
                             f"one network ({per_seed} bytes); raise it or reduce width/depth/n")
        chunk = max(1, min(seeds, budget // per_seed))
    n_chunks = -(-seeds // chunk)

    flops = seeds * sum(op.flops(n) for ops in blocks for op in ops) * (3.0 if grad else 1.0)
    show = progress if progress is not None else (flops > PROGRESS_FLOPS and interactive())
    bar = progress_bar(n_chunks * net.depth, "simulate", "block") if show else None

    seqs = root.spawn(seeds)
    gram = np.empty((seeds, net.depth + 1, n, n))
    means = np.empty((seeds, net.depth + 1, n))
    with np.errstate(over="ignore"):
        G0 = Xh @ Xh.T / d0
    if not np.all(np.isfinite(G0)):
        raise ValueError(f"simulate: the input Gram X X^T / d overflows float64 (largest |X| = "
                         f"{float(np.max(np.abs(Xh))):.3g}); rescale X (the correlations do not depend on the scale)")
    gram[:, 0] = G0
    means[:, 0] = Xh.mean(axis=1)
    gnorm = np.empty((seeds, net.depth + 1)) if grad else None
    ggram = np.empty((seeds, net.depth + 1, n, n)) if grad_gram else None

    with _seed_pool(be, chunk) as pool, contextlib.ExitStack() as stack:
        if bar is not None:
            stack.callback(bar.close)
        for c in range(n_chunks):
            lo, hi = c * chunk, min(seeds, (c + 1) * chunk)
            streams = make_streams(seqs[lo:hi], be, pool)
            sinks = {"gram": _Sink(be, gram, lo, hi), "means": _Sink(be, means, lo, hi)}
            if grad:
                sinks["grad_norms"] = _Sink(be, gnorm, lo, hi)
            if grad_gram:
                sinks["grad_gram"] = _Sink(be, ggram, lo, hi)
            _run_chunk(blocks, Xh, be, streams, n, grad, sinks, progress=bar)

    if not np.all(np.isfinite(gram)):  # features beyond the dtype's range: say so, never return NaN or inf
        block = int(np.argwhere(~np.isfinite(gram).all(axis=(0, 2, 3)))[0][0])
        raise ValueError(f"simulate: the Gram after block {block} is not finite in {dtype_name} (largest |X| = "
                         f"{float(np.max(np.abs(Xh))):.3g}): the features overflow; rescale X (or use float64)")
    info = {
        "width": width if isinstance(width, (int, np.integer)) else list(widths),
        "widths": out_widths,
        "backend": be.name,
        "dtype": dtype_name,
        "seeds": seeds,
        "seed": seed if not isinstance(seed, np.random.SeedSequence) else repr(seed),
        "chunk": chunk,
        "max_memory": budget,
        "dense_modes": list(compiler.modes),
        "gradients": grad,
        "memory_per_seed": per_seed,
    }
    return Trajectory(gram=gram, engine="simulate", network=net, means=means, grad_norms=gnorm,
                      grad_gram=ggram, info=info)



def _input_gradient(net: Network, X, width=8, seed: int = 0, dtype: str = "float64", backend: Any = "numpy"):
    """(L, dL/dX) for network 0 of ``seed``: the readout output L = sum_a r_a . x_a^(L) and its gradient with
    respect to the input batch (explicit weights). For tests of the vector-Jacobian products."""
    net = _network("simulate", net)
    Xh = check_data("simulate", X)
    n, d0 = Xh.shape
    widths = check_widths("simulate", width, net.depth)
    be = resolve_backend(backend, np.dtype(dtype).name)
    blocks, _, _ = _compile(net, n, d0, widths, True, True, be)
    seqs = np.random.SeedSequence(seed).spawn(1)
    L = net.depth
    sinks = {"gram": _Sink(be, np.empty((1, L + 1, n, n)), 0, 1),
             "means": _Sink(be, np.empty((1, L + 1, n)), 0, 1),
             "grad_norms": _Sink(be, np.empty((1, L + 1)), 0, 1)}
    res = _run_chunk(blocks, Xh, be, HostStreams(seqs, be, None), n, True, sinks, want_input_grad=True)
    return float(res["loss"][0]), np.asarray(res["input_grad"][0], dtype=np.float64)


def simulate_outputs(net: Network, X, width=512, seeds: int = 32, backend: Any = "numpy", dtype: str = "float64",
                     seed=0, max_memory: float | None = None) -> np.ndarray:
    """The last block's features, (seeds, n, width_L) float64, of ``seeds`` random networks on the batch X.

    The same layer rules, random streams (network s uses ``SeedSequence(seed).spawn(seeds)[s]``), backends
    and seed-parallel products as `simulate`, but no n x n Gram per block: for many inputs (e.g. the 2000
    points of an initial-guessing-bias estimate, `meanfield.bias.simulate`) the Grams would cost more than
    the forward pass and (seeds, L+1, n, n) memory.
    """
    net = _network("simulate_outputs", net)
    X = check_data("simulate_outputs", X)
    seeds = check_int("simulate_outputs", "seeds", seeds, lo=1)
    root = check_seed("simulate_outputs", seed)
    root = root if isinstance(root, np.random.SeedSequence) else np.random.SeedSequence(root)
    check_choice("simulate_outputs", "dtype", dtype, DTYPES)
    _check_memory("simulate_outputs", max_memory)
    be = resolve_backend(backend, dtype)
    if max_memory is None:
        max_memory = default_memory(be)
    n, d0 = X.shape
    widths = check_widths("simulate_outputs", width, net.depth)
    blocks, out_widths, _ = _compile(net, n, d0, widths, None, False, be)
    w = out_widths[-1]
    wmax = max([d0] + [max(op.w_in, op.w_out) for ops in blocks for op in ops])
    per_seed = be.np_dtype.itemsize * (8 * n * wmax + 2 * wmax * wmax) + 4096
    _check_fits("simulate_outputs", be, memory_per_seed(blocks, n, d0, be.np_dtype.itemsize, False), 8 * seeds * n * w,
                f"width={width!r}, n={n}, depth={net.depth}", seeds=seeds)
    chunk = int(max(1, min(seeds, max_memory // per_seed)))
    seqs = root.spawn(seeds)
    out = np.empty((seeds, n, w))
    xp = be.xp
    Xd = xp.expand_dims(be.asarray(X), axis=0)
    with _seed_pool(be, chunk) as pool:
        for lo in range(0, seeds, chunk):
            hi = min(seeds, lo + chunk)
            rt = Run(be, make_streams(seqs[lo:hi], be, pool), n, False)
            h = Xd
            for ops in blocks:
                h, _ = forward_seq(ops, h, rt)
            h = xp.broadcast_to(h, (hi - lo, n, h.shape[-1]))
            out[lo:hi] = np.asarray(to_host(h), dtype=np.float64)
    return out
