"""Image parameterisations: what a feature-visualisation optimiser moves, and how it becomes an image.

Lucid (and Lucent, ``optvis/param``) optimise an image through a reparameterisation: a spectrum
whose frequencies are scaled by 1/f (``fft``), in a decorrelated colour space (``decorrelate``),
squashed into the valid range by a sigmoid. The same pictures then come out sharper and with
natural colours, because plain gradient steps favour high frequencies and correlated colours.
Here each piece is a ``Stage`` with an exact adjoint, on a backend's arrays through its ops, and
``image(...)`` composes them as Lucent's ``param.image(...)`` does.

Contract of an ``ImageParam`` built for a backend and a batch shape (N, H, W):

* ``params``: a backend array of ``param_shape``, float32 (the backend's dtype); ``initial(seed)``
  draws Lucid's start, normal with standard deviation ``sd`` (0.01), as a host array.
* ``forward(params) -> images``: (N, H, W, 3) float32 NHWC **in convscope's input convention**, the
  caffe preprocessing of ``engine/preprocess.py``: BGR, ImageNet mean subtracted, pixel units
  (0..255 minus the mean): what ``Model.trace`` takes.
* ``backward(grad_images) -> grad_params``: the exact adjoint (Jacobian transpose) of ``forward``
  at the params of the last ``forward`` call, for d loss / d images shaped like images.
* Results are buffers of the object's ``Buffers``, overwritten by the next call (the identity
  returns its argument itself): copy what must outlive a step. Nothing crosses to the host (the
  constants go to the device once).

The stages, in order (``image`` picks them):

1. spatial: ``Pixel`` (the identity: the params are the image) or ``Fourier``: params
   (N, 3, H, W//2+1, 2), real and imaginary parts of a half spectrum (Lucid's layout), times
   1 / max(f, 1/max(H, W)) ** decay_power (f in cycles per pixel), through the orthonormal inverse
   real DFT (``irfft2_forward``), divided by 4 (Lucid's constant, "reduces saturation"). For an
   odd W Lucid's spectrum has one more column, which its inverse DFT never reads; here it is
   left out, so Lucid's even-width spectra load as they are and odd-width ones less that column.
2. colour: ``ColourAffine``: each pixel's 3 values times a 3x3 matrix plus a bias (``dense_forward``).
   ``decorrelate`` uses Lucid's square root of the ImageNet colour correlation, normalised by its
   largest column norm; with ``valid="clip"`` the bias is Lucid's colour mean (0.48, 0.46, 0.41).
3. valid range, RGB in [0, 1]: ``Sigmoid`` (Lucid's default) or ``Clip`` (its adjoint passes the
   gradient only where 0 < value < 1; the values are centred first, on the colour mean or 0.5,
   so that a start near 0 is mid-gray rather than at the clipped edge, where no gradient passes).
4. ``ColourAffine`` to caffe: BGR = 255 * RGB reversed, minus the ImageNet mean.

With ``valid=None`` the spatial stage's output is the network input itself (caffe units) and no
colour stage applies: ``image(fft=False, decorrelate=False, valid=None)`` is the identity, the
Keras pixel-space algorithm unchanged.
"""

import numpy as np

from engine.backend import Buffers, get_backend
from engine.preprocess import CAFFE_MEAN_BGR
from kernels import RELU_STANDARD

# Lucid's square root of the ImageNet colour correlation (from its SVD), rows RGB.
COLOR_CORRELATION_SVD_SQRT = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)
COLOR_CORRELATION_NORMALIZED = COLOR_CORRELATION_SVD_SQRT / np.max(
    np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0)
)
COLOR_MEAN = np.asarray([0.48, 0.46, 0.41], dtype=np.float32)  # Lucid's, RGB in [0, 1]
FOURIER_DIVISOR = 4.0  # Lucid divides the Fourier image by 4
VALID = ("sigmoid", "clip", None)


