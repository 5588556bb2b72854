"""What makes each filter of a conv layer fire: gradient ascent on the input, one image per filter.

The algorithm is the Keras example ``conv_filter_visualization.py`` (VGG16, 2016-2018 versions):

* start from a gray image with noise, ``(random(0..1) - 0.5) * 20 + 128``, (size, size, 3);
* maximise the mean activation of one filter (``objectives.channel``) by ``steps`` (20) steps
  of size ``step_size`` (1.0) along the gradient divided by its RMS, ``g / (sqrt(mean(g^2)) +
  1e-5)`` (the original constant; later versions use ``K.epsilon()`` = 1e-7);
* a filter whose loss is <= 0 at some step stops there (that step's update still applies), and
  its loss is that non-positive number, so it is dropped (``optimise.nonpositive``);
* the loss of a filter is the last one measured, before the last update, as the example prints;
* when scanning, keep the filters with a positive loss, best first (the example stitches the
  best 64 of the first 200 on an 8 x 8 grid, see ``pictures.stitch_grid``);
* show each image with the example's ``deprocess_image`` (``pictures.standardize_to_uint8``).

As in the example, the image goes into the network as it is: values around 128 in the
network's own channel order, with no caffe preprocessing (no mean subtraction, no RGB -> BGR).
The raw arrays returned are those network inputs; the uint8 pictures are standardised per image
(so a global offset does not matter) and show the channels in the network's order.

Differences, all deliberate: every filter of a batch is optimised in one pass through
``optimise`` (samples are independent, so the result equals one-at-a-time runs);
each filter's start image comes from its own seeded generator, ``default_rng([seed, filter])``,
so a filter's picture does not depend on the batch size or on which other filters are scanned.

Options for better pictures (all off by default, which gives the example):
* ``transforms``: random jitter / scale / rotation per step (``engine.viz.transforms``), as Lucid;
* ``tv``, ``l2``: total-variation and L2 (around gray 128) penalties, each divided by the number
  of input values so the weight means the same at every size (``objectives``);
* ``upscale_steps``: progressive upscaling as the later Keras example: start at
  ``size / upscale_factor ** upscale_steps`` px, run ``steps`` steps, upscale by ``upscale_factor``
  (bicubic), and repeat until ``size`` px. The later example upscales through a uint8 picture of
  std 0.25; here the float image is clipped to its mean +- 2 std (what that round trip clips)
  and resampled in float, without the 8-bit quantisation. Unlike that example, the last stage
  also runs its ascent at full size. A filter that stops in one stage stays dropped.

Lucid's options (``param``, ``decorrelate``, ``robust``, ``objective``, ``diversity``): with
``param="fft"`` or ``decorrelate`` the image is an ``engine.viz.param.image`` (Fourier 1/f
spectrum and/or decorrelated colour, sigmoid to the valid range; caffe-space network inputs, as
Lucid's pictures are RGB in [0, 1]) started from Lucid's normal(0, 0.01) parameters, one
generator per picture, and ``optimise`` runs Lucid's ``Adam(lr)`` (0.05) on minus the objective
for all ``steps`` (no stopping rule); the pictures are the images themselves (``deprocess``) and a
picture's loss is its objective's target (channel, neuron or direction) measured at the final
image. ``robust`` appends Lucid's ``transforms.standard_transforms`` (its pad is gray in the
image's units). ``objective``: ``"channel"`` (the example's), ``"neuron"`` (the filter's centre
position) or ``"direction"`` (``direction``, a vector of the layer's channels, one target for
every picture: the "filters" are then picture numbers 0..samples-1). ``samples`` pictures per
target, from the generators ``[seed, target, k]`` (k > 0; k = 0 is ``[seed, target]``);
``diversity`` w subtracts w * ``objectives.diversity(layer)``, which compares the pictures of one
batch, so each target's samples are then one batch.

On the CUDA backend each batch of filters is optimised on the device: ``optimise`` copies the
start images there once, and the objective (``channel``, with the ``tv`` and ``l2`` penalties),
the jitter, the normalisation and the masked step all run as kernels; per step only the batch's
losses come back, and the images at the end of the stage. Scale and rotation transforms have no
device kernel and run on the host (with a warning), and progressive upscaling resamples on the
host between stages (PIL bicubic): one copy each way per stage.

Shapes: images NHWC; ``FilterResult.images`` uint8 (k, size, size, c), ``raw`` float32 of the
same shape, ``filters`` int64 (k,), ``losses`` float32 (k,).
"""

