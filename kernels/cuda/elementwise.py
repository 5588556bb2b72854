"""Elementwise helpers that the visualization loops run on the GPU between forward/backward passes.

* ``scale_by_rms(grad, eps, out)``: ``out = g / (sqrt(mean(g**2)) + eps)`` per sample (axis 0);
* ``scale_by_mean_abs(grad, eps, out)``: ``out = g / (mean(|g|) + eps)`` per sample;
* ``axpy(alpha, x, y)``: ``y += alpha * x`` (any shape), returns y;
* ``masked_axpy(alpha, scale, x, active, y)``: ``y[n] += alpha * scale[n] * x[n]`` for the samples
  with ``active[n] != 0``: the optimisation loops' step, with the per-sample factor of
  ``scores.sample_scale`` (only the samples no stopping rule froze move);
* ``fill(value, out)``: every element of out (any shape) set to value.

The loops use ``scores.sample_scale`` + ``masked_axpy`` rather than ``scale_by_rms`` /
``scale_by_mean_abs``: one pass less over the gradient, a grid that does not shrink to one block
per sample, and DeepDream's ``max(mean |g|, eps)`` (``scale_by_mean_abs`` adds eps instead).

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


@cuda.jit(cache=True)
def masked_axpy_kernel(alpha, scale, x, active, y):
    per_sample = x.size // scale.size
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        n = i // per_sample
        if active[n] != 0:
            y[i] += alpha * scale[n] * x[i]


@cuda.jit(cache=True)
def fill_kernel(value, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = value


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


def masked_axpy(alpha, scale, x, active, y):
    """y[n] += alpha * scale[n] * x[n] for each sample n with active[n] != 0 (int32); returns y."""
    blocks = blocks_for(x.size, ELEMENTWISE_THREADS)
    masked_axpy_kernel[blocks, ELEMENTWISE_THREADS](float32(alpha), scale, flat(x), active, flat(y))
    return y


def fill(value, out):
    """out[...] = value; returns out."""
    fill_kernel[blocks_for(out.size, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS](float32(value), flat(out))
    return out
