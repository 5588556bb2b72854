"""Attributions: the engine against PyTorch on the synthetic VGG16 (vanilla, guided backprop,
SmoothGrad with the same noise, integrated gradients, guided Grad-CAM), the batch contract,
integrated gradients' completeness, the pictures, and the ``saliency`` command.

The synthetic network is full of near ties (ReLU inputs and pool windows within float32 rounding),
and which way a float32 forward takes them depends on the CPU; integrated gradients' black
baseline is a constant image, all exact ties. So each method is held at 1e-4 to PyTorch's
gradients following the engine's own ReLU masks and pool winners on this machine
(``tests.reference_models.forced_gradients``, computed here), with a check that those decisions
differ from PyTorch's own only at near ties; and loosely to the float64 values of
``tests/fixtures/saliency_reference.npz`` (``make_saliency_reference.py``), which decide for
themselves. VGG16 passes are slow on a loaded CPU, so each method runs once on the module's one
image; the fast batch and completeness checks run on a tiny real-Keras model.
"""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import engine
from engine.errors import ConvscopeError
from engine.viz.attribution import attribute, guided_grad_cam, integrated_gradients, smoothgrad
from engine.viz.attribution import guided_backprop, vanilla_gradient
from engine.viz.attribution.integrated import black_baseline, quadrature
from engine.viz.attribution.pictures import attribution_picture, diverging_picture, gray_picture
from engine.viz.attribution.smoothgrad import noisy_copies
from engine.viz.colormaps import BWR
from tests.synthetic import uniform
from tests.metrics import FIXTURE_CONV, rel_err

REFERENCE = pathlib.Path(__file__).parent / "fixtures" / "saliency_reference.npz"
TINY = pathlib.Path(__file__).parent / "fixtures" / "keras_models" / "tiny_softmax_cnn.h5"
TOLERANCE = 1e-3
FORCED_TOLERANCE = 1e-4  # against PyTorch float32 taking the engine's decisions: 2e-7 to 1.5e-6 measured
PLAIN_TOLERANCE = 2e-2  # float64 deciding its own near ties: a flip moves a gradient by up to ~1e-2
MARGIN = 1e-4  # a decision the engine takes otherwise than PyTorch: a tie is ~1e-6 of the rms
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        store = {key: data[key] for key in data.files}
    store["meta"] = json.loads(str(store["meta"]))
    return store


@pytest.fixture(scope="module")
def image():
    """The reference's input: softmax 0.78 for its top class (not saturated)."""
    return uniform(1, "input224_gradcam", (1, 224, 224, 3), -30, 40)


@pytest.fixture(scope="module")
def vgg16(vgg16_full_file):
    return engine.load(vgg16_full_file, conv=FIXTURE_CONV)


@pytest.fixture(scope="module")
def results(vgg16, image, reference):
    """Every method once on the reference image, with the reference's settings."""
    meta = reference["meta"]
    samples, noise, seed = meta["settings"]["smoothgrad"]
    other = uniform(1, "input224", (1, 224, 224, 3), -120, 150)
    return {
        # vanilla runs as a batch of two images with different classes, for the batch check
        "vanilla": vanilla_gradient(vgg16, np.concatenate([image, other]), classes=[meta["class"], 386], batch=2),
        "guided": guided_backprop(vgg16, image),
        "smoothgrad": smoothgrad(vgg16, image, samples=samples, noise=noise, seed=seed, batch=samples),
        "integrated": integrated_gradients(vgg16, image, steps=meta["settings"]["integrated_steps"], batch=4),
        "guided-gradcam": guided_grad_cam(vgg16, image),
    }


# ---------------------------------------------------------------------------- against references


@pytest.fixture(scope="module")
def followed(vgg16, vgg16_full_file, image, reference):
    """{method: (attribution, margin)}: PyTorch float32, following the engine's decisions."""
    torch = pytest.importorskip("torch")
    from tests.fixtures.make_saliency_reference import enlarge_cam
    from tests.reference_models import TorchVGG16, forced_gradients

    tm = TorchVGG16(vgg16_full_file, include_top=True, dtype=torch.float32)
    meta = reference["meta"]
    onehot = np.zeros(1000)
    onehot[meta["class"]] = 1.0

    def grads(rows, relu="standard"):
        g, margin = forced_gradients(vgg16, tm, rows, "logits", np.tile(onehot, (len(rows), 1)), relu)
        return g.astype(np.float64), margin

    out = {}
    vanilla, margin = grads(image)
    out["vanilla"] = vanilla[0], margin
    guided, guided_margin = grads(image, "guided")
    out["guided"] = guided[0], guided_margin
    samples, noise, seed = meta["settings"]["smoothgrad"]
    noisy, margin = grads(noisy_copies(image[0], range(samples), noise, seed))
    out["smoothgrad"] = noisy.mean(axis=0), margin
    steps = meta["settings"]["integrated_steps"]
    # the black baseline as the engine defines it, a float32 image (its points and x - b then match
    # the engine's to the bit: a point off by one rounding may fall on the other side of a tie)
    x, b = image[0].astype(np.float64), np.broadcast_to(-CAFFE_MEAN_BGR.astype(np.float32), image.shape[1:])
    alphas = np.linspace(0.0, 1.0, steps)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] /= 2
    b = b.astype(np.float64)
    path, margin = grads((b + alphas[:, None, None, None] * (x - b)).astype(np.float32))
    out["integrated"] = (x - b) * np.tensordot(weights, path, axes=1), margin
    out["guided-gradcam"] = guided[0] * enlarge_cam(reference["guided-gradcam/cam"]), guided_margin
    return out


