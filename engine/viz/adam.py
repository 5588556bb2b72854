"""Adam descent over an image batch: the minimiser behind fooling, inversion and textures.

``ascent.gradient_ascent`` (normalised gradient steps) suits filters and dreams, whose objective
has no natural scale; inversion and Gram matching sum terms of very different scales, where
Adam's per-value step sizes (Kingma & Ba 2015) are far more robust, and an adversarial search
needs a per-sample stopping rule and the pixel range enforced at every step. Each step:

    loss, g = objective_gradient(model, x, objective, transforms)   # the shared gradient
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2                 # per value, per sample
    x -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    x = clip(x, low, high)                                          # when bounds are given

``stop(step, loss)`` may freeze samples before a step's update (they keep their image and stop
counting steps); ``lr`` is in input units (caffe space: pixel levels). Samples are independent:
a batch gives the same images as one sample at a time. Arrays are host NHWC float32; the loss
history has shape (steps run, N).
"""

from dataclasses import dataclass

import numpy as np

from engine.preprocess import CAFFE_MEAN_BGR
from engine.viz.ascent import objective_gradient

# The range of caffe-preprocessed VGG16 inputs (BGR, mean subtracted): pixels 0..255.
CAFFE_LOW = -np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
CAFFE_HIGH = np.float32(255.0) - np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
CAFFE_BOUNDS = (CAFFE_LOW, CAFFE_HIGH)


def caffe_quantize(x) -> np.ndarray:
    """Round a caffe-space image to the 8-bit pixel grid (what ``deprocess`` then saves)."""
    mean = np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
    return (np.rint(np.asarray(x, np.float32) + mean) - mean).astype(np.float32)


@dataclass
class DescentResult:
    images: np.ndarray  # (N, H, W, C) the optimised batch
    losses: np.ndarray  # (steps run, N) loss measured at each step, before its update
    steps: np.ndarray  # (N,) updates applied to each sample
    active: np.ndarray  # (N,) False for samples the stopping rule froze

    @property
    def final_loss(self) -> np.ndarray:
        return self.losses[-1] if len(self.losses) else np.full(len(self.images), np.nan, np.float32)


def adam_descent(
    model,
    x,
    objective,
    steps: int,
    lr: float = 1.0,
    betas=(0.9, 0.999),
    eps: float = 1e-8,
    bounds=None,
    stop=None,
    transforms=(),
    seed: int = 0,
    callback=None,
    quantize=None,
) -> DescentResult:
    """Minimise ``objective`` (a loss) over the batch ``x`` with Adam; see the module docstring.

    ``bounds``: (low, high) broadcastable to x (e.g. ``CAFFE_BOUNDS``), applied after each step.
    ``callback(step, loss)`` runs after every step (progress display).
    ``quantize`` (e.g. ``caffe_quantize``): the objective is evaluated at quantize(x) and its
    gradient applied to the float x (straight-through), and the result holds quantize(x): the
    stopping rule then judges exactly the image that will be saved.
    """
    x = np.array(x, dtype=np.float32, copy=True)
    if x.ndim == 3:
        x = x[None]
    if bounds is not None:
        low, high = (np.asarray(b, dtype=np.float32) for b in bounds)
        np.clip(x, low, high, out=x)
    b1, b2 = betas
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    t = np.zeros(len(x), dtype=np.int64)
    active = np.ones(len(x), dtype=bool)
    rng = np.random.default_rng(seed)
    history = []
    for step in range(steps):
        seen = x if quantize is None else quantize(x)
        loss, g = objective_gradient(model, seen, objective, transforms, rng)
        history.append(loss)
        if stop is not None:
            active &= ~np.asarray(stop(step, loss), dtype=bool)
        if not active.any():
            if callback is not None:
                callback(step, loss)
            break
        idx = np.flatnonzero(active)
        t[idx] += 1
        ga = g[idx]
        m[idx] = b1 * m[idx] + (1 - b1) * ga
        v[idx] = b2 * v[idx] + (1 - b2) * ga * ga
        shape = (-1,) + (1,) * (x.ndim - 1)
        m_hat = m[idx] / (1 - b1 ** t[idx]).reshape(shape)
        v_hat = v[idx] / (1 - b2 ** t[idx]).reshape(shape)
        x[idx] -= (np.float32(lr) * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)
        if bounds is not None:
            x[idx] = np.clip(x[idx], low, high)
        if callback is not None:
            callback(step, loss)
    losses = np.array(history, dtype=np.float32).reshape(len(history), len(x))
    images = x if quantize is None else quantize(x)
    return DescentResult(images=images, losses=losses, steps=t, active=active)
