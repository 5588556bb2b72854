"""Winograd convolution F(m x m, 3 x 3), m = 2 or 4, for 3x3 stride-1 layers (NHWC).

Lavin & Gray's minimal filtering: an output tile Y (m x m) of one channel pair is
``A^T [(G g G^T) . (B^T d B)] A`` for the input tile d (a = m + 2 square) and kernel g (3 x 3).
Summed over input channels the element-wise product becomes a^2 independent GEMMs, so a layer is

    V[k, t, ci] = (B^T d_t B)[k]          input transform, one row per tile t   (parallel Numba)
    U[k, ci, co] = (G g G^T)[k]           kernel transform, cached (see below)
    M[k] = V[k] @ U[k]                    a^2 SGEMMs (T x Ci) @ (Ci x Co)       (OpenBLAS)
    out[tile t] = A^T M[:, t] A + bias    output transform + bias(+ReLU)        (parallel Numba)

for 9 m^2 / a^2 multiplications per output of a direct/im2col convolution: 2.25x fewer for
F(2x2), 4x fewer for F(4x4). Tiles are numbered ``t = (n * tiles_h + ty) * tiles_w + tx``; tile
(ty, tx) covers outputs ``[ty*m, ty*m+m) x [tx*m, tx*m+m)`` and reads input rows
``ty*m - top ... + a - 1`` (columns alike). Input taps outside the image read zero (any pad, any
size); outputs past the edge of ``out`` (ragged last tiles) are computed and dropped. Work goes
in chunks of tiles whose V and M stay within ``WORKSPACE_BYTES``, so memory is bounded for any
image or batch.

The input gradient is the same convolution with the flipped/transposed kernel
(``conv.flipped_transposed``); ``transposed=True`` builds that kernel's U straight from the
forward kernel, so no flipped copy is made and the cache below serves both directions.

Kernel-transform cache: U costs a^2/9 of the kernel's memory and, for the 512-channel layers, as
long to build as the layer takes at small images, so it is cached, keyed on the kernel array's
identity, but **only for read-only kernels** (``kernel.flags.writeable`` False): an immutable
array cannot change behind the cache, and the cache holds a reference so its id cannot be reused.
Writable kernels are transformed on every call. Weights loaded once and marked read-only get the
cache for free; ``clear_kernel_cache()`` drops it.

Accuracy (float32, VGG-like data, vs float64): F(2x2) ~ 1e-7 relative, F(4x4) a few 1e-7 at
Ci = 512 (measured in tests/test_winograd.py and benchmarks/kernel_sanity.py --errors). Non-finite
inputs spread over the whole tile (inf - inf), unlike a direct convolution.
"""

from collections import OrderedDict

import numpy as np
from numba import njit, prange

from kernels.cpu._types import b1, c_array, i64, per_float, types

# Bytes of V + M per chunk of tiles (the a^2 GEMMs' A and C matrices). See
# benchmarks/kernel_sanity.py --wino-workspace-mb.
WORKSPACE_BYTES = 8 << 20
CACHE_ENTRIES = 64  # VGG16's 13 layers, forward and transposed, with room for a second model

# --- the 1-D transforms, applied to rows and then to columns -----------------------------------
# Constants are float32 scalars: an integer literal times a float32 would promote the whole
# transform to float64 in Numba (half the SIMD width); float32 * float64 stays float64, so the
# float64 build is unaffected (the values are exact in both).
_0, _2, _4, _5, _8 = (np.float32(v) for v in (0, 2, 4, 5, 8))


@njit(inline="always")
def _bt4(d0, d1, d2, d3):  # B^T d for F(2, 3)
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(inline="always")
def _at4(m0, m1, m2, m3):  # A^T m for F(2, 3)
    return m0 + m1 + m2, m1 - m2 - m3


@njit(inline="always")
def _bt6(d0, d1, d2, d3, d4, d5):  # B^T d for F(4, 3)
    return (
        _4 * d0 - _5 * d2 + d4,
        d3 + d4 - _4 * (d1 + d2),
        _4 * (d1 - d2) + d4 - d3,
        _2 * (d3 - d1) + d4 - d2,
        _2 * (d1 - d3) + d4 - d2,
        _4 * d1 - _5 * d3 + d5,
    )


