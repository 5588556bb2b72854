"""Grad-CAM: the engine's heatmaps against PyTorch/Keras references on the synthetic VGG16, the
batch contract, the guards, the jet colour map and overlay, and the ``gradcam`` command.

The VGG16 passes are slow on a loaded CPU (about 15 s per image), so the module runs the engine
three times in all: one batch per score, and one image alone; every test reads those results.
The reference is ``tests/fixtures/gradcam_reference.npz`` (``make_gradcam_reference.py``).
"""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import engine
from engine.errors import ConvscopeError
from engine.viz.attribution.base import class_gradients, target_classes
from engine.viz.attribution.cam import weighted_map
from engine.viz.colormaps import apply_colormap, colormap, overlay, to_index
from engine.viz.attribution.gradcam import grad_cam, grad_cam_weights
from tests.synthetic import uniform
from tests.metrics import rel_err

REFERENCE = pathlib.Path(__file__).parent / "fixtures" / "gradcam_reference.npz"
TINY = pathlib.Path(__file__).parent / "fixtures" / "keras_models" / "tiny_softmax_cnn.h5"
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def images():
    """The reference's two inputs (see make_gradcam_reference.inputs)."""
    return np.concatenate([
        uniform(1, "input224", (1, 224, 224, 3), -120, 150),
        uniform(1, "input224_gradcam", (1, 224, 224, 3), -30, 40),
    ])


@pytest.fixture(scope="module")
def vgg16(vgg16_full_file):
    return engine.load(vgg16_full_file)


@pytest.fixture(scope="module")
def logit_batch(vgg16, images, reference):
    """One pass over the reference's three logit cases: image 0 with its top class and with
    class 386, image 1 with its second class."""
    return grad_cam(vgg16, images[reference["logit/image"]], classes=reference["logit/classes"])


@pytest.fixture(scope="module")
def probability_batch(vgg16, images, reference):
    """Image 1 with its top two classes (softmax 0.78 and 0.11), the softmax score."""
    return grad_cam(
        vgg16, images[reference["probability/image"]], classes=reference["probability/classes"],
        score="probability",
    )


# ---------------------------------------------------------------------------- against references


def test_reference_is_consistent(reference):
    meta = json.loads(str(reference["meta"]))
    for score in ("logit", "probability"):
        assert max(meta["errors"][score]) < TOLERANCE  # Keras float32 agrees with torch float64
    assert reference["logit/torch"].shape == (3, 14, 14)
    assert reference["probability/torch"].shape == (2, 14, 14)


def test_logit_heatmaps_match_reference(logit_batch, reference):
    result = logit_batch
    assert result.heatmaps.shape == (3, 14, 14) and result.heatmaps.dtype == np.float32
    assert result.layer == "block5_conv3" and result.score == "logit"
    np.testing.assert_array_equal(result.classes, reference["logit/classes"])
    for case in range(3):
        err = rel_err(result.heatmaps[case], reference["logit/torch"][case])
        assert err < TOLERANCE, (case, err)
    np.testing.assert_allclose(result.scores, reference["logit/scores"], rtol=1e-4)
    # the stored top and second classes are the engine's too
    assert int(np.argmax(result.probabilities[0])) == reference["logit/classes"][0]
    assert int(np.argsort(-result.probabilities[2])[1]) == reference["logit/classes"][2]
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_probability_heatmaps_match_reference(probability_batch, reference):
    result = probability_batch
    assert result.score == "probability"
    np.testing.assert_array_equal(result.classes, reference["probability/classes"])
    for case in range(2):
        err = rel_err(result.heatmaps[case], reference["probability/torch"][case])
        assert err < TOLERANCE, (case, err)
    np.testing.assert_allclose(result.scores, reference["probability/scores"], rtol=1e-4)


# ---------------------------------------------------------------------------- batch contract


