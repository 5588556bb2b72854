"""report: one self-contained HTML page about a photo (pictures embedded as base64 PNG data URIs):
the predictions, Grad-CAM, saliency maps, occlusion, activations and a dream of it, and the
parameters that made them. Every picture is made by the same engine calls and the same picture
helpers as the command that shows it alone (gradcam, saliency, occlusion, activations, dream).
"""

import base64
import html
import io
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

import engine
from engine.images import load_image
from commands.common import (
    ClassIndex, ClassOpt, Device, DeviceOpt, Overwrite, Seed, Weights, class_label, class_text, command, explained_class,
    load_model, network_input, progress, require_classifier, shape_text,
)
from commands.limits import DEFAULT_MAX_LOSS, DEFAULT_MAX_SIDE, shrink_to
from commands.outputs import check_output, write_text
from commands.pictures import activation_picture, heatmap_picture, occlusion_unit, saliency_picture

HTML_SUFFIXES = {".html", ".htm"}

# The settings of each section: the commands' defaults, and --fast's small ones.
FULL = {
    "top": 5,
    "gradcam_layer": "block5_conv3",
    "score": "logit",
    "alpha": 0.4,
    "saliency_methods": ("vanilla", "guided", "smoothgrad", "integrated"),
    "smoothgrad_samples": 50,
    "smoothgrad_noise": 0.15,
    "integrated_steps": 50,
    "integrated_rule": "trapezoid",
    "occlusion_window": 32,
    "occlusion_stride": 8,
    "activation_layers": 8,
    "dream_octaves": 4,
    "dream_octave_scale": 1.4,
    "dream_steps": 20,
    "batch": 16,
}
FAST = dict(
    FULL, saliency_methods=("vanilla", "guided"), occlusion_stride=32, dream_octaves=2, dream_steps=3
)


def png_data_uri(rgb: np.ndarray) -> str:
    """A uint8 RGB (or grayscale) picture as a ``data:image/png;base64,...`` URI."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figure(rgb: np.ndarray, caption: str) -> str:
    text = html.escape(caption)
    return f'<figure><img src="{png_data_uri(rgb)}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def section(key: str, title: str, body: str, note: str = "") -> str:
    note = f"<p>{html.escape(note)}</p>" if note else ""
    return f'<section id="{key}"><h2>{html.escape(title)}</h2>{note}<div class="row">{body}</div></section>'


def table(rows, header=None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
section { margin-bottom: 2.5em; }
.row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0; }
figure img { max-width: 100%; image-rendering: pixelated; }
figcaption { font-size: 0.9em; color: #555; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
"""


def page(title: str, sections: list[str]) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


