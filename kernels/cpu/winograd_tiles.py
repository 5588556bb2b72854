"""Winograd's per-tile data passes (``winograd.py``): gather + input transform, output scatter.

Flat buffers, tiles numbered ``t = (n * tiles_h + ty) * tiles_w + tx`` from ``t0``; tile (ty, tx)
reads input rows ``ty*m - top ... + a - 1`` (a = m + 2; columns alike) and writes outputs
``[ty*m, ty*m+m) x [tx*m, tx*m+m)`` (those past ``out``'s edge dropped). Every term is a
contiguous run of channels (or tiles) scaled and summed, which LLVM vectorises; the sums are the
separable transforms' own, in the same order as ``winograd.transform_axis`` applies them.
"""

import numpy as np
from numba import njit

from kernels.cpu._types import FLOATS, b1, c_array, i64, per_float, types


def _maybe_readonly(ndim):
    """C-contiguous array types of every float, writable and read-only (inputs may be frozen)."""
    return [types.Array(f, ndim, "C", readonly=r) for f in FLOATS for r in (False, True)]


@njit(
    [
        types.void(x_type, c_array(x_type.dtype, 2), i64, i64, i64, i64, i64, i64,
                   c_array(x_type.dtype, 1), i64, i64)
        for x_type in _maybe_readonly(4)
    ],
    nogil=True,
    cache=True,
)
def gather_tiles(x, bt, m, top, left, tiles_h, tiles_w, t0, v, first, stop):
    """v[k, l, t, c] = (B^T d_t B)[k, l] for channel c of tile t0 + t, first <= t < stop (zero
    outside x).

    v is flat, (a, a, tc, ci) with a = m + 2 and tc = v.size // (a^2 ci); tile t0 + t is image n,
    tile row ty, column tx, with y0 = ty*m - top, x0 = tx*m - left. Per tile, the rows are
    transformed first, r[i, l] = sum_j bt[l, j] x[n, y0 + i, x0 + j] (taps outside x and zero
    coefficients skipped), into an L1-sized buffer, then the columns, v[k, l] = sum_i bt[k, i]
    r[i, l] (zero coefficients skipped), each term a contiguous run of ci values (one load and one
    load/store stream: vectorised). The same sums in the same order as a row pass over all tiles
    followed by ``transform_axis`` over the columns, without writing the row pass out.
    """
    _, h, w, ci = x.shape
    a = m + 2
    tc = v.size // (a * a * ci)
    plane = tc * ci
    per_image = tiles_h * tiles_w
    flat = x.reshape(-1)
    r = np.empty(a * a * ci, dtype=v.dtype)
    for t in range(first, stop):
        tt = t0 + t
        n = tt // per_image
        rem = tt - n * per_image
        ty = rem // tiles_w
        y0 = ty * m - top
        x0 = (rem - ty * tiles_w) * m - left
        for i in range(a):
            iy = y0 + i
            for k in range(a):
                dst = r[(i * a + k) * ci : (i * a + k + 1) * ci]
                first = True
                if 0 <= iy < h:
                    for j in range(a):
                        coef = bt[k, j]
                        ix = x0 + j
                        if coef == 0 or ix < 0 or ix >= w:
                            continue
                        src = flat[((n * h + iy) * w + ix) * ci : ((n * h + iy) * w + ix + 1) * ci]
                        if first:
                            for c in range(ci):
                                dst[c] = coef * src[c]
                            first = False
                        else:
                            for c in range(ci):
                                dst[c] += coef * src[c]
                if first:
                    for c in range(ci):
                        dst[c] = 0
        for k in range(a):
            for col in range(a):
                dst = v[(k * a + col) * plane + t * ci : (k * a + col) * plane + (t + 1) * ci]
                first = True
                for i in range(a):
                    coef = bt[k, i]
                    if coef == 0:
                        continue
                    src = r[(i * a + col) * ci : (i * a + col + 1) * ci]
                    if first:
                        for c in range(ci):
                            dst[c] = coef * src[c]
                        first = False
                    else:
                        for c in range(ci):
                            dst[c] += coef * src[c]


@njit(
    per_float(lambda f: types.void(c_array(f, 1), c_array(f, 1), b1, i64, i64, i64, i64, c_array(f, 4), i64, i64)),
    nogil=True,
    cache=True,
)
def scatter_tiles(y, bias, relu, m, tiles_h, tiles_w, t0, out, first, stop):
    """out[n, oy + i, ox + j, c] = [relu](y[i, j, t, c] + bias[c]) inside out, for the tiles
    first <= t < stop.

    y is flat, (m, m, tc, co); outputs of ragged edge tiles that fall outside out are dropped.
    """
    _, ho, wo, co = out.shape
    tc = y.size // (m * m * co)
    plane = tc * co
    per_image = tiles_h * tiles_w
    flat = out.reshape(-1)
    for t in range(first, stop):
        tt = t0 + t
        n = tt // per_image
        r = tt - n * per_image
        ty = r // tiles_w
        oy = ty * m
        ox = (r - ty * tiles_w) * m
        for i in range(min(m, ho - oy)):
            for j in range(min(m, wo - ox)):
                dst = ((n * ho + oy + i) * wo + ox + j) * co
                src = (i * m + j) * plane + t * co
                if relu:
                    for c in range(co):
                        v = y[src + c] + bias[c]
                        flat[dst + c] = 0 if v < 0 else v  # NaN propagates, as np.maximum
                else:
                    for c in range(co):
                        flat[dst + c] = y[src + c] + bias[c]


_TILE_BLOCK = 16  # tiles per block of the transposed scatter: a block's cache lines stay in L1


@njit(
    per_float(lambda f: types.void(c_array(f, 1), c_array(f, 1), b1, i64, i64, i64, i64, c_array(f, 4), i64, i64)),
    nogil=True,
    cache=True,
)
def scatter_tiles_transposed(y, bias, relu, m, tiles_h, tiles_w, t0, out, c_lo, c_hi):
    """out[n, oy + i, ox + j, c] = [relu](y[i, j, c, t] + bias[c]) inside out, for every tile and
    the channels c_lo <= c < c_hi.

    y is flat, (m, m, co, tc): the swapped GEMMs' layout (the input gradient of big kernels),
    channels first. A transpose: tiles go in blocks of ``_TILE_BLOCK``, whose values of one
    channel share a cache line, so each line read is used for the whole block.
    """
    _, ho, wo, co = out.shape
    tc = y.size // (m * m * co)
    q = tc * co
    per_image = tiles_h * tiles_w
    flat = out.reshape(-1)
    for b0 in range(0, tc, _TILE_BLOCK):
        for i in range(m):
            for j in range(m):
                for t in range(b0, min(tc, b0 + _TILE_BLOCK)):
                    tt = t0 + t
                    n = tt // per_image
                    r = tt - n * per_image
                    ty = r // tiles_w
                    oy = ty * m + i
                    ox = (r - ty * tiles_w) * m + j
                    if oy >= ho or ox >= wo:
                        continue
                    dst = ((n * ho + oy) * wo + ox) * co
                    src = y[(i * m + j) * q + t : (i * m + j) * q + q : tc]  # y[i, j, :, t]
                    if relu:
                        for c in range(c_lo, c_hi):
                            v = src[c] + bias[c]
                            flat[dst + c] = 0 if v < 0 else v  # NaN propagates, as np.maximum
                    else:
                        for c in range(c_lo, c_hi):
                            flat[dst + c] = src[c] + bias[c]
