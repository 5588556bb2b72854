"""The `features` command and the `--store` options of neighbors, embed and patches, on the
synthetic VGG16 conv stack at 32 px over a small folder (one broken file among them)."""

import csv

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cli
import engine
from engine.images import load_image
from engine.viz import dataset

pytest.importorskip("zarr")
pytest.importorskip("distributed")

from engine.scale.store import FeatureStore  # noqa: E402

SIZE = 32


@pytest.fixture(autouse=True)
def no_user_files(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_cache"))
    monkeypatch.delenv("CONVSCOPE_WEIGHTS", raising=False)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("cli_images")
    rng = np.random.default_rng(5)
    for n in range(4):
        Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(root / f"r{n}.png")
    for n, source in enumerate(sorted((shared_data / "images").iterdir())):
        Image.open(source).convert("RGB").resize((40, 36)).save(root / f"s{n}.jpg")
    (root / "broken.jpg").write_bytes(b"nope")
    return root


def invoke(*args):
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def good(folder):
    return sorted(p for p in folder.iterdir() if p.name != "broken.jpg")


@pytest.fixture(scope="module")
def filled(tmp_path_factory, folder, vgg16_notop_file):
    store = tmp_path_factory.mktemp("stores") / "feats.zarr"
    args = ("features", "--images", folder, "--store", store, "--layer", "block3_pool", "--spatial", "--size", SIZE,
            "--weights", vgg16_notop_file, "--rows-per-chunk", 3)
    first = invoke(*args, "--workers", 1)
    second = invoke(*args, "--workers", 0)
    return store, first, second


def test_features_command_fills_a_store_once(filled, folder, vgg16_notop_file):
    store, first, second = filled
    assert first.exit_code == 0, first.stderr
    assert "(9 computed, 0 unchanged after a touch, 0 already there; 1 unreadable)" in first.stdout
    assert "dashboard http" in first.stderr and "broken.jpg" in first.stderr
    assert second.exit_code == 0 and "(0 computed, 0 unchanged after a touch, 10 already there" in second.stdout
    opened = FeatureStore.open(store)
    model = engine.load(vgg16_notop_file)
    images = np.stack([load_image(p, size=(SIZE, SIZE)) for p in good(folder)])
    out = model.forward(engine.preprocess_input(images), "block3_pool")["block3_pool"]
    rows = opened.done_rows(good(folder))
    np.testing.assert_array_equal(opened.read("spatial", np.sort(rows)), out[np.argsort(rows)])
    np.testing.assert_array_equal(opened.read("pooled", rows), dataset.pool_features(out, "avg"))


def test_neighbors_embed_patches_read_the_store(filled, folder, vgg16_notop_file, tmp_path):
    store = filled[0]
    model = engine.load(vgg16_notop_file)
    paths = good(folder)
    images = np.stack([load_image(p, size=(SIZE, SIZE)) for p in paths])
    out = model.forward(engine.preprocess_input(images), "block3_pool")["block3_pool"]
    feats = dataset.pool_features(out, "avg")

    query = folder / "s1.jpg"
    result = invoke("neighbors", query, "--store", store, "--top", 3, "--index", "exact", "--workers", 0,
                    "--weights", vgg16_notop_file, "--out", tmp_path / "n.png")
    assert result.exit_code == 0, result.stderr
    listed = [line.split()[-1] for line in result.stdout.splitlines() if line[:4].strip().rstrip(".").isdigit()]
    q = paths.index(query)
    idx, _ = dataset.nearest(feats[q], feats, 3, "cosine", exclude=[q])
    assert listed == [str(paths[i].resolve()) for i in idx]

    result = invoke("embed", "--store", store, "--images", folder, "--workers", 0, "--size", SIZE, "--layer", "block3_pool",
                    "--weights", vgg16_notop_file, "--canvas", 120, "--thumb", 16, "--out", tmp_path / "e.png")
    assert result.exit_code == 0, result.stderr
    with open(tmp_path / "e.csv", newline="") as file:
        rows = list(csv.reader(file))[1:]
    assert [r[0] for r in rows] == [str(p.resolve()) for p in paths]
    got = np.array([[float(r[1]), float(r[2])] for r in rows])
    np.testing.assert_allclose(got, dataset.pca_2d(feats), rtol=1e-4, atol=1e-4 * np.abs(got).max())

    result = invoke("patches", "--store", store, "--channels", "0-2", "--top", 3, "--workers", 0,
                    "--weights", vgg16_notop_file, "--out", tmp_path / "p.png")
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("channel")]
    assert len(lines) == 3
    for c, line in enumerate(lines):
        n = int(np.argmax(out[..., c].max(axis=(1, 2))))
        assert f" in {paths[n].resolve()} at " in line
    assert Image.open(tmp_path / "p.png").size[0] > 0


def test_store_bad_input(filled, folder, vgg16_notop_file, tmp_path):
    store = filled[0]
    plain = tmp_path / "plain.zarr"
    assert invoke("features", "--images", folder, "--store", plain, "--layer", "block3_pool", "--size", SIZE,
                  "--weights", vgg16_notop_file, "--workers", 0).exit_code == 0
    (tmp_path / "file.zarr").write_text("x")
    cases = [
        (("features", "--images", folder, "--store", tmp_path / "file.zarr"), "is a file"),
        (("features", "--images", folder, "--store", store, "--layer", "block4_pool", "--size", SIZE), "another layer"),
        (("features", "--images", folder, "--store", tmp_path / "w.zarr", "--workers", -1), "--workers -1"),
        (("embed", "--out", tmp_path / "x.png"), "give --images"),
        (("embed", "--store", tmp_path / "missing.zarr", "--out", tmp_path / "x.png"), "no feature store"),
        (("patches", "--store", plain, "--out", tmp_path / "x.png"), "no per-position features"),
        (("neighbors", folder / "r0.png", "--store", store, "--layer", "block4_pool", "--out", tmp_path / "x.png"), "not block4_pool"),
    ]
    for args, message in cases:
        result = invoke(*args, "--weights", vgg16_notop_file)
        assert result.exit_code == 1, (args, result.stdout)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (args, result.stderr)
        assert not (tmp_path / "x.png").exists()
