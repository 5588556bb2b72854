"""The optimisation loops on the CUDA backend: their ops against ``kernels/reference.py``, and whole
runs (filters, DeepDream) that keep the image batch on the device, under Numba's CUDA simulator.

Kernel tests run the production launch geometry on tiny shapes (a few cases large enough for
several blocks per sample). The end-to-end runs use a tiny network and shrink the launch geometry
(fewer threads per block, a small GEMM tile; ``small_launches``): the simulator runs every CUDA
thread as a Python thread, so its cost is the thread count, and the kernels are written for any
block size (grid-stride loops, power-of-two reductions). Tolerances: ops 1e-5 relative; whole
runs 1e-4 relative between the CUDA images and the CPU's (host NumPy path).
"""

import inspect

import numpy as np
import pytest

pytest.importorskip("numba_cuda", reason='numba-cuda not installed: pip install -e ".[cuda]"')

import kernels.cpu as cpu_backend  # noqa: E402
import kernels.cuda as cuda_backend  # noqa: E402
from kernels import reference as ref  # noqa: E402
from kernels.cuda import scores  # noqa: E402
from tests.backends import on_device  # noqa: E402
from tests.metrics import rel_err  # noqa: E402

if not cuda_backend.is_available():
    pytest.skip("numba.cuda is not usable here (no GPU, simulator off)", allow_module_level=True)

LOOP_OPS = (
    "fill", "axpy", "masked_axpy", "sample_scale", "channel_sum", "square_sum", "variation_sum",
    "roll", "resize_bilinear", "copy_window", "add_window",
)
TOL = 1e-5