def fourier_scale(height: int, width: int, decay_power: float = 1.0) -> np.ndarray:
    """(H, W//2+1) float64 weights 1 / max(f, 1/max(H, W)) ** decay_power, f = |frequency| in
    cycles per pixel at each entry of a half spectrum (numpy.fft.rfft2's order)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[: width // 2 + 1]
    frequency = np.sqrt(fx * fx + fy * fy)
    return 1.0 / np.maximum(frequency, 1.0 / max(height, width)) ** decay_power


class Stage:
    """One step of a parameterisation: ``forward(x) -> y`` and the adjoint ``backward(g)``
    at the last forward's x. ``input_shape(output_shape)`` says what it takes."""

    def bind(self, work: Buffers, key, image_shape):
        """Called once by ``ImageParam``: buffers come from ``work`` under ``key``."""
        self.work, self.ops, self.key = work, work.ops, key
        self.image_shape = image_shape

    def input_shape(self, shape):
        return shape

    def forward(self, x):
        raise NotImplementedError

    def backward(self, g):
        raise NotImplementedError

    def _buffer(self, role, shape):
        return self.work.get((self.key, role), shape)


class Pixel(Stage):
    """The identity: the params are the image."""

    def forward(self, x):
        return x

    def backward(self, g):
        return g


class Fourier(Stage):
    """A half spectrum (N, 3, H, W//2+1, 2) scaled by 1/f ** decay_power -> an image (N, H, W, 3)."""

    def __init__(self, decay_power: float = 1.0):
        self.decay_power = decay_power

    def input_shape(self, shape):
        n, height, width, channels = shape
        return (n, channels, height, width // 2 + 1, 2)

    def _scale(self, height, width):
        host = fourier_scale(height, width, self.decay_power) / FOURIER_DIVISOR
        dtype = self.work.backend.dtype
        return self.work.constant((self.key, "scale", height, width), host.astype(dtype))

    def forward(self, x):
        n, channels, height = x.shape[:3]
        width = self.image_shape[2]  # W//2+1 frequency columns fit two widths: the batch's says which
        out = self._buffer("out", (n, height, width, channels))
        return self.ops.irfft2_forward(x, self._scale(height, width), out)

    def backward(self, g):
        n, height, width, channels = g.shape
        grad = self._buffer("grad", self.input_shape(g.shape))
        return self.ops.irfft2_backward(g, self._scale(height, width), grad)


class ColourAffine(Stage):
    """Each pixel's 3 channels: y = x @ matrix + bias (``dense_forward`` on (N*H*W, 3) rows)."""

    def __init__(self, matrix, bias):
        self.matrix = np.asarray(matrix, dtype=np.float64)
        self.bias = np.asarray(bias, dtype=np.float64)

    def _constants(self):
        dtype = self.work.backend.dtype
        return (
            self.work.constant((self.key, "matrix"), self.matrix.astype(dtype)),
            self.work.constant((self.key, "bias"), self.bias.astype(dtype)),
        )

    def forward(self, x):
        matrix, bias = self._constants()
        out = self._buffer("out", x.shape)
        rows = x.size // 3
        self.ops.dense_forward(x.reshape(rows, 3), matrix, bias, False, out.reshape(rows, 3))
        return out

    def backward(self, g):
        matrix, _ = self._constants()
        grad = self._buffer("grad", g.shape)
        rows = g.size // 3
        self.ops.dense_backward_input(g.reshape(rows, 3), matrix, grad.reshape(rows, 3))
        return grad


class Sigmoid(Stage):
    """y = 1 / (1 + exp(-x)); the adjoint multiplies by y (1 - y)."""

    def forward(self, x):
        self._y = self.ops.sigmoid_forward(x, self._buffer("out", x.shape))
        return self._y

    def backward(self, g):
        return self.ops.sigmoid_backward(g, self._y, self._buffer("grad", g.shape))


class Clip(Stage):
    """y = min(max(x, 0), 1) as two ReLUs, y = 1 - relu(1 - relu(x)); the adjoint passes the
    gradient where 0 < x < 1 (both ReLUs open), else 0."""

    def forward(self, x):
        ops = self.ops
        self._low = ops.relu_forward(x, self._buffer("low", x.shape))  # relu(x)
        flipped = ops.axpy(-1.0, self._low, ops.fill(1.0, self._buffer("flipped", x.shape)))
        self._high = ops.relu_forward(flipped, self._buffer("high", x.shape))  # relu(1 - relu(x))
        return ops.axpy(-1.0, self._high, ops.fill(1.0, self._buffer("out", x.shape)))

    def backward(self, g):
        ops = self.ops
        negated = ops.axpy(-1.0, g, ops.fill(0.0, self._buffer("negated", g.shape)))
        through_high = ops.relu_backward(negated, self._high, RELU_STANDARD, self._buffer("through high", g.shape))
        flipped = ops.axpy(-1.0, through_high, ops.fill(0.0, self._buffer("flipped grad", g.shape)))
        return ops.relu_backward(flipped, self._low, RELU_STANDARD, self._buffer("grad", g.shape))


def to_caffe() -> ColourAffine:
    """RGB in [0, 1] -> caffe BGR: out[..., j] = 255 * rgb[..., 2 - j] - mean_bgr[j]."""
    matrix = np.zeros((3, 3))
    for j in range(3):
        matrix[2 - j, j] = 255.0
    return ColourAffine(matrix, -np.asarray(CAFFE_MEAN_BGR, dtype=np.float64))


class ImageParam:
    """A composition of stages for one batch shape (N, H, W); see the module docstring."""

    def __init__(self, stages, shape, backend="cpu", sd: float = 0.01, work: Buffers | None = None):
        n, height, width = (int(s) for s in shape)
        if min(n, height, width) < 1:
            raise ValueError(f"an image batch needs a positive shape (N, H, W), got {tuple(shape)}")
        self.backend = get_backend(backend)
        self.work = work if work is not None else Buffers(self.backend)
        self.stages = list(stages)
        self.sd = float(sd)
        self.image_shape = (n, height, width, 3)
        for index, stage in enumerate(self.stages):
            stage.bind(self.work, ("image param", id(self), index), self.image_shape)
        shape = self.image_shape
        for stage in reversed(self.stages):
            shape = stage.input_shape(shape)
        self.param_shape = shape

    def __repr__(self):
        names = " -> ".join(type(stage).__name__ for stage in self.stages)
        return f"ImageParam({names}, images {self.image_shape})"

    def initial(self, seed: int = 0) -> np.ndarray:
        """Lucid's start: normal(0, sd) params, float32, from ``np.random.default_rng(seed)``."""
        rng = np.random.default_rng(seed)
        return (rng.standard_normal(self.param_shape) * self.sd).astype(np.float32)

    def forward(self, params):
        if tuple(params.shape) != self.param_shape:
            raise ValueError(f"params {tuple(params.shape)} do not fit {self!r}: expected {self.param_shape}")
        x = params
        for stage in self.stages:
            x = stage.forward(x)
        return x

    def backward(self, grad_images):
        if tuple(grad_images.shape) != self.image_shape:
            raise ValueError(f"gradient {tuple(grad_images.shape)} does not fit images {self.image_shape}")
        g = grad_images
        for stage in reversed(self.stages):
            g = stage.backward(g)
        return g


def image(
    shape,
    backend="cpu",
    fft: bool = True,
    decorrelate: bool = True,
    valid: str | None = "sigmoid",
    decay_power: float = 1.0,
    sd: float = 0.01,
    work: Buffers | None = None,
) -> ImageParam:
    """Lucent's ``param.image``: the parameterisation of an image batch of ``shape`` (N, H, W).

    Defaults are Lucid's (Fourier, decorrelated colour, sigmoid); ``fft=False, decorrelate=False,
    valid=None`` is the identity (pixel-space ascent on caffe images). ``backend``: a name or an
    ``engine.backend.Backend``; ``work``: a ``Buffers`` to share with the optimisation loop.
    """
    if valid not in VALID:
        raise ValueError(f"unknown valid-range mapping {valid!r}: use 'sigmoid', 'clip' or None")
    if decorrelate and valid is None:
        raise ValueError("decorrelate needs valid='sigmoid' or 'clip': its colour space is Lucid's RGB in [0, 1]")
    stages = [Fourier(decay_power) if fft else Pixel()]
    if valid is not None:
        if decorrelate or valid == "clip":
            matrix = COLOR_CORRELATION_NORMALIZED.T if decorrelate else np.eye(3, dtype=np.float32)
            center = np.zeros(3) if valid == "sigmoid" else (COLOR_MEAN if decorrelate else np.full(3, 0.5))
            stages.append(ColourAffine(matrix, center))
        stages.append(Sigmoid() if valid == "sigmoid" else Clip())
        stages.append(to_caffe())
    return ImageParam(stages, shape, backend=backend, sd=sd, work=work)
