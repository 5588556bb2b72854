"""NumPy reference of every op: the test oracle and the benchmark baseline.

Shapes follow ``kernels/__init__.py``: activations NHWC, conv kernels (kh, kw, c_in, c_out) as
cross-correlation, dense kernels (n_in, n_out). Every op writes into ``out`` (or ``grad_in``) and
returns it. Written for clarity, not speed; works in float32 and float64.

Convolution geometry: ``pad = (top, left)`` zero rows/columns conceptually added before the input;
the output size is the size of ``out``. Input pixel ``(iy, ix)`` feeds output ``(oy, ox)`` through
kernel tap ``(ky, kx)`` when ``iy = oy + ky - top`` and ``ix = ox + kx - left``; taps that fall
outside the input read zero. Keras ``same`` is ``top = (kh - 1) // 2``, output = input size;
``valid`` is ``top = 0``, output = input - kernel + 1.
"""

import numpy as np

from kernels import RELU_DECONV, RELU_GUIDED, RELU_STANDARD


def _padded(x, pad, out_hw, kh, kw):
    """x placed in a zero canvas of (Ho + kh - 1, Wo + kw - 1) at offset pad."""
    n, h, w, c = x.shape
    top, left = pad
    canvas = np.zeros((n, out_hw[0] + kh - 1, out_hw[1] + kw - 1, c), dtype=x.dtype)
    hh = min(h, canvas.shape[1] - top)
    ww = min(w, canvas.shape[2] - left)
    canvas[:, top : top + hh, left : left + ww, :] = x[:, :hh, :ww, :]
    return canvas


def conv2d_forward(x, kernel, bias, pad, relu, out):
    """out = [relu](bias + x (*) kernel); x (N,H,W,Ci), kernel (kh,kw,Ci,Co), out (N,Ho,Wo,Co)."""
    kh, kw = kernel.shape[:2]
    ho, wo = out.shape[1:3]
    xp = _padded(x, pad, (ho, wo), kh, kw)
    acc = np.zeros(out.shape, dtype=np.float64)
    for ky in range(kh):
        for kx in range(kw):
            acc += xp[:, ky : ky + ho, kx : kx + wo, :].astype(np.float64) @ kernel[ky, kx]
    acc += bias
    if relu:
        np.maximum(acc, 0.0, out=acc)
    out[...] = acc
    return out


def conv2d_backward_input(grad_out, kernel, pad, grad_in):
    """grad_in = d sum(grad_out * conv(x)) / dx (the transposed convolution), before any ReLU."""
    kh, kw = kernel.shape[:2]
    n, ho, wo, _ = grad_out.shape
    h, w = grad_in.shape[1:3]
    top, left = pad
    canvas = np.zeros((n, ho + kh - 1, wo + kw - 1, grad_in.shape[3]), dtype=np.float64)
    g = grad_out.astype(np.float64)
    for ky in range(kh):
        for kx in range(kw):
            canvas[:, ky : ky + ho, kx : kx + wo, :] += g @ kernel[ky, kx].T
    grad_in[...] = 0
    hh = min(h, canvas.shape[1] - top)
    ww = min(w, canvas.shape[2] - left)
    grad_in[:, :hh, :ww, :] = canvas[:, top : top + hh, left : left + ww, :]
    return grad_in


def relu_forward(x, out):
    np.maximum(x, 0, out=out)
    return out


def relu_backward(grad_out, y, mode, grad_in):
    """y is the ReLU's forward output. mode: RELU_STANDARD, RELU_GUIDED or RELU_DECONV."""
    if mode == RELU_STANDARD:
        grad_in[...] = np.where(y > 0, grad_out, 0)
    elif mode == RELU_GUIDED:
        grad_in[...] = np.where((y > 0) & (grad_out > 0), grad_out, 0)
    elif mode == RELU_DECONV:
        grad_in[...] = np.where(grad_out > 0, grad_out, 0)
    else:
        raise ValueError(f"unknown ReLU backward mode {mode}")
    return grad_in


def maxpool_forward(x, pool, out, argmax):
    """Non-overlapping pool (stride = pool, 'valid'); argmax = dy * pw + dx of the first maximum."""
    ph, pw = pool
    n, ho, wo, c = out.shape
    windows = x[:, : ho * ph, : wo * pw, :].reshape(n, ho, ph, wo, pw, c)
    windows = windows.transpose(0, 1, 3, 2, 4, 5).reshape(n, ho, wo, ph * pw, c)
    argmax[...] = np.argmax(windows, axis=3)
    out[...] = np.max(windows, axis=3)
    return out


