"""CUDA backend against ``kernels/reference.py`` on tiny shapes, under Numba's CUDA simulator.

The simulator runs every CUDA thread as a Python thread, so shapes stay tiny (N <= 2, H, W <= 6,
C <= 5) and most convolution cases use a small GEMM tile (16 threads) that still has partial tiles
in M, N and K; a few cases run the production 64x64x16 tile through ``tests.backends.run``, as the
engine calls it. Tolerance: max abs error / max |reference| < 1e-5; argmax exactly equal.
Set CONVSCOPE_REAL_CUDA=1 to run the same tests on a GPU.
"""

import importlib
import importlib.util
import sys

import numpy as np
import pytest

pytest.importorskip("numba_cuda", reason='numba-cuda not installed: pip install -e ".[cuda]"')

import kernels.cuda as cuda_backend  # noqa: E402
from kernels import RELU_DECONV, RELU_GUIDED, RELU_STANDARD  # noqa: E402
from kernels import reference as ref  # noqa: E402
from kernels.cuda import conv  # noqa: E402
from kernels.cuda.gemm import DEFAULT_TILE, GemmTile, conv_gemm_kernel  # noqa: E402
from tests.backends import on_device, run  # noqa: E402

if not cuda_backend.is_available():
    pytest.skip("numba.cuda is not usable here (no GPU, simulator off)", allow_module_level=True)

SMALL_TILE = GemmTile(block_m=8, block_n=4, block_k=4, thread_m=2, thread_n=2)  # 8 threads
TOLERANCE = 1e-5


