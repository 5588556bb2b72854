"""Activation maps: what each channel of a layer responds to in one picture, as a grid of tiles.

``activation_maps`` runs the network once and returns the outputs of the layers asked for.
``channel_images`` turns one image's (h, w, C) map into C greyscale tiles with the normalisation
of Deep Learning with Python (ch. 5): per channel, (x - mean) / std * 64 + 128, clipped to 0..255
and truncated to uint8 (a constant channel, std = 0, becomes flat grey 128). ``activation_grid``
colours the tiles (viridis by default) and lays them out 16 per row with a gap between tiles.

Shapes: ``x`` is a preprocessed NHWC batch; maps are (N, h, w, C) float32; a grid is
(rows * h * zoom + (rows - 1) * gap, cols * w * zoom + (cols - 1) * gap, 3) uint8 RGB with
cols = min(per_row, C), rows = ceil(C / per_row). Titles and files are the caller's business.
"""

import numpy as np

from engine.errors import ConvscopeError
from engine.geometry import check_spatial, receptive_fields
from engine.viz.colormaps import apply_colormap
from engine.viz.pictures import enlarge, stitch_grid

PER_ROW = 16
BACKGROUND = 255  # white


def default_layers(model, count: int = 8) -> list[str]:
    """The first ``count`` layers of the network that have a spatial output."""
    return list(receptive_fields(model.layers[:count]))


def activation_maps(model, x, layers) -> dict:
    """{layer name: (N, h, w, C) float32 output} for the named layers, from one forward pass."""
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ConvscopeError("no layers asked for: name at least one layer")
    x = model.check_input(x)
    check_spatial(model, names, x.shape[1:3], "activation maps need a convolution or pooling layer")
    outputs = model.forward(x, outputs=names)
    return {name: np.asarray(outputs[name], dtype=np.float32) for name in names}


def channel_images(maps) -> np.ndarray:
    """One image's (h, w, C) activations -> (C, h, w) uint8 tiles, normalised per channel."""
    a = np.asarray(maps, dtype=np.float32)
    if a.ndim != 3:
        raise ValueError(f"expected one image's (h, w, C) activations, got shape {a.shape}")
    a = np.moveaxis(a, -1, 0)
    centred = a - a.mean(axis=(1, 2), keepdims=True)
    std = centred.std(axis=(1, 2), keepdims=True)
    scaled = np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)
    return np.clip(scaled * 64.0 + 128.0, 0, 255).astype(np.uint8)


def activation_grid(maps, per_row: int = PER_ROW, colormap: str = "viridis", gap: int = 2, zoom: int = 1) -> np.ndarray:
    """One image's (h, w, C) activations as a uint8 RGB grid of coloured, normalised tiles:
    ``per_row`` tiles to a row, each enlarged ``zoom`` times (nearest neighbour), ``gap`` white
    pixels between tiles."""
    if per_row < 1:
        raise ValueError(f"per_row {per_row} must be at least 1")
    tiles = enlarge(apply_colormap(channel_images(maps), colormap), zoom)
    return stitch_grid(tiles, columns=min(per_row, len(tiles)), margin=gap, fill=BACKGROUND)
