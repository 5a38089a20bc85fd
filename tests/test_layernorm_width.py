"""Infinite vs finite width for layer norm: GroupLayerNorm(group_size=G) in the mean-field engine against the
simulator (`meanfield.layernorm.group_size_study`), and the LN-Net run through both engines."""

import numpy as np
import pytest

import meanfield
from meanfield import layernorm as L


def _data(n=4, d=64, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n + 1, d))
    return np.sqrt(0.5) * (z[:1] + z[1:])


@pytest.fixture(scope="module")
def linear_study():
    # linear network Dense -> GLN(group_size=G); propagate's rule is the exact expected cosine
    return L.group_size_study(None, group_sizes=(3, 4, 8, 16), depth=6, width=960, seeds=64, seed=0)


@pytest.mark.parametrize("G", [3, 4, 8])
def test_linear_gln_simulation_matches_expected_cosine_rule(G):
    X = _data()
    net = L.group_size_network(3, G)
    mf = meanfield.propagate(net, X=X)
    assert np.all(mf.mc_error == 0)                      # the exact rule, no Monte Carlo
    sim = meanfield.simulate(net, X, width=960, seeds=64, seed=1)
    mean, se = sim.mean().gram, sim.stderr()
    # LN output of every group has mean square 1: the diagonal is exactly 1 in both engines
    np.testing.assert_allclose(np.diagonal(mf.gram[1:], axis1=1, axis2=2), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.diagonal(mean[1:], axis1=1, axis2=2), 1.0, atol=1e-12)
    iu = np.triu_indices(X.shape[0], 1)
    diff = (mean - mf.gram)[1:, iu[0], iu[1]]
    z = diff / se[1:, iu[0], iu[1]]
    assert np.max(np.abs(z)) < 4.5, z
    assert np.mean(z**2) < 3.0, z                        # no systematic offset either
    # and the prediction is not LayerNorm's: the difference is many standard errors
    ln = meanfield.propagate(L.group_size_network(3, None), X=X)
    gap = np.abs(ln.gram - mf.gram)[1:, iu[0], iu[1]]
    assert np.max(gap[-1] / se[-1, iu[0], iu[1]]) > 8


def test_meanfield_gln_tends_to_ln_like_one_over_G():
    X = _data(seed=3)
    ln = meanfield.propagate(L.group_size_network(4, None), X=X).gram
    dists = []
    for G in (3, 4, 8, 16, 64, 256, 1024):
        K = meanfield.propagate(L.group_size_network(4, G), X=X).gram
        dists.append(np.max(np.abs(K - ln)))
    dists = np.array(dists)
    assert np.all(np.diff(dists) < 0)
    Gs = np.array([3, 4, 8, 16, 64, 256, 1024])
    c = dists * Gs                                        # O(1/G): G * distance levels off
    assert np.all(c < 1.0)
    assert abs(c[-1] / c[-2] - 1) < 0.02
    assert dists[-1] < 1e-3


def test_isometry_gap_increases_with_group_size_theory_then_simulation(linear_study):
    st = linear_study
    Gs = st.group_sizes
    last = [st.mf_gap[G][-1] for G in Gs]
    # theory (verified first): every correlation contracts more in small groups, so the gap at depth 6
    # increases with G, below plain LN's constant gap
    assert np.all(np.diff(last) > 0.01)
    assert last[-1] < st.ln_gap[-1] - 0.02
    np.testing.assert_allclose(st.ln_gap[1:], st.ln_gap[1], rtol=1e-10)
    for G in Gs:                                         # and per block: gap decreasing with depth
        assert np.all(np.diff(st.mf_gap[G][1:]) < 0)
    # simulation: the gap of the seed-mean Gram agrees with theory within its error bars ...
    for G in Gs:
        z = (st.sim_gap[G][1:] - st.mf_gap[G][1:]) / st.sim_gap_stderr[G][1:]
        assert np.max(np.abs(z)) < 4.5, (G, z)
        assert st.z_max[G] < 4.5
    # ... and has the same ordering in G, each step many error bars wide
    sim_last = np.array([st.sim_gap[G][-1] for G in Gs])
    se_last = np.array([st.sim_gap_stderr[G][-1] for G in Gs])
    assert np.all(np.diff(sim_last) > 3 * np.sqrt(se_last[1:] ** 2 + se_last[:-1] ** 2))
    # a single network's own gap sits above (sampling noise of a finite Gram), by O(n / width)
    for G in Gs:
        excess = st.seed_gap[G][-1] - st.sim_gap[G][-1]
        assert 0 < excess < 0.03


