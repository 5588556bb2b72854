"""Objectives' stated gradients vs finite differences; transforms vs their adjoints; the ascent
loop on a small network (batched equals one at a time, the objective rises, stopping rules)."""

import numpy as np
import pytest

from engine.backend import get_backend
from engine.model import Model
from engine.viz import objectives as obj
from engine.viz.optimise import above, nonpositive, optimise
from engine.viz.steps import Ascent
from engine.viz.transforms import Affine, Jitter, Pad, adjoint_all, apply_all, standard_transforms
from tests.synthetic import uniform
from tests.test_model import small_spec


def numeric_gradient(objective, acts, name, eps=1e-6):
    a = acts[name]
    grad = np.zeros_like(a)
    flat, gflat = a.reshape(-1), grad.reshape(-1)
    for j in range(flat.size):
        saved = flat[j]
        flat[j] = saved + eps
        up = objective(acts)[0].astype(np.float64).sum()
        flat[j] = saved - eps
        down = objective(acts)[0].astype(np.float64).sum()
        flat[j] = saved
        gflat[j] = (up - down) / (2 * eps)
    return grad


def acts64():
    return {
        "conv": uniform(11, "conv", (2, 6, 5, 4), -1, 1).astype(np.float64),
        "logits": uniform(11, "logits", (2, 7), -3, 3).astype(np.float64),
        "input": uniform(11, "input", (2, 5, 4, 3), -2, 2).astype(np.float64),
    }


@pytest.mark.parametrize(
    "objective, name",
    [
        (obj.channel("conv", [1, 3]), "conv"),
        (obj.channel("conv", 2, border=1), "conv"),
        (obj.mean_square("conv", border=1), "conv"),
        (obj.dream({"conv": 0.7}, border=2), "conv"),
        (obj.neuron("conv", [1, 3]), "conv"),
        (obj.neuron("conv", 2, y=5, x=0), "conv"),
        (obj.direction("conv", [0.3, -1.0, 0.5, 2.0]), "conv"),
        (obj.direction("conv", [[0.3, -1.0, 0.5, 2.0], [1.0, 0.0, 0.0, 0.0]]), "conv"),
        (obj.diversity("conv"), "conv"),
        (obj.channel("conv", 1) - 10.0 * obj.diversity("conv"), "conv"),
        (obj.class_logit([4, 0]), "logits"),
        (obj.l2(center=uniform(11, "center", (2, 5, 4, 3), -1, 1)), "input"),
        (obj.l2(), "input"),
        (obj.alpha_norm(6), "input"),
        (obj.total_variation(2.0), "input"),
        (obj.total_variation(1.0), "input"),
        (obj.channel("conv", 0) - 0.1 * obj.total_variation() + 2 * obj.l2(), "input"),
        (obj.channel("conv", 0) - 0.1 * obj.total_variation() + 2 * obj.l2(), "conv"),
    ],
)
def test_objective_gradients_match_finite_differences(objective, name):
    acts = acts64()
    loss, grads = objective(acts)
    assert loss.shape == (2,)
    expected = numeric_gradient(objective, acts, name)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(grads[name], expected, rtol=1e-5, atol=1e-7)


def test_lucent_definitions():
    """neuron, direction and diversity as Lucent computes them (NumPy transcriptions)."""
    a = acts64()["conv"]  # (2, 6, 5, 4)
    np.testing.assert_allclose(obj.neuron("conv", [1, 3])({"conv": a})[0], [a[0, 3, 2, 1], a[1, 3, 2, 3]])
    d = np.array([0.3, -1.0, 0.5, 2.0])
    cosine = (a @ d) / (np.linalg.norm(a, axis=3) * np.linalg.norm(d))
    np.testing.assert_allclose(obj.direction("conv", d)({"conv": a})[0], cosine.mean(axis=(1, 2)))
    x = np.concatenate([a, a[:1] * 2.0])  # sample 2's Gram is sample 0's, scaled
    grams = np.einsum("nhwc,nhwd->ncd", x, x)
    grams /= np.linalg.norm(grams.reshape(3, -1), axis=1)[:, None, None]
    lucid = sum((grams[i] * grams[j]).sum() for i in range(3) for j in range(3) if j != i) / 3
    loss = obj.diversity("conv")({"conv": x})[0]
    assert loss.sum() == pytest.approx(lucid) and loss[0] == pytest.approx(loss[2])