@njit(inline="always")
def _at6(m0, m1, m2, m3, m4, m5):  # A^T m for F(4, 3)
    s12, d12, s34, d34 = m1 + m2, m1 - m2, m3 + m4, m3 - m4
    return m0 + s12 + s34, d12 + _2 * d34, s12 + _4 * s34, d12 + _8 * d34 + m5


# G for each m (a x 3), float64: the kernel transform runs rarely, in double precision.
_G = {
    2: np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),
    4: np.array(
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ]
    ),
}

# --- input transform -----------------------------------------------------------------------------
# Each helper transforms one tile for every channel c (the innermost, vectorised loop) and writes
# V[k, t, c] into the flat V of the chunk (planes of tc * ci values). ``src[base + i*row + j*ci +
# c]`` is the tile's input value (i, j, c): the image itself for interior tiles, a zero-padded copy
# of the tile for those that cross an edge.


@njit(inline="always")
def _store4(v, o, plane, k0, x):
    v[o + k0 * plane] = x[0]
    v[o + (k0 + 4) * plane] = x[1]
    v[o + (k0 + 8) * plane] = x[2]
    v[o + (k0 + 12) * plane] = x[3]


@njit(inline="always")
def _row4(src, b, ci):
    return _bt4(src[b], src[b + ci], src[b + 2 * ci], src[b + 3 * ci])


@njit(inline="always")
def _input_tile_f2(src, base, row, ci, v, t, tc):
    plane = tc * ci
    for c in range(ci):
        b = base + c
        r0 = _row4(src, b, ci)
        r1 = _row4(src, b + row, ci)
        r2 = _row4(src, b + 2 * row, ci)
        r3 = _row4(src, b + 3 * row, ci)
        o = t * ci + c
        _store4(v, o, plane, 0, _bt4(r0[0], r1[0], r2[0], r3[0]))
        _store4(v, o, plane, 1, _bt4(r0[1], r1[1], r2[1], r3[1]))
        _store4(v, o, plane, 2, _bt4(r0[2], r1[2], r2[2], r3[2]))
        _store4(v, o, plane, 3, _bt4(r0[3], r1[3], r2[3], r3[3]))


@njit(inline="always")
def _store6(v, o, plane, k0, x):
    v[o + k0 * plane] = x[0]
    v[o + (k0 + 6) * plane] = x[1]
    v[o + (k0 + 12) * plane] = x[2]
    v[o + (k0 + 18) * plane] = x[3]
    v[o + (k0 + 24) * plane] = x[4]
    v[o + (k0 + 30) * plane] = x[5]


@njit(inline="always")
def _row6(src, b, ci):
    return _bt6(src[b], src[b + ci], src[b + 2 * ci], src[b + 3 * ci], src[b + 4 * ci],
                src[b + 5 * ci])


@njit(inline="always")
def _input_tile_f4(src, base, row, ci, v, t, tc):
    plane = tc * ci
    for c in range(ci):
        b = base + c
        r0 = _row6(src, b, ci)
        r1 = _row6(src, b + row, ci)
        r2 = _row6(src, b + 2 * row, ci)
        r3 = _row6(src, b + 3 * row, ci)
        r4 = _row6(src, b + 4 * row, ci)
        r5 = _row6(src, b + 5 * row, ci)
        o = t * ci + c
        _store6(v, o, plane, 0, _bt6(r0[0], r1[0], r2[0], r3[0], r4[0], r5[0]))
        _store6(v, o, plane, 1, _bt6(r0[1], r1[1], r2[1], r3[1], r4[1], r5[1]))
        _store6(v, o, plane, 2, _bt6(r0[2], r1[2], r2[2], r3[2], r4[2], r5[2]))
        _store6(v, o, plane, 3, _bt6(r0[3], r1[3], r2[3], r3[3], r4[3], r5[3]))
        _store6(v, o, plane, 4, _bt6(r0[4], r1[4], r2[4], r3[4], r4[4], r5[4]))
        _store6(v, o, plane, 5, _bt6(r0[5], r1[5], r2[5], r3[5], r4[5], r5[5]))


