"""Elementwise helpers that the visualization loops run on the GPU between forward/backward passes.

* ``scale_by_rms(grad, eps, out)``: ``out = g / (sqrt(mean(g**2)) + eps)`` per sample (axis 0);
* ``scale_by_mean_abs(grad, eps, out)``: ``out = g / (mean(|g|) + eps)`` per sample;
* ``axpy(alpha, x, y)``: ``y += alpha * x`` (any shape), returns y.

Per-sample statistics use one block per sample over the flattened sample and a shared-memory
reduction (``reduce.py``). Same shapes and dtypes in and out; ``out`` may be ``grad`` itself.
"""

import math

from numba import cuda, float32

from kernels.cuda.launch import ELEMENTWISE_THREADS, ROW_THREADS, blocks_for, flat
from kernels.cuda.reduce import block_sum


@cuda.jit(cache=True)
def scale_by_rms_kernel(grad, eps, out):
    scratch = cuda.shared.array(ROW_THREADS, float32)
    row, tid, step = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    width = grad.shape[1]
    total = float32(0.0)
    for j in range(tid, width, step):
        total += grad[row, j] * grad[row, j]
    total = block_sum(scratch, total)
    scale = float32(1.0) / (math.sqrt(total / float32(width)) + eps)
    for j in range(tid, width, step):
        out[row, j] = grad[row, j] * scale


@cuda.jit(cache=True)
def scale_by_mean_abs_kernel(grad, eps, out):
    scratch = cuda.shared.array(ROW_THREADS, float32)
    row, tid, step = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    width = grad.shape[1]
    total = float32(0.0)
    for j in range(tid, width, step):
        total += abs(grad[row, j])
    total = block_sum(scratch, total)
    scale = float32(1.0) / (total / float32(width) + eps)
    for j in range(tid, width, step):
        out[row, j] = grad[row, j] * scale


@cuda.jit(cache=True)
def axpy_kernel(alpha, x, y):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        y[i] += alpha * x[i]


def _samples(array):
    return array.reshape(array.shape[0], array.size // array.shape[0])


def scale_by_rms(grad, eps, out):
    """out = grad / (sqrt(mean(grad**2)) + eps), statistics per sample (axis 0)."""
    scale_by_rms_kernel[grad.shape[0], ROW_THREADS](_samples(grad), float32(eps), _samples(out))
    return out


def scale_by_mean_abs(grad, eps, out):
    """out = grad / (mean(|grad|) + eps), statistics per sample (axis 0)."""
    kernel = scale_by_mean_abs_kernel[grad.shape[0], ROW_THREADS]
    kernel(_samples(grad), float32(eps), _samples(out))
    return out


def axpy(alpha, x, y):
    """y += alpha * x, in place; returns y."""
    blocks = blocks_for(x.size, ELEMENTWISE_THREADS)
    axpy_kernel[blocks, ELEMENTWISE_THREADS](float32(alpha), flat(x), flat(y))
    return y
