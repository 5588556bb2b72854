"""Class models: what the network thinks a class looks like (Simonyan et al. 2014; Yosinski et al.
2015, "Understanding Neural Networks Through Deep Visualization").

    result = class_model(model, [65, 18], steps=200)     # sea snake, magpie: one batch
    pictures = deprocess(result.images)                   # (2, 224, 224, 3) uint8 RGB
    result.class_probability                              # (2,) each image's own class

Gradient ascent on each image's class score (the pre-softmax logit by default, or the softmax
probability) from small seeded noise around the ImageNet mean, with Yosinski's regularisers
applied after each step as the projection r(x + step * gradient):

* ``l2_decay``: x <- (1 - l2_decay) * x (towards the mean image, 0 in caffe space);
* ``blur_every`` / ``blur_sigma``: a Gaussian blur of the image every k steps;
* ``clip_norm``: pixels whose colour vector's norm is below this percentile are set to 0;
* ``clip_contribution``: pixels whose contribution |sum_c x * dscore/dx| is below this percentile
  are set to 0 (costs one more gradient pass per step);
* ``jitter``: a random circular shift before each gradient, undone on the gradient.

The steps are ``optimise`` with ``steps.Ascent`` (the shared loop, gradient normalised by its RMS)
run in chunks between regularisations (NumPy on the host batch); each chunk's jitter is seeded
from (seed, step), so the same seed gives the same bytes. Without jitter the run is
deterministic. Arrays: NHWC float32, caffe space.

Lucid's recipe instead (``param="fft"`` and/or ``decorrelate``, as ``filters``): the image is an
``engine.viz.param.image`` (sigmoid to the valid range) from Lucid's normal(0, 0.01) start drawn
from ``default_rng(seed)``, and ``optimise`` runs ``Adam(lr)`` on minus the class score for all
``steps``, with ``robust`` Lucid's transforms but the pad (a classifier's dense layers fix its
input size); Yosinski's regularisers, ``noise`` and ``init`` do not apply.
"""

from dataclasses import dataclass

import numpy as np

from engine.errors import ConvscopeError
from engine.viz import param as image_param
from engine.viz.objectives import class_logit
from engine.viz.optimise import objective_gradient, optimise
from engine.viz.steps import Adam, Ascent
from engine.viz.transforms import Jitter, standard_transforms

SCORES = ("logit", "probability")
DEFAULT_STEP_SIZE = 2.0  # caffe units per step for the RMS-normalised gradient


@dataclass
class ClassModelResult:
    images: np.ndarray  # (N, H, W, C) float32 caffe space
    probabilities: np.ndarray  # (N, n_classes) softmax output for the final images
    losses: np.ndarray  # (steps, N) the class score measured before each step
    classes: np.ndarray  # (N,) the class each image was optimised for

    @property
    def class_probability(self) -> np.ndarray:
        """(N,) each image's probability of its own class."""
        return self.probabilities[np.arange(len(self.classes)), self.classes]

    def top(self, k: int = 3) -> np.ndarray:
        """(N, k) the k most probable classes of each image, most probable first."""
        return np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]


