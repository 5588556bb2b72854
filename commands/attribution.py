"""Which parts of a photo a class depends on: Grad-CAM, saliency maps, occlusion."""

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from engine.errors import ConvscopeError
from engine.images import load_image
from engine.model import LOGITS
from commands.common import (
    ClassIndex, ClassOpt, Device, DeviceOpt, Out, Overwrite, SaveArray, Score, Seed, Weights, shape_text,
    class_text, command, echo_top_classes, explained_class, load_model, network_input, progress,
    resolve_layer,
)
from commands.outputs import check_array_output, check_output, save_array, save_image
from commands.limits import check_memory, network_bytes
from commands.pictures import heatmap_picture, occlusion_unit, saliency_picture


@command()
def gradcam(
    image: Annotated[Path, typer.Argument(help="Image file (JPEG, PNG, ...).", show_default=False)],
    klass: Annotated[
        Optional[str],
        typer.Option("--class", "-c", help="Class to explain (index or name). Default: the top class.", show_default=False),
    ] = None,
    layer: Annotated[str, typer.Option("--layer", "-l", help="Convolution or pooling layer to weigh.")] = "block5_conv3",
    score: Annotated[
        Score,
        typer.Option("--score", help="'logit': the pre-softmax score (Grad-CAM paper); 'probability': the softmax output (Keras example)."),
    ] = Score.logit,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the coloured heatmap over the photo.")] = 0.4,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    out: Out = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
    class_index: ClassIndex = None,
):
    """Where the network sees a class: the Grad-CAM heatmap, jet-coloured, blended over the photo."""
    from engine.viz.attribution.gradcam import grad_cam

    if not 0.0 <= alpha <= 1.0:
        raise ConvscopeError(f"--alpha {alpha}: give a weight between 0 and 1")
    photo = load_image(image, min_side=1)  # resized for the network; a bad image fails before the slow load
    out = check_output(out if out is not None else Path(f"{image.stem}_gradcam.png"), overwrite)
    check_array_output(array_path, overwrite)
    model = load_model(weights, device, need_top=True)
    names, wanted = explained_class(model, klass, class_index)
    resolve_layer(model, layer)
    x = network_input(photo, model)
    result = grad_cam(model, x, classes=wanted, layer=layer, score=score.value)

    echo_top_classes(result.probabilities[0], names)
    k, heatmap = int(result.classes[0]), result.heatmaps[0]
    typer.echo(f"Grad-CAM of {layer} for {class_text(k, names)}: {score.value} {result.scores[0]:.6g}")
    if heatmap.max() == 0:
        typer.echo(f"note: the heatmap is all zeros (no channel of {layer} speaks for class {k})")
    photo_size = (photo.shape[1], photo.shape[0])
    picture = heatmap_picture(photo, heatmap, alpha)
    save_image(out, picture, overwrite)
    save_array(array_path, heatmap, overwrite)
    typer.echo(f"wrote {out} ({photo_size[0]}x{photo_size[1]}; heatmap {shape_text(heatmap.shape)} at {layer})")


class SaliencyMethod(str, Enum):
    vanilla = "vanilla"
    guided = "guided"
    smoothgrad = "smoothgrad"
    integrated = "integrated"
    guided_gradcam = "guided-gradcam"


class IntegrationRule(str, Enum):
    trapezoid = "trapezoid"
    left = "left"
    right = "right"
    middle = "middle"
    gausslegendre = "gausslegendre"


