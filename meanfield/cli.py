"""The `meanfield` command.

    meanfield --version
    meanfield demo [--out FILE] [--quick]
    meanfield run CONFIG.toml [--out DIR] [--scheduler ADDRESS | --workers N | --local-cluster] [--no-progress]
    meanfield plot DIR
    meanfield coefficients ACT [-K N] [--q Q] [--exact] [--json]
    meanfield kernel ACT --rho R [R ...] [--q1 Q] [--q2 Q] [--derivative 1] [--centered] [--json]
    meanfield maps ACT --sigma-b B [--sigma-w W] [--json]

A user mistake (unknown activation, bad config key or value, unreadable file, ...) prints one line saying
what was wrong and what is allowed, and exits with status 2; never a traceback. `run` validates the whole
config before any point runs. A `run` in which some points failed (see DIR/errors/) and a `plot` that had
to leave out damaged point files exit with status 1, after writing what they could.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

__all__ = ["main", "demo", "demo_figure", "draw_figures"]


class UserError(Exception):
    """A mistake in the command line or the config: reported in one line, exit status 2."""


# ------------------------------------------------------------------------------------------------
TANH_NOTE = ("The two tanh panels are nearly the same, and rightly so: tanh is odd, so its outputs are already "
             "centred and LayerNorm after it\nonly rescales each sample; after the first block both placements "
             "iterate the same correlation map. ReLU's outputs have a mean,\nwhich LayerNorm after the activation "
             "removes: its two placements differ.")


def demo(out: str = "meanfield-demo.png", quick: bool = False) -> Path:
    """Isometry-gap depth curves, mean field against simulation at two widths, for ReLU and tanh with
    LayerNorm before and after the activation; saved as a PNG. Returns the path.

    The two tanh panels nearly coincide (tanh is odd: LayerNorm after it only rescales), which the
    figure says in a note under the panels (`TANH_NOTE`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = demo_figure(quick)
    path = Path(out).resolve()
    fig.savefig(path)
    plt.close(fig)
    return path


def demo_figure(quick: bool = False):
    """The figure of `demo` (a matplotlib Figure, left open)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from meanfield import plot
    from meanfield.finite import simulate
    from meanfield.infinite import propagate
    from meanfield.network import mlp

    depth = 12 if quick else 30
    widths = (64, 256) if quick else (128, 512)
    seeds = 6 if quick else 16
    rng = np.random.default_rng(0)
    n, d = 8, 64
    common = rng.standard_normal(d)
    X = 0.6 * rng.standard_normal((n, d)) + 0.8 * common  # strongly correlated inputs
    with plot.paper_style():
        fig, axes = plt.subplots(2, 2, figsize=(8, 6.4), sharex=True)
        for i, act in enumerate(("relu", "tanh")):
            for j, placement in enumerate(("pre", "post")):
                net = mlp(depth, act, norm="ln", placement=placement, sigma_w=1.0)
                mf = propagate(net, X=X)
                sims = {w: simulate(net, X, width=w, seeds=seeds, seed=1, progress=False) for w in widths}
                ax = axes[i, j]
                title = f"{act}, LayerNorm {placement}" + (" (≈ pre, see note)" if (act, placement) ==
                                                           ("tanh", "post") else "")
                plot.theory_vs_simulation(mf, sims, "isometry_gap", ax=ax, title=title)
                ax.set_yscale("log")
                if i == 0:
                    ax.set_xlabel("")
        fig.tight_layout(rect=(0, 0.09, 1, 1))
        fig.text(0.01, 0.01, TANH_NOTE, fontsize=8, va="bottom", ha="left")
    return fig


# ------------------------------------------------------------------------------------------------
def _load_config(path: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    p = Path(path)
    if not p.is_file():
        raise UserError(f"cannot read config file {path!r}: no such file")
    try:
        cfg = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path!r} is not valid TOML: {exc}") from None
    allowed = {"sweep", "figures", "out"}
    for k in cfg:
        if k not in allowed:
            from meanfield.sweep import _nearest

            raise UserError(f"config: unknown top-level key {k!r}{_nearest(k, allowed)}; allowed: {sorted(allowed)}")
    if "sweep" not in cfg:
        raise UserError("config: missing [sweep] table (with grid/zip/fixed)")
    if not isinstance(cfg["sweep"], dict):
        raise UserError("config: 'sweep' must be a table ([sweep] with grid/zip/fixed/measures)")
    for k in ("grid", "zip", "fixed"):
        if not isinstance(cfg["sweep"].get(k, {}), dict):
            raise UserError(f"config: sweep.{k} must be a table (field = [values]), got {cfg['sweep'][k]!r}")
    return cfg


FIGURE_KEYS = {"measure", "by", "file", "logy", "title", "where", "note"}


def _check_figures(figs, measures=None) -> list:
    """Validate the [[figures]] tables: keys, measure (one the sweep records), `by` and `where` fields."""
    if not isinstance(figs, list) or not all(isinstance(f, dict) for f in figs):
        raise UserError("config: [[figures]] must be an array of tables")
    from meanfield.sweep import ALL_FIELDS, MEASURES, _nearest

    measures = tuple(measures) if measures is not None else MEASURES
    for f in figs:
        for k in f:
            if k not in FIGURE_KEYS:
                raise UserError(f"config: unknown figure key {k!r}{_nearest(k, FIGURE_KEYS)}; "
                                f"allowed: {sorted(FIGURE_KEYS)}")
        m = f.get("measure", "isometry_gap")
        if m not in measures:
            raise UserError(f"config: figure measure {m!r}{_nearest(str(m), measures)} is not recorded; "
                            f"allowed: {measures} (the sweep's measures)")
        by = f.get("by", [])
        by = [by] if isinstance(by, str) else by
        where = f.get("where", {})
        if not isinstance(by, list) or not isinstance(where, dict):
            raise UserError("config: figure 'by' must be a field name or a list of them, 'where' a table "
                            "(field = value)")
        for col in list(by) + list(where):
            if col not in ALL_FIELDS:
                raise UserError(f"config: figure field {col!r} unknown{_nearest(str(col), ALL_FIELDS)}; "
                                f"allowed: {', '.join(ALL_FIELDS)}")
    return figs


def _select(data, col: str, val):
    """Rows of ``data`` whose ``col`` equals ``val`` ("none" and None select the missing values)."""
    from meanfield.sweep import _none_if_null

    val = _none_if_null(val)
    if val is None:
        return data[data[col].isna()]
    return data[data[col] == val]


def draw_figures(df, figs: list, out_dir: Path) -> list:
    """Depth curves from a sweep table (`meanfield.plot.sweep_curves`), one PNG per figure.

    A figure is a table with ``measure`` (default isometry_gap), ``by`` (fields named in the legend,
    default activation, norm, placement), ``where`` (field = value filters; "none" selects None),
    ``logy``, ``title``, ``note`` (a line of text under the axes, e.g. why two curves coincide) and
    ``file``. Curves are split by ``by``, the engine and the width, and also by any other field that
    varies in the selected rows (depth, sigma_w, ...), so two sweep points never share one line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from meanfield import plot

    paths = []
    for k, f in enumerate(figs):
        measure = f.get("measure", "isometry_gap")
        data = df
        for col, val in (f.get("where") or {}).items():
            if col not in data.columns:
                raise UserError(f"figure {k + 1}: where-field {col!r} is not a column of the results")
            data = _select(data, col, val)
        if not len(data):
            raise UserError(f"figure {k + 1}: where={f.get('where')!r} selects no rows of the results")
        if measure not in data.columns:
            raise UserError(f"figure {k + 1}: measure {measure!r} was not recorded by this sweep")
        with plot.paper_style():
            fig, ax = plt.subplots(figsize=(5, 3.5))
            plot.sweep_curves(data, measure, by=f.get("by", ["activation", "norm", "placement"]), ax=ax,
                              logy=bool(f.get("logy")), title=f.get("title"), note=f.get("note"))
            path = out_dir / f.get("file", f"figure_{k + 1}_{measure}.png")
            fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


@contextmanager
def _warnings_as_lines():
    """Show the sweep's warnings (a damaged point file, ...) as one line each on stderr, as they happen."""
    from meanfield.sweep import SweepWarning

    seen = []

    def show(message, category, *args, **kwargs):
        seen.append(message)
        print(f"meanfield: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", SweepWarning)
        warnings.showwarning = show
        yield seen


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read {what} {str(path)!r}: {type(exc).__name__}") from None


def _cmd_run(args) -> int:
    from meanfield.sweep import Sweep, load_errors, point_id, run_sweep

    cfg = _load_config(args.config)
    try:
        sweep = Sweep.from_dict(cfg["sweep"])
        sweep.validate()  # every value of every point, before any work
    except (ValueError, TypeError) as exc:
        raise UserError(f"config: {exc}") from None
    figs = _check_figures(cfg.get("figures", [{"measure": sweep.measures[0], "logy": True}]), sweep.measures)
    out = Path(args.out or cfg.get("out") or Path(args.config).with_suffix(""))
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures.json").write_text(json.dumps(figs))
    with _warnings_as_lines():
        df = run_sweep(sweep, out, workers=args.workers, scheduler=args.scheduler,
                       local_cluster=args.local_cluster, progress=False if args.no_progress else None)
    table = out / "results.csv"
    df.to_csv(table, index=False)
    paths = draw_figures(df, figs, out) if len(df) else []
    failed = df.attrs.get("failed", len(load_errors(out)))
    print(f"{len(df)} rows -> {table}")
    for p in paths:
        print(f"figure -> {p}")
    if failed:
        ids = {point_id(p) for p in sweep.points()}  # this sweep's failures, not an earlier sweep's in DIR
        first = next((e["error"].splitlines()[0] for e in load_errors(out)
                      if e.get("error") and (e.get("point") is None or point_id(e["point"]) in ids)), "")
        print(f"meanfield: {failed} of {len(sweep.points())} point(s) failed (first: {first}); see "
              f"{out / 'errors'}", file=sys.stderr)
        return 1
    return 0


def _cmd_plot(args) -> int:
    from meanfield.sweep import load_results

    out = Path(args.dir)
    if not (out / "points").is_dir():
        raise UserError(f"{args.dir!r} is not a sweep directory (no points/ inside)")
    measures = None
    if (out / "sweep.json").exists():
        cfg = _read_json(out / "sweep.json", "sweep config")
        measures = cfg.get("measures") if isinstance(cfg, dict) else None
    figs = _read_json(out / "figures.json", "figure list") if (out / "figures.json").exists() else [
        {"measure": (measures or ["isometry_gap"])[0], "logy": True}]
    figs = _check_figures(figs, measures)
    with _warnings_as_lines() as damaged:
        df = load_results(out)
    if not len(df):
        raise UserError(f"{args.dir!r} holds no finished points yet" + (" (its point files are damaged)"
                                                                         if damaged else ""))
    for p in draw_figures(df, figs, out):
        print(f"figure -> {p}")
    return 1 if damaged else 0


def _emit(args, header, rows):
    if args.json:
        print(json.dumps([dict(zip(header, r)) for r in rows]))
        return
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(_fmt(v).rjust(w) for v, w in zip(r, widths)))


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.16g}" if math.isfinite(v) else str(v)
    return str(v)


