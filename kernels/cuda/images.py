"""Moving and resampling image batches on the GPU: what the optimisation loops do to their images
between network passes, so the batch never has to leave the device.

* ``roll(x, shift, out)``: circular shift by (dy, dx) pixels (np.roll over H and W): jitter and
  DeepDream's random roll, and their exact adjoints (the opposite shift);
* ``resize_bilinear(x, out)``: to out's (H, W), half-pixel centres, edges clamped, no antialiasing
  (``tf.image.resize``, as ``kernels/reference.py``): DeepDream's octaves. Coordinates, weights
  and the sum are float64, rounded once, so the result is the correctly rounded bilinear value,
  as the reference computes it (one resize per octave: the float64 cost does not matter);
* ``copy_window(x, origin, out)`` / ``add_window(window, origin, out)``: cut a window out of a
  batch and add one back, for tiled gradients of large images.

All gather: one thread per output element (channels fastest, so a warp touches contiguous
memory), each writing only its own element: no atomics, no races. NHWC float32, C-contiguous.
"""

import math

from numba import cuda, float32, float64

from kernels.cuda.launch import ELEMENTWISE_THREADS, blocks_for


@cuda.jit(device=True, cache=True)
def _position(e, shape):
    """(n, y, x, c) of flat index e in an NHWC shape."""
    c = e % shape[3]
    rest = e // shape[3]
    xx = rest % shape[2]
    rest //= shape[2]
    return rest // shape[1], rest % shape[1], xx, c


@cuda.jit(cache=True)
def roll_kernel(x, dy, dx, out):
    """out[n, y, x] = x[n, y - dy, x - dx] (indices modulo H, W); 0 <= dy < H, 0 <= dx < W."""
    height, width = x.shape[1], x.shape[2]
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, y, xx, c = _position(e, out.shape)
        sy, sx = y - dy, xx - dx
        if sy < 0:
            sy += height
        if sx < 0:
            sx += width
        out[n, y, xx, c] = x[n, sy, sx, c]


@cuda.jit(device=True, cache=True)
def _taps(i, n_out, n_in):
    """(i0, i1, frac) of output index i: source (i + 0.5) * n_in / n_out - 0.5, clamped."""
    src = (float64(i) + 0.5) * (float64(n_in) / float64(n_out)) - 0.5
    src = min(max(src, 0.0), float64(n_in - 1))
    i0 = int(math.floor(src))
    return i0, min(i0 + 1, n_in - 1), src - float64(i0)


@cuda.jit(cache=True)
def resize_bilinear_kernel(x, out):
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, oy, ox, c = _position(e, out.shape)
        y0, y1, fy = _taps(oy, out.shape[1], x.shape[1])
        x0, x1, fx = _taps(ox, out.shape[2], x.shape[2])
        # rows first, then columns: the order of the reference's separable product
        left = (1.0 - fy) * float64(x[n, y0, x0, c]) + fy * float64(x[n, y1, x0, c])
        right = (1.0 - fy) * float64(x[n, y0, x1, c]) + fy * float64(x[n, y1, x1, c])
        out[n, oy, ox, c] = float32((1.0 - fx) * left + fx * right)


@cuda.jit(cache=True)
def copy_window_kernel(x, y0, x0, out):
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, y, xx, c = _position(e, out.shape)
        out[n, y, xx, c] = x[n, y0 + y, x0 + xx, c]


@cuda.jit(cache=True)
def add_window_kernel(window, y0, x0, out):
    for e in range(cuda.grid(1), window.size, cuda.gridsize(1)):
        n, y, xx, c = _position(e, window.shape)
        out[n, y0 + y, x0 + xx, c] += window[n, y, xx, c]


def _grid(count):
    return blocks_for(count, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS


def roll(x, shift, out):
    """out = x shifted circularly by shift = (dy, dx) pixels along H and W (as np.roll)."""
    dy, dx = int(shift[0]) % x.shape[1], int(shift[1]) % x.shape[2]
    roll_kernel[_grid(out.size)](x, dy, dx, out)
    return out


def resize_bilinear(x, out):
    """out = x resized bilinearly to out's (H, W) (tf.image.resize, no antialiasing)."""
    if x.shape[0] != out.shape[0] or x.shape[3] != out.shape[3]:
        raise ValueError(f"cannot resize {tuple(x.shape)} into {tuple(out.shape)}: batch and channels differ")
    resize_bilinear_kernel[_grid(out.size)](x, out)
    return out


def _fits(small, large, origin):
    y0, x0 = int(origin[0]), int(origin[1])
    if not (0 <= y0 and y0 + small.shape[1] <= large.shape[1] and 0 <= x0 and x0 + small.shape[2] <= large.shape[2]):
        raise ValueError(f"a {small.shape[1]}x{small.shape[2]} window at {origin} leaves the {large.shape[1]}x{large.shape[2]} image")
    return y0, x0


def copy_window(x, origin, out):
    """out = x[:, y:y+h, x:x+w] for origin = (y, x) and out's (h, w)."""
    y0, x0 = _fits(out, x, origin)
    copy_window_kernel[_grid(out.size)](x, y0, x0, out)
    return out


def add_window(window, origin, out):
    """out[:, y:y+h, x:x+w] += window for origin = (y, x)."""
    y0, x0 = _fits(window, out, origin)
    add_window_kernel[_grid(window.size)](window, y0, x0, out)
    return out
