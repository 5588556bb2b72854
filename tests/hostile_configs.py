"""Hostile model configs and 2016 ``nb_layers`` files for the weight loader's fuzz suite.

Config cases rewrite the tiny model's ``model_config`` (``tests.hostile_weights``): layer entries
that are not objects, fields of the wrong type or absurd size, JSON nested past any Keras config
(and past what Python's parser can take), invalid JSON. The 2016 cases write the blog-post
layout's attributes wrongly (empty, text, negative, fractional, huge ``nb_layers``/``nb_params``)
around placeholder datasets. Every case must be refused with a one-line error.
"""

import json

import h5py
import numpy as np

from tests.hostile_weights import Case, write_tiny


def _config_case(name, mutate, fragments=(), raw=None):
    """The tiny model with ``mutate(config, layers)`` applied to its model_config (or the config
    replaced by the text ``raw``)."""

    def build(folder):
        path = folder / f"{name}.h5"
        write_tiny(path)
        with h5py.File(path, "r+") as f:
            if raw is not None:
                f.attrs["model_config"] = raw
            else:
                config = json.loads(f.attrs["model_config"])
                mutate(config, config["config"]["layers"])
                f.attrs["model_config"] = json.dumps(config).encode()
        return path, None

    return Case(name, build, "error", tuple(fragments))


def _set(index, key, value):
    def mutate(config, layers):
        layers[index]["config"][key] = value
    return mutate


def _nested(depth, inner="1"):
    return "[" * depth + inner + "]" * depth


def config_cases():
    cases = []
    for label, value in (("int", 7), ("list", [1, 2]), ("null", None), ("string", "Conv2D")):
        cases.append(_config_case(f"config_entry_{label}", lambda c, layers, v=value: layers.__setitem__(1, v),
                                  ("layer entry 1",)))
    cases.append(_config_case("config_entry_config_list",
                              lambda c, layers: layers[0].__setitem__("config", [1]), ("not an object",)))
    bad_values = {
        "filters": [("text", "abc"), ("zero", 0), ("negative", -4), ("fraction", 2.5), ("bool", True),
                    ("huge", 10 ** 30), ("null", None), ("list", [2])],
        "kernel_size": [("zero", 0), ("pair_zero", [0, 3]), ("single", [3]), ("text", "3"), ("huge", 1 << 40)],
        "strides": [("text", "x"), ("zero", 0)],
        "activation": [("list", ["relu"]), ("int", 3), ("dict", {"a": []}), ("unknown", "swish")],
        "name": [("int", 5), ("list", ["conv"]), ("null", None)],
        "padding": [("list", ["same"]), ("int", 1)],
    }
    for key, values in bad_values.items():
        for label, value in values:
            fragment = "layer" if key != "name" else "name"
            cases.append(_config_case(f"config_conv_{key}_{label}", _set(0, key, value), (fragment,)))
    for label, value in (("zero", 0), ("pair_zero", [2, 0]), ("negative", -2), ("text", "2"), ("huge", 1 << 40)):
        cases.append(_config_case(f"config_pool_{label}", _set(1, "pool_size", value), ("pool_size",)))
    for label, value in (("zero", 0), ("text", "3"), ("negative", -1), ("null", None)):
        cases.append(_config_case(f"config_units_{label}", _set(3, "units", value), ("units",)))
    for label, value in (("zero_side", [None, 0, 8, 3]), ("text_side", [None, "8", 8, 3]),
                         ("three_dims", [None, 8, 8]), ("int", 8), ("huge", [None, 1 << 40, 8, 3]),
                         ("float", [None, 8.5, 8, 3])):
        cases.append(_config_case(f"config_input_{label}", _set(0, "batch_input_shape", value), ("input shape",)))
    structural = [
        ("no_class_name", lambda c, layers: c.pop("class_name"), ("class_name",)),
        ("class_name_list", lambda c, layers: c.__setitem__("class_name", ["Sequential"]), ("model class",)),
        ("config_int", lambda c, layers: c.__setitem__("config", 5), ("no list of layers",)),
        ("layers_dict", lambda c, layers: c["config"].__setitem__("layers", {"a": 1}), ("no list of layers",)),
        ("no_layers", lambda c, layers: layers.clear(), ("no layers",)),
        ("functional_inbound_int", lambda c, layers: _functional(c, inbound=5), ("plain chain",)),
        ("functional_inbound_deep", lambda c, layers: _functional(c, inbound=json.loads(_nested(90))),
         ("plain chain",)),
    ]
    for label, mutate, fragments in structural:
        cases.append(_config_case(f"config_{label}", mutate, fragments))
    deep = (
        ("nested_150", _nested(150), "nested more than"),
        ("nested_900", _nested(900), "nested"),
        ("nested_100000", _nested(100_000), "nested deeper than Python can parse"),
        ("nested_objects_2000", '{"a":' * 2000 + "1" + "}" * 2000, "nested"),
    )
    for label, inner, fragment in deep:
        text = '{"class_name": "Sequential", "config": {"name": "s", "layers": ' + inner + "}}"
        cases.append(_config_case(f"config_{label}", None, (fragment,), raw=text.encode()))
    for label, text, fragment in (("invalid_json", b"{not json", "not valid JSON"),
                                  ("empty", b"", "not valid JSON"), ("number", b"5", "class_name"),
                                  ("non_utf8", b"\xff\xfe{}", "not valid JSON"),
                                  ("nan_units", b'{"class_name": "Sequential", "config": [{"class_name": "Dense",'
                                                b' "config": {"name": "d", "units": NaN}}]}', "units")):
        cases.append(_config_case(f"config_{label}", None, (fragment,), raw=text))
    return cases