@njit(
    per_float(lambda f: types.void(c_array(f, 4), i64, i64, i64, i64, i64, i64, c_array(f, 1))),
    parallel=True,
    cache=True,
)
def input_transform(x, m, top, left, tiles_h, tiles_w, t0, v):
    """V (flat, (a^2, tc, ci)) of tiles t0 .. t0 + tc - 1, tc = v.size // (a^2 ci); a = m + 2."""
    _, h, w, ci = x.shape
    a = m + 2
    tc = v.size // (a * a * ci)
    per_image = tiles_h * tiles_w
    flat = x.reshape(-1)
    for t in prange(tc):
        tt = t0 + t
        n = tt // per_image
        r = tt - n * per_image
        ty = r // tiles_w
        y0 = ty * m - top
        x0 = (r - ty * tiles_w) * m - left
        if y0 >= 0 and x0 >= 0 and y0 + a <= h and x0 + a <= w:
            base = ((n * h + y0) * w + x0) * ci
            if m == 2:
                _input_tile_f2(flat, base, w * ci, ci, v, t, tc)
            else:
                _input_tile_f4(flat, base, w * ci, ci, v, t, tc)
            continue
        # the tile crosses an edge: gather it into a zero-padded copy
        tile = np.zeros(a * a * ci, dtype=x.dtype)
        for i in range(max(0, -y0), min(a, h - y0)):
            for j in range(max(0, -x0), min(a, w - x0)):
                s = ((n * h + y0 + i) * w + x0 + j) * ci
                d = (i * a + j) * ci
                for c in range(ci):
                    tile[d + c] = flat[s + c]
        if m == 2:
            _input_tile_f2(tile, 0, a * ci, ci, v, t, tc)
        else:
            _input_tile_f4(tile, 0, a * ci, ci, v, t, tc)


# --- output transform ----------------------------------------------------------------------------


@njit(inline="always")
def _col4(mm, o, plane, j):
    return _at4(mm[o + j * plane], mm[o + (4 + j) * plane], mm[o + (8 + j) * plane],
                mm[o + (12 + j) * plane])


@njit(inline="always")
def _col6(mm, o, plane, j):
    return _at6(mm[o + j * plane], mm[o + (6 + j) * plane], mm[o + (12 + j) * plane],
                mm[o + (18 + j) * plane], mm[o + (24 + j) * plane], mm[o + (30 + j) * plane])


@njit(inline="always")
def _finish(v, b, relu):
    v += b
    if relu and v < _0:  # NaN propagates, as in the im2col epilogue
        v = _0
    return v


@njit(inline="always")
def _output_tile_f2(mm, t, tc, bias, relu, dst, base, row, co):
    """dst[base + i*row + j*co + c] = relu(bias + (A^T M A)[i, j]) for the 2x2 tile t."""
    plane = tc * co
    for c in range(co):
        o = t * co + c
        # columns first: u_j = A^T M[:, j] (2 values each), then rows: Y[i] = A^T (u_0..u_3)[i]
        u0 = _col4(mm, o, plane, 0)
        u1 = _col4(mm, o, plane, 1)
        u2 = _col4(mm, o, plane, 2)
        u3 = _col4(mm, o, plane, 3)
        b = bias[c]
        y0 = _at4(u0[0], u1[0], u2[0], u3[0])
        y1 = _at4(u0[1], u1[1], u2[1], u3[1])
        d = base + c
        dst[d] = _finish(y0[0], b, relu)
        dst[d + co] = _finish(y0[1], b, relu)
        dst[d + row] = _finish(y1[0], b, relu)
        dst[d + row + co] = _finish(y1[1], b, relu)


@njit(inline="always")
def _store_row4(dst, d, co, b, relu, y):
    dst[d] = _finish(y[0], b, relu)
    dst[d + co] = _finish(y[1], b, relu)
    dst[d + 2 * co] = _finish(y[2], b, relu)
    dst[d + 3 * co] = _finish(y[3], b, relu)


