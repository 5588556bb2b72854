"""Keras "caffe" preprocessing, its inverse, and small array helpers for pictures.

VGG16's ImageNet weights were trained in Caffe on BGR images with the per-channel ImageNet mean
subtracted and no scaling; ``keras.applications.vgg16.preprocess_input`` ("caffe" mode) does
exactly this, and so does :func:`preprocess_input` here, in float32 arithmetic as Keras does:

    x = rgb[..., ::-1] - [103.939, 116.779, 123.68]      # BGR order, values in 0..255

Shapes: images are HWC (one) or NHWC (a batch), RGB, channels last. Network inputs are float32
NHWC in BGR; a single HWC image becomes a batch of one. Pictures for people are uint8 RGB.
Nothing here reads or writes files.
"""

import numpy as np
from PIL import Image

# The ImageNet mean in BGR order, as Keras (and the original Caffe model) states it.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _as_batch(x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        return x[None]
    if x.ndim == 4:
        return x
    raise ValueError(f"expected an HWC or NHWC image array, got shape {x.shape}")


def preprocess_input(rgb) -> np.ndarray:
    """RGB image(s), uint8 or float in 0..255, HWC or NHWC -> float32 NHWC BGR, mean subtracted.

    Integer input is converted to float32 first; float32 input is computed in float32 (bit-identical
    to Keras); float64 input is computed in float64 and rounded once to float32.
    """
    x = np.asarray(rgb)
    if x.shape[-1:] != (3,):
        raise ValueError(f"expected 3 RGB channels last, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    x = _as_batch(x)
    mean = np.asarray(CAFFE_MEAN_BGR, dtype=x.dtype)
    return np.ascontiguousarray(x[..., ::-1] - mean, dtype=np.float32)


def deprocess(x) -> np.ndarray:
    """The inverse of :func:`preprocess_input`: BGR mean-subtracted float -> uint8 RGB.

    Keeps the rank (HWC stays HWC, NHWC stays NHWC); values are rounded and clipped to 0..255, so
    ``deprocess(preprocess_input(img))[0] == img`` for any uint8 image.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1:] != (3,) or x.ndim not in (3, 4):
        raise ValueError(f"expected an HWC or NHWC BGR array, got shape {x.shape}")
    rgb = (x + np.asarray(CAFFE_MEAN_BGR, dtype=np.float32))[..., ::-1]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def resize(x, size, resample: str = "bilinear") -> np.ndarray:
    """Resize a float HxW or HxWxC array to ``size`` = (width, height), channel by channel.

    Uses PIL's 32-bit float images, so values are neither clipped nor quantized; PIL's bilinear
    filter widens its support when shrinking, so downsizing is antialiased. Returns float32.
    """
    x = np.asarray(x, dtype=np.float32)
    width, height = (int(s) for s in size)
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width}x{height}")
    if resample not in _RESAMPLE:
        raise ValueError(f"unknown resample filter {resample!r}; use one of {', '.join(_RESAMPLE)}")
    if x.ndim == 2:
        return np.asarray(Image.fromarray(x).resize((width, height), _RESAMPLE[resample]))
    if x.ndim != 3:
        raise ValueError(f"expected an HxW or HxWxC array, got shape {x.shape}")
    out = np.empty((height, width, x.shape[2]), dtype=np.float32)
    for c in range(x.shape[2]):
        channel = Image.fromarray(np.ascontiguousarray(x[:, :, c]))
        out[:, :, c] = np.asarray(channel.resize((width, height), _RESAMPLE[resample]))
    return out


def normalize(x, eps: float = 1e-12) -> np.ndarray:
    """Min-max scale an array to [0, 1] (float32); a constant array becomes all zeros."""
    x = np.asarray(x, dtype=np.float32)
    low, high = float(np.min(x)), float(np.max(x))
    if high - low < eps:
        return np.zeros_like(x)
    return (x - low) / np.float32(high - low)


def to_uint8(x) -> np.ndarray:
    """A map with values in [0, 1] -> uint8 0..255 (rounded; values outside [0, 1] are clipped)."""
    x = np.asarray(x, dtype=np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
