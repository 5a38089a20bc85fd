"""Throughput and memory of the finite-width simulator (`meanfield.simulate`).

For n = 64 inputs, 16 seeds and a depth-20 ReLU MLP (input dimension = width, so every Dense layer is
width x width) at widths 512, 1024, 2048 in float64 and float32, this prints in one run:

* ``mm GF/s``: the best of a plain numpy batched matmul (16, 64, w) @ (16, w, w) measured now, with the
  default BLAS threads and with one BLAS thread per call (the better one is the reference peak);
* ``explicit GF/s``: a forward pass with explicit Gaussian weights, counting 2 n w^2 flops per Dense layer
  per seed, and its ratio to the matmul peak. Drawing the w^2 normals per layer is part of the time (the
  ``rng %`` column is the share of the forward time that a bare fill of the same normals takes);
* ``shortcut s``: the time of the exact shortcut (pre-activations sampled from an n x n square root of the
  Gram), its speed-up over explicit weights, and its "effective" GF/s with the same flop count;
* ``peak MB`` (tracemalloc) of the explicit run against ``need MB``, what must exist at once: 16 seeds x
  (w^2 weights + 2 n w activations: a layer's input and output) in the compute dtype, plus the returned
  float64 Grams and means (16 (depth + 1) n (n + 1) numbers).

The machine matters: on a CPU, explicit weights are bound by drawing the w^2 normals per layer (numpy's
ziggurat, a few ns per normal and thread, against 2 n = 128 flops of matmul per weight), so the
explicit forward reaches roughly 0.2-0.5 of the matmul peak while its non-RNG part (``ex-rng``) runs near
the peak; the exact shortcut avoids the w^2 draws altogether. Timings on shared cores are noisy: ``rng %``
above 100 or a ``-`` in ``ex-rng`` means the separate fill timing caught a busier moment.

Usage: ``python benchmarks/bench_simulate.py [--quick] [--widths 512 1024] [--depth 20] [--threads K]``.
``--quick`` runs widths 512 and 1024 at depth 6 with one repetition (under a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import meanfield  # noqa: E402
from meanfield.core.backends import resolve_backend  # noqa: E402
from meanfield.core.streams import HostStreams  # noqa: E402
from meanfield.finite import simulate  # noqa: E402

N, SEEDS = 64, 16


def best_time(fn, reps: int) -> float:
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def matmul_peak(w: int, dtype, reps: int) -> tuple[float, float]:
    """GFLOP/s of a plain numpy (16, 64, w) @ (16, w, w): (a) one np.matmul call with the default BLAS
    threads, (b) the stack split over one thread per CPU, each calling np.matmul with one BLAS thread
    (what the simulator does on numpy)."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((SEEDS, N, w)).astype(dtype)
    b = rng.standard_normal((SEEDS, w, w)).astype(dtype)
    out = np.empty((SEEDS, N, w), dtype=dtype)
    flops = 2.0 * SEEDS * N * w * w
    np.matmul(a, b)
    t_default = best_time(lambda: np.matmul(a, b, out=out), reps)
    k = min(_cpus(), SEEDS)
    bounds = [(i * SEEDS // k, (i + 1) * SEEDS // k) for i in range(k)]
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(k) as pool:
        def split():
            list(pool.map(lambda lh: np.matmul(a[lh[0]:lh[1]], b[lh[0]:lh[1]], out=out[lh[0]:lh[1]]), bounds))

        split()
        t_split = best_time(split, reps)
    return flops / t_default / 1e9, flops / t_split / 1e9


def rng_fill_time(w: int, dtype: str, reps: int) -> float:
    """Time to fill (16, w, w) normals with the simulator's per-network streams (threads as in a run)."""
    from concurrent.futures import ThreadPoolExecutor

    be = resolve_backend("numpy", dtype)
    seqs = np.random.SeedSequence(0).spawn(SEEDS)
    workers = min(SEEDS, _cpus())
    with ThreadPoolExecutor(workers) as pool:
        st = HostStreams(seqs, be, pool if workers > 1 else None)
        st.normal((w, w), reuse=True)
        return best_time(lambda: st.normal((w, w), reuse=True), reps)


def run(widths, depth: int, reps: int) -> None:
    print(f"simulate forward: n={N}, seeds={SEEDS}, depth={depth}, ReLU MLP, input dim = width; "
          f"{_cpus()} CPUs, numpy {np.__version__}")
    print("mm GF/s: plain np.matmul with default BLAS threads | split over CPUs, 1 BLAS thread each; "
          "ratio = explicit GF/s / best mm; ex-rng = the same without the time of a bare fill of the normals; "
          "vs d+mm = (bare fill of the normals + matmul at the best mm rate) / explicit time, the issue's "
          "'draw the weights + matmul' baseline (aim >= 0.8)")
    hdr = (f"{'dtype':>7} {'width':>5} | {'mm GF/s':>7} {'split':>7} | {'explicit s':>10} {'GF/s':>6} "
           f"{'ratio':>5} {'rng %':>5} {'ex-rng':>6} {'vs d+mm':>7} | "
           f"{'shortcut s':>10} {'speedup':>7} {'eff GF/s':>8} | "
           f"{'peak MB':>7} {'need MB':>7} {'x':>4}")
    print(hdr)
    print("-" * len(hdr))
    for dtype in ("float64", "float32"):
        item = np.dtype(dtype).itemsize
        for w in widths:
            X = np.random.default_rng(1).standard_normal((N, w))
            net = meanfield.mlp(depth, "relu", sigma_w=math.sqrt(2.0))
            flops = depth * SEEDS * 2.0 * N * w * w
            mm_def, mm_one = matmul_peak(w, dtype, reps + 1)
            peak = max(mm_def, mm_one)

            explicit = functools.partial(simulate, net, X, width=w, seeds=SEEDS, dtype=dtype,
                                         explicit_weights=True, progress=False)
            shortcut = functools.partial(simulate, net, X, width=w, seeds=SEEDS, dtype=dtype,
                                         explicit_weights=False, progress=False)

            explicit()  # warm-up (imports, thread pool, page faults)
            t_exp = best_time(explicit, reps)
            t_short = best_time(shortcut, reps + 1)
            t_rng = rng_fill_time(w, dtype, 2) * depth
            tracemalloc.start()
            tracemalloc.reset_peak()
            explicit()
            _, peak_bytes = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            need = SEEDS * (w * w + 2 * N * w) * item + SEEDS * (depth + 1) * N * (N + 1) * 8
            gf = flops / t_exp / 1e9
            ex_rng = (f"{flops / (t_exp - t_rng) / 1e9 / peak:6.2f}" if t_rng < 0.95 * t_exp else f"{'-':>6}")
            baseline = t_rng + flops / peak / 1e9  # draw the weights, then multiply at the measured peak
            print(f"{dtype:>7} {w:>5} | {mm_def:7.1f} {mm_one:7.1f} | {t_exp:10.3f} {gf:6.1f} "
                  f"{gf / peak:5.2f} "
                  f"{100 * t_rng / t_exp:5.0f} {ex_rng} {baseline / t_exp:7.2f} | "
                  f"{t_short:10.4f} {t_exp / t_short:7.1f} "
                  f"{flops / t_short / 1e9:8.0f} | {peak_bytes / 2**20:7.0f} {need / 2**20:7.0f} "
                  f"{peak_bytes / need:4.2f}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="widths 512, 1024 at depth 6, one repetition")
    ap.add_argument("--widths", type=int, nargs="+", default=None)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)
    widths = args.widths or ([512, 1024] if args.quick else [512, 1024, 2048])
    depth = args.depth or (6 if args.quick else 20)
    reps = args.reps or (1 if args.quick else 2)
    run(widths, depth, reps)


if __name__ == "__main__":
    main()
