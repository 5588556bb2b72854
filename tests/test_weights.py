"""engine.weights: every supported layout loads, to exactly the arrays of the official layout, and
every bad file is a one-line ConvscopeError that names the problem.

The notop VGG16 (59 MB per file) serves most layout tests; the 553 MB classifier files are written
only where the classifier matters (fc1's row order in the Theano-ordered 2016 file).
"""

import json
import pathlib
import shutil

import h5py
import numpy as np
import pytest

from engine.errors import ConvscopeError
from engine.weights import read_network
from tests.synthetic import layer_arrays, vgg16_arrays, write_vgg16_official
from tests.synthetic_layouts import (
    cats_dogs_layers,
    vgg16_model_layers,
    write_keras2_model,
    write_vgg16_2016,
    write_vgg16_theano,
)

KERAS_MODELS = pathlib.Path(__file__).parent / "fixtures" / "keras_models"

VGG16_NOTOP_WRITERS = {
    "official_kernel_names": lambda p: write_vgg16_official(p, include_top=False, dataset_style="kernel"),
    "theano_bytes_backend": lambda p: write_vgg16_theano(p, include_top=False, backend=b"theano"),
    "theano_str_backend": lambda p: write_vgg16_theano(p, include_top=False, backend="theano"),
    "nb_layers_2016": lambda p: write_vgg16_2016(p, include_top=False),
    "keras2_model_dict_config": lambda p: write_keras2_model(p, vgg16_model_layers(), (224, 224, 3)),
    "keras2_model_bare_list_config": lambda p: write_keras2_model(p, vgg16_model_layers(), (224, 224, 3),
                                                                  bare_list=True, keras_version=b"2.0.8"),
    "keras2_model_functional": lambda p: write_keras2_model(p, vgg16_model_layers(), (224, 224, 3),
                                                            functional=True, keras_version=b"2.2.4"),
}


@pytest.fixture(scope="session")
def notop_layouts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("layouts")
    paths = {}
    for name, write in VGG16_NOTOP_WRITERS.items():
        paths[name] = folder / f"{name}.h5"
        write(paths[name])
    return paths


@pytest.fixture(scope="session")
def official_notop(vgg16_notop_file):
    return read_network(vgg16_notop_file)


def assert_same_arrays(net, reference):
    assert [layer.name for layer in net.layers if layer.kernel is not None] == [
        layer.name for layer in reference.layers if layer.kernel is not None]
    for layer in reference.layers:
        if layer.kernel is not None:
            other = net.layer(layer.name)
            assert np.array_equal(other.kernel, layer.kernel), layer.name
            assert np.array_equal(other.bias, layer.bias), layer.name


def assert_engine_arrays(net):
    for layer in net.layers:
        for array in (layer.kernel, layer.bias):
            if array is not None:
                assert array.dtype == np.float32 and array.flags.c_contiguous


# ---- VGG16 layouts --------------------------------------------------------------------------


def test_official_notop_layout(official_notop):
    net = official_notop
    assert net.source == "Keras weights-only (tensorflow ordering)"
    assert net.input_shape == (None, None, 3)
    assert net.metadata == {"family": "vgg16", "include_top": False}
    assert [layer.kind for layer in net.layers].count("conv2d") == 13
    assert net.layers[-1].name == "block5_pool"
    block1 = net.layer("block1_conv1")
    assert (block1.activation, block1.padding) == ("relu", "same")
    for name, (kernel, bias) in vgg16_arrays(0, include_top=False).items():
        assert np.array_equal(net.layer(name).kernel, kernel)
        assert np.array_equal(net.layer(name).bias, bias)
    assert_engine_arrays(net)


@pytest.mark.parametrize("layout", sorted(VGG16_NOTOP_WRITERS))
def test_every_vgg16_layout_gives_the_official_arrays(layout, notop_layouts, official_notop):
    net = read_network(notop_layouts[layout])
    assert_same_arrays(net, official_notop)
    assert_engine_arrays(net)
    assert [(layer.name, layer.kind) for layer in net.layers] == [
        (layer.name, layer.kind) for layer in official_notop.layers]


@pytest.mark.parametrize("layout, source", [
    ("theano_bytes_backend", "Keras weights-only (theano ordering)"),
    ("nb_layers_2016", "VGG16 2016 nb_layers file (theano ordering)"),
    ("keras2_model_dict_config", "Keras 2 model.save"),
])
def test_layout_is_named_in_source(layout, source, notop_layouts):
    assert read_network(notop_layouts[layout]).source == source


def test_layout_is_detected_from_contents_not_name(notop_layouts, tmp_path):
    disguised = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    shutil.copy(notop_layouts["nb_layers_2016"], disguised)
    assert read_network(disguised).source.startswith("VGG16 2016")