@njit(inline="always")
def _output_tile_f4(mm, t, tc, bias, relu, dst, base, row, co):
    """dst[base + i*row + j*co + c] = relu(bias + (A^T M A)[i, j]) for the 4x4 tile t."""
    plane = tc * co
    for c in range(co):
        o = t * co + c
        u0 = _col6(mm, o, plane, 0)
        u1 = _col6(mm, o, plane, 1)
        u2 = _col6(mm, o, plane, 2)
        u3 = _col6(mm, o, plane, 3)
        u4 = _col6(mm, o, plane, 4)
        u5 = _col6(mm, o, plane, 5)
        b = bias[c]
        d = base + c
        _store_row4(dst, d, co, b, relu, _at6(u0[0], u1[0], u2[0], u3[0], u4[0], u5[0]))
        _store_row4(dst, d + row, co, b, relu, _at6(u0[1], u1[1], u2[1], u3[1], u4[1], u5[1]))
        _store_row4(dst, d + 2 * row, co, b, relu, _at6(u0[2], u1[2], u2[2], u3[2], u4[2], u5[2]))
        _store_row4(dst, d + 3 * row, co, b, relu, _at6(u0[3], u1[3], u2[3], u3[3], u4[3], u5[3]))


@njit(
    per_float(
        lambda f: types.void(c_array(f, 1), c_array(f, 1), b1, i64, i64, i64, i64, c_array(f, 4))
    ),
    parallel=True,
    cache=True,
)
def output_transform(mm, bias, relu, m, tiles_h, tiles_w, t0, out):
    """out tiles t0 .. t0 + tc - 1 from M (flat, (a^2, tc, co)), + bias, then ReLU if asked."""
    _, ho, wo, co = out.shape
    a = m + 2
    tc = mm.size // (a * a * co)
    per_image = tiles_h * tiles_w
    flat = out.reshape(-1)
    for t in prange(tc):
        tt = t0 + t
        n = tt // per_image
        r = tt - n * per_image
        ty = r // tiles_w
        oy = ty * m
        ox = (r - ty * tiles_w) * m
        if oy + m <= ho and ox + m <= wo:
            base = ((n * ho + oy) * wo + ox) * co
            if m == 2:
                _output_tile_f2(mm, t, tc, bias, relu, flat, base, wo * co, co)
            else:
                _output_tile_f4(mm, t, tc, bias, relu, flat, base, wo * co, co)
            continue
        # a ragged tile at the bottom/right edge: compute it whole, keep what lies inside out
        tile = np.empty(m * m * co, dtype=out.dtype)
        if m == 2:
            _output_tile_f2(mm, t, tc, bias, relu, tile, 0, m * co, co)
        else:
            _output_tile_f4(mm, t, tc, bias, relu, tile, 0, m * co, co)
        for i in range(min(m, ho - oy)):
            for j in range(min(m, wo - ox)):
                s = (i * m + j) * co
                d = ((n * ho + oy + i) * wo + ox + j) * co
                for c in range(co):
                    flat[d + c] = tile[s + c]


# --- kernel transform ----------------------------------------------------------------------------


@njit(
    per_float(lambda f: types.void(c_array(f, 4), c_array(types.float64, 2), b1, c_array(f, 3))),
    parallel=True,
    cache=True,
)
def kernel_transform(kernel, g_mat, transposed, u):
    """U[k] = (G g G^T)[k] for every channel pair, in float64.

    Forward: u is (a^2, ci, co) and g = kernel[:, :, ci, co]. Transposed (the input gradient's
    kernel, flipped and with its channel axes swapped): u is (a^2, co, ci) and
    g[ky, kx] = kernel[2 - ky, 2 - kx, ci, co].
    """
    _, _, ci, co = kernel.shape
    a = g_mat.shape[0]
    for p in prange(ci):
        g = np.empty((3, 3))
        gg = np.empty((a, 3))
        for q in range(co):
            for ky in range(3):
                for kx in range(3):
                    if transposed:
                        g[ky, kx] = kernel[2 - ky, 2 - kx, p, q]
                    else:
                        g[ky, kx] = kernel[ky, kx, p, q]
            for i in range(a):
                for kx in range(3):
                    gg[i, kx] = g_mat[i, 0] * g[0, kx] + g_mat[i, 1] * g[1, kx] + g_mat[i, 2] * g[2, kx]
            for i in range(a):
                for j in range(a):
                    val = gg[i, 0] * g_mat[j, 0] + gg[i, 1] * g_mat[j, 1] + gg[i, 2] * g_mat[j, 2]
                    if transposed:
                        u[i * a + j, q, p] = val
                    else:
                        u[i * a + j, p, q] = val


