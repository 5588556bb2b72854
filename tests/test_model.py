"""The model's wiring: forward through the layer table and backward with injected gradients.

A small network with every layer kind and activation (valid and even-sized 'same' convolutions,
pooling, flatten, dropout, dense with relu/sigmoid/softmax) runs on the NumPy reference backend
in float64, so its input gradients can be checked against central finite differences tightly.
The same network on the CPU backend must match the reference in float32.
"""

import numpy as np
import pytest

from engine.backend import Backend
from engine.errors import ConvscopeError
from engine.model import Model
from engine.spec import LayerSpec, NetworkSpec
from kernels import reference
from tests.synthetic import uniform
from tests.metrics import rel_err


def small_spec(last_activation="softmax"):
    def conv(name, k, cin, cout, padding, activation):
        kernel = uniform(3, name + "k", (k, k, cin, cout), -0.6, 0.6)
        return LayerSpec(name, "conv2d", activation, kernel, uniform(3, name + "b", (cout,), -0.1, 0.1), padding)

    def dense(name, n_in, n_out, activation):
        return LayerSpec(
            name, "dense", activation, uniform(3, name + "k", (n_in, n_out), -0.3, 0.3),
            uniform(3, name + "b", (n_out,), -0.1, 0.1),
        )

    layers = [
        conv("c1", 3, 2, 4, "valid", "relu"),  # 9x8 -> 7x6
        conv("c2", 4, 4, 3, "same", "relu"),  # even kernel, asymmetric 'same' padding
        LayerSpec("p1", "maxpool2d", pool_size=(2, 2)),  # 7x6 -> 3x3 (floor)
        conv("c3", 2, 3, 3, "same", "sigmoid"),
        LayerSpec("flat", "flatten"),
        dense("d1", 27, 6, "relu"),
        LayerSpec("drop", "dropout"),
        dense("out", 6, 4, last_activation),
    ]
    return NetworkSpec(layers, (None, None, 2))


def model64(spec=None):
    return Model(spec or small_spec(), device=Backend("reference", reference, np.float64))


def x_input(n=2):
    return uniform(4, "x", (n, 9, 8, 2), -1, 1).astype(np.float64)


def finite_difference(model, x, layer, g, eps=1e-6):
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for j in range(flat.size):
        saved = flat[j]
        flat[j] = saved + eps
        up = np.sum(model.forward(x, [layer])[layer] * g)
        flat[j] = saved - eps
        down = np.sum(model.forward(x, [layer])[layer] * g)
        flat[j] = saved
        gflat[j] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("layer", ["c1", "c2", "p1", "c3", "flat", "d1", "out", "logits"])
def test_input_gradient_matches_finite_differences(layer):
    model, x = model64(), x_input()
    shape = model.forward(x, [layer])[layer].shape
    g = uniform(5, layer, shape, -1, 1).astype(np.float64)
    analytic = model.input_gradient(x, layer, g)
    assert analytic.shape == x.shape and np.abs(analytic).max() > 0
    assert rel_err(analytic, finite_difference(model, x, layer, g)) < 1e-6


def test_logits_are_the_pre_softmax_scores():
    model, x = model64(), x_input()
    out = model.forward(x, ["logits", "out"])
    expected = reference.softmax_forward(out["logits"], np.empty_like(out["logits"]))
    np.testing.assert_allclose(out["out"], expected, rtol=1e-12)
    assert not np.allclose(out["logits"], out["out"])


def test_logits_of_a_network_without_activation_at_the_end_are_its_last_output():
    """A network that ends in a pooling layer (a 'notop' file): 'logits' is the last output, and a
    gradient injected there flows back like one injected at the layer's own name."""
    spec = small_spec()
    spec.layers = spec.layers[:3]  # c1, c2, p1
    model, x = model64(spec), x_input()
    g = uniform(9, "g", model.forward(x, ["p1"])["p1"].shape, -1, 1)
    by_name = model.input_gradient(x, "p1", g)
    np.testing.assert_array_equal(model.input_gradient(x, "logits", g), by_name)
    assert np.abs(by_name).max() > 0


