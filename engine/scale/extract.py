"""Fill a feature store on Dask: one task per row chunk, each worker holding the model once.

The driver (``extract``) lists the work with ``FeatureStore.sync`` and submits ``fill_chunk``
for each row chunk through a ``dask.distributed`` client (``client.map``, results taken with
``as_completed``); without a client the same function runs in this process, chunk after chunk.
A task takes the chunk's lock, rereads which rows still need reading, hashes and decodes those
images, runs the forward pass ``batch`` images at a time, and writes the features and then the
rows' status. A worker that dies mid-task loses only its lock (the OS drops it); the scheduler
runs the task again elsewhere and it redoes the rows not yet marked DONE.

The model: ``EngineModel`` is a worker plugin that loads the weights when a worker starts (and
when a restarted worker joins); ``worker_model`` finds it, or, outside a worker, loads the model
once per process. Its forward passes are serialised by a lock, so a worker with several threads
is safe (one thread per worker is the efficient choice: the kernels are multi-threaded).

The features of an image do not depend on its batch or its worker (the engine's forward pass
is per-image deterministic), so a store filled by any number of workers, in any order, with
failures, holds the same bytes as one filled by a single process.
"""

import functools
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from engine.errors import ConvscopeError
from engine.scale.digest import stat_key
from engine.scale.store import DONE, PENDING, STALE, UNREADABLE, FeatureStore, Work

PLUGIN_PREFIX = "convscope-model"


@dataclass(frozen=True)
class ModelSpec:
    """Which model a worker loads: the weights file (a path every worker can read) and device."""

    weights: str
    device: str = "cpu"
    conv: Optional[str] = None

    @property
    def plugin_name(self) -> str:
        from engine.scale.digest import bytes_digest

        return f"{PLUGIN_PREFIX}-{bytes_digest(repr((self.weights, self.device, self.conv)).encode())[:12]}"


class LoadedModel:
    """A model and the lock that serialises its forward passes (its buffers are reused)."""

    def __init__(self, spec: ModelSpec):
        import engine

        self.model = engine.load(spec.weights, device=spec.device, conv=spec.conv)
        self.lock = threading.Lock()

    def forward(self, images: np.ndarray, layer: str) -> np.ndarray:
        from engine.preprocess import preprocess_input

        with self.lock:
            return self.model.forward(preprocess_input(images), layer)[layer]


def engine_model_plugin(spec: ModelSpec):
    """A ``distributed.WorkerPlugin`` that loads ``spec`` once on every worker, present and future."""
    from distributed import WorkerPlugin

    class EngineModel(WorkerPlugin):
        name = spec.plugin_name
        idempotent = True  # registered again (another run on the same cluster): keep the loaded model

        def __init__(self):
            self.spec, self.loaded = spec, None

        def setup(self, worker):
            self.loaded = LoadedModel(self.spec)

    return EngineModel()


@functools.lru_cache(maxsize=2)
def _process_model(spec: ModelSpec) -> LoadedModel:
    return LoadedModel(spec)


def worker_model(spec: ModelSpec) -> LoadedModel:
    """The model of this worker (its plugin), or of this process when not on a Dask worker."""
    try:
        from distributed import get_worker

        plugin = get_worker().plugins.get(spec.plugin_name)
        if plugin is not None and plugin.loaded is not None:
            return plugin.loaded
    except (ImportError, ValueError):  # ValueError: not running on a worker
        pass
    return _process_model(spec)


@dataclass
class ChunkResult:
    """What a task did: rows read and computed, rows whose unchanged content kept their
    features, and unreadable files with the reason."""

    chunk: int
    computed: int = 0
    kept: int = 0
    unreadable: list = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.computed + self.kept + len(self.unreadable)


def _read_image(path: str, hw):
    """(raw bytes' digest as uint8 (16,), stat, own (h, w), uint8 RGB at ``hw``) of one file."""
    from engine.images import load_image, resize_image
    from engine.scale.digest import file_digest

    stat = stat_key(path)
    digest = np.frombuffer(bytes.fromhex(file_digest(path)), np.uint8)
    rgb = load_image(path)
    return digest, stat, rgb.shape[:2], resize_image(rgb, (hw[1], hw[0]))


