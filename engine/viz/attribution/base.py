"""The one class-gradient path of the attribution family (CAMs, gradients, SmoothGrad, integrated
gradients, guided Grad-CAM, occlusion): target classes, a score per image, and its gradient.

Modelled on pytorch-grad-cam's ``base_cam.py``: a method only says which inputs to differentiate
(the image, noisy copies, points on a path) and how to reduce their gradients;
``class_gradients`` does the rest for a batch of rows: one forward pass, each row's target class
(given, or its top class), its score and the backward passes to the input and/or a layer.

A score is a target function ``score(trace, classes) -> (values (N,) float64, {layer name: d
values / d layer output})``: ``"logit"`` (the pre-softmax class score, one-hot at 'logits'),
``"probability"`` (one-hot at the network's softmax/sigmoid output) or any callable of that form.
``gradient_batches`` runs it over rows built lazily (``make_rows(start, stop)``) ``batch`` at a
time, so 50 noisy copies or 50 path points of an image never sit in memory at once, and the
results do not depend on the batch size.

Shapes: ``x`` is a caffe-preprocessed NHWC float32 batch (N, H, W, 3); attributions are (N, H, W, 3)
float32 in the input's own channel order (BGR for VGG16); maps are (N, H, W) float32: the maximum
of |attribution| over channels (Simonyan et al.) for gradient methods, the signed sum over channels
for integrated gradients (so a map still sums to the attribution total). No file or screen I/O.
"""

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

from engine.errors import ConvscopeError

INPUT, LOGITS = "input", "logits"
NORMALISED = ("softmax", "sigmoid")


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


# ------------------------------------------------------------------------------- checks


def n_classes(model) -> int:
    """The classifier's width; a clear error for a network without one."""
    if not model.has_classifier:
        raise ConvscopeError(
            "class explanations need a network with a classifier; this weights file has none "
            "(use vgg16_weights_tf_dim_ordering_tf_kernels.h5, not the 'notop' file)"
        )
    return int(model.layers[-1].kernel.shape[1])


def target_classes(classes, n_images: int, n_classes: int):
    """``classes`` as an (N,) int64 array (one int is used for every image), or None."""
    if classes is None:
        return None
    values = np.asarray(classes)
    if values.dtype == bool or not (
        np.issubdtype(values.dtype, np.integer)
        or (np.issubdtype(values.dtype, np.floating) and np.all(values == np.round(values)))
    ):
        raise ConvscopeError(f"classes {classes!r} are not whole numbers: give class indices")
    values = np.broadcast_to(values, (n_images,)) if values.ndim == 0 else values
    if values.shape != (n_images,):
        raise ConvscopeError(
            f"got {values.size} target classes for {n_images} images: give one class per image"
        )
    values = values.astype(np.int64)
    bad = values[(values < 0) | (values >= n_classes)]
    if bad.size:
        raise ConvscopeError(
            f"class {int(bad[0])} is out of range: the classifier has {n_classes} classes "
            f"(0 to {n_classes - 1})"
        )
    return values


