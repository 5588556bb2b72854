"""Views of a set of images: features, nearest neighbours, 2-D embeddings and top-activating patches.

Arrays in, arrays and numbers out; the CLI walks folders, decodes images and caches features.

Shapes: images are uint8 RGB (N, H, W, 3), all the same size (the network input); a feature
matrix is float32 (N, D), one row per image.

* Features (``image_features``): the layer's output per image. A spatial layer (conv or pool,
  (h, w, c)) is global-average-pooled to c numbers (``pooling="avg"``, the default: insensitive to
  where things are) or flattened to h * w * c (``"flatten"``: keeps the layout); a dense layer
  (fc1, fc2) is used as it is.
* Distances (``distances``, ``nearest``): ``"cosine"`` is 1 - cos(angle) between feature vectors
  (0 for the same direction, 2 for opposite; an all-zero vector is at distance 1 from everything),
  ``"l2"`` the Euclidean distance. Ties keep the images' order.
* Pixel space (``pixel_vectors``): the images as flat vectors of values in [0, 1]; give them at a
  small common size (the CLI uses 32 x 32) so that the distance compares overall layout and colour.
* Embeddings: ``pca_2d`` projects the centred features on the first two right singular vectors
  (numpy's SVD), each axis' sign fixed so that its largest loading is positive; ``tsne_2d`` runs
  scikit-learn's Barnes-Hut t-SNE on the first 50 principal components, with
  the perplexity capped below the number of images (the optional ``tsne`` extra).
* Patches (``channel_maxima``, ``top_patches``): per image and channel the largest activation and
  its (row, column); per channel the images with the largest maxima and, from the receptive field
  of that position, the input region that produced it.
"""

from dataclasses import dataclass

import numpy as np

from engine.errors import ConvscopeError
from engine.preprocess import preprocess_input
from engine.viz.receptive import PADDING_RGB, ReceptiveField, crop_field

METRICS = ("cosine", "l2")
POOLINGS = ("avg", "flatten")
TSNE_EXTRA = "tsne"


# ------------------------------------------------------------------------------- features


def pool_features(outputs, pooling: str = "avg") -> np.ndarray:
    """A layer's outputs (N, h, w, c) or (N, n) as a float32 feature matrix (N, D)."""
    outputs = np.asarray(outputs, dtype=np.float32)
    if pooling not in POOLINGS:
        raise ConvscopeError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
    if outputs.ndim == 4 and pooling == "avg":
        return outputs.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
    return outputs.reshape(len(outputs), -1)


def _batches(n, batch):
    batch = max(1, int(batch))
    return [(start, min(n, start + batch)) for start in range(0, n, batch)]


def image_features(model, images, layer: str, pooling: str = "avg", batch: int = 16, progress=None):
    """Feature matrix (N, D) of uint8 RGB images (N, H, W, 3), ``batch`` images per forward pass."""
    images = np.asarray(images)
    rows = []
    for start, stop in _batches(len(images), batch):
        out = model.forward(preprocess_input(images[start:stop]), layer)[layer]
        rows.append(pool_features(out, pooling))
        if progress is not None:
            progress(stop, len(images))
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def pixel_vectors(images) -> np.ndarray:
    """uint8 images (N, h, w, c) as float32 rows (N, h * w * c) of values in [0, 1]."""
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)


# ------------------------------------------------------------------------------- neighbours


def distances(query, items, metric: str = "cosine") -> np.ndarray:
    """float64 (N,) distances from one feature vector (D,) to each row of ``items`` (N, D)."""
    q = np.asarray(query, dtype=np.float64).ravel()
    x = np.asarray(items, dtype=np.float64).reshape(len(items), -1)
    if x.shape[1] != q.size:
        raise ValueError(f"query has {q.size} features, the items {x.shape[1]}")
    if metric == "l2":
        return np.sqrt(np.maximum(((x - q) ** 2).sum(axis=1), 0.0))
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(q)
        dots = x @ q
        cos = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
        return 1.0 - np.clip(cos, -1.0, 1.0)
    raise ConvscopeError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")


def nearest(query, items, k: int, metric: str = "cosine", exclude=()):
    """(indices, distances) of the ``k`` rows of ``items`` nearest to ``query``, nearest first
    (ties in row order); rows in ``exclude`` are never returned."""
    d = distances(query, items, metric)
    keep = np.setdiff1d(np.arange(len(d)), np.asarray(list(exclude), dtype=np.int64))
    order = keep[np.argsort(d[keep], kind="stable")][: max(0, int(k))]
    return order, d[order]


