"""Max pooling (non-overlapping, stride = pool, 'valid') forward with argmax, and its backward.

Forward: one thread per pooled element (n, oy, ox, c), channels fastest so a warp reads
contiguous memory; ``argmax = dy * pw + dx`` of the first maximum (strict ``>``), as in Keras.
Backward gathers instead of scattering: one thread per input element checks whether it won its
window, so no zero-fill pass and no write races (rows/columns past the last whole window get 0).
"""

from numba import cuda, float32

from kernels.cuda.launch import ELEMENTWISE_THREADS, blocks_for


@cuda.jit(cache=True)
def maxpool_forward_kernel(x, ph, pw, out, argmax):
    n, out_h, out_w, c = out.shape
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ch = e % c
        ox = (e // c) % out_w
        oy = (e // (c * out_w)) % out_h
        img = e // (c * out_w * out_h)
        best = x[img, oy * ph, ox * pw, ch]
        best_at = 0
        for dy in range(ph):
            for dx in range(pw):
                v = x[img, oy * ph + dy, ox * pw + dx, ch]
                if v > best:
                    best, best_at = v, dy * pw + dx
        out[img, oy, ox, ch] = best
        argmax[img, oy, ox, ch] = best_at


@cuda.jit(cache=True)
def maxpool_backward_kernel(grad_out, argmax, ph, pw, grad_in):
    n, height, width, c = grad_in.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    for e in range(cuda.grid(1), grad_in.size, cuda.gridsize(1)):
        ch = e % c
        ix = (e // c) % width
        iy = (e // (c * width)) % height
        img = e // (c * width * height)
        oy, ox = iy // ph, ix // pw
        value = float32(0.0)
        if oy < out_h and ox < out_w:
            if argmax[img, oy, ox, ch] == (iy - oy * ph) * pw + (ix - ox * pw):
                value = grad_out[img, oy, ox, ch]
        grad_in[img, iy, ix, ch] = value


def maxpool_forward(x, pool, out, argmax):
    """x (N,H,W,C) -> out, argmax (N,H//ph,W//pw,C); argmax uint8 or int32 (``kernels.argmax_dtype``)."""
    grid = blocks_for(out.size, ELEMENTWISE_THREADS)
    maxpool_forward_kernel[grid, ELEMENTWISE_THREADS](x, pool[0], pool[1], out, argmax)
    return out


def maxpool_backward(grad_out, argmax, pool, grad_in):
    """Route each pooled gradient to the input position that won the forward max."""
    grid = blocks_for(grad_in.size, ELEMENTWISE_THREADS)
    maxpool_backward_kernel[grid, ELEMENTWISE_THREADS](grad_out, argmax, pool[0], pool[1], grad_in)
    return grad_in
