"""Image parameterisations (``engine/viz/param.py``): forward against an independent NumPy
transcription of Lucid's chain and against torch-lucent itself, every composition's adjoint by
float64 finite differences, the backends against the reference, and the caffe-space contract."""

import itertools

import numpy as np
import pytest

import kernels.reference
from engine.backend import Backend
from engine.preprocess import CAFFE_MEAN_BGR, deprocess
from engine.viz import param
from tests.backends import backend_names
from tests.metrics import rel_err

F64 = Backend("reference", kernels.reference, dtype=np.float64)
COMPOSITIONS = [  # (fft, decorrelate, valid): every allowed one
    (fft, decorrelate, valid)
    for fft, decorrelate, valid in itertools.product((False, True), (False, True), param.VALID)
    if not (decorrelate and valid is None)
]


def lucid_chain(spectrum, height, width):
    """Lucent's fft_image + to_valid_rgb(decorrelate=True) in float64 NumPy, (N, H, W, 3) RGB [0, 1]."""
    scale = param.fourier_scale(height, width)
    z = (spectrum[..., 0] + 1j * spectrum[..., 1]) * scale
    image = np.fft.irfftn(z, s=(height, width), axes=(-2, -1), norm="ortho") / 4.0  # (N, 3, H, W)
    image = image.transpose(0, 2, 3, 1) @ param.COLOR_CORRELATION_NORMALIZED.T.astype(np.float64)
    return 1.0 / (1.0 + np.exp(-image))


def caffe_to_rgb01(x):
    return (np.asarray(x, np.float64) + np.asarray(CAFFE_MEAN_BGR))[..., ::-1] / 255.0


def test_pixel_without_range_is_the_identity():
    p = param.image((2, 5, 4), fft=False, decorrelate=False, valid=None)
    x = np.random.default_rng(0).standard_normal(p.param_shape).astype(np.float32)
    assert p.param_shape == (2, 5, 4, 3)
    np.testing.assert_array_equal(p.forward(x), x)
    np.testing.assert_array_equal(p.backward(x), x)


