"""Image folders at scale: `features` fills a Zarr feature store on Dask; the `--store` options of
neighbors, embed and patches read from it (and bring it up to date with `--images` first).

The cluster: `--scheduler ADDRESS` (or $DASK_SCHEDULER_ADDRESS) connects to a running one; else
a local cluster of `--workers` processes starts for the command and stops after it (`--workers
0`: no cluster, this process does the work). Everything here needs the scale extra.
"""

import contextlib
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from engine.errors import ConvscopeError
from commands.common import (
    DeviceOpt, Device, Weights, _interactive, command, dataset_input_hw, dataset_model, one_line,
)
from commands.folder_cache import WEIGHTS_MEMO, default_cache_dir, folder_files, warn

StoreOpt = Annotated[
    Optional[Path],
    typer.Option("--store", help="Zarr feature store (a folder): read features from it; with --images, fill it first.", show_default=False),
]
SchedulerOpt = Annotated[
    Optional[str],
    typer.Option("--scheduler", envvar="DASK_SCHEDULER_ADDRESS", help="Dask scheduler, e.g. tcp://host:8786. Default: a local cluster.", show_default=False),
]
WorkersOpt = Annotated[
    Optional[int],
    typer.Option("--workers", help="Local cluster: worker processes (default one per 4 cores; 0: no cluster, this process).", show_default=False),
]
PROGRESS_EVERY_S = 30.0  # progress lines when stderr is not a terminal


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Cluster:
    """The Dask client of a command, made at the first ``client()`` call: ``scheduler`` (an
    address) connects to a running cluster, else a local cluster of ``workers`` processes starts
    (None: one per 4 cores; 0: no cluster, ``client()`` is None). ``close()`` stops what it started.
    Prints the dashboard link."""

    def __init__(self, scheduler: Optional[str], workers: Optional[int]):
        from engine.scale import require

        require("distributed", "the Dask cluster")
        if workers is not None and workers < 0:
            raise ConvscopeError(f"--workers {workers}: give 0 (this process) or more")
        self.scheduler, self.workers, self._client = scheduler, workers, None

    def client(self):
        if self._client is not None or (self.workers == 0 and not self.scheduler):
            return self._client
        from engine.scale.extract import default_workers, local_client

        if self.scheduler:
            from distributed import Client

            try:
                self._client = Client(self.scheduler, timeout="10s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise ConvscopeError(f"cannot reach the Dask scheduler at {self.scheduler} ({one_line(str(exc))})") from None
        else:
            import logging

            logging.getLogger("distributed").setLevel(logging.ERROR)
            self._client = local_client(default_workers() if self.workers is None else self.workers)
        n = len(self._client.scheduler_info(n_workers=-1)["workers"])
        typer.echo(f"dask: {n} workers, dashboard {self._client.dashboard_link}", err=True)
        return self._client

    def close(self):
        if self._client is not None:
            cluster = None if self.scheduler else self._client.cluster
            self._client.close()
            if cluster is not None:
                cluster.close()
            self._client = None


@contextlib.contextmanager
def dask_cluster(scheduler: Optional[str], workers: Optional[int]):
    cluster = Cluster(scheduler, workers)
    try:
        yield cluster
    finally:
        cluster.close()


def rate_progress(description: str):
    """``progress(done, total, images_per_second, eta_seconds)`` for ``extract``: a bar with the
    rate and ETA on a terminal, else a line every 30 s on stderr."""
    if _interactive(sys.stderr):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        bar = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]:.1f} images/s, ETA {task.fields[eta]}"),
                       console=Console(stderr=True), transient=True)
        state = {}

        def update(done, total, rate, eta):
            if "task" not in state:
                bar.start()
                state["task"] = bar.add_task(description, total=total, rate=0.0, eta="?")
            bar.update(state["task"], completed=done, rate=rate, eta=_duration(eta))
            if done >= total:
                bar.stop()

        return update
    last = [time.monotonic()]

    def line(done, total, rate, eta):
        if time.monotonic() - last[0] >= PROGRESS_EVERY_S:
            last[0] = time.monotonic()
            typer.echo(f"{description}: {done}/{total} images, {rate:.1f} images/s, ETA {_duration(eta)}", err=True)

    return line


def fill_store(store_path: Path, images: Path, layer: Optional[str], size: Optional[int], spatial: bool, *,
               weights, device, batch: int, cluster, rows_per_chunk: int = 256):
    """Bring the store at ``store_path`` up to date with the folder ``images`` (see `features`),
    on ``cluster.client()`` (started only if there is work); returns (store, model, layer,
    files, summary)."""
    from engine.scale import require

    require("zarr", "the feature store")
    from engine.scale.digest import remembered_digest
    from engine.scale.extract import ModelSpec, extract, spec_for
    from engine.scale.store import FeatureStore

    if batch < 1 or rows_per_chunk < 1:
        raise ConvscopeError(f"--batch {batch} and --rows-per-chunk {rows_per_chunk} must be at least 1")
    files = folder_files(images)
    model, layer = dataset_model(weights, device, layer)
    hw = dataset_input_hw(model, size, layer)
    digest = remembered_digest(model.path, default_cache_dir() / WEIGHTS_MEMO)
    store = FeatureStore.create_or_open(store_path, spec_for(model, layer, hw, spatial, digest, rows_per_chunk))
    spec = ModelSpec(str(Path(model.path).resolve()), Device(device).value)
    summary = extract(store, files, spec, batch=batch, progress=rate_progress(f"features of {layer}"), connect=cluster.client)
    for _, path, reason in summary.unreadable:
        warn(f"skipped {one_line(reason)}")
    typer.echo(
        f"{store.path}: {summary.computed + summary.kept + summary.up_to_date} images of {images} "
        f"({summary.computed} computed, {summary.kept} unchanged after a touch, "
        f"{summary.up_to_date} already there; {len(summary.unreadable)} unreadable) in {summary.seconds:.1f} s"
    )
    return store, model, layer, files, summary


