"""Guided Grad-CAM (Selvaraju et al., 2017): guided backprop times the Grad-CAM heatmap.

One forward pass per ``batch`` images serves both parts: a guided backward pass of each image's
class logit to the input, and a standard backward pass of the same logit to ``layer`` (Grad-CAM's
weights and map, ``gradcam.grad_cam_weights`` and ``cam.weighted_map``).
The heatmap (max 1) is upsampled bilinearly to the input's size (PIL's filter, half-pixel
centres; it equals PyTorch's ``interpolate(mode="bilinear", align_corners=False)`` when
enlarging) and multiplies every channel of the guided gradient, as pytorch-grad-cam does.
"""

import numpy as np

from engine.preprocess import resize
from engine.viz.attribution.base import Attribution, channel_map, gathered, prepare
from engine.viz.attribution.cam import check_layer, weighted_map
from engine.viz.attribution.gradcam import grad_cam_weights


def upsample(heatmaps, shape) -> np.ndarray:
    """(N, h, w) -> (N, H, W) float32, bilinear; ``shape`` = (H, W)."""
    height, width = shape
    return np.stack([resize(h, (width, height), "bilinear") for h in np.asarray(heatmaps, np.float32)])


def guided_grad_cam(model, x, classes=None, layer: str = "block5_conv3", batch=16, progress=None) -> Attribution:
    """Guided backprop x upsampled Grad-CAM of ``layer`` for each image's class logit."""
    x, wanted, batch = prepare(model, x, classes, batch)
    check_layer(model, layer, x)
    g = gathered(model, x, wanted, batch, progress, relu="guided", layer=layer)
    heatmaps = weighted_map(g.activations, grad_cam_weights(g.activations, g.layer_gradients))
    attributions = g.gradients * upsample(heatmaps, x.shape[1:3])[..., None]
    return Attribution(
        "guided-gradcam", attributions, channel_map(attributions), False, g.classes, g.scores,
        g.probabilities, heatmaps=heatmaps,
    )