@command()
def report(
    image: Annotated[Path, typer.Argument(help="Image file (JPEG, PNG, ...).", show_default=False)],
    klass: ClassOpt = None,
    fast: Annotated[
        bool,
        typer.Option("--fast", help="Small settings: no SmoothGrad, occlusion stride 32, dream 2 octaves x 3 steps."),
    ] = False,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Output HTML file (default <image>_report.html).", show_default=False)
    ] = None,
    overwrite: Overwrite = False,
    class_index: ClassIndex = None,
):
    """One self-contained HTML page about a photo: predictions, Grad-CAM, saliency, occlusion, activations, a dream."""
    from engine.viz.activations import activation_maps, default_layers as activation_layers
    from engine.viz.attribution import attribute
    from engine.viz.dream import deep_dream, default_layers as dream_layers
    from engine.viz.attribution.gradcam import grad_cam
    from engine.viz.attribution.occlusion import occlusion as occlusion_map

    settings = FAST if fast else FULL
    photo = load_image(image)  # a bad image fails before the slow load
    out = check_output(out if out is not None else Path(f"{image.stem}_report.html"), overwrite, suffixes=HTML_SUFFIXES)
    model = load_model(weights, device, need_top=True)
    require_classifier(model, "report")
    names, wanted = explained_class(model, klass, class_index)
    x = network_input(photo, model)
    start = time.perf_counter()
    sections, timings = [], {}
    stages = ["predictions", "gradcam", *settings["saliency_methods"], "occlusion", "activations", "dream"]

    with progress("report", total=len(stages)) as update:

        def done(stage: str, began: float) -> None:
            timings[stage] = time.perf_counter() - began
            update(len(timings))

        began = time.perf_counter()
        p = model.predict(x)[0]
        order = np.argsort(-p, kind="stable")[: settings["top"]]
        rows = [(rank, class_label(int(k), names), int(k), f"{p[k]:.4f}") for rank, k in enumerate(order, start=1)]
        photo_html = figure(photo, f"{image.name} ({photo.shape[1]}x{photo.shape[0]})")
        sections.append(section("predictions", "Predictions", photo_html + table(rows, ("rank", "class", "index", "probability"))))
        done("predictions", began)

        began = time.perf_counter()
        layer = settings["gradcam_layer"]
        cam = grad_cam(model, x, classes=wanted, layer=layer, score=settings["score"])
        k = int(cam.classes[0])
        explained = class_text(k, names)
        heatmap = cam.heatmaps[0]
        sections.append(section(
            "gradcam", "Grad-CAM", figure(heatmap_picture(photo, heatmap, settings["alpha"]),
                                          f"{layer}, {settings['score']} {cam.scores[0]:.6g}; heatmap {shape_text(heatmap.shape)}"),
            note=f"Where the network sees {explained}.",
        ))
        done("gradcam", began)

        pictures = []
        for method in settings["saliency_methods"]:
            began = time.perf_counter()
            options = {"batch": settings["batch"]}
            if method == "smoothgrad":
                options.update(samples=settings["smoothgrad_samples"], noise=settings["smoothgrad_noise"], seed=seed)
            elif method == "integrated":
                options.update(steps=settings["integrated_steps"], rule=settings["integrated_rule"])
            result = attribute(model, x, method, classes=k, **options)
            picture, scale = saliency_picture(photo, result)
            pictures.append(figure(picture, f"{method} (clipped at {scale:.3g})"))
            done(method, began)
        sections.append(section("saliency", "Saliency maps", "".join(pictures), note=f"Which pixels the logit of {explained} depends on."))

        began = time.perf_counter()
        window, stride = settings["occlusion_window"], settings["occlusion_stride"]
        occluded = occlusion_map(model, x, classes=k, window=window, stride=stride, batch=settings["batch"])
        unit, peak = occlusion_unit(occluded.heatmaps[0])
        drops = occluded.drops[0]
        sections.append(section(
            "occlusion", "Occlusion", figure(heatmap_picture(photo, unit, settings["alpha"]),
                                             f"{window} px square, stride {stride}: {drops.shape[0]} x {drops.shape[1]} positions"),
            note=f"The drop in p({explained}) as a grey square hides the photo; full red at {max(peak, 0.0):.4f}.",
        ))
        done("occlusion", began)

        began = time.perf_counter()
        layers = activation_layers(model, settings["activation_layers"])
        maps = activation_maps(model, x, layers)
        grids = "".join(figure(activation_picture(maps[name][0], name), name) for name in layers)
        sections.append(section("activations", "Activations", grids, note="Every channel of each layer a tile, 16 per row."))
        done("activations", began)

        began = time.perf_counter()
        chosen = dream_layers(model)
        octaves, steps = settings["dream_octaves"], settings["dream_steps"]
        dream_photo = shrink_to(photo, DEFAULT_MAX_SIDE)  # as dream's default --max-side
        dreamt = deep_dream(model, engine.preprocess_input(dream_photo), layers=chosen, octaves=octaves,
                            octave_scale=settings["dream_octave_scale"], steps=steps, seed=seed,
                            max_loss=DEFAULT_MAX_LOSS)
        shown = ",".join(f"{name}={weight:g}" for name, weight in chosen.items())
        sections.append(section("dream", "DeepDream", figure(engine.deprocess(dreamt.images[0]),
                                                            f"{shown}; {octaves} octaves x {steps} steps")))
        done("dream", began)

    parameters = [
        ("image", str(image)), ("weights", str(model.path)), ("device", model.device), ("seed", seed),
        ("mode", "fast" if fast else "full"), ("class", explained if klass is not None else f"top class: {explained}"),
        ("input", shape_text(x.shape[1:])),
        *((name, ", ".join(value) if isinstance(value, tuple) else value) for name, value in settings.items()),
        ("dream layers", shown),
        *((f"time {stage}", f"{seconds:.1f} s") for stage, seconds in timings.items()),
    ]
    sections.append(section("parameters", "Parameters", table(parameters, ("parameter", "value"))))
    text = page(f"convscope report: {image.name}", sections)
    write_text(out, text, overwrite)
    n_pictures = text.count('src="data:image/png;base64,')
    typer.echo(f"wrote {out} ({len(text) / 2**20:.1f} MiB, {n_pictures} pictures) in {time.perf_counter() - start:.1f} s on {model.device}")
