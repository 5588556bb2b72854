"""Random image transforms for feature visualization, each with its exact adjoint.

Gradient ascent through a transform T optimises the objective of T(x), so the gradient that
reaches the image is T^T applied to the gradient at T(x). Lucid/Lucent get T^T from autograd;
here each transform states it, on a backend's arrays:
``apply(backend, x, rng, out) -> state`` writes T(x) into ``out``;
``adjoint(backend, g, state, out) -> out`` writes T^T g into ``out``.

* ``pad(pixels, value)``: a border of ``value`` (a number or one per channel) around each image,
  (N, H, W, C) -> (N, H + 2p, W + 2p, C), on the backend's ``add_window`` op; its adjoint is
  the crop ``copy_window`` (the border's gradient goes nowhere: it is a constant).
* ``jitter(pixels)``: a random circular shift per step (the TensorFlow DeepDream tutorial's
  roll), the backend's ``roll`` op; its adjoint is the opposite shift, so it is exactly invertible.
* ``scale(factors)`` and ``rotate(degrees)``: bilinear resampling about the image centre with
  clamped edges; the adjoint scatters each output gradient back onto the four input pixels with
  the same weights. No op does this (the scatter would need float atomics on a GPU, and give
  different bytes from run to run): it runs in NumPy on the host copy of the batch, and on a
  device backend says so once with a ``RuntimeWarning`` (a copy each way per step and adjoint).

``standard_transforms`` is Lucid's recipe (Lucent's ``transform.standard_transforms``): pad 12
(gray), jitter 8, random scale among 1 + (i - 5) / 50 for i in 0..10, random rotation among
-10..10 degrees (0 five more times), jitter 4. Differences, deliberate: the jitter is circular
and moves -p..p pixels (Lucent's ``translate`` moves 0..p-1 and fills zeros); scale and rotation
are one resampling (both about the centre, so they commute) that keeps the image's size (Lucent's
scale changes it by up to 10%).

One random draw per step serves the whole batch. Arrays are NHWC, in the backend's dtype; a
transform's ``output_shape(shape)`` says what it makes of an input shape.
"""

import warnings

import numpy as np


class Transform:
    def output_shape(self, shape):
        return tuple(shape)

    def apply(self, backend, x, rng, out):
        raise NotImplementedError

    def adjoint(self, backend, g, state, out):
        raise NotImplementedError


class Pad(Transform):
    def __init__(self, pixels: int, value=0.0):
        self.pixels, self.value = int(pixels), np.asarray(value, dtype=np.float64)
        self._canvas = {}  # (backend, shape, dtype) -> the border with a zero inside, uploaded once

    def output_shape(self, shape):
        n, h, w, c = shape
        return (n, h + 2 * self.pixels, w + 2 * self.pixels, c)

    def apply(self, backend, x, rng, out):
        key = (backend.name, out.shape, np.dtype(out.dtype).str)
        if key not in self._canvas:
            p = self.pixels
            canvas = np.empty(out.shape, dtype=out.dtype)
            canvas[...] = self.value
            canvas[:, p : out.shape[1] - p, p : out.shape[2] - p, :] = 0
            self._canvas[key] = backend.asarray(canvas)
        backend.ops.add_window(x, (self.pixels, self.pixels), backend.copy_into(self._canvas[key], out))

    def adjoint(self, backend, g, state, out):
        return backend.ops.copy_window(g, (self.pixels, self.pixels), out)


class Jitter(Transform):
    def __init__(self, pixels: int):
        self.pixels = int(pixels)

    def _shift(self, rng):
        return tuple(int(v) for v in rng.integers(-self.pixels, self.pixels + 1, size=2))

    def apply(self, backend, x, rng, out):
        shift = self._shift(rng)
        backend.ops.roll(x, shift, out)
        return shift

    def adjoint(self, backend, g, state, out):
        dy, dx = state
        return backend.ops.roll(g, (-dy, -dx), out)


