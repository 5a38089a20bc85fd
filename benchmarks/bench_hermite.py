"""Benchmark of the hermite package: coefficients against scipy.integrate.quad, kernel throughput, and the
cost of the first kernel call (numba compilation, if numba is used).

    python benchmarks/bench_hermite.py [--quick]

1. The first kernel call of each activation in this process (numba compilation, quadrature set-up), timed
   before any other kernel call.
2. Coefficients c_0..c_100 at input variance q of tanh, gelu, relu and a user callable x tanh(x), with
   `hermite.coefficients` (a fresh q for every repetition, so no cached quadrature rule is reused) against
   scipy.integrate.quad one coefficient at a time at the same accuracy: each integral
   int f(sqrt(q) z) He_k(z) phi(z) dz / sqrt(k!) on [-16, 16] (the integrand is below |f| exp(-z^2/4)
   there), split at the kinks, epsabs = epsrel = 1e-13. The largest difference between the two is printed
   next to the ratio of times.
3. Kernel evaluations per second for relu, gelu, hardtanh, relu6, tanh, sigmoid, silu, elu (``--kernels``;
   ``--only-kernels`` skips parts 1 and 2): 1e5 random (rho, q1, q2), rho uniform in
   [-1, 1], q1 and q2 log-uniform in [0.25, 4] (all distinct), and a Gram-matrix case: 64 distinct q and
   all 64 x 64 pairs, with rho the correlations of 64 random points. A kernel too slow to finish 1e5
   evaluations in the time budget is measured on a prefix and reported as such.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings

import numpy as np
from scipy import integrate, special

import hermite

Q = 1.0
K = 100
ZMAX = 16.0


def _now():
    return time.perf_counter()


# ------------------------------------------------------------------------------------------------
# scalar functions for the quad baseline (the fastest a quad user would write)
def _gelu(x):
    return 0.5 * x * math.erfc(-x / math.sqrt(2.0))


def user_fn(x):
    return x * np.tanh(x)


BASELINE = {
    "tanh": (math.tanh, ()),
    "gelu": (_gelu, ()),
    "relu": (lambda x: x if x > 0 else 0.0, (0.0,)),
    "x*tanh(x) (callable)": (user_fn, ()),
}


def quad_coefficients(f, kinks, K, q, ks=None):
    sq = math.sqrt(q)
    pts = sorted({-ZMAX, ZMAX, *(t / sq for t in kinks if abs(t / sq) < ZMAX)})
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        for k in ks if ks is not None else range(K + 1):
            norm = 1.0 / math.sqrt(2 * math.pi * math.factorial(k))

            def g(z, k=k, norm=norm):
                return f(sq * z) * special.eval_hermitenorm(k, z) * math.exp(-0.5 * z * z) * norm

            out[k] = sum(integrate.quad(g, a, b, epsabs=1e-13, epsrel=1e-13, limit=500)[0]
                         for a, b in zip(pts[:-1], pts[1:]))
    return out


def _clear_rule_cache():
    """Drop hermite's cached quadrature rules (internal; skipped if the cache is renamed)."""
    from hermite import quadrature

    cache = getattr(quadrature, "_RULES", None)
    if hasattr(cache, "clear"):
        cache.clear()
        return True
    return False


def bench_coefficients(quick: bool):
    print(f"2. Hermite coefficients c_0..c_{K} at q = {Q:g}: hermite.coefficients vs scipy.integrate.quad, "
          "one coefficient at a time")
    reps = 5 if quick else 20
    ks = list(range(0, K + 1, 7)) if quick else None  # both parities
    print(f"   {'activation':<22}{'cold [ms]':>11}{'warm [ms]':>11}{'quad [ms]':>11}{'quad/cold':>11}"
          f"{'quad/warm':>11}{'max |diff|':>12}")
    for label, (f, kinks) in BASELINE.items():
        act = hermite.activation(user_fn, name="x*tanh(x)") if "callable" in label else hermite.activation(label)
        cleared = _clear_rule_cache()
        t = _now()
        c = hermite.coefficients(act, K, Q)
        t_cold = _now() - t
        times = []
        for i in range(reps):
            qi = Q * (1 + 1e-9 * (i + 1))  # a fresh variance each time (rules are reused where valid)
            t = _now()
            hermite.coefficients(act, K, qi)
            times.append(_now() - t)
        t_warm = float(np.median(times))
        t = _now()
        ref = quad_coefficients(f, kinks, K, Q, ks)
        t_q = _now() - t
        if ks is not None:  # extrapolate the mean per-coefficient cost to all K + 1 orders
            t_q *= (K + 1) / len(ks)
        diff = max(abs(c[k] - v) for k, v in ref.items())
        print(f"   {label:<22}{1e3 * t_cold:>11.2f}{1e3 * t_warm:>11.2f}{1e3 * t_q:>11.0f}{t_q / t_cold:>10.0f}x"
              f"{t_q / t_warm:>10.0f}x{diff:>12.1e}")
    notes = ["   cold: quadrature rule built in the call" + ("" if cleared else " (could not clear the cache)"),
             "   warm: median over fresh variances, rule reused"]
    if ks is not None:
        notes.append(f"   quad: --quick, timed on {len(ks)} orders (0, 7, ..., 98) and extrapolated to {K + 1}")
    print("\n".join(notes))
    print()


