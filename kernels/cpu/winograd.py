"""Winograd convolution F(m x m, 3 x 3), m = 2 or 4, for 3x3 stride-1 layers (NHWC).

Lavin & Gray's minimal filtering: an output tile Y (m x m) of one channel pair is
``A^T [(G g G^T) . (B^T d B)] A`` for the input tile d (a = m + 2 square) and kernel g (3 x 3),
9 m^2 / a^2 of a direct convolution's multiplications (2.25x fewer for F(2x2), 4x for F(4x4)).
Summed over input channels the element-wise product becomes a^2 independent GEMMs:

    V[k, t, ci] = (B^T d_t B)[k]          tiles gathered, zero-padded, transformed
                                          rows then columns, tile by tile          (Numba)
    U[k, ci, co] = (G g G^T)[k]           kernel transform, cached (see below)
    M[k] = V[k] @ U[k]                    a^2 SGEMMs (T x Ci) @ (Ci x Co)        (OpenBLAS)
    Y[i, j, t, co] = (A^T M_t A)[i, j]    output transform, two passes           (Numba)
    out[tile t] = [relu](Y + bias)        scattered, ragged edges dropped        (Numba)

The transforms are separable and applied one axis at a time (``transform_axis``, or per tile in
``gather_tiles``): each pass is contiguous runs of channels (or tiles) scaled and summed (zero
coefficients skipped), which LLVM vectorises. A per-tile transform with all a^2 values in
registers (the first version of this file) did not: its a^2 load/store streams at runtime strides
exceed LLVM's runtime alias-check budget, so it ran scalar (~0.7 GB/s per thread, slower than the
GEMMs) and took minutes to compile.

Tiles are numbered ``t = (n * tiles_h + ty) * tiles_w + tx``; tile (ty, tx) covers outputs
``[ty*m, ty*m+m) x [tx*m, tx*m+m)`` and reads input rows ``ty*m - top ... + a - 1`` (columns
alike). Input taps outside the image read zero (any pad, any size); outputs past the edge of
``out`` (ragged last tiles) are computed and dropped. Work goes in chunks of tiles whose V and M
stay within ``WORKSPACE_BYTES`` (but for deep layers, see ``conv_winograd``), so memory is bounded
for any image size. A chunk is a run of one image's tiles, cut the same way in every image, or
whole images each with its own GEMMs (``_batch``), so an image's result does not depend on its
batch: m is chosen per image (``tile_size``) for the same reason. The chunks run on
``_threads``' workers, each a whole chunk with serial (``nogil``) Numba kernels and
single-threaded BLAS, so a chunk's data stays in one core's cache and no thread pool waits for
another between the six steps. A layer that is one chunk (deep layers at small batches) runs in
the calling thread, and the workers share out its a^2 GEMMs instead, and (from
``SHARED_PASSES_MIN_BYTES``) its gather and output passes, in ranges of tiles (or channels).

The input gradient is the same convolution with the flipped/transposed kernel
(``transposed=True``), computed with the forward kernel's U read transposed and the data and
output transforms reversed (``transforms``): no second U for the big kernels, whose GEMMs are
then taken swapped (M^T = U V^T, output channels first) to read U in its stored layout.

Kernel-transform cache: U holds a^2/9 times the kernel's values (38 MB for a 512x512 F(4x4)
kernel) and takes ~10 ms to build, as long as a 14x14 layer, so it is cached, keyed on the kernel
array's identity, but **only for read-only kernels** (no array in its base chain writable): an
immutable array cannot change behind the cache, and the cache holds a reference so its id cannot
be reused. Writable kernels are transformed on every call. ``clear_kernel_cache()`` drops it.
Big transforms in calls of many tiles (``UNCACHED_MIN_BYTES``, ``UNCACHED_MIN_TILES``: VGG16's
block4/5 at batch 8) are rebuilt per call instead, where the build is small next to the GEMMs.

Accuracy (float32, He-initialised VGG16 layers, vs float64): F(2x2) 1-5e-7 relative (as im2col,
2-4e-7); F(4x4) 1-3.5e-6, growing slowly with Ci (benchmarks/kernel_sanity.py --compare).
Non-finite inputs spread over the whole tile (inf - inf), unlike a direct convolution.
"""

