"""Validation of the finite-width theory (``meanfield.propagate(net, K0, width=W)``) against the simulator.

For each network and width it prints the predicted and the simulated variance of a Gram entry, their ratio,
the worst ratio over every entry of every block, and the predicted and simulated mean isometry gap; then, per
network, the slope of the residual |Var_sim - Var_theory| against the width on a log-log scale (first order
in 1/W leaves a residual O(1/W^2): slope -2; ``--order 2``, the default, carries the compounding O(1/W^2)
terms), and, with ``--breakdown``, the depth at which the theory of the chosen order stops being enough (the
relative error of the predicted variances passes 10%).

    python benchmarks/validate_fluctuations.py                 # the full table (about an hour on 2 cores)
    python benchmarks/validate_fluctuations.py --quick         # a few minutes
    python benchmarks/validate_fluctuations.py --breakdown     # the breakdown depth study (--order 1 or 2)

Seeds: the relative standard error of a sample variance is about sqrt(2 / seeds) (sqrt((m4 - s^4) / seeds)
/ s^2 exactly, as reported), so 5000 seeds give 2%.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

import meanfield

NETS = {
    "relu": dict(activation="relu", sigma_w=2**0.5),
    "tanh": dict(activation="tanh", sigma_w=1.0),
    "gelu": dict(activation="gelu", sigma_w=1.5),
    "relu+LN post": dict(activation="relu", norm="ln", placement="post"),
    "relu+LN pre": dict(activation="relu", norm="ln", placement="pre"),
    "tanh+LN post": dict(activation="tanh", norm="ln", placement="post"),
    "tanh+LN pre": dict(activation="tanh", norm="ln", placement="pre"),
    "gelu+LN post": dict(activation="gelu", norm="ln", placement="post"),
    "gelu+LN pre": dict(activation="gelu", norm="ln", placement="pre"),
    "relu+BN pre": dict(activation="relu", norm="bn", placement="pre"),
}


def inputs(n: int = 4, d: int = 16, seed: int = 0, collinear: bool = True) -> np.ndarray:
    """n Gaussian inputs of unit mean square; with ``collinear`` one pair nearly collinear (correlation about
    0.95, the stringent case: the second-order terms grow near collinearity)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if collinear:
        X[1] = X[0] + 0.3 * X[1]
    return X * math.sqrt(d) / np.linalg.norm(X, axis=1, keepdims=True)


def sample_var(G: np.ndarray):
    """Variance over seeds (axis 0) and its standard error sqrt((m4 - s^4) / S)."""
    S = G.shape[0]
    c = G - G.mean(axis=0)
    v = np.mean(c * c, axis=0) * S / (S - 1)
    return v, np.sqrt(np.maximum(np.mean(c**4, axis=0) - v * v, 0.0) / S)


