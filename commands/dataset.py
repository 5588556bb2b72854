"""Image folders: nearest neighbours, a 2-D embedding, and the patches that excite each channel."""

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import numpy as np
import typer

from engine.errors import ConvscopeError
from engine.images import load_image
from commands.common import (
    Device, DeviceOpt, Out, Overwrite, SaveArray, Seed, Weights, command, dataset_input_hw, dataset_model, load_model,
)
from commands.outputs import check_array_output, check_output, save_array, save_image, write_text
from commands.pictures import activation_zoom, titled
from commands.scale import SchedulerOpt, StoreOpt, WorkersOpt, dask_cluster, store_neighbours, store_view
from commands.folder_cache import (
    PIXEL_SIDE, Gathered, cache_root, feature_source, folder_files, gather, maxima_source, picture_source,
    report_gathered, unpack_maxima,
)


ImagesDir = Annotated[
    Optional[Path],
    typer.Option("--images", "-i", help="Folder of images, searched recursively; unreadable files are skipped (optional with --store).", show_default=False),
]
CacheDir = Annotated[
    Optional[Path],
    typer.Option("--cache-dir", help="Feature cache folder. Default: $XDG_CACHE_HOME/convscope or ~/.cache/convscope.", show_default=False),
]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the feature cache.")]
BatchOpt = Annotated[int, typer.Option("--batch", help="Images per forward pass (memory grows with it).")]
SizeOpt = Annotated[
    Optional[int],
    typer.Option("--size", help="Network input height and width (default 224, or the file's fixed size).", show_default=False),
]


class Pooling(str, Enum):
    avg = "avg"
    flatten = "flatten"


class Metric(str, Enum):
    cosine = "cosine"
    l2 = "l2"


class EmbedMethod(str, Enum):
    pca = "pca"
    tsne = "tsne"
    umap = "umap"


class IndexKind(str, Enum):
    exact = "exact"
    approx = "approx"

DRAWN_AT_MOST = 5_000  # embed --store: thumbnails drawn (evenly spaced over the images); the CSV has all


PoolingOpt = Annotated[
    Pooling,
    typer.Option("--pool", help="Conv/pool layers: 'avg' = global average per channel; 'flatten' = every value. Dense layers: as they are."),
]


def pooled_features(pooling: str, batch: int, pictures: dict) -> Callable:
    """``folder_features``' sources for neighbours and embeddings: the layer's features pooled
    with ``pooling``, and the images themselves at {name: side}."""
    return lambda model, layer, hw, root: {
        "features": feature_source(model, root, layer, pooling, hw, batch),
        **{name: picture_source(root, side) for name, side in pictures.items()},
    }


@dataclass
class FolderFeatures:
    """What ``folder_features`` found: the model, the layer, the network input (height, width),
    the layer's receptive field (spatial layers only), the per-image sources (to read more images
    the same way) and the arrays gathered over the folder."""

    model: object
    layer: str
    hw: tuple[int, int]
    field: object  # engine.viz.receptive.ReceptiveField, or None
    sources: dict  # {name: PerImage}
    found: Gathered


def folder_features(
    images: Path, files, layer: Optional[str], size: Optional[int], *, weights: Optional[Path],
    device: Device, cache_dir: Optional[Path], no_cache: bool, batch: int, sources: Callable,
    spatial: bool = False,
) -> FolderFeatures:
    """The set-up every folder command shares: load the model and pick the layer (``dataset_model``'s
    default and classifier fallback; ``spatial``: the layer as given, which must have a receptive
    field), the input size, the cache, and then, over ``files``, every array that
    ``sources(model, layer, hw, cache root) -> {name: PerImage}`` names (the first is the one the
    one-line report counts as computed). ``sources`` may raise to refuse before the slow pass."""
    from engine.viz.receptive import receptive_field

    field = None
    if spatial:
        model = load_model(weights, device)
        field = receptive_field(model, layer)
    else:
        model, layer = dataset_model(weights, device, layer)
    hw = dataset_input_hw(model, size, layer)
    wanted = sources(model, layer, hw, cache_root(cache_dir, no_cache))
    found = gather(files, wanted, batch, f"{len(files)} files")
    report_gathered(found, images)
    return FolderFeatures(model, layer, hw, field, wanted, found)


def need_images(images: Optional[Path], store: Optional[Path]) -> None:
    if images is None and store is None:
        raise ConvscopeError("give --images DIR (a folder of images), or --store with a feature store")