@command()
def saliency(
    image: Annotated[Path, typer.Argument(help="Image file (JPEG, PNG, ...).", show_default=False)],
    method: Annotated[SaliencyMethod, typer.Option("--method", "-m", help="Attribution method.")] = SaliencyMethod.vanilla,
    klass: ClassOpt = None,
    samples: Annotated[int, typer.Option("--samples", help="smoothgrad: noisy copies averaged.")] = 50,
    noise: Annotated[float, typer.Option("--noise", help="smoothgrad: noise deviation as a fraction of the input range (max - min).")] = 0.15,
    steps: Annotated[int, typer.Option("--steps", help="integrated: points on the path from the black baseline.")] = 50,
    rule: Annotated[IntegrationRule, typer.Option("--rule", help="integrated: quadrature rule.")] = IntegrationRule.trapezoid,
    layer: Annotated[str, typer.Option("--layer", "-l", help="guided-gradcam: the Grad-CAM layer.")] = "block5_conv3",
    batch: Annotated[int, typer.Option("--batch", help="Images per forward/backward pass (memory grows with it).")] = 16,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: Out = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
    class_index: ClassIndex = None,
):
    """Which pixels the class score depends on: gradients, guided backprop, SmoothGrad, integrated gradients, guided Grad-CAM.

    --save-array writes the raw attribution: (224, 224, 3) float32, RGB order."""
    from engine.viz.attribution import attribute
    from engine.viz.attribution.base import check_count

    name = method.value
    options = {"batch": check_count(batch, "--batch")}
    if method is SaliencyMethod.smoothgrad:
        if not (noise >= 0 and np.isfinite(noise)):
            raise ConvscopeError(f"--noise {noise}: give a fraction of the input range, at least 0")
        options.update(samples=check_count(samples, "--samples"), noise=noise, seed=seed)
    elif method is SaliencyMethod.integrated:
        options.update(steps=check_count(steps, "--steps"), rule=rule.value)
    elif method is SaliencyMethod.guided_gradcam:
        options.update(layer=layer)
    photo = load_image(image, min_side=1)  # resized for the network; a bad image fails before the slow load
    out = check_output(out if out is not None else Path(f"{image.stem}_{name}.png"), overwrite)
    check_array_output(array_path, overwrite)
    model = load_model(weights, device, need_top=True)
    names, wanted = explained_class(model, klass, class_index)
    if method is SaliencyMethod.guided_gradcam:
        resolve_layer(model, layer)
    x = network_input(photo, model)
    check_memory(network_bytes(model, x.shape[1:3], batch, LOGITS), f"{name} with --batch {batch}", "lower --batch")
    start = time.perf_counter()
    with progress(name) as update:
        result = attribute(model, x, name, classes=wanted, progress=update, **options)
    elapsed = time.perf_counter() - start

    echo_top_classes(result.probabilities[0], names)
    k = int(result.classes[0])
    typer.echo(f"{name} for {class_text(k, names)}: logit {result.scores[0]:.6g}")
    if method is SaliencyMethod.integrated:
        change = result.scores[0] - result.baseline_scores[0]
        error = float(result.completeness_error[0])
        typer.echo(
            f"baseline: a black image (the caffe-preprocessed all-zero RGB picture), logit "
            f"{result.baseline_scores[0]:.6g}; {steps} steps, {rule.value} rule"
        )
        typer.echo(
            f"completeness: attributions sum to {result.totals[0]:.6g}, logit(x) - logit(baseline) = "
            f"{change:.6g}, error {100 * error:.2f}%"
        )
        if error > 0.01:
            typer.echo("note: the error is above 1%: try more --steps (or --rule gausslegendre)")
    photo_size = (photo.shape[1], photo.shape[0])
    picture, scale = saliency_picture(photo, result)
    save_image(out, picture, overwrite)
    save_array(array_path, result.attributions[0][..., ::-1], overwrite)  # BGR network input -> RGB
    colours = "blue-white-red, signed" if result.signed else "gray, |attribution|"
    typer.echo(
        f"wrote {out} ({photo_size[0]}x{photo_size[1]}; {colours}, clipped at the 99th percentile "
        f"{scale:.3g}) in {elapsed:.1f} s on {model.device}"
    )


@command()
def occlusion(
    image: Annotated[Path, typer.Argument(help="Image file (JPEG, PNG, ...).", show_default=False)],
    klass: ClassOpt = None,
    window: Annotated[int, typer.Option("--window", help="Side of the hidden square, in input pixels (of 224).")] = 32,
    stride: Annotated[int, typer.Option("--stride", help="Step between square positions, in input pixels.")] = 8,
    batch: Annotated[int, typer.Option("--batch", help="Occluded copies per forward pass (memory grows with it).")] = 32,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the coloured heatmap over the photo.")] = 0.4,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    out: Out = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
    class_index: ClassIndex = None,
):
    """Where hiding the photo hurts the class: the drop in its probability as a grey square slides over it.

    --save-array writes the drop in probability per pixel: (224, 224) float32."""
    from engine.viz.attribution.base import check_count
    from engine.viz.attribution.occlusion import occlusion as occlusion_map

    if not 0.0 <= alpha <= 1.0:
        raise ConvscopeError(f"--alpha {alpha}: give a weight between 0 and 1")
    window, stride = check_count(window, "--window"), check_count(stride, "--stride")
    batch = check_count(batch, "--batch")
    photo = load_image(image, min_side=1)  # resized for the network; a bad image fails before the slow load
    out = check_output(out if out is not None else Path(f"{image.stem}_occlusion.png"), overwrite)
    check_array_output(array_path, overwrite)
    model = load_model(weights, device, need_top=True)
    names, wanted = explained_class(model, klass, class_index)
    x = network_input(photo, model)
    check_memory(network_bytes(model, x.shape[1:3], batch, LOGITS, backward=False),
                 f"occlusion with --batch {batch}", "lower --batch")
    start = time.perf_counter()
    with progress("occlusion") as update:
        result = occlusion_map(model, x, classes=wanted, window=window, stride=stride, batch=batch, progress=update)
    elapsed = time.perf_counter() - start

    p = result.probabilities[0]
    echo_top_classes(p, names)
    k, drops, heatmap = int(result.classes[0]), result.drops[0], result.heatmaps[0]
    i, j = np.unravel_index(int(np.argmax(drops)), drops.shape)
    typer.echo(
        f"occlusion for {class_text(k, names)}: probability {p[k]:.4f}; "
        f"{drops.size} positions ({drops.shape[0]} x {drops.shape[1]}) of a {window} px square"
    )
    typer.echo(
        f"largest drop {drops[i, j]:.4f} with the square at ({int(result.lefts[j])}, {int(result.tops[i])}); "
        f"smallest {drops.min():.4f}"
    )
    unit, peak = occlusion_unit(heatmap)
    if peak <= 0:
        typer.echo("note: no position lowers the probability: the heatmap is empty")
    photo_size = (photo.shape[1], photo.shape[0])
    picture = heatmap_picture(photo, unit, alpha)
    save_image(out, picture, overwrite)
    save_array(array_path, heatmap, overwrite)
    typer.echo(
        f"wrote {out} ({photo_size[0]}x{photo_size[1]}; jet, full red at a drop of {max(peak, 0.0):.4f}) "
        f"in {elapsed:.1f} s on {model.device}"
    )
