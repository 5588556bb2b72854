"""The optimisation loops on the CUDA backend: their ops against ``kernels/reference.py``, and whole
runs (filters, DeepDream) that keep the image batch on the device, under Numba's CUDA simulator.

Kernel tests run the production launch geometry on tiny shapes (a few cases large enough for
several blocks per sample). The end-to-end runs use a tiny network and shrink the launch geometry
(fewer threads per block, a small GEMM tile; ``small_launches``): the simulator runs every CUDA
thread as a Python thread, so its cost is the thread count, and the kernels are written for any
block size (grid-stride loops, power-of-two reductions). Tolerances: ops 1e-5 relative; whole
runs 1e-4 relative between the CUDA images and the CPU's (the same loop on the CPU's ops).
"""

import inspect
import warnings

import numpy as np
import pytest

import engine.backend
from engine.model import Model
from engine.spec import LayerSpec, NetworkSpec
from engine.viz import objectives as obj
from engine.viz.dream import deep_dream, dream_gradient
from engine.viz.filters import visualize_filters
from engine.viz.optimise import optimise
from engine.viz.steps import Adam, Ascent
from engine.viz.transforms import Affine, Jitter
from tests.synthetic import uniform

pytest.importorskip("numba_cuda", reason='numba-cuda not installed: pip install -e ".[cuda]"')

import kernels.cpu as cpu_backend  # noqa: E402
import kernels.cuda as cuda_backend  # noqa: E402
from kernels import LOOP_OPS, OP_NAMES  # noqa: E402
from kernels import reference as ref  # noqa: E402
from kernels.cuda import scores  # noqa: E402
from tests.backends import on_device  # noqa: E402
from tests.metrics import rel_err  # noqa: E402

if not cuda_backend.is_available():
    pytest.skip("numba.cuda is not usable here (no GPU, simulator off)", allow_module_level=True)

TOL = 1e-5
SCRATCH_OPS = ("sample_scale", "channel_sum", "square_sum", "variation_sum")


def random(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def test_op_names_list_every_op_the_backends_export():
    """``kernels.OP_NAMES`` is what ``tests/test_kernels.py`` checks on every backend (the
    reference's signature, optional extras after it): it must name every exported op, the loop
    ops included."""
    assert set(LOOP_OPS) <= set(OP_NAMES)
    for backend in (cpu_backend, cuda_backend):
        assert set(backend.__all__) - {"is_available"} == set(OP_NAMES), backend.__name__
    # the one extra on CUDA: the reductions' optional scratch for their partial sums
    for name in LOOP_OPS:
        extra = set(inspect.signature(getattr(cuda_backend, name)).parameters)
        extra -= set(inspect.signature(getattr(ref, name)).parameters)
        assert extra == ({"scratch"} if name in SCRATCH_OPS else set()), name


def test_catalog_lists_the_loop_kernels():
    """benchmarks/ptx_report.py compiles what the catalog lists (and fails on spills)."""
    from kernels.cuda import catalog, elementwise, images

    listed = {function for _, function, _ in catalog.kernels()}
    for module in (elementwise, images, scores):
        kernels_here = [name for name in dir(module) if name.endswith("_kernel")]
        assert kernels_here
        for name in kernels_here:
            assert getattr(module, name).py_func in listed, f"{module.__name__}.{name}"


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
    [((2, 5, 6, 3), (1, 4, 2, 6)), ((1, 4, 4, 2), (0, 4, 0, 4)), ((2, 14, 15, 8), (1, 13, 2, 14))],
    ids=["inner", "whole", "several-parts"],
)
def test_square_sum(shape, region):
    rng = np.random.default_rng(20)
    x, grad0, total0 = score_case(rng, shape)
    check_score("square_sum", x, (0.75, region, -0.3), grad0, total0)
    if shape[1] == 14:
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
    [("rms", 1e-5, (3, 4, 5, 3)), ("mean_abs", 0.5, (3, 4, 5, 3)), ("rms", 1e-5, (2, 19, 19, 3)),
     ("mean_abs", 1e-7, (2, 19, 19, 3))],
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


