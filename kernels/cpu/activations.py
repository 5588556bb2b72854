"""Elementwise and row-wise activations on the CPU: ReLU (three backward modes), softmax, sigmoid.

ReLU and sigmoid accept any shape: the wrappers flatten the (C-contiguous) arrays to 1-D views
and one parallel loop covers them. Softmax works over the last axis, one row per parallel job,
shifted by the row maximum, with its sums accumulated in float64. Sigmoid uses the form that
never exponentiates a positive number, so it is finite for any input.
"""

import math

from numba import njit, prange

from kernels import RELU_DECONV, RELU_GUIDED, RELU_STANDARD
from kernels.cpu._checks import input_like, output_buffer, same_shape
from kernels.cpu._types import c_array, i64, per_float, types


def _flat_pair(a, out, a_name, out_name):
    output_buffer(out, out_name)
    a = input_like(a, out, a_name)
    same_shape(a, out, a_name, out_name)
    return a.reshape(-1), out.reshape(-1)


def _rows(a, out, a_name, out_name):
    output_buffer(out, out_name)
    a = input_like(a, out, a_name)
    same_shape(a, out, a_name, out_name)
    c = out.shape[-1] if out.ndim else 1
    return a.reshape(-1, c), out.reshape(-1, c)


_unary = per_float(lambda f: types.void(c_array(f, 1), c_array(f, 1)))
_binary = per_float(lambda f: types.void(c_array(f, 1), c_array(f, 1), c_array(f, 1)))
_unary_rows = per_float(lambda f: types.void(c_array(f, 2), c_array(f, 2)))
_binary_rows = per_float(lambda f: types.void(c_array(f, 2), c_array(f, 2), c_array(f, 2)))


@njit(_unary, parallel=True, cache=True)
def _relu(x, out):
    for i in prange(x.shape[0]):
        v = x[i]
        out[i] = 0 if v < 0 else v  # NaN propagates, as with np.maximum


@njit(
    per_float(lambda f: types.void(c_array(f, 1), c_array(f, 1), i64, c_array(f, 1))),
    parallel=True,
    cache=True,
)
def _relu_backward(grad_out, y, mode, grad_in):
    for i in prange(grad_out.shape[0]):
        g = grad_out[i]
        if mode == RELU_STANDARD:
            keep = y[i] > 0
        elif mode == RELU_GUIDED:
            keep = y[i] > 0 and g > 0
        else:  # RELU_DECONV: the forward's mask is ignored
            keep = g > 0
        grad_in[i] = g if keep else 0


def relu_forward(x, out):
    x, flat_out = _flat_pair(x, out, "x", "out")
    _relu(x, flat_out)
    return out


def relu_backward(grad_out, y, mode, grad_in):
    """y is the ReLU's forward output. mode: RELU_STANDARD, RELU_GUIDED or RELU_DECONV."""
    if mode not in (RELU_STANDARD, RELU_GUIDED, RELU_DECONV):
        raise ValueError(f"unknown ReLU backward mode {mode}")
    grad_out, flat_in = _flat_pair(grad_out, grad_in, "grad_out", "grad_in")
    y = input_like(y, grad_in, "y")
    same_shape(y, grad_in, "y", "grad_in")
    _relu_backward(grad_out, y.reshape(-1), int(mode), flat_in)
    return grad_in


@njit(_unary_rows, parallel=True, cache=True)
def _softmax(x, out):
    rows, c = x.shape
    for r in prange(rows):
        m = x[r, 0]
        for j in range(1, c):
            m = max(m, x[r, j])
        total = 0.0  # float64 accumulator
        for j in range(c):
            e = math.exp(x[r, j] - m)
            out[r, j] = e
            total += e
        scale = 1.0 / total
        for j in range(c):
            out[r, j] *= scale


@njit(_binary_rows, parallel=True, cache=True)
def _softmax_backward(grad_out, y, grad_in):
    rows, c = y.shape
    for r in prange(rows):
        dot = 0.0  # float64 accumulator
        for j in range(c):
            dot += grad_out[r, j] * y[r, j]
        for j in range(c):
            grad_in[r, j] = y[r, j] * (grad_out[r, j] - dot)


def softmax_forward(x, out):
    """Softmax over the last axis, shifted by the row max for stability."""
    x, rows_out = _rows(x, out, "x", "out")
    if rows_out.size:
        _softmax(x, rows_out)
    return out


def softmax_backward(grad_out, y, grad_in):
    """y = softmax output; grad_in = y * (grad_out - sum(grad_out * y))."""
    grad_out, rows_in = _rows(grad_out, grad_in, "grad_out", "grad_in")
    y = input_like(y, grad_in, "y")
    same_shape(y, grad_in, "y", "grad_in")
    if rows_in.size:
        _softmax_backward(grad_out, y.reshape(rows_in.shape), rows_in)
    return grad_in


@njit(_unary, parallel=True, cache=True)
def _sigmoid(x, out):
    for i in prange(x.shape[0]):
        v = x[i]
        if v >= 0:
            out[i] = 1.0 / (1.0 + math.exp(-v))
        else:
            e = math.exp(v)  # never exp of a positive number: no overflow
            out[i] = e / (1.0 + e)


@njit(_binary, parallel=True, cache=True)
def _sigmoid_backward(grad_out, y, grad_in):
    for i in prange(y.shape[0]):
        grad_in[i] = grad_out[i] * y[i] * (1 - y[i])


def sigmoid_forward(x, out):
    x, flat_out = _flat_pair(x, out, "x", "out")
    _sigmoid(x, flat_out)
    return out


def sigmoid_backward(grad_out, y, grad_in):
    grad_out, flat_in = _flat_pair(grad_out, grad_in, "grad_out", "grad_in")
    y = input_like(y, grad_in, "y")
    same_shape(y, grad_in, "y", "grad_in")
    _sigmoid_backward(grad_out, y.reshape(-1), flat_in)
    return grad_in
