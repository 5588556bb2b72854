"""Feature inversion: the loss falls for several layers in one batched descent on the synthetic
notop VGG16 at 64 px, the batch equals separate runs, layer choices, and the CLI command."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import engine
from engine.errors import ConvscopeError
from engine.viz.invert import block_layers, invert
from tests.synthetic import uniform

LAYERS = ["block1_conv2", "block3_conv3"]


@pytest.fixture(scope="module")
def notop(vgg16_notop_file):
    return engine.load(vgg16_notop_file)


@pytest.fixture(scope="module")
def photo():
    return uniform(7, "invert64", (1, 64, 64, 3), -90, 110)


@pytest.fixture(scope="module")
def batched(notop, photo):
    return invert(notop, photo, LAYERS, steps=6, lr=4.0, seed=3)


def test_losses_fall_for_every_layer(batched):
    assert batched.images.shape == (2, 64, 64, 3) and batched.layers == LAYERS
    assert batched.losses.shape == (6, 2)
    assert np.all(batched.losses[-1] < 0.9 * batched.losses[0])
    assert np.all(batched.feature_losses < batched.losses[0])


def test_batch_equals_one_layer_alone(notop, photo, batched):
    alone = invert(notop, photo, LAYERS[:1], steps=6, lr=4.0, seed=3)
    # the starting noise of sample 0 is the same draw; later samples never touch it
    np.testing.assert_allclose(alone.images[0], batched.images[0], atol=1e-3)
    np.testing.assert_allclose(alone.losses[:, 0], batched.losses[:, 0], rtol=1e-4)


def test_layer_choices(notop, photo):
    assert block_layers(notop) == ["block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"]
    assert block_layers(notop, last=False)[-1] == "block5_conv1"
    with pytest.raises(ConvscopeError):
        invert(notop, np.concatenate([photo, photo]), LAYERS, steps=1)
    with pytest.raises(ConvscopeError):
        invert(notop, photo, ["nope"], steps=1)


def test_cli_invert(vgg16_notop_file, tmp_path):
    from cli import app

    path = tmp_path / "photo.png"
    Image.fromarray(uniform(8, "p", (40, 40, 3), 0, 255).astype(np.uint8)).save(path)
    out = tmp_path / "inv.png"
    args = ["invert", str(path), "--layer", "block1_conv2,block2_conv2", "--size", "40", "--steps", "2",
            "-w", str(vgg16_notop_file), "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "block2_conv2: loss" in result.output
    assert Image.open(out).size[0] > 3 * 40
