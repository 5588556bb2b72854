"""The feature store and its Dask extraction: features equal the single-process engine's, runs
resume, changed images are recomputed and nothing twice, two runs share a store, a killed worker
changes nothing; neighbours, embeddings and top patches read from a store.

On the synthetic VGG16 conv stack at 32 px over a folder of 12 small images (random pixels and
the shared photos) plus one broken file; chunks of 2-3 rows so that every run has many chunks.
"""

import os
import signal
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

import engine
from engine.errors import ConvscopeError
from engine.images import load_image
from engine.model import Model
from engine.viz import dataset

pytest.importorskip("zarr")
pytest.importorskip("distributed")

from engine.scale.digest import file_digest  # noqa: E402
from engine.scale.extract import ModelSpec, extract, local_client, spec_for  # noqa: E402
from engine.scale.store import DONE, GONE, UNREADABLE, FeatureStore  # noqa: E402

SIZE = 32
LAYER = "block4_pool"  # (2, 2, 512) at 32 px


@pytest.fixture(scope="module")
def folder(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("scale_images")
    rng = np.random.default_rng(0)
    for n in range(7):
        Image.fromarray(rng.integers(0, 256, (40 + 3 * n, 48, 3), dtype=np.uint8)).save(root / f"r{n}.png")
    for n, source in enumerate(sorted((shared_data / "images").iterdir())):
        Image.open(source).convert("RGB").resize((48, 40)).save(root / f"s{n}.jpg")
    (root / "broken.jpg").write_bytes(b"not an image at all")
    return root


@pytest.fixture(scope="module")
def model(vgg16_notop_file):
    return engine.load(vgg16_notop_file)


def listing(root):
    return sorted(p for p in root.iterdir() if p.is_file())


def new_store(path, model, weights, rows=3, spatial=True):
    return FeatureStore.create_or_open(path, spec_for(model, LAYER, (SIZE, SIZE), spatial, file_digest(weights), rows))


def engine_outputs(model, paths):
    images = np.stack([load_image(p, size=(SIZE, SIZE)) for p in paths])
    return model.forward(engine.preprocess_input(images), LAYER)[LAYER]


def same_store(a: FeatureStore, b: FeatureStore):
    """Every array equal, and every compressed chunk file byte for byte."""
    for name in a.arrays:
        np.testing.assert_array_equal(a.group()[name][:], b.group()[name][:], err_msg=name)
        for chunk in sorted((a.path / name / "c").rglob("*")):
            if chunk.is_file():
                assert chunk.read_bytes() == (b.path / chunk.relative_to(a.path)).read_bytes(), chunk


@pytest.fixture
def forward_images(monkeypatch):
    counted = []
    original = Model.forward

    def forward(self, x, outputs=None):
        counted.append(len(x))
        return original(self, x, outputs)

    monkeypatch.setattr(Model, "forward", forward)
    return counted


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model, vgg16_notop_file, folder):
    """A store filled in this process, in one run."""
    store = new_store(tmp_path_factory.mktemp("ref") / "ref.zarr", model, vgg16_notop_file, rows=2)
    extract(store, listing(folder), ModelSpec(str(vgg16_notop_file)))
    return store


def test_store_equals_the_engine(reference, model, folder):
    good = [p for p in listing(folder) if p.name != "broken.jpg"]
    info = reference.manifest()
    assert list(info["paths"]) == [str(p.resolve()) for p in listing(folder)]
    broken = list(info["paths"]).index(str((folder / "broken.jpg").resolve()))
    assert info["status"][broken] == UNREADABLE and (np.delete(info["status"], broken) == DONE).all()
    rows = reference.done_rows()
    out = engine_outputs(model, good)
    np.testing.assert_array_equal(reference.read("spatial", rows), out)
    np.testing.assert_array_equal(reference.read("pooled", rows), dataset.pool_features(out, "avg"))
    assert [bytes(d).hex() for d in info["digest"][rows]] == [file_digest(p) for p in good]
    assert [tuple(hw) for hw in info["image_hw"][rows]] == [load_image(p).shape[:2] for p in good]


