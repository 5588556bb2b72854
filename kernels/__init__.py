"""Pure compute kernels for convscope: no layer names, no model knowledge, no global state.

Data contract (what every op expects; ``engine/backend.py`` makes arrays that meet it):

* dtype: float32 for every activation, gradient, kernel and bias on the hot path
  (``reference.py`` also accepts float64, which the gradient checks use).
* Internal layout: **NHWC**, C-contiguous.  It is also the public layout (Keras'), so no
  transposes happen at the boundary, and it puts channels innermost, which is what both an
  im2col + GEMM convolution and the few-output-channel (shifted sums) path want.
* Convolution kernels: ``(kh, kw, c_in, c_out)`` applied as cross-correlation (Keras/TensorFlow
  convention). Loaders convert every other file layout to this one.
* Dense kernels: ``(n_in, n_out)``; a flattened NHWC tensor is in Keras' ``(h, w, c)`` order.
* Max-pooling ``argmax``: same shape as the pooled output, holding ``dy * pw + dx``, the
  position of the maximum inside its window (first maximum wins on ties, as in Keras); uint8
  for windows of at most 256 positions (every real network's), int32 for any window
  (``argmax_dtype``).
* ReLU backward modes are the integers below, so that compiled kernels can take them.

Every backend module (``reference``, ``cpu``, ``cuda``) exports every op of ``OP_NAMES`` with the
reference's signature (a backend may add optional parameters after the reference's, never
required ones); each op writes into an explicit output buffer and returns it.
"""

RELU_STANDARD = 0  # d relu: pass the gradient where the forward output was positive
RELU_GUIDED = 1  # guided backprop: ... and only where the incoming gradient is positive
RELU_DECONV = 2  # deconvnet: only where the incoming gradient is positive, ignoring the forward

RELU_MODES = {"standard": RELU_STANDARD, "guided": RELU_GUIDED, "deconv": RELU_DECONV}

NETWORK_OPS = (
    "conv2d_forward",
    "conv2d_backward_input",
    "relu_forward",
    "relu_backward",
    "maxpool_forward",
    "maxpool_backward",
    "dense_forward",
    "dense_backward_input",
    "softmax_forward",
    "softmax_backward",
    "sigmoid_forward",
    "sigmoid_backward",
)
"""The layers' forward and backward passes."""

LOOP_OPS = (
    "fill",
    "axpy",
    "masked_axpy",
    "sample_scale",
    "channel_sum",
    "square_sum",
    "variation_sum",
    "roll",
    "resize_bilinear",
    "copy_window",
    "add_window",
)
"""What the optimisation loop (``engine/viz/optimise.py``) does between passes: steps, scores, image moves."""

FOURIER_OPS = (
    "irfft2_forward",
    "irfft2_backward",
)
"""The Fourier image parameterisation (``engine/viz/param.py``): a weighted half spectrum to an
image batch, and the exact adjoint. Spectra are (N, C, H, W//2 + 1, 2) float (real, imaginary
last: Lucid's layout), frequency weights (H, W//2 + 1), images NHWC; the map is the orthonormal
inverse real 2-D DFT of numpy.fft.irfft2 (see ``reference.irfft2_forward``)."""

OP_NAMES = NETWORK_OPS + LOOP_OPS + FOURIER_OPS
"""Every op that every backend exports."""


def argmax_dtype(pool) -> str:
    """The max-pool argmax dtype for a (ph, pw) window: 'uint8' up to 256 positions (a quarter of
    int32's bytes: 12 MB of VGG16's 49 MB at 224 px batch 8), else 'int32'."""
    return "uint8" if int(pool[0]) * int(pool[1]) <= 256 else "int32"
