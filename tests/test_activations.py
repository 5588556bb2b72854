"""Activation maps: the layers' outputs, the seed's per-channel normalisation, the grid geometry,
the viridis table, and the ``activations`` command (one titled PNG per layer).

Runs on the tiny real-Keras models and the real block1-2 VGG16 file from shared data (small and
fast); nothing here needs the 553 MB synthetic file.
"""

import pathlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import engine
from engine.errors import ConvscopeError
from engine.viz.activations import activation_grid, activation_maps, channel_images, default_layers
from engine.viz.colormaps import apply_colormap, colormap
from tests.synthetic import uniform

TINY = pathlib.Path(__file__).parent / "fixtures" / "keras_models" / "tiny_sigmoid_cnn.h5"


@pytest.fixture(scope="module")
def block12_file(shared_data):
    return shared_data / "weights" / "vgg16_block1-2_imagenet.h5"


def test_activation_maps_are_the_layer_outputs():
    model = engine.load(TINY)
    x = uniform(3, "tiny_acts", (2,) + model.input_shape, -1, 1)
    maps = activation_maps(model, x, ["conv_5x5_valid", "pool_2"])
    assert list(maps) == ["conv_5x5_valid", "pool_2"]
    expected = model.forward(x, outputs=["conv_5x5_valid", "pool_2"])
    for name in maps:
        np.testing.assert_array_equal(maps[name], expected[name])
        assert maps[name].dtype == np.float32 and maps[name].ndim == 4
    assert default_layers(model) == ["conv_5x5_valid", "pool_2", "conv_4x4_same"]
    with pytest.raises(ConvscopeError, match="no spatial output"):
        activation_maps(model, x, ["dense_hidden"])
    with pytest.raises(ConvscopeError, match="unknown layer"):
        activation_maps(model, x, ["nope"])


def test_channel_normalisation_is_the_seed_formula():
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((5, 7, 3)).astype(np.float32) * 3 + 1
    maps[..., 2] = 4.0  # a constant channel: std 0
    tiles = channel_images(maps)
    assert tiles.shape == (3, 5, 7) and tiles.dtype == np.uint8
    for c in range(2):
        ch = maps[..., c].copy()  # Deep Learning with Python, ch. 5, step by step
        ch -= ch.mean()
        ch /= ch.std()
        ch *= 64
        ch += 128
        np.testing.assert_array_equal(tiles[c], np.clip(ch, 0, 255).astype("uint8"))
    assert np.all(tiles[2] == 128)


def test_grid_geometry_sixteen_per_row():
    maps = np.random.default_rng(2).random((6, 5, 35)).astype(np.float32)
    grid = activation_grid(maps, gap=2)
    # 35 channels: 16 per row, 3 rows; 16 tiles of 5 px and 15 gaps across, 3 rows of 6 px and 2 gaps down
    assert grid.shape == (3 * 6 + 2 * 2, 16 * 5 + 15 * 2, 3) and grid.dtype == np.uint8
    tiles = apply_colormap(channel_images(maps), "viridis")
    np.testing.assert_array_equal(grid[:6, :5], tiles[0])
    np.testing.assert_array_equal(grid[8:14, 7:12], tiles[17])  # row 1, column 1
    np.testing.assert_array_equal(grid[16:22, 14:19], tiles[34])  # the last tile: row 2, column 2
    assert np.all(grid[16:, 21:] == 255)  # empty cells are white
    assert np.all(grid[6:8] == 255)  # the gap between rows
    zoomed = activation_grid(maps[..., :3], zoom=3, gap=0)
    assert zoomed.shape == (18, 45, 3)


def test_viridis_table_is_matplotlibs():
    viridis = colormap("viridis")
    assert viridis.shape == (256, 3)
    # matplotlib's _viridis_data entries, between and at the embedded knots
    known = {
        0: (0.267004, 0.004874, 0.329415),
        4: (0.272594, 0.025563, 0.353093),
        140: (0.119423, 0.611141, 0.538982),
        244: (0.886271, 0.892374, 0.095374),
        255: (0.993248, 0.906157, 0.143936),
    }
    for index, rgb in known.items():
        np.testing.assert_allclose(viridis[index], rgb, atol=2 / 255)
    np.testing.assert_allclose(viridis[0], known[0], atol=1e-6)
    lightness = viridis @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(lightness) > 0)


def test_cli_writes_one_titled_png_per_layer(block12_file, shared_data, tmp_path):
    import cli
    from commands import pictures

    out = tmp_path / "acts"
    photo = shared_data / "images" / "chelsea.png"
    args = ["activations", str(photo), "--weights", str(block12_file), "--out", str(out),
            "--layers", "block1_conv1,block2_pool", "--size", "64"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["block1_conv1.png", "block2_pool.png"]
    for name, (h, c) in {"block1_conv1": (64, 64), "block2_pool": (16, 128)}.items():
        with Image.open(out / f"{name}.png") as picture:
            width, height = picture.size
            rgb = np.asarray(picture.convert("RGB"))
        zoom = pictures.activation_zoom(h)
        rows = -(-c // 16)
        grid_h = rows * h * zoom + (rows - 1) * pictures.ACTIVATION_GAP
        assert width == 16 * h * zoom + 15 * pictures.ACTIVATION_GAP
        assert height == pictures.TITLE_BAND + grid_h
        band = rgb[: pictures.TITLE_BAND]
        assert (band < 128).any() and (band == 255).mean() > 0.5  # dark text on white
    # the default: every layer of this 6-layer network; existing files are not replaced
    again = CliRunner().invoke(cli.app, ["activations", str(photo), "--weights", str(block12_file),
                                         "--out", str(out), "--size", "48"])
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert sorted(p.name for p in out.iterdir()) == files
