"""Objectives: small composable scores of a batch that state their own gradient.

An ``Objective`` reads some layer outputs (and possibly the input image, under the name
``"input"``). It has one form, ``objective.score(acc, weight)``, written on backend ops: it adds
``weight *`` its per-sample value, shape (N,), to ``acc.loss`` and ``weight *`` its gradient
d value / d output to ``acc.grads[name]`` for each layer it reads (an ``Accumulator``: arrays of
the run's backend, the gradients zero at the start of a step). The loop (``optimise``) injects
those gradients into ``Trace.backward``. There is no autograd: each objective states its own
gradient, which ``tests/test_objectives.py`` checks against finite differences.

As in Lucent, objectives combine with ``+``, ``-`` and scalar ``*``:

    channel("block5_conv1", 7) - 0.05 * total_variation()
    dream({"block4_conv3": 1.0, "block5_conv1": 0.5})

Per-sample targets are real batches: ``channel(layer, [0, 1, 2, 3])`` asks each of four images
for its own filter; ``class_logit([65, 18])`` each of two images for its own class.

Feature-visualisation objectives, as Lucid/Lucent define them: ``channel`` (a filter's mean),
``neuron`` (one position of a filter, the centre by default), ``direction`` (the mean cosine
between a vector of the layer's channel space and each position's activations) and
``diversity`` (the similarity of the batch's normalised Gram matrices, a penalty: subtract it so
the N pictures of one filter differ):

    channel("block4_conv1", 7) - 100 * diversity("block4_conv1")

Where the arithmetic runs: ``channel``, ``neuron``, ``class_logit``, ``mean_square`` / ``dream``, ``l2`` and
``total_variation`` are the backend's score ops (``kernels.LOOP_OPS``), on the device on CUDA.
Terms that no op computes (``direction``, ``diversity``, ``alpha_norm``, the Gram and feature losses of ``gram.py``, the
fooling cross-entropy) are ``host_term``s: NumPy on the host copy of their one layer, the result
added back with ``axpy``; on a device backend that copies the layer and its gradient each step.

``objective(acts)`` evaluates an objective on host arrays {name: NHWC (dense: (N, n))} and
returns ``(loss (N,) float64, {name: gradient})``: the same score with the reference ops, in the
arrays' dtype (float64 for gradient checks).
"""

import numpy as np

from engine.backend import get_backend

INPUT = "input"


class Accumulator:
    """Where objectives read one step's activations and add their loss and gradients.

    ``acts``: {name: backend array} of the layers read ("input": the image); ``loss``: (N,)
    backend array; ``grads``: {name: backend array shaped like acts[name]}; ``buffers``: the
    run's ``engine.backend.Buffers`` (work arrays and uploaded constants that outlive the step);
    ``ops``: the backend's kernels as ``buffers.ops``; ``backend``: ``buffers.backend``.
    """

    def __init__(self, buffers, acts, loss, grads):
        self.buffers, self.ops, self.backend = buffers, buffers.ops, buffers.backend
        self.acts, self.loss, self.grads = acts, loss, grads

    def add(self, name, loss, grad, weight):
        """Add weight * loss (host (N,)) and weight * grad (host, shaped like acts[name])."""
        self.ops.axpy(weight, self.backend.asarray(np.asarray(loss, np.float64)), self.loss)
        self.ops.axpy(weight, self.backend.asarray(grad), self.grads[name])


class Objective:
    def __init__(self, score, layers, description="", channels=None):
        self.score = score  # score(acc: Accumulator, weight: float)
        self.layers = tuple(dict.fromkeys(layers))
        self.description = description
        # {layer: index}: the score reads only channel index (one per sample, or one for all) of
        # that layer's output, and writes its gradient there only; a layer not listed is read whole
        self.channels = dict(channels or {})

    def channels_read(self, layer, n):
        """(N,) int64: the one channel of ``layer`` each sample's score reads, or None (all)."""
        if layer not in self.channels:
            return None
        return per_sample(self.channels[layer], n)

    def __call__(self, acts):
        """(loss (N,) float64, {name: gradient}) at host arrays ``acts`` (see the module docstring)."""
        dtype = np.result_type(*(np.asarray(acts[name]).dtype for name in self.layers))
        backend = get_backend("reference", dtype)
        acts = {name: backend.asarray(a) for name, a in acts.items()}
        n = len(acts[self.layers[0]])
        grads = {name: np.zeros_like(acts[name]) for name in self.layers}
        acc = Accumulator(backend.buffers(), acts, np.zeros(n), grads)
        self.score(acc, 1.0)
        return acc.loss, acc.grads

    def __repr__(self):
        return f"Objective({self.description})"

    def __add__(self, other):
        if not isinstance(other, Objective):
            return NotImplemented

        def score(acc, weight):
            self.score(acc, weight)
            other.score(acc, weight)

        channels = {}  # a layer both read keeps its channels only where both read the same ones
        for layer in self.channels.keys() | other.channels.keys():
            mine, theirs = self.channels.get(layer), other.channels.get(layer)
            if layer not in other.layers:
                channels[layer] = mine
            elif layer not in self.layers:
                channels[layer] = theirs
            elif mine is not None and theirs is not None and np.array_equal(mine, theirs):
                channels[layer] = mine
        return Objective(score, self.layers + other.layers, f"{self.description} + {other.description}", channels)

    def __mul__(self, scale):
        scale = float(scale)
        description = f"{scale:g} * ({self.description})"
        return Objective(lambda acc, weight: self.score(acc, weight * scale), self.layers, description, self.channels)

    __rmul__ = __mul__

    def __neg__(self):
        return -1.0 * self

    def __sub__(self, other):
        return self + (-other)