def random(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def test_every_backend_has_the_loop_ops_with_the_reference_signatures():
    for name in LOOP_OPS:
        expected = inspect.signature(getattr(ref, name))
        for backend in (cpu_backend, cuda_backend):
            assert inspect.signature(getattr(backend, name)) == expected, (backend.__name__, name)


# -- scores: total[n] += weight * S_n, grad += weight * dS_n/dx --------------------------------


def score_case(rng, shape):
    x = random(rng, *shape, scale=2.0)
    grad0 = random(rng, *shape)  # gradients accumulate: start from something that is not zero
    total0 = random(rng, shape[0])
    return x, grad0, total0


def check_score(op, x, args, grad0, total0):
    """Run ``op`` on the device and in the reference from the same starting total and grad."""
    total, grad = total0.copy(), grad0.copy()
    on_device(getattr(cuda_backend, op), x, *args, total, grad)
    expected_total, expected_grad = total0.astype(np.float64), grad0.astype(np.float64)
    getattr(ref, op)(x.astype(np.float64), *args, expected_total, expected_grad)
    assert rel_err(total, expected_total) < TOL
    assert rel_err(grad - grad0, expected_grad - grad0) < TOL  # the part the op added


@pytest.mark.parametrize(
    "shape, region",
    [((2, 5, 6, 3), (1, 4, 2, 6)), ((1, 4, 4, 2), (0, 4, 0, 4)), ((2, 36, 40, 3), (2, 34, 1, 39))],
    ids=["inner", "whole", "several-parts"],
)
def test_square_sum(shape, region):
    rng = np.random.default_rng(20)
    x, grad0, total0 = score_case(rng, shape)
    check_score("square_sum", x, (0.75, region, -0.3), grad0, total0)
    if shape[1] == 36:
        assert scores.launch_parts((region[1] - region[0]) * (region[3] - region[2]) * shape[3]) > 1


@pytest.mark.parametrize(
    "shape, region", [((3, 5, 4, 6), (1, 4, 1, 3)), ((2, 40, 36, 2), (0, 40, 0, 36))], ids=["inner", "several-parts"]
)
def test_channel_sum(shape, region):
    rng = np.random.default_rng(21)
    x, grad0, total0 = score_case(rng, shape)
    index = np.array([5, 0, 3][: shape[0]], dtype=np.int64) % shape[3]
    check_score("channel_sum", x, (index, region, 0.125), grad0, total0)


@pytest.mark.parametrize("beta", [2.0, 1.0])
def test_variation_sum(beta):
    rng = np.random.default_rng(22)
    x, grad0, total0 = score_case(rng, (2, 5, 6, 3))
    check_score("variation_sum", x, (beta, 1e-8, -0.01), grad0, total0)


def test_empty_region_adds_nothing():
    rng = np.random.default_rng(23)
    x, grad0, total0 = score_case(rng, (2, 4, 4, 2))
    total, grad = total0.copy(), grad0.copy()
    on_device(cuda_backend.square_sum, x, 0.0, (2, 2, 0, 4), 1.0, total, grad)
    np.testing.assert_array_equal(total, total0)
    np.testing.assert_array_equal(grad, grad0)
    with pytest.raises(ValueError, match="does not fit"):
        on_device(cuda_backend.square_sum, x, 0.0, (0, 5, 0, 4), 1.0, total, grad)


# -- the step: per-sample scale, masked update ---------------------------------------------------


@pytest.mark.parametrize(
    "method, eps, shape",
    [("rms", 1e-5, (3, 4, 5, 3)), ("mean_abs", 0.5, (3, 4, 5, 3)), ("rms", 1e-5, (2, 30, 30, 3)),
     ("mean_abs", 1e-7, (2, 30, 30, 3))],
    ids=["rms", "mean_abs-floor", "rms-several-parts", "mean_abs-several-parts"],
)
def test_sample_scale(method, eps, shape):
    rng = np.random.default_rng(24)
    grad = random(rng, *shape)
    grad[1] *= 1e-3  # per-sample statistics: the small sample gets its own factor
    if shape[0] > 2:
        grad[2] = 0.0  # an all-zero gradient: the eps floor
    out, expected = np.full(shape[0], np.nan, np.float32), np.zeros(shape[0])
    on_device(cuda_backend.sample_scale, grad, method, eps, out)
    ref.sample_scale(grad, method, eps, expected)
    assert rel_err(out, expected) < TOL
    with pytest.raises(ValueError, match="unknown gradient scale"):
        cuda_backend.sample_scale(grad, "l1", eps, out)


def test_masked_axpy_moves_only_active_samples():
    rng = np.random.default_rng(25)
    x, y0 = random(rng, 3, 4, 5, 2), random(rng, 3, 4, 5, 2)
    scale = np.array([2.0, 0.5, 3.0], np.float32)
    active = np.array([1, 0, 1], np.int32)
    y = y0.copy()
    on_device(cuda_backend.masked_axpy, 0.7, scale, x, active, y)
    expected = ref.masked_axpy(0.7, scale, x, active, y0.astype(np.float64))
    assert rel_err(y, expected) < TOL
    np.testing.assert_array_equal(y[1], y0[1])


def test_fill_and_axpy():
    rng = np.random.default_rng(26)
    out = random(rng, 2, 3, 5, 3)
    on_device(cuda_backend.fill, -1.5, out)
    np.testing.assert_array_equal(out, -1.5)
    x, y0 = random(rng, 2, 3, 5, 3), random(rng, 2, 3, 5, 3)
    y = y0.copy()
    on_device(cuda_backend.axpy, -1.0, x, y)
    np.testing.assert_array_equal(y, ref.axpy(-1.0, x, y0.copy()))  # exact: y + (-x) = y - x


# -- image moves ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [(2, -3), (-7, 11), (0, 0)])
def test_roll(shift):
    rng = np.random.default_rng(27)
    x = random(rng, 2, 5, 6, 3)
    out = np.full(x.shape, np.nan, np.float32)
    on_device(cuda_backend.roll, x, shift, out)
    np.testing.assert_array_equal(out, np.roll(x, shift, axis=(1, 2)))


@pytest.mark.parametrize("shape", [(4, 5), (9, 13), (6, 7), (1, 1), (7, 3)], ids=str)
def test_resize_bilinear(shape):
    """Shrinking and enlarging, each axis on its own, the same size, to one pixel: the correctly
    rounded bilinear value, so equal to the reference in float32 (at most one rounding apart)."""
    rng = np.random.default_rng(28)
    x = random(rng, 2, 6, 7, 3, scale=100.0)
    out = np.full((2, *shape, 3), np.nan, np.float32)
    expected = np.zeros(out.shape, np.float32)
    on_device(cuda_backend.resize_bilinear, x, out)
    ref.resize_bilinear(x, expected)
    np.testing.assert_allclose(out, expected, rtol=2**-23, atol=0)
    with pytest.raises(ValueError, match="batch and channels"):
        cuda_backend.resize_bilinear(x, np.zeros((2, 3, 3, 2), np.float32))


def test_windows():
    rng = np.random.default_rng(29)
    x = random(rng, 2, 7, 6, 3)
    window = np.full((2, 3, 4, 3), np.nan, np.float32)
    on_device(cuda_backend.copy_window, x, (2, 1), window)
    np.testing.assert_array_equal(window, x[:, 2:5, 1:5])
    out = x.copy()
    on_device(cuda_backend.add_window, window, (4, 2), out)
    np.testing.assert_array_equal(out, ref.add_window(window, (4, 2), x.copy()))
    with pytest.raises(ValueError, match="leaves"):
        cuda_backend.copy_window(x, (5, 0), window)
