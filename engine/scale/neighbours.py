"""Nearest neighbours over many feature vectors: exact (blockwise brute force) or approximate
(pynndescent's NN-descent graph, Numba-compiled like the engine).

Shapes: ``items`` (N, D) and ``queries`` (Q, D) float; results are (indices (Q, k) int64,
distances (Q, k) float64), nearest first. Metrics as in ``engine.viz.dataset``: ``"cosine"``
(1 - cos; an all-zero vector is at distance 1 from everything) and ``"l2"``. Exact ties keep
the items' order. ``exclude`` (Q,) removes one item per query (the query itself), -1 for none.
"""

import numpy as np

from engine.errors import ConvscopeError
from engine.scale import require
from engine.viz.dataset import METRICS

QUERY_BLOCK = 256  # queries per block of the brute force
ITEM_BLOCK = 65536  # items per block: a (256, 65536) float64 distance block is 128 MiB


def _check(metric: str) -> None:
    if metric not in METRICS:
        raise ConvscopeError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")


def _block_distances(q, x, metric: str) -> np.ndarray:
    """float64 (Q, B) distances between query rows q and item rows x (both float64)."""
    dots = q @ x.T
    if metric == "cosine":
        scale = np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(x, axis=1)[None, :]
        cos = np.divide(dots, scale, out=np.zeros_like(dots), where=scale > 0)
        return 1.0 - np.clip(cos, -1.0, 1.0)
    return np.sqrt(np.maximum((q * q).sum(axis=1)[:, None] + (x * x).sum(axis=1)[None, :] - 2.0 * dots, 0.0))


def exact_knn(items, queries, k: int, metric: str = "cosine", exclude=None):
    """The ``k`` nearest items of each query by brute force in float64, blockwise over queries
    and items (memory stays bounded for millions of items); ties: lower item index first."""
    _check(metric)
    items = np.asarray(items).reshape(len(items), -1)
    q_all = np.asarray(queries, dtype=np.float64).reshape(len(queries), -1)
    k = max(0, min(int(k), len(items) - (0 if exclude is None else 1)))
    own_all = None if exclude is None else np.asarray(exclude, dtype=np.int64)
    indices = np.zeros((len(q_all), k), np.int64)
    dists = np.zeros((len(q_all), k), np.float64)
    for start in range(0, len(q_all), QUERY_BLOCK):
        q = q_all[start : start + QUERY_BLOCK]
        best_d = np.full((len(q), 0), np.inf)
        best_i = np.zeros((len(q), 0), np.int64)
        for first in range(0, len(items), ITEM_BLOCK):
            d = _block_distances(q, np.asarray(items[first : first + ITEM_BLOCK], dtype=np.float64), metric)
            if own_all is not None:
                own = own_all[start : start + len(q)] - first
                hit = (own >= 0) & (own < d.shape[1])
                d[np.flatnonzero(hit), own[hit]] = np.inf
            part = np.argsort(d, axis=1, kind="stable")[:, :k]
            cand_d = np.concatenate([best_d, np.take_along_axis(d, part, axis=1)], axis=1)
            cand_i = np.concatenate([best_i, part + first], axis=1)
            order = np.lexsort((cand_i, cand_d), axis=1)[:, :k]
            best_d, best_i = np.take_along_axis(cand_d, order, axis=1), np.take_along_axis(cand_i, order, axis=1)
        if metric == "l2" and k:  # the expansion above ranks; the reported distance is exact
            chosen = np.asarray(items[best_i.ravel()], dtype=np.float64).reshape(len(q), k, -1)
            best_d = np.sqrt(((chosen - q[:, None, :]) ** 2).sum(axis=2))
        indices[start : start + len(q)] = best_i
        dists[start : start + len(q)] = best_d
    return indices, dists


class ApproximateIndex:
    """pynndescent's NN-descent index over ``items`` (N, D); ``seed`` fixes its random trees."""

    def __init__(self, items, metric: str = "cosine", neighbours: int = 30, seed: int = 0, jobs: int = -1):
        _check(metric)
        pynndescent = require("pynndescent", "the approximate neighbour index")
        self.items = np.ascontiguousarray(items, dtype=np.float32).reshape(len(items), -1)
        self.metric = metric
        self.index = pynndescent.NNDescent(
            self.items, metric="cosine" if metric == "cosine" else "euclidean",
            n_neighbors=min(int(neighbours), len(self.items) - 1), random_state=int(seed), n_jobs=jobs,
        )

    def query(self, queries, k: int, exclude=None):
        """(indices, distances) of about the ``k`` nearest items per query (distances recomputed
        exactly in float64 for the returned items, so they compare with ``exact_knn``'s)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(len(queries), -1)
        extra = 0 if exclude is None else 1
        want = min(int(k) + extra, len(self.items))
        found, _ = self.index.query(queries, k=want)
        indices = np.zeros((len(queries), min(int(k), want - extra)), np.int64)
        dists = np.zeros(indices.shape, np.float64)
        for n, row in enumerate(found):
            if exclude is not None:
                row = row[row != exclude[n]]
            row = row[row >= 0]
            d = exact_knn(self.items[row], queries[n : n + 1], len(row), self.metric)
            order = row[d[0][0]][: indices.shape[1]]
            indices[n, : len(order)] = order
            dists[n, : len(order)] = d[1][0][: len(order)]
        return indices, dists


def recall_at_k(approximate, exact) -> float:
    """Mean over queries of |approximate ∩ exact| / k for index arrays (Q, k)."""
    approximate, exact = np.asarray(approximate), np.asarray(exact)
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approximate, exact))
    return hits / max(1, exact.size)
