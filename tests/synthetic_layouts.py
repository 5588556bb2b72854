"""Synthetic weight files in every layout besides the official one, from the same arrays.

Each writer takes the TensorFlow-layout arrays of ``tests.synthetic`` (``vgg16_arrays`` or
``layer_arrays``) and stores them the way the real files do, converting *to* the file's layout, so
a correct loader must give back exactly the arrays it started from (``np.array_equal``):

* ``write_vgg16_theano``: a Keras 1 weights-only file with the Theano backend: kernels
  (c_out, c_in, kh, kw) flipped for true convolution, fc1 rows in (c, h, w) flatten order.
* ``write_vgg16_2016``: the 2016 ``vgg16_weights.h5`` (``nb_layers``, ``layer_{k}/param_{p}``),
  ZeroPadding2D/MaxPooling2D/Flatten/Dropout counted as layers with no params; Theano ordering.
* ``write_keras2_model``: a Keras 2 ``model.save()`` file (attributes ``keras_version``,
  ``backend``, ``model_config`` as byte strings; ``model_weights/<layer>/<layer>/kernel:0``) for a
  Sequential model given as a list of layer dicts, with a dict config (Keras >= 2.2) or a bare
  list config (Keras 2.0/2.1), channels_last or channels_first.
* ``vgg16_model_layers`` and ``cats_dogs_layers``: those layer lists for VGG16 and for the
  "Deep Learning with Python" ch. 5 cats-vs-dogs convnet.
"""

import json

import h5py
import numpy as np

from engine.architectures import vgg16_layers
from tests.synthetic import layer_arrays, vgg16_arrays


def _names(values):
    return np.array([v.encode("utf8") for v in values]) if values else np.zeros((0,), "float64")


def _theano_conv(kernel):
    """(kh, kw, c_in, c_out) cross-correlation -> Theano's (c_out, c_in, kh, kw) true convolution."""
    return np.ascontiguousarray(kernel[::-1, ::-1, :, :].transpose(3, 2, 0, 1))


def _hwc_rows_to_chw(kernel, chw):
    c, h, w = chw
    return np.ascontiguousarray(kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1))


def _theano_arrays(arrays):
    """VGG16 arrays as Theano stored them: conv kernels converted, fc1 rows in (c, h, w) order."""
    out = {}
    for name, (kernel, bias) in arrays.items():
        if kernel.ndim == 4:
            kernel = _theano_conv(kernel)
        elif name == "fc1":
            kernel = _hwc_rows_to_chw(kernel, (512, 7, 7))
        out[name] = (kernel, bias)
    return out


def write_vgg16_theano(path, include_top=False, seed=0, backend=b"theano"):
    """A Keras 1 weights-only VGG16 file saved under Theano (``backend`` may be bytes or str)."""
    arrays = vgg16_arrays(seed, include_top)
    stored = _theano_arrays(arrays)
    names = ["input_1"] + [t["name"] for t in vgg16_layers(include_top)]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = _names(names)
        f.attrs["backend"] = backend
        f.attrs["keras_version"] = b"1.2.2"
        for name in names:
            group = f.create_group(name)
            wnames = [f"{name}_W", f"{name}_b"] if name in stored else []
            group.attrs["weight_names"] = _names(wnames)
            for wname, value in zip(wnames, stored.get(name, ())):
                group.create_dataset(wname, data=value)
    return arrays


def write_vgg16_2016(path, include_top=False, seed=0):
    """The 2016 blog-post file: nb_layers, layer_{k} groups with nb_params and param_{p}."""
    arrays = vgg16_arrays(seed, include_top)
    stored = _theano_arrays(arrays)
    sequence = []  # (layer class, arrays or None), as the 2016 Sequential model was built
    for t in vgg16_layers(include_top):
        if t["kind"] == "conv2d":
            sequence += [("ZeroPadding2D", None), ("Convolution2D", stored[t["name"]])]
        elif t["kind"] == "maxpool2d":
            sequence.append(("MaxPooling2D", None))
        elif t["kind"] == "flatten":
            sequence.append(("Flatten", None))
        else:
            sequence.append(("Dense", stored[t["name"]]))
            if t["name"] != "predictions":
                sequence.append(("Dropout", None))
    with h5py.File(path, "w") as f:
        f.attrs["nb_layers"] = len(sequence)
        for k, (_, params) in enumerate(sequence):
            group = f.create_group(f"layer_{k}")
            group.attrs["nb_params"] = 0 if params is None else len(params)
            for p, value in enumerate(params or ()):
                group.create_dataset(f"param_{p}", data=value)
    return arrays


