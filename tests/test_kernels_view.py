"""Kernels as pictures (BGR -> RGB, normalisation, layout, geometry), the picture helpers, the
``weights`` command, and the real ImageNet first layer (shared data) looking like one."""

import numpy as np
import pytest
from PIL import Image

import engine
from engine.errors import ConvscopeError
from engine.model import Model
from engine.spec import LayerSpec, NetworkSpec
from engine.viz.kernels_view import view_kernels
from engine.viz.pictures import enlarge, minmax, standardize_to_uint8, symmetric, to_uint8
from tests.synthetic import uniform


def tiny_model(c_out=5):
    k1 = uniform(21, "k1", (3, 3, 3, c_out), -1, 1)
    k2 = uniform(21, "k2", (3, 3, c_out, 4), -1, 1)
    layers = [
        LayerSpec("c1", "conv2d", "relu", k1, np.zeros(c_out, np.float32), "same"),
        LayerSpec("c2", "conv2d", "relu", k2, np.zeros(4, np.float32), "same"),
        LayerSpec("p", "maxpool2d"),
    ]
    return Model(NetworkSpec(layers, (None, None, 3)), device="cpu")


def test_first_layer_tiles_are_rgb_per_kernel():
    model = tiny_model()
    kernel = model.spec.layer("c1").kernel
    view = view_kernels(model, "c1", zoom=4, margin=1, columns=3)
    assert view.colour and view.tiles.shape == (5, 3, 3, 3) and (view.rows, view.columns) == (2, 3)
    for k in range(5):
        tile = kernel[:, :, ::-1, k]  # BGR -> RGB
        expected = (tile - tile.min()) / (tile.max() - tile.min())
        np.testing.assert_allclose(view.tiles[k], expected, rtol=1e-5, atol=1e-6)
    assert view.picture.shape == (2 * 12 + 1, 3 * 12 + 2, 3) and view.picture.dtype == np.uint8
    np.testing.assert_array_equal(view.picture[12:13], 255)  # the margin between the rows
    top_left = view.picture[:12, :12]
    np.testing.assert_array_equal(top_left, to_uint8(enlarge(view.tiles[0], 4, (0, 1))))
    rgb = view_kernels(model, "c1", channel_order="rgb")
    np.testing.assert_allclose(rgb.tiles, view.tiles[..., ::-1], atol=1e-6)


def test_layer_normalisation_keeps_zero_gray_and_signs():
    model = tiny_model()
    kernel = model.spec.layer("c1").kernel
    view = view_kernels(model, "c1", normalize="layer")
    peak = np.abs(kernel).max()
    np.testing.assert_allclose(view.tiles[2], kernel[:, :, ::-1, 2] / (2 * peak) + 0.5, atol=1e-6)
    assert view.tiles.min() >= 0 and view.tiles.max() <= 1


def test_deeper_layer_rows_are_filters_and_columns_inputs():
    model = tiny_model(c_out=6)
    kernel = model.spec.layer("c2").kernel  # (3, 3, 6, 4)
    view = view_kernels(model, "c2", max_filters=3, max_inputs=5, zoom=2, margin=1)
    assert not view.colour and view.tiles.shape == (3, 5, 3, 3)
    assert view.picture.shape == (3 * 6 + 2, 5 * 6 + 4)
    row = kernel[:, :, :5, 1].transpose(2, 0, 1)  # filter 1 on inputs 0..4, one scale per row
    np.testing.assert_allclose(view.tiles[1], (row - row.min()) / (row.max() - row.min()), atol=1e-6)
    tile = view.picture[1 * 7 : 1 * 7 + 6, 4 * 7 : 4 * 7 + 6]  # row 1, column 4
    np.testing.assert_array_equal(tile, to_uint8(enlarge(view.tiles[1, 4], 2, (0, 1))))


def test_bad_layers_and_options():
    model = tiny_model()
    with pytest.raises(ConvscopeError, match="maxpool2d"):
        view_kernels(model, "p")
    with pytest.raises(ConvscopeError, match="unknown layer"):
        view_kernels(model, "nope")
    with pytest.raises(ConvscopeError, match="normalisation"):
        view_kernels(model, "c1", normalize="per-pixel")


