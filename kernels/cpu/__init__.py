"""CPU backend: every op of ``kernels.OP_NAMES`` as Numba kernels (+ NumPy's BLAS for products).

Same names, signatures and conventions as ``kernels/reference.py``: NHWC C-contiguous arrays,
float32 on the hot path (float64 also compiled, for gradient checks), each op writing into its
output buffer and returning it. Kernels are ``@njit(parallel=True, cache=True)`` with explicit
signatures, so importing this package compiles them once and later processes load them from
Numba's on-disk cache. The thread count is Numba's (``NUMBA_NUM_THREADS``) and BLAS's own; this
package sets neither.

Modules: ``conv`` (public conv ops, algorithm choice) over ``im2col`` (im2col + SGEMM), ``pool``,
``dense``, ``activations``, with the shared ``epilogue`` (bias + ReLU); ``elementwise``: the ops of
the optimisation loops (scores, steps, image moves), NumPy; ``fourier``: the Fourier image
parameterisation (numpy.fft).
"""

from kernels.cpu.activations import (
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    softmax_backward,
    softmax_forward,
)
from kernels.cpu.conv import conv2d_backward_input, conv2d_forward
from kernels.cpu.dense import dense_backward_input, dense_forward
from kernels.cpu.elementwise import (
    add_window,
    axpy,
    channel_sum,
    copy_window,
    fill,
    masked_axpy,
    resize_bilinear,
    roll,
    sample_scale,
    square_sum,
    variation_sum,
)
from kernels.cpu.fourier import irfft2_backward, irfft2_forward
from kernels.cpu.pool import maxpool_backward, maxpool_forward

__all__ = [
    "conv2d_forward",
    "conv2d_backward_input",
    "relu_forward",
    "relu_backward",
    "maxpool_forward",
    "maxpool_backward",
    "dense_forward",
    "dense_backward_input",
    "softmax_forward",
    "softmax_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "fill",
    "axpy",
    "masked_axpy",
    "sample_scale",
    "channel_sum",
    "square_sum",
    "variation_sum",
    "roll",
    "resize_bilinear",
    "copy_window",
    "add_window",
    "irfft2_forward",
    "irfft2_backward",
]
