"""Pictures made by optimisation: adversarial images, inversion, textures, DeepDream, class models."""

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

import engine
from engine.errors import ConvscopeError
from engine.images import load_image
from commands.common import (
    Device, DeviceOpt, Out, Overwrite, SaveArray, Score, Seed, Weights, class_label, class_names_for,
    command, load_model, require_classifier, progress, resolve_class, resolve_layer,
)
from commands.pictures import side_by_side, titled
from commands.outputs import (
    check_array_output, check_output, output_prefix, save_array, save_image,
)


class FoolMethod(str, Enum):
    iterative = "iterative"
    fgsm = "fgsm"


class Optimizer(str, Enum):
    auto = "auto"
    lbfgs = "lbfgs"
    adam = "adam"


def _top_text(p, names, k=3) -> str:
    order = np.argsort(-p, kind="stable")[:k]
    return ", ".join(f"{class_label(int(i), names)} {p[i]:.4f}" for i in order)


@command()
def fool(
    images: Annotated[list[Path], typer.Argument(help="Image file(s) (JPEG, PNG, ...).", show_default=False)],
    target: Annotated[
        list[str],
        typer.Option("--target", "-t", help="Class to reach (index or name); repeat for several (one per image, or all for one image).", show_default=False),
    ],
    method: Annotated[FoolMethod, typer.Option("--method", help="'iterative' (Adam, L2 penalty, stops at --confidence) or 'fgsm' (one signed step).")] = FoolMethod.iterative,
    confidence: Annotated[float, typer.Option("--confidence", help="Iterative: stop once p(target) reaches this.")] = 0.99,
    steps: Annotated[int, typer.Option("--steps", help="Iterative: at most this many steps.")] = 100,
    lr: Annotated[float, typer.Option("--lr", help="Iterative: Adam step in pixel levels (0-255).")] = 0.5,
    l2: Annotated[float, typer.Option("--l2", help="Iterative: weight of (1/2)||x - x0||^2 (pixel levels).")] = 1e-4,
    epsilon: Annotated[float, typer.Option("--epsilon", help="FGSM: step in pixel levels (0-255).")] = 2.0,
    amplify: Annotated[float, typer.Option("--amplify", help="Difference picture: change x this, around gray.")] = 10.0,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Prefix: writes PREFIX.png, PREFIX_diff.png, PREFIX_compare.png (default <image>_fool).", show_default=False),
    ] = None,
    overwrite: Overwrite = False,
):
    """Adversarial image: change a photo as little as possible until the network says --target."""
    from engine.images import resize_image
    from engine.viz.fool import change_size, fgsm, fool as fool_images

    if method == FoolMethod.iterative and (steps < 1 or not 0 < confidence < 1):
        raise ConvscopeError(f"--steps {steps} must be at least 1 and --confidence {confidence} between 0 and 1")
    photos = [load_image(path) for path in images]  # bad images fail before the slow load
    n = max(len(photos), len(target))
    if len(photos) != n and len(photos) != 1 or len(target) != n and len(target) != 1:
        raise ConvscopeError(f"{len(images)} images and {len(target)} targets: give one target per image, or one of either")
    sources = [images[0 if len(images) == 1 else i] for i in range(n)]
    base = output_prefix(out, f"{images[0].stem}_fool")
    prefixes = [base] if n == 1 else [base.with_name(f"{base.name}_{i}") for i in range(n)]
    paths = [{kind: p.with_name(p.name + suffix) for kind, suffix in (("image", ".png"), ("diff", "_diff.png"), ("compare", "_compare.png"))} for p in prefixes]
    for group in paths:
        for path in group.values():
            check_output(path, overwrite)
    model = load_model(weights, device, need_top=True)
    n_classes = model.layers[-1].kernel.shape[1]
    names = class_names_for(n_classes)
    targets = [resolve_class(t, n_classes, names) for t in target]
    targets = np.array(targets * n if len(targets) == 1 else targets)
    height, width = (s or 224 for s in model.input_shape[:2])
    rgb = np.stack([resize_image(photos[0 if len(photos) == 1 else i], (width, height)) for i in range(n)])
    x = engine.preprocess_input(rgb)
    start = time.perf_counter()
    if method == FoolMethod.fgsm:
        result = fgsm(model, x, targets, epsilon=epsilon)
    else:
        with progress("fooling", total=steps) as update:
            result = fool_images(model, x, targets, confidence=confidence, steps=steps, lr=lr, l2=l2,
                                 callback=lambda step, loss: update(step + 1))
    elapsed = time.perf_counter() - start
    new_rgb = engine.deprocess(result.images)
    saved_p = model.predict(engine.preprocess_input(new_rgb))  # what the saved 8-bit files get
    size_l2, size_linf = change_size(rgb.astype(np.float32), new_rgb.astype(np.float32))
    for i in range(n):
        k = int(targets[i])
        p0, p1 = result.original_probabilities[i], saved_p[i]
        what = f"{method.value}, {int(result.steps[i])} step(s)" + (f", epsilon {epsilon:g}" if method == FoolMethod.fgsm else "")
        typer.echo(f"{sources[i]} -> {class_label(k, names)} ({what}):")
        typer.echo(f"  original: {_top_text(p0, names)}")
        typer.echo(f"  new:      {_top_text(p1, names)}")
        reached = p1[k] >= confidence if method == FoolMethod.iterative else int(np.argmax(p1)) == k
        typer.echo(f"  p(target) {p0[k]:.4f} -> {p1[k]:.4f} ({'reached' if reached else 'NOT reached'}); "
                   f"change: L2 {size_l2[i]:.2f}, L-inf {size_linf[i]:.0f} pixel levels")
        diff = new_rgb[i].astype(np.float32) - rgb[i].astype(np.float32)
        diff_picture = np.clip(np.rint(128 + amplify * diff), 0, 255).astype(np.uint8)
        top0, top1 = int(np.argmax(p0)), int(np.argmax(p1))
        compare = side_by_side([
            titled(rgb[i], f"{class_label(top0, names)} {p0[top0]:.3f}"),
            titled(new_rgb[i], f"{class_label(top1, names)} {p1[top1]:.3f}"),
            titled(diff_picture, f"change x{amplify:g}"),
        ])
        for kind, picture in (("image", new_rgb[i]), ("diff", diff_picture), ("compare", compare)):
            save_image(paths[i][kind], picture, overwrite)
        typer.echo(f"  wrote {paths[i]['image']}, {paths[i]['diff'].name}, {paths[i]['compare'].name}")
    typer.echo(f"done in {elapsed:.1f} s on {model.device}")


