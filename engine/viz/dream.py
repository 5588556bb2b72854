"""DeepDream: the Keras ``deep_dream`` example's algorithm on any loaded convolutional network.

    result = deep_dream(model, preprocess_input(photo), layers={"block4_conv3": 1.0,
                        "block5_conv1": 0.5}, octaves=4)
    picture = deprocess(result.images[0])          # the photo's size, uint8 RGB

The algorithm is Keras' (fchollet's ``deep_dream.py``, Keras 2 and keras-io alike):

* loss = sum over layers of weight * mean squared activation, borders of 2 excluded
  (``objectives.dream``; Keras divides the same inner sum by the layer's full size instead, which
  only rescales each layer's weight by inner/full size);
* octave shapes ``int(side / octave_scale**i)`` for i = octaves-1 .. 0, smallest first;
* at each octave: resize the image to that shape, run ``steps`` steps of gradient ascent with the
  gradient divided by max(mean |g|, 1e-7) (``optimise`` with ``Ascent(normalize="mean_abs")``),
  stopping early once the loss exceeds ``max_loss`` (``optimise.above``); then re-inject the
  detail lost by shrinking: resize(original, shape) - resize(resize(original, previous shape), shape);
* resizes are the backend's ``resize_bilinear`` op: ``tf.image.resize(..., "bilinear")`` (=
  PyTorch's ``interpolate(align_corners=False, antialias=False)``): half-pixel centres, edges
  clamped, no antialiasing when shrinking (PIL widens its filter then, which gives a smoother
  small octave), correctly rounded to float32 on every backend. That matters more than it
  seems: the input gradient of a deep ReLU network is "shattered" (a change of 1e-7 in the input
  can change it by 1%), so an octave that starts from a slightly different resize ends in a
  visibly different dream.

It works in caffe-preprocessed space. The Keras example's step of 0.01 is for inputs scaled to
[-1, 1]; caffe inputs span about 255 units, so the default ``step_size`` is 0.01 * 127.5.

Large photos in bounded memory: when an octave is larger than ``tile`` pixels, the gradient is
computed window by window. Each window is a tile (its "core") plus a halo at least as wide as the
receptive field of the deepest layer, with window corners on the network's pooling grid; each
window's loss counts only the layer positions of its core. The windows' losses and input
gradients therefore add up to exactly the whole-image loss and gradient (no seams, the same
dream for any tile size), while memory is bounded by the window, not the photo. ``roll`` adds
the TensorFlow tutorial's random circular shift of the image before each gradient (undone after);
the tutorial needs it to hide tile seams, which exact windows do not have, so it is off by
default (it acts as jitter). Tiling needs 'same' convolutions and non-overlapping pooling (VGG).

The whole octave loop runs on backend ops, so on the CUDA backend it stays on the device: the
photo is copied there once, the octave resizes are the ``resize_bilinear`` op, each octave's
``optimise`` keeps the batch where it is, the dream loss and its gradient are ``square_sum`` on
the activations (windows cut and added back by ``copy_window`` / ``add_window`` when tiling),
the roll is ``roll``, and the detail re-injection is two ``axpy``. Per step only the N losses
come to the host; the dream comes back at the end.

Shapes: NHWC float32 (caffe space); every image of a batch is dreamed independently.
"""

from dataclasses import dataclass, field

import numpy as np

from engine.errors import ConvscopeError
from engine.geometry import layer_shapes, tile_grid
from engine.viz.objectives import INPUT, Objective
from engine.viz.optimise import above, objective_gradient, optimise
from engine.viz.steps import Ascent

DEFAULT_LAYERS = {"block4_conv3": 1.0, "block5_conv1": 0.5}
DEFAULT_STEP_SIZE = 0.01 * 127.5  # Keras' 0.01 for [-1, 1] inputs, in caffe units
BORDER = 2  # activation rows/columns left out of the loss on each side, as in Keras


@dataclass
class DreamResult:
    images: np.ndarray  # (N, H, W, C) float32 caffe space, the input's size
    losses: list = field(default_factory=list)  # per octave: (steps run, N) loss before each step
    shapes: list = field(default_factory=list)  # per octave: (height, width), smallest first


def default_layers(model) -> dict:
    """Keras-style VGG16 dream layers when the network has them, else its last two convolutions."""
    names = set(model.layer_names)
    if all(name in names for name in DEFAULT_LAYERS):
        return dict(DEFAULT_LAYERS)
    convs = [layer.name for layer in model.layers if layer.kind == "conv2d"]
    if not convs:
        raise ConvscopeError("this network has no convolutional layer to dream with")
    return dict(zip(reversed(convs), (1.0, 0.5)))