def test_buffers_ops_reuse_their_scratch(monkeypatch):
    """Through Buffers the reductions keep their partial sums in one reused buffer (grown to the
    largest shape): once it exists a step allocates nothing, and the results are, bit for bit, those of
    the ops allocating their own. (4-thread blocks, so that a tiny sample spans several parts.)"""
    from numba import cuda

    from kernels.cuda import elementwise, launch

    monkeypatch.setattr(scores, "SUM_THREADS", 4)
    monkeypatch.setattr(scores, "MAX_PARTS", 4)
    monkeypatch.setattr(elementwise, "ELEMENTWISE_THREADS", 32)
    monkeypatch.setattr(launch.blocks_for, "__defaults__", (1,))  # one block per fill
    work = engine.backend.get_backend("cuda").buffers()
    rng = np.random.default_rng(30)
    x = cuda.to_device(random(rng, 2, 4, 5, 4))
    assert scores.launch_parts(80) == 3 and scores.launch_parts(12) == 1  # a sample, channel_sum's region
    index = cuda.to_device(np.array([1, 3], np.int64))
    total, grad, scale = (cuda.device_array(shape, np.float32) for shape in (2, x.shape, 2))

    def step(ops):
        ops.fill(0.0, total)
        ops.fill(0.0, grad)
        ops.channel_sum(x, index, (1, 4, 0, 4), 0.5, total, grad)  # one part
        ops.square_sum(x, 0.1, (0, 4, 0, 5), -0.25, total, grad)
        ops.variation_sum(x, 2.0, 1e-8, 0.01, total, grad)
        ops.sample_scale(grad, "rms", 1e-5, scale)
        return total.copy_to_host(), grad.copy_to_host(), scale.copy_to_host()

    allocations, device_array = [], cuda.device_array
    monkeypatch.setattr(cuda, "device_array", lambda *a, **k: allocations.append(a) or device_array(*a, **k))
    expected = step(cuda_backend)
    assert allocations == [((2, 1),), ((2, 3),), ((2, 3),), ((2, 3),)]  # each reduction its own
    step(work.ops)  # the first step allocates the buffers
    allocations.clear()
    results = step(work.ops)
    assert allocations == []
    for result, reference in zip(results, expected):
        np.testing.assert_array_equal(result, reference)
    assert [key for key in work if key[0] == "op scratch"] == [("op scratch", "<f4")]  # one, grown
    assert work.scratch((2, 3)).shape == (2, 3) and work.scratch((2, 1)).shape == (2, 1)
    with pytest.raises(ValueError, match="not float32"):
        cuda_backend.square_sum(x, 0.0, (0, 4, 0, 5), 1.0, total, grad, scratch=lambda shape: scale)


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


# -- whole runs: the CUDA loop against the CPU's host loop ---------------------------------------

RUN_TOL = 1e-4


def tiny_spec():
    """c1 (3 -> 4, same) - 2x2 pool - c2 (4 -> 4, same), ReLU everywhere."""
    def conv(name, c_in, c_out):
        kernel = uniform(3, name + "k", (3, 3, c_in, c_out), -0.5, 0.5)
        return LayerSpec(name, "conv2d", "relu", kernel, uniform(3, name + "b", (c_out,), -0.1, 0.1), "same")

    return NetworkSpec([conv("c1", 3, 4), LayerSpec("p1", "maxpool2d", pool_size=(2, 2)), conv("c2", 4, 4)], (None, None, 3))


