"""Feature inversion: reconstruct an image from one layer's features (Mahendran & Vedaldi 2015).

    result = invert(model, preprocess_input(photo), ["block1_conv2", "block2_conv2"], steps=200)
    pictures = deprocess(result.images)          # one reconstruction per layer

Starting from small seeded noise, minimise over x, with Adam (``optimise`` with ``steps.Adam``;
more robust than the paper's momentum on these mixed-scale terms) and x clipped to the pixel range:

    ||phi(x) - phi(x0)||^2 / ||phi(x0)||^2                       (gram.feature_reconstruction)
    + lambda_alpha / (H W B^alpha) * sum |x|^alpha               (objectives.alpha_norm)
    + lambda_tv / (H W V^beta) * sum TV(x)^beta                  (objectives.total_variation)

with the paper's normalisation: B = 80 (a typical caffe-space pixel magnitude), V = B / 6.5,
alpha = 6, beta = 2. Several layers are inverted in one batched descent, one sample per layer:
each sample's data term reads only its own layer (``feature_reconstruction(..., samples=[i])``),
the network runs once to the deepest layer for the whole batch; the pictures are exactly those of
separate runs. Deeper layers keep less of the photo: colours and fine texture go first.

Arrays are host NHWC float32 (caffe space); ``losses`` (steps, layers) is the total loss.
"""

from dataclasses import dataclass

import numpy as np

from engine.errors import ConvscopeError
from engine.viz import objectives
from engine.viz.gram import feature_reconstruction
from engine.viz.optimise import optimise
from engine.viz.steps import CAFFE_BOUNDS, Adam

B = 80.0  # Mahendran & Vedaldi's typical pixel magnitude for caffe inputs
V = B / 6.5  # and their typical neighbour difference


@dataclass
class InversionResult:
    images: np.ndarray  # (L, H, W, C) one reconstruction per layer, caffe space
    layers: list  # the L layers, in the batch's order
    losses: np.ndarray  # (steps, L) total loss before each update
    feature_losses: np.ndarray  # (L,) the data term alone at the final images


def block_layers(model, last=True) -> list:
    """Each block's last (or first) convolution: ['block1_conv2', 'block2_conv2', ...] on VGG16."""
    blocks = {}
    for layer in model.layers:
        if layer.kind == "conv2d":
            block = layer.name.split("_")[0]
            if last or block not in blocks:
                blocks[block] = layer.name
    if not blocks:
        raise ConvscopeError("this network has no convolutional layer to invert")
    return list(blocks.values())


def inversion_objective(targets: dict, hw, lambda_alpha=1e-3, lambda_tv=0.5, alpha=6.0, beta=2.0):
    """The loss above for a batch with one sample per layer of ``targets`` {layer: (1, ...)}."""
    h, w = hw
    terms = [feature_reconstruction(name, t, samples=[i]) for i, (name, t) in enumerate(targets.items())]
    total = sum(terms[1:], terms[0])
    if lambda_alpha > 0:
        total = total + (lambda_alpha / (h * w * B**alpha)) * objectives.alpha_norm(alpha)
    if lambda_tv > 0:
        total = total + (lambda_tv / (h * w * V**beta)) * objectives.total_variation(beta)
    return total


def invert(
    model, x, layers, steps=200, lr=2.0, lambda_alpha=1e-3, lambda_tv=0.5, alpha=6.0, beta=2.0,
    noise=10.0, seed=0, callback=None,
) -> InversionResult:
    """Reconstruct the single image ``x`` (1, H, W, C) from each layer in ``layers``."""
    x = np.asarray(x, dtype=np.float32)
    x = x[None] if x.ndim == 3 else x
    if len(x) != 1:
        raise ConvscopeError(f"invert takes one image at a time, got a batch of {len(x)}")
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise ConvscopeError("give at least one layer to invert")
    for name in layers:
        if model.layers[model.layer_index(name)].kind not in ("conv2d", "maxpool2d"):
            raise ConvscopeError(f"{name} is not a convolution or pooling layer: invert a conv or pool layer")
    targets = model.forward(x, outputs=layers)
    for name, t in targets.items():
        if not np.any(t):
            raise ConvscopeError(f"{name}: the photo gives all-zero features there; nothing to invert")
    objective = inversion_objective(targets, x.shape[1:3], lambda_alpha, lambda_tv, alpha, beta)
    rng = np.random.default_rng(seed)
    start = (noise * rng.standard_normal((len(layers),) + x.shape[1:])).astype(np.float32)
    result = optimise(model, start, objective, Adam(lr=lr, bounds=CAFFE_BOUNDS), steps, seed=seed, callback=callback)
    final = model.forward(result.images, outputs=layers)
    data = [feature_reconstruction(name, t, samples=[i]) for i, (name, t) in enumerate(targets.items())]
    feature_losses = sum(term(final)[0] for term in data)
    return InversionResult(result.images, layers, result.losses, np.asarray(feature_losses, np.float32))