def random(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def assert_close(actual, expected):
    scale = max(float(np.abs(expected).max()), 1e-30)
    error = float(np.abs(actual.astype(np.float64) - expected).max()) / scale
    assert error < TOLERANCE, f"relative error {error:.3g}"


def conv_case(rng, n, h, w, c_in, c_out, kh, kw, padding):
    x, kernel = random(rng, n, h, w, c_in), random(rng, kh, kw, c_in, c_out)
    bias = random(rng, c_out)
    if padding == "same":
        pad, out_hw = ((kh - 1) // 2, (kw - 1) // 2), (h, w)
    else:
        pad, out_hw = (0, 0), (h - kh + 1, w - kw + 1)
    return x, kernel, bias, pad, out_hw


# -- convolution: implicit GEMM -------------------------------------------------------------------

CONV_SHAPES = [  # n, h, w, c_in, c_out, kh, kw, padding
    (1, 5, 6, 3, 5, 3, 3, "same"),
    (2, 4, 3, 2, 3, 1, 1, "same"),
    (1, 6, 5, 2, 3, 2, 2, "same"),
    (1, 6, 6, 3, 2, 4, 4, "same"),
    (2, 5, 4, 5, 2, 2, 3, "valid"),
    (1, 6, 6, 1, 4, 4, 2, "valid"),
]


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv2d_small_tile(shape):
    rng = np.random.default_rng(1)
    n, h, w, c_in, c_out, kh, kw, padding = shape
    x, kernel, bias, pad, (ho, wo) = conv_case(rng, *shape)
    for relu in (False, True):
        out = np.full((n, ho, wo, c_out), np.nan, np.float32)
        expected = np.zeros(out.shape)
        ref.conv2d_forward(x, kernel, bias, pad, relu, expected)
        on_device(conv.conv2d_forward_tiled, x, kernel, bias, pad, relu, out, SMALL_TILE)
        assert_close(out, expected)

    grad_out = random(rng, n, ho, wo, c_out)
    grad_in, expected = np.full(x.shape, np.nan, np.float32), np.zeros(x.shape)
    ref.conv2d_backward_input(grad_out, kernel, pad, expected)
    on_device(conv.conv2d_backward_input_tiled, grad_out, kernel, pad, grad_in, SMALL_TILE)
    assert_close(grad_in, expected)


def test_conv2d_default_tile_through_adapter():
    """The production tile: two M tiles (72 rows), one partial N tile, three K steps (45 taps)."""
    rng = np.random.default_rng(2)
    x, kernel, bias, pad, (ho, wo) = conv_case(rng, 2, 6, 6, 5, 4, 3, 3, "same")
    out, expected = np.full((2, ho, wo, 4), np.nan, np.float32), np.zeros((2, ho, wo, 4))
    ref.conv2d_forward(x, kernel, bias, pad, True, expected)
    run("cuda", "conv2d_forward", x, kernel, bias, pad, True, out)
    assert_close(out, expected)

    grad_out = random(rng, 2, ho, wo, 4)
    grad_in, expected = np.full(x.shape, np.nan, np.float32), np.zeros(x.shape)
    ref.conv2d_backward_input(grad_out, kernel, pad, expected)
    run("cuda", "conv2d_backward_input", grad_out, kernel, pad, grad_in)
    assert_close(grad_in, expected)


def test_flipped_transposed_kernel():
    rng = np.random.default_rng(3)
    kernel = random(rng, 2, 3, 4, 5)
    scratch = np.full(2 * 3 * 5 * 4 + 4, np.nan, np.float32)
    on_device(conv.flip_transpose_kernel[1, 32], kernel, scratch)
    expected = kernel[::-1, ::-1].transpose(0, 1, 3, 2).ravel()
    np.testing.assert_array_equal(scratch[: expected.size], expected)
    np.testing.assert_array_equal(scratch[expected.size :], 0)


@pytest.mark.parametrize("tile", [(64, 64, 16, 4, 3), (8, 8, 3, 2, 2)])
def test_inconsistent_tile_rejected(tile):
    with pytest.raises(ValueError, match="inconsistent GEMM tile"):
        conv_gemm_kernel(GemmTile(*tile))


# -- dense: the same GEMM as a 1x1 convolution ----------------------------------------------------


@pytest.mark.parametrize("relu", [False, True])
def test_dense(relu):
    rng = np.random.default_rng(4)
    x, kernel, bias = random(rng, 2, 20), random(rng, 20, 5), random(rng, 5)
    out, expected = np.full((2, 5), np.nan, np.float32), np.zeros((2, 5))
    ref.dense_forward(x, kernel, bias, relu, expected)
    run("cuda", "dense_forward", x, kernel, bias, relu, out)
    assert_close(out, expected)

    grad_out = random(rng, 2, 5)
    grad_in, expected = np.full(x.shape, np.nan, np.float32), np.zeros(x.shape)
    ref.dense_backward_input(grad_out, kernel, expected)
    run("cuda", "dense_backward_input", grad_out, kernel, grad_in)
    assert_close(grad_in, expected)


# -- max pooling ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,pool", [((2, 4, 6, 3), (2, 2)), ((1, 5, 5, 2), (2, 2)), ((1, 6, 5, 3), (3, 2))]
)
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool(shape, pool, ties):
    rng = np.random.default_rng(5)
    x = rng.integers(-1, 2, shape).astype(np.float32) if ties else random(rng, *shape)
    out_shape = (shape[0], shape[1] // pool[0], shape[2] // pool[1], shape[3])
    out, argmax = np.full(out_shape, np.nan, np.float32), np.full(out_shape, -1, np.int32)
    expected, expected_argmax = np.zeros(out_shape, np.float32), np.zeros(out_shape, np.int32)
    ref.maxpool_forward(x, pool, expected, expected_argmax)
    run("cuda", "maxpool_forward", x, pool, out, argmax)
    np.testing.assert_array_equal(argmax, expected_argmax)
    np.testing.assert_array_equal(out, expected)

    grad_out = random(rng, *out_shape)
    grad_in, expected = np.full(shape, np.nan, np.float32), np.zeros(shape, np.float32)
    ref.maxpool_backward(grad_out, expected_argmax, pool, expected)
    run("cuda", "maxpool_backward", grad_out, expected_argmax, pool, grad_in)
    np.testing.assert_array_equal(grad_in, expected)


# -- activations ----------------------------------------------------------------------------------


def test_relu_forward():
    rng = np.random.default_rng(6)
    x = random(rng, 2, 3, 5, 4)
    out, expected = np.full(x.shape, np.nan, np.float32), np.zeros(x.shape, np.float32)
    ref.relu_forward(x, expected)
    run("cuda", "relu_forward", x, out)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("mode", [RELU_STANDARD, RELU_GUIDED, RELU_DECONV])
def test_relu_backward(mode):
    rng = np.random.default_rng(7)
    y = np.maximum(random(rng, 2, 3, 5, 4), 0)
    grad_out = random(rng, *y.shape)
    grad_in, expected = np.full(y.shape, np.nan, np.float32), np.zeros(y.shape, np.float32)
    ref.relu_backward(grad_out, y, mode, expected)
    run("cuda", "relu_backward", grad_out, y, mode, grad_in)
    np.testing.assert_array_equal(grad_in, expected)


def test_relu_backward_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unknown ReLU backward mode"):
        zeros = np.zeros(3, np.float32)
        run("cuda", "relu_backward", zeros, zeros, 7, zeros.copy())


def test_sigmoid():
    rng = np.random.default_rng(8)
    x = 3 * random(rng, 2, 7)
    out, expected = np.full(x.shape, np.nan, np.float32), np.zeros(x.shape)
    ref.sigmoid_forward(x, expected)
    run("cuda", "sigmoid_forward", x, out)
    assert_close(out, expected)

    huge = np.array([[100.0, -100.0, 3e38, -3e38, 0.0, -0.0, 1e-30]], np.float32)
    saturated = np.full(huge.shape, np.nan, np.float32)
    run("cuda", "sigmoid_forward", huge, saturated)  # no overflow, neither on a GPU nor simulated
    np.testing.assert_allclose(saturated, [[1, 0, 1, 0, 0.5, 0.5, 0.5]], rtol=0, atol=1e-30)

    grad_out = random(rng, *x.shape)
    grad_in, expected = np.full(x.shape, np.nan, np.float32), np.zeros(x.shape)
    ref.sigmoid_backward(grad_out.astype(np.float64), out.astype(np.float64), expected)
    run("cuda", "sigmoid_backward", grad_out, out, grad_in)
    assert_close(grad_in, expected)


@pytest.mark.parametrize("shape", [(2, 7), (1, 300), (2, 1, 3)], ids=str)
def test_softmax(shape):
    """(1, 300) is wider than a row block, so each thread reduces several columns first."""
    rng = np.random.default_rng(9)
    x = 4 * random(rng, *shape)
    out, expected = np.full(shape, np.nan, np.float32), np.zeros(shape)
    ref.softmax_forward(x, expected)
    run("cuda", "softmax_forward", x, out)
    assert_close(out, expected)

    grad_out = random(rng, *shape)
    grad_in, expected = np.full(shape, np.nan, np.float32), np.zeros(shape)
    ref.softmax_backward(grad_out.astype(np.float64), out.astype(np.float64), expected)
    run("cuda", "softmax_backward", grad_out, out, grad_in)
    assert_close(grad_in, expected)


# -- elementwise helpers for the visualization loops ----------------------------------------------


def test_axpy():
    rng = np.random.default_rng(12)
    x, y = random(rng, 2, 3, 4, 3), random(rng, 2, 3, 4, 3)
    expected = y.astype(np.float64) + 0.25 * x
    run("cuda", "axpy", 0.25, x, y)
    assert_close(y, expected)


# -- the module itself ----------------------------------------------------------------------------


def test_import_without_numba_cuda_says_what_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    def find_spec(name, *args):
        return None if name == "numba_cuda" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.delitem(sys.modules, "kernels.cuda")
    with pytest.raises(ImportError, match=r'pip install -e "\.\[cuda\]"'):
        importlib.import_module("kernels.cuda")


def test_is_available_never_raises(monkeypatch):
    from numba import cuda

    def broken():
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(cuda, "is_available", broken)
    assert cuda_backend.is_available() is False


def test_catalog_lists_every_kernel():
    """benchmarks/ptx_report.py compiles what the catalog lists: no kernel may be left out."""
    from kernels.cuda import activations, catalog, elementwise, pool, softmax

    listed = {function for _, function, _ in catalog.kernels()}
    for module in (activations, conv, elementwise, pool, softmax):
        for name in dir(module):
            if name.endswith("_kernel") and hasattr(getattr(module, name), "py_func"):
                assert getattr(module, name).py_func in listed, f"{module.__name__}.{name}"
    assert conv_gemm_kernel(DEFAULT_TILE).py_func in listed
