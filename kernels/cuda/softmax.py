"""Softmax over the last axis, forward and backward: one block per row, shared-memory reductions.

Rows are every position of the leading axes (a flat (rows, classes) view). Forward shifts by the
row max for stability; backward is ``grad_in = y * (grad_out - sum(grad_out * y))``.
"""

import math

from numba import cuda, float32

from kernels.cuda.launch import ROW_THREADS, rows
from kernels.cuda.reduce import block_max, block_sum


@cuda.jit(cache=True)
def softmax_forward_kernel(x, out):
    scratch = cuda.shared.array(ROW_THREADS, float32)
    row, tid, step = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    width = x.shape[1]
    largest = float32(-math.inf)
    for j in range(tid, width, step):
        largest = max(largest, x[row, j])
    largest = block_max(scratch, largest)
    total = float32(0.0)
    for j in range(tid, width, step):
        total += math.exp(x[row, j] - largest)
    total = block_sum(scratch, total)
    for j in range(tid, width, step):
        out[row, j] = math.exp(x[row, j] - largest) / total


@cuda.jit(cache=True)
def softmax_backward_kernel(grad_out, y, grad_in):
    scratch = cuda.shared.array(ROW_THREADS, float32)
    row, tid, step = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    width = y.shape[1]
    dot = float32(0.0)
    for j in range(tid, width, step):
        dot += grad_out[row, j] * y[row, j]
    dot = block_sum(scratch, dot)
    for j in range(tid, width, step):
        grad_in[row, j] = y[row, j] * (grad_out[row, j] - dot)


def softmax_forward(x, out):
    """Softmax over the last axis of x (..., classes)."""
    x_rows = rows(x)
    softmax_forward_kernel[x_rows.shape[0], ROW_THREADS](x_rows, rows(out))
    return out


def softmax_backward(grad_out, y, grad_in):
    """y = softmax output; grad_in = y * (grad_out - sum(grad_out * y))."""
    y_rows = rows(y)
    softmax_backward_kernel[y_rows.shape[0], ROW_THREADS](rows(grad_out), y_rows, rows(grad_in))
    return grad_in
