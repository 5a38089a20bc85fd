"""How fast does LayerNorm(post) make a batch isometric? Predicted vs fitted per-block rates.

For each activation: beta0 = c_1^2 / sum_{k>=1} c_k^2 and beta_sigma = 2 - beta0 (Joudaki, Daneshmand and
Bach, NeurIPS 2023), the guaranteed per-block factor of the potential (1/beta_sigma), the predicted
asymptotic factors near isometry (beta0 for the potential, beta0^2 for the isometry gap), and the factors
fitted on the mean-field trajectory of ``mlp(depth, act, norm="ln", placement="post")``.

The fits approach the predictions as the correlations shrink: for slowly contracting activations
(sigmoid, SELU) blocks 20..40 are not yet asymptotic (the potential r/(1 - r) falls faster than r while r is
not small, and the higher Hermite orders slow the gap), so pass a larger depth to see them converge.

Run: python examples/isometry_rate.py [depth]
"""

from __future__ import annotations

import sys

import numpy as np

import meanfield
from meanfield import rates

ACTIVATIONS = ["relu", "tanh", "sigmoid", "silu", "elu", "selu", "gelu", "sin", "exp", "abs"]


def main(depth: int = 40) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 16))  # a batch of 4 inputs
    print(f"LayerNorm(post) MLP, depth {depth}, batch of {X.shape[0]}; fits over blocks {depth // 2}..{depth}")
    print(f"{'activation':>10} {'beta0':>7} {'beta_sigma':>10} {'1/b_sigma':>9} | {'potential':>9} {'fitted':>8}"
          f" | {'gap':>7} {'fitted':>8}")
    for name in ACTIVATIONS:
        s = rates.summary(name)
        traj = meanfield.propagate(meanfield.mlp(depth, name, norm="ln"), X=X)
        fits = []
        for measure in ("potential", "isometry_gap"):
            try:
                fits.append(f"{rates.fit_rate(traj, measure, start=depth // 2).rate:8.4f}")
            except ValueError:  # beta0 = 0: the measure underflows within a few blocks
                fits.append(f"{'(<floor)':>8}")
        print(f"{name:>10} {s.beta0:7.4f} {s.beta_sigma:10.4f} {s.potential_bound:9.4f} | "
              f"{s.potential_local:9.4f} {fits[0]} | {s.gap_local:7.4f} {fits[1]}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
