"""Figures: depth curves, theory-vs-simulation bands, Hermite spectra, kernel maps, phase diagrams.

Every function takes an optional matplotlib Axes (``ax=None`` makes a new figure) and returns the Axes,
so figures compose. Nothing here computes theory: the functions call the library (`propagate`,
`simulate`, `hermite.coefficients`, `hermite.kernel`) or draw what they are given.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from meanfield.core.validate import check_choice, check_real

__all__ = ["paper_style", "depth_curve", "theory_vs_simulation", "theory_vs_simulation_scatter",
           "hermite_spectrum", "kernel_map", "phase_diagram", "measure_values", "seed_quantiles", "sweep_curves",
           "theory_band"]

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
    check_choice("measure_values", "measure", measure, _MEASURES)
    if measure == "grad_norms":
        if traj.grad_norms is None:
            raise ValueError("measure_values: measure='grad_norms' needs a simulation run with gradients=True")
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
        check_real("seed_quantiles", "quantile", q, 0.0, 1.0)
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
        raise ValueError(f"phase_diagram: values has shape {v.shape}, expected (len(sigma_b2_grid), "
                         f"len(sigma_w2_grid)) = {(b.size, w.size)}")
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


# ---------------------------------------------------------------------------------------------------------
# sweep tables
_SIM_ONLY = ("width", "seeds", "seed", "backend", "gradients")  # empty on mean-field rows of a sweep table


def _label(v) -> str:
    """A legend value: None / NaN / pandas NA (an empty cell of a sweep table) reads "none"."""
    try:
        missing = v is None or bool(v != v)
    except TypeError:  # pandas.NA
        missing = True
    return "none" if missing else str(v)


def _lighter(color, t: float):
    """``color`` mixed with white in proportion ``t`` (0: the colour itself)."""
    import matplotlib.colors as mcolors

    r, g, b = mcolors.to_rgb(color)
    return (r + (1 - r) * t, g + (1 - g) * t, b + (1 - b) * t)


def _coincide(a: dict, b: dict, logy: bool, span: float, rtol: float) -> bool:
    """Whether two groups' curves ((engine, width) -> (y, half band)) are indistinguishable: the same curves,
    and at every block a difference within ``rtol`` (relative on a log axis, of the data span on a linear
    one) or within the seeds' spread (half the 10-90% band)."""
    if set(a) != set(b) or not a:
        return False
    for key, (ya, sa) in a.items():
        yb, sb = b[key]
        if ya.shape != yb.shape:
            return False
        ok = np.isfinite(ya) & np.isfinite(yb)
        if not ok.any() or not np.array_equal(np.isfinite(ya), np.isfinite(yb)):
            return False
        scale = np.maximum(np.abs(ya), np.abs(yb)) if logy else span
        tol = np.maximum(rtol * scale, np.fmax(sa, sb))
        if np.any(np.abs(ya - yb)[ok] > tol[ok]):
            return False
    return True


