"""Tests of the `meanfield` command (meanfield.cli.main), in process with capsys.

Independent truths: the Hermite coefficients of ReLU in closed form (c_0 = 1/sqrt(2 pi), c_1 = 1/2,
c_k = (-1)^(k/2+1) (k-3)!! / sqrt(2 pi k!) for even k >= 2, 0 for odd k >= 3) and the arc-cosine kernel
of Cho and Saul (2009), E relu(u) relu(v) = (sqrt(1 - rho^2) + (pi - arccos rho) rho) / (2 pi),
E step(u) step(v) = (pi - arccos rho) / (2 pi).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meanfield.cli import main


def relu_coefficient(k: int) -> float:
    if k == 0:
        return 1 / math.sqrt(2 * math.pi)
    if k == 1:
        return 0.5
    if k % 2:
        return 0.0
    dfact = math.prod(range(k - 3, 0, -2)) if k > 3 else 1
    return (-1) ** (k // 2 + 1) * dfact / math.sqrt(2 * math.pi * math.factorial(k))


def arccos_kernel(rho):
    rho = np.asarray(rho, float)
    return (np.sqrt(1 - rho**2) + (np.pi - np.arccos(rho)) * rho) / (2 * np.pi)


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def user_error(capsys, argv) -> str:
    """Run a command that must fail as a user mistake: exit 2, one line on stderr, no traceback."""
    assert main(argv) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert err.startswith("meanfield: error: ")
    assert "\n" not in err and "Traceback" not in err
    return err


# ---------------------------------------------------------------------------------------------------
# quick answers
def test_coefficients_json(capsys):
    rows = run_json(capsys, ["coefficients", "relu", "-K", "4", "--json"])
    assert [r["k"] for r in rows] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose([r["c_k"] for r in rows], [relu_coefficient(k) for k in range(5)], atol=1e-14)


def test_coefficients_table_and_q(capsys):
    assert main(["coefficients", "relu", "-K", "6", "--q", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["k", "c_k"]
    assert len(lines) == 1 + 7
    vals = [float(line.split()[1]) for line in lines[1:]]
    # ReLU is positively homogeneous: c_k(q) = sqrt(q) c_k(1)
    np.testing.assert_allclose(vals, [2 * relu_coefficient(k) for k in range(7)], atol=1e-14)


def test_coefficients_exact(capsys):
    rows = run_json(capsys, ["coefficients", "relu", "-K", "4", "--exact", "--json"])
    assert rows[1]["exact"] == "1/2" and rows[3]["exact"] == "0"
    assert "pi" in rows[0]["exact"] and "sqrt" in rows[0]["exact"]
    np.testing.assert_allclose([r["value"] for r in rows], [relu_coefficient(k) for k in range(5)], atol=1e-15)
    assert main(["coefficients", "relu", "-K", "2", "--exact"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["k", "exact", "value"] and "1/2" in out[2]


def test_coefficients_of_a_formula(capsys):
    rows = run_json(capsys, ["coefficients", "x**2", "-K", "3", "--json"])
    # x^2 = He_0 + He_2 = h_0 + sqrt(2) h_2
    np.testing.assert_allclose([r["c_k"] for r in rows], [1.0, 0.0, math.sqrt(2), 0.0], atol=1e-13)


def test_kernel(capsys):
    rho = [-1.0, -0.3, 0.0, 0.5, 1.0]
    rows = run_json(capsys, ["kernel", "relu", "--rho", *map(str, rho), "--json"])
    assert [r["rho"] for r in rows] == rho
    np.testing.assert_allclose([r["kernel"] for r in rows], arccos_kernel(rho), atol=1e-13)
    rows = run_json(capsys, ["kernel", "relu", "--rho", "0.5", "--centered", "--json"])
    assert rows[0]["kernel"] == pytest.approx(arccos_kernel(0.5) - 1 / (2 * math.pi), abs=1e-13)
    rows = run_json(capsys, ["kernel", "relu", "--rho", "0.5", "--derivative", "1", "--json"])
    assert rows[0]["kernel"] == pytest.approx((math.pi - math.acos(0.5)) / (2 * math.pi), abs=1e-13)
    rows = run_json(capsys, ["kernel", "relu", "--rho", "0.5", "--q1", "2", "--q2", "8", "--json"])
    assert rows[0]["kernel"] == pytest.approx(4 * arccos_kernel(0.5), abs=1e-12)  # sqrt(q1 q2) = 4
    assert main(["kernel", "tanh", "--rho", "0.25"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["rho", "kernel"] and len(out) == 2


def test_maps(capsys):
    maps = pytest.importorskip("meanfield.maps")
    rows = run_json(capsys, ["maps", "tanh", "--sigma-b", "0.3", "--sigma-w", "1.2", "--json"])
    got = {r["quantity"]: r["value"] for r in rows}
    assert set(got) == {"sigma_w", "sigma_b", "q*", "chi_1", "xi_q", "xi_c", "edge_of_chaos_sigma_w"}
    assert got["sigma_w"] == 1.2 and got["sigma_b"] == 0.3
    assert got["q*"] == pytest.approx(maps.fixed_point_q("tanh", 1.2, 0.3), rel=1e-12)
    assert got["chi_1"] == pytest.approx(maps.chi1("tanh", 1.2, 0.3), rel=1e-12)
    assert got["edge_of_chaos_sigma_w"] == pytest.approx(maps.edge_of_chaos("tanh", 0.3), rel=1e-12)
    # q* is a fixed point of the q-map, q = sigma_w^2 E tanh(sqrt(q) z)^2 + sigma_b^2
    import hermite

    q = got["q*"]
    assert 1.44 * hermite.second_moment("tanh", q) + 0.09 == pytest.approx(q, rel=1e-9)
    # without --sigma-w: at the edge of chaos, chi_1 = 1
    rows = run_json(capsys, ["maps", "tanh", "--sigma-b", "0.3", "--json"])
    got = {r["quantity"]: r["value"] for r in rows}
    assert got["chi_1"] == pytest.approx(1.0, abs=1e-8)
    assert main(["maps", "relu", "--sigma-b", "0", "--sigma-w", "1.0"]) == 0
    assert "chi_1" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# user mistakes: exit 2, one line, no traceback
def test_unknown_activation(capsys):
    err = user_error(capsys, ["coefficients", "rellu"])
    assert "rellu" in err and "relu" in err and "tanh" in err  # says what is allowed
    user_error(capsys, ["kernel", "nope", "--rho", "0.1"])


def test_bad_arguments(capsys):
    assert "K=-1" in user_error(capsys, ["coefficients", "relu", "-K", "-1"])
    assert "rho" in user_error(capsys, ["kernel", "relu", "--rho", "1.5"])
    user_error(capsys, ["kernel", "relu"])  # --rho is required
    user_error(capsys, ["frobnicate"])
    user_error(capsys, [])
    user_error(capsys, ["coefficients", "relu", "-K", "three"])
    with pytest.raises(SystemExit) as exc:  # --help is not an error
        main(["--help"])
    assert exc.value.code == 0
    assert "coefficients" in capsys.readouterr().out


def write(tmp_path: Path, text: str, name: str = "c.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text, expect", [
    ('[sweep]\ngrid = {detph = [1, 2]}\n', "did you mean 'depth'"),
    ('[sweep]\nfixed = {activaton = "relu"}\n', "did you mean 'activation'"),
    ('[sweep]\ngird = {depth = [1]}\n', "did you mean 'grid'"),
    ('[sweeps]\ngrid = {depth = [1]}\n', "did you mean 'sweep'"),
    ('[sweep]\ngrid = {depth = [1]}\n[[figures]]\nmeasur = "potential"\n', "did you mean 'measure'"),
    ('[sweep]\ngrid = {depth = [1]}\n[[figures]]\nmeasure = "isometry_gp"\n', "did you mean 'isometry_gap'"),
    ('[sweep]\ngrid = {depth = [1]}\n[[figures]]\nwhere = {activatio = "relu"}\n', "did you mean 'activation'"),
    ('[sweep]\ngrid = {depth = [1]}\nmeasures = ["potential"]\n[[figures]]\nmeasure = "isometry_gap"\n',
     "not recorded"),
    ('[sweep]\ngrid = {depth = 3}\n', "non-empty list"),
    ('[sweep]\ngrid = [1, 2]\n', "must be a table"),
    ('sweep = 3\n', "must be a table"),
    ('[sweep]\nzip = {depth = [1, 2], sigma_w = [1.0]}\n', "same length"),
    ('[sweep]\nfixed = {engine = "theory"}\n', "engine"),
    ('out = "x"\n', "missing [sweep]"),
])
def test_bad_config(tmp_path, capsys, text, expect):
    err = user_error(capsys, ["run", write(tmp_path, text), "--out", str(tmp_path / "o"), "--workers", "0"])
    assert expect in err
    assert not (tmp_path / "o" / "points").exists()  # nothing ran


def test_unreadable_and_invalid_files(tmp_path, capsys):
    assert "no such file" in user_error(capsys, ["run", str(tmp_path / "missing.toml")])
    assert "no such file" in user_error(capsys, ["run", str(tmp_path)])  # a directory
    bad = tmp_path / "binary.toml"
    bad.write_bytes(b"\xff\xfe\x00[sweep]")
    assert "cannot read config file" in user_error(capsys, ["run", str(bad)])
    err = user_error(capsys, ["run", write(tmp_path, "[sweep\ngrid = {", "broken.toml")])
    assert "not valid TOML" in err
    assert "not a sweep directory" in user_error(capsys, ["plot", str(tmp_path)])


def test_console_script_exit_status():
    """The installed entry point: a user mistake exits with status 2 and prints no traceback."""
    exe = Path(sys.executable).with_name("meanfield")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "meanfield.cli"]
    r = subprocess.run([*cmd, "coefficients", "rellu"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------------
# demo, run, plot
def test_demo_quick_writes_a_png(tmp_path, capsys):
    out = tmp_path / "demo.png"
    t0 = time.time()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert time.time() - t0 < 60
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert str(out.resolve()) in capsys.readouterr().out


TINY_CONFIG = """
[sweep]
grid = {activation = ["relu", "tanh"], engine = ["meanfield", "simulate"]}
zip = {placement = ["pre", "post"], norm = ["ln", "none"]}
fixed = {depth = 3, n = 4, input_dim = 8, width = 16, seeds = 3}