@command()
def neighbors(
    query: Annotated[Path, typer.Argument(help="The query image.", show_default=False)],
    images: ImagesDir = None,
    top: Annotated[int, typer.Option("--top", "-k", help="How many neighbours per row.")] = 8,
    layer: Annotated[
        Optional[str],
        typer.Option("--layer", "-l", help="Feature layer. Default: fc2 with the classifier file, else block5_pool (with --store: the store's).", show_default=False),
    ] = None,
    pooling: PoolingOpt = Pooling.avg,
    metric: Annotated[Metric, typer.Option("--metric", help="Feature distance: 'cosine' (1 - cos) or 'l2'.")] = Metric.cosine,
    index: Annotated[
        IndexKind, typer.Option("--index", help="With --store: 'exact' (blockwise brute force) or 'approx' (pynndescent's index: pays for itself over many queries, not one).")
    ] = IndexKind.exact,
    size: SizeOpt = None,
    thumb: Annotated[int, typer.Option("--thumb", help="Thumbnail side in pixels.")] = 96,
    batch: BatchOpt = 16,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    store: StoreOpt = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: Out = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
):
    """Nearest neighbours of an image in a folder: in feature space (top row) and in pixel space (bottom row).

    Pixel space is the images at 32 x 32 (RGB in [0, 1]) with the L2 distance (not with
    --store, which holds features only). The query itself (the same path) is never its own
    neighbour; another copy of it is, at distance 0.
    """
    from engine.viz.dataset import captioned_row, nearest, pixel_vectors, side_by_side, stack_rows

    if top < 1 or thumb < 8:
        raise ConvscopeError(f"--top {top} must be at least 1 and --thumb {thumb} at least 8")
    need_images(images, store)
    if store is not None and pooling != Pooling.avg:
        raise ConvscopeError("--store holds features averaged over positions: use --pool avg, or drop --store")
    query_picture = load_image(query, size=(thumb, thumb))  # a bad query fails before the slow load
    files = folder_files(images) if images is not None else None
    out = check_output(out if out is not None else Path(f"{query.stem}_neighbors.png"), overwrite)
    check_array_output(array_path, overwrite)
    if store is not None:
        spaces, paths, layer = store_neighbours(query, images, store, layer, size, metric.value, index == IndexKind.approx, top,
                                                seed, weights=weights, device=device, batch=batch, scheduler=scheduler, workers=workers)
        where = store
    else:
        folder = folder_features(
            images, files, layer, size, weights=weights, device=device, cache_dir=cache_dir, no_cache=no_cache,
            batch=batch, sources=pooled_features(pooling.value, batch, {"pixels": PIXEL_SIDE}),
        )
        layer, found = folder.layer, folder.found
        paths, where = found.paths, images
        mine = gather([query], folder.sources, strict=True)
        exclude = [i for i, path in enumerate(paths) if path.resolve() == query.resolve()]
        spaces = []
        for title, items, q, how in (
            (f"features: {layer} ({pooling.value}), {metric.value}", found.arrays["features"], mine.arrays["features"][0], metric.value),
            (f"pixels: {PIXEL_SIDE}x{PIXEL_SIDE} RGB, l2", pixel_vectors(found.arrays["pixels"]), pixel_vectors(mine.arrays["pixels"])[0], "l2"),
        ):
            spaces.append((title, *nearest(q, items, top, how, exclude=exclude)))
    rows = []
    for title, indices, dist in spaces:
        if len(indices) == 0:
            raise ConvscopeError(f"{where}: no image other than the query to compare with")
        typer.echo(f"{title}:")
        for rank, (i, d) in enumerate(zip(indices, dist), start=1):
            typer.echo(f"{rank:>3}. {d:.4f}  {paths[i]}")
        thumbs = np.stack([load_image(paths[i], size=(thumb, thumb)) for i in indices])
        rows.append(titled(captioned_row(thumbs, [f"{d:.3f}" for d in dist]), title))
    left = titled(captioned_row(query_picture[None], [query.name[: thumb // 6]]), "query")
    picture = side_by_side(left, stack_rows(rows))
    save_image(out, picture, overwrite)
    save_array(array_path, np.stack([dist for _, _, dist in spaces]), overwrite)  # (2, top): features, then pixels
    typer.echo(f"wrote {out} ({picture.shape[1]}x{picture.shape[0]})")


@command()
def embed(
    images: ImagesDir = None,
    method: Annotated[
        EmbedMethod, typer.Option("--method", help="'pca' (numpy), 'tsne' (the tsne extra; openTSNE with --store) or 'umap' (the scale extra).")
    ] = EmbedMethod.pca,
    layer: Annotated[
        Optional[str],
        typer.Option("--layer", "-l", help="Feature layer. Default: fc2 with the classifier file, else block5_pool (with --store: the store's).", show_default=False),
    ] = None,
    pooling: PoolingOpt = Pooling.avg,
    perplexity: Annotated[float, typer.Option("--perplexity", help="t-SNE perplexity (capped at (n - 1) / 3).")] = 30.0,
    canvas: Annotated[int, typer.Option("--canvas", help="Side of the square picture in pixels.")] = 2000,
    thumb: Annotated[int, typer.Option("--thumb", help="Thumbnail side in pixels.")] = 64,
    size: SizeOpt = None,
    batch: BatchOpt = 16,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    store: StoreOpt = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: Out = None,
    csv_path: Annotated[
        Optional[Path], typer.Option("--csv", help="Coordinates as CSV (path,x,y). Default: the picture's name with .csv.", show_default=False)
    ] = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
):
    """A folder's images placed at a 2-D embedding of their features (later images on top), and the coordinates as CSV.

    With --store, at most 5,000 thumbnails (evenly spaced over the images) are drawn; the CSV
    has every image.
    """
    import csv
    import io

    from engine.viz.dataset import embedding_canvas, pca_2d, require_tsne, tsne_2d, tsne_perplexity

    if thumb < 1 or canvas < thumb:
        raise ConvscopeError(f"--thumb {thumb} must be at least 1 and --canvas {canvas} at least the thumbnail")
    need_images(images, store)
    if store is not None and pooling != Pooling.avg:
        raise ConvscopeError("--store holds features averaged over positions: use --pool avg, or drop --store")
    if method == EmbedMethod.tsne and store is None:
        require_tsne()
    if method != EmbedMethod.pca:
        from engine.scale import require

        if method == EmbedMethod.umap:
            require("umap", "--method umap")
        elif store is not None:
            require("openTSNE", "t-SNE with --store")
    if method == EmbedMethod.tsne and perplexity <= 0:
        raise ConvscopeError(f"--perplexity {perplexity}: give a positive number")
    files = folder_files(images) if images is not None else None
    out = check_output(out if out is not None else Path(f"embed_{method.value}.png"), overwrite)
    csv_path = check_output(csv_path if csv_path is not None else out.with_suffix(".csv"), overwrite, suffixes={".csv"})
    check_array_output(array_path, overwrite)
    if store is not None:
        with dask_cluster(scheduler, workers) as cluster:
            found, paths, rows, _ = store_view(store, images, layer, size, False, weights=weights, device=device,
                                               batch=batch, cluster=cluster)
        features = found.read("pooled", np.sort(rows))[np.argsort(np.argsort(rows))]
        layer, where = found.spec.layer, store
    else:
        folder = folder_features(
            images, files, layer, size, weights=weights, device=device, cache_dir=cache_dir, no_cache=no_cache,
            batch=batch, sources=pooled_features(pooling.value, batch, {"thumbs": thumb}),
        )
        layer, paths, features, where = folder.layer, folder.found.paths, folder.found.arrays["features"], images
    if len(paths) < 2:
        raise ConvscopeError(f"{where}: an embedding needs at least 2 readable images, found {len(paths)}")
    if method == EmbedMethod.pca:
        if store is not None:
            from engine.scale.embed import pca_2d as pca_by_covariance

            coords = pca_by_covariance(features)
        else:
            coords = pca_2d(features)
        how = "PCA"
    elif method == EmbedMethod.umap:
        from engine.scale.embed import umap_2d

        coords, how = umap_2d(features, seed=seed), "UMAP"
    else:
        if store is not None:
            from engine.scale.embed import tsne_2d as open_tsne

            coords = open_tsne(features, perplexity, seed)
        else:
            coords = tsne_2d(features, perplexity, seed)
        how = f"t-SNE (perplexity {tsne_perplexity(len(coords), perplexity):g})"
    if store is not None:
        drawn = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), DRAWN_AT_MOST)).round().astype(np.int64))
        thumbs = np.stack([load_image(paths[i], size=(thumb, thumb)) for i in drawn])
        picture = embedding_canvas(thumbs, coords[drawn], canvas)
    else:
        drawn = np.arange(len(paths))
        picture = embedding_canvas(folder.found.arrays["thumbs"], coords, canvas)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "x", "y"])
    for path, (x, y) in zip(paths, coords):
        writer.writerow([str(path), f"{x:.9g}", f"{y:.9g}"])
    save_image(out, picture, overwrite)
    write_text(csv_path, text.getvalue(), overwrite)
    save_array(array_path, coords, overwrite)
    shown = "" if len(drawn) == len(paths) else f", {len(drawn)} drawn"
    typer.echo(f"wrote {out} ({canvas}x{canvas}: {len(coords)} images by {how} of {layer}{shown}) and {csv_path}")


