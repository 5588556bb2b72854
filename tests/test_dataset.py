"""Dataset views: features, neighbours, embeddings, patches and the feature cache.

Engine functions against brute force (loops over images, numpy's SVD, full activation maps); the
commands on a small folder made from the shared photos (resized to 64-96 px, in several formats
and a subfolder, with one broken file that must be skipped with one warning), on the synthetic
VGG16 conv stack at 64 px.
"""

import csv
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cli
import engine
from engine.errors import ConvscopeError
from engine.images import load_image
from engine.model import Model
from engine.viz import dataset
from engine.viz.pictures import grid_size
from engine.viz.receptive import crop_field, receptive_field

SIZE = 64


@pytest.fixture(autouse=True)
def no_user_files(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_cache"))
    monkeypatch.delenv("CONVSCOPE_WEIGHTS", raising=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, shared_data):
    """Five photos (64-96 px; PNG, JPEG, BMP; one in a subfolder), one copy, one broken file."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    sources = sorted((shared_data / "images").iterdir())[:5]
    for n, source in enumerate(sources):
        im = Image.open(source).convert("RGB").resize((64 + 8 * n, 96 - 8 * n))
        name = ["a.png", "b.jpg", "sub/c.bmp", "d.png", "sub/e.jpg"][n]
        im.save(root / name)
    shutil.copy(root / "a.png", root / "sub" / "a_copy.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 10)
    return root


@pytest.fixture(scope="module")
def model(vgg16_notop_file):
    return engine.load(vgg16_notop_file)


def readable(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "broken.jpg")


def invoke(*args):
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


# ---------------------------------------------------------------------------- engine


def test_nearest_equals_brute_force():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(40, 7))
    items[5] = 0.0  # a zero vector: cosine distance 1
    items[9] = items[3]  # a tie
    query = rng.normal(size=7)
    for metric in ("cosine", "l2"):
        brute = []
        for i, row in enumerate(items):
            if metric == "l2":
                d = float(np.sqrt(sum((a - b) ** 2 for a, b in zip(row, query))))
            else:
                norm = np.linalg.norm(row) * np.linalg.norm(query)
                d = 1.0 - (float(row @ query) / norm if norm > 0 else 0.0)
            brute.append((d, i))
        brute = sorted(p for p in brute if p[1] != 2)[:6]
        indices, dist = dataset.nearest(query, items, 6, metric, exclude=[2])
        assert list(indices) == [i for _, i in brute]
        np.testing.assert_allclose(dist, [d for d, _ in brute], rtol=1e-12, atol=1e-12)
    assert dataset.distances(query, items)[5] == 1.0


def test_pca_equals_svd_projection():
    x = np.random.default_rng(1).normal(size=(12, 30)) * np.linspace(3, 0.1, 30)
    coords = dataset.pca_2d(x)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    for axis in range(2):
        sign = np.sign(coords[:, axis] @ expected[:, axis])
        np.testing.assert_allclose(coords[:, axis], sign * expected[:, axis], atol=1e-10)
    assert dataset.pca_2d(x[:1]).tolist() == [[0.0, 0.0]]


def test_features_pool_and_batch(model, folder):
    images = np.stack([load_image(p, size=(SIZE, SIZE)) for p in readable(folder)])
    raw = model.forward(engine.preprocess_input(images), "block5_pool")["block5_pool"]
    avg = dataset.image_features(model, images, "block5_pool", "avg", batch=4)
    np.testing.assert_allclose(avg, raw.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    flat = dataset.image_features(model, images, "block5_pool", "flatten", batch=len(images))
    np.testing.assert_allclose(flat, raw.reshape(len(images), -1), rtol=1e-5, atol=1e-6)


def test_patches_are_the_true_argmax_regions(model, folder):
    layer = "block3_conv1"
    images = np.stack([load_image(p, size=(SIZE, SIZE)) for p in readable(folder)])
    values, positions = dataset.image_channel_maxima(model, images, layer, batch=4)
    acts = model.forward(engine.preprocess_input(images), layer)[layer]
    field = receptive_field(model, layer)
    channels = [0, 5, 17]
    best = dataset.top_patches(values, positions, field, (SIZE, SIZE), channels, 4)
    tiles = dataset.patch_tiles(images, best, field)
    for row, c in enumerate(channels):
        # brute force: every image's maximum by a scan of the whole map, strongest first
        per_image = []
        for n in range(len(images)):
            top_value, where = -np.inf, None
            for i in range(acts.shape[1]):
                for j in range(acts.shape[2]):
                    if acts[n, i, j, c] > top_value:
                        top_value, where = acts[n, i, j, c], (i, j)
            per_image.append((-top_value, n, where))
        for col, (neg, n, where) in enumerate(sorted(per_image)[:4]):
            assert best.images[row, col] == n and best.values[row, col] == -neg
            assert tuple(best.positions[row, col]) == where
            assert tuple(best.boxes[row, col]) == field.clamped_box(*where, (SIZE, SIZE))
            np.testing.assert_array_equal(tiles[row, col], crop_field(images[n], field, *where))


def test_top_patches_channel_out_of_range(model):
    field = receptive_field(model, "block1_conv1")
    with pytest.raises(ConvscopeError, match="out of range"):
        dataset.top_patches(np.zeros((2, 4)), np.zeros((2, 4, 2), int), field, (8, 8), [4], 1)


def test_embedding_canvas_later_on_top():
    thumbs = np.stack([np.full((10, 10, 3), v, np.uint8) for v in (10, 20, 30)])
    coords = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]])
    canvas = dataset.embedding_canvas(thumbs, coords, size=50)
    assert canvas.shape == (50, 50, 3)
    values = set(np.unique(canvas))
    assert 20 in values and 10 not in values and 30 in values  # the second covers the first
    centres = dataset.place_on_canvas(coords, 50, margin=5)
    assert centres[:, 1].min() == 5 and centres[:, 1].max() == 45  # y spans the room, x keeps the scale


def test_tsne_caps_perplexity():
    pytest.importorskip("sklearn")
    x = np.random.default_rng(2).normal(size=(10, 20))
    assert dataset.tsne_perplexity(10) == 3.0 and dataset.tsne_perplexity(1000) == 30.0
    a = dataset.tsne_2d(x, seed=3)
    assert a.shape == (10, 2) and np.isfinite(a).all()


def test_tsne_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "sklearn.manifold", None)
    with pytest.raises(ConvscopeError, match=r"pip install scikit-learn .*\.\[tsne\]"):
        dataset.tsne_2d(np.zeros((5, 3)))


# ---------------------------------------------------------------------------- commands


@pytest.fixture
def forward_calls(monkeypatch):
    """How many forward passes the commands run (counted on the Model class)."""
    calls = []
    original = Model.forward

    def counted(self, x, outputs=None):
        calls.append(len(x))
        return original(self, x, outputs)

    monkeypatch.setattr(Model, "forward", counted)
    return calls


def test_neighbors_matches_brute_force_and_skips_the_broken_file(vgg16_notop_file, folder, tmp_path, model):
    query = folder / "b.jpg"
    out = tmp_path / "n.png"
    result = invoke("neighbors", query, "--images", folder, "--top", 3, "--size", SIZE, "--weights",
                    vgg16_notop_file, "--cache-dir", tmp_path / "cache", "--out", out)
    assert result.exit_code == 0, result.stderr
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipped") and "broken.jpg" in warnings[0]
    assert "6 images" in result.stdout and "skipped 1 unreadable file" in result.stdout
    listed = [line.split()[-1] for line in result.stdout.splitlines() if line[:4].strip().rstrip(".").isdigit()]
    paths = readable(folder)
    images = np.stack([load_image(p, size=(SIZE, SIZE)) for p in paths])
    feats = dataset.image_features(model, images, "block5_pool")
    q = paths.index(query)
    feature_order = sorted((p for p in range(len(paths)) if p != q), key=lambda p: (dataset.distances(feats[q], feats[p : p + 1])[0], p))
    pixels = np.stack([load_image(p, size=(32, 32)) for p in paths]).reshape(len(paths), -1) / 255.0
    pixel_order = sorted((p for p in range(len(paths)) if p != q), key=lambda p: (np.linalg.norm(pixels[p] - pixels[q]), p))
    assert listed == [str(paths[i]) for i in feature_order[:3]] + [str(paths[i]) for i in pixel_order[:3]]
    picture = load_image(out)
    assert picture.shape[0] > 2 * 96 and picture.shape[1] > 4 * 96


def test_cache_hit_then_invalidated(vgg16_notop_file, folder, tmp_path, forward_calls):
    work = tmp_path / "photos"
    shutil.copytree(folder, work)
    args = ("embed", "--images", work, "--size", SIZE, "--weights", vgg16_notop_file, "--batch", 4,
            "--canvas", 200, "--cache-dir", tmp_path / "cache")
    first = invoke(*args, "--out", tmp_path / "1.png")
    assert first.exit_code == 0, first.stderr
    assert sum(forward_calls) == 6 and "(0 from the cache, 6 computed)" in first.stdout
    forward_calls.clear()
    second = invoke(*args, "--out", tmp_path / "2.png")
    assert second.exit_code == 0 and forward_calls == []
    assert "(6 from the cache, 0 computed)" in second.stdout
    assert (tmp_path / "1.csv").read_text() == (tmp_path / "2.csv").read_text()
    Image.open(work / "d.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(work / "d.png")
    third = invoke(*args, "--out", tmp_path / "3.png")
    assert third.exit_code == 0 and forward_calls == [1]
    assert "(5 from the cache, 1 computed)" in third.stdout
    assert not list((tmp_path / "cache").rglob("*.part"))
    other_layer = invoke(*args, "--layer", "block4_pool", "--out", tmp_path / "4.png")
    assert other_layer.exit_code == 0 and "(0 from the cache, 6 computed)" in other_layer.stdout


def test_embed_pca_csv_equals_svd(vgg16_notop_file, folder, tmp_path, model):
    out = tmp_path / "e.png"
    result = invoke("embed", "--images", folder, "--size", SIZE, "--weights", vgg16_notop_file,
                    "--canvas", 300, "--thumb", 32, "--no-cache", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert Image.open(out).size == (300, 300)
    with open(tmp_path / "e.csv", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["path", "x", "y"]
    paths = readable(folder)
    assert [r[0] for r in rows[1:]] == [str(p) for p in paths]
    feats = dataset.image_features(model, np.stack([load_image(p, size=(SIZE, SIZE)) for p in paths]), "block5_pool")
    centred = feats.astype(np.float64) - feats.mean(axis=0, dtype=np.float64)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    got = np.array([[float(r[1]), float(r[2])] for r in rows[1:]])
    for axis in range(2):
        sign = np.sign(got[:, axis] @ expected[:, axis])
        np.testing.assert_allclose(got[:, axis], sign * expected[:, axis], rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert not (tmp_path / "xdg_cache").exists()


def test_embed_tsne(vgg16_notop_file, folder, tmp_path):
    args = ("embed", "--images", folder, "--method", "tsne", "--size", SIZE, "--weights", vgg16_notop_file,
            "--canvas", 200, "--out", tmp_path / "t.png")
    try:
        import sklearn.manifold  # noqa: F401
    except ImportError:
        result = invoke(*args)
        assert result.exit_code == 1 and "pip install scikit-learn" in result.stderr
        return
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    assert "perplexity 1.66667" in result.stdout  # 6 images: capped at (6 - 1) / 3
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 7
    assert (tmp_path / "xdg_cache" / "convscope").is_dir()  # the default cache folder


def test_patches_command(vgg16_notop_file, folder, tmp_path, model):
    out = tmp_path / "p.png"
    result = invoke("patches", "--images", folder, "--layer", "block3_conv1", "--channels", "0-2", "--top", 3,
                    "--size", SIZE, "--weights", vgg16_notop_file, "--cache-dir", tmp_path / "cache", "--out", out)
    assert result.exit_code == 0, result.stderr
    field = receptive_field(model, "block3_conv1")  # 24 px, enlarged x2 to at least 48
    assert Image.open(out).size[::-1] == grid_size(3, 3, (2 * field.size[0], 2 * field.size[1]), 2)
    paths = readable(folder)
    images = np.stack([load_image(p, size=(SIZE, SIZE)) for p in paths])
    acts = model.forward(engine.preprocess_input(images), "block3_conv1")["block3_conv1"]
    lines = [l for l in result.stdout.splitlines() if l.startswith("channel")]
    for c, line in enumerate(lines):
        n = int(np.argmax(acts[..., c].max(axis=(1, 2))))
        assert f" in {paths[n]} at " in line


def test_dataset_bad_input(vgg16_notop_file, tmp_path, folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "junk.txt").write_text("hello")
    common = ("--weights", vgg16_notop_file, "--size", SIZE, "--no-cache")
    cases = [
        (("embed", "--images", tmp_path / "missing"), "no such folder"),
        (("embed", "--images", empty), "no readable image"),
        (("neighbors", folder / "a.png", "--images", folder, "--layer", "fc2"), "without the classifier"),
        (("patches", "--images", folder, "--layer", "block3_conv1", "--channels", "300"), "out of range"),
        (("neighbors", folder / "broken.jpg", "--images", folder), "corrupt"),
    ]
    for args, message in cases:
        result = invoke(*args, *common, "--out", tmp_path / "x.png")
        assert result.exit_code == 1, (args, result.stdout)
        errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], result.stderr
        assert not (tmp_path / "x.png").exists()


def test_cache_keys_on_the_whole_weights_file(vgg16_notop_file, folder, tmp_path):
    import h5py

    weights = tmp_path / vgg16_notop_file.name
    shutil.copy(vgg16_notop_file, weights)
    args = ("embed", "--images", folder, "--size", SIZE, "--weights", weights, "--canvas", 200,
            "--cache-dir", tmp_path / "cache")
    first = invoke(*args, "--out", tmp_path / "1.png")
    assert first.exit_code == 0 and "(0 from the cache, 6 computed)" in first.stdout, first.stderr
    assert "(6 from the cache, 0 computed)" in invoke(*args, "--out", tmp_path / "2.png").stdout
    before = weights.read_bytes()
    with h5py.File(weights, "r+") as file:  # one inner layer, in place: same size, same first and last MiB
        bias = file["block3_conv3/block3_conv3_b_1:0"]
        bias[...] = bias[...] + 1.0
    after = weights.read_bytes()
    assert len(after) == len(before) and after[: 1 << 20] == before[: 1 << 20] and after[-(1 << 20) :] == before[-(1 << 20) :]
    third = invoke(*args, "--out", tmp_path / "3.png")
    assert third.exit_code == 0 and "(0 from the cache, 6 computed)" in third.stdout, third.stderr
    assert (tmp_path / "1.csv").read_text() != (tmp_path / "3.csv").read_text()
    assert (tmp_path / "cache" / "weights-digests.json").is_file()


def test_cache_entry_of_another_shape_is_recomputed(vgg16_notop_file, folder, tmp_path, forward_calls):
    from commands.folder_cache import file_digest

    args = ("embed", "--images", folder, "--size", SIZE, "--weights", vgg16_notop_file, "--canvas", 200,
            "--cache-dir", tmp_path / "cache")
    assert invoke(*args, "--out", tmp_path / "1.png").exit_code == 0
    digest = file_digest(folder / "d.png")
    entries = list((tmp_path / "cache").rglob(f"{digest}.npy"))
    assert len(entries) == 2  # features and thumbnail
    for entry in entries:
        np.save(entry, np.zeros((3, 5), np.float32))
    forward_calls.clear()
    second = invoke(*args, "--out", tmp_path / "2.png")
    assert second.exit_code == 0, second.stderr
    assert "(5 from the cache, 1 computed)" in second.stdout and forward_calls == [1]
    assert (tmp_path / "1.csv").read_text() == (tmp_path / "2.csv").read_text()
