"""Fully-connected layer forward (fused bias + optional ReLU) and input-gradient on the CPU.

x (N, n_in), kernel (n_in, n_out) as in Keras. The products go to NumPy's BLAS, written straight
into the caller's buffer; ``dense_backward_input`` passes ``kernel.T`` as a transposed view, which
BLAS consumes without a copy. The bias(+ReLU) epilogue is the one the convolution uses.

Each sample is its own product (one row: BLAS's vector-matrix kernel), so a sample's values do
not depend on its batch (see ``_batch``); the kernel is then read once per sample (its cost:
benchmarks/README.md, "Batch invariance").
"""

import numpy as np

from kernels.cpu._batch import segmented_matmul
from kernels.cpu._checks import input_like, output_buffer
from kernels.cpu.epilogue import bias_relu_inplace


def dense_forward(x, kernel, bias, relu, out):
    """out = [relu](x @ kernel + bias); x (N, n_in), kernel (n_in, n_out)."""
    output_buffer(out, "out", ndim=2)
    x = input_like(x, out, "x", ndim=2)
    kernel = input_like(kernel, out, "kernel", ndim=2)
    bias = input_like(bias, out, "bias", ndim=1)
    if x.shape[1] != kernel.shape[0] or out.shape != (x.shape[0], kernel.shape[1]):
        raise ValueError(f"x {x.shape} @ kernel {kernel.shape} does not fit out {out.shape}")
    if bias.shape[0] != kernel.shape[1]:
        raise ValueError(f"bias {bias.shape} does not match n_out = {kernel.shape[1]}")
    segmented_matmul(x, kernel, out, 1)
    bias_relu_inplace(out, bias, bool(relu))
    return out


def dense_backward_input(grad_out, kernel, grad_in):
    """grad_in = grad_out @ kernel.T."""
    output_buffer(grad_in, "grad_in", ndim=2)
    grad_out = input_like(grad_out, grad_in, "grad_out", ndim=2)
    kernel = input_like(kernel, grad_in, "kernel", ndim=2)
    if grad_out.shape[1] != kernel.shape[1] or grad_in.shape != (grad_out.shape[0], kernel.shape[0]):
        raise ValueError(
            f"grad_out {grad_out.shape} @ kernel.T {kernel.T.shape} does not fit {grad_in.shape}"
        )
    segmented_matmul(grad_out, kernel.T, grad_in, 1)
    return grad_in