def test_official_full_file_has_the_classifier(vgg16_full_file):
    net = read_network(vgg16_full_file)
    assert net.input_shape == (224, 224, 3)
    assert net.metadata["include_top"] is True
    assert [layer.name for layer in net.layers[-4:]] == ["flatten", "fc1", "fc2", "predictions"]
    assert net.layer("predictions").activation == "softmax"
    assert net.layer("fc1").kernel.shape == (25088, 4096)
    for name, (kernel, bias) in vgg16_arrays(0, include_top=True).items():
        assert np.array_equal(net.layer(name).kernel, kernel), name
        assert np.array_equal(net.layer(name).bias, bias), name


def test_2016_file_with_classifier_reorders_fc1_rows(tmp_path):
    path = tmp_path / "vgg16_weights.h5"
    arrays = write_vgg16_2016(path, include_top=True)
    with h5py.File(path, "r") as f:
        assert f.attrs["nb_layers"] == 37
    net = read_network(path)
    assert net.input_shape == (224, 224, 3)
    for name, (kernel, bias) in arrays.items():
        assert np.array_equal(net.layer(name).kernel, kernel), name
        assert np.array_equal(net.layer(name).bias, bias), name


def test_real_shared_vgg16_blocks_1_2(shared_data):
    net = read_network(shared_data / "weights" / "vgg16_block1-2_imagenet.h5")
    assert net.source == "Keras 3 model.save"
    assert net.input_shape == (None, None, 3)
    assert [layer.name for layer in net.layers] == [
        "block1_conv1", "block1_conv2", "block1_pool", "block2_conv1", "block2_conv2", "block2_pool"]
    conv = net.layer("block1_conv1")
    assert conv.kernel.shape == (3, 3, 3, 64) and (conv.padding, conv.activation) == ("same", "relu")
    first_filter = conv.kernel[:, :, :, 0].ravel()  # (kh, kw, c) order
    np.testing.assert_allclose(first_filter[:4], [0.429471, 0.550379, 0.480015, 0.373467], atol=1e-6)
    np.testing.assert_allclose(conv.bias[:3], [0.73413, 0.09326, 0.06763], atol=1e-5)
    assert_engine_arrays(net)


# ---- Keras 2 model.save of a small convnet --------------------------------------------------


@pytest.mark.parametrize("variant", [
    dict(),
    dict(bare_list=True, keras_version=b"2.0.8"),
    dict(channels_first=True, bare_list=True, keras_version=b"2.0.8"),  # Flatten in (c, h, w) order
    dict(channels_first=True, flatten_data_format="channels_first", keras_version=b"2.2.4"),
    dict(channels_first=True, backend=b"theano"),  # kernels stored flipped
])
def test_keras2_cats_vs_dogs_convnet(variant, tmp_path):
    path = tmp_path / "cats_and_dogs_small_1.h5"
    arrays = write_keras2_model(path, cats_dogs_layers(), (150, 150, 3), **variant)
    net = read_network(path)
    assert net.input_shape == (150, 150, 3)
    assert net.source.startswith("Keras 2 model.save")
    assert [(layer.kind, layer.activation) for layer in net.layers] == (
        [("conv2d", "relu"), ("maxpool2d", "linear")] * 4
        + [("flatten", "linear"), ("dropout", "linear"), ("dense", "relu"), ("dense", "sigmoid")])
    assert net.layer("dense_1").kernel.shape == (7 * 7 * 128, 512)
    for name, (kernel, bias) in arrays.items():
        assert np.array_equal(net.layer(name).kernel, kernel), name
        assert np.array_equal(net.layer(name).bias, bias), name
    assert_engine_arrays(net)


# ---- real Keras 3 files ---------------------------------------------------------------------


