"""Random image transforms for feature visualization, each with its exact adjoint.

Gradient ascent through a transform T optimises the objective of T(x), so the gradient that
reaches the image is T^T applied to the gradient at T(x). Lucid/Lucent get T^T from autograd;
here each transform states it: ``apply(x, rng) -> (y, state)`` and ``adjoint(g, state)``.

* ``jitter(pixels)``: a random circular shift per step (the TensorFlow DeepDream tutorial's
  roll); its adjoint is the opposite shift, so it is exactly invertible.
* ``scale(factors)`` and ``rotate(degrees)``: bilinear resampling about the image centre with
  clamped edges; the adjoint scatters each output gradient back onto the four input pixels with
  the same weights.

One random draw per step serves the whole batch. Arrays are host NHWC float32.

On a device backend (``apply_on`` / ``adjoint_on``, used by the ascent loop on CUDA) the batch
stays on the device where a transform has a kernel: ``jitter`` is the backend's ``roll`` op, which
moves the same values, so the result equals the host one exactly. ``scale`` and ``rotate`` have
no device kernel (their adjoint is a scatter, which on a GPU needs float atomics and would give
different bytes from run to run): on a device backend they copy the batch to the host, resample
it there and copy it back, at each step and for each adjoint, and say so once with a
``RuntimeWarning``. The rest of the step stays on the device.
"""

import warnings

import numpy as np


class Transform:
    def apply(self, x, rng):
        raise NotImplementedError

    def adjoint(self, g, state):
        raise NotImplementedError

    # --- on a backend's arrays (the device loop). Without a kernel: the host, explicitly.
    def apply_on(self, backend, x, rng, out):
        """Write the transformed x into ``out`` (arrays of ``backend``); return the state."""
        self._warn_host(backend)
        y, state = self.apply(backend.to_host(x), rng)
        backend.copy_into(y.astype(np.float32, copy=False), out)
        return state

    def adjoint_on(self, backend, g, state, out):
        """Write the adjoint of the transform applied to g into ``out`` (arrays of ``backend``)."""
        self._warn_host(backend)
        backend.copy_into(self.adjoint(backend.to_host(g), state).astype(np.float32, copy=False), out)
        return out

    def _warn_host(self, backend):
        if not backend.on_host:
            warnings.warn(
                f"{type(self).__name__} has no {backend.name} kernel: it runs on the host, copying the "
                "image batch there and back at every step",
                RuntimeWarning,
                stacklevel=4,
            )


class Jitter(Transform):
    def __init__(self, pixels: int):
        self.pixels = int(pixels)

    def _shift(self, rng):
        return tuple(int(v) for v in rng.integers(-self.pixels, self.pixels + 1, size=2))

    def apply(self, x, rng):
        dy, dx = self._shift(rng)
        return np.roll(x, (dy, dx), axis=(1, 2)), (dy, dx)

    def adjoint(self, g, state):
        dy, dx = state
        return np.roll(g, (-dy, -dx), axis=(1, 2))

    def apply_on(self, backend, x, rng, out):
        shift = self._shift(rng)
        backend.ops.roll(x, shift, out)
        return shift

    def adjoint_on(self, backend, g, state, out):
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

    def apply(self, x, rng):
        factor = self.factors[rng.integers(len(self.factors))]
        angle = np.deg2rad(self.degrees[rng.integers(len(self.degrees))])
        c, s = np.cos(angle), np.sin(angle)
        matrix = np.array([[c, -s], [s, c]]) / factor  # output -> input coordinates
        n, h, w, ch = x.shape
        index, weight = _bilinear_taps(h, w, matrix)
        flat = x.reshape(n, h * w, ch)
        y = sum(wt[None, :, None] * flat[:, i, :] for i, wt in zip(index, weight))
        return y.reshape(x.shape).astype(x.dtype), (index, weight, x.shape)

    def adjoint(self, g, state):
        index, weight, shape = state
        n, h, w, ch = shape
        flat = g.reshape(n, h * w, ch)
        out = np.zeros((n, ch, h * w), dtype=np.float64)
        for i, wt in zip(index, weight):
            for b in range(n):
                for c in range(ch):
                    out[b, c] += np.bincount(i, weights=wt * flat[b, :, c], minlength=h * w)
        return out.transpose(0, 2, 1).reshape(shape).astype(g.dtype)


def jitter(pixels: int) -> Jitter:
    return Jitter(pixels)


def scale(factors) -> Affine:
    return Affine(factors=factors)


def rotate(degrees) -> Affine:
    return Affine(degrees=degrees)


def standard_transforms(jitter_pixels=8, factors=(1.0, 0.975, 1.025, 0.95, 1.05), degrees=range(-5, 6)):
    """Lucid's usual recipe, sized for 128-224 px images: jitter, scale, rotate, jitter."""
    return [Jitter(jitter_pixels), Affine(factors, degrees), Jitter(max(1, jitter_pixels // 2))]


def apply_all(transforms, x, rng):
    states = []
    for t in transforms:
        x, state = t.apply(x, rng)
        states.append(state)
    return x, states


def adjoint_all(transforms, g, states):
    for t, state in zip(reversed(transforms), reversed(states)):
        g = t.adjoint(g, state)
    return g


def apply_all_on(work, transforms, x, rng):
    """``apply_all`` on the arrays of ``work.backend`` (an ``engine.backend.Workspace``), each
    transform writing into its own buffer of the workspace; returns (y, states)."""
    states = []
    for i, t in enumerate(transforms):
        out = work.buffer(("transform", i), x.shape)
        states.append(t.apply_on(work.backend, x, rng, out))
        x = out
    return x, states


def adjoint_all_on(work, transforms, g, states):
    """``adjoint_all`` on the arrays of ``work.backend``; the result is a workspace buffer."""
    for i in reversed(range(len(transforms))):
        out = work.buffer(("transform adjoint", i), g.shape)
        g = transforms[i].adjoint_on(work.backend, g, states[i], out)
    return g
