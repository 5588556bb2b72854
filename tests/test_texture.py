"""Gram-matrix losses: stated gradients vs finite differences, values vs PyTorch (float64, Gatys'
formula written independently in ``fixtures/make_fool_reference.py``), texture and style-transfer
losses fall with Adam and L-BFGS on the synthetic notop VGG16 at 64 px, and the CLI command."""

import pathlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import engine
from engine.viz import gram
from engine.viz.texture import default_content_layer, default_style_layers, synthesize
from tests.synthetic import uniform
from tests.test_objectives import numeric_gradient

REFERENCE = pathlib.Path(__file__).parent / "fixtures" / "fool_reference.npz"


def acts64():
    return {
        "a": uniform(21, "a", (2, 4, 3, 5), -1, 2).astype(np.float64),
        "b": uniform(21, "b", (2, 2, 3, 3), 0, 2).astype(np.float64),
    }


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: gram.gram_loss("a", uniform(22, "ga", (5, 5), 0, 1).astype(np.float64), 0.7), "a"),
        (lambda: gram.gram_loss("a", uniform(22, "gn", (2, 5, 5), 0, 1).astype(np.float64)), "a"),
        (lambda: gram.style({"a": np.eye(5), "b": np.ones((3, 3))}), "b"),
        (lambda: gram.style({"a": np.eye(5), "b": np.ones((3, 3))}, {"a": 2.0, "b": 0.5}), "a"),
        (lambda: gram.content({"b": uniform(23, "c", (1, 2, 3, 3), 0, 1)}), "b"),
        (lambda: gram.feature_reconstruction("a", uniform(23, "f", (2, 4, 3, 5), 0, 1), samples=[1]), "a"),
    ],
)
def test_gradients_match_finite_differences(make, name):
    objective = make()
    acts = acts64()
    loss, grads = objective(acts)
    assert loss.shape == (2,)
    expected = numeric_gradient(objective, acts, name)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(grads[name], expected, rtol=1e-5, atol=1e-8)


def test_gram_matrix_and_sample_mask():
    a = uniform(24, "g", (2, 3, 4, 5))
    f = a.reshape(2, 12, 5).astype(np.float64)
    np.testing.assert_allclose(gram.gram_matrix(a), f.transpose(0, 2, 1) @ f / 12, rtol=1e-12)
    loss, grads = gram.feature_reconstruction("a", np.zeros((2, 3, 4, 5)) + 1.0, samples=[0])({"a": a})
    assert loss[0] > 0 and loss[1] == 0 and not grads["a"][1].any()


@pytest.fixture(scope="module")
def notop(vgg16_notop_file):
    return engine.load(vgg16_notop_file)


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return {key: data[key] for key in data.files}


def test_gram_style_content_match_pytorch(notop, reference):
    x = uniform(2, "texture64", (1, 64, 64, 3), -100, 120)
    s = uniform(3, "texture64", (1, 64, 64, 3), -100, 120)
    layers = ["block1_conv1", "block2_conv1", "block2_conv2"]
    fx, fs = notop.forward(x, outputs=layers), notop.forward(s, outputs=layers)
    g = gram.gram_matrix(fx["block1_conv1"])[0]
    ref = reference["gram/block1_conv1"]
    assert np.linalg.norm(g - ref) / np.linalg.norm(ref) < 1e-5
    for name in ("block1_conv1", "block2_conv1"):
        value = gram.gram_loss(name, gram.gram_matrix(fs[name]))(fx)[0][0]
        assert value == pytest.approx(float(reference[f"gram/E/{name}"]), rel=1e-4)
    value = gram.content({"block2_conv2": fs["block2_conv2"]})(fx)[0][0]
    assert value == pytest.approx(float(reference["gram/content/block2_conv2"]), rel=1e-4)


@pytest.mark.parametrize("method", ["adam", "lbfgs"])
def test_texture_loss_falls(notop, method):
    style = uniform(4, "style64", (1, 64, 64, 3), -100, 120)
    result = synthesize(notop, style, size=(48, 48), steps=4, method=method, lr=4.0, seed=1)
    assert result.images.shape == (1, 48, 48, 3) and result.method == method
    assert result.style_layers == [f"block{i}_conv1" for i in range(1, 6)]
    assert result.losses[-1, 0] < 0.9 * result.losses[0, 0]
    assert np.all(result.images >= engine.preprocess_input(np.zeros((1, 1, 3)))[0, 0] - 1e-4)


def test_style_transfer_starts_from_content_and_loss_falls(notop):
    style = uniform(4, "style64", (1, 48, 48, 3), -100, 120)
    photo = uniform(5, "photo64", (1, 48, 48, 3), -60, 60)
    result = synthesize(notop, style, content=photo, steps=3, method="adam", lr=2.0)
    assert result.content_layer == "block4_conv2" == default_content_layer(notop)
    assert result.losses[-1, 0] < result.losses[0, 0]
    assert np.abs(result.images - photo).max() <= 1.05 * 3 * 2.0  # Adam moves about lr per step at most
    assert default_style_layers(notop)[0] == "block1_conv1"


def test_cli_texture(vgg16_notop_file, tmp_path):
    from cli import app

    photo = tmp_path / "style.png"
    Image.fromarray((uniform(6, "p", (40, 40, 3), 0, 255)).astype(np.uint8)).save(photo)
    out = tmp_path / "t.png"
    args = ["texture", str(photo), "--size", "40", "--steps", "2", "--method", "adam", "-w", str(vgg16_notop_file), "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "adam: loss" in result.output and Image.open(out).size == (40, 40)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output