@command()
def invert(
    image: Annotated[Path, typer.Argument(help="Image file (JPEG, PNG, ...).", show_default=False)],
    layer: Annotated[
        str, typer.Option("--layer", "-l", help="Layer(s) to invert, comma-separated, or 'all' (each block's last convolution).")
    ] = "block4_conv1",
    size: Annotated[int, typer.Option("--size", help="Input height and width in pixels.")] = 224,
    steps: Annotated[int, typer.Option("--steps", help="Adam steps.")] = 200,
    lr: Annotated[float, typer.Option("--lr", help="Adam step in pixel levels.")] = 2.0,
    lambda_alpha: Annotated[float, typer.Option("--lambda-alpha", help="Weight of the alpha-norm (alpha 6, B 80).")] = 1e-3,
    lambda_tv: Annotated[float, typer.Option("--lambda-tv", help="Weight of the total variation (beta 2).")] = 0.5,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: Out = None,
    overwrite: Overwrite = False,
):
    """Feature inversion (Mahendran & Vedaldi): what a layer still knows of the photo, one picture per layer."""
    from engine.images import resize_image
    from engine.viz.invert import block_layers
    from engine.viz.invert import invert as invert_image

    if size < 1 or steps < 1:
        raise ConvscopeError(f"--size {size} and --steps {steps} must be positive")
    photo = load_image(image)
    out = check_output(out if out is not None else Path(f"{image.stem}_invert.png"), overwrite)
    model = load_model(weights, device)
    names = block_layers(model) if layer == "all" else [resolve_layer(model, n.strip()) for n in layer.split(",") if n.strip()]
    if not names:
        raise ConvscopeError("--layer names no layer: give e.g. block4_conv1, a comma list, or 'all'")
    rgb = resize_image(photo, (size, size))
    with progress(f"inverting {len(names)} layer(s)", total=steps) as update:
        result = invert_image(model, engine.preprocess_input(rgb), names, steps=steps, lr=lr,
                              lambda_alpha=lambda_alpha, lambda_tv=lambda_tv, seed=seed,
                              callback=lambda step, loss: update(step + 1))
    pictures = engine.deprocess(result.images)
    for i, name in enumerate(result.layers):
        typer.echo(f"{name}: loss {result.losses[0, i]:.4g} -> {result.losses[-1, i]:.4g} "
                   f"(feature term {result.feature_losses[i]:.4g}) in {len(result.losses)} steps")
    strip = side_by_side([titled(rgb, "original")] + [titled(p, n) for p, n in zip(pictures, result.layers)])
    save_image(out, strip, overwrite)
    typer.echo(f"wrote {out} ({strip.shape[1]}x{strip.shape[0]}: the photo and {len(names)} reconstruction(s))")


