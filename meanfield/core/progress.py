"""Progress bars (tqdm) for work that may take longer than a few seconds.

One rule everywhere: ``progress=None`` shows a bar when the work is estimated to be long *and* someone is
watching (stderr is a terminal, or the code runs in a Jupyter kernel); ``True`` always shows one, ``False``
never. In a notebook the bar is the tqdm widget when ipywidgets is installed, else tqdm's text bar.

`propagate` opens a `MeanFieldProgress` around its blocks; a Monte Carlo rule (`meanfield.core.law.
monte_carlo`) reports its size to it through `current()`, and the bar (one per run, over blocks) opens at
the first rule whose remaining work is large. `simulate`, sweeps and training open bars with `bar`.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys

from meanfield.core.validate import check_choice

__all__ = ["interactive", "bar", "check_progress", "MeanFieldProgress", "tracking", "current", "MC_PROGRESS_WORK"]

# Monte Carlo work of a mean-field run, in sample-pairs M n^2 summed over the blocks still to run, above
# which ``progress=None`` opens a bar: about 2-3 s on one core (BatchNorm after an activation with n = 64
# and M = 2^17 samples costs ~1.5 s per block).
MC_PROGRESS_WORK = 1e9


def _in_jupyter_kernel() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:  # noqa: BLE001 - an unusual IPython: treat as not a notebook
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def interactive() -> bool:
    """True when someone can watch a bar: stderr is a terminal, or this runs in a Jupyter kernel."""
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):
        pass
    return _in_jupyter_kernel()


def check_progress(owner: str, value) -> bool | None:
    """``progress`` must be None (automatic), True or False."""
    return check_choice(owner, "progress", value, (None, True, False))


def _tqdm_class():
    if _in_jupyter_kernel():
        try:
            import ipywidgets  # noqa: F401 - tqdm's notebook bar needs it
            from tqdm.notebook import tqdm

            return tqdm
        except ImportError:
            pass
    from tqdm import tqdm

    return tqdm


def bar(total, desc: str, unit: str, **kw):
    """A tqdm bar on stderr (the widget in a notebook). The caller decides whether to show one."""
    cls = _tqdm_class()
    if cls.__module__ == "tqdm.std":
        kw.setdefault("file", sys.stderr)
    return cls(total=total, desc=desc, unit=unit, **kw)


class MeanFieldProgress:
    """The progress of one mean-field run over its blocks.

    The bar opens lazily, at the first Monte Carlo rule whose work, M n^2 times the blocks left (the rule
    is assumed to recur in every later block), exceeds `MC_PROGRESS_WORK` (``setting=None``, and only when
    `interactive`), or at the first Monte Carlo rule at all (``setting=True``); exact runs never open one.
    """

    def __init__(self, setting: bool | None, blocks: int, desc: str = "propagate"):
        self.setting, self.blocks, self.desc = setting, int(blocks), desc
        self.done = 0
        self.bar = None

    def monte_carlo(self, samples: int, n: int) -> None:
        """Called by a Monte Carlo rule before it samples: opens the bar when the work ahead is large."""
        if self.bar is not None or self.setting is False:
            return
        work = float(samples) * n * n * max(self.blocks - self.done, 1)
        if self.setting or (work > MC_PROGRESS_WORK and interactive()):
            self.bar = bar(self.blocks, f"{self.desc} (Monte Carlo)", "block", initial=self.done)

    def block_done(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_CURRENT: contextvars.ContextVar = contextvars.ContextVar("meanfield_progress", default=None)


@contextlib.contextmanager
def tracking(setting: bool | None, blocks: int, desc: str = "propagate"):
    """Make a `MeanFieldProgress` the current one (see `current`) for the duration of a run."""
    prog = MeanFieldProgress(setting, blocks, desc)
    token = _CURRENT.set(prog)
    try:
        yield prog
    finally:
        _CURRENT.reset(token)
        prog.close()


def current() -> MeanFieldProgress | None:
    """The progress of the mean-field run in progress in this context, if any."""
    return _CURRENT.get()