def test_backward_sums_injections_and_returns_intermediate_gradients():
    model, x = model64(), x_input()
    trace = model.trace(x)
    g_c2 = uniform(6, "g2", trace.output("c2").shape, -1, 1)
    g_d1 = uniform(6, "gd", trace.output("d1").shape, -1, 1)
    both = trace.backward({"c2": g_c2, "d1": g_d1}, wrt=("input", "c2"))
    only_c2 = model.input_gradient(x, "c2", g_c2)
    only_d1 = model.input_gradient(x, "d1", g_d1)
    np.testing.assert_allclose(both["input"], only_c2 + only_d1, rtol=1e-10, atol=1e-12)
    # the gradient at c2's output is g_c2 plus what flows back from d1
    trace = model.trace(x)
    from_d1 = trace.backward({"d1": g_d1}, wrt=("c2",))["c2"]
    np.testing.assert_allclose(both["c2"], from_d1 + g_c2, rtol=1e-10, atol=1e-12)


def test_backward_gradients_live_in_two_arenas_of_the_largest_size():
    """Two flat buffers of the largest gradient serve every layer (not two per shape); a later,
    larger pass grows them, and the results handed out are copies no pass overwrites."""
    model = model64()
    small = model.input_gradient(x_input(1), "c2", uniform(9, "s", (1, 7, 6, 3), -1, 1))
    kept = small.copy()
    x = x_input(3)
    trace = model.trace(x)
    g = uniform(9, "g", trace.output("out").shape, -1, 1)
    grads = trace.backward({"out": g}, wrt=("input", "c2", "p1"))
    arenas = {k: v for k, v in model._workspace.items() if k[0] == "arena"}
    sizes = [int(np.prod(a.shape)) for a in [x] + trace.outputs]
    assert sorted(k[1] for k in arenas) == [0, 1]
    assert all(a.size == max(sizes) for a in arenas.values())
    assert not any(k[0] == "grad" for k in model._workspace)
    np.testing.assert_array_equal(small, kept)
    expected = finite_difference(model, x.copy(), "out", g)
    np.testing.assert_allclose(grads["input"], expected, rtol=1e-6, atol=1e-8)
    again = model.trace(x).backward({"p1": grads["p1"]}, wrt=("c2",))["c2"]
    np.testing.assert_allclose(again, grads["c2"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("relu", ["standard", "guided"])
@pytest.mark.parametrize("inject,wrt", [
    (("out",), ("input",)), (("logits",), ("input",)), (("p1",), ("input",)), (("c1",), ("input",)),
    (("c2", "d1"), ("input", "c2")), (("logits", "c3"), ("input", "p1", "d1")), (("d1",), ("c2",)),
])
def test_a_releasing_backward_gives_the_same_gradients_and_spends_the_trace(inject, wrt, relu):
    model, x = model64(), x_input(3)
    trace = model.trace(x)
    grads = {name: uniform(7, name, trace.output(name).shape, -1, 1) for name in inject}
    kept = trace.backward(grads, relu=relu, wrt=wrt)
    released = model.trace(x).backward(grads, relu=relu, wrt=wrt, release=True)
    assert set(released) == set(wrt)
    for name in wrt:
        np.testing.assert_array_equal(released[name], kept[name])
        assert np.abs(kept[name]).max() > 0
    trace = model.trace(x)
    trace.backward(grads, relu=relu, wrt=wrt, release=True)
    with pytest.raises(RuntimeError, match="released"):
        trace.output("c1")
    with pytest.raises(RuntimeError, match="released"):
        trace.backward(grads, relu=relu, wrt=wrt)


def vgg_like_spec(top=True):
    """Two VGG blocks (conv, conv, pool) and a classifier: channels double as the size halves."""
    def conv(name, cin, cout):
        return LayerSpec(name, "conv2d", "relu", uniform(8, name + "k", (3, 3, cin, cout), -0.4, 0.4),
                         uniform(8, name + "b", (cout,), -0.1, 0.1), "same")

    layers = [conv("b1c1", 3, 4), conv("b1c2", 4, 4), LayerSpec("b1p", "maxpool2d", pool_size=(2, 2)),
              conv("b2c1", 4, 8), conv("b2c2", 8, 8), LayerSpec("b2p", "maxpool2d", pool_size=(2, 2)),
              LayerSpec("flat", "flatten"),
              LayerSpec("fc", "dense", "softmax", uniform(8, "fk", (32, 5), -0.3, 0.3), uniform(8, "fb", (5,), -0.1, 0.1))]
    return NetworkSpec(layers if top else layers[:6], (None, None, 3))


@pytest.mark.parametrize("top", [False, True])
def test_a_releasing_backward_through_vgg_blocks_needs_one_arena_of_the_largest_pool_input(top):
    """Each convolution's input gradient goes into a dead output (its own, once its ReLU backward
    has read it); only a max-pool's, 4x its output, needs an arena: one, of the largest gradient
    (with a classifier, whose gradient sits in one arena when the last pool's needs another, two,
    as a non-releasing pass always has)."""
    model, x = model64(vgg_like_spec(top)), uniform(9, "x", (2, 8, 8, 3), -1, 1).astype(np.float64)
    g = uniform(9, "g", (2, 5) if top else (2, 2, 2, 8), -1, 1)
    released = model.input_gradient(x, "logits", g)
    arenas = {k[1]: a.size for k, a in model._workspace.items() if k[0] == "arena"}
    pool_input = 2 * 8 * 8 * 4  # b1c2's output
    assert arenas == ({0: pool_input, 1: pool_input} if top else {0: pool_input})
    trace = model.trace(x)
    kept = trace.backward({"logits": g})["input"]
    np.testing.assert_array_equal(released, kept)
    assert np.abs(kept).max() > 0
    arenas = {k[1]: a.size for k, a in model._workspace.items() if k[0] == "arena"}
    assert arenas == {0: 2 * 8 * 8 * 4, 1: 2 * 8 * 8 * 4}


def test_layer_buffers_are_one_per_role_and_layer_whatever_the_input_size():
    """Traces at three input sizes (as DeepDream's octaves) share one buffer per role and layer,
    grown to the largest size, and every size still gives the results of a fresh model."""
    spec = small_spec()
    spec.layers = spec.layers[:4]  # the convolutional part: any size from 4x4 up
    model = model64(spec)
    sizes = [(9, 8), (16, 14), (6, 7)]
    results = []
    for h, w in sizes:
        x = uniform(5, f"x{h}", (2, h, w, 2), -1, 1).astype(np.float64)
        trace = model.trace(x)
        g = uniform(5, f"g{h}", trace.output(spec.layers[-1].name).shape, -1, 1)
        results.append((x, g, trace.output(spec.layers[-1].name).copy(),
                        trace.backward({spec.layers[-1].name: g})["input"]))
    buffers = {k: v for k, v in model._workspace.items() if k[0] != "arena"}
    assert len(buffers) == len({k[:2] for k in buffers})  # one per (role, layer), not per size
    outputs_at_largest = model64(spec).trace(results[1][0]).outputs
    for (role, i, _), flat in buffers.items():
        if role == "out":
            assert flat.size == outputs_at_largest[i].size
    for x, g, out, grad in results:
        fresh = model64(spec).trace(x)
        np.testing.assert_array_equal(out, fresh.output(spec.layers[-1].name))
        np.testing.assert_array_equal(grad, fresh.backward({spec.layers[-1].name: g})["input"])


def test_guided_mode_differs_and_matches_its_definition_on_one_relu():
    spec = small_spec()
    spec.layers = spec.layers[:1]  # one conv + relu: guided = relu'(y) * max(g, 0) pulled back
    model, x = model64(spec), x_input()
    y = model.forward(x, ["c1"])["c1"]
    g = uniform(7, "g", y.shape, -1, 1).astype(np.float64)
    guided = model.input_gradient(x, "c1", g, relu="guided")
    expected = model.input_gradient(x, "c1", np.where(g > 0, g, 0.0))
    np.testing.assert_allclose(guided, expected, rtol=1e-12)
    assert rel_err(guided, model.input_gradient(x, "c1", g)) > 0.1


def test_cpu_backend_matches_reference():
    x = x_input(3)
    ref, cpu = model64(), Model(small_spec(), device="cpu")
    for layer in ["c2", "p1", "logits", "out"]:
        a = cpu.forward(x, [layer])[layer]
        b = ref.forward(x, [layer])[layer]
        assert a.dtype == np.float32 and rel_err(a, b) < 1e-5
        g = uniform(8, layer, b.shape, -1, 1)
        assert rel_err(cpu.input_gradient(x, layer, g), ref.input_gradient(x, layer, g)) < 1e-5


def test_forward_returns_copies_that_survive_later_passes():
    model, x = model64(), x_input()
    first = model.forward(x, ["c2"])["c2"]
    kept = first.copy()
    model.forward(2 * x, ["c2"])
    np.testing.assert_array_equal(first, kept)


def test_stale_trace_is_refused():
    model, x = model64(), x_input()
    old = model.trace(x)
    model.trace(x)
    with pytest.raises(RuntimeError):
        old.output("c1")


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((1, 3, 3, 2)), "too small"),
        (np.zeros((1, 9, 8, 3)), "channels"),
        (np.full((1, 9, 8, 2), np.nan), "NaN"),
        (np.zeros((1, 12, 12, 2)), "features"),
    ],
)
def test_bad_inputs_get_one_line_errors(bad, message):
    with pytest.raises(ConvscopeError, match=message) as info:
        model64().forward(bad)
    assert "\n" not in str(info.value)


