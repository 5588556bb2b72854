"""Read the architecture stored in a Keras ``model.save()`` h5 file (its ``model_config`` JSON).

Only plain chains of the layers the engine runs are accepted: Conv2D (stride 1, dilation 1,
padding 'valid'/'same'), MaxPooling2D (stride = pool size, 'valid'), Flatten, Dropout, Dense and
InputLayer, with relu/sigmoid/softmax/linear activations. A standalone Activation (or argument-free
ReLU) layer is folded into the conv/dense before it when that layer is linear. Anything else is a
``ConvscopeError`` naming the layer's class and name.

The config flavours handled:

* Keras 2 Sequential: ``{"class_name": "Sequential", "config": {"name": ..., "layers": [...]}}``;
  the input shape is the first layer's ``batch_input_shape`` (or an InputLayer's).
* Keras 2.0/2.1 Sequential: ``{"class_name": "Sequential", "config": [layer, ...]}`` (a bare list).
* Keras 3 Sequential: an InputLayer with ``batch_shape`` (or ``build_input_shape``).
* Functional ("Model"/"Functional") models whose layers form one straight chain, in the Keras 2
  (``inbound_nodes = [[[name, 0, 0, {}]]]``) and Keras 3 (``keras_history``) node formats.

No arrays are read here: ``parse_model_config`` returns ``KerasLayer`` records in order and the
input shape in (H, W, C) order (H and W may be None), which ``engine.weights`` fills with arrays.
"""

from dataclasses import dataclass

from engine.errors import ConvscopeError

SUPPORTED = "Conv2D, MaxPooling2D, Flatten, Dropout, Dense, Activation, InputLayer"
_ACTIVATIONS = {None: "linear", "linear": "linear", "relu": "relu", "sigmoid": "sigmoid",
                "softmax": "softmax"}
_CONV = ("Conv2D", "Convolution2D")
_POOL = ("MaxPooling2D", "MaxPool2D")
_FUNCTIONAL = ("Functional", "Model")


@dataclass
class KerasLayer:
    """One layer of a saved model, as the engine will run it (arrays come later)."""

    name: str
    class_name: str
    kind: str  # conv2d, maxpool2d, flatten, dense, dropout
    activation: str = "linear"
    padding: str = "valid"
    kernel_size: tuple = ()  # conv2d: (kh, kw)
    filters: int = 0  # conv2d: output channels; dense: units
    use_bias: bool = True
    pool_size: tuple = (2, 2)
    channels_first: bool = False  # conv2d/maxpool2d: data_format; flatten: see flattens_chw
    flattens_chw: bool = False  # flatten: Keras flattens a channels_first tensor in (c, h, w) order


MAX_SIZE = 1 << 20  # a filter count, unit count, kernel or pool side, or input side above this is absurd


def _whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _pair(value, what, layer="?"):
    """(a, b) of positive integers from an int or a pair, as Keras' kernel_size/pool_size/strides."""
    if _whole(value):
        value = (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_whole(v) and 1 <= v <= MAX_SIZE for v in value):
        return tuple(value)
    raise ConvscopeError(f"layer '{layer}': {what} {_shown(value)} is not a positive integer or a pair of them")


def _positive(config, key, layer):
    value = config.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not (_whole(value) and 1 <= value <= MAX_SIZE):
        raise ConvscopeError(f"layer '{layer}': {key} is {_shown(value)}, expected a positive integer "
                             f"up to {MAX_SIZE:,}")
    return value


def _activation(value, layer):
    if isinstance(value, dict):  # Keras 3 may serialise a function as {"class_name": ..., "config": "relu"}
        named = value.get("config") if isinstance(value.get("config"), str) else value.get("class_name")
        value = named if isinstance(named, str) else value
    if not (value is None or isinstance(value, str)) or value not in _ACTIVATIONS:
        raise ConvscopeError(
            f"layer '{layer}' uses activation {_shown(value)}; convscope supports relu, sigmoid, softmax, linear"
        )
    return _ACTIVATIONS[value]