def host_term(layer, fn, description) -> Objective:
    """An objective computed in NumPy: ``fn(a)`` -> (loss (N,), d loss / d a) for the host copy
    ``a`` of ``layer``'s output (fn must not write into a)."""

    def score(acc, weight):
        loss, grad = fn(acc.backend.to_host(acc.acts[layer], copy=False))
        acc.add(layer, loss, grad, weight)

    return Objective(score, [layer], description)


def per_sample(index, n):
    """(N,) int64 targets: one per sample, or one repeated for all."""
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if index.size == 1:
        index = np.repeat(index, n)
    if index.size != n:
        raise ValueError(f"{index.size} targets for a batch of {n}")
    return index


def _region(shape, border):
    """(y0, y1, x0, x1) of an NHWC shape without ``border`` rows and columns on each side."""
    return (border, shape[1] - border, border, shape[2] - border)


def channel(layer, index, border=0):
    """Mean activation of channel ``index`` (one per sample, or one for all) of a conv layer."""
    key = object()  # this objective's targets, uploaded once per run

    def score(acc, weight):
        a = acc.acts[layer]
        idx = acc.buffers.constant(key, per_sample(index, a.shape[0]))
        y0, y1, x0, x1 = _region(a.shape, border)
        acc.ops.channel_sum(a, idx, (y0, y1, x0, x1), weight / ((y1 - y0) * (x1 - x0)), acc.loss, acc.grads[layer])

    return Objective(score, [layer], f"channel({layer}, {index})", {layer: np.asarray(index, np.int64).reshape(-1)})


def neuron(layer, index, y=None, x=None):
    """Activation of channel ``index`` (one per sample, or one for all) at position (y, x) of a
    conv layer; default the centre (H // 2, W // 2, Lucent's choice for even sizes)."""
    key = object()

    def score(acc, weight):
        a = acc.acts[layer]
        cy, cx = a.shape[1] // 2 if y is None else int(y), a.shape[2] // 2 if x is None else int(x)
        if not (0 <= cy < a.shape[1] and 0 <= cx < a.shape[2]):
            raise ValueError(f"position ({cy}, {cx}) is outside {layer}'s {a.shape[1]}x{a.shape[2]} output")
        idx = acc.buffers.constant(key, per_sample(index, a.shape[0]))
        acc.ops.channel_sum(a, idx, (cy, cy + 1, cx, cx + 1), weight, acc.loss, acc.grads[layer])

    return Objective(score, [layer], f"neuron({layer}, {index}, {y}, {x})", {layer: np.asarray(index, np.int64).reshape(-1)})


COSINE_EPS = 1e-8  # torch.nn.CosineSimilarity's


def direction(layer, vector):
    """Mean over positions of the cosine between ``vector`` ((C,), or (N, C): one per sample) and
    the activation vector at each position of ``layer`` (Lucent's ``direction``); norms below
    1e-8 count as 1e-8, as torch's cosine similarity."""
    vector = np.asarray(vector, dtype=np.float64)

    def fn(a):
        n, h, w, c = a.shape
        d = np.broadcast_to(vector, (n, c)).astype(np.float64)
        d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), COSINE_EPS)
        flat = a.reshape(n, h * w, c).astype(np.float64)
        norm = np.maximum(np.linalg.norm(flat, axis=2, keepdims=True), COSINE_EPS)
        cosine = np.einsum("npc,nc->np", flat, d)[..., None] / norm
        grad = (d[:, None, :] - cosine * flat / norm * (norm > COSINE_EPS)) / norm / (h * w)
        return cosine.mean(axis=(1, 2)), grad.reshape(a.shape).astype(a.dtype)

    return host_term(layer, fn, f"direction({layer})")


