"""The Fourier image parameterisation's ops on the CPU: numpy.fft (pocketfft) in the buffers' dtype.

``irfft2_forward(spectrum, scale, out)`` and its adjoint ``irfft2_backward(grad_out, scale,
grad_spectrum)``, with the shapes and the exact map of ``kernels/reference.py``: spectrum
(N, C, H, W//2+1, 2) (real, imaginary), scale (H, W//2+1), images (N, H, W, C). Unlike the
reference (float64, then rounded) these transform in the output's precision: float32 spectra are
read as complex64 views (no copy) and NumPy >= 2 transforms complex64 in single precision, a
few times faster than the float64 oracle for the same result to ~1e-6 relative.
"""

import numpy as np

from kernels.cpu._checks import input_like, output_buffer
from kernels.reference import hermitian_weights

_COMPLEX = {np.dtype(np.float32): np.complex64, np.dtype(np.float64): np.complex128}


def _check_shapes(spectrum, scale, image):
    n, height, width, channels = image.shape
    expected = (n, channels, height, width // 2 + 1, 2)
    if spectrum.shape != expected:
        raise ValueError(f"spectrum {spectrum.shape} does not fit images {image.shape}: expected {expected}")
    if scale.shape != expected[2:4]:
        raise ValueError(f"scale {scale.shape} does not fit images {image.shape}: expected {expected[2:4]}")


def irfft2_forward(spectrum, scale, out):
    """out (N,H,W,C) = irfft2(scale * spectrum, norm="ortho") per image and channel."""
    output_buffer(out, "out", ndim=4)
    spectrum = input_like(spectrum, out, "spectrum", ndim=5)
    scale = input_like(scale, out, "scale", ndim=2)
    _check_shapes(spectrum, scale, out)
    height, width = out.shape[1:3]
    z = spectrum.view(_COMPLEX[out.dtype])[..., 0] * scale
    out[...] = np.fft.irfft2(z, s=(height, width), norm="ortho").transpose(0, 2, 3, 1)
    return out


def irfft2_backward(grad_out, scale, grad_spectrum):
    """The adjoint: grad_spectrum (N, C, H, W//2+1, 2) = h_k scale rfft2(grad_out, "ortho")."""
    output_buffer(grad_spectrum, "grad_spectrum", ndim=5)
    grad_out = input_like(grad_out, grad_spectrum, "grad_out", ndim=4)
    scale = input_like(scale, grad_spectrum, "scale", ndim=2)
    _check_shapes(grad_spectrum, scale, grad_out)
    width = grad_out.shape[2]
    weights = (scale * hermitian_weights(width)).astype(grad_spectrum.dtype)
    z = np.fft.rfft2(grad_out.transpose(0, 3, 1, 2), norm="ortho") * weights
    grad_spectrum.view(_COMPLEX[grad_spectrum.dtype])[..., 0] = z
    return grad_spectrum
