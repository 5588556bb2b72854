"""`atlas`: an activation atlas (Carter et al., 2019) of an image folder, from a Zarr feature store.

Spatial activations of one layer are sampled over the store's images (``--per-image`` positions
each; the store is filled first with `--images`, as `features --spatial` does), laid out in 2-D
(UMAP as Lucid, or PCA), averaged per cell of a ``--grid`` x ``--grid`` grid, and each occupied
cell's mean rendered by feature visualisation with the direction objective
(``engine.scale.atlas_render``). Writes the atlas PNG (empty cells white), an HTML page beside
it (the PNG embedded; per cell: activations, top channels, the objective before and after,
example images) and the layout CSV (one row per sampled activation).
"""

import base64
import csv
import html
import io
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from engine.errors import ConvscopeError
from commands.common import DeviceOpt, Device, Out, Overwrite, SaveArray, Seed, Weights, command, load_model, progress
from commands.folder_cache import WEIGHTS_MEMO, default_cache_dir
from commands.outputs import check_array_output, check_output, save_array, save_image, write_text
from commands.scale import SchedulerOpt, WorkersOpt, dask_cluster, store_view

TOP_CHANNELS = 3  # channels listed per cell on the page
EXAMPLES = 3  # example images listed per cell on the page
UMAP_NEIGHBOURS, UMAP_MIN_DIST = 20, 0.01  # Lucid's activation-atlas notebooks (tight clusters)


class Layout(str, Enum):
    umap = "umap"
    pca = "pca"


def _layout(vectors, how: Layout, seed: int) -> np.ndarray:
    from engine.scale.embed import pca_2d, umap_2d

    if how == Layout.pca:
        return pca_2d(vectors)
    if len(vectors) < 3:
        raise ConvscopeError(f"UMAP needs at least 3 activations, got {len(vectors)} (use --layout pca or more images)")
    with warnings.catch_warnings():  # umap-learn's note that a seed means one thread
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        return umap_2d(vectors, neighbours=UMAP_NEIGHBOURS, min_dist=UMAP_MIN_DIST, seed=seed)


def _check_weights(model, spec) -> None:
    """The rendering network must be the one whose features the store holds."""
    from engine.scale.digest import remembered_digest

    if remembered_digest(model.path, default_cache_dir() / WEIGHTS_MEMO) != spec.weights_digest:
        raise ConvscopeError(f"the store's features come from {spec.weights_name}, not {Path(model.path).name}: "
                             "give --weights with that file")


@command()
def atlas(
    store: Annotated[Path, typer.Option("--store", help="Zarr feature store (a folder); with --images, filled first (per-position features).", show_default=False)],
    images: Annotated[Optional[Path], typer.Option("--images", "-i", help="Folder of images, searched recursively (optional when the store is filled).", show_default=False)] = None,
    layer: Annotated[Optional[str], typer.Option("--layer", "-l", help="Convolution or pooling layer. Default: the store's, or block4_conv1.", show_default=False)] = None,
    grid: Annotated[int, typer.Option("--grid", help="Cells per side of the atlas.")] = 8,
    layout: Annotated[Layout, typer.Option("--layout", help="2-D layout of the activations: 'umap' (Lucid's; the scale extra) or 'pca' (fast).")] = Layout.umap,
    per_image: Annotated[int, typer.Option("--per-image", help="Positions sampled per image.")] = 4,
    min_count: Annotated[int, typer.Option("--min-count", help="Cells with fewer activations stay empty.")] = 1,
    cell_size: Annotated[int, typer.Option("--cell-size", help="Side of each cell's picture (pixels).")] = 80,  # engine.scale.atlas_render.ICON_SIZE
    steps: Annotated[int, typer.Option("--steps", help="Adam steps per cell picture.")] = 128,  # ICON_STEPS
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate (Lucid's 0.05).")] = 0.05,
    robust: Annotated[bool, typer.Option("--robust/--no-robust", help="Lucid's random pad, jitter, scale and rotation at each step.")] = True,
    cells_per_batch: Annotated[int, typer.Option("--cells-per-batch", help="Cells optimised together (memory grows with it).")] = 64,
    size: Annotated[Optional[int], typer.Option("--size", help="Network input height and width for the features (default 224).", show_default=False)] = None,
    batch: Annotated[int, typer.Option("--batch", help="Images per forward pass when filling the store.")] = 16,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: Out = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
):
    """An activation atlas: a layer's activations over a folder, laid out in 2-D, gridded, each cell's mean rendered.

    Writes the atlas (--out, default atlas.png), an HTML page beside it with each cell's count,
    top channels and example images, and the layout as CSV (every sampled activation's image,
    position, 2-D coordinates and cell). The same seed gives the same bytes.
    """
    from engine.scale import require
    from engine.scale.atlas import grid_cells, grid_positions, sample_activations
    from engine.scale.atlas_render import render_icons, stitch_atlas

    require("zarr", "the feature store")
    if grid < 1 or per_image < 1 or cell_size < 1 or steps < 1 or cells_per_batch < 1 or lr <= 0:
        raise ConvscopeError("--grid, --per-image, --cell-size, --steps, --cells-per-batch and --lr must be positive")
    out = check_output(out if out is not None else Path("atlas.png"), overwrite, suffixes={".png"})
    page = check_output(out.with_suffix(".html"), overwrite, suffixes=None)
    table = check_output(out.with_suffix(".csv"), overwrite, suffixes=None)
    check_array_output(array_path, overwrite)
    if layout == Layout.umap:
        require("umap", "the UMAP layout")
    with dask_cluster(scheduler, workers) as cluster:
        found, paths, rows, model = store_view(store, images, layer if images is None else layer or "block4_conv1", size,
                                               True, weights=weights, device=device, batch=batch, cluster=cluster)
        order = np.argsort(rows, kind="stable")
        vectors, where = sample_activations(found, rows[order], per_image, seed, client=cluster.client())
    spec = found.spec
    if model is None:
        model = load_model(weights, device)
    _check_weights(model, spec)
    coords = _layout(vectors, layout, seed)
    cells, means, counts = grid_cells(coords, vectors, grid, min_count)
    if len(cells) == 0:
        raise ConvscopeError(f"no cell holds --min-count {min_count} of the {len(vectors)} activations: lower it or use a smaller --grid")
    with progress(f"rendering {len(cells)} cells", len(cells) * steps) as update:
        icons = render_icons(model, spec.layer, cells, means, size=cell_size, steps=steps, lr=lr, seed=seed,
                             batch=cells_per_batch, robust=robust, callback=update)
    picture = stitch_atlas(cells, icons.images, grid)
    stored = found.manifest()["paths"]
    cell_of = grid_positions(coords, grid)
    csv_text = _layout_csv(stored, where, coords, cell_of, {tuple(c) for c in cells.tolist()})
    page_text = _page(spec, layout.value, grid, picture, cells, means, counts, icons, stored, where, cell_of, len(vectors))
    save_image(out, picture, overwrite)
    write_text(page, page_text, overwrite)
    write_text(table, csv_text, overwrite)
    save_array(array_path, means, overwrite)  # (cells, channels): each rendered cell's mean activation
    typer.echo(f"wrote {out} ({picture.shape[1]}x{picture.shape[0]}: {len(cells)} of {grid * grid} cells from "
               f"{len(vectors)} activations of {spec.layer} over {len(rows)} images, {layout.value} layout), {page} and {table}")


def _layout_csv(stored, where, coords, cell_of, kept) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "i", "j", "x", "y", "row", "column", "rendered"])
    for (row, i, j), (x, y), (r, c) in zip(where.tolist(), coords, cell_of.tolist()):
        writer.writerow([stored[row], i, j, f"{x:.9g}", f"{y:.9g}", r, c, int((r, c) in kept)])
    return text.getvalue()


