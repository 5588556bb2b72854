"""The Fourier image parameterisation's ops on the GPU: the small inverse real 2-D DFT and its adjoint
as direct sums (a DFT as two small matrix products), no FFT library.

Shapes and the exact map are those of ``kernels/reference.py``: spectrum (N, C, H, Wf, 2) with
Wf = W//2 + 1 (real, imaginary last), frequency weights scale (H, Wf), images (N, H, W, C), and

    out[n, y, x, c] = sum_{ky, k} h_k / sqrt(HW) Re(scale[ky, k] X[n, c, ky, k] e^{2 pi i (ky y/H + k x/W)}).

The 2-D sum is separable, and each kernel does both passes in one block, with the intermediate
row or column in shared memory:

* ``irfft2_forward``: one block per (n, c, output row y). Pass 1 (threads over k): the inverse DFT
  along H of every column, evaluated at row y only, Z[k] = sum_ky scale X e^{2 pi i ky y/H};
  pass 2 (threads over x): out[y, x] = sum_k h_k Re(Z[k] e^{2 pi i k x/W}) / sqrt(HW).
* ``irfft2_backward``: one block per (n, c, spectrum row ky). Pass 1 (threads over x, so that a
  warp reads neighbouring pixels): the forward DFT along H of every image column at frequency
  ky, U[x] = sum_y g[y, x] e^{-2 pi i ky y/H}; pass 2 (threads over k):
  grad[ky, k] = h_k scale[ky, k] sum_x U[x] e^{-2 pi i k x/W} / sqrt(HW).

Work per image and channel: H Wf (H + W) complex multiply-adds in the forward and H W (H + Wf) in
the adjoint (a 128 x 128 image: 2.1 M and 3.2 M), against H W H Wf for the unseparated sum. Twiddles come from tables of cos/sin(2 pi j/H)
and (2 pi j/W) built once per block in shared memory (computed in float64, stored float32); the
index ``ky * y mod H`` keeps every angle exact. Sums accumulate in float32 (relative error ~1e-6
at these sizes). Sides up to ``MAX_SIDE`` pixels (the shared tables' size).
"""

import math

from numba import cuda, float32, float64

MAX_SIDE = 512  # the largest H or W these kernels take: their shared tables hold MAX_SIDE entries
THREADS = 128  # threads per block; the passes are strided loops, so any count is correct


@cuda.jit(device=True, cache=True)
def _twiddle_tables(height, width, cos_h, sin_h, cos_w, sin_w):
    """cos/sin(2 pi j / height) for j < height, and the same for width, into shared memory."""
    for j in range(cuda.threadIdx.x, height, cuda.blockDim.x):
        angle = 2.0 * math.pi * float64(j) / float64(height)
        cos_h[j] = math.cos(angle)
        sin_h[j] = math.sin(angle)
    for j in range(cuda.threadIdx.x, width, cuda.blockDim.x):
        angle = 2.0 * math.pi * float64(j) / float64(width)
        cos_w[j] = math.cos(angle)
        sin_w[j] = math.sin(angle)


@cuda.jit(device=True, cache=True)
def _hermitian_weight(k, width):
    """h_k: 1 for the columns that are their own mirror (k = 0, k = W/2 for even W), else 2."""
    if k == 0 or 2 * k == width:
        return float32(1.0)
    return float32(2.0)


