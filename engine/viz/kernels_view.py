"""A conv layer's weights as pictures: the kernels themselves, not what they respond to.

* A layer that reads the colour image (3 input channels, e.g. VGG16's block1_conv1) shows each
  (kh, kw, 3) kernel as one small colour tile. VGG16's ImageNet weights come from Caffe and expect
  BGR input, so the channels are reversed to RGB for display (``channel_order="bgr"``, the
  default); pass ``"rgb"`` for a network trained on RGB. Learned first layers show oriented
  edges (light/dark bars) and colour blobs (opponent colours).
* Any other layer shows one grayscale tile per (output filter, input channel): row r is output
  filter r, column c its kernel on input channel c (the first ``max_filters`` x ``max_inputs``).

Normalisation (``normalize``): ``"tile"`` stretches each colour kernel (or each output filter's
row of grayscale kernels) to the full range with ``pictures.minmax``; ``"layer"`` uses one
symmetric scale for the whole picture (``pictures.symmetric``: zero is mid-gray), which keeps the
filters' relative strengths and signs comparable. Tiles are enlarged ``zoom`` times with nearest
neighbours so a 3x3 kernel stays a crisp 3x3 pattern.

Shapes: the kernel is the engine's (kh, kw, c_in, c_out). ``KernelView.picture`` is uint8
(H, W, 3) for colour kernels and (H, W) for grayscale ones.
"""

from dataclasses import dataclass

import numpy as np

from engine.errors import ConvscopeError
from engine.viz.pictures import enlarge, minmax, stitch_grid, symmetric, to_uint8

NORMALIZATIONS = ("tile", "layer")


@dataclass
class KernelView:
    picture: np.ndarray  # uint8 (H, W, 3) colour or (H, W) grayscale
    tiles: np.ndarray  # float32 in [0, 1]: (k, kh, kw, 3) colour or (rows, cols, kh, kw) gray
    colour: bool  # True: one RGB tile per output filter
    rows: int  # grid rows (output filters for gray; ceil(k / columns) for colour)
    columns: int  # grid columns (input channels for gray)


def layer_kernel(model, layer: str) -> np.ndarray:
    """The (kh, kw, c_in, c_out) float32 kernel of a conv layer, with a clear error otherwise."""
    spec = model.layers[model.layer_index(layer)]
    if spec.kind != "conv2d":
        raise ConvscopeError(f"layer {layer} is a {spec.kind} layer: choose a convolution layer to show its kernels")
    return np.asarray(spec.kernel, dtype=np.float32)


def _scale(stack, normalize):
    if normalize == "tile":
        return minmax(stack, per_tile=True)
    return symmetric(stack, per_tile=False)


def colour_tiles(kernel, channel_order="bgr", normalize="tile") -> np.ndarray:
    """(k, kh, kw, 3) float tiles in [0, 1], RGB, one per output filter of a 3-input kernel."""
    if kernel.shape[2] != 3:
        raise ValueError(f"colour tiles need 3 input channels, the kernel has {kernel.shape[2]}")
    tiles = np.moveaxis(kernel, 3, 0)  # (k, kh, kw, 3)
    if channel_order == "bgr":
        tiles = tiles[..., ::-1]
    elif channel_order != "rgb":
        raise ValueError(f"unknown channel order {channel_order!r}: use 'bgr' or 'rgb'")
    return _scale(tiles, normalize)


def gray_tiles(kernel, max_filters=None, max_inputs=None, normalize="tile") -> np.ndarray:
    """(rows, cols, kh, kw) float tiles in [0, 1]: output filter x input channel."""
    tiles = np.transpose(kernel, (3, 2, 0, 1))[:max_filters, :max_inputs]  # (out, in, kh, kw)
    return _scale(tiles, normalize)  # "tile": one scale per output filter (per row)


def view_kernels(
    model,
    layer: str,
    max_filters: int | None = None,
    max_inputs: int | None = None,
    zoom: int = 8,
    margin: int = 2,
    columns: int | None = None,
    channel_order: str = "bgr",
    normalize: str = "tile",
    fill: int = 255,
) -> KernelView:
    """The kernels of conv ``layer`` as one picture; see the module docstring for the layout.

    ``max_filters`` limits the output filters shown (default: all), ``max_inputs`` the input
    channels of a grayscale view (default: all); ``columns`` sets the colour grid's width
    (default: 8, as the usual 8 x 8 picture of 64 first-layer filters). Margins are ``fill``.
    """
    if normalize not in NORMALIZATIONS:
        raise ConvscopeError(f"unknown normalisation {normalize!r}: use one of {', '.join(NORMALIZATIONS)}")
    for name, value in (("max_filters", max_filters), ("max_inputs", max_inputs), ("columns", columns)):
        if value is not None and value < 1:
            raise ConvscopeError(f"{name} {value}: give at least 1")
    if zoom < 1 or margin < 0:
        raise ConvscopeError(f"zoom {zoom} must be at least 1 and margin {margin} not negative")
    kernel = layer_kernel(model, layer)
    if kernel.shape[2] == 3:
        tiles = colour_tiles(kernel[..., :max_filters], channel_order, normalize)
        columns = min(columns or 8, len(tiles))
        rows = -(-len(tiles) // columns)
        picture = stitch_grid(to_uint8(enlarge(tiles, zoom)), rows, columns, margin, fill)
        return KernelView(picture, tiles, True, rows, columns)
    tiles = gray_tiles(kernel, max_filters, max_inputs, normalize)
    rows, columns = tiles.shape[:2]
    flat = tiles.reshape((rows * columns,) + tiles.shape[2:])
    picture = stitch_grid(to_uint8(enlarge(flat, zoom)), rows, columns, margin, fill)
    return KernelView(picture, tiles, False, rows, columns)
