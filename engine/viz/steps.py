"""Step rules for ``optimise``: how a batch moves given the gradient of its objective.

A rule has ``start(buffers, x)`` (once per run), ``seen(buffers, x)`` (the image the objective
is evaluated at, and the result: x itself, or a quantised copy) and ``update(buffers, x, g,
active, mask)`` (move the samples with ``active[n]``, a host (N,) bool; ``mask`` is the same as
an int32 backend array). x and g are (N, H, W, C) arrays of the run's backend; a rule holds the
state of one run at a time.

* ``Ascent(step_size, normalize, eps)``: x += step_size * g / s_n per sample, with
  s_n = sqrt(mean(g_n^2)) + eps (``"rms"``, the Keras filter example, eps 1e-5),
  max(mean(|g_n|), eps) (``"mean_abs"``, Keras DeepDream, eps 1e-7), or 1 (``None``). Backend
  ops (``sample_scale``, ``masked_axpy``): on CUDA it stays on the device.
* ``Adam(lr, betas, eps, bounds, quantize)`` (Kingma & Ba 2015), per value and per sample:
  m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; x -= lr m_hat / (sqrt(v_hat) + eps), the bias
  corrections counting each sample's own updates; then x = clip(x, low, high) when ``bounds``.
  ``quantize`` (e.g. ``caffe_quantize``): the objective is evaluated at quantize(x) and its
  gradient applied to the float x (straight-through), and the result is quantize(x), so a
  stopping rule judges exactly the image that will be saved. It minimises; ``lr`` is in input
  units. Its arithmetic is NumPy on the host copy of x and g (no op computes it yet: on a device
  backend the gradient comes to the host and the image goes back each step).
* ``LBFGS(maxcor)``: scipy's L-BFGS-B (the optional ``texture`` extra) on the whole batch as one
  vector (the samples' losses add up), bounds as boxes; it minimises and drives its own line
  searches (``minimise``), each evaluation one gradient of the loop's; ``steps`` bounds them.
"""

import numpy as np

from engine.errors import ConvscopeError
from engine.preprocess import CAFFE_MEAN_BGR

# The range of caffe-preprocessed VGG16 inputs (BGR, mean subtracted): pixels 0..255.
CAFFE_LOW = -np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
CAFFE_HIGH = np.float32(255.0) - np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
CAFFE_BOUNDS = (CAFFE_LOW, CAFFE_HIGH)

NORMALIZE_EPS = {"rms": 1e-5, "mean_abs": 1e-7}


def caffe_quantize(x) -> np.ndarray:
    """Round a caffe-space image to the 8-bit pixel grid (what ``deprocess`` then saves)."""
    mean = np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
    return (np.rint(np.asarray(x, np.float32) + mean) - mean).astype(np.float32)


class Ascent:
    def __init__(self, step_size: float = 1.0, normalize: str | None = "rms", eps: float | None = None):
        if normalize is not None and normalize not in NORMALIZE_EPS:
            raise ValueError(f"unknown gradient normalisation {normalize!r}: use rms, mean_abs or None")
        self.step_size, self.normalize = float(step_size), normalize
        self.eps = NORMALIZE_EPS.get(normalize) if eps is None else eps

    def start(self, buffers, x):
        pass

    def seen(self, buffers, x):
        return x

    def update(self, buffers, x, g, active, mask):
        ops = buffers.ops
        scale = buffers.get("scale", (x.shape[0],))
        if self.normalize is None:
            ops.fill(1.0, scale)
        else:
            ops.sample_scale(g, self.normalize, self.eps, scale)
        ops.masked_axpy(self.step_size, scale, g, mask, x)


class Adam:
    def __init__(self, lr: float = 1.0, betas=(0.9, 0.999), eps: float = 1e-8, bounds=None, quantize=None):
        self.lr, self.betas, self.eps, self.quantize = lr, betas, eps, quantize
        self.bounds = None if bounds is None else tuple(np.asarray(b, dtype=np.float32) for b in bounds)

    def start(self, buffers, x):
        host = buffers.backend.to_host(x, copy=False)
        if self.bounds is not None:
            buffers.backend.copy_into(np.clip(host, *self.bounds), x)
        self.m, self.v = np.zeros(x.shape, np.float32), np.zeros(x.shape, np.float32)
        self.t = np.zeros(x.shape[0], dtype=np.int64)

    def seen(self, buffers, x):
        if self.quantize is None:
            return x
        quantized = self.quantize(buffers.backend.to_host(x, copy=False))
        return buffers.backend.copy_into(quantized, buffers.get("quantized", x.shape))

    def update(self, buffers, x, g, active, mask):
        backend = buffers.backend
        host, g = backend.to_host(x, copy=False), backend.to_host(g, copy=False)
        b1, b2 = self.betas
        m, v, t = self.m, self.v, self.t
        idx = np.flatnonzero(active)
        t[idx] += 1
        ga = g[idx]
        m[idx] = b1 * m[idx] + (1 - b1) * ga
        v[idx] = b2 * v[idx] + (1 - b2) * ga * ga
        shape = (-1,) + (1,) * (x.ndim - 1)
        m_hat = m[idx] / (1 - b1 ** t[idx]).reshape(shape)
        v_hat = v[idx] / (1 - b2 ** t[idx]).reshape(shape)
        host[idx] -= (np.float32(self.lr) * m_hat / (np.sqrt(v_hat) + self.eps)).astype(np.float32)
        if self.bounds is not None:
            host[idx] = np.clip(host[idx], *self.bounds)
        backend.copy_into(host, x)


class LBFGS:
    def __init__(self, bounds=None, maxcor: int = 20):
        self.bounds, self.maxcor = bounds, maxcor

    def minimise(self, evaluate, start, steps, callback):
        """Run scipy from the host batch ``start``; ``evaluate(x)`` -> host (loss (N,), g).
        Returns (images, losses (evaluations, N)), host float32."""
        require_lbfgs()
        from scipy.optimize import Bounds, minimize

        shape, n = start.shape, start.shape[0]
        bounds = self.bounds or (-np.inf, np.inf)
        low, high = (np.broadcast_to(b, shape).ravel().astype(np.float64) for b in bounds)
        history = []

        def fun(v):
            loss, g = evaluate(v.reshape(shape).astype(np.float32))
            history.append(loss)
            if callback is not None:
                callback(len(history) - 1, loss)
            return float(np.sum(loss, dtype=np.float64)), g.ravel().astype(np.float64)

        x0 = np.clip(start.ravel().astype(np.float64), low, high)
        # maxfun bounds the passes (line searches may take several per iteration)
        options = {"maxiter": steps, "maxfun": steps, "maxcor": self.maxcor, "ftol": 0.0, "gtol": 0.0}
        result = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=Bounds(low, high), options=options)
        return result.x.reshape(shape).astype(np.float32), np.array(history, np.float32).reshape(len(history), n)


def scipy_available() -> bool:
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:
        return False
    return True


def require_lbfgs() -> None:
    """A one-line error naming the extra when scipy (L-BFGS) is not installed."""
    if not scipy_available():
        raise ConvscopeError("L-BFGS needs scipy: pip install 'convscope[texture]' (or use --method adam)")
