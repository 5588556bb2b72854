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

Every file is treated as hostile. libhdf5 runs only in a child process with time limits
(``engine.h5_isolated``), which refuses external links, external raw storage, virtual datasets
and filter plugins before any data is read; each dataset's shape, dtype and stored size are
checked against what its layer needs before it is read; values are checked to be finite after the
cast to float32. Nothing is unpickled or evaluated: the config is read with ``json.loads``.
"""

import json
import os
import pathlib
import stat

import numpy as np

from engine.architectures import VGG16_TOP_INPUT, vgg16_layers
from engine.errors import ConvscopeError
from engine.h5_isolated import IsolatedH5
from engine.keras_config import KerasLayer, parse_model_config
from engine.resources import available_memory
from engine.spec import LayerSpec, NetworkSpec

MAX_CONFIG_DEPTH = 100  # a Keras 3 model_config nests about 11 levels deep
# A dataset may not declare more float32 bytes than this many times what it stores (plus 1 MiB):
# trained weights hardly compress, so a larger ratio is a compression bomb (or unwritten data).
MAX_COMPRESSION = 64


def read_network(path) -> NetworkSpec:
    """The network stored in the Keras h5 file at ``path``, arrays in engine conventions."""
    path = pathlib.Path(path)
    label = f"weights file '{path}'"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConvscopeError(f"{label} does not exist") from None
    except OSError as exc:
        raise ConvscopeError(f"{label} cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ConvscopeError(f"{label} is a directory, not an h5 file")
    if not stat.S_ISREG(info.st_mode):
        raise ConvscopeError(f"{label} is not a regular file (a device, pipe or socket); give an h5 file")
    if info.st_size == 0:
        raise ConvscopeError(f"{label} is empty (was a download interrupted?)")
    if not os.access(path, os.R_OK):
        raise ConvscopeError(f"{label} cannot be read (permission denied)")
    with IsolatedH5(path, label) as f:
        try:
            return _read(f, label)
        except ConvscopeError as exc:  # name the file in every message
            if str(exc).startswith(label):
                raise
            raise ConvscopeError(f"{label}: {exc}") from None


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


def _text(attribute, default="") -> str:
    """An attribute (``engine.h5_isolated.Attribute`` or None) as one string."""
    if attribute is None:
        return default
    values = [str(v) for v in attribute.values]
    return values[0] if len(values) == 1 and not attribute.shape else " ".join(values)


def _names(attribute) -> list[str]:
    return [str(v) for v in attribute.values] if attribute is not None else []


def _count(attribute, what, label) -> int:
    """A non-negative integer attribute (``nb_layers``, ``nb_params``)."""
    values = [] if attribute is None else attribute.values
    value = values[0] if len(values) == 1 else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        shown = json.dumps(values)[:40]
        raise ConvscopeError(f"{label}: attribute {what} is {shown}, expected one non-negative integer")
    return value


def _is_theano(attrs) -> bool:
    return _text(attrs.get("backend")).strip().lower() == "theano"


# ---- conversion and validation -------------------------------------------------------------


def _shape_text(shape):
    return "(" + ", ".join("any" if d is None else str(d) for d in shape) + ")"


def _matches(shape, expected):
    return len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))


def _array(layer, what, node, expected, theano_shape=None):
    """The dataset ``node`` as float32, after checking (before reading a value) that it is a
    dataset of floats of shape ``expected`` (or ``theano_shape``) whose declared size is plausible
    for what the file stores; after reading, that every value is finite as float32."""
    if node.kind != "dataset":
        raise ConvscopeError(f"layer '{layer}': {what} '{node.path}' is a {node.kind}, not a dataset")
    shape = node.shape
    accepted = [expected] + ([theano_shape] if theano_shape else [])
    if shape is None or not any(_matches(shape, e) for e in accepted):
        note = f" or {_shape_text(theano_shape)} (Theano ordering)" if theano_shape else ""
        shown = "empty" if shape is None else _shape_text(shape)
        raise ConvscopeError(f"layer '{layer}': {what} has shape {shown}, expected {_shape_text(expected)}{note}")
    if node.dtype is None or node.dtype.kind != "f":
        dtype = "an unsupported type" if node.dtype is None else node.dtype
        raise ConvscopeError(f"layer '{layer}': {what} has dtype {dtype}, expected floating point")
    values = int(np.prod(shape, dtype=object))
    need = 4 * values
    if values and node.stored == 0:
        raise ConvscopeError(f"layer '{layer}': {what} has no stored data (the dataset was never written)")
    if need > MAX_COMPRESSION * node.stored + (1 << 20):
        raise ConvscopeError(
            f"layer '{layer}': {what} declares {values:,} values but the file stores only {node.stored:,} "
            "bytes for it (a compression bomb or unwritten data); the file is damaged or hostile"
        )
    available = available_memory()
    if need > available:
        raise ConvscopeError(f"layer '{layer}': {what} needs {need / 1e9:.1f} GB, more than the "
                             f"{available / 1e9:.1f} GB of memory available")
    array = node.read()
    if not np.isfinite(array).all():  # after the float32 cast: 1e300 as float64 is inf here
        raise ConvscopeError(f"layer '{layer}': {what} contains NaN or infinite values (as float32)")
    return array


def _theano_conv(layer, node, expected):
    """A Theano conv kernel (c_out, c_in, kh, kw), true convolution -> (kh, kw, c_in, c_out)."""
    kh, kw, c_in, c_out = expected
    kernel = _array(layer, "kernel", node, expected, theano_shape=(c_out, c_in, kh, kw))
    if not _matches(kernel.shape, expected):  # Keras 2 with the Theano backend stored it only flipped
        kernel = kernel.transpose(2, 3, 1, 0)
    return np.ascontiguousarray(kernel[::-1, ::-1, :, :])


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
            kernel_node, bias_node = fetch(t["name"], index)
            index += 1
            expected = t["kernel_shape"]
            if theano and spec.kind == "conv2d":
                kernel = _theano_conv(spec.name, kernel_node, expected)
            else:
                kernel = _array(spec.name, "kernel", kernel_node, expected)
                if theano and after_flatten:
                    side = VGG16_TOP_INPUT[0] // 32  # five 2x2 pools
                    kernel = _chw_rows_to_hwc(kernel, (c_last, side, side))
            spec.kernel = np.ascontiguousarray(kernel)
            spec.bias = _array(spec.name, "bias", bias_node, expected[-1:])
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
        if not name or name not in f:
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
    """The datasets (``engine.h5_isolated.Node``) listed in ``group``'s weight_names, in order:
    (kernel, bias), or (kernel, None) when ``count`` is 1."""
    weight_names = _names(group.attrs.get("weight_names"))
    if len(weight_names) != count:
        expected = "a kernel and a bias" if count == 2 else "a kernel"
        raise ConvscopeError(f"layer '{name}' has {len(weight_names)} weight arrays, expected {expected}")
    nodes = []
    for weight_name in weight_names:
        if not weight_name or weight_name not in group:
            raise ConvscopeError(f"layer '{name}': weight '{weight_name}' listed in weight_names is missing")
        nodes.append(group[weight_name])
    return nodes if count == 2 else (nodes[0], None)


def _read_2016_file(f, label):
    n_layers = _count(f.attrs["nb_layers"], "nb_layers", label)
    params = []
    for k in range(n_layers):
        name = f"layer_{k}"
        if name not in f:
            raise ConvscopeError(f"{label} declares {n_layers} layers but has no group '{name}'")
        n_params = _count(f[name].attrs["nb_params"], f"nb_params of '{name}'", label) \
            if "nb_params" in f[name].attrs else 0
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
        for p in range(2):
            if f"param_{p}" not in group:
                raise ConvscopeError(f"{label}: group '{params[index]}' has no dataset 'param_{p}'")
        return [group[f"param_{p}"] for p in range(2)]

    return _vgg16_network(len(params) == 16, fetch, True, "VGG16 2016 nb_layers file (theano ordering)")


# ---- whole models saved by model.save() -----------------------------------------------------


def _read_model_file(f, label):
    config = _model_config(_text(f.attrs["model_config"]), label)
    model_name, klayers, input_shape = parse_model_config(config)
    weights = f["model_weights"] if "model_weights" in f else f
    keras_version = _text(f.attrs.get("keras_version", weights.attrs.get("keras_version")))
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
    backend = _text(f.attrs.get("backend", weights.attrs.get("backend")))
    metadata = {"model_name": model_name, "keras_version": keras_version, "backend": backend}
    return NetworkSpec(layers, (h, w, c), source, metadata)


def _model_config(text, label):
    """The model_config JSON, refusing nesting deeper than any Keras config before walking it."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConvscopeError(f"{label} has a model_config that is not valid JSON ({exc})") from None
    except RecursionError:
        raise ConvscopeError(f"{label} has a model_config nested deeper than Python can parse; "
                             f"a Keras model config nests about 10 levels") from None
    stack = [(config, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise ConvscopeError(f"{label} has a model_config nested more than {MAX_CONFIG_DEPTH} levels "
                                 "deep; a Keras model config nests about 10 levels")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return config


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
            kernel_node, bias_node = fetch(kl)
            expected = (*kl.kernel_size, c, kl.filters)
            kernel = _array(kl.name, "kernel", kernel_node, expected)
            if theano:  # Keras' legacy conversion: Theano applied kernels as true convolution
                kernel = kernel[::-1, ::-1, :, :]
            spec.kernel = np.ascontiguousarray(kernel)
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
            kernel_node, bias_node = fetch(kl)
            if flat_chw is not None and n_flat is None:
                raise ConvscopeError(
                    f"layer '{kl.name}' follows a channels_first Flatten but the model config has no "
                    "input shape to reorder its weights with"
                )
            kernel = _array(kl.name, "kernel", kernel_node, (n_flat, kl.filters))
            if flat_chw is not None:
                kernel = _chw_rows_to_hwc(kernel, flat_chw)
                flat_chw = None
            spec.kernel = np.ascontiguousarray(kernel)
            n_flat = kl.filters
        if kl.kind in ("conv2d", "dense"):
            n_out = spec.kernel.shape[-1]
            if bias_node is None:  # use_bias=False
                spec.bias = np.zeros(n_out, np.float32)
            else:
                spec.bias = _array(kl.name, "bias", bias_node, (n_out,))
        if kl.kind in ("conv2d", "maxpool2d") and h is not None and (h <= 0 or w <= 0):
            raise ConvscopeError(f"layer '{kl.name}': the model's input is too small for this layer")
        layers.append(spec)
    return layers