@pytest.mark.parametrize("method", ["vanilla", "guided", "smoothgrad", "integrated", "guided-gradcam"])
def test_method_matches_pytorch(method, results, reference, followed):
    result = results[method]
    assert result.method == method
    assert result.attributions.shape[1:] == (224, 224, 3) and result.attributions.dtype == np.float32
    assert result.maps.shape[1:] == (224, 224)
    expected, margin = followed[method]
    assert margin < MARGIN, (method, margin)
    got = result.attributions[0].astype(np.float64)
    err = rel_err(got, expected)
    assert err < FORCED_TOLERANCE, (method, err)
    if method != "integrated":  # exact ties at the baseline: no decision is "float64's own" there
        plain = rel_err(got.reshape(-1)[reference["idx"]], reference[f"{method}/plain"])
        assert plain < PLAIN_TOLERANCE, (method, plain)
    assert result.classes[0] == reference["meta"]["class"]
    np.testing.assert_allclose(result.scores[0], reference["meta"]["settings"]["score"], rtol=1e-5)


def test_maps_follow_their_convention(results):
    for method, result in results.items():
        a = result.attributions
        if method == "integrated":
            assert result.signed
            np.testing.assert_allclose(result.maps, a.astype(np.float64).sum(axis=-1), rtol=1e-5, atol=1e-6)
        else:
            assert not result.signed
            np.testing.assert_array_equal(result.maps, np.abs(a).max(axis=-1))
    gg = results["guided-gradcam"]
    assert gg.heatmaps.shape == (1, 14, 14) and gg.heatmaps.max() == 1.0


def test_integrated_gradients_baseline_and_scores(results, reference, followed):
    ig = results["integrated"]
    info = reference["meta"]["cases"]["integrated"]
    np.testing.assert_allclose(ig.baseline_scores[0], info["baseline_score"], rtol=1e-4)
    np.testing.assert_allclose(ig.scores[0] - ig.baseline_scores[0], info["change"], rtol=1e-4)
    np.testing.assert_allclose(ig.totals[0], followed["integrated"][0].sum(), rtol=TOLERANCE)
    np.testing.assert_array_equal(black_baseline((2, 2, 3))[0, 0], -CAFFE_MEAN_BGR.astype(np.float32))


# ---------------------------------------------------------------------------- batch contract


def test_batched_equals_one_at_a_time(vgg16, image, results):
    batch = results["vanilla"]
    assert batch.classes.tolist()[1] == 386  # two images, two classes, one pass
    alone = results["guided"]  # the same image alone through another method: same class & score
    assert alone.classes[0] == batch.classes[0]
    np.testing.assert_allclose(alone.scores[0], batch.scores[0], rtol=1e-6)
    one = vanilla_gradient(vgg16, image, batch=1)
    # the same bits: no kernel lets an image's arithmetic depend on its batch (kernels/cpu/_batch.py)
    np.testing.assert_array_equal(one.attributions[0], batch.attributions[0])


@pytest.fixture(scope="module")
def tiny():
    model = engine.load(TINY)
    x = np.stack([uniform(5, f"tiny{i}", model.input_shape, -1, 1) for i in range(3)])
    return model, x


@pytest.mark.parametrize("method, options", [
    ("vanilla", {}), ("guided", {}), ("smoothgrad", {"samples": 5}),
    ("integrated", {"steps": 7, "baseline": 0.0}), ("guided-gradcam", {"layer": "conv_3x3_valid_linear"}),
])
def test_tiny_batches_equal_single_images(tiny, method, options):
    model, x = tiny
    classes = [0, 1, 2]
    whole = attribute(model, x, method, classes=classes, batch=4, **options)
    for i, k in enumerate(classes):
        one = attribute(model, x[i : i + 1], method, classes=k, batch=1, **options)
        np.testing.assert_allclose(one.attributions[0], whole.attributions[i], rtol=1e-5, atol=1e-7)
        assert one.classes[0] == k


def test_smoothgrad_is_the_mean_of_noisy_gradients(tiny):
    model, x = tiny
    result = smoothgrad(model, x[:1], classes=1, samples=6, noise=0.2, seed=3, batch=4)
    copies = noisy_copies(x[0], range(6), 0.2, 3)
    sigma = 0.2 * (x[0].max() - x[0].min())
    assert abs(np.std(copies - x[0]) / sigma - 1) < 0.1
    each = vanilla_gradient(model, copies, classes=1)
    np.testing.assert_allclose(result.attributions[0], each.attributions.mean(axis=0), rtol=1e-5, atol=1e-7)
    again = smoothgrad(model, x[:1], classes=1, samples=6, noise=0.2, seed=3, batch=6)
    np.testing.assert_array_equal(again.attributions, result.attributions)
    other = smoothgrad(model, x[:1], classes=1, samples=6, noise=0.2, seed=4)
    assert rel_err(other.attributions, result.attributions) > 1e-3