def test_resume_changes_and_nothing_twice(tmp_path, model, vgg16_notop_file, folder, reference, forward_images):
    work = tmp_path / "images"
    shutil.copytree(folder, work)
    store = new_store(tmp_path / "s.zarr", model, vgg16_notop_file, rows=2)
    spec = ModelSpec(str(vgg16_notop_file))

    def stop_after_two_chunks(done, total, rate, eta):
        assert total == 13 and rate > 0 and eta >= 0
        if done >= 4:
            raise KeyboardInterrupt  # the run is killed

    with pytest.raises(KeyboardInterrupt):
        extract(store, listing(work), spec, batch=1, progress=stop_after_two_chunks)
    first = sum(forward_images)
    assert first == 3  # the first two chunks: the broken file and three images
    summary = extract(store, listing(work), spec)
    assert sum(forward_images) == 12 and summary.computed == 12 - first and summary.up_to_date == 4
    np.testing.assert_array_equal(store.read("pooled", store.done_rows()), reference.read("pooled", reference.done_rows()))
    again = extract(store, listing(work), spec)
    assert again.computed == 0 and sum(forward_images) == 12
    os.utime(work / "r1.png", ns=(1, 1))  # touched, same content: kept
    Image.open(work / "r2.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(work / "r2.png")
    shutil.copy(work / "s0.jpg", work / "t.jpg")
    (work / "r3.png").unlink()
    summary = extract(store, listing(work), spec)
    assert (summary.computed, summary.kept) == (2, 1) and sum(forward_images) == 14
    info = store.manifest()
    row = {p: i for i, p in enumerate(info["paths"])}
    assert info["status"][row[str((work / "r3.png").resolve())]] == GONE
    changed = [work / "r2.png", work / "t.jpg"]
    got = store.read("spatial", [row[str(p.resolve())] for p in changed])
    np.testing.assert_array_equal(got, engine_outputs(model, changed))
    assert len(store.done_rows(listing(work))) == 12


def test_two_runs_at_once(tmp_path, model, vgg16_notop_file, folder, reference, forward_images):
    store = new_store(tmp_path / "s.zarr", model, vgg16_notop_file, rows=2)
    spec = ModelSpec(str(vgg16_notop_file))
    results, errors = [], []

    def run():
        try:
            results.append(extract(FeatureStore.open(store.path), listing(folder), spec, batch=1))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(forward_images) == 12 and sum(r.computed for r in results) == 12
    same_store(reference, store)


def test_other_configuration_refused(tmp_path, model, vgg16_notop_file):
    new_store(tmp_path / "s.zarr", model, vgg16_notop_file, spatial=False)
    spec = spec_for(model, "block3_pool", (SIZE, SIZE), False, file_digest(vgg16_notop_file))
    with pytest.raises(ConvscopeError, match="another layer"):
        FeatureStore.create_or_open(tmp_path / "s.zarr", spec)
    with pytest.raises(ConvscopeError, match="no per-position features"):
        new_store(tmp_path / "s.zarr", model, vgg16_notop_file, spatial=True)
    with pytest.raises(ConvscopeError, match="no feature store"):
        FeatureStore.open(tmp_path)


def test_missing_extra_names_it(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "zarr", None)
    with pytest.raises(ConvscopeError, match=r'pip install -e "\.\[scale\]"'):
        FeatureStore.open(tmp_path)


# ------------------------------------------------------------------------ a real local cluster


@pytest.fixture(scope="module")
def client():
    with local_client(2, threads=1, dashboard=False) as c:
        yield c
        c.cluster.close()


def test_distributed_equals_single_process_even_when_a_worker_dies(tmp_path, client, model, vgg16_notop_file,
                                                                    folder, reference):
    spec = ModelSpec(str(vgg16_notop_file))
    plain = new_store(tmp_path / "plain.zarr", model, vgg16_notop_file, rows=2)
    summary = extract(plain, listing(folder), spec, client=client)
    assert summary.computed == 12 and len(summary.unreadable) == 1
    same_store(reference, plain)
    assert all(any(p.startswith("convscope-model") for p in names)
               for names in client.run(lambda dask_worker: list(dask_worker.plugins)).values())

    pids = client.run(os.getpid)
    killed = []

    def kill_one(done, total, rate, eta):
        if not killed and done < total:
            victim = sorted(pids.values())[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    faulty = new_store(tmp_path / "faulty.zarr", model, vgg16_notop_file, rows=2)
    extract(faulty, listing(folder), spec, client=client, batch=1, progress=kill_one)
    assert killed and killed[0] not in client.run(os.getpid).values()
    same_store(reference, faulty)
    import numba.core.config

    numba.core.config.reload_config()  # the cluster left this process's Numba thread count alone


def test_patches_top_k_per_chunk_equals_the_whole(tmp_path, client, reference):
    from engine.scale.patches import store_top_patches

    shutil.copytree(reference.path, tmp_path / "copy.zarr")
    store = FeatureStore.open(tmp_path / "copy.zarr")
    rows = store.done_rows()
    spatial = store.read("spatial", rows)
    spatial[3] = spatial[1]  # ties across chunks: the lower row comes first
    store.group("r+")["spatial"][int(rows[3])] = spatial[3]
    values, positions = dataset.channel_maxima(spatial)
    channels, k = [0, 7, 300, 511], 5
    order = np.argsort(-values[:, channels].T, axis=1, kind="stable")[:, :k]
    for c in (None, client):
        v, r, p = store_top_patches(store, rows, channels, k, client=c)
        np.testing.assert_array_equal(r, rows[order])
        np.testing.assert_array_equal(v, np.take_along_axis(values[:, channels].T, order, axis=1))
        np.testing.assert_array_equal(p, positions[order, np.asarray(channels)[:, None]])
    with pytest.raises(ConvscopeError, match="out of range"):
        store_top_patches(store, rows, [512], 2)


def test_atlas_sample_and_grid(client, reference):
    from engine.scale.atlas import grid_cells, sample_activations

    rows = reference.done_rows()
    spatial = reference.read("spatial", rows)
    here, where = sample_activations(reference, rows, per_image=3, seed=4)
    there, where_there = sample_activations(reference, rows, per_image=3, seed=4, client=client)
    np.testing.assert_array_equal(here, there)
    np.testing.assert_array_equal(where, where_there)
    assert len(here) == 3 * len(rows)
    for vector, (row, i, j) in zip(here, where):
        np.testing.assert_array_equal(vector, spatial[list(rows).index(row), i, j])
    for row in rows:  # three distinct positions per image
        assert len({(i, j) for r, i, j in where if r == row}) == 3
    coords = np.random.default_rng(0).normal(size=(len(here), 2))
    cells, means, counts = grid_cells(coords, here, 3, min_count=2)
    low, high = coords.min(axis=0), coords.max(axis=0)
    brute = {}
    for (x, y), v in zip(coords, here):
        key = (min(int((y - low[1]) / (high[1] - low[1]) * 3), 2), min(int((x - low[0]) / (high[0] - low[0]) * 3), 2))
        brute.setdefault(key, []).append(v)
    expected = sorted((k, np.mean(v, axis=0), len(v)) for k, v in brute.items() if len(v) >= 2)
    assert [tuple(c) for c in cells] == [k for k, _, _ in expected]
    np.testing.assert_allclose(means, [m for _, m, _ in expected], rtol=1e-6, atol=1e-6)
    assert list(counts) == [n for _, _, n in expected]
