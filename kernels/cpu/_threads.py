"""One level of threads for chunked kernels: each worker runs a whole chunk, BLAS included.

A convolution that alternates Numba parallel regions with multi-threaded BLAS calls hands the
cores from one thread pool to the other at every step (a wake-up and a wait each time, dozens per
layer) and splits every small GEMM across cores. Here instead the work is cut into independent
chunks and each worker thread takes whole chunks: its Numba kernels are compiled serial with
``nogil=True``, and its BLAS calls run single-threaded in that thread
(``openblas_set_num_threads_local(1)``, OpenBLAS 0.3.27+, which NumPy bundles), so a chunk's
data stays in its core's cache and nothing is handed over. Callers cut the work by shapes alone,
never by the number of workers, so results do not depend on how many workers there are or on
which one runs a chunk.

Workers: Numba's thread count (``NUMBA_NUM_THREADS``, the usable cores by default). Where the
OpenBLAS function is not found (another BLAS), the workers still run but each BLAS call may use
its own threads as well.
"""

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba

_lock = threading.Lock()
_pool = None
_local = threading.local()


def _openblas_local_threads():
    """``openblas_set_num_threads_local`` from the OpenBLAS that NumPy loaded, or None."""
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    return None


def workers() -> int:
    return max(1, int(numba.get_num_threads()))


def _pool_instance():
    global _pool
    with _lock:
        if _pool is None:
            import numpy  # noqa: F401 - OpenBLAS must be loaded before it is looked up

            single = _openblas_local_threads()
            _pool = ThreadPoolExecutor(workers(), thread_name_prefix="convscope",
                                       initializer=(lambda: single(1)) if single else None)
        return _pool


def run_chunks(fn, starts, inline=True):
    """fn(start) for every start, spread over the workers; returns when all are done. With
    ``inline`` one start (or one worker) runs in the calling thread, whose BLAS may use several
    threads; without, always on the workers (single-threaded BLAS)."""
    starts = list(starts)
    if inline and (len(starts) <= 1 or workers() == 1):
        for s in starts:
            fn(s)
        return
    for future in [_pool_instance().submit(fn, s) for s in starts]:
        future.result()  # re-raises a worker's exception here


def scratch(name, size, dtype):
    """A per-thread reusable flat buffer of at least ``size`` elements (its first ``size``)."""
    key = (name, dtype)
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        from kernels._pages import pages

        buffers[key] = None  # free the old one first
        buf = buffers[key] = pages(size, dtype)
    return buf[:size]


def _after_fork():
    global _pool
    _pool = None  # a forked child has no worker threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
