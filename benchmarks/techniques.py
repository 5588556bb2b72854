"""End-to-end technique timings: the engine's batched techniques vs the same algorithm in PyTorch
and in Keras 3 (torch backend), written out the way those frameworks' examples write them.

* filters: Keras' ``conv_filter_visualization`` example (mean activation of one filter, gradient
  divided by its RMS + 1e-5, steps of 1.0, a filter stops once its loss is <= 0), one filter at a
  time as the example does (``filters_one_at_a_time``), the same algorithm on a batch of filters
  in PyTorch (``filters_batched``, the engine's batch), and
  ``engine.viz.filters.visualize_filters`` (batches of 32). Start images:
  ``engine.viz.filters.start_images`` (the same for all contenders).
* dream: Keras' ``deep_dream`` example (octaves, bilinear resizes without antialiasing, gradient
  / max(mean |g|, 1e-7), lost-detail re-injection; loss = weighted mean square of each layer's
  activations without a 2-pixel border, as ``engine.viz.objectives.dream``) vs
  ``engine.viz.dream.deep_dream``.

The reference implementations take ``outputs(x) -> {layer: NHWC tensor}`` so that one function
serves PyTorch (``TorchVGG16``) and Keras (a multi-output ``keras.Model``). Both sections are
optional: they run only when the engine module exists (colleagues may still be writing it).
"""

import importlib.util

import numpy as np


def engine_module(name):
    """engine.viz.<name>, or None when that module does not exist (yet)."""
    try:
        if importlib.util.find_spec(f"engine.viz.{name}") is None:
            return None
    except ModuleNotFoundError:
        return None
    return importlib.import_module(f"engine.viz.{name}")


# ------------------------------------------------------------------------------------ filters


def filters_one_at_a_time(outputs, layer, starts, filters, steps, step_size=1.0, device="cpu"):
    """The Keras example per filter: float64 images (n, S, S, 3) after ``steps`` steps; the
    network runs on torch ``device`` (where ``outputs``' module lives), the image stays in NumPy."""
    import torch

    images = []
    for start, f in zip(starts, filters):
        x = np.array(start[None], dtype=np.float64)
        for _ in range(steps):
            xt = torch.tensor(x, dtype=torch.float32, device=device, requires_grad=True)
            loss = outputs(xt)[layer][..., int(f)].mean()
            (g,) = torch.autograd.grad(loss, xt)
            g = (g / (torch.sqrt(torch.mean(torch.square(g))) + 1e-5)).cpu().numpy()
            x += g * step_size
            if float(loss.detach()) <= 0.0:
                break
        images.append(x[0])
    return np.array(images)


def filters_batched(outputs, layer, starts, filters, steps, batch=32, step_size=1.0, device="cpu"):
    """The Keras example's algorithm for ``batch`` filters at once, as the engine runs it: image i
    ascends the mean of filter ``filters[i]``, its own gradient divided by its own RMS + 1e-5, and
    stops after the step at which its loss was <= 0 (it keeps its image; the others go on).

    The images do not interact (no batch statistics in VGG16), so each equals
    ``filters_one_at_a_time`` up to float32 rounding; the network runs once per step on the
    still-active images. Float64 images (n, S, S, 3), as ``filters_one_at_a_time`` returns.
    """
    import torch

    result = np.array(starts, dtype=np.float64)
    for b0 in range(0, len(filters), batch):
        x = result[b0 : b0 + batch]  # a view: updated in place
        chosen = torch.as_tensor(np.asarray(filters[b0 : b0 + batch], dtype=np.int64), device=device)
        active = np.arange(len(x))
        for _ in range(steps):
            if len(active) == 0:
                break
            xt = torch.tensor(x[active], dtype=torch.float32, device=device, requires_grad=True)
            acts = outputs(xt)[layer]  # (k, h, w, c)
            picked = torch.gather(acts, 3, chosen[torch.as_tensor(active, device=device)].view(-1, 1, 1, 1)
                                  .expand(-1, acts.shape[1], acts.shape[2], 1))
            losses = picked.mean(dim=(1, 2, 3))
            (g,) = torch.autograd.grad(losses.sum(), xt)
            rms = torch.sqrt(torch.mean(torch.square(g), dim=(1, 2, 3), keepdim=True))
            x[active] += (g / (rms + 1e-5)).cpu().numpy() * step_size
            active = active[losses.detach().cpu().numpy() > 0.0]
    return result


