"""Trajectory: the Gram matrix of a batch after every block, from either engine.

`meanfield.propagate` returns ``gram`` of shape (L+1, n, n) (input, then the output of each of the L
blocks); `meanfield.simulate` returns (seeds, L+1, n, n). Every measure is computed on the last two axes,
so the same call works on both and "theory vs simulation" is one line:

>>> import numpy as np, meanfield
>>> net = meanfield.mlp(3, "relu", norm="ln")
>>> X = np.eye(4)
>>> mf = meanfield.propagate(net, X=X)                       # doctest: +SKIP
>>> sim = meanfield.simulate(net, X, width=256, seeds=8)   # doctest: +SKIP
>>> mf.isometry_gap(), sim.isometry_gap().mean(axis=0)     # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = ["Trajectory"]


@dataclass(frozen=True)
class Trajectory:
    """Gram matrices per block (and per seed) plus what the engine recorded along the way.

    Attributes
    ----------
    gram : ndarray, (L+1, n, n) or (seeds, L+1, n, n), float64
        Second-moment Gram matrices K_ab = <x_a, x_b> / width of the features after each block
        (index 0 is the input).
    engine : "meanfield" or "simulate"
    network : the Network that produced it
    means : ndarray (..., L+1, n) or None
        Per-sample feature means (1/width) sum_i x_ia.
    grad_norms : ndarray (seeds, L+1) or None
        Simulator with gradients=True: norm / sqrt(width) of the gradient of a random Gaussian linear
        readout with respect to each block's output (index L is the last block's output).
    grad_gram : ndarray (seeds, L+1, n, n) or None
        Simulator with gradients=True: the Gram of the backward signal (per-sample output gradients).
    mc_error : ndarray (L+1,) or None
        Mean-field engine: the Monte Carlo standard error (max over entries) of blocks that needed a
        batch-coupled expectation, 0 where the map is exact.
    layers : list or None
        Per-layer Grams when asked for (``detail=True``).
    gram_cov : ndarray (L+1, n, n, n, n) or None
        Finite-width theory (``propagate(net, K0, width=W)``): Cov(K_ab, K_cd) of the empirical Gram's entries
        per block, to first order in 1/W plus the second-order terms that compound with depth (``gram`` is then
        the mean of the empirical Gram to first order).
    """

    gram: np.ndarray
    engine: str = "meanfield"
    network: Any = None
    means: np.ndarray | None = None
    grad_norms: np.ndarray | None = None
    grad_gram: np.ndarray | None = None
    mc_error: np.ndarray | None = None
    layers: list | None = None
    info: dict = field(default_factory=dict)
    gram_cov: np.ndarray | None = None

    # -------------------------------------------------------------------------------------------
    @property
    def seeded(self) -> bool:
        """True for a simulation (a leading seed axis)."""
        return self.gram.ndim == 4

    @property
    def depth(self) -> int:
        return self.gram.shape[-3] - 1

    @property
    def n(self) -> int:
        return self.gram.shape[-1]

    @property
    def seeds(self) -> int:
        return self.gram.shape[0] if self.seeded else 1

    # -------------------------------------------------------------------------------------------
    def isometry(self) -> np.ndarray:
        """det(K)^(1/n) / (tr K / n) per block (and per seed)."""
        from meanfield.measures import isometry

        return isometry(self.gram)

    def isometry_gap(self) -> np.ndarray:
        """-log isometry per block (and per seed); +inf for a singular Gram."""
        from meanfield.measures import isometry_gap

        return isometry_gap(self.gram)

    def potential(self) -> np.ndarray:
        """max_{a != b} |rho_ab| / (1 - |rho_ab|) per block (and per seed)."""
        from meanfield.measures import potential

        return potential(self.gram)

    def correlations(self) -> np.ndarray:
        from meanfield.measures import correlations

        return correlations(self.gram)

    def mean_correlation(self) -> np.ndarray:
        from meanfield.measures import mean_correlation

        return mean_correlation(self.gram)

    def gamma(self) -> np.ndarray:
        """Initial guessing bias per block (and seed): c/(K - c), K the mean diagonal and c the mean
        off-diagonal second moment, reading the inputs as independent draws (`meanfield.bias`)."""
        from meanfield.measures import gamma_from_gram

        return gamma_from_gram(self.gram)

    def diagonal(self) -> np.ndarray:
        """Per-sample second moments K_aa per block (and seed)."""
        return np.diagonal(self.gram, axis1=-2, axis2=-1)

    # -------------------------------------------------------------------------------------------
    # the spread over random networks: the same call on a simulation, a finite-width theory, the mean field
    def _spread(self, measure: str):
        from meanfield.spread import SPREAD_MEASURES, measure_moments

        if measure not in SPREAD_MEASURES:
            raise ValueError(f"measure={measure!r} must be one of {SPREAD_MEASURES}")
        if self.gram_cov is not None:
            return measure_moments(measure, self.gram, self.gram_cov)
        if self.seeded:
            vals = self.gram if measure == "gram" else np.asarray(getattr(self, measure)(), dtype=np.float64)
            if self.seeds < 2:
                raise ValueError(f"std({measure!r}) needs at least 2 seeds")
            with np.errstate(invalid="ignore"):
                return vals.mean(axis=0), vals.std(axis=0, ddof=1)
        mean = self.gram.copy() if measure == "gram" else np.asarray(getattr(self, measure)(), dtype=np.float64)
        return mean, np.zeros_like(mean)

    def expected(self, measure: str = "isometry_gap") -> np.ndarray:
        """Mean of a measure over random networks, per block.

        Finite-width theory (``gram_cov`` set): the 1/width-corrected mean by the delta method
        (`meanfield.spread`), which includes the finite-width floor of the isometry gap; simulation: the seed
        mean; mean field: the measure itself. ``measure``: "isometry_gap", "isometry", "potential",
        "mean_correlation", "correlations", "gamma", "gram" or "diagonal".
        """
        return self._spread(measure)[0]

    def std(self, measure: str = "isometry_gap") -> np.ndarray:
        """Standard deviation of a measure over random networks, per block: predicted to first order in
        1/width (plus the Gaussian quadratic term where the gradient vanishes) for a finite-width theory,
        across seeds (ddof=1) for a simulation, 0 at infinite width. Measures as in `expected`."""
        return self._spread(measure)[1]

    # -------------------------------------------------------------------------------------------
    def _need_seeds(self, what):
        if not self.seeded:
            raise ValueError(f"{what} needs a simulated trajectory (with a seed axis)")

    def mean(self) -> Trajectory:
        """Seed-mean trajectory (gram (L+1, n, n))."""
        self._need_seeds("mean()")
        return replace(self, gram=self.gram.mean(axis=0),
                       means=None if self.means is None else self.means.mean(axis=0),
                       grad_norms=None, grad_gram=None, info={**self.info, "reduced": "mean"})

    def stderr(self) -> np.ndarray:
        """Standard error of the seed-mean Gram, (L+1, n, n)."""
        self._need_seeds("stderr()")
        s = self.gram.shape[0]
        if s < 2:
            raise ValueError("stderr() needs at least 2 seeds")
        return self.gram.std(axis=0, ddof=1) / np.sqrt(s)

    def quantile(self, q, measure: str | None = None) -> np.ndarray:
        """Quantile(s) across seeds of the Gram (measure=None) or of a measure ("isometry_gap", ...)."""
        self._need_seeds("quantile()")
        vals = self.gram if measure is None else getattr(self, measure)()
        return np.quantile(vals, q, axis=0)

    def seed(self, i: int) -> Trajectory:
        """The trajectory of one simulated network."""
        self._need_seeds("seed()")
        return replace(self, gram=self.gram[i], means=None if self.means is None else self.means[i],
                       grad_norms=None if self.grad_norms is None else self.grad_norms[i],
                       grad_gram=None if self.grad_gram is None else self.grad_gram[i])

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.gram.shape))
        return f"Trajectory(engine={self.engine!r}, depth={self.depth}, n={self.n}, gram {shape})"
