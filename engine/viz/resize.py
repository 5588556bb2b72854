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
from a slightly different resize ends in a visibly different dream. Shapes: NHWC float32 in and out; ``shape`` is (height, width).
"""

import numpy as np


def interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) float64 bilinear weights, half-pixel centres, clamped at the edges."""
    if n_out < 1 or n_in < 1:
        raise ValueError(f"cannot resize {n_in} pixels to {n_out}")
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, i0), 1.0 - frac)
    np.add.at(matrix, (rows, i1), frac)
    return matrix


def resize_bilinear(x, shape) -> np.ndarray:
    """Resize an NHWC (or HWC) float batch to ``shape`` = (height, width); same size: a copy."""
    x = np.asarray(x, dtype=np.float32)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected an NHWC or HWC array, got shape {x.shape}")
    height, width = (int(s) for s in shape)
    n, h, w, c = x.shape
    if (height, width) == (h, w):
        out = x.copy()
    else:
        ry = interpolation_matrix(height, h)
        rx = interpolation_matrix(width, w)
        rows = np.einsum("oh,nhwc->nowc", ry, x.astype(np.float64), optimize=True)
        out = np.ascontiguousarray(np.einsum("pw,nowc->nopc", rx, rows, optimize=True), dtype=np.float32)
    return out[0] if single else out
