"""Launch geometry shared by the CUDA kernels: block counts and flat views of device arrays.

Every launcher derives its grid from the array shapes with these helpers, so no caller ever picks a
grid. Flat views rely on the data contract of ``kernels/__init__.py`` (C-contiguous NHWC).
"""

ELEMENTWISE_THREADS = 256  # threads per block for one-thread-per-element kernels
ELEMENTWISE_MAX_BLOCKS = 65535  # grid-stride loops cover anything larger
ROW_THREADS = 128  # threads per block for one-block-per-row reductions (a power of two)


def blocks_for(count, threads_per_block, max_blocks=ELEMENTWISE_MAX_BLOCKS):
    """Number of blocks needed to give each of ``count`` items one thread (at least 1)."""
    return max(1, min(max_blocks, -(-count // threads_per_block)))


def flat(array):
    """1-D view of a C-contiguous device array."""
    return array.reshape(array.size)


def rows(array):
    """2-D (rows, last axis) view of a C-contiguous device array."""
    width = array.shape[len(array.shape) - 1]  # the simulator's shapes take no negative index
    return array.reshape(array.size // width, width)