from collections import OrderedDict

import numpy as np
from numba import njit

from kernels.cpu import _batch, _threads
from kernels.cpu._types import c_array, i64, types
from kernels.cpu.winograd_tiles import (
    _maybe_readonly,
    gather_tiles,
    scatter_tiles,
    scatter_tiles_transposed,
)

# Bytes of V + M per chunk of tiles (the a^2 GEMMs' A and C matrices): about one core's L2. See
# benchmarks/kernel_sanity.py --wino-workspace-mb.
WORKSPACE_BYTES = 2 << 20
# Bytes of V + M of a chunk of whole images at most (deep layers, whose images are not cut); see
# benchmarks/README.md, "Batch invariance"
MAX_GROUP_BYTES = 8 << 20
# U^T is kept as a contiguous copy up to this size (VGG16 up to 256x256 channels), else a view
TRANSPOSED_COPY_BYTES = 10 << 20
# A layer that is one chunk shares its gather and output passes between the workers from this
# many bytes of V on (below, handing them out costs more than it saves; benchmarks/README.md)
SHARED_PASSES_MIN_BYTES = 4 << 20
CACHE_ENTRIES = 64  # VGG16's 13 layers, forward and transposed, with room for a second model

# --- transform matrices (Lavin & Gray), float64, cast to the data type per call ------------------

_BT = {
    2: np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64),
    4: np.array(
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        dtype=np.float64,
    ),
}
_AT = {
    2: np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64),
    4: np.array(
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
        dtype=np.float64,
    ),
}
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


# --- the separable transforms ---------------------------------------------------------------------

_BLOCK = 512  # values of the innermost axis per work item: a few blocks of it fit in L1


