"""Objectives: small composable callables that score a batch and give the gradient of the score.

An ``Objective`` reads some layer outputs (and possibly the input image, under the name
``"input"``) and returns ``(loss, grads)``: ``loss`` is one float64 number per sample, shape (N,), and
``grads`` maps each layer it read to d loss / d output (same shape as that output), to be
injected into ``Trace.backward``. There is no autograd: each objective states its own gradient,
which ``tests/test_objectives.py`` checks against finite differences.

As in Lucent, objectives combine with ``+``, ``-`` and scalar ``*``:

    channel("block5_conv1", 7) - 0.05 * total_variation()
    dream({"block4_conv3": 1.0, "block5_conv1": 0.5})

Per-sample targets are real batches: ``channel(layer, [0, 1, 2, 3])`` asks each of four images
for its own filter; ``class_logit([65, 18])`` each of two images for its own class.

Arrays are host NumPy arrays, NHWC (dense outputs (N, n)).

Device form. The objectives that filters and DeepDream use (``channel``, ``mean_square``,
``dream``, ``l2`` around a scalar, ``total_variation``) also state themselves as backend ops, so
that on the CUDA backend the ascent loop scores activations where they are, on the device:
``objective.device(acc, weight)`` adds ``weight *`` its per-sample loss to ``acc.loss`` and
``weight *`` its gradients to ``acc.grads[name]`` (an ``Accumulator``: backend arrays, the
gradients zero at the start of a step). Sums and scalar multiples of such objectives have a
device form too; an objective with a term that has none (``class_logit``, ``alpha_norm``, ``l2``
around an image, any hand-written ``Objective(fn, ...)``) has ``device = None`` and runs on the
host, as everything does on the CPU (``engine/viz/ascent.py``).
"""

import numpy as np

INPUT = "input"


class Accumulator:
    """Where device-form objectives read one step's activations and add their loss and gradients.

    ``acts``: {name: backend array} of the layers read ("input": the image); ``loss``: (N,)
    float32 backend array; ``grads``: {name: backend array shaped like acts[name]}, cleared by
    the loop before the step; ``work``: the run's ``engine.backend.Workspace`` (buffers and
    uploaded constants that outlive the step); ``ops``: the backend's kernels as ``work.ops``
    (the score reductions reuse the workspace's scratch, so a step allocates nothing for them).
    """

    def __init__(self, work, acts, loss, grads):
        self.work = work
        self.ops = work.ops
        self.acts = acts
        self.loss = loss
        self.grads = grads


class Objective:
    def __init__(self, fn, layers, description="", device=None):
        self.fn = fn
        self.layers = tuple(dict.fromkeys(layers))
        self.description = description
        self.device = device  # device(acc: Accumulator, weight: float), or None (host only)

    def __call__(self, acts):
        return self.fn(acts)

    def __repr__(self):
        return f"Objective({self.description})"

    def __add__(self, other):
        if not isinstance(other, Objective):
            return NotImplemented

        def fn(acts):
            loss_a, grads_a = self(acts)
            loss_b, grads_b = other(acts)
            return loss_a + loss_b, _merge(grads_a, grads_b)

        def device(acc, weight):
            self.device(acc, weight)
            other.device(acc, weight)

        on_device = device if self.device is not None and other.device is not None else None
        return Objective(fn, self.layers + other.layers, f"{self.description} + {other.description}", on_device)

    def __mul__(self, scale):
        scale = float(scale)

        def fn(acts):
            loss, grads = self(acts)
            return scale * loss, {name: scale * g for name, g in grads.items()}

        def device(acc, weight):
            self.device(acc, weight * scale)

        on_device = device if self.device is not None else None
        return Objective(fn, self.layers, f"{scale:g} * ({self.description})", on_device)

    __rmul__ = __mul__

    def __neg__(self):
        return -1.0 * self

    def __sub__(self, other):
        return self + (-other)


def _merge(a, b):
    merged = dict(a)
    for name, g in b.items():
        merged[name] = merged[name] + g if name in merged else g
    return merged


def _per_sample(index, n):
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if index.size == 1:
        index = np.repeat(index, n)
    if index.size != n:
        raise ValueError(f"{index.size} targets for a batch of {n}")
    return index


def _crop(border):
    return slice(border, -border) if border else slice(None)


def _region(shape, border):
    """(y0, y1, x0, x1) of an NHWC shape without ``border`` rows and columns on each side."""
    return (border, shape[1] - border, border, shape[2] - border)