def _functional(config, inbound):
    """Turn the Sequential config into a Functional one whose second layer has ``inbound``."""
    layers = config["config"]["layers"]
    for index, layer in enumerate(layers):
        layer["name"] = layer["config"]["name"]
        layer["inbound_nodes"] = [] if index == 0 else [[[layers[index - 1]["name"], 0, 0, {}]]]
    layers[1]["inbound_nodes"] = inbound
    config["class_name"] = "Functional"


# ---- the 2016 nb_layers layout ----------------------------------------------------------------


def _layout_2016(name, nb_layers, nb_params=2, drop_param=False, fragments=()):
    def build(folder):
        path = folder / f"{name}.h5"
        with h5py.File(path, "w") as f:
            f.attrs["nb_layers"] = nb_layers
            for k in range(3):
                group = f.create_group(f"layer_{k}")
                group.attrs["nb_params"] = nb_params if k == 0 else 0
                group.create_dataset("param_0", data=np.zeros((2, 2), "f4"))
                if not drop_param:
                    group.create_dataset("param_1", data=np.zeros(2, "f4"))
        return path, None

    return Case(name, build, "error", tuple(fragments))


def layout_2016_cases():
    return [
        _layout_2016("nb_layers_empty", np.zeros(0, "i4"), fragments=("nb_layers",)),
        _layout_2016("nb_layers_empty_dataspace", h5py.Empty("i4"), fragments=("nb_layers",)),
        _layout_2016("nb_layers_text", b"three", fragments=("nb_layers",)),
        _layout_2016("nb_layers_negative", -3, fragments=("nb_layers",)),
        _layout_2016("nb_layers_fraction", 2.5, fragments=("nb_layers",)),
        _layout_2016("nb_layers_pair", np.array([3, 3]), fragments=("nb_layers",)),
        _layout_2016("nb_layers_nan", np.nan, fragments=("nb_layers",)),
        _layout_2016("nb_layers_huge", 10 ** 15, fragments=("no group 'layer_3'",)),
        _layout_2016("nb_params_empty", 3, nb_params=np.zeros(0, "i4"), fragments=("nb_params",)),
        _layout_2016("nb_params_text", 3, nb_params=b"2", fragments=("nb_params",)),
        _layout_2016("nb_params_three", 3, nb_params=3, fragments=("3 params",)),
        _layout_2016("nb_params_too_few_layers", 3, fragments=("1 layers with weights",)),
    ]
