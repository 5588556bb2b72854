"""The whole VGG16 against PyTorch and Keras 3 on the same synthetic h5 files.

The stored fixture (``tests/fixtures/vgg16_reference.npz``, made by
``tests/fixtures/make_vgg16_reference.py``) holds, for the conv stack at 96x96 (batch 2) and the
full model at 224x224 (batch 1): per-layer outputs at 4096 fixed indices, full block5_pool /
logits / probabilities, and full input gradients (standard and guided ReLU), each from PyTorch
(float64, rounded) and Keras (float32). Every comparison is ||engine - ref|| / ||ref|| < 1e-4.

Input gradients are piecewise linear: where a float32 pre-activation is within rounding of zero
or a max-pool window holds a near tie, a correct float32 engine may decide differently from the
reference and its gradient then moves by ~1e-3..1e-2 (PyTorch float32 itself is 9e-3 from
float64 on the full-model logit gradient, through two block4_pool near ties). The fixture lists
those fragile sites with each reference's decisions. When the engine's gradient misses a stored
one and the engine broke one of those ties differently, the test recomputes (with torch, if
installed) the float64 gradient that follows the engine's own ReLU masks and pool winners and
holds the engine to that; without torch it reports an expected failure naming the sites.

The live test recomputes a small case with PyTorch when torch is installed, checks that every
decision where the engine differs from float64 is a near tie, and compares gradients with PyTorch
following the engine's decisions. No framework is
needed for the stored comparisons.
"""

import json
import pathlib

import numpy as np
import pytest

import engine
from engine.architectures import vgg16_layers
from tests.synthetic import uniform, vgg16_arrays
from tests.metrics import rel_err

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "vgg16_reference.npz"
TOL = 1e-4
SOURCES = ("torch", "keras")
STACK_GRADIENTS = (("block5_pool", "standard"), ("block3_conv1", "standard"), ("block5_conv3", "guided"))
CASES = {
    "stack": dict(include_top=False, input=("input96", (2, 96, 96, 3))),
    "full": dict(include_top=True, input=("input224", (1, 224, 224, 3))),
}


def grad_output(layer, shape):
    return uniform(2, "g_" + layer, shape, 0.0, 1.0)  # as make_vgg16_reference.py draws it


@pytest.fixture(scope="module")
def ref():
    data = np.load(FIXTURE)
    meta = json.loads(str(data["meta"]))
    return data, meta


def case_input(case):
    key, shape = CASES[case]["input"]
    return uniform(1, key, shape, -120, 150)


@pytest.fixture(scope="module")
def stack_model(vgg16_notop_file):
    return engine.load(vgg16_notop_file, device="cpu")


@pytest.fixture(scope="module")
def full_model(vgg16_full_file):
    return engine.load(vgg16_full_file, device="cpu")


@pytest.fixture
def models(request):
    """models(case): the engine model of a case; only the file a test needs gets written."""
    return lambda case: request.getfixturevalue("stack_model" if case == "stack" else "full_model")


@pytest.fixture(scope="module")
def _outputs_cache():
    return {}


@pytest.fixture
def engine_outputs(models, ref, _outputs_cache):
    """engine_outputs(case): every layer's full output from the engine, one forward per case."""

    def get(case):
        if case not in _outputs_cache:
            _, meta = ref
            x = case_input(case)
            _outputs_cache[case] = models(case).forward(x, outputs=meta[case]["layers"])
        return _outputs_cache[case]

    return get


def test_fixture_matches_synthetic_weights(ref):
    """The fixture was made from today's tests/synthetic.py weights and inputs (else regenerate)."""
    _, meta = ref
    arrays = vgg16_arrays(meta["seed"], include_top=True)
    for name, (k_sum, b_sum) in meta["weights_fingerprint"].items():
        kernel, bias = arrays[name]
        assert np.isclose(np.sum(kernel, dtype=np.float64), k_sum, rtol=1e-9, atol=1e-6), name
        assert np.isclose(np.sum(bias, dtype=np.float64), b_sum, rtol=1e-9, atol=1e-9), name
    for case in CASES:
        assert np.sum(case_input(case), dtype=np.float64) == pytest.approx(meta[case]["input_checksum"])


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("case", list(CASES))
def test_layer_outputs(case, source, ref, engine_outputs):
    """Every layer, at the fixture's 4096 fixed indices (all elements of small outputs)."""
    data, meta = ref
    acts = engine_outputs(case)
    errors = {}
    for name in meta[case]["layers"]:
        assert list(acts[name].shape) == meta[case]["output_shapes"][name], name
        assert acts[name].dtype == np.float32, name
        idx = data[f"{case}/idx/{name}"]
        errors[name] = rel_err(acts[name].reshape(-1)[idx], data[f"{case}/{source}/sample/{name}"])
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOL, f"{worst}: {errors[worst]:.2e} vs {source} (all: {errors})"


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(
    "case, name", [("stack", "block5_pool"), ("full", "logits"), ("full", "predictions")]
)
def test_full_outputs(case, name, source, ref, engine_outputs):
    data, _ = ref
    out = engine_outputs(case)[name]
    expected = data[f"{case}/{source}/full/{name}"]
    assert out.shape == expected.shape
    assert rel_err(out, expected) < TOL
    if name == "predictions":
        np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-5)
        assert np.array_equal(np.argmax(out, axis=-1), data["full/top_class"])


