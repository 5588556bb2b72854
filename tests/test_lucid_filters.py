"""Lucid's options of ``visualize_filters`` (Fourier / decorrelated images, Adam, robustness,
neuron / direction objectives, diversity) on a tiny network: the target rises, the same seed gives
the same bytes, a picture does not depend on its batch, diversity makes a filter's samples differ,
on the synthetic VGG16 at 16 px. The CUDA backend (simulator) is checked in test_cuda_loops.py."""

import warnings

import numpy as np
import pytest
from PIL import Image

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


def invoke(*args):
    from typer.testing import CliRunner

    import cli

    return CliRunner().invoke(cli.app, [str(a) for a in args])


def test_filters_command_lucid_options_same_seed_same_bytes(vgg16_notop_file, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(photo)
    common = ["filters", "--weights", vgg16_notop_file, "--layer", LAYER, "--size", 16, "--steps", 3,
              "--param", "fft", "--decorrelate", "--robust"]
    runs = {
        "neuron": (4, ["--objective", "neuron", "--filters", "3,4", "--samples", 2, "--diversity", 10]),
        "direction": (2, ["--objective", "direction", "--direction-from", photo, "--samples", 2]),
    }
    for name, (pictures, extra) in runs.items():
        outputs = [tmp_path / f"{name}{i}.png" for i in range(2)]
        for out in outputs:
            result = invoke(*common, *extra, "-o", out)
            assert result.exit_code == 0, result.output
        assert outputs[0].read_bytes() == outputs[1].read_bytes()
        assert Image.open(outputs[0]).size == (pictures * 16 + (pictures - 1) * 5, 16)  # one row
    for extra, message in [
        (["--objective", "direction"], "--direction-from"),
        (["--objective", "direction", "--direction-from", tmp_path / "missing.jpg"], "missing.jpg"),
        (["--param", "wavelet"], "--param wavelet"),
        (["--all", "--filters", "1"], "--all takes none"),
        (["--samples", 2], "needs --filters"),
    ]:
        bad = invoke(*common, *extra, "-o", tmp_path / "bad.png")
        assert bad.exit_code == 1 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "bad.png").exists() and not (tmp_path / "bad.tiles").exists()


def test_filters_all_is_an_atlas_and_resumes(vgg16_notop_file, tmp_path):
    out = tmp_path / "atlas.png"
    args = ["filters", "--weights", vgg16_notop_file, "--layer", "block1_conv2", "--all", "--size", 8,
            "--steps", 2, "--param", "fft", "--decorrelate", "--batch", 16, "-o", out]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert Image.open(out).size == (8 * 8 + 7 * 2,) * 2 and "0 kept" in first.stdout
    atlas, page = out.read_bytes(), out.with_suffix(".html").read_text()
    assert page.count("<figure>") == 64 and "63: " in page
    (folder,) = (tmp_path / "atlas.tiles").iterdir()
    for c in (0, 17, 63):  # as if interrupted before these channels were written
        (folder / f"channel_{c:04d}.npz").unlink()
    again = invoke(*args, "--overwrite")
    assert again.exit_code == 0, again.output
    assert "61 kept" in again.stdout and out.read_bytes() == atlas
    other = invoke(*args[:-2], "--seed", 1, "-o", tmp_path / "other.png")  # other settings: another folder
    assert other.exit_code == 0 and len(list((tmp_path / "other.tiles").iterdir())) == 1


def test_the_loop_with_a_parameterisation_on_the_reference_equals_the_cpu(vgg16_notop_file):
    """The one loop with ``param`` runs on every backend: the NumPy reference gives the CPU's
    result; and the identity parameterisation is the plain loop, to the bit."""
    from engine.viz import param
    from engine.viz.optimise import optimise
    from engine.viz.steps import Adam, Ascent
    from engine.viz.transforms import Jitter

    for name, rule, sign in (("adam", Adam(0.05), -1.0), ("ascent", Ascent(0.01), 1.0)):
        runs = []
        for device in ("cpu", "reference"):
            model = engine.load(vgg16_notop_file, device=device, conv="gemm")
            p = param.image((2, 12, 12), backend=model.backend)
            runs.append(optimise(model, p.initial(seed=1), sign * objectives.channel(LAYER, [3, 4]), rule, 3,
                                 transforms=[Jitter(2)], param=p))
        assert (sign * runs[0].losses[-1] > sign * runs[0].losses[0]).all()  # the channels rise
        assert rel_err(runs[1].images, runs[0].images) < 1e-4  # measured 3e-7 for both rules
        # Adam moves a parameter by ~lr whatever its gradient's size: the spectrum's entries that
        # never reach the image (their exact gradient 0, float rounding on either backend) differ
        # by that much (measured 7e-3 relative); the pictures do not see them (above)
        if name == "ascent":
            assert rel_err(runs[1].params, runs[0].params) < 1e-4  # measured 2e-7
    x = np.random.default_rng(2).uniform(-20, 20, (2, 12, 12, 3)).astype(np.float32)
    plain = optimise(model, x, objectives.channel(LAYER, [3, 4]), Ascent(), 3, transforms=[Jitter(2)])
    identity = param.image((2, 12, 12), backend=model.backend, fft=False, decorrelate=False, valid=None)
    same = optimise(model, x, objectives.channel(LAYER, [3, 4]), Ascent(), 3, transforms=[Jitter(2)], param=identity)
    assert plain.images.tobytes() == same.images.tobytes() == same.params.tobytes()
    assert plain.losses.tobytes() == same.losses.tobytes()
