"""Filter visualisation: the engine's batched run equals the Keras example run one filter at a time
in Keras 3 (fixtures/filters_reference.npz, from make_filters_reference.py, same synthetic VGG16
weights and start images), the loss rises, dead filters are dropped, selection and order, seeds,
the stitched grid's geometry, and the ``filters`` command."""

import pathlib

import numpy as np
import pytest
from PIL import Image

import engine
from engine.errors import ConvscopeError
from engine.viz.filters import parse_filter_spec, stage_sizes, start_images, visualize_filters
from engine.viz.pictures import grid_size, standardize_to_uint8, stitch_grid
from engine.viz.transforms import jitter
from engine.viz import objectives
from tests.metrics import rel_err

REFERENCE = pathlib.Path(__file__).parent / "fixtures" / "filters_reference.npz"


CASES = ("pool_free", "pooled")


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return {key: data[key] for key in data.files}


def case(reference, name):
    keys = ("layer", "size", "filters", "start", "images", "history", "losses")
    out = {key: reference[f"{name}_{key}"] for key in keys}
    out["layer"], out["size"] = str(out["layer"]), int(out["size"])
    return out


@pytest.fixture(scope="module")
def model(vgg16_notop_file):
    return engine.load(vgg16_notop_file)


@pytest.fixture(scope="module")
def scanned(model, reference):
    """Each case's filters optimised in one batch: a scan of the pooled case (it holds a dead
    filter, so selection shows), the given filters of the pool-free one."""
    results = {}
    for name in CASES:
        ref = case(reference, name)
        common = dict(size=ref["size"], steps=int(reference["steps"]), seed=int(reference["seed"]), batch=8)
        if name == "pooled":
            result = visualize_filters(model, ref["layer"], scan=8, **common)
        else:
            result = visualize_filters(model, ref["layer"], filters=ref["filters"], **common)
        results[name] = result
    return results


def by_filter(result, f):
    where = np.flatnonzero(result.scanned_filters == f)[0]
    return result.scanned_losses[where], (result.raw[list(result.filters).index(f)] if f in result.filters else None)


def test_start_images_are_the_references(reference):
    for name in CASES:
        ref = case(reference, name)
        start = start_images(ref["filters"], ref["size"], int(reference["seed"]))
        np.testing.assert_array_equal(start.astype(np.float32), ref["start"])
        assert abs(start.mean() - 128) < 0.5 and start.min() >= 118 and start.max() <= 138


@pytest.mark.parametrize("name", CASES)
def test_batched_engine_matches_keras_reference(scanned, reference, name):
    ref = case(reference, name)
    for i, f in enumerate(ref["filters"]):
        loss, mine = by_filter(scanned[name], f)
        np.testing.assert_allclose(loss, ref["losses"][i], rtol=1e-4, atol=1e-4)
        if ref["losses"][i] <= 0:
            assert mine is None and name == "pooled"  # the dead filter: stopped and dropped
            np.testing.assert_array_equal(ref["history"][1:, i], np.nan)  # Keras stopped too
            continue
        start = ref["start"][i]
        # The ascent's displacement from the start image: ~1e-6 for all but pool_free filter 3,
        # 4e-4 there (one ReLU input within float32 rounding of zero on the way; see the script).
        assert rel_err(mine - start, ref["images"][i] - start) < 1e-3
        assert rel_err(mine, ref["images"][i]) < 1e-4


def test_loss_rises(model, reference):
    for name in CASES:
        ref = case(reference, name)
        first = model.forward(ref["start"], outputs=[ref["layer"]])[ref["layer"]].mean(axis=(1, 2))
        first = first[np.arange(len(first)), ref["filters"]]
        np.testing.assert_allclose(first, ref["history"][0], rtol=1e-4, atol=1e-4)
        alive = ref["losses"] > 0
        assert (ref["losses"][alive] > first[alive] * 1.2).all()
        assert (np.diff(ref["history"][:, alive], axis=0) > 0).mean() > 0.9


def test_selection_keeps_positive_losses_best_first(scanned):
    result = scanned["pooled"]
    assert len(result.scanned_filters) == 8 and (result.scanned_losses <= 0).any()
    positive = np.flatnonzero(result.scanned_losses > 0)
    expected = result.scanned_filters[positive[np.argsort(-result.scanned_losses[positive], kind="stable")]]
    np.testing.assert_array_equal(result.filters, expected)
    assert (np.diff(result.losses) <= 0).all() and (result.losses > 0).all()
    np.testing.assert_array_equal(result.images, standardize_to_uint8(result.raw))
    assert result.images.dtype == np.uint8 and result.images.shape == result.raw.shape


