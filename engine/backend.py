"""The one place that picks a compute backend and knows where its arrays live.

A ``Backend`` bundles a kernel module (``kernels.cpu``, ``kernels.cuda`` or the NumPy oracle
``kernels.reference``) with the array helpers everything above it uses: ``owns(x)`` (is x one
of this backend's arrays), ``asarray`` / ``to_host`` (move between host and device), ``empty``,
``zeros``, ``copy``, ``copy_into``, and ``buffers()``: a pool of named, reused buffers (the
model's layer outputs and gradient arenas, an optimisation loop's work arrays). Code above this
module calls ``backend.ops.<op>`` and these helpers, and never asks which device it is on.

Arrays of the 'cpu' and 'reference' backends are NumPy arrays; those of 'cuda' are numba device
arrays. ``dtype`` is float32, except a 'reference' backend made for float64 gradient checks.
"""

import functools
import importlib
import inspect
import os

import numpy as np

from engine.errors import ConvscopeError
from kernels._pages import pages

DEVICES = ("cpu", "cuda", "auto", "reference")

CUDA_INSTALL_HINT = 'install the CUDA extra with: pip install -e ".[cuda]" (numba-cuda and its CUDA libraries)'


class Backend:
    """Kernels plus the array helpers of one device."""

    def __init__(self, name: str, ops, dtype=np.float32):
        self.name = name
        self.ops = ops
        self.dtype = np.dtype(dtype)
        self._host = name != "cuda"

    def __repr__(self):
        return f"Backend({self.name!r})"

    def owns(self, x) -> bool:
        """True when x is an array of this backend (a NumPy array on the host ones, a numba device
        array on 'cuda'): ops take it as it is."""
        if self._host:
            return isinstance(x, np.ndarray)
        return not isinstance(x, np.ndarray) and hasattr(x, "copy_to_host")

    def asarray(self, x):
        """x as an array of this backend: itself when it owns x (on the host: when x is already
        C-contiguous in this dtype), else a C-contiguous copy in this dtype on the device."""
        if self._host:
            return np.ascontiguousarray(x, dtype=self.dtype)
        if self.owns(x):
            return x
        from numba import cuda

        return cuda.to_device(np.ascontiguousarray(x, dtype=self.dtype))

    def upload(self, array):
        """A host array of any dtype (indices, masks) on this device, dtype kept; a copy."""
        host = np.array(array, copy=True, order="C")
        if self._host:
            return host
        from numba import cuda

        return cuda.to_device(host)

    def frozen(self, array):
        """A copy on this device that the engine never writes (conv kernels); host copies are
        marked read-only, which lets the CPU convolutions cache transforms of them."""
        param = self.asarray(array)
        if self._host:
            param = np.array(param, copy=True)
            param.setflags(write=False)
        return param

    def copy_into(self, source, out):
        """out[...] = source, where out is an array of this backend and source a host array or
        one of this backend's; returns out."""
        if self._host:
            np.copyto(out, source)
        else:
            out.copy_to_device(np.ascontiguousarray(source) if isinstance(source, np.ndarray) else source)
        return out

    def to_host(self, array, copy: bool = True) -> np.ndarray:
        """A NumPy array with the values of one of this backend's arrays (on the host, the array
        itself when ``copy`` is False)."""
        if self._host:
            return np.array(array, copy=True) if copy else array
        return array.copy_to_host()

    def empty(self, shape, dtype=None):
        dtype = self.dtype if dtype is None else dtype
        if self._host:
            return np.empty(shape, dtype=dtype)
        from numba import cuda

        return cuda.device_array(shape, dtype=dtype)

    def zeros(self, shape, dtype=None):
        return self.upload(np.zeros(shape, dtype=self.dtype if dtype is None else dtype))

    def copy(self, array):
        """A new array on this device holding the same values."""
        return self.copy_into(array, self.empty(array.shape, array.dtype))

    def conv_options(self, algorithm: str) -> dict:
        """Keyword arguments that ask this backend's convolutions for ``algorithm``: only the
        backends whose ``conv2d_forward`` takes an ``algorithm`` have a choice; "auto" is theirs."""
        if algorithm == "auto" or "algorithm" not in _parameters(self.ops.conv2d_forward):
            return {}
        return {"algorithm": algorithm}

    def buffers(self) -> "Buffers":
        return Buffers(self)