@pytest.fixture(scope="module")
def small_launches():
    """Fewer simulated threads for whole runs: an 8-thread GEMM tile, one 32-thread block per
    elementwise launch (grid-stride loops cover the rest), one 4-thread block per sample for the
    reductions. (The kernel tests above run the production geometry.)"""
    from kernels.cuda import activations, conv, elementwise, images, launch, pool
    from kernels.cuda.gemm import GemmTile

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv, "DEFAULT_TILE", GemmTile(block_m=64, block_n=4, block_k=8, thread_m=8, thread_n=4))
        for module in (activations, conv, elementwise, images, pool):
            patch.setattr(module, "ELEMENTWISE_THREADS", 32)
        patch.setattr(launch.blocks_for, "__defaults__", (1,))  # max_blocks
        patch.setattr(scores, "SUM_THREADS", 4)
        patch.setattr(scores, "MAX_PARTS", 1)
        yield


class DeviceToHost:
    """Records the shape of every array copied from the (simulated) device to the host."""

    def __init__(self, patch):
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        self.shapes = []
        copy_to_host = FakeCUDAArray.copy_to_host

        def counted(array, *args, **kwargs):
            self.shapes.append(tuple(array.shape))
            return copy_to_host(array, *args, **kwargs)

        patch.setattr(FakeCUDAArray, "copy_to_host", counted)


@pytest.fixture(scope="module")
def models():
    return Model(tiny_spec(), device="cpu"), Model(tiny_spec(), device="cuda")


def run_on_both(models, run):
    """run(model) on the CPU, then on CUDA recording device-to-host copies; (cpu, cuda, copies)."""
    cpu, gpu = models
    expected = run(cpu)
    with pytest.MonkeyPatch.context() as patch:
        copies = DeviceToHost(patch)
        result = run(gpu)
    return expected, result, copies.shapes


FILTERS = [0, 2, 3]


@pytest.fixture(scope="module")
def filter_runs(models, small_launches):
    """Three filters of c2 at 8 px, jittered, with the TV and L2 penalties: every device score."""
    run = lambda model: visualize_filters(
        model, "c2", filters=FILTERS, size=8, steps=2, transforms=[Jitter(2)], tv=0.5, l2=0.01, seed=3
    )
    return run_on_both(models, run)


def test_filters_on_cuda_equal_the_cpu(filter_runs):
    cpu, gpu, _ = filter_runs
    assert rel_err(gpu.raw, cpu.raw) < RUN_TOL
    np.testing.assert_allclose(gpu.losses, cpu.losses, rtol=RUN_TOL, atol=1e-6)
    np.testing.assert_array_equal(gpu.filters, cpu.filters)


def test_filters_on_cuda_copy_only_losses_and_the_images(filter_runs):
    _, gpu, copies = filter_runs
    n = len(FILTERS)
    assert copies == [(n,)] * 2 + [(n, 8, 8, 3)]


@pytest.fixture(scope="module")
def dream_runs(models, small_launches):
    """Two octaves (5 and 8 px) with the roll, on c1 (the deepest dream layer the trace reaches)."""
    x = uniform(8, "dream", (1, 8, 8, 3), -80, 80)
    run = lambda model: deep_dream(model, x, {"c1": 1.0}, octaves=2, steps=2, step_size=3.0, roll=2, seed=5)
    return (x, *run_on_both(models, run))


def test_dream_on_cuda_equals_the_cpu(dream_runs):
    x, cpu, gpu, _ = dream_runs
    assert gpu.shapes == cpu.shapes == [(5, 5), (8, 8)]
    assert rel_err(gpu.images, cpu.images) < RUN_TOL
    assert rel_err(gpu.images - x, cpu.images - x) < RUN_TOL  # the dream itself, not just the photo
    for a, b in zip(gpu.losses, cpu.losses):
        np.testing.assert_allclose(a, b, rtol=RUN_TOL)


def test_dream_on_cuda_copies_only_losses_and_the_dream(dream_runs):
    _, _, _, copies = dream_runs
    assert copies == [(1,)] * 4 + [(1, 8, 8, 3)]


