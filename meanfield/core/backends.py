"""Array backends of the finite-width engine: numpy, cupy, or any array-API namespace.

Only array-API standard functions are used on the arrays of a run; numpy runs split batched products over
threads (`Backend.matmul`), other namespaces run as they are. Results always come back to the host as numpy
arrays (`to_host`).
"""

from __future__ import annotations

import importlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np

from meanfield.core.blas import single_thread

__all__ = ["Backend", "resolve_backend", "to_host", "host_apply", "same_kind", "default_memory", "cpu_count",
           "blas_single_thread", "stderr_tty", "is_float_dtype_like", "KNOWN_BACKENDS", "DTYPES", "OnDevice",
           "torch_backend"]

DTYPES = ("float32", "float64")
KNOWN_BACKENDS = ("numpy", "cupy", "array_api_strict", "torch")
GPU_HINT = "install the gpu extra: pip install meanfield-hermite[gpu]"


class Backend:
    """The array namespace and dtype of a run."""

    def __init__(self, name: str, xp: Any, kind: str, dtype_name: str):
        self.name = name
        self.xp = xp
        self.kind = kind  # "numpy", "cupy" or "other"
        self.np_dtype = np.dtype(dtype_name)
        self.dtype = getattr(xp, dtype_name)
        self.eps = float(np.finfo(self.np_dtype).eps)
        self.pool: ThreadPoolExecutor | None = None  # numpy: seed-parallel matmuls and RNG
        self.workers = 1
        self.device = None  # torch: the torch.device of the run

    def matmul(self, a, b):
        """Batched a @ b. On numpy with a thread pool the stack is split across threads, each running a
        single-threaded BLAS gemm per network (BLAS is capped at 1 thread meanwhile): threaded BLAS on small
        per-network products collapses on shared cores, and the per-matrix results do not depend on the
        split, so results stay bitwise reproducible."""
        if self.kind != "numpy" or self.pool is None:
            return self.xp.matmul(a, b)
        s = max(a.shape[0], b.shape[0])
        m, k, p = a.shape[-2], a.shape[-1], b.shape[-1]
        if s < 2 or a.ndim != 3 or b.ndim != 3 or 2.0 * s * m * k * p < 4e6:
            return np.matmul(a, b)
        out = np.empty((s, m, p), dtype=np.result_type(a, b))
        parts = min(self.workers, s)
        bounds = [(i * s // parts, (i + 1) * s // parts) for i in range(parts)]

        def job(lohi):
            lo, hi = lohi
            np.matmul(a if a.shape[0] == 1 else a[lo:hi], b if b.shape[0] == 1 else b[lo:hi], out=out[lo:hi])

        list(self.pool.map(job, bounds))
        return out

    def asarray(self, a: np.ndarray):
        a = np.ascontiguousarray(a, dtype=self.np_dtype)
        if self.kind == "numpy":
            return a
        return self.xp.asarray(a, dtype=self.dtype)


def namespace_of_module(mod: ModuleType):
    import array_api_compat

    if mod is np or getattr(mod, "__name__", "") in ("numpy", "array_api_compat.numpy"):
        import array_api_compat.numpy as cnp

        return "numpy", cnp, "numpy"
    name = getattr(mod, "__name__", repr(mod))
    if name in ("cupy", "array_api_compat.cupy"):
        import array_api_compat.cupy as ccp

        return "cupy", ccp, "cupy"
    try:
        xp = array_api_compat.array_namespace(mod.asarray([0.0]))
    except Exception:  # noqa: BLE001 - any failure means "not an array-API namespace"
        xp = mod if getattr(mod, "__array_api_version__", None) is not None else None
    if xp is None or not hasattr(xp, "linalg"):
        raise ValueError(f"simulate: backend={name!r} is not an array-API namespace with the linalg "
                         "extension "
                         f"(wrap it with array_api_compat); allowed: {', '.join(KNOWN_BACKENDS)}, or an "
                         "array-API namespace module")
    return name, xp, "other"


def resolve_backend(backend: Any, dtype_name: str) -> Backend:
    if isinstance(backend, ModuleType):
        name, xp, kind = namespace_of_module(backend)
        return Backend(name, xp, kind, dtype_name)
    if not isinstance(backend, str):
        raise ValueError(f"simulate: backend={backend!r} must be a name ({', '.join(KNOWN_BACKENDS)}, or an "
                         "importable array-API module name such as 'torch') or an array-API namespace module")
    if backend == "numpy":
        import array_api_compat.numpy as cnp

        return Backend("numpy", cnp, "numpy", dtype_name)
    if backend == "cupy":
        try:
            import cupy  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"simulate: backend='cupy' needs CuPy, which is not installed; "
                              f"{GPU_HINT}") from exc
        import array_api_compat.cupy as ccp

        return Backend("cupy", ccp, "cupy", dtype_name)
    if backend == "array_api_strict":
        import array_api_strict

        return Backend("array_api_strict", array_api_strict, "other", dtype_name)
    if backend == "torch" or backend.startswith("torch:"):
        return torch_backend(backend, dtype_name)
    try:
        mod = importlib.import_module(backend)
    except ImportError:
        raise ValueError(f"simulate: backend={backend!r} is not known and cannot be imported; allowed: "
                         f"{', '.join(KNOWN_BACKENDS)}, or an importable array-API module ('torch', "
                         "...)") from None
    name, xp, kind = namespace_of_module(mod)
    return Backend(backend, xp, kind, dtype_name)


class OnDevice:
    """An array-API namespace whose array-creation functions put new arrays on one device unless told
    otherwise (torch on a GPU: the layers' ``xp.asarray``/``xp.arange`` calls then land beside the data)."""

    CREATE = ("asarray", "arange", "zeros", "ones", "empty", "full", "eye", "linspace")

    def __init__(self, xp: Any, device: Any):
        self._xp, self.device = xp, device
        self.__name__ = getattr(xp, "__name__", "")

    def __getattr__(self, name: str):
        f = getattr(self._xp, name)
        if name not in self.CREATE:
            return f
        dev = self.device

        def create(*args, device=None, **kwargs):
            return f(*args, device=dev if device is None else device, **kwargs)

        return create


def torch_backend(backend: str, dtype_name: str) -> Backend:
    """backend="torch" (CUDA when torch sees a GPU, else the CPU), "torch:cpu", "torch:cuda", "torch:cuda:1":
    torch tensors through the array API (array_api_compat.torch); the random numbers are numpy's, drawn on
    the host as for numpy (so the same law, network by network the same draws), then moved to the device."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError("simulate: backend='torch' needs PyTorch, which is not installed; install the torch "
                          "extra: pip install meanfield-hermite[torch]") from exc
    import array_api_compat.torch as ctorch

    spec = backend.partition(":")[2] or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"simulate: backend={backend!r} names no torch device; use 'torch', 'torch:cpu' or "
                         "'torch:cuda[:index]'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"simulate: backend={backend!r} needs a CUDA GPU, which torch does not see; use "
                         "backend='torch' or 'torch:cpu'")
    be = Backend("torch", OnDevice(ctorch, device), "other", dtype_name)
    be.device = device
    return be


def to_host(x) -> np.ndarray:
    """A numpy copy (or view) of an array of any backend."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("cupy"):
        return x.get()
    try:
        return np.from_dlpack(x)
    except Exception:  # noqa: BLE001 - fall back to the buffer protocol / __array__
        pass
    try:
        import array_api_compat

        return np.asarray(array_api_compat.to_device(x, "cpu"))
    except Exception:  # noqa: BLE001
        return np.asarray(x)


def host_apply(fn, x, be: Backend):
    """A numpy-only function of a backend array, by a round trip through the host."""
    y = np.asarray(fn(to_host(x)), dtype=np.float64)
    return be.asarray(y)


def same_kind(y, x) -> bool:
    return type(y) is type(x) and tuple(y.shape) == tuple(x.shape)


def default_memory(be: Backend) -> int:
    """Default memory budget of a run: a quarter of the available RAM (half the free GPU memory on cupy)."""
    if be.kind == "cupy":
        import cupy

        free, _total = cupy.cuda.runtime.memGetInfo()
        return int(free // 2)
    device = getattr(be, "device", None)
    if device is not None and device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free // 2)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 << 30
    return int(max(avail // 4, 64 << 20))


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def blas_single_thread():
    """Cap BLAS at one thread while the seeds are spread over our own threads (`meanfield.core.blas`)."""
    return single_thread()


def is_float_dtype_like(dtype) -> bool:
    try:
        return np.dtype(dtype).kind == "f"
    except TypeError:
        return False


def stderr_tty() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False
