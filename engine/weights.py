"""Read Keras h5 weight files, in every layout convscope supports, into a ``NetworkSpec``.

The layout is detected from the file's contents (never its name):

* ``model_config`` root attribute: a whole model saved by ``model.save()`` (Keras 2 or 3). The
  architecture comes from the config (``engine.keras_config``); arrays from ``model_weights``.
* ``nb_layers`` root attribute: the 2016 ``vgg16_weights.h5`` of the Keras blog post "How
  convolutional neural networks see the world": groups ``layer_{k}`` with ``param_{p}`` datasets,
  Theano ordering; the arrays are matched to VGG16 by order.
* ``layer_names`` root attribute: a weights-only file (the official VGG16 files); the network is
  VGG16 (``engine.architectures``) and arrays are matched to it by layer name. A ``backend``
  attribute of "theano" means Theano ordering.

Arrays follow each layer group's ``weight_names`` attribute, as Keras does (kernel, then bias),
whatever the datasets are called. Everything is converted to the engine's conventions
(``kernels/__init__.py``): conv kernels (kh, kw, c_in, c_out) applied as cross-correlation, dense
kernels (n_in, n_out) fed by an (h, w, c) flatten, float32, C-contiguous. Theano stored conv
kernels as (c_out, c_in, kh, kw) applied as true convolution (so they are transposed and flipped),
and flattened channels-first tensors in (c, h, w) order (so the rows of the dense layer after the
flatten are permuted). Every shape is validated; any problem is a one-line ``ConvscopeError``.
Only h5py and ``json.loads`` touch the file: nothing is unpickled or evaluated.
"""

import json
import pathlib
import re

import h5py
import numpy as np

from engine.architectures import VGG16_TOP_INPUT, vgg16_layers
from engine.errors import ConvscopeError
from engine.keras_config import KerasLayer, parse_model_config
from engine.spec import LayerSpec, NetworkSpec


def read_network(path) -> NetworkSpec:
    """The network stored in the Keras h5 file at ``path``, arrays in engine conventions."""
    path = pathlib.Path(path)
    label = f"weights file '{path}'"
    if not path.exists():
        raise ConvscopeError(f"{label} does not exist")
    if path.is_dir():
        raise ConvscopeError(f"{label} is a directory, not an h5 file")
    if path.stat().st_size == 0:
        raise ConvscopeError(f"{label} is empty (was a download interrupted?)")
    if not h5py.is_hdf5(path):
        raise ConvscopeError(f"{label} is not an HDF5 file (is it truncated or an HTML error page?)")
    try:
        with h5py.File(path, "r") as f:
            return _read(f, label)
    except ConvscopeError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        sizes = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", reason)
        if sizes:
            raise ConvscopeError(
                f"{label} is truncated ({int(sizes[1]):,} of {int(sizes[2]):,} bytes; "
                "was a download or copy interrupted?)"
            ) from exc
        raise ConvscopeError(f"{label} is damaged or truncated and cannot be read ({reason})") from exc


def _read(f, label):
    if "model_config" in f.attrs:
        return _read_model_file(f, label)
    if "nb_layers" in f.attrs:
        return _read_2016_file(f, label)
    if "layer_names" in f.attrs:
        return _read_weights_only(f, label)
    if "layers" in f and "vars" in f:
        raise ConvscopeError(
            f"{label} is a Keras 3 '.weights.h5' file, which holds no layer names; "
            "save the whole model with model.save('model.h5') instead"
        )
    raise ConvscopeError(
        f"{label} is an HDF5 file of unknown layout (no 'layer_names', 'model_config' or 'nb_layers'); "
        "expected a Keras weights or model.save() file"
    )


def _text(value) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return str(value)


def _names(value) -> list[str]:
    return [_text(v) for v in np.asarray(value).ravel()] if value is not None else []


def _is_theano(attrs) -> bool:
    return _text(attrs.get("backend", "")).strip().lower() == "theano"


# ---- conversion and validation -------------------------------------------------------------


def _shape_text(shape):
    return "(" + ", ".join("any" if d is None else str(d) for d in shape) + ")"


def _matches(shape, expected):
    return len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))