def _forward(net, x):
    """A plain NumPy forward pass of a NetworkSpec (TensorFlow 'same' padding), to check the specs."""
    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    act = {"linear": lambda z: z, "relu": lambda z: np.maximum(z, 0),
           "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "softmax": softmax}
    x = x.astype(np.float64)
    for layer in net.layers:
        if layer.kind == "conv2d":
            kh, kw, _, _ = layer.kernel.shape
            if layer.padding == "same":
                x = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
            ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
            patches = np.stack([x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=3)
            kernel = layer.kernel.reshape(kh * kw, *layer.kernel.shape[2:])
            x = np.einsum("nhwpc,pco->nhwo", patches, kernel)
            x = act[layer.activation](x + layer.bias)
        elif layer.kind == "maxpool2d":
            ph, pw = layer.pool_size
            n, h, w, c = x.shape
            x = x[:, :h // ph * ph, :w // pw * pw].reshape(n, h // ph, ph, w // pw, pw, c).max(axis=(2, 4))
        elif layer.kind == "flatten":
            x = x.reshape(len(x), -1)
        elif layer.kind == "dense":
            x = act[layer.activation](x @ layer.kernel + layer.bias)
    return x


KERAS_FIXTURES = {
    "tiny_sigmoid_cnn": [("conv2d", "relu", "valid", (5, 5, 3, 4)),
                         ("maxpool2d", "linear", None, (2, 2)),
                         ("conv2d", "relu", "same", (4, 4, 4, 3)), ("flatten",), ("dropout",),
                         ("dense", "relu", None, (60, 6)), ("dense", "sigmoid", None, (6, 1))],
    "tiny_softmax_cnn": [("conv2d", "sigmoid", "same", (2, 2, 2, 5)),
                         ("maxpool2d", "linear", None, (3, 3)),
                         ("conv2d", "linear", "valid", (3, 3, 5, 4)), ("flatten",),
                         ("dense", "softmax", None, (8, 3))],
    "tiny_functional_chain": [("conv2d", "relu", "same", (3, 3, 3, 3)),
                              ("maxpool2d", "linear", None, (2, 2)),
                              ("flatten",), ("dense", "softmax", None, (75, 4))],
    "tiny_channels_first_cnn": [("conv2d", "relu", "valid", (3, 3, 3, 2)),
                                ("maxpool2d", "linear", None, (2, 2)),
                                ("flatten",), ("dense", "softmax", None, (18, 3))],
}


@pytest.mark.parametrize("name", sorted(KERAS_FIXTURES))
def test_real_keras3_model_files(name):
    net = read_network(KERAS_MODELS / f"{name}.h5")
    reference = np.load(KERAS_MODELS / f"{name}.npz")
    assert net.source == "Keras 3 model.save"
    assert net.input_shape == reference["x"].shape[1:]
    for layer, expected in zip(net.layers, KERAS_FIXTURES[name], strict=True):
        assert layer.kind == expected[0]
        if layer.kind in ("conv2d", "dense"):
            assert (layer.activation, layer.kernel.shape) == (expected[1], expected[3])
            assert layer.bias.shape == (expected[3][-1],)
        if layer.kind == "conv2d":
            assert layer.padding == expected[2]
        if layer.kind == "maxpool2d":
            assert layer.pool_size == expected[3]
    first = net.layers[0]
    kernel, bias = layer_arrays(0, first.name, first.kernel.shape)
    assert np.array_equal(first.kernel, kernel)
    assert np.array_equal(first.bias, np.zeros_like(bias) if "nobias" in first.name else bias)
    assert_engine_arrays(net)
    np.testing.assert_allclose(_forward(net, reference["x"]), reference["y"], rtol=1e-5, atol=1e-6)


# ---- bad files ------------------------------------------------------------------------------


def assert_one_line_error(path, *fragments):
    with pytest.raises(ConvscopeError) as info:
        read_network(path)
    message = str(info.value)
    assert "\n" not in message and message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _mutated_copy(source, tmp_path, mutate):
    path = tmp_path / "bad.h5"
    shutil.copy(source, path)
    with h5py.File(path, "r+") as f:
        mutate(f)
    return path


def test_missing_file_and_directory(tmp_path):
    assert_one_line_error(tmp_path / "nope.h5", "nope.h5", "does not exist")
    assert_one_line_error(tmp_path, "is a directory")


def test_empty_text_and_html_files(tmp_path):
    (tmp_path / "empty.h5").write_bytes(b"")
    assert_one_line_error(tmp_path / "empty.h5", "is empty")
    (tmp_path / "page.h5").write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>\n")
    assert_one_line_error(tmp_path / "page.h5", "is not an HDF5 file")


@pytest.mark.parametrize("fraction", [0.5, 0.999])
def test_truncated_copy(fraction, vgg16_notop_file, tmp_path):
    data = vgg16_notop_file.read_bytes()
    path = tmp_path / "truncated.h5"
    path.write_bytes(data[: int(len(data) * fraction)])
    assert_one_line_error(path, "is truncated", f"of {len(data):,} bytes")


def test_unknown_layouts(tmp_path):
    with h5py.File(tmp_path / "unknown.h5", "w") as f:
        f.create_dataset("data", data=np.zeros(3))
    assert_one_line_error(tmp_path / "unknown.h5", "unknown layout")
    with h5py.File(tmp_path / "k3.weights.h5", "w") as f:
        f.create_group("layers").create_group("conv2d").create_group("vars")
        f.create_group("vars")
    assert_one_line_error(tmp_path / "k3.weights.h5", ".weights.h5", "model.save")


def test_missing_layer(vgg16_notop_file, tmp_path):
    def drop(f):
        f.attrs["layer_names"] = np.array([n for n in f.attrs["layer_names"] if n != b"block3_conv2"])
    assert_one_line_error(_mutated_copy(vgg16_notop_file, tmp_path, drop), "no layer 'block3_conv2'")


def test_wrong_kernel_shape(vgg16_notop_file, tmp_path):
    def shrink(f):
        del f["block2_conv1/block2_conv1_W_1:0"]
        f["block2_conv1"].create_dataset("block2_conv1_W_1:0", data=np.zeros((3, 3, 64, 64), np.float32))
    assert_one_line_error(_mutated_copy(vgg16_notop_file, tmp_path, shrink),
                          "layer 'block2_conv1'", "(3, 3, 64, 64)", "expected (3, 3, 64, 128)")


def test_nan_weight(vgg16_notop_file, tmp_path):
    def poison(f):
        f["block4_conv2/block4_conv2_b_1:0"][7] = np.nan
    assert_one_line_error(_mutated_copy(vgg16_notop_file, tmp_path, poison), "layer 'block4_conv2'", "NaN")


def test_missing_weight_dataset(vgg16_notop_file, tmp_path):
    def remove(f):
        del f["block1_conv2/block1_conv2_b_1:0"]
    assert_one_line_error(_mutated_copy(vgg16_notop_file, tmp_path, remove),
                          "layer 'block1_conv2'", "block1_conv2_b_1:0", "missing")


def test_weights_only_file_of_another_network(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"conv2d_1"])
        group = f.create_group("conv2d_1")
        group.attrs["weight_names"] = np.array([b"conv2d_1/kernel:0", b"conv2d_1/bias:0"])
        group["conv2d_1/kernel:0"], group["conv2d_1/bias:0"] = layer_arrays(0, "c", (3, 3, 3, 8))
    assert_one_line_error(path, "'conv2d_1'", "VGG16 does not have")


def test_2016_file_with_wrong_layer_count(tmp_path):
    path = tmp_path / "vgg16_weights.h5"
    with h5py.File(path, "w") as f:
        f.attrs["nb_layers"] = 1
        group = f.create_group("layer_0")
        group.attrs["nb_params"] = 2
        group["param_0"], group["param_1"] = layer_arrays(0, "c", (64, 3, 3, 3))
    assert_one_line_error(path, "1 layers with weights", "13")


def _cats_dogs_with_config(tmp_path, edit):
    path = tmp_path / "model.h5"
    write_keras2_model(path, cats_dogs_layers(), (150, 150, 3))
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config, config["config"]["layers"])
        f.attrs["model_config"] = json.dumps(config).encode()
    return path


@pytest.mark.parametrize("edit, fragments", [
    (lambda c, layers: layers.insert(1, {"class_name": "BatchNormalization", "config": {"name": "bn_1"}}),
     ["BatchNormalization", "'bn_1'"]),
    (lambda c, layers: layers[2]["config"].update(strides=[2, 2]), ["Conv2D", "'conv2d_2'", "stride"]),
    (lambda c, layers: layers[1]["config"].update(strides=[1, 1]), ["MaxPooling2D", "'max_pooling2d_1'"]),
    (lambda c, layers: layers.__setitem__(8, {"class_name": "GlobalAveragePooling2D",
                                              "config": {"name": "gap"}}), ["GlobalAveragePooling2D", "'gap'"]),
    (lambda c, layers: layers[10]["config"].update(activation="tanh"), ["'dense_1'", "tanh"]),
    (lambda c, layers: c.update(class_name="Sequentialish"), ["unsupported model class", "Sequentialish"]),
])
def test_unsupported_model_configs(edit, fragments, tmp_path):
    assert_one_line_error(_cats_dogs_with_config(tmp_path, edit), *fragments)


def test_functional_model_that_is_not_a_chain(tmp_path):
    path = tmp_path / "branchy.h5"
    shutil.copy(KERAS_MODELS / "tiny_functional_chain.h5", path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        probs = config["config"]["layers"][4]  # fed by 'conv' instead of 'flatten': not a chain
        probs["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0] = "conv"
        f.attrs["model_config"] = json.dumps(config)
    assert_one_line_error(path, "'probs'", "plain chains")


def test_model_file_with_missing_weights_or_bad_config(tmp_path):
    path = tmp_path / "model.h5"
    write_keras2_model(path, cats_dogs_layers(), (150, 150, 3))
    with h5py.File(path, "r+") as f:
        del f["model_weights/dense_1"]
    assert_one_line_error(path, "no weights for layer 'dense_1'")
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = b"{not json"
    assert_one_line_error(path, "model_config", "not valid JSON")


def test_model_weights_of_the_wrong_shape(tmp_path):
    path = tmp_path / "model.h5"
    write_keras2_model(path, cats_dogs_layers(), (160, 160, 3))  # dense_1 rows for a 160x160 input
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][0]["config"]["batch_input_shape"] = [None, 150, 150, 3]
        f.attrs["model_config"] = json.dumps(config).encode()
    assert_one_line_error(path, "layer 'dense_1'", "expected (6272, 512)")
