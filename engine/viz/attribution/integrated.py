"""Integrated gradients (Sundararajan et al., 2017): the gradient integrated along the straight
path from a baseline to the image, times (image - baseline).

    attribution = (x - b) * integral_0^1 d logit[class](b + a (x - b)) / dx da

The integral is a quadrature over ``steps`` points a_s with weights w_s (``RULES``):

* ``trapezoid`` (default): a_s = 0, 1/(n-1), ..., 1, weights 1/(n-1) halved at both ends (not
  Captum's ``riemann_trapezoid`` weights, which sum to (n-1)/n: see docs/design.md).
* ``left``, ``right``, ``middle``: Captum's Riemann sums (weights 1/n at a = k/n, (k+1)/n,
  (k+1/2)/n).
* ``gausslegendre``: Gauss-Legendre nodes and weights on [0, 1], Captum's ``attribute`` default.

The baseline defaults to a black picture as the network sees it: the caffe-preprocessed all-zero
RGB image, i.e. minus the ImageNet mean in every pixel ([-103.939, -116.779, -123.68] in BGR).

Completeness: the attributions of an image sum to logit(x) - logit(b) up to the quadrature error;
``Attribution.completeness_error`` reports the relative gap (both scores come from their own
forward pass). All path points of all images run as batches of ``batch`` rows.
"""

import numpy as np

from engine.errors import ConvscopeError
from engine.preprocess import preprocess_input
from engine.viz.attribution.base import Attribution, channel_map, check_count, gathered, gradient_batches, prepare

RULES = ("trapezoid", "left", "right", "middle", "gausslegendre")


def quadrature(steps: int, rule: str = "trapezoid"):
    """(alphas, weights) float64 arrays of ``steps`` points on [0, 1]; the weights sum to 1."""
    steps = check_count(steps, "steps")
    n = steps
    if rule == "trapezoid":
        if n < 2:
            raise ConvscopeError("the trapezoid rule needs at least 2 steps")
        alphas = np.linspace(0.0, 1.0, n)
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] /= 2
    elif rule in ("left", "right", "middle"):
        offset = {"left": 0.0, "right": 1.0, "middle": 0.5}[rule]
        alphas = (np.arange(n) + offset) / n
        weights = np.full(n, 1.0 / n)
    elif rule == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        alphas, weights = 0.5 * (nodes + 1.0), 0.5 * w
    else:
        raise ConvscopeError(f"unknown integration rule {rule!r}: use one of {', '.join(RULES)}")
    return alphas, weights


def black_baseline(shape) -> np.ndarray:
    """The caffe-preprocessed all-zero RGB image of ``shape`` = (H, W, 3), float32."""
    return preprocess_input(np.zeros(tuple(shape), dtype=np.float32))[0]


def path_points(image, baseline, alphas) -> np.ndarray:
    """b + a (x - b) for each alpha, computed in float64 and rounded once: (len(alphas), H, W, C)."""
    x, b = np.asarray(image, np.float64), np.asarray(baseline, np.float64)
    a = np.asarray(alphas, np.float64).reshape(-1, 1, 1, 1)
    return (b + a * (x - b)).astype(np.float32)


def integrated_gradients(
    model, x, classes=None, steps=50, baseline=None, rule="trapezoid", batch=16, progress=None
) -> Attribution:
    """Integrated gradients of each image's class logit (the class given, or the image's top
    class) from ``baseline`` (default: ``black_baseline``; an (H, W, C) array, one per image
    (N, H, W, C), or a number) to the image, over ``steps`` path points."""
    x, wanted, batch = prepare(model, x, classes, batch)
    alphas, weights = quadrature(steps, rule)
    n, steps = x.shape[0], len(alphas)
    if baseline is None:
        baseline = black_baseline(x.shape[1:])
    try:
        baselines = np.broadcast_to(np.asarray(baseline, dtype=np.float32), x.shape)
    except ValueError:
        raise ConvscopeError(
            f"baseline of shape {np.shape(baseline)} does not fit the input's {x.shape}"
        ) from None
    if not np.isfinite(baselines).all():
        raise ConvscopeError("the baseline contains NaN or infinite values")

    both = gathered(model, np.concatenate([x, baselines]), None, batch, wrt_input=False)
    logits, probabilities = both.logits, both.probabilities
    classes = np.argmax(logits[:n], axis=1).astype(np.int64) if wanted is None else wanted
    rows_n = np.arange(n)
    scores = logits[rows_n, classes].astype(np.float64)
    baseline_scores = logits[n + rows_n, classes].astype(np.float64)

    def make_rows(start, stop):
        r = np.arange(start, stop)
        return np.concatenate([
            path_points(x[i], baselines[i], alphas[r[r // steps == i] % steps]) for i in np.unique(r // steps)
        ])

    total = np.zeros(x.shape, dtype=np.float64)
    row_classes = np.repeat(classes, steps)
    for start, stop, part in gradient_batches(model, n * steps, make_rows, row_classes, batch, progress):
        r = np.arange(start, stop)
        weighted = part.gradients.astype(np.float64) * weights[r % steps].reshape(-1, 1, 1, 1)
        np.add.at(total, r // steps, weighted)
    attributions = ((x.astype(np.float64) - baselines) * total).astype(np.float32)
    return Attribution(
        "integrated", attributions, channel_map(attributions, signed=True), True, classes, scores,
        probabilities[:n], baseline_scores=baseline_scores,
    )