# ---- Keras 2 model.save() -------------------------------------------------------------------


def vgg16_model_layers(include_top=False):
    """VGG16 as the layer list of a Keras 2 Sequential model (Conv2D/MaxPooling2D/Flatten/Dense)."""
    layers = []
    for t in vgg16_layers(include_top):
        if t["kind"] == "conv2d":
            layers.append(dict(cls="Conv2D", name=t["name"], filters=t["kernel_shape"][-1], kernel_size=3,
                               padding="same", activation="relu"))
        elif t["kind"] == "maxpool2d":
            layers.append(dict(cls="MaxPooling2D", name=t["name"], pool_size=2))
        elif t["kind"] == "flatten":
            layers.append(dict(cls="Flatten", name=t["name"]))
        else:
            layers.append(dict(cls="Dense", name=t["name"], units=t["kernel_shape"][-1],
                               activation=t["activation"]))
    return layers


def cats_dogs_layers():
    """Deep Learning with Python, ch. 5: the small convnet trained from scratch on cats vs dogs."""
    layers = []
    for i, filters in enumerate((32, 64, 128, 128), start=1):
        layers.append(dict(cls="Conv2D", name=f"conv2d_{i}", filters=filters, kernel_size=3,
                           padding="valid", activation="relu"))
        layers.append(dict(cls="MaxPooling2D", name=f"max_pooling2d_{i}", pool_size=2))
    layers += [
        dict(cls="Flatten", name="flatten_1"),
        dict(cls="Dropout", name="dropout_1"),
        dict(cls="Dense", name="dense_1", units=512, activation="relu"),
        dict(cls="Dense", name="dense_2", units=1, activation="sigmoid"),
    ]
    return layers


def _flatten_input_shape(layers, input_shape):
    """(h, w, c) of the tensor entering the (first) Flatten layer."""
    h, w, c = input_shape
    for layer in layers:
        if layer["cls"] == "Conv2D":
            k, c = layer["kernel_size"], layer["filters"]
            if layer["padding"] == "valid":
                h, w = h - k + 1, w - k + 1
        elif layer["cls"] == "MaxPooling2D":
            h, w = h // layer["pool_size"], w // layer["pool_size"]
        elif layer["cls"] == "Flatten":
            break
    return h, w, c


def model_arrays(layers, input_shape, seed=0):
    """{layer name: (kernel, bias)} in the TF layout for a layer list, deterministic in seed."""
    h, w, c = input_shape
    arrays, n_in = {}, None
    for layer in layers:
        if layer["cls"] == "Conv2D":
            k = layer["kernel_size"]
            arrays[layer["name"]] = layer_arrays(seed, layer["name"], (k, k, c, layer["filters"]))
            c = layer["filters"]
            if layer["padding"] == "valid":
                h, w = h - k + 1, w - k + 1
        elif layer["cls"] == "MaxPooling2D":
            h, w = h // layer["pool_size"], w // layer["pool_size"]
        elif layer["cls"] == "Flatten":
            n_in = h * w * c
        elif layer["cls"] == "Dense":
            arrays[layer["name"]] = layer_arrays(seed, layer["name"], (n_in, layer["units"]),
                                                 last=layer is layers[-1])
            n_in = layer["units"]
    return arrays


def _layer_config(layer, data_format, flatten_format, first_shape):
    config = {"name": layer["name"], "trainable": True}
    if first_shape is not None:
        config["batch_input_shape"] = first_shape
        config["dtype"] = "float32"
    cls = layer["cls"]
    if cls == "Conv2D":
        k = layer["kernel_size"]
        config.update(filters=layer["filters"], kernel_size=[k, k], strides=[1, 1], padding=layer["padding"],
                      data_format=data_format, dilation_rate=[1, 1], activation=layer["activation"],
                      use_bias=True, kernel_initializer={"class_name": "VarianceScaling", "config": {}},
                      bias_initializer={"class_name": "Zeros", "config": {}}, kernel_regularizer=None)
    elif cls == "MaxPooling2D":
        p = layer["pool_size"]
        config.update(pool_size=[p, p], padding="valid", strides=[p, p], data_format=data_format)
    elif cls == "Flatten" and flatten_format:
        config["data_format"] = flatten_format
    elif cls == "Dropout":
        config.update(rate=0.5, noise_shape=None, seed=None)
    elif cls == "Dense":
        config.update(units=layer["units"], activation=layer["activation"], use_bias=True)
    return {"class_name": cls, "config": config}


