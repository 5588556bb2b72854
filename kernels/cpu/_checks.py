"""Argument checks shared by the CPU wrappers: contiguous float inputs, writable output buffers.

The compiled kernels only accept C-contiguous float32/float64 arrays of one dtype; these helpers
convert inputs to the output's dtype (no copy when it already matches) and refuse an output
buffer that cannot be written in place, because an op's result must land in the caller's buffer.
"""

import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def output_buffer(out, name, ndim=None):
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {out.dtype}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be a writable C-contiguous array")
    if ndim is not None and out.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {out.shape}")
    return out


def input_like(a, out, name, ndim=None):
    """``a`` as a C-contiguous array of ``out``'s dtype (a view when it already is one)."""
    a = np.ascontiguousarray(a, dtype=out.dtype)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return a


def same_shape(a, b, a_name, b_name):
    if a.shape != b.shape:
        raise ValueError(f"{a_name} {a.shape} and {b_name} {b.shape} must have the same shape")
