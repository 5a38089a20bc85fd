"""Parameter sweeps over an executor: local processes or a Dask cluster, resumable, never pickles on disk.

A sweep is a grid (Cartesian product) and an optional zip (parallel lists) over network fields
(depth, activation, norm, placement, sigma_w, sigma_b, centering, ...), the batch (n, input_dim,
input_correlation), the engines ("meanfield", "simulate") and, for the simulator, width and seeds.
Each point runs `propagate` or `simulate` on an `mlp` and records per-layer measures in a tidy table:
one row per point and layer.

The whole sweep is validated before any point runs (`Sweep.validate`): a bad value (an unknown
activation, depth -3, width 0, ...) raises one ValueError naming the field, the value and what is allowed.

Results go to ``out_dir`` incrementally: ``sweep.json`` (the config), then one small CSV per finished
point in ``points/`` (and ``errors/<id>.json`` for a point that failed after its retries). Each point file
starts with a line ``# meanfield-sweep-point sha256=<digest of the rest> rows=<count>``; a file whose
checksum or row count does not match (truncated, emptied, overwritten) is damaged: it is named (a
`SweepWarning`), moved to ``points/damaged/`` and its point recomputed. Re-running the same sweep skips
the points already on disk, so an interrupted run loses only the points in flight. Local worker processes
end with the process that started them, even when it is killed (SIGKILL).

Mean-field points have no width, seeds, seed, backend or gradients: those fields are empty (None in a
point, an empty cell in the table), so that filtering the table on width selects simulations only.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import itertools
import json
import math
import os
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meanfield.core.progress import bar as progress_bar
from meanfield.core.progress import check_progress, interactive
from meanfield.core.validate import check_bool, check_choice, check_int, check_real, check_seed
from meanfield.network import check_placement, mlp, norm_layers

__all__ = ["Sweep", "run_point", "run_sweep", "load_results", "load_errors", "point_id", "point_file_problem",
           "SweepWarning", "NETWORK_FIELDS", "BATCH_FIELDS", "RUN_FIELDS", "SIM_ONLY_FIELDS"]

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
SIM_ONLY_FIELDS = ("width", "seeds", "seed", "backend", "gradients")  # None on mean-field points
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
    grid : dict
        Field -> list of values (Cartesian product).
    zip : dict
        Field -> list of values (all lists of equal length, iterated together).
    fixed : dict
        Field -> value applied to every point.
    measures : tuple of str
        Per-layer measures to record (isometry_gap, potential, mean_correlation, gamma).

    Notes
    -----
    The value None of the fields in ``NULLABLE_FIELDS`` (norm, centering, ...) may also be written as
    the string "none" (TOML has no null). Points that coincide after the defaults are filled in (and,
    for the mean-field engine, after the simulator-only fields are set to None) are run once.
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
        """All points, each a complete dict of fields (defaults filled in; the simulator-only fields
        `SIM_ONLY_FIELDS` are None on mean-field points). Only the vocabulary is checked here; `validate`
        checks every value."""
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
                if p["engine"] == "meanfield":  # mean-field points have no width, seeds, ...
                    for k in SIM_ONLY_FIELDS:
                        p[k] = None
                out.append(p)
        uniq = {point_id(p): p for p in out}
        return list(uniq.values())

    def validate(self) -> list[dict]:
        """Check every value of every point before any work, and return the points.

        ValueError naming the field, its value and what is allowed ("Sweep: depth=-3 must be an integer
        >= 1"); a combination that no single field explains (e.g. a norm that needs ``groups``) names the
        network fields of the point.
        """
        pts = self.points()
        seen: set = set()
        for p in pts:
            for k in ALL_FIELDS:
                if p[k] is None and (k in NULLABLE_FIELDS or k in SIM_ONLY_FIELDS):
                    continue
                key = (k, json.dumps(p[k], sort_keys=True, default=repr))
                if key not in seen:
                    _check_field(k, p[k])
                    seen.add(key)
            net_key = json.dumps({k: p[k] for k in NETWORK_FIELDS}, sort_keys=True, default=repr)
            if net_key not in seen:
                try:
                    _network(p)
                except (ValueError, TypeError) as exc:
                    fields = ", ".join(f"{k}={p[k]!r}" for k in NETWORK_FIELDS if p[k] != DEFAULTS[k])
                    raise ValueError(f"Sweep: the network of the point ({fields or 'defaults'}) is invalid: "
                                     f"{exc}") from None
                seen.add(net_key)
        return pts


def _check_field(k: str, v) -> None:
    """One field's value, in the library's message style ("Sweep: <field>=<value> must be ...")."""
    if k in ("depth", "n", "input_dim", "width", "seeds", "groups", "group_size"):
        check_int("Sweep", k, v, lo=1)
    elif k in ("data_seed", "seed"):
        check_seed("Sweep", v, k)
    elif k in ("sigma_w", "sigma_b"):
        check_real("Sweep", k, v, lo=0.0)
    elif k == "residual":
        check_real("Sweep", k, v)
    elif k == "input_correlation":
        check_real("Sweep", k, v, lo=0.0, hi=1.0)
    elif k == "activation":
        import hermite

        try:
            hermite.activation(v)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"Sweep: activation={v!r} is not an activation: {exc}") from None
    elif k == "norm":
        norm_layers("Sweep", v)
    elif k == "placement":
        check_placement("Sweep", v)
    elif k == "centering":
        check_choice("Sweep", k, v, ("layer", "meanfield"))
    elif k == "bn_mode":
        check_choice("Sweep", k, v, ("exact", "large_batch"))
    elif k == "wn_init":
        check_choice("Sweep", k, v, ("fixed", "data"))
    elif k == "engine":
        check_choice("Sweep", k, v, ("meanfield", "simulate"))
    elif k == "gradients":
        check_bool("Sweep", k, v)
    elif k == "backend" and not (isinstance(v, str) and v):
        raise ValueError(f"Sweep: backend={v!r} must be the name of an array namespace ('numpy', 'cupy', ...)")


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
        traj = propagate(net, X=X, progress=False)  # the sweep has its own bar, over points
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


# ---------------------------------------------------------------------------------------------------
# point files: a checksummed CSV each
_MAGIC = "# meanfield-sweep-point"


class SweepWarning(UserWarning):
    """Something in a sweep directory needed attention (a damaged point file, set aside and recomputed)."""


class _Damaged(Exception):
    """A point file that does not validate; the message says why."""


def _write_rows(path: Path, rows: list[dict]):
    """Write a point's rows: a header line with the SHA-256 of the CSV body and its row count, then the CSV;
    atomically (a temporary file, flushed to disk, then renamed)."""
    import csv

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    body = buf.getvalue().encode()
    head = f"{_MAGIC} sha256={hashlib.sha256(body).hexdigest()} rows={len(rows)}\n".encode()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(head + body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_point(path: Path):
    """The rows of a point file as a DataFrame; `_Damaged` if it does not validate."""
    import pandas as pd

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise _Damaged(f"unreadable ({exc.strerror or exc})") from None
    if not data:
        raise _Damaged("empty")
    head, sep, body = data.partition(b"\n")
    parts = head.decode("ascii", "replace").split()
    if not sep or head[: len(_MAGIC)] != _MAGIC.encode() or len(parts) != 4:
        raise _Damaged("no checksum line (not a point file of this version, or overwritten)")
    digest = parts[2].removeprefix("sha256=")
    if hashlib.sha256(body).hexdigest() != digest:
        raise _Damaged("checksum mismatch (truncated or altered)")
    try:
        n_rows = int(parts[3].removeprefix("rows="))
        df = pd.read_csv(io.BytesIO(body))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Damaged(f"unparsable ({type(exc).__name__})") from None
    if len(df) != n_rows:
        raise _Damaged(f"{len(df)} rows where its header says {n_rows}")
    return df


def point_file_problem(path) -> str | None:
    """None if the point file at ``path`` validates (checksum and row count), else what is wrong with it."""
    try:
        _read_point(Path(path))
    except _Damaged as exc:
        return str(exc)
    return None


def _set_aside(path: Path, why: str) -> Path:
    """Move a damaged point file to points/damaged/ (never overwriting an earlier one) and warn."""
    dest_dir = path.parent / "damaged"
    dest_dir.mkdir(exist_ok=True)
    dest = dest_dir / path.name
    k = 1
    while dest.exists():
        dest = dest_dir / f"{path.stem}.{k}{path.suffix}"
        k += 1
    os.replace(path, dest)
    warnings.warn(f"sweep: point file {path} is damaged ({why}); set aside as {dest}, its point is recomputed",
                  SweepWarning, stacklevel=3)
    return dest


# ---------------------------------------------------------------------------------------------------
# executors
def _die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when the process that started the pool ends, even by SIGKILL.

    On Linux the kernel delivers SIGKILL at the parent's death (prctl PR_SET_PDEATHSIG); everywhere a
    daemon thread also checks once a second that the parent is still the same, alive process.
    """
    start_ppid = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - an unusual libc: the thread below remains
            pass

    def parent_gone() -> bool:
        if os.getppid() != start_ppid:  # re-parented: our parent (or the fork server) has died
            return True
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # pragma: no cover - alive, owned by someone else
            return False
        return False

    if parent_gone():
        os._exit(1)

    def watch():
        while not parent_gone():
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="meanfield-parent-watch", daemon=True).start()


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
    ex = cf.ProcessPoolExecutor(max_workers=workers or min(2, os.cpu_count() or 1), initializer=_die_with_parent,
                                initargs=(os.getpid(),))
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

    The sweep is validated first (`Sweep.validate`: ValueError naming the field, before any work). Points
    whose file is on disk and validates are skipped; a damaged file is set aside and its point recomputed
    (`SweepWarning`). A point that still fails after its retries is recorded in ``errors/`` and the sweep
    goes on; ``df.attrs["failed"]`` counts those points (`load_errors` gives them), so a caller can tell a
    complete table from a partial one.

    Parameters
    ----------
    sweep : Sweep or dict
        The sweep, or its dict form (`Sweep.from_dict`).
    out_dir : path
        Directory for sweep.json, points/*.csv and errors/*.json.
    executor : concurrent.futures.Executor, optional
        Any executor (overrides the next three).
    workers : int, optional
        Local process count (default min(2, cores)); 0 runs inline in this process. The processes end
        with this one, even when it is killed.
    scheduler : str, optional
        Address of a Dask distributed scheduler ("tcp://host:8786").
    local_cluster : bool
        Start (and stop) a dask.distributed.LocalCluster with ``workers`` workers.
    retries : int
        Extra attempts for a failing point before its error is recorded.
    progress : None, True or False
        A tqdm bar over points with an estimate of the remaining time; None shows it when more than one
        point is left and stderr is a terminal or this runs in a notebook.

    Returns
    -------
    pandas.DataFrame
        One row per finished point and block (`load_results`).
    """
    if isinstance(sweep, dict):
        sweep = Sweep.from_dict(sweep)
    retries = check_int("run_sweep", "retries", retries, lo=0)
    check_progress("run_sweep", progress)
    pts = sweep.validate()
    out = Path(out_dir)
    (out / "points").mkdir(parents=True, exist_ok=True)
    (out / "errors").mkdir(exist_ok=True)
    cfg = out / "sweep.json"
    new_cfg = json.dumps(sweep.to_dict(), sort_keys=True, indent=1, default=str)
    # a different sweep in the same directory keeps the finished points (ids are content hashes)
    if not cfg.exists() or cfg.read_text(errors="replace") != new_cfg:
        cfg.write_text(new_cfg)
    todo = []
    for p in pts:
        f = out / "points" / f"{point_id(p)}.csv"
        if f.exists():
            why = point_file_problem(f)
            if why is None:
                continue
            _set_aside(f, why)
        todo.append(p)
    if progress is None:
        progress = len(todo) > 1 and interactive()
    bar = progress_bar(len(todo), "sweep", "pt") if progress and todo else None
    close = lambda: None
    if executor is None and todo:
        executor, close = _executor(scheduler, workers, local_cluster)
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
                if bar is not None:
                    bar.update(1)
            fill()
    finally:
        if bar is not None:
            bar.close()
        close()
    df = load_results(out)
    ids = {point_id(p) for p in pts}
    df.attrs["failed"] = sum(1 for f in (out / "errors").glob("*.json") if f.stem in ids)
    return df


def load_results(out_dir):
    """The table of a sweep directory (pandas DataFrame; empty if nothing finished).

    Point files that do not validate (`point_file_problem`) are left out with a `SweepWarning` naming
    them; ``run_sweep`` on the same directory recomputes them. Integer fields that are empty on mean-field
    rows (width, seeds, seed) are pandas' nullable integers.
    """
    import pandas as pd

    frames = []
    for f in sorted(Path(out_dir, "points").glob("*.csv")):
        try:
            frames.append(_read_point(f))
        except _Damaged as exc:
            warnings.warn(f"sweep: point file {f} is damaged ({exc}); left out (run the sweep again to "
                          "recompute it)", SweepWarning, stacklevel=2)
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    for c in ("width", "seeds", "seed"):
        if c in df.columns:
            df[c] = df[c].astype("Int64")
    return df.sort_values([c for c in ("activation", "norm", "placement", "engine", "width", "depth", "layer")
                           if c in df.columns]).reset_index(drop=True)


def load_errors(out_dir) -> list[dict]:
    """Points of a sweep directory that failed, with their error text (a damaged error record is
    reported as such, with ``point`` None)."""
    out = []
    for f in sorted(Path(out_dir, "errors").glob("*.json")):
        try:
            rec = json.loads(f.read_text())
            if not isinstance(rec, dict):
                raise ValueError("not a record")
        except (ValueError, OSError) as exc:
            rec = {"point": None, "error": f"damaged error record {f}: {type(exc).__name__}"}
        out.append(rec)
    return out
