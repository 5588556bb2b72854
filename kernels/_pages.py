"""Large host buffers on their own anonymous memory maps.

glibc serves a large ``malloc`` from its own mmap and returns it on ``free``, but each such free
raises its mmap threshold to the freed size (up to 32 MiB), so later blocks below it come from the
heap, where freed blocks stay resident. A pool that grows its buffers (``engine.backend.Buffers``,
the kernels' per-thread scratch) thus leaves tens of MiB of dead heap behind it. Buffers from
``pages`` bypass malloc: their pages go back to the system when the array is freed, and they
never move the threshold.
"""

import mmap

import numpy as np

MIN_BYTES = 1 << 20  # smaller buffers come from numpy's allocator as usual


def pages(size: int, dtype) -> np.ndarray:
    """A new writable, C-contiguous 1-D array of ``size`` (at least 1) elements, uninitialised
    below ``MIN_BYTES`` and zero above (fresh pages)."""
    dtype = np.dtype(dtype)
    size = max(1, int(size))
    if size * dtype.itemsize < MIN_BYTES:
        return np.empty(size, dtype)
    # private, as malloc's memory is: a forked child gets copies on write, never shared pages
    flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0)
    return np.frombuffer(mmap.mmap(-1, size * dtype.itemsize, flags=flags), dtype=dtype)
