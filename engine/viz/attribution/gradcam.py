"""Grad-CAM (Selvaraju et al., 2017): where in the image a convolutional layer sees a class.

Each channel of the layer is weighted by the spatial mean of the gradient of the class score with
respect to it; the heatmap is ReLU(mean over channels of weight x activation), scaled to a max of
1 (see ``engine.viz.attribution.cam`` for the shared forward/backward pass and the score choice).

    result = grad_cam(model, x)                      # each image's top class, block5_conv3
    result = grad_cam(model, x, classes=[386, 18])   # one class per image, one pass
    result.heatmaps                                  # (N, 14, 14) float32 for 224x224 inputs

``x`` is a caffe-preprocessed NHWC batch (``engine.preprocess_input``); heatmaps are at the
layer's resolution: resizing them to the photo and colouring them is the caller's business
(``engine.viz.colormaps.overlay``).
"""

import numpy as np

from engine.viz.attribution.cam import CamResult, class_activation_map


def grad_cam_weights(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM's channel weights: the gradient averaged over space. (N, h, w, C) -> (N, C)."""
    return np.asarray(gradients, dtype=np.float64).mean(axis=(1, 2))


def grad_cam(model, x, classes=None, layer: str = "block5_conv3", score="logit") -> CamResult:
    """Grad-CAM heatmaps of ``layer`` for a batch, one target class per image.

    ``classes``: None (each image's top class), one index for every image, or one per image.
    ``score``: "logit" (the pre-softmax class score, as in the paper), "probability" (the
    softmax output, as the Keras example) or a target function (``attribution.base``).
    Returns a ``CamResult`` with the heatmaps, the classes used, their scores and every class
    probability.
    """
    return class_activation_map(model, x, grad_cam_weights, classes, layer, score)
