"""The shared machinery of gradient attributions: target classes, batched gradient passes of class
scores with respect to the input, and the per-pixel map every method ends with.

Modelled, like ``engine.viz.cam``, on pytorch-grad-cam's ``base_cam.py``: a method only says
which inputs to differentiate (the image, noisy copies, points on a path) and how to reduce their
gradients; ``gradient_batches`` does the rest:

    rows (one input per gradient: N images x samples or steps), one target class per row
    -> chunks of ``batch`` rows: one forward pass and one backward pass per chunk, each row
       injecting a one-hot gradient at its own class's logit (the pre-softmax class score)
    -> yields each chunk's input gradients (and, on request, a layer's activations and their
       standard gradients from the same forward pass, for guided Grad-CAM)

Rows are built lazily by the method (``make_rows(start, stop)``), so 50 noisy copies or 50 path
points of an image never sit in memory at once, and the results do not depend on the batch size.

Shapes: ``x`` is a caffe-preprocessed NHWC float32 batch (N, H, W, 3); attributions are (N, H, W, 3)
float32 in the input's own channel order (BGR for VGG16); maps are (N, H, W) float32: the maximum
of |attribution| over channels (Simonyan et al.) for gradient methods, the signed sum over channels
for integrated gradients (so a map still sums to the attribution total). No file or screen I/O.
"""

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

from engine.errors import ConvscopeError
from engine.viz.cam import n_classes, target_classes

INPUT = "input"


@dataclass
class Attribution:
    """What an attribution method returns for a batch of N images."""

    method: str
    attributions: np.ndarray  # (N, H, W, C) float32, raw, in the input's channel order
    maps: np.ndarray  # (N, H, W) float32: max |.| over channels, or the signed channel sum
    signed: bool  # True when maps keep a sign (integrated gradients): draw them diverging
    classes: np.ndarray  # (N,) int64, the class explained for each image
    scores: np.ndarray  # (N,) float64, each image's logit for its class
    probabilities: np.ndarray  # (N, n_classes) float32, the network's output for each image
    baseline_scores: Optional[np.ndarray] = None  # integrated gradients: (N,) logit at the baseline
    heatmaps: Optional[np.ndarray] = None  # guided Grad-CAM: (N, h, w) Grad-CAM at the layer

    @property
    def totals(self) -> np.ndarray:
        """(N,) float64: the sum of each image's attributions."""
        return self.attributions.astype(np.float64).sum(axis=(1, 2, 3))

    @property
    def completeness_error(self) -> np.ndarray:
        """Integrated gradients: (N,) |sum of attributions - (score(x) - score(baseline))|
        relative to |score(x) - score(baseline)| (the completeness axiom; 0 is exact)."""
        if self.baseline_scores is None:
            raise ValueError(f"{self.method} has no baseline: completeness applies to integrated gradients")
        change = self.scores - self.baseline_scores
        return np.abs(self.totals - change) / np.maximum(np.abs(change), 1e-30)


def check_count(value, name: str) -> int:
    """A positive whole number (batch sizes, samples, steps), or a one-line error."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ConvscopeError(f"{name} {value!r} must be a whole number of at least 1")
    return int(value)


def channel_map(attributions, signed: bool = False) -> np.ndarray:
    """(N, H, W, C) -> (N, H, W) float32: signed sum over channels, or max |.| over channels."""
    a = np.asarray(attributions, dtype=np.float32)
    if signed:
        return a.astype(np.float64).sum(axis=-1).astype(np.float32)
    return np.abs(a).max(axis=-1)


def probabilities_from(model, logits: np.ndarray, output: np.ndarray) -> np.ndarray:
    """The network's class probabilities: its own softmax/sigmoid output, else softmax(logits)."""
    if model.layers[-1].activation in ("softmax", "sigmoid"):
        return np.asarray(output, dtype=np.float32)
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def prepare(model, x, classes, batch: int):
    """Check a request before any pass: (x as float32 NHWC, wanted classes or None, batch)."""
    width = n_classes(model)
    x = model.check_input(x)
    wanted = target_classes(classes, x.shape[0], width)
    return x, wanted, check_count(batch, "batch size")