from dataclasses import dataclass

import numpy as np

from engine.errors import ConvscopeError
from engine.model import layer_output_shape
from engine.preprocess import CAFFE_MEAN_BGR, deprocess, resize
from engine.viz import objectives, param as image_param
from engine.viz.optimise import nonpositive, optimise
from engine.viz.pictures import standardize_to_uint8
from engine.viz.steps import Adam, Ascent
from engine.viz.transforms import standard_transforms

GRAY = 128.0
NOISE = 20.0
RMS_EPS = 1e-5
LUCID_LR = 0.05  # Lucid's Adam learning rate for its parameterised images
CAFFE_GRAY = 127.5 - np.asarray(CAFFE_MEAN_BGR)  # Lucid's pad value 0.5, in caffe units
OBJECTIVES = ("channel", "neuron", "direction")


@dataclass
class FilterResult:
    images: np.ndarray  # uint8 (k, size, size, c): the pictures, best first when scanning
    raw: np.ndarray  # float32 (k, size, size, c): the optimised network inputs
    filters: np.ndarray  # int64 (k,): the filter index of each picture
    losses: np.ndarray  # float32 (k,): each filter's final loss (mean activation)
    scanned_filters: np.ndarray  # int64 (n,): every filter optimised, in index order
    scanned_losses: np.ndarray  # float32 (n,): their final losses (<= 0: dropped)


def _generator(seed, target, sample=0):
    return np.random.default_rng([int(seed), int(target)] + ([int(sample)] if sample else []))


def start_images(filters, size, seed=0, channels=3, samples=None) -> np.ndarray:
    """The example's noisy gray start image, one per filter from ``default_rng([seed, filter])``
    (``[seed, filter, k]`` for a filter's sample k > 0, ``samples`` (n,) giving each one's k).

    Returns float64 (n, size, size, channels), as the example's ``np.random.random`` does.
    """
    samples = np.zeros(len(filters), np.int64) if samples is None else samples
    return np.stack(
        [(_generator(seed, f, k).random((size, size, channels)) - 0.5) * NOISE + GRAY for f, k in zip(filters, samples)]
    )


def stage_sizes(size: int, upscale_steps: int = 0, upscale_factor: float = 1.2) -> list[int]:
    """Image sizes of the progressive-upscaling stages, smallest first, ending at ``size``."""
    return [int(size / upscale_factor**k) for k in range(int(upscale_steps), -1, -1)]


def parse_filter_spec(text: str) -> list[int]:
    """'0-63', '3,7,9' or '0-3,10' -> a list of indices (ranges inclusive), order kept."""
    indices = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ConvscopeError(f"filters {text!r}: give indices and ranges such as 0-63 or 1,5,9")
        stop = int(high) if dash else int(low)
        if stop < int(low):
            raise ConvscopeError(f"filters {text!r}: range {part} runs backwards")
        indices.extend(range(int(low), stop + 1))
    if not indices:
        raise ConvscopeError(f"filters {text!r}: no filter given")
    return indices


def _layer_shape(model, layer, size):
    """Output shape (h, w, c) of ``layer`` for a size x size input, or None if some layer up to
    it would be empty (only the layers the ascent runs count, not the whole network)."""
    shape = (size, size, model.input_shape[2])
    for spec in model.layers[: model.layer_index(layer) + 1]:
        shape = layer_output_shape(spec, shape)
        if len(shape) == 3 and min(shape[:2]) < 1:
            return None
    return shape


def _channel_count(model, layer, sizes):
    shape = _layer_shape(model, layer, max(sizes))
    if shape is not None and len(shape) != 3:
        raise ConvscopeError(
            f"layer {layer} has no filters to visualise (its output is a vector of {shape[0]}): "
            "choose a convolution or pooling layer"
        )
    smallest = min(sizes)
    if shape is None or _layer_shape(model, layer, smallest) is None:
        stage = " (the first upscaling stage)" if len(sizes) > 1 else ""
        raise ConvscopeError(
            f"an image of {smallest} px{stage} is too small to reach layer {layer}: "
            "use a larger size or fewer upscale steps"
        )
    return shape[2]