def _unsupported(class_name, name, why=""):
    detail = f" ({why})" if why else f"; convscope runs chains of {SUPPORTED}"
    return ConvscopeError(f"unsupported layer {class_name} '{name}' in the model file{detail}")


def _layer_entries(model_config):
    """[(class_name, config dict, inbound names or None)] and the model name, for a plain chain."""
    if not isinstance(model_config, dict) or "class_name" not in model_config:
        raise ConvscopeError("model config is not a Keras model description (no 'class_name')")
    class_name = model_config["class_name"]
    config = model_config.get("config")
    if class_name == "Sequential":
        if isinstance(config, list):  # Keras 2.0/2.1 store a Sequential's config as its layer list
            layers, model_name = config, "sequential"
        elif isinstance(config, dict) and isinstance(config.get("layers"), list):
            layers, model_name = config["layers"], config.get("name", "sequential")
        else:
            raise ConvscopeError("Sequential model config has no list of layers")
        checked = [_entry(lay, i) for i, lay in enumerate(layers)]
        entries = [(lay["class_name"], lay["config"], None) for lay in checked]
        if isinstance(config, dict) and config.get("build_input_shape") and entries:
            entries[0][1].setdefault("_build_input_shape", config["build_input_shape"])
        return entries, model_name
    if class_name in _FUNCTIONAL and isinstance(config, dict) and isinstance(config.get("layers"), list):
        layers = config["layers"]
        entries = []
        for index, lay in enumerate(layers):
            lay = _entry(lay, index)
            inbound = _inbound_names(lay)
            name = lay.get("name") or (lay.get("config") or {}).get("name")
            expected = [] if index == 0 else [layers[index - 1].get("name")]
            if inbound != expected:
                raise ConvscopeError(
                    f"model '{config.get('name')}' is a {class_name} model whose layer '{name}' is not "
                    "fed by the layer before it; convscope runs plain chains of layers only"
                )
            entries.append((lay["class_name"], lay["config"], inbound))
        return entries, config.get("name", "model")
    raise ConvscopeError(
        f"unsupported model class {class_name!r}; convscope reads Sequential models "
        "(and Functional models that are a plain chain)"
    )


def _entry(layer, index):
    """A layer entry of the config, checked to be an object with a config object."""
    if not isinstance(layer, dict):
        raise ConvscopeError(f"model config: layer entry {index} is {_shown(layer)}, not an object "
                             '({"class_name": ..., "config": {...}})')
    config = layer.get("config") or {}
    if not isinstance(config, dict):
        raise ConvscopeError(f"model config: layer entry {index} has config {_shown(config)}, not an object")
    return {**layer, "class_name": layer.get("class_name"), "config": config}


def _inbound_names(layer):
    """Names of the layers feeding ``layer`` in a Functional config (Keras 2 or Keras 3 format)."""
    nodes = layer.get("inbound_nodes") or []
    if not isinstance(nodes, list) or len(nodes) > 1:
        return None  # a shared layer: not a chain
    names = []

    def walk(item):
        if isinstance(item, dict):
            history = (item.get("config") or {}).get("keras_history") if "config" in item else None
            if isinstance(history, list) and history and isinstance(history[0], str):
                names.append(history[0])
                return
            for value in item.values():
                walk(value)
        elif isinstance(item, list):
            if item and isinstance(item[0], str) and len(item) >= 3 and isinstance(item[1], int):
                names.append(item[0])  # Keras 2: [name, node_index, tensor_index, kwargs]
                return
            for value in item:
                walk(value)

    for node in nodes:
        walk(node)
    return names


def _raw_input_shape(config):
    shape = config.get("batch_input_shape") or config.get("batch_shape") or config.get("_build_input_shape")
    if shape is None:
        return None
    if not isinstance(shape, list) or len(shape) != 4 or not all(
            d is None or (_whole(d) and 1 <= d <= MAX_SIZE) for d in shape[1:]):
        raise ConvscopeError(f"model input shape {_shown(shape)} is not an image batch "
                             "(N, H, W, C) of positive sizes")
    return shape