def test_picture_helpers():
    x = uniform(22, "x", (2, 6, 5, 3), -3, 7)
    ours = standardize_to_uint8(x)

    def keras_deprocess(img):  # the Keras example's deprocess_image, verbatim in effect
        img = img.astype(np.float64).copy()
        img -= img.mean()
        img /= img.std() + 1e-5
        img *= 0.1
        img += 0.5
        img = np.clip(img, 0, 1)
        img *= 255
        return np.clip(img, 0, 255).astype("uint8")

    for i in range(2):
        np.testing.assert_array_equal(ours[i], keras_deprocess(x[i]))
    np.testing.assert_array_equal(standardize_to_uint8(x[0]), ours[0])
    assert (minmax(np.full((1, 2, 2), 3.0)) == 0.5).all()
    assert minmax(x, per_tile=False).min() == 0 and minmax(x, per_tile=False).max() == 1
    assert symmetric(np.array([[-2.0, 1.0]]))[0].tolist() == [0.0, 0.75]
    assert enlarge(np.arange(4).reshape(1, 2, 2), 3).shape == (1, 6, 6)


def test_real_first_layer(shared_data, tmp_path):
    """The ImageNet block1_conv1: colour blobs and oriented (light/dark) edge kernels."""
    path = shared_data / "weights" / "vgg16_block1-2_imagenet.h5"
    model = engine.load(path)
    kernel = model.spec.layer("block1_conv1").kernel
    np.testing.assert_allclose(kernel[0, 0, :, 0], [0.429471, 0.550379, 0.480015], atol=1e-6)
    view = view_kernels(model, "block1_conv1")
    assert view.picture.shape == (8 * 24 + 7 * 2, 8 * 24 + 7 * 2, 3)
    # the first kernel's top-left value: B, G, R = 0.4295, 0.5504, 0.4800 -> shown as R, G, B
    tile = kernel[:, :, ::-1, 0]
    np.testing.assert_allclose(view.tiles[0, 0, 0], (tile[0, 0] - tile.min()) / np.ptp(tile), atol=1e-6)
    tiles = kernel.transpose(3, 0, 1, 2)  # (64, 3, 3, BGR)
    # colour blobs: kernels whose channels differ in sign on average (opponent colours) ...
    channel_means = tiles.mean(axis=(1, 2))
    assert ((channel_means.max(axis=1) > 0) & (channel_means.min(axis=1) < 0)).sum() >= 8
    # ... and edges: kernels whose luminance changes strongly across the 3x3 window
    luminance = tiles.mean(axis=3)
    spread = luminance.max(axis=(1, 2)) - luminance.min(axis=(1, 2))
    assert (spread > 0.5 * np.abs(luminance).max(axis=(1, 2))).sum() >= 16


def test_weights_command(vgg16_notop_file, tmp_path):
    from typer.testing import CliRunner

    import cli

    out, arr = tmp_path / "w.png", tmp_path / "w.npy"
    result = CliRunner().invoke(
        cli.app, ["weights", "--weights", str(vgg16_notop_file), "-o", str(out), "--save-array", str(arr)]
    )
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (206, 206) and np.load(arr).shape == (64, 3, 3, 3)
    deeper = CliRunner().invoke(
        cli.app, ["weights", "--weights", str(vgg16_notop_file), "--layer", "block2_conv1", "--max", "4",
                  "--max-inputs", "10", "--zoom", "2", "-o", str(tmp_path / "d.png")]
    )
    assert deeper.exit_code == 0, deeper.output
    assert Image.open(tmp_path / "d.png").size == (10 * 6 + 9 * 2, 4 * 6 + 3 * 2)
    bad = CliRunner().invoke(cli.app, ["weights", "--weights", str(vgg16_notop_file), "--layer", "block1_pool",
                                       "-o", str(tmp_path / "b.png")])
    assert bad.exit_code == 1 and bad.stderr.startswith("error: ") and not (tmp_path / "b.png").exists()