def octave_shapes(shape, octaves: int, octave_scale: float) -> list:
    """[(h, w), ...] smallest first, ending with ``shape``, as the Keras example computes them."""
    h, w = (int(s) for s in shape)
    shapes = [(int(h / octave_scale**i), int(w / octave_scale**i)) for i in range(octaves)]
    return shapes[::-1]


def _check_layers(model, layers: dict, shape) -> None:
    """Every dream layer is spatial and keeps inner positions at this octave's size."""
    shapes = layer_shapes(model.layers, (*shape, model.input_shape[2]))
    for name in layers:
        out = shapes[name]
        if len(out) != 3:
            raise ConvscopeError(f"layer {name} is not convolutional: dream with conv or pooling layers")
        if min(out[:2]) <= 2 * BORDER:
            raise ConvscopeError(
                f"at the smallest octave ({shape[0]}x{shape[1]} px) layer {name} is only "
                f"{out[0]}x{out[1]}, too small once its {BORDER}-pixel border is left out: "
                "use fewer octaves, a smaller --octave-scale or a larger image"
            )


def _cores(n: int, tile: int) -> list:
    return [(start, min(start + tile, n)) for start in range(0, n, tile)]


def _window(start: int, stop: int, n: int, halo: int, align: int, least: int):
    """The input range around a core [start, stop): the halo on both sides, corners on the grid,
    widened inwards to at least ``least`` pixels (more context keeps the core exact)."""
    low, high = max(0, start - halo), min(n, stop + halo)
    if high - low < least:
        high = min(n, low + least)
        low = max(0, (high - least) // align * align)
    return low, high


# ------------------------------------------------------------------------------- the gradient


def dream_gradient(model, x, layers: dict, tile: int = 512):
    """(loss (N,), d loss / d x) of ``objectives.dream(layers)`` at x, in windows when x > tile;
    host arrays."""
    return objective_gradient(model, x, dream_objective(model, layers, tile))


def _dream_score(model, x, layers: dict, tile: int, acc, weight: float, grad):
    """Add weight * the dream loss (N,) at x to ``acc.loss`` and weight * its gradient to
    ``grad`` (arrays of the model's backend).

    One window when x fits in ``tile`` (no geometry needed, any convolution padding); otherwise
    each window is cut out (``copy_window``), scored on its core only, and its input gradient
    added back (``add_window``): the windows' sums are exactly the whole image's.
    """
    buffers, ops = acc.buffers, acc.ops
    n, h, w, _ = x.shape
    deepest = max(layers, key=model.layer_index)
    if h <= tile and w <= tile:
        trace = model.trace(x, upto=deepest)
        grads = {}
        for name, layer_weight in layers.items():
            a = trace.output(name)
            _, lh, lw, lc = a.shape
            region = (BORDER, lh - BORDER, BORDER, lw - BORDER)
            scale = weight * layer_weight / ((lh - 2 * BORDER) * (lw - 2 * BORDER) * lc)
            grads[name] = buffers.zeros(("dream layer", name), a.shape)
            ops.square_sum(a, 0.0, region, scale, acc.loss, grads[name])
        ops.axpy(1.0, trace.backward(grads, release=True)[INPUT], grad)
        return
    upto = model.layers[: model.layer_index(deepest) + 1]
    strides, halo, align = tile_grid(upto)
    tile = max(align, tile // align * align)
    full = layer_shapes(upto, x.shape[1:])
    least = model.min_input_size()  # Model.trace checks the size through the whole network
    for cy0, cy1 in _cores(h, tile):
        for cx0, cx1 in _cores(w, tile):
            wy0, wy1 = _window(cy0, cy1, h, halo, align, least)
            wx0, wx1 = _window(cx0, cx1, w, halo, align, least)
            window = buffers.get("dream window", (n, wy1 - wy0, wx1 - wx0, x.shape[3]))
            ops.copy_window(x, (wy0, wx0), window)
            trace = model.trace(window, upto=deepest)
            grads = {}
            for name, layer_weight in layers.items():
                s = strides[name]
                lh, lw, lc = full[name]
                # this core's positions in the layer, inside the global border, in window coordinates
                y0 = max(cy0 // s, BORDER) - wy0 // s
                y1 = min(cy1 // s if cy1 < h else lh, lh - BORDER) - wy0 // s
                x0 = max(cx0 // s, BORDER) - wx0 // s
                x1 = min(cx1 // s if cx1 < w else lw, lw - BORDER) - wx0 // s
                a = trace.output(name)
                grads[name] = buffers.zeros(("dream layer", name), a.shape)
                if y1 > y0 and x1 > x0:
                    scale = weight * layer_weight / ((lh - 2 * BORDER) * (lw - 2 * BORDER) * lc)
                    ops.square_sum(a, 0.0, (y0, y1, x0, x1), scale, acc.loss, grads[name])
            ops.add_window(trace.backward(grads, release=True)[INPUT], (wy0, wx0), grad)


def dream_objective(model, layers: dict, tile: int = 512, roll: int = 0, seed: int = 0) -> Objective:
    """The dream loss as an input-space objective for ``optimise``, tiled and rolled.

    It reads only the input image and runs the network itself (window by window), so the loop
    sees one whole-image gradient however it was computed. ``roll`` > 0 shifts the
    image circularly by a random offset in [-roll, roll] before each gradient and shifts the
    gradient back (the TensorFlow tutorial's random roll).
    """
    rng = np.random.default_rng(seed)

    def score(acc, weight):
        x, ops = acc.acts[INPUT], acc.ops
        if not roll:
            _dream_score(model, x, layers, tile, acc, weight, acc.grads[INPUT])
            return
        shift = tuple(int(v) for v in rng.integers(-roll, roll + 1, size=2))
        rolled = ops.roll(x, shift, acc.buffers.get("dream rolled", x.shape))
        g = acc.buffers.zeros("dream grad", x.shape)
        _dream_score(model, rolled, layers, tile, acc, weight, g)
        unrolled = ops.roll(g, (-shift[0], -shift[1]), acc.buffers.get("dream unrolled", x.shape))
        ops.axpy(1.0, unrolled, acc.grads[INPUT])

    return Objective(score, [INPUT], f"dream({layers}, tile={tile}, roll={roll})")


# ------------------------------------------------------------------------------- the octaves


def _resized(backend, x, shape):
    """A new (N, h, w, C) array of ``backend``: the batch x (one of its arrays) resized to shape."""
    return backend.ops.resize_bilinear(x, backend.empty((x.shape[0], *shape, x.shape[3])))


def deep_dream(
    model,
    x,
    layers: dict | None = None,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps: int = 20,
    step_size: float = DEFAULT_STEP_SIZE,
    max_loss: float | None = None,
    tile: int = 512,
    roll: int = 0,
    seed: int = 0,
    callback=None,
) -> DreamResult:
    """Dream on a caffe-preprocessed NHWC batch (or one HWC image); see the module docstring.

    ``callback(octave, step, loss)`` is called after every step (progress display), with the
    octave index (0 = smallest) and the loss (N,) measured before that step.
    """
    x = np.array(x, dtype=np.float32, copy=True)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ConvscopeError(f"expected an NHWC image batch, got shape {x.shape}")
    layers = default_layers(model) if layers is None else dict(layers)
    if not layers:
        raise ConvscopeError("give at least one layer to dream with")
    for name in layers:
        model.layer_index(name)  # a one-line error for an unknown name
    if octaves < 1 or steps < 0 or tile < 1 or roll < 0:
        raise ConvscopeError("octaves and tile must be at least 1, steps and roll at least 0")
    if not octave_scale >= 1.0:
        raise ConvscopeError(f"octave scale {octave_scale} must be at least 1")
    shapes = octave_shapes(x.shape[1:3], octaves, octave_scale)
    if min(shapes[0]) < 1:
        raise ConvscopeError(f"{octaves} octaves shrink a {x.shape[1]}x{x.shape[2]} image to nothing: use fewer")
    _check_layers(model, layers, shapes[0])
    # up to the deepest dream layer: a file with the classifier dreams at any size too
    deepest = model.layer_index(max(layers, key=model.layer_index))
    model.check_input(np.zeros((1, *shapes[0], x.shape[3]), np.float32), upto=deepest)

    objective = dream_objective(model, layers, tile=tile, roll=roll, seed=seed)
    backend = model.backend
    ops = backend.ops
    original = backend.asarray(x)  # on the device for the whole dream (the CPU: x itself)
    shrunk_original = _resized(backend, original, shapes[0])
    img = original
    result = DreamResult(images=None)
    for octave, shape in enumerate(shapes):
        img = _resized(backend, img, shape)
        step_callback = None if callback is None else (lambda step, loss, o=octave: callback(o, step, loss))
        ascent = optimise(
            model, img, objective, Ascent(step_size, "mean_abs", 1e-7), steps,
            stops=[] if max_loss is None else [above(max_loss)], seed=seed, callback=step_callback,
        )
        img = ascent.images
        same_size_original = _resized(backend, original, shape)
        # img += same_size_original - resize(shrunk_original), as two exact float32 axpys
        lost = ops.axpy(-1.0, same_size_original, _resized(backend, shrunk_original, shape))
        ops.axpy(-1.0, lost, img)
        shrunk_original = same_size_original
        result.losses.append(ascent.losses)
        result.shapes.append(shape)
    result.images = backend.to_host(img, copy=False)
    return result