def test_study_table_and_rows(linear_study):
    st = linear_study
    rows = st.rows()
    assert [r["group_size"] for r in rows] == [3, 4, 8, 16]
    assert all(np.isfinite(r["sim_gap"]) and r["sim_gap_stderr"] > 0 for r in rows)
    d = [r["dist_to_ln"] for r in rows]
    assert np.all(np.diff(d) < 0)
    assert st.sim_mean[3].shape == (7, 4, 4) and st.simulation[3].gram.shape == (64, 7, 4, 4)
    text = st.table()
    assert "gap MF" in text and len(text.splitlines()) == 2 + 4


def test_study_with_relu_agrees_with_monte_carlo_meanfield():
    st = L.group_size_study("relu", group_sizes=(4,), depth=3, width=480, seeds=32, placement="post",
                            mc_samples=2**14)
    assert st.mc_error[4][1:].max() > 0                  # Monte Carlo rule after the activation
    assert st.z_max[4] < 4.5
    assert st.networks[4] == meanfield.mlp(3, "relu", norm="gln", group_size=4, placement="post")


@pytest.mark.parametrize("kwargs, msg", [
    ({"group_sizes": (3, 7)}, "divide width"),
    ({"group_sizes": ()}, "must not be empty"),
    ({"group_sizes": (1,)}, ">= 2"),
    ({"group_sizes": (4, 4)}, "distinct"),
    ({"placement": "middle"}, "placement"),
    ({"seeds": 1}, "seeds"),
    ({"depth": 0}, "depth"),
])
def test_study_rejects_bad_arguments(kwargs, msg):
    args = {"activation": None, "group_sizes": (3,), "depth": 1, "width": 12, "seeds": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=msg):
        L.group_size_study(**args)


def test_propagate_runs_ln_net_and_predict_fits_labels():
    rng = np.random.default_rng(5)
    for m in (6, 12):
        X = rng.standard_normal((m, 2))
        y = rng.integers(0, 2, m)
        net = L.ln_net_classifier(X, y)
        assert set(net.widths) <= {3, 1} and net.widths[-1] == 1
        traj = meanfield.propagate(net, X=X)
        assert traj.gram.shape == (net.depth + 1, m, m)
        # after every Linear -> LayerNorm block each sample has 3 features of mean square 1
        np.testing.assert_allclose(np.diagonal(traj.gram[1:-1], axis1=1, axis2=2), 1.0, rtol=1e-12)
        score = traj.info["features"][:, 0]
        np.testing.assert_array_equal(np.where(score > 0, 1, 0), y)
        np.testing.assert_array_equal(L.predict(net, X), y)
        # the simulator runs the same fixed network: every seed gives the same Grams
        sim = meanfield.simulate(net, X, width=3, seeds=2)
        np.testing.assert_allclose(sim.gram, np.broadcast_to(traj.gram, sim.gram.shape), atol=1e-10)


def test_predict_grid_chunks_and_matches_predict():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((8, 2))
    y = np.array([0, 1] * 4)
    net = L.ln_net_classifier(X, y)
    xx, yy, lab = L.predict_grid(net, (-2, 2), (-1, 1), num=30, chunk=100)
    assert xx.shape == yy.shape == lab.shape == (30, 30)
    pts = np.column_stack([xx.ravel(), yy.ravel()])
    np.testing.assert_array_equal(lab.ravel(), L.predict(net, pts))
    assert set(np.unique(lab)) <= {0, 1} and len(np.unique(lab)) == 2
    with pytest.raises(ValueError, match="xlim"):
        L.predict_grid(net, (1, 0))
