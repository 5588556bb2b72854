"""Convolution as a tiled implicit GEMM in shared memory: the one matrix-multiply kernel of the
CUDA backend (convolutions forward and backward-to-input, and dense layers as 1x1 convolutions).

GEMM view of ``out = x (*) kernel + bias`` (NHWC, cross-correlation, see ``kernels/reference.py``):

* rows    M = N * Ho * Wo output pixels, ``m = (n * Ho + oy) * Wo + ox``;
* columns    c_out output channels;
* depth   K = kh * kw * c_in taps, ``k = (ky * kw + kx) * c_in + ci``, so the B operand is the
  kernel reshaped to (K, c_out) without a copy, and the A operand ``A[m, k] =
  x[n, oy + ky - top, ox + kx - left, ci]`` (zero outside the image) is gathered on the fly into
  shared memory: no im2col buffer ever exists in global memory.

A block computes a ``block_m x block_n`` output tile, stepping through K ``block_k`` at a time;
each thread accumulates a ``thread_m x thread_n`` register block. A thread's rows and columns are
strided by the thread-grid size (row ``ty + i * threads_m``, column ``tx + j * threads_n``), which
makes its shared-memory reads conflict-free and its output writes contiguous across a warp.
Bias and ReLU are fused into the epilogue.
"""

import functools
from typing import NamedTuple

from numba import cuda, float32, int32

A_ROW_PAD = 2  # the shared A tile is k-major; padding spreads its transposed stores over banks
OUT_OF_IMAGE = -(1 << 30)  # row origin given to rows past M, so every tap of theirs reads zero


class GemmTile(NamedTuple):
    block_m: int = 64
    block_n: int = 64
    block_k: int = 16
    thread_m: int = 4
    thread_n: int = 4

    @property
    def threads(self):
        return (self.block_m // self.thread_m) * (self.block_n // self.thread_n)

    def grid(self, rows, cols):
        """Blocks for an M x N output: tiles of M along x (the large grid axis), of N along y."""
        return (-(-rows // self.block_m), -(-cols // self.block_n))


DEFAULT_TILE = GemmTile()


@functools.lru_cache(maxsize=None)
def conv_gemm_kernel(tile):
    """The compiled-on-demand kernel for one tile shape (a closure, so the sizes are constants)."""
    bm, bn, bk, tm, tn = tile
    threads_m, threads_n = bm // tm, bn // tn
    threads = threads_m * threads_n
    uneven = (bm % tm, bn % tn, threads % bk, threads % bn, bm * bk % threads, bk * bn % threads)
    if any(uneven):
        raise ValueError(f"inconsistent GEMM tile {tile}")
    a_loads, a_row_step = bm * bk // threads, threads // bk  # A-tile elements each thread loads
    b_loads, b_row_step = bk * bn // threads, threads // bn
    a_tile_width = bm + A_ROW_PAD  # a compile-time constant for the shared-array shape

    @cuda.jit(cache=True)
    def conv_gemm(x, w, bias, kw, top, left, relu, out):
        """out[n,oy,ox,:] = [relu](bias + sum_k A[m,k] w[k,:]); x (N,H,W,Ci), w (K,Co)."""
        a_tile = cuda.shared.array((bk, a_tile_width), float32)
        b_tile = cuda.shared.array((bk, bn), float32)
        acc = cuda.local.array((tm, tn), float32)
        a_frag = cuda.local.array(tm, float32)
        b_frag = cuda.local.array(tn, float32)
        a_img = cuda.local.array(a_loads, int32)
        a_iy = cuda.local.array(a_loads, int32)
        a_ix = cuda.local.array(a_loads, int32)

        height, width, c_in = x.shape[1], x.shape[2], x.shape[3]
        out_h, out_w, c_out = out.shape[1], out.shape[2], out.shape[3]
        rows, depth = out.shape[0] * out_h * out_w, w.shape[0]
        tid = cuda.threadIdx.x
        tx, ty = tid % threads_n, tid // threads_n
        row0, col0 = cuda.blockIdx.x * bm, cuda.blockIdx.y * bn

        # This thread always loads A column a_k and rows a_m0 + r * a_row_step: decode them once.
        a_k, a_m0 = tid % bk, tid // bk
        for r in range(a_loads):
            m = row0 + a_m0 + r * a_row_step
            a_img[r], a_iy[r], a_ix[r] = 0, OUT_OF_IMAGE, OUT_OF_IMAGE
            if m < rows:
                a_img[r] = m // (out_h * out_w)
                pix = m - a_img[r] * (out_h * out_w)
                a_iy[r] = pix // out_w - top
                a_ix[r] = pix % out_w - left
        b_col, b_k0 = tid % bn, tid // bn
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = float32(0.0)

        # Tap (ky, kx, ci) of this thread's A column k = k0 + a_k, advanced by bk per step with
        # carries instead of divisions (64-bit divisions would cost more than the step's FMAs).
        ci = a_k % c_in
        kx = (a_k // c_in) % kw
        ky = a_k // (c_in * kw)
        for k0 in range(0, depth, bk):
            k = k0 + a_k
            for r in range(a_loads):
                value = float32(0.0)
                iy, ix = a_iy[r] + ky, a_ix[r] + kx
                if k < depth and 0 <= iy < height and 0 <= ix < width:
                    value = x[a_img[r], iy, ix, ci]
                a_tile[a_k, a_m0 + r * a_row_step] = value
            for r in range(b_loads):
                kb = k0 + b_k0 + r * b_row_step
                value = float32(0.0)
                if kb < depth and col0 + b_col < c_out:
                    value = w[kb, col0 + b_col]
                b_tile[b_k0 + r * b_row_step, b_col] = value
            ci += bk
            while ci >= c_in:
                ci -= c_in
                kx += 1
                if kx == kw:
                    kx = 0
                    ky += 1
            cuda.syncthreads()
            for kk in range(bk):
                for i in range(tm):
                    a_frag[i] = a_tile[kk, ty + i * threads_m]
                for j in range(tn):
                    b_frag[j] = b_tile[kk, tx + j * threads_n]
                for i in range(tm):
                    for j in range(tn):
                        acc[i, j] += a_frag[i] * b_frag[j]
            cuda.syncthreads()

        for i in range(tm):
            m = row0 + ty + i * threads_m
            if m < rows:
                img = m // (out_h * out_w)
                pix = m - img * (out_h * out_w)
                oy, ox = pix // out_w, pix % out_w
                for j in range(tn):
                    co = col0 + tx + j * threads_n
                    if co < c_out:
                        value = acc[i, j] + bias[co]
                        if relu and value < float32(0.0):
                            value = float32(0.0)
                        out[img, oy, ox, co] = value

    return conv_gemm


def launch_conv_gemm(x, w, bias, kw, pad, relu, out, tile=DEFAULT_TILE):
    """Run the implicit GEMM: x (N,H,W,Ci), w (kh*kw*Ci, Co), bias (Co,), out (N,Ho,Wo,Co)."""
    n, out_h, out_w, c_out = out.shape
    grid = tile.grid(n * out_h * out_w, c_out)
    conv_gemm_kernel(tile)[grid, tile.threads](x, w, bias, kw, pad[0], pad[1], int(relu), out)
    return out