# ------------------------------------------------------------------------------------------------
def bench_first_calls():
    print("1. First kernel call in this process (numba compilation if used, quadrature set-up), then warm:")
    before = "numba" in sys.modules
    for name in ("relu", "tanh", "gelu"):
        t = _now()
        hermite.kernel(name, 0.3, 1.0, 2.0)
        first = _now() - t
        t = _now()
        hermite.kernel(name, 0.31, 1.0, 2.0)
        warm = _now() - t
        print(f"   {name:<6} first call {1e3 * first:9.1f} ms, next call {1e3 * warm:8.2f} ms")
    # the Mehler series sums large batches (>= 2048 entries) in a parallel numba kernel: time its first
    # call (compilation, or loading from numba's on-disk cache) separately
    import numpy as _np

    rng = _np.random.default_rng(1)
    rho = rng.uniform(-0.9, 0.9, 4096)
    t = _now()
    hermite.kernel("tanh", rho, 1.0, 2.0)
    first = _now() - t
    t = _now()
    hermite.kernel("tanh", rho * 0.99, 1.0, 2.0)
    warm = _now() - t
    print(f"   tanh on 4096 entries: first call {1e3 * first:9.1f} ms, next call {1e3 * warm:8.2f} ms")
    used = "numba" in sys.modules
    if used and not before:
        print("   numba: imported by the first large kernel call; its first-call excess is the compilation "
              "of the Mehler-sum kernel (or loading it from numba's on-disk cache)")
    elif used:
        print("   numba: already imported before the kernel calls")
    else:
        print("   numba: not used by hermite.kernel (nothing to compile)")
    print()


def _rate(name, rho, q1, q2, budget):
    """Evaluations per second on rho, q1, q2, on a prefix when the whole would exceed the budget."""
    n = rho.size
    m = min(n, 20000)
    # warm-up on an independent draw of the same law (quadrature rules, numba), which also estimates the
    # time of the full run
    perm = np.random.default_rng(12345).permutation(n)[:m]
    t = _now()
    hermite.kernel(name, np.roll(rho, 1)[perm], np.roll(q1, 7)[perm] * 1.0001, np.roll(q2, 3)[perm] * 0.9999)
    dt = _now() - t
    if m < n and dt * n / m > budget:
        m = max(m, int(m * budget / max(dt, 1e-9) / 2))
        m = min(m, n)
    else:
        m = n
    t = _now()
    out = hermite.kernel(name, rho[:m], q1[:m], q2[:m])
    dt = _now() - t
    assert np.all(np.isfinite(out))
    return m / dt, m


KERNELS = ("relu", "gelu", "hardtanh", "relu6", "tanh", "sigmoid", "silu", "elu")


def bench_kernels(quick: bool, names=KERNELS):
    n = 10_000 if quick else 100_000
    budget = 10.0 if quick else 60.0
    rng = np.random.default_rng(0)
    rho = rng.uniform(-1.0, 1.0, n)
    q1 = np.exp(rng.uniform(math.log(0.25), math.log(4.0), n))
    q2 = np.exp(rng.uniform(math.log(0.25), math.log(4.0), n))
    X = rng.standard_normal((64, 32))
    G = X @ X.T / 32
    d = np.sqrt(np.diag(G))
    R = np.clip(G / np.outer(d, d), -1.0, 1.0)
    qg = np.exp(rng.uniform(math.log(0.25), math.log(4.0), 64))
    print(f"3. Kernel evaluations per second (after warm-up): {n:.0e} random (rho, q1, q2); "
          "a 64 x 64 Gram matrix (64 distinct q)")
    print(f"   {'activation':<12}{'random [eval/s]':>18}{'Gram 64x64 [eval/s]':>22}{'Gram [ms]':>11}")
    for name in names:
        rate, m = _rate(name, rho, q1, q2, budget)
        hermite.kernel(name, R, qg[:, None] * 1.000001, qg[None, :] * 1.000001)  # warm with other q
        reps = 3
        t = _now()
        for _ in range(reps):
            hermite.kernel(name, R, qg[:, None], qg[None, :])
        tg = (_now() - t) / reps
        note = "" if m == n else f"   (measured on {m} of {n}: over the {budget:g} s budget)"
        print(f"   {name:<12}{rate:>18.3g}{R.size / tg:>22.3g}{1e3 * tg:>11.1f}{note}")
    print()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Benchmark of hermite.coefficients and hermite.kernel")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few seconds)")
    ap.add_argument("--kernels", nargs="*", default=list(KERNELS), help="activations of part 3")
    ap.add_argument("--only-kernels", action="store_true", help="run part 3 only")
    args = ap.parse_args(argv)
    print(f"hermite {hermite.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
    print()
    t0 = _now()
    if not args.only_kernels:
        bench_first_calls()
        bench_coefficients(args.quick)
    bench_kernels(args.quick, args.kernels)
    print(f"total {_now() - t0:.1f} s")


if __name__ == "__main__":
    main()
