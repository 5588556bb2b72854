"""Elementwise helpers that the visualization loops run on the GPU between forward/backward passes.

* ``axpy(alpha, x, y)``: ``y += alpha * x`` (any shape), returns y;
* ``masked_axpy(alpha, scale, x, active, y)``: ``y[n] += alpha * scale[n] * x[n]`` for the samples
  with ``active[n] != 0``: the optimisation loops' step, with the per-sample factor of
  ``scores.sample_scale`` (only the samples no stopping rule froze move);
* ``fill(value, out)``: every element of out (any shape) set to value.

The factor that normalises each sample's gradient is a reduction, so it lives with the other
reductions: ``scores.sample_scale``. Here one thread per element in grid-stride loops, on
C-contiguous arrays read flat.
"""

from numba import cuda, float32

from kernels.cuda.launch import ELEMENTWISE_THREADS, blocks_for, flat


@cuda.jit(cache=True)
def axpy_kernel(alpha, x, y):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        y[i] += alpha * x[i]


@cuda.jit(cache=True)
def masked_axpy_kernel(alpha, scale, x, active, y):
    per_sample = x.size // scale.size
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        n = i // per_sample
        if active[n] != 0:
            y[i] += alpha * scale[n] * x[i]


@cuda.jit(cache=True)
def fill_kernel(value, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = value


def axpy(alpha, x, y):
    """y += alpha * x, in place; returns y."""
    blocks = blocks_for(x.size, ELEMENTWISE_THREADS)
    axpy_kernel[blocks, ELEMENTWISE_THREADS](float32(alpha), flat(x), flat(y))
    return y


def masked_axpy(alpha, scale, x, active, y):
    """y[n] += alpha * scale[n] * x[n] for each sample n with active[n] != 0 (int32); returns y."""
    blocks = blocks_for(x.size, ELEMENTWISE_THREADS)
    masked_axpy_kernel[blocks, ELEMENTWISE_THREADS](float32(alpha), scale, flat(x), active, flat(y))
    return y


def fill(value, out):
    """out[...] = value; returns out."""
    fill_kernel[blocks_for(out.size, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS](float32(value), flat(out))
    return out
