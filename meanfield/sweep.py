"""Parameter sweeps over an executor: local processes or a Dask cluster, resumable, never pickles on disk.

A sweep is a grid (Cartesian product) and an optional zip (parallel lists) over network fields
(depth, activation, norm, placement, sigma_w, sigma_b, centering, ...), the batch (n, input_dim,
input_correlation), the engines ("meanfield", "simulate") and, for the simulator, width and seeds.
Each point runs `propagate` or `simulate` on an `mlp` and records per-layer measures in a tidy table:
one row per point and layer.

Results go to ``out_dir`` incrementally: ``sweep.json`` (the config), then one small CSV per finished
point in ``points/`` (and ``errors/<id>.json`` for a point that failed after its retries). Re-running
the same sweep skips the points already on disk, so an interrupted run loses only the points in flight.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meanfield.core.validate import check_bool, check_choice, check_int
from meanfield.network import check_placement, mlp, norm_layers

__all__ = ["Sweep", "run_point", "run_sweep", "load_results", "load_errors", "point_id", "NETWORK_FIELDS",
           "BATCH_FIELDS", "RUN_FIELDS"]

NETWORK_FIELDS = ("depth", "activation", "norm", "placement", "sigma_w", "sigma_b", "centering", "residual",
                  "groups", "group_size", "bn_mode", "wn_init")
BATCH_FIELDS = ("n", "input_dim", "input_correlation", "data_seed")
RUN_FIELDS = ("engine", "width", "seeds", "seed", "backend", "gradients")
ALL_FIELDS = NETWORK_FIELDS + BATCH_FIELDS + RUN_FIELDS
DEFAULTS = {"depth": 10, "activation": "relu", "norm": None, "placement": "post", "sigma_w": 1.0,
            "sigma_b": 0.0, "centering": None, "residual": None, "groups": None, "group_size": None,
            "bn_mode": "exact", "wn_init": "fixed", "n": 8, "input_dim": 32, "input_correlation": None,
            "data_seed": 0, "engine": "meanfield", "width": 256, "seeds": 8, "seed": 0, "backend": "numpy",
            "gradients": False}
MEASURES = ("isometry_gap", "potential", "mean_correlation", "gamma")
# fields whose value may be None; TOML has no null, so the strings "none"/"null" (any case) stand for it
NULLABLE_FIELDS = ("norm", "centering", "residual", "groups", "group_size", "input_correlation")
_NULL_STRINGS = ("none", "null")


def _none_if_null(value):
    return None if isinstance(value, str) and value.strip().lower() in _NULL_STRINGS else value


def _nearest(name: str, options) -> str:
    import difflib

    m = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {m[0]!r}?)" if m else ""


def _check_fields(d: dict, where: str):
    for k in d:
        if k not in ALL_FIELDS:
            raise ValueError(f"{where}: unknown field {k!r}{_nearest(k, ALL_FIELDS)}; allowed: {', '.join(ALL_FIELDS)}")


@dataclass
class Sweep:
    """A grid (and optional zip) of sweep points.

    Parameters
    ----------
    grid : dict field -> list of values (Cartesian product)
    zip : dict field -> list of values (all lists of equal length, iterated together)
    fixed : dict field -> value applied to every point
    measures : per-layer measures to record (isometry_gap, potential, mean_correlation)

    The value None of the fields in ``NULLABLE_FIELDS`` (norm, centering, ...) may also be written as
    the string "none" (TOML has no null). Points that coincide after the defaults are filled in (and,
    for the mean-field engine, after the simulator-only fields are reset) are run once.
    """

    grid: dict = field(default_factory=dict)
    zip: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    measures: tuple = MEASURES

    def __post_init__(self):
        for name, d in (("grid", self.grid), ("zip", self.zip), ("fixed", self.fixed)):
            if not isinstance(d, dict):
                raise ValueError(f"Sweep: {name} must be a dict of fields, got {type(d).__name__}")
            _check_fields(d, f"Sweep.{name}")
        for k, v in list(self.grid.items()) + list(self.zip.items()):
            if not isinstance(v, (list, tuple)) or len(v) == 0:
                raise ValueError(f"Sweep: values of {k!r} must be a non-empty list, got {v!r}")
        lens = {len(v) for v in self.zip.values()}
        if len(lens) > 1:
            raise ValueError(f"Sweep.zip: all lists must have the same length, got lengths {sorted(lens)}")
        for m in self.measures:
            if m not in MEASURES:
                raise ValueError(f"Sweep: measure {m!r} unknown{_nearest(m, MEASURES)}; allowed: {MEASURES}")
        self.measures = tuple(self.measures)

    @classmethod
    def from_dict(cls, d: dict) -> Sweep:
        allowed = {"grid", "zip", "fixed", "measures"}
        for k in d:
            if k not in allowed:
                raise ValueError(f"sweep config: unknown key {k!r}{_nearest(k, allowed)}; allowed: {sorted(allowed)}")
        return cls(grid=dict(d.get("grid", {})), zip=dict(d.get("zip", {})), fixed=dict(d.get("fixed", {})),
                   measures=tuple(d.get("measures", MEASURES)))

    def to_dict(self) -> dict:
        return {"grid": self.grid, "zip": self.zip, "fixed": self.fixed, "measures": list(self.measures)}

    def points(self) -> list[dict]:
        """All points, each a complete dict of fields (defaults filled in)."""
        gkeys = list(self.grid)
        zkeys = list(self.zip)
        zrows = list(zip(*[self.zip[k] for k in zkeys])) if zkeys else [()]
        out = []
        for gvals in itertools.product(*[self.grid[k] for k in gkeys]):
            for zvals in zrows:
                p = dict(DEFAULTS)
                p.update(self.fixed)
                p.update(dict(zip(gkeys, gvals)))
                p.update(dict(zip(zkeys, zvals)))
                for k in NULLABLE_FIELDS:
                    p[k] = _none_if_null(p[k])
                check_choice("Sweep", "engine", p["engine"], ("meanfield", "simulate"))
                norm_layers("Sweep", p["norm"])  # the one norm/placement vocabulary of meanfield.network
                check_placement("Sweep", p["placement"])
                if p["engine"] == "meanfield":  # simulator-only fields do not distinguish mean-field points
                    for k in ("width", "seeds", "seed", "backend", "gradients"):
                        p[k] = DEFAULTS[k]
                out.append(p)
        uniq = {point_id(p): p for p in out}
        return list(uniq.values())


def point_id(p: dict) -> str:
    """A stable short id of a point (hash of its sorted JSON)."""
    return hashlib.sha1(json.dumps(p, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _batch(p: dict) -> np.ndarray:
    rng = np.random.default_rng(p["data_seed"])
    d = check_int("run_point", "input_dim", p["input_dim"], lo=1)
    X = rng.standard_normal((check_int("run_point", "n", p["n"], lo=1), d))
    rc = p.get("input_correlation")
    if rc is not None:  # a common component with the requested correlation between inputs
        common = rng.standard_normal(d)
        X = math.sqrt(1 - rc) * X + math.sqrt(rc) * common
    return X


def _network(p: dict):
    kw = {k: p[k] for k in ("activation", "norm", "placement", "sigma_w", "sigma_b", "centering", "residual",
                            "groups", "group_size", "bn_mode", "wn_init")}
    return mlp(p["depth"], **kw)


def run_point(p: dict, measures=MEASURES) -> list[dict]:
    """Run one sweep point and return its rows (one per layer).

    A simulation row holds, per measure, the seed mean, standard deviation, median and 10% / 90%
    quantiles (``<measure>_std``, ``_median``, ``_q10``, ``_q90``; `meanfield.plot.seed_quantiles`).
    """
    from meanfield.finite import simulate
    from meanfield.infinite import propagate
    from meanfield.plot import seed_quantiles

    net = _network(p)
    X = _batch(p)
    if p["engine"] == "meanfield":
        traj = propagate(net, X=X)
    else:
        traj = simulate(net, X, width=p["width"], seeds=p["seeds"], seed=p["seed"], backend=p["backend"],
                        gradients=check_bool("run_point", "gradients", p["gradients"]), progress=False)
    vals = {m: np.asarray(getattr(traj, m)()) for m in measures}
    rows = []
    for layer in range(traj.depth + 1):
        row = {k: p[k] for k in ALL_FIELDS}
        row["layer"] = layer
        for m, v in vals.items():
            if traj.seeded:
                col = v[:, layer]
                med, q10, q90 = seed_quantiles(col, (0.5, 0.1, 0.9))
                with np.errstate(invalid="ignore", over="ignore"):
                    row[m] = float(np.mean(col))
                    row[m + "_std"] = float(np.std(col, ddof=1)) if col.size > 1 else 0.0
                row[m + "_median"] = float(med)
                row[m + "_q10"] = float(q10)  # +inf seeds (singular Grams) count as +inf, as in the median
                row[m + "_q90"] = float(q90)
            else:
                row[m] = float(v[layer])
        if traj.grad_norms is not None:
            row["grad_norm"] = float(np.mean(traj.grad_norms[:, layer]))
        rows.append(row)
    return rows


def _run_with_retries(p: dict, measures, retries: int):
    err = None
    for _ in range(retries + 1):
        try:
            return point_id(p), run_point(p, measures), None
        except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
            err = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
    return point_id(p), None, err


def _write_rows(path: Path, rows: list[dict]):
    import csv

    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    os.replace(tmp, path)


def _executor(scheduler: str | None, workers: int | None, local_cluster: bool):
    """(executor, closer) for local processes, a Dask scheduler address, or a local Dask cluster."""
    if scheduler is not None or local_cluster:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ImportError("Dask execution needs the dask extra: pip install 'meanfield-hermite[dask]'") from None
        if scheduler is not None:
            client = Client(scheduler)
            cluster = None
        else:
            cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
        ex = client.get_executor()

        def close():
            client.close()
            if cluster is not None:
                cluster.close()

        return ex, close
    if workers == 0:
        return _InlineExecutor(), lambda: None
    ex = cf.ProcessPoolExecutor(max_workers=workers or min(2, os.cpu_count() or 1))
    return ex, lambda: ex.shutdown(wait=True, cancel_futures=True)


class _InlineExecutor(cf.Executor):
    """Runs each task at submit time in this process (workers=0; handy for debugging)."""

    def submit(self, fn, /, *args, **kwargs):
        fut = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001
            fut.set_exception(exc)
        return fut


def run_sweep(sweep: Sweep | dict, out_dir, *, executor: cf.Executor | None = None, workers: int | None = None,
              scheduler: str | None = None, local_cluster: bool = False, retries: int = 1,
              progress: bool | None = None):
    """Run (or resume) a sweep and return its table as a pandas DataFrame.

    Parameters
    ----------
    sweep : Sweep or its dict form
    out_dir : directory for sweep.json, points/*.csv and errors/*.json
    executor : any concurrent.futures.Executor (overrides the next three)
    workers : local process count (default min(2, cores)); 0 runs inline in this process
    scheduler : address of a Dask distributed scheduler ("tcp://host:8786")
    local_cluster : start (and stop) a dask.distributed.LocalCluster with ``workers`` workers
    retries : extra attempts for a failing point before its error is recorded
    progress : tqdm bar with an estimate of the remaining time (None: only on a terminal)
    """
    if isinstance(sweep, dict):
        sweep = Sweep.from_dict(sweep)
    out = Path(out_dir)
    (out / "points").mkdir(parents=True, exist_ok=True)
    (out / "errors").mkdir(exist_ok=True)
    cfg = out / "sweep.json"
    new_cfg = json.dumps(sweep.to_dict(), sort_keys=True, indent=1, default=str)
    if cfg.exists() and cfg.read_text() != new_cfg:
        # a different sweep in the same directory: keep finished points (ids are content hashes)
        cfg.write_text(new_cfg)
    elif not cfg.exists():
        cfg.write_text(new_cfg)
    pts = sweep.points()
    todo = [p for p in pts if not (out / "points" / f"{point_id(p)}.csv").exists()]
    if progress is None:
        progress = sys.stderr.isatty() and len(todo) > 1
    bar = None
    if progress and todo:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="sweep", unit="pt")
        except ImportError:
            bar = None
    close = lambda: None
    if executor is None and todo:
        executor, close = _executor(scheduler, workers, local_cluster)
    t0 = time.time()
    # An executor that runs tasks at submit time (workers=0) gets one point at a time, so that each
    # finished point is on disk before the next starts; pools get every point at once.
    window = 1 if isinstance(executor, _InlineExecutor) else max(len(todo), 1)
    pending_points = iter(todo)
    futures: dict = {}
    pending: set = set()

    def fill():
        while len(pending) < window:
            p = next(pending_points, None)
            if p is None:
                return
            fut = executor.submit(_run_with_retries, p, sweep.measures, retries)
            futures[fut] = p
            pending.add(fut)

    done = 0
    try:
        fill()
        while pending:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                pending.discard(fut)
                p = futures.pop(fut)
                try:
                    pid, rows, err = fut.result()
                except Exception as exc:  # noqa: BLE001 - the task itself failed (a worker died, ...)
                    pid, rows = point_id(p), None
                    err = f"{type(exc).__name__}: {exc} (the task failed outside the point: worker lost or crashed)"
                if rows is not None:
                    _write_rows(out / "points" / f"{pid}.csv", rows)
                    errf = out / "errors" / f"{pid}.json"
                    if errf.exists():
                        errf.unlink()
                else:
                    (out / "errors" / f"{pid}.json").write_text(json.dumps({"point": p, "error": err}, default=str))
                done += 1
                if bar is not None:
                    bar.update(1)
                elif progress:
                    eta = (time.time() - t0) / done * (len(todo) - done)
                    print(f"sweep: {done}/{len(todo)} points, ~{eta:.0f} s left", file=sys.stderr)
            fill()
    finally:
        if bar is not None:
            bar.close()
        close()
    return load_results(out)


def load_results(out_dir):
    """The table of a sweep directory (pandas DataFrame; empty if nothing finished)."""
    import pandas as pd

    files = sorted(Path(out_dir, "points").glob("*.csv"))
    if not files:
        return pd.DataFrame()
    df = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    return df.sort_values([c for c in ("activation", "norm", "placement", "engine", "width", "depth", "layer")
                           if c in df.columns]).reset_index(drop=True)


def load_errors(out_dir) -> list[dict]:
    """Points of a sweep directory that failed, with their error text."""
    return [json.loads(f.read_text()) for f in sorted(Path(out_dir, "errors").glob("*.json"))]