@command()
def texture(
    image: Annotated[Path, typer.Argument(help="Texture / style image (JPEG, PNG, ...).", show_default=False)],
    content: Annotated[
        Optional[Path], typer.Option("--content", help="Style transfer: render this photo in the image's style.", show_default=False)
    ] = None,
    size: Annotated[int, typer.Option("--size", help="Height and width of the result (and of the style image).")] = 224,
    steps: Annotated[int, typer.Option("--steps", help="Optimiser iterations (L-BFGS: network passes).")] = 200,
    method: Annotated[Optimizer, typer.Option("--method", help="'lbfgs' (needs scipy: the texture extra), 'adam', or 'auto'.")] = Optimizer.auto,
    style_layers: Annotated[
        Optional[str], typer.Option("--style-layers", help="Comma-separated Gram layers (default: each block's first conv).", show_default=False)
    ] = None,
    content_layer: Annotated[
        Optional[str], typer.Option("--content-layer", help="Content layer (default block4_conv2, else the deepest conv).", show_default=False)
    ] = None,
    content_weight: Annotated[float, typer.Option("--content-weight", help="Weight of the content term.")] = 1.0,
    tv: Annotated[float, typer.Option("--tv", help="Total-variation weight.")] = 0.1,
    lr: Annotated[float, typer.Option("--lr", help="Adam step in pixel levels.")] = 4.0,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: Out = None,
    overwrite: Overwrite = False,
):
    """Gram-matrix texture synthesis (Gatys et al.), or style transfer with --content."""
    from engine.images import resize_image
    from engine.viz.texture import require_lbfgs, synthesize

    if size < 1 or steps < 1:
        raise ConvscopeError(f"--size {size} and --steps {steps} must be positive")
    if method == Optimizer.lbfgs:
        require_lbfgs()  # a missing scipy fails before any work
    style_rgb = resize_image(load_image(image), (size, size))
    content_rgb = resize_image(load_image(content), (size, size)) if content is not None else None
    default = f"{image.stem}_texture.png" if content is None else f"{content.stem}_as_{image.stem}.png"
    out = check_output(out if out is not None else Path(default), overwrite)
    model = load_model(weights, device)
    layers = [resolve_layer(model, n.strip()) for n in style_layers.split(",") if n.strip()] if style_layers else None
    if content_layer is not None:
        resolve_layer(model, content_layer)
    with progress("texture", total=steps) as update:
        result = synthesize(
            model, engine.preprocess_input(style_rgb), content=None if content_rgb is None else engine.preprocess_input(content_rgb),
            style_layers=layers, content_layer=content_layer, content_weight=content_weight, tv_weight=tv,
            steps=steps, method=method.value, lr=lr, seed=seed, callback=lambda step, loss: update(min(step + 1, steps)),
        )
    picture = engine.deprocess(result.images)[0]
    losses = result.losses[:, 0]
    typer.echo(f"{result.method}: loss {losses[0]:.4g} -> {losses[-1]:.4g} in {len(losses)} network passes; "
               f"Gram layers {', '.join(result.style_layers)}" + (f"; content {result.content_layer}" if result.content_layer else ""))
    save_image(out, picture, overwrite)
    typer.echo(f"wrote {out} ({picture.shape[1]}x{picture.shape[0]})")


