"""Turning arrays into pictures: normalisation, enlargement and grid stitching, shared by techniques.

Every helper takes arrays and returns arrays; nothing here reads or writes files.

Shapes: a *tile* is (h, w) grayscale or (h, w, c) colour; a *stack* of tiles is (k, h, w[, c]).
Pictures for people are uint8; float helpers return float32 in [0, 1].

* ``standardize_to_uint8`` is the Keras ``conv_filter_visualization`` ``deprocess_image``: centre
  each image, scale it to a standard deviation of ``std`` (0.1 there), shift to 0.5, clip to
  [0, 1] and truncate to uint8, exactly as the example's ``astype('uint8')`` does.
* ``minmax`` / ``symmetric`` scale to [0, 1] per tile or over the whole stack.
* ``enlarge`` is a nearest-neighbour zoom (each value becomes a ``factor`` x ``factor`` block),
  for tiles too small to see (3x3 kernels).
* ``stitch_grid`` lays tiles out row-major in a grid with a margin between them (none outside),
  as the Keras example does: 8 x 8 tiles of 128 px with 5 px margins give 1059 x 1059.
"""

import math

import numpy as np


def standardize_to_uint8(x, std: float = 0.1, eps: float = 1e-5) -> np.ndarray:
    """Keras' ``deprocess_image`` per image: (x - mean) / (std(x) + eps) * std + 0.5 -> uint8.

    ``x`` is one image (h, w, c) or a stack (k, h, w, c); the mean and standard deviation are taken
    over each whole image (all pixels and channels). ``eps`` 1e-5 is the original example's
    constant (later versions use ``K.epsilon()`` = 1e-7; the difference is invisible).
    """
    x = np.asarray(x, dtype=np.float64)
    single = x.ndim == 3
    stack = x[None] if single else x
    axes = tuple(range(1, stack.ndim))
    centred = stack - stack.mean(axis=axes, keepdims=True)
    scaled = centred / (centred.std(axis=axes, keepdims=True) + eps) * std + 0.5
    out = (np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)  # truncation, as the example
    return out[0] if single else out


def _tile_axes(stack, per_tile):
    return tuple(range(1, stack.ndim)) if per_tile else tuple(range(stack.ndim))


def minmax(stack, per_tile: bool = True, eps: float = 1e-12) -> np.ndarray:
    """Scale to [0, 1]: min -> 0, max -> 1, per tile (axis 0 indexes tiles) or over the stack.

    A constant tile becomes 0.5 (mid-gray), not an arbitrary extreme.
    """
    stack = np.asarray(stack, dtype=np.float64)
    axes = _tile_axes(stack, per_tile)
    low = stack.min(axis=axes, keepdims=True)
    span = stack.max(axis=axes, keepdims=True) - low
    out = np.where(span > eps, (stack - low) / np.maximum(span, eps), 0.5)
    return out.astype(np.float32)


def symmetric(stack, per_tile: bool = True, eps: float = 1e-12) -> np.ndarray:
    """Scale to [0, 1] with zero at 0.5: x / (2 max|x|) + 0.5, per tile or over the stack.

    Keeps the sign visible (negative darker, positive brighter than mid-gray): the natural view of
    signed weights.
    """
    stack = np.asarray(stack, dtype=np.float64)
    axes = _tile_axes(stack, per_tile)
    peak = np.abs(stack).max(axis=axes, keepdims=True)
    out = np.where(peak > eps, stack / (2 * np.maximum(peak, eps)), 0.0) + 0.5
    return out.astype(np.float32)


def to_uint8(unit) -> np.ndarray:
    """Values in [0, 1] -> uint8 0..255 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(unit, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def enlarge(stack, factor: int, tile_axes=(1, 2)) -> np.ndarray:
    """Nearest-neighbour zoom by an integer ``factor`` along the two spatial axes ``tile_axes``.

    The default suits a stack (k, h, w[, c]); pass (0, 1) for a single tile.
    """
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"enlargement factor {factor} must be at least 1")
    out = np.asarray(stack)
    for axis in tile_axes:
        out = np.repeat(out, factor, axis=axis)
    return out


def grid_shape(n: int, columns: int | None = None) -> tuple[int, int]:
    """(rows, columns) for n tiles: ``columns`` wide (default the smallest square that holds n)."""
    if n < 1:
        raise ValueError("a grid needs at least one tile")
    if columns is None:
        columns = math.ceil(math.sqrt(n))
    columns = max(1, min(int(columns), n))
    return math.ceil(n / columns), columns


def grid_size(rows: int, columns: int, tile_hw, margin: int = 5) -> tuple[int, int]:
    """(height, width) of a stitched grid: n tiles plus (n - 1) margins along each side."""
    h, w = tile_hw
    return rows * h + (rows - 1) * margin, columns * w + (columns - 1) * margin


def stitch_grid(tiles, rows: int | None = None, columns: int | None = None, margin: int = 5, fill=0):
    """Lay a stack of tiles (k, h, w[, c]) out row-major: tile i goes to row i // columns.

    ``rows`` / ``columns`` default to the smallest near-square grid that holds all tiles; cells
    beyond the last tile, and the margins, are ``fill``. Tiles beyond rows * columns are an error
    (choose them first, e.g. the best by loss). Returns (H, W[, c]) in the tiles' dtype.
    """
    tiles = np.asarray(tiles)
    if tiles.ndim not in (3, 4) or len(tiles) == 0:
        raise ValueError(f"expected a non-empty stack (k, h, w[, c]) of tiles, got shape {tiles.shape}")
    k, h, w = tiles.shape[:3]
    if margin < 0:
        raise ValueError(f"margin {margin} must not be negative")
    if rows is None and columns is None:
        rows, columns = grid_shape(k)
    elif rows is None:
        rows = math.ceil(k / columns)
    elif columns is None:
        columns = math.ceil(k / rows)
    if k > rows * columns:
        raise ValueError(f"{k} tiles do not fit a {rows} x {columns} grid")
    height, width = grid_size(rows, columns, (h, w), margin)
    picture = np.full((height, width) + tiles.shape[3:], fill, dtype=tiles.dtype)
    for i in range(k):
        top = (i // columns) * (h + margin)
        left = (i % columns) * (w + margin)
        picture[top : top + h, left : left + w] = tiles[i]
    return picture
