"""BLAS threads of the engines: one thread where threaded BLAS only costs (threadpoolctl, when installed).

After a threaded BLAS call, OpenBLAS keeps its worker threads spinning for ~0.1 s. The mean-field engine's
work is elementwise; BLAS serves it only in small products (the validation of the input Gram, the tables'
matrix products), where a second thread gains nothing (a 256 x 256 eigvalsh: 2.0 ms with one thread or
two), and the spinning thread takes a core: on the development machine's two cores, ReLU + LN (n = 256, 200
blocks) used 0.26 s of CPU for 0.15 s of wall time, and two such runs side by side took 0.72-0.79 s each
instead of 0.15-0.22 s. `serial_for` holds BLAS at one thread for a mean-field run on a small batch;
`restored` gives the threads back inside it where products are large or give values that a thread count
could change in the last bit (Monte Carlo samples, explicit features, exact BatchNorm's
eigendecomposition).

Values. A threaded BLAS product can round differently from a serial one, so a kernel's last bits already
depended on the machine's core count: a 4-block softplus network on 24 inputs gives Grams that differ by
up to 1.8e-15 (entries of order one to ten) between one BLAS thread and two. Under the cap the dual kernels
of a small batch are computed with one thread, the same bits on every machine; a kernel evaluated outside
`propagate` with threaded BLAS may differ from them in the last bits, far inside the 1e-12 contract.
"""

from __future__ import annotations

import contextlib
import threading
from functools import cache

__all__ = ["single_thread", "serial_for", "restored", "SERIAL_MAX"]

#: batches of at most this many inputs run the mean-field engine with one BLAS thread
SERIAL_MAX = 512

_LOCK = threading.Lock()
# serial: `serial_for` regions open (several Python threads may run propagate), opened: `restored` regions
# open inside them, saved: each library's thread count when the first serial region opened
_STATE = {"serial": 0, "opened": 0, "saved": None}


@cache
def _libraries():
    """The threadpoolctl controllers of the BLAS libraries loaded at the first call, or None."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    return libs or None


def _set_num_threads(lib, n: int) -> None:
    """Set a library's thread count from whichever Python thread runs this (under _LOCK).

    threadpoolctl >= 3.8 lets only one live "controlling" Python thread change a pthreads OpenBLAS (the first to
    call ``set_num_threads``); from any other thread the call silently does nothing. A `propagate` in a worker
    thread that closed the last serial region while the thread that opened the first was still alive therefore
    left BLAS at one thread for the whole process. The regions' bookkeeping is serialized by _LOCK, so the call
    is made under a released control, which is released again after it (a caller's own `threadpool_limits`
    then takes control as before).
    """
    release = getattr(type(lib), "clear_controlling_thread", None)
    if release is not None:
        release(force=True)
    lib.set_num_threads(n)
    if release is not None:
        release(force=True)


def _apply(libs) -> None:
    """Set the thread counts the state asks for (under _LOCK): one inside a serial region, else the saved ones."""
    one = _STATE["serial"] > 0 and _STATE["opened"] == 0
    for lib, saved in zip(libs, _STATE["saved"]):
        _set_num_threads(lib, 1 if one else saved)


def single_thread():
    """One BLAS thread for the duration, for every BLAS library loaded now (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


@contextlib.contextmanager
def serial_for(n: int):
    """One BLAS thread while the mean-field engine runs a batch of ``n`` <= `SERIAL_MAX` inputs.

    The thread counts in force when the first region opens (a caller's own cap included) are restored when
    the last one closes, so concurrent runs in several Python threads leave BLAS as they found it. The
    libraries are those seen at the first call (a few microseconds a run, where threadpoolctl's
    `threadpool_limits` scans the loaded libraries each time, 0.3 ms).
    """
    libs = _libraries() if n <= SERIAL_MAX else None
    if libs is None:
        yield
        return
    with _LOCK:
        if _STATE["serial"] == 0:
            _STATE["saved"] = [lib.num_threads for lib in libs]
        _STATE["serial"] += 1
        _apply(libs)
    try:
        yield
    finally:
        with _LOCK:
            _STATE["serial"] -= 1
            _apply(libs)
            if _STATE["serial"] == 0:
                _STATE["saved"] = None


@contextlib.contextmanager
def restored():
    """Inside a `serial_for` region, the thread counts in force before it, for products that are large or whose
    values should not depend on the cap (Monte Carlo samples, explicit features, exact BatchNorm's
    eigendecomposition); elsewhere nothing changes."""
    libs = _libraries()
    with _LOCK:
        active = libs is not None and _STATE["serial"] > 0
        if active:
            _STATE["opened"] += 1
            _apply(libs)
    try:
        yield
    finally:
        if active:
            with _LOCK:
                _STATE["opened"] -= 1
                _apply(libs)
