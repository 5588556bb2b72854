"""CUDA backend: every op of ``kernels/reference.py``, same names and signatures, on numba device
arrays (inputs and an explicit output buffer, which is returned), as ``@cuda.jit`` kernels whose
launchers derive the grid from the shapes. Also the ops of the optimisation loops, which keep an
image batch on the device for a whole run: scores with their gradients and the per-sample gradient
scale (``scores.py``; these reductions also take an optional ``scratch`` for their partial sums,
so that a loop can reuse one buffer), the masked step, fill and axpy (``elementwise.py``), and
rolls, bilinear resizes and windows of image batches (``images.py``); and the Fourier image
parameterisation's inverse real DFT and its adjoint (``fourier.py``).

Layout and conventions are those of ``kernels/__init__.py`` (NHWC float32, C-contiguous; conv
kernels (kh, kw, c_in, c_out) as cross-correlation; uint8/int32 argmax ``dy * pw + dx``).

Needs the ``numba-cuda`` package (``pip install -e ".[cuda]"``). Importing this module never
touches a GPU; ``is_available()`` says whether kernels can run here (a GPU, or Numba's simulator
under ``NUMBA_ENABLE_CUDASIM=1``).
"""

import importlib.util

if importlib.util.find_spec("numba_cuda") is None:
    raise ImportError(
        'the CUDA backend needs the numba-cuda package: pip install -e ".[cuda]" '
        "(numba's own bundled numba.cuda is deprecated and not supported)"
    )

from kernels.cuda.activations import relu_backward, relu_forward, sigmoid_backward, sigmoid_forward
from kernels.cuda.conv import (
    conv2d_backward_input,
    conv2d_forward,
    dense_backward_input,
    dense_forward,
)
from kernels.cuda.elementwise import axpy, fill, masked_axpy
from kernels.cuda.fourier import irfft2_backward, irfft2_forward
from kernels.cuda.images import add_window, copy_window, resize_bilinear, roll
from kernels.cuda.pool import maxpool_backward, maxpool_forward
from kernels.cuda.scores import channel_sum, sample_scale, square_sum, variation_sum
from kernels.cuda.softmax import softmax_backward, softmax_forward


def is_available():
    """True when CUDA kernels can run: a usable GPU and driver, or the simulator. Never raises."""
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # a broken driver or toolkit install means "not available", not a crash
        return False


__all__ = [
    "is_available",
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
    "axpy",
    "fill",
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