def test_unknown_layer_and_gradient_shape_errors():
    model, x = model64(), x_input()
    with pytest.raises(ConvscopeError, match="unknown layer 'nope'"):
        model.forward(x, ["nope"])
    with pytest.raises(ConvscopeError, match="shape"):
        model.input_gradient(x, "c1", np.zeros((1, 2, 3, 4)))
    with pytest.raises(ConvscopeError, match="ReLU backward mode"):
        model.input_gradient(x, "c1", np.zeros((2, 7, 6, 4)), relu="magic")


def test_summary_and_minimum_size():
    model = model64()
    rows = model.summary_rows((9, 8))
    assert [r[2] for r in rows] == [(7, 6, 4), (7, 6, 3), (3, 3, 3), (3, 3, 3), (27,), (6,), (6,), (4,)]
    assert rows[0][3] == 3 * 3 * 2 * 4 + 4
    text = model.summary((9, 8))  # a printable table, as Keras' model.summary()
    assert isinstance(text, str) and len(text.splitlines()) == len(rows) + 2
    assert "7x6x4" in text.splitlines()[1] and f"total: {model.n_params:,} parameters" in text
    assert model.min_input_size() == 4  # valid 3x3 -> 2x2 -> pool -> 1x1
    spec = small_spec()
    spec.layers = spec.layers[:4]  # the convolutional part takes any size from 4x4 up
    conv_part = model64(spec)
    assert conv_part.output_shapes((4, 4))[2] == (1, 1, 3)
    with pytest.raises(ConvscopeError, match="at least 4x4"):
        conv_part.output_shapes((3, 4))