[[figures]]
measure = "isometry_gap"
by = ["activation", "placement"]
logy = true
title = "tiny"
file = "gap.png"

[[figures]]
measure = "mean_correlation"
where = {activation = "tanh", norm = "none"}
"""


def test_run_and_plot(tmp_path, capsys):
    cfg = write(tmp_path, TINY_CONFIG)
    out = tmp_path / "out"
    assert main(["run", cfg, "--out", str(out), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "32 rows" in printed  # 2 activations x 2 engines x 2 zipped (placement, norm) x 4 layers
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 2 * 2 * 2 * 4
    assert set(table["norm"].fillna("none")) == {"ln", "none"}
    assert len(list((out / "points").glob("*.csv"))) == 8
    figs = [out / "gap.png", out / "figure_2_mean_correlation.png"]
    for f in figs:
        assert f.read_bytes()[:4] == b"\x89PNG"
        assert str(f) in printed
    assert json.loads((out / "figures.json").read_text())[0]["file"] == "gap.png"
    # `plot` redraws from the directory alone
    for f in figs:
        f.unlink()
    assert main(["plot", str(out)]) == 0
    assert all(f.exists() for f in figs)
    # a second `run` finds every point on disk
    t0 = time.time()
    assert main(["run", cfg, "--out", str(out), "--workers", "0"]) == 0
    assert time.time() - t0 < 10
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), table)


def _fail_tanh(monkeypatch):
    from meanfield import sweep as sw

    real = sw.run_point

    def flaky(p, measures):
        if p["activation"] == "tanh":
            raise RuntimeError("boom")
        return real(p, measures)

    monkeypatch.setattr(sw, "run_point", flaky)


def test_run_with_failed_points_exits_nonzero(tmp_path, capsys, monkeypatch):
    """Issue 17.6: `meanfield run` exited 0 (with "0 rows") when every point failed."""
    _fail_tanh(monkeypatch)
    cfg = write(tmp_path, '[sweep]\ngrid = {activation = ["relu", "tanh"]}\nfixed = {depth = 2, n = 3}\n')
    assert main(["run", cfg, "--out", str(tmp_path / "o"), "--workers", "0"]) == 1
    cap = capsys.readouterr()
    assert "3 rows" in cap.out and "1 of 2 point(s) failed (first: RuntimeError: boom)" in cap.err
    assert len(list((tmp_path / "o" / "errors").glob("*.json"))) == 1
    assert (tmp_path / "o" / "results.csv").exists()  # what finished is still written
    # every point failing: "0 rows" and a non-zero status, no figure
    cfg = write(tmp_path, '[sweep]\ngrid = {activation = ["tanh"], depth = [2, 3]}\nfixed = {n = 3}\n', "all.toml")
    assert main(["run", cfg, "--out", str(tmp_path / "all"), "--workers", "0"]) == 1
    cap = capsys.readouterr()
    assert "0 rows" in cap.out and "figure" not in cap.out and "2 of 2 point(s) failed" in cap.err


@pytest.mark.parametrize("fixed, expect", [
    ('activation = "rellu"', "activation='rellu' is not an activation"),
    ("depth = -3", "depth=-3 must be an integer >= 1"),
    ('engine = "simulate"\nwidth = 0', "width=0 must be an integer >= 1"),
    ("n = 0", "n=0 must be an integer >= 1"),
    ("sigma_b = -0.5", "sigma_b=-0.5 must be in [0, inf]"),
])
def test_config_values_are_validated_before_any_work(tmp_path, capsys, fixed, expect):
    """Issue 17.6: a bad value (bad activation, depth -3, width 0, ...) is a user error naming the field,
    exit 2, before any point runs."""
    cfg = write(tmp_path, f"[sweep]\ngrid = {{placement = [\"pre\", \"post\"]}}\n[sweep.fixed]\n{fixed}\n")
    err = user_error(capsys, ["run", cfg, "--out", str(tmp_path / "o"), "--workers", "0"])
    assert expect in err
    assert not (tmp_path / "o" / "points").exists()


@pytest.mark.parametrize("damage", [b"", b"\x89PNG\x00\xff" * 20, b"truncate"])
def test_damaged_point_files_are_named_by_plot_and_healed_by_run(tmp_path, capsys, damage):
    """Issue 17.6: an empty or binary point file aborted `run` and `plot` without naming the file; a truncated
    one was accepted."""
    cfg = write(tmp_path, TINY_CONFIG)
    out = tmp_path / "out"
    assert main(["run", cfg, "--out", str(out), "--workers", "0"]) == 0
    table = pd.read_csv(out / "results.csv")
    capsys.readouterr()
    victim = sorted((out / "points").glob("*.csv"))[0]
    victim.write_bytes(victim.read_bytes()[:-30] if damage == b"truncate" else damage)
    assert main(["plot", str(out)]) == 1
    cap = capsys.readouterr()
    assert f"meanfield: warning: sweep: point file {victim} is damaged" in cap.err and "figure ->" in cap.out
    assert "Traceback" not in cap.err
    assert main(["run", cfg, "--out", str(out), "--workers", "0"]) == 0
    cap = capsys.readouterr()
    assert f"point file {victim} is damaged" in cap.err and "set aside" in cap.err
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), table)
    assert (out / "points" / "damaged" / victim.name).exists()


def test_plot_names_a_damaged_figure_list(tmp_path, capsys):
    cfg = write(tmp_path, TINY_CONFIG)
    out = tmp_path / "out"
    assert main(["run", cfg, "--out", str(out), "--workers", "0"]) == 0
    (out / "figures.json").write_bytes(b"\xff\x00")
    assert "figures.json" in user_error(capsys, ["plot", str(out)])


def test_version(capsys):
    """Issue 17.8: no `meanfield --version`."""
    import meanfield

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"meanfield {meanfield.__version__}"


def test_run_progress_bar_and_no_progress(tmp_path, capsys, monkeypatch):
    """Issue 17.7: a sweep shows a bar where someone watches (a terminal or a notebook); --no-progress
    turns it off."""
    import meanfield.sweep as sw

    monkeypatch.setattr(sw, "interactive", lambda: True)
    cfg = write(tmp_path, TINY_CONFIG)
    assert main(["run", cfg, "--out", str(tmp_path / "a"), "--workers", "0"]) == 0
    assert "sweep: 100%" in capsys.readouterr().err
    assert main(["run", cfg, "--out", str(tmp_path / "b"), "--workers", "0", "--no-progress"]) == 0
    assert "sweep" not in capsys.readouterr().err


def test_figure_selecting_nothing_is_a_user_error(tmp_path, capsys):
    cfg = write(tmp_path, '[sweep]\ngrid = {depth = [2]}\nfixed = {n = 3}\n'
                          '[[figures]]\nwhere = {activation = "tanh"}\n')
    assert "selects no rows" in user_error(capsys, ["run", cfg, "--out", str(tmp_path / "o"), "--workers", "0"])
    assert (tmp_path / "o" / "results.csv").exists()  # the results were saved before the figure failed