def predict(model, x, batch: int):
    """Forward passes only, ``batch`` images at a time: (logits, probabilities), float32."""
    logits, probabilities = [], []
    last = model.layers[-1].name
    to_host = model.backend.to_host
    for start in range(0, x.shape[0], batch):
        trace = model.trace(x[start : start + batch])
        z = to_host(trace.output("logits")).astype(np.float32)
        logits.append(z)
        probabilities.append(probabilities_from(model, z, to_host(trace.output(last))))
    return np.concatenate(logits), np.concatenate(probabilities)


def targets(model, x, wanted, batch: int):
    """(classes, scores, probabilities) of the clean images: the classes asked for, or each
    image's top class; scores are the logits of those classes (float64)."""
    logits, probabilities = predict(model, x, batch)
    classes = np.argmax(logits, axis=1).astype(np.int64) if wanted is None else wanted
    scores = logits[np.arange(x.shape[0]), classes].astype(np.float64)
    return classes, scores, probabilities


@dataclass
class GradientBatch:
    """One chunk of rows [start, stop) after one forward and one (or two) backward passes."""

    start: int
    stop: int
    gradients: np.ndarray  # (rows, H, W, C) float32, d logit[class] / d input
    logits: np.ndarray  # (rows, n_classes) float32
    probabilities: np.ndarray  # (rows, n_classes) float32
    classes: np.ndarray  # (rows,) int64, the class each row differentiated
    activations: Optional[np.ndarray] = None  # (rows, h, w, C') at ``layer``, when asked for
    layer_gradients: Optional[np.ndarray] = None  # their standard-ReLU gradients


def gradient_batches(
    model,
    n_rows: int,
    make_rows: Callable[[int, int], np.ndarray],
    classes: Optional[np.ndarray] = None,
    relu: str = "standard",
    batch: int = 16,
    layer: Optional[str] = None,
    progress: Optional[Callable] = None,
) -> Iterator[GradientBatch]:
    """Differentiate each row's class logit with respect to the row, ``batch`` rows per pass.

    ``make_rows(start, stop)`` returns the inputs of rows [start, stop) as an NHWC array.
    ``classes`` holds one class per row (None: each row's own top class, found in the same
    forward pass). ``relu`` is the ReLU backward of the input gradient ('standard' or 'guided').
    With ``layer``, the same forward pass also gives that layer's output and the gradient of the
    class logit with respect to it through standard ReLUs (Grad-CAM's inputs).
    ``progress(done, total)`` is called after each chunk with the rows done so far.
    """
    to_host = model.backend.to_host
    last = model.layers[-1].name
    for start in range(0, n_rows, batch):
        stop = min(n_rows, start + batch)
        rows = make_rows(start, stop)
        trace = model.trace(rows)
        logits = to_host(trace.output("logits")).astype(np.float32)
        probabilities = probabilities_from(model, logits, to_host(trace.output(last)))
        wanted = np.argmax(logits, axis=1).astype(np.int64) if classes is None else classes[start:stop]
        one_hot = np.zeros(logits.shape, dtype=np.float32)
        one_hot[np.arange(stop - start), wanted] = 1.0
        gradients = np.asarray(to_host(trace.backward({"logits": one_hot}, relu=relu)[INPUT]))
        activations = layer_gradients = None
        if layer is not None:
            activations = np.array(to_host(trace.output(layer)))
            layer_gradients = np.asarray(to_host(trace.backward({"logits": one_hot}, wrt=(layer,))[layer]))
        yield GradientBatch(start, stop, gradients, logits, probabilities, wanted, activations, layer_gradients)
        if progress is not None:
            progress(stop, n_rows)