def parse_model_config(model_config):
    """(model name, [KerasLayer], input shape (H, W, C) or None) for a plain-chain CNN config."""
    entries, model_name = _layer_entries(model_config)
    layers: list[KerasLayer] = []
    raw_shape = None
    channels_first = False  # the data format of the tensor flowing between layers
    for class_name, config, _ in entries:
        name = config.get("name", "?")
        if not isinstance(name, str):
            raise ConvscopeError(f"model config: a {_shown(class_name)} layer has name {_shown(name)}, not a string")
        fmt = config.get("data_format")
        if fmt is not None and class_name not in ("Flatten",):
            channels_first = fmt == "channels_first"
        if raw_shape is None and not layers:
            raw_shape = _raw_input_shape(config)
        if class_name == "InputLayer":
            continue
        if class_name in _CONV:
            if "filters" not in config:
                raise _unsupported(class_name, name, "a Keras 1 config; re-save the model with Keras 2 or 3")
            for key, label in (("strides", "stride"), ("dilation_rate", "dilation")):
                if _pair(config.get(key, 1), key, name) != (1, 1):
                    raise _unsupported(class_name, name, f"{label} {config[key]}; only 1 is supported")
            if config.get("groups", 1) != 1:
                raise _unsupported(class_name, name, "grouped convolution")
            if config.get("padding", "valid") not in ("valid", "same"):
                raise _unsupported(class_name, name, f"padding {config['padding']!r}")
            layers.append(KerasLayer(
                name, class_name, "conv2d", _activation(config.get("activation"), name),
                padding=config.get("padding", "valid"),
                kernel_size=_pair(config.get("kernel_size"), "kernel_size", name),
                filters=_positive(config, "filters", name), use_bias=bool(config.get("use_bias", True)),
                channels_first=channels_first,
            ))
        elif class_name in _POOL:
            pool = _pair(config.get("pool_size", 2), "pool_size", name)
            strides = config.get("strides")
            if strides is not None and _pair(strides, "strides", name) != pool:
                raise _unsupported(class_name, name, f"strides {strides} differ from pool_size {list(pool)}")
            if config.get("padding", "valid") != "valid":
                raise _unsupported(class_name, name, f"padding {config['padding']!r}; only 'valid'")
            layers.append(KerasLayer(name, class_name, "maxpool2d", pool_size=pool,
                                     channels_first=channels_first))
        elif class_name == "Flatten":
            # Keras >= 2.2 (and 3) Flatten(data_format='channels_first') moves channels last before
            # flattening, so only older files (no data_format key) flatten in (c, h, w) order.
            chw = channels_first and config.get("data_format") != "channels_first"
            layers.append(KerasLayer(name, class_name, "flatten", flattens_chw=chw))
        elif class_name == "Dropout":
            layers.append(KerasLayer(name, class_name, "dropout"))
        elif class_name == "Dense":
            layers.append(KerasLayer(
                name, class_name, "dense", _activation(config.get("activation"), name),
                filters=_positive(config, "units", name), use_bias=bool(config.get("use_bias", True)),
            ))
        elif class_name in ("Activation", "ReLU"):
            if class_name == "ReLU" and any(config.get(k) not in (None, 0, 0.0) for k in
                                            ("max_value", "negative_slope", "threshold")):
                raise _unsupported(class_name, name, "max_value/negative_slope/threshold")
            activation = "relu" if class_name == "ReLU" else _activation(config.get("activation"), name)
            previous = layers[-1] if layers else None
            if not (previous and previous.kind in ("conv2d", "dense") and previous.activation == "linear"):
                raise _unsupported(class_name, name, "only after a Conv2D or Dense layer with no activation")
            previous.activation = activation
        else:
            raise _unsupported(class_name, name)
    if not layers:
        raise ConvscopeError(f"model '{model_name}' has no layers")
    input_shape = None
    if raw_shape is not None:
        first_spatial = next((lay for lay in layers if lay.kind in ("conv2d", "maxpool2d")), None)
        _, a, b, c = raw_shape
        input_shape = (b, c, a) if first_spatial is not None and first_spatial.channels_first else (a, b, c)
    return model_name, layers, input_shape
