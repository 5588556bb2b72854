"""Convolution as im2col + SGEMM, one bounded chunk of output rows at a time.

For a chunk of output rows (rows counted over all images, ``r = n * Ho + oy``) a parallel
Numba kernel gathers every receptive field into ``cols`` (chunk_rows * Wo, kh * kw * Ci), whose
column order (ky, kx, ci) matches ``kernel.reshape(kh * kw * Ci, Co)``; NumPy's BLAS then writes
``cols @ kernel2d`` straight into that chunk of ``out`` (a contiguous view of the NHWC output),
and the fused bias(+ReLU) epilogue runs while the chunk is still in cache. The workspace is
bounded (``WORKSPACE_BYTES``) and reused across chunks, so memory stays flat for any image size
or batch. Taps that fall outside the input read zero, so any ``pad`` (top, left) and any output
size work, as in ``kernels/reference.py``. A chunk is part of one image, cut the same way in every
image, or whole images with a GEMM each (``_batch``: an image's bits do not depend on its batch).

Layers with a short dot product (``K = kh * kw * Ci`` at most ``SMALL_K``: VGG16's first layer,
K = 27) go another way: their GEMM is thin and their output 64/27 times the columns, so a 32 MB
chunk of columns meant a 76 MB chunk of output written by BLAS and read again by the epilogue
from memory, and 32 MB of workspace at the peak. They are cut into chunks of ``SMALL_K_PIXELS``
output pixels that ``_threads``' workers take whole (gather, single-threaded GEMM, epilogue, all
in one core's cache, with a per-thread buffer of ~100 KB). The two paths take GEMMs of other
heights, so their results may differ by BLAS's rounding (``_batch``).

A 1x1 convolution over an unpadded, same-sized output needs no gather at all: its ``cols`` is
the input itself, viewed as (N*H*W, Ci), taken image by image.
"""

import numpy as np
from numba import njit, prange

from kernels.cpu import _batch, _threads
from kernels.cpu._types import c_array, i64, per_float, types
from kernels.cpu.epilogue import bias_relu_inplace, bias_relu_serial

# Bytes of the im2col buffer per call. Each chunk costs one Numba parallel region and one BLAS
# call, and every hand-over between Numba's and OpenBLAS's thread pools costs a spin-wait/wake-up
# (milliseconds on a busy 2-core box), so chunks are kept few: VGG16's largest layer at 224x224
# (115 MB of columns) takes 4. See benchmarks/kernel_sanity.py --workspace-mb.
WORKSPACE_BYTES = 32 << 20
# Dot products of at most SMALL_K values take per-worker chunks of SMALL_K_PIXELS output pixels
# (the columns of one: ~110 KB at K = 27; 1024 and 4096 pixels timed the same here)
SMALL_K = 64
SMALL_K_PIXELS = 1024


@njit(inline="always")
def _gather_pixel(flat, h, w, ci, kh, kw, top, left, r, ox, ho, dst):
    """dst[(ky*kw + kx)*ci + c] = x[n, oy+ky-top, ox+kx-left, c] for output row r = n*ho + oy and
    column ox, zero outside the input; ``flat`` is x raveled, x of shape (N, h, w, ci)."""
    n = r // ho
    oy = r - n * ho
    run = kw * ci
    kx0 = min(kw, max(0, left - ox))
    kx1 = max(kx0, min(kw, w + left - ox))
    for ky in range(kh):
        iy = oy + ky - top
        base = ky * run
        if iy < 0 or iy >= h:
            for j in range(run):
                dst[base + j] = 0
            continue
        for j in range(kx0 * ci):
            dst[base + j] = 0
        src = ((n * h + iy) * w + ox + kx0 - left) * ci
        for j in range((kx1 - kx0) * ci):
            dst[base + kx0 * ci + j] = flat[src + j]
        for j in range(kx1 * ci, run):
            dst[base + j] = 0


