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

BLOCK = 1024  # queries per block of the brute force: a (BLOCK, N) float64 distance matrix


def _check(metric: str) -> None:
    if metric not in METRICS:
        raise ConvscopeError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")


def exact_knn(items, queries, k: int, metric: str = "cosine", exclude=None):
    """The ``k`` nearest items of each query by brute force, in float64."""
    _check(metric)
    x = np.asarray(items, dtype=np.float64).reshape(len(items), -1)
    q_all = np.asarray(queries, dtype=np.float64).reshape(len(queries), -1)
    k = min(int(k), len(x) - (0 if exclude is None else 1))
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1)
    else:
        squares = (x * x).sum(axis=1)
    indices = np.zeros((len(q_all), max(k, 0)), np.int64)
    dists = np.zeros((len(q_all), max(k, 0)), np.float64)
    for start in range(0, len(q_all), BLOCK):
        q = q_all[start : start + BLOCK]
        dots = q @ x.T
        if metric == "cosine":
            scale = np.linalg.norm(q, axis=1)[:, None] * norms[None, :]
            cos = np.divide(dots, scale, out=np.zeros_like(dots), where=scale > 0)
            d = 1.0 - np.clip(cos, -1.0, 1.0)
        else:
            d = np.sqrt(np.maximum((q * q).sum(axis=1)[:, None] + squares[None, :] - 2.0 * dots, 0.0))
        if exclude is not None:
            own = np.asarray(exclude[start : start + BLOCK], dtype=np.int64)
            mask = own >= 0
            d[np.flatnonzero(mask), own[mask]] = np.inf
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        indices[start : start + len(q)] = order
        dists[start : start + len(q)] = np.take_along_axis(d, order, axis=1)
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
