"""Tests of meanfield.sweep: point expansion, validation, resumable incremental runs, error handling and
the executors (inline, local processes, a real dask.distributed.LocalCluster).

Truths used: the grid/zip expansion and the dedup rule are checked against itertools written here; the
table's values against `propagate` / `simulate` called directly on the same network and batch.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import math
import time
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pandas as pd
import pytest

import meanfield
from meanfield import sweep as sw
from meanfield.finite import simulate
from meanfield.sweep import Sweep, load_errors, load_results, point_id, run_point, run_sweep

TINY = {"depth": 3, "n": 4, "input_dim": 8, "width": 16, "seeds": 3}


def tiny_sweep(**grid) -> Sweep:
    grid = grid or {"activation": ["relu", "tanh"], "engine": ["meanfield", "simulate"]}
    return Sweep(grid=grid, fixed=dict(TINY))


# ---------------------------------------------------------------------------------------------------
# expansion and validation
def test_grid_is_the_cartesian_product_with_defaults_filled_in():
    s = Sweep(grid={"depth": [2, 3, 5], "activation": ["relu", "tanh"]}, fixed={"norm": "ln"})
    pts = s.points()
    assert len(pts) == 6
    assert {(p["depth"], p["activation"]) for p in pts} == set(itertools.product([2, 3, 5], ["relu", "tanh"]))
    for p in pts:
        assert set(p) == set(sw.ALL_FIELDS)
        assert p["norm"] == "ln"
        assert p["sigma_w"] == sw.DEFAULTS["sigma_w"] and p["engine"] == "meanfield"


def test_zip_iterates_lists_together_inside_the_grid():
    s = Sweep(grid={"activation": ["relu", "tanh"]}, zip={"depth": [2, 4, 6], "sigma_w": [1.0, 1.5, 2.0]})
    pts = s.points()
    assert len(pts) == 6  # 2 x 3, not 2 x 3 x 3
    assert {(p["activation"], p["depth"], p["sigma_w"]) for p in pts} == {
        (a, d, w) for a in ("relu", "tanh") for d, w in zip([2, 4, 6], [1.0, 1.5, 2.0])}
    with pytest.raises(ValueError, match="same length"):
        Sweep(zip={"depth": [2, 4], "sigma_w": [1.0]})


def test_duplicate_points_are_run_once():
    assert len(Sweep(grid={"depth": [2, 2, 3]}).points()) == 2
    # a grid value equal to the fixed/default value collapses too
    assert len(Sweep(grid={"sigma_w": [1.0, 1.0]}, fixed={"sigma_w": 1.0}).points()) == 1
    # simulator-only fields do not distinguish mean-field points
    s = Sweep(grid={"engine": ["meanfield", "simulate"], "width": [16, 64], "seeds": [2, 4]})
    pts = s.points()
    assert sum(p["engine"] == "meanfield" for p in pts) == 1
    assert sum(p["engine"] == "simulate" for p in pts) == 4
    assert len({point_id(p) for p in pts}) == len(pts)


def test_point_ids_are_stable_content_hashes():
    p = Sweep(fixed={"depth": 4}).points()[0]
    assert point_id(p) == point_id(dict(reversed(list(p.items()))))
    assert point_id(p) != point_id({**p, "depth": 5})
    assert len(point_id(p)) == 16


@pytest.mark.parametrize("where, bad, near", [("grid", "detph", "depth"), ("zip", "sigma_ww", "sigma_w"),
                                              ("fixed", "activaton", "activation")])
def test_unknown_fields_are_rejected_with_the_nearest_valid_name(where, bad, near):
    with pytest.raises(ValueError, match=rf"unknown field '{bad}' \(did you mean '{near}'\?\)"):
        Sweep(**{where: {bad: [1] if where != "fixed" else 1}})


def test_other_invalid_sweeps():
    with pytest.raises(ValueError, match="did you mean 'isometry_gap'"):
        Sweep(measures=("isometry_gp",))
    with pytest.raises(ValueError, match="did you mean 'grid'"):
        Sweep.from_dict({"grd": {"depth": [1]}})
    with pytest.raises(ValueError, match="non-empty list"):
        Sweep(grid={"depth": 3})
    with pytest.raises(ValueError, match="non-empty list"):
        Sweep(grid={"depth": []})
    with pytest.raises(ValueError, match="engine"):
        Sweep(fixed={"engine": "theory"}).points()


def test_none_may_be_spelled_as_a_string():
    """TOML has no null: "none" stands for None in the nullable fields."""
    pts = Sweep(grid={"norm": ["none", "ln", None]}).points()
    assert sorted(str(p["norm"]) for p in pts) == ["None", "ln"]


def test_dict_round_trip():
    s = Sweep(grid={"depth": [2, 3]}, zip={"sigma_w": [1.0]}, fixed={"n": 4}, measures=("potential",))
    s2 = Sweep.from_dict(json.loads(json.dumps(s.to_dict())))
    assert s2.points() == s.points() and s2.measures == ("potential",)


# ---------------------------------------------------------------------------------------------------
# running
def test_table_has_one_row_per_point_and_layer_and_matches_the_engines(tmp_path):
    s = tiny_sweep()
    df = run_sweep(s, tmp_path, workers=0)
    pts = s.points()
    assert len(df) == sum(p["depth"] + 1 for p in pts) == 16
    key = ["activation", "engine", "layer"]
    assert (df.groupby(key).size() == 1).all()
    assert sorted(df["layer"].unique()) == [0, 1, 2, 3]
    for m in s.measures:
        for suffix in ("_std", "_median", "_q10", "_q90"):
            assert m + suffix in df.columns
    # the values are the engines' own
    for p in pts:
        net = meanfield.mlp(p["depth"], p["activation"])
        X = sw._batch(p)
        rows = df[(df["activation"] == p["activation"]) & (df["engine"] == p["engine"])].sort_values("layer")
        if p["engine"] == "meanfield":
            traj = meanfield.propagate(net, X=X)
            np.testing.assert_allclose(rows["isometry_gap"], traj.isometry_gap(), rtol=1e-12)
            np.testing.assert_allclose(rows["potential"], traj.potential(), rtol=1e-12)
            assert rows["isometry_gap_median"].isna().all()
        else:
            traj = simulate(net, X, width=p["width"], seeds=p["seeds"], seed=p["seed"], progress=False)
            gap = traj.isometry_gap()
            np.testing.assert_allclose(rows["isometry_gap"], gap.mean(axis=0), rtol=1e-12)
            np.testing.assert_allclose(rows["isometry_gap_median"], np.median(gap, axis=0), rtol=1e-12)
            np.testing.assert_allclose(rows["isometry_gap_q10"], np.quantile(gap, 0.1, axis=0), rtol=1e-12)
            np.testing.assert_allclose(rows["mean_correlation_q90"],
                                       np.quantile(traj.mean_correlation(), 0.9, axis=0), rtol=1e-12)
    # the input layer is the same batch for both engines
    first = df[df["layer"] == 0]
    np.testing.assert_allclose(first["isometry_gap"], first["isometry_gap"].iloc[0], rtol=1e-12)


def test_results_are_written_incrementally_one_csv_per_point(tmp_path, monkeypatch):
    s = tiny_sweep(depth=[1, 2, 3], activation=["relu"])
    seen = []
    real = sw.run_point

    def spy(p, measures):
        seen.append(len(list((tmp_path / "points").glob("*.csv"))))
        return real(p, measures)

    monkeypatch.setattr(sw, "run_point", spy)
    run_sweep(s, tmp_path, workers=0)
    assert seen == [0, 1, 2]  # every finished point is on disk before the next one starts
    files = sorted((tmp_path / "points").glob("*.csv"))
    assert sorted(f.stem for f in files) == sorted(point_id(p) for p in s.points())
    for f in files:
        t = pd.read_csv(f)
        assert len(t) == t["depth"].iloc[0] + 1
    assert json.loads((tmp_path / "sweep.json").read_text()) == json.loads(json.dumps(s.to_dict()))
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.tmp"))


def test_rerun_skips_finished_points(tmp_path, monkeypatch):
    s = tiny_sweep(depth=[1, 2], activation=["relu"])
    first = run_sweep(s, tmp_path, workers=0)
    mtimes = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "points").glob("*.csv")}
    calls = []
    real = sw.run_point

    def spy(p, measures):
        calls.append(p["depth"])
        return real(p, measures)

    monkeypatch.setattr(sw, "run_point", spy)
    again = run_sweep(s, tmp_path, workers=0)
    assert calls == []
    pd.testing.assert_frame_equal(first, again)
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / "points").glob("*.csv")} == mtimes
    # an extended sweep runs only its new point
    bigger = run_sweep(tiny_sweep(depth=[1, 2, 3], activation=["relu"]), tmp_path, workers=0)
    assert calls == [3]
    assert len(bigger) == 2 + 3 + 4


def test_a_failing_point_is_retried_then_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    s = tiny_sweep(activation=["relu", "tanh", "sin"])
    calls = []
    real = sw.run_point

    def flaky(p, measures):
        calls.append(p["activation"])
        if p["activation"] == "tanh":
            raise RuntimeError("boom")
        return real(p, measures)

    monkeypatch.setattr(sw, "run_point", flaky)
    df = run_sweep(s, tmp_path, workers=0, retries=2)
    assert calls.count("tanh") == 3 and calls.count("relu") == 1 and calls.count("sin") == 1
    assert sorted(df["activation"].unique()) == ["relu", "sin"]
    errs = load_errors(tmp_path)
    assert len(errs) == 1
    assert errs[0]["point"]["activation"] == "tanh" and "RuntimeError: boom" in errs[0]["error"]
    # a later run retries only the failed point; on success its error record goes away
    monkeypatch.setattr(sw, "run_point", real)
    df = run_sweep(s, tmp_path, workers=0)
    assert sorted(df["activation"].unique()) == ["relu", "sin", "tanh"]
    assert load_errors(tmp_path) == []


def test_a_genuinely_bad_point_is_recorded_with_its_message(tmp_path):
    df = run_sweep(Sweep(grid={"activation": ["relu", "no_such_activation"]}, fixed={"depth": 2, "n": 3}),
                   tmp_path, workers=0, retries=0)
    assert set(df["activation"]) == {"relu"}
    (err,) = load_errors(tmp_path)
    assert "no_such_activation" in err["error"] and err["point"]["activation"] == "no_such_activation"


class _CrashingExecutor(cf.Executor):
    """Inline, except that the task of a tanh point fails as if its worker process had died."""

    def submit(self, fn, /, *args, **kwargs):
        fut = cf.Future()
        if args[0]["activation"] == "tanh":
            fut.set_exception(BrokenProcessPool("worker died"))
        else:
            fut.set_result(fn(*args, **kwargs))
        return fut


def test_a_lost_worker_is_recorded_without_stopping_the_sweep(tmp_path):
    df = run_sweep(tiny_sweep(activation=["relu", "tanh"]), tmp_path, executor=_CrashingExecutor())
    assert set(df["activation"]) == {"relu"}
    (err,) = load_errors(tmp_path)
    assert "BrokenProcessPool" in err["error"] and err["point"]["activation"] == "tanh"


def test_singular_grams_give_infinite_quantiles_without_warnings(recwarn):
    """n > width: every simulated Gram is singular, isometry gap +inf in every seed and summary."""
    p = dict(sw.DEFAULTS, depth=2, n=6, input_dim=8, width=3, seeds=4, engine="simulate")
    rows = run_point(p, ("isometry_gap",))
    last = rows[-1]
    for k in ("isometry_gap", "isometry_gap_median", "isometry_gap_q10", "isometry_gap_q90"):
        assert last[k] == math.inf
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_progress_reports_to_stderr(tmp_path, capsys):
    run_sweep(tiny_sweep(depth=[1, 2], activation=["relu"]), tmp_path, workers=0, progress=True)
    err = capsys.readouterr().err
    assert "sweep" in err


def test_load_results_of_an_empty_directory(tmp_path):
    assert load_results(tmp_path).empty
    assert load_errors(tmp_path) == []


# ---------------------------------------------------------------------------------------------------
# executors
def _sorted(df):
    return df.sort_values(["activation", "engine", "layer"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def inline_table(tmp_path_factory):
    return _sorted(run_sweep(tiny_sweep(), tmp_path_factory.mktemp("inline"), workers=0))


def test_process_pool_gives_the_inline_table(tmp_path, inline_table):
    with cf.ProcessPoolExecutor(max_workers=2) as ex:
        df = run_sweep(tiny_sweep(), tmp_path / "explicit", executor=ex)
    pd.testing.assert_frame_equal(_sorted(df), inline_table)
    df = run_sweep(tiny_sweep(), tmp_path / "workers", workers=2)  # the default executor: local processes
    pd.testing.assert_frame_equal(_sorted(df), inline_table)


def test_dask_local_cluster_gives_the_inline_table(tmp_path, inline_table):
    pytest.importorskip("distributed")
    t0 = time.time()
    df = run_sweep(tiny_sweep(), tmp_path, local_cluster=True, workers=2)
    pd.testing.assert_frame_equal(_sorted(df), inline_table)
    assert len(list((tmp_path / "points").glob("*.csv"))) == 4
    assert time.time() - t0 < 120