def maxpool_backward(grad_out, argmax, pool, grad_in):
    """Route each pooled gradient to the input position that won the forward max."""
    ph, pw = pool
    n, ho, wo, c = grad_out.shape
    grad_in[...] = 0
    dy, dx = np.divmod(argmax, pw)
    ni, yi, xi, ci = np.indices(grad_out.shape)
    grad_in[ni, yi * ph + dy, xi * pw + dx, ci] = grad_out
    return grad_in


def dense_forward(x, kernel, bias, relu, out):
    """out = [relu](x @ kernel + bias); x (N, n_in), kernel (n_in, n_out)."""
    acc = x.astype(np.float64) @ kernel + bias
    if relu:
        np.maximum(acc, 0.0, out=acc)
    out[...] = acc
    return out


def dense_backward_input(grad_out, kernel, grad_in):
    grad_in[...] = grad_out.astype(np.float64) @ kernel.T
    return grad_in


def softmax_forward(x, out):
    """Softmax over the last axis, shifted by the row max for stability."""
    z = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out[...] = e / e.sum(axis=-1, keepdims=True)
    return out


def softmax_backward(grad_out, y, grad_in):
    """y = softmax output; grad_in = y * (grad_out - sum(grad_out * y))."""
    g = grad_out.astype(np.float64)
    grad_in[...] = y * (g - (g * y).sum(axis=-1, keepdims=True))
    return grad_in


def sigmoid_forward(x, out):
    """1 / (1 + exp(-x)), through exp(-|x|) so that no exponent overflows."""
    x = x.astype(np.float64)
    e = np.exp(-np.abs(x))
    out[...] = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out


def sigmoid_backward(grad_out, y, grad_in):
    grad_in[...] = grad_out * y * (1.0 - y)
    return grad_in


# --- the ops of the optimisation loop (engine/viz/optimise.py): scores, steps, image moves ----
#
# Scores add ``weight * S_n(x)`` to ``total[n]`` and ``weight * dS_n/dx`` to ``grad`` (both
# accumulated, so several weighted terms share one loss and one gradient buffer). ``region`` is
# (y0, y1, x0, x1): the rows and columns of x that count, half-open. Per-sample statistics run
# over all of a sample's values (axis 0 is the batch).

SCALE_METHODS = ("rms", "mean_abs")


def fill(value, out):
    out[...] = value
    return out


def axpy(alpha, x, y):
    """y += alpha * x, in y's dtype (as the device kernels compute it)."""
    y += y.dtype.type(alpha) * x
    return y


def masked_axpy(alpha, scale, x, active, y):
    """y[n] += (alpha * scale[n]) * x[n] for every sample n with active[n] != 0, in y's dtype
    (as the device kernel computes it)."""
    factor = y.dtype.type(alpha) * scale.astype(y.dtype)
    for n in np.flatnonzero(np.asarray(active) != 0):  # in place, a sample at a time
        y[n] += factor[n] * x[n]
    return y


def sample_scale(grad, method, eps, out):
    """out[n] = 1 / (sqrt(mean(grad[n]**2)) + eps) ("rms"), or 1 / max(mean(|grad[n]|), eps)
    ("mean_abs"): the factor that normalises each sample's gradient."""
    if method not in SCALE_METHODS:
        raise ValueError(f"unknown gradient scale {method!r}: use one of {', '.join(SCALE_METHODS)}")
    for n in range(len(grad)):  # a sample at a time: its float64 copy stays in cache
        g = grad[n].reshape(-1).astype(np.float64)
        if method == "rms":
            out[n] = 1.0 / (np.sqrt(np.mean(g * g)) + eps)
        else:
            out[n] = 1.0 / np.maximum(np.mean(np.abs(g)), eps)
    return out


def channel_sum(x, index, region, weight, total, grad):
    """S_n = sum of x[n, region, index[n]] (each sample its own channel); dS_n/dx is 1 there."""
    y0, y1, x0, x1 = region
    rows = np.arange(len(x))
    index = np.asarray(index)
    window = x[:, y0:y1, x0:x1, :][rows, :, :, index]  # (N, h, w)
    total += weight * window.reshape(len(x), -1).sum(axis=1, dtype=np.float64)
    grad_window = grad[:, y0:y1, x0:x1, :]
    grad_window[rows, :, :, index] += weight
    return total


def square_sum(x, center, region, weight, total, grad):
    """S_n = sum over region of (x[n] - center)**2; dS_n/dx = 2 (x - center) there."""
    y0, y1, x0, x1 = region
    d = x[:, y0:y1, x0:x1, :].astype(np.float64) - center
    total += weight * (d * d).reshape(len(x), -1).sum(axis=1)
    grad[:, y0:y1, x0:x1, :] += (2.0 * weight * d).astype(grad.dtype)
    return total