def compare(net, X, widths, seeds, seed=1, order=2):
    """Rows of the table for one network: predicted and simulated variances at every width."""
    t0 = time.perf_counter()
    theory = meanfield.fluctuations.propagate_finite(net, X=X, width=list(widths), order=order)
    t_theory = time.perf_counter() - t0
    rows = []
    n = X.shape[0]
    iu, ju = np.triu_indices(n)
    for W in widths:
        t0 = time.perf_counter()
        sim = meanfield.simulate(net, X, width=W, seeds=seeds, seed=seed)
        t_sim = time.perf_counter() - t0
        th = theory[W]
        pv = np.einsum("labab->lab", th.gram_cov)[1:, iu, ju]
        v, se = sample_var(sim.gram[:, 1:, iu, ju])
        live = pv > 1e-12 * pv.max()
        ratio = np.where(live, pv / np.where(v > 0, v, 1.0), np.nan)
        worst = np.nanargmax(np.abs(np.log(np.where(live, ratio, 1.0))))
        k = np.unravel_index(worst, ratio.shape)
        off = int(np.nonzero(iu != ju)[0][0])             # the entry K_01 (the nearly collinear pair)
        # residual of the last block, averaged over the live entries: (Var_sim - Var_th) / Var_th
        rel = (v[-1] - pv[-1])[live[-1]] / pv[-1][live[-1]]
        rel_se = np.sqrt(np.mean((se[-1][live[-1]] / pv[-1][live[-1]]) ** 2) / rel.size)
        gap_sim = sim.isometry_gap()[:, -1]
        rows.append(dict(width=W, var_pred=float(pv[-1, off]), var_sim=float(v[-1, off]), var_se=float(se[-1, off]),
                         ratio=float(ratio[-1, off]), worst_ratio=float(ratio[k]),
                         worst_z=float((pv[k] - v[k]) / se[k]), worst_block=int(k[0]) + 1,
                         worst_se=float(se[k] / v[k]),
                         rel_residual=float(rel.mean()), rel_residual_se=float(rel_se),
                         gap_pred=float(th.expected("isometry_gap")[-1]), gap_sim=float(np.mean(gap_sim)),
                         gap_sim_se=float(np.std(gap_sim) / math.sqrt(seeds)),
                         gap_meanfield=float(meanfield.measures.isometry_gap(th.info["meanfield_gram"][-1])),
                         t_theory=t_theory, t_sim=t_sim))
    return rows


def slope(rows, min_width=0):
    """Weighted least-squares slope of log |residual| (absolute: relative residual x predicted variance)
    against log W, over the widths >= min_width where the residual is at least 2 standard errors;
    (slope, stderr, used)."""
    use = [r for r in rows if abs(r["rel_residual"]) > 2 * r["rel_residual_se"] and r["width"] >= min_width]
    if len(use) < 2:
        return math.nan, math.nan, len(use)
    x = np.log([r["width"] for r in use])
    # absolute residual of the variance: relative residual times the predicted variance (~ 1/W)
    y = np.log([abs(r["rel_residual"]) * r["var_pred"] for r in use])
    w = np.array([(abs(r["rel_residual"]) / r["rel_residual_se"]) ** 2 for r in use])
    A = np.stack([np.ones_like(x), x], axis=1)
    cov = np.linalg.inv(A.T @ (A * w[:, None]))
    beta = cov @ A.T @ (w * y)
    resid = y - A @ beta
    scale = max(float(np.sum(w * resid**2) / max(len(use) - 2, 1)), 1.0)
    return float(beta[1]), float(np.sqrt(cov[1, 1] * scale)), len(use)


def table(names, widths, depth, seeds, out=None, collinear=True, order=2):
    X = inputs(collinear=collinear)
    results = {}
    kind = "one nearly collinear pair" if collinear else "generic Gaussian inputs"
    print(f"n = {X.shape[0]} inputs ({kind}), depth {depth}, {seeds} seeds per width, theory order {order}; "
          "entry K_01 at the last block")
    print(f"{'network':>14} {'W':>5} {'Var pred':>10} {'Var sim':>10} {'+-':>8} {'ratio':>6} | {'worst':>6} "
          f"{'(z, blk)':>10} | {'gap pred':>9} {'gap sim':>9} {'+-':>7} {'gap MF':>9}")
    for name in names:
        net = meanfield.mlp(depth, **NETS[name])
        rows = compare(net, X, widths, seeds, order=order)
        results[name] = rows
        for r in rows:
            print(f"{name:>14} {r['width']:>5} {r['var_pred']:10.3e} {r['var_sim']:10.3e} {r['var_se']:8.1e} "
                  f"{r['ratio']:6.3f} | {r['worst_ratio']:6.3f} ({r['worst_z']:+4.1f},{r['worst_block']:>3}) | "
                  f"{r['gap_pred']:9.3e} {r['gap_sim']:9.3e} {r['gap_sim_se']:7.1e} {r['gap_meanfield']:9.3e}",
                  flush=True)
    print("\nResidual |Var_sim - Var_theory| (last block, averaged over entries) against the width: log-log slope "
          "(first order: -2), over all widths and over W >= 256")
    for name, rows in results.items():
        parts = []
        for lo in (0, 256):
            s, se, k = slope(rows, lo)
            parts.append(f"{s:+.2f} +- {se:.2f} ({k} widths)" if k >= 2 else f"n/a ({k} significant widths)")
        print(f"{name:>14}: " + ";  ".join(parts))
    if out:
        with open(out, "w") as fh:
            json.dump(results, fh, indent=1)


