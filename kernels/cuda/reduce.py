"""Block-wide reductions in shared memory, for the one-block-per-row kernels.

Each thread passes its partial value; a tree over ``cuda.blockDim.x`` (a power of two, see
``launch.ROW_THREADS``) halves the active threads at each step. The result is returned to every
thread, and the scratch buffer is free again on return (a trailing barrier), so one kernel can
reduce several times with the same buffer.
"""

from numba import cuda


@cuda.jit(device=True, cache=True)
def block_sum(scratch, value):
    tid = cuda.threadIdx.x
    scratch[tid] = value
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            scratch[tid] += scratch[tid + step]
        cuda.syncthreads()
        step //= 2
    total = scratch[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True, cache=True)
def block_max(scratch, value):
    tid = cuda.threadIdx.x
    scratch[tid] = value
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            scratch[tid] = max(scratch[tid], scratch[tid + step])
        cuda.syncthreads()
        step //= 2
    largest = scratch[0]
    cuda.syncthreads()
    return largest