@cuda.jit(cache=True)
def irfft2_forward_kernel(spectrum, scale, out):
    n_images, height, width, channels = out.shape
    n_freq = spectrum.shape[3]
    cos_h = cuda.shared.array(MAX_SIDE, float32)
    sin_h = cuda.shared.array(MAX_SIDE, float32)
    cos_w = cuda.shared.array(MAX_SIDE, float32)
    sin_w = cuda.shared.array(MAX_SIDE, float32)
    row_re = cuda.shared.array(MAX_SIDE, float32)
    row_im = cuda.shared.array(MAX_SIDE, float32)
    _twiddle_tables(height, width, cos_h, sin_h, cos_w, sin_w)
    cuda.syncthreads()
    norm = float32(1.0 / math.sqrt(float64(height * width)))
    for block in range(cuda.blockIdx.x, n_images * channels * height, cuda.gridDim.x):
        y = block % height
        c = (block // height) % channels
        n = block // (height * channels)
        for k in range(cuda.threadIdx.x, n_freq, cuda.blockDim.x):
            z_re = float32(0.0)
            z_im = float32(0.0)
            for ky in range(height):
                j = (ky * y) % height
                a = spectrum[n, c, ky, k, 0] * scale[ky, k]
                b = spectrum[n, c, ky, k, 1] * scale[ky, k]
                z_re += a * cos_h[j] - b * sin_h[j]
                z_im += a * sin_h[j] + b * cos_h[j]
            weight = _hermitian_weight(k, width) * norm
            row_re[k] = z_re * weight
            row_im[k] = z_im * weight
        cuda.syncthreads()
        for x in range(cuda.threadIdx.x, width, cuda.blockDim.x):
            total = float32(0.0)
            for k in range(n_freq):
                j = (k * x) % width
                total += row_re[k] * cos_w[j] - row_im[k] * sin_w[j]
            out[n, y, x, c] = total
        cuda.syncthreads()  # the row buffer is free for the next block-stride iteration


@cuda.jit(cache=True)
def irfft2_backward_kernel(grad_out, scale, grad_spectrum):
    n_images, height, width, channels = grad_out.shape
    n_freq = grad_spectrum.shape[3]
    cos_h = cuda.shared.array(MAX_SIDE, float32)
    sin_h = cuda.shared.array(MAX_SIDE, float32)
    cos_w = cuda.shared.array(MAX_SIDE, float32)
    sin_w = cuda.shared.array(MAX_SIDE, float32)
    row_re = cuda.shared.array(MAX_SIDE, float32)
    row_im = cuda.shared.array(MAX_SIDE, float32)
    _twiddle_tables(height, width, cos_h, sin_h, cos_w, sin_w)
    cuda.syncthreads()
    norm = float32(1.0 / math.sqrt(float64(height * width)))
    for block in range(cuda.blockIdx.x, n_images * channels * height, cuda.gridDim.x):
        ky = block % height
        c = (block // height) % channels
        n = block // (height * channels)
        for x in range(cuda.threadIdx.x, width, cuda.blockDim.x):
            u_re = float32(0.0)
            u_im = float32(0.0)
            for y in range(height):
                j = (ky * y) % height
                g = grad_out[n, y, x, c]  # neighbouring threads read neighbouring pixels
                u_re += g * cos_h[j]
                u_im -= g * sin_h[j]
            row_re[x] = u_re
            row_im[x] = u_im
        cuda.syncthreads()
        for k in range(cuda.threadIdx.x, n_freq, cuda.blockDim.x):
            a_re = float32(0.0)
            a_im = float32(0.0)
            for x in range(width):
                j = (k * x) % width
                a_re += row_re[x] * cos_w[j] + row_im[x] * sin_w[j]
                a_im += row_im[x] * cos_w[j] - row_re[x] * sin_w[j]
            s = scale[ky, k] * _hermitian_weight(k, width) * norm
            grad_spectrum[n, c, ky, k, 0] = a_re * s
            grad_spectrum[n, c, ky, k, 1] = a_im * s
        cuda.syncthreads()


def _check_shapes(spectrum, scale, image):
    n, height, width, channels = image.shape
    expected = (n, channels, height, width // 2 + 1, 2)
    if tuple(spectrum.shape) != expected:
        raise ValueError(f"spectrum {tuple(spectrum.shape)} does not fit images {tuple(image.shape)}: expected {expected}")
    if tuple(scale.shape) != expected[2:4]:
        raise ValueError(f"scale {tuple(scale.shape)} does not fit images {tuple(image.shape)}: expected {expected[2:4]}")
    if max(height, width) > MAX_SIDE:
        raise ValueError(f"the CUDA Fourier ops take images up to {MAX_SIDE} pixels a side, got {height}x{width}")


def _blocks(count):
    return max(1, min(count, 65535))  # block-stride loops cover anything larger


def irfft2_forward(spectrum, scale, out):
    """out (N,H,W,C) = irfft2(scale * spectrum, norm="ortho") per image and channel; returns out."""
    _check_shapes(spectrum, scale, out)
    n, height, _, channels = out.shape
    irfft2_forward_kernel[_blocks(n * channels * height), THREADS](spectrum, scale, out)
    return out


def irfft2_backward(grad_out, scale, grad_spectrum):
    """The adjoint of ``irfft2_forward``: grad_spectrum (N, C, H, W//2+1, 2); returns it."""
    _check_shapes(grad_spectrum, scale, grad_out)
    n, height, _, channels = grad_out.shape
    irfft2_backward_kernel[_blocks(n * channels * height), THREADS](grad_out, scale, grad_spectrum)
    return grad_spectrum
