"""Neighbours and embeddings at scale against the single-process engine: the blockwise exact
search equals ``engine.viz.dataset.nearest`` query by query, pynndescent's index finds most of
the true neighbours on clustered data, the covariance PCA equals the SVD one, openTSNE and UMAP
give finite, seeded (repeatable) coordinates that keep clusters apart."""

import os

import numpy as np
import pytest

from engine.errors import ConvscopeError
from engine.viz import dataset

pytest.importorskip("pynndescent")

from engine.scale import embed, neighbours  # noqa: E402


def clustered(n=600, d=24, clusters=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * 4
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


def test_exact_equals_nearest_query_by_query(monkeypatch):
    monkeypatch.setattr(neighbours, "ITEM_BLOCK", 100)  # blocks of items and queries, merged
    monkeypatch.setattr(neighbours, "QUERY_BLOCK", 7)
    items, _ = clustered(300, 10)
    items[5] = 0.0  # a zero vector
    items[9] = items[3]  # ties, in one block and across blocks
    items[250] = items[3]
    queries = items[:20]
    for metric in ("cosine", "l2"):
        idx, dist = neighbours.exact_knn(items, queries, 7, metric, exclude=np.arange(20))
        for q in range(20):
            want_idx, want_dist = dataset.nearest(queries[q], items, 7, metric, exclude=[q])
            assert list(idx[q]) == list(want_idx)
            np.testing.assert_allclose(dist[q], want_dist, rtol=1e-9, atol=1e-9)
    with pytest.raises(ConvscopeError, match="unknown metric"):
        neighbours.exact_knn(items, queries, 3, "dot")


SLOW = os.environ.get("CONVSCOPE_SLOW_TESTS") == "1"


@pytest.mark.skipif(not SLOW, reason="pynndescent compiles for 40-80 s in every process: set CONVSCOPE_SLOW_TESTS=1")
def test_approximate_recall_and_exact_distances():
    # one metric: pynndescent compiles its index per metric in every process;
    # benchmarks/scale.py measures both on 100k vectors (recall@10 0.98)
    items, _ = clustered(2000, 32)
    queries = items[:100]
    for metric in ("cosine",):
        exact_idx, _ = neighbours.exact_knn(items, queries, 10, metric, exclude=np.arange(100))
        index = neighbours.ApproximateIndex(items, metric, seed=1, jobs=1)
        approx_idx, approx_dist = index.query(queries, 10, exclude=np.arange(100))
        assert neighbours.recall_at_k(approx_idx, exact_idx) >= 0.9
        assert not (approx_idx == np.arange(100)[:, None]).any()
        for q in range(0, 100, 17):
            want = dataset.distances(queries[q], items, metric)[approx_idx[q]]
            np.testing.assert_allclose(approx_dist[q], want, rtol=1e-5, atol=1e-6)
            assert (np.diff(approx_dist[q]) >= 0).all()


def test_pca_equals_the_svd_one():
    x = np.random.default_rng(1).normal(size=(50, 30)) * np.linspace(3, 0.1, 30)
    np.testing.assert_allclose(embed.pca_2d(x), dataset.pca_2d(x), atol=1e-9)
    assert embed.pca_2d(x[:1]).tolist() == [[0.0, 0.0]]


def separation(coords, labels):
    """Mean distance between cluster centres over the mean spread inside clusters."""
    centres = np.stack([coords[labels == c].mean(axis=0) for c in np.unique(labels)])
    inside = np.mean([np.linalg.norm(coords[labels == c] - centres[i], axis=1).mean() for i, c in enumerate(np.unique(labels))])
    between = np.mean([np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1 :]])
    return between / inside


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_tsne_and_umap_are_seeded_and_keep_clusters(method):
    pytest.importorskip("openTSNE" if method == "tsne" else "umap")
    if method == "umap" and not SLOW:
        pytest.skip("UMAP compiles for about 30 s in every process: set CONVSCOPE_SLOW_TESTS=1")
    x, labels = clustered(300, 20, clusters=4)
    run = (lambda s: embed.tsne_2d(x, 30, seed=s)) if method == "tsne" else (lambda s: embed.umap_2d(x, seed=s))
    a, b = run(3), run(3)
    assert a.shape == (300, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert separation(a, labels) > 3.0
    with pytest.raises(ConvscopeError, match="at least 3"):
        embed.tsne_2d(x[:2])
