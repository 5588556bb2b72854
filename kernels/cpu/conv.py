"""2-D convolution forward and input-gradient on the CPU (NHWC, kernels (kh, kw, Ci, Co)).

The public ops check shapes, bring inputs to C-contiguous arrays of the output's dtype, and hand
the work to one inner-product *algorithm*: a function ``(x, kernel, bias_or_None, pad, relu,
out, transposed) -> out``. ``choose_algorithm`` picks it from the geometry and the caller's
``algorithm`` choice alone (no global state): Winograd F(m x m, 3 x 3) (``winograd.py``) for
read-only 3x3 kernels over at least ``WINOGRAD_MIN_CHANNELS`` input channels (writable ones: see
WINOGRAD_UNCACHED_PIXELS_PER_CHANNEL), a plain GEMM for unpadded same-size 1x1 kernels, im2col +
GEMM for everything else; and before all of these, one GEMM on the input's pixels and shifted
sums (``shifted.py``) when there are at most ``shifted.MAX_OUTPUT_CHANNELS`` output channels (the
image gradient of a first layer). ``algorithm="gemm"`` rules Winograd and the shifted path out: every output is then one dot
product over (ky, kx, ci) in BLAS's order, the arithmetic of a direct convolution (per-layer
relative error 2-4e-7 on VGG16 against float64, Winograd's 1e-7 to 3.5e-6), for runs that must
reproduce a stored float32 trajectory step for step.

The input gradient is the same forward convolution applied to ``grad_out`` with the kernel
flipped spatially and its channel axes swapped, ``kernel_t[ky, kx, co, ci] = kernel[kh-1-ky,
kw-1-kx, ci, co]``, and padding ``(kh-1-top, kw-1-left)``; no bias, no ReLU. Algorithms take the
forward kernel with ``transposed=True`` and apply ``kernel_t`` however suits them (im2col builds
it; Winograd transforms the forward kernel straight into kernel_t's, and caches that for
read-only kernels). Every output is written, so buffers need not be zeroed by the caller.
Stride 1 only.
"""

from kernels.cpu import shifted
from kernels.cpu._checks import input_like, output_buffer
from kernels.cpu.im2col import conv_im2col_gemm, conv_pointwise_gemm, flipped_transposed
from kernels.cpu.winograd import conv_winograd, kernel_is_cacheable

# Below this many input channels Winograd's a^2 GEMMs (K = Ci) are too thin for BLAS and im2col's
# single K = 9 * Ci GEMM wins (VGG16's first layer, Ci = 3). Few output channels are fine (the
# first layer's input gradient, 64 -> 3, takes Winograd). Measured by benchmarks/kernel_sanity.py
# --compare; figures in benchmarks/README.md.
WINOGRAD_MIN_CHANNELS = 16

# A writable kernel may change between calls, so its Winograd transform would be rebuilt per call
# (memory-bound work on a^2 Ci Co values). With a threshold (output pixels per image per input /
# output channel) writable kernels take Winograd where that still pays; None: writable kernels
# always take im2col. The engine's own kernels are read-only (Backend.frozen) and take Winograd
# with cached transforms. Measured by benchmarks/kernel_sanity.py --no-cache.
WINOGRAD_UNCACHED_PIXELS_PER_CHANNEL = None

__all__ = ["choose_algorithm", "conv2d_forward", "conv2d_backward_input", "flipped_transposed"]


ALGORITHMS = ("auto", "gemm")


def choose_algorithm(kernel_shape, pad, in_shape, out_shape, frozen_kernel=True, algorithm="auto"):
    """The inner-product implementation for this geometry (kernel_shape: the one applied).

    ``frozen_kernel``: the kernel is read-only, so Winograd's transform of it is cached.
    ``algorithm``: "auto" (the fastest here) or "gemm" (no Winograd; see the module docstring).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown convolution algorithm {algorithm!r}; expected one of {ALGORITHMS}")
    kh, kw, ci, co = kernel_shape
    if algorithm == "auto" and co <= shifted.MAX_OUTPUT_CHANNELS:
        return shifted.conv_shifted
    if algorithm == "auto" and (kh, kw) == (3, 3) and ci >= WINOGRAD_MIN_CHANNELS:
        pixels = out_shape[1] * out_shape[2]  # per image: a batch must not change the arithmetic
        threshold = WINOGRAD_UNCACHED_PIXELS_PER_CHANNEL
        if frozen_kernel or (threshold is not None and pixels >= threshold * max(ci, co)):
            return conv_winograd
    if (kh, kw) == (1, 1) and tuple(pad) == (0, 0) and in_shape[1:3] == out_shape[1:3]:
        return conv_pointwise_gemm
    return conv_im2col_gemm


def _check_geometry(x, kernel, out, x_name, out_name):
    if kernel.ndim != 4:
        raise ValueError(f"kernel must be (kh, kw, c_in, c_out), got shape {kernel.shape}")
    if x.shape[0] != out.shape[0]:
        raise ValueError(f"{x_name} batch {x.shape[0]} != {out_name} batch {out.shape[0]}")
    if x.shape[3] != kernel.shape[2] or out.shape[3] != kernel.shape[3]:
        raise ValueError(
            f"channels of {x_name} {x.shape}, kernel {kernel.shape} and {out_name} {out.shape} "
            "do not match"
        )


def conv2d_forward(x, kernel, bias, pad, relu, out, algorithm="auto"):
    """out = [relu](bias + x (*) kernel); x (N,H,W,Ci), kernel (kh,kw,Ci,Co), out (N,Ho,Wo,Co)."""
    output_buffer(out, "out", ndim=4)
    x = input_like(x, out, "x", ndim=4)
    kernel = input_like(kernel, out, "kernel")
    _check_geometry(x, kernel, out, "x", "out")
    bias = input_like(bias, out, "bias", ndim=1)
    if bias.shape[0] != kernel.shape[3]:
        raise ValueError(f"bias {bias.shape} does not match c_out = {kernel.shape[3]}")
    conv = choose_algorithm(kernel.shape, pad, x.shape, out.shape, kernel_is_cacheable(kernel), algorithm)
    return conv(x, kernel, bias, pad, bool(relu), out, False)


def conv2d_backward_input(grad_out, kernel, pad, grad_in, algorithm="auto"):
    """grad_in = d sum(grad_out * conv(x)) / dx (the transposed convolution), before any ReLU."""
    output_buffer(grad_in, "grad_in", ndim=4)
    grad_out = input_like(grad_out, grad_in, "grad_out", ndim=4)
    kernel = input_like(kernel, grad_in, "kernel")
    _check_geometry(grad_in, kernel, grad_out, "grad_in", "grad_out")
    kh, kw, ci, co = kernel.shape
    pad_t = (kh - 1 - int(pad[0]), kw - 1 - int(pad[1]))
    conv = choose_algorithm(
        (kh, kw, co, ci), pad_t, grad_out.shape, grad_in.shape, kernel_is_cacheable(kernel), algorithm
    )
    return conv(grad_out, kernel, None, pad_t, False, grad_in, True)
