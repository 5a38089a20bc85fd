"""Infinite vs finite width: LayerNorm in groups of a fixed size G, mean field against simulation.

At infinite width LayerNorm divides each sample by a deterministic constant, so its nonlinearity (the
toolkit's Hessian measure, `meanfield.layernorm.nonlinearity`) is invisible to the mean field; in groups of
a fixed size G (GroupLayerNorm(group_size=G)) each group is normalized by its own random variance at any
width. `group_size_study` runs `meanfield.propagate` and `meanfield.simulate` on the networks of
`group_size_network` and collects the Grams and isometry gaps side by side. The study is the toolkit's (an
extension: Ni et al. 2024 introduce LN-G, with a fixed number of groups, and study its nonlinearity, not
its mean-field limit). Re-exported by `meanfield.layernorm`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from meanfield.core.validate import check_int, check_samples, check_seed
from meanfield.finite import simulate
from meanfield.infinite import propagate
from meanfield.layers import Block, Dense, GroupLayerNorm, LayerNorm
from meanfield.measures import isometry_gap
from meanfield.network import Network, check_placement, mlp

__all__ = ["GroupSizeStudy", "group_size_network", "group_size_study"]


@dataclass
class GroupSizeStudy:
    """Result of `group_size_study`: per group size G, the mean field and the simulation side by side.

    All dictionaries are keyed by the group size G. Curves are indexed by trajectory position
    (0 = input, l = output of block l), shape (depth + 1,); Grams have shape (depth + 1, n, n).

    Attributes
    ----------
    meanfield : G -> Trajectory
        `meanfield.propagate` of the network with GroupLayerNorm(group_size=G).
    simulation : G -> Trajectory
        `meanfield.simulate` of the same network (seed axis first).
    layernorm : Trajectory
        `meanfield.propagate` of the same network with plain LayerNorm (the limit G -> infinity).
    sim_mean, sim_stderr : G -> ndarray (depth + 1, n, n)
        Seed-mean Gram of the simulation and its standard error (`Trajectory.mean`, `Trajectory.stderr`).
    mf_gap, ln_gap : isometry gaps of the mean-field Grams (GLN and plain LN).
    sim_gap, sim_gap_stderr : G -> (depth + 1,)
        Isometry gap of the seed-mean Gram (the quantity the mean field predicts) and its jackknife
        standard error over seeds.
    seed_gap, seed_gap_stderr : G -> (depth + 1,)
        Mean over seeds of each network's own isometry gap and its standard error. A single finite
        network's Gram carries sampling noise, which raises its gap by O(n / width) (the gap is convex
        near isometry), so this differs from ``mf_gap`` even where the mean Gram agrees.
    mc_error : G -> (depth + 1,)
        The Monte Carlo standard error reported by `propagate` (0 where its rule is exact).
    z_max : G -> float
        max over blocks >= 1 and entries of |sim_mean - mf| / sqrt(sim_stderr^2 + mc_error^2): how many
        standard errors the simulation is from the mean field at worst.
    """

    group_sizes: tuple
    activation: str | None
    placement: str
    depth: int
    width: int
    seeds: int
    X: np.ndarray
    networks: dict
    meanfield: dict
    simulation: dict
    layernorm: object
    sim_mean: dict
    sim_stderr: dict
    mf_gap: dict
    ln_gap: np.ndarray
    sim_gap: dict
    sim_gap_stderr: dict
    seed_gap: dict
    seed_gap_stderr: dict
    mc_error: dict
    z_max: dict

    def rows(self) -> list[dict]:
        """One dict per group size with the values at the last block (and ``z_max``)."""
        out = []
        for G in self.group_sizes:
            out.append({
                "group_size": G,
                "mf_gap": float(self.mf_gap[G][-1]),
                "sim_gap": float(self.sim_gap[G][-1]),
                "sim_gap_stderr": float(self.sim_gap_stderr[G][-1]),
                "seed_gap": float(self.seed_gap[G][-1]),
                "seed_gap_stderr": float(self.seed_gap_stderr[G][-1]),
                "ln_gap": float(self.ln_gap[-1]),
                "dist_to_ln": float(np.max(np.abs(self.meanfield[G].gram[-1] - self.layernorm.gram[-1]))),
                "z_max": float(self.z_max[G]),
            })
        return out

    def table(self) -> str:
        """The `rows` as a fixed-width text table."""
        head = (f"{'G':>4} {'gap MF':>9} {'gap sim (mean Gram)':>22} {'gap per seed':>20} {'gap LN':>9} "
                f"{'|K_G-K_LN|':>10} {'z_max':>6}")
        pl = self.placement if self.activation is not None else "none (linear: Dense -> GLN)"
        lines = [f"activation={self.activation}, placement={pl}, depth={self.depth}, "
                 f"width={self.width}, seeds={self.seeds}, n={self.X.shape[0]}; values at the last block",
                 head]
        for r in self.rows():
            lines.append(
                f"{r['group_size']:>4} {r['mf_gap']:9.4f} {r['sim_gap']:12.4f} +- {r['sim_gap_stderr']:6.4f} "
                f"{r['seed_gap']:10.4f} +- {r['seed_gap_stderr']:6.4f} {r['ln_gap']:9.4f} {r['dist_to_ln']:10.4f} "
                f"{r['z_max']:6.2f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def group_size_network(depth: int, group_size: int | None = None, activation=None, placement: str = "pre",
                       sigma_w: float = 1.0, sigma_b: float = 0.0):
    """The network of `group_size_study`: ``depth`` blocks of Dense and a norm, with an optional activation.

    The norm is GroupLayerNorm(group_size=group_size), or plain LayerNorm for ``group_size=None``.
    ``activation=None`` gives the linear network Dense -> norm (``placement`` is then irrelevant);
    otherwise `meanfield.mlp` with ``norm="gln"`` (or ``"ln"``) and the placement ("pre": Dense -> norm ->
    activation, "post": Dense -> activation -> norm).
    """
    owner = "group_size_network"
    depth = check_int(owner, "depth", depth, lo=1, strict=True)
    check_placement(owner, placement)
    if group_size is not None:
        group_size = check_int(owner, "group_size", group_size, lo=2, strict=True)
    if activation is None:
        nl = LayerNorm() if group_size is None else GroupLayerNorm(group_size=group_size)
        block = Block((Dense(sigma_w=sigma_w, sigma_b=sigma_b), nl))
        return Network([block] * depth)
    if group_size is None:
        return mlp(depth, activation, norm="ln", placement=placement, sigma_w=sigma_w, sigma_b=sigma_b)
    return mlp(depth, activation, norm="gln", placement=placement, sigma_w=sigma_w, sigma_b=sigma_b,
               group_size=group_size)


def _jackknife_gap(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isometry gap of the seed-mean Gram and its jackknife standard error; gram (S, L+1, n, n)."""
    S = gram.shape[0]
    mean = gram.mean(axis=0)
    gap = np.asarray(isometry_gap(mean), dtype=float)
    if S < 2:
        return gap, np.full_like(gap, np.nan)
    loo = (S * mean[None] - gram) / (S - 1)
    g = np.asarray(isometry_gap(loo), dtype=float)
    with np.errstate(invalid="ignore"):
        se = np.sqrt((S - 1) / S * np.sum((g - g.mean(axis=0)) ** 2, axis=0))
    return gap, se