def variation_sum(x, beta, eps, weight, total, grad):
    """S_n = sum over pixels of (dx**2 + dy**2 + eps)**(beta/2), dx = x[i, j+1] - x[i, j] and
    dy = x[i+1, j] - x[i, j] (zero on the last column / row): total variation TV^beta."""
    x = x.astype(np.float64)
    dx = np.zeros_like(x)
    dy = np.zeros_like(x)
    dx[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
    dy[:, :-1] = x[:, 1:] - x[:, :-1]
    s = dx * dx + dy * dy + eps
    total += weight * np.power(s, beta / 2).reshape(len(x), -1).sum(axis=1)
    c = beta * np.power(s, beta / 2 - 1)
    cdx, cdy = c * dx, c * dy
    g = -(cdx + cdy)
    g[:, :, 1:] += cdx[:, :, :-1]
    g[:, 1:] += cdy[:, :-1]
    grad += (weight * g).astype(grad.dtype)
    return total


def roll(x, shift, out):
    """out = x shifted circularly by shift = (dy, dx) pixels along H and W (as np.roll)."""
    out[...] = np.roll(x, tuple(int(s) for s in shift), axis=(1, 2))
    return out


def interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) float64 bilinear weights, half-pixel centres, clamped at the edges."""
    if n_out < 1 or n_in < 1:
        raise ValueError(f"cannot resize {n_in} pixels to {n_out}")
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, i0), 1.0 - frac)
    np.add.at(matrix, (rows, i1), frac)
    return matrix


def resize_bilinear(x, out):
    """out = x resized to out's (H, W): bilinear, half-pixel centres, edges clamped, no
    antialiasing (tf.image.resize); in float64, rounded once to out's dtype."""
    height, width = out.shape[1:3]
    if (height, width) == tuple(x.shape[1:3]):
        out[...] = x
        return out
    ry = interpolation_matrix(height, x.shape[1])
    rx = interpolation_matrix(width, x.shape[2])
    rows = np.einsum("oh,nhwc->nowc", ry, x.astype(np.float64), optimize=True)
    out[...] = np.einsum("pw,nowc->nopc", rx, rows, optimize=True)
    return out


def copy_window(x, origin, out):
    """out = the window of x at origin = (y, x) with out's height and width."""
    y0, x0 = origin
    out[...] = x[:, y0 : y0 + out.shape[1], x0 : x0 + out.shape[2], :]
    return out


def add_window(window, origin, out):
    """out[:, y:y+h, x:x+w] += window, at origin = (y, x)."""
    y0, x0 = origin
    out[:, y0 : y0 + window.shape[1], x0 : x0 + window.shape[2], :] += window
    return out


# --- the Fourier image parameterisation: a weighted half spectrum <-> an image batch ---------
#
# The real-linear map F: (N, C, H, Wf, 2) -> (N, H, W, C), Wf = W // 2 + 1, of numpy.fft.irfft2
# with norm="ortho" applied to scale * (re + i im):
#
#     out[n, y, x, c] = sum over ky < H, k < Wf of  h_k / sqrt(H W) * Re(s[ky, k] X[n, c, ky, k]
#                                                       * exp(2 pi i (ky y / H + k x / W)))
#
# with h_k = 1 for k = 0 and, when W is even, k = W / 2 (the columns that are their own Hermitian
# mirror), else 2. Imaginary parts that multiply sin(0) or sin(pi y) (X[0, 0], X[H/2, 0], ...)
# do not reach the image: their adjoint is 0. The adjoint is h_k s[ky, k] rfft2(g, "ortho").


def hermitian_weights(width: int) -> np.ndarray:
    """h_k of the comment above: how often column k of a width-``width`` half spectrum counts."""
    weights = np.full(width // 2 + 1, 2.0)
    weights[0] = 1.0
    if width % 2 == 0:
        weights[-1] = 1.0
    return weights


def irfft2_forward(spectrum, scale, out):
    """out (N,H,W,C) = irfft2(scale * spectrum, norm="ortho") per image and channel;
    spectrum (N, C, H, W//2+1, 2) (real, imaginary), scale (H, W//2+1) real."""
    height, width = out.shape[1:3]
    z = (spectrum[..., 0].astype(np.float64) + 1j * spectrum[..., 1]) * scale
    out[...] = np.fft.irfft2(z, s=(height, width), norm="ortho").transpose(0, 2, 3, 1)
    return out


def irfft2_backward(grad_out, scale, grad_spectrum):
    """The adjoint of ``irfft2_forward``: grad_spectrum (N, C, H, W//2+1, 2) from grad_out (N,H,W,C)."""
    width = grad_out.shape[2]
    g = grad_out.transpose(0, 3, 1, 2).astype(np.float64)
    z = np.fft.rfft2(g, norm="ortho") * (scale * hermitian_weights(width))
    grad_spectrum[..., 0] = z.real
    grad_spectrum[..., 1] = z.imag
    return grad_spectrum
