"""BLAS threads of the engines: one thread where threaded BLAS only costs (threadpoolctl, when installed).

After a threaded BLAS call, OpenBLAS keeps its worker threads spinning for ~0.1 s. The mean-field engine's
work is elementwise; BLAS serves it only in small products (the validation of the input Gram, the tables'
matrix products), where a second thread gains nothing (a 256 x 256 eigvalsh: 2.0 ms with one thread or
two), and the spinning thread takes a core: on the development machine's two cores, ReLU + LN (n = 256, 200
blocks) used 0.26 s of CPU for 0.15 s of wall time, and two such runs side by side took 0.72-0.79 s each
instead of 0.15-0.22 s. `serial_for` holds BLAS at one thread for a mean-field run on a small batch;
`restored` gives the threads back inside it where products are large (Monte Carlo samples, explicit
features of a wide fixed prefix).
"""

from __future__ import annotations

import contextlib
from functools import cache

__all__ = ["single_thread", "serial_for", "restored", "SERIAL_MAX"]

#: batches of at most this many inputs run the mean-field engine with one BLAS thread
SERIAL_MAX = 512


@cache
def _controller():
    """(threadpoolctl controller of the loaded BLAS libraries, their largest thread count now), or None."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    blas = ThreadpoolController().select(user_api="blas")
    info = blas.info()
    if not info:
        return None
    return blas, max(int(lib["num_threads"]) for lib in info)


def single_thread():
    """One BLAS thread for the duration, for every BLAS library loaded now (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def serial_for(n: int):
    """One BLAS thread while the mean-field engine runs a batch of ``n`` <= `SERIAL_MAX` inputs (the libraries
    seen at the first call: 11 us a run, where a fresh `single_thread` scans the loaded libraries, 0.3 ms)."""
    c = _controller() if n <= SERIAL_MAX else None
    return contextlib.nullcontext() if c is None else c[0].limit(limits=1)


def restored():
    """The BLAS threads that the libraries had when first seen, for large products inside `serial_for`."""
    c = _controller()
    return contextlib.nullcontext() if c is None else c[0].limit(limits=c[1])