def test_host_terms_and_adam_on_cuda_equal_the_cpu(models, small_launches):
    """Terms no op computes (alpha_norm) and the Adam rule run in NumPy on the host copies; the
    rest of the step stays on the device, and the run equals the CPU's."""
    x0 = uniform(18, "x0", (2, 8, 8, 3), -1, 1)
    objective = obj.channel("c2", [0, 1]) - 1e-3 * obj.alpha_norm(2.0)
    cpu, gpu = (optimise(model, x0, -objective, Adam(lr=0.1, bounds=(-1.0, 1.0)), 2) for model in models)
    assert rel_err(gpu.images, cpu.images) < RUN_TOL and rel_err(cpu.images, x0) > 1e-3
    np.testing.assert_allclose(gpu.losses, cpu.losses, rtol=RUN_TOL)
    ascent = [optimise(model, x0, objective, Ascent(0.5), 2).images for model in models]
    assert rel_err(ascent[1], ascent[0]) < RUN_TOL


def test_tiled_rolled_dream_gradient_on_cuda_equals_the_cpu(models, small_launches):
    """The dream objective's windows (cut and added back by kernels) and the roll, against the
    CPU's whole-image gradient: 8 px tiles make four windows."""
    cpu, gpu = models
    x = uniform(6, "tiles", (2, 16, 12, 3), -80, 80)
    loss, grad = dream_gradient(cpu, x, {"c1": 0.3, "c2": 1.0}, tile=1000)
    loss_t, grad_t = dream_gradient(gpu, x, {"c1": 0.3, "c2": 1.0}, tile=8)
    assert rel_err(loss_t, loss) < 1e-5
    assert rel_err(grad_t, grad) < 1e-5


def test_affine_falls_back_to_the_host_and_says_so(models, small_launches):
    """Scale/rotate have no device kernel: on CUDA they run on the host, with a RuntimeWarning,
    and give the host result (Jitter, which has one, gives no warning)."""
    cpu, gpu = models
    x = uniform(19, "x", (1, 6, 6, 3), -1, 1)
    affine = Affine((0.9, 1.1), (-10, 10))
    expected = np.zeros_like(x)
    state = affine.apply(cpu.backend, x, np.random.default_rng(2), expected)
    rng_gpu, work = np.random.default_rng(2), gpu.backend.buffers()
    out = work.get("out", x.shape)
    with pytest.warns(RuntimeWarning, match="Affine has no cuda kernel"):
        state_gpu = affine.apply(gpu.backend, gpu.backend.asarray(x), rng_gpu, out)
    np.testing.assert_array_equal(out.copy_to_host(), expected)
    with pytest.warns(RuntimeWarning):
        back = affine.adjoint(gpu.backend, out, state_gpu, work.get("back", x.shape))
    expected_back = affine.adjoint(cpu.backend, expected, state, np.zeros_like(x))
    np.testing.assert_allclose(back.copy_to_host(), expected_back, rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Jitter(2).apply(gpu.backend, gpu.backend.asarray(x), rng_gpu, out)


def test_lucid_filters_on_cuda_equal_the_cpu(models, small_launches, monkeypatch):
    """Fourier + decorrelated images and Adam on the device (the robustness transforms' ops, pad
    included, are the kernels tested above; with them the simulator takes ~2 minutes here)."""
    from kernels.cuda import fourier
    from tests.test_lucid_filters import run

    monkeypatch.setattr(fourier, "THREADS", 8)  # strided passes: any block size is correct
    options = dict(param="fft", decorrelate=True, filters=[3], steps=2, size=6)
    cpu, gpu = (run(model, layer="c2", **options) for model in models)
    assert cpu.losses[0] > 0 and rel_err(gpu.raw, cpu.raw) < RUN_TOL
    np.testing.assert_allclose(gpu.losses, cpu.losses, rtol=RUN_TOL, atol=1e-6)