def _target(kind, layer, filters, direction):
    """The objective a picture is judged by (its loss): see the module docstring."""
    if kind == "direction":
        return objectives.direction(layer, direction)
    return objectives.neuron(layer, filters) if kind == "neuron" else objectives.channel(layer, filters)


def _objective(target, n_values, tv, l2, diversity=0.0, layer=None, gray=GRAY):
    objective = target
    if diversity:
        objective = objective - float(diversity) * objectives.diversity(layer)
    if tv:
        objective = objective - (float(tv) / n_values) * objectives.total_variation()
    if l2:
        objective = objective - (float(l2) / n_values) * objectives.l2(center=gray)
    return objective


def _upscale(x, size):
    """Clip each image to mean +- 2 std and resample it, float and bicubic, to size x size."""
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    spread = 2 * x.std(axis=(1, 2, 3), keepdims=True)
    x = np.clip(x, mean - spread, mean + spread)
    return np.stack([resize(image, (size, size), "bicubic") for image in x])


def _optimise_batch(model, layer, pictures, sizes, steps, step_size, seed, transforms, tv, l2, report, look):
    """Run every stage on one batch of (filter, sample) ``pictures`` (k, 2); returns (float32
    images at the last size, losses)."""
    if look["lucid"]:
        return _optimise_lucid(model, layer, pictures, sizes[-1], steps, seed, transforms, tv, l2, report, look)
    x = start_images(pictures[:, 0], sizes[0], seed, model.input_shape[2], pictures[:, 1]).astype(np.float32)
    filters = pictures[:, 0]
    alive = np.ones(len(filters), dtype=bool)
    final = np.zeros(len(filters), dtype=np.float32)
    for stage, size in enumerate(sizes):
        if stage:
            x = _upscale(x, size)
        rows = np.flatnonzero(alive)
        if len(rows):
            target = _target(look["objective"], layer, filters[rows], look["direction"])
            objective = _objective(target, x[0].size, tv, l2, look["diversity"], layer)
            result = optimise(
                model, x[rows], objective, Ascent(step_size, "rms", RMS_EPS), steps, transforms=transforms,
                stops=[nonpositive()], seed=seed + stage, callback=lambda step, _loss: report(stage, step + 1),
            )
            x[rows] = result.images
            final[rows] = result.final_loss
            alive[rows] = final[rows] > 0
        report(stage, steps)
    return x, final


def _optimise_lucid(model, layer, pictures, size, steps, seed, transforms, tv, l2, report, look):
    """Lucid's run on one batch of (target, sample) pictures: a parameterised image, Adam on minus
    the objective; returns (float32 caffe images, each target's value at its final image)."""
    targets, samples = pictures[:, 0], pictures[:, 1]
    p = image_param.image((len(pictures), size, size), backend=model.backend, fft=look["param"] == "fft",
                          decorrelate=look["decorrelate"], valid="sigmoid")
    start = np.stack([_generator(seed, t, k).standard_normal(p.param_shape[1:]) for t, k in zip(targets, samples)]) * p.sd
    target = _target(look["objective"], layer, targets, look["direction"])
    objective = _objective(target, size * size * 3, tv, l2, look["diversity"], layer, CAFFE_GRAY.astype(np.float32))
    result = optimise(model, start.astype(np.float32), -objective, Adam(look["lr"]), steps, transforms=transforms,
                      seed=seed, param=p, callback=lambda step, _loss: report(0, step + 1))
    acts = model.forward(result.images, outputs=[layer])
    return result.images, target(acts)[0].astype(np.float32)