def _checked(layer, what, array, expected, note=""):
    """``array`` as float32 C-contiguous, after checking its shape, dtype and values."""
    if not _matches(array.shape, expected):
        raise ConvscopeError(
            f"layer '{layer}': {what} has shape {_shape_text(array.shape)}, expected "
            f"{_shape_text(expected)}{note}"
        )
    if array.dtype.kind != "f":
        raise ConvscopeError(f"layer '{layer}': {what} has dtype {array.dtype}, expected floating point")
    if not np.isfinite(array).all():
        raise ConvscopeError(f"layer '{layer}': {what} contains NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


def _theano_conv(layer, kernel, expected):
    """A Theano conv kernel (c_out, c_in, kh, kw), true convolution -> (kh, kw, c_in, c_out)."""
    kh, kw, c_in, c_out = expected
    if kernel.shape == (c_out, c_in, kh, kw):
        kernel = kernel.transpose(2, 3, 1, 0)
    elif not _matches(kernel.shape, expected):  # Keras 2 with the Theano backend: only flipped
        raise ConvscopeError(
            f"layer '{layer}': kernel has shape {_shape_text(kernel.shape)}, expected "
            f"{_shape_text((c_out, c_in, kh, kw))} (Theano ordering)"
        )
    return kernel[::-1, ::-1, :, :]


def _chw_rows_to_hwc(kernel, chw):
    """Permute a dense kernel's rows from a (c, h, w) flatten to the engine's (h, w, c) flatten."""
    c, h, w = chw
    return kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(h * w * c, -1)


# ---- VGG16 weights-only layouts -------------------------------------------------------------


def _vgg16_network(include_top, fetch, theano, source):
    """VGG16 from the architecture table, with (kernel, bias) from ``fetch(name, index)``."""
    layers = []
    after_flatten = False
    index = 0
    c_last = 3
    for t in vgg16_layers(include_top):
        spec = LayerSpec(name=t["name"], kind=t["kind"], activation=t.get("activation", "linear"),
                         padding=t.get("padding", "valid"), pool_size=t.get("pool_size", (2, 2)))
        if "kernel_shape" in t:
            kernel, bias = fetch(t["name"], index)
            index += 1
            expected = t["kernel_shape"]
            if theano and spec.kind == "conv2d":
                kernel = _theano_conv(spec.name, kernel, expected)
            elif theano and after_flatten:
                if _matches(kernel.shape, expected):
                    side = VGG16_TOP_INPUT[0] // 32  # five 2x2 pools
                    kernel = _chw_rows_to_hwc(kernel, (c_last, side, side))
            spec.kernel = _checked(spec.name, "kernel", kernel, expected)
            spec.bias = _checked(spec.name, "bias", bias, expected[-1:])
            after_flatten = False
            c_last = expected[-1]
        after_flatten = after_flatten or spec.kind == "flatten"
        layers.append(spec)
    input_shape = VGG16_TOP_INPUT if include_top else (None, None, 3)
    return NetworkSpec(layers, input_shape, source, {"family": "vgg16", "include_top": include_top})


def _read_weights_only(f, label):
    layer_names = _names(f.attrs["layer_names"])
    include_top = any(name in layer_names for name in ("fc1", "fc2", "predictions"))
    wanted = {t["name"] for t in vgg16_layers(include_top) if "kernel_shape" in t}
    for name in layer_names:
        if name not in f:
            raise ConvscopeError(f"{label} lists layer '{name}' in layer_names but has no group for it")
        if name not in wanted and _names(f[name].attrs.get("weight_names")):
            raise ConvscopeError(
                f"{label} has weights for layer '{name}', which VGG16 does not have "
                "(weights-only files carry no architecture; save other models with model.save())"
            )

    def fetch(name, _index):
        if name not in layer_names:
            raise ConvscopeError(f"{label} has no layer '{name}' (expected the VGG16 layers block1_conv1 ... "
                                 f"{'predictions' if include_top else 'block5_conv3'})")
        return _layer_arrays(f[name], name, 2)

    theano = _is_theano(f.attrs)
    source = f"Keras weights-only ({'theano' if theano else 'tensorflow'} ordering)"
    return _vgg16_network(include_top, fetch, theano, source)


def _layer_arrays(group, name, count):
    """The first ``count`` arrays listed in ``group``'s weight_names, in that order."""
    weight_names = _names(group.attrs.get("weight_names"))
    if len(weight_names) != count:
        expected = "a kernel and a bias" if count == 2 else "a kernel"
        raise ConvscopeError(f"layer '{name}' has {len(weight_names)} weight arrays, expected {expected}")
    arrays = []
    for weight_name in weight_names:
        if weight_name not in group:
            raise ConvscopeError(f"layer '{name}': weight '{weight_name}' listed in weight_names is missing")
        arrays.append(group[weight_name][()])
    return arrays if count == 2 else (arrays[0], None)


def _read_2016_file(f, label):
    n_layers = int(np.asarray(f.attrs["nb_layers"]).ravel()[0])
    params = []
    for k in range(n_layers):
        name = f"layer_{k}"
        if name not in f:
            raise ConvscopeError(f"{label} declares {n_layers} layers but has no group '{name}'")
        n_params = int(np.asarray(f[name].attrs.get("nb_params", 0)).ravel()[0])
        if n_params:
            if n_params != 2:
                raise ConvscopeError(f"{label}: group '{name}' has {n_params} params, expected 2 (W, b)")
            params.append(name)
    if len(params) not in (13, 16):
        raise ConvscopeError(
            f"{label} has {len(params)} layers with weights; VGG16 has 13 (convolutions only) or 16"
        )

    def fetch(_name, index):
        group = f[params[index]]
        return [group[f"param_{p}"][()] for p in range(2)]

    return _vgg16_network(len(params) == 16, fetch, True, "VGG16 2016 nb_layers file (theano ordering)")


# ---- whole models saved by model.save() -----------------------------------------------------


def _read_model_file(f, label):
    try:
        config = json.loads(_text(f.attrs["model_config"]))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConvscopeError(f"{label} has a model_config that is not valid JSON ({exc})") from exc
    model_name, klayers, input_shape = parse_model_config(config)
    weights = f["model_weights"] if "model_weights" in f else f
    keras_version = _text(f.attrs.get("keras_version", weights.attrs.get("keras_version", "")))
    theano = _is_theano(f.attrs) or _is_theano(weights.attrs)
    layer_names = set(_names(weights.attrs.get("layer_names")))

    def fetch(kl: KerasLayer):
        if kl.name not in layer_names or kl.name not in weights:
            raise ConvscopeError(f"{label} has no weights for layer '{kl.name}' of the model config")
        return _layer_arrays(weights[kl.name], kl.name, 2 if kl.use_bias else 1)

    layers = _model_layers(klayers, input_shape, fetch, theano)
    h, w, c = input_shape or (None, None, None)
    if c is None:
        c = next((spec.kernel.shape[2] for spec in layers if spec.kind == "conv2d"), None)
    major = keras_version.split(".")[0] if keras_version else ""
    source = f"Keras {major} model.save" if major else "Keras model.save"
    if theano:
        source += " (theano backend)"
    backend = _text(f.attrs.get("backend", weights.attrs.get("backend", "")))
    metadata = {"model_name": model_name, "keras_version": keras_version, "backend": backend}
    return NetworkSpec(layers, (h, w, c), source, metadata)


def _model_layers(klayers, input_shape, fetch, theano):
    """LayerSpecs for a parsed config, tracking (h, w, c) to validate and convert every array."""
    h, w, c = input_shape or (None, None, None)
    flat_chw = None  # (c, h, w) when the previous layer flattened in Theano/channels_first order
    n_flat = None
    layers = []
    for kl in klayers:
        spec = LayerSpec(name=kl.name, kind=kl.kind, activation=kl.activation, padding=kl.padding,
                         pool_size=kl.pool_size)
        if kl.kind == "conv2d":
            if n_flat is not None:
                raise ConvscopeError(f"layer '{kl.name}': a Conv2D after Flatten/Dense is not supported")
            kernel, bias = fetch(kl)
            expected = (*kl.kernel_size, c, kl.filters)
            if theano:  # Keras' legacy conversion: Theano applied kernels as true convolution
                kernel = _checked(kl.name, "kernel", kernel, expected)[::-1, ::-1, :, :]
            spec.kernel = _checked(kl.name, "kernel", kernel, expected)
            c = spec.kernel.shape[2] if c is None else c
            if kl.padding == "valid":
                h, w = [None if d is None else d - k + 1 for d, k in zip((h, w), kl.kernel_size)]
            c = kl.filters
        elif kl.kind == "maxpool2d":
            h, w = [None if d is None else d // p for d, p in zip((h, w), kl.pool_size)]
        elif kl.kind == "flatten":
            n_flat = None if None in (h, w, c) else h * w * c
            flat_chw = (c, h, w) if kl.flattens_chw else None
        elif kl.kind == "dense":
            if n_flat is None and h is not None:
                raise ConvscopeError(f"layer '{kl.name}': a Dense layer on an image (no Flatten before it) "
                                     "is not supported")
            kernel, bias = fetch(kl)
            if flat_chw is not None:
                if n_flat is None:
                    raise ConvscopeError(
                        f"layer '{kl.name}' follows a channels_first Flatten but the model config has no "
                        "input shape to reorder its weights with"
                    )
                kernel = _checked(kl.name, "kernel", kernel, (n_flat, kl.filters))
                kernel = _chw_rows_to_hwc(kernel, flat_chw)
                flat_chw = None
            spec.kernel = _checked(kl.name, "kernel", kernel, (n_flat, kl.filters))
            n_flat = kl.filters
        if kl.kind in ("conv2d", "dense"):
            n_out = spec.kernel.shape[-1]
            if bias is None:  # use_bias=False
                spec.bias = np.zeros(n_out, np.float32)
            else:
                spec.bias = _checked(kl.name, "bias", bias, (n_out,))
        if kl.kind in ("conv2d", "maxpool2d") and h is not None and (h <= 0 or w <= 0):
            raise ConvscopeError(f"layer '{kl.name}': the model's input is too small for this layer")
        layers.append(spec)
    return layers