# --- the algorithm ---------------------------------------------------------------------------------

_kernel_cache = OrderedDict()


def clear_kernel_cache():
    _kernel_cache.clear()


def _immutable(a):
    """True when no array in a's base chain can be written (so a's values cannot change)."""
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        a = a.base
    return a is None or isinstance(a, bytes)


def transformed_kernel(kernel, m, transposed):
    """U for this kernel: (a^2, ci, co), or (a^2, co, ci) when transposed; cached when immutable."""
    key = None
    if _immutable(kernel):
        key = (id(kernel), kernel.ctypes.data, kernel.shape, kernel.dtype.str, m, transposed)
        hit = _kernel_cache.get(key)
        if hit is not None:
            _kernel_cache.move_to_end(key)
            return hit[1]
    _, _, ci, co = kernel.shape
    a = m + 2
    u = np.empty((a * a, co, ci) if transposed else (a * a, ci, co), dtype=kernel.dtype)
    kernel_transform(kernel, _G[m], transposed, u)
    if key is not None:
        _kernel_cache[key] = (kernel, u)  # the reference keeps id(kernel) from being reused
        while len(_kernel_cache) > CACHE_ENTRIES:
            _kernel_cache.popitem(last=False)
    return u


def tile_size(ho, wo):
    """m for F(m x m, 3 x 3): 4 (4x fewer multiplications than direct) unless the image is tiny,
    where F(2x2)'s smaller tiles waste less on ragged edges."""
    waste = lambda m: (-(-ho // m) * m) * (-(-wo // m) * m) * (m + 2) ** 2 / m**2  # noqa: E731
    return 4 if waste(4) <= waste(2) else 2


def conv_winograd(x, kernel, bias, pad, relu, out, transposed=False, m=None):
    """out = [relu](bias + x (*) kernel) for a 3x3 kernel, stride 1, any pad; bias may be None.

    With ``transposed`` the kernel applied is ``conv.flipped_transposed(kernel)`` (the input
    gradient), without building it.
    """
    n, _, _, ci = x.shape
    _, ho, wo, co = out.shape
    if n * ho * wo == 0:
        return out
    if m is None:
        m = tile_size(ho, wo)
    a = m + 2
    tiles_h, tiles_w = -(-ho // m), -(-wo // m)
    total = n * tiles_h * tiles_w
    u = transformed_kernel(kernel, m, transposed)
    if bias is None:
        bias = np.zeros(co, dtype=out.dtype)
    per_tile = a * a * (ci + co) * out.itemsize
    tc = max(1, min(total, WORKSPACE_BYTES // per_tile))
    chunks = -(-total // tc)
    tc = -(-total // chunks)
    v_buf = np.empty(a * a * tc * ci, dtype=out.dtype)
    m_buf = np.empty(a * a * tc * co, dtype=out.dtype)
    top, left = int(pad[0]), int(pad[1])
    for t0 in range(0, total, tc):
        size = min(tc, total - t0)
        v = v_buf[: a * a * size * ci]
        mm = m_buf[: a * a * size * co]
        input_transform(x, m, top, left, tiles_h, tiles_w, t0, v)
        np.matmul(v.reshape(a * a, size, ci), u, out=mm.reshape(a * a, size, co))
        output_transform(mm, bias, relu, m, tiles_h, tiles_w, t0, out)
    return out