@pytest.mark.parametrize("size", [(6, 8), (7, 5)])
def test_lucid_default_is_lucids_chain_in_caffe_space(size):
    height, width = size
    p = param.image((2, height, width), backend=F64)
    assert p.param_shape == (2, 3, height, width // 2 + 1, 2)
    spectrum = np.random.default_rng(1).standard_normal(p.param_shape) * 0.5
    images = p.forward(spectrum)
    assert images.shape == (2, height, width, 3)
    np.testing.assert_allclose(caffe_to_rgb01(images), lucid_chain(spectrum, height, width), atol=1e-12)
    rgb = deprocess(images)  # the pictures a user gets: the sigmoid's [0, 1] as 0..255
    np.testing.assert_array_equal(rgb, np.clip(np.rint(lucid_chain(spectrum, height, width) * 255), 0, 255))


def test_torch_lucent_param_image_gives_the_same_picture():
    torch = pytest.importorskip("torch")
    lucent_param = pytest.importorskip("lucent.optvis.param")
    p = param.image((2, 8, 10))
    start = p.initial(seed=3)
    params, image_f = lucent_param.image(10, h=8, batch=2, decorrelate=True, fft=True)
    assert tuple(params[0].shape) == p.param_shape  # Lucid's layout, even widths
    with torch.no_grad():
        params[0].copy_(torch.from_numpy(start))
        lucent_rgb = image_f().numpy().transpose(0, 2, 3, 1)
    assert rel_err(caffe_to_rgb01(p.forward(start)), lucent_rgb) < 1e-6


def test_initial_is_seeded_normal_with_lucids_deviation():
    p = param.image((4, 32, 32))
    a, b = p.initial(seed=7), p.initial(seed=7)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == p.param_shape
    assert not np.array_equal(a, p.initial(seed=8))
    assert abs(a.std() - 0.01) < 5e-4 and abs(a.mean()) < 5e-4


@pytest.mark.parametrize("fft, decorrelate, valid", COMPOSITIONS)
def test_backward_is_the_adjoint_by_finite_differences(fft, decorrelate, valid):
    """<J v, w> by float64 central differences of forward, against <v, backward(w)>, and every
    entry of the gradient of sum(w * forward(params)) for a tiny case."""
    shape = (2, 4, 5)
    p = param.image(shape, backend=F64, fft=fft, decorrelate=decorrelate, valid=valid)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(p.param_shape) * (0.3 if valid == "clip" else 1.0)
    w = rng.standard_normal(p.image_shape)
    p.forward(x)
    analytic = p.backward(w).copy()
    step = 1e-6

    def objective(v):
        return float(np.vdot(w, p.forward(v)))

    numeric = np.empty_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        numeric[index] = (objective(plus) - objective(minus)) / (2 * step)
    assert rel_err(analytic, numeric) < 1e-6
    v = rng.standard_normal(x.shape)
    directional = (objective(x + step * v) - objective(x - step * v)) / (2 * step)
    assert abs(directional - np.vdot(v, analytic)) < 1e-6 * np.linalg.norm(v) * np.linalg.norm(analytic)


def test_clip_passes_the_gradient_only_inside_the_range():
    p = param.image((1, 3, 3), backend=F64, fft=False, decorrelate=False, valid="clip")
    x = np.linspace(-0.8, 0.8, 27).reshape(p.param_shape)  # centred on 0.5: values -0.3 .. 1.3
    rgb = caffe_to_rgb01(p.forward(x))
    inside = np.abs(x) < 0.5
    np.testing.assert_allclose(rgb, np.clip(x + 0.5, 0, 1), atol=1e-12)
    g = p.backward(np.ones(p.image_shape))
    assert np.all(g[~inside] == 0) and np.all(g[inside] != 0)


@pytest.mark.parametrize("backend", backend_names())
@pytest.mark.parametrize("fft, decorrelate, valid", [(True, True, "sigmoid"), (False, False, "clip"), (True, False, None)])
def test_backends_match_the_reference(backend, fft, decorrelate, valid):
    shape = (2, 4, 6)
    rng = np.random.default_rng(5)
    reference = param.image(shape, backend=F64, fft=fft, decorrelate=decorrelate, valid=valid)
    x = (rng.standard_normal(reference.param_shape) * 0.4).astype(np.float32)
    g = rng.standard_normal(reference.image_shape).astype(np.float32)
    expected_images = reference.forward(x.astype(np.float64)).copy()
    expected_grad = reference.backward(g.astype(np.float64)).copy()
    p = param.image(shape, backend=backend, fft=fft, decorrelate=decorrelate, valid=valid)
    b = p.backend
    images = b.to_host(p.forward(b.asarray(x)))
    grad = b.to_host(p.backward(b.asarray(g)))
    assert images.dtype == np.float32 and grad.dtype == np.float32
    assert rel_err(images, expected_images) < 1e-5
    assert rel_err(grad, expected_grad) < 1e-5


def test_output_is_in_the_caffe_range():
    p = param.image((1, 16, 16))
    images = p.forward(p.initial(0) * 1000.0)  # saturated sigmoid
    low = -np.asarray(CAFFE_MEAN_BGR, np.float32)
    assert np.all(images >= low - 1e-3) and np.all(images <= low + 255 + 1e-3)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="valid-range"):
        param.image((1, 4, 4), valid="tanh")
    with pytest.raises(ValueError, match="decorrelate needs"):
        param.image((1, 4, 4), valid=None)
    with pytest.raises(ValueError, match="positive shape"):
        param.image((0, 4, 4))
    p = param.image((1, 4, 4))
    with pytest.raises(ValueError, match="do not fit"):
        p.forward(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        p.backward(np.zeros((1, 3, 4, 4), np.float32))
