"""info and predict: the network's layers, and its top classes for photos."""

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

import engine
from engine.errors import ConvscopeError
from engine.images import load_image
from commands.outputs import check_array_output, save_array
from commands.common import (
    ClassIndex, Device, DeviceOpt, SaveArray, Weights, shape_text, class_label, class_names_for, command, input_hw, load_model,
    require_classifier,
    resolve_class, resolve_layer,
)


@command()
def info(
    weights: Weights = None,
    size: Annotated[
        Optional[int],
        typer.Option("--size", help="Input height and width for the shapes (default 224 or the file's fixed size)."),
    ] = None,
    layer: Annotated[
        Optional[list[str]], typer.Option("--layer", "-l", help="Show only this layer (repeatable).")
    ] = None,
    device: DeviceOpt = Device.cpu,
):
    """The network layer by layer: kind, output shape, parameters; totals and where it came from."""
    model = load_model(weights, device)
    hw = input_hw(model, size)
    rows = model.summary_rows(input_size=hw)
    if layer:
        wanted = [resolve_layer(model, name) for name in layer]
        rows = [row for row in rows if row[0] in wanted]

    fixed, channels = model.input_shape[:2], model.input_shape[2]
    free = "any size" if fixed[0] is None else f"fixed {shape_text(fixed)}"
    typer.echo(f"weights: {model.path}")
    typer.echo(f"layout:  {model.spec.source}")
    typer.echo(f"input:   {shape_text((*hw, channels))} ({free}); device {model.device}")
    typer.echo("")
    name_width = max([len("layer")] + [len(row[0]) for row in rows])
    typer.echo(f"  {'layer':<{name_width}}  {'kind':<9}  {'output':<12}  {'params':>12}")
    if not layer:
        typer.echo(f"  {'input':<{name_width}}  {'input':<9}  {shape_text((*hw, channels)):<12}  {0:>12,}")
    for name, kind, shape, n_params in rows:
        typer.echo(f"  {name:<{name_width}}  {kind:<9}  {shape_text(shape):<12}  {n_params:>12,}")
    total = model.n_params
    typer.echo("")
    typer.echo(
        f"total: {total:,} parameters in {len(model.layer_names)} layers after the input "
        f"({total * 4 / 2**20:.1f} MiB as float32); classifier: {'yes' if model.has_classifier else 'no'}"
    )


@command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files (JPEG, PNG, ...).", show_default=False)],
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    top: Annotated[int, typer.Option("--top", "-k", help="How many classes to show.")] = 5,
    klass: Annotated[
        Optional[str],
        typer.Option("--class", "-c", help="Also show this class (index or name)."),
    ] = None,
    class_index: ClassIndex = None,
    array_path: SaveArray = None,
):
    """The top classes for each image, as Keras' VGG16 example: resize to 224x224, caffe-preprocess."""
    if top < 1:
        raise ConvscopeError(f"--top {top}: give at least 1")
    from engine.images import resize_image

    pictures = [load_image(path, min_side=1) for path in images]  # resized to 224; bad images fail first
    check_array_output(array_path)
    model = load_model(weights, device, need_top=True)
    require_classifier(model, "predict")
    height, width = (s or 224 for s in model.input_shape[:2])
    batch = np.stack([resize_image(picture, (width, height)) for picture in pictures])
    probabilities = model.predict(engine.preprocess_input(batch))
    save_array(array_path, probabilities)
    n_classes = probabilities.shape[1]
    names = class_names_for(n_classes, model, class_index)
    wanted = resolve_class(klass, n_classes, names) if klass is not None else None
    top = min(top, n_classes)
    for path, p in zip(images, probabilities):
        if len(images) > 1:
            typer.echo(f"{path}:")
        order = np.argsort(-p, kind="stable")
        for rank, index in enumerate(order[:top], start=1):
            typer.echo(f"{rank:>3}. {p[index]:.4f}  {class_label(index, names)}")
        if wanted is not None:
            rank = int(np.flatnonzero(order == wanted)[0]) + 1
            typer.echo(f"  class {wanted} ({class_label(wanted, names)}): {p[wanted]:.4f}, rank {rank}")