def gaussian_blur(x, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an NHWC batch over H and W (mirrored edges, 4 sigma support)."""
    x = np.asarray(x, dtype=np.float32)
    if sigma <= 0:
        return x.copy()
    radius = max(1, int(4.0 * sigma + 0.5))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = x
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, t in enumerate(taps):
            acc += t * np.take(padded, np.arange(i, i + n), axis=axis)
        out = acc
    return out


def _clip_below_percentile(x, value, percentile):
    """Zero the pixels whose per-pixel ``value`` (N, H, W) is below the per-image percentile."""
    threshold = np.percentile(value.reshape(len(value), -1), percentile, axis=1)
    x[value < threshold[:, None, None]] = 0.0
    return x


def _chunk_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def class_model(
    model,
    classes,
    size=None,
    steps: int = 200,
    step_size: float = DEFAULT_STEP_SIZE,
    score: str = "logit",
    l2_decay: float = 1e-4,
    blur_every: int = 4,
    blur_sigma: float = 0.5,
    jitter: int = 4,
    clip_norm: float = 0.0,
    clip_contribution: float = 0.0,
    noise: float = 10.0,
    init=None,
    seed: int = 0,
    callback=None,
    param: str = "pixel",
    decorrelate: bool = False,
    robust: bool = False,
    lr: float = 0.05,
) -> ClassModelResult:
    """Optimise one image per class in ``classes`` (an index or a list); see the module docstring.

    ``size``: an int or (height, width); default the classifier's fixed input size (224).
    ``init`` (N, H, W, C) caffe-space start images replace the seeded uniform noise in
    [-noise, noise]. ``callback(step, loss)`` is called after every step.
    """
    if not model.has_classifier:
        raise ConvscopeError(
            "class models need the VGG16 file with the classifier "
            "(vgg16_weights_tf_dim_ordering_tf_kernels.h5), not a 'notop' file"
        )
    n_classes = model.layers[-1].kernel.shape[1]
    classes = np.atleast_1d(np.asarray(classes)).reshape(-1)
    if not np.issubdtype(classes.dtype, np.integer) or classes.size == 0:
        raise ConvscopeError(f"classes must be integer indices, got {classes!r}")
    bad = classes[(classes < 0) | (classes >= n_classes)]
    if bad.size:
        raise ConvscopeError(
            f"class {int(bad[0])} is out of range: the classifier has {n_classes} classes (0 to {n_classes - 1})"
        )
    if score not in SCORES:
        raise ConvscopeError(f"unknown score {score!r}: use {' or '.join(SCORES)}")
    if steps < 0 or blur_every < 0 or jitter < 0 or blur_sigma < 0 or not 0 <= l2_decay < 1:
        raise ConvscopeError("steps, blur_every, blur_sigma and jitter must be >= 0 and l2_decay in [0, 1)")
    if not (0 <= clip_norm < 100 and 0 <= clip_contribution < 100):
        raise ConvscopeError("clip percentiles must be in [0, 100)")
    fixed = model.input_shape[:2]
    if size is None:
        size = fixed if fixed[0] else (224, 224)
    hw = (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(s) for s in size)
    if fixed[0] and hw != tuple(fixed):
        raise ConvscopeError(f"this classifier takes {fixed[0]}x{fixed[1]} px images, not {hw[0]}x{hw[1]}")
    channels = model.input_shape[2]
    shape = (len(classes), *hw, channels)
    if init is None:
        x = np.random.default_rng(seed).uniform(-noise, noise, size=shape).astype(np.float32)
    else:
        x = np.array(init, dtype=np.float32, copy=True)
        if x.shape != shape:
            raise ConvscopeError(f"start images of shape {x.shape}, expected {shape}")
    model.check_input(x)

    layer = "logits" if score == "logit" else model.layer_names[-1]
    objective = class_logit(classes, layer=layer)
    if param != "pixel" or decorrelate:
        if param not in ("pixel", "fft") or channels != 3:
            raise ConvscopeError(f"param {param!r}: use pixel or fft, on a network that reads 3 colour channels")
        p = image_param.image(shape[:3], backend=model.backend, fft=param == "fft", decorrelate=decorrelate)
        moves = standard_transforms(pad_pixels=0) if robust else []
        run = optimise(model, p.initial(seed), -objective, Adam(lr), steps, transforms=moves, seed=seed, param=p,
                       callback=None if callback is None else (lambda s, loss: callback(s, -loss)))
        return ClassModelResult(images=run.images, probabilities=model.predict(run.images), losses=-run.losses,
                                classes=classes.astype(np.int64))
    transforms = [Jitter(jitter)] if jitter else []
    blur = blur_every > 0 and blur_sigma > 0
    every_step = l2_decay > 0 or clip_norm > 0 or clip_contribution > 0
    chunk = 1 if every_step else (blur_every if blur else max(steps, 1))
    history, done = [], 0
    while done < steps:
        k = min(chunk, steps - done)
        offset = done
        ascent = optimise(
            model, x, objective, Ascent(step_size, "rms"), k, transforms=transforms, seed=_chunk_seed(seed, done),
            callback=None if callback is None else (lambda s, loss, o=offset: callback(o + s, loss)),
        )
        x = ascent.images
        history.append(ascent.losses)
        done += k
        if l2_decay > 0:
            x *= np.float32(1.0 - l2_decay)
        if blur and done % blur_every == 0:
            x = gaussian_blur(x, blur_sigma)
        if clip_norm > 0:
            x = _clip_below_percentile(x, np.linalg.norm(x, axis=3), clip_norm)
        if clip_contribution > 0:
            _, g = objective_gradient(model, x, objective)
            x = _clip_below_percentile(x, np.abs((x * g).sum(axis=3)), clip_contribution)
    losses = np.concatenate(history) if history else np.zeros((0, len(classes)), np.float32)
    probabilities = model.predict(x)
    return ClassModelResult(images=x, probabilities=probabilities, losses=losses, classes=classes.astype(np.int64))
