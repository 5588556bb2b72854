"""Non-overlapping max-pooling (stride = pool, 'valid', floor for odd sizes) and its backward.

The forward records ``argmax = dy * pw + dx`` (uint8 or int32, ``kernels.argmax_dtype``; shape of
the pooled output), the first maximum of each window winning ties, as Keras does; the backward routes each pooled gradient to
that position. Both run in parallel over (image, pooled row): those own disjoint bands of input
rows, so the backward's scatter has no races. Channels are the innermost loop (NHWC), so each
comparison and copy runs over contiguous memory.
"""

import numpy as np
from numba import njit, prange

from kernels import argmax_dtype
from kernels.cpu._checks import input_like, output_buffer
from kernels.cpu._types import c_array, i64, per_float, types

_ARGMAX_TYPES = {"uint8": types.uint8, "int32": types.int32}


def _per_float_and_argmax(signature):
    """Signatures for each float type and each argmax type."""
    return [sig for index in _ARGMAX_TYPES.values() for sig in per_float(lambda f: signature(f, c_array(index, 4)))]


@njit(
    _per_float_and_argmax(lambda f, index: types.void(c_array(f, 4), i64, i64, c_array(f, 4), index)),
    parallel=True,
    cache=True,
)
def _maxpool_forward(x, ph, pw, out, argmax):
    n, ho, wo, c = out.shape
    for job in prange(n * ho):
        b = job // ho
        oy = job - b * ho
        for ox in range(wo):
            best = out[b, oy, ox]
            where = argmax[b, oy, ox]
            if ph == 2 and pw == 2:  # VGG's windows: one pass, the running max in registers
                a0, a1 = x[b, 2 * oy, 2 * ox], x[b, 2 * oy, 2 * ox + 1]
                a2, a3 = x[b, 2 * oy + 1, 2 * ox], x[b, 2 * oy + 1, 2 * ox + 1]
                for ch in range(c):
                    v, k = a0[ch], 0
                    if a1[ch] > v:  # strict: the first maximum wins ties
                        v, k = a1[ch], 1
                    if a2[ch] > v:
                        v, k = a2[ch], 2
                    if a3[ch] > v:
                        v, k = a3[ch], 3
                    best[ch] = v
                    where[ch] = k
                continue
            first = x[b, oy * ph, ox * pw]
            for ch in range(c):
                best[ch] = first[ch]
                where[ch] = 0
            for dy in range(ph):
                for dx in range(pw):
                    if dy == 0 and dx == 0:
                        continue
                    cand = x[b, oy * ph + dy, ox * pw + dx]
                    k = dy * pw + dx
                    for ch in range(c):
                        if cand[ch] > best[ch]:  # strict: the first maximum wins ties
                            best[ch] = cand[ch]
                            where[ch] = k


@njit(
    _per_float_and_argmax(lambda f, index: types.void(c_array(f, 4), index, i64, i64, c_array(f, 4))),
    parallel=True,
    cache=True,
)
def _maxpool_backward(grad_out, argmax, ph, pw, grad_in):
    n, ho, wo, c = grad_out.shape
    h, w = grad_in.shape[1], grad_in.shape[2]
    for job in prange(n * ho):
        b = job // ho
        oy = job - b * ho
        # this job owns input rows [oy*ph, (oy+1)*ph), plus the floor remainder for the last row;
        # each input value is written once: the pooled gradient where it won, else zero
        y_end = h if oy == ho - 1 else (oy + 1) * ph
        for dy in range(ph):
            row = grad_in[b, oy * ph + dy]
            for ox in range(wo):
                g = grad_out[b, oy, ox]
                k = argmax[b, oy, ox]
                for dx in range(pw):
                    dst = row[ox * pw + dx]
                    here = dy * pw + dx
                    for ch in range(c):
                        dst[ch] = g[ch] if k[ch] == here else 0
            for x in range(wo * pw, w):  # the floor remainder columns
                row[x] = 0
        for y in range((oy + 1) * ph, y_end):  # the floor remainder rows
            grad_in[b, y] = 0


def _pooled_shape_ok(x_shape, pool, out_shape):
    n, h, w, c = x_shape
    ph, pw = pool
    return ph >= 1 and pw >= 1 and tuple(out_shape) == (n, h // ph, w // pw, c)


def maxpool_forward(x, pool, out, argmax):
    """Non-overlapping pool (stride = pool, 'valid'); argmax = dy * pw + dx of the first maximum."""
    output_buffer(out, "out", ndim=4)
    x = input_like(x, out, "x", ndim=4)
    ph, pw = int(pool[0]), int(pool[1])
    if not _pooled_shape_ok(x.shape, (ph, pw), out.shape):
        raise ValueError(f"out {out.shape} is not x {x.shape} pooled by {(ph, pw)}")
    if argmax.shape != out.shape or argmax.dtype.name not in _ARGMAX_TYPES or not argmax.flags.c_contiguous:
        raise ValueError(f"argmax must be a C-contiguous uint8 or int32 array of shape {out.shape}")
    if argmax.dtype.name != argmax_dtype((ph, pw)) and argmax.dtype != np.int32:
        raise ValueError(f"a {ph}x{pw} window's argmax does not fit {argmax.dtype}: use int32")
    _maxpool_forward(x, ph, pw, out, argmax)
    return out


def maxpool_backward(grad_out, argmax, pool, grad_in):
    """Route each pooled gradient to the input position that won the forward max."""
    output_buffer(grad_in, "grad_in", ndim=4)
    grad_out = input_like(grad_out, grad_in, "grad_out", ndim=4)
    if argmax.dtype.name not in _ARGMAX_TYPES:
        argmax = argmax.astype(np.int32)
    argmax = np.ascontiguousarray(argmax)
    ph, pw = int(pool[0]), int(pool[1])
    if not _pooled_shape_ok(grad_in.shape, (ph, pw), grad_out.shape):
        raise ValueError(f"grad_out {grad_out.shape} is not grad_in {grad_in.shape} pooled")
    if argmax.shape != grad_out.shape:
        raise ValueError(f"argmax {argmax.shape} must match grad_out {grad_out.shape}")
    if grad_out.shape[1] == 0:
        grad_in[...] = 0
    else:
        _maxpool_backward(grad_out, argmax, ph, pw, grad_in)
    return grad_in