def _cmd_coefficients(args) -> int:
    import hermite

    if args.exact:
        c = hermite.exact_coefficients(args.act, args.K, q=args.q)
        rows = [(k, str(ck), float(ck.evalf(20))) for k, ck in enumerate(c)]
        _emit(args, ["k", "exact", "value"], rows)
    else:
        c = hermite.coefficients(args.act, args.K, q=args.q)
        rows = [(k, float(ck)) for k, ck in enumerate(c)]
        _emit(args, ["k", "c_k"], rows)
    return 0


def _cmd_kernel(args) -> int:
    import numpy as np

    import hermite

    rho = np.asarray(args.rho, dtype=float)
    k = hermite.kernel(args.act, rho, args.q1, args.q2, derivative=args.derivative, centered=args.centered)
    rows = [(float(r), float(v)) for r, v in zip(rho, np.atleast_1d(k))]
    _emit(args, ["rho", "kernel"], rows)
    return 0


def _cmd_maps(args) -> int:
    from meanfield import maps

    sb = args.sigma_b
    sw = args.sigma_w if args.sigma_w is not None else maps.edge_of_chaos(args.act, sb)
    q = maps.fixed_point_q(args.act, sw, sb)
    chi = maps.chi1(args.act, sw, sb)
    ds = maps.depth_scales(args.act, sw, sb)
    eoc = maps.edge_of_chaos(args.act, sb)
    rows = [("sigma_w", float(sw)), ("sigma_b", float(sb)), ("q*", float(q)), ("chi_1", float(chi)),
            ("xi_q", float(ds["xi_q"])), ("xi_c", float(ds["xi_c"])), ("edge_of_chaos_sigma_w", float(eoc))]
    _emit(args, ["quantity", "value"], rows)
    return 0


