"""Every CUDA kernel of the backend with the argument types its launcher passes, so that tools can
compile them ahead of time without a GPU (``benchmarks/ptx_report.py``: registers, shared memory,
spills).

Derived, not kept by hand: ``kernels()`` calls the launcher of every op of ``kernels.OP_NAMES``
once on small host arrays (an NHWC batch (2, 4, 4, 2), a dense batch (2, 4), per-sample vectors
(2,), named after the reference's parameters) with every ``*_kernel`` launch recorded instead of
run, and takes each kernel's argument types from what the launcher passed (``numba.typeof``:
C-contiguous arrays, Python ints as int64, float32 scalars).
"""

import contextlib
import inspect

import numba
import numpy as np

from kernels import OP_NAMES, reference
from kernels.cuda import activations, conv, elementwise, fourier, gemm, images, pool, scores, softmax

MODULES = (activations, conv, elementwise, fourier, images, pool, scores, softmax)

BATCH = np.zeros((2, 4, 4, 2), np.float32)
DENSE = np.zeros((2, 4), np.float32)
SAMPLES = np.zeros(2, np.float32)
EXAMPLES = {
    "kernel": np.zeros((3, 3, 2, 2), np.float32), "bias": np.zeros(2, np.float32), "pad": (1, 1), "relu": True,
    "mode": 0, "pool": (2, 2), "argmax": np.zeros((2, 4, 4, 2), np.uint8), "alpha": 1.0, "value": 0.0,
    "scale": SAMPLES, "total": SAMPLES, "active": np.ones(2, np.int32), "index": np.zeros(2, np.int64),
    "method": "rms", "eps": 1e-5, "weight": 1.0, "center": 0.0, "beta": 2.0, "region": (0, 4, 0, 4),
    "shift": (1, 1), "origin": (0, 0),
}
DENSE_EXAMPLES = {"kernel": np.zeros((4, 4), np.float32), "bias": np.zeros(4, np.float32)}
SPECTRUM = np.zeros((2, 2, 4, 3, 2), np.float32)  # the spectrum of BATCH: (N, C, H, W//2+1, 2)
FOURIER_EXAMPLES = {"spectrum": SPECTRUM, "grad_spectrum": SPECTRUM, "scale": np.zeros((4, 3), np.float32)}


def example_arguments(op):
    """Host arguments for ``op``, by the names of the reference's parameters."""
    dense = op.startswith(("dense", "softmax"))
    examples = {**EXAMPLES, **(DENSE_EXAMPLES if dense else {})}
    batch = DENSE if dense else BATCH
    if op == "sample_scale":
        examples["out"] = SAMPLES
    if op.startswith("irfft2"):
        examples.update(FOURIER_EXAMPLES)
    return [examples.get(name, batch) for name in inspect.signature(getattr(reference, op)).parameters]


class _Recorder:
    """Stands for a kernel: ``[grid, block](*args)`` records the argument types, runs nothing."""

    def __init__(self, name, dispatcher, table):
        self.name, self.dispatcher, self.table = name, dispatcher, table

    def __getitem__(self, launch):
        return self

    def __call__(self, *args):
        self.table[self.name] = (self.dispatcher.py_func, tuple(numba.typeof(a) for a in args))


@contextlib.contextmanager
def _recording(table):
    """Every ``*_kernel`` of MODULES (and the GEMM kernel factory) replaced by a recorder, device
    allocations by host ones; all restored on exit."""
    saved = []

    def replace(owner, name, value):
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    make = gemm.conv_gemm_kernel
    try:
        for module in MODULES:
            for name in dir(module):
                if name.endswith("_kernel") and hasattr(getattr(module, name), "py_func"):
                    replace(module, name, _Recorder(name.removesuffix("_kernel"), getattr(module, name), table))
        tile_name = lambda tile: "conv_gemm[" + "x".join(map(str, tile)) + "]"  # noqa: E731
        replace(gemm, "conv_gemm_kernel", lambda tile: _Recorder(tile_name(tile), make(tile), table))
        replace(numba.cuda, "device_array", lambda shape, dtype=np.float32: np.zeros(shape, dtype))
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def kernels():
    """[(name, python function, argument types)] for every kernel the launchers of OP_NAMES run."""
    import kernels.cuda as cuda_ops

    table = {}
    with _recording(table):
        for op in OP_NAMES:
            getattr(cuda_ops, op)(*example_arguments(op))
    return [(name, function, argtypes) for name, (function, argtypes) in table.items()]
