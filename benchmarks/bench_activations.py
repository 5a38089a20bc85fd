"""Every built-in through `meanfield.propagate`, timed against ReLU + LayerNorm in the same run (issue 13 item 4).

    python benchmarks/bench_activations.py [--quick] [--only NAME ...] [--norms post,pre,none]

For each built-in activation: an MLP of ``depth`` blocks (Dense sigma_w = 1.5, sigma_b = 0.1, then the
activation with LayerNorm after it ("post"), before it ("pre"), or no norm ("none")) on n inputs with their
own norms (the same Gram for every run). Printed: the best wall time of a few runs (the first run, which
builds the activation's kernel tables, in brackets; every run starts without the per-variance memo of
coefficients, so a run never reuses the previous run's values) and the ratio to ReLU + LN post of the same run. The
aim of issue 13 is a ratio <= 3 for every cell; the defaults are n = 256 and 200 blocks (--quick: n = 64, 50
blocks). A cell whose probe (3 blocks) predicts more than --cap seconds (default 20) is not run in full: its
time is the cold probe plus the warm probe's per-block time for the other blocks, marked "extrap.".

Where the activation's kernel has no closed form, a LayerNorm makes every entry of a Gram share one
variance pair, so its kernel comes from one verified table (`hermite.tables`); with no norm each input
keeps its own variance and every entry takes the accurate path (proven Mehler series, quadrature near
rho = +-1), which is what the "none" column measures.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import hermite  # noqa: E402
import hermite.tables  # noqa: E402
import meanfield  # noqa: E402
from hermite import cores  # noqa: E402

PROBE = 3  # blocks of the probe run that decides whether a cell is run in full


def inputs(n: int, seed: int = 0, spread: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 2 * n)) * np.exp(spread * rng.standard_normal((n, 1)))
    return X @ X.T / (2 * n)


def forget(tables_too: bool) -> None:
    """Clear the per-variance memo of coefficients and moments (so repeated runs do not reuse a previous run's
    values) and, for a cold run, the kernel tables."""
    cores._MEMO.clear()
    if tables_too:
        hermite.tables._TABLES.clear()


def timed(fn, reps: int = 3, budget_s: float = 3.0):
    """(cold wall time: no tables, no memo; best warm wall time: tables kept, memo cleared) over up to
    ``reps`` calls within ``budget_s``."""
    forget(True)
    t0 = time.perf_counter()
    fn()
    times = [time.perf_counter() - t0]
    while len(times) < reps and sum(times) < budget_s:
        forget(False)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times[0], min(times[1:]) if len(times) > 1 else times[0]


def net_for(act: str, norm: str, depth: int):
    if norm == "none":
        return meanfield.mlp(depth, act, sigma_w=1.5, sigma_b=0.1)
    return meanfield.mlp(depth, act, norm="ln", placement=norm, sigma_w=1.5, sigma_b=0.1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--norms", default="post,pre,none")
    ap.add_argument("--cap", type=float, default=20.0, help="seconds: slower cells are extrapolated from a probe")
    args = ap.parse_args(argv)
    n, depth = (64, 50) if args.quick else (256, 200)
    norms = args.norms.split(",")
    K0 = inputs(n)
    meanfield.propagate(meanfield.mlp(1, "relu", norm="ln"), K0[:4, :4])  # warm-up: imports
    _, t_ref = timed(lambda: meanfield.propagate(net_for("relu", "post", depth), K0))
    print(f"n = {n}, {depth} blocks; baseline ReLU + LN post: {t_ref * 1e3:.1f} ms")
    print(f"{'activation':<12s}" + "".join(f"{'LN ' + m if m != 'none' else 'no norm':>30s}" for m in norms))
    names = args.only or [a for a in hermite.builtin_names() if a not in ("monomial", "hermite")]
    worst = 0.0
    for act in names:
        cells = []
        for norm in norms:
            net = net_for(act, norm, depth)
            try:
                probe = net_for(act, norm, PROBE)
                forget(True)
                t0 = time.perf_counter()
                meanfield.propagate(probe, K0)  # cold: builds the tables
                t_cold = time.perf_counter() - t0
                forget(False)
                t0 = time.perf_counter()
                meanfield.propagate(probe, K0)
                estimate = t_cold + (time.perf_counter() - t0) * (depth / PROBE - 1)
                if estimate > args.cap:  # too slow to run in full: the probe's per-block time times the depth
                    ratio = estimate / t_ref
                    worst = max(worst, ratio)
                    cells.append(f"~{estimate:8.1f} s (extrap.) {ratio:7.0f}x")
                    continue
                first, best = timed(lambda net=net: meanfield.propagate(net, K0))
            except ValueError as e:  # e.g. a derivative-free or divergent case: say so
                cells.append(f"{'(' + str(e)[:24] + ')':>30s}")
                continue
            ratio = best / t_ref
            worst = max(worst, ratio)
            cells.append(f"{best * 1e3:9.1f} ms [{first * 1e3:8.1f}] {ratio:6.1f}x")
        print(f"{act:<12s}" + "".join(f"{c:>30s}" for c in cells), flush=True)
    print(f"largest ratio to ReLU + LN post: {worst:.1f}x (aim: <= 3x)" if math.isfinite(worst) else "")


if __name__ == "__main__":
    main()
