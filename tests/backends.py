"""Run any kernel op on any backend from host (NumPy) arrays, so one test serves every backend.

``run(backend, op, *args)`` calls ``kernels.<backend>.<op>(*args)``. For ``cuda`` every array
argument is copied to the device first and copied back afterwards (the op writes its outputs in
place, so the caller's output buffers receive the result). Under ``NUMBA_ENABLE_CUDASIM=1``
(set by ``conftest.py``) this exercises the CUDA kernels on the CPU.
"""

import importlib

import numpy as np


def backend_names():
    names = ["cpu"]
    try:
        cuda_backend = importlib.import_module("kernels.cuda")
        if cuda_backend.is_available():
            names.append("cuda")
    except ImportError:
        pass
    return names


def run(backend, op, *args):
    fn = getattr(importlib.import_module(f"kernels.{backend}"), op)
    if backend != "cuda":
        return fn(*args)
    on_device(fn, *args)
    return None


def on_device(fn, *args):
    """Call fn on device copies of the array arguments; copy every array back into its host one."""
    from numba import cuda

    device_args = [cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in args]
    fn(*device_args)
    cuda.synchronize()
    for host, dev in zip(args, device_args):
        if isinstance(host, np.ndarray):
            dev.copy_to_host(host)
