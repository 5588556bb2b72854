"""The `atlas` command and its rendering, on a tiny synthetic Keras convnet (24 px input, conv_b
12x12x16, then a dense layer) over a small generated folder, PCA layout, few steps."""

import base64
import csv
import os
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cli
import engine
from engine.scale.atlas import grid_cells
from tests.synthetic_layouts import write_keras2_model

pytest.importorskip("zarr")
pytest.importorskip("distributed")

from engine.scale.atlas_render import render_icons, stitch_atlas  # noqa: E402
from engine.scale.embed import pca_2d  # noqa: E402
from engine.scale.store import FeatureStore  # noqa: E402

LAYER, GRID, CELL, STEPS = "conv_b", 3, 24, 8
LAYERS = [
    dict(cls="Conv2D", name="conv_a", filters=8, kernel_size=3, padding="same", activation="relu"),
    dict(cls="MaxPooling2D", name="pool_a", pool_size=2),
    dict(cls="Conv2D", name="conv_b", filters=16, kernel_size=3, padding="same", activation="relu"),
    dict(cls="Flatten", name="flatten_1"),
    dict(cls="Dense", name="dense_1", units=4, activation="softmax"),
]


@pytest.fixture(autouse=True)
def no_user_files(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_cache"))
    monkeypatch.delenv("CONVSCOPE_WEIGHTS", raising=False)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny_convnet.h5"
    write_keras2_model(path, LAYERS, (24, 24, 3), seed=2)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("atlas_images")
    rng = np.random.default_rng(7)
    for n in range(6):
        picture = rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)
        picture[..., n % 3] //= 4  # some colour variety
        Image.fromarray(picture).save(root / f"p{n}.png")
    return root


def invoke(*args):
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def run_atlas(out, store, tiny, *extra):
    return invoke("atlas", "--store", store, "--layer", LAYER, "--grid", GRID, "--layout", "pca", "--steps", STEPS,
                  "--cell-size", CELL, "--weights", tiny, "--workers", 0, "--out", out, *extra)


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny, folder):
    root = tmp_path_factory.mktemp("atlas_out")
    store = root / "feats.zarr"
    first = run_atlas(root / "atlas.png", store, tiny, "--images", folder, "--seed", 3, "--save-array", root / "means.npy")
    again = run_atlas(root / "again.png", store, tiny, "--seed", 3)  # from the filled store alone
    other = run_atlas(root / "other.png", store, tiny, "--seed", 4)
    return root, store, first, again, other


