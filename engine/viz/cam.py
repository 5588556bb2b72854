"""The shared machinery of class activation maps (CAMs): target scores, one forward pass and one
backward pass to a layer, and the weighted-activation map every CAM method ends with.

Modelled on pytorch-grad-cam's ``base_cam.py``: a CAM method only says how to weight the
channels of a layer's activations (``channel_weights(activations, gradients) -> (N, C)``);
``class_activation_map`` does the rest:

    target classes (given, or each image's top class)
    -> forward pass, gradient of each image's own class score w.r.t. the layer's output (one
       backward pass for the whole batch: image n injects a one-hot gradient at its class n)
    -> heatmap = ReLU(mean over channels of weights[c] * activations[..., c]), divided by its max

The class score is the pre-softmax logit by default (the Grad-CAM paper); ``score="probability"``
differentiates the network's output after its softmax, as the Keras Grad-CAM example and
Deep Learning with Python (ch. 5) do. A heatmap whose maximum is 0 (no channel votes for the
class) stays all zeros rather than dividing by zero.

Shapes: ``x`` is a preprocessed NHWC float32 batch; activations and gradients are (N, h, w, C) at
the layer's own resolution; heatmaps are (N, h, w) float32 in 0..1. No file or screen I/O.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.errors import ConvscopeError

SCORES = ("logit", "probability")


@dataclass
class LayerGradients:
    """One forward and backward pass: what a CAM method weighs."""

    activations: np.ndarray  # (N, h, w, C) float32, the layer's output
    gradients: np.ndarray  # (N, h, w, C) float32, d score[n] / d activations[n]
    classes: np.ndarray  # (N,) int64, the target class of each image
    scores: np.ndarray  # (N,) float64, each image's score for its class (logit or probability)
    probabilities: np.ndarray  # (N, n_classes) float32, the network's class probabilities


@dataclass
class CamResult:
    heatmaps: np.ndarray  # (N, h, w) float32 in 0..1, at the layer's resolution
    classes: np.ndarray  # (N,) int64
    scores: np.ndarray  # (N,) float64, the differentiated score of each image's class
    probabilities: np.ndarray  # (N, n_classes) float32
    layer: str
    score: str


def n_classes(model) -> int:
    """The classifier's width; a clear error for a network without one."""
    if not model.has_classifier:
        raise ConvscopeError(
            "class activation maps need a network with a classifier; this weights file has none "
            "(use vgg16_weights_tf_dim_ordering_tf_kernels.h5, not the 'notop' file)"
        )
    return int(model.layers[-1].kernel.shape[1])


def target_classes(classes, n_images: int, n_classes: int):
    """``classes`` as an (N,) int64 array (one int is used for every image), or None."""
    if classes is None:
        return None
    values = np.asarray(classes)
    if values.dtype == bool or not (
        np.issubdtype(values.dtype, np.integer)
        or (np.issubdtype(values.dtype, np.floating) and np.all(values == np.round(values)))
    ):
        raise ConvscopeError(f"classes {classes!r} are not whole numbers: give class indices")
    values = np.broadcast_to(values, (n_images,)) if values.ndim == 0 else values
    if values.shape != (n_images,):
        raise ConvscopeError(
            f"got {values.size} target classes for {n_images} images: give one class per image"
        )
    values = values.astype(np.int64)
    bad = values[(values < 0) | (values >= n_classes)]
    if bad.size:
        raise ConvscopeError(
            f"class {int(bad[0])} is out of range: the classifier has {n_classes} classes "
            f"(0 to {n_classes - 1})"
        )
    return values


def check_layer(model, layer: str, x) -> None:
    """A one-line error unless ``layer`` has a spatial output (h, w, C) for inputs like ``x``."""
    index = model.layer_index(layer)
    shape = model.output_shapes(x.shape[1:3])[index]
    if len(shape) != 3 or layer == "logits":
        raise ConvscopeError(
            f"layer {layer!r} has no spatial output ({'x'.join(map(str, shape))}): "
            "pick a convolution or pooling layer, e.g. block5_conv3"
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def layer_gradients(model, x, classes=None, layer: str = "block5_conv3", score: str = "logit") -> LayerGradients:
    """Forward the batch, then backpropagate each image's class score to ``layer``'s output."""
    if score not in SCORES:
        raise ConvscopeError(f"unknown score {score!r}: use one of {', '.join(SCORES)}")
    width = n_classes(model)
    x = model.check_input(x)
    wanted = target_classes(classes, x.shape[0], width)
    check_layer(model, layer, x)
    last = model.layers[-1]
    if score == "probability" and last.activation not in ("softmax", "sigmoid"):
        raise ConvscopeError(
            f"score 'probability' needs a softmax or sigmoid output; {last.name} is {last.activation}"
        )

    to_host = model.backend.to_host
    trace = model.trace(x)
    logits = to_host(trace.output("logits")).astype(np.float32)
    output = to_host(trace.output(last.name)).astype(np.float32)
    probabilities = output if last.activation in ("softmax", "sigmoid") else _softmax(logits)
    if wanted is None:
        wanted = np.argmax(logits, axis=1).astype(np.int64)

    rows = np.arange(x.shape[0])
    one_hot = np.zeros(logits.shape, dtype=np.float32)
    one_hot[rows, wanted] = 1.0
    target = "logits" if score == "logit" else last.name
    scores = (logits if score == "logit" else output)[rows, wanted].astype(np.float64)

    activations = to_host(trace.output(layer)).copy()
    gradients = to_host(trace.backward({target: one_hot}, wrt=(layer,))[layer])
    return LayerGradients(activations, np.asarray(gradients), wanted, scores, probabilities)


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
    score: str = "logit",
) -> CamResult:
    """Run one CAM method: ``channel_weights(activations, gradients) -> (N, C)`` weights."""
    passed = layer_gradients(model, x, classes, layer, score)
    weights = channel_weights(passed.activations, passed.gradients)
    heatmaps = weighted_map(passed.activations, weights)
    return CamResult(heatmaps, passed.classes, passed.scores, passed.probabilities, layer, score)
