"""Occlusion: the window positions, the drops against brute force on a tiny model and against
PyTorch float64 on the synthetic VGG16 (a 3 x 3 grid of 112 px windows), batch = one at a time,
and the ``occlusion`` command (picture at the photo's size, one-line errors)."""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import engine
from engine.errors import ConvscopeError
from engine.viz.attribution.occlusion import occlude, occlusion, window_positions
from tests.synthetic import uniform

REFERENCE = pathlib.Path(__file__).parent / "fixtures" / "saliency_reference.npz"
TINY = pathlib.Path(__file__).parent / "fixtures" / "keras_models" / "tiny_softmax_cnn.h5"


def test_window_positions_cover_every_pixel():
    assert window_positions(224, 32, 8).tolist() == list(range(0, 193, 8))
    assert window_positions(224, 112, 56).tolist() == [0, 56, 112]
    assert window_positions(10, 4, 4).tolist() == [0, 4, 6]  # one more, touching the edge
    assert window_positions(5, 5, 3).tolist() == [0]


@pytest.fixture(scope="module")
def tiny():
    model = engine.load(TINY)
    x = np.stack([uniform(5, f"tiny{i}", model.input_shape, -1, 1) for i in range(3)])
    return model, x


def test_tiny_drops_equal_brute_force(tiny):
    model, x = tiny
    result = occlusion(model, x, classes=[0, 1, 2], window=4, stride=3, batch=5)
    assert result.tops.tolist() == [0, 3, 6, 7] and result.lefts.tolist() == [0, 3, 6, 8]
    assert result.drops.shape == (3, 4, 4) and result.heatmaps.shape == (3, 11, 12)
    p = model.predict(x)
    for n, k in enumerate([0, 1, 2]):
        fill = x[n].mean(axis=(0, 1))
        for i, t in enumerate(result.tops):
            for j, l in enumerate(result.lefts):
                q = model.predict(occlude(x[n], t, l, 4, fill)[None])[0, k]
                np.testing.assert_allclose(result.drops[n, i, j], p[n, k] - q, rtol=1e-5, atol=1e-7)
    # a pixel covered by one window only carries that window's drop
    np.testing.assert_allclose(result.heatmaps[:, 0, 0], result.drops[:, 0, 0])
    one = occlusion(model, x[1:2], classes=1, window=4, stride=3, batch=1)
    np.testing.assert_allclose(one.drops[0], result.drops[1], rtol=1e-5, atol=1e-7)


def test_bad_requests(tiny):
    model, x = tiny
    with pytest.raises(ConvscopeError, match="larger than"):
        occlusion(model, x, window=12)
    with pytest.raises(ConvscopeError, match="at least 1"):
        occlusion(model, x, stride=0)


def test_vgg16_drops_match_pytorch(vgg16_full_file):
    with np.load(REFERENCE) as data:
        expected, meta = data["occlusion/drops"], json.loads(str(data["meta"]))
    model = engine.load(vgg16_full_file)
    x = uniform(1, "input224_gradcam", (1, 224, 224, 3), -30, 40)
    result = occlusion(model, x, window=meta["occlusion"]["window"], stride=meta["occlusion"]["stride"], batch=9)
    assert result.classes[0] == meta["class"] and result.drops[0].shape == expected.shape
    err = np.linalg.norm(result.drops[0] - expected) / np.linalg.norm(expected)
    assert err < 1e-3, err
    assert 0.5 < result.probabilities[0].max() < 0.9  # not saturated: the drops mean something


def test_cli_occlusion(vgg16_full_file, shared_data, tmp_path, monkeypatch):
    import cli

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("CONVSCOPE_CLASS_INDEX", raising=False)
    photo = shared_data / "images" / "chelsea.png"
    out, array = tmp_path / "occ.png", tmp_path / "occ.npy"
    base = ["occlusion", str(photo), "--weights", str(vgg16_full_file)]
    result = CliRunner().invoke(cli.app, base + ["--out", str(out), "--save-array", str(array),
                                                 "--window", "112", "--stride", "112", "--batch", "4"])
    assert result.exit_code == 0, result.output
    assert "4 positions (2 x 2)" in result.stdout and "largest drop" in result.stdout
    with Image.open(out) as picture:
        assert picture.size == (451, 300) and picture.mode == "RGB"
    assert np.load(array).shape == (224, 224)
    for args, message in ((["--class", "1000"], "out of range"), (["--window", "300"], "larger than"),
                          (["--stride", "0"], "at least 1")):
        bad = CliRunner().invoke(cli.app, base + ["--out", str(tmp_path / "bad.png")] + args)
        lines = bad.stderr.strip().splitlines()
        assert bad.exit_code == 1 and len(lines) == 1 and message in lines[0], bad.stderr
        assert not (tmp_path / "bad.png").exists()
