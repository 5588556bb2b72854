"""Numba type aliases for the explicit signatures of the CPU kernels (umap ``layouts.py`` style).

Every hot kernel is compiled eagerly for float32 (the hot path) and float64 (the gradient checks),
for C-contiguous arrays only; the Python wrappers in each module make inputs contiguous and
reject output buffers that are not, so a compiled kernel never sees another layout.
"""

from numba import types

FLOATS = (types.float32, types.float64)
i64 = types.int64
b1 = types.boolean


def c_array(dtype, ndim):
    """A C-contiguous array type of ``ndim`` dimensions."""
    return types.Array(dtype, ndim, "C")


def per_float(build):
    """The list of signatures ``build(f)`` for every float type ``f`` in ``FLOATS``."""
    return [build(f) for f in FLOATS]