def test_channel_loss_is_the_mean_of_each_samples_channel():
    a = acts64()["conv"]
    loss, _ = obj.channel("conv", [1, 3])({"conv": a})
    np.testing.assert_allclose(loss, [a[0, :, :, 1].mean(), a[1, :, :, 3].mean()])


REFERENCE64 = get_backend("reference", np.float64)


@pytest.mark.parametrize("transform", [Jitter(3), Affine((0.9, 1.1), (-7, 12)), Pad(2, 0.0)])
def test_transform_adjoint(transform):
    x = uniform(12, "x", (2, 9, 11, 3), -1, 1).astype(np.float64)
    shape = transform.output_shape(x.shape)
    y = uniform(12, "y", shape, -1, 1).astype(np.float64)
    tx = np.zeros(shape)
    state = transform.apply(REFERENCE64, x, np.random.default_rng(3), tx)
    lhs = np.sum(tx * y)
    rhs = np.sum(x * transform.adjoint(REFERENCE64, y, state, np.zeros_like(x)))
    assert abs(lhs - rhs) < 1e-9 * (abs(lhs) + 1)


def test_composed_transforms_adjoint_and_change_the_image():
    x = uniform(13, "x", (1, 16, 16, 3), -1, 1).astype(np.float64)
    ts = standard_transforms(pad_value=[0.5, -1.0, 2.0], pad_pixels=3, jitter_pixels=2)
    y = uniform(13, "y", (1, 22, 22, 3), -1, 1).astype(np.float64)
    buffers = REFERENCE64.buffers()
    tx, states = apply_all(buffers, ts, x, np.random.default_rng(5))
    tx = tx.copy()  # a buffer of the next apply_all
    assert tx.shape == y.shape and not np.allclose(tx[:, 3:-3, 3:-3], x)
    # the constant border is affine, not linear: the adjoint pairs with T(x) - T(0)
    t0, _ = apply_all(buffers, ts, np.zeros_like(x), np.random.default_rng(5))
    linear = tx - t0
    assert abs(np.sum(linear * y) - np.sum(x * adjoint_all(buffers, ts, y, states))) < 1e-9 * np.abs(linear * y).sum()


def test_pad_is_a_constant_border():
    x = uniform(14, "x", (2, 4, 5, 3), -1, 1).astype(np.float32)
    out = np.zeros((2, 8, 9, 3), np.float32)
    Pad(2, [1.0, 2.0, 3.0]).apply(get_backend("cpu"), x, None, out)
    expected = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    expected[:, :2] = expected[:, -2:] = expected[:, :, :2] = expected[:, :, -2:] = [1.0, 2.0, 3.0]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    "normalize, statistic", [("rms", lambda u: np.sqrt((u**2).mean())), ("mean_abs", lambda u: np.abs(u).mean())]
)
def test_normalised_steps(normalize, statistic):
    """One Ascent step moves each active sample by step_size along its normalised gradient."""
    g = uniform(14, "g", (3, 4, 4, 2), -1, 1).astype(np.float64)
    g[1] *= 100
    x = np.zeros_like(g)
    Ascent(0.5, normalize).update(REFERENCE64.buffers(), x, g, None, np.array([1, 1, 0], np.int32))
    for i in range(2):
        assert statistic(x[i]) == pytest.approx(0.5, rel=1e-4)
    assert not x[2].any()
    x = np.zeros_like(g)
    Ascent(1.0, "mean_abs").update(REFERENCE64.buffers(), x, np.zeros_like(g), None, np.ones(3, np.int32))
    assert not x.any()


def conv_model():
    spec = small_spec()
    spec.layers = spec.layers[:3]  # c1 (valid), c2 (same), p1
    return Model(spec, device="cpu")


