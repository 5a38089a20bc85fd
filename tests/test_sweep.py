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
import os
import re
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

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
        t = pd.read_csv(f, skiprows=1)  # line 1: the checksum
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


@pytest.mark.parametrize("field, value, expect", [
    ("activation", "rellu", "activation='rellu' is not an activation"),
    ("depth", -3, "depth=-3 must be an integer >= 1"),
    ("depth", 2.5, "depth=2.5 must be an integer >= 1"),
    ("width", 0, "width=0 must be an integer >= 1"),
    ("seeds", 0, "seeds=0 must be an integer >= 1"),
    ("n", 0, "n=0 must be an integer >= 1"),
    ("input_dim", -1, "input_dim=-1 must be an integer >= 1"),
    ("input_correlation", 1.5, "input_correlation=1.5 must be in [0, 1]"),
    ("sigma_w", -1.0, "sigma_w=-1.0 must be in [0, inf]"),
    ("gradients", "yes", "gradients='yes' must be True or False"),
    ("bn_mode", "approx", "bn_mode='approx' must be one of 'exact', 'large_batch'"),
    ("seed", -1, "seed=-1 must be an integer >= 0"),
])
def test_the_whole_sweep_is_validated_before_any_work(tmp_path, monkeypatch, field, value, expect):
    """Issue 17.6: config values were validated only point by point, so a bad one surfaced as failed points
    (and `meanfield run` exited 0 with "0 rows"). Now one bad value in the grid stops the sweep before any
    point runs, with the field, the value and the allowed range named."""
    calls = []
    monkeypatch.setattr(sw, "run_point", lambda p, m: calls.append(p) or [])
    s = Sweep(grid={field: [sw.DEFAULTS[field] if sw.DEFAULTS[field] is not None else 0.5, value],
                    "engine": ["meanfield", "simulate"]}, fixed={"depth": 2, "n": 3})
    with pytest.raises(ValueError, match=re.escape(f"Sweep: {expect}")):
        run_sweep(s, tmp_path, workers=0)
    assert calls == [] and not (tmp_path / "points").exists()


def test_an_invalid_combination_names_the_network_fields():
    s = Sweep(fixed={"norm": "gln", "groups": 3}, grid={"group_size": [2]})
    with pytest.raises(ValueError, match=r"Sweep: the network of the point \(.*norm='gln'.*groups=3.*\) is "
                                         r"invalid: GroupLayerNorm: give exactly one of groups= or group_size="):
        s.validate()


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


# ---------------------------------------------------------------------------------------------------
# issue 17.6: damaged point files, orphaned workers, engine-specific fields
def _spy_on_points(monkeypatch) -> list:
    calls = []
    real = sw.run_point

    def spy(p, measures):
        calls.append(point_id(p))
        return real(p, measures)

    monkeypatch.setattr(sw, "run_point", spy)
    return calls


@pytest.mark.parametrize("damage", ["truncate_rows", "truncate_bytes", "empty", "binary", "no_checksum",
                                    "edited_value"])
