"""Colour maps as 256-entry lookup tables, and a heatmap blended over a photo; no matplotlib.

``jet`` is computed exactly as matplotlib builds it: a piecewise-linear map through the segment
points of matplotlib's ``_jet_data``, sampled at 256 evenly spaced values of 0..1.

``viridis`` (Stéfan van der Walt and Nathaniel Smith, CC0) is defined by matplotlib's 256-entry
table. We embed every 8th entry of that table (and the last) and interpolate linearly between
them; the result stays within 2/255 of matplotlib's table everywhere, which is below what an
8-bit picture can show (``tests/test_activations.py`` checks entries between the knots).

``BWR`` is matplotlib's diverging ``bwr`` (linear from blue (0, 0, 1) through white to red
(1, 0, 0)), kept as the uint8 table the signed attribution pictures index directly.

Shapes: a table is (256, 3) float32 RGB in 0..1 (``BWR``: uint8 0..255). ``apply_colormap``
takes a map of any shape with values in 0..1 and returns uint8 RGB with one more axis of length 3;
``overlay`` takes an (H, W, 3) uint8 photo and an (H, W) heatmap in 0..1. Nothing here reads or
writes files.
"""

import numpy as np

# matplotlib's _jet_data: per channel, (x, value) points of a piecewise-linear ramp.
_JET_POINTS = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}

# matplotlib's _viridis_data at entries 0, 8, 16, ..., 248 and 255.
_VIRIDIS_KNOTS = np.arange(0, 256, 8).tolist() + [255]
_VIRIDIS_VALUES = (
    (0.267004, 0.004874, 0.329415), (0.277018, 0.050344, 0.375715),
    (0.282327, 0.094955, 0.417331), (0.282884, 0.135920, 0.453427),
    (0.278826, 0.175490, 0.483397), (0.270595, 0.214069, 0.507052),
    (0.258965, 0.251537, 0.524736), (0.244972, 0.287675, 0.537260),
    (0.229739, 0.322361, 0.545706), (0.214298, 0.355619, 0.551184),
    (0.199430, 0.387607, 0.554642), (0.185556, 0.418570, 0.556753),
    (0.172719, 0.448791, 0.557885), (0.160665, 0.478540, 0.558115),
    (0.149039, 0.508051, 0.557250), (0.137770, 0.537492, 0.554906),
    (0.127568, 0.566949, 0.550556), (0.120565, 0.596422, 0.543611),
    (0.120638, 0.625828, 0.533488), (0.132268, 0.655014, 0.519661),
    (0.157851, 0.683765, 0.501686), (0.196571, 0.711827, 0.479221),
    (0.246070, 0.738910, 0.452024), (0.304148, 0.764704, 0.419943),
    (0.369214, 0.788888, 0.382914), (0.440137, 0.811138, 0.340967),
    (0.515992, 0.831158, 0.294279), (0.595839, 0.848717, 0.243329),
    (0.678489, 0.863742, 0.189503), (0.762373, 0.876424, 0.137064),
    (0.845561, 0.887322, 0.099702), (0.926106, 0.897330, 0.104071),
    (0.993248, 0.906157, 0.143936),
)


def _jet_table() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    channels = []
    for name in ("red", "green", "blue"):
        xs, ys = zip(*_JET_POINTS[name])
        channels.append(np.interp(x, xs, ys))
    return np.stack(channels, axis=1).astype(np.float32)


def _viridis_table() -> np.ndarray:
    values = np.asarray(_VIRIDIS_VALUES, dtype=np.float64)
    index = np.arange(256)
    channels = [np.interp(index, _VIRIDIS_KNOTS, values[:, c]) for c in range(3)]
    return np.stack(channels, axis=1).astype(np.float32)


COLORMAPS = {"jet": _jet_table(), "viridis": _viridis_table()}
for _table in COLORMAPS.values():
    _table.flags.writeable = False


def _bwr_table() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    points = ((0.0, 0.5, 1.0), {"red": (0, 1, 1), "green": (0, 1, 0), "blue": (1, 1, 0)})
    table = np.stack([np.interp(x, points[0], points[1][c]) for c in ("red", "green", "blue")], axis=1)
    return np.rint(table * 255).astype(np.uint8)


BWR = _bwr_table()
BWR.flags.writeable = False


def colormap(name: str) -> np.ndarray:
    """The (256, 3) float32 RGB table of a colour map by name ('jet', 'viridis')."""
    if name not in COLORMAPS:
        raise ValueError(f"unknown colour map {name!r}; use one of {', '.join(COLORMAPS)}")
    return COLORMAPS[name]


def to_index(values) -> np.ndarray:
    """Values in 0..1 -> table indices 0..255 (uint8), as matplotlib's ``cmap(x)`` picks them:
    floor(x * 256), with 1.0 going to 255; values outside 0..1 are clipped."""
    x = np.asarray(values, dtype=np.float32)
    return np.clip(np.floor(x * np.float32(256.0)), 0, 255).astype(np.uint8)


def apply_colormap(values, name: str = "jet") -> np.ndarray:
    """A map (any shape) -> uint8 RGB, shape + (3,). Float values are taken in 0..1 (see
    ``to_index``); uint8 values are the table indices themselves (0 -> first colour, 255 -> last).
    """
    table = np.rint(colormap(name) * 255.0).astype(np.uint8)
    values = np.asarray(values)
    return table[values if values.dtype == np.uint8 else to_index(values)]


def overlay(photo, heatmap, alpha: float = 0.4, name: str = "jet") -> np.ndarray:
    """Blend a colour-mapped heatmap over a photo: (1 - alpha) * photo + alpha * colours.

    ``photo`` is (H, W, 3) uint8 RGB; ``heatmap`` is (H, W) in 0..1 (resize it to the photo
    first). The Keras Grad-CAM example adds ``0.4 * colours`` to the photo and then rescales the
    sum to 0..255 by its min and max; a convex blend gives the same look without the image-
    dependent rescaling, so a heatmap of zeros leaves a photo that is only dimmed by 1 - alpha.
    """
    photo = np.asarray(photo)
    heat = np.asarray(heatmap, dtype=np.float32)
    if photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB photo, got shape {photo.shape}")
    if heat.shape != photo.shape[:2]:
        raise ValueError(f"heatmap of shape {heat.shape} does not match the photo's {photo.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha {alpha} is not between 0 and 1")
    colours = apply_colormap(heat, name).astype(np.float32)
    blended = (1.0 - alpha) * photo.astype(np.float32) + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
