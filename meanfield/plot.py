"""Figures: depth curves, theory-vs-simulation bands, Hermite spectra, kernel maps, phase diagrams.

Every function takes an optional matplotlib Axes (``ax=None`` makes a new figure) and returns the Axes,
so figures compose. Nothing here computes theory: the functions call the library (`propagate`,
`simulate`, `hermite.coefficients`, `hermite.kernel`) or draw what they are given.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

__all__ = ["paper_style", "depth_curve", "theory_vs_simulation", "theory_vs_simulation_scatter",
           "hermite_spectrum", "kernel_map", "phase_diagram", "measure_values", "seed_quantiles", "theory_band"]

_MEASURES = ("isometry_gap", "isometry", "potential", "mean_correlation", "gamma", "grad_norms")


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _axes(ax):
    if ax is None:
        _, ax = _plt().subplots(figsize=(4.5, 3.2))
    return ax


@contextmanager
def paper_style():
    """Context manager with publication defaults (small serif fonts, thin lines, tight layout)."""
    plt = _plt()
    rc = {"font.size": 9, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
          "ytick.labelsize": 8, "lines.linewidth": 1.4, "axes.spines.top": False, "axes.spines.right": False,
          "figure.dpi": 150, "savefig.bbox": "tight"}
    with plt.rc_context(rc):
        yield


def measure_values(traj, measure: str = "isometry_gap") -> np.ndarray:
    """The per-block values of a measure: (L+1,) for mean field, (seeds, L+1) for a simulation."""
    if measure not in _MEASURES:
        raise ValueError(f"measure={measure!r} must be one of {_MEASURES}")
    if measure == "grad_norms":
        if traj.grad_norms is None:
            raise ValueError("measure='grad_norms' needs a simulation run with gradients=True")
        return np.asarray(traj.grad_norms)
    return np.asarray(getattr(traj, measure)())


def seed_quantiles(values, qs, axis: int = 0) -> np.ndarray:
    """Quantiles across seeds (axis ``axis``) that treat +-inf as values, not as missing.

    A singular Gram has an infinite isometry gap; dropping those seeds would bias the median and the
    band towards the well-conditioned networks. Linear interpolation between order statistics, as
    ``numpy.quantile``, except that a quantile whose interpolation touches an infinite order statistic
    with positive weight is that infinity (numpy gives NaN there). NaN entries propagate. Returns an
    array of shape ``(len(qs),) + values.shape without axis``.
    """
    v = np.sort(np.moveaxis(np.asarray(values, dtype=float), axis, 0), axis=0)
    m = v.shape[0]
    if m == 0:
        raise ValueError("seed_quantiles: no values along the seed axis")
    out = []
    for q in np.atleast_1d(qs):
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"seed_quantiles: quantile {q!r} must be in [0, 1]")
        pos = q * (m - 1)
        i = int(np.floor(pos))
        j = min(i + 1, m - 1)
        t = pos - i
        a, b = v[i], v[j]
        if t == 0.0:
            out.append(a.copy())
            continue
        with np.errstate(invalid="ignore"):
            r = a + (b - a) * t
        r = np.where(np.isinf(a) & (a == b), a, r)  # both the same infinity
        r = np.where(np.isposinf(b) & ~np.isnan(a) & ~np.isposinf(a), np.inf, r)
        r = np.where(np.isneginf(a) & ~np.isnan(b) & ~np.isneginf(b), -np.inf, r)
        out.append(r)
    return np.stack(out)


def depth_curve(traj, measure: str = "isometry_gap", ax=None, label: str | None = None, band=(0.1, 0.9),
                logy: bool = False, color=None, **line_kw):
    """Plot a measure against depth.

    A mean-field trajectory is drawn as a line; a simulated one as the median across seeds with a
    quantile band (``band``, default the 10-90% range). Seeds with an infinite value (a singular Gram's
    isometry gap) count as +inf in the median and the band (`seed_quantiles`); matplotlib leaves
    non-finite points out of the drawing. A finite-width theory (``propagate(..., width=W)``) is drawn as the
    median of its predicted law with the predicted band as dotted lines (`theory_band`).
    """
    ax = _axes(ax)
    if getattr(traj, "gram_cov", None) is not None:  # finite-width theory: its own mean and band
        mean, lo, hi = theory_band(traj, measure, band)  # the predicted median and band
        depth = np.arange(mean.shape[-1])
        (line,) = ax.plot(depth, mean, label=label, color=color, **line_kw)
        ax.plot(depth, lo, color=line.get_color(), linestyle=":", linewidth=0.9)
        ax.plot(depth, hi, color=line.get_color(), linestyle=":", linewidth=0.9)
        ax.set_xlabel("depth (blocks)")
        ax.set_ylabel(measure.replace("_", " "))
        if logy:
            ax.set_yscale("log")
        return ax
    vals = measure_values(traj, measure)
    depth = np.arange(vals.shape[-1])
    if vals.ndim == 1:
        ax.plot(depth, vals, label=label, color=color, **line_kw)
    else:
        med, lo, hi = seed_quantiles(vals, (0.5, band[0], band[1]))
        (line,) = ax.plot(depth, med, label=label, color=color, **line_kw)
        ax.fill_between(depth, lo, hi, color=line.get_color(), alpha=0.25, linewidth=0)
    ax.set_xlabel("depth (blocks)")
    ax.set_ylabel(measure.replace("_", " "))
    if logy:
        ax.set_yscale("log")
    return ax


def theory_band(traj, measure: str = "isometry_gap", band=(0.1, 0.9)):
    """(median, lo, hi) per block of a measure from a finite-width theory: the quantiles 0.5 and ``band`` of the
    law with the predicted mean (`Trajectory.expected`) and spread (`Trajectory.std`): a normal law, or for the
    non-negative isometry gap and potential a gamma law (at the finite-width floor the gap is a quadratic form
    of Gaussian fluctuations, skewed like a chi-square; far above it the gamma law is nearly normal)."""
    import scipy.special as sc

    if measure == "grad_norms":
        raise ValueError("measure='grad_norms' has no finite-width theory; use a simulation with gradients=True")
    mean, std = np.asarray(traj.expected(measure), float), np.asarray(traj.std(measure), float)
    qs = (0.5, band[0], band[1])
    if measure in ("isometry_gap", "potential"):
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.where(std > 0, (mean / std) ** 2, np.inf)
            theta = np.where(mean > 0, std**2 / mean, 0.0)
            out = [np.where(np.isfinite(k) & (k > 0), sc.gammaincinv(np.where(np.isfinite(k) & (k > 0), k, 1.0), q)
                            * theta, mean) for q in qs]
        return tuple(out)
    return tuple(mean + sc.ndtri(q) * std for q in qs)


def theory_vs_simulation(meanfield_traj, simulations: dict, measure: str = "isometry_gap", ax=None,
                         logy: bool = False, title: str | None = None, theory=None):
    """Mean-field line plus one median/quantile band per simulated width.

    ``simulations`` maps a label (e.g. the width) to a simulated Trajectory. ``theory`` adds the finite-width
    theory in each width's colour: a dict with the same
    keys mapping to ``propagate(net, K0, width=W)`` trajectories (drawn by `theory_band`: predicted median dashed,
    10-90% band dotted), or True to compute them for the integer keys
    from the mean-field trajectory's network and input Gram (networks that start with a Dense layer).
    """
    ax = _axes(ax)
    depth_curve(meanfield_traj, measure, ax=ax, label="mean field", color="k", linestyle="--", zorder=3)
    if theory is True:
        from meanfield.fluctuations import propagate_finite

        widths = [k for k in simulations if isinstance(k, (int, np.integer))]
        theory = propagate_finite(meanfield_traj.network, meanfield_traj.gram[0], width=widths) if widths else {}
    for key, sim in simulations.items():
        depth_curve(sim, measure, ax=ax, label=f"width {key}" if not isinstance(key, str) else key)
        if theory and key in theory:
            color = ax.get_lines()[-1].get_color()
            depth_curve(theory[key], measure, ax=ax, color=color, linestyle="--", linewidth=1.0,
                        label=f"theory {key}")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False)
    return ax


def theory_vs_simulation_scatter(meanfield_traj, simulation, layer: int = -1, ax=None):
    """Scatter of the simulated seed-mean Gram entries against the mean-field ones, with y = x."""
    ax = _axes(ax)
    th = np.asarray(meanfield_traj.gram)[layer]
    sim = np.asarray(simulation.gram).mean(axis=0)[layer]
    iu = np.triu_indices(th.shape[0])
    ax.scatter(th[iu], sim[iu], s=8, alpha=0.7)
    lo, hi = float(min(th.min(), sim.min())), float(max(th.max(), sim.max()))
    ax.plot([lo, hi], [lo, hi], color="k", linewidth=0.8)
    ax.set_xlabel("mean field K_ab")
    ax.set_ylabel("simulation (seed mean)")
    return ax


def hermite_spectrum(act, K: int = 30, q: float = 1.0, ax=None, label: str | None = None):
    """c_k^2 against k on a log scale.

    Zero coefficients are skipped: |c_k| <= 1e-13 sqrt(E f^2) counts as zero (below the accuracy of the
    quadrature; e.g. the odd orders k >= 3 of ReLU come out as ~1e-17, which would otherwise be drawn as
    spurious points near 1e-33).
    """
    import hermite

    ax = _axes(ax)
    c = hermite.coefficients(act, K, q=q)
    k = np.arange(K + 1)
    c2 = c * c
    keep = c2 > (1e-13) ** 2 * hermite.second_moment(act, q)
    ax.semilogy(k[keep], c2[keep], marker="o", markersize=3, linestyle="-", label=label or hermite.activation(act).name)
    ax.set_xlabel("order k")
    ax.set_ylabel("c_k^2")
    return ax


def kernel_map(act, ax=None, q: float = 1.0, normalized: bool = True, centered: bool = False, label=None):
    """The dual kernel as a map of the correlation, with the identity line.

    normalized=True plots E[f(u) f(v)] / E f(u)^2 (the correlation map of a normalized layer) with the
    identity y = rho; normalized=False plots E[f(u) f(v)] itself, Var u = Var v = q, with the identity of
    covariances y = q rho (output covariance = input covariance). centered=True uses the covariance
    (the map LayerNorm after the activation iterates).
    """
    import hermite

    ax = _axes(ax)
    rho = np.linspace(-1, 1, 401)
    k = hermite.kernel(act, rho, q, centered=centered)
    if normalized:
        k = k / hermite.kernel(act, 1.0, q, centered=centered)
    ax.plot(rho, k, label=label or hermite.activation(act).name)
    ax.plot([-1, 1], [-1, 1] if normalized else [-q, q], color="k", linewidth=0.6, linestyle=":")
    ax.set_xlabel("input correlation rho")
    ax.set_ylabel("output correlation" if normalized else "E f(u) f(v)")
    return ax


def phase_diagram(values, sigma_b2_grid, sigma_w2_grid, ax=None, label: str = "", critical=None,
                  log_color: bool = False, cmap: str = "viridis"):
    """Colour map of ``values`` (shape (len(sigma_b2_grid), len(sigma_w2_grid))) over the grid.

    ``critical``: optional 2-D array (e.g. chi_1) whose level 1 is drawn as the edge of chaos.
    """
    import matplotlib.colors as mcolors

    ax = _axes(ax)
    v = np.asarray(values, dtype=float)
    b, w = np.asarray(sigma_b2_grid, float), np.asarray(sigma_w2_grid, float)
    if v.shape != (b.size, w.size):
        raise ValueError(f"values has shape {v.shape}, expected (len(sigma_b2_grid), len(sigma_w2_grid)) = "
                         f"{(b.size, w.size)}")
    finite = v[np.isfinite(v)]
    norm = None
    if log_color and finite.size and finite.min() > 0:
        norm = mcolors.LogNorm(vmin=finite.min(), vmax=finite.max())
    mesh = ax.pcolormesh(w, b, np.ma.masked_invalid(v), shading="auto", cmap=cmap, norm=norm)
    ax.figure.colorbar(mesh, ax=ax, label=label)
    if critical is not None:
        ax.contour(w, b, np.asarray(critical, float), levels=[1.0], colors="w", linewidths=1.2)
    ax.set_xlabel("sigma_w^2")
    ax.set_ylabel("sigma_b^2")
    return ax
