"""Fooling images: change a photo as little as possible until the network says a chosen class.

    result = fool(model, preprocess_input(photo), targets=105, confidence=0.99)   # koala
    result = fgsm(model, preprocess_input(photo), targets=105, epsilon=2.0)       # one step

Iterative (``fool``): minimise, with Adam (``optimise`` with ``steps.Adam``), the loss

    -log p_target(x) + (l2 / 2) * ||x - x0||^2

in caffe-preprocessed space, clipping x to the valid pixel range (0..255 per channel) after every
step and judging the image rounded to 8-bit pixels (straight-through: the gradient at the rounded
image moves the float one; ``quantize=False`` judges the float image), and stop each sample
as soon as its measured p_target >= ``confidence`` (checked before the
step's update, so a stopped sample's image is exactly the one measured). The cross-entropy
gradient is d(-log p_t)/d logits = softmax - onehot(t), injected at the logits (no saturation:
it does not vanish as p -> 0 the way the probability's own gradient does). The L2 term keeps the
change small; the early stop does most of that work.

One step (``fgsm``, targeted fast gradient sign; Goodfellow et al. 2015, Kurakin et al. 2016):
x' = clip(x - epsilon * sign(d(-log p_t)/dx)); ``epsilon`` is in pixel levels (0..255), which are
also caffe units (preprocessing only subtracts a mean and reorders channels).

Batches are real: one target per image (or one for all); several targets for one photo are a
batch of copies. Arrays are host NHWC float32; probabilities (N, classes); sizes in pixel levels.
"""

from dataclasses import dataclass

import numpy as np

from engine.errors import ConvscopeError
from engine.viz import objectives
from engine.viz.objectives import Objective, host_term, per_sample
from engine.viz.optimise import Stop, objective_gradient, optimise
from engine.viz.steps import CAFFE_BOUNDS, Adam, caffe_quantize

LOGITS = "logits"


@dataclass
class FoolResult:
    images: np.ndarray  # (N, H, W, C) float32 caffe space, the changed images
    targets: np.ndarray  # (N,) target class per image
    original_probabilities: np.ndarray  # (N, classes) softmax of the inputs
    probabilities: np.ndarray  # (N, classes) softmax of the changed images
    steps: np.ndarray  # (N,) updates applied (1 for FGSM)
    reached: np.ndarray  # (N,) p_target >= confidence (FGSM: the target is the top class)
    losses: np.ndarray  # (steps run, N) loss before each update (FGSM: one row)
    l2: np.ndarray  # (N,) ||x' - x|| over all values, pixel levels
    linf: np.ndarray  # (N,) max |x' - x|, pixel levels


class TargetCrossEntropy(Objective):
    """-log softmax(logits)[target] per sample (NumPy on the host logits, (N, classes)); keeps
    the softmax of its last evaluation in ``probabilities``, so that a loop can stop on it
    without another pass."""

    def __init__(self, targets):
        self.targets = targets
        self.probabilities = None
        term = host_term(LOGITS, self._loss, f"target_cross_entropy({targets})")
        super().__init__(term.score, term.layers, term.description)

    def _loss(self, logits):
        z = logits.astype(np.float64)
        n = z.shape[0]
        t = per_sample(self.targets, n)
        shifted = z - z.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        p = np.exp(log_p)
        self.probabilities = p
        rows = np.arange(n)
        grad = p.copy()
        grad[rows, t] -= 1.0
        return -log_p[rows, t], grad.astype(logits.dtype)


def _check_classifier(model, targets, n):
    if not model.has_classifier or model.layers[-1].activation != "softmax":
        raise ConvscopeError(
            "fooling needs a network with a softmax classifier (this weights file has none: "
            "use vgg16_weights_tf_dim_ordering_tf_kernels.h5)"
        )
    n_classes = model.layers[-1].kernel.shape[1]
    t = per_sample(targets, n)
    bad = t[(t < 0) | (t >= n_classes)]
    if bad.size:
        raise ConvscopeError(f"target class {int(bad[0])} is out of range: 0 to {n_classes - 1}")
    return t


def change_size(x0, x1):
    """(L2, L-inf) of x1 - x0 per sample, in pixel levels (caffe units)."""
    d = (np.asarray(x1, np.float64) - np.asarray(x0, np.float64)).reshape(len(x0), -1)
    return np.sqrt(np.square(d).sum(axis=1)), np.abs(d).max(axis=1)


def _batch(x):
    x = np.asarray(x, dtype=np.float32)
    return x[None] if x.ndim == 3 else x


def fool(model, x, targets, confidence=0.99, steps=100, lr=0.5, l2=1e-4, quantize=True, callback=None) -> FoolResult:
    """Iterative targeted fooling (see the module docstring); ``lr`` in pixel levels per step.

    ``quantize``: judge (and return) the image rounded to 8-bit pixels, so that the saved file
    keeps p >= confidence (sub-level changes vanish when a float image is rounded).
    """
    x0 = _batch(x)
    t = _check_classifier(model, targets, len(x0))
    if not 0.0 < confidence < 1.0:
        raise ConvscopeError(f"confidence {confidence}: give a probability between 0 and 1")
    ce = TargetCrossEntropy(t)
    objective = ce + (l2 / 2.0) * objectives.l2(center=x0) if l2 > 0 else ce
    rows = np.arange(len(x0))
    first = {}

    def reached(step, loss):
        p = ce.probabilities
        if step == 0:
            first["p"] = p.copy()
        return p[rows, t] >= confidence

    rule = Adam(lr=lr, bounds=CAFFE_BOUNDS, quantize=caffe_quantize if quantize else None)
    result = optimise(model, x0, objective, rule, steps, stops=[Stop(reached)], callback=callback)
    original = first["p"] if "p" in first else model.predict(x0)
    final = model.predict(result.images)
    size_l2, size_linf = change_size(x0, result.images)
    return FoolResult(
        images=result.images, targets=t, original_probabilities=original.astype(np.float32),
        probabilities=final, steps=result.steps, reached=final[rows, t] >= confidence,
        losses=result.losses, l2=size_l2, linf=size_linf,
    )


def cross_entropy_gradient(model, x, targets):
    """(loss (N,), softmax (N, classes), d(-log p_target)/dx (N, H, W, C)) in one pass."""
    x0 = _batch(x)
    ce = TargetCrossEntropy(_check_classifier(model, targets, len(x0)))
    loss, g = objective_gradient(model, x0, ce)
    return loss, ce.probabilities.astype(np.float32), g


def fgsm(model, x, targets, epsilon=2.0, quantize=True) -> FoolResult:
    """Targeted FGSM: x - epsilon * sign(d(-log p_target)/dx), clipped to the pixel range
    (and rounded to 8-bit pixels when ``quantize``; a no-op for whole epsilons on 8-bit photos)."""
    x0 = _batch(x)
    t = _check_classifier(model, targets, len(x0))
    if epsilon <= 0:
        raise ConvscopeError(f"epsilon {epsilon}: give a positive step in pixel levels (0..255)")
    loss, original, g = cross_entropy_gradient(model, x0, t)
    low, high = CAFFE_BOUNDS
    images = np.clip(x0 - np.float32(epsilon) * np.sign(g), low, high).astype(np.float32)
    images = caffe_quantize(images) if quantize else images
    final = model.predict(images)
    size_l2, size_linf = change_size(x0, images)
    return FoolResult(
        images=images, targets=t, original_probabilities=original, probabilities=final,
        steps=np.ones(len(x0), dtype=np.int64), reached=final.argmax(axis=1) == t,
        losses=loss[None], l2=size_l2, linf=size_linf,
    )
