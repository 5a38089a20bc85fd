"""Tests of meanfield.plot: figures rendered with Agg carry the expected artists and data.

The data each artist must hold is computed here from the trajectories' measures, numpy quantiles and
`hermite` directly.
"""

from __future__ import annotations

import io

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PathCollection, PolyCollection, QuadMesh
from matplotlib.contour import ContourSet

import hermite
import meanfield
from meanfield import plot
from meanfield.finite import simulate
from meanfield.trajectory import Trajectory


@pytest.fixture(autouse=True)
def _agg_and_close():
    plt.switch_backend("Agg")
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def trajs():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((5, 12))
    net = meanfield.mlp(6, "tanh", norm="ln", placement="post", sigma_w=1.3)
    mf = meanfield.propagate(net, X=X)
    sims = {16: simulate(net, X, width=16, seeds=7, seed=1, progress=False),
            64: simulate(net, X, width=64, seeds=7, seed=2, progress=False)}
    return mf, sims


def band_limits(coll):
    """Min and max y of a fill_between band, per x (from its polygon's vertices)."""
    verts = np.concatenate([p.vertices for p in coll.get_paths()])
    xs = np.unique(verts[:, 0])
    return xs, np.array([verts[verts[:, 0] == x, 1].min() for x in xs]), np.array(
        [verts[verts[:, 0] == x, 1].max() for x in xs])


def test_depth_curve_mean_field_is_one_line_of_the_measure(trajs):
    mf, _ = trajs
    ax = plot.depth_curve(mf, "isometry_gap", label="mf")
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), np.arange(mf.depth + 1))
    np.testing.assert_allclose(line.get_ydata(), mf.isometry_gap(), rtol=0, atol=0)
    assert line.get_label() == "mf"
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert ax.get_xlabel() == "depth (blocks)" and ax.get_ylabel() == "isometry gap"
    assert ax.get_yscale() == "linear"
    ax = plot.depth_curve(mf, "potential", logy=True)
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), mf.potential())
    assert ax.get_yscale() == "log"


