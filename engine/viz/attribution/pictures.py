"""Attribution maps as pictures, drawn as the reference tools draw them; arrays in, arrays out.

* Absolute maps (vanilla, guided, SmoothGrad, guided Grad-CAM): gray, black = 0 and white = the
  99th percentile of the map (larger values clipped), as in Smilkov et al.'s SmoothGrad code
  (``VisualizeImageGrayscale``).
* Signed maps (integrated gradients): diverging blue-white-red, white = 0, full red / blue at
  +/- the 99th percentile of |map|. The table is matplotlib's ``bwr`` (``engine.viz.colormaps.BWR``),
  indexed as ``engine.viz.colormaps.to_index`` does.

A percentile of 0 (an all-zero map) gives an all-black or all-white picture, not a division by
zero. ``clip_scale`` lets a caller take the scale from the map at network resolution and apply it
to a resized copy.
"""

import numpy as np

from engine.viz.colormaps import BWR, to_index

PERCENTILE = 99.0


def clip_scale(values, signed: bool = False, percentile: float = PERCENTILE) -> float:
    """The value drawn at full strength: the percentile of the map (of |map| when signed)."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.percentile(np.abs(values) if signed else values, percentile))


def gray_picture(values, scale=None) -> np.ndarray:
    """An absolute map (H, W) -> uint8 gray (H, W): 0 black, ``scale`` and above white."""
    values = np.asarray(values, dtype=np.float64)
    scale = clip_scale(values) if scale is None else float(scale)
    unit = np.clip(values / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(values)
    return np.rint(unit * 255).astype(np.uint8)


def diverging_picture(values, scale=None) -> np.ndarray:
    """A signed map (H, W) -> uint8 RGB (H, W, 3): blue negative, white 0, red positive."""
    values = np.asarray(values, dtype=np.float64)
    scale = clip_scale(values, signed=True) if scale is None else float(scale)
    unit = np.clip(values / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(values)
    return BWR[to_index((unit + 1.0) / 2.0)]


def attribution_picture(values, signed: bool, scale=None) -> np.ndarray:
    """The picture of one map: diverging RGB when signed, else gray expanded to RGB."""
    if signed:
        return diverging_picture(values, scale)
    return np.repeat(gray_picture(values, scale)[..., None], 3, axis=2)