def test_batched_equals_one_at_a_time(vgg16, images, logit_batch):
    # the batch holds two images with two different classes (cases 0 and 2)
    assert logit_batch.classes[0] != logit_batch.classes[2]
    alone = grad_cam(vgg16, images[:1])  # image 0 alone, its top class found on its own
    assert alone.classes.tolist() == [logit_batch.classes[0]]
    np.testing.assert_allclose(alone.heatmaps[0], logit_batch.heatmaps[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(alone.scores[0], logit_batch.scores[0], rtol=1e-6)
    # two classes of one image give two different maps
    assert rel_err(logit_batch.heatmaps[0], logit_batch.heatmaps[1]) > 0.01


def test_heatmaps_are_nonnegative_with_max_one(logit_batch, probability_batch):
    for result in (logit_batch, probability_batch):
        assert result.heatmaps.min() >= 0
        np.testing.assert_array_equal(result.heatmaps.max(axis=(1, 2)), 1.0)


def test_tiny_network_batch_and_layers():
    """A fast batch check on a tiny real-Keras model (softmax output, no ReLU at the layer)."""
    model = engine.load(TINY)
    x = np.stack([uniform(5, f"tiny{i}", model.input_shape, -1, 1) for i in range(3)])
    for score in ("logit", "probability"):
        batch = grad_cam(model, x, classes=[0, 1, 0], layer="conv_3x3_valid_linear", score=score)
        for i, k in enumerate([0, 1, 0]):
            one = grad_cam(model, x[i : i + 1], classes=k, layer="conv_3x3_valid_linear", score=score)
            np.testing.assert_allclose(one.heatmaps[0], batch.heatmaps[i], rtol=0, atol=1e-6)
    assert batch.heatmaps.shape[1:] == model.output_shapes(x.shape[1:3])[2][:2]


def test_a_target_function_is_a_score():
    """Any (trace, classes) -> (scores, injected gradients) target works, and the path is linear
    in what it injects: 2 logit[c] - logit[d] gives 2 g_c - g_d at the layer and the input."""
    model = engine.load(TINY)
    x = np.stack([uniform(5, f"tiny{i}", model.input_shape, -1, 1) for i in range(2)])
    layer, c, d = "conv_3x3_valid_linear", np.array([0, 1]), np.array([1, 0])

    def margin(trace, classes):
        z = trace.model.backend.to_host(trace.output("logits")).astype(np.float64)
        inject = np.zeros(z.shape, np.float32)
        inject[[0, 1], classes], inject[[0, 1], d] = 2.0, -1.0
        return 2 * z[[0, 1], classes] - z[[0, 1], d], {"logits": inject}

    custom = class_gradients(model, x, c, margin, layer=layer)
    by_c, by_d = (class_gradients(model, x, k, "logit", layer=layer) for k in (c, d))
    np.testing.assert_allclose(custom.scores, 2 * by_c.scores - by_d.scores, rtol=1e-6)
    for name in ("gradients", "layer_gradients"):
        expected = 2 * getattr(by_c, name).astype(np.float64) - getattr(by_d, name)
        assert rel_err(getattr(custom, name), expected) < 1e-5, name
    result = grad_cam(model, x, classes=c, layer=layer, score=margin)
    assert result.score == "margin" and np.array_equal(result.classes, c)


# ---------------------------------------------------------------------------- guards


def test_weighted_map_formula_and_zero_guard():
    rng = np.random.default_rng(0)
    a = rng.random((2, 3, 4, 5)).astype(np.float32)
    w = rng.random((2, 5)) - 0.3  # mixed signs, but a positive map somewhere
    raw = np.maximum((a * w[:, None, None, :]).mean(axis=-1), 0)
    expected = raw / raw.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(weighted_map(a, w), expected, rtol=1e-6)
    zeros = weighted_map(a, -np.abs(w))  # every channel votes against: ReLU leaves nothing
    assert np.all(zeros == 0) and np.isfinite(zeros).all()
    g = rng.standard_normal((2, 3, 4, 5))
    np.testing.assert_allclose(grad_cam_weights(a, g), g.mean(axis=(1, 2)))


def test_target_classes_checks():
    np.testing.assert_array_equal(target_classes(7, 3, 10), [7, 7, 7])
    np.testing.assert_array_equal(target_classes([1, 2], 2, 10), [1, 2])
    assert target_classes(None, 2, 10) is None
    for bad in (10, -1, [1, 2, 3], 1.5, [True, False]):
        with pytest.raises(ConvscopeError):
            target_classes(bad, 2, 10)


def test_bad_requests_fail_before_computing(vgg16, images):
    with pytest.raises(ConvscopeError, match="out of range"):
        grad_cam(vgg16, images[:1], classes=1000)
    with pytest.raises(ConvscopeError, match="one class per image"):
        grad_cam(vgg16, images, classes=[1, 2, 3])
    with pytest.raises(ConvscopeError, match="unknown score"):
        grad_cam(vgg16, images[:1], score="softmax")
    with pytest.raises(ConvscopeError, match="no spatial output"):
        grad_cam(vgg16, images[:1], layer="fc1")
    with pytest.raises(ConvscopeError, match="unknown layer"):
        grad_cam(vgg16, images[:1], layer="block9_conv1")


# ---------------------------------------------------------------------------- colour maps


def test_jet_table_matches_matplotlib():
    jet = colormap("jet")
    assert jet.shape == (256, 3)
    np.testing.assert_allclose(jet[0], (0, 0, 0.5))
    np.testing.assert_allclose(jet[255], (0.5, 0, 0))
    # matplotlib: jet(0.5) = (0.4901960784, 1.0, 0.4775...) at entry 128 (x = 128/255)
    np.testing.assert_allclose(jet[128], (0.49019608, 1.0, 0.47754586), atol=1e-6)
    assert to_index([0.0, 0.5, 0.999, 1.0, 2.0, -1.0]).tolist() == [0, 128, 255, 255, 255, 0]
    np.testing.assert_array_equal(apply_colormap(np.array([0.0, 1.0])), [[0, 0, 128], [128, 0, 0]])


def test_overlay_blends_at_alpha():
    photo = np.full((3, 4, 3), 200, np.uint8)
    out = overlay(photo, np.zeros((3, 4)), alpha=0.4)
    np.testing.assert_array_equal(out[0, 0], np.rint(0.6 * 200 + 0.4 * np.array([0, 0, 128])))
    assert overlay(photo, np.ones((3, 4)), alpha=0.0).tolist() == photo.tolist()
    with pytest.raises(ValueError):
        overlay(photo, np.zeros((4, 3)))


# ---------------------------------------------------------------------------- the command


def test_cli_gradcam_picture_and_array(vgg16_full_file, shared_data, tmp_path, monkeypatch):
    import cli

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))  # no user class index
    monkeypatch.delenv("CONVSCOPE_CLASS_INDEX", raising=False)
    photo = shared_data / "images" / "chelsea.png"
    out, array = tmp_path / "cat.png", tmp_path / "cat.npy"
    args = ["gradcam", str(photo), "--weights", str(vgg16_full_file), "--out", str(out),
            "--save-array", str(array), "--class", "386"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert sum(line.lstrip().startswith(("1.", "2.", "3.")) for line in lines) == 3
    assert "386" in result.stdout
    with Image.open(out) as picture:
        assert picture.size == (451, 300) and picture.mode == "RGB"
    heatmap = np.load(array)
    assert heatmap.shape == (14, 14) and heatmap.dtype == np.float32
    assert heatmap.min() >= 0 and heatmap.max() in (0.0, 1.0)
    # no overwrite without --overwrite, and nothing half-written
    again = CliRunner().invoke(cli.app, args)
    assert again.exit_code == 1 and "already exists" in again.stderr
