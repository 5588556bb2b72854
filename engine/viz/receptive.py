"""Receptive fields: which input pixels a unit of a spatial layer can see, from the layer geometry.

The standard recursion (Araujo et al., "Computing receptive fields of CNNs", Distill 2019), run
over the layers in order, per axis. With ``size`` the field's side, ``jump`` the distance in input
pixels between neighbouring units and ``offset`` the first input pixel seen by unit 0 (negative
when the field reaches into the zero padding):

    conv  (kernel k, stride 1, padding p before):  size += (k - 1) * jump;  offset -= p * jump
    pool  (window k = stride s, no padding):       size += (k - 1) * jump;  jump *= s

Unit ``i`` then sees input pixels ``offset + i * jump`` to ``offset + i * jump + size - 1``. The
classic ``start`` (the centre of unit 0's field) is ``offset + (size - 1) / 2``. The geometry is
independent of the input size; only clamping a field to the image needs it. For VGG16 the sides
are 3, 5, 6 (block1_pool), 10, 14, 16, 24, 32, 40, 44, 60, 76, 92, 100, 132, 164, 196 and 212
(block5_pool), with jumps 1, 2, 4, 8, 16, 32 after each pool.

Boxes are (top, left, bottom, right) with bottom/right exclusive, in pixels of the network input.
Dense layers see the whole input and have no receptive field in this sense.
"""

from dataclasses import dataclass

import numpy as np

from engine.errors import ConvscopeError
from engine.model import conv_padding

# Network-input zero padding is the ImageNet mean in caffe space: this is the colour it shows as.
PADDING_RGB = (124, 117, 104)


@dataclass(frozen=True)
class ReceptiveField:
    """Geometry of one layer's units, per axis (height, width)."""

    size: tuple[int, int]
    jump: tuple[int, int]
    offset: tuple[int, int]

    @property
    def start(self) -> tuple[float, float]:
        """The centre of unit (0, 0)'s field, in input pixels (the recursion's usual 'start')."""
        return tuple(o + (s - 1) / 2 for o, s in zip(self.offset, self.size))

    def box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """Unit (i, j)'s field as (top, left, bottom, right), bottom/right exclusive, unclamped."""
        top = self.offset[0] + int(i) * self.jump[0]
        left = self.offset[1] + int(j) * self.jump[1]
        return top, left, top + self.size[0], left + self.size[1]

    def clamped_box(self, i: int, j: int, input_hw) -> tuple[int, int, int, int]:
        """``box`` clamped to an input of (height, width)."""
        top, left, bottom, right = self.box(i, j)
        height, width = (int(s) for s in input_hw)
        return max(top, 0), max(left, 0), min(bottom, height), min(right, width)


def receptive_fields(layers) -> dict[str, ReceptiveField]:
    """{layer name: field} for the spatial layers of a model (or a list of ``LayerSpec``), in
    order, stopping at the first flatten or dense layer."""
    layers = getattr(layers, "layers", layers)
    size, jump, offset = [1, 1], [1, 1], [0, 0]
    fields = {}
    for spec in layers:
        if spec.kind == "conv2d":
            kernel = spec.kernel.shape[:2]
            padding = conv_padding(spec)
            for axis in range(2):
                size[axis] += (kernel[axis] - 1) * jump[axis]
                offset[axis] -= padding[axis] * jump[axis]
        elif spec.kind == "maxpool2d":
            for axis in range(2):
                size[axis] += (spec.pool_size[axis] - 1) * jump[axis]
                jump[axis] *= spec.pool_size[axis]
        elif spec.kind in ("flatten", "dense"):
            break
        fields[spec.name] = ReceptiveField(tuple(size), tuple(jump), tuple(offset))
    return fields


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


def field_mask(field: ReceptiveField, i: int, j: int, input_hw) -> np.ndarray:
    """A boolean (H, W) mask of the input pixels inside unit (i, j)'s field."""
    top, left, bottom, right = field.clamped_box(i, j, input_hw)
    mask = np.zeros(tuple(int(s) for s in input_hw), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask
