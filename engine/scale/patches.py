"""Max-activating patches over a whole store: a per-chunk top-k on the workers, then a merge.

Each task reads one row chunk of the store's ``spatial`` features (n, h, w, c), takes every
image's largest value per channel and its first (row, column) in row-major order (as
``engine.viz.dataset.channel_maxima``), and keeps per chosen channel the ``k`` best (value
descending, then row ascending). The driver merges the candidates by the same order, so the
result equals ``engine.viz.dataset.top_patches`` over all the rows at once.

Shapes: ``channels`` (C,); the merged result is (values (C, k) float32, rows (C, k) int64 store
rows, positions (C, k, 2) int64).
"""

import numpy as np

from engine.errors import ConvscopeError
from engine.scale.store import FeatureStore


def _best(values, rows, positions, k: int):
    """Keep the ``k`` best of (C, m) candidates: value descending, then row ascending."""
    order = np.lexsort((rows, -values), axis=1)[:, :k] if values.size else np.zeros((values.shape[0], 0), np.int64)
    pick = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return pick(values), pick(rows), np.take_along_axis(positions, order[..., None], axis=1)


def chunk_top(store_path: str, rows, channels, k: int):
    """The best ``k`` of ``rows`` (ascending, one chunk's) per channel (the Dask task)."""
    from engine.viz.dataset import channel_maxima

    store = FeatureStore.open(store_path)
    rows = np.asarray(rows, dtype=np.int64)
    channels = np.asarray(channels, dtype=np.int64)
    lo, hi = int(rows.min()), int(rows.max()) + 1
    block = store.group("r")["spatial"][lo:hi][rows - lo]
    values, positions = channel_maxima(block)  # (n, C_all), (n, C_all, 2)
    v = values[:, channels].T  # (C, n)
    p = positions[:, channels].transpose(1, 0, 2)  # (C, n, 2)
    r = np.broadcast_to(rows, v.shape)
    return _best(v, r, p, k)


def store_top_patches(store: FeatureStore, rows, channels, k: int, client=None):
    """Per channel the ``k`` store rows (among ``rows``) with the largest maxima; see the module
    docstring. ``client``: a ``distributed.Client`` runs one task per chunk; else in process."""
    if store.spec.spatial_shape is None:
        raise ConvscopeError(f"{store.path}: the store has no per-position features (extract with --spatial)")
    n_channels = store.spec.spatial_shape[-1]
    channels = np.asarray(list(channels), dtype=np.int64)
    if channels.size and (channels.min() < 0 or channels.max() >= n_channels):
        raise ConvscopeError(
            f"channel {int(channels.max())} is out of range: {store.spec.layer} has {n_channels} channels (0 to {n_channels - 1})"
        )
    rows = np.asarray(rows, dtype=np.int64)
    groups = [g for g in np.split(rows, np.flatnonzero(np.diff(rows // store.spec.rows_per_chunk)) + 1) if g.size]
    if client is None:
        parts = [chunk_top(str(store.path), g, channels, k) for g in groups]
    else:
        futures = client.map(chunk_top, [str(store.path)] * len(groups), groups, channels=channels, k=k, pure=False)
        parts = client.gather(futures)
    if not parts:
        return (np.zeros((len(channels), 0), np.float32), np.zeros((len(channels), 0), np.int64),
                np.zeros((len(channels), 0, 2), np.int64))
    values = np.concatenate([p[0] for p in parts], axis=1)
    found = np.concatenate([p[1] for p in parts], axis=1)
    positions = np.concatenate([p[2] for p in parts], axis=1)
    return _best(values, found, positions, k)
