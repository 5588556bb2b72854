"""The geometry of a network, from its layer table alone: output shapes for an input size, the
smallest input it takes, receptive fields, and the pooling grid that tiles an input exactly.

Everything here is computed from each layer's ``Window`` (``engine.layers``): kernel, stride and
zero padding per axis; flatten and dense layers have none (each of their units sees the whole
input). Shapes are without batch: (H, W, C) for spatial layers, (n,) after flatten.

Receptive fields follow the standard recursion (Araujo et al., "Computing receptive fields of
CNNs", Distill 2019), per axis over the spatial layers in order, with ``size`` the field's side,
``jump`` the distance in input pixels between neighbouring units and ``offset`` the first input
pixel seen by unit 0 (negative when the field reaches into the zero padding):

    size += (kernel - 1) * jump;  offset -= before * jump;  jump *= stride

Unit ``i`` sees input pixels ``offset + i * jump`` to ``offset + i * jump + size - 1``; the
geometry is independent of the input size (VGG16's block5_pool: side 212, jump 32).
Boxes are (top, left, bottom, right), bottom/right exclusive, in pixels of the network input.
"""

from dataclasses import dataclass

from engine.errors import ConvscopeError
from engine.layers import LAYERS, layer_output_shape


def _layers(network):
    """The list of ``LayerSpec`` of a model, a ``NetworkSpec`` or a list of ``LayerSpec``."""
    return getattr(network, "layers", network)


def layer_shapes(layers, in_shape) -> dict:
    """{name: output shape} of the layers in order for an input shape (H, W, C), unchecked (a
    layer may come out empty)."""
    shapes, shape = {}, tuple(int(s) for s in in_shape)
    for spec in _layers(layers):
        shape = shapes[spec.name] = layer_output_shape(spec, shape)
    return shapes


def min_input_size(layers) -> int:
    """Smallest square input side for which no spatial layer's output is empty."""
    size = 1
    for spec in reversed(_layers(layers)):
        window = LAYERS[spec.kind].window(spec)
        if window is not None:
            size = (size - 1) * window.stride[0] + window.kernel[0] - window.before[0] - window.after[0]
    return size


def output_shapes(network, input_hw, upto=None) -> list[tuple]:
    """Per-layer output shapes of ``network`` (a ``NetworkSpec`` or ``Model``) for an input of
    (H, W), up to layer index ``upto`` (default: all); a one-line error when the size does not fit
    those layers (an empty layer, or a dense layer given the wrong number of features)."""
    layers = _layers(network)
    shape = (int(input_hw[0]), int(input_hw[1]), network.input_shape[2])
    shapes = []
    for spec in layers[: len(layers) if upto is None else upto + 1]:
        needed = LAYERS[spec.kind].input_shape(spec)
        if needed is not None and tuple(shape) != tuple(needed):
            h, w = network.input_shape[:2]
            raise ConvscopeError(
                f"an input of {input_hw[0]}x{input_hw[1]} px gives {shape[0]} features but "
                f"layer {spec.name} expects {needed[0]}: use {f'{h}x{w} px' if h else 'a matching'} input"
            )
        shape = layer_output_shape(spec, shape)
        if len(shape) == 3 and min(shape[:2]) < 1:
            side = min_input_size(layers)
            raise ConvscopeError(
                f"an input of {input_hw[0]}x{input_hw[1]} px is too small for this network "
                f"(layer {spec.name} would be empty): use at least {side}x{side} px"
            )
        shapes.append(shape)
    return shapes


def check_spatial(model, names, input_hw, use: str) -> None:
    """A one-line error (ending in ``use``) unless every layer of ``names`` has an (h, w, C)
    output for an input of (H, W); 'logits' never has one."""
    shapes = model.output_shapes(input_hw)
    for name in names:
        shape = shapes[model.layer_index(name)]
        if len(shape) != 3 or name == "logits":
            raise ConvscopeError(f"layer {name!r} has no spatial output ({'x'.join(map(str, shape))}): {use}")


@dataclass(frozen=True)
class ReceptiveField:
    """Geometry of one layer's units, per axis (height, width), in input pixels."""

    size: tuple[int, int]
    jump: tuple[int, int]
    offset: tuple[int, int]

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
    """{layer name: field} of the spatial layers in order, up to the first flatten or dense."""
    size, jump, offset = [1, 1], [1, 1], [0, 0]
    fields = {}
    for spec in _layers(layers):
        window = LAYERS[spec.kind].window(spec)
        if window is None:
            break
        for axis in range(2):
            size[axis] += (window.kernel[axis] - 1) * jump[axis]
            offset[axis] -= window.before[axis] * jump[axis]
            jump[axis] *= window.stride[axis]
        fields[spec.name] = ReceptiveField(tuple(size), tuple(jump), tuple(offset))
    return fields


def tile_grid(layers):
    """(jump of each layer, halo, alignment) for cutting an input into windows whose layer outputs
    equal the whole input's at the window's core (DeepDream's tiles), along the height axis.

    Every layer must keep the grid: output side = input side / stride ('same' convolutions,
    pooling whose window is its stride). The alignment is the total stride, so that window corners
    fall on every pooling grid; the halo is the reach of the last layer's field beyond its unit's
    own jump x jump block (-offset + jump - 1 input pixels), rounded up to the alignment.
    """
    layers = _layers(layers)
    for spec in layers:
        window = LAYERS[spec.kind].window(spec)
        if window is None or window.before[0] + window.after[0] != window.kernel[0] - window.stride[0]:
            raise ConvscopeError(
                f"cannot cut the input into exact tiles at layer {spec.name} ({spec.kind}): "
                "tiles need 'same' convolutions and pooling layers"
            )
    fields = receptive_fields(layers)
    last = fields[layers[-1].name]
    align = last.jump[0]
    radius = -last.offset[0] + align - 1
    return {name: f.jump[0] for name, f in fields.items()}, -(-radius // align) * align, align
