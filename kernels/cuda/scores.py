"""Per-sample scores with their gradients, and the per-sample gradient scale, on the GPU.

The ops of ``kernels/reference.py`` that the optimisation loops score with (same names and
signatures): ``channel_sum``, ``square_sum`` and ``variation_sum`` add ``weight * S_n(x)`` to
``total[n]`` and ``weight * dS_n/dx`` to ``grad``; ``sample_scale`` writes the factor that
normalises each sample's gradient (``"rms"`` or ``"mean_abs"``).

Each op is a pair of kernels. The first runs a 2-D grid, ``parts`` blocks per sample along x and
the samples along y: every block sums its share of one sample (and, for the scores, adds the
gradient of each element it reads, so score and gradient cost one pass), then writes its partial
sum to ``partial[n, part]``. The second runs one block per sample and adds the partial sums up in
a fixed tree. No atomics, so a run gives the same bytes every time, and a batch of one still
spreads over ``parts`` blocks. ``parts`` comes from the sample's size (``launch_parts``).

The partial sums need an (N, parts) float32 device buffer. Each op takes an optional
``scratch(shape)`` (after the reference's parameters) that returns one; a loop passes one that
hands back the same memory every time (``engine.backend.Buffers.scratch``), so its
steps allocate nothing. Ops on one stream run in order, so they can all share that buffer. Without
``scratch`` an op allocates its own.

Shapes: x, grad (N, H, W, C) float32 C-contiguous; total, out (N,) float32; index (N,) int64;
``region`` = (y0, y1, x0, x1), half-open rows and columns of x.
"""

import math

import numpy as np
from numba import cuda, float32

from kernels.cuda.reduce import block_sum

SUM_THREADS = 128  # threads per block of both kernels (a power of two, for block_sum)
MAX_PARTS = SUM_THREADS  # the finishing block reads one partial sum per thread
ITEMS_PER_THREAD = 8  # at least this many elements per thread before another part is added

METHODS = {"rms": 0, "mean_abs": 1}  # the sample_scale methods, as kernel arguments


def launch_parts(count):
    """Blocks per sample for ``count`` elements per sample (1 to MAX_PARTS)."""
    return max(1, min(MAX_PARTS, -(-count // (SUM_THREADS * ITEMS_PER_THREAD))))


@cuda.jit(device=True, cache=True)
def _store_partial(scratch, value, partial):
    total = block_sum(scratch, value)
    if cuda.threadIdx.x == 0:
        partial[cuda.blockIdx.y, cuda.blockIdx.x] = total


@cuda.jit(cache=True)
def channel_sum_kernel(x, index, y0, y1, x0, x1, weight, partial, grad):
    scratch = cuda.shared.array(SUM_THREADS, float32)
    n = cuda.blockIdx.y
    c = index[n]
    width = x1 - x0
    count = (y1 - y0) * width
    total = float32(0.0)
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for j in range(start, count, cuda.gridDim.x * cuda.blockDim.x):
        row = j // width
        y, col = y0 + row, x0 + (j - row * width)
        total += x[n, y, col, c]
        grad[n, y, col, c] += weight
    _store_partial(scratch, total, partial)


@cuda.jit(cache=True)
def square_sum_kernel(x, center, y0, y1, x0, x1, weight, partial, grad):
    scratch = cuda.shared.array(SUM_THREADS, float32)
    n = cuda.blockIdx.y
    channels = x.shape[3]
    row_size = (x1 - x0) * channels  # the region's values in one image row, contiguous
    count = (y1 - y0) * row_size
    twice = float32(2.0) * weight
    total = float32(0.0)
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for j in range(start, count, cuda.gridDim.x * cuda.blockDim.x):
        row = j // row_size
        rest = j - row * row_size
        col = rest // channels
        y, xx, c = y0 + row, x0 + col, rest - col * channels
        d = x[n, y, xx, c] - center
        total += d * d
        grad[n, y, xx, c] += twice * d
    _store_partial(scratch, total, partial)


@cuda.jit(device=True, cache=True)
def _differences(x, n, y, xx, c, eps):
    """(dx, dy, s) at one element: forward differences (0 on the last column / row), s = dx² + dy² + eps."""
    here = x[n, y, xx, c]
    dx = x[n, y, xx + 1, c] - here if xx + 1 < x.shape[2] else float32(0.0)
    dy = x[n, y + 1, xx, c] - here if y + 1 < x.shape[1] else float32(0.0)
    return dx, dy, dx * dx + dy * dy + eps


@cuda.jit(cache=True)
def variation_sum_kernel(x, beta, eps, weight, partial, grad):
    scratch = cuda.shared.array(SUM_THREADS, float32)
    n = cuda.blockIdx.y
    width, channels = x.shape[2], x.shape[3]
    count = x.shape[1] * width * channels
    half, slope = beta * float32(0.5), beta * float32(0.5) - float32(1.0)
    total = float32(0.0)
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for j in range(start, count, cuda.gridDim.x * cuda.blockDim.x):
        y = j // (width * channels)
        rest = j - y * (width * channels)
        xx = rest // channels
        c = rest - xx * channels
        # the element's own term, and the terms of its left and upper neighbours that read it
        dx, dy, s = _differences(x, n, y, xx, c, eps)
        total += math.pow(s, half)
        g = -beta * math.pow(s, slope) * (dx + dy)
        if xx > 0:
            dx, dy, s = _differences(x, n, y, xx - 1, c, eps)
            g += beta * math.pow(s, slope) * dx
        if y > 0:
            dx, dy, s = _differences(x, n, y - 1, xx, c, eps)
            g += beta * math.pow(s, slope) * dy
        grad[n, y, xx, c] += weight * g
    _store_partial(scratch, total, partial)


@cuda.jit(cache=True)
def sample_sums_kernel(values, absolute, partial):
    """partial[n, part] = this block's share of sum(|v|) (absolute) or sum(v**2); values (N, M)."""
    scratch = cuda.shared.array(SUM_THREADS, float32)
    n = cuda.blockIdx.y
    total = float32(0.0)
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for j in range(start, values.shape[1], cuda.gridDim.x * cuda.blockDim.x):
        v = values[n, j]
        total += abs(v) if absolute else v * v
    _store_partial(scratch, total, partial)


@cuda.jit(cache=True)
def add_partials_kernel(partial, weight, total):
    """total[n] += weight * sum(partial[n, :]); one block per sample."""
    scratch = cuda.shared.array(SUM_THREADS, float32)
    n, tid = cuda.blockIdx.x, cuda.threadIdx.x
    value = partial[n, tid] if tid < partial.shape[1] else float32(0.0)
    value = block_sum(scratch, value)
    if tid == 0:
        total[n] += weight * value


@cuda.jit(cache=True)
def scale_from_partials_kernel(partial, count, method, eps, out):
    """out[n] = 1 / (sqrt(sum / count) + eps) (method 0, rms) or 1 / max(sum / count, eps) (1)."""
    scratch = cuda.shared.array(SUM_THREADS, float32)
    n, tid = cuda.blockIdx.x, cuda.threadIdx.x
    value = partial[n, tid] if tid < partial.shape[1] else float32(0.0)
    mean = block_sum(scratch, value) / count
    if tid == 0:
        if method == 0:
            out[n] = float32(1.0) / (math.sqrt(mean) + eps)
        else:
            out[n] = float32(1.0) / max(mean, eps)


def _partials(n, count, scratch):
    """The (n, parts) buffer of the partial sums (from ``scratch`` when given) and the grid."""
    shape = (n, launch_parts(count))
    if scratch is None:
        return cuda.device_array(shape, dtype=np.float32), shape[::-1]
    partial = scratch(shape)
    if tuple(partial.shape) != shape or partial.dtype != np.float32:
        got = f"{partial.dtype} {tuple(partial.shape)}"
        raise ValueError(f"scratch gave a {got} array for the partial sums, not float32 {shape}")
    return partial, shape[::-1]


def _add(partial, weight, total):
    add_partials_kernel[partial.shape[0], SUM_THREADS](partial, float32(weight), total)
    return total


def _region(x, region):
    y0, y1, x0, x1 = (int(v) for v in region)
    if not (0 <= y0 <= y1 <= x.shape[1] and 0 <= x0 <= x1 <= x.shape[2]):
        raise ValueError(f"region {region} does not fit an image of {x.shape[1]}x{x.shape[2]}")
    return y0, y1, x0, x1


def channel_sum(x, index, region, weight, total, grad, *, scratch=None):
    """total[n] += weight * sum of x[n, region, index[n]]; grad[n, region, index[n]] += weight."""
    y0, y1, x0, x1 = _region(x, region)
    partial, grid = _partials(len(x), (y1 - y0) * (x1 - x0), scratch)
    channel_sum_kernel[grid, SUM_THREADS](x, index, y0, y1, x0, x1, float32(weight), partial, grad)
    return _add(partial, weight, total)


def square_sum(x, center, region, weight, total, grad, *, scratch=None):
    """total[n] += weight * sum over region of (x[n] - center)**2; grad += 2 weight (x - center)."""
    y0, y1, x0, x1 = _region(x, region)
    partial, grid = _partials(len(x), (y1 - y0) * (x1 - x0) * x.shape[3], scratch)
    kernel = square_sum_kernel[grid, SUM_THREADS]
    kernel(x, float32(center), y0, y1, x0, x1, float32(weight), partial, grad)
    return _add(partial, weight, total)


def variation_sum(x, beta, eps, weight, total, grad, *, scratch=None):
    """total[n] += weight * TV^beta(x[n]); grad += weight * its gradient (see reference.py)."""
    partial, grid = _partials(len(x), x.size // len(x), scratch)
    kernel = variation_sum_kernel[grid, SUM_THREADS]
    kernel(x, float32(beta), float32(eps), float32(weight), partial, grad)
    return _add(partial, weight, total)


def sample_scale(grad, method, eps, out, *, scratch=None):
    """out[n] = 1 / (rms(grad[n]) + eps) for "rms", 1 / max(mean|grad[n]|, eps) for "mean_abs"."""
    if method not in METHODS:
        raise ValueError(f"unknown gradient scale {method!r}: use one of {', '.join(METHODS)}")
    n = grad.shape[0]
    count = grad.size // n
    values = grad.reshape(n, count)
    partial, grid = _partials(n, count, scratch)
    sample_sums_kernel[grid, SUM_THREADS](values, int(method == "mean_abs"), partial)
    kernel = scale_from_partials_kernel[n, SUM_THREADS]
    kernel(partial, float32(count), METHODS[method], float32(eps), out)
    return out
