"""The picture half of an activation atlas (Carter et al., 2019; Lucid's ``activation_atlas``):
each occupied grid cell's mean activation (``engine.scale.atlas.grid_cells``) rendered by
feature visualisation, and the cells stitched into one picture.

Each cell's icon maximises ``objectives.direction(layer, mean)``, the mean cosine between the
cell's mean activation vector and the activation at each position of ``layer`` (Lucent's
``direction``; Lucid's atlas scores one neuron with a cosine power, here every position counts).
As Lucid renders its icons: a Fourier 1/f spectrum in decorrelated colour squashed by a sigmoid
(``engine.viz.param.image``), Lucid's normal(0, 0.01) start, Adam (lr 0.05) on minus the
objective, and with ``robust`` Lucid's standard transforms (pad, jitter, scale, rotate). Every
cell of a batch is one sample of one ``optimise`` run; ``batch`` cells per run.

Determinism: a cell's start comes from ``default_rng([seed, row, column])`` (its grid
position), the transforms from ``seed``; the same arguments give the same bytes.

Shapes: vectors (K, C) (C the layer's channels), cells (K, 2) int (grid row, grid column);
``AtlasIcons.images`` uint8 RGB (K, size, size, 3); ``stitch_atlas`` returns uint8 RGB
(grid * size, grid * size, 3), the cell at (r, c) in rows r*size.. and columns c*size..,
unoccupied cells ``fill`` (white).
"""

from dataclasses import dataclass

import numpy as np

from engine.errors import ConvscopeError
from engine.preprocess import deprocess
from engine.viz import objectives, param as image_param
from engine.viz.filters import CAFFE_GRAY, LUCID_LR
from engine.viz.optimise import optimise
from engine.viz.steps import Adam
from engine.viz.transforms import standard_transforms

ICON_SIZE = 80  # Lucid's icon side in its atlas notebooks (pixels)
ICON_STEPS = 128


@dataclass
class AtlasIcons:
    images: np.ndarray  # uint8 (K, size, size, 3) RGB: each cell's icon
    start: np.ndarray  # float64 (K,) the direction objective at the start image
    final: np.ndarray  # float64 (K,) the direction objective at the final image
    history: np.ndarray  # float32 (steps, K) the objective at each step, as the loop saw it (through the transforms)


def _direction_value(model, layer, images, vectors) -> np.ndarray:
    acts = model.forward(images, outputs=[layer])
    return np.asarray(objectives.direction(layer, vectors)(acts)[0], dtype=np.float64)


def render_icons(model, layer: str, cells, vectors, size: int = ICON_SIZE, steps: int = ICON_STEPS,
                 lr: float = LUCID_LR, seed: int = 0, batch: int = 64, robust: bool = True,
                 callback=None) -> AtlasIcons:
    """One icon per cell: see the module docstring. ``callback(done, total)`` counts steps of
    cells (total = K * steps)."""
    cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    vectors = np.asarray(vectors, dtype=np.float64)
    if len(cells) != len(vectors) or vectors.ndim != 2:
        raise ConvscopeError(f"{len(cells)} cells and vectors of shape {vectors.shape}: give one (C,) vector per cell")
    if size < 1 or steps < 1 or batch < 1:
        raise ConvscopeError(f"icon size {size}, steps {steps} and batch {batch}: give positive numbers")
    if model.input_shape[2] != 3:
        raise ConvscopeError(f"an atlas renders colour images; this network reads {model.input_shape[2]} channels")
    shape = model.output_shapes((size, size), upto=model.layer_index(layer))[-1]
    if len(shape) != 3:
        raise ConvscopeError(f"layer {layer} is not spatial: an atlas needs a convolution or pooling layer")
    if shape[-1] != vectors.shape[1]:
        raise ConvscopeError(f"vectors of {vectors.shape[1]} values for {layer}, which has {shape[-1]} channels")
    k = len(cells)
    raw = np.empty((k, size, size, 3), np.float32)
    start_value, final_value = np.empty(k), np.empty(k)
    history = np.empty((steps, k), np.float32)
    moves = standard_transforms(pad_value=CAFFE_GRAY) if robust else []
    for first in range(0, k, batch):
        part = slice(first, min(k, first + batch))
        n = part.stop - first
        p = image_param.image((n, size, size), backend=model.backend, fft=True, decorrelate=True, valid="sigmoid")
        start = np.stack([np.random.default_rng([int(seed), int(r), int(c)]).standard_normal(p.param_shape[1:])
                          for r, c in cells[part]]) * p.sd
        start = start.astype(np.float32)
        start_images = model.backend.to_host(p.forward(model.backend.asarray(start)))
        target = objectives.direction(layer, vectors[part])
        report = None if callback is None else (lambda step, _loss, done=first * steps, n=n: callback(done + n * (step + 1), k * steps))
        result = optimise(model, start, -target, Adam(lr), steps, transforms=moves, seed=seed, param=p, callback=report)
        raw[part] = result.images
        history[:, part] = -result.losses
        start_value[part] = _direction_value(model, layer, start_images, vectors[part])
        final_value[part] = _direction_value(model, layer, result.images, vectors[part])
    return AtlasIcons(deprocess(raw), start_value, final_value, history)


def stitch_atlas(cells, images, grid: int, fill: int = 255) -> np.ndarray:
    """The icons (K, s, s, 3) uint8 at their cells (K, 2) (row, column) of a ``grid`` x ``grid``
    canvas, unoccupied cells ``fill``; see the module docstring."""
    images = np.asarray(images, dtype=np.uint8)
    size = images.shape[1] if len(images) else 1
    canvas = np.full((grid * size, grid * size, 3), fill, dtype=np.uint8)
    for (r, c), icon in zip(np.asarray(cells, dtype=np.int64).reshape(-1, 2), images):
        canvas[r * size : (r + 1) * size, c * size : (c + 1) * size] = icon
    return canvas