def channel(layer, index, border=0):
    """Mean activation of channel ``index`` (one per sample, or one for all) of a conv layer."""

    def fn(acts):
        a = acts[layer]
        n, h, w, _ = a.shape
        idx = _per_sample(index, n)
        crop = _crop(border)
        rows = np.arange(n)
        window = a[:, crop, crop, :][rows, :, :, idx]  # (N, h, w): each sample's own channel
        loss = window.reshape(n, -1).mean(axis=1)
        grad = np.zeros_like(a)
        grad_window = grad[:, crop, crop, :]
        grad_window[rows, :, :, idx] = 1.0 / window[0].size
        return loss, {layer: grad}

    key = object()  # this objective's targets, uploaded once per run

    def device(acc, weight):
        a = acc.acts[layer]
        n = a.shape[0]
        idx = acc.work.constant(key, _per_sample(index, n))
        y0, y1, x0, x1 = _region(a.shape, border)
        size = (y1 - y0) * (x1 - x0)
        acc.ops.channel_sum(a, idx, (y0, y1, x0, x1), weight / size, acc.loss, acc.grads[layer])

    return Objective(fn, [layer], f"channel({layer}, {index})", device)


def mean_square(layer, border=0):
    """Mean of the squared activations of a layer, borders excluded (a DeepDream term)."""

    def fn(acts):
        a = acts[layer]
        crop = _crop(border)
        inner = a[:, crop, crop, :]
        per_sample = inner[0].size
        loss = np.square(inner, dtype=np.float64).reshape(len(a), -1).sum(axis=1) / per_sample
        grad = np.zeros_like(a)
        grad[:, crop, crop, :] = (2.0 / per_sample) * inner
        return loss, {layer: grad}

    def device(acc, weight):
        a = acc.acts[layer]
        y0, y1, x0, x1 = _region(a.shape, border)
        per_sample = (y1 - y0) * (x1 - x0) * a.shape[3]
        acc.ops.square_sum(a, 0.0, (y0, y1, x0, x1), weight / per_sample, acc.loss, acc.grads[layer])

    return Objective(fn, [layer], f"mean_square({layer})", device)


def dream(layers: dict, border=2):
    """DeepDream loss: sum over layers of weight * mean squared activation (borders excluded)."""
    if not layers:
        raise ValueError("dream needs at least one layer")
    terms = [weight * mean_square(name, border) for name, weight in layers.items()]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def class_logit(index, layer="logits"):
    """The score of class ``index`` (one per sample or one for all) at ``layer``."""

    def fn(acts):
        a = acts[layer]
        n = a.shape[0]
        idx = _per_sample(index, n)
        rows = np.arange(n)
        grad = np.zeros_like(a)
        grad[rows, idx] = 1.0
        return a[rows, idx].astype(np.float64), {layer: grad}

    return Objective(fn, [layer], f"class_logit({index}, {layer})")


def l2(center=0.0):
    """Sum of squares of the input image around ``center``, per sample (a penalty: subtract it)."""

    def fn(acts):
        x = acts[INPUT] - center
        loss = np.square(x, dtype=np.float64).reshape(len(x), -1).sum(axis=1)
        return loss, {INPUT: 2.0 * x}

    def device(acc, weight):
        x = acc.acts[INPUT]
        acc.ops.square_sum(x, float(center), _region(x.shape, 0), weight, acc.loss, acc.grads[INPUT])

    on_device = device if np.ndim(center) == 0 else None  # around an image: host only
    return Objective(fn, [INPUT], "l2", on_device)


def alpha_norm(alpha=6.0):
    """Sum of |x|^alpha over the input image, per sample (Mahendran & Vedaldi's bounded range)."""

    def fn(acts):
        x = acts[INPUT]
        ax = np.abs(x)
        loss = np.power(ax, alpha, dtype=np.float64).reshape(len(x), -1).sum(axis=1)
        return loss, {INPUT: (alpha * np.power(ax, alpha - 1) * np.sign(x)).astype(x.dtype)}

    return Objective(fn, [INPUT], f"alpha_norm({alpha:g})")


def total_variation(beta=2.0, eps=1e-8):
    """Sum over pixels of ((x[i,j+1]-x[i,j])^2 + (x[i+1,j]-x[i,j])^2)^(beta/2), per sample.

    Mahendran & Vedaldi's TV^beta regulariser (the last row/column use zero differences).
    """

    def fn(acts):
        x = acts[INPUT].astype(np.float64)
        dx = np.zeros_like(x)
        dy = np.zeros_like(x)
        dx[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
        dy[:, :-1] = x[:, 1:] - x[:, :-1]
        s = dx * dx + dy * dy + eps
        loss = np.power(s, beta / 2).reshape(len(x), -1).sum(axis=1)
        c = beta * np.power(s, beta / 2 - 1)  # d loss / d s * 2
        cdx, cdy = c * dx, c * dy
        grad = -(cdx + cdy)
        grad[:, :, 1:] += cdx[:, :, :-1]
        grad[:, 1:] += cdy[:, :-1]
        return loss, {INPUT: grad.astype(acts[INPUT].dtype)}

    def device(acc, weight):
        acc.ops.variation_sum(acc.acts[INPUT], beta, eps, weight, acc.loss, acc.grads[INPUT])

    return Objective(fn, [INPUT], f"total_variation({beta:g})", device)
