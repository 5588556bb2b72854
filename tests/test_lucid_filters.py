"""Lucid's options of ``visualize_filters`` (Fourier / decorrelated images, Adam, robustness,
neuron / direction objectives, diversity) on a tiny network: the target rises, the same seed gives
the same bytes, a picture does not depend on its batch, diversity makes a filter's samples differ,
on the synthetic VGG16 at 16 px. The CUDA backend (simulator) is checked in test_cuda_loops.py."""

import warnings

import numpy as np
import pytest

import engine
from engine.errors import ConvscopeError
from engine.viz import objectives
from engine.viz.filters import visualize_filters
from tests.metrics import rel_err

LUCID = dict(param="fft", decorrelate=True, robust=True, lr=0.05)


LAYER = "block2_conv1"


@pytest.fixture(scope="module")
def model(vgg16_notop_file):
    return engine.load(vgg16_notop_file)


def run(model, layer=LAYER, **options):
    """Three live filters at 16 px (the CUDA test in test_cuda_loops.py calls this on its tiny network)."""
    options = {"filters": [0, 3, 4], "size": 16, "steps": 6, "seed": 3, **options}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the affine transforms' host fallback
        return visualize_filters(model, layer, **options)


def start_value(model, **options):
    """The objective's target at the start images of a run (the same run with no step)."""
    return run(model, **{**options, "steps": 1, "lr": 0.0}).losses


@pytest.mark.parametrize("options", [{**LUCID, "steps": 12}, dict(param="pixel", decorrelate=True), dict(param="fft")])
def test_lucid_pictures_raise_their_target(model, options):
    result = run(model, **options)
    assert result.images.dtype == np.uint8 and result.images.shape == (3, 16, 16, 3)
    assert (result.losses > start_value(model, **options) + 1e-3).all()


def test_same_seed_same_bytes_and_batch_independence(model):
    a, b, c = run(model, **LUCID), run(model, **LUCID), run(model, **LUCID, seed=4)
    assert a.raw.tobytes() == b.raw.tobytes() and a.raw.tobytes() != c.raw.tobytes()
    one = run(model, **LUCID, batch=1)
    assert rel_err(one.raw, a.raw) < 1e-5


def test_neuron_and_direction_objectives(model):
    neuron = run(model, param="fft", decorrelate=True, objective="neuron", filters=[4])  # live at the centre
    assert neuron.losses[0] > 10 * start_value(model, param="fft", decorrelate=True, objective="neuron", filters=[4])[0]
    direction = np.random.default_rng(0).standard_normal(128)
    options = dict(param="fft", decorrelate=True, objective="direction", direction=direction, filters=None, samples=2)
    result = run(model, **options)
    assert result.raw.shape[0] == 2 and list(result.filters) == [0, 1]
    assert (result.losses > start_value(model, **options) + 1e-3).all()
    acts = model.forward(result.raw, outputs=[LAYER])
    np.testing.assert_allclose(objectives.direction(LAYER, direction)(acts)[0], result.losses, rtol=1e-5)
    with pytest.raises(ConvscopeError, match="128 values"):
        run(model, objective="direction", direction=[1.0, 2.0], filters=None)


def test_diversity_makes_samples_differ(model):
    options = dict(param="fft", decorrelate=True, filters=[3], samples=3, steps=8)
    plain, diverse = run(model, **options), run(model, **options, diversity=50.0)
    similarity = lambda result: objectives.diversity(LAYER)(model.forward(result.raw, outputs=[LAYER]))[0].sum()
    assert similarity(diverse) < similarity(plain)
    assert list(diverse.filters) == [3, 3, 3]
