"""Convolution and dense ops on the GPU, all through the implicit GEMM of ``gemm.py``.

* ``conv2d_backward_input`` is the same GEMM over ``grad_out`` with the flipped, transposed kernel
  ``kernel_t[ky, kx, co, ci] = kernel[kh-1-ky, kw-1-kx, ci, co]`` and padding
  ``(kh-1-top, kw-1-left)``: input pixel ``iy`` receives from output row ``oy = iy + top - ky``.
  A small kernel builds ``kernel_t`` on the device (followed by c_in zeros that serve as the GEMM's
  bias), in one scratch allocation per call.
* A dense layer is a 1x1 convolution on a 1x1 image: ``dense_forward`` reshapes (no copy) and
  runs the forward GEMM; ``dense_backward_input`` runs the backward one, where ``kernel_t`` is
  simply ``kernel.T``.

Shapes follow ``kernels/__init__.py``: x (N,H,W,Ci), kernel (kh,kw,Ci,Co), dense kernel
(n_in,n_out).
"""

from numba import cuda

from kernels.cuda.gemm import DEFAULT_TILE, launch_conv_gemm
from kernels.cuda.launch import ELEMENTWISE_THREADS, blocks_for


@cuda.jit(cache=True)
def flip_transpose_kernel(kernel, kernel_t_and_zeros):
    """kernel_t_and_zeros[:kh*kw*Co*Ci] = kernel_t (kh,kw,Co,Ci) row-major; the Ci after it = 0."""
    kh, kw, c_in, c_out = kernel.shape
    size = kh * kw * c_out * c_in
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, size + c_in, stride):
        if e < size:
            ci = e % c_in
            co = (e // c_in) % c_out
            tap = e // (c_in * c_out)
            ky, kx = tap // kw, tap % kw
            kernel_t_and_zeros[e] = kernel[kh - 1 - ky, kw - 1 - kx, ci, co]
        else:
            kernel_t_and_zeros[e] = 0.0


def _flipped_kernel_and_zero_bias(kernel):
    """Device (kh*kw*Co, Ci) transposed-flipped kernel and a (Ci,) zero bias, one allocation."""
    kh, kw, c_in, c_out = kernel.shape
    size = kh * kw * c_out * c_in
    scratch = cuda.device_array(size + c_in, dtype=kernel.dtype)
    flip_transpose_kernel[blocks_for(size + c_in, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS](
        kernel, scratch
    )
    return scratch[:size].reshape(kh * kw * c_out, c_in), scratch[size:]


def conv2d_forward(x, kernel, bias, pad, relu, out):
    """out = [relu](bias + x (*) kernel); x (N,H,W,Ci), kernel (kh,kw,Ci,Co), out (N,Ho,Wo,Co)."""
    return conv2d_forward_tiled(x, kernel, bias, pad, relu, out, DEFAULT_TILE)


def conv2d_backward_input(grad_out, kernel, pad, grad_in):
    """grad_in = transposed convolution of grad_out (N,Ho,Wo,Co) -> (N,H,W,Ci), before any ReLU."""
    return conv2d_backward_input_tiled(grad_out, kernel, pad, grad_in, DEFAULT_TILE)


def conv2d_forward_tiled(x, kernel, bias, pad, relu, out, tile):
    """``conv2d_forward`` with an explicit GEMM tile shape (tests use small ones, tuning others)."""
    kh, kw, c_in, c_out = kernel.shape
    w = kernel.reshape(kh * kw * c_in, c_out)
    return launch_conv_gemm(x, w, bias, kw, pad, relu, out, tile)


def conv2d_backward_input_tiled(grad_out, kernel, pad, grad_in, tile):
    """``conv2d_backward_input`` with an explicit GEMM tile shape."""
    kh, kw = kernel.shape[:2]
    kernel_t, zero_bias = _flipped_kernel_and_zero_bias(kernel)
    pad_t = (kh - 1 - pad[0], kw - 1 - pad[1])
    return launch_conv_gemm(grad_out, kernel_t, zero_bias, kw, pad_t, False, grad_in, tile)


def dense_forward(x, kernel, bias, relu, out):
    """out = [relu](x @ kernel + bias); x (N, n_in), kernel (n_in, n_out)."""
    n, n_in = x.shape
    n_out = kernel.shape[1]
    launch_conv_gemm(
        x.reshape(n, 1, 1, n_in), kernel, bias, 1, (0, 0), relu, out.reshape(n, 1, 1, n_out)
    )
    return out


def dense_backward_input(grad_out, kernel, grad_in):
    """grad_in = grad_out @ kernel.T; grad_out (N, n_out), grad_in (N, n_in)."""
    n, n_out = grad_out.shape
    n_in = kernel.shape[0]
    conv2d_backward_input(
        grad_out.reshape(n, 1, 1, n_out),
        kernel.reshape(1, 1, n_in, n_out),
        (0, 0),
        grad_in.reshape(n, 1, 1, n_in),
    )
    return grad_in