class Buffers:
    """Named buffers of one backend, reused from call to call: the one pool behind the model's
    passes and the optimisation loop.

    ``get(key, shape)`` returns a view shaped ``shape`` on the flat buffer of ``key`` (and dtype),
    grown to the largest size asked for and never shrunk, so inputs of many sizes (DeepDream's
    octaves, tiles) share one buffer per key. A later ``get`` of the same key may return the same
    memory: a key names one role at a time. ``zeros`` also clears it on the device (the ``fill``
    op); ``constant(key, host_array)`` copies a host array (any dtype) to the device once.

    ``ops`` are the backend's kernels with ``scratch`` given to every op that takes one (the CUDA
    reductions keep their per-block partial sums there), so that repeated steps allocate nothing
    on the device for them; the ops' results are the same.
    """

    def __init__(self, backend: Backend):
        self.backend = backend
        self._flat = {}
        self._constants = {}
        self.ops = _OpsWithScratch(backend.ops, self.scratch)

    def __iter__(self):
        """The keys of the flat buffers: each key + (dtype string,)."""
        return iter(self._flat)

    def items(self):
        return self._flat.items()

    def _full_key(self, key, dtype):
        """(key..., dtype string) and the dtype (default: the backend's)."""
        dtype = np.dtype(self.backend.dtype if dtype is None else dtype)
        return (*(key if isinstance(key, tuple) else (key,)), dtype.str), dtype

    def get(self, key, shape, dtype=None):
        full_key, dtype = self._full_key(key, dtype)
        size = int(np.prod(shape))
        flat = self._flat.get(full_key)
        if flat is None or flat.size < size:
            self._flat[full_key] = None  # free the old one first
            if self.backend._host:  # on their own pages: no heap left behind as buffers grow
                flat = self._flat[full_key] = pages(size, dtype)
            else:
                flat = self._flat[full_key] = self.backend.empty((max(size, 1),), dtype)
        return flat[:size].reshape(tuple(int(s) for s in shape))

    def capacity(self, key, dtype=None) -> int:
        """Elements the buffer of ``key`` holds now (0: none yet): a ``get`` of at most that many
        returns its memory without allocating."""
        flat = self._flat.get(self._full_key(key, dtype)[0])
        return 0 if flat is None else int(flat.size)

    def zeros(self, key, shape):
        return self.ops.fill(0.0, self.get(key, shape))

    def constant(self, key, host_array):
        array = self._constants.get(key)
        if array is None:
            array = self._constants[key] = self.backend.upload(host_array)
        return array

    def scratch(self, shape):
        """A float32 buffer that ops fill and read within one call: one for every call and op, as
        each op is done with it when the next starts (ops run in order)."""
        return self.get("op scratch", shape, np.float32)


class _OpsWithScratch:
    """A kernel module whose ops that take a ``scratch`` parameter get ``scratch`` bound; every
    other name is the module's own."""

    def __init__(self, ops, scratch):
        self._ops = ops
        self._scratch = scratch

    def __repr__(self):
        return f"<{self._ops.__name__} with reused scratch>"

    def __getattr__(self, name):
        if name.startswith("_"):  # private and special names are never ops (nor ours, while unset)
            raise AttributeError(name)
        value = getattr(self._ops, name)
        if callable(value) and "scratch" in _parameters(value):
            value = functools.partial(value, scratch=self._scratch)
        setattr(self, name, value)  # later look-ups find it without __getattr__
        return value


def _parameters(fn):
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):  # an object without a Python signature
        return {}


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


def get_backend(device: str = "cpu", dtype=np.float32) -> Backend:
    """Backend for 'cpu', 'cuda', 'auto' (CUDA when usable, else CPU) or 'reference' (NumPy; any
    ``dtype``, float64 for gradient checks)."""
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
    return Backend(device, importlib.import_module(f"kernels.{device}"), dtype if device == "reference" else np.float32)