def _functional_config(configs, batch_shape):
    """The configs as a Keras 2 Functional ("Model") chain, as keras.applications models are saved."""
    layers = [{"name": "input_1", "class_name": "InputLayer", "inbound_nodes": [],
               "config": {"batch_input_shape": batch_shape, "dtype": "float32", "sparse": False,
                          "name": "input_1"}}]
    for config in configs:
        config["config"].pop("batch_input_shape", None)
        layers.append({"name": config["config"]["name"], **config,
                       "inbound_nodes": [[[layers[-1]["name"], 0, 0, {}]]]})
    return {"class_name": "Model", "config": {"name": "vgg16", "layers": layers,
                                              "input_layers": [["input_1", 0, 0]],
                                              "output_layers": [[layers[-1]["name"], 0, 0]]}}


def write_keras2_model(path, layers, input_shape, seed=0, bare_list=False, channels_first=False,
                       flatten_data_format=None, backend=b"tensorflow", keras_version=b"2.1.6",
                       functional=False):
    """A Keras 2 ``model.save()`` file of a Sequential model; returns the TF-layout arrays.

    ``bare_list`` stores the config as Keras 2.0/2.1 did; ``functional`` as a Functional ("Model")
    chain starting with an InputLayer, as ``keras.applications.VGG16(...).save()`` does.

    The arrays are those of ``model_arrays``; with ``channels_first`` (and no Flatten data_format,
    as in Keras < 2.2) the Dense after the Flatten is stored with rows in (c, h, w) order, and with
    ``backend`` theano the conv kernels are stored flipped, as Keras 2 under Theano saved them.
    """
    arrays = model_arrays(layers, input_shape, seed)
    h, w, c = input_shape
    data_format = "channels_first" if channels_first else "channels_last"
    batch_shape = [None, c, h, w] if channels_first else [None, h, w, c]
    configs = [_layer_config(lay, data_format, flatten_data_format, batch_shape if i == 0 else None)
               for i, lay in enumerate(layers)]
    model_config = {"class_name": "Sequential",
                    "config": configs if bare_list else {"name": "sequential_1", "layers": configs}}
    if functional:
        model_config = _functional_config(configs, batch_shape)
        layers = [{"cls": "InputLayer", "name": "input_1"}] + list(layers)
    theano = (backend.decode() if isinstance(backend, bytes) else backend) == "theano"
    stored = {}
    flat_chw = None
    for lay in layers:
        if lay["name"] not in arrays:
            if lay["cls"] == "Flatten" and channels_first and flatten_data_format != "channels_first":
                flat_chw = True
            continue
        kernel, bias = arrays[lay["name"]]
        if kernel.ndim == 4 and theano:
            kernel = np.ascontiguousarray(kernel[::-1, ::-1])
        if kernel.ndim == 2 and flat_chw:
            fh, fw, fc = _flatten_input_shape(layers, input_shape)
            kernel = _hwc_rows_to_chw(kernel, (fc, fh, fw))
            flat_chw = None
        stored[lay["name"]] = (kernel, bias)
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = keras_version
        f.attrs["backend"] = backend
        f.attrs["model_config"] = json.dumps(model_config).encode("utf8")
        f.attrs["training_config"] = json.dumps({"loss": "binary_crossentropy"}).encode("utf8")
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = _names([lay["name"] for lay in layers])
        weights.attrs["backend"] = backend
        weights.attrs["keras_version"] = keras_version
        for lay in layers:
            group = weights.create_group(lay["name"])
            wnames = [f"{lay['name']}/kernel:0", f"{lay['name']}/bias:0"] if lay["name"] in stored else []
            group.attrs["weight_names"] = _names(wnames)
            for wname, value in zip(wnames, stored.get(lay["name"], ())):
                group.create_dataset(wname, data=value)
    return arrays