def check_count(value, name: str) -> int:
    """A positive whole number (batch sizes, samples, steps), or a one-line error."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ConvscopeError(f"{name} {value!r} must be a whole number of at least 1")
    return int(value)


def prepare(model, x, classes, batch: int):
    """Check a request before any pass: (x as float32 NHWC, wanted classes or None, batch)."""
    width = n_classes(model)
    x = model.check_input(x)
    wanted = target_classes(classes, x.shape[0], width)
    return x, wanted, check_count(batch, "batch size")


# ------------------------------------------------------------------------------- scores


def _class_output(trace, name, classes):
    """(output ``name`` at each row's class, float64; {name: its one-hot gradient})."""
    values = trace.model.backend.to_host(trace.output(name)).astype(np.float32)
    rows = np.arange(len(classes))
    one_hot = np.zeros(values.shape, dtype=np.float32)
    one_hot[rows, classes] = 1.0
    return values[rows, classes].astype(np.float64), {name: one_hot}


def logit(trace, classes):
    """The pre-softmax score of each row's class, and its one-hot gradient at 'logits'."""
    return _class_output(trace, LOGITS, classes)


def probability(trace, classes):
    """The network's softmax/sigmoid output for each row's class, and its one-hot gradient there."""
    return _class_output(trace, trace.model.layers[-1].name, classes)


SCORES = {"logit": logit, "probability": probability}


def score_function(model, score) -> Callable:
    """A score name of ``SCORES`` or a target function, checked against the network."""
    if callable(score):
        return score
    if score not in SCORES:
        raise ConvscopeError(f"unknown score {score!r}: use one of {', '.join(SCORES)}")
    last = model.layers[-1]
    if score == "probability" and last.activation not in NORMALISED:
        raise ConvscopeError(
            f"score 'probability' needs a softmax or sigmoid output; {last.name} is {last.activation}"
        )
    return SCORES[score]


def probabilities_from(model, logits: np.ndarray, output: np.ndarray) -> np.ndarray:
    """The network's class probabilities: its own softmax/sigmoid output, else softmax(logits)."""
    if model.layers[-1].activation in NORMALISED:
        return np.asarray(output, dtype=np.float32)
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------- passes


@dataclass
class ClassGradients:
    """One forward pass of N rows and the backward passes of each row's class score."""

    classes: np.ndarray  # (N,) int64, the class each row differentiated
    scores: np.ndarray  # (N,) float64, each row's score for its class
    logits: np.ndarray  # (N, n_classes) float32
    probabilities: np.ndarray  # (N, n_classes) float32
    gradients: Optional[np.ndarray] = None  # (N, H, W, C) float32, d score / d input
    activations: Optional[np.ndarray] = None  # (N, h, w, C') at ``layer``, when asked for
    layer_gradients: Optional[np.ndarray] = None  # d score / d activations, standard ReLUs


def class_gradients(model, x, classes=None, score="logit", relu="standard", layer=None, wrt_input=True):
    """Forward the rows ``x``, then backpropagate each row's score of its class (``classes``, one
    per row, or None: each row's top class) to the input (``relu``: its ReLU backward, 'standard'
    or 'guided') when ``wrt_input``, and to ``layer``'s output (standard ReLUs) when given."""
    score = score_function(model, score)
    to_host = model.backend.to_host
    trace = model.trace(x)
    logits = to_host(trace.output(LOGITS)).astype(np.float32)
    probabilities = probabilities_from(model, logits, to_host(trace.output(model.layers[-1].name)))
    classes = np.argmax(logits, axis=1).astype(np.int64) if classes is None else classes
    scores, injected = score(trace, classes)
    result = ClassGradients(classes, scores, logits, probabilities)
    if layer is not None:
        result.activations = np.array(to_host(trace.output(layer)))
        result.layer_gradients = np.asarray(to_host(trace.backward(injected, wrt=(layer,))[layer]))
    if wrt_input:
        result.gradients = np.asarray(to_host(trace.backward(injected, relu=relu)[INPUT]))
    return result


def gradient_batches(
    model,
    n_rows: int,
    make_rows: Callable[[int, int], np.ndarray],
    classes: Optional[np.ndarray] = None,
    batch: int = 16,
    progress: Optional[Callable] = None,
    **options,
) -> Iterator[tuple[int, int, ClassGradients]]:
    """(start, stop, ``class_gradients`` of the class logit) of rows [start, stop), ``batch`` rows
    per pass. ``make_rows(start, stop)`` returns those rows as an NHWC array; ``classes`` holds
    one class per row (None: each row's top class); ``options`` go to ``class_gradients``
    (relu, layer, wrt_input). ``progress(done, total)`` is called after each chunk."""
    for start in range(0, n_rows, batch):
        stop = min(n_rows, start + batch)
        wanted = None if classes is None else classes[start:stop]
        yield start, stop, class_gradients(model, make_rows(start, stop), wanted, **options)
        if progress is not None:
            progress(stop, n_rows)


def gathered(model, x, classes=None, batch: int = 16, progress=None, **options) -> ClassGradients:
    """``gradient_batches`` over the images of ``x``, the chunks' results concatenated (N rows);
    with ``wrt_input=False`` and no layer, forward passes only: classes, scores, probabilities."""
    chunks = gradient_batches(model, len(x), lambda a, b: x[a:b], classes, batch, progress, **options)
    parts = [part for _, _, part in chunks]
    return ClassGradients(**{
        name: None if value is None else np.concatenate([getattr(p, name) for p in parts])
        for name, value in vars(parts[0]).items()
    })


def channel_map(attributions, signed: bool = False) -> np.ndarray:
    """(N, H, W, C) -> (N, H, W) float32: signed sum over channels, or max |.| over channels."""
    a = np.asarray(attributions, dtype=np.float32)
    if signed:
        return a.astype(np.float64).sum(axis=-1).astype(np.float32)
    return np.abs(a).max(axis=-1)
