"""Bilinear resizing of float image batches, as DeepDream's octaves need it.

DeepDream shrinks and enlarges the image in caffe space (floats of either sign), and the detail it
re-injects after each octave is the difference of two such resizes, so the filter must be the one
the reference uses: TensorFlow 2's ``tf.image.resize(..., "bilinear")`` (the Keras deep_dream
example), which equals PyTorch's ``interpolate(mode="bilinear", align_corners=False,
antialias=False)``: half-pixel centres, source coordinate ``(i + 0.5) * in / out - 0.5`` clamped to
the image, no antialiasing when shrinking. ``engine.preprocess.resize`` (PIL) is not used: PIL
widens its filter when shrinking, which gives a different (smoother) small octave.

The resize is separable: ``out = Ry @ x @ Rx^T`` per channel, with two small interpolation
matrices, computed in float64 and rounded once to float32: the result is the correctly rounded
bilinear value, whatever the order of the arithmetic, so it equals PyTorch's float64 resize
rounded to float32. That matters more than it seems: on a deep ReLU network the input gradient
is "shattered" (a change of 1e-7 in the input can change it by 1%), so an octave that starts
from a slightly different resize ends in a visibly different dream.

The arithmetic is the backends' ``resize_bilinear`` op: NumPy on the CPU (``kernels/reference.py``,
the matrices above) and a CUDA kernel that computes the same weights per output pixel in float64
(``kernels/cuda/images.py``), so DeepDream's octaves resize a batch where it lives, on the device
between octaves. Shapes: NHWC float32 in and out; ``shape`` is (height, width).
"""

from engine.backend import get_backend


def resize_bilinear(x, shape, backend="cpu"):
    """Resize an NHWC (or HWC) float batch to ``shape`` = (height, width); same size: a copy.

    ``backend`` (a name or ``Backend``): where the result lives (a new array); x is copied there
    unless it is already one of the backend's arrays.
    """
    backend = get_backend(backend)
    x = backend.asarray(x)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected an NHWC or HWC array, got shape {x.shape}")
    height, width = (int(s) for s in shape)
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize {x.shape[1]}x{x.shape[2]} pixels to {height}x{width}")
    out = backend.empty((x.shape[0], height, width, x.shape[3]))
    backend.ops.resize_bilinear(x, out)
    return out[0] if single else out