KERAS_MODELS = sorted((__import__("pathlib").Path(__file__).parent / "fixtures" / "keras_models").glob("*.h5"))


@pytest.mark.parametrize("path", KERAS_MODELS, ids=lambda p: p.stem)
def test_engine_matches_keras3_on_real_model_save_files(path):
    """Tiny CNNs saved by real Keras 3 (even kernels, valid/same, channels_first, sigmoid, a
    Functional chain) and Keras' own predictions, stored by fixtures/keras_models/make_keras_models.py."""
    import engine

    expected = np.load(path.with_suffix(".npz"))
    model = engine.load(path)
    assert rel_err(model.forward(expected["x"])[model.layer_names[-1]], expected["y"]) < 1e-5


def test_auto_device_never_picks_the_cuda_simulator(monkeypatch):
    from engine.backend import get_backend

    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    assert get_backend("auto").name == "cpu"
    with pytest.raises(ConvscopeError, match="unknown device"):
        get_backend("tpu")


def test_cuda_backend_matches_reference():
    """The whole model (forward, injected backward, guided mode) on the CUDA backend; under the
    CUDA simulator in CI (tests/conftest.py), on a GPU with CONVSCOPE_REAL_CUDA=1."""
    from engine.backend import cuda_status

    usable, reason = cuda_status()
    if not usable:
        pytest.skip(reason)
    x = x_input(2)
    ref, gpu = model64(), Model(small_spec(), device="cuda")
    for layer in ["p1", "logits", "out"]:
        b = ref.forward(x, [layer])[layer]
        assert rel_err(gpu.forward(x, [layer])[layer], b) < 1e-5
    g = uniform(8, "gpu", b.shape, -1, 1)
    for relu in ["standard", "guided"]:
        assert rel_err(gpu.input_gradient(x, "out", g, relu=relu), ref.input_gradient(x, "out", g, relu=relu)) < 1e-5
    trace = gpu.trace(x)
    g_c2 = uniform(6, "g2", trace.output("c2").shape, -1, 1)
    both = trace.backward({"c2": g_c2, "d1": uniform(6, "gd", (2, 6), -1, 1)}, wrt=("input", "c2"))
    expected = ref.trace(x).backward({"c2": g_c2, "d1": uniform(6, "gd", (2, 6), -1, 1)}, wrt=("input", "c2"))
    for name in ("input", "c2"):
        assert rel_err(gpu.backend.to_host(both[name]), expected[name]) < 1e-5