@njit(
    per_float(
        lambda f: types.void(c_array(f, 4), i64, i64, i64, i64, i64, i64, i64, c_array(f, 2))
    ),
    parallel=True,
    cache=True,
)
def im2col_rows(x, kh, kw, top, left, row0, ho, wo, cols):
    """cols[p, (ky*kw + kx)*ci + c] = x[n, oy+ky-top, ox+kx-left, c], zero outside the input.

    Pixel p of the chunk is output row ``row0 + p // wo`` (counted over all images), column
    ``p % wo``. For one (pixel, ky) the valid taps kx0 <= kx < kx1 read one contiguous run of
    (kx1 - kx0) * ci values of the input row, so the copy is a straight memcpy-like loop.
    """
    _, h, w, ci = x.shape
    flat = x.reshape(-1)
    for p in prange(cols.shape[0]):
        _gather_pixel(flat, h, w, ci, kh, kw, top, left, row0 + p // wo, p % wo, ho, cols[p])


@njit(
    per_float(
        lambda f: types.void(c_array(f, 4), i64, i64, i64, i64, i64, i64, i64, c_array(f, 2))
    ),
    nogil=True,
    cache=True,
)
def im2col_pixels(x, kh, kw, top, left, pixel0, ho, wo, cols):
    """``im2col_rows`` for the output pixels pixel0 ... pixel0 + len(cols) - 1 (counted over all
    images, row-major), serial: for work already split over ``_threads``' workers."""
    _, h, w, ci = x.shape
    flat = x.reshape(-1)
    for p in range(cols.shape[0]):
        r = (pixel0 + p) // wo
        _gather_pixel(flat, h, w, ci, kh, kw, top, left, r, pixel0 + p - r * wo, ho, cols[p])


def _small_k(x, kernel2d, bias, relu, kh, kw, top, left, out):
    """The per-worker path of short dot products (see the module docstring)."""
    _, ho, wo, co = out.shape
    k = kernel2d.shape[0]
    n, pixels = out.shape[0], ho * wo
    out2d = out.reshape(n * pixels, co)
    runs, segment = _image_runs(n, pixels, SMALL_K_PIXELS)
    sizes = dict(runs)

    def chunk(p0):
        size = sizes[p0]
        cols = _threads.scratch("im2col_small_k", size * k, out.dtype).reshape(size, k)
        im2col_pixels(x, kh, kw, top, left, p0, ho, wo, cols)
        y = out2d[p0 : p0 + size]
        _batch.segmented_matmul(cols, kernel2d, y, segment)
        if bias is not None:
            bias_relu_serial(y, bias, relu)
        elif relu:
            np.maximum(y, 0, out=y)

    _threads.run_chunks(chunk, sizes)
    return out


def _gemm_epilogue(cols, kernel2d, bias, relu, out_chunk, segment):
    _batch.segmented_matmul(cols, kernel2d, out_chunk, segment)
    if bias is not None:
        bias_relu_inplace(out_chunk, bias, relu)
    elif relu:
        np.maximum(out_chunk, 0, out=out_chunk)


def _image_runs(images, per_image, fit):
    """``_batch.image_runs`` for chunks of at most ``fit`` units: an image cut into near-equal
    runs when it is bigger, else whole images gathered up to it (each its own GEMM)."""
    fit = max(1, fit)
    return _batch.image_runs(images, per_image, -(-per_image // fit), -(-images // max(1, fit // per_image)))


def _workspace_units(bytes_per_unit):
    """Units (output rows, pixels) whose columns fit in ``WORKSPACE_BYTES``."""
    return WORKSPACE_BYTES // max(1, bytes_per_unit)


def flipped_transposed(kernel):
    """kernel_t[ky, kx, co, ci] = kernel[kh-1-ky, kw-1-kx, ci, co], C-contiguous."""
    return np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))


def conv_im2col_gemm(x, kernel, bias, pad, relu, out, transposed=False):
    """out = [relu](bias + x (*) kernel) with C-contiguous arrays of one dtype; bias may be None.

    ``transposed``: apply ``flipped_transposed(kernel)`` instead (the input gradient's kernel).
    """
    if transposed:
        kernel = flipped_transposed(kernel)
    n, _, _, ci = x.shape
    kh, kw, _, co = kernel.shape
    _, ho, wo, _ = out.shape
    k = kh * kw * ci
    total_rows = n * ho
    if total_rows == 0 or wo == 0:
        return out
    kernel2d = kernel.reshape(k, co)
    top, left = int(pad[0]), int(pad[1])
    if k <= SMALL_K:
        return _small_k(x, kernel2d, bias, relu, kh, kw, top, left, out)
    out2d = out.reshape(total_rows * wo, co)
    runs, segment = _image_runs(n, ho, _workspace_units(wo * k * out.itemsize))
    workspace = np.empty((max(size for _, size in runs) * wo, k), dtype=out.dtype)
    for r0, rows in runs:
        cols = workspace[: rows * wo]
        im2col_rows(x, kh, kw, top, left, r0, ho, wo, cols)
        _gemm_epilogue(cols, kernel2d, bias, relu, out2d[r0 * wo : (r0 + rows) * wo],
                       None if segment is None else segment * wo)
    return out


def conv_pointwise_gemm(x, kernel, bias, pad, relu, out, transposed=False):
    """A 1x1, unpadded, same-size convolution: a plain GEMM over pixels, chunked for the epilogue."""
    if transposed:
        kernel = flipped_transposed(kernel)
    n, h, w, ci = x.shape
    co = kernel.shape[3]
    pixels = n * h * w
    if pixels == 0:
        return out
    x2d = x.reshape(pixels, ci)
    out2d = out.reshape(pixels, co)
    kernel2d = kernel.reshape(ci, co)
    runs, segment = _image_runs(n, h * w, _workspace_units((ci + co) * out.itemsize))
    for p0, size in runs:
        _gemm_epilogue(x2d[p0 : p0 + size], kernel2d, bias, relu, out2d[p0 : p0 + size], segment)
    return out