@command()
def patches(
    images: ImagesDir = None,
    layer: Annotated[
        Optional[str], typer.Option("--layer", "-l", help="Convolution or pooling layer. Default: block4_conv1 (with --store: the store's).", show_default=False)
    ] = None,
    channels: Annotated[str, typer.Option("--channels", help="Channels, e.g. 0-15 or 3,7,9 (one row each).")] = "0-15",
    top: Annotated[int, typer.Option("--top", "-k", help="Images per channel, strongest first.")] = 9,
    size: Annotated[int, typer.Option("--size", help="Network input height and width; patches are cut from the images at this size.")] = 224,
    margin: Annotated[int, typer.Option("--margin", help="Pixels between patches.")] = 2,
    batch: BatchOpt = 16,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    store: StoreOpt = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    out: Out = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
):
    """The image regions that excite each channel most: the receptive field of each image's arg-max, one row per channel.

    Each image gives at most one patch per channel (its strongest position). Parts of a field
    beyond the image border show the network's zero padding (the ImageNet mean colour). With
    --store (filled with `features --spatial`), the top images are found per store chunk on the
    Dask workers and then merged; ties go to the image stored first.
    """
    from engine.viz.dataset import Patches, patch_tiles, top_patches
    from engine.viz.filters import parse_filter_spec
    from engine.viz.pictures import enlarge, stitch_grid
    from engine.viz.receptive import receptive_field

    chosen = parse_filter_spec(channels)
    if top < 1 or margin < 0:
        raise ConvscopeError(f"--top {top} must be at least 1 and --margin {margin} not negative")
    need_images(images, store)
    files = folder_files(images) if images is not None else None
    out = check_output(out if out is not None else Path(f"patches_{layer or 'block4_conv1'}.png"), overwrite)
    check_array_output(array_path, overwrite)
    if store is not None:
        from engine.scale.patches import store_top_patches

        with dask_cluster(scheduler, workers) as cluster:
            found, paths, rows, model = store_view(store, images, layer, size, True, weights=weights, device=device,
                                                   batch=batch, cluster=cluster)
            order = np.argsort(rows, kind="stable")
            values, best_rows, positions = store_top_patches(found, rows[order], chosen, top, client=cluster.client())
        layer, hw = found.spec.layer, tuple(found.spec.input_hw)
        field = receptive_field(model if model is not None else load_model(weights, device), layer)
        at = {int(r): int(i) for i, r in enumerate(rows)}
        images_of = np.vectorize(lambda r: at[int(r)], otypes=[np.int64])(best_rows) if best_rows.size else best_rows
        boxes = np.array([[field.clamped_box(i, j, hw) for i, j in row] for row in positions], dtype=np.int64)
        best = Patches(np.asarray(chosen), images_of, values, positions, boxes.reshape(len(chosen), -1, 4))
    else:
        layer = layer or "block4_conv1"

        def maxima(model, layer, hw, root):
            n_channels = model.output_shapes(hw, upto=model.layer_index(layer))[-1][-1]
            if max(chosen) >= n_channels:
                raise ConvscopeError(f"channel {max(chosen)} is out of range: {layer} has {n_channels} channels (0 to {n_channels - 1})")
            return {"maxima": maxima_source(model, root, layer, hw, batch)}

        folder = folder_features(
            images, files, layer, size, weights=weights, device=device, cache_dir=cache_dir, no_cache=no_cache,
            batch=batch, sources=maxima, spatial=True,
        )
        field, hw, paths = folder.field, folder.hw, folder.found.paths
        values, positions = unpack_maxima(folder.found.arrays["maxima"])
        best = top_patches(values, positions, field, hw, chosen, top)
    sources = {int(i): load_image(paths[int(i)], size=(hw[1], hw[0])) for i in np.unique(best.images)}
    tiles = patch_tiles(sources, best, field)
    rows, columns = tiles.shape[:2]
    zoom = activation_zoom(min(field.size))
    tiles = enlarge(tiles.reshape((rows * columns,) + tiles.shape[2:]), zoom)
    picture = stitch_grid(tiles, rows=rows, columns=columns, margin=margin, fill=255)
    for row, channel in enumerate(best.channels):
        i = best.images[row, 0]
        typer.echo(
            f"channel {int(channel):>4}: max {best.values[row, 0]:.4g} in {paths[int(i)]} "
            f"at {tuple(int(v) for v in best.positions[row, 0])}, field {tuple(int(v) for v in best.boxes[row, 0])}"
        )
    save_image(out, picture, overwrite)
    save_array(array_path, best.values, overwrite)  # (channels, top): each patch's activation
    typer.echo(
        f"wrote {out} ({picture.shape[1]}x{picture.shape[0]}: {rows} channels x {columns} patches of "
        f"{field.size[0]} px, the receptive field of {layer})"
    )
