"""Receptive fields of one layer: which input pixels a unit can see, cut out of a picture.

The fields themselves come from the network's geometry (``engine.geometry.receptive_fields``:
the standard recursion over each layer's window). Boxes are (top, left, bottom, right) with
bottom/right exclusive, in pixels of the network input; images are (H, W, C) or (H, W). Dense
layers see the whole input and have no receptive field in this sense.
"""

import numpy as np

from engine.errors import ConvscopeError
from engine.geometry import ReceptiveField, receptive_fields

# Network-input zero padding is the ImageNet mean in caffe space: this is the colour it shows as.
PADDING_RGB = (124, 117, 104)


def receptive_field(model, layer: str) -> ReceptiveField:
    """The receptive field of a spatial layer; a one-line error for a dense or flatten layer."""
    fields = receptive_fields(model)
    if layer not in fields:
        model.layer_index(layer)  # an unknown name gets the model's own error
        raise ConvscopeError(
            f"layer {layer} is not spatial (each of its units sees the whole input): "
            "choose a convolution or pooling layer"
        )
    return fields[layer]


def crop_field(image: np.ndarray, field: ReceptiveField, i: int, j: int, fill=PADDING_RGB) -> np.ndarray:
    """Unit (i, j)'s field cut from an (H, W, C) image, clamped at the borders, on a tile of the
    full field size: the part outside the image is ``fill`` (the network's zero padding, as a
    colour), so that the unit's centre stays at the centre of the tile."""
    height, width = image.shape[:2]
    top, left, bottom, right = field.box(i, j)
    c_top, c_left, c_bottom, c_right = field.clamped_box(i, j, (height, width))
    tile = np.empty((field.size[0], field.size[1]) + image.shape[2:], dtype=image.dtype)
    tile[...] = np.asarray(fill, dtype=image.dtype) if image.ndim == 3 else fill[0]
    if c_bottom > c_top and c_right > c_left:
        tile[c_top - top : c_bottom - top, c_left - left : c_right - left] = image[c_top:c_bottom, c_left:c_right]
    return tile
