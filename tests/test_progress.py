"""Progress bars for long work (issue 17.7): Monte Carlo mean-field rules, large simulations, sweeps.

The rule under test: ``progress=None`` shows a tqdm bar when the work is estimated to be long and someone is
watching (stderr a terminal, or a Jupyter kernel); ``True`` always, ``False`` never. The silent cases of
the issue: exact BatchNorm after an activation with n = 64 and 200 blocks (300 s) and a huge `simulate`.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import meanfield
from meanfield import finite
from meanfield.core import progress

BN_AFTER_ACT = dict(activation="tanh", norm="bn", placement="post")


def small_batch(n=4, d=8):
    return np.random.default_rng(0).standard_normal((n, d))


def test_monte_carlo_rule_shows_a_bar_when_asked(capsys):
    meanfield.propagate(meanfield.mlp(3, **BN_AFTER_ACT), X=small_batch(), mc_samples=256, progress=True)
    err = capsys.readouterr().err
    assert "propagate (Monte Carlo)" in err and "3/3" in err


def test_exact_runs_and_progress_false_show_nothing(capsys, monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: True)
    monkeypatch.setattr(progress, "MC_PROGRESS_WORK", 0.0)
    meanfield.propagate(meanfield.mlp(3, "tanh", norm="ln"), X=small_batch(), progress=True)  # exact: no bar
    meanfield.propagate(meanfield.mlp(3, **BN_AFTER_ACT), X=small_batch(), mc_samples=256, progress=False)
    assert capsys.readouterr().err == ""


def test_automatic_bar_follows_the_estimated_work_and_the_watcher(capsys, monkeypatch):
    net = meanfield.mlp(3, **BN_AFTER_ACT)
    monkeypatch.setattr(progress, "MC_PROGRESS_WORK", 0.0)  # any Monte Carlo counts as long
    monkeypatch.setattr(progress, "interactive", lambda: False)  # nobody watching: no bar
    meanfield.propagate(net, X=small_batch(), mc_samples=256)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "interactive", lambda: True)
    meanfield.propagate(net, X=small_batch(), mc_samples=256)
    assert "propagate (Monte Carlo)" in capsys.readouterr().err


def test_the_silent_case_of_the_issue_is_estimated_long_and_a_small_one_short(monkeypatch):
    """BN after an activation, n = 64, 200 blocks, the default 2^17 samples (300 s in the issue) opens a
    bar at its first block; n = 4, 3 blocks (milliseconds) does not."""
    opened = []
    monkeypatch.setattr(progress, "interactive", lambda: True)
    monkeypatch.setattr(progress, "bar", lambda *a, **k: opened.append(a) or types.SimpleNamespace(
        update=lambda k: None, close=lambda: None))
    p = progress.MeanFieldProgress(None, 200)
    p.monte_carlo(2**17, 64)
    assert opened and opened[0][0] == 200
    opened.clear()
    p = progress.MeanFieldProgress(None, 3)
    p.monte_carlo(2**17, 4)
    assert not opened


def test_large_simulation_shows_a_bar_in_a_notebook(capsys, monkeypatch):
    """simulate had a bar only when stderr was a terminal, so a huge run in a notebook said nothing."""
    monkeypatch.setattr(finite, "PROGRESS_FLOPS", 0.0)
    monkeypatch.setattr(finite, "interactive", lambda: True)
    meanfield.simulate(meanfield.mlp(2, "relu"), small_batch(), width=16, seeds=2)
    assert "simulate" in capsys.readouterr().err
    meanfield.simulate(meanfield.mlp(2, "relu"), small_batch(), width=16, seeds=2, progress=False)
    assert capsys.readouterr().err == ""


def test_a_jupyter_kernel_counts_as_watched(monkeypatch):
    class ZMQInteractiveShell:  # the shell class of a Jupyter kernel
        pass

    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: ZMQInteractiveShell()
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert progress.interactive()
    fake.get_ipython = lambda: None  # IPython imported, not running
    monkeypatch.setattr(sys, "stderr", types.SimpleNamespace(isatty=lambda: False, write=lambda s: None))
    assert not progress.interactive()


def test_a_real_kernel_is_detected():
    """In a real Jupyter kernel `interactive()` is True (the notebook shows the bar)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("from meanfield.core.progress import interactive\n"
                                              "print('watched', interactive())"))
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert "watched True" in text


def test_progress_arguments_are_validated():
    with pytest.raises(ValueError, match=r"propagate: progress='yes' must be one of None, True, False"):
        meanfield.propagate(meanfield.mlp(1), X=small_batch(), progress="yes")
    with pytest.raises(ValueError, match=r"run_sweep: progress=1 must be one of None, True, False"):
        meanfield.sweep.run_sweep({"grid": {"depth": [1]}}, "unused", progress=1)


def test_sweep_points_open_no_bars_of_their_own(capsys, monkeypatch):
    """Inside a sweep (whose workers may share the terminal) only the sweep's bar over points shows."""
    from meanfield import sweep as sw

    monkeypatch.setattr(progress, "interactive", lambda: True)
    monkeypatch.setattr(progress, "MC_PROGRESS_WORK", 0.0)
    monkeypatch.setattr(finite, "PROGRESS_FLOPS", 0.0)
    monkeypatch.setattr(finite, "interactive", lambda: True)
    for engine in ("meanfield", "simulate"):
        p = dict(sw.DEFAULTS, depth=2, n=4, input_dim=8, width=8, seeds=2, norm="bn", activation="tanh",
                 engine=engine)
        sw.run_point(p, ("isometry_gap",))
    assert capsys.readouterr().err == ""