def test_passes_that_stop_early_take_any_size_and_skip_unneeded_backward(monkeypatch):
    model = model64()
    x = uniform(9, "x", (1, 12, 12, 2), -1, 1)  # too big for the dense layers, fine for c1..c3
    acts = model.forward(x, ["c2"])["c2"]
    assert acts.shape == (1, 12 - 2, 12 - 2, 3)
    with pytest.raises(ConvscopeError, match="features"):
        model.forward(x)
    # a gradient asked only at c3 never runs the backward of the layers below it
    calls = []
    ops = model.backend.ops

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(ops, name)

    x = x_input()
    trace = model.trace(x)
    monkeypatch.setattr(model.backend, "ops", Spy())
    g = trace.backward({"out": uniform(9, "g", (2, 4), -1, 1)}, wrt=("c3",))["c3"]
    assert g.shape == trace.output("c3").shape and np.abs(g).max() > 0
    assert "conv2d_backward_input" not in calls and "maxpool_backward" not in calls


def test_conv_auto_takes_winograd_gemm_never_and_both_agree_within_1e4(vgg16_notop_file, monkeypatch):
    import engine
    from kernels.cpu import conv

    x = uniform(21, "fast", (1, 48, 48, 3), -120, 150)
    g = uniform(22, "fast_g", (1, 12, 12, 256), -1, 1)
    auto, gemm = engine.load(vgg16_notop_file), engine.load(vgg16_notop_file, conv="gemm")
    assert not auto._params[1][0].flags.writeable  # frozen: Winograd caches its transform
    results = {}
    for name, model in (("auto", auto), ("gemm", gemm)):
        chosen = []
        original = conv.choose_algorithm
        monkeypatch.setattr(conv, "choose_algorithm", lambda *a, **k: chosen.append(original(*a, **k)) or chosen[-1])
        out = model.forward(x, ["block3_conv3"])["block3_conv3"]
        grad = model.input_gradient(x, "block3_conv3", g)
        monkeypatch.setattr(conv, "choose_algorithm", original)
        used = {algorithm.__name__ for algorithm in chosen}
        results[name] = (out, grad, used)
    assert "conv_winograd" in results["auto"][2]
    assert results["gemm"][2] == {"conv_im2col_gemm"}
    assert rel_err(results["auto"][0], results["gemm"][0]) < 1e-4
    assert rel_err(results["auto"][1], results["gemm"][1]) < 1e-4


