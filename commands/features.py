"""What the network has learned, without a photo (filters, weights) and with one (activations)."""

import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

import engine
from engine.errors import ConvscopeError
from engine.images import load_image
from commands.common import (
    Device, DeviceOpt, Out, Overwrite, SaveArray, Seed, Weights, shape_text, command, load_model,
    progress, resolve_layer,
)
from commands.outputs import check_array_output, check_output, save_array, save_image
from commands.pictures import activation_picture


@command()
def filters(
    layer: Annotated[str, typer.Option("--layer", "-l", help="Convolution layer whose filters to show.")] = "block5_conv1",
    grid: Annotated[
        int, typer.Option("--grid", help="Grid width; when scanning, the best grid x grid filters are shown.")
    ] = 8,
    size: Annotated[int, typer.Option("--size", help="Side of each filter's picture in pixels.")] = 128,
    steps: Annotated[int, typer.Option("--steps", help="Gradient-ascent steps (per upscaling stage).")] = 20,
    scan: Annotated[int, typer.Option("--scan", help="Scan the first N filters and keep the best.")] = 200,
    chosen: Annotated[
        Optional[str],
        typer.Option("--filters", help="Show these filters in this order instead, e.g. 0-63 or 3,7,9.", show_default=False),
    ] = None,
    step_size: Annotated[float, typer.Option("--step-size", help="Step along the RMS-normalised gradient.")] = 1.0,
    batch: Annotated[int, typer.Option("--batch", help="Filters optimised together (memory grows with it).")] = 32,
    jitter: Annotated[int, typer.Option("--jitter", help="Random shift of up to this many pixels per step.")] = 0,
    scale: Annotated[float, typer.Option("--scale", help="Random rescaling by up to this fraction per step, e.g. 0.05.")] = 0.0,
    rotate: Annotated[float, typer.Option("--rotate", help="Random rotation by up to this many degrees per step.")] = 0.0,
    tv: Annotated[float, typer.Option("--tv", help="Total-variation penalty weight (per input value).")] = 0.0,
    l2: Annotated[float, typer.Option("--l2", help="L2 penalty weight around gray (per input value).")] = 0.0,
    upscale_steps: Annotated[int, typer.Option("--upscale-steps", help="Progressive upscaling stages (0: off).")] = 0,
    upscale_factor: Annotated[float, typer.Option("--upscale-factor", help="Upscaling factor between stages.")] = 1.2,
    margin: Annotated[int, typer.Option("--margin", help="Pixels between pictures.")] = 5,
    param: Annotated[
        str, typer.Option("--param", help="Image parameterisation: pixel (the Keras example) or fft (Lucid's 1/f spectrum).")
    ] = "pixel",
    decorrelate: Annotated[
        bool, typer.Option("--decorrelate", help="Lucid's decorrelated colour space (sigmoid to the valid range).")
    ] = False,
    robust: Annotated[
        bool, typer.Option("--robust", help="Lucid's transformation robustness: pad 12, jitter 8, scale, rotate, jitter 4.")
    ] = False,
    objective: Annotated[
        str, typer.Option("--objective", help="channel (mean of the filter), neuron (its centre) or direction.")
    ] = "channel",
    direction_from: Annotated[
        Optional[Path],
        typer.Option("--direction-from", help="For --objective direction: the photo whose mean activation at the layer "
                     "is the direction.", show_default=False),
    ] = None,
    samples: Annotated[int, typer.Option("--samples", help="Pictures per filter (or of the direction).")] = 1,
    diversity: Annotated[
        float, typer.Option("--diversity", help="Weight of Lucid's diversity penalty between a filter's samples.")
    ] = 0.0,
    lr: Annotated[float, typer.Option("--lr", help="Adam's learning rate for --param fft / --decorrelate.")] = 0.05,
    whole_layer: Annotated[
        bool, typer.Option("--all", help="Every channel of the layer: an atlas PNG and an HTML page, resumable.")
    ] = False,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: Out = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
):
    """What each filter responds to: gradient ascent from gray noise (the Keras example), stitched.

    With --param fft / --decorrelate / --robust: Lucid's feature visualisation (Adam on a Fourier,
    decorrelated image, robust to small moves)."""
    from engine.viz import transforms as tf
    from engine.viz.filters import OBJECTIVES, parse_filter_spec, visualize_filters
    from engine.viz.pictures import stitch_grid

    if grid < 1 or margin < 0:
        raise ConvscopeError(f"--grid {grid} must be at least 1 and --margin {margin} not negative")
    if param not in ("pixel", "fft") or objective not in OBJECTIVES:
        raise ConvscopeError(f"--param {param} / --objective {objective}: use pixel or fft / {', '.join(OBJECTIVES)}")
    if (objective == "direction") != (direction_from is not None):
        raise ConvscopeError("--objective direction needs --direction-from photo.jpg (and only it takes one)")
    several = samples > 1 and chosen is None and objective != "direction"
    if samples < 1 or several or (whole_layer and (chosen or samples > 1 or array_path)):
        raise ConvscopeError("--samples must be >= 1 and needs --filters (or a direction); --all takes none of "
                             "--filters, --samples, --save-array (its tiles are kept beside the atlas)")
    photo = load_image(direction_from) if direction_from is not None else None  # a bad photo fails first
    indices = parse_filter_spec(chosen) if chosen is not None else None
    if whole_layer:
        from commands.layer_atlas import check_atlas_outputs

        check_atlas_outputs(out if out is not None else Path(f"atlas_{layer}.png"), overwrite)
    else:
        out = check_output(out if out is not None else Path(f"filters_{layer}.png"), overwrite)
    check_array_output(array_path, overwrite)
    model = load_model(weights, device)
    resolve_layer(model, layer)
    direction = None
    if photo is not None:
        from engine.images import resize_image

        x = engine.preprocess_input(resize_image(photo, (224, 224)))
        direction = model.forward(x, outputs=[layer])[layer].mean(axis=(0, 1, 2))
    moves = [tf.jitter(jitter)] if jitter > 0 else []
    if scale > 0 or rotate > 0:
        factors = np.linspace(1 - scale, 1 + scale, 5) if scale > 0 else (1.0,)
        degrees = np.linspace(-rotate, rotate, 11) if rotate > 0 else (0.0,)
        moves.append(tf.Affine(factors, degrees))
    options = dict(
        size=size, steps=steps, step_size=step_size, seed=seed, transforms=moves, tv=tv, l2=l2,
        upscale_steps=upscale_steps, upscale_factor=upscale_factor, param=param, decorrelate=decorrelate,
        lr=lr, robust=robust, objective=objective, direction=direction, samples=samples, diversity=diversity,
    )
    start = time.perf_counter()
    if whole_layer:
        from commands.layer_atlas import layer_atlas

        out = out if out is not None else Path(f"atlas_{layer}.png")
        key_options = {**options, "transforms": [jitter, scale, rotate]}  # the moves, as given
        with progress(f"channels of {layer}") as update:
            picture, channels, reused = layer_atlas(
                model, layer, out, weights, model.device, options, batch, overwrite, update, key_options
            )
        typer.echo(
            f"wrote {out} and {out.with_suffix('.html')} ({picture.shape[1]}x{picture.shape[0]}: {channels} channels "
            f"of {layer}, {reused} kept from an earlier run) in {time.perf_counter() - start:.1f} s on {model.device}"
        )
        return
    with progress(f"filters of {layer}") as update:
        result = visualize_filters(model, layer, filters=indices, scan=scan, keep=grid * grid, batch=batch,
                                   callback=update, **options)
    elapsed = time.perf_counter() - start
    n_scanned, n_shown = len(result.scanned_filters), len(result.filters)
    if n_shown == 0:
        raise ConvscopeError(
            f"none of the {n_scanned} filters of {layer} scanned kept a positive loss "
            "(try more --steps, --scan or --filters)"
        )
    columns = min(grid, n_shown)
    picture = stitch_grid(result.images, columns=columns, margin=margin)
    if indices is None:
        n_positive = int((result.scanned_losses > 0).sum())
        typer.echo(
            f"{layer}: scanned {n_scanned} filters, {n_positive} with a positive loss; "
            f"showing the best {n_shown}, best first:"
        )
    else:
        typer.echo(f"{layer}: {n_shown} filters, in the order given:")
    for index, loss in zip(result.filters, result.losses):
        typer.echo(f"  filter {int(index):>4}  loss {float(loss):.6g}")
    save_image(out, picture, overwrite)
    save_array(array_path, result.raw, overwrite)
    rows = -(-n_shown // columns)
    typer.echo(
        f"wrote {out} ({picture.shape[1]}x{picture.shape[0]}: {rows} x {columns} pictures of {size} px) "
        f"in {elapsed:.1f} s on {model.device}"
    )


@command("weights")
def show_weights(
    layer: Annotated[str, typer.Option("--layer", "-l", help="Convolution layer whose kernels to show.")] = "block1_conv1",
    max_filters: Annotated[
        Optional[int], typer.Option("--max", help="Show at most this many output filters.", show_default=False)
    ] = None,
    max_inputs: Annotated[
        Optional[int],
        typer.Option("--max-inputs", help="Deeper layers: show at most this many input channels.", show_default=False),
    ] = None,
    zoom: Annotated[int, typer.Option("--zoom", help="Enlarge each kernel value to zoom x zoom pixels.")] = 8,
    margin: Annotated[int, typer.Option("--margin", help="Pixels between kernels.")] = 2,
    columns: Annotated[int, typer.Option("--columns", help="First layer: kernels per row.")] = 8,
    normalize: Annotated[
        str, typer.Option("--normalize", help="'tile': stretch each kernel; 'layer': one scale, zero = gray.")
    ] = "tile",
    rgb: Annotated[
        bool, typer.Option("--rgb", help="The network reads RGB (default: BGR, as VGG16's caffe weights).")
    ] = False,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    out: Out = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
):
    """The kernels themselves: first layer as colour tiles, deeper layers as filter x input grids.

    Nothing is computed; ``--device`` is where the weights are loaded (checked like everywhere)."""
    from engine.viz.kernels_view import view_kernels

    out = check_output(out if out is not None else Path(f"weights_{layer}.png"), overwrite)
    check_array_output(array_path, overwrite)
    model = load_model(weights, device)
    resolve_layer(model, layer)
    view = view_kernels(
        model, layer, max_filters=max_filters, max_inputs=max_inputs, zoom=zoom, margin=margin,
        columns=columns, channel_order="rgb" if rgb else "bgr", normalize=normalize,
    )
    save_image(out, view.picture, overwrite)
    save_array(array_path, view.tiles, overwrite)
    what = (
        f"{len(view.tiles)} colour kernels ({view.rows} x {view.columns})"
        if view.colour
        else f"{view.rows} filters x {view.columns} input channels"
    )
    typer.echo(f"wrote {out} ({view.picture.shape[1]}x{view.picture.shape[0]}: {what} of {layer})")


@command()
def activations(
    image: Annotated[Path, typer.Argument(help="Image file (JPEG, PNG, ...).", show_default=False)],
    layers: Annotated[
        Optional[str],
        typer.Option("--layers", help="Comma-separated layer names. Default: the first 8 layers.", show_default=False),
    ] = None,
    size: Annotated[int, typer.Option("--size", help="Input height and width in pixels (VGG16: at least 32).")] = 224,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the pictures, one PNG per layer (created if missing).")
    ] = Path("activations"),
    overwrite: Overwrite = False,
):
    """What each channel of a layer sees in a photo: every channel a tile, 16 per row, one PNG per layer."""
    from engine.images import resize_image
    from engine.viz.activations import activation_maps, default_layers

    if size < 1:
        raise ConvscopeError(f"--size {size}: give a positive number of pixels")
    photo = load_image(image)  # a bad image fails before the slow load
    if out.exists() and not out.is_dir():
        raise ConvscopeError(f"{out}: is a file; --out names a folder")
    if not out.exists() and not out.absolute().parent.is_dir():
        raise ConvscopeError(f"{out}: folder {out.absolute().parent} does not exist (create it first)")
    model = load_model(weights, device)
    names = [n.strip() for n in layers.split(",") if n.strip()] if layers is not None else default_layers(model)
    names = list(dict.fromkeys(resolve_layer(model, name) for name in names))
    if not names:
        raise ConvscopeError("--layers names no layer: give names like block1_conv1,block2_pool")
    paths = {name: out / f"{name}.png" for name in names}
    if out.is_dir():
        for path in paths.values():
            check_output(path, overwrite)
    maps = activation_maps(model, engine.preprocess_input(resize_image(photo, (size, size))), names)
    out.mkdir(exist_ok=True)
    with progress("writing pictures", total=len(names)) as update:
        for done, name in enumerate(names, start=1):
            a = maps[name][0]
            picture = activation_picture(a, name)
            save_image(paths[name], picture, overwrite)
            typer.echo(f"wrote {paths[name]} ({picture.shape[1]}x{picture.shape[0]}: {a.shape[2]} channels of {shape_text(a.shape[:2])})")
            update(done)
