"""Class models: equal PyTorch's ascent on the synthetic full VGG16 (tests/fixtures/dream_reference.npz,
made by tests/fixtures/make_dream_reference.py), raise the class probability, batch several classes;
regularisers and seeds on a tiny classifier; out-of-range classes are one-line errors."""

import pathlib

import numpy as np
import pytest

import engine
from engine.errors import ConvscopeError
from engine.model import Model
from engine.viz.classmax import class_model, gaussian_blur
from tests.fixtures.make_dream_reference import CLASSMAX, SUBSAMPLE, classmax_start
from tests.test_model import small_spec
from tests.metrics import FIXTURE_CONV, rel_err

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "dream_reference.npz"


@pytest.fixture(scope="module")
def vgg16(vgg16_full_file):
    return engine.load(vgg16_full_file, conv=FIXTURE_CONV)


def test_matches_pytorch_and_raises_the_class_probability(vgg16, vgg16_full_file):
    """Every step against PyTorch (float32) following the engine's own ReLU masks and pool winners
    at the engine's image (which way a near tie falls depends on the CPU), and the whole run loosely
    against the float64 trajectory, which takes its own decisions."""
    torch = pytest.importorskip("torch")
    from tests.reference_models import TorchVGG16, forced_gradients

    ref = np.load(FIXTURE)
    c = CLASSMAX
    start = classmax_start()
    settings = dict(step_size=c["step_size"], l2_decay=c["l2_decay"], blur_every=0, jitter=0)
    result = class_model(vgg16, c["classes"], steps=c["steps"], init=start, **settings)
    assert result.images.shape == start.shape
    tm = TorchVGG16(vgg16_full_file, include_top=True, dtype=torch.float32)
    onehot = np.eye(1000)[c["classes"]]
    images = [start]
    for _ in range(c["steps"]):  # a step depends only on the image before it
        images.append(class_model(vgg16, c["classes"], steps=1, init=images[-1], **settings).images)
        x = images[-2].astype(np.float64)
        g, margin = forced_gradients(vgg16, tm, images[-2], "logits", onehot)
        assert margin < 1e-4  # the engine decides otherwise than PyTorch only at near ties
        rms = np.sqrt(np.square(g.astype(np.float64)).mean(axis=(1, 2, 3), keepdims=True)) + 1e-5
        taken = images[-1] / (1.0 - c["l2_decay"]) - x
        assert rel_err(taken, c["step_size"] * g / rms) < 1e-4
    np.testing.assert_array_equal(result.images, images[-1])
    # float64 deciding its own near ties: one flip moves a step by up to ~1e-2
    assert rel_err(result.images[:, ::SUBSAMPLE, ::SUBSAMPLE], ref["classmax_image_sub"]) < 5e-2
    np.testing.assert_allclose(result.losses, ref["classmax_losses"], rtol=1e-3, atol=1e-3)
    with torch.no_grad():
        expected = tm(torch.tensor(result.images))["predictions"].numpy()
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-4, atol=1e-9)
    assert np.all(np.diff(result.losses, axis=0) > 0)  # each class's logit rises step by step
    before = vgg16.predict(start)[np.arange(2), c["classes"]]
    assert np.all(result.class_probability > before)
    assert result.top(3).shape == (2, 3)


def test_out_of_range_classes_and_notop_files_are_errors(vgg16, vgg16_notop_file):
    for bad in (1000, -1, [65, 1000]):
        with pytest.raises(ConvscopeError, match="out of range"):
            class_model(vgg16, bad, steps=1)
    with pytest.raises(ConvscopeError, match="classifier"):
        class_model(engine.load(vgg16_notop_file), 65, steps=1)
    with pytest.raises(ConvscopeError, match="224x224"):
        class_model(vgg16, 65, size=128, steps=1)


@pytest.fixture(scope="module")
def tiny():
    return Model(small_spec(), device="cpu")  # 9x8x2 input, 4 classes


def test_regularised_runs_raise_the_probability_and_repeat_bytes(tiny):
    kwargs = dict(size=(9, 8), steps=12, step_size=0.2, l2_decay=0.01, blur_every=3, blur_sigma=0.5,
                  jitter=1, clip_norm=5, clip_contribution=5, noise=0.5)
    first = class_model(tiny, [0, 1, 2, 3], seed=5, score="probability", **kwargs)
    again = class_model(tiny, [0, 1, 2, 3], seed=5, score="probability", **kwargs)
    other = class_model(tiny, [0, 1, 2, 3], seed=6, score="probability", **kwargs)
    assert first.images.tobytes() == again.images.tobytes()
    assert first.images.tobytes() != other.images.tobytes()
    assert first.losses.shape == (12, 4)
    start = np.random.default_rng(5).uniform(-0.5, 0.5, (4, 9, 8, 2)).astype(np.float32)
    assert np.mean(first.class_probability > tiny.predict(start)[np.arange(4), np.arange(4)]) >= 0.75


def test_batched_equals_one_class_at_a_time(tiny):
    kwargs = dict(size=(9, 8), steps=6, step_size=0.2, blur_every=2, jitter=0, noise=0.5)
    start = np.random.default_rng(1).uniform(-0.5, 0.5, (3, 9, 8, 2)).astype(np.float32)
    batch = class_model(tiny, [2, 0, 3], init=start, **kwargs)
    for i, k in enumerate([2, 0, 3]):
        alone = class_model(tiny, k, init=start[i : i + 1], **kwargs)
        np.testing.assert_allclose(alone.images[0], batch.images[i], rtol=1e-5, atol=1e-6)


def test_gaussian_blur_keeps_constants_and_mass():
    x = np.full((1, 7, 6, 3), 5.0, np.float32)
    np.testing.assert_allclose(gaussian_blur(x, 1.0), x, rtol=1e-6)
    spike = np.zeros((1, 21, 21, 1), np.float32)
    spike[0, 10, 10] = 1
    blurred = gaussian_blur(spike, 1.0)
    assert abs(blurred.sum() - 1) < 1e-5 and blurred[0, 10, 10, 0] < 0.2


def test_lucid_recipe_raises_the_class_score_and_repeats_bytes():
    """fft + decorrelated colour + robust transforms with Adam on a 3-channel tiny classifier."""
    from engine.spec import LayerSpec
    from tests.synthetic import uniform

    spec = small_spec()
    c1 = spec.layers[0]
    spec.layers[0] = LayerSpec("c1", "conv2d", "relu", uniform(4, "c1k", (3, 3, 3, 4), -0.6, 0.6), c1.bias, "valid")
    spec.input_shape = (None, None, 3)
    tiny3 = Model(spec, device="cpu")
    run = lambda seed, robust: class_model(tiny3, [0, 3], size=(9, 8), steps=8, param="fft", decorrelate=True,
                                           robust=robust, seed=seed)
    plain = run(2, False)
    assert plain.losses.shape == (8, 2) and (plain.losses[-1] > plain.losses[0] + 0.03).all()
    # (at 9x8 px, rotations and 8 px jitter are no small moves: robust runs are checked for seeds only)
    first, again, other = run(2, True), run(2, True), run(3, True)
    assert first.images.tobytes() == again.images.tobytes() != other.images.tobytes()