def test_batched_ascent_equals_one_at_a_time_and_rises():
    model = conv_model()
    x0 = uniform(15, "x0", (3, 12, 12, 2), -1, 1)
    channels = [0, 1, 2]
    batch = optimise(model, x0, obj.channel("c2", channels), Ascent(0.5), 6)
    assert batch.losses.shape == (6, 3)
    assert (batch.losses[-1] > batch.losses[0]).all()
    for i, c in enumerate(channels):
        one = optimise(model, x0[i : i + 1], obj.channel("c2", c), Ascent(0.5), 6)
        np.testing.assert_allclose(one.images[0], batch.images[i], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(one.losses[:, 0], batch.losses[:, i], rtol=1e-5)


def test_same_seed_same_bytes_with_transforms():
    model = conv_model()
    x0 = uniform(16, "x0", (2, 12, 12, 2), -1, 1)
    run = lambda seed: optimise(
        model, x0, obj.channel("c2", 1), Ascent(), 3, transforms=[Jitter(2), Affine((0.9, 1.1), (-5, 5))], seed=seed
    ).images
    assert run(4).tobytes() == run(4).tobytes()
    assert run(4).tobytes() != run(5).tobytes()


def test_stopping_rules():
    model = conv_model()
    x0 = uniform(17, "x0", (2, 12, 12, 2), -1, 1)
    objective = obj.channel("c2", [0, 1])
    loss0 = optimise(model, x0, objective, Ascent(), 1).losses[0]
    # a sample above max_loss at the first measurement is never updated
    frozen = optimise(model, x0, objective, Ascent(), 4, stops=[above(float(loss0.min()) - 1e-3)])
    assert not frozen.active.any() and frozen.losses.shape[0] == 1 and not frozen.steps.any()
    np.testing.assert_array_equal(frozen.images, x0)
    # a filter with no positive response (negated objective) stops after its first update
    stuck = optimise(model, x0, -obj.mean_square("c2"), Ascent(), 5, stops=[nonpositive()])
    assert stuck.losses.shape[0] == 1 and not stuck.active.any() and stuck.steps.tolist() == [1, 1]
    assert not np.array_equal(stuck.images, x0)
    # a batch where one sample stops early: its final loss is the one that stopped it
    mixed = optimise(model, x0, obj.channel("c2", [0, 1]) * 1.0, Ascent(), 4, stops=[nonpositive()])
    np.testing.assert_array_equal(mixed.final_loss, mixed.losses[-1])  # neither stopped here
    first = loss0.copy()
    offset = obj.host_term(obj.INPUT, lambda x: (-np.array([first[0] + 1.0, 0.0]), np.zeros_like(x)), "offset")
    mixed = optimise(model, x0, obj.channel("c2", [0, 1]) + offset, Ascent(), 4, stops=[nonpositive()])
    assert mixed.active.tolist() == [False, True] and mixed.losses.shape[0] == 4 and mixed.steps.tolist() == [1, 4]
    assert mixed.losses[0, 0] <= 0 and mixed.final_loss[0] == mixed.losses[0, 0]
    assert mixed.losses[-1, 0] != mixed.losses[0, 0]  # still measured after it stopped (its update applied)
    assert mixed.final_loss[1] == mixed.losses[-1, 1]


def test_objectives_say_which_single_channel_they_read():
    """Objective.channels_read: channel and neuron read one channel per sample; sums keep it where
    every term reading the layer reads the same channels; input terms and scales keep it."""
    n = 3
    assert obj.channel("c2", [0, 2, 1]).channels_read("c2", n).tolist() == [0, 2, 1]
    assert obj.neuron("c2", 1).channels_read("c2", n).tolist() == [1, 1, 1]
    assert obj.channel("c2", 1).channels_read("c1", n) is None
    kept = 2.0 * obj.channel("c2", [0, 2, 1]) - 0.1 * obj.total_variation()
    assert kept.channels_read("c2", n).tolist() == [0, 2, 1]
    assert (obj.channel("c2", 1) + obj.neuron("c2", 1)).channels_read("c2", n).tolist() == [1, 1, 1]
    assert (obj.channel("c2", 1) + obj.channel("c2", 2)).channels_read("c2", n) is None
    assert (obj.channel("c2", 1) + obj.mean_square("c2")).channels_read("c2", n) is None
    assert (obj.mean_square("c1") + obj.channel("c2", 1)).channels_read("c2", n).tolist() == [1, 1, 1]


def test_an_ascent_on_one_channel_matches_the_full_layer_trace(monkeypatch):
    """optimise computes only the read channel of the deepest layer (CPU): the same steps as with
    the whole layer computed, to float32 rounding."""
    model = conv_model()
    x0 = uniform(18, "x0", (3, 12, 12, 2), -1, 1)
    objective = obj.channel("c2", [0, 2, 1]) - 0.01 * obj.total_variation()
    asked = []
    trace = model.trace
    monkeypatch.setattr(model, "trace", lambda *a, **k: asked.append(k.get("channels")) or trace(*a, **k))
    one = optimise(model, x0, objective, Ascent(0.5), 4)
    assert len(asked) == 4 and asked[0].tolist() == [0, 2, 1]
    monkeypatch.setattr(model, "can_select", lambda name: False)
    full = optimise(model, x0, objective, Ascent(0.5), 4)
    assert asked[-1] is None
    np.testing.assert_allclose(one.images, full.images, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one.losses, full.losses, rtol=1e-5)