def fill_chunk(store_path: str, work: Work, model: ModelSpec, batch: int = 16) -> ChunkResult:
    """Read and store the rows of ``work`` that still need it (the Dask task; see the module
    docstring). Holds the chunk's lock throughout."""
    from engine.viz.dataset import pool_features

    store = FeatureStore.open(store_path)
    spec, result = store.spec, ChunkResult(work.chunk)
    with store.lock(f"chunk-{work.chunk}"):
        group = store.group("r+")
        lo, hi = store.chunk_rows(work.chunk, group["status"].shape[0])
        status, old_digest = group["status"][lo:hi], group["digest"][lo:hi]
        paths = group["paths"][lo:hi]
        kept, todo, pictures, info = [], [], [], {}
        for row in work.rows:
            if status[row - lo] not in (PENDING, STALE):
                continue
            path = str(paths[row - lo])
            try:
                digest, stat, own_hw, rgb = _read_image(path, spec.input_hw)
            except (ConvscopeError, OSError) as exc:
                result.unreadable.append((row, path, str(exc)))
                continue
            info[row] = (digest, stat, own_hw)
            if status[row - lo] == STALE and np.array_equal(digest, old_digest[row - lo]):
                kept.append(row)
            else:
                todo.append(row)
                pictures.append(rgb)
        if todo:
            loaded = worker_model(model)
            pooled, spatial = [], []
            for start in range(0, len(todo), max(1, int(batch))):
                out = loaded.forward(np.stack(pictures[start : start + max(1, int(batch))]), spec.layer)
                pooled.append(pool_features(out, "avg"))
                if spec.spatial_shape is not None:
                    spatial.append(out)
            features = {"pooled": np.concatenate(pooled)}
            if spec.spatial_shape is not None:
                features["spatial"] = np.concatenate(spatial)
            store.write_chunk(group, work.chunk, todo, features)
        done = todo + kept
        if done:
            store.write_chunk(group, work.chunk, done, {
                "digest": [info[r][0] for r in done], "bytes": [info[r][1][1] for r in done],
                "mtime_ns": [info[r][1][2] for r in done], "image_hw": [info[r][2] for r in done],
                "status": [DONE] * len(done),
            })
        if result.unreadable:
            store.write_chunk(group, work.chunk, [r for r, _, _ in result.unreadable],
                              {"status": [UNREADABLE] * len(result.unreadable)})
        result.computed, result.kept = len(todo), len(kept)
    return result


@dataclass
class Summary:
    """A run's totals: images computed, kept (unchanged content), unreadable, already done."""

    computed: int = 0
    kept: int = 0
    unreadable: list = field(default_factory=list)
    up_to_date: int = 0
    seconds: float = 0.0


def extract(store: FeatureStore, files, model: ModelSpec, client=None, batch: int = 16,
            progress: Optional[Callable] = None, connect: Optional[Callable] = None) -> Summary:
    """Bring ``store`` up to date with ``files``: every listed image read once and its features
    stored. ``client``: a ``distributed.Client`` (its workers do the work), else this process;
    ``connect()``: called for a client only when there is work. ``progress(done, total,
    images_per_second, eta_seconds)`` after each chunk."""
    work, rows = store.sync(files)
    if work and client is None and connect is not None:
        client = connect()
    total = sum(len(w.rows) for w in work)
    summary = Summary(up_to_date=len([r for r in rows if r is not None]) - total)
    started = time.perf_counter()

    def account(result: ChunkResult) -> None:
        summary.computed += result.computed
        summary.kept += result.kept
        summary.unreadable += result.unreadable
        if progress is not None:
            done = summary.computed + summary.kept + len(summary.unreadable)
            elapsed = max(time.perf_counter() - started, 1e-9)
            rate = done / elapsed
            progress(done, total, rate, (total - done) / rate if rate > 0 else float("inf"))

    if client is None:
        for item in work:
            account(fill_chunk(str(store.path), item, model, batch))
    elif work:
        from distributed import as_completed

        client.register_plugin(engine_model_plugin(model), name=model.plugin_name)
        futures = client.map(fill_chunk, [str(store.path)] * len(work), work, model=model, batch=batch,
                             pure=False, retries=2)
        for future in as_completed(futures):
            account(future.result())
    summary.seconds = time.perf_counter() - started
    return summary


def local_client(workers: int, threads: Optional[int] = None, dashboard: bool = True):
    """A ``distributed.Client`` on a new local cluster of ``workers`` processes, one Dask thread
    each, the machine's cores shared among them for the kernels (``threads`` each). OpenBLAS and
    OpenMP counts go in Dask's pre-spawn environment (read before the worker imports NumPy; Dask
    otherwise pins them to 1, and it also writes them into this process's environment); Numba's
    goes in the worker's own environment, so that this process's Numba never sees it change."""
    import dask
    from distributed import Client, LocalCluster

    cores = os.cpu_count() or 1
    threads = str(max(1, int(threads) if threads else cores // max(1, workers)))
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    environ.update({name: threads for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(
            n_workers=int(workers), threads_per_worker=1, processes=True, env={"NUMBA_NUM_THREADS": threads},
            dashboard_address=":0" if dashboard else None,
        )
    return Client(cluster)


def default_workers() -> int:
    """One local worker per group of four cores (at least one)."""
    return max(1, (os.cpu_count() or 1) // 4)


def spec_for(model, layer: str, input_hw, spatial: bool, weights_digest: str, rows_per_chunk: int = 256):
    """The ``StoreSpec`` of ``layer``'s features at ``input_hw`` (checked against the model)."""
    from engine.scale.store import StoreSpec

    shape = model.output_shapes(tuple(input_hw), upto=model.layer_index(layer))[-1]
    if spatial and len(shape) != 3:
        raise ConvscopeError(f"layer {layer} is not spatial: --spatial needs a convolution or pooling layer")
    pooled = (shape[-1],)
    return StoreSpec(weights_digest, Path(model.path).name, layer, tuple(int(v) for v in input_hw), pooled,
                     tuple(int(v) for v in shape) if spatial else None, int(rows_per_chunk))