GRAM_EPS = 1e-12  # torch.nn.functional.normalize's


def diversity(layer):
    """Lucid's diversity penalty: with G_n the Gram matrix (C, C) of sample n's activations at
    ``layer`` divided by its Frobenius norm, sample n scores sum over m != n of <G_n, G_m> / N
    (the scores add up to Lucid's value). The gradient is that of the batch's total, so
    maximising ``- w * diversity`` pushes the samples' Grams apart."""

    def fn(a):
        n, h, w, c = a.shape
        flat = a.reshape(n, h * w, c).astype(np.float64)
        grams = np.einsum("npc,npd->ncd", flat, flat)
        norms = np.maximum(np.sqrt(np.einsum("ncd,ncd->n", grams, grams)), GRAM_EPS)[:, None, None]
        unit = grams / norms
        others = unit.sum(axis=0, keepdims=True) - unit  # sum over m != n of G_m
        loss = np.einsum("ncd,ncd->n", unit, others) / n
        d_unit = 2.0 * others / n
        d_gram = (d_unit - unit * np.einsum("ncd,ncd->n", unit, d_unit)[:, None, None]) / norms
        grad = np.einsum("npc,ncd->npd", flat, d_gram + d_gram.transpose(0, 2, 1))
        return loss, grad.reshape(a.shape).astype(a.dtype)

    return host_term(layer, fn, f"diversity({layer})")


def class_logit(index, layer="logits"):
    """The score of class ``index`` (one per sample or one for all) at a dense ``layer``."""
    key = object()

    def score(acc, weight):
        a = acc.acts[layer]
        n, k = a.shape
        idx = acc.buffers.constant(key, per_sample(index, n))
        as_image = (n, 1, 1, k)  # a class is a channel of a 1x1 image
        grad = acc.grads[layer].reshape(as_image)
        acc.ops.channel_sum(a.reshape(as_image), idx, (0, 1, 0, 1), weight, acc.loss, grad)

    return Objective(score, [layer], f"class_logit({index}, {layer})")


def mean_square(layer, border=0):
    """Mean of the squared activations of a layer, borders excluded (a DeepDream term)."""

    def score(acc, weight):
        a = acc.acts[layer]
        y0, y1, x0, x1 = _region(a.shape, border)
        per_sample = (y1 - y0) * (x1 - x0) * a.shape[3]
        acc.ops.square_sum(a, 0.0, (y0, y1, x0, x1), weight / per_sample, acc.loss, acc.grads[layer])

    return Objective(score, [layer], f"mean_square({layer})")


def dream(layers: dict, border=2):
    """DeepDream loss: sum over layers of weight * mean squared activation (borders excluded)."""
    if not layers:
        raise ValueError("dream needs at least one layer")
    terms = [weight * mean_square(name, border) for name, weight in layers.items()]
    return sum(terms[1:], terms[0])


def l2(center=0.0):
    """Sum of squares of the input image around ``center`` (a number, or an image broadcastable
    to the batch), per sample (a penalty: subtract it)."""
    key = object()

    def score(acc, weight):
        x = acc.acts[INPUT]
        region = _region(x.shape, 0)
        if np.ndim(center) == 0:
            acc.ops.square_sum(x, float(center), region, weight, acc.loss, acc.grads[INPUT])
            return
        c = acc.buffers.constant(key, np.broadcast_to(np.asarray(center, acc.backend.dtype), x.shape))
        d = acc.backend.copy_into(x, acc.buffers.get(("l2", key), x.shape))
        acc.ops.square_sum(acc.ops.axpy(-1.0, c, d), 0.0, region, weight, acc.loss, acc.grads[INPUT])

    return Objective(score, [INPUT], "l2")


def alpha_norm(alpha=6.0):
    """Sum of |x|^alpha over the input image, per sample (Mahendran & Vedaldi's bounded range)."""

    def fn(x):
        ax = np.abs(x)
        loss = np.power(ax, alpha, dtype=np.float64).reshape(len(x), -1).sum(axis=1)
        return loss, (alpha * np.power(ax, alpha - 1) * np.sign(x)).astype(x.dtype)

    return host_term(INPUT, fn, f"alpha_norm({alpha:g})")


def total_variation(beta=2.0, eps=1e-8):
    """Sum over pixels of ((x[i,j+1]-x[i,j])^2 + (x[i+1,j]-x[i,j])^2)^(beta/2), per sample.

    Mahendran & Vedaldi's TV^beta regulariser (the last row/column use zero differences).
    """

    def score(acc, weight):
        acc.ops.variation_sum(acc.acts[INPUT], beta, eps, weight, acc.loss, acc.grads[INPUT])

    return Objective(score, [INPUT], f"total_variation({beta:g})")
