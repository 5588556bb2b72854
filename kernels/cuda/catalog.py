"""Every CUDA kernel of the backend with the argument types its launcher passes, so that tools can
compile them ahead of time without a GPU (``benchmarks/ptx_report.py``: registers, shared memory,
spills). Keep in step with the launchers: arrays are C-contiguous views, Python ints arrive as
int64, scalars for float math are passed as float32.
"""

from numba import float32, int32, int64

from kernels.cuda import activations, conv, elementwise, fourier, images, pool, scores, softmax
from kernels.cuda.gemm import DEFAULT_TILE, conv_gemm_kernel

F1, F2, F4 = float32[::1], float32[:, ::1], float32[:, :, :, ::1]
F5 = float32[:, :, :, :, ::1]
I4 = int32[:, :, :, ::1]
I1, L1 = int32[::1], int64[::1]


def kernels():
    """[(name, python function, argument types)] for every kernel the launchers run."""
    tile = "x".join(map(str, DEFAULT_TILE))
    table = [
        (
            f"conv_gemm[{tile}]",
            conv_gemm_kernel(DEFAULT_TILE),
            (F4, F2, F1, int64, int64, int64, int64, F4),
        ),
        ("flip_transpose", conv.flip_transpose_kernel, (F4, F1)),
        ("relu_forward", activations.relu_forward_kernel, (F1, F1)),
        ("relu_backward", activations.relu_backward_kernel, (F1, F1, int64, F1)),
        ("sigmoid_forward", activations.sigmoid_forward_kernel, (F1, F1)),
        ("sigmoid_backward", activations.sigmoid_backward_kernel, (F1, F1, F1)),
        ("maxpool_forward", pool.maxpool_forward_kernel, (F4, int64, int64, F4, I4)),
        ("maxpool_backward", pool.maxpool_backward_kernel, (F4, I4, int64, int64, F4)),
        ("softmax_forward", softmax.softmax_forward_kernel, (F2, F2)),
        ("softmax_backward", softmax.softmax_backward_kernel, (F2, F2, F2)),
        ("axpy", elementwise.axpy_kernel, (float32, F1, F1)),
        ("masked_axpy", elementwise.masked_axpy_kernel, (float32, F1, F1, I1, F1)),
        ("fill", elementwise.fill_kernel, (float32, F1)),
        ("channel_sum", scores.channel_sum_kernel, (F4, L1, int64, int64, int64, int64, float32, F2, F4)),
        ("square_sum", scores.square_sum_kernel, (F4, float32, int64, int64, int64, int64, float32, F2, F4)),
        ("variation_sum", scores.variation_sum_kernel, (F4, float32, float32, float32, F2, F4)),
        ("sample_sums", scores.sample_sums_kernel, (F2, int64, F2)),
        ("add_partials", scores.add_partials_kernel, (F2, float32, F1)),
        ("scale_from_partials", scores.scale_from_partials_kernel, (F2, float32, int64, float32, F1)),
        ("roll", images.roll_kernel, (F4, int64, int64, F4)),
        ("resize_bilinear", images.resize_bilinear_kernel, (F4, F4)),
        ("copy_window", images.copy_window_kernel, (F4, int64, int64, F4)),
        ("add_window", images.add_window_kernel, (F4, int64, int64, F4)),
        ("irfft2_forward", fourier.irfft2_forward_kernel, (F5, F2, F4)),
        ("irfft2_backward", fourier.irfft2_backward_kernel, (F4, F2, F5)),
    ]
    return [(name, dispatcher.py_func, argtypes) for name, dispatcher, argtypes in table]
