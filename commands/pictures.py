"""Pictures several commands compose: heatmaps and saliency maps over a photo, activation grids,
titled pictures and rows of pictures. All take and return uint8 RGB (H, W, 3) arrays, except
``occlusion_unit`` (a float map in [0, 1]); nothing here reads or writes files."""

import numpy as np

from commands.common import shape_text

def heatmap_picture(photo: np.ndarray, unit: np.ndarray, alpha: float) -> np.ndarray:
    """A [0, 1] heatmap resized to the photo (bilinear), jet-coloured and blended over it."""
    from engine.preprocess import resize
    from engine.viz.colormaps import overlay

    photo_size = (photo.shape[1], photo.shape[0])
    return overlay(photo, np.clip(resize(unit, photo_size, "bilinear"), 0.0, 1.0), alpha)


def saliency_picture(photo: np.ndarray, result, index: int = 0):
    """(picture, scale): an attribution map at the photo's size, clipped at its 99th percentile."""
    from engine.preprocess import resize
    from engine.viz.attribution.pictures import attribution_picture, clip_scale

    photo_size = (photo.shape[1], photo.shape[0])
    scale = clip_scale(result.maps[index], result.signed)
    return attribution_picture(resize(result.maps[index], photo_size, "bilinear"), result.signed, scale), scale


def occlusion_unit(heatmap: np.ndarray):
    """(unit, peak): the probability drops scaled so the largest is 1 (all zeros when none is positive)."""
    peak = float(heatmap.max())
    return (np.clip(heatmap / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(heatmap)), peak


ACTIVATION_GAP = 2  # pixels between tiles
MIN_TILE = 48  # small maps (14x14 at block5) are enlarged to at least this many pixels


def activation_zoom(side: int) -> int:
    """Integer enlargement of a side-pixel map so that its tile is at least MIN_TILE pixels."""
    return max(1, -(-MIN_TILE // max(1, int(side))))


def activation_picture(a: np.ndarray, name: str) -> np.ndarray:
    """One layer's (h, w, C) activations: every channel a tile, 16 per row, under the layer's name."""
    from engine.viz.activations import activation_grid

    grid = activation_grid(a, gap=ACTIVATION_GAP, zoom=activation_zoom(min(a.shape[:2])))
    return titled(grid, f"{name}  {shape_text(a.shape)}")


def side_by_side(pictures, gap: int = 4) -> np.ndarray:
    """Equal-height uint8 RGB pictures in a row on white, ``gap`` pixels apart."""
    height = max(p.shape[0] for p in pictures)
    width = sum(p.shape[1] for p in pictures) + gap * (len(pictures) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    left = 0
    for p in pictures:
        canvas[: p.shape[0], left : left + p.shape[1]] = p
        left += p.shape[1] + gap
    return canvas


TITLE_BAND = 22  # height of the white band that carries the layer's name


def titled(picture: np.ndarray, title: str) -> np.ndarray:
    """The picture under a white band with the title in PIL's default font."""
    from PIL import Image, ImageDraw

    height, width = picture.shape[:2]
    canvas = Image.new("RGB", (width, height + TITLE_BAND), "white")
    canvas.paste(Image.fromarray(picture), (0, TITLE_BAND))
    ImageDraw.Draw(canvas).text((4, 5), title, fill="black")
    return np.asarray(canvas)