#: the largest relative variance of a sample's norm at which `breakdown` compares sample variances
CHECKABLE = 0.5


def breakdown(widths=(64, 128, 256), depth=96, seeds=3000, order=2, nets=None):
    """The first block where the predicted variances are off by more than 10% (beyond 2 standard errors),
    among the blocks a sample variance can check: where a sample's norm K_aa has a relative variance above
    `CHECKABLE` (ReLU without a norm: (1 + 5/W)^L - 1), its law is close to log-normal and a few thousand seeds
    underestimate its variance and its standard error alike, so deeper blocks are not compared."""
    X = inputs()
    n = X.shape[0]
    iu, ju = np.triu_indices(n)
    print(f"Breakdown of the order-{order} theory: first block where max |Var_theory / Var_sim - 1| > 10% + 2 se "
          f"({seeds} seeds; only blocks where Var K_aa / K_aa^2 <= {CHECKABLE})")
    for name in nets or ("relu", "tanh", "relu+LN post", "relu+LN pre", "tanh+LN post", "gelu+LN post"):
        net = meanfield.mlp(depth, **NETS[name])
        th = meanfield.fluctuations.propagate_finite(net, X=X, width=list(widths), order=order)
        for W in widths:
            sim = meanfield.simulate(net, X, width=W, seeds=seeds, seed=3)
            pv = np.einsum("labab->lab", th[W].gram_cov)[1:, iu, ju]
            diag = np.einsum("laa->la", th[W].gram)[1:]
            rel = np.max(np.einsum("laaaa->la", th[W].gram_cov)[1:] / diag**2, axis=1)
            checkable = int(np.sum(np.cumprod(rel <= CHECKABLE)))
            v, se = sample_var(sim.gram[:, 1:, iu, ju])
            live = pv > 1e-12 * pv.max()
            err = np.where(live, np.abs(pv - v) - 2 * se, 0.0) / np.where(v > 0, v, 1.0)
            bad = np.nonzero(np.max(err[:checkable], axis=1) > 0.10)[0]
            first = int(bad[0]) + 1 if bad.size else None
            tail = "" if checkable == depth else f"; blocks beyond {checkable} not checkable"
            print(f"{name:>14} W={W:>4}: " + (f"block {first} (depth/W = {first / W:.2f})" if first else
                                               f"within 10% up to block {checkable} (depth/W = "
                                               f"{checkable / W:.2f}){tail}"), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 networks, widths 64-1024, 1000 seeds, depth 10")
    ap.add_argument("--breakdown", action="store_true", help="the depth at which first order stops being enough")
    ap.add_argument("--seeds", type=int, default=5000)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096])
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--generic", action="store_true", help="generic inputs instead of a nearly collinear pair")
    ap.add_argument("--out", default=None, help="write the rows as JSON")
    ap.add_argument("--order", type=int, default=2, choices=(1, 2),
                    help="1: first order in 1/W; 2: plus the compounding second-order terms (the default)")
    a = ap.parse_args()
    if a.breakdown:
        breakdown(order=a.order)
        return
    if a.quick:
        table(["relu", "relu+LN post", "tanh+LN pre"], [64, 256, 1024], 10, 1000, a.out, not a.generic, a.order)
        return
    table(a.nets, a.widths, a.depth, a.seeds, a.out, not a.generic, a.order)


if __name__ == "__main__":
    main()