def test_unknown_conv_algorithm_is_one_clear_error(vgg16_notop_file, monkeypatch):
    import engine

    with pytest.raises(ConvscopeError, match="unknown convolution algorithm 'fastest'"):
        engine.load(vgg16_notop_file, conv="fastest")
    monkeypatch.setenv("CONVSCOPE_CONV", "gemm")
    assert engine.load(vgg16_notop_file).conv == "gemm"


@pytest.mark.parametrize("layer", ["c1", "c2"])
def test_a_trace_of_one_channel_per_sample_matches_the_full_layer(layer):
    """trace(channels=): the last conv layer computes each sample's channel alone (others read
    zero), and a backward injected in those channels gives the full trace's input gradient."""
    x = x_input(3)
    cpu = Model(small_spec(), device="cpu")
    channels = np.array([2, 0, 2])
    full = cpu.trace(x, upto=layer).output(layer).copy()
    g = uniform(9, layer, full.shape, -1, 1)
    only = np.zeros_like(g)
    only[np.arange(3), :, :, channels] = g[np.arange(3), :, :, channels]
    expected = cpu.trace(x, upto=layer).backward({layer: only})["input"]
    trace = cpu.trace(x, upto=layer, channels=channels)
    out = trace.output(layer)
    picked = np.zeros_like(full)
    picked[np.arange(3), :, :, channels] = full[np.arange(3), :, :, channels]
    assert rel_err(out, picked) < 1e-6 and not out[0, :, :, 1].any()
    got = trace.backward({layer: only})["input"]
    reference64 = model64().trace(x, upto=layer).backward({layer: only.astype(np.float64)})["input"]
    assert rel_err(got, reference64) < 1e-5 and rel_err(got, expected) < 1e-5


def test_one_channel_traces_are_refused_where_they_cannot_be_computed():
    cpu = Model(small_spec(), device="cpu")
    with pytest.raises(ValueError, match="cannot be computed alone"):
        cpu.trace(x_input(2), upto="p1", channels=[0, 1])  # not a conv layer
    with pytest.raises(ValueError, match="cannot be computed alone"):
        cpu.trace(x_input(2), upto="c2", channels=[0])  # not one per sample
    with pytest.raises(ValueError, match="channels 0 to 2"):
        cpu.trace(x_input(2), upto="c2", channels=[0, 3])
    assert not model64().can_select("c2") and cpu.can_select("c2") and not cpu.can_select("p1")


@pytest.mark.parametrize("relu", ["standard", "guided", "deconv"])
def test_relu_backward_at_the_pooled_resolution_gives_the_same_bits(relu, monkeypatch):
    """A ReLU under a max-pool takes its backward on the pooled gradient (the winners' values are
    the pooled ones): the same bits as at full resolution, and not where a gradient is injected
    at the conv or asked of it."""
    from engine.model import Trace

    x = x_input(3)
    cpu = Model(small_spec(), device="cpu")
    g = uniform(10, "g", cpu.trace(x, upto="c3").output("c3").shape, -1, 1)
    g2 = uniform(11, "g2", cpu.trace(x, upto="c2").output("c2").shape, -1, 1)
    fused = []
    real = Trace._relu_at_pool

    def spy(self, *args):
        fused.append(real(self, *args))
        return fused[-1]

    monkeypatch.setattr(Trace, "_relu_at_pool", spy)
    cases = [({"c3": g}, ("input",)), ({"c3": g, "c2": g2}, ("input",)), ({"c3": g}, ("input", "c2"))]
    got = [cpu.trace(x, upto="c3").backward(inject, relu=relu, wrt=wrt) for inject, wrt in cases]
    assert fused.count(True) == 1  # the first case only
    monkeypatch.setattr(Trace, "_relu_at_pool", lambda self, *args: False)
    for (inject, wrt), result in zip(cases, got):
        expected = cpu.trace(x, upto="c3").backward(inject, relu=relu, wrt=wrt)
        for name in wrt:
            np.testing.assert_array_equal(result[name], expected[name])
