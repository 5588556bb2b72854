"""Feature-statistics losses for inversion, texture synthesis and style transfer.

Each function returns an ``objectives.Objective`` whose value is a *loss* (to minimise, as the
``Adam`` and ``LBFGS`` step rules do; negate it for ``Ascent``), with its gradient stated:

* ``gram_matrix(a)``: G = F^T F / M for F = a reshaped (N, M, C), M = h*w positions. Dividing by
  M makes the Gram matrix of a texture independent of the picture's size, so a texture can be
  synthesised at another size than its source's.
* ``style(targets)``: Gatys et al. (2015): sum over layers of w_l * E_l with
  E_l = sum((G_l - A_l)^2) / (4 C_l^2), which with our G = F^T F / M is exactly the paper's
  1 / (4 N_l^2 M_l^2) * sum((F^T F - A_raw)^2). Gradient: dE/dF = F (D + D^T) / (2 M C^2) with
  D = G - A (= F D / (M C^2) for a symmetric target, as a real Gram matrix is).
  (The Keras ``neural_style_transfer`` example divides by 4 * 3^2 * (image rows * cols)^2, using
  the image's 3 channels and pixel count for every layer; that only reweights the layers.)
* ``content(targets)``: sum_l w_l * ||F_l - P_l||^2 / ||P_l||^2, normalised so that its scale
  does not depend on the layer (Gatys' 1/2 ||F - P||^2 up to that constant).
* ``feature_reconstruction(layer, target, samples)``: Mahendran & Vedaldi's
  ||phi(x) - phi0||^2 / ||phi0||^2, optionally for a subset of the batch only, so that one batch
  can invert several layers, one per sample (the other samples get zero loss and gradient).

Targets are per sample (leading N) or shared (no batch axis). Each is an ``objectives.host_term``:
NumPy on the host copy of its layer (NHWC); losses are float64, shape (N,).
"""

import numpy as np

from engine.viz.objectives import Objective, host_term


def _positions(a):
    """(N, M, C) view of an NHWC (or (N, C) dense) activation."""
    return a.reshape(a.shape[0], -1, a.shape[-1])


def gram_matrix(a) -> np.ndarray:
    """G = F^T F / M, (N, C, C) float64, for an NHWC activation batch."""
    f = _positions(np.asarray(a, dtype=np.float64))
    return np.einsum("nmc,nmd->ncd", f, f) / f.shape[1]


def _batch_target(target, n, name, sample_rank):
    """A target as (N, ...) float64: one per sample, or one shared (no batch axis, or batch 1)."""
    target = np.asarray(target, dtype=np.float64)
    if target.ndim == sample_rank:
        target = target[None]
    if target.shape[0] == 1 and n > 1:
        target = np.repeat(target, n, axis=0)
    if target.shape[0] != n:
        raise ValueError(f"{target.shape[0]} {name} targets for a batch of {n}")
    return target


def _sample_mask(samples, n):
    if samples is None:
        return np.ones(n, dtype=bool)
    mask = np.zeros(n, dtype=bool)
    mask[np.asarray(samples, dtype=np.int64)] = True
    return mask


def gram_loss(layer, target, weight=1.0) -> Objective:
    """w * sum((G - A)^2) / (4 C^2) at one layer; ``target`` is A, (C, C) or (N, C, C)."""

    def fn(a):
        n, c = a.shape[0], a.shape[-1]
        f = _positions(a.astype(np.float64))
        diff = np.einsum("nmc,nmd->ncd", f, f) / f.shape[1] - _batch_target(target, n, "gram", 2)
        loss = weight * np.square(diff).sum(axis=(1, 2)) / (4.0 * c * c)
        sym = (diff + diff.transpose(0, 2, 1)) / 2.0  # A is symmetric for a real Gram; be exact anyway
        grad = weight * np.einsum("nmc,ncd->nmd", f, sym) / (f.shape[1] * c * c)
        return loss, grad.reshape(a.shape).astype(a.dtype)

    return host_term(layer, fn, f"gram_loss({layer})")


def _total(terms):
    if not terms:
        raise ValueError("give at least one layer")
    return sum(terms[1:], terms[0])


def style(targets: dict, weights: dict | None = None) -> Objective:
    """Gatys' style loss: sum over layers of w_l * E_l; ``targets`` {layer: Gram (C,C)/(N,C,C)}.

    Default weights: 1 / (number of layers), as in the paper.
    """
    if weights is None:
        weights = {name: 1.0 / len(targets) for name in targets}
    return _total([gram_loss(name, g, weights[name]) for name, g in targets.items()])


def feature_reconstruction(layer, target, samples=None, weight=1.0) -> Objective:
    """w * ||phi(x) - target||^2 / ||target||^2 per sample (zero outside ``samples``)."""

    def fn(a):
        n = a.shape[0]
        t = _batch_target(target, n, "feature", a.ndim - 1)
        if t.shape[1:] != a.shape[1:]:
            raise ValueError(f"{layer}: target shape {t.shape[1:]} != activation shape {a.shape[1:]}")
        mask = _sample_mask(samples, n)
        diff = a.astype(np.float64) - t
        norm = np.maximum(np.square(t).reshape(n, -1).sum(axis=1), 1e-30)
        scale = np.where(mask, weight / norm, 0.0)
        loss = scale * np.square(diff).reshape(n, -1).sum(axis=1)
        grad = (2.0 * scale).reshape((n,) + (1,) * (a.ndim - 1)) * diff
        return loss, grad.astype(a.dtype)

    return host_term(layer, fn, f"feature_reconstruction({layer})")


def content(targets: dict, weights: dict | None = None) -> Objective:
    """Content loss: sum_l w_l * ||F_l - P_l||^2 / ||P_l||^2; ``targets`` {layer: features}."""
    weights = weights or {}
    return _total([feature_reconstruction(name, p, weight=weights.get(name, 1.0)) for name, p in targets.items()])


def layer_grams(model, x, layers) -> dict:
    """{layer: (N, C, C) Gram matrices} of an image batch, in one forward pass."""
    acts = model.forward(x, outputs=list(layers))
    return {name: gram_matrix(acts[name]) for name in layers}
