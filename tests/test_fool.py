"""Fooling: the cross-entropy objective's gradient vs finite differences, targeted FGSM against
PyTorch (float64 autograd, ``fixtures/make_fool_reference.py``) on the synthetic VGG16 with
classifier, and the iterative search reaching p >= 0.99 within its steps.

The input is ``uniform(1, "input224_gradcam", ...)``: softmax 0.78 / 0.11 for its top two
classes (not saturated); the target is its second class. VGG16 passes take 10-20 s on a loaded
CPU, so the module runs five in all.
"""

import pathlib

import numpy as np
import pytest

import engine
from engine.errors import ConvscopeError
from engine.viz import objectives
from engine.viz.fool import TargetCrossEntropy, change_size, cross_entropy_gradient, fgsm, fool
from tests.synthetic import uniform
from tests.test_objectives import numeric_gradient
from tests.metrics import FIXTURE_CONV, rel_err

REFERENCE = pathlib.Path(__file__).parent / "fixtures" / "fool_reference.npz"
CROP = (slice(100, 132), slice(100, 132))


def test_cross_entropy_gradient_matches_finite_differences():
    acts = {
        "logits": uniform(31, "z", (3, 6), -4, 4).astype(np.float64),
        "input": uniform(31, "x", (3, 2, 2, 3), -2, 2).astype(np.float64),
    }
    ce = TargetCrossEntropy([1, 5, 0])
    loss, grads = ce(acts)
    p = np.exp(acts["logits"]) / np.exp(acts["logits"]).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(loss, -np.log(p[[0, 1, 2], [1, 5, 0]]), rtol=1e-12)
    np.testing.assert_allclose(ce.probabilities, p, rtol=1e-12)
    np.testing.assert_allclose(grads["logits"], numeric_gradient(ce, acts, "logits"), rtol=1e-6, atol=1e-9)
    both = ce + 0.3 * objectives.l2(center=0.5)
    np.testing.assert_allclose(both(acts)[1]["input"], numeric_gradient(both, acts, "input"), rtol=1e-6, atol=1e-9)


def test_change_size():
    x0 = np.zeros((2, 2, 2, 3), np.float32)
    x1 = x0.copy()
    x1[0, 0, 0] = [3, -4, 0]
    l2, linf = change_size(x0, x1)
    np.testing.assert_allclose(l2, [5, 0]) and np.testing.assert_allclose(linf, [4, 0])


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def vgg16(vgg16_full_file):
    return engine.load(vgg16_full_file, conv=FIXTURE_CONV)


@pytest.fixture(scope="module")
def image():
    return uniform(1, "input224_gradcam", (1, 224, 224, 3), -30, 40)


def test_fgsm_matches_pytorch(vgg16, image, reference):
    target = int(reference["fgsm/target"])
    loss, p, g = cross_entropy_gradient(vgg16, image, target)
    assert float(loss[0]) == pytest.approx(float(reference["fgsm/loss"]), rel=1e-4)
    assert rel_err(p, reference["fgsm/probabilities"]) < 1e-4
    assert rel_err(g[0][CROP], reference["fgsm/crop"]) < 1e-3
    # the FGSM change where the reference gradient is resolved, |g| > 0.05 rms (float32 sums of
    # ~1e5 terms flip the sign of a few dozen values below 0.02 rms)
    resolved = reference["fgsm/resolved"]
    epsilon = 2.0
    ours = -epsilon * np.sign(g)[resolved]
    theirs = -epsilon * reference["fgsm/sign"][resolved].astype(np.float64)
    assert rel_err(ours, theirs) < 1e-3

    result = fgsm(vgg16, image, target, epsilon=epsilon, quantize=False)  # x in -30..40: no clipping at 2 levels
    np.testing.assert_allclose(result.images - image, -epsilon * np.sign(g), atol=1e-5)  # float32 rounding
    assert result.linf[0] == pytest.approx(epsilon)
    assert result.probabilities[0, target] > result.original_probabilities[0, target]


def test_fool_reaches_confidence_within_steps(vgg16, image, reference):
    target = int(reference["fgsm/target"])
    seen = []
    result = fool(vgg16, image, target, confidence=0.99, steps=3, lr=0.25, quantize=False,
                  callback=lambda s, l: seen.append(s))
    assert result.reached[0] and result.probabilities[0, target] >= 0.99
    assert 1 <= result.steps[0] <= 2 and len(seen) == result.steps[0] + 1  # the last pass only measures
    np.testing.assert_allclose(result.original_probabilities, reference["fgsm/probabilities"], rtol=1e-3, atol=1e-6)
    assert result.linf[0] <= 0.25 * result.steps[0] * 1.05  # Adam: about lr per value per step
    assert result.losses.shape == (len(seen), 1) and result.losses[-1, 0] < result.losses[0, 0]


def test_fool_needs_a_classifier(vgg16_notop_file, image):
    with pytest.raises(ConvscopeError, match="classifier"):
        fool(engine.load(vgg16_notop_file), image[:, :32, :32], 3, steps=1)
