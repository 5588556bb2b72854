"""Synthetic weight files in exactly the layouts of real ones, for tests, fixtures and benchmarks.

The official VGG16 files cannot be downloaded here, so tests write files with the same structure
(``layer_names`` / ``weight_names`` attributes, dataset names, shapes) filled with deterministic
pseudo-random weights. The generator is a counter-based hash (splitmix64) in plain NumPy integer
arithmetic, so the same seed gives the same bytes on any machine and any NumPy version; that is
what lets small stored fixtures (reference outputs from PyTorch/Keras) match weights regenerated
at test time.

Scales are He-uniform (limit sqrt(6 / fan_in)) so that activations neither vanish nor explode
through 13 ReLU convolutions on caffe-preprocessed input; the last layer is scaled down so that
the logits stay in a range where the softmax is not saturated.
"""

import zlib

import h5py
import numpy as np

from engine.architectures import vgg16_layers

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(z):
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniform(seed: int, key: str, shape, low=-1.0, high=1.0) -> np.ndarray:
    """Deterministic float32 uniform(low, high) array for (seed, key)."""
    size = int(np.prod(shape))
    base = np.uint64((seed * 1_000_003 + zlib.crc32(key.encode())) & 0xFFFFFFFFFFFF) << np.uint64(16)
    out = np.empty(size, dtype=np.float32)
    chunk = 1 << 22
    for start in range(0, size, chunk):
        stop = min(size, start + chunk)
        with np.errstate(over="ignore"):
            counters = base * np.uint64(0x100000001B3) + np.arange(start, stop, dtype=np.uint64)
        bits = _splitmix64(counters) >> np.uint64(40)  # 24 random bits
        out[start:stop] = (bits.astype(np.float64) / float(1 << 24)).astype(np.float32)
    return (np.float32(low) + np.float32(high - low) * out).astype(np.float32).reshape(shape)


def layer_arrays(seed: int, name: str, kernel_shape, last: bool = False):
    """(kernel, bias) for a conv (kh, kw, cin, cout) or dense (n_in, n_out) layer, TF layout."""
    fan_in = int(np.prod(kernel_shape[:-1]))
    limit = np.sqrt(6.0 / fan_in) * (0.1 if last else 1.0)
    kernel = uniform(seed, name + "/kernel", kernel_shape, -limit, limit)
    bias = uniform(seed, name + "/bias", (kernel_shape[-1],), -0.05, 0.05)
    return kernel, bias


def vgg16_arrays(seed: int = 0, include_top: bool = True):
    """{layer name: (kernel, bias)} for VGG16 in the TensorFlow layout, deterministic in seed."""
    table = [t for t in vgg16_layers(include_top) if "kernel_shape" in t]
    return {
        t["name"]: layer_arrays(seed, t["name"], t["kernel_shape"], last=(t["name"] == "predictions"))
        for t in table
    }


def _names(values):
    return np.array([v.encode("utf8") for v in values]) if values else np.zeros((0,), "float64")


def write_vgg16_official(path, include_top: bool = False, seed: int = 0, dataset_style: str = "W_1"):
    """The official Keras file layout (``vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5``).

    Root attribute ``layer_names`` (``input_1``, every layer in order), each layer a group whose
    ``weight_names`` attribute lists ``<layer>_W_1:0`` and ``<layer>_b_1:0`` (dataset_style
    "W_1", as the official files) or ``<layer>/kernel:0`` and ``<layer>/bias:0`` ("kernel").
    Returns the arrays written, {name: (kernel, bias)}.
    """
    arrays = vgg16_arrays(seed, include_top)
    names = ["input_1"] + [t["name"] for t in vgg16_layers(include_top)]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = _names(names)
        for name in names:
            group = f.create_group(name)
            if name not in arrays:
                group.attrs["weight_names"] = _names([])
                continue
            if dataset_style == "W_1":
                wnames = [f"{name}_W_1:0", f"{name}_b_1:0"]
            else:
                wnames = [f"{name}/kernel:0", f"{name}/bias:0"]
            group.attrs["weight_names"] = _names(wnames)
            for wname, value in zip(wnames, arrays[name]):
                group.create_dataset(wname, data=value)
    return arrays
