"""The one place that picks a compute backend and moves arrays between host and device.

A ``Backend`` bundles a kernel module (``kernels.cpu``, ``kernels.cuda`` or the NumPy oracle
``kernels.reference``) with allocation and transfer helpers. Everything above this module calls
``backend.ops.<op>`` and never asks which device it is on.

Arrays crossing the boundary are checked against the data contract of ``kernels/__init__.py``:
float32, C-contiguous, NHWC (4-D) for images and activations.
"""

import functools
import importlib
import inspect
import os

import numpy as np

from engine.errors import ConvscopeError

DEVICES = ("cpu", "cuda", "auto", "reference")

CUDA_INSTALL_HINT = 'install the CUDA extra with: pip install -e ".[cuda]" (numba-cuda and its CUDA libraries)'


class Backend:
    """Kernels plus host/device memory management for one device."""

    def __init__(self, name: str, ops, dtype=np.float32):
        self.name = name
        self.ops = ops
        self.dtype = np.dtype(dtype)  # float32; float64 only for gradient checks on 'reference'

    def __repr__(self):
        return f"Backend({self.name!r})"

    @property
    def on_host(self) -> bool:
        return self.name != "cuda"

    def to_device(self, array) -> "np.ndarray":
        """A C-contiguous copy (or view, when already so) in this backend's dtype, on its device."""
        host = np.ascontiguousarray(array, dtype=self.dtype)
        if self.on_host:
            return host
        from numba import cuda

        return cuda.to_device(host)

    def upload(self, array):
        """A host array of any dtype (indices, masks) on this device, dtype kept; a copy."""
        host = np.array(array, copy=True, order="C")
        if self.on_host:
            return host
        from numba import cuda

        return cuda.to_device(host)

    def copy_into(self, source, out):
        """out[...] = source, where out is an array of this backend and source a host array or
        one of this backend's; returns out."""
        if self.on_host:
            np.copyto(out, source)
        else:
            out.copy_to_device(np.ascontiguousarray(source) if isinstance(source, np.ndarray) else source)
        return out

    def to_host(self, array, copy: bool = True) -> np.ndarray:
        if self.on_host:
            return np.array(array, copy=True) if copy else array
        return array.copy_to_host()

    def empty(self, shape, dtype=None):
        dtype = self.dtype if dtype is None else dtype
        if self.on_host:
            return np.empty(shape, dtype=dtype)
        from numba import cuda

        return cuda.device_array(shape, dtype=dtype)

    def zeros(self, shape, dtype=None):
        zeros = np.zeros(shape, dtype=self.dtype if dtype is None else dtype)
        if self.on_host:
            return zeros
        from numba import cuda

        return cuda.to_device(zeros)

    def copy(self, array):
        """A new array on this device holding the same values."""
        if self.on_host:
            return array.copy()
        from numba import cuda

        out = cuda.device_array_like(array)
        out.copy_to_device(array)
        return out

    def accumulate(self, total, addend):
        """total += addend, elementwise, in place on this device."""
        if self.on_host:
            np.add(total, addend, out=total)
        else:
            self.ops.axpy(1.0, addend, total)
        return total


class Workspace:
    """Buffers of one backend reused by every step of a loop, by key: allocated on first use.

    ``buffer(key, shape)`` returns the same array for the same key and shape; ``zeros`` also
    clears it, on the device (the backend's ``fill`` op: nothing crosses from the host);
    ``constant(key, host_array)`` copies a host array (any dtype) to the device once.

    ``ops`` are the backend's kernels with this workspace's ``scratch`` given to every op that
    takes one (the CUDA reductions keep their per-block partial sums there), so that a loop's
    steps allocate nothing on the device for them; the ops' results are the same.
    """

    def __init__(self, backend: Backend):
        self.backend = backend
        self._arrays = {}
        self.ops = _OpsWithScratch(backend.ops, self.scratch)

    def buffer(self, key, shape, dtype=None):
        dtype = np.dtype(self.backend.dtype if dtype is None else dtype)
        full_key = ("buffer", key, tuple(int(s) for s in shape), dtype.str)
        array = self._arrays.get(full_key)
        if array is None:
            array = self._arrays[full_key] = self.backend.empty(tuple(shape), dtype)
        return array

    def zeros(self, key, shape):
        return self.ops.fill(0.0, self.buffer(key, shape))

    def constant(self, key, host_array):
        full_key = ("constant", key)
        array = self._arrays.get(full_key)
        if array is None:
            array = self._arrays[full_key] = self.backend.upload(host_array)
        return array

    def scratch(self, shape):
        """A float32 buffer that ops fill and read within one call (``ops`` pass it): the same
        one for every call and op with that shape, as each op is done with it when the next starts
        (ops run in order)."""
        return self.buffer(("op scratch",), shape, np.float32)


class _OpsWithScratch:
    """A kernel module whose ops that take a ``scratch`` parameter get ``scratch`` bound; every
    other name is the module's own."""

    def __init__(self, ops, scratch):
        self._ops = ops
        self._scratch = scratch

    def __repr__(self):
        return f"<{self._ops.__name__} with a workspace's scratch>"

    def __getattr__(self, name):
        if name.startswith("_"):  # private and special names are never ops (nor ours, while unset)
            raise AttributeError(name)
        value = getattr(self._ops, name)
        if callable(value) and _takes_scratch(value):
            value = functools.partial(value, scratch=self._scratch)
        setattr(self, name, value)  # later look-ups find it without __getattr__
        return value


def _takes_scratch(fn) -> bool:
    try:
        return "scratch" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # an object without a Python signature
        return False


def cuda_status() -> tuple[bool, str]:
    """(usable, reason): whether the CUDA backend can run here, and why not when it cannot."""
    try:
        cuda_kernels = importlib.import_module("kernels.cuda")
    except ImportError as exc:  # kernels.cuda's own message already says what to install
        advice = "" if "pip install" in str(exc) else f"; {CUDA_INSTALL_HINT}"
        return False, f"the CUDA backend is not installed ({exc}){advice}"
    try:
        if cuda_kernels.is_available():
            return True, ""
    except Exception as exc:  # a broken driver must not crash device selection
        return False, f"CUDA is not usable here: {exc}"
    return False, "no usable NVIDIA GPU or CUDA driver was found (numba.cuda.is_available() is False)"


def get_backend(device: str = "cpu") -> Backend:
    """Backend for 'cpu', 'cuda', 'auto' (CUDA when usable, else CPU) or 'reference' (NumPy)."""
    if isinstance(device, Backend):
        return device
    if device not in DEVICES:
        raise ConvscopeError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "auto":
        # the CUDA simulator is a test tool, never a choice for real work
        simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
        device = "cuda" if not simulated and cuda_status()[0] else "cpu"
    if device == "cuda":
        usable, reason = cuda_status()
        if not usable:
            raise ConvscopeError(f"--device cuda: {reason}")
        return Backend("cuda", importlib.import_module("kernels.cuda"))
    return Backend(device, importlib.import_module(f"kernels.{device}"))
