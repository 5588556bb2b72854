"""Convolution for layers with few output channels: one GEMM on the input's own pixels, then
shifted sums (NHWC).

VGG16's input gradient ends in the first layer's transposed convolution, 64 -> 3 channels at full
resolution. As im2col + GEMM that is a (H*W, 9*64) x (9*64, 3) product whose 9x column buffer
(115 MB at 224x224) is written and read for a GEMM three columns wide. Instead, every kernel tap
is applied to every pixel in one product with the pixels as they lie in memory,

    C[p, (ky, kx, o)] = sum_c x[p, c] kernel[ky, kx, c, o]        (h*w, ci) x (ci, kh*kw*co), BLAS

and each output sums its taps' columns from the shifted pixels (no column buffer; C is kh*kw*co
values a pixel, 27 for the first layer's gradient):

    out[oy, ox, o] = [relu](bias[o] + sum_{ky, kx} C[(oy + ky - top, ox + kx - left), (ky, kx, o)])

with taps outside x skipped, in (ky, kx) order. Work goes in bands of output rows, the same bands
in every image, each band's product over the input rows it reads (``BAND_BYTES`` of C), one BLAS
call per band on ``_threads``' workers (single-threaded BLAS, so a band's bits do not depend on the
batch or on the number of workers). Rounding: a dot product over ci in BLAS's order, then kh*kw
sums (relative error ~1e-7 against float64, as im2col's).
"""

import numpy as np
from numba import njit

from kernels.cpu import _threads
from kernels.cpu._types import b1, c_array, i64, per_float, types
from kernels.cpu.im2col import flipped_transposed

# At most this many output channels take this path: C holds kh*kw*co values a pixel, and beyond a
# handful the GEMM's register blocking over output channels (im2col, Winograd) wins.
MAX_OUTPUT_CHANNELS = 4
BAND_BYTES = 1 << 20  # bytes of C per band: about one core's L2


@njit(
    per_float(lambda f: types.void(c_array(f, 2), c_array(f, 1), b1, i64, i64, i64, i64, i64, i64, i64, i64, i64,
                                   c_array(f, 4))),
    nogil=True,
    cache=True,
)
def shifted_sums(c, bias, relu, kh, kw, top, left, w, y0, image, r0, r1, out):
    """out[image, oy, ox, o] for r0 <= oy < r1 from c (rows * w, >= kh*kw*co): the products of
    the input rows y0, y0 + 1, ... (w pixels each) of that image, every input row those outputs
    read; column (ky * kw + kx) * co + o of c is tap (ky, kx) of output channel o.

    Each output row is summed in place, a tap at a time (bias first, then the taps in (ky, kx)
    order, each over the columns where it lies inside x): the same sums as one accumulator per
    output, without a bounds test per term."""
    _, ho, wo, co = out.shape
    rows = c.shape[0] // w
    for oy in range(r0, r1):
        row = out[image, oy].reshape(-1)
        for ox in range(wo):
            for o in range(co):
                row[ox * co + o] = bias[o]
        for ky in range(kh):
            iy = oy + ky - top - y0
            if iy < 0 or iy >= rows:
                continue
            for kx in range(kw):
                lo, hi = max(0, left - kx), min(wo, w + left - kx)  # outputs whose tap is inside x
                tap = (ky * kw + kx) * co
                for ox in range(lo, hi):
                    src = c[iy * w + ox + kx - left]
                    for o in range(co):
                        row[ox * co + o] += src[tap + o]
        if relu:
            for p in range(wo * co):
                if row[p] < 0:
                    row[p] = 0


def conv_shifted(x, kernel, bias, pad, relu, out, transposed=False):
    """out = [relu](bias + x (*) kernel) with C-contiguous arrays of one dtype; bias may be None.

    ``transposed``: apply ``flipped_transposed(kernel)`` instead (the input gradient's kernel).
    """
    if transposed:
        kernel = flipped_transposed(kernel)
    n, h, w, ci = x.shape
    kh, kw, _, co = kernel.shape
    _, ho, wo, _ = out.shape
    if out.size == 0:
        return out
    # C's columns padded with zeros to a multiple of 8: BLAS's kernels take whole blocks (27 -> 32
    # columns: 15% less time for the first layer's gradient)
    taps = -(-kh * kw * co // 8) * 8
    k2 = np.zeros((ci, taps), dtype=out.dtype)
    k2[:, : kh * kw * co] = kernel.transpose(2, 0, 1, 3).reshape(ci, kh * kw * co)
    if bias is None:
        bias = np.zeros(co, dtype=out.dtype)
    top, left = int(pad[0]), int(pad[1])
    band = max(1, BAND_BYTES // max(1, w * taps * out.itemsize))  # output rows per band
    flat = x.reshape(n, h * w, ci)

    def work(item):
        image, r0 = item
        r1 = min(ho, r0 + band)
        y0, y1 = max(0, r0 - top), max(0, min(h, r1 - top + kh - 1))  # the input rows read
        c = _threads.scratch("shifted_c", max(0, y1 - y0) * w * taps, out.dtype).reshape(-1, taps)
        if len(c):
            np.matmul(flat[image, y0 * w : y1 * w], k2, out=c)
        shifted_sums(c, bias, bool(relu), kh, kw, top, left, w, y0, image, r0, r1, out)

    # on the workers even when there is one band: their BLAS is single-threaded, so a band's
    # product is the same call in every batch
    _threads.run_chunks(work, [(i, r0) for i in range(n) for r0 in range(0, ho, band)], inline=False)
    return out
