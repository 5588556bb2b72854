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
