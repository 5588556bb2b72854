"""Texture synthesis and style transfer by Gram-matrix matching (Gatys, Ecker & Bethge 2015).

    result = synthesize(model, preprocess_input(photo), size=(224, 224))               # texture
    result = synthesize(model, preprocess_input(style), content=preprocess_input(photo))  # style

Loss, minimised over the image x (caffe space, clipped to the pixel range):

    sum_l w_l * E_l(x)                               E_l: Gatys' Gram loss (``gram.gram_loss``)
    + content_weight * ||F(x) - F(c)||^2 / ||F(c)||^2   at the content layer (``gram.content``)
    + tv_weight / (H W V^2) * TV(x)                  (``objectives.total_variation``, V = 80/6.5)

Default style layers: each block's first convolution (block1_conv1 ... block5_conv1, as the paper
and the Keras ``neural_style_transfer`` example); content layer: block4_conv2 (Gatys' conv4_2;
the Keras example uses block5_conv2), or the network's deepest convolution when it has no block 4.
Layer weights: w_l = 4 C_l^2 / (L ||A_l||^2), which makes each E_l the layer's squared Gram
error relative to its target's own size: with raw caffe-scale features the paper's equal weights
1/L let block1's huge Grams drown the other layers and the content term.

Optimisers (step rules of ``optimise``): ``"lbfgs"`` is scipy's L-BFGS-B with the pixel range as
box bounds (the paper's and the old Keras example's choice; scipy is the optional ``texture``
extra, imported only then); ``"adam"`` (``steps.Adam``) needs no extra. ``"auto"`` picks L-BFGS when scipy
is installed. A texture starts from seeded noise; style transfer starts from the content image.
The target Grams are divided by the number of positions, so a texture can be made at any size.
Arrays are host NHWC float32; ``losses`` is the total loss per evaluation, (evaluations, N).
"""

from dataclasses import dataclass

import numpy as np

from engine.errors import ConvscopeError
from engine.viz import objectives
from engine.viz.gram import content as content_loss
from engine.viz.gram import gram_loss, layer_grams
from engine.viz.optimise import optimise
from engine.viz.steps import CAFFE_BOUNDS, LBFGS, Adam, require_lbfgs, scipy_available

V = 80.0 / 6.5  # typical neighbour difference in caffe space (Mahendran & Vedaldi)


@dataclass
class TextureResult:
    images: np.ndarray  # (N, H, W, C) caffe space
    losses: np.ndarray  # (evaluations, N) total loss
    method: str  # "lbfgs" or "adam"
    style_layers: list
    content_layer: str | None


def default_style_layers(model) -> list:
    """Each block's first convolution."""
    firsts = {}
    for layer in model.layers:
        if layer.kind == "conv2d":
            firsts.setdefault(layer.name.split("_")[0], layer.name)
    if not firsts:
        raise ConvscopeError("this network has no convolutional layer to take Gram matrices from")
    return list(firsts.values())


def default_content_layer(model) -> str:
    names = model.layer_names
    if "block4_conv2" in names:
        return "block4_conv2"
    return [layer.name for layer in model.layers if layer.kind == "conv2d"][-1]


def texture_objective(targets: dict, hw, content_targets=None, content_weight=0.0, tv_weight=0.0):
    """The loss above; ``targets`` {layer: Gram (N or 1, C, C)}, ``content_targets`` {layer: F}."""
    n_layers = len(targets)
    terms = []
    for name, gram in targets.items():
        c = gram.shape[-1]
        size = np.square(gram).sum(axis=(-2, -1)).mean()
        weight = 4.0 * c * c / (n_layers * max(float(size), 1e-30))
        terms.append(gram_loss(name, gram, weight))
    total = sum(terms[1:], terms[0])
    if content_targets and content_weight > 0:
        total = total + content_weight * content_loss(content_targets)
    if tv_weight > 0:
        h, w = hw
        total = total + (tv_weight / (h * w * V**2)) * objectives.total_variation(2.0)
    return total


def synthesize(
    model, style, size=None, content=None, style_layers=None, content_layer=None,
    content_weight=1.0, tv_weight=0.1, steps=100, method="auto", lr=4.0, noise=10.0, seed=0,
    callback=None,
) -> TextureResult:
    """A texture with ``style``'s Gram matrices (at ``size`` = (H, W), default the style's), or
    ``content`` re-rendered in that style; see the module docstring."""
    style = np.asarray(style, dtype=np.float32)
    style = style[None] if style.ndim == 3 else style
    style_layers = list(style_layers or default_style_layers(model))
    grams = layer_grams(model, style, style_layers)
    content_targets, content_layer_used = None, None
    if content is not None:
        content = np.asarray(content, dtype=np.float32)
        content = content[None] if content.ndim == 3 else content
        content_layer_used = content_layer or default_content_layer(model)
        content_targets = model.forward(content, outputs=[content_layer_used])
        start = content.copy()
    else:
        hw = tuple(size) if size is not None else style.shape[1:3]
        rng = np.random.default_rng(seed)
        start = (noise * rng.standard_normal((len(style),) + tuple(hw) + style.shape[3:])).astype(np.float32)
    objective = texture_objective(grams, start.shape[1:3], content_targets, content_weight, tv_weight)
    if method == "auto":
        method = "lbfgs" if scipy_available() else "adam"
    if method == "lbfgs":
        require_lbfgs()
        rule = LBFGS(bounds=CAFFE_BOUNDS)
    elif method == "adam":
        rule = Adam(lr=lr, bounds=CAFFE_BOUNDS)
    else:
        raise ConvscopeError(f"unknown optimiser {method!r}: use auto, lbfgs or adam")
    result = optimise(model, start, objective, rule, steps, seed=seed, callback=callback)
    return TextureResult(result.images, result.losses, method, style_layers, content_layer_used)
