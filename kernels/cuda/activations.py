"""ReLU and sigmoid, forward and backward: one thread per element over flat views.

Elementwise, so the layout does not matter beyond C-contiguity; the grid-stride loop lets any size
run on a capped grid. ``relu_backward`` takes the mode integers of ``kernels/__init__.py``.
"""

import math

from numba import cuda, float32

from kernels import RELU_DECONV, RELU_GUIDED, RELU_MODES
from kernels.cuda.launch import ELEMENTWISE_THREADS, blocks_for, flat


@cuda.jit(cache=True)
def relu_forward_kernel(x, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = max(x[i], float32(0.0))


@cuda.jit(cache=True)
def relu_backward_kernel(grad_out, y, mode, grad_in):
    for i in range(cuda.grid(1), grad_out.size, cuda.gridsize(1)):
        g = grad_out[i]
        passes = y[i] > 0  # RELU_STANDARD, also the default
        if mode == RELU_GUIDED:
            passes = y[i] > 0 and g > 0
        elif mode == RELU_DECONV:
            passes = g > 0
        grad_in[i] = g if passes else float32(0.0)


@cuda.jit(cache=True)
def sigmoid_forward_kernel(x, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        # exp of a non-positive number only: no overflow to inf for any input
        if x[i] >= 0:
            out[i] = float32(1.0) / (float32(1.0) + math.exp(-x[i]))
        else:
            e = math.exp(x[i])
            out[i] = e / (float32(1.0) + e)


@cuda.jit(cache=True)
def sigmoid_backward_kernel(grad_out, y, grad_in):
    for i in range(cuda.grid(1), grad_out.size, cuda.gridsize(1)):
        grad_in[i] = grad_out[i] * y[i] * (float32(1.0) - y[i])


def _grid(array):
    return blocks_for(array.size, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS


def relu_forward(x, out):
    relu_forward_kernel[_grid(x)](flat(x), flat(out))
    return out


def relu_backward(grad_out, y, mode, grad_in):
    """y is the ReLU's forward output. mode: RELU_STANDARD, RELU_GUIDED or RELU_DECONV."""
    if mode not in RELU_MODES.values():
        raise ValueError(f"unknown ReLU backward mode {mode}")
    relu_backward_kernel[_grid(grad_out)](flat(grad_out), flat(y), mode, flat(grad_in))
    return grad_in


def sigmoid_forward(x, out):
    sigmoid_forward_kernel[_grid(x)](flat(x), flat(out))
    return out


def sigmoid_backward(grad_out, y, grad_in):
    sigmoid_backward_kernel[_grid(grad_out)](flat(grad_out), flat(y), flat(grad_in))
    return grad_in