def _bilinear_taps(h, w, matrix):
    """For each output pixel, four flat source indices and weights of an affine resampling.

    ``matrix`` maps output coordinates (centred) to input coordinates (centred).
    """
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    oy, ox = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    sy = matrix[0, 0] * oy + matrix[0, 1] * ox + cy
    sx = matrix[1, 0] * oy + matrix[1, 1] * ox + cx
    sy = np.clip(sy, 0, h - 1)
    sx = np.clip(sx, 0, w - 1)
    y0 = np.minimum(np.floor(sy).astype(np.int64), h - 2 if h > 1 else 0)
    x0 = np.minimum(np.floor(sx).astype(np.int64), w - 2 if w > 1 else 0)
    fy, fx = sy - y0, sx - x0
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    index = [(y0 * w + x0), (y0 * w + x1), (y1 * w + x0), (y1 * w + x1)]
    weight = [(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx]
    return [i.reshape(-1) for i in index], [wt.reshape(-1).astype(np.float32) for wt in weight]


class Affine(Transform):
    """Resample by a random choice of scale factor and rotation angle."""

    def __init__(self, factors=(1.0,), degrees=(0.0,)):
        self.factors = tuple(float(f) for f in factors)
        self.degrees = tuple(float(d) for d in degrees)

    def apply(self, backend, x, rng, out):
        x = _on_host(self, backend, x)
        factor = self.factors[rng.integers(len(self.factors))]
        angle = np.deg2rad(self.degrees[rng.integers(len(self.degrees))])
        c, s = np.cos(angle), np.sin(angle)
        matrix = np.array([[c, -s], [s, c]]) / factor  # output -> input coordinates
        n, h, w, ch = x.shape
        index, weight = _bilinear_taps(h, w, matrix)
        flat = x.reshape(n, h * w, ch)
        y = sum(wt[None, :, None] * flat[:, i, :] for i, wt in zip(index, weight))
        backend.copy_into(y.reshape(x.shape).astype(out.dtype), out)
        return index, weight, x.shape

    def adjoint(self, backend, g, state, out):
        g = _on_host(self, backend, g)
        index, weight, shape = state
        n, h, w, ch = shape
        flat = g.reshape(n, h * w, ch)
        acc = np.zeros((n, ch, h * w), dtype=np.float64)
        for i, wt in zip(index, weight):
            for b in range(n):
                for c in range(ch):
                    acc[b, c] += np.bincount(i, weights=wt * flat[b, :, c], minlength=h * w)
        return backend.copy_into(acc.transpose(0, 2, 1).reshape(shape).astype(out.dtype), out)


def _on_host(transform, backend, x):
    """x as a host array, saying once when that took a copy from a device."""
    host = backend.to_host(x, copy=False)
    if host is not x:
        warnings.warn(
            f"{type(transform).__name__} has no {backend.name} kernel: it runs on the host, copying the "
            "image batch there and back at every step",
            RuntimeWarning,
            stacklevel=4,
        )
    return host


def pad(pixels: int, value=0.0) -> Pad:
    return Pad(pixels, value)


def jitter(pixels: int) -> Jitter:
    return Jitter(pixels)


def scale(factors) -> Affine:
    return Affine(factors=factors)


def rotate(degrees) -> Affine:
    return Affine(degrees=degrees)


LUCID_SCALES = tuple(1 + (i - 5) / 50.0 for i in range(11))
LUCID_DEGREES = tuple(range(-10, 11)) + (0,) * 5


def standard_transforms(pad_value=0.0, pad_pixels=12, jitter_pixels=8, factors=LUCID_SCALES, degrees=LUCID_DEGREES):
    """Lucid's recipe (see the module docstring): pad, jitter, scale and rotate, jitter half as
    far. ``pad_value``: gray in the units of the image being optimised (a number or per channel)."""
    moves = [Pad(pad_pixels, pad_value)] if pad_pixels else []
    return moves + [Jitter(jitter_pixels), Affine(factors, degrees), Jitter(max(1, jitter_pixels // 2))]


def apply_all(buffers, transforms, x, rng):
    """Apply ``transforms`` in order to x (arrays of ``buffers.backend``), each writing into its
    own buffer of ``buffers``; returns (T(x), states)."""
    states = []
    for i, t in enumerate(transforms):
        out = buffers.get(("transform", i), t.output_shape(x.shape))
        states.append((t.apply(buffers.backend, x, rng, out), x.shape))
        x = out
    return x, states


def adjoint_all(buffers, transforms, g, states):
    """The adjoint of ``apply_all``'s composition applied to g; the result is a buffer."""
    for i in reversed(range(len(transforms))):
        state, shape = states[i]
        g = transforms[i].adjoint(buffers.backend, g, state, buffers.get(("transform adjoint", i), shape))
    return g