# ------------------------------------------------------------------------------- dream, classmax


def parse_layer_weights(text: str) -> dict:
    """'block4_conv3=1.0,block5_conv1=0.5' (a bare name weighs 1.0) -> {name: weight}."""
    layers = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, weight = item.partition("=")
        try:
            layers[name.strip()] = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ConvscopeError(f"--layers: {item!r} is not NAME=WEIGHT (e.g. block4_conv3=1.0)") from None
    if not layers:
        raise ConvscopeError("--layers names no layer: give e.g. block4_conv3=1.0,block5_conv1=0.5")
    return layers


@command()
def dream(
    image: Annotated[Path, typer.Argument(help="Photo to dream on (JPEG, PNG, ...).", show_default=False)],
    layers: Annotated[
        Optional[str],
        typer.Option(
            "--layers",
            help="NAME=WEIGHT,... whose mean squared activations to raise. Default: "
            "block4_conv3=1.0,block5_conv1=0.5, or the network's last two convolutions.",
            show_default=False,
        ),
    ] = None,
    octaves: Annotated[int, typer.Option("--octaves", help="Scales, smallest first, each octave-scale times larger.")] = 4,
    octave_scale: Annotated[float, typer.Option("--octave-scale", help="Size ratio between octaves.")] = 1.4,
    steps: Annotated[int, typer.Option("--steps", help="Gradient-ascent steps per octave.")] = 20,
    step_size: Annotated[
        float, typer.Option("--step-size", help="Step along the mean-|g|-normalised gradient, in caffe units (0..255 scale).")
    ] = 1.275,  # engine.viz.dream.DEFAULT_STEP_SIZE: Keras' 0.01 for [-1, 1] inputs, in caffe units
    max_loss: Annotated[
        Optional[float], typer.Option("--max-loss", help="End an octave once its loss exceeds this.", show_default=False)
    ] = None,
    tile: Annotated[int, typer.Option("--tile", help="Compute gradients in windows of this many pixels (bounds memory).")] = 512,
    roll: Annotated[int, typer.Option("--roll", help="Random circular shift of up to this many pixels per step (0: off).")] = 0,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: Out = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
):
    """DeepDream (the Keras deep_dream example): raise chosen layers' activations over octaves; the photo's size."""
    from engine.viz.dream import deep_dream, default_layers

    photo = load_image(image)  # a bad image fails before the slow load
    out = check_output(out if out is not None else Path(f"{image.stem}_dream.png"), overwrite)
    check_array_output(array_path, overwrite)
    model = load_model(weights, device)
    chosen = parse_layer_weights(layers) if layers is not None else default_layers(model)
    shown = ",".join(f"{name}={weight:g}" for name, weight in chosen.items())
    typer.echo(f"dreaming {image} ({photo.shape[1]}x{photo.shape[0]}) with {shown}")
    start = time.perf_counter()
    with progress("dreaming", total=octaves * steps) as update:
        result = deep_dream(
            model, engine.preprocess_input(photo), layers=chosen, octaves=octaves, octave_scale=octave_scale,
            steps=steps, step_size=step_size, max_loss=max_loss, tile=tile, roll=roll, seed=seed,
            callback=lambda octave, step, loss: update(octave * steps + step + 1),
        )
    for octave, (shape, losses) in enumerate(zip(result.shapes, result.losses), start=1):
        if len(losses):
            typer.echo(
                f"  octave {octave}/{len(result.shapes)} {shape[1]}x{shape[0]}: loss {losses[0, 0]:.6g} -> "
                f"{losses[-1, 0]:.6g} ({len(losses)} steps)"
            )
    picture = engine.deprocess(result.images[0])
    save_image(out, picture, overwrite)
    save_array(array_path, result.images[0], overwrite)
    typer.echo(f"wrote {out} ({picture.shape[1]}x{picture.shape[0]}) in {time.perf_counter() - start:.1f} s on {model.device}")


