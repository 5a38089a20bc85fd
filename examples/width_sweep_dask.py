"""A width sweep on a Dask cluster: how the finite-width isometry gap approaches the mean-field one.

Runs `meanfield.sweep.run_sweep` on a `dask.distributed.LocalCluster` that the sweep starts and stops
itself (``local_cluster=True``), or on a running cluster (``--scheduler tcp://host:8786``). Each point
(a network and an engine, or a network, an engine and a width) is one task; its result is written to
``OUT/points/<id>.csv`` as soon as it finishes, so an interrupted run resumes where it stopped.

At finite width n / width sets a floor under the isometry gap that the mean-field (infinite-width)
recursion does not have; the table printed at the end shows the gap after the last block per width,
and the figure plots it against 1/width.

    pip install "meanfield-hermite[dask]"
    python examples/width_sweep_dask.py [--out results/width_sweep_dask] [--workers 2] [--scheduler ADDR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from meanfield.sweep import Sweep, load_errors, run_sweep

SWEEP = Sweep(
    grid={"activation": ["relu", "tanh"], "placement": ["pre", "post"], "engine": ["meanfield", "simulate"],
          "width": [32, 64, 128, 256, 512]},
    fixed={"norm": "ln", "depth": 30, "n": 8, "input_dim": 64, "input_correlation": 0.5, "seeds": 24},
    measures=("isometry_gap", "mean_correlation"),
)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/width_sweep_dask")
    ap.add_argument("--workers", type=int, default=2, help="workers of the local cluster (default 2)")
    ap.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    args = ap.parse_args(argv)

    t0 = time.time()
    if args.scheduler:
        df = run_sweep(SWEEP, args.out, scheduler=args.scheduler)
    else:
        df = run_sweep(SWEEP, args.out, local_cluster=True, workers=args.workers)
    print(f"{len(SWEEP.points())} points, {len(df)} rows in {time.time() - t0:.1f} s -> {Path(args.out).resolve()}")
    for err in load_errors(args.out):
        print("failed:", err["point"], err["error"].splitlines()[0])

    last = df[df["layer"] == df["depth"]]
    mf = last[last["engine"] == "meanfield"].set_index(["activation", "placement"])["isometry_gap"]
    sim = last[last["engine"] == "simulate"].pivot_table(index=["activation", "placement"], columns="width",
                                                         values="isometry_gap_median")
    sim.insert(0, "mean field", mf)
    print("\nisometry gap after the last block (simulation: median over seeds)")
    print(sim.to_string(float_format=lambda v: f"{v:.3g}"))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from meanfield.plot import paper_style

    with paper_style():
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for (act, placement), row in sim.iterrows():
            widths = [w for w in row.index if w != "mean field"]
            (line,) = ax.loglog([1 / w for w in widths], row[widths].to_numpy(), marker="o",
                                label=f"{act}, LN {placement}")
            ax.axhline(row["mean field"], color=line.get_color(), linestyle="--", linewidth=0.8)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("1 / width")
        ax.set_ylabel("isometry gap after the last block")
        ax.legend(frameon=False)
        path = Path(args.out) / "gap_vs_width.png"
        fig.savefig(path)
    print(f"figure -> {path.resolve()}  (dashed: mean field)")


if __name__ == "__main__":  # required: Dask starts its workers as fresh processes that import this file
    main()