def visualize_filters(
    model,
    layer: str,
    filters=None,
    scan: int = 200,
    keep: int | None = None,
    size: int = 128,
    steps: int = 20,
    step_size: float = 1.0,
    seed: int = 0,
    batch: int = 32,
    transforms=(),
    tv: float = 0.0,
    l2: float = 0.0,
    upscale_steps: int = 0,
    upscale_factor: float = 1.2,
    callback=None,
    param: str = "pixel",
    decorrelate: bool = False,
    lr: float = LUCID_LR,
    robust: bool = False,
    objective: str = "channel",
    direction=None,
    samples: int = 1,
    diversity: float = 0.0,
) -> FilterResult:
    """Optimise one image per filter of ``layer``; see the module docstring for the algorithm.

    ``filters`` None scans the first ``scan`` filters (capped at the layer's channel count) and
    returns those with a positive loss, best first, at most ``keep`` of them; a list of indices
    returns exactly those, in the given order, with no selection. ``batch`` filters are optimised
    together (memory grows with it). ``callback(done, total)`` reports progress in ascent steps.
    ``param`` .. ``diversity``: Lucid's options (module docstring); with ``samples`` > 1 each
    target's pictures follow each other, and ``raw`` / ``filters`` / ``losses`` have one row each.
    """
    lucid = param != "pixel" or decorrelate
    if param not in ("pixel", "fft") or objective not in OBJECTIVES:
        raise ConvscopeError(f"param {param!r} / objective {objective!r}: use pixel or fft / {', '.join(OBJECTIVES)}")
    if samples < 1 or (lucid and upscale_steps) or (objective == "direction") != (direction is not None):
        raise ConvscopeError("samples must be >= 1; upscaling is for pixel images; a direction goes with "
                             "objective 'direction' (and only there)")
    if samples > 1 and filters is None and objective != "direction":
        raise ConvscopeError("several samples per filter need the filters chosen (no scan)")
    look = dict(lucid=lucid, param=param, decorrelate=decorrelate, lr=float(lr), objective=objective,
                direction=direction, diversity=float(diversity))
    if robust:
        transforms = list(transforms) + standard_transforms(pad_value=CAFFE_GRAY if lucid else GRAY)
    if size < 1 or steps < 1 or batch < 1:
        raise ConvscopeError(f"size {size}, steps {steps} and batch {batch}: give positive numbers")
    if upscale_steps < 0 or (upscale_steps and upscale_factor <= 1.0):
        raise ConvscopeError("progressive upscaling needs upscale_steps >= 0 and a factor above 1")
    sizes = stage_sizes(size, upscale_steps, upscale_factor)
    channels = _channel_count(model, layer, sizes)
    selecting = filters is None and objective != "direction"
    if objective == "direction":
        if np.shape(direction)[-1:] != (channels,):
            raise ConvscopeError(f"a direction at {layer} needs {channels} values, got shape {np.shape(direction)}")
        chosen = np.zeros(1, dtype=np.int64)
    elif selecting:
        if scan < 1:
            raise ConvscopeError(f"scan {scan}: give at least 1 filter to scan")
        chosen = np.arange(min(int(scan), channels), dtype=np.int64)
    else:
        chosen = np.asarray(list(filters), dtype=np.int64).reshape(-1)
        bad = chosen[(chosen < 0) | (chosen >= channels)]
        if len(chosen) == 0 or len(bad):
            raise ConvscopeError(
                f"layer {layer} has filters 0 to {channels - 1}; "
                + (f"filter {int(bad[0])} does not exist" if len(bad) else "no filter was given")
            )

    pictures = np.stack([np.repeat(chosen, samples), np.tile(np.arange(samples), len(chosen))], axis=1)
    batch = samples if diversity else batch  # the diversity penalty compares one target's samples
    total = len(pictures) * len(sizes) * steps
    raw = np.empty((len(pictures), size, size, model.input_shape[2]), dtype=np.float32)
    losses = np.empty(len(pictures), dtype=np.float32)
    for start in range(0, len(pictures), batch):
        part = pictures[start : start + batch]

        def report(stage, step, done=start * len(sizes) * steps, n=len(part)):
            if callback is not None:
                callback(done + n * (stage * steps + step), total)

        raw[start : start + len(part)], losses[start : start + len(part)] = _optimise_batch(
            model, layer, part, sizes, steps, step_size, seed, list(transforms), tv, l2, report, look
        )

    chosen = pictures[:, 1] if objective == "direction" else pictures[:, 0]
    order = np.arange(len(chosen))
    if selecting:
        positive = np.flatnonzero(losses > 0)
        order = positive[np.argsort(-losses[positive], kind="stable")]
        if keep is not None:
            order = order[: max(0, int(keep))]
    picture = deprocess if lucid else standardize_to_uint8  # Lucid's images are the pictures themselves
    return FilterResult(
        images=picture(raw[order]) if len(order) else np.zeros((0,) + raw.shape[1:], np.uint8),
        raw=raw[order],
        filters=chosen[order],
        losses=losses[order],
        scanned_filters=chosen,
        scanned_losses=losses,
    )
