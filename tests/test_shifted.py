"""The shifted-sums convolution for few output channels (kernels/cpu/shifted.py) against
kernels/reference.py in float64, and the public ops' choice of it.

Shapes: kernel sizes 1-5 (odd and even), pads 'same', 'valid' and the full pad of an input
gradient, batches 1-2, 1-4 output channels, ReLU on and off, forward and transposed kernels,
float32 and float64. The bar: relative error < 1e-6 in float32 (measured ~1e-7), < 1e-12 in
float64.
"""

import numpy as np
import pytest

import kernels.cpu as cpu
from kernels import reference as ref
from kernels.cpu import conv, shifted
from tests.metrics import rel_err

# (batch, h, w, c_in, c_out, kh, kw, pad)
CASES = [
    (1, 9, 7, 64, 3, 3, 3, (1, 1)),
    (2, 6, 5, 5, 1, 3, 3, (0, 0)),
    (1, 5, 8, 17, 4, 2, 2, (1, 0)),
    (2, 4, 4, 3, 2, 5, 5, (4, 4)),
    (1, 7, 3, 31, 3, 1, 1, (0, 0)),
    (1, 2, 2, 8, 3, 3, 3, (2, 2)),
]


def layer(case, dtype):
    n, h, w, ci, co, kh, kw, pad = case
    rng = np.random.default_rng(sum(case[:7]))
    x = rng.standard_normal((n, h, w, ci)).astype(dtype)
    kernel = (rng.standard_normal((kh, kw, ci, co)) / np.sqrt(kh * kw * ci)).astype(dtype)
    bias = rng.standard_normal(co).astype(dtype)
    ho, wo = h + 2 * pad[0] - kh + 1, w + 2 * pad[1] - kw + 1
    return x, kernel, bias, (ho, wo)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:7])) + f"p{c[7][0]}{c[7][1]}")
def test_forward_matches_reference(case, relu, dtype, tol):
    x, kernel, bias, (ho, wo) = layer(case, dtype)
    pad = case[7]
    out = np.full((x.shape[0], ho, wo, kernel.shape[3]), np.nan, dtype)
    shifted.conv_shifted(x, kernel, bias, pad, relu, out)
    expected = ref.conv2d_forward(x.astype(np.float64), kernel.astype(np.float64),
                                  bias.astype(np.float64), pad, relu, np.empty(out.shape))
    assert rel_err(out, expected) < tol


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_transposed_kernel_is_the_input_gradient(dtype, tol):
    """The first layer's image gradient: 64 -> 3 channels through the flipped, transposed kernel."""
    rng = np.random.default_rng(3)
    kernel = (rng.standard_normal((3, 3, 3, 64)) / 5).astype(dtype)
    grad_out = rng.standard_normal((2, 11, 10, 64)).astype(dtype)
    grad_in = np.full((2, 11, 10, 3), np.nan, dtype)
    shifted.conv_shifted(grad_out, kernel, None, (1, 1), False, grad_in, True)
    expected = ref.conv2d_backward_input(grad_out.astype(np.float64), kernel.astype(np.float64),
                                         (1, 1), np.empty(grad_in.shape))
    assert rel_err(grad_in, expected) < tol


def test_public_ops_take_it_for_few_outputs_unless_gemm_is_asked(monkeypatch):
    calls = []
    real = shifted.conv_shifted
    monkeypatch.setattr(shifted, "conv_shifted", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(5)
    kernel = rng.standard_normal((3, 3, 3, 64)).astype(np.float32)
    kernel.flags.writeable = False
    grad_out = rng.standard_normal((1, 8, 8, 64)).astype(np.float32)
    a = cpu.conv2d_backward_input(grad_out, kernel, (1, 1), np.empty((1, 8, 8, 3), np.float32))
    assert calls == [1]
    b = cpu.conv2d_backward_input(grad_out, kernel, (1, 1), np.empty((1, 8, 8, 3), np.float32), algorithm="gemm")
    assert calls == [1] and rel_err(a, b) < 1e-6
    shape = (3, 3, 64, shifted.MAX_OUTPUT_CHANNELS + 1)
    assert conv.choose_algorithm(shape, (1, 1), (1, 8, 8, 64), (1, 8, 8, shape[3])) is not shifted.conv_shifted
    with pytest.raises(ValueError, match="unknown convolution algorithm"):
        conv.choose_algorithm(shape, (1, 1), (1, 8, 8, 64), (1, 8, 8, 5), algorithm="fast")
