"""Every backward op against float64 central finite differences of its forward.

For a forward ``f`` and a random weighting ``w`` the loss ``L(x) = sum(w * f(x))`` has gradient
``backward(w, ...)``; each entry is checked against ``(L(x + e) - L(x - e)) / 2e``. Run in float64
on the reference and on the CPU backend (whose kernels are compiled for float64 too); the bar is
a relative error < 1e-6. Shapes are tiny because each input entry costs two forward calls. The
guided and deconv ReLU modes have no forward of their own, so they are checked against their
definitions instead (float64 and float32).
"""

import numpy as np
import pytest

import kernels.cpu as cpu
from kernels import RELU_DECONV, RELU_GUIDED, RELU_STANDARD
from kernels import reference as ref
from tests.metrics import rel_err

BACKENDS = {"reference": ref, "cpu": cpu}
EPS = 1e-6
TOL = 1e-6


def numeric_gradient(loss, x, eps=EPS):
    grad = np.empty_like(x)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        up = loss(x)
        flat[i] = saved - eps
        down = loss(x)
        flat[i] = saved
        g[i] = (up - down) / (2 * eps)
    return grad


def check(analytic, loss, x):
    numeric = numeric_gradient(loss, x.copy())
    err = rel_err(analytic, numeric)
    assert err < TOL, err


@pytest.fixture(params=sorted(BACKENDS))
def ops(request):
    return BACKENDS[request.param]


# (h, w, c_in, c_out, kh, kw, pad, out_hw)
CONV_CASES = [
    (5, 4, 2, 3, 3, 3, (1, 1), (5, 4)),  # same
    (5, 6, 2, 2, 3, 3, (0, 0), (3, 4)),  # valid
    (4, 5, 2, 2, 2, 2, (0, 0), (4, 5)),  # same, even kernel
    (5, 5, 1, 2, 4, 3, (1, 1), (5, 5)),  # same, even x odd kernel
    (6, 5, 2, 1, 2, 4, (0, 0), (5, 2)),  # valid, even kernels
    (4, 4, 3, 2, 1, 1, (0, 0), (4, 4)),  # pointwise
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[4]}x{c[5]}-pad{c[6][0]}{c[6][1]}")
def test_conv2d_backward_input(ops, case):
    h, w, ci, co, kh, kw, pad, (ho, wo) = case
    rng = np.random.default_rng(kh * 10 + kw)
    x = rng.standard_normal((2, h, w, ci))
    kernel, bias = rng.standard_normal((kh, kw, ci, co)), rng.standard_normal(co)
    weight = rng.standard_normal((2, ho, wo, co))
    out = np.empty((2, ho, wo, co))

    def loss(x):
        return np.sum(weight * ops.conv2d_forward(x, kernel, bias, pad, False, out))

    analytic = ops.conv2d_backward_input(weight, kernel, pad, np.empty_like(x))
    check(analytic, loss, x)


def test_relu_backward_standard(ops):
    rng = np.random.default_rng(1)
    x = rng.uniform(0.1, 1.0, (2, 3, 4, 2)) * rng.choice([-1.0, 1.0], (2, 3, 4, 2))
    weight = rng.standard_normal(x.shape)
    out = np.empty_like(x)

    def loss(x):
        return np.sum(weight * ops.relu_forward(x, out))

    y = ops.relu_forward(x, np.empty_like(x))
    analytic = ops.relu_backward(weight, y, RELU_STANDARD, np.empty_like(x))
    check(analytic, loss, x)


@pytest.mark.parametrize("pool,shape", [((2, 2), (2, 4, 6, 2)), ((3, 2), (1, 7, 5, 2))])
def test_maxpool_backward(ops, pool, shape):
    rng = np.random.default_rng(2)
    # distinct values at least 1e-3 apart: a 1e-6 step never changes a window's winner
    x = rng.permutation(np.prod(shape)).reshape(shape) * 1e-3 + rng.uniform(0, 1e-4, shape)
    out_shape = (shape[0], shape[1] // pool[0], shape[2] // pool[1], shape[3])
    weight = rng.standard_normal(out_shape)
    out, argmax = np.empty(out_shape), np.empty(out_shape, np.int32)

    def loss(x):
        return np.sum(weight * ops.maxpool_forward(x, pool, out, argmax))

    ops.maxpool_forward(x, pool, np.empty(out_shape), argmax)
    analytic = ops.maxpool_backward(weight, argmax.copy(), pool, np.empty_like(x))
    check(analytic, loss, x)


def test_dense_backward_input(ops):
    rng = np.random.default_rng(3)
    x, kernel, bias = rng.standard_normal((3, 7)), rng.standard_normal((7, 5)), rng.standard_normal(5)
    weight = rng.standard_normal((3, 5))
    out = np.empty((3, 5))

    def loss(x):
        return np.sum(weight * ops.dense_forward(x, kernel, bias, False, out))

    analytic = ops.dense_backward_input(weight, kernel, np.empty_like(x))
    check(analytic, loss, x)


def test_softmax_backward(ops):
    rng = np.random.default_rng(4)
    x, weight = rng.standard_normal((3, 6)) * 2, rng.standard_normal((3, 6))
    out = np.empty_like(x)

    def loss(x):
        return np.sum(weight * ops.softmax_forward(x, out))

    y = ops.softmax_forward(x, np.empty_like(x))
    analytic = ops.softmax_backward(weight, y, np.empty_like(x))
    check(analytic, loss, x)


def test_sigmoid_backward(ops):
    rng = np.random.default_rng(5)
    x, weight = rng.standard_normal((3, 6)) * 3, rng.standard_normal((3, 6))
    out = np.empty_like(x)

    def loss(x):
        return np.sum(weight * ops.sigmoid_forward(x, out))

    y = ops.sigmoid_forward(x, np.empty_like(x))
    analytic = ops.sigmoid_backward(weight, y, np.empty_like(x))
    check(analytic, loss, x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_guided_and_deconv_relu_match_their_definitions(ops, dtype):
    """Guided: standard ReLU gradient, then keep only positive gradients. Deconv: ignore the
    forward and keep only positive gradients (Springenberg et al. 2015; Zeiler & Fergus 2014)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    y = ops.relu_forward(x, np.empty_like(x))
    standard = ops.relu_backward(grad_out, y, RELU_STANDARD, np.empty_like(x))
    guided = ops.relu_backward(grad_out, y, RELU_GUIDED, np.empty_like(x))
    deconv = ops.relu_backward(grad_out, y, RELU_DECONV, np.empty_like(x))
    np.testing.assert_array_equal(standard, grad_out * (x > 0))
    np.testing.assert_array_equal(guided, np.maximum(standard, 0))
    np.testing.assert_array_equal(deconv, np.maximum(grad_out, 0))
    assert guided.dtype == deconv.dtype == dtype
