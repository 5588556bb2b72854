"""The data half of an activation atlas (Carter et al., 2019; Lucid's ``activation_atlas``):
spatial activations of a layer sampled over a store's images, laid out in 2-D, and averaged
per cell of a grid. Each cell's mean activation is what the atlas then renders by feature
visualisation with a direction objective (``engine.scale.atlas_render``).

Shapes: a store with ``spatial`` features (N, h, w, c). ``sample_activations`` returns vectors
(M, c) float32 and where they come from (M, 3) int64 (store row, i, j); ``grid_positions``
gives each point's cell (M, 2) int64 (grid row, grid column); ``grid_cells`` returns the
occupied cells (K, 2) int64 (grid row, grid column), their mean vectors (K, c) float64 and
their counts (K,) int64, cells in row-major order.
"""

import numpy as np

from engine.errors import ConvscopeError
from engine.scale.store import FeatureStore


def sample_chunk(store_path: str, rows, per_image: int, seed: int):
    """``per_image`` distinct positions of each of ``rows`` (ascending, within one chunk), drawn
    with a generator seeded by (seed, row): the same sample whatever the chunking or worker."""
    store = FeatureStore.open(store_path)
    rows = np.asarray(rows, dtype=np.int64)
    block = store.group("r")["spatial"][int(rows.min()) : int(rows.max()) + 1][rows - rows.min()]
    n, h, w, c = block.shape
    take = min(int(per_image), h * w)
    vectors, where = [], []
    for k, row in enumerate(rows):
        flat = np.sort(np.random.default_rng([int(seed), int(row)]).choice(h * w, size=take, replace=False))
        vectors.append(block[k].reshape(h * w, c)[flat])
        where.append(np.stack([np.full(take, row), flat // w, flat % w], axis=1))
    return np.concatenate(vectors), np.concatenate(where).astype(np.int64)


def sample_activations(store: FeatureStore, rows, per_image: int = 4, seed: int = 0, client=None):
    """(vectors (M, c), where (M, 3)) over ``rows`` (ascending), one task per chunk on
    ``client`` (a ``distributed.Client``) or in this process; in row order either way."""
    if store.spec.spatial_shape is None:
        raise ConvscopeError(f"{store.path}: the store has no per-position features (extract with --spatial)")
    if per_image < 1:
        raise ConvscopeError(f"{per_image} samples per image: give at least 1")
    rows = np.asarray(rows, dtype=np.int64)
    groups = [g for g in np.split(rows, np.flatnonzero(np.diff(rows // store.spec.rows_per_chunk)) + 1) if g.size]
    if client is None:
        parts = [sample_chunk(str(store.path), g, per_image, seed) for g in groups]
    else:
        parts = client.gather(client.map(sample_chunk, [str(store.path)] * len(groups), groups,
                                         per_image=per_image, seed=seed, pure=False))
    if not parts:
        return np.zeros((0, store.spec.spatial_shape[-1]), np.float32), np.zeros((0, 3), np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def grid_positions(coords, grid: int) -> np.ndarray:
    """(M, 2) int64 (grid row, grid column) of each point of ``coords`` (M, 2) (x right, y down)
    on a ``grid`` x ``grid`` grid over their bounding box; the far edge belongs to the last cell."""
    coords = np.asarray(coords, dtype=np.float64)
    if grid < 1:
        raise ConvscopeError(f"grid {grid}: give at least 1 cell per side")
    low, high = coords.min(axis=0), coords.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    cell = np.clip(np.floor((coords - low) / span * grid), 0, grid - 1).astype(np.int64)  # (x, y)
    return cell[:, ::-1].copy()


def grid_cells(coords, vectors, grid: int, min_count: int = 1):
    """Average ``vectors`` (M, c) by the cell of a ``grid`` x ``grid`` grid over the bounding box
    of ``coords`` (M, 2) (x right, y down; the far edge belongs to the last cell); cells with
    fewer than ``min_count`` points are dropped."""
    vectors = np.asarray(vectors, dtype=np.float64)
    cell = grid_positions(coords, grid)  # (M, 2) (row, column)
    flat = cell[:, 0] * grid + cell[:, 1]
    counts = np.bincount(flat, minlength=grid * grid)
    sums = np.zeros((grid * grid, vectors.shape[1]))
    np.add.at(sums, flat, vectors)
    keep = np.flatnonzero(counts >= max(1, int(min_count)))
    return np.stack([keep // grid, keep % grid], axis=1), sums[keep] / counts[keep, None], counts[keep]