def test_integrated_gradients_completeness(tiny):
    model, x = tiny
    result = integrated_gradients(model, x, steps=64, rule="gausslegendre", baseline=0.0)
    assert result.completeness_error.max() < 1e-4
    result = integrated_gradients(model, x + 0.01, steps=200, baseline=0.0, batch=64)
    assert result.completeness_error.max() < 0.01  # the trapezoid rule, the default


def test_quadrature_rules():
    for rule in ("trapezoid", "left", "right", "middle", "gausslegendre"):
        alphas, weights = quadrature(10, rule)
        assert len(alphas) == 10 and abs(weights.sum() - 1) < 1e-12
        assert abs((weights * alphas**2).sum() - 1 / 3) < 0.06  # right/left sums: O(1/n)
    alphas, weights = quadrature(5)
    np.testing.assert_allclose(alphas, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(weights, [0.125, 0.25, 0.25, 0.25, 0.125])
    with pytest.raises(ConvscopeError, match="unknown integration rule"):
        quadrature(5, "simpson")
    with pytest.raises(ConvscopeError, match="at least 2"):
        quadrature(1)


def test_bad_requests(tiny):
    model, x = tiny
    with pytest.raises(ConvscopeError, match="unknown attribution method"):
        attribute(model, x, "deconvnet")
    with pytest.raises(ConvscopeError, match="out of range"):
        attribute(model, x, "vanilla", classes=99)
    with pytest.raises(ConvscopeError, match="at least 1"):
        attribute(model, x, "smoothgrad", samples=0)
    with pytest.raises(ConvscopeError, match="at least 1"):
        attribute(model, x, "vanilla", batch=0)
    with pytest.raises(ConvscopeError, match="does not fit"):
        attribute(model, x, "integrated", baseline=np.zeros((2, 2)))


# ---------------------------------------------------------------------------- pictures


def test_pictures():
    values = np.linspace(0, 1, 101).reshape(1, 101)
    gray = gray_picture(values)
    assert gray.dtype == np.uint8 and gray[0, 0] == 0 and gray[0, -2:].tolist() == [255, 255]
    assert gray_picture(np.zeros((3, 3))).max() == 0  # no division by zero
    signed = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0]])
    rgb = diverging_picture(signed, scale=1.0)
    assert rgb.shape == (1, 5, 3)
    assert rgb[0, 0].tolist() == [0, 0, 255] and rgb[0, -1].tolist() == [255, 0, 0]
    assert rgb[0, 2].tolist() == BWR[128].tolist() and min(BWR[128]) > 250  # zero is white
    assert attribution_picture(values, signed=False).shape == (1, 101, 3)


# ---------------------------------------------------------------------------- the command


def run_cli(*args):
    import cli

    return CliRunner().invoke(cli.app, [str(a) for a in args])


@pytest.fixture
def no_user_files(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("CONVSCOPE_CLASS_INDEX", raising=False)


def test_cli_saliency_picture_and_array(vgg16_full_file, shared_data, tmp_path, no_user_files):
    photo = shared_data / "images" / "chelsea.png"
    out, array = tmp_path / "cat.png", tmp_path / "cat.npy"
    result = run_cli("saliency", photo, "--weights", vgg16_full_file, "--out", out, "--save-array", array,
                     "--method", "guided-gradcam", "--class", "386")
    assert result.exit_code == 0, result.output
    assert "class 386" in result.stdout and result.stdout.lstrip().startswith("1.")
    with Image.open(out) as picture:
        assert picture.size == (451, 300) and picture.mode == "RGB"
    raw = np.load(array)
    assert raw.shape == (224, 224, 3) and raw.dtype == np.float32


def test_cli_integrated_reports_completeness(vgg16_full_file, shared_data, tmp_path, no_user_files):
    photo = shared_data / "images" / "chelsea.png"
    out = tmp_path / "ig.png"
    result = run_cli("saliency", photo, "--weights", vgg16_full_file, "--out", out, "--method", "integrated",
                     "--steps", "2", "--batch", "2")
    assert result.exit_code == 0, result.output
    assert "completeness: attributions sum to" in result.stdout and "black image" in result.stdout
    with Image.open(out) as picture:
        assert picture.size == (451, 300)


@pytest.mark.parametrize("args, status, message", [
    (["--class", "1000"], 1, "out of range"),
    (["--class", "tabby"], 1, "no class names"),
    (["--method", "deconv"], 2, "--method"),
    (["--samples", "0", "--method", "smoothgrad"], 1, "at least 1"),
])
def test_cli_saliency_errors(vgg16_full_file, shared_data, tmp_path, no_user_files, args, status, message):
    photo = shared_data / "images" / "chelsea.png"
    result = run_cli("saliency", photo, "--weights", vgg16_full_file, "--out", tmp_path / "x.png", *args)
    assert result.exit_code == status
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "x.png").exists()