def test_depth_curve_simulation_is_median_line_and_quantile_band(trajs):
    _, sims = trajs
    sim = sims[16]
    ax = plot.depth_curve(sim, "mean_correlation", band=(0.25, 0.75))
    (line,) = ax.get_lines()
    vals = sim.mean_correlation()
    np.testing.assert_allclose(line.get_ydata(), np.median(vals, axis=0), rtol=1e-14)
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    xs, lo, hi = band_limits(band)
    np.testing.assert_array_equal(xs, np.arange(sim.depth + 1))
    np.testing.assert_allclose(lo, np.quantile(vals, 0.25, axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hi, np.quantile(vals, 0.75, axis=0), rtol=1e-12, atol=1e-14)
    assert np.allclose(band.get_facecolor()[0][:3], matplotlib.colors.to_rgb(line.get_color()))


def test_theory_vs_simulation(trajs):
    mf, sims = trajs
    ax = plot.theory_vs_simulation(mf, sims, "isometry_gap", logy=True, title="tanh + LN")
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == ["mean field", "width 16", "width 64"]
    np.testing.assert_allclose(lines[0].get_ydata(), mf.isometry_gap())
    assert lines[0].get_linestyle() == "--" and matplotlib.colors.to_hex(lines[0].get_color()) == "#000000"
    for ln, sim in zip(lines[1:], sims.values()):
        np.testing.assert_allclose(ln.get_ydata(), np.median(sim.isometry_gap(), axis=0), rtol=1e-14)
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2
    assert ax.get_title() == "tanh + LN" and ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mean field", "width 16", "width 64"]
    # string keys are used as labels verbatim
    ax = plot.theory_vs_simulation(mf, {"narrow": sims[16]})
    assert [ln.get_label() for ln in ax.get_lines()] == ["mean field", "narrow"]


def test_theory_vs_simulation_scatter(trajs):
    mf, sims = trajs
    sim = sims[64]
    ax = plot.theory_vs_simulation_scatter(mf, sim, layer=3)
    (pts,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    iu = np.triu_indices(mf.n)
    th, sm = mf.gram[3][iu], sim.gram.mean(axis=0)[3][iu]
    np.testing.assert_allclose(pts.get_offsets(), np.column_stack([th, sm]), rtol=1e-14)
    (ident,) = ax.get_lines()
    x, y = ident.get_xdata(), ident.get_ydata()
    np.testing.assert_allclose(x, y)
    assert x[0] <= min(th.min(), sm.min()) and x[-1] >= max(th.max(), sm.max())


def test_hermite_spectrum_skips_zero_coefficients():
    ax = plot.hermite_spectrum("relu", K=12)
    (line,) = ax.get_lines()
    k = np.array([0, 1, 2, 4, 6, 8, 10, 12])  # the odd orders >= 3 of ReLU vanish
    np.testing.assert_array_equal(line.get_xdata(), k)
    np.testing.assert_allclose(line.get_ydata(), hermite.coefficients("relu", 12)[k] ** 2, rtol=1e-14)
    assert ax.get_yscale() == "log" and line.get_label() == "relu"
    ax = plot.hermite_spectrum("tanh", K=7, q=2.0, ax=ax, label="tanh q=2")
    line = ax.get_lines()[-1]
    np.testing.assert_array_equal(line.get_xdata(), [1, 3, 5, 7])
    np.testing.assert_allclose(line.get_ydata(), hermite.coefficients("tanh", 7, q=2.0)[1::2] ** 2, rtol=1e-14)
    assert line.get_label() == "tanh q=2"


def test_kernel_map_with_identity_line():
    ax = plot.kernel_map("relu")
    curve, ident = ax.get_lines()
    rho = curve.get_xdata()
    assert rho[0] == -1 and rho[-1] == 1
    expect = (np.sqrt(1 - rho**2) + (np.pi - np.arccos(rho)) * rho) / np.pi  # arc-cosine / (1/2)
    np.testing.assert_allclose(curve.get_ydata(), expect, atol=1e-12)
    np.testing.assert_allclose(ident.get_xdata(), [-1, 1])
    np.testing.assert_allclose(ident.get_ydata(), [-1, 1])
    assert curve.get_ydata()[-1] == pytest.approx(1.0, abs=1e-14)
    # unnormalized: the kernel itself and the identity of covariances y = q rho
    ax = plot.kernel_map("tanh", q=2.0, normalized=False)
    curve, ident = ax.get_lines()
    np.testing.assert_allclose(curve.get_ydata(), hermite.kernel("tanh", curve.get_xdata(), 2.0), atol=1e-14)
    np.testing.assert_allclose(ident.get_ydata(), [-2.0, 2.0])
    # centered and normalized: 1 at rho = 1, covariance map
    ax = plot.kernel_map("relu", centered=True)
    y = ax.get_lines()[0].get_ydata()
    assert y[-1] == pytest.approx(1.0, abs=1e-12) and y[200] == pytest.approx(0.0, abs=1e-12)  # rho = 0


def test_phase_diagram_mesh_and_edge_of_chaos():
    b2 = np.linspace(0.0, 0.5, 4)
    w2 = np.linspace(0.5, 3.0, 6)
    vals = np.add.outer(b2, w2)
    crit = np.tile(w2 / 1.5, (b2.size, 1))  # level 1 at sigma_w^2 = 1.5
    ax = plot.phase_diagram(vals, b2, w2, label="q*", critical=crit)
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert mesh.get_array().shape == (4, 6)
    np.testing.assert_allclose(np.asarray(mesh.get_array()), vals)
    assert ax.get_xlabel() == "sigma_w^2" and ax.get_ylabel() == "sigma_b^2"
    contours = [c for c in ax.get_children() if isinstance(c, ContourSet)]
    assert len(contours) == 1 and list(contours[0].levels) == [1.0]
    segs = np.concatenate([p.vertices for p in contours[0].get_paths() if len(p.vertices)])
    np.testing.assert_allclose(segs[:, 0], 1.5, atol=1e-12)
    assert len(ax.figure.axes) == 2  # the colour bar
    assert ax.figure.axes[1].get_ylabel() == "q*"
    # log colours, NaN masked
    vals2 = vals + 1.0
    vals2[0, 0] = np.nan
    ax = plot.phase_diagram(vals2, b2, w2, log_color=True)
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert isinstance(mesh.norm, matplotlib.colors.LogNorm)
    assert np.ma.getmaskarray(mesh.get_array())[0, 0]
    with pytest.raises(ValueError, match="expected"):
        plot.phase_diagram(vals.T, b2, w2)


def test_axes_are_returned_and_composed():
    fig, ax = plt.subplots()
    assert plot.hermite_spectrum("gelu", K=5, ax=ax) is ax
    assert plot.kernel_map("gelu", ax=ax) is ax
    assert len(fig.axes) == 1


def test_measure_values_errors(trajs):
    mf, sims = trajs
    with pytest.raises(ValueError, match="measure"):
        plot.measure_values(mf, "isometry_gp")
    with pytest.raises(ValueError, match="gradients=True"):
        plot.measure_values(sims[16], "grad_norms")
    assert plot.measure_values(sims[16], "isometry").shape == (7, mf.depth + 1)


def test_gradient_norms_curve():
    X = np.random.default_rng(0).standard_normal((3, 8))
    sim = simulate(meanfield.mlp(3, "relu", sigma_w=2**0.5), X, width=32, seeds=4, gradients=True, progress=False)
    ax = plot.depth_curve(sim, "grad_norms")
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), np.median(sim.grad_norms, axis=0))


def test_seed_quantiles_match_numpy_and_handle_infinity(recwarn):
    x = np.random.default_rng(1).standard_normal((9, 4))
    qs = (0.0, 0.1, 0.5, 0.9, 1.0)
    np.testing.assert_allclose(plot.seed_quantiles(x, qs), np.quantile(x, qs, axis=0), rtol=1e-15)
    v = np.array([[0.1, np.inf, 0.2], [0.3, np.inf, np.inf], [0.2, np.inf, np.inf]])
    med, lo, hi = plot.seed_quantiles(v, (0.5, 0.1, 0.9))
    np.testing.assert_allclose(med, [0.2, np.inf, np.inf])
    np.testing.assert_allclose(lo, [0.12, np.inf, np.inf])  # 0.2 + 0.2 (inf - 0.2): the band reaches inf
    assert hi[0] == pytest.approx(0.28)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_singular_seeds_draw_without_warnings(recwarn):
    """A simulation in which every Gram after the input is singular: isometry gap +inf."""
    g = np.tile(np.eye(2), (3, 4, 1, 1))
    g[:, 1:] = 1.0
    sim = Trajectory(gram=g, engine="simulate")
    ax = plot.depth_curve(sim, "isometry_gap", logy=True)
    y = ax.get_lines()[0].get_ydata()
    assert y[0] == 0 and np.all(np.isinf(y[1:]))
    ax.figure.savefig(io.BytesIO(), format="png")
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_paper_style_is_scoped():
    before = matplotlib.rcParams["font.size"]
    with plot.paper_style():
        assert matplotlib.rcParams["font.size"] == 9
        assert matplotlib.rcParams["axes.spines.top"] is False
    assert matplotlib.rcParams["font.size"] == before
