"""Fused bias (+ReLU) epilogue applied in place to a GEMM result, shared by conv and dense.

``y`` is a (rows, channels) C-contiguous block, usually one chunk of a convolution's output that
the GEMM has just written and that is still in cache; one parallel pass adds the per-channel bias
and, when asked, clamps at zero. ``bias_relu_serial`` is the same pass, serial and ``nogil``, for
work that is already split over ``_threads``' workers.
"""

from numba import njit, prange

from kernels.cpu._types import b1, c_array, per_float, types


@njit(inline="always")
def _bias_relu_row(row, bias, relu):
    """row (channels,) += bias, then clamped at zero when ``relu``."""
    if relu:
        for c in range(row.shape[0]):
            v = row[c] + bias[c]
            row[c] = 0 if v < 0 else v  # NaN propagates, as with np.maximum
    else:
        for c in range(row.shape[0]):
            row[c] += bias[c]


@njit(
    per_float(lambda f: types.void(c_array(f, 2), c_array(f, 1), b1)),
    parallel=True,
    cache=True,
)
def bias_relu_inplace(y, bias, relu):
    for r in prange(y.shape[0]):
        _bias_relu_row(y[r], bias, relu)


@njit(
    per_float(lambda f: types.void(c_array(f, 2), c_array(f, 1), b1)),
    nogil=True,
    cache=True,
)
def bias_relu_serial(y, bias, relu):
    for r in range(y.shape[0]):
        _bias_relu_row(y[r], bias, relu)