# ------------------------------------------------------------------------------- embeddings


def pca_2d(features) -> np.ndarray:
    """float64 (N, 2) coordinates on the first two principal axes (numpy SVD of the centred
    features); each axis' sign makes its largest-magnitude loading positive. Fewer than two
    directions of variance leave zeros."""
    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(len(x), -1) - x.reshape(len(x), -1).mean(axis=0)
    coords = np.zeros((len(x), 2))
    if len(x) < 2:
        return coords
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    for axis in range(min(2, len(s))):
        sign = np.sign(vt[axis][np.argmax(np.abs(vt[axis]))]) or 1.0
        coords[:, axis] = u[:, axis] * s[axis] * sign
    return coords


def tsne_perplexity(n: int, perplexity: float = 30.0) -> float:
    """The perplexity actually used for n points: at most (n - 1) / 3, at least 1 (always < n)."""
    return float(max(1.0, min(float(perplexity), (n - 1) / 3.0))) if n > 1 else 1.0


def require_tsne() -> None:
    """A one-line error naming the extra when scikit-learn (t-SNE) is not installed."""
    try:
        import sklearn.manifold  # noqa: F401
    except ImportError:
        raise ConvscopeError(
            f"t-SNE needs scikit-learn: pip install scikit-learn (in a convscope checkout: "
            f"pip install -e '.[{TSNE_EXTRA}]'), or use --method pca"
        ) from None