def _cmd_demo(args) -> int:
    path = demo(args.out, quick=args.quick)
    print(f"wrote {path}")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def _parser() -> argparse.ArgumentParser:
    from meanfield import __version__

    p = _Parser(prog="meanfield", description="Mean-field and Hermite-expansion theory of deep networks.")
    p.add_argument("--version", action="version", version=f"meanfield {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    d = sub.add_parser("demo", help="isometry depth curves, mean field vs simulation, to a PNG")
    d.add_argument("--out", default="meanfield-demo.png")
    d.add_argument("--quick", action="store_true", help="smaller sizes (a few seconds)")
    d.set_defaults(fn=_cmd_demo)
    r = sub.add_parser("run", help="run a sweep from a TOML config")
    r.add_argument("config")
    r.add_argument("--out")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--scheduler", help="Dask scheduler address")
    g.add_argument("--workers", type=int, help="local worker processes (0: inline)")
    g.add_argument("--local-cluster", action="store_true", help="start a local Dask cluster")
    r.add_argument("--no-progress", action="store_true", help="no progress bar (default: one on a terminal)")
    r.set_defaults(fn=_cmd_run)
    pl = sub.add_parser("plot", help="redraw the figures of a sweep directory")
    pl.add_argument("dir")
    pl.set_defaults(fn=_cmd_plot)
    c = sub.add_parser("coefficients", help="Hermite coefficients of an activation")
    c.add_argument("act")
    c.add_argument("-K", type=int, default=10)
    c.add_argument("--q", type=float, default=1.0)
    c.add_argument("--exact", action="store_true")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=_cmd_coefficients)
    k = sub.add_parser("kernel", help="dual kernel E[f(u) f(v)]")
    k.add_argument("act")
    k.add_argument("--rho", type=float, nargs="+", required=True)
    k.add_argument("--q1", type=float, default=1.0)
    k.add_argument("--q2", type=float, default=None)
    k.add_argument("--derivative", type=int, default=0)
    k.add_argument("--centered", action="store_true")
    k.add_argument("--json", action="store_true")
    k.set_defaults(fn=_cmd_kernel)
    m = sub.add_parser("maps", help="q*, chi_1, depth scales and the edge of chaos")
    m.add_argument("act")
    m.add_argument("--sigma-b", type=float, required=True)
    m.add_argument("--sigma-w", type=float, default=None)
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=_cmd_maps)
    return p


def main(argv=None) -> int:
    try:
        args = _parser().parse_args(argv)
        return args.fn(args)
    except UserError as exc:
        print(f"meanfield: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, ImportError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"meanfield: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