def test_chosen_filters_keep_their_order_and_do_not_depend_on_the_batch(model, scanned, reference):
    ref = case(reference, "pool_free")
    chosen = [5, 0, 3]
    result = visualize_filters(
        model, ref["layer"], filters=chosen, size=ref["size"], steps=int(reference["steps"]),
        seed=int(reference["seed"]), batch=2,
    )
    np.testing.assert_array_equal(result.filters, chosen)
    for i, f in enumerate(chosen):
        loss, raw = by_filter(scanned["pool_free"], f)
        np.testing.assert_allclose(result.raw[i], raw, rtol=0, atol=1e-3)
        np.testing.assert_allclose(result.losses[i], loss, rtol=1e-5)


def test_same_seed_same_bytes_with_options(model):
    run = lambda seed: visualize_filters(
        model, "block2_conv1", filters=[3, 0], size=32, steps=3, seed=seed,
        transforms=[jitter(2)], tv=0.01, l2=0.01, upscale_steps=1,
    )
    a, b, c = run(7), run(7), run(8)
    assert a.images.shape == (2, 32, 32, 3)
    assert a.raw.tobytes() == b.raw.tobytes() and a.images.tobytes() == b.images.tobytes()
    assert a.raw.tobytes() != c.raw.tobytes()


def test_total_variation_smooths(model):
    run = lambda tv: visualize_filters(model, "block1_conv2", filters=[4], size=32, steps=6, tv=tv).raw
    tv_of = lambda x: objectives.total_variation()({"input": x})[0][0]
    assert tv_of(run(2.0)) < tv_of(run(0.0))


def test_stage_sizes_and_filter_specs():
    assert stage_sizes(128) == [128]
    assert stage_sizes(412, 9, 1.2) == [int(412 / 1.2**k) for k in range(9, -1, -1)]
    assert stage_sizes(412, 9, 1.2)[0] == 79  # "starting image is in this case (80, 80)"
    assert parse_filter_spec("0-3,10,7") == [0, 1, 2, 3, 10, 7]
    for bad in ("3-1", "a", "1-", ""):
        with pytest.raises(ConvscopeError):
            parse_filter_spec(bad)


def test_bad_requests(model):
    with pytest.raises(ConvscopeError, match="filter 64 does not exist"):
        visualize_filters(model, "block1_conv1", filters=[0, 64], size=32, steps=1)
    with pytest.raises(ConvscopeError, match="unknown layer"):
        visualize_filters(model, "block9_conv1", size=32, steps=1)
    with pytest.raises(ConvscopeError, match=r"1 px \(the first upscaling stage\) is too small to reach layer block3_conv1"):
        visualize_filters(model, "block3_conv1", size=40, upscale_steps=20, steps=1)
    with pytest.raises(ConvscopeError, match="3 px is too small"):
        visualize_filters(model, "block3_conv1", size=3, steps=1)
    assert visualize_filters(model, "block1_conv2", filters=[1], size=8, steps=1).images.shape == (1, 8, 8, 3)


def test_grid_geometry():
    tiles = np.zeros((64, 128, 128, 3), dtype=np.uint8)
    assert stitch_grid(tiles, 8, 8, margin=5).shape == (1059, 1059, 3)
    assert grid_size(8, 8, (128, 128), 5) == (1059, 1059)
    small = np.arange(1, 6, dtype=np.uint8)[:, None, None] * np.ones((5, 3, 4), np.uint8)
    picture = stitch_grid(small, columns=3, margin=2, fill=0)
    assert picture.shape == (2 * 3 + 2, 3 * 4 + 2 * 2)
    for i in range(5):
        top, left = (i // 3) * 5, (i % 3) * 6
        assert (picture[top : top + 3, left : left + 4] == i + 1).all()  # row-major
    assert picture[3:5].max() == 0 and picture[:, 4:6].max() == 0  # margins
    assert picture[5:, 12:].max() == 0  # the empty sixth cell


def test_filters_command(vgg16_notop_file, tmp_path):
    from typer.testing import CliRunner

    import cli

    out, arr = tmp_path / "f.png", tmp_path / "f.npy"
    args = ["filters", "--weights", str(vgg16_notop_file), "--layer", "block2_conv1", "--filters",
            "3,0-2", "--grid", "2", "--size", "32", "--steps", "2", "-o", str(out), "--save-array", str(arr)]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (2 * 32 + 5, 2 * 32 + 5)
    assert np.load(arr).shape == (4, 32, 32, 3)
    shown = [int(line.split()[1]) for line in result.stdout.splitlines() if line.strip().startswith("filter ")]
    assert shown == [3, 0, 1, 2]
    before = out.read_bytes()
    again = CliRunner().invoke(cli.app, args)
    assert again.exit_code == 1 and "already exists" in again.stderr and out.read_bytes() == before
