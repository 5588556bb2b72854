"""The shared end of class activation maps (CAMs): a layer's activations weighted per channel.

Modelled on pytorch-grad-cam's ``base_cam.py``: a CAM method only says how to weight the
channels of a layer's activations (``channel_weights(activations, gradients) -> (N, C)``);
``class_activation_map`` takes the gradients of each image's class score at the layer from
``base.class_gradients`` (one forward and one backward pass for the batch; ``score="logit"``
as the Grad-CAM paper, ``"probability"`` as the Keras example, or a target function) and
returns ReLU(mean over channels of weights[c] * activations[..., c]) divided by its max (a
heatmap whose maximum is 0 stays all zeros).

Shapes: ``x`` is a preprocessed NHWC float32 batch; activations and gradients are (N, h, w, C) at
the layer's own resolution; heatmaps are (N, h, w) float32 in 0..1. No file or screen I/O.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.geometry import check_spatial
from engine.viz.attribution.base import class_gradients, prepare, score_function


@dataclass
class CamResult:
    heatmaps: np.ndarray  # (N, h, w) float32 in 0..1, at the layer's resolution
    classes: np.ndarray  # (N,) int64
    scores: np.ndarray  # (N,) float64, the differentiated score of each image's class
    probabilities: np.ndarray  # (N, n_classes) float32
    layer: str
    score: str  # the score's name ('logit', 'probability' or the target function's __name__)


def check_layer(model, layer: str, x) -> None:
    """A one-line error unless ``layer`` has a spatial output (h, w, C) for inputs like ``x``."""
    check_spatial(model, [layer], x.shape[1:3], "pick a convolution or pooling layer, e.g. block5_conv3")


def weighted_map(activations, weights) -> np.ndarray:
    """ReLU(mean over channels of weights[n, c] * activations[n, :, :, c]), each map divided by its
    max (a map that is all zeros stays zeros). (N, h, w, C), (N, C) -> (N, h, w) float32."""
    a = np.asarray(activations, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    cam = np.maximum(np.einsum("nhwc,nc->nhw", a, w) / a.shape[-1], 0.0)
    peak = cam.max(axis=(1, 2), keepdims=True)
    cam = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
    return cam.astype(np.float32)


def class_activation_map(
    model,
    x,
    channel_weights: Callable[[np.ndarray, np.ndarray], np.ndarray],
    classes=None,
    layer: str = "block5_conv3",
    score="logit",
) -> CamResult:
    """Run one CAM method: ``channel_weights(activations, gradients) -> (N, C)`` weights of the
    gradients of ``score`` (a ``base.SCORES`` name or a target function) at ``layer``."""
    x, wanted, _ = prepare(model, x, classes, 1)
    target = score_function(model, score)
    check_layer(model, layer, x)
    passed = class_gradients(model, x, wanted, target, layer=layer, wrt_input=False)
    heatmaps = weighted_map(passed.activations, channel_weights(passed.activations, passed.layer_gradients))
    name = score if isinstance(score, str) else getattr(score, "__name__", "custom")
    return CamResult(heatmaps, passed.classes, passed.scores, passed.probabilities, layer, name)