def _png_data(picture) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _page(spec, how, grid, picture, cells, means, counts, icons, stored, where, cell_of, total) -> str:
    """A self-contained page: the atlas (embedded) with a tooltip per cell, then a table of cells."""
    size = picture.shape[0] // grid
    boxes, lines = [], []
    for k, ((r, c), mean, count) in enumerate(zip(cells.tolist(), means, counts)):
        top = np.argsort(-mean, kind="stable")[:TOP_CHANNELS]
        channels = ", ".join(f"{int(ch)} ({mean[ch]:.3g})" for ch in top)
        mine = np.flatnonzero((cell_of[:, 0] == r) & (cell_of[:, 1] == c))
        examples = list(dict.fromkeys(Path(stored[where[m, 0]]).name for m in mine))[:EXAMPLES]
        tip = html.escape(f"cell ({r}, {c}): {int(count)} activations; top channels {channels}")
        boxes.append(f'<div class="cell" style="left:{c * size}px;top:{r * size}px;width:{size}px;height:{size}px" title="{tip}"></div>')
        lines.append(f"<tr><td>({r}, {c})</td><td>{int(count)}</td><td>{html.escape(channels)}</td>"
                     f"<td>{icons.start[k]:.4f} &rarr; {icons.final[k]:.4f}</td><td>{html.escape(', '.join(examples))}</td></tr>")
    title = html.escape(f"Activation atlas of {spec.layer}: {len(cells)} of {grid * grid} cells")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif}} .atlas{{position:relative;display:inline-block}}
.cell{{position:absolute}} .cell:hover{{outline:2px solid #e33}} td,th{{padding:2px 8px;text-align:left}}</style></head>
<body><h1>{title}</h1>
<p>{total} activations of {html.escape(spec.layer)} ({html.escape(spec.weights_name)}, input {spec.input_hw[0]}x{spec.input_hw[1]})
laid out by {how.upper()} on a {grid}x{grid} grid; each cell shows the picture that maximises the direction of its
mean activation (mean cosine over positions). Hover a cell for its count and top channels.</p>
<div class="atlas"><img src="data:image/png;base64,{_png_data(picture)}" alt="activation atlas" width="{picture.shape[1]}" height="{picture.shape[0]}">
{chr(10).join(boxes)}
</div>
<table><tr><th>cell (row, column)</th><th>activations</th><th>top channels (mean)</th><th>direction objective start &rarr; final</th><th>example images</th></tr>
{chr(10).join(lines)}
</table>
</body></html>
"""
