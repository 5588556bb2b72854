"""The Fourier ops (``irfft2_forward`` / ``irfft2_backward``) on every backend.

* the reference against the defining sum (``kernels/reference.py``), written out as a dense
  real matrix in float64, an oracle that shares no code with numpy.fft;
* every backend against the reference on tiny odd and even shapes (the CUDA kernels under the
  simulator), output buffers starting as NaN;
* the adjoint by the dot-product test <F x, y> = <x, F^T y>, and by float64 central differences
  of sum(g * F(x));
* PyTorch's ``torch.fft.irfftn`` and its autograd gradient (what Lucent runs) equal the reference,
  when torch is installed.
"""

import numpy as np
import pytest

from kernels import reference as ref
from tests.backends import backend_names, run
from tests.metrics import rel_err

BACKENDS = backend_names()
# (N, C, H, W): odd and even sides, one-pixel sides, a single column of frequencies
SHAPES = [(2, 3, 4, 6), (1, 3, 5, 7), (2, 2, 6, 5), (1, 1, 1, 1), (1, 2, 3, 8), (1, 1, 8, 2)]


def spectrum_shape(n, c, h, w):
    return (n, c, h, w // 2 + 1, 2)


def random_case(seed, n, c, h, w, dtype=np.float32):
    rng = np.random.default_rng(seed)
    spectrum = rng.standard_normal(spectrum_shape(n, c, h, w)).astype(dtype)
    scale = rng.uniform(0.5, 2.0, (h, w // 2 + 1)).astype(dtype)
    grad = rng.standard_normal((n, h, w, c)).astype(dtype)
    return spectrum, scale, grad


def dense_matrix(h, w, scale):
    """The map of one channel as a (H*W, H*Wf*2) float64 matrix, from the defining sum."""
    wf = w // 2 + 1
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    matrix = np.zeros((h, w, h, wf, 2))
    for ky in range(h):
        for k in range(wf):
            weight = 1.0 if (k == 0 or 2 * k == w) else 2.0
            angle = 2 * np.pi * (ky * y / h + k * x / w)
            common = weight * scale[ky, k] / np.sqrt(h * w)
            matrix[:, :, ky, k, 0] = common * np.cos(angle)  # Re(X e^{ia}) = Xr cos a - Xi sin a
            matrix[:, :, ky, k, 1] = -common * np.sin(angle)
    return matrix.reshape(h * w, h * wf * 2)


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_is_the_defining_sum(shape):
    n, c, h, w = shape
    spectrum, scale, grad = random_case(0, n, c, h, w, np.float64)
    matrix = dense_matrix(h, w, scale)
    out = ref.irfft2_forward(spectrum, scale, np.empty((n, h, w, c)))
    expected = np.einsum("pq,ncq->ncp", matrix, spectrum.reshape(n, c, -1))
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2).reshape(n, c, -1), expected, atol=1e-12)
    back = ref.irfft2_backward(grad, scale, np.empty(spectrum.shape))
    expected_back = np.einsum("pq,ncp->ncq", matrix, grad.transpose(0, 3, 1, 2).reshape(n, c, -1))
    np.testing.assert_allclose(back.reshape(n, c, -1), expected_back, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_backends_match_the_reference(backend, shape):
    n, c, h, w = shape
    spectrum, scale, grad = random_case(1, n, c, h, w)
    out = np.full((n, h, w, c), np.nan, np.float32)
    run(backend, "irfft2_forward", spectrum, scale, out)
    expected = ref.irfft2_forward(spectrum, scale, np.empty((n, h, w, c)))
    assert rel_err(out, expected) < 1e-5
    grad_spectrum = np.full(spectrum.shape, np.nan, np.float32)
    run(backend, "irfft2_backward", grad, scale, grad_spectrum)
    expected = ref.irfft2_backward(grad, scale, np.empty(spectrum.shape))
    assert rel_err(grad_spectrum, expected) < 1e-5


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_adjoint_dot_product(backend):
    """<F x, y> = <x, F^T y>: float64 where the backend computes in it, else float32 (cuda)."""
    n, c, h, w = 2, 3, 6, 7
    dtype = np.float32 if backend == "cuda" else np.float64
    for seed, width in ((2, w), (3, w + 1)):
        x, scale, y = random_case(seed, n, c, h, width, dtype)
        fx = np.zeros((n, h, width, c), dtype)
        fty = np.zeros(x.shape, dtype)
        if backend == "reference":
            ref.irfft2_forward(x, scale, fx)
            ref.irfft2_backward(y, scale, fty)
        else:
            run(backend, "irfft2_forward", x, scale, fx)
            run(backend, "irfft2_backward", y, scale, fty)
        lhs = np.vdot(fx.astype(np.float64), y)
        rhs = np.vdot(x.astype(np.float64), fty)
        assert abs(lhs - rhs) <= (1e-12 if dtype == np.float64 else 1e-5) * np.sqrt(
            np.vdot(fx, fx) * np.vdot(y, y)
        )


def test_adjoint_by_finite_differences():
    """d sum(g * F(x)) / dx by float64 central differences, every entry of a small case; the
    imaginary parts that never reach the image (sin 0, sin pi y) get exactly 0."""
    n, c, h, w = 1, 2, 4, 6
    x, scale, g = random_case(4, n, c, h, w, np.float64)
    analytic = ref.irfft2_backward(g, scale, np.empty(x.shape))

    def objective(v):
        return float(np.sum(g * ref.irfft2_forward(v, scale, np.empty((n, h, w, c)))))

    numeric = np.empty_like(x)
    step = 1e-6
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        numeric[index] = (objective(plus) - objective(minus)) / (2 * step)
    assert rel_err(analytic, numeric) < 1e-8
    dead = analytic[:, :, [0, h // 2]][:, :, :, [0, w // 2], 1]  # Im at ky in {0, H/2}, k in {0, W/2}
    assert np.all(dead == 0.0)


@pytest.mark.parametrize("shape", [(1, 3, 6, 8), (2, 3, 5, 6)])
def test_torch_irfftn_and_its_autograd_are_the_reference(shape):
    """What Lucent's fft_image runs: torch.fft.irfftn(scale * X, s=(H, W), norm="ortho")."""
    torch = pytest.importorskip("torch")
    n, c, h, w = shape
    spectrum, scale, g = random_case(5, n, c, h, w, np.float64)
    x = torch.tensor(spectrum, requires_grad=True)
    image = torch.fft.irfftn(torch.view_as_complex(torch.tensor(scale)[..., None] * x), s=(h, w), norm="ortho")
    (image * torch.tensor(g.transpose(0, 3, 1, 2))).sum().backward()
    expected = ref.irfft2_forward(spectrum, scale, np.empty((n, h, w, c)))
    np.testing.assert_allclose(image.detach().numpy().transpose(0, 2, 3, 1), expected, atol=1e-12)
    expected_grad = ref.irfft2_backward(g, scale, np.empty(spectrum.shape))
    np.testing.assert_allclose(x.grad.numpy(), expected_grad, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_that_do_not_fit_are_refused(backend):
    spectrum, scale, grad = random_case(6, 1, 3, 4, 6)
    with pytest.raises(ValueError, match="spectrum"):
        run(backend, "irfft2_forward", spectrum[:, :, :, :3].copy(), scale, np.empty((1, 4, 6, 3), np.float32))
    with pytest.raises(ValueError, match="scale"):
        run(backend, "irfft2_backward", grad, scale[:3].copy(), np.empty(spectrum.shape, np.float32))


def test_catalog_lists_the_fourier_kernels():
    """benchmarks/ptx_report.py compiles what the catalog lists (and fails on spills)."""
    pytest.importorskip("numba_cuda", reason='numba-cuda not installed: pip install -e ".[cuda]"')
    from kernels.cuda import catalog, fourier

    listed = {function for _, function, _ in catalog.kernels()}
    kernels_here = [name for name in dir(fourier) if name.endswith("_kernel")]
    assert len(kernels_here) == 2
    for name in kernels_here:
        assert getattr(fourier, name).py_func in listed, name
