"""Occlusion sensitivity (Zeiler and Fergus, 2014): how much the class probability drops when a
square of the image is hidden.

A ``window`` x ``window`` square filled with the image's mean (per channel, in the network's input
space) slides over the input with ``stride``; the positions start at 0 and, when the stride does
not land on the far edge, one more position touches it, so every pixel is covered. For each
position the drop p(x)[class] - p(occluded)[class] is recorded (the network's softmax output;
negative where hiding a square helps the class). All occluded copies of all images run forward
as batches of ``batch`` rows; no gradients are needed.

Results: ``drops`` (N, rows, cols), one value per position (``tops`` x ``lefts``), and ``heatmaps``
(N, H, W): each pixel gets the mean drop of the windows that cover it (as Captum's Occlusion
spreads its output differences). Shapes: ``x`` is a caffe-preprocessed NHWC batch. No file or
screen I/O; drawing the heatmap over the photo is the caller's business.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from engine.errors import ConvscopeError
from engine.viz.attribution.base import check_count, gathered, gradient_batches, prepare


@dataclass
class OcclusionResult:
    drops: np.ndarray  # (N, rows, cols) float32: p[class] - p_occluded[class] per position
    heatmaps: np.ndarray  # (N, H, W) float32: mean drop of the windows covering each pixel
    tops: np.ndarray  # (rows,) int64, the window's top edge per row of positions
    lefts: np.ndarray  # (cols,) int64
    window: int
    classes: np.ndarray  # (N,) int64
    probabilities: np.ndarray  # (N, n_classes) float32, of the unoccluded images


def window_positions(size: int, window: int, stride: int) -> np.ndarray:
    """Start offsets 0, stride, ... of a window along one side, the last one touching the edge."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return np.asarray(starts, dtype=np.int64)


def occlude(image, top: int, left: int, window: int, fill) -> np.ndarray:
    """A copy of ``image`` (H, W, C) with the square at (top, left) set to ``fill`` (C,)."""
    out = np.array(image, dtype=np.float32)
    out[top : top + window, left : left + window] = fill
    return out


def occlusion(
    model, x, classes=None, window: int = 32, stride: int = 8, batch: int = 32, progress: Optional[Callable] = None
) -> OcclusionResult:
    """Occlusion maps of each image's class (the class given, or the image's top class)."""
    x, wanted, batch = prepare(model, x, classes, batch)
    window, stride = check_count(window, "window"), check_count(stride, "stride")
    n, height, width = x.shape[:3]
    if window > min(height, width):
        raise ConvscopeError(f"window {window} is larger than the {height}x{width} input")
    tops, lefts = window_positions(height, window, stride), window_positions(width, window, stride)
    positions = [(t, l) for t in tops for l in lefts]
    n_pos = len(positions)
    fills = x.astype(np.float64).mean(axis=(1, 2)).astype(np.float32)  # (N, C)

    clean = gathered(model, x, wanted, batch, wrt_input=False)
    classes, probabilities = clean.classes, clean.probabilities

    def make_rows(start, stop):
        rows = range(start, stop)
        return np.stack([occlude(x[r // n_pos], *positions[r % n_pos], window, fills[r // n_pos]) for r in rows])

    occluded = np.empty(n * n_pos, dtype=np.float64)
    row_classes = np.repeat(classes, n_pos)
    chunks = gradient_batches(model, n * n_pos, make_rows, row_classes, batch, progress, wrt_input=False)
    for start, stop, part in chunks:
        occluded[start:stop] = part.probabilities[np.arange(stop - start), part.classes]

    unoccluded = np.repeat(probabilities[np.arange(n), classes].astype(np.float64), n_pos)
    drops = (unoccluded - occluded).reshape(n, len(tops), len(lefts))
    sums = np.zeros((n, height, width), dtype=np.float64)
    counts = np.zeros((height, width), dtype=np.float64)
    for i, t in enumerate(tops):
        for j, l in enumerate(lefts):
            sums[:, t : t + window, l : l + window] += drops[:, i, j, None, None]
            counts[t : t + window, l : l + window] += 1
    heatmaps = (sums / counts).astype(np.float32)
    return OcclusionResult(drops.astype(np.float32), heatmaps, tops, lefts, window, classes, probabilities)
