"""2-D embeddings of many feature vectors: PCA (numpy), t-SNE (openTSNE's FFT-accelerated
gradient, O(N)) and UMAP (umap-learn); the last two from the scale extra.

Shapes: features (N, D) in, float64 (N, 2) coordinates out. t-SNE and UMAP first project on
the first 50 principal components (as the CS231n notes and openTSNE advise); every method is
seeded, and the same seed gives the same coordinates on the same machine.
"""

import numpy as np

from engine.errors import ConvscopeError
from engine.scale import require
from engine.viz.dataset import tsne_perplexity

PCA_KEEP = 50


def principal_components(features, keep: int):
    """(centred features @ axes (N, keep), axes (D, keep)) from the eigenvectors of the D x D
    covariance (cheap for N >> D), largest variance first, each axis' sign making its
    largest-magnitude loading positive (as ``engine.viz.dataset.pca_2d``)."""
    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(len(x), -1)
    x = x - x.mean(axis=0)
    values, vectors = np.linalg.eigh(x.T @ x)
    order = np.argsort(values)[::-1][: min(int(keep), x.shape[1])]
    axes = vectors[:, order]
    signs = np.sign(axes[np.argmax(np.abs(axes), axis=0), np.arange(axes.shape[1])])
    axes = axes * np.where(signs == 0, 1.0, signs)
    return x @ axes, axes


def pca_2d(features) -> np.ndarray:
    """float64 (N, 2): the features on their first two principal axes (zeros where fewer)."""
    coords = np.zeros((len(features), 2))
    if len(features) < 2:
        return coords
    projected, _ = principal_components(features, 2)
    coords[:, : projected.shape[1]] = projected
    return coords


def _reduced(features) -> np.ndarray:
    if len(features) < 3:
        raise ConvscopeError(f"t-SNE and UMAP need at least 3 images, got {len(features)} (use --method pca)")
    return principal_components(features, PCA_KEEP)[0]


def tsne_2d(features, perplexity: float = 30.0, seed: int = 0, jobs: int = 1) -> np.ndarray:
    """openTSNE's t-SNE (PCA initialisation, perplexity capped by ``tsne_perplexity``)."""
    open_tsne = require("openTSNE", "t-SNE at scale")
    x = _reduced(features)
    tsne = open_tsne.TSNE(
        n_components=2, perplexity=tsne_perplexity(len(x), perplexity), initialization="pca",
        random_state=int(seed), n_jobs=int(jobs), verbose=False,
    )
    return np.asarray(tsne.fit(x), dtype=np.float64)


def umap_2d(features, neighbours: int = 15, min_dist: float = 0.1, seed: int = 0) -> np.ndarray:
    """umap-learn's UMAP (``neighbours`` capped below N; seeded, so single-threaded)."""
    umap = require("umap", "UMAP")
    x = _reduced(features)
    model = umap.UMAP(n_neighbors=max(2, min(int(neighbours), len(x) - 1)), min_dist=float(min_dist),
                      random_state=int(seed), n_components=2)
    return np.asarray(model.fit_transform(x), dtype=np.float64)