@njit(
    [
        types.void(c_array(src.dtype, 2), src, i64, i64, c_array(src.dtype, 1), i64, i64)
        for src in _maybe_readonly(1)
    ],
    nogil=True,
    cache=True,
)
def transform_axis(mat, src, outer, inner, dst, lo, hi):
    """dst[o, k, p] = sum_j mat[k, j] src[o, j, p] for lo <= p < hi; src (outer, a, inner), dst
    (outer, r, inner).

    The middle axis of a flat array is transformed by the small matrix ``mat`` (r x a): B^T,
    A^T. Work items are (o, block of p); each output row accumulates one nonzero coefficient at a
    time over a contiguous run (one load and one load/store stream per loop, so LLVM vectorises
    it; the zeros of B^T and A^T are skipped), everything in L1. Each value is the same sum for
    any range, so ranges can be shared out.
    """
    r, a = mat.shape
    blocks = -(-(hi - lo) // _BLOCK)
    for item in range(outer * blocks):
        o = item // blocks
        p0 = lo + (item - o * blocks) * _BLOCK
        p1 = min(hi, p0 + _BLOCK)
        for k in range(r):
            out = dst[(o * r + k) * inner + p0 : (o * r + k) * inner + p1]
            first = True
            for j in range(a):
                c = mat[k, j]
                if c == 0:
                    continue
                row = src[(o * a + j) * inner + p0 : (o * a + j) * inner + p1]
                if first:
                    for p in range(p1 - p0):
                        out[p] = c * row[p]
                    first = False
                else:
                    for p in range(p1 - p0):
                        out[p] += c * row[p]


# --- the algorithm ---------------------------------------------------------------------------------

_kernel_cache = OrderedDict()


def clear_kernel_cache():
    _kernel_cache.clear()


def kernel_is_cacheable(a):
    """True when no array in a's base chain can be written (so a's values cannot change)."""
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        a = a.base
    return a is None or isinstance(a, bytes)


def _cached(key, kernel, build, store=True):
    """build() cached under ``key`` (None: not cacheable), keeping a reference to ``kernel``;
    with ``store`` False a cached value is used but a new one is not kept."""
    if key is None:
        return build()
    hit = _kernel_cache.get(key)
    if hit is not None:
        _kernel_cache.move_to_end(key)
        return hit[1]
    value = build()
    if not store:
        return value
    _kernel_cache[key] = (kernel, value)  # the reference keeps id(kernel) from being reused
    while len(_kernel_cache) > CACHE_ENTRIES:
        _kernel_cache.popitem(last=False)
    return value


def build_transformed_kernel(kernel, m, u=None):
    """U = G g G^T: (a^2, ci, co), into ``u`` (a flat buffer of at least its size) or a new array.

    Separable like the data transforms, one slab of U per row k of G (along ky into a (kw, ci, co)
    buffer, then along kx into U[k*a : k*a + a]); the slabs are shared out between ``_threads``'
    workers (each the same sums, so the same bits on any count)."""
    kh, kw, ci, co = kernel.shape
    a = m + 2
    g_mat = _G[m].astype(kernel.dtype)
    if u is None:
        u = np.empty((a * a, ci, co), dtype=kernel.dtype)
    else:
        u = u[: a * a * ci * co].reshape(a * a, ci, co)
    flat, slabs = kernel.reshape(-1), u.reshape(a, a * ci * co)

    def slab(k):
        rows = _threads.scratch("wino_u_rows", kw * ci * co, kernel.dtype)
        transform_axis(g_mat[k : k + 1], flat, 1, kw * ci * co, rows, 0, kw * ci * co)
        transform_axis(g_mat, rows, 1, ci * co, slabs[k], 0, ci * co)

    _threads.run_chunks(slab, range(a))
    return u


# A transform of at least UNCACHED_MIN_BYTES for a call of at least UNCACHED_MIN_TILES tiles is
# rebuilt per call rather than cached: there its build (a memory-bound pass, ~13 ms of one core
# for a 512x512 F(4x4) kernel) is a few per cent of the call's GEMMs, which read all of U per
# chunk anyway, and keeping it costs its bytes for the process's life (VGG16 at 224 px batch 8:
# block4's and block5's, 146 MB). A transform already cached is used either way.
UNCACHED_MIN_BYTES = 16 << 20
UNCACHED_MIN_TILES = 384


def transformed_kernel(kernel, m, transposed=False, tiles=0):
    """U = G g G^T for this kernel: (a^2, ci, co), cached when immutable (and, for a call of
    ``tiles`` tiles, unless big: see ``UNCACHED_MIN_BYTES``).

    ``transposed``: U^T (a^2, co, ci) for the input gradient (see ``transforms``), a view of U,
    or a cached contiguous copy when U is at most ``TRANSPOSED_COPY_BYTES`` (there a transposed
    operand slows the many small single-threaded GEMMs of the chunked layers by ~20%; the big
    kernels of the deep layers run as one or two chunks, as fast through the view).
    """
    key = None
    if kernel_is_cacheable(kernel):
        key = (id(kernel), kernel.ctypes.data, kernel.shape, kernel.dtype.str, m)
    kh, kw, ci, co = kernel.shape
    size = (m + 2) ** 2 * ci * co
    rebuilt = size * kernel.itemsize >= UNCACHED_MIN_BYTES and tiles >= UNCACHED_MIN_TILES
    if rebuilt:
        # built into the calling thread's reusable buffer (no fresh pages per call), valid until
        # its next call of this kind; conv_winograd uses it within the call only
        u = _cached(key, kernel, lambda: build_transformed_kernel(
            kernel, m, _threads.scratch("wino_u", size, kernel.dtype)), store=False)
    else:
        u = _cached(key, kernel, lambda: build_transformed_kernel(kernel, m))
    if not transposed:
        return u
    if u.nbytes > TRANSPOSED_COPY_BYTES or rebuilt:
        return u.transpose(0, 2, 1)
    return _cached(None if key is None else key + ("T",), kernel,
                   lambda: np.ascontiguousarray(u.transpose(0, 2, 1)))


def transforms(m, dtype, transposed):
    """(B^T, A^T) in ``dtype``; for the flipped kernel (``transposed``) B^T J and J A^T.

    A correlation with the spatially flipped kernel is the reversed correlation of the reversed
    tile with the kernel itself: Y_flip(d) = J_m Y(J_a d) (J reverses an axis), so
    Y_flip(d) = (J_m A^T) [U . (B^T J_a) d] per axis, with the same U. The input gradient thus
    uses the forward kernel's cached U, transposed in the GEMM, and reversed B^T columns and A^T
    rows: no second U.
    """
    bt, at = _BT[m], _AT[m]
    if transposed:
        bt, at = bt[:, ::-1], at[::-1, :]
    return np.ascontiguousarray(bt, dtype=dtype), np.ascontiguousarray(at, dtype=dtype)


# F(4x4) needs at least this many tiles per image to keep its a^2 GEMMs from being too thin for
# BLAS; below it (VGG16's 14x14 and 8x8 layers) F(2x2)'s 4x as many tiles win. Per image, not per
# batch: an image's result must not depend on the batch it is in (same m, same arithmetic).
MIN_TILES_F4 = 36


def tile_size(ho, wo):
    """m for F(m x m, 3 x 3): 4 (4x fewer multiplications than direct) unless too few tiles."""
    return 4 if -(-ho // 4) * -(-wo // 4) >= MIN_TILES_F4 else 2


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
    u = transformed_kernel(kernel, m, transposed, total)
    if bias is None:
        bias = np.zeros(co, dtype=out.dtype)
    per_tile = a * a * (ci + co) * out.itemsize
    # Chunks depend on the shapes only, never on the number of workers, and never put the tiles of
    # two images into one GEMM row block (``_batch``): an image is either cut into the same runs
    # of tiles in every batch, or whole images share a chunk and each takes its own GEMMs. Every
    # chunk reads all of U (a^2 ci co values): a run of fewer than ci co / (ci + co) tiles moves
    # more kernel than data, so images with few tiles (deep layers) are not cut but grouped, and
    # a batch that is one group runs in the calling thread, whose a^2 GEMMs the workers share out
    # instead (``_gemms``).
    def filling(tiles, budget):  # chunks of V + M within budget bytes
        return -(-tiles * per_tile // budget)

    def worth_u(tiles):  # chunks of at least ci co / (ci + co) tiles
        return max(1, tiles * (ci + co) // (ci * co))

    per_image = tiles_h * tiles_w
    parts = min(filling(per_image, WORKSPACE_BYTES), worth_u(per_image))
    # whole images take their own GEMMs anyway, so a big group is cut (at image boundaries) to
    # bound V and M (VGG16's block4 at 224 px batch 8: an image per chunk, not one chunk of 8)
    groups = max(min(filling(total, WORKSPACE_BYTES), worth_u(total)), filling(total, MAX_GROUP_BYTES))
    runs, segment = _batch.image_runs(n, per_image, parts, groups)
    starts = dict(runs)
    dtype = out.dtype
    bt, at = transforms(m, dtype, transposed)
    top, left = int(pad[0]), int(pad[1])
    share = len(runs) == 1
    share_passes = share and a * a * total * ci * out.itemsize >= SHARED_PASSES_MIN_BYTES
    # U^T as a view (big kernels' input gradient): BLAS reads a transposed B operand 20-70% slower
    # than a contiguous one (thin GEMMs, 16-64 rows: 2.5 vs 1.5 ms, 4.5 vs 3.2 ms for 16 GEMMs of
    # 512 x 512 here), so the product is taken swapped, M[k]^T = U[k] V[k]^T, as fast as a copy.
    swapped = not u.flags.c_contiguous

    def chunk(t0):
        size = starts[t0]
        p, q = size * ci, size * co
        # V is dead once M is made, so s (A^T M) reuses its buffer, and Y reuses M's
        vs = _threads.scratch("wino_vs", max(a * a * p, a * m * q), dtype)
        d, s = vs[: a * a * p], vs[: a * m * q]
        mm = _threads.scratch("wino_m", a * a * q, dtype)
        y = mm[: m * m * q]
        # V = B^T d B, gathered and transformed tile by tile
        _shared(share_passes, size, lambda lo, hi: gather_tiles(x, bt, m, top, left, tiles_h, tiles_w, t0, d, lo, hi))
        v = d.reshape(a * a, size, ci)
        if swapped:  # M^T = U^T^T V^T: (a^2, co, tiles), U in its stored (contiguous) layout
            _gemms(u.transpose(0, 2, 1), v.transpose(0, 2, 1), mm.reshape(a * a, co, size), share,
                   segment, columns=True)
        else:
            _gemms(v, u, mm.reshape(a * a, size, co), share, segment)
        # Y = A^T M A, separable (along columns into s, then along rows into Y), and scattered: a
        # value at p of a (tiles, co) plane (swapped: (co, tiles)) needs those at p of M and s
        # only, so the workers take runs of p, whole tiles (swapped: whole channels) each
        unit = size if swapped else co

        def finish(lo, hi):
            transform_axis(at, mm, a, q, s, lo * unit, hi * unit)
            if hi - lo == q // unit:  # the whole plane: one pass over the rows
                transform_axis(at, s, 1, m * q, y, 0, m * q)
            else:
                for j in range(m):
                    transform_axis(at, s, 1, m * q, y, j * q + lo * unit, j * q + hi * unit)
            if swapped:
                scatter_tiles_transposed(y, bias, relu, m, tiles_h, tiles_w, t0, out, lo, hi)
            else:
                scatter_tiles(y, bias, relu, m, tiles_h, tiles_w, t0, out, lo, hi)

        _shared(share_passes, q // unit, finish)

    _threads.run_chunks(chunk, starts)
    return out


def _shared(share, units, work):
    """work(lo, hi) over [0, units): in one call, or (``share``, from outside the workers) in one
    near-equal range per worker. For work whose values do not depend on the ranges (element-wise
    passes, one GEMM per position)."""
    workers = _threads.workers()
    if not share or workers == 1 or units < 2:
        work(0, units)
        return
    step = -(-units // workers)
    _threads.run_chunks(lambda lo: work(lo, min(units, lo + step)), range(0, units, step))


def _gemms(v, u, out, share, segment, columns=False):
    """out[k] = v[k] @ u[k] for the a^2 positions k (either operand may be a transposed view),
    one GEMM per ``segment`` rows (``columns``: columns) of out (``_batch.segmented_matmul``).

    ``share``: the workers take contiguous runs of k, each with single-threaded BLAS (called from
    outside the workers only). For one chunk of few tiles (deep layers at small batches: GEMMs of
    16-64 rows against a 0.5-1 MB U[k]) this took the 16 GEMMs from 2.2-6.8 ms to 1.6-3.9 ms
    here against one multi-threaded BLAS call per k, whose threads split every thin GEMM, and the
    VGG16 conv stack at batch 1 from 145 to 120 ms forward, 291 to 224 ms forward+input-gradient
    at 224 px (interleaved A/B). Each GEMM is the same call either way, so the result does not
    depend on the workers.
    """
    _shared(share, v.shape[0], lambda k0, k1: _batch.segmented_matmul(v[k0:k1], u[k0:k1], out[k0:k1], segment, columns))