def group_size_study(activation="relu", group_sizes: Sequence[int] = (3, 4, 8, 16), depth: int = 10,
                     width: int = 480, seeds: int = 32, n: int = 4, placement: str = "pre", seed: int = 0,
                     X=None, sigma_w: float = 1.0, sigma_b: float = 0.0,
                     mc_samples: int = 2**16) -> GroupSizeStudy:
    """Finite-group-size LayerNorm: the mean field with GroupLayerNorm(group_size=G) against simulation.

    At infinite width LayerNorm divides each sample by a deterministic constant (its feature variance
    concentrates), so in the mean field it is a fixed rescaling of the Gram and its nonlinearity (the
    Hessian measure of `nonlinearity`, which decays like 3 / sigma^4 per group of size m, summed over
    d / m groups) is invisible. With a fixed group size G the normalization stays nonlinear at any width:
    each group of G features is normalized by its own random variance. `meanfield.propagate` has the exact
    rule for GroupLayerNorm(group_size=G) on a Gaussian input, K_ab -> E[cos(x_a, x_b)] of two correlated
    Gaussian vectors in dimension G - 1 (Monte Carlo on non-Gaussian inputs, with ``mc_error``), and it
    tends to LayerNorm's rule as G grows. This function runs, for each G, the same network through
    `meanfield.propagate` and `meanfield.simulate` (nothing is re-derived here) and collects the Gram
    trajectories and isometry gaps; the plain-LN mean field is the reference G = infinity.

    For the linear network (``activation=None``: Dense -> GLN) the expected cosine contracts every
    correlation (|E cos| < |rho|), so smaller groups drive the Gram towards isometry faster: the isometry
    gap at a given depth increases with G towards LN's, which stays constant after the first block.

    Parameters
    ----------
    activation : activation name/callable, or None
        None: the linear network Dense -> GLN; otherwise Dense, GLN and the activation in ``placement``
        order (`group_size_network`).
    group_sizes : sequence of int >= 2
        Each must divide ``width``.
    depth, width, seeds : int
        Blocks; width of every layer in the simulation; number of simulated networks.
    n : int
        Batch size of the default input (ignored when X is given).
    placement : "pre" or "post"
    seed : int
        Seeds the default input, the simulation and propagate's Monte Carlo.
    X : array (n, d0), optional
        The input batch. Default: n rows x_a = sqrt(1/2) (z_0 + z_a), z ~ N(0, I_64), pairwise
        correlation about 1/2.
    sigma_w, sigma_b : float
        Dense layer parameters.
    mc_samples : int
        Monte Carlo samples of `propagate` (used only where its rule is not exact).

    Returns
    -------
    GroupSizeStudy
        Trajectories, seed means and standard errors, isometry gaps, and ``table()`` / ``rows()``.
    """
    owner = "group_size_study"
    depth = check_int(owner, "depth", depth, lo=1, strict=True)
    width = check_int(owner, "width", width, lo=2, strict=True)
    seeds = check_int(owner, "seeds", seeds, lo=2, strict=True)
    seed = check_seed(owner, seed)
    check_placement(owner, placement)
    try:
        gs = tuple(check_int(owner, f"group_sizes[{i}]", G, lo=2, strict=True) for i, G in enumerate(group_sizes))
    except TypeError as exc:
        raise ValueError(f"{owner}: group_sizes={group_sizes!r} must be a sequence of integers >= 2") from exc
    if not gs:
        raise ValueError(f"{owner}: group_sizes must not be empty")
    if len(set(gs)) != len(gs):
        raise ValueError(f"{owner}: group_sizes={gs} must be distinct")
    bad = [G for G in gs if width % G]
    if bad:
        raise ValueError(f"{owner}: every group size must divide width = {width}; {bad} do not")
    if X is None:
        n = check_int(owner, "n", n, lo=2, strict=True)
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n + 1, 64))
        Xa = math.sqrt(0.5) * (z[:1] + z[1:])
    else:
        Xa = check_samples(owner, X)
    nets, mfs, sims = {}, {}, {}
    sim_mean, sim_se, mf_gap, sim_gap, sim_gap_se, seed_gap, seed_gap_se, mc, zmax = ({} for _ in range(9))
    for G in gs:
        net = group_size_network(depth, G, activation, placement, sigma_w, sigma_b)
        mf = propagate(net, X=Xa, mc_samples=mc_samples, seed=seed)
        sim = simulate(net, Xa, width=width, seeds=seeds, seed=seed)
        nets[G], mfs[G], sims[G] = net, mf, sim
        sim_mean[G] = sim.gram.mean(axis=0)
        sim_se[G] = sim.stderr()
        mf_gap[G] = np.asarray(mf.isometry_gap(), dtype=float)
        sim_gap[G], sim_gap_se[G] = _jackknife_gap(sim.gram)
        g = np.asarray(sim.isometry_gap(), dtype=float)
        seed_gap[G] = g.mean(axis=0)
        with np.errstate(invalid="ignore"):
            seed_gap_se[G] = g.std(axis=0, ddof=1) / math.sqrt(seeds)
        mc[G] = np.zeros(depth + 1) if mf.mc_error is None else np.asarray(mf.mc_error, dtype=float)
        diff = np.abs(sim_mean[G] - mf.gram)[1:]
        den = np.sqrt(sim_se[G][1:] ** 2 + mc[G][1:, None, None] ** 2)
        z = np.where(diff <= 1e-10, 0.0, diff / np.maximum(den, 1e-300))
        zmax[G] = float(np.max(z))
    ln = propagate(group_size_network(depth, None, activation, placement, sigma_w, sigma_b), X=Xa)
    return GroupSizeStudy(
        group_sizes=gs, activation=None if activation is None else str(getattr(activation, "name", activation)),
        placement=placement, depth=depth, width=width, seeds=seeds, X=Xa, networks=nets, meanfield=mfs,
        simulation=sims, layernorm=ln, sim_mean=sim_mean, sim_stderr=sim_se, mf_gap=mf_gap,
        ln_gap=np.asarray(ln.isometry_gap(), dtype=float), sim_gap=sim_gap, sim_gap_stderr=sim_gap_se,
        seed_gap=seed_gap, seed_gap_stderr=seed_gap_se, mc_error=mc, z_max=zmax)