@command()
def classmax(
    klass: Annotated[
        list[str],
        typer.Option("--class", "-c", help="Class to draw (index or name); repeat for several, optimised as one batch.", show_default=False),
    ],
    steps: Annotated[int, typer.Option("--steps", help="Gradient-ascent steps.")] = 200,
    step_size: Annotated[float, typer.Option("--step-size", help="Step along the RMS-normalised gradient, in caffe units.")] = 2.0,
    score: Annotated[
        Score, typer.Option("--score", help="'logit': the pre-softmax class score; 'probability': the softmax output.")
    ] = Score.logit,
    l2_decay: Annotated[float, typer.Option("--l2-decay", help="Shrink the image by this fraction each step (0: off).")] = 1e-4,
    blur_every: Annotated[int, typer.Option("--blur-every", help="Gaussian blur every this many steps (0: off).")] = 4,
    blur_sigma: Annotated[float, typer.Option("--blur-sigma", help="Width of the blur in pixels.")] = 0.5,
    jitter: Annotated[int, typer.Option("--jitter", help="Random shift of up to this many pixels per step (0: off).")] = 4,
    clip_norm: Annotated[
        float, typer.Option("--clip-norm", help="Zero the pixels whose norm is below this percentile each step (0: off).")
    ] = 0.0,
    clip_contribution: Annotated[
        float,
        typer.Option("--clip-contribution", help="Zero the pixels contributing least (below this percentile) each step; costs a pass."),
    ] = 0.0,
    param: Annotated[str, typer.Option("--param", help="pixel (Yosinski's ascent) or fft (Lucid's 1/f spectrum, Adam).")] = "pixel",
    decorrelate: Annotated[bool, typer.Option("--decorrelate", help="Lucid's decorrelated colour space (Adam).")] = False,
    robust: Annotated[bool, typer.Option("--robust", help="With --param fft / --decorrelate: Lucid's jitter, scale, rotate.")] = False,
    lr: Annotated[float, typer.Option("--lr", help="Adam's learning rate for --param fft / --decorrelate.")] = 0.05,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: Out = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
):
    """What the network thinks a class looks like: ascent on its score from noise (Yosinski et al. 2015)."""
    from engine.viz.classmax import class_model
    from engine.viz.pictures import stitch_grid

    model = load_model(weights, device, need_top=True)
    require_classifier(model, "classmax")
    n_classes = model.layers[-1].kernel.shape[1]
    names = class_names_for(n_classes)
    classes = [resolve_class(value, n_classes, names) for value in klass]
    default = "classmax_" + "_".join(str(k) for k in classes) + ".png"
    out = check_output(out if out is not None else Path(default), overwrite)
    check_array_output(array_path, overwrite)
    start = time.perf_counter()
    with progress("class models", total=steps) as update:
        result = class_model(
            model, classes, steps=steps, step_size=step_size, score=score.value, l2_decay=l2_decay,
            blur_every=blur_every, blur_sigma=blur_sigma, jitter=jitter, clip_norm=clip_norm,
            clip_contribution=clip_contribution, seed=seed, callback=lambda step, loss: update(step + 1),
            param=param, decorrelate=decorrelate, robust=robust, lr=lr,
        )
    for i, k in enumerate(classes):
        p = result.probabilities[i]
        top = ", ".join(f"{class_label(j, names)} {p[j]:.4f}" for j in result.top(3)[i])
        typer.echo(f"{class_label(k, names)} (class {k}): probability {p[k]:.4f}; top-3: {top}")
    pictures = engine.deprocess(result.images)
    picture = pictures[0] if len(classes) == 1 else stitch_grid(pictures, rows=1, margin=5, fill=255)
    save_image(out, picture, overwrite)
    save_array(array_path, result.images, overwrite)
    typer.echo(f"wrote {out} ({picture.shape[1]}x{picture.shape[0]}) in {time.perf_counter() - start:.1f} s on {model.device}")