def sweep_curves(df, measure: str = "isometry_gap", by=("activation", "norm", "placement"), ax=None,
                 logy: bool = False, title: str | None = None, note: str | None = None, rtol: float = 0.02):
    """Depth curves of a sweep table (`meanfield.sweep.run_sweep`, ``results.csv``).

    One colour per group of the ``by`` fields (and of any other field that varies in ``df``, so that two
    sweep points never share a line); within a group, the mean field is a dashed line drawn on top and each
    simulated width the seed median (solid, lighter for narrower widths) with its 10-90% band. The legend
    sits outside the axes: the groups by colour, the engines and widths by style.

    Two groups whose curves coincide (every curve within ``rtol``, relative on a log axis and of the data
    span on a linear one, or within the seeds' spread) would hide one another: the later group is drawn
    with hollow markers and its legend entry says "= <the other group>". ``note`` adds a line of text
    under the axes (e.g. why two curves coincide). Returns the Axes; ``ax.coincident`` lists the pairs of
    group labels found to coincide.
    """
    from matplotlib.lines import Line2D

    ax = _axes(ax)
    if not len(df):
        raise ValueError("sweep_curves: the table has no rows")
    if measure not in df.columns:
        raise ValueError(f"sweep_curves: measure={measure!r} is not a column of the table; columns: "
                         f"{', '.join(c for c in df.columns if not c.endswith(('_std', '_median', '_q10', '_q90')))}")
    by = [by] if isinstance(by, str) else list(by)
    from meanfield.sweep import ALL_FIELDS

    keys = [b for b in by if b in df.columns and b not in ("engine", "width")]
    sim = df[df["engine"] == "simulate"]
    extra = [c for c in ALL_FIELDS if c in df.columns and c not in keys + ["engine", "width", "depth"]
             and (sim if c in _SIM_ONLY else df)[c].nunique(dropna=False) > 1]
    if "depth" in df.columns and "depth" not in keys and df["depth"].nunique() > 1:
        extra.append("depth")
    group_keys = keys + extra
    widths = sorted({int(w) for w in sim["width"].dropna()}) if "width" in sim.columns else []
    groups = list(df.groupby(group_keys, dropna=False, sort=True)) if group_keys else [((), df)]

    curves, labels = [], []
    for name, g in groups:
        name = name if isinstance(name, tuple) else (name,)
        parts = [_label(v) for v in name[: len(keys)]]
        parts += [f"{c}={_label(v)}" for c, v in zip(extra, name[len(keys):])]
        labels.append(", ".join(parts) or measure.replace("_", " "))
        cur = {}
        for (engine, width), h in g.groupby(["engine", "width"], dropna=False):
            h = h.sort_values("layer")
            x = h["layer"].to_numpy()
            if engine == "meanfield":
                y, lo, hi = (h[measure].to_numpy(float),) * 3
            else:
                y = h[measure + "_median"].to_numpy(float)
                lo, hi = h[measure + "_q10"].to_numpy(float), h[measure + "_q90"].to_numpy(float)
            with np.errstate(invalid="ignore"):
                half = np.where(np.isfinite(hi - lo), (hi - lo) / 2, 0.0)
            cur[(engine, None if engine == "meanfield" else int(width))] = (x, y, lo, hi, half)
        curves.append(cur)
    finite = np.concatenate([c[1][np.isfinite(c[1])] for cur in curves for c in cur.values()] + [np.zeros(1)])
    span = float(finite.max() - finite.min()) or 1.0

    colors = _plt().rcParams["axes.prop_cycle"].by_key()["color"]
    ax.coincident = []
    same_as: dict = {}
    for j in range(len(curves)):
        for i in range(j):
            if i not in same_as and _coincide({k: (v[1], v[4]) for k, v in curves[i].items()},
                                              {k: (v[1], v[4]) for k, v in curves[j].items()}, logy, span, rtol):
                same_as[j] = i
                ax.coincident.append((labels[i], labels[j]))
                break
    handles = []
    for j, cur in enumerate(curves):
        base = colors[j % len(colors)]
        hollow = j in same_as
        # a group that coincides with an earlier one: hollow markers only, so that both stay visible
        mark = dict(marker="o", markevery=max(1, len(next(iter(cur.values()))[0]) // 12), markersize=4.5,
                    markerfacecolor="none", linestyle="none", zorder=5) if hollow else {}
        for (engine, width), (x, y, lo, hi, _) in sorted(cur.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
            if engine == "meanfield":
                ax.plot(x, y, **{"color": base, "linestyle": "--", "linewidth": 1.8, "zorder": 4, **mark})
            else:
                t = 0.55 * (len(widths) - 1 - widths.index(width)) / max(len(widths) - 1, 1)
                c = _lighter(base, t)
                ax.plot(x, y, **{"color": c, "linewidth": 1.3, "zorder": 3, **mark})
                if not hollow:
                    ax.fill_between(x, lo, hi, color=c, alpha=0.15, linewidth=0, zorder=1)
        if hollow:
            handles.append(Line2D([], [], color=base, marker="o", markerfacecolor="none", linestyle="none",
                                  label=f"{labels[j]} (markers: coincides with {labels[same_as[j]]})"))
        else:
            handles.append(Line2D([], [], color=base, linewidth=2.5, label=labels[j]))
    styles = []
    if any(k[0] == "meanfield" for cur in curves for k in cur):
        styles.append(Line2D([], [], color="0.3", linestyle="--", linewidth=1.8, label="mean field"))
    for i, w in enumerate(widths):
        t = 0.55 * (len(widths) - 1 - i) / max(len(widths) - 1, 1)
        styles.append(Line2D([], [], color=_lighter("0.3", t), linewidth=1.3, label=f"width {w} (median, 10-90%)"))
    ax.legend(handles=handles + styles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8,
              title=", ".join(group_keys) or None, title_fontsize=8, alignment="left")
    ax.set_xlabel("depth (blocks)")
    ax.set_ylabel(measure.replace("_", " "))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if note:
        ax.annotate(note, xy=(0, 0), xycoords="axes fraction", xytext=(0, -34), textcoords="offset points",
                    va="top", ha="left", fontsize=8, wrap=True)
    return ax