def store_rows(store, files=None):
    """(paths, rows) of the store's images that hold features: those of ``files`` in their order,
    else all. At least one, or a one-line error."""
    rows = store.done_rows(files)
    if len(rows) == 0:
        raise ConvscopeError(f"{store.path}: no image with features there (run `features --store {store.path} --images DIR`)")
    paths = store.manifest()["paths"]
    return [Path(paths[r]) for r in rows], rows


@command()
def features(
    images: Annotated[Path, typer.Option("--images", "-i", help="Folder of images, searched recursively; unreadable files are skipped.", show_default=False)],
    store: Annotated[Path, typer.Option("--store", help="The Zarr store (a folder) to create or bring up to date.", show_default=False)],
    layer: Annotated[
        Optional[str],
        typer.Option("--layer", "-l", help="Feature layer. Default: fc2 with the classifier file, else block5_pool.", show_default=False),
    ] = None,
    spatial: Annotated[bool, typer.Option("--spatial", help="Also keep every position's features (for `patches --store`).")] = False,
    size: Annotated[Optional[int], typer.Option("--size", help="Network input height and width (default 224).", show_default=False)] = None,
    batch: Annotated[int, typer.Option("--batch", help="Images per forward pass on a worker.")] = 16,
    rows_per_chunk: Annotated[int, typer.Option("--rows-per-chunk", help="Images per Zarr chunk and per Dask task (new stores).")] = 256,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
):
    """Every image's features in a Zarr store, on a Dask cluster; a second run reads only new or changed images.

    One row per image: its path, file size, content hash and own size, the layer's features
    averaged over positions, and with --spatial every position's. A killed run continues where
    it stopped; two runs on one store share the work.
    """
    with dask_cluster(scheduler, workers) as cluster:
        found, _, layer, _, _ = fill_store(store, images, layer, size, spatial, weights=weights, device=device,
                                           batch=batch, cluster=cluster, rows_per_chunk=rows_per_chunk)
    spec = found.spec
    shapes = f"pooled {spec.pooled_shape[0]}" + (f", spatial {'x'.join(map(str, spec.spatial_shape))}" if spec.spatial_shape else "")
    typer.echo(f"wrote {found.path} ({layer} at {spec.input_hw[0]}x{spec.input_hw[1]}: {shapes}; "
               f"{found.size_on_disk() / 2**20:.1f} MiB on disk)")


def store_view(store_path: Path, images: Optional[Path], layer: Optional[str], size: Optional[int], spatial: bool, *,
               weights, device, batch: int, cluster):
    """What a dataset command reads with ``--store``: (store, paths, rows, model or None). With
    ``images`` the store is first brought up to date with that folder and only its images are
    used; without, every image of the store with features."""
    from engine.scale import require

    require("zarr", "the feature store")
    from engine.scale.store import FeatureStore

    if images is not None:
        store, model, _, files, _ = fill_store(store_path, images, layer, size, spatial, weights=weights, device=device,
                                               batch=batch, cluster=cluster)
        return (store, *store_rows(store, files), model)
    store = FeatureStore.open(store_path)
    if layer is not None and layer != store.spec.layer:
        raise ConvscopeError(
            f"{store_path}: the store holds features of {store.spec.layer}, not {layer}; "
            f"give --images to fill a store for {layer}, or another --store"
        )
    if spatial and store.spec.spatial_shape is None:
        raise ConvscopeError(f"{store_path}: the store has no per-position features (fill one with `features --spatial`)")
    return (store, *store_rows(store), None)


def store_neighbours(query, images, store, layer, size, metric, approx: bool, top, seed, *, weights, device, batch, scheduler, workers):
    """[(title, indices, distances)], paths, layer: the feature neighbours of ``query`` among a
    store's images (the query's features from the store when it is there, else computed)."""
    from commands.common import load_model
    from engine.images import load_image
    from engine.preprocess import preprocess_input
    from engine.scale import neighbours
    from engine.viz.dataset import pool_features

    with dask_cluster(scheduler, workers) as cluster:
        found, paths, rows, model = store_view(store, images, layer, size, False, weights=weights, device=device,
                                               batch=batch, cluster=cluster)
    items = found.read("pooled", np.sort(rows))[np.argsort(np.argsort(rows))]
    spec = found.spec
    mine = [i for i, path in enumerate(paths) if path == query.resolve()]
    if mine:
        q = items[mine[0]]
    else:
        if model is None:
            model = load_model(weights, device)
        picture = load_image(query, size=(spec.input_hw[1], spec.input_hw[0]))
        q = pool_features(model.forward(preprocess_input(picture[None]), spec.layer)[spec.layer], "avg")[0]
    exclude = np.asarray([mine[0] if mine else -1])
    if approx:
        found_idx, dist = neighbours.ApproximateIndex(items, metric, seed=seed).query(q[None], top, exclude=exclude)
    else:
        found_idx, dist = neighbours.exact_knn(items, q[None], top, metric, exclude=exclude)
    how = "pynndescent" if approx else "exact"
    return [(f"features: {spec.layer} (avg, store), {metric}, {how}", found_idx[0], dist[0])], paths, spec.layer