def tsne_2d(features, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """float64 (N, 2) t-SNE coordinates (scikit-learn, PCA start, on at most 50 PCA components)."""
    require_tsne()
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(len(x), -1)
    if len(x) < 3:
        raise ConvscopeError(f"t-SNE needs at least 3 images, got {len(x)} (use --method pca)")
    x = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    keep = min(50, len(s))
    reduced = u[:, :keep] * s[:keep]
    tsne = TSNE(
        n_components=2, perplexity=tsne_perplexity(len(x), perplexity), init="pca",
        learning_rate="auto", random_state=int(seed),
    )
    return tsne.fit_transform(reduced).astype(np.float64)


def place_on_canvas(coords, size: int, margin: int = 0) -> np.ndarray:
    """int (N, 2) (x, y) pixel positions in [margin, size - margin] for (N, 2) coordinates,
    one scale for both axes (shapes are not stretched), the cloud centred."""
    coords = np.asarray(coords, dtype=np.float64)
    low, high = coords.min(axis=0), coords.max(axis=0)
    span = float((high - low).max())
    room = max(0, int(size) - 2 * int(margin))
    scale = room / span if span > 0 else 0.0
    centre = (low + high) / 2
    return np.rint((coords - centre) * scale + size / 2).clip(margin, size - margin).astype(np.int64)


def embedding_canvas(thumbnails, coords, size: int = 2000, background=(255, 255, 255)) -> np.ndarray:
    """uint8 (size, size, 3) picture: each thumbnail (N, t, t, 3) centred at its coordinate,
    later images on top of earlier ones."""
    thumbnails = np.asarray(thumbnails, dtype=np.uint8)
    t_h, t_w = thumbnails.shape[1:3]
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[...] = np.asarray(background, np.uint8)
    centres = place_on_canvas(coords, size, margin=(max(t_h, t_w) + 1) // 2)
    for thumb, (x, y) in zip(thumbnails, centres):
        top, left = int(y) - t_h // 2, int(x) - t_w // 2
        c_top, c_left = max(top, 0), max(left, 0)
        c_bottom, c_right = min(top + t_h, size), min(left + t_w, size)
        canvas[c_top:c_bottom, c_left:c_right] = thumb[c_top - top : c_bottom - top, c_left - left : c_right - left]
    return canvas


# ------------------------------------------------------------------------------- patches


def channel_maxima(outputs):
    """Per image and channel of (N, h, w, c) outputs: (values (N, c) float32, positions (N, c, 2)
    int64 (row, column) of the first maximum in row-major order)."""
    outputs = np.asarray(outputs, dtype=np.float32)
    n, h, w, c = outputs.shape
    flat = outputs.reshape(n, h * w, c)
    index = flat.argmax(axis=1)
    values = np.take_along_axis(flat, index[:, None, :], axis=1)[:, 0, :]
    return values, np.stack([index // w, index % w], axis=-1).astype(np.int64)


def image_channel_maxima(model, images, layer: str, batch: int = 16, progress=None):
    """``channel_maxima`` of a layer over uint8 RGB images, ``batch`` images per forward pass."""
    images = np.asarray(images)
    values, positions = [], []
    for start, stop in _batches(len(images), batch):
        out = model.forward(preprocess_input(images[start:stop]), layer)[layer]
        if out.ndim != 4:
            raise ConvscopeError(f"layer {layer} is not spatial: choose a convolution or pooling layer")
        v, p = channel_maxima(out)
        values.append(v)
        positions.append(p)
        if progress is not None:
            progress(stop, len(images))
    return np.concatenate(values), np.concatenate(positions)


@dataclass
class Patches:
    """Per channel (rows) the top images (columns), best first."""

    channels: np.ndarray  # (C,) channel indices
    images: np.ndarray  # (C, k) index of the image in the set
    values: np.ndarray  # (C, k) the activation there
    positions: np.ndarray  # (C, k, 2) (row, column) of the arg-max in the layer's output
    boxes: np.ndarray  # (C, k, 4) (top, left, bottom, right) clamped to the input, bottom/right exclusive


def top_patches(values, positions, field: ReceptiveField, input_hw, channels, top: int) -> Patches:
    """The ``top`` images per channel by their largest activation (ties: lower image index first),
    with the receptive field of each arg-max clamped to the input."""
    values = np.asarray(values)
    channels = np.asarray(list(channels), dtype=np.int64)
    if channels.size and (channels.min() < 0 or channels.max() >= values.shape[1]):
        raise ConvscopeError(
            f"channel {int(channels.max())} is out of range: the layer has {values.shape[1]} channels "
            f"(0 to {values.shape[1] - 1})"
        )
    k = min(int(top), len(values))
    order = np.argsort(-values[:, channels].T, axis=1, kind="stable")[:, :k]  # (C, k)
    chosen_values = np.take_along_axis(values[:, channels].T, order, axis=1)
    chosen_positions = positions[order, channels[:, None]]  # (C, k, 2)
    boxes = np.array(
        [[field.clamped_box(i, j, input_hw) for i, j in row] for row in chosen_positions], dtype=np.int64
    ).reshape(len(channels), k, 4)
    return Patches(channels, order, chosen_values, chosen_positions, boxes)


def patch_tiles(images_by_index, patches: Patches, field: ReceptiveField, fill=PADDING_RGB) -> np.ndarray:
    """uint8 (C, k, field h, field w, 3) crops: ``images_by_index[i]`` is the (resized) input image
    i; the part of a field outside the image is ``fill``."""
    c, k = patches.images.shape
    tiles = np.empty((c, k, field.size[0], field.size[1], 3), np.uint8)
    for row in range(c):
        for col in range(k):
            i, j = patches.positions[row, col]
            tiles[row, col] = crop_field(images_by_index[int(patches.images[row, col])], field, i, j, fill)
    return tiles


# ------------------------------------------------------------------------------- pictures


def captioned_row(tiles, captions, gap: int = 4, band: int = 14, background=255) -> np.ndarray:
    """uint8 picture: tiles (k, h, w, 3) side by side, each with its caption in a band below."""
    from PIL import Image, ImageDraw

    tiles = np.asarray(tiles, dtype=np.uint8)
    k, h, w = tiles.shape[:3]
    width = k * w + (k - 1) * gap
    canvas = Image.new("RGB", (width, h + band), (background,) * 3)
    draw = ImageDraw.Draw(canvas)
    for n, (tile, caption) in enumerate(zip(tiles, captions)):
        left = n * (w + gap)
        canvas.paste(Image.fromarray(tile), (left, 0))
        draw.text((left + 2, h + 1), str(caption), fill=(0, 0, 0))
    return np.asarray(canvas)


def stack_rows(rows, gap: int = 8, background=255) -> np.ndarray:
    """uint8 pictures (h_i, w_i, 3) one under another, left-aligned, padded to the widest."""
    width = max(r.shape[1] for r in rows)
    height = sum(r.shape[0] for r in rows) + gap * (len(rows) - 1)
    out = np.full((height, width, 3), background, np.uint8)
    top = 0
    for r in rows:
        out[top : top + r.shape[0], : r.shape[1]] = r
        top += r.shape[0] + gap
    return out


def side_by_side(left, right, gap: int = 12, background=255) -> np.ndarray:
    """uint8 pictures next to each other, top-aligned."""
    height = max(left.shape[0], right.shape[0])
    out = np.full((height, left.shape[1] + gap + right.shape[1], 3), background, np.uint8)
    out[: left.shape[0], : left.shape[1]] = left
    out[: right.shape[0], left.shape[1] + gap :] = right
    return out
