"""Direct convolution for layers with few output channels (NHWC), one dot product per output.

VGG16's input gradient ends in the first layer's transposed convolution, 64 -> 3 channels at full
resolution. As im2col + GEMM that is a (H*W, 9*64) x (9*64, 3) product: the 9x column buffer
(115 MB at 224x224) is written and read for a GEMM three columns wide, 60-90 ms here for 0.17
GFLOP. Computed directly, each output pixel reads its (at most) 9 input runs of ci contiguous
values and takes co dot products with the matching kernel rows, all in L1: a few milliseconds.

The kernel is re-laid out as ``(kh, kw, co, ci)`` so every dot product runs over contiguous
memory; the sums are reassociated (``fastmath``: vectorised partial sums), which changes rounding
only, as any blocked summation does (relative error ~1e-7 against float64, as im2col's).
"""

import numpy as np
from numba import njit, prange

from kernels.cpu._types import c_array, i64, per_float, types
from kernels.cpu.im2col import flipped_transposed

# At most this many output channels take the direct path: beyond a handful, the GEMM's register
# blocking over output channels wins.
MAX_OUTPUT_CHANNELS = 4


@njit(
    per_float(
        lambda f: types.void(
            c_array(f, 4), c_array(f, 4), c_array(f, 1), types.boolean, i64, i64, c_array(f, 4)
        )
    ),
    parallel=True,
    cache=True,
    fastmath={"reassoc", "contract"},
)
def conv_direct_rows(x, kernel_t, bias, relu, top, left, out):
    """out[n, oy, ox, o] = [relu](bias[o] + sum_{ky, kx, c} x[n, oy+ky-top, ox+kx-left, c] *
    kernel_t[ky, kx, o, c]), zero outside x; work items are output rows."""
    n_img, h, w, ci = x.shape
    kh, kw, co, _ = kernel_t.shape
    _, ho, wo, _ = out.shape
    for r in prange(n_img * ho):
        n = r // ho
        oy = r - n * ho
        for ox in range(wo):
            for o in range(co):
                acc = bias[o]
                for ky in range(kh):
                    iy = oy + ky - top
                    if iy < 0 or iy >= h:
                        continue
                    for kx in range(kw):
                        ix = ox + kx - left
                        if ix < 0 or ix >= w:
                            continue
                        src = x[n, iy, ix]
                        k = kernel_t[ky, kx, o]
                        for c in range(ci):
                            acc += src[c] * k[c]
                if relu and acc < 0:
                    out[n, oy, ox, o] = 0
                else:
                    out[n, oy, ox, o] = acc  # acc keeps the array's type (float32 stays float32)


def conv_direct(x, kernel, bias, pad, relu, out, transposed=False):
    """out = [relu](bias + x (*) kernel) with C-contiguous arrays of one dtype; bias may be None.

    ``transposed``: apply ``flipped_transposed(kernel)`` instead (the input gradient's kernel).
    """
    if transposed:
        kernel = flipped_transposed(kernel)
    if out.size == 0:
        return out
    kernel_t = np.ascontiguousarray(kernel.transpose(0, 1, 3, 2))  # (kh, kw, co, ci): tiny
    if bias is None:
        bias = np.zeros(kernel.shape[3], dtype=out.dtype)
    conv_direct_rows(x, kernel_t, bias, bool(relu), int(pad[0]), int(pad[1]), out)
    return out