def read_layout(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_atlas_writes_png_page_and_layout(made, folder):
    root, store, first, *_ = made
    assert first.exit_code == 0, first.stderr
    assert not list(root.glob(".*.part"))  # atomic writes leave no temporary file
    rows = read_layout(root / "atlas.csv")
    assert len(rows) == 6 * 4  # --per-image 4
    opened = FeatureStore.open(store)
    spatial = opened.read("spatial", np.arange(6))
    paths = [str(p) for p in opened.manifest()["paths"]]
    vectors = np.stack([spatial[paths.index(r["path"]), int(r["i"]), int(r["j"])] for r in rows])
    coords = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    np.testing.assert_allclose(coords, pca_2d(vectors), rtol=1e-6, atol=1e-6 * np.abs(coords).max())
    cells, means, counts = grid_cells(coords, vectors, GRID)
    assert {(int(r["row"]), int(r["column"])) for r in rows} == {tuple(c) for c in cells.tolist()}
    np.testing.assert_allclose(np.load(root / "means.npy"), means, rtol=1e-6)  # --save-array: the cells' directions

    atlas = np.asarray(Image.open(root / "atlas.png"))
    assert atlas.shape == (GRID * CELL, GRID * CELL, 3)
    occupied = {tuple(c) for c in cells.tolist()}
    assert 0 < len(occupied) < GRID * GRID  # the test needs both kinds of cell
    for r in range(GRID):
        for c in range(GRID):
            tile = atlas[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL]
            assert np.all(tile == 255) == ((r, c) not in occupied), (r, c)

    page = (root / "atlas.html").read_text()
    embedded = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(embedded) == (root / "atlas.png").read_bytes()
    for (r, c), count in zip(cells.tolist(), counts):
        assert f"<tr><td>({r}, {c})</td><td>{count}</td>" in page
    values = [(float(a), float(b)) for a, b in re.findall(r"<td>([-\d.]+) &rarr; ([-\d.]+)</td>", page)]
    assert len(values) == len(cells) and all(b > a for a, b in values)  # each cell's objective rose
    assert f"{len(cells)} of {GRID * GRID} cells" in first.stdout


def test_same_seed_same_bytes(made):
    root, _, first, again, other = made
    assert again.exit_code == 0 and other.exit_code == 0, (again.stderr, other.stderr)
    assert (root / "again.png").read_bytes() == (root / "atlas.png").read_bytes()
    assert (root / "again.csv").read_bytes() == (root / "atlas.csv").read_bytes()
    assert (root / "other.png").read_bytes() != (root / "atlas.png").read_bytes()


def test_rendering_raises_each_cells_direction(tiny):
    model = engine.load(tiny)
    rng = np.random.default_rng(1)
    vectors = np.abs(rng.normal(size=(40, 16))) * rng.integers(0, 2, size=(40, 16))
    cells, means, _ = grid_cells(rng.normal(size=(40, 2)), vectors, 3)
    plain = render_icons(model, LAYER, cells, means, size=CELL, steps=10, seed=5, batch=4, robust=False)
    assert plain.history.shape == (10, len(cells))
    assert np.all(plain.history[-1] > plain.history[0])
    assert np.all(plain.final > plain.start)
    assert np.allclose(plain.history[0], plain.start, atol=1e-4)  # no transforms: the loop saw the start image
    robust = render_icons(model, LAYER, cells, means, size=CELL, steps=10, seed=5, batch=64)
    assert np.all(robust.final > robust.start)
    one_batch = render_icons(model, LAYER, cells, means, size=CELL, steps=10, seed=5, batch=64, robust=False)
    # a cell's picture does not depend on its batch (up to float rounding)
    assert np.abs(one_batch.images.astype(int) - plain.images.astype(int)).max() <= 1
    canvas = stitch_atlas(cells, plain.images, 3)
    for (r, c), icon in zip(cells.tolist(), plain.images):
        np.testing.assert_array_equal(canvas[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL], icon)


def test_atlas_bad_input(made, tiny, folder, tmp_path):
    _, store, *_ = made
    empty = tmp_path / "empty"
    empty.mkdir()
    plain = tmp_path / "plain.zarr"
    assert invoke("features", "--images", folder, "--store", plain, "--layer", LAYER, "--weights", tiny,
                  "--workers", 0).exit_code == 0
    out = tmp_path / "x.png"
    cases = [
        (("--images", empty, "--store", tmp_path / "e.zarr", "--layer", LAYER), "holds no files"),
        (("--images", folder, "--store", tmp_path / "d.zarr", "--layer", "dense_1"), "not spatial"),
        (("--store", plain), "no per-position features"),
        (("--store", store, "--layer", "conv_a"), "not conv_a"),
        (("--store", store, "--grid", 0), "must be positive"),
        (("--store", store, "--min-count", 100), "no cell holds --min-count 100"),
    ]
    for args, message in cases:
        result = invoke("atlas", *args, "--layout", "pca", "--steps", 1, "--weights", tiny, "--workers", 0, "--out", out)
        assert result.exit_code == 1, (args, result.stdout)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert not any(p.exists() for p in (out, out.with_suffix(".html"), out.with_suffix(".csv")))


@pytest.mark.skipif(os.environ.get("CONVSCOPE_SLOW_TESTS") != "1",
                    reason="UMAP compiles for about 30 s in every process: set CONVSCOPE_SLOW_TESTS=1")
def test_default_umap_layout(made, tiny, tmp_path):
    pytest.importorskip("umap")
    from engine.scale.embed import umap_2d

    _, store, *_ = made
    result = invoke("atlas", "--store", store, "--grid", GRID, "--steps", 2, "--cell-size", CELL, "--weights", tiny,
                    "--workers", 0, "--seed", 3, "--out", tmp_path / "u.png")
    assert result.exit_code == 0, result.stderr
    rows = read_layout(tmp_path / "u.csv")
    opened = FeatureStore.open(store)
    spatial = opened.read("spatial", np.arange(6))
    paths = [str(p) for p in opened.manifest()["paths"]]
    vectors = np.stack([spatial[paths.index(r["path"]), int(r["i"]), int(r["j"])] for r in rows])
    coords = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    np.testing.assert_allclose(coords, umap_2d(vectors, neighbours=20, min_dist=0.01, seed=3), rtol=1e-5, atol=1e-5)
    assert "umap layout" in result.stdout