def flipped_sites(case, source, upto, ref, acts) -> dict:
    """{layer: sites} where the engine decided unlike `source` (layers up to `upto` only)."""
    data, meta = ref
    table = vgg16_layers(CASES[case]["include_top"])
    order = [t["name"] for t in table]
    last = order.index("predictions" if upto == "logits" else upto)
    flips, previous = {}, None
    for t in table[: last + 1]:
        key = f"{case}/fragile/{t['name']}"
        if f"{key}/sites" in data:
            sites = data[f"{key}/sites"]
            if t["kind"] == "conv2d":
                mine = (acts[t["name"]][tuple(sites.T)] > 0).astype(np.int8)
            else:  # a 2x2 max-pool: the winner of each window of the conv output feeding it
                n, h, w, c = acts[previous].shape
                win = acts[previous][:, : h // 2 * 2, : w // 2 * 2, :]
                win = win.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
                win = win.reshape(n, h // 2, w // 2, c, 4)
                mine = np.argmax(win[tuple(sites.T)], axis=-1).astype(np.int8)
            differ = mine != data[f"{key}/{source}"]
            if differ.any():
                flips[t["name"]] = sites[differ].tolist()
        previous = t["name"]
    return flips


def gradient_cases():
    for layer, mode in STACK_GRADIENTS:
        yield "stack", layer, mode
    yield "full", "logits", "standard"


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("case, layer, mode", list(gradient_cases()))
def test_input_gradient(case, layer, mode, source, ref, models, engine_outputs, request):
    data, meta = ref
    x = case_input(case)
    if layer == "logits":
        g = np.zeros(data["full/torch/full/logits"].shape, dtype=np.float32)
        g[np.arange(len(g)), data["full/top_class"]] = 1.0
    else:
        g = grad_output(layer, meta[case]["output_shapes"][layer])
    dx = models(case).input_gradient(x, layer=layer, grad_output=g, relu=mode)
    expected = data[f"{case}/{source}/input_gradient/{layer}/{mode}"]
    assert dx.shape == x.shape and dx.dtype == np.float32
    err = rel_err(dx, expected)
    if err < TOL:
        return
    acts = engine_outputs(case)
    flips = flipped_sites(case, source, layer, ref, acts)
    if not flips:
        pytest.fail(f"input gradient of {layer} ({mode}) is {err:.2e} from {source} (> {TOL:g})")
    # The engine's float32 forward broke a near tie differently. With torch at hand, recompute
    # the float64 gradient that follows the engine's own ReLU/max-pool decisions, and hold the
    # engine to that; without it, say what happened.
    try:
        import torch
    except ImportError:
        pytest.xfail(
            f"input gradient {err:.2e} from {source}, but the engine's float32 forward decided "
            f"differently at near-tie sites {flips} (install torch to check it against PyTorch "
            "following the engine's decisions)"
        )
    from tests.reference_models import TorchVGG16, decisions_from_outputs

    path = request.getfixturevalue("vgg16_notop_file" if case == "stack" else "vgg16_full_file")
    torch_model = TorchVGG16(path, CASES[case]["include_top"], dtype=torch.float64)
    forced = decisions_from_outputs(torch_model.table, acts)
    followed = torch_model.input_gradient(x, layer, g, mode, forced=forced)
    err_followed = rel_err(dx, followed)
    assert err_followed < TOL, (
        f"{err_followed:.2e} from PyTorch following the engine's decisions "
        f"({err:.2e} from {source}; near ties broken differently at {flips})"
    )


def test_live_pytorch_small_stack(vgg16_notop_file):
    """Recompute with PyTorch (float64) now: conv stack at 64x64, batch 1."""
    pytest.importorskip("torch")
    import torch

    from tests.reference_models import TorchVGG16, decisions_from_outputs, fragile_sites

    x = uniform(5, "live64", (1, 64, 64, 3), -120, 150)
    torch_model = TorchVGG16(vgg16_notop_file, include_top=False, dtype=torch.float64)
    model = engine.load(vgg16_notop_file, device="cpu")
    pre = {}
    expected = torch_model.outputs(x, pre=pre)
    names = torch_model.layer_names
    acts = model.forward(x, outputs=names)
    for name in names:
        assert rel_err(acts[name], expected[name]) < TOL, name

    # Every ReLU / max-pool decision where the engine differs from float64 must be a near tie;
    # the gradients are then compared with PyTorch following the engine's decisions, which is
    # exact whatever way those ties were broken.
    mine = decisions_from_outputs(torch_model.table, acts)
    theirs = decisions_from_outputs(torch_model.table, expected)
    sites = fragile_sites(torch_model.table, pre, expected, tau=1e-4)
    for kind in ("relu", "pool"):
        for name, decided in mine[kind].items():
            differ = np.argwhere(decided != theirs[kind][name])
            if kind == "pool":
                differ = differ[:, [0, 2, 3, 1]]  # NCHW indices -> NHWC like the sites
            near = {tuple(s) for s in sites[name].tolist()}
            if kind == "pool":  # windows that are all zero in float64 hold no gradient anyway
                feed = expected[torch_model.table[[t["name"] for t in torch_model.table].index(name) - 1]["name"]]
                scale = 1e-4 * np.sqrt(np.mean(feed**2))
                differ = differ[expected[name][tuple(differ.T)] > scale]
            assert all(tuple(d) in near for d in differ.tolist()), f"{name}: {differ.tolist()}"
    for layer, mode in (("block5_pool", "standard"), ("block4_conv3", "guided")):
        g = uniform(6, "live_" + layer, expected[layer].shape, 0.0, 1.0)
        dx = model.input_gradient(x, layer=layer, grad_output=g, relu=mode)
        err = rel_err(dx, torch_model.input_gradient(x, layer, g, mode, forced=mine))
        assert err < TOL, f"{layer} {mode}: {err:.2e}"
