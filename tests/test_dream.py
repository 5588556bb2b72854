"""DeepDream: equals the Keras algorithm computed in PyTorch (tests/fixtures/dream_reference.npz,
made by tests/fixtures/make_dream_reference.py) on the synthetic VGG16 conv stack; the loss rises;
the dream keeps the photo's size; tiled gradients equal whole-image ones; same seed, same bytes."""

import pathlib

import numpy as np
import pytest

import engine
from engine.errors import ConvscopeError
from engine.viz.dream import deep_dream, dream_gradient, dream_objective, octave_shapes
from engine.viz.objectives import INPUT
from kernels.reference import resize_bilinear
from tests.fixtures.make_dream_reference import DREAM, dream_start
from tests.synthetic import uniform
from tests.metrics import FIXTURE_CONV, rel_err

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "dream_reference.npz"


@pytest.fixture(scope="module")
def model(vgg16_notop_file):
    return engine.load(vgg16_notop_file, conv=FIXTURE_CONV)


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURE)


@pytest.fixture(scope="module")
def dreamed(model):
    args = {k: DREAM[k] for k in ("layers", "octaves", "octave_scale", "steps", "step_size")}
    return deep_dream(model, dream_start(), **args)


def test_matches_the_keras_algorithm(dreamed, reference):
    assert rel_err(dreamed.images, reference["dream_image"]) < 1e-3
    np.testing.assert_allclose(np.concatenate(dreamed.losses)[:, 0], reference["dream_losses"].reshape(-1), rtol=1e-3)


def test_max_loss_stops_each_octave_as_keras(model, reference):
    args = {k: DREAM[k] for k in ("layers", "octaves", "octave_scale", "steps", "step_size")}
    result = deep_dream(model, dream_start(), max_loss=float(reference["dream_max_loss"]), **args)
    assert [len(l) for l in result.losses] == reference["dream_max_loss_steps"].tolist()
    assert rel_err(result.images, reference["dream_max_loss_image"]) < 1e-3


def test_loss_rises_and_the_dream_keeps_the_photo_size(dreamed):
    start = dream_start()
    assert dreamed.images.shape == start.shape
    assert dreamed.shapes == octave_shapes(start.shape[1:3], 3, 1.4) and dreamed.shapes[-1] == start.shape[1:3]
    for losses in dreamed.losses:
        assert losses[-1, 0] > losses[0, 0]
    assert rel_err(dreamed.images, start) > 0.05


def test_resize_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    from tests.fixtures.make_dream_reference import resize

    x = uniform(5, "resize", (2, 17, 23, 3), -100, 100)
    for shape in [(9, 12), (31, 40), (17, 23)]:
        out = resize_bilinear(x, np.zeros((2, *shape, 3), np.float32))
        np.testing.assert_allclose(out, resize(torch.tensor(x), shape).numpy(), atol=1e-3)


LAYERS = {"block2_conv2": 0.3, "block3_conv3": 1.0}


def test_tiled_gradient_equals_the_whole_image_gradient(model):
    x = uniform(6, "tiles", (1, 80, 72, 3), -80, 80)
    loss, grad = dream_gradient(model, x, LAYERS, tile=1000)
    for tile in (20, 40):  # 20 is rounded down to the pooling grid (16)
        loss_t, grad_t = dream_gradient(model, x, LAYERS, tile=tile)
        np.testing.assert_allclose(loss_t, loss, rtol=1e-5)
        assert rel_err(grad_t, grad) < 1e-5


def test_tiled_gradient_with_the_roll_undone(model):
    x = uniform(6, "tiles", (1, 80, 72, 3), -80, 80)
    untiled = dream_objective(model, LAYERS, tile=1000, roll=30, seed=4)
    tiled = dream_objective(model, LAYERS, tile=16, roll=30, seed=4)
    loss, grads = untiled({INPUT: x})
    loss_t, grads_t = tiled({INPUT: x})
    np.testing.assert_allclose(loss_t, loss, rtol=1e-5)
    assert rel_err(grads_t[INPUT], grads[INPUT]) < 1e-5
    # the roll moved the image: it is not the unrolled gradient
    assert rel_err(grads[INPUT], dream_gradient(model, x, LAYERS, tile=1000)[1]) > 1e-2


def test_same_seed_same_bytes(model):
    x = uniform(8, "seed", (1, 64, 56, 3), -80, 80)
    layers = {"block2_conv2": 1.0, "block3_conv1": 0.5}
    run = lambda seed: deep_dream(model, x, layers, octaves=2, steps=2, roll=8, seed=seed).images
    first = run(3)
    assert first.tobytes() == run(3).tobytes()
    assert first.tobytes() != run(4).tobytes()  # the roll follows the seed


def test_bad_requests_are_one_line_errors(model):
    x = uniform(8, "seed", (1, 64, 56, 3), -80, 80)
    with pytest.raises(ConvscopeError, match="fewer octaves"):
        deep_dream(model, x, {"block4_conv1": 1.0}, octaves=4)
    with pytest.raises(ConvscopeError, match="unknown layer"):
        deep_dream(model, x, {"block9_conv1": 1.0})
    with pytest.raises(ConvscopeError):
        deep_dream(model, x, LAYERS, octaves=0)