def engine_filters(model, layer, filters, size, steps, seed=0, batch=32):
    """The engine's filters, ``batch`` at a time (32: the ``filters`` command's default)."""
    module = engine_module("filters")
    result = module.visualize_filters(
        model, layer, filters=list(filters), size=size, steps=steps, seed=seed, batch=min(batch, len(filters))
    )
    return result.raw


def filter_starts(filters, size, seed=0):
    return engine_module("filters").start_images(filters, size, seed=seed)


# -------------------------------------------------------------------------------------- dream


def _resize(x, shape):
    import torch.nn.functional as F

    # in float64, rounded once: the correctly rounded result, as the engine's resize_bilinear op computes it; the
    # ascent amplifies even last-bit differences of the resizes (1e-7 -> 1e-3 over two octaves)
    out = F.interpolate(x.double().permute(0, 3, 1, 2), size=tuple(shape), mode="bilinear", align_corners=False, antialias=False)
    return out.permute(0, 2, 3, 1).float().contiguous()


def dream_reference(outputs, img, layers, octaves, octave_scale, steps, step_size, device="cpu"):
    """The Keras deep_dream example with torch autograd; img NHWC float32 numpy; the image and
    the network live on torch ``device``."""
    import torch

    original = torch.as_tensor(np.asarray(img, dtype=np.float32), device=device)
    side = original.shape[1:3]
    shapes = [tuple(int(d / octave_scale**i) for d in side) for i in range(octaves)][::-1]
    shrunk = _resize(original, shapes[0])
    x = original.clone()
    for shape in shapes:
        x = _resize(x, shape)
        for _ in range(steps):
            xt = x.clone().requires_grad_(True)
            acts = outputs(xt)
            loss = 0.0
            for name, weight in layers.items():
                inner = acts[name][:, 2:-2, 2:-2, :]
                loss = loss + weight * inner.square().sum() / inner.numel()
            (g,) = torch.autograd.grad(loss, xt)
            x = x + step_size * g / torch.clamp(g.abs().mean(), min=1e-7)
        same_size = _resize(original, shape)
        x = x + (same_size - _resize(shrunk, shape))
        shrunk = same_size
    return x.detach().cpu().numpy()


# The dream benchmarked everywhere (techniques and memory sections, the GPU comparison): two layers,
# octaves 1.4 apart, steps of 0.01 of the caffe range's half-width over the mean |gradient|
DREAM_LAYERS = {"block4_conv3": 1.0, "block5_conv1": 0.5}


def dream_setting(octaves, steps, layers=DREAM_LAYERS):
    """The keyword arguments of ``engine_dream`` and ``dream_reference`` for the benchmarked dream."""
    return dict(layers=layers, octaves=octaves, octave_scale=1.4, steps=steps, step_size=0.01 * 127.5)


def engine_dream(model, img, layers, octaves, octave_scale, steps, step_size):
    module = engine_module("dream")
    return module.deep_dream(
        model, img, layers=dict(layers), octaves=octaves, octave_scale=octave_scale, steps=steps,
        step_size=step_size,
    ).images


def dream_image(size, seed=7):
    """A noisy caffe-space start image, (1, size, size, 3) float32 uniform in [-60, 60)."""
    from tests.synthetic import uniform

    return uniform(seed, "dream_start", (1, size, size, 3), -60.0, 60.0)


# ------------------------------------------------------------------------------ the callables


def torch_outputs(reference, deepest):
    """outputs(x) for TorchVGG16: every layer up to ``deepest``."""
    return lambda xt: reference(xt, stop_at=deepest)


def keras_outputs(weights, names):
    """outputs(x) for a Keras VGG16 with any input size (None, None, 3), weights frozen."""
    from tests.reference_models import KerasVGG16

    wrapper = KerasVGG16(weights, (None, None, 3), include_top=False)
    keras, model = wrapper.keras, wrapper.model
    model.trainable = False
    for v in model.weights:
        v.value.requires_grad_(False)
    names = list(names)
    multi = keras.Model(model.inputs, [model.get_layer(n).output for n in names])

    def outputs(xt):
        values = multi(xt, training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        return dict(zip(names, values))

    return outputs
