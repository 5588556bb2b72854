"""Every kernel op on every backend against ``kernels/reference.py``, on tiny random shapes.

Ops are called through ``tests.backends.run`` so the same tests serve the CPU backend and the
CUDA backend (under the simulator, which is ~1000x slower: keep shapes tiny). Output buffers
start as NaN, so an element a kernel forgets to write fails the comparison. Float32 throughout;
the bar is a relative error ||a - b|| / ||b|| < 1e-5 and exact equality for argmax.
"""

import inspect

import numpy as np
import pytest

import kernels
from kernels import RELU_DECONV, RELU_GUIDED, RELU_MODES, RELU_STANDARD
from kernels import reference as ref
from tests.backends import backend_names, run
from tests.metrics import rel_err

BACKENDS = backend_names()
TOL = 1e-5


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def nan_buffer(shape, dtype=np.float32):
    return np.full(shape, np.nan, dtype=dtype)


def same_pad(kh, kw):
    return ((kh - 1) // 2, (kw - 1) // 2)


# (batch, h, w, c_in, c_out, kh, kw, padding): odd sizes, even kernels, channels not multiples of 8
CONV_CASES = [
    (1, 5, 7, 3, 5, 3, 3, "same"),
    (2, 6, 5, 2, 3, 3, 3, "valid"),
    (1, 4, 5, 3, 2, 1, 1, "same"),
    (3, 3, 4, 1, 3, 1, 1, "valid"),
    (1, 5, 6, 2, 3, 2, 2, "same"),
    (2, 5, 5, 3, 2, 2, 2, "valid"),
    (1, 6, 7, 2, 3, 4, 4, "same"),
    (1, 7, 6, 3, 2, 4, 3, "valid"),
    (2, 7, 7, 2, 3, 5, 5, "same"),
    (1, 6, 7, 1, 2, 5, 5, "valid"),
    (1, 5, 7, 3, 5, 3, 5, "same"),
]


def conv_geometry(h, w, kh, kw, padding):
    if padding == "same":
        return same_pad(kh, kw), (h, w)
    return (0, 0), (h - kh + 1, w - kw + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_exports_reference_signatures(backend):
    module = __import__(f"kernels.{backend}", fromlist=["_"])
    for name in kernels.OP_NAMES:
        theirs = inspect.signature(getattr(module, name)).parameters
        ours = inspect.signature(getattr(ref, name)).parameters
        assert list(theirs)[: len(ours)] == list(ours), name
        # a backend may add options after the reference's parameters, never required ones
        extra = list(theirs.values())[len(ours):]
        assert all(p.default is not inspect.Parameter.empty for p in extra), name


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_forward(backend, case, relu):
    n, h, w, ci, co, kh, kw, padding = case
    rng = np.random.default_rng(hash(case) % 2**32)
    pad, (ho, wo) = conv_geometry(h, w, kh, kw, padding)
    x, kernel, bias = rand(rng, n, h, w, ci), rand(rng, kh, kw, ci, co), rand(rng, co)
    out = nan_buffer((n, ho, wo, co))
    run(backend, "conv2d_forward", x, kernel, bias, pad, relu, out)
    expected = ref.conv2d_forward(x, kernel, bias, pad, relu, np.empty_like(out))
    assert rel_err(out, expected) < TOL
    if relu:
        assert (out >= 0).all()


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_backward_input(backend, case):
    n, h, w, ci, co, kh, kw, padding = case
    rng = np.random.default_rng(hash(case) % 2**32 + 1)
    pad, (ho, wo) = conv_geometry(h, w, kh, kw, padding)
    grad_out, kernel = rand(rng, n, ho, wo, co), rand(rng, kh, kw, ci, co)
    grad_in = nan_buffer((n, h, w, ci))
    run(backend, "conv2d_backward_input", grad_out, kernel, pad, grad_in)
    expected = ref.conv2d_backward_input(grad_out, kernel, pad, np.empty_like(grad_in))
    assert rel_err(grad_in, expected) < TOL


def test_cpu_conv_crosses_chunk_and_image_boundaries(monkeypatch):
    """A tiny im2col workspace forces many chunks, images cut into runs of output rows."""
    from kernels.cpu import im2col

    monkeypatch.setattr(im2col, "WORKSPACE_BYTES", 3 * 7 * 27 * 4)  # 3 output rows per chunk
    rng = np.random.default_rng(7)
    x, kernel, bias = rand(rng, 3, 5, 7, 3), rand(rng, 3, 3, 3, 4), rand(rng, 4)
    out = nan_buffer((3, 5, 7, 4))
    run("cpu", "conv2d_forward", x, kernel, bias, (1, 1), True, out)
    expected = ref.conv2d_forward(x, kernel, bias, (1, 1), True, np.empty_like(out))
    assert rel_err(out, expected) < TOL
    grad_in = nan_buffer(x.shape)
    run("cpu", "conv2d_backward_input", out, kernel, (1, 1), grad_in)
    expected = ref.conv2d_backward_input(out, kernel, (1, 1), np.empty_like(grad_in))
    assert rel_err(grad_in, expected) < TOL


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_cpu_im2col_short_dot_products_in_worker_chunks(monkeypatch, relu, transposed):
    """Short dot products (K <= SMALL_K, the first layer) go in per-worker chunks of pixels; chunks
    of 5 pixels cross output rows. As the row-chunked path and the reference, to rounding (their
    GEMMs differ in height, which BLAS may round differently)."""
    from kernels.cpu import im2col

    rng = np.random.default_rng(8)
    x, kernel, bias = rand(rng, 3, 5, 7, 3), rand(rng, 3, 3, 3, 6), rand(rng, 6)
    if transposed:  # the input gradient of a 6 -> 3 layer: K = 9 * 3 = 27
        x, kernel, bias = rand(rng, 3, 5, 7, 3), rand(rng, 3, 3, 6, 3), None
    shape = (3, 5, 7, 6)
    monkeypatch.setattr(im2col, "SMALL_K_PIXELS", 5)
    chunked = nan_buffer(shape)
    im2col.conv_im2col_gemm(x, kernel, bias, (1, 1), relu, chunked, transposed)
    monkeypatch.setattr(im2col, "SMALL_K", 0)
    monkeypatch.setattr(im2col, "WORKSPACE_BYTES", 3 * 7 * 27 * 4)  # 3 output rows per chunk
    rows = nan_buffer(shape)
    im2col.conv_im2col_gemm(x, kernel, bias, (1, 1), relu, rows, transposed)
    assert rel_err(chunked, rows) < TOL
    k = im2col.flipped_transposed(kernel) if transposed else kernel
    expected = ref.conv2d_forward(x, k, np.zeros(6) if bias is None else bias, (1, 1), relu, np.empty(shape))
    assert rel_err(chunked, expected) < TOL


def test_cpu_accepts_non_contiguous_inputs_and_rejects_bad_outputs():
    rng = np.random.default_rng(8)
    x = rand(rng, 1, 6, 5, 3).transpose(0, 2, 1, 3)  # (1, 5, 6, 3), not contiguous
    kernel, bias = rand(rng, 3, 3, 3, 2), rand(rng, 2)
    out = nan_buffer((1, 5, 6, 2))
    run("cpu", "conv2d_forward", x, kernel, bias, (1, 1), False, out)
    expected = ref.conv2d_forward(x, kernel, bias, (1, 1), False, np.empty_like(out))
    assert rel_err(out, expected) < TOL
    with pytest.raises(ValueError):
        run("cpu", "conv2d_forward", x, kernel, bias, (1, 1), False, out.transpose(0, 2, 1, 3))
    with pytest.raises(ValueError):
        run("cpu", "conv2d_forward", x, rand(rng, 3, 3, 4, 2), bias, (1, 1), False, out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_relu_forward(backend):
    x = rand(np.random.default_rng(1), 2, 3, 5, 3)
    out = nan_buffer(x.shape)
    run(backend, "relu_forward", x, out)
    np.testing.assert_array_equal(out, np.maximum(x, 0))


@pytest.mark.parametrize("mode", sorted(RELU_MODES.values()))
@pytest.mark.parametrize("backend", BACKENDS)
def test_relu_backward(backend, mode):
    rng = np.random.default_rng(2 + mode)
    y = np.maximum(rand(rng, 2, 3, 5, 3), 0)
    grad_out = rand(rng, *y.shape)
    grad_in = nan_buffer(y.shape)
    run(backend, "relu_backward", grad_out, y, mode, grad_in)
    expected = ref.relu_backward(grad_out, y, mode, np.empty_like(grad_in))
    np.testing.assert_array_equal(grad_in, expected)
    if mode == RELU_DECONV:
        np.testing.assert_array_equal(grad_in, np.maximum(grad_out, 0))
    if mode == RELU_GUIDED:
        assert (grad_in >= 0).all()
    if mode == RELU_STANDARD:
        np.testing.assert_array_equal(grad_in[y == 0], 0)


POOL_CASES = [((1, 4, 6, 3), (2, 2)), ((2, 5, 7, 2), (2, 2)), ((1, 7, 8, 3), (3, 2))]


@pytest.mark.parametrize("index", ["uint8", "int32"])
@pytest.mark.parametrize("shape,pool", POOL_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool_forward(backend, shape, pool, index):
    x = rand(np.random.default_rng(3), *shape)
    out_shape = (shape[0], shape[1] // pool[0], shape[2] // pool[1], shape[3])
    out, argmax = nan_buffer(out_shape), np.full(out_shape, 255, index)
    run(backend, "maxpool_forward", x, pool, out, argmax)
    expected_argmax = np.empty(out_shape, np.int32)
    expected = ref.maxpool_forward(x, pool, np.empty_like(out), expected_argmax)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(argmax, expected_argmax)


@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool_first_maximum_wins_ties(backend):
    x = np.random.default_rng(4).integers(0, 3, (2, 6, 5, 3)).astype(np.float32)
    out, argmax = nan_buffer((2, 3, 2, 3)), np.full((2, 3, 2, 3), -1, np.int32)
    run(backend, "maxpool_forward", x, (2, 2), out, argmax)
    expected_argmax = np.empty_like(argmax)
    ref.maxpool_forward(x, (2, 2), np.empty_like(out), expected_argmax)
    np.testing.assert_array_equal(argmax, expected_argmax)
    assert (x == 2).sum() > 10  # the data really has ties


@pytest.mark.parametrize("index", ["uint8", "int32"])
@pytest.mark.parametrize("shape,pool", POOL_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool_backward(backend, shape, pool, index):
    rng = np.random.default_rng(5)
    out_shape = (shape[0], shape[1] // pool[0], shape[2] // pool[1], shape[3])
    argmax = rng.integers(0, pool[0] * pool[1], out_shape).astype(index)
    grad_out = rand(rng, *out_shape)
    grad_in = nan_buffer(shape)  # the floor remainder rows/columns must come back zero
    run(backend, "maxpool_backward", grad_out, argmax, pool, grad_in)
    expected = ref.maxpool_backward(grad_out, argmax, pool, np.empty_like(grad_in))
    np.testing.assert_array_equal(grad_in, expected)


def test_argmax_dtype_holds_every_window_position():
    from kernels import argmax_dtype

    assert argmax_dtype((2, 2)) == "uint8" and argmax_dtype((16, 16)) == "uint8"
    assert argmax_dtype((16, 17)) == "int32"


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_maxpool_wide_window_positions_past_uint8(backend):
    # a 1 x 300 window: the winner sits at position 280, which uint8 cannot hold
    x = np.zeros((1, 1, 300, 2), np.float32)
    x[0, 0, 280] = 1.0
    out, argmax = nan_buffer((1, 1, 1, 2)), np.zeros((1, 1, 1, 2), np.int32)
    run(backend, "maxpool_forward", x, (1, 300), out, argmax)
    np.testing.assert_array_equal(argmax, 280)
    if backend == "cpu":
        with pytest.raises(ValueError, match="use int32"):
            run(backend, "maxpool_forward", x, (1, 300), out, np.zeros((1, 1, 1, 2), np.uint8))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("n,n_in,n_out", [(1, 7, 5), (3, 13, 6)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_forward(backend, n, n_in, n_out, relu):
    rng = np.random.default_rng(6)
    x, kernel, bias = rand(rng, n, n_in), rand(rng, n_in, n_out), rand(rng, n_out)
    out = nan_buffer((n, n_out))
    run(backend, "dense_forward", x, kernel, bias, relu, out)
    expected = ref.dense_forward(x, kernel, bias, relu, np.empty_like(out))
    assert rel_err(out, expected) < TOL


@pytest.mark.parametrize("n,n_in,n_out", [(1, 7, 5), (3, 13, 6)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_backward_input(backend, n, n_in, n_out):
    rng = np.random.default_rng(7)
    grad_out, kernel = rand(rng, n, n_out), rand(rng, n_in, n_out)
    grad_in = nan_buffer((n, n_in))
    run(backend, "dense_backward_input", grad_out, kernel, grad_in)
    expected = ref.dense_backward_input(grad_out, kernel, np.empty_like(grad_in))
    assert rel_err(grad_in, expected) < TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_forward(backend):
    x = rand(np.random.default_rng(8), 3, 11) * 5
    x[1] += 1000.0  # a shift that would overflow exp without the row max
    out = nan_buffer(x.shape)
    run(backend, "softmax_forward", x, out)
    expected = ref.softmax_forward(x, np.empty_like(out))
    assert rel_err(out, expected) < TOL
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_backward(backend):
    rng = np.random.default_rng(9)
    y = ref.softmax_forward(rand(rng, 3, 11), nan_buffer((3, 11)))
    grad_out = rand(rng, 3, 11)
    grad_in = nan_buffer(y.shape)
    run(backend, "softmax_backward", grad_out, y, grad_in)
    expected = ref.softmax_backward(grad_out, y, np.empty_like(grad_in))
    assert rel_err(grad_in, expected) < TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigmoid_forward(backend):
    x = rand(np.random.default_rng(10), 2, 9) * 4
    out = nan_buffer(x.shape)
    run(backend, "sigmoid_forward", x, out)
    expected = ref.sigmoid_forward(x, np.empty_like(out))
    assert rel_err(out, expected) < TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigmoid_is_finite_for_large_inputs(backend):
    x = np.array([100.0, -100.0, 1e4, -1e4, 3e38, -3e38], np.float32)
    out = nan_buffer(x.shape)
    run(backend, "sigmoid_forward", x, out)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, [1, 0, 1, 0, 1, 0], rtol=0, atol=1e-30)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigmoid_backward(backend):
    rng = np.random.default_rng(11)
    y = ref.sigmoid_forward(rand(rng, 2, 9), nan_buffer((2, 9)))
    grad_out = rand(rng, 2, 9)
    grad_in = nan_buffer(y.shape)
    run(backend, "sigmoid_backward", grad_out, y, grad_in)
    expected = ref.sigmoid_backward(grad_out, y, np.empty_like(grad_in))
    assert rel_err(grad_in, expected) < TOL


def test_cpu_relu_backward_rejects_unknown_mode():
    y = np.ones(3, np.float32)
    with pytest.raises(ValueError):
        run("cpu", "relu_backward", y, y, 7, np.empty_like(y))


def test_page_buffers_are_private_writable_and_zero():
    """kernels._pages: big buffers on their own private maps (a forked child's writes stay its
    own, as with malloc), small ones from numpy."""
    import os

    from kernels._pages import MIN_BYTES, pages

    big = pages(MIN_BYTES // 4, np.float32)
    assert big.flags.writeable and big.flags.c_contiguous and big.dtype == np.float32
    assert big.size == MIN_BYTES // 4 and not big.any()
    big[:] = 1.0
    pid = os.fork()
    if pid == 0:
        big[:] = 5.0
        os._exit(0)
    os.waitpid(pid, 0)
    assert (big == 1.0).all()
    small = pages(3, np.uint8)
    assert small.size == 3 and small.base is None


# (h, c_in, c_out, k, algorithm): every CPU convolution path (see kernels/cpu/conv.py) at shapes
# where BLAS's row blocking comes into play
INVARIANCE_CASES = [
    (24, 32, 48, 3, "auto"),  # Winograd F(4x4), images cut into runs of tiles
    (14, 96, 128, 3, "auto"),  # Winograd F(2x2), whole images grouped
    (40, 3, 16, 3, "auto"),  # im2col, short dot products in worker chunks (input gradient: shifted)
    (30, 64, 3, 3, "auto"),  # few outputs: one GEMM per band of rows and shifted sums
    (20, 24, 40, 3, "gemm"),  # im2col, row chunks
    (20, 32, 48, 1, "auto"),  # 1x1: a plain GEMM
    (18, 16, 40, 5, "auto"),  # 5x5: im2col
]


@pytest.mark.parametrize("case", INVARIANCE_CASES, ids=lambda c: f"{c[0]}px-{c[1]}to{c[2]}-k{c[3]}-{c[4]}")
def test_cpu_conv_of_an_image_does_not_depend_on_its_batch(case, monkeypatch):
    """Each image's output, forward and input gradient, is bit for bit the same in a batch of 1, 2,
    3 or 5 (BLAS rounds a row differently by the height of its product: kernels/cpu/_batch.py)."""
    from kernels.cpu import conv, im2col, shifted, winograd

    h, ci, co, k, algorithm = case
    # small workspaces so that a batch of 5 spans several chunks, and runs of one image several
    monkeypatch.setattr(winograd, "WORKSPACE_BYTES", 64 << 10)
    monkeypatch.setattr(im2col, "WORKSPACE_BYTES", 96 << 10)
    monkeypatch.setattr(im2col, "SMALL_K_PIXELS", 300)
    monkeypatch.setattr(shifted, "BAND_BYTES", 16 << 10)
    rng = np.random.default_rng(h * ci + co)
    x, grad = rand(rng, 5, h, h, ci), rand(rng, 5, h, h, co)
    kernel, bias = rand(rng, k, k, ci, co) * 0.1, rand(rng, co)
    kernel.flags.writeable = False  # as the engine's: Winograd takes read-only kernels
    pad = (k // 2, k // 2)

    def both(n):
        out, grad_in = nan_buffer((n, h, h, co)), nan_buffer((n, h, h, ci))
        conv.conv2d_forward(x[:n], kernel, bias, pad, True, out, algorithm=algorithm)
        conv.conv2d_backward_input(grad[:n], kernel, pad, grad_in, algorithm=algorithm)
        return out, grad_in

    out5, grad5 = both(5)
    assert rel_err(out5, ref.conv2d_forward(x, kernel, bias, pad, True, np.empty_like(out5))) < TOL
    for n in (1, 2, 3):
        out, grad_in = both(n)
        np.testing.assert_array_equal(out, out5[:n])
        np.testing.assert_array_equal(grad_in, grad5[:n])


def test_cpu_dense_of_a_sample_does_not_depend_on_its_batch():
    rng = np.random.default_rng(11)
    x, kernel, bias, grad = rand(rng, 6, 700), rand(rng, 700, 90), rand(rng, 90), rand(rng, 6, 90)
    out6, grad6 = nan_buffer((6, 90)), nan_buffer((6, 700))
    run("cpu", "dense_forward", x, kernel, bias, True, out6)
    run("cpu", "dense_backward_input", grad, kernel, grad6)
    assert rel_err(out6, ref.dense_forward(x, kernel, bias, True, np.empty_like(out6))) < TOL
    for n in (1, 2, 5):
        out, grad_in = nan_buffer((n, 90)), nan_buffer((n, 700))
        run("cpu", "dense_forward", x[:n], kernel, bias, True, out)
        run("cpu", "dense_backward_input", grad[:n], kernel, grad_in)
        np.testing.assert_array_equal(out, out6[:n])
        np.testing.assert_array_equal(grad_in, grad6[:n])