def test_a_damaged_point_file_is_named_set_aside_and_recomputed(tmp_path, monkeypatch, damage):
    """Issue 17.6: a truncated point file was accepted (rows silently lost, never recomputed) and an empty
    or binary one aborted the run without naming the file. Every point file now carries a checksum."""
    s = tiny_sweep(depth=[2, 3], activation=["relu"])
    first = run_sweep(s, tmp_path, workers=0)
    victim = tmp_path / "points" / f"{point_id(s.points()[1])}.csv"
    data = victim.read_bytes()
    assert data.startswith(b"# meanfield-sweep-point sha256=")
    head, body = data.split(b"\n", 1)
    damaged = {"truncate_rows": data[: data.rstrip(b"\n").rfind(b"\n") + 1],  # the last row lost, cleanly
               "truncate_bytes": data[: len(data) // 2],
               "empty": b"",
               "binary": b"\x00\xff\xfe" * 50,
               "no_checksum": body,  # a plain CSV, as the first version wrote
               "edited_value": data.replace(b",relu,", b",tanh,", 1)}[damage]
    victim.write_bytes(damaged)
    assert sw.point_file_problem(victim) is not None
    with pytest.warns(sw.SweepWarning, match=re.escape(str(victim)) + " is damaged"):
        assert len(load_results(tmp_path)) == len(first) - (s.points()[1]["depth"] + 1)
    calls = _spy_on_points(monkeypatch)
    with pytest.warns(sw.SweepWarning, match=re.escape(str(victim)) + ".*set aside"):
        again = run_sweep(s, tmp_path, workers=0)
    assert calls == [victim.stem]  # only the damaged point is recomputed
    pd.testing.assert_frame_equal(again, first)
    assert (tmp_path / "points" / "damaged" / victim.name).read_bytes() == damaged
    assert sw.point_file_problem(victim) is None


def test_load_results_leaves_out_a_damaged_file_and_names_it(tmp_path):
    s = tiny_sweep(depth=[2, 3], activation=["relu"])
    first = run_sweep(s, tmp_path, workers=0)
    victim = tmp_path / "points" / f"{point_id(s.points()[0])}.csv"
    victim.write_bytes(victim.read_bytes()[:-40])
    with pytest.warns(sw.SweepWarning, match=re.escape(str(victim)) + r" is damaged \(checksum mismatch"):
        df = load_results(tmp_path)
    assert len(df) == len(first) - (s.points()[0]["depth"] + 1)


def test_a_damaged_error_record_still_counts_as_a_failure(tmp_path):
    (tmp_path / "errors").mkdir()
    (tmp_path / "errors" / "abc.json").write_bytes(b"\x00garbage")
    (err,) = load_errors(tmp_path)
    assert err["point"] is None and "abc.json" in err["error"]


def test_mean_field_rows_carry_no_width_or_seeds(tmp_path):
    """Issue 17.6: results.csv gave mean-field rows the default width/seeds, so filtering on width mixed
    the engines."""
    s = Sweep(grid={"engine": ["meanfield", "simulate"], "width": [16, 256]}, fixed=dict(TINY, width=None))
    for p in s.points():
        if p["engine"] == "meanfield":
            assert all(p[k] is None for k in sw.SIM_ONLY_FIELDS)
    df = run_sweep(s, tmp_path, workers=0)
    mf = df[df["engine"] == "meanfield"]
    assert len(mf) == TINY["depth"] + 1
    assert mf[list(sw.SIM_ONLY_FIELDS)].isna().all().all()
    assert set(df[df["width"] == 256]["engine"]) == {"simulate"}  # the default width selects no mean field
    assert str(df["width"].dtype) == "Int64" and sorted(df["width"].dropna()) == [16] * 4 + [256] * 4


def test_failed_points_are_counted_on_the_table(tmp_path, monkeypatch):
    monkeypatch.setattr(sw, "run_point", lambda p, m: (_ for _ in ()).throw(RuntimeError("boom")))
    df = run_sweep(tiny_sweep(), tmp_path, workers=0, retries=0)
    assert df.empty and df.attrs["failed"] == 4


def _children(pid: int) -> set:
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_pool_workers_die_with_a_killed_parent(tmp_path):
    """Issue 17.6: after SIGKILL of `meanfield run` its pool workers stayed alive as orphans."""
    import signal
    import subprocess
    import sys

    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        pytest.skip("kernel without /proc/<pid>/task/<tid>/children")
    cfg = tmp_path / "slow.toml"
    # exact BatchNorm after an activation: Monte Carlo in every block, tens of seconds per point
    cfg.write_text('[sweep]\ngrid = {depth = [400, 401]}\n'
                   'fixed = {norm = "bn", placement = "post", n = 24, activation = "tanh"}\n')
    exe = Path(sys.executable).with_name("meanfield")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "meanfield.cli"]
    proc = subprocess.Popen([*cmd, "run", str(cfg), "--out", str(tmp_path / "o"), "--workers", "2",
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        workers: set = set()
        while time.time() - t0 < 60 and len(workers) < 2:
            time.sleep(0.2)
            workers = _children(proc.pid)
        assert len(workers) >= 2, "the pool did not start"
        time.sleep(1.0)  # the workers are busy on their points
        assert all(_alive(w) for w in workers)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    t0 = time.time()
    while time.time() - t0 < 15 and any(_alive(w) for w in workers):
        time.sleep(0.2)
    left = [w for w in workers if _alive(w)]
    for w in left:  # do not leave them behind if the test fails
        os.kill(w, signal.SIGKILL)
    assert not left, "pool workers outlived their killed parent"
    assert not list((tmp_path / "o" / "points").glob("*.csv"))  # killed long before a point finished


def test_the_worker_guard_ends_a_worker_whose_parent_is_gone():
    """The initializer itself: a worker started for a parent that no longer exists exits at once."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    code = f"from meanfield.sweep import _die_with_parent; _die_with_parent({dead.pid}); print('survived')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "survived" not in r.stdout
