"""Cold start, each figure in a fresh process (issue 13 item 5).

    python benchmarks/bench_cold_start.py [--reps 5] [--only NAME ...]

1. ``import hermite, meanfield`` over ``import numpy, scipy`` (median of ``reps`` fresh interpreters each;
   aim <= 0.3 s);
2. the first ``meanfield.propagate`` of a 50-block network, Dense(1.5, 0.1) -> activation -> LayerNorm,
   on n = 64 inputs, in a fresh process, for every built-in (aim <= 1 s: it includes building the
   activation's kernel tables and any compilation);
3. ``meanfield --help`` (the console script's module run as ``python -m meanfield.cli --help``; aim <= 0.5 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def wall(code: str | None = None, args: list | None = None) -> float:
    """Wall time of a fresh interpreter running ``code`` (or the given arguments)."""
    cmd = [sys.executable] + (["-c", code] if code is not None else args)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def inner(code: str) -> float:
    """A time printed by a fresh interpreter (the part of ``code`` it measures itself)."""
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


FIRST_PROPAGATE = """
import time, numpy as np, meanfield
rng = np.random.default_rng(0)
X = rng.standard_normal((64, 128)) * np.exp(0.5 * rng.standard_normal((64, 1)))
K0 = X @ X.T / 128
net = meanfield.mlp(50, {act!r}, norm="ln", placement="post", sigma_w=1.5, sigma_b=0.1)
t0 = time.perf_counter()
meanfield.propagate(net, K0)
print(time.perf_counter() - t0)
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args(argv)
    base = statistics.median(wall("import numpy, scipy") for _ in range(args.reps))
    full = statistics.median(wall("import numpy, scipy, hermite, meanfield") for _ in range(args.reps))
    print(f"import numpy, scipy: {base:.3f} s; + hermite, meanfield: {full:.3f} s; "
          f"difference {full - base:.3f} s (aim <= 0.3 s)")
    helpt = statistics.median(wall(args=["-m", "meanfield.cli", "--help"]) for _ in range(args.reps))
    print(f"meanfield --help: {helpt:.3f} s (aim <= 0.5 s)")
    import hermite

    names = args.only or [a for a in hermite.builtin_names() if a not in ("monomial", "hermite")]
    print("first propagate in a fresh process (50 blocks, LN post, n = 64; aim <= 1 s):")
    worst = 0.0
    for act in names:
        t = inner(FIRST_PROPAGATE.format(act=act))
        worst = max(worst, t)
        print(f"  {act:<12s} {t * 1e3:8.1f} ms", flush=True)
    print(f"slowest: {worst:.3f} s")


if __name__ == "__main__":
    main()
